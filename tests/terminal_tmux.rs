//! The terminal client used as a person would: `examples/terminal` runs in tmux panes (a real
//! terminal, so keys are read one at a time), keys are typed with `send-keys`, and what the
//! screens show is read back with `capture-pane`, against a node on 127.0.0.1 serving TLS with
//! a private certificate (trusted with `--ca-file`, by the echo bot too).
//!
//! It needs tmux and the example built, so it is ignored by a plain `cargo test`; `.ci/run`
//! runs it:
//!
//! ```sh
//! cargo build --example terminal --example echo_bot
//! cargo test --test terminal_tmux -- --ignored
//! ```
//!
//! tmux has no event for "this text appeared", so the waits poll the screen every 50 ms, each
//! bounded by a timeout.
#![cfg(unix)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use chat::client::{Client, Credentials, Server};
use chat::server::TlsConfig;
use common::{PASSWORD, TestServer, config};

/// How long one screen may take to show what is expected.
const SCREEN_WAIT: Duration = Duration::from_secs(30);

/// A tmux server of this test's own (its own socket), killed when dropped.
struct Tmux {
    socket: String,
    config: PathBuf,
}

impl Tmux {
    fn new(dir: &Path) -> Self {
        // Panes stay after their program ended, so its last words can be read.
        let config = dir.join("tmux.conf");
        std::fs::write(
            &config,
            "set -g remain-on-exit on\nset -g history-limit 5000\n",
        )
        .expect("tmux config");
        Self {
            socket: format!("chat-terminal-test-{}", std::process::id()),
            config,
        }
    }

    async fn tmux(&self, args: &[&str]) -> String {
        let out = tokio::process::Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .arg("-f")
            .arg(&self.config)
            .args(args)
            .output()
            .await
            .expect("run tmux");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts `command` in a new 150x50 pane named `name`.
    async fn start(&self, name: &str, command: &[&str]) {
        let line = command
            .iter()
            .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
            .collect::<Vec<_>>()
            .join(" ");
        self.tmux(&[
            "new-session",
            "-d",
            "-s",
            name,
            "-x",
            "150",
            "-y",
            "50",
            &line,
        ])
        .await;
    }

    /// Types `text` (without Enter).
    async fn type_text(&self, name: &str, text: &str) {
        self.tmux(&["send-keys", "-t", name, "-l", text]).await;
    }

    /// Presses keys such as `Enter` or `C-u`.
    async fn press(&self, name: &str, key: &str) {
        self.tmux(&["send-keys", "-t", name, key]).await;
    }

    /// Types a line and presses Enter.
    async fn line(&self, name: &str, text: &str) {
        self.type_text(name, text).await;
        self.press(name, "Enter").await;
    }

    /// The pane's screen and scrollback, wrapped lines joined.
    async fn screen(&self, name: &str) -> String {
        self.tmux(&["capture-pane", "-p", "-J", "-S", "-", "-t", name])
            .await
    }

    /// Waits until the screen shows `text`; returns the screen.
    async fn wait_for(&self, name: &str, text: &str) -> String {
        self.wait_until(name, text, |s| s.contains(text)).await
    }

    async fn wait_until(&self, name: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
        self.wait_within(SCREEN_WAIT, name, what, ok).await
    }

    async fn wait_within(
        &self,
        wait: Duration,
        name: &str,
        what: &str,
        ok: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let screen = self.screen(name).await;
            if ok(&screen) {
                return screen;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "{name}'s screen never showed {what:?} within {wait:?}; it shows:\n{screen}"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the program in the pane has ended.
    async fn wait_ended(&self, name: &str) {
        let deadline = tokio::time::Instant::now() + SCREEN_WAIT;
        loop {
            let dead = self
                .tmux(&["display-message", "-p", "-t", name, "#{pane_dead}"])
                .await;
            if dead.trim() == "1" {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name}'s program did not end:\n{}",
                self.screen(name).await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = std::process::Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .arg("kill-server")
            .output();
    }
}

/// An example binary, built next to this test's own (`target/debug/examples/NAME`).
fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let target = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let binary = target.join("examples").join(name);
    assert!(
        binary.exists(),
        "{} is missing: cargo build --example {name}",
        binary.display()
    );
    binary
}

/// The last line with something on it: the prompt line while the client runs.
fn prompt_line(screen: &str) -> &str {
    screen
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
}

/// The number after `prefix` on the screen (the last one shown).
fn number_after(screen: &str, prefix: &str) -> String {
    let at = screen.rfind(prefix).expect("prefix on the screen") + prefix.len();
    screen[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect()
}

/// What no screen may show: numbers for people, Rust debug output, raw error codes.
fn assert_in_words(name: &str, screen: &str) {
    for bad in [
        "user 1",
        "user 2",
        "user 3",
        "user 4",
        "Server {",
        "code:",
        "(26)",
        "Some(",
        "Added",
        "Removed",
        "Created",
        "unsupported",
        "GroupChange",
    ] {
        assert!(
            !screen.contains(bad),
            "{name}'s screen shows {bad:?}:\n{screen}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "drives examples/terminal in tmux: needs tmux and `cargo build --example terminal \
            --example echo_bot`; run with --ignored (.ci/run does)"]
async fn a_person_chats_in_the_terminal_client() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tmux = Tmux::new(dir.path());
    let bin = example_binary("terminal");
    let bin = bin.to_str().expect("utf-8 path");
    let bot = example_binary("echo_bot");
    let bot = bot.to_str().expect("utf-8 path");
    let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();

    // A node on TLS with a certificate no public authority vouches for.
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).expect("cert");
    std::fs::write(path("cert.pem"), cert.cert.pem()).expect("cert");
    std::fs::write(path("key.pem"), cert.signing_key.serialize_pem()).expect("key");
    let mut cfg = config("memory:");
    cfg.tls = Some(TlsConfig {
        cert: path("cert.pem").into(),
        key: path("key.pem").into(),
    });
    // The default presence window: 3 heartbeats of 5 s.
    cfg.heartbeat_interval_ms = 5_000;
    cfg.missed_heartbeats = 3;
    let node = TestServer::start(cfg).await;
    let url = format!("https://127.0.0.1:{}", node.addr.port());
    let ca = path("cert.pem");

    // Carol has an account (made with the SDK); she is not online.
    let server = Server::parse(&url)
        .and_then(|s| s.with_root_certificates(cert.cert.pem().as_bytes()))
        .expect("server");
    let carol = Client::builder(server)
        .device_name("phone")
        .register(&Credentials::new("carol", PASSWORD))
        .await
        .expect("carol");

    // Without --ca-file the private certificate is refused, in words.
    let dave_store = path("dave.db");
    tmux.start(
        "untrusted",
        &[bin, "--store", &dave_store, &url, "dave", PASSWORD],
    )
    .await;
    let screen = tmux.wait_for("untrusted", "--ca-file PEM").await;
    assert!(screen.contains("UnknownIssuer"), "{screen}");

    // Alice and Bob register (each knows their own name at once).
    let alice_store = path("alice.db");
    let bob_store = path("bob.db");
    tmux.start(
        "alice",
        &[
            bin,
            "--register",
            "--ca-file",
            &ca,
            "--store",
            &alice_store,
            &url,
            "alice",
            PASSWORD,
        ],
    )
    .await;
    tmux.start(
        "bob",
        &[
            bin,
            "--register",
            "--ca-file",
            &ca,
            "--store",
            &bob_store,
            &url,
            "bob",
            PASSWORD,
        ],
    )
    .await;
    tmux.wait_for("alice", "signed in as alice (@alice)").await;
    tmux.wait_for("alice", "(connected, up to date)").await;
    tmux.wait_for("bob", "(connected, up to date)").await;
    tmux.line("bob", "/name Bob Builder").await;
    tmux.wait_for("bob", "you are now called Bob Builder").await;

    // A wrong password is a failed log-in, said in words, and leaves no store behind.
    let wrong_store = path("wrong.db");
    tmux.start(
        "wrong",
        &[
            bin,
            "--ca-file",
            &ca,
            "--store",
            &wrong_store,
            &url,
            "alice",
            "not her password",
        ],
    )
    .await;
    let screen = tmux
        .wait_for("wrong", "wrong username or password for alice")
        .await;
    assert!(!screen.contains("conflict"), "{screen}");
    tmux.wait_ended("wrong").await;
    assert!(!Path::new(&wrong_store).exists(), "an empty store was left");

    // Alice opens the conversation with Bob: his display name, not a number.
    tmux.line("alice", "/open bob").await;
    let screen = tmux.wait_for("alice", "— Bob Builder (conversation ").await;
    let direct = number_after(&screen, "— Bob Builder (conversation ");
    tmux.wait_for("alice", "Bob Builder is online").await;
    tmux.line("alice", "hello bob").await;
    tmux.wait_for("bob", "alice: hello bob").await;
    tmux.line("bob", &format!("/to {direct}")).await;
    tmux.wait_for("bob", "— alice (conversation ").await;

    // Typing is sent before Enter and shown on Bob's prompt line.
    tmux.type_text("alice", "still typ").await;
    tmux.wait_for("bob", "(alice is typing…)").await;
    tmux.press("alice", "C-u").await;
    tmux.wait_until("bob", "the typing indicator gone", |s| {
        prompt_line(s).trim_end() == "alice>"
    })
    .await;

    // A failed /to says why and keeps the current conversation: the next line reaches Bob.
    tmux.line("alice", "/to 999").await;
    let screen = tmux.wait_for("alice", "cannot open conversation 999").await;
    assert!(screen.contains("still in Bob Builder"), "{screen}");
    tmux.line("alice", "after the failed switch").await;
    tmux.wait_for("bob", "alice: after the failed switch").await;

    // A file, sent end-to-end encrypted and saved by Bob.
    std::fs::write(path("note.txt"), "a note for bob\n").expect("note");
    tmux.line("alice", &format!("/send-file {}", path("note.txt")))
        .await;
    let screen = tmux.wait_for("bob", "alice sent a file: note.txt").await;
    let before = &screen[..screen.rfind(" alice sent a file: note.txt").expect("line")];
    let id: String = before
        .rsplit('#')
        .next()
        .expect("message number")
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let saved = path("saved.txt");
    tmux.line("bob", &format!("/save {id} {saved}")).await;
    tmux.wait_for("bob", &format!("saved #{id} to")).await;
    assert_eq!(
        std::fs::read_to_string(&saved).expect("saved file"),
        "a note for bob\n"
    );

    // The echo bot trusts the node through --ca-file too, and answers.
    let bot_store = path("bot.db");
    tmux.start(
        "bot",
        &[
            bot,
            "--register",
            "--ca-file",
            &ca,
            "--store",
            &bot_store,
            &url,
            "echo_bot",
            PASSWORD,
        ],
    )
    .await;
    tmux.wait_for("bot", "connected, up to date").await;
    tmux.line("alice", "/open echo_bot").await;
    tmux.wait_for("alice", "— echo_bot (conversation ").await;
    tmux.line("alice", "ping").await;
    tmux.wait_for("alice", "echo_bot: ping").await;

    // A group: the changes read as sentences, live and in the history.
    tmux.line("alice", "/group bob carol").await;
    let screen = tmux.wait_for("alice", "* you created group ").await;
    let group = number_after(&screen, "* you created group ");
    tmux.wait_for("bob", "* alice created the group with you and carol")
        .await;
    tmux.line("alice", "/remove carol").await;
    tmux.wait_for("alice", "* you removed carol").await;
    tmux.wait_for("bob", "* alice removed carol").await;
    tmux.line("bob", &format!("/to {group}")).await;
    let header = format!("(conversation {group}) —");
    let screen = tmux
        .wait_until("bob", "the group's history", |s| {
            s.rsplit(&header).next().is_some_and(|history| {
                s.contains(&header) && history.contains("* alice removed carol")
            })
        })
        .await;
    let history = screen.rsplit(&header).next().expect("history");
    assert!(
        history.contains("* alice created the group with you and carol"),
        "{history}"
    );

    for name in ["alice", "bob"] {
        assert_in_words(name, &tmux.screen(name).await);
    }

    // Bob quits: Alice sees him offline at once, well within the 15 s presence window.
    tmux.line("bob", "/quit").await;
    tmux.wait_within(
        Duration::from_secs(5),
        "alice",
        "Bob Builder is offline",
        |s| s.contains("Bob Builder is offline"),
    )
    .await;
    tmux.wait_ended("bob").await;
    tmux.press("alice", "C-d").await;
    drop(carol);
    node.shutdown().await;
}
