//! The multi-recipient wire shape: one shared body, one small header per device.
//!
//! One-to-one: the sender picks a fresh 32-byte content key K, derives from it the body's AEAD
//! key and a 32-byte key commitment (HKDF-SHA256), seals the plaintext once into the body with
//! XChaCha20-Poly1305 (random nonce) next to the commitment, and ratchet-encrypts `K ||
//! SHA-256(body)` into each recipient device's header. A receiver checks the body hash before
//! opening the body, so a server cannot swap bodies between headers, and checks the commitment
//! against its K, so a sender cannot give two devices two keys that open one body to two
//! different plaintexts (body version 2; version 1 had no commitment and is refused). Groups put the sender-key
//! ciphertext in the body and use the headers only to carry sender keys (see [`crate::group`]).
//!
//! Header payloads start with a kind byte: `1` content key, `2` sender key distribution.

use std::fmt;

use rand_core::CryptoRng;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::codec::{Reader, Writer};
use crate::group::SenderKeyDistribution;
use crate::identity::{Account, len_u32};
use crate::primitives::{self, Key32, NONCE_LEN, TAG_LEN, ad_context};
use crate::session::{DeviceAddress, Session};
use crate::{Error, MAX_DEVICE_HEADER_BYTES};

/// Bytes a pairwise body adds to its plaintext: version, nonce, key commitment, tag.
pub const PAIRWISE_BODY_OVERHEAD: usize = 1 + NONCE_LEN + COMMITMENT_LEN + TAG_LEN;

/// The version byte of a one-to-one body: 2 since the body carries a key commitment.
pub(crate) const BODY_VERSION: u8 = 2;
const COMMITMENT_LEN: usize = 32;

const PAYLOAD_CONTENT_KEY: u8 = 1;
const PAYLOAD_SENDER_KEY: u8 = 2;
const OUTGOING_TAG: u8 = 0xA5;
const OUTGOING_VERSION: u8 = 1;

/// The body key and body hash of one outgoing message.
struct ContentKey {
    key: Key32,
    body_hash: [u8; 32],
}

impl ContentKey {
    fn payload(&self) -> Zeroizing<Vec<u8>> {
        let mut w = Writer::with_capacity(65);
        w.u8(PAYLOAD_CONTENT_KEY)
            .raw(&*self.key)
            .raw(&self.body_hash);
        w.into_secret()
    }
}

/// One message ready for the server: the shared body and a header per device.
///
/// Persist it (with [`OutgoingMessage::pickle`]) together with the sessions before sending; a
/// retried send sends these same bytes. When the server answers that devices are missing or
/// extra, call [`OutgoingMessage::add_devices`] / [`OutgoingMessage::remove_devices`]: the body
/// stays the same.
pub struct OutgoingMessage {
    /// The shared ciphertext, sent once.
    pub body: Vec<u8>,
    /// One header per recipient device, each at most [`MAX_DEVICE_HEADER_BYTES`] bytes.
    pub headers: Vec<(DeviceAddress, Vec<u8>)>,
    /// Devices whose session could not encrypt (it is unchanged; e.g. start a new session with
    /// a fresh bundle and call [`OutgoingMessage::add_devices`]). Not pickled.
    pub failed: Vec<(DeviceAddress, Error)>,
    content: ContentKey,
}

/// Encrypts `plaintext` once for every device that `sessions` lead to (the recipients' devices
/// and the sender's own other devices).
///
/// Each session that made a header advances; save them all before the message leaves the
/// device. A session that fails is left unchanged and listed in
/// [`OutgoingMessage::failed`], so one broken session never blocks the others.
pub fn encrypt_for_devices<'s, R: CryptoRng + ?Sized>(
    rng: &mut R,
    plaintext: &[u8],
    sessions: impl IntoIterator<Item = &'s mut Session>,
) -> Result<OutgoingMessage, Error> {
    let key = primitives::random32(rng);
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    let (body_key, commitment) = primitives::body_keys(&key)?;
    let mut body = Vec::with_capacity(PAIRWISE_BODY_OVERHEAD + plaintext.len());
    body.push(BODY_VERSION);
    body.extend_from_slice(&nonce);
    body.extend_from_slice(&commitment);
    body.extend_from_slice(&primitives::seal(
        &body_key,
        &nonce,
        ad_context::BODY,
        plaintext,
    )?);
    let content = ContentKey {
        key,
        body_hash: primitives::sha256(&body),
    };
    let mut out = OutgoingMessage {
        body,
        headers: Vec::new(),
        failed: Vec::new(),
        content,
    };
    out.add_devices(rng, sessions);
    Ok(out)
}

impl OutgoingMessage {
    /// Adds (or replaces) the headers for the devices `sessions` lead to, reusing the body.
    /// Sessions that fail are listed in [`OutgoingMessage::failed`] and left unchanged.
    pub fn add_devices<'s, R: CryptoRng + ?Sized>(
        &mut self,
        rng: &mut R,
        sessions: impl IntoIterator<Item = &'s mut Session>,
    ) {
        let payload = self.content.payload();
        for session in sessions {
            let to = session.their_address();
            self.headers.retain(|(a, _)| *a != to);
            self.failed.retain(|(a, _)| *a != to);
            match session.encrypt_payload(rng, &payload) {
                Ok(header) => self.headers.push((to, header)),
                Err(e) => self.failed.push((to, e)),
            }
        }
    }

    /// Drops the headers for devices the server says are gone.
    pub fn remove_devices(&mut self, extra: &[DeviceAddress]) {
        self.headers.retain(|(a, _)| !extra.contains(a));
    }

    /// Versioned secret bytes (they contain the content key).
    pub fn pickle(&self) -> Zeroizing<Vec<u8>> {
        let size = self.body.len()
            + self
                .headers
                .iter()
                .map(|(_, h)| 24 + h.len())
                .sum::<usize>();
        let mut w = Writer::with_capacity(80 + size);
        w.u8(OUTGOING_TAG).u8(OUTGOING_VERSION);
        w.raw(&*self.content.key)
            .raw(&self.content.body_hash)
            .var(&self.body);
        w.u32(len_u32(self.headers.len()));
        for (a, h) in &self.headers {
            w.u64(a.user).u64(a.device).var(h);
        }
        w.into_secret()
    }

    /// Restores [`OutgoingMessage::pickle`].
    pub fn from_pickle(bytes: &[u8]) -> Result<Self, Error> {
        let mut r = Reader::new(bytes, "outgoing message pickle");
        r.expect_header(OUTGOING_TAG, OUTGOING_VERSION)?;
        let key = Zeroizing::new(r.array()?);
        let body_hash = r.array()?;
        let body = r.var(bytes.len())?.to_vec();
        let n = r.u32()?;
        let mut headers = Vec::new();
        for _ in 0..n {
            let a = DeviceAddress::read(&mut r)?;
            headers.push((a, r.var(MAX_DEVICE_HEADER_BYTES)?.to_vec()));
        }
        r.finish()?;
        Ok(Self {
            body,
            headers,
            failed: Vec::new(),
            content: ContentKey { key, body_hash },
        })
    }
}

impl fmt::Debug for OutgoingMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutgoingMessage")
            .field("body_len", &self.body.len())
            .field(
                "devices",
                &self.headers.iter().map(|(a, _)| a).collect::<Vec<_>>(),
            )
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

/// Wraps a sender key distribution into a header for each device `sessions` lead to; send them
/// with the group body (or with an empty body). A session that fails is left unchanged and
/// its entry carries the error.
pub fn sender_key_headers<'s, R: CryptoRng + ?Sized>(
    rng: &mut R,
    distribution: &SenderKeyDistribution,
    sessions: impl IntoIterator<Item = &'s mut Session>,
) -> Vec<(DeviceAddress, Result<Vec<u8>, Error>)> {
    let mut w = Writer::with_capacity(160);
    w.u8(PAYLOAD_SENDER_KEY);
    distribution.write(&mut w);
    let payload = w.into_secret();
    sessions
        .into_iter()
        .map(|s| (s.their_address(), s.encrypt_payload(rng, &payload)))
        .collect()
}

/// What a device header carried.
#[non_exhaustive]
pub enum Decrypted {
    /// The plaintext of a one-to-one (pairwise) message.
    Message(Vec<u8>),
    /// A sender key of the session's remote device; pass it to
    /// [`crate::SenderKeyReceiver`] and open the group body with that.
    SenderKey(SenderKeyDistribution),
}

impl fmt::Debug for Decrypted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print plaintext.
        match self {
            Self::Message(m) => write!(f, "Message({} bytes)", m.len()),
            Self::SenderKey(d) => f.debug_tuple("SenderKey").field(d).finish(),
        }
    }
}

pub(crate) fn open_payload(payload: &[u8], body: &[u8]) -> Result<Decrypted, Error> {
    let mut r = Reader::new(payload, "header payload");
    match r.u8()? {
        PAYLOAD_CONTENT_KEY => {
            let key = Zeroizing::new(r.array::<32>()?);
            let hash: [u8; 32] = r.array()?;
            r.finish()?;
            if !bool::from(primitives::sha256(body).ct_eq(&hash)) {
                return Err(Error::BodyMismatch);
            }
            let mut br = Reader::new(body, "body");
            let version = br.u8()?;
            if version != BODY_VERSION {
                return Err(Error::UnsupportedVersion(version));
            }
            let nonce = br.array()?;
            let commitment: [u8; COMMITMENT_LEN] = br.array()?;
            let (body_key, expected) = primitives::body_keys(&key)?;
            if !bool::from(expected.ct_eq(&commitment)) {
                return Err(Error::KeyCommitment);
            }
            let plaintext = primitives::open(&body_key, &nonce, ad_context::BODY, br.rest())?;
            Ok(Decrypted::Message(plaintext))
        }
        PAYLOAD_SENDER_KEY => {
            let d = SenderKeyDistribution::read(&mut r)?;
            r.finish()?;
            Ok(Decrypted::SenderKey(d))
        }
        _ => Err(Error::Malformed("header payload")),
    }
}

impl Session {
    /// Opens this device's `header` and the shared `body` of a message from the session's
    /// remote device. The session changes only if everything verified and decrypted.
    pub fn decrypt(&mut self, header: &[u8], body: &[u8]) -> Result<Decrypted, Error> {
        self.decrypt_with(header, |payload| open_payload(payload, body))
    }

    /// Starts the responder's side of a session from a prekey message (see
    /// [`crate::is_prekey_message`]) and opens it. `their_address` is the sender device as the
    /// server reported it. Consumes the one-time prekey it used only on success; save the
    /// account and the session afterwards. Compare [`Session::their_identity`] with the
    /// identity you knew for that device.
    pub fn accept(
        account: &mut Account,
        our_address: DeviceAddress,
        their_address: DeviceAddress,
        header: &[u8],
        body: &[u8],
    ) -> Result<(Self, Decrypted), Error> {
        Self::accept_with(account, our_address, their_address, header, |payload| {
            open_payload(payload, body)
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn payload(key: &[u8; 32], body: &[u8]) -> Vec<u8> {
        let mut p = vec![PAYLOAD_CONTENT_KEY];
        p.extend_from_slice(key);
        p.extend_from_slice(&primitives::sha256(body));
        p
    }

    /// A body sealed under `seal_with`'s body key but carrying `commit_to`'s commitment.
    fn body(seal_with: &[u8; 32], commit_to: &[u8; 32], plaintext: &[u8]) -> Vec<u8> {
        let nonce = [9u8; NONCE_LEN];
        let (key, _) = primitives::body_keys(seal_with).unwrap();
        let (_, commitment) = primitives::body_keys(commit_to).unwrap();
        let mut b = vec![BODY_VERSION];
        b.extend_from_slice(&nonce);
        b.extend_from_slice(&commitment);
        b.extend(primitives::seal(&key, &nonce, ad_context::BODY, plaintext).unwrap());
        b
    }

    #[test]
    fn header_payload_layouts_are_as_documented() {
        // Content key: 01 ‖ K (32) ‖ SHA-256(body) (32).
        let content = ContentKey {
            key: Zeroizing::new([5; 32]),
            body_hash: [6; 32],
        };
        let p = content.payload();
        assert_eq!(p.len(), 65);
        assert_eq!(
            (p[0], &p[1..33], &p[33..65]),
            (1, &[5u8; 32][..], &[6u8; 32][..])
        );
        // Sender key distribution: 02 ‖ group id length (u32 BE) ‖ group id ‖ key id (u32 BE)
        // ‖ iteration (u32 BE) ‖ chain key (32) ‖ Ed25519 public signing key (32).
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut sk =
            crate::SenderKey::new(&mut rng, &7u64.to_be_bytes(), DeviceAddress::new(1, 1)).unwrap();
        sk.encrypt(&mut rng, b"advance one").unwrap();
        let mut w = Writer::with_capacity(100);
        w.u8(PAYLOAD_SENDER_KEY);
        sk.distribution().write(&mut w);
        let p = w.into_vec();
        assert_eq!(p.len(), 1 + 4 + 8 + 4 + 4 + 32 + 32);
        assert_eq!(p[0], 2);
        assert_eq!(p[1..5], 8u32.to_be_bytes());
        assert_eq!(p[5..13], 7u64.to_be_bytes());
        assert_eq!(p[13..17], sk.key_id().to_be_bytes());
        assert_eq!(p[17..21], 1u32.to_be_bytes());
        let Decrypted::SenderKey(d) = open_payload(&p, &[]).unwrap() else {
            panic!("not a sender key");
        };
        assert_eq!(
            (d.group_id(), d.key_id()),
            (&7u64.to_be_bytes()[..], sk.key_id())
        );
    }

    #[test]
    fn a_body_opens_only_under_the_key_it_commits_to() {
        let (k1, k2) = ([1u8; 32], [2u8; 32]);
        let honest = body(&k1, &k1, b"same for everyone");
        let Decrypted::Message(m) = open_payload(&payload(&k1, &honest), &honest).unwrap() else {
            panic!("not a message");
        };
        assert_eq!(m, b"same for everyone");
        // A sender who gives a second device another key for the same body (as a body that
        // opens under two keys would need; XChaCha20-Poly1305 does not prevent one) is caught
        // by the commitment before any decryption, whatever the ciphertext.
        let split = body(&k2, &k1, b"something else");
        assert_eq!(
            open_payload(&payload(&k2, &split), &split).unwrap_err(),
            Error::KeyCommitment
        );
        // A version 1 body (no commitment) is refused.
        let mut v1 = honest.clone();
        v1[0] = 1;
        assert_eq!(
            open_payload(&payload(&k1, &v1), &v1).unwrap_err(),
            Error::UnsupportedVersion(1)
        );
    }
}
