//! `Content::decode`, as a client calls it on every decrypted message body (a peer chooses
//! those bytes freely). Known content that decodes re-encodes to content that decodes the
//! same.
#![no_main]

use chat_core::{Content, ContentError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(content) = Content::decode(data) else {
        return;
    };
    let _ = content.target();
    if let Content::Unknown { .. } = content {
        return;
    }
    match content.encode() {
        Ok(encoded) => assert_eq!(Content::decode(&encoded), Ok(content)),
        // Definite lengths can take a few bytes more than an indefinite-length input had;
        // only content near the size limit may then not fit again.
        Err(ContentError::TooLarge) => {
            assert!(data.len() + 64 > chat_core::limits::MAX_CONTENT_BYTES)
        }
        Err(e) => panic!("decoded content does not encode: {e}"),
    }
});
