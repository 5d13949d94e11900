//! Inbox retention (R-SYNC-2): the background task that deletes inbox entries older than
//! `inbox_retention_days`.
//!
//! Every [`PASS_INTERVAL`] (and once at start) a pass computes the cutoff from the wall
//! clock and calls [`MessageStore::trim_inboxes`](chat_core::MessageStore::trim_inboxes)
//! in batches of [`BATCH`] until one comes back short, yielding between batches. Each batch
//! is its own short transaction, so no pass holds a long one, and appends interleave with
//! it. With several nodes, each runs its own task; the store keeps concurrent trims exact.
//!
//! The task holds the store and the shutdown signal, never `Shared`, so it cannot delay
//! shutdown; it stops between batches once the shutdown starts. Retention off (0 days)
//! starts no task.

use std::sync::Arc;
use std::time::Duration;

use chat_core::{Store, StoreResult, Timestamp};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use crate::config::Config;
use crate::state::now;

/// How often a pass runs.
pub(crate) const PASS_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// Entries deleted per store call (one transaction).
pub(crate) const BATCH: usize = 1_000;

/// Starts the retention task, or nothing when retention is off.
pub(crate) fn spawn(
    config: &Config,
    store: Arc<dyn Store>,
    shutdown: watch::Receiver<bool>,
) -> Option<JoinHandle<()>> {
    let retention = config.inbox_retention()?;
    Some(tokio::spawn(run(store, retention, shutdown)))
}

async fn run(store: Arc<dyn Store>, retention: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut passes = tokio::time::interval(PASS_INTERVAL);
    // A pass that took long (a large backlog of old entries) is not followed by a burst.
    passes.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let retention_ms = u64::try_from(retention.as_millis()).unwrap_or(u64::MAX);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.wait_for(|down| *down) => return,
            _ = passes.tick() => {}
        }
        let cutoff = Timestamp::from_millis(now().as_millis().saturating_sub(retention_ms));
        match pass(&*store, cutoff, BATCH, &shutdown).await {
            Ok(0) => {}
            Ok(trimmed) => tracing::info!(trimmed, "inbox retention pass"),
            Err(err) => tracing::warn!(cause = %err, "inbox retention pass failed"),
        }
    }
}

/// One pass: trims entries stored before `cutoff`, `batch` per call, until a call deletes
/// fewer than `batch` or the shutdown starts. Returns how many it deleted.
pub(crate) async fn pass(
    store: &dyn Store,
    cutoff: Timestamp,
    batch: usize,
    shutdown: &watch::Receiver<bool>,
) -> StoreResult<u64> {
    let mut total = 0;
    loop {
        let trimmed = store.trim_inboxes(cutoff, batch).await?;
        metrics::counter!("chat_inbox_trimmed_total").increment(trimmed);
        total += trimmed;
        if trimmed < batch as u64 || *shutdown.borrow() {
            return Ok(total);
        }
        // Let connections and appends run between batches.
        tokio::task::yield_now().await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use chat_core::{ConversationId, DeviceAddress, InboxPos};
    use chat_storage::testing::{message, user_with_devices};

    /// A store with a direct conversation from `sender` to `reader`.
    async fn pair() -> (Arc<dyn Store>, ConversationId, DeviceAddress, DeviceAddress) {
        let store: Arc<dyn Store> = Arc::new(chat_storage::MemoryStore::new());
        let (a, from) = user_with_devices(&*store, 1).await;
        let (b, to) = user_with_devices(&*store, 1).await;
        let conv = store.open_direct(a, b, now()).await.unwrap();
        (store, conv.id, from[0], to[0])
    }

    async fn append_at(
        store: &dyn Store,
        conv: ConversationId,
        from: DeviceAddress,
        to: DeviceAddress,
        at: Timestamp,
    ) {
        let mut msg = message(conv, from, &[to]);
        msg.sent_at = at;
        store.append(msg).await.unwrap();
    }

    #[tokio::test]
    async fn zero_days_starts_no_task() {
        let (store, ..) = pair().await;
        let (_tx, rx) = watch::channel(false);
        assert!(spawn(&Config::default(), store.clone(), rx.clone()).is_none());
        let on = Config {
            inbox_retention_days: 30,
            ..Config::default()
        };
        let task = spawn(&on, store, rx).expect("a task");
        task.abort();
    }

    #[tokio::test]
    async fn a_pass_trims_in_batches_until_one_is_short() {
        let (store, conv, from, to) = pair().await;
        for ms in 1..=5 {
            append_at(&*store, conv, from, to, Timestamp::from_millis(ms)).await;
        }
        append_at(&*store, conv, from, to, Timestamp::from_millis(100)).await;
        let (tx, rx) = watch::channel(false);
        let cutoff = Timestamp::from_millis(50);
        assert_eq!(pass(&*store, cutoff, 2, &rx).await.unwrap(), 5);
        assert_eq!(
            store.inbox_floor(to).await.unwrap(),
            InboxPos::new(5).unwrap()
        );
        assert_eq!(store.inbox(to, InboxPos::ZERO, 10).await.unwrap().len(), 1);

        // Once the shutdown has started, a pass stops after the batch in progress.
        for ms in 1..=5 {
            append_at(&*store, conv, from, to, Timestamp::from_millis(ms)).await;
        }
        tx.send(true).unwrap();
        assert_eq!(pass(&*store, cutoff, 2, &rx).await.unwrap(), 2);
    }

    /// The task's first pass runs at start, trims what is past retention, keeps the rest,
    /// and the task ends when the shutdown starts. Time is tokio's paused clock.
    #[tokio::test(start_paused = true)]
    async fn the_task_trims_old_entries_and_stops_at_shutdown() {
        let (store, conv, from, to) = pair().await;
        let old = Timestamp::from_millis(1);
        let fresh = now();
        append_at(&*store, conv, from, to, old).await;
        append_at(&*store, conv, from, to, fresh).await;
        let (tx, rx) = watch::channel(false);
        let config = Config {
            inbox_retention_days: 1,
            ..Config::default()
        };
        let task = spawn(&config, store.clone(), rx).expect("a task");
        // The paused clock moves only once every task is idle: the first pass is done.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            store.inbox_floor(to).await.unwrap(),
            InboxPos::new(1).unwrap()
        );
        let left = store.inbox(to, InboxPos::ZERO, 10).await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].envelope.sent_at, fresh);
        tx.send(true).unwrap();
        task.await.unwrap();
    }
}
