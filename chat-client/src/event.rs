//! What the client reports to the app: one stream of [`Event`]s.

use std::collections::BTreeSet;
use std::time::Duration;

use chat_core::protocol::ResyncReason;
use chat_core::{
    ClientKey, Content, ConversationId, DeviceAddress, ErrorCode, MessageId, ReceiptKind,
    Timestamp, UserId,
};
use tokio::sync::broadcast;

use crate::store::StoredMessage;
use crate::thread::TimelineItem;

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
    /// this user). Edits, deletes and reactions are not reported as messages: they update
    /// the message they point at ([`Event::Updated`]).
    Message(Message),
    /// A conversation this device did not know appeared (someone started it, or added this
    /// user): it is in [`Client::conversation_list`](crate::Client::conversation_list) now.
    NewConversation {
        /// The conversation.
        id: ConversationId,
        /// One-to-one or group.
        kind: chat_core::ConversationKind,
    },
    /// The server gave message ID `id` to a different message than the one this device had
    /// stored under it: the server was restored from a backup that did not have the old one
    /// (see [`Event::ResyncRequired`]). The old message, and every later one this device had
    /// in that conversation, are gone from this device too (the server lost them all); the
    /// new one takes the ID and is reported as usual. Show it as "messages were lost on the
    /// server".
    Replaced {
        /// The conversation.
        conversation: ConversationId,
        /// The ID that now names another message.
        id: MessageId,
    },
    /// A message's current state changed: an edit, delete or reaction arrived for it (or it
    /// arrived after relations that point at it). Redraw it from `item`.
    Updated(TimelineItem),
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
    /// The set of users typing in a conversation changed: someone started, stopped, or their
    /// indicator expired (the client expires it by itself when its TTL passes, so it can
    /// never get stuck). `users` is everyone typing there now; empty when nobody is.
    Typing {
        /// The conversation.
        conversation: ConversationId,
        /// Who is typing now.
        users: BTreeSet<UserId>,
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
    /// A user's trusted device list changed under the same account identity (their signed
    /// list has a higher version): devices were linked, removed, or re-keyed (a reinstalled
    /// device linked again). Also for this user's own devices. Show it in their
    /// conversations; the safety number does not change.
    DevicesChanged {
        /// Whose devices.
        user: UserId,
        /// Linked since the list trusted before.
        added: Vec<chat_core::DeviceId>,
        /// No longer on the list: nothing is encrypted to them, and group sender keys they
        /// held are replaced before the next group message.
        removed: Vec<chat_core::DeviceId>,
        /// On both lists with another identity (their old sessions are gone).
        changed: Vec<chat_core::DeviceId>,
    },
    /// A user's account identity changed: their device list is signed by another account
    /// key (they recovered their account, or the server is attacking). Comes before anything
    /// is decrypted from or sent to the new identity; show it as a notice in their
    /// conversations, with the new safety number. When `blocked` (the user was verified, or
    /// the policy is [`TrustPolicy::ConfirmEveryChange`](crate::TrustPolicy)), nothing is
    /// sent to them until [`Client::accept_identity`](crate::Client::accept_identity);
    /// otherwise the new identity is trusted from now on, unverified.
    AccountChanged {
        /// Whose account.
        user: UserId,
        /// Whether the previous identity was verified.
        verified: bool,
        /// Whether sending to them waits for the user to accept the change.
        blocked: bool,
    },
    /// The server named a device that is on no device list this device trusts (or gave a
    /// listed device another identity): nothing is encrypted to it and nothing from it is
    /// shown. Reported once per device and client.
    DeviceRefused {
        /// The device.
        device: DeviceAddress,
    },
    /// A change to a group, signed by the member who made it and checked against the group
    /// rules (issue 17): the group's verified state now includes it. Every device reports
    /// every change once, in the group's order, its own included.
    GroupChanged {
        /// The group.
        conversation: ConversationId,
        /// Who made it.
        actor: UserId,
        /// What it did.
        op: chat_core::GroupOp,
    },
    /// The server served a group change this device refuses (a bad signature, a change
    /// the rules forbid, a dropped, reordered or replayed change): the verified state
    /// stays where it was and the changes after it wait. Reported once per change.
    GroupChangeRefused {
        /// The group.
        conversation: ConversationId,
        /// Why it was refused.
        reason: chat_crypto::ChainError,
    },
    /// The server lists a member of a group whom no verified change added (or the group
    /// has no verified state at all): nothing is encrypted to their devices, which get no
    /// sender key. Reported once per group and user.
    GroupMemberUnverified {
        /// The group.
        conversation: ConversationId,
        /// The user the server lists.
        user: UserId,
    },
    /// The server could not serve the inbox from this device's cursor (entries past the
    /// inbox retention, or a server restored from a backup). The client continues from the
    /// position the server gave and, once the backlog is in, recovers what it can from
    /// history; [`Event::Recovered`] follows.
    ResyncRequired {
        /// Why.
        reason: ResyncReason,
    },
    /// History recovery after [`Event::ResyncRequired`] finished. Group messages under a
    /// sender key this device holds are recovered (and reported like delivered ones:
    /// [`Event::Message`], or [`Event::Updated`] for edits, deletes and reactions);
    /// one-to-one messages cannot be (their per-device key went with the inbox entry) and
    /// are listed in `missed`, so the app can show that they exist.
    Recovered {
        /// How many messages were decrypted from history.
        recovered: usize,
        /// Messages in history this device cannot read, oldest first per conversation.
        missed: Vec<(ConversationId, MessageId)>,
    },
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
