//! The group rules (issue 17), in one place and without I/O: who is in a group, with which
//! role, under which settings, and which operations which actor may make.
//!
//! [`apply`] takes a state (or none, before the group exists), the acting user and an
//! operation, and returns the next state or a typed [`GroupRuleError`]. The server checks its
//! HTTP routes against it and chat-crypto's signed change chain replays it on every device, so
//! both sides judge a change by the same code.
//!
//! Invariants of every [`GroupState`] that [`apply`] returns:
//! - at most [`MAX_GROUP_MEMBERS`] members;
//! - at least one admin while the group has a member (the last admin leaving promotes the
//!   oldest remaining member: the earliest to join, ties broken by the lowest user ID);
//! - a name of at most [`MAX_GROUP_NAME_CHARS`] characters without control characters.
//!
//! A one-to-one conversation has none of this: [`require_group`] refuses it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::limits::MAX_GROUP_MEMBERS;
use crate::{ConversationKind, UserId};

/// The most characters (Unicode scalar values) of a group's name.
pub const MAX_GROUP_NAME_CHARS: usize = 128;

/// The name of a group created without one (the server's create route names none unless
/// asked to; the members' signed chain carries the name they see).
pub const DEFAULT_GROUP_NAME: &str = "Group";

/// A member's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A member: sends, reads, leaves; adds or renames only if the settings allow.
    Member,
    /// An admin: also adds, removes, promotes, demotes and changes the settings.
    Admin,
}

/// Who may do something a setting governs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    /// Admins only.
    Admins,
    /// Every member.
    Everyone,
}

impl Permission {
    fn allows(self, role: Role) -> bool {
        matches!((self, role), (Self::Everyone, _) | (_, Role::Admin))
    }
}

/// A group's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GroupSettings {
    /// Who may add members.
    pub add_members: Permission,
    /// Who may change the group's name.
    pub edit_name: Permission,
}

impl Default for GroupSettings {
    /// Admins add members, every member may rename (Signal's defaults).
    fn default() -> Self {
        Self {
            add_members: Permission::Admins,
            edit_name: Permission::Everyone,
        }
    }
}

/// One member's entry in a [`GroupState`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MemberInfo {
    /// The member's role.
    pub role: Role,
    /// When the member joined, as a count of members admitted before it (0 for the
    /// creator's operation). Orders "oldest member" without a clock.
    pub joined: u64,
}

/// A group's membership, roles, name and settings.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GroupState {
    name: String,
    settings: GroupSettings,
    members: BTreeMap<UserId, MemberInfo>,
    /// The next `joined` number to hand out.
    admitted: u64,
}

/// An operation on a group. Every one is made by an acting user, given to [`apply`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum GroupOp {
    /// Create the group: the actor becomes its first admin, `members` its other members.
    Create {
        /// The group's name.
        name: String,
        /// The other members (the actor is added anyway and must not be listed).
        members: Vec<UserId>,
        /// The initial settings.
        settings: GroupSettings,
    },
    /// Add these users as members.
    Add(Vec<UserId>),
    /// Remove this other member (the actor leaves with [`GroupOp::Leave`]).
    Remove(UserId),
    /// The actor leaves.
    Leave,
    /// Make this member an admin.
    Promote(UserId),
    /// Make this admin a member.
    Demote(UserId),
    /// Change the name.
    Rename(String),
    /// Change the settings.
    ChangeSettings(GroupSettings),
}

/// Why [`apply`] refused an operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupRuleError {
    /// One-to-one conversations have no membership operations.
    #[error("not a group")]
    NotAGroup,
    /// The group does not exist yet; only `Create` applies.
    #[error("group not created")]
    NotCreated,
    /// The group exists; `Create` does not apply again.
    #[error("group already created")]
    AlreadyCreated,
    /// The actor is not a member.
    #[error("actor is not a member")]
    NotMember,
    /// The actor's role does not allow the operation.
    #[error("only admins may do this")]
    NotAdmin,
    /// The named user is not a member.
    #[error("user is not a member")]
    UnknownMember(UserId),
    /// The named user is already a member.
    #[error("user is already a member")]
    AlreadyMember(UserId),
    /// A user is named twice in one operation.
    #[error("user named twice")]
    Duplicate(UserId),
    /// An add that names nobody.
    #[error("no users to add")]
    NoUsers,
    /// The group would pass the member limit.
    #[error("group is full")]
    TooManyMembers,
    /// Removing oneself is leaving.
    #[error("use leave to remove oneself")]
    SelfRemoval,
    /// Demoting the last admin would leave the group without one.
    #[error("the last admin cannot be demoted")]
    LastAdmin,
    /// Promoting an admin or demoting a member changes nothing.
    #[error("the member already has that role")]
    SameRole,
    /// An empty name, one too long, or one with control characters.
    #[error("invalid group name")]
    InvalidName,
}

/// Refuses group operations on anything but a group.
pub fn require_group(kind: ConversationKind) -> Result<(), GroupRuleError> {
    match kind {
        ConversationKind::Group => Ok(()),
        ConversationKind::Direct => Err(GroupRuleError::NotAGroup),
    }
}

/// Applies `op` by `actor` to `state` (`None` before the group exists) and returns the next
/// state, or why the operation is not allowed. Pure: the input state is unchanged.
pub fn apply(
    state: Option<&GroupState>,
    actor: UserId,
    op: &GroupOp,
) -> Result<GroupState, GroupRuleError> {
    match (state, op) {
        (
            None,
            GroupOp::Create {
                name,
                members,
                settings,
            },
        ) => GroupState::create(actor, name, members, *settings),
        (None, _) => Err(GroupRuleError::NotCreated),
        (Some(_), GroupOp::Create { .. }) => Err(GroupRuleError::AlreadyCreated),
        (Some(state), op) => state.apply(actor, op),
    }
}

impl GroupState {
    /// A new group made by `creator` (its admin) with `members`.
    pub fn create(
        creator: UserId,
        name: &str,
        members: &[UserId],
        settings: GroupSettings,
    ) -> Result<Self, GroupRuleError> {
        check_name(name)?;
        let mut state = Self {
            name: name.to_owned(),
            settings,
            members: BTreeMap::new(),
            admitted: 0,
        };
        state.members.insert(
            creator,
            MemberInfo {
                role: Role::Admin,
                joined: 0,
            },
        );
        state.admit(members, Some(creator))?;
        Ok(state)
    }

    /// Applies a non-create operation; see [`apply`].
    pub fn apply(&self, actor: UserId, op: &GroupOp) -> Result<Self, GroupRuleError> {
        let role = self.role(actor).ok_or(GroupRuleError::NotMember)?;
        let mut next = self.clone();
        match op {
            GroupOp::Create { .. } => return Err(GroupRuleError::AlreadyCreated),
            GroupOp::Add(users) => {
                require(self.settings.add_members.allows(role))?;
                next.admit(users, None)?;
            }
            GroupOp::Remove(user) => {
                require(role == Role::Admin)?;
                if *user == actor {
                    return Err(GroupRuleError::SelfRemoval);
                }
                next.members
                    .remove(user)
                    .ok_or(GroupRuleError::UnknownMember(*user))?;
            }
            GroupOp::Leave => {
                next.members.remove(&actor);
                next.keep_an_admin();
            }
            GroupOp::Promote(user) => {
                require(role == Role::Admin)?;
                next.set_role(*user, Role::Admin)?;
            }
            GroupOp::Demote(user) => {
                require(role == Role::Admin)?;
                next.set_role(*user, Role::Member)?;
                if next.admins().next().is_none() {
                    return Err(GroupRuleError::LastAdmin);
                }
            }
            GroupOp::Rename(name) => {
                require(self.settings.edit_name.allows(role))?;
                check_name(name)?;
                name.clone_into(&mut next.name);
            }
            GroupOp::ChangeSettings(settings) => {
                require(role == Role::Admin)?;
                next.settings = *settings;
            }
        }
        Ok(next)
    }

    /// The group's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The group's settings.
    pub fn settings(&self) -> GroupSettings {
        self.settings
    }

    /// The members in user-ID order.
    pub fn members(&self) -> impl Iterator<Item = (UserId, MemberInfo)> + '_ {
        self.members.iter().map(|(u, m)| (*u, *m))
    }

    /// The admins in user-ID order.
    pub fn admins(&self) -> impl Iterator<Item = UserId> + '_ {
        self.members
            .iter()
            .filter(|(_, m)| m.role == Role::Admin)
            .map(|(u, _)| *u)
    }

    /// `user`'s role, or `None` if not a member.
    pub fn role(&self, user: UserId) -> Option<Role> {
        self.members.get(&user).map(|m| m.role)
    }

    /// Whether `user` is a member.
    pub fn is_member(&self, user: UserId) -> bool {
        self.members.contains_key(&user)
    }

    /// How many members the group has.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether everyone has left.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The next join number (how many admissions the group has seen), part of the state
    /// so that a rebuilt state is identical, not merely equivalent.
    pub fn admitted(&self) -> u64 {
        self.admitted
    }

    /// Rebuilds a state from its parts (a decoder's entry point), checking the invariants
    /// [`apply`] keeps: the member limit, an admin while non-empty, a valid name and join
    /// numbers below `admitted`.
    pub fn from_parts(
        name: String,
        settings: GroupSettings,
        members: BTreeMap<UserId, MemberInfo>,
        admitted: u64,
    ) -> Result<Self, GroupRuleError> {
        check_name(&name)?;
        if members.len() > MAX_GROUP_MEMBERS {
            return Err(GroupRuleError::TooManyMembers);
        }
        if !members.is_empty() && !members.values().any(|m| m.role == Role::Admin) {
            return Err(GroupRuleError::LastAdmin);
        }
        if let Some((user, _)) = members.iter().find(|(_, m)| m.joined >= admitted) {
            return Err(GroupRuleError::UnknownMember(*user));
        }
        Ok(Self {
            name,
            settings,
            members,
            admitted,
        })
    }

    /// Adds `users` as members, refusing duplicates, existing members, an empty list
    /// (except at creation, `creator` set) and passing the limit.
    fn admit(&mut self, users: &[UserId], creator: Option<UserId>) -> Result<(), GroupRuleError> {
        if users.is_empty() && creator.is_none() {
            return Err(GroupRuleError::NoUsers);
        }
        let joined = self.admitted;
        for user in users {
            if Some(*user) == creator || self.members.contains_key(user) {
                return Err(GroupRuleError::AlreadyMember(*user));
            }
            if users.iter().filter(|u| *u == user).count() > 1 {
                return Err(GroupRuleError::Duplicate(*user));
            }
        }
        if self.members.len().saturating_add(users.len()) > MAX_GROUP_MEMBERS {
            return Err(GroupRuleError::TooManyMembers);
        }
        for user in users {
            self.members.insert(
                *user,
                MemberInfo {
                    role: Role::Member,
                    joined,
                },
            );
        }
        self.admitted = joined.saturating_add(1);
        Ok(())
    }

    fn set_role(&mut self, user: UserId, role: Role) -> Result<(), GroupRuleError> {
        let info = self
            .members
            .get_mut(&user)
            .ok_or(GroupRuleError::UnknownMember(user))?;
        if info.role == role {
            return Err(GroupRuleError::SameRole);
        }
        info.role = role;
        Ok(())
    }

    /// After a leave: if members remain and none is an admin, the oldest becomes one.
    fn keep_an_admin(&mut self) {
        if self.admins().next().is_some() {
            return;
        }
        let oldest = self
            .members
            .iter_mut()
            .min_by_key(|(user, info)| (info.joined, **user));
        if let Some((_, info)) = oldest {
            info.role = Role::Admin;
        }
    }
}

fn require(allowed: bool) -> Result<(), GroupRuleError> {
    if allowed {
        Ok(())
    } else {
        Err(GroupRuleError::NotAdmin)
    }
}

fn check_name(name: &str) -> Result<(), GroupRuleError> {
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_GROUP_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(GroupRuleError::InvalidName);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
