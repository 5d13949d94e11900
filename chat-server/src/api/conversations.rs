//! Conversations, members, history and receipts (R-CONV, R-MSG-5, R-MSG-8). Every handler
//! checks membership first: only members see or change a conversation.

use std::sync::Arc;

use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use chat_core::{
    ClientKey, Conversation, ConversationId, ConversationKind, DeviceAddress, Direction, Envelope,
    ErrorCode, GroupOp, GroupSettings, GroupState, MessageId, Permission, ReceiptPosition, Role,
    Timestamp, UserId,
};
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ApiResult};
use super::{Json, Path, Query};
use crate::auth::Authed;
use crate::state::{Shared, now};

/// The most messages one history page returns.
pub(crate) const MAX_HISTORY_PAGE: usize = 100;
/// Messages per history page when the request does not say.
const DEFAULT_HISTORY_PAGE: usize = 50;

/// The most store pages one history request reads to fill a page around withheld messages.
const MAX_HISTORY_ROUNDS: usize = 4;

/// A request by a member of the conversation in the path (`{id}`): authenticated, and
/// checked for membership before the handler runs.
pub(crate) struct Member {
    /// The calling device.
    pub(crate) device: DeviceAddress,
    /// The conversation in the path.
    pub(crate) id: ConversationId,
}

#[derive(Deserialize)]
struct ConversationPath {
    id: ConversationId,
}

impl FromRequestParts<Arc<Shared>> for Member {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, shared: &Arc<Shared>) -> Result<Self, ApiError> {
        let authed = Authed::from_request_parts(parts, shared).await?;
        let Path(ConversationPath { id }) = Path::from_request_parts(parts, shared).await?;
        if !shared.store.is_member(id, authed.device.user).await? {
            // Non-members cannot tell a conversation they are not in from one that does not
            // exist.
            return Err(ApiError::new(
                ErrorCode::NotMember,
                "not a member of this conversation",
            ));
        }
        Ok(Self {
            device: authed.device,
            id,
        })
    }
}

/// Refuses membership changes in a one-to-one conversation.
pub(crate) async fn require_group(
    shared: &Shared,
    id: ConversationId,
    message: &str,
) -> ApiResult<()> {
    let conversation = shared.store.conversation(id).await?;
    if conversation.is_some_and(|c| c.kind == ConversationKind::Direct) {
        return Err(ApiError::new(ErrorCode::InvalidRequest, message));
    }
    Ok(())
}

pub(crate) async fn require_users_exist(shared: &Shared, users: &[UserId]) -> ApiResult<()> {
    for &user in users {
        if shared.store.user(user).await?.is_none() {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!("no user {user}"),
            ));
        }
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DirectRequest {
    user_id: UserId,
}

pub(crate) async fn open_direct(
    State(shared): State<Arc<Shared>>,
    authed: Authed,
    Json(req): Json<DirectRequest>,
) -> ApiResult<Json<Conversation>> {
    require_users_exist(&shared, &[req.user_id]).await?;
    // A user who blocks the caller looks like one who does not exist.
    let missing = || ApiError::new(ErrorCode::NotFound, format!("no user {}", req.user_id));
    super::people::unless_blocked_by(&shared, req.user_id, authed.device.user, missing).await?;
    let conversation = shared
        .store
        .open_direct(authed.device.user, req.user_id, now())
        .await?;
    Ok(Json(conversation))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MembersRequest {
    members: Vec<UserId>,
}

/// A group's creation: its members, and optionally its name and settings (clients from
/// before roles send only `members`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateGroupRequest {
    members: Vec<UserId>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    settings: Option<GroupSettings>,
}

pub(crate) async fn create_group(
    State(shared): State<Arc<Shared>>,
    authed: Authed,
    Json(req): Json<CreateGroupRequest>,
) -> ApiResult<(StatusCode, Json<Conversation>)> {
    if req.members.len() > shared.config.max_group_members {
        return Err(ApiError::new(ErrorCode::GroupFull, "too many members"));
    }
    if let Some(name) = &req.name {
        // Checked before the group exists, so a bad name creates nothing.
        GroupState::create(authed.device.user, name, &[], GroupSettings::default())
            .map_err(chat_core::StoreError::Group)?;
    }
    require_users_exist(&shared, &req.members).await?;
    let limit = shared.config.max_group_members;
    let creator = authed.device.user;
    let group = shared
        .store
        .create_group(creator, &req.members, limit, now())
        .await?;
    // The creator is the group's only admin, so these cannot be refused by the rules.
    if let Some(name) = req.name {
        change(&shared, group.id, creator, GroupOp::Rename(name)).await?;
    }
    if let Some(settings) = req.settings {
        change(
            &shared,
            group.id,
            creator,
            GroupOp::ChangeSettings(settings),
        )
        .await?;
    }
    Ok((StatusCode::CREATED, Json(group)))
}

/// Every unsigned membership, role, name and settings change (clients from before signed
/// changes; refused for a group with a chain, whose changes come through
/// [`super::group_changes`]) goes through here to the store, which decides it with
/// chat-core's group rules in one atomic step (the one place they are checked: a non-admin
/// removing another member is refused there, as is the 101st member under concurrent adds).
async fn change(
    shared: &Shared,
    id: ConversationId,
    actor: UserId,
    op: GroupOp,
) -> ApiResult<GroupState> {
    let limit = shared.config.max_group_members;
    Ok(shared
        .store
        .change_group(id, actor, &op, limit, None)
        .await?)
}

pub(crate) async fn list(
    State(shared): State<Arc<Shared>>,
    authed: Authed,
) -> ApiResult<Json<Vec<Conversation>>> {
    Ok(Json(
        shared.store.conversations_of(authed.device.user).await?,
    ))
}

pub(crate) async fn get(
    State(shared): State<Arc<Shared>>,
    Member { id, .. }: Member,
) -> ApiResult<Json<Conversation>> {
    let conversation = shared.store.conversation(id).await?;
    conversation
        .map(Json)
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "no such conversation"))
}

/// A conversation's members; for a group also each member's role, the name and the
/// settings (added fields: clients that read only `members` keep working).
#[derive(Serialize)]
pub(crate) struct Members {
    members: Vec<UserId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    roles: Option<Vec<MemberRole>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    settings: Option<GroupSettings>,
}

#[derive(Serialize)]
struct MemberRole {
    user_id: UserId,
    role: Role,
}

pub(crate) async fn members(
    State(shared): State<Arc<Shared>>,
    Member { id, .. }: Member,
) -> ApiResult<Json<Members>> {
    let direct = shared
        .store
        .conversation(id)
        .await?
        .is_some_and(|c| c.kind == ConversationKind::Direct);
    if direct {
        return Ok(Json(Members {
            members: shared.store.members(id).await?,
            roles: None,
            name: None,
            settings: None,
        }));
    }
    let group = shared.store.group(id).await?;
    Ok(Json(Members {
        members: group.members().map(|(u, _)| u).collect(),
        roles: Some(
            group
                .members()
                .map(|(user_id, m)| MemberRole {
                    user_id,
                    role: m.role,
                })
                .collect(),
        ),
        name: Some(group.name().to_owned()),
        settings: Some(group.settings()),
    }))
}

#[derive(Serialize)]
pub(crate) struct Devices {
    devices: Vec<DeviceAddress>,
}

/// The current linked devices of every member: the recipient set a `send` must cover (minus
/// the sending device).
pub(crate) async fn devices(
    State(shared): State<Arc<Shared>>,
    Member { id, .. }: Member,
) -> ApiResult<Json<Devices>> {
    let mut devices = Vec::new();
    for user in shared.store.members(id).await? {
        devices.extend(
            shared
                .store
                .devices(user)
                .await?
                .into_iter()
                .filter(|d| d.linked)
                .map(|d| d.address),
        );
    }
    Ok(Json(Devices { devices }))
}

pub(crate) async fn add_members(
    State(shared): State<Arc<Shared>>,
    Member { id, device }: Member,
    Json(req): Json<MembersRequest>,
) -> ApiResult<StatusCode> {
    require_group(&shared, id, "one-to-one conversations have two members").await?;
    require_users_exist(&shared, &req.members).await?;
    change(&shared, id, device.user, GroupOp::Add(req.members)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Removes a member (admins only); removing oneself is leaving, open to every member.
pub(crate) async fn remove_member(
    State(shared): State<Arc<Shared>>,
    Member { id, device }: Member,
    Path((_, user)): Path<(ConversationId, UserId)>,
) -> ApiResult<StatusCode> {
    require_group(&shared, id, "cannot leave a one-to-one conversation").await?;
    let op = if user == device.user {
        GroupOp::Leave
    } else {
        GroupOp::Remove(user)
    };
    change(&shared, id, device.user, op).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The caller leaves the group (the same as removing oneself).
pub(crate) async fn leave(
    State(shared): State<Arc<Shared>>,
    Member { id, device }: Member,
) -> ApiResult<StatusCode> {
    require_group(&shared, id, "cannot leave a one-to-one conversation").await?;
    change(&shared, id, device.user, GroupOp::Leave).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Makes a member an admin (admins only).
pub(crate) async fn promote(
    State(shared): State<Arc<Shared>>,
    Member { id, device }: Member,
    Path((_, user)): Path<(ConversationId, UserId)>,
) -> ApiResult<StatusCode> {
    require_group(&shared, id, "one-to-one conversations have no admins").await?;
    change(&shared, id, device.user, GroupOp::Promote(user)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Makes an admin a member (admins only; never the last admin).
pub(crate) async fn demote(
    State(shared): State<Arc<Shared>>,
    Member { id, device }: Member,
    Path((_, user)): Path<(ConversationId, UserId)>,
) -> ApiResult<StatusCode> {
    require_group(&shared, id, "one-to-one conversations have no admins").await?;
    change(&shared, id, device.user, GroupOp::Demote(user)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RenameRequest {
    name: String,
}

/// Renames the group (who may: the `edit_name` setting).
pub(crate) async fn rename(
    State(shared): State<Arc<Shared>>,
    Member { id, device }: Member,
    Json(req): Json<RenameRequest>,
) -> ApiResult<StatusCode> {
    require_group(&shared, id, "one-to-one conversations have no name").await?;
    change(&shared, id, device.user, GroupOp::Rename(req.name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Changes the group's settings (admins only).
pub(crate) async fn settings(
    State(shared): State<Arc<Shared>>,
    Member { id, device }: Member,
    Json(req): Json<SettingsRequest>,
) -> ApiResult<StatusCode> {
    require_group(&shared, id, "one-to-one conversations have no settings").await?;
    let settings = GroupSettings {
        add_members: req.add_members,
        edit_name: req.edit_name,
    };
    change(&shared, id, device.user, GroupOp::ChangeSettings(settings)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SettingsRequest {
    add_members: Permission,
    edit_name: Permission,
}

/// A message as HTTP shows it: ciphertext in hex.
#[derive(Serialize)]
pub(crate) struct MessageView {
    conversation: ConversationId,
    id: MessageId,
    sender: DeviceAddress,
    client_key: ClientKey,
    sent_at: Timestamp,
    body: String,
}

impl From<Envelope> for MessageView {
    fn from(e: Envelope) -> Self {
        Self {
            conversation: e.conversation,
            id: e.id,
            sender: e.sender,
            client_key: e.client_key,
            sent_at: e.sent_at,
            body: hex::encode(&e.body),
        }
    }
}

/// The query of a history request. The anchors are plain numbers because 0 is a valid
/// anchor though not a message ID: `after=0` is the start of the conversation.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Page {
    before: Option<u64>,
    after: Option<u64>,
    limit: Option<usize>,
}

/// Where a history page starts.
enum Start {
    /// The newest messages, newest first (neither anchor).
    Newest,
    /// IDs strictly below this one, newest first.
    Before(MessageId),
    /// IDs strictly above this one, oldest first.
    After(MessageId),
    /// The first messages of the conversation, oldest first (`after=0`).
    First,
    /// Nothing (`before=0`: no message has an ID below 1).
    Nothing,
}

impl Page {
    fn start(&self) -> ApiResult<Start> {
        let id = |field: &str, value: u64| {
            MessageId::new(value)
                .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, format!("{field}: {e}")))
        };
        match (self.before, self.after) {
            (Some(_), Some(_)) => Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "give before or after, not both",
            )),
            (Some(0), None) => Ok(Start::Nothing),
            (Some(before), None) => id("before", before).map(Start::Before),
            (None, Some(0)) => Ok(Start::First),
            (None, Some(after)) => id("after", after).map(Start::After),
            (None, None) => Ok(Start::Newest),
        }
    }
}

/// The page size asked for, or `default`. Every paged route refuses a `limit` outside
/// `1..=max` rather than clamping it: a client that asked for more than `max` and got
/// `max` could take the short page for the end of the list.
pub(crate) fn page_limit(limit: Option<usize>, default: usize, max: usize) -> ApiResult<usize> {
    match limit {
        None => Ok(default),
        Some(limit) if (1..=max).contains(&limit) => Ok(limit),
        Some(_) => Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("limit must be 1 to {max}"),
        )),
    }
}

#[derive(Serialize)]
pub(crate) struct Messages {
    messages: Vec<MessageView>,
}

/// A page of history strictly before or after a message ID (newest first for `before`,
/// oldest first for `after`; `after=0` is the first page); the newest page without either.
pub(crate) async fn history(
    State(shared): State<Arc<Shared>>,
    Member { device, id }: Member,
    Query(page): Query<Page>,
) -> ApiResult<Json<Messages>> {
    let limit = page_limit(page.limit, DEFAULT_HISTORY_PAGE, MAX_HISTORY_PAGE)?;
    // `first`: the anchor itself belongs on the page (the store pages strictly past it).
    let (anchor, direction, mut first) = match page.start()? {
        Start::Newest => (MessageId::MAX, Direction::Before, false),
        Start::Before(before) => (before, Direction::Before, false),
        Start::After(after) => (after, Direction::After, false),
        Start::First => (MessageId::MIN, Direction::After, true),
        Start::Nothing => return Ok(Json(Messages { messages: vec![] })),
    };
    // Messages withheld from the caller (R-ACC-4) are skipped and the page is filled from
    // further ones, so a short page still means the end of history. The rounds are
    // bounded; a long run of withheld messages ends the page early.
    let mut messages = Vec::with_capacity(limit);
    let mut anchor = anchor;
    for _ in 0..MAX_HISTORY_ROUNDS {
        let page = if std::mem::take(&mut first) {
            including(&shared, id, anchor, direction, limit).await?
        } else {
            shared.store.history(id, anchor, direction, limit).await?
        };
        let exhausted = page.len() < limit;
        let Some(last) = page.last().map(|m| m.id) else {
            break;
        };
        let hidden = withheld(&shared, id, device.user, &page).await?;
        let wanted = limit - messages.len();
        messages.extend(
            page.into_iter()
                .filter(|m| !hidden.contains(&m.id))
                .take(wanted),
        );
        if exhausted || hidden.is_empty() || messages.len() >= limit {
            break;
        }
        anchor = last;
    }
    Ok(Json(Messages {
        messages: messages.into_iter().map(MessageView::from).collect(),
    }))
}

/// Up to `limit` messages from `anchor` on in `direction`, `anchor` included when it
/// exists.
async fn including(
    shared: &Shared,
    conversation: ConversationId,
    anchor: MessageId,
    direction: Direction,
    limit: usize,
) -> ApiResult<Vec<Envelope>> {
    let mut page: Vec<Envelope> = shared
        .store
        .message(conversation, anchor)
        .await?
        .into_iter()
        .collect();
    let rest = limit.saturating_sub(page.len());
    if rest > 0 {
        let after = shared.store.history(conversation, anchor, direction, rest);
        page.extend(after.await?);
    }
    Ok(page)
}

pub(crate) async fn message(
    State(shared): State<Arc<Shared>>,
    Member { device, id }: Member,
    Path((_, message)): Path<(ConversationId, MessageId)>,
) -> ApiResult<Json<MessageView>> {
    let envelope = shared.store.message(id, message).await?;
    let hidden = match &envelope {
        Some(e) => withheld(&shared, id, device.user, std::slice::from_ref(e)).await?,
        None => Vec::new(),
    };
    envelope
        .filter(|_| hidden.is_empty())
        .map(|e| Json(e.into()))
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "no such message"))
}

/// The messages of `page` withheld from `viewer` (sent to them by a user they block, in a
/// one-to-one conversation): the blocker never sees them, not even in history.
async fn withheld(
    shared: &Shared,
    conversation: ConversationId,
    viewer: UserId,
    page: &[Envelope],
) -> ApiResult<Vec<MessageId>> {
    let ids: Vec<MessageId> = page
        .iter()
        .filter(|m| m.sender.user != viewer)
        .map(|m| m.id)
        .collect();
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    Ok(shared.store.withheld(conversation, viewer, &ids).await?)
}

#[derive(Serialize)]
pub(crate) struct Receipts {
    receipts: Vec<ReceiptPosition>,
}

pub(crate) async fn receipts(
    State(shared): State<Arc<Shared>>,
    Member { id, .. }: Member,
) -> ApiResult<Json<Receipts>> {
    Ok(Json(Receipts {
        receipts: shared.store.receipts(id).await?,
    }))
}
