//! chat-crypto's signed group changes (issue 17), which a device decodes from other members
//! (and, for a chain handed to a joining device, from whoever relays it).
//!
//! The first byte picks the parser (modulo 3):
//! - 0: `SignedGroupChange::decode`; what parses re-encodes to the same bytes, and
//!   verifying it against the fixture's account keys and applying it to a fixed group never
//!   panics.
//! - 1: `decode_chain`; what parses re-encodes to the same bytes, and
//!   `VerifiedGroup::from_chain` over it never panics.
//! - 2: `VerifiedGroup::unpickle` (a device's stored group state, which a damaged store may
//!   hand back as anything); what loads pickles to the same bytes.
#![no_main]

use chat_core::{ConversationId, GroupOp, GroupSettings, UserId};
use chat_crypto::{SignedGroupChange, StateHash, VerifiedGroup, decode_chain, encode_chain};
use ed25519_dalek::{SigningKey, VerifyingKey};
use libfuzzer_sys::fuzz_target;

fn key(user: UserId) -> Option<VerifyingKey> {
    let n = u8::try_from(user.get()).ok().filter(|n| (1..=4).contains(n))?;
    Some(SigningKey::from_bytes(&[n; 32]).verifying_key())
}

fn group() -> VerifiedGroup {
    let alice = UserId::new(1).expect("id");
    let others = [2, 3].map(|n| UserId::new(n).expect("id")).to_vec();
    let create = SignedGroupChange::sign(
        &SigningKey::from_bytes(&[1; 32]),
        ConversationId::new(7).expect("id"),
        StateHash::GENESIS,
        alice,
        GroupOp::Create {
            name: "fuzz".into(),
            members: others,
            settings: GroupSettings::default(),
        },
    );
    VerifiedGroup::create(&create, &key).expect("fixture group")
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => {
            if let Ok(change) = SignedGroupChange::decode(rest) {
                assert_eq!(change.encode(), rest);
                let _ = change.verify(&key);
                let _ = group().apply(&change, &key);
            }
        }
        1 => {
            if let Ok(chain) = decode_chain(rest) {
                assert_eq!(encode_chain(&chain), rest);
                let _ = VerifiedGroup::from_chain(&chain, &key);
            }
        }
        _ => {
            if let Ok(group) = VerifiedGroup::unpickle(rest) {
                assert_eq!(group.pickle(), rest);
            }
        }
    }
});
