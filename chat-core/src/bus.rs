//! The bus boundary (R-SYNC-3, R-PRES-2): routing an event to whichever node holds the
//! connections interested in it.
//!
//! A node subscribes a [`BusSink`] to a [`Topic`] when a device connects (its device and
//! user topics) or when a client subscribes to someone's presence, and unsubscribes when that ends.
//! Publishing reaches every sink subscribed to the topic on any node. The bus is at most
//! once: durability is the store's job, and a device that misses a live event catches up
//! from its inbox. A network bus that may have lost events (its connection dropped) says so
//! with [`BusMessage::Resubscribed`], so the connections repair at once instead of with the
//! next event. Both buses live in chat-server: `LocalBus` in process, `RedisBus` for a
//! cluster.

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::ErrorCode;
use crate::ids::{DeviceId, InboxPos, UserId};
use crate::protocol::SharedDeliver;
use crate::time::Timestamp;

/// What an event is addressed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Topic {
    /// One device's connection: its deliveries, and closing it.
    Device(DeviceId),
    /// Every connection of a user: receipts and typing in their conversations.
    User(UserId),
    /// A user's presence changes, for their subscribers.
    Presence(UserId),
}

/// An event on the bus.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BusMessage {
    /// An encoded `deliver` frame for one device, with its inbox position so the receiving
    /// connection can drop duplicates and notice gaps without decoding it. The body part is
    /// shared by every recipient of the message. Behind an `Arc`, so the message stays as
    /// small as the other variants: every connection's queue allocates its slots up front.
    Deliver {
        /// The entry's inbox position.
        pos: InboxPos,
        /// The encoded frame.
        frame: std::sync::Arc<SharedDeliver>,
    },
    /// Any other encoded server frame to forward as it is. Encoded once, shared by every
    /// subscriber.
    Frame(Bytes),
    /// An encoded frame worth sending only until `expires_at` (a typing indicator, R-MSG-6):
    /// a connection that gets to it later (its queue was long) drops it instead of showing a
    /// stale indicator. Wall-clock time, so it means the same on every node.
    Expiring {
        /// The encoded frame.
        frame: Bytes,
        /// When it stops being worth sending.
        expires_at: Timestamp,
    },
    /// Close the connection with this code (device removed, token revoked).
    Close(ErrorCode),
    /// Drop the receiving connections' own subscription to this topic, if they hold one
    /// (a user blocked them: their presence subscription to the blocker ends).
    Unsubscribe(Topic),
    /// Events for this topic may have been lost: the bus lost its link to the other nodes
    /// and has just re-established the subscription. Never published; a bus hands it to the
    /// topic's local sinks once the topic is subscribed again, and each repairs what it may
    /// have missed (a device connection re-reads its inbox after its last sent position and
    /// re-checks its token; a presence subscriber sends the user's current state).
    Resubscribed(Topic),
}

impl BusMessage {
    /// The bytes of encoded frame it carries: what a connection's outbound queue is charged
    /// for holding it (a shared body counts in full for every queue that holds it, since
    /// each one keeps it alive).
    pub fn frame_len(&self) -> usize {
        match self {
            Self::Deliver { frame, .. } => frame.len(),
            Self::Frame(frame) | Self::Expiring { frame, .. } => frame.len(),
            Self::Close(_) | Self::Unsubscribe(_) | Self::Resubscribed(_) => 0,
        }
    }
}

/// Identifies one subscription, for unsubscribing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriptionId(pub u64);

/// Receives events for the topics it is subscribed to. Called on the bus's task: it must
/// not block (enqueue and return).
pub trait BusSink: Send + Sync {
    /// Takes one event. Returns false when the sink can no longer take events (its
    /// connection is gone or its queue is full); the caller then stops delivering to it.
    fn deliver(&self, topic: Topic, message: &BusMessage) -> bool;
}

/// Why a bus operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// The bus backend is unreachable.
    #[error("bus unavailable: {0}")]
    Unavailable(String),
}

/// Routes events between nodes.
///
/// The publish count means "how many took it": with one node, the sinks; with a network
/// bus, the local sinks plus the other nodes holding a subscription. Either way 0 means
/// nobody holds the topic, which is what push relies on (an offline device is woken).
#[async_trait]
pub trait Bus: Send + Sync {
    /// Sends `message` to every sink subscribed to `topic`, on any node. Returns how many
    /// subscriptions took it (0 means nobody is listening: for a device topic, the device is
    /// offline).
    async fn publish(&self, topic: Topic, message: BusMessage) -> Result<usize, BusError>;

    /// Publishes each `(topic, message)` as [`publish`](Self::publish) does, answering each in
    /// order. A bus on the network sends them together (one round trip for a group's
    /// members) rather than one after another; this default does the latter.
    async fn publish_many(
        &self,
        messages: Vec<(Topic, BusMessage)>,
    ) -> Vec<Result<usize, BusError>> {
        let mut counts = Vec::with_capacity(messages.len());
        for (topic, message) in messages {
            counts.push(self.publish(topic, message).await);
        }
        counts
    }

    /// Starts delivering `topic` to `sink`. Returns once the subscription is in force on
    /// every node: anything published after it returns reaches `sink` (the gateway reads a
    /// device's backlog only after subscribing, so a delivery committed in between is either
    /// read or received).
    async fn subscribe(
        &self,
        topic: Topic,
        sink: std::sync::Arc<dyn BusSink>,
    ) -> Result<SubscriptionId, BusError>;

    /// Stops a subscription. Unknown IDs are ignored.
    async fn unsubscribe(&self, topic: Topic, id: SubscriptionId) -> Result<(), BusError>;
}
