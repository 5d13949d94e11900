//! Conversations, membership and the member limit.

use super::*;

/// Concurrent adds at the limit never take a group past it.
pub async fn member_limit_holds_under_concurrent_adds(store: Arc<dyn Store>) {
    let creator = user(&*store).await;
    let conv = store
        .create_group(creator, &[], MAX_GROUP_MEMBERS, NOW)
        .await
        .expect("group")
        .id;
    let mut candidates = Vec::new();
    for _ in 0..MAX_GROUP_MEMBERS + 20 {
        candidates.push(user(&*store).await);
    }
    let mut tasks = JoinSet::new();
    for chunk in candidates.chunks(2) {
        let store = Arc::clone(&store);
        let chunk = chunk.to_vec();
        // A limit above the build's is capped at the build's.
        let add = GroupOp::Add(chunk);
        tasks.spawn(async move { store.change_group(conv, creator, &add, 1_000, None).await });
    }
    let (mut ok, mut full) = (0, 0);
    while let Some(result) = tasks.join_next().await {
        match result.expect("task") {
            Ok(_) => ok += 1,
            Err(StoreError::GroupFull { limit }) => {
                assert_eq!(limit, MAX_GROUP_MEMBERS);
                full += 1;
            }
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    // Pairs all-or-nothing: 49 pairs fit beside the creator, then one slot stays free.
    assert_eq!((ok, full), (49, 11));
    assert_eq!(store.members(conv).await.expect("members").len(), 99);
    let last = candidates.last().copied().expect("candidate");
    if store.is_member(conv, last).await.expect("is member") {
        let remove = GroupOp::Remove(last);
        store
            .change_group(conv, creator, &remove, MAX_GROUP_MEMBERS, None)
            .await
            .expect("remove");
    }
    let mut tasks = JoinSet::new();
    for &u in &candidates {
        let store = Arc::clone(&store);
        let add = GroupOp::Add(vec![u]);
        tasks.spawn(async move {
            store
                .change_group(conv, creator, &add, MAX_GROUP_MEMBERS, None)
                .await
        });
    }
    while let Some(result) = tasks.join_next().await {
        let _ = result.expect("task");
    }
    assert_eq!(
        store.members(conv).await.expect("members").len(),
        MAX_GROUP_MEMBERS
    );
}

/// Group creation and adds refuse going past the limit as a whole; adding existing
/// members is a no-op; one-to-one membership is fixed.
pub async fn member_limit_is_all_or_nothing(store: Arc<dyn Store>) {
    let mut users = Vec::new();
    for _ in 0..6 {
        users.push(user(&*store).await);
    }
    let too_many = store.create_group(users[0], &users[1..], 5, NOW).await;
    assert!(
        matches!(too_many, Err(StoreError::GroupFull { limit: 5 })),
        "{too_many:?}"
    );
    let conv = store
        .create_group(users[0], &users[1..3], 5, NOW)
        .await
        .expect("group");
    assert_eq!(conv.kind, ConversationKind::Group);
    let add = |users: &[UserId]| GroupOp::Add(users.to_vec());
    let err = store
        .change_group(conv.id, users[0], &add(&users[3..6]), 5, None)
        .await;
    assert!(
        matches!(err, Err(StoreError::GroupFull { limit: 5 })),
        "{err:?}"
    );
    assert_eq!(
        store.members(conv.id).await.expect("members"),
        users[..3].to_vec()
    );
    store
        .change_group(
            conv.id,
            users[0],
            &add(&[users[1], users[3], users[3], users[4]]),
            5,
            None,
        )
        .await
        .expect("add");
    assert_eq!(
        store.members(conv.id).await.expect("members"),
        users[..5].to_vec()
    );
    let ghost = UserId::new(MAX_ID).expect("id");
    assert!(matches!(
        store
            .change_group(conv.id, users[0], &add(&[ghost]), 100, None)
            .await,
        Err(StoreError::NotFound)
    ));
    let direct = store
        .open_direct(users[0], users[1], NOW)
        .await
        .expect("direct");
    let err = store
        .change_group(direct.id, users[0], &add(&[users[2]]), 100, None)
        .await;
    assert!(matches!(err, Err(StoreError::Invalid(_))), "{err:?}");
    let err = store
        .change_group(direct.id, users[0], &GroupOp::Remove(users[1]), 100, None)
        .await;
    assert!(matches!(err, Err(StoreError::Invalid(_))), "{err:?}");
    assert!(matches!(
        store.group(direct.id).await,
        Err(StoreError::Invalid(_))
    ));
}

/// The stored group follows chat-core's rules: the creator is the admin, a member may not
/// remove others or change settings, roles and settings are stored and read back, the last
/// admin leaving promotes the oldest member, and a refusal writes nothing.
pub async fn group_roles_and_settings_follow_the_rules(store: Arc<dyn Store>) {
    let (conv, users, _) = group(&*store, 3, 1).await;
    let late = user(&*store).await;
    let limit = MAX_GROUP_MEMBERS;
    let state = store.group(conv).await.expect("group");
    assert_eq!(state.role(users[0]), Some(Role::Admin));
    assert_eq!(state.role(users[1]), Some(Role::Member));
    assert_eq!(state.name(), chat_core::DEFAULT_GROUP_NAME);
    assert_eq!(state.settings(), GroupSettings::default());

    // A member may neither remove another nor add (admins add, by default).
    let err = store
        .change_group(conv, users[1], &GroupOp::Remove(users[2]), limit, None)
        .await;
    assert!(
        matches!(err, Err(StoreError::Group(GroupRuleError::NotAdmin))),
        "{err:?}"
    );
    let err = store
        .change_group(conv, users[1], &GroupOp::Add(vec![late]), limit, None)
        .await;
    assert!(
        matches!(err, Err(StoreError::Group(GroupRuleError::NotAdmin))),
        "{err:?}"
    );
    assert_eq!(store.group(conv).await.expect("group"), state);

    // Settings and names are stored.
    let open = GroupSettings {
        add_members: Permission::Everyone,
        edit_name: Permission::Admins,
    };
    store
        .change_group(conv, users[0], &GroupOp::ChangeSettings(open), limit, None)
        .await
        .expect("settings");
    store
        .change_group(conv, users[0], &GroupOp::Rename("Team".into()), limit, None)
        .await
        .expect("rename");
    store
        .change_group(conv, users[1], &GroupOp::Add(vec![late]), limit, None)
        .await
        .expect("a member adds once everyone may");
    let state = store.group(conv).await.expect("group");
    assert_eq!((state.name(), state.settings()), ("Team", open));
    assert_eq!(state.role(late), Some(Role::Member));
    assert!(store.is_member(conv, late).await.expect("is member"));

    // Promote, demote, and the last admin leaving promotes the oldest member.
    store
        .change_group(conv, users[0], &GroupOp::Promote(users[2]), limit, None)
        .await
        .expect("promote");
    store
        .change_group(conv, users[2], &GroupOp::Demote(users[0]), limit, None)
        .await
        .expect("demote");
    let state = store
        .change_group(conv, users[2], &GroupOp::Leave, limit, None)
        .await
        .expect("leave");
    // users[0] and users[1] joined at creation; users[0] has the lower ID.
    assert_eq!(state.admins().collect::<Vec<_>>(), vec![users[0]]);
    assert_eq!(store.group(conv).await.expect("group"), state);
    assert!(!store.is_member(conv, users[2]).await.expect("is member"));
    let err = store
        .change_group(conv, users[2], &GroupOp::Leave, limit, None)
        .await;
    assert!(
        matches!(err, Err(StoreError::Group(GroupRuleError::NotMember))),
        "{err:?}"
    );
}

/// One direct conversation per pair, the same from both sides, even when opened at once.
pub async fn direct_conversation_is_one_per_pair_concurrently(store: Arc<dyn Store>) {
    let a = user(&*store).await;
    let b = user(&*store).await;
    let mut tasks = JoinSet::new();
    for i in 0..16 {
        let store = Arc::clone(&store);
        let (x, y) = if i % 2 == 0 { (a, b) } else { (b, a) };
        tasks.spawn(async move { store.open_direct(x, y, NOW).await.expect("open") });
    }
    let mut ids = BTreeSet::new();
    while let Some(conv) = tasks.join_next().await {
        let conv = conv.expect("task");
        assert_eq!(conv.kind, ConversationKind::Direct);
        ids.insert(conv.id);
    }
    assert_eq!(ids.len(), 1);
    let id = ids.first().copied().expect("one ID");
    let mut both = vec![a, b];
    both.sort();
    assert_eq!(store.members(id).await.expect("members"), both);
    let c = user(&*store).await;
    assert_ne!(store.open_direct(a, c, NOW).await.expect("open").id, id);
    let ghost = UserId::new(MAX_ID).expect("id");
    assert!(matches!(
        store.open_direct(a, ghost, NOW).await,
        Err(StoreError::NotFound)
    ));
}

/// Conversation records, membership queries and listings.
pub async fn conversation_records(store: Arc<dyn Store>) {
    let (conv, users, all) = group(&*store, 3, 1).await;
    let record = conversation_record(&*store, conv).await;
    assert_eq!(
        (record.id, record.kind, record.created_at),
        (conv, ConversationKind::Group, NOW)
    );
    assert_eq!(record.last_message, None);
    assert!(store.is_member(conv, users[1]).await.expect("is member"));
    let outsider = user(&*store).await;
    assert!(!store.is_member(conv, outsider).await.expect("is member"));
    let direct = store
        .open_direct(users[0], users[1], NOW)
        .await
        .expect("direct")
        .id;
    let listed: Vec<_> = store.conversations_of(users[0]).await.expect("list");
    let mut expected = vec![conv, direct];
    expected.sort();
    assert_eq!(listed.iter().map(|c| c.id).collect::<Vec<_>>(), expected);
    assert_eq!(
        store.conversations_of(users[2]).await.expect("list").len(),
        1
    );
    store
        .append(message(conv, all[0], &all[1..]))
        .await
        .expect("append");
    let record = conversation_record(&*store, conv).await;
    assert_eq!(record.last_message, Some(mid(1)));
    let ghost = ConversationId::new(MAX_ID).expect("id");
    assert_eq!(store.conversation(ghost).await.expect("conversation"), None);
    assert!(matches!(
        store.members(ghost).await,
        Err(StoreError::NotFound)
    ));
    assert!(!store.is_member(ghost, users[0]).await.expect("is member"));
}
