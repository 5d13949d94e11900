//! One pairwise session: X3DH to start it, then the Double Ratchet.
//!
//! Follows Signal's X3DH and Double Ratchet specifications, with two local choices:
//! - the sending half of a DH ratchet step is taken lazily, at the next encryption, so
//!   decryption needs no randomness (the derivations are the specification's, in its order);
//! - every message is sealed with XChaCha20-Poly1305 under a random 24-byte nonce, so even a
//!   state restored from an old backup can never reuse a (key, nonce) pair.
//!
//! Invariants: a failed decryption changes nothing (the work is done on local values and
//! committed only after the AEAD tag verified); skipped message keys are stored only for a
//! message that authenticated; every loop is bounded by [`MAX_FORWARD_JUMP`]; stored state is
//! bounded by [`MAX_SKIPPED_PER_CHAIN`], [`MAX_SKIPPED_TOTAL`] and [`MAX_RECEIVER_CHAINS`];
//! and by age: a skipped key, or a receiving chain other than the newest, is dropped once the
//! session has decrypted [`MAX_SKIPPED_KEY_AGE`] later messages (so a key kept for a lost
//! message does not outlive the conversation's flow, which bounds what a stolen device's state
//! can still open).

use std::collections::BTreeMap;
use std::fmt;

use rand_core::CryptoRng;
use x25519_dalek::StaticSecret;
use zeroize::Zeroizing;

use crate::codec::{Reader, Writer};
use crate::identity::{Account, IdentityPublic, PrekeyBundle, hex8, len_u32};
use crate::primitives::{self, Key32, LABELS, NONCE_LEN, ad_context};
use crate::{Error, MAX_DEVICE_HEADER_BYTES};

/// The most message keys one message may make the receiver skip within a chain.
pub const MAX_FORWARD_JUMP: u32 = 2_000;
/// The most skipped message keys stored for one receiving chain (oldest dropped first).
pub const MAX_SKIPPED_PER_CHAIN: usize = 2_000;
/// The most skipped message keys stored per session, over all its receiving chains.
pub const MAX_SKIPPED_TOTAL: usize = 5_000;
/// Receiving chains kept per session (the current one and the previous four).
pub const MAX_RECEIVER_CHAINS: usize = 5;
/// How many later messages a skipped message key, or a receiving chain other than the newest,
/// survives: once the session has decrypted this many messages after the key was skipped (or
/// after the chain was last used), it is dropped and a message that needed it is refused with
/// [`Error::DuplicateMessage`] (or fails to decrypt).
pub const MAX_SKIPPED_KEY_AGE: u64 = 1_000;

const SESSION_TAG: u8 = 0xA2;
/// 2: the session also keeps whether it is confirmed, how it started, a count of decrypted
/// messages and the age stamps of skipped keys and chains. Version 1 pickles still load.
const SESSION_VERSION: u8 = 2;
pub(crate) const MESSAGE_VERSION: u8 = 1;
const KIND_NORMAL: u8 = 1;
const KIND_PREKEY: u8 = 2;
/// version, kind, ratchet key, previous counter, counter.
const RATCHET_HEADER_LEN: usize = 2 + 32 + 4 + 4;

/// A device, as this crate names it: the client maps its own ids onto this.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct DeviceAddress {
    /// The user id.
    pub user: u64,
    /// The device id within the user.
    pub device: u64,
}

impl DeviceAddress {
    /// A device address.
    pub const fn new(user: u64, device: u64) -> Self {
        Self { user, device }
    }

    pub(crate) fn to_bytes(self) -> [u8; 16] {
        let mut out = [0u8; 16];
        let (a, b) = out.split_at_mut(8);
        a.copy_from_slice(&self.user.to_be_bytes());
        b.copy_from_slice(&self.device.to_be_bytes());
        out
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, Error> {
        Ok(Self {
            user: r.u64()?,
            device: r.u64()?,
        })
    }
}

/// True when `header` is a prekey message, i.e. one that can start a session with
/// [`Session::accept`].
pub fn is_prekey_message(header: &[u8]) -> bool {
    header.get(..2) == Some(&[MESSAGE_VERSION, KIND_PREKEY][..])
}

/// The identity a prekey message claims (unverified: `Session::accept` checks it). A client
/// uses it to notice that a device presents another identity than the trusted one before it
/// decrypts.
pub fn prekey_identity(header: &[u8]) -> Result<IdentityPublic, Error> {
    Ok(PrekeyMessage::parse(header)?.identity)
}

pub(crate) struct Chain {
    pub(crate) key: Key32,
    pub(crate) index: u32,
}

impl Chain {
    pub(crate) fn duplicate(&self) -> Self {
        Self {
            key: self.key.clone(),
            index: self.index,
        }
    }
}

struct ReceivingChain {
    ratchet: [u8; 32],
    chain: Chain,
    /// Skipped keys with the session's `received` count when each was skipped.
    skipped: BTreeMap<u32, (Key32, u64)>,
    /// The session's `received` count when this chain last decrypted a message.
    used_at: u64,
}

struct PendingPrekey {
    signed_prekey_id: u32,
    one_time_prekey_id: Option<u32>,
    identity_signature: [u8; 64],
}

/// A Double Ratchet session with one remote device.
///
/// A plain value: the caller persists it with [`Session::pickle`] after every call that takes
/// `&mut self`, and *before* the ciphertext it produced leaves the device; a retried send must
/// reuse the saved ciphertext, never encrypt again. Not `Clone`: two copies of a session would
/// be a rollback.
pub struct Session {
    our_address: DeviceAddress,
    their_address: DeviceAddress,
    our_identity: IdentityPublic,
    their_identity: IdentityPublic,
    /// The initiator's X3DH ephemeral public key: names the session.
    base_key: [u8; 32],
    root_key: Key32,
    our_ratchet: StaticSecret,
    /// Cached public half of `our_ratchet` (a base-point multiplication saved per message).
    our_ratchet_public: [u8; 32],
    their_ratchet: [u8; 32],
    /// `None` when a DH ratchet step is due before the next encryption.
    sending: Option<Chain>,
    previous_counter: u32,
    /// Most recent first.
    receiving: Vec<ReceivingChain>,
    /// The initiator's X3DH fields, sent with every message until the first reply arrives.
    pending_prekey: Option<PendingPrekey>,
    /// The peer has shown that it received a message of ours on this session: for the
    /// initiator, any message from the peer; for the responder, a message on a second
    /// receiving chain (the peer saw our ratchet key). A replayed first message can never make
    /// a session confirmed.
    confirmed: bool,
    /// Started by accepting a first message that used no one-time prekey: such a message can
    /// be replayed, so the session never displaces a confirmed one until it is confirmed
    /// itself (see `DeviceSessions`).
    without_one_time_prekey: bool,
    /// Messages decrypted on this session: the clock that skipped keys and old chains age by.
    received: u64,
}

/// A parsed pairwise message (normal or the inner part of a prekey message).
struct RatchetMessage<'a> {
    /// Version, kind, ratchet key, counters: authenticated as associated data.
    header: &'a [u8],
    ratchet: [u8; 32],
    previous_counter: u32,
    counter: u32,
    nonce: [u8; NONCE_LEN],
    ciphertext: &'a [u8],
}

impl<'a> RatchetMessage<'a> {
    fn parse(bytes: &'a [u8]) -> Result<Self, Error> {
        let mut r = Reader::new(bytes, "ratchet message");
        let header = bytes
            .get(..RATCHET_HEADER_LEN)
            .ok_or(Error::Malformed("ratchet message"))?;
        let version = r.u8()?;
        if version != MESSAGE_VERSION {
            return Err(Error::UnsupportedVersion(version));
        }
        if r.u8()? != KIND_NORMAL {
            return Err(Error::Malformed("ratchet message"));
        }
        Ok(Self {
            header,
            ratchet: r.array()?,
            previous_counter: r.u32()?,
            counter: r.u32()?,
            nonce: r.array()?,
            ciphertext: r.rest(),
        })
    }
}

struct PrekeyMessage<'a> {
    identity: IdentityPublic,
    identity_signature: [u8; 64],
    base_key: [u8; 32],
    signed_prekey_id: u32,
    one_time_prekey_id: Option<u32>,
    inner: &'a [u8],
}

impl<'a> PrekeyMessage<'a> {
    fn parse(bytes: &'a [u8]) -> Result<Self, Error> {
        let mut r = Reader::new(bytes, "prekey message");
        let version = r.u8()?;
        if version != MESSAGE_VERSION {
            return Err(Error::UnsupportedVersion(version));
        }
        if r.u8()? != KIND_PREKEY {
            return Err(Error::Malformed("prekey message"));
        }
        Ok(Self {
            identity: IdentityPublic::read(&mut r)?,
            identity_signature: r.array()?,
            base_key: r.array()?,
            signed_prekey_id: r.u32()?,
            one_time_prekey_id: if r.bool()? { Some(r.u32()?) } else { None },
            inner: r.rest(),
        })
    }
}

/// What a successful decryption changes, applied only after the message authenticated.
enum Commit {
    /// Use (and forget) a stored skipped key.
    UseSkipped { chain: usize, counter: u32 },
    /// Advance an existing receiving chain.
    Advance {
        chain: usize,
        next: Chain,
        skipped: Vec<(u32, Key32)>,
    },
    /// A DH ratchet step: finish the current chain up to the previous counter, then start a
    /// new receiving chain.
    Ratchet {
        finished: Option<(Chain, Vec<(u32, Key32)>)>,
        root_key: Key32,
        chain: ReceivingChain,
    },
}

impl Session {
    /// Starts a session from a fetched, verified bundle (X3DH as the initiator). Messages sent
    /// on it are prekey messages until the first reply arrives.
    pub fn initiate<R: CryptoRng + ?Sized>(
        rng: &mut R,
        account: &Account,
        our_address: DeviceAddress,
        their_address: DeviceAddress,
        bundle: &PrekeyBundle,
    ) -> Result<Self, Error> {
        bundle.verify()?;
        let ours = account.identity();
        let spk = bundle.signed_prekey.key;
        let ephemeral = primitives::x25519_secret(rng);
        let base_key = primitives::x25519_public(&ephemeral);
        let dh1 = primitives::dh(ours.dh_secret(), &spk)?;
        let dh2 = primitives::dh(&ephemeral, &bundle.identity.dh)?;
        let dh3 = primitives::dh(&ephemeral, &spk)?;
        let dh4 = match &bundle.one_time_prekey {
            Some(otk) => Some(primitives::dh(&ephemeral, &otk.key)?),
            None => None,
        };
        let sk = x3dh_secret(&dh1, &dh2, &dh3, dh4.as_ref())?;

        let our_ratchet = primitives::x25519_secret(rng);
        let our_ratchet_public = primitives::x25519_public(&our_ratchet);
        let (root_key, chain_key) =
            primitives::root_step(&LABELS, &sk, &*primitives::dh(&our_ratchet, &spk)?)?;
        Ok(Self {
            our_address,
            their_address,
            our_identity: ours.public(),
            their_identity: bundle.identity,
            base_key,
            root_key,
            our_ratchet,
            our_ratchet_public,
            their_ratchet: spk,
            sending: Some(Chain {
                key: chain_key,
                index: 0,
            }),
            previous_counter: 0,
            receiving: Vec::new(),
            pending_prekey: Some(PendingPrekey {
                signed_prekey_id: bundle.signed_prekey.id,
                one_time_prekey_id: bundle.one_time_prekey.map(|k| k.id),
                identity_signature: ours.binding_signature(),
            }),
            confirmed: false,
            without_one_time_prekey: false,
            received: 0,
        })
    }

    /// Responder side of X3DH: builds the session a prekey message starts and decrypts its
    /// payload with it, handing the payload to `check` before anything is committed. The
    /// one-time prekey is removed from `account` only when everything succeeded. A first
    /// message without a one-time prekey is checked against, and recorded in, the account's
    /// replay cache ([`crate::MAX_REPLAY_CACHE`] entries); one seen before is refused with
    /// [`Error::ReplayedPrekeyMessage`].
    pub(crate) fn accept_with<T>(
        account: &mut Account,
        our_address: DeviceAddress,
        their_address: DeviceAddress,
        message: &[u8],
        check: impl FnOnce(&[u8]) -> Result<T, Error>,
    ) -> Result<(Self, T), Error> {
        let pm = PrekeyMessage::parse(message)?;
        pm.identity.verify_binding(&pm.identity_signature)?;
        if pm.one_time_prekey_id.is_none()
            && account.first_message_seen(pm.signed_prekey_id, &pm.base_key)
        {
            return Err(Error::ReplayedPrekeyMessage);
        }
        let (spk, spk_public) = account.signed_prekey_secret(pm.signed_prekey_id)?;
        let ours = account.identity();
        let dh1 = primitives::dh(spk, &pm.identity.dh)?;
        let dh2 = primitives::dh(ours.dh_secret(), &pm.base_key)?;
        let dh3 = primitives::dh(spk, &pm.base_key)?;
        let dh4 = match pm.one_time_prekey_id {
            Some(id) => Some(primitives::dh(
                account.one_time_prekey_secret(id)?,
                &pm.base_key,
            )?),
            None => None,
        };
        let sk = x3dh_secret(&dh1, &dh2, &dh3, dh4.as_ref())?;
        let mut session = Self {
            our_address,
            their_address,
            our_identity: ours.public(),
            their_identity: pm.identity,
            base_key: pm.base_key,
            root_key: sk,
            our_ratchet: spk.clone(),
            our_ratchet_public: spk_public,
            // Set by the first ratchet step below, before anything can be sent.
            their_ratchet: [0; 32],
            sending: None,
            previous_counter: 0,
            receiving: Vec::new(),
            pending_prekey: None,
            confirmed: false,
            without_one_time_prekey: pm.one_time_prekey_id.is_none(),
            received: 0,
        };
        let prefix = message
            .get(..message.len().saturating_sub(pm.inner.len()))
            .unwrap_or_default();
        let inner = RatchetMessage::parse(pm.inner)?;
        let (commit, plaintext) = session.plan(prefix, &inner)?;
        let out = check(&plaintext)?;
        session.apply(commit, inner.ratchet);
        match pm.one_time_prekey_id {
            Some(id) => account.remove_one_time_prekey(id),
            None => account.record_first_message(pm.signed_prekey_id, pm.base_key),
        }
        Ok((session, out))
    }

    /// Decrypts a normal or prekey message of this session, hands the payload to `check`, and
    /// commits the new state only if both succeed.
    pub(crate) fn decrypt_with<T>(
        &mut self,
        message: &[u8],
        check: impl FnOnce(&[u8]) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let inner = if is_prekey_message(message) {
            let pm = PrekeyMessage::parse(message)?;
            if pm.base_key != self.base_key || pm.identity != self.their_identity {
                return Err(Error::SessionMismatch);
            }
            pm.inner
        } else {
            message
        };
        let prefix = message
            .get(..message.len().saturating_sub(inner.len()))
            .unwrap_or_default();
        let msg = RatchetMessage::parse(inner)?;
        let (commit, plaintext) = self.plan(prefix, &msg)?;
        let out = check(&plaintext)?;
        self.apply(commit, msg.ratchet);
        Ok(out)
    }

    /// Encrypts a payload into one device header (a normal or prekey message).
    pub(crate) fn encrypt_payload<R: CryptoRng + ?Sized>(
        &mut self,
        rng: &mut R,
        payload: &[u8],
    ) -> Result<Vec<u8>, Error> {
        // Everything is computed on locals first and committed at the end.
        let step = match &self.sending {
            Some(_) => None,
            None => {
                let ratchet = primitives::x25519_secret(rng);
                let dh = primitives::dh(&ratchet, &self.their_ratchet)?;
                let (root, chain) = primitives::root_step(&LABELS, &self.root_key, &dh)?;
                let public = primitives::x25519_public(&ratchet);
                Some((ratchet, public, root, chain))
            }
        };
        let (ratchet_public, chain) = match (&step, &self.sending) {
            (Some((_, public, _, key)), _) => (
                *public,
                Chain {
                    key: key.clone(),
                    index: 0,
                },
            ),
            (None, Some(chain)) => (self.our_ratchet_public, chain.duplicate()),
            (None, None) => return Err(Error::ChainExhausted),
        };
        let counter = chain.index;
        let next_index = counter.checked_add(1).ok_or(Error::ChainExhausted)?;
        let (seed, next_key) = primitives::chain_step(&chain.key);
        let mut key = Zeroizing::new([0u8; 32]);
        primitives::message_key(LABELS.message_key, &seed, &mut *key)?;

        let prefix = match &self.pending_prekey {
            Some(p) => {
                let mut w = Writer::with_capacity(180);
                w.u8(MESSAGE_VERSION).u8(KIND_PREKEY);
                self.our_identity.write(&mut w);
                w.raw(&p.identity_signature)
                    .raw(&self.base_key)
                    .u32(p.signed_prekey_id);
                match p.one_time_prekey_id {
                    Some(id) => w.u8(1).u32(id),
                    None => w.u8(0),
                };
                w.into_vec()
            }
            None => Vec::new(),
        };
        let mut w = Writer::with_capacity(RATCHET_HEADER_LEN);
        w.u8(MESSAGE_VERSION).u8(KIND_NORMAL).raw(&ratchet_public);
        w.u32(self.previous_counter).u32(counter);
        let header = w.into_vec();
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        let ad = self.ad(true, &prefix, &header);
        let ciphertext = primitives::seal(&key, &nonce, &ad, payload)?;
        let mut out = prefix;
        out.reserve(header.len() + NONCE_LEN + ciphertext.len());
        out.extend_from_slice(&header);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        if out.len() > MAX_DEVICE_HEADER_BYTES {
            return Err(Error::TooLarge("device header"));
        }

        if let Some((ratchet, public, root, _)) = step {
            self.our_ratchet = ratchet;
            self.our_ratchet_public = public;
            self.root_key = root;
        }
        self.sending = Some(Chain {
            key: next_key,
            index: next_index,
        });
        Ok(out)
    }

    /// The remote device.
    pub fn their_address(&self) -> DeviceAddress {
        self.their_address
    }

    /// This device.
    pub fn our_address(&self) -> DeviceAddress {
        self.our_address
    }

    /// The remote device's identity as it was when the session started. Compare it with the
    /// identity you know for that device: a change must be surfaced, never accepted silently.
    pub fn their_identity(&self) -> IdentityPublic {
        self.their_identity
    }

    /// The initiator's X3DH base key: the same value on both ends of one session.
    pub fn id(&self) -> [u8; 32] {
        self.base_key
    }

    /// True while this (initiator) session has not yet heard back; its messages are prekey
    /// messages until then.
    pub fn is_pending(&self) -> bool {
        self.pending_prekey.is_some()
    }

    /// Skipped message keys currently stored (bounded by [`MAX_SKIPPED_TOTAL`]).
    pub fn skipped_key_count(&self) -> usize {
        self.receiving.iter().map(|c| c.skipped.len()).sum()
    }

    /// Receiving chains currently kept (bounded by [`MAX_RECEIVER_CHAINS`]).
    pub fn receiving_chain_count(&self) -> usize {
        self.receiving.len()
    }

    /// True once the peer has shown it received a message of ours on this session (it
    /// answered on it); a replayed first message never makes a session confirmed.
    pub fn is_confirmed(&self) -> bool {
        self.confirmed
    }

    /// True when this session was started by accepting a first message that used no
    /// one-time prekey (such a message can be replayed to start it).
    pub fn started_without_one_time_prekey(&self) -> bool {
        self.without_one_time_prekey
    }

    /// Associated data: both devices' identities and addresses (sender first), the prekey
    /// prefix (empty for normal messages) and the ratchet header.
    fn ad(&self, we_send: bool, prefix: &[u8], header: &[u8]) -> Vec<u8> {
        let (s_id, s_addr, r_id, r_addr) = if we_send {
            (
                &self.our_identity,
                self.our_address,
                &self.their_identity,
                self.their_address,
            )
        } else {
            (
                &self.their_identity,
                self.their_address,
                &self.our_identity,
                self.our_address,
            )
        };
        primitives::labelled(
            ad_context::PAIRWISE,
            &[
                &s_id.to_bytes(),
                &s_addr.to_bytes(),
                &r_id.to_bytes(),
                &r_addr.to_bytes(),
                prefix,
                header,
            ],
        )
    }

    /// Works out the message key for `msg` and decrypts, without changing `self`.
    fn plan(
        &self,
        prefix: &[u8],
        msg: &RatchetMessage<'_>,
    ) -> Result<(Commit, Zeroizing<Vec<u8>>), Error> {
        let found = self
            .receiving
            .iter()
            .enumerate()
            .find(|(_, c)| c.ratchet == msg.ratchet);
        let (commit, seed) = match found {
            Some((i, rc)) if msg.counter < rc.chain.index => {
                let (seed, _) = rc
                    .skipped
                    .get(&msg.counter)
                    .ok_or(Error::DuplicateMessage)?;
                (
                    Commit::UseSkipped {
                        chain: i,
                        counter: msg.counter,
                    },
                    seed.clone(),
                )
            }
            Some((i, rc)) => {
                let (next, skipped, seed) = derive_to(&rc.chain, msg.counter)?;
                (
                    Commit::Advance {
                        chain: i,
                        next,
                        skipped,
                    },
                    seed,
                )
            }
            None => {
                // A new ratchet key: finish the current receiving chain up to the sender's
                // previous counter, then step the root.
                // The old chain is advanced at most the cap; keys beyond it stay derivable
                // from the chain, so a long loss never wedges the session.
                let finished = match self.receiving.first() {
                    Some(rc) if msg.previous_counter > rc.chain.index => {
                        let cap = rc.chain.index.saturating_add(MAX_FORWARD_JUMP);
                        Some(skip_to(&rc.chain, msg.previous_counter.min(cap))?)
                    }
                    _ => None,
                };
                let dh = primitives::dh(&self.our_ratchet, &msg.ratchet)?;
                let (root_key, chain_key) = primitives::root_step(&LABELS, &self.root_key, &dh)?;
                let start = Chain {
                    key: chain_key,
                    index: 0,
                };
                let (next, skipped, seed) = derive_to(&start, msg.counter)?;
                let stamp = self.received.saturating_add(1);
                let chain = ReceivingChain {
                    ratchet: msg.ratchet,
                    chain: next,
                    skipped: skipped.into_iter().map(|(n, k)| (n, (k, stamp))).collect(),
                    used_at: stamp,
                };
                (
                    Commit::Ratchet {
                        finished,
                        root_key,
                        chain,
                    },
                    seed,
                )
            }
        };
        let mut key = Zeroizing::new([0u8; 32]);
        primitives::message_key(LABELS.message_key, &seed, &mut *key)?;
        let ad = self.ad(false, prefix, msg.header);
        let plaintext = Zeroizing::new(primitives::open(&key, &msg.nonce, &ad, msg.ciphertext)?);
        Ok((commit, plaintext))
    }

    fn apply(&mut self, commit: Commit, ratchet: [u8; 32]) {
        self.received = self.received.saturating_add(1);
        let now = self.received;
        match commit {
            Commit::UseSkipped { chain, counter } => {
                if let Some(rc) = self.receiving.get_mut(chain) {
                    rc.skipped.remove(&counter);
                    rc.used_at = now;
                }
            }
            Commit::Advance {
                chain,
                next,
                skipped,
            } => {
                if let Some(rc) = self.receiving.get_mut(chain) {
                    rc.chain = next;
                    rc.skipped
                        .extend(skipped.into_iter().map(|(n, k)| (n, (k, now))));
                    rc.used_at = now;
                }
            }
            Commit::Ratchet {
                finished,
                root_key,
                chain,
            } => {
                // A new chain after the first shows the peer saw our ratchet key, i.e. got a
                // message of ours; for the initiator any message does (it answers ours).
                if !self.receiving.is_empty() || self.pending_prekey.is_some() {
                    self.confirmed = true;
                }
                if let (Some((next, skipped)), Some(rc)) = (finished, self.receiving.first_mut()) {
                    rc.chain = next;
                    rc.skipped
                        .extend(skipped.into_iter().map(|(n, k)| (n, (k, now))));
                }
                self.root_key = root_key;
                self.receiving.insert(0, chain);
                self.receiving.truncate(MAX_RECEIVER_CHAINS);
                self.their_ratchet = ratchet;
                if let Some(sending) = self.sending.take() {
                    self.previous_counter = sending.index;
                }
            }
        }
        self.enforce_caps();
        // Any authenticated message from the peer proves it has the session.
        self.pending_prekey = None;
    }

    fn enforce_caps(&mut self) {
        // Age: old chains (never the newest) and skipped keys that MAX_SKIPPED_KEY_AGE later
        // messages went past are dropped.
        let now = self.received;
        let expired = |at: u64| now.saturating_sub(at) >= MAX_SKIPPED_KEY_AGE;
        let mut index = 0;
        self.receiving.retain(|rc| {
            index += 1;
            index == 1 || !expired(rc.used_at)
        });
        for rc in &mut self.receiving {
            rc.skipped.retain(|_, (_, at)| !expired(*at));
        }
        for rc in &mut self.receiving {
            while rc.skipped.len() > MAX_SKIPPED_PER_CHAIN {
                rc.skipped.pop_first();
            }
        }
        let mut total = self.skipped_key_count();
        // Drop from the oldest chains first.
        for rc in self.receiving.iter_mut().rev() {
            while total > MAX_SKIPPED_TOTAL && rc.skipped.pop_first().is_some() {
                total -= 1;
            }
        }
    }

    /// Versioned secret bytes; keep them encrypted at rest.
    pub fn pickle(&self) -> Zeroizing<Vec<u8>> {
        let mut w = Writer::with_capacity(512 + 36 * self.skipped_key_count());
        w.u8(SESSION_TAG).u8(SESSION_VERSION);
        for a in [self.our_address, self.their_address] {
            w.u64(a.user).u64(a.device);
        }
        self.our_identity.write(&mut w);
        self.their_identity.write(&mut w);
        w.raw(&self.base_key)
            .raw(&*self.root_key)
            .raw(self.our_ratchet.as_bytes());
        w.raw(&self.their_ratchet);
        match &self.sending {
            Some(c) => w.u8(1).raw(&*c.key).u32(c.index),
            None => w.u8(0),
        };
        w.u32(self.previous_counter);
        w.u32(len_u32(self.receiving.len()));
        for rc in &self.receiving {
            w.raw(&rc.ratchet).raw(&*rc.chain.key).u32(rc.chain.index);
            w.u64(rc.used_at);
            w.u32(len_u32(rc.skipped.len()));
            for (n, (k, at)) in &rc.skipped {
                w.u32(*n).raw(&**k).u64(*at);
            }
        }
        match &self.pending_prekey {
            Some(p) => {
                w.u8(1).u32(p.signed_prekey_id);
                match p.one_time_prekey_id {
                    Some(id) => w.u8(1).u32(id),
                    None => w.u8(0),
                };
                w.raw(&p.identity_signature)
            }
            None => w.u8(0),
        };
        w.u8(u8::from(self.confirmed))
            .u8(u8::from(self.without_one_time_prekey))
            .u64(self.received);
        w.into_secret()
    }

    /// Restores [`Session::pickle`]; unknown versions and out-of-bounds state are refused.
    pub fn from_pickle(bytes: &[u8]) -> Result<Self, Error> {
        let bad = || Error::Malformed("session pickle");
        let mut r = Reader::new(bytes, "session pickle");
        if r.u8()? != SESSION_TAG {
            return Err(bad());
        }
        let version = r.u8()?;
        if version != 1 && version != SESSION_VERSION {
            return Err(Error::UnsupportedVersion(version));
        }
        let v2 = version == SESSION_VERSION;
        let our_address = DeviceAddress::read(&mut r)?;
        let their_address = DeviceAddress::read(&mut r)?;
        let our_identity = IdentityPublic::read(&mut r)?;
        let their_identity = IdentityPublic::read(&mut r)?;
        let base_key = r.array()?;
        let root_key = Zeroizing::new(r.array()?);
        let our_ratchet = StaticSecret::from(*Zeroizing::new(r.array::<32>()?));
        let their_ratchet = r.array()?;
        let sending = if r.bool()? {
            Some(Chain {
                key: Zeroizing::new(r.array()?),
                index: r.u32()?,
            })
        } else {
            None
        };
        let previous_counter = r.u32()?;
        let chains = r.u32()? as usize;
        if chains > MAX_RECEIVER_CHAINS {
            return Err(bad());
        }
        let mut receiving = Vec::with_capacity(chains);
        let mut total = 0usize;
        for _ in 0..chains {
            let ratchet = r.array()?;
            let chain = Chain {
                key: Zeroizing::new(r.array()?),
                index: r.u32()?,
            };
            let used_at = if v2 { r.u64()? } else { 0 };
            let n = r.u32()? as usize;
            total += n;
            if n > MAX_SKIPPED_PER_CHAIN || total > MAX_SKIPPED_TOTAL {
                return Err(bad());
            }
            let mut skipped = BTreeMap::new();
            for _ in 0..n {
                let counter = r.u32()?;
                let key = Zeroizing::new(r.array()?);
                let at = if v2 { r.u64()? } else { 0 };
                skipped.insert(counter, (key, at));
            }
            receiving.push(ReceivingChain {
                ratchet,
                chain,
                skipped,
                used_at,
            });
        }
        let pending_prekey = if r.bool()? {
            Some(PendingPrekey {
                signed_prekey_id: r.u32()?,
                one_time_prekey_id: if r.bool()? { Some(r.u32()?) } else { None },
                identity_signature: r.array()?,
            })
        } else {
            None
        };
        // Version 1 kept no such state: a session with a second receiving chain is confirmed
        // (true for both roles); its keys count as fresh from now on.
        let (confirmed, without_one_time_prekey, received) = if v2 {
            (r.bool()?, r.bool()?, r.u64()?)
        } else {
            (receiving.len() >= 2, false, 0)
        };
        if receiving
            .iter()
            .any(|c| c.used_at > received || c.skipped.values().any(|(_, at)| *at > received))
        {
            return Err(bad());
        }
        r.finish()?;
        Ok(Self {
            our_address,
            their_address,
            our_identity,
            their_identity,
            base_key,
            root_key,
            our_ratchet_public: primitives::x25519_public(&our_ratchet),
            our_ratchet,
            their_ratchet,
            sending,
            previous_counter,
            receiving,
            pending_prekey,
            confirmed,
            without_one_time_prekey,
            received,
        })
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("id", &hex8(&self.base_key))
            .field("our_address", &self.our_address)
            .field("their_address", &self.their_address)
            .field("their_identity", &self.their_identity)
            .field("pending", &self.pending_prekey.is_some())
            .field("confirmed", &self.confirmed)
            .field("skipped_keys", &self.skipped_key_count())
            .finish_non_exhaustive()
    }
}

/// Message keys skipped on the way to a later counter.
pub(crate) type Skipped = Vec<(u32, Key32)>;

/// SK = HKDF(salt = 0^32, ikm = 0xFF^32 || DH1 || DH2 || DH3 [|| DH4], info = x3dh label).
pub(crate) fn x3dh_secret(
    dh1: &Key32,
    dh2: &Key32,
    dh3: &Key32,
    dh4: Option<&Key32>,
) -> Result<Key32, Error> {
    let mut ikm = Zeroizing::new(Vec::with_capacity(160));
    ikm.extend_from_slice(&[0xFF; 32]);
    for dh in [Some(dh1), Some(dh2), Some(dh3), dh4].into_iter().flatten() {
        ikm.extend_from_slice(&**dh);
    }
    let mut sk = Zeroizing::new([0u8; 32]);
    primitives::hkdf(&[0u8; 32], &ikm, LABELS.x3dh, &mut *sk)?;
    Ok(sk)
}

/// Advances `chain` to `target`, returning the chain after it, the keys skipped on the way and
/// the message key seed for `target`.
pub(crate) fn derive_to(chain: &Chain, target: u32) -> Result<(Chain, Skipped, Key32), Error> {
    let (at, skipped) = skip_to(chain, target)?;
    let next_index = target.checked_add(1).ok_or(Error::ChainExhausted)?;
    let (seed, next) = primitives::chain_step(&at.key);
    Ok((
        Chain {
            key: next,
            index: next_index,
        },
        skipped,
        seed,
    ))
}

/// Advances `chain` to index `target` (>= its index), keeping the skipped keys.
pub(crate) fn skip_to(chain: &Chain, target: u32) -> Result<(Chain, Skipped), Error> {
    let jump = target.saturating_sub(chain.index);
    if jump > MAX_FORWARD_JUMP {
        return Err(Error::TooFarAhead {
            jump,
            max: MAX_FORWARD_JUMP,
        });
    }
    let mut key = chain.key.clone();
    let mut skipped = Vec::with_capacity(jump as usize);
    for n in chain.index..target {
        let (seed, next) = primitives::chain_step(&key);
        skipped.push((n, seed));
        key = next;
    }
    Ok((
        Chain {
            key,
            index: target.max(chain.index),
        },
        skipped,
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    //! The byte ranges docs/SECURITY.md gives for a prekey message and its associated data,
    //! checked by opening a real message with an AEAD whose associated data is built from
    //! those ranges alone.
    use super::*;
    use crate::Account;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn prekey_message_layout_and_associated_data_are_as_documented() {
        let mut rng = StdRng::seed_from_u64(9);
        let alice = Account::new(&mut rng);
        let mut bob = Account::new(&mut rng);
        let otk = bob.generate_one_time_prekeys(&mut rng, 1)[0];
        let bundle = bob.bundle(Some(otk)).unwrap();
        let (a_addr, b_addr) = (DeviceAddress::new(1, 2), DeviceAddress::new(3, 4));
        let mut s = Session::initiate(&mut rng, &alice, a_addr, b_addr, &bundle).unwrap();
        let chain_key = s.sending.as_ref().unwrap().key.clone();
        let payload = b"payload bytes";
        let m = s.encrypt_payload(&mut rng, payload).unwrap();

        // Prekey prefix: 01 02, identity (64), binding signature (64), base key (32),
        // signed prekey id (u32), 01, one-time prekey id (u32): bytes 0..171.
        assert_eq!(m[..2], [1, 2]);
        assert_eq!(m[2..66], alice.identity().public().to_bytes());
        assert_eq!(m[66..130], alice.identity().binding_signature());
        assert_eq!(m[130..162], s.id());
        assert_eq!(m[162..166], bundle.signed_prekey.id.to_be_bytes());
        assert_eq!(m[166], 1);
        assert_eq!(m[167..171], otk.id.to_be_bytes());
        // Then a normal message: ratchet header 01 01, ratchet key (32), PN (u32), N (u32):
        // bytes 171..213; nonce 213..237; ciphertext and tag after.
        assert_eq!(m[171..173], [1, 1]);
        assert_eq!(m[173..205], s.our_ratchet_public);
        assert_eq!(m[205..213], [0; 8]);
        assert_eq!(m.len(), 237 + payload.len() + 16);

        // AD = labelled(context, sender identity (64), sender address (16), receiver identity,
        // receiver address, prekey prefix m[0..171] (type bytes included), header m[171..213]).
        let ad = primitives::labelled(
            b"chat-crypto/v1/pairwise-ad",
            &[
                &alice.identity().public().to_bytes(),
                &[1u64.to_be_bytes(), 2u64.to_be_bytes()].concat(),
                &bob.identity().public().to_bytes(),
                &[3u64.to_be_bytes(), 4u64.to_be_bytes()].concat(),
                &m[..171],
                &m[171..213],
            ],
        );
        // Message key: HKDF(0^32, KDF_CK seed of the first sending chain key, label).
        let (seed, _) = primitives::chain_step(&chain_key);
        let mut key = [0u8; 32];
        primitives::message_key(b"chat-crypto/v1/message-key", &seed, &mut key).unwrap();
        let nonce: [u8; 24] = m[213..237].try_into().unwrap();
        assert_eq!(
            primitives::open(&key, &nonce, &ad, &m[237..]).unwrap(),
            payload
        );
    }
}
