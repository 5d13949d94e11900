//! Service discovery on the node (R-SCALE-2): the in-process [`LocalRegistry`], and the
//! announcer task that keeps this node's registration fresh with its load.
//!
//! The node registers itself before it serves, then every `discovery_refresh_ms` with its
//! live connection count and CPU use, each time for `discovery_ttl_ms`; it deregisters when
//! it shuts down. A node that dies stops refreshing, so its registration lapses and
//! `GET /v1/discovery` stops recommending it. With the in-process registry every node only
//! knows itself (and whatever an embedder registers); a shared registry (Redis) behind the
//! same trait lets every node see all of them.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Mutex, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chat_core::{NodeId, NodeInfo, NodeRegistry, RegistryError, Timestamp};
use tokio::sync::watch;

use crate::state::{Shared, now};

/// The in-process [`NodeRegistry`]: a map behind a `std::sync::Mutex`, held only for map
/// operations (never across an `.await`). Expired registrations are pruned as they are seen.
#[derive(Debug, Default)]
pub struct LocalRegistry {
    nodes: Mutex<BTreeMap<NodeId, NodeInfo>>,
}

impl LocalRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, NodeInfo>> {
        // A panic while holding the lock cannot leave the map half-updated.
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl NodeRegistry for LocalRegistry {
    async fn register(&self, node: NodeInfo) -> Result<(), RegistryError> {
        self.lock().insert(node.id.clone(), node);
        Ok(())
    }

    async fn deregister(&self, id: &NodeId) -> Result<(), RegistryError> {
        self.lock().remove(id);
        Ok(())
    }

    async fn live(&self, now: Timestamp) -> Result<Vec<NodeInfo>, RegistryError> {
        let mut nodes = self.lock();
        nodes.retain(|_, node| node.is_live(now));
        Ok(nodes.values().cloned().collect())
    }
}

/// What this node announces about itself besides its load.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub(crate) id: NodeId,
    pub(crate) url: String,
    pub(crate) region: Option<String>,
}

/// Registers (or refreshes) this node with its current load.
pub(crate) async fn register(shared: &Shared, identity: &Identity, cpu_load: f32) {
    let connections = shared.connections.load(Ordering::Relaxed);
    let node = NodeInfo {
        id: identity.id.clone(),
        url: identity.url.clone(),
        region: identity.region.clone(),
        connections: u64::try_from(connections).unwrap_or(u64::MAX),
        cpu_load,
        expires_at: now().saturating_add(Duration::from_millis(shared.config.discovery_ttl_ms)),
    };
    if let Err(err) = shared.registry.register(node).await {
        tracing::warn!(cause = %err, "node registration failed");
    }
}

/// Refreshes this node's registration until shutdown, then deregisters it. Holds the shared
/// state only weakly, between refreshes, so it never delays shutdown.
pub(crate) async fn announce(
    shared: Weak<Shared>,
    identity: Identity,
    mut shutdown: watch::Receiver<bool>,
) {
    let Some(refresh) = shared
        .upgrade()
        .map(|s| Duration::from_millis(s.config.discovery_refresh_ms))
    else {
        return;
    };
    let mut cpu = CpuSampler::new();
    loop {
        tokio::select! {
            () = tokio::time::sleep(refresh) => {}
            _ = shutdown.wait_for(|down| *down) => break,
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        register(&shared, &identity, cpu.sample(Instant::now())).await;
    }
    if let Some(shared) = shared.upgrade()
        && let Err(err) = shared.registry.deregister(&identity.id).await
    {
        tracing::warn!(cause = %err, "node deregistration failed");
    }
}

/// The process' CPU use between two samples, from `/proc/self/stat` (Linux); 0 where that
/// is not available.
#[derive(Debug)]
pub(crate) struct CpuSampler {
    last: Option<(Instant, u64)>,
    cores: f32,
}

/// Clock ticks per second in `/proc` (`USER_HZ`): 100 on every mainstream Linux platform.
const TICKS_PER_SECOND: f32 = 100.0;

impl CpuSampler {
    pub(crate) fn new() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            last: cpu_ticks().map(|t| (Instant::now(), t)),
            cores: cores as f32,
        }
    }

    /// CPU use since the previous sample, as a fraction of all cores (0 to 1).
    pub(crate) fn sample(&mut self, at: Instant) -> f32 {
        let Some(ticks) = cpu_ticks() else {
            return 0.0;
        };
        let load = match self.last {
            Some((then, before)) => {
                let wall = at.saturating_duration_since(then).as_secs_f32();
                if wall > 0.0 {
                    let busy = ticks.saturating_sub(before) as f32 / TICKS_PER_SECOND;
                    (busy / wall / self.cores).clamp(0.0, 1.0)
                } else {
                    0.0
                }
            }
            None => 0.0,
        };
        self.last = Some((at, ticks));
        load
    }
}

/// User plus system CPU time of this process, in clock ticks.
fn cpu_ticks() -> Option<u64> {
    parse_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

/// `utime + stime` from a `/proc/<pid>/stat` line. The command name (field 2) may contain
/// spaces and parentheses, so fields are counted from the last `)`.
fn parse_stat(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(11); // state is field 3; utime field 14
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, connections: u64, expires_at: u64) -> NodeInfo {
        NodeInfo {
            id: NodeId::new(id).unwrap(),
            url: format!("http://{id}"),
            region: None,
            connections,
            cpu_load: 0.0,
            expires_at: Timestamp::from_millis(expires_at),
        }
    }

    fn ids(nodes: &[NodeInfo]) -> Vec<&str> {
        nodes.iter().map(|n| n.id.as_str()).collect()
    }

    #[tokio::test]
    async fn registrations_live_until_their_ttl_and_refresh_extends_them() {
        let registry = LocalRegistry::new();
        registry.register(node("a", 5, 30_000)).await.unwrap();
        registry.register(node("b", 1, 40_000)).await.unwrap();
        let at = |ms| Timestamp::from_millis(ms);
        assert_eq!(ids(&registry.live(at(29_999)).await.unwrap()), ["a", "b"]);
        let live = registry.live(at(30_000)).await.unwrap();
        assert_eq!(ids(&live), ["b"], "a expired");
        assert_eq!(chat_core::recommend(&live, None).unwrap().id.as_str(), "b");
        // b refreshes before its deadline; a comes back.
        registry.register(node("b", 2, 70_000)).await.unwrap();
        registry.register(node("a", 0, 70_000)).await.unwrap();
        let live = registry.live(at(50_000)).await.unwrap();
        assert_eq!(ids(&live), ["a", "b"]);
        assert_eq!(
            live[1].connections, 2,
            "the refresh replaced the registration"
        );
        assert_eq!(chat_core::recommend(&live, None).unwrap().id.as_str(), "a");
        registry
            .deregister(&NodeId::new("a").unwrap())
            .await
            .unwrap();
        assert_eq!(ids(&registry.live(at(50_000)).await.unwrap()), ["b"]);
        assert!(registry.live(at(70_000)).await.unwrap().is_empty());
    }

    #[test]
    fn stat_lines_parse() {
        let line = "1234 (chat server) S 1 1234 1234 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 8 0";
        assert_eq!(parse_stat(line), Some(300));
        assert_eq!(parse_stat("1234 (x) S 1"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn cpu_load_is_a_fraction() {
        let mut sampler = CpuSampler::new();
        // Burn a little CPU so there is something to measure.
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert_ne!(x, 1);
        let load = sampler.sample(Instant::now());
        assert!((0.0..=1.0).contains(&load), "{load}");
    }
}
