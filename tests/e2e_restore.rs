//! A server restored from a backup: devices that saw messages the backup does not have come
//! back with a cursor ahead of their inbox (`resync_required {cursor_ahead}`), and the IDs of
//! the lost messages are given to new ones. Nothing new is silently dropped: the new message
//! replaces the lost one under its ID on every device (its sender's included), and the app
//! hears of it (`Event::Replaced`).

mod common;

use std::path::Path;
use std::sync::Arc;

use chat::client::{Client, Credentials, Event, MemoryStore, ResyncReason};
use common::{PASSWORD, TestServer, config, next_text, stop, synced, wait_for};

/// Copies the node's database files (the main file, its WAL and shared memory).
fn copy_db(from: &Path, to: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let source = format!("{}{suffix}", from.display());
        let target = format!("{}{suffix}", to.display());
        match std::fs::copy(&source, &target) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let _ = std::fs::remove_file(&target);
            }
            Err(e) => panic!("copy {source}: {e}"),
        }
    }
}

async fn start(db: &Path) -> TestServer {
    TestServer::start(config(&format!("sqlite://{}", db.display()))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_after_a_restore_replace_the_lost_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, backup) = (dir.path().join("chat.db"), dir.path().join("backup.db"));
    let (alice_store, bob_store) = (Arc::new(MemoryStore::new()), Arc::new(MemoryStore::new()));

    // Alice and Bob talk; the operator takes a backup.
    let server = start(&db).await;
    let alice = Client::builder(server.url())
        .store(alice_store.clone())
        .device_name("laptop")
        .register(&Credentials::new("alice", PASSWORD))
        .await
        .expect("alice");
    let bob = Client::builder(server.url())
        .store(bob_store.clone())
        .device_name("phone")
        .register(&Credentials::new("bob", PASSWORD))
        .await
        .expect("bob");
    let (mut a, mut b) = (alice.events(), bob.events());
    synced(&mut a).await;
    synced(&mut b).await;
    let chat = alice.open_direct(bob.user()).await.expect("open");
    let m1 = alice
        .conversation(chat)
        .send_text("before the backup")
        .await
        .expect("m1");
    assert_eq!(next_text(&mut b, chat).await.id, m1);
    stop(alice, a).await;
    stop(bob, b).await;
    server.shutdown().await;
    copy_db(&db, &backup);

    // More is said, then the server is lost and restored from the backup.
    let server = start(&db).await;
    let alice = Client::builder(server.url())
        .store(alice_store.clone())
        .open()
        .await
        .expect("alice");
    let bob = Client::builder(server.url())
        .store(bob_store.clone())
        .open()
        .await
        .expect("bob");
    let (a, mut b) = (alice.events(), bob.events());
    let lost = alice
        .conversation(chat)
        .send_text("lost with the server")
        .await
        .expect("m2");
    assert_eq!(next_text(&mut b, chat).await.id, lost);
    // The lost part of the conversation also deletes that message and edits the first one,
    // and Bob reads all of it.
    alice
        .conversation(chat)
        .delete(lost)
        .await
        .expect("delete m2");
    let edit = alice
        .conversation(chat)
        .edit(m1, "edited, then lost")
        .await
        .expect("edit m1");
    wait_for(&mut b, |e| match e {
        Event::Updated(item) if item.id() == m1 && item.is_edited() => Some(()),
        _ => None,
    })
    .await;
    bob.conversation(chat).mark_read(edit).await.expect("read");
    assert_eq!(
        bob.conversation(chat).unread_count().await.expect("unread"),
        0
    );
    stop(alice, a).await;
    stop(bob, b).await;
    server.shutdown().await;
    // Restored into a new file: nothing of the old node's (it may still be closing) touches it.
    let restored = dir.path().join("restored.db");
    copy_db(&backup, &restored);

    let server = start(&restored).await;
    let bob = Client::builder(server.url())
        .store(bob_store.clone())
        .open()
        .await
        .expect("bob");
    let mut b = bob.events();
    let reason = wait_for(&mut b, |e| match e {
        Event::ResyncRequired { reason } => Some(*reason),
        _ => None,
    })
    .await;
    assert_eq!(reason, ResyncReason::CursorAhead);
    synced(&mut b).await;
    let alice = Client::builder(server.url())
        .store(alice_store.clone())
        .open()
        .await
        .expect("alice");
    let mut a = alice.events();
    synced(&mut a).await;

    // The restored server gives the lost message's ID to the next one.
    let next = alice
        .conversation(chat)
        .send_text("after the restore")
        .await
        .expect("m3");
    assert_eq!(next, lost, "the ID is given again");
    let mut replaced = false;
    let m = wait_for(&mut b, |e| match e {
        Event::Replaced { conversation, id } if (*conversation, *id) == (chat, lost) => {
            replaced = true;
            None
        }
        Event::Message(m) if m.conversation == chat => Some(m.clone()),
        _ => None,
    })
    .await;
    assert!(replaced, "the app hears the old message is gone");
    assert_eq!((m.id, m.text()), (next, Some("after the restore")));
    // The lost delete and edit went with the lost messages: the new message stands, the
    // first one shows its text from before the backup, and the new one is unread.
    for (who, client) in [("bob", &bob), ("alice", &alice)] {
        let shown: Vec<_> = client
            .conversation(chat)
            .timeline(None, 10)
            .await
            .expect("timeline")
            .iter()
            .map(|i| (i.id(), i.text().map(str::to_owned), i.is_deleted()))
            .collect();
        assert_eq!(
            shown,
            [
                (next, Some("after the restore".to_owned()), false),
                (m1, Some("before the backup".to_owned()), false),
            ],
            "{who}'s timeline"
        );
        let found = client
            .search("edited", chat::client::SearchPage::first(5))
            .await
            .expect("search");
        assert!(found.hits.is_empty(), "{who}: the lost edit is not found");
    }
    assert_eq!(
        bob.conversation(chat).unread_count().await.expect("unread"),
        1
    );
    for (who, client) in [("bob", &bob), ("alice", &alice)] {
        let texts: Vec<_> = client
            .conversation(chat)
            .history(None, 10)
            .await
            .expect("history")
            .into_iter()
            .map(|m| m.text().map(str::to_owned))
            .collect();
        assert_eq!(
            texts,
            [
                Some("before the backup".to_owned()),
                Some("after the restore".to_owned())
            ],
            "{who}'s history"
        );
    }
    assert!(
        bob.search("lost", chat::client::SearchPage::first(5))
            .await
            .expect("search")
            .hits
            .is_empty(),
        "the replaced text is not found any more"
    );
}
