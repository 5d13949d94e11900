//! Token buckets shared by every node of a cluster, for the limits that protect accounts and
//! keys (log-ins, registrations, bundle fetches, prekey claims, directory search, sends). With
//! N nodes and buckets in memory, each of these limits would be N times looser.
//!
//! A [`SharedLimiter`] keeps its buckets in this node's memory ([`KeyedLimiter`]) or, when
//! the node belongs to a cluster, in Redis: one hash per bucket (`{prefix}limit:{name}:{key}`,
//! fields `t` tokens and `at` last update in ms), updated by one Lua script that reads the
//! time with Redis's `TIME`, so the refill is measured on one clock whatever node asks and
//! the take is atomic (concurrent attempts cannot all slip through on one token). A bucket
//! expires once it would be full again, so idle keys cost nothing.
//!
//! When Redis does not answer, the node falls back to its own buckets for that call and
//! counts `chat_cluster_limit_fallbacks_total`: a limit N times looser for the duration of
//! the outage, rather than refusing every log-in.

use std::fmt::Write as _;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use chat_core::UserId;

use super::Redis;
use crate::limiter::{KeyedLimiter, Rate};
use crate::throttle::LogThrottle;

/// Takes (`take`) or gives back (`refund`) `n` tokens of one bucket, timed by Redis's
/// clock. Returns 0 when taken or given back, the wait in ms until `n` tokens are there, or
/// -1 when they never will be (more than the burst, or no refill).
static BUCKET: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local burst, rate, n, mode = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local state = redis.call('HMGET', KEYS[1], 't', 'at')
local tokens, at = tonumber(state[1]), tonumber(state[2])
if tokens == nil or at == nil then
  if mode == 'refund' then return 0 end
  tokens, at = burst, now
end
if now > at then
  tokens = math.min(burst, tokens + (now - at) * rate / 1000)
  at = now
end
local wait = 0
if mode == 'refund' then
  tokens = math.min(burst, tokens + n)
elseif tokens >= n then
  tokens = tokens - n
elseif rate > 0 and n <= burst then
  wait = math.max(1, math.ceil((n - tokens) * 1000 / rate))
else
  wait = -1
end
redis.call('HSET', KEYS[1], 't', string.format('%.17g', tokens), 'at', string.format('%d', at))
if rate > 0 then
  redis.call('PEXPIRE', KEYS[1], string.format('%d', math.ceil((burst - tokens) * 1000 / rate) + 1000))
else
  redis.call('PEXPIRE', KEYS[1], 86400000)
end
return wait
",
    )
});

/// A key of a shared limit, as it appears in the Redis key of its bucket.
pub(crate) trait BucketKey {
    /// Appends this key's text form to `out`.
    fn write_key(&self, out: &mut String);
}

impl BucketKey for IpAddr {
    fn write_key(&self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

impl BucketKey for UserId {
    fn write_key(&self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

impl BucketKey for String {
    fn write_key(&self, out: &mut String) {
        out.push_str(self);
    }
}

impl<A: BucketKey, B: BucketKey> BucketKey for (A, B) {
    fn write_key(&self, out: &mut String) {
        // The second part comes last, so a separator inside it cannot make two pairs equal
        // (the first part never contains `|`: addresses and user IDs).
        self.0.write_key(out);
        out.push('|');
        self.1.write_key(out);
    }
}

/// Token buckets by key, in this node's memory or shared through Redis (see the module
/// docs).
#[derive(Debug)]
pub(crate) struct SharedLimiter<K> {
    /// Names the limit in Redis keys (`limit:{name}:`).
    name: &'static str,
    rate: Rate,
    /// This node's buckets: the only ones without Redis, the fallback with it.
    local: KeyedLimiter<K>,
    redis: Option<Redis>,
    errors: LogThrottle,
}

impl<K: Hash + Eq + Clone + BucketKey> SharedLimiter<K> {
    /// A limiter applying `rate` to each key; in Redis when `redis` is given, else in memory
    /// with at most `max_keys` buckets remembered.
    pub(crate) fn new(
        name: &'static str,
        rate: Rate,
        max_keys: usize,
        redis: Option<Redis>,
    ) -> Self {
        Self {
            name,
            rate,
            local: KeyedLimiter::new(rate, max_keys),
            redis,
            errors: LogThrottle::new(crate::health::LOG_INTERVAL),
        }
    }

    /// Takes a token for `key`, or says how long until one is available (`Duration::MAX`:
    /// never). `now` times the in-memory buckets; Redis's buckets use Redis's clock.
    pub(crate) async fn check(&self, key: &K, now: Instant) -> Result<(), Duration> {
        if let Some(redis) = &self.redis {
            match self.run(redis, key, "take").await {
                Ok(0) => return Ok(()),
                Ok(wait) => {
                    return Err(u64::try_from(wait).map_or(Duration::MAX, Duration::from_millis));
                }
                Err(err) => self.fell_back(&err),
            }
        }
        self.local.check(key, now)
    }

    /// Gives back a token taken by [`SharedLimiter::check`] (never beyond the burst), for
    /// an event that turned out not to count.
    pub(crate) async fn refund(&self, key: &K) {
        if let Some(redis) = &self.redis {
            match self.run(redis, key, "refund").await {
                Ok(_) => return,
                Err(err) => self.fell_back(&err),
            }
        }
        self.local.refund(key);
    }

    async fn run(&self, redis: &Redis, key: &K, mode: &str) -> redis::RedisResult<i64> {
        let mut name = format!("limit:{}:", self.name);
        key.write_key(&mut name);
        BUCKET
            .key(redis.key(name))
            .arg(self.rate.burst)
            .arg(self.rate.per_second)
            .arg(1)
            .arg(mode)
            .invoke_async(&mut redis.conn())
            .await
    }

    fn fell_back(&self, err: &redis::RedisError) {
        metrics::counter!("chat_cluster_limit_fallbacks_total").increment(1);
        if let Some(unlogged) = self.errors.record(Instant::now()) {
            tracing::warn!(
                limit = self.name,
                cause = %err,
                unlogged,
                "shared rate limit unavailable; this node's own buckets apply"
            );
        }
    }
}

/// Flags kept for a while, by key, in this node's memory or in Redis: which (address,
/// account) pairs logged in successfully (`{prefix}known:{key}` with a TTL in Redis).
#[derive(Debug)]
pub(crate) struct SharedFlags<K> {
    name: &'static str,
    keep_for: Duration,
    max_keys: usize,
    local: std::sync::Mutex<std::collections::HashMap<K, Instant>>,
    redis: Option<Redis>,
}

impl<K: Hash + Eq + Clone + BucketKey> SharedFlags<K> {
    /// Flags that stay set for `keep_for`; at most `max_keys` in memory.
    pub(crate) fn new(
        name: &'static str,
        keep_for: Duration,
        max_keys: usize,
        redis: Option<Redis>,
    ) -> Self {
        Self {
            name,
            keep_for,
            max_keys,
            local: std::sync::Mutex::default(),
            redis,
        }
    }

    /// Sets `key` for `keep_for` from `now`.
    pub(crate) async fn set(&self, key: K, now: Instant) {
        if let Some(redis) = &self.redis {
            let ms = u64::try_from(self.keep_for.as_millis()).unwrap_or(u64::MAX);
            let result: redis::RedisResult<()> = redis::cmd("SET")
                .arg(self.redis_key(redis, &key))
                .arg(1)
                .arg("PX")
                .arg(ms.max(1))
                .query_async(&mut redis.conn())
                .await;
            match result {
                Ok(()) => return,
                Err(err) => tracing::warn!(cause = %err, "cannot share a flag in redis"),
            }
        }
        let mut flags = self.lock();
        if flags.len() >= self.max_keys && !flags.contains_key(&key) {
            let keep_for = self.keep_for;
            flags.retain(|_, at| now.saturating_duration_since(*at) < keep_for);
        }
        if flags.len() < self.max_keys || flags.contains_key(&key) {
            flags.insert(key, now);
        }
    }

    /// Whether `key` is set at `now`.
    pub(crate) async fn is_set(&self, key: &K, now: Instant) -> bool {
        if let Some(redis) = &self.redis {
            let result: redis::RedisResult<bool> = redis::cmd("EXISTS")
                .arg(self.redis_key(redis, key))
                .query_async(&mut redis.conn())
                .await;
            match result {
                Ok(set) => return set,
                Err(err) => tracing::warn!(cause = %err, "cannot read a flag from redis"),
            }
        }
        self.lock()
            .get(key)
            .is_some_and(|at| now.saturating_duration_since(*at) < self.keep_for)
    }

    fn redis_key(&self, redis: &Redis, key: &K) -> String {
        let mut name = format!("{}:", self.name);
        key.write_key(&mut name);
        redis.key(name)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<K, Instant>> {
        // Every update leaves the map consistent, so a poisoned lock is still usable.
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::cluster::testing;

    /// The conformance suite of [`SharedLimiter`] and [`SharedFlags`], run in memory and on
    /// Redis. Rates refill so slowly that no refill happens while it runs, whichever clock
    /// times the buckets.
    async fn conformance(redis: Option<Redis>) {
        let slow = Rate::new(3, 1.0 / 3600.0);
        let t0 = Instant::now();
        let limits = SharedLimiter::<(IpAddr, String)>::new("pair", slow, 100, redis.clone());
        let key = |last: u8, user: &str| (IpAddr::from([127, 0, 0, last]), user.to_owned());
        for _ in 0..3 {
            limits.check(&key(1, "alice"), t0).await.unwrap();
        }
        let wait = limits.check(&key(1, "alice"), t0).await.unwrap_err();
        assert!(
            wait > Duration::from_secs(3000) && wait <= Duration::from_secs(3600),
            "{wait:?}"
        );
        // Keys are independent, including pairs that differ in one part only.
        limits.check(&key(2, "alice"), t0).await.unwrap();
        limits.check(&key(1, "alice2"), t0).await.unwrap();
        // A refund gives one token back, never beyond the burst.
        limits.refund(&key(1, "alice")).await;
        limits.check(&key(1, "alice"), t0).await.unwrap();
        assert!(limits.check(&key(1, "alice"), t0).await.is_err());
        for _ in 0..5 {
            limits.refund(&key(2, "alice")).await;
        }
        for _ in 0..3 {
            limits.check(&key(2, "alice"), t0).await.unwrap();
        }
        assert!(limits.check(&key(2, "alice"), t0).await.is_err(), "burst");
        // A refund of a key never taken creates no tokens beyond the burst either.
        limits.refund(&key(3, "bob")).await;
        for _ in 0..3 {
            limits.check(&key(3, "bob"), t0).await.unwrap();
        }
        assert!(limits.check(&key(3, "bob"), t0).await.is_err());

        // No refill at all: refused for good.
        let never = SharedLimiter::<UserId>::new("never", Rate::new(1, 0.0), 100, redis.clone());
        never.check(&UserId::MIN, t0).await.unwrap();
        assert_eq!(never.check(&UserId::MIN, t0).await, Err(Duration::MAX));

        let flags = SharedFlags::<(IpAddr, String)>::new(
            "known",
            Duration::from_secs(3600),
            100,
            redis.clone(),
        );
        assert!(!flags.is_set(&key(1, "alice"), t0).await);
        flags.set(key(1, "alice"), t0).await;
        assert!(flags.is_set(&key(1, "alice"), t0).await);
        assert!(!flags.is_set(&key(1, "bob"), t0).await);
        assert!(!flags.is_set(&key(2, "alice"), t0).await);
    }

    /// A fast refill, timed by each backend's clock: a spent bucket is refused, then (after
    /// waiting on the answer's own wait) accepted again.
    async fn refills(redis: Option<Redis>) {
        let limits = SharedLimiter::<UserId>::new("fast", Rate::new(1, 50.0), 100, redis);
        limits.check(&UserId::MIN, Instant::now()).await.unwrap();
        let wait = limits
            .check(&UserId::MIN, Instant::now())
            .await
            .unwrap_err();
        assert!(wait <= Duration::from_millis(20), "{wait:?}");
        // Waiting for what the bucket itself asked for is waiting on its event, not a guess.
        tokio::time::sleep(wait + Duration::from_millis(2)).await;
        limits.check(&UserId::MIN, Instant::now()).await.unwrap();
    }

    #[tokio::test]
    async fn in_memory_limits_conform() {
        conformance(None).await;
        refills(None).await;
    }

    #[tokio::test]
    async fn redis_limits_conform() {
        let Some(redis) = testing::redis("limits").await else {
            return;
        };
        conformance(Some(redis.clone())).await;
        refills(Some(redis.clone())).await;
    }

    /// Two nodes (two limiters on one Redis) spend one budget between them.
    #[tokio::test]
    async fn two_nodes_share_one_budget() {
        let Some(redis) = testing::redis("limits-two").await else {
            return;
        };
        let rate = Rate::new(4, 1.0 / 3600.0);
        let a = SharedLimiter::<UserId>::new("sends", rate, 10, Some(redis.clone()));
        let b = SharedLimiter::<UserId>::new("sends", rate, 10, Some(redis.clone()));
        let t0 = Instant::now();
        for node in [&a, &b, &a, &b] {
            node.check(&UserId::MIN, t0).await.unwrap();
        }
        assert!(a.check(&UserId::MIN, t0).await.is_err());
        assert!(b.check(&UserId::MIN, t0).await.is_err());
    }
}
