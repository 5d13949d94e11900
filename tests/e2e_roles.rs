//! Group administration through the SDK (issue 17, item 4): a named group, admins and
//! members, what a member may not do, promotion, renaming, settings, a removal, leaving and
//! a rejoin, seen from several devices.

mod common;

use chat::client::{Error, ErrorCode, GroupAction, GroupSettings, Permission, Role};
use common::{TestServer, config, device, next_change, next_text, synced, user};

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
    for events in [&mut a2, &mut b, &mut c] {
        let change = next_change(events, group).await;
        assert_eq!(change.action, GroupAction::Created);
        assert_eq!(change.name.as_deref(), Some("Trip"));
    }
    let info = bob.group_info(group).await.expect("info");
    assert_eq!(info.name, "Trip");
    assert_eq!(info.admins().collect::<Vec<_>>(), vec![alice.user()]);
    assert_eq!(info.role(carol.user()), Some(Role::Member));
    assert_eq!(info.members.len(), 3);

    // A member may not remove others, nor add under the default settings.
    let refused = bob
        .remove_member(group, carol.user())
        .await
        .expect_err("member");
    assert_eq!(refused.code(), Some(ErrorCode::Forbidden), "{refused:?}");
    let refused = bob
        .add_members(group, &[dave.user()])
        .await
        .expect_err("member");
    assert_eq!(refused.code(), Some(ErrorCode::Forbidden), "{refused:?}");

    // Alice makes Bob an admin; now he may remove Carol.
    alice.promote(group, bob.user()).await.expect("promote");
    for events in [&mut a2, &mut b] {
        let change = next_change(events, group).await;
        assert_eq!(
            (change.action, change.users.clone()),
            (GroupAction::Promoted, vec![bob.user()])
        );
    }
    bob.remove_member(group, carol.user())
        .await
        .expect("an admin removes");
    assert!(matches!(
        carol.send_text(group, "still here?").await,
        Err(Error::NotMember)
    ));

    // Anyone may rename under the default settings; then only admins may.
    bob.rename(group, "Trip 2026").await.expect("rename");
    alice
        .set_group_settings(
            group,
            GroupSettings {
                add_members: Permission::Admins,
                edit_name: Permission::Admins,
            },
        )
        .await
        .expect("settings");
    let info = alice2.group_info(group).await.expect("info");
    assert_eq!(info.name, "Trip 2026");
    assert_eq!(info.settings.edit_name, Permission::Admins);

    // Carol is added back and reads what is sent after; Alice leaves, Bob stays admin.
    bob.add_members(group, &[carol.user()])
        .await
        .expect("rejoin");
    bob.send_text(group, "welcome back").await.expect("send");
    assert_eq!(next_text(&mut c, group).await.text(), Some("welcome back"));
    alice.leave(group).await.expect("leave");
    let info = bob.group_info(group).await.expect("info");
    assert_eq!(info.role(alice.user()), None);
    assert_eq!(info.admins().collect::<Vec<_>>(), vec![bob.user()]);
    // Both of Alice's devices are out: neither may send.
    assert!(matches!(
        alice2.send_text(group, "bye").await,
        Err(Error::NotMember)
    ));
    // The last admin leaving makes the oldest member one.
    bob.leave(group).await.expect("bob leaves");
    let info = carol.group_info(group).await.expect("info");
    assert_eq!(info.admins().collect::<Vec<_>>(), vec![carol.user()]);
}
