//! A malicious server against group membership (issue 17, docs/SECURITY.md "Groups:
//! membership and roles"): it adds a member with a change it forged, and drops, replays or
//! reorders the members' signed changes. Each test fails if the attack works.

mod common;
mod malicious;

use std::sync::{Arc, Mutex};

use chat::client::{ChainError, Client, Conversation, ConversationId, Credentials, Event, Events};
use chat::core::{ChainLink, GroupOp, GroupSettings, Store, UserId};
use chat::crypto::{AccountIdentity, SignedDeviceList, SignedGroupChange, VerifiedGroup};
use common::{PASSWORD, TestServer, config, next_text, synced, user, wait_for};
use malicious::Mitm;

/// Waits for `group`'s next refused change and returns why it was refused.
async fn change_refused(events: &mut Events, group: ConversationId) -> ChainError {
    wait_for(events, |e| match e {
        Event::GroupChangeRefused {
            conversation,
            reason,
        } if *conversation == group => Some(reason.clone()),
        _ => None,
    })
    .await
}

/// The group as the store holds its chain, verified under the members' published keys.
async fn chain(
    store: &dyn Store,
    group: ConversationId,
) -> (Vec<SignedGroupChange>, VerifiedGroup) {
    let mut changes = Vec::new();
    for (_, bytes) in store.group_changes(group, 0, 1000).await.expect("chain") {
        changes.push(SignedGroupChange::decode(&bytes).expect("change"));
    }
    let mut keys = std::collections::BTreeMap::new();
    for change in &changes {
        let list = store
            .device_list(change.actor())
            .await
            .expect("list")
            .expect("a list");
        let list = SignedDeviceList::decode(&list.list).expect("decode");
        keys.insert(change.actor(), list.account().verifying_key());
    }
    let verified =
        VerifiedGroup::from_chain(&changes, &|u: UserId| keys.get(&u).copied()).expect("verified");
    (changes, verified)
}

/// The server adds Mallory to Alice's group: its member list and its chain say so, with a
/// change in Alice's name that it signed with an account key of its own. Alice's device
/// refuses the change, gives Mallory's device an empty header and no sender key, and reports
/// her; Mallory reads nothing; Bob reads on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_the_server_adds_with_a_forged_change_gets_no_keys() {
    let store: Arc<dyn Store> = Arc::new(chat::storage::MemoryStore::new());
    let server = TestServer::with_store(config("memory:"), store.clone()).await;
    let (alice, mut a) = user(&server, "alice").await;
    let (bob, mut b) = user(&server, "bob").await;
    let (mallory, mut m) = user(&server, "mallory").await;
    let group = alice.create_group(&[bob.user()]).await.expect("group");
    let alice_group = alice.conversation(group);
    alice_group.send_text("before").await.expect("send");
    assert_eq!(next_text(&mut b, group).await.text(), Some("before"));

    let (_, verified) = chain(store.as_ref(), group).await;
    let op = GroupOp::Add(vec![mallory.user()]);
    let forged = SignedGroupChange::sign(
        AccountIdentity::from_secret(&[9; 32]).signing_key(),
        group,
        verified.hash(),
        alice.user(),
        op.clone(),
    );
    let next =
        chat::core::apply_group_op(Some(verified.state()), alice.user(), &op).expect("rules");
    let link = ChainLink {
        parent: *verified.hash().as_bytes(),
        head: *forged.next_hash(&next).as_bytes(),
        change: forged.encode().into(),
    };
    store
        .change_group(group, alice.user(), &op, 100, Some(&link))
        .await
        .expect("the server adds mallory");

    // The server asks Alice's send to cover Mallory's device.
    alice_group.send_text("after").await.expect("send");
    let reason = change_refused(&mut a, group).await;
    assert_eq!(reason, ChainError::BadSignature);
    wait_for(&mut a, |e| match e {
        Event::GroupMemberUnverified { conversation, user }
            if *conversation == group && *user == mallory.user() =>
        {
            Some(())
        }
        _ => None,
    })
    .await;
    assert_eq!(next_text(&mut b, group).await.text(), Some("after"));
    wait_for(&mut m, |e| match e {
        Event::Undecryptable { conversation, .. } if *conversation == group => Some(()),
        Event::Message(msg) if msg.conversation == group && msg.text().is_some() => {
            panic!("mallory read {:?}", msg.text())
        }
        _ => None,
    })
    .await;
    let info = alice_group.group_info().await.expect("info");
    assert!(info.verified);
    assert_eq!(info.role(mallory.user()), None);
}

/// The group's name as the handle's client verified it (fetching the chain first).
async fn name_of(group: &Conversation) -> String {
    let info = group.group_info().await.expect("info");
    assert!(info.verified);
    info.name
}

fn change_of(json: &serde_json::Value) -> SignedGroupChange {
    let hex = json["change"].as_str().expect("hex");
    SignedGroupChange::decode(&hex::decode(hex).expect("hex")).expect("change")
}

/// Carol's view of the chain passes through a server that drops a change, then replays one,
/// then reorders two. Each time her device refuses what follows and keeps the state it
/// verified; served honestly again, it catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_replayed_and_reordered_group_changes_are_refused() {
    let server = TestServer::start(config("memory:")).await;
    let mitm = Mitm::start(server.addr).await;
    let (alice, _a) = user(&server, "alice").await;
    let (dave, _d) = user(&server, "dave").await;
    let carol = Client::builder(mitm.url())
        .device_name("phone")
        .register(&Credentials::new("carol", PASSWORD))
        .await
        .expect("register");
    let mut c = carol.events();
    synced(&mut c).await;
    let group = alice
        .create_named_group("Trip", &[carol.user()], GroupSettings::default())
        .await
        .expect("group");
    let carol_group = carol.conversation(group);
    assert_eq!(name_of(&carol_group).await, "Trip");
    let changes = format!("/v1/conversations/{group}/changes");

    // Dropped: the rename to "A" never reaches Carol, so the rename to "B" names a state she
    // does not have.
    let path = changes.clone();
    mitm.http_rule(move |req, mut json| {
        if req.path.starts_with(&path)
            && let Some(list) = json["changes"].as_array_mut()
        {
            list.retain(|c| *change_of(c).op() != GroupOp::Rename("A".into()));
        }
        json
    });
    let alice_group = alice.conversation(group);
    alice_group.rename("A").await.expect("rename");
    alice_group.rename("B").await.expect("rename");
    assert_eq!(name_of(&carol_group).await, "Trip");
    assert_eq!(change_refused(&mut c, group).await, ChainError::StaleParent);
    mitm.honest();
    assert_eq!(name_of(&carol_group).await, "B");

    // Replayed: after Dave's removal, his addition comes again.
    let (path, added) = (changes.clone(), Arc::new(Mutex::new(None)));
    let add_dave = GroupOp::Add(vec![dave.user()]);
    let remove_dave = GroupOp::Remove(dave.user());
    mitm.http_rule(move |req, mut json| {
        if req.path.starts_with(&path)
            && let Some(list) = json["changes"].as_array_mut()
        {
            let mut added = added.lock().expect("lock");
            for change in list.iter() {
                if *change_of(change).op() == add_dave {
                    *added = Some(change.clone());
                }
            }
            let removed = list.iter().any(|c| *change_of(c).op() == remove_dave);
            if removed && let Some(replay) = added.clone() {
                list.push(replay);
            }
        }
        json
    });
    alice_group.add_members(&[dave.user()]).await.expect("add");
    assert_eq!(
        carol_group
            .group_info()
            .await
            .expect("info")
            .role(dave.user()),
        Some(chat::core::Role::Member)
    );
    alice_group
        .remove_member(dave.user())
        .await
        .expect("remove");
    let info = carol_group.group_info().await.expect("info");
    assert_eq!(
        info.role(dave.user()),
        None,
        "the replayed addition was taken"
    );
    assert_eq!(change_refused(&mut c, group).await, ChainError::StaleParent);
    mitm.honest();

    // Reordered: the rename to "Y" is served before the rename to "X" it follows.
    let path = changes.clone();
    mitm.http_rule(move |req, mut json| {
        if req.path.starts_with(&path)
            && let Some(list) = json["changes"].as_array_mut()
        {
            let x = list
                .iter()
                .position(|c| *change_of(c).op() == GroupOp::Rename("X".into()));
            if let Some(x) = x {
                let held = list.remove(x);
                if list
                    .iter()
                    .any(|c| *change_of(c).op() == GroupOp::Rename("Y".into()))
                {
                    list.push(held);
                }
            }
        }
        json
    });
    alice_group.rename("X").await.expect("rename");
    alice_group.rename("Y").await.expect("rename");
    assert_eq!(name_of(&carol_group).await, "B");
    assert_eq!(change_refused(&mut c, group).await, ChainError::StaleParent);
    mitm.honest();
    assert_eq!(name_of(&carol_group).await, "Y");
    // Alice was served honestly throughout.
    assert_eq!(name_of(&alice_group).await, "Y");
}
