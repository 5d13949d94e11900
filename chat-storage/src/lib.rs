//! chat-storage: the storage backends of the chat crate family, behind the `chat_core` store
//! traits.
//!
//! - [`MemoryStore`]: everything in process memory, for unit tests of other crates.
//! - [`SqliteStore`] (feature `sqlite`, on by default): the embedded default. Bundled SQLite
//!   in WAL mode; one writer thread commits concurrent requests together (group commit), and
//!   a request is answered only after its commit is durable.
//! - `PostgresStore` (feature `postgres`): for several server nodes sharing one store. The
//!   schema keys messages by conversation and inboxes by device, so it can be sharded by
//!   those keys (see docs/STORAGE.md).
//!
//! [`open`] picks a backend from a URL-like string: `memory:`, `sqlite://PATH` or
//! `postgres://…`. Every backend passes the same conformance suite (feature `testing`,
//! `conformance_tests!`).
//!
//! ```
//! # async fn demo() -> Result<(), chat_core::StoreError> {
//! let store = chat_storage::open("memory:").await?;
//! let name = chat_core::Username::new("alice").expect("valid name");
//! let alice = store.create_user(&name, "$argon2id$…", chat_core::Timestamp::EPOCH).await?;
//! assert_eq!(store.user(alice.id).await?, Some(alice));
//! # Ok(())
//! # }
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(demo()).unwrap();
//! ```
#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::Arc;

use chat_core::{Store, StoreError};

mod common;
mod memory;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;
#[cfg(feature = "testing")]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
pub mod testing;

pub use memory::MemoryStore;

/// The histogram (in seconds, through the `metrics` facade) of the durable stores' commits:
/// SQLite's `COMMIT` (its WAL writes and, with `synchronous=FULL`, its fsync) of every write
/// transaction, and PostgreSQL's transaction of each append batch (its round trip and the
/// server's WAL flush). Its count is the number of those commits. Recorded only if the
/// application installed a `metrics` recorder.
pub const COMMIT_SECONDS: &str = "chat_store_commit_seconds";

/// The histogram (in seconds, through the `metrics` facade) of the SQLite checkpointer's
/// passive checkpoints: copying the WAL frames committed since the last one into the
/// database file, with its fsyncs. Commits issued meanwhile wait behind its fsync of the
/// database file (docs/STORAGE.md, "Checkpoints"), so a slow one here explains slow ones in
/// [`COMMIT_SECONDS`]. Recorded only if the application installed a `metrics` recorder.
pub const CHECKPOINT_SECONDS: &str = "chat_store_checkpoint_seconds";
#[cfg(feature = "postgres")]
pub use postgres::{PostgresOptions, PostgresStore};
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteOptions, SqliteStats, SqliteStore, Synchronous};

/// Opens the store a URL-like string names:
/// - `memory:` a fresh [`MemoryStore`];
/// - `sqlite://PATH` (or `sqlite:PATH`) a [`SqliteStore`] at `PATH` with default options,
///   created if missing (feature `sqlite`);
/// - `postgres://…` or `postgresql://…` a `PostgresStore` with default options (feature
///   `postgres`).
///
/// Migrations run before this returns; a store written by a newer schema is refused with
/// [`StoreError::SchemaTooNew`].
pub async fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    open_with(url, &OpenOptions::default()).await
}

/// How far each commit is pushed before the writes it carries are acknowledged
/// (docs/OPERATIONS.md, "Durability").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Durability {
    /// Every commit is on stable storage before it is acknowledged: SQLite
    /// `synchronous = FULL` (one fsync of the WAL per group commit), PostgreSQL
    /// `synchronous_commit = on`. Survives a crash of any process and a power loss. The
    /// default.
    #[default]
    Fsync,
    /// Every commit has reached the operating system (SQLite `synchronous = NORMAL` in WAL
    /// mode: fsyncs only at checkpoints) or the database server's memory (PostgreSQL
    /// `synchronous_commit = off`: its WAL writer flushes within about three
    /// `wal_writer_delay`s, 600 ms by default) before it is acknowledged. Survives a crash of
    /// the chat-server process. A power loss or kernel crash (with PostgreSQL, also a crash
    /// of the database server) can lose the commits acknowledged shortly before it; it never
    /// corrupts the store.
    Os,
}

impl std::str::FromStr for Durability {
    type Err = StoreError;

    /// `fsync` or `os`.
    fn from_str(s: &str) -> Result<Self, StoreError> {
        match s {
            "fsync" => Ok(Self::Fsync),
            "os" => Ok(Self::Os),
            _ => Err(StoreError::Invalid("durability is \"fsync\" or \"os\"")),
        }
    }
}

/// Settings for [`open_with`], for whichever backend the URL names.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    durability: Durability,
    pool_size: Option<usize>,
    max_wal_bytes: Option<u64>,
}

impl OpenOptions {
    /// Sets the durability of commits (default [`Durability::Fsync`]).
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Sets the PostgreSQL connection pool size (default 16); other backends ignore it.
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = Some(size);
        self
    }

    /// Sets the size past which SQLite's write-ahead log is brought back to its start
    /// (default 64 MiB; see `SqliteOptions::max_wal_bytes`); other backends ignore it.
    pub fn max_wal_bytes(mut self, bytes: u64) -> Self {
        self.max_wal_bytes = Some(bytes);
        self
    }
}

/// Opens the store a URL names, like [`open`], with `options`.
pub async fn open_with(url: &str, options: &OpenOptions) -> Result<Arc<dyn Store>, StoreError> {
    if url == "memory:" {
        return Ok(Arc::new(MemoryStore::new()));
    }
    #[cfg(feature = "sqlite")]
    if let Some(path) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    {
        let synchronous = match options.durability {
            Durability::Fsync => Synchronous::Full,
            Durability::Os => Synchronous::Normal,
        };
        let mut sqlite = SqliteOptions::default().synchronous(synchronous);
        if let Some(bytes) = options.max_wal_bytes {
            sqlite = sqlite.max_wal_bytes(bytes);
        }
        let store = SqliteStore::open(path, sqlite).await?;
        return Ok(Arc::new(store));
    }
    #[cfg(feature = "postgres")]
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let mut pg = PostgresOptions::default().durability(options.durability);
        if let Some(size) = options.pool_size {
            pg = pg.pool_size(size);
        }
        let store = PostgresStore::connect(url, pg).await?;
        return Ok(Arc::new(store));
    }
    Err(StoreError::Invalid(
        "unknown store URL (or its backend feature is not enabled)",
    ))
}
