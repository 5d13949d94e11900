//! What the client reports to the app: one stream of [`Event`]s.

use std::time::Duration;

use chat_core::{
    ClientKey, Content, ConversationId, DeviceAddress, ErrorCode, MessageId, ReceiptKind,
    Timestamp, UserId,
};
use tokio::sync::broadcast;

use crate::store::StoredMessage;

/// A decrypted message.
#[derive(Clone, PartialEq, Eq)]
pub struct Message {
    /// Its conversation.
    pub conversation: ConversationId,
    /// Its server-assigned ID (sorting by ID sorts by time).
    pub id: MessageId,
    /// The sending device and its user.
    pub sender: DeviceAddress,
    /// The sender's idempotency key.
    pub client_key: ClientKey,
    /// When the server stored it.
    pub sent_at: Timestamp,
    /// The decrypted content (`Content::Unknown` for types this build does not know).
    pub content: Content,
}

impl Message {
    /// The text, if this is a text message.
    pub fn text(&self) -> Option<&str> {
        match &self.content {
            Content::Text(t) => Some(&t.body),
            _ => None,
        }
    }

    pub(crate) fn from_stored(m: &StoredMessage) -> Self {
        Self {
            conversation: m.conversation,
            id: m.id,
            sender: m.sender,
            client_key: m.client_key,
            sent_at: m.sent_at,
            content: Content::decode(&m.plaintext).unwrap_or(Content::Unknown { kind: 0 }),
        }
    }
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print plaintext.
        f.debug_struct("Message")
            .field("conversation", &self.conversation)
            .field("id", &self.id)
            .field("sender", &self.sender)
            .field("kind", &self.content.kind())
            .finish_non_exhaustive()
    }
}

/// The state of the connection to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionState {
    /// Connecting (or reconnecting after a delay).
    Connecting,
    /// Authenticated; the backlog follows.
    Connected,
    /// The backlog after the cursor has been processed; what follows is live.
    Synced,
    /// The connection ended; the client reconnects after `retry_in`.
    Disconnected {
        /// Why, for logs.
        reason: String,
        /// When the next attempt starts.
        retry_in: Duration,
    },
    /// The server refused this device's token (logged out or removed); the client stopped.
    LoggedOut,
}

/// Everything the app hears about.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A message was decrypted and stored (from another user or from another device of
    /// this user).
    Message(Message),
    /// A message from this device was acknowledged by the server (also for outbox entries
    /// retried after a restart).
    Sent {
        /// Its conversation.
        conversation: ConversationId,
        /// Its ID.
        id: MessageId,
        /// Its idempotency key.
        client_key: ClientKey,
    },
    /// A message from this device was refused for good (for example `not_member`); it left
    /// the outbox.
    SendFailed {
        /// Its conversation.
        conversation: ConversationId,
        /// Its idempotency key.
        client_key: ClientKey,
        /// The server's code.
        code: ErrorCode,
    },
    /// A delivery could not be decrypted (the sender has no session with us, a tampered
    /// message); the cursor moved past it.
    Undecryptable {
        /// Its conversation.
        conversation: ConversationId,
        /// Its ID.
        id: MessageId,
        /// Who sent it.
        sender: DeviceAddress,
    },
    /// A user raised their delivered or read position in a conversation.
    Receipt {
        /// The conversation.
        conversation: ConversationId,
        /// Whose position.
        user: UserId,
        /// Delivered or read.
        kind: ReceiptKind,
        /// Up to and including this message.
        up_to: MessageId,
    },
    /// A device started or stopped typing; show it until `active: false` or `ttl` passes.
    Typing {
        /// The conversation.
        conversation: ConversationId,
        /// Who.
        from: DeviceAddress,
        /// Typing or not.
        active: bool,
        /// How long the indicator may be shown without news.
        ttl: Duration,
    },
    /// A subscribed user's presence.
    Presence {
        /// Whom.
        user: UserId,
        /// Online now.
        online: bool,
        /// Their last heartbeat, when offline.
        last_active_at: Option<Timestamp>,
    },
    /// A user sharing a conversation with this one (or this user, on another device) changed
    /// their profile.
    Profile {
        /// Whose profile.
        user: UserId,
        /// The new display name.
        display_name: String,
        /// The new status text.
        status: Option<String>,
        /// The new avatar attachment.
        avatar: Option<chat_core::AttachmentId>,
        /// When it changed.
        updated_at: Timestamp,
    },
    /// A remote device presented a new identity key (a reinstall, or an attack). The new key
    /// is used from now on; show it and let the user compare safety numbers.
    IdentityChanged {
        /// The device.
        device: DeviceAddress,
    },
    /// The server could not serve the inbox from the cursor (entries past retention); the
    /// cursor jumped to `head`, and older messages must be read from history.
    ResyncRequired,
    /// The connection changed state.
    Connection(ConnectionState),
    /// This receiver fell behind and missed `n` events; read history from the store.
    Lagged(u64),
}

/// The app's stream of [`Event`]s.
#[derive(Debug)]
pub struct Events {
    pub(crate) rx: broadcast::Receiver<Event>,
}

impl Events {
    /// The next event, or `None` once the client is closed and every event was read.
    pub async fn next(&mut self) -> Option<Event> {
        match self.rx.recv().await {
            Ok(e) => Some(e),
            Err(broadcast::error::RecvError::Lagged(n)) => Some(Event::Lagged(n)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}
