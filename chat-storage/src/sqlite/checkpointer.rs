//! The checkpointer: copies committed WAL frames into the database file on a thread of its
//! own, so the writer never stalls on a checkpoint, and keeps the WAL's size bounded.
//!
//! SQLite's default runs a checkpoint inside the commit that takes the WAL past 1,000 pages,
//! on the committing connection: every few thousand appends, one group commit (and every
//! send waiting on it) also paid for writing those pages to the database file and syncing
//! it. The writer connection now runs with `wal_autocheckpoint = 0`, and this thread, with
//! its own connection, runs a `PASSIVE` checkpoint (which never blocks the writer or
//! readers) every [`INTERVAL`] while commits happen.
//!
//! Copying the frames is not enough to bound the file. SQLite writes the WAL from its start
//! again only when a write begins at a moment when every frame has been copied *and* no
//! reader is still using a snapshot that includes WAL frames. Under steady load that moment
//! never comes: commits arrive faster than the checkpoints, and the readers are always busy.
//! Measured through chat-server at 2,000 messages/s, the WAL grew by 50 MB a second and was
//! 1 GB after 20 s, every frame of it copied. So once the WAL's length passes its bound
//! ([`SqliteOptions::max_wal_bytes`](super::SqliteOptions::max_wal_bytes), default 64 MiB),
//! the checkpointer follows its passive checkpoint with a `RESTART` checkpoint: it copies
//! the few frames committed since, waits (up to the busy timeout) until every reader has
//! moved past the log, and holds new writes meanwhile. The next commit then writes from the
//! start of the file, and the writer's `journal_size_limit` cuts the file back to the
//! bound. The hold is short (the passive checkpoint just copied almost everything, and reads
//! take milliseconds) and comes once per bound's worth of WAL.
//!
//! The same checkpoint bounds the other way the WAL grows: a passive checkpoint cannot copy
//! frames that a long read still needs.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use rusqlite::Connection;

use super::writer::Counters;

/// How often the checkpointer looks for new commits.
pub(crate) const INTERVAL: Duration = Duration::from_millis(100);

/// Runs checkpoints until `stop`'s sender is dropped (the store is gone), then a last one.
/// A WAL longer than `max_frames` is restarted.
pub(crate) fn run(conn: Connection, max_frames: i64, counters: Arc<Counters>, stop: Receiver<()>) {
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
            Ok(wal) if wal.frames > max_frames => match checkpoint(&conn, "RESTART") {
                Ok(wal) if !wal.busy => {
                    counters.wal_restarts.fetch_add(1, Ordering::Relaxed);
                }
                // A reader outlasted the busy timeout: tried again after the next commits.
                Ok(_) => tracing::warn!(
                    frames = wal.frames,
                    "WAL past its bound and readers still on it; will try again"
                ),
                Err(err) => tracing::warn!(cause = %err, "restarting checkpoint failed"),
            },
            Ok(_) => {}
            Err(err) => tracing::warn!(cause = %err, "checkpoint failed"),
        }
        counters.checkpoints.fetch_add(1, Ordering::Relaxed);
        counters.checkpointed.notify_waiters();
    }
}

/// What a checkpoint reports.
struct Wal {
    /// It could not finish: a reader or the writer was in the way.
    busy: bool,
    /// Frames in the WAL, copied or not.
    frames: i64,
}

/// Runs one checkpoint of `mode`.
fn checkpoint(conn: &Connection, mode: &str) -> rusqlite::Result<Wal> {
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
        Ok(Wal {
            busy: r.get::<_, i64>(0)? != 0,
            frames: r.get(1)?,
        })
    })
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
