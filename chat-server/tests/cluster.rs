//! Nodes of one cluster in one process: each test starts two nodes over one shared store and
//! one Redis (under a key prefix of its own) and checks what they share: the log-in limits,
//! the node registry, presence. Needs `CHAT_TEST_REDIS_URL`; without it each test prints one line and
//! passes.

mod common;

use std::sync::Arc;

use chat_core::protocol::{PresenceEvent, ServerFrame, Subscribe, Unsubscribe};
use chat_core::{Store, UserId};
use common::{TestServer, WAIT, http_from, test_config};
use serde_json::{Value, json};

const GUESSER: [u8; 4] = [127, 0, 0, 2];
const OWNER: [u8; 4] = [127, 0, 0, 3];

/// Deletes the keys under a test's Redis prefix when dropped.
struct Cleanup {
    url: String,
    prefix: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let Ok(mut conn) =
            redis::Client::open(self.url.as_str()).and_then(|client| client.get_connection())
        else {
            return;
        };
        let mut cursor = 0u64;
        loop {
            let Ok((next, keys)) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}*", self.prefix))
                .arg("COUNT")
                .arg(1000)
                .query::<(u64, Vec<String>)>(&mut conn)
            else {
                return;
            };
            if !keys.is_empty() {
                let _ = redis::cmd("DEL").arg(&keys).exec(&mut conn);
            }
            if next == 0 {
                return;
            }
            cursor = next;
        }
    }
}

/// A node configuration for a cluster on `CHAT_TEST_REDIS_URL` under a fresh prefix (whose
/// keys go when the returned guard is dropped), or `None` (after one line saying so) when
/// it is unset.
fn cluster_config(test: &str) -> Option<(chat_server::Config, Cleanup)> {
    let Ok(redis_url) = std::env::var("CHAT_TEST_REDIS_URL") else {
        eprintln!("skipped {test}: CHAT_TEST_REDIS_URL is unset");
        return None;
    };
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
    Some((
        config,
        Cleanup {
            url: redis_url,
            prefix,
        },
    ))
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
