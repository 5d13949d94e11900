//! [`Nodes`]: the chat nodes of one cluster a client may use, and which one it uses now.
//!
//! Every node of a cluster serves every device (they share one database), so a client may
//! talk to any of them. It stays on its current node while that node answers; when it
//! cannot connect to it (refused, timed out, TLS or WebSocket handshake failed, no
//! `welcome`), it moves to the next one in the list, wrapping around. Nothing is lost by
//! the move: the WebSocket resumes from the device's stored cursor, and the outbox sends
//! every unacknowledged message again with its original client key, which the server
//! stores at most once (see `driver.rs`).
//!
//! The list is either fixed ([`Nodes::new`]) or learned from `GET /v1/discovery`
//! ([`Nodes::discover`]): then the client asks a node it knows for the live nodes before
//! its first connection and again each time it has to move, and puts the node discovery
//! recommends first. The address discovery was given stays in the list as the last resort
//! (it may be a load balancer in front of the cluster).
//!
//! The state is a list and an index behind a `std::sync::Mutex`, held only to read or
//! change them (never across an `.await`).

use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::http::Http;
use crate::net::{IntoServer, Server};
use crate::wire;

/// The nodes of a cluster a client may connect to; clones share which one is current.
///
/// ```
/// use chat_client::Nodes;
/// let nodes = Nodes::new(["http://10.0.0.1:8080", "http://10.0.0.2:8080"])?;
/// assert_eq!(nodes.len(), 2);
/// # Ok::<(), chat_client::Error>(())
/// ```
#[derive(Clone)]
pub struct Nodes {
    state: Arc<Mutex<State>>,
    /// The address discovery is asked at first, for a discovered list.
    discovery: Option<Server>,
}

#[derive(Debug)]
struct State {
    /// Never empty.
    list: Vec<Server>,
    /// Always one of `list`.
    current: Server,
}

impl std::fmt::Debug for Nodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nodes")
            .field("list", &self.list())
            .field("current", &self.current())
            .field("discovery", &self.discovery)
            .finish()
    }
}

impl Nodes {
    /// A fixed list of node addresses, used in this order; an error if it is empty or an
    /// address does not parse.
    pub fn new<I>(addresses: I) -> Result<Self>
    where
        I: IntoIterator,
        I::Item: IntoServer,
    {
        let mut list: Vec<Server> = Vec::new();
        for address in addresses {
            let server = address.into_server()?;
            if !list.contains(&server) {
                list.push(server);
            }
        }
        let Some(current) = list.first().cloned() else {
            return Err(Error::invalid("no node address given"));
        };
        Ok(Self {
            state: Arc::new(Mutex::new(State { list, current })),
            discovery: None,
        })
    }

    /// One node.
    pub(crate) fn one(server: Server) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                list: vec![server.clone()],
                current: server,
            })),
            discovery: None,
        }
    }

    /// The nodes that `GET /v1/discovery` at `address` lists, asked again whenever the
    /// client has to move to another node. Until the first answer, `address` is the only
    /// node. Discovered `https` nodes are trusted as `address` is (the same root
    /// certificates).
    pub fn discover(address: impl IntoServer) -> Result<Self> {
        let server = address.into_server()?;
        let mut nodes = Self::one(server.clone());
        nodes.discovery = Some(server);
        Ok(nodes)
    }

    /// The node in use now.
    pub fn current(&self) -> Server {
        self.lock().current.clone()
    }

    /// Every node, in the order they are tried.
    pub fn list(&self) -> Vec<Server> {
        self.lock().list.clone()
    }

    /// How many nodes there are.
    pub fn len(&self) -> usize {
        self.lock().list.len()
    }

    /// Always false: a list has at least one node.
    pub fn is_empty(&self) -> bool {
        self.lock().list.is_empty()
    }

    /// Whether the list comes from discovery.
    pub fn is_discovered(&self) -> bool {
        self.discovery.is_some()
    }

    /// `server` could not be reached: if it is still the current node, the next one becomes
    /// current. Returns the node now current.
    pub(crate) fn failed(&self, server: &Server) -> Server {
        let mut state = self.lock();
        if state.current == *server {
            let at = state.list.iter().position(|s| s == server).unwrap_or(0);
            let next = state.list.iter().cycle().nth(at + 1).cloned();
            if let Some(next) = next {
                tracing::info!(
                    from = server.authority(),
                    to = next.authority(),
                    "moving to another node"
                );
                state.current = next;
            }
        }
        state.current.clone()
    }

    /// For a discovered list: asks the current node, then the others, for the live nodes,
    /// and makes the recommended one current. Keeps the list as it is when no node answers
    /// (or for a fixed list).
    pub(crate) async fn refresh(&self) {
        let Some(seed) = &self.discovery else {
            return;
        };
        let current = self.current();
        let mut ask = vec![current.clone()];
        ask.extend(self.list().into_iter().filter(|s| *s != current));
        for server in ask {
            let http = Http::new(Self::one(server.clone()), None);
            let found: Result<wire::Discovery> = http.get("/v1/discovery").await;
            match found {
                Ok(found) => {
                    let mut list: Vec<Server> = Vec::new();
                    let urls = std::iter::once(&found.recommended).chain(&found.nodes);
                    for node in urls {
                        match Server::parse(&node.url).map(|s| s.trusting_as(seed)) {
                            Ok(s) if !list.contains(&s) => list.push(s),
                            Ok(_) => {}
                            Err(e) => tracing::warn!(cause = %e, "discovery listed a bad node URL"),
                        }
                    }
                    if !list.contains(seed) {
                        list.push(seed.clone());
                    }
                    let mut state = self.lock();
                    state.current = list.first().cloned().unwrap_or_else(|| seed.clone());
                    state.list = list;
                    return;
                }
                Err(e) => {
                    tracing::debug!(cause = %e, node = server.authority(), "discovery failed")
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a list and an index, never left half-updated by a panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Anything the client constructors take as where the cluster is: one address (`&str`,
/// `String`, [`Server`]) or several ([`Nodes`]).
pub trait IntoNodes {
    /// The node list.
    fn into_nodes(self) -> Result<Nodes>;
}

impl IntoNodes for Nodes {
    fn into_nodes(self) -> Result<Nodes> {
        Ok(self)
    }
}

impl IntoNodes for &Nodes {
    fn into_nodes(self) -> Result<Nodes> {
        Ok(self.clone())
    }
}

impl IntoNodes for Server {
    fn into_nodes(self) -> Result<Nodes> {
        Nodes::new([self])
    }
}

impl IntoNodes for &Server {
    fn into_nodes(self) -> Result<Nodes> {
        Nodes::new([self])
    }
}

impl IntoNodes for &str {
    fn into_nodes(self) -> Result<Nodes> {
        Nodes::new([self])
    }
}

impl IntoNodes for &String {
    fn into_nodes(self) -> Result<Nodes> {
        Nodes::new([self])
    }
}

impl IntoNodes for String {
    fn into_nodes(self) -> Result<Nodes> {
        Nodes::new([self])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_node_hands_over_to_the_next_one_once() {
        let nodes = Nodes::new(["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:1"]).unwrap();
        assert_eq!(nodes.len(), 2, "duplicates dropped");
        let (one, two) = (nodes.list()[0].clone(), nodes.list()[1].clone());
        assert_eq!(nodes.current(), one);
        assert_eq!(nodes.failed(&one), two);
        // A second report about the node already left (from the HTTP client and the
        // WebSocket both) does not skip the new one.
        assert_eq!(nodes.failed(&one), two);
        let shared = nodes.clone();
        assert_eq!(shared.failed(&two), one, "wraps around");
        assert_eq!(nodes.current(), one, "clones share the current node");
        assert!(Nodes::new(Vec::<&str>::new()).is_err());
        assert!(Nodes::new(["ftp://x"]).is_err());
    }
}
