//! The state shared by every handler and connection of one node.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{SystemTime, UNIX_EPOCH};

use chat_core::{BlobStore, Bus, NodeRegistry, Store, Timestamp, UserId};
use tokio::sync::{mpsc, watch};

use crate::cluster::Redis;
use crate::cluster::lease::Leases;
use crate::cluster::limits::SharedLimiter;
use crate::config::Config;
use crate::cursors::Cursors;
use crate::hashing::Hasher;
use crate::health::StoreHealth;
use crate::limiter::{InFlight, KeyedLimiter, Rate};
use crate::login_limits::LoginLimits;
use crate::presence::Presence;
use crate::push::PushDispatcher;
use crate::throttle::LogThrottle;

/// Typing updates one account may send in a burst: a few conversations at once.
const TYPING_BURST: u32 = 20;
/// Typing updates one account may send per second (sustained); a client sends one when
/// typing starts and renews it every few seconds.
const TYPING_PER_SECOND: f64 = 2.0;

/// Keys of the rate limits that span requests. Those that protect accounts and keys are
/// shared by the cluster when it has Redis ([`SharedLimiter`]); typing and uploads stay per
/// node (they protect this node's resources, not an account).
#[derive(Debug)]
pub(crate) struct Limits {
    /// Failed log-ins per (address, username) and per username.
    pub(crate) login: LoginLimits,
    /// Log-in and registration attempts per source address.
    pub(crate) login_addr: SharedLimiter<IpAddr>,
    /// Messages per sending account, across its devices and connections.
    pub(crate) sends: SharedLimiter<UserId>,
    /// Key-bundle fetches per (requester, target user), so one-time prekeys cannot be
    /// drained.
    pub(crate) bundles: SharedLimiter<(UserId, UserId)>,
    /// Fetches that take one-time prekeys, per target user whoever asks; beyond it bundles
    /// carry the signed prekey only.
    pub(crate) prekey_claims: SharedLimiter<UserId>,
    /// Attachment bytes uploaded per account.
    pub(crate) upload_bytes: KeyedLimiter<UserId>,
    /// Uploads in progress per account.
    pub(crate) uploads: InFlight<UserId>,
    /// Directory searches per account, so the directory cannot be scraped quickly.
    pub(crate) searches: SharedLimiter<UserId>,
    /// Typing updates per account, across its devices and connections (each is relayed to
    /// every member's connections).
    pub(crate) typing: KeyedLimiter<UserId>,
}

impl Limits {
    /// The limits from `config`; those that protect accounts and keys shared through
    /// `redis` when given.
    pub(crate) fn new(config: &Config, redis: Option<&Redis>) -> Self {
        Self {
            login: LoginLimits::new(config, redis.cloned()),
            login_addr: SharedLimiter::new(
                "login-address",
                Rate::new(config.auth_burst_per_address, 0.5),
                100_000,
                redis.cloned(),
            ),
            sends: SharedLimiter::new(
                "sends",
                Rate::new(
                    config.send_burst_per_account,
                    config.sends_per_account_per_second,
                ),
                1_000_000,
                redis.cloned(),
            ),
            bundles: SharedLimiter::new("bundles", Rate::new(20, 0.2), 100_000, redis.cloned()),
            prekey_claims: SharedLimiter::new(
                "prekey-claims",
                Rate::new(
                    config.prekey_claim_burst_per_user,
                    f64::from(config.prekey_claims_per_user_per_hour) / 3600.0,
                ),
                100_000,
                redis.cloned(),
            ),
            upload_bytes: KeyedLimiter::new(
                Rate::bytes(
                    config.upload_burst_bytes_per_account,
                    config.upload_bytes_per_account_per_day as f64 / 86_400.0,
                ),
                100_000,
            ),
            uploads: InFlight::new(config.concurrent_uploads_per_account),
            searches: SharedLimiter::new(
                "searches",
                Rate::new(
                    config.search_burst_per_account,
                    config.searches_per_account_per_second,
                ),
                100_000,
                redis.cloned(),
            ),
            typing: KeyedLimiter::new(Rate::new(TYPING_BURST, TYPING_PER_SECOND), 1_000_000),
        }
    }
}

/// Everything a handler or connection needs.
pub(crate) struct Shared {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) bus: Arc<dyn Bus>,
    pub(crate) config: Config,
    /// Runs every Argon2id hash and verification, bounded.
    pub(crate) hasher: Hasher,
    /// A hash to verify against when the user does not exist (equal timing).
    pub(crate) dummy_hash: String,
    pub(crate) limits: Limits,
    /// Flips to true when the node starts shutting down.
    pub(crate) shutdown: watch::Receiver<bool>,
    /// Never sent on: the node waits until it is dropped with the last holder of `Shared`
    /// (every live connection holds one).
    #[allow(dead_code)]
    pub(crate) alive: mpsc::Sender<()>,
    /// Presence of the devices connected to this node.
    pub(crate) presence: Arc<Presence>,
    /// Acknowledged cursors waiting for the next batch to the store.
    pub(crate) cursors: Arc<Cursors>,
    /// Live WebSocket connections on this node.
    pub(crate) connections: AtomicUsize,
    /// Attachment ciphertext.
    pub(crate) blobs: Arc<dyn BlobStore>,
    /// Wakes devices that have messages waiting and no live connection.
    pub(crate) push: PushDispatcher,
    /// Store failures seen by this node: throttled logging and readiness.
    pub(crate) health: Arc<StoreHealth>,
    /// Failed log-ins: a warning with the address, at most one per interval (a guessing
    /// attack would otherwise flood the log).
    pub(crate) failed_logins: LogThrottle,
    /// The live chat nodes, for discovery.
    pub(crate) registry: Arc<dyn NodeRegistry>,
    /// Leases of work done by one node for the cluster (in memory on a lone node).
    pub(crate) leases: Arc<Leases>,
    /// Renders Prometheus metrics, when a recorder is installed.
    pub(crate) metrics: Option<Arc<dyn Fn() -> String + Send + Sync>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The wall clock as a [`Timestamp`]; the only clock read of the node's logic.
pub(crate) fn now() -> Timestamp {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    Timestamp::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
}
