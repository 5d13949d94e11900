//! The SDK's entry points (issue 19): the builder (register, log in, resume from the store)
//! and the conversation handle, over a real node on 127.0.0.1.

mod common;

use chat::client::{Client, Credentials, Error, ErrorCode, Event, SqliteStore};
use common::{PASSWORD, TestServer, config, next_text, synced, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_builder_and_a_conversation_handle_carry_a_chat() {
    let server = TestServer::start(config("memory:")).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("alice.db");
    let alice_creds = Credentials::new("alice", PASSWORD);
    assert!(
        !format!("{alice_creds:?}").contains(PASSWORD),
        "the password shows"
    );

    let alice = Client::builder(server.url())
        .store(SqliteStore::open(&path).expect("store"))
        .device_name("laptop")
        .register(&alice_creds)
        .await
        .expect("register");
    let bob = Client::builder(server.url())
        .register(&Credentials::new("bob", PASSWORD))
        .await
        .expect("register with the default store");
    let mut b = bob.events();
    synced(&mut b).await;

    let chat = alice.conversation(alice.open_direct(bob.user()).await.expect("open"));
    let first = chat.send_text("hi Bob").await.expect("send");
    let to_bob = bob.conversation(chat.id());
    assert_eq!(next_text(&mut b, chat.id()).await.id, first);
    assert_eq!(to_bob.unread_count().await.expect("unread"), 1);
    to_bob.reply(first, "hi Alice").await.expect("reply");
    to_bob.react(first, "👍").await.expect("react");
    to_bob.mark_read(first).await.expect("read");
    assert_eq!(to_bob.unread_count().await.expect("unread"), 0);
    let edited = chat.edit(first, "hello Bob").await.expect("edit");
    assert_ne!(edited, first);

    // A clone is the same device; the handle outlives the name it was made from.
    let again = alice.clone();
    assert_eq!(again.device(), alice.device());
    drop(alice);
    let mut a = again.events();
    wait_for(&mut a, |e| match e {
        Event::Message(m) if m.conversation == chat.id() && m.text() == Some("hi Alice") => {
            Some(())
        }
        _ => None,
    })
    .await;
    chat.send_text("still here")
        .await
        .expect("send after the drop");
    assert_eq!(
        next_text(&mut b, chat.id()).await.text(),
        Some("still here")
    );
    let items = chat.timeline(None, 10).await.expect("timeline");
    let mine = items.iter().find(|i| i.id() == first).expect("first");
    assert_eq!(mine.text(), Some("hello Bob"));
    assert!(mine.is_edited());
    again.close().await;
    drop((again, chat));

    // Resumed from the store; a new device needs a log-in, and bad credentials are refused.
    let resumed = Client::builder(server.url())
        .store(SqliteStore::open(&path).expect("store"))
        .open()
        .await
        .expect("open");
    assert_eq!(resumed.user(), bob_peer(&bob).await);
    let wrong = Client::builder(server.url())
        .login(&Credentials::new("alice", "not the password"))
        .await
        .expect_err("wrong password");
    assert_eq!(wrong.code(), Some(ErrorCode::BadCredentials), "{wrong:?}");
    let fresh = Client::builder(server.url())
        .open()
        .await
        .expect_err("an empty store");
    assert!(matches!(fresh, Error::NotLoggedIn), "{fresh:?}");
}

/// The user Bob's one conversation is with.
async fn bob_peer(bob: &Client) -> chat::client::UserId {
    let conversation = bob.conversation_list().await.expect("list")[0].id;
    let members = bob
        .conversation(conversation)
        .members()
        .await
        .expect("members");
    members
        .into_iter()
        .find(|u| *u != bob.user())
        .expect("a peer")
}

/// `close` sends what the outbox holds before it signs off, and the client is stopped
/// afterwards on every clone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_flushes_the_outbox_and_stops_every_clone() {
    let server = TestServer::start(config("memory:")).await;
    let alice = Client::builder(server.url())
        .register(&Credentials::new("alice", PASSWORD))
        .await
        .expect("register");
    let bob = Client::builder(server.url())
        .register(&Credentials::new("bob", PASSWORD))
        .await
        .expect("register");
    let mut b = bob.events();
    synced(&mut b).await;
    let chat = alice.conversation(alice.open_direct(bob.user()).await.expect("open"));
    for n in 0..20 {
        chat.queue_text(&format!("queued {n}"))
            .await
            .expect("queue");
    }
    let clone = alice.clone();
    alice.close().await;
    assert_eq!(
        alice.pending().await.expect("pending"),
        0,
        "the outbox was sent first"
    );
    for n in 0..20 {
        let text = format!("queued {n}");
        assert_eq!(
            next_text(&mut b, chat.id()).await.text(),
            Some(text.as_str())
        );
    }
    assert!(matches!(
        clone.conversation(chat.id()).send_text("after").await,
        Err(Error::Closed)
    ));
}
