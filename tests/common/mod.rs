//! Shared helpers for the end-to-end tests: a real node on 127.0.0.1:0 and event waits with
//! timeouts (never sleeps).
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::time::Duration;

use chat::client::{Client, Conversation, ConversationId, Credentials, Event, Events, Message};
use chat::server::{Config, Server};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The longest any single wait may take before a test fails.
pub const WAIT: Duration = Duration::from_secs(60);
pub const PASSWORD: &str = "correct horse";

/// A node configuration for tests: cheap Argon2, limits raised for one busy test process.
pub fn config(store: &str) -> Config {
    Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        store: store.into(),
        argon2_memory_kib: 8,
        argon2_iterations: 1,
        shutdown_grace_ms: 5_000,
        auth_burst_per_address: 100_000,
        send_burst_per_account: 100_000,
        sends_per_account_per_second: 100_000.0,
        frame_burst: 100_000,
        frames_per_second: 100_000.0,
        outbound_queue: 4096,
        // Every test user connects from 127.0.0.1: a hundred clients, each with its
        // WebSocket and pooled HTTP connections, are one address here.
        max_connections_per_address: 1024,
        ..Config::default()
    }
}

/// A node running in this process.
pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    pub async fn start(config: Config) -> Self {
        Self::serve(Server::bind(config).await.expect("bind"))
    }

    /// A node over a store the test keeps a handle to (to change it behind the node's back).
    pub async fn with_store(config: Config, store: std::sync::Arc<dyn chat::core::Store>) -> Self {
        Self::serve(Server::with_store(config, store).await.expect("bind"))
    }

    /// Runs an already bound node (one the test configured further).
    pub fn serve(server: Server) -> Self {
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

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Graceful shutdown; waits until the node has stopped.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task)
                .await
                .expect("shutdown in time")
                .expect("server task");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// The next event matching `pred`, failing the test after [`WAIT`].
pub async fn wait_for<T>(events: &mut Events, mut pred: impl FnMut(&Event) -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let event = tokio::time::timeout_at(deadline, events.next())
            .await
            .expect("event in time")
            .expect("event stream open");
        if let Some(t) = pred(&event) {
            return t;
        }
    }
}

/// The next decrypted message in `conversation`.
pub async fn next_message(events: &mut Events, conversation: ConversationId) -> Message {
    wait_for(events, |e| match e {
        Event::Message(m) if m.conversation == conversation => Some(m.clone()),
        _ => None,
    })
    .await
}

/// Closes a client and waits until its task has ended (its event stream ends then), so it
/// stores nothing more: dropping a client stops its driver at its next step, not at once.
pub async fn stop(client: Client, mut events: Events) {
    drop(client);
    tokio::time::timeout(WAIT, async { while events.next().await.is_some() {} })
        .await
        .expect("the client stops");
}

/// Waits until the client has processed its backlog.
pub async fn synced(events: &mut Events) {
    wait_for(events, |e| {
        matches!(e, Event::Connection(chat::client::ConnectionState::Synced)).then_some(())
    })
    .await;
}

/// Registers a user with a first device on a memory store.
pub async fn user(server: &TestServer, name: &str) -> (Client, Events) {
    let client = Client::builder(server.url())
        .device_name("first")
        .register(&Credentials::new(name, PASSWORD))
        .await
        .expect("register");
    let events = client.events();
    (client, events)
}

/// Logs in another device of `name` on a memory store and links it from `linker`, a linked
/// device of the same user.
pub async fn device(server: &TestServer, name: &str, linker: &Client) -> (Client, Events) {
    let client = Client::builder(server.url())
        .device_name("another")
        .login(&Credentials::new(name, PASSWORD))
        .await
        .expect("login");
    link(linker, &client).await;
    let events = client.events();
    (client, events)
}

/// Links `new`, an unlinked device, from `linker`, a linked device of the same user: the
/// code goes from one to the other as the user would carry it.
pub async fn link(linker: &Client, new: &Client) {
    assert!(
        !new.is_linked().await.expect("state"),
        "a new device starts unlinked"
    );
    let code = new.link_code().await.expect("code");
    let device = linker.link_device(&code).await.expect("link");
    assert_eq!(device, new.device().device);
    assert!(new.finish_link().await.expect("finish link"), "linked");
    assert!(new.is_linked().await.expect("state"));
}

/// One authenticated `GET` on a fresh connection; the JSON answer.
pub async fn http_get(addr: SocketAddr, path: &str, token: &str) -> serde_json::Value {
    let (status, json) = http_call(addr, "GET", path, Some(token), None).await;
    assert_eq!(status, 200, "GET {path}: {json}");
    json
}

/// One HTTP request on a fresh connection (optionally authenticated, optionally with a JSON
/// body): the status and the JSON answer (`null` for none).
pub async fn http_call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&serde_json::Value>,
) -> (u16, serde_json::Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let body = body.map(ToString::to_string).unwrap_or_default();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .expect("response in time")
        .expect("read");
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").expect("a response");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    let json = if body.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(body).expect("json")
    };
    (status, json)
}

/// The next text message in `conversation`, skipping other content (group changes).
pub async fn next_text(events: &mut Events, conversation: ConversationId) -> Message {
    loop {
        let m = next_message(events, conversation).await;
        if m.text().is_some() {
            return m;
        }
    }
}

/// The next membership change announced in `conversation`.
pub async fn next_change(
    events: &mut Events,
    conversation: ConversationId,
) -> chat::client::GroupChange {
    loop {
        if let chat::client::Content::GroupChange(c) =
            next_message(events, conversation).await.content
        {
            return c;
        }
    }
}

/// A TCP proxy on a fixed port whose backend can be taken down: `down()` cuts every open
/// connection and refuses new ones, as if the network were gone; `up()` restores it.
pub struct Proxy {
    pub addr: SocketAddr,
    backend: std::sync::Arc<std::sync::Mutex<Option<SocketAddr>>>,
    connections: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Proxy {
    pub async fn start(backend: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let backend = std::sync::Arc::new(std::sync::Mutex::new(Some(backend)));
        let connections = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (b, c, n) = (backend.clone(), connections.clone(), accepted.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let Some(to) = *b.lock().expect("lock") else {
                    continue; // dropped: the client sees the connection close
                };
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                c.lock().expect("lock").push(task.abort_handle());
            }
        });
        Self {
            addr,
            backend,
            connections,
            accepted,
        }
    }

    /// How many connections the proxy has accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn down(&self) {
        *self.backend.lock().expect("lock") = None;
        for c in self.connections.lock().expect("lock").drain(..) {
            c.abort();
        }
    }

    pub fn up(&self, backend: SocketAddr) {
        *self.backend.lock().expect("lock") = Some(backend);
    }
}

/// Sends that span a node's death (tests/e2e_crash.rs, tests/e2e_failover.rs): a burst in
/// flight when the node is killed, and sends queued while it is down.
pub struct Burst {
    sends: Vec<JoinHandle<chat::client::MessageId>>,
    acked: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    late: std::collections::BTreeSet<chat::client::ClientKey>,
    /// Every send of the burst, in flight and late.
    pub total: usize,
}

impl Burst {
    /// Starts `count` sends of `burst {i}` in `chat` and returns once ten of them are
    /// acknowledged (`Event::Sent` on `events`, its client's): the moment to kill the node.
    pub async fn start(chat: &Conversation, events: &mut Events, count: usize) -> Self {
        let acked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let sends = (0..count)
            .map(|i| {
                let (chat, acked) = (chat.clone(), acked.clone());
                tokio::spawn(async move {
                    let id = chat.send_text(&format!("burst {i}")).await.expect("send");
                    acked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    id
                })
            })
            .collect();
        let mut sent_events = 0;
        while sent_events < 10 {
            if let Event::Sent { .. } = tokio::time::timeout(WAIT, events.next())
                .await
                .expect("in time")
                .expect("open")
            {
                sent_events += 1;
            }
        }
        Self {
            sends,
            acked,
            late: std::collections::BTreeSet::new(),
            total: count,
        }
    }

    /// After the kill: says how many sends were acknowledged before it, then queues `count`
    /// more (certainly unacknowledged: they wait in the outbox for a node).
    pub async fn queue_late(&mut self, chat: &Conversation, count: usize) {
        let acked = self.acked.load(std::sync::atomic::Ordering::SeqCst);
        eprintln!(
            "{acked} of the first {} sends were acknowledged before the kill",
            self.total
        );
        for i in self.total..self.total + count {
            let key = chat.queue_text(&format!("burst {i}")).await.expect("queue");
            self.late.insert(key);
        }
        self.total += count;
    }

    /// Waits for every send to be acknowledged; the IDs they got.
    pub async fn acknowledged(
        self,
        events: &mut Events,
    ) -> std::collections::BTreeSet<chat::client::MessageId> {
        let mut ids = std::collections::BTreeSet::new();
        for s in self.sends {
            ids.insert(
                tokio::time::timeout(WAIT, s)
                    .await
                    .expect("send completes")
                    .expect("task"),
            );
        }
        let mut late = self.late;
        while !late.is_empty() {
            let (key, id) = wait_for(events, |e| match e {
                Event::Sent { client_key, id, .. } => Some((*client_key, *id)),
                _ => None,
            })
            .await;
            if late.remove(&key) {
                ids.insert(id);
            }
        }
        ids
    }
}

/// The receiving side of a [`Burst`] of `total` sends after one earlier message: each text
/// arrives exactly once (on `events`, the receiver's) and `chat`'s history holds them all.
pub async fn assert_burst_received_once(chat: &Conversation, events: &mut Events, total: usize) {
    let mut texts = std::collections::BTreeSet::new();
    while texts.len() < total {
        let m = next_message(events, chat.id()).await;
        assert!(
            texts.insert(m.text().expect("text").to_owned()),
            "a duplicate delivery"
        );
    }
    let expected: std::collections::BTreeSet<_> =
        (0..total).map(|i| format!("burst {i}")).collect();
    assert_eq!(texts, expected);
    assert_eq!(
        chat.history(None, 1000).await.expect("history").len(),
        total + 1
    );
}
