//! Delivery under abuse and faults, over real sockets on 127.0.0.1: a sender whose socket
//! dies right after sending, reused client keys, syncs and receipts past what exists,
//! floods, missing conversations, and a store on a full disk.

mod common;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use chat_core::protocol::{
    Auth, ClientFrame, Heartbeat, PROTOCOL_VERSION, ReceiptUpdate, ResyncReason, SUBPROTOCOL,
    ServerFrame, SyncRequest,
};
use chat_core::{
    ConversationId, ErrorCode, InboxPos, MessageId, Notification, PushError, PushNotifier,
    ReceiptKind,
};
use common::{
    Account, Client, TestServer, WAIT, backlog, direct, recipients, send_frame, test_config,
};
use futures::SinkExt;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Connects, authenticates and reads the backlog over a socket that is reset (not closed)
/// when dropped, like a phone losing its network: the node's answer to a send then fails
/// to write.
async fn resetting_client(addr: std::net::SocketAddr, account: &Account) -> Client {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.set_zero_linger().unwrap();
    let mut request = format!("ws://{addr}/v1/ws").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", SUBPROTOCOL.parse().unwrap());
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
    let (ws, _) = tokio_tungstenite::client_async(request, stream)
        .await
        .unwrap();
    let mut client = Client { ws };
    client
        .send(
            Auth {
                version: PROTOCOL_VERSION,
                token: account.token.clone(),
                cursor: InboxPos::ZERO,
            }
            .into(),
        )
        .await;
    assert!(matches!(client.recv().await, ServerFrame::Welcome(_)));
    backlog(&mut client).await;
    client
}

/// Sends one message and resets the socket at once, without reading the answer.
async fn send_and_vanish(
    server: &TestServer,
    sender: &Account,
    conversation: ConversationId,
    key: u8,
    body: &[u8],
) {
    let mut client = resetting_client(server.addr, sender).await;
    let recipients = recipients(server, sender, conversation, b"h").await;
    client
        .send(send_frame(1, conversation, key, body, recipients))
        .await;
    client.ws.flush().await.unwrap();
    drop(client);
}

#[tokio::test]
async fn a_sender_that_vanishes_after_sending_still_reaches_an_online_recipient() {
    let (server, alice, bob, conversation) = pair().await;
    let mut bob_ws = server.online(&bob).await;
    for i in 0..10u8 {
        bob_ws.send(Heartbeat {}.into()).await;
        send_and_vanish(&server, &alice, conversation, i, &[i; 64]).await;
        match bob_ws.recv().await {
            ServerFrame::Deliver(d) => assert_eq!(d.body, Bytes::from(vec![i; 64])),
            other => panic!("expected the message live, got {other:?}"),
        }
    }
}

/// A node with alice and bob and their one-to-one conversation.
async fn pair() -> (TestServer, Account, Account, ConversationId) {
    let server = TestServer::start(test_config()).await;
    let alice = server.account("alice").await;
    let bob = server.account("bob").await;
    let conversation = direct(&server, &alice, &bob).await;
    (server, alice, bob, conversation)
}

/// Records every notification it is handed.
struct Recorder(mpsc::UnboundedSender<Notification>);

#[async_trait]
impl PushNotifier for Recorder {
    async fn notify(&self, notification: Notification) -> Result<(), PushError> {
        let _ = self.0.send(notification);
        Ok(())
    }
}

#[tokio::test]
async fn a_sender_that_vanishes_after_sending_still_wakes_an_offline_recipient() {
    let config = chat_server::Config {
        push_coalesce_ms: 0,
        ..test_config()
    };
    let mut server = chat_server::Server::bind(config).await.unwrap();
    let (tx, mut notifications) = mpsc::unbounded_channel();
    server.set_push_notifier(Arc::new(Recorder(tx)));
    let server = TestServer::run(server);
    let alice = server.account("alice").await;
    let bob = server.account("bob").await;
    let (status, body) = server
        .http(
            "PUT",
            "/v1/push",
            Some(&bob.token),
            Some(json!({"platform": "fcm", "token": "bob-token"})),
        )
        .await;
    assert_eq!(status, 204, "{body}");
    let conversation = direct(&server, &alice, &bob).await;
    send_and_vanish(&server, &alice, conversation, 1, b"wake up").await;
    let woken = tokio::time::timeout(WAIT, notifications.recv())
        .await
        .expect("a notification in time")
        .unwrap();
    assert_eq!(woken.device, bob.device);
    assert_eq!(woken.conversation, conversation);
}

#[tokio::test]
async fn a_client_key_reused_in_another_conversation_is_refused() {
    let server = TestServer::start(test_config()).await;
    let alice = server.account("alice").await;
    let bob = server.account("bob").await;
    let carol = server.account("carol").await;
    let with_bob = direct(&server, &alice, &bob).await;
    let with_carol = direct(&server, &alice, &carol).await;
    let mut alice_ws = server.online(&alice).await;
    let to_bob = recipients(&server, &alice, with_bob, b"").await;
    let to_carol = recipients(&server, &alice, with_carol, b"").await;

    alice_ws
        .send(send_frame(1, with_bob, 7, b"to bob", to_bob.clone()))
        .await;
    let ServerFrame::Sent(first) = alice_ws.recv().await else {
        panic!("expected sent")
    };
    alice_ws
        .send(send_frame(2, with_carol, 7, b"to carol", to_carol))
        .await;
    match alice_ws.recv().await {
        ServerFrame::Error(e) => {
            assert_eq!((e.req, e.code), (Some(2), ErrorCode::Conflict));
            assert!(e.message.contains("another conversation"), "{}", e.message);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Carol got nothing; the retry where the key belongs is the duplicate it always was.
    let mut carol_ws = server.connect(&carol, 0).await;
    assert!(backlog(&mut carol_ws).await.is_empty());
    alice_ws
        .send(send_frame(3, with_bob, 7, b"to bob", to_bob))
        .await;
    match alice_ws.recv().await {
        ServerFrame::Sent(again) => {
            assert!(again.duplicate);
            assert_eq!((again.conversation, again.id), (with_bob, first.id));
        }
        other => panic!("expected sent, got {other:?}"),
    }
}

#[tokio::test]
async fn a_sync_past_the_head_resyncs_and_live_delivery_goes_on() {
    let (server, alice, bob, conversation) = pair().await;
    let mut bob_ws = server.online(&bob).await;
    bob_ws
        .send(
            SyncRequest {
                after: InboxPos::new(1_000_000).unwrap(),
            }
            .into(),
        )
        .await;
    match bob_ws.recv().await {
        ServerFrame::ResyncRequired(r) => {
            assert_eq!(
                (r.reason, r.head),
                (ResyncReason::CursorAhead, InboxPos::ZERO)
            );
        }
        other => panic!("expected resync_required, got {other:?}"),
    }
    assert!(matches!(bob_ws.recv().await, ServerFrame::SyncEnd(e) if e.head == InboxPos::ZERO));
    let mut alice_ws = server.online(&alice).await;
    let to_bob = recipients(&server, &alice, conversation, b"").await;
    alice_ws
        .send(send_frame(1, conversation, 1, b"still live", to_bob))
        .await;
    match bob_ws.recv().await {
        ServerFrame::Deliver(d) => assert_eq!(d.pos.get(), 1),
        other => panic!("expected the message live, got {other:?}"),
    }
}

#[tokio::test]
async fn a_receipt_past_the_last_message_is_refused() {
    let (server, alice, bob, conversation) = pair().await;
    let mut alice_ws = server.online(&alice).await;
    let mut bob_ws = server.online(&bob).await;
    let receipt = |up_to: u64| -> ClientFrame {
        ReceiptUpdate {
            conversation,
            kind: ReceiptKind::Read,
            up_to: MessageId::new(up_to).unwrap(),
        }
        .into()
    };
    // No message yet: nothing can be read.
    bob_ws.send(receipt(1)).await;
    assert!(
        matches!(bob_ws.recv().await, ServerFrame::Error(e) if e.code == ErrorCode::InvalidRequest)
    );
    let to_bob = recipients(&server, &alice, conversation, b"").await;
    alice_ws
        .send(send_frame(1, conversation, 1, b"hi", to_bob))
        .await;
    assert!(matches!(alice_ws.recv().await, ServerFrame::Sent(_)));
    assert!(matches!(bob_ws.recv().await, ServerFrame::Deliver(_)));
    bob_ws.send(receipt(chat_core::MAX_ID)).await;
    match bob_ws.recv().await {
        ServerFrame::Error(e) => assert_eq!(e.code, ErrorCode::InvalidRequest),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let (_, stored) = server
        .http(
            "GET",
            &format!("/v1/conversations/{conversation}/receipts"),
            Some(&alice.token),
            None,
        )
        .await;
    assert!(
        !stored.to_string().contains(&chat_core::MAX_ID.to_string()),
        "nothing stored: {stored}"
    );
    bob_ws.send(receipt(1)).await;
    match alice_ws.recv().await {
        ServerFrame::Receipt(r) => assert_eq!(r.up_to.get(), 1),
        other => panic!("expected the receipt, got {other:?}"),
    }
}

#[tokio::test]
async fn a_missing_conversation_is_answered_like_a_forbidden_one() {
    let server = TestServer::start(test_config()).await;
    let alice = server.account("alice").await;
    let bob = server.account("bob").await;
    let carol = server.account("carol").await;
    let theirs = direct(&server, &bob, &carol).await;
    let mut alice_ws = server.online(&alice).await;
    let mut answers = Vec::new();
    for (req, conversation) in [(1, theirs), (2, ConversationId::new(999_999).unwrap())] {
        alice_ws
            .send(send_frame(req, conversation, req as u8, b"x", Vec::new()))
            .await;
        match alice_ws.recv().await {
            ServerFrame::Error(e) => answers.push((e.code, e.message)),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[0].0, ErrorCode::NotMember);
}

#[tokio::test]
async fn a_flood_is_told_once_then_closed() {
    let config = chat_server::Config {
        frame_burst: 5,
        frames_per_second: 0.001,
        ..test_config()
    };
    let server = TestServer::start(config).await;
    let alice = server.account("alice").await;
    let mut client = server.connect(&alice, 0).await;
    // The auth frame took one token.
    for _ in 0..40 {
        client.send(Heartbeat {}.into()).await;
    }
    let mut refusals = 0;
    loop {
        match client.try_recv(WAIT).await {
            Some(ServerFrame::Error(e)) => {
                assert_eq!(e.code, ErrorCode::RateLimited);
                refusals += 1;
            }
            Some(ServerFrame::Closing(c)) => {
                assert_eq!(c.code, ErrorCode::RateLimited);
                break;
            }
            Some(_) => {}
            None => panic!("closed without a closing frame"),
        }
    }
    assert_eq!(refusals, 1, "one refusal, not one per frame");
}

/// A small tmpfs, unmounted on drop; `None` where this process may not mount one.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().ok()?.keep();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Self(dir))
    }
}

/// An 8 MiB tmpfs and a node configuration keeping its store and blobs there.
fn node_on_tmpfs() -> Option<(Tmpfs, chat_server::Config)> {
    let disk = Tmpfs::mount("8m")?;
    let config = chat_server::Config {
        store: format!("sqlite://{}/chat.db", disk.0.display()).into(),
        blob_dir: disk.0.join("blobs"),
        ..test_config()
    };
    Some((disk, config))
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily: a store thread that is still closing its files must not keep it mounted.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Fills the filesystem at `dir` with one file until a write fails.
fn fill(dir: &std::path::Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while file
        .write_all(&chunk)
        .and_then(|()| file.sync_all())
        .is_ok()
    {}
    // Whatever partial chunk fit: the disk is now full to the byte.
    let one = [0u8; 1];
    while file.write_all(&one).and_then(|()| file.sync_all()).is_ok() {}
    path
}

#[tokio::test]
async fn a_full_disk_makes_the_node_unready_and_loses_no_connection() {
    let Some((disk, config)) = node_on_tmpfs() else {
        chat_storage::testing::skipped("cannot mount a tmpfs here (needs root)");
        return;
    };
    let server = TestServer::start(config).await;
    let alice = server.account("alice").await;
    let bob = server.account("bob").await;
    let conversation = direct(&server, &alice, &bob).await;
    let (status, _) = server.http("GET", "/readyz", None, None).await;
    assert_eq!(status, 200);
    let mut alice_ws = server.online(&alice).await;
    let to_bob = recipients(&server, &alice, conversation, b"").await;

    let filler = fill(&disk.0);
    // A message too large for the space left fails to commit, and is answered.
    alice_ws
        .send(send_frame(
            1,
            conversation,
            1,
            &[5u8; 200_000],
            to_bob.clone(),
        ))
        .await;
    match alice_ws.recv().await {
        ServerFrame::Error(e) => {
            assert_eq!((e.req, e.code), (Some(1), ErrorCode::Unavailable));
            assert_eq!(e.message, "storage unavailable", "no backend text to peers");
        }
        other => panic!("expected unavailable, got {other:?}"),
    }
    let (status, _) = server.http("GET", "/readyz", None, None).await;
    assert_eq!(status, 503, "not ready while the store cannot take writes");
    // An ack while the store cannot write does not end the connection (acks are stored
    // later, in batches): it still answers a sync.
    alice_ws
        .send(
            chat_core::protocol::Ack {
                up_to: InboxPos::ZERO,
            }
            .into(),
        )
        .await;
    alice_ws
        .send(
            SyncRequest {
                after: InboxPos::ZERO,
            }
            .into(),
        )
        .await;
    assert!(matches!(alice_ws.recv().await, ServerFrame::SyncEnd(_)));

    // Space again: the retry commits on the same connection.
    std::fs::remove_file(filler).unwrap();
    alice_ws
        .send(send_frame(2, conversation, 1, &[5u8; 200_000], to_bob))
        .await;
    assert!(matches!(alice_ws.recv().await, ServerFrame::Sent(s) if s.req == 2));
    drop(alice_ws);
    server.shutdown().await;
    drop(disk);
}

#[tokio::test]
async fn sends_in_flight_are_answered_in_order_and_keep_each_conversations_order() {
    let server = TestServer::start(test_config()).await;
    let alice = server.account("alice").await;
    let mut peers = Vec::new();
    for name in ["bob", "carol", "dave"] {
        let peer = server.account(name).await;
        let conversation = direct(&server, &alice, &peer).await;
        let to = recipients(&server, &alice, conversation, b"").await;
        peers.push((peer, conversation, to));
    }
    let mut alice_ws = server.online(&alice).await;
    // Sixty sends without waiting for answers, interleaved over three conversations.
    const SENDS: u32 = 60;
    for req in 0..SENDS {
        let (_, conversation, to) = &peers[req as usize % peers.len()];
        alice_ws
            .send(send_frame(req, *conversation, req as u8, b"m", to.clone()))
            .await;
    }
    let mut last_id = std::collections::HashMap::new();
    for req in 0..SENDS {
        match alice_ws.recv().await {
            ServerFrame::Sent(sent) => {
                assert_eq!(sent.req, req, "answers come in the order the sends came");
                let previous = last_id.insert(sent.conversation, sent.id.get());
                assert_eq!(
                    sent.id.get(),
                    previous.unwrap_or(0) + 1,
                    "IDs follow send order"
                );
            }
            other => panic!("expected sent, got {other:?}"),
        }
    }
    for (peer, _, _) in &peers {
        let mut ws = server.connect(peer, 0).await;
        let got = backlog(&mut ws).await;
        assert_eq!(got.len() as u32, SENDS / 3);
    }
}

/// A burst of sends to one conversation is not appended one commit at a time: the sends
/// queued behind the first are appended together, in order (the SQLite writer's commits
/// are counted).
#[tokio::test]
async fn a_burst_to_one_conversation_shares_commits_and_keeps_its_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = chat_storage::SqliteStore::open(
        dir.path().join("chat.db"),
        chat_storage::SqliteOptions::default(),
    )
    .await
    .unwrap();
    let store = Arc::new(store);
    let server = TestServer::with_store(test_config(), store.clone()).await;
    let alice = server.account("alice").await;
    let bob = server.account("bob").await;
    let conversation = direct(&server, &alice, &bob).await;
    let to_bob = recipients(&server, &alice, conversation, b"").await;
    let mut alice_ws = server.online(&alice).await;

    const SENDS: u32 = 32;
    let before = store.stats();
    for req in 0..SENDS {
        let body = req.to_be_bytes();
        alice_ws
            .send(send_frame(
                req,
                conversation,
                req as u8,
                &body,
                to_bob.clone(),
            ))
            .await;
    }
    for req in 0..SENDS {
        match alice_ws.recv().await {
            ServerFrame::Sent(sent) => {
                assert_eq!(sent.req, req, "answers come in the order the sends came");
                assert_eq!(sent.id, MessageId::new(u64::from(req) + 1).unwrap());
            }
            other => panic!("expected sent, got {other:?}"),
        }
    }
    let after = store.stats();
    let (writes, commits) = (after.writes - before.writes, after.commits - before.commits);
    assert!(writes >= u64::from(SENDS), "{writes} writes");
    assert!(commits < writes, "{commits} commits for {writes} writes");

    let mut bob_ws = server.connect(&bob, 0).await;
    let got: Vec<Bytes> = backlog(&mut bob_ws)
        .await
        .into_iter()
        .map(|(_, b)| b)
        .collect();
    let sent: Vec<Bytes> = (0..SENDS)
        .map(|req| Bytes::copy_from_slice(&req.to_be_bytes()))
        .collect();
    assert_eq!(got, sent, "bob's inbox holds them in send order");
    drop((alice_ws, bob_ws));
    server.shutdown().await;
}

#[tokio::test]
async fn a_store_that_cannot_take_writes_is_refused_at_start() {
    let Some((disk, config)) = node_on_tmpfs() else {
        chat_storage::testing::skipped("cannot mount a tmpfs here (needs root)");
        return;
    };
    // Read-only from the start: nothing is open on it, so the remount cannot be busy.
    let remounted = std::process::Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(&disk.0)
        .status()
        .is_ok_and(|s| s.success());
    assert!(remounted, "remount read-only");
    let err = chat_server::Server::bind(config)
        .await
        .expect_err("a read-only store is refused");
    let message = err.to_string();
    assert!(
        message.contains(&disk.0.display().to_string()),
        "the error names the store: {message}"
    );
}
