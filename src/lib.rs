//! The chat crate family in one dependency.
//!
//! This facade re-exports each member crate under a short name. It exists so that the
//! workspace's top-level `examples/` and `tests/` have a package to belong to; applications
//! usually depend on the member crates they need directly.

pub use chat_client as client;
pub use chat_core as core;
pub use chat_crypto as crypto;
pub use chat_server as server;
pub use chat_storage as storage;
