//! Presence on one node (R-PRES): drives chat-core's [`PresenceTracker`] from connections and
//! heartbeats, and publishes changes to each user's presence topic, so their cost is
//! proportional to the subscribers of that user, never to all connected users.
//!
//! The tracker sits behind a `std::sync::Mutex` that is held only for one state-machine
//! call (never across an `.await`). A timer task sleeps until the tracker's next deadline
//! and is woken when an input may have moved it earlier.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chat_core::protocol::{PresenceEvent, ServerFrame};
use chat_core::{
    Bus, BusMessage, DeviceAddress, PresenceChange, PresenceConfig, PresenceTracker, Store,
    Timestamp, Topic, UserId,
};
use tokio::sync::{Notify, watch};

use crate::state::now;

/// The node's presence state and its publisher.
pub(crate) struct Presence {
    tracker: Mutex<Tracked>,
    wake: Notify,
    bus: Arc<dyn Bus>,
    store: Arc<dyn Store>,
}

impl std::fmt::Debug for Presence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presence").finish_non_exhaustive()
    }
}

/// The tracker and the deadline the timer task is sleeping until.
struct Tracked {
    tracker: PresenceTracker,
    armed: Option<Timestamp>,
}

impl Presence {
    pub(crate) fn new(config: PresenceConfig, bus: Arc<dyn Bus>, store: Arc<dyn Store>) -> Self {
        let tracked = Tracked {
            tracker: PresenceTracker::new(config),
            armed: None,
        };
        Self {
            tracker: Mutex::new(tracked),
            wake: Notify::new(),
            bus,
            store,
        }
    }

    /// A device authenticated.
    pub(crate) async fn connect(&self, device: DeviceAddress) {
        self.apply(|t, now| t.handle_connect(now, device)).await;
    }

    /// A heartbeat arrived.
    pub(crate) async fn heartbeat(&self, device: DeviceAddress) {
        self.apply(|t, now| t.handle_heartbeat(now, device)).await;
    }

    /// A connection ended; the device stays online until its window runs out.
    pub(crate) async fn disconnect(&self, device: DeviceAddress) {
        self.apply(|t, now| t.handle_disconnect(now, device)).await;
    }

    /// The device logged out or was removed: offline at once.
    pub(crate) async fn sign_out(&self, device: DeviceAddress) {
        self.apply(|t, now| t.handle_sign_out(now, device)).await;
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

    /// Runs the expiry timer until `shutdown` flips.
    pub(crate) async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            let next = {
                let mut t = lock(&self.tracker);
                t.armed = t.tracker.poll_timeout();
                t.armed
            };
            let wait = next
                .map(|at| Duration::from_millis(at.as_millis().saturating_sub(now().as_millis())));
            tokio::select! {
                () = sleep_or_forever(wait) => self.apply(|t, now| t.handle_timeout(now)).await,
                () = self.wake.notified() => {}
                _ = async { shutdown.wait_for(|down| *down).await.is_ok() } => return,
            }
        }
    }

    /// Feeds one input, then publishes what changed and re-arms the timer.
    async fn apply(&self, input: impl FnOnce(&mut PresenceTracker, Timestamp)) {
        let (changes, rearm) = {
            let mut t = lock(&self.tracker);
            input(&mut t.tracker, now());
            let changes: Vec<PresenceChange> =
                std::iter::from_fn(|| t.tracker.poll_event()).collect();
            // Heartbeats only move deadlines later; wake the timer only when the earliest
            // deadline is now earlier than the one it sleeps until.
            let next = t.tracker.poll_timeout();
            let rearm = match (next, t.armed) {
                (Some(next), Some(armed)) => next < armed,
                (Some(_), None) => true,
                (None, _) => false,
            };
            (changes, rearm)
        };
        if rearm {
            self.wake.notify_one();
        }
        for change in changes {
            self.publish(change).await;
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
