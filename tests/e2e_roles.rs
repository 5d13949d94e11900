//! Group administration through the SDK (issue 17): a named group, admins and members, what
//! a member may not do, promotion, renaming, settings, a removal, leaving and a rejoin, seen
//! from several devices; concurrent changes re-based; what the server's change route takes.

mod common;

use chat::client::{Error, ErrorCode, Event, GroupAction, GroupSettings, Permission, Role};
use chat::core::GroupOp;
use chat::crypto::{AccountIdentity, SignedGroupChange, StateHash};
use common::{
    PASSWORD, TestServer, config, device, http_call, next_change, next_text, synced, user, wait_for,
};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_members_removal_and_rejoin_across_devices() {
    let server = TestServer::start(config("memory:")).await;
    let (alice, mut a1) = user(&server, "alice").await;
    let (alice2, mut a2) = device(&server, "alice", &alice).await;
    let (bob, mut b) = user(&server, "bob").await;
    let (carol, mut c) = user(&server, "carol").await;
    let (dave, _d) = user(&server, "dave").await;
    for events in [&mut a1, &mut a2, &mut b, &mut c] {
        synced(events).await;
    }

    let group = alice
        .create_named_group(
            "Trip",
            &[bob.user(), carol.user()],
            GroupSettings::default(),
        )
        .await
        .expect("create");
    let [alice_group, alice2_group, bob_group, carol_group] =
        [&alice, &alice2, &bob, &carol].map(|c| c.conversation(group));
    // Every device verified the signed creation and reports it...
    for events in [&mut a2, &mut b, &mut c] {
        let (actor, op) = wait_for(events, |e| match e {
            Event::GroupChanged {
                conversation,
                actor,
                op,
            } if *conversation == group => Some((*actor, op.clone())),
            _ => None,
        })
        .await;
        assert_eq!(actor, alice.user());
        assert!(matches!(op, GroupOp::Create { ref name, .. } if name == "Trip"));
    }
    // ...before the announcement that made it fetch the chain.
    for events in [&mut a2, &mut b, &mut c] {
        let change = next_change(events, group).await;
        assert_eq!(change.action, GroupAction::Created);
        assert_eq!(change.name.as_deref(), Some("Trip"));
    }
    let info = bob_group.group_info().await.expect("info");
    assert!(info.verified);
    assert_eq!(info.name, "Trip");
    assert_eq!(info.admins().collect::<Vec<_>>(), vec![alice.user()]);
    assert_eq!(info.role(carol.user()), Some(Role::Member));
    assert_eq!(info.members.len(), 3);

    // A member may not remove others, nor add under the default settings.
    let refused = bob_group
        .remove_member(carol.user())
        .await
        .expect_err("member");
    assert_eq!(refused.code(), Some(ErrorCode::Forbidden), "{refused:?}");
    let refused = bob_group
        .add_members(&[dave.user()])
        .await
        .expect_err("member");
    assert_eq!(refused.code(), Some(ErrorCode::Forbidden), "{refused:?}");

    // Alice makes Bob an admin; now he may remove Carol.
    alice_group.promote(bob.user()).await.expect("promote");
    for events in [&mut a2, &mut b] {
        let change = next_change(events, group).await;
        assert_eq!(
            (change.action, change.users.clone()),
            (GroupAction::Promoted, vec![bob.user()])
        );
    }
    bob_group
        .remove_member(carol.user())
        .await
        .expect("an admin removes");
    assert!(matches!(
        carol_group.send_text("still here?").await,
        Err(Error::NotMember)
    ));

    // Anyone may rename under the default settings; then only admins may.
    bob_group.rename("Trip 2026").await.expect("rename");
    alice_group
        .set_settings(GroupSettings {
            add_members: Permission::Admins,
            edit_name: Permission::Admins,
        })
        .await
        .expect("settings");
    let info = alice2_group.group_info().await.expect("info");
    assert_eq!(info.name, "Trip 2026");
    assert_eq!(info.settings.edit_name, Permission::Admins);

    // Carol is added back and reads what is sent after; Alice leaves, Bob stays admin.
    bob_group
        .add_members(&[carol.user()])
        .await
        .expect("rejoin");
    bob_group.send_text("welcome back").await.expect("send");
    assert_eq!(next_text(&mut c, group).await.text(), Some("welcome back"));
    alice_group.leave().await.expect("leave");
    let info = bob_group.group_info().await.expect("info");
    assert_eq!(info.role(alice.user()), None);
    assert_eq!(info.admins().collect::<Vec<_>>(), vec![bob.user()]);
    // Both of Alice's devices are out: neither may send.
    assert!(matches!(
        alice2_group.send_text("bye").await,
        Err(Error::NotMember)
    ));
    // The last admin leaving makes the oldest member one.
    bob_group.leave().await.expect("bob leaves");
    let info = carol_group.group_info().await.expect("info");
    assert_eq!(info.admins().collect::<Vec<_>>(), vec![carol.user()]);
}

/// Two admins change the group at once: one change names a parent the other already moved,
/// the server answers `conflict`, and its author signs it again on the new state. Both
/// changes land, in one order every device agrees on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_changes_by_two_admins_are_rebased() {
    let server = TestServer::start(config("memory:")).await;
    let (alice, _a) = user(&server, "alice").await;
    let (bob, _b) = user(&server, "bob").await;
    let (carol, _c) = user(&server, "carol").await;
    let group = alice
        .create_group(&[bob.user(), carol.user()])
        .await
        .expect("group");
    let (alice_group, bob_group) = (alice.conversation(group), bob.conversation(group));
    alice_group.promote(bob.user()).await.expect("promote");
    for _ in 0..3 {
        let (renamed, demoted) = tokio::join!(
            alice_group.rename("Alice's"),
            bob_group.set_settings(GroupSettings {
                add_members: Permission::Everyone,
                edit_name: Permission::Admins,
            }),
        );
        renamed.expect("rename");
        demoted.expect("settings");
    }
    let views = [
        alice_group.group_info().await.expect("info"),
        bob_group.group_info().await.expect("info"),
        carol.conversation(group).group_info().await.expect("info"),
    ];
    for info in &views {
        assert!(info.verified);
        assert_eq!(info.name, "Alice's");
        assert_eq!(info.settings.add_members, Permission::Everyone);
        assert_eq!(info, &views[0]);
    }
}

/// The server's change route checks what it can before it appends: the bytes, the group, the
/// actor, the signature under the key on the actor's device list; a group with a chain
/// takes no unsigned change; its chain is for members only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_takes_only_changes_that_verify() {
    let server = TestServer::start(config("memory:")).await;
    let (alice, _a) = user(&server, "alice").await;
    let (bob, _b) = user(&server, "bob").await;
    let (carol, _c) = user(&server, "carol").await;
    let group = alice.create_group(&[bob.user()]).await.expect("group");
    let login = json!({"username": "alice", "password": PASSWORD, "device_name": "script"});
    let (status, login) = http_call(server.addr, "POST", "/v1/login", None, Some(&login)).await;
    assert_eq!(status, 200);
    let token = login["token"].as_str().expect("token").to_owned();
    let changes = format!("/v1/conversations/{group}/changes");
    let (status, chain) = http_call(server.addr, "GET", &changes, Some(&token), None).await;
    assert_eq!(status, 200, "{chain}");
    let list = chain["changes"].as_array().expect("changes");
    assert_eq!(list.len(), 1, "the creation");
    assert_eq!(list[0]["seq"], 1);

    let post = |change: String| {
        let token = token.clone();
        let changes = changes.clone();
        async move {
            let body = json!({ "change": change });
            let (status, answer) =
                http_call(server.addr, "POST", &changes, Some(&token), Some(&body)).await;
            (
                status,
                answer["error"].as_str().unwrap_or_default().to_owned(),
            )
        }
    };
    let forged = |actor, group| {
        let key = AccountIdentity::from_secret(&[7; 32]);
        let op = GroupOp::Add(vec![carol.user()]);
        hex::encode(
            SignedGroupChange::sign(key.signing_key(), group, StateHash::GENESIS, actor, op)
                .encode(),
        )
    };
    let invalid = (400, "invalid_request".to_owned());
    assert_eq!(post("zz".into()).await, invalid, "not hex");
    assert_eq!(post("4701".into()).await, invalid, "not a change");
    assert_eq!(
        post(forged(alice.user(), group)).await,
        invalid,
        "bad signature"
    );
    assert_eq!(
        post(forged(bob.user(), group)).await,
        invalid,
        "another user's"
    );
    let other = alice.create_group(&[bob.user()]).await.expect("group");
    assert_eq!(
        post(forged(alice.user(), other)).await,
        invalid,
        "another group's"
    );

    // The unsigned routes of older clients are closed for a group with a chain.
    let add = json!({ "members": [carol.user()] });
    let path = format!("/v1/conversations/{group}/members");
    let (status, answer) = http_call(server.addr, "POST", &path, Some(&token), Some(&add)).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("invalid_request"))
    );
    let info = alice.conversation(group).group_info().await.expect("info");
    assert_eq!(info.role(carol.user()), None);

    // Carol is not a member: the chain is not hers to read.
    let login = json!({"username": "carol", "password": PASSWORD, "device_name": "script"});
    let (_, login) = http_call(server.addr, "POST", "/v1/login", None, Some(&login)).await;
    let carols = login["token"].as_str().expect("token");
    let (status, answer) = http_call(server.addr, "GET", &changes, Some(carols), None).await;
    assert_eq!(answer["error"].as_str(), Some("not_member"), "{status}");
    drop(carol);
}
