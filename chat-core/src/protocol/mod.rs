//! The WebSocket wire protocol (R-SYNC-1): every frame either side sends, and its codec.
//!
//! A frame is one binary WebSocket message holding one CBOR item: an array of two elements,
//! the frame type (an unsigned integer) and the body (a map from unsigned integer field
//! numbers to values). Decoders ignore unknown fields and array elements past the second, so
//! fields can be added without a version bump; a new frame type decodes as
//! [`DecodeError::UnknownType`], which a server answers with `unknown_frame_type` and a
//! client ignores. docs/PROTOCOL.md is the normative description; the golden vectors in
//! `chat-core/tests/vectors/frames.txt` pin the bytes.
//!
//! Decoding is total: any input returns a frame or an error, never panics, and allocates at
//! most in proportion to the input, which is itself bounded by [`MAX_FRAME_BYTES`](crate::limits::MAX_FRAME_BYTES).

mod client;
mod server;

pub use client::{
    Ack, Auth, ClientFrame, Heartbeat, ReceiptUpdate, Send, Subscribe, SyncRequest, TypingUpdate,
    Unsubscribe,
};
pub use server::{
    Closing, Deliver, ErrorFrame, PresenceEvent, ProfileEvent, ReceiptEvent, ResyncReason,
    ResyncRequired, Sent, ServerFrame, SharedDeliver, StaleDevices, SyncEnd, TypingEvent, Welcome,
};

use crate::error::ErrorCode;

/// The protocol version this build speaks. Sent in `auth` and `welcome`.
pub const PROTOCOL_VERSION: u16 = 1;

/// The WebSocket subprotocol name for [`PROTOCOL_VERSION`].
pub const SUBPROTOCOL: &str = "chat.v1";

/// When a client should acknowledge: once this many delivered entries are unacknowledged,
/// or [`ACK_WITHIN`] after the first of them, whichever comes first. chat-client acks so,
/// and chat-bench does the same to load a node as real clients would.
pub const ACK_EVERY: u64 = 64;

/// How long a client lets a delivered entry go unacknowledged at most; see [`ACK_EVERY`].
pub const ACK_WITHIN: std::time::Duration = std::time::Duration::from_millis(250);

/// Why bytes did not decode to a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input is longer than [`MAX_FRAME_BYTES`](crate::limits::MAX_FRAME_BYTES); nothing
    /// was parsed.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// The input's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The frame type is not one this build knows.
    #[error("unknown frame type {0}")]
    UnknownType(u32),
    /// The input is not a well-formed frame of its type.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

impl DecodeError {
    /// The wire error code to answer with.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::TooLarge { .. } => ErrorCode::FrameTooLarge,
            Self::UnknownType(_) => ErrorCode::UnknownFrameType,
            Self::Malformed(_) => ErrorCode::MalformedFrame,
        }
    }
}

impl From<minicbor::decode::Error> for DecodeError {
    fn from(err: minicbor::decode::Error) -> Self {
        Self::Malformed(err.to_string())
    }
}

/// Declares a frame enum over body types, with its type numbers, encoder and total decoder.
macro_rules! frames {
    (
        $(#[$meta:meta])*
        $name:ident {
            $( $(#[$vmeta:meta])* $num:literal => $variant:ident($body:ty), )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        #[non_exhaustive]
        pub enum $name {
            $( $(#[$vmeta])* $variant($body), )*
        }

        impl $name {
            /// The frame's type number on the wire.
            pub const fn kind(&self) -> u32 {
                match self {
                    $( Self::$variant(_) => $num, )*
                }
            }

            /// The frame's name as used in docs and logs.
            pub const fn name(&self) -> &'static str {
                match self {
                    $( Self::$variant(_) => stringify!($variant), )*
                }
            }

            /// Encodes the frame into a new buffer.
            pub fn encode(&self) -> Vec<u8> {
                let mut buf = Vec::new();
                self.encode_into(&mut buf);
                buf
            }

            /// Appends the encoded frame to `buf`.
            pub fn encode_into(&self, buf: &mut Vec<u8>) {
                let mut e = minicbor::Encoder::new(buf);
                // Writing into a Vec cannot fail and no body encoder returns an error.
                let written = match self {
                    $( Self::$variant(body) => e.array(2).and_then(|e| e.u32($num))
                        .and_then(|e| e.encode(body)).map(|_| ()), )*
                };
                debug_assert!(written.is_ok());
            }

            /// Decodes one frame. Total: returns an error for any input that is not exactly
            /// one well-formed frame.
            pub fn decode(bytes: &[u8]) -> Result<Self, $crate::protocol::DecodeError> {
                if bytes.len() > $crate::limits::MAX_FRAME_BYTES {
                    return Err($crate::protocol::DecodeError::TooLarge { len: bytes.len(), max: $crate::limits::MAX_FRAME_BYTES });
                }
                let mut d = minicbor::Decoder::new(bytes);
                // `None`: an indefinite-length array, which ends at its break.
                let items = d.array()?;
                if items.is_some_and(|n| n < 2) {
                    return Err($crate::protocol::DecodeError::Malformed("a frame is an array [type, body]".into()));
                }
                let frame = match d.u32()? {
                    $( $num => Self::$variant(d.decode()?), )*
                    other => return Err($crate::protocol::DecodeError::UnknownType(other)),
                };
                $crate::wire::skip_rest(&mut d, items, 2)?;
                if d.position() != bytes.len() {
                    return Err($crate::protocol::DecodeError::Malformed("trailing bytes after the frame".into()));
                }
                Ok(frame)
            }
        }

        $(
            impl From<$body> for $name {
                fn from(body: $body) -> Self {
                    Self::$variant(body)
                }
            }
        )*
    };
}

pub(crate) use frames;
