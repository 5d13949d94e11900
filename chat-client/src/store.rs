//! Local state: the [`ClientStore`] trait, its records, and the in-memory implementation.
//!
//! The store owns everything a device must not lose: its account keys, token, sessions,
//! sender keys, inbox cursor, outbox, conversation list and decrypted history. Reads are
//! small lookups; every write goes through [`ClientStore::commit`], which applies a batch of
//! [`Write`]s atomically. The client relies on that: a decrypted message, the session state
//! that decrypted it and the advanced cursor are one batch, so a crash can neither skip a
//! message nor store it twice; an outgoing message and the ratchet state that produced it are
//! one batch too, so a retry never re-encrypts.
//!
//! Calls are synchronous and short (an embedded database); the client calls them from its
//! tasks without holding any lock across an `.await`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;

use chat_core::{
    ClientKey, Content, ConversationId, ConversationKind, DeviceAddress, InboxPos, MessageId,
    ReadPosition, Timestamp, UserId,
};
use chat_crypto::Zeroizing;

use crate::error::{Error, Result};
use crate::search::{SearchPage, SearchResults};

/// Secret bytes (a pickle); wiped on drop.
pub type Secret = Zeroizing<Vec<u8>>;

/// This device's identity on the server.
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// The server's address (`host:port`).
    pub server: String,
    /// This device and its user.
    pub address: DeviceAddress,
    /// The bearer token (a secret; redacted in `Debug`).
    pub token: String,
}

impl fmt::Debug for DeviceRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceRecord")
            .field("server", &self.server)
            .field("address", &self.address)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// A decrypted message as stored locally (own sent messages included).
#[derive(Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Its conversation.
    pub conversation: ConversationId,
    /// Its server-assigned ID.
    pub id: MessageId,
    /// The sending device.
    pub sender: DeviceAddress,
    /// The client key the sender chose.
    pub client_key: ClientKey,
    /// When the server stored it.
    pub sent_at: Timestamp,
    /// The encoded plaintext content (`chat_core::Content`).
    pub plaintext: Vec<u8>,
}

impl StoredMessage {
    /// Whether `other` is this message (the same sending device and client key), not another
    /// one under the same ID.
    pub fn same_message(&self, other: &Self) -> bool {
        self.conversation == other.conversation
            && self.id == other.id
            && self.sender == other.sender
            && self.client_key == other.client_key
    }
}

impl fmt::Debug for StoredMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredMessage")
            .field("conversation", &self.conversation)
            .field("id", &self.id)
            .field("sender", &self.sender)
            .field(
                "plaintext",
                &format_args!("<{} bytes>", self.plaintext.len()),
            )
            .finish_non_exhaustive()
    }
}

/// A message waiting for the server's `sent`: the exact bytes to (re)send.
#[derive(Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// The idempotency key; a retry sends the same one.
    pub client_key: ClientKey,
    /// The target conversation.
    pub conversation: ConversationId,
    /// The encrypted message (see `crate::outgoing`): body and headers, and for one-to-one
    /// messages the content key that lets headers be added for new devices.
    pub payload: Secret,
    /// The encoded plaintext, stored in history once the server acknowledges.
    pub plaintext: Vec<u8>,
}

impl fmt::Debug for OutboxEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboxEntry")
            .field("client_key", &self.client_key)
            .field("conversation", &self.conversation)
            .finish_non_exhaustive()
    }
}

/// A conversation the device knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConversationRecord {
    /// Its ID.
    pub id: ConversationId,
    /// One-to-one or group.
    pub kind: ConversationKind,
}

/// A change to the local search index, applied with the batch that caused it (a message
/// stored, edited or deleted), so the index never disagrees with history.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SearchWrite {
    /// Indexes a message's current text (replacing what was indexed for it).
    Index {
        /// Its conversation.
        conversation: ConversationId,
        /// The message.
        message: MessageId,
        /// The text to find it by (plaintext: redacted in `Debug`).
        text: String,
    },
    /// Forgets a message (deleted).
    Remove {
        /// Its conversation.
        conversation: ConversationId,
        /// The message.
        message: MessageId,
    },
}

impl fmt::Debug for SearchWrite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Index {
                conversation,
                message,
                text,
            } => f
                .debug_struct("Index")
                .field("conversation", conversation)
                .field("message", message)
                .field("text", &format_args!("<{} bytes>", text.len()))
                .finish(),
            Self::Remove {
                conversation,
                message,
            } => f
                .debug_struct("Remove")
                .field("conversation", conversation)
                .field("message", message)
                .finish(),
        }
    }
}

/// Where a conversation's history stood locally when the server could not serve the inbox
/// from the cursor: the newest message stored then. History after it is read from the
/// server to recover what the inbox no longer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryPoint {
    /// The conversation.
    pub conversation: ConversationId,
    /// Its newest stored message then (`None`: nothing stored).
    pub newest: Option<MessageId>,
}

/// How a stored message relates to others, derived from its plaintext: its content type and,
/// for an edit, delete or reaction, the message it points at.
pub(crate) fn classify(plaintext: &[u8]) -> (u32, Option<MessageId>) {
    match Content::decode(plaintext) {
        Ok(content) => (content.kind(), content.target()),
        Err(_) => (0, None),
    }
}

/// Whether a message of this content type counts as unread: texts, attachments and types
/// this build does not know, not membership changes (edits, deletes and reactions are not
/// messages of their own).
pub(crate) fn counts_as_unread(kind: u32) -> bool {
    use chat_core::kinds::{DELETE, EDIT, GROUP_CHANGE, REACTION};
    !matches!(kind, GROUP_CHANGE | EDIT | DELETE | REACTION)
}

/// One change to the store; a batch of them is applied atomically by [`ClientStore::commit`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Write {
    /// Sets this device's record.
    Device(DeviceRecord),
    /// Sets the account pickle (`chat_crypto::Account`).
    Account(Secret),
    /// Sets the sessions with one remote device (`chat_crypto::DeviceSessions` pickle).
    Sessions(DeviceAddress, Secret),
    /// Sets this device's sender key for a group and the devices it was handed to.
    SenderKey {
        /// The group.
        conversation: ConversationId,
        /// `chat_crypto::SenderKey` pickle.
        pickle: Secret,
        /// The devices that hold this key.
        distributed: Vec<DeviceAddress>,
    },
    /// Sets the inbound sender keys of one (group, sender device).
    Receiver {
        /// The group.
        conversation: ConversationId,
        /// The sending device.
        sender: DeviceAddress,
        /// `chat_crypto::SenderKeyReceiver` pickle.
        pickle: Secret,
    },
    /// Sets the inbox cursor.
    Cursor(InboxPos),
    /// Adds a message to history (ignored if `(conversation, id)` is already there).
    Message(StoredMessage),
    /// Raises this user's read position in a conversation (never lowers it).
    ReadPosition {
        /// The conversation.
        conversation: ConversationId,
        /// Read up to and including this message.
        up_to: MessageId,
    },
    /// Lowers (never raises) this user's read position in a conversation to `up_to`
    /// (`None`: nothing read): the server lost the messages it covered.
    LowerReadPosition {
        /// The conversation.
        conversation: ConversationId,
        /// The new position, if it is lower.
        up_to: Option<MessageId>,
    },
    /// Updates the search index.
    Search(SearchWrite),
    /// Removes a stored message and its search entry: the server gave its ID to another
    /// message (it was restored from a backup that did not have this one).
    Forget {
        /// The conversation.
        conversation: ConversationId,
        /// The message.
        id: MessageId,
    },
    /// Erases a stored message's plaintext (a message deleted by its sender, or an edit of
    /// one): its row stays, with its content type and target, so relations still resolve.
    Redact {
        /// The conversation.
        conversation: ConversationId,
        /// The message.
        id: MessageId,
    },
    /// Sets (or, with `None`, clears) the history recovery still to do after a resync.
    Recovery(Option<Vec<RecoveryPoint>>),
    /// Adds or replaces an outbox entry.
    OutboxPut(OutboxEntry),
    /// Removes an outbox entry.
    OutboxRemove(ClientKey),
    /// Records a conversation.
    Conversation(ConversationRecord),
    /// Records when the signed prekey was last made (it is rotated weekly).
    SignedPrekeyMadeAt(Timestamp),
    /// Sets (or, with `None`, forgets) the devices a send to a conversation must cover.
    ConversationDevices {
        /// The conversation.
        conversation: ConversationId,
        /// Every member device but this one; `None` to fetch it again.
        devices: Option<Vec<DeviceAddress>>,
    },
    /// Sets what this device trusts of a user: their signed device list, whether it was
    /// verified, and an account change waiting to be accepted (the client's encoding).
    Trust {
        /// The user (this user included).
        user: UserId,
        /// The encoded record (public keys and flags; no secret).
        record: Vec<u8>,
    },
    /// Sets the group state this device verified from the group's signed changes (a
    /// `chat_crypto::VerifiedGroup` pickle; public, no secret).
    VerifiedGroup {
        /// The group.
        conversation: ConversationId,
        /// The pickle.
        pickle: Vec<u8>,
    },
}

/// Where a client keeps its state. Implementations: [`MemoryStore`] and
/// [`SqliteStore`](crate::SqliteStore).
pub trait ClientStore: Send + Sync + 'static {
    /// Applies `writes` atomically (all or none) and durably: on disk when it returns.
    fn commit(&self, writes: Vec<Write>) -> Result<()>;
    /// Applies `writes` atomically and visibly (every later read sees them), durable once a
    /// later [`sync`](Self::sync) returns. A crash of the machine may lose staged batches
    /// only as a suffix, never one without those staged before it. The default commits.
    fn stage(&self, writes: Vec<Write>) -> Result<()> {
        self.commit(writes)
    }
    /// Makes every batch staged before the call durable. The default has nothing to do.
    fn sync(&self) -> Result<()> {
        Ok(())
    }
    /// This device's record, if it registered or logged in.
    fn device(&self) -> Result<Option<DeviceRecord>>;
    /// The account pickle.
    fn account(&self) -> Result<Option<Secret>>;
    /// The sessions pickle for one remote device.
    fn sessions(&self, device: DeviceAddress) -> Result<Option<Secret>>;
    /// This device's sender key for a group and the devices that hold it.
    fn sender_key(
        &self,
        conversation: ConversationId,
    ) -> Result<Option<(Secret, Vec<DeviceAddress>)>>;
    /// The inbound sender keys of one (group, sender device).
    fn receiver(
        &self,
        conversation: ConversationId,
        sender: DeviceAddress,
    ) -> Result<Option<Secret>>;
    /// The inbox cursor (`InboxPos::ZERO` at first).
    fn cursor(&self) -> Result<InboxPos>;
    /// Every outbox entry, oldest first.
    fn outbox(&self) -> Result<Vec<OutboxEntry>>;
    /// One outbox entry, by its client key. The default reads the whole outbox; the stores
    /// here read the one row.
    fn outbox_entry(&self, client_key: ClientKey) -> Result<Option<OutboxEntry>> {
        Ok(self
            .outbox()?
            .into_iter()
            .find(|e| e.client_key == client_key))
    }
    /// History of a conversation after `after` (exclusive), oldest first, at most `limit`.
    fn messages(
        &self,
        conversation: ConversationId,
        after: Option<MessageId>,
        limit: usize,
    ) -> Result<Vec<StoredMessage>>;
    /// One stored message.
    fn message(&self, conversation: ConversationId, id: MessageId)
    -> Result<Option<StoredMessage>>;
    /// The highest stored message ID of every conversation with stored messages, by
    /// conversation.
    fn newest_messages(&self) -> Result<Vec<(ConversationId, MessageId)>>;
    /// Messages that stand on their own (not edits, deletes or reactions) before `before`
    /// (exclusive; `None`: the newest), newest first, at most `limit`.
    fn standalone(
        &self,
        conversation: ConversationId,
        before: Option<MessageId>,
        limit: usize,
    ) -> Result<Vec<StoredMessage>>;
    /// The edits, deletes and reactions that point at `target`, in ID order.
    fn relations(
        &self,
        conversation: ConversationId,
        target: MessageId,
    ) -> Result<Vec<StoredMessage>>;
    /// This user's read position in a conversation.
    fn read_position(&self, conversation: ConversationId) -> Result<ReadPosition>;
    /// `(id, sender)` of the messages after `read` that count as unread: standalone texts,
    /// attachments and unknown types, leaving out those their sender deleted. The caller
    /// leaves out its own with `chat_core::unread_count`.
    fn unread(
        &self,
        conversation: ConversationId,
        read: ReadPosition,
    ) -> Result<Vec<(MessageId, UserId)>>;
    /// Full-text search over the indexed text (see [`SearchIndex`](crate::SearchIndex)).
    fn search(&self, query: &str, page: SearchPage) -> Result<SearchResults>;
    /// The history recovery still to do after a resync, if any.
    fn recovery(&self) -> Result<Option<Vec<RecoveryPoint>>>;
    /// Every known conversation.
    fn conversations(&self) -> Result<Vec<ConversationRecord>>;
    /// One conversation record. The default reads them all; the stores here read one.
    fn conversation(&self, id: ConversationId) -> Result<Option<ConversationRecord>> {
        Ok(self.conversations()?.into_iter().find(|c| c.id == id))
    }
    /// When the signed prekey was last made.
    fn signed_prekey_made_at(&self) -> Result<Option<Timestamp>>;
    /// The devices a send to `conversation` must cover, as last known.
    fn conversation_devices(
        &self,
        conversation: ConversationId,
    ) -> Result<Option<Vec<DeviceAddress>>>;
    /// What this device trusts of `user` ([`Write::Trust`]).
    fn trust(&self, user: UserId) -> Result<Option<Vec<u8>>>;
    /// The group state this device verified ([`Write::VerifiedGroup`]).
    fn verified_group(&self, conversation: ConversationId) -> Result<Option<Vec<u8>>>;
}

/// A shared store: the app (or a test) can keep a handle to the store it gave the client.
impl<S: ClientStore + ?Sized> ClientStore for std::sync::Arc<S> {
    fn commit(&self, writes: Vec<Write>) -> Result<()> {
        (**self).commit(writes)
    }
    fn stage(&self, writes: Vec<Write>) -> Result<()> {
        (**self).stage(writes)
    }
    fn sync(&self) -> Result<()> {
        (**self).sync()
    }
    fn device(&self) -> Result<Option<DeviceRecord>> {
        (**self).device()
    }
    fn account(&self) -> Result<Option<Secret>> {
        (**self).account()
    }
    fn sessions(&self, device: DeviceAddress) -> Result<Option<Secret>> {
        (**self).sessions(device)
    }
    fn sender_key(
        &self,
        conversation: ConversationId,
    ) -> Result<Option<(Secret, Vec<DeviceAddress>)>> {
        (**self).sender_key(conversation)
    }
    fn receiver(
        &self,
        conversation: ConversationId,
        sender: DeviceAddress,
    ) -> Result<Option<Secret>> {
        (**self).receiver(conversation, sender)
    }
    fn cursor(&self) -> Result<InboxPos> {
        (**self).cursor()
    }
    fn outbox(&self) -> Result<Vec<OutboxEntry>> {
        (**self).outbox()
    }
    fn outbox_entry(&self, client_key: ClientKey) -> Result<Option<OutboxEntry>> {
        (**self).outbox_entry(client_key)
    }
    fn messages(
        &self,
        conversation: ConversationId,
        after: Option<MessageId>,
        limit: usize,
    ) -> Result<Vec<StoredMessage>> {
        (**self).messages(conversation, after, limit)
    }
    fn message(
        &self,
        conversation: ConversationId,
        id: MessageId,
    ) -> Result<Option<StoredMessage>> {
        (**self).message(conversation, id)
    }
    fn newest_messages(&self) -> Result<Vec<(ConversationId, MessageId)>> {
        (**self).newest_messages()
    }
    fn standalone(
        &self,
        conversation: ConversationId,
        before: Option<MessageId>,
        limit: usize,
    ) -> Result<Vec<StoredMessage>> {
        (**self).standalone(conversation, before, limit)
    }
    fn relations(
        &self,
        conversation: ConversationId,
        target: MessageId,
    ) -> Result<Vec<StoredMessage>> {
        (**self).relations(conversation, target)
    }
    fn read_position(&self, conversation: ConversationId) -> Result<ReadPosition> {
        (**self).read_position(conversation)
    }
    fn unread(
        &self,
        conversation: ConversationId,
        read: ReadPosition,
    ) -> Result<Vec<(MessageId, UserId)>> {
        (**self).unread(conversation, read)
    }
    fn search(&self, query: &str, page: SearchPage) -> Result<SearchResults> {
        (**self).search(query, page)
    }
    fn recovery(&self) -> Result<Option<Vec<RecoveryPoint>>> {
        (**self).recovery()
    }
    fn conversations(&self) -> Result<Vec<ConversationRecord>> {
        (**self).conversations()
    }
    fn conversation(&self, id: ConversationId) -> Result<Option<ConversationRecord>> {
        (**self).conversation(id)
    }
    fn signed_prekey_made_at(&self) -> Result<Option<Timestamp>> {
        (**self).signed_prekey_made_at()
    }
    fn conversation_devices(
        &self,
        conversation: ConversationId,
    ) -> Result<Option<Vec<DeviceAddress>>> {
        (**self).conversation_devices(conversation)
    }
    fn trust(&self, user: UserId) -> Result<Option<Vec<u8>>> {
        (**self).trust(user)
    }
    fn verified_group(&self, conversation: ConversationId) -> Result<Option<Vec<u8>>> {
        (**self).verified_group(conversation)
    }
}

/// Applies one search write inside the caller's transaction.
pub(crate) fn apply_search(
    conn: &rusqlite::Connection,
    write: &SearchWrite,
) -> std::result::Result<(), crate::SearchError> {
    match write {
        SearchWrite::Index {
            conversation,
            message,
            text,
        } => crate::search::upsert(conn, *conversation, *message, text),
        SearchWrite::Remove {
            conversation,
            message,
        } => crate::search::remove(conn, *conversation, *message).map(|_| ()),
    }
}

mod memory;
pub use memory::MemoryStore;

#[cfg(test)]
pub(crate) mod conformance;

/// Runs a call that blocks (a store's I/O, or waiting for the crypto lock and the work under
/// it): on a multi-threaded tokio runtime inside `block_in_place`, so the worker's other tasks
/// carry on on another thread; otherwise (or nested) as it is.
pub(crate) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}
