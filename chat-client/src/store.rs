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
    !matches!(kind, 3..=6)
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
}

/// Where a client keeps its state. Implementations: [`MemoryStore`] and
/// [`SqliteStore`](crate::SqliteStore).
pub trait ClientStore: Send + Sync + 'static {
    /// Applies `writes` atomically: all or none.
    fn commit(&self, writes: Vec<Write>) -> Result<()>;
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
}

/// A shared store: the app (or a test) can keep a handle to the store it gave the client.
impl<S: ClientStore + ?Sized> ClientStore for std::sync::Arc<S> {
    fn commit(&self, writes: Vec<Write>) -> Result<()> {
        (**self).commit(writes)
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
}

/// A store in memory: for tests, bots and demos; everything is lost with the process.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<MemoryInner>,
    /// The search index: an in-memory SQLite database, opened on first use.
    search: Mutex<Option<rusqlite::Connection>>,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MemoryStore")
    }
}

struct MemoryInner {
    device: Option<DeviceRecord>,
    account: Option<Secret>,
    sessions: BTreeMap<DeviceAddress, Secret>,
    sender_keys: BTreeMap<ConversationId, (Secret, Vec<DeviceAddress>)>,
    receivers: BTreeMap<(ConversationId, DeviceAddress), Secret>,
    cursor: InboxPos,
    messages: BTreeMap<(ConversationId, MessageId), StoredMessage>,
    outbox: Vec<OutboxEntry>,
    conversations: BTreeMap<ConversationId, ConversationRecord>,
    spk_made_at: Option<Timestamp>,
    conversation_devices: BTreeMap<ConversationId, Vec<DeviceAddress>>,
    trust: BTreeMap<UserId, Vec<u8>>,
    /// Content type and target of every stored message.
    kinds: BTreeMap<(ConversationId, MessageId), (u32, Option<MessageId>)>,
    /// (conversation, target, relation) of every stored edit, delete and reaction.
    relations: std::collections::BTreeSet<(ConversationId, MessageId, MessageId)>,
    read: BTreeMap<ConversationId, ReadPosition>,
    recovery: Option<Vec<RecoveryPoint>>,
}

impl Default for MemoryInner {
    fn default() -> Self {
        Self {
            device: None,
            account: None,
            sessions: BTreeMap::new(),
            sender_keys: BTreeMap::new(),
            receivers: BTreeMap::new(),
            cursor: InboxPos::ZERO,
            messages: BTreeMap::new(),
            outbox: Vec::new(),
            conversations: BTreeMap::new(),
            spk_made_at: None,
            conversation_devices: BTreeMap::new(),
            trust: BTreeMap::new(),
            kinds: BTreeMap::new(),
            relations: std::collections::BTreeSet::new(),
            read: BTreeMap::new(),
            recovery: None,
        }
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, MemoryInner>> {
        self.inner
            .lock()
            .map_err(|_| Error::poisoned("memory store"))
    }

    /// Runs `f` on the search index, opening it on first use.
    fn with_search<T>(
        &self,
        f: impl FnOnce(&rusqlite::Connection) -> std::result::Result<T, crate::SearchError>,
    ) -> Result<T> {
        let mut slot = self
            .search
            .lock()
            .map_err(|_| Error::poisoned("memory store"))?;
        let conn = match &mut *slot {
            Some(conn) => conn,
            empty => {
                let conn = rusqlite::Connection::open_in_memory()?;
                crate::search::create_schema(&conn)?;
                empty.insert(conn)
            }
        };
        Ok(f(conn)?)
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

impl ClientStore for MemoryStore {
    fn commit(&self, writes: Vec<Write>) -> Result<()> {
        // The std mutex is never held across an await; applying the batch under it makes
        // the batch atomic for every reader. Search writes go to the index after the rest
        // (a memory store has nothing to keep consistent across a crash).
        let mut s = self.lock()?;
        let mut search = Vec::new();
        for w in writes {
            match w {
                Write::Device(d) => s.device = Some(d),
                Write::Account(a) => s.account = Some(a),
                Write::Sessions(d, p) => {
                    s.sessions.insert(d, p);
                }
                Write::SenderKey {
                    conversation,
                    pickle,
                    distributed,
                } => {
                    s.sender_keys.insert(conversation, (pickle, distributed));
                }
                Write::Receiver {
                    conversation,
                    sender,
                    pickle,
                } => {
                    s.receivers.insert((conversation, sender), pickle);
                }
                Write::Cursor(c) => s.cursor = c,
                Write::Message(m) => {
                    let key = (m.conversation, m.id);
                    if !s.messages.contains_key(&key) {
                        let (kind, target) = classify(&m.plaintext);
                        s.kinds.insert(key, (kind, target));
                        if let Some(target) = target {
                            s.relations.insert((m.conversation, target, m.id));
                        }
                        s.messages.insert(key, m);
                    }
                }
                Write::ReadPosition {
                    conversation,
                    up_to,
                } => {
                    s.read.entry(conversation).or_default().raise(up_to);
                }
                Write::Search(w) => search.push(w),
                Write::LowerReadPosition {
                    conversation,
                    up_to,
                } => {
                    let lowered = match up_to {
                        Some(to) => s
                            .read
                            .get(&conversation)
                            .and_then(|r| r.get())
                            .map(|at| ReadPosition::up_to(at.min(to))),
                        None => None,
                    };
                    match lowered {
                        Some(position) => {
                            s.read.insert(conversation, position);
                        }
                        None => {
                            s.read.remove(&conversation);
                        }
                    }
                }
                Write::Redact { conversation, id } => {
                    if let Some(m) = s.messages.get_mut(&(conversation, id)) {
                        m.plaintext = Vec::new();
                    }
                }
                Write::Forget { conversation, id } => {
                    s.messages.remove(&(conversation, id));
                    if let Some((_, Some(target))) = s.kinds.remove(&(conversation, id)) {
                        s.relations.remove(&(conversation, target, id));
                    }
                    search.push(SearchWrite::Remove {
                        conversation,
                        message: id,
                    });
                }
                Write::Recovery(r) => s.recovery = r,
                Write::OutboxPut(e) => {
                    if let Some(slot) = s.outbox.iter_mut().find(|o| o.client_key == e.client_key) {
                        *slot = e;
                    } else {
                        s.outbox.push(e);
                    }
                }
                Write::OutboxRemove(k) => s.outbox.retain(|o| o.client_key != k),
                Write::Conversation(c) => {
                    s.conversations.insert(c.id, c);
                }
                Write::SignedPrekeyMadeAt(t) => s.spk_made_at = Some(t),
                Write::ConversationDevices {
                    conversation,
                    devices,
                } => match devices {
                    Some(d) => {
                        s.conversation_devices.insert(conversation, d);
                    }
                    None => {
                        s.conversation_devices.remove(&conversation);
                    }
                },
                Write::Trust { user, record } => {
                    s.trust.insert(user, record);
                }
            }
        }
        drop(s);
        if !search.is_empty() {
            self.with_search(|conn| {
                let tx = conn.unchecked_transaction()?;
                for w in &search {
                    apply_search(&tx, w)?;
                }
                tx.commit()?;
                Ok(())
            })?;
        }
        Ok(())
    }

    fn device(&self) -> Result<Option<DeviceRecord>> {
        Ok(self.lock()?.device.clone())
    }

    fn account(&self) -> Result<Option<Secret>> {
        Ok(self.lock()?.account.clone())
    }

    fn sessions(&self, device: DeviceAddress) -> Result<Option<Secret>> {
        Ok(self.lock()?.sessions.get(&device).cloned())
    }

    fn sender_key(
        &self,
        conversation: ConversationId,
    ) -> Result<Option<(Secret, Vec<DeviceAddress>)>> {
        Ok(self.lock()?.sender_keys.get(&conversation).cloned())
    }

    fn receiver(
        &self,
        conversation: ConversationId,
        sender: DeviceAddress,
    ) -> Result<Option<Secret>> {
        Ok(self.lock()?.receivers.get(&(conversation, sender)).cloned())
    }

    fn cursor(&self) -> Result<InboxPos> {
        Ok(self.lock()?.cursor)
    }

    fn outbox(&self) -> Result<Vec<OutboxEntry>> {
        Ok(self.lock()?.outbox.clone())
    }

    fn outbox_entry(&self, client_key: ClientKey) -> Result<Option<OutboxEntry>> {
        Ok(self
            .lock()?
            .outbox
            .iter()
            .find(|e| e.client_key == client_key)
            .cloned())
    }

    fn messages(
        &self,
        conversation: ConversationId,
        after: Option<MessageId>,
        limit: usize,
    ) -> Result<Vec<StoredMessage>> {
        let s = self.lock()?;
        Ok(s.messages
            .range((conversation, MessageId::MIN)..)
            .take_while(|((c, _), _)| *c == conversation)
            .filter(|((_, id), _)| after.is_none_or(|a| *id > a))
            .take(limit)
            .map(|(_, m)| m.clone())
            .collect())
    }

    fn conversations(&self) -> Result<Vec<ConversationRecord>> {
        Ok(self.lock()?.conversations.values().copied().collect())
    }

    fn conversation(&self, id: ConversationId) -> Result<Option<ConversationRecord>> {
        Ok(self.lock()?.conversations.get(&id).copied())
    }

    fn message(
        &self,
        conversation: ConversationId,
        id: MessageId,
    ) -> Result<Option<StoredMessage>> {
        Ok(self.lock()?.messages.get(&(conversation, id)).cloned())
    }

    fn newest_messages(&self) -> Result<Vec<(ConversationId, MessageId)>> {
        let s = self.lock()?;
        let mut newest: BTreeMap<ConversationId, MessageId> = BTreeMap::new();
        for (conversation, id) in s.messages.keys() {
            newest.insert(*conversation, *id);
        }
        Ok(newest.into_iter().collect())
    }

    fn standalone(
        &self,
        conversation: ConversationId,
        before: Option<MessageId>,
        limit: usize,
    ) -> Result<Vec<StoredMessage>> {
        let s = self.lock()?;
        let end = before.unwrap_or(MessageId::MAX);
        Ok(s.messages
            .range((conversation, MessageId::MIN)..(conversation, end))
            .rev()
            .filter(|(key, _)| s.kinds.get(key).is_none_or(|(_, target)| target.is_none()))
            .take(limit)
            .map(|(_, m)| m.clone())
            .collect())
    }

    fn relations(
        &self,
        conversation: ConversationId,
        target: MessageId,
    ) -> Result<Vec<StoredMessage>> {
        let s = self.lock()?;
        Ok(s.relations
            .range((conversation, target, MessageId::MIN)..=(conversation, target, MessageId::MAX))
            .filter_map(|(c, _, id)| s.messages.get(&(*c, *id)).cloned())
            .collect())
    }

    fn read_position(&self, conversation: ConversationId) -> Result<ReadPosition> {
        Ok(self
            .lock()?
            .read
            .get(&conversation)
            .copied()
            .unwrap_or_default())
    }

    fn unread(
        &self,
        conversation: ConversationId,
        read: ReadPosition,
    ) -> Result<Vec<(MessageId, UserId)>> {
        let s = self.lock()?;
        let start = read
            .get()
            .and_then(MessageId::next)
            .unwrap_or(MessageId::MIN);
        let deleted = |id: MessageId, sender: UserId| {
            s.relations
                .range((conversation, id, MessageId::MIN)..=(conversation, id, MessageId::MAX))
                .any(|(c, _, rel)| {
                    s.kinds.get(&(*c, *rel)).is_some_and(|(kind, _)| *kind == 5)
                        && s.messages
                            .get(&(*c, *rel))
                            .is_some_and(|m| m.sender.user == sender)
                })
        };
        Ok(s.messages
            .range((conversation, start)..=(conversation, MessageId::MAX))
            .filter(|(key, _)| {
                s.kinds
                    .get(key)
                    .is_some_and(|(kind, target)| target.is_none() && counts_as_unread(*kind))
            })
            .filter(|((_, id), m)| !deleted(*id, m.sender.user))
            .map(|((_, id), m)| (*id, m.sender.user))
            .collect())
    }

    fn search(&self, query: &str, page: SearchPage) -> Result<SearchResults> {
        self.with_search(|conn| crate::search::search(conn, query, page))
    }

    fn recovery(&self) -> Result<Option<Vec<RecoveryPoint>>> {
        Ok(self.lock()?.recovery.clone())
    }

    fn signed_prekey_made_at(&self) -> Result<Option<Timestamp>> {
        Ok(self.lock()?.spk_made_at)
    }

    fn conversation_devices(
        &self,
        conversation: ConversationId,
    ) -> Result<Option<Vec<DeviceAddress>>> {
        Ok(self
            .lock()?
            .conversation_devices
            .get(&conversation)
            .cloned())
    }

    fn trust(&self, user: UserId) -> Result<Option<Vec<u8>>> {
        Ok(self.lock()?.trust.get(&user).cloned())
    }
}

/// The behaviour every [`ClientStore`] must have, run against each implementation.
#[cfg(test)]
pub(crate) mod conformance {
    use chat_core::{
        ClientKey, ConversationId, ConversationKind, DeviceAddress, InboxPos, MessageId, Timestamp,
    };

    use super::*;

    fn dev(u: u64, d: u64) -> DeviceAddress {
        DeviceAddress {
            user: chat_core::UserId::new(u).unwrap(),
            device: chat_core::DeviceId::new(d).unwrap(),
        }
    }

    fn msg(c: u64, id: u64, text: &[u8]) -> StoredMessage {
        StoredMessage {
            conversation: ConversationId::new(c).unwrap(),
            id: MessageId::new(id).unwrap(),
            sender: dev(1, 1),
            client_key: ClientKey::from_bytes([id as u8; 16]),
            sent_at: Timestamp::from_millis(5),
            plaintext: text.to_vec(),
        }
    }

    pub(crate) fn run(store: &dyn ClientStore) {
        let conv = ConversationId::new(3).unwrap();
        assert!(store.device().unwrap().is_none());
        let someone = chat_core::UserId::new(4).unwrap();
        assert_eq!(store.trust(someone).unwrap(), None);
        for record in [vec![1, 2], vec![3]] {
            store
                .commit(vec![Write::Trust {
                    user: someone,
                    record,
                }])
                .unwrap();
        }
        assert_eq!(store.trust(someone).unwrap(), Some(vec![3]));
        assert_eq!(store.signed_prekey_made_at().unwrap(), None);
        store
            .commit(vec![Write::SignedPrekeyMadeAt(Timestamp::from_millis(77))])
            .unwrap();
        assert_eq!(
            store.signed_prekey_made_at().unwrap(),
            Some(Timestamp::from_millis(77))
        );
        assert_eq!(store.cursor().unwrap(), InboxPos::ZERO);
        let record = DeviceRecord {
            server: "127.0.0.1:1".into(),
            address: dev(1, 2),
            token: "t".into(),
        };
        store
            .commit(vec![
                Write::Device(record.clone()),
                Write::Account(Secret::new(vec![1, 2])),
                Write::Sessions(dev(2, 3), Secret::new(vec![9])),
                Write::SenderKey {
                    conversation: conv,
                    pickle: Secret::new(vec![7]),
                    distributed: vec![dev(2, 3), dev(4, 5)],
                },
                Write::Receiver {
                    conversation: conv,
                    sender: dev(2, 3),
                    pickle: Secret::new(vec![8]),
                },
                Write::Cursor(InboxPos::new(41).unwrap()),
                Write::Conversation(ConversationRecord {
                    id: conv,
                    kind: ConversationKind::Group,
                }),
            ])
            .unwrap();
        assert_eq!(store.device().unwrap(), Some(record));
        assert_eq!(store.account().unwrap().unwrap().as_slice(), [1, 2]);
        assert_eq!(store.sessions(dev(2, 3)).unwrap().unwrap().as_slice(), [9]);
        assert!(store.sessions(dev(2, 4)).unwrap().is_none());
        let (sk, holders) = store.sender_key(conv).unwrap().unwrap();
        assert_eq!(
            (sk.as_slice(), holders),
            (&[7u8][..], vec![dev(2, 3), dev(4, 5)])
        );
        assert_eq!(
            store.receiver(conv, dev(2, 3)).unwrap().unwrap().as_slice(),
            [8]
        );
        assert_eq!(store.cursor().unwrap().get(), 41);
        assert_eq!(
            store.conversations().unwrap()[0].kind,
            ConversationKind::Group
        );
        let first = store.conversations().unwrap()[0];
        assert_eq!(store.conversation(first.id).unwrap(), Some(first));
        assert_eq!(
            store
                .conversation(ConversationId::new(999).unwrap())
                .unwrap(),
            None
        );

        // History: ordered, paged, and a message stored twice is kept once (the first).
        store
            .commit(vec![
                Write::Message(msg(3, 2, b"b")),
                Write::Message(msg(3, 1, b"a")),
                Write::Message(msg(4, 1, b"other")),
            ])
            .unwrap();
        store
            .commit(vec![Write::Message(msg(3, 2, b"dup"))])
            .unwrap();
        let h = store.messages(conv, None, 10).unwrap();
        assert_eq!(h, vec![msg(3, 1, b"a"), msg(3, 2, b"b")]);
        let after = store
            .messages(conv, Some(MessageId::new(1).unwrap()), 10)
            .unwrap();
        assert_eq!(after, vec![msg(3, 2, b"b")]);

        // Outbox: oldest first; a put with a known key replaces the payload in place.
        let entry = |k: u8, p: u8| OutboxEntry {
            client_key: ClientKey::from_bytes([k; 16]),
            conversation: conv,
            payload: Secret::new(vec![p]),
            plaintext: vec![k],
        };
        store
            .commit(vec![
                Write::OutboxPut(entry(1, 1)),
                Write::OutboxPut(entry(2, 1)),
            ])
            .unwrap();
        store.commit(vec![Write::OutboxPut(entry(1, 9))]).unwrap();
        assert_eq!(
            store.outbox_entry(entry(2, 1).client_key).unwrap(),
            Some(entry(2, 1))
        );
        assert_eq!(store.outbox_entry(entry(9, 9).client_key).unwrap(), None);
        let o = store.outbox().unwrap();
        assert_eq!(o, vec![entry(1, 9), entry(2, 1)]);
        store
            .commit(vec![Write::OutboxRemove(ClientKey::from_bytes([1; 16]))])
            .unwrap();
        assert_eq!(store.outbox().unwrap(), vec![entry(2, 1)]);

        relations_reads_and_search(store);
    }

    fn content_msg(c: u64, id: u64, user: u64, content: &chat_core::Content) -> StoredMessage {
        StoredMessage {
            sender: dev(user, 1),
            ..msg(c, id, &content.encode().unwrap())
        }
    }

    fn text(body: &str) -> chat_core::Content {
        chat_core::Content::Text(chat_core::Text {
            body: body.into(),
            reply_to: None,
        })
    }

    fn ids(list: &[StoredMessage]) -> Vec<u64> {
        list.iter().map(|m| m.id.get()).collect()
    }

    fn relations_reads_and_search(store: &dyn ClientStore) {
        use chat_core::{Content, Delete, Edit, Reaction, ReadPosition, UserId};

        let conv = ConversationId::new(9).unwrap();
        let mid = |n: u64| MessageId::new(n).unwrap();
        let target = |n: u64| mid(n);
        let alice = UserId::new(1).unwrap();
        let bob = UserId::new(2).unwrap();
        store
            .commit(vec![
                Write::Message(content_msg(9, 1, 1, &text("one"))),
                Write::Message(content_msg(9, 2, 2, &text("two"))),
                Write::Message(content_msg(
                    9,
                    3,
                    1,
                    &Content::Edit(Edit {
                        target: target(1),
                        body: "uno".into(),
                    }),
                )),
                Write::Message(content_msg(9, 4, 2, &text("four"))),
                Write::Message(content_msg(
                    9,
                    5,
                    2,
                    &Content::Reaction(Reaction {
                        target: target(1),
                        emoji: "+1".into(),
                        remove: false,
                    }),
                )),
                // Bob deletes his own message 4; a delete of Alice's 2 by... Alice does not count.
                Write::Message(content_msg(
                    9,
                    6,
                    2,
                    &Content::Delete(Delete { target: target(4) }),
                )),
                Write::Message(content_msg(
                    9,
                    7,
                    1,
                    &Content::Delete(Delete { target: target(2) }),
                )),
                Write::Message(content_msg(9, 8, 2, &text("eight"))),
            ])
            .unwrap();

        assert_eq!(store.message(conv, mid(3)).unwrap().unwrap().id, mid(3));
        assert!(store.message(conv, mid(99)).unwrap().is_none());
        let newest = store.newest_messages().unwrap();
        assert!(newest.contains(&(conv, mid(8))), "{newest:?}");
        assert!(newest.iter().all(|(c, _)| c.get() != 77));

        // Standalone messages only, newest first, paged by `before`.
        assert_eq!(
            ids(&store.standalone(conv, None, 10).unwrap()),
            [8, 4, 2, 1]
        );
        assert_eq!(ids(&store.standalone(conv, Some(mid(4)), 1).unwrap()), [2]);
        // Relations by target, in ID order.
        assert_eq!(ids(&store.relations(conv, mid(1)).unwrap()), [3, 5]);
        assert_eq!(ids(&store.relations(conv, mid(4)).unwrap()), [6]);
        assert!(store.relations(conv, mid(8)).unwrap().is_empty());

        // Read positions only move forward.
        assert_eq!(store.read_position(conv).unwrap(), ReadPosition::NONE);
        store
            .commit(vec![Write::ReadPosition {
                conversation: conv,
                up_to: mid(2),
            }])
            .unwrap();
        store
            .commit(vec![Write::ReadPosition {
                conversation: conv,
                up_to: mid(1),
            }])
            .unwrap();
        let read = store.read_position(conv).unwrap();
        assert_eq!(read, ReadPosition::up_to(mid(2)));

        // Unread candidates: standalone, after the position, not deleted by their own sender
        // (4 is; 2 was "deleted" by someone else, but it is before the position anyway).
        let unread = store.unread(conv, read).unwrap();
        assert_eq!(unread, vec![(mid(8), bob)]);
        let all = store.unread(conv, ReadPosition::NONE).unwrap();
        assert_eq!(all, vec![(mid(1), alice), (mid(2), bob), (mid(8), bob)]);

        // Search writes are applied with the batch; edits replace, removes forget.
        let page = crate::search::SearchPage::first(10);
        store
            .commit(vec![
                Write::Search(SearchWrite::Index {
                    conversation: conv,
                    message: mid(1),
                    text: "one".into(),
                }),
                Write::Search(SearchWrite::Index {
                    conversation: conv,
                    message: mid(8),
                    text: "eight".into(),
                }),
            ])
            .unwrap();
        store
            .commit(vec![Write::Search(SearchWrite::Index {
                conversation: conv,
                message: mid(1),
                text: "uno dos".into(),
            })])
            .unwrap();
        assert!(store.search("one", page).unwrap().hits.is_empty());
        let hits = store.search("uno", page).unwrap().hits;
        assert_eq!(hits.iter().map(|h| h.message).collect::<Vec<_>>(), [mid(1)]);
        store
            .commit(vec![Write::Search(SearchWrite::Remove {
                conversation: conv,
                message: mid(8),
            })])
            .unwrap();
        assert!(store.search("eight", page).unwrap().hits.is_empty());

        // Forgetting a message removes it, its search entry and its place among relations.
        store
            .commit(vec![
                Write::Forget {
                    conversation: conv,
                    id: mid(1),
                },
                Write::Forget {
                    conversation: conv,
                    id: mid(5),
                },
            ])
            .unwrap();
        assert!(store.message(conv, mid(1)).unwrap().is_none());
        assert!(store.search("uno", page).unwrap().hits.is_empty());
        assert_eq!(ids(&store.relations(conv, mid(1)).unwrap()), [3]);
        assert_eq!(ids(&store.standalone(conv, None, 10).unwrap()), [8, 4, 2]);

        // A pending recovery is kept until cleared.
        assert_eq!(store.recovery().unwrap(), None);
        let points = vec![
            RecoveryPoint {
                conversation: conv,
                newest: Some(mid(8)),
            },
            RecoveryPoint {
                conversation: ConversationId::new(77).unwrap(),
                newest: None,
            },
        ];
        store
            .commit(vec![Write::Recovery(Some(points.clone()))])
            .unwrap();
        assert_eq!(store.recovery().unwrap(), Some(points));
        store.commit(vec![Write::Recovery(None)]).unwrap();
        assert_eq!(store.recovery().unwrap(), None);
    }

    #[test]
    fn memory() {
        run(&MemoryStore::new());
    }

    #[test]
    fn sqlite_migrates_a_store_made_before_relations() {
        use chat_core::{Content, Edit};

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE messages (
                    conversation INTEGER NOT NULL, id INTEGER NOT NULL,
                    sender_user INTEGER NOT NULL, sender_device INTEGER NOT NULL,
                    client_key BLOB NOT NULL, sent_at INTEGER NOT NULL, plaintext BLOB NOT NULL,
                    PRIMARY KEY (conversation, id));",
            )
            .unwrap();
            let edit = Content::Edit(Edit {
                target: MessageId::new(1).unwrap(),
                body: "edited words".into(),
            });
            for m in [
                content_msg(5, 1, 1, &text("original words")),
                content_msg(5, 2, 1, &edit),
            ] {
                conn.execute(
                    "INSERT INTO messages VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    rusqlite::params![
                        5,
                        i64::try_from(m.id.get()).unwrap(),
                        1,
                        1,
                        m.client_key.as_bytes().as_slice(),
                        5,
                        m.plaintext
                    ],
                )
                .unwrap();
            }
        }
        let store = crate::SqliteStore::open(&path).unwrap();
        let conv = ConversationId::new(5).unwrap();
        assert_eq!(ids(&store.standalone(conv, None, 10).unwrap()), [1]);
        assert_eq!(
            ids(&store.relations(conv, MessageId::new(1).unwrap()).unwrap()),
            [2]
        );
        let page = crate::search::SearchPage::first(10);
        assert_eq!(store.search("edited", page).unwrap().hits.len(), 1);
        assert!(store.search("original", page).unwrap().hits.is_empty());
        // Opening again is a no-op.
        drop(store);
        let store = crate::SqliteStore::open(&path).unwrap();
        assert_eq!(store.search("edited", page).unwrap().hits.len(), 1);
    }

    #[test]
    fn the_schema_version_is_recorded_and_a_newer_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.db");
        drop(crate::SqliteStore::open(&path).unwrap());
        let conn = rusqlite::Connection::open(&path).unwrap();
        let version: u32 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, 2);
        // A version 1 file (before the trust table) gains it.
        conn.execute_batch("DROP TABLE trust; PRAGMA user_version = 1;")
            .unwrap();
        drop(conn);
        let store = crate::SqliteStore::open(&path).unwrap();
        let someone = chat_core::UserId::new(3).unwrap();
        store
            .commit(vec![Write::Trust {
                user: someone,
                record: vec![1],
            }])
            .unwrap();
        drop(store);
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA user_version = 99;").unwrap();
        drop(conn);
        assert!(matches!(
            crate::SqliteStore::open(&path),
            Err(Error::Store(crate::StoreError::TooNew {
                found: 99,
                supported: 2
            }))
        ));
    }

    #[test]
    fn sqlite_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        run(&crate::SqliteStore::open(&path).unwrap());
        let again = crate::SqliteStore::open(&path).unwrap();
        assert_eq!(again.cursor().unwrap().get(), 41);
        assert_eq!(again.outbox().unwrap().len(), 1);
    }
}
