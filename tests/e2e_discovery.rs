//! A client given only a discovery URL learns the cluster's nodes from `GET /v1/discovery`
//! and, when the node it uses goes away, carries on through another one. Two in-process
//! nodes share one store and one node registry (as a cluster shares PostgreSQL and Redis).

mod common;

use std::sync::Arc;

use chat::client::{Client, Credentials, Nodes, Server};
use chat::server::LocalRegistry;
use common::{PASSWORD, TestServer, config, next_text, synced};

async fn node(store: Arc<dyn chat::core::Store>, registry: Arc<LocalRegistry>) -> TestServer {
    let mut server = chat::server::Server::with_store(config("memory:"), store)
        .await
        .expect("bind");
    server.set_registry(registry);
    TestServer::serve(server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_learns_the_nodes_from_discovery_and_moves_when_its_node_goes() {
    let store: Arc<dyn chat::core::Store> = Arc::new(chat::storage::MemoryStore::new());
    let registry = Arc::new(LocalRegistry::new());
    let one = node(store.clone(), registry.clone()).await;
    let two = node(store, registry).await;
    let (url1, url2) = (one.url(), two.url());
    let parse = |url: &str| Server::parse(url).expect("url");

    // Only node one's address is given; discovery lists both.
    let nodes = Nodes::discover(&url1).expect("nodes");
    let alice = Client::builder(&nodes)
        .device_name("laptop")
        .register(&Credentials::new("alice", PASSWORD))
        .await
        .expect("alice");
    let listed = nodes.list();
    assert!(
        listed.contains(&parse(&url1)) && listed.contains(&parse(&url2)),
        "{listed:?}"
    );
    let bob = Client::builder(Nodes::new([&url1, &url2]).expect("nodes"))
        .device_name("phone")
        .register(&Credentials::new("bob", PASSWORD))
        .await
        .expect("bob");
    let (mut a, mut b) = (alice.events(), bob.events());
    synced(&mut a).await;
    synced(&mut b).await;

    // The node Alice uses (the one discovery recommended) shuts down.
    let (gone, left, left_url) = if nodes.current() == parse(&url1) {
        (one, two, url2)
    } else {
        (two, one, url1)
    };
    gone.shutdown().await;
    // Alice's connection moves to the node left (a reconnect, then the next node). Waited
    // for before the HTTP call below: a POST is not sent again when the connection it went
    // out on dies under it, and an idle connection to the node that went may look open for
    // a moment after the node closed it.
    synced(&mut a).await;
    let chat = alice.open_direct(bob.user()).await.expect("open");
    alice
        .conversation(chat)
        .send_text("still here")
        .await
        .expect("send");
    assert_eq!(next_text(&mut b, chat).await.text(), Some("still here"));
    assert_eq!(nodes.current(), parse(&left_url), "alice moved");
    drop(left);
}
