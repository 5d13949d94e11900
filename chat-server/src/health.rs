//! Store failures: what a peer is told, what is logged, and readiness.
//!
//! The one mapping from a [`StoreError`] to what a peer sees, for HTTP and WebSocket alike
//! ([`peer_error`]): the wire code and our own message. A backend's text (SQLite's or
//! PostgreSQL's messages) never reaches a peer; it is logged here, at most once per
//! [`LOG_INTERVAL`] per node with a count of the failures not logged in between, so a full
//! disk does not flood the log.
//!
//! Readiness (`/readyz`): a node is not ready while its store fails. A backend failure
//! within [`FAILING_FOR`] makes it unready, and so does a failed probe write
//! ([`HealthStore::probe_write`]), run at most once per [`PROBE_EVERY`] however often
//! `/readyz` is asked (it is unauthenticated), so a node that stopped getting traffic
//! becomes ready again once its store takes writes.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use chat_core::{ErrorCode, HealthStore, StoreError};

use crate::throttle::LogThrottle;

/// The shortest time between two log lines about store failures.
pub(crate) const LOG_INTERVAL: Duration = Duration::from_secs(10);
/// How long after a backend failure the node reports itself unready.
pub(crate) const FAILING_FOR: Duration = Duration::from_secs(5);
/// How long a probe write's result is reused.
pub(crate) const PROBE_EVERY: Duration = Duration::from_secs(1);

/// What a peer is told about a store failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PeerError {
    /// The wire code.
    pub(crate) code: ErrorCode,
    /// Our own explanation; never a backend's text.
    pub(crate) message: String,
}

/// Maps a store failure to what a peer is told. Backend failures (and a schema from a newer
/// build) are `unavailable` with a fixed message; the rest carry the model's own message.
pub(crate) fn peer_error(err: &StoreError) -> PeerError {
    let code = err.code();
    let message = if is_backend(err) {
        "storage unavailable".to_owned()
    } else {
        err.to_string()
    };
    PeerError { code, message }
}

/// Whether `err` is a failure of the backend rather than a refusal by the model.
pub(crate) fn is_backend(err: &StoreError) -> bool {
    err.code() == ErrorCode::Unavailable
}

/// Store failures seen by this node, for throttled logging and readiness.
#[derive(Debug)]
pub(crate) struct StoreHealth {
    last_failure: Mutex<Option<Instant>>,
    log: LogThrottle,
    probe: tokio::sync::Mutex<Option<(Instant, bool)>>,
}

impl Default for StoreHealth {
    fn default() -> Self {
        Self {
            last_failure: Mutex::default(),
            log: LogThrottle::new(LOG_INTERVAL),
            probe: tokio::sync::Mutex::default(),
        }
    }
}

impl StoreHealth {
    /// Records a backend failure during `during` (what the node was doing), logging it
    /// unless another was logged less than [`LOG_INTERVAL`] ago.
    pub(crate) fn failed(&self, during: &'static str, cause: &dyn std::fmt::Display) {
        metrics::counter!("chat_store_failures_total").increment(1);
        let now = Instant::now();
        *self.last_failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(now);
        if let Some(unlogged) = self.log.record(now) {
            tracing::error!(%cause, during, unlogged, "store failed");
        }
    }

    /// Whether a backend failure was recorded within `window` of now.
    pub(crate) fn failed_within(&self, window: Duration) -> bool {
        self.last_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|at| at.elapsed() < window)
    }

    /// Whether the store takes writes: a probe write, or the result of one made less than
    /// [`PROBE_EVERY`] ago. Concurrent callers share one probe.
    pub(crate) async fn writable(&self, store: &dyn HealthStore) -> bool {
        let mut last = self.probe.lock().await;
        if let Some((at, ok)) = *last
            && at.elapsed() < PROBE_EVERY
        {
            return ok;
        }
        let ok = match store.probe_write().await {
            Ok(()) => true,
            Err(err) => {
                self.failed("write probe", &err);
                false
            }
        };
        *last = Some((Instant::now(), ok));
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_text_never_reaches_a_peer() {
        let err = StoreError::backend(std::io::Error::other("disk I/O error at /var/lib/x"));
        let peer = peer_error(&err);
        assert_eq!(peer.code, ErrorCode::Unavailable);
        assert_eq!(peer.message, "storage unavailable");
        let peer = peer_error(&StoreError::ClientKeyReused);
        assert_eq!(peer.code, ErrorCode::Conflict);
        assert!(peer.message.contains("another conversation"));
    }

    #[test]
    fn failures_make_the_node_unready_for_a_while() {
        let health = StoreHealth::default();
        assert!(!health.failed_within(FAILING_FOR));
        for _ in 0..1_000 {
            health.failed("append", &"disk full");
        }
        assert!(health.failed_within(FAILING_FOR));
        assert_eq!(
            health.log.record(Instant::now() + LOG_INTERVAL),
            Some(999),
            "one line for a burst of failures"
        );
    }
}
