//! The records a [`ClientStore`](super::ClientStore) keeps and returns.

use std::fmt;

use chat_core::{
    ClientKey, Content, ConversationId, ConversationKind, DeviceAddress, MessageId, Timestamp,
};
use chat_crypto::Zeroizing;

/// Secret bytes (a pickle); wiped on drop.
pub type Secret = Zeroizing<Vec<u8>>;

/// This device's identity on the server.
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// The server's address (`host:port`).
    pub server: String,
    /// This device and its user.
    pub address: DeviceAddress,
    /// The bearer token (a secret; redacted in `Debug`).
    pub token: String,
}

impl fmt::Debug for DeviceRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceRecord")
            .field("server", &self.server)
            .field("address", &self.address)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// A decrypted message as stored locally (own sent messages included).
#[derive(Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Its conversation.
    pub conversation: ConversationId,
    /// Its server-assigned ID.
    pub id: MessageId,
    /// The sending device.
    pub sender: DeviceAddress,
    /// The client key the sender chose.
    pub client_key: ClientKey,
    /// When the server stored it.
    pub sent_at: Timestamp,
    /// The encoded plaintext content (`chat_core::Content`).
    pub plaintext: Vec<u8>,
}

impl StoredMessage {
    /// Whether `other` is this message (the same sending device and client key), not another
    /// one under the same ID.
    pub fn same_message(&self, other: &Self) -> bool {
        self.conversation == other.conversation
            && self.id == other.id
            && self.sender == other.sender
            && self.client_key == other.client_key
    }
}

impl fmt::Debug for StoredMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredMessage")
            .field("conversation", &self.conversation)
            .field("id", &self.id)
            .field("sender", &self.sender)
            .field(
                "plaintext",
                &format_args!("<{} bytes>", self.plaintext.len()),
            )
            .finish_non_exhaustive()
    }
}

/// A message waiting for the server's `sent`: the exact bytes to (re)send.
#[derive(Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// The idempotency key; a retry sends the same one.
    pub client_key: ClientKey,
    /// The target conversation.
    pub conversation: ConversationId,
    /// The encrypted message (see `crate::outgoing`): body and headers, and for one-to-one
    /// messages the content key that lets headers be added for new devices.
    pub payload: Secret,
    /// The encoded plaintext, stored in history once the server acknowledges.
    pub plaintext: Vec<u8>,
}

impl fmt::Debug for OutboxEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboxEntry")
            .field("client_key", &self.client_key)
            .field("conversation", &self.conversation)
            .finish_non_exhaustive()
    }
}

/// A conversation the device knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConversationRecord {
    /// Its ID.
    pub id: ConversationId,
    /// One-to-one or group.
    pub kind: ConversationKind,
}

/// A change to the local search index, applied with the batch that caused it (a message
/// stored, edited or deleted), so the index never disagrees with history.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SearchWrite {
    /// Indexes a message's current text (replacing what was indexed for it).
    Index {
        /// Its conversation.
        conversation: ConversationId,
        /// The message.
        message: MessageId,
        /// The text to find it by (plaintext: redacted in `Debug`).
        text: String,
    },
    /// Forgets a message (deleted).
    Remove {
        /// Its conversation.
        conversation: ConversationId,
        /// The message.
        message: MessageId,
    },
}

impl fmt::Debug for SearchWrite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Index {
                conversation,
                message,
                text,
            } => f
                .debug_struct("Index")
                .field("conversation", conversation)
                .field("message", message)
                .field("text", &format_args!("<{} bytes>", text.len()))
                .finish(),
            Self::Remove {
                conversation,
                message,
            } => f
                .debug_struct("Remove")
                .field("conversation", conversation)
                .field("message", message)
                .finish(),
        }
    }
}

/// Where a conversation's history stood locally when the server could not serve the inbox
/// from the cursor: the newest message stored then. History after it is read from the
/// server to recover what the inbox no longer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryPoint {
    /// The conversation.
    pub conversation: ConversationId,
    /// Its newest stored message then (`None`: nothing stored).
    pub newest: Option<MessageId>,
}

/// How a stored message relates to others, derived from its plaintext: its content type and,
/// for an edit, delete or reaction, the message it points at.
pub(crate) fn classify(plaintext: &[u8]) -> (u32, Option<MessageId>) {
    match Content::decode(plaintext) {
        Ok(content) => (content.kind(), content.target()),
        Err(_) => (0, None),
    }
}

/// Whether a message of this content type counts as unread: texts, attachments and types
/// this build does not know, not membership changes (edits, deletes and reactions are not
/// messages of their own).
pub(crate) fn counts_as_unread(kind: u32) -> bool {
    use chat_core::kinds::{DELETE, EDIT, GROUP_CHANGE, REACTION};
    !matches!(kind, GROUP_CHANGE | EDIT | DELETE | REACTION)
}
