//! Per-account upload quotas over real sockets: a byte budget refused up front (declared
//! length) or cut mid-stream (chunked) without leaving a partial blob, and a cap on uploads
//! in progress at once.

mod common;

use std::time::Duration;

use common::{Account, Framing, TestServer, WAIT, files_under, test_config, upload};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const MIB: u64 = 1024 * 1024;

async fn conversation(server: &TestServer, a: &Account, b: &Account) -> String {
    let (status, body) = server
        .http(
            "POST",
            "/v1/conversations/direct",
            Some(&a.token),
            Some(json!({"user_id": b.user()})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    format!("/v1/attachments?conversation={}", body["id"])
}

#[tokio::test]
async fn an_account_over_its_byte_budget_is_refused_and_nothing_partial_is_kept() {
    let blobs = tempfile::tempdir().unwrap();
    let server = TestServer::start(chat_server::Config {
        blob_dir: blobs.path().join("blobs"),
        upload_burst_bytes_per_account: 2 * MIB,
        upload_bytes_per_account_per_day: 1,
        ..test_config()
    })
    .await;
    let alice = server.account("alice").await;
    let bob = server.account("bob").await;
    let path = conversation(&server, &alice, &bob).await;
    let size = 3 * MIB / 2;
    let (status, body) = upload(
        server.addr,
        &path,
        &alice.token,
        Framing::Length(size),
        size,
        1,
    )
    .await;
    assert_eq!(status, 201, "{body}");

    // Declared over what is left: refused before a byte is stored.
    let (status, body) = upload(
        server.addr,
        &path,
        &alice.token,
        Framing::Length(MIB),
        MIB,
        2,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("rate_limited")),
        "{body}"
    );
    // Undeclared: cut when the budget runs out mid-stream.
    let (status, body) = upload(server.addr, &path, &alice.token, Framing::Chunked, MIB, 3).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("rate_limited")),
        "{body}"
    );
    let files = files_under(&blobs.path().join("blobs"));
    assert_eq!(files.len(), 1, "only the first upload is kept: {files:?}");
    assert!(files.iter().all(|f| !f.ends_with(".tmp")), "{files:?}");

    // Other accounts have their own budget.
    let (status, body) = upload(server.addr, &path, &bob.token, Framing::Chunked, MIB, 4).await;
    assert_eq!(status, 201, "{body}");
    server.shutdown().await;
}

#[tokio::test]
async fn uploads_in_progress_per_account_are_capped() {
    let blobs = tempfile::tempdir().unwrap();
    let server = TestServer::start(chat_server::Config {
        blob_dir: blobs.path().join("blobs"),
        concurrent_uploads_per_account: 1,
        ..test_config()
    })
    .await;
    let alice = server.account("alice").await;
    let bob = server.account("bob").await;
    let path = conversation(&server, &alice, &bob).await;
    // An upload that stays open: the head and one chunk, then nothing.
    let mut stalled = TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n",
        server.addr, alice.token
    );
    stalled.write_all(head.as_bytes()).await.unwrap();
    // Once the stalled upload holds its place, another one of alice's is refused.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) =
            upload(server.addr, &path, &alice.token, Framing::Length(10), 10, 5).await;
        if status == 429 {
            assert_eq!(body["message"], "too many uploads at once");
            break;
        }
        assert_eq!(status, 201, "{body}");
        assert!(tokio::time::Instant::now() < deadline, "never refused");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, body) = upload(server.addr, &path, &bob.token, Framing::Length(10), 10, 6).await;
    assert_eq!(status, 201, "other accounts upload meanwhile: {body}");
    // The place comes back when the stalled upload ends.
    drop(stalled);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, _) =
            upload(server.addr, &path, &alice.token, Framing::Length(10), 10, 7).await;
        if status == 201 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the place never came back"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.shutdown().await;
}
