//! The conformance suite of the [`Bus`] trait, run against every implementation: the
//! in-process `LocalBus` (its two "nodes" are one bus) and `RedisBus` (two instances on the
//! test Redis under a prefix of their own, as two nodes would be). Then what only a network
//! bus has: the pub/sub connection killed by Redis, malformed payloads, an unreachable Redis;
//! and, over real sockets, the gateway's order of subscribing and reading a backlog.
//!
//! Redis comes from `CHAT_TEST_REDIS_URL` (and PostgreSQL from `CHAT_TEST_POSTGRES_URL` for
//! the gateway test); without it each test says it is skipped (a failure in CI).

mod cluster_support;
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use chat_core::protocol::SharedDeliver;
use chat_core::{
    Bus, BusError, BusMessage, BusSink, DeviceId, ErrorCode, InboxPos, SubscriptionId, Timestamp,
    Topic, UserId,
};
use chat_server::{LocalBus, RedisBus};
use cluster_support::{RedisKeys, RedisUser};
use common::WAIT;
use tokio::sync::mpsc;

/// A sink that reports what it gets, and takes it unless told to refuse.
struct Recorder {
    tx: mpsc::UnboundedSender<(Topic, BusMessage)>,
    refuse: AtomicBool,
}

impl BusSink for Recorder {
    fn deliver(&self, topic: Topic, message: &BusMessage) -> bool {
        if self.refuse.load(Ordering::Relaxed) {
            return false;
        }
        self.tx.send((topic, message.clone())).is_ok()
    }
}

fn recorder() -> (Arc<Recorder>, mpsc::UnboundedReceiver<(Topic, BusMessage)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let sink = Arc::new(Recorder {
        tx,
        refuse: AtomicBool::new(false),
    });
    (sink, rx)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<(Topic, BusMessage)>) -> (Topic, BusMessage) {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("an event in time")
        .expect("sink alive")
}

/// Nothing more arrives: a publish on the topic from the same bus, to a second sink, is
/// received by that sink before anything else could be on its way to this one.
fn nothing_queued(rx: &mut mpsc::UnboundedReceiver<(Topic, BusMessage)>) {
    assert!(
        rx.try_recv().is_err(),
        "an event arrived that should not have"
    );
}

fn device(n: u64) -> Topic {
    Topic::Device(DeviceId::new(n).unwrap())
}

fn frame(text: &'static str) -> BusMessage {
    BusMessage::Frame(Bytes::from_static(text.as_bytes()))
}

/// Two nodes of one bus, and what must stay alive while they are used.
struct Nodes {
    a: Arc<dyn Bus>,
    b: Arc<dyn Bus>,
    _guard: Option<Box<dyn std::any::Any + Send>>,
}

fn local_nodes() -> Option<Nodes> {
    let bus: Arc<dyn Bus> = Arc::new(LocalBus::new());
    Some(Nodes {
        a: bus.clone(),
        b: bus,
        _guard: None,
    })
}

/// Two Redis buses under one fresh prefix, each logged in as its own Redis user.
struct RedisNodes {
    a: Arc<RedisBus>,
    b: Arc<RedisBus>,
    user_a: RedisUser,
    user_b: RedisUser,
    prefix: String,
    url: String,
    /// Last, so the buses are gone before their keys are deleted.
    _keys: RedisKeys,
}

async fn redis_pair() -> Option<RedisNodes> {
    let url = cluster_support::redis_url()?;
    let prefix = format!("{}:", cluster_support::unique("bus"));
    let user_a = RedisUser::create(&url).await;
    let user_b = RedisUser::create(&url).await;
    let a = RedisBus::connect(&user_a.url(), &prefix)
        .await
        .expect("bus a");
    let b = RedisBus::connect(&user_b.url(), &prefix)
        .await
        .expect("bus b");
    Some(RedisNodes {
        a: Arc::new(a),
        b: Arc::new(b),
        user_a,
        user_b,
        _keys: RedisKeys::new(&url, &prefix),
        prefix,
        url,
    })
}

async fn redis_nodes() -> Option<Nodes> {
    let pair = redis_pair().await?;
    let (a, b) = (pair.a.clone(), pair.b.clone());
    Some(Nodes {
        a,
        b,
        _guard: Some(Box::new((pair.user_a, pair.user_b))),
    })
}

/// Runs every conformance test against one implementation.
macro_rules! conformance {
    ($name:ident, $nodes:expr) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn publish_counts_who_holds_the_topic() {
                let Some(nodes) = $nodes else { return };
                suite::counts(&nodes).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn every_event_crosses_nodes() {
                let Some(nodes) = $nodes else { return };
                suite::crosses(&nodes).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_subscription_is_in_force_when_subscribe_returns() {
                let Some(nodes) = $nodes else { return };
                suite::in_force(&nodes).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn publish_many_answers_each_topic() {
                let Some(nodes) = $nodes else { return };
                suite::many(&nodes).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_refusing_sink_is_dropped() {
                let Some(nodes) = $nodes else { return };
                suite::refusing(&nodes).await;
            }
        }
    };
}

conformance!(local_bus, local_nodes());
conformance!(redis_bus, redis_nodes().await);

mod suite {
    use super::*;

    /// 0 when nobody holds the topic, each local sink counted, another node's counted as
    /// at least one; unsubscribing takes a sink out of the count and the stream.
    pub(crate) async fn counts(nodes: &Nodes) {
        let topic = device(11);
        assert_eq!(nodes.a.publish(topic, frame("nobody")).await.unwrap(), 0);
        assert_eq!(nodes.b.publish(topic, frame("nobody")).await.unwrap(), 0);
        let (s1, mut r1) = recorder();
        let (s2, mut r2) = recorder();
        let id1 = nodes.a.subscribe(topic, s1).await.unwrap();
        let id2 = nodes.a.subscribe(topic, s2).await.unwrap();
        assert_eq!(nodes.a.publish(topic, frame("one")).await.unwrap(), 2);
        assert!(nodes.b.publish(topic, frame("two")).await.unwrap() >= 1);
        for rx in [&mut r1, &mut r2] {
            assert_eq!(next(rx).await.1, frame("one"));
            assert_eq!(next(rx).await.1, frame("two"));
        }
        nodes.a.unsubscribe(topic, id1).await.unwrap();
        assert_eq!(nodes.a.publish(topic, frame("three")).await.unwrap(), 1);
        assert_eq!(next(&mut r2).await.1, frame("three"));
        nothing_queued(&mut r1);
        nodes.a.unsubscribe(topic, id2).await.unwrap();
        // Unknown IDs are ignored, and do not take anyone else's place.
        nodes.a.unsubscribe(topic, id2).await.unwrap();
        nodes.b.unsubscribe(topic, id1).await.unwrap();
        assert_eq!(nodes.a.publish(topic, frame("four")).await.unwrap(), 0);
        assert_eq!(nodes.b.publish(topic, frame("four")).await.unwrap(), 0);
        nothing_queued(&mut r2);
    }

    /// Every kind of event published on one node arrives, equal, on the other, in the
    /// order it was published.
    pub(crate) async fn crosses(nodes: &Nodes) {
        let topic = Topic::User(UserId::new(5).unwrap());
        let (sink, mut rx) = recorder();
        nodes.b.subscribe(topic, sink).await.unwrap();
        let events = vec![
            BusMessage::Deliver {
                pos: InboxPos::new(42).unwrap(),
                frame: Arc::new(SharedDeliver {
                    head: Bytes::from_static(b"head"),
                    body: Bytes::from(vec![7u8; 70_000]),
                }),
            },
            frame("plain"),
            BusMessage::Expiring {
                frame: Bytes::from_static(b"typing"),
                expires_at: Timestamp::from_millis(1_234_567),
            },
            BusMessage::Close(ErrorCode::InvalidToken),
            BusMessage::Unsubscribe(Topic::Presence(UserId::new(9).unwrap())),
        ];
        for event in &events {
            assert!(nodes.a.publish(topic, event.clone()).await.unwrap() >= 1);
        }
        for event in events {
            assert_eq!(next(&mut rx).await, (topic, event));
        }
    }

    /// Whatever is published after `subscribe` returned reaches the sink: published from
    /// the other node at once, many times over, on fresh topics.
    pub(crate) async fn in_force(nodes: &Nodes) {
        for n in 0..50 {
            let topic = device(1_000 + n);
            let (sink, mut rx) = recorder();
            let id = nodes.b.subscribe(topic, sink).await.unwrap();
            let count = nodes.a.publish(topic, frame("right away")).await.unwrap();
            assert!(
                count >= 1,
                "published right after subscribe: counted {count}"
            );
            assert_eq!(next(&mut rx).await.1, frame("right away"));
            nodes.b.unsubscribe(topic, id).await.unwrap();
        }
    }

    /// A batch answers each topic in order: held ones at least 1, the others 0.
    pub(crate) async fn many(nodes: &Nodes) {
        let (sink, mut rx) = recorder();
        let held: Vec<Topic> = (1..=100).map(|n| device(5_000 + n)).collect();
        for &topic in &held {
            nodes.b.subscribe(topic, sink.clone()).await.unwrap();
        }
        let mut batch = Vec::new();
        for (i, &topic) in held.iter().enumerate() {
            batch.push((topic, frame("group message")));
            if i % 10 == 0 {
                batch.push((device(9_000 + i as u64), frame("nobody's")));
            }
        }
        let counts = nodes.a.publish_many(batch.clone()).await;
        assert_eq!(counts.len(), batch.len());
        for ((topic, _), count) in batch.iter().zip(counts) {
            let count = count.unwrap();
            if held.contains(topic) {
                assert!(count >= 1, "{topic:?}");
            } else {
                assert_eq!(count, 0, "{topic:?}");
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..held.len() {
            seen.insert(next(&mut rx).await.0);
        }
        assert_eq!(seen.len(), held.len());
    }

    /// A sink that refuses an event (its connection is gone or full) gets no more, and is
    /// not counted by its own node.
    pub(crate) async fn refusing(nodes: &Nodes) {
        let topic = device(77);
        let (sink, mut rx) = recorder();
        nodes.a.subscribe(topic, sink.clone()).await.unwrap();
        sink.refuse.store(true, Ordering::Relaxed);
        assert_eq!(nodes.a.publish(topic, frame("refused")).await.unwrap(), 0);
        sink.refuse.store(false, Ordering::Relaxed);
        assert_eq!(nodes.a.publish(topic, frame("dropped")).await.unwrap(), 0);
        nothing_queued(&mut rx);
    }
}

// ---- only a network bus ----

/// Redis kills a node's pub/sub connection: the bus reconnects, subscribes every topic
/// again, tells each local sink to repair (`Resubscribed`), and carries events again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_pubsub_connection_resubscribes_and_asks_for_repair() {
    let Some(nodes) = redis_pair().await else {
        return;
    };
    let topics = [device(21), Topic::User(UserId::new(22).unwrap())];
    let (sink, mut rx) = recorder();
    for topic in topics {
        nodes.b.subscribe(topic, sink.clone()).await.unwrap();
    }
    assert_eq!(
        nodes.user_b.kill_pubsub().await,
        1,
        "one pub/sub connection per node"
    );
    let mut repaired = std::collections::BTreeSet::new();
    while repaired.len() < topics.len() {
        match next(&mut rx).await {
            (topic, BusMessage::Resubscribed(of)) => {
                assert_eq!(topic, of);
                repaired.insert(topic);
            }
            other => panic!("expected Resubscribed, got {other:?}"),
        }
    }
    assert!(nodes.b.stats().reconnects() >= 1);
    for topic in topics {
        assert!(nodes.a.publish(topic, frame("after")).await.unwrap() >= 1);
        assert_eq!(next(&mut rx).await, (topic, frame("after")));
    }
    // Node a's connection was never touched: nothing to repair there.
    let (sink_a, mut rx_a) = recorder();
    nodes.a.subscribe(device(23), sink_a).await.unwrap();
    assert!(nodes.b.publish(device(23), frame("to a")).await.unwrap() >= 1);
    assert_eq!(next(&mut rx_a).await.1, frame("to a"));
}

/// A payload the bus cannot read is dropped and counted; the topic keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_payloads_are_dropped_and_counted() {
    let Some(nodes) = redis_pair().await else {
        return;
    };
    let topic = device(31);
    let (sink, mut rx) = recorder();
    nodes.b.subscribe(topic, sink).await.unwrap();
    let mut admin = cluster_support::admin(&nodes.url).await;
    let channel = format!("{}d:31", nodes.prefix);
    for garbage in [
        &b""[..],
        b"\x01",
        b"\x09garbage",
        &[1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0],
    ] {
        let receivers: u64 = redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(garbage)
            .query_async(&mut admin)
            .await
            .unwrap();
        assert_eq!(receivers, 1);
    }
    // Published after the garbage on the same channel: arrives after it was handled.
    assert!(nodes.a.publish(topic, frame("valid")).await.unwrap() >= 1);
    assert_eq!(next(&mut rx).await.1, frame("valid"));
    assert_eq!(nodes.b.stats().malformed(), 4);
}

/// An unreachable Redis fails `connect` at once, naming no password.
#[tokio::test]
async fn an_unreachable_redis_fails_connect() {
    let started = std::time::Instant::now();
    let err = RedisBus::connect("redis://:hunter2@127.0.0.1:1", "chat")
        .await
        .expect_err("nothing listens on port 1");
    assert!(!err.to_string().contains("hunter2"), "{err}");
    assert!(started.elapsed() < WAIT);
}

// ---- the gateway over a network bus ----

/// A bus that, the first time a device topic is subscribed, first runs `before` (another
/// node's send, committed and published before the subscription exists).
struct SendBeforeSubscribing {
    inner: Arc<RedisBus>,
    before: tokio::sync::Mutex<Option<futures::future::BoxFuture<'static, ()>>>,
}

#[async_trait]
impl Bus for SendBeforeSubscribing {
    async fn publish(&self, topic: Topic, message: BusMessage) -> Result<usize, BusError> {
        self.inner.publish(topic, message).await
    }

    async fn publish_many(
        &self,
        messages: Vec<(Topic, BusMessage)>,
    ) -> Vec<Result<usize, BusError>> {
        self.inner.publish_many(messages).await
    }

    async fn subscribe(
        &self,
        topic: Topic,
        sink: Arc<dyn BusSink>,
    ) -> Result<SubscriptionId, BusError> {
        if matches!(topic, Topic::Device(_))
            && let Some(before) = self.before.lock().await.take()
        {
            before.await;
        }
        self.inner.subscribe(topic, sink).await
    }

    async fn unsubscribe(&self, topic: Topic, id: SubscriptionId) -> Result<(), BusError> {
        self.inner.unsubscribe(topic, id).await
    }
}

/// A message committed and published on node B while a device connects to node A, just
/// before node A subscribes, is not lost: node A subscribes before it reads the backlog, so
/// the read finds it. (A gateway that read first would miss it until the next message.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_racing_the_subscription_is_not_lost() {
    use chat_core::protocol::ServerFrame;
    use common::{Client, TestServer, direct, recipients, send_frame, test_config};

    let Some(redis) = cluster_support::redis_url() else {
        return;
    };
    let Some(db) = chat_storage::testing::FreshPostgres::create("chat_gw").await else {
        return;
    };
    let store = chat_storage::open(&db.url()).await.expect("store");
    let prefix = format!("{}:", cluster_support::unique("gw"));
    let _keys = RedisKeys::new(&redis, &prefix);
    let config = chat_server::Config {
        store: db.url().into(),
        redis_url: Some(redis.clone().into()),
        redis_prefix: prefix.clone(),
        ..test_config()
    };
    let node_b = TestServer::with_store(config.clone(), store.clone()).await;
    let alice = node_b.account("alice").await;
    let bob = node_b.account("bob").await;
    let conversation = direct(&node_b, &alice, &bob).await;
    let to = recipients(&node_b, &alice, conversation, b"h").await;
    let mut sender = Client::connect(node_b.addr, &alice, 0).await;
    common::backlog(&mut sender).await;

    let inner = Arc::new(RedisBus::connect(&redis, &prefix).await.expect("bus"));
    let before: futures::future::BoxFuture<'static, ()> = Box::pin(async move {
        sender
            .send(send_frame(1, conversation, 1, b"racing", to))
            .await;
        let (_, sent) = sender.until(|f| matches!(f, ServerFrame::Sent(_))).await;
        assert!(matches!(sent, ServerFrame::Sent(_)));
    });
    let bus = Arc::new(SendBeforeSubscribing {
        inner,
        before: tokio::sync::Mutex::new(Some(before)),
    });
    let server = chat_server::Server::with_bus(config, store, bus)
        .await
        .expect("bind");
    let node_a = TestServer::run(server);
    let mut receiver = Client::connect(node_a.addr, &bob, 0).await;
    let (_, got) = receiver
        .until(|f| matches!(f, ServerFrame::Deliver(d) if d.body.as_ref() == b"racing"))
        .await;
    assert!(matches!(got, ServerFrame::Deliver(_)));
    node_a.shutdown().await;
    node_b.shutdown().await;
}

/// A node whose Redis is unreachable does not start, and says which Redis (password
/// redacted).
#[tokio::test]
async fn a_node_does_not_start_without_its_redis() {
    let config = chat_server::Config {
        // Never opened: the store is handed over below.
        store: "postgres://chat@127.0.0.1:5432/chat".into(),
        redis_url: Some("redis://:hunter2@127.0.0.1:1".into()),
        ..common::test_config()
    };
    let store: Arc<dyn chat_core::Store> = Arc::new(chat_storage::MemoryStore::new());
    let err = chat_server::Server::with_store(config, store)
        .await
        .expect_err("no redis on port 1");
    let text = err.to_string();
    assert!(text.contains("127.0.0.1:1"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}
