//! What a message is bound to, sealed inside its encryption: the conversation, the kind of
//! conversation, the sender-chosen message ID and the sender's timestamp.
//!
//! The server routes ciphertext by conversation and numbers messages; none of that is
//! authenticated by the ratchet or the sender key alone. So the sender puts a
//! [`MessageBinding`] in front of the content *inside* the plaintext that it encrypts, and the
//! receiver checks it against the delivery before it uses the content: a message the server
//! files under another conversation, as another kind, or under another client key is refused
//! with [`Error::Misfiled`], and relations can name their target by the sender-chosen ID
//! rather than by the server's number.
//!
//! Layout (version 1), 34 bytes before the content:
//! `C1` ‖ kind (1: one-to-one, 2: group) ‖ conversation ID (u64 BE) ‖ message ID (16 bytes,
//! the sender-chosen client key) ‖ sender's timestamp (ms since the Unix epoch, u64 BE) ‖
//! content.

use crate::Error;
use crate::codec::{Reader, Writer};

/// The first byte of a sealed plaintext: binding layout version 1.
const BINDING_V1: u8 = 0xC1;
/// Bytes a binding adds in front of the content.
pub const BINDING_LEN: usize = 1 + 1 + 8 + 16 + 8;

/// The kind of conversation a message was sent in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConversationKind {
    /// One-to-one: the content key travels in pairwise headers.
    Direct,
    /// A group: the body is a sender-key message.
    Group,
}

impl ConversationKind {
    fn byte(self) -> u8 {
        match self {
            Self::Direct => 1,
            Self::Group => 2,
        }
    }
}

/// Where and as what a message was sent, as its sender states it inside the ciphertext.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageBinding {
    /// One-to-one or group.
    pub kind: ConversationKind,
    /// The conversation's ID.
    pub conversation: u64,
    /// The sender-chosen message ID (the client key the server sees too).
    pub message_id: [u8; 16],
    /// The sender's clock when it sent the message, in ms since the Unix epoch (the sender's
    /// claim: authenticated as the sender's, not as true).
    pub sent_at_ms: u64,
}

impl MessageBinding {
    /// `binding ‖ content`: the plaintext to encrypt.
    pub fn seal(&self, content: &[u8]) -> Vec<u8> {
        let mut w = Writer::with_capacity(BINDING_LEN + content.len());
        w.u8(BINDING_V1)
            .u8(self.kind.byte())
            .u64(self.conversation)
            .raw(&self.message_id)
            .u64(self.sent_at_ms)
            .raw(content);
        w.into_vec()
    }

    /// Splits a decrypted plaintext into its binding and content, and checks that the
    /// binding names `kind`, `conversation` and `message_id` (what the delivery says); the
    /// sender's timestamp is returned as sent. Anything else is [`Error::Misfiled`].
    pub fn open(
        plaintext: &[u8],
        kind: ConversationKind,
        conversation: u64,
        message_id: [u8; 16],
    ) -> Result<(Self, &[u8]), Error> {
        let mut r = Reader::new(plaintext, "message binding");
        let version = r.u8()?;
        if version != BINDING_V1 {
            return Err(Error::UnsupportedVersion(version));
        }
        let kind_byte = r.u8()?;
        let binding = Self {
            kind,
            conversation: r.u64()?,
            message_id: r.array()?,
            sent_at_ms: r.u64()?,
        };
        if kind_byte != kind.byte()
            || binding.conversation != conversation
            || binding.message_id != message_id
        {
            return Err(Error::Misfiled);
        }
        Ok((binding, r.rest()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_is_as_documented_and_checked() {
        let b = MessageBinding {
            kind: ConversationKind::Group,
            conversation: 0x0102_0304_0506_0708,
            message_id: [0xAA; 16],
            sent_at_ms: 1_700_000_000_000,
        };
        let sealed = b.seal(b"content");
        assert_eq!(sealed.len(), BINDING_LEN + 7);
        assert_eq!(sealed[..2], [0xC1, 2]);
        assert_eq!(sealed[2..10], 0x0102_0304_0506_0708u64.to_be_bytes());
        assert_eq!(sealed[10..26], [0xAA; 16]);
        assert_eq!(sealed[26..34], 1_700_000_000_000u64.to_be_bytes());
        assert_eq!(&sealed[34..], b"content");
        let (back, content) =
            MessageBinding::open(&sealed, ConversationKind::Group, b.conversation, [0xAA; 16])
                .unwrap();
        assert_eq!((back, content), (b, &b"content"[..]));
        for (kind, conversation, id) in [
            (ConversationKind::Direct, b.conversation, [0xAA; 16]),
            (ConversationKind::Group, b.conversation + 1, [0xAA; 16]),
            (ConversationKind::Group, b.conversation, [0xAB; 16]),
        ] {
            assert_eq!(
                MessageBinding::open(&sealed, kind, conversation, id).unwrap_err(),
                Error::Misfiled
            );
        }
        assert!(MessageBinding::open(&sealed[..20], ConversationKind::Group, 1, [0; 16]).is_err());
    }
}
