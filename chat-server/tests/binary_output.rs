//! What the `chat-server` binary prints, read from its pipes: the store's password never
//! (the URL shows `***`; not in the banner, the logs at debug, a shutdown or a start-up
//! error), no colour codes off a terminal, pure JSON lines with
//! `--log-format json`, a warning for an invalid `CHAT_LOG`, and one for a failed log-in.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const SECRET: &str = "hunter2-never-printed";

/// The binary, started in a fresh directory with `args` and `env`, its stdout and stderr
/// lines arriving on the receiver.
struct Node {
    child: Child,
    lines: mpsc::Receiver<String>,
    _dir: tempfile::TempDir,
}

impl Node {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_chat-server"));
        if !args.contains(&"--listen") {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        command
            .args(args)
            .env_remove("CHAT_LOG")
            .current_dir(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().unwrap();
        let (tx, lines) = mpsc::channel::<String>();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        Self {
            child,
            lines,
            _dir: dir,
        }
    }

    /// Every line up to and including the first that `done` accepts; fails after 30 s.
    fn lines_until(&self, done: impl Fn(&str) -> bool) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            match self.lines.recv_timeout(Duration::from_secs(30)) {
                Ok(line) => {
                    let last = done(&line);
                    seen.push(line);
                    if last {
                        return seen;
                    }
                }
                Err(_) => panic!("the node never printed what was awaited; so far: {seen:#?}"),
            }
        }
    }

    /// The address the node listens on, from its banner line; fails after 30 s.
    fn addr(&self) -> std::net::SocketAddr {
        let banner = self.lines_until(|l| l.starts_with("chat-server listening"));
        banner
            .last()
            .and_then(|line| line.split("://").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .expect("the banner names the address")
    }

    /// Every line until the process closes its output (it exited); fails after 30 s.
    fn output_until_exit(&self) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            match self.lines.recv_timeout(Duration::from_secs(30)) {
                Ok(line) => seen.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => return seen,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("the node did not exit; so far: {seen:#?}")
                }
            }
        }
    }

    /// Sends SIGTERM and returns every line up to the exit.
    fn stop(&self) -> Vec<String> {
        let stopped = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(stopped, "SIGTERM sent");
        self.output_until_exit()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `url` (a PostgreSQL URL) with its user `postgres` and password [`SECRET`].
fn with_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        panic!("{url:?} is not a URL");
    };
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    format!("{scheme}://postgres:{SECRET}@{rest}")
}

#[test]
fn the_store_password_never_reaches_the_output() {
    // Trust authentication ignores the password, so the node starts.
    let Some(url) = chat_storage::testing::service_url("CHAT_TEST_POSTGRES_URL") else {
        return;
    };
    let node = Node::start(&["--store", &with_password(&url)], &[("CHAT_LOG", "debug")]);
    let mut seen = node.lines_until(|l| l.starts_with("chat-server listening"));
    let banner = seen.last().unwrap().clone();
    assert!(banner.contains("postgres:***@"), "{banner}");
    seen.extend(node.stop());
    assert!(seen.iter().any(|l| l.contains("stopped")), "{seen:#?}");
    for line in &seen {
        assert!(!line.contains(SECRET), "the password was printed: {line}");
    }
}

#[test]
fn a_start_up_error_names_the_store_without_its_password() {
    // Nothing listens on port 1: connecting fails, and the error is printed.
    let url = with_password("postgres://127.0.0.1:1/test");
    for format in ["text", "json"] {
        let mut node = Node::start(
            &["--store", &url, "--log-format", format],
            &[("CHAT_LOG", "debug")],
        );
        let seen = node.output_until_exit();
        let status = node.child.wait().unwrap();
        assert!(!status.success(), "a node without its store exits non-zero");
        let errors: Vec<_> = seen
            .iter()
            .filter(|l| l.contains("ERROR") || l.contains("\"ERROR\""))
            .collect();
        assert_eq!(errors.len(), 1, "the error once: {seen:#?}");
        assert!(
            errors[0].contains("postgres://postgres:***@127.0.0.1:1/test"),
            "the error names the store: {}",
            errors[0]
        );
        for line in &seen {
            assert!(!line.contains(SECRET), "the password was printed: {line}");
        }
    }
}

#[test]
fn start_up_errors_name_the_file_or_address_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    // A data directory that cannot be created: its parent is a file.
    let blocked = tempfile::NamedTempFile::new().unwrap();
    let store = format!("sqlite://{}/data/chat.db", blocked.path().display());
    let data_dir = format!("{}/data", blocked.path().display());
    for (args, named) in [
        (vec!["--config", "missing.json"], "missing.json"),
        (vec!["--store", &store], data_dir.as_str()),
        (
            vec!["--store", "memory:", "--listen", &taken],
            taken.as_str(),
        ),
        (
            vec![
                "--store",
                "memory:",
                "--tls-cert",
                "no-cert.pem",
                "--tls-key",
                "no-key.pem",
            ],
            "no-cert.pem",
        ),
    ] {
        let mut node = Node::start(&args, &[]);
        let seen = node.output_until_exit();
        assert!(!node.child.wait().unwrap().success(), "{args:?}");
        let errors: Vec<_> = seen.iter().filter(|l| l.contains("ERROR")).collect();
        assert_eq!(errors.len(), 1, "once: {seen:#?}");
        assert!(errors[0].contains(named), "{args:?}: {}", errors[0]);
        assert!(
            !seen.iter().any(|l| l.contains("listening")),
            "no node says it listens and then fails: {seen:#?}"
        );
    }
}

#[test]
fn postgresql_s_own_message_is_kept() {
    let Some(url) = chat_storage::testing::service_url("CHAT_TEST_POSTGRES_URL") else {
        return;
    };
    let Some((server, _database)) = url.rsplit_once('/') else {
        panic!("{url:?} names no database");
    };
    let missing = format!("{server}/chat_no_such_database");
    let mut node = Node::start(&["--store", &missing], &[]);
    let seen = node.output_until_exit();
    assert!(!node.child.wait().unwrap().success());
    let errors: Vec<_> = seen.iter().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "once: {seen:#?}");
    assert!(
        errors[0].contains("chat_no_such_database") && errors[0].contains("does not exist"),
        "the server's own words: {}",
        errors[0]
    );
}

#[test]
fn help_hides_the_store_url_from_the_environment() {
    let out = Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .arg("--help")
        .env("CHAT_STORE", with_password("postgres://127.0.0.1/chat"))
        .env(
            "CHAT_REDIS_URL",
            format!("redis://:{SECRET}@127.0.0.1:6379"),
        )
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("CHAT_STORE"), "{help}");
    assert!(!help.contains(SECRET), "{help}");
}

#[test]
fn text_logs_to_a_pipe_carry_no_colour_codes() {
    let node = Node::start(&["--store", "memory:"], &[]);
    let seen = node.lines_until(|l| l.starts_with("chat-server listening"));
    assert!(
        seen.iter()
            .any(|l| l.contains("listening") && l.contains("INFO"))
    );
    for line in &seen {
        assert!(!line.contains('\u{1b}'), "an escape code in {line:?}");
    }
}

#[test]
fn json_logs_are_json_lines_only() {
    let node = Node::start(&["--store", "memory:", "--log-format", "json"], &[]);
    let mut seen = node.lines_until(|l| l.contains("\"listening\""));
    // Everything up to a graceful stop, so a banner printed after the log line is caught.
    let stopped = Command::new("kill")
        .args(["-TERM", &node.child.id().to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(stopped, "SIGTERM sent");
    seen.extend(node.lines_until(|l| l.contains("\"stopped\"")));
    for line in &seen {
        let parsed: Result<serde_json::Value, _> = serde_json::from_str(line);
        assert!(parsed.is_ok(), "not JSON: {line:?}");
    }
}

#[test]
fn an_invalid_log_filter_is_reported() {
    let node = Node::start(&["--store", "memory:"], &[("CHAT_LOG", "chat_server=loud")]);
    let seen = node.lines_until(|l| l.starts_with("chat-server listening"));
    assert!(
        seen.iter()
            .any(|l| l.contains("WARN") && l.contains("CHAT_LOG")),
        "no warning about CHAT_LOG: {seen:#?}"
    );
}

#[tokio::test]
async fn a_failed_log_in_is_a_warning_with_the_address() {
    let node = Node::start(&["--store", "memory:"], &[]);
    let addr = node.addr();
    let body = serde_json::json!({"username": "alice", "password": "correct horse"});
    let (status, _) = common::http(addr, "POST", "/v1/register", None, Some(body)).await;
    assert_eq!(status, 201);
    let wrong = serde_json::json!({"username": "alice", "password": "wrong horse"});
    let (status, _) = common::http(addr, "POST", "/v1/login", None, Some(wrong)).await;
    assert_eq!(status, 401);
    let seen = node.lines_until(|l| l.contains("failed log-in"));
    let warning = seen.last().unwrap();
    assert!(
        warning.contains("WARN") && warning.contains("127.0.0.1"),
        "{warning}"
    );
    assert!(
        !warning.contains("alice"),
        "no username in the log: {warning}"
    );
}

/// The value of the sample `series` (name and labels, as rendered) on a metrics page.
fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn metrics_are_described_zeroed_and_histograms() {
    let node = Node::start(&["--store", "memory:"], &[]);
    let addr = node.addr();
    let (status, page) = common::raw_get(addr, "/metrics").await;
    assert_eq!(status, 200, "{page}");

    // A fresh node: counters at 0, before anything happened.
    for series in [
        "chat_messages_in_total",
        "chat_login_failures_total",
        "chat_token_failures_total",
        "chat_store_failures_total",
        "chat_push_dropped_total",
        "chat_http_timeouts_total{kind=\"idle\"}",
        "chat_connections",
    ] {
        assert_eq!(sample(&page, series), Some(0.0), "{series} in {page}");
    }
    // Every sample has its HELP and TYPE lines (a histogram's _bucket, _sum and _count
    // belong to its name).
    let described = |name: &str| {
        page.contains(&format!("# HELP {name} ")) && page.contains(&format!("# TYPE {name} "))
    };
    for line in page
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name = line.split(['{', ' ']).next().unwrap();
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix).filter(|b| described(b)))
            .unwrap_or(name);
        assert!(described(base), "no HELP/TYPE for {name}: {page}");
    }
    // The process, measured.
    assert!(sample(&page, "process_resident_memory_bytes").unwrap() > 1e6);
    assert!(sample(&page, "process_open_fds").unwrap() >= 3.0);
    assert!(sample(&page, "process_threads").unwrap() >= 2.0);
    assert!(sample(&page, "process_cpu_seconds_total").is_some());

    // A failed log-in and a bad token: counted, with HTTP requests by route and status, and
    // request latency as a histogram with buckets.
    let body = serde_json::json!({"username": "alice", "password": "correct horse"});
    let (status, _) = common::http(addr, "POST", "/v1/register", None, Some(body)).await;
    assert_eq!(status, 201);
    let wrong = serde_json::json!({"username": "alice", "password": "wrong horse"});
    let (status, _) = common::http(addr, "POST", "/v1/login", None, Some(wrong)).await;
    assert_eq!(status, 401);
    let bad_token = "00".repeat(32);
    let (status, _) = common::http(addr, "GET", "/v1/devices", Some(&bad_token), None).await;
    assert_eq!(status, 401);
    let (_, page) = common::raw_get(addr, "/metrics").await;
    assert_eq!(
        sample(&page, "chat_login_failures_total"),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        sample(&page, "chat_token_failures_total"),
        Some(1.0),
        "{page}"
    );
    let login = "chat_http_requests_total{route=\"/v1/login\",method=\"POST\",status=\"401\"}";
    assert_eq!(sample(&page, login), Some(1.0), "{page}");
    let devices = "chat_http_requests_total{route=\"/v1/devices\",method=\"GET\",status=\"401\"}";
    assert_eq!(sample(&page, devices), Some(1.0), "{page}");
    assert!(
        page.contains("# TYPE chat_http_request_seconds histogram"),
        "{page}"
    );
    let count = "chat_http_request_seconds_count{route=\"/v1/register\"}";
    assert_eq!(sample(&page, count), Some(1.0), "{page}");
    let bucket = "chat_http_request_seconds_bucket{route=\"/v1/register\",le=\"+Inf\"}";
    assert_eq!(sample(&page, bucket), Some(1.0), "{page}");
    assert!(!page.contains("quantile="), "no summaries: {page}");
}

/// On SQLite the store's commits and the checkpoints behind them are both timed, in the
/// commit buckets (from 50 µs), so a commit tail can be set beside the checkpoints.
#[tokio::test]
async fn sqlite_commits_and_checkpoints_are_histograms() {
    let node = Node::start(&["--store", "sqlite://chat.db"], &[]);
    let addr = node.addr();
    let body = serde_json::json!({"username": "alice", "password": "correct horse"});
    let (status, _) = common::http(addr, "POST", "/v1/register", None, Some(body)).await;
    assert_eq!(status, 201);
    // The checkpointer runs after the commit, on its own thread: wait for it to be counted.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let page = loop {
        let (_, page) = common::raw_get(addr, "/metrics").await;
        if sample(&page, "chat_store_checkpoint_seconds_count").is_some_and(|n| n >= 1.0) {
            break page;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no checkpoint counted: {page}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(sample(&page, "chat_store_commit_seconds_count").unwrap() >= 1.0);
    for name in ["chat_store_commit_seconds", "chat_store_checkpoint_seconds"] {
        assert!(page.contains(&format!("# TYPE {name} histogram")), "{page}");
        let finest = format!("{name}_bucket{{le=\"0.00005\"}}");
        assert!(sample(&page, &finest).is_some(), "{finest} in {page}");
    }
}
