//! End-to-end encryption glue: chat-crypto's values, loaded from and saved to the
//! [`ClientStore`], under one lock so that every load-change-stage is atomic. The lock is
//! released before the fsync ([`ClientStore::sync`]), which each caller then waits for: the
//! next operation runs during it, and one fsync covers all that were staged before it.
//!
//! Invariants (docs/SECURITY.md, "the contract for chat-client"):
//! - a ciphertext is committed to the outbox in the same batch as the ratchet state that
//!   produced it, before it leaves the device; a retry resends those bytes;
//! - a decrypted message, the state that decrypted it and the advanced cursor are one batch;
//! - a pairwise session is taken only with the identity the sender's trusted device list gives
//!   the device (trust.rs); anything else is refused with nothing committed;
//! - every plaintext is sealed with its [`MessageBinding`] (conversation, kind, client key,
//!   the sender's time) before it is encrypted, and a delivery whose binding names another
//!   conversation, kind or client key is refused (the server refiled it); a sender key handed
//!   over in a conversation must be for that conversation's group.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::{Mutex, MutexGuard};

use chat_core::protocol::Deliver;
use chat_core::{ClientKey, ConversationId, DeviceAddress, DeviceId, Timestamp, UserId};
use chat_crypto::{
    Account, AccountIdentity, ConversationKind, Decrypted, DeviceSessions, IdentityPublic,
    MessageBinding, OneTimePrekey, OutgoingMessage, PrekeyBundle, SenderKey, SenderKeyReceiver,
    Session, SignedPrekey, encrypt_for_devices, is_prekey_message, sender_key_headers,
};

use crate::error::{Error, Result};
use crate::event::Message;
use crate::store::{OutboxEntry, Secret, Store, StoredMessage, Write, blocking};
use crate::thread::{self, Derived};

/// What one delivery produced, once committed.
pub(crate) enum Opened {
    /// A message was decrypted and stored (with the search updates it caused).
    Message(Box<(StoredMessage, Derived)>),
    /// The message is stored already (recovered from history, or delivered twice); only the
    /// cursor moved.
    Known,
    /// The delivery could not be decrypted; the cursor moved past it.
    Failed(chat_crypto::Error),
    /// The sending device is on no device list this device trusts: the delivery was not
    /// opened; the cursor moved past it.
    Refused,
}

/// The device's crypto state: the account in memory, everything else in the store.
pub(crate) struct Crypto {
    me: DeviceAddress,
    store: Store,
    /// A fair mutex (parking_lot's), held only around synchronous crypto and staging one
    /// batch (no fsync).
    account: Mutex<Account>,
    /// Set when a panic unwound through the lock: the account may be half-changed, so
    /// nothing uses it again (std's poisoning, which parking_lot does not have).
    poisoned: AtomicBool,
}

/// Poisons the crypto state if dropped during a panic.
struct PoisonOnPanic<'a>(&'a AtomicBool);

impl Drop for PoisonOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::Release);
        }
    }
}

impl std::fmt::Debug for Crypto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Crypto")
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

fn addr(a: DeviceAddress) -> chat_crypto::DeviceAddress {
    chat_crypto::DeviceAddress::new(a.user.get(), a.device.get())
}

fn core_addr(a: chat_crypto::DeviceAddress) -> Result<DeviceAddress> {
    Ok(DeviceAddress {
        user: UserId::new(a.user)?,
        device: DeviceId::new(a.device)?,
    })
}

/// A conversation's sender-key group ID: its conversation ID as a u64, big-endian.
fn group_id(conversation: ConversationId) -> [u8; 8] {
    conversation.get().to_be_bytes()
}

/// `content` sealed with its binding, ready to encrypt.
fn seal(
    kind: ConversationKind,
    conversation: ConversationId,
    client_key: ClientKey,
    content: &[u8],
) -> Vec<u8> {
    MessageBinding {
        kind,
        conversation: conversation.get(),
        message_id: *client_key.as_bytes(),
        sent_at_ms: crate::client::now().as_millis(),
    }
    .seal(content)
}

/// The content of a decrypted plaintext whose binding matches the delivery.
fn unseal(
    plaintext: &[u8],
    kind: ConversationKind,
    conversation: ConversationId,
    client_key: ClientKey,
) -> Result<Vec<u8>, chat_crypto::Error> {
    let (_, content) =
        MessageBinding::open(plaintext, kind, conversation.get(), *client_key.as_bytes())?;
    Ok(content.to_vec())
}

/// The directory's bundle as chat-crypto wants it.
pub(crate) fn crypto_bundle(b: &chat_core::PrekeyBundle) -> Result<PrekeyBundle> {
    let bad = || Error::protocol("malformed key bundle");
    let (identity, identity_signature) =
        IdentityPublic::from_published(&b.identity).map_err(|_| bad())?;
    Ok(PrekeyBundle {
        identity,
        identity_signature,
        signed_prekey: SignedPrekey {
            id: b.signed_prekey.id,
            key: b
                .signed_prekey
                .public
                .as_ref()
                .try_into()
                .map_err(|_| bad())?,
            signature: b
                .signed_prekey
                .signature
                .as_ref()
                .try_into()
                .map_err(|_| bad())?,
        },
        one_time_prekey: match &b.one_time_prekey {
            Some(k) => Some(OneTimePrekey {
                id: k.id,
                key: k.public.as_ref().try_into().map_err(|_| bad())?,
            }),
            None => None,
        },
    })
}

/// The keys a device publishes (`PUT /v1/keys`).
pub(crate) fn device_keys(account: &Account) -> Result<chat_core::DeviceKeys> {
    let id = account.identity();
    let mut identity = id.public().to_bytes().to_vec();
    identity.extend_from_slice(&id.binding_signature());
    let spk = account
        .signed_prekey()
        .ok_or_else(|| Error::protocol("account without a signed prekey"))?;
    Ok(chat_core::DeviceKeys {
        identity: identity.into(),
        signed_prekey: chat_core::SignedPrekey {
            id: spk.id,
            public: spk.key.to_vec().into(),
            signature: spk.signature.to_vec().into(),
        },
    })
}

/// One-time prekeys as the directory takes them.
pub(crate) fn one_time_keys(keys: &[OneTimePrekey]) -> Vec<chat_core::OneTimePrekey> {
    keys.iter()
        .map(|k| chat_core::OneTimePrekey {
            id: k.id,
            public: k.key.to_vec().into(),
        })
        .collect()
}

impl Crypto {
    pub(crate) fn new(me: DeviceAddress, store: Store, account: Account) -> Self {
        Self {
            me,
            store,
            account: Mutex::new(account),
            poisoned: AtomicBool::new(false),
        }
    }

    /// Loads the account from the store.
    pub(crate) fn load(me: DeviceAddress, store: Store) -> Result<Self> {
        let pickle = store.account()?.ok_or(Error::NotLoggedIn)?;
        let account = Account::from_pickle(&pickle)?;
        Ok(Self::new(me, store, account))
    }

    /// Runs `f` under the lock, then waits outside it until what `f` staged is durable:
    /// the next load-change-stage goes on during this one's fsync (one fsync covers both),
    /// and nothing `f` made leaves the device before it is on disk.
    async fn durably<T>(&self, f: impl FnOnce(&mut Account) -> Result<T>) -> Result<T> {
        let out = self.staged(f);
        self.store.sync().await?;
        out
    }

    /// Runs `f` under the lock; what it stages is durable after the caller's next sync.
    /// Off the runtime's workers (`blocking`): neither the wait for the lock nor the crypto
    /// under it holds up other tasks. The lock is handed over fairly: a send waiting while
    /// a backlog is decrypted gets it next, not after the whole backlog.
    fn staged<T>(&self, f: impl FnOnce(&mut Account) -> Result<T>) -> Result<T> {
        blocking(|| {
            let mut account = self.account.lock();
            if self.poisoned.load(Ordering::Acquire) {
                return Err(Error::poisoned("crypto state"));
            }
            let out = {
                // A panic under the lock may leave the account half-changed.
                let _poison = PoisonOnPanic(&self.poisoned);
                f(&mut account)
            };
            MutexGuard::unlock_fair(account);
            out
        })
    }

    /// Adds `count` one-time prekeys to the account and saves it; returns what to upload.
    /// Saved first: an uploaded key whose secret a crash lost would make first messages fail.
    pub(crate) async fn new_one_time_keys(&self, count: usize) -> Result<Vec<OneTimePrekey>> {
        self.durably(|account| {
            let keys = account.generate_one_time_prekeys(&mut rand::rng(), count);
            self.store.stage(vec![Write::Account(account.pickle())])?;
            Ok(keys)
        })
        .await
    }

    /// Makes a new signed prekey and saves the account with the time; returns the keys to
    /// publish. The previous ones stay usable for first messages still in flight.
    pub(crate) async fn rotate_signed_prekey(
        &self,
        now: Timestamp,
    ) -> Result<chat_core::DeviceKeys> {
        self.durably(|account| {
            account.rotate_signed_prekey(&mut rand::rng());
            self.store.stage(vec![
                Write::Account(account.pickle()),
                Write::SignedPrekeyMadeAt(now),
            ])?;
            device_keys(account)
        })
        .await
    }

    /// This device's identity.
    pub(crate) fn identity(&self) -> Result<IdentityPublic> {
        self.staged(|account| Ok(account.identity().public()))
    }

    /// The account key of the account identity this device holds, if any.
    pub(crate) fn account_key(&self) -> Result<Option<chat_crypto::AccountKey>> {
        self.staged(|account| Ok(account.account_identity().map(AccountIdentity::public)))
    }

    /// Keeps (or, with `None`, forgets) the user's account identity, saved with the account.
    pub(crate) async fn set_account_identity(
        &self,
        identity: Option<AccountIdentity>,
    ) -> Result<()> {
        self.durably(|account| {
            match identity {
                Some(identity) => account.set_account_identity(identity),
                None => account.clear_account_identity(),
            }
            self.store.stage(vec![Write::Account(account.pickle())])
        })
        .await
    }

    /// Runs `f` with the account identity this device holds ([`Error::NotLinked`] without).
    pub(crate) fn with_account_identity<T>(
        &self,
        f: impl FnOnce(&AccountIdentity) -> T,
    ) -> Result<T> {
        self.staged(|account| account.account_identity().map(f).ok_or(Error::NotLinked))
    }

    /// The sessions with `devices`; a device with none goes to `empty` (it gets an empty
    /// header).
    fn load_sessions(
        &self,
        devices: &[DeviceAddress],
        empty: &mut Vec<DeviceAddress>,
    ) -> Result<Vec<(DeviceAddress, DeviceSessions)>> {
        let mut loaded = Vec::new();
        for d in devices {
            let s = self.sessions(*d)?;
            if s.is_empty() {
                empty.push(*d);
            } else {
                loaded.push((*d, s));
            }
        }
        Ok(loaded)
    }

    fn sessions(&self, device: DeviceAddress) -> Result<DeviceSessions> {
        match self.store.sessions(device)? {
            Some(p) => Ok(DeviceSessions::from_pickle(&p)?),
            None => Ok(DeviceSessions::new()),
        }
    }

    /// The devices among `wanted` with no session with the identity they are trusted with.
    pub(crate) fn without_session(
        &self,
        wanted: &BTreeMap<DeviceAddress, IdentityPublic>,
    ) -> Result<Vec<DeviceAddress>> {
        let mut out = Vec::new();
        for (d, identity) in wanted {
            if self.sessions(*d)?.their_identity() != Some(*identity) {
                out.push(*d);
            }
        }
        Ok(out)
    }

    /// Starts sessions from fetched bundles with the `wanted` devices that have no session
    /// with the identity they are trusted with (replacing sessions with another identity).
    /// Returns the devices whose bundle carries another identity than the trusted one: the
    /// server swapped it; nothing is started with them.
    pub(crate) async fn add_bundles(
        &self,
        bundles: &[chat_core::PrekeyBundle],
        wanted: &BTreeMap<DeviceAddress, IdentityPublic>,
    ) -> Result<Vec<DeviceAddress>> {
        self.durably(|account| {
            let mut writes = Vec::new();
            let mut refused = Vec::new();
            for b in bundles {
                let Some(trusted) = wanted.get(&b.device) else {
                    continue;
                };
                let mut sessions = self.sessions(b.device)?;
                if sessions.their_identity() == Some(*trusted) {
                    continue;
                }
                let bundle = crypto_bundle(b)?;
                if bundle.identity != *trusted {
                    refused.push(b.device);
                    continue;
                }
                // Sessions with another identity belong to a device list no longer trusted.
                sessions.clear();
                let session = Session::initiate(
                    &mut rand::rng(),
                    account,
                    addr(self.me),
                    addr(b.device),
                    &bundle,
                )?;
                sessions.add(session)?;
                writes.push(Write::Sessions(b.device, sessions.pickle()));
            }
            self.store.stage(writes)?;
            Ok(refused)
        })
        .await
    }

    /// Encrypts a one-to-one message for `devices` and commits it to the outbox with the
    /// advanced sessions; `unreadable` devices get an empty header.
    pub(crate) async fn encrypt_direct(
        &self,
        client_key: ClientKey,
        conversation: ConversationId,
        devices: &[DeviceAddress],
        unreadable: &[DeviceAddress],
        plaintext: Vec<u8>,
    ) -> Result<OutboxEntry> {
        self.durably(|_| {
            let mut empty = Vec::new();
            let mut loaded = self.load_sessions(devices, &mut empty)?;
            let sealed = seal(
                ConversationKind::Direct,
                conversation,
                client_key,
                &plaintext,
            );
            let mut msg = encrypt_for_devices(
                &mut rand::rng(),
                &sealed,
                loaded.iter_mut().filter_map(|(_, s)| s.active()),
            )?;
            take_failed(&mut msg, &mut empty);
            empty.extend_from_slice(unreadable);
            let entry = OutboxEntry {
                client_key,
                conversation,
                payload: Payload::Direct { msg, empty }.encode(),
                plaintext,
            };
            let mut writes: Vec<Write> = loaded
                .into_iter()
                .map(|(d, s)| Write::Sessions(d, s.pickle()))
                .collect();
            writes.push(Write::OutboxPut(entry.clone()));
            self.store.stage(writes)?;
            Ok(entry)
        })
        .await
    }

    /// Encrypts a group message with this device's sender key, handing the key to devices
    /// that lack it and rotating it first if a device that holds it is no longer a recipient;
    /// `unreadable` devices get an empty header (and never the key).
    pub(crate) async fn encrypt_group(
        &self,
        client_key: ClientKey,
        conversation: ConversationId,
        devices: &[DeviceAddress],
        unreadable: &[DeviceAddress],
        plaintext: Vec<u8>,
    ) -> Result<OutboxEntry> {
        self.durably(|_| {
            let mut rng = rand::rng();
            let current: BTreeSet<DeviceAddress> = devices.iter().copied().collect();
            let (mut key, mut holders) = match self.store.sender_key(conversation)? {
                Some((p, holders)) => (SenderKey::from_pickle(&p)?, holders),
                None => (
                    SenderKey::new(&mut rng, &group_id(conversation), addr(self.me))?,
                    Vec::new(),
                ),
            };
            if holders.iter().any(|h| !current.contains(h)) {
                // Someone left: a new key that only the remaining devices get.
                key = SenderKey::new(&mut rng, &group_id(conversation), addr(self.me))?;
                holders.clear();
            }
            let before = key.pickle();
            let mut writes = Vec::new();
            let mut headers = BTreeMap::new();
            let need: Vec<DeviceAddress> = devices
                .iter()
                .filter(|d| !holders.contains(d))
                .copied()
                .collect();
            let handed = self.distribute(&key, &need, &mut headers, &mut writes)?;
            holders.extend(handed);
            let sealed = seal(
                ConversationKind::Group,
                conversation,
                client_key,
                &plaintext,
            );
            let body = key.encrypt(&mut rng, &sealed)?;
            for d in devices.iter().chain(unreadable) {
                headers.entry(*d).or_insert_with(Vec::new);
            }
            let entry = OutboxEntry {
                client_key,
                conversation,
                payload: Payload::Group {
                    key_before: before,
                    body,
                    headers: headers.into_iter().collect(),
                }
                .encode(),
                plaintext,
            };
            writes.push(Write::SenderKey {
                conversation,
                pickle: key.pickle(),
                distributed: holders,
            });
            writes.push(Write::OutboxPut(entry.clone()));
            self.store.stage(writes)?;
            Ok(entry)
        })
        .await
    }

    /// Wraps `key`'s distribution for each of `devices` that has a session; returns them.
    fn distribute(
        &self,
        key: &SenderKey,
        devices: &[DeviceAddress],
        headers: &mut BTreeMap<DeviceAddress, Vec<u8>>,
        writes: &mut Vec<Write>,
    ) -> Result<Vec<DeviceAddress>> {
        let distribution = key.distribution();
        let mut handed = Vec::new();
        for d in devices {
            let mut s = self.sessions(*d)?;
            let Some(session) = s.active() else {
                continue;
            };
            let wrapped = sender_key_headers(&mut rand::rng(), &distribution, [session]);
            if let Some((_, Ok(h))) = wrapped.into_iter().next() {
                headers.insert(*d, h);
                handed.push(*d);
                writes.push(Write::Sessions(*d, s.pickle()));
            }
        }
        Ok(handed)
    }

    /// Adjusts an outbox entry to the server's device list: headers for `missing` devices
    /// (the body stays the same), empty ones for `unreadable` devices (named by the server,
    /// not trusted), none for `extra` ones. A group message with `extra` devices is
    /// encrypted again, under a new sender key if any of them held the current one (a device
    /// that left must not read it). Commits the entry, the sessions and the key.
    pub(crate) async fn repair(
        &self,
        client_key: ClientKey,
        missing: &[DeviceAddress],
        unreadable: &[DeviceAddress],
        extra: &[DeviceAddress],
    ) -> Result<()> {
        self.durably(|_| {
            let Some(mut entry) = self.store.outbox_entry(client_key)? else {
                return Ok(());
            };
            let mut writes = Vec::new();
            let payload = match Payload::decode(&entry.payload)? {
                Payload::Direct { mut msg, mut empty } => {
                    let gone: Vec<_> = extra.iter().chain(unreadable).map(|d| addr(*d)).collect();
                    msg.remove_devices(&gone);
                    empty.retain(|d| {
                        !extra.contains(d) && !missing.contains(d) && !unreadable.contains(d)
                    });
                    empty.extend_from_slice(unreadable);
                    let mut loaded = self.load_sessions(missing, &mut empty)?;
                    msg.add_devices(
                        &mut rand::rng(),
                        loaded.iter_mut().filter_map(|(_, s)| s.active()),
                    );
                    take_failed(&mut msg, &mut empty);
                    writes.extend(
                        loaded
                            .into_iter()
                            .map(|(d, s)| Write::Sessions(d, s.pickle())),
                    );
                    Payload::Direct { msg, empty }
                }
                Payload::Group {
                    key_before,
                    body,
                    headers,
                } if extra.is_empty() => {
                    let mut headers: BTreeMap<_, _> = headers.into_iter().collect();
                    // The key as it was before this message, so new devices can open it.
                    let key = SenderKey::from_pickle(&key_before)?;
                    let handed = self.distribute(&key, missing, &mut headers, &mut writes)?;
                    for d in missing.iter().chain(unreadable) {
                        headers.entry(*d).or_insert_with(Vec::new);
                    }
                    if let Some((current, mut holders)) =
                        self.store.sender_key(entry.conversation)?
                    {
                        let current_key = SenderKey::from_pickle(&current)?;
                        if current_key.key_id() == key.key_id() {
                            holders.extend(handed);
                            writes.push(Write::SenderKey {
                                conversation: entry.conversation,
                                pickle: current,
                                distributed: holders,
                            });
                        }
                    }
                    Payload::Group {
                        key_before,
                        body,
                        headers: headers.into_iter().collect(),
                    }
                }
                Payload::Group { headers, .. } => {
                    // A device left: this message must not go out under a key it holds.
                    let recipients: Vec<DeviceAddress> = headers
                        .iter()
                        .map(|(d, _)| *d)
                        .chain(missing.iter().copied())
                        .filter(|d| !extra.contains(d) && !unreadable.contains(d))
                        .collect::<BTreeSet<_>>()
                        .into_iter()
                        .collect();
                    let mut payload =
                        self.reencrypt_group(&mut entry, &recipients, extra, &mut writes)?;
                    if let Payload::Group { headers, .. } = &mut payload {
                        headers.extend(unreadable.iter().map(|d| (*d, Vec::new())));
                    }
                    payload
                }
            };
            entry.payload = payload.encode();
            writes.push(Write::OutboxPut(entry));
            self.store.stage(writes)
        })
        .await
    }

    /// Encrypts a queued group message again for `recipients`, under the current sender key
    /// if none of `gone` holds it, else under a new one (the rotation that follows a device
    /// or member leaving). Queues the new key's writes on `writes`.
    fn reencrypt_group(
        &self,
        entry: &mut OutboxEntry,
        recipients: &[DeviceAddress],
        gone: &[DeviceAddress],
        writes: &mut Vec<Write>,
    ) -> Result<Payload> {
        let mut rng = rand::rng();
        let conversation = entry.conversation;
        let stored = self.store.sender_key(conversation)?;
        let (mut key, mut holders) = match stored {
            Some((p, holders)) if !holders.iter().any(|h| gone.contains(h)) => {
                (SenderKey::from_pickle(&p)?, holders)
            }
            _ => (
                SenderKey::new(&mut rng, &group_id(conversation), addr(self.me))?,
                Vec::new(),
            ),
        };
        let before = key.pickle();
        let mut headers = BTreeMap::new();
        let need: Vec<DeviceAddress> = recipients
            .iter()
            .filter(|d| !holders.contains(d))
            .copied()
            .collect();
        let handed = self.distribute(&key, &need, &mut headers, writes)?;
        holders.extend(handed);
        let sealed = seal(
            ConversationKind::Group,
            conversation,
            entry.client_key,
            &entry.plaintext,
        );
        let body = key.encrypt(&mut rng, &sealed)?;
        for d in recipients {
            headers.entry(*d).or_insert_with(Vec::new);
        }
        writes.push(Write::SenderKey {
            conversation,
            pickle: key.pickle(),
            distributed: holders,
        });
        Ok(Payload::Group {
            key_before: before,
            body,
            headers: headers.into_iter().collect(),
        })
    }

    /// Opens one delivery and stages the result with the cursor at `deliver.pos`; durable
    /// once a later [`ClientStore::sync`] returns, which the driver waits for before it
    /// acknowledges (so a backlog shares an fsync between the deliveries of one ack).
    /// `sender_identity` is the identity the sending device has on the device list this
    /// device trusts (`None`: it is on none, and the delivery is refused unopened); a
    /// pairwise message from a session with another identity is refused.
    pub(crate) fn open(
        &self,
        deliver: &Deliver,
        sender_identity: Option<IdentityPublic>,
    ) -> Result<Opened> {
        self.staged(|account| {
            let mut writes = vec![Write::Cursor(deliver.pos)];
            // Checked under the lock that history recovery takes too: a message is decrypted
            // once (a second decryption would fail: its key is gone). Another message under the
            // same ID is not this one: it is replaced (see `thread::derive`).
            let stored = self.store.message(deliver.conversation, deliver.id)?;
            let known = stored
                .as_ref()
                .is_some_and(|m| m.sender == deliver.sender && m.client_key == deliver.client_key);
            if known {
                self.store.stage(writes)?;
                return Ok(Opened::Known);
            }
            let Some(sender_identity) = sender_identity else {
                self.store.stage(writes)?;
                return Ok(Opened::Refused);
            };
            let otks_before = account.one_time_prekey_count();
            // A first message changes the account: a one-time prekey used, or (without one) an
            // entry in its replay cache, which must survive a restart.
            let first_message = is_prekey_message(&deliver.header);
            let opened = match self.decrypt(account, deliver, sender_identity, &mut writes) {
                Ok(plaintext) => {
                    let m = StoredMessage {
                        conversation: deliver.conversation,
                        id: deliver.id,
                        sender: deliver.sender,
                        client_key: deliver.client_key,
                        sent_at: deliver.sent_at,
                        plaintext,
                    };
                    let mut derived = match thread::derive(&*self.store, &m, stored.as_ref()) {
                        Ok(d) => d,
                        Err(e) => {
                            // Decryption changed the account in memory (a one-time prekey used):
                            // go back to the committed one, so a retry can decrypt again.
                            if let Some(p) = self.store.account()? {
                                *account = Account::from_pickle(&p)?;
                            }
                            return Err(e);
                        }
                    };
                    writes.extend(thread::store_writes(m.clone(), &mut derived));
                    Opened::Message(Box::new((m, derived)))
                }
                Err(e) => {
                    // Nothing about the state changed; drop the partial writes except the cursor.
                    // A check after the session opened the message (a misfiled binding, a sender
                    // key for another group) may have changed the account in memory (a one-time
                    // prekey used): go back to the committed one.
                    writes.truncate(1);
                    if let Some(p) = self.store.account()? {
                        *account = Account::from_pickle(&p)?;
                    }
                    Opened::Failed(e)
                }
            };
            if account.one_time_prekey_count() != otks_before
                || (first_message && matches!(opened, Opened::Message(_)))
            {
                writes.push(Write::Account(account.pickle()));
            }
            if let Err(e) = self.store.stage(writes) {
                // Keep memory equal to the store: reload the account as committed.
                if let Some(p) = self.store.account()? {
                    *account = Account::from_pickle(&p)?;
                }
                return Err(e);
            }
            Ok(opened)
        })
    }

    /// Runs `f` under the lock every load-change-stage of messages takes (decrypting,
    /// recovering, storing an own message), so they never interleave. What `f` stages is
    /// durable after the caller's next [`ClientStore::sync`].
    pub(crate) fn serialized<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.staged(|_| f())
    }

    /// Decrypts a message read from history (no per-device header: only group messages under
    /// a sender key this device holds can be opened) and stores it. `Ok(None)`: it was stored
    /// already.
    pub(crate) async fn open_history(
        &self,
        envelope: StoredMessage,
        body: &[u8],
    ) -> Result<Option<(Message, Derived)>, Error> {
        self.durably(|_| {
            if self
                .store
                .message(envelope.conversation, envelope.id)?
                .is_some()
            {
                return Ok(None);
            }
            let pickle = self
                .store
                .receiver(envelope.conversation, envelope.sender)?
                .ok_or(chat_crypto::Error::UnknownSenderKey)?;
            let mut receiver = SenderKeyReceiver::from_pickle(&pickle)?;
            let plaintext = unseal(
                &receiver.decrypt(body)?,
                ConversationKind::Group,
                envelope.conversation,
                envelope.client_key,
            )?;
            let m = StoredMessage {
                plaintext,
                ..envelope
            };
            // Nothing is stored under this ID (checked above).
            let mut derived = thread::derive(&*self.store, &m, None)?;
            let mut writes = vec![Write::Receiver {
                conversation: m.conversation,
                sender: m.sender,
                pickle: receiver.pickle(),
            }];
            let message = Message::from_stored(&m);
            writes.extend(thread::store_writes(m, &mut derived));
            self.store.stage(writes)?;
            Ok(Some((message, derived)))
        })
        .await
    }

    fn decrypt(
        &self,
        account: &mut Account,
        d: &Deliver,
        sender_identity: IdentityPublic,
        writes: &mut Vec<Write>,
    ) -> Result<Vec<u8>, chat_crypto::Error> {
        let store_err = |_: Error| chat_crypto::Error::Malformed("local state");
        if d.header.is_empty() {
            // A group message with a sender key handed over earlier.
            let p = self
                .store
                .receiver(d.conversation, d.sender)
                .map_err(store_err)?
                .ok_or(chat_crypto::Error::UnknownSenderKey)?;
            let mut receiver = SenderKeyReceiver::from_pickle(&p)?;
            let plaintext = receiver.decrypt(&d.body)?;
            let content = unseal(
                &plaintext,
                ConversationKind::Group,
                d.conversation,
                d.client_key,
            )?;
            writes.push(Write::Receiver {
                conversation: d.conversation,
                sender: d.sender,
                pickle: receiver.pickle(),
            });
            return Ok(content);
        }
        let mut sessions = match self.store.sessions(d.sender).map_err(store_err)? {
            Some(p) => DeviceSessions::from_pickle(&p)?,
            None => DeviceSessions::new(),
        };
        let (me, them) = (addr(self.me), addr(d.sender));
        let decrypted = match sessions.decrypt(account, me, them, &d.header, &d.body) {
            Err(chat_crypto::Error::IdentityChanged) => {
                // A new session with another identity than the held ones: taken only if the
                // trusted device list gives the device that identity (checked below); the
                // old sessions belong to a list no longer trusted.
                sessions.clear();
                sessions.decrypt(account, me, them, &d.header, &d.body)?
            }
            other => other?,
        };
        if sessions.their_identity() != Some(sender_identity) {
            // A device identity that is not on the sender's trusted list (a server that
            // swapped it): refused; nothing is committed.
            return Err(chat_crypto::Error::IdentityChanged);
        }
        writes.push(Write::Sessions(d.sender, sessions.pickle()));
        match decrypted {
            Decrypted::Message(plaintext) => unseal(
                &plaintext,
                ConversationKind::Direct,
                d.conversation,
                d.client_key,
            ),
            Decrypted::SenderKey(dist) => {
                // A sender key is for one group: the one of the conversation it arrived in.
                if dist.group_id() != group_id(d.conversation) {
                    return Err(chat_crypto::Error::SenderKeyMismatch);
                }
                let mut receiver = match self
                    .store
                    .receiver(d.conversation, d.sender)
                    .map_err(store_err)?
                {
                    Some(p) => SenderKeyReceiver::from_pickle(&p)?,
                    None => SenderKeyReceiver::new(them, &dist),
                };
                receiver.add(them, &dist)?;
                let plaintext = receiver.decrypt(&d.body)?;
                let content = unseal(
                    &plaintext,
                    ConversationKind::Group,
                    d.conversation,
                    d.client_key,
                )?;
                writes.push(Write::Receiver {
                    conversation: d.conversation,
                    sender: d.sender,
                    pickle: receiver.pickle(),
                });
                Ok(content)
            }
            _ => Err(chat_crypto::Error::UnexpectedPayload),
        }
    }
}

/// Devices whose session could not encrypt get an empty header (they cannot read this
/// message; their next prekey message starts a fresh session).
fn take_failed(msg: &mut OutgoingMessage, empty: &mut Vec<DeviceAddress>) {
    for (device, err) in msg.failed.drain(..) {
        tracing::warn!(cause = %err, "a session could not encrypt");
        if let Ok(d) = core_addr(device) {
            empty.push(d);
        }
    }
}

/// A fresh random client key.
pub(crate) fn random_client_key() -> ClientKey {
    use rand::RngExt as _;
    ClientKey::from_bytes(rand::rng().random())
}

/// An encrypted message as kept in the outbox.
pub(crate) enum Payload {
    /// One-to-one: the outgoing message (body, headers, content key) and the devices that
    /// get an empty header because they published no keys.
    Direct {
        msg: OutgoingMessage,
        empty: Vec<DeviceAddress>,
    },
    /// Group: the sender key as it was before this message, the body and every header.
    Group {
        key_before: Secret,
        body: Vec<u8>,
        headers: Vec<(DeviceAddress, Vec<u8>)>,
    },
}

impl Payload {
    /// The body and one header per recipient, as the `send` frame carries them.
    pub(crate) fn wire(&self) -> (Vec<u8>, Vec<(DeviceAddress, Vec<u8>)>) {
        match self {
            Self::Direct { msg, empty } => {
                let mut headers: Vec<_> = msg
                    .headers
                    .iter()
                    .filter_map(|(a, h)| core_addr(*a).ok().map(|a| (a, h.clone())))
                    .collect();
                headers.extend(empty.iter().map(|d| (*d, Vec::new())));
                (msg.body.clone(), headers)
            }
            Self::Group { body, headers, .. } => (body.clone(), headers.clone()),
        }
    }

    pub(crate) fn encode(&self) -> Secret {
        let mut out = Secret::new(Vec::new());
        match self {
            Self::Direct { msg, empty } => {
                out.push(1);
                put_var(&mut out, &msg.pickle());
                put_u32(&mut out, empty.len());
                for d in empty {
                    put_addr(&mut out, *d);
                }
            }
            Self::Group {
                key_before,
                body,
                headers,
            } => {
                out.push(2);
                put_var(&mut out, key_before);
                put_var(&mut out, body);
                put_u32(&mut out, headers.len());
                for (d, h) in headers {
                    put_addr(&mut out, *d);
                    put_var(&mut out, h);
                }
            }
        }
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader(bytes);
        match r.u8()? {
            1 => {
                let msg = OutgoingMessage::from_pickle(r.var()?)?;
                let n = r.u32()?;
                let empty = (0..n).map(|_| r.addr()).collect::<Result<_>>()?;
                Ok(Self::Direct { msg, empty })
            }
            2 => {
                let key_before = Secret::new(r.var()?.to_vec());
                let body = r.var()?.to_vec();
                let n = r.u32()?;
                let headers = (0..n)
                    .map(|_| Ok((r.addr()?, r.var()?.to_vec())))
                    .collect::<Result<_>>()?;
                Ok(Self::Group {
                    key_before,
                    body,
                    headers,
                })
            }
            _ => Err(Error::corrupt("outbox payload")),
        }
    }
}

fn put_u32(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes());
}

fn put_var(out: &mut Vec<u8>, bytes: &[u8]) {
    put_u32(out, bytes.len());
    out.extend_from_slice(bytes);
}

fn put_addr(out: &mut Vec<u8>, d: DeviceAddress) {
    out.extend_from_slice(&d.user.get().to_be_bytes());
    out.extend_from_slice(&d.device.get().to_be_bytes());
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(Error::corrupt("outbox payload"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?.first().copied().unwrap_or(0))
    }
    fn u32(&mut self) -> Result<u32> {
        let b: [u8; 4] = self
            .take(4)?
            .try_into()
            .map_err(|_| Error::corrupt("outbox payload"))?;
        Ok(u32::from_be_bytes(b))
    }
    fn u64(&mut self) -> Result<u64> {
        let b: [u8; 8] = self
            .take(8)?
            .try_into()
            .map_err(|_| Error::corrupt("outbox payload"))?;
        Ok(u64::from_be_bytes(b))
    }
    fn var(&mut self) -> Result<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn addr(&mut self) -> Result<DeviceAddress> {
        Ok(DeviceAddress {
            user: UserId::new(self.u64()?)?,
            device: DeviceId::new(self.u64()?)?,
        })
    }
}

#[cfg(test)]
mod tests;
