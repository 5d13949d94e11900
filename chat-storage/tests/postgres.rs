//! The conformance suite on the PostgreSQL backend, each test in a fresh schema so tests run
//! in parallel. Reads the server's URL from `CHAT_TEST_POSTGRES_URL`; without it every test
//! prints one line saying it was skipped, and passes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use chat_core::{ConversationStore as _, InboxPos, MessageStore as _, StoreError, Timestamp};
use chat_storage::testing::{self, Fixture};
use chat_storage::{PostgresOptions, PostgresStore};

const URL_VAR: &str = "CHAT_TEST_POSTGRES_URL";

fn url() -> Option<String> {
    let url = std::env::var(URL_VAR).ok().filter(|u| !u.is_empty());
    if url.is_none() {
        eprintln!("skipped: set {URL_VAR} (e.g. postgres://postgres@127.0.0.1:5432/test) to run");
    }
    url
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
    let Some(url) = url() else { return };
    let schema = schema_name();
    let _cleanup = DropSchema {
        url: url.clone(),
        schema: schema.clone(),
    };
    let options = PostgresOptions::default()
        .pool_size(1)
        .schema(schema.clone());
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
    let Some(url) = url() else { return };
    let schema = schema_name();
    let _cleanup = DropSchema {
        url: url.clone(),
        schema: schema.clone(),
    };
    let options = PostgresOptions::default()
        .pool_size(2)
        .schema(schema.clone());
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

    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("raw");
    tokio::spawn(conn);
    client
        .batch_execute(&format!(
            "SET search_path = {schema};
             DROP INDEX inbox_by_time;
             ALTER TABLE inbox DROP COLUMN sent_at;
             ALTER TABLE devices DROP COLUMN inbox_floor;
             UPDATE schema_version SET version = 2;"
        ))
        .await
        .expect("downgrade");

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
