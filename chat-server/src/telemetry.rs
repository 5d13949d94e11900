//! Metrics as collectors expect them: every metric the node records is described here (the
//! `# HELP` and `# TYPE` lines of `/metrics`) and registered at zero when the recorder is
//! installed, so a fresh node already exports each counter at 0 and a rate over a restart
//! is right; latencies are histograms with fixed buckets (which add up across nodes, where
//! summaries' quantiles do not); the process metrics of Prometheus's own collectors
//! (`process_*`, read from `/proc` on Linux) are rendered at each scrape.
//!
//! A metric recorded somewhere in the node must be listed in [`COUNTERS`], [`GAUGES`] or
//! [`HISTOGRAMS`]; the binary test `metrics.rs` checks that every metric in a scrape has
//! its HELP line.

use std::fmt::Write as _;

use metrics::Unit;
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

/// A counter: its name, its help text, and the labels it is registered at zero with, one
/// series per `(key, value)` (none: one series without labels).
type Counter = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

/// Every counter the node records.
pub(crate) const COUNTERS: &[Counter] = &[
    (
        "chat_frames_in_total",
        "WebSocket frames received from clients.",
        &[],
    ),
    (
        "chat_frames_refused_total",
        "Client frames refused by the per-connection rate limit.",
        &[],
    ),
    (
        "chat_messages_in_total",
        "Messages sent by clients through the gateway.",
        &[],
    ),
    (
        "chat_deliveries_total",
        "Messages delivered live to connected devices.",
        &[],
    ),
    (
        "chat_backlog_pages_total",
        "Backlog pages sent to reconnecting devices.",
        &[],
    ),
    (
        "chat_expired_frames_dropped_total",
        "Expired frames (typing indicators) dropped instead of delivered late.",
        &[],
    ),
    (
        "chat_resync_trimmed_total",
        "resync_required {inbox_trimmed} sent to devices that came back after retention trimmed their inbox.",
        &[],
    ),
    (
        "chat_presence_changes_total",
        "Presence changes (online or offline) announced.",
        &[],
    ),
    (
        "chat_push_sent_total",
        "Push notifications delivered to the push gateway.",
        &[],
    ),
    (
        "chat_push_failed_total",
        "Push notifications given up after every attempt.",
        &[],
    ),
    (
        "chat_push_dropped_total",
        "Offline deliveries dropped because the push queue was full (the gateway is slow or down).",
        &[],
    ),
    (
        "chat_attachment_bytes_in_total",
        "Attachment bytes uploaded and stored.",
        &[],
    ),
    (
        "chat_attachment_bytes_out_total",
        "Attachment bytes downloaded.",
        &[],
    ),
    (
        "chat_inbox_trimmed_total",
        "Inbox entries deleted by inbox retention.",
        &[],
    ),
    (
        "chat_password_hash_rejected_total",
        "Log-ins and registrations refused because the password-hashing queue was full.",
        &[],
    ),
    (
        "chat_login_failures_total",
        "Failed log-ins (wrong username or password); each is also a throttled WARN with the address.",
        &[],
    ),
    (
        "chat_token_failures_total",
        "Requests and WebSocket authentications with an invalid or revoked token.",
        &[],
    ),
    (
        "chat_http_timeouts_total",
        "HTTP connections closed for a slow TLS handshake, request head or body, or idleness.",
        &[
            ("kind", "tls"),
            ("kind", "header"),
            ("kind", "body"),
            ("kind", "idle"),
        ],
    ),
    (
        "chat_http_connections_refused_total",
        "Connections closed at accept because their address held max_connections_per_address.",
        &[],
    ),
    (
        "chat_http_requests_total",
        "HTTP requests answered, by route (the matched pattern, or \"unmatched\"), method and status.",
        &[],
    ),
    (
        "chat_prekey_fallback_total",
        "Key bundles served without one-time prekeys because the target's budget was spent.",
        &[],
    ),
    (
        "chat_prekey_pool_drained_total",
        "Key bundles handed out for a device whose one-time prekey pool was empty.",
        &[],
    ),
    (
        "chat_store_failures_total",
        "Storage operations that failed (logged at most once per 10 s).",
        &[],
    ),
    (
        "chat_cluster_limit_fallbacks_total",
        "Cluster rate limits checked on this node's own buckets because Redis did not answer.",
        &[],
    ),
    (
        "chat_presence_swept_total",
        "Users held by a dead node that went offline when the cluster's sweeper removed it.",
        &[],
    ),
    (
        "chat_presence_repaired_total",
        "Presence records this node wrote again after Redis lost them.",
        &[],
    ),
    (
        "chat_bus_malformed_total",
        "Messages on the cluster's Redis channels that did not decode (dropped, never delivered).",
        &[],
    ),
    (
        "chat_bus_reconnects_total",
        "Times this node's Redis pub/sub connection was re-established.",
        &[],
    ),
    (
        "chat_bus_repairs_total",
        "Connections told to re-read their inbox after the bus resubscribed their topics.",
        &[],
    ),
    (
        "chat_push_claimed_elsewhere_total",
        "Push notifications left to another node that claimed the device's burst first.",
        &[],
    ),
];

/// Gauges and their help texts.
pub(crate) const GAUGES: &[(&str, &str)] = &[(
    "chat_connections",
    "WebSocket connections open on this node.",
)];

/// Histograms (all in seconds) and their help texts.
pub(crate) const HISTOGRAMS: &[(&str, &str)] = &[
    (
        "chat_append_seconds",
        "Time to store a sent message durably (the storage append, group commit included).",
    ),
    (
        "chat_http_request_seconds",
        "Time to answer an HTTP request, by route (WebSocket upgrades: until the upgrade).",
    ),
    (
        chat_storage::COMMIT_SECONDS,
        "Time of one store commit: SQLite's COMMIT of a write transaction (its WAL writes and \
         fsync), PostgreSQL's transaction of an append batch.",
    ),
    (
        chat_storage::CHECKPOINT_SECONDS,
        "Time of one SQLite checkpoint: copying committed WAL frames into the database file, \
         with its fsyncs (commits issued meanwhile wait behind it).",
    ),
];

/// The `process_*` metrics [`render`] adds (on Linux), for the tests: one checks that each
/// is rendered, one that the operator files name no other.
#[cfg(test)]
const PROCESS: &[&str] = &[
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_threads",
    "process_open_fds",
    "process_max_fds",
    "process_start_time_seconds",
];

/// Histogram buckets in seconds: 0.5 ms to 10 s.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Buckets of the store's commit and checkpoint times, finer below a millisecond, where an
/// fsync on an SSD lands: 50 µs to 1 s.
const COMMIT_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.0002, 0.0003, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.01,
    0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Installs the process-wide Prometheus recorder (histograms with the `BUCKETS` latency buckets), describes
/// every metric and registers each counter and gauge at zero. Returns the handle to render
/// with [`render`]; call `run_upkeep` on it every few seconds so histogram samples are
/// folded into buckets even when nobody scrapes. Fails if a recorder is installed already.
pub fn install_prometheus() -> Result<PrometheusHandle, BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets(BUCKETS)?
        .set_buckets_for_metric(
            Matcher::Full(chat_storage::COMMIT_SECONDS.into()),
            COMMIT_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full(chat_storage::CHECKPOINT_SECONDS.into()),
            COMMIT_BUCKETS,
        )?
        .install_recorder()?;
    describe();
    Ok(handle)
}

/// The `/metrics` page: what the recorder holds, then the process metrics.
pub fn render(handle: &PrometheusHandle) -> String {
    let mut page = handle.render();
    page.push_str(&process_metrics());
    page
}

/// Describes every metric to the installed recorder and registers counters and gauges at 0.
fn describe() {
    for &(name, help, labels) in COUNTERS {
        metrics::describe_counter!(name, help);
        if labels.is_empty() {
            metrics::counter!(name).increment(0);
        }
        for &(key, value) in labels {
            metrics::counter!(name, key => value).increment(0);
        }
    }
    for &(name, help) in GAUGES {
        metrics::describe_gauge!(name, help);
        metrics::gauge!(name).increment(0.0);
    }
    for &(name, help) in HISTOGRAMS {
        metrics::describe_histogram!(name, Unit::Seconds, help);
    }
}

/// Linux reports CPU times in /proc in units of USER_HZ, which is 100 on every
/// architecture Linux supports today (the kernel's ABI, whatever its internal HZ).
const USER_HZ: f64 = 100.0;

/// `process_*` metrics in Prometheus's standard names, from `/proc/self` (empty elsewhere,
/// or where `/proc` cannot be read).
fn process_metrics() -> String {
    let mut out = String::new();
    let Some(proc) = ProcSelf::read() else {
        return out;
    };
    let mut metric = |name: &str, kind: &str, help: &str, value: f64| {
        let _ = write!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n\n"
        );
    };
    metric(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        proc.cpu_ticks as f64 / USER_HZ,
    );
    metric(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        proc.rss_bytes as f64,
    );
    metric(
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes.",
        proc.vsize_bytes as f64,
    );
    metric(
        "process_threads",
        "gauge",
        "Number of OS threads in the process.",
        proc.threads as f64,
    );
    if let Some(fds) = proc.open_fds {
        metric(
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            fds as f64,
        );
    }
    if let Some(max) = proc.max_fds {
        metric(
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            max as f64,
        );
    }
    if let Some(start) = proc.start_time_seconds {
        metric(
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since the Unix epoch in seconds.",
            start,
        );
    }
    out
}

/// What `/proc/self` says about this process.
#[derive(Debug)]
struct ProcSelf {
    cpu_ticks: u64,
    rss_bytes: u64,
    vsize_bytes: u64,
    threads: u64,
    open_fds: Option<u64>,
    max_fds: Option<u64>,
    start_time_seconds: Option<f64>,
}

impl ProcSelf {
    fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let fields = StatFields::parse(&stat)?;
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())?;
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|entries| entries.count() as u64);
        let max_fds = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|limits| {
                limits
                    .lines()
                    .find_map(|l| l.strip_prefix("Max open files"))
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|v| v.parse::<u64>().ok())
            });
        let boot_time = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|v| v.trim().parse::<u64>().ok())
        });
        Some(Self {
            cpu_ticks: fields.utime + fields.stime,
            rss_bytes: rss_kib * 1024,
            vsize_bytes: fields.vsize,
            threads: fields.threads,
            open_fds,
            max_fds,
            start_time_seconds: boot_time
                .map(|boot| boot as f64 + fields.start_ticks as f64 / USER_HZ),
        })
    }
}

/// The fields of `/proc/self/stat` used here.
#[derive(Debug, PartialEq)]
struct StatFields {
    utime: u64,
    stime: u64,
    threads: u64,
    start_ticks: u64,
    vsize: u64,
}

impl StatFields {
    /// Parses `/proc/PID/stat`: the command name (field 2) is in parentheses and may hold
    /// spaces and parentheses itself, so fields are counted from the last `)`.
    fn parse(stat: &str) -> Option<Self> {
        let rest = stat.get(stat.rfind(')')? + 1..)?;
        // `rest` starts at field 3 (state): field n is at index n - 3.
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
        Some(Self {
            utime: field(14)?,
            stime: field(15)?,
            threads: field(20)?,
            start_ticks: field(22)?,
            vsize: field(23)?,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let stat = "4242 (chat (server) x) S 1 4242 4242 0 -1 4194560 9 0 0 0 \
                    150 25 0 0 20 0 17 0 8000 123456789 3000 18446744073709551615";
        let fields = StatFields::parse(stat).unwrap();
        assert_eq!(
            fields,
            StatFields {
                utime: 150,
                stime: 25,
                threads: 17,
                start_ticks: 8000,
                vsize: 123_456_789,
            }
        );
        assert_eq!(StatFields::parse("1 (truncated"), None);
    }

    /// Every `chat_*` or `process_*` name in `text`, a histogram's series under its name.
    fn names_in(text: &str) -> std::collections::BTreeSet<String> {
        text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("chat_") || w.starts_with("process_"))
            .map(|w| {
                ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| w.strip_suffix(s))
                    .unwrap_or(w)
                    .to_owned()
            })
            .collect()
    }

    #[test]
    fn the_operator_files_and_docs_name_only_exported_metrics_and_all_of_them() {
        let exported: std::collections::BTreeSet<String> = COUNTERS
            .iter()
            .map(|c| c.0)
            .chain(GAUGES.iter().map(|g| g.0))
            .chain(HISTOGRAMS.iter().map(|h| h.0))
            .chain(PROCESS.iter().copied())
            .map(str::to_owned)
            .collect();
        for (file, text) in [
            (
                "alerts.yml",
                include_str!("../../docs/operators/alerts.yml"),
            ),
            (
                "grafana-dashboard.json",
                include_str!("../../docs/operators/grafana-dashboard.json"),
            ),
        ] {
            let unknown: Vec<_> = names_in(text).difference(&exported).cloned().collect();
            assert!(unknown.is_empty(), "{file} names {unknown:?}");
        }
        let docs = include_str!("../../docs/OPERATIONS.md");
        let section = docs
            .split("## Health, metrics, logs")
            .nth(1)
            .and_then(|s| s.split("\n## ").next())
            .unwrap();
        let named = names_in(section);
        let undocumented: Vec<_> = exported.difference(&named).collect();
        assert!(
            undocumented.is_empty(),
            "OPERATIONS.md lacks {undocumented:?}"
        );
    }

    /// Every metric recorded anywhere in the node's source is listed here, so none is
    /// exported without its HELP line or missing at zero.
    #[test]
    fn every_metric_recorded_in_the_source_is_listed() {
        fn sources(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    sources(&path, out);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    out.push(path);
                }
            }
        }
        let mut files = Vec::new();
        sources(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut files,
        );
        let listed = |kind: &str, name: &str| match kind {
            "counter" => COUNTERS.iter().any(|c| c.0 == name),
            "gauge" => GAUGES.iter().any(|g| g.0 == name),
            _ => HISTOGRAMS.iter().any(|h| h.0 == name),
        };
        let mut seen = 0;
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for kind in ["counter", "gauge", "histogram"] {
                for (_, rest) in text
                    .match_indices(&format!("{kind}!(\""))
                    .map(|(i, m)| (i, &text[i + m.len()..]))
                {
                    let name = rest.split('"').next().unwrap();
                    assert!(
                        listed(kind, name),
                        "{kind} {name} in {file:?} is not listed"
                    );
                    seen += 1;
                }
            }
        }
        assert!(seen > 20, "{seen} recordings found");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_is_measured() {
        let page = process_metrics();
        for name in PROCESS {
            assert!(
                page.contains(&format!("# HELP {name} ")),
                "{name} in {page}"
            );
        }
        let proc = ProcSelf::read().unwrap();
        assert!(proc.rss_bytes > 1024 * 1024, "{proc:?}");
        assert!(proc.threads >= 1 && proc.open_fds.unwrap() >= 3, "{proc:?}");
    }
}
