//! The driver against a scripted server at the wire (a WebSocket on 127.0.0.1:0 speaking
//! the protocol by hand): authentication with the stored cursor, a gap repaired with `sync`,
//! duplicates dropped, acks, heartbeats, and a resume from the stored cursor.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chat_client::store::{ClientStore, DeviceRecord, Write};
use chat_client::{Client, Event, MemoryStore};
use chat_core::protocol::{ClientFrame, Deliver, ServerFrame, SyncEnd, Welcome};
use chat_core::{
    ClientKey, ConversationId, DeviceAddress, DeviceId, InboxPos, MessageId, Timestamp, UserId,
};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

const WAIT: Duration = Duration::from_secs(10);

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

fn me() -> DeviceAddress {
    DeviceAddress {
        user: UserId::new(1).unwrap(),
        device: DeviceId::new(10).unwrap(),
    }
}

fn pos(n: u64) -> InboxPos {
    InboxPos::new(n).unwrap()
}

fn deliver(n: u64) -> ServerFrame {
    ServerFrame::Deliver(Deliver {
        pos: pos(n),
        conversation: ConversationId::new(3).unwrap(),
        id: MessageId::new(n).unwrap(),
        sender: DeviceAddress {
            user: UserId::new(2).unwrap(),
            device: DeviceId::new(20).unwrap(),
        },
        client_key: ClientKey::from_bytes([n as u8; 16]),
        sent_at: Timestamp::from_millis(1),
        // Not a real ciphertext: the client reports it undecryptable and moves on.
        header: Bytes::from_static(b"\x01\x01garbage"),
        body: Bytes::from_static(b"garbage"),
    })
}

async fn send(ws: &mut Ws, frame: ServerFrame) {
    ws.send(Message::Binary(frame.encode().into()))
        .await
        .unwrap();
}

/// The next client frame that is neither a heartbeat (counted in `heartbeats`) nor an ack of
/// `acked` or less (the ack timer may run at any point; the test checks acks beyond that).
async fn recv_past_acks(ws: &mut Ws, heartbeats: &mut u32, acked: InboxPos) -> ClientFrame {
    loop {
        match recv(ws, heartbeats).await {
            ClientFrame::Ack(a) if a.up_to <= acked => {}
            other => return other,
        }
    }
}

/// The next client frame that is not a heartbeat (counted in `heartbeats`).
async fn recv(ws: &mut Ws, heartbeats: &mut u32) -> ClientFrame {
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Binary(b) = m {
            match ClientFrame::decode(&b).unwrap() {
                ClientFrame::Heartbeat(_) => *heartbeats += 1,
                other => return other,
            }
        }
    }
}

async fn next_heartbeat(ws: &mut Ws) {
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Binary(b) = m
            && let ClientFrame::Heartbeat(_) = ClientFrame::decode(&b).unwrap()
        {
            return;
        }
    }
}

/// Whether the request waiting on `tcp` asks for a WebSocket upgrade (read without taking
/// it off the socket, so the handshake still sees it).
async fn is_upgrade(tcp: &tokio::net::TcpStream) -> bool {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok(n) = tcp.peek(&mut buf).await else {
            return false;
        };
        let head = &buf[..n];
        if n == 0 || n == buf.len() || head.windows(4).any(|w| w == b"\r\n\r\n") {
            return head
                .to_ascii_lowercase()
                .windows(18)
                .any(|w| w == b"upgrade: websocket");
        }
        tokio::task::yield_now().await;
    }
}

/// Accepts connections in the background: WebSocket upgrades (answered with the subprotocol
/// the client offers, as the real gateway does) go to the test; any other request (the
/// client's HTTP upkeep, the sender's device list) is answered `not_found` and closed, so
/// the garbage deliveries come from a device on no list.
fn acceptor(listener: TcpListener) -> mpsc::UnboundedReceiver<Ws> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            if !is_upgrade(&tcp).await {
                use tokio::io::AsyncWriteExt;
                let body = format!(
                    r#"{{"code":{},"message":"scripted"}}"#,
                    chat_core::ErrorCode::NotFound.number()
                );
                let answer = format!(
                    "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tcp.write_all(answer.as_bytes()).await;
                continue;
            }
            // The callback's error type is tungstenite's, large by design.
            #[allow(clippy::result_large_err)]
            let callback = |_: &Request, mut response: Response| {
                response
                    .headers_mut()
                    .insert("Sec-WebSocket-Protocol", "chat.v1".parse().unwrap());
                Ok(response)
            };
            if let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await {
                let _ = tx.send(ws);
            }
        }
    });
    rx
}

async fn accept(sockets: &mut mpsc::UnboundedReceiver<Ws>, head: u64) -> (Ws, InboxPos) {
    let mut ws = tokio::time::timeout(WAIT, sockets.recv())
        .await
        .unwrap()
        .unwrap();
    let mut hb = 0;
    let ClientFrame::Auth(auth) = recv(&mut ws, &mut hb).await else {
        panic!("auth first");
    };
    assert_eq!(auth.token, "secret-token");
    let welcome = Welcome {
        version: 1,
        device: me(),
        heartbeat_ms: 100,
        max_frame: 1 << 20,
        head: pos(head),
    };
    send(&mut ws, welcome.into()).await;
    (ws, auth.cursor)
}

async fn undecryptable(events: &mut chat_client::Events) -> u64 {
    loop {
        match tokio::time::timeout(WAIT, events.next())
            .await
            .unwrap()
            .unwrap()
        {
            Event::Undecryptable { id, .. } => return id.get(),
            Event::Message(_) => panic!("garbage never decrypts"),
            _ => {}
        }
    }
}

#[tokio::test]
async fn gaps_are_repaired_duplicates_dropped_and_the_cursor_resumes() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut sockets = acceptor(listener);
    let store = Arc::new(MemoryStore::new());
    let account = chat_crypto::Account::new(&mut rand::rng());
    store
        .commit(vec![
            Write::Device(DeviceRecord {
                server: addr.to_string(),
                address: me(),
                token: "secret-token".into(),
            }),
            Write::Account(account.pickle()),
        ])
        .unwrap();
    let client = Client::builder(addr.to_string())
        .store(store.clone())
        .open()
        .await
        .unwrap();
    let mut events = client.events();

    let (mut ws, cursor) = accept(&mut sockets, 3).await;
    assert_eq!(cursor, InboxPos::ZERO);
    let mut heartbeats = 0;
    // 1, then 3: the gap makes the client ask again from 1, ignoring 3.
    send(&mut ws, deliver(1)).await;
    send(&mut ws, deliver(3)).await;
    match recv_past_acks(&mut ws, &mut heartbeats, pos(1)).await {
        ClientFrame::Sync(s) => assert_eq!(s.after, pos(1)),
        other => panic!("expected sync, got {other:?}"),
    }
    // The answer: 2 and 3, a stale duplicate of 1, then the end of the backlog.
    send(&mut ws, deliver(1)).await;
    send(&mut ws, deliver(2)).await;
    send(&mut ws, deliver(3)).await;
    send(&mut ws, SyncEnd { head: pos(3) }.into()).await;
    assert_eq!(
        [
            undecryptable(&mut events).await,
            undecryptable(&mut events).await,
            undecryptable(&mut events).await
        ],
        [1, 2, 3]
    );
    match recv_past_acks(&mut ws, &mut heartbeats, pos(1)).await {
        ClientFrame::Ack(a) => assert_eq!(a.up_to, pos(3)),
        other => panic!("expected ack, got {other:?}"),
    }
    assert_eq!(store.cursor().unwrap(), pos(3));
    // Heartbeats keep coming on the welcome's interval.
    let started = tokio::time::Instant::now();
    for _ in 0..3 {
        next_heartbeat(&mut ws).await;
    }
    // The first comes at once, then one per 100 ms.
    assert!(started.elapsed() >= Duration::from_millis(150));
    let _ = heartbeats;

    // The connection drops; the client reconnects with its stored cursor.
    drop(ws);
    let (mut ws, cursor) = accept(&mut sockets, 4).await;
    assert_eq!(cursor, pos(3));
    send(&mut ws, deliver(4)).await;
    send(&mut ws, SyncEnd { head: pos(4) }.into()).await;
    assert_eq!(undecryptable(&mut events).await, 4);
}
