//! A group's chain of signed changes (issue 17): what `change_group` checks on the signed
//! path, what it refuses on the unsigned one, and `group_changes`.

use super::*;

/// The parent of a group's first signed change.
const GENESIS: [u8; 32] = [0; 32];

/// A signed change on `parent` leading to a fresh head, carrying `what` as its bytes.
fn link(parent: [u8; 32], what: &str) -> ChainLink {
    let mut head = [0xc0; 32];
    head[..8].copy_from_slice(&unique().to_be_bytes());
    ChainLink {
        parent,
        head,
        change: Bytes::from(format!("signed {what} on {parent:02x?}")),
    }
}

/// The chain's changes, all of them.
async fn chain(store: &dyn Store, conv: ConversationId) -> Vec<(u64, Bytes)> {
    store
        .group_changes(conv, 0, usize::MAX)
        .await
        .expect("group changes")
}

/// The `Create` that gives a group made by `create_group(creator, others, …)`.
fn creation(others: &[UserId]) -> GroupOp {
    GroupOp::Create {
        name: chat_core::DEFAULT_GROUP_NAME.into(),
        members: others.to_vec(),
        settings: GroupSettings::default(),
    }
}

/// A group of `users` users (one device each) whose chain was started by its creator's
/// signed creation; returns it, its users and the chain's head.
async fn chained_group(store: &dyn Store, users: usize) -> (ConversationId, Vec<UserId>, [u8; 32]) {
    let (conv, users, _) = group(store, users, 1).await;
    let create = link(GENESIS, "create");
    store
        .change_group(
            conv,
            users[0],
            &creation(&users[1..]),
            MAX_GROUP_MEMBERS,
            Some(&create),
        )
        .await
        .expect("signed creation");
    (conv, users, create.head)
}

/// A group's chain starts with a signed creation that gives exactly the group as it is;
/// one that does not (other members, name or settings, another creator), a first signed
/// change that is not a creation, and a second creation are refused and change nothing.
pub async fn signed_creation_must_match_the_group(store: Arc<dyn Store>) {
    let (conv, users, _) = group(&*store, 3, 1).await;
    let limit = MAX_GROUP_MEMBERS;
    let before = store.group(conv).await.expect("group");
    assert_eq!(chain(&*store, conv).await, Vec::new());

    let renamed = GroupOp::Create {
        name: "Other".into(),
        members: users[1..].to_vec(),
        settings: GroupSettings::default(),
    };
    let open = GroupOp::Create {
        name: chat_core::DEFAULT_GROUP_NAME.into(),
        members: users[1..].to_vec(),
        settings: GroupSettings {
            add_members: Permission::Everyone,
            edit_name: Permission::Everyone,
        },
    };
    let mismatches = [
        (users[0], creation(&users[1..2])),
        (users[0], renamed),
        (users[0], open),
        (users[1], creation(&[users[0], users[2]])),
    ];
    for (actor, op) in &mismatches {
        let err = store
            .change_group(conv, *actor, op, limit, Some(&link(GENESIS, "bad create")))
            .await;
        assert!(
            matches!(
                err,
                Err(StoreError::Invalid(
                    "a signed creation must match the group as created"
                ))
            ),
            "{op:?}: {err:?}"
        );
    }
    let rename = GroupOp::Rename("Team".into());
    let err = store
        .change_group(
            conv,
            users[0],
            &rename,
            limit,
            Some(&link(GENESIS, "rename")),
        )
        .await;
    assert!(
        matches!(
            err,
            Err(StoreError::Invalid(
                "a group's first signed change is its creation"
            ))
        ),
        "{err:?}"
    );
    assert_eq!(store.group(conv).await.expect("group"), before);
    assert_eq!(chain(&*store, conv).await, Vec::new());

    // A head of zeros would read back as no chain at all.
    let mut zero = link(GENESIS, "create");
    zero.head = GENESIS;
    let err = store
        .change_group(conv, users[0], &creation(&users[1..]), limit, Some(&zero))
        .await;
    assert!(matches!(err, Err(StoreError::Invalid(_))), "{err:?}");

    let create = link(GENESIS, "create");
    let state = store
        .change_group(conv, users[0], &creation(&users[1..]), limit, Some(&create))
        .await
        .expect("matching creation");
    assert_eq!(state, before);
    assert_eq!(store.group(conv).await.expect("group"), before);
    assert_eq!(chain(&*store, conv).await, vec![(1, create.change.clone())]);

    // Once started, a creation is stale on the genesis parent and refused by the rules on
    // the head.
    let err = store
        .change_group(
            conv,
            users[0],
            &creation(&users[1..]),
            limit,
            Some(&link(GENESIS, "create again")),
        )
        .await;
    assert!(matches!(err, Err(StoreError::StaleGroupChange)), "{err:?}");
    let err = store
        .change_group(
            conv,
            users[0],
            &creation(&users[1..]),
            limit,
            Some(&link(create.head, "create again")),
        )
        .await;
    assert!(
        matches!(err, Err(StoreError::Group(GroupRuleError::AlreadyCreated))),
        "{err:?}"
    );
    assert_eq!(chain(&*store, conv).await, vec![(1, create.change)]);
}

/// A signed change whose parent is not the stored head is stale and changes nothing.
pub async fn stale_group_change_changes_nothing(store: Arc<dyn Store>) {
    let (conv, users, head) = chained_group(&*store, 3).await;
    let limit = MAX_GROUP_MEMBERS;
    let late = user(&*store).await;
    let before = store.group(conv).await.expect("group");
    let chained = chain(&*store, conv).await;
    let stale_parents = [GENESIS, link(head, "elsewhere").head];
    for parent in stale_parents {
        for op in [
            GroupOp::Add(vec![late]),
            GroupOp::Remove(users[2]),
            GroupOp::Rename("Team".into()),
        ] {
            let err = store
                .change_group(conv, users[0], &op, limit, Some(&link(parent, "stale")))
                .await;
            assert!(
                matches!(err, Err(StoreError::StaleGroupChange)),
                "{op:?}: {err:?}"
            );
        }
    }
    assert_eq!(store.group(conv).await.expect("group"), before);
    assert!(!store.is_member(conv, late).await.expect("is member"));
    assert_eq!(chain(&*store, conv).await, chained);
}

/// A chain of signed changes is kept in order, numbered from 1, and paged with `after` and
/// `limit`; the member list moves with it.
pub async fn group_chain_pages_in_order(store: Arc<dyn Store>) {
    let (conv, users, mut head) = chained_group(&*store, 2).await;
    let limit = MAX_GROUP_MEMBERS;
    let (c, d) = (user(&*store).await, user(&*store).await);
    let ops = [
        (users[0], GroupOp::Rename("Team".into())),
        (users[0], GroupOp::Add(vec![c, d])),
        (users[0], GroupOp::Promote(c)),
        (c, GroupOp::Remove(users[1])),
        (d, GroupOp::Leave),
    ];
    let mut expected = chain(&*store, conv).await;
    let mut state = store.group(conv).await.expect("group");
    for (actor, op) in &ops {
        let next = link(head, &format!("{op:?}"));
        state = store
            .change_group(conv, *actor, op, limit, Some(&next))
            .await
            .expect("signed change");
        head = next.head;
        expected.push((expected.len() as u64 + 1, next.change));
    }
    assert_eq!(store.group(conv).await.expect("group"), state);
    assert_eq!(state.name(), "Team");
    let mut members = vec![users[0], c];
    members.sort();
    assert_eq!(store.members(conv).await.expect("members"), members);
    assert_eq!(state.role(c), Some(Role::Admin));

    let all = chain(&*store, conv).await;
    assert_eq!(all, expected);
    assert_eq!(
        all.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
        (1..=6).collect::<Vec<_>>()
    );
    let page = |after, limit| {
        let store = Arc::clone(&store);
        async move {
            store
                .group_changes(conv, after, limit)
                .await
                .expect("group changes")
        }
    };
    assert_eq!(page(2, 2).await, expected[2..4].to_vec());
    assert_eq!(page(4, 10).await, expected[4..].to_vec());
    assert_eq!(page(0, 1).await, expected[..1].to_vec());
    assert_eq!(page(6, 10).await, Vec::new());
    assert_eq!(page(u64::MAX, 10).await, Vec::new());
    assert_eq!(page(0, 0).await, Vec::new());
    // Paging from 0 in pages of 4 reads the whole chain once.
    let mut read = page(0, 4).await;
    let last = read.last().map(|(seq, _)| *seq).expect("a page");
    read.extend(page(last, 4).await);
    assert_eq!(read, expected);
}

/// An unsigned change is refused, changing nothing, once a group has a chain; a group
/// without one still takes it.
pub async fn unsigned_change_is_refused_once_chained(store: Arc<dyn Store>) {
    let limit = MAX_GROUP_MEMBERS;
    let (plain, plain_users, _) = group(&*store, 2, 1).await;
    let state = store
        .change_group(
            plain,
            plain_users[0],
            &GroupOp::Rename("Plain".into()),
            limit,
            None,
        )
        .await
        .expect("unsigned change on a group without a chain");
    assert_eq!(state.name(), "Plain");
    assert_eq!(chain(&*store, plain).await, Vec::new());

    let (conv, users, _) = chained_group(&*store, 2).await;
    let late = user(&*store).await;
    let before = store.group(conv).await.expect("group");
    let chained = chain(&*store, conv).await;
    for op in [
        GroupOp::Rename("Unsigned".into()),
        GroupOp::Add(vec![late]),
        GroupOp::Add(vec![users[1]]),
        GroupOp::Remove(users[1]),
    ] {
        let err = store.change_group(conv, users[0], &op, limit, None).await;
        assert!(
            matches!(err, Err(StoreError::UnsignedGroupChange)),
            "{op:?}: {err:?}"
        );
    }
    let err = store
        .change_group(conv, users[1], &GroupOp::Leave, limit, None)
        .await;
    assert!(
        matches!(err, Err(StoreError::UnsignedGroupChange)),
        "{err:?}"
    );
    assert_eq!(store.group(conv).await.expect("group"), before);
    assert_eq!(chain(&*store, conv).await, chained);
}

/// The signed path applies the group rules strictly: an add naming a member or a user
/// twice is refused (the unsigned path skips members), an unknown user is not found, and
/// the deployment's limit holds; each refusal changes nothing.
pub async fn signed_changes_follow_the_rules_strictly(store: Arc<dyn Store>) {
    let (conv, users, head) = chained_group(&*store, 3).await;
    let late = user(&*store).await;
    let before = store.group(conv).await.expect("group");
    let chained = chain(&*store, conv).await;
    let ghost = UserId::new(MAX_ID).expect("id");
    let rule = StoreError::Group;
    let refusals = [
        (
            users[0],
            GroupOp::Add(vec![users[1]]),
            MAX_GROUP_MEMBERS,
            rule(GroupRuleError::AlreadyMember(users[1])),
        ),
        (
            users[0],
            GroupOp::Add(vec![late, users[2]]),
            MAX_GROUP_MEMBERS,
            rule(GroupRuleError::AlreadyMember(users[2])),
        ),
        (
            users[0],
            GroupOp::Add(vec![late, late]),
            MAX_GROUP_MEMBERS,
            rule(GroupRuleError::Duplicate(late)),
        ),
        (
            users[0],
            GroupOp::Add(vec![late, ghost]),
            MAX_GROUP_MEMBERS,
            StoreError::NotFound,
        ),
        (
            users[1],
            GroupOp::Add(vec![late]),
            MAX_GROUP_MEMBERS,
            rule(GroupRuleError::NotAdmin),
        ),
        (
            users[0],
            GroupOp::Add(vec![late]),
            3,
            StoreError::GroupFull { limit: 3 },
        ),
    ];
    for (actor, op, limit, expected) in &refusals {
        let err = store
            .change_group(conv, *actor, op, *limit, Some(&link(head, "refused")))
            .await
            .expect_err("refused");
        // StoreError is not PartialEq (its backend variant holds any error).
        assert_eq!(format!("{err:?}"), format!("{expected:?}"), "{op:?}");
    }
    assert_eq!(store.group(conv).await.expect("group"), before);
    assert_eq!(chain(&*store, conv).await, chained);

    // The same add of a member, unsigned, on a group without a chain, is skipped.
    let (plain, plain_users, _) = group(&*store, 2, 1).await;
    let state = store
        .change_group(
            plain,
            plain_users[0],
            &GroupOp::Add(vec![plain_users[1]]),
            MAX_GROUP_MEMBERS,
            None,
        )
        .await
        .expect("lenient unsigned add");
    assert_eq!(state, store.group(plain).await.expect("group"));

    let next = link(head, "add late");
    let state = store
        .change_group(
            conv,
            users[0],
            &GroupOp::Add(vec![late]),
            MAX_GROUP_MEMBERS,
            Some(&next),
        )
        .await
        .expect("signed add");
    assert_eq!(state.role(late), Some(Role::Member));
    assert_eq!(chain(&*store, conv).await.len(), 2);
}

/// Signed changes racing on one parent: exactly one wins, every other is stale, and the
/// chain and the member list agree afterwards, round after round.
pub async fn concurrent_signed_changes_on_one_parent_one_wins(store: Arc<dyn Store>) {
    const RACERS: usize = 8;
    const ROUNDS: usize = 3;
    let (conv, users, mut head) = chained_group(&*store, 1).await;
    let creator = users[0];
    for round in 0..ROUNDS {
        let mut tasks = JoinSet::new();
        for _ in 0..RACERS {
            let store = Arc::clone(&store);
            let candidate = user(&*store).await;
            let next = link(head, &format!("round {round} add {candidate:?}"));
            tasks.spawn(async move {
                let add = GroupOp::Add(vec![candidate]);
                let result = store
                    .change_group(conv, creator, &add, MAX_GROUP_MEMBERS, Some(&next))
                    .await;
                (candidate, next, result)
            });
        }
        let mut winners = Vec::new();
        let mut stale = 0;
        while let Some(joined) = tasks.join_next().await {
            let (candidate, next, result) = joined.expect("task");
            match result {
                Ok(_) => winners.push((candidate, next)),
                Err(StoreError::StaleGroupChange) => stale += 1,
                Err(e) => panic!("unexpected {e:?}"),
            }
        }
        assert_eq!((winners.len(), stale), (1, RACERS - 1), "round {round}");
        let (winner, next) = winners.pop().expect("a winner");
        let all = chain(&*store, conv).await;
        assert_eq!(all.len(), round + 2);
        assert_eq!(all.last(), Some(&(round as u64 + 2, next.change)));
        let members = store.members(conv).await.expect("members");
        // The creator plus one member per signed add: the chain minus its creation.
        assert_eq!(members.len(), all.len());
        assert!(members.contains(&winner));
        head = next.head;
    }
}

/// `group_changes` and signed changes of a one-to-one conversation are `Invalid`, of an
/// unknown conversation `NotFound`.
pub async fn group_changes_need_a_group(store: Arc<dyn Store>) {
    let (a, b) = (user(&*store).await, user(&*store).await);
    let direct = store.open_direct(a, b, NOW).await.expect("direct").id;
    let err = store.group_changes(direct, 0, 10).await;
    assert!(matches!(err, Err(StoreError::Invalid(_))), "{err:?}");
    let err = store
        .change_group(
            direct,
            a,
            &creation(&[b]),
            MAX_GROUP_MEMBERS,
            Some(&link(GENESIS, "create")),
        )
        .await;
    assert!(matches!(err, Err(StoreError::Invalid(_))), "{err:?}");
    let ghost = ConversationId::new(MAX_ID).expect("id");
    let err = store.group_changes(ghost, 0, 10).await;
    assert!(matches!(err, Err(StoreError::NotFound)), "{err:?}");
    let err = store
        .change_group(
            ghost,
            a,
            &GroupOp::Rename("Team".into()),
            MAX_GROUP_MEMBERS,
            Some(&link(GENESIS, "rename")),
        )
        .await;
    assert!(matches!(err, Err(StoreError::NotFound)), "{err:?}");
}

/// Two groups made before a migration that adds chains (see
/// [`groups_made_before_chains_still_change`]).
#[derive(Debug, Clone, Copy)]
pub struct GroupsBeforeChains {
    a: UserId,
    b: UserId,
    renamed: ConversationId,
    signed: ConversationId,
}

/// Makes two groups, before a test takes the schema back to a version without chains.
pub async fn groups_before_chains(store: &dyn Store) -> GroupsBeforeChains {
    let a = user(store).await;
    let b = user(store).await;
    let group = |creator, other| async move {
        store
            .create_group(creator, &[other], 100, NOW)
            .await
            .expect("group")
            .id
    };
    let renamed = group(a, b).await;
    let signed = group(b, a).await;
    GroupsBeforeChains {
        a,
        b,
        renamed,
        signed,
    }
}

/// After the migration, the groups have no chain: an unsigned change still applies to one,
/// and a signed creation starts the other's chain.
pub async fn groups_made_before_chains_still_change(store: &dyn Store, g: GroupsBeforeChains) {
    for conv in [g.renamed, g.signed] {
        assert_eq!(chain(store, conv).await, Vec::new());
    }
    let state = store
        .change_group(g.renamed, g.a, &GroupOp::Rename("Team".into()), 100, None)
        .await
        .expect("an unsigned change");
    assert_eq!(state.name(), "Team");
    let first = link(GENESIS, "creation");
    store
        .change_group(g.signed, g.b, &creation(&[g.a]), 100, Some(&first))
        .await
        .expect("a signed creation starts the chain");
    assert_eq!(chain(store, g.signed).await, vec![(1, first.change)]);
}
