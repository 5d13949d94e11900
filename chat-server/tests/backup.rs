//! `chat-server backup`, run as an operator would: the binary copies the store and blobs of
//! a node that keeps running and writing, and a node started on the copy serves everything
//! acknowledged before it (accounts, messages, attachments). Stores it cannot copy
//! (PostgreSQL, memory) and a destination in use are refused, saying what to do.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use chat_core::protocol::ServerFrame;
use common::{Framing, TestServer, backlog, direct, download, recipients, send_frame, upload};

/// The binary with `args`, in `dir`.
fn chat_server(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .args(args)
        .env_remove("CHAT_LOG")
        .env_remove("CHAT_STORE")
        .env_remove("CHAT_CONFIG")
        .env_remove("CHAT_BLOB_DIR")
        .current_dir(dir)
        .output()
        .expect("chat-server ran")
}

fn output(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn config(store: &str) -> chat_server::Config {
    chat_server::Config {
        store: store.into(),
        ..common::test_config()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_of_a_running_node_restores_everything() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}/data/chat.db", dir.path().display());
    let node = TestServer::start(config(&store)).await;
    let alice = node.account("alice").await;
    let bob = node.account("bob").await;
    let conversation = direct(&node, &alice, &bob).await;

    // A message, acknowledged (so durable), waiting in bob's inbox.
    let mut sender = node.online(&alice).await;
    let to = recipients(&node, &alice, conversation, b"header").await;
    sender
        .send(send_frame(
            1,
            conversation,
            1,
            b"before the backup",
            to.clone(),
        ))
        .await;
    assert!(matches!(sender.recv().await, ServerFrame::Sent(s) if s.req == 1));
    // An attachment, in the blob directory next to the store (data/blobs).
    let path = format!("/v1/attachments?conversation={conversation}");
    let size = 300_000;
    let (status, body) = upload(
        node.addr,
        &path,
        &alice.token,
        Framing::Length(size),
        size,
        7,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let attachment = body["id"].as_str().unwrap().to_owned();
    assert!(
        !common::files_under(&dir.path().join("data/blobs")).is_empty(),
        "blobs live next to the store"
    );

    // The backup, while the node runs and keeps writing.
    let copy = dir.path().join("backup");
    let copy_arg = copy.to_str().unwrap().to_owned();
    let writing = tokio::spawn(async move {
        for i in 2..50u32 {
            sender
                .send(send_frame(i, conversation, i as u8, b"during", to.clone()))
                .await;
            assert!(matches!(sender.recv().await, ServerFrame::Sent(_)));
        }
    });
    let store_arg = store.clone();
    let dir_path = dir.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        chat_server(&dir_path, &["--store", &store_arg, "backup", &copy_arg])
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", output(&out));
    assert!(output(&out).contains("backup written"), "{}", output(&out));
    writing.await.unwrap();
    node.shutdown().await;
    assert!(copy.join("chat.db").is_file());
    assert!(
        !copy.join("chat.db-wal").exists(),
        "a complete database on its own"
    );

    // A node on the copy: the same accounts (a password log-in works), bob's device and
    // token with the message in its inbox, the attachment byte for byte.
    let restored_store = format!("sqlite://{}", copy.join("chat.db").display());
    let restored = TestServer::start(config(&restored_store)).await;
    restored.login("alice").await;
    // Bob's device of before, with its token: its inbox came back.
    let mut reader = restored.connect(&bob, 0).await;
    let got = backlog(&mut reader).await;
    assert_eq!(
        got.first().map(|(_, body)| &body[..]),
        Some(&b"before the backup"[..]),
        "{got:?}"
    );
    let fetched = download(
        restored.addr,
        "GET",
        &format!("/v1/attachments/{attachment}"),
        &bob.token,
        7,
    )
    .await;
    assert_eq!(fetched.status, 200);
    assert_eq!(fetched.received, size);
    assert!(fetched.matches, "the blob came back intact");
    restored.shutdown().await;
}

#[test]
fn stores_it_cannot_copy_and_used_destinations_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    // PostgreSQL: refused before any connection, pointing at pg_dump, password hidden.
    let out = chat_server(
        dir.path(),
        &[
            "--store",
            "postgres://chat:hunter2@127.0.0.1:1/chat",
            "backup",
            "copy",
        ],
    );
    assert!(!out.status.success());
    let text = output(&out);
    assert!(
        text.contains("pg_dump") && !text.contains("hunter2"),
        "{text}"
    );
    // Memory: nothing to keep.
    let out = chat_server(dir.path(), &["--store", "memory:", "backup", "copy"]);
    assert!(!out.status.success());
    assert!(output(&out).contains("memory:"), "{}", output(&out));
    // A destination with something in it.
    std::fs::create_dir(dir.path().join("used")).unwrap();
    std::fs::write(dir.path().join("used/keep"), b"x").unwrap();
    let out = chat_server(
        dir.path(),
        &["--store", "sqlite://data/chat.db", "backup", "used"],
    );
    assert!(!out.status.success());
    assert!(
        output(&out).contains("not an empty directory"),
        "{}",
        output(&out)
    );
    // A store file that does not exist is not created by a backup.
    let out = chat_server(
        dir.path(),
        &["--store", "sqlite://missing/chat.db", "backup", "copy"],
    );
    assert!(!out.status.success());
    assert!(!dir.path().join("missing/chat.db").exists());
}

/// Runs a PostgreSQL client tool with `args`; its output when it fails.
fn pg_tool(tool: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(tool)
        .args(args)
        .output()
        .map_err(|e| format!("{tool}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{tool}: {}", output(&out)))
    }
}

/// The URL of database `name` on the server of `admin` (same credentials and parameters).
fn database_url(admin: &str, name: &str) -> String {
    let (base, query) = match admin.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (admin, String::new()),
    };
    let (server, _) = base.rsplit_once('/').expect("a database in the URL");
    format!("{server}/{name}{query}")
}

/// The documented PostgreSQL recipe (docs/OPERATIONS.md, "Backup and restore"): `pg_dump
/// --format=custom` of a node's database while it runs, `pg_restore --no-owner` into an
/// empty database, and a node started on that serves what was acknowledged before.
#[tokio::test(flavor = "multi_thread")]
async fn a_pg_dump_of_a_postgres_node_restores_everything() {
    let Some(admin) = chat_storage::testing::service_url("CHAT_TEST_POSTGRES_URL") else {
        return;
    };
    if pg_tool("pg_dump", &["--version"]).is_err() {
        chat_storage::testing::skipped("pg_dump is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tag = format!(
        "{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    let (live, restored_db) = (format!("chat_dump_{tag}"), format!("chat_restore_{tag}"));
    for name in [&live, &restored_db] {
        pg_tool("psql", &[&admin, "-qc", &format!("CREATE DATABASE {name}")]).unwrap();
    }
    let (live_url, restored_url) = (
        database_url(&admin, &live),
        database_url(&admin, &restored_db),
    );
    let with_blobs = |store: &str| chat_server::Config {
        blob_dir: dir.path().join("blobs"),
        ..config(store)
    };

    let node = TestServer::start(with_blobs(&live_url)).await;
    let alice = node.account("alice").await;
    let bob = node.account("bob").await;
    let conversation = direct(&node, &alice, &bob).await;
    let mut sender = node.online(&alice).await;
    let to = recipients(&node, &alice, conversation, b"header").await;
    sender
        .send(send_frame(1, conversation, 1, b"before the dump", to))
        .await;
    assert!(matches!(sender.recv().await, ServerFrame::Sent(s) if s.req == 1));

    let dump = dir.path().join("chat.dump");
    let dump_arg = dump.to_str().unwrap().to_owned();
    let url = live_url.clone();
    tokio::task::spawn_blocking(move || {
        pg_tool(
            "pg_dump",
            &["--format=custom", "--file", &dump_arg, "--dbname", &url],
        )
    })
    .await
    .unwrap()
    .unwrap();
    node.shutdown().await;
    let dump_arg = dump.to_str().unwrap().to_owned();
    pg_tool(
        "pg_restore",
        &["--no-owner", "--dbname", &restored_url, &dump_arg],
    )
    .unwrap();

    let restored = TestServer::start(with_blobs(&restored_url)).await;
    restored.login("alice").await;
    let mut reader = restored.connect(&bob, 0).await;
    let got = backlog(&mut reader).await;
    assert_eq!(
        got.first().map(|(_, body)| &body[..]),
        Some(&b"before the dump"[..]),
        "{got:?}"
    );
    drop(reader);
    restored.shutdown().await;
    for name in [&live, &restored_db] {
        let _ = pg_tool(
            "psql",
            &[
                &admin,
                "-qc",
                &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            ],
        );
    }
}
