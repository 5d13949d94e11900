//! The writer thread and group commit.
//!
//! One thread owns the only write connection. It takes the first queued request, opens a
//! transaction, runs that request and every request that arrived meanwhile (up to a batch
//! limit), each inside its own SAVEPOINT, then commits once: one WAL fsync for the whole
//! batch. A request that fails is rolled back to its savepoint without touching the others.
//! Every caller is answered only after the commit, so an acknowledged write is durable; if
//! the commit fails, every request of the batch gets the error (none of them happened).

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

/// Runs the writer loop until every sender is dropped, then closes the connection.
pub(crate) fn run(conn: Connection, mut queue: mpsc::Receiver<Job>, max_batch: usize) {
    while let Some(first) = queue.blocking_recv() {
        let mut batch = vec![first];
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            let why = e.to_string();
            tracing::error!(cause = %why, "store write transaction failed to start");
            batch.into_iter().for_each(|job| job.finish(Err(&why)));
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
            if next == batch.len()
                && batch.len() < max_batch
                && let Ok(job) = queue.try_recv()
            {
                batch.push(job);
            }
        }
        let outcome = match broken {
            Some(why) => {
                let _ = conn.execute_batch("ROLLBACK");
                Err(why)
            }
            None => conn.execute_batch("COMMIT").map_err(|e| {
                let _ = conn.execute_batch("ROLLBACK");
                e.to_string()
            }),
        };
        if let Err(why) = &outcome {
            tracing::error!(cause = %why, batch = batch.len(), "store group commit failed");
        }
        let committed = outcome.as_ref().map(|_| ()).map_err(String::as_str);
        batch.into_iter().for_each(|job| job.finish(committed));
    }
}

/// Runs one job inside its own savepoint. An error from the job itself is the job's; an
/// error here means the transaction is no longer usable and the whole batch fails.
fn run_one(conn: &Connection, job: &mut dyn PendingWrite) -> Result<(), String> {
    conn.execute_batch("SAVEPOINT request")
        .map_err(|e| e.to_string())?;
    let ok = job.run(conn);
    if conn.is_autocommit() {
        // SQLite rolled the whole transaction back (I/O error, disk full): the earlier
        // requests of the batch are gone too.
        return Err("transaction rolled back by SQLite".into());
    }
    let end = if ok {
        "RELEASE request"
    } else {
        "ROLLBACK TO request; RELEASE request"
    };
    conn.execute_batch(end).map_err(|e| e.to_string())
}

/// The error for a caller whose write never got an answer (the writer thread stopped).
pub(crate) fn writer_gone() -> StoreError {
    failure("store writer thread stopped")
}
