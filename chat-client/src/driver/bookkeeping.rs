//! The connection's bookkeeping that needs no socket: which outbox entries are on the wire
//! under which request ID, and how far the inbox has been acknowledged. The driver asks these
//! what to do and does the I/O; the tests here drive them directly.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chat_core::protocol::ACK_EVERY;
use chat_core::{ClientKey, ErrorCode, InboxPos};

/// The outbox entries sent on one connection.
///
/// An entry is *busy* from the moment it is sent until it is settled: stored by the server
/// (`sent`), refused for good, or taken back for a retry (after `stale_devices` was repaired,
/// or a retryable error's wait). A busy entry is not sent again when the client asks for it
/// (a reconnect's whole-outbox send, or a second `Send` command); a retry sends it again.
#[derive(Debug)]
pub(super) struct Sends {
    next_req: u32,
    in_flight: HashMap<u32, ClientKey>,
    busy: HashSet<ClientKey>,
}

impl Default for Sends {
    fn default() -> Self {
        Self::starting_at(1)
    }
}

impl Sends {
    /// Request IDs start at `first` (tests start near the wrap).
    fn starting_at(first: u32) -> Self {
        Self {
            next_req: first.max(1),
            in_flight: HashMap::new(),
            busy: HashSet::new(),
        }
    }

    /// Whether a `Send` command for `key` should send it: not while it is busy.
    pub(super) fn wants(&self, key: ClientKey) -> bool {
        !self.busy.contains(&key)
    }

    /// `key` is to go again (repaired, or its wait is over): it is no longer busy.
    pub(super) fn retry(&mut self, key: ClientKey) {
        self.busy.remove(&key);
    }

    /// Sends `key`: its request ID, never 0 (the protocol's "no request") and never one
    /// still waiting for an answer, also after the counter wraps.
    pub(super) fn start(&mut self, key: ClientKey) -> u32 {
        let mut req = self.next_req;
        while self.in_flight.contains_key(&req) {
            req = next(req);
        }
        self.next_req = next(req);
        self.in_flight.insert(req, key);
        self.busy.insert(key);
        req
    }

    /// The server stored the entry sent as `req`: its key, settled. `None` for a request
    /// this connection is not waiting for (a second answer).
    pub(super) fn stored(&mut self, req: u32) -> Option<ClientKey> {
        let key = self.in_flight.remove(&req)?;
        self.busy.remove(&key);
        Some(key)
    }

    /// The server answered `req` with something that takes the entry back for a retry
    /// (`stale_devices`, a retryable error): its key, still busy until [`retry`](Self::retry)
    /// or [`settle`](Self::settle).
    pub(super) fn answered(&mut self, req: u32) -> Option<ClientKey> {
        self.in_flight.remove(&req)
    }

    /// `key` is done with (refused for good, or unreadable in the outbox).
    pub(super) fn settle(&mut self, key: ClientKey) {
        self.busy.remove(&key);
    }

    /// The server answered `req` with an error: what to do with the entry. A retryable
    /// error ([`ErrorCode::is_retryable`]: `rate_limited`, `unavailable`, ...) keeps it busy for the wait the
    /// server asked for (or [`DEFAULT_RETRY_WAIT`]); any other refuses it for good, settled.
    /// `None` for a request this connection is not waiting for.
    pub(super) fn refused(
        &mut self,
        req: u32,
        code: ErrorCode,
        retry_after_ms: Option<u32>,
    ) -> Option<Refusal> {
        let key = self.answered(req)?;
        if code.is_retryable() {
            let wait = retry_after_ms.map_or(DEFAULT_RETRY_WAIT, |ms| {
                Duration::from_millis(u64::from(ms))
            });
            return Some(Refusal::RetryAfter(key, wait));
        }
        self.settle(key);
        Some(Refusal::Failed(key))
    }
}

/// How long a send refused with a retryable error waits when the server named no wait.
pub(super) const DEFAULT_RETRY_WAIT: Duration = Duration::from_secs(1);

/// What an error answer to a send means for its entry ([`Sends::refused`]).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Refusal {
    /// Send it again after the wait (it stays busy until [`Sends::retry`]).
    RetryAfter(ClientKey, Duration),
    /// Refused for good: drop it from the outbox and tell the app.
    Failed(ClientKey),
}

fn next(req: u32) -> u32 {
    req.wrapping_add(1).max(1)
}

/// How far the inbox has been acknowledged.
#[derive(Debug, Default)]
pub(super) struct Acks {
    acked: u64,
}

impl Acks {
    /// A connection resumes from the stored cursor, which the server already counts as
    /// acknowledged (it is the `auth` frame's cursor).
    pub(super) fn resume(&mut self, cursor: InboxPos) {
        self.acked = cursor.get();
    }

    /// The server restarted the inbox at `head` (`resync_required`): later acks count from
    /// there.
    pub(super) fn restart(&mut self, head: InboxPos) {
        self.acked = self.acked.min(head.get());
    }

    /// Whether the entries processed up to `pos` are enough for an ack before the timer.
    pub(super) fn due(&self, pos: InboxPos) -> bool {
        pos.get() >= self.acked.saturating_add(ACK_EVERY)
    }

    /// The ack to send for entries processed up to `pos` (made durable first), if it says
    /// more than the last one.
    pub(super) fn take(&mut self, pos: InboxPos) -> Option<InboxPos> {
        if pos.get() > self.acked {
            self.acked = pos.get();
            return Some(pos);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(n: u8) -> ClientKey {
        ClientKey::from_bytes([n; 16])
    }

    fn at(n: u64) -> InboxPos {
        InboxPos::new(n).unwrap()
    }

    #[test]
    fn a_busy_entry_is_not_sent_again_until_it_is_settled_or_retried() {
        let mut sends = Sends::default();
        assert!(sends.wants(key(1)));
        let req = sends.start(key(1));
        assert!(!sends.wants(key(1)), "sent and unanswered");
        // Stale devices: taken back, still busy while it is repaired.
        assert_eq!(sends.answered(req), Some(key(1)));
        assert!(!sends.wants(key(1)));
        assert_eq!(sends.answered(req), None, "one answer per request");
        sends.retry(key(1));
        assert!(sends.wants(key(1)));
        let again = sends.start(key(1));
        assert_ne!(again, req);
        assert_eq!(sends.stored(again), Some(key(1)));
        assert!(sends.wants(key(1)));
        assert_eq!(sends.stored(again), None, "a second `sent` is ignored");
    }

    #[test]
    fn a_retryable_error_waits_and_keeps_the_entry_any_other_refuses_it() {
        let mut sends = Sends::default();
        let req = sends.start(key(1));
        assert_eq!(
            sends.refused(req, ErrorCode::RateLimited, Some(250)),
            Some(Refusal::RetryAfter(key(1), Duration::from_millis(250)))
        );
        assert!(!sends.wants(key(1)), "busy while it waits");
        assert_eq!(sends.refused(req, ErrorCode::RateLimited, None), None);
        sends.retry(key(1));
        let req = sends.start(key(1));
        assert_eq!(
            sends.refused(req, ErrorCode::Unavailable, None),
            Some(Refusal::RetryAfter(key(1), DEFAULT_RETRY_WAIT)),
            "no wait named: the default"
        );
        sends.retry(key(1));
        let req = sends.start(key(1));
        assert_eq!(
            sends.refused(req, ErrorCode::NotMember, Some(250)),
            Some(Refusal::Failed(key(1)))
        );
        assert!(sends.wants(key(1)), "settled");
    }

    #[test]
    fn request_ids_skip_zero_and_those_in_flight_across_the_wrap() {
        let mut sends = Sends::starting_at(u32::MAX - 1);
        let a = sends.start(key(1));
        let b = sends.start(key(2));
        let c = sends.start(key(3));
        assert_eq!((a, b, c), (u32::MAX - 1, u32::MAX, 1));
        // Around again with 1 still waiting: 1 is skipped.
        let mut sends = Sends {
            next_req: 1,
            ..sends
        };
        assert_eq!(sends.start(key(4)), 2);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Start(u8),
        Stored(usize),
        Answered(usize),
        Retry(u8),
        Settle(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..6).prop_map(Op::Start),
            (0usize..8).prop_map(Op::Stored),
            (0usize..8).prop_map(Op::Answered),
            (0u8..6).prop_map(Op::Retry),
            (0u8..6).prop_map(Op::Settle),
        ]
    }

    proptest! {
        /// Against a model: every request ID handed out is nonzero and not in flight; an
        /// answer names the key sent under it, once; busy is exactly "sent, not settled".
        #[test]
        fn sends_match_a_model(first in prop_oneof![Just(1u32), Just(u32::MAX - 2), any::<u32>()],
                               ops in proptest::collection::vec(op(), 0..200)) {
            let mut sends = Sends::starting_at(first);
            let mut in_flight: HashMap<u32, ClientKey> = HashMap::new();
            let mut busy: HashSet<ClientKey> = HashSet::new();
            let mut issued: Vec<u32> = Vec::new();
            for op in ops {
                match op {
                    Op::Start(k) => {
                        let req = sends.start(key(k));
                        prop_assert_ne!(req, 0);
                        prop_assert!(!in_flight.contains_key(&req));
                        in_flight.insert(req, key(k));
                        busy.insert(key(k));
                        issued.push(req);
                    }
                    Op::Stored(i) | Op::Answered(i) if issued.is_empty() => {
                        let _ = i;
                    }
                    Op::Stored(i) => {
                        let req = issued[i % issued.len()];
                        let want = in_flight.remove(&req);
                        if let Some(k) = want {
                            busy.remove(&k);
                        }
                        prop_assert_eq!(sends.stored(req), want);
                    }
                    Op::Answered(i) => {
                        let req = issued[i % issued.len()];
                        prop_assert_eq!(sends.answered(req), in_flight.remove(&req));
                    }
                    Op::Retry(k) => {
                        busy.remove(&key(k));
                        sends.retry(key(k));
                    }
                    Op::Settle(k) => {
                        busy.remove(&key(k));
                        sends.settle(key(k));
                    }
                }
                for k in 0..6 {
                    prop_assert_eq!(sends.wants(key(k)), !busy.contains(&key(k)));
                }
            }
        }

        /// Acks only grow (until a resync restarts them), never pass what was processed,
        /// and are due once `ACK_EVERY` entries are unacknowledged.
        #[test]
        fn acks_grow_and_are_due_every_batch(start in 0u64..1000,
                                             steps in proptest::collection::vec(0u64..100, 1..100)) {
            let mut acks = Acks::default();
            acks.resume(at(start));
            let mut last = start;
            let mut pos = start;
            for step in steps {
                pos += step;
                let p = at(pos);
                prop_assert_eq!(acks.due(p), pos - last >= ACK_EVERY);
                match acks.take(p) {
                    Some(up_to) => {
                        prop_assert!(pos > last);
                        prop_assert_eq!(up_to, p);
                        last = pos;
                    }
                    None => prop_assert_eq!(pos, last),
                }
                prop_assert!(!acks.due(p));
            }
            acks.restart(at(start / 2));
            prop_assert_eq!(acks.take(at(start / 2 + 1)), Some(at(start / 2 + 1)));
        }
    }
}
