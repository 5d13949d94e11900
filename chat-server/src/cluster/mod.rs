//! The backends of a cluster: several nodes sharing one PostgreSQL store and one Redis.
//!
//! PostgreSQL stays the only durable truth; Redis carries what crosses nodes and may lose
//! it: every cross-node event that matters is repaired from the store (inbox positions,
//! tokens), never assumed delivered.
//!
//! - [`bus`]: [`RedisBus`], the [`chat_core::Bus`] on Redis pub/sub.
//! - `wire`: the bytes of a bus message on Redis, and the channel of a topic.

pub(crate) mod bus;
mod wire;

pub use bus::{BusStats, RedisBus};
