//! A device linked to a user receives what is sent afterwards (the sender's device list is
//! repaired on `stale_devices`, from the user's signed list), and a device that comes back
//! with new keys must be linked again; contacts see both as device list changes.

mod common;

use chat::client::{Client, Credentials, Event, MemoryStore};
use common::{PASSWORD, TestServer, config, device, link, next_message, synced, user, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linked_devices_receive_and_device_changes_are_reported() {
    let server = TestServer::start(config("memory:")).await;
    let (alice, mut a) = user(&server, "alice").await;
    let (bob1, mut b1) = user(&server, "bob").await;
    synced(&mut a).await;
    synced(&mut b1).await;
    let chat = alice.open_direct(bob1.user()).await.expect("open");
    let alice_chat = alice.conversation(chat);
    alice_chat.send_text("one").await.expect("send");
    assert_eq!(next_message(&mut b1, chat).await.text(), Some("one"));
    let number = alice.safety_number(bob1.user()).await.expect("number");

    // Bob links a phone; Alice's next message reaches it without Alice doing anything, and
    // Alice is told.
    let (bob2, mut b2) = device(&server, "bob", &bob1).await;
    synced(&mut b2).await;
    let two = alice_chat.send_text("two").await.expect("send");
    for events in [&mut b1, &mut b2] {
        let m = next_message(events, chat).await;
        assert_eq!((m.id, m.text()), (two, Some("two")));
    }
    let phone = bob2.device();
    let added = wait_for(&mut a, |e| match e {
        Event::DevicesChanged { user, added, .. } if *user == bob1.user() => Some(added.clone()),
        _ => None,
    })
    .await;
    assert_eq!(added, vec![phone.device]);
    assert_eq!(
        alice.devices_of(bob1.user()).await.expect("devices"),
        vec![bob1.device().device, phone.device]
    );
    assert_eq!(
        alice.safety_number(bob1.user()).await.expect("number"),
        number,
        "a linked device leaves the safety number as it was"
    );

    // The phone is reinstalled: same device, new keys. Until Bob links it again it is not
    // on his list; then Alice is told when it writes, and its new keys are used.
    drop((bob2, b2));
    let bob2 = Client::relogin(
        &server.url(),
        "bob",
        PASSWORD,
        phone.device,
        MemoryStore::new(),
    )
    .await
    .expect("relogin");
    link(&bob1, &bob2).await;
    let mut b2 = bob2.events();
    synced(&mut b2).await;
    let three = bob2
        .conversation(chat)
        .send_text("three")
        .await
        .expect("send");
    let changed = wait_for(&mut a, |e| match e {
        Event::DevicesChanged { user, changed, .. } if *user == bob1.user() => {
            Some(changed.clone())
        }
        _ => None,
    })
    .await;
    assert_eq!(changed, vec![phone.device]);
    let m = next_message(&mut a, chat).await;
    assert_eq!((m.id, m.text()), (three, Some("three")));

    let four = alice_chat.send_text("four").await.expect("send");
    let m = next_message(&mut b2, chat).await;
    assert_eq!((m.id, m.text()), (four, Some("four")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_week_old_signed_prekey_is_rotated_and_published() {
    use std::sync::Arc;

    use chat::client::SqliteStore;
    use chat::client::store::{ClientStore, Write};
    use chat::core::Timestamp;

    let server = TestServer::start(config("memory:")).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bob.db");
    let bob = Client::builder(server.url())
        .store(SqliteStore::open(&path).expect("store"))
        .device_name("phone")
        .register(&Credentials::new("bob", PASSWORD))
        .await
        .expect("register");
    let alice_store = Arc::new(MemoryStore::new());
    let alice = Client::builder(server.url())
        .store(alice_store.clone())
        .device_name("laptop")
        .register(&Credentials::new("alice", PASSWORD))
        .await
        .expect("register");
    let token = alice_store.device().expect("read").expect("device").token;
    let spk = |bundles: &serde_json::Value| bundles["bundles"][0]["signed_prekey"]["id"].as_u64();
    let bundles = format!("/v1/users/{}/bundles", bob.user());
    let before = common::http_get(server.addr, &bundles, &token).await;
    drop(bob);

    // Pretend the key was made long ago; the reopened client rotates and publishes it
    // before it reports being up to date.
    let store = SqliteStore::open(&path).expect("store");
    store
        .commit(vec![Write::SignedPrekeyMadeAt(Timestamp::from_millis(0))])
        .expect("commit");
    let bob = Client::builder(server.url())
        .store(store)
        .open()
        .await
        .expect("open");
    let mut b = bob.events();
    synced(&mut b).await;
    let after = common::http_get(server.addr, &bundles, &token).await;
    assert!(spk(&before).is_some());
    assert_ne!(
        spk(&before),
        spk(&after),
        "a new signed prekey is published"
    );

    // A session started on the new key works.
    let chat = alice.open_direct(bob.user()).await.expect("open");
    alice
        .conversation(chat)
        .send_text("on the new prekey")
        .await
        .expect("send");
    assert_eq!(
        next_message(&mut b, chat).await.text(),
        Some("on the new prekey")
    );
}
