//! Local state: the [`ClientStore`] trait, the [`Write`]s that change it, its records
//! (`records.rs`), the in-memory implementation (`memory.rs`) and the conformance suite every
//! implementation passes (`conformance.rs`).
//!
//! An app does not need this module: it gives the client a
//! [`SqliteStore`](crate::SqliteStore) or a [`MemoryStore`], and reads everything through the
//! client. It is for implementing a store of one's own (another database, a platform's
//! storage): the trait, the records it keeps, and [`SearchIndex`], the full-text engine a
//! store can use for [`ClientStore::search`].
//!
//! The store owns everything a device must not lose: its account keys, token, sessions,
//! sender keys, inbox cursor, outbox, conversation list and decrypted history. Reads are
//! small lookups; every write is a batch of [`Write`]s applied atomically, either durably at
//! once ([`ClientStore::commit`]) or visibly at once and durably at the next
//! [`ClientStore::sync`] ([`ClientStore::stage`]). The client relies on that: a decrypted
//! message, the session state that decrypted it and the advanced cursor are one batch, so a
//! crash can neither skip a message nor store it twice; an outgoing message and the ratchet
//! state that produced it are one batch too, so a retry never re-encrypts.
//!
//! Calls are synchronous (an embedded database). The client runs every fsync
//! ([`ClientStore::sync`]) and every read an app asks for (a timeline page, the conversation
//! list, a search) on tokio's blocking pool; its driver stages batches inside
//! `block_in_place` on a multi-threaded runtime; it never holds a lock across an `.await`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;

use chat_core::{
    ClientKey, ConversationId, DeviceAddress, InboxPos, MessageId, ReadPosition, Timestamp, UserId,
};

use crate::error::{Error, Result};
use crate::search::{SearchPage, SearchResults};

mod records;

pub use crate::search::SearchIndex;
pub use records::{
    ConversationRecord, DeviceRecord, OutboxEntry, RecoveryPoint, SearchWrite, Secret,
    StoredMessage,
};
pub(crate) use records::{classify, counts_as_unread};

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
    /// How many entries the outbox holds. The default reads the whole outbox; the stores here
    /// count without reading (or decrypting) the entries.
    fn outbox_len(&self) -> Result<usize> {
        Ok(self.outbox()?.len())
    }
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
    /// Full-text search over the indexed text (see [`SearchIndex`]).
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
    fn outbox_len(&self) -> Result<usize> {
        (**self).outbox_len()
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

#[cfg(any(test, feature = "testing"))]
pub mod conformance;

/// The client's handle on its store: the store's calls (through `Deref`), except the two
/// that wait for the disk. [`sync`](Self::sync) and [`commit`](Self::commit) are async and
/// run the fsync on tokio's blocking pool, so it never holds a runtime thread, on a
/// current-thread runtime as on a multi-threaded one. What stays on the caller's task is
/// short: point reads, and staging a batch (written to the WAL, no fsync).
#[derive(Clone)]
pub(crate) struct Store(std::sync::Arc<dyn ClientStore>);

impl Store {
    pub(crate) fn new(store: std::sync::Arc<dyn ClientStore>) -> Self {
        Self(store)
    }

    /// Makes every batch staged before the call durable ([`ClientStore::sync`]), off the
    /// runtime. Dropping the future does not stop the fsync; it only stops waiting for it.
    pub(crate) async fn sync(&self) -> Result<()> {
        let store = std::sync::Arc::clone(&self.0);
        off_runtime(move || store.sync()).await
    }

    /// Applies `writes` atomically, durable when it returns: staged, then synced off the
    /// runtime (one fsync may cover batches staged meanwhile by other tasks).
    pub(crate) async fn commit(&self, writes: Vec<Write>) -> Result<()> {
        self.0.stage(writes)?;
        self.sync().await
    }
}

impl std::ops::Deref for Store {
    type Target = dyn ClientStore;

    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

/// Runs `call` on tokio's blocking pool and waits for it, so the caller's runtime never waits
/// for the disk or a store lock. Once polled, dropping the future does not stop `call`; it
/// only stops waiting for it. A panic in `call` is resumed here; a call the runtime's
/// shutdown cancelled is [`Error::Closed`].
pub(crate) async fn off_runtime<T: Send + 'static>(
    call: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    match tokio::task::spawn_blocking(call).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(Error::Closed),
    }
}

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
