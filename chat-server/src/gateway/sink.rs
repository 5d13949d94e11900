//! The bus sink of one connection: a queue bounded in frames and in bytes, and a flag raised
//! when it overflows.
//!
//! Bytes are what bound memory: a slow device holding 256 frames of 400 KB bodies would pin
//! 100 MB. Each queued event is charged its encoded length ([`BusMessage::frame_len`]) when
//! it is enqueued and released when the connection takes it off the queue. A shared message
//! body counts in full in every queue that holds it, since each one keeps it alive.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use chat_core::{BusMessage, BusSink, Topic};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{Notify, mpsc};

/// Feeds bus events into a connection's bounded queue without ever blocking the publisher.
#[derive(Debug)]
pub(super) struct ConnSink {
    tx: mpsc::Sender<BusMessage>,
    /// Encoded bytes queued and not yet taken.
    queued: AtomicUsize,
    max_bytes: usize,
    lagged: AtomicBool,
    wake: Notify,
}

/// The receiving end of a [`ConnSink`]'s queue.
#[derive(Debug)]
pub(super) struct Queue {
    rx: mpsc::Receiver<BusMessage>,
}

impl ConnSink {
    /// A sink whose queue holds at most `frames` events and `max_bytes` encoded bytes.
    pub(super) fn new(frames: usize, max_bytes: usize) -> (Self, Queue) {
        let (tx, rx) = mpsc::channel(frames);
        let sink = Self {
            tx,
            queued: AtomicUsize::new(0),
            max_bytes,
            lagged: AtomicBool::new(false),
            wake: Notify::new(),
        };
        (sink, Queue { rx })
    }

    /// Resolves once the queue has overflowed: the connection is a slow consumer.
    pub(super) async fn overflowed(&self) {
        loop {
            // Registered before the flag is read, so a notification in between is not lost.
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.lagged.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    /// Releases the bytes of an event taken off the queue.
    pub(super) fn taken(&self, message: &BusMessage) {
        self.queued.fetch_sub(message.frame_len(), Ordering::AcqRel);
    }

    /// Encoded bytes queued now.
    #[cfg(test)]
    fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    fn overflow(&self) {
        self.lagged.store(true, Ordering::Release);
        // Several futures may wait (the live loop and a blocked write); wake all.
        self.wake.notify_waiters();
    }
}

impl Queue {
    /// The next event, releasing its bytes from `sink`'s account.
    pub(super) async fn recv(&mut self, sink: &ConnSink) -> Option<BusMessage> {
        let message = self.rx.recv().await?;
        sink.taken(&message);
        Some(message)
    }

    /// The next event if one is queued, releasing its bytes from `sink`'s account.
    pub(super) fn try_recv(&mut self, sink: &ConnSink) -> Option<BusMessage> {
        let message = self.rx.try_recv().ok()?;
        sink.taken(&message);
        Some(message)
    }
}

impl BusSink for ConnSink {
    fn deliver(&self, _topic: Topic, message: &BusMessage) -> bool {
        if self.lagged.load(Ordering::Acquire) {
            return false;
        }
        let len = message.frame_len();
        let queued = self.queued.fetch_add(len, Ordering::AcqRel) + len;
        if queued > self.max_bytes {
            self.queued.fetch_sub(len, Ordering::AcqRel);
            self.overflow();
            return false;
        }
        match self.tx.try_send(message.clone()) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.queued.fetch_sub(len, Ordering::AcqRel);
                self.overflow();
                false
            }
            Err(TrySendError::Closed(_)) => {
                self.queued.fetch_sub(len, Ordering::AcqRel);
                false
            }
        }
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
        let (sink, mut queue) = ConnSink::new(4, 1_000);
        assert!(sink.deliver(topic, &frame(600)));
        assert!(sink.deliver(topic, &frame(400)));
        assert_eq!(sink.queued(), 1_000);
        assert!(!sink.deliver(topic, &frame(1)), "one byte over the bound");
        // Overflowed: the connection is cut, and nothing more is queued for it.
        tokio::time::timeout(std::time::Duration::from_secs(1), sink.overflowed())
            .await
            .unwrap();
        assert!(queue.try_recv(&sink).is_some());
        assert_eq!(sink.queued(), 400);
        assert!(!sink.deliver(topic, &frame(1)));

        let (sink, mut queue) = ConnSink::new(2, 1_000_000);
        assert!(sink.deliver(topic, &frame(1)));
        assert!(sink.deliver(topic, &frame(1)));
        assert!(!sink.deliver(topic, &frame(1)), "a third frame");
        assert!(queue.recv(&sink).await.is_some());
        assert_eq!(sink.queued(), 1);
    }
}
