//! Error codes: the one table that maps every failure a peer can see to a stable number.
//!
//! The numbers travel in `Error` and `Closing` frames and in HTTP error bodies; they never
//! change meaning. A code this build does not know decodes as [`ErrorCode::Other`], so old
//! clients keep working when the server learns new codes.

use std::fmt;

use minicbor::{Decode, Decoder, Encode, Encoder, decode, encode};
use serde::{Deserialize, Serialize};

macro_rules! error_codes {
    ($($(#[$doc:meta])* $variant:ident = $num:literal, $name:literal;)*) => {
        /// A stable, documented error code (see docs/PROTOCOL.md, "Errors").
        #[derive(Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum ErrorCode {
            $($(#[$doc])* $variant,)*
            /// A code this build does not know.
            Other(u16),
        }

        impl ErrorCode {
            /// Every code this build knows, in numeric order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),*];

            /// The wire number.
            pub const fn number(self) -> u16 {
                match self {
                    $(Self::$variant => $num,)*
                    Self::Other(n) => n,
                }
            }

            /// The code for a wire number.
            pub const fn from_number(n: u16) -> Self {
                match n {
                    $($num => Self::$variant,)*
                    other => Self::Other(other),
                }
            }

            /// The snake_case name used in JSON bodies and logs.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => $name,)*
                    Self::Other(_) => "other",
                }
            }
        }
    };
}

error_codes! {
    /// The frame is not valid CBOR, or misses a required field, or a field is out of range.
    MalformedFrame = 1, "malformed_frame";
    /// The frame type is not one this server knows. The connection stays open.
    UnknownFrameType = 2, "unknown_frame_type";
    /// The frame is larger than `MAX_FRAME_BYTES`.
    FrameTooLarge = 3, "frame_too_large";
    /// The protocol version is not supported by this server.
    UnsupportedVersion = 4, "unsupported_version";
    /// The frame is not allowed in this state (for example `send` before `auth`).
    UnexpectedFrame = 5, "unexpected_frame";
    /// The request is well formed but semantically invalid (for example a duplicate recipient).
    InvalidRequest = 6, "invalid_request";
    /// The token is missing, unknown, expired or revoked.
    InvalidToken = 10, "invalid_token";
    /// Username or password is wrong.
    BadCredentials = 11, "bad_credentials";
    /// The caller may not do this (for example remove another user's device).
    Forbidden = 12, "forbidden";
    /// The caller is not a member of the conversation.
    NotMember = 20, "not_member";
    /// The user, device, conversation, message or attachment does not exist.
    NotFound = 21, "not_found";
    /// The group is at its member limit.
    GroupFull = 22, "group_full";
    /// The recipients do not match the current devices; see the `stale_devices` frame.
    StaleDevices = 23, "stale_devices";
    /// The message body is larger than `MAX_BODY_BYTES`.
    BodyTooLarge = 24, "body_too_large";
    /// A per-device header is larger than `MAX_DEVICE_HEADER_BYTES`.
    HeaderTooLarge = 25, "header_too_large";
    /// The name is taken (username at registration).
    Conflict = 26, "conflict";
    /// The user has the maximum number of devices.
    TooManyDevices = 27, "too_many_devices";
    /// Too many requests; retry after the given delay.
    RateLimited = 30, "rate_limited";
    /// The device did not read its frames fast enough; reconnect and resume from the cursor.
    SlowConsumer = 31, "slow_consumer";
    /// The server cannot serve from this cursor; fetch history and start a new cursor.
    ResyncRequired = 32, "resync_required";
    /// No heartbeat arrived within the presence window.
    HeartbeatTimeout = 33, "heartbeat_timeout";
    /// The upload or attachment exceeds the configured size limit.
    PayloadTooLarge = 34, "payload_too_large";
    /// The server failed; the request may be retried.
    Internal = 40, "internal";
    /// The server is unavailable (storage down, overloaded); retry later.
    Unavailable = 41, "unavailable";
    /// The server is shutting down; reconnect, possibly to another node.
    ShuttingDown = 42, "shutting_down";
}

impl ErrorCode {
    /// Whether retrying the same request later can succeed.
    pub const fn is_retryable(self) -> bool {
        matches!(
            self,
            Self::RateLimited
                | Self::SlowConsumer
                | Self::Internal
                | Self::Unavailable
                | Self::ShuttingDown
        )
    }
}

impl fmt::Debug for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.name(), self.number())
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u16(self.number())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        u16::deserialize(d).map(Self::from_number)
    }
}

impl<C> Encode<C> for ErrorCode {
    fn encode<W: encode::Write>(
        &self,
        e: &mut Encoder<W>,
        _: &mut C,
    ) -> Result<(), encode::Error<W::Error>> {
        e.u16(self.number())?;
        Ok(())
    }
}

impl<'b, C> Decode<'b, C> for ErrorCode {
    fn decode(d: &mut Decoder<'b>, _: &mut C) -> Result<Self, decode::Error> {
        d.u16().map(Self::from_number)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_unique_and_round_trip() {
        let mut seen = std::collections::BTreeSet::new();
        for &code in ErrorCode::ALL {
            assert!(seen.insert(code.number()), "{code:?} reuses a number");
            assert_eq!(ErrorCode::from_number(code.number()), code);
        }
        assert_eq!(ErrorCode::from_number(999), ErrorCode::Other(999));
    }
}
