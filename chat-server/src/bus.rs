//! The in-process [`Bus`]: routes events to sinks subscribed on this node.
//!
//! Topics are spread over shards, each a `std::sync::Mutex` (held only for map operations and
//! non-blocking `BusSink::deliver` calls, never across an `.await`), so publishers to
//! different devices rarely contend.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chat_core::{Bus, BusError, BusMessage, BusSink, SubscriptionId, Topic};

const SHARDS: usize = 64;

type Sinks = Vec<(SubscriptionId, Arc<dyn BusSink>)>;

/// Routes bus events between the connections of one process.
pub struct LocalBus {
    shards: Vec<Mutex<HashMap<Topic, Sinks>>>,
    hasher: RandomState,
    next_id: AtomicU64,
}

impl std::fmt::Debug for LocalBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBus").finish_non_exhaustive()
    }
}

impl Default for LocalBus {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            next_id: AtomicU64::new(1),
        }
    }
}

impl LocalBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    fn shard(&self, topic: &Topic) -> &Mutex<HashMap<Topic, Sinks>> {
        let i = self.hasher.hash_one(topic) as usize % SHARDS;
        &self.shards[i]
    }

    /// Delivers to local sinks without going through the async trait (the publish path of
    /// the in-process deployment).
    /// Returns how many sinks took the message.
    pub fn publish_local(&self, topic: Topic, message: &BusMessage) -> usize {
        let mut shard = lock(self.shard(&topic));
        let Some(sinks) = shard.get_mut(&topic) else {
            return 0;
        };
        let mut taken = 0;
        sinks.retain(|(_, sink)| {
            let ok = sink.deliver(topic, message);
            taken += usize::from(ok);
            ok
        });
        if sinks.is_empty() {
            shard.remove(&topic);
        }
        taken
    }
}

impl LocalBus {
    /// Removes a subscription without awaiting (the async trait's `unsubscribe` does the
    /// same); returns whether it was there.
    pub(crate) fn remove(&self, topic: Topic, id: SubscriptionId) -> bool {
        let mut shard = lock(self.shard(&topic));
        let Some(sinks) = shard.get_mut(&topic) else {
            return false;
        };
        let before = sinks.len();
        sinks.retain(|(s, _)| *s != id);
        let removed = sinks.len() != before;
        if sinks.is_empty() {
            shard.remove(&topic);
        }
        removed
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the map inconsistent (every operation on
    // it is a single call), so poisoning is ignored.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[async_trait]
impl Bus for LocalBus {
    async fn publish(&self, topic: Topic, message: BusMessage) -> Result<usize, BusError> {
        Ok(self.publish_local(topic, &message))
    }

    async fn subscribe(
        &self,
        topic: Topic,
        sink: Arc<dyn BusSink>,
    ) -> Result<SubscriptionId, BusError> {
        let id = SubscriptionId(self.next_id.fetch_add(1, Ordering::Relaxed));
        lock(self.shard(&topic))
            .entry(topic)
            .or_default()
            .push((id, sink));
        Ok(id)
    }

    async fn unsubscribe(&self, topic: Topic, id: SubscriptionId) -> Result<(), BusError> {
        self.remove(topic, id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use chat_core::{DeviceId, UserId};
    use std::sync::atomic::AtomicUsize;

    #[derive(Default)]
    struct Counter(AtomicUsize, bool);

    impl BusSink for Counter {
        fn deliver(&self, _: Topic, _: &BusMessage) -> bool {
            self.0.fetch_add(1, Ordering::Relaxed);
            !self.1
        }
    }

    #[tokio::test]
    async fn routes_by_topic_and_drops_closed_sinks() {
        let bus = LocalBus::new();
        let dev = Topic::Device(DeviceId::new(1).unwrap());
        let pres = Topic::Presence(UserId::new(1).unwrap());
        let a = Arc::new(Counter::default());
        let closed = Arc::new(Counter(AtomicUsize::new(0), true));
        let id = bus.subscribe(dev, a.clone()).await.unwrap();
        bus.subscribe(dev, closed.clone()).await.unwrap();
        let msg = BusMessage::Frame(Bytes::from_static(b"x"));
        assert_eq!(bus.publish(dev, msg.clone()).await.unwrap(), 1);
        assert_eq!(bus.publish(dev, msg.clone()).await.unwrap(), 1);
        assert_eq!(bus.publish(pres, msg.clone()).await.unwrap(), 0);
        assert_eq!(a.0.load(Ordering::Relaxed), 2);
        assert_eq!(
            closed.0.load(Ordering::Relaxed),
            1,
            "a sink that refused is dropped"
        );
        bus.unsubscribe(dev, id).await.unwrap();
        assert_eq!(bus.publish(dev, msg).await.unwrap(), 0);
        assert_eq!(a.0.load(Ordering::Relaxed), 2);
    }
}
