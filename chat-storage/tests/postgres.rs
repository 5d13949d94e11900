//! The conformance suite on the PostgreSQL backend, each test in a fresh schema so tests run
//! in parallel. Reads the server's URL from `CHAT_TEST_POSTGRES_URL`; without it every test
//! writes a `skipped:` line the harness does not swallow and passes, or fails when
//! `CHAT_TEST_REQUIRE_SERVICES=1` (CI; `testing::service_url`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::Poll;

use chat_core::{
    AccountStore as _, ConversationId, ConversationStore as _, InboxPos, MessageStore as _,
    StoreError, Timestamp,
};
use chat_storage::testing::{self, Fixture};
use chat_storage::{PostgresOptions, PostgresStore};

const URL_VAR: &str = "CHAT_TEST_POSTGRES_URL";

fn url() -> Option<String> {
    testing::service_url(URL_VAR)
}

/// A schema name no other test (in this or a concurrent run) uses.
fn schema_name() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "chat_test_{}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        nanos
    )
}

/// A schema of its own for one test: the URL, the schema's name, store options for it with
/// `pool` connections, and the guard that drops it when the test ends (also on failure).
/// `None` (the test skips) without `CHAT_TEST_POSTGRES_URL`.
fn fresh_schema(pool: usize) -> Option<(String, String, PostgresOptions, DropSchema)> {
    let url = url()?;
    let schema = schema_name();
    let options = PostgresOptions::default()
        .pool_size(pool)
        .schema(schema.clone());
    let guard = DropSchema {
        url: url.clone(),
        schema: schema.clone(),
    };
    Some((url, schema, options, guard))
}

/// What each migration after version 2 added, undone (index 0 undoes migration 3): a test
/// takes a fresh schema back to an older version with [`downgrade`] and checks that the
/// migrations bring its data forward.
const UNDO: [&str; 4] = [
    "DROP INDEX inbox_by_time;
     ALTER TABLE inbox DROP COLUMN sent_at;
     ALTER TABLE devices DROP COLUMN inbox_floor;",
    "ALTER TABLE members DROP COLUMN role, DROP COLUMN joined;
     ALTER TABLE conversations DROP COLUMN group_name, DROP COLUMN add_members,
         DROP COLUMN edit_name, DROP COLUMN admitted;",
    "ALTER TABLE devices DROP COLUMN linked, DROP COLUMN link_payload;
     DROP TABLE device_lists;",
    "ALTER TABLE conversations DROP COLUMN group_head;
     DROP TABLE group_changes;",
];

/// Takes `schema` back to `version` (undoing every later migration, newest first) on a raw
/// connection, which it returns for the test's own statements.
async fn downgrade(url: &str, schema: &str, version: usize) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("raw");
    tokio::spawn(conn);
    let undo: String = UNDO
        .iter()
        .skip(version - 2)
        .rev()
        .map(|sql| format!("{sql}\n"))
        .collect();
    client
        .batch_execute(&format!(
            "SET search_path = {schema};
             {undo}
             UPDATE schema_version SET version = {version};"
        ))
        .await
        .expect("downgrade");
    client
}

/// Drops the test's schema when the test ends.
struct DropSchema {
    url: String,
    schema: String,
}

impl Drop for DropSchema {
    fn drop(&mut self) {
        let (url, schema) = (self.url.clone(), self.schema.clone());
        // Drop runs inside the test's runtime, which cannot be blocked on: use a thread
        // with its own.
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            let Ok(rt) = rt else { return };
            rt.block_on(async {
                let Ok((client, conn)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await
                else {
                    return;
                };
                tokio::spawn(conn);
                let _ = client
                    .batch_execute(&format!(
                        "SET lock_timeout = '10s'; DROP SCHEMA {schema} CASCADE"
                    ))
                    .await;
            });
        });
        let _ = cleanup.join();
    }
}

async fn fresh() -> Option<Fixture> {
    let url = url()?;
    let schema = schema_name();
    let options = PostgresOptions::default()
        .pool_size(8)
        .schema(schema.clone());
    let store = PostgresStore::connect(&url, options)
        .await
        .expect("connect");
    Some(Fixture::with_guard(
        Arc::new(store),
        DropSchema { url, schema },
    ))
}

chat_storage::conformance_tests!(fresh());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_schema_is_refused() {
    let Some((url, schema, options, _cleanup)) = fresh_schema(1) else {
        return;
    };
    drop(
        PostgresStore::connect(&url, options.clone())
            .await
            .expect("connect"),
    );
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("raw");
    tokio::spawn(conn);
    let row = client
        .query_one(
            &format!("SELECT max(version) FROM {schema}.schema_version"),
            &[],
        )
        .await
        .expect("version");
    let current: i32 = row.get(0);
    client
        .execute(
            &format!("UPDATE {schema}.schema_version SET version = version + 1"),
            &[],
        )
        .await
        .expect("bump");
    let err = PostgresStore::connect(&url, options)
        .await
        .expect_err("refused");
    match err {
        StoreError::SchemaTooNew { found, supported } => {
            assert_eq!((found, supported), (current as u32 + 1, current as u32));
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_accepts_postgres_urls() {
    let Some(url) = url() else { return };
    let schema = schema_name();
    let _cleanup = DropSchema {
        url: url.clone(),
        schema: schema.clone(),
    };
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("raw");
    tokio::spawn(conn);
    client
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .expect("schema");
    let sep = if url.contains('?') { '&' } else { '?' };
    let store = chat_storage::open(&format!("{url}{sep}options=-csearch_path%3D{schema}"))
        .await
        .expect("open");
    let user = chat_storage::testing::user(&*store).await;
    assert!(store.user(user).await.expect("user").is_some());
    let tables = client
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1",
            &[&schema],
        )
        .await
        .expect("tables");
    assert!(
        tables.get::<_, i64>(0) > 0,
        "the store's tables are in the schema from the URL"
    );
}

/// A version 2 schema (inbox entries without their own time, devices without a floor)
/// migrates to version 3 with each entry taking its message's time; a version 2 node's
/// insert (without the new column) still works during a rolling upgrade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_2_inboxes_migrate_with_their_message_times() {
    let Some((url, schema, options, _cleanup)) = fresh_schema(2) else {
        return;
    };
    let store = PostgresStore::connect(&url, options.clone())
        .await
        .expect("connect");
    let (a, devices) = testing::user_with_devices(&store, 1).await;
    let (b, readers) = testing::user_with_devices(&store, 1).await;
    let conv = store.open_direct(a, b, testing::NOW).await.expect("direct");
    let at = |ms| Timestamp::from_millis(testing::NOW.as_millis() + ms);
    for ms in [0, 100] {
        let mut msg = testing::message(conv.id, devices[0], &readers);
        msg.sent_at = at(ms);
        store.append(msg).await.expect("append");
    }
    drop(store);

    let client = downgrade(&url, &schema, 2).await;

    let store = PostgresStore::connect(&url, options)
        .await
        .expect("migrate");
    let reader = readers[0];
    assert_eq!(
        store.inbox_floor(reader).await.expect("floor"),
        InboxPos::ZERO
    );
    // What a version 2 node writes: no sent_at. It takes the time of the insert.
    client
        .execute(
            &format!(
                "INSERT INTO {schema}.inbox (device_id, pos, conversation_id, message_id, header)
                 VALUES ($1, 3, $2, 2, '\\x00')"
            ),
            &[&(reader.device.get() as i64), &(conv.id.get() as i64)],
        )
        .await
        .expect("version 2 insert");
    assert_eq!(store.trim_inboxes(at(50), 100).await.expect("trim"), 1);
    assert_eq!(
        store.inbox_floor(reader).await.expect("floor"),
        InboxPos::new(1).expect("pos")
    );
    let left = store
        .inbox(reader, InboxPos::ZERO, 10)
        .await
        .expect("inbox");
    let positions: Vec<u64> = left.iter().map(|e| e.pos.get()).collect();
    assert_eq!(positions, vec![2, 3]);
    assert_eq!(left[0].envelope.sent_at, at(100));
}

/// Polls `future` once, so that an append is queued for the appenders, and returns it
/// with its output if that first poll already finished it.
async fn queue<F: Future + Unpin>(mut future: F) -> (F, Option<F::Output>) {
    let mut done = None;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(output) = Pin::new(&mut future).poll(cx) {
            done = Some(output);
        }
        Poll::Ready(())
    })
    .await;
    (future, done)
}

/// One batch with refusals of every kind among accepted appends: each request gets its own
/// answer, the accepted ones commit together (one transaction) with gapless IDs and inbox
/// positions in batch order, and the refused ones write nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_do_not_affect_their_batch() {
    let Some((url, schema, options, _cleanup)) = fresh_schema(2) else {
        return;
    };
    // One appender, so that the requests queued while it is busy form one batch.
    let options = options.appenders(1);
    let store = PostgresStore::connect(&url, options)
        .await
        .expect("connect");
    let (a, da) = testing::user_with_devices(&store, 1).await;
    let (b, db) = testing::user_with_devices(&store, 2).await;
    let (_, dc) = testing::user_with_devices(&store, 1).await;
    let group = store
        .create_group(a, &[b], 10, testing::NOW)
        .await
        .expect("group")
        .id;
    let direct = store
        .open_direct(a, b, testing::NOW)
        .await
        .expect("direct")
        .id;

    // Hold the direct conversation's row lock, so the appender's first batch waits on it.
    let (mut raw, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("raw");
    tokio::spawn(conn);
    let holder = raw.transaction().await.expect("begin");
    holder
        .execute(
            &format!("SELECT 1 FROM {schema}.conversations WHERE id = $1 FOR UPDATE"),
            &[&(direct.get() as i64)],
        )
        .await
        .expect("lock");
    let holder_pid: i32 = holder
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    let blocked = store.append(testing::message(direct, da[0], &db));
    let (blocked, early) = queue(blocked).await;
    assert!(early.is_none());
    let (watch, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("watch");
    tokio::spawn(conn);
    loop {
        let waiting: i64 = watch
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
                &[&holder_pid],
            )
            .await
            .expect("activity")
            .get(0);
        if waiting > 0 {
            break;
        }
        tokio::task::yield_now().await;
    }

    let first = testing::message(group, da[0], &db);
    let mut stale = testing::message(group, da[0], &db);
    stale.recipients.pop();
    let second = testing::message(group, da[0], &db);
    let mut reused = testing::message(direct, da[0], &db);
    reused.client_key = second.client_key;
    let requests = vec![
        first.clone(),
        stale,
        second,
        first,
        testing::message(group, dc[0], &db),
        reused,
        testing::message(group, da[0], &db),
        testing::message(ConversationId::new(999_999).expect("id"), da[0], &db),
    ];
    let mut pending = Vec::new();
    for request in requests {
        pending.push(queue(store.append(request)).await);
    }
    holder.commit().await.expect("release");
    assert!(!blocked.await.expect("blocked append").duplicate);
    let mut results = Vec::new();
    for (future, early) in pending {
        results.push(match early {
            Some(result) => result,
            None => future.await,
        });
    }

    let ok = |i: usize| results[i].as_ref().expect("accepted");
    assert_eq!((ok(0).id.get(), ok(0).duplicate), (1, false));
    assert!(matches!(results[1], Err(StoreError::StaleDevices(_))));
    assert_eq!((ok(2).id.get(), ok(2).duplicate), (2, false));
    assert_eq!((ok(3).id.get(), ok(3).duplicate), (1, true));
    assert!(ok(3).deliveries.is_empty());
    assert!(matches!(results[4], Err(StoreError::NotMember)));
    assert!(matches!(results[5], Err(StoreError::ClientKeyReused)));
    assert_eq!((ok(6).id.get(), ok(6).duplicate), (3, false));
    assert!(matches!(results[7], Err(StoreError::NotFound)));
    for &device in &db {
        let positions: Vec<(u64, u64)> = [0, 2, 6]
            .iter()
            .map(|&i| {
                let (_, pos) = ok(i)
                    .deliveries
                    .iter()
                    .find(|(d, _)| *d == device)
                    .expect("delivered");
                (ok(i).id.get(), pos.get())
            })
            .collect();
        // The direct message took position 1 before the batch.
        assert_eq!(positions, vec![(1, 2), (2, 3), (3, 4)]);
        let inbox = store
            .inbox(device, InboxPos::ZERO, 10)
            .await
            .expect("inbox");
        let ids: Vec<(u64, u64)> = inbox
            .iter()
            .map(|e| (e.envelope.conversation.get(), e.pos.get()))
            .collect();
        let (d, g) = (direct.get(), group.get());
        assert_eq!(ids, vec![(d, 1), (g, 2), (g, 3), (g, 4)]);
    }
    let committed: Vec<i64> = watch
        .query(
            &format!(
                "SELECT count(*) FROM {schema}.messages WHERE conversation_id = $1
                 UNION ALL
                 SELECT count(DISTINCT xmin::text) FROM {schema}.messages
                 WHERE conversation_id = $1"
            ),
            &[&(group.get() as i64)],
        )
        .await
        .expect("messages")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(committed, vec![3, 1], "three messages, one transaction");
}

/// Two nodes (two stores on one schema, several appenders each) appending to one group
/// at once: IDs stay gapless in commit order and every inbox gapless.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn appends_from_two_nodes_are_gapless() {
    let Some((url, _schema, options, _cleanup)) = fresh_schema(2) else {
        return;
    };
    let options = options.appenders(3);
    let first = Arc::new(
        PostgresStore::connect(&url, options.clone())
            .await
            .expect("connect"),
    );
    let second = Arc::new(
        PostgresStore::connect(&url, options)
            .await
            .expect("connect"),
    );
    let mut users = Vec::new();
    let mut devices = Vec::new();
    for _ in 0..4 {
        let (u, d) = testing::user_with_devices(&*first, 2).await;
        users.push(u);
        devices.extend(d);
    }
    let conv = first
        .create_group(users[0], &users[1..], 10, testing::NOW)
        .await
        .expect("group")
        .id;
    const PER_TASK: u64 = 15;
    let mut tasks = tokio::task::JoinSet::new();
    for (i, &sender) in devices.iter().enumerate() {
        let store = if i % 2 == 0 { &first } else { &second };
        let store = Arc::clone(store);
        let to: Vec<_> = devices.iter().copied().filter(|&d| d != sender).collect();
        tasks.spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..PER_TASK {
                let done = store
                    .append(testing::message(conv, sender, &to))
                    .await
                    .expect("append");
                ids.push(done.id.get());
            }
            ids
        });
    }
    let mut ids = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let done = done.expect("task");
        assert!(done.windows(2).all(|w| w[0] < w[1]));
        ids.extend(done);
    }
    ids.sort_unstable();
    let total = devices.len() as u64 * PER_TASK;
    assert_eq!(ids, (1..=total).collect::<Vec<_>>());
    for &device in &devices {
        let inbox = second
            .inbox(device, InboxPos::ZERO, 1_000)
            .await
            .expect("inbox");
        let positions: Vec<u64> = inbox.iter().map(|e| e.pos.get()).collect();
        assert_eq!(positions, (1..=total - PER_TASK).collect::<Vec<_>>());
        assert!(
            inbox
                .windows(2)
                .all(|w| w[0].envelope.id < w[1].envelope.id),
            "an inbox lists the conversation in ID order"
        );
    }
}

/// One client key sent to two conversations through two nodes at once: exactly one
/// append is written, the other is refused as a reused key (the node that lost the race
/// on the key runs its batch again and finds the winner's).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_raced_across_nodes_is_written_once() {
    let Some((url, _schema, options, _cleanup)) = fresh_schema(2) else {
        return;
    };
    let first = PostgresStore::connect(&url, options.clone())
        .await
        .expect("connect");
    let second = PostgresStore::connect(&url, options)
        .await
        .expect("connect");
    let (a, da) = testing::user_with_devices(&first, 1).await;
    let (b, db) = testing::user_with_devices(&first, 1).await;
    let (c, dc) = testing::user_with_devices(&first, 1).await;
    let one = first
        .open_direct(a, b, testing::NOW)
        .await
        .expect("direct")
        .id;
    let other = first
        .open_direct(a, c, testing::NOW)
        .await
        .expect("direct")
        .id;
    for _ in 0..20 {
        let here = testing::message(one, da[0], &db);
        let mut there = testing::message(other, da[0], &dc);
        there.client_key = here.client_key;
        let (x, y) = tokio::join!(first.append(here), second.append(there));
        let written = [&x, &y]
            .iter()
            .filter(|r| r.as_ref().is_ok_and(|a| !a.duplicate))
            .count();
        let reused = [&x, &y]
            .iter()
            .filter(|r| matches!(r, Err(StoreError::ClientKeyReused)))
            .count();
        assert_eq!((written, reused), (1, 1), "{x:?} {y:?}");
    }
}

/// A version 3 schema (groups without roles, their creator unrecorded) migrates to version
/// 4 with every member of an existing group an admin; what a version 3 node writes during
/// a rolling upgrade (a member row without a role) reads as an admin too, so no group is
/// ever left without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_3_groups_migrate_with_every_member_an_admin() {
    let Some((url, schema, options, _cleanup)) = fresh_schema(2) else {
        return;
    };
    let store = PostgresStore::connect(&url, options.clone())
        .await
        .expect("connect");
    let a = testing::user(&store).await;
    let b = testing::user(&store).await;
    let c = testing::user(&store).await;
    let conv = store
        .create_group(a, &[b], 100, testing::NOW)
        .await
        .expect("group");
    drop(store);

    let client = downgrade(&url, &schema, 3).await;

    let store = PostgresStore::connect(&url, options)
        .await
        .expect("migrate");
    let group = store.group(conv.id).await.expect("group");
    let mut both = vec![a, b];
    both.sort();
    assert_eq!(group.admins().collect::<Vec<_>>(), both);
    // What a version 3 node writes when adding: no role. It reads like pre-roles data.
    client
        .execute(
            &format!("INSERT INTO {schema}.members (conversation_id, user_id) VALUES ($1, $2)"),
            &[&(conv.id.get() as i64), &(c.get() as i64)],
        )
        .await
        .expect("old insert");
    let group = store.group(conv.id).await.expect("group");
    assert_eq!(group.role(c), Some(chat_core::Role::Admin));
    assert!(group.admitted() > 0);
}

/// A version 4 schema (no device lists) migrates to version 5 with every device linked, and
/// a device a version 4 node registers during a rolling upgrade (without the column) is
/// linked too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_4_devices_migrate_linked() {
    let Some((url, schema, options, _cleanup)) = fresh_schema(2) else {
        return;
    };
    let store = PostgresStore::connect(&url, options.clone())
        .await
        .expect("connect");
    let (user, _) = testing::user_with_devices(&store, 1).await;
    drop(store);

    let client = downgrade(&url, &schema, 4).await;

    let store = PostgresStore::connect(&url, options)
        .await
        .expect("migrate");
    // What a version 4 node writes when a device logs in: no `linked`.
    client
        .execute(
            &format!(
                "INSERT INTO {schema}.devices (user_id, name, created_at) VALUES ($1, 'old node', 0)"
            ),
            &[&i64::try_from(user.get()).expect("id")],
        )
        .await
        .expect("insert as version 4");
    let devices = store.devices(user).await.expect("devices");
    assert_eq!(devices.len(), 2);
    assert!(devices.iter().all(|d| d.linked));
}

/// A version 5 schema (no group chains) migrates to version 6 with every existing group
/// without a chain: unsigned changes keep working on it, and a signed creation can start one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_5_groups_migrate_without_a_chain() {
    let Some((url, schema, options, _cleanup)) = fresh_schema(2) else {
        return;
    };
    let store = PostgresStore::connect(&url, options.clone())
        .await
        .expect("connect");
    let groups = testing::groups_before_chains(&store).await;
    drop(store);

    downgrade(&url, &schema, 5).await;

    let store = PostgresStore::connect(&url, options)
        .await
        .expect("migrate");
    testing::groups_made_before_chains_still_change(&store, groups).await;
}
