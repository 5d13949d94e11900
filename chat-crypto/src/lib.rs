#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod account;
pub mod attachment;
mod binding;
mod codec;
mod device_sessions;
mod envelope;
mod error;
mod group;
mod group_chain;
mod identity;
mod primitives;
mod safety;
mod session;
mod store_cipher;

/// Entry points for the fuzz targets in `fuzz/`, compiled only under `cfg(fuzzing)` (which
/// cargo-fuzz sets): the parsers a peer reaches only inside an authenticated ciphertext,
/// which a fuzzer could never forge its way into.
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing {
    use crate::{Decrypted, Error};

    /// Opens the decrypted payload of a device header (a content key or a sender key
    /// distribution) against `body`, as `Session::decrypt` does after the AEAD verified.
    pub fn open_payload(payload: &[u8], body: &[u8]) -> Result<Decrypted, Error> {
        crate::envelope::open_payload(payload, body)
    }
}

pub use account::{
    AccountIdentity, AccountKey, DeviceListUpdate, LINK_CODE_BYTES, LinkCode, MAX_LISTED_DEVICES,
    SignedDeviceList,
};
pub use binding::{BINDING_LEN, ConversationKind, MessageBinding};
pub use device_sessions::{DeviceSessions, MAX_SESSIONS_PER_DEVICE};
pub use envelope::{
    Decrypted, OutgoingMessage, PAIRWISE_BODY_OVERHEAD, encrypt_for_devices, sender_key_headers,
};
pub use error::Error;
pub use group::{
    GROUP_BODY_OVERHEAD, MAX_GROUP_ID_BYTES, MAX_SENDER_KEY_STATES, SenderKey,
    SenderKeyDistribution, SenderKeyReceiver,
};
pub use group_chain::{
    AccountKeys, ChainError, MAX_CHAIN_CHANGES, MemberReport, SignedGroupChange, StateHash,
    VerifiedGroup, decode_chain, encode_chain,
};
pub use identity::{
    Account, IdentityKeys, IdentityPublic, MAX_ONE_TIME_PREKEYS, MAX_REPLAY_CACHE, OneTimePrekey,
    PREVIOUS_SIGNED_PREKEYS_KEPT, PUBLISHED_IDENTITY_BYTES, PrekeyBundle, SignedPrekey,
};
pub use rand_core::CryptoRng;
pub use safety::{SafetyNumber, safety_number};
pub use session::{
    DeviceAddress, MAX_FORWARD_JUMP, MAX_RECEIVER_CHAINS, MAX_SKIPPED_KEY_AGE,
    MAX_SKIPPED_PER_CHAIN, MAX_SKIPPED_TOTAL, Session, is_prekey_message, prekey_identity,
};
pub use store_cipher::{STORE_OVERHEAD, StoreCipher};
pub use zeroize::Zeroizing;

/// The server's limit on one device header, in bytes. Every header this crate makes fits.
pub const MAX_DEVICE_HEADER_BYTES: usize = 2048;

/// The server's limit on a body's crypto overhead (everything but the plaintext), in bytes.
/// Pairwise bodies use [`PAIRWISE_BODY_OVERHEAD`], group bodies [`GROUP_BODY_OVERHEAD`].
pub const BODY_OVERHEAD_MAX: usize = 1024;

const _: () = assert!(PAIRWISE_BODY_OVERHEAD <= BODY_OVERHEAD_MAX);
const _: () = assert!(GROUP_BODY_OVERHEAD <= BODY_OVERHEAD_MAX);
