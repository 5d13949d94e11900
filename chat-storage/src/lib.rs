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
    if url == "memory:" {
        return Ok(Arc::new(MemoryStore::new()));
    }
    #[cfg(feature = "sqlite")]
    if let Some(path) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    {
        let store = SqliteStore::open(path, SqliteOptions::default()).await?;
        return Ok(Arc::new(store));
    }
    #[cfg(feature = "postgres")]
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let store = PostgresStore::connect(url, PostgresOptions::default()).await?;
        return Ok(Arc::new(store));
    }
    Err(StoreError::Invalid(
        "unknown store URL (or its backend feature is not enabled)",
    ))
}
