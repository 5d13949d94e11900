//! [`ConnClock`]: when one HTTP connection must be closed for being slow or idle. Pure: the
//! driver feeds it events with the time and asks for the next deadline.

use std::time::Duration;

use tokio::time::Instant;

/// Why a connection was closed by its clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expiry {
    /// A request head did not arrive in full within the header timeout.
    Header,
    /// A kept-alive connection sent nothing within the idle timeout.
    Idle,
    /// A request body fell behind its deadline (see `body.rs`).
    Body,
}

impl Expiry {
    /// A label for logs and metrics.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Header => "header",
            Self::Idle => "idle",
            Self::Body => "body",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Between requests, nothing received since.
    Idle { since: Instant },
    /// A request head is arriving (or expected: a new connection starts here).
    Head { since: Instant },
    /// Requests are being handled (their bodies have their own deadlines).
    Busy { requests: usize },
    /// A body was cut: close now.
    Cut,
}

/// The timing state of one connection.
///
/// A new connection must complete its first request head within the header timeout. After
/// a response, the connection may stay idle up to the idle timeout; the first byte of the
/// next request starts the header timeout. While a request is being handled there is no
/// connection deadline: the request body's own deadline applies.
#[derive(Debug, Clone)]
pub(crate) struct ConnClock {
    header: Duration,
    idle: Duration,
    phase: Phase,
}

impl ConnClock {
    /// A clock for a connection accepted at `now`.
    pub(crate) fn new(now: Instant, header: Duration, idle: Duration) -> Self {
        Self {
            header,
            idle,
            phase: Phase::Head { since: now },
        }
    }

    /// Bytes arrived from the client.
    pub(crate) fn handle_read(&mut self, now: Instant) {
        if let Phase::Idle { .. } = self.phase {
            self.phase = Phase::Head { since: now };
        }
    }

    /// A request head was complete and its handling started.
    pub(crate) fn handle_request(&mut self) {
        self.phase = match self.phase {
            Phase::Busy { requests } => Phase::Busy {
                requests: requests + 1,
            },
            Phase::Cut => Phase::Cut,
            Phase::Idle { .. } | Phase::Head { .. } => Phase::Busy { requests: 1 },
        };
    }

    /// A response was sent in full (or abandoned).
    pub(crate) fn handle_response_done(&mut self, now: Instant) {
        if let Phase::Busy { requests } = self.phase {
            self.phase = match requests {
                0 | 1 => Phase::Idle { since: now },
                n => Phase::Busy { requests: n - 1 },
            };
        }
    }

    /// A request body missed its deadline: the connection is to be closed.
    pub(crate) fn handle_body_cut(&mut self) {
        self.phase = Phase::Cut;
    }

    /// When to check [`ConnClock::expired`] next; `None` while a request is being handled
    /// (or when it has already expired: check that first).
    pub(crate) fn poll_deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Idle { since } => Some(since + self.idle),
            Phase::Head { since } => Some(since + self.header),
            Phase::Busy { .. } | Phase::Cut => None,
        }
    }

    /// Whether the connection must be closed at `now`, and why.
    pub(crate) fn expired(&self, now: Instant) -> Option<Expiry> {
        match self.phase {
            Phase::Idle { since } if now >= since + self.idle => Some(Expiry::Idle),
            Phase::Head { since } if now >= since + self.header => Some(Expiry::Header),
            Phase::Cut => Some(Expiry::Body),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_new_connection_has_the_header_timeout_for_its_first_head() {
        let t0 = Instant::now();
        let mut c = ConnClock::new(t0, 100 * MS, 500 * MS);
        c.handle_read(t0 + 50 * MS);
        assert_eq!(
            c.poll_deadline(),
            Some(t0 + 100 * MS),
            "bytes do not extend it"
        );
        assert_eq!(c.expired(t0 + 99 * MS), None);
        assert_eq!(c.expired(t0 + 100 * MS), Some(Expiry::Header));
    }

    #[test]
    fn busy_connections_have_no_deadline_and_then_go_idle() {
        let t0 = Instant::now();
        let mut c = ConnClock::new(t0, 100 * MS, 500 * MS);
        c.handle_request();
        c.handle_request();
        assert_eq!(c.poll_deadline(), None);
        assert_eq!(c.expired(t0 + 10_000 * MS), None);
        c.handle_response_done(t0 + 1000 * MS);
        assert_eq!(c.poll_deadline(), None, "one request is still open");
        c.handle_response_done(t0 + 2000 * MS);
        assert_eq!(c.poll_deadline(), Some(t0 + 2500 * MS));
        assert_eq!(c.expired(t0 + 2500 * MS), Some(Expiry::Idle));
        // The next request's first byte starts the header timeout.
        c.handle_read(t0 + 2200 * MS);
        assert_eq!(c.poll_deadline(), Some(t0 + 2300 * MS));
        assert_eq!(c.expired(t0 + 2300 * MS), Some(Expiry::Header));
    }

    #[test]
    fn a_cut_body_closes_at_once() {
        let t0 = Instant::now();
        let mut c = ConnClock::new(t0, 100 * MS, 500 * MS);
        c.handle_request();
        c.handle_body_cut();
        c.handle_response_done(t0);
        c.handle_request();
        assert_eq!(c.expired(t0), Some(Expiry::Body));
    }
}
