//! A malicious server, attack by attack (docs/SECURITY.md): the real node behind a man in
//! the middle (tests/malicious) that rewrites what the server sends to one device. Each test
//! fails if the attack works.

mod common;
mod malicious;

use chat::client::store::ClientStore;
use chat::client::{Client, ConversationId, Credentials, Event, Events, MemoryStore};
use chat::core::{DeviceAddress, DeviceId};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};

use chat::core::Recipient;
use chat::core::protocol::{ClientFrame, Deliver, ServerFrame, StaleDevices};
use common::{PASSWORD, TestServer, config, http_get, next_text, synced, wait_for};
use malicious::{Intercepted, Mitm};

/// Registers `name` through the proxy and waits until it is synced.
async fn through(mitm: &Mitm, name: &str) -> (Client, Events) {
    let client = Client::builder(mitm.url())
        .device_name("phone")
        .register(&Credentials::new(name, PASSWORD))
        .await
        .expect("register");
    let mut events = client.events();
    synced(&mut events).await;
    (client, events)
}

/// Waits for `conversation`'s next undecryptable delivery; fails on a readable text there first.
async fn refused(events: &mut Events, conversation: ConversationId) {
    wait_for(events, |e| match e {
        Event::Undecryptable {
            conversation: c, ..
        } if *c == conversation => Some(()),
        Event::Message(m) if m.conversation == conversation && m.text().is_some() => {
            panic!("the attacked device read the message: {:?}", m.text())
        }
        _ => None,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_message_moved_into_a_group_is_refused() {
    let server = TestServer::start(config("memory:")).await;
    let mitm = Mitm::start(server.addr).await;
    let (alice, _alice_events) = through(&mitm, "alice").await;
    let (bob, mut bob_events) = through(&mitm, "bob").await;
    let (carol, _carol_events) = through(&mitm, "carol").await;
    let group = alice
        .create_group(&[bob.user(), carol.user()])
        .await
        .expect("group");
    let direct = alice.open_direct(bob.user()).await.expect("direct");
    let target = bob.device();
    mitm.rule(move |seen, frame| match frame {
        ServerFrame::Deliver(mut d) if seen.device == Some(target) && d.conversation == direct => {
            d.conversation = group;
            vec![ServerFrame::Deliver(d)]
        }
        other => vec![other],
    });
    let alice_direct = alice.conversation(direct);
    alice_direct.send_text("only for bob").await.expect("send");
    refused(&mut bob_events, group).await;
    // Honest again: the next private message arrives where it was sent.
    mitm.honest();
    alice_direct.send_text("still private").await.expect("send");
    let m = next_text(&mut bob_events, direct).await;
    assert_eq!(m.text(), Some("still private"));
    drop(carol);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_key_handout_refiled_under_another_group_is_refused() {
    let server = TestServer::start(config("memory:")).await;
    let mitm = Mitm::start(server.addr).await;
    let (alice, _alice_events) = through(&mitm, "alice").await;
    let (bob, mut bob_events) = through(&mitm, "bob").await;
    let two = alice.create_group(&[bob.user()]).await.expect("group 2");
    let alice_two = alice.conversation(two);
    alice_two.send_text("first").await.expect("send");
    assert_eq!(next_text(&mut bob_events, two).await.text(), Some("first"));
    let target = bob.device();
    // The next group's first message to Bob (it carries Alice's sender key for that group)
    // is filed under group 2.
    mitm.rule(move |seen, frame| match frame {
        ServerFrame::Deliver(mut d)
            if seen.device == Some(target) && d.conversation != two && !d.header.is_empty() =>
        {
            d.conversation = two;
            vec![ServerFrame::Deliver(d)]
        }
        other => vec![other],
    });
    // Three other groups' handouts, more than the key ids a receiver keeps per sender: had
    // they been stored under group 2, Alice's genuine group-2 key would be evicted.
    for n in 0..3 {
        let one = alice.create_group(&[bob.user()]).await.expect("group 1");
        alice
            .conversation(one)
            .send_text(&format!("for group {n}"))
            .await
            .expect("send");
        refused(&mut bob_events, two).await;
    }
    mitm.honest();
    alice_two.send_text("for group 2").await.expect("send");
    let m = next_text(&mut bob_events, two).await;
    assert_eq!(m.text(), Some("for group 2"));
}

/// The server reports one of Bob's devices removed when Alice sends to the group, yet still
/// delivers the ciphertext to it: Alice rotates her sender key before the repaired message,
/// so the "removed" device cannot read it while Bob's remaining device does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_reported_removed_cannot_read_the_next_group_message() {
    let server = TestServer::start(config("memory:")).await;
    let mitm = Mitm::start(server.addr).await;
    let (alice, _alice_events) = through(&mitm, "alice").await;
    let (bob, mut bob_events) = through(&mitm, "bob").await;
    let phone = Client::builder(mitm.url())
        .device_name("tablet")
        .login(&Credentials::new("bob", PASSWORD))
        .await
        .expect("login");
    common::link(&bob, &phone).await;
    let mut phone_events = phone.events();
    synced(&mut phone_events).await;
    let group = alice.create_group(&[bob.user()]).await.expect("group");
    let alice_group = alice.conversation(group);
    alice_group.send_text("before").await.expect("send");
    for events in [&mut bob_events, &mut phone_events] {
        assert_eq!(next_text(events, group).await.text(), Some("before"));
    }
    let (sender, gone) = (alice.device(), phone.device());
    let reported = Arc::new(AtomicBool::new(false));
    let once = reported.clone();
    mitm.client_rule(move |seen, frame| match frame {
        // The first send: "that device is gone" instead of the server's answer.
        ClientFrame::Send(s) if seen.device == Some(sender) && !once.swap(true, SeqCst) => {
            Intercepted {
                to_server: Vec::new(),
                to_client: vec![ServerFrame::StaleDevices(StaleDevices {
                    req: s.req,
                    missing: Vec::new(),
                    extra: vec![gone],
                })],
            }
        }
        // The repaired send: the real node still delivers it to the device, headerless.
        ClientFrame::Send(mut s) if seen.device == Some(sender) => {
            if !s.recipients.iter().any(|r| r.device == gone) {
                s.recipients.push(Recipient {
                    device: gone,
                    header: Default::default(),
                });
            }
            Intercepted::pass(ClientFrame::Send(s))
        }
        other => Intercepted::pass(other),
    });
    alice_group.send_text("after").await.expect("send");
    assert!(reported.load(SeqCst), "the removal was reported");
    assert_eq!(
        next_text(&mut bob_events, group).await.text(),
        Some("after")
    );
    refused(&mut phone_events, group).await;
}

/// The server numbers two of Alice's messages the other way round for Bob, so that Alice's
/// "delete #N" would name Bob's copy of the other message: relations use the sender's own
/// IDs inside the ciphertext, so the message Alice kept stays there for Bob.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renumbering_messages_for_one_recipient_cannot_aim_a_delete() {
    let server = TestServer::start(config("memory:")).await;
    let mitm = Mitm::start(server.addr).await;
    let (alice, _alice_events) = through(&mitm, "alice").await;
    let (bob, mut bob_events) = through(&mitm, "bob").await;
    let direct = alice.open_direct(bob.user()).await.expect("direct");
    let target = bob.device();
    // Holds Bob's first delivery in the conversation and sends it after the second, each
    // under the other's ID (positions stay in order).
    let mut held: Option<Deliver> = None;
    let mut swapped = false;
    mitm.rule(move |seen, frame| match frame {
        ServerFrame::Deliver(d)
            if seen.device == Some(target) && d.conversation == direct && !swapped =>
        {
            let Some(mut first) = held.take() else {
                held = Some(d);
                return Vec::new();
            };
            let mut second = d;
            std::mem::swap(&mut first.id, &mut second.id);
            swapped = true;
            vec![ServerFrame::Deliver(first), ServerFrame::Deliver(second)]
        }
        other => vec![other],
    });
    let alice_direct = alice.conversation(direct);
    alice_direct.send_text("keep").await.expect("send");
    let erase = alice_direct.send_text("erase").await.expect("send");
    assert_eq!(
        next_text(&mut bob_events, direct).await.text(),
        Some("keep")
    );
    assert_eq!(
        next_text(&mut bob_events, direct).await.text(),
        Some("erase")
    );
    alice_direct.delete(erase).await.expect("delete");
    // In order after the delete: once this arrives, the delete has been applied.
    alice_direct.send_text("done").await.expect("send");
    assert_eq!(
        next_text(&mut bob_events, direct).await.text(),
        Some("done")
    );
    let timeline = bob
        .conversation(direct)
        .timeline(None, 10)
        .await
        .expect("timeline");
    assert!(
        timeline
            .iter()
            .any(|m| m.text() == Some("keep") && !m.is_deleted()),
        "the delete hit the message Alice kept: {timeline:?}"
    );
}

/// The server invents a device for Bob (reports it missing on Alice's send and serves
/// Mallory's keys as its bundle): Alice must not encrypt to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_the_server_invents_gets_nothing() {
    let server = TestServer::start(config("memory:")).await;
    let mitm = Mitm::start(server.addr).await;
    let (alice, mut alice_events) = through(&mitm, "alice").await;
    let (bob, mut bob_events) = through(&mitm, "bob").await;
    let mallory_store = Arc::new(MemoryStore::new());
    let mallory = Client::builder(mitm.url())
        .store(mallory_store.clone())
        .device_name("phone")
        .register(&Credentials::new("mallory", PASSWORD))
        .await
        .expect("register");
    let token = mallory_store
        .device()
        .expect("store")
        .expect("device")
        .token;
    let theirs = http_get(
        server.addr,
        &format!("/v1/users/{}/bundles", mallory.user()),
        &token,
    )
    .await;
    let mut ghost_bundle = theirs["bundles"][0].clone();
    let ghost = DeviceAddress {
        user: bob.user(),
        device: DeviceId::new(77).expect("id"),
    };
    ghost_bundle["device"] = serde_json::json!({"user": bob.user().get(), "device": 77});
    let direct = alice.open_direct(bob.user()).await.expect("direct");
    let bundles_path = format!("/v1/users/{}/bundles", bob.user());
    mitm.http_rule(move |req, mut json| {
        if req.path == bundles_path
            && let Some(list) = json["bundles"].as_array_mut()
        {
            list.push(ghost_bundle.clone());
        }
        json
    });
    let sender = alice.device();
    let reported = Arc::new(AtomicBool::new(false));
    let encrypted = Arc::new(AtomicBool::new(false));
    let (once, seen_header) = (reported.clone(), encrypted.clone());
    mitm.client_rule(move |seen, frame| match frame {
        ClientFrame::Send(s) if seen.device == Some(sender) && !once.swap(true, SeqCst) => {
            Intercepted {
                to_server: Vec::new(),
                to_client: vec![ServerFrame::StaleDevices(StaleDevices {
                    req: s.req,
                    missing: vec![ghost],
                    extra: Vec::new(),
                })],
            }
        }
        ClientFrame::Send(s) if seen.device == Some(sender) => {
            if s.recipients
                .iter()
                .any(|r| r.device == ghost && !r.header.is_empty())
            {
                seen_header.store(true, SeqCst);
            }
            Intercepted::pass(ClientFrame::Send(s))
        }
        other => Intercepted::pass(other),
    });
    // The send goes out with an empty header for the ghost (the server's coverage rule is
    // met; the ghost learns nothing).
    let sent = alice.conversation(direct).send_text("for bob only").await;
    assert!(reported.load(SeqCst), "the ghost was reported");
    if sent.is_ok() {
        assert_eq!(
            next_text(&mut bob_events, direct).await.text(),
            Some("for bob only")
        );
    }
    assert!(
        !encrypted.load(SeqCst),
        "Alice encrypted to a device the server invented"
    );
    // Bob's signed device list does not name it: Alice says so.
    wait_for(&mut alice_events, |e| match e {
        Event::DeviceRefused { device } if *device == ghost => Some(()),
        _ => None,
    })
    .await;
}

/// The server swaps the identity of Bob's device: Mallory's first message to Alice is
/// delivered as coming from Bob's device. Alice must neither show it as Bob's nor encrypt to
/// Mallory's identity in Bob's place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swapped_device_identity_is_not_taken_for_the_device() {
    let server = TestServer::start(config("memory:")).await;
    let mitm = Mitm::start(server.addr).await;
    let (alice, mut alice_events) = through(&mitm, "alice").await;
    let (bob, mut bob_events) = through(&mitm, "bob").await;
    let (mallory, _mallory_events) = through(&mitm, "mallory").await;
    let direct = bob.open_direct(alice.user()).await.expect("direct");
    let bob_direct = bob.conversation(direct);
    bob_direct.send_text("hi, it is bob").await.expect("send");
    assert_eq!(
        next_text(&mut alice_events, direct).await.text(),
        Some("hi, it is bob")
    );
    let (target, real, impostor) = (alice.device(), bob.device(), mallory.device());
    mitm.rule(move |seen, frame| match frame {
        ServerFrame::Deliver(mut d) if seen.device == Some(target) && d.sender == impostor => {
            d.sender = real;
            vec![ServerFrame::Deliver(d)]
        }
        other => vec![other],
    });
    let theirs = mallory.open_direct(alice.user()).await.expect("direct");
    mallory
        .conversation(theirs)
        .send_text("it is bob, really")
        .await
        .expect("send");
    // Bob's next message follows the forged one in Alice's inbox.
    bob_direct.send_text("the real bob").await.expect("send");
    wait_for(&mut alice_events, |e| match e {
        Event::Message(m) if m.sender == real && m.text() == Some("it is bob, really") => {
            panic!("Alice took Mallory's message for Bob's")
        }
        // A device key that is not on Bob's signed device list is refused, not accepted as
        // Bob's device changing its identity or Bob's account changing.
        Event::DevicesChanged { user, .. } | Event::AccountChanged { user, .. }
            if *user == real.user =>
        {
            panic!("Alice accepted Mallory's identity for Bob's device")
        }
        Event::Message(m) if m.conversation == direct && m.text().is_some() => Some(()),
        Event::Undecryptable { conversation, .. } if *conversation == direct => Some(()),
        _ => None,
    })
    .await;
    // Alice's answer still goes to the real Bob, not to a session with Mallory's identity.
    alice
        .conversation(direct)
        .send_text("answer")
        .await
        .expect("send");
    wait_for(&mut bob_events, |e| match e {
        Event::Message(m) if m.conversation == direct && m.text() == Some("answer") => Some(()),
        Event::Undecryptable { conversation, .. } if *conversation == direct => {
            panic!("Alice encrypted her answer to the swapped identity")
        }
        _ => None,
    })
    .await;
}

/// After Bob removed his tablet, the server serves Alice Bob's older device list (which
/// still names the tablet) and claims the tablet is missing from her send. Alice keeps the
/// newer list she trusts: the tablet gets no header, and she reports it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_device_list_is_not_taken_back() {
    use std::sync::Mutex;

    let server = TestServer::start(config("memory:")).await;
    let mitm = Mitm::start(server.addr).await;
    let (alice, mut alice_events) = through(&mitm, "alice").await;
    let (bob, mut bob_events) = through(&mitm, "bob").await;
    let tablet = Client::builder(mitm.url())
        .device_name("tablet")
        .login(&Credentials::new("bob", PASSWORD))
        .await
        .expect("login");
    common::link(&bob, &tablet).await;
    // Record every list of Bob's the server hands out.
    let lists_path = format!("/v1/users/{}/device-list", bob.user());
    let seen: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let (path, record) = (lists_path.clone(), seen.clone());
    mitm.http_rule(move |req, json| {
        if req.path == path {
            record.lock().expect("lock").push(json.clone());
        }
        json
    });
    let direct = alice.open_direct(bob.user()).await.expect("direct");
    let alice_direct = alice.conversation(direct);
    alice_direct.send_text("one").await.expect("send");
    assert_eq!(next_text(&mut bob_events, direct).await.text(), Some("one"));
    let with_tablet = seen.lock().expect("lock").last().cloned().expect("a list");

    let gone = tablet.device();
    bob.remove_device(gone.device).await.expect("remove");
    alice_direct.send_text("two").await.expect("send");
    assert_eq!(next_text(&mut bob_events, direct).await.text(), Some("two"));
    assert_eq!(
        alice.devices_of(bob.user()).await.expect("devices"),
        vec![bob.device().device]
    );

    // The attack: the old list again, and "the tablet is missing".
    mitm.honest();
    mitm.http_rule(move |req, json| {
        if req.path == lists_path {
            with_tablet.clone()
        } else {
            json
        }
    });
    let sender = alice.device();
    let claimed = Arc::new(AtomicBool::new(false));
    let encrypted = Arc::new(AtomicBool::new(false));
    let (once, seen_header) = (claimed.clone(), encrypted.clone());
    mitm.client_rule(move |seen, frame| match frame {
        ClientFrame::Send(s) if seen.device == Some(sender) => {
            if s.recipients
                .iter()
                .any(|r| r.device == gone && !r.header.is_empty())
            {
                seen_header.store(true, SeqCst);
            }
            if once.swap(true, SeqCst) {
                return Intercepted::pass(ClientFrame::Send(s));
            }
            Intercepted {
                to_server: Vec::new(),
                to_client: vec![ServerFrame::StaleDevices(StaleDevices {
                    req: s.req,
                    missing: vec![gone],
                    extra: Vec::new(),
                })],
            }
        }
        other => Intercepted::pass(other),
    });
    let _ = alice_direct.send_text("three").await;
    assert!(claimed.load(SeqCst));
    wait_for(&mut alice_events, |e| match e {
        Event::DeviceRefused { device } if *device == gone => Some(()),
        _ => None,
    })
    .await;
    assert_eq!(
        alice.devices_of(bob.user()).await.expect("devices"),
        vec![bob.device().device],
        "the newer list stays trusted"
    );
    alice_direct.send_text("four").await.expect("send");
    assert!(
        !encrypted.load(SeqCst),
        "Alice encrypted to the removed device again"
    );
}

/// The server hands Alice a device list for Bob signed by an account key of its own (with a
/// device of its own on it). Alice verified Bob: she sends nothing until the user decides,
/// and is told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_key_the_server_invents_blocks_sending_to_a_verified_contact() {
    use chat::crypto::{AccountIdentity, IdentityPublic};

    let server = TestServer::start(config("memory:")).await;
    let mitm = Mitm::start(server.addr).await;
    let (alice, mut alice_events) = through(&mitm, "alice").await;
    let (bob, _bob_events) = through(&mitm, "bob").await;
    let direct = alice.open_direct(bob.user()).await.expect("direct");
    let alice_direct = alice.conversation(direct);
    alice_direct.send_text("hi").await.expect("send");
    alice.verify(bob.user()).await.expect("verify");

    let server_device = IdentityPublic {
        signing: [7; 32],
        dh: [8; 32],
    };
    let forged = AccountIdentity::from_secret(&[9; 32])
        .sign_device_list(bob.user(), 1_000, &[(bob.device().device, server_device)])
        .expect("sign");
    let path = format!("/v1/users/{}/device-list", bob.user());
    let hex_list = hex::encode(forged.encode());
    mitm.http_rule(move |req, json| {
        if req.path == path {
            serde_json::json!({"version": 1_000, "list": hex_list})
        } else {
            json
        }
    });
    // Anything that makes Alice read Bob's list again: here, showing his devices.
    let _ = alice.devices_of(bob.user()).await;
    let blocked = wait_for(&mut alice_events, |e| match e {
        Event::AccountChanged { user, blocked, .. } if *user == bob.user() => Some(*blocked),
        _ => None,
    })
    .await;
    assert!(blocked);
    assert!(matches!(
        alice_direct.send_text("still there?").await,
        Err(chat::client::Error::IdentityNotAccepted(_))
    ));
}

/// The server strips the one-time prekeys from Bob's bundles, so Alice's first message is
/// one a replay cache must guard, records it, and after Bob restarts delivers it again in
/// place of Alice's next message. Bob refuses it: it is not shown twice, and the session it
/// started does not change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_first_message_is_refused_after_a_restart() {
    use std::sync::Mutex;

    let server = TestServer::start(config("memory:")).await;
    let mitm = Mitm::start(server.addr).await;
    let (alice, _alice_events) = through(&mitm, "alice").await;
    let bob_store = Arc::new(MemoryStore::new());
    let bob = Client::builder(mitm.url())
        .store(bob_store.clone())
        .device_name("phone")
        .register(&Credentials::new("bob", PASSWORD))
        .await
        .expect("register");
    let mut bob_events = bob.events();
    synced(&mut bob_events).await;
    let bundles = format!("/v1/users/{}/bundles", bob.user());
    mitm.http_rule(move |req, mut json| {
        if req.path == bundles
            && let Some(list) = json["bundles"].as_array_mut()
        {
            for b in list {
                if let Some(b) = b.as_object_mut() {
                    b.remove("one_time_prekey");
                }
            }
        }
        json
    });
    let target = bob.device();
    let recorded: Arc<Mutex<Option<Deliver>>> = Arc::default();
    let keep = recorded.clone();
    mitm.rule(move |seen, frame| {
        if let ServerFrame::Deliver(d) = &frame
            && seen.device == Some(target)
        {
            keep.lock().expect("lock").get_or_insert_with(|| d.clone());
        }
        vec![frame]
    });
    let direct = alice.open_direct(bob.user()).await.expect("direct");
    let alice_direct = alice.conversation(direct);
    alice_direct.send_text("first").await.expect("send");
    assert_eq!(
        next_text(&mut bob_events, direct).await.text(),
        Some("first")
    );
    let first = recorded.lock().expect("lock").clone().expect("recorded");
    assert!(chat::crypto::is_prekey_message(&first.header));
    assert_eq!(first.header[166], 0, "sent without a one-time prekey");

    // Bob restarts; the server swaps Alice's next message for the recorded one.
    drop((bob, bob_events));
    mitm.honest();
    let replayed = Arc::new(AtomicBool::new(false));
    let done = replayed.clone();
    mitm.rule(move |seen, frame| match frame {
        ServerFrame::Deliver(d) if seen.device == Some(target) && !done.swap(true, SeqCst) => {
            vec![ServerFrame::Deliver(Deliver {
                pos: d.pos,
                id: d.id,
                ..first.clone()
            })]
        }
        other => vec![other],
    });
    let bob = Client::builder(mitm.url())
        .store(bob_store.clone())
        .open()
        .await
        .expect("open");
    let mut bob_events = bob.events();
    synced(&mut bob_events).await;
    alice_direct.send_text("second").await.expect("send");
    refused(&mut bob_events, direct).await;
    assert!(replayed.load(SeqCst));
    // The session is intact: the next message opens.
    alice_direct.send_text("third").await.expect("send");
    assert_eq!(
        next_text(&mut bob_events, direct).await.text(),
        Some("third")
    );
}

/// Carol is removed from a group; the server then hands her the next group message anyway
/// (in place of a one-to-one delivery she expects). Every sender rotated when she left, so
/// her copies of their sender keys open nothing sent after the removal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_cannot_read_what_is_sent_after_even_given_the_ciphertext() {
    use std::sync::Mutex;

    let server = TestServer::start(config("memory:")).await;
    let mitm = Mitm::start(server.addr).await;
    let (alice, _alice_events) = through(&mitm, "alice").await;
    let (bob, mut bob_events) = through(&mitm, "bob").await;
    let (carol, mut carol_events) = through(&mitm, "carol").await;
    let (dave, _dave_events) = through(&mitm, "dave").await;
    let group = alice
        .create_group(&[bob.user(), carol.user()])
        .await
        .expect("group");
    let bob_group = bob.conversation(group);
    bob_group.send_text("before").await.expect("send");
    assert_eq!(
        next_text(&mut carol_events, group).await.text(),
        Some("before")
    );
    alice
        .conversation(group)
        .remove_member(carol.user())
        .await
        .expect("remove");
    common::next_change(&mut bob_events, group).await;

    // Bob's next group message, as the server stores it.
    let sender = bob.device();
    let sent: Arc<Mutex<Option<chat::core::protocol::Send>>> = Arc::default();
    let keep = sent.clone();
    mitm.client_rule(move |seen, frame| {
        if let ClientFrame::Send(s) = &frame
            && seen.device == Some(sender)
            && s.conversation == group
        {
            *keep.lock().expect("lock") = Some(s.clone());
        }
        Intercepted::pass(frame)
    });
    let after = bob_group.send_text("after").await.expect("send");
    let recorded = sent.lock().expect("lock").clone().expect("recorded");
    assert!(
        recorded
            .recipients
            .iter()
            .all(|r| r.device.user != carol.user()),
        "nothing was addressed to Carol"
    );

    // The server gives it to Carol in place of Dave's message to her.
    let target = carol.device();
    let decoy = dave.open_direct(carol.user()).await.expect("direct");
    mitm.rule(move |seen, frame| match frame {
        ServerFrame::Deliver(d) if seen.device == Some(target) && d.conversation == decoy => {
            vec![ServerFrame::Deliver(Deliver {
                conversation: group,
                id: after,
                sender,
                client_key: recorded.client_key,
                header: Default::default(),
                body: recorded.body.clone(),
                ..d
            })]
        }
        other => vec![other],
    });
    dave.conversation(decoy)
        .send_text("decoy")
        .await
        .expect("send");
    refused(&mut carol_events, group).await;
}
