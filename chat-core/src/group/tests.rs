// The reference model indexes positions it has just found; a panic here is a test failure.
#![allow(clippy::indexing_slicing)]

use proptest::prelude::*;

use super::*;

fn u(n: u64) -> UserId {
    UserId::new(n).unwrap()
}

fn group(creator: u64, others: &[u64]) -> GroupState {
    let others: Vec<_> = others.iter().map(|n| u(*n)).collect();
    GroupState::create(u(creator), "g", &others, GroupSettings::default()).unwrap()
}

#[test]
fn creator_is_the_only_admin() {
    let g = group(1, &[2, 3]);
    assert_eq!(g.role(u(1)), Some(Role::Admin));
    assert_eq!(g.role(u(2)), Some(Role::Member));
    assert_eq!(g.admins().collect::<Vec<_>>(), vec![u(1)]);
    assert_eq!(g.len(), 3);
}

#[test]
fn only_admins_remove_others() {
    let g = group(1, &[2, 3]);
    assert_eq!(
        g.apply(u(2), &GroupOp::Remove(u(3))),
        Err(GroupRuleError::NotAdmin)
    );
    let g = g.apply(u(1), &GroupOp::Remove(u(3))).unwrap();
    assert!(!g.is_member(u(3)));
    assert_eq!(
        g.apply(u(1), &GroupOp::Remove(u(1))),
        Err(GroupRuleError::SelfRemoval)
    );
    assert_eq!(
        g.apply(u(4), &GroupOp::Leave),
        Err(GroupRuleError::NotMember)
    );
}

#[test]
fn settings_let_members_add_and_rename() {
    let g = group(1, &[2]);
    assert_eq!(
        g.apply(u(2), &GroupOp::Add(vec![u(5)])),
        Err(GroupRuleError::NotAdmin)
    );
    assert!(g.apply(u(2), &GroupOp::Rename("x".into())).is_ok());
    let open = GroupSettings {
        add_members: Permission::Everyone,
        edit_name: Permission::Admins,
    };
    assert_eq!(
        g.apply(u(2), &GroupOp::ChangeSettings(open)),
        Err(GroupRuleError::NotAdmin)
    );
    let g = g.apply(u(1), &GroupOp::ChangeSettings(open)).unwrap();
    assert!(g.apply(u(2), &GroupOp::Add(vec![u(5)])).is_ok());
    assert_eq!(
        g.apply(u(2), &GroupOp::Rename("x".into())),
        Err(GroupRuleError::NotAdmin)
    );
    assert_eq!(
        g.apply(u(1), &GroupOp::Rename(String::new())),
        Err(GroupRuleError::InvalidName)
    );
    assert_eq!(
        g.apply(u(1), &GroupOp::Rename("a\nb".into())),
        Err(GroupRuleError::InvalidName)
    );
}

#[test]
fn last_admin_leaving_promotes_the_oldest_member() {
    let g = group(1, &[7, 3])
        .apply(u(1), &GroupOp::Add(vec![u(2)]))
        .unwrap();
    // 3 and 7 joined at creation, 2 later: the oldest is 3 (lowest ID of the first batch).
    let g = g.apply(u(1), &GroupOp::Leave).unwrap();
    assert_eq!(g.admins().collect::<Vec<_>>(), vec![u(3)]);
    let g = g.apply(u(3), &GroupOp::Leave).unwrap();
    assert_eq!(g.admins().collect::<Vec<_>>(), vec![u(7)]);
    let g = g.apply(u(7), &GroupOp::Leave).unwrap();
    assert_eq!(g.admins().collect::<Vec<_>>(), vec![u(2)]);
    let g = g.apply(u(2), &GroupOp::Leave).unwrap();
    assert!(g.is_empty());
}

#[test]
fn the_last_admin_cannot_be_demoted_and_roles_must_change() {
    let g = group(1, &[2]);
    assert_eq!(
        g.apply(u(1), &GroupOp::Demote(u(1))),
        Err(GroupRuleError::LastAdmin)
    );
    assert_eq!(
        g.apply(u(1), &GroupOp::Promote(u(1))),
        Err(GroupRuleError::SameRole)
    );
    let g = g.apply(u(1), &GroupOp::Promote(u(2))).unwrap();
    let g = g.apply(u(2), &GroupOp::Demote(u(1))).unwrap();
    assert_eq!(g.admins().collect::<Vec<_>>(), vec![u(2)]);
    assert_eq!(
        g.apply(u(1), &GroupOp::Promote(u(1))),
        Err(GroupRuleError::NotAdmin)
    );
}

#[test]
fn the_member_limit_holds() {
    let full: Vec<_> = (2..=MAX_GROUP_MEMBERS as u64).collect();
    let g = group(1, &full);
    assert_eq!(g.len(), MAX_GROUP_MEMBERS);
    assert_eq!(
        g.apply(u(1), &GroupOp::Add(vec![u(1000)])),
        Err(GroupRuleError::TooManyMembers)
    );
    let over: Vec<_> = (2..=MAX_GROUP_MEMBERS as u64 + 1).map(u).collect();
    assert_eq!(
        GroupState::create(u(1), "g", &over, GroupSettings::default()),
        Err(GroupRuleError::TooManyMembers)
    );
}

#[test]
fn adds_refuse_duplicates_members_and_nobody() {
    let g = group(1, &[2]);
    assert_eq!(
        g.apply(u(1), &GroupOp::Add(vec![u(2)])),
        Err(GroupRuleError::AlreadyMember(u(2)))
    );
    assert_eq!(
        g.apply(u(1), &GroupOp::Add(vec![u(5), u(5)])),
        Err(GroupRuleError::Duplicate(u(5)))
    );
    assert_eq!(
        g.apply(u(1), &GroupOp::Add(vec![])),
        Err(GroupRuleError::NoUsers)
    );
    assert_eq!(
        GroupState::create(u(1), "g", &[u(1)], GroupSettings::default()),
        Err(GroupRuleError::AlreadyMember(u(1)))
    );
}

#[test]
fn create_only_once_and_first() {
    let op = GroupOp::Create {
        name: "g".into(),
        members: vec![u(2)],
        settings: GroupSettings::default(),
    };
    let g = apply(None, u(1), &op).unwrap();
    assert_eq!(
        apply(Some(&g), u(1), &op),
        Err(GroupRuleError::AlreadyCreated)
    );
    assert_eq!(
        apply(None, u(1), &GroupOp::Leave),
        Err(GroupRuleError::NotCreated)
    );
}

#[test]
fn direct_conversations_have_no_group_operations() {
    assert_eq!(
        require_group(ConversationKind::Direct),
        Err(GroupRuleError::NotAGroup)
    );
    assert_eq!(require_group(ConversationKind::Group), Ok(()));
}

#[test]
fn from_parts_checks_the_invariants() {
    let g = group(1, &[2]);
    let members: BTreeMap<_, _> = g.members().collect();
    let rebuilt =
        GroupState::from_parts("g".into(), g.settings(), members.clone(), g.admitted()).unwrap();
    assert_eq!(rebuilt, g);
    let no_admin = members
        .iter()
        .map(|(u, m)| {
            (
                *u,
                MemberInfo {
                    role: Role::Member,
                    ..*m
                },
            )
        })
        .collect();
    assert_eq!(
        GroupState::from_parts("g".into(), g.settings(), no_admin, g.admitted()),
        Err(GroupRuleError::LastAdmin)
    );
    assert!(GroupState::from_parts("g".into(), g.settings(), members, 0).is_err());
}

/// The reference model: members in join order with an admin flag, written as plainly as
/// possible and independently of [`GroupState`].
#[derive(Debug, Clone)]
struct Model {
    /// (user, admin) in join order; a batch joins in user-ID order.
    members: Vec<(u64, bool)>,
    members_add: bool,
    members_rename: bool,
    name: String,
}

impl Model {
    fn find(&self, user: u64) -> Option<usize> {
        self.members.iter().position(|(m, _)| *m == user)
    }

    fn admin(&self, user: u64) -> bool {
        self.find(user).is_some_and(|i| self.members[i].1)
    }

    fn admins(&self) -> usize {
        self.members.iter().filter(|(_, a)| *a).count()
    }

    /// The model's verdict: the next model, or `None` if refused.
    fn apply(&self, actor: u64, op: &Op) -> Option<Self> {
        let mut next = self.clone();
        self.find(actor)?;
        let admin = self.admin(actor);
        match op {
            Op::Add(users) => {
                let mut sorted = users.clone();
                sorted.sort_unstable();
                sorted.dedup();
                if !(admin || self.members_add)
                    || users.is_empty()
                    || sorted.len() != users.len()
                    || users.iter().any(|x| self.find(*x).is_some())
                    || self.members.len() + users.len() > MAX_GROUP_MEMBERS
                {
                    return None;
                }
                next.members.extend(sorted.into_iter().map(|x| (x, false)));
            }
            Op::Remove(user) => {
                if !admin || *user == actor {
                    return None;
                }
                next.members.remove(self.find(*user)?);
            }
            Op::Leave => {
                next.members.remove(self.find(actor)?);
                if next.admins() == 0
                    && let Some(first) = next.members.first_mut()
                {
                    first.1 = true;
                }
            }
            Op::Promote(user) | Op::Demote(user) => {
                let promote = matches!(op, Op::Promote(_));
                let i = self.find(*user)?;
                if !admin || self.members[i].1 == promote {
                    return None;
                }
                next.members[i].1 = promote;
                if next.admins() == 0 {
                    return None;
                }
            }
            Op::Rename(name) => {
                if !(admin || self.members_rename) || name.is_empty() {
                    return None;
                }
                next.name = name.clone();
            }
            Op::Settings(add, rename) => {
                if !admin {
                    return None;
                }
                next.members_add = *add;
                next.members_rename = *rename;
            }
        }
        Some(next)
    }
}

#[derive(Debug, Clone)]
enum Op {
    Add(Vec<u64>),
    Remove(u64),
    Leave,
    Promote(u64),
    Demote(u64),
    Rename(String),
    Settings(bool, bool),
}

fn permission(everyone: bool) -> Permission {
    if everyone {
        Permission::Everyone
    } else {
        Permission::Admins
    }
}

impl Op {
    fn real(&self) -> GroupOp {
        match self {
            Self::Add(users) => GroupOp::Add(users.iter().map(|x| u(*x)).collect()),
            Self::Remove(x) => GroupOp::Remove(u(*x)),
            Self::Leave => GroupOp::Leave,
            Self::Promote(x) => GroupOp::Promote(u(*x)),
            Self::Demote(x) => GroupOp::Demote(u(*x)),
            Self::Rename(name) => GroupOp::Rename(name.clone()),
            Self::Settings(add, rename) => GroupOp::ChangeSettings(GroupSettings {
                add_members: permission(*add),
                edit_name: permission(*rename),
            }),
        }
    }
}

/// Users 1..=130: enough to pass the limit with a few big adds, few enough that actors and
/// targets often hit members.
fn user() -> impl Strategy<Value = u64> {
    prop_oneof![1..=6u64, 1..=130u64]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => prop::collection::vec(user(), 0..40).prop_map(Op::Add),
        2 => user().prop_map(Op::Remove),
        2 => Just(Op::Leave),
        2 => user().prop_map(Op::Promote),
        2 => user().prop_map(Op::Demote),
        1 => prop_oneof![Just(String::new()), "[a-z]{1,8}"].prop_map(Op::Rename),
        1 => (any::<bool>(), any::<bool>()).prop_map(|(a, r)| Op::Settings(a, r)),
    ]
}

proptest! {
    /// Any sequence of operations by any actors: the rules agree with the model on which
    /// succeed (so only allowed actors succeed), and every state keeps at most the member
    /// limit and an admin while non-empty.
    #[test]
    fn operations_follow_the_model(
        initial in prop::collection::btree_set(2..=20u64, 0..6),
        steps in prop::collection::vec((user(), op()), 1..80),
    ) {
        let initial: Vec<u64> = initial.into_iter().collect();
        let mut state = group(1, &initial);
        let mut model = Model {
            members: std::iter::once((1, true))
                .chain(initial.iter().map(|x| (*x, false)))
                .collect(),
            members_add: false,
            members_rename: true,
            name: "g".into(),
        };
        for (actor, op) in steps {
            let expected = model.apply(actor, &op);
            let got = state.apply(u(actor), &op.real());
            prop_assert_eq!(expected.is_some(), got.is_ok(), "{:?} by {}: {:?}", op, actor, got);
            if let (Some(m), Ok(s)) = (expected, got) {
                model = m;
                state = s;
            }
            prop_assert!(state.len() <= MAX_GROUP_MEMBERS);
            prop_assert!(state.is_empty() || state.admins().next().is_some());
            let mut want: Vec<(UserId, Role)> = model
                .members
                .iter()
                .map(|(x, a)| (u(*x), if *a { Role::Admin } else { Role::Member }))
                .collect();
            want.sort();
            let have: Vec<(UserId, Role)> = state.members().map(|(x, m)| (x, m.role)).collect();
            prop_assert_eq!(have, want);
            prop_assert_eq!(state.name(), model.name.as_str());
        }
    }
}
