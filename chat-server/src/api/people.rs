//! Profiles, the directory and blocks (R-ACC-3, R-ACC-4).
//!
//! Who sees what:
//! - a profile is shown to its owner, to users who share a conversation with them, and in
//!   search results to anyone searching (the directory is opt-in: only users who set a
//!   profile are in it). `GET /v1/users/{id}/profile` for anyone else answers `not_found`,
//!   as for a user who does not exist, so IDs cannot be probed for profiles;
//! - a block is known only to the blocker. Everything it refuses answers exactly as for a
//!   missing user, and a withheld send answers `sent` (see docs/PROTOCOL.md section 11).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::StatusCode;
use bytes::Bytes;
use chat_core::protocol::{ProfileEvent, ServerFrame};
use chat_core::{
    AttachmentId, BusMessage, DisplayName, ErrorCode, Profile, ProfileUpdate, SearchCursor,
    SearchPrefix, StatusText, Timestamp, Topic, UserId, Username,
};
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ApiResult};
use super::{Json, Path, Query};
use crate::auth::Authed;
use crate::state::{Shared, now};

/// The most results one search page returns.
pub(crate) const MAX_SEARCH_PAGE: usize = 50;
/// Results per page when the request does not say.
const DEFAULT_SEARCH_PAGE: usize = 20;

/// A profile as HTTP shows it; the profile fields are `null` for a user who never set one.
#[derive(Debug, Serialize)]
pub(crate) struct ProfileView {
    user_id: UserId,
    username: Username,
    display_name: Option<DisplayName>,
    status: Option<StatusText>,
    avatar: Option<AttachmentId>,
    updated_at: Option<Timestamp>,
}

impl From<Profile> for ProfileView {
    fn from(p: Profile) -> Self {
        Self {
            user_id: p.user,
            username: p.username,
            display_name: Some(p.display_name),
            status: p.status,
            avatar: p.avatar,
            updated_at: Some(p.updated_at),
        }
    }
}

fn no_such_user() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such user")
}

/// The user's profile, or a view with only the account when they set none.
async fn view(shared: &Shared, user: UserId) -> ApiResult<ProfileView> {
    if let Some(profile) = shared.store.profile(user).await? {
        return Ok(profile.into());
    }
    let account = shared.store.user(user).await?.ok_or_else(no_such_user)?;
    Ok(ProfileView {
        user_id: account.id,
        username: account.username,
        display_name: None,
        status: None,
        avatar: None,
        updated_at: None,
    })
}

pub(crate) async fn own(
    State(shared): State<Arc<Shared>>,
    authed: Authed,
) -> ApiResult<Json<ProfileView>> {
    Ok(Json(view(&shared, authed.device.user).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProfileRequest {
    display_name: String,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    avatar: Option<AttachmentId>,
}

fn invalid(field: &str, err: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::InvalidRequest, format!("{field}: {err}"))
}

/// Replaces the caller's profile, then pushes it to everyone sharing a conversation with
/// them (and to their own other connections).
pub(crate) async fn set(
    State(shared): State<Arc<Shared>>,
    authed: Authed,
    Json(req): Json<ProfileRequest>,
) -> ApiResult<Json<ProfileView>> {
    let me = authed.device.user;
    let display_name =
        DisplayName::new(&req.display_name).map_err(|e| invalid("display_name", e))?;
    let status = match req.status.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(text) => Some(StatusText::new(text).map_err(|e| invalid("status", e))?),
    };
    if let Some(avatar) = req.avatar {
        let meta = shared.store.attachment(avatar).await?;
        if meta.is_none_or(|m| m.uploader.user != me) {
            return Err(invalid("avatar", "not an attachment you uploaded"));
        }
    }
    let update = ProfileUpdate {
        display_name,
        status,
        avatar: req.avatar,
    };
    let profile = shared.store.set_profile(me, &update, now()).await?;
    publish_profile(&shared, &profile).await?;
    Ok(Json(profile.into()))
}

/// Everyone who shares a conversation with `user`, and `user`.
async fn peers(shared: &Shared, user: UserId) -> ApiResult<BTreeSet<UserId>> {
    let mut peers = BTreeSet::from([user]);
    for conversation in shared.store.conversations_of(user).await? {
        peers.extend(shared.store.members(conversation.id).await?);
    }
    Ok(peers)
}

async fn publish_profile(shared: &Shared, profile: &Profile) -> ApiResult<()> {
    let frame = Bytes::from(ServerFrame::Profile(ProfileEvent::from(profile)).encode());
    let events = peers(shared, profile.user)
        .await?
        .into_iter()
        .map(|peer| (Topic::User(peer), BusMessage::Frame(frame.clone())))
        .collect();
    for count in shared.bus.publish_many(events).await {
        if let Err(err) = count {
            // Best effort, like every live event: clients also see profiles on fetch.
            tracing::warn!(cause = %err, "profile event not published");
        }
    }
    Ok(())
}

/// Another user's profile: only for users sharing a conversation with the caller.
pub(crate) async fn of_user(
    State(shared): State<Arc<Shared>>,
    authed: Authed,
    Path(user): Path<UserId>,
) -> ApiResult<Json<ProfileView>> {
    let me = authed.device.user;
    if user != me {
        let mine: BTreeSet<_> = shared
            .store
            .conversations_of(me)
            .await?
            .into_iter()
            .map(|c| c.id)
            .collect();
        let theirs = shared.store.conversations_of(user).await?;
        if !theirs.iter().any(|c| mine.contains(&c.id)) {
            return Err(no_such_user());
        }
    }
    Ok(Json(view(&shared, user).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SearchQuery {
    prefix: String,
    after: Option<String>,
    limit: Option<usize>,
}

#[derive(Serialize)]
pub(crate) struct SearchPage {
    users: Vec<ProfileView>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

/// A page of the directory: profiles whose display name starts with `prefix`, ignoring
/// case, in folded-name order. Rate-limited per account.
pub(crate) async fn search(
    State(shared): State<Arc<Shared>>,
    authed: Authed,
    Query(query): Query<SearchQuery>,
) -> ApiResult<Json<SearchPage>> {
    shared
        .limits
        .searches
        .check(&authed.device.user, Instant::now())
        .await
        .map_err(ApiError::rate_limited)?;
    let prefix = SearchPrefix::new(&query.prefix).map_err(|e| invalid("prefix", e))?;
    let after = query
        .after
        .as_deref()
        .map(str::parse::<SearchCursor>)
        .transpose()
        .map_err(|e| invalid("after", e))?;
    let limit =
        super::conversations::page_limit(query.limit, DEFAULT_SEARCH_PAGE, MAX_SEARCH_PAGE)?;
    // One more than asked says whether a next page exists, so the last page has no cursor.
    let mut found = shared
        .store
        .search_profiles(&prefix, after.as_ref(), limit + 1)
        .await?;
    let next = if found.len() > limit {
        found.truncate(limit);
        found.last().map(|p| SearchCursor::after(p).to_string())
    } else {
        None
    };
    Ok(Json(SearchPage {
        users: found.into_iter().map(ProfileView::from).collect(),
        next,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BlockRequest {
    user_id: UserId,
}

/// Blocks a user (idempotent). Their presence subscriptions to the caller end at once.
pub(crate) async fn block(
    State(shared): State<Arc<Shared>>,
    authed: Authed,
    Json(req): Json<BlockRequest>,
) -> ApiResult<StatusCode> {
    let me = authed.device.user;
    shared.store.block(me, req.user_id, now()).await?;
    let drop = BusMessage::Unsubscribe(Topic::Presence(me));
    if let Err(err) = shared.bus.publish(Topic::User(req.user_id), drop).await {
        tracing::warn!(cause = %err, "could not end the blocked user's presence subscriptions");
    }
    tracing::debug!(user = %me, "blocked a user");
    Ok(StatusCode::NO_CONTENT)
}

/// Removes a block (also when there was none).
pub(crate) async fn unblock(
    State(shared): State<Arc<Shared>>,
    authed: Authed,
    Path(user): Path<UserId>,
) -> ApiResult<StatusCode> {
    shared.store.unblock(authed.device.user, user).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize)]
pub(crate) struct BlockView {
    user_id: UserId,
    created_at: Timestamp,
}

#[derive(Serialize)]
pub(crate) struct Blocks {
    blocks: Vec<BlockView>,
}

pub(crate) async fn blocks(
    State(shared): State<Arc<Shared>>,
    authed: Authed,
) -> ApiResult<Json<Blocks>> {
    let blocks = shared.store.blocks(authed.device.user).await?;
    Ok(Json(Blocks {
        blocks: blocks
            .into_iter()
            .map(|b| BlockView {
                user_id: b.user,
                created_at: b.created_at,
            })
            .collect(),
    }))
}

/// Refuses `me` reaching `target` when `target` blocks `me`, exactly as if `target` did not
/// exist (the caller's own "no such user" error).
pub(crate) async fn unless_blocked_by(
    shared: &Shared,
    target: UserId,
    me: UserId,
    missing: impl FnOnce() -> ApiError,
) -> ApiResult<()> {
    if shared.store.is_blocked(target, me).await? {
        Err(missing())
    } else {
        Ok(())
    }
}
