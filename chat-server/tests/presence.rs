//! Presence over real sockets: heartbeats, the offline window, no flapping, subscriptions.
//! Intervals are shortened (200 ms, so a 600 ms window) and every wait is on an event.

mod common;

use std::time::Duration;

use chat_core::ErrorCode;
use chat_core::protocol::{Heartbeat, PresenceEvent, ServerFrame, Subscribe, Unsubscribe};
use common::{Account, Client, TestServer, test_config};
use futures::StreamExt as _;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const INTERVAL_MS: u32 = 200;

async fn server() -> TestServer {
    TestServer::start(chat_server::Config {
        heartbeat_interval_ms: INTERVAL_MS,
        missed_heartbeats: 3,
        ..test_config()
    })
    .await
}

async fn befriend(server: &TestServer, a: &Account, b: &Account) {
    let (status, _) = server
        .http(
            "POST",
            "/v1/conversations/direct",
            Some(&a.token),
            Some(json!({"user_id": b.user()})),
        )
        .await;
    assert_eq!(status, 200);
}

async fn connected(server: &TestServer, account: &Account) -> Client {
    let mut client = server.connect(account, 0).await;
    client.until(|f| matches!(f, ServerFrame::SyncEnd(_))).await;
    client
}

/// The next presence event, sending heartbeats while waiting so the watcher stays online.
async fn next_presence(client: &mut Client) -> PresenceEvent {
    let deadline = tokio::time::Instant::now() + common::WAIT;
    while tokio::time::Instant::now() < deadline {
        match client
            .try_recv(Duration::from_millis(u64::from(INTERVAL_MS) / 2))
            .await
        {
            Some(ServerFrame::Presence(p)) => return p,
            Some(_) => {}
            None => client.send(Heartbeat {}.into()).await,
        }
    }
    panic!("no presence event in time");
}

/// Sends heartbeats on the interval until the returned handle is dropped or aborted.
fn keep_alive(mut client: Client) -> tokio::task::JoinHandle<Client> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(u64::from(INTERVAL_MS) / 2));
        for _ in 0..100 {
            tick.tick().await;
            client.send(Heartbeat {}.into()).await;
        }
        client
    })
}

#[tokio::test]
async fn silent_device_goes_offline_and_subscribers_see_it() {
    let server = server().await;
    let alice = server.account("alice").await;
    let bob = server.account("bob").await;
    befriend(&server, &alice, &bob).await;
    let mut alice_client = connected(&server, &alice).await;
    let bob_client = connected(&server, &bob).await;
    let bob_alive = keep_alive(bob_client);
    let mut watcher = connected(&server, &server.login("bob").await).await;
    watcher
        .send(
            Subscribe {
                users: vec![alice.user()],
            }
            .into(),
        )
        .await;
    let first = next_presence(&mut watcher).await;
    assert_eq!((first.user, first.online), (alice.user(), true));
    // Alice's TCP connection stays open, but she sends nothing: offline after the window,
    // and the server closes her connection with the reason.
    let offline = next_presence(&mut watcher).await;
    assert_eq!((offline.user, offline.online), (alice.user(), false));
    assert!(offline.last_active_at.is_some());
    let (_, closing) = alice_client
        .until(|f| matches!(f, ServerFrame::Closing(_)))
        .await;
    assert!(matches!(closing, ServerFrame::Closing(c) if c.code == ErrorCode::HeartbeatTimeout));
    // A later subscriber sees the stored last_active_at.
    let mut late = connected(&server, &server.login("bob").await).await;
    late.send(
        Subscribe {
            users: vec![alice.user()],
        }
        .into(),
    )
    .await;
    let snapshot = next_presence(&mut late).await;
    assert_eq!(
        (snapshot.online, snapshot.last_active_at),
        (false, offline.last_active_at)
    );
    bob_alive.abort();
}

#[tokio::test]
async fn quick_reconnect_does_not_flap() {
    let server = server().await;
    let alice = server.account("alice").await;
    let carol = server.account("carol").await;
    let bob = server.account("bob").await;
    befriend(&server, &alice, &bob).await;
    befriend(&server, &carol, &bob).await;
    // Alice connects before Carol, so Alice's window would end first.
    let alice_client = connected(&server, &alice).await;
    let _carol_client = connected(&server, &carol).await;
    let mut watcher = connected(&server, &bob).await;
    watcher
        .send(
            Subscribe {
                users: vec![alice.user(), carol.user()],
            }
            .into(),
        )
        .await;
    let a = next_presence(&mut watcher).await;
    let b = next_presence(&mut watcher).await;
    assert!(a.online && b.online);
    // Alice's connection drops and comes back at once; she keeps sending heartbeats.
    drop(alice_client);
    let alice_again = keep_alive(connected(&server, &alice).await);
    // Carol stays silent and goes offline when her window ends, after the end of the window
    // Alice's drop would have ended. So the first change the watcher sees must be Carol's.
    let change = next_presence(&mut watcher).await;
    assert_eq!(
        (change.user, change.online),
        (carol.user(), false),
        "no offline/online pair for alice"
    );
    alice_again.abort();
}

#[tokio::test]
async fn only_contacts_can_be_watched_and_unsubscribe_stops_events() {
    let server = server().await;
    let alice = server.account("alice").await;
    let bob = server.account("bob").await;
    let stranger = server.account("stranger").await;
    befriend(&server, &alice, &bob).await;
    let mut watcher = connected(&server, &bob).await;
    watcher
        .send(
            Subscribe {
                users: vec![stranger.user()],
            }
            .into(),
        )
        .await;
    let (_, refused) = watcher.until(|f| matches!(f, ServerFrame::Error(_))).await;
    assert!(matches!(refused, ServerFrame::Error(e) if e.code == ErrorCode::Forbidden));
    // A conversation made after the connection started counts too.
    let carol = server.account("carol").await;
    befriend(&server, &carol, &bob).await;
    watcher
        .send(
            Subscribe {
                users: vec![carol.user()],
            }
            .into(),
        )
        .await;
    let snapshot = next_presence(&mut watcher).await;
    assert_eq!((snapshot.user, snapshot.online), (carol.user(), false));
    watcher
        .send(
            Unsubscribe {
                users: vec![carol.user()],
            }
            .into(),
        )
        .await;
    watcher
        .send(
            Subscribe {
                users: vec![alice.user()],
            }
            .into(),
        )
        .await;
    assert_eq!(next_presence(&mut watcher).await.user, alice.user());
    let _carol_client = connected(&server, &carol).await;
    let alice_client = connected(&server, &alice).await;
    // Carol's change is not delivered (unsubscribed); Alice's is.
    let online = next_presence(&mut watcher).await;
    assert_eq!((online.user, online.online), (alice.user(), true));
    drop(alice_client);
}

#[tokio::test]
async fn clean_close_is_offline_at_once() {
    // The default window: 3 missed heartbeats of 4 s, 12 s.
    let server = TestServer::start(chat_server::Config {
        heartbeat_interval_ms: 4_000,
        missed_heartbeats: 3,
        ..test_config()
    })
    .await;
    let window = Duration::from_millis(12_000);
    let alice = server.account("alice").await;
    let bob = server.account("bob").await;
    befriend(&server, &alice, &bob).await;
    let mut alice_client = connected(&server, &alice).await;
    let mut watcher = connected(&server, &bob).await;
    watcher
        .send(
            Subscribe {
                users: vec![alice.user()],
            }
            .into(),
        )
        .await;
    let first = next_presence(&mut watcher).await;
    assert_eq!((first.user, first.online), (alice.user(), true));
    // Alice signs off with a normal close: the server answers it and announces her offline
    // at once, well within the window her last heartbeat would otherwise keep her online.
    alice_client
        .ws
        .close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "signed off".into(),
        }))
        .await
        .expect("close");
    let offline = tokio::time::timeout(window / 4, next_presence(&mut watcher))
        .await
        .expect("offline announced within a quarter of the heartbeat window");
    assert_eq!((offline.user, offline.online), (alice.user(), false));
    let answer = tokio::time::timeout(common::WAIT, alice_client.ws.next())
        .await
        .expect("the server answers the close");
    assert!(
        matches!(answer, Some(Ok(Message::Close(_))) | None),
        "{answer:?}"
    );
}
