//! One conformance suite for [`BlobStore`], run against every implementation: the filesystem
//! store, and the S3 store against a real S3-compatible server (`CHAT_TEST_S3_URL`, e.g.
//! `http://127.0.0.1:9000`; .ci/run starts moto's server there). Without that variable each
//! S3 test says it is skipped (a failure under `CHAT_TEST_REQUIRE_SERVICES=1`, as in CI).
//!
//! Then a cluster's promise: an attachment uploaded through one node downloads through
//! another (two nodes over one store and one bucket).

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chat_core::{AttachmentId, BlobError, BlobStore, ByteStream};
use chat_server::{BlobStoreKind, S3BlobStore, S3Config};
use common::{Framing, TestServer, download, test_config, upload};
use futures::StreamExt;
use serde_json::json;
use tokio::sync::mpsc;

const S3_VAR: &str = "CHAT_TEST_S3_URL";
/// The bucket the tests use (created if missing).
const BUCKET: &str = "chat-test";
/// The smallest part size S3 allows, so multipart uploads stay small in tests.
const PART: usize = 5 * 1024 * 1024;
const WAIT: Duration = Duration::from_secs(60);

// ---- the suite ----------------------------------------------------------------------------

fn stream(parts: Vec<Result<Bytes, BlobError>>) -> ByteStream {
    Box::pin(futures::stream::iter(parts))
}

fn bytes(len: usize, seed: u8) -> Bytes {
    Bytes::from(
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect::<Vec<_>>(),
    )
}

fn id(n: u8) -> AttachmentId {
    AttachmentId::from_bytes([n; 16])
}

async fn read_all(store: &dyn BlobStore, id: AttachmentId) -> Option<Vec<u8>> {
    let (size, mut body) = store.get(id).await.expect("get")?;
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        out.extend_from_slice(&chunk.expect("chunk"));
    }
    assert_eq!(out.len() as u64, size, "the size matches the body");
    Some(out)
}

/// Small and large blobs (one request, and several parts for S3) round-trip; delete says
/// whether there was something to delete.
async fn round_trip(store: &dyn BlobStore) {
    for (n, len) in [(1u8, 1000usize), (2, 2 * PART + 777)] {
        let id = id(n);
        assert!(store.get(id).await.expect("get").is_none());
        assert_eq!(store.size(id).await.expect("size"), None);
        let data = bytes(len, n);
        // Uneven chunks, as a socket delivers them.
        let chunks: Vec<_> = data
            .chunks(300_001)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let stored = store.put(id, stream(chunks), 64 * 1024 * 1024).await;
        assert_eq!(stored.expect("put"), len as u64);
        assert_eq!(store.size(id).await.expect("size"), Some(len as u64));
        assert_eq!(read_all(store, id).await.as_deref(), Some(&data[..]));
        assert!(store.delete(id).await.expect("delete"));
        assert!(!store.delete(id).await.expect("delete again"));
        assert!(store.get(id).await.expect("get").is_none());
    }
    let empty = id(3);
    assert_eq!(store.put(empty, stream(vec![]), 10).await.expect("put"), 0);
    assert_eq!(read_all(store, empty).await, Some(Vec::new()));
}

/// A blob over the limit, or a stream that fails, leaves nothing under the ID and nothing to
/// collect, also past the first part.
async fn failed_uploads_leave_nothing(store: &dyn BlobStore) {
    let id = id(4);
    let big = vec![Ok(bytes(PART, 1)), Ok(bytes(PART, 2)), Ok(bytes(10, 3))];
    let limit = (2 * PART) as u64;
    match store.put(id, stream(big), limit).await {
        Err(BlobError::TooLarge { limit: l }) => assert_eq!(l, limit),
        other => panic!("expected too large, got {other:?}"),
    }
    let broken = vec![
        Ok(bytes(PART, 4)),
        Ok(bytes(100, 5)),
        Err(BlobError::Interrupted("the client went away".into())),
    ];
    let err = store.put(id, stream(broken), u64::MAX).await.unwrap_err();
    assert!(matches!(err, BlobError::Interrupted(_)), "{err:?}");
    assert_eq!(store.size(id).await.expect("size"), None);
    assert!(store.get(id).await.expect("get").is_none());
    let left = store
        .collect_garbage(Duration::ZERO)
        .await
        .expect("collect");
    assert_eq!(left, 0, "a failed upload cleans up after itself");
}

/// An upload in flight: fed through a channel of one, so when the third chunk is taken the
/// store has finished with the first (a part of `PART` bytes: a multipart upload on S3).
async fn in_flight(
    store: Arc<dyn BlobStore>,
    id: AttachmentId,
) -> (
    mpsc::Sender<Result<Bytes, BlobError>>,
    tokio::task::JoinHandle<Result<u64, BlobError>>,
) {
    let (tx, rx) = mpsc::channel(1);
    let body: ByteStream = Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    }));
    let task = tokio::spawn(async move { store.put(id, body, u64::MAX).await });
    for chunk in [bytes(PART, 6), bytes(1, 7), bytes(1, 8)] {
        tokio::time::timeout(WAIT, tx.send(Ok(chunk)))
            .await
            .expect("the store takes the chunk")
            .expect("send");
    }
    (tx, task)
}

/// The collector leaves uploads in flight younger than its bound alone (on a shared store
/// they may be another node's); one it does take (a bound of zero) fails rather than leave a
/// partial blob under its ID.
async fn collection_spares_uploads_in_flight(store: Arc<dyn BlobStore>) {
    let (young, old) = (id(5), id(6));
    let (tx, task) = in_flight(store.clone(), young).await;
    let removed = store
        .collect_garbage(Duration::from_secs(3600))
        .await
        .expect("collect");
    assert_eq!(removed, 0, "an upload in flight is not garbage");
    drop(tx);
    let stored = tokio::time::timeout(WAIT, task).await.expect("in time");
    assert_eq!(stored.expect("task").expect("put"), PART as u64 + 2);
    assert_eq!(
        store.size(young).await.expect("size"),
        Some(PART as u64 + 2)
    );

    let (tx, task) = in_flight(store.clone(), old).await;
    let removed = store
        .collect_garbage(Duration::ZERO)
        .await
        .expect("collect");
    assert_eq!(removed, 1, "the upload's leftovers are collected");
    tx.send(Ok(bytes(10, 9))).await.expect("send");
    drop(tx);
    let stored = tokio::time::timeout(WAIT, task).await.expect("in time");
    assert!(stored.expect("task").is_err(), "a collected upload fails");
    assert_eq!(store.size(old).await.expect("size"), None);
    assert_eq!(
        store
            .collect_garbage(Duration::ZERO)
            .await
            .expect("collect"),
        0
    );
}

/// A dropped upload task (the client went away mid-upload) leaves nothing behind once its
/// clean-up ran (S3's abort runs off the dropped task, so it is waited for).
async fn dropped_uploads_are_cleaned_up(store: Arc<dyn BlobStore>, leftovers: &Leftovers) {
    let (_tx, task) = in_flight(store.clone(), id(7)).await;
    assert_eq!(leftovers().await, 1, "the upload is in flight");
    task.abort();
    let _ = task.await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while leftovers().await != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dropped upload was not cleaned up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(store.size(id(7)).await.expect("size"), None);
}

/// Counts an implementation's unfinished uploads (in flight or left over) without removing
/// them.
type Leftovers = Box<dyn Fn() -> futures::future::BoxFuture<'static, u64> + Send + Sync>;

/// One implementation under test.
struct Impl {
    store: Arc<dyn BlobStore>,
    leftovers: Leftovers,
    _dir: Option<tempfile::TempDir>,
}

macro_rules! conformance {
    ($make:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn round_trip() {
            let Some(it) = $make.await else {
                return;
            };
            super::round_trip(&*it.store).await;
            assert_eq!((it.leftovers)().await, 0);
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn failed_uploads_leave_nothing() {
            let Some(it) = $make.await else {
                return;
            };
            super::failed_uploads_leave_nothing(&*it.store).await;
            assert_eq!((it.leftovers)().await, 0);
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn collection_spares_uploads_in_flight() {
            let Some(it) = $make.await else {
                return;
            };
            super::collection_spares_uploads_in_flight(it.store.clone()).await;
            assert_eq!((it.leftovers)().await, 0);
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn dropped_uploads_are_cleaned_up() {
            let Some(it) = $make.await else {
                return;
            };
            super::dropped_uploads_are_cleaned_up(it.store.clone(), &it.leftovers).await;
        }
    };
}

// ---- the implementations ------------------------------------------------------------------

mod fs {
    use super::*;

    async fn make() -> Option<Impl> {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = chat_server::FsBlobStore::open(dir.path().join("blobs")).expect("open");
        let probe = store.clone();
        Some(Impl {
            store: Arc::new(store),
            leftovers: Box::new(move || {
                let probe = probe.clone();
                Box::pin(async move { probe.unfinished_uploads().await.expect("count") })
            }),
            _dir: Some(dir),
        })
    }

    conformance!(make());
}

mod s3 {
    use super::*;

    async fn make() -> Option<Impl> {
        let config = s3_config().await?;
        let store = S3BlobStore::new(&config, PART).expect("store");
        let probe = store.clone();
        Some(Impl {
            store: Arc::new(store),
            leftovers: Box::new(move || {
                let probe = probe.clone();
                Box::pin(async move { probe.unfinished_uploads().await.expect("count") })
            }),
            _dir: None,
        })
    }

    conformance!(make());

    #[tokio::test]
    async fn open_checks_the_bucket() {
        let Some(config) = s3_config().await else {
            return;
        };
        S3BlobStore::open(&config)
            .await
            .expect("the bucket is there");
        let missing = S3Config {
            bucket: "no-such-bucket-here".into(),
            ..config
        };
        let err = S3BlobStore::open(&missing).await.unwrap_err();
        assert!(err.to_string().contains("no such bucket"), "{err}");
        assert!(!format!("{missing:?}").contains(SECRET));
    }
}

const SECRET: &str = "test-secret-key";

/// Settings for the test server, under a prefix of its own so parallel tests (and their
/// collectors) never see each other's objects; creates the bucket if needed.
async fn s3_config() -> Option<S3Config> {
    let endpoint = chat_storage::testing::service_url(S3_VAR)?;
    let mut salt = [0u8; 8];
    getrandom::fill(&mut salt).expect("random");
    let config = S3Config {
        endpoint: Some(endpoint),
        bucket: BUCKET.into(),
        prefix: Some(format!("test-{}/", hex::encode(salt))),
        access_key_id: Some("test-access-key".into()),
        secret_access_key: Some(SECRET.to_owned().into()),
        ..S3Config::default()
    };
    create_bucket(&config).await;
    Some(config)
}

/// `CreateBucket`, signed, over a plain connection; "already yours" counts as done.
async fn create_bucket(config: &S3Config) {
    use rusty_s3::S3Action as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let endpoint: url::Url = config.endpoint().parse().expect("endpoint");
    let bucket = rusty_s3::Bucket::new(
        endpoint,
        rusty_s3::UrlStyle::Path,
        config.bucket.clone(),
        config.region().to_owned(),
    )
    .expect("bucket");
    let credentials = rusty_s3::Credentials::new("test-access-key", SECRET);
    let url =
        rusty_s3::actions::CreateBucket::new(&bucket, &credentials).sign(Duration::from_secs(60));
    let host = url.host_str().expect("host");
    let port = url.port_or_known_default().expect("port");
    let mut tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .expect("the S3 server listens");
    let path = format!("{}?{}", url.path(), url.query().unwrap_or(""));
    let request = format!(
        "PUT {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer).await.expect("read");
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 200") || answer.contains("BucketAlreadyOwnedByYou"),
        "create bucket: {answer}"
    );
}

// ---- across nodes -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attachment_uploaded_through_one_node_downloads_through_another() {
    let Some(s3) = s3_config().await else {
        return;
    };
    let store: Arc<dyn chat_core::Store> = Arc::new(chat_storage::MemoryStore::new());
    let config = chat_server::Config {
        blob_store: BlobStoreKind::S3,
        s3,
        ..test_config()
    };
    let one = TestServer::with_store(config.clone(), store.clone()).await;
    let two = TestServer::with_store(config, store).await;
    let alice = one.account("alice").await;
    let bob = two.account("bob").await;
    let (status, body) = one
        .http(
            "POST",
            "/v1/conversations/direct",
            Some(&alice.token),
            Some(json!({"user_id": bob.user()})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let conversation = body["id"].as_u64().expect("id");

    // Through node one, large enough to be a multipart upload.
    let size = 11 * 1024 * 1024 + 5;
    let path = format!("/v1/attachments?conversation={conversation}");
    let (status, body) = upload(
        one.addr,
        &path,
        &alice.token,
        Framing::Length(size),
        size,
        3,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().expect("id").to_owned();

    // Through node two, byte for byte.
    let got = download(
        two.addr,
        "GET",
        &format!("/v1/attachments/{id}"),
        &bob.token,
        3,
    )
    .await;
    assert_eq!(got.status, 200, "{:?}", got.json);
    assert_eq!(got.content_length, Some(size));
    assert_eq!(got.received, size);
    assert!(got.matches, "the bytes node one stored");
    let head = download(
        two.addr,
        "HEAD",
        &format!("/v1/attachments/{id}"),
        &bob.token,
        3,
    )
    .await;
    assert_eq!(head.content_length, Some(size));
}
