//! Storage benchmark: `cargo bench -p chat-storage --bench store`.
//!
//! For SQLite, and for PostgreSQL when `CHAT_TEST_POSTGRES_URL` is set:
//! - durable 1:1 appends/s with 1, 16 and 256 concurrent writers (each writer its own
//!   one-to-one conversation; every append is acknowledged only after its commit);
//! - 100-member group appends/s (one message and 99 inbox entries each; 16 writers);
//! - inbox catch-up entries/s for a device 100,000 messages behind (pages of 1,000);
//! - latency of 1:1 appends offered at a steady 2,000/s among 500 conversations (one
//!   started every 0.5 ms whether or not earlier ones were answered, as a node's users
//!   send): the store's share of the node's one-to-one latency target, without the network,
//!   the gateway or a load generator on the same cores.
//!
//! `CHAT_BENCH_ONLY=sqlite` or `=postgres` runs one backend; `CHAT_BENCH_PACED_ONLY=1` only
//! the paced latency case; `CHAT_BENCH_SQLITE_SYNC=os` runs SQLite with
//! `Synchronous::Normal` and `CHAT_BENCH_SQLITE_WAL_MIB` sets its WAL bound;
//! `CHAT_BENCH_PG_APPENDERS` overrides `PostgresOptions::appenders` (default 2).
//!
//! Each figure is the median of `CHAT_BENCH_RUNS` runs (default 3) of `CHAT_BENCH_SECS`
//! seconds each (default 2); the paced latency runs `CHAT_BENCH_PACED_SECS` (default 10)
//! each and reports the median run's p50, p99 and maximum. Prints a table and one JSON line.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chat_core::limits::{MAX_GROUP_MEMBERS, MAX_SYNC_PAGE};
use chat_core::{ConversationId, DeviceAddress, InboxPos, NewMessage, Recipient, Store, Timestamp};
use chat_storage::testing::{self, NOW};
use chat_storage::{PostgresOptions, PostgresStore, SqliteOptions, SqliteStore, Synchronous};

/// The SQLite store under test, to report its group-commit batch size.
static LAST_SQLITE: std::sync::Mutex<Option<Arc<SqliteStore>>> = std::sync::Mutex::new(None);

/// The PostgreSQL store under test (URL and schema), for the bulk backlog fill.
static LAST_PG: std::sync::Mutex<Option<(String, String)>> = std::sync::Mutex::new(None);

const BODY: usize = 256;
const HEADER: usize = 96;
const BEHIND: usize = 100_000;

struct Settings {
    runs: usize,
    secs: f64,
    paced_secs: f64,
}

/// The paced case's offered rate (appends/s) and conversations.
const PACED_RATE: f64 = 2_000.0;
const PACED_PAIRS: usize = 500;

#[derive(Debug)]
struct Figure {
    backend: &'static str,
    case: &'static str,
    writers: usize,
    per_sec: f64,
    unit: &'static str,
}

/// Latency of appends offered at a steady rate: the median run's quantiles, milliseconds.
#[derive(Debug)]
struct Paced {
    backend: &'static str,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

fn main() {
    let settings = Settings {
        runs: env_or("CHAT_BENCH_RUNS", 3.0) as usize,
        secs: env_or("CHAT_BENCH_SECS", 2.0),
        paced_secs: env_or("CHAT_BENCH_PACED_SECS", 10.0),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let only = std::env::var("CHAT_BENCH_ONLY").ok();
    let mut figures = Vec::new();
    let mut paced = Vec::new();
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut n = 0;
        let sqlite = || {
            n += 1;
            let path = dir.path().join(format!("bench{n}.db"));
            async move {
                let mut options = SqliteOptions::default();
                if std::env::var("CHAT_BENCH_SQLITE_SYNC").as_deref() == Ok("os") {
                    options = options.synchronous(Synchronous::Normal);
                }
                if let Some(mib) = env_usize("CHAT_BENCH_SQLITE_WAL_MIB") {
                    options = options.max_wal_bytes(mib as u64 * 1024 * 1024);
                }
                let store = SqliteStore::open(path, options).await.expect("open");
                let store = Arc::new(store);
                *LAST_SQLITE.lock().expect("lock") = Some(Arc::clone(&store));
                store as Arc<dyn Store>
            }
        };
        if only.as_deref().is_none_or(|b| b == "sqlite") {
            let (f, p) = run_backend("sqlite", sqlite, &settings).await;
            figures.extend(f);
            paced.push(p);
            *LAST_SQLITE.lock().expect("lock") = None;
        }

        match std::env::var("CHAT_TEST_POSTGRES_URL") {
            Ok(url) if !url.is_empty() && only.as_deref().is_none_or(|b| b == "postgres") => {
                let schema = format!("chat_bench_{}", std::process::id());
                let mut n = 0;
                let postgres = || {
                    n += 1;
                    let (url, schema) = (url.clone(), format!("{schema}_{n}"));
                    async move {
                        *LAST_PG.lock().expect("lock") = Some((url.clone(), schema.clone()));
                        let mut options = PostgresOptions::default().schema(schema);
                        if let Some(n) = env_usize("CHAT_BENCH_PG_APPENDERS") {
                            options = options.appenders(n);
                        }
                        let store = PostgresStore::connect(&url, options)
                            .await
                            .expect("connect");
                        Arc::new(store) as Arc<dyn Store>
                    }
                };
                let (f, p) = run_backend("postgres", postgres, &settings).await;
                figures.extend(f);
                paced.push(p);
                *LAST_PG.lock().expect("lock") = None;
                drop_bench_schemas(&url, &schema).await;
            }
            _ => println!("postgres: skipped (set CHAT_TEST_POSTGRES_URL to include it)"),
        }
    });

    println!("\n| backend  | case                      | writers | per second          |");
    println!("|----------|---------------------------|---------|---------------------|");
    for f in &figures {
        println!(
            "| {:<8} | {:<25} | {:>7} | {:>10.0} {:<8} |",
            f.backend, f.case, f.writers, f.per_sec, f.unit
        );
    }
    for p in &paced {
        let case = format!("1:1 latency at {PACED_RATE}/s");
        let quantiles = format!(
            "p50 {:.2} p99 {:.2} max {:.1} ms",
            p.p50_ms, p.p99_ms, p.max_ms
        );
        println!(
            "| {:<8} | {case:<25} | {PACED_PAIRS:>7} | {quantiles} |",
            p.backend
        );
    }
    let paced_json: Vec<String> = paced
        .iter()
        .map(|p| {
            format!(
                "{{\"backend\":\"{}\",\"rate\":{PACED_RATE},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"max_ms\":{:.3}}}",
                p.backend, p.p50_ms, p.p99_ms, p.max_ms
            )
        })
        .collect();
    let json: Vec<String> = figures
        .iter()
        .map(|f| {
            format!(
                "{{\"backend\":\"{}\",\"case\":\"{}\",\"writers\":{},\"per_sec\":{:.0},\"unit\":\"{}\"}}",
                f.backend, f.case, f.writers, f.per_sec, f.unit
            )
        })
        .collect();
    println!(
        "{{\"bench\":\"chat-storage\",\"runs\":{},\"secs\":{},\"results\":[{}],\"paced\":[{}]}}",
        settings.runs,
        settings.secs,
        json.join(","),
        paced_json.join(",")
    );
}

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn env_or(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn run_backend<F, Fut>(
    backend: &'static str,
    mut fresh: F,
    settings: &Settings,
) -> (Vec<Figure>, Paced)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Arc<dyn Store>>,
{
    let mut figures = Vec::new();
    let store = fresh().await;
    let pairs = direct_pairs(&*store, PACED_PAIRS).await;
    let before = sqlite_stats();
    let cpu_before = writer_cpu_secs();
    let mut runs = Vec::new();
    for _ in 0..settings.runs.max(1) {
        runs.push(paced_run(&store, &pairs, settings.paced_secs).await);
    }
    let each: Vec<String> = runs
        .iter()
        .map(|(p50, p99, max)| format!("{p50:.2}/{p99:.2}/{max:.1}"))
        .collect();
    // The median run by p99, reported whole.
    runs.sort_by(|a, b| a.1.total_cmp(&b.1));
    let (p50_ms, p99_ms, max_ms) = runs[runs.len() / 2];
    println!(
        "{backend}: 1:1 appends offered at {PACED_RATE}/s: p50 {p50_ms:.2} ms, p99 {p99_ms:.2} ms, max {max_ms:.1} ms{}",
        batch_note(before, cpu_before)
    );
    println!("  runs (p50/p99/max ms): {}", each.join(", "));
    let paced = Paced {
        backend,
        p50_ms,
        p99_ms,
        max_ms,
    };
    if std::env::var_os("CHAT_BENCH_PACED_ONLY").is_some() {
        return (figures, paced);
    }

    for writers in [1, 16, 256] {
        let store = fresh().await;
        let pairs = direct_pairs(&*store, writers).await;
        let before = sqlite_stats();
        let cpu_before = writer_cpu_secs();
        let per_sec = median(settings.runs, || append_for(&store, &pairs, settings.secs)).await;
        println!(
            "{backend}: 1:1 appends, {writers} writers: {per_sec:.0}/s{}",
            batch_note(before, cpu_before)
        );
        figures.push(Figure {
            backend,
            case: "append_1to1",
            writers,
            per_sec,
            unit: "msg",
        });
    }

    let store = fresh().await;
    let group = group_of(&*store, MAX_GROUP_MEMBERS).await;
    let senders: Vec<(ConversationId, DeviceAddress, Vec<DeviceAddress>)> = group
        .1
        .iter()
        .take(16)
        .map(|&s| {
            (
                group.0,
                s,
                group.1.iter().copied().filter(|&d| d != s).collect(),
            )
        })
        .collect();
    let before = sqlite_stats();
    let cpu_before = writer_cpu_secs();
    let per_sec = median(settings.runs, || {
        append_for(&store, &senders, settings.secs)
    })
    .await;
    println!(
        "{backend}: 100-member group appends, 16 writers: {per_sec:.0}/s{}",
        batch_note(before, cpu_before)
    );
    figures.push(Figure {
        backend,
        case: "append_group_100",
        writers: 16,
        per_sec,
        unit: "msg",
    });

    let store = fresh().await;
    let pairs = direct_pairs(&*store, 1).await;
    let reader = pairs[0].2[0];
    let started = Instant::now();
    let pg = LAST_PG.lock().expect("lock").clone();
    let how = match pg {
        // Appends to one device serialise on its inbox head row lock and its commit, so
        // building a 100,000 backlog through `append` would take minutes: write the rows
        // directly instead (the backlog is only the setup; the reads are measured).
        Some((url, schema)) => {
            store
                .append(message(pairs[0].0, pairs[0].1, &pairs[0].2))
                .await
                .expect("append");
            bulk_fill_postgres(&url, &schema, reader, BEHIND).await;
            "bulk SQL"
        }
        None => {
            fill(&store, &pairs[0], BEHIND).await;
            "256 concurrent appends"
        }
    };
    println!(
        "{backend}: wrote {BEHIND} messages to one device in {:.1}s ({how})",
        started.elapsed().as_secs_f64()
    );
    let per_sec = median(settings.runs, || catch_up(&store, reader)).await;
    println!("{backend}: catch-up of {BEHIND} entries: {per_sec:.0} entries/s");
    figures.push(Figure {
        backend,
        case: "inbox_catch_up_100k",
        writers: 1,
        per_sec,
        unit: "entry",
    });
    (figures, paced)
}

/// The counters of the SQLite store under test, if the backend is SQLite.
fn sqlite_stats() -> Option<(u64, u64)> {
    let store = LAST_SQLITE.lock().expect("lock");
    store
        .as_ref()
        .map(|s| (s.stats().commits, s.stats().writes))
}

/// The average group-commit batch since `before`, for SQLite, and the writer thread's CPU
/// time per write: a figure that does not depend on what else the machine is running.
fn batch_note(before: Option<(u64, u64)>, cpu_before: Option<WriterTicks>) -> String {
    match (before, sqlite_stats()) {
        (Some((c0, w0)), Some((c1, w1))) => {
            let writes = (w1 - w0).max(1) as f64;
            let cpu = match (cpu_before, writer_cpu_secs()) {
                (Some(a), Some(b)) => {
                    format!(
                        ", writer CPU {:.1} µs per write",
                        cpu_since(&a, &b) * 1e6 / writes
                    )
                }
                _ => String::new(),
            };
            format!(
                " ({} commits, {:.1} writes per commit{cpu})",
                c1 - c0,
                writes / (c1 - c0).max(1) as f64
            )
        }
        _ => String::new(),
    }
}

/// CPU clock ticks (user and system) used so far by each SQLite writer thread of this
/// process, by thread ID.
type WriterTicks = std::collections::BTreeMap<u64, u64>;

/// CPU seconds the writer threads used between two readings. Only threads alive at the
/// second reading count: the writer of a store dropped meanwhile (still closing, which
/// checkpoints its WAL, at the first reading) would otherwise make the figure too low.
fn cpu_since(before: &WriterTicks, after: &WriterTicks) -> f64 {
    const TICKS_PER_SEC: f64 = 100.0;
    let ticks: u64 = after
        .iter()
        .map(|(tid, t)| t - before.get(tid).copied().unwrap_or(0).min(*t))
        .sum();
    ticks as f64 / TICKS_PER_SEC
}

/// The ticks of every SQLite writer thread of this process, from /proc (Linux); `None`
/// elsewhere.
fn writer_cpu_secs() -> Option<WriterTicks> {
    let mut ticks = WriterTicks::new();
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let path = task.ok()?.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if !comm.starts_with("chat-sqlite-wri") {
            continue;
        }
        let Some(tid) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse().ok())
        else {
            continue;
        };
        // The thread may have ended since the directory was listed.
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
            continue;
        };
        // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
        let rest = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let used = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        ticks.insert(tid, used);
    }
    Some(ticks)
}

async fn median<F, Fut>(runs: usize, mut run: F) -> f64
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = f64>,
{
    let mut rates = Vec::new();
    for _ in 0..runs.max(1) {
        rates.push(run().await);
    }
    let each: Vec<String> = rates.iter().map(|r| format!("{r:.0}")).collect();
    println!("  runs: {}", each.join(", "));
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

/// `n` one-to-one conversations, each with a sending device and one receiving device.
async fn direct_pairs(
    store: &dyn Store,
    n: usize,
) -> Vec<(ConversationId, DeviceAddress, Vec<DeviceAddress>)> {
    let mut pairs = Vec::with_capacity(n);
    for _ in 0..n {
        let (a, da) = testing::user_with_devices(store, 1).await;
        let (b, db) = testing::user_with_devices(store, 1).await;
        let conv = store.open_direct(a, b, NOW).await.expect("direct").id;
        pairs.push((conv, da[0], db));
    }
    pairs
}

/// A group of `members` users with one device each.
async fn group_of(store: &dyn Store, members: usize) -> (ConversationId, Vec<DeviceAddress>) {
    let mut users = Vec::with_capacity(members);
    let mut devices = Vec::with_capacity(members);
    for _ in 0..members {
        let (u, d) = testing::user_with_devices(store, 1).await;
        users.push(u);
        devices.push(d[0]);
    }
    let conv = store
        .create_group(users[0], &users[1..], members, NOW)
        .await
        .expect("group")
        .id;
    (conv, devices)
}

fn message(conv: ConversationId, sender: DeviceAddress, to: &[DeviceAddress]) -> NewMessage {
    NewMessage {
        conversation: conv,
        sender,
        client_key: testing::client_key(),
        body: Bytes::from(vec![0xa5; BODY]),
        recipients: to
            .iter()
            .map(|&device| Recipient {
                device,
                header: Bytes::from(vec![0x5a; HEADER]),
            })
            .collect(),
        // The time of the append, as the gateway stamps it: entries then go to the right
        // edge of `inbox_by_time`, as in production, not to a random place per device.
        sent_at: now(),
    }
}

/// The wall clock in milliseconds.
fn now() -> Timestamp {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp::from_millis(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
}

/// One writer task per entry of `writers`, appending back to back for `secs` seconds;
/// returns acknowledged appends per second.
async fn append_for(
    store: &Arc<dyn Store>,
    writers: &[(ConversationId, DeviceAddress, Vec<DeviceAddress>)],
    secs: f64,
) -> f64 {
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(secs);
    let mut tasks = tokio::task::JoinSet::new();
    for (conv, sender, to) in writers.iter().cloned() {
        let store = Arc::clone(store);
        tasks.spawn(async move {
            let mut done = 0u64;
            while Instant::now() < deadline {
                store
                    .append(message(conv, sender, &to))
                    .await
                    .expect("append");
                done += 1;
            }
            done
        });
    }
    let mut total = 0;
    while let Some(done) = tasks.join_next().await {
        total += done.expect("writer");
    }
    total as f64 / started.elapsed().as_secs_f64()
}

/// Starts one append every 1/[`PACED_RATE`] s for `secs` seconds, whether or not earlier
/// ones were answered, taking the pairs in a scattered order (consecutive pairs have
/// neighbouring IDs, so in order they would share B-tree pages a random mix of users does
/// not); returns the p50, p99 and maximum of start-to-acknowledged, in milliseconds.
async fn paced_run(
    store: &Arc<dyn Store>,
    pairs: &[(ConversationId, DeviceAddress, Vec<DeviceAddress>)],
    secs: f64,
) -> (f64, f64, f64) {
    // Coprime to PACED_PAIRS: every pair once per round, neighbours far apart.
    const STRIDE: usize = 211;
    let total = (PACED_RATE * secs) as usize;
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / PACED_RATE));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..total {
        ticks.tick().await;
        let (conv, sender, to) = pairs[k * STRIDE % pairs.len()].clone();
        let store = Arc::clone(store);
        tasks.spawn(async move {
            let started = Instant::now();
            store
                .append(message(conv, sender, &to))
                .await
                .expect("append");
            started.elapsed()
        });
    }
    let mut latencies = Vec::with_capacity(total);
    while let Some(latency) = tasks.join_next().await {
        latencies.push(latency.expect("append task"));
    }
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let at = |q: f64| ms(latencies[((latencies.len() - 1) as f64 * q) as usize]);
    (at(0.5), at(0.99), ms(latencies[latencies.len() - 1]))
}

/// Appends `count` messages to the pair's receiving device from 256 concurrent tasks.
async fn fill(
    store: &Arc<dyn Store>,
    pair: &(ConversationId, DeviceAddress, Vec<DeviceAddress>),
    count: usize,
) {
    const TASKS: usize = 256;
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..TASKS {
        let store = Arc::clone(store);
        let (conv, sender, to) = pair.clone();
        let share = count / TASKS + usize::from(t < count % TASKS);
        tasks.spawn(async move {
            for _ in 0..share {
                store
                    .append(message(conv, sender, &to))
                    .await
                    .expect("append");
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("filler");
    }
}

/// Reads the device's whole inbox from the start, a page at a time; entries per second.
async fn catch_up(store: &Arc<dyn Store>, device: DeviceAddress) -> f64 {
    let started = Instant::now();
    let mut after = InboxPos::ZERO;
    let mut read = 0usize;
    loop {
        let page = store
            .inbox(device, after, MAX_SYNC_PAGE)
            .await
            .expect("inbox");
        let Some(last) = page.last() else { break };
        after = last.pos;
        read += page.len();
    }
    assert_eq!(read, BEHIND, "the whole backlog was read");
    read as f64 / started.elapsed().as_secs_f64()
}

/// Extends the one-message backlog of `reader`'s conversation to `count` messages with
/// set-based SQL, as `append` would have written them.
async fn bulk_fill_postgres(url: &str, schema: &str, reader: DeviceAddress, count: usize) {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    let device = reader.device.get() as i64;
    let last = count as i64;
    let sql = format!(
        "SET search_path = {schema};
         WITH first AS (
             SELECT m.* FROM inbox i
             JOIN messages m ON m.conversation_id = i.conversation_id AND m.id = i.message_id
             WHERE i.device_id = {device} AND i.pos = 1)
         INSERT INTO messages
             (conversation_id, id, sender_user, sender_device, client_key, sent_at, body)
         SELECT f.conversation_id, g, f.sender_user, f.sender_device,
                decode(lpad(to_hex(g), 32, '0'), 'hex'), f.sent_at, f.body
         FROM first f, generate_series(2, {last}) g;
         INSERT INTO client_keys (sender_device, client_key, conversation_id, message_id, sent_at)
         SELECT m.sender_device, m.client_key, m.conversation_id, m.id, m.sent_at
         FROM messages m JOIN inbox i ON i.conversation_id = m.conversation_id
         WHERE i.device_id = {device} AND i.pos = 1 AND m.id > 1;
         INSERT INTO inbox (device_id, pos, conversation_id, message_id, header)
         SELECT {device}, g, i.conversation_id, g, i.header
         FROM inbox i, generate_series(2, {last}) g WHERE i.device_id = {device} AND i.pos = 1;
         UPDATE conversations SET last_id = {last}
         WHERE id = (SELECT conversation_id FROM inbox WHERE device_id = {device} AND pos = 1);
         UPDATE devices SET inbox_head = {last} WHERE id = {device};
         ANALYZE;"
    );
    client.batch_execute(&sql).await.expect("bulk fill");
}

async fn drop_bench_schemas(url: &str, prefix: &str) {
    let Ok((client, conn)) = tokio_postgres::connect(url, tokio_postgres::NoTls).await else {
        return;
    };
    tokio::spawn(conn);
    for n in 1..=5 {
        let _ = client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {prefix}_{n} CASCADE"))
            .await;
    }
}
