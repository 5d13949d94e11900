//! The node-registry boundary (R-SCALE-2): which chat nodes are alive, how loaded they are,
//! and which one a client should connect to.
//!
//! Each node registers itself with a time to live and refreshes the registration
//! periodically with its load; a node that stops refreshing (it died) expires and stops being
//! recommended. The registry is a trait so an in-process one (chat-server) and a shared one
//! (Redis, for several nodes) fit the same code. Choosing a node is a pure function,
//! [`recommend`], over the live nodes.

use std::fmt;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::ids::IdError;
use crate::time::Timestamp;

/// A node's name in the registry: 1 to 64 characters of `A-Z`, `a-z`, `0-9`, `.`, `_`, `-`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeId(String);

impl NodeId {
    /// The longest node ID allowed.
    pub const MAX_LEN: usize = 64;

    /// Validates `id`.
    pub fn new(id: impl Into<String>) -> Result<Self, IdError> {
        let id = id.into();
        let ok_len = (1..=Self::MAX_LEN).contains(&id.len());
        let ok_chars = id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
        if ok_len && ok_chars {
            Ok(Self(id))
        } else {
            Err(IdError::Malformed)
        }
    }

    /// The ID as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for NodeId {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, IdError> {
        Self::new(value)
    }
}

impl From<NodeId> for String {
    fn from(id: NodeId) -> Self {
        id.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One node's registration: where clients reach it and how loaded it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node's ID; registering the same ID again replaces the registration.
    pub id: NodeId,
    /// The base URL clients connect to (`https://chat-3.example.com`); the WebSocket is at
    /// `/v1/ws` under it.
    pub url: String,
    /// The node's region, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Live WebSocket connections.
    pub connections: u64,
    /// The node process' CPU use over the last refresh, as a fraction of the machine's
    /// capacity (0 idle, 1 every core busy).
    pub cpu_load: f32,
    /// When the registration lapses unless refreshed.
    pub expires_at: Timestamp,
}

impl NodeInfo {
    /// Whether the registration is still live at `now`.
    pub fn is_live(&self, now: Timestamp) -> bool {
        now < self.expires_at
    }
}

/// A node whose CPU use is at or above this counts as overloaded: it is recommended only if
/// every candidate is.
pub const OVERLOADED_CPU: f32 = 0.9;

/// The node a client should connect to among `nodes` (assumed live): nodes in `region` first
/// when one is asked for and any is there; among those, nodes that are not overloaded
/// ([`OVERLOADED_CPU`]); then the fewest connections, then the lowest CPU, then the smallest
/// ID (so equal nodes give a stable answer). `None` only when `nodes` is empty.
pub fn recommend<'a>(nodes: &'a [NodeInfo], region: Option<&str>) -> Option<&'a NodeInfo> {
    let in_region = |n: &NodeInfo| region.is_some() && n.region.as_deref() == region;
    nodes.iter().min_by(|a, b| {
        in_region(b)
            .cmp(&in_region(a))
            .then((a.cpu_load >= OVERLOADED_CPU).cmp(&(b.cpu_load >= OVERLOADED_CPU)))
            .then(a.connections.cmp(&b.connections))
            .then(a.cpu_load.total_cmp(&b.cpu_load))
            .then(a.id.cmp(&b.id))
    })
}

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The registry backend is unreachable.
    #[error("node registry unavailable: {0}")]
    Unavailable(String),
}

/// The registry of live chat nodes.
#[async_trait]
pub trait NodeRegistry: Send + Sync {
    /// Registers `node`, or refreshes its registration (same ID), until `node.expires_at`.
    async fn register(&self, node: NodeInfo) -> Result<(), RegistryError>;

    /// Removes a registration at once (a node shutting down). Unknown IDs are ignored.
    async fn deregister(&self, id: &NodeId) -> Result<(), RegistryError>;

    /// The nodes whose registration is live at `now`, by ID.
    async fn live(&self, now: Timestamp) -> Result<Vec<NodeInfo>, RegistryError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, region: Option<&str>, connections: u64, cpu_load: f32) -> NodeInfo {
        NodeInfo {
            id: NodeId::new(id).unwrap(),
            url: format!("http://{id}"),
            region: region.map(Into::into),
            connections,
            cpu_load,
            expires_at: Timestamp::from_millis(1_000),
        }
    }

    fn pick(nodes: &[NodeInfo], region: Option<&str>) -> Option<String> {
        recommend(nodes, region).map(|n| n.id.to_string())
    }

    #[test]
    fn node_ids_are_validated() {
        assert!(NodeId::new("chat-3.eu_west").is_ok());
        for bad in ["", "a b", "nöde", &"a".repeat(65)] {
            assert_eq!(NodeId::new(bad), Err(IdError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn the_least_loaded_node_preferring_the_region() {
        let nodes = [
            node("a", Some("eu"), 500, 0.2),
            node("b", Some("us"), 100, 0.3),
            node("c", Some("us"), 100, 0.1),
            node("d", None, 10, 0.95),
        ];
        assert_eq!(pick(&nodes, None).as_deref(), Some("c"), "d is overloaded");
        assert_eq!(pick(&nodes, Some("eu")).as_deref(), Some("a"));
        assert_eq!(pick(&nodes, Some("us")).as_deref(), Some("c"));
        assert_eq!(
            pick(&nodes, Some("ap")).as_deref(),
            Some("c"),
            "no node there"
        );
        assert_eq!(
            pick(&nodes[3..], None).as_deref(),
            Some("d"),
            "the only one"
        );
        assert_eq!(pick(&[], None), None);
        let tied = [node("y", None, 1, 0.5), node("x", None, 1, 0.5)];
        assert_eq!(pick(&tied, None).as_deref(), Some("x"));
    }

    #[test]
    fn registrations_expire_at_their_deadline() {
        let n = node("a", None, 0, 0.0);
        assert!(n.is_live(Timestamp::from_millis(999)));
        assert!(!n.is_live(Timestamp::from_millis(1_000)));
    }
}
