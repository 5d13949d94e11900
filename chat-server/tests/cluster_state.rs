//! Nodes of one cluster in one process: each test starts two nodes over one shared store and
//! one Redis (under a key prefix of its own) and checks what they share: the log-in limits,
//! the node registry, presence. Needs `CHAT_TEST_REDIS_URL`; without it each test says it is
//! skipped (a failure under `CHAT_TEST_REQUIRE_SERVICES=1`, as in CI).

mod cluster_support;
mod common;

use std::sync::Arc;

use chat_core::protocol::{PresenceEvent, ServerFrame, Subscribe, Unsubscribe};
use chat_core::{Store, UserId};
use cluster_support::RedisKeys;
use common::{TestServer, WAIT, http_from, test_config};
use serde_json::{Value, json};

const GUESSER: [u8; 4] = [127, 0, 0, 2];
const OWNER: [u8; 4] = [127, 0, 0, 3];

/// A node configuration for a cluster on `CHAT_TEST_REDIS_URL` under a fresh prefix (whose
/// keys go when the returned guard is dropped), or `None` (a visible skip, a CI failure) when
/// it is unset.
fn cluster_config(test: &str) -> Option<(chat_server::Config, RedisKeys)> {
    let redis_url = chat_storage::testing::service_url("CHAT_TEST_REDIS_URL")?;
    let mut salt = [0u8; 8];
    getrandom::fill(&mut salt).unwrap();
    // The store URL only has to say "shared" for the configuration check: `with_store`
    // serves the store it is given, one in-process store both nodes share.
    let prefix = format!("test:cluster-{test}:{}:", hex::encode(salt));
    let config = chat_server::Config {
        store: "postgres://in-process/shared".into(),
        redis_url: Some(redis_url.clone().into()),
        redis_prefix: prefix.clone(),
        ..test_config()
    };
    Some((config, RedisKeys::new(&redis_url, &prefix)))
}

/// Two nodes of one cluster: one store, one Redis prefix.
async fn two_nodes(config: &chat_server::Config) -> (TestServer, TestServer) {
    let store: Arc<dyn Store> = Arc::new(chat_storage::MemoryStore::new());
    let a = TestServer::with_store(config.clone(), store.clone()).await;
    let b = TestServer::with_store(config.clone(), store).await;
    (a, b)
}

async fn login(server: &TestServer, from: [u8; 4], password: &str) -> (u16, Value) {
    http_from(
        from,
        server.addr,
        "POST",
        "/v1/login",
        None,
        Some(json!({"username": "alice", "password": password, "device_name": "test"})),
    )
    .await
}

/// Three failures per (address, account) on the cluster, not three per node: the guesser's
/// attempts alternate between the nodes and the fourth is refused wherever it lands. (With
/// buckets in each node's memory, six failures were checked.)
#[tokio::test]
async fn one_wrong_password_budget_across_two_nodes() {
    let Some((config, _cleanup)) = cluster_config("limits") else {
        return;
    };
    let config = chat_server::Config {
        auth_failures_per_address_account: 3,
        auth_failure_refill_ms: 3_600_000,
        ..config
    };
    let (a, b) = two_nodes(&config).await;
    let (status, body) = a
        .http(
            "POST",
            "/v1/register",
            None,
            Some(json!({"username": "alice", "password": "correct horse"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");

    let mut answers = Vec::new();
    for i in 0..8 {
        let node = if i % 2 == 0 { &a } else { &b };
        let (status, body) = login(node, GUESSER, "wrong horse").await;
        answers.push((status, body["error"].as_str().unwrap_or("").to_owned()));
    }
    let bad = (401, "bad_credentials".to_owned());
    let limited = (429, "rate_limited".to_owned());
    assert!(answers[..3].iter().all(|a| *a == bad), "{answers:?}");
    assert!(answers[3..].iter().all(|a| *a == limited), "{answers:?}");
    // The owner, elsewhere, logs in on either node; successes cost nothing.
    for node in [&a, &b, &a] {
        let (status, body) = login(node, OWNER, "correct horse").await;
        assert_eq!(status, 200, "{body}");
    }
    a.shutdown().await;
    b.shutdown().await;
}

/// Discovery on either node lists both nodes; a node that shut down is no longer listed.
#[tokio::test]
async fn discovery_lists_every_live_node_of_the_cluster() {
    let Some((config, _cleanup)) = cluster_config("discovery") else {
        return;
    };
    let store: Arc<dyn Store> = Arc::new(chat_storage::MemoryStore::new());
    let node = |id: &str| chat_server::Config {
        node_id: Some(id.into()),
        ..config.clone()
    };
    let a = TestServer::with_store(node("node-a"), store.clone()).await;
    let b = TestServer::with_store(node("node-b"), store).await;
    let ids = |body: &Value| -> Vec<String> {
        body["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["id"].as_str().unwrap().to_owned())
            .collect()
    };
    // Each node registers before it serves, so both are listed once both answer.
    for node in [&a, &b] {
        let (status, body) = node.http("GET", "/v1/discovery", None, None).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(ids(&body), ["node-a", "node-b"]);
    }
    b.shutdown().await;
    let (_, body) = a.http("GET", "/v1/discovery", None, None).await;
    assert_eq!(ids(&body), ["node-a"]);
    assert_eq!(body["recommended"]["id"], "node-a");
    a.shutdown().await;
}

/// Subscribes to `user`, reads the snapshot, unsubscribes.
async fn snapshot(watcher: &mut common::Client, user: UserId) -> PresenceEvent {
    watcher.send(Subscribe { users: vec![user] }.into()).await;
    let (_, frame) = watcher
        .until(|f| matches!(f, ServerFrame::Presence(_)))
        .await;
    watcher.send(Unsubscribe { users: vec![user] }.into()).await;
    match frame {
        ServerFrame::Presence(event) => event,
        other => panic!("not a presence frame: {other:?}"),
    }
}

/// A subscriber on node A sees a user whose only device is on node B as online: the
/// snapshot reads the cluster's presence. (Each node's own tracker knew only its devices.)
#[tokio::test]
async fn a_snapshot_on_one_node_sees_a_device_on_another() {
    let Some((config, _cleanup)) = cluster_config("presence") else {
        return;
    };
    let (a, b) = two_nodes(&config).await;
    let alice = a.account("alice").await;
    let bob = a.account("bob").await;
    let (status, body) = a
        .http(
            "POST",
            "/v1/conversations/direct",
            Some(&alice.token),
            Some(json!({"user_id": bob.user()})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let mut watcher = a.online(&bob).await;
    assert!(
        !snapshot(&mut watcher, alice.user()).await.online,
        "alice is not connected"
    );
    let _alice_on_b = b.online(&alice).await;
    // Node B records alice's device in Redis as soon as its presence task runs.
    tokio::time::timeout(WAIT, async {
        while !snapshot(&mut watcher, alice.user()).await.online {}
    })
    .await
    .expect("node A's snapshot sees alice online on node B");
    a.shutdown().await;
    b.shutdown().await;
}

/// A `chat-server` process of a cluster, configured by a JSON file in its own directory.
struct NodeProcess {
    child: std::process::Child,
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl NodeProcess {
    fn start(config: &Value) -> Self {
        use std::io::{BufRead, BufReader};
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("node.json");
        std::fs::write(&file, config.to_string()).unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_chat-server"))
            .arg("--config")
            .arg(&file)
            .env_remove("CHAT_LOG")
            .current_dir(dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line
                    .strip_prefix("chat-server listening on http://")
                    .and_then(|rest| rest.split_whitespace().next())
                    .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
                {
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = rx.recv_timeout(WAIT).expect("the node prints its address");
        Self {
            child,
            addr,
            _dir: dir,
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn log_in(addr: std::net::SocketAddr, name: &str) -> common::Account {
    let (status, body) = common::http(
        addr,
        "POST",
        "/v1/login",
        None,
        Some(json!({"username": name, "password": "correct horse", "device_name": "test"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    common::Account {
        token: body["token"].as_str().unwrap().to_owned(),
        device: chat_core::DeviceAddress {
            user: UserId::new(body["user_id"].as_u64().unwrap()).unwrap(),
            device: chat_core::DeviceId::new(body["device_id"].as_u64().unwrap()).unwrap(),
        },
    }
}

/// Two `chat-server` processes on one PostgreSQL and one Redis. Alice's only device is on
/// node B; Bob watches her from node A. B is killed with SIGKILL (no deregistration, no
/// goodbye): once its registration lapses, A's sweeper takes Alice offline and Bob is told,
/// and discovery on A stops listing B.
#[tokio::test]
async fn a_killed_nodes_users_go_offline_and_discovery_drops_it() {
    let Some((config, _cleanup)) = cluster_config("kill") else {
        return;
    };
    let Some(postgres) = chat_storage::testing::service_url("CHAT_TEST_POSTGRES_URL") else {
        return;
    };
    let node = |id: &str| {
        json!({
            "listen": "127.0.0.1:0",
            "store": postgres,
            "redis_url": config.redis_url.as_ref().unwrap().as_str(),
            "redis_prefix": config.redis_prefix,
            "node_id": id,
            "discovery_ttl_ms": 1000,
            "discovery_refresh_ms": 200,
            "argon2_memory_kib": 8,
            "argon2_iterations": 1,
            "auth_burst_per_address": 10000,
        })
    };
    let a = NodeProcess::start(&node("node-a"));
    let mut b = NodeProcess::start(&node("node-b"));
    // The database is shared with other runs: names of this run's own.
    let tag = &config.redis_prefix[config.redis_prefix.len() - 9..config.redis_prefix.len() - 1];
    let (alice_name, bob_name) = (format!("alice{tag}"), format!("bob{tag}"));
    for name in [&alice_name, &bob_name] {
        let (status, body) = common::http(
            a.addr,
            "POST",
            "/v1/register",
            None,
            Some(json!({"username": name, "password": "correct horse"})),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }
    let alice = log_in(a.addr, &alice_name).await;
    let bob = log_in(a.addr, &bob_name).await;
    let (status, body) = common::http(
        a.addr,
        "POST",
        "/v1/conversations/direct",
        Some(&alice.token),
        Some(json!({"user_id": bob.user()})),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    let mut alice_on_b = common::Client::connect(b.addr, &alice, 0).await;
    alice_on_b
        .until(|f| matches!(f, ServerFrame::SyncEnd(_)))
        .await;
    let mut watcher = common::Client::connect(a.addr, &bob, 0).await;
    watcher
        .until(|f| matches!(f, ServerFrame::SyncEnd(_)))
        .await;
    tokio::time::timeout(WAIT, async {
        while !snapshot(&mut watcher, alice.user()).await.online {}
    })
    .await
    .expect("node A sees alice online on node B");
    watcher
        .send(
            Subscribe {
                users: vec![alice.user()],
            }
            .into(),
        )
        .await;
    let (_, first) = watcher
        .until(|f| matches!(f, ServerFrame::Presence(_)))
        .await;
    assert!(matches!(first, ServerFrame::Presence(p) if p.online));

    b.child.kill().unwrap();
    b.child.wait().unwrap();
    let (_, offline) = watcher
        .until(|f| matches!(f, ServerFrame::Presence(_)))
        .await;
    let ServerFrame::Presence(offline) = offline else {
        unreachable!("until returns what it waited for");
    };
    assert_eq!((offline.user, offline.online), (alice.user(), false));
    tokio::time::timeout(WAIT, async {
        loop {
            let (_, body) = common::http(a.addr, "GET", "/v1/discovery", None, None).await;
            let ids: Vec<&str> = body["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n["id"].as_str().unwrap())
                .collect();
            if ids == ["node-a"] {
                return;
            }
            assert_eq!(ids, ["node-a", "node-b"]);
        }
    })
    .await
    .expect("discovery drops the killed node");
    drop(alice_on_b);
}
