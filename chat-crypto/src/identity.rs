//! Device identity and prekeys.
//!
//! A device has an Ed25519 identity key that signs its X25519 identity key and its signed
//! prekeys, over the labelled encoding of [`crate::primitives::labelled`]. [`Account`] owns the
//! secret halves (identity, the current and two previous signed prekeys, the one-time prekey
//! pool) and is persisted by the caller through [`Account::pickle`].

use std::collections::{BTreeMap, VecDeque};
use std::fmt;

use ed25519_dalek::SigningKey;
use rand_core::CryptoRng;
use x25519_dalek::StaticSecret;
use zeroize::Zeroizing;

use crate::codec::{Reader, Writer};
use crate::primitives::{self, sig_context};
use crate::{AccountIdentity, Error};

/// Signed prekeys kept after a rotation, so messages started against them still open.
pub const PREVIOUS_SIGNED_PREKEYS_KEPT: usize = 2;
/// The largest one-time prekey pool an account holds.
pub const MAX_ONE_TIME_PREKEYS: usize = 1000;
/// First messages without a one-time prekey that an account remembers (signed prekey id and
/// base key, 36 bytes each), to refuse their replays even after their session was evicted.
/// The oldest is forgotten first; entries of a signed prekey are dropped with it (after
/// [`PREVIOUS_SIGNED_PREKEYS_KEPT`] rotations), since its first messages no longer open.
pub const MAX_REPLAY_CACHE: usize = 2_000;

/// Length of a published identity: Ed25519 key, X25519 key, binding signature.
pub const PUBLISHED_IDENTITY_BYTES: usize = 128;

const ACCOUNT_TAG: u8 = 0xA1;
/// 2: with the replay cache; 3: with the account identity. Versions 1 and 2 still load
/// (with an empty cache, without an account identity).
const ACCOUNT_VERSION: u8 = 3;
const BUNDLE_VERSION: u8 = 1;

/// The public identity of one device: its Ed25519 key and the X25519 key that it signs.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IdentityPublic {
    /// The Ed25519 identity key.
    pub signing: [u8; 32],
    /// The X25519 identity key used in X3DH.
    pub dh: [u8; 32],
}

impl IdentityPublic {
    /// `signing || dh`.
    pub fn to_bytes(&self) -> [u8; 64] {
        let mut out = [0u8; 64];
        let (a, b) = out.split_at_mut(32);
        a.copy_from_slice(&self.signing);
        b.copy_from_slice(&self.dh);
        out
    }

    /// Parses `signing || dh` (no validation beyond length; keys are checked when used).
    pub fn from_bytes(bytes: &[u8; 64]) -> Self {
        let mut r = Reader::new(bytes, "identity");
        // Length is fixed, so these reads cannot fail; fall back to zeros (which never verify).
        Self {
            signing: r.array().unwrap_or([0; 32]),
            dh: r.array().unwrap_or([0; 32]),
        }
    }

    /// The published form of this identity with its binding signature: `signing || dh ||
    /// binding signature`, [`PUBLISHED_IDENTITY_BYTES`] long. The one place that layout is
    /// written ([`IdentityKeys::published`] uses it too).
    pub fn published_with(&self, binding: &[u8; 64]) -> [u8; PUBLISHED_IDENTITY_BYTES] {
        let mut out = [0u8; PUBLISHED_IDENTITY_BYTES];
        let (public, signature) = out.split_at_mut(64);
        public.copy_from_slice(&self.to_bytes());
        signature.copy_from_slice(binding);
        out
    }

    /// Splits a published identity into the identity and its binding signature, without
    /// checking the signature ([`Self::verify_binding`] does). The one place that layout is
    /// read.
    pub fn from_published(bytes: &[u8]) -> Result<(Self, [u8; 64]), Error> {
        let mut r = Reader::new(bytes, "published identity");
        let public: [u8; 64] = r.array()?;
        let binding: [u8; 64] = r.array()?;
        r.finish()?;
        Ok((Self::from_bytes(&public), binding))
    }

    /// Checks the Ed25519 signature binding the X25519 identity key to the signing key.
    pub fn verify_binding(&self, signature: &[u8; 64]) -> Result<(), Error> {
        primitives::verify(
            &self.signing,
            signature,
            sig_context::IDENTITY,
            &[&self.signing, &self.dh],
        )
    }

    pub(crate) fn write(&self, w: &mut Writer) {
        w.raw(&self.signing).raw(&self.dh);
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, Error> {
        Ok(Self {
            signing: r.array()?,
            dh: r.array()?,
        })
    }
}

impl fmt::Debug for IdentityPublic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdentityPublic({})", hex8(&self.signing))
    }
}

/// A device's identity key pair: Ed25519 for signatures, X25519 for X3DH.
pub struct IdentityKeys {
    signing: SigningKey,
    dh: StaticSecret,
    /// Derived once: the public keys and the (deterministic) binding signature.
    public: IdentityPublic,
    binding: [u8; 64],
}

impl IdentityKeys {
    /// Fresh identity keys.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let seed = primitives::random32(rng);
        Self::from_secrets(
            primitives::signing_key(&seed),
            primitives::x25519_secret(rng),
        )
    }

    fn from_secrets(signing: SigningKey, dh: StaticSecret) -> Self {
        let public = IdentityPublic {
            signing: signing.verifying_key().to_bytes(),
            dh: primitives::x25519_public(&dh),
        };
        let binding = primitives::sign(
            &signing,
            sig_context::IDENTITY,
            &[&public.signing, &public.dh],
        );
        Self {
            signing,
            dh,
            public,
            binding,
        }
    }

    /// The public half.
    pub fn public(&self) -> IdentityPublic {
        self.public
    }

    /// The signature binding the X25519 identity key to the Ed25519 key (deterministic).
    pub fn binding_signature(&self) -> [u8; 64] {
        self.binding
    }

    /// What the device publishes in the key directory: `signing || dh || binding signature`
    /// ([`PUBLISHED_IDENTITY_BYTES`]).
    pub fn published(&self) -> [u8; PUBLISHED_IDENTITY_BYTES] {
        self.public.published_with(&self.binding)
    }

    pub(crate) fn dh_secret(&self) -> &StaticSecret {
        &self.dh
    }

    pub(crate) fn sign(&self, context: &[u8], fields: &[&[u8]]) -> [u8; 64] {
        primitives::sign(&self.signing, context, fields)
    }

    fn write(&self, w: &mut Writer) {
        w.raw(self.signing.as_bytes()).raw(self.dh.as_bytes());
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, Error> {
        let seed = Zeroizing::new(r.array::<32>()?);
        let dh = Zeroizing::new(r.array::<32>()?);
        Ok(Self::from_secrets(
            primitives::signing_key(&seed),
            StaticSecret::from(*dh),
        ))
    }
}

impl fmt::Debug for IdentityKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityKeys")
            .field("public", &self.public())
            .finish_non_exhaustive()
    }
}

/// A signed prekey as published: id, X25519 key and the identity key's signature over both.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SignedPrekey {
    /// The id the account chose for it.
    pub id: u32,
    /// The X25519 public key.
    pub key: [u8; 32],
    /// Ed25519 signature by the identity key over the labelled `(identity, id, key)`.
    pub signature: [u8; 64],
}

impl SignedPrekey {
    /// Strictly verifies the signature against the device's identity.
    pub fn verify(&self, identity: &IdentityPublic) -> Result<(), Error> {
        primitives::verify(
            &identity.signing,
            &self.signature,
            sig_context::SIGNED_PREKEY,
            &[&identity.signing, &self.id.to_be_bytes(), &self.key],
        )
    }
}

/// A one-time prekey as published: handed out by the server at most once.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct OneTimePrekey {
    /// The id the account chose for it.
    pub id: u32,
    /// The X25519 public key.
    pub key: [u8; 32],
}

/// What an initiator fetches from the server to start a session with one device.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PrekeyBundle {
    /// The device's identity.
    pub identity: IdentityPublic,
    /// The signature binding `identity.dh` to `identity.signing`.
    pub identity_signature: [u8; 64],
    /// The device's current signed prekey.
    pub signed_prekey: SignedPrekey,
    /// One one-time prekey, if the pool was not empty.
    pub one_time_prekey: Option<OneTimePrekey>,
}

impl PrekeyBundle {
    /// A bundle from the key directory's fields (the published identity of
    /// [`IdentityKeys::published`], the signed prekey, an optional one-time prekey), checking
    /// lengths and both signatures.
    pub fn from_parts(
        published_identity: &[u8],
        signed_prekey_id: u32,
        signed_prekey: &[u8],
        signed_prekey_signature: &[u8],
        one_time_prekey: Option<(u32, &[u8])>,
    ) -> Result<Self, Error> {
        let bad = || Error::Malformed("prekey bundle");
        let mut r = Reader::new(published_identity, "published identity");
        let identity = IdentityPublic::read(&mut r)?;
        let identity_signature = r.array()?;
        r.finish()?;
        let one_time_prekey = match one_time_prekey {
            Some((id, key)) => Some(OneTimePrekey {
                id,
                key: key.try_into().map_err(|_| bad())?,
            }),
            None => None,
        };
        let bundle = Self {
            identity,
            identity_signature,
            signed_prekey: SignedPrekey {
                id: signed_prekey_id,
                key: signed_prekey.try_into().map_err(|_| bad())?,
                signature: signed_prekey_signature.try_into().map_err(|_| bad())?,
            },
            one_time_prekey,
        };
        bundle.verify()?;
        Ok(bundle)
    }

    /// Verifies both signatures (strict Ed25519).
    pub fn verify(&self) -> Result<(), Error> {
        self.identity.verify_binding(&self.identity_signature)?;
        self.signed_prekey.verify(&self.identity)
    }

    /// Versioned bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(240);
        w.u8(BUNDLE_VERSION);
        self.identity.write(&mut w);
        w.raw(&self.identity_signature)
            .u32(self.signed_prekey.id)
            .raw(&self.signed_prekey.key)
            .raw(&self.signed_prekey.signature);
        match &self.one_time_prekey {
            Some(otk) => w.u8(1).u32(otk.id).raw(&otk.key),
            None => w.u8(0),
        };
        w.into_vec()
    }

    /// Parses [`PrekeyBundle::to_bytes`]; signatures are not checked here (see `verify`).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        let mut r = Reader::new(bytes, "prekey bundle");
        let v = r.u8()?;
        if v != BUNDLE_VERSION {
            return Err(Error::UnsupportedVersion(v));
        }
        let identity = IdentityPublic::read(&mut r)?;
        let identity_signature = r.array()?;
        let signed_prekey = SignedPrekey {
            id: r.u32()?,
            key: r.array()?,
            signature: r.array()?,
        };
        let one_time_prekey = if r.bool()? {
            Some(OneTimePrekey {
                id: r.u32()?,
                key: r.array()?,
            })
        } else {
            None
        };
        r.finish()?;
        Ok(Self {
            identity,
            identity_signature,
            signed_prekey,
            one_time_prekey,
        })
    }
}

struct PrekeySecret {
    secret: StaticSecret,
    /// The published half, signed (derived once).
    signed: SignedPrekey,
}

/// A device's secret keys: identity, signed prekeys and the one-time prekey pool.
///
/// Not `Clone`; persisted with [`Account::pickle`]. Save it after every call that takes
/// `&mut self` (a consumed one-time prekey must stay consumed).
pub struct Account {
    identity: IdentityKeys,
    /// Current first, then up to [`PREVIOUS_SIGNED_PREKEYS_KEPT`] previous ones.
    signed_prekeys: Vec<PrekeySecret>,
    one_time: BTreeMap<u32, StaticSecret>,
    next_id: u32,
    /// (signed prekey id, base key) of accepted first messages without a one-time prekey,
    /// oldest first, at most [`MAX_REPLAY_CACHE`].
    replay_cache: VecDeque<(u32, [u8; 32])>,
    /// The user's account identity, once this device created it or was linked.
    account_identity: Option<AccountIdentity>,
}

impl Account {
    /// A new account with fresh identity keys and a first signed prekey.
    pub fn new<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let identity = IdentityKeys::generate(rng);
        let mut account = Self {
            identity,
            signed_prekeys: Vec::new(),
            one_time: BTreeMap::new(),
            next_id: 1,
            replay_cache: VecDeque::new(),
            account_identity: None,
        };
        account.rotate_signed_prekey(rng);
        account
    }

    /// The identity keys.
    pub fn identity(&self) -> &IdentityKeys {
        &self.identity
    }

    /// The user's account identity, if this device holds it (it made it, or was linked).
    pub fn account_identity(&self) -> Option<&AccountIdentity> {
        self.account_identity.as_ref()
    }

    /// Stores the user's account identity (made by this device, received by linking, or a
    /// new one after a recovery), replacing any held before.
    pub fn set_account_identity(&mut self, identity: AccountIdentity) {
        self.account_identity = Some(identity);
    }

    /// Forgets the account identity (one this device made but lost the race to publish).
    pub fn clear_account_identity(&mut self) {
        self.account_identity = None;
    }

    /// The current signed prekey, signed.
    pub fn signed_prekey(&self) -> Option<SignedPrekey> {
        self.signed_prekeys.first().map(|spk| spk.signed)
    }

    /// Makes a new current signed prekey (call on a schedule, e.g. weekly); keeps the previous
    /// [`PREVIOUS_SIGNED_PREKEYS_KEPT`] so in-flight first messages still open.
    pub fn rotate_signed_prekey<R: CryptoRng + ?Sized>(&mut self, rng: &mut R) -> SignedPrekey {
        let id = self.take_id();
        let secret = primitives::x25519_secret(rng);
        let signed = sign_prekey(&self.identity, id, &secret);
        self.signed_prekeys
            .insert(0, PrekeySecret { secret, signed });
        self.signed_prekeys
            .truncate(1 + PREVIOUS_SIGNED_PREKEYS_KEPT);
        let held: Vec<u32> = self.signed_prekeys.iter().map(|s| s.signed.id).collect();
        self.replay_cache.retain(|(id, _)| held.contains(id));
        signed
    }

    /// Adds up to `count` one-time prekeys to the pool (never beyond
    /// [`MAX_ONE_TIME_PREKEYS`]) and returns the public halves to upload.
    pub fn generate_one_time_prekeys<R: CryptoRng + ?Sized>(
        &mut self,
        rng: &mut R,
        count: usize,
    ) -> Vec<OneTimePrekey> {
        let room = MAX_ONE_TIME_PREKEYS.saturating_sub(self.one_time.len());
        (0..count.min(room))
            .map(|_| {
                let id = self.take_id();
                let secret = primitives::x25519_secret(rng);
                let key = primitives::x25519_public(&secret);
                self.one_time.insert(id, secret);
                OneTimePrekey { id, key }
            })
            .collect()
    }

    /// How many one-time prekeys are left in the pool.
    pub fn one_time_prekey_count(&self) -> usize {
        self.one_time.len()
    }

    /// A bundle of this device's own keys (mostly for tests and for a local loopback).
    pub fn bundle(&self, one_time_prekey: Option<OneTimePrekey>) -> Result<PrekeyBundle, Error> {
        Ok(PrekeyBundle {
            identity: self.identity.public(),
            identity_signature: self.identity.binding_signature(),
            signed_prekey: self.signed_prekey().ok_or(Error::UnknownSignedPrekey)?,
            one_time_prekey,
        })
    }

    /// The secret and public key of a signed prekey still held.
    pub(crate) fn signed_prekey_secret(&self, id: u32) -> Result<(&StaticSecret, [u8; 32]), Error> {
        self.signed_prekeys
            .iter()
            .find(|s| s.signed.id == id)
            .map(|s| (&s.secret, s.signed.key))
            .ok_or(Error::UnknownSignedPrekey)
    }

    pub(crate) fn one_time_prekey_secret(&self, id: u32) -> Result<&StaticSecret, Error> {
        self.one_time.get(&id).ok_or(Error::UnknownOneTimePrekey)
    }

    pub(crate) fn remove_one_time_prekey(&mut self, id: u32) {
        self.one_time.remove(&id);
    }

    /// Whether a first message without a one-time prekey, with this signed prekey and base
    /// key, was accepted before.
    pub(crate) fn first_message_seen(&self, signed_prekey_id: u32, base_key: &[u8; 32]) -> bool {
        self.replay_cache
            .iter()
            .any(|(id, k)| *id == signed_prekey_id && k == base_key)
    }

    /// Remembers an accepted first message without a one-time prekey.
    pub(crate) fn record_first_message(&mut self, signed_prekey_id: u32, base_key: [u8; 32]) {
        self.replay_cache.push_back((signed_prekey_id, base_key));
        while self.replay_cache.len() > MAX_REPLAY_CACHE {
            self.replay_cache.pop_front();
        }
    }

    /// How many first messages without a one-time prekey the replay cache remembers.
    pub fn replay_cache_len(&self) -> usize {
        self.replay_cache.len()
    }

    fn take_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        id
    }

    /// Versioned secret bytes; keep them encrypted at rest.
    pub fn pickle(&self) -> Zeroizing<Vec<u8>> {
        let mut w = Writer::with_capacity(
            84 + 36 * (self.signed_prekeys.len() + self.one_time.len() + self.replay_cache.len()),
        );
        w.u8(ACCOUNT_TAG).u8(ACCOUNT_VERSION);
        self.identity.write(&mut w);
        w.u32(self.next_id);
        w.u32(len_u32(self.signed_prekeys.len()));
        for spk in &self.signed_prekeys {
            w.u32(spk.signed.id).raw(spk.secret.as_bytes());
        }
        w.u32(len_u32(self.one_time.len()));
        for (id, secret) in &self.one_time {
            w.u32(*id).raw(secret.as_bytes());
        }
        w.u32(len_u32(self.replay_cache.len()));
        for (id, base_key) in &self.replay_cache {
            w.u32(*id).raw(base_key);
        }
        match &self.account_identity {
            Some(identity) => w.u8(1).raw(identity.secret().as_slice()),
            None => w.u8(0),
        };
        w.into_secret()
    }

    /// Restores [`Account::pickle`]; unknown versions are refused.
    pub fn from_pickle(bytes: &[u8]) -> Result<Self, Error> {
        let mut r = Reader::new(bytes, "account pickle");
        if r.u8()? != ACCOUNT_TAG {
            return Err(Error::Malformed("account pickle"));
        }
        let version = r.u8()?;
        if !(1..=ACCOUNT_VERSION).contains(&version) {
            return Err(Error::UnsupportedVersion(version));
        }
        let identity = IdentityKeys::read(&mut r)?;
        let next_id = r.u32()?;
        let n = r.u32()?;
        if n as usize > 1 + PREVIOUS_SIGNED_PREKEYS_KEPT {
            return Err(Error::Malformed("account pickle"));
        }
        let mut signed_prekeys = Vec::new();
        for _ in 0..n {
            let id = r.u32()?;
            let secret = StaticSecret::from(*Zeroizing::new(r.array::<32>()?));
            let signed = sign_prekey(&identity, id, &secret);
            signed_prekeys.push(PrekeySecret { secret, signed });
        }
        let n = r.u32()?;
        if n as usize > MAX_ONE_TIME_PREKEYS {
            return Err(Error::Malformed("account pickle"));
        }
        let mut one_time = BTreeMap::new();
        for _ in 0..n {
            let id = r.u32()?;
            one_time.insert(id, StaticSecret::from(*Zeroizing::new(r.array::<32>()?)));
        }
        let mut replay_cache = VecDeque::new();
        if version >= 2 {
            let n = r.u32()?;
            if n as usize > MAX_REPLAY_CACHE {
                return Err(Error::Malformed("account pickle"));
            }
            for _ in 0..n {
                replay_cache.push_back((r.u32()?, r.array()?));
            }
        }
        let account_identity = if version >= 3 && r.bool()? {
            Some(AccountIdentity::from_secret(&Zeroizing::new(r.array()?)))
        } else {
            None
        };
        r.finish()?;
        Ok(Self {
            identity,
            signed_prekeys,
            one_time,
            next_id,
            replay_cache,
            account_identity,
        })
    }
}

impl fmt::Debug for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Account")
            .field("identity", &self.identity.public())
            .field("signed_prekeys", &self.signed_prekeys.len())
            .field("one_time_prekeys", &self.one_time.len())
            .field("replay_cache", &self.replay_cache.len())
            .field("account_identity", &self.account_identity)
            .finish_non_exhaustive()
    }
}

fn sign_prekey(identity: &IdentityKeys, id: u32, secret: &StaticSecret) -> SignedPrekey {
    let key = primitives::x25519_public(secret);
    let public = identity.public();
    let signature = identity.sign(
        sig_context::SIGNED_PREKEY,
        &[&public.signing, &id.to_be_bytes(), &key],
    );
    SignedPrekey { id, key, signature }
}

pub(crate) fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

pub(crate) fn hex8(bytes: &[u8]) -> String {
    bytes.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)] // tests index fixed test data
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn bundle_verifies_and_round_trips() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut acct = Account::new(&mut rng);
        let otk = acct.generate_one_time_prekeys(&mut rng, 3);
        let bundle = acct.bundle(otk.first().copied()).unwrap();
        bundle.verify().unwrap();
        assert_eq!(
            PrekeyBundle::from_bytes(&bundle.to_bytes()).unwrap(),
            bundle
        );
        let mut bad = bundle;
        bad.signed_prekey.id ^= 1;
        assert_eq!(bad.verify().unwrap_err(), Error::BadSignature);
        let mut bad = bundle;
        bad.identity.dh[0] ^= 1;
        assert_eq!(bad.verify().unwrap_err(), Error::BadSignature);
    }

    #[test]
    fn the_published_identity_is_read_as_it_is_written() {
        let mut rng = StdRng::seed_from_u64(9);
        let keys = IdentityKeys::generate(&mut rng);
        let published = keys.published();
        let (public, binding) = IdentityPublic::from_published(&published).unwrap();
        assert_eq!(public, keys.public());
        assert_eq!(binding, keys.binding_signature());
        public.verify_binding(&binding).unwrap();
        assert_eq!(public.published_with(&binding), published);
        assert!(IdentityPublic::from_published(&published[..127]).is_err());
        assert!(IdentityPublic::from_published(&[published.as_slice(), &[0]].concat()).is_err());
    }

    #[test]
    fn account_pickle_round_trips_and_refuses_other_versions() {
        let mut rng = StdRng::seed_from_u64(2);
        let mut acct = Account::new(&mut rng);
        acct.generate_one_time_prekeys(&mut rng, 5);
        acct.rotate_signed_prekey(&mut rng);
        let p = acct.pickle();
        let back = Account::from_pickle(&p).unwrap();
        assert_eq!(*back.pickle(), *p);
        assert_eq!(back.identity().public(), acct.identity().public());
        let mut other = p.to_vec();
        other[1] = 4;
        assert_eq!(
            Account::from_pickle(&other).unwrap_err(),
            Error::UnsupportedVersion(4)
        );
        // A version 2 pickle (no account identity flag) still loads.
        let mut v2 = p[..p.len() - 1].to_vec();
        v2[1] = 2;
        let old = Account::from_pickle(&v2).unwrap();
        assert!(old.account_identity().is_none());
        assert_eq!(old.identity().public(), acct.identity().public());
        assert!(Account::from_pickle(&p[..p.len() - 1]).is_err());
        assert!(!format!("{acct:?}").contains(&hex::encode(&p[2..10])));
    }

    #[test]
    fn bundle_from_directory_parts() {
        let mut rng = StdRng::seed_from_u64(4);
        let mut acct = Account::new(&mut rng);
        let otk = acct.generate_one_time_prekeys(&mut rng, 1)[0];
        let spk = acct.signed_prekey().unwrap();
        let published = acct.identity().published();
        let bundle = PrekeyBundle::from_parts(
            &published,
            spk.id,
            &spk.key,
            &spk.signature,
            Some((otk.id, &otk.key)),
        )
        .unwrap();
        assert_eq!(bundle, acct.bundle(Some(otk)).unwrap());
        let mut bad = published;
        bad[100] ^= 1;
        assert_eq!(
            PrekeyBundle::from_parts(&bad, spk.id, &spk.key, &spk.signature, None).unwrap_err(),
            Error::BadSignature
        );
        assert!(
            PrekeyBundle::from_parts(&published[..127], spk.id, &spk.key, &spk.signature, None)
                .is_err()
        );
        assert!(
            PrekeyBundle::from_parts(&published, spk.id, &spk.key[..31], &spk.signature, None)
                .is_err()
        );
    }

    #[test]
    fn pool_is_capped() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut acct = Account::new(&mut rng);
        assert_eq!(
            acct.generate_one_time_prekeys(&mut rng, 2000).len(),
            MAX_ONE_TIME_PREKEYS
        );
        assert!(acct.generate_one_time_prekeys(&mut rng, 1).is_empty());
    }
}
