//! The node over real sockets on 127.0.0.1: accounts, conversations, sends, delivery, sync
//! from cursors, and bad input.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chat_core::protocol::{Ack, ServerFrame, SyncRequest};
use chat_core::{
    ConversationId, DeviceAddress, DeviceId, ErrorCode, InboxPos, Recipient, Store, UserId,
};
use chat_storage::MemoryStore;
use common::{
    Account, Client, TestServer, backlog, conversation_id, direct, recipients, send_frame,
    test_config,
};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite;

#[tokio::test]
async fn one_to_one_reaches_every_device_and_ack_comes_first() {
    let server = TestServer::start(test_config()).await;
    let alice1 = server.account("alice").await;
    let alice2 = server.login("alice").await;
    let bob1 = server.account("bob").await;
    let bob2 = server.login("bob").await;
    let conversation = direct(&server, &alice1, &bob1).await;

    let mut clients = Vec::new();
    for account in [&alice1, &alice2, &bob1, &bob2] {
        let mut client = server.connect(account, 0).await;
        assert!(backlog(&mut client).await.is_empty());
        clients.push(client);
    }
    let recipients = recipients(&server, &alice1, conversation, b"hdr").await;
    assert_eq!(
        recipients.len(),
        3,
        "alice's other device and both of bob's"
    );
    clients[0]
        .send(send_frame(1, conversation, 1, b"ciphertext", recipients))
        .await;
    let ServerFrame::Sent(sent) = clients[0].recv().await else {
        panic!("ack first")
    };
    assert_eq!((sent.req, sent.duplicate, sent.id.get()), (1, false, 1));
    for client in &mut clients[1..] {
        match client.recv().await {
            ServerFrame::Deliver(d) => {
                assert_eq!(
                    (d.id, d.conversation, d.sender),
                    (sent.id, conversation, alice1.device)
                );
                assert_eq!(
                    (&d.body[..], &d.header[..], d.pos.get()),
                    (&b"ciphertext"[..], &b"hdr"[..], 1)
                );
            }
            other => panic!("expected a delivery, got {other:?}"),
        }
    }
    // History over HTTP shows the same message to members only.
    let (status, body) = server
        .http(
            "GET",
            &format!("/v1/conversations/{conversation}/messages"),
            Some(&bob2.token),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["messages"][0]["body"], hex::encode(b"ciphertext"));
    let eve = server.account("eve").await;
    let (status, body) = server
        .http(
            "GET",
            &format!("/v1/conversations/{conversation}/messages"),
            Some(&eve.token),
            None,
        )
        .await;
    assert_eq!((status, body["error"].as_str()), (403, Some("not_member")));
    // Every route under the conversation checks membership.
    let c = conversation;
    let routes = [
        ("GET", format!("/v1/conversations/{c}"), None),
        ("GET", format!("/v1/conversations/{c}/members"), None),
        ("GET", format!("/v1/conversations/{c}/devices"), None),
        ("GET", format!("/v1/conversations/{c}/receipts"), None),
        ("GET", format!("/v1/conversations/{c}/messages/1"), None),
        (
            "POST",
            format!("/v1/conversations/{c}/members"),
            Some(json!({"members": [eve.user()]})),
        ),
        (
            "DELETE",
            format!("/v1/conversations/{c}/members/{}", eve.user()),
            None,
        ),
    ];
    for (method, path, body) in routes {
        let (status, answer) = server.http(method, &path, Some(&eve.token), body).await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (403, Some("not_member")),
            "{method} {path}"
        );
    }
}

#[tokio::test]
async fn group_of_100_receives_and_the_101st_member_is_refused() {
    let server = TestServer::start(test_config()).await;
    let mut accounts = Vec::new();
    for i in 0..100 {
        accounts.push(server.account(&format!("member{i:03}")).await);
    }
    let others: Vec<UserId> = accounts[1..].iter().map(Account::user).collect();
    let (status, body) = server
        .http(
            "POST",
            "/v1/conversations/groups",
            Some(&accounts[0].token),
            Some(json!({"members": others})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let group = conversation_id(&body);
    let extra = server.account("one_too_many").await;
    let (status, body) = server
        .http(
            "POST",
            &format!("/v1/conversations/{group}/members"),
            Some(&accounts[0].token),
            Some(json!({"members": [extra.user()]})),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("group_full")),
        "{body}"
    );

    let mut clients = Vec::new();
    for account in &accounts {
        let mut client = server.connect(account, 0).await;
        backlog(&mut client).await;
        clients.push(client);
    }
    let recipients = recipients(&server, &accounts[0], group, b"").await;
    assert_eq!(recipients.len(), 99);
    clients[0]
        .send(send_frame(9, group, 9, b"to everyone", recipients))
        .await;
    assert!(matches!(clients[0].recv().await, ServerFrame::Sent(s) if s.req == 9));
    for client in &mut clients[1..] {
        assert!(
            matches!(client.recv().await, ServerFrame::Deliver(d) if &d.body[..] == b"to everyone")
        );
    }
}

#[tokio::test]
async fn offline_device_catches_up_in_order_without_duplicates() {
    let server = TestServer::start(test_config()).await;
    let alice = server.account("alice").await;
    let bob = server.account("bob").await;
    let conversation = direct(&server, &alice, &bob).await;
    let mut sender = server.connect(&alice, 0).await;
    backlog(&mut sender).await;
    let recipients = recipients(&server, &alice, conversation, b"").await;
    for i in 0..30u8 {
        sender
            .send(send_frame(
                u32::from(i),
                conversation,
                i,
                &[i],
                recipients.clone(),
            ))
            .await;
        assert!(matches!(sender.recv().await, ServerFrame::Sent(_)));
    }
    // Bob has processed up to 10; he gets 11..=30 in order, then live ones.
    let mut bob_client = server.connect(&bob, 10).await;
    let got = backlog(&mut bob_client).await;
    assert_eq!(
        got.iter().map(|d| d.0).collect::<Vec<_>>(),
        (11..=30).collect::<Vec<_>>()
    );
    assert_eq!(got[0].1[..], [10u8]);
    sender
        .send(send_frame(
            99,
            conversation,
            99,
            b"live",
            recipients.clone(),
        ))
        .await;
    assert!(matches!(bob_client.recv().await, ServerFrame::Deliver(d) if d.pos.get() == 31));
    // An ack does not stop a sync from an older cursor re-sending (the client dedupes).
    bob_client
        .send(
            Ack {
                up_to: InboxPos::new(31).unwrap(),
            }
            .into(),
        )
        .await;
    bob_client
        .send(
            SyncRequest {
                after: InboxPos::new(29).unwrap(),
            }
            .into(),
        )
        .await;
    let again = backlog(&mut bob_client).await;
    assert_eq!(again.iter().map(|d| d.0).collect::<Vec<_>>(), vec![30, 31]);
}

#[tokio::test]
async fn retried_send_gets_the_first_id_and_no_second_message() {
    let server = TestServer::start(test_config()).await;
    let alice = server.account("alice").await;
    let bob = server.account("bob").await;
    let conversation = direct(&server, &alice, &bob).await;
    let mut client = server.connect(&alice, 0).await;
    backlog(&mut client).await;
    let recipients = recipients(&server, &alice, conversation, b"").await;
    client
        .send(send_frame(1, conversation, 7, b"once", recipients.clone()))
        .await;
    let ServerFrame::Sent(first) = client.recv().await else {
        panic!()
    };
    // The retry arrives on a new connection, as after a reconnect.
    drop(client);
    let mut client = server.connect(&alice, 0).await;
    backlog(&mut client).await;
    client
        .send(send_frame(2, conversation, 7, b"once", recipients))
        .await;
    let ServerFrame::Sent(retry) = client.recv().await else {
        panic!()
    };
    assert_eq!((retry.id, retry.duplicate, retry.req), (first.id, true, 2));
    let mut bob_client = server.connect(&bob, 0).await;
    assert_eq!(backlog(&mut bob_client).await.len(), 1);
}

#[tokio::test]
async fn stale_device_list_gets_exact_missing_and_extra_sets() {
    let server = TestServer::start(test_config()).await;
    let alice = server.account("alice").await;
    let bob1 = server.account("bob").await;
    let conversation = direct(&server, &alice, &bob1).await;
    let old = recipients(&server, &alice, conversation, b"").await;
    let bob2 = server.login("bob").await;
    let mallory = server.account("mallory").await;
    let mut stale = old.clone();
    stale.push(Recipient {
        device: mallory.device,
        header: Bytes::new(),
    });
    let mut client = server.connect(&alice, 0).await;
    backlog(&mut client).await;
    client
        .send(send_frame(5, conversation, 5, b"x", stale))
        .await;
    match client.recv().await {
        ServerFrame::StaleDevices(s) => {
            assert_eq!(s.req, 5);
            assert_eq!(s.missing, vec![bob2.device]);
            assert_eq!(s.extra, vec![mallory.device]);
        }
        other => panic!("expected stale_devices, got {other:?}"),
    }
    // Re-encrypted for the right set, the same client key goes through.
    let fixed = recipients(&server, &alice, conversation, b"").await;
    client
        .send(send_frame(6, conversation, 5, b"x", fixed))
        .await;
    assert!(matches!(client.recv().await, ServerFrame::Sent(s) if s.req == 6 && !s.duplicate));
}

#[tokio::test]
async fn revoked_token_is_refused_everywhere() {
    let server = TestServer::start(test_config()).await;
    let alice = server.account("alice").await;
    let bob = server.account("bob").await;
    let conversation = direct(&server, &alice, &bob).await;
    let mut live = server.connect(&alice, 0).await;
    backlog(&mut live).await;
    let (status, _) = server
        .http("POST", "/v1/logout", Some(&alice.token), None)
        .await;
    assert_eq!(status, 204);
    // The live connection is closed with the reason.
    assert!(
        matches!(live.recv().await, ServerFrame::Closing(c) if c.code == ErrorCode::InvalidToken)
    );
    let t = Some(alice.token.as_str());
    let routes = [
        ("GET", "/v1/devices".to_owned()),
        ("POST", "/v1/logout".to_owned()),
        ("GET", "/v1/conversations".to_owned()),
        ("GET", format!("/v1/conversations/{conversation}")),
        ("GET", format!("/v1/conversations/{conversation}/members")),
        ("GET", format!("/v1/conversations/{conversation}/devices")),
        ("GET", format!("/v1/conversations/{conversation}/messages")),
        ("GET", format!("/v1/conversations/{conversation}/receipts")),
        ("GET", format!("/v1/users/{}/bundles", bob.user())),
        ("GET", "/v1/keys/count".to_owned()),
        ("GET", "/v1/users/by-name/bob".to_owned()),
        ("DELETE", format!("/v1/devices/{}", alice.device.device)),
    ];
    for (method, path) in routes {
        let (status, body) = server.http(method, &path, t, None).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("invalid_token")),
            "{method} {path}"
        );
    }
    for (method, path, body) in [
        (
            "POST",
            "/v1/conversations/direct",
            json!({"user_id": bob.user()}),
        ),
        (
            "POST",
            "/v1/conversations/groups",
            json!({"members": [bob.user()]}),
        ),
        ("POST", "/v1/keys/one-time", json!({"keys": []})),
    ] {
        let (status, _) = server.http(method, path, t, Some(body)).await;
        assert_eq!(status, 401, "{method} {path}");
    }
    let mut ws = Client::raw(server.addr).await;
    ws.send(
        chat_core::protocol::Auth {
            version: 1,
            token: alice.token.clone(),
            cursor: InboxPos::ZERO,
        }
        .into(),
    )
    .await;
    assert!(
        matches!(ws.recv().await, ServerFrame::Closing(c) if c.code == ErrorCode::InvalidToken)
    );
}

#[tokio::test]
async fn bad_frames_get_codes_and_the_connection_lives_on() {
    let server = TestServer::start(test_config()).await;
    let alice = server.account("alice").await;
    let bob = server.account("bob").await;
    let conversation = direct(&server, &alice, &bob).await;
    let mut client = server.connect(&alice, 0).await;
    backlog(&mut client).await;
    let expect_error = |f: ServerFrame, code: ErrorCode| match f {
        ServerFrame::Error(e) => assert_eq!(e.code, code, "{e:?}"),
        other => panic!("expected {code:?}, got {other:?}"),
    };
    client.send_raw(vec![0xff, 0x00, 0x13]).await;
    expect_error(client.recv().await, ErrorCode::MalformedFrame);
    client.send_raw(vec![0x82, 0x18, 0x63, 0xa0]).await;
    expect_error(client.recv().await, ErrorCode::UnknownFrameType);
    client
        .send_raw(vec![0; chat_core::limits::MAX_FRAME_BYTES + 1])
        .await;
    expect_error(client.recv().await, ErrorCode::FrameTooLarge);
    let recipients = recipients(&server, &alice, conversation, b"").await;
    let too_big = vec![0u8; chat_core::limits::MAX_BODY_BYTES + 1];
    client
        .send(send_frame(3, conversation, 3, &too_big, recipients.clone()))
        .await;
    expect_error(client.recv().await, ErrorCode::BodyTooLarge);
    let other = ConversationId::new(999).unwrap();
    client
        .send(send_frame(4, other, 4, b"x", recipients.clone()))
        .await;
    match client.recv().await {
        ServerFrame::Error(e) => assert!(
            matches!(e.code, ErrorCode::NotMember | ErrorCode::NotFound) && e.req == Some(4)
        ),
        other => panic!("{other:?}"),
    }
    // Still usable.
    client
        .send(send_frame(5, conversation, 5, b"fine", recipients))
        .await;
    assert!(matches!(client.recv().await, ServerFrame::Sent(s) if s.req == 5));
}

#[tokio::test]
async fn floods_are_rate_limited() {
    let config = common::test_config();
    let config = chat_server::Config {
        frame_burst: 5,
        frames_per_second: 0.001,
        ..config
    };
    let server = TestServer::start(config).await;
    let alice = server.account("alice").await;
    let mut client = server.connect(&alice, 0).await;
    backlog(&mut client).await;
    for _ in 0..6 {
        client.send(chat_core::protocol::Heartbeat {}.into()).await;
    }
    match client.recv().await {
        ServerFrame::Error(e) => {
            assert_eq!(e.code, ErrorCode::RateLimited);
            assert!(e.retry_after_ms.is_some());
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn slow_consumer_is_cut_off_and_resumes_losing_nothing() {
    let config = chat_server::Config {
        outbound_queue: 4,
        ..common::test_config()
    };
    let server = TestServer::start(config).await;
    let alice = server.account("alice").await;
    let bob = server.account("bob").await;
    let conversation = direct(&server, &alice, &bob).await;
    let mut slow = server.connect(&bob, 0).await;
    backlog(&mut slow).await;
    let mut sender = server.connect(&alice, 0).await;
    backlog(&mut sender).await;
    let recipients = recipients(&server, &alice, conversation, b"").await;
    // Bob stops reading; 300 KB messages fill the socket buffers, then his queue.
    let body = vec![7u8; 300_000];
    let total = 60u32;
    for i in 0..total {
        sender
            .send(send_frame(
                i,
                conversation,
                i as u8,
                &body,
                recipients.clone(),
            ))
            .await;
        assert!(matches!(sender.recv().await, ServerFrame::Sent(_)));
    }
    // Bob's connection ends with slow_consumer somewhere in his stream.
    let mut closed = false;
    while let Some(frame) = slow.try_recv(common::WAIT).await {
        if let ServerFrame::Closing(c) = frame {
            assert_eq!(c.code, ErrorCode::SlowConsumer);
            closed = true;
            break;
        }
    }
    assert!(closed, "the slow consumer was cut off");
    let mut resumed = server.connect(&bob, 0).await;
    let got = backlog(&mut resumed).await;
    assert_eq!(got.len(), total as usize);
    assert!(
        got.iter()
            .enumerate()
            .all(|(i, d)| d.0 == i as u64 + 1 && d.1.len() == body.len())
    );
}

#[tokio::test]
async fn graceful_shutdown_loses_no_acknowledged_message() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}/chat.db", dir.path().display());
    let config = chat_server::Config {
        store: store.clone().into(),
        ..test_config()
    };
    let server = TestServer::start(config.clone()).await;
    let alice = server.account("alice").await;
    let bob = server.account("bob").await;
    let conversation = direct(&server, &alice, &bob).await;
    let recipients = recipients(&server, &alice, conversation, b"").await;
    let mut sender = server.connect(&alice, 0).await;
    backlog(&mut sender).await;
    // Pipeline sends, then shut down while they are in flight.
    for i in 0..200u32 {
        sender
            .send(send_frame(
                i,
                conversation,
                i as u8,
                &i.to_be_bytes(),
                recipients.clone(),
            ))
            .await;
    }
    let shutdown = tokio::spawn(server.shutdown());
    let mut acked = BTreeSet::new();
    while let Some(frame) = sender.try_recv(Duration::from_secs(10)).await {
        match frame {
            ServerFrame::Sent(s) => {
                acked.insert(s.id.get());
            }
            ServerFrame::Closing(c) => assert_eq!(c.code, ErrorCode::ShuttingDown),
            _ => {}
        }
    }
    shutdown.await.unwrap();
    let server = TestServer::start(config).await;
    let mut bob_client = server.connect(&bob, 0).await;
    let got: BTreeSet<u64> = backlog(&mut bob_client).await.iter().map(|d| d.0).collect();
    assert!(!acked.is_empty());
    for id in &acked {
        assert!(
            got.contains(id),
            "acknowledged message {id} survived the shutdown"
        );
    }
}

#[tokio::test]
async fn failed_logins_are_rate_limited_per_address_and_account() {
    let server = TestServer::start(test_config()).await;
    server.account("alice").await;
    let attempt = json!({"username": "alice", "password": "wrong password"});
    let mut statuses = Vec::new();
    for _ in 0..12 {
        let (status, _) = server
            .http("POST", "/v1/login", None, Some(attempt.clone()))
            .await;
        statuses.push(status);
    }
    // Five failures per (address, account) by default; tests/login_limits.rs has the rest.
    assert!(statuses[..5].iter().all(|s| *s == 401), "{statuses:?}");
    assert!(statuses[5..].iter().all(|s| *s == 429), "{statuses:?}");
    let (status, body) = server
        .http(
            "POST",
            "/v1/login",
            None,
            Some(json!({"username": "nobody", "password": "whatever1"})),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("bad_credentials"))
    );
}

#[tokio::test]
async fn sends_are_rate_limited_per_account_across_devices() {
    let config = chat_server::Config {
        send_burst_per_account: 3,
        sends_per_account_per_second: 0.001,
        ..test_config()
    };
    let server = TestServer::start(config).await;
    let alice1 = server.account("alice").await;
    let alice2 = server.login("alice").await;
    let bob = server.account("bob").await;
    let conversation = direct(&server, &alice1, &bob).await;
    let mut first = server.connect(&alice1, 0).await;
    backlog(&mut first).await;
    let mut second = server.connect(&alice2, 0).await;
    backlog(&mut second).await;
    for i in 0..3u8 {
        let recipients = recipients(&server, &alice1, conversation, b"").await;
        first
            .send(send_frame(u32::from(i), conversation, i, b"x", recipients))
            .await;
        assert!(matches!(first.recv().await, ServerFrame::Sent(_)));
    }
    // The account's budget is spent; the other device is limited too.
    let recipients = recipients(&server, &alice2, conversation, b"").await;
    second
        .send(send_frame(9, conversation, 9, b"x", recipients))
        .await;
    let (_, frame) = second.until(|f| matches!(f, ServerFrame::Error(_))).await;
    assert!(
        matches!(frame, ServerFrame::Error(e) if e.code == ErrorCode::RateLimited && e.req == Some(9))
    );
}

/// The node over a memory store the test keeps, so it can trim inboxes itself: a cutoff in
/// the future with a limit drives retention without any clock.
async fn with_trimmable_store() -> (TestServer, std::sync::Arc<chat_storage::MemoryStore>) {
    let store = std::sync::Arc::new(chat_storage::MemoryStore::new());
    let server = TestServer::with_store(test_config(), store.clone()).await;
    (server, store)
}

/// A cutoff later than any message of the test.
fn future() -> chat_core::Timestamp {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after the epoch");
    chat_core::Timestamp::from_millis(u64::try_from(now.as_millis()).unwrap() + 3_600_000)
}

/// Alice sends one-byte messages (`[i]` for each `i` of `range`, also their client keys) to
/// Bob's only device.
async fn send_to_bob(
    server: &TestServer,
    alice: &Account,
    bob: &Account,
    range: std::ops::Range<u8>,
) -> ConversationId {
    let conversation = direct(server, alice, bob).await;
    let mut sender = server.connect(alice, 0).await;
    backlog(&mut sender).await;
    let recipients = recipients(server, alice, conversation, b"").await;
    for i in range {
        sender
            .send(send_frame(
                u32::from(i),
                conversation,
                i,
                &[i],
                recipients.clone(),
            ))
            .await;
        assert!(matches!(sender.recv().await, ServerFrame::Sent(_)));
    }
    conversation
}

#[tokio::test]
async fn cursor_below_the_trim_floor_resyncs_then_gets_the_rest() {
    use chat_core::MessageStore as _;
    use chat_core::protocol::{ResyncReason, ResyncRequired};
    let (server, store) = with_trimmable_store().await;
    let alice = server.account("alice").await;
    let bob = server.account("bob").await;
    // Bob is offline while 8 messages arrive; the 5 oldest entries pass retention.
    let conversation = send_to_bob(&server, &alice, &bob, 0..8).await;
    assert_eq!(store.trim_inboxes(future(), 5).await.unwrap(), 5);
    let floor = InboxPos::new(5).unwrap();
    assert_eq!(store.inbox_floor(bob.device).await.unwrap(), floor);

    // His old cursor is below the floor: told so, then everything after the floor.
    let mut client = server.connect(&bob, 2).await;
    assert_eq!(
        client.recv().await,
        ServerFrame::ResyncRequired(ResyncRequired {
            reason: ResyncReason::InboxTrimmed,
            head: floor,
        })
    );
    let got = backlog(&mut client).await;
    assert_eq!(
        got,
        vec![
            (6, Bytes::from_static(&[5])),
            (7, Bytes::from_static(&[6])),
            (8, Bytes::from_static(&[7])),
        ]
    );
    drop(client);

    // At or above the floor: no resync, just the backlog.
    for (cursor, expected) in [(5, vec![6, 7, 8]), (7, vec![8])] {
        let mut client = server.connect(&bob, cursor).await;
        let (before, end) = client.until(|f| matches!(f, ServerFrame::SyncEnd(_))).await;
        assert!(
            before
                .iter()
                .all(|f| !matches!(f, ServerFrame::ResyncRequired(_))),
            "cursor {cursor}: {before:?}"
        );
        let positions: Vec<u64> = before
            .iter()
            .filter_map(|f| match f {
                ServerFrame::Deliver(d) => Some(d.pos.get()),
                _ => None,
            })
            .collect();
        assert_eq!(positions, expected, "cursor {cursor}");
        assert_eq!(
            end,
            ServerFrame::SyncEnd(chat_core::protocol::SyncEnd {
                head: InboxPos::new(8).unwrap()
            })
        );
    }

    // History still has every message.
    let (status, body) = server
        .http(
            "GET",
            &format!("/v1/conversations/{conversation}/messages"),
            Some(&bob.token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["messages"].as_array().unwrap().len(), 8);
}

#[tokio::test]
async fn sync_below_a_floor_raised_while_connected_resyncs() {
    use chat_core::MessageStore as _;
    use chat_core::protocol::{ResyncReason, ResyncRequired, SyncEnd};
    let (server, store) = with_trimmable_store().await;
    let alice = server.account("alice").await;
    let bob = server.account("bob").await;
    let mut client = server.connect(&bob, 0).await;
    assert!(backlog(&mut client).await.is_empty());
    send_to_bob(&server, &alice, &bob, 0..4).await;
    for pos in 1..=4 {
        assert!(matches!(client.recv().await, ServerFrame::Deliver(d) if d.pos.get() == pos));
    }
    // Everything is trimmed while Bob is connected; he asks again from an old cursor.
    assert_eq!(store.trim_inboxes(future(), 100).await.unwrap(), 4);
    client
        .send(
            SyncRequest {
                after: InboxPos::new(1).unwrap(),
            }
            .into(),
        )
        .await;
    let head = InboxPos::new(4).unwrap();
    assert_eq!(
        client.recv().await,
        ServerFrame::ResyncRequired(ResyncRequired {
            reason: ResyncReason::InboxTrimmed,
            head,
        })
    );
    assert_eq!(client.recv().await, ServerFrame::SyncEnd(SyncEnd { head }));
    // Positions go on from the head: the next message is 5, live.
    send_to_bob(&server, &alice, &bob, 4..5).await;
    assert!(matches!(client.recv().await, ServerFrame::Deliver(d) if d.pos.get() == 5));
}

/// A typing indicator that waited in a connection's queue past its TTL is dropped there, not
/// shown late; one still within its TTL is sent.
#[tokio::test]
async fn expired_frames_are_dropped_not_sent_late() {
    use chat_core::protocol::TypingEvent;
    use chat_core::{BusMessage, Timestamp, Topic};

    let server = chat_server::Server::bind(test_config())
        .await
        .expect("bind");
    let bus = server.bus();
    let server = TestServer::run(server);
    let alice = server.account("alice").await;
    let mut client = server.connect(&alice, 0).await;
    client.until(|f| matches!(f, ServerFrame::SyncEnd(_))).await;

    let typing = |active: bool| {
        let event = TypingEvent {
            conversation: ConversationId::new(1).unwrap(),
            from: DeviceAddress {
                user: UserId::new(99).unwrap(),
                device: DeviceId::new(99).unwrap(),
            },
            active,
            ttl_ms: 6_000,
        };
        Bytes::from(ServerFrame::Typing(event).encode())
    };
    let topic = Topic::User(alice.user());
    let stale = BusMessage::Expiring {
        frame: typing(true),
        expires_at: Timestamp::from_millis(1),
    };
    let fresh = BusMessage::Expiring {
        frame: typing(false),
        expires_at: Timestamp::from_millis(u64::MAX),
    };
    assert_eq!(bus.publish(topic, stale).await.expect("publish"), 1);
    assert_eq!(bus.publish(topic, fresh).await.expect("publish"), 1);
    // The bus keeps order per connection: the first typing frame to arrive is the fresh one.
    match client.recv().await {
        ServerFrame::Typing(t) => assert!(!t.active, "the expired indicator was sent"),
        other => panic!("expected typing, got {other:?}"),
    }
}

/// The upgrade must offer the protocol's subprotocol (section 1): without it, or with only
/// other versions, the server answers 400 with the JSON error and no WebSocket; offering it
/// among others selects it.
#[tokio::test]
async fn upgrade_without_the_subprotocol_is_refused() {
    let server = TestServer::start(test_config()).await;
    for offer in [None, Some("chat.v2"), Some("chat.v1x, graphql-ws")] {
        let err = common::upgrade(server.addr, offer)
            .await
            .err()
            .unwrap_or_else(|| panic!("upgrade offering {offer:?} was served"));
        let tungstenite::Error::Http(response) = err else {
            panic!("expected an HTTP refusal for {offer:?}, got {err}");
        };
        assert_eq!(response.status(), 400, "{offer:?}");
        let body: Value = serde_json::from_slice(response.body().as_deref().unwrap_or_default())
            .expect("a JSON error body");
        assert_eq!(body["error"], "invalid_request", "{body}");
        assert_eq!(body["code"], ErrorCode::InvalidRequest.number(), "{body}");
        assert!(
            body["message"]
                .as_str()
                .is_some_and(|m| m.contains("chat.v1")),
            "{body}"
        );
    }
    let (_, response) = common::upgrade(server.addr, Some("chat.v2, chat.v1"))
        .await
        .expect("offering chat.v1 among others is served");
    assert_eq!(response.headers()["sec-websocket-protocol"], "chat.v1");
}

/// Three messages from alice that bob's live connection has received; returns bob's
/// connection.
async fn bob_received_three(server: &TestServer, alice: &Account, bob: &Account) -> Client {
    let conversation = direct(server, alice, bob).await;
    let to_bob = recipients(server, alice, conversation, b"").await;
    let mut sender = server.online(alice).await;
    let mut bob_client = server.online(bob).await;
    for i in 1..=3u8 {
        sender
            .send(send_frame(
                u32::from(i),
                conversation,
                i,
                &[i],
                to_bob.clone(),
            ))
            .await;
        assert!(matches!(sender.recv().await, ServerFrame::Sent(_)));
        assert!(
            matches!(bob_client.recv().await, ServerFrame::Deliver(d) if d.pos.get() == u64::from(i))
        );
    }
    bob_client
}

/// Sends `ack {up_to}`, then waits for the answer to a sync: frames of one connection are
/// handled in order, so the ack has been handled by then.
async fn ack_handled(client: &mut Client, up_to: u64) {
    client
        .send(
            Ack {
                up_to: InboxPos::new(up_to).unwrap(),
            }
            .into(),
        )
        .await;
    client
        .send(
            SyncRequest {
                after: InboxPos::new(3).unwrap(),
            }
            .into(),
        )
        .await;
    client.until(|f| matches!(f, ServerFrame::SyncEnd(_))).await;
}

/// A node on a memory store flushing cursors every `flush_ms`, with bob's connection after
/// three messages from alice; returns the node, its store, bob and his connection.
async fn bob_online_with_three(flush_ms: u64) -> (TestServer, Arc<dyn Store>, Account, Client) {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let config = chat_server::Config {
        cursor_flush_ms: flush_ms,
        ..test_config()
    };
    let server = TestServer::with_store(config, store.clone()).await;
    let alice = server.account("alice").await;
    let bob = server.account("bob").await;
    let bob_client = bob_received_three(&server, &alice, &bob).await;
    (server, store, bob, bob_client)
}

#[tokio::test]
async fn acknowledged_cursors_are_stored_behind_the_acks_and_at_shutdown() {
    let (server, store, bob, mut bob_client) = bob_online_with_three(3_600_000).await;
    ack_handled(&mut bob_client, 2).await;
    // Past what the connection sent: stored as what it sent.
    ack_handled(&mut bob_client, 9).await;
    assert_eq!(
        store.cursor(bob.device).await.unwrap(),
        InboxPos::ZERO,
        "the hour-long interval has not passed"
    );
    server.shutdown().await;
    assert_eq!(store.cursor(bob.device).await.unwrap().get(), 3);
}

#[tokio::test]
async fn acknowledged_cursors_are_stored_every_flush_interval() {
    let (_server, store, bob, mut bob_client) = bob_online_with_three(20).await;
    ack_handled(&mut bob_client, 2).await;
    let stored = async {
        while store.cursor(bob.device).await.unwrap().get() != 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(common::WAIT, stored)
        .await
        .expect("stored by a flush while the node runs");
}
