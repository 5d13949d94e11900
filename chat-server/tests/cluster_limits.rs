//! The log-in limits of a cluster: two nodes sharing one store and one Redis enforce one
//! wrong-password budget between them, however a guesser spreads the attempts. Needs
//! `CHAT_TEST_REDIS_URL`; without it the test prints one line and passes.

mod common;

use std::sync::Arc;

use chat_core::Store;
use common::{TestServer, http_from, test_config};
use serde_json::{Value, json};

const GUESSER: [u8; 4] = [127, 0, 0, 2];
const OWNER: [u8; 4] = [127, 0, 0, 3];

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
    let Ok(redis_url) = std::env::var("CHAT_TEST_REDIS_URL") else {
        eprintln!("skipped: CHAT_TEST_REDIS_URL is unset");
        return;
    };
    let mut salt = [0u8; 8];
    getrandom::fill(&mut salt).unwrap();
    // Both nodes share one store (in process) and one Redis under this test's own prefix.
    // The store URL only has to say "shared" for the configuration check: `with_store` uses
    // the store it is given.
    let config = chat_server::Config {
        store: "postgres://in-process/shared".into(),
        redis_url: Some(redis_url.into()),
        redis_prefix: format!("test:cluster-limits:{}:", hex::encode(salt)),
        auth_failures_per_address_account: 3,
        auth_failure_refill_ms: 3_600_000,
        ..test_config()
    };
    let store: Arc<dyn Store> = Arc::new(chat_storage::MemoryStore::new());
    let a = TestServer::with_store(config.clone(), store.clone()).await;
    let b = TestServer::with_store(config, store).await;
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
