//! The writer's rerun path on the real schema and the real append: a batch in which one
//! request fails after it has written.

use std::sync::Arc;

use chat_core::{
    ConversationStore as _, Direction, InboxPos, MAX_ID, MessageId, MessageStore as _, StoreError,
};

use super::{SqliteOptions, SqliteStore};
use crate::testing::{self, NOW};

/// Twenty appends to one conversation share a batch; the eleventh fails after writing its
/// ID and message row (a trigger refuses its inbox entry, as a constraint would). The batch
/// runs again with a savepoint per request: the other nineteen are committed with gapless
/// IDs and inbox positions and survive reopening, and the failed one leaves nothing, not
/// even a used ID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_failing_after_writing_fails_alone() {
    const SENDS: usize = 20;
    const POISONED: usize = 10;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("chat.db");
    let store = Arc::new(
        SqliteStore::open(&path, SqliteOptions::default())
            .await
            .expect("open"),
    );
    let (a, senders) = testing::user_with_devices(&*store, 1).await;
    let (b, readers) = testing::user_with_devices(&*store, 1).await;
    let conv = store.open_direct(a, b, NOW).await.expect("direct").id;
    store
        .write(|c| {
            c.execute_batch(
                "CREATE TRIGGER poison BEFORE INSERT ON inbox WHEN NEW.header = X'DEAD'
                 BEGIN SELECT RAISE(ABORT, 'poisoned entry'); END;",
            )
            .map_err(StoreError::backend)
        })
        .await
        .expect("trigger");
    let before = store.stats();

    // Hold the writer until every append is queued, so that they share one batch. The
    // holder runs again in the rerun; only its first run waits.
    let (started, mut is_holding) = tokio::sync::mpsc::unbounded_channel::<()>();
    let (release, wait) = std::sync::mpsc::channel::<()>();
    let mut held = false;
    let holder = tokio::spawn({
        let store = Arc::clone(&store);
        async move {
            store
                .write(move |_| {
                    if !held {
                        held = true;
                        let _ = started.send(());
                        wait.recv().map_err(StoreError::backend)?;
                    }
                    Ok(())
                })
                .await
        }
    });
    is_holding.recv().await.expect("holder runs");
    let mut messages = Vec::new();
    let mut sends = Vec::new();
    for n in 0..SENDS {
        let mut message = testing::message(conv, senders[0], &readers);
        if n == POISONED {
            message.recipients[0].header = bytes::Bytes::from_static(&[0xde, 0xad]);
        }
        messages.push(message.clone());
        let store = Arc::clone(&store);
        sends.push(tokio::spawn(async move { store.append(message).await }));
    }
    while store.queue.max_capacity() - store.queue.capacity() < SENDS {
        tokio::task::yield_now().await;
    }
    release.send(()).expect("release");
    holder.await.expect("holder task").expect("holder");

    let mut ids = Vec::new();
    for (n, send) in sends.into_iter().enumerate() {
        let result = send.await.expect("send task");
        if n == POISONED {
            assert!(matches!(result, Err(StoreError::Backend(_))), "{result:?}");
        } else {
            let appended = result.expect("append");
            assert!(!appended.duplicate);
            ids.push(appended.id.get());
        }
    }
    ids.sort_unstable();
    assert_eq!(ids, (1..SENDS as u64).collect::<Vec<_>>());
    let after = store.stats();
    assert_eq!(after.commits - before.commits, 1, "one batch");
    assert_eq!(after.writes - before.writes, SENDS as u64 + 1);
    assert_eq!(after.reruns - before.reruns, 1);
    drop(store);

    // Durable: reopened, exactly the nineteen, and nothing of the poisoned one.
    let store = SqliteStore::open(&path, SqliteOptions::default())
        .await
        .expect("reopen");
    let top = MessageId::new(MAX_ID).expect("id");
    let history = store
        .history(conv, top, Direction::Before, 100)
        .await
        .expect("history");
    assert_eq!(history.len(), SENDS - 1);
    let poisoned = messages[POISONED].client_key;
    assert!(history.iter().all(|m| m.client_key != poisoned));
    let inbox = store
        .inbox(readers[0], InboxPos::ZERO, 100)
        .await
        .expect("inbox");
    let positions: Vec<u64> = inbox.iter().map(|e| e.pos.get()).collect();
    assert_eq!(positions, (1..SENDS as u64).collect::<Vec<_>>());
    assert!(inbox.iter().all(|e| e.envelope.client_key != poisoned));
    let conversation = store
        .conversation(conv)
        .await
        .expect("read")
        .expect("found");
    assert_eq!(
        conversation.last_message.map(MessageId::get),
        Some(SENDS as u64 - 1)
    );

    // Its retry, once nothing refuses it, is a new message with the next ID.
    store
        .write(|c| {
            c.execute_batch("DROP TRIGGER poison")
                .map_err(StoreError::backend)
        })
        .await
        .expect("drop trigger");
    let retry = store
        .append(messages[POISONED].clone())
        .await
        .expect("retry");
    assert!(!retry.duplicate);
    assert_eq!(retry.id.get(), SENDS as u64);
}

/// The writer never checkpoints; the checkpointer thread copies the WAL into the database
/// file while appends go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checkpointer_copies_the_wal_off_the_writer() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("chat.db");
    let store = Arc::new(
        SqliteStore::open(&path, SqliteOptions::default())
            .await
            .expect("open"),
    );
    let (a, senders) = testing::user_with_devices(&*store, 1).await;
    let (b, readers) = testing::user_with_devices(&*store, 1).await;
    let conv = store.open_direct(a, b, NOW).await.expect("direct").id;
    let db_size = || std::fs::metadata(&path).map_or(0, |m| m.len());
    let before = db_size();
    // About 3 MiB of messages: far past the 1,000 pages at which SQLite's own automatic
    // checkpoint would have run inside a commit.
    for _ in 0..100 {
        let mut message = testing::message(conv, senders[0], &readers);
        message.body = bytes::Bytes::from(vec![7u8; 32 * 1024]);
        store.append(message).await.expect("append");
    }
    let copied = async {
        loop {
            let checkpointed = store.counters.checkpointed.notified();
            tokio::pin!(checkpointed);
            checkpointed.as_mut().enable();
            if store.stats().checkpoints > 0 && db_size() > before + 2 * 1024 * 1024 {
                return;
            }
            checkpointed.await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(20), copied)
        .await
        .expect("the checkpointer copied the WAL into the database file");
}

/// Under steady appends with readers always busy, SQLite never finds the moment to write
/// the WAL from its start again on its own: the checkpointer restarts it once it passes
/// its bound, so the file stays near the bound instead of holding everything written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_stays_bounded_under_steady_load() {
    const BOUND: u64 = 256 * 1024;
    const BODY: usize = 16 * 1024;
    const APPENDS: usize = 400;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("chat.db");
    let options = SqliteOptions::default()
        .synchronous(super::Synchronous::Normal)
        .max_wal_bytes(BOUND);
    let store = Arc::new(SqliteStore::open(&path, options).await.expect("open"));
    let (a, senders) = testing::user_with_devices(&*store, 1).await;
    let (b, readers) = testing::user_with_devices(&*store, 1).await;
    let conv = store.open_direct(a, b, NOW).await.expect("direct").id;

    // Readers that keep a snapshot open most of the time, as a busy node's do.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut reading = Vec::new();
    for _ in 0..3 {
        let (store, stop, device) = (store.clone(), stop.clone(), readers[0]);
        reading.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                store
                    .inbox(device, InboxPos::ZERO, 20)
                    .await
                    .expect("inbox");
            }
        }));
    }
    let wal_size = || std::fs::metadata(dir.path().join("chat.db-wal")).map_or(0, |m| m.len());
    let mut largest = 0;
    for i in 0..APPENDS {
        let mut message = testing::message(conv, senders[0], &readers);
        message.body = bytes::Bytes::from(vec![7u8; BODY]);
        store.append(message).await.expect("append");
        // Give the checkpointer its turns: wait for one every 16 appends (256 KiB).
        if i % 16 == 15 {
            let checkpointed = store.counters.checkpointed.notified();
            tokio::time::timeout(std::time::Duration::from_secs(20), checkpointed)
                .await
                .expect("a checkpoint ran");
        }
        largest = largest.max(wal_size());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in reading {
        r.await.expect("reader");
    }
    let written = (APPENDS * BODY) as u64;
    let stats = store.stats();
    let restarts = stats.wal_restarts;
    assert!(stats.wal_restart_max_micros <= stats.wal_restart_micros);
    // The bound, plus what is written between two checkpoints and the pages beside each
    // body: far below the 6.4 MB written.
    assert!(
        largest < written / 4,
        "the WAL reached {largest} bytes for {written} written ({restarts} restarts)"
    );
    assert!(restarts > 0);
}
