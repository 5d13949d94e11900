//! Server configuration. The binary layers command-line flags over environment variables
//! over a JSON config file over these defaults (see `main.rs`); embedders build a [`Config`]
//! directly.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use chat_core::limits::MAX_GROUP_MEMBERS;
use chat_storage::Durability;
use serde::{Deserialize, Deserializer};

/// Reads a [`Durability`] from `"fsync"` or `"os"`.
fn durability<'de, D: Deserializer<'de>>(d: D) -> Result<Durability, D::Error> {
    let name = String::deserialize(d)?;
    name.parse().map_err(serde::de::Error::custom)
}

/// Everything a node needs to run. `Config::default()` is the embedded single-node setup.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where to listen for HTTP and WebSocket.
    pub listen: SocketAddr,
    /// The store URL: `sqlite://PATH`, `postgres://…` (with the `postgres` feature) or
    /// `memory:`. Its password never appears in `Debug` or `Display` output.
    pub store: StoreUrl,
    /// How far each commit is pushed before a send is acknowledged: `"fsync"` (the default:
    /// on stable storage, survives power loss) or `"os"` (handed to the operating system or
    /// the database server: survives a crash of this process, not a power loss). See
    /// docs/OPERATIONS.md, "Durability".
    #[serde(deserialize_with = "durability")]
    pub durability: Durability,
    /// Connections to PostgreSQL held open by this node (ignored by other stores). With
    /// PostgreSQL's default of 100 connections, nodes x pool size must stay below it.
    pub store_pool_size: usize,
    /// The size in MiB past which an SQLite store's write-ahead log is brought back to its
    /// start (ignored by other stores); see docs/STORAGE.md, "Checkpoints".
    pub store_max_wal_mib: u64,
    /// Redis (`redis://…` or `rediss://…`) shared by every node of a cluster: cross-node
    /// routing, presence, the node registry, shared rate limits and leases. Absent (the
    /// default) for a single node, which keeps all of that in memory. Needs a store the
    /// nodes share (PostgreSQL). Its password never appears in logs.
    pub redis_url: Option<StoreUrl>,
    /// The start of every Redis key and channel this cluster uses (`chat:` by default), so
    /// one Redis can serve several clusters (or tests). Every node of a cluster must use the
    /// same one.
    pub redis_prefix: String,
    /// TLS certificate chain and private key (PEM). Plain TCP when absent.
    pub tls: Option<TlsConfig>,
    /// How often clients must send heartbeats, in milliseconds.
    pub heartbeat_interval_ms: u32,
    /// Heartbeats a device may miss before it counts as offline and is disconnected.
    pub missed_heartbeats: u32,
    /// The member limit of groups on this deployment; at most `MAX_GROUP_MEMBERS`.
    pub max_group_members: usize,
    /// Frames queued for one connection before it counts as a slow consumer.
    pub outbound_queue: usize,
    /// Encoded bytes queued for one connection before it counts as a slow consumer (at
    /// least `MAX_FRAME_BYTES`, so the largest frame fits). With `outbound_queue`, this
    /// bounds what a device that stops reading can hold in memory.
    pub outbound_queue_bytes: usize,
    /// Frames per second one connection may send (sustained).
    pub frames_per_second: f64,
    /// Frames one connection may send in a burst.
    pub frame_burst: u32,
    /// Messages one account may send per second across all its devices (sustained).
    pub sends_per_account_per_second: f64,
    /// Messages one account may send in a burst.
    pub send_burst_per_account: u32,
    /// Log-in and registration attempts one source address may make in a burst; refills at
    /// one every two seconds.
    pub auth_burst_per_address: u32,
    /// Failed log-ins one username may receive from all addresses together before only
    /// addresses it has logged in from before are checked (the backstop against guessing
    /// spread over many addresses); refills at one per `auth_account_refill_ms`.
    pub auth_burst_per_account: u32,
    /// How often the per-username failure backstop gets one failure back, in ms.
    pub auth_account_refill_ms: u64,
    /// Failed log-ins one source address may make against one username before its attempts
    /// are refused unchecked; refills at one per `auth_failure_refill_ms`. Successes do not
    /// count.
    pub auth_failures_per_address_account: u32,
    /// How often an (address, username) pair gets one failure back, in ms.
    pub auth_failure_refill_ms: u64,
    /// How long a successful log-in keeps its address known for the account (checked even
    /// when the backstop is exhausted), in days.
    pub auth_known_address_days: u32,
    /// Directory searches one account may make in a burst.
    pub search_burst_per_account: u32,
    /// Directory searches one account may make per second (sustained).
    pub searches_per_account_per_second: f64,
    /// One-time prekeys of one user's devices handed out in a burst, whoever asks; beyond it
    /// bundles come with the signed prekey only (the X3DH fallback) until the budget
    /// refills, so no group of accounts can empty a user's pool. Counted per fetch (a fetch
    /// takes at most one key per device).
    pub prekey_claim_burst_per_user: u32,
    /// How many one-time-prekey fetches per hour refill that budget.
    pub prekey_claims_per_user_per_hour: u32,
    /// Argon2id memory cost in KiB (OWASP's minimum, 19 MiB, by default).
    pub argon2_memory_kib: u32,
    /// Argon2id iterations.
    pub argon2_iterations: u32,
    /// Password hashes (log-in, registration) computed at once, each on its own worker
    /// thread holding `argon2_memory_kib`; 0 (the default) means one per CPU core. With
    /// `argon2_queue` this bounds the memory a log-in flood can take.
    pub argon2_concurrency: usize,
    /// Log-ins and registrations waiting for a hashing thread; beyond it they are answered
    /// `unavailable` (503, `Retry-After: 1`) at once.
    pub argon2_queue: usize,
    /// How long a request head may take to arrive in full, in ms: a new connection's first
    /// one from the accept (TLS handshake included), later ones from their first byte.
    /// Slower connections are closed.
    pub http_header_timeout_ms: u64,
    /// How long a kept-alive HTTP connection may stay silent between requests, in ms.
    pub http_idle_timeout_ms: u64,
    /// How long a request body may take before any allowance for its size, in ms; see
    /// `http_body_min_bytes_per_second`. A body that falls behind is cut and the connection
    /// closed.
    pub http_body_timeout_ms: u64,
    /// Each this many bytes of a request body received add one second to its deadline, so
    /// a body sent at least this fast is never cut (0: the whole body must arrive within
    /// `http_body_timeout_ms`).
    pub http_body_min_bytes_per_second: u64,
    /// Connections one source address may hold open at once (WebSockets included); more
    /// are closed at accept. 0 for no limit.
    pub max_connections_per_address: usize,
    /// How long a shutdown waits for connections to finish their in-flight work, in ms.
    pub shutdown_grace_ms: u64,
    /// Where attachment ciphertext lives: `"fs"` (the default: files under `blob_dir`, for
    /// one node or a directory every node shares) or `"s3"` (a bucket of an S3-compatible
    /// object store, see `s3`, shared by every node of a cluster).
    pub blob_store: BlobStoreKind,
    /// Where the filesystem blob store keeps attachment ciphertext. Empty (the default):
    /// next to the store, as [`Config::blob_path`] says (`sqlite://dir/chat.db` keeps its
    /// blobs in `dir/blobs`). Created on the first upload; leftovers of uploads a crash cut
    /// off (`*.tmp` not written to for longer than [`Config::blob_orphan_age`]) are removed
    /// at start and every hour.
    pub blob_dir: PathBuf,
    /// The bucket of the S3 blob store (used when `blob_store` is `"s3"`).
    pub s3: S3Config,
    /// The largest attachment upload, in bytes (100 MiB by default).
    pub max_attachment_bytes: u64,
    /// Attachment bytes one account may upload in a burst (1 GiB by default); the budget
    /// refills at `upload_bytes_per_account_per_day`. An upload whose `Content-Length` is
    /// over what is left is refused before a byte is stored; one without is cut when it runs
    /// out (`rate_limited` with `Retry-After` either way, and nothing is kept).
    pub upload_burst_bytes_per_account: u64,
    /// Attachment bytes per day that refill an account's upload budget (1 GiB by default).
    pub upload_bytes_per_account_per_day: u64,
    /// Uploads one account may have in progress at once; more are refused
    /// (`rate_limited`).
    pub concurrent_uploads_per_account: usize,
    /// The push gateway to POST notifications to (`http://host:port/path`; plain HTTP, as
    /// the gateway is usually a sidecar on the same host or network). Without it, the
    /// logging notifier only writes a log line per notification. Its path and query (which
    /// may carry the gateway's key) never appear in `Debug` or `Display` output.
    pub push_webhook_url: Option<WebhookUrl>,
    /// How long one webhook request may take, in milliseconds.
    pub push_timeout_ms: u64,
    /// Attempts per notification before it is given up (with a log line).
    pub push_attempts: u32,
    /// The first retry delay, in milliseconds; it doubles per attempt (capped at 60 s) and
    /// a random part of it (full jitter) is used.
    pub push_backoff_ms: u64,
    /// Notifications being sent at once; more wait, coalescing further.
    pub push_concurrency: usize,
    /// Offline deliveries queued for the push dispatcher (and devices with a notification
    /// pending); beyond it they are dropped and counted, never blocking delivery.
    pub push_queue: usize,
    /// How long a device's first offline delivery waits for more before its notification
    /// goes out, in milliseconds: a burst becomes one notification with a count.
    pub push_coalesce_ms: u64,
    /// This node's ID in the node registry; random at each start when absent.
    pub node_id: Option<String>,
    /// The URL clients reach this node at, as discovery recommends it; by default
    /// `http://` (or `https://` with TLS) and the bound listen address. Set it when
    /// listening on a wildcard address or behind a proxy.
    pub public_url: Option<String>,
    /// This node's region, for discovery's `?region=` preference.
    pub region: Option<String>,
    /// How long a registration in the node registry lives unless refreshed, in ms.
    pub discovery_ttl_ms: u64,
    /// How often the node refreshes its registration (connections, CPU), in ms.
    pub discovery_refresh_ms: u64,
    /// How often the cursors devices acknowledged are stored, in ms: each `ack` is
    /// recorded in memory and stored with every other device's in one batch per interval
    /// (and once more at shutdown). The stored cursor is a record nothing waits for (a
    /// device names its own when it connects), so a crash only leaves it this far behind.
    pub cursor_flush_ms: u64,
    /// How many days inbox entries are kept (R-SYNC-2); 0 (the default) keeps them
    /// forever. When set, a background task deletes older entries every few minutes, and a
    /// device that comes back with a cursor below what was trimmed gets
    /// `resync_required {inbox_trimmed}` and recovers the rest from history. Messages
    /// themselves are kept either way.
    pub inbox_retention_days: u32,
}

/// A store URL whose password is kept out of logs: `Debug` and `Display` show it as `***`
/// (`postgres://user:***@host/db`, or `password=***` in a key-value connection string).
/// [`StoreUrl::as_str`] gives the URL itself, to open the store with.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct StoreUrl(String);

impl StoreUrl {
    /// The URL with its password, to connect with. Never log it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether several nodes can share this store (PostgreSQL), as a cluster needs.
    pub fn is_shared(&self) -> bool {
        self.0.starts_with("postgres://") || self.0.starts_with("postgresql://")
    }

    /// The URL with any password replaced by `***`.
    pub fn redacted(&self) -> String {
        redact(&self.0)
    }
}

/// The push gateway's URL. `Debug` and `Display` show only its scheme and host (a gateway
/// key in the path or query, or a password, stays out of logs); [`WebhookUrl::as_str`]
/// gives the URL to connect to.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct WebhookUrl(String);

impl WebhookUrl {
    /// The whole URL. Never log it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The scheme and host (with port), the rest replaced by `/…`.
    pub fn redacted(&self) -> String {
        let (scheme, rest) = self.0.split_once("://").unwrap_or(("", &self.0));
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let host = authority.rsplit('@').next().unwrap_or_default();
        format!("{scheme}://{host}/…")
    }
}

impl From<&str> for WebhookUrl {
    fn from(url: &str) -> Self {
        Self(url.to_owned())
    }
}

impl std::fmt::Debug for WebhookUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl std::fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl From<String> for StoreUrl {
    fn from(url: String) -> Self {
        Self(url)
    }
}

impl From<&str> for StoreUrl {
    fn from(url: &str) -> Self {
        Self(url.to_owned())
    }
}

impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl std::fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Replaces the password of a URL (`scheme://user:password@host…`) or of a libpq key-value
/// string (`… password=secret …`, quoted or not) with `***`.
fn redact(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        // The authority ends at the first '/', '?' or '#'; its userinfo at the last '@'.
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let tail = redact_query(tail);
        if let Some((userinfo, host)) = authority.rsplit_once('@')
            && let Some((user, _password)) = userinfo.split_once(':')
        {
            return format!("{scheme}://{user}:***@{host}{tail}");
        }
        return format!("{scheme}://{authority}{tail}");
    }
    redact_key_values(url)
}

/// Redacts a `password=` parameter in a URL's query.
fn redact_query(tail: &str) -> String {
    let Some((path, query)) = tail.split_once('?') else {
        return tail.to_owned();
    };
    let params: Vec<String> = query
        .split('&')
        .map(|p| match p.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
            _ => p.to_owned(),
        })
        .collect();
    format!("{path}?{}", params.join("&"))
}

/// Redacts `password=value` (value possibly single-quoted with `\'` escapes) in a libpq
/// key-value string.
fn redact_key_values(s: &str) -> String {
    let Some(start) = s.find("password") else {
        return s.to_owned();
    };
    let after_key = &s[start + "password".len()..];
    let Some(eq) = after_key
        .find('=')
        .filter(|&i| after_key[..i].trim().is_empty())
    else {
        return s.to_owned();
    };
    let value = after_key[eq + 1..].trim_start();
    let value_start = s.len() - value.len();
    let value_end = if let Some(quoted) = value.strip_prefix('\'') {
        let mut escaped = false;
        let mut end = None;
        for (i, c) in quoted.char_indices() {
            match c {
                '\\' if !escaped => escaped = true,
                '\'' if !escaped => {
                    end = Some(i + 2);
                    break;
                }
                _ => escaped = false,
            }
        }
        value_start + end.unwrap_or(value.len())
    } else {
        value_start + value.find(char::is_whitespace).unwrap_or(value.len())
    };
    format!("{}***{}", &s[..value_start], &s[value_end..])
}

/// Which blob store keeps attachments.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobStoreKind {
    /// Files under `blob_dir`: one node (or a directory every node shares).
    #[default]
    Fs,
    /// A bucket of an S3-compatible object store, shared by every node.
    S3,
}

impl std::str::FromStr for BlobStoreKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fs" => Ok(Self::Fs),
            "s3" => Ok(Self::S3),
            other => Err(format!("unknown blob store {other:?} (fs or s3)")),
        }
    }
}

/// An S3-compatible bucket (AWS S3, MinIO, Ceph RGW, Cloudflare R2, …) and the credentials
/// to use it. The secret key never appears in `Debug` output or logs.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// The service's base URL (`https://s3.eu-west-1.amazonaws.com`,
    /// `http://127.0.0.1:9000`); by default AWS's endpoint for `region`.
    pub endpoint: Option<String>,
    /// The bucket; it must exist (the node checks at start).
    pub bucket: String,
    /// The region requests are signed for (`us-east-1` when absent).
    pub region: Option<String>,
    /// Prepended to every object key (`blobs/` by default), so one bucket can hold other
    /// things too.
    pub prefix: Option<String>,
    /// Address the bucket as `https://BUCKET.endpoint/` (AWS's virtual-hosted style)
    /// instead of `endpoint/BUCKET/` (path style, the default, which MinIO and most
    /// S3-compatible servers need).
    pub virtual_host_style: bool,
    /// The access key ID.
    pub access_key_id: Option<String>,
    /// The secret access key. Prefer `secret_access_key_file` or the environment to keep it
    /// out of the configuration file.
    pub secret_access_key: Option<Secret>,
    /// A file holding the secret access key (surrounding whitespace ignored).
    pub secret_access_key_file: Option<PathBuf>,
    /// A session token, for temporary credentials.
    pub session_token: Option<Secret>,
}

impl S3Config {
    /// The endpoint: the configured one, or AWS's for the region.
    pub fn endpoint(&self) -> String {
        match &self.endpoint {
            Some(endpoint) => endpoint.clone(),
            None => format!("https://s3.{}.amazonaws.com", self.region()),
        }
    }

    /// The signing region.
    pub fn region(&self) -> &str {
        self.region.as_deref().unwrap_or("us-east-1")
    }

    /// The object key prefix.
    pub fn prefix(&self) -> &str {
        self.prefix.as_deref().unwrap_or("blobs/")
    }

    /// The secret access key: the configured value, else the file's content.
    pub fn secret(&self) -> Result<Option<Secret>, ConfigError> {
        if let Some(secret) = &self.secret_access_key {
            return Ok(Some(secret.clone()));
        }
        let Some(path) = &self.secret_access_key_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError(format!(
                "cannot read s3.secret_access_key_file {}: {e}",
                path.display()
            ))
        })?;
        Ok(Some(Secret(text.trim().to_owned())))
    }
}

/// A credential kept out of logs: `Debug` shows `***`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, to sign with. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(secret: String) -> Self {
        Self(secret)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

/// PEM files for TLS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain.
    pub cert: PathBuf,
    /// The private key.
    pub key: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            store: "sqlite://data/chat.db".into(),
            durability: Durability::Fsync,
            store_pool_size: 16,
            store_max_wal_mib: 64,
            redis_url: None,
            redis_prefix: "chat:".into(),
            tls: None,
            heartbeat_interval_ms: 5_000,
            missed_heartbeats: 3,
            max_group_members: MAX_GROUP_MEMBERS,
            outbound_queue: 256,
            outbound_queue_bytes: 4 * 1024 * 1024,
            frames_per_second: 50.0,
            frame_burst: 200,
            sends_per_account_per_second: 20.0,
            send_burst_per_account: 200,
            auth_burst_per_address: 30,
            auth_burst_per_account: 100,
            auth_account_refill_ms: 10_000,
            auth_failures_per_address_account: 5,
            auth_failure_refill_ms: 60_000,
            auth_known_address_days: 30,
            search_burst_per_account: 30,
            searches_per_account_per_second: 0.5,
            prekey_claim_burst_per_user: 50,
            prekey_claims_per_user_per_hour: 50,
            argon2_memory_kib: 19 * 1024,
            argon2_iterations: 2,
            argon2_concurrency: 0,
            argon2_queue: 64,
            http_header_timeout_ms: 10_000,
            http_idle_timeout_ms: 60_000,
            http_body_timeout_ms: 30_000,
            http_body_min_bytes_per_second: 1024,
            max_connections_per_address: 256,
            shutdown_grace_ms: 10_000,
            blob_store: BlobStoreKind::Fs,
            blob_dir: PathBuf::new(),
            s3: S3Config::default(),
            max_attachment_bytes: 100 * 1024 * 1024,
            upload_burst_bytes_per_account: 1024 * 1024 * 1024,
            upload_bytes_per_account_per_day: 1024 * 1024 * 1024,
            concurrent_uploads_per_account: 4,
            push_webhook_url: None,
            push_timeout_ms: 5_000,
            push_attempts: 5,
            push_backoff_ms: 250,
            push_concurrency: 16,
            push_queue: 10_000,
            push_coalesce_ms: 1_000,
            node_id: None,
            public_url: None,
            region: None,
            discovery_ttl_ms: 30_000,
            discovery_refresh_ms: 10_000,
            cursor_flush_ms: 1_000,
            inbox_retention_days: 0,
        }
    }
}

/// A configuration value is out of range.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

impl Config {
    /// Checks ranges that the types cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError(m.into()));
        if self.max_group_members == 0 || self.max_group_members > MAX_GROUP_MEMBERS {
            return bad("max_group_members must be between 1 and 100");
        }
        if self.heartbeat_interval_ms == 0 || self.missed_heartbeats == 0 {
            return bad("heartbeat_interval_ms and missed_heartbeats must be positive");
        }
        if self.cursor_flush_ms == 0 {
            return bad("cursor_flush_ms must be positive");
        }
        if self.send_burst_per_account == 0 || self.sends_per_account_per_second <= 0.0 {
            return bad("send_burst_per_account and sends_per_account_per_second must be positive");
        }
        if self.search_burst_per_account == 0 || self.searches_per_account_per_second <= 0.0 {
            return bad(
                "search_burst_per_account and searches_per_account_per_second must be positive",
            );
        }
        if self.auth_burst_per_address == 0
            || self.auth_burst_per_account == 0
            || self.auth_failures_per_address_account == 0
        {
            return bad("auth_burst_per_address, auth_burst_per_account and \
                 auth_failures_per_address_account must be positive");
        }
        if self.concurrent_uploads_per_account == 0 {
            return bad("concurrent_uploads_per_account must be positive");
        }
        if self.prekey_claim_burst_per_user == 0 {
            return bad("prekey_claim_burst_per_user must be positive");
        }
        if self.http_header_timeout_ms == 0
            || self.http_idle_timeout_ms == 0
            || self.http_body_timeout_ms == 0
        {
            return bad(
                "http_header_timeout_ms, http_idle_timeout_ms and http_body_timeout_ms must be \
                 positive",
            );
        }
        if self.outbound_queue == 0 || self.frame_burst == 0 || self.frames_per_second <= 0.0 {
            return bad("outbound_queue, frame_burst and frames_per_second must be positive");
        }
        if let Some(url) = &self.redis_url {
            let url = url.as_str();
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return bad("redis_url must be a redis:// or rediss:// URL");
            }
            if self.redis_prefix.is_empty()
                || self.redis_prefix.len() > 64
                || self.redis_prefix.contains(char::is_whitespace)
            {
                return bad("redis_prefix must be 1 to 64 bytes, without spaces");
            }
            if !self.store.is_shared() {
                return bad(
                    "redis_url makes this node one of a cluster, and the nodes of a cluster must \
                     share their store: set store to a postgres:// URL (an embedded sqlite:// \
                     or memory: store belongs to one node)",
                );
            }
        }
        if self.blob_store == BlobStoreKind::S3 {
            if self.s3.bucket.is_empty() {
                return bad("blob_store \"s3\" needs s3.bucket");
            }
            let endpoint = self.s3.endpoint();
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                return bad("s3.endpoint must be an http:// or https:// URL");
            }
            if self.s3.access_key_id.is_none()
                || (self.s3.secret_access_key.is_none() && self.s3.secret_access_key_file.is_none())
            {
                return bad(
                    "blob_store \"s3\" needs s3.access_key_id and s3.secret_access_key (or \
                     s3.secret_access_key_file, CHAT_S3_SECRET_ACCESS_KEY)",
                );
            }
        }
        if self.store_pool_size == 0 {
            return bad("store_pool_size must be positive");
        }
        if !(1..=1 << 20).contains(&self.store_max_wal_mib) {
            return bad("store_max_wal_mib must be between 1 and 1048576");
        }
        if self.outbound_queue_bytes < chat_core::limits::MAX_FRAME_BYTES {
            return bad(
                "outbound_queue_bytes must be at least MAX_FRAME_BYTES (the largest frame)",
            );
        }
        if self.push_attempts == 0 || self.push_concurrency == 0 || self.push_queue == 0 {
            return bad("push_attempts, push_concurrency and push_queue must be positive");
        }
        if let Some(url) = &self.push_webhook_url
            && crate::push::Target::parse(url.as_str()).is_none()
        {
            return bad("push_webhook_url must be an http://host[:port][/path] URL");
        }
        if self.discovery_refresh_ms == 0 || self.discovery_ttl_ms <= self.discovery_refresh_ms {
            return bad("discovery_ttl_ms must be longer than discovery_refresh_ms (> 0)");
        }
        if let Some(id) = &self.node_id
            && chat_core::NodeId::new(id.as_str()).is_err()
        {
            return bad("node_id must be 1 to 64 characters of A-Z, a-z, 0-9, '.', '_', '-'");
        }
        Ok(())
    }

    /// Where attachment ciphertext is kept: `blob_dir` when set, otherwise next to the store,
    /// so the store and its blobs move, and are backed up, together:
    /// - `sqlite://DIR/chat.db`: `DIR/blobs`;
    /// - `memory:` (tests): `chat-blobs-<process ID>` in the system's temporary directory,
    ///   as nothing of a memory store outlives the process either;
    /// - `postgres://…`: `data/blobs` under the working directory (set `blob_dir` to an
    ///   absolute path under a service manager; the start-up log line names the one used).
    pub fn blob_path(&self) -> PathBuf {
        if !self.blob_dir.as_os_str().is_empty() {
            return self.blob_dir.clone();
        }
        let store = self.store.as_str();
        if let Some(file) = store
            .strip_prefix("sqlite://")
            .or_else(|| store.strip_prefix("sqlite:"))
        {
            let dir = std::path::Path::new(file)
                .parent()
                .unwrap_or_else(|| std::path::Path::new(""));
            return dir.join("blobs");
        }
        if store == "memory:" {
            return std::env::temp_dir().join(format!("chat-blobs-{}", std::process::id()));
        }
        PathBuf::from("data/blobs")
    }

    /// The number of password-hashing threads: `argon2_concurrency`, or one per core.
    pub fn argon2_threads(&self) -> usize {
        match self.argon2_concurrency {
            0 => std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            n => n,
        }
    }

    /// How old a leftover of an unfinished upload must be before it is collected: longer
    /// than the longest upload the HTTP limits let through (`max_attachment_bytes` at
    /// `http_body_min_bytes_per_second`, plus `http_body_timeout_ms`), plus an hour, so no
    /// upload in flight on any node is ever taken for a crash's leftover.
    pub fn blob_orphan_age(&self) -> Duration {
        let body = Duration::from_millis(self.http_body_timeout_ms);
        let transfer = match self.http_body_min_bytes_per_second {
            0 => Duration::ZERO,
            rate => Duration::from_secs(self.max_attachment_bytes / rate),
        };
        body.saturating_add(transfer)
            .saturating_add(Duration::from_secs(3600))
    }

    /// The heartbeat interval.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(u64::from(self.heartbeat_interval_ms))
    }

    /// How long inbox entries are kept, or `None` when they are kept forever (0 days).
    pub fn inbox_retention(&self) -> Option<Duration> {
        match self.inbox_retention_days {
            0 => None,
            days => Some(Duration::from_secs(u64::from(days) * 86_400)),
        }
    }

    /// How long a connection may stay silent before it is closed.
    pub fn idle_timeout(&self) -> Duration {
        self.heartbeat_interval()
            .saturating_mul(self.missed_heartbeats)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn inbox_retention_is_off_by_default_and_read_from_json() {
        assert_eq!(Config::default().inbox_retention_days, 0);
        assert_eq!(Config::default().inbox_retention(), None);
        let config: Config = serde_json::from_str(r#"{"inbox_retention_days": 30}"#).unwrap();
        assert_eq!(
            config.inbox_retention(),
            Some(Duration::from_secs(30 * 24 * 3600))
        );
        config.validate().unwrap();
        let config: Config = serde_json::from_str(r#"{"inbox_retention_days": 0}"#).unwrap();
        assert_eq!(config.inbox_retention(), None);
        assert!(serde_json::from_str::<Config>(r#"{"inbox_retention_days": -1}"#).is_err());
    }

    #[test]
    fn webhook_keys_never_show() {
        let config: Config = serde_json::from_str(
            r#"{"push_webhook_url": "http://gateway:8088/push/k3y-s3cret?token=t0ken"}"#,
        )
        .unwrap();
        config.validate().unwrap();
        let url = config.push_webhook_url.clone().unwrap();
        assert_eq!(url.to_string(), "http://gateway:8088/…");
        let shown = format!("{config:?}");
        for secret in ["k3y-s3cret", "t0ken"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(url.as_str().ends_with("token=t0ken"));
    }

    #[test]
    fn store_passwords_never_show() {
        for (url, secret, shown) in [
            (
                "postgres://chat:s3cret@db:5432/chat",
                "s3cret",
                "postgres://chat:***@db:5432/chat",
            ),
            (
                "postgres://chat:p@ss:w@rd@db/chat",
                "ss:w@rd",
                "postgres://chat:***@db/chat",
            ),
            (
                "postgresql://chat@db/chat?password=s3cret&sslmode=require",
                "s3cret",
                "postgresql://chat@db/chat?password=***&sslmode=require",
            ),
            (
                "host=db user=chat password=s3cret dbname=chat",
                "s3cret",
                "host=db user=chat password=*** dbname=chat",
            ),
            (
                "host=db password = 'se cr\\'et' dbname=chat",
                "se cr",
                "host=db password = *** dbname=chat",
            ),
            (
                "sqlite://data/chat.db",
                "no secret",
                "sqlite://data/chat.db",
            ),
            ("memory:", "no secret", "memory:"),
        ] {
            let store = StoreUrl::from(url);
            assert_eq!(store.to_string(), shown, "{url}");
            let config = Config {
                store: store.clone(),
                ..Config::default()
            };
            assert!(!format!("{config:?}").contains(secret), "{url}");
            assert_eq!(store.as_str(), url);
        }
    }

    #[test]
    fn redis_needs_a_shared_store() {
        let cluster = |store: &str, redis: &str| Config {
            store: store.into(),
            redis_url: Some(redis.into()),
            ..Config::default()
        };
        cluster("postgres://chat@127.0.0.1/test", "redis://127.0.0.1:6379")
            .validate()
            .unwrap();
        for store in ["sqlite://data/chat.db", "memory:"] {
            let err = cluster(store, "redis://127.0.0.1:6379")
                .validate()
                .unwrap_err();
            assert!(err.0.contains("share their store"), "{err}");
        }
        let err = cluster("postgres://h/db", "http://127.0.0.1:6379")
            .validate()
            .unwrap_err();
        assert!(err.0.contains("redis://"), "{err}");
        let mut no_prefix = cluster("postgres://h/db", "redis://127.0.0.1:6379");
        no_prefix.redis_prefix.clear();
        let err = no_prefix.validate().unwrap_err();
        assert!(err.0.contains("redis_prefix"), "{err}");
        let url: StoreUrl = "redis://:hunter2@127.0.0.1:6379/0".into();
        assert!(!format!("{url} {url:?}").contains("hunter2"));
    }

    #[test]
    fn blobs_live_next_to_the_store() {
        let with = |store: &str, blob_dir: &str| Config {
            store: store.into(),
            blob_dir: blob_dir.into(),
            ..Config::default()
        };
        assert_eq!(Config::default().blob_path(), PathBuf::from("data/blobs"));
        assert_eq!(
            with("sqlite:///srv/chat/chat.db", "").blob_path(),
            PathBuf::from("/srv/chat/blobs")
        );
        assert_eq!(
            with("sqlite://chat.db", "").blob_path(),
            PathBuf::from("blobs")
        );
        assert_eq!(
            with("sqlite:///srv/chat/chat.db", "/mnt/blobs").blob_path(),
            PathBuf::from("/mnt/blobs")
        );
        let memory = with("memory:", "").blob_path();
        assert!(memory.starts_with(std::env::temp_dir()), "{memory:?}");
        assert_eq!(
            with("postgres://chat@db/chat", "").blob_path(),
            PathBuf::from("data/blobs")
        );
    }

    #[test]
    fn s3_settings_are_checked_and_the_secret_never_shows() {
        let config: Config = serde_json::from_str(
            r#"{"blob_store": "s3", "s3": {"bucket": "chat", "access_key_id": "AK",
                "secret_access_key": "hunter2", "endpoint": "http://127.0.0.1:9000"}}"#,
        )
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.blob_store, BlobStoreKind::S3);
        assert!(!format!("{config:?}").contains("hunter2"));
        assert_eq!(config.s3.secret().unwrap().unwrap().expose(), "hunter2");
        assert_eq!(config.s3.prefix(), "blobs/");
        let no_secret = Config {
            s3: S3Config {
                secret_access_key: None,
                ..config.s3.clone()
            },
            ..config.clone()
        };
        assert!(no_secret.validate().unwrap_err().0.contains("secret"));
        let no_bucket = Config {
            s3: S3Config {
                bucket: String::new(),
                ..config.s3.clone()
            },
            ..config.clone()
        };
        assert!(no_bucket.validate().unwrap_err().0.contains("bucket"));
        assert!(serde_json::from_str::<Config>(r#"{"blob_store": "nfs"}"#).is_err());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "from-file\n").unwrap();
        let from_file = S3Config {
            secret_access_key: None,
            secret_access_key_file: Some(file),
            ..config.s3.clone()
        };
        assert_eq!(from_file.secret().unwrap().unwrap().expose(), "from-file");
        // The default bound outlasts a 100 MiB upload at the slowest rate let through.
        let age = Config::default().blob_orphan_age();
        assert!(
            age > Duration::from_secs(100 * 1024 * 1024 / 1024),
            "{age:?}"
        );
    }

    #[test]
    fn the_wal_bound_is_64_mib_unless_asked_and_never_zero() {
        assert_eq!(Config::default().store_max_wal_mib, 64);
        let config: Config = serde_json::from_str(r#"{"store_max_wal_mib": 16}"#).unwrap();
        assert_eq!(config.store_max_wal_mib, 16);
        config.validate().unwrap();
        let config: Config = serde_json::from_str(r#"{"store_max_wal_mib": 0}"#).unwrap();
        assert!(config.validate().is_err());
    }

    #[test]
    fn durability_is_fsync_unless_asked() {
        assert_eq!(Config::default().durability, Durability::Fsync);
        let config: Config = serde_json::from_str(r#"{"durability": "os"}"#).unwrap();
        assert_eq!(config.durability, Durability::Os);
        let err = serde_json::from_str::<Config>(r#"{"durability": "never"}"#).unwrap_err();
        assert!(err.to_string().contains("fsync"), "{err}");
    }
}
