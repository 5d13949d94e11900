//! Account identities, signed device lists and device linking (issue 16). Pure: no I/O.
//!
//! Every user has one **account identity**, an Ed25519 key pair. Its secret is held by the
//! user's linked devices only; it signs the user's [`SignedDeviceList`]: the user ID, a
//! version that only grows, and every linked device with its device identity. A contact
//! encrypts only to devices on a list signed by the account key it trusts, so a device the
//! server adds to a user is on no list and gets nothing.
//!
//! A new device joins by **linking** ([`LinkCode`]): it shows a code (its device ID, its
//! device identity and a fresh 32-byte secret) that the user carries to a linked device by
//! hand (QR or text). The linked device signs a list that adds the new device and seals the
//! account secret and that list under a key derived from the code's secret; the server only
//! relays the sealed bytes. The code's secret authenticates the sealed bytes to the new
//! device (the server never saw it), and the code's identity tells the linked device which
//! device to add (the server cannot substitute its own).
//!
//! A user with no linked device left recovers by making a new account identity, which every
//! contact sees as an identity change.

use std::collections::BTreeMap;
use std::fmt;

use chat_core::{DeviceId, UserId, limits::MAX_DEVICES_PER_USER};
use ed25519_dalek::{SigningKey, VerifyingKey};
use rand_core::CryptoRng;
use zeroize::Zeroizing;

use crate::codec::{Reader, Writer};
use crate::identity::{hex8, len_u32};
use crate::primitives::{self, NONCE_LEN, ad_context, sig_context};
use crate::{Error, IdentityPublic};

/// The first byte of an encoded [`SignedDeviceList`].
const LIST_TAG: u8 = 0x44;
/// The first byte of an encoded [`LinkCode`].
const CODE_TAG: u8 = 0x4C;
/// The first byte of a sealed link payload ([`LinkCode::seal`]).
const SEALED_TAG: u8 = 0x4B;
/// The version of the three layouts.
const VERSION: u8 = 1;
/// HKDF info of the key that seals a link payload.
const LINK_KEY_INFO: &[u8] = b"chat-crypto/v1/link-key";

/// The most devices one signed list may name: the server's per-user device limit.
pub const MAX_LISTED_DEVICES: usize = MAX_DEVICES_PER_USER;
/// Length of an encoded [`LinkCode`]: tag, version, device ID, device identity, secret.
pub const LINK_CODE_BYTES: usize = 2 + 8 + 64 + 32;

/// A user's account identity key (public half): the key that signs the user's device list
/// and group changes. 32 bytes, a valid Ed25519 point.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct AccountKey(VerifyingKey);

impl AccountKey {
    /// Parses a 32-byte Ed25519 public key.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, Error> {
        VerifyingKey::from_bytes(bytes)
            .map(Self)
            .map_err(|_| Error::InvalidKey)
    }

    /// The key's 32 bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The key as ed25519-dalek's type (what [`crate::AccountKeys`] returns).
    pub fn verifying_key(&self) -> VerifyingKey {
        self.0
    }
}

impl fmt::Debug for AccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccountKey({})", hex8(self.0.as_bytes()))
    }
}

/// A user's account identity key pair. The secret is wiped on drop and never printed.
pub struct AccountIdentity {
    key: SigningKey,
}

impl AccountIdentity {
    /// A fresh account identity (a new user, or a recovery).
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        Self::from_secret(&primitives::random32(rng))
    }

    /// The identity from its 32-byte Ed25519 seed ([`AccountIdentity::secret`]).
    pub fn from_secret(seed: &[u8; 32]) -> Self {
        Self {
            key: primitives::signing_key(seed),
        }
    }

    /// The 32-byte seed, to persist encrypted.
    pub fn secret(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.key.to_bytes())
    }

    /// The public half.
    pub fn public(&self) -> AccountKey {
        AccountKey(self.key.verifying_key())
    }

    /// The signing key, for the group changes this account signs.
    pub fn signing_key(&self) -> &SigningKey {
        &self.key
    }

    /// Signs `user`'s device list at `version` (which must exceed the last published one).
    /// Refuses more than [`MAX_LISTED_DEVICES`] devices or a device named twice.
    pub fn sign_device_list(
        &self,
        user: UserId,
        version: u64,
        devices: &[(DeviceId, IdentityPublic)],
    ) -> Result<SignedDeviceList, Error> {
        let mut sorted = BTreeMap::new();
        for (device, identity) in devices {
            if sorted.insert(*device, *identity).is_some() {
                return Err(Error::Malformed("device list names a device twice"));
            }
        }
        if sorted.len() > MAX_LISTED_DEVICES {
            return Err(Error::TooLarge("device list"));
        }
        let mut list = SignedDeviceList {
            user,
            version,
            account: self.public(),
            devices: sorted.into_iter().collect(),
            signature: [0; 64],
        };
        list.signature = primitives::sign(&self.key, sig_context::DEVICE_LIST, &[&list.body()]);
        Ok(list)
    }
}

impl fmt::Debug for AccountIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("AccountIdentity")
            .field(&self.public())
            .finish()
    }
}

/// A user's device list, signed by the user's account identity. Every value of this type
/// has a valid signature by [`SignedDeviceList::account`] (decoding verifies it); whether
/// that account key is the one to trust is the holder's decision.
///
/// Layout (big-endian): `44 01` ‖ user ID (u64) ‖ version (u64) ‖ account key (32) ‖ device
/// count (u32) ‖ per device in ascending ID order: device ID (u64) ‖ identity (64:
/// Ed25519 ‖ X25519) ‖ then the Ed25519 signature (64) of
/// `labelled("chat-crypto/v1/device-list", everything before the signature)`.
#[derive(Clone, PartialEq, Eq)]
pub struct SignedDeviceList {
    user: UserId,
    version: u64,
    account: AccountKey,
    devices: Vec<(DeviceId, IdentityPublic)>,
    signature: [u8; 64],
}

impl SignedDeviceList {
    /// The user whose devices these are.
    pub fn user(&self) -> UserId {
        self.user
    }

    /// The list's version; a later list of the same account has a larger one.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The account key that signed the list.
    pub fn account(&self) -> AccountKey {
        self.account
    }

    /// The devices and their identities, by ascending device ID.
    pub fn devices(&self) -> &[(DeviceId, IdentityPublic)] {
        &self.devices
    }

    /// The identity the list gives `device`, if it lists it.
    pub fn identity_of(&self, device: DeviceId) -> Option<IdentityPublic> {
        self.devices
            .binary_search_by_key(&device, |(d, _)| *d)
            .ok()
            .and_then(|i| self.devices.get(i))
            .map(|(_, identity)| *identity)
    }

    /// What changed from `older` to this list, for the holder of `older` who trusts its
    /// account key: [`DeviceListUpdate::AccountChanged`] when another account key signed
    /// this one (a recovery, or a server that invented an account), else the devices added,
    /// removed and changed. A lower version, or the same version with other contents, is
    /// refused ([`Error::DeviceListRollback`]): the server replays an old list or shows two
    /// lists of one version to different users.
    pub fn update_from(&self, older: &Self) -> Result<DeviceListUpdate, Error> {
        if self.user != older.user {
            return Err(Error::Malformed("device list of another user"));
        }
        if self.account != older.account {
            return Ok(DeviceListUpdate::AccountChanged);
        }
        if self.version < older.version || (self.version == older.version && self != older) {
            return Err(Error::DeviceListRollback);
        }
        let before: BTreeMap<_, _> = older.devices.iter().copied().collect();
        let after: BTreeMap<_, _> = self.devices.iter().copied().collect();
        let added = after
            .keys()
            .filter(|d| !before.contains_key(d))
            .copied()
            .collect();
        let removed = before
            .keys()
            .filter(|d| !after.contains_key(d))
            .copied()
            .collect();
        let changed = after
            .iter()
            .filter(|(d, id)| before.get(d).is_some_and(|old| old != *id))
            .map(|(d, _)| *d)
            .collect();
        Ok(DeviceListUpdate::Devices {
            added,
            removed,
            changed,
        })
    }

    /// The encoded, signed list.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.body();
        out.extend_from_slice(&self.signature);
        out
    }

    /// Parses and verifies an encoded list: the layout, ascending distinct device IDs, at
    /// most [`MAX_LISTED_DEVICES`], and the signature under the account key it names.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let mut r = Reader::new(bytes, "device list");
        r.expect_header(LIST_TAG, VERSION)?;
        let user = UserId::new(r.u64()?).map_err(|_| Error::Malformed("device list user"))?;
        let version = r.u64()?;
        let account = AccountKey::from_bytes(&r.array()?)?;
        let count = r.u32()? as usize;
        if count > MAX_LISTED_DEVICES {
            return Err(Error::TooLarge("device list"));
        }
        let mut devices: Vec<(DeviceId, IdentityPublic)> = Vec::with_capacity(count);
        for _ in 0..count {
            let device =
                DeviceId::new(r.u64()?).map_err(|_| Error::Malformed("device list device"))?;
            if devices.last().is_some_and(|(last, _)| *last >= device) {
                return Err(Error::Malformed("device list order"));
            }
            devices.push((device, IdentityPublic::read(&mut r)?));
        }
        let signature = r.array()?;
        r.finish()?;
        let list = Self {
            user,
            version,
            account,
            devices,
            signature,
        };
        primitives::verify(
            &account.to_bytes(),
            &signature,
            sig_context::DEVICE_LIST,
            &[&list.body()],
        )?;
        Ok(list)
    }

    /// Everything the signature covers.
    fn body(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(62 + 72 * self.devices.len() + 64);
        w.u8(LIST_TAG)
            .u8(VERSION)
            .u64(self.user.get())
            .u64(self.version)
            .raw(&self.account.to_bytes())
            .u32(len_u32(self.devices.len()));
        for (device, identity) in &self.devices {
            w.u64(device.get());
            identity.write(&mut w);
        }
        w.into_vec()
    }
}

impl fmt::Debug for SignedDeviceList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedDeviceList")
            .field("user", &self.user)
            .field("version", &self.version)
            .field("account", &self.account)
            .field("devices", &self.devices)
            .finish_non_exhaustive()
    }
}

/// How a newer device list differs from the one a contact trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceListUpdate {
    /// The same account key signed both: these devices were added, removed, or given
    /// another identity (a device that re-registered its keys).
    Devices {
        /// On the new list only.
        added: Vec<DeviceId>,
        /// On the old list only.
        removed: Vec<DeviceId>,
        /// On both, with another identity.
        changed: Vec<DeviceId>,
    },
    /// Another account key signed the new list: an account identity change.
    AccountChanged,
}

/// What a new device shows so that a linked device can add it (as a QR code, or as text).
/// Holds the link secret: never log it; it is wiped on drop.
pub struct LinkCode {
    device: DeviceId,
    identity: IdentityPublic,
    secret: Zeroizing<[u8; 32]>,
}

impl LinkCode {
    /// A code for this new `device` with its device `identity`, with a fresh secret.
    pub fn new<R: CryptoRng + ?Sized>(
        rng: &mut R,
        device: DeviceId,
        identity: IdentityPublic,
    ) -> Self {
        Self {
            device,
            identity,
            secret: Zeroizing::new(*primitives::random32(rng)),
        }
    }

    /// The device to link.
    pub fn device(&self) -> DeviceId {
        self.device
    }

    /// The identity of the device to link.
    pub fn identity(&self) -> IdentityPublic {
        self.identity
    }

    /// `4C 01` ‖ device ID (u64) ‖ device identity (64) ‖ secret (32):
    /// [`LINK_CODE_BYTES`] bytes.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut w = Writer::with_capacity(LINK_CODE_BYTES);
        w.u8(CODE_TAG).u8(VERSION).u64(self.device.get());
        self.identity.write(&mut w);
        w.raw(self.secret.as_slice());
        w.into_secret()
    }

    /// Parses [`LinkCode::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        let mut r = Reader::new(bytes, "link code");
        r.expect_header(CODE_TAG, VERSION)?;
        let device = DeviceId::new(r.u64()?).map_err(|_| Error::Malformed("link code device"))?;
        let identity = IdentityPublic::read(&mut r)?;
        let secret = Zeroizing::new(r.array()?);
        r.finish()?;
        Ok(Self {
            device,
            identity,
            secret,
        })
    }

    /// Run by the linked device that read the code: seals the account secret and `list`
    /// (the new list, which must name the code's device with the code's identity) for the
    /// new device. The server relays the result.
    ///
    /// Layout: `4B 01` ‖ nonce (24) ‖ XChaCha20-Poly1305 of (account seed (32) ‖ encoded
    /// list) under `HKDF-SHA256(salt = none, ikm = code secret, info =
    /// "chat-crypto/v1/link-key")`, with associated data `labelled("chat-crypto/v1/link-ad",
    /// [user ID (u64), device ID (u64), device identity (64)])`.
    pub fn seal<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        account: &AccountIdentity,
        list: &SignedDeviceList,
    ) -> Result<Vec<u8>, Error> {
        if list.account() != account.public()
            || list.identity_of(self.device) != Some(self.identity)
        {
            return Err(Error::Malformed(
                "link list does not name the linked device",
            ));
        }
        let mut plaintext = Zeroizing::new(account.secret().to_vec());
        plaintext.extend_from_slice(&list.encode());
        let nonce: [u8; NONCE_LEN] = {
            let mut n = [0u8; NONCE_LEN];
            rng.fill_bytes(&mut n);
            n
        };
        let sealed = primitives::seal(&*self.key()?, &nonce, &self.ad(list.user()), &plaintext)?;
        let mut out = Vec::with_capacity(2 + NONCE_LEN + sealed.len());
        out.extend_from_slice(&[SEALED_TAG, VERSION]);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Run by the new device on the sealed payload the server relayed: the account identity
    /// and the list that links this device. Refuses anything not sealed under this code's
    /// secret for `user`, and a list that is not `user`'s, not signed by the sealed account
    /// key, or that does not name this device with this identity.
    pub fn open(
        &self,
        user: UserId,
        sealed: &[u8],
    ) -> Result<(AccountIdentity, SignedDeviceList), Error> {
        let mut r = Reader::new(sealed, "sealed link");
        r.expect_header(SEALED_TAG, VERSION)?;
        let nonce = r.array::<NONCE_LEN>()?;
        let plaintext = Zeroizing::new(primitives::open(
            &*self.key()?,
            &nonce,
            &self.ad(user),
            r.rest(),
        )?);
        let mut p = Reader::new(&plaintext, "sealed link");
        let account = AccountIdentity::from_secret(&Zeroizing::new(p.array::<32>()?));
        let list = SignedDeviceList::decode(p.rest())?;
        if list.user() != user
            || list.account() != account.public()
            || list.identity_of(self.device) != Some(self.identity)
        {
            return Err(Error::Malformed("link list does not name this device"));
        }
        Ok((account, list))
    }

    fn key(&self) -> Result<Zeroizing<[u8; 32]>, Error> {
        let mut key = Zeroizing::new([0u8; 32]);
        primitives::hkdf(&[], self.secret.as_slice(), LINK_KEY_INFO, key.as_mut())?;
        Ok(key)
    }

    fn ad(&self, user: UserId) -> Vec<u8> {
        primitives::labelled(
            ad_context::LINK,
            &[
                &user.get().to_be_bytes(),
                &self.device.get().to_be_bytes(),
                &self.identity.to_bytes(),
            ],
        )
    }
}

impl fmt::Debug for LinkCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkCode")
            .field("device", &self.device)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
#[path = "account/tests.rs"]
mod tests;
