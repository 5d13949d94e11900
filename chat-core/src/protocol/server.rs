//! Frames the server sends.

use bytes::Bytes;
use minicbor::{Decode, Decoder, Encode, Encoder, decode, encode};

use super::frames;
use crate::error::ErrorCode;
use crate::ids::{
    AttachmentId, ClientKey, ConversationId, DeviceAddress, InboxPos, MessageId, UserId,
};
use crate::model::{Envelope, InboxEntry, ReceiptKind};
use crate::time::Timestamp;
use crate::wire::bytes_field;

frames! {
    /// A frame from the server to a client.
    ServerFrame {
        /// Authentication succeeded; the backlog follows.
        1 => Welcome(Welcome),
        /// A send was stored durably (the send-ack).
        2 => Sent(Sent),
        /// One inbox entry: a message for this device.
        3 => Deliver(Deliver),
        /// The backlog up to `head` has been sent; live deliveries follow.
        4 => SyncEnd(SyncEnd),
        /// A member's delivered or read position moved.
        5 => Receipt(ReceiptEvent),
        /// A member started or stopped typing.
        6 => Typing(TypingEvent),
        /// A subscribed user's presence changed.
        7 => Presence(PresenceEvent),
        /// A request failed.
        8 => Error(ErrorFrame),
        /// A send's recipients did not match the current devices (R-E2E-4).
        9 => StaleDevices(StaleDevices),
        /// The server cannot serve the inbox from the given cursor (R-SYNC-2).
        10 => ResyncRequired(ResyncRequired),
        /// The server is about to close the connection, and why.
        11 => Closing(Closing),
        /// A user sharing a conversation with this one (or this user) changed their profile.
        12 => Profile(ProfileEvent),
    }
}

/// `welcome` (type 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Welcome {
    /// The protocol version the server speaks.
    #[n(0)]
    pub version: u16,
    /// The authenticated device.
    #[n(1)]
    pub device: DeviceAddress,
    /// How often the client must send `heartbeat`, in milliseconds.
    #[n(2)]
    pub heartbeat_ms: u32,
    /// The largest frame the server accepts, in bytes.
    #[n(3)]
    pub max_frame: u32,
    /// The device's inbox head at authentication.
    #[n(4)]
    pub head: InboxPos,
}

/// `sent` (type 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Sent {
    /// The `req` of the `send`.
    #[n(0)]
    pub req: u32,
    /// The conversation.
    #[n(1)]
    pub conversation: ConversationId,
    /// The message's ID.
    #[n(2)]
    pub id: MessageId,
    /// Server time at commit.
    #[n(3)]
    pub sent_at: Timestamp,
    /// True when the client key had been used: this is the first message's ID.
    #[n(4)]
    pub duplicate: bool,
}

/// `deliver` (type 3).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Deliver {
    /// The entry's position in this device's inbox.
    #[n(0)]
    pub pos: InboxPos,
    /// The conversation.
    #[n(1)]
    pub conversation: ConversationId,
    /// The message's ID.
    #[n(2)]
    pub id: MessageId,
    /// The sending device.
    #[n(3)]
    pub sender: DeviceAddress,
    /// The sender's idempotency key (lets the sender's other devices match their outbox).
    #[n(4)]
    pub client_key: ClientKey,
    /// Server time at commit.
    #[n(5)]
    pub sent_at: Timestamp,
    /// The per-device ciphertext.
    #[n(6)]
    #[cbor(with = "bytes_field")]
    pub header: Bytes,
    /// The shared ciphertext.
    #[n(7)]
    #[cbor(with = "bytes_field")]
    pub body: Bytes,
}

impl From<InboxEntry> for Deliver {
    fn from(entry: InboxEntry) -> Self {
        let Envelope {
            conversation,
            id,
            sender,
            client_key,
            sent_at,
            body,
        } = entry.envelope;
        Self {
            pos: entry.pos,
            conversation,
            id,
            sender,
            client_key,
            sent_at,
            header: entry.header,
            body,
        }
    }
}

impl Deliver {
    /// Encodes the frame in two parts, so that a message sent to many devices has its body
    /// encoded once and shared by every recipient's frame (reference-counted, not copied):
    /// the head is `[3, {0: pos, …, 6: header, 7: <byte string length>}]` and the body
    /// follows it as it is. `head` then `body` are exactly [`ServerFrame::encode`]'s bytes.
    pub fn encode_shared(&self) -> SharedDeliver {
        // The body is the map's last field. Encoded empty, it is the final byte 0x40 (a byte
        // string of length 0), which is replaced by the real length prefix.
        let empty = Self {
            body: Bytes::new(),
            ..self.clone()
        };
        let mut head = ServerFrame::Deliver(empty).encode();
        head.pop();
        push_byte_string_prefix(&mut head, self.body.len() as u64);
        SharedDeliver {
            head: Bytes::from(head),
            body: self.body.clone(),
        }
    }
}

/// A `deliver` frame encoded in two parts by [`Deliver::encode_shared`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedDeliver {
    /// Everything up to the body, for one device.
    pub head: Bytes,
    /// The message body, shared by every recipient.
    pub body: Bytes,
}

impl SharedDeliver {
    /// The encoded frame's length in bytes.
    pub fn len(&self) -> usize {
        self.head.len() + self.body.len()
    }

    /// Always false: a frame has a head.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The frame as one buffer, for a transport that needs contiguous bytes.
    pub fn to_bytes(&self) -> Bytes {
        let mut frame = Vec::with_capacity(self.len());
        frame.extend_from_slice(&self.head);
        frame.extend_from_slice(&self.body);
        Bytes::from(frame)
    }
}

/// Appends the head of a definite-length CBOR byte string (major type 2) of `len` bytes, in
/// its shortest form (RFC 8949, section 3.1), as minicbor writes it.
fn push_byte_string_prefix(buf: &mut Vec<u8>, len: u64) {
    const MAJOR: u8 = 0x40;
    match len {
        0..=23 => buf.push(MAJOR | len as u8),
        24..=0xff => buf.extend_from_slice(&[MAJOR | 24, len as u8]),
        0x100..=0xffff => {
            buf.push(MAJOR | 25);
            buf.extend_from_slice(&(len as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            buf.push(MAJOR | 26);
            buf.extend_from_slice(&(len as u32).to_be_bytes());
        }
        _ => {
            buf.push(MAJOR | 27);
            buf.extend_from_slice(&len.to_be_bytes());
        }
    }
}

/// `sync_end` (type 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct SyncEnd {
    /// Every entry up to this position has been sent.
    #[n(0)]
    pub head: InboxPos,
}

/// `receipt` (type 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct ReceiptEvent {
    /// The conversation.
    #[n(0)]
    pub conversation: ConversationId,
    /// Whose position moved.
    #[n(1)]
    pub user: UserId,
    /// Delivered or read.
    #[n(2)]
    pub kind: ReceiptKind,
    /// The new position.
    #[n(3)]
    pub up_to: MessageId,
}

/// `typing` (type 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct TypingEvent {
    /// The conversation.
    #[n(0)]
    pub conversation: ConversationId,
    /// The typing device.
    #[n(1)]
    pub from: DeviceAddress,
    /// Started (true) or stopped (false).
    #[n(2)]
    pub active: bool,
    /// The indicator expires by itself after this many milliseconds.
    #[n(3)]
    pub ttl_ms: u32,
}

/// `presence` (type 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct PresenceEvent {
    /// The user.
    #[n(0)]
    pub user: UserId,
    /// Whether any of their devices is online.
    #[n(1)]
    pub online: bool,
    /// When they were last active, if known.
    #[n(2)]
    pub last_active_at: Option<Timestamp>,
}

/// `error` (type 8).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct ErrorFrame {
    /// The `req` of the failed request, when it had one.
    #[n(0)]
    pub req: Option<u32>,
    /// What went wrong.
    #[n(1)]
    pub code: ErrorCode,
    /// A human-readable explanation (for logs, not for matching).
    #[n(2)]
    #[cbor(decode_with = "crate::wire::text")]
    pub message: String,
    /// For `rate_limited`: when to retry, in milliseconds.
    #[n(3)]
    pub retry_after_ms: Option<u32>,
}

/// `stale_devices` (type 9).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct StaleDevices {
    /// The `req` of the `send`.
    #[n(0)]
    pub req: u32,
    /// Devices to add: encrypt for them too.
    #[n(1)]
    pub missing: Vec<DeviceAddress>,
    /// Devices to drop.
    #[n(2)]
    pub extra: Vec<DeviceAddress>,
}

/// Why the server cannot serve from a cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ResyncReason {
    /// Entries after the cursor, up to `head` (the trim floor), passed retention and were
    /// deleted from the inbox; the entries after `head` follow.
    InboxTrimmed,
    /// The cursor is ahead of the inbox head (for example after a server restore).
    CursorAhead,
    /// A reason this build does not know.
    Other(u8),
}

impl ResyncReason {
    /// The wire number.
    pub const fn number(self) -> u8 {
        match self {
            Self::InboxTrimmed => 0,
            Self::CursorAhead => 1,
            Self::Other(n) => n,
        }
    }

    /// The reason for a wire number.
    pub const fn from_number(n: u8) -> Self {
        match n {
            0 => Self::InboxTrimmed,
            1 => Self::CursorAhead,
            other => Self::Other(other),
        }
    }
}

impl<C> Encode<C> for ResyncReason {
    fn encode<W: encode::Write>(
        &self,
        e: &mut Encoder<W>,
        _: &mut C,
    ) -> Result<(), encode::Error<W::Error>> {
        e.u8(self.number())?;
        Ok(())
    }
}

impl<'b, C> Decode<'b, C> for ResyncReason {
    fn decode(d: &mut Decoder<'b>, _: &mut C) -> Result<Self, decode::Error> {
        d.u8().map(Self::from_number)
    }
}

/// `resync_required` (type 10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct ResyncRequired {
    /// Why.
    #[n(0)]
    pub reason: ResyncReason,
    /// The cursor to continue from: the inbox head for `cursor_ahead`, the trim floor (the
    /// highest position trimmed) for `inbox_trimmed`, whose entries after it follow. The
    /// client takes it as its cursor and recovers what it missed from history.
    #[n(1)]
    pub head: InboxPos,
}

/// `closing` (type 11).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Closing {
    /// Why the server closes (`slow_consumer`, `invalid_token`, `shutting_down`, ...).
    #[n(0)]
    pub code: ErrorCode,
    /// A human-readable explanation.
    #[n(1)]
    #[cbor(decode_with = "crate::wire::text")]
    pub message: String,
}

/// `profile` (type 12). The text fields are plain strings on the wire: a client shows them
/// as they come, whatever validation rules (and Unicode version) the server applied.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct ProfileEvent {
    /// Whose profile changed.
    #[n(0)]
    pub user: UserId,
    /// The new display name.
    #[n(1)]
    #[cbor(decode_with = "crate::wire::text")]
    pub display_name: String,
    /// The new status text; absent when cleared.
    #[n(2)]
    #[cbor(decode_with = "crate::wire::opt_text")]
    pub status: Option<String>,
    /// The new avatar attachment; absent when cleared.
    #[n(3)]
    pub avatar: Option<AttachmentId>,
    /// When the profile changed.
    #[n(4)]
    pub updated_at: Timestamp,
}

impl From<&crate::people::Profile> for ProfileEvent {
    fn from(p: &crate::people::Profile) -> Self {
        Self {
            user: p.user,
            display_name: p.display_name.as_str().to_owned(),
            status: p.status.as_ref().map(|s| s.as_str().to_owned()),
            avatar: p.avatar,
            updated_at: p.updated_at,
        }
    }
}
