//! Encryption at rest for a client's local store (issue 19): [`StoreCipher`] seals each
//! secret value (keys, sessions, message plaintext) under a key the app keeps outside the
//! store, typically in the OS keychain. Pure: no I/O.
//!
//! Each value is XChaCha20-Poly1305 under a key derived with HKDF-SHA256 from the app's key
//! (info `chat-crypto/v1/store-key`), with a random 24-byte nonce and associated data naming
//! where the value lives (its table and row), so a value moved to another row does not open.
//! Layout: `53 01` ‖ nonce (24) ‖ ciphertext ‖ tag (16).

use rand_core::CryptoRng;
use zeroize::Zeroizing;

use crate::Error;
use crate::primitives::{self, NONCE_LEN};

/// The first byte of a sealed value.
const TAG: u8 = 0x53;
/// The layout's version.
const VERSION: u8 = 1;
/// HKDF info for the value key.
const KEY_INFO: &[u8] = b"chat-crypto/v1/store-key";
/// Associated-data label in front of the caller's.
const AD_LABEL: &[u8] = b"chat-crypto/v1/store-ad";
/// What a sealed value adds to its plaintext: tag, version, nonce, Poly1305 tag.
pub const STORE_OVERHEAD: usize = 2 + NONCE_LEN + 16;

/// Seals and opens a store's values under the app's key. `Debug` shows nothing of the key.
pub struct StoreCipher {
    key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for StoreCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreCipher")
    }
}

impl StoreCipher {
    /// The cipher for the app's 32-byte store key.
    pub fn new(app_key: &[u8; 32]) -> Result<Self, Error> {
        let mut key = Zeroizing::new([0u8; 32]);
        primitives::hkdf(&[], app_key, KEY_INFO, key.as_mut())?;
        Ok(Self { key })
    }

    /// Seals `plaintext` for the place `ad` names (for example table and row key).
    pub fn seal<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        ad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, Error> {
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        let sealed = primitives::seal(&self.key, &nonce, &full_ad(ad), plaintext)?;
        let mut out = Vec::with_capacity(2 + NONCE_LEN + sealed.len());
        out.extend_from_slice(&[TAG, VERSION]);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Opens what [`Self::seal`] made for the same `ad`; [`Error::DecryptionFailed`] under
    /// another key, for another place, or for changed bytes.
    pub fn open(&self, ad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
        let (header, rest) = sealed
            .split_at_checked(2)
            .ok_or(Error::Malformed("sealed store value"))?;
        if header != [TAG, VERSION] {
            return Err(Error::Malformed("sealed store value"));
        }
        let (nonce, ciphertext) = rest
            .split_first_chunk::<NONCE_LEN>()
            .ok_or(Error::Malformed("sealed store value"))?;
        primitives::open(&self.key, nonce, &full_ad(ad), ciphertext).map(Zeroizing::new)
    }
}

fn full_ad(ad: &[u8]) -> Vec<u8> {
    primitives::labelled(AD_LABEL, &[ad])
}

#[cfg(test)]
mod tests {
    // Tests index fixed test data; a panic here is a test failure.
    #![allow(clippy::indexing_slicing)]

    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn a_value_opens_only_under_its_key_and_place() {
        let mut rng = StdRng::seed_from_u64(1);
        let cipher = StoreCipher::new(&[7; 32]).unwrap();
        let sealed = cipher.seal(&mut rng, b"sessions/1/2", b"pickle").unwrap();
        assert_eq!(sealed.len(), b"pickle".len() + STORE_OVERHEAD);
        assert!(!sealed.windows(6).any(|w| w == b"pickle"));
        assert_eq!(
            cipher.open(b"sessions/1/2", &sealed).unwrap().as_slice(),
            b"pickle"
        );
        assert_eq!(
            cipher.open(b"sessions/1/3", &sealed),
            Err(Error::DecryptionFailed)
        );
        let other = StoreCipher::new(&[8; 32]).unwrap();
        assert_eq!(
            other.open(b"sessions/1/2", &sealed),
            Err(Error::DecryptionFailed)
        );
        // Two seals of one value differ (random nonces).
        assert_ne!(
            sealed,
            cipher.seal(&mut rng, b"sessions/1/2", b"pickle").unwrap()
        );
        for cut in 0..sealed.len() {
            assert!(cipher.open(b"sessions/1/2", &sealed[..cut]).is_err());
        }
        let mut flipped = sealed.clone();
        if let Some(b) = flipped.last_mut() {
            *b ^= 1;
        }
        assert!(cipher.open(b"sessions/1/2", &flipped).is_err());
        assert_eq!(format!("{cipher:?}"), "StoreCipher");
    }
}
