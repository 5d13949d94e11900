//! `chat-bench`: drives a running chat node over its real protocol and reports throughput,
//! latency and the server's CPU and memory per message and per connection.
//!
//! Bodies are opaque bytes of a chosen size (the first 8 carry the send time), so the figures
//! measure the server, not client-side encryption. Every workload is bounded in count and
//! time and talks only to the address it is given.
#![forbid(unsafe_code)]

mod disk;
mod floor;
mod histogram;
mod http;
mod proc;
mod stats;
mod workloads;
mod ws;

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Load generator for a chat node.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The node's address (loopback only).
    #[arg(long, default_value = "127.0.0.1:8080")]
    server: SocketAddr,
    /// More nodes of the same cluster (comma-separated): connection i goes to node i mod n
    /// of `--server` followed by these, so with two nodes every one-to-one pair of
    /// `one-to-one` and `ramp` (partners 1, 7 and 31 apart) crosses nodes. Setup requests
    /// go to `--server`.
    #[arg(long, value_delimiter = ',')]
    nodes: Vec<SocketAddr>,
    /// The node's PID, to report its CPU time and memory from /proc; refused unless it is a
    /// running chat-server process.
    #[arg(long)]
    server_pid: Option<u32>,
    /// A prefix for the accounts this run creates (runs against one store must differ).
    #[arg(long, default_value_t = default_prefix())]
    prefix: String,
    #[command(subcommand)]
    workload: Workload,
}

#[derive(Debug, Subcommand)]
enum Workload {
    /// Open N authenticated connections with heartbeats and hold them.
    Idle(Holding),
    /// Online users send messages to random partners at a fixed rate.
    OneToOne {
        /// Users, one connected device each; each talks to three partners.
        #[arg(long, default_value_t = 1000)]
        users: usize,
        /// Messages per second, in total.
        #[arg(long, default_value_t = 2000)]
        rate: u64,
        /// How long to send (with a unit: 30s, 500ms, 2m).
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        duration: Duration,
        /// Body size in bytes.
        #[arg(long, default_value_t = 200)]
        size: usize,
        /// How long to wait after the run, connections still open, before reading the
        /// server's RSS again: whether memory returns to its level before the load
        /// (`server_rss_kib_before` and `server_rss_kib_settled` in the report; 0s to skip).
        #[arg(long, default_value = "0s", value_parser = parse_duration)]
        settle: Duration,
    },
    /// One-to-one at rising rates until delivery falls behind or p99 exceeds a bound.
    Ramp {
        /// Users, one connected device each.
        #[arg(long, default_value_t = 1000)]
        users: usize,
        /// The first rate, in messages per second.
        #[arg(long, default_value_t = 2000)]
        start: u64,
        /// How much each step raises the rate, in messages per second.
        #[arg(long, default_value_t = 2000)]
        step: u64,
        /// The highest rate tried, in messages per second.
        #[arg(long, default_value_t = 60_000)]
        max_rate: u64,
        /// How long each rate is held (with a unit: 10s, 500ms, 1m).
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        step_duration: Duration,
        /// The p99 delivery latency, in ms, above which a rate is not sustained.
        #[arg(long, default_value_t = 100.0)]
        max_p99_ms: f64,
        /// Body size in bytes.
        #[arg(long, default_value_t = 200)]
        size: usize,
    },
    /// Groups with one sender each; every message fans out to the other members.
    Group {
        /// Groups, each with its own sender.
        #[arg(long, default_value_t = 10)]
        groups: usize,
        /// Members per group (2 to 100), one connected device each.
        #[arg(long, default_value_t = 100)]
        members: usize,
        /// Messages per second, in total over all groups.
        #[arg(long, default_value_t = 500)]
        rate: u64,
        /// How long to send (with a unit: 30s, 500ms, 2m).
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        duration: Duration,
        /// Body size in bytes.
        #[arg(long, default_value_t = 200)]
        size: usize,
    },
    /// The floor under `idle`'s CPU per heartbeat on this machine: the same heartbeat
    /// frames, at the same rate, sent to a minimal tokio server (a child process) that only
    /// reads and discards them. Needs no node.
    HeartbeatFloor(Holding),
    /// The floor under a durable commit's latency on this machine's disk, with no node:
    /// WAL-like commits (a sequential write and an fsync each) alone, then beside
    /// checkpoint-like writes (random 4 KiB pages and an fsync) at each spacing. Writes two
    /// files in `--dir` and removes them.
    DiskFloor(disk::Pattern),
    /// The server side of `heartbeat-floor` (started by it).
    #[command(hide = true)]
    FloorServer {
        /// Connections to accept before saying `ready`.
        #[arg(long)]
        connections: usize,
    },
    /// One device offline while messages arrive; then the time to drain them on connect.
    Drain {
        /// Messages queued for the offline device.
        #[arg(long, default_value_t = 100_000)]
        messages: usize,
        /// Body size in bytes.
        #[arg(long, default_value_t = 200)]
        size: usize,
    },
}

/// Connections held open with heartbeats (`idle`, `heartbeat-floor`).
#[derive(Debug, clap::Args)]
struct Holding {
    /// Connections to open (`idle`: ten devices per account).
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// How long to hold them once all are open (with a unit: 30s, 500ms, 2m).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    hold: Duration,
    /// Heartbeat interval of each connection (with a unit).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    heartbeat: Duration,
}

fn default_prefix() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("b{}", t % 1_000_000)
}

/// A duration with its unit: `500ms`, `10s` or `2m`. A bare number is refused rather than
/// guessed at.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 10s, 500ms, 2m)"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "" => Err(format!("{s:?} has no unit: write {s}s, {s}ms or {s}m")),
        _ => Err(format!("unknown unit in {s:?}: use ms, s or m")),
    }
}

/// Checks that `pid` is a running chat-server, so its figures are the node's: its
/// `/proc/PID/comm` or the name of `/proc/PID/exe` is `chat-server`.
fn check_server_pid(pid: u32) -> Result<(), String> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map_err(|e| format!("--server-pid {pid}: no such process readable in /proc ({e})"))?;
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    let exe_name = exe
        .as_ref()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned());
    if is_chat_server(comm.trim(), exe_name.as_deref()) {
        Ok(())
    } else {
        Err(format!(
            "--server-pid {pid} is {:?}, not a chat-server process",
            comm.trim()
        ))
    }
}

/// Whether a process's `comm` or executable name is chat-server's (`exe` may be unreadable,
/// for another user's process; a binary replaced since start reads `chat-server (deleted)`).
fn is_chat_server(comm: &str, exe: Option<&str>) -> bool {
    comm == "chat-server" || exe.is_some_and(|e| e.trim_end_matches(" (deleted)") == "chat-server")
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match args.workload {
        Workload::FloorServer { connections } => return floor::serve(connections),
        Workload::DiskFloor(ref pattern) => {
            return match disk::run_and_report(pattern) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("chat-bench: disk-floor in {}: {e}", pattern.dir.display());
                    std::process::ExitCode::FAILURE
                }
            };
        }
        _ => {}
    }
    if !args.server.ip().is_loopback() {
        eprintln!("chat-bench only drives servers on loopback addresses");
        return std::process::ExitCode::FAILURE;
    }
    if let Some(pid) = args.server_pid
        && let Err(why) = check_server_pid(pid)
    {
        eprintln!("chat-bench: {why}");
        return std::process::ExitCode::FAILURE;
    }
    // Many connections need many file descriptors.
    if let Ok((_, hard)) = rlimit::Resource::NOFILE.get() {
        let _ = rlimit::Resource::NOFILE.set(hard, hard);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(workloads::run(&args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chat-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_units() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        for bad in ["10", "", "s", "10h", "1.5s", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn only_chat_server_processes_are_measured() {
        assert!(is_chat_server("chat-server", None));
        assert!(is_chat_server("tokio-rt-worker", Some("chat-server")));
        assert!(is_chat_server("x", Some("chat-server (deleted)")));
        assert!(!is_chat_server("bash", Some("bash")));
        assert!(!is_chat_server("postgres", None));
        // This test process is not one.
        assert!(check_server_pid(std::process::id()).is_err());
    }
}
