//! People through the SDK: profiles and their change events, directory search, and blocks
//! (a blocked user's 1:1 open refused as a missing user; their group messages hidden by the
//! blocker's client).

mod common;

use chat::client::{ErrorCode, Event};
use common::{TestServer, config, next_message, next_text, synced, user, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_search_and_blocks_through_the_client() {
    let server = TestServer::start(config("memory:")).await;
    let (alice, mut a) = user(&server, "alice").await;
    let (bob, mut b) = user(&server, "bob").await;
    for e in [&mut a, &mut b] {
        synced(e).await;
    }
    let chat = alice.open_direct(bob.user()).await.expect("open");

    // A profile change reaches the peer as an event; NFD input comes back NFC.
    let set = alice
        .set_profile("Zoe\u{308}", Some("around"), None)
        .await
        .expect("set profile");
    assert_eq!(set.name(), "Zoë");
    let (who, name) = wait_for(&mut b, |e| match e {
        Event::Profile {
            user, display_name, ..
        } => Some((*user, display_name.clone())),
        _ => None,
    })
    .await;
    assert_eq!((who, name.as_str()), (alice.user(), "Zoë"));
    assert_eq!(
        bob.user_profile(alice.user())
            .await
            .expect("profile")
            .name(),
        "Zoë"
    );
    assert!(alice.set_profile("", None, None).await.is_err());

    // Search by a prefix in another case, page by page.
    let page = bob.search_users("ZO", None, 1).await.expect("search");
    assert_eq!(page.users.len(), 1);
    assert_eq!(page.users[0].user_id, alice.user());
    assert_eq!(page.next, None);

    // Alice blocks Bob: Bob cannot open a 1:1 (as if Alice did not exist), and in a group
    // Alice's client hides Bob's messages while Carol still gets them.
    alice.block(bob.user()).await.expect("block");
    assert_eq!(alice.blocks().await.expect("blocks"), vec![bob.user()]);
    let refused = bob.open_direct(alice.user()).await.expect_err("refused");
    assert_eq!(refused.code(), Some(ErrorCode::NotFound));
    let (carol, mut c) = user(&server, "carol").await;
    synced(&mut c).await;
    let group = alice
        .create_group(&[bob.user(), carol.user()])
        .await
        .expect("group");
    let hidden = bob
        .conversation(group)
        .send_text("from bob")
        .await
        .expect("bob sends");
    assert_eq!(next_text(&mut c, group).await.id, hidden);
    let shown = carol
        .conversation(group)
        .send_text("from carol")
        .await
        .expect("carol sends");
    let first = next_text(&mut a, group).await.id;
    assert_eq!(first, shown, "Bob's message is hidden from Alice");
    assert!(
        alice
            .conversation(group)
            .history(None, 100)
            .await
            .expect("history")
            .iter()
            .all(|m| m.sender.user != bob.user())
    );
    let _ = chat;

    // Dave, blocked by Alice before they ever talked, has no session with her device and may
    // not fetch her bundles; in a group Carol makes, his messages still reach Carol (Alice's
    // device gets no header it can open; her client would hide the message anyway).
    let (dave, mut d) = user(&server, "dave").await;
    synced(&mut d).await;
    alice.block(dave.user()).await.expect("block dave");
    let later = carol
        .create_group(&[alice.user(), dave.user()])
        .await
        .expect("group");
    next_message(&mut d, later).await; // Carol's announcement.
    let id = dave
        .conversation(later)
        .send_text("from dave")
        .await
        .expect("dave sends");
    assert_eq!(next_text(&mut c, later).await.id, id);
}
