//! Counters and latency percentiles shared by a run's tasks.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// What a run counts.
#[derive(Debug)]
pub(crate) struct Stats {
    pub(crate) epoch: Instant,
    pub(crate) sent: AtomicU64,
    pub(crate) acked: AtomicU64,
    pub(crate) delivered: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) heartbeats: AtomicU64,
    latencies_us: Mutex<Vec<u32>>,
    /// The first refusal the server sent, in words, to say why a run failed.
    first_error: Mutex<Option<String>>,
}

impl Stats {
    pub(crate) fn new() -> Self {
        Self {
            epoch: Instant::now(),
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            heartbeats: AtomicU64::new(0),
            latencies_us: Mutex::new(Vec::new()),
            first_error: Mutex::new(None),
        }
    }

    /// Counts a refusal from the server, keeping the first one's description.
    pub(crate) fn refused(&self, why: impl FnOnce() -> String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
        if first.is_none() {
            *first = Some(why());
        }
    }

    /// The first refusal the server sent, if any.
    pub(crate) fn first_error(&self) -> Option<String> {
        self.first_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Microseconds since the run started: what a body carries as its send time.
    pub(crate) fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Records a delivery whose body starts with its send time.
    pub(crate) fn delivered(&self, body: &[u8]) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        if let Some(sent) = body.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
            let latency = self.now_us().saturating_sub(u64::from_be_bytes(sent));
            let mut l = self.latencies_us.lock().unwrap_or_else(|e| e.into_inner());
            l.push(u32::try_from(latency).unwrap_or(u32::MAX));
        }
    }

    pub(crate) fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// p50, p95, p99 and max latency in milliseconds.
    pub(crate) fn percentiles(&self) -> Option<[f64; 4]> {
        let mut l = self
            .latencies_us
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if l.is_empty() {
            return None;
        }
        l.sort_unstable();
        let at = |q: f64| quantile(&l, q).map_or(0.0, |us| f64::from(us) / 1000.0);
        Some([at(0.50), at(0.95), at(0.99), at(1.0)])
    }

    pub(crate) fn reset_latencies(&self) {
        self.latencies_us
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

/// The value at quantile `q` (0 to 1; 1 is the maximum) of `sorted`, ascending; `None` if
/// it is empty.
pub(crate) fn quantile<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    let i = ((sorted.len() as f64 * q) as usize).min(sorted.len().checked_sub(1)?);
    sorted.get(i).copied()
}

/// A tiny deterministic random number generator (xorshift64*), so runs need no extra crate.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1) as u64) as usize
    }
}
