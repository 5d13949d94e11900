//! The data model as the server sees it: users, devices, conversations, and message
//! envelopes whose payloads are opaque ciphertext.
//!
//! A message has one shared `body` (encrypted once) and, per recipient device, a small
//! `header` (the body's key wrapped for that device, or a sender-key distribution). The server
//! stores the body once per message and the header once per inbox entry.

use bytes::Bytes;
use minicbor::{Decode, Encode};
use serde::{Deserialize, Serialize};

use crate::ids::{
    AttachmentId, ClientKey, ConversationId, DeviceAddress, InboxPos, MessageId, UserId, Username,
};
use crate::time::Timestamp;
use crate::wire::{bytes_field, hex_bytes};

/// One recipient device of a message and the part of the message only it receives.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Recipient {
    /// The device and its owner.
    #[n(0)]
    pub device: DeviceAddress,
    /// The per-device ciphertext; at most `MAX_DEVICE_HEADER_BYTES`, may be empty.
    #[n(1)]
    #[cbor(with = "bytes_field")]
    pub header: Bytes,
}

/// A committed message as stored and relayed: everything but the per-device header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The conversation it belongs to.
    pub conversation: ConversationId,
    /// Its server-assigned ID within the conversation.
    pub id: MessageId,
    /// The device that sent it.
    pub sender: DeviceAddress,
    /// The sender's idempotency key.
    pub client_key: ClientKey,
    /// Server time at commit.
    pub sent_at: Timestamp,
    /// The shared ciphertext.
    pub body: Bytes,
}

/// One entry of a device's inbox: a message and the header addressed to that device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxEntry {
    /// The entry's position in the device's inbox.
    pub pos: InboxPos,
    /// The message.
    pub envelope: Envelope,
    /// The per-device ciphertext.
    pub header: Bytes,
}

/// What a client asks the store to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// The target conversation.
    pub conversation: ConversationId,
    /// The sending device.
    pub sender: DeviceAddress,
    /// The sender's idempotency key (R-MSG-2).
    pub client_key: ClientKey,
    /// The shared ciphertext.
    pub body: Bytes,
    /// Every recipient device: all devices of all members except the sending device.
    pub recipients: Vec<Recipient>,
    /// Server time now.
    pub sent_at: Timestamp,
}

/// The result of an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The message's ID (the first one's ID when this was a retry).
    pub id: MessageId,
    /// The commit time of the message (the first one's when this was a retry).
    pub sent_at: Timestamp,
    /// True when the client key had been used before and nothing new was written.
    pub duplicate: bool,
    /// The inbox position written for each recipient device; empty for a duplicate.
    pub deliveries: Vec<(DeviceAddress, InboxPos)>,
}

/// The recipients given for a message do not match the conversation's current devices
/// (R-E2E-4): the client must encrypt for `missing` and drop `extra`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
#[cbor(map)]
pub struct DeviceMismatch {
    /// Current devices of members that the message did not include.
    #[n(0)]
    pub missing: Vec<DeviceAddress>,
    /// Devices the message included that are not (or no longer) members' devices.
    #[n(1)]
    pub extra: Vec<DeviceAddress>,
}

impl DeviceMismatch {
    /// Compares the recipients given against the expected device set. Both lists are
    /// returned sorted; an empty mismatch means they agree.
    pub fn between(expected: &[DeviceAddress], given: &[DeviceAddress]) -> Self {
        use std::collections::BTreeSet;
        let expected: BTreeSet<_> = expected.iter().copied().collect();
        let given: BTreeSet<_> = given.iter().copied().collect();
        Self {
            missing: expected.difference(&given).copied().collect(),
            extra: given.difference(&expected).copied().collect(),
        }
    }

    /// True when nothing is missing or extra.
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.extra.is_empty()
    }
}

/// A registered user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// The user's ID.
    pub id: UserId,
    /// The unique username.
    pub username: Username,
    /// When the account was created.
    pub created_at: Timestamp,
}

/// A user's login record: the account and its Argon2id password hash (PHC string).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The account.
    pub user: User,
    /// The PHC-format password hash. Never logged.
    pub password_hash: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password_hash", &"<redacted>")
            .finish()
    }
}

/// A registered device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// The device and its owner.
    pub address: DeviceAddress,
    /// A label the user chose ("Pixel 9", "work laptop").
    pub name: String,
    /// When it was registered.
    pub created_at: Timestamp,
    /// Whether messages to the user fan out to it: the device is on the user's signed device
    /// list (issue 16), or the user has published no list. A device that logs in to a user
    /// with a list waits, unlinked, until a linked device adds it.
    pub linked: bool,
}

/// A user's signed device list as the key directory keeps it: opaque bytes (chat-crypto's
/// `SignedDeviceList` encoding, checked by the server before storing) and their version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceListRecord {
    /// The list's version; a stored list is only ever replaced by a higher one.
    pub version: u64,
    /// The encoded, signed list.
    pub list: Bytes,
}

/// The SHA-256 hash of a bearer token. The store keeps only this, never the token.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash(pub [u8; 32]);

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenHash(<redacted>)")
    }
}

/// One-to-one or group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConversationKind {
    /// Exactly one per pair of users (R-CONV-1).
    Direct,
    /// Up to `MAX_GROUP_MEMBERS` members.
    Group,
}

/// A conversation's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conversation {
    /// Its ID.
    pub id: ConversationId,
    /// One-to-one or group.
    pub kind: ConversationKind,
    /// When it was created.
    pub created_at: Timestamp,
    /// The ID of its newest message, if any.
    pub last_message: Option<MessageId>,
}

/// The public keys a device publishes (R-E2E-1). Opaque to the store; the server verifies
/// the signed prekey's signature before storing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceKeys {
    /// The device's identity key bundle (Ed25519 signing key and X25519 key), encoded by
    /// chat-crypto.
    #[serde(with = "hex_bytes")]
    pub identity: Bytes,
    /// The current signed prekey.
    pub signed_prekey: SignedPrekey,
}

/// A medium-term X25519 prekey signed by the device's identity key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedPrekey {
    /// The key's ID, chosen by the device.
    pub id: u32,
    /// The X25519 public key.
    #[serde(with = "hex_bytes")]
    pub public: Bytes,
    /// The identity key's signature over it.
    #[serde(with = "hex_bytes")]
    pub signature: Bytes,
}

/// A one-time X25519 prekey; handed out at most once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OneTimePrekey {
    /// The key's ID, chosen by the device.
    pub id: u32,
    /// The X25519 public key.
    #[serde(with = "hex_bytes")]
    pub public: Bytes,
}

/// What a sender needs to start a session with one device: claimed atomically, consuming one
/// one-time prekey when the pool has one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrekeyBundle {
    /// The device.
    pub device: DeviceAddress,
    /// Its identity key bundle.
    #[serde(with = "hex_bytes")]
    pub identity: Bytes,
    /// Its signed prekey (the fallback when no one-time prekey is left).
    pub signed_prekey: SignedPrekey,
    /// A one-time prekey, now removed from the pool; `None` when the pool was empty.
    pub one_time_prekey: Option<OneTimePrekey>,
}

/// Delivered (reached a device) or read (seen by the user).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptKind {
    /// The user's devices have received messages up to the ID.
    Delivered,
    /// The user has read messages up to the ID.
    Read,
}

impl ReceiptKind {
    /// The wire number.
    pub const fn number(self) -> u8 {
        match self {
            Self::Delivered => 0,
            Self::Read => 1,
        }
    }

    /// The kind for a wire number.
    pub const fn from_number(n: u8) -> Option<Self> {
        match n {
            0 => Some(Self::Delivered),
            1 => Some(Self::Read),
            _ => None,
        }
    }
}

/// A user's monotonic position of one kind in a conversation (R-MSG-8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptPosition {
    /// Whose position.
    pub user: UserId,
    /// Delivered or read.
    pub kind: ReceiptKind,
    /// Everything up to and including this ID.
    pub up_to: MessageId,
}

/// Which way to page through history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Older messages: IDs strictly below the anchor, newest first.
    Before,
    /// Newer messages: IDs strictly above the anchor, oldest first.
    After,
}

/// An uploaded attachment blob's record. The blob itself is ciphertext in the blob store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentMeta {
    /// The unguessable ID.
    pub id: AttachmentId,
    /// Only members of this conversation may download it (R-ATT-2).
    pub conversation: ConversationId,
    /// Who uploaded it.
    pub uploader: DeviceAddress,
    /// Its size in bytes.
    pub size: u64,
    /// When the upload completed.
    pub created_at: Timestamp,
}

/// A device's push registration (R-PUSH-1): an opaque token for the push gateway.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushToken {
    /// The platform or gateway the token belongs to ("fcm", "apns", "webhook").
    pub platform: String,
    /// The token itself. Never logged.
    pub token: String,
}

impl std::fmt::Debug for PushToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushToken")
            .field("platform", &self.platform)
            .field("token", &"<redacted>")
            .finish()
    }
}

impl<C> minicbor::Encode<C> for ReceiptKind {
    fn encode<W: minicbor::encode::Write>(
        &self,
        e: &mut minicbor::Encoder<W>,
        _: &mut C,
    ) -> Result<(), minicbor::encode::Error<W::Error>> {
        e.u8(self.number())?;
        Ok(())
    }
}

impl<'b, C> minicbor::Decode<'b, C> for ReceiptKind {
    fn decode(d: &mut minicbor::Decoder<'b>, _: &mut C) -> Result<Self, minicbor::decode::Error> {
        let p = d.position();
        Self::from_number(d.u8()?)
            .ok_or_else(|| minicbor::decode::Error::message("unknown receipt kind").at(p))
    }
}
