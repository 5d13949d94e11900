//! [`RedisBus`]: the [`Bus`] of a cluster, on Redis pub/sub.
//!
//! Each node holds two Redis connections for the bus: one that publishes (a reconnecting
//! multiplexed connection, shared by every task) and one pub/sub connection that carries
//! every topic any local connection wants. Local sinks are fanned out by a [`LocalBus`]:
//! a publish hands the message to this node's sinks directly and to Redis, where every other
//! node subscribed to the topic's channel gets it (a node drops its own messages by their
//! origin, having delivered them already).
//!
//! The subscriber task owns the pub/sub connection and reconciles it with what local sinks
//! want: a topic is `SUBSCRIBE`d while at least one local subscription wants it and
//! `UNSUBSCRIBE`d when the last one ends. Requests that arrive while a round trip is in
//! flight go out together in the next one, so a thousand connections arriving at once cost
//! a few round trips, not a thousand. [`Bus::subscribe`] returns only once Redis confirmed
//! the subscription, so a device's backlog read after it misses nothing.
//!
//! Pub/sub is at most once. When the pub/sub connection ends (Redis restarted or failed
//! over, `CLIENT KILL`, an output buffer limit, a network fault caught by the periodic
//! `PING`), the task reconnects with backoff, subscribes every wanted topic again and, once
//! Redis confirmed them, hands every local sink [`BusMessage::Resubscribed`]: a device
//! connection re-reads its inbox after its last sent position (so a lost last delivery goes
//! out now, not with the next message), and re-checks its token (a lost `Close`).
//!
//! The publish count is the local sinks that took the message plus the other nodes Redis
//! delivered it to: 0 still means nobody holds the topic. A publish Redis refuses while a
//! local sink took the message counts the local sinks; with no local sink it is an error
//! (push then wakes the device). Publishing to many topics (a message to a group's devices)
//! is one pipelined round trip.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chat_core::{Bus, BusError, BusMessage, BusSink, SubscriptionId, Topic};
use futures::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSub, PubSubSink, PubSubStream};
use tokio::sync::{mpsc, oneshot};

use super::wire::{self, Origin};
use crate::bus::LocalBus;

/// How long connecting to Redis, or one command on it, may take.
const REDIS_TIMEOUT: Duration = Duration::from_secs(3);
/// How long `subscribe` waits for Redis to confirm (longer than a reconnect's first tries).
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(5);
/// How often the pub/sub connection is pinged, to notice a connection that died silently.
const PING_INTERVAL: Duration = Duration::from_secs(5);
/// The first and the longest wait between attempts to reconnect.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Channels per `SUBSCRIBE` / `UNSUBSCRIBE` command.
const CHANNELS_PER_COMMAND: usize = 1_000;

/// Counters of one bus, for tests and metrics.
#[derive(Debug, Default)]
pub struct BusStats {
    malformed: AtomicU64,
    reconnects: AtomicU64,
    subscribe_commands: AtomicU64,
}

impl BusStats {
    /// Payloads or channel names from Redis that could not be read, and were dropped.
    pub fn malformed(&self) -> u64 {
        self.malformed.load(Ordering::Relaxed)
    }

    /// Times the pub/sub connection was re-established after it ended.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    /// `SUBSCRIBE` commands sent (each for up to a thousand channels).
    pub fn subscribe_commands(&self) -> u64 {
        self.subscribe_commands.load(Ordering::Relaxed)
    }
}

/// A [`Bus`] shared by the nodes of a cluster through Redis pub/sub.
pub struct RedisBus {
    local: Arc<LocalBus>,
    origin: Origin,
    prefix: Arc<str>,
    publisher: ConnectionManager,
    commands: mpsc::UnboundedSender<Command>,
    /// Topics Redis confirmed on the current pub/sub connection: a publish to one of them
    /// is also counted by Redis for this node, which is not another holder.
    confirmed: Arc<Mutex<HashSet<Topic>>>,
    stats: Arc<BusStats>,
}

impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisBus {
    /// Connects to Redis at `url` (both connections, so an unreachable Redis fails here) and
    /// starts the subscriber task. Every channel is named under `prefix`: nodes of one
    /// cluster share it, and clusters (or tests) sharing a Redis use different ones.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, BusError> {
        let client = super::client(url).map_err(unavailable)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(BACKOFF_MAX);
        let publisher = ConnectionManager::new_with_config(client.clone(), config)
            .await
            .map_err(unavailable)?;
        let pubsub = open_pubsub(&client).await?;
        let mut random = [0u8; 8];
        getrandom::fill(&mut random).map_err(|e| BusError::Unavailable(e.to_string()))?;
        let origin = Origin(u64::from_be_bytes(random));
        let local = Arc::new(LocalBus::new());
        let prefix: Arc<str> = prefix.into();
        let confirmed = Arc::new(Mutex::new(HashSet::new()));
        let stats = Arc::new(BusStats::default());
        let (commands, rx) = mpsc::unbounded_channel();
        let (ended_tx, ended) = mpsc::unbounded_channel();
        let mut subscriber = Subscriber {
            client,
            reader: Reader {
                local: local.clone(),
                origin,
                prefix: prefix.clone(),
                stats: stats.clone(),
            },
            commands: rx,
            ended_tx,
            ended,
            wanted: HashMap::new(),
            waiters: HashMap::new(),
            leaving: Vec::new(),
            confirmed: confirmed.clone(),
            sink: None,
            reading: None,
            epoch: 0,
            dirty: false,
            repair: false,
            stats: stats.clone(),
        };
        subscriber.attach(pubsub);
        tokio::spawn(subscriber.run());
        Ok(Self {
            local,
            origin,
            prefix,
            publisher,
            commands,
            confirmed,
            stats,
        })
    }

    /// This bus's counters.
    pub fn stats(&self) -> &BusStats {
        &self.stats
    }

    /// The Redis channel `topic` is published on.
    fn channel(&self, topic: Topic) -> Result<String, BusError> {
        wire::channel(&self.prefix, topic).map_err(|e| BusError::Unavailable(e.to_string()))
    }

    /// How many other nodes a Redis publish count stands for.
    fn others(&self, topic: &Topic, count: i64) -> usize {
        let own = usize::from(lock(&self.confirmed).contains(topic));
        usize::try_from(count).unwrap_or(0).saturating_sub(own)
    }

    /// Adds the local sinks' count to Redis's answer for one publish.
    fn count(
        &self,
        topic: &Topic,
        local: usize,
        redis: Result<i64, &redis::RedisError>,
    ) -> Result<usize, BusError> {
        match redis {
            Ok(count) => Ok(local + self.others(topic, count)),
            // Someone here holds it: live, whatever the other nodes missed.
            Err(_) if local > 0 => Ok(local),
            Err(err) => Err(BusError::Unavailable(err.to_string())),
        }
    }
}

#[async_trait]
impl Bus for RedisBus {
    async fn publish(&self, topic: Topic, message: BusMessage) -> Result<usize, BusError> {
        let mut counts = self.publish_many(vec![(topic, message)]).await;
        counts
            .pop()
            .unwrap_or_else(|| Err(BusError::Unavailable("no answer".into())))
    }

    async fn publish_many(
        &self,
        messages: Vec<(Topic, BusMessage)>,
    ) -> Vec<Result<usize, BusError>> {
        let mut pipe = redis::pipe();
        let mut local = Vec::with_capacity(messages.len());
        let mut encoded = Vec::with_capacity(messages.len());
        for (topic, message) in &messages {
            local.push(self.local.publish_local(*topic, message));
            let payload = wire::encode(self.origin, message)
                .map_err(|e| BusError::Unavailable(e.to_string()))
                .and_then(|payload| Ok((self.channel(*topic)?, payload)));
            match payload {
                Ok((channel, payload)) => {
                    pipe.cmd("PUBLISH").arg(channel).arg(payload);
                    encoded.push(Ok(()));
                }
                Err(err) => encoded.push(Err(err)),
            }
        }
        let mut publisher = self.publisher.clone();
        let answers: Result<Vec<i64>, redis::RedisError> = if pipe.is_empty() {
            Ok(Vec::new())
        } else {
            pipe.query_async(&mut publisher).await
        };
        let mut answers = match &answers {
            Ok(counts) => counts
                .iter()
                .map(|c| Ok(*c))
                .collect::<Vec<_>>()
                .into_iter(),
            Err(err) => vec![Err(err); encoded.len()].into_iter(),
        };
        messages
            .iter()
            .zip(local)
            .zip(encoded)
            .map(|(((topic, _), local), encoded)| {
                encoded?;
                let redis = answers.next().unwrap_or(Ok(0));
                self.count(topic, local, redis)
            })
            .collect()
    }

    async fn subscribe(
        &self,
        topic: Topic,
        sink: Arc<dyn BusSink>,
    ) -> Result<SubscriptionId, BusError> {
        // Local first: what is published from now on reaches the sink, whichever way.
        let id = self.local.subscribe(topic, sink).await?;
        let mut guard = Pending {
            bus: self,
            topic,
            id,
            armed: true,
        };
        let (ready, confirmed) = oneshot::channel();
        self.commands
            .send(Command::Want { topic, id, ready })
            .map_err(|_| BusError::Unavailable("bus stopped".into()))?;
        match tokio::time::timeout(SUBSCRIBE_WAIT, confirmed).await {
            Ok(Ok(())) => {
                guard.armed = false;
                Ok(id)
            }
            Ok(Err(_)) => Err(BusError::Unavailable("bus stopped".into())),
            Err(_) => Err(BusError::Unavailable(
                "redis did not confirm the subscription in time".into(),
            )),
        }
    }

    /// Returns once no local sink has the subscription and, when it was the topic's last,
    /// Redis confirmed the `UNSUBSCRIBE` (so a publish count no longer includes this node).
    async fn unsubscribe(&self, topic: Topic, id: SubscriptionId) -> Result<(), BusError> {
        self.local.unsubscribe(topic, id).await?;
        let (done, unsubscribed) = oneshot::channel();
        let drop = Command::Drop {
            topic,
            id,
            done: Some(done),
        };
        if self.commands.send(drop).is_ok() {
            // Not confirming in time only delays the count's change: nothing is delivered to
            // the sink any more.
            let _ = tokio::time::timeout(REDIS_TIMEOUT, unsubscribed).await;
        }
        Ok(())
    }
}

/// Undoes a subscription whose confirmation was not awaited to the end (timed out, or the
/// caller's future was dropped).
struct Pending<'a> {
    bus: &'a RedisBus,
    topic: Topic,
    id: SubscriptionId,
    armed: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.bus.local.remove(self.topic, self.id);
            let _ = self.bus.commands.send(Command::Drop {
                topic: self.topic,
                id: self.id,
                done: None,
            });
        }
    }
}

/// What the bus asks of its subscriber task.
#[derive(Debug)]
enum Command {
    /// A local subscription wants `topic`; `ready` is answered once Redis confirmed it.
    Want {
        topic: Topic,
        id: SubscriptionId,
        ready: oneshot::Sender<()>,
    },
    /// A local subscription ended; `done` is answered once this node no longer holds the
    /// topic on Redis because of it.
    Drop {
        topic: Topic,
        id: SubscriptionId,
        done: Option<oneshot::Sender<()>>,
    },
}

/// Owns the pub/sub connection and keeps its subscriptions equal to what is wanted.
struct Subscriber {
    client: redis::Client,
    reader: Reader,
    commands: mpsc::UnboundedReceiver<Command>,
    /// Each reader task reports the epoch of its connection when the connection ends.
    ended_tx: mpsc::UnboundedSender<u64>,
    ended: mpsc::UnboundedReceiver<u64>,
    /// The local subscriptions of each wanted topic.
    wanted: HashMap<Topic, HashSet<SubscriptionId>>,
    /// Subscriptions waiting for their topic to be confirmed.
    waiters: HashMap<Topic, Vec<oneshot::Sender<()>>>,
    /// Unsubscriptions waiting for their topic's `UNSUBSCRIBE` to be confirmed.
    leaving: Vec<(Topic, oneshot::Sender<()>)>,
    confirmed: Arc<Mutex<HashSet<Topic>>>,
    /// The current connection's command half, if connected.
    sink: Option<PubSubSink>,
    /// The current connection's reader task: aborting it drops the connection.
    reading: Option<tokio::task::JoinHandle<()>>,
    /// Counts connections; a reader's report for an older one is ignored.
    epoch: u64,
    /// Wanted and confirmed may differ.
    dirty: bool,
    /// The connection is new after a lost one: once every wanted topic is confirmed, local
    /// sinks are told to repair.
    repair: bool,
    stats: Arc<BusStats>,
}

impl Subscriber {
    async fn run(mut self) {
        let mut backoff = BACKOFF_MIN;
        let mut ping = tokio::time::interval(PING_INTERVAL);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.sink.is_none() {
                match open_pubsub(&self.client).await {
                    Ok(pubsub) => {
                        backoff = BACKOFF_MIN;
                        self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                        metrics::counter!("chat_bus_reconnects_total").increment(1);
                        tracing::info!("bus: pub/sub connection re-established");
                        self.attach(pubsub);
                    }
                    Err(err) => {
                        tracing::warn!(cause = %err, "bus: cannot reach redis");
                        // Requests still come in meanwhile; they are served once connected.
                        let wait = tokio::time::sleep(backoff);
                        tokio::pin!(wait);
                        loop {
                            tokio::select! {
                                () = &mut wait => break,
                                command = self.commands.recv() => match command {
                                    Some(command) => self.apply(command),
                                    None => return,
                                },
                            }
                        }
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        continue;
                    }
                }
            }
            if self.dirty {
                self.reconcile().await;
                continue;
            }
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(command) => {
                        self.apply(command);
                        while let Ok(command) = self.commands.try_recv() {
                            self.apply(command);
                        }
                    }
                    None => return,
                },
                Some(epoch) = self.ended.recv() => {
                    if epoch == self.epoch && self.sink.is_some() {
                        tracing::warn!("bus: pub/sub connection lost");
                        self.lost();
                    }
                }
                _ = ping.tick() => self.ping().await,
            }
        }
    }

    /// Takes a new connection into use: its reader starts, and every wanted topic is to be
    /// subscribed on it.
    fn attach(&mut self, pubsub: PubSub) {
        let (sink, stream) = pubsub.split();
        self.epoch += 1;
        let reading = tokio::spawn(self.reader.clone().run(
            stream,
            self.epoch,
            self.ended_tx.clone(),
        ));
        if let Some(old) = self.reading.replace(reading) {
            old.abort();
        }
        lock(&self.confirmed).clear();
        self.sink = Some(sink);
        self.dirty = true;
    }

    /// The connection ended: nothing is subscribed any more, and what was lost meanwhile is
    /// repaired once the topics are subscribed again.
    fn lost(&mut self) {
        self.sink = None;
        // A connection given up on (a failed command, no answer to a ping) may still be
        // open and subscribed: closed, so it delivers nothing twice.
        if let Some(reading) = self.reading.take() {
            reading.abort();
        }
        lock(&self.confirmed).clear();
        self.repair = true;
        self.dirty = true;
        self.answer_leaving();
    }

    fn apply(&mut self, command: Command) {
        match command {
            Command::Want { topic, id, ready } => {
                self.wanted.entry(topic).or_default().insert(id);
                if self.sink.is_some() && lock(&self.confirmed).contains(&topic) {
                    let _ = ready.send(());
                } else {
                    self.waiters.entry(topic).or_default().push(ready);
                    self.dirty = true;
                }
            }
            Command::Drop { topic, id, done } => {
                if let Some(ids) = self.wanted.get_mut(&topic) {
                    ids.remove(&id);
                    if ids.is_empty() {
                        self.wanted.remove(&topic);
                        self.dirty = true;
                    }
                }
                if let Some(done) = done {
                    self.leaving.push((topic, done));
                    self.answer_leaving();
                }
            }
        }
    }

    /// Answers the unsubscriptions whose topic this node no longer holds on Redis, or that
    /// another local subscription holds now.
    fn answer_leaving(&mut self) {
        let confirmed = lock(&self.confirmed);
        let mut i = 0;
        while i < self.leaving.len() {
            let topic = self.leaving[i].0;
            if confirmed.contains(&topic) && !self.wanted.contains_key(&topic) {
                i += 1;
            } else {
                let (_, done) = self.leaving.swap_remove(i);
                let _ = done.send(());
            }
        }
    }

    /// Subscribes what is wanted and not confirmed, unsubscribes what is confirmed and no
    /// longer wanted; a failure drops the connection (it is re-established and reconciled).
    async fn reconcile(&mut self) {
        let Some(sink) = self.sink.clone() else {
            return;
        };
        self.dirty = false;
        let (to_subscribe, to_unsubscribe) = {
            let confirmed = lock(&self.confirmed);
            let add: Vec<Topic> = self
                .wanted
                .keys()
                .filter(|t| !confirmed.contains(t))
                .copied()
                .collect();
            let remove: Vec<Topic> = confirmed
                .iter()
                .filter(|t| !self.wanted.contains_key(t))
                .copied()
                .collect();
            (add, remove)
        };
        for chunk in to_subscribe.chunks(CHANNELS_PER_COMMAND) {
            let names = self.reader.channels(chunk);
            let mut sink = sink.clone();
            self.stats
                .subscribe_commands
                .fetch_add(1, Ordering::Relaxed);
            match tokio::time::timeout(REDIS_TIMEOUT, sink.subscribe(names)).await {
                Ok(Ok(())) => {
                    lock(&self.confirmed).extend(chunk.iter().copied());
                    for topic in chunk {
                        for ready in self.waiters.remove(topic).unwrap_or_default() {
                            let _ = ready.send(());
                        }
                    }
                }
                Ok(Err(err)) => return self.failed("subscribe", &err.to_string()),
                Err(_) => return self.failed("subscribe", "timed out"),
            }
        }
        for chunk in to_unsubscribe.chunks(CHANNELS_PER_COMMAND) {
            let names = self.reader.channels(chunk);
            let mut sink = sink.clone();
            match tokio::time::timeout(REDIS_TIMEOUT, sink.unsubscribe(names)).await {
                Ok(Ok(())) => {
                    let mut confirmed = lock(&self.confirmed);
                    for topic in chunk {
                        confirmed.remove(topic);
                    }
                }
                Ok(Err(err)) => return self.failed("unsubscribe", &err.to_string()),
                Err(_) => return self.failed("unsubscribe", "timed out"),
            }
        }
        // Waiters of topics no longer wanted (their subscription ended while waiting).
        self.waiters
            .retain(|topic, _| self.wanted.contains_key(topic));
        self.answer_leaving();
        if self.repair && !self.dirty {
            self.repair = false;
            let topics: Vec<Topic> = self.wanted.keys().copied().collect();
            tracing::info!(topics = topics.len(), "bus: resubscribed; repairing");
            for topic in topics {
                self.reader
                    .local
                    .publish_local(topic, &BusMessage::Resubscribed(topic));
            }
        }
    }

    fn failed(&mut self, during: &'static str, cause: &str) {
        tracing::warn!(cause, during, "bus: pub/sub command failed; reconnecting");
        self.lost();
    }

    async fn ping(&mut self) {
        let Some(mut sink) = self.sink.clone() else {
            return;
        };
        // Any answer will do (`PONG`, or `["pong", ""]` once subscribed).
        let answer = tokio::time::timeout(REDIS_TIMEOUT, sink.ping::<redis::Value>()).await;
        if !matches!(answer, Ok(Ok(_))) {
            self.failed("ping", "no answer");
        }
    }
}

impl Drop for Subscriber {
    /// The bus is gone: its pub/sub connection closes with it.
    fn drop(&mut self) {
        if let Some(reading) = self.reading.take() {
            reading.abort();
        }
    }
}

/// Hands what arrives on a pub/sub connection to the local sinks.
#[derive(Clone)]
struct Reader {
    local: Arc<LocalBus>,
    origin: Origin,
    prefix: Arc<str>,
    stats: Arc<BusStats>,
}

impl Reader {
    async fn run(self, mut stream: PubSubStream, epoch: u64, ended: mpsc::UnboundedSender<u64>) {
        while let Some(message) = stream.next().await {
            let topic = wire::topic_of(&self.prefix, message.get_channel_name());
            let payload = Bytes::copy_from_slice(message.get_payload_bytes());
            match topic.and_then(|topic| Ok((topic, wire::decode(payload)?))) {
                Ok((_, (origin, _))) if origin == self.origin => {}
                Ok((topic, (_, message))) => {
                    self.local.publish_local(topic, &message);
                }
                Err(err) => {
                    self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("chat_bus_malformed_total").increment(1);
                    tracing::debug!(cause = %err, "bus: malformed message dropped");
                }
            }
        }
        let _ = ended.send(epoch);
    }

    fn channels(&self, topics: &[Topic]) -> Vec<String> {
        topics
            .iter()
            .filter_map(|t| wire::channel(&self.prefix, *t).ok())
            .collect()
    }
}

async fn open_pubsub(client: &redis::Client) -> Result<PubSub, BusError> {
    match tokio::time::timeout(REDIS_TIMEOUT, client.get_async_pubsub()).await {
        Ok(Ok(pubsub)) => Ok(pubsub),
        Ok(Err(err)) => Err(unavailable(err)),
        Err(_) => Err(BusError::Unavailable(
            "connecting to redis timed out".into(),
        )),
    }
}

fn unavailable(err: redis::RedisError) -> BusError {
    BusError::Unavailable(err.to_string())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every operation on the guarded set is a single call: poisoning leaves it consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}
