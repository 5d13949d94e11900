//! Log-in limits that stop password guessing without letting a guesser lock the owner out
//! (docs/SECURITY.md, "Log-in limits").
//!
//! Failures are limited, not attempts, and each limit is keyed so that a guesser exhausts
//! only their own budget:
//!
//! - per (source address, username): a small failure budget with a slow refill. A guesser
//!   elsewhere never touches the owner's budget.
//! - per username, from all addresses: a much larger backstop against guessing spread over
//!   many addresses. When it is exhausted, only addresses this account has logged in from
//!   successfully before ("known" addresses) still get their password checked.
//!
//! A token is taken from each budget before the password is checked (so concurrent attempts
//! cannot all slip through on the same token) and given back when the password was right,
//! so successes cost nothing. An attempt beyond a budget is refused without an Argon2 run.
//! Keys are the username as typed, whether or not the account exists, so the answers do not
//! reveal which usernames exist.
//!
//! In a cluster the budgets and the known addresses live in Redis
//! ([`crate::cluster::limits`]), so the limits are the same however a guesser spreads the
//! attempts over the nodes.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::cluster::Redis;
use crate::cluster::limits::{SharedFlags, SharedLimiter};
use crate::config::Config;
use crate::limiter::Rate;

/// The most (address, username) pairs remembered as known in memory.
const MAX_KNOWN: usize = 100_000;

/// The budgets of failed log-ins.
#[derive(Debug)]
pub(crate) struct LoginLimits {
    /// Failures per (address, username).
    pair: SharedLimiter<(IpAddr, String)>,
    /// Failures per username from all addresses (the backstop).
    account: SharedLimiter<String>,
    /// The (address, username) pairs that logged in successfully lately.
    known: SharedFlags<(IpAddr, String)>,
}

/// What a log-in attempt took from the budgets; hand it back with the outcome.
#[derive(Debug)]
#[must_use = "report the outcome with LoginLimits::finish"]
pub(crate) struct Attempt {
    key: (IpAddr, String),
    took_account: bool,
}

/// How a checked attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The password was right.
    Success,
    /// The password (or username) was wrong: the tokens stay taken.
    Failure,
    /// The password was not checked after all (for example the hashing pool was busy).
    NotChecked,
}

impl LoginLimits {
    /// The budgets from the `auth_*` settings, shared through `redis` when given.
    pub(crate) fn new(config: &Config, redis: Option<Redis>) -> Self {
        let per_ms = |ms: u64| 1000.0 / ms.max(1) as f64;
        Self {
            pair: SharedLimiter::new(
                "login-pair",
                Rate::new(
                    config.auth_failures_per_address_account,
                    per_ms(config.auth_failure_refill_ms),
                ),
                100_000,
                redis.clone(),
            ),
            account: SharedLimiter::new(
                "login-account",
                Rate::new(
                    config.auth_burst_per_account,
                    per_ms(config.auth_account_refill_ms),
                ),
                100_000,
                redis.clone(),
            ),
            known: SharedFlags::new(
                "login-known",
                Duration::from_secs(u64::from(config.auth_known_address_days) * 86_400),
                MAX_KNOWN,
                redis,
            ),
        }
    }

    /// Takes this attempt's tokens, or says how long until the address may try this
    /// username again. Check the password only after `Ok`.
    pub(crate) async fn start(
        &self,
        addr: IpAddr,
        username: &str,
        now: Instant,
    ) -> Result<Attempt, Duration> {
        let key = (addr, username.to_owned());
        self.pair.check(&key, now).await?;
        let took_account = match self.account.check(&key.1, now).await {
            Ok(()) => true,
            Err(_) if self.known.is_set(&key, now).await => false,
            Err(wait) => {
                self.pair.refund(&key).await;
                tracing::warn!(
                    username = %key.1,
                    "log-in failure backstop reached; only known addresses are checked"
                );
                return Err(wait);
            }
        };
        Ok(Attempt { key, took_account })
    }

    /// Reports how the attempt ended: successes give their tokens back and make the
    /// address known for the account.
    pub(crate) async fn finish(&self, attempt: Attempt, outcome: Outcome, now: Instant) {
        if outcome == Outcome::Failure {
            metrics::counter!("chat_login_failures_total").increment(1);
            return;
        }
        self.pair.refund(&attempt.key).await;
        if attempt.took_account {
            self.account.refund(&attempt.key.1).await;
        }
        if outcome == Outcome::Success {
            self.known.set(attempt.key, now).await;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::cluster::testing;

    fn limits() -> LoginLimits {
        limits_on(None)
    }

    fn limits_on(redis: Option<Redis>) -> LoginLimits {
        LoginLimits::new(
            &Config {
                auth_failures_per_address_account: 3,
                auth_failure_refill_ms: 60_000,
                auth_burst_per_account: 5,
                auth_account_refill_ms: 60_000,
                ..Config::default()
            },
            redis,
        )
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    async fn fail(l: &LoginLimits, addr: IpAddr, now: Instant) -> Result<(), Duration> {
        let attempt = l.start(addr, "alice", now).await?;
        l.finish(attempt, Outcome::Failure, now).await;
        Ok(())
    }

    /// The conformance suite of the log-in limits, run in memory and on Redis (each
    /// scenario on fresh limits).
    async fn a_guesser_exhausts_only_their_own_pair_budget(l: LoginLimits) {
        let t0 = Instant::now();
        for _ in 0..3 {
            fail(&l, ip(2), t0).await.unwrap();
        }
        assert!(
            fail(&l, ip(2), t0).await.is_err(),
            "refused before any check"
        );
        // The owner elsewhere is checked, and a success costs nothing.
        for _ in 0..10 {
            let attempt = l.start(ip(3), "alice", t0).await.unwrap();
            l.finish(attempt, Outcome::Success, t0).await;
        }
    }

    async fn the_backstop_leaves_known_addresses_checked(l: LoginLimits) {
        let t0 = Instant::now();
        let attempt = l.start(ip(9), "alice", t0).await.unwrap();
        l.finish(attempt, Outcome::Success, t0).await;
        // Five addresses spend the account's five failures.
        for addr in 10..15 {
            fail(&l, ip(addr), t0).await.unwrap();
        }
        assert!(
            l.start(ip(20), "alice", t0).await.is_err(),
            "a new address waits"
        );
        assert!(
            l.start(ip(21), "bob", t0).await.is_ok(),
            "other accounts are untouched"
        );
        let attempt = l.start(ip(9), "alice", t0).await.unwrap();
        l.finish(attempt, Outcome::Success, t0).await;
    }

    async fn unchecked_attempts_cost_nothing(l: LoginLimits) {
        let t0 = Instant::now();
        for _ in 0..10 {
            let attempt = l.start(ip(2), "alice", t0).await.unwrap();
            l.finish(attempt, Outcome::NotChecked, t0).await;
        }
        assert!(fail(&l, ip(2), t0).await.is_ok());
    }

    #[tokio::test]
    async fn in_memory_log_in_limits_conform() {
        a_guesser_exhausts_only_their_own_pair_budget(limits()).await;
        the_backstop_leaves_known_addresses_checked(limits()).await;
        unchecked_attempts_cost_nothing(limits()).await;
    }

    #[tokio::test]
    async fn redis_log_in_limits_conform() {
        let Some(redis) = testing::redis("login-pair").await else {
            return;
        };
        a_guesser_exhausts_only_their_own_pair_budget(limits_on(Some(redis.clone()))).await;
        let redis = testing::redis("login-backstop").await.unwrap();
        the_backstop_leaves_known_addresses_checked(limits_on(Some(redis.clone()))).await;
        let redis = testing::redis("login-unchecked").await.unwrap();
        unchecked_attempts_cost_nothing(limits_on(Some(redis.clone()))).await;
    }

    /// The in-memory buckets on a virtual clock: the guesser's budget refills slowly.
    #[tokio::test]
    async fn a_spent_pair_budget_refills() {
        let (l, t0) = (limits(), Instant::now());
        for _ in 0..3 {
            fail(&l, ip(2), t0).await.unwrap();
        }
        assert!(fail(&l, ip(2), t0).await.is_err());
        assert!(fail(&l, ip(2), t0 + Duration::from_secs(61)).await.is_ok());
    }
}
