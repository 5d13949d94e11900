//! Unauthenticated floods of the password-hashing path: the node runs as a child process
//! (the real binary) so its peak resident set size can be read from `/proc/PID/status`
//! while 150 log-ins with unknown usernames arrive at once, with the default Argon2id cost.

mod common;

use std::time::{Duration, Instant};

use common::{TestServer, WAIT, http, test_config};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const MIB: u64 = 1024 * 1024;

/// The child's peak resident set size (`VmHWM`) and current one (`VmRSS`), in bytes.
fn rss_of(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect(name)
            * 1024
    };
    (field("VmHWM:"), field("VmRSS:"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_flood_peak_memory_stays_within_the_configured_bound() {
    let dir = tempfile::tempdir().unwrap();
    let concurrency: u64 = 2;
    let memory_kib: u64 = 19 * 1024;
    let config = json!({
        "listen": "127.0.0.1:0",
        "store": "memory:",
        "blob_dir": dir.path().join("blobs"),
        "argon2_memory_kib": memory_kib,
        "argon2_concurrency": concurrency,
        "argon2_queue": 4,
        // Every request comes from 127.0.0.1: let them all reach the hashing path.
        "auth_burst_per_address": 10_000,
    });
    let path = dir.path().join("config.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .arg("--config")
        .arg(&path)
        .env("CHAT_LOG", "error")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start chat-server");
    let pid = child.id().expect("pid");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let banner = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("banner in time")
        .unwrap()
        .expect("a banner line");
    let addr: std::net::SocketAddr = banner
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {banner:?}"));
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let (_, before) = rss_of(pid);
    let started = Instant::now();
    let attempts: Vec<_> = (0..150)
        .map(|i| {
            tokio::spawn(http(
                addr,
                "POST",
                "/v1/login",
                None,
                Some(json!({"username": format!("nobody{i}"), "password": "wrong horse"})),
            ))
        })
        .collect();
    let (mut refused, mut busy) = (0, 0);
    for attempt in attempts {
        let (status, body) = attempt.await.unwrap();
        match status {
            401 => refused += 1,
            503 => {
                assert_eq!(body["error"], "unavailable", "{body}");
                busy += 1;
            }
            other => panic!("unexpected answer {other}: {body}"),
        }
    }
    let elapsed = started.elapsed();
    let (peak, _) = rss_of(pid);
    let bound = before + concurrency * memory_kib * 1024 + 32 * MIB;
    eprintln!(
        "flood: {refused} verified, {busy} busy in {elapsed:?}; RSS before {} MiB, peak {} MiB, bound {} MiB",
        before / MIB,
        peak / MIB,
        bound / MIB
    );
    assert!(refused >= 2, "some log-ins were verified");
    assert!(busy > 0, "a full queue answers unavailable");
    assert!(
        peak <= bound,
        "peak RSS {} MiB is over the bound {} MiB",
        peak / MIB,
        bound / MIB
    );
    child.kill().await.unwrap();
}

/// With one hashing thread busy and the queue full, further log-ins are answered
/// `unavailable` with `Retry-After` at once: every refusal arrives before the first
/// verified answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_hashing_queue_answers_unavailable_at_once() {
    let config = chat_server::Config {
        // A slow hash (tens of milliseconds at least, even optimised), one at a time.
        argon2_memory_kib: 4 * 1024,
        argon2_iterations: 8,
        argon2_concurrency: 1,
        argon2_queue: 1,
        ..test_config()
    };
    let server = TestServer::start(config).await;
    let addr = server.addr;
    let started = Instant::now();
    let attempts: Vec<_> = (0..12)
        .map(|i| {
            tokio::spawn(async move {
                let answer = raw_login(addr, &format!("nobody{i}")).await;
                (answer, started.elapsed())
            })
        })
        .collect();
    let mut verified = Vec::new();
    let mut busy = Vec::new();
    for attempt in attempts {
        let ((status, retry_after), at) = attempt.await.unwrap();
        match status {
            401 => verified.push(at),
            503 => {
                assert_eq!(retry_after.as_deref(), Some("1"));
                busy.push(at);
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(!busy.is_empty(), "a full queue refuses");
    // The running job always completes; whether a second one found the queue's place
    // depends on whether the hashing thread had taken the first off the queue when it came.
    assert!(!verified.is_empty(), "the running job completes");
    let first_verified = verified.iter().min().copied().unwrap_or(Duration::MAX);
    let last_busy = busy.iter().max().copied().unwrap_or_default();
    eprintln!("busy answers by {last_busy:?}, first verified answer at {first_verified:?}");
    assert!(
        last_busy < first_verified,
        "refusals do not wait for hashing ({last_busy:?} vs {first_verified:?})"
    );
    server.shutdown().await;
}

/// A log-in attempt; the status and the `Retry-After` header.
async fn raw_login(addr: std::net::SocketAddr, name: &str) -> (u16, Option<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = json!({"username": name, "password": "wrong horse"}).to_string();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST /v1/login HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .expect("answer in time")
        .unwrap();
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let retry_after = text.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("retry-after")
            .then(|| value.trim().to_owned())
    });
    (status, retry_after)
}
