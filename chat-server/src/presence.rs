//! Presence (R-PRES): drives chat-core's [`PresenceTracker`] from this node's connections
//! and heartbeats, and publishes changes to each user's presence topic, so their cost is
//! proportional to the subscribers of that user, never to all connected users.
//!
//! Presence is owned by the cluster: heartbeats and windows stay in this node's tracker, and
//! only its per-user transitions ("this node holds / no longer holds a live device of U")
//! reach the shared [`Holders`] (in memory on a single node, in Redis in a cluster). A change
//! is announced only when it is one for the cluster: `online` when no node held the user
//! before, `offline` when no node holds them after. When the holders cannot be reached the
//! change is announced anyway (a duplicate is harmless; a lost `offline` is not).
//!
//! Repair: every sweep interval ([`Presence::sweep_dead`]) the node re-asserts its users if
//! the holders' count for it differs from its own (Redis restarted, or the node was swept
//! while its registration had lapsed), and one node of the cluster, under a lease, sweeps
//! the users of nodes that hold users but are no longer live in the registry, announcing
//! `offline` for those no other node holds.
//!
//! The tracker sits behind a `std::sync::Mutex` that is held only for one state-machine
//! call (never across an `.await`). A timer task sleeps until the tracker's next deadline
//! and is woken when an input may have moved it earlier.
//!
//! Invariant: subscribers see each user's changes in the order the tracker produced them.
//! The changes are queued while the lock is still held, and one publisher task (started by
//! [`Presence::run`]) publishes the queue in order, so a task that publishes slowly cannot be
//! overtaken by a later change for the same user (subscribers would end with a stale state).
//! The same task makes every decision on the holders (changes, re-assertions, sweeps), so
//! this node's decisions and its announcements happen in one order. Announcements from two
//! nodes about one user can still cross on the bus in the rare case that their decisions
//! are a moment apart; the next change or a new subscriber's snapshot repairs that.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chat_core::protocol::{PresenceEvent, ServerFrame};
use chat_core::{
    Bus, BusMessage, DeviceAddress, NodeId, NodeRegistry, PresenceChange, PresenceConfig,
    PresenceTracker, Store, Timestamp, Topic, UserId,
};
use tokio::sync::{Notify, mpsc, watch};

use crate::cluster::lease::Leases;
use crate::cluster::presence::Holders;
use crate::state::now;

/// Users of a dead node removed from the holders per call.
const SWEEP_BATCH: usize = 1_000;

/// The name of the sweeper's lease.
const SWEEP_LEASE: &str = "presence-sweep";

/// The node's presence state and its publisher.
pub(crate) struct Presence {
    tracker: Mutex<Tracked>,
    wake: Notify,
    /// The receiving end of [`Tracked::queue`], taken by the publisher in [`Presence::run`].
    queued: Mutex<Option<mpsc::UnboundedReceiver<Queued>>>,
    bus: Arc<dyn Bus>,
    store: Arc<dyn Store>,
    /// Which nodes hold a live device of each user.
    holders: Holders,
    /// This node's name among the holders (its registry ID).
    node: NodeId,
}

/// Work for the publisher task, in the order it must happen.
#[derive(Debug)]
enum Queued {
    /// A change of the tracker.
    Change(PresenceChange),
    /// Record this node's users again if the holders lost them.
    Reassert,
    /// Remove a dead node's users; announce `offline` for those no node holds.
    Sweep(NodeId),
    /// Answer once everything queued before is done.
    #[cfg(test)]
    Flush(tokio::sync::oneshot::Sender<()>),
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
    queue: mpsc::UnboundedSender<Queued>,
}

impl Presence {
    /// Presence of this node's devices, known to the cluster as `node` in `holders`.
    pub(crate) fn new(
        config: PresenceConfig,
        bus: Arc<dyn Bus>,
        store: Arc<dyn Store>,
        holders: Holders,
        node: NodeId,
    ) -> Self {
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
            holders,
            node,
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

    /// The current state of `user` as a `presence` frame body: online when a device of the
    /// user is live here or, in a cluster, on any node.
    pub(crate) async fn snapshot(&self, user: UserId) -> PresenceEvent {
        let (here, last_active) = {
            let t = &lock(&self.tracker).tracker;
            (t.is_online(user), t.last_active(user))
        };
        let online = here
            || (self.holders.is_shared()
                && self.holders.is_online(user).await.unwrap_or_else(|err| {
                    tracing::warn!(cause = %err, "presence holders unavailable");
                    false
                }));
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

    /// Waits until everything queued for the publisher so far is done (changes decided on
    /// and announced). Returns at once when the publisher is not running.
    #[cfg(test)]
    pub(crate) async fn settled(&self) {
        let (done, settled) = tokio::sync::oneshot::channel();
        self.enqueue(Queued::Flush(done));
        let _ = settled.await;
    }

    /// Every `every` until `shutdown` flips: re-asserts this node's users when the holders
    /// lost them, and, when this node holds the cluster's sweeper lease, sweeps the users of
    /// nodes that are not live in `registry` (their registration lapsed: the node died).
    pub(crate) async fn sweep_dead(
        self: Arc<Self>,
        registry: Arc<dyn NodeRegistry>,
        leases: Arc<Leases>,
        every: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                _ = shutdown.wait_for(|down| *down) => break,
            }
            // The lease outlives two missed rounds, so one slow round keeps the sweeper.
            self.sweep_round(&*registry, &leases, every * 3).await;
        }
        // Another node takes over the sweeping at its next round.
        if let Err(err) = leases.release(SWEEP_LEASE, self.node.as_str()).await {
            tracing::debug!(cause = %err, "presence sweeper lease not released");
        }
    }

    /// One round of [`Presence::sweep_dead`]: queues a re-assertion and, if this node holds
    /// (or takes) the sweeper lease for `lease_for`, a sweep of each dead node.
    async fn sweep_round(&self, registry: &dyn NodeRegistry, leases: &Leases, lease_for: Duration) {
        self.enqueue(Queued::Reassert);
        match leases
            .acquire(SWEEP_LEASE, self.node.as_str(), lease_for)
            .await
        {
            Ok(true) => {}
            Ok(false) => return,
            Err(err) => {
                tracing::warn!(cause = %err, "presence sweeper lease unavailable");
                return;
            }
        }
        for dead in self.dead_nodes(registry).await {
            tracing::info!(node = %dead, "sweeping the presence of a dead node");
            self.enqueue(Queued::Sweep(dead));
        }
    }

    /// The nodes that hold users but are not live in `registry` (never this one).
    async fn dead_nodes(&self, registry: &dyn NodeRegistry) -> Vec<NodeId> {
        let live = match registry.live(now()).await {
            Ok(live) => live,
            Err(err) => {
                tracing::warn!(cause = %err, "node registry unavailable; no sweep");
                return Vec::new();
            }
        };
        let holding = match self.holders.nodes().await {
            Ok(nodes) => nodes,
            Err(err) => {
                tracing::warn!(cause = %err, "presence holders unavailable; no sweep");
                return Vec::new();
            }
        };
        holding
            .into_iter()
            .filter(|n| *n != self.node && !live.iter().any(|l| l.id == *n))
            .collect()
    }

    /// Queues work for the publisher, in order with the tracker's changes.
    fn enqueue(&self, work: Queued) {
        // Fails only once the publisher stopped at shutdown; the work is moot then.
        let _ = lock(&self.tracker).queue.send(work);
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

    /// Does the queued work one item at a time, in queue order, until `shutdown` flips.
    async fn publish_queued(
        &self,
        mut queued: mpsc::UnboundedReceiver<Queued>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        // The users with a live device on this node, as the tracker said: what this node
        // re-asserts.
        let mut held = HashSet::new();
        loop {
            tokio::select! {
                work = queued.recv() => match work {
                    Some(work) => self.handle(work, &mut held).await,
                    None => return,
                },
                _ = async { shutdown.wait_for(|down| *down).await.is_ok() } => return,
            }
        }
    }

    async fn handle(&self, work: Queued, held: &mut HashSet<UserId>) {
        match work {
            Queued::Change(change @ PresenceChange::Online { user, .. }) => {
                held.insert(user);
                if self.added(user).await {
                    self.publish(change).await;
                }
            }
            Queued::Change(change @ PresenceChange::Offline { user, .. }) => {
                held.remove(&user);
                let none = self.holders.remove(user, &self.node).await;
                if none.unwrap_or_else(|err| {
                    tracing::warn!(cause = %err, "presence holders unavailable");
                    true
                }) {
                    self.publish(change).await;
                }
            }
            Queued::Reassert => self.reassert(held).await,
            Queued::Sweep(dead) => self.sweep(&dead).await,
            #[cfg(test)]
            Queued::Flush(done) => {
                let _ = done.send(());
            }
        }
    }

    /// Records that this node holds `user`; true when that is news to the cluster (or the
    /// holders could not say).
    async fn added(&self, user: UserId) -> bool {
        self.holders
            .add(user, &self.node)
            .await
            .unwrap_or_else(|err| {
                tracing::warn!(cause = %err, "presence holders unavailable");
                true
            })
    }

    /// Records this node's users again when the holders' count for it is not its own.
    async fn reassert(&self, held: &HashSet<UserId>) {
        if !self.holders.is_shared() {
            return;
        }
        match self.holders.count(&self.node).await {
            Ok(count) if count == held.len() => return,
            Ok(count) => tracing::info!(count, held = held.len(), "re-asserting presence"),
            Err(err) => {
                tracing::warn!(cause = %err, "presence holders unavailable");
                return;
            }
        }
        for &user in held {
            if self.added(user).await {
                metrics::counter!("chat_presence_repaired_total").increment(1);
                self.publish(PresenceChange::Online { user, at: now() })
                    .await;
            }
        }
        // Users recorded for this node that it no longer holds (a removal that failed).
        let recorded = match self.holders.users(&self.node).await {
            Ok(users) => users,
            Err(err) => {
                tracing::warn!(cause = %err, "presence holders unavailable");
                return;
            }
        };
        for user in recorded.into_iter().filter(|u| !held.contains(u)) {
            if self.holders.remove(user, &self.node).await.unwrap_or(false) {
                metrics::counter!("chat_presence_repaired_total").increment(1);
                let last_active_at = now();
                self.publish(PresenceChange::Offline {
                    user,
                    last_active_at,
                })
                .await;
            }
        }
    }

    /// Removes dead `node`'s users from the holders; announces `offline` for those no node
    /// holds, last active now (the node died without saying when they were).
    async fn sweep(&self, node: &NodeId) {
        loop {
            let (gone, more) = match self.holders.sweep(node, SWEEP_BATCH).await {
                Ok(swept) => swept,
                Err(err) => {
                    tracing::warn!(cause = %err, "presence sweep failed; the next one retries");
                    return;
                }
            };
            for user in gone {
                metrics::counter!("chat_presence_swept_total").increment(1);
                let last_active_at = now();
                self.publish(PresenceChange::Offline {
                    user,
                    last_active_at,
                })
                .await;
            }
            if !more {
                return;
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
                let _ = t.queue.send(Queued::Change(change));
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

    use crate::cluster::testing;

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

    fn device(user: u64, device: u64) -> DeviceAddress {
        DeviceAddress {
            user: UserId::new(user).unwrap(),
            device: DeviceId::new(device).unwrap(),
        }
    }

    fn node(name: &str) -> NodeId {
        NodeId::new(name).unwrap()
    }

    /// Presence known to the cluster as `name`, announcing on `bus`.
    fn presence(bus: Arc<dyn Bus>, holders: Holders, name: &str) -> Arc<Presence> {
        let store: Arc<dyn Store> = Arc::new(chat_storage::MemoryStore::new());
        Arc::new(Presence::new(
            PresenceConfig::default(),
            bus,
            store,
            holders,
            node(name),
        ))
    }

    /// A bus that records every presence event published on it: (user, online).
    #[derive(Default)]
    struct RecordingBus {
        published: Mutex<Vec<(u64, bool)>>,
    }

    impl RecordingBus {
        fn take(&self) -> Vec<(u64, bool)> {
            std::mem::take(&mut *self.published.lock().unwrap())
        }
    }

    #[async_trait]
    impl Bus for RecordingBus {
        async fn publish(&self, _: Topic, message: BusMessage) -> Result<usize, BusError> {
            let BusMessage::Frame(frame) = message else {
                panic!("presence publishes frames only");
            };
            let Ok(ServerFrame::Presence(event)) = ServerFrame::decode(&frame) else {
                panic!("not a presence frame");
            };
            let entry = (event.user.get(), event.online);
            self.published.lock().unwrap().push(entry);
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

    /// Starts each presence's timer and publisher; flip the returned sender to stop them.
    fn run_all(nodes: &[&Arc<Presence>]) -> watch::Sender<bool> {
        let (stop, shutdown) = watch::channel(false);
        for presence in nodes {
            tokio::spawn(Arc::clone(presence).run(shutdown.clone()));
        }
        stop
    }

    async fn settled(nodes: &[&Arc<Presence>]) {
        for presence in nodes {
            tokio::time::timeout(WAIT, presence.settled())
                .await
                .expect("the publisher settles");
        }
    }

    /// A user with a device on each of two nodes: online once; the first device leaving
    /// announces nothing (the other node still holds one); the second, one offline. Each
    /// node's snapshot reads the cluster's state.
    #[tokio::test]
    async fn a_user_on_two_nodes_goes_offline_once_when_both_devices_left() {
        let Some(redis) = testing::redis("presence-two").await else {
            return;
        };
        let bus = Arc::new(RecordingBus::default());
        let one = presence(bus.clone(), Holders::redis(redis.clone()), "one");
        let two = presence(bus.clone(), Holders::redis(redis.clone()), "two");
        let stop = run_all(&[&one, &two]);
        let (phone, laptop) = (device(7, 70), device(7, 71));

        one.connect(phone).await;
        settled(&[&one]).await;
        two.connect(laptop).await;
        settled(&[&two]).await;
        assert_eq!(bus.take(), [(7, true)], "online once for the cluster");
        assert!(two.snapshot(phone.user).await.online);

        one.sign_out(phone).await;
        settled(&[&one, &two]).await;
        assert_eq!(bus.take(), [], "the laptop on node two is still live");
        assert!(
            one.snapshot(phone.user).await.online,
            "node one asks the cluster"
        );

        two.sign_out(laptop).await;
        settled(&[&one, &two]).await;
        assert_eq!(bus.take(), [(7, false)], "exactly one offline");
        assert!(!one.snapshot(phone.user).await.online);
        assert!(!two.snapshot(phone.user).await.online);
        stop.send(true).unwrap();
    }

    /// A node dies holding two users; one of them also has a device on a live node. Once
    /// the dead node is out of the registry, the sweeper (holding the lease) announces
    /// offline for the other user only, once, and a second sweep finds nothing.
    #[tokio::test]
    async fn the_sweeper_takes_a_dead_nodes_users_offline() {
        let Some(redis) = testing::redis("presence-sweep").await else {
            return;
        };
        let bus = Arc::new(RecordingBus::default());
        let dead = presence(bus.clone(), Holders::redis(redis.clone()), "dead");
        let live = presence(bus.clone(), Holders::redis(redis.clone()), "live");
        let other = presence(bus.clone(), Holders::redis(redis.clone()), "other");
        let stop = run_all(&[&dead, &live, &other]);
        dead.connect(device(1, 10)).await;
        dead.connect(device(2, 20)).await;
        live.connect(device(2, 21)).await;
        settled(&[&dead, &live]).await;
        assert_eq!(bus.take(), [(1, true), (2, true)]);

        // Only "live" and "other" are registered: "dead" stopped refreshing.
        let registry = crate::cluster::registry::RedisRegistry::new(redis.clone());
        for name in ["live", "other"] {
            registry
                .register(chat_core::NodeInfo {
                    id: node(name),
                    url: format!("http://{name}"),
                    region: None,
                    connections: 0,
                    cpu_load: 0.0,
                    expires_at: now().saturating_add(Duration::from_secs(600)),
                })
                .await
                .unwrap();
        }
        let leases = Leases::redis(redis.clone());
        let lease_for = Duration::from_secs(600);
        // "other" takes the lease first: "live" does not sweep.
        assert!(
            leases
                .acquire(SWEEP_LEASE, "other", lease_for)
                .await
                .unwrap()
        );
        live.sweep_round(&registry, &leases, lease_for).await;
        settled(&[&live]).await;
        assert_eq!(bus.take(), [], "not the sweeper");
        other.sweep_round(&registry, &leases, lease_for).await;
        settled(&[&other]).await;
        assert_eq!(bus.take(), [(1, false)], "user 2 is still live elsewhere");
        other.sweep_round(&registry, &leases, lease_for).await;
        settled(&[&other]).await;
        assert_eq!(bus.take(), [], "nothing left to sweep");
        assert!(!live.snapshot(UserId::new(1).unwrap()).await.online);
        assert!(live.snapshot(UserId::new(2).unwrap()).await.online);
        stop.send(true).unwrap();
    }

    /// Redis lost a node's entries (a restart): the node's next round records its users
    /// again and announces them online.
    #[tokio::test]
    async fn a_node_re_asserts_what_redis_lost() {
        let Some(redis) = testing::redis("presence-repair").await else {
            return;
        };
        let bus = Arc::new(RecordingBus::default());
        let one = presence(bus.clone(), Holders::redis(redis.clone()), "one");
        let two = presence(bus.clone(), Holders::redis(redis.clone()), "two");
        let stop = run_all(&[&one, &two]);
        one.connect(device(3, 30)).await;
        settled(&[&one]).await;
        assert_eq!(bus.take(), [(3, true)]);
        let keys: Vec<String> = ["presence:node:one", "presence:user:3", "presence:nodes"]
            .iter()
            .map(|k| redis.key(k))
            .collect();
        let _: () = redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut redis.conn())
            .await
            .unwrap();
        assert!(!two.snapshot(UserId::new(3).unwrap()).await.online, "lost");
        let registry = crate::discovery::LocalRegistry::new();
        one.sweep_round(&registry, &Leases::local(), WAIT).await;
        settled(&[&one]).await;
        assert_eq!(bus.take(), [(3, true)], "announced again");
        assert!(two.snapshot(UserId::new(3).unwrap()).await.online);
        stop.send(true).unwrap();
    }

    /// Online then offline for one user, with the online publish still in flight when the
    /// offline change happens: subscribers must still see online first and offline last,
    /// the tracker's final state. (Before the fix, each change was published by the task
    /// that made it, after releasing the lock, so the offline overtook the online.)
    #[tokio::test]
    async fn a_users_events_are_published_in_tracker_order() {
        let bus = Arc::new(GatedBus::default());
        let mut published = bus.published.subscribe();
        let store: Arc<dyn Store> = Arc::new(chat_storage::MemoryStore::new());
        let presence = Arc::new(Presence::new(
            PresenceConfig::default(),
            bus.clone(),
            store,
            Holders::local(),
            node("solo"),
        ));
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
