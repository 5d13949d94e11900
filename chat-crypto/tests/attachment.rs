//! Attachments: round trips at chunk boundaries, streaming, and every kind of tampering.

mod common;

use chat_crypto::Error;
use chat_crypto::attachment::{
    self, AttachmentPointer, CHUNK_SIZE, Decryptor, ENCRYPTED_CHUNK_SIZE, Encryptor,
    MAX_ATTACHMENT_SIZE, encrypted_size,
};
use common::rng;

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

#[test]
fn round_trips_at_chunk_boundaries() {
    let mut rng = rng(1);
    for len in [
        0,
        1,
        CHUNK_SIZE - 1,
        CHUNK_SIZE,
        CHUNK_SIZE + 1,
        3 * CHUNK_SIZE,
        3 * CHUNK_SIZE + 7,
    ] {
        let plain = data(len);
        let (ct, ptr) = attachment::encrypt(&mut rng, &plain).unwrap();
        assert_eq!(
            Some(ct.len() as u64),
            encrypted_size(len as u64),
            "len {len}"
        );
        assert_eq!(ptr.size, len as u64);
        let ptr = AttachmentPointer::from_bytes(&ptr.to_bytes()).unwrap();
        assert_eq!(attachment::decrypt(&ptr, &ct).unwrap(), plain);
    }
}

#[test]
fn streaming_in_odd_pieces_matches_one_shot() {
    let mut rng = rng(2);
    let plain = data(5 * CHUNK_SIZE + 1234);
    let mut e = Encryptor::new(&mut rng);
    let mut ct = Vec::new();
    let mut rest = plain.as_slice();
    let mut i = 0usize;
    while !rest.is_empty() {
        i += 1;
        let n = (i * 7_919 % 40_000 + 1).min(rest.len());
        ct.extend(e.update(&rest[..n]).unwrap());
        rest = &rest[n..];
    }
    let (tail, ptr) = e.finish().unwrap();
    ct.extend(tail);
    assert_eq!(attachment::decrypt(&ptr, &ct).unwrap(), plain);
    let mut d = Decryptor::new(&ptr);
    let mut out = Vec::new();
    for piece in ct.chunks(9_999) {
        out.extend(d.update(piece).unwrap());
    }
    out.extend(d.finish().unwrap());
    assert_eq!(out, plain);
}

/// Decrypts `ct` with a pointer whose digest matches `ct` (so only STREAM can object).
fn stream_only(ptr: &AttachmentPointer, ct: &[u8]) -> Result<Vec<u8>, Error> {
    let sha: [u8; 32] = {
        use sha2::Digest;
        sha2::Sha256::digest(ct).into()
    };
    let p = AttachmentPointer::from_parts(*ptr.key(), ptr.size, sha);
    attachment::decrypt(&p, ct)
}

#[test]
fn truncation_reordering_and_bit_flips_are_detected() {
    let mut rng = rng(3);
    let plain = data(3 * CHUNK_SIZE + 100);
    let (ct, ptr) = attachment::encrypt(&mut rng, &plain).unwrap();
    let chunks: Vec<&[u8]> = ct.chunks(ENCRYPTED_CHUNK_SIZE).collect();
    assert_eq!(chunks.len(), 4);

    // Truncated at a chunk boundary (a whole last chunk dropped) and mid-chunk.
    let cut = &ct[..3 * ENCRYPTED_CHUNK_SIZE];
    assert_eq!(
        attachment::decrypt(&ptr, cut).unwrap_err(),
        Error::AttachmentDigest
    );
    assert_eq!(stream_only(&ptr, cut).unwrap_err(), Error::DecryptionFailed);
    assert!(stream_only(&ptr, &ct[..ct.len() - 1]).is_err());
    // Even with a pointer that claims the truncated size.
    let short = AttachmentPointer::from_parts(*ptr.key(), 3 * CHUNK_SIZE as u64, ptr.sha256);
    assert!(stream_only(&short, cut).is_err());

    // Reordered chunks.
    let swapped = [chunks[1], chunks[0], chunks[2], chunks[3]].concat();
    assert_eq!(
        stream_only(&ptr, &swapped).unwrap_err(),
        Error::DecryptionFailed
    );
    // A dropped middle chunk.
    let dropped = [chunks[0], chunks[2], chunks[3]].concat();
    assert!(stream_only(&ptr, &dropped).is_err());
    // A flipped bit anywhere (sampled).
    for i in (0..ct.len()).step_by(4099).chain([ct.len() - 1]) {
        let mut bad = ct.clone();
        bad[i] ^= 0x04;
        assert_eq!(
            attachment::decrypt(&ptr, &bad).unwrap_err(),
            Error::AttachmentDigest
        );
        assert_eq!(
            stream_only(&ptr, &bad).unwrap_err(),
            Error::DecryptionFailed
        );
    }
    // A wrong size claim.
    let bigger = AttachmentPointer::from_parts(*ptr.key(), ptr.size + 1, ptr.sha256);
    assert_eq!(
        attachment::decrypt(&bigger, &ct).unwrap_err(),
        Error::AttachmentSize
    );
    let smaller = AttachmentPointer::from_parts(*ptr.key(), ptr.size - 1, ptr.sha256);
    assert_eq!(
        attachment::decrypt(&smaller, &ct).unwrap_err(),
        Error::AttachmentSize
    );
}

#[test]
fn keys_are_fresh_and_not_in_debug() {
    let mut rng = rng(4);
    let (_, a) = attachment::encrypt(&mut rng, b"x").unwrap();
    let (_, b) = attachment::encrypt(&mut rng, b"x").unwrap();
    assert_ne!(a.key(), b.key());
    assert!(!format!("{a:?}").contains(&hex::encode(&a.key()[..4])));
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(8))]

        /// Any file size and any way of cutting the input into pieces round-trips, and the
        /// ciphertext does not depend on how the plaintext was cut.
        #[test]
        fn streaming_round_trips_for_any_cuts(
            len in 0usize..(2 * CHUNK_SIZE + 100),
            cuts in prop::collection::vec(1usize..30_000, 1..8),
            seed in any::<u64>(),
        ) {
            let plain = data(len);
            let (one_shot, ptr) = attachment::encrypt(&mut rng(seed), &plain).unwrap();
            let mut e = Encryptor::new(&mut rng(seed));
            let mut ct = Vec::new();
            let mut rest = plain.as_slice();
            for cut in cuts.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let n = (*cut).min(rest.len());
                ct.extend(e.update(&rest[..n]).unwrap());
                rest = &rest[n..];
            }
            let (tail, ptr2) = e.finish().unwrap();
            ct.extend(tail);
            prop_assert_eq!(&ct, &one_shot);
            prop_assert_eq!(ptr2.sha256, ptr.sha256);
            let mut d = Decryptor::new(&ptr);
            let mut out = Vec::new();
            let mut rest = ct.as_slice();
            for cut in cuts.iter().rev().cycle() {
                if rest.is_empty() {
                    break;
                }
                let n = (*cut).min(rest.len());
                out.extend(d.update(&rest[..n]).unwrap());
                rest = &rest[n..];
            }
            out.extend(d.finish().unwrap());
            prop_assert_eq!(out, plain);
        }
    }
}

#[test]
fn a_peer_supplied_size_is_checked_not_wrapped() {
    // A pointer's size comes from the sender: sizes near u64::MAX used to overflow (a panic in
    // debug builds, a tiny download limit in release).
    for size in [u64::MAX, u64::MAX - 15, MAX_ATTACHMENT_SIZE + 1] {
        assert_eq!(encrypted_size(size), None, "size {size}");
        let ptr = AttachmentPointer::from_parts([7; 32], size, [0; 32]);
        assert!(AttachmentPointer::from_bytes(&ptr.to_bytes()).is_err());
    }
    let max = encrypted_size(MAX_ATTACHMENT_SIZE).unwrap();
    assert_eq!(max, MAX_ATTACHMENT_SIZE + (1u64 << 32) * 16);
}
