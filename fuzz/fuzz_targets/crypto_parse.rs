//! chat-crypto's other byte parsers a peer reaches: the attachment pointer, the prekey
//! bundle (from the server's key directory, which may lie) and starting a session from it,
//! and attachment ciphertext (from the blob store) opened whole and streamed.
//!
//! The first byte picks the parser:
//! - 0: `AttachmentPointer::from_bytes`; what parses re-encodes to the same bytes.
//! - 1: `PrekeyBundle::from_bytes`, `verify`, then `Session::initiate` with it.
//! - 2: `PrekeyBundle::from_parts` over `[identity len][identity][spk len][spk][sig]`.
//! - 3: `[size: u64 BE][piece: u16 BE][ciphertext]`, decrypted with the fixture's key by
//!   `attachment::decrypt` and by a `Decryptor` fed `piece`-byte pieces: both agree.
#![no_main]

use chat_crypto::attachment::{self, AttachmentPointer, Decryptor};
use chat_crypto::{Account, PrekeyBundle, Session};
use chat_fuzz::{ALICE, BOB, fixture, rng, split_u16};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

fn streamed(pointer: &AttachmentPointer, ciphertext: &[u8], piece: usize) -> Option<Vec<u8>> {
    let mut d = Decryptor::new(pointer);
    let mut out = Vec::new();
    for chunk in ciphertext.chunks(piece.max(1)) {
        out.extend(d.update(chunk).ok()?);
    }
    out.extend(d.finish().ok()?);
    Some(out)
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 4 {
        0 => {
            if let Ok(pointer) = AttachmentPointer::from_bytes(rest) {
                assert_eq!(*pointer.to_bytes(), rest);
            }
        }
        1 => {
            let Ok(bundle) = PrekeyBundle::from_bytes(rest) else {
                return;
            };
            assert_eq!(bundle.to_bytes(), rest);
            if bundle.verify().is_ok() {
                let alice = Account::from_pickle(&fixture().alice_account).expect("fixture");
                let _ = Session::initiate(&mut rng(1), &alice, ALICE, BOB, &bundle);
            }
        }
        2 => {
            let (identity, rest) = split_u16(rest);
            let (spk, signature) = split_u16(rest);
            let _ = PrekeyBundle::from_parts(identity, 7, spk, signature, Some((8, spk)));
            let _ = PrekeyBundle::from_parts(identity, 7, spk, signature, None);
        }
        _ => {
            let Some((size, rest)) = rest.split_first_chunk::<8>() else {
                return;
            };
            let Some((piece, ciphertext)) = rest.split_first_chunk::<2>() else {
                return;
            };
            let pointer = AttachmentPointer::from_parts(
                fixture().attachment_key,
                u64::from_be_bytes(*size),
                Sha256::digest(ciphertext).into(),
            );
            let whole = attachment::decrypt(&pointer, ciphertext).ok();
            let piece = usize::from(u16::from_be_bytes(*piece));
            assert_eq!(streamed(&pointer, ciphertext, piece), whole);
        }
    }
});
