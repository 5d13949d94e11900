//! Signed group changes and the verified group state (issue 17). Pure: no I/O, no clock.
//!
//! Every change to a group (create, add, remove, leave, promote, demote, rename, settings)
//! is a [`SignedGroupChange`]: the acting member's account identity (an Ed25519 key per user)
//! signs the group's conversation ID, the [`StateHash`] of the state the change applies to
//! (its parent), the actor and the operation. A [`VerifiedGroup`] applies changes in the
//! order they arrive, with chat-core's group rules ([`chat_core::apply_group_op`]), and
//! refuses a bad signature, a change for another group, a parent other than its current
//! state (a fork, a replay or a dropped change), and anything the rules refuse.
//!
//! Ordering rule (the one every device applies the same way): a change applies only to the
//! state its parent names. Of two changes made concurrently on one parent, the first in the
//! server's order wins; the second names a parent that is no longer current, every device
//! refuses it ([`ChainError::StaleParent`]), and its author re-bases it (signs it again on
//! the new state, if the rules still allow it). This is MLS's rule for commits (RFC 9420
//! §14: the delivery service orders commits; the first for an epoch wins).
//!
//! The state hash chains history and state: `H(label, parent hash, the change's signed
//! bytes, the canonical encoding of the state after it)`. Two histories never share a hash,
//! even when they reach equal states (promote then demote), so a change cannot be replayed
//! into a later state that happens to equal its parent.
//!
//! A device that joins later verifies the group from its creation by applying the whole
//! chain ([`VerifiedGroup::from_chain`], [`encode_chain`]).

use std::collections::BTreeMap;

use chat_core::{
    ConversationId, GroupOp, GroupRuleError, GroupSettings, GroupState, MAX_GROUP_NAME_CHARS,
    Permission, Role, UserId, limits::MAX_GROUP_MEMBERS,
};
use ed25519_dalek::{SigningKey, VerifyingKey};

use crate::Error;
use crate::codec::{Reader, Writer};
use crate::primitives::{labelled, sha256, sig_context, sign, verify};

/// The first byte of an encoded [`SignedGroupChange`].
const CHANGE_TAG: u8 = 0x47;
/// The first byte of an encoded chain ([`encode_chain`]).
const CHAIN_TAG: u8 = 0x48;
/// The first byte of a [`VerifiedGroup`] pickle.
const PICKLE_TAG: u8 = 0x49;
/// The version of the three layouts.
const VERSION: u8 = 1;
/// The most bytes of an encoded name (UTF-8 of at most [`MAX_GROUP_NAME_CHARS`] characters).
const MAX_NAME_BYTES: usize = MAX_GROUP_NAME_CHARS * 4;
/// The most changes one encoded chain may hold.
pub const MAX_CHAIN_CHANGES: usize = 100_000;

/// The hash naming a group state and the history that led to it. All zeros before the group
/// exists (the parent of its `Create`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StateHash([u8; 32]);

impl StateHash {
    /// The parent of a group's first change.
    pub const GENESIS: Self = Self([0; 32]);

    /// The hash's bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A hash from its bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
}

impl std::fmt::Debug for StateHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let short: String = self.0.iter().take(6).map(|b| format!("{b:02x}")).collect();
        write!(f, "StateHash({short}…)")
    }
}

/// Finds a user's account identity key: the Ed25519 key that signs the user's group changes
/// (and devices). Any `Fn(UserId) -> Option<VerifyingKey>` is one.
pub trait AccountKeys {
    /// `user`'s account identity key, or `None` if unknown.
    fn account_key(&self, user: UserId) -> Option<VerifyingKey>;
}

impl<F: Fn(UserId) -> Option<VerifyingKey>> AccountKeys for F {
    fn account_key(&self, user: UserId) -> Option<VerifyingKey> {
        self(user)
    }
}

/// Why a change or chain was refused. The group it was applied to is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    /// The bytes do not parse (or carry an unknown version).
    #[error("malformed group change: {0}")]
    Malformed(#[from] Error),
    /// The signature does not verify under the actor's account key.
    #[error("bad signature on a group change")]
    BadSignature,
    /// The actor's account key is unknown.
    #[error("no account key for user {0}")]
    UnknownAccount(UserId),
    /// The change is for another group.
    #[error("group change for another group")]
    WrongGroup,
    /// The change names a parent other than the current state: concurrent with a change that
    /// won, replayed, or on a fork. Its author re-bases it.
    #[error("group change applies to another state")]
    StaleParent,
    /// A chain that does not start with `Create` on [`StateHash::GENESIS`], or is empty.
    #[error("group chain does not start with its creation")]
    NoCreation,
    /// The group rules refuse the change.
    #[error("group rule: {0}")]
    Rule(#[from] GroupRuleError),
}

/// One signed change to a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedGroupChange {
    group: ConversationId,
    parent: StateHash,
    actor: UserId,
    op: GroupOp,
    signature: [u8; 64],
}

impl SignedGroupChange {
    /// `actor`'s change `op` to `group` in the state named `parent`, signed with the actor's
    /// account identity key.
    pub fn sign(
        key: &SigningKey,
        group: ConversationId,
        parent: StateHash,
        actor: UserId,
        op: GroupOp,
    ) -> Self {
        let body = signed_body(group, parent, actor, &op);
        let signature = sign(key, sig_context::GROUP_CHANGE, &[&body]);
        Self {
            group,
            parent,
            actor,
            op,
            signature,
        }
    }

    /// The group it changes.
    pub fn group(&self) -> ConversationId {
        self.group
    }

    /// The state it applies to.
    pub fn parent(&self) -> StateHash {
        self.parent
    }

    /// Who made it.
    pub fn actor(&self) -> UserId {
        self.actor
    }

    /// What it does.
    pub fn op(&self) -> &GroupOp {
        &self.op
    }

    /// Checks the signature under the actor's key from `keys`.
    pub fn verify(&self, keys: &impl AccountKeys) -> Result<(), ChainError> {
        let key = keys
            .account_key(self.actor)
            .ok_or(ChainError::UnknownAccount(self.actor))?;
        let body = signed_body(self.group, self.parent, self.actor, &self.op);
        verify(
            key.as_bytes(),
            &self.signature,
            sig_context::GROUP_CHANGE,
            &[&body],
        )
        .map_err(|_| ChainError::BadSignature)
    }

    /// The hash of the state this change leads to, `state` being that state (the group
    /// rules applied to its parent's state). How a server that keeps the group's state
    /// itself names the chain's new head without replaying the chain.
    pub fn next_hash(&self, state: &GroupState) -> StateHash {
        next_hash(self.parent, self, state)
    }

    /// The versioned encoding: `0x47, 1`, then the signed fields (group u64, parent 32
    /// bytes, actor u64, operation), then the 64-byte signature. See docs/PROTOCOL.md.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(160);
        w.u8(CHANGE_TAG).u8(VERSION);
        write_fields(&mut w, self.group, self.parent, self.actor, &self.op);
        w.raw(&self.signature);
        w.into_vec()
    }

    /// Parses [`Self::encode`]'s output. Does not verify the signature.
    pub fn decode(bytes: &[u8]) -> Result<Self, ChainError> {
        let mut r = Reader::new(bytes, "group change");
        let change = read_change(&mut r)?;
        r.finish()?;
        Ok(change)
    }
}

/// A group state every step of which was signed by a member allowed to make it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedGroup {
    group: ConversationId,
    state: GroupState,
    hash: StateHash,
    epoch: u64,
}

/// What the server's member list says beyond the verified state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberReport {
    /// Listed by the server without a valid signed change adding them: give them no keys
    /// and report them.
    pub unverified: Vec<UserId>,
    /// Members of the verified state the server does not list (it may be withholding
    /// messages from them).
    pub missing: Vec<UserId>,
}

impl MemberReport {
    /// Whether the server's list matches the verified state.
    pub fn is_consistent(&self) -> bool {
        self.unverified.is_empty() && self.missing.is_empty()
    }
}

impl VerifiedGroup {
    /// The group made by its first change, which must be a `Create` on
    /// [`StateHash::GENESIS`], signed by its actor.
    pub fn create(change: &SignedGroupChange, keys: &impl AccountKeys) -> Result<Self, ChainError> {
        if change.parent != StateHash::GENESIS || !matches!(change.op, GroupOp::Create { .. }) {
            return Err(ChainError::NoCreation);
        }
        change.verify(keys)?;
        let state = chat_core::apply_group_op(None, change.actor, &change.op)?;
        let hash = next_hash(StateHash::GENESIS, change, &state);
        Ok(Self {
            group: change.group,
            state,
            hash,
            epoch: 1,
        })
    }

    /// The group after `change`, or why it is refused (this group is unchanged either way).
    pub fn apply(
        &self,
        change: &SignedGroupChange,
        keys: &impl AccountKeys,
    ) -> Result<Self, ChainError> {
        if change.group != self.group {
            return Err(ChainError::WrongGroup);
        }
        if change.parent != self.hash {
            return Err(ChainError::StaleParent);
        }
        change.verify(keys)?;
        let state = chat_core::apply_group_op(Some(&self.state), change.actor, &change.op)?;
        Ok(Self {
            group: self.group,
            hash: next_hash(self.hash, change, &state),
            state,
            epoch: self.epoch.saturating_add(1),
        })
    }

    /// The group from its whole chain, every change verified: how a device that joins later
    /// checks the group from its creation. Any refused change refuses the chain (a chain is
    /// the accepted changes only).
    pub fn from_chain(
        changes: &[SignedGroupChange],
        keys: &impl AccountKeys,
    ) -> Result<Self, ChainError> {
        let (first, rest) = changes.split_first().ok_or(ChainError::NoCreation)?;
        let mut group = Self::create(first, keys)?;
        for change in rest {
            group = group.apply(change, keys)?;
        }
        Ok(group)
    }

    /// The group's conversation ID.
    pub fn group(&self) -> ConversationId {
        self.group
    }

    /// The verified state.
    pub fn state(&self) -> &GroupState {
        &self.state
    }

    /// The hash a next change names as its parent.
    pub fn hash(&self) -> StateHash {
        self.hash
    }

    /// How many changes were applied (1 after the creation).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// This device's record of the group, to keep between runs: `0x49, 1`, group u64, hash
    /// 32 bytes, epoch u64, then the state's canonical encoding. Not a proof for anyone
    /// else: only [`Self::create`], [`Self::apply`] and [`Self::from_chain`] verify.
    pub fn pickle(&self) -> Vec<u8> {
        let state = encode_state(&self.state);
        let mut w = Writer::with_capacity(50 + state.len());
        w.u8(PICKLE_TAG).u8(VERSION);
        w.u64(self.group.get()).raw(&self.hash.0).u64(self.epoch);
        w.raw(&state);
        w.into_vec()
    }

    /// Loads [`Self::pickle`]'s output (this device's own record, verified when it was
    /// made).
    pub fn unpickle(bytes: &[u8]) -> Result<Self, ChainError> {
        let mut r = Reader::new(bytes, "group pickle");
        r.expect_header(PICKLE_TAG, VERSION)?;
        let group = ConversationId::new(r.u64()?).map_err(|_| malformed())?;
        let hash = StateHash(r.array()?);
        let epoch = r.u64()?;
        let state = decode_state(&mut r)?;
        r.finish()?;
        Ok(Self {
            group,
            state,
            hash,
            epoch,
        })
    }

    /// Compares the server's member list with the verified state.
    pub fn check_server_members(&self, server: &[UserId]) -> MemberReport {
        let mut unverified: Vec<UserId> = server
            .iter()
            .copied()
            .filter(|u| !self.state.is_member(*u))
            .collect();
        unverified.sort_unstable();
        unverified.dedup();
        let missing = self
            .state
            .members()
            .map(|(u, _)| u)
            .filter(|u| !server.contains(u))
            .collect();
        MemberReport {
            unverified,
            missing,
        }
    }
}

/// Encodes a chain of changes: `0x48, 1, count u32`, then each change as a `u32`-length
/// prefixed [`SignedGroupChange::encode`].
pub fn encode_chain(changes: &[SignedGroupChange]) -> Vec<u8> {
    let mut w = Writer::with_capacity(changes.len().saturating_mul(160).saturating_add(6));
    w.u8(CHAIN_TAG).u8(VERSION);
    w.u32(u32::try_from(changes.len()).unwrap_or(u32::MAX));
    for change in changes {
        w.var(&change.encode());
    }
    w.into_vec()
}

/// Parses [`encode_chain`]'s output. Verifies nothing: give it to
/// [`VerifiedGroup::from_chain`].
pub fn decode_chain(bytes: &[u8]) -> Result<Vec<SignedGroupChange>, ChainError> {
    let mut r = Reader::new(bytes, "group chain");
    r.expect_header(CHAIN_TAG, VERSION)?;
    let count = usize::try_from(r.u32()?).map_err(|_| Error::Malformed("group chain"))?;
    if count > MAX_CHAIN_CHANGES {
        return Err(Error::TooLarge("group chain").into());
    }
    // Each change takes at least 2 + 8 + 32 + 8 + 1 + 64 bytes and a length prefix, so
    // the count cannot make this allocate more than the input justifies.
    let mut changes = Vec::with_capacity(count.min(bytes.len() / 119));
    for _ in 0..count {
        changes.push(SignedGroupChange::decode(r.var(bytes.len())?)?);
    }
    r.finish()?;
    Ok(changes)
}

// ---- encoding ---------------------------------------------------------------------------

/// The bytes a change's signature covers (inside the labelled encoding).
fn signed_body(group: ConversationId, parent: StateHash, actor: UserId, op: &GroupOp) -> Vec<u8> {
    let mut w = Writer::with_capacity(128);
    w.u8(CHANGE_TAG).u8(VERSION);
    write_fields(&mut w, group, parent, actor, op);
    w.into_vec()
}

fn write_fields(
    w: &mut Writer,
    group: ConversationId,
    parent: StateHash,
    actor: UserId,
    op: &GroupOp,
) {
    w.u64(group.get()).raw(&parent.0).u64(actor.get());
    write_op(w, op);
}

/// Operation kinds: 0 create, 1 add, 2 remove, 3 leave, 4 promote, 5 demote, 6 rename,
/// 7 settings.
fn write_op(w: &mut Writer, op: &GroupOp) {
    match op {
        GroupOp::Create {
            name,
            members,
            settings,
        } => {
            w.u8(0).var(name.as_bytes());
            write_settings(w, *settings);
            write_users(w, members);
        }
        GroupOp::Add(users) => {
            w.u8(1);
            write_users(w, users);
        }
        GroupOp::Remove(user) => {
            w.u8(2).u64(user.get());
        }
        GroupOp::Leave => {
            w.u8(3);
        }
        GroupOp::Promote(user) => {
            w.u8(4).u64(user.get());
        }
        GroupOp::Demote(user) => {
            w.u8(5).u64(user.get());
        }
        GroupOp::Rename(name) => {
            w.u8(6).var(name.as_bytes());
        }
        GroupOp::ChangeSettings(settings) => {
            w.u8(7);
            write_settings(w, *settings);
        }
    }
}

fn write_users(w: &mut Writer, users: &[UserId]) {
    w.u32(u32::try_from(users.len()).unwrap_or(u32::MAX));
    for user in users {
        w.u64(user.get());
    }
}

fn permission_byte(p: Permission) -> u8 {
    match p {
        Permission::Admins => 0,
        Permission::Everyone => 1,
    }
}

fn write_settings(w: &mut Writer, settings: GroupSettings) {
    w.u8(permission_byte(settings.add_members))
        .u8(permission_byte(settings.edit_name));
}

fn read_change(r: &mut Reader<'_>) -> Result<SignedGroupChange, ChainError> {
    r.expect_header(CHANGE_TAG, VERSION)?;
    let group = ConversationId::new(r.u64()?).map_err(|_| malformed())?;
    let parent = StateHash(r.array()?);
    let actor = user(r)?;
    let op = read_op(r)?;
    let signature = r.array()?;
    Ok(SignedGroupChange {
        group,
        parent,
        actor,
        op,
        signature,
    })
}

fn malformed() -> Error {
    Error::Malformed("group change")
}

fn user(r: &mut Reader<'_>) -> Result<UserId, Error> {
    UserId::new(r.u64()?).map_err(|_| malformed())
}

fn read_op(r: &mut Reader<'_>) -> Result<GroupOp, Error> {
    Ok(match r.u8()? {
        0 => {
            let name = name(r)?;
            let settings = settings(r)?;
            GroupOp::Create {
                name,
                settings,
                members: users(r)?,
            }
        }
        1 => GroupOp::Add(users(r)?),
        2 => GroupOp::Remove(user(r)?),
        3 => GroupOp::Leave,
        4 => GroupOp::Promote(user(r)?),
        5 => GroupOp::Demote(user(r)?),
        6 => GroupOp::Rename(name(r)?),
        7 => GroupOp::ChangeSettings(settings(r)?),
        _ => return Err(malformed()),
    })
}

fn name(r: &mut Reader<'_>) -> Result<String, Error> {
    let bytes = r.var(MAX_NAME_BYTES)?;
    String::from_utf8(bytes.to_vec()).map_err(|_| malformed())
}

fn permission(r: &mut Reader<'_>) -> Result<Permission, Error> {
    match r.u8()? {
        0 => Ok(Permission::Admins),
        1 => Ok(Permission::Everyone),
        _ => Err(malformed()),
    }
}

fn settings(r: &mut Reader<'_>) -> Result<GroupSettings, Error> {
    Ok(GroupSettings {
        add_members: permission(r)?,
        edit_name: permission(r)?,
    })
}

fn users(r: &mut Reader<'_>) -> Result<Vec<UserId>, Error> {
    let count = usize::try_from(r.u32()?).map_err(|_| malformed())?;
    if count > MAX_GROUP_MEMBERS {
        return Err(malformed());
    }
    (0..count).map(|_| user(r)).collect()
}

// ---- hashing ----------------------------------------------------------------------------

/// The canonical encoding of a state: name, settings, join counter, then every member in
/// user-ID order with role and join number.
fn encode_state(state: &GroupState) -> Vec<u8> {
    let mut w = Writer::with_capacity(64 + state.len() * 17);
    w.var(state.name().as_bytes());
    write_settings(&mut w, state.settings());
    w.u64(state.admitted());
    let members: BTreeMap<UserId, _> = state.members().collect();
    w.u32(u32::try_from(members.len()).unwrap_or(u32::MAX));
    for (user, info) in members {
        let role = match info.role {
            Role::Member => 0,
            Role::Admin => 1,
        };
        w.u64(user.get()).u8(role).u64(info.joined);
    }
    w.into_vec()
}

fn decode_state(r: &mut Reader<'_>) -> Result<GroupState, ChainError> {
    let name = name(r)?;
    let settings = settings(r)?;
    let admitted = r.u64()?;
    let count = usize::try_from(r.u32()?).map_err(|_| malformed())?;
    if count > MAX_GROUP_MEMBERS {
        return Err(malformed().into());
    }
    let mut members = BTreeMap::new();
    for _ in 0..count {
        let member = user(r)?;
        // Canonical: strictly ascending, as `encode_state` writes them.
        if members
            .last_key_value()
            .is_some_and(|(last, _)| *last >= member)
        {
            return Err(malformed().into());
        }
        let role = match r.u8()? {
            0 => Role::Member,
            1 => Role::Admin,
            _ => return Err(malformed().into()),
        };
        let joined = r.u64()?;
        members.insert(member, chat_core::MemberInfo { role, joined });
    }
    Ok(GroupState::from_parts(name, settings, members, admitted)?)
}

fn next_hash(parent: StateHash, change: &SignedGroupChange, state: &GroupState) -> StateHash {
    let body = signed_body(change.group, change.parent, change.actor, &change.op);
    StateHash(sha256(&labelled(
        sig_context::GROUP_STATE,
        &[&parent.0, &body, &encode_state(state)],
    )))
}

#[cfg(test)]
mod tests;
