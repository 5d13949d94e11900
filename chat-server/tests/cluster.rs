//! Three real `chat-server` processes on 127.0.0.1 sharing one PostgreSQL database and one
//! Redis (each test its own database and channel prefix; each node its own Redis user, so a
//! test can kill exactly one node's pub/sub connection). Clients on every node, the devices
//! of one user on different nodes, conversations that always cross nodes, and a local
//! webhook that counts push notifications.
//!
//! Needs `CHAT_TEST_POSTGRES_URL` and `CHAT_TEST_REDIS_URL`; without them each test says it
//! is skipped (a failure under `CHAT_TEST_REQUIRE_SERVICES=1`, as in CI). Every wait is
//! bounded by [`WAIT`].

mod cluster_support;
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use chat_core::protocol::{ClientFrame, ReceiptUpdate, Send, ServerFrame, TypingUpdate};
use chat_core::{
    ClientKey, ConversationId, DeviceAddress, DeviceId, ErrorCode, MessageId, ReceiptKind,
    Recipient, UserId,
};
use chat_storage::testing::FreshPostgres;
use cluster_support::{RedisKeys, RedisUser};
use common::{Account, Client, WAIT, http};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// One chat-server process.
struct Node {
    child: Child,
    addr: SocketAddr,
    redis: RedisUser,
}

impl Node {
    /// Kills the process with SIGKILL: no shutdown, no deregistration, sockets reset.
    async fn kill9(&mut self) {
        self.child.start_kill().expect("SIGKILL");
        let _ = tokio::time::timeout(WAIT, self.child.wait()).await;
    }
}

/// The cluster, and the webhook receiver its nodes push to.
struct Cluster {
    nodes: Vec<Node>,
    pushes: mpsc::UnboundedReceiver<Value>,
    prefix: String,
    redis_url: String,
    _db: FreshPostgres,
    _dir: tempfile::TempDir,
    /// Last, so the nodes are gone before their keys are deleted.
    _keys: RedisKeys,
}

impl Cluster {
    /// Starts `n` nodes, or `None` (the test is skipped) without PostgreSQL or Redis.
    async fn start(n: usize) -> Option<Self> {
        let redis = cluster_support::redis_url()?;
        let db = FreshPostgres::create("chat_cluster").await?;
        let prefix = format!("{}:", cluster_support::unique("cluster"));
        let keys = RedisKeys::new(&redis, &prefix);
        let dir = tempfile::tempdir().unwrap();
        let (webhook, pushes) = webhook().await;
        let mut nodes = Vec::new();
        for i in 0..n {
            let user = RedisUser::create(&redis).await;
            let config = json!({
                "listen": "127.0.0.1:0",
                "store": db.url(),
                "store_pool_size": 4,
                "redis_url": user.url(),
                "redis_prefix": &prefix,
                "node_id": format!("node-{i}"),
                "blob_dir": dir.path().join(format!("blobs-{i}")),
                "argon2_memory_kib": 8,
                "argon2_iterations": 1,
                "auth_burst_per_address": 100_000,
                "send_burst_per_account": 100_000,
                "sends_per_account_per_second": 10_000.0,
                "frame_burst": 10_000,
                "frames_per_second": 10_000.0,
                // Clients here send no heartbeats; presence is not what is tested.
                "heartbeat_interval_ms": 600_000,
                "push_webhook_url": webhook,
                "push_coalesce_ms": 20,
            });
            let path = dir.path().join(format!("node-{i}.json"));
            std::fs::write(&path, config.to_string()).unwrap();
            nodes.push(spawn(&path, user).await);
        }
        Some(Self {
            nodes,
            pushes,
            prefix,
            redis_url: redis,
            _db: db,
            _dir: dir,
            _keys: keys,
        })
    }

    fn addr(&self, node: usize) -> SocketAddr {
        self.nodes[node].addr
    }

    /// Push notifications received so far.
    fn pushed(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        while let Ok(body) = self.pushes.try_recv() {
            out.push(body);
        }
        out
    }

    /// The next push notification.
    async fn next_push(&mut self) -> Value {
        tokio::time::timeout(WAIT, self.pushes.recv())
            .await
            .expect("a push in time")
            .expect("webhook alive")
    }
}

async fn spawn(config: &std::path::Path, redis: RedisUser) -> Node {
    let mut child = Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .arg("--config")
        .arg(config)
        .env("CHAT_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start chat-server");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = tokio::time::timeout(WAIT, async {
        loop {
            let line = lines.next_line().await.unwrap().expect("a banner line");
            let addr = line
                .split("listening on http://")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|a| a.parse::<SocketAddr>().ok());
            if let Some(addr) = addr {
                return addr;
            }
        }
    })
    .await
    .expect("node started in time");
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Node { child, addr, redis }
}

/// A push gateway on 127.0.0.1:0 that reports every request body and answers 204.
async fn webhook() -> (String, mpsc::UnboundedReceiver<Value>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut data = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
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
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if data.len() >= end + 4 + length {
                        let body = &data[end + 4..end + 4 + length];
                        let _ = tx.send(serde_json::from_slice(body).unwrap_or(Value::Null));
                        let _ = stream
                            .write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
                            .await;
                        return;
                    }
                }
            });
        }
    });
    (format!("http://{addr}/push"), rx)
}

// ---- accounts, conversations, sends ----

async fn register(addr: SocketAddr, name: &str) {
    let body = json!({"username": name, "password": "correct horse"});
    let (status, body) = http(addr, "POST", "/v1/register", None, Some(body)).await;
    assert_eq!(status, 201, "register {name}: {body}");
}

async fn login(addr: SocketAddr, name: &str) -> Account {
    let body = json!({"username": name, "password": "correct horse", "device_name": "test"});
    let (status, body) = http(addr, "POST", "/v1/login", None, Some(body)).await;
    assert_eq!(status, 200, "login {name}: {body}");
    let account = Account {
        token: body["token"].as_str().unwrap().to_owned(),
        device: DeviceAddress {
            user: UserId::new(body["user_id"].as_u64().unwrap()).unwrap(),
            device: DeviceId::new(body["device_id"].as_u64().unwrap()).unwrap(),
        },
    };
    // Every device can be woken: a push to an online one would show at the webhook.
    let token = json!({"platform": "fcm", "token": format!("tok-{}", account.device.device)});
    let (status, body) = http(addr, "PUT", "/v1/push", Some(&account.token), Some(token)).await;
    assert_eq!(status, 204, "{body}");
    account
}

async fn direct(addr: SocketAddr, a: &Account, b: &Account) -> ConversationId {
    let body = json!({"user_id": b.user()});
    let (status, body) = http(
        addr,
        "POST",
        "/v1/conversations/direct",
        Some(&a.token),
        Some(body),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    ConversationId::new(body["id"].as_u64().unwrap()).unwrap()
}

async fn group(addr: SocketAddr, owner: &Account, others: &[&Account]) -> ConversationId {
    let members: Vec<u64> = others.iter().map(|a| a.user().get()).collect();
    let body = json!({"members": members});
    let (status, body) = http(
        addr,
        "POST",
        "/v1/conversations/groups",
        Some(&owner.token),
        Some(body),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    ConversationId::new(body["id"].as_u64().unwrap()).unwrap()
}

/// The devices a send from `from` to `conversation` must cover.
async fn recipients(
    addr: SocketAddr,
    from: &Account,
    conversation: ConversationId,
) -> Vec<Recipient> {
    let path = format!("/v1/conversations/{conversation}/devices");
    let (status, body) = http(addr, "GET", &path, Some(&from.token), None).await;
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
            header: Bytes::from_static(b"h"),
        })
        .collect()
}

/// Sends `body` and waits for its `sent`; returns the message ID. Deliveries on the way are
/// kept, other frames skipped.
async fn send(
    device: &mut Device,
    req: u32,
    conversation: ConversationId,
    body: &str,
    recipients: &[Recipient],
) -> MessageId {
    // Unique per sender connection: `req` is never reused by one.
    let mut key = [0xAB; 16];
    key[..4].copy_from_slice(&req.to_be_bytes());
    let frame = Send {
        req,
        conversation,
        client_key: ClientKey::from_bytes(key),
        body: Bytes::copy_from_slice(body.as_bytes()),
        recipients: recipients.to_vec(),
    };
    device.client.send(frame.into()).await;
    loop {
        match device.client.recv().await {
            ServerFrame::Sent(sent) if sent.req == req => return sent.id,
            ServerFrame::Error(err) if err.req == Some(req) => panic!("send refused: {err:?}"),
            ServerFrame::Deliver(d) => device.keep(d),
            _ => {}
        }
    }
}

/// A device's connection and what it has received: (position, conversation, id, body).
struct Device {
    account: Account,
    client: Client,
    got: Vec<(u64, ConversationId, MessageId, String)>,
}

impl Device {
    /// Connects to `addr` from the last position received, and reads the backlog.
    async fn connect(addr: SocketAddr, account: Account) -> Self {
        let client = Client::connect(addr, &account, 0).await;
        let mut device = Self {
            account,
            client,
            got: Vec::new(),
        };
        device.sync().await;
        device
    }

    async fn reconnect(&mut self, addr: SocketAddr) {
        let cursor = self.got.last().map_or(0, |g| g.0);
        self.client = Client::connect(addr, &self.account, cursor).await;
        self.sync().await;
    }

    /// Reads until `sync_end`, keeping deliveries.
    async fn sync(&mut self) {
        loop {
            match self.client.recv().await {
                ServerFrame::SyncEnd(_) => return,
                ServerFrame::Deliver(d) => self.keep(d),
                _ => {}
            }
        }
    }

    fn keep(&mut self, d: chat_core::protocol::Deliver) {
        let body = String::from_utf8_lossy(&d.body).into_owned();
        self.got.push((d.pos.get(), d.conversation, d.id, body));
    }

    /// Reads live frames until `body` has been delivered; other frames are returned.
    async fn until_delivered(&mut self, body: &str) -> Vec<ServerFrame> {
        let mut other = Vec::new();
        while !self.got.iter().any(|g| g.3 == body) {
            match self.client.recv().await {
                ServerFrame::Deliver(d) => self.keep(d),
                frame => other.push(frame),
            }
        }
        other
    }

    /// Reads until a frame matches `pred`, keeping deliveries on the way.
    async fn until(&mut self, mut pred: impl FnMut(&ServerFrame) -> bool) -> ServerFrame {
        loop {
            let frame = self.client.recv().await;
            if pred(&frame) {
                return frame;
            }
            if let ServerFrame::Deliver(d) = frame {
                self.keep(d);
            }
        }
    }

    /// Positions 1..=n with nothing missing and nothing twice.
    fn assert_gapless(&self) {
        let positions: Vec<u64> = self.got.iter().map(|g| g.0).collect();
        let expected: Vec<u64> = (1..=positions.len() as u64).collect();
        assert_eq!(
            positions, expected,
            "inbox positions of {:?}",
            self.account.device
        );
    }
}

// ---- the tests ----

/// Messages, typing and receipts cross nodes live, with one user's devices on different
/// nodes; no online device is pushed; logging out through node 0 closes the socket on node 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_cross_nodes_live_and_logout_closes_sockets_elsewhere() {
    let Some(mut cluster) = Cluster::start(3).await else {
        return;
    };
    let (n0, n1, n2) = (cluster.addr(0), cluster.addr(1), cluster.addr(2));
    for name in ["alice", "bob", "carol", "dave"] {
        register(n0, name).await;
    }
    // Alice on nodes 0 and 1, Bob on nodes 1 and 2, Carol on node 2; Dave never connects.
    let a0 = login(n0, "alice").await;
    let a1 = login(n1, "alice").await;
    let b1 = login(n1, "bob").await;
    let b2 = login(n2, "bob").await;
    let c2 = login(n2, "carol").await;
    let dave = login(n0, "dave").await;
    let ab = direct(n0, &a0, &b1).await;
    let abc = group(n0, &a0, &[&b1, &c2]).await;
    let ad = direct(n0, &a0, &dave).await;
    let mut alice0 = Device::connect(n0, a0.clone()).await;
    let mut alice1 = Device::connect(n1, a1.clone()).await;
    let mut bob1 = Device::connect(n1, b1.clone()).await;
    let mut bob2 = Device::connect(n2, b2.clone()).await;
    let mut carol2 = Device::connect(n2, c2.clone()).await;

    // 1:1 from node 0: Bob's devices on nodes 1 and 2 and Alice's other device on node 1.
    let to_ab = recipients(n0, &a0, ab).await;
    let to_abc = recipients(n0, &a0, abc).await;
    let mut req = 0;
    for i in 0..20 {
        req += 1;
        send(&mut alice0, req, ab, &format!("ab-{i}"), &to_ab).await;
        req += 1;
        send(&mut alice0, req, abc, &format!("abc-{i}"), &to_abc).await;
    }
    // Group messages from node 2 reach node 0 and node 1.
    let to_abc_c = recipients(n2, &c2, abc).await;
    for i in 0..10 {
        send(&mut carol2, 100 + i, abc, &format!("carol-{i}"), &to_abc_c).await;
    }
    for (device, last) in [
        (&mut alice1, "carol-9"),
        (&mut bob1, "carol-9"),
        (&mut bob2, "carol-9"),
        (&mut carol2, "abc-19"),
        (&mut alice0, "carol-9"),
    ] {
        device.until_delivered(last).await;
    }
    for device in [&bob1, &bob2] {
        let bodies: Vec<&str> = device.got.iter().map(|g| g.3.as_str()).collect();
        assert_eq!(bodies.len(), 50, "every message once: {bodies:?}");
        device.assert_gapless();
    }
    alice1.until_delivered("ab-19").await;
    assert_eq!(alice1.got.len(), 50);
    alice1.assert_gapless();
    assert_eq!(carol2.got.len(), 20);
    assert_eq!(alice0.got.len(), 10);

    // Push: Dave, offline, is woken; nobody online ever was.
    req += 1;
    let to_ad = recipients(n0, &a0, ad).await;
    send(&mut alice0, req, ad, "for dave", &to_ad).await;
    let push = cluster.next_push().await;
    assert_eq!(push["device"]["device"], dave.device.device.get(), "{push}");
    assert!(cluster.pushed().is_empty(), "pushes to online devices");

    // Typing from node 0 reaches Bob on nodes 1 and 2 (and not Alice's own devices).
    alice0
        .client
        .send(ClientFrame::Typing(TypingUpdate {
            conversation: ab,
            active: true,
        }))
        .await;
    for bob in [&mut bob1, &mut bob2] {
        let frame = bob.until(|f| matches!(f, ServerFrame::Typing(_))).await;
        let ServerFrame::Typing(t) = frame else {
            unreachable!()
        };
        assert_eq!((t.conversation, t.from), (ab, a0.device));
    }
    // A read receipt from Bob on node 2 reaches Alice on nodes 0 and 1.
    let last = bob2
        .got
        .iter()
        .filter(|g| g.1 == ab)
        .map(|g| g.2)
        .max()
        .unwrap();
    bob2.client
        .send(ClientFrame::Receipt(ReceiptUpdate {
            conversation: ab,
            kind: ReceiptKind::Read,
            up_to: last,
        }))
        .await;
    for alice in [&mut alice0, &mut alice1] {
        let frame = alice.until(|f| matches!(f, ServerFrame::Receipt(_))).await;
        let ServerFrame::Receipt(r) = frame else {
            unreachable!()
        };
        assert_eq!((r.conversation, r.user, r.up_to), (ab, b2.user(), last));
    }

    // Alice's node-1 device logs out through node 0: its socket on node 1 closes.
    let (status, body) = http(n0, "POST", "/v1/logout", Some(&a1.token), None).await;
    assert!(status == 204 || status == 200, "logout: {status} {body}");
    let closing = alice1.until(|f| matches!(f, ServerFrame::Closing(_))).await;
    let ServerFrame::Closing(closing) = closing else {
        unreachable!()
    };
    assert_eq!(closing.code, ErrorCode::InvalidToken);
    assert!(
        alice1.client.try_recv(WAIT).await.is_none(),
        "closed after closing"
    );
}

/// Redis drops node 1's pub/sub connection while node 0 sends to a device on node 1: every
/// message still arrives, the last one too, without a later message to reveal the gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_pubsub_connection_under_load_loses_nothing() {
    let Some(cluster) = Cluster::start(2).await else {
        return;
    };
    let (n0, n1) = (cluster.addr(0), cluster.addr(1));
    register(n0, "alice").await;
    register(n0, "bob").await;
    let a0 = login(n0, "alice").await;
    let b1 = login(n1, "bob").await;
    let ab = direct(n0, &a0, &b1).await;
    let to = recipients(n0, &a0, ab).await;
    let mut alice = Device::connect(n0, a0).await;
    let mut bob = Device::connect(n1, b1).await;
    const TOTAL: u32 = 300;
    let mut killed = 0;
    for i in 0..TOTAL {
        send(&mut alice, i + 1, ab, &format!("m-{i}"), &to).await;
        // Killed three times while the load goes on.
        if i % 100 == 50 {
            killed += cluster.nodes[1].redis.kill_pubsub().await;
        }
    }
    assert!(
        killed >= 3,
        "node 1's pub/sub connection was killed {killed} times"
    );
    // The last messages are published while node 1 cannot reconnect (its Redis user is
    // refused): lost on the bus for certain, with nothing sent after them. Node 1 gets them
    // once it is back, from the repair its resubscription starts.
    let redis = &cluster.nodes[1].redis;
    redis.set_enabled(false).await;
    assert_eq!(redis.kill_pubsub().await, 1);
    for i in TOTAL..TOTAL + 5 {
        send(&mut alice, i + 1, ab, &format!("m-{i}"), &to).await;
    }
    redis.set_enabled(true).await;
    let total = TOTAL + 5;
    bob.until_delivered(&format!("m-{}", total - 1)).await;
    assert_eq!(bob.got.len(), total as usize);
    bob.assert_gapless();
    let ids: BTreeSet<MessageId> = bob.got.iter().map(|g| g.2).collect();
    assert_eq!(ids.len(), total as usize, "each message once");
}

/// `kill -9` of one node in the middle of load: its devices reconnect to another node from
/// their cursors; afterwards every acknowledged message is on every recipient device exactly
/// once, and per-conversation IDs and inbox positions are gapless.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_node_under_load_loses_nothing_acknowledged() {
    let Some(mut cluster) = Cluster::start(3).await else {
        return;
    };
    let (n0, n1, n2) = (cluster.addr(0), cluster.addr(1), cluster.addr(2));
    for name in ["snd0", "snd2", "rcv", "usr"] {
        register(n0, name).await;
    }
    let s0 = login(n0, "snd0").await;
    let s2 = login(n2, "snd2").await;
    let r1 = login(n1, "rcv").await;
    let r2 = login(n2, "rcv").await;
    let u1 = login(n1, "usr").await;
    let d0 = direct(n0, &s0, &r1).await;
    let d2 = direct(n2, &s2, &r1).await;
    let g = group(n0, &s0, &[&s2, &r1, &u1]).await;
    let mut sender0 = Device::connect(n0, s0.clone()).await;
    let mut sender2 = Device::connect(n2, s2.clone()).await;
    let mut recv_r1 = Device::connect(n1, r1).await;
    let mut recv_r2 = Device::connect(n2, r2).await;
    let mut recv_u1 = Device::connect(n1, u1).await;
    let (to_d0, to_g0) = (recipients(n0, &s0, d0).await, recipients(n0, &s0, g).await);
    let (to_d2, to_g2) = (recipients(n2, &s2, d2).await, recipients(n2, &s2, g).await);
    const PER_SENDER: u32 = 80;
    let (kill_tx, kill_rx) = tokio::sync::oneshot::channel::<()>();
    let load0 = async {
        let mut acked = Vec::new();
        let mut kill_tx = Some(kill_tx);
        for i in 0..PER_SENDER {
            let (conversation, to) = if i % 2 == 0 {
                (d0, &to_d0)
            } else {
                (g, &to_g0)
            };
            let body = format!("s0-{i}");
            let id = send(&mut sender0, i + 1, conversation, &body, to).await;
            acked.push((conversation, id, body));
            if i == PER_SENDER / 3
                && let Some(tx) = kill_tx.take()
            {
                let _ = tx.send(());
            }
        }
        acked
    };
    let load2 = async {
        let mut acked = Vec::new();
        for i in 0..PER_SENDER {
            let (conversation, to) = if i % 2 == 0 {
                (d2, &to_d2)
            } else {
                (g, &to_g2)
            };
            let body = format!("s2-{i}");
            let id = send(&mut sender2, i + 1, conversation, &body, to).await;
            acked.push((conversation, id, body));
        }
        acked
    };
    // Node 1 dies; its two devices (r's and u's) were reading live until then.
    let killer = async {
        let _ = kill_rx.await;
        cluster.nodes[1].kill9().await;
    };
    let (acked0, acked2, ()) = tokio::join!(load0, load2, killer);
    // What node 1's devices had received before it died stays theirs; they resume on node 0.
    for device in [&mut recv_r1, &mut recv_u1] {
        while let Some(frame) = device.client.try_recv(Duration::from_millis(1)).await {
            if let ServerFrame::Deliver(d) = frame {
                device.keep(d);
            }
        }
        device.reconnect(n0).await;
    }
    let acked: Vec<_> = acked0.into_iter().chain(acked2).collect();
    let expect = |user: &str| -> BTreeSet<String> {
        acked
            .iter()
            .filter(|(c, _, body)| match user {
                "r" => *c == d0 || *c == d2 || *c == g,
                _ => *c == g && !body.starts_with(user),
            })
            .map(|(_, _, body)| body.clone())
            .collect()
    };
    for (device, user) in [
        (&mut recv_r1, "r"),
        (&mut recv_r2, "r"),
        (&mut recv_u1, "u"),
    ] {
        let expected = expect(user);
        for body in &expected {
            device.until_delivered(body).await;
        }
        let bodies: Vec<&String> = device.got.iter().map(|g| &g.3).collect();
        let distinct: BTreeSet<&String> = bodies.iter().copied().collect();
        assert_eq!(
            bodies.len(),
            distinct.len(),
            "a message twice on {user}'s device"
        );
        assert!(expected.iter().all(|b| distinct.contains(b)));
        device.assert_gapless();
    }
    // Per-conversation IDs: r's device holds every message of the three conversations.
    let mut ids: BTreeMap<ConversationId, Vec<u64>> = BTreeMap::new();
    for (_, conversation, id, _) in &recv_r2.got {
        ids.entry(*conversation).or_default().push(id.get());
    }
    for (conversation, mut list) in ids {
        list.sort_unstable();
        let expected: Vec<u64> = (1..=list.len() as u64).collect();
        assert_eq!(list, expected, "message IDs of {conversation:?}");
    }
    // The senders' own numbering saw no hole either.
    for conversation in [d0, d2, g] {
        let count = acked.iter().filter(|(c, _, _)| *c == conversation).count();
        let max = acked
            .iter()
            .filter(|(c, _, _)| *c == conversation)
            .map(|(_, id, _)| id.get())
            .max();
        assert_eq!(
            max,
            Some(count as u64),
            "acknowledged IDs of {conversation:?}"
        );
    }
}

/// Counts the Redis commands that name one of the cluster's device channels, as `MONITOR`
/// sees them.
struct CommandCounter {
    lines: mpsc::UnboundedReceiver<String>,
}

impl CommandCounter {
    async fn start(cluster: &Cluster) -> Self {
        let client = redis::Client::open(cluster.redis_url.as_str()).unwrap();
        let monitor = client.get_async_monitor().await.expect("MONITOR");
        // Device channels: what a message costs (presence and typing use other channels).
        let needle = format!("\"{}d:", cluster.prefix);
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            use futures::StreamExt;
            let mut stream = monitor.into_on_message::<String>();
            while let Some(line) = stream.next().await {
                if line.contains(&needle) && tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self { lines }
    }

    /// Commands by name seen so far, then forgotten.
    fn take(&mut self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        while let Ok(line) = self.lines.try_recv() {
            let name = line
                .split('"')
                .nth(1)
                .unwrap_or_default()
                .to_ascii_uppercase();
            *counts.entry(name).or_default() += 1;
        }
        counts
    }
}

/// Redis work per message is bounded by the recipients' devices: one `PUBLISH` per
/// recipient device (pipelined), nothing else, for a 1:1 message and for a message to a
/// 100-member group spread over three nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_commands_per_message() {
    let Some(cluster) = Cluster::start(3).await else {
        return;
    };
    let nodes = [cluster.addr(0), cluster.addr(1), cluster.addr(2)];
    let mut members = Vec::new();
    for i in 0..100 {
        let name = format!("member{i}");
        register(nodes[0], &name).await;
        members.push(login(nodes[i % 3], &name).await);
    }
    let mut devices = Vec::new();
    for (i, account) in members.iter().enumerate() {
        devices.push(Device::connect(nodes[i % 3], account.clone()).await);
    }
    let ab = direct(nodes[0], &members[0], &members[1]).await;
    let others: Vec<&Account> = members[1..].iter().collect();
    let g = group(nodes[0], &members[0], &others).await;
    let to_ab = recipients(nodes[0], &members[0], ab).await;
    let to_g = recipients(nodes[0], &members[0], g).await;
    assert_eq!((to_ab.len(), to_g.len()), (1, 99));
    let mut counter = CommandCounter::start(&cluster).await;
    const DIRECT: usize = 50;
    let sender = &mut devices[0];
    for i in 0..DIRECT {
        send(sender, i as u32 + 1, ab, &format!("d-{i}"), &to_ab).await;
    }
    devices[1]
        .until_delivered(&format!("d-{}", DIRECT - 1))
        .await;
    let sender = &mut devices[0];
    send(sender, 1_000, g, "to the group", &to_g).await;
    for device in &mut devices[1..] {
        device.until_delivered("to the group").await;
    }
    // The group message's last PUBLISH was answered before `sent`; MONITOR shows commands
    // as they run, so everything is seen once the last recipient has it.
    let mut seen = counter.take();
    // MONITOR's feed may trail the deliveries slightly: wait for the expected total.
    let expected = DIRECT + 99;
    let deadline = tokio::time::Instant::now() + WAIT;
    while seen.values().sum::<usize>() < expected && tokio::time::Instant::now() < deadline {
        let line = tokio::time::timeout_at(deadline, counter.lines.recv()).await;
        if let Ok(Some(line)) = line {
            let name = line
                .split('"')
                .nth(1)
                .unwrap_or_default()
                .to_ascii_uppercase();
            *seen.entry(name).or_default() += 1;
        }
    }
    eprintln!(
        "redis commands for {DIRECT} 1:1 messages and one 100-member group message: {seen:?}"
    );
    assert_eq!(seen.get("PUBLISH"), Some(&expected), "{seen:?}");
    assert_eq!(seen.len(), 1, "only PUBLISH per message: {seen:?}");
}

/// Signs a device off with a normal WebSocket close and waits for the server's answer: by
/// then its node has queued the presence change (the gateway applies the sign-off before it
/// answers the close).
async fn sign_off(device: &mut Device) {
    use futures::StreamExt as _;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    device
        .client
        .ws
        .close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "signed off".into(),
        }))
        .await
        .expect("close");
    let answered = tokio::time::timeout(WAIT, async {
        loop {
            match device.client.ws.next().await {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(answered.is_ok(), "the node answered the close");
}

/// The next presence event the device receives.
async fn next_presence(device: &mut Device) -> (UserId, bool) {
    match device
        .until(|f| matches!(f, ServerFrame::Presence(_)))
        .await
    {
        ServerFrame::Presence(p) => (p.user, p.online),
        _ => unreachable!(),
    }
}

/// Presence is the cluster's: Alice with devices on nodes 0 and 1, watched from node 2 (who
/// also sees her profile change made through node 0).
/// Her node-0 device leaving announces nothing; her node-1 device leaving announces exactly
/// one `offline`. Each node publishes its presence changes in order, so a marker user's
/// sign-off on the same node, announced next, shows that nothing came before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_announced_for_the_cluster_not_per_node() {
    let Some(cluster) = Cluster::start(3).await else {
        return;
    };
    let (n0, n1, n2) = (cluster.addr(0), cluster.addr(1), cluster.addr(2));
    for name in ["alice", "bob", "carol", "dave"] {
        register(n0, name).await;
    }
    let bob = login(n2, "bob").await;
    let (alice0, alice1) = (login(n0, "alice").await, login(n1, "alice").await);
    let (carol, dave) = (login(n0, "carol").await, login(n1, "dave").await);
    for other in [&alice0, &carol, &dave] {
        direct(n2, &bob, other).await;
    }
    let mut a0 = Device::connect(n0, alice0.clone()).await;
    let mut a1 = Device::connect(n1, alice1).await;
    let mut c0 = Device::connect(n0, carol.clone()).await;
    let mut d1 = Device::connect(n1, dave.clone()).await;
    let mut watcher = Device::connect(n2, bob).await;
    watcher
        .client
        .send(
            chat_core::protocol::Subscribe {
                users: vec![alice0.user(), carol.user(), dave.user()],
            }
            .into(),
        )
        .await;
    // The snapshots, read from the cluster's state: all three online, in some order.
    let mut snapshot = BTreeSet::new();
    for _ in 0..3 {
        let (user, online) = next_presence(&mut watcher).await;
        assert!(online, "{user} is online on another node");
        snapshot.insert(user);
    }
    assert_eq!(snapshot.len(), 3);

    // A profile change made through node 0 reaches her contact on node 2.
    let body = json!({"display_name": "Alice A."});
    let (status, body) = http(n0, "PUT", "/v1/profile", Some(&alice0.token), Some(body)).await;
    assert!(status == 200 || status == 204, "{status} {body}");
    match watcher
        .until(|f| matches!(f, ServerFrame::Profile(_)))
        .await
    {
        ServerFrame::Profile(p) => assert_eq!(p.user, alice0.user()),
        _ => unreachable!(),
    }

    // Alice's node-0 device leaves; she still has one on node 1: nothing is announced for
    // her before Carol's (node 0, after it) offline.
    sign_off(&mut a0).await;
    sign_off(&mut c0).await;
    assert_eq!(next_presence(&mut watcher).await, (carol.user(), false));

    // Her node-1 device leaves: one offline, and nothing more for her before Dave's (node 1,
    // after it) offline.
    sign_off(&mut a1).await;
    assert_eq!(next_presence(&mut watcher).await, (alice0.user(), false));
    sign_off(&mut d1).await;
    assert_eq!(next_presence(&mut watcher).await, (dave.user(), false));
}
