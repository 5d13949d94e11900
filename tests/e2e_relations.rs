//! Conversations as people use them, end to end over a real node: replies, edits, deletes and
//! reactions applied on every device; read positions synced across a user's devices and
//! unread counts that follow them; typing indicators that stop and expire by themselves;
//! local search that reflects edits and deletes.

mod common;

use chat::client::{
    Content, ConversationId, Error, Event, Events, MessageId, ReadPosition, SearchPage,
    TimelineItem,
};
use common::{TestServer, config, device, next_text, synced, user, wait_for};

/// The next update of message `id` that satisfies `done` (earlier updates, such as this
/// user's own reactions, are skipped).
async fn updated(
    events: &mut Events,
    id: MessageId,
    done: impl Fn(&TimelineItem) -> bool,
) -> TimelineItem {
    wait_for(events, |e| match e {
        Event::Updated(item) if item.id() == id && done(item) => Some(item.clone()),
        _ => None,
    })
    .await
}

async fn found(client: &chat::client::Client, query: &str) -> Vec<MessageId> {
    client
        .search(query, SearchPage::first(20))
        .await
        .expect("search")
        .hits
        .into_iter()
        .map(|h| h.message)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relations_read_positions_and_search_across_devices() {
    let server = TestServer::start(config("memory:")).await;
    let (alice, mut a) = user(&server, "alice").await;
    let (bob, mut b) = user(&server, "bob").await;
    let (bob2, mut b2) = device(&server, "bob", &bob).await;
    for events in [&mut a, &mut b, &mut b2] {
        synced(events).await;
    }
    let chat: ConversationId = alice.open_direct(bob.user()).await.expect("open");
    bob.sync_conversations().await.expect("bob learns the chat");
    bob2.sync_conversations()
        .await
        .expect("bob2 learns the chat");
    let (alice_chat, bob_chat, bob2_chat) = (
        alice.conversation(chat),
        bob.conversation(chat),
        bob2.conversation(chat),
    );

    // Three messages from Alice: all unread for Bob, on both devices.
    let m1 = alice_chat
        .send_text("hello world, 你好世界")
        .await
        .expect("m1");
    let m2 = alice_chat.send_text("second").await.expect("m2");
    let m3 = alice_chat.send_text("third").await.expect("m3");
    for events in [&mut b, &mut b2] {
        for _ in 0..3 {
            next_text(events, chat).await;
        }
    }
    assert_eq!(bob_chat.unread_count().await.expect("unread"), 3);
    assert_eq!(bob2_chat.unread_count().await.expect("unread"), 3);
    assert_eq!(
        alice_chat.unread_count().await.expect("own"),
        0,
        "own messages"
    );
    assert_eq!(found(&bob, "世界").await, [m1], "CJK text is found");

    // Bob reacts twice with the same emoji: one reaction, on Alice's side too.
    bob_chat.react(m1, "👍").await.expect("react");
    bob_chat.react(m1, "👍").await.expect("react again");
    let item = updated(&mut a, m1, |i| !i.view.reactions.is_empty()).await;
    assert_eq!(
        item.view.reactions.get("👍").map(|users| users.len()),
        Some(1)
    );

    // Only the sender may edit; Alice's edit shows everywhere and search follows it.
    let refused = bob_chat.edit(m1, "hacked").await;
    assert!(matches!(refused, Err(Error::NotSender(_))), "{refused:?}");
    alice_chat.edit(m1, "hello there").await.expect("edit");
    for events in [&mut b, &mut b2] {
        let item = updated(events, m1, TimelineItem::is_edited).await;
        assert_eq!(item.text(), Some("hello there"));
        assert!(item.is_edited());
        assert_eq!(
            item.view.reactions.get("👍").map(|users| users.len()),
            Some(1),
            "reactions survive an edit"
        );
    }
    assert_eq!(found(&bob, "there").await, [m1]);
    assert!(
        found(&bob, "world").await.is_empty(),
        "the edited-away text"
    );
    assert_eq!(
        found(&alice, "there").await,
        [m1],
        "the sender's own index too"
    );

    // Bob reads up to m2 on his phone; his other device's count follows.
    bob_chat.mark_read(m2).await.expect("read");
    wait_for(&mut b2, |e| match e {
        Event::Receipt { user, up_to, .. } if *user == bob.user() && *up_to == m2 => Some(()),
        _ => None,
    })
    .await;
    assert_eq!(
        bob2_chat.read_position().await.expect("pos"),
        ReadPosition::up_to(m2)
    );
    assert_eq!(bob_chat.unread_count().await.expect("unread"), 1);
    assert_eq!(bob2_chat.unread_count().await.expect("unread"), 1);
    // A lower position never moves it back.
    bob2_chat.mark_read(m1).await.expect("lower");
    assert_eq!(
        bob2_chat.read_position().await.expect("pos"),
        ReadPosition::up_to(m2)
    );
    // A device added later learns the position with the conversation.
    let (bob3, _b3) = device(&server, "bob", &bob).await;
    assert_eq!(
        bob3.conversation(chat).read_position().await.expect("pos"),
        ReadPosition::NONE
    );
    bob3.sync_conversations()
        .await
        .expect("bob3 learns the chat");
    assert_eq!(
        bob3.conversation(chat).read_position().await.expect("pos"),
        ReadPosition::up_to(m2)
    );

    // Alice deletes m3: a tombstone everywhere, no longer unread, no longer found.
    assert_eq!(found(&bob, "third").await, [m3]);
    alice_chat.delete(m3).await.expect("delete");
    let item = updated(&mut b, m3, TimelineItem::is_deleted).await;
    assert!(item.is_deleted());
    assert_eq!(item.view.content, None);
    assert_eq!(bob_chat.unread_count().await.expect("unread"), 0);
    assert!(found(&bob, "third").await.is_empty());

    // A reply points at its message.
    let reply = bob_chat.reply(m1, "replying").await.expect("reply");
    let m = next_text(&mut a, chat).await;
    assert_eq!(m.id, reply);
    match m.content {
        Content::Text(t) => assert_eq!(t.reply_to, Some(m1)),
        other => panic!("expected a text, got kind {}", other.kind()),
    }

    // The views as a conversation shows them, newest first; edits, deletes and reactions are
    // not messages of their own.
    let timeline = bob_chat.timeline(None, 10).await.expect("timeline");
    let ids: Vec<_> = timeline.iter().map(TimelineItem::id).collect();
    assert_eq!(ids, [reply, m3, m2, m1]);
    assert_eq!(timeline[3].text(), Some("hello there"));
    let list = alice.conversation_list().await.expect("list");
    assert_eq!(list.len(), 1);
    assert_eq!((list[0].id, list[0].unread), (chat, 1), "Bob's reply");
    assert_eq!(list[0].last.as_ref().map(TimelineItem::id), Some(reply));
}

/// Who is typing in `chat`, from the next change.
async fn typing(events: &mut Events, chat: ConversationId) -> Vec<chat::client::UserId> {
    wait_for(events, |e| match e {
        Event::Typing {
            conversation,
            users,
        } if *conversation == chat => Some(users.iter().copied().collect()),
        _ => None,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_indicators_stop_and_expire_by_themselves() {
    let server = TestServer::start(config("memory:")).await;
    let (alice, mut a) = user(&server, "alice").await;
    let (bob, mut b) = user(&server, "bob").await;
    synced(&mut a).await;
    synced(&mut b).await;
    let chat = alice.open_direct(bob.user()).await.expect("open");
    let (alice_chat, bob_chat) = (alice.conversation(chat), bob.conversation(chat));

    bob_chat.set_typing(true).expect("typing");
    assert_eq!(typing(&mut a, chat).await, [bob.user()]);
    assert_eq!(
        alice_chat.typing().into_iter().collect::<Vec<_>>(),
        [bob.user()]
    );
    bob_chat.set_typing(false).expect("stop");
    assert!(typing(&mut a, chat).await.is_empty());

    // Started and never stopped (the app died): the indicator goes after its TTL by itself.
    bob_chat.set_typing(true).expect("typing");
    assert_eq!(typing(&mut a, chat).await, [bob.user()]);
    drop((bob_chat, bob)); // the handle is a clone of the client
    assert!(typing(&mut a, chat).await.is_empty());
    assert!(alice_chat.typing().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_started_by_someone_else_joins_the_list() {
    let server = TestServer::start(config("memory:")).await;
    let (alice, mut a) = user(&server, "alice").await;
    let (bob, mut b) = user(&server, "bob").await;
    synced(&mut a).await;
    synced(&mut b).await;
    assert!(bob.conversation_list().await.expect("list").is_empty());

    let group = alice.create_group(&[bob.user()]).await.expect("group");
    alice
        .conversation(group)
        .send_text("welcome")
        .await
        .expect("send");
    // Both arrive, in either order: the message, and the news of the conversation.
    let (mut kind, mut text) = (None, false);
    wait_for(&mut b, |e| {
        match e {
            Event::NewConversation { id, kind: k } if *id == group => kind = Some(*k),
            Event::Message(m) if m.conversation == group && m.text().is_some() => text = true,
            _ => {}
        }
        (kind.is_some() && text).then_some(())
    })
    .await;
    assert_eq!(kind, Some(chat::client::ConversationKind::Group));
    let list = bob.conversation_list().await.expect("list");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].id, group);
    assert_eq!(
        list[0].unread, 1,
        "the text counts, the group change does not"
    );
}
