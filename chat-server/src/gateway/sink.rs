//! The bus sink of one connection: a bounded queue, and a flag raised when it overflows.

use std::sync::atomic::{AtomicBool, Ordering};

use chat_core::{BusMessage, BusSink, Topic};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{Notify, mpsc};

/// Feeds bus events into a connection's bounded queue without ever blocking the publisher.
#[derive(Debug)]
pub(super) struct ConnSink {
    tx: mpsc::Sender<BusMessage>,
    lagged: AtomicBool,
    wake: Notify,
}

impl ConnSink {
    pub(super) fn new(capacity: usize) -> (Self, mpsc::Receiver<BusMessage>) {
        let (tx, rx) = mpsc::channel(capacity);
        (
            Self {
                tx,
                lagged: AtomicBool::new(false),
                wake: Notify::new(),
            },
            rx,
        )
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
}

impl BusSink for ConnSink {
    fn deliver(&self, _topic: Topic, message: &BusMessage) -> bool {
        match self.tx.try_send(message.clone()) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.lagged.store(true, Ordering::Release);
                // Several futures may wait (the live loop and a blocked write); wake all.
                self.wake.notify_waiters();
                false
            }
            Err(TrySendError::Closed(_)) => false,
        }
    }
}
