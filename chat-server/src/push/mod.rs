//! Push notifications (R-PUSH-1): waking devices that have messages waiting and no live
//! connection.
//!
//! The gateway calls [`PushDispatcher::offline`] when publishing a delivery reached nobody.
//! That call only tries to put `(device, conversation)` on a bounded queue and returns: a
//! full queue drops the event and counts it (`chat_push_dropped_total`), so a slow or dead
//! push gateway never slows message delivery. The message itself is safe in the inbox
//! either way; a push is only a wake-up call.
//!
//! One background task ([`Worker`]) drains the queue into a [`Coalescer`], which turns a
//! burst to one device into one notification with a count, and sends what is due with at
//! most `push_concurrency` notifications in flight: for each it looks up the device's push
//! token (no token, nothing to do) and calls the [`PushNotifier`]. A token the gateway
//! refuses is removed. The task holds the store and the notifier, not the node's shared
//! state, and ends when the node's last holder of the dispatcher goes.
//!
//! In a cluster, deliveries to one device can reach several nodes' coalescers in one burst
//! (senders on different nodes). Before a notification goes out, the node takes the lease
//! `push:{user}:{device}` for one coalescing window (`SET … PX` through [`Leases`]): a node
//! that finds it held by another skips its notification (`chat_push_claimed_elsewhere_total`),
//! so the device is notified once per burst across the cluster. When the lease cannot be
//! read the notification goes out: a duplicate wake-up beats a device never woken. A
//! delivery whose publish on the bus failed counts as offline (the gateway hands it here),
//! for the same reason.

mod coalesce;
mod webhook;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_core::{ConversationId, DeviceAddress, Notification, PushError, PushNotifier, Store};
use tokio::sync::{Semaphore, mpsc};

use self::coalesce::{Coalescer, Ready};
pub(crate) use self::webhook::Target;
use self::webhook::{LogNotifier, Policy, WebhookNotifier};
use crate::cluster::lease::Leases;
use crate::config::{Config, WebhookUrl};

type Offline = (DeviceAddress, ConversationId);

/// The gateway's handle: hands offline deliveries to the worker without waiting.
#[derive(Debug)]
pub(crate) struct PushDispatcher {
    tx: mpsc::Sender<Offline>,
}

impl PushDispatcher {
    /// A dispatcher and the worker that must run for it to have any effect. `leases` decide
    /// which node notifies a device for a burst; `node` names this one.
    pub(crate) fn new(
        config: &Config,
        store: Arc<dyn Store>,
        leases: Arc<Leases>,
        node: String,
    ) -> (Self, Worker) {
        let (tx, rx) = mpsc::channel(config.push_queue);
        let notifier: Arc<dyn PushNotifier> =
            match config.push_webhook_url.as_ref().map(WebhookUrl::as_str) {
                Some(url) => {
                    let policy = Policy {
                        timeout: Duration::from_millis(config.push_timeout_ms),
                        attempts: config.push_attempts,
                        backoff: Duration::from_millis(config.push_backoff_ms),
                    };
                    match WebhookNotifier::new(url, policy) {
                        Some(webhook) => Arc::new(webhook),
                        // `Config::validate` refuses such URLs; this only keeps the node up.
                        None => Arc::new(LogNotifier),
                    }
                }
                None => Arc::new(LogNotifier),
            };
        let worker = Worker {
            rx,
            store,
            notifier,
            coalescer: Coalescer::new(
                Duration::from_millis(config.push_coalesce_ms),
                config.push_queue,
            ),
            slots: Arc::new(Semaphore::new(config.push_concurrency)),
            claims: Arc::new(Claims {
                leases,
                node,
                window: Duration::from_millis(config.push_coalesce_ms),
            }),
        };
        (Self { tx }, worker)
    }

    /// A message landed in the inbox of `device`, which has no live connection. Never
    /// waits: when the queue is full the event is dropped and counted.
    pub(crate) fn offline(&self, device: DeviceAddress, conversation: ConversationId) {
        if self.tx.try_send((device, conversation)).is_err() {
            metrics::counter!("chat_push_dropped_total").increment(1);
            tracing::debug!(device = %device.device, "push queue full; notification dropped");
        }
    }
}

/// The background task behind a [`PushDispatcher`].
pub(crate) struct Worker {
    rx: mpsc::Receiver<Offline>,
    store: Arc<dyn Store>,
    notifier: Arc<dyn PushNotifier>,
    coalescer: Coalescer,
    /// One permit per notification in flight.
    slots: Arc<Semaphore>,
    /// Which node notifies a device for a burst.
    claims: Arc<Claims>,
}

/// One notification per device burst across the cluster (see the module docs).
#[derive(Debug)]
struct Claims {
    leases: Arc<Leases>,
    /// This node's name as a lease holder.
    node: String,
    /// How long a claim keeps other nodes from notifying the device.
    window: Duration,
}

impl Claims {
    /// Whether this node should send the notification for `device`'s burst.
    async fn claim(&self, device: DeviceAddress) -> bool {
        let name = format!("push:{}:{}", device.user, device.device);
        // At least a millisecond: a zero window still decides between two nodes at once.
        let window = self.window.max(Duration::from_millis(1));
        match self.leases.acquire(&name, &self.node, window).await {
            Ok(true) => true,
            Ok(false) => {
                metrics::counter!("chat_push_claimed_elsewhere_total").increment(1);
                false
            }
            Err(err) => {
                tracing::warn!(cause = %err, "push claim unavailable; notifying anyway");
                true
            }
        }
    }
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").finish_non_exhaustive()
    }
}

impl Worker {
    /// Replaces the notifier (an embedder's own, for example).
    pub(crate) fn set_notifier(&mut self, notifier: Arc<dyn PushNotifier>) {
        self.notifier = notifier;
    }

    /// Runs until every [`PushDispatcher`] is gone. Notifications already in flight finish
    /// on their own tasks.
    pub(crate) async fn run(mut self) {
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<DeviceAddress>();
        loop {
            // A due notification waits for a free slot, so the timer is armed only when
            // one is free (else it would fire again and again).
            let timer = self
                .coalescer
                .poll_timeout()
                .filter(|_| self.slots.available_permits() > 0);
            tokio::select! {
                offline = self.rx.recv() => match offline {
                    Some((device, conversation)) => {
                        if !self.coalescer.handle_offline(Instant::now(), device, conversation) {
                            metrics::counter!("chat_push_dropped_total").increment(1);
                        }
                    }
                    None => return,
                },
                Some(device) = done_rx.recv() => self.coalescer.handle_done(Instant::now(), device),
                () = sleep_until(timer), if timer.is_some() => {}
            }
            while let Ok(slot) = self.slots.clone().try_acquire_owned() {
                let Some(ready) = self.coalescer.poll_ready(Instant::now()) else {
                    break;
                };
                let store = self.store.clone();
                let notifier = self.notifier.clone();
                let claims = self.claims.clone();
                let done = done_tx.clone();
                tokio::spawn(async move {
                    if claims.claim(ready.device).await {
                        send(store.as_ref(), notifier.as_ref(), ready).await;
                    }
                    drop(slot);
                    let _ = done.send(ready.device);
                });
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(deadline) = deadline {
        tokio::time::sleep_until(deadline.into()).await;
    }
}

/// Looks up the device's token and notifies; drops a token the gateway refused.
async fn send(store: &dyn Store, notifier: &dyn PushNotifier, ready: Ready) {
    let device = ready.device;
    let token = match store.push_token(device).await {
        Ok(Some(token)) => token,
        Ok(None) => return,
        Err(err) => {
            tracing::warn!(cause = %err, "push token lookup failed");
            return;
        }
    };
    let notification = Notification {
        device,
        token,
        conversation: ready.conversation,
        count: ready.count,
    };
    match notifier.notify(notification).await {
        Ok(()) => metrics::counter!("chat_push_sent_total").increment(1),
        Err(PushError::TokenRejected) => {
            tracing::info!(device = %device.device, "push token rejected by the gateway; removed");
            if let Err(err) = store.set_push_token(device, None).await {
                tracing::warn!(cause = %err, "cannot remove a rejected push token");
            }
        }
        Err(err) => {
            metrics::counter!("chat_push_failed_total").increment(1);
            tracing::debug!(cause = %err, "push notification failed");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use chat_core::{DeviceId, UserId};

    use super::*;
    use crate::cluster::testing;

    fn claims(leases: &Arc<Leases>, node: &str, window: Duration) -> Claims {
        Claims {
            leases: leases.clone(),
            node: node.into(),
            window,
        }
    }

    fn device(n: u64) -> DeviceAddress {
        DeviceAddress {
            user: UserId::new(n).unwrap(),
            device: DeviceId::new(n).unwrap(),
        }
    }

    /// Two nodes whose coalescers both close a window for one device's burst: only the
    /// first to claim it notifies; other devices are independent; the node that notified
    /// notifies its own next burst; once the window has passed, the next burst may go
    /// from either node.
    #[tokio::test]
    async fn one_node_notifies_a_device_per_burst() {
        let Some(redis) = testing::redis("push-claims").await else {
            return;
        };
        let leases = Arc::new(Leases::redis(redis.clone()));
        let window = Duration::from_millis(50);
        let (a, b) = (claims(&leases, "a", window), claims(&leases, "b", window));
        assert!(a.claim(device(1)).await);
        assert!(!b.claim(device(1)).await, "the same burst, claimed by a");
        assert!(b.claim(device(2)).await, "another device");
        assert!(a.claim(device(1)).await, "a's own next burst");
        tokio::time::timeout(Duration::from_secs(10), async {
            while !b.claim(device(1)).await {
                tokio::time::sleep(window / 5).await;
            }
        })
        .await
        .expect("the claim lapses after the window");
    }

    /// A lone node's leases never refuse it.
    #[tokio::test]
    async fn a_lone_node_always_notifies() {
        let leases = Arc::new(Leases::local());
        let a = claims(&leases, "solo", Duration::from_secs(600));
        for _ in 0..3 {
            assert!(a.claim(device(1)).await);
        }
    }
}
