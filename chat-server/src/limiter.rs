//! Rate limiting: token buckets, per connection and keyed (per account, per address).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A rate: `burst` events at once, refilled at `per_second`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Rate {
    /// Events (or bytes) allowed in a burst.
    pub burst: f64,
    /// Sustained events per second.
    pub per_second: f64,
}

impl Rate {
    /// A rate of `per_second` with a burst of `burst`.
    pub(crate) fn new(burst: u32, per_second: f64) -> Self {
        Self {
            burst: f64::from(burst),
            per_second,
        }
    }

    /// A rate of bytes: a burst of `burst` bytes refilled at `per_second` bytes a second.
    pub(crate) fn bytes(burst: u64, per_second: f64) -> Self {
        Self {
            burst: burst as f64,
            per_second,
        }
    }
}

/// One token bucket.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    /// A full bucket.
    pub(crate) fn full(rate: Rate, now: Instant) -> Self {
        Self {
            tokens: rate.burst,
            updated: now,
        }
    }

    /// Takes one token, or says how long until one is available.
    pub(crate) fn take(&mut self, rate: Rate, now: Instant) -> Result<(), Duration> {
        self.take_n(rate, 1.0, now, true)
    }

    /// Takes `n` tokens (only when `take`; otherwise just checks), or says how long until
    /// `n` are available (`Duration::MAX` if never: `n` is more than the burst).
    fn take_n(&mut self, rate: Rate, n: f64, now: Instant, take: bool) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.per_second).min(rate.burst);
        self.updated = now;
        if self.tokens >= n {
            if take {
                self.tokens -= n;
            }
            Ok(())
        } else if rate.per_second > 0.0 && n <= rate.burst {
            Err(Duration::from_secs_f64((n - self.tokens) / rate.per_second))
        } else {
            Err(Duration::MAX)
        }
    }

    /// Gives back one token taken by [`Bucket::take`] (never beyond the burst).
    pub(crate) fn refund(&mut self, rate: Rate) {
        self.tokens = (self.tokens + 1.0).min(rate.burst);
    }

    fn is_full(&self, rate: Rate, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens + elapsed * rate.per_second >= rate.burst
    }
}

/// Token buckets by key, for limits shared across connections and requests. The map is
/// pruned of full (idle) buckets when it grows past `max_keys`, so it stays bounded by the
/// number of recently active keys.
#[derive(Debug)]
pub(crate) struct KeyedLimiter<K> {
    rate: Rate,
    max_keys: usize,
    buckets: Mutex<HashMap<K, Bucket>>,
}

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    /// A limiter applying `rate` to each key.
    pub(crate) fn new(rate: Rate, max_keys: usize) -> Self {
        Self {
            rate,
            max_keys,
            buckets: Mutex::default(),
        }
    }

    /// Takes a token for `key`, or says how long until one is available.
    pub(crate) fn check(&self, key: &K, now: Instant) -> Result<(), Duration> {
        self.check_n(key, 1.0, now, true)
    }

    /// Takes `n` tokens for `key` (only when `take`; otherwise just checks that there are
    /// that many), or says how long until there will be.
    pub(crate) fn check_n(
        &self,
        key: &K,
        n: f64,
        now: Instant,
        take: bool,
    ) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= self.max_keys && !buckets.contains_key(key) {
            let rate = self.rate;
            buckets.retain(|_, b| !b.is_full(rate, now));
        }
        buckets
            .entry(key.clone())
            .or_insert_with(|| Bucket::full(self.rate, now))
            .take_n(self.rate, n, now, take)
    }

    /// Gives back a token taken by [`KeyedLimiter::check`], for an event that turned out
    /// not to count (a log-in that succeeded, when only failures are limited).
    pub(crate) fn refund(&self, key: &K) {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(bucket) = buckets.get_mut(key) {
            bucket.refund(self.rate);
        }
    }
}

/// Counts of work in progress by key, each under a cap: a place is held by its
/// [`Place`] and given back when that is dropped.
#[derive(Debug)]
pub(crate) struct InFlight<K: Hash + Eq> {
    max: usize,
    counts: Arc<Mutex<HashMap<K, usize>>>,
}

impl<K: Hash + Eq + Clone> InFlight<K> {
    /// At most `max` at once per key.
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max,
            counts: Arc::default(),
        }
    }

    /// A place for one more under `key`, or `None` when it has `max` already.
    pub(crate) fn enter(&self, key: &K) -> Option<Place<K>> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(key.clone()).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(Place {
            key: key.clone(),
            counts: self.counts.clone(),
        })
    }
}

/// One place in an [`InFlight`] count.
#[derive(Debug)]
pub(crate) struct Place<K: Hash + Eq> {
    key: K,
    counts: Arc<Mutex<HashMap<K, usize>>>,
}

impl<K: Hash + Eq> Drop for Place<K> {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_refills() {
        let rate = Rate::new(3, 2.0);
        let t0 = Instant::now();
        let mut b = Bucket::full(rate, t0);
        for _ in 0..3 {
            assert!(b.take(rate, t0).is_ok());
        }
        let wait = b.take(rate, t0).unwrap_err();
        assert!(wait <= Duration::from_millis(500));
        assert!(b.take(rate, t0 + Duration::from_millis(500)).is_ok());
    }

    #[test]
    fn keyed_limits_are_independent_and_bounded() {
        let l = KeyedLimiter::new(Rate::new(1, 1.0), 2);
        let t0 = Instant::now();
        assert!(l.check(&"a", t0).is_ok());
        assert!(l.check(&"a", t0).is_err());
        assert!(l.check(&"b", t0).is_ok());
        // A third key prunes idle buckets; "a" and "b" are not idle yet.
        assert!(l.check(&"c", t0).is_ok());
        assert!(l.check(&"a", t0 + Duration::from_secs(2)).is_ok());
    }

    #[test]
    fn byte_buckets_check_take_and_refuse_more_than_the_burst() {
        let l = KeyedLimiter::new(Rate::bytes(1000, 100.0), 10);
        let t0 = Instant::now();
        assert!(l.check_n(&"a", 800.0, t0, false).is_ok());
        assert!(l.check_n(&"a", 800.0, t0, true).is_ok());
        let wait = l.check_n(&"a", 800.0, t0, false).unwrap_err();
        assert_eq!(wait, Duration::from_secs(6));
        assert_eq!(l.check_n(&"a", 1001.0, t0, true), Err(Duration::MAX));
        assert!(
            l.check_n(&"a", 800.0, t0 + Duration::from_secs(6), true)
                .is_ok()
        );
    }

    #[test]
    fn in_flight_places_are_capped_and_given_back() {
        let f = InFlight::new(2);
        let a = f.enter(&"a").unwrap();
        let _b = f.enter(&"a").unwrap();
        assert!(f.enter(&"a").is_none());
        assert!(f.enter(&"other").is_some());
        drop(a);
        assert!(f.enter(&"a").is_some());
    }

    #[test]
    fn refunds_give_back_what_was_taken_up_to_the_burst() {
        let l = KeyedLimiter::new(Rate::new(1, 0.0), 10);
        let t0 = Instant::now();
        assert!(l.check(&"a", t0).is_ok());
        assert!(l.check(&"a", t0).is_err());
        l.refund(&"a");
        l.refund(&"a");
        assert!(l.check(&"a", t0).is_ok());
        assert!(l.check(&"a", t0).is_err(), "refunds stop at the burst");
    }
}
