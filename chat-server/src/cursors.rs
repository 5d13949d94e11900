//! Acknowledged cursors, stored behind the acks.
//!
//! An `ack {up_to}` frame is recorded here, and every `cursor_flush_ms` the node stores all
//! the cursors recorded since the last flush in one batch ([`MessageStore::ack_all`]), and
//! once more after its connections closed at shutdown. Before, each `ack` was its own
//! write, one per delivered message for a client that acks each, which the connection
//! waited for before reading its next frame.
//!
//! Nothing waits for the stored cursor, so it may lag: a device names its own cursor when
//! it connects and the node serves from that, so a crash that loses the last interval's
//! acknowledgements only leaves the record behind by that much (it never moves backwards,
//! nor past what the device acknowledged). No message is lost or delivered out of order.
//! The same holds for what a shutdown cannot store (the store failing, or slower than the
//! shutdown grace period).
//!
//! [`MessageStore::ack_all`]: chat_core::MessageStore::ack_all

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chat_core::{DeviceAddress, InboxPos, MessageStore, Store, StoreResult};
use tokio::sync::watch;

use crate::health::{self, StoreHealth};

/// The acknowledged cursors not stored yet, at most one per device.
#[derive(Debug, Default)]
pub(crate) struct Cursors {
    pending: Mutex<HashMap<DeviceAddress, InboxPos>>,
    /// Held across a flush, so the last one (at shutdown) waits for one in progress and
    /// then takes what a failed one put back.
    flushing: tokio::sync::Mutex<()>,
}

impl Cursors {
    /// Records that `device` acknowledged everything up to `up_to` (a lower position than
    /// one recorded before changes nothing).
    pub(crate) fn record(&self, device: DeviceAddress, up_to: InboxPos) {
        let mut pending = self.lock();
        let cursor = pending.entry(device).or_insert(up_to);
        *cursor = (*cursor).max(up_to);
    }

    /// Stores every cursor recorded so far and returns how many devices that was. On
    /// failure they stay recorded (merged with any recorded meanwhile) for the next flush.
    /// A batch the store refuses (not a backend failure) is dropped: kept, it would block
    /// every later flush.
    pub(crate) async fn flush(&self, store: &dyn MessageStore) -> StoreResult<usize> {
        let _flushing = self.flushing.lock().await;
        let batch = self.take();
        if batch.is_empty() {
            return Ok(0);
        }
        match store.ack_all(&batch).await {
            Ok(()) => Ok(batch.len()),
            Err(err) => {
                if health::is_backend(&err) {
                    self.restore(batch);
                }
                Err(err)
            }
        }
    }

    /// Takes every recorded cursor, leaving none (the lock is held only for the swap).
    fn take(&self) -> Vec<(DeviceAddress, InboxPos)> {
        let pending = std::mem::take(&mut *self.lock());
        pending.into_iter().collect()
    }

    /// Records a batch again that could not be stored.
    fn restore(&self, batch: Vec<(DeviceAddress, InboxPos)>) {
        for (device, up_to) in batch {
            self.record(device, up_to);
        }
    }

    /// Flushes every `every` until the node starts shutting down (the node flushes once
    /// more after its connections closed).
    pub(crate) async fn run(
        self: Arc<Self>,
        store: Arc<dyn Store>,
        health: Arc<StoreHealth>,
        every: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                _ = shutdown.wait_for(|down| *down) => return,
            }
            self.flush_logged(&*store, &health).await;
        }
    }

    /// [`flush`](Self::flush), reporting a backend failure to the node's store health
    /// (throttled logging, readiness) and logging a refusal.
    pub(crate) async fn flush_logged(&self, store: &dyn MessageStore, health: &StoreHealth) {
        match self.flush(store).await {
            Ok(0) => {}
            Ok(devices) => tracing::trace!(devices, "stored acknowledged cursors"),
            Err(err) if health::is_backend(&err) => health.failed("cursor flush", &err),
            Err(err) => {
                tracing::warn!(cause = %err, "the store refused a batch of cursors; dropped");
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<DeviceAddress, InboxPos>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_core::{
        Appended, ConversationId, Direction, Envelope, InboxEntry, MessageId, NewMessage,
        StoreError, Timestamp,
    };
    use chat_storage::MemoryStore;
    use chat_storage::testing::user_with_devices;

    fn pos(n: u64) -> InboxPos {
        InboxPos::new(n).expect("position")
    }

    #[tokio::test]
    async fn a_flush_stores_the_highest_recorded_cursor_of_each_device_once() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let (_, devices) = user_with_devices(&*store, 2).await;
        let (a, b) = (devices[0], devices[1]);
        let cursors = Cursors::default();
        cursors.record(a, pos(3));
        cursors.record(a, pos(7));
        cursors.record(a, pos(5));
        cursors.record(b, pos(1));
        assert_eq!(store.cursor(a).await.expect("cursor"), pos(0), "not yet");
        assert_eq!(cursors.flush(&*store).await.expect("flush"), 2);
        assert_eq!(store.cursor(a).await.expect("cursor"), pos(7));
        assert_eq!(store.cursor(b).await.expect("cursor"), pos(1));
        assert_eq!(cursors.flush(&*store).await.expect("flush"), 0, "drained");
    }

    #[test]
    fn a_batch_that_failed_is_merged_with_what_came_meanwhile() {
        let (a, b) = (address(1, 1), address(2, 2));
        let cursors = Cursors::default();
        cursors.record(a, pos(4));
        cursors.record(b, pos(1));
        let failed = cursors.take();
        assert!(cursors.take().is_empty());
        cursors.record(a, pos(2));
        cursors.record(b, pos(6));
        cursors.restore(failed);
        let mut again = cursors.take();
        again.sort();
        assert_eq!(again, vec![(a, pos(4)), (b, pos(6))]);
    }

    /// A message store that fails (or refuses) the next `fail` batches of cursors.
    struct Failing {
        inner: MemoryStore,
        fail: std::sync::Mutex<Vec<StoreError>>,
    }

    impl Failing {
        fn new(inner: MemoryStore, fail: Vec<StoreError>) -> Self {
            Self {
                inner,
                fail: std::sync::Mutex::new(fail),
            }
        }
    }

    #[async_trait::async_trait]
    impl MessageStore for Failing {
        async fn append(&self, message: NewMessage) -> StoreResult<Appended> {
            self.inner.append(message).await
        }
        async fn inbox(
            &self,
            device: DeviceAddress,
            after: InboxPos,
            limit: usize,
        ) -> StoreResult<Vec<InboxEntry>> {
            self.inner.inbox(device, after, limit).await
        }
        async fn inbox_head(&self, device: DeviceAddress) -> StoreResult<InboxPos> {
            self.inner.inbox_head(device).await
        }
        async fn trim_inboxes(&self, sent_before: Timestamp, limit: usize) -> StoreResult<u64> {
            self.inner.trim_inboxes(sent_before, limit).await
        }
        async fn inbox_floor(&self, device: DeviceAddress) -> StoreResult<InboxPos> {
            self.inner.inbox_floor(device).await
        }
        async fn ack(&self, device: DeviceAddress, up_to: InboxPos) -> StoreResult<InboxPos> {
            self.inner.ack(device, up_to).await
        }
        async fn ack_all(&self, acks: &[(DeviceAddress, InboxPos)]) -> StoreResult<()> {
            let failure = self.fail.lock().expect("lock").pop();
            match failure {
                Some(err) => Err(err),
                None => self.inner.ack_all(acks).await,
            }
        }
        async fn cursor(&self, device: DeviceAddress) -> StoreResult<InboxPos> {
            self.inner.cursor(device).await
        }
        async fn history(
            &self,
            conversation: ConversationId,
            anchor: MessageId,
            direction: Direction,
            limit: usize,
        ) -> StoreResult<Vec<Envelope>> {
            self.inner
                .history(conversation, anchor, direction, limit)
                .await
        }
        async fn message(
            &self,
            conversation: ConversationId,
            id: MessageId,
        ) -> StoreResult<Option<Envelope>> {
            self.inner.message(conversation, id).await
        }
    }

    #[tokio::test]
    async fn a_backend_failure_keeps_the_batch_and_marks_the_store_unhealthy() {
        let memory = MemoryStore::new();
        let (_, devices) = user_with_devices(&memory, 1).await;
        let a = devices[0];
        let unavailable = StoreError::backend(std::io::Error::other("disk full"));
        let store = Failing::new(memory, vec![unavailable]);
        let (cursors, health) = (Cursors::default(), StoreHealth::default());
        cursors.record(a, pos(4));
        cursors.flush_logged(&store, &health).await;
        assert!(health.failed_within(Duration::from_secs(60)), "reported");
        assert_eq!(store.cursor(a).await.expect("cursor"), pos(0));
        cursors.record(a, pos(2));
        cursors.flush_logged(&store, &health).await;
        assert_eq!(
            store.cursor(a).await.expect("cursor"),
            pos(4),
            "kept, then stored"
        );
    }

    #[tokio::test]
    async fn a_refused_batch_is_dropped_and_does_not_block_the_next() {
        let memory = MemoryStore::new();
        let (_, devices) = user_with_devices(&memory, 2).await;
        let (a, b) = (devices[0], devices[1]);
        let store = Failing::new(memory, vec![StoreError::Invalid("refused")]);
        let (cursors, health) = (Cursors::default(), StoreHealth::default());
        cursors.record(a, pos(4));
        cursors.flush_logged(&store, &health).await;
        assert!(
            !health.failed_within(Duration::from_secs(60)),
            "not a backend failure"
        );
        cursors.record(b, pos(1));
        assert_eq!(cursors.flush(&store).await.expect("flush"), 1, "only b's");
        assert_eq!(store.cursor(a).await.expect("cursor"), pos(0));
        assert_eq!(store.cursor(b).await.expect("cursor"), pos(1));
    }

    fn address(user: u64, device: u64) -> DeviceAddress {
        DeviceAddress {
            user: chat_core::UserId::new(user).expect("id"),
            device: chat_core::DeviceId::new(device).expect("id"),
        }
    }
}
