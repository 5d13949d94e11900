//! The primitives as this crate wires them: HKDF-SHA256, HMAC-SHA256 chain steps, X25519 with
//! the contributory check, XChaCha20-Poly1305 and labelled Ed25519 signatures.
//!
//! Every KDF info string lives in [`KdfLabels`], so tests can swap in another protocol's labels
//! (libsignal's) and reproduce its known-answer values.

use chacha20poly1305::XChaCha20Poly1305;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand_core::CryptoRng;
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::Error;

/// A 32-byte secret that zeroizes on drop.
pub(crate) type Key32 = Zeroizing<[u8; 32]>;

/// XChaCha20-Poly1305 nonce length.
pub(crate) const NONCE_LEN: usize = 24;
/// Poly1305 tag length.
pub(crate) const TAG_LEN: usize = 16;

/// The HKDF info labels, one per use.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KdfLabels {
    /// X3DH: SK = HKDF(salt = 0^32, ikm = 0xFF^32 || DH1 || DH2 || DH3 [|| DH4], info).
    pub(crate) x3dh: &'static [u8],
    /// KDF_RK: (RK', CK) = HKDF(salt = RK, ikm = DH output, info), 64 bytes.
    pub(crate) root: &'static [u8],
    /// Message key expansion: AEAD key = HKDF(salt = 0^32, ikm = MK, info), 32 bytes.
    pub(crate) message_key: &'static [u8],
    /// Group message key expansion, the same shape as `message_key`.
    pub(crate) sender_message_key: &'static [u8],
}

/// The labels this crate uses.
pub(crate) const LABELS: KdfLabels = KdfLabels {
    x3dh: b"chat-crypto/v1/x3dh",
    root: b"chat-crypto/v1/root",
    message_key: b"chat-crypto/v1/message-key",
    sender_message_key: b"chat-crypto/v1/sender-message-key",
};

/// HKDF info of the one-to-one body keys: (body AEAD key || key commitment) =
/// HKDF(salt = 0^32, ikm = content key, info), 64 bytes.
pub(crate) const BODY_KEYS_LABEL: &[u8] = b"chat-crypto/v2/body-keys";

/// Signature contexts: the first field of every signed encoding.
pub(crate) mod sig_context {
    pub(crate) const IDENTITY: &[u8] = b"chat-crypto/v1/identity-dh-key";
    pub(crate) const SIGNED_PREKEY: &[u8] = b"chat-crypto/v1/signed-prekey";
    pub(crate) const GROUP_MESSAGE: &[u8] = b"chat-crypto/v1/group-message";
    /// A member's signed group change (issue 17).
    pub(crate) const GROUP_CHANGE: &[u8] = b"chat-crypto/v1/group-change";
    /// Not a signature: the label of the group state hash that chains the changes.
    pub(crate) const GROUP_STATE: &[u8] = b"chat-crypto/v1/group-state";
    /// A user's device list, signed by the account identity (issue 16).
    pub(crate) const DEVICE_LIST: &[u8] = b"chat-crypto/v1/device-list";
}

/// Associated-data contexts.
pub(crate) mod ad_context {
    pub(crate) const PAIRWISE: &[u8] = b"chat-crypto/v1/pairwise-ad";
    pub(crate) const BODY: &[u8] = b"chat-crypto/v1/body";
    pub(crate) const GROUP: &[u8] = b"chat-crypto/v1/group-ad";
    /// The sealed account secret of a device link.
    pub(crate) const LINK: &[u8] = b"chat-crypto/v1/link-ad";
}

/// HKDF-SHA256 extract-and-expand into `out`.
pub(crate) fn hkdf(salt: &[u8], ikm: &[u8], info: &[u8], out: &mut [u8]) -> Result<(), Error> {
    Hkdf::<Sha256>::new(Some(salt), ikm)
        .expand(info, out)
        .map_err(|_| Error::TooLarge("hkdf output"))
}

/// HMAC-SHA256 keyed with `key`. HMAC accepts keys of any length, so this cannot fail.
fn hmac_keyed(key: &[u8]) -> Option<Hmac<Sha256>> {
    <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(key).ok()
}

/// Finishes a keyed HMAC over `data`.
fn hmac_finish(mac: Option<Hmac<Sha256>>, data: &[u8]) -> Key32 {
    let mut out = Zeroizing::new([0u8; 32]);
    if let Some(mut mac) = mac {
        mac.update(data);
        out.copy_from_slice(&mac.finalize().into_bytes());
    }
    out
}

/// HMAC-SHA256 (the construction KDF_CK uses; checked against RFC 4231).
#[cfg(test)]
pub(crate) fn hmac_sha256(key: &[u8], data: &[u8]) -> Key32 {
    hmac_finish(hmac_keyed(key), data)
}

/// KDF_CK: returns (message key seed, next chain key): HMAC(CK, 0x01), HMAC(CK, 0x02).
pub(crate) fn chain_step(chain_key: &[u8; 32]) -> (Key32, Key32) {
    // Key the HMAC once and reuse the keyed state for both outputs.
    let keyed = hmac_keyed(chain_key);
    (
        hmac_finish(keyed.clone(), &[0x01]),
        hmac_finish(keyed, &[0x02]),
    )
}

/// KDF_RK: returns (next root key, chain key).
pub(crate) fn root_step(
    labels: &KdfLabels,
    root_key: &[u8; 32],
    dh_out: &[u8; 32],
) -> Result<(Key32, Key32), Error> {
    let mut okm = Zeroizing::new([0u8; 64]);
    hkdf(root_key, dh_out, labels.root, &mut *okm)?;
    Ok((split32(&okm, 0), split32(&okm, 32)))
}

/// The one-to-one body's AEAD key and key commitment, both derived from the content key K
/// that every recipient device receives. The body carries the commitment and each receiver
/// recomputes it from its K, so a sender cannot hand two devices two keys that open one body
/// to two plaintexts (XChaCha20-Poly1305 alone is not key-committing): that would need two
/// keys with one HKDF-SHA256 output, i.e. an HMAC-SHA256 collision.
pub(crate) fn body_keys(content_key: &[u8; 32]) -> Result<(Key32, [u8; 32]), Error> {
    let mut okm = Zeroizing::new([0u8; 64]);
    hkdf(&[0u8; 32], content_key, BODY_KEYS_LABEL, &mut *okm)?;
    Ok((split32(&okm, 0), *split32(&okm, 32)))
}

/// Expands a message key seed into the AEAD key (libsignal's layout: the first 32 bytes of the
/// expansion are the cipher key).
pub(crate) fn message_key(info: &[u8], seed: &[u8; 32], out: &mut [u8]) -> Result<(), Error> {
    hkdf(&[0u8; 32], seed, info, out)
}

fn split32(okm: &[u8; 64], at: usize) -> Key32 {
    let mut k = Zeroizing::new([0u8; 32]);
    if let Some(src) = okm.get(at..at + 32) {
        k.copy_from_slice(src);
    }
    k
}

/// X25519 with the contributory check: an all-zero result (a low-order peer key) is refused.
pub(crate) fn dh(ours: &StaticSecret, theirs: &[u8; 32]) -> Result<Key32, Error> {
    let shared = ours.diffie_hellman(&PublicKey::from(*theirs));
    if !shared.was_contributory() {
        return Err(Error::NonContributory);
    }
    Ok(Zeroizing::new(shared.to_bytes()))
}

/// A fresh X25519 secret from the caller's RNG.
pub(crate) fn x25519_secret<R: CryptoRng + ?Sized>(rng: &mut R) -> StaticSecret {
    let mut bytes = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(&mut *bytes);
    StaticSecret::from(*bytes)
}

/// 32 fresh random bytes.
pub(crate) fn random32<R: CryptoRng + ?Sized>(rng: &mut R) -> Key32 {
    let mut bytes = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(&mut *bytes);
    bytes
}

pub(crate) fn x25519_public(secret: &StaticSecret) -> [u8; 32] {
    PublicKey::from(secret).to_bytes()
}

/// XChaCha20-Poly1305 encryption; the output is `ciphertext || tag`.
pub(crate) fn seal(
    key: &[u8; 32],
    nonce: &[u8; NONCE_LEN],
    ad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, Error> {
    let cipher = XChaCha20Poly1305::new(&(*key).into());
    cipher
        .encrypt(
            &(*nonce).into(),
            Payload {
                msg: plaintext,
                aad: ad,
            },
        )
        .map_err(|_| Error::TooLarge("plaintext"))
}

/// XChaCha20-Poly1305 decryption of `ciphertext || tag`.
pub(crate) fn open(
    key: &[u8; 32],
    nonce: &[u8; NONCE_LEN],
    ad: &[u8],
    ciphertext: &[u8],
) -> Result<Vec<u8>, Error> {
    let cipher = XChaCha20Poly1305::new(&(*key).into());
    cipher
        .decrypt(
            &(*nonce).into(),
            Payload {
                msg: ciphertext,
                aad: ad,
            },
        )
        .map_err(|_| Error::DecryptionFailed)
}

pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// The unambiguous encoding that is signed: every field, the context first, with a `u32`
/// big-endian length prefix.
pub(crate) fn labelled(context: &[u8], fields: &[&[u8]]) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(4 + context.len() + fields.iter().map(|f| 4 + f.len()).sum::<usize>());
    for field in core::iter::once(&context).chain(fields) {
        let len = u32::try_from(field.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(field);
    }
    out
}

pub(crate) fn sign(key: &SigningKey, context: &[u8], fields: &[&[u8]]) -> [u8; 64] {
    key.sign(&labelled(context, fields)).to_bytes()
}

/// An Ed25519 signing key from its 32-byte seed (RFC 8032 "secret key").
pub(crate) fn signing_key(seed: &[u8; 32]) -> SigningKey {
    SigningKey::from_bytes(seed)
}

/// Strict Ed25519 verification (rejects small-order keys and non-canonical signatures).
pub(crate) fn verify(
    key: &[u8; 32],
    signature: &[u8; 64],
    context: &[u8],
    fields: &[&[u8]],
) -> Result<(), Error> {
    verify_raw(key, signature, &labelled(context, fields))
}

fn verify_raw(key: &[u8; 32], signature: &[u8; 64], message: &[u8]) -> Result<(), Error> {
    let key = VerifyingKey::from_bytes(key).map_err(|_| Error::InvalidKey)?;
    let sig = Signature::from_bytes(signature);
    key.verify_strict(message, &sig)
        .map_err(|_| Error::BadSignature)
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)] // tests index fixed test data
mod tests {
    //! The primitives as wired here against RFC vectors, and KDF_CK against libsignal's
    //! published chain-key known-answer values.
    use super::*;
    use hex::decode;

    fn arr<const N: usize>(s: &str) -> [u8; N] {
        decode(s).unwrap().try_into().unwrap()
    }

    /// libsignal's labels, to check our KDF_CK and message-key expansion against its KAT.
    const LIBSIGNAL: KdfLabels = KdfLabels {
        x3dh: b"WhisperText",
        root: b"WhisperRatchet",
        message_key: b"WhisperMessageKeys",
        sender_message_key: b"WhisperGroup",
    };

    #[test]
    fn libsignal_chain_key_kat() {
        // libsignal rust/protocol/src/ratchet/keys.rs, test_chain_key_derivation.
        let seed = arr::<32>("8ab72d6f4cc5ac0d387eaf463378ddb28edd07385b1cb01250c715982e7ad48f");
        let (mk_seed, next) = chain_step(&seed);
        assert_eq!(
            hex::encode(*next),
            "28e8f8fee54b801eef7c5cfb2f17f32c7b334485bbb70fac6ec10342a246d15d"
        );
        let mut okm = [0u8; 80];
        message_key(LIBSIGNAL.message_key, &mk_seed, &mut okm).unwrap();
        assert_eq!(
            hex::encode(&okm[..32]),
            "bf51e9d75e0e31031051f82a2491ffc084fa298b7793bd9db620056febf45217"
        );
        assert_eq!(
            hex::encode(&okm[32..64]),
            "c6c77d6a73a354337a56435e34607dfe48e3ace14e77314dc6abc172e7a7030b"
        );
        // Our 32-byte expansion is the prefix of the same HKDF output.
        let mut ours = [0u8; 32];
        message_key(LIBSIGNAL.message_key, &mk_seed, &mut ours).unwrap();
        assert_eq!(ours, okm[..32]);
    }

    #[test]
    fn labels_are_distinct() {
        let l = [
            LABELS.x3dh,
            LABELS.root,
            LABELS.message_key,
            LABELS.sender_message_key,
        ];
        for (i, a) in l.iter().enumerate() {
            for b in &l[i + 1..] {
                assert_ne!(a, b);
            }
        }
        let _ = LIBSIGNAL.x3dh;
        let _ = LIBSIGNAL.root;
        let _ = LIBSIGNAL.sender_message_key;
    }

    #[test]
    fn rfc5869_hkdf_case_1() {
        let ikm = [0x0bu8; 22];
        let salt = decode("000102030405060708090a0b0c").unwrap();
        let info = decode("f0f1f2f3f4f5f6f7f8f9").unwrap();
        let mut okm = [0u8; 42];
        hkdf(&salt, &ikm, &info, &mut okm).unwrap();
        assert_eq!(
            hex::encode(okm),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
        );
    }

    #[test]
    fn rfc4231_hmac_sha256() {
        // Test case 1.
        let out = hmac_sha256(&[0x0b; 20], b"Hi There");
        assert_eq!(
            hex::encode(*out),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        // Test case 2.
        let out = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(*out),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn rfc7748_x25519() {
        // RFC 7748 section 6.1.
        let a = StaticSecret::from(arr::<32>(
            "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
        ));
        let b = StaticSecret::from(arr::<32>(
            "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
        ));
        assert_eq!(
            hex::encode(x25519_public(&a)),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
        assert_eq!(
            hex::encode(x25519_public(&b)),
            "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
        );
        let k = dh(&a, &x25519_public(&b)).unwrap();
        assert_eq!(
            hex::encode(*k),
            "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
        );
        assert_eq!(*dh(&b, &x25519_public(&a)).unwrap(), *k);
    }

    const RFC8439_KEY: &str = "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f";
    const RFC8439_AAD: &str = "50515253c0c1c2c3c4c5c6c7";
    const RFC8439_PLAINTEXT: &[u8] = b"Ladies and Gentlemen of the class of '99: If I could offer \
        you only one tip for the future, sunscreen would be it.";

    #[test]
    fn rfc8439_chacha20_poly1305() {
        // RFC 8439 section 2.8.2: the AEAD that attachments use through STREAM.
        use chacha20poly1305::ChaCha20Poly1305;
        let cipher = ChaCha20Poly1305::new(&arr::<32>(RFC8439_KEY).into());
        let nonce = arr::<12>("070000004041424344454647");
        let aad = decode(RFC8439_AAD).unwrap();
        let out = cipher
            .encrypt(
                &nonce.into(),
                Payload {
                    msg: RFC8439_PLAINTEXT,
                    aad: &aad,
                },
            )
            .unwrap();
        assert_eq!(
            hex::encode(&out),
            "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d63dbea45e8ca96712\
             82fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b3692ddbd7f2d778b8c9803aee328091b58\
             fab324e4fad675945585808b4831d7bc3ff4def08e4b7a9de576d26586cec64b6116\
             1ae10b594f09e26a7e902ecbd0600691"
        );
    }

    #[test]
    fn xchacha20_poly1305_draft_vector_through_seal_and_open() {
        // draft-irtf-cfrg-xchacha section A.3.1 (same key, AAD and plaintext as RFC 8439).
        let key = arr::<32>(RFC8439_KEY);
        let nonce = arr::<24>("404142434445464748494a4b4c4d4e4f5051525354555657");
        let aad = decode(RFC8439_AAD).unwrap();
        let out = seal(&key, &nonce, &aad, RFC8439_PLAINTEXT).unwrap();
        assert_eq!(
            hex::encode(&out),
            "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb731c7f1b0b4aa644\
             0bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b4522f8c9ba40db5d945b11b69b982c1bb9e\
             3f3fac2bc369488f76b2383565d3fff921f9664c97637da9768812f615c68b13b52e\
             c0875924c1c7987947deafd8780acf49"
        );
        assert_eq!(open(&key, &nonce, &aad, &out).unwrap(), RFC8439_PLAINTEXT);
        let mut bad = out.clone();
        bad[0] ^= 1;
        assert_eq!(
            open(&key, &nonce, &aad, &bad).unwrap_err(),
            Error::DecryptionFailed
        );
    }

    #[test]
    fn rfc8032_ed25519() {
        // RFC 8032 section 7.1, TEST 1 and TEST 2: key derivation from the seed as our
        // pickles restore it, signing, and strict verification.
        for (seed, public, msg, sig) in [
            (
                "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
                "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
                "",
                "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bac\
                 c61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
            ),
            (
                "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
                "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
                "72",
                "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e\
                 458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
            ),
        ] {
            let key = signing_key(&arr::<32>(seed));
            assert_eq!(hex::encode(key.verifying_key().to_bytes()), public);
            let msg = decode(msg).unwrap();
            let signature = key.sign(&msg).to_bytes();
            assert_eq!(hex::encode(signature), sig);
            verify_raw(&arr::<32>(public), &signature, &msg).unwrap();
            let mut bad = signature;
            bad[63] ^= 0x10;
            assert!(verify_raw(&arr::<32>(public), &bad, &msg).is_err());
        }
    }

    #[test]
    fn labelled_encoding_is_unambiguous() {
        assert_ne!(
            labelled(b"c", &[b"ab", b"c"]),
            labelled(b"c", &[b"a", b"bc"])
        );
        assert_eq!(
            labelled(b"c", &[b"x"]),
            [0, 0, 0, 1, b'c', 0, 0, 0, 1, b'x']
        );
    }

    /// Known-answer vectors of our KDF chain (X3DH, KDF_RK, KDF_CK, message keys) in
    /// `tests/vectors/kdf-v1.json`; regenerate with CHAT_CRYPTO_WRITE_VECTORS=1.
    #[test]
    fn kdf_vectors_match_the_published_file() {
        use serde_json::{Value, json};
        let secret = |n: u8| StaticSecret::from([n; 32]);
        let public = |n: u8| hex::encode(x25519_public(&secret(n)));
        // Initiator A: identity 0x11, ephemeral 0x22. Responder B: identity 0x33, signed
        // prekey 0x44, one-time prekey 0x55.
        let (ik_a, ek_a, ik_b, spk_b, opk_b) = (0x11, 0x22, 0x33, 0x44, 0x55);
        let d = |a: u8, b: u8| dh(&secret(a), &x25519_public(&secret(b))).unwrap();
        let (dh1, dh2, dh3, dh4) = (
            d(ik_a, spk_b),
            d(ek_a, ik_b),
            d(ek_a, spk_b),
            d(ek_a, opk_b),
        );
        // Both sides agree.
        assert_eq!(*dh1, *d(spk_b, ik_a));
        assert_eq!(*dh4, *d(opk_b, ek_a));
        // The X3DH derivation exactly as sessions use it.
        let x3dh = |dh4: Option<&Key32>| {
            hex::encode(*crate::session::x3dh_secret(&dh1, &dh2, &dh3, dh4).unwrap())
        };
        let root_key = [0x66u8; 32];
        let dh_out = d(0x77, 0x88);
        let (rk, ck) = root_step(&LABELS, &root_key, &dh_out).unwrap();
        let (mk_seed, next_ck) = chain_step(&ck);
        let mut key = [0u8; 32];
        message_key(LABELS.message_key, &mk_seed, &mut key).unwrap();
        let mut group_key = [0u8; 32];
        message_key(LABELS.sender_message_key, &mk_seed, &mut group_key).unwrap();
        let computed = json!({
            "version": 1,
            "note": "X25519 secrets are 32 repetitions of one byte (clamped by X25519 as usual)",
            "labels": {
                "x3dh": String::from_utf8_lossy(LABELS.x3dh),
                "root": String::from_utf8_lossy(LABELS.root),
                "message_key": String::from_utf8_lossy(LABELS.message_key),
                "sender_message_key": String::from_utf8_lossy(LABELS.sender_message_key),
            },
            "x3dh": {
                "secrets": { "ik_a": "11", "ek_a": "22", "ik_b": "33", "spk_b": "44", "opk_b": "55" },
                "publics": {
                    "ik_a": public(ik_a), "ek_a": public(ek_a), "ik_b": public(ik_b),
                    "spk_b": public(spk_b), "opk_b": public(opk_b),
                },
                "dh1_ik_a_spk_b": hex::encode(*dh1),
                "dh2_ek_a_ik_b": hex::encode(*dh2),
                "dh3_ek_a_spk_b": hex::encode(*dh3),
                "dh4_ek_a_opk_b": hex::encode(*dh4),
                "sk_with_opk": x3dh(Some(&dh4)),
                "sk_without_opk": x3dh(None),
            },
            "kdf_rk": {
                "root_key": hex::encode(root_key),
                "dh_secrets": ["77", "88"],
                "dh_output": hex::encode(*dh_out),
                "new_root_key": hex::encode(*rk),
                "chain_key": hex::encode(*ck),
            },
            "kdf_ck": {
                "chain_key": hex::encode(*ck),
                "message_key_seed": hex::encode(*mk_seed),
                "next_chain_key": hex::encode(*next_ck),
                "aead_key": hex::encode(key),
                "group_aead_key": hex::encode(group_key),
            },
        });
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/kdf-v1.json");
        if std::env::var_os("CHAT_CRYPTO_WRITE_VECTORS").is_some() {
            std::fs::write(
                path,
                serde_json::to_string_pretty(&computed).unwrap() + "\n",
            )
            .unwrap();
        }
        let published: Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert_eq!(
            computed, published,
            "tests/vectors/kdf-v1.json does not match"
        );
    }

    /// The vectors computed by an independent implementation (chat-crypto/vectors/gen.py,
    /// Python `cryptography`), recomputed here with the crate's own code: X3DH, KDF_RK,
    /// KDF_CK, the message keys, the body keys and commitment, and a safety number.
    #[test]
    fn independent_vectors_match_python() {
        use serde_json::Value;
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/vectors/independent-v1.json"
        );
        let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let get = |p: &str| -> String {
            v.pointer(p)
                .and_then(Value::as_str)
                .unwrap_or_else(|| panic!("{p} missing"))
                .to_owned()
        };
        let secret = |n: u8| StaticSecret::from([n; 32]);
        let d = |a: u8, b: u8| dh(&secret(a), &x25519_public(&secret(b))).unwrap();
        for (name, n) in [
            ("ik_a", 0x11),
            ("ek_a", 0x22),
            ("ik_b", 0x33),
            ("spk_b", 0x44),
            ("opk_b", 0x55),
        ] {
            let public = x25519_public(&secret(n));
            assert_eq!(hex::encode(public), get(&format!("/x3dh/publics/{name}")));
        }
        let (dh1, dh2, dh3, dh4) = (d(0x11, 0x44), d(0x22, 0x33), d(0x22, 0x44), d(0x22, 0x55));
        for (name, value) in [("dh1", &dh1), ("dh2", &dh2), ("dh3", &dh3), ("dh4", &dh4)] {
            assert_eq!(hex::encode(**value), get(&format!("/x3dh/{name}")));
        }
        let sk = crate::session::x3dh_secret(&dh1, &dh2, &dh3, Some(&dh4)).unwrap();
        assert_eq!(hex::encode(*sk), get("/x3dh/sk_with_opk"));
        let sk0 = crate::session::x3dh_secret(&dh1, &dh2, &dh3, None).unwrap();
        assert_eq!(hex::encode(*sk0), get("/x3dh/sk_without_opk"));

        let dh_out = d(0x66, 0x44);
        assert_eq!(hex::encode(*dh_out), get("/root_step/dh_output"));
        let (rk, ck) = root_step(&LABELS, &sk, &dh_out).unwrap();
        assert_eq!(hex::encode(*rk), get("/root_step/new_root_key"));
        assert_eq!(hex::encode(*ck), get("/root_step/chain_key"));

        let (seed, next) = chain_step(&ck);
        assert_eq!(hex::encode(*seed), get("/chain_step/message_key_seed"));
        assert_eq!(hex::encode(*next), get("/chain_step/next_chain_key"));
        let mut key = [0u8; 32];
        message_key(LABELS.message_key, &seed, &mut key).unwrap();
        assert_eq!(hex::encode(key), get("/chain_step/message_key"));
        message_key(LABELS.sender_message_key, &seed, &mut key).unwrap();
        assert_eq!(hex::encode(key), get("/chain_step/group_message_key"));

        let content: [u8; 32] = core::array::from_fn(|i| i as u8);
        assert_eq!(hex::encode(content), get("/body_keys/content_key"));
        let (aead, commitment) = body_keys(&content).unwrap();
        assert_eq!(hex::encode(*aead), get("/body_keys/aead_key"));
        assert_eq!(hex::encode(commitment), get("/body_keys/commitment"));

        // identity(n): Ed25519 public of seed n^32 || X25519 public of secret (n+1)^32.
        let identity = |n: u8| {
            let mut b = [0u8; 64];
            b[..32].copy_from_slice(&signing_key(&[n; 32]).verifying_key().to_bytes());
            b[32..].copy_from_slice(&x25519_public(&secret(n + 1)));
            crate::IdentityPublic::from_bytes(&b)
        };
        let bob = [identity(3), identity(5)];
        let user = |n| chat_core::UserId::new(n).unwrap();
        let account = |n: u8| crate::AccountIdentity::from_secret(&[n; 32]);
        let (alice_key, bob_key) = (account(0x0A).public(), account(0x0B).public());
        assert_eq!(
            hex::encode(alice_key.to_bytes()),
            get("/safety_number/alice/account_key")
        );
        let sn = crate::safety_number(user(1), &alice_key, user(2), &bob_key);
        assert_eq!(sn.digits(), get("/safety_number/digits"));
        assert_eq!(
            crate::safety_number(user(2), &bob_key, user(1), &alice_key),
            sn
        );

        // The signed device list: Ed25519 signatures are deterministic, so the bytes agree.
        let device = |n| chat_core::DeviceId::new(n).unwrap();
        let list = account(0x0B)
            .sign_device_list(user(2), 3, &[(device(7), bob[0]), (device(4), bob[1])])
            .unwrap();
        assert_eq!(hex::encode(list.encode()), get("/device_list/encoded"));
        let decoded = crate::SignedDeviceList::decode(&list.encode()).unwrap();
        assert_eq!(decoded.identity_of(device(7)), Some(bob[0]));

        let mut link_key = [0u8; 32];
        let secret: [u8; 32] = core::array::from_fn(|i| i as u8);
        hkdf(&[], &secret, b"chat-crypto/v1/link-key", &mut link_key).unwrap();
        assert_eq!(hex::encode(link_key), get("/link_key/key"));
    }

    #[test]
    fn x25519_rejects_low_order_points() {
        let a = StaticSecret::from([7u8; 32]);
        assert_eq!(dh(&a, &[0u8; 32]).unwrap_err(), Error::NonContributory);
        let mut one = [0u8; 32];
        one[0] = 1;
        assert_eq!(dh(&a, &one).unwrap_err(), Error::NonContributory);
    }
}
