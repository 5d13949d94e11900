//! The writer thread and group commit.
//!
//! One thread owns the only write connection. It takes the first queued request, opens a
//! transaction, runs that request and every request that arrived meanwhile (up to a batch
//! limit), each inside its own SAVEPOINT, then commits once: one WAL fsync for the whole
//! batch. A request that fails is rolled back to its savepoint without touching the others.
//! Every caller is answered only after the commit, so an acknowledged write is durable; if
//! the commit fails, every request of the batch gets the error (none of them happened).

use std::sync::atomic::{AtomicU64, Ordering};

use chat_core::{StoreError, StoreResult};
use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use crate::common::failure;

/// A queued write, type-erased so requests of any result type share one queue.
pub(crate) type Job = Box<dyn PendingWrite>;

/// A write waiting in the queue or in the current batch.
pub(crate) trait PendingWrite: Send {
    /// Runs the operation inside the open transaction; returns whether it succeeded.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Answers the caller once the batch's fate is known.
    fn finish(self: Box<Self>, committed: Result<(), &str>);
}

/// A write operation and the channel to answer on.
pub(crate) struct Pending<T, F> {
    op: Option<F>,
    result: Option<StoreResult<T>>,
    reply: oneshot::Sender<StoreResult<T>>,
}

impl<T, F> Pending<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
{
    /// A job for `op` and the receiver its answer arrives on.
    pub(crate) fn job(op: F) -> (Job, oneshot::Receiver<StoreResult<T>>) {
        let (reply, rx) = oneshot::channel();
        (
            Box::new(Self {
                op: Some(op),
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
    F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let result = match self.op.take() {
            Some(op) => op(conn),
            None => Err(failure("write ran twice")),
        };
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
    pub(crate) writes: AtomicU64,
}

/// Runs the writer loop until every sender is dropped, then closes the connection.
pub(crate) fn run(
    conn: Connection,
    mut queue: mpsc::Receiver<Job>,
    max_batch: usize,
    counters: &Counters,
) {
    while let Some(first) = queue.blocking_recv() {
        let mut batch = vec![first];
        if let Err(e) = exec_cached(&conn, "BEGIN IMMEDIATE") {
            tracing::error!(cause = %e, "store write transaction failed to start");
            batch.into_iter().for_each(|job| job.finish(Err(&e)));
            continue;
        }
        let mut broken = None;
        let mut next = 0;
        while let Some(job) = batch.get_mut(next) {
            if let Err(e) = run_one(&conn, job.as_mut()) {
                broken = Some(e);
                break;
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
        let outcome = match broken {
            Some(why) => Err(why),
            None => exec_cached(&conn, "COMMIT"),
        };
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
    }
}

/// Runs one job inside its own savepoint. An error from the job itself is the job's; an
/// error here means the transaction is no longer usable and the whole batch fails.
fn run_one(conn: &Connection, job: &mut dyn PendingWrite) -> Result<(), String> {
    exec_cached(conn, "SAVEPOINT request")?;
    let ok = job.run(conn);
    if conn.is_autocommit() {
        // SQLite rolled the whole transaction back (I/O error, disk full): the earlier
        // requests of the batch are gone too.
        return Err("transaction rolled back by SQLite".into());
    }
    if !ok {
        exec_cached(conn, "ROLLBACK TO request")?;
    }
    exec_cached(conn, "RELEASE request")
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

    /// Requests queued while the writer is busy share one commit, and a failing request in
    /// the middle of a batch does not undo the others.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queued_writes_share_a_commit_and_failures_stay_isolated() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY)")
            .unwrap();
        let (tx, rx) = mpsc::channel(1024);
        let counters = std::sync::Arc::new(Counters::default());
        let thread_counters = std::sync::Arc::clone(&counters);
        let writer = std::thread::spawn(move || run(conn, rx, 1024, &thread_counters));

        // The first job holds the writer until every other request is queued.
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let (job, first) = Pending::job(move |_| wait.recv().map_err(StoreError::backend));
        tx.send(job).await.unwrap();
        let mut replies = Vec::new();
        for k in 0..100i64 {
            let (job, reply) = Pending::job(move |c: &Connection| {
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
            if k == 50 {
                assert!(matches!(result, Err(StoreError::Invalid(_))));
            } else {
                assert_eq!(result.unwrap(), k as i64);
            }
        }
        let (job, count) = Pending::job(|c: &Connection| {
            c.query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0))
                .map_err(StoreError::backend)
        });
        tx.send(job).await.unwrap();
        assert_eq!(count.await.unwrap().unwrap(), 99);
        drop(tx);
        writer.join().unwrap();
        // The holder's batch took all 100 queued writes with it: 2 commits for the first
        // 101 requests, 1 for the count.
        assert_eq!(counters.writes.load(Ordering::Relaxed), 102);
        assert!(counters.commits.load(Ordering::Relaxed) <= 3);
    }
}
