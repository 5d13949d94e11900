// Tests index fixed test data; a panic here is a test failure.
#![allow(clippy::indexing_slicing)]

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

fn u(n: u64) -> UserId {
    UserId::new(n).unwrap()
}

fn gid(n: u64) -> ConversationId {
    ConversationId::new(n).unwrap()
}

/// Account keys for users 1..=9 (seed = the user number).
struct Keys(BTreeMap<UserId, SigningKey>);

impl Keys {
    fn new() -> Self {
        Self(
            (1..=9u8)
                .map(|n| (u(u64::from(n)), SigningKey::from_bytes(&[n; 32])))
                .collect(),
        )
    }

    fn of(&self, user: u64) -> &SigningKey {
        &self.0[&u(user)]
    }

    fn lookup(&self) -> impl Fn(UserId) -> Option<VerifyingKey> + '_ {
        |user| self.0.get(&user).map(SigningKey::verifying_key)
    }

    fn change(&self, actor: u64, parent: StateHash, op: GroupOp) -> SignedGroupChange {
        SignedGroupChange::sign(self.of(actor), gid(7), parent, u(actor), op)
    }
}

fn create_op(members: &[u64]) -> GroupOp {
    GroupOp::Create {
        name: "Hikers".into(),
        members: members.iter().map(|n| u(*n)).collect(),
        settings: GroupSettings::default(),
    }
}

/// Alice (1) creates the group with bob (2) and carol (3).
fn created(keys: &Keys) -> (VerifiedGroup, SignedGroupChange) {
    let create = keys.change(1, StateHash::GENESIS, create_op(&[2, 3]));
    let group = VerifiedGroup::create(&create, &keys.lookup()).unwrap();
    (group, create)
}

#[test]
fn a_chain_verifies_from_creation_for_a_later_device() {
    let keys = Keys::new();
    let (g0, create) = created(&keys);
    assert_eq!(g0.state().role(u(1)), Some(Role::Admin));
    assert_eq!(g0.epoch(), 1);
    let add = keys.change(1, g0.hash(), GroupOp::Add(vec![u(4)]));
    let g1 = g0.apply(&add, &keys.lookup()).unwrap();
    let promote = keys.change(1, g1.hash(), GroupOp::Promote(u(4)));
    let g2 = g1.apply(&promote, &keys.lookup()).unwrap();
    let rename = keys.change(3, g2.hash(), GroupOp::Rename("Climbers".into()));
    let g3 = g2.apply(&rename, &keys.lookup()).unwrap();
    assert_eq!(g3.state().name(), "Climbers");
    assert_eq!(g3.epoch(), 4);

    let chain = vec![create, add, promote, rename];
    let bytes = encode_chain(&chain);
    let decoded = decode_chain(&bytes).unwrap();
    assert_eq!(decoded, chain);
    let later = VerifiedGroup::from_chain(&decoded, &keys.lookup()).unwrap();
    assert_eq!(later, g3);
}

#[test]
fn a_pickle_keeps_the_group_and_refuses_bad_bytes() {
    let keys = Keys::new();
    let (g0, _) = created(&keys);
    let add = keys.change(1, g0.hash(), GroupOp::Add(vec![u(4), u(5)]));
    let g1 = g0.apply(&add, &keys.lookup()).unwrap();
    let pickle = g1.pickle();
    let back = VerifiedGroup::unpickle(&pickle).unwrap();
    assert_eq!(back, g1);
    // The next change applies to the restored group as to the original.
    let leave = keys.change(4, g1.hash(), GroupOp::Leave);
    assert_eq!(
        back.apply(&leave, &keys.lookup()),
        g1.apply(&leave, &keys.lookup())
    );
    for cut in 0..pickle.len() {
        assert!(
            VerifiedGroup::unpickle(&pickle[..cut]).is_err(),
            "cut {cut}"
        );
    }
    let mut long = pickle.clone();
    long.push(0);
    assert!(VerifiedGroup::unpickle(&long).is_err());
    let mut wrong = pickle;
    wrong[0] = 0x47;
    assert!(VerifiedGroup::unpickle(&wrong).is_err());
}

#[test]
fn a_bad_signature_is_refused() {
    let keys = Keys::new();
    let (g, _) = created(&keys);
    // Mallory (9) signs a change claiming to be alice.
    let forged =
        SignedGroupChange::sign(keys.of(9), gid(7), g.hash(), u(1), GroupOp::Add(vec![u(9)]));
    assert_eq!(
        g.apply(&forged, &keys.lookup()),
        Err(ChainError::BadSignature)
    );
    // A valid change whose operation was altered in transit (the user ID's last byte).
    let honest = keys.change(1, g.hash(), GroupOp::Add(vec![u(4)]));
    let mut bytes = honest.encode();
    let at = bytes.len() - 64 - 1;
    bytes[at] = 9;
    let altered = SignedGroupChange::decode(&bytes).unwrap();
    assert_eq!(altered.op(), &GroupOp::Add(vec![u(9)]));
    assert_eq!(
        g.apply(&altered, &keys.lookup()),
        Err(ChainError::BadSignature)
    );
    // An actor without a known account key.
    let nobody = SignedGroupChange::sign(keys.of(1), gid(7), g.hash(), u(42), GroupOp::Leave);
    assert_eq!(
        g.apply(&nobody, &keys.lookup()),
        Err(ChainError::UnknownAccount(u(42)))
    );
}

#[test]
fn concurrent_changes_first_wins_and_the_other_is_rebased() {
    let keys = Keys::new();
    let (g, _) = created(&keys);
    let promote = keys.change(1, g.hash(), GroupOp::Promote(u(2)));
    let rename = keys.change(3, g.hash(), GroupOp::Rename("B".into()));
    // The server ordered promote first: every device applies it and refuses the rename.
    let g1 = g.apply(&promote, &keys.lookup()).unwrap();
    assert_eq!(
        g1.apply(&rename, &keys.lookup()),
        Err(ChainError::StaleParent)
    );
    // Carol re-bases her rename on the new state.
    let rebased = keys.change(3, g1.hash(), GroupOp::Rename("B".into()));
    let g2 = g1.apply(&rebased, &keys.lookup()).unwrap();
    assert_eq!(g2.state().name(), "B");
}

#[test]
fn replays_and_dropped_changes_are_refused() {
    let keys = Keys::new();
    let (g0, create) = created(&keys);
    let promote = keys.change(1, g0.hash(), GroupOp::Promote(u(2)));
    let g1 = g0.apply(&promote, &keys.lookup()).unwrap();
    let demote = keys.change(1, g1.hash(), GroupOp::Demote(u(2)));
    let g2 = g1.apply(&demote, &keys.lookup()).unwrap();
    // Equal states, different histories: different hashes, so the old promote cannot be
    // replayed on top.
    assert_eq!(g2.state(), g0.state());
    assert_ne!(g2.hash(), g0.hash());
    assert_eq!(
        g2.apply(&promote, &keys.lookup()),
        Err(ChainError::StaleParent)
    );
    // A server that drops `promote` cannot deliver `demote` alone.
    assert_eq!(
        g0.apply(&demote, &keys.lookup()),
        Err(ChainError::StaleParent)
    );
    // Nor reorder them.
    assert_eq!(
        VerifiedGroup::from_chain(&[create, demote, promote], &keys.lookup()),
        Err(ChainError::StaleParent)
    );
}

#[test]
fn rule_violations_are_refused() {
    let keys = Keys::new();
    let (g, _) = created(&keys);
    let kick = keys.change(2, g.hash(), GroupOp::Remove(u(3)));
    assert_eq!(
        g.apply(&kick, &keys.lookup()),
        Err(ChainError::Rule(GroupRuleError::NotAdmin))
    );
    let outsider = keys.change(9, g.hash(), GroupOp::Add(vec![u(9)]));
    assert_eq!(
        g.apply(&outsider, &keys.lookup()),
        Err(ChainError::Rule(GroupRuleError::NotMember))
    );
    let again = keys.change(1, g.hash(), create_op(&[]));
    assert_eq!(
        g.apply(&again, &keys.lookup()),
        Err(ChainError::Rule(GroupRuleError::AlreadyCreated))
    );
}

#[test]
fn a_chain_starts_with_its_creation_in_its_own_group() {
    let keys = Keys::new();
    let (g, create) = created(&keys);
    let leave = keys.change(2, g.hash(), GroupOp::Leave);
    assert_eq!(
        VerifiedGroup::from_chain(std::slice::from_ref(&leave), &keys.lookup()),
        Err(ChainError::NoCreation)
    );
    let late_create = keys.change(1, g.hash(), create_op(&[2]));
    assert_eq!(
        VerifiedGroup::create(&late_create, &keys.lookup()),
        Err(ChainError::NoCreation)
    );
    let elsewhere = SignedGroupChange::sign(keys.of(2), gid(8), g.hash(), u(2), GroupOp::Leave);
    assert_eq!(
        g.apply(&elsewhere, &keys.lookup()),
        Err(ChainError::WrongGroup)
    );
    assert!(VerifiedGroup::from_chain(&[create, leave], &keys.lookup()).is_ok());
}

#[test]
fn a_member_the_server_adds_without_a_signed_change_is_reported() {
    let keys = Keys::new();
    let (g, _) = created(&keys);
    let report = g.check_server_members(&[u(1), u(2), u(3), u(9)]);
    assert_eq!(report.unverified, vec![u(9)]);
    assert!(report.missing.is_empty());
    assert!(!report.is_consistent());
    let report = g.check_server_members(&[u(1), u(3)]);
    assert_eq!(report.missing, vec![u(2)]);
    assert!(g.check_server_members(&[u(3), u(2), u(1)]).is_consistent());
}

#[test]
fn the_codec_refuses_bad_bytes() {
    let keys = Keys::new();
    let (_, create) = created(&keys);
    let bytes = create.encode();
    assert_eq!(bytes[..2], [0x47, 1]);
    let mut newer = bytes.clone();
    newer[1] = 2;
    assert_eq!(
        SignedGroupChange::decode(&newer),
        Err(ChainError::Malformed(Error::UnsupportedVersion(2)))
    );
    for cut in 0..bytes.len() {
        assert!(SignedGroupChange::decode(&bytes[..cut]).is_err(), "{cut}");
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(SignedGroupChange::decode(&longer).is_err());
    // An unknown operation kind (byte after group, parent and actor).
    let mut unknown = bytes;
    unknown[2 + 8 + 32 + 8] = 99;
    assert!(SignedGroupChange::decode(&unknown).is_err());
    // A chain that claims more changes than it holds.
    let mut chain = encode_chain(&[create]);
    chain[5] = 2;
    assert!(decode_chain(&chain).is_err());
    assert!(decode_chain(&[0x48, 1, 0xff, 0xff, 0xff, 0xff]).is_err());
}

fn user_id() -> impl Strategy<Value = UserId> {
    (1..=9u64).prop_map(u)
}

fn settings() -> impl Strategy<Value = GroupSettings> {
    let p = || prop_oneof![Just(Permission::Admins), Just(Permission::Everyone)];
    (p(), p()).prop_map(|(add_members, edit_name)| GroupSettings {
        add_members,
        edit_name,
    })
}

fn op() -> impl Strategy<Value = GroupOp> {
    prop_oneof![
        3 => prop::collection::vec(user_id(), 0..4).prop_map(GroupOp::Add),
        2 => user_id().prop_map(GroupOp::Remove),
        2 => Just(GroupOp::Leave),
        2 => user_id().prop_map(GroupOp::Promote),
        2 => user_id().prop_map(GroupOp::Demote),
        1 => prop_oneof![Just(String::new()), "[a-zé ]{1,12}"].prop_map(GroupOp::Rename),
        1 => settings().prop_map(GroupOp::ChangeSettings),
        1 => ("[a-z]{1,8}", prop::collection::vec(user_id(), 0..4), settings()).prop_map(
            |(name, members, settings)| GroupOp::Create { name, members, settings }
        ),
    ]
}

/// How a generated change is made: its parent and its signer.
#[derive(Debug, Clone)]
enum Parent {
    Current,
    /// An earlier state (a concurrent change that lost, or a replay).
    Earlier(prop::sample::Index),
    Random([u8; 32]),
}

fn parent() -> impl Strategy<Value = Parent> {
    prop_oneof![
        6 => Just(Parent::Current),
        2 => any::<prop::sample::Index>().prop_map(Parent::Earlier),
        1 => any::<[u8; 32]>().prop_map(Parent::Random),
    ]
}

proptest! {
    // Ed25519 in a debug build is slow; 64 cases of up to 40 steps still cover every
    // refusal many times over.
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn changes_round_trip_through_the_codec(
        group in 1..=1_000u64,
        parent in any::<[u8; 32]>(),
        actor in 1..=9u64,
        op in op(),
    ) {
        let keys = Keys::new();
        let change = SignedGroupChange::sign(
            keys.of(actor), gid(group), StateHash::from_bytes(parent), u(actor), op,
        );
        let decoded = SignedGroupChange::decode(&change.encode()).unwrap();
        prop_assert_eq!(&decoded, &change);
        prop_assert_eq!(decoded.verify(&keys.lookup()), Ok(()));
    }

    /// Any interleaving of valid and invalid signed changes, in the server's order: a device
    /// applying them one by one off the wire, a device that joins at the end from the chain
    /// of accepted changes, and one that joins halfway all reach the same state and hash;
    /// every accepted change is what chat-core's rules allow, every forged or stale one is
    /// refused.
    #[test]
    fn every_device_reaches_the_same_state(
        steps in prop::collection::vec(
            (1..=9u64, op(), parent(), any::<bool>()),
            1..40,
        ),
    ) {
        let keys = Keys::new();
        let lookup = keys.lookup();
        let create = keys.change(1, StateHash::GENESIS, create_op(&[2, 3]));
        let mut live = VerifiedGroup::create(&create, &lookup).unwrap();
        let mut hashes = vec![live.hash()];
        let mut accepted = vec![create];
        for (actor, op, parent, forged) in steps {
            let parent_hash = match &parent {
                Parent::Current => live.hash(),
                Parent::Earlier(i) => hashes[i.index(hashes.len())],
                Parent::Random(bytes) => StateHash::from_bytes(*bytes),
            };
            let signer = if forged { keys.of(actor % 9 + 1) } else { keys.of(actor) };
            let change =
                SignedGroupChange::sign(signer, gid(7), parent_hash, u(actor), op.clone());
            let wire = SignedGroupChange::decode(&change.encode()).unwrap();
            let result = live.apply(&wire, &lookup);
            let expected = chat_core::apply_group_op(Some(live.state()), u(actor), &op);
            match result {
                Ok(next) => {
                    prop_assert!(!forged && parent_hash == live.hash());
                    prop_assert_eq!(Ok(next.state().clone()), expected);
                    // A server that keeps the state names the same head.
                    prop_assert_eq!(wire.next_hash(next.state()), next.hash());
                    prop_assert_eq!(&VerifiedGroup::unpickle(&next.pickle()).unwrap(), &next);
                    live = next;
                    hashes.push(live.hash());
                    accepted.push(wire);
                }
                Err(ChainError::StaleParent) => prop_assert_ne!(parent_hash, live.hash()),
                Err(ChainError::BadSignature) => {
                    prop_assert!(forged && parent_hash == live.hash());
                }
                Err(ChainError::Rule(rule)) => {
                    prop_assert!(!forged && parent_hash == live.hash());
                    prop_assert_eq!(expected, Err(rule));
                }
                Err(other) => prop_assert!(false, "unexpected {:?}", other),
            }
            prop_assert!(live.state().len() <= MAX_GROUP_MEMBERS);
            prop_assert!(live.state().is_empty() || live.state().admins().next().is_some());
        }
        let chain = decode_chain(&encode_chain(&accepted)).unwrap();
        let late = VerifiedGroup::from_chain(&chain, &lookup).unwrap();
        prop_assert_eq!(&late, &live);
        let half = chain.len() / 2 + 1;
        let mut middle = VerifiedGroup::from_chain(&chain[..half], &lookup).unwrap();
        for change in &chain[half..] {
            middle = middle.apply(change, &lookup).unwrap();
        }
        prop_assert_eq!(middle.hash(), live.hash());
        prop_assert_eq!(middle.epoch(), u64::try_from(chain.len()).unwrap());
    }
}

/// The golden vector in docs/PROTOCOL.md ("Signed group changes"): user 1 (account key
/// seed `01`×32) creates group 7 named "Hikers" with users 2 and 3, default settings.
/// Ed25519 signatures are deterministic, so the bytes are fixed.
#[test]
fn golden_create_change() {
    let keys = Keys::new();
    let (_, create) = created(&keys);
    let hex = hex::encode(create.encode());
    assert_eq!(hex, GOLDEN_CREATE);
    assert_eq!(
        SignedGroupChange::decode(&hex::decode(GOLDEN_CREATE).unwrap()).unwrap(),
        create
    );
}

const GOLDEN_CREATE: &str = concat!(
    "47010000000000000007",
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0000000000000001",
    "000000000648696b65727300010000000200000000000000020000000000000003",
    "53e66fb5e8dbe35e63c63e9ca30c50c22619461a1c4b2150744a2201f54225067dcfc28de7bb6f7c97c4bffaad7aff7e7f2fd409eaa4f7b12acbdca0cf86ad04",
);
