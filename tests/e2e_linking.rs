//! Account identities end to end (issue 16): linking a second device, what an unlinked
//! device gets, safety numbers from account keys, verification and account changes, and the
//! sender-key rotation that follows removing a device.

mod common;

use std::sync::Arc;

use chat::client::store::ClientStore;
use chat::client::{Client, Credentials, Error, Event, MemoryStore, TrustPolicy};
use chat::core::{Direction, MessageId, Store};
use common::{PASSWORD, TestServer, config, link, next_text, synced, user, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linked_device_reads_and_sends_in_direct_and_group_chats() {
    let server = TestServer::start(config("memory:")).await;
    let (alice, mut a) = user(&server, "alice").await;
    let (bob, mut b1) = user(&server, "bob").await;
    let (carol, mut c) = user(&server, "carol").await;
    for events in [&mut a, &mut b1, &mut c] {
        synced(events).await;
    }
    assert!(
        alice.is_linked().await.expect("state"),
        "the first device is linked"
    );
    // A linked device shows no link code, and removes itself only by logging out.
    assert!(matches!(alice.link_code().await, Err(Error::AlreadyLinked)));
    assert!(matches!(
        alice.remove_device(alice.device().device).await,
        Err(Error::ThisDevice)
    ));

    // Bob's tablet logs in: unlinked, it can send nothing and is sent nothing.
    let tablet = Client::builder(server.url())
        .device_name("tablet")
        .login(&Credentials::new("bob", PASSWORD))
        .await
        .expect("login");
    let mut b2 = tablet.events();
    synced(&mut b2).await;
    let direct = alice.open_direct(bob.user()).await.expect("direct");
    let alice_direct = alice.conversation(direct);
    alice_direct.send_text("before").await.expect("send");
    assert_eq!(next_text(&mut b1, direct).await.text(), Some("before"));
    assert!(matches!(
        tablet
            .conversation(direct)
            .send_text("from the tablet")
            .await,
        Err(Error::NotLinked)
    ));
    assert!(tablet.finish_link().await.is_err(), "no code was shown yet");

    link(&bob, &tablet).await;
    // The first message the tablet gets is the first one sent after it was linked.
    alice_direct.send_text("after").await.expect("send");
    assert_eq!(next_text(&mut b2, direct).await.text(), Some("after"));
    assert_eq!(next_text(&mut b1, direct).await.text(), Some("after"));

    // The tablet sends one-to-one and in a group; everyone else reads it.
    tablet
        .conversation(direct)
        .send_text("hi from the tablet")
        .await
        .expect("send");
    for events in [&mut a, &mut b1] {
        assert_eq!(
            next_text(events, direct).await.text(),
            Some("hi from the tablet")
        );
    }
    let group = alice
        .create_group(&[bob.user(), carol.user()])
        .await
        .expect("group");
    alice
        .conversation(group)
        .send_text("group hello")
        .await
        .expect("send");
    for events in [&mut b1, &mut b2, &mut c] {
        assert_eq!(next_text(events, group).await.text(), Some("group hello"));
    }
    tablet
        .conversation(group)
        .send_text("tablet in group")
        .await
        .expect("send");
    for events in [&mut a, &mut b1, &mut c] {
        assert_eq!(
            next_text(events, group).await.text(),
            Some("tablet in group")
        );
    }

    // Both sides compute the same safety number, on every device, with no prekey spent.
    let number = alice.safety_number(bob.user()).await.expect("number");
    assert_eq!(
        bob.safety_number(alice.user()).await.expect("number"),
        number
    );
    assert_eq!(
        tablet.safety_number(alice.user()).await.expect("number"),
        number
    );
    assert_ne!(
        alice.safety_number(carol.user()).await.expect("number"),
        number
    );

    // The tablet logs out: it takes itself off Bob's list, and Alice is told when she next
    // writes to Bob.
    let gone = tablet.device().device;
    tablet.logout().await.expect("logout");
    alice_direct.send_text("just bob").await.expect("send");
    assert_eq!(next_text(&mut b1, direct).await.text(), Some("just bob"));
    let removed = wait_for(&mut a, |e| match e {
        Event::DevicesChanged { user, removed, .. } if *user == bob.user() => {
            (!removed.is_empty()).then(|| removed.clone())
        }
        _ => None,
    })
    .await;
    assert_eq!(removed, vec![gone]);
}

/// Bob loses his only device and recovers the account on a new one. Alice verified him, so
/// her messages stop until she accepts the new identity; Carol did not, so hers go on after
/// she is told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_contacts_new_identity_blocks_sending_until_accepted() {
    let server = TestServer::start(config("memory:")).await;
    let (alice, mut a) = user(&server, "alice").await;
    let (carol, mut c) = user(&server, "carol").await;
    let (bob, _b) = user(&server, "bob").await;
    let with_alice = alice.open_direct(bob.user()).await.expect("direct");
    let with_carol = carol.open_direct(bob.user()).await.expect("direct");
    let (alice_bob, carol_bob) = (
        alice.conversation(with_alice),
        carol.conversation(with_carol),
    );
    alice_bob.send_text("hi").await.expect("send");
    carol_bob.send_text("hi").await.expect("send");
    let number = alice.safety_number(bob.user()).await.expect("number");
    assert_eq!(
        bob.safety_number(alice.user()).await.expect("number"),
        number
    );
    alice.verify(bob.user()).await.expect("verify");
    assert!(alice.is_verified(bob.user()).await.expect("state"));
    drop(bob);

    let new_bob = Client::builder(server.url())
        .device_name("new phone")
        .login(&Credentials::new("bob", PASSWORD))
        .await
        .expect("login");
    let mut nb = new_bob.events();
    assert!(!new_bob.is_linked().await.expect("state"));
    new_bob.recover_account().await.expect("recover");
    assert!(new_bob.is_linked().await.expect("state"));
    synced(&mut nb).await;

    let blocked = alice_bob.send_text("are you there?").await;
    assert!(
        matches!(blocked, Err(Error::IdentityNotAccepted(u)) if u == new_bob.user()),
        "{blocked:?}"
    );
    let (verified, was_blocked) = wait_for(&mut a, |e| match e {
        Event::AccountChanged {
            user,
            verified,
            blocked,
        } if *user == new_bob.user() => Some((*verified, *blocked)),
        _ => None,
    })
    .await;
    assert!(verified && was_blocked);
    // Still blocked on a second try: nothing goes out until the user decides.
    assert!(matches!(
        alice_bob.send_text("again?").await,
        Err(Error::IdentityNotAccepted(_))
    ));
    assert_eq!(
        alice.safety_number(new_bob.user()).await.expect("number"),
        number,
        "the number stays the verified one until the change is accepted"
    );
    alice.accept_identity(new_bob.user()).await.expect("accept");
    assert!(!alice.is_verified(new_bob.user()).await.expect("state"));
    assert_ne!(
        alice.safety_number(new_bob.user()).await.expect("number"),
        number
    );
    alice_bob
        .send_text("welcome back")
        .await
        .expect("send after accepting");
    assert_eq!(
        next_text(&mut nb, with_alice).await.text(),
        Some("welcome back")
    );

    // Carol never verified Bob: she is told, and her message goes to the new identity.
    carol_bob.send_text("new phone?").await.expect("send");
    let blocked = wait_for(&mut c, |e| match e {
        Event::AccountChanged { user, blocked, .. } if *user == new_bob.user() => Some(*blocked),
        _ => None,
    })
    .await;
    assert!(!blocked);
    assert_eq!(
        next_text(&mut nb, with_carol).await.text(),
        Some("new phone?")
    );
}

/// Under the stricter policy an unverified contact's new identity blocks sending too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_strict_policy_confirms_every_account_change() {
    let server = TestServer::start(config("memory:")).await;
    let (alice, _a) = user(&server, "alice").await;
    let (bob, _b) = user(&server, "bob").await;
    alice.set_trust_policy(TrustPolicy::ConfirmEveryChange);
    let chat = alice.open_direct(bob.user()).await.expect("direct");
    let alice_chat = alice.conversation(chat);
    alice_chat.send_text("hi").await.expect("send");
    let bob_user = bob.user();
    drop(bob);
    let new_bob = Client::builder(server.url())
        .device_name("new")
        .login(&Credentials::new("bob", PASSWORD))
        .await
        .expect("login");
    new_bob.recover_account().await.expect("recover");
    assert!(matches!(
        alice_chat.send_text("still you?").await,
        Err(Error::IdentityNotAccepted(u)) if u == bob_user
    ));
    alice.accept_identity(bob_user).await.expect("accept");
    alice_chat.send_text("ok").await.expect("send");
}

/// Bob removes his tablet: the next group message from Alice is under a new sender key, so
/// the tablet could not read it even if the server handed it the ciphertext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_device_rotates_the_group_keys_it_held() {
    let store: Arc<dyn Store> = Arc::new(chat::storage::MemoryStore::new());
    let server = TestServer::with_store(config("memory:"), store.clone()).await;
    let (alice, mut a) = user(&server, "alice").await;
    let (bob, mut b1) = user(&server, "bob").await;
    let tablet_store = Arc::new(MemoryStore::new());
    let tablet = Client::builder(server.url())
        .store(tablet_store.clone())
        .device_name("tablet")
        .login(&Credentials::new("bob", PASSWORD))
        .await
        .expect("login");
    link(&bob, &tablet).await;
    let mut b2 = tablet.events();
    synced(&mut b2).await;
    let group = alice.create_group(&[bob.user()]).await.expect("group");
    let alice_group = alice.conversation(group);
    let before = alice_group.send_text("before").await.expect("send");
    for events in [&mut b1, &mut b2] {
        assert_eq!(next_text(events, group).await.text(), Some("before"));
    }

    let gone = tablet.device();
    bob.remove_device(gone.device).await.expect("remove");
    let after = alice_group.send_text("after").await.expect("send");
    assert_eq!(next_text(&mut b1, group).await.text(), Some("after"));
    let removed = wait_for(&mut a, |e| match e {
        Event::DevicesChanged { user, removed, .. } if *user == bob.user() => Some(removed.clone()),
        _ => None,
    })
    .await;
    assert_eq!(removed, vec![gone.device]);

    // The tablet's copy of Alice's sender key opens "before" but not "after".
    let bodies = store
        .history(
            group,
            MessageId::new(100).expect("id"),
            Direction::Before,
            10,
        )
        .await
        .expect("history");
    let body = |id| {
        bodies
            .iter()
            .find(|m| m.id == id)
            .map(|m| m.body.clone())
            .expect("stored")
    };
    let receiver = || {
        let pickle = tablet_store
            .receiver(group, alice.device())
            .expect("store")
            .expect("the tablet holds Alice's key");
        chat::crypto::SenderKeyReceiver::from_pickle(&pickle).expect("pickle")
    };
    assert_eq!(
        receiver().decrypt(&body(after)).unwrap_err(),
        chat::crypto::Error::UnknownSenderKey
    );
    // (Its key for "before" was used up when it read it; a fresh copy of that position
    // would open it, which the key ids already show: "after" is under another key.)
    let key_id = |b: &[u8]| b.get(1..5).map(|k| k.to_vec());
    assert_ne!(key_id(&body(before)), key_id(&body(after)));
}

/// A device whose store was made before device lists (no account identity, and its user
/// published no list) makes its user's account identity once it is online, as the first
/// device at registration does, and can then send to contacts who require lists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_from_before_device_lists_makes_the_account_identity() {
    use chat::client::store::{DeviceRecord, Write};
    use common::http_call;
    use serde_json::json;

    let server = TestServer::start(config("memory:")).await;
    let (alice, mut a) = user(&server, "alice").await;
    // What a client before device lists did: register, log in, keep its account, publish
    // its keys. No list.
    let creds = json!({"username": "olga", "password": PASSWORD});
    let (status, _) = http_call(server.addr, "POST", "/v1/register", None, Some(&creds)).await;
    assert_eq!(status, 201);
    let login = json!({"username": "olga", "password": PASSWORD, "device_name": "old"});
    let (status, login) = http_call(server.addr, "POST", "/v1/login", None, Some(&login)).await;
    assert_eq!(status, 200);
    let token = login["token"].as_str().expect("token").to_owned();
    let me = chat::core::DeviceAddress {
        user: chat::core::UserId::new(login["user_id"].as_u64().expect("user")).expect("id"),
        device: chat::core::DeviceId::new(login["device_id"].as_u64().expect("device"))
            .expect("id"),
    };
    let account = chat::crypto::Account::new(&mut rand::rng());
    let spk = account.signed_prekey().expect("signed prekey");
    let keys = json!({
        "identity": hex::encode(account.identity().published()),
        "signed_prekey": {
            "id": spk.id,
            "public": hex::encode(spk.key),
            "signature": hex::encode(spk.signature),
        },
    });
    let (status, _) = http_call(server.addr, "PUT", "/v1/keys", Some(&token), Some(&keys)).await;
    assert_eq!(status, 204);
    let (status, _) = http_call(
        server.addr,
        "GET",
        &format!("/v1/users/{}/device-list", me.user),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(status, 404, "no list yet");
    let store = Arc::new(MemoryStore::new());
    store
        .commit(vec![
            Write::Device(DeviceRecord {
                server: server.url(),
                address: me,
                token: token.clone(),
            }),
            Write::Account(account.pickle()),
        ])
        .expect("store");

    // The upgraded client opens the old store; once connected it is linked.
    let olga = Client::builder(server.url())
        .store(store)
        .open()
        .await
        .expect("open");
    let mut o = olga.events();
    synced(&mut o).await;
    assert!(olga.is_linked().await.expect("state"));
    let direct = olga.open_direct(alice.user()).await.expect("direct");
    olga.conversation(direct)
        .send_text("still here")
        .await
        .expect("send");
    assert_eq!(next_text(&mut a, direct).await.text(), Some("still here"));
}
