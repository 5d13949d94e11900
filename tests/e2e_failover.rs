//! A client that follows the cluster: two chat-server processes share one PostgreSQL
//! database (a fresh one for the test); both clients are given both nodes' addresses and
//! start on node 1. Node 1 is killed (SIGKILL) in the middle of a burst of sends: the
//! clients move to node 2 by themselves, resume from their cursors, send their outboxes
//! again with the same client keys, and every message is stored and delivered exactly once.
//!
//! No Redis: after the move both devices are on node 2, whose in-process bus delivers live.
//! Reads `CHAT_TEST_POSTGRES_URL`; without it the test says it is skipped (and fails under
//! `CHAT_TEST_REQUIRE_SERVICES=1`, as in CI).
//!
//! The nodes run in child processes: this test binary re-executes itself with
//! `CHAT_TEST_FAILOVER_NODE` set, which turns the `node_process` test into a server.

mod common;

use std::net::SocketAddr;
use std::process::Stdio;

use chat::client::{Client, Credentials, Nodes, Server, SqliteStore};
use chat_storage::testing::FreshPostgres;
use common::{PASSWORD, WAIT, config, http_get, next_message, synced};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const SENDS: usize = 60;
/// Sends made once node 1 is dead.
const LATE: usize = 10;
const NODE_ENV: &str = "CHAT_TEST_FAILOVER_NODE";

/// Not a test on its own: the body of a child process serving the store URL in `NODE_ENV`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_process() {
    let Ok(store) = std::env::var(NODE_ENV) else {
        return;
    };
    let mut cfg = config(&store);
    cfg.store_pool_size = 4;
    let server = chat::server::Server::bind(cfg).await.expect("bind");
    println!("LISTENING {}", server.local_addr());
    server
        .run_until(std::future::pending())
        .await
        .expect("serve");
}

async fn spawn_node(store: &str) -> (Child, SocketAddr) {
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "node_process", "--nocapture", "--test-threads=1"])
        .env(NODE_ENV, store)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn node");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let addr = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.expect("read") {
            // libtest may print "test node_process ... " on the same line first.
            if let Some((_, addr)) = line.split_once("LISTENING ") {
                return addr.parse().expect("address");
            }
        }
        panic!("the node exited before listening");
    })
    .await
    .expect("node started in time");
    // Keep draining its output so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_move_to_another_node_when_theirs_dies_and_lose_nothing() {
    if std::env::var(NODE_ENV).is_ok() {
        return;
    }
    let Some(db) = FreshPostgres::create("chat_failover").await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut node1, addr1) = spawn_node(&db.url()).await;
    let (_node2, addr2) = spawn_node(&db.url()).await;
    let (url1, url2) = (format!("http://{addr1}"), format!("http://{addr2}"));
    let alice_nodes = Nodes::new([&url1, &url2]).expect("nodes");

    let alice = Client::builder(&alice_nodes)
        .device_name("laptop")
        .register(&Credentials::new("alice", PASSWORD))
        .await
        .expect("alice");
    let bob = Client::builder(Nodes::new([&url1, &url2]).expect("nodes"))
        .store(SqliteStore::open(dir.path().join("bob.db")).expect("store"))
        .device_name("phone")
        .register(&Credentials::new("bob", PASSWORD))
        .await
        .expect("bob");
    let mut a = alice.events();
    let mut b = bob.events();
    synced(&mut a).await;
    synced(&mut b).await;
    assert_eq!(alice_nodes.current(), Server::parse(&url1).expect("url"));
    let chat = alice.open_direct(bob.user()).await.expect("open");
    let to_bob = alice.conversation(chat);
    to_bob.send_text("before").await.expect("send");
    assert_eq!(next_message(&mut b, chat).await.text(), Some("before"));

    // A burst of sends; node 1 dies once some of them are acknowledged.
    let mut burst = common::Burst::start(&to_bob, &mut a, SENDS).await;
    node1.kill().await.expect("SIGKILL");
    // More messages once node 1 is dead: certainly unacknowledged, they go through node 2.
    burst.queue_late(&to_bob, LATE).await;
    let total = burst.total;
    let ids = burst.acknowledged(&mut a).await;
    assert_eq!(ids.len(), total, "one message per send");
    assert_eq!(alice.pending().await.expect("outbox"), 0);
    assert_eq!(
        alice_nodes.current(),
        Server::parse(&url2).expect("url"),
        "alice moved to node 2"
    );

    // Bob, moved to node 2 as well, gets each exactly once.
    common::assert_burst_received_once(&bob.conversation(chat), &mut b, total).await;

    // The cluster stored exactly one message per send: IDs are gapless from 1 ("before"),
    // so the highest is the count, and nothing lies beyond it.
    let last = *ids.iter().max().expect("ids");
    assert_eq!(last.get(), total as u64 + 1);
    let token = {
        use chat::client::store::ClientStore as _;
        SqliteStore::open(dir.path().join("bob.db"))
            .expect("store")
            .device()
            .expect("read")
            .expect("device")
            .token
    };
    let beyond = http_get(
        addr2,
        &format!("/v1/conversations/{chat}/messages?after={last}"),
        &token,
    )
    .await;
    assert_eq!(beyond["messages"].as_array().expect("messages").len(), 0);
}
