//! The in-memory backend: every table is a map behind one mutex, so each operation is atomic
//! by holding the lock for its whole duration. For unit tests of other crates; nothing
//! survives the process.
//!
//! The lock is a `std::sync::Mutex`: it is never held across an `.await` (no method awaits
//! while holding it), and the critical sections are short map operations.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::Bytes;
use chat_core::limits::MAX_DEVICES_PER_USER;
use chat_core::{
    AccountStore, Appended, AttachmentId, AttachmentMeta, Block, BlockStore, ChainLink, ClientKey,
    Conversation, ConversationId, ConversationKind, ConversationStore, Credentials, Device,
    DeviceAddress, DeviceId, DeviceKeys, DeviceListRecord, Direction, Envelope, GroupOp,
    GroupState, HealthStore, InboxEntry, InboxPos, KeyStore, MessageId, MessageStore, MetaStore,
    NewMessage, OneTimePrekey, PrekeyBundle, Profile, ProfileStore, ProfileUpdate, PushToken,
    ReceiptKind, ReceiptPosition, ReceiptStore, SearchCursor, SearchKey, SearchPrefix, StoreError,
    StoreResult, Timestamp, TokenHash, User, UserId, Username,
};

use crate::common::{
    check_coverage, check_distinct_recipients, failure, plan_group, plan_group_change,
};

/// A store that keeps everything in process memory. Cheap to create; for tests.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> StoreResult<MutexGuard<'_, State>> {
        // A panic while holding the lock would leave the maps half-updated; refuse to go on.
        self.state
            .lock()
            .map_err(|_| failure("memory store poisoned by a panic"))
    }
}

#[derive(Debug, Default)]
struct State {
    last_user: u64,
    last_device: u64,
    last_conversation: u64,
    users: BTreeMap<UserId, UserRow>,
    usernames: HashMap<Username, UserId>,
    devices: BTreeMap<DeviceId, DeviceRow>,
    tokens: HashMap<TokenHash, DeviceAddress>,
    conversations: BTreeMap<ConversationId, ConversationRow>,
    directs: HashMap<(UserId, UserId), ConversationId>,
    client_keys: HashMap<(DeviceId, ClientKey), (ConversationId, MessageId, Timestamp)>,
    attachments: HashMap<AttachmentId, AttachmentMeta>,
    profiles: BTreeMap<UserId, Profile>,
    /// The directory index: what the SQL backends' `search_key` b-tree is.
    directory: BTreeSet<(SearchKey, UserId)>,
    /// `(blocker, blocked)` and when.
    blocks: BTreeMap<(UserId, UserId), Timestamp>,
    /// Messages withheld from a blocker, and whom from.
    withheld: HashMap<(ConversationId, MessageId), UserId>,
    /// Signed device lists by user.
    device_lists: HashMap<UserId, DeviceListRecord>,
}

#[derive(Debug)]
struct UserRow {
    user: User,
    password_hash: String,
    last_active: Option<Timestamp>,
}

#[derive(Debug)]
struct DeviceRow {
    device: Device,
    /// The entries by position. Gapless from 1 until trimming removes old ones.
    inbox: BTreeMap<InboxPos, InboxRow>,
    /// The highest position ever assigned: kept apart from the entries, so trimming them
    /// never makes a position come back.
    head: InboxPos,
    /// The highest position trimming deleted.
    floor: InboxPos,
    cursor: InboxPos,
    keys: Option<DeviceKeys>,
    prekeys: BTreeMap<u32, OneTimePrekey>,
    push: Option<PushToken>,
    link_payload: Option<Bytes>,
}

/// One inbox entry: the message it points at, its header for this device, and when the
/// message was stored (what retention compares).
#[derive(Debug)]
struct InboxRow {
    conversation: ConversationId,
    id: MessageId,
    header: Bytes,
    sent_at: Timestamp,
}

#[derive(Debug)]
struct ConversationRow {
    conversation: Conversation,
    members: BTreeSet<UserId>,
    /// A group's roles, name and settings; `members` is always its member set.
    group: Option<GroupState>,
    /// A group's signed changes: change `i` has sequence number `i + 1`.
    chain: Vec<Bytes>,
    /// The head of `chain`, `None` while it is empty.
    head: Option<[u8; 32]>,
    /// Message `i` has ID `i + 1`: IDs are gapless from 1.
    messages: Vec<Envelope>,
    receipts: BTreeMap<(UserId, ReceiptKind), MessageId>,
}

impl State {
    fn device(&self, address: DeviceAddress) -> StoreResult<&DeviceRow> {
        self.devices
            .get(&address.device)
            .filter(|row| row.device.address == address)
            .ok_or(StoreError::NotFound)
    }

    fn device_mut(&mut self, address: DeviceAddress) -> StoreResult<&mut DeviceRow> {
        self.devices
            .get_mut(&address.device)
            .filter(|row| row.device.address == address)
            .ok_or(StoreError::NotFound)
    }

    fn user_devices(&self, user: UserId) -> impl Iterator<Item = &DeviceRow> {
        self.devices
            .values()
            .filter(move |row| row.device.address.user == user)
    }

    fn envelope(&self, conversation: ConversationId, id: MessageId) -> Option<&Envelope> {
        let row = self.conversations.get(&conversation)?;
        let index = usize::try_from(id.get()).ok()?.checked_sub(1)?;
        row.messages.get(index)
    }

    fn require_users(&self, users: impl IntoIterator<Item = UserId>) -> StoreResult<()> {
        users
            .into_iter()
            .all(|u| self.users.contains_key(&u))
            .then_some(())
            .ok_or(StoreError::NotFound)
    }

    fn new_conversation(
        &mut self,
        kind: ConversationKind,
        members: BTreeSet<UserId>,
        now: Timestamp,
    ) -> StoreResult<Conversation> {
        self.last_conversation += 1;
        let id = ConversationId::new(self.last_conversation).map_err(StoreError::backend)?;
        let conversation = Conversation {
            id,
            kind,
            created_at: now,
            last_message: None,
        };
        let row = ConversationRow {
            conversation: conversation.clone(),
            members,
            group: None,
            chain: Vec::new(),
            head: None,
            messages: Vec::new(),
            receipts: BTreeMap::new(),
        };
        self.conversations.insert(id, row);
        Ok(conversation)
    }
}

#[async_trait]
impl AccountStore for MemoryStore {
    async fn create_user(
        &self,
        username: &Username,
        password_hash: &str,
        now: Timestamp,
    ) -> StoreResult<User> {
        let mut s = self.lock()?;
        if s.usernames.contains_key(username) {
            return Err(StoreError::Conflict);
        }
        s.last_user += 1;
        let id = UserId::new(s.last_user).map_err(StoreError::backend)?;
        let user = User {
            id,
            username: username.clone(),
            created_at: now,
        };
        s.usernames.insert(username.clone(), id);
        let row = UserRow {
            user: user.clone(),
            password_hash: password_hash.into(),
            last_active: None,
        };
        s.users.insert(id, row);
        Ok(user)
    }

    async fn credentials(&self, username: &Username) -> StoreResult<Option<Credentials>> {
        let s = self.lock()?;
        let row = s.usernames.get(username).and_then(|id| s.users.get(id));
        Ok(row.map(|r| Credentials {
            user: r.user.clone(),
            password_hash: r.password_hash.clone(),
        }))
    }

    async fn user(&self, user: UserId) -> StoreResult<Option<User>> {
        Ok(self.lock()?.users.get(&user).map(|r| r.user.clone()))
    }

    async fn add_device(
        &self,
        user: UserId,
        name: &str,
        token: TokenHash,
        now: Timestamp,
    ) -> StoreResult<Device> {
        let mut s = self.lock()?;
        s.require_users([user])?;
        if s.user_devices(user).count() >= MAX_DEVICES_PER_USER {
            return Err(StoreError::TooManyDevices);
        }
        if s.tokens.contains_key(&token) {
            return Err(StoreError::Conflict);
        }
        s.last_device += 1;
        let id = DeviceId::new(s.last_device).map_err(StoreError::backend)?;
        let address = DeviceAddress { user, device: id };
        let device = Device {
            address,
            name: name.into(),
            created_at: now,
            linked: !s.device_lists.contains_key(&user),
        };
        s.tokens.insert(token, address);
        let row = DeviceRow {
            device: device.clone(),
            inbox: BTreeMap::new(),
            head: InboxPos::ZERO,
            floor: InboxPos::ZERO,
            cursor: InboxPos::ZERO,
            keys: None,
            prekeys: BTreeMap::new(),
            push: None,
            link_payload: None,
        };
        s.devices.insert(id, row);
        Ok(device)
    }

    async fn add_token(
        &self,
        device: DeviceAddress,
        token: TokenHash,
        _now: Timestamp,
    ) -> StoreResult<()> {
        let mut s = self.lock()?;
        s.device(device)?;
        match s.tokens.get(&token) {
            Some(owner) if *owner == device => Ok(()),
            Some(_) => Err(StoreError::Conflict),
            None => {
                s.tokens.insert(token, device);
                Ok(())
            }
        }
    }

    async fn devices(&self, user: UserId) -> StoreResult<Vec<Device>> {
        Ok(self
            .lock()?
            .user_devices(user)
            .map(|r| r.device.clone())
            .collect())
    }

    async fn remove_device(&self, device: DeviceAddress) -> StoreResult<()> {
        let mut s = self.lock()?;
        s.device(device)?;
        s.devices.remove(&device.device);
        s.tokens.retain(|_, owner| *owner != device);
        Ok(())
    }

    async fn authenticate(&self, token: TokenHash) -> StoreResult<Option<DeviceAddress>> {
        Ok(self.lock()?.tokens.get(&token).copied())
    }

    async fn revoke_token(&self, token: TokenHash) -> StoreResult<bool> {
        Ok(self.lock()?.tokens.remove(&token).is_some())
    }

    async fn set_last_active(&self, user: UserId, at: Timestamp) -> StoreResult<()> {
        let mut s = self.lock()?;
        let row = s.users.get_mut(&user).ok_or(StoreError::NotFound)?;
        row.last_active = Some(row.last_active.map_or(at, |old| old.max(at)));
        Ok(())
    }

    async fn last_active(&self, user: UserId) -> StoreResult<Option<Timestamp>> {
        Ok(self.lock()?.users.get(&user).and_then(|r| r.last_active))
    }
}

#[async_trait]
impl KeyStore for MemoryStore {
    async fn device_list(&self, user: UserId) -> StoreResult<Option<DeviceListRecord>> {
        Ok(self.lock()?.device_lists.get(&user).cloned())
    }

    async fn set_device_list(
        &self,
        user: UserId,
        record: &DeviceListRecord,
        linked: &[DeviceId],
    ) -> StoreResult<()> {
        let mut s = self.lock()?;
        s.require_users([user])?;
        if s.device_lists
            .get(&user)
            .is_some_and(|old| old.version >= record.version)
        {
            return Err(StoreError::Conflict);
        }
        s.device_lists.insert(user, record.clone());
        for row in s.devices.values_mut() {
            if row.device.address.user == user {
                row.device.linked = linked.contains(&row.device.address.device);
            }
        }
        Ok(())
    }

    async fn set_link_payload(&self, device: DeviceAddress, sealed: Bytes) -> StoreResult<()> {
        self.lock()?.device_mut(device)?.link_payload = Some(sealed);
        Ok(())
    }

    async fn link_payload(&self, device: DeviceAddress) -> StoreResult<Option<Bytes>> {
        Ok(self.lock()?.device(device)?.link_payload.clone())
    }

    async fn set_device_keys(&self, device: DeviceAddress, keys: &DeviceKeys) -> StoreResult<()> {
        let mut s = self.lock()?;
        let row = s.device_mut(device)?;
        // One-time prekeys belong to the identity that published them.
        if row
            .keys
            .as_ref()
            .is_some_and(|old| old.identity != keys.identity)
        {
            row.prekeys.clear();
        }
        row.keys = Some(keys.clone());
        Ok(())
    }

    async fn add_one_time_prekeys(
        &self,
        device: DeviceAddress,
        keys: &[OneTimePrekey],
    ) -> StoreResult<()> {
        let mut s = self.lock()?;
        let row = s.device_mut(device)?;
        for key in keys {
            row.prekeys.entry(key.id).or_insert_with(|| key.clone());
        }
        Ok(())
    }

    async fn claim_bundles(&self, user: UserId) -> StoreResult<Vec<PrekeyBundle>> {
        self.bundles(user, true)
    }

    async fn fallback_bundles(&self, user: UserId) -> StoreResult<Vec<PrekeyBundle>> {
        self.bundles(user, false)
    }

    async fn one_time_prekey_count(&self, device: DeviceAddress) -> StoreResult<u64> {
        let s = self.lock()?;
        Ok(s.device(device).map_or(0, |r| r.prekeys.len() as u64))
    }
}

impl MemoryStore {
    /// Every keyed device's bundle of `user`, each taking one one-time prekey when `claim`.
    fn bundles(&self, user: UserId, claim: bool) -> StoreResult<Vec<PrekeyBundle>> {
        let mut s = self.lock()?;
        let mut bundles = Vec::new();
        for row in s
            .devices
            .values_mut()
            .filter(|r| r.device.address.user == user)
        {
            let Some(keys) = &row.keys else { continue };
            bundles.push(PrekeyBundle {
                device: row.device.address,
                identity: keys.identity.clone(),
                signed_prekey: keys.signed_prekey.clone(),
                one_time_prekey: if claim {
                    row.prekeys.pop_first().map(|(_, key)| key)
                } else {
                    None
                },
            });
        }
        Ok(bundles)
    }
}

#[async_trait]
impl ConversationStore for MemoryStore {
    async fn open_direct(&self, a: UserId, b: UserId, now: Timestamp) -> StoreResult<Conversation> {
        let mut s = self.lock()?;
        s.require_users([a, b])?;
        let pair = (a.min(b), a.max(b));
        if let Some(row) = s.directs.get(&pair).and_then(|id| s.conversations.get(id)) {
            return Ok(row.conversation.clone());
        }
        let conversation = s.new_conversation(ConversationKind::Direct, [a, b].into(), now)?;
        s.directs.insert(pair, conversation.id);
        Ok(conversation)
    }

    async fn create_group(
        &self,
        creator: UserId,
        members: &[UserId],
        limit: usize,
        now: Timestamp,
    ) -> StoreResult<Conversation> {
        let mut s = self.lock()?;
        let group = plan_group(creator, members, limit)?;
        let all: BTreeSet<UserId> = group.members().map(|(u, _)| u).collect();
        s.require_users(all.iter().copied())?;
        let conversation = s.new_conversation(ConversationKind::Group, all, now)?;
        if let Some(row) = s.conversations.get_mut(&conversation.id) {
            row.group = Some(group);
        }
        Ok(conversation)
    }

    async fn change_group(
        &self,
        conversation: ConversationId,
        actor: UserId,
        op: &GroupOp,
        limit: usize,
        link: Option<&ChainLink>,
    ) -> StoreResult<GroupState> {
        let mut s = self.lock()?;
        if let GroupOp::Add(users) = op {
            s.require_users(users.iter().copied())?;
        }
        let row = s
            .conversations
            .get_mut(&conversation)
            .ok_or(StoreError::NotFound)?;
        let current = row.group.as_ref().ok_or(StoreError::Invalid(
            "members of a one-to-one conversation are fixed",
        ))?;
        let next = plan_group_change(current, row.head.as_ref(), actor, op, limit, link)?;
        row.members = next.members().map(|(u, _)| u).collect();
        row.group = Some(next.clone());
        if let Some(link) = link {
            row.chain.push(link.change.clone());
            row.head = Some(link.head);
        }
        Ok(next)
    }

    async fn group_changes(
        &self,
        conversation: ConversationId,
        after: u64,
        limit: usize,
    ) -> StoreResult<Vec<(u64, Bytes)>> {
        let s = self.lock()?;
        let row = s
            .conversations
            .get(&conversation)
            .ok_or(StoreError::NotFound)?;
        if row.group.is_none() {
            return Err(StoreError::Invalid(
                "a one-to-one conversation has no group changes",
            ));
        }
        // Sequence number `n` is `chain[n - 1]`: skip the first `after`.
        let skip = usize::try_from(after).unwrap_or(usize::MAX);
        Ok((1..)
            .zip(&row.chain)
            .skip(skip)
            .take(limit)
            .map(|(seq, change)| (seq, change.clone()))
            .collect())
    }

    async fn group(&self, conversation: ConversationId) -> StoreResult<GroupState> {
        let s = self.lock()?;
        let row = s
            .conversations
            .get(&conversation)
            .ok_or(StoreError::NotFound)?;
        row.group.clone().ok_or(StoreError::Invalid(
            "a one-to-one conversation has no group state",
        ))
    }

    async fn conversation(
        &self,
        conversation: ConversationId,
    ) -> StoreResult<Option<Conversation>> {
        Ok(self
            .lock()?
            .conversations
            .get(&conversation)
            .map(|r| r.conversation.clone()))
    }

    async fn members(&self, conversation: ConversationId) -> StoreResult<Vec<UserId>> {
        let s = self.lock()?;
        let row = s
            .conversations
            .get(&conversation)
            .ok_or(StoreError::NotFound)?;
        Ok(row.members.iter().copied().collect())
    }

    async fn is_member(&self, conversation: ConversationId, user: UserId) -> StoreResult<bool> {
        let s = self.lock()?;
        Ok(s.conversations
            .get(&conversation)
            .is_some_and(|r| r.members.contains(&user)))
    }

    async fn conversations_of(&self, user: UserId) -> StoreResult<Vec<Conversation>> {
        let s = self.lock()?;
        let rows = s
            .conversations
            .values()
            .filter(|r| r.members.contains(&user));
        Ok(rows.map(|r| r.conversation.clone()).collect())
    }
}

#[async_trait]
impl HealthStore for MemoryStore {
    /// Memory always takes writes (while the process has memory).
    async fn probe_write(&self) -> StoreResult<()> {
        self.lock().map(drop)
    }
}

#[async_trait]
impl MessageStore for MemoryStore {
    async fn append(&self, message: NewMessage) -> StoreResult<Appended> {
        let mut s = self.lock()?;
        if let Some(&(conversation, id, sent_at)) = s
            .client_keys
            .get(&(message.sender.device, message.client_key))
        {
            if conversation != message.conversation {
                return Err(StoreError::ClientKeyReused);
            }
            return Ok(Appended {
                id,
                sent_at,
                duplicate: true,
                deliveries: Vec::new(),
            });
        }
        check_distinct_recipients(&message)?;
        s.device(message.sender)?;
        let row = s
            .conversations
            .get(&message.conversation)
            .ok_or(StoreError::NotFound)?;
        if !row.members.contains(&message.sender.user) {
            return Err(StoreError::NotMember);
        }
        let current: Vec<DeviceAddress> = row
            .members
            .iter()
            .flat_map(|&u| s.user_devices(u))
            .filter(|d| d.device.linked)
            .map(|d| d.device.address)
            .collect();
        check_coverage(&current, &message)?;
        let withheld_from = match row.conversation.kind {
            ConversationKind::Direct => row
                .members
                .iter()
                .copied()
                .find(|&u| u != message.sender.user)
                .filter(|&other| s.blocks.contains_key(&(other, message.sender.user))),
            ConversationKind::Group => None,
        };

        let next = row.messages.len() as u64 + 1;
        let id = MessageId::new(next).map_err(StoreError::backend)?;
        let mut deliveries = Vec::with_capacity(message.recipients.len());
        for recipient in &message.recipients {
            if Some(recipient.device.user) == withheld_from {
                continue;
            }
            let device = s.device_mut(recipient.device)?;
            let pos = device
                .head
                .next()
                .ok_or_else(|| failure("inbox positions exhausted"))?;
            device.head = pos;
            let row = InboxRow {
                conversation: message.conversation,
                id,
                header: recipient.header.clone(),
                sent_at: message.sent_at,
            };
            device.inbox.insert(pos, row);
            deliveries.push((recipient.device, pos));
        }
        let envelope = Envelope {
            conversation: message.conversation,
            id,
            sender: message.sender,
            client_key: message.client_key,
            sent_at: message.sent_at,
            body: message.body,
        };
        let row = s
            .conversations
            .get_mut(&message.conversation)
            .ok_or(StoreError::NotFound)?;
        row.messages.push(envelope);
        row.conversation.last_message = Some(id);
        s.client_keys.insert(
            (message.sender.device, message.client_key),
            (message.conversation, id, message.sent_at),
        );
        if let Some(user) = withheld_from {
            s.withheld.insert((message.conversation, id), user);
        }
        Ok(Appended {
            id,
            sent_at: message.sent_at,
            duplicate: false,
            deliveries,
        })
    }

    async fn inbox(
        &self,
        device: DeviceAddress,
        after: InboxPos,
        limit: usize,
    ) -> StoreResult<Vec<InboxEntry>> {
        use std::ops::Bound;
        let s = self.lock()?;
        let row = s.device(device)?;
        let mut entries = Vec::new();
        for (&pos, entry) in row
            .inbox
            .range((Bound::Excluded(after), Bound::Unbounded))
            .take(limit)
        {
            let envelope = s
                .envelope(entry.conversation, entry.id)
                .ok_or_else(|| failure("inbox entry points at a missing message"))?;
            entries.push(InboxEntry {
                pos,
                envelope: envelope.clone(),
                header: entry.header.clone(),
            });
        }
        Ok(entries)
    }

    async fn inbox_head(&self, device: DeviceAddress) -> StoreResult<InboxPos> {
        Ok(self.lock()?.device(device)?.head)
    }

    async fn trim_inboxes(&self, sent_before: Timestamp, limit: usize) -> StoreResult<u64> {
        let mut s = self.lock()?;
        // Oldest first, like the SQL backends' index; a walk over every entry is fine for a
        // test backend.
        let mut old: Vec<(Timestamp, DeviceId, InboxPos)> = s
            .devices
            .iter()
            .flat_map(|(&device, row)| {
                row.inbox
                    .iter()
                    .filter(|(_, entry)| entry.sent_at < sent_before)
                    .map(move |(&pos, entry)| (entry.sent_at, device, pos))
            })
            .collect();
        old.sort_unstable();
        old.truncate(limit);
        for &(_, device, pos) in &old {
            if let Some(row) = s.devices.get_mut(&device) {
                row.inbox.remove(&pos);
                row.floor = row.floor.max(pos);
            }
        }
        Ok(old.len() as u64)
    }

    async fn inbox_floor(&self, device: DeviceAddress) -> StoreResult<InboxPos> {
        Ok(self.lock()?.device(device)?.floor)
    }

    async fn ack(&self, device: DeviceAddress, up_to: InboxPos) -> StoreResult<InboxPos> {
        let mut s = self.lock()?;
        let row = s.device_mut(device)?;
        row.cursor = row.cursor.max(up_to);
        Ok(row.cursor)
    }

    async fn cursor(&self, device: DeviceAddress) -> StoreResult<InboxPos> {
        Ok(self.lock()?.device(device)?.cursor)
    }

    async fn history(
        &self,
        conversation: ConversationId,
        anchor: MessageId,
        direction: Direction,
        limit: usize,
    ) -> StoreResult<Vec<Envelope>> {
        let s = self.lock()?;
        let row = s
            .conversations
            .get(&conversation)
            .ok_or(StoreError::NotFound)?;
        // Message `i` has ID `i + 1`.
        let anchor_index = usize::try_from(anchor.get()).unwrap_or(usize::MAX) - 1;
        let page = match direction {
            Direction::Before => {
                let end = anchor_index.min(row.messages.len());
                row.messages
                    .get(..end)
                    .unwrap_or_default()
                    .iter()
                    .rev()
                    .take(limit)
                    .cloned()
                    .collect()
            }
            Direction::After => {
                let start = anchor_index.saturating_add(1);
                row.messages
                    .iter()
                    .skip(start)
                    .take(limit)
                    .cloned()
                    .collect()
            }
        };
        Ok(page)
    }

    async fn message(
        &self,
        conversation: ConversationId,
        id: MessageId,
    ) -> StoreResult<Option<Envelope>> {
        Ok(self.lock()?.envelope(conversation, id).cloned())
    }
}

#[async_trait]
impl ReceiptStore for MemoryStore {
    async fn set_receipt(
        &self,
        conversation: ConversationId,
        user: UserId,
        kind: ReceiptKind,
        up_to: MessageId,
    ) -> StoreResult<MessageId> {
        let mut s = self.lock()?;
        let row = s
            .conversations
            .get_mut(&conversation)
            .ok_or(StoreError::NotFound)?;
        if !row.members.contains(&user) {
            return Err(StoreError::NotMember);
        }
        let stored = row.receipts.entry((user, kind)).or_insert(up_to);
        *stored = (*stored).max(up_to);
        Ok(*stored)
    }

    async fn receipts(&self, conversation: ConversationId) -> StoreResult<Vec<ReceiptPosition>> {
        let s = self.lock()?;
        let row = s
            .conversations
            .get(&conversation)
            .ok_or(StoreError::NotFound)?;
        Ok(row
            .receipts
            .iter()
            .filter(|((user, _), _)| row.members.contains(user))
            .map(|(&(user, kind), &up_to)| ReceiptPosition { user, kind, up_to })
            .collect())
    }
}

#[async_trait]
impl MetaStore for MemoryStore {
    async fn insert_attachment(&self, meta: &AttachmentMeta) -> StoreResult<()> {
        let mut s = self.lock()?;
        if s.attachments.contains_key(&meta.id) {
            return Err(StoreError::Conflict);
        }
        s.attachments.insert(meta.id, meta.clone());
        Ok(())
    }

    async fn attachment(&self, id: AttachmentId) -> StoreResult<Option<AttachmentMeta>> {
        Ok(self.lock()?.attachments.get(&id).cloned())
    }

    async fn set_push_token(
        &self,
        device: DeviceAddress,
        token: Option<&PushToken>,
    ) -> StoreResult<()> {
        self.lock()?.device_mut(device)?.push = token.cloned();
        Ok(())
    }

    async fn push_token(&self, device: DeviceAddress) -> StoreResult<Option<PushToken>> {
        Ok(self
            .lock()?
            .device(device)
            .ok()
            .and_then(|r| r.push.clone()))
    }
}

#[async_trait]
impl ProfileStore for MemoryStore {
    async fn set_profile(
        &self,
        user: UserId,
        update: &ProfileUpdate,
        now: Timestamp,
    ) -> StoreResult<Profile> {
        let mut s = self.lock()?;
        let username = s
            .users
            .get(&user)
            .map(|r| r.user.username.clone())
            .ok_or(StoreError::NotFound)?;
        let profile = Profile {
            user,
            username,
            display_name: update.display_name.clone(),
            status: update.status.clone(),
            avatar: update.avatar,
            updated_at: now,
        };
        if let Some(old) = s.profiles.insert(user, profile.clone()) {
            s.directory.remove(&(old.display_name.search_key(), user));
        }
        s.directory
            .insert((profile.display_name.search_key(), user));
        Ok(profile)
    }

    async fn profile(&self, user: UserId) -> StoreResult<Option<Profile>> {
        Ok(self.lock()?.profiles.get(&user).cloned())
    }

    async fn search_profiles(
        &self,
        prefix: &SearchPrefix,
        after: Option<&SearchCursor>,
        limit: usize,
    ) -> StoreResult<Vec<Profile>> {
        use std::ops::Bound;
        let s = self.lock()?;
        let lowest = (SearchKey::from_stored(prefix.as_str().into()), UserId::MIN);
        // A cursor below the prefix's range (from another search) starts at the range.
        let start = match after {
            Some(c) if (&c.key, c.user) >= (&lowest.0, lowest.1) => {
                Bound::Excluded((c.key.clone(), c.user))
            }
            _ => Bound::Included(lowest),
        };
        let page = s
            .directory
            .range((start, Bound::Unbounded))
            .take_while(|(key, _)| prefix.matches(key))
            .take(limit)
            .filter_map(|(_, user)| s.profiles.get(user).cloned())
            .collect();
        Ok(page)
    }
}

#[async_trait]
impl BlockStore for MemoryStore {
    async fn block(&self, blocker: UserId, blocked: UserId, now: Timestamp) -> StoreResult<bool> {
        if blocker == blocked {
            return Err(StoreError::Invalid("cannot block oneself"));
        }
        let mut s = self.lock()?;
        s.require_users([blocker, blocked])?;
        if s.blocks.contains_key(&(blocker, blocked)) {
            return Ok(false);
        }
        s.blocks.insert((blocker, blocked), now);
        Ok(true)
    }

    async fn unblock(&self, blocker: UserId, blocked: UserId) -> StoreResult<bool> {
        Ok(self.lock()?.blocks.remove(&(blocker, blocked)).is_some())
    }

    async fn blocks(&self, blocker: UserId) -> StoreResult<Vec<Block>> {
        let s = self.lock()?;
        let range = (blocker, UserId::MIN)..;
        Ok(s.blocks
            .range(range)
            .take_while(|((b, _), _)| *b == blocker)
            .map(|(&(_, user), &created_at)| Block { user, created_at })
            .collect())
    }

    async fn is_blocked(&self, blocker: UserId, blocked: UserId) -> StoreResult<bool> {
        Ok(self.lock()?.blocks.contains_key(&(blocker, blocked)))
    }

    async fn blocked_by(&self, user: UserId) -> StoreResult<Vec<UserId>> {
        let s = self.lock()?;
        let mut by: Vec<UserId> = s
            .blocks
            .keys()
            .filter(|(_, blocked)| *blocked == user)
            .map(|&(blocker, _)| blocker)
            .collect();
        by.sort();
        Ok(by)
    }

    async fn withheld(
        &self,
        conversation: ConversationId,
        user: UserId,
        ids: &[MessageId],
    ) -> StoreResult<Vec<MessageId>> {
        let s = self.lock()?;
        Ok(ids
            .iter()
            .copied()
            .filter(|&id| s.withheld.get(&(conversation, id)) == Some(&user))
            .collect())
    }
}
