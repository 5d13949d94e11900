//! The `chat-server` binary: one chat node.
//!
//! With no flags it serves on 127.0.0.1:8080 with an embedded SQLite store in `data/`.
//! Settings come from, in rising priority: built-in defaults, a JSON file (`--config`),
//! environment variables (`CHAT_*`), and flags.

use std::net::SocketAddr;
use std::path::PathBuf;

use chat_server::{Config, Server, TlsConfig};
use clap::Parser;
use metrics_exporter_prometheus::PrometheusBuilder;
use tracing_subscriber::EnvFilter;

/// Threads in tokio's blocking pool.
const MAX_BLOCKING_THREADS: usize = 16;

/// A chat node: HTTP API and WebSocket gateway.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// A JSON file with any of the configuration keys (see docs/OPERATIONS.md).
    #[arg(long, env = "CHAT_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "CHAT_LISTEN")]
    listen: Option<SocketAddr>,
    /// Store URL: sqlite://PATH, postgres://… or memory:.
    #[arg(long, env = "CHAT_STORE")]
    store: Option<String>,
    /// Durability of acknowledged sends: fsync (survives power loss; the default) or os
    /// (survives a crash of this process, not a power loss).
    #[arg(long, env = "CHAT_DURABILITY")]
    durability: Option<chat_storage::Durability>,
    /// PostgreSQL connections held open by this node.
    #[arg(long, env = "CHAT_STORE_POOL_SIZE")]
    store_pool_size: Option<usize>,
    /// Redis URL shared by the nodes of a cluster (redis://…); needs a postgres:// store.
    #[arg(long, env = "CHAT_REDIS_URL")]
    redis_url: Option<String>,
    /// Prefix of the cluster's Redis channels; the nodes of one cluster share it.
    #[arg(long, env = "CHAT_REDIS_PREFIX")]
    redis_prefix: Option<String>,
    /// TLS certificate chain (PEM); needs --tls-key.
    #[arg(long, env = "CHAT_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM); needs --tls-cert.
    #[arg(long, env = "CHAT_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Days inbox entries are kept; 0 keeps them forever.
    #[arg(long, env = "CHAT_INBOX_RETENTION_DAYS")]
    inbox_retention_days: Option<u32>,
    /// Log format.
    #[arg(long, env = "CHAT_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    init_logging(&args.log_format);
    // Each connection is a file descriptor: allow as many as the hard limit permits.
    if let Ok((soft, hard)) = rlimit::Resource::NOFILE.get()
        && soft < hard
        && rlimit::Resource::NOFILE.set(hard, hard).is_err()
    {
        tracing::warn!(soft, hard, "could not raise the open-file limit");
    }
    // The blocking pool serves SQLite reads (at most four at once) and attachment file I/O;
    // tokio's default of 512 threads would let a burst of those grow the process without
    // bound. Past the cap, blocking work queues.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!(cause = %err, "cannot start the runtime");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            // Once, through the log (which goes to stderr), so JSON logs get it too.
            tracing::error!(cause = %err, "chat-server failed");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Logs to stdout: JSON lines, or text with colours only when stdout is a terminal (a file
/// or a pipe gets no escape codes). An invalid `CHAT_LOG` filter is reported, not ignored.
fn init_logging(format: &str) {
    let (filter, invalid) = match std::env::var("CHAT_LOG") {
        Err(_) => (EnvFilter::new("info"), None),
        Ok(spec) => match EnvFilter::try_new(&spec) {
            Ok(filter) => (filter, None),
            Err(err) => (EnvFilter::new("info"), Some((spec, err))),
        },
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
    if let Some((spec, err)) = invalid {
        tracing::warn!(filter = %spec, cause = %err, "CHAT_LOG is not a valid filter; logging at info");
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let mut config = match &args.config {
        Some(path) => {
            let bytes = std::fs::read(path)
                .map_err(|e| format!("cannot read the config file {}: {e}", path.display()))?;
            serde_json::from_slice(&bytes)
                .map_err(|e| format!("config file {}: {e}", path.display()))?
        }
        None => Config::default(),
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(store) = args.store {
        config.store = store.into();
    }
    if let Some(durability) = args.durability {
        config.durability = durability;
    }
    if let Some(size) = args.store_pool_size {
        config.store_pool_size = size;
    }
    if let Some(url) = args.redis_url {
        config.redis_url = Some(url.into());
    }
    if let Some(prefix) = args.redis_prefix {
        config.redis_prefix = prefix;
    }
    if let Some(days) = args.inbox_retention_days {
        config.inbox_retention_days = days;
    }
    if let (Some(cert), Some(key)) = (args.tls_cert, args.tls_key) {
        config.tls = Some(TlsConfig { cert, key });
    }
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let store = config.store.clone();
    let mut server = Server::bind(config).await?;
    if let Ok(handle) = PrometheusBuilder::new().install_recorder() {
        server.set_metrics(move || handle.render());
    }
    let addr = server.local_addr();
    let stop = shutdown_signal();
    tracing::info!(%addr, %store, "listening");
    // JSON output stays pure JSON: the log line above says the same.
    if args.log_format != "json" {
        println!("chat-server listening on {scheme}://{addr} (WebSocket at /v1/ws, store {store})");
    }
    server.run_until(stop).await?;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is called, not when
/// the future is first polled, so a signal sent as soon as the node says it listens stops
/// it gracefully instead of killing it.
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let interrupt = signal(SignalKind::interrupt());
        let terminate = signal(SignalKind::terminate());
        async move {
            match (interrupt, terminate) {
                (Ok(mut interrupt), Ok(mut terminate)) => {
                    tokio::select! {
                        _ = interrupt.recv() => {}
                        _ = terminate.recv() => {}
                    }
                }
                _ => {
                    tracing::warn!("cannot install signal handlers; stop the node with SIGKILL");
                    std::future::pending::<()>().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
