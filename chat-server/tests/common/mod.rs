//! A test harness: a node on 127.0.0.1:0, a minimal HTTP/1.1 client and a WebSocket client
//! speaking the protocol.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chat_core::protocol::{Auth, ClientFrame, PROTOCOL_VERSION, SUBPROTOCOL, Send, ServerFrame};
use chat_core::{
    ClientKey, ConversationId, DeviceAddress, DeviceId, InboxPos, Recipient, Store, UserId,
};
use chat_server::{Config, Server};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Response;
use tokio_tungstenite::tungstenite::{self, Message};

/// The WebSocket upgrade at `/v1/ws`, offering `subprotocols` (a `Sec-WebSocket-Protocol`
/// value) when given.
pub async fn upgrade(
    addr: SocketAddr,
    subprotocols: Option<&str>,
) -> Result<(Ws, Response), tungstenite::Error> {
    let mut request = format!("ws://{addr}/v1/ws").into_client_request()?;
    if let Some(offer) = subprotocols {
        let offer = offer.parse().expect("a header value");
        request
            .headers_mut()
            .insert("sec-websocket-protocol", offer);
    }
    tokio_tungstenite::connect_async(request).await
}

/// How long any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(20);

pub fn test_config() -> Config {
    Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        store: "memory:".into(),
        // The cheapest Argon2id parameters: tests register hundreds of users.
        argon2_memory_kib: 8,
        argon2_iterations: 1,
        shutdown_grace_ms: 5_000,
        // Every test client comes from 127.0.0.1.
        auth_burst_per_address: 10_000,
        send_burst_per_account: 10_000,
        ..Config::default()
    }
}

pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    pub async fn start(config: Config) -> Self {
        let server = Server::bind(config).await.expect("bind");
        Self::run(server)
    }

    pub async fn with_store(config: Config, store: Arc<dyn Store>) -> Self {
        let server = Server::with_store(config, store).await.expect("bind");
        Self::run(server)
    }

    /// Runs an already bound node (one the test configured further).
    pub fn run(server: Server) -> Self {
        let addr = server.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .run_until(async move {
                    let _ = stopped.await;
                })
                .await
                .expect("serve");
        });
        Self {
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Shuts the node down gracefully and waits until it has stopped.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task)
                .await
                .expect("shutdown in time")
                .expect("task");
        }
    }

    pub async fn http(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        http(self.addr, method, path, token, body).await
    }

    /// Registers `name` and logs in one device; returns the account.
    pub async fn account(&self, name: &str) -> Account {
        let (status, _) = self
            .http(
                "POST",
                "/v1/register",
                None,
                Some(json!({"username": name, "password": "correct horse"})),
            )
            .await;
        assert_eq!(status, 201, "register {name}");
        self.login(name).await
    }

    /// Logs in a new device of an existing user.
    pub async fn login(&self, name: &str) -> Account {
        let (status, body) = self
            .http(
                "POST",
                "/v1/login",
                None,
                Some(json!({"username": name, "password": "correct horse", "device_name": "test"})),
            )
            .await;
        assert_eq!(status, 200, "login {name}: {body}");
        Account {
            token: body["token"].as_str().unwrap().to_owned(),
            device: DeviceAddress {
                user: UserId::new(body["user_id"].as_u64().unwrap()).unwrap(),
                device: DeviceId::new(body["device_id"].as_u64().unwrap()).unwrap(),
            },
        }
    }

    pub async fn connect(&self, account: &Account, cursor: u64) -> Client {
        Client::connect(self.addr, account, cursor).await
    }

    /// Connects from cursor 0 and reads the backlog: a device that is online and live.
    pub async fn online(&self, account: &Account) -> Client {
        let mut client = self.connect(account, 0).await;
        backlog(&mut client).await;
        client
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

#[derive(Debug, Clone)]
pub struct Account {
    pub token: String,
    pub device: DeviceAddress,
}

impl Account {
    pub fn user(&self) -> UserId {
        self.device.user
    }
}

/// One HTTP/1.1 request on a fresh connection; returns the status and the JSON body
/// (`Value::Null` when the body is empty or not JSON).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    http_on(stream, addr, method, path, token, body).await
}

/// A connection to `addr` from the loopback address `from` (any of 127.0.0.0/8), so one
/// test can play several clients the node tells apart by address.
pub async fn connect_from(from: [u8; 4], addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((from, 0)))?;
    socket.connect(addr).await
}

/// [`http`] from the loopback address `from`.
pub async fn http_from(
    from: [u8; 4],
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let stream = connect_from(from, addr).await.expect("connect");
    http_on(stream, addr, method, path, token, body).await
}

async fn http_on(
    mut stream: TcpStream,
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .expect("response in time")
        .expect("read");
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// A protocol client over a real WebSocket.
pub struct Client {
    pub ws: Ws,
}

impl Client {
    pub async fn connect(addr: SocketAddr, account: &Account, cursor: u64) -> Self {
        let mut client = Self::raw(addr).await;
        client
            .send(
                Auth {
                    version: PROTOCOL_VERSION,
                    token: account.token.clone(),
                    cursor: InboxPos::new(cursor).unwrap(),
                }
                .into(),
            )
            .await;
        match client.recv().await {
            ServerFrame::Welcome(w) => assert_eq!(w.device, account.device),
            other => panic!("expected welcome, got {other:?}"),
        }
        client
    }

    /// A connection that has not authenticated yet.
    pub async fn raw(addr: SocketAddr) -> Self {
        let (ws, response) = upgrade(addr, Some(SUBPROTOCOL)).await.expect("ws connect");
        let selected = response.headers().get("sec-websocket-protocol");
        assert_eq!(selected.map(|v| v.as_bytes()), Some(SUBPROTOCOL.as_bytes()));
        Self { ws }
    }

    pub async fn send(&mut self, frame: ClientFrame) {
        self.send_raw(frame.encode()).await;
    }

    pub async fn send_raw(&mut self, bytes: Vec<u8>) {
        self.ws
            .send(Message::Binary(Bytes::from(bytes)))
            .await
            .expect("ws send");
    }

    /// The next frame, skipping nothing; fails the test after [`WAIT`].
    pub async fn recv(&mut self) -> ServerFrame {
        self.try_recv(WAIT).await.expect("a frame in time")
    }

    /// The next frame within `wait`; `None` on timeout or when the connection ends.
    pub async fn try_recv(&mut self, wait: Duration) -> Option<ServerFrame> {
        loop {
            let message = tokio::time::timeout(wait, self.ws.next())
                .await
                .ok()??
                .ok()?;
            match message {
                Message::Binary(bytes) => {
                    return Some(ServerFrame::decode(&bytes).expect("valid server frame"));
                }
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// Reads until `pred` matches, returning the frames before it and the match.
    pub async fn until(
        &mut self,
        mut pred: impl FnMut(&ServerFrame) -> bool,
    ) -> (Vec<ServerFrame>, ServerFrame) {
        let mut before = Vec::new();
        loop {
            let frame = self.recv().await;
            if pred(&frame) {
                return (before, frame);
            }
            before.push(frame);
        }
    }
}

/// Deterministic pseudo-random bytes generated on the fly, so tests can stream and check
/// large bodies without holding them: byte `i` of the stream for `seed` is always the same.
#[derive(Debug, Clone)]
pub struct Pattern {
    seed: u64,
    pos: u64,
}

impl Pattern {
    pub fn new(seed: u64) -> Self {
        Self { seed, pos: 0 }
    }

    fn byte(&self, i: u64) -> u8 {
        // splitmix64 of the 8-byte word index, one byte of it per position.
        let mut z = (i / 8)
            .wrapping_add(self.seed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        z.to_le_bytes()[(i % 8) as usize]
    }

    /// The next `len` bytes.
    pub fn next_chunk(&mut self, len: usize) -> Vec<u8> {
        let start = self.pos;
        self.pos += len as u64;
        (start..self.pos).map(|i| self.byte(i)).collect()
    }

    /// Whether `data` is the next part of the stream (and moves past it).
    pub fn check(&mut self, data: &[u8]) -> bool {
        let start = self.pos;
        self.pos += data.len() as u64;
        data.iter().zip(start..).all(|(&b, i)| b == self.byte(i))
    }
}

/// How an upload declares its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length: n` (may differ from what is sent, to test refusal up front).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// Streams a request body of `total` pattern bytes generated chunk by chunk (never held
/// whole), while reading the response concurrently; returns the status and JSON body. The
/// server may answer before the body is complete (a refusal); write errors are ignored then.
pub async fn upload(
    addr: SocketAddr,
    path: &str,
    token: &str,
    framing: Framing,
    total: u64,
    seed: u64,
) -> (u16, Value) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut read, mut write) = stream.into_split();
    let length = match framing {
        Framing::Length(n) => format!("Content-Length: {n}\r\n"),
        Framing::Chunked => "Transfer-Encoding: chunked\r\n".to_owned(),
    };
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nContent-Type: application/octet-stream\r\n{length}\r\n"
    );
    let writer = tokio::spawn(async move {
        write.write_all(head.as_bytes()).await?;
        let mut pattern = Pattern::new(seed);
        let mut left = total;
        while left > 0 {
            let n = left.min(64 * 1024);
            left -= n;
            let chunk = pattern.next_chunk(n as usize);
            if framing == Framing::Chunked {
                write.write_all(format!("{n:x}\r\n").as_bytes()).await?;
                write.write_all(&chunk).await?;
                write.write_all(b"\r\n").await?;
            } else {
                write.write_all(&chunk).await?;
            }
        }
        if framing == Framing::Chunked {
            write.write_all(b"0\r\n\r\n").await?;
        }
        // Keep the write half open until the response is read.
        Ok::<_, std::io::Error>(write)
    });
    let mut response = Vec::new();
    // A refusal may be followed by a reset; what arrived before it is kept.
    let _ = tokio::time::timeout(WAIT, read.read_to_end(&mut response))
        .await
        .expect("response in time");
    writer.abort();
    parse_response(&response)
}

/// `GET path` on a fresh connection; the status and the body as text (for `/metrics`).
pub async fn raw_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .expect("response in time")
        .expect("read");
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, body.to_owned())
}

/// The status and JSON body of a complete small response.
pub fn parse_response(response: &[u8]) -> (u16, Value) {
    let text = String::from_utf8_lossy(response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// What a streamed download got.
#[derive(Debug)]
pub struct Download {
    pub status: u16,
    pub content_length: Option<u64>,
    /// Body bytes received.
    pub received: u64,
    /// Whether the body was the pattern for the seed (on success).
    pub matches: bool,
    /// The JSON body (errors only).
    pub json: Value,
}

/// `GET` or `HEAD` of `path`, reading the body in chunks and checking it against the
/// pattern for `seed` without keeping it.
pub async fn download(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    seed: u64,
) -> Download {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let read = async {
        let mut head = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let body_start = loop {
            let n = stream.read(&mut buf).await.expect("read");
            assert!(n > 0, "connection closed inside the response head");
            head.extend_from_slice(&buf[..n]);
            if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let text = String::from_utf8_lossy(&head[..body_start]).to_string();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let content_length = text.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        });
        let mut pattern = Pattern::new(seed);
        let mut matches = true;
        let mut small = Vec::new();
        let mut received = 0u64;
        let mut take = |data: &[u8]| {
            received += data.len() as u64;
            matches &= pattern.check(data);
            if small.len() < 64 * 1024 {
                small.extend_from_slice(data);
            }
        };
        take(&head[body_start..]);
        loop {
            let n = stream.read(&mut buf).await.expect("read");
            if n == 0 {
                break;
            }
            take(&buf[..n]);
        }
        Download {
            status,
            content_length,
            received,
            matches,
            json: serde_json::from_slice(&small).unwrap_or(Value::Null),
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("download in time")
}

/// Waits until `cond` holds, checking every few milliseconds; fails the test after [`WAIT`].
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every file below `dir`, relative to it.
pub fn files_under(dir: &std::path::Path) -> Vec<String> {
    fn walk(root: &std::path::Path, dir: &std::path::Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, out);
            } else if let Ok(rel) = path.strip_prefix(root) {
                out.push(rel.display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// The process' peak resident set size (`VmHWM`), in bytes.
pub fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmHWM")
        * 1024
}

// ---- conversations and sends ----

pub fn conversation_id(body: &Value) -> ConversationId {
    ConversationId::new(body["id"].as_u64().expect("conversation id")).unwrap()
}

pub async fn direct(server: &TestServer, a: &Account, b: &Account) -> ConversationId {
    let (status, body) = server
        .http(
            "POST",
            "/v1/conversations/direct",
            Some(&a.token),
            Some(json!({"user_id": b.user()})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    conversation_id(&body)
}

/// The devices a send from `from` must cover.
pub async fn recipients(
    server: &TestServer,
    from: &Account,
    conversation: ConversationId,
    header: &[u8],
) -> Vec<Recipient> {
    let (status, body) = server
        .http(
            "GET",
            &format!("/v1/conversations/{conversation}/devices"),
            Some(&from.token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["devices"]
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
            header: Bytes::copy_from_slice(header),
        })
        .collect()
}

pub fn send_frame(
    req: u32,
    conversation: ConversationId,
    key: u8,
    body: &[u8],
    recipients: Vec<Recipient>,
) -> ClientFrame {
    Send {
        req,
        conversation,
        client_key: ClientKey::from_bytes([key; 16]),
        body: Bytes::copy_from_slice(body),
        recipients,
    }
    .into()
}

/// Reads frames until the backlog ends; returns the deliveries (pos, body).
pub async fn backlog(client: &mut Client) -> Vec<(u64, Bytes)> {
    let (before, end) = client.until(|f| matches!(f, ServerFrame::SyncEnd(_))).await;
    let ServerFrame::SyncEnd(end) = end else {
        unreachable!()
    };
    let deliveries: Vec<_> = before
        .into_iter()
        .filter_map(|f| match f {
            ServerFrame::Deliver(d) => Some((d.pos.get(), d.body)),
            _ => None,
        })
        .collect();
    assert_eq!(
        deliveries.last().map_or(0, |d| d.0),
        end.head.get().max(deliveries.last().map_or(0, |d| d.0))
    );
    deliveries
}
