//! Log-in limits over real sockets: a guesser cannot lock the owner out. Clients bind to
//! different loopback addresses (127.0.0.0/8) so the node sees them as different sources.

mod common;

use common::{TestServer, WAIT, http_from, test_config};
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

async fn register_alice(server: &TestServer) {
    let (status, body) = server
        .http(
            "POST",
            "/v1/register",
            None,
            Some(json!({"username": "alice", "password": "correct horse"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

/// A guesser at another address runs out of failures and is refused unchecked; the owner's
/// right password still logs in. (Before, the per-account limit counted every attempt and
/// the owner got `rate_limited` too.)
#[tokio::test]
async fn owner_logs_in_while_a_guesser_hammers_from_another_address() {
    let server = TestServer::start(chat_server::Config {
        auth_failures_per_address_account: 3,
        auth_failure_refill_ms: 3_600_000,
        ..test_config()
    })
    .await;
    register_alice(&server).await;
    let mut answers = Vec::new();
    for _ in 0..20 {
        let (status, body) = login(&server, GUESSER, "wrong horse").await;
        answers.push((status, body["error"].as_str().unwrap_or("").to_owned()));
    }
    let bad = (401, "bad_credentials".to_owned());
    let limited = (429, "rate_limited".to_owned());
    assert!(answers[..3].iter().all(|a| *a == bad), "{answers:?}");
    assert!(answers[3..].iter().all(|a| *a == limited), "{answers:?}");
    // The guesser's right guess is refused too: beyond the budget nothing is checked.
    assert_eq!(login(&server, GUESSER, "correct horse").await.0, 429);
    for _ in 0..3 {
        let (status, body) = login(&server, OWNER, "correct horse").await;
        assert_eq!(status, 200, "{body}");
    }
    // An unknown username gets the same answers as a known one.
    let unknown = |from| {
        http_from(
            from,
            server.addr,
            "POST",
            "/v1/login",
            None,
            Some(json!({"username": "nobody", "password": "wrong horse"})),
        )
    };
    let shapes: Vec<u16> = futures::future::join_all((0..4).map(|_| unknown(GUESSER)))
        .await
        .into_iter()
        .map(|(status, _)| status)
        .collect();
    assert_eq!(shapes.iter().filter(|s| **s == 401).count(), 3);
    assert_eq!(shapes.iter().filter(|s| **s == 429).count(), 1);
    server.shutdown().await;
}

/// A guesser at the owner's own address (the same NAT, say) exhausts that address's budget
/// for the account: the owner there is refused like the guesser, but only until the budget
/// refills. Each refill lets one password through to be checked, and the owner's succeeds.
#[tokio::test]
async fn a_guesser_at_the_same_address_only_delays_the_owner() {
    let server = TestServer::start(chat_server::Config {
        auth_failures_per_address_account: 3,
        auth_failure_refill_ms: 300,
        ..test_config()
    })
    .await;
    register_alice(&server).await;
    let shared = [127, 0, 0, 4];
    let mut limited = false;
    for _ in 0..10 {
        let (status, _) = login(&server, shared, "wrong horse").await;
        limited |= status == 429;
    }
    assert!(limited, "the guesser ran out of failures");
    let (status, body) = login(&server, shared, "correct horse").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("rate_limited")),
        "the owner behind the same address waits like the guesser"
    );
    // Once a failure is given back, the owner's right password is checked and succeeds.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = login(&server, shared, "correct horse").await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 429, "{body}");
        assert!(tokio::time::Instant::now() < deadline, "owner never got in");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    server.shutdown().await;
}

/// Guessing spread over many addresses exhausts the per-account backstop: a new address
/// then waits, but an address the owner has logged in from before is still checked.
#[tokio::test]
async fn the_backstop_still_checks_addresses_the_owner_used_before() {
    let server = TestServer::start(chat_server::Config {
        auth_burst_per_account: 10,
        auth_account_refill_ms: 3_600_000,
        auth_failures_per_address_account: 2,
        auth_failure_refill_ms: 3_600_000,
        ..test_config()
    })
    .await;
    register_alice(&server).await;
    assert_eq!(login(&server, OWNER, "correct horse").await.0, 200);
    for last in 10..15 {
        for _ in 0..2 {
            assert_eq!(
                login(&server, [127, 0, 0, last], "wrong horse").await.0,
                401
            );
        }
    }
    assert_eq!(
        login(&server, [127, 0, 0, 20], "correct horse").await.0,
        429
    );
    let (status, body) = login(&server, OWNER, "correct horse").await;
    assert_eq!(status, 200, "{body}");
    server.shutdown().await;
}
