//! Sender keys for groups.
//!
//! Each sender device has, per group, a [`SenderKey`]: a symmetric chain (KDF_CK, as in the
//! Double Ratchet) and an Ed25519 signing key. It hands a [`SenderKeyDistribution`] (the chain
//! at its current position and the public signing key) to every other member device over the
//! pairwise sessions ([`crate::sender_key_headers`]). Each group message is encrypted once and
//! signed over the whole body; receivers verify the signature before any decryption.
//!
//! Rotation: when a member (or one of a member's devices) leaves or is removed, every remaining
//! sender makes a new `SenderKey` and distributes it only to the remaining devices; the removed
//! device never learns the new chain and cannot read anything sent afterwards.

use std::collections::BTreeMap;
use std::fmt;

use ed25519_dalek::SigningKey;
use rand_core::CryptoRng;
use zeroize::Zeroizing;

use crate::Error;
use crate::codec::{Reader, Writer};
use crate::identity::{hex8, len_u32};
use crate::primitives::{self, LABELS, NONCE_LEN, TAG_LEN, ad_context, sig_context};
use crate::session::{
    Chain, DeviceAddress, MAX_FORWARD_JUMP, MAX_SKIPPED_KEY_AGE, MAX_SKIPPED_PER_CHAIN,
    MESSAGE_VERSION, derive_to,
};

/// Longest group id accepted (the client's own group identifier bytes).
pub const MAX_GROUP_ID_BYTES: usize = 64;
/// Sender keys a receiver keeps per (group, sender device): the newest and two older ones, so
/// messages sent just before a rotation still open.
pub const MAX_SENDER_KEY_STATES: usize = 3;
/// Bytes a group body adds to its plaintext: version, key id, iteration, nonce, tag, signature.
pub const GROUP_BODY_OVERHEAD: usize = 1 + 4 + 4 + NONCE_LEN + TAG_LEN + 64;

const SENDER_KEY_TAG: u8 = 0xA3;
const RECEIVER_TAG: u8 = 0xA4;
const PICKLE_VERSION: u8 = 1;
/// 2: skipped keys carry an age stamp and the receiver counts decrypted messages. Version 1
/// still loads.
const RECEIVER_VERSION: u8 = 2;
const GROUP_HEADER_LEN: usize = 1 + 4 + 4;

/// A sender key as handed to another member device: the chain at one position and the public
/// signing key. Secret (it lets the holder read the group from that position on); it travels
/// only inside pairwise-encrypted headers.
pub struct SenderKeyDistribution {
    group_id: Vec<u8>,
    key_id: u32,
    iteration: u32,
    chain_key: Zeroizing<[u8; 32]>,
    signing_public: [u8; 32],
}

impl SenderKeyDistribution {
    /// The group this key is for.
    pub fn group_id(&self) -> &[u8] {
        &self.group_id
    }

    /// The sender key's id (random, new at every rotation).
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    pub(crate) fn write(&self, w: &mut Writer) {
        w.var(&self.group_id).u32(self.key_id).u32(self.iteration);
        w.raw(&*self.chain_key).raw(&self.signing_public);
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, Error> {
        Ok(Self {
            group_id: r.var(MAX_GROUP_ID_BYTES)?.to_vec(),
            key_id: r.u32()?,
            iteration: r.u32()?,
            chain_key: Zeroizing::new(r.array()?),
            signing_public: r.array()?,
        })
    }
}

impl fmt::Debug for SenderKeyDistribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SenderKeyDistribution")
            .field("key_id", &self.key_id)
            .field("iteration", &self.iteration)
            .finish_non_exhaustive()
    }
}

/// This device's outbound sender key for one group.
pub struct SenderKey {
    group_id: Vec<u8>,
    sender: DeviceAddress,
    key_id: u32,
    chain: Chain,
    signing: SigningKey,
}

impl SenderKey {
    /// A fresh sender key (at group creation and at every rotation).
    pub fn new<R: CryptoRng + ?Sized>(
        rng: &mut R,
        group_id: &[u8],
        sender: DeviceAddress,
    ) -> Result<Self, Error> {
        if group_id.len() > MAX_GROUP_ID_BYTES {
            return Err(Error::TooLarge("group id"));
        }
        let mut id = [0u8; 4];
        rng.fill_bytes(&mut id);
        let seed = primitives::random32(rng);
        Ok(Self {
            group_id: group_id.to_vec(),
            sender,
            key_id: u32::from_be_bytes(id),
            chain: Chain {
                key: primitives::random32(rng),
                index: 0,
            },
            signing: primitives::signing_key(&seed),
        })
    }

    /// The distribution for other member devices, at the chain's current position (a device
    /// that joins later cannot read earlier messages).
    pub fn distribution(&self) -> SenderKeyDistribution {
        SenderKeyDistribution {
            group_id: self.group_id.clone(),
            key_id: self.key_id,
            iteration: self.chain.index,
            chain_key: self.chain.key.clone(),
            signing_public: self.signing.verifying_key().to_bytes(),
        }
    }

    /// This key's id.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// Encrypts and signs one group message body. Save the sender key before sending.
    pub fn encrypt<R: CryptoRng + ?Sized>(
        &mut self,
        rng: &mut R,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, Error> {
        let iteration = self.chain.index;
        let next_index = iteration.checked_add(1).ok_or(Error::ChainExhausted)?;
        let (seed, next) = primitives::chain_step(&self.chain.key);
        let mut key = Zeroizing::new([0u8; 32]);
        primitives::message_key(LABELS.sender_message_key, &seed, &mut *key)?;
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut nonce);

        let mut body = Vec::with_capacity(GROUP_BODY_OVERHEAD + plaintext.len());
        body.push(MESSAGE_VERSION);
        body.extend_from_slice(&self.key_id.to_be_bytes());
        body.extend_from_slice(&iteration.to_be_bytes());
        let ad = group_ad(&self.group_id, self.sender, &body);
        let ciphertext = primitives::seal(&key, &nonce, &ad, plaintext)?;
        body.extend_from_slice(&nonce);
        body.extend_from_slice(&ciphertext);
        let signature = primitives::sign(
            &self.signing,
            sig_context::GROUP_MESSAGE,
            &[&self.group_id, &self.sender.to_bytes(), &body],
        );
        body.extend_from_slice(&signature);
        self.chain = Chain {
            key: next,
            index: next_index,
        };
        Ok(body)
    }

    /// Versioned secret bytes.
    pub fn pickle(&self) -> Zeroizing<Vec<u8>> {
        let mut w = Writer::with_capacity(160);
        w.u8(SENDER_KEY_TAG).u8(PICKLE_VERSION).var(&self.group_id);
        w.u64(self.sender.user)
            .u64(self.sender.device)
            .u32(self.key_id);
        w.raw(&*self.chain.key)
            .u32(self.chain.index)
            .raw(self.signing.as_bytes());
        w.into_secret()
    }

    /// Restores [`SenderKey::pickle`].
    pub fn from_pickle(bytes: &[u8]) -> Result<Self, Error> {
        let mut r = Reader::new(bytes, "sender key pickle");
        r.expect_header(SENDER_KEY_TAG, PICKLE_VERSION)?;
        let group_id = r.var(MAX_GROUP_ID_BYTES)?.to_vec();
        let sender = DeviceAddress::read(&mut r)?;
        let key_id = r.u32()?;
        let chain = Chain {
            key: Zeroizing::new(r.array()?),
            index: r.u32()?,
        };
        let seed = Zeroizing::new(r.array::<32>()?);
        r.finish()?;
        Ok(Self {
            group_id,
            sender,
            key_id,
            chain,
            signing: primitives::signing_key(&seed),
        })
    }
}

impl fmt::Debug for SenderKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SenderKey")
            .field("group_id", &hex8(&self.group_id))
            .field("key_id", &self.key_id)
            .field("iteration", &self.chain.index)
            .finish_non_exhaustive()
    }
}

struct ReceiverState {
    key_id: u32,
    signing_public: [u8; 32],
    chain: Chain,
    /// Skipped keys with the receiver's `received` count when each was skipped.
    skipped: BTreeMap<u32, (Zeroizing<[u8; 32]>, u64)>,
}

/// The inbound sender keys of one (group, sender device).
pub struct SenderKeyReceiver {
    group_id: Vec<u8>,
    sender: DeviceAddress,
    /// Newest first, at most [`MAX_SENDER_KEY_STATES`].
    states: Vec<ReceiverState>,
    /// Messages decrypted: skipped keys older than [`MAX_SKIPPED_KEY_AGE`] of them are dropped,
    /// as in the pairwise sessions.
    received: u64,
}

impl SenderKeyReceiver {
    /// A receiver for the sender key that `sender` (the remote device of the pairwise session
    /// the distribution arrived on) handed over.
    pub fn new(sender: DeviceAddress, distribution: &SenderKeyDistribution) -> Self {
        let mut r = Self {
            group_id: distribution.group_id.clone(),
            sender,
            states: Vec::new(),
            received: 0,
        };
        r.insert(distribution);
        r
    }

    /// Adds a newer (rotated) sender key from the same sender for the same group. A key
    /// already known (same id and signing key) is ignored, so a re-sent distribution cannot
    /// rewind the chain.
    pub fn add(
        &mut self,
        sender: DeviceAddress,
        distribution: &SenderKeyDistribution,
    ) -> Result<(), Error> {
        if sender != self.sender || distribution.group_id != self.group_id {
            return Err(Error::SenderKeyMismatch);
        }
        match self
            .states
            .iter()
            .position(|s| s.key_id == distribution.key_id)
        {
            // The same key again (a re-sent distribution): keep our position.
            Some(i)
                if self.states.get(i).map(|s| s.signing_public)
                    == Some(distribution.signing_public) => {}
            // A new key whose random id collides with an old one: it replaces the old one.
            Some(i) => {
                self.states.remove(i);
                self.insert(distribution);
            }
            None => self.insert(distribution),
        }
        Ok(())
    }

    fn insert(&mut self, d: &SenderKeyDistribution) {
        self.states.insert(
            0,
            ReceiverState {
                key_id: d.key_id,
                signing_public: d.signing_public,
                chain: Chain {
                    key: d.chain_key.clone(),
                    index: d.iteration,
                },
                skipped: BTreeMap::new(),
            },
        );
        self.states.truncate(MAX_SENDER_KEY_STATES);
    }

    /// Verifies the signature, then decrypts a group body from this sender. The state changes
    /// only on success.
    pub fn decrypt(&mut self, body: &[u8]) -> Result<Vec<u8>, Error> {
        let signed_len = body
            .len()
            .checked_sub(64)
            .ok_or(Error::Malformed("group message"))?;
        let (signed, sig) = body
            .split_at_checked(signed_len)
            .ok_or(Error::Malformed("group message"))?;
        let sig: [u8; 64] = sig
            .try_into()
            .map_err(|_| Error::Malformed("group message"))?;
        let mut r = Reader::new(signed, "group message");
        let version = r.u8()?;
        if version != MESSAGE_VERSION {
            return Err(Error::UnsupportedVersion(version));
        }
        let key_id = r.u32()?;
        let iteration = r.u32()?;
        let nonce: [u8; NONCE_LEN] = r.array()?;
        let ciphertext = r.rest();
        let header = signed
            .get(..GROUP_HEADER_LEN)
            .ok_or(Error::Malformed("group message"))?;

        let i = self
            .states
            .iter()
            .position(|s| s.key_id == key_id)
            .ok_or(Error::UnknownSenderKey)?;
        let state = self.states.get(i).ok_or(Error::UnknownSenderKey)?;
        primitives::verify(
            &state.signing_public,
            &sig,
            sig_context::GROUP_MESSAGE,
            &[&self.group_id, &self.sender.to_bytes(), signed],
        )?;

        let (seed, advance) = if iteration < state.chain.index {
            (
                state
                    .skipped
                    .get(&iteration)
                    .ok_or(Error::DuplicateMessage)?
                    .0
                    .clone(),
                None,
            )
        } else {
            let (next, skipped, seed) = derive_to(&state.chain, iteration)?;
            (seed, Some((next, skipped)))
        };
        let mut key = Zeroizing::new([0u8; 32]);
        primitives::message_key(LABELS.sender_message_key, &seed, &mut *key)?;
        let ad = group_ad(&self.group_id, self.sender, header);
        let plaintext = primitives::open(&key, &nonce, &ad, ciphertext)?;

        self.received = self.received.saturating_add(1);
        let now = self.received;
        if let Some(state) = self.states.get_mut(i) {
            match advance {
                None => {
                    state.skipped.remove(&iteration);
                }
                Some((next, skipped)) => {
                    state.chain = next;
                    state
                        .skipped
                        .extend(skipped.into_iter().map(|(n, k)| (n, (k, now))));
                    while state.skipped.len() > MAX_SKIPPED_PER_CHAIN {
                        state.skipped.pop_first();
                    }
                }
            }
        }
        for state in &mut self.states {
            state
                .skipped
                .retain(|_, (_, at)| now.saturating_sub(*at) < MAX_SKIPPED_KEY_AGE);
        }
        Ok(plaintext)
    }

    /// The sender device.
    pub fn sender(&self) -> DeviceAddress {
        self.sender
    }

    /// Versioned secret bytes.
    pub fn pickle(&self) -> Zeroizing<Vec<u8>> {
        let skipped: usize = self.states.iter().map(|s| s.skipped.len()).sum();
        let mut w = Writer::with_capacity(128 + 80 * self.states.len() + 36 * skipped);
        w.u8(RECEIVER_TAG).u8(RECEIVER_VERSION).var(&self.group_id);
        w.u64(self.sender.user).u64(self.sender.device);
        w.u32(len_u32(self.states.len()));
        for s in &self.states {
            w.u32(s.key_id)
                .raw(&s.signing_public)
                .raw(&*s.chain.key)
                .u32(s.chain.index);
            w.u32(len_u32(s.skipped.len()));
            for (n, (k, at)) in &s.skipped {
                w.u32(*n).raw(&**k).u64(*at);
            }
        }
        w.u64(self.received);
        w.into_secret()
    }

    /// Restores [`SenderKeyReceiver::pickle`].
    pub fn from_pickle(bytes: &[u8]) -> Result<Self, Error> {
        let bad = || Error::Malformed("sender key receiver pickle");
        let mut r = Reader::new(bytes, "sender key receiver pickle");
        if r.u8()? != RECEIVER_TAG {
            return Err(bad());
        }
        let version = r.u8()?;
        if version != 1 && version != RECEIVER_VERSION {
            return Err(Error::UnsupportedVersion(version));
        }
        let v2 = version == RECEIVER_VERSION;
        let group_id = r.var(MAX_GROUP_ID_BYTES)?.to_vec();
        let sender = DeviceAddress::read(&mut r)?;
        let n = r.u32()? as usize;
        if n > MAX_SENDER_KEY_STATES {
            return Err(bad());
        }
        let mut states = Vec::with_capacity(n);
        for _ in 0..n {
            let key_id = r.u32()?;
            let signing_public = r.array()?;
            let chain = Chain {
                key: Zeroizing::new(r.array()?),
                index: r.u32()?,
            };
            let m = r.u32()? as usize;
            if m > MAX_SKIPPED_PER_CHAIN {
                return Err(bad());
            }
            let mut skipped = BTreeMap::new();
            for _ in 0..m {
                let n = r.u32()?;
                let key = Zeroizing::new(r.array()?);
                let at = if v2 { r.u64()? } else { 0 };
                skipped.insert(n, (key, at));
            }
            states.push(ReceiverState {
                key_id,
                signing_public,
                chain,
                skipped,
            });
        }
        let received = if v2 { r.u64()? } else { 0 };
        if states
            .iter()
            .any(|s| s.skipped.values().any(|(_, at)| *at > received))
        {
            return Err(bad());
        }
        r.finish()?;
        Ok(Self {
            group_id,
            sender,
            states,
            received,
        })
    }
}

impl fmt::Debug for SenderKeyReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SenderKeyReceiver")
            .field("group_id", &hex8(&self.group_id))
            .field("sender", &self.sender)
            .field(
                "key_ids",
                &self.states.iter().map(|s| s.key_id).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

fn group_ad(group_id: &[u8], sender: DeviceAddress, header: &[u8]) -> Vec<u8> {
    primitives::labelled(ad_context::GROUP, &[group_id, &sender.to_bytes(), header])
}

// The forward-jump cap is shared with the pairwise ratchet.
const _: () = assert!(MAX_FORWARD_JUMP as usize <= MAX_SKIPPED_PER_CHAIN);
