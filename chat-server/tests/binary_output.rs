//! What the `chat-server` binary prints, read from its pipes: the store's password never
//! (the URL shows `***`), no colour codes off a terminal, pure JSON lines with
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
        command
            .args(["--listen", "127.0.0.1:0"])
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
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_store_password_never_reaches_the_output() {
    let Ok(url) = std::env::var("CHAT_TEST_POSTGRES_URL") else {
        println!("skipped: CHAT_TEST_POSTGRES_URL is not set");
        return;
    };
    let Some((scheme, rest)) = url.split_once("://") else {
        panic!("CHAT_TEST_POSTGRES_URL is not a URL");
    };
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let with_password = format!("{scheme}://postgres:{SECRET}@{rest}");
    let node = Node::start(&["--store", &with_password], &[("CHAT_LOG", "debug")]);
    let seen = node.lines_until(|l| l.starts_with("chat-server listening"));
    for line in &seen {
        assert!(!line.contains(SECRET), "the password was printed: {line}");
    }
    let banner = seen.last().unwrap();
    assert!(banner.contains("postgres:***@"), "{banner}");
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
    let banner = node
        .lines_until(|l| l.starts_with("chat-server listening"))
        .pop()
        .unwrap();
    let addr: std::net::SocketAddr = banner
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .expect("the banner names the address");
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
