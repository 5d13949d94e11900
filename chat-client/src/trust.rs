//! Whom this device encrypts to (issue 16, docs/SECURITY.md "Account identities and device
//! lists"): every user's signed device list under the account key this device trusts, first
//! seen (trust on first use) or verified by comparing safety numbers; linking new devices of
//! this user; and the account identity changes the user has to accept.
//!
//! The rules:
//! - a device is encrypted to, and a message from it is opened, only if the trusted list of
//!   its user names it with the identity its session uses; anything else the server names is
//!   refused and reported once ([`Event::DeviceRefused`]);
//! - a list signed by the same account key replaces the trusted one only with a higher
//!   version (a rollback is ignored), and its added, removed and re-keyed devices are
//!   reported ([`Event::DevicesChanged`]);
//! - a list signed by another account key is an account identity change
//!   ([`Event::AccountChanged`]): of a verified contact (or of anyone under
//!   [`TrustPolicy::ConfirmEveryChange`]) it blocks sending to them until
//!   [`Client::accept_identity`]; of an unverified one it is accepted after the event, which
//!   comes before anything is decrypted from or sent to the new identity.

use std::collections::{BTreeMap, BTreeSet};

use chat_core::{DeviceAddress, DeviceId, ErrorCode, UserId};
use chat_crypto::{
    AccountIdentity, DeviceListUpdate, IdentityPublic, LinkCode, SafetyNumber, SignedDeviceList,
    Zeroizing,
};
use hyper::Method;
use serde_json::json;

use crate::client::{Client, Inner};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::store::Write;
use crate::wire;

const RECORD_TAG: u8 = 0x54;
const RECORD_VERSION: u8 = 1;

/// How the client treats a contact's account identity change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum TrustPolicy {
    /// Trust on first use: an unverified contact's new account identity is accepted once it
    /// has been announced; a verified contact's blocks sending until accepted.
    #[default]
    TrustOnFirstUse,
    /// Every account identity change blocks sending to that contact until accepted.
    ConfirmEveryChange,
}

/// The recipients of a send, as the trusted device lists sort them.
#[derive(Debug, Default)]
pub(crate) struct Recipients {
    /// Encrypted to, with the identity each must have.
    pub(crate) trusted: BTreeMap<DeviceAddress, IdentityPublic>,
    /// Named by the server but on no trusted list: an empty header, nothing else.
    pub(crate) unreadable: Vec<DeviceAddress>,
}

/// What this device trusts of one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TrustRecord {
    /// The device list under the trusted account key.
    pub(crate) list: SignedDeviceList,
    /// The user compared safety numbers for this account key.
    pub(crate) verified: bool,
    /// A list under another account key, waiting to be accepted.
    pub(crate) pending: Option<SignedDeviceList>,
}

impl TrustRecord {
    fn first(list: SignedDeviceList) -> Self {
        Self {
            list,
            verified: false,
            pending: None,
        }
    }

    /// The identity a message from `device` must come from: on the trusted list, or on a
    /// change still waiting to be accepted (receiving goes on; sending waits).
    fn receiving_identity(&self, device: DeviceId) -> Option<IdentityPublic> {
        self.list
            .identity_of(device)
            .or_else(|| self.pending.as_ref()?.identity_of(device))
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let list = self.list.encode();
        let pending = self.pending.as_ref().map(SignedDeviceList::encode);
        let mut out = vec![
            RECORD_TAG,
            RECORD_VERSION,
            u8::from(self.verified) | (u8::from(pending.is_some()) << 1),
        ];
        for part in std::iter::once(&list).chain(pending.as_ref()) {
            out.extend_from_slice(&u32::try_from(part.len()).unwrap_or(0).to_be_bytes());
            out.extend_from_slice(part);
        }
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self> {
        let corrupt = || Error::corrupt("trust record");
        let (head, mut rest) = bytes.split_at_checked(3).ok_or_else(corrupt)?;
        if head.get(..2) != Some(&[RECORD_TAG, RECORD_VERSION][..]) {
            return Err(corrupt());
        }
        let flags = head.get(2).copied().ok_or_else(corrupt)?;
        let mut take = || -> Result<SignedDeviceList> {
            let (len, tail) = rest.split_at_checked(4).ok_or_else(corrupt)?;
            let len = u32::from_be_bytes(len.try_into().map_err(|_| corrupt())?) as usize;
            let (part, tail) = tail.split_at_checked(len).ok_or_else(corrupt)?;
            rest = tail;
            SignedDeviceList::decode(part).map_err(|_| corrupt())
        };
        let list = take()?;
        let pending = if flags & 2 != 0 { Some(take()?) } else { None };
        if !rest.is_empty() {
            return Err(corrupt());
        }
        Ok(Self {
            list,
            verified: flags & 1 != 0,
            pending,
        })
    }
}

impl Inner {
    /// What this device trusts of `user`: from memory, or read (and its signature checked)
    /// from the store once per client.
    pub(crate) fn trust(&self, user: UserId) -> Result<Option<TrustRecord>> {
        if let Some(record) = self.trusted.lock().ok().and_then(|c| c.get(&user).cloned()) {
            return Ok(Some(record));
        }
        let record = self
            .store
            .trust(user)?
            .map(|b| TrustRecord::decode(&b))
            .transpose()?;
        if let (Some(record), Ok(mut cache)) = (&record, self.trusted.lock()) {
            cache.insert(user, record.clone());
        }
        Ok(record)
    }

    async fn save_trust(&self, user: UserId, record: &TrustRecord) -> Result<()> {
        self.commit_trust(user, record, Vec::new()).await
    }

    /// Commits `record` with `writes`, then keeps it in memory.
    async fn commit_trust(
        &self,
        user: UserId,
        record: &TrustRecord,
        mut writes: Vec<Write>,
    ) -> Result<()> {
        writes.push(Write::Trust {
            user,
            record: record.encode(),
        });
        // Dropped first: a failed commit must not leave a record in memory that is not stored.
        if let Ok(mut cache) = self.trusted.lock() {
            cache.remove(&user);
        }
        self.store.commit(writes).await?;
        if let Ok(mut cache) = self.trusted.lock() {
            cache.insert(user, record.clone());
        }
        Ok(())
    }

    /// The user's list as the server has it, checked: signed by the key it names and the
    /// user's (`None`: the user published none).
    async fn fetch_list(&self, user: UserId) -> Result<Option<SignedDeviceList>> {
        let view: wire::DeviceList = match self
            .http
            .get(&format!("/v1/users/{user}/device-list"))
            .await
        {
            Ok(v) => v,
            Err(e) if e.code() == Some(ErrorCode::NotFound) => return Ok(None),
            Err(e) => return Err(e),
        };
        let bytes =
            hex::decode(&view.list).map_err(|_| Error::protocol("device list is not hex"))?;
        let list = SignedDeviceList::decode(&bytes)?;
        if list.user() != user {
            return Err(Error::protocol(
                "the server sent another user's device list",
            ));
        }
        Ok(Some(list))
    }

    /// What this device trusts of `user`, fetching the server's list first if this device
    /// has none yet or `refresh` asks for it, and applying it by the rules above.
    pub(crate) async fn trust_of(&self, user: UserId, refresh: bool) -> Result<TrustRecord> {
        let stored = self.trust(user)?;
        if let Some(record) = &stored
            && !refresh
        {
            return Ok(record.clone());
        }
        let Some(fetched) = self.fetch_list(user).await? else {
            return stored.ok_or(Error::NoDeviceList(user));
        };
        let Some(mut record) = stored else {
            let record = TrustRecord::first(fetched);
            self.save_trust(user, &record).await?;
            return Ok(record);
        };
        match fetched.update_from(&record.list) {
            Err(e) => {
                // An older list, or two lists of one version: keep what is trusted.
                tracing::warn!(%user, cause = %e, "refused a device list");
            }
            Ok(DeviceListUpdate::Devices {
                added,
                removed,
                changed,
            }) => {
                if added.is_empty() && removed.is_empty() && changed.is_empty() {
                    return Ok(record);
                }
                record.list = fetched;
                self.commit_trust(user, &record, self.forget_sessions(user, &changed))
                    .await?;
                self.emit(Event::DevicesChanged {
                    user,
                    added,
                    removed,
                    changed,
                });
            }
            Ok(DeviceListUpdate::AccountChanged) => {
                if record.pending.as_ref() == Some(&fetched) {
                    return Ok(record);
                }
                let blocked = record.verified || self.policy() == TrustPolicy::ConfirmEveryChange;
                let verified = record.verified;
                if blocked {
                    record.pending = Some(fetched);
                    self.save_trust(user, &record).await?;
                } else {
                    record = self.accept(user, record.list.clone(), fetched).await?;
                }
                self.emit(Event::AccountChanged {
                    user,
                    verified,
                    blocked,
                });
            }
        }
        Ok(record)
    }

    /// Replaces `old` (the list under the previous account key) by `new`, unverified: the
    /// sessions with the old devices go (their identities are not the new account's).
    async fn accept(
        &self,
        user: UserId,
        old: SignedDeviceList,
        new: SignedDeviceList,
    ) -> Result<TrustRecord> {
        let gone: Vec<DeviceId> = old.devices().iter().map(|(d, _)| *d).collect();
        let record = TrustRecord::first(new);
        self.commit_trust(user, &record, self.forget_sessions(user, &gone))
            .await?;
        Ok(record)
    }

    fn forget_sessions(&self, user: UserId, devices: &[DeviceId]) -> Vec<Write> {
        devices
            .iter()
            .map(|&device| {
                Write::Sessions(
                    DeviceAddress { user, device },
                    chat_crypto::DeviceSessions::new().pickle(),
                )
            })
            .collect()
    }

    /// Splits `devices` (the server's recipients for a send) into the ones this device
    /// trusts, with their identities, and the ones it does not encrypt to (they get an empty
    /// header: the server's coverage rule is met and they learn nothing). A device the server
    /// names that is not on its user's trusted list (after fetching the list again) is
    /// reported; a user with no list (or one the server hides, as for a user who blocks this
    /// one) is not encrypted to. Fails for a user whose account identity change waits to be
    /// accepted.
    pub(crate) async fn trusted_recipients(&self, devices: &[DeviceAddress]) -> Result<Recipients> {
        let mut by_user: BTreeMap<UserId, Vec<DeviceId>> = BTreeMap::new();
        for d in devices {
            by_user.entry(d.user).or_default().push(d.device);
        }
        let mut out = Recipients::default();
        for (user, named) in by_user {
            let addresses = named.iter().map(|&device| DeviceAddress { user, device });
            let mut record = match self.trust_of(user, false).await {
                Ok(record) => record,
                Err(Error::NoDeviceList(_)) => {
                    out.unreadable.extend(addresses);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let unknown = |r: &TrustRecord| named.iter().any(|d| r.list.identity_of(*d).is_none());
            if unknown(&record) || record.pending.is_some() {
                record = self.trust_of(user, true).await?;
            }
            if record.pending.is_some() {
                // This user's own account changed: recovered on another device.
                return Err(if user == self.me.user {
                    Error::NotLinked
                } else {
                    Error::IdentityNotAccepted(user)
                });
            }
            for address in addresses {
                match record.list.identity_of(address.device) {
                    Some(identity) => {
                        out.trusted.insert(address, identity);
                    }
                    None => {
                        self.refuse(address);
                        out.unreadable.push(address);
                    }
                }
            }
        }
        Ok(out)
    }

    /// The identity a message from `device` must come from, or `None` if the device is on
    /// no list this device trusts. The user's list is fetched again first when the device is
    /// on none, or when it `claims` (in a first message) another identity than the trusted
    /// one: it may have been linked again with new keys.
    pub(crate) async fn sender_identity(
        &self,
        device: DeviceAddress,
        claims: Option<IdentityPublic>,
    ) -> Result<Option<IdentityPublic>> {
        let known = match self.trust_of(device.user, false).await {
            Ok(record) => record.receiving_identity(device.device),
            Err(Error::NoDeviceList(_)) => None,
            Err(e) => return Err(e),
        };
        if known.is_some() && (claims.is_none() || claims == known) {
            return Ok(known);
        }
        match self.trust_of(device.user, true).await {
            Ok(record) => Ok(record.receiving_identity(device.device)),
            Err(Error::NoDeviceList(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reports a device the server named that no trusted list has, once per device.
    pub(crate) fn refuse(&self, device: DeviceAddress) {
        let first = self
            .refused
            .lock()
            .map(|mut r| r.insert(device))
            .unwrap_or(true);
        tracing::warn!(
            ?device,
            "refused a device that is on no trusted device list"
        );
        if first {
            self.emit(Event::DeviceRefused { device });
        }
    }

    fn policy(&self) -> TrustPolicy {
        self.policy.lock().map(|p| *p).unwrap_or_default()
    }

    /// Publishes this user's list (the server checks it and fans out to its devices).
    async fn publish(&self, list: &SignedDeviceList) -> Result<()> {
        self.http
            .send(
                Method::PUT,
                "/v1/device-list",
                Some(&json!({"list": hex::encode(list.encode())})),
            )
            .await
    }

    /// Run once per device (through [`Inner::establish_if_needed`]), after it published its
    /// keys: makes the user's account identity if the user has none (the first device), else
    /// leaves this device waiting to be linked.
    async fn establish_account(&self) -> Result<()> {
        let me = self.me;
        if let Some(list) = self.fetch_list(me.user).await? {
            return self.save_trust(me.user, &TrustRecord::first(list)).await;
        }
        let identity = AccountIdentity::generate(&mut rand::rng());
        let list =
            identity.sign_device_list(me.user, 1, &[(me.device, self.crypto.identity()?)])?;
        // Kept before the list is published: a list the server holds must have its secret.
        self.crypto.set_account_identity(Some(identity)).await?;
        match self.publish(&list).await {
            Ok(()) => self.save_trust(me.user, &own(list)).await,
            Err(e) if e.code() == Some(ErrorCode::Conflict) => {
                // Another device of this user published first: this one waits to be linked.
                self.crypto.set_account_identity(None).await?;
                match self.fetch_list(me.user).await? {
                    Some(list) => self.save_trust(me.user, &TrustRecord::first(list)).await,
                    None => Ok(()),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Makes the account identity for a device from before device lists (it has none and
    /// trusts no list of its own user) when it is online, as at log-in: the user's first such
    /// device publishes the list, later ones wait to be linked. Run with the key upkeep.
    pub(crate) async fn establish_if_needed(&self) -> Result<()> {
        // One at a time: log-in and the driver's first key upkeep may both get here.
        let _one = self.establishing.lock().await;
        if self.crypto.account_key()?.is_some() || self.trust(self.me.user)?.is_some() {
            return Ok(());
        }
        self.establish_account().await
    }

    /// Whether this device holds the account identity and is on its user's trusted list.
    pub(crate) fn linked(&self) -> Result<bool> {
        let Some(account) = self.crypto.account_key()? else {
            return Ok(false);
        };
        let mine = self.crypto.identity()?;
        // A pending change of this user's own account: the account was recovered elsewhere,
        // and this device's account identity is no longer the user's.
        Ok(self.trust(self.me.user)?.is_some_and(|r| {
            r.pending.is_none()
                && r.list.account() == account
                && r.list.identity_of(self.me.device) == Some(mine)
        }))
    }

    /// Signs and publishes a new list of this user's devices: the trusted one changed by
    /// `change`, one version up. Returns it, trusted.
    async fn change_own_list(
        &self,
        change: impl FnOnce(&mut Vec<(DeviceId, IdentityPublic)>),
    ) -> Result<SignedDeviceList> {
        if !self.linked()? {
            return Err(Error::NotLinked);
        }
        let me = self.me.user;
        let current = self.trust_of(me, true).await?;
        let mut devices = current.list.devices().to_vec();
        change(&mut devices);
        let version = current.list.version().saturating_add(1);
        let list = self
            .crypto
            .with_account_identity(|a| a.sign_device_list(me, version, &devices))??;
        self.publish(&list).await?;
        let old = current.list.devices();
        let added = diff(list.devices(), old);
        let removed = diff(old, list.devices());
        self.save_trust(me, &own(list.clone())).await?;
        self.emit(Event::DevicesChanged {
            user: me,
            added,
            removed,
            changed: Vec::new(),
        });
        Ok(list)
    }
}

impl Inner {
    /// Takes this device off its user's list before it logs out, unless it is the last one.
    pub(crate) async fn unlist_self(&self) -> Result<()> {
        if !self.linked()? {
            return Ok(());
        }
        let me = self.me.device;
        let alone = self
            .trust(self.me.user)?
            .is_none_or(|r| r.list.devices().iter().all(|(d, _)| *d == me));
        if !alone {
            self.change_own_list(|devices| devices.retain(|(d, _)| *d != me))
                .await?;
        }
        Ok(())
    }
}

/// This user's own list: trusted as verified (this device signed or received it itself).
fn own(list: SignedDeviceList) -> TrustRecord {
    TrustRecord {
        list,
        verified: true,
        pending: None,
    }
}

fn diff(a: &[(DeviceId, IdentityPublic)], b: &[(DeviceId, IdentityPublic)]) -> Vec<DeviceId> {
    let b: BTreeSet<DeviceId> = b.iter().map(|(d, _)| *d).collect();
    a.iter()
        .map(|(d, _)| *d)
        .filter(|d| !b.contains(d))
        .collect()
}

impl Client {
    /// Whether this device is linked: it holds the account identity and is on the user's
    /// signed device list, so contacts encrypt to it. A device whose user recovered the
    /// account elsewhere (its own user's [`Event::AccountChanged`]) is no longer linked. The first device of a user is linked
    /// at registration; a device logged in later waits until a linked device adds it
    /// ([`Client::link_code`], [`Client::link_device`]) or the user recovers the account on
    /// it ([`Client::recover_account`]). An unlinked device cannot send.
    pub async fn is_linked(&self) -> Result<bool> {
        self.local(|c| c.inner.linked()).await
    }

    /// The code this unlinked device shows (as a QR code or text) for a linked device of the
    /// same user to add it: its device ID, its identity and a fresh secret, hex-encoded.
    /// Treat it as a secret: whoever holds it can hand this device an account identity. The
    /// same code is returned until the client is dropped.
    pub async fn link_code(&self) -> Result<Zeroizing<String>> {
        self.local(Self::make_link_code).await
    }

    fn make_link_code(&self) -> Result<Zeroizing<String>> {
        if self.inner.linked()? {
            return Err(Error::AlreadyLinked);
        }
        let mut slot = self
            .inner
            .link_code
            .lock()
            .map_err(|_| Error::poisoned("link state"))?;
        let code = match slot.as_ref() {
            Some(code) => code,
            None => slot.insert(LinkCode::new(
                &mut rand::rng(),
                self.inner.me.device,
                self.inner.crypto.identity()?,
            )),
        };
        Ok(Zeroizing::new(hex::encode(&*code.to_bytes())))
    }

    /// Run on a linked device with the code an unlinked device of this user shows: adds that
    /// device to the signed device list and relays the account identity to it, sealed under
    /// the code's secret (the server sees neither). Returns the new device's ID. The new
    /// device then calls [`Client::finish_link`].
    pub async fn link_device(&self, code: &str) -> Result<DeviceId> {
        let bytes = Zeroizing::new(
            hex::decode(code.trim()).map_err(|e| Error::invalid_because("a link code (hex)", e))?,
        );
        let code = LinkCode::from_bytes(&bytes)?;
        let (device, identity) = (code.device(), code.identity());
        let list = self
            .inner
            .change_own_list(|devices| {
                devices.retain(|(d, _)| *d != device);
                devices.push((device, identity));
            })
            .await?;
        let sealed = self
            .inner
            .crypto
            .with_account_identity(|a| code.seal(&mut rand::rng(), a, &list))??;
        self.inner
            .http
            .send(
                Method::PUT,
                &format!("/v1/devices/{device}/link"),
                Some(&json!({"sealed": hex::encode(sealed)})),
            )
            .await?;
        Ok(device)
    }

    /// Run on the unlinked device after a linked one used its code: fetches the sealed
    /// account identity, checks it, and links this device. `Ok(false)` if it has not arrived
    /// yet (call again; or wait for the other device to finish first).
    pub async fn finish_link(&self) -> Result<bool> {
        let Some(code) = self
            .inner
            .link_code
            .lock()
            .map_err(|_| Error::poisoned("link state"))?
            .take()
        else {
            return Err(Error::NoLinkCode);
        };
        let view: wire::Link = match self.inner.http.get("/v1/link").await {
            Ok(v) => v,
            Err(e) if e.code() == Some(ErrorCode::NotFound) => {
                self.put_back(code)?;
                return Ok(false);
            }
            Err(e) => {
                self.put_back(code)?;
                return Err(e);
            }
        };
        let sealed = hex::decode(&view.sealed).map_err(|_| Error::protocol("link payload"))?;
        let (account, list) = match code.open(self.inner.me.user, &sealed) {
            Ok(opened) => opened,
            // Not sealed under this code (an old payload, or the server's own): wait on.
            Err(e) => {
                tracing::warn!(cause = %e, "refused a link payload");
                self.put_back(code)?;
                return Ok(false);
            }
        };
        self.inner
            .crypto
            .set_account_identity(Some(account))
            .await?;
        self.inner
            .save_trust(self.inner.me.user, &own(list))
            .await?;
        Ok(true)
    }

    fn put_back(&self, code: LinkCode) -> Result<()> {
        *self
            .inner
            .link_code
            .lock()
            .map_err(|_| Error::poisoned("link state"))? = Some(code);
        Ok(())
    }

    /// Recovers the account on this device when no linked device is left: makes a new
    /// account identity with this device as its only device. Every contact sees an account
    /// identity change ([`Event::AccountChanged`]); the other devices of this user are no
    /// longer encrypted to and must be linked again.
    pub async fn recover_account(&self) -> Result<()> {
        let me = self.inner.me;
        let version = match self.inner.fetch_list(me.user).await? {
            Some(list) => list.version().saturating_add(1),
            None => 1,
        };
        let identity = AccountIdentity::generate(&mut rand::rng());
        let list = identity.sign_device_list(
            me.user,
            version,
            &[(me.device, self.inner.crypto.identity()?)],
        )?;
        self.inner
            .crypto
            .set_account_identity(Some(identity))
            .await?;
        self.inner.publish(&list).await?;
        self.inner.save_trust(me.user, &own(list)).await
    }

    /// Removes another device of this user: signs a list without it (contacts stop
    /// encrypting to it, and every group sender key it held is replaced before the next
    /// group message), then removes it on the server (its token stops working).
    pub async fn remove_device(&self, device: DeviceId) -> Result<()> {
        if device == self.inner.me.device {
            return Err(Error::ThisDevice);
        }
        self.inner
            .change_own_list(|devices| devices.retain(|(d, _)| *d != device))
            .await?;
        self.inner
            .http
            .send(
                Method::DELETE,
                &format!("/v1/devices/{device}"),
                None::<&()>,
            )
            .await
    }

    /// The devices of `user` this device encrypts to: their signed list under the account
    /// identity this device trusts (fetched again from the server, and applied by the rules
    /// of [`Event::DevicesChanged`] and [`Event::AccountChanged`]).
    pub async fn devices_of(&self, user: UserId) -> Result<Vec<DeviceId>> {
        let record = self.inner.trust_of(user, true).await?;
        Ok(record.list.devices().iter().map(|(d, _)| *d).collect())
    }

    /// The safety number of this user and `other`: from the two account identities this
    /// device trusts (no server call once `other` is known, no prekey spent). It changes
    /// only when an account identity changes, not when devices come and go. Compare it out
    /// of band, then call [`Client::verify`].
    pub async fn safety_number(&self, other: UserId) -> Result<SafetyNumber> {
        let mine = self.inner.trust_of(self.user(), false).await?;
        let theirs = self.inner.trust_of(other, false).await?;
        Ok(chat_crypto::safety_number(
            self.user(),
            &mine.list.account(),
            other,
            &theirs.list.account(),
        ))
    }

    /// Marks `user` as verified: the user compared safety numbers. From now on a change of
    /// their account identity blocks sending to them until [`Client::accept_identity`].
    pub async fn verify(&self, user: UserId) -> Result<()> {
        let mut record = self.inner.trust_of(user, false).await?;
        record.verified = true;
        self.inner.save_trust(user, &record).await
    }

    /// Whether `user` is verified (and their trusted account identity unchanged since).
    pub async fn is_verified(&self, user: UserId) -> Result<bool> {
        self.local(move |c| Ok(c.inner.trust(user)?.is_some_and(|r| r.verified)))
            .await
    }

    /// Accepts `user`'s new account identity after [`Event::AccountChanged`] blocked
    /// sending to them: it becomes the trusted one, unverified.
    pub async fn accept_identity(&self, user: UserId) -> Result<()> {
        let Some(record) = self.inner.trust(user)? else {
            return Err(Error::NoDeviceList(user));
        };
        if let Some(pending) = record.pending {
            self.inner.accept(user, record.list, pending).await?;
        }
        Ok(())
    }

    /// Sets how account identity changes of contacts are treated (default:
    /// [`TrustPolicy::TrustOnFirstUse`]). Not persisted: set it after opening.
    pub fn set_trust_policy(&self, policy: TrustPolicy) {
        if let Ok(mut p) = self.inner.policy.lock() {
            *p = policy;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn list(seed: u8, version: u64) -> SignedDeviceList {
        let mut rng = rand::rngs::StdRng::seed_from_u64(u64::from(seed));
        let identity = chat_crypto::IdentityKeys::generate(&mut rng).public();
        AccountIdentity::from_secret(&[seed; 32])
            .sign_device_list(
                UserId::new(3).unwrap(),
                version,
                &[(DeviceId::new(5).unwrap(), identity)],
            )
            .unwrap()
    }

    #[test]
    fn records_round_trip_and_refuse_corruption() {
        for record in [
            TrustRecord::first(list(1, 1)),
            TrustRecord {
                list: list(1, 2),
                verified: true,
                pending: Some(list(2, 3)),
            },
        ] {
            let bytes = record.encode();
            assert_eq!(TrustRecord::decode(&bytes).unwrap(), record);
            assert!(TrustRecord::decode(&bytes[..bytes.len() - 1]).is_err());
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(TrustRecord::decode(&longer).is_err());
        }
    }
}
