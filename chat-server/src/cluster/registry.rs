//! The node registry on Redis ([`RedisRegistry`]): every node of a cluster sees every live
//! node, so discovery recommends among all of them and stops recommending one that died.
//!
//! Keys: `{prefix}nodes`, a sorted set of node IDs scored by when each registration lapses,
//! in ms on Redis's clock; `{prefix}node:{id}`, the registration as JSON, expiring with it.
//! A registration's time to live is the caller's `expires_at` minus the caller's clock (a
//! duration, so the nodes' clocks need not agree); the deadline is set from Redis's `TIME`
//! and compared with it, so a node whose clock runs ahead cannot keep a dead node listed,
//! and the `expires_at` that [`RedisRegistry::live`] returns is on Redis's clock. Both
//! scripts touch keys they compute from the prefix, so the registry needs one Redis (or one
//! hash slot), not a Redis Cluster.

use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use chat_core::{NodeId, NodeInfo, NodeRegistry, RegistryError, Timestamp};

use super::Redis;
use crate::state::now;

/// Registers `ARGV[2]` (JSON) for node `ARGV[1]` for `ARGV[3]` ms from Redis's now.
/// `KEYS[1]`: the sorted set; `KEYS[2]`: the node's key.
static REGISTER: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], string.format('%d', now + ttl), ARGV[1])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ttl)
return 1
",
    )
});

/// The live registrations as a flat list of (JSON, deadline in ms); drops lapsed ones from
/// the set first. `KEYS[1]`: the sorted set; `ARGV[1]`: the prefix of the nodes' keys.
static LIVE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now))
local live = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local out = {}
for i = 1, #live, 2 do
  local info = redis.call('GET', ARGV[1] .. live[i])
  if info then
    table.insert(out, info)
    table.insert(out, live[i + 1])
  end
end
return out
",
    )
});

/// The [`NodeRegistry`] of a cluster, in Redis (see the module docs).
#[derive(Debug, Clone)]
pub(crate) struct RedisRegistry {
    redis: Redis,
}

impl RedisRegistry {
    /// The registry under `redis`'s prefix.
    pub(crate) fn new(redis: Redis) -> Self {
        Self { redis }
    }
}

fn unavailable(err: impl std::fmt::Display) -> RegistryError {
    RegistryError::Unavailable(err.to_string())
}

#[async_trait]
impl NodeRegistry for RedisRegistry {
    async fn register(&self, node: NodeInfo) -> Result<(), RegistryError> {
        let ttl = node
            .expires_at
            .saturating_since(now())
            .max(Duration::from_millis(1));
        let ttl = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let json = serde_json::to_string(&node).map_err(unavailable)?;
        let _: i64 = REGISTER
            .key(self.redis.key("nodes"))
            .key(self.redis.key(format!("node:{}", node.id)))
            .arg(node.id.as_str())
            .arg(json)
            .arg(ttl)
            .invoke_async(&mut self.redis.conn())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn deregister(&self, id: &NodeId) -> Result<(), RegistryError> {
        let _: () = redis::pipe()
            .atomic()
            .zrem(self.redis.key("nodes"), id.as_str())
            .ignore()
            .del(self.redis.key(format!("node:{id}")))
            .ignore()
            .query_async(&mut self.redis.conn())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// The live registrations on Redis's clock (`now`, the caller's clock, is not used).
    async fn live(&self, _now: Timestamp) -> Result<Vec<NodeInfo>, RegistryError> {
        let flat: Vec<String> = LIVE
            .key(self.redis.key("nodes"))
            .arg(self.redis.key("node:"))
            .invoke_async(&mut self.redis.conn())
            .await
            .map_err(unavailable)?;
        let mut nodes = Vec::with_capacity(flat.len() / 2);
        for pair in flat.chunks_exact(2) {
            let (Some(json), Some(deadline)) = (pair.first(), pair.get(1)) else {
                continue;
            };
            let Ok(mut node) = serde_json::from_str::<NodeInfo>(json) else {
                // Written by another node of another version, perhaps; not this one's to fix.
                tracing::warn!("unreadable node registration skipped");
                continue;
            };
            if let Ok(deadline) = deadline.parse::<f64>() {
                node.expires_at = Timestamp::from_millis(deadline as u64);
            }
            nodes.push(node);
        }
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(nodes)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::cluster::testing;
    use crate::discovery::LocalRegistry;

    const WAIT: Duration = Duration::from_secs(10);

    fn node(id: &str, connections: u64, ttl: Duration) -> NodeInfo {
        NodeInfo {
            id: NodeId::new(id).unwrap(),
            url: format!("http://{id}.example:8080"),
            region: Some("eu".into()),
            connections,
            cpu_load: 0.25,
            expires_at: now().saturating_add(ttl),
        }
    }

    fn ids(nodes: &[NodeInfo]) -> Vec<&str> {
        nodes.iter().map(|n| n.id.as_str()).collect()
    }

    /// The conformance suite of [`NodeRegistry`], run on the in-process registry and on
    /// Redis. Expiry is checked by asking at a time past the short registration: the
    /// in-process registry takes that time as given; Redis goes by its own clock, so the
    /// suite asks again until the registration lapsed there.
    async fn conformance(registry: Arc<dyn NodeRegistry>) {
        let long = Duration::from_secs(600);
        assert!(registry.live(now()).await.unwrap().is_empty());
        registry.register(node("b", 7, long)).await.unwrap();
        registry.register(node("a", 3, long)).await.unwrap();
        let live = registry.live(now()).await.unwrap();
        assert_eq!(ids(&live), ["a", "b"]);
        let a = &live[0];
        assert_eq!(
            (
                a.url.as_str(),
                a.region.as_deref(),
                a.connections,
                a.cpu_load
            ),
            ("http://a.example:8080", Some("eu"), 3, 0.25)
        );
        assert!(a.is_live(now()));
        // A refresh replaces the registration.
        registry.register(node("a", 9, long)).await.unwrap();
        let live = registry.live(now()).await.unwrap();
        assert_eq!(
            live.iter().map(|n| n.connections).collect::<Vec<_>>(),
            [9, 7]
        );
        // Deregistering removes at once; unknown IDs are ignored.
        registry
            .deregister(&NodeId::new("b").unwrap())
            .await
            .unwrap();
        registry
            .deregister(&NodeId::new("zz").unwrap())
            .await
            .unwrap();
        assert_eq!(ids(&registry.live(now()).await.unwrap()), ["a"]);
        // A registration that is not refreshed lapses and is no longer listed.
        let short = Duration::from_millis(50);
        registry.register(node("dying", 1, short)).await.unwrap();
        let later = now().saturating_add(Duration::from_secs(1));
        tokio::time::timeout(WAIT, async {
            loop {
                let live = registry.live(later).await.unwrap();
                if ids(&live) == ["a"] {
                    return;
                }
                assert_eq!(ids(&live), ["a", "dying"]);
                tokio::time::sleep(short / 5).await;
            }
        })
        .await
        .expect("the short registration lapses");
    }

    #[tokio::test]
    async fn the_local_registry_conforms() {
        conformance(Arc::new(LocalRegistry::new())).await;
    }

    #[tokio::test]
    async fn the_redis_registry_conforms() {
        let Some(redis) = testing::redis("registry").await else {
            return;
        };
        conformance(Arc::new(RedisRegistry::new(redis.clone()))).await;
    }

    /// Two nodes on one Redis each see the other's registration, and a node that stops
    /// refreshing drops out of both views.
    #[tokio::test]
    async fn nodes_see_each_other_until_one_lapses() {
        let Some(redis) = testing::redis("registry-two").await else {
            return;
        };
        let (one, two) = (
            RedisRegistry::new(redis.clone()),
            RedisRegistry::new(redis.clone()),
        );
        one.register(node("one", 0, Duration::from_secs(600)))
            .await
            .unwrap();
        two.register(node("two", 0, Duration::from_millis(50)))
            .await
            .unwrap();
        assert_eq!(ids(&one.live(now()).await.unwrap()), ["one", "two"]);
        tokio::time::timeout(WAIT, async {
            while ids(&one.live(now()).await.unwrap()) != ["one"] {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the dead node lapses");
        assert_eq!(ids(&two.live(now()).await.unwrap()), ["one"]);
    }
}
