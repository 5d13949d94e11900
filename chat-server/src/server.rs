//! Binding, serving and graceful shutdown of one node.
//!
//! Serving is the accept loop of `listener` (HTTP/1.1, plain or TLS, with its timeouts and
//! per-address connection cap).
//!
//! Shutdown: the signal flips a watch channel; the listener stops accepting; every
//! connection finishes the request it is handling (an append in flight completes and is
//! acknowledged), sends `closing {shutting_down}` and closes; the node then waits, up to
//! `shutdown_grace_ms`, until every holder of the shared state is gone, and stores the
//! cursors devices acknowledged since the last flush (`cursors.rs`). Acknowledged messages
//! are already durable, so nothing acknowledged is lost.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use chat_core::{BlobStore, NodeId, NodeRegistry, PresenceConfig, PushNotifier, Store, StoreError};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;

use crate::api;
use crate::auth;
use crate::blob::FsBlobStore;
use crate::bus::LocalBus;
use crate::cluster::Redis;
use crate::cluster::RedisBus;
use crate::cluster::lease::Leases;
use crate::cluster::presence::Holders;
use crate::cluster::registry::RedisRegistry;
use crate::config::{BlobStoreKind, Config, ConfigError, TlsConfig};
use crate::discovery::{self, Identity, LocalRegistry};
use crate::hashing::Hasher;
use crate::listener::{self, HttpLimits};
use crate::presence::Presence;
use crate::push::{PushDispatcher, Worker};
use crate::retention;
use crate::s3::{S3BlobStore, S3Error};
use crate::state::{Limits, Shared};
use crate::throttle::LogThrottle;

/// Why a node could not start or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The store could not be opened.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The store could not be opened.
    #[error("cannot open the store {store}: {source}")]
    StoreOpen {
        /// The store URL, its password redacted.
        store: String,
        /// Why.
        source: StoreError,
    },
    /// The store opened but refused a write (a read-only file or directory, a full disk, a
    /// read-only database user).
    #[error("store {store} cannot take writes: {source}")]
    StoreNotWritable {
        /// The store URL, its password redacted.
        store: String,
        /// Why the probe write failed.
        source: StoreError,
    },
    /// A file or directory the node needs could not be created or read.
    #[error("{what} {path}: {source}")]
    Path {
        /// What the path is for.
        what: &'static str,
        /// The path.
        path: std::path::PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// Redis (`redis_url`) could not be reached at start.
    #[error("cannot reach redis at {url}: {reason}")]
    Redis {
        /// The Redis URL, its password redacted.
        url: String,
        /// Why.
        reason: String,
    },
    /// The listen address could not be bound (taken, or not this host's).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS certificate or key could not be loaded.
    #[error("cannot load the TLS certificate {cert} or key {key}: {source}")]
    Tls {
        /// The certificate chain's path.
        cert: std::path::PathBuf,
        /// The private key's path.
        key: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The S3 blob store could not be opened (settings, or the bucket unreachable).
    #[error("blob store: {0}")]
    BlobStore(#[from] S3Error),
    /// Binding or serving failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// A bound, not yet running node.
pub struct Server {
    shared: Arc<Shared>,
    listener: std::net::TcpListener,
    shutdown: watch::Sender<bool>,
    alive: mpsc::Receiver<()>,
    /// The push dispatcher's task, started by `run_until`.
    push: Worker,
    /// What this node announces to the node registry.
    node: Identity,
    /// The TLS acceptor, loaded at bind so a bad certificate stops the start.
    tls: Option<TlsAcceptor>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("listener", &self.listener)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Opens the configured store and binds the listener.
    pub async fn bind(config: Config) -> Result<Self, ServerError> {
        config.validate()?;
        // The embedded default keeps its database in a folder that may not exist yet.
        let sqlite_dir = config
            .store
            .as_str()
            .strip_prefix("sqlite://")
            .and_then(|p| std::path::Path::new(p).parent());
        if let Some(dir) = sqlite_dir.filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| ServerError::Path {
                what: "cannot create the store's directory",
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let options = chat_storage::OpenOptions::default()
            .durability(config.durability)
            .pool_size(config.store_pool_size)
            .max_wal_bytes(config.store_max_wal_mib * 1024 * 1024);
        let store = chat_storage::open_with(config.store.as_str(), &options)
            .await
            .map_err(|source| ServerError::StoreOpen {
                store: config.store.redacted(),
                source,
            })?;
        // A node that cannot write would start, say it listens, and refuse every send.
        if let Err(source) = store.probe_write().await {
            return Err(ServerError::StoreNotWritable {
                store: config.store.redacted(),
                source,
            });
        }
        Self::with_store(config, store).await
    }

    /// Binds the listener over an already opened store. The bus is a [`RedisBus`] when
    /// `redis_url` is set (connected here: an unreachable Redis fails the start), the
    /// in-process [`LocalBus`] otherwise.
    pub async fn with_store(config: Config, store: Arc<dyn Store>) -> Result<Self, ServerError> {
        config.validate()?;
        let bus: Arc<dyn chat_core::Bus> = match &config.redis_url {
            None => Arc::new(LocalBus::new()),
            Some(url) => Arc::new(
                RedisBus::connect(url.as_str(), &config.redis_prefix)
                    .await
                    .map_err(|source| ServerError::Redis {
                        url: url.redacted(),
                        reason: source.to_string(),
                    })?,
            ),
        };
        Self::with_bus(config, store, bus).await
    }

    /// Binds the listener over an already opened store, routing live events through `bus`
    /// (one the embedder built, or a test's instrumented one) whatever `redis_url` says.
    pub async fn with_bus(
        config: Config,
        store: Arc<dyn Store>,
        bus: Arc<dyn chat_core::Bus>,
    ) -> Result<Self, ServerError> {
        config.validate()?;
        let argon2 = auth::argon2(config.argon2_memory_kib, config.argon2_iterations)
            .map_err(ConfigError)?;
        let hasher = Hasher::start(argon2, config.argon2_threads(), config.argon2_queue);
        let dummy_hash = hasher
            .hash("timing equaliser".into())
            .await
            .map_err(|e| ConfigError(e.to_string()))?;
        let blobs: Arc<dyn BlobStore> = match config.blob_store {
            BlobStoreKind::Fs => {
                if config.redis_url.is_some() {
                    // Not refused: a directory every node mounts works, as the store's
                    // clean-up never touches another node's upload in flight.
                    tracing::warn!(
                        dir = ?config.blob_path(),
                        "a cluster node with the filesystem blob store: attachments are seen \
                         by other nodes only if blob_dir is one directory they all share; set \
                         blob_store to s3 otherwise"
                    );
                }
                let blob_dir = config.blob_path();
                Arc::new(
                    FsBlobStore::open(&blob_dir).map_err(|source| ServerError::Path {
                        what: "cannot read the blob directory",
                        path: blob_dir.clone(),
                        source,
                    })?,
                )
            }
            BlobStoreKind::S3 => Arc::new(S3BlobStore::open(&config.s3).await?),
        };
        let tls = match &config.tls {
            Some(tls) => Some(tls_acceptor(tls).await?),
            None => None,
        };
        let listener =
            std::net::TcpListener::bind(config.listen).map_err(|source| ServerError::Bind {
                addr: config.listen,
                source,
            })?;
        listener.set_nonblocking(true)?;
        let node = identity(&config, &listener)?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (alive_tx, alive) = mpsc::channel(1);
        let redis = match &config.redis_url {
            Some(url) => Some(
                Redis::connect(url.as_str(), &config.redis_prefix)
                    .await
                    .map_err(|e| ServerError::Redis {
                        url: url.redacted(),
                        reason: e.to_string(),
                    })?,
            ),
            None => None,
        };
        if redis.is_some() {
            // Never the URL: it may carry a password.
            tracing::info!(prefix = %config.redis_prefix, "cluster state in redis");
        }
        let limits = Limits::new(&config, redis.as_ref());
        // A cluster's nodes see each other in Redis; a lone node knows itself.
        let registry: Arc<dyn NodeRegistry> = match &redis {
            Some(redis) => Arc::new(RedisRegistry::new(redis.clone())),
            None => Arc::new(LocalRegistry::new()),
        };
        let presence_config = PresenceConfig {
            heartbeat_interval: config.heartbeat_interval(),
            missed_heartbeats: config.missed_heartbeats,
        };
        // Which nodes hold each user's live devices, and the leases of work done once per
        // cluster: in Redis for a cluster, in memory for a lone node.
        let (holders, leases) = match &redis {
            Some(redis) => (Holders::redis(redis.clone()), Leases::redis(redis.clone())),
            None => (Holders::local(), Leases::local()),
        };
        let leases = Arc::new(leases);
        let (push, push_worker) =
            PushDispatcher::new(&config, store.clone(), leases.clone(), node.id.to_string());
        let presence = Arc::new(Presence::new(
            presence_config,
            bus.clone(),
            store.clone(),
            holders,
            node.id.clone(),
        ));
        let shared = Arc::new(Shared {
            store,
            bus,
            presence,
            cursors: Arc::default(),
            config,
            hasher,
            dummy_hash,
            limits,
            shutdown: shutdown_rx,
            alive: alive_tx,
            connections: AtomicUsize::new(0),
            blobs,
            push,
            registry,
            leases,
            health: Arc::default(),
            failed_logins: LogThrottle::new(crate::health::LOG_INTERVAL),
            metrics: None,
        });
        Ok(Self {
            shared,
            listener,
            shutdown,
            alive,
            push: push_worker,
            node,
            tls,
        })
    }

    /// Serves `/metrics` with this renderer (for example a Prometheus recorder's).
    pub fn set_metrics(&mut self, render: impl Fn() -> String + Send + Sync + 'static) {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.metrics = Some(Arc::new(render));
        }
    }

    /// Keeps attachments in `blobs` instead of the filesystem store under `blob_dir`.
    pub fn set_blob_store(&mut self, blobs: Arc<dyn BlobStore>) {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.blobs = blobs;
        }
    }

    /// Registers this node in `registry` (a shared one, so nodes see each other) instead of
    /// an in-process registry of its own.
    pub fn set_registry(&mut self, registry: Arc<dyn NodeRegistry>) {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.registry = registry;
        }
    }

    /// The node registry this node registers in and recommends from.
    pub fn registry(&self) -> Arc<dyn NodeRegistry> {
        self.shared.registry.clone()
    }

    /// The bus this node's connections subscribe to: what is published on it reaches the
    /// connections of the topic's device or user on this node.
    pub fn bus(&self) -> Arc<dyn chat_core::Bus> {
        self.shared.bus.clone()
    }

    /// This node's ID in the registry.
    pub fn node_id(&self) -> &NodeId {
        &self.node.id
    }

    /// Sends push notifications through `notifier` instead of the configured webhook or
    /// logging notifier.
    pub fn set_push_notifier(&mut self, notifier: Arc<dyn PushNotifier>) {
        self.push.set_notifier(notifier);
    }

    /// The address the node listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| self.shared.config.listen)
    }

    /// Serves until `signal` completes, then shuts down gracefully.
    pub async fn run_until(
        self,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let Self {
            shared,
            listener,
            shutdown,
            mut alive,
            push,
            node,
            tls,
        } = self;
        let grace = Duration::from_millis(shared.config.shutdown_grace_ms);
        let limits = HttpLimits::new(&shared.config);
        let app = api::router(shared.clone());
        let shutdown_rx = shared.shutdown.clone();
        tokio::spawn(shared.presence.clone().run(shared.shutdown.clone()));
        // Re-asserts this node's presence and sweeps dead nodes' (under the cluster's lease)
        // as often as the node refreshes its registration.
        tokio::spawn(shared.presence.clone().sweep_dead(
            shared.registry.clone(),
            shared.leases.clone(),
            Duration::from_millis(shared.config.discovery_refresh_ms),
            shared.shutdown.clone(),
        ));
        tokio::spawn(push.run());
        tokio::spawn(shared.cursors.clone().run(
            shared.store.clone(),
            shared.health.clone(),
            Duration::from_millis(shared.config.cursor_flush_ms),
            shared.shutdown.clone(),
        ));
        // Stores the acknowledgements of the last moments once every connection is gone.
        let last_flush = (
            shared.cursors.clone(),
            shared.store.clone(),
            shared.health.clone(),
        );
        tokio::spawn(collect_blob_garbage(
            shared.blobs.clone(),
            shared.config.blob_orphan_age(),
            shared.shutdown.clone(),
        ));
        // Inbox retention, when configured: holds the store, not the shared state.
        let _retention = retention::spawn(
            &shared.config,
            shared.store.clone(),
            retention::PassLease::new(shared.leases.clone(), node.id.to_string()),
            shared.shutdown.clone(),
        );
        // Registered before serving, so discovery never answers without this node.
        discovery::register(&shared, &node, 0.0).await;
        let (registry, node_id) = (shared.registry.clone(), node.id.clone());
        let weak = Arc::downgrade(&shared);
        tokio::spawn(discovery::announce(weak, node, shared.shutdown.clone()));
        drop(shared);
        // Holds the sender until serving is over, so the watch never closes early.
        let stopper = tokio::spawn(async move {
            signal.await;
            tracing::info!("shutting down");
            let _ = shutdown.send(true);
            shutdown
        });
        let listener = tokio::net::TcpListener::from_std(listener)?;
        listener::serve(listener, tls, app, limits, shutdown_rx, grace).await;
        // The listener only returns once the shutdown started; this hands back the sender.
        let _shutdown = stopper.await;
        wait_for_connections(&mut alive, grace).await;
        let (cursors, store, health) = last_flush;
        if tokio::time::timeout(grace, cursors.flush_logged(&*store, &health))
            .await
            .is_err()
        {
            tracing::warn!("acknowledged cursors not stored within the shutdown grace period");
        }
        // The announcer deregisters as the shutdown starts; this covers a node whose state
        // was already gone by then.
        if let Err(err) = registry.deregister(&node_id).await {
            tracing::warn!(cause = %err, "node deregistration failed");
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// Removes what uploads cut off by a crash left in the blob store, at start and then every
/// [`BLOB_COLLECT_EVERY`], until the node shuts down. Every node runs it; the stores make
/// that harmless (removing what another node already removed is not an error).
async fn collect_blob_garbage(
    blobs: Arc<dyn BlobStore>,
    older_than: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        match blobs.collect_garbage(older_than).await {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, "collected unfinished uploads"),
            Err(err) => tracing::warn!(cause = %err, "collecting unfinished uploads failed"),
        }
        tokio::select! {
            () = tokio::time::sleep(BLOB_COLLECT_EVERY) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// How often the blob store's leftovers are collected.
const BLOB_COLLECT_EVERY: Duration = Duration::from_secs(3600);

/// A TLS acceptor for the configured PEM files, speaking HTTP/1.1 only (the one protocol the
/// listener serves) in ALPN.
async fn tls_acceptor(tls: &TlsConfig) -> Result<TlsAcceptor, ServerError> {
    let loaded = axum_server::tls_rustls::RustlsConfig::from_pem_file(&tls.cert, &tls.key)
        .await
        .map_err(|source| ServerError::Tls {
            cert: tls.cert.clone(),
            key: tls.key.clone(),
            source,
        })?;
    let mut config = (*loaded.get_inner()).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

async fn wait_for_connections(alive: &mut mpsc::Receiver<()>, grace: Duration) {
    // Every connection holds the shared state, whose sender half keeps `alive` open.
    if tokio::time::timeout(grace, alive.recv()).await.is_err() {
        tracing::warn!("connections still open after the shutdown grace period");
    }
}

/// This node's registry identity: the configured or a random ID, the configured public URL
/// or one derived from the bound address, the region.
fn identity(config: &Config, listener: &std::net::TcpListener) -> Result<Identity, ServerError> {
    let id = match &config.node_id {
        Some(id) => id.clone(),
        None => {
            let mut salt = [0u8; 6];
            getrandom::fill(&mut salt).map_err(|e| ConfigError(e.to_string()))?;
            format!("node-{}", hex::encode(salt))
        }
    };
    let id = NodeId::new(id).map_err(|e| ConfigError(format!("node_id: {e}")))?;
    let url = match &config.public_url {
        Some(url) => url.clone(),
        None => {
            let scheme = if config.tls.is_some() {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://{}", listener.local_addr()?)
        }
    };
    Ok(Identity {
        id,
        url,
        region: config.region.clone(),
    })
}
