//! The bus boundary (R-SYNC-3, R-PRES-2): routing an event to whichever node holds the
//! connections interested in it.
//!
//! A node subscribes a [`BusSink`] to a [`Topic`] when a device connects (its device and
//! user topics) or when a client subscribes to someone's presence, and unsubscribes when that ends.
//! Publishing reaches every sink subscribed to the topic on any node. The bus is at most
//! once: durability is the store's job, and a device that misses a live event catches up
//! from its inbox. The in-process bus lives in chat-server; a Redis one fits the same trait.

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
}

impl BusMessage {
    /// The bytes of encoded frame it carries: what a connection's outbound queue is charged
    /// for holding it (a shared body counts in full for every queue that holds it, since
    /// each one keeps it alive).
    pub fn frame_len(&self) -> usize {
        match self {
            Self::Deliver { frame, .. } => frame.len(),
            Self::Frame(frame) | Self::Expiring { frame, .. } => frame.len(),
            Self::Close(_) | Self::Unsubscribe(_) => 0,
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
#[async_trait]
pub trait Bus: Send + Sync {
    /// Sends `message` to every sink subscribed to `topic`, on any node. Returns how many
    /// subscriptions took it (0 means nobody is listening: for a device topic, the device is
    /// offline).
    async fn publish(&self, topic: Topic, message: BusMessage) -> Result<usize, BusError>;

    /// Starts delivering `topic` to `sink`.
    async fn subscribe(
        &self,
        topic: Topic,
        sink: std::sync::Arc<dyn BusSink>,
    ) -> Result<SubscriptionId, BusError>;

    /// Stops a subscription. Unknown IDs are ignored.
    async fn unsubscribe(&self, topic: Topic, id: SubscriptionId) -> Result<(), BusError>;
}
