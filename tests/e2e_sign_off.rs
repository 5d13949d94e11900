//! Signing off: `Client::close` ends the connection with a normal WebSocket close, so the
//! user's contacts see them offline at once instead of when the heartbeat window ends, and the
//! closed client refuses further work instead of hanging.

mod common;

use std::time::Duration;

use chat::client::{Error, Event};
use common::{TestServer, config, synced, user, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_client_is_offline_at_once() {
    let mut cfg = config("memory:");
    // The default window: 3 heartbeats of 5 s.
    cfg.heartbeat_interval_ms = 5_000;
    cfg.missed_heartbeats = 3;
    let window = Duration::from_secs(15);
    let server = TestServer::start(cfg).await;
    let (alice, mut a) = user(&server, "alice").await;
    let (bob, mut b) = user(&server, "bob").await;
    synced(&mut a).await;
    synced(&mut b).await;
    let chat = alice.open_direct(bob.user()).await.expect("open");

    let bob_online = |e: &Event| match e {
        Event::Presence { user, online, .. } if *user == bob.user() => Some(*online),
        _ => None,
    };
    alice.subscribe_presence(&[bob.user()]).expect("subscribe");
    assert!(wait_for(&mut a, bob_online).await, "bob is connected");

    bob.close().await;
    let offline = tokio::time::timeout(window / 3, wait_for(&mut a, bob_online))
        .await
        .expect("offline well within the heartbeat window");
    assert!(!offline);

    // The closed client says so instead of waiting for a connection that will not come.
    let refused =
        tokio::time::timeout(window / 3, bob.conversation(chat).send_text("too late")).await;
    assert!(
        matches!(refused, Ok(Err(Error::Closed))),
        "expected Closed, got {refused:?}"
    );
}
