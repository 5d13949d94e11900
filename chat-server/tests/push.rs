//! Push notifications over real sockets on 127.0.0.1: a local HTTP receiver stands in for
//! the push gateway. Offline devices with a token get exactly one coalesced notification per
//! burst; online ones and ones without a token get none; a failing or hanging gateway never
//! holds up delivery to online devices.

mod common;

use bytes::Bytes;
use chat_core::protocol::{ClientFrame, Send, ServerFrame};
use chat_core::{ClientKey, ConversationId, DeviceAddress, DeviceId, Recipient, UserId};
use common::{Account, Client, TestServer, WAIT, test_config};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// How the stand-in gateway answers.
#[derive(Debug, Clone, Copy)]
enum Mode {
    Ok,
    Fail,
    /// 410 Gone for one token (dead), 204 for the others.
    Gone(&'static str),
    /// Reads the request, then never answers (and keeps the connection open).
    Hang,
}

/// A push gateway on 127.0.0.1:0 that reports every request body it gets.
struct Receiver {
    url: String,
    bodies: mpsc::UnboundedReceiver<Value>,
}

impl Receiver {
    async fn start(mode: Mode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, bodies) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(serve(stream, mode, tx.clone()));
            }
        });
        Self {
            url: format!("http://{addr}/push"),
            bodies,
        }
    }

    /// The next notification body; fails the test after [`WAIT`].
    async fn next(&mut self) -> Value {
        tokio::time::timeout(WAIT, self.bodies.recv())
            .await
            .expect("a notification in time")
            .expect("receiver alive")
    }

    /// Notifications already received and not yet taken.
    fn pending(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        while let Ok(body) = self.bodies.try_recv() {
            out.push(body);
        }
        out
    }
}

async fn serve(mut stream: TcpStream, mode: Mode, tx: mpsc::UnboundedSender<Value>) {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let body = loop {
        let Ok(n) = stream.read(&mut buf).await else {
            return;
        };
        if n == 0 {
            return;
        }
        data.extend_from_slice(&buf[..n]);
        let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&data[..end]).to_lowercase();
        assert!(head.starts_with("post /push http/1.1"), "{head}");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("content-length");
        if data.len() >= end + 4 + length {
            break data[end + 4..end + 4 + length].to_vec();
        }
    };
    let json: Value = serde_json::from_slice(&body).expect("JSON body");
    let dead = matches!(mode, Mode::Gone(token) if json["token"] == token);
    let _ = tx.send(json);
    let answer: &[u8] = match mode {
        _ if dead => b"HTTP/1.1 410 Gone\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        Mode::Ok | Mode::Gone(_) => b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n",
        Mode::Fail => {
            b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        }
        Mode::Hang => {
            std::future::pending::<()>().await;
            return;
        }
    };
    let _ = stream.write_all(answer).await;
}

fn config(webhook: &str) -> chat_server::Config {
    chat_server::Config {
        push_webhook_url: Some(webhook.into()),
        // Generous, so a burst sent by a slow test machine still falls in one window.
        push_coalesce_ms: 1_000,
        ..test_config()
    }
}

async fn register_token(server: &TestServer, account: &Account, token: &str) {
    let (status, body) = server
        .http(
            "PUT",
            "/v1/push",
            Some(&account.token),
            Some(json!({"platform": "fcm", "token": token})),
        )
        .await;
    assert_eq!(status, 204, "{body}");
}

async fn group(server: &TestServer, owner: &Account, others: &[&Account]) -> ConversationId {
    let members: Vec<u64> = others.iter().map(|a| a.user().get()).collect();
    let (status, body) = server
        .http(
            "POST",
            "/v1/conversations/groups",
            Some(&owner.token),
            Some(json!({ "members": members })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    ConversationId::new(body["id"].as_u64().unwrap()).unwrap()
}

/// Sends one message from `from` (connected as `client`) to every other device of the
/// conversation and waits for its `sent`.
async fn send(
    server: &TestServer,
    client: &mut Client,
    from: &Account,
    conversation: ConversationId,
    key: u8,
) {
    burst(server, client, from, conversation, key..=key).await;
}

/// Sends one message per key back to back, then waits for every `sent`.
async fn burst(
    server: &TestServer,
    client: &mut Client,
    from: &Account,
    conversation: ConversationId,
    keys: std::ops::RangeInclusive<u8>,
) {
    let (status, body) = server
        .http(
            "GET",
            &format!("/v1/conversations/{conversation}/devices"),
            Some(&from.token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let recipients = body["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| DeviceAddress {
            user: UserId::new(d["user"].as_u64().unwrap()).unwrap(),
            device: DeviceId::new(d["device"].as_u64().unwrap()).unwrap(),
        })
        .filter(|d| *d != from.device)
        .map(|device| Recipient {
            device,
            header: Bytes::from_static(b"h"),
        })
        .collect::<Vec<_>>();
    for key in keys.clone() {
        let frame: ClientFrame = Send {
            req: u32::from(key),
            conversation,
            client_key: ClientKey::from_bytes([key; 16]),
            body: Bytes::from_static(b"ciphertext"),
            recipients: recipients.clone(),
        }
        .into();
        client.send(frame).await;
    }
    for _ in keys {
        let (_, sent) = client
            .until(|f| matches!(f, ServerFrame::Sent(_) | ServerFrame::Error(_)))
            .await;
        assert!(matches!(sent, ServerFrame::Sent(_)), "{sent:?}");
    }
}

async fn online(server: &TestServer, account: &Account) -> Client {
    let mut client = server.connect(account, 0).await;
    client.until(|f| matches!(f, ServerFrame::SyncEnd(_))).await;
    client
}

/// Waits for the next live delivery to `client`; returns its message ID.
async fn delivered(client: &mut Client) -> u64 {
    let (_, frame) = client.until(|f| matches!(f, ServerFrame::Deliver(_))).await;
    let ServerFrame::Deliver(d) = frame else {
        unreachable!()
    };
    d.id.get()
}

fn device_json(account: &Account) -> Value {
    json!({"user": account.user().get(), "device": account.device.device.get()})
}

#[tokio::test]
async fn offline_devices_get_one_notification_per_burst_online_ones_none() {
    let mut gateway = Receiver::start(Mode::Ok).await;
    let server = TestServer::start(config(&gateway.url)).await;
    let alice = server.account("alice").await;
    let bob = server.account("bob").await; // online, with a token
    let carol = server.account("carol").await; // offline, with a token
    let dave = server.account("dave").await; // offline, no token
    let erin = server.account("erin").await; // offline, with a token: the end marker
    for (account, token) in [
        (&bob, "bob-token"),
        (&carol, "carol-token"),
        (&erin, "erin-token"),
    ] {
        register_token(&server, account, token).await;
    }
    let conversation = group(&server, &alice, &[&bob, &carol, &dave]).await;
    let marker = group(&server, &alice, &[&erin]).await;
    let mut alice_ws = online(&server, &alice).await;
    let mut bob_ws = online(&server, &bob).await;

    // A burst of three: bob gets each live; carol gets one notification for all three.
    burst(&server, &mut alice_ws, &alice, conversation, 1..=3).await;
    for id in 1..=3 {
        assert_eq!(delivered(&mut bob_ws).await, id);
    }
    let first = gateway.next().await;
    assert_eq!(
        first,
        json!({
            "device": device_json(&carol),
            "platform": "fcm",
            "token": "carol-token",
            "conversation": conversation.get(),
            "count": 3,
        })
    );

    // Carol removes her token: the next message wakes nobody. Erin's notification, due
    // after anything the burst or this message could have caused, marks the end.
    let (status, _) = server
        .http("DELETE", "/v1/push", Some(&carol.token), None)
        .await;
    assert_eq!(status, 204);
    send(&server, &mut alice_ws, &alice, conversation, 4).await;
    delivered(&mut bob_ws).await;
    send(&server, &mut alice_ws, &alice, marker, 5).await;
    let end = gateway.next().await;
    assert_eq!(end["device"], device_json(&erin));
    assert_eq!(end["token"], "erin-token");
    assert_eq!(end["count"], 1);
    assert_eq!(
        gateway.pending(),
        Vec::<Value>::new(),
        "no other notification"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_hanging_gateway_does_not_hold_up_delivery() {
    let mut gateway = Receiver::start(Mode::Hang).await;
    let config = chat_server::Config {
        push_coalesce_ms: 0,
        push_timeout_ms: 120_000,
        push_concurrency: 1,
        push_queue: 2,
        ..config(&gateway.url)
    };
    let server = TestServer::start(config).await;
    let alice = server.account("alice").await;
    let bob = server.account("bob").await;
    let carol = server.account("carol").await;
    register_token(&server, &carol, "carol-token").await;
    let conversation = group(&server, &alice, &[&bob, &carol]).await;
    let mut alice_ws = online(&server, &alice).await;
    let mut bob_ws = online(&server, &bob).await;

    send(&server, &mut alice_ws, &alice, conversation, 1).await;
    assert_eq!(delivered(&mut bob_ws).await, 1);
    // The gateway has the notification and will never answer.
    assert_eq!(gateway.next().await["count"], 1);

    // Meanwhile every message still reaches the online device, far past the queue's size.
    for key in 2..=20 {
        send(&server, &mut alice_ws, &alice, conversation, key).await;
        assert_eq!(delivered(&mut bob_ws).await, u64::from(key));
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_failing_gateway_is_retried_then_given_up_without_holding_up_delivery() {
    let mut gateway = Receiver::start(Mode::Fail).await;
    let config = chat_server::Config {
        push_coalesce_ms: 0,
        push_attempts: 3,
        push_backoff_ms: 5,
        push_concurrency: 1,
        ..config(&gateway.url)
    };
    let server = TestServer::start(config).await;
    let alice = server.account("alice").await;
    let bob = server.account("bob").await;
    let carol = server.account("carol").await;
    let erin = server.account("erin").await;
    register_token(&server, &carol, "carol-token").await;
    register_token(&server, &erin, "erin-token").await;
    let conversation = group(&server, &alice, &[&bob, &carol]).await;
    let marker = group(&server, &alice, &[&erin]).await;
    let mut alice_ws = online(&server, &alice).await;
    let mut bob_ws = online(&server, &bob).await;

    send(&server, &mut alice_ws, &alice, conversation, 1).await;
    assert_eq!(delivered(&mut bob_ws).await, 1);
    send(&server, &mut alice_ws, &alice, marker, 2).await;
    send(&server, &mut alice_ws, &alice, conversation, 3).await;
    assert_eq!(
        delivered(&mut bob_ws).await,
        2,
        "IDs count per conversation"
    );

    // Three attempts for carol's first notification; with one slot, erin's comes only
    // after carol's was given up.
    for _ in 0..3 {
        let body = gateway.next().await;
        assert_eq!(body["device"], device_json(&carol));
        assert_eq!(body["count"], 1);
    }
    let body = gateway.next().await;
    assert_eq!(body["device"], device_json(&erin));
    server.shutdown().await;
}

#[tokio::test]
async fn a_token_the_gateway_calls_gone_is_removed() {
    let mut gateway = Receiver::start(Mode::Gone("carol-token")).await;
    let server = TestServer::start(chat_server::Config {
        push_coalesce_ms: 0,
        push_concurrency: 1,
        ..config(&gateway.url)
    })
    .await;
    let alice = server.account("alice").await;
    let carol = server.account("carol").await;
    let erin = server.account("erin").await;
    register_token(&server, &carol, "carol-token").await;
    register_token(&server, &erin, "erin-token").await;
    let conversation = group(&server, &alice, &[&carol]).await;
    let marker = group(&server, &alice, &[&erin]).await;
    let mut alice_ws = online(&server, &alice).await;

    send(&server, &mut alice_ws, &alice, conversation, 1).await;
    assert_eq!(gateway.next().await["token"], "carol-token");
    // Erin's notification is sent after carol's answer was handled (one slot).
    send(&server, &mut alice_ws, &alice, marker, 2).await;
    assert_eq!(gateway.next().await["token"], "erin-token");

    // Carol's registration is gone: her next message wakes nobody.
    send(&server, &mut alice_ws, &alice, conversation, 3).await;
    send(&server, &mut alice_ws, &alice, marker, 4).await;
    assert_eq!(gateway.next().await["token"], "erin-token");
    assert_eq!(gateway.pending(), Vec::<Value>::new());
    server.shutdown().await;
}
