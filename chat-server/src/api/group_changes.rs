//! Signed group changes (issue 17): `POST /v1/conversations/{id}/changes` takes a member's
//! [`SignedGroupChange`], `GET` serves the group's chain of accepted ones.
//!
//! The members' clients are the authority on who is in a group: each verifies every change
//! against the actor's account key and the group rules, and hands sender keys only to the
//! members of the state it verified. The server checks the same things first, so that an
//! honest server relays only changes its clients accept and keeps its own member list (for
//! routing and access control) equal to theirs: the signature under the account key on the
//! actor's published device list, that the change names the chain's current head as its
//! parent (a concurrent change that lost gets `conflict`; its author re-bases it), and the
//! group rules, decided by the store in the same atomic step that appends the change. Once a
//! group has a chain, the unsigned routes are refused for it.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use bytes::Bytes;
use chat_core::{ChainLink, ErrorCode, GroupOp, GroupRuleError, StoreError, UserId};
use chat_crypto::{AccountKey, SignedDeviceList, SignedGroupChange};
use serde::{Deserialize, Serialize};

use super::conversations::{Member, page_limit, require_group, require_users_exist};
use super::error::{ApiError, ApiResult};
use super::{Json, Query};
use crate::state::Shared;

/// The most changes one `GET …/changes` page returns.
pub(crate) const MAX_CHANGES_PAGE: usize = 500;
/// Changes per page when the request does not say.
const DEFAULT_CHANGES_PAGE: usize = 100;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChangeRequest {
    /// The encoded change (hex).
    change: String,
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidRequest, message)
}

/// Accepts a member's signed change to the group in the path and appends it to the chain.
pub(crate) async fn post(
    State(shared): State<Arc<Shared>>,
    Member { id, device }: Member,
    Json(req): Json<ChangeRequest>,
) -> ApiResult<StatusCode> {
    require_group(
        &shared,
        id,
        "one-to-one conversations have no group changes",
    )
    .await?;
    let bytes = hex::decode(&req.change).map_err(|_| bad("the change is a hex string"))?;
    let change =
        SignedGroupChange::decode(&bytes).map_err(|e| bad(format!("group change refused: {e}")))?;
    let actor = device.user;
    if change.group() != id {
        return Err(bad("the change is for another group"));
    }
    if change.actor() != actor {
        return Err(bad("the change is another user's"));
    }
    let key = account_key(&shared, actor).await?;
    change
        .verify(&|user: UserId| (user == actor).then(|| key.verifying_key()))
        .map_err(|e| bad(format!("group change refused: {e}")))?;
    if let GroupOp::Add(users) = change.op() {
        require_users_exist(&shared, users).await?;
    }
    let limit = shared.config.max_group_members;
    // The state the change leads to names the new head. Read outside the store's atomic
    // step, which is safe: the store appends only if the head is still the change's parent,
    // and every change to a group with a chain moves its head (a creation is checked
    // against the group as created instead).
    let current = match change.op() {
        GroupOp::Create { .. } => None,
        _ => Some(shared.store.group(id).await?),
    };
    let next =
        chat_core::apply_group_op(current.as_ref(), actor, change.op()).map_err(|e| match e {
            GroupRuleError::TooManyMembers => StoreError::GroupFull { limit },
            other => StoreError::Group(other),
        })?;
    let link = ChainLink {
        parent: *change.parent().as_bytes(),
        head: *change.next_hash(&next).as_bytes(),
        change: Bytes::from(bytes),
    };
    shared
        .store
        .change_group(id, actor, change.op(), limit, Some(&link))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The actor's account key, from the device list they published.
async fn account_key(shared: &Shared, user: UserId) -> ApiResult<AccountKey> {
    let record = shared.store.device_list(user).await?.ok_or_else(|| {
        ApiError::new(
            ErrorCode::Forbidden,
            "publish a device list before changing a group",
        )
    })?;
    let list = SignedDeviceList::decode(&record.list)
        .map_err(|e| StoreError::backend(BadStoredList(e.to_string())))?;
    Ok(list.account())
}

/// A stored device list that no longer decodes (the server checked it when it was put).
#[derive(Debug, thiserror::Error)]
#[error("stored device list does not decode: {0}")]
struct BadStoredList(String);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChangesQuery {
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
}

/// One change of a chain, as `GET …/changes` shows it.
#[derive(Serialize)]
pub(crate) struct ChangeView {
    /// Its position in the chain (the creation is 1).
    seq: u64,
    /// The encoded change (hex).
    change: String,
}

#[derive(Serialize)]
pub(crate) struct Changes {
    changes: Vec<ChangeView>,
}

/// A page of the group's chain: the changes after position `after` (0: from the creation),
/// oldest first. A page shorter than `limit` is the end of the chain.
pub(crate) async fn list(
    State(shared): State<Arc<Shared>>,
    Member { id, .. }: Member,
    Query(q): Query<ChangesQuery>,
) -> ApiResult<Json<Changes>> {
    require_group(
        &shared,
        id,
        "one-to-one conversations have no group changes",
    )
    .await?;
    let limit = page_limit(q.limit, DEFAULT_CHANGES_PAGE, MAX_CHANGES_PAGE)?;
    let changes = shared
        .store
        .group_changes(id, q.after, limit)
        .await?
        .into_iter()
        .map(|(seq, change)| ChangeView {
            seq,
            change: hex::encode(&change),
        })
        .collect();
    Ok(Json(Changes { changes }))
}
