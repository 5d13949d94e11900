//! Log lines for events that can repeat thousands of times a second (storage failures on a
//! full disk, failed log-ins under a guessing attack): at most one line per interval, each
//! saying how many it stands for.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lets a repeated event be logged at most once per interval, counting what it held back.
#[derive(Debug)]
pub(crate) struct LogThrottle {
    interval: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    last_line: Option<Instant>,
    unlogged: u64,
}

impl LogThrottle {
    /// At most one line per `interval`.
    pub(crate) fn new(interval: Duration) -> Self {
        Self {
            interval,
            state: Mutex::default(),
        }
    }

    /// Records one occurrence at `now`. `Some(n)` when it should be logged, `n` being how
    /// many occurrences since the previous line were not; `None` when it is held back.
    pub(crate) fn record(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state
            .last_line
            .is_some_and(|at| now.saturating_duration_since(at) < self.interval)
        {
            state.unlogged += 1;
            return None;
        }
        state.last_line = Some(now);
        Some(std::mem::take(&mut state.unlogged))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_a_count() {
        let throttle = LogThrottle::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(throttle.record(t0), Some(0));
        for i in 1..=999 {
            assert_eq!(throttle.record(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(throttle.record(t0 + Duration::from_secs(10)), Some(999));
        assert_eq!(throttle.record(t0 + Duration::from_secs(11)), None);
    }
}
