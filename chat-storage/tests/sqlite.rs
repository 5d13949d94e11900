//! The conformance suite on the SQLite backend, plus what only SQLite has: its schema
//! version check and reopening a file.

use std::sync::Arc;

use chat_core::{
    AccountStore as _, ConversationStore as _, InboxPos, KeyStore as _, MessageStore as _,
    StoreError, Timestamp,
};
use chat_storage::testing::{self, Fixture};
use chat_storage::{SqliteOptions, SqliteStore};

async fn fresh() -> Option<Fixture> {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(dir.path().join("chat.db"), SqliteOptions::default())
        .await
        .expect("open");
    Some(Fixture::with_guard(Arc::new(store), dir))
}

chat_storage::conformance_tests!(fresh());

/// What each migration after version 2 added, undone (index 0 undoes migration 3): a test
/// takes a fresh file back to an older version with [`downgrade`] and checks that the
/// migrations bring its data forward.
const UNDO: [&str; 4] = [
    "DROP INDEX inbox_by_time;
     ALTER TABLE inbox DROP COLUMN sent_at;
     ALTER TABLE devices DROP COLUMN inbox_floor;",
    "ALTER TABLE members DROP COLUMN role;
     ALTER TABLE members DROP COLUMN joined;
     ALTER TABLE conversations DROP COLUMN group_name;
     ALTER TABLE conversations DROP COLUMN add_members;
     ALTER TABLE conversations DROP COLUMN edit_name;
     ALTER TABLE conversations DROP COLUMN admitted;",
    "ALTER TABLE devices DROP COLUMN linked;
     ALTER TABLE devices DROP COLUMN link_payload;
     DROP TABLE device_lists;",
    "ALTER TABLE conversations DROP COLUMN group_head;
     DROP TABLE group_changes;",
];

/// Takes the file at `path` back to `version`, undoing every later migration, newest first.
fn downgrade(path: &std::path::Path, version: usize) {
    let conn = rusqlite::Connection::open(path).expect("raw open");
    for sql in UNDO.iter().skip(version - 2).rev() {
        conn.execute_batch(sql).expect("downgrade");
    }
    conn.pragma_update(None, "user_version", version as i64)
        .expect("downgrade");
}

#[tokio::test]
async fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("chat.db");
    drop(
        SqliteStore::open(&path, SqliteOptions::default())
            .await
            .expect("open"),
    );
    let conn = rusqlite::Connection::open(&path).expect("raw open");
    let current: u32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("version");
    assert!(current >= 1);
    conn.pragma_update(None, "user_version", current + 1)
        .expect("bump");
    drop(conn);
    let err = SqliteStore::open(&path, SqliteOptions::default())
        .await
        .expect_err("refused");
    match err {
        StoreError::SchemaTooNew { found, supported } => {
            assert_eq!((found, supported), (current + 1, current));
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_reopening() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("chat.db").display());
    let store = chat_storage::open(&url).await.expect("open");
    let (conv_user, devices) = testing::user_with_devices(&*store, 1).await;
    let (_, others) = testing::user_with_devices(&*store, 1).await;
    let other_user = others[0].user;
    let conv = store
        .open_direct(conv_user, other_user, testing::NOW)
        .await
        .expect("direct");
    let msg = testing::message(conv.id, devices[0], &others);
    store.append(msg.clone()).await.expect("append");
    drop(store);

    let store = chat_storage::open(&url).await.expect("reopen");
    let entries = store
        .inbox(others[0], InboxPos::ZERO, 10)
        .await
        .expect("inbox");
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].envelope.body, msg.body);
    let retry = store.append(msg).await.expect("retry after reopen");
    assert!(retry.duplicate);
}

#[tokio::test]
async fn in_memory_paths_are_refused() {
    let err = chat_storage::open("sqlite://:memory:").await.err();
    assert!(matches!(err, Some(StoreError::Invalid(_))), "{err:?}");
}

/// A version 2 database (inbox entries without their own time, devices without a floor)
/// migrates to version 3 with each entry taking its message's time, so retention trims
/// old entries and keeps newer ones from the first pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_2_inboxes_migrate_with_their_message_times() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("chat.db");
    let store = SqliteStore::open(&path, SqliteOptions::default())
        .await
        .expect("open");
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

    // Back to the version 2 shape: what migration 3 adds, removed.
    downgrade(&path, 2);

    let store = SqliteStore::open(&path, SqliteOptions::default())
        .await
        .expect("migrate");
    assert_eq!(
        store.inbox_floor(readers[0]).await.expect("floor"),
        InboxPos::ZERO
    );
    assert_eq!(store.trim_inboxes(at(50), 100).await.expect("trim"), 1);
    assert_eq!(
        store.inbox_floor(readers[0]).await.expect("floor"),
        InboxPos::new(1).expect("pos")
    );
    let left = store
        .inbox(readers[0], InboxPos::ZERO, 10)
        .await
        .expect("inbox");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].envelope.sent_at, at(100));
}

/// A version 3 database (groups without roles, their creator unrecorded) migrates to
/// version 4 with every member of an existing group an admin, under the default settings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_3_groups_migrate_with_every_member_an_admin() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("chat.db");
    let store = SqliteStore::open(&path, SqliteOptions::default())
        .await
        .expect("open");
    let a = testing::user(&store).await;
    let b = testing::user(&store).await;
    let c = testing::user(&store).await;
    let conv = store
        .create_group(a, &[b, c], 100, testing::NOW)
        .await
        .expect("group");
    drop(store);

    downgrade(&path, 3);

    let store = SqliteStore::open(&path, SqliteOptions::default())
        .await
        .expect("migrate");
    let group = store.group(conv.id).await.expect("group");
    let mut all = vec![a, b, c];
    all.sort();
    assert_eq!(group.admins().collect::<Vec<_>>(), all);
    assert_eq!(group.settings(), chat_core::GroupSettings::default());
    // Any of them may now act as an admin, as any member could before.
    store
        .change_group(conv.id, c, &chat_core::GroupOp::Remove(a), 100, None)
        .await
        .expect("an old member removes another");
}

/// A version 4 database (no device lists) migrates to version 5 with every device linked:
/// messages keep reaching them until their user publishes a list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_4_devices_migrate_linked() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("chat.db");
    let store = SqliteStore::open(&path, SqliteOptions::default())
        .await
        .expect("open");
    let (user, devices) = testing::user_with_devices(&store, 2).await;
    drop(store);

    downgrade(&path, 4);

    let store = SqliteStore::open(&path, SqliteOptions::default())
        .await
        .expect("migrate");
    let listed = store.devices(user).await.expect("devices");
    assert_eq!(listed.len(), devices.len());
    assert!(listed.iter().all(|d| d.linked));
    assert_eq!(store.device_list(user).await.expect("list"), None);
}

/// A version 5 database (no group chains) migrates to version 6 with every existing group
/// without a chain: unsigned changes keep working on it, and a signed creation can start one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_5_groups_migrate_without_a_chain() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("chat.db");
    let store = SqliteStore::open(&path, SqliteOptions::default())
        .await
        .expect("open");
    let groups = testing::groups_before_chains(&store).await;
    drop(store);

    downgrade(&path, 5);

    let store = SqliteStore::open(&path, SqliteOptions::default())
        .await
        .expect("migrate");
    testing::groups_made_before_chains_still_change(&store, groups).await;
}
