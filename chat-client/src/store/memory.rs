//! [`MemoryStore`]: the store in memory, for tests, bots and demos.

use super::*;

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
    groups: BTreeMap<ConversationId, Vec<u8>>,
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
            groups: BTreeMap::new(),
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
                Write::VerifiedGroup {
                    conversation,
                    pickle,
                } => {
                    s.groups.insert(conversation, pickle);
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

    fn outbox_len(&self) -> Result<usize> {
        Ok(self.lock()?.outbox.len())
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
                    s.kinds
                        .get(&(*c, *rel))
                        .is_some_and(|(kind, _)| *kind == chat_core::kinds::DELETE)
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

    fn verified_group(&self, conversation: ConversationId) -> Result<Option<Vec<u8>>> {
        Ok(self.lock()?.groups.get(&conversation).cloned())
    }
}
