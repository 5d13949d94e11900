//! Plaintext content: what a client finds inside a message body after decrypting it.
//!
//! The server never sees these. They use the same encoding as frames (a CBOR array of a type
//! number and a map body) so that clients in any language agree on them; an unknown content
//! type decodes as [`Content::Unknown`] rather than failing, so old clients can show
//! "unsupported message" for types added later.
//!
//! A relation (an edit, delete or reaction, or a reply) also names its target by the
//! target's sender-chosen ID (its client key, which the encryption binds to the message; see
//! chat-crypto's `MessageBinding`) in an optional third array element, `{0: bytes(16)}`:
//! the server numbers messages, so a server that numbers them differently for two users could
//! otherwise point "delete #57" at another message. Receivers ignore a relation whose
//! target's client key differs ([`Content::target_key`]); decoders that do not know the
//! element skip it.

use minicbor::{Decode, Encode};

use crate::ids::{AttachmentId, ClientKey, MessageId, UserId};
use crate::limits::{MAX_CONTENT_BYTES, MAX_TEXT_CHARS};

/// The decrypted content of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Content {
    /// A text message, possibly replying to another (type 1).
    Text(Text),
    /// A file, encrypted and uploaded separately (type 2).
    Attachment(AttachmentPointer),
    /// Members joined or left a group (type 3).
    GroupChange(GroupChange),
    /// The sender's new text for one of their earlier messages (type 4).
    Edit(Edit),
    /// The sender deletes one of their earlier messages (type 5).
    Delete(Delete),
    /// Adds or removes the sender's reaction to a message (type 6).
    Reaction(Reaction),
    /// A content type this build does not know.
    Unknown {
        /// Its type number.
        kind: u32,
    },
}

/// Why content is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ContentError {
    /// The text has more than [`MAX_TEXT_CHARS`] characters.
    #[error("text has {chars} characters; the limit is {MAX_TEXT_CHARS}")]
    TextTooLong {
        /// How many it has.
        chars: usize,
    },
    /// The encoded content is larger than [`MAX_CONTENT_BYTES`].
    #[error("content too large")]
    TooLarge,
    /// A reaction's emoji is empty or longer than [`MAX_REACTION_BYTES`].
    #[error("a reaction is 1 to {MAX_REACTION_BYTES} bytes of text")]
    Reaction,
    /// The bytes are not a well-formed content.
    #[error("malformed content: {0}")]
    Malformed(String),
}

/// A text message (R-MSG-4).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Text {
    /// The text; at most [`MAX_TEXT_CHARS`] characters.
    #[n(0)]
    #[cbor(decode_with = "crate::wire::text")]
    pub body: String,
    /// The message this replies to, in the same conversation.
    #[n(1)]
    pub reply_to: Option<MessageId>,
}

/// The most UTF-8 bytes of a reaction's emoji: enough for the longest emoji ZWJ sequences
/// (a family with skin tones is about 40 bytes), small enough that reactions stay cheap to
/// keep per message.
pub const MAX_REACTION_BYTES: usize = 64;

/// An edit (R-MSG-7): replaces the text of `target`. Only edits by the target's own sender
/// count, and of several the one with the highest message ID wins (see [`Timeline`]).
///
/// [`Timeline`]: crate::Timeline
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Edit {
    /// The message edited, in the same conversation.
    #[n(0)]
    pub target: MessageId,
    /// Its new text; at most [`MAX_TEXT_CHARS`] characters.
    #[n(1)]
    #[cbor(decode_with = "crate::wire::text")]
    pub body: String,
}

/// A delete (R-MSG-7): a tombstone for `target` that also hides its edits and reactions.
/// Only a delete by the target's own sender counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Delete {
    /// The message deleted, in the same conversation.
    #[n(0)]
    pub target: MessageId,
}

/// A reaction (R-MSG-7): the sender adds (or, with `remove`, takes back) `emoji` on
/// `target`. Per sender and emoji, the reaction with the highest message ID wins.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Reaction {
    /// The message reacted to, in the same conversation.
    #[n(0)]
    pub target: MessageId,
    /// The emoji (any text of 1 to [`MAX_REACTION_BYTES`] bytes; clients show it as is).
    #[n(1)]
    #[cbor(decode_with = "crate::wire::text")]
    pub emoji: String,
    /// Takes the sender's earlier reaction with this emoji back.
    #[n(2)]
    pub remove: bool,
}

/// The symmetric key of one attachment. Its `Debug` output is redacted.
#[derive(Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(transparent)]
pub struct AttachmentKey(
    #[n(0)]
    #[cbor(with = "crate::wire::byte_array")]
    pub [u8; 32],
);

impl std::fmt::Debug for AttachmentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AttachmentKey(<redacted>)")
    }
}

/// Where an encrypted attachment is and how to open it (R-ATT-1).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct AttachmentPointer {
    /// The blob's ID on the server.
    #[n(0)]
    pub id: AttachmentId,
    /// The key the file was encrypted with.
    #[n(1)]
    pub key: AttachmentKey,
    /// The plaintext size in bytes.
    #[n(2)]
    pub size: u64,
    /// SHA-256 of the ciphertext blob, checked before decrypting.
    #[n(3)]
    #[cbor(with = "crate::wire::byte_array")]
    pub sha256: [u8; 32],
    /// The media type ("image/jpeg").
    #[n(4)]
    #[cbor(decode_with = "crate::wire::text")]
    pub mime: String,
    /// The file name, if any.
    #[n(5)]
    #[cbor(decode_with = "crate::wire::opt_text")]
    pub name: Option<String>,
    /// A caption, if any.
    #[n(6)]
    #[cbor(decode_with = "crate::wire::opt_text")]
    pub caption: Option<String>,
}

/// What happened to a group's membership. On the wire, an unsigned number (see
/// [`GroupAction::number`]); a number this version does not know decodes as
/// [`GroupAction::Unknown`], so actions added later never make the whole content
/// undecodable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GroupAction {
    /// The group was created with these members.
    Created,
    /// These users were added.
    Added,
    /// These users were removed.
    Removed,
    /// The sender left.
    Left,
    /// These members were made admins (issue 17).
    Promoted,
    /// These admins were made members.
    Demoted,
    /// The group was renamed (the new name in `name`; `users` empty).
    Renamed,
    /// Who may add members or rename changed (`users` empty; the new settings are in the
    /// group's signed change chain).
    SettingsChanged,
    /// An action of a later version, by its number: shown as a change this client cannot
    /// describe, and encoded back to the same number.
    Unknown(u32),
}

impl GroupAction {
    /// The action's wire number: 0 created, 1 added, 2 removed, 3 left, 4 promoted,
    /// 5 demoted, 6 renamed, 7 settings changed.
    pub const fn number(self) -> u32 {
        match self {
            Self::Created => 0,
            Self::Added => 1,
            Self::Removed => 2,
            Self::Left => 3,
            Self::Promoted => 4,
            Self::Demoted => 5,
            Self::Renamed => 6,
            Self::SettingsChanged => 7,
            Self::Unknown(n) => n,
        }
    }

    /// The action with wire number `n`; [`GroupAction::Unknown`] for numbers past those
    /// this version knows.
    pub const fn from_number(n: u32) -> Self {
        match n {
            0 => Self::Created,
            1 => Self::Added,
            2 => Self::Removed,
            3 => Self::Left,
            4 => Self::Promoted,
            5 => Self::Demoted,
            6 => Self::Renamed,
            7 => Self::SettingsChanged,
            n => Self::Unknown(n),
        }
    }
}

impl<C> Encode<C> for GroupAction {
    fn encode<W: minicbor::encode::Write>(
        &self,
        e: &mut minicbor::Encoder<W>,
        _: &mut C,
    ) -> Result<(), minicbor::encode::Error<W::Error>> {
        e.u32(self.number())?;
        Ok(())
    }
}

impl<'b, C> Decode<'b, C> for GroupAction {
    fn decode(d: &mut minicbor::Decoder<'b>, _: &mut C) -> Result<Self, minicbor::decode::Error> {
        Ok(Self::from_number(d.u32()?))
    }
}

/// A membership change, announced by the member who made it.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct GroupChange {
    /// What happened.
    #[n(0)]
    pub action: GroupAction,
    /// To whom.
    #[n(1)]
    pub users: Vec<UserId>,
    /// The group's name after the change, if it was set or changed.
    #[n(2)]
    #[cbor(decode_with = "crate::wire::opt_text")]
    pub name: Option<String>,
}

/// The content type numbers (docs/PROTOCOL.md section 5), the one place they are written.
pub mod kinds {
    /// [`super::Text`].
    pub const TEXT: u32 = 1;
    /// [`super::AttachmentPointer`].
    pub const ATTACHMENT: u32 = 2;
    /// [`super::GroupChange`].
    pub const GROUP_CHANGE: u32 = 3;
    /// [`super::Edit`].
    pub const EDIT: u32 = 4;
    /// [`super::Delete`].
    pub const DELETE: u32 = 5;
    /// [`super::Reaction`].
    pub const REACTION: u32 = 6;
}

impl Content {
    /// The content's type number ([`kinds`]).
    pub const fn kind(&self) -> u32 {
        match self {
            Self::Text(_) => kinds::TEXT,
            Self::Attachment(_) => kinds::ATTACHMENT,
            Self::GroupChange(_) => kinds::GROUP_CHANGE,
            Self::Edit(_) => kinds::EDIT,
            Self::Delete(_) => kinds::DELETE,
            Self::Reaction(_) => kinds::REACTION,
            Self::Unknown { kind } => *kind,
        }
    }

    /// The message an edit, delete or reaction points at; `None` for content that stands on
    /// its own (a reply is a message of its own, so a [`Text`] gives `None` too).
    pub const fn target(&self) -> Option<MessageId> {
        match self {
            Self::Edit(Edit { target, .. })
            | Self::Delete(Delete { target })
            | Self::Reaction(Reaction { target, .. }) => Some(*target),
            _ => None,
        }
    }

    /// Checks the limits a sending client enforces: at most [`MAX_TEXT_CHARS`] characters
    /// of text (in a text or an edit), a reaction of 1 to [`MAX_REACTION_BYTES`] bytes.
    pub fn validate(&self) -> Result<(), ContentError> {
        let body = match self {
            Self::Text(Text { body, .. }) | Self::Edit(Edit { body, .. }) => body,
            Self::Reaction(Reaction { emoji, .. }) => {
                if emoji.is_empty() || emoji.len() > MAX_REACTION_BYTES {
                    return Err(ContentError::Reaction);
                }
                return Ok(());
            }
            _ => return Ok(()),
        };
        let chars = body.chars().count();
        if chars > MAX_TEXT_CHARS {
            return Err(ContentError::TextTooLong { chars });
        }
        Ok(())
    }

    /// Encodes the content; refuses content that fails [`Content::validate`] or an
    /// [`Content::Unknown`], which has no body to encode.
    pub fn encode(&self) -> Result<Vec<u8>, ContentError> {
        self.encode_inner(None)
    }

    /// Encodes a relation (or a reply) with its target's client key, the sender-chosen ID
    /// that receivers check the target against (see the module docs).
    pub fn encode_with_target_key(&self, target: ClientKey) -> Result<Vec<u8>, ContentError> {
        self.encode_inner(Some(target))
    }

    /// The target's client key a relation carries, if any. Total: `None` for content without
    /// one or that does not decode.
    pub fn target_key(bytes: &[u8]) -> Option<ClientKey> {
        let mut d = minicbor::Decoder::new(bytes);
        if d.array().ok()?.is_some_and(|n| n < 3) {
            return None;
        }
        d.skip().ok()?;
        d.skip().ok()?;
        let entries = d.map().ok()??;
        for _ in 0..entries {
            if d.u32().ok()? == 0 {
                let key: [u8; 16] = d.bytes().ok()?.try_into().ok()?;
                return Some(ClientKey::from_bytes(key));
            }
            d.skip().ok()?;
        }
        None
    }

    fn encode_inner(&self, target_key: Option<ClientKey>) -> Result<Vec<u8>, ContentError> {
        self.validate()?;
        let mut buf = Vec::new();
        let mut e = minicbor::Encoder::new(&mut buf);
        let len = if target_key.is_some() { 3 } else { 2 };
        let e = e
            .array(len)
            .map_err(|e| ContentError::Malformed(e.to_string()))?;
        let written = match self {
            Self::Text(b) => e.u32(self.kind()).and_then(|e| e.encode(b)),
            Self::Attachment(b) => e.u32(self.kind()).and_then(|e| e.encode(b)),
            Self::GroupChange(b) => e.u32(self.kind()).and_then(|e| e.encode(b)),
            Self::Edit(b) => e.u32(self.kind()).and_then(|e| e.encode(b)),
            Self::Delete(b) => e.u32(self.kind()).and_then(|e| e.encode(b)),
            Self::Reaction(b) => e.u32(self.kind()).and_then(|e| e.encode(b)),
            Self::Unknown { .. } => {
                return Err(ContentError::Malformed(
                    "unknown content cannot be encoded".into(),
                ));
            }
        };
        let written = match target_key {
            Some(key) => written
                .and_then(|e| e.map(1))
                .and_then(|e| e.u32(0))
                .and_then(|e| e.bytes(key.as_bytes())),
            None => written,
        };
        debug_assert!(written.is_ok());
        if buf.len() > MAX_CONTENT_BYTES {
            return Err(ContentError::TooLarge);
        }
        Ok(buf)
    }

    /// Decodes content. Total: never panics; an unknown type gives [`Content::Unknown`].
    pub fn decode(bytes: &[u8]) -> Result<Self, ContentError> {
        if bytes.len() > MAX_CONTENT_BYTES {
            return Err(ContentError::TooLarge);
        }
        let malformed = |e: minicbor::decode::Error| ContentError::Malformed(e.to_string());
        let mut d = minicbor::Decoder::new(bytes);
        // `None` is an indefinite-length array; elements after the body are ignored.
        if d.array().map_err(malformed)?.is_some_and(|n| n < 2) {
            return Err(ContentError::Malformed(
                "content is an array [type, body]".into(),
            ));
        }
        let content = match d.u32().map_err(malformed)? {
            kinds::TEXT => Self::Text(d.decode().map_err(malformed)?),
            kinds::ATTACHMENT => Self::Attachment(d.decode().map_err(malformed)?),
            kinds::GROUP_CHANGE => Self::GroupChange(d.decode().map_err(malformed)?),
            kinds::EDIT => Self::Edit(d.decode().map_err(malformed)?),
            kinds::DELETE => Self::Delete(d.decode().map_err(malformed)?),
            kinds::REACTION => Self::Reaction(d.decode().map_err(malformed)?),
            kind => return Ok(Self::Unknown { kind }),
        };
        content.validate()?;
        Ok(content)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relation_carries_its_targets_client_key_and_old_decoders_skip_it() {
        let delete = Content::Delete(Delete {
            target: MessageId::new(57).unwrap(),
        });
        let key = ClientKey::from_bytes([7; 16]);
        let bytes = delete.encode_with_target_key(key).unwrap();
        assert_eq!(Content::decode(&bytes).unwrap(), delete);
        assert_eq!(Content::target_key(&bytes), Some(key));
        let plain = delete.encode().unwrap();
        assert_eq!(Content::target_key(&plain), None);
        // [5, {0: 57}, {0: h'07..07'}]: the documented layout.
        let mut expected = vec![0x83, 0x05, 0xA1, 0x00, 0x18, 57, 0xA1, 0x00, 0x50];
        expected.extend_from_slice(&[7; 16]);
        assert_eq!(bytes, expected);
        assert_eq!(Content::target_key(&[0x83, 0x05]), None);
        assert_eq!(Content::target_key(b"junk"), None);
        // Truncated at every byte: never a panic, never a key.
        let mut truncated = bytes.clone();
        while truncated.pop().is_some() {
            assert_eq!(Content::target_key(&truncated), None);
        }
    }
}
