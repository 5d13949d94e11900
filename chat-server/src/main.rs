//! The `chat-server` binary: one chat node.
//!
//! With no flags it serves on 127.0.0.1:8080 with an embedded SQLite store in `data/`.
//! Settings come from, in rising priority: built-in defaults, a JSON file (`--config`),
//! environment variables (`CHAT_*`), and flags. `chat-server backup DIR` copies the
//! configured store and its attachments instead of serving.

use std::net::SocketAddr;
use std::path::PathBuf;

use chat_server::{BlobStoreKind, Config, Server, TlsConfig};
use clap::Parser;
use tracing_subscriber::EnvFilter;

/// Threads in tokio's blocking pool.
const MAX_BLOCKING_THREADS: usize = 16;

/// A chat node: HTTP API and WebSocket gateway.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// What to do instead of serving.
    #[command(subcommand)]
    command: Option<Command>,
    /// A JSON file with any of the configuration keys (see docs/OPERATIONS.md).
    #[arg(long, env = "CHAT_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "CHAT_LISTEN")]
    listen: Option<SocketAddr>,
    /// Store URL: sqlite://PATH, postgres://… or memory:.
    #[arg(long, env = "CHAT_STORE", global = true, hide_env_values = true)]
    store: Option<String>,
    /// Where attachment ciphertext is kept; by default next to the store (`blobs/` beside
    /// an SQLite file; `data/blobs` for PostgreSQL).
    #[arg(long, env = "CHAT_BLOB_DIR", global = true)]
    blob_dir: Option<PathBuf>,
    /// Durability of acknowledged sends: fsync (survives power loss; the default) or os
    /// (survives a crash of this process, not a power loss).
    #[arg(long, env = "CHAT_DURABILITY")]
    durability: Option<chat_storage::Durability>,
    /// PostgreSQL connections held open by this node.
    #[arg(long, env = "CHAT_STORE_POOL_SIZE")]
    store_pool_size: Option<usize>,
    /// The size in MiB past which an SQLite store's write-ahead log is brought back to its
    /// start (default 64).
    #[arg(long, env = "CHAT_STORE_MAX_WAL_MIB")]
    store_max_wal_mib: Option<u64>,
    /// Redis URL shared by the nodes of a cluster (redis://…); needs a postgres:// store.
    #[arg(long, env = "CHAT_REDIS_URL", hide_env_values = true)]
    redis_url: Option<String>,
    /// The start of every Redis key and channel of this cluster (default `chat:`); the
    /// nodes of one cluster share it.
    #[arg(long, env = "CHAT_REDIS_PREFIX")]
    redis_prefix: Option<String>,
    /// TLS certificate chain (PEM); needs --tls-key.
    #[arg(long, env = "CHAT_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM); needs --tls-cert.
    #[arg(long, env = "CHAT_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Where attachments live: fs (files under blob_dir, one node) or s3 (a bucket every
    /// node shares).
    #[arg(long, env = "CHAT_BLOB_STORE")]
    blob_store: Option<BlobStoreKind>,
    /// The S3 service's base URL (AWS's endpoint for the region when absent).
    #[arg(long, env = "CHAT_S3_ENDPOINT")]
    s3_endpoint: Option<String>,
    /// The S3 bucket.
    #[arg(long, env = "CHAT_S3_BUCKET")]
    s3_bucket: Option<String>,
    /// The S3 signing region.
    #[arg(long, env = "CHAT_S3_REGION")]
    s3_region: Option<String>,
    /// The prefix of every object key (blobs/ by default).
    #[arg(long, env = "CHAT_S3_PREFIX")]
    s3_prefix: Option<String>,
    /// The S3 access key ID. The secret comes from CHAT_S3_SECRET_ACCESS_KEY or a file, never
    /// from a flag (flags show in the process list).
    #[arg(long, env = "CHAT_S3_ACCESS_KEY_ID")]
    s3_access_key_id: Option<String>,
    /// A file holding the S3 secret access key.
    #[arg(long, env = "CHAT_S3_SECRET_ACCESS_KEY_FILE")]
    s3_secret_access_key_file: Option<PathBuf>,
    /// Days inbox entries are kept; 0 keeps them forever.
    #[arg(long, env = "CHAT_INBOX_RETENTION_DAYS")]
    inbox_retention_days: Option<u32>,
    /// Log format.
    #[arg(long, env = "CHAT_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

/// Subcommands.
#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Copies the embedded store and its attachments into DIR, while the node runs.
    ///
    /// Writes DIR/chat.db (an sqlite:// store) and DIR/blobs. Restore by starting a node with
    /// `--store sqlite://DIR/chat.db` (or moving both into its data directory). PostgreSQL
    /// stores are refused: use pg_dump (docs/OPERATIONS.md).
    Backup {
        /// The directory to write the copy to; created if missing, refused unless empty.
        dir: PathBuf,
    },
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

/// The configuration: the file, then environment variables and flags over it.
fn config(args: &Args) -> Result<Config, Box<dyn std::error::Error>> {
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
    if let Some(store) = &args.store {
        config.store = store.as_str().into();
    }
    if let Some(dir) = &args.blob_dir {
        config.blob_dir = dir.clone();
    }
    if let Some(durability) = args.durability {
        config.durability = durability;
    }
    if let Some(size) = args.store_pool_size {
        config.store_pool_size = size;
    }
    if let Some(mib) = args.store_max_wal_mib {
        config.store_max_wal_mib = mib;
    }
    if let Some(url) = &args.redis_url {
        config.redis_url = Some(url.as_str().into());
    }
    if let Some(prefix) = &args.redis_prefix {
        config.redis_prefix.clone_from(prefix);
    }
    if let Some(days) = args.inbox_retention_days {
        config.inbox_retention_days = days;
    }
    if let Some(kind) = args.blob_store {
        config.blob_store = kind;
    }
    let s3 = &mut config.s3;
    if let Some(endpoint) = &args.s3_endpoint {
        s3.endpoint = Some(endpoint.clone());
    }
    if let Some(bucket) = &args.s3_bucket {
        s3.bucket.clone_from(bucket);
    }
    if let Some(region) = &args.s3_region {
        s3.region = Some(region.clone());
    }
    if let Some(prefix) = &args.s3_prefix {
        s3.prefix = Some(prefix.clone());
    }
    if let Some(key) = &args.s3_access_key_id {
        s3.access_key_id = Some(key.clone());
    }
    // Secrets from the environment only; a file named by a flag or variable wins over a
    // secret written in the config file.
    if let Some(secret) = std::env::var("CHAT_S3_SECRET_ACCESS_KEY")
        .ok()
        .filter(|s| !s.is_empty())
    {
        s3.secret_access_key = Some(secret.into());
    }
    if let Some(file) = &args.s3_secret_access_key_file {
        s3.secret_access_key = None;
        s3.secret_access_key_file = Some(file.clone());
    }
    if let Some(token) = std::env::var("CHAT_S3_SESSION_TOKEN")
        .ok()
        .filter(|s| !s.is_empty())
    {
        s3.session_token = Some(token.into());
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        config.tls = Some(TlsConfig {
            cert: cert.clone(),
            key: key.clone(),
        });
    }
    Ok(config)
}

/// `chat-server backup DIR`.
async fn backup(config: Config, dir: PathBuf) -> Result<(), Box<dyn std::error::Error>> {
    let report = tokio::task::spawn_blocking(move || chat_server::backup(&config, &dir)).await??;
    tracing::info!(
        database = %report.database.display(),
        database_bytes = report.database_bytes,
        blobs = %report.blobs.display(),
        blob_files = report.blob_files,
        blob_bytes = report.blob_bytes,
        "backup written"
    );
    Ok(())
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let config = config(&args)?;
    if let Some(Command::Backup { dir }) = args.command {
        return backup(config, dir).await;
    }
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let store = config.store.clone();
    let blobs = config.blob_path();
    let mut server = Server::bind(config).await?;
    match chat_server::install_prometheus() {
        Ok(handle) => {
            // Folds histogram samples into buckets even when nobody scrapes.
            let upkeep = handle.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
                loop {
                    every.tick().await;
                    upkeep.run_upkeep();
                }
            });
            server.set_metrics(move || chat_server::render_metrics(&handle));
        }
        Err(err) => tracing::warn!(cause = %err, "metrics are off: no Prometheus recorder"),
    }
    let addr = server.local_addr();
    let stop = shutdown_signal();
    tracing::info!(%addr, %store, blobs = %blobs.display(), "listening");
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
