//! Which nodes hold a live device of each user ([`Holders`]): the one piece of presence a
//! cluster shares. Heartbeats, windows and devices stay in each node's
//! [`PresenceTracker`](chat_core::PresenceTracker); a node only records "user U has / no
//! longer has a live device on node X", and a user is online while any node holds one.
//!
//! In Redis (one script per change, so each decision is atomic):
//! - `{prefix}presence:user:{user}`: the set of nodes holding a live device of the user;
//! - `{prefix}presence:node:{node}`: the set of users that node holds;
//! - `{prefix}presence:nodes`: the nodes that hold anyone, for the sweeper.
//!
//! [`Holders::add`] says whether the user was held by no node before (came online in the
//! cluster), [`Holders::remove`] whether no node holds them after (went offline in the
//! cluster). [`Holders::sweep`] removes a dead node's users in batches and says which of
//! them no other node holds. The keys have no TTL: a dead node's entries are removed by the
//! sweeper once its registration lapsed, and each live node re-asserts its own
//! ([`Holders::count`], [`Holders::add`]), which also repairs a Redis that lost them.

use std::collections::{BTreeSet, HashMap};
use std::sync::{LazyLock, Mutex};

use chat_core::{NodeId, UserId};

use super::Redis;

/// `KEYS`: the user's set, the node's set, the set of nodes. `ARGV`: node, user. 1 when no
/// node held the user before.
static ADD: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local before = redis.call('SCARD', KEYS[1])
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[1])
if before == 0 then return 1 end
return 0
",
    )
});

/// `KEYS`: the user's set, the node's set. `ARGV`: node, user. 1 when no node holds the
/// user after.
static REMOVE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
redis.call('SREM', KEYS[1], ARGV[1])
redis.call('SREM', KEYS[2], ARGV[2])
if redis.call('SCARD', KEYS[1]) == 0 then return 1 end
return 0
",
    )
});

/// `KEYS`: the dead node's set, the set of nodes. `ARGV`: node, batch size, the prefix of
/// users' keys. Removes up to a batch of the node's users; returns those no node holds now.
/// The node leaves the set of nodes once it holds nobody.
static SWEEP: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local users = redis.call('SPOP', KEYS[1], tonumber(ARGV[2]))
local gone = {}
for _, user in ipairs(users) do
  local key = ARGV[3] .. user
  redis.call('SREM', key, ARGV[1])
  if redis.call('SCARD', key) == 0 then table.insert(gone, user) end
end
if redis.call('SCARD', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[1]) end
return gone
",
    )
});

/// Which nodes hold a live device of each user: in memory or in Redis (see the module
/// docs).
#[derive(Debug)]
pub(crate) struct Holders {
    backend: Backend,
}

#[derive(Debug)]
enum Backend {
    /// Nodes by user, and users by node.
    Local(Mutex<LocalHolders>),
    Redis(Redis),
}

#[derive(Debug, Default)]
struct LocalHolders {
    by_user: HashMap<UserId, BTreeSet<NodeId>>,
    by_node: HashMap<NodeId, BTreeSet<UserId>>,
}

impl Holders {
    /// Holders in this node's memory: the single-node setup.
    pub(crate) fn local() -> Self {
        Self {
            backend: Backend::Local(Mutex::default()),
        }
    }

    /// Holders shared through `redis`.
    pub(crate) fn redis(redis: Redis) -> Self {
        Self {
            backend: Backend::Redis(redis),
        }
    }

    /// Whether the holders are shared by a cluster.
    pub(crate) fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Redis(_))
    }

    /// `node` holds a live device of `user`. True when no node held one before.
    pub(crate) async fn add(&self, user: UserId, node: &NodeId) -> redis::RedisResult<bool> {
        match &self.backend {
            Backend::Local(local) => {
                let mut local = lock(local);
                let nodes = local.by_user.entry(user).or_default();
                let first = nodes.is_empty();
                nodes.insert(node.clone());
                local.by_node.entry(node.clone()).or_default().insert(user);
                Ok(first)
            }
            Backend::Redis(redis) => {
                let first: i64 = ADD
                    .key(user_key(redis, user))
                    .key(node_key(redis, node))
                    .key(redis.key("presence:nodes"))
                    .arg(node.as_str())
                    .arg(user.get())
                    .invoke_async(&mut redis.conn())
                    .await?;
                Ok(first == 1)
            }
        }
    }

    /// `node` holds no live device of `user` any more. True when no node holds one now.
    pub(crate) async fn remove(&self, user: UserId, node: &NodeId) -> redis::RedisResult<bool> {
        match &self.backend {
            Backend::Local(local) => {
                let mut local = lock(local);
                let local = &mut *local;
                if let Some(users) = local.by_node.get_mut(node) {
                    users.remove(&user);
                    if users.is_empty() {
                        local.by_node.remove(node);
                    }
                }
                let none = match local.by_user.get_mut(&user) {
                    Some(nodes) => {
                        nodes.remove(node);
                        nodes.is_empty()
                    }
                    None => true,
                };
                if none {
                    local.by_user.remove(&user);
                }
                Ok(none)
            }
            Backend::Redis(redis) => {
                let none: i64 = REMOVE
                    .key(user_key(redis, user))
                    .key(node_key(redis, node))
                    .arg(node.as_str())
                    .arg(user.get())
                    .invoke_async(&mut redis.conn())
                    .await?;
                Ok(none == 1)
            }
        }
    }

    /// Whether any node holds a live device of `user`.
    pub(crate) async fn is_online(&self, user: UserId) -> redis::RedisResult<bool> {
        match &self.backend {
            Backend::Local(local) => Ok(lock(local).by_user.contains_key(&user)),
            Backend::Redis(redis) => {
                redis::cmd("EXISTS")
                    .arg(user_key(redis, user))
                    .query_async(&mut redis.conn())
                    .await
            }
        }
    }

    /// How many users `node` is recorded as holding (a node compares it with its own count
    /// to see whether its entries were lost).
    pub(crate) async fn count(&self, node: &NodeId) -> redis::RedisResult<usize> {
        match &self.backend {
            Backend::Local(local) => Ok(lock(local).by_node.get(node).map_or(0, BTreeSet::len)),
            Backend::Redis(redis) => {
                redis::cmd("SCARD")
                    .arg(node_key(redis, node))
                    .query_async(&mut redis.conn())
                    .await
            }
        }
    }

    /// The users recorded as held by `node`.
    pub(crate) async fn users(&self, node: &NodeId) -> redis::RedisResult<Vec<UserId>> {
        match &self.backend {
            Backend::Local(local) => Ok(lock(local)
                .by_node
                .get(node)
                .map(|users| users.iter().copied().collect())
                .unwrap_or_default()),
            Backend::Redis(redis) => {
                let users: Vec<u64> = redis::cmd("SMEMBERS")
                    .arg(node_key(redis, node))
                    .query_async(&mut redis.conn())
                    .await?;
                Ok(users
                    .into_iter()
                    .filter_map(|u| UserId::new(u).ok())
                    .collect())
            }
        }
    }

    /// The nodes recorded as holding anyone.
    pub(crate) async fn nodes(&self) -> redis::RedisResult<Vec<NodeId>> {
        match &self.backend {
            Backend::Local(local) => Ok(lock(local).by_node.keys().cloned().collect()),
            Backend::Redis(redis) => {
                let names: Vec<String> = redis::cmd("SMEMBERS")
                    .arg(redis.key("presence:nodes"))
                    .query_async(&mut redis.conn())
                    .await?;
                // A name that is not a node ID was not written by a node; skip it.
                Ok(names
                    .into_iter()
                    .filter_map(|n| NodeId::new(n).ok())
                    .collect())
            }
        }
    }

    /// Removes up to `batch` of the users that dead `node` holds. Returns those that no
    /// node holds now, and whether `node` still holds anyone (call again).
    pub(crate) async fn sweep(
        &self,
        node: &NodeId,
        batch: usize,
    ) -> redis::RedisResult<(Vec<UserId>, bool)> {
        match &self.backend {
            Backend::Local(local) => {
                let mut local = lock(local);
                let local = &mut *local;
                let Some(users) = local.by_node.get_mut(node) else {
                    return Ok((Vec::new(), false));
                };
                let taken: Vec<UserId> = users.iter().take(batch).copied().collect();
                for user in &taken {
                    users.remove(user);
                }
                let more = !users.is_empty();
                if !more {
                    local.by_node.remove(node);
                }
                let mut gone = Vec::new();
                for user in taken {
                    if let Some(nodes) = local.by_user.get_mut(&user) {
                        nodes.remove(node);
                        if nodes.is_empty() {
                            local.by_user.remove(&user);
                            gone.push(user);
                        }
                    }
                }
                Ok((gone, more))
            }
            Backend::Redis(redis) => {
                let gone: Vec<u64> = SWEEP
                    .key(node_key(redis, node))
                    .key(redis.key("presence:nodes"))
                    .arg(node.as_str())
                    .arg(batch.max(1))
                    .arg(redis.key("presence:user:"))
                    .invoke_async(&mut redis.conn())
                    .await?;
                let more = self.count(node).await? > 0;
                let gone = gone.into_iter().filter_map(|u| UserId::new(u).ok());
                Ok((gone.collect(), more))
            }
        }
    }
}

fn user_key(redis: &Redis, user: UserId) -> String {
    redis.key(format!("presence:user:{user}"))
}

fn node_key(redis: &Redis, node: &NodeId) -> String {
    redis.key(format!("presence:node:{node}"))
}

fn lock(m: &Mutex<LocalHolders>) -> std::sync::MutexGuard<'_, LocalHolders> {
    // Every update leaves both maps consistent, so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::cluster::testing;

    fn user(n: u64) -> UserId {
        UserId::new(n).unwrap()
    }

    fn node(name: &str) -> NodeId {
        NodeId::new(name).unwrap()
    }

    /// The conformance suite of [`Holders`], in memory and on Redis.
    async fn conformance(h: Holders) {
        let (a, b, dead) = (node("a"), node("b"), node("dead"));
        assert!(!h.is_online(user(1)).await.unwrap());
        assert!(h.add(user(1), &a).await.unwrap(), "first holder");
        assert!(!h.add(user(1), &b).await.unwrap(), "a second node");
        assert!(!h.add(user(1), &a).await.unwrap(), "again: no change");
        assert!(h.is_online(user(1)).await.unwrap());
        assert_eq!(h.count(&a).await.unwrap(), 1);
        assert_eq!(h.users(&a).await.unwrap(), [user(1)]);
        assert!(!h.remove(user(1), &a).await.unwrap(), "b still holds one");
        assert!(h.is_online(user(1)).await.unwrap());
        assert!(h.remove(user(1), &b).await.unwrap(), "nobody holds one");
        assert!(!h.is_online(user(1)).await.unwrap());
        assert!(h.remove(user(1), &b).await.unwrap(), "still nobody");

        // A dead node holds five users; two of them are also on a live node.
        for n in 10..15 {
            h.add(user(n), &dead).await.unwrap();
        }
        h.add(user(10), &a).await.unwrap();
        h.add(user(11), &b).await.unwrap();
        let mut nodes = h.nodes().await.unwrap();
        nodes.sort();
        assert_eq!(nodes, [a.clone(), b.clone(), dead.clone()]);
        let mut gone = Vec::new();
        let mut sweeps = 0;
        loop {
            let (batch, more) = h.sweep(&dead, 2).await.unwrap();
            assert!(batch.len() <= 2);
            gone.extend(batch);
            sweeps += 1;
            if !more {
                break;
            }
        }
        assert_eq!(sweeps, 3, "five users, two a sweep");
        gone.sort();
        assert_eq!(gone, [user(12), user(13), user(14)]);
        assert_eq!(h.count(&dead).await.unwrap(), 0);
        let mut nodes = h.nodes().await.unwrap();
        nodes.sort();
        assert_eq!(nodes, [a.clone(), b.clone()], "the dead node is gone");
        assert!(h.is_online(user(10)).await.unwrap());
        assert!(!h.is_online(user(12)).await.unwrap());
        assert_eq!(h.sweep(&dead, 2).await.unwrap(), (Vec::new(), false));
    }

    #[tokio::test]
    async fn local_holders_conform() {
        conformance(Holders::local()).await;
    }

    #[tokio::test]
    async fn redis_holders_conform() {
        let Some(redis) = testing::redis("holders").await else {
            return;
        };
        conformance(Holders::redis(redis.clone())).await;
    }
}
