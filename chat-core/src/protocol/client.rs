//! Frames a client sends.

use bytes::Bytes;
use minicbor::{Decode, Encode};

use super::frames;
use crate::error::ErrorCode;
use crate::ids::{ClientKey, ConversationId, InboxPos, MessageId, UserId};
use crate::limits::{
    MAX_BODY_BYTES, MAX_DEVICE_HEADER_BYTES, MAX_PRESENCE_SUBSCRIPTIONS, MAX_RECIPIENT_DEVICES,
};
use crate::model::{ReceiptKind, Recipient};
use crate::wire::bytes_field;

frames! {
    /// A frame from a client to the server.
    ClientFrame {
        /// Authenticate with a device token and resume from a cursor. Must be first.
        1 => Auth(Auth),
        /// Send a message.
        2 => Send(Send),
        /// Acknowledge inbox entries up to a position (advances the stored cursor).
        3 => Ack(Ack),
        /// Ask for the inbox again after a position (gap repair).
        4 => Sync(SyncRequest),
        /// Raise the user's delivered or read position in a conversation.
        5 => Receipt(ReceiptUpdate),
        /// Start or stop typing in a conversation (relayed, never stored).
        6 => Typing(TypingUpdate),
        /// Keep the device online (R-PRES-1).
        7 => Heartbeat(Heartbeat),
        /// Subscribe to users' presence.
        8 => Subscribe(Subscribe),
        /// Unsubscribe from users' presence.
        9 => Unsubscribe(Unsubscribe),
    }
}

/// `auth` (type 1).
#[derive(Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Auth {
    /// The protocol version the client speaks.
    #[n(0)]
    pub version: u16,
    /// The device's bearer token from log-in.
    #[n(1)]
    #[cbor(decode_with = "crate::wire::text")]
    pub token: String,
    /// The highest inbox position the device has processed (`0` for none).
    #[n(2)]
    pub cursor: InboxPos,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("version", &self.version)
            .field("token", &"<redacted>")
            .field("cursor", &self.cursor)
            .finish()
    }
}

/// `send` (type 2): one shared ciphertext body and a header for every recipient device.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Send {
    /// Chosen by the client; echoed in the answer (`sent`, `error` or `stale_devices`).
    #[n(0)]
    pub req: u32,
    /// The target conversation.
    #[n(1)]
    pub conversation: ConversationId,
    /// The idempotency key (R-MSG-2).
    #[n(2)]
    pub client_key: ClientKey,
    /// The shared ciphertext.
    #[n(3)]
    #[cbor(with = "bytes_field")]
    pub body: Bytes,
    /// Every device of every member except the sending device.
    #[n(4)]
    pub recipients: Vec<Recipient>,
}

impl Send {
    /// Checks the limits a server enforces before storing (R-MSG-4): the body and header byte
    /// bounds, the recipient count, and no duplicate recipient.
    pub fn validate(&self) -> Result<(), ErrorCode> {
        if self.body.len() > MAX_BODY_BYTES {
            return Err(ErrorCode::BodyTooLarge);
        }
        if self.recipients.len() > MAX_RECIPIENT_DEVICES {
            return Err(ErrorCode::InvalidRequest);
        }
        if self
            .recipients
            .iter()
            .any(|r| r.header.len() > MAX_DEVICE_HEADER_BYTES)
        {
            return Err(ErrorCode::HeaderTooLarge);
        }
        let mut devices: Vec<_> = self.recipients.iter().map(|r| r.device.device).collect();
        devices.sort_unstable();
        if devices.windows(2).any(|w| w.first() == w.get(1)) {
            return Err(ErrorCode::InvalidRequest);
        }
        Ok(())
    }
}

/// `ack` (type 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Ack {
    /// Everything up to and including this position is processed and stored by the client.
    #[n(0)]
    pub up_to: InboxPos,
}

/// `sync` (type 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct SyncRequest {
    /// Send inbox entries after this position, then `sync_end`.
    #[n(0)]
    pub after: InboxPos,
}

/// `receipt` (type 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct ReceiptUpdate {
    /// The conversation.
    #[n(0)]
    pub conversation: ConversationId,
    /// Delivered or read.
    #[n(1)]
    pub kind: ReceiptKind,
    /// Everything up to and including this message.
    #[n(2)]
    pub up_to: MessageId,
}

/// `typing` (type 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct TypingUpdate {
    /// The conversation.
    #[n(0)]
    pub conversation: ConversationId,
    /// Started (true) or stopped (false) typing.
    #[n(1)]
    pub active: bool,
}

/// `heartbeat` (type 7): an empty body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Heartbeat {}

/// `subscribe` (type 8).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Subscribe {
    /// Users whose presence to receive; at most `MAX_PRESENCE_SUBSCRIPTIONS`.
    #[n(0)]
    pub users: Vec<UserId>,
}

impl Subscribe {
    /// Checks the list's length.
    pub fn validate(&self) -> Result<(), ErrorCode> {
        if self.users.len() > MAX_PRESENCE_SUBSCRIPTIONS {
            return Err(ErrorCode::InvalidRequest);
        }
        Ok(())
    }
}

/// `unsubscribe` (type 9).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Unsubscribe {
    /// Users to stop receiving presence for.
    #[n(0)]
    pub users: Vec<UserId>,
}
