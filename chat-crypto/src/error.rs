//! The crate's one error type.

/// Everything that can go wrong in chat-crypto. Every error leaves the state it was called on
/// unchanged.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// Bytes (a message, a bundle or a pickle) could not be parsed.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// A message or pickle has a version this build does not know.
    #[error("unsupported version {0}")]
    UnsupportedVersion(u8),
    /// A signature did not verify (strict Ed25519 verification).
    #[error("bad signature")]
    BadSignature,
    /// A public key is not a valid point or is of low order.
    #[error("invalid public key")]
    InvalidKey,
    /// A Diffie-Hellman result was all zeros (a non-contributory peer key).
    #[error("non-contributory key agreement")]
    NonContributory,
    /// Authenticated decryption failed: the message was tampered with or is not for this state.
    #[error("decryption failed")]
    DecryptionFailed,
    /// The message was already decrypted, or its key was discarded by the caps.
    #[error("duplicate or expired message")]
    DuplicateMessage,
    /// The message is further ahead in its chain than the cap allows.
    #[error("message too far ahead in its chain ({jump} > {max})")]
    TooFarAhead {
        /// How many message keys would have to be skipped.
        jump: u32,
        /// The cap.
        max: u32,
    },
    /// A one-to-one body's key commitment does not match the content key this device
    /// received: the sender gave devices different keys for one body.
    #[error("content key does not match the body's commitment")]
    KeyCommitment,
    /// A first message without a one-time prekey that this account already accepted (a
    /// replay), refused even when its session is gone.
    #[error("replayed first message")]
    ReplayedPrekeyMessage,
    /// The message's sealed binding names another conversation, kind or message ID than the
    /// delivery it arrived in (the server refiled it).
    #[error("message is bound to another conversation, kind or ID")]
    Misfiled,
    /// The shared body does not match the hash carried in the device header.
    #[error("body does not match its header")]
    BodyMismatch,
    /// A prekey message that starts a different session than this one.
    #[error("message belongs to another session")]
    SessionMismatch,
    /// A prekey message names a signed prekey this account no longer has.
    #[error("unknown signed prekey")]
    UnknownSignedPrekey,
    /// A prekey message names a one-time prekey that was already used or never existed.
    #[error("unknown one-time prekey")]
    UnknownOneTimePrekey,
    /// A signed device list older than the one already trusted, or another list of the same
    /// version: the server replays or equivocates.
    #[error("device list is older than, or conflicts with, one already seen")]
    DeviceListRollback,
    /// A remote device presents an identity other than the one its sessions were made with;
    /// surface it to the user (see `DeviceSessions::clear`).
    #[error("identity key changed")]
    IdentityChanged,
    /// A chain counter would overflow; start a new session or sender key.
    #[error("chain exhausted")]
    ChainExhausted,
    /// An input or output is larger than a documented limit.
    #[error("{0} too large")]
    TooLarge(&'static str),
    /// A group message uses a sender key this receiver was never given.
    #[error("unknown sender key")]
    UnknownSenderKey,
    /// A sender key distribution is for another group or sender.
    #[error("sender key is for another group or sender")]
    SenderKeyMismatch,
    /// A pairwise header carries a payload of the wrong kind for this call.
    #[error("unexpected header payload")]
    UnexpectedPayload,
    /// A decrypted attachment does not have the size its pointer promised.
    #[error("attachment size mismatch")]
    AttachmentSize,
    /// An attachment's ciphertext does not match the SHA-256 in its pointer.
    #[error("attachment digest mismatch")]
    AttachmentDigest,
}
