//! chat-crypto's account identity parsers (issue 16), which a client runs on bytes the server
//! hands it: signed device lists (from the key directory) and sealed link payloads, plus link
//! codes (typed or scanned by the user).
//!
//! The first byte picks the parser:
//! - 0 mod 3: `SignedDeviceList::decode`; what parses re-encodes to the same bytes, and
//!   `update_from` against a fixed list never panics.
//! - 1 mod 3: `LinkCode::from_bytes`; what parses re-encodes to the same bytes.
//! - 2 mod 3: `LinkCode::open` of a fixed code over the rest; it never panics, and what opens
//!   names the code's device.
#![no_main]

use chat_core::{DeviceId, UserId};
use chat_crypto::{AccountIdentity, IdentityPublic, LinkCode, SignedDeviceList};
use libfuzzer_sys::fuzz_target;

fn user() -> UserId {
    UserId::new(1).expect("id")
}

fn fixed_list() -> SignedDeviceList {
    let identity = IdentityPublic {
        signing: [1; 32],
        dh: [2; 32],
    };
    AccountIdentity::from_secret(&[3; 32])
        .sign_device_list(user(), 5, &[(DeviceId::new(4).expect("id"), identity)])
        .expect("fixture list")
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => {
            if let Ok(list) = SignedDeviceList::decode(rest) {
                assert_eq!(list.encode(), rest);
                let _ = list.update_from(&fixed_list());
            }
        }
        1 => {
            if let Ok(code) = LinkCode::from_bytes(rest) {
                assert_eq!(&code.to_bytes()[..], rest);
            }
        }
        _ => {
            let mut bytes = vec![0x4C, 0x01];
            bytes.extend_from_slice(&4u64.to_be_bytes());
            bytes.extend_from_slice(&[1; 32]);
            bytes.extend_from_slice(&[2; 32]);
            bytes.extend_from_slice(&[5; 32]);
            let code = LinkCode::from_bytes(&bytes).expect("fixture code");
            if let Ok((_, list)) = code.open(user(), rest) {
                assert!(list.identity_of(code.device()).is_some());
            }
        }
    }
});
