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
    ClientKey, ConversationId, ConversationKind, DeviceAddress, InboxPos, MessageId, Timestamp,
};
use chat_crypto::Zeroizing;

use crate::error::{Error, Result};

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
    /// History of a conversation after `after` (exclusive), oldest first, at most `limit`.
    fn messages(
        &self,
        conversation: ConversationId,
        after: Option<MessageId>,
        limit: usize,
    ) -> Result<Vec<StoredMessage>>;
    /// Every known conversation.
    fn conversations(&self) -> Result<Vec<ConversationRecord>>;
    /// When the signed prekey was last made.
    fn signed_prekey_made_at(&self) -> Result<Option<Timestamp>>;
    /// The devices a send to `conversation` must cover, as last known.
    fn conversation_devices(
        &self,
        conversation: ConversationId,
    ) -> Result<Option<Vec<DeviceAddress>>>;
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
    fn messages(
        &self,
        conversation: ConversationId,
        after: Option<MessageId>,
        limit: usize,
    ) -> Result<Vec<StoredMessage>> {
        (**self).messages(conversation, after, limit)
    }
    fn conversations(&self) -> Result<Vec<ConversationRecord>> {
        (**self).conversations()
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
}

/// A store in memory: for tests, bots and demos; everything is lost with the process.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<MemoryInner>,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MemoryStore")
    }
}

#[derive(Clone)]
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
            .map_err(|_| Error::Store("memory store poisoned".into()))
    }
}

impl ClientStore for MemoryStore {
    fn commit(&self, writes: Vec<Write>) -> Result<()> {
        // The std mutex is never held across an await; applying the batch under it makes
        // the batch atomic for every reader.
        let mut s = self.lock()?;
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
                    s.messages.entry((m.conversation, m.id)).or_insert(m);
                }
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
            }
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
        let o = store.outbox().unwrap();
        assert_eq!(o, vec![entry(1, 9), entry(2, 1)]);
        store
            .commit(vec![Write::OutboxRemove(ClientKey::from_bytes([1; 16]))])
            .unwrap();
        assert_eq!(store.outbox().unwrap(), vec![entry(2, 1)]);
    }

    #[test]
    fn memory() {
        run(&MemoryStore::new());
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
