//! A device that comes back to a 10,000-message backlog (issue 19): how fast its client
//! stores the backlog (decrypt, commit, acknowledge each message), and whether the client's
//! runtime stalls meanwhile. The stall figure is the lateness of a 1 ms ticker on the client's
//! runtime (2 workers, `BACKLOG_WORKERS` for another number, 0 for a current-thread runtime):
//! the longest time no worker could run it, an upper bound on the longest poll (stable tokio
//! exposes no per-poll metrics). The node runs on a runtime of its own.
//!
//! `cargo bench -p chat-client --bench backlog` (`BACKLOG_MESSAGES`, default 10,000;
//! `BACKLOG_ENCRYPTED=1` for an encrypted store; `BACKLOG_CONCURRENCY`, default 200, sends
//! in flight while the backlog is made).
//!
//! It also times sends from the returning device, one at a time, while the backlog is stored
//! and when the client is idle afterwards (`BACKLOG_SENDS` of each, default 500): until
//! `queue_text` returns (encrypted, durable in the outbox) and until the recipient's client
//! reports the message (the frame left, the node stored and delivered it). `send_text` itself
//! would wait for the node's acknowledgement, which comes behind the backlog on the same
//! connection.

use std::time::{Duration, Instant};

use chat_client::{Client, Credentials, Event, SqliteStore};

const KEY: [u8; 32] = [0x42; 32];

fn main() {
    let messages: usize = std::env::var("BACKLOG_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let encrypted = std::env::var("BACKLOG_ENCRYPTED").is_ok_and(|v| v == "1");
    let concurrency: usize = std::env::var("BACKLOG_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let sends: usize = std::env::var("BACKLOG_SENDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);

    let node_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let config = chat_server::Config {
        listen: ([127, 0, 0, 1], 0).into(),
        store: "memory:".into(),
        argon2_memory_kib: 8,
        argon2_iterations: 1,
        auth_burst_per_address: 100_000,
        send_burst_per_account: 100_000,
        sends_per_account_per_second: 100_000.0,
        frame_burst: 100_000,
        frames_per_second: 100_000.0,
        ..chat_server::Config::default()
    };
    let node = node_runtime
        .block_on(chat_server::Server::bind(config))
        .expect("bind");
    let server = format!("http://{}", node.local_addr());
    node_runtime.spawn(node.run_until(std::future::pending()));

    let workers: usize = std::env::var("BACKLOG_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let runtime = match workers {
        0 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    }
    .enable_all()
    .build()
    .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bob.db");
    let open = |path: &std::path::Path| {
        if encrypted {
            SqliteStore::open_encrypted(path, &KEY).expect("store")
        } else {
            SqliteStore::open(path).expect("store")
        }
    };
    runtime.block_on(async {
        // Alice's store is durable too: making the backlog times 200 sends in flight against
        // one SQLite file.
        let alice = Client::builder(&server)
            .store(SqliteStore::open(dir.path().join("alice.db")).expect("store"))
            .register(&Credentials::new("alice", "correct horse"))
            .await
            .expect("alice");
        let bob = Client::builder(&server)
            .store(open(&path))
            .register(&Credentials::new("bob", "battery staple"))
            .await
            .expect("bob");
        let chat = alice.conversation(alice.open_direct(bob.user()).await.expect("open"));
        chat.send_text("hello").await.expect("first");
        // Bob has the session; now he is away while the backlog builds.
        bob.close().await;
        drop(bob);
        let sent = Instant::now();
        for chunk in (0..messages).collect::<Vec<_>>().chunks(concurrency) {
            let sends = chunk.iter().map(|n| {
                let chat = chat.clone();
                async move { chat.send_text(&format!("backlog message {n}")).await }
            });
            for r in futures::future::join_all(sends).await {
                r.expect("send");
            }
        }
        let took = sent.elapsed().as_secs_f64();
        println!(
            "backlog of {messages} sent in {took:.2} s ({:.0} sends/s, {concurrency} in flight)",
            messages as f64 / took
        );

        // The ticker: how late each 1 ms tick runs.
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let ticker = tokio::spawn(async move {
            let mut late = Vec::new();
            let mut next = Instant::now() + Duration::from_millis(1);
            loop {
                tokio::select! {
                    _ = &mut stopped => return late,
                    () = tokio::time::sleep_until(next.into()) => {
                        late.push(Instant::now().saturating_duration_since(next));
                        next = Instant::now() + Duration::from_millis(1);
                    }
                }
            }
        });
        let start = Instant::now();
        let bob = Client::builder(&server)
            .store(open(&path))
            .open()
            .await
            .expect("open");
        let mut events = bob.events();
        // Bob answers while his client stores the backlog: one send at a time.
        let reply = bob.conversation(chat.id());
        let (done, backlog_done) = tokio::sync::oneshot::channel::<()>();
        let busy_sends = tokio::spawn(answer(reply, alice.events(), sends, Some(backlog_done)));
        let mut got = 0;
        while got < messages {
            match tokio::time::timeout(Duration::from_secs(120), events.next()).await {
                Ok(Some(Event::Message(m))) if m.sender.user == alice.user() => got += 1,
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => panic!("backlog stopped at {got}"),
            }
        }
        let took = start.elapsed().as_secs_f64();
        let _ = done.send(());
        let _ = stop.send(());
        let (busy_queued, busy_arrived) = busy_sends.await.expect("sends");
        let (idle_queued, idle_arrived) =
            answer(bob.conversation(chat.id()), alice.events(), sends, None).await;
        let mut late = ticker.await.expect("ticker");
        late.sort();
        let at = |q: f64| {
            late.get(((late.len() as f64 * q) as usize).min(late.len() - 1))
                .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        };
        println!(
            "{} store: {messages} messages stored in {took:.2} s ({:.0} messages/s); \
             ticker lateness over {} ticks: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            if encrypted { "encrypted" } else { "plain" },
            messages as f64 / took,
            late.len(),
            at(0.5),
            at(0.99),
            at(1.0)
        );
        for (name, took) in [
            ("queued while storing the backlog", busy_queued),
            ("at the recipient while storing the backlog", busy_arrived),
            ("queued, idle", idle_queued),
            ("at the recipient, idle", idle_arrived),
        ] {
            println!("send {name}: {}", percentiles(took));
        }
        bob.close().await;
        alice.close().await;
    });
}

/// Sends `sends` texts one at a time (until `stop` fires, if given) and times each: until
/// `queue_text` returns (encrypted and durable in the outbox), and until the recipient's client
/// reports it. The first send is left out: it also fetches keys and starts a session.
async fn answer(
    chat: chat_client::Conversation,
    mut recipient: chat_client::Events,
    sends: usize,
    mut stop: Option<tokio::sync::oneshot::Receiver<()>>,
) -> (Vec<Duration>, Vec<Duration>) {
    let mut queued = Vec::new();
    let mut arrived = Vec::new();
    for n in 0..=sends {
        if stop.as_mut().is_some_and(|s| s.try_recv().is_ok()) {
            break;
        }
        let at = Instant::now();
        let key = chat.queue_text(&format!("reply {n}")).await.expect("queue");
        let q = at.elapsed();
        loop {
            match tokio::time::timeout(Duration::from_secs(120), recipient.next()).await {
                Ok(Some(Event::Message(m))) if m.client_key == key => break,
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => panic!("reply {n} never arrived"),
            }
        }
        if n > 0 {
            queued.push(q);
            arrived.push(at.elapsed());
        }
    }
    (queued, arrived)
}

/// "p50 / p99 / max" of `took`, in milliseconds.
fn percentiles(mut took: Vec<Duration>) -> String {
    took.sort();
    let at = |q: f64| {
        took.get(((took.len() as f64 * q) as usize).min(took.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    format!(
        "{} sends, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        took.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    )
}
