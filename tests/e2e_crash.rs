//! The server is killed (SIGKILL) in the middle of a burst of sends and restarted on its
//! database: every acknowledged message is delivered, and every unacknowledged one is retried
//! from the client's outbox with its original client key and appears exactly once.
//!
//! The node runs in a child process: this test binary re-executes itself with
//! `CHAT_TEST_NODE_STORE` set, which turns the `node_process` test into a server. Clients
//! reach it through a small TCP proxy on a fixed port, so they reconnect to the same address
//! while the node restarts on a new port.

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use chat::client::{Client, Credentials, SqliteStore};
use common::{PASSWORD, WAIT, config, http_get, next_message, synced};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

const SENDS: usize = 100;
/// Sends made while the node is down.
const LATE: usize = 10;
const NODE_ENV: &str = "CHAT_TEST_NODE_STORE";

/// Not a test on its own: the body of the child process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_process() {
    let Ok(store) = std::env::var(NODE_ENV) else {
        return;
    };
    let server = chat::server::Server::bind(config(&format!("sqlite://{store}")))
        .await
        .expect("bind");
    println!("LISTENING {}", server.local_addr());
    server
        .run_until(std::future::pending())
        .await
        .expect("serve");
}

async fn spawn_node(store: &std::path::Path) -> (Child, SocketAddr) {
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

/// Forwards every connection to the current backend; a connection whose backend is down is
/// closed at once, as a dead node's would be.
async fn proxy(backend: Arc<Mutex<SocketAddr>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let to = *backend.lock().expect("lock");
            tokio::spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_and_retried_sends_survive_a_killed_server() {
    if std::env::var(NODE_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("server.db");
    let (mut node, node_addr) = spawn_node(&db).await;
    let backend = Arc::new(Mutex::new(node_addr));
    let url = format!("http://{}", proxy(backend.clone()).await);

    let alice = Client::builder(&url)
        .store(SqliteStore::open(dir.path().join("alice.db")).expect("store"))
        .device_name("laptop")
        .register(&Credentials::new("alice", PASSWORD))
        .await
        .expect("alice");
    let bob = Client::builder(&url)
        .store(SqliteStore::open(dir.path().join("bob.db")).expect("store"))
        .device_name("phone")
        .register(&Credentials::new("bob", PASSWORD))
        .await
        .expect("bob");
    let mut a = alice.events();
    let mut b = bob.events();
    synced(&mut a).await;
    synced(&mut b).await;
    let chat = alice.open_direct(bob.user()).await.expect("open");
    let to_bob = alice.conversation(chat);
    to_bob.send_text("before").await.expect("send");
    assert_eq!(next_message(&mut b, chat).await.text(), Some("before"));

    // A burst of sends; the node dies once some of them are acknowledged.
    let mut burst = common::Burst::start(&to_bob, &mut a, SENDS).await;
    node.kill().await.expect("SIGKILL");
    // More messages while the node is dead: certainly unacknowledged, they wait in the
    // outbox for the restart.
    burst.queue_late(&to_bob, LATE).await;
    let total = burst.total;

    // Restarted on the same database; the clients reconnect by themselves.
    let (_node, node_addr) = spawn_node(&db).await;
    *backend.lock().expect("lock") = node_addr;
    let ids = burst.acknowledged(&mut a).await;
    assert_eq!(ids.len(), total, "one message per send");
    assert_eq!(alice.pending().await.expect("outbox"), 0);

    // Bob gets each exactly once.
    common::assert_burst_received_once(&bob.conversation(chat), &mut b, total).await;

    // And the server stored exactly one message per send: IDs are gapless from 1 ("before"),
    // so the highest is the count, and nothing lies beyond it.
    let last = *ids.iter().max().expect("ids");
    assert_eq!(last.get(), total as u64 + 1);
    let token = {
        use chat::client::store::ClientStore;
        SqliteStore::open(dir.path().join("bob.db"))
            .expect("store")
            .device()
            .expect("read")
            .expect("device")
            .token
    };
    let beyond = http_get(
        node_addr,
        &format!("/v1/conversations/{chat}/messages?after={last}"),
        &token,
    )
    .await;
    assert_eq!(beyond["messages"].as_array().expect("messages").len(), 0);
}
