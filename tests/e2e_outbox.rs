//! Messages written while the network is down survive the app being killed (and can be
//! written after a restart while still offline): the client sends them from its outbox once
//! the network is back, and each appears once. Presence, typing and receipts
//! reach the other side.

mod common;

use std::collections::BTreeSet;

use chat::client::{Client, ConnectionState, Credentials, Event, ReceiptKind, SqliteStore};
use common::{PASSWORD, Proxy, TestServer, config, next_text, synced, user, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_survives_an_app_restart() {
    let server = TestServer::start(config("memory:")).await;
    let proxy = Proxy::start(server.addr).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("alice.db");

    let alice = Client::builder(proxy.url())
        .store(SqliteStore::open(&path).expect("store"))
        .device_name("laptop")
        .register(&Credentials::new("alice", PASSWORD))
        .await
        .expect("alice");
    let mut a = alice.events();
    let (bob, mut b) = user(&server, "bob").await;
    synced(&mut a).await;
    synced(&mut b).await;
    let chat = alice.open_direct(bob.user()).await.expect("open");
    let alice_chat = alice.conversation(chat);
    alice_chat.send_text("online").await.expect("send");
    assert_eq!(next_text(&mut b, chat).await.text(), Some("online"));

    // The network goes away; Alice writes anyway, then her app is killed.
    proxy.down();
    wait_for(&mut a, |e| {
        matches!(e, Event::Connection(ConnectionState::Disconnected { .. })).then_some(())
    })
    .await;
    let mut keys = Vec::new();
    for i in 0..3 {
        keys.push(
            alice_chat
                .queue_text(&format!("offline {i}"))
                .await
                .expect("queue"),
        );
    }
    assert_eq!(alice.pending().await.expect("outbox"), 3);
    drop((alice_chat, alice, a)); // the handle too: it is a clone of the client

    // Restarted while still offline: writing works from what the store knows.
    let alice = Client::builder(proxy.url())
        .store(SqliteStore::open(&path).expect("store"))
        .open()
        .await
        .expect("reopen");
    let alice_chat = alice.conversation(chat);
    for i in 3..5 {
        keys.push(
            alice_chat
                .queue_text(&format!("offline {i}"))
                .await
                .expect("queue offline after a restart"),
        );
    }
    assert_eq!(alice.pending().await.expect("outbox"), 5);

    // Back online: the outbox goes out.
    proxy.up(server.addr);
    let mut a = alice.events();
    let mut sent = BTreeSet::new();
    while sent.len() < keys.len() {
        let key = wait_for(&mut a, |e| match e {
            Event::Sent { client_key, .. } => Some(*client_key),
            _ => None,
        })
        .await;
        sent.insert(key);
    }
    assert_eq!(sent, keys.iter().copied().collect());
    assert_eq!(alice.pending().await.expect("outbox"), 0);
    for (i, key) in keys.iter().enumerate() {
        let m = next_text(&mut b, chat).await;
        assert_eq!(m.text(), Some(format!("offline {i}").as_str()));
        assert_eq!(m.client_key, *key);
    }
    // Exactly once: Alice's history and Bob's both hold six messages.
    assert_eq!(
        alice_chat.history(None, 100).await.expect("history").len(),
        6
    );
    assert_eq!(
        bob.conversation(chat)
            .history(None, 100)
            .await
            .expect("history")
            .len(),
        6
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_typing_and_receipts_reach_the_other_side() {
    let server = TestServer::start(config("memory:")).await;
    let proxy = Proxy::start(server.addr).await;
    let alice = Client::builder(proxy.url())
        .device_name("laptop")
        .register(&Credentials::new("alice", PASSWORD))
        .await
        .expect("alice");
    let mut a = alice.events();
    let (bob, mut b) = user(&server, "bob").await;
    synced(&mut a).await;
    synced(&mut b).await;
    let chat = alice.open_direct(bob.user()).await.expect("open");

    let bob_online = |e: &Event| match e {
        Event::Presence { user, online, .. } if *user == bob.user() => Some(*online),
        _ => None,
    };
    alice.subscribe_presence(&[bob.user()]).expect("subscribe");
    assert!(wait_for(&mut a, bob_online).await, "bob is connected");

    // The subscription outlives a reconnect: the server answers the renewed one.
    proxy.down();
    wait_for(&mut a, |e| {
        matches!(e, Event::Connection(ConnectionState::Disconnected { .. })).then_some(())
    })
    .await;
    proxy.up(server.addr);
    assert!(
        wait_for(&mut a, bob_online).await,
        "renewed after the reconnect"
    );
    let bob_chat = bob.conversation(chat);

    bob_chat.set_typing(true).expect("typing");
    let users = wait_for(&mut a, |e| match e {
        Event::Typing { users, .. } if !users.is_empty() => Some(users.clone()),
        _ => None,
    })
    .await;
    assert_eq!(users.into_iter().collect::<Vec<_>>(), vec![bob.user()]);

    let id = alice
        .conversation(chat)
        .send_text("read me")
        .await
        .expect("send");
    let m = next_text(&mut b, chat).await;
    bob_chat
        .send_receipt(ReceiptKind::Read, m.id)
        .expect("receipt");
    let (who, up_to) = wait_for(&mut a, |e| match e {
        Event::Receipt {
            user,
            kind: ReceiptKind::Read,
            up_to,
            ..
        } => Some((*user, *up_to)),
        _ => None,
    })
    .await;
    assert_eq!((who, up_to), (bob.user(), id));
}
