//! `chat-bench`: drives a running chat node over its real protocol and reports throughput,
//! latency and the server's CPU and memory per message and per connection.
//!
//! Bodies are opaque bytes of a chosen size (the first 8 carry the send time), so the figures
//! measure the server, not client-side encryption. Every workload is bounded in count and
//! time and talks only to the address it is given.
#![forbid(unsafe_code)]

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
    /// The node's PID, to report its CPU time and memory from /proc.
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
    Idle {
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        hold: Duration,
        /// Heartbeat interval of each connection.
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        heartbeat: Duration,
    },
    /// Online users send messages to random partners at a fixed rate.
    OneToOne {
        #[arg(long, default_value_t = 1000)]
        users: usize,
        /// Messages per second, in total.
        #[arg(long, default_value_t = 2000)]
        rate: u64,
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        duration: Duration,
        /// Body size in bytes.
        #[arg(long, default_value_t = 200)]
        size: usize,
    },
    /// One-to-one at rising rates until delivery falls behind or p99 exceeds a bound.
    Ramp {
        #[arg(long, default_value_t = 1000)]
        users: usize,
        #[arg(long, default_value_t = 2000)]
        start: u64,
        #[arg(long, default_value_t = 2000)]
        step: u64,
        #[arg(long, default_value_t = 60_000)]
        max_rate: u64,
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        step_duration: Duration,
        #[arg(long, default_value_t = 100.0)]
        max_p99_ms: f64,
        #[arg(long, default_value_t = 200)]
        size: usize,
    },
    /// Groups with one sender each; every message fans out to the other members.
    Group {
        #[arg(long, default_value_t = 10)]
        groups: usize,
        #[arg(long, default_value_t = 100)]
        members: usize,
        /// Messages per second, in total over all groups.
        #[arg(long, default_value_t = 500)]
        rate: u64,
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        duration: Duration,
        #[arg(long, default_value_t = 200)]
        size: usize,
    },
    /// One device offline while messages arrive; then the time to drain them on connect.
    Drain {
        #[arg(long, default_value_t = 100_000)]
        messages: usize,
        #[arg(long, default_value_t = 200)]
        size: usize,
    },
}

fn default_prefix() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("b{}", t % 1_000_000)
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n.parse().map_err(|_| format!("bad duration {s}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("bad duration unit in {s}")),
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if !args.server.ip().is_loopback() {
        eprintln!("chat-bench only drives servers on loopback addresses");
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
