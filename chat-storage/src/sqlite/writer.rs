//! The writer thread and group commit.
//!
//! One thread owns the only write connection. It takes the first queued request, opens a
//! transaction, runs that request and every request that arrived meanwhile (up to a batch
//! limit), then commits once: one WAL fsync for the whole batch. Every caller is answered
//! only after the commit, so an acknowledged write is durable; if the commit fails, every
//! request of the batch gets the error (none of them happened).
//!
//! Requests run without a savepoint of their own: every operation makes its checks before
//! its first write, so a refused request has written nothing and the others need no
//! protection from it. Whether a request wrote is read from SQLite's change counter
//! (`sqlite3_total_changes`, which counts only rows of statements that completed; a
//! statement that fails is undone by SQLite as a whole). A request that fails *after* it
//! wrote (a constraint error, say; rare) makes the writer roll the whole transaction back
//! and run the batch again from its first request, this time each request inside its own
//! SAVEPOINT, so the failed one is undone alone and every other request gets the answer
//! of the run that is committed. Nothing was acknowledged before the commit, so nothing
//! acknowledged is lost.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use chat_core::{StoreError, StoreResult};
use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use crate::common::failure;

/// A queued write, type-erased so requests of any result type share one queue.
pub(crate) type Job = Box<dyn PendingWrite>;

/// A write waiting in the queue or in the current batch.
pub(crate) trait PendingWrite: Send {
    /// Runs the operation inside the open transaction, replacing the result of an earlier
    /// run (a batch that was rolled back runs again); returns whether it succeeded.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Answers the caller once the batch's fate is known.
    fn finish(self: Box<Self>, committed: Result<(), &str>);
}

/// A write operation and the channel to answer on.
pub(crate) struct Pending<T, F> {
    op: F,
    result: Option<StoreResult<T>>,
    reply: oneshot::Sender<StoreResult<T>>,
}

impl<T, F> Pending<T, F>
where
    T: Send + 'static,
    F: FnMut(&Connection) -> StoreResult<T> + Send + 'static,
{
    /// A job for `op` and the receiver its answer arrives on. `op` may run more than once
    /// (only the run that is committed counts), so it must not consume what it captures.
    pub(crate) fn job(op: F) -> (Job, oneshot::Receiver<StoreResult<T>>) {
        let (reply, rx) = oneshot::channel();
        (
            Box::new(Self {
                op,
                result: None,
                reply,
            }),
            rx,
        )
    }
}

impl<T, F> PendingWrite for Pending<T, F>
where
    T: Send + 'static,
    F: FnMut(&Connection) -> StoreResult<T> + Send + 'static,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let result = (self.op)(conn);
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn finish(self: Box<Self>, committed: Result<(), &str>) {
        let result = match (committed, self.result) {
            (_, Some(Err(e))) => Err(e),
            (Ok(()), Some(Ok(value))) => Ok(value),
            (Err(why), Some(Ok(_))) => Err(failure(format!("commit failed: {why}"))),
            (Err(why), None) => Err(failure(format!("batch failed before this write: {why}"))),
            (Ok(()), None) => Err(failure("write was not run")),
        };
        // The caller may have gone away; the write stands either way.
        let _ = self.reply.send(result);
    }
}

/// What the writer has done since it started, for metrics, tests and the benchmark.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) commits: AtomicU64,
    /// Checkpoints run by the checkpointer thread.
    pub(crate) checkpoints: AtomicU64,
    /// Checkpoints that restarted the WAL because it had passed its bound.
    pub(crate) wal_restarts: AtomicU64,
    /// Microseconds the writer spent in those checkpoints (new writes waited), in all and
    /// the longest.
    pub(crate) wal_restart_micros: AtomicU64,
    pub(crate) wal_restart_max_micros: AtomicU64,
    /// Set by the checkpointer when the WAL has passed its bound: the writer restarts it
    /// after its current transaction.
    pub(crate) restart_wanted: AtomicBool,
    /// Woken after every checkpoint (for tests waiting on one).
    pub(crate) checkpointed: tokio::sync::Notify,
    pub(crate) writes: AtomicU64,
    pub(crate) reruns: AtomicU64,
}

/// Runs the writer loop until every sender is dropped, then closes the connection. After
/// each commit, once its callers are answered, the checkpointer is woken through
/// `checkpointer` (never blocking: a full channel means a wake-up is already waiting).
pub(crate) fn run(
    conn: Connection,
    mut queue: mpsc::Receiver<Job>,
    max_batch: usize,
    counters: &Counters,
    checkpointer: &std::sync::mpsc::SyncSender<()>,
) {
    while let Some(first) = queue.blocking_recv() {
        let mut batch = vec![first];
        let outcome = run_batch(&conn, &mut batch, &mut queue, max_batch, counters);
        if let Err(why) = &outcome {
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            tracing::error!(cause = %why, batch = batch.len(), "store group commit failed");
        } else {
            counters.commits.fetch_add(1, Ordering::Relaxed);
            counters
                .writes
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
        }
        let committed = outcome.as_ref().map(|_| ()).map_err(String::as_str);
        batch.into_iter().for_each(|job| job.finish(committed));
        if outcome.is_ok() {
            let _ = checkpointer.try_send(());
        }
        if counters.restart_wanted.swap(false, Ordering::Relaxed) {
            restart_wal(&conn, counters);
        }
    }
}

/// Brings the WAL back to its start once the checkpointer found it past its bound (see the
/// checkpointer's module docs). Run here, between two transactions, because a `RESTART`
/// checkpoint needs the write lock, which this thread holds almost all the time under
/// load: from the checkpointer's thread it waited seconds for a gap, and copied all that
/// had come in meanwhile while holding it. Here it gets the lock at once and copies only
/// what the last passive checkpoint left; new writes wait that long, and for the readers
/// still on the WAL to finish.
fn restart_wal(conn: &Connection, counters: &Counters) {
    let started = std::time::Instant::now();
    let result = conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| r.get::<_, i64>(0));
    let held = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    counters
        .wal_restart_micros
        .fetch_add(held, Ordering::Relaxed);
    counters
        .wal_restart_max_micros
        .fetch_max(held, Ordering::Relaxed);
    match result {
        Ok(0) => {
            counters.wal_restarts.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(held_us = held, "WAL brought back to its start");
        }
        // A reader outlasted the busy timeout: asked again after the next passive one.
        Ok(_) => tracing::warn!("WAL past its bound and readers still on it; will try again"),
        Err(err) => tracing::warn!(cause = %err, "restarting the WAL failed"),
    }
}

/// Runs `batch`, and whatever queues up meanwhile, in one transaction and commits it. An
/// error means the transaction cannot commit: none of the batch happened.
fn run_batch(
    conn: &Connection,
    batch: &mut Vec<Job>,
    queue: &mut mpsc::Receiver<Job>,
    max_batch: usize,
    counters: &Counters,
) -> Result<(), String> {
    exec_cached(conn, "BEGIN IMMEDIATE")?;
    let mut isolated = false;
    let mut next = 0;
    while let Some(job) = batch.get_mut(next) {
        if isolated {
            run_isolated(conn, job.as_mut())?;
        } else if !run_bare(conn, job.as_mut())? {
            // This request failed after writing: undo everything and run the batch again,
            // each request in its own savepoint.
            tracing::warn!(
                batch = batch.len(),
                "store request failed after writing; rerunning its batch"
            );
            counters.reruns.fetch_add(1, Ordering::Relaxed);
            exec_cached(conn, "ROLLBACK")?;
            exec_cached(conn, "BEGIN IMMEDIATE")?;
            isolated = true;
            next = 0;
            continue;
        }
        next += 1;
        // Take whatever queued up meanwhile into this transaction.
        if next == batch.len()
            && batch.len() < max_batch
            && let Ok(job) = queue.try_recv()
        {
            batch.push(job);
        }
    }
    // The commit's WAL writes and (with `synchronous=FULL`) its fsync.
    let started = std::time::Instant::now();
    exec_cached(conn, "COMMIT")?;
    metrics::histogram!(crate::COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
    Ok(())
}

/// Runs one job without a savepoint. `Ok(false)` when it failed after writing, so the
/// transaction holds part of it; an error means the transaction is no longer usable.
fn run_bare(conn: &Connection, job: &mut dyn PendingWrite) -> Result<bool, String> {
    let before = conn.total_changes();
    let ok = job.run(conn);
    check_open(conn)?;
    Ok(ok || conn.total_changes() == before)
}

/// Runs one job inside its own savepoint, rolled back if the job fails. An error means the
/// transaction is no longer usable.
fn run_isolated(conn: &Connection, job: &mut dyn PendingWrite) -> Result<(), String> {
    exec_cached(conn, "SAVEPOINT request")?;
    let ok = job.run(conn);
    check_open(conn)?;
    if !ok {
        exec_cached(conn, "ROLLBACK TO request")?;
    }
    exec_cached(conn, "RELEASE request")
}

/// Fails when SQLite rolled the whole transaction back (I/O error, disk full): the earlier
/// requests of the batch are gone too.
fn check_open(conn: &Connection) -> Result<(), String> {
    if conn.is_autocommit() {
        Err("transaction rolled back by SQLite".into())
    } else {
        Ok(())
    }
}

/// Runs a parameterless statement through the statement cache (parsed once, not per
/// request).
fn exec_cached(conn: &Connection, sql: &str) -> Result<(), String> {
    conn.prepare_cached(sql)
        .and_then(|mut s| s.execute([]))
        .map(drop)
        .map_err(|e| e.to_string())
}

/// The error for a caller whose write never got an answer (the writer thread stopped).
pub(crate) fn writer_gone() -> StoreError {
    failure("store writer thread stopped")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// Requests queued while the writer is busy share one commit; a request refused before
    /// writing costs nothing, and one that fails after writing makes the batch run again
    /// with savepoints: its rows go, every other request's stay.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queued_writes_share_a_commit_and_failures_stay_isolated() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY)")
            .unwrap();
        let (tx, rx) = mpsc::channel(1024);
        let counters = std::sync::Arc::new(Counters::default());
        let thread_counters = std::sync::Arc::clone(&counters);
        // No checkpointer here: its wake-ups go nowhere (a dropped receiver is ignored).
        let (checkpointer, _) = std::sync::mpsc::sync_channel(1);
        let writer =
            std::thread::spawn(move || run(conn, rx, 1024, &thread_counters, &checkpointer));

        // The first job holds the writer until every other request is queued (only on its
        // first run: the batch runs again after request 50 fails).
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let mut held = false;
        let (job, first) = Pending::job(move |_| {
            if !held {
                held = true;
                wait.recv().map_err(StoreError::backend)?;
            }
            Ok(())
        });
        tx.send(job).await.unwrap();
        let mut replies = Vec::new();
        for k in 0..100i64 {
            let (job, reply) = Pending::job(move |c: &Connection| {
                if k == 60 {
                    // Refused before writing: nothing to undo.
                    return Err(StoreError::NotMember);
                }
                c.execute("INSERT INTO t (k) VALUES (?1)", [k])
                    .map_err(StoreError::backend)?;
                if k == 50 {
                    // Writes, then fails: its row must go, the others must stay.
                    return Err(StoreError::Invalid("refused after writing"));
                }
                Ok(k)
            });
            tx.send(job).await.unwrap();
            replies.push(reply);
        }
        release.send(()).unwrap();
        first.await.unwrap().unwrap();
        for (k, reply) in replies.into_iter().enumerate() {
            let result = reply.await.unwrap();
            match k {
                50 => assert!(matches!(result, Err(StoreError::Invalid(_)))),
                60 => assert!(matches!(result, Err(StoreError::NotMember))),
                _ => assert_eq!(result.unwrap(), k as i64),
            }
        }
        let (job, count) = Pending::job(|c: &Connection| {
            c.query_row("SELECT count(*) FROM t WHERE k NOT IN (50, 60)", [], |r| {
                r.get::<_, i64>(0)
            })
            .and_then(|n| {
                c.query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0))
                    .map(|all| (n, all))
            })
            .map_err(StoreError::backend)
        });
        tx.send(job).await.unwrap();
        assert_eq!(count.await.unwrap().unwrap(), (98, 98));
        drop(tx);
        writer.join().unwrap();
        // The holder's batch took all 100 queued writes with it: 2 commits for the first
        // 101 requests, 1 for the count; one rerun, for request 50 only.
        assert_eq!(counters.writes.load(Ordering::Relaxed), 102);
        assert!(counters.commits.load(Ordering::Relaxed) <= 3);
        assert_eq!(counters.reruns.load(Ordering::Relaxed), 1);
    }
}
