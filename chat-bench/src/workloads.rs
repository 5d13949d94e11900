//! The workloads: setup over HTTP, connections, the paced send loop, and the report.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use chat_core::protocol::{ACK_EVERY, ACK_WITHIN, Ack, ClientFrame, Heartbeat, Send, ServerFrame};
use chat_core::{ClientKey, ConversationId, DeviceAddress, DeviceId, InboxPos, Recipient, UserId};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::histogram::{self, Histogram};
use crate::http::{self, Account, Result};
use crate::proc::{self, Sample};
use crate::stats::{Rng, Stats};
use crate::ws;
use crate::{Args, Workload};

/// Setup requests in flight at once.
const SETUP_CONCURRENCY: usize = 32;
/// How long a run waits for the last acks and deliveries after it stops sending.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);

pub(crate) async fn run(args: &Args) -> Result<()> {
    let env = Env {
        server: args.server,
        nodes: std::iter::once(args.server)
            .chain(args.nodes.iter().copied())
            .collect(),
        pid: args.server_pid,
        prefix: args.prefix.clone(),
    };
    match args.workload {
        Workload::Idle(ref h) => idle(&env, h.connections, h.hold, h.heartbeat).await,
        Workload::HeartbeatFloor(ref h) => {
            crate::floor::measure(h.connections, h.hold, h.heartbeat).await
        }
        Workload::FloorServer { .. } | Workload::DiskFloor { .. } => {
            Err("this workload runs on its own, without a node".to_owned())
        }
        Workload::OneToOne {
            users,
            rate,
            duration,
            size,
            settle,
        } => {
            let mesh = Mesh::pairs(&env, users).await?;
            let before = env.sample();
            let result = mesh.drive(&env, rate, duration, size).await?;
            let mut fields = result.to_json(rate);
            if !settle.is_zero()
                && let Some(out) = fields.as_object_mut()
            {
                tokio::time::sleep(settle).await;
                let settled = env.sample();
                out.insert(
                    "server_rss_kib_before".into(),
                    json!(before.map(|s| s.rss_kib)),
                );
                out.insert(
                    "server_rss_kib_settled".into(),
                    json!(settled.map(|s| s.rss_kib)),
                );
                out.insert("settle_s".into(), json!(settle.as_secs_f64()));
            }
            report("one-to-one", &fields);
            result.check(&mesh.stats)
        }
        Workload::Ramp {
            users,
            start,
            step,
            max_rate,
            step_duration,
            max_p99_ms,
            size,
        } => {
            let mesh = Mesh::pairs(&env, users).await?;
            let mut best = None;
            let mut rate = start;
            while rate <= max_rate {
                let result = mesh.drive(&env, rate, step_duration, size).await?;
                // Refused sends are a broken run, not a rate the server cannot sustain.
                if result.errors > 0 || (result.sent > 0 && result.acked == 0) {
                    report("ramp", &result.to_json(rate));
                    return result.check(&mesh.stats);
                }
                let p99 = result.latency.map_or(f64::INFINITY, |l| l[2]);
                let kept_up = result.delivered >= result.sent
                    && result.sent as f64 >= 0.95 * (rate as f64 * step_duration.as_secs_f64());
                println!(
                    "rate {rate}/s: sent {} delivered {} p99 {p99:.2} ms",
                    result.sent, result.delivered
                );
                if !kept_up || p99 > max_p99_ms {
                    let why = if kept_up {
                        "p99 over the bound"
                    } else {
                        "delivery fell behind"
                    };
                    println!("stopped at {rate}/s: {why}");
                    break;
                }
                best = Some((rate, result));
                rate += step;
            }
            let json = match best {
                Some((rate, r)) => {
                    let mut j = r.to_json(rate);
                    j["highest_sustained_rate"] = json!(rate);
                    j
                }
                None => json!({"highest_sustained_rate": 0}),
            };
            report("ramp", &json);
            Ok(())
        }
        Workload::Group {
            groups,
            members,
            rate,
            duration,
            size,
        } => {
            let mesh = Mesh::groups(&env, groups, members).await?;
            let result = mesh.drive(&env, rate, duration, size).await?;
            report("group", &result.to_json(rate));
            result.check(&mesh.stats)
        }
        Workload::Drain { messages, size } => drain(&env, messages, size).await,
    }
}

struct Env {
    server: SocketAddr,
    /// Every node connections are spread over, `server` first.
    nodes: Vec<SocketAddr>,
    pid: Option<u32>,
    prefix: String,
}

impl Env {
    /// The [`histogram::NAMES`] histograms from the first node's `/metrics`, each if it
    /// serves it.
    async fn histograms(&self) -> [Option<Histogram>; 3] {
        let page = http::metrics(self.server).await.unwrap_or_default();
        histogram::NAMES.map(|name| Histogram::parse(&page, name))
    }

    /// The node connection `i` goes to.
    fn node(&self, i: usize) -> SocketAddr {
        self.nodes
            .get(i % self.nodes.len().max(1))
            .copied()
            .unwrap_or(self.server)
    }

    fn sample(&self) -> Option<Sample> {
        self.pid.and_then(proc::sample)
    }

    fn threads(&self) -> Option<proc::Threads> {
        self.pid.and_then(proc::threads)
    }
}

pub(crate) fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template("{msg:>14} [{bar:40}] {pos}/{len} {elapsed}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_owned());
    bar
}

pub(crate) fn report(workload: &str, fields: &Value) {
    let mut line = json!({"workload": workload});
    if let (Some(out), Some(map)) = (line.as_object_mut(), fields.as_object()) {
        for (k, v) in map {
            out.insert(k.clone(), v.clone());
        }
    }
    println!("\n{:<34} value", "metric");
    if let Some(map) = line.as_object() {
        for (k, v) in map {
            println!("{k:<34} {v}");
        }
    }
    println!("{line}");
}

/// Creates `n` users named `{prefix}_{i}` with `devices` devices each, concurrently.
async fn accounts(env: &Env, n: usize, devices: usize) -> Result<Vec<Vec<Account>>> {
    let bar = bar((n * devices) as u64, "accounts");
    let server = env.server;
    let results: Vec<Result<Vec<Account>>> = futures::stream::iter(0..n)
        .map(|i| {
            let name = format!("{}_{i}", env.prefix);
            let bar = bar.clone();
            async move {
                let mut list = vec![http::account(server, &name).await?];
                for _ in 1..devices {
                    list.push(http::login(server, &name).await?);
                    bar.inc(1);
                }
                bar.inc(1);
                Ok(list)
            }
        })
        .buffered(SETUP_CONCURRENCY)
        .collect()
        .await;
    bar.finish();
    results.into_iter().collect()
}

fn address(a: &Account) -> Result<DeviceAddress> {
    Ok(DeviceAddress {
        user: UserId::new(a.user).map_err(|e| e.to_string())?,
        device: DeviceId::new(a.device).map_err(|e| e.to_string())?,
    })
}

/// Connects every account (spreading source addresses, with the writer's heartbeats when
/// `keepalive`: see [`ws::connect`]), waits for each backlog to end, and spawns a reader per
/// connection that counts acks and deliveries and acks the cursor.
async fn connect_all(
    env: &Env,
    accounts: &[Account],
    stats: &Arc<Stats>,
    keepalive: bool,
) -> Result<Vec<mpsc::Sender<Bytes>>> {
    let bar = bar(accounts.len() as u64, "connections");
    let results: Vec<Result<mpsc::Sender<Bytes>>> =
        futures::stream::iter(accounts.iter().enumerate())
            .map(|(i, account)| {
                let bar = bar.clone();
                let stats = stats.clone();
                let server = env.node(i);
                async move {
                    let (tx, mut reader) =
                        ws::connect(server, ws::source_address(i), account, 0, keepalive).await?;
                    loop {
                        match ws::next_frame(&mut reader).await {
                            Some(ServerFrame::SyncEnd(_)) => break,
                            Some(_) => {}
                            None => return Err("connection closed during sync".to_owned()),
                        }
                    }
                    tokio::spawn(read_loop(reader, tx.clone(), stats));
                    bar.inc(1);
                    Ok(tx)
                }
            })
            .buffered(SETUP_CONCURRENCY * 2)
            .collect()
            .await;
    bar.finish();
    results.into_iter().collect()
}

/// Counts acks and deliveries, and acknowledges deliveries the way chat-client does: after
/// [`ACK_EVERY`] entries, or [`ACK_WITHIN`] after the first one not yet acknowledged.
async fn read_loop(mut reader: ws::Reader, tx: mpsc::Sender<Bytes>, stats: Arc<Stats>) {
    let mut unacked = 0u64;
    let mut last = InboxPos::ZERO;
    let due = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(due);
    loop {
        let frame = tokio::select! {
            frame = ws::next_frame(&mut reader) => match frame {
                Some(frame) => frame,
                None => break,
            },
            () = &mut due, if unacked > 0 => {
                unacked = 0;
                let _ = tx.try_send(Bytes::from(ClientFrame::from(Ack { up_to: last }).encode()));
                continue;
            }
        };
        match frame {
            ServerFrame::Sent(_) => {
                stats.acked.fetch_add(1, Ordering::Relaxed);
            }
            ServerFrame::Deliver(d) => {
                stats.delivered(&d.body);
                if unacked == 0 {
                    due.as_mut().reset(tokio::time::Instant::now() + ACK_WITHIN);
                }
                unacked += 1;
                last = d.pos;
                if unacked >= ACK_EVERY {
                    unacked = 0;
                    let _ = tx.try_send(Bytes::from(
                        ClientFrame::from(Ack { up_to: d.pos }).encode(),
                    ));
                }
            }
            ServerFrame::Error(e) => {
                stats.refused(|| format!("error {:?}: {}", e.code, e.message));
            }
            ServerFrame::StaleDevices(s) => stats.refused(|| {
                format!(
                    "stale_devices ({} missing, {} extra): the accounts have devices this \
                     run did not create; a reused --prefix does that, use a fresh one",
                    s.missing.len(),
                    s.extra.len()
                )
            }),
            _ => {}
        }
    }
}

static KEYS: AtomicU64 = AtomicU64::new(1);

fn send_frame(
    stats: &Stats,
    conversation: ConversationId,
    recipients: &[Recipient],
    size: usize,
) -> Bytes {
    let mut body = BytesMut::with_capacity(size.max(8));
    body.put_u64(stats.now_us());
    body.resize(size.max(8), 0xab);
    let n = KEYS.fetch_add(1, Ordering::Relaxed);
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&n.to_be_bytes());
    key[8..].copy_from_slice(&std::process::id().to_be_bytes().repeat(2));
    let send = Send {
        req: n as u32,
        conversation,
        client_key: ClientKey::from_bytes(key),
        body: body.freeze(),
        recipients: recipients.to_vec(),
    };
    Bytes::from(ClientFrame::from(send).encode())
}

/// Who sends where: for each route, the sender's writer, the conversation and the recipients.
struct Route {
    sender: usize,
    conversation: ConversationId,
    recipients: Vec<Recipient>,
    /// Deliveries one message makes.
    fanout: u64,
}

struct Mesh {
    stats: Arc<Stats>,
    writers: Vec<mpsc::Sender<Bytes>>,
    /// Per sender, the routes it picks from.
    routes: Vec<Vec<Route>>,
}

struct RunResult {
    sent: u64,
    acked: u64,
    delivered: u64,
    expected: u64,
    errors: u64,
    /// How long the run sent.
    seconds: f64,
    /// From the first send until every delivery and acknowledgement arrived (or the drain
    /// timed out; to within the 20 ms it polls at): what
    /// deliveries per second are counted over, since a node that falls behind keeps
    /// delivering after the sending stops.
    delivery_seconds: f64,
    latency: Option<[f64; 4]>,
    server_cpu_us: Option<u64>,
    /// This load generator's own CPU time during the run.
    bench_cpu_us: Option<u64>,
    server_rss_kib: Option<u64>,
    /// Where the server's time went (see [`proc::breakdown`]).
    server_threads: Option<Value>,
    /// The store's commits, the SQLite checkpoints and the node's appends during the run,
    /// in the order of [`histogram::NAMES`] (see [`Histogram::report`]).
    histograms: [Option<Value>; 3],
}

impl RunResult {
    /// An error saying why, when the run is not a measurement: sends refused, none
    /// acknowledged, or nothing delivered.
    fn check(&self, stats: &Stats) -> Result<()> {
        let why = stats
            .first_error()
            .unwrap_or_else(|| "no reason given".into());
        if self.sent == 0 {
            return Err("nothing was sent".into());
        }
        if self.acked == 0 {
            return Err(format!(
                "none of {} sends was acknowledged (first refusal: {why})",
                self.sent
            ));
        }
        if self.errors > 0 {
            return Err(format!(
                "{} of {} sends failed (first refusal: {why}); the figures above are not a \
                 measurement",
                self.errors, self.sent
            ));
        }
        if self.delivered < self.expected {
            return Err(format!(
                "{} of {} deliveries arrived within {} s of the end",
                self.delivered,
                self.expected,
                DRAIN_TIMEOUT.as_secs()
            ));
        }
        Ok(())
    }

    fn to_json(&self, rate: u64) -> Value {
        let per_msg = self
            .server_cpu_us
            .map(|c| c as f64 / self.delivered.max(1) as f64);
        let bench_per_msg = self
            .bench_cpu_us
            .map(|c| c as f64 / self.delivered.max(1) as f64);
        // What the machine's CPUs could deliver per second if the node cost nothing and this
        // load generator had them all: a ceiling no node on this machine can pass (meaningful
        // only with the node on the same machine, sharing its CPUs).
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let ceiling = bench_per_msg
            .filter(|us| *us > 0.0)
            .map(|us| (cores * 1e6 / us).round());
        json!({
            "target_rate": rate,
            "sent": self.sent,
            "acked": self.acked,
            "delivered": self.delivered,
            "expected_deliveries": self.expected,
            "errors": self.errors,
            "seconds": (self.seconds * 100.0).round() / 100.0,
            "delivery_seconds": (self.delivery_seconds * 100.0).round() / 100.0,
            "sent_per_s": (self.sent as f64 / self.seconds).round(),
            "delivered_per_s": (self.delivered as f64 / self.delivery_seconds).round(),
            "p50_ms": self.latency.map(|l| l[0]),
            "p95_ms": self.latency.map(|l| l[1]),
            "p99_ms": self.latency.map(|l| l[2]),
            "max_ms": self.latency.map(|l| l[3]),
            "server_cpu_us_per_delivery": per_msg.map(|v| (v * 10.0).round() / 10.0),
            "server_rss_kib": self.server_rss_kib,
            "bench_cpu_us_per_delivery": bench_per_msg.map(|v| (v * 10.0).round() / 10.0),
            "bench_ceiling_deliveries_per_s": ceiling,
            "server_time": self.server_threads,
            "store_commits": self.histograms[0],
            "store_checkpoints": self.histograms[1],
            "server_appends": self.histograms[2],
        })
    }
}

impl Mesh {
    /// `users` users with one device each; each talks to three partners in 1:1s.
    async fn pairs(env: &Env, users: usize) -> Result<Self> {
        if users < 2 {
            return Err("one-to-one needs at least 2 users".into());
        }
        let accounts: Vec<Account> = accounts(env, users, 1)
            .await?
            .into_iter()
            .flatten()
            .collect();
        let mut pairs = BTreeSet::new();
        for i in 0..users {
            for step in [1, 7, 31] {
                let j = (i + step) % users;
                if i != j {
                    pairs.insert((i.min(j), i.max(j)));
                }
            }
        }
        let bar = bar(pairs.len() as u64, "conversations");
        let convs: Vec<Result<(usize, usize, u64)>> = futures::stream::iter(pairs)
            .map(|(i, j)| {
                let (a, b, bar) = (&accounts[i], &accounts[j], bar.clone());
                async move {
                    let c = http::direct(env.server, a, b).await?;
                    bar.inc(1);
                    Ok((i, j, c))
                }
            })
            .buffered(SETUP_CONCURRENCY)
            .collect()
            .await;
        bar.finish();
        let mut routes: Vec<Vec<Route>> = (0..users).map(|_| Vec::new()).collect();
        for c in convs {
            let (i, j, c) = c?;
            let conversation = ConversationId::new(c).map_err(|e| e.to_string())?;
            for (from, to) in [(i, j), (j, i)] {
                let recipients = vec![Recipient {
                    device: address(&accounts[to])?,
                    header: Bytes::new(),
                }];
                routes[from].push(Route {
                    sender: from,
                    conversation,
                    recipients,
                    fanout: 1,
                });
            }
        }
        let stats = Arc::new(Stats::new());
        let writers = connect_all(env, &accounts, &stats, true).await?;
        Ok(Self {
            stats,
            writers,
            routes,
        })
    }

    /// `groups` groups of `members` users with one device each; the first member sends.
    async fn groups(env: &Env, groups: usize, members: usize) -> Result<Self> {
        if !(2..=chat_core::limits::MAX_GROUP_MEMBERS).contains(&members) {
            return Err("groups have 2 to 100 members".into());
        }
        let accounts: Vec<Account> = accounts(env, groups * members, 1)
            .await?
            .into_iter()
            .flatten()
            .collect();
        let mut routes: Vec<Vec<Route>> = (0..accounts.len()).map(|_| Vec::new()).collect();
        for g in 0..groups {
            let group = &accounts[g * members..(g + 1) * members];
            let others: Vec<u64> = group[1..].iter().map(|a| a.user).collect();
            let c = http::group(env.server, &group[0], &others).await?;
            let conversation = ConversationId::new(c).map_err(|e| e.to_string())?;
            let recipients = group[1..]
                .iter()
                .map(|a| {
                    Ok(Recipient {
                        device: address(a)?,
                        header: Bytes::new(),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let fanout = recipients.len() as u64;
            routes[g * members].push(Route {
                sender: g * members,
                conversation,
                recipients,
                fanout,
            });
        }
        let stats = Arc::new(Stats::new());
        let writers = connect_all(env, &accounts, &stats, true).await?;
        Ok(Self {
            stats,
            writers,
            routes,
        })
    }

    /// Sends at `rate` messages per second for `duration`, then waits for the stragglers.
    async fn drive(
        &self,
        env: &Env,
        rate: u64,
        duration: Duration,
        size: usize,
    ) -> Result<RunResult> {
        let stats = &self.stats;
        let base = (
            Stats::get(&stats.sent),
            Stats::get(&stats.acked),
            Stats::get(&stats.delivered),
            Stats::get(&stats.errors),
        );
        stats.reset_latencies();
        let senders: Vec<&Vec<Route>> = self.routes.iter().filter(|r| !r.is_empty()).collect();
        let mut rng = Rng::new(0x5eed ^ rate);
        let before = env.sample();
        let bench_before = proc::sample(std::process::id());
        let threads_before = env.threads();
        let histograms_before = env.histograms().await;
        let bar = bar(duration.as_secs().max(1), "seconds");
        let start = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        let mut sent = 0u64;
        let mut expected = 0u64;
        while start.elapsed() < duration {
            tick.tick().await;
            let due = (rate as f64 * start.elapsed().as_secs_f64()) as u64;
            while sent < due {
                let routes = senders[rng.below(senders.len())];
                let route = &routes[rng.below(routes.len())];
                let frame = send_frame(stats, route.conversation, &route.recipients, size);
                if self.writers[route.sender].try_send(frame).is_ok() {
                    stats.sent.fetch_add(1, Ordering::Relaxed);
                    expected += route.fanout;
                } else {
                    stats.refused(|| {
                        "a connection's send queue was full: the node did not keep up".into()
                    });
                }
                sent += 1;
            }
            bar.set_position(start.elapsed().as_secs());
        }
        let seconds = start.elapsed().as_secs_f64();
        bar.finish();
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while Instant::now() < deadline
            && (Stats::get(&stats.delivered) - base.2 < expected
                || Stats::get(&stats.acked) - base.1 < Stats::get(&stats.sent) - base.0)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let delivery_seconds = start.elapsed().as_secs_f64();
        let after = env.sample();
        let bench_after = proc::sample(std::process::id());
        let delivered = Stats::get(&stats.delivered) - base.2;
        let server_threads = threads_before
            .zip(env.threads())
            .map(|(b, a)| proc::breakdown(&b, &a, delivered));
        let mut histograms_after = env.histograms().await.into_iter();
        let histograms = histograms_before.map(|before| {
            histograms_after
                .next()
                .flatten()
                .and_then(|after| Histogram::report(before.as_ref(), &after, delivered))
        });
        Ok(RunResult {
            sent: Stats::get(&stats.sent) - base.0,
            acked: Stats::get(&stats.acked) - base.1,
            delivered: Stats::get(&stats.delivered) - base.2,
            expected,
            errors: Stats::get(&stats.errors) - base.3,
            seconds,
            delivery_seconds,
            latency: stats.percentiles(),
            server_cpu_us: before.zip(after).map(|(b, a)| a.cpu_us - b.cpu_us),
            bench_cpu_us: bench_before
                .zip(bench_after)
                .map(|(b, a)| a.cpu_us - b.cpu_us),
            server_rss_kib: after.map(|a| a.rss_kib),
            server_threads,
            histograms,
        })
    }
}

/// One device offline while `messages` arrive; then the time from connecting to the last
/// delivery.
async fn drain(env: &Env, messages: usize, size: usize) -> Result<()> {
    // Several senders fill the inbox, so filling is not serialised on one connection's
    // commits; the figure that matters is the drain.
    const SENDERS: usize = 32;
    let accounts: Vec<Account> = accounts(env, SENDERS + 1, 1)
        .await?
        .into_iter()
        .flatten()
        .collect();
    let (senders, receiver) = accounts.split_at(SENDERS);
    let receiver = &receiver[0];
    let recipients = vec![Recipient {
        device: address(receiver)?,
        header: Bytes::new(),
    }];
    let mut conversations = Vec::new();
    for sender in senders {
        let c = http::direct(env.server, sender, receiver).await?;
        conversations.push(ConversationId::new(c).map_err(|e| e.to_string())?);
    }
    let stats = Arc::new(Stats::new());
    let writers = connect_all(env, senders, &stats, true).await?;
    let bar = bar(messages as u64, "filling inbox");
    let mut queued = 0u64;
    while Stats::get(&stats.acked) < messages as u64 {
        // Keep a window of sends in flight.
        while queued < messages as u64 && queued - Stats::get(&stats.acked) < 2048 {
            let i = queued as usize % SENDERS;
            let frame = send_frame(&stats, conversations[i], &recipients, size);
            if writers[i].send(frame).await.is_err() {
                return Err("sender connection closed".into());
            }
            queued += 1;
        }
        bar.set_position(Stats::get(&stats.acked));
        tokio::time::sleep(Duration::from_millis(1)).await;
        if Stats::get(&stats.errors) > 0 {
            let why = stats.first_error().unwrap_or_default();
            return Err(format!(
                "the server refused sends ({why}; raise send_burst_per_account for benchmarks)"
            ));
        }
    }
    bar.finish();
    let before = env.sample();
    let start = Instant::now();
    let (_tx, mut reader) =
        ws::connect(env.server, ws::source_address(1), receiver, 0, true).await?;
    let mut got = 0usize;
    let mut last = InboxPos::ZERO;
    while got < messages {
        match ws::next_frame(&mut reader).await {
            Some(ServerFrame::Deliver(d)) => {
                got += 1;
                last = d.pos;
            }
            Some(_) => {}
            None => return Err(format!("connection closed after {got} deliveries")),
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let after = env.sample();
    report(
        "drain",
        &json!({
            "messages": messages,
            "last_pos": last.get(),
            "seconds_to_last_delivery": (seconds * 1000.0).round() / 1000.0,
            "deliveries_per_s": (messages as f64 / seconds).round(),
            "server_cpu_us_per_delivery": before.zip(after).map(|(b, a)| ((a.cpu_us - b.cpu_us) as f64 / messages as f64 * 10.0).round() / 10.0),
        }),
    );
    Ok(())
}

/// `connections` authenticated connections (ten devices per user) with heartbeats, held for
/// `hold`.
async fn idle(env: &Env, connections: usize, hold: Duration, heartbeat: Duration) -> Result<()> {
    let users = connections.div_ceil(chat_core::limits::MAX_DEVICES_PER_USER);
    let per_user = connections.div_ceil(users);
    let accounts: Vec<Account> = accounts(env, users, per_user)
        .await?
        .into_iter()
        .flatten()
        .take(connections)
        .collect();
    let stats = Arc::new(Stats::new());
    let before_connect = env.sample();
    // This workload sends its own heartbeats, counted, at the interval asked for.
    let writers = connect_all(env, &accounts, &stats, false).await?;
    let connected = env.sample();
    let beat = Bytes::from(ClientFrame::from(Heartbeat {}).encode());
    let start = Instant::now();
    let n = writers.len() as u64;
    let mut handles = Vec::new();
    for (i, tx) in writers.iter().enumerate() {
        let (tx, beat, stats) = (tx.clone(), beat.clone(), stats.clone());
        let phase = heartbeat.mul_f64((i as f64) / (n as f64));
        handles.push(tokio::spawn(async move {
            tokio::time::sleep(phase).await;
            let mut tick = tokio::time::interval(heartbeat);
            while start.elapsed() < hold {
                tick.tick().await;
                if tx.send(beat.clone()).await.is_err() {
                    return;
                }
                stats.heartbeats.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let bar = bar(hold.as_secs().max(1), "holding");
    while start.elapsed() < hold {
        tokio::time::sleep(Duration::from_millis(250)).await;
        bar.set_position(start.elapsed().as_secs());
    }
    bar.finish();
    let end = env.sample();
    for h in handles {
        h.abort();
    }
    let beats = Stats::get(&stats.heartbeats);
    let rss_per_conn = before_connect
        .zip(connected)
        .map(|(b, a)| (a.rss_kib.saturating_sub(b.rss_kib)) as f64 * 1024.0 / n as f64);
    let cpu_per_beat = connected
        .zip(end)
        .map(|(b, a)| (a.cpu_us - b.cpu_us) as f64 / beats.max(1) as f64);
    report(
        "idle",
        &json!({
            "connections": n,
            "hold_s": hold.as_secs(),
            "heartbeats": beats,
            "server_rss_kib": end.map(|s| s.rss_kib),
            "server_rss_bytes_per_connection": rss_per_conn.map(f64::round),
            "server_cpu_us_per_heartbeat": cpu_per_beat.map(|v| (v * 100.0).round() / 100.0),
        }),
    );
    Ok(())
}
