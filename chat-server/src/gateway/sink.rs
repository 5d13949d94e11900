//! The bus sink of one connection: a queue bounded in frames and in bytes, and a flag raised
//! when it overflows.
//!
//! Bytes are what bound memory: a slow device holding 256 frames of 400 KB bodies would pin
//! 100 MB. Each queued event is charged its encoded length ([`BusMessage::frame_len`]) when
//! it is enqueued and released when the connection takes it off the queue. A shared message
//! body counts in full in every queue that holds it, since each one keeps it alive.
//!
//! The queue is a `VecDeque` under a mutex rather than a tokio channel: a channel allocates
//! its first block of 32 slots (about 2 KB with its shared state) when it is created, which
//! every idle connection would carry, while an empty `VecDeque` holds no memory at all and
//! gives back what a burst made it allocate once it is drained.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use chat_core::{BusMessage, BusSink, Topic};
use tokio::sync::Notify;

/// Slots a drained queue may keep; a larger one (after a burst) is shrunk to nothing.
const KEEP_CAPACITY: usize = 16;

/// Feeds bus events into a connection's bounded queue without ever blocking the publisher;
/// the connection takes them with [`recv`](Self::recv).
#[derive(Debug)]
pub(super) struct ConnSink {
    queue: Mutex<Queued>,
    max_frames: usize,
    max_bytes: usize,
    lagged: AtomicBool,
    /// Woken when the queue overflows.
    wake: Notify,
    /// Woken when an event is queued.
    ready: Notify,
}

#[derive(Debug, Default)]
struct Queued {
    events: VecDeque<BusMessage>,
    /// Encoded bytes of `events`.
    bytes: usize,
    /// The connection takes no more events.
    closed: bool,
}

impl ConnSink {
    /// A sink whose queue holds at most `frames` events and `max_bytes` encoded bytes.
    pub(super) fn new(frames: usize, max_bytes: usize) -> Self {
        Self {
            queue: Mutex::default(),
            max_frames: frames,
            max_bytes,
            lagged: AtomicBool::new(false),
            wake: Notify::new(),
            ready: Notify::new(),
        }
    }

    /// Resolves once the queue has overflowed: the connection is a slow consumer.
    pub(super) async fn overflowed(&self) {
        wait_for(&self.wake, || {
            self.lagged.load(Ordering::Acquire).then_some(())
        })
        .await
    }

    /// The next event, waiting for one. Only the connection takes events off its queue.
    pub(super) async fn recv(&self) -> BusMessage {
        wait_for(&self.ready, || self.try_recv()).await
    }

    /// The next event if one is queued.
    pub(super) fn try_recv(&self) -> Option<BusMessage> {
        let mut queue = self.lock();
        let message = queue.events.pop_front()?;
        queue.bytes -= message.frame_len();
        if queue.events.is_empty() && queue.events.capacity() > KEEP_CAPACITY {
            queue.events = VecDeque::new();
        }
        Some(message)
    }

    /// The connection takes no more events: what is queued is dropped, and the bus is told
    /// the sink is gone from now on.
    pub(super) fn close(&self) {
        *self.lock() = Queued {
            closed: true,
            ..Queued::default()
        };
    }

    /// Encoded bytes queued now.
    #[cfg(test)]
    fn queued(&self) -> usize {
        self.lock().bytes
    }

    fn lock(&self) -> MutexGuard<'_, Queued> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn overflow(&self) {
        self.lagged.store(true, Ordering::Release);
        // Several futures may wait (the live loop and a blocked write); wake all.
        self.wake.notify_waiters();
    }
}

/// Waits until `ready` gives a value, checking it again each time `notify` is woken.
async fn wait_for<T>(notify: &Notify, mut ready: impl FnMut() -> Option<T>) -> T {
    loop {
        // Registered before `ready` looks, so a notification in between is not lost.
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(value) = ready() {
            return value;
        }
        notified.await;
    }
}

impl BusSink for ConnSink {
    fn deliver(&self, _topic: Topic, message: &BusMessage) -> bool {
        if self.lagged.load(Ordering::Acquire) {
            return false;
        }
        let len = message.frame_len();
        {
            let mut queue = self.lock();
            if queue.closed {
                return false;
            }
            if queue.events.len() >= self.max_frames || queue.bytes + len > self.max_bytes {
                drop(queue);
                self.overflow();
                return false;
            }
            queue.bytes += len;
            queue.events.push_back(message.clone());
        }
        self.ready.notify_one();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use chat_core::UserId;

    fn frame(len: usize) -> BusMessage {
        BusMessage::Frame(Bytes::from(vec![0; len]))
    }

    #[tokio::test]
    async fn bounded_in_bytes_and_frames() {
        let topic = Topic::User(UserId::MIN);
        let sink = ConnSink::new(4, 1_000);
        assert!(sink.deliver(topic, &frame(600)));
        assert!(sink.deliver(topic, &frame(400)));
        assert_eq!(sink.queued(), 1_000);
        assert!(!sink.deliver(topic, &frame(1)), "one byte over the bound");
        // Overflowed: the connection is cut, and nothing more is queued for it.
        tokio::time::timeout(std::time::Duration::from_secs(1), sink.overflowed())
            .await
            .unwrap();
        assert!(sink.try_recv().is_some());
        assert_eq!(sink.queued(), 400);
        assert!(!sink.deliver(topic, &frame(1)));

        let sink = ConnSink::new(2, 1_000_000);
        assert!(sink.deliver(topic, &frame(1)));
        assert!(sink.deliver(topic, &frame(1)));
        assert!(!sink.deliver(topic, &frame(1)), "a third frame");
        sink.recv().await;
        assert_eq!(sink.queued(), 1);
    }

    #[test]
    fn a_closed_sink_refuses_and_drops_what_it_held() {
        let topic = Topic::User(UserId::MIN);
        let sink = ConnSink::new(8, 1_000);
        assert!(sink.deliver(topic, &frame(10)));
        sink.close();
        assert_eq!(sink.queued(), 0);
        assert!(sink.try_recv().is_none());
        assert!(
            !sink.deliver(topic, &frame(10)),
            "the bus learns the sink is gone"
        );
    }

    #[test]
    fn a_drained_burst_gives_its_memory_back() {
        let topic = Topic::User(UserId::MIN);
        let sink = ConnSink::new(1_000, 1_000_000);
        assert_eq!(
            sink.lock().events.capacity(),
            0,
            "an idle queue holds nothing"
        );
        for _ in 0..100 {
            assert!(sink.deliver(topic, &frame(1)));
        }
        while sink.try_recv().is_some() {}
        assert_eq!(sink.lock().events.capacity(), 0);
        // A queue that never grows past a few events keeps its small buffer.
        assert!(sink.deliver(topic, &frame(1)));
        assert!(sink.try_recv().is_some());
        assert!(sink.lock().events.capacity() <= KEEP_CAPACITY);
    }

    #[tokio::test]
    async fn recv_wakes_for_an_event_queued_while_it_waits() {
        let topic = Topic::User(UserId::MIN);
        let sink = std::sync::Arc::new(ConnSink::new(8, 1_000));
        let waiting = tokio::spawn({
            let sink = sink.clone();
            async move { sink.recv().await }
        });
        tokio::task::yield_now().await;
        assert!(sink.deliver(topic, &frame(3)));
        let message = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(message.frame_len(), frame(3).frame_len());
        assert_eq!(sink.queued(), 0);
    }
}
