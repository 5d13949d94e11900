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

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::limiter::{KeyedLimiter, Rate};

/// The most (address, username) pairs remembered as known.
const MAX_KNOWN: usize = 100_000;

/// The budgets of failed log-ins.
#[derive(Debug)]
pub(crate) struct LoginLimits {
    /// Failures per (address, username).
    pair: KeyedLimiter<(IpAddr, String)>,
    /// Failures per username from all addresses (the backstop).
    account: KeyedLimiter<String>,
    /// When each (address, username) pair last logged in successfully.
    known: Mutex<HashMap<(IpAddr, String), Instant>>,
    /// How long a successful log-in keeps its address known.
    known_for: Duration,
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
    /// The budgets from the `auth_*` settings.
    pub(crate) fn new(config: &Config) -> Self {
        let per_ms = |ms: u64| 1000.0 / ms.max(1) as f64;
        Self {
            pair: KeyedLimiter::new(
                Rate::new(
                    config.auth_failures_per_address_account,
                    per_ms(config.auth_failure_refill_ms),
                ),
                100_000,
            ),
            account: KeyedLimiter::new(
                Rate::new(
                    config.auth_burst_per_account,
                    per_ms(config.auth_account_refill_ms),
                ),
                100_000,
            ),
            known: Mutex::default(),
            known_for: Duration::from_secs(u64::from(config.auth_known_address_days) * 86_400),
        }
    }

    /// Takes this attempt's tokens, or says how long until the address may try this
    /// username again. Check the password only after `Ok`.
    pub(crate) fn start(
        &self,
        addr: IpAddr,
        username: &str,
        now: Instant,
    ) -> Result<Attempt, Duration> {
        let key = (addr, username.to_owned());
        self.pair.check(&key, now)?;
        let took_account = match self.account.check(&key.1, now) {
            Ok(()) => true,
            Err(_) if self.is_known(&key, now) => false,
            Err(wait) => {
                self.pair.refund(&key);
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
    pub(crate) fn finish(&self, attempt: Attempt, outcome: Outcome, now: Instant) {
        if outcome == Outcome::Failure {
            metrics::counter!("chat_login_failures_total").increment(1);
            return;
        }
        self.pair.refund(&attempt.key);
        if attempt.took_account {
            self.account.refund(&attempt.key.1);
        }
        if outcome == Outcome::Success {
            let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
            if known.len() >= MAX_KNOWN && !known.contains_key(&attempt.key) {
                let known_for = self.known_for;
                known.retain(|_, at| now.saturating_duration_since(*at) < known_for);
            }
            if known.len() < MAX_KNOWN || known.contains_key(&attempt.key) {
                known.insert(attempt.key, now);
            }
        }
    }

    fn is_known(&self, key: &(IpAddr, String), now: Instant) -> bool {
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known
            .get(key)
            .is_some_and(|at| now.saturating_duration_since(*at) < self.known_for)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn limits() -> LoginLimits {
        LoginLimits::new(&Config {
            auth_failures_per_address_account: 3,
            auth_failure_refill_ms: 60_000,
            auth_burst_per_account: 5,
            auth_account_refill_ms: 60_000,
            ..Config::default()
        })
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    fn fail(l: &LoginLimits, addr: IpAddr, now: Instant) -> Result<(), Duration> {
        let attempt = l.start(addr, "alice", now)?;
        l.finish(attempt, Outcome::Failure, now);
        Ok(())
    }

    #[test]
    fn a_guesser_exhausts_only_their_own_pair_budget() {
        let (l, t0) = (limits(), Instant::now());
        for _ in 0..3 {
            fail(&l, ip(2), t0).unwrap();
        }
        assert!(fail(&l, ip(2), t0).is_err(), "refused before any check");
        // The owner elsewhere is checked, and a success costs nothing.
        for _ in 0..10 {
            let attempt = l.start(ip(3), "alice", t0).unwrap();
            l.finish(attempt, Outcome::Success, t0);
        }
        // The guesser's budget refills slowly.
        assert!(fail(&l, ip(2), t0 + Duration::from_secs(61)).is_ok());
    }

    #[test]
    fn the_backstop_leaves_known_addresses_checked() {
        let (l, t0) = (limits(), Instant::now());
        let attempt = l.start(ip(9), "alice", t0).unwrap();
        l.finish(attempt, Outcome::Success, t0);
        // Five addresses spend the account's five failures.
        for addr in 10..15 {
            fail(&l, ip(addr), t0).unwrap();
        }
        assert!(l.start(ip(20), "alice", t0).is_err(), "a new address waits");
        assert!(
            l.start(ip(21), "bob", t0).is_ok(),
            "other accounts are untouched"
        );
        let attempt = l.start(ip(9), "alice", t0).unwrap();
        l.finish(attempt, Outcome::Success, t0);
    }

    #[test]
    fn unchecked_attempts_cost_nothing() {
        let (l, t0) = (limits(), Instant::now());
        for _ in 0..10 {
            let attempt = l.start(ip(2), "alice", t0).unwrap();
            l.finish(attempt, Outcome::NotChecked, t0);
        }
        assert!(fail(&l, ip(2), t0).is_ok());
    }
}
