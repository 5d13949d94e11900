//! Rules and conversions shared by every backend, so the backends differ only in how they
//! make each step atomic, never in what they check.

use std::collections::BTreeSet;

use chat_core::limits::MAX_GROUP_MEMBERS;
use chat_core::{
    ChainLink, DeviceAddress, DeviceMismatch, GroupOp, GroupRuleError, GroupSettings, GroupState,
    MemberInfo, NewMessage, Permission, Role, StoreError, StoreResult, UserId,
};

/// A backend failure described by a message: data read back that breaks an invariant, or a
/// failure that has to be reported to several callers at once (a failed group commit).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct BackendFailure(pub(crate) String);

/// Shorthand for a [`StoreError::Backend`] with a message.
pub(crate) fn failure(message: impl Into<String>) -> StoreError {
    StoreError::backend(BackendFailure(message.into()))
}

/// The member limit in force: the caller's, never above the build's.
pub(crate) fn effective_limit(limit: usize) -> usize {
    limit.min(MAX_GROUP_MEMBERS)
}

/// The one place every backend's `change_group` decides, given what it read under the
/// group's lock: the group's state and its chain head (`None` before its first signed
/// change). Returns the state to write; with a `link`, the backend then appends
/// `link.change` to the chain and stores `link.head`, in the same atomic step.
///
/// - Without a link (old clients): refused once the group has a chain, else
///   [`lenient_change`].
/// - With one: its parent must be the head (all zeros for none). The first signed change is
///   the group's creation, which must give exactly the stored state and changes nothing;
///   every later one follows chat-core's group rules strictly, then the deployment's limit.
pub(crate) fn plan_group_change(
    state: &GroupState,
    head: Option<&[u8; 32]>,
    actor: UserId,
    op: &GroupOp,
    limit: usize,
    link: Option<&ChainLink>,
) -> StoreResult<GroupState> {
    let Some(link) = link else {
        return match head {
            Some(_) => Err(StoreError::UnsignedGroupChange),
            None => lenient_change(state, actor, op, limit),
        };
    };
    if link.parent != *head.unwrap_or(&GENESIS) {
        return Err(StoreError::StaleGroupChange);
    }
    // An all-zero head would read back as "no chain yet" to the parent check above.
    if link.head == GENESIS {
        return Err(StoreError::Invalid(
            "a group change cannot lead to the all-zero head",
        ));
    }
    match (head, op) {
        (None, GroupOp::Create { .. }) => {
            if chat_core::apply_group_op(None, actor, op).as_ref() == Ok(state) {
                Ok(state.clone())
            } else {
                Err(StoreError::Invalid(
                    "a signed creation must match the group as created",
                ))
            }
        }
        (None, _) => Err(StoreError::Invalid(
            "a group's first signed change is its creation",
        )),
        (Some(_), op) => strict_change(state, actor, op, limit),
    }
}

/// The parent of a group's first signed change, and the head of a group without a chain.
const GENESIS: [u8; 32] = [0; 32];

/// A signed change after the creation: chat-core's group rules as every device applies
/// them (an add naming a member is refused), then the deployment's limit.
fn strict_change(
    state: &GroupState,
    actor: UserId,
    op: &GroupOp,
    limit: usize,
) -> StoreResult<GroupState> {
    let limit = effective_limit(limit);
    let next = state.apply(actor, op).map_err(|e| rule_error(e, limit))?;
    if next.len() > limit && next.len() > state.len() {
        return Err(StoreError::GroupFull { limit });
    }
    Ok(next)
}

/// A group rule's refusal as a store error: passing the build's limit is
/// [`StoreError::GroupFull`] with the limit in force.
fn rule_error(e: GroupRuleError, limit: usize) -> StoreError {
    match e {
        GroupRuleError::TooManyMembers => StoreError::GroupFull { limit },
        other => StoreError::Group(other),
    }
}

/// The server's reading of an unsigned group operation, for old clients: a lenient add
/// (members already in are skipped, an add of nobody new changes nothing), then chat-core's
/// group rules, then the deployment's limit.
fn lenient_change(
    state: &GroupState,
    actor: UserId,
    op: &GroupOp,
    limit: usize,
) -> StoreResult<GroupState> {
    let op = match op {
        GroupOp::Add(users) => {
            let mut new: Vec<UserId> = users
                .iter()
                .copied()
                .filter(|u| !state.is_member(*u))
                .collect();
            new.sort_unstable();
            new.dedup();
            if new.is_empty() {
                return match state.role(actor) {
                    Some(_) => Ok(state.clone()),
                    None => Err(StoreError::Group(GroupRuleError::NotMember)),
                };
            }
            GroupOp::Add(new)
        }
        other => other.clone(),
    };
    strict_change(state, actor, &op, limit)
}

/// The new group state for a create: the creator (admin) and the distinct other members,
/// refused past the limit.
pub(crate) fn plan_group(
    creator: UserId,
    members: &[UserId],
    limit: usize,
) -> StoreResult<GroupState> {
    let mut others: Vec<UserId> = members.iter().copied().filter(|u| *u != creator).collect();
    others.sort_unstable();
    others.dedup();
    let limit = effective_limit(limit);
    if others.len().saturating_add(1) > limit {
        return Err(StoreError::GroupFull { limit });
    }
    GroupState::create(
        creator,
        chat_core::DEFAULT_GROUP_NAME,
        &others,
        GroupSettings::default(),
    )
    .map_err(StoreError::Group)
}

/// What a backend writes to go from one group state to the next.
#[derive(Debug, Default)]
pub(crate) struct GroupDiff {
    /// Members to delete.
    pub(crate) removed: Vec<UserId>,
    /// Members to insert or update, with their new entries.
    pub(crate) upserted: Vec<(UserId, MemberInfo)>,
}

/// The member rows that differ between `old` and `new`.
pub(crate) fn group_diff(old: &GroupState, new: &GroupState) -> GroupDiff {
    let before: std::collections::BTreeMap<UserId, MemberInfo> = old.members().collect();
    let after: std::collections::BTreeMap<UserId, MemberInfo> = new.members().collect();
    GroupDiff {
        removed: before
            .keys()
            .filter(|u| !after.contains_key(u))
            .copied()
            .collect(),
        upserted: after
            .iter()
            .filter(|(u, m)| before.get(u) != Some(m))
            .map(|(u, m)| (*u, *m))
            .collect(),
    }
}

/// A role's column value.
pub(crate) fn role_sql(role: Role) -> i64 {
    match role {
        Role::Member => 0,
        Role::Admin => 1,
    }
}

/// A role from its column value.
pub(crate) fn role_from_sql(value: i64) -> StoreResult<Role> {
    match value {
        0 => Ok(Role::Member),
        1 => Ok(Role::Admin),
        _ => Err(failure("stored member role out of range")),
    }
}

/// A permission's column value.
pub(crate) fn permission_sql(permission: Permission) -> i64 {
    match permission {
        Permission::Admins => 0,
        Permission::Everyone => 1,
    }
}

/// A permission from its column value.
pub(crate) fn permission_from_sql(value: i64) -> StoreResult<Permission> {
    match value {
        0 => Ok(Permission::Admins),
        1 => Ok(Permission::Everyone),
        _ => Err(failure("stored group permission out of range")),
    }
}

/// A group state read back from storage, its invariants checked.
pub(crate) fn group_from_parts(
    name: String,
    settings: GroupSettings,
    members: std::collections::BTreeMap<UserId, MemberInfo>,
    admitted: u64,
) -> StoreResult<GroupState> {
    GroupState::from_parts(name, settings, members, admitted)
        .map_err(|e| failure(format!("stored group breaks an invariant: {e}")))
}

/// Refuses a message that names a recipient device twice.
pub(crate) fn check_distinct_recipients(message: &NewMessage) -> StoreResult<()> {
    let mut seen = BTreeSet::new();
    if message.recipients.iter().all(|r| seen.insert(r.device)) {
        Ok(())
    } else {
        Err(StoreError::Invalid("duplicate recipient device"))
    }
}

/// Checks that the sending device is one of `current` (every linked device of every member:
/// an unlinked device may not send) and that the recipients are exactly the others.
pub(crate) fn check_coverage(current: &[DeviceAddress], message: &NewMessage) -> StoreResult<()> {
    if !current.contains(&message.sender) {
        return Err(StoreError::NotLinked);
    }
    let expected: Vec<DeviceAddress> = current
        .iter()
        .copied()
        .filter(|d| *d != message.sender)
        .collect();
    let given: Vec<DeviceAddress> = message.recipients.iter().map(|r| r.device).collect();
    let mismatch = DeviceMismatch::between(&expected, &given);
    if mismatch.is_empty() {
        Ok(())
    } else {
        Err(StoreError::StaleDevices(mismatch))
    }
}

/// An ID or count for a signed 64-bit column. Every ID is at most `MAX_ID` = `i64::MAX`.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn to_sql(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A page size for a `LIMIT` clause.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn limit_sql(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// An ID read back from a column, validated.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn from_sql<T: TryFrom<u64>>(value: i64, what: &str) -> StoreResult<T> {
    u64::try_from(value)
        .ok()
        .and_then(|v| T::try_from(v).ok())
        .ok_or_else(|| failure(format!("stored {what} {value} is out of range")))
}

/// A fixed-size byte string read back from a column, validated.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn array_from_sql<const N: usize>(value: &[u8], what: &str) -> StoreResult<[u8; N]> {
    <[u8; N]>::try_from(value)
        .map_err(|_| failure(format!("stored {what} has {} bytes, not {N}", value.len())))
}

/// A `u32` key ID read back from a column, validated.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn u32_from_sql(value: i64, what: &str) -> StoreResult<u32> {
    u32::try_from(value).map_err(|_| failure(format!("stored {what} {value} is out of range")))
}
