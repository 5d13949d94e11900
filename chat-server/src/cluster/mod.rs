//! The state several nodes share through Redis (issue #14): each concern is a small
//! boundary with an in-memory implementation (one node, today's behaviour) and a Redis one,
//! chosen at start by `redis_url`, and each has one conformance suite that runs against both.
//!
//! - [`limits`]: token buckets for the limits that protect accounts and keys (log-ins,
//!   registrations, bundle fetches, prekey claims, directory search, sends).
//! - [`registry`]: the node registry, with expiry on Redis's clock.
//! - [`presence`]: which nodes hold a live device of each user.
//! - [`lease`]: named leases, one holder at a time (the presence sweeper, the inbox-trimming
//!   pass, one push per device burst).
//! - [`bus`]: [`RedisBus`], the [`chat_core::Bus`] on Redis pub/sub: live events cross nodes
//!   and may be lost; a lost event is repaired from the store (inbox positions, tokens).
//! - `wire`: the bytes of a bus message on Redis, and the channel of a topic.
//!
//! PostgreSQL stays the only durable truth: everything here is soft state that each node
//! re-asserts or that expires, so a Redis restart loses limits' progress and leases (they
//! start afresh) and presence until the nodes' next re-assertion (docs/OPERATIONS.md,
//! "Cluster state in Redis").
//!
//! Every key and channel starts with the cluster's prefix (`redis_prefix`, `chat:` by default), so one
//! Redis can hold several clusters and tests can keep to their own keys.

pub(crate) mod bus;
pub(crate) mod lease;
pub(crate) mod limits;
pub(crate) mod presence;
pub(crate) mod registry;
mod wire;

pub use bus::{BusStats, RedisBus};

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// How long one Redis command may take before it counts as failed.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long connecting to Redis may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection to the cluster's Redis and the prefix of every key this node uses. Cheap
/// to clone: clones share one multiplexed connection, which reconnects on its own.
#[derive(Clone)]
pub(crate) struct Redis {
    conn: ConnectionManager,
    prefix: Arc<str>,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the URL: it may carry a password.
        f.debug_struct("Redis")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// A Redis client whose connections send each command at once (`TCP_NODELAY`): redis-rs
/// leaves Nagle's algorithm on, which holds a small write back while an earlier one is
/// unacknowledged; every command here is small and latency-bound.
pub(crate) fn client(url: &str) -> redis::RedisResult<redis::Client> {
    use redis::IntoConnectionInfo as _;
    let info = url
        .into_connection_info()?
        .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
    redis::Client::open(info)
}

impl Redis {
    /// Connects to `url`; every key will start with `prefix`.
    pub(crate) async fn connect(url: &str, prefix: &str) -> redis::RedisResult<Self> {
        let client = client(url)?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(CONNECT_TIMEOUT));
        let conn = ConnectionManager::new_with_config(client, config).await?;
        Ok(Self {
            conn,
            prefix: prefix.into(),
        })
    }

    /// The key `name` under this cluster's prefix.
    pub(crate) fn key(&self, name: impl std::fmt::Display) -> String {
        format!("{}{name}", self.prefix)
    }

    /// A handle to the shared connection, for one command or script.
    pub(crate) fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }
}

/// Redis for tests: the server in `CHAT_TEST_REDIS_URL` under a prefix of the test's own,
/// whose keys are deleted when the test is done.
#[cfg(test)]
pub(crate) mod testing {
    use super::Redis;

    /// A connection under a test's own prefix; dropping it deletes the prefix's keys.
    pub(crate) struct TestRedis {
        redis: Redis,
        url: String,
    }

    impl std::ops::Deref for TestRedis {
        type Target = Redis;
        fn deref(&self) -> &Redis {
            &self.redis
        }
    }

    impl Drop for TestRedis {
        fn drop(&mut self) {
            // A blocking connection: drop may run where no runtime can be awaited on.
            let Ok(mut conn) =
                redis::Client::open(self.url.as_str()).and_then(|client| client.get_connection())
            else {
                return;
            };
            let pattern = format!("{}*", self.redis.prefix);
            let mut cursor = 0u64;
            loop {
                let Ok((next, keys)) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query::<(u64, Vec<String>)>(&mut conn)
                else {
                    return;
                };
                if !keys.is_empty() {
                    let _ = redis::cmd("DEL").arg(&keys).exec(&mut conn);
                }
                if next == 0 {
                    return;
                }
                cursor = next;
            }
        }
    }

    /// A connection with a fresh random prefix, or `None` when `CHAT_TEST_REDIS_URL` is
    /// unset (a visible skip; a failure under `CHAT_TEST_REQUIRE_SERVICES=1`).
    #[allow(clippy::expect_used)]
    pub(crate) async fn redis(test: &str) -> Option<TestRedis> {
        let url = chat_storage::testing::service_url("CHAT_TEST_REDIS_URL")?;
        let mut salt = [0u8; 8];
        getrandom::fill(&mut salt).expect("random prefix");
        let prefix = format!("test:{test}:{}:", hex::encode(salt));
        let redis = Redis::connect(&url, &prefix)
            .await
            .expect("CHAT_TEST_REDIS_URL reachable");
        Some(TestRedis { redis, url })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redis_connections_send_commands_at_once() {
        let client = super::client("redis://127.0.0.1:6379/0").expect("url");
        assert!(client.get_connection_info().tcp_settings().nodelay());
    }
}
