//! The checkpointer: copies committed WAL frames into the database file on a thread of its
//! own, so the writer never stalls on a checkpoint.
//!
//! SQLite's default runs a checkpoint inside the commit that takes the WAL past 1,000 pages,
//! on the committing connection: every few thousand appends, one group commit (and every
//! send waiting on it) also paid for writing those pages to the database file and syncing
//! it. The writer connection now runs with `wal_autocheckpoint = 0`, and this thread, with
//! its own connection, runs a `PASSIVE` checkpoint (which never blocks the writer or
//! readers) every [`INTERVAL`] while commits happen. SQLite restarts the WAL from its start
//! once a checkpoint has copied everything, and the writer's `journal_size_limit` truncates
//! the file then, so the WAL stays small.
//!
//! A passive checkpoint cannot copy frames that a reader still needs; if long reads keep
//! it from catching up and the WAL passes [`MAX_WAL_FRAMES`], the checkpointer runs a
//! `TRUNCATE` checkpoint, which waits (up to the busy timeout) for those readers and holds
//! new writes meanwhile: a rare stall that bounds the WAL's size.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use rusqlite::Connection;

use super::writer::Counters;

/// How often the checkpointer looks for new commits.
pub(crate) const INTERVAL: Duration = Duration::from_millis(100);
/// WAL frames (pages) past which a blocking checkpoint bounds the WAL: 64 MiB of 4 KiB pages.
pub(crate) const MAX_WAL_FRAMES: i64 = 16_384;

/// Runs checkpoints until `stop`'s sender is dropped (the store is gone), then a last one.
pub(crate) fn run(conn: Connection, counters: Arc<Counters>, stop: Receiver<()>) {
    let mut seen = counters.commits.load(Ordering::Relaxed);
    loop {
        match stop.recv_timeout(INTERVAL) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                let _ = checkpoint(&conn, "PASSIVE");
                return;
            }
        }
        let commits = counters.commits.load(Ordering::Relaxed);
        if commits == seen {
            continue;
        }
        seen = commits;
        match checkpoint(&conn, "PASSIVE") {
            Ok(left) if left > MAX_WAL_FRAMES => {
                tracing::warn!(
                    frames = left,
                    "WAL past its bound; checkpointing with a wait"
                );
                if let Err(err) = checkpoint(&conn, "TRUNCATE") {
                    tracing::warn!(cause = %err, "blocking checkpoint failed");
                }
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(cause = %err, "checkpoint failed"),
        }
        counters.checkpoints.fetch_add(1, Ordering::Relaxed);
        counters.checkpointed.notify_waiters();
    }
}

/// Runs one checkpoint of `mode`; returns the WAL frames it could not copy yet.
fn checkpoint(conn: &Connection, mode: &str) -> rusqlite::Result<i64> {
    let (_busy, log, copied): (i64, i64, i64) =
        conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
    Ok((log - copied).max(0))
}

/// Opens the checkpointer's connection to the database at `path`.
pub(crate) fn open(path: &PathBuf, synchronous: &str) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.execute_batch(&format!(
        "PRAGMA synchronous = {synchronous}; PRAGMA busy_timeout = 5000;"
    ))?;
    Ok(conn)
}
