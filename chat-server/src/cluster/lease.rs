//! Named leases: at most one holder of each name at a time, for a time to live. A cluster
//! uses them for work that one node should do for all (the presence sweeper, the
//! inbox-trimming pass) and for decisions that one node should make for all (the push of one
//! device's burst).
//!
//! [`Leases`] keeps them in this node's memory (one node: it is the only holder there is) or
//! in Redis: one key per lease (`{prefix}lease:{name}`) holding the holder's name, set with
//! `PX` by a script that takes a free or expired lease and renews one the caller already
//! holds, so the expiry runs on Redis's clock. A holder that dies simply stops renewing;
//! the lease is free again after its time to live.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use super::Redis;

/// Takes lease `KEYS[1]` for holder `ARGV[1]` for `ARGV[2]` ms if it is free or already
/// theirs. 1 when the caller holds it now, 0 when someone else does.
static ACQUIRE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
",
    )
});

/// Deletes lease `KEYS[1]` if holder `ARGV[1]` holds it.
static RELEASE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
",
    )
});

/// Leases by name, in memory or in Redis (see the module docs).
#[derive(Debug)]
pub(crate) struct Leases {
    backend: Backend,
}

#[derive(Debug)]
enum Backend {
    /// Holder and deadline by name.
    Local(Mutex<HashMap<String, (String, Instant)>>),
    Redis(Redis),
}

impl Leases {
    /// Leases in this node's memory.
    pub(crate) fn local() -> Self {
        Self {
            backend: Backend::Local(Mutex::default()),
        }
    }

    /// Leases shared through `redis`.
    pub(crate) fn redis(redis: Redis) -> Self {
        Self {
            backend: Backend::Redis(redis),
        }
    }

    /// Takes lease `name` for `holder` for `ttl` if it is free or expired, or renews it if
    /// `holder` has it. True when `holder` holds it now.
    pub(crate) async fn acquire(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> redis::RedisResult<bool> {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        match &self.backend {
            Backend::Local(leases) => {
                let now = Instant::now();
                let mut leases = leases.lock().unwrap_or_else(|e| e.into_inner());
                // Expired leases go, so names used once do not pile up.
                leases.retain(|_, (_, until)| *until > now);
                let taken = leases
                    .get(name)
                    .is_some_and(|(current, _)| current != holder);
                if !taken {
                    leases.insert(name.to_owned(), (holder.to_owned(), now + ttl));
                }
                Ok(!taken)
            }
            Backend::Redis(redis) => {
                let held: i64 = ACQUIRE
                    .key(redis.key(format!("lease:{name}")))
                    .arg(holder)
                    .arg(ms)
                    .invoke_async(&mut redis.conn())
                    .await?;
                Ok(held == 1)
            }
        }
    }

    /// Gives lease `name` up if `holder` has it (so another may take it at once).
    pub(crate) async fn release(&self, name: &str, holder: &str) -> redis::RedisResult<()> {
        match &self.backend {
            Backend::Local(leases) => {
                let mut leases = leases.lock().unwrap_or_else(|e| e.into_inner());
                if leases
                    .get(name)
                    .is_some_and(|(current, _)| current == holder)
                {
                    leases.remove(name);
                }
                Ok(())
            }
            Backend::Redis(redis) => {
                let _: i64 = RELEASE
                    .key(redis.key(format!("lease:{name}")))
                    .arg(holder)
                    .invoke_async(&mut redis.conn())
                    .await?;
                Ok(())
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::cluster::testing;

    const WAIT: Duration = Duration::from_secs(10);

    /// The conformance suite of [`Leases`], in memory and on Redis.
    async fn conformance(leases: Leases) {
        let long = Duration::from_secs(600);
        assert!(leases.acquire("sweep", "a", long).await.unwrap());
        assert!(!leases.acquire("sweep", "b", long).await.unwrap(), "held");
        assert!(leases.acquire("sweep", "a", long).await.unwrap(), "renewed");
        assert!(
            leases.acquire("trim", "b", long).await.unwrap(),
            "names apart"
        );
        // Only the holder's release frees it.
        leases.release("sweep", "b").await.unwrap();
        assert!(!leases.acquire("sweep", "b", long).await.unwrap());
        leases.release("sweep", "a").await.unwrap();
        assert!(leases.acquire("sweep", "b", long).await.unwrap());
        // A holder that stops renewing loses the lease after its time to live.
        let short = Duration::from_millis(30);
        assert!(leases.acquire("push", "a", short).await.unwrap());
        assert!(!leases.acquire("push", "b", short).await.unwrap());
        tokio::time::timeout(WAIT, async {
            while !leases.acquire("push", "b", short).await.unwrap() {
                tokio::time::sleep(short / 3).await;
            }
        })
        .await
        .expect("the lease expires");
        assert!(!leases.acquire("push", "a", short).await.unwrap());
    }

    #[tokio::test]
    async fn local_leases_conform() {
        conformance(Leases::local()).await;
    }

    #[tokio::test]
    async fn redis_leases_conform() {
        let Some(redis) = testing::redis("leases").await else {
            return;
        };
        conformance(Leases::redis(redis.clone())).await;
    }
}
