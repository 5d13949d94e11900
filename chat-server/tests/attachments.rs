//! Attachments over real sockets on 127.0.0.1: upload, download and HEAD for members only,
//! the size limit (up front and while streaming), and interrupted uploads leaving nothing.

mod common;

use common::{
    Account, Framing, TestServer, download, files_under, test_config, upload, wait_until,
};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const MIB: u64 = 1024 * 1024;

struct Setup {
    server: TestServer,
    blobs: tempfile::TempDir,
    alice: Account,
    bob: Account,
    carol: Account,
    conversation: u64,
}

/// A node with a fresh blob directory and `limit`; alice and bob share a conversation,
/// carol is in none.
async fn setup(limit: u64) -> Setup {
    let blobs = tempfile::tempdir().unwrap();
    let config = chat_server::Config {
        blob_dir: blobs.path().join("blobs"),
        max_attachment_bytes: limit,
        ..test_config()
    };
    let server = TestServer::start(config).await;
    let alice = server.account("alice").await;
    let bob = server.account("bob").await;
    let carol = server.account("carol").await;
    let (status, body) = server
        .http(
            "POST",
            "/v1/conversations/direct",
            Some(&alice.token),
            Some(json!({"user_id": bob.user()})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let conversation = body["id"].as_u64().unwrap();
    Setup {
        server,
        blobs,
        alice,
        bob,
        carol,
        conversation,
    }
}

#[tokio::test]
async fn members_upload_download_and_head_others_are_refused() {
    let s = setup(100 * MIB).await;
    let addr = s.server.addr;
    let path = format!("/v1/attachments?conversation={}", s.conversation);
    let size = 3 * MIB + 123;
    let (status, body) = upload(addr, &path, &s.alice.token, Framing::Length(size), size, 1).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["size"], size);
    let id = body["id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 32, "128 bits in hex");

    // Both members download it, byte for byte; HEAD gives the size.
    for account in [&s.alice, &s.bob] {
        let got = download(
            addr,
            "GET",
            &format!("/v1/attachments/{id}"),
            &account.token,
            1,
        )
        .await;
        assert_eq!(got.status, 200);
        assert_eq!(got.content_length, Some(size));
        assert_eq!(got.received, size);
        assert!(got.matches, "the downloaded bytes are the uploaded ones");
        let head = download(
            addr,
            "HEAD",
            &format!("/v1/attachments/{id}"),
            &account.token,
            1,
        )
        .await;
        assert_eq!(head.status, 200);
        assert_eq!(head.content_length, Some(size));
        assert_eq!(head.received, 0);
    }

    // A chunked upload (no Content-Length) works too.
    let (status, body) = upload(addr, &path, &s.bob.token, Framing::Chunked, 1000, 2).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["size"], 1000);

    // A non-member can neither download nor upload.
    let got = download(
        addr,
        "GET",
        &format!("/v1/attachments/{id}"),
        &s.carol.token,
        1,
    )
    .await;
    assert_eq!(got.status, 403);
    assert_eq!(got.json["error"], "not_member");
    let head = download(
        addr,
        "HEAD",
        &format!("/v1/attachments/{id}"),
        &s.carol.token,
        1,
    )
    .await;
    assert_eq!(head.status, 403);
    let (status, body) = upload(addr, &path, &s.carol.token, Framing::Length(10), 10, 3).await;
    assert_eq!(status, 403);
    assert_eq!(body["error"], "not_member");

    // Unknown and malformed IDs, and no token.
    let unknown = "00".repeat(16);
    let got = download(
        addr,
        "GET",
        &format!("/v1/attachments/{unknown}"),
        &s.alice.token,
        1,
    )
    .await;
    assert_eq!(got.status, 404);
    assert_eq!(got.json["error"], "not_found");
    let got = download(addr, "GET", "/v1/attachments/xyz", &s.alice.token, 1).await;
    assert_eq!(got.status, 400);
    let (status, _) = s
        .server
        .http("GET", &format!("/v1/attachments/{id}"), None, None)
        .await;
    assert_eq!(status, 401);
    let (status, body) = upload(
        addr,
        "/v1/attachments",
        &s.alice.token,
        Framing::Length(1),
        1,
        4,
    )
    .await;
    assert_eq!(status, 400, "the conversation is required: {body}");

    // Two blobs on disk, no temporary files.
    let files = files_under(&s.blobs.path().join("blobs"));
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(files.iter().all(|f| !f.ends_with(".tmp")), "{files:?}");
    s.server.shutdown().await;
}

#[tokio::test]
async fn oversize_uploads_are_refused_up_front_and_while_streaming() {
    let s = setup(MIB).await;
    let addr = s.server.addr;
    let path = format!("/v1/attachments?conversation={}", s.conversation);

    // Declared too large: refused before any body byte is read.
    let (status, body) = upload(addr, &path, &s.alice.token, Framing::Length(MIB + 1), 0, 1).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"], "payload_too_large");

    // Undeclared (chunked) and too large: refused once the limit is passed.
    let (status, body) = upload(addr, &path, &s.alice.token, Framing::Chunked, 2 * MIB, 1).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"], "payload_too_large");

    // Exactly the limit is fine.
    let (status, body) = upload(addr, &path, &s.alice.token, Framing::Length(MIB), MIB, 1).await;
    assert_eq!(status, 201, "{body}");

    let dir = s.blobs.path().join("blobs");
    wait_until("only the accepted blob on disk", || {
        files_under(&dir).len() == 1
    })
    .await;
    s.server.shutdown().await;
}

#[tokio::test]
async fn interrupted_upload_leaves_no_blob_and_no_temporary_file() {
    let s = setup(100 * MIB).await;
    let dir = s.blobs.path().join("blobs");
    let mut stream = TcpStream::connect(s.server.addr).await.unwrap();
    let head = format!(
        "POST /v1/attachments?conversation={} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\n\r\n",
        s.conversation,
        s.alice.token,
        8 * MIB
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut pattern = common::Pattern::new(9);
    for _ in 0..32 {
        stream
            .write_all(&pattern.next_chunk(64 * 1024))
            .await
            .unwrap();
    }
    stream.flush().await.unwrap();
    wait_until("the upload is being written", || {
        files_under(&dir).iter().any(|f| f.ends_with(".tmp"))
    })
    .await;

    // The client goes away midway.
    drop(stream);
    wait_until("the unfinished upload is removed", || {
        files_under(&dir).is_empty()
    })
    .await;

    // The node is fine and still takes uploads.
    let path = format!("/v1/attachments?conversation={}", s.conversation);
    let (status, body) = upload(s.server.addr, &path, &s.bob.token, Framing::Length(5), 5, 1).await;
    assert_eq!(status, 201, "{body}");
    s.server.shutdown().await;
}
