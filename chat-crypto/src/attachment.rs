//! Attachments: a fresh key per file and ChaCha20-Poly1305 in the STREAM construction
//! (aead-stream's `StreamBE32`: a 7-byte nonce prefix, a 32-bit big-endian chunk counter and a
//! last-chunk flag in the nonce) over 64 KiB plaintext chunks.
//!
//! Chunks cannot be reordered (the counter), dropped or cut off at the end (the last-chunk
//! flag), nor changed (the tag). The [`AttachmentPointer`] that travels inside the encrypted
//! message carries the key, the plaintext size and the SHA-256 of the ciphertext, which the
//! receiver checks too (so the blob store's copy is exactly the one that was sent).
//!
//! The nonce prefix is all zeros: each key encrypts exactly one file.
//!
//! Ciphertext layout: every chunk is `plaintext || tag`; all but the last hold exactly
//! [`CHUNK_SIZE`] plaintext bytes, the last holds 1 to [`CHUNK_SIZE`] bytes (an empty file is
//! one empty last chunk).

use std::fmt;

use aead_stream::{DecryptorBE32, EncryptorBE32};
use chacha20poly1305::ChaCha20Poly1305;
use rand_core::CryptoRng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::Error;
use crate::codec::{Reader, Writer};
use crate::primitives::{self, TAG_LEN};

/// Plaintext bytes per chunk.
pub const CHUNK_SIZE: usize = 64 * 1024;
/// Ciphertext bytes of a full chunk.
pub const ENCRYPTED_CHUNK_SIZE: usize = CHUNK_SIZE + TAG_LEN;
const NONCE_PREFIX: [u8; 7] = [0; 7];
const POINTER_VERSION: u8 = 1;

/// The ciphertext length of a `size`-byte attachment.
pub fn encrypted_size(size: u64) -> u64 {
    let chunks = size.div_ceil(CHUNK_SIZE as u64).max(1);
    size + chunks * TAG_LEN as u64
}

/// What the receiver needs to fetch, check and decrypt an attachment. Secret (it holds the
/// key): send it only inside an encrypted message.
pub struct AttachmentPointer {
    key: Zeroizing<[u8; 32]>,
    /// The plaintext size in bytes.
    pub size: u64,
    /// SHA-256 of the whole ciphertext.
    pub sha256: [u8; 32],
}

impl AttachmentPointer {
    /// A pointer from its parts (e.g. decoded from the client's own message format).
    pub fn from_parts(key: [u8; 32], size: u64, sha256: [u8; 32]) -> Self {
        Self {
            key: Zeroizing::new(key),
            size,
            sha256,
        }
    }

    /// The file key.
    pub fn key(&self) -> &[u8; 32] {
        &self.key
    }

    /// Versioned bytes: `1 || key || size (u64 BE) || sha256`.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut w = Writer::with_capacity(73);
        w.u8(POINTER_VERSION)
            .raw(&*self.key)
            .u64(self.size)
            .raw(&self.sha256);
        w.into_secret()
    }

    /// Parses [`AttachmentPointer::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        let mut r = Reader::new(bytes, "attachment pointer");
        let v = r.u8()?;
        if v != POINTER_VERSION {
            return Err(Error::UnsupportedVersion(v));
        }
        let key = Zeroizing::new(r.array()?);
        let size = r.u64()?;
        let sha256 = r.array()?;
        r.finish()?;
        Ok(Self { key, size, sha256 })
    }
}

impl fmt::Debug for AttachmentPointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttachmentPointer")
            .field("size", &self.size)
            .field("sha256", &crate::identity::hex8(&self.sha256))
            .finish_non_exhaustive()
    }
}

/// Encrypts a whole file in memory.
pub fn encrypt<R: CryptoRng + ?Sized>(
    rng: &mut R,
    plaintext: &[u8],
) -> Result<(Vec<u8>, AttachmentPointer), Error> {
    let mut e = Encryptor::new(rng);
    let mut out =
        Vec::with_capacity(usize::try_from(encrypted_size(plaintext.len() as u64)).unwrap_or(0));
    out.extend(e.update(plaintext)?);
    let (tail, pointer) = e.finish()?;
    out.extend(tail);
    Ok((out, pointer))
}

/// Checks the digest, then decrypts a whole file in memory.
pub fn decrypt(pointer: &AttachmentPointer, ciphertext: &[u8]) -> Result<Vec<u8>, Error> {
    if !bool::from(primitives::sha256(ciphertext).ct_eq(&pointer.sha256)) {
        return Err(Error::AttachmentDigest);
    }
    let mut d = Decryptor::new(pointer);
    let mut out = d.update(ciphertext)?;
    out.extend(d.finish()?);
    Ok(out)
}

/// Streaming encryption: feed the file in pieces of any size, get ciphertext back in whole
/// chunks.
pub struct Encryptor {
    key: Zeroizing<[u8; 32]>,
    stream: EncryptorBE32<ChaCha20Poly1305>,
    pending: Zeroizing<Vec<u8>>,
    digest: Sha256,
    size: u64,
}

impl Encryptor {
    /// A new file with a fresh key.
    pub fn new<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let key = primitives::random32(rng);
        let stream = EncryptorBE32::new(&(*key).into(), &NONCE_PREFIX.into());
        Self {
            key,
            stream,
            pending: Zeroizing::new(Vec::with_capacity(CHUNK_SIZE * 2)),
            digest: Sha256::new(),
            size: 0,
        }
    }

    /// Encrypts the next piece; returns the chunks completed so far. A full chunk is held
    /// back until more data arrives, since only `finish` knows which chunk is last.
    pub fn update(&mut self, data: &[u8]) -> Result<Vec<u8>, Error> {
        self.size += data.len() as u64;
        let mut out = Vec::new();
        let mut data = data;
        while !data.is_empty() {
            let room = (CHUNK_SIZE + 1).saturating_sub(self.pending.len());
            let (now, later) = data.split_at(room.min(data.len()));
            self.pending.extend_from_slice(now);
            data = later;
            if self.pending.len() > CHUNK_SIZE {
                let chunk = self.pending.get(..CHUNK_SIZE).unwrap_or_default();
                let ct = self
                    .stream
                    .encrypt_next(chunk)
                    .map_err(|_| Error::TooLarge("attachment"))?;
                self.digest.update(&ct);
                out.extend_from_slice(&ct);
                self.pending.drain(..CHUNK_SIZE);
            }
        }
        Ok(out)
    }

    /// Encrypts the last chunk and returns it with the pointer.
    pub fn finish(self) -> Result<(Vec<u8>, AttachmentPointer), Error> {
        let Self {
            key,
            stream,
            pending,
            mut digest,
            size,
        } = self;
        let ct = stream
            .encrypt_last(pending.as_slice())
            .map_err(|_| Error::TooLarge("attachment"))?;
        digest.update(&ct);
        let pointer = AttachmentPointer {
            key,
            size,
            sha256: digest.finalize().into(),
        };
        Ok((ct, pointer))
    }
}

impl fmt::Debug for Encryptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encryptor")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// Streaming decryption. Each released chunk has been authenticated; [`Decryptor::finish`]
/// then checks the last-chunk flag, the size and the ciphertext digest. Discard everything
/// released if `finish` fails.
pub struct Decryptor {
    stream: DecryptorBE32<ChaCha20Poly1305>,
    pending: Vec<u8>,
    digest: Sha256,
    expected_size: u64,
    expected_digest: [u8; 32],
    size: u64,
}

impl Decryptor {
    /// A decryptor for the file `pointer` describes.
    pub fn new(pointer: &AttachmentPointer) -> Self {
        Self {
            stream: DecryptorBE32::new(&(*pointer.key).into(), &NONCE_PREFIX.into()),
            pending: Vec::with_capacity(ENCRYPTED_CHUNK_SIZE * 2),
            digest: Sha256::new(),
            expected_size: pointer.size,
            expected_digest: pointer.sha256,
            size: 0,
        }
    }

    /// Decrypts the next piece of ciphertext; returns the plaintext of the chunks completed.
    pub fn update(&mut self, data: &[u8]) -> Result<Vec<u8>, Error> {
        self.digest.update(data);
        let mut out = Vec::new();
        let mut data = data;
        while !data.is_empty() {
            let room = (ENCRYPTED_CHUNK_SIZE + 1).saturating_sub(self.pending.len());
            let (now, later) = data.split_at(room.min(data.len()));
            self.pending.extend_from_slice(now);
            data = later;
            if self.pending.len() > ENCRYPTED_CHUNK_SIZE {
                let chunk = self.pending.get(..ENCRYPTED_CHUNK_SIZE).unwrap_or_default();
                let pt = self
                    .stream
                    .decrypt_next(chunk)
                    .map_err(|_| Error::DecryptionFailed)?;
                self.size += pt.len() as u64;
                if self.size > self.expected_size {
                    return Err(Error::AttachmentSize);
                }
                out.extend_from_slice(&pt);
                self.pending.drain(..ENCRYPTED_CHUNK_SIZE);
            }
        }
        Ok(out)
    }

    /// Decrypts the last chunk and checks size and digest.
    pub fn finish(self) -> Result<Vec<u8>, Error> {
        let Self {
            stream,
            pending,
            digest,
            expected_size,
            expected_digest,
            size,
        } = self;
        let digest: [u8; 32] = digest.finalize().into();
        if !bool::from(digest.ct_eq(&expected_digest)) {
            return Err(Error::AttachmentDigest);
        }
        let pt = stream
            .decrypt_last(pending.as_slice())
            .map_err(|_| Error::DecryptionFailed)?;
        if size + pt.len() as u64 != expected_size {
            return Err(Error::AttachmentSize);
        }
        Ok(pt)
    }
}

impl fmt::Debug for Decryptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decryptor")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}
