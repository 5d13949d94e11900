//! Discovery over real sockets on 127.0.0.1: a node recommends itself when alone, the
//! least-loaded live node (preferring the asked-for region) otherwise, and never a node whose
//! registration expired. Expiry is driven by explicit timestamps, not by waiting.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chat_core::{NodeId, NodeInfo, Timestamp};
use chat_server::Server;
use common::{TestServer, test_config};
use serde_json::Value;

fn wall_clock() -> Timestamp {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();
    Timestamp::from_millis(u64::try_from(ms).unwrap())
}

fn node(id: &str, region: &str, connections: u64, expires_at: Timestamp) -> NodeInfo {
    NodeInfo {
        id: NodeId::new(id).unwrap(),
        url: format!("http://{id}.example:8080"),
        region: Some(region.into()),
        connections,
        cpu_load: 0.0,
        expires_at,
    }
}

fn ids(body: &Value) -> Vec<&str> {
    body["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn a_lone_node_recommends_itself() {
    let config = chat_server::Config {
        node_id: Some("solo".into()),
        region: Some("eu".into()),
        ..test_config()
    };
    let server = TestServer::start(config).await;
    for path in [
        "/v1/discovery",
        "/v1/discovery?region=us",
        "/v1/discovery?region=",
    ] {
        let (status, body) = server.http("GET", path, None, None).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["recommended"]["id"], "solo");
        assert_eq!(
            body["recommended"]["url"],
            format!("http://{}", server.addr)
        );
        assert_eq!(body["recommended"]["region"], "eu");
        assert_eq!(body["recommended"]["connections"], 0);
        assert!(body["recommended"]["expires_at"].as_u64().unwrap() > wall_clock().as_millis());
        assert_eq!(ids(&body), ["solo"]);
    }
    let (status, body) = server.http("GET", "/v1/discovery?zone=x", None, None).await;
    assert_eq!(status, 400, "{body}");
    server.shutdown().await;
}

#[tokio::test]
async fn the_least_loaded_live_node_is_recommended_and_expired_ones_never() {
    let config = chat_server::Config {
        node_id: Some("self".into()),
        region: Some("eu".into()),
        public_url: Some("https://self.example".into()),
        ..test_config()
    };
    let server = Server::bind(config).await.unwrap();
    let registry = server.registry();
    let now = wall_clock();
    let hour = Duration::from_secs(3600);
    // Expired a millisecond ago: a node that stopped refreshing. Idle, so it would win.
    let dead = Timestamp::from_millis(now.as_millis() - 1);
    registry
        .register(node("dead", "eu", 0, dead))
        .await
        .unwrap();
    // Live for an hour: busier than this node (0 connections) in eu, idle in us.
    let later = now.saturating_add(hour);
    registry
        .register(node("busy-eu", "eu", 900, later))
        .await
        .unwrap();
    registry
        .register(node("idle-us", "us", 3, later))
        .await
        .unwrap();
    let server = TestServer::run(server);

    let (status, body) = server.http("GET", "/v1/discovery", None, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ids(&body), ["busy-eu", "idle-us", "self"], "dead is gone");
    assert_eq!(body["recommended"]["id"], "self", "fewest connections");
    assert_eq!(body["recommended"]["url"], "https://self.example");

    let (_, body) = server
        .http("GET", "/v1/discovery?region=us", None, None)
        .await;
    assert_eq!(body["recommended"]["id"], "idle-us", "the region first");
    assert_eq!(body["recommended"]["url"], "http://idle-us.example:8080");

    // idle-us stops refreshing: its registration now ends in the past, so it drops out.
    registry
        .register(node("idle-us", "us", 3, dead))
        .await
        .unwrap();
    let (_, body) = server
        .http("GET", "/v1/discovery?region=us", None, None)
        .await;
    assert_eq!(ids(&body), ["busy-eu", "self"]);
    assert_eq!(body["recommended"]["id"], "self");

    // A node that shuts down leaves the registry at once, not at its TTL.
    server.shutdown().await;
    let live = registry.live(wall_clock()).await.unwrap();
    let live: Vec<&str> = live.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(live, ["busy-eu"]);
}
