//! A 50 MiB attachment goes up and comes back down without the process' peak memory growing
//! anywhere near the blob's size: both the node and this test client stream.
//!
//! Alone in its own test binary, so no other test shares the process whose peak resident
//! set size (`VmHWM`) it measures.

mod common;

use common::{Framing, TestServer, download, peak_rss, test_config, upload};
use serde_json::json;

const MIB: u64 = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_mib_round_trip_keeps_memory_flat() {
    let blobs = tempfile::tempdir().unwrap();
    let config = chat_server::Config {
        blob_dir: blobs.path().to_path_buf(),
        ..test_config()
    };
    let server = TestServer::start(config).await;
    let alice = server.account("alice").await;
    let bob = server.account("bob").await;
    let (status, body) = server
        .http(
            "POST",
            "/v1/conversations/direct",
            Some(&alice.token),
            Some(json!({"user_id": bob.user()})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let path = format!("/v1/attachments?conversation={}", body["id"]);

    // Warm up every code path once, so the measurement sees only what the size adds.
    let (status, body) = upload(
        server.addr,
        &path,
        &alice.token,
        Framing::Length(MIB),
        MIB,
        7,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let warm = body["id"].as_str().unwrap().to_owned();
    let got = download(
        server.addr,
        "GET",
        &format!("/v1/attachments/{warm}"),
        &bob.token,
        7,
    )
    .await;
    assert!(got.matches);

    let before = peak_rss();
    let size = 50 * MIB;
    let (status, body) = upload(
        server.addr,
        &path,
        &alice.token,
        Framing::Length(size),
        size,
        42,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    let got = download(
        server.addr,
        "GET",
        &format!("/v1/attachments/{id}"),
        &bob.token,
        42,
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.received, size);
    assert!(got.matches, "the downloaded bytes are the uploaded ones");
    let growth = peak_rss().saturating_sub(before);
    eprintln!("peak RSS grew by {} KiB", growth / 1024);
    assert!(
        growth < 20 * MIB,
        "peak RSS grew by {} KiB for a {} KiB blob",
        growth / 1024,
        size / 1024
    );
    server.shutdown().await;
}
