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
