//! The storage boundary: small traits split by concern, implemented by chat-storage for
//! memory, SQLite and PostgreSQL, and checked by one conformance suite.
//!
//! Every method is a single atomic step. Where a rule involves several rows (ID allocation
//! and inbox entries, the member limit, one-time prekey claims, idempotency), the store
//! enforces it inside one transaction, so it holds with many concurrent callers and with
//! several server processes sharing one database.

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::ErrorCode;
use crate::group::{GroupOp, GroupRuleError, GroupState};
use crate::ids::{
    AttachmentId, ConversationId, DeviceAddress, DeviceId, InboxPos, MessageId, UserId, Username,
};
use crate::model::{
    Appended, AttachmentMeta, Conversation, Credentials, Device, DeviceKeys, DeviceListRecord,
    DeviceMismatch, Direction, Envelope, InboxEntry, NewMessage, OneTimePrekey, PrekeyBundle,
    PushToken, ReceiptKind, ReceiptPosition, TokenHash, User,
};
use crate::people::{Block, Profile, ProfileUpdate, SearchCursor, SearchPrefix};
use crate::time::Timestamp;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The user, device, conversation or message does not exist.
    #[error("not found")]
    NotFound,
    /// The user is not a member of the conversation.
    #[error("not a member of the conversation")]
    NotMember,
    /// The sending device is not linked: its user's signed device list does not name it (a
    /// device waiting to be linked, or one left behind when the account was recovered
    /// elsewhere). Answered as `forbidden`.
    #[error("this device is not on its user's device list")]
    NotLinked,
    /// Adding would take the group past its member limit.
    #[error("group is full ({limit} members)")]
    GroupFull {
        /// The limit in force.
        limit: usize,
    },
    /// The recipients do not match the conversation's current devices.
    #[error("recipient devices are stale")]
    StaleDevices(DeviceMismatch),
    /// A unique name is taken.
    #[error("already exists")]
    Conflict,
    /// The sending device used this client key for a message in another conversation: a
    /// retry must name the conversation of the first send (R-MSG-2).
    #[error("client key already used for a message in another conversation")]
    ClientKeyReused,
    /// The user already has `MAX_DEVICES_PER_USER` devices.
    #[error("too many devices")]
    TooManyDevices,
    /// The request breaks a rule of the model (for example adding members to a 1:1).
    #[error("invalid request: {0}")]
    Invalid(&'static str),
    /// A group operation the group rules refuse ([`crate::apply_group_op`]).
    #[error("group rule: {0}")]
    Group(GroupRuleError),
    /// A signed group change names a parent other than the group's stored chain head: a
    /// concurrent change won, and the change must be made again on the new state.
    #[error("group change applies to another state")]
    StaleGroupChange,
    /// An unsigned group change to a group that has a chain of signed changes.
    #[error("this group changes only by signed changes")]
    UnsignedGroupChange,
    /// The database was written by a newer version of this software.
    #[error("store schema version {found} is newer than this build supports ({supported})")]
    SchemaTooNew {
        /// The version found in the database.
        found: u32,
        /// The newest version this build knows.
        supported: u32,
    },
    /// The backend failed (I/O, connection, corruption). The operation did not happen, or
    /// happened atomically in full; retrying an append with the same client key is safe.
    /// Its message carries the backend error's own causes too (PostgreSQL's words behind
    /// `db error`, say).
    #[error("storage backend failed: {}", with_causes(.0.as_ref()))]
    Backend(Box<dyn std::error::Error + Send + Sync>),
}

/// `err` followed by each cause in its `source()` chain that its text does not already
/// include, separated by `: `.
fn with_causes(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(next) = cause {
        let more = next.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = next.source();
    }
    text
}

impl StoreError {
    /// Wraps a backend error.
    pub fn backend(err: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Backend(Box::new(err))
    }

    /// The wire error code for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::NotFound => ErrorCode::NotFound,
            Self::NotMember => ErrorCode::NotMember,
            Self::NotLinked => ErrorCode::Forbidden,
            Self::GroupFull { .. } => ErrorCode::GroupFull,
            Self::StaleDevices(_) => ErrorCode::StaleDevices,
            Self::Conflict | Self::ClientKeyReused | Self::StaleGroupChange => ErrorCode::Conflict,
            Self::TooManyDevices => ErrorCode::TooManyDevices,
            Self::Invalid(_) | Self::UnsignedGroupChange => ErrorCode::InvalidRequest,
            Self::Group(rule) => match rule {
                GroupRuleError::NotMember => ErrorCode::NotMember,
                GroupRuleError::NotAdmin => ErrorCode::Forbidden,
                GroupRuleError::TooManyMembers => ErrorCode::GroupFull,
                GroupRuleError::UnknownMember(_) => ErrorCode::NotFound,
                _ => ErrorCode::InvalidRequest,
            },
            Self::SchemaTooNew { .. } | Self::Backend(_) => ErrorCode::Unavailable,
        }
    }
}

/// Shorthand for store results.
pub type StoreResult<T> = Result<T, StoreError>;

/// A signed group change as the store keeps it (issue 17): where it goes in the group's
/// chain, and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainLink {
    /// The chain head the change applies to (all zeros for a group's first change).
    pub parent: [u8; 32],
    /// The chain head after it.
    pub head: [u8; 32],
    /// The encoded change (opaque to the store).
    pub change: Bytes,
}

/// Users, devices and bearer tokens (R-ACC-1, R-ACC-2).
#[async_trait]
pub trait AccountStore: Send + Sync {
    /// Creates a user; [`StoreError::Conflict`] when the username is taken.
    async fn create_user(
        &self,
        username: &Username,
        password_hash: &str,
        now: Timestamp,
    ) -> StoreResult<User>;

    /// The login record for a username.
    async fn credentials(&self, username: &Username) -> StoreResult<Option<Credentials>>;

    /// A user by ID.
    async fn user(&self, user: UserId) -> StoreResult<Option<User>>;

    /// Registers a new device for `user` together with its first token, atomically.
    /// [`StoreError::TooManyDevices`] at `MAX_DEVICES_PER_USER`.
    async fn add_device(
        &self,
        user: UserId,
        name: &str,
        token: TokenHash,
        now: Timestamp,
    ) -> StoreResult<Device>;

    /// Adds another token for an existing device of `user` (logging in again on it).
    async fn add_token(
        &self,
        device: DeviceAddress,
        token: TokenHash,
        now: Timestamp,
    ) -> StoreResult<()>;

    /// The user's current devices, by device ID.
    async fn devices(&self, user: UserId) -> StoreResult<Vec<Device>>;

    /// Removes a device: its tokens stop working at once, its keys, push token and inbox go.
    /// [`StoreError::NotFound`] if the device is not the user's.
    async fn remove_device(&self, device: DeviceAddress) -> StoreResult<()>;

    /// The device a token belongs to, if the token is live.
    async fn authenticate(&self, token: TokenHash) -> StoreResult<Option<DeviceAddress>>;

    /// Revokes one token (log-out). Returns whether it existed.
    async fn revoke_token(&self, token: TokenHash) -> StoreResult<bool>;

    /// Records when the user was last active (presence); never moves backwards.
    async fn set_last_active(&self, user: UserId, at: Timestamp) -> StoreResult<()>;

    /// When the user was last active, if ever.
    async fn last_active(&self, user: UserId) -> StoreResult<Option<Timestamp>>;
}

/// The public-key directory (R-E2E-1).
#[async_trait]
pub trait KeyStore: Send + Sync {
    /// Sets (or replaces) the device's identity and signed prekey. When the identity changes,
    /// the device's one-time prekey pool is emptied: those keys belong to the old identity.
    async fn set_device_keys(&self, device: DeviceAddress, keys: &DeviceKeys) -> StoreResult<()>;

    /// Adds one-time prekeys to the device's pool; a key ID already in the pool is ignored.
    async fn add_one_time_prekeys(
        &self,
        device: DeviceAddress,
        keys: &[OneTimePrekey],
    ) -> StoreResult<()>;

    /// Claims a bundle for every device of `user` that has published keys, removing one
    /// one-time prekey from each pool. No prekey is ever handed out twice, even to
    /// concurrent callers.
    async fn claim_bundles(&self, user: UserId) -> StoreResult<Vec<PrekeyBundle>>;

    /// The bundles [`KeyStore::claim_bundles`] would return, but with no one-time prekey
    /// and nothing claimed: the X3DH fallback to the signed prekey alone, for when the
    /// server will not hand out more of `user`'s one-time prekeys for now.
    async fn fallback_bundles(&self, user: UserId) -> StoreResult<Vec<PrekeyBundle>>;

    /// How many one-time prekeys the device has left.
    async fn one_time_prekey_count(&self, device: DeviceAddress) -> StoreResult<u64>;

    /// The user's signed device list, if one was published.
    async fn device_list(&self, user: UserId) -> StoreResult<Option<DeviceListRecord>>;

    /// Publishes the user's device list, atomically: the record replaces the stored one and
    /// exactly the user's devices in `linked` (the devices the list names) become linked.
    /// [`StoreError::Conflict`] unless the version is higher than the stored one's.
    async fn set_device_list(
        &self,
        user: UserId,
        record: &DeviceListRecord,
        linked: &[DeviceId],
    ) -> StoreResult<()>;

    /// Leaves a sealed link payload for `device` (replacing an earlier one), for it to fetch
    /// with [`KeyStore::link_payload`]. [`StoreError::NotFound`] if the device is not the
    /// user's.
    async fn set_link_payload(&self, device: DeviceAddress, sealed: Bytes) -> StoreResult<()>;

    /// The sealed link payload left for `device`, if any.
    async fn link_payload(&self, device: DeviceAddress) -> StoreResult<Option<Bytes>>;
}

/// Conversations and their members (R-CONV).
#[async_trait]
pub trait ConversationStore: Send + Sync {
    /// The one-to-one conversation of `a` and `b`, created on first call; the same ID for
    /// `(a, b)` and `(b, a)`, even when both open it at once.
    async fn open_direct(&self, a: UserId, b: UserId, now: Timestamp) -> StoreResult<Conversation>;

    /// Creates a group with `creator` (its admin) and `members` (duplicates and the creator
    /// ignored), named [`crate::DEFAULT_GROUP_NAME`] with the default settings.
    /// [`StoreError::GroupFull`] if that is more than `limit`.
    async fn create_group(
        &self,
        creator: UserId,
        members: &[UserId],
        limit: usize,
        now: Timestamp,
    ) -> StoreResult<Conversation>;

    /// Applies a group operation by `actor` under the group rules of
    /// [`crate::apply_group_op`], in one atomic step serialized with every other change to
    /// the group, so the member limit holds under concurrent adds. Returns the new state.
    /// Past `limit` (never above `MAX_GROUP_MEMBERS`) nothing changes and
    /// [`StoreError::GroupFull`] is returned; other rule refusals are [`StoreError::Group`];
    /// an add naming a user that does not exist is [`StoreError::NotFound`]; a one-to-one
    /// conversation is [`StoreError::Invalid`], an unknown one [`StoreError::NotFound`].
    /// Every refusal changes nothing.
    ///
    /// `link` is the signed change that carries `op` (issue 17), or `None`:
    /// - `None`, the unsigned path kept for old clients: users already members are skipped
    ///   in an add, and an add naming only members changes nothing. A group that has a chain
    ///   (a stored head) refuses it with [`StoreError::UnsignedGroupChange`].
    /// - `Some(link)`: in the same atomic step, `link.parent` must be the group's stored
    ///   chain head (all zeros before its first signed change), else
    ///   [`StoreError::StaleGroupChange`]. The first signed change must be a
    ///   [`GroupOp::Create`] by `actor` that gives exactly the stored state (the creator,
    ///   members, roles, name and settings the group has), else [`StoreError::Invalid`]; it
    ///   starts the chain and leaves the state as it is. Every later one follows the group
    ///   rules strictly (an add naming a member is refused, as on every device). The change
    ///   is then appended to the chain (sequence numbers from 1) and `link.head` becomes the
    ///   stored head. A `link.head` of all zeros is [`StoreError::Invalid`].
    ///
    /// The store never parses or verifies `link.change`: the server and the clients do.
    async fn change_group(
        &self,
        conversation: ConversationId,
        actor: UserId,
        op: &GroupOp,
        limit: usize,
        link: Option<&ChainLink>,
    ) -> StoreResult<GroupState>;

    /// Up to `limit` changes of a group's signed chain with a sequence number above
    /// `after`, with their sequence numbers, in order (the first change is 1). Empty for a
    /// group without a chain; [`StoreError::Invalid`] for a one-to-one conversation,
    /// [`StoreError::NotFound`] for an unknown one.
    async fn group_changes(
        &self,
        conversation: ConversationId,
        after: u64,
        limit: usize,
    ) -> StoreResult<Vec<(u64, Bytes)>>;

    /// A group's members with their roles, its name and settings.
    /// [`StoreError::Invalid`] for a one-to-one conversation.
    async fn group(&self, conversation: ConversationId) -> StoreResult<GroupState>;

    /// A conversation's record.
    async fn conversation(&self, conversation: ConversationId)
    -> StoreResult<Option<Conversation>>;

    /// The current members, by user ID.
    async fn members(&self, conversation: ConversationId) -> StoreResult<Vec<UserId>>;

    /// Whether `user` is a current member.
    async fn is_member(&self, conversation: ConversationId, user: UserId) -> StoreResult<bool>;

    /// The conversations `user` is a member of, by conversation ID.
    async fn conversations_of(&self, user: UserId) -> StoreResult<Vec<Conversation>>;
}

/// Messages, inboxes and cursors (R-MSG, R-SYNC).
#[async_trait]
pub trait MessageStore: Send + Sync {
    /// Appends a message durably, in one atomic step:
    /// - if `(sender.device, client_key)` was used before, returns that message's ID with
    ///   `duplicate: true` and writes nothing, or [`StoreError::ClientKeyReused`] when that
    ///   message is in another conversation;
    /// - else checks that the sender is a member ([`StoreError::NotMember`]) and that the
    ///   recipients are exactly the current devices of all members minus the sending device
    ///   ([`StoreError::StaleDevices`]);
    /// - assigns the next message ID of the conversation and the next inbox position of
    ///   every recipient device, and writes the message and the inbox entries;
    /// - in a one-to-one conversation whose other member blocks the sender, writes no inbox
    ///   entry for that member's devices (they are still required in `recipients`, so the
    ///   sender cannot tell) and records the message as withheld from them
    ///   ([`BlockStore::withheld`]). `deliveries` then lists only the other devices.
    ///
    /// Returns only after the commit is durable. Concurrent appends share commits.
    async fn append(&self, message: NewMessage) -> StoreResult<Appended>;

    /// Appends several messages, each as [`append`](Self::append) would, in the order
    /// given: of two messages to one conversation, the later in `messages` gets the higher
    /// ID. Returns each message's result, in that order; a refused message writes nothing
    /// and does not affect the others. The gateway appends the sends a connection queued
    /// to one conversation this way, so they share a commit and keep the sender's order.
    ///
    /// The default appends them one after another; SQLite queues them to its writer
    /// together, PostgreSQL runs them in one batch.
    async fn append_all(&self, messages: Vec<NewMessage>) -> Vec<StoreResult<Appended>> {
        let mut results = Vec::with_capacity(messages.len());
        for message in messages {
            results.push(self.append(message).await);
        }
        results
    }

    /// Up to `limit` entries of the device's inbox after `after`, in order.
    async fn inbox(
        &self,
        device: DeviceAddress,
        after: InboxPos,
        limit: usize,
    ) -> StoreResult<Vec<InboxEntry>>;

    /// The highest inbox position ever assigned to the device (`InboxPos::ZERO` before its
    /// first entry). Trimming never lowers it: positions are never reused, so the next
    /// append gets `head + 1` even when every entry was trimmed.
    async fn inbox_head(&self, device: DeviceAddress) -> StoreResult<InboxPos>;

    /// Inbox retention (R-SYNC-2): deletes up to `limit` inbox entries, of any devices,
    /// whose message was stored before `sent_before` (its `sent_at`), and returns how many
    /// it deleted.
    ///
    /// For every device that lost entries, raises its trim floor
    /// ([`inbox_floor`](Self::inbox_floor)) to the highest position deleted; the floor is
    /// never lowered. Entries stored at or after `sent_before` stay, and so do the
    /// messages themselves: only the per-device pointer and header go, so
    /// [`history`](Self::history) and [`message`](Self::message) still return them. The
    /// head and the position counter are untouched (positions are never reused).
    ///
    /// Each call is one short transaction; a periodic task calls it until it returns less
    /// than `limit`. Entries are found through an index on their time, so a call costs
    /// about `limit` entries, not a scan of every inbox.
    async fn trim_inboxes(&self, sent_before: Timestamp, limit: usize) -> StoreResult<u64>;

    /// The device's trim floor: the highest inbox position deleted by
    /// [`trim_inboxes`](Self::trim_inboxes), `InboxPos::ZERO` if nothing was trimmed. A
    /// cursor below it cannot be served in full: the entries up to the floor may be gone
    /// (the gateway answers `resync_required {inbox_trimmed, head: floor}` and continues
    /// after the floor). Never above [`inbox_head`](Self::inbox_head).
    async fn inbox_floor(&self, device: DeviceAddress) -> StoreResult<InboxPos>;

    /// Moves the device's acknowledged cursor forward (never backwards); returns the stored
    /// cursor.
    async fn ack(&self, device: DeviceAddress, up_to: InboxPos) -> StoreResult<InboxPos>;

    /// Moves several devices' cursors forward at once, each as [`ack`](Self::ack) would,
    /// and skips devices that no longer exist (removed since they acknowledged). The
    /// gateway stores the acknowledgements it gathered this way, a batch at a time: one
    /// write for many devices instead of one per `ack` frame.
    ///
    /// The default calls `ack` for each; SQLite overrides it with one transaction,
    /// PostgreSQL with one statement per 256 devices.
    async fn ack_all(&self, acks: &[(DeviceAddress, InboxPos)]) -> StoreResult<()> {
        for &(device, up_to) in acks {
            match self.ack(device, up_to).await {
                Ok(_) | Err(StoreError::NotFound) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    /// The device's acknowledged cursor.
    async fn cursor(&self, device: DeviceAddress) -> StoreResult<InboxPos>;

    /// Up to `limit` messages of a conversation strictly before or after `anchor`: `Before`
    /// newest first, `After` oldest first. `anchor` need not exist.
    async fn history(
        &self,
        conversation: ConversationId,
        anchor: MessageId,
        direction: Direction,
        limit: usize,
    ) -> StoreResult<Vec<Envelope>>;

    /// One message by ID (an index lookup).
    async fn message(
        &self,
        conversation: ConversationId,
        id: MessageId,
    ) -> StoreResult<Option<Envelope>>;
}

/// Delivered and read positions (R-MSG-6, R-MSG-8).
#[async_trait]
pub trait ReceiptStore: Send + Sync {
    /// Raises the user's position of `kind` in the conversation to `up_to` if that is
    /// higher; never lowers it. Returns the stored position.
    async fn set_receipt(
        &self,
        conversation: ConversationId,
        user: UserId,
        kind: ReceiptKind,
        up_to: MessageId,
    ) -> StoreResult<MessageId>;

    /// Every member's stored positions in the conversation.
    async fn receipts(&self, conversation: ConversationId) -> StoreResult<Vec<ReceiptPosition>>;
}

/// Attachment records and push tokens: small per-object metadata (R-ATT-2, R-PUSH-1).
#[async_trait]
pub trait MetaStore: Send + Sync {
    /// Records a completed upload.
    async fn insert_attachment(&self, meta: &AttachmentMeta) -> StoreResult<()>;

    /// An attachment's record.
    async fn attachment(&self, id: AttachmentId) -> StoreResult<Option<AttachmentMeta>>;

    /// Sets or (with `None`) removes the device's push token.
    async fn set_push_token(
        &self,
        device: DeviceAddress,
        token: Option<&PushToken>,
    ) -> StoreResult<()>;

    /// The device's push token.
    async fn push_token(&self, device: DeviceAddress) -> StoreResult<Option<PushToken>>;
}

/// Profiles and the display-name directory (R-ACC-3).
#[async_trait]
pub trait ProfileStore: Send + Sync {
    /// Sets the user's whole profile (replacing any earlier one) and its search key;
    /// [`StoreError::NotFound`] for an unknown user.
    async fn set_profile(
        &self,
        user: UserId,
        profile: &ProfileUpdate,
        now: Timestamp,
    ) -> StoreResult<Profile>;

    /// The user's profile; `None` when they never set one (or do not exist).
    async fn profile(&self, user: UserId) -> StoreResult<Option<Profile>>;

    /// Up to `limit` profiles whose search key starts with `prefix`, in `(key, user)` order,
    /// strictly after `after` when given. One index range scan on every backend.
    async fn search_profiles(
        &self,
        prefix: &SearchPrefix,
        after: Option<&SearchCursor>,
        limit: usize,
    ) -> StoreResult<Vec<Profile>>;
}

/// Blocks between users (R-ACC-4). A block is one-way: `blocker` blocked `blocked`; the
/// reverse is a separate block.
#[async_trait]
pub trait BlockStore: Send + Sync {
    /// Records that `blocker` blocks `blocked`. Returns false when the block existed
    /// already. [`StoreError::NotFound`] for an unknown user, [`StoreError::Invalid`] for
    /// blocking oneself.
    async fn block(&self, blocker: UserId, blocked: UserId, now: Timestamp) -> StoreResult<bool>;

    /// Removes a block. Returns whether it existed.
    async fn unblock(&self, blocker: UserId, blocked: UserId) -> StoreResult<bool>;

    /// The users `blocker` blocks, by user ID.
    async fn blocks(&self, blocker: UserId) -> StoreResult<Vec<Block>>;

    /// Whether `blocker` blocks `blocked`.
    async fn is_blocked(&self, blocker: UserId, blocked: UserId) -> StoreResult<bool>;

    /// The users who block `user`, by user ID (for the server's checks; never shown to
    /// `user`).
    async fn blocked_by(&self, user: UserId) -> StoreResult<Vec<UserId>>;

    /// Which of `ids` in a conversation were withheld from `user`: messages a user they
    /// block sent them in a one-to-one conversation while the block stood. [`MessageStore::append`]
    /// decides that in its transaction, writes no inbox entry for the blocker's devices, and
    /// records it with the message; it never changes afterwards.
    async fn withheld(
        &self,
        conversation: ConversationId,
        user: UserId,
        ids: &[MessageId],
    ) -> StoreResult<Vec<MessageId>>;
}

/// Whether the store can take writes, for readiness checks.
#[async_trait]
pub trait HealthStore: Send + Sync {
    /// Commits a small durable write that changes nothing visible, the way every other write
    /// commits (through the same writer, with the same sync), so a full disk, a read-only
    /// file or a lost database connection fails it. It only rewrites what is there: it
    /// never grows the store.
    async fn probe_write(&self) -> StoreResult<()>;
}

/// Everything a chat node needs from storage. Implemented automatically for any type that
/// implements the parts.
pub trait Store:
    AccountStore
    + KeyStore
    + ConversationStore
    + MessageStore
    + ReceiptStore
    + MetaStore
    + ProfileStore
    + BlockStore
    + HealthStore
{
}

impl<T> Store for T where
    T: AccountStore
        + KeyStore
        + ConversationStore
        + MessageStore
        + ReceiptStore
        + MetaStore
        + ProfileStore
        + BlockStore
        + HealthStore
{
}

#[cfg(test)]
mod error_tests {
    use super::*;

    /// An error whose message is vague and whose cause says what happened, like
    /// tokio-postgres's `db error`.
    #[derive(Debug)]
    struct Vague(std::io::Error);

    impl std::fmt::Display for Vague {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("db error")
        }
    }

    impl std::error::Error for Vague {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn backend_errors_keep_their_causes() {
        let err = StoreError::backend(Vague(std::io::Error::other(
            "database \"chat\" does not exist",
        )));
        assert_eq!(
            err.to_string(),
            "storage backend failed: db error: database \"chat\" does not exist"
        );
        // A cause already in the message is not repeated.
        let err = StoreError::backend(std::io::Error::other("disk full"));
        assert_eq!(err.to_string(), "storage backend failed: disk full");
    }
}
