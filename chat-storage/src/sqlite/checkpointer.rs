//! The checkpointer: copies committed WAL frames into the database file on a thread of its
//! own, so the writer never stalls on a checkpoint, and keeps the WAL's size bounded.
//!
//! SQLite's default runs a checkpoint inside the commit that takes the WAL past 1,000 pages,
//! on the committing connection: every few thousand appends, one group commit (and every
//! send waiting on it) also paid for writing those pages to the database file and syncing
//! it. The writer connection now runs with `wal_autocheckpoint = 0`, and this thread, with
//! its own connection, runs a `PASSIVE` checkpoint (which never blocks the writer or
//! readers) after commits, at most once every [`SPACING`].
//!
//! Often and small, because the checkpoint's fsync of the database file is what the
//! writer's commits wait behind: a commit's own WAL fsync issued meanwhile waits for the
//! disk to take the checkpoint's pages first, and smaller checkpoints make shorter waits
//! (measured, with what it costs: docs/STORAGE.md, "Checkpoints").
//!
//! Copying the frames is not enough to bound the file. SQLite writes the WAL from its start
//! again only when a write begins at a moment when every frame has been copied *and* no
//! reader is still using a snapshot that includes WAL frames. Under steady load that moment
//! never comes: commits arrive faster than the checkpoints, and the readers are always busy.
//! Measured through chat-server at 2,000 messages/s, the WAL grew by 50 MB a second and was
//! 1 GB after 20 s, every frame of it copied. So once a passive checkpoint finds the WAL
//! longer than its bound ([`SqliteOptions::max_wal_bytes`](super::SqliteOptions::max_wal_bytes),
//! default 64 MiB), the checkpointer asks the writer thread for a `RESTART` checkpoint, which
//! the writer runs between two transactions (`writer::restart_wal`): it copies what the
//! passive checkpoint left, waits (up to the busy timeout) until every reader has moved past
//! the log, and holds new writes meanwhile. The next commit then writes from the start of the
//! file, and the writer's `journal_size_limit` cuts the file back to the bound. The hold is
//! short (the passive checkpoint has just copied nearly everything, and reads take
//! milliseconds) and comes once per bound's worth of WAL. Run from this thread instead, the
//! `RESTART` had to wait for a moment the writer was between transactions, seconds under
//! heavy load, and then copied everything written meanwhile with writes held.
//!
//! The same checkpoint bounds the other way the WAL grows: a passive checkpoint cannot copy
//! frames that a long read still needs.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::time::Duration;

use rusqlite::Connection;

use super::writer::Counters;

/// The least time between two checkpoints: under load, each copies what the commits of
/// about this long wrote.
pub(crate) const SPACING: Duration = Duration::from_millis(5);

/// Runs a checkpoint after commits (the writer sends on `commits` after each; at most one
/// wake-up waits), at most one every [`SPACING`], until the writer has ended and dropped
/// its sender, then a last one. A WAL longer than `max_frames` is restarted.
pub(crate) fn run(
    conn: Connection,
    max_frames: i64,
    counters: Arc<Counters>,
    commits: Receiver<()>,
) {
    while commits.recv().is_ok() {
        let started = std::time::Instant::now();
        let result = checkpoint(&conn);
        metrics::histogram!(crate::CHECKPOINT_SECONDS).record(started.elapsed().as_secs_f64());
        match result {
            Ok(frames) if frames > max_frames => {
                counters.restart_wanted.store(true, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(cause = %err, "checkpoint failed"),
        }
        counters.checkpoints.fetch_add(1, Ordering::Relaxed);
        counters.checkpointed.notify_waiters();
        // Commits meanwhile leave their wake-up queued: the next checkpoint follows at once.
        std::thread::sleep(SPACING);
    }
    let _ = checkpoint(&conn);
}

/// Runs one passive checkpoint; returns the frames in the WAL, copied or not.
fn checkpoint(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))
}

/// `bytes` of WAL in frames of the database's page size.
pub(crate) fn frames(conn: &Connection, bytes: u64) -> rusqlite::Result<i64> {
    let page: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    Ok(i64::try_from(bytes).unwrap_or(i64::MAX) / page.max(512))
}

/// Opens the checkpointer's connection to the database at `path`.
pub(crate) fn open(path: &PathBuf, synchronous: &str) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.execute_batch(&format!(
        "PRAGMA synchronous = {synchronous}; PRAGMA busy_timeout = 5000;"
    ))?;
    Ok(conn)
}
