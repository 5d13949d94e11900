//! The server's CPU time and memory, read from /proc when its PID is given.

/// A sample of a process's resource use.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Sample {
    /// User plus system CPU time, in microseconds.
    pub(crate) cpu_us: u64,
    /// Resident set size, in KiB.
    pub(crate) rss_kib: u64,
}

/// Linux reports CPU times in USER_HZ ticks, which is 100 on every architecture's ABI.
const TICK_US: u64 = 10_000;

/// Reads `/proc/PID/stat` and `/proc/PID/status`; `None` if the process is not there.
pub(crate) fn sample(pid: u32) -> Option<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Some(Sample {
        cpu_us: (utime + stime) * TICK_US,
        rss_kib,
    })
}

/// One thread's CPU time and context switches.
#[derive(Debug, Clone, Default)]
pub(crate) struct ThreadSample {
    /// The thread's name (`comm`, at most 15 bytes).
    pub(crate) name: String,
    /// User plus system CPU time, in microseconds.
    pub(crate) cpu_us: u64,
    /// The part of `cpu_us` spent in the kernel (system time), in microseconds.
    pub(crate) system_us: u64,
    /// Voluntary plus involuntary context switches.
    pub(crate) switches: u64,
    /// Bytes the thread sent towards the disk (`write_bytes` of `/proc/PID/task/TID/io`:
    /// page-cache pages it dirtied, counted once per page until written back), 0 where the
    /// kernel does not say.
    pub(crate) disk_write_bytes: u64,
}

/// Every thread of the process, by thread ID.
pub(crate) type Threads = std::collections::BTreeMap<u32, ThreadSample>;

/// Reads `/proc/PID/task/*`; `None` if the process is not there.
pub(crate) fn threads(pid: u32) -> Option<Threads> {
    let mut threads = Threads::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        let dir = entry.path();
        let (Ok(stat), Ok(status)) = (
            std::fs::read_to_string(dir.join("stat")),
            std::fs::read_to_string(dir.join("status")),
        ) else {
            continue; // The thread ended meanwhile.
        };
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let name = head.split_once('(').map_or("", |(_, n)| n).to_owned();
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        let disk_write_bytes = std::fs::read_to_string(dir.join("io"))
            .ok()
            .and_then(|io| {
                io.lines()
                    .find_map(|l| l.strip_prefix("write_bytes:"))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0);
        threads.insert(
            tid,
            ThreadSample {
                name,
                cpu_us: (ticks(11) + ticks(12)) * TICK_US,
                system_us: ticks(12) * TICK_US,
                switches: field("voluntary_ctxt_switches:") + field("nonvoluntary_ctxt_switches:"),
                disk_write_bytes,
            },
        );
    }
    Some(threads)
}

/// Where the server's time went between two snapshots, per delivery: CPU by kind of thread
/// (the SQLite writer, the checkpointer, tokio's workers and blocking pool, the rest), the
/// part of it spent in the kernel (system calls: socket reads and writes, WAL writes and
/// fsyncs, wake-ups), context switches, and the bytes each kind of thread gave the disk (the
/// writer's WAL frames, the checkpointer's database pages). A thread that ended between the snapshots is not counted; one that
/// started is counted whole.
pub(crate) fn breakdown(before: &Threads, after: &Threads, deliveries: u64) -> serde_json::Value {
    let mut cpu: std::collections::BTreeMap<&str, u64> = std::collections::BTreeMap::new();
    let mut kernel: std::collections::BTreeMap<&str, u64> = std::collections::BTreeMap::new();
    let mut disk: std::collections::BTreeMap<&str, u64> = std::collections::BTreeMap::new();
    let mut switches = 0;
    for (tid, now) in after {
        let then = before.get(tid).cloned().unwrap_or_default();
        let kind = match now.name.as_str() {
            n if n.starts_with("chat-sqlite-wri") => "sqlite_writer",
            n if n.starts_with("chat-sqlite-che") => "sqlite_checkpointer",
            // tokio names its workers and its blocking pool alike ("tokio-rt-worker"; older
            // versions "tokio-runtime-worker", cut to 15 bytes).
            n if n.starts_with("tokio-r") => "tokio_threads",
            n if n.starts_with("argon2-") => "argon2",
            "chat-server" => "main",
            _ => "other",
        };
        *cpu.entry(kind).or_default() += now.cpu_us.saturating_sub(then.cpu_us);
        *kernel.entry(kind).or_default() += now.system_us.saturating_sub(then.system_us);
        *disk.entry(kind).or_default() +=
            now.disk_write_bytes.saturating_sub(then.disk_write_bytes);
        switches += now.switches.saturating_sub(then.switches);
    }
    let per = |v: u64| (v as f64 / deliveries.max(1) as f64 * 10.0).round() / 10.0;
    let by_kind = |m: std::collections::BTreeMap<&str, u64>| {
        m.into_iter()
            .map(|(k, v)| (k.to_owned(), serde_json::json!(per(v))))
            .collect::<serde_json::Map<String, serde_json::Value>>()
    };
    serde_json::json!({
        "cpu_us_per_delivery_by_thread": by_kind(cpu),
        "kernel_us_per_delivery_by_thread": by_kind(kernel),
        "context_switches_per_delivery": per(switches),
        "disk_write_bytes_per_delivery_by_thread": by_kind(disk),
        "threads": after.len(),
    })
}
