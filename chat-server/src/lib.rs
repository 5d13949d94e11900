//! chat-server: the chat node, as a library to embed and as the `chat-server` binary.
//!
//! A node serves the HTTP API (accounts, devices, keys, conversations, history) and the
//! WebSocket gateway (authentication, backlog from a cursor, durable sends, live delivery)
//! over one listener. It stores through [`chat_core::Store`] (SQLite by default) and routes
//! live events through [`chat_core::Bus`]: in-process for one node ([`LocalBus`]), on Redis
//! pub/sub for the nodes of a cluster ([`RedisBus`], when `redis_url` is set).
//!
//! ```no_run
//! # async fn run() -> Result<(), chat_server::ServerError> {
//! let server = chat_server::Server::bind(chat_server::Config::default()).await?;
//! println!("listening on {}", server.local_addr());
//! server.run_until(async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```
#![forbid(unsafe_code)]

mod api;
mod auth;
mod backup;
mod blob;
mod bus;
mod cluster;
mod config;
mod cursors;
mod discovery;
mod gateway;
mod hashing;
mod health;
mod limiter;
mod listener;
mod login_limits;
mod presence;
mod push;
mod retention;
mod s3;
mod server;
mod state;
mod telemetry;
mod throttle;

pub use api::keys::{IDENTITY_BYTES, identity_blob};
pub use backup::{BackupError, BackupReport, backup};
pub use blob::FsBlobStore;
pub use bus::LocalBus;
pub use cluster::{BusStats, RedisBus};
pub use config::{
    BlobStoreKind, Config, ConfigError, S3Config, Secret, StoreUrl, TlsConfig, WebhookUrl,
};
pub use discovery::LocalRegistry;
pub use s3::{PART_SIZE, S3BlobStore, S3Error};
pub use server::{Server, ServerError};
pub use telemetry::{install_prometheus, render as render_metrics};
