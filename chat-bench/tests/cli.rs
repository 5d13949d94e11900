//! The `chat-bench` command line, run as a user would: help for every option, durations
//! with units only, `--server-pid` checked, and a run that fails saying why with a non-zero
//! exit (a reused `--prefix`), against a real node on 127.0.0.1.

use std::process::Output;

use tokio::process::Command;

/// Runs chat-bench with `args`, failing the test after two minutes.
async fn bench(args: &[&str]) -> Output {
    let run = Command::new(env!("CARGO_BIN_EXE_chat-bench"))
        .args(args)
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(std::time::Duration::from_secs(120), run)
        .await
        .expect("chat-bench finished in time")
        .expect("chat-bench ran")
}

fn text(output: &[u8]) -> String {
    String::from_utf8_lossy(output).into_owned()
}

#[tokio::test]
async fn every_option_has_help() {
    let mut checked = 0;
    for command in [
        vec!["--help"],
        vec!["idle", "--help"],
        vec!["one-to-one", "--help"],
        vec!["ramp", "--help"],
        vec!["group", "--help"],
        vec!["drain", "--help"],
        vec!["heartbeat-floor", "--help"],
        vec!["disk-floor", "--help"],
    ] {
        let out = bench(&command).await;
        assert!(out.status.success(), "{command:?}");
        let help = text(&out.stdout);
        // An option line: `  --name <VALUE>  Help text [default: …]`; clap leaves the text
        // out when there is none.
        for line in help.lines().filter(|l| l.trim_start().starts_with("--")) {
            let trimmed = line.trim_start();
            let after = trimmed
                .split_once("  ")
                .map(|(_, rest)| rest.trim())
                .unwrap_or("");
            let described = !after.is_empty() && !after.starts_with("[default");
            assert!(described, "no help for {trimmed:?} in {command:?}:\n{help}");
            checked += 1;
        }
    }
    assert!(checked > 20, "{checked} options seen");
}

#[tokio::test]
async fn durations_without_a_unit_are_refused() {
    let out = bench(&["one-to-one", "--duration", "10"]).await;
    assert_eq!(out.status.code(), Some(2), "a usage error");
    let err = text(&out.stderr);
    assert!(err.contains("no unit") && err.contains("10s"), "{err}");
}

#[tokio::test]
async fn a_server_pid_that_is_not_chat_server_is_refused() {
    // This test's own process, and one that does not exist (above any pid_max).
    for pid in [std::process::id().to_string(), "2147483647".to_owned()] {
        let out = bench(&[
            "--server",
            "127.0.0.1:9",
            "--server-pid",
            &pid,
            "one-to-one",
            "--users",
            "2",
        ])
        .await;
        assert!(!out.status.success(), "pid {pid}");
        let err = text(&out.stderr);
        assert!(err.contains(&format!("--server-pid {pid}")), "{err}");
    }
}

#[tokio::test]
async fn a_reused_prefix_fails_with_the_reason() {
    let config = chat_server::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        store: "memory:".into(),
        argon2_memory_kib: 8,
        argon2_iterations: 1,
        ..chat_server::Config::default()
    };
    let server = chat_server::Server::bind(config).await.unwrap();
    let addr = server.local_addr().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let node = tokio::spawn(server.run_until(async {
        let _ = stopped.await;
    }));
    let run = [
        "--server",
        &addr,
        "--prefix",
        "reused",
        "one-to-one",
        "--users",
        "4",
        "--rate",
        "20",
        "--duration",
        "1s",
    ];
    let first = bench(&run).await;
    assert!(
        first.status.success(),
        "a fresh prefix measures: {}",
        text(&first.stderr)
    );
    // The same accounts again: they have the first run's devices too, so every send is
    // refused as stale_devices.
    let second = bench(&run).await;
    assert!(!second.status.success(), "{}", text(&second.stdout));
    let err = text(&second.stderr);
    assert!(
        err.contains("acknowledged") || err.contains("sends failed"),
        "{err}"
    );
    assert!(err.contains("--prefix"), "the reason is given: {err}");
    let _ = stop.send(());
    node.await.unwrap().unwrap();
}

#[tokio::test]
async fn the_heartbeat_floor_runs_its_own_server_and_reports() {
    let out = bench(&[
        "heartbeat-floor",
        "--connections",
        "20",
        "--hold",
        "1s",
        "--heartbeat",
        "100ms",
    ])
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let report: serde_json::Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .expect("a JSON report line");
    assert_eq!(report["workload"], "heartbeat-floor");
    assert_eq!(report["connections"], 20);
    let beats = report["heartbeats"].as_u64().expect("heartbeats");
    // 20 connections, one every 100 ms for a second (phases spread over the first 100 ms).
    assert!((100..=240).contains(&beats), "{beats} heartbeats");
    assert!(report["floor_cpu_us_per_heartbeat"].is_number(), "{report}");
}
