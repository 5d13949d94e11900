//! A group of 100 members, each a client in this process: a message reaches every member's
//! device, the 101st member is refused, and a removed member's client cannot decrypt what
//! is sent after the removal (the sender key was rotated).

mod common;

use std::sync::Arc;

use chat::client::store::ClientStore;
use chat::client::{Client, Credentials, ErrorCode, Events, GroupAction, MemoryStore};
use chat::crypto::{Error as CryptoError, SenderKeyReceiver};
use common::{PASSWORD, TestServer, config, http_get, next_change, next_text, synced};
use futures::future::join_all;

const MEMBERS: usize = 100;

struct Member {
    client: Client,
    events: Events,
    store: Arc<MemoryStore>,
}

async fn member(server: &TestServer, i: usize) -> Member {
    let store = Arc::new(MemoryStore::new());
    let client = Client::builder(server.url())
        .store(store.clone())
        .device_name("phone")
        .register(&Credentials::new(format!("member{i:03}"), PASSWORD))
        .await
        .expect("register");
    let mut events = client.events();
    synced(&mut events).await;
    Member {
        client,
        events,
        store,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_100() {
    let server = TestServer::start(config("memory:")).await;
    let mut members = Vec::new();
    for chunk in (0..MEMBERS).collect::<Vec<_>>().chunks(20) {
        members.extend(join_all(chunk.iter().map(|i| member(&server, *i))).await);
    }
    let others: Vec<_> = members[1..].iter().map(|m| m.client.user()).collect();
    let group = members[0]
        .client
        .create_group(&others)
        .await
        .expect("create");
    let (by_creator, by_second) = (
        members[0].client.conversation(group),
        members[1].client.conversation(group),
    );

    // One message reaches all 99 other members.
    let id = by_creator
        .send_text("hello, 99 of you")
        .await
        .expect("send");
    for m in join_all(
        members[1..]
            .iter_mut()
            .map(|m| next_text(&mut m.events, group)),
    )
    .await
    {
        assert_eq!((m.id, m.text()), (id, Some("hello, 99 of you")));
    }

    // Another member writes too, so the member removed below holds their sender key.
    let second = members[1].client.device();
    let id2 = by_second
        .send_text("from the second member")
        .await
        .expect("send");
    let (first, rest) = members.split_at_mut(2);
    let readers = first[..1].iter_mut().chain(rest.iter_mut());
    for m in join_all(readers.map(|m| next_text(&mut m.events, group))).await {
        assert_eq!(m.id, id2);
    }

    // The 101st member is refused.
    let extra = member(&server, MEMBERS).await;
    let err = by_creator
        .add_members(&[extra.client.user()])
        .await
        .expect_err("the group is full");
    assert_eq!(err.code(), Some(ErrorCode::GroupFull));

    // A member is removed; what is sent afterwards is unreadable with what they hold.
    let removed = members.pop().expect("a member");
    let sender = members[0].client.device();
    by_creator
        .remove_member(removed.client.user())
        .await
        .expect("remove");
    let after = by_creator
        .send_text("after the removal")
        .await
        .expect("send");
    for change in join_all(
        members[1..]
            .iter_mut()
            .map(|m| next_change(&mut m.events, group)),
    )
    .await
    {
        assert_eq!(
            (change.action, change.users.clone()),
            (GroupAction::Removed, vec![removed.client.user()])
        );
    }
    for m in join_all(
        members[1..]
            .iter_mut()
            .map(|m| next_text(&mut m.events, group)),
    )
    .await
    {
        assert_eq!((m.id, m.text()), (after, Some("after the removal")));
    }
    // The second member learnt of the removal from the announcement and rotates too.
    let after2 = by_second
        .send_text("second after the removal")
        .await
        .expect("send");
    let (first, rest) = members.split_at_mut(2);
    let readers = first[..1].iter_mut().chain(rest.iter_mut());
    for m in join_all(readers.map(|m| next_text(&mut m.events, group))).await {
        assert_eq!(m.id, after2);
    }
    let token = members[1]
        .store
        .device()
        .expect("store")
        .expect("device")
        .token;
    let history = http_get(
        server.addr,
        &format!("/v1/conversations/{group}/messages/{after}"),
        &token,
    )
    .await;
    let body = hex::decode(history["body"].as_str().expect("body")).expect("hex");
    let held = removed
        .store
        .receiver(group, sender)
        .expect("store")
        .expect("the removed member held the old sender key");
    let mut receiver = SenderKeyReceiver::from_pickle(&held).expect("pickle");
    assert_eq!(receiver.decrypt(&body), Err(CryptoError::UnknownSenderKey));
    let history = http_get(
        server.addr,
        &format!("/v1/conversations/{group}/messages/{after2}"),
        &token,
    )
    .await;
    let body = hex::decode(history["body"].as_str().expect("body")).expect("hex");
    let held = removed
        .store
        .receiver(group, second)
        .expect("store")
        .expect("the removed member held the second member's old key");
    let mut receiver = SenderKeyReceiver::from_pickle(&held).expect("pickle");
    assert_eq!(receiver.decrypt(&body), Err(CryptoError::UnknownSenderKey));
    assert!(
        removed
            .client
            .conversation(group)
            .history(Some(id2), 10)
            .await
            .expect("history")
            .is_empty()
    );
}
