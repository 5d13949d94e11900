//! The `chat-server` binary keeps the store's password out of everything it prints: started
//! on PostgreSQL with a password in the URL (trust authentication ignores it), its banner and
//! logs show the URL with `***`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const SECRET: &str = "hunter2-never-printed";

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
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .args(["--listen", "127.0.0.1:0", "--store", &with_password])
        .env("CHAT_LOG", "debug")
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
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
    drop(tx);
    let mut seen = Vec::new();
    let banner = loop {
        match lines.recv_timeout(Duration::from_secs(30)) {
            Ok(line) if line.starts_with("chat-server listening") => break line,
            Ok(line) => seen.push(line),
            Err(_) => panic!("no banner; output so far: {seen:#?}"),
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    seen.push(banner.clone());
    seen.extend(lines.try_iter());
    for line in &seen {
        assert!(!line.contains(SECRET), "the password was printed: {line}");
    }
    assert!(banner.contains("postgres:***@"), "{banner}");
}
