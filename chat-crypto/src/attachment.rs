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

/// The largest attachment the STREAM construction can encrypt: 2^32 chunks of
/// [`CHUNK_SIZE`] bytes (its chunk counter is 32 bits). Sizes a peer claims beyond it are
/// refused before any arithmetic is done with them.
pub const MAX_ATTACHMENT_SIZE: u64 = (u32::MAX as u64 + 1) * CHUNK_SIZE as u64;

/// The ciphertext length of a `size`-byte attachment, or `None` when `size` is above
/// [`MAX_ATTACHMENT_SIZE`]. `size` usually comes from a peer (a pointer's plaintext size), so
/// the arithmetic is checked: a lying size is refused, never wrapped.
pub fn encrypted_size(size: u64) -> Option<u64> {
    if size > MAX_ATTACHMENT_SIZE {
        return None;
    }
    let chunks = size.div_ceil(CHUNK_SIZE as u64).max(1);
    chunks
        .checked_mul(TAG_LEN as u64)
        .and_then(|tags| size.checked_add(tags))
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
        if size > MAX_ATTACHMENT_SIZE {
            return Err(Error::TooLarge("attachment"));
        }
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
    let capacity = encrypted_size(plaintext.len() as u64)
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(0);
    let mut out = Vec::with_capacity(capacity);
    e.update_into(plaintext, &mut out)?;
    let pointer = e.finish_into(&mut out)?;
    Ok((out, pointer))
}

/// Checks the digest, then decrypts a whole file in memory.
pub fn decrypt(pointer: &AttachmentPointer, ciphertext: &[u8]) -> Result<Vec<u8>, Error> {
    if !bool::from(primitives::sha256(ciphertext).ct_eq(&pointer.sha256)) {
        return Err(Error::AttachmentDigest);
    }
    let mut d = Decryptor::new(pointer);
    // The digest was just checked over the whole ciphertext.
    d.check_digest = false;
    let mut out = Vec::with_capacity(ciphertext.len());
    d.update_into(ciphertext, &mut out)?;
    d.finish_into(&mut out)?;
    Ok(out)
}

/// The part of a `Vec` from `start` on, as an AEAD in-place buffer, so chunks are encrypted and
/// decrypted where they will stay (no per-chunk allocation or copy).
struct Tail<'a> {
    vec: &'a mut Vec<u8>,
    start: usize,
}

impl AsRef<[u8]> for Tail<'_> {
    fn as_ref(&self) -> &[u8] {
        self.vec.get(self.start..).unwrap_or_default()
    }
}

impl AsMut<[u8]> for Tail<'_> {
    fn as_mut(&mut self) -> &mut [u8] {
        self.vec.get_mut(self.start..).unwrap_or_default()
    }
}

impl aead_stream::aead::Buffer for Tail<'_> {
    fn extend_from_slice(&mut self, other: &[u8]) -> aead_stream::aead::Result<()> {
        self.vec.extend_from_slice(other);
        Ok(())
    }

    fn truncate(&mut self, len: usize) {
        self.vec.truncate(self.start.saturating_add(len));
    }
}

/// Moves the next `want` bytes, from `pending` first and then from `data`, to the end of
/// `out`; returns the rest of `data`.
fn take_into<'d>(
    pending: &mut Vec<u8>,
    data: &'d [u8],
    want: usize,
    out: &mut Vec<u8>,
) -> &'d [u8] {
    out.extend_from_slice(pending);
    let (now, rest) = data.split_at(want.saturating_sub(pending.len()).min(data.len()));
    out.extend_from_slice(now);
    pending.clear();
    rest
}

/// Streaming encryption: feed the file in pieces of any size, get ciphertext back in whole
/// chunks.
pub struct Encryptor {
    key: Zeroizing<[u8; 32]>,
    stream: EncryptorBE32<ChaCha20Poly1305>,
    /// Plaintext not yet encrypted: at most one chunk, held until more data shows it is not
    /// the last one.
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
            pending: Zeroizing::new(Vec::with_capacity(CHUNK_SIZE)),
            digest: Sha256::new(),
            size: 0,
        }
    }

    /// Encrypts the next piece; returns the chunks completed so far. A full chunk is held
    /// back until more data arrives, since only `finish` knows which chunk is last.
    pub fn update(&mut self, data: &[u8]) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        self.update_into(data, &mut out)?;
        Ok(out)
    }

    fn update_into(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
        self.size += data.len() as u64;
        let mut data = data;
        // Emit a chunk only when more than a chunk is available: the last one may be full.
        while self.pending.len() + data.len() > CHUNK_SIZE {
            let start = out.len();
            data = take_into(&mut self.pending, data, CHUNK_SIZE, out);
            self.stream
                .encrypt_next_in_place(b"", &mut Tail { vec: out, start })
                .map_err(|_| Error::TooLarge("attachment"))?;
            self.digest.update(out.get(start..).unwrap_or_default());
        }
        self.pending.extend_from_slice(data);
        Ok(())
    }

    /// Encrypts the last chunk and returns it with the pointer.
    pub fn finish(self) -> Result<(Vec<u8>, AttachmentPointer), Error> {
        let mut out = Vec::with_capacity(self.pending.len() + TAG_LEN);
        let pointer = self.finish_into(&mut out)?;
        Ok((out, pointer))
    }

    fn finish_into(self, out: &mut Vec<u8>) -> Result<AttachmentPointer, Error> {
        let Self {
            key,
            stream,
            pending,
            mut digest,
            size,
        } = self;
        let start = out.len();
        out.extend_from_slice(&pending);
        stream
            .encrypt_last_in_place(b"", &mut Tail { vec: out, start })
            .map_err(|_| Error::TooLarge("attachment"))?;
        digest.update(out.get(start..).unwrap_or_default());
        Ok(AttachmentPointer {
            key,
            size,
            sha256: digest.finalize().into(),
        })
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
    check_digest: bool,
    expected_size: u64,
    expected_digest: [u8; 32],
    size: u64,
}

impl Decryptor {
    /// A decryptor for the file `pointer` describes.
    pub fn new(pointer: &AttachmentPointer) -> Self {
        Self {
            stream: DecryptorBE32::new(&(*pointer.key).into(), &NONCE_PREFIX.into()),
            pending: Vec::with_capacity(ENCRYPTED_CHUNK_SIZE),
            digest: Sha256::new(),
            check_digest: true,
            expected_size: pointer.size,
            expected_digest: pointer.sha256,
            size: 0,
        }
    }

    /// Decrypts the next piece of ciphertext; returns the plaintext of the chunks completed.
    pub fn update(&mut self, data: &[u8]) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        self.update_into(data, &mut out)?;
        Ok(out)
    }

    fn update_into(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
        let mut data = data;
        while self.pending.len() + data.len() > ENCRYPTED_CHUNK_SIZE {
            let start = out.len();
            data = take_into(&mut self.pending, data, ENCRYPTED_CHUNK_SIZE, out);
            if self.check_digest {
                self.digest.update(out.get(start..).unwrap_or_default());
            }
            let result = self
                .stream
                .decrypt_next_in_place(b"", &mut Tail { vec: out, start });
            if result.is_err() {
                out.truncate(start);
                return Err(Error::DecryptionFailed);
            }
            self.size += (out.len() - start) as u64;
            if self.size > self.expected_size {
                return Err(Error::AttachmentSize);
            }
        }
        self.pending.extend_from_slice(data);
        Ok(())
    }

    /// Decrypts the last chunk and checks size and digest.
    pub fn finish(self) -> Result<Vec<u8>, Error> {
        let mut out = Vec::with_capacity(self.pending.len());
        self.finish_into(&mut out)?;
        Ok(out)
    }

    fn finish_into(self, out: &mut Vec<u8>) -> Result<(), Error> {
        let Self {
            stream,
            pending,
            mut digest,
            check_digest,
            expected_size,
            expected_digest,
            size,
        } = self;
        if check_digest {
            digest.update(&pending);
            let digest: [u8; 32] = digest.finalize().into();
            if !bool::from(digest.ct_eq(&expected_digest)) {
                return Err(Error::AttachmentDigest);
            }
        }
        let start = out.len();
        out.extend_from_slice(&pending);
        if stream
            .decrypt_last_in_place(b"", &mut Tail { vec: out, start })
            .is_err()
        {
            out.truncate(start);
            return Err(Error::DecryptionFailed);
        }
        if size + (out.len() - start) as u64 != expected_size {
            return Err(Error::AttachmentSize);
        }
        Ok(())
    }
}

impl fmt::Debug for Decryptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decryptor")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}
