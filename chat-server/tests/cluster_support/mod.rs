//! What the multi-node tests share: the Redis and PostgreSQL of the machine (from
//! `CHAT_TEST_REDIS_URL` and `CHAT_TEST_POSTGRES_URL`), each test with its own channel
//! prefix (whose keys [`RedisKeys`] deletes), its own PostgreSQL database
//! (`chat_storage::testing::FreshPostgres`), and a Redis ACL user per node so a test can
//! kill exactly its own nodes' pub/sub connections (`CLIENT KILL USER … TYPE pubsub`)
//! without touching anyone else's.
#![allow(dead_code, unreachable_pub)]

use std::sync::atomic::{AtomicU32, Ordering};

/// `CHAT_TEST_REDIS_URL`, or `None` when the test is skipped
/// (`chat_storage::testing::service_url`: visible, and a failure in CI).
pub fn redis_url() -> Option<String> {
    chat_storage::testing::service_url("CHAT_TEST_REDIS_URL")
}

/// A name no other test, in this run or a concurrent one, uses.
pub fn unique(kind: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let mut salt = [0u8; 4];
    getrandom::fill(&mut salt).expect("randomness");
    format!(
        "{kind}_{}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        hex::encode(salt)
    )
}

/// Deletes every Redis key under a test's prefix when dropped, so a test leaves nothing
/// behind (presence sets have no TTL), also when it fails. Drop it after the nodes that
/// write under the prefix: declare it before them, or as a struct's last field.
pub struct RedisKeys {
    url: String,
    prefix: String,
}

impl RedisKeys {
    /// A guard for the keys under `prefix` on the Redis at `url`.
    pub fn new(url: &str, prefix: &str) -> Self {
        Self {
            url: url.to_owned(),
            prefix: prefix.to_owned(),
        }
    }
}

impl Drop for RedisKeys {
    fn drop(&mut self) {
        // A blocking connection: drop may run where no runtime can be awaited on.
        let Ok(mut conn) =
            redis::Client::open(self.url.as_str()).and_then(|client| client.get_connection())
        else {
            return;
        };
        let mut cursor = 0u64;
        loop {
            let Ok((next, keys)) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}*", self.prefix))
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

/// An administrative connection to the test Redis.
pub async fn admin(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis reachable")
}

/// A Redis ACL user with every permission, removed (with its connections) on drop.
pub struct RedisUser {
    base: String,
    pub name: String,
    password: String,
}

impl RedisUser {
    pub async fn create(base: &str) -> Self {
        let name = unique("chat_node");
        let mut password = [0u8; 12];
        getrandom::fill(&mut password).expect("randomness");
        let password = hex::encode(password);
        let mut conn = admin(base).await;
        let _: () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg(&name)
            .arg("on")
            .arg(format!(">{password}"))
            .arg("~*")
            .arg("&*")
            .arg("+@all")
            .query_async(&mut conn)
            .await
            .expect("ACL SETUSER");
        Self {
            base: base.to_owned(),
            name,
            password,
        }
    }

    /// The test Redis's URL, logging in as this user.
    pub fn url(&self) -> String {
        let (scheme, rest) = self.base.split_once("://").expect("a URL");
        let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
        format!("{scheme}://{}:{}@{host}", self.name, self.password)
    }

    /// Lets this user log in, or refuses new log-ins (connections already open stay).
    pub async fn set_enabled(&self, enabled: bool) {
        let mut conn = admin(&self.base).await;
        let _: () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg(&self.name)
            .arg(if enabled { "on" } else { "off" })
            .query_async(&mut conn)
            .await
            .expect("ACL SETUSER");
    }

    /// Kills this user's pub/sub connections; returns how many there were.
    pub async fn kill_pubsub(&self) -> u64 {
        let mut conn = admin(&self.base).await;
        redis::cmd("CLIENT")
            .arg("KILL")
            .arg("USER")
            .arg(&self.name)
            .arg("TYPE")
            .arg("pubsub")
            .query_async(&mut conn)
            .await
            .expect("CLIENT KILL")
    }
}

impl Drop for RedisUser {
    fn drop(&mut self) {
        let (base, name) = (self.base.clone(), self.name.clone());
        // Drop runs inside the test's runtime, which cannot be blocked on.
        let _ = std::thread::spawn(move || {
            let Ok(client) = redis::Client::open(base) else {
                return;
            };
            if let Ok(mut conn) = client.get_connection() {
                let _: Result<(), _> = redis::cmd("ACL").arg("DELUSER").arg(&name).query(&mut conn);
            }
        })
        .join();
    }
}
