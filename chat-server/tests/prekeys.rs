//! The key directory over real sockets: strict key uploads, and the per-target budget of
//! one-time prekeys that keeps many requesters from draining a user's pool.

mod common;

use std::sync::OnceLock;

use chat_crypto::Account as Keys;
use common::{Account, TestServer, test_config};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::{Value, json};

/// The process-wide metrics recorder (one per test binary).
fn recorder() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .install_recorder()
                .expect("recorder")
        })
        .clone()
}

/// `PUT /v1/keys` for a device with fresh keys, and `count` one-time prekeys uploaded.
async fn publish(server: &TestServer, account: &Account, seed: u64, count: usize) -> Value {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut keys = Keys::new(&mut rng);
    let spk = keys.signed_prekey().unwrap();
    let identity = chat_server::identity_blob(
        &keys.identity().public(),
        &keys.identity().binding_signature(),
    );
    let body = json!({
        "identity": hex::encode(&identity),
        "signed_prekey": {
            "id": spk.id,
            "public": hex::encode(spk.key),
            "signature": hex::encode(spk.signature),
        },
    });
    let (status, answer) = server
        .http("PUT", "/v1/keys", Some(&account.token), Some(body.clone()))
        .await;
    assert_eq!(status, 204, "{answer}");
    let one_time: Vec<Value> = keys
        .generate_one_time_prekeys(&mut rng, count)
        .iter()
        .map(|k| json!({"id": k.id, "public": hex::encode(k.key)}))
        .collect();
    let (status, answer) = server
        .http(
            "POST",
            "/v1/keys/one-time",
            Some(&account.token),
            Some(json!({"keys": one_time})),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["count"], count);
    body
}

#[tokio::test]
async fn key_uploads_refuse_unknown_fields() {
    let server = TestServer::start(test_config()).await;
    let alice = server.account("alice").await;
    let mut body = publish(&server, &alice, 1, 0).await;
    body["extra"] = json!(1);
    let (status, answer) = server
        .http("PUT", "/v1/keys", Some(&alice.token), Some(body.clone()))
        .await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("invalid_request")),
        "{answer}"
    );
    body.as_object_mut().unwrap().remove("extra");
    body["signed_prekey"]["extra"] = json!(1);
    let (status, _) = server
        .http("PUT", "/v1/keys", Some(&alice.token), Some(body))
        .await;
    assert_eq!(status, 400);
    let key = json!({"id": 1, "public": hex::encode([5u8; 32]), "extra": true});
    let (status, _) = server
        .http(
            "POST",
            "/v1/keys/one-time",
            Some(&alice.token),
            Some(json!({"keys": [key]})),
        )
        .await;
    assert_eq!(status, 400);
    server.shutdown().await;
}

#[tokio::test]
async fn many_requesters_cannot_drain_a_prekey_pool() {
    let metrics = recorder();
    let mut server = chat_server::Server::bind(chat_server::Config {
        prekey_claim_burst_per_user: 3,
        prekey_claims_per_user_per_hour: 1,
        ..test_config()
    })
    .await
    .expect("bind");
    server.set_metrics(move || metrics.render());
    let server = TestServer::run(server);
    let victim = server.account("victim").await;
    publish(&server, &victim, 7, 10).await;
    let path = format!("/v1/users/{}/bundles", victim.user());
    let mut with_one_time = 0;
    for i in 0..8 {
        let requester = server.account(&format!("requester{i}")).await;
        let (status, body) = server
            .http("GET", &path, Some(&requester.token), None)
            .await;
        assert_eq!(status, 200, "{body}");
        let bundles = body["bundles"].as_array().unwrap();
        assert_eq!(bundles.len(), 1);
        // Past the budget the bundle still starts a session: the signed prekey alone.
        assert!(bundles[0]["signed_prekey"]["public"].is_string());
        if bundles[0]
            .get("one_time_prekey")
            .is_some_and(|k| !k.is_null())
        {
            with_one_time += 1;
        }
    }
    assert_eq!(
        with_one_time, 3,
        "only the budget's worth of one-time prekeys went out"
    );
    let (status, body) = server
        .http("GET", "/v1/keys/count", Some(&victim.token), None)
        .await;
    assert_eq!((status, body["count"].as_u64()), (200, Some(7)));
    let (_, text) = common::raw_get(server.addr, "/metrics").await;
    assert!(
        text.lines()
            .any(|l| l.trim() == "chat_prekey_fallback_total 5"),
        "the fallback is counted:\n{text}"
    );
    server.shutdown().await;
}
