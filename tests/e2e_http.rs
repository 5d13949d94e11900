//! The SDK's HTTP client keeps connections alive: a burst of calls shares a connection, and
//! when the idle connection is cut the next call goes through on a new one.

mod common;

use common::{Proxy, TestServer, config, synced, user};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_share_a_connection_and_survive_its_loss() {
    let server = TestServer::start(config("memory:")).await;
    let proxy = Proxy::start(server.addr).await;
    let (_, _) = user(&server, "bob").await;
    let alice = chat::client::Client::builder(proxy.url())
        .device_name("laptop")
        .register(&chat::client::Credentials::new("alice", common::PASSWORD))
        .await
        .expect("register");
    let mut a = alice.events();
    synced(&mut a).await;

    let before = proxy.accepted();
    for _ in 0..10 {
        alice.user_by_name("bob").await.expect("lookup");
    }
    let opened = proxy.accepted() - before;
    assert!(opened <= 1, "10 calls opened {opened} connections");

    // Every connection is cut (the server restarted, a NAT forgot it): the next call opens a
    // new one instead of failing on the dead one.
    proxy.down();
    proxy.up(server.addr);
    alice.user_by_name("bob").await.expect("after the cut");
}
