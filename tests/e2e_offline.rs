//! A device offline while 1,000 messages arrive gets them all, in order, once; an app
//! restart in the middle of the backlog loses nothing and duplicates nothing.

mod common;

use std::collections::BTreeSet;

use chat::client::{Client, Credentials, Event, SqliteStore};
use common::{PASSWORD, TestServer, WAIT, config, synced, user};

const MESSAGES: usize = 1_000;

/// Bob's app starting again on the store at `path`.
async fn resume(server: &TestServer, path: &std::path::Path) -> Client {
    Client::builder(server.url())
        .store(SqliteStore::open(path).expect("store"))
        .open()
        .await
        .expect("open bob")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_device_catches_up_in_order_once_across_a_restart() {
    let server = TestServer::start(config("memory:")).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bob.db");

    let (alice, mut a) = user(&server, "alice").await;
    synced(&mut a).await;
    // Bob registers, then goes offline (the app is closed).
    let bob = Client::builder(server.url())
        .store(SqliteStore::open(&path).expect("store"))
        .device_name("phone")
        .register(&Credentials::new("bob", PASSWORD))
        .await
        .expect("register bob");
    let bob_user = bob.user();
    drop(bob);

    let chat = alice.open_direct(bob_user).await.expect("open");
    let alice_chat = alice.conversation(chat);
    let mut ids = Vec::new();
    for i in 0..MESSAGES {
        ids.push(alice_chat.send_text(&format!("m{i}")).await.expect("send"));
    }

    // Bob's app starts, processes part of the backlog, and is killed.
    let mut seen = Vec::new();
    {
        let bob = resume(&server, &path).await;
        let mut events = bob.events();
        // Killed as soon as the first message is in: the driver is mid-backlog.
        while seen.is_empty() {
            match tokio::time::timeout(WAIT, events.next())
                .await
                .expect("in time")
            {
                Some(Event::Message(m)) => seen.push((m.id, m.text().map(str::to_owned))),
                Some(_) => {}
                None => panic!("stream ended"),
            }
        }
        drop(bob);
        // Events the first run committed and emitted before it stopped still count.
        while let Ok(Some(e)) = tokio::time::timeout(WAIT, events.next()).await {
            if let Event::Message(m) = e {
                seen.push((m.id, m.text().map(str::to_owned)));
            }
        }
    }

    let first_run = seen.len();
    assert!(
        first_run < MESSAGES,
        "the restart happened mid-stream ({first_run} seen)"
    );
    eprintln!("first run processed {first_run} messages");

    // The restarted app resumes from its stored cursor.
    let bob = resume(&server, &path).await;
    let mut events = bob.events();
    while seen.len() < MESSAGES {
        match tokio::time::timeout(WAIT, events.next())
            .await
            .expect("in time")
        {
            Some(Event::Message(m)) => seen.push((m.id, m.text().map(str::to_owned))),
            Some(_) => {}
            None => panic!("stream ended"),
        }
    }
    synced(&mut events).await;

    let expected: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (*id, Some(format!("m{i}"))))
        .collect();
    assert_eq!(seen, expected, "every message once, in order");
    let stored = bob
        .conversation(chat)
        .history(None, 2 * MESSAGES)
        .await
        .expect("history");
    assert_eq!(stored.len(), MESSAGES);
    let unique: BTreeSet<_> = stored.iter().map(|m| m.id).collect();
    assert_eq!(unique.len(), MESSAGES);

    // A store holds one device: logging another into it is refused.
    let again = Client::builder(server.url())
        .store(SqliteStore::open(&path).expect("store"))
        .device_name("tablet")
        .login(&Credentials::new("bob", PASSWORD))
        .await;
    assert!(matches!(again, Err(chat::client::Error::StoreInUse)));
}

/// The same on a current-thread runtime (tokio's default for `#[tokio::main]` in many apps):
/// both devices on durable stores, whose fsyncs the client runs on the blocking pool. A
/// backlog, a send made while it is stored, and a restart that finds everything on disk.
#[tokio::test(flavor = "current_thread")]
async fn a_client_on_a_current_thread_runtime_stores_a_backlog_durably() {
    const BACKLOG: usize = 200;
    let server = TestServer::start(config("memory:")).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bob.db");
    let alice = Client::builder(server.url())
        .store(SqliteStore::open(dir.path().join("alice.db")).expect("store"))
        .register(&Credentials::new("alice", PASSWORD))
        .await
        .expect("register alice");
    let mut a = alice.events();
    let bob = Client::builder(server.url())
        .store(SqliteStore::open(&path).expect("store"))
        .register(&Credentials::new("bob", PASSWORD))
        .await
        .expect("register bob");
    let bob_user = bob.user();
    bob.close().await;
    drop(bob);

    let chat = alice.open_direct(bob_user).await.expect("open");
    let alice_chat = alice.conversation(chat);
    for i in 0..BACKLOG {
        alice_chat.send_text(&format!("m{i}")).await.expect("send");
    }

    let bob = resume(&server, &path).await;
    let mut events = bob.events();
    let mut got = 0;
    let mut replied = false;
    while got < BACKLOG {
        match tokio::time::timeout(WAIT, events.next())
            .await
            .expect("in time")
        {
            Some(Event::Message(m)) => {
                assert_eq!(m.text(), Some(format!("m{got}").as_str()));
                got += 1;
                if !replied {
                    // A send while the rest of the backlog is being stored.
                    bob.conversation(chat).send_text("hi").await.expect("reply");
                    replied = true;
                }
            }
            Some(_) => {}
            None => panic!("stream ended"),
        }
    }
    loop {
        match tokio::time::timeout(WAIT, a.next()).await.expect("in time") {
            Some(Event::Message(m)) if m.text() == Some("hi") => break,
            Some(_) => {}
            None => panic!("stream ended"),
        }
    }
    bob.close().await;
    drop(bob);

    let bob = resume(&server, &path).await;
    let stored = bob
        .conversation(chat)
        .history(None, 2 * BACKLOG)
        .await
        .expect("history");
    assert_eq!(stored.len(), BACKLOG + 1, "the backlog and the reply");
    bob.close().await;
    alice.close().await;
}
