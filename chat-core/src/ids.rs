//! Identifiers. Every ID is a validated newtype, never a bare integer or string, so a device
//! ID cannot be passed where a user ID is expected.
//!
//! Numeric IDs are allocated by the store. They stay below 2^63 so that every backend can hold
//! them in a signed 64-bit column; decoding a larger value is refused.

use std::fmt;
use std::str::FromStr;

use minicbor::{Decode, Decoder, Encode, Encoder, decode, encode};
use serde::{Deserialize, Serialize};

/// The largest value a numeric ID may take: IDs live in signed 64-bit database columns.
pub const MAX_ID: u64 = i64::MAX as u64;

/// The reason a string or number is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// A numeric ID above [`MAX_ID`].
    #[error("identifier out of range")]
    OutOfRange,
    /// Not a decimal number, or not the expected number of hex digits.
    #[error("identifier is not well formed")]
    Malformed,
    /// A username with characters outside `a-z 0-9 _ .` or of the wrong length.
    #[error("usernames are 3 to 32 characters of a-z, 0-9, '_' and '.'")]
    Username,
}

macro_rules! numeric_id {
    ($(#[$meta:meta])* $name:ident, $min:expr) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "u64", into = "u64")]
        pub struct $name(u64);

        impl $name {
            /// The smallest valid value.
            pub const MIN: Self = Self($min);

            /// The largest valid value ([`MAX_ID`]).
            pub const MAX: Self = Self(MAX_ID);

            /// Wraps `value`, refusing values above [`MAX_ID`] or below [`Self::MIN`].
            pub const fn new(value: u64) -> Result<Self, IdError> {
                if value > MAX_ID || value < Self::MIN.0 {
                    Err(IdError::OutOfRange)
                } else {
                    Ok(Self(value))
                }
            }

            /// The number inside.
            pub const fn get(self) -> u64 {
                self.0
            }
        }

        impl TryFrom<u64> for $name {
            type Error = IdError;
            fn try_from(value: u64) -> Result<Self, IdError> {
                Self::new(value)
            }
        }

        impl From<$name> for u64 {
            fn from(id: $name) -> Self {
                id.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                s.parse::<u64>().map_err(|_| IdError::Malformed).and_then(Self::new)
            }
        }

        impl<C> Encode<C> for $name {
            fn encode<W: encode::Write>(
                &self,
                e: &mut Encoder<W>,
                _: &mut C,
            ) -> Result<(), encode::Error<W::Error>> {
                e.u64(self.0)?;
                Ok(())
            }
        }

        impl<'b, C> Decode<'b, C> for $name {
            fn decode(d: &mut Decoder<'b>, _: &mut C) -> Result<Self, decode::Error> {
                let p = d.position();
                Self::new(d.u64()?).map_err(|e| decode::Error::message(e).at(p))
            }
        }
    };
}

numeric_id!(
    /// A user account. Allocated by the store at registration.
    UserId, 1
);
numeric_id!(
    /// One device (phone, laptop, bot) of a user, with its own keys, token and inbox.
    /// Device IDs are unique across all users.
    DeviceId, 1
);
numeric_id!(
    /// A one-to-one or group conversation.
    ConversationId, 1
);
numeric_id!(
    /// A message's position in its conversation (R-MSG-1): assigned by the server, unique
    /// within the conversation and strictly increasing with commit order, starting at 1.
    /// Sorting by ID sorts by time; it is not a timestamp.
    MessageId, 1
);
numeric_id!(
    /// A position in one device's inbox (R-SYNC-2): the inbox is gapless, starting at 1.
    /// `InboxPos::ZERO` is the cursor of a device that has processed nothing yet.
    InboxPos, 0
);

impl InboxPos {
    /// The cursor of a device that has processed nothing.
    pub const ZERO: Self = Self(0);

    /// The position after this one, or `None` past [`MAX_ID`].
    pub const fn next(self) -> Option<Self> {
        if self.0 >= MAX_ID {
            None
        } else {
            Some(Self(self.0 + 1))
        }
    }
}

impl MessageId {
    /// The ID after this one, or `None` past [`MAX_ID`].
    pub const fn next(self) -> Option<Self> {
        if self.0 >= MAX_ID {
            None
        } else {
            Some(Self(self.0 + 1))
        }
    }
}

macro_rules! random_id {
    ($(#[$meta:meta])* $name:ident, $len:expr) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name([u8; $len]);

        impl $name {
            /// The length in bytes.
            pub const LEN: usize = $len;

            /// Wraps bytes chosen by a random generator.
            pub const fn from_bytes(bytes: [u8; $len]) -> Self {
                Self(bytes)
            }

            /// The bytes inside.
            pub const fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), hex::encode(self.0))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                let mut out = [0u8; $len];
                hex::decode_to_slice(s, &mut out).map_err(|_| IdError::Malformed)?;
                Ok(Self(out))
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&hex::encode(self.0))
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }

        impl<C> Encode<C> for $name {
            fn encode<W: encode::Write>(
                &self,
                e: &mut Encoder<W>,
                _: &mut C,
            ) -> Result<(), encode::Error<W::Error>> {
                e.bytes(&self.0)?;
                Ok(())
            }
        }

        impl<'b, C> Decode<'b, C> for $name {
            fn decode(d: &mut Decoder<'b>, _: &mut C) -> Result<Self, decode::Error> {
                let p = d.position();
                let bytes = crate::wire::concat_bytes(d)?;
                <[u8; $len]>::try_from(bytes)
                    .map(Self)
                    .map_err(|_| decode::Error::message(IdError::Malformed).at(p))
            }
        }
    };
}

random_id!(
    /// A key the client picks at random for each message it sends (R-MSG-2). Retrying a send
    /// with the same key never makes a second message: the retry gets the first one's ID.
    ClientKey, 16
);
random_id!(
    /// An attachment blob. 128 random bits chosen by the server, so it cannot be guessed.
    AttachmentId, 16
);

/// A validated username: 3 to 32 characters of `a-z`, `0-9`, `_` and `.`, compared exactly.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Username(String);

impl Username {
    /// The shortest username allowed.
    pub const MIN_LEN: usize = 3;
    /// The longest username allowed.
    pub const MAX_LEN: usize = 32;

    /// Validates `name`.
    pub fn new(name: impl Into<String>) -> Result<Self, IdError> {
        let name = name.into();
        let ok_len = (Self::MIN_LEN..=Self::MAX_LEN).contains(&name.len());
        let ok_chars = name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.');
        if ok_len && ok_chars {
            Ok(Self(name))
        } else {
            Err(IdError::Username)
        }
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Username {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, IdError> {
        Self::new(value)
    }
}

impl From<Username> for String {
    fn from(name: Username) -> Self {
        name.0
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A device together with the user who owns it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Encode, Decode,
)]
#[cbor(map)]
pub struct DeviceAddress {
    /// The owner.
    #[n(0)]
    pub user: UserId,
    /// The device.
    #[n(1)]
    pub device: DeviceId,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_ids_refuse_out_of_range() {
        assert_eq!(UserId::new(0), Err(IdError::OutOfRange));
        assert_eq!(UserId::new(MAX_ID + 1), Err(IdError::OutOfRange));
        assert_eq!(InboxPos::new(0), Ok(InboxPos::ZERO));
        assert_eq!("42".parse::<MessageId>().map(MessageId::get), Ok(42));
        assert_eq!("-1".parse::<MessageId>(), Err(IdError::Malformed));
    }

    #[test]
    fn usernames_are_validated() {
        assert!(Username::new("alice_01.x").is_ok());
        for bad in ["al", "Alice", "a b c", "ålice", &"a".repeat(33)] {
            assert_eq!(Username::new(bad), Err(IdError::Username), "{bad}");
        }
    }

    #[test]
    fn random_ids_round_trip_as_hex() {
        let key = ClientKey::from_bytes([0xab; 16]);
        assert_eq!(key.to_string().parse::<ClientKey>(), Ok(key));
        let json = serde_json::to_string(&key).unwrap();
        assert_eq!(json, format!("\"{key}\""));
        assert_eq!("abc".parse::<ClientKey>(), Err(IdError::Malformed));
    }
}
