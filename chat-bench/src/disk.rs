//! `disk-floor`: what this machine's disk gives a durable commit, with no node and no
//! SQLite. The one-to-one tail of a node with `durability = fsync` is a commit's WAL write
//! and fsync, plus whatever the disk is busy with meanwhile: above all the checkpoints,
//! which copy the pages the commits changed into the database file, at random places, and
//! fsync it. This workload writes the same pattern to two plain files in `--dir`: commits
//! (`--commit-kib` appended sequentially to a log that wraps at 4 MiB, each followed by
//! `fsync`, `--commits` a second) first alone, then beside a checkpoint-like stream for
//! each `--checkpoint-every` spacing: after each checkpoint a pause of that spacing, then
//! the pages owed since the last one (`--checkpoint-pages` a second), 4 KiB each, at random
//! places in a `--span-mib` file, in ascending order as SQLite writes them, and an `fsync`.
//! It reports each commit's write-and-fsync time: the floor under the node's commit
//! latency at that write pattern, whatever the code above the disk does.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::stats::{Rng, quantile};
use crate::workloads::report;

/// A database page, and the unit of the checkpoint-like writes.
const PAGE: usize = 4096;
/// Where the commit log wraps, like a WAL brought back to its start.
const LOG_BYTES: u64 = 4 << 20;

/// What to write (the `disk-floor` options); see the module docs. The defaults are what a
/// node wrote at one-to-one 2,000 msg/s (`disk_write_bytes_per_delivery_by_thread`;
/// docs/BENCHMARKS.md).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Pattern {
    /// Where to write (the node's store directory, for its disk).
    #[arg(long, value_name = "PATH")]
    pub(crate) dir: PathBuf,
    /// Bytes each commit appends and fsyncs, in KiB.
    #[arg(long, value_name = "KIB", default_value_t = 44)]
    pub(crate) commit_kib: usize,
    /// Commits per second.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub(crate) commits: u64,
    /// Pages the checkpoints write per second.
    #[arg(long, value_name = "N", default_value_t = 7000)]
    pub(crate) checkpoint_pages: u64,
    /// Pauses between checkpoints, a run each (comma-separated).
    #[arg(long, value_name = "LIST", value_delimiter = ',', value_parser = crate::parse_duration, default_value = "0ms,1ms,5ms,25ms,100ms")]
    pub(crate) checkpoint_every: Vec<Duration>,
    /// The database file's size, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 16)]
    pub(crate) span_mib: u64,
    /// How long each run lasts (with a unit).
    #[arg(long, default_value = "10s", value_parser = crate::parse_duration)]
    pub(crate) duration: Duration,
}

/// One configuration's result.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Run {
    /// `None` for commits alone.
    pub(crate) spacing: Option<Duration>,
    pub(crate) commits: usize,
    /// Commit write-and-fsync times, in ms: p50, p99, max.
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
    pub(crate) checkpoints: u64,
    pub(crate) pages: u64,
}

/// Runs `disk-floor` and prints its report.
pub(crate) fn run_and_report(pattern: &Pattern) -> std::io::Result<()> {
    let runs = run(pattern)?;
    let results: Vec<Value> = runs.iter().map(Run::to_json).collect();
    report(
        "disk-floor",
        &json!({
            "commit_kib": pattern.commit_kib,
            "commits_per_s": pattern.commits,
            "checkpoint_pages_per_s": pattern.checkpoint_pages,
            "span_mib": pattern.span_mib,
            "seconds_each": pattern.duration.as_secs_f64(),
            "runs": results,
        }),
    );
    Ok(())
}

/// Runs commits alone, then beside checkpoints at each spacing; removes its files after.
pub(crate) fn run(pattern: &Pattern) -> std::io::Result<Vec<Run>> {
    let files = Files::create(&pattern.dir, pattern.span_mib)?;
    let mut runs = vec![measure(pattern, &files, None)?];
    for spacing in &pattern.checkpoint_every {
        runs.push(measure(pattern, &files, Some(*spacing))?);
    }
    Ok(runs)
}

/// The two files, removed on drop.
struct Files {
    log: File,
    db: Arc<File>,
    paths: [PathBuf; 2],
    span_pages: usize,
}

impl Files {
    fn create(dir: &Path, span_mib: u64) -> std::io::Result<Self> {
        let stem = format!("chat-bench-disk-{}", std::process::id());
        let paths = [
            dir.join(format!("{stem}.log")),
            dir.join(format!("{stem}.db")),
        ];
        let open = |path: &Path| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(path)
        };
        let log = open(&paths[0])?;
        let db = open(&paths[1]).inspect_err(|_| {
            let _ = std::fs::remove_file(&paths[0]);
        })?;
        let files = Self {
            log,
            db: Arc::new(db),
            paths,
            span_pages: usize::try_from(span_mib.max(1) << 20).unwrap_or(usize::MAX) / PAGE,
        };
        // Written, not just sized: the measured writes overwrite allocated blocks, as a
        // WAL that has wrapped and a database file's existing pages do.
        let chunk = vec![0u8; 1 << 20];
        for (file, mib) in [(&files.log, LOG_BYTES >> 20), (&*files.db, span_mib.max(1))] {
            for i in 0..mib {
                file.write_all_at(&chunk, i << 20)?;
            }
            file.sync_all()?;
        }
        Ok(files)
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        for path in &self.paths {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn measure(pattern: &Pattern, files: &Files, spacing: Option<Duration>) -> std::io::Result<Run> {
    let stop = Arc::new(AtomicBool::new(false));
    let checkpoints = Arc::new(AtomicU64::new(0));
    let pages = Arc::new(AtomicU64::new(0));
    let checkpointer = spacing.map(|spacing| {
        let (db, stop) = (Arc::clone(&files.db), Arc::clone(&stop));
        let (count, written) = (Arc::clone(&checkpoints), Arc::clone(&pages));
        let (rate, span) = (pattern.checkpoint_pages, files.span_pages);
        std::thread::spawn(move || -> std::io::Result<()> {
            let page = [0x5au8; PAGE];
            let mut random = Rng::new(0x2545_f491_4f6c_dd1d);
            let mut owed = 0.0;
            let mut last = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(spacing);
                let now = Instant::now();
                owed += rate as f64 * now.duration_since(last).as_secs_f64();
                last = now;
                let n = owed as u64;
                owed -= n as f64;
                let mut at: Vec<usize> = (0..n).map(|_| random.below(span)).collect();
                at.sort_unstable();
                for p in &at {
                    db.write_all_at(&page, (p * PAGE) as u64)?;
                }
                db.sync_all()?;
                count.fetch_add(1, Ordering::Relaxed);
                written.fetch_add(n, Ordering::Relaxed);
            }
            Ok(())
        })
    });
    let mut times = Vec::new();
    let result = commit_loop(pattern, &files.log, &mut times);
    stop.store(true, Ordering::Relaxed);
    if let Some(handle) = checkpointer {
        handle
            .join()
            .map_err(|_| std::io::Error::other("the checkpoint thread panicked"))??;
    }
    result?;
    times.sort_unstable();
    let ms = |q: f64| quantile(&times, q).map_or(0.0, |d| d.as_secs_f64() * 1e3);
    Ok(Run {
        spacing,
        commits: times.len(),
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        max_ms: ms(1.0),
        checkpoints: checkpoints.load(Ordering::Relaxed),
        pages: pages.load(Ordering::Relaxed),
    })
}

/// Appends and fsyncs commits at the pattern's rate for its duration, timing each.
fn commit_loop(pattern: &Pattern, log: &File, times: &mut Vec<Duration>) -> std::io::Result<()> {
    let commit = vec![0xa5u8; pattern.commit_kib.max(1) * 1024];
    let len = commit.len() as u64;
    let interval = Duration::from_secs_f64(1.0 / pattern.commits.max(1) as f64);
    let start = Instant::now();
    let mut next = start;
    let mut offset = 0;
    while start.elapsed() < pattern.duration {
        let t = Instant::now();
        log.write_all_at(&commit, offset)?;
        log.sync_all()?;
        times.push(t.elapsed());
        offset = if offset + 2 * len > LOG_BYTES {
            0
        } else {
            offset + len
        };
        next += interval;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    Ok(())
}

impl Run {
    fn to_json(&self) -> Value {
        let round = |v: f64| (v * 1000.0).round() / 1000.0;
        json!({
            "checkpoint_every_ms": self.spacing.map(|s| s.as_secs_f64() * 1e3),
            "commits": self.commits,
            "commit_p50_ms": round(self.p50_ms),
            "commit_p99_ms": round(self.p99_ms),
            "commit_max_ms": round(self.max_ms),
            "checkpoints": self.checkpoints,
            "checkpoint_pages": self.pages,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_run_measures_every_configuration_and_leaves_no_files() {
        let dir = std::env::temp_dir().join(format!("chat-bench-disk-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pattern = Pattern {
            dir: dir.clone(),
            commit_kib: 8,
            commits: 200,
            checkpoint_pages: 2_000,
            checkpoint_every: vec![Duration::ZERO, Duration::from_millis(5)],
            span_mib: 1,
            duration: Duration::from_millis(200),
        };
        let runs = run(&pattern).unwrap();
        assert_eq!(
            runs.iter().map(|r| r.spacing).collect::<Vec<_>>(),
            [None, Some(Duration::ZERO), Some(Duration::from_millis(5))]
        );
        for r in &runs {
            assert!(r.commits > 0, "{r:?}");
            assert!(r.p50_ms <= r.p99_ms && r.p99_ms <= r.max_ms, "{r:?}");
        }
        assert_eq!((runs[0].checkpoints, runs[0].pages), (0, 0));
        assert!(
            runs[1].checkpoints > 0 && runs[1].pages > 0,
            "{:?}",
            runs[1]
        );
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "files removed");
        std::fs::remove_dir(&dir).unwrap();
    }
}
