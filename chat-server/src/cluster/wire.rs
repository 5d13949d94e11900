//! The bytes a [`BusMessage`] takes on Redis, and the channel a [`Topic`] maps to.
//!
//! A payload is a fixed header and one variant's fields, big-endian, with no field names:
//!
//! ```text
//! version (1) = 1 | origin node (8) | tag (1) | fields
//! tag 0 deliver      pos (8) | head length (4) | head | body (the rest)
//! tag 1 frame        frame (the rest)
//! tag 2 expiring     expires_at ms (8) | frame (the rest)
//! tag 3 close        error code (2)
//! tag 4 unsubscribe  topic (9)
//! tag 5 resubscribed topic (9)
//! topic: kind (1: 0 device, 1 user, 2 presence) | id (8)
//! ```
//!
//! A delivery's head and body stay separate so the receiving node shares the body between
//! its recipients without copying, and the frame bytes are forwarded as they are: the bus
//! carries encoded frames, it does not parse them. The origin lets a node drop its own
//! messages (it delivered them to its local sinks already).
//!
//! Decoding checks lengths and IDs and never panics; anything else is an error, which the
//! receiving node counts and drops.

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes};
use chat_core::protocol::SharedDeliver;
use chat_core::{BusMessage, DeviceId, ErrorCode, InboxPos, Timestamp, Topic, UserId};

/// The format version written first in every payload.
const VERSION: u8 = 1;

const DELIVER: u8 = 0;
const FRAME: u8 = 1;
const EXPIRING: u8 = 2;
const CLOSE: u8 = 3;
const UNSUBSCRIBE: u8 = 4;
const RESUBSCRIBED: u8 = 5;

const DEVICE: u8 = 0;
const USER: u8 = 1;
const PRESENCE: u8 = 2;

/// Which node published a payload: random per bus instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Origin(pub(crate) u64);

/// Why a payload or channel name could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum WireError {
    /// The payload ended before a field did.
    #[error("truncated")]
    Truncated,
    /// The payload was written by a format this build does not read.
    #[error("unknown version {0}")]
    Version(u8),
    /// The variant tag is unknown.
    #[error("unknown tag {0}")]
    Tag(u8),
    /// The topic kind is unknown.
    #[error("unknown topic kind {0}")]
    TopicKind(u8),
    /// An ID or position is out of range.
    #[error("id out of range")]
    Id,
    /// Bytes after a fixed-size variant.
    #[error("trailing bytes")]
    Trailing,
    /// The variant has no encoding (a newer `BusMessage` this build does not carry).
    #[error("variant not carried by the bus")]
    Unsupported,
}

/// Encodes `message` as published by `origin`.
pub(crate) fn encode(origin: Origin, message: &BusMessage) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::with_capacity(1 + 8 + 1 + 9 + message.frame_len() + 4);
    out.put_u8(VERSION);
    out.put_u64(origin.0);
    match message {
        BusMessage::Deliver { pos, frame } => {
            out.put_u8(DELIVER);
            out.put_u64(pos.get());
            let head_len = u32::try_from(frame.head.len()).map_err(|_| WireError::Truncated)?;
            out.put_u32(head_len);
            out.put_slice(&frame.head);
            out.put_slice(&frame.body);
        }
        BusMessage::Frame(frame) => {
            out.put_u8(FRAME);
            out.put_slice(frame);
        }
        BusMessage::Expiring { frame, expires_at } => {
            out.put_u8(EXPIRING);
            out.put_u64(expires_at.as_millis());
            out.put_slice(frame);
        }
        BusMessage::Close(code) => {
            out.put_u8(CLOSE);
            out.put_u16(code.number());
        }
        BusMessage::Unsubscribe(topic) => {
            out.put_u8(UNSUBSCRIBE);
            put_topic(&mut out, *topic)?;
        }
        BusMessage::Resubscribed(topic) => {
            out.put_u8(RESUBSCRIBED);
            put_topic(&mut out, *topic)?;
        }
        _ => return Err(WireError::Unsupported),
    }
    Ok(out)
}

/// Decodes a payload; the frames it carries share `payload`'s buffer.
pub(crate) fn decode(mut payload: Bytes) -> Result<(Origin, BusMessage), WireError> {
    let version = take_u8(&mut payload)?;
    if version != VERSION {
        return Err(WireError::Version(version));
    }
    let origin = Origin(take_u64(&mut payload)?);
    let tag = take_u8(&mut payload)?;
    let message = match tag {
        DELIVER => {
            let pos = InboxPos::new(take_u64(&mut payload)?).map_err(|_| WireError::Id)?;
            let head_len = take_u32(&mut payload)? as usize;
            if payload.len() < head_len {
                return Err(WireError::Truncated);
            }
            let head = payload.split_to(head_len);
            let frame = Arc::new(SharedDeliver {
                head,
                body: payload,
            });
            BusMessage::Deliver { pos, frame }
        }
        FRAME => BusMessage::Frame(payload),
        EXPIRING => {
            let expires_at = Timestamp::from_millis(take_u64(&mut payload)?);
            BusMessage::Expiring {
                frame: payload,
                expires_at,
            }
        }
        CLOSE => {
            let code = ErrorCode::from_number(take_u16(&mut payload)?);
            finished(&payload)?;
            BusMessage::Close(code)
        }
        UNSUBSCRIBE => {
            let topic = take_topic(&mut payload)?;
            finished(&payload)?;
            BusMessage::Unsubscribe(topic)
        }
        RESUBSCRIBED => {
            let topic = take_topic(&mut payload)?;
            finished(&payload)?;
            BusMessage::Resubscribed(topic)
        }
        other => return Err(WireError::Tag(other)),
    };
    Ok((origin, message))
}

/// The Redis channel of `topic` under the cluster's `prefix` (`chat:` by default, its end
/// included): `PREFIXd:ID` for a device, `PREFIXu:ID` for a user, `PREFIXp:ID` for a user's
/// presence (readable in `MONITOR`
/// and `PUBSUB CHANNELS`).
pub(crate) fn channel(prefix: &str, topic: Topic) -> Result<String, WireError> {
    let (kind, id) = match topic {
        Topic::Device(d) => ('d', d.get()),
        Topic::User(u) => ('u', u.get()),
        Topic::Presence(u) => ('p', u.get()),
        _ => return Err(WireError::Unsupported),
    };
    Ok(format!("{prefix}{kind}:{id}"))
}

/// The topic of a channel under `prefix`, if it is one of [`channel`]'s names.
pub(crate) fn topic_of(prefix: &str, channel: &str) -> Result<Topic, WireError> {
    let rest = channel.strip_prefix(prefix).ok_or(WireError::Truncated)?;
    let (kind, id) = rest.split_once(':').ok_or(WireError::Truncated)?;
    // Only canonical decimal: a leading `+` or zero would name the same topic twice.
    if id.is_empty() || id.starts_with(['+', '0']) {
        return Err(WireError::Id);
    }
    let id: u64 = id.parse().map_err(|_| WireError::Id)?;
    match kind {
        "d" => Ok(Topic::Device(DeviceId::new(id).map_err(|_| WireError::Id)?)),
        "u" => Ok(Topic::User(UserId::new(id).map_err(|_| WireError::Id)?)),
        "p" => Ok(Topic::Presence(UserId::new(id).map_err(|_| WireError::Id)?)),
        _ => Err(WireError::Truncated),
    }
}

fn put_topic(out: &mut Vec<u8>, topic: Topic) -> Result<(), WireError> {
    let (kind, id) = match topic {
        Topic::Device(d) => (DEVICE, d.get()),
        Topic::User(u) => (USER, u.get()),
        Topic::Presence(u) => (PRESENCE, u.get()),
        _ => return Err(WireError::Unsupported),
    };
    out.put_u8(kind);
    out.put_u64(id);
    Ok(())
}

fn take_topic(buf: &mut Bytes) -> Result<Topic, WireError> {
    let kind = take_u8(buf)?;
    let id = take_u64(buf)?;
    match kind {
        DEVICE => Ok(Topic::Device(DeviceId::new(id).map_err(|_| WireError::Id)?)),
        USER => Ok(Topic::User(UserId::new(id).map_err(|_| WireError::Id)?)),
        PRESENCE => Ok(Topic::Presence(UserId::new(id).map_err(|_| WireError::Id)?)),
        other => Err(WireError::TopicKind(other)),
    }
}

fn finished(buf: &Bytes) -> Result<(), WireError> {
    if buf.is_empty() {
        Ok(())
    } else {
        Err(WireError::Trailing)
    }
}

fn take_u8(buf: &mut Bytes) -> Result<u8, WireError> {
    buf.try_get_u8().map_err(|_| WireError::Truncated)
}

fn take_u16(buf: &mut Bytes) -> Result<u16, WireError> {
    buf.try_get_u16().map_err(|_| WireError::Truncated)
}

fn take_u32(buf: &mut Bytes) -> Result<u32, WireError> {
    buf.try_get_u32().map_err(|_| WireError::Truncated)
}

fn take_u64(buf: &mut Bytes) -> Result<u64, WireError> {
    buf.try_get_u64().map_err(|_| WireError::Truncated)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn topic() -> impl Strategy<Value = Topic> {
        prop_oneof![
            (1..=chat_core::MAX_ID).prop_map(|id| Topic::Device(DeviceId::new(id).unwrap())),
            (1..=chat_core::MAX_ID).prop_map(|id| Topic::User(UserId::new(id).unwrap())),
            (1..=chat_core::MAX_ID).prop_map(|id| Topic::Presence(UserId::new(id).unwrap())),
        ]
    }

    fn bytes() -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(Bytes::from)
    }

    fn message() -> impl Strategy<Value = BusMessage> {
        let code = prop_oneof![
            proptest::sample::select(ErrorCode::ALL),
            // Codes this build does not know round-trip as `Other`.
            (10_000u16..).prop_map(ErrorCode::Other),
        ];
        prop_oneof![
            (0..=chat_core::MAX_ID, bytes(), bytes()).prop_map(|(pos, head, body)| {
                BusMessage::Deliver {
                    pos: InboxPos::new(pos).unwrap(),
                    frame: Arc::new(SharedDeliver { head, body }),
                }
            }),
            bytes().prop_map(BusMessage::Frame),
            (bytes(), any::<u64>()).prop_map(|(frame, ms)| BusMessage::Expiring {
                frame,
                expires_at: Timestamp::from_millis(ms),
            }),
            code.prop_map(BusMessage::Close),
            topic().prop_map(BusMessage::Unsubscribe),
            topic().prop_map(BusMessage::Resubscribed),
        ]
    }

    proptest! {
        #[test]
        fn every_message_round_trips(origin in any::<u64>(), message in message()) {
            let encoded = encode(Origin(origin), &message).unwrap();
            let (from, decoded) = decode(Bytes::from(encoded)).unwrap();
            prop_assert_eq!(from, Origin(origin));
            prop_assert_eq!(decoded, message);
        }

        #[test]
        fn arbitrary_bytes_never_panic(payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(Bytes::from(payload));
        }

        #[test]
        fn truncated_payloads_are_errors_or_shorter_frames(
            message in message(),
            cut in any::<prop::sample::Index>(),
        ) {
            let encoded = encode(Origin(7), &message).unwrap();
            let cut = cut.index(encoded.len());
            // A prefix either fails or (for variants ending in "the rest") decodes to a
            // message of the same kind with fewer bytes; it never panics.
            if let Ok((_, decoded)) = decode(Bytes::copy_from_slice(&encoded[..cut])) {
                prop_assert!(decoded.frame_len() < message.frame_len() || message.frame_len() == 0);
            }
        }

        #[test]
        fn channels_round_trip(topic in topic(), prefix in "[a-z0-9:_-]{0,12}") {
            let name = channel(&prefix, topic).unwrap();
            prop_assert_eq!(topic_of(&prefix, &name), Ok(topic));
        }
    }

    #[test]
    fn malformed_payloads_are_refused() {
        let ok = encode(Origin(1), &BusMessage::Close(ErrorCode::InvalidToken)).unwrap();
        assert!(decode(Bytes::from(ok.clone())).is_ok());
        let mut version = ok.clone();
        version[0] = 9;
        assert_eq!(decode(Bytes::from(version)), Err(WireError::Version(9)));
        let mut tag = ok.clone();
        tag[9] = 77;
        assert_eq!(decode(Bytes::from(tag)), Err(WireError::Tag(77)));
        let mut trailing = ok;
        trailing.push(0);
        assert_eq!(decode(Bytes::from(trailing)), Err(WireError::Trailing));
        // A head longer than the payload.
        let mut deliver = vec![VERSION];
        deliver.extend_from_slice(&1u64.to_be_bytes());
        deliver.push(DELIVER);
        deliver.extend_from_slice(&5u64.to_be_bytes());
        deliver.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(decode(Bytes::from(deliver)), Err(WireError::Truncated));
        // A device ID of zero.
        let mut unsub = vec![VERSION];
        unsub.extend_from_slice(&1u64.to_be_bytes());
        unsub.extend_from_slice(&[UNSUBSCRIBE, DEVICE]);
        unsub.extend_from_slice(&0u64.to_be_bytes());
        assert_eq!(decode(Bytes::from(unsub)), Err(WireError::Id));
        for bad in [
            "x:d:1",
            "chat:d:",
            "chat:d:01",
            "chat:q:1",
            "chat:d:+1",
            "chat:u:0",
        ] {
            assert!(topic_of("chat:", bad).is_err(), "{bad}");
        }
    }
}
