//! Inbox retention (R-SYNC-2): the background task that deletes inbox entries older than
//! `inbox_retention_days`.
//!
//! Every [`PASS_INTERVAL`] (and once at start) a pass computes the cutoff from the wall
//! clock and calls [`MessageStore::trim_inboxes`](chat_core::MessageStore::trim_inboxes)
//! in batches of [`BATCH`] until one comes back short, yielding between batches. Each batch
//! is its own short transaction, so no pass holds a long one, and appends interleave with
//! it.
//!
//! With several nodes, each runs the task but only the holder of the `inbox-trim` lease
//! ([`PassLease`]: in Redis for a cluster) runs a pass: one pass per cluster at a time. The
//! lease lasts one interval and is renewed between batches, so a long pass keeps it and a
//! dead holder's lease lapses for another node to take at its next tick. Should the lease be
//! unreadable the node trims anyway: the store keeps concurrent trims exact, so that only
//! costs work.
//!
//! The task holds the store and the shutdown signal, never `Shared`, so it cannot delay
//! shutdown; it stops between batches once the shutdown starts. Retention off (0 days)
//! starts no task.

use std::sync::Arc;
use std::time::Duration;

use chat_core::{Store, StoreResult, Timestamp};

use crate::cluster::lease::Leases;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use crate::config::Config;
use crate::state::now;

/// How often a pass runs.
pub(crate) const PASS_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// Entries deleted per store call (one transaction).
pub(crate) const BATCH: usize = 1_000;

/// The name of the lease of the trimming pass.
const LEASE: &str = "inbox-trim";

/// The right to run the cluster's trimming pass, held by one node at a time.
#[derive(Debug, Clone)]
pub(crate) struct PassLease {
    leases: Arc<Leases>,
    /// This node's name as a lease holder.
    holder: String,
}

impl PassLease {
    /// The pass lease in `leases`, asked for as `holder`.
    pub(crate) fn new(leases: Arc<Leases>, holder: String) -> Self {
        Self { leases, holder }
    }

    /// Takes or renews the lease for one interval; false when another node holds it.
    async fn hold(&self) -> bool {
        match self
            .leases
            .acquire(LEASE, &self.holder, PASS_INTERVAL)
            .await
        {
            Ok(held) => held,
            Err(err) => {
                tracing::warn!(cause = %err, "inbox-trim lease unavailable; trimming anyway");
                true
            }
        }
    }
}

/// Starts the retention task, or nothing when retention is off.
pub(crate) fn spawn(
    config: &Config,
    store: Arc<dyn Store>,
    lease: PassLease,
    shutdown: watch::Receiver<bool>,
) -> Option<JoinHandle<()>> {
    let retention = config.inbox_retention()?;
    Some(tokio::spawn(run(store, retention, lease, shutdown)))
}

async fn run(
    store: Arc<dyn Store>,
    retention: Duration,
    lease: PassLease,
    mut shutdown: watch::Receiver<bool>,
) {
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
        if !lease.hold().await {
            continue;
        }
        let cutoff = Timestamp::from_millis(now().as_millis().saturating_sub(retention_ms));
        match pass(&*store, cutoff, BATCH, Some(&lease), &shutdown).await {
            Ok(0) => {}
            Ok(trimmed) => tracing::info!(trimmed, "inbox retention pass"),
            Err(err) => tracing::warn!(cause = %err, "inbox retention pass failed"),
        }
    }
}

/// One pass: trims entries stored before `cutoff`, `batch` per call, until a call deletes
/// fewer than `batch`, the shutdown starts or (renewed between batches) `lease` is lost.
/// Returns how many it deleted.
pub(crate) async fn pass(
    store: &dyn Store,
    cutoff: Timestamp,
    batch: usize,
    lease: Option<&PassLease>,
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
        if let Some(lease) = lease
            && !lease.hold().await
        {
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

    /// The lease of a lone node.
    fn lone() -> PassLease {
        PassLease::new(Arc::new(Leases::local()), "solo".into())
    }

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
        assert!(spawn(&Config::default(), store.clone(), lone(), rx.clone()).is_none());
        let on = Config {
            inbox_retention_days: 30,
            ..Config::default()
        };
        let task = spawn(&on, store, lone(), rx).expect("a task");
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
        assert_eq!(pass(&*store, cutoff, 2, None, &rx).await.unwrap(), 5);
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
        assert_eq!(pass(&*store, cutoff, 2, None, &rx).await.unwrap(), 2);
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
        let task = spawn(&config, store.clone(), lone(), rx).expect("a task");
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

    /// Two nodes: while one holds the lease the other's task runs no pass; once it is
    /// free, the other's next tick trims. Time is tokio's paused clock.
    #[tokio::test(start_paused = true)]
    async fn only_the_lease_holder_trims() {
        let (store, conv, from, to) = pair().await;
        append_at(&*store, conv, from, to, Timestamp::from_millis(1)).await;
        let leases = Arc::new(Leases::local());
        assert!(leases.acquire(LEASE, "a", PASS_INTERVAL).await.unwrap());
        let (tx, rx) = watch::channel(false);
        let config = Config {
            inbox_retention_days: 1,
            ..Config::default()
        };
        let b = PassLease::new(leases.clone(), "b".into());
        let task = spawn(&config, store.clone(), b, rx).expect("a task");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            store.inbox_floor(to).await.unwrap(),
            InboxPos::ZERO,
            "a holds it"
        );
        leases.release(LEASE, "a").await.unwrap();
        tokio::time::sleep(PASS_INTERVAL).await;
        assert_eq!(
            store.inbox_floor(to).await.unwrap(),
            InboxPos::new(1).unwrap(),
            "b's next tick"
        );
        tx.send(true).unwrap();
        task.await.unwrap();
    }
}
