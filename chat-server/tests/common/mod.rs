//! A test harness: a node on 127.0.0.1:0, a minimal HTTP/1.1 client and a WebSocket client
//! speaking the protocol.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chat_core::protocol::{Auth, ClientFrame, PROTOCOL_VERSION, ServerFrame};
use chat_core::{DeviceAddress, DeviceId, InboxPos, Store, UserId};
use chat_server::{Config, Server};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

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

    fn run(server: Server) -> Self {
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
    let mut stream = TcpStream::connect(addr).await.expect("connect");
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

    pub async fn raw(addr: SocketAddr) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/v1/ws"))
            .await
            .expect("ws connect");
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
