//! Presence on one node (R-PRES): drives chat-core's [`PresenceTracker`] from connections and
//! heartbeats, and publishes changes to each user's presence topic, so their cost is
//! proportional to the subscribers of that user, never to all connected users.
//!
//! The tracker sits behind a `std::sync::Mutex` that is held only for one state-machine
//! call (never across an `.await`). A timer task sleeps until the tracker's next deadline
//! and is woken when an input may have moved it earlier.
//!
//! Invariant: subscribers see each user's changes in the order the tracker produced them.
//! The changes are queued while the lock is still held, and one publisher task (started by
//! [`Presence::run`]) publishes the queue in order, so a task that publishes slowly cannot be
//! overtaken by a later change for the same user (subscribers would end with a stale state).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chat_core::protocol::{PresenceEvent, ServerFrame};
use chat_core::{
    Bus, BusMessage, DeviceAddress, PresenceChange, PresenceConfig, PresenceTracker, Store,
    Timestamp, Topic, UserId,
};
use tokio::sync::{Notify, mpsc, watch};

use crate::state::now;

/// The node's presence state and its publisher.
pub(crate) struct Presence {
    tracker: Mutex<Tracked>,
    wake: Notify,
    /// The receiving end of [`Tracked::queue`], taken by the publisher in [`Presence::run`].
    queued: Mutex<Option<mpsc::UnboundedReceiver<PresenceChange>>>,
    bus: Arc<dyn Bus>,
    store: Arc<dyn Store>,
}

impl std::fmt::Debug for Presence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presence").finish_non_exhaustive()
    }
}

/// The tracker, the deadline the timer task is sleeping until, and the publisher's queue.
struct Tracked {
    tracker: PresenceTracker,
    armed: Option<Timestamp>,
    /// The tracker's changes in the order it produced them, sent only under the lock. It is
    /// unbounded because sending must not wait while the lock is held; it stays short, as
    /// changes are rare next to what the publisher does with them (the in-process bus never
    /// blocks).
    queue: mpsc::UnboundedSender<PresenceChange>,
}

impl Presence {
    pub(crate) fn new(config: PresenceConfig, bus: Arc<dyn Bus>, store: Arc<dyn Store>) -> Self {
        let (queue, queued) = mpsc::unbounded_channel();
        let tracked = Tracked {
            tracker: PresenceTracker::new(config),
            armed: None,
            queue,
        };
        Self {
            tracker: Mutex::new(tracked),
            wake: Notify::new(),
            queued: Mutex::new(Some(queued)),
            bus,
            store,
        }
    }

    /// A device authenticated.
    pub(crate) async fn connect(&self, device: DeviceAddress) {
        self.apply(|t, now| t.handle_connect(now, device));
    }

    /// A heartbeat arrived.
    pub(crate) async fn heartbeat(&self, device: DeviceAddress) {
        self.apply(|t, now| t.handle_heartbeat(now, device));
    }

    /// A connection ended; the device stays online until its window runs out.
    pub(crate) async fn disconnect(&self, device: DeviceAddress) {
        self.apply(|t, now| t.handle_disconnect(now, device));
    }

    /// The device logged out or was removed: offline at once.
    pub(crate) async fn sign_out(&self, device: DeviceAddress) {
        self.apply(|t, now| t.handle_sign_out(now, device));
    }

    /// The current state of `user` as a `presence` frame body.
    pub(crate) async fn snapshot(&self, user: UserId) -> PresenceEvent {
        let (online, last_active) = {
            let t = &lock(&self.tracker).tracker;
            (t.is_online(user), t.last_active(user))
        };
        let last_active_at = match last_active {
            Some(at) => Some(at),
            None => self.store.last_active(user).await.ok().flatten(),
        };
        PresenceEvent {
            user,
            online,
            last_active_at,
        }
    }

    /// Runs the expiry timer and the publisher until `shutdown` flips. Changes are published
    /// only while this runs (the node spawns it once, at start).
    pub(crate) async fn run(self: Arc<Self>, shutdown: watch::Receiver<bool>) {
        let queued = self.queued.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(queued) = queued else {
            tracing::error!("presence is already running");
            return;
        };
        tokio::join!(
            self.expire(shutdown.clone()),
            self.publish_queued(queued, shutdown)
        );
    }

    /// Feeds the tracker its deadlines until `shutdown` flips.
    async fn expire(&self, mut shutdown: watch::Receiver<bool>) {
        loop {
            let next = {
                let mut t = lock(&self.tracker);
                t.armed = t.tracker.poll_timeout();
                t.armed
            };
            let wait = next
                .map(|at| Duration::from_millis(at.as_millis().saturating_sub(now().as_millis())));
            tokio::select! {
                () = sleep_or_forever(wait) => self.apply(|t, now| t.handle_timeout(now)),
                () = self.wake.notified() => {}
                _ = async { shutdown.wait_for(|down| *down).await.is_ok() } => return,
            }
        }
    }

    /// Publishes queued changes one at a time, in queue order, until `shutdown` flips.
    async fn publish_queued(
        &self,
        mut queued: mpsc::UnboundedReceiver<PresenceChange>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                change = queued.recv() => match change {
                    Some(change) => self.publish(change).await,
                    None => return,
                },
                _ = async { shutdown.wait_for(|down| *down).await.is_ok() } => return,
            }
        }
    }

    /// Feeds one input, queues what changed for the publisher and re-arms the timer. It
    /// never waits (the inputs above stay `async` for their callers in the gateway).
    fn apply(&self, input: impl FnOnce(&mut PresenceTracker, Timestamp)) {
        let rearm = {
            let mut t = lock(&self.tracker);
            input(&mut t.tracker, now());
            while let Some(change) = t.tracker.poll_event() {
                // Fails only once the publisher stopped at shutdown; the change is moot then.
                let _ = t.queue.send(change);
            }
            // Heartbeats only move deadlines later; wake the timer only when the earliest
            // deadline is now earlier than the one it sleeps until.
            match (t.tracker.poll_timeout(), t.armed) {
                (Some(next), Some(armed)) => next < armed,
                (Some(_), None) => true,
                (None, _) => false,
            }
        };
        if rearm {
            self.wake.notify_one();
        }
    }

    async fn publish(&self, change: PresenceChange) {
        let event = match change {
            PresenceChange::Online { user, at } => PresenceEvent {
                user,
                online: true,
                last_active_at: Some(at),
            },
            PresenceChange::Offline {
                user,
                last_active_at,
            } => {
                if let Err(err) = self.store.set_last_active(user, last_active_at).await {
                    tracing::warn!(cause = %err, "could not store last_active_at");
                }
                PresenceEvent {
                    user,
                    online: false,
                    last_active_at: Some(last_active_at),
                }
            }
        };
        metrics::counter!("chat_presence_changes_total").increment(1);
        let frame = Bytes::from(ServerFrame::Presence(event).encode());
        let topic = Topic::Presence(event.user);
        if let Err(err) = self.bus.publish(topic, BusMessage::Frame(frame)).await {
            tracing::warn!(cause = %err, "presence publish failed");
        }
    }
}

async fn sleep_or_forever(wait: Option<Duration>) {
    match wait {
        Some(wait) => tokio::time::sleep(wait).await,
        None => std::future::pending().await,
    }
}

fn lock(m: &Mutex<Tracked>) -> std::sync::MutexGuard<'_, Tracked> {
    // Every tracker call leaves it consistent, so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use chat_core::{BusError, BusSink, DeviceId, SubscriptionId};

    /// A bus that records presence events and holds the first publish until released, so a
    /// test can make a later change overtake an earlier one that is still being published.
    #[derive(Default)]
    struct GatedBus {
        /// Notified when the first publish has reached the gate.
        entered: Notify,
        /// Notified to let the first publish through.
        release: Notify,
        /// Whether the gate was passed already.
        opened: Mutex<bool>,
        /// The events published, in publish order.
        published: watch::Sender<Vec<PresenceEvent>>,
    }

    #[async_trait]
    impl Bus for GatedBus {
        async fn publish(&self, _: Topic, message: BusMessage) -> Result<usize, BusError> {
            let first = !std::mem::replace(&mut *self.opened.lock().unwrap(), true);
            if first {
                self.entered.notify_one();
                self.release.notified().await;
            }
            let BusMessage::Frame(frame) = message else {
                panic!("presence publishes frames only");
            };
            let Ok(ServerFrame::Presence(event)) = ServerFrame::decode(&frame) else {
                panic!("not a presence frame");
            };
            self.published.send_modify(|p| p.push(event));
            Ok(1)
        }

        async fn subscribe(
            &self,
            _: Topic,
            _: Arc<dyn BusSink>,
        ) -> Result<SubscriptionId, BusError> {
            unimplemented!("presence never subscribes")
        }

        async fn unsubscribe(&self, _: Topic, _: SubscriptionId) -> Result<(), BusError> {
            unimplemented!("presence never unsubscribes")
        }
    }

    const WAIT: Duration = Duration::from_secs(5);

    /// Online then offline for one user, with the online publish still in flight when the
    /// offline change happens: subscribers must still see online first and offline last,
    /// the tracker's final state. (Before the fix, each change was published by the task
    /// that made it, after releasing the lock, so the offline overtook the online.)
    #[tokio::test]
    async fn a_users_events_are_published_in_tracker_order() {
        let bus = Arc::new(GatedBus::default());
        let mut published = bus.published.subscribe();
        let store: Arc<dyn Store> = Arc::new(chat_storage::MemoryStore::new());
        let presence = Arc::new(Presence::new(PresenceConfig::default(), bus.clone(), store));
        let (stop, shutdown) = watch::channel(false);
        let runner = tokio::spawn(presence.clone().run(shutdown));
        let device = DeviceAddress {
            user: UserId::MIN,
            device: DeviceId::MIN,
        };

        let connecting = tokio::spawn({
            let presence = presence.clone();
            async move { presence.connect(device).await }
        });
        tokio::time::timeout(WAIT, bus.entered.notified())
            .await
            .expect("the online event reaches the bus");
        presence.sign_out(device).await;
        bus.release.notify_one();
        connecting.await.unwrap();

        let events = tokio::time::timeout(WAIT, published.wait_for(|p| p.len() == 2))
            .await
            .expect("both events are published")
            .unwrap()
            .clone();
        let online: Vec<bool> = events.iter().map(|e| e.online).collect();
        assert_eq!(online, [true, false], "published in tracker order");
        assert!(!presence.snapshot(device.user).await.online);
        stop.send(true).unwrap();
        runner.await.unwrap();
    }
}
