//! End-to-end encryption glue: chat-crypto's values, loaded from and saved to the
//! [`ClientStore`], under one lock so that every load-change-commit is atomic.
//!
//! Invariants (docs/SECURITY.md, "the contract for chat-client"):
//! - a ciphertext is committed to the outbox in the same batch as the ratchet state that
//!   produced it, before it leaves the device; a retry resends those bytes;
//! - a decrypted message, the state that decrypted it and the advanced cursor are one batch;
//! - an identity change of a remote device is reported before its new session is accepted.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use chat_core::protocol::Deliver;
use chat_core::{ClientKey, ConversationId, DeviceAddress, DeviceId, Timestamp, UserId};
use chat_crypto::{
    Account, Decrypted, DeviceSessions, IdentityPublic, OneTimePrekey, OutgoingMessage,
    PrekeyBundle, SenderKey, SenderKeyReceiver, Session, SignedPrekey, encrypt_for_devices,
    sender_key_headers,
};

use crate::error::{Error, Result};
use crate::event::Message;
use crate::store::{ClientStore, OutboxEntry, Secret, StoredMessage, Write};
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
}

/// The device's crypto state: the account in memory, everything else in the store.
pub(crate) struct Crypto {
    me: DeviceAddress,
    store: Arc<dyn ClientStore>,
    account: Mutex<Account>,
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

fn group_id(conversation: ConversationId) -> [u8; 8] {
    conversation.get().to_be_bytes()
}

/// The directory's bundle as chat-crypto wants it.
pub(crate) fn crypto_bundle(b: &chat_core::PrekeyBundle) -> Result<PrekeyBundle> {
    let bad = || Error::Protocol("malformed key bundle".into());
    let identity: &[u8; 128] = b.identity.as_ref().try_into().map_err(|_| bad())?;
    let (public, binding) = identity.split_at(64);
    Ok(PrekeyBundle {
        identity: IdentityPublic::from_bytes(public.try_into().map_err(|_| bad())?),
        identity_signature: binding.try_into().map_err(|_| bad())?,
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
        .ok_or_else(|| Error::Protocol("account without a signed prekey".into()))?;
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
    pub(crate) fn new(me: DeviceAddress, store: Arc<dyn ClientStore>, account: Account) -> Self {
        Self {
            me,
            store,
            account: Mutex::new(account),
        }
    }

    /// Loads the account from the store.
    pub(crate) fn load(me: DeviceAddress, store: Arc<dyn ClientStore>) -> Result<Self> {
        let pickle = store.account()?.ok_or(Error::NotLoggedIn)?;
        let account = Account::from_pickle(&pickle)?;
        Ok(Self::new(me, store, account))
    }

    fn lock(&self) -> Result<MutexGuard<'_, Account>> {
        // A std mutex: held only around synchronous crypto and one store commit.
        self.account
            .lock()
            .map_err(|_| Error::Store("crypto state poisoned".into()))
    }

    /// Adds `count` one-time prekeys to the account and saves it; returns what to upload.
    /// Saved first: an uploaded key whose secret a crash lost would make first messages fail.
    pub(crate) fn new_one_time_keys(&self, count: usize) -> Result<Vec<OneTimePrekey>> {
        let mut account = self.lock()?;
        let keys = account.generate_one_time_prekeys(&mut rand::rng(), count);
        self.store.commit(vec![Write::Account(account.pickle())])?;
        Ok(keys)
    }

    /// Makes a new signed prekey and saves the account with the time; returns the keys to
    /// publish. The previous ones stay usable for first messages still in flight.
    pub(crate) fn rotate_signed_prekey(&self, now: Timestamp) -> Result<chat_core::DeviceKeys> {
        let mut account = self.lock()?;
        account.rotate_signed_prekey(&mut rand::rng());
        self.store.commit(vec![
            Write::Account(account.pickle()),
            Write::SignedPrekeyMadeAt(now),
        ])?;
        device_keys(&account)
    }

    fn sessions(&self, device: DeviceAddress) -> Result<DeviceSessions> {
        match self.store.sessions(device)? {
            Some(p) => Ok(DeviceSessions::from_pickle(&p)?),
            None => Ok(DeviceSessions::new()),
        }
    }

    /// The devices among `devices` with no session yet.
    pub(crate) fn without_session(&self, devices: &[DeviceAddress]) -> Result<Vec<DeviceAddress>> {
        let mut out = Vec::new();
        for d in devices {
            if self.sessions(*d)?.is_empty() {
                out.push(*d);
            }
        }
        Ok(out)
    }

    /// Starts sessions from fetched bundles with the `wanted` devices that still have none.
    pub(crate) fn add_bundles(
        &self,
        bundles: &[chat_core::PrekeyBundle],
        wanted: &[DeviceAddress],
    ) -> Result<()> {
        let account = self.lock()?;
        let mut writes = Vec::new();
        for b in bundles.iter().filter(|b| wanted.contains(&b.device)) {
            let mut sessions = self.sessions(b.device)?;
            if !sessions.is_empty() {
                continue;
            }
            let bundle = crypto_bundle(b)?;
            let session = Session::initiate(
                &mut rand::rng(),
                &account,
                addr(self.me),
                addr(b.device),
                &bundle,
            )?;
            sessions.add(session)?;
            writes.push(Write::Sessions(b.device, sessions.pickle()));
        }
        self.store.commit(writes)
    }

    /// Encrypts a one-to-one message for `devices` and commits it to the outbox with the
    /// advanced sessions.
    pub(crate) fn encrypt_direct(
        &self,
        client_key: ClientKey,
        conversation: ConversationId,
        devices: &[DeviceAddress],
        plaintext: Vec<u8>,
    ) -> Result<OutboxEntry> {
        let _account = self.lock()?;
        let mut loaded = Vec::new();
        let mut empty = Vec::new();
        for d in devices {
            let s = self.sessions(*d)?;
            if s.is_empty() {
                empty.push(*d);
            } else {
                loaded.push((*d, s));
            }
        }
        let mut msg = encrypt_for_devices(
            &mut rand::rng(),
            &plaintext,
            loaded.iter_mut().filter_map(|(_, s)| s.active()),
        )?;
        take_failed(&mut msg, &mut empty);
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
        self.store.commit(writes)?;
        Ok(entry)
    }

    /// Encrypts a group message with this device's sender key, handing the key to devices
    /// that lack it and rotating it first if a device that holds it is no longer a recipient.
    pub(crate) fn encrypt_group(
        &self,
        client_key: ClientKey,
        conversation: ConversationId,
        devices: &[DeviceAddress],
        plaintext: Vec<u8>,
    ) -> Result<OutboxEntry> {
        let _account = self.lock()?;
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
        let body = key.encrypt(&mut rng, &plaintext)?;
        for d in devices {
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
        self.store.commit(writes)?;
        Ok(entry)
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
    /// (the body stays the same), none for `extra` ones. Commits the entry and the sessions.
    pub(crate) fn repair(
        &self,
        client_key: ClientKey,
        missing: &[DeviceAddress],
        extra: &[DeviceAddress],
    ) -> Result<()> {
        let _account = self.lock()?;
        let Some(mut entry) = self
            .store
            .outbox()?
            .into_iter()
            .find(|e| e.client_key == client_key)
        else {
            return Ok(());
        };
        let mut writes = Vec::new();
        let payload = match Payload::decode(&entry.payload)? {
            Payload::Direct { mut msg, mut empty } => {
                let gone: Vec<_> = extra.iter().map(|d| addr(*d)).collect();
                msg.remove_devices(&gone);
                empty.retain(|d| !extra.contains(d) && !missing.contains(d));
                let mut loaded = Vec::new();
                for d in missing {
                    let s = self.sessions(*d)?;
                    if s.is_empty() {
                        empty.push(*d);
                    } else {
                        loaded.push((*d, s));
                    }
                }
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
            } => {
                let mut headers: BTreeMap<_, _> = headers
                    .into_iter()
                    .filter(|(d, _)| !extra.contains(d))
                    .collect();
                // The key as it was before this message, so new devices can open it.
                let key = SenderKey::from_pickle(&key_before)?;
                let handed = self.distribute(&key, missing, &mut headers, &mut writes)?;
                for d in missing {
                    headers.entry(*d).or_insert_with(Vec::new);
                }
                if let Some((current, mut holders)) = self.store.sender_key(entry.conversation)? {
                    holders.retain(|h| !extra.contains(h));
                    let current_key = SenderKey::from_pickle(&current)?;
                    if current_key.key_id() == key.key_id() {
                        holders.extend(handed);
                    }
                    writes.push(Write::SenderKey {
                        conversation: entry.conversation,
                        pickle: current,
                        distributed: holders,
                    });
                }
                Payload::Group {
                    key_before,
                    body,
                    headers: headers.into_iter().collect(),
                }
            }
        };
        entry.payload = payload.encode();
        writes.push(Write::OutboxPut(entry));
        self.store.commit(writes)
    }

    /// Opens one delivery and commits the result with the cursor at `deliver.pos`. Returns the
    /// opened message and the devices whose identity changed (already accepted).
    pub(crate) fn open(&self, deliver: &Deliver) -> Result<(Opened, Vec<DeviceAddress>)> {
        let mut account = self.lock()?;
        let mut writes = vec![Write::Cursor(deliver.pos)];
        // Checked under the lock that history recovery takes too: a message is decrypted
        // once (a second decryption would fail: its key is gone). Another message under the
        // same ID is not this one: it is replaced (see `thread::derive`).
        let stored = self.store.message(deliver.conversation, deliver.id)?;
        let known = stored
            .as_ref()
            .is_some_and(|m| m.sender == deliver.sender && m.client_key == deliver.client_key);
        if known {
            self.store.commit(writes)?;
            return Ok((Opened::Known, Vec::new()));
        }
        let otks_before = account.one_time_prekey_count();
        let mut changed = Vec::new();
        let opened = match self.decrypt(&mut account, deliver, &mut writes, &mut changed) {
            Ok(plaintext) => {
                let m = StoredMessage {
                    conversation: deliver.conversation,
                    id: deliver.id,
                    sender: deliver.sender,
                    client_key: deliver.client_key,
                    sent_at: deliver.sent_at,
                    plaintext,
                };
                let mut derived = match thread::derive(self.store.as_ref(), &m, stored.as_ref()) {
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
                writes.truncate(1);
                Opened::Failed(e)
            }
        };
        if account.one_time_prekey_count() != otks_before {
            writes.push(Write::Account(account.pickle()));
        }
        if let Err(e) = self.store.commit(writes) {
            // Keep memory equal to the store: reload the account as committed.
            if let Some(p) = self.store.account()? {
                *account = Account::from_pickle(&p)?;
            }
            return Err(e);
        }
        Ok((opened, changed))
    }

    /// Runs `f` under the lock every load-change-commit of messages takes (decrypting,
    /// recovering, storing an own message), so they never interleave.
    pub(crate) fn serialized<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let _account = self.lock()?;
        f()
    }

    /// Decrypts a message read from history (no per-device header: only group messages under
    /// a sender key this device holds can be opened) and stores it. `Ok(None)`: it was stored
    /// already.
    pub(crate) fn open_history(
        &self,
        envelope: StoredMessage,
        body: &[u8],
    ) -> Result<Option<(Message, Derived)>, Error> {
        let _account = self.lock()?;
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
        let plaintext = receiver.decrypt(body)?;
        let m = StoredMessage {
            plaintext,
            ..envelope
        };
        // Nothing is stored under this ID (checked above).
        let mut derived = thread::derive(self.store.as_ref(), &m, None)?;
        let mut writes = vec![Write::Receiver {
            conversation: m.conversation,
            sender: m.sender,
            pickle: receiver.pickle(),
        }];
        let message = Message::from_stored(&m);
        writes.extend(thread::store_writes(m, &mut derived));
        self.store.commit(writes)?;
        Ok(Some((message, derived)))
    }

    fn decrypt(
        &self,
        account: &mut Account,
        d: &Deliver,
        writes: &mut Vec<Write>,
        changed: &mut Vec<DeviceAddress>,
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
            writes.push(Write::Receiver {
                conversation: d.conversation,
                sender: d.sender,
                pickle: receiver.pickle(),
            });
            return Ok(plaintext);
        }
        let mut sessions = match self.store.sessions(d.sender).map_err(store_err)? {
            Some(p) => DeviceSessions::from_pickle(&p)?,
            None => DeviceSessions::new(),
        };
        let (me, them) = (addr(self.me), addr(d.sender));
        let decrypted = match sessions.decrypt(account, me, them, &d.header, &d.body) {
            Err(chat_crypto::Error::IdentityChanged) => {
                // Reported to the app (Event::IdentityChanged); trust the new identity from
                // now on, as Signal does after showing its safety-number notice.
                changed.push(d.sender);
                sessions.clear();
                sessions.decrypt(account, me, them, &d.header, &d.body)?
            }
            other => other?,
        };
        writes.push(Write::Sessions(d.sender, sessions.pickle()));
        match decrypted {
            Decrypted::Message(plaintext) => Ok(plaintext),
            Decrypted::SenderKey(dist) => {
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
                writes.push(Write::Receiver {
                    conversation: d.conversation,
                    sender: d.sender,
                    pickle: receiver.pickle(),
                });
                Ok(plaintext)
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
            _ => Err(Error::Store("unknown outbox payload".into())),
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
            return Err(Error::Store("truncated outbox payload".into()));
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
            .map_err(|_| Error::Store("payload".into()))?;
        Ok(u32::from_be_bytes(b))
    }
    fn u64(&mut self) -> Result<u64> {
        let b: [u8; 8] = self
            .take(8)?
            .try_into()
            .map_err(|_| Error::Store("payload".into()))?;
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
mod tests {
    use super::*;

    fn dev(u: u64, d: u64) -> DeviceAddress {
        DeviceAddress {
            user: UserId::new(u).unwrap(),
            device: DeviceId::new(d).unwrap(),
        }
    }

    #[test]
    fn payloads_round_trip() {
        let mut rng = rand::rng();
        let msg = encrypt_for_devices(&mut rng, b"hi", std::iter::empty()).unwrap();
        let direct = Payload::Direct {
            msg,
            empty: vec![dev(2, 3)],
        };
        let back = Payload::decode(&direct.encode()).unwrap();
        assert_eq!(back.wire(), direct.wire());
        let group = Payload::Group {
            key_before: Secret::new(vec![1, 2, 3]),
            body: vec![9; 40],
            headers: vec![(dev(2, 3), vec![]), (dev(4, 5), vec![7; 10])],
        };
        let back = Payload::decode(&group.encode()).unwrap();
        assert_eq!(back.wire(), group.wire());
        assert!(Payload::decode(&[2, 0, 0]).is_err());
        assert!(Payload::decode(&[]).is_err());
    }
}
