//! A device that stays offline past the server's inbox retention: the server answers its old
//! cursor with `resync_required {inbox_trimmed}`, and the client continues from where the
//! server says, recovers the group messages it missed from history (it holds their sender
//! key), reports the one-to-one ones it cannot read, and keeps receiving afterwards, with
//! nothing silently lost.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chat::client::{Client, Credentials, Event, MemoryStore, ResyncReason};
use chat::core::{MessageStore as _, Timestamp};
use common::{PASSWORD, TestServer, WAIT, config, next_text, stop, synced, user, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trimmed_inbox_is_resynced_and_recovered_from_history() {
    let store = Arc::new(chat::storage::MemoryStore::new());
    let server = TestServer::with_store(config("memory:"), store.clone()).await;
    let (alice, mut a) = user(&server, "alice").await;
    synced(&mut a).await;
    let bob_store = Arc::new(MemoryStore::new());
    let bob = Client::builder(server.url())
        .store(bob_store.clone())
        .device_name("phone")
        .register(&Credentials::new("bob", PASSWORD))
        .await
        .expect("register bob");
    let mut b = bob.events();
    synced(&mut b).await;

    // Bob is in a group and a one-to-one chat with Alice and has read what was sent so far,
    // so he holds Alice's sender key for the group.
    let group = alice.create_group(&[bob.user()]).await.expect("group");
    let direct = alice.open_direct(bob.user()).await.expect("direct");
    let alice_group = alice.conversation(group);
    alice_group.send_text("g0").await.expect("g0");
    let alice_direct = alice.conversation(direct);
    alice_direct.send_text("d0").await.expect("d0");
    assert_eq!(next_text(&mut b, group).await.text(), Some("g0"));
    assert_eq!(next_text(&mut b, direct).await.text(), Some("d0"));
    stop(bob, b).await;

    // Bob is away; what is sent meanwhile outlives the inbox retention.
    let g1 = alice_group.send_text("g1").await.expect("g1");
    let d1 = alice_direct.send_text("d1").await.expect("d1");
    let g2 = alice_group.send_text("g2").await.expect("g2");
    let a_year_later = Timestamp::from_millis(
        u64::try_from(
            (std::time::SystemTime::now() + Duration::from_secs(365 * 24 * 3600))
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_millis(),
        )
        .expect("millis"),
    );
    let trimmed = store
        .trim_inboxes(a_year_later, 10_000)
        .await
        .expect("trim");
    assert!(trimmed >= 3, "Bob's entries were trimmed ({trimmed})");

    // Bob comes back with his old cursor.
    let bob = Client::builder(server.url())
        .store(bob_store.clone())
        .open()
        .await
        .expect("reopen bob");
    let mut b = bob.events();
    let reason = wait_for(&mut b, |e| match e {
        Event::ResyncRequired { reason } => Some(*reason),
        _ => None,
    })
    .await;
    assert_eq!(reason, ResyncReason::InboxTrimmed);
    let mut recovered_texts = Vec::new();
    let (recovered, missed) = wait_for(&mut b, |e| match e {
        Event::Message(m) => {
            recovered_texts.push(m.text().map(str::to_owned));
            None
        }
        Event::Recovered { recovered, missed } => Some((*recovered, missed.clone())),
        _ => None,
    })
    .await;
    assert_eq!(recovered, 2, "both group messages decrypted from history");
    assert_eq!(
        recovered_texts,
        [Some("g1".to_owned()), Some("g2".to_owned())]
    );
    assert_eq!(missed, [(direct, d1)], "the one-to-one message is reported");
    let group_history: Vec<_> = bob
        .conversation(group)
        .history(None, 100)
        .await
        .expect("history")
        .into_iter()
        .filter_map(|m| m.text().map(|t| (m.id, t.to_owned())))
        .collect();
    assert_eq!(
        group_history.last().cloned(),
        Some((g2, "g2".to_owned())),
        "{group_history:?}"
    );
    assert!(group_history.iter().any(|(id, _)| *id == g1));

    // Bob's cursor continues from where the server said: new messages arrive as usual.
    let d2 = alice_direct.send_text("d2").await.expect("d2");
    let m = tokio::time::timeout(WAIT, next_text(&mut b, direct))
        .await
        .expect("in time");
    assert_eq!((m.id, m.text()), (d2, Some("d2")));
    let g3 = alice_group.send_text("g3").await.expect("g3");
    assert_eq!(next_text(&mut b, group).await.id, g3);
    // And a reconnect does not ask for a resync again.
    stop(bob, b).await;
    let bob = Client::builder(server.url())
        .store(bob_store)
        .open()
        .await
        .expect("reopen");
    let mut b = bob.events();
    wait_for(&mut b, |e| match e {
        Event::ResyncRequired { .. } => panic!("a second resync"),
        Event::Connection(chat::client::ConnectionState::Synced) => Some(()),
        _ => None,
    })
    .await;
}
