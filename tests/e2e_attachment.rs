//! A 20 MiB attachment round-trips end to end and its digest verifies; a blob changed on
//! the server is refused; neither the blob store nor the database holds the plaintext.

mod common;

use chat::client::{Content, Error};
use chat::crypto::Error as CryptoError;
use common::{TestServer, config, next_message, synced, user};

const SIZE: usize = 20 * 1024 * 1024;

fn files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_attachment_round_trips_and_tampering_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(&format!(
        "sqlite://{}",
        dir.path().join("server.db").display()
    ));
    cfg.blob_dir = dir.path().join("blobs");
    let server = TestServer::start(cfg).await;
    let (alice, mut a) = user(&server, "alice").await;
    let (bob, mut b) = user(&server, "bob").await;
    synced(&mut a).await;
    synced(&mut b).await;
    let chat = alice.open_direct(bob.user()).await.expect("open");

    let canary = b"attachment-canary-4be1d0";
    let mut file: Vec<u8> = (0..SIZE).map(|i| (i * 31 % 251) as u8).collect();
    file[SIZE / 2..SIZE / 2 + canary.len()].copy_from_slice(canary);
    let id = alice
        .conversation(chat)
        .send_attachment(&file, "application/octet-stream", Some("big.bin"))
        .await
        .expect("send");

    let m = next_message(&mut b, chat).await;
    assert_eq!(m.id, id);
    let Content::Attachment(pointer) = m.content else {
        panic!("expected an attachment");
    };
    assert_eq!(
        (pointer.size, pointer.name.as_deref()),
        (SIZE as u64, Some("big.bin"))
    );
    let got = bob.download_attachment(&pointer).await.expect("download");
    assert!(got == file, "the file round-trips");

    // Nothing on the server's disk holds the plaintext.
    for path in files(dir.path()) {
        // A file the store removed meanwhile (a WAL being checkpointed) holds nothing.
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        assert!(
            !bytes.windows(canary.len()).any(|w| w == canary),
            "plaintext in {}",
            path.display()
        );
    }

    // One flipped bit in the stored blob: refused before anything is decrypted.
    let blob = files(&dir.path().join("blobs"))
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("a blob");
    let mut bytes = std::fs::read(&blob).expect("read blob");
    bytes[1000] ^= 1;
    std::fs::write(&blob, bytes).expect("write blob");
    match bob.download_attachment(&pointer).await {
        Err(Error::Crypto(CryptoError::AttachmentDigest)) => {}
        other => panic!(
            "a tampered blob must be refused, got {:?}",
            other.map(|v| v.len())
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_stream_both_ways_and_a_tampered_one_leaves_nothing_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config("memory:");
    cfg.blob_dir = dir.path().join("blobs");
    let server = TestServer::start(cfg).await;
    let (alice, mut a) = user(&server, "alice").await;
    let (bob, mut b) = user(&server, "bob").await;
    synced(&mut a).await;
    synced(&mut b).await;
    let chat = alice.open_direct(bob.user()).await.expect("open");

    // Several chunks and a partial last one.
    let file: Vec<u8> = (0..3 * 1024 * 1024 + 12_345)
        .map(|i| (i * 7 % 253) as u8)
        .collect();
    let source = dir.path().join("photo.raw");
    std::fs::write(&source, &file).expect("write");
    let id = alice
        .conversation(chat)
        .send_file(&source, "image/x-raw")
        .await
        .expect("send file");
    let m = next_message(&mut b, chat).await;
    assert_eq!(m.id, id);
    let Content::Attachment(pointer) = m.content else {
        panic!("expected an attachment");
    };
    assert_eq!(pointer.name.as_deref(), Some("photo.raw"));
    let target = dir.path().join("received.raw");
    bob.download_file(&pointer, &target)
        .await
        .expect("download");
    assert!(std::fs::read(&target).expect("read") == file);

    let blob = files(&dir.path().join("blobs"))
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("a blob");
    let mut bytes = std::fs::read(&blob).expect("read blob");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x80;
    std::fs::write(&blob, bytes).expect("write blob");
    let again = dir.path().join("again.raw");
    match bob.download_file(&pointer, &again).await {
        Err(Error::Crypto(CryptoError::DecryptionFailed | CryptoError::AttachmentDigest)) => {}
        other => panic!("a tampered blob must be refused, got {other:?}"),
    }
    assert!(!again.exists());
    assert!(!dir.path().join("again.raw.part").exists());

    // A file that cannot be read is the app's error, named with its path, whether it
    // fails to open or fails part-way (a directory opens, then refuses to be read).
    for path in [dir.path().join("missing.raw"), dir.path().to_owned()] {
        match alice
            .conversation(chat)
            .send_file(&path, "image/x-raw")
            .await
        {
            Err(Error::Io { path: p, .. }) => assert_eq!(p, path),
            other => panic!("{path:?}: expected Error::Io, got {other:?}"),
        }
    }
}
