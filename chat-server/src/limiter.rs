//! Rate limiting: token buckets, per connection and keyed (per account, per address).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A rate: `burst` events at once, refilled at `per_second`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Rate {
    /// Events allowed in a burst.
    pub burst: u32,
    /// Sustained events per second.
    pub per_second: f64,
}

impl Rate {
    /// A rate of `per_second` with a burst of `burst`.
    pub(crate) const fn new(burst: u32, per_second: f64) -> Self {
        Self { burst, per_second }
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
            tokens: f64::from(rate.burst),
            updated: now,
        }
    }

    /// Takes one token, or says how long until one is available.
    pub(crate) fn take(&mut self, rate: Rate, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.per_second).min(f64::from(rate.burst));
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else if rate.per_second > 0.0 {
            Err(Duration::from_secs_f64(
                (1.0 - self.tokens) / rate.per_second,
            ))
        } else {
            Err(Duration::MAX)
        }
    }

    /// Gives back one token taken by [`Bucket::take`] (never beyond the burst).
    pub(crate) fn refund(&mut self, rate: Rate) {
        self.tokens = (self.tokens + 1.0).min(f64::from(rate.burst));
    }

    fn is_full(&self, rate: Rate, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens + elapsed * rate.per_second >= f64::from(rate.burst)
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
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= self.max_keys && !buckets.contains_key(key) {
            let rate = self.rate;
            buckets.retain(|_, b| !b.is_full(rate, now));
        }
        buckets
            .entry(key.clone())
            .or_insert_with(|| Bucket::full(self.rate, now))
            .take(self.rate, now)
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
