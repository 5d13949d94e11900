//! The server's side of one device's inbox stream on one connection (R-SYNC-2, R-SYNC-3):
//! what has been sent, which live deliveries go out, which are dropped, when the store must
//! be read instead, where the trim floor moves the stream, and when a backlog ends.
//!
//! Sans I/O, in quinn-proto's shape: the gateway's connection driver reports what happened
//! (`handle_*`) and carries out what [`DeliveryStream::poll_action`] asks for (read a page
//! of the inbox, read the trim floor, send `resync_required` or `sync_end`). Only inbox
//! positions pass through it, never entries.
//!
//! Invariants, which the property tests check against a model inbox:
//! - The client sees a gapless stream: every position sent is the one after the last one
//!   sent, or follows a `resync_required` whose `head` it continues from. Nothing is sent
//!   twice unless the client asks for it with a `sync` from an earlier position.
//! - A live delivery at or below the last position sent is a duplicate; the next one goes
//!   out at once; one past a gap starts a read from the store, which is the source of truth.
//! - While a read is in progress, live deliveries are dropped. Each was committed before it
//!   was published, and the driver drains its queue (handing deliveries to
//!   [`handle_live`](DeliveryStream::handle_live)) before every page read, so the read covers
//!   them; what arrives after the last page is handled live.
//! - A stream never moves past trimmed entries silently: every read first checks the trim
//!   floor, and again when a page skips a position; a stream below the floor gets
//!   `resync_required {inbox_trimmed, head: floor}`.
//! - A `sync` from past the inbox head is refused with `resync_required {cursor_ahead}` and
//!   continues from the head, so later live deliveries are never taken for duplicates.

use std::collections::VecDeque;

use crate::ids::InboxPos;
use crate::protocol::ResyncReason;

/// What the driver must do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Read the device's trim floor and pass it to
    /// [`handle_floor`](DeliveryStream::handle_floor).
    ReadFloor,
    /// Drain the connection's queue into [`handle_live`](DeliveryStream::handle_live), then
    /// read up to a page of inbox entries after `after` and pass each position to
    /// [`handle_entry`](DeliveryStream::handle_entry), then call
    /// [`handle_page_end`](DeliveryStream::handle_page_end).
    Read {
        /// The last position sent: read strictly after it.
        after: InboxPos,
    },
    /// Send `resync_required {reason, head}`.
    Resync {
        /// Why the stream moved.
        reason: ResyncReason,
        /// Where it continues from.
        head: InboxPos,
    },
    /// Send `sync_end {head}`: the backlog a `sync` (or `auth`) asked for is complete.
    SyncEnd {
        /// The last position sent.
        head: InboxPos,
    },
}

/// What to do with a live delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Live {
    /// The next position: send it now.
    Send,
    /// At or below the last position sent: drop it.
    Duplicate,
    /// A read from the store is in progress and covers it: drop it.
    Covered,
    /// Past a gap: drop it and carry out the actions now queued (a read covers it).
    Gap,
}

/// What to do with one entry of a page read from the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// Send it.
    Send,
    /// Skip it (at or below the last position sent, e.g. left below the trim floor).
    Skip,
    /// Stop processing this page (a position was skipped: the trim floor is read first, and
    /// a new read follows); carry out the queued actions.
    Stop,
}

/// Where a read is in its work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Live: deliveries go out as they come.
    Live,
    /// Reading from the store.
    Reading {
        /// Whether a `sync_end` ends the read (a `sync` or `auth` asked for it; a gap
        /// repair ends silently).
        announce: bool,
        /// The last position sent when the floor was last read during this read: a page
        /// that skips a position right after it skips past a hole the floor does not
        /// explain, which is sent rather than read again forever.
        floor_checked_at: Option<InboxPos>,
        /// The current page was stopped; its end is ignored.
        stopped: bool,
    },
}

/// The bookkeeping of one device's inbox stream on one connection.
#[derive(Debug, Clone)]
pub struct DeliveryStream {
    sent: InboxPos,
    state: State,
    actions: VecDeque<Action>,
}

impl Default for DeliveryStream {
    fn default() -> Self {
        Self::new()
    }
}

impl DeliveryStream {
    /// A stream that has sent nothing and waits for its first [`handle_sync`](Self::handle_sync).
    pub fn new() -> Self {
        Self {
            sent: InboxPos::ZERO,
            state: State::Live,
            actions: VecDeque::new(),
        }
    }

    /// The last position sent on this connection.
    pub fn sent(&self) -> InboxPos {
        self.sent
    }

    /// Whether a read from the store is in progress.
    pub fn is_reading(&self) -> bool {
        matches!(self.state, State::Reading { .. })
    }

    /// The position an `ack {up_to}` may move the stored cursor to: never past what this
    /// connection has sent.
    pub fn ackable(&self, up_to: InboxPos) -> InboxPos {
        up_to.min(self.sent)
    }

    /// The next thing to do, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The client asked for everything after `after` (in `auth`, or with `sync`); `head` is
    /// the inbox head read from the store. Past the head: `resync_required {cursor_ahead}`
    /// and `sync_end`, continuing from the head. Otherwise the floor is read, then pages.
    pub fn handle_sync(&mut self, after: InboxPos, head: InboxPos) {
        self.actions.clear();
        if after > head {
            self.sent = head;
            self.state = State::Live;
            self.actions.push_back(Action::Resync {
                reason: ResyncReason::CursorAhead,
                head,
            });
            self.actions.push_back(Action::SyncEnd { head });
            return;
        }
        self.sent = after;
        self.start_read(true);
    }

    /// A live delivery at `pos` came off the bus.
    pub fn handle_live(&mut self, pos: InboxPos) -> Live {
        if self.is_reading() {
            return Live::Covered;
        }
        if pos <= self.sent {
            return Live::Duplicate;
        }
        if Some(pos) == self.sent.next() {
            self.sent = pos;
            return Live::Send;
        }
        self.start_read(false);
        Live::Gap
    }

    /// Live deliveries may have been lost before they reached this connection (the bus
    /// re-established its subscription). Live: a read after the last position sent starts,
    /// ending silently, so a lost last delivery goes out now rather than with the next one.
    /// Reading: nothing changes, since the read in progress reads the store again before it
    /// ends and so covers everything committed before this call.
    pub fn handle_repair(&mut self) {
        if !self.is_reading() {
            self.start_read(false);
        }
    }

    /// The trim floor read for [`Action::ReadFloor`]. A stream below it moves up to it with
    /// `resync_required {inbox_trimmed}`; a page read follows.
    pub fn handle_floor(&mut self, floor: InboxPos) {
        let State::Reading {
            floor_checked_at,
            stopped,
            ..
        } = &mut self.state
        else {
            return;
        };
        if floor > self.sent {
            self.sent = floor;
            self.actions.push_back(Action::Resync {
                reason: ResyncReason::InboxTrimmed,
                head: floor,
            });
        }
        *floor_checked_at = Some(self.sent);
        *stopped = false;
        self.actions.push_back(Action::Read { after: self.sent });
    }

    /// One entry of the page read for [`Action::Read`], in order.
    pub fn handle_entry(&mut self, pos: InboxPos) -> Entry {
        let State::Reading {
            floor_checked_at,
            stopped,
            ..
        } = &mut self.state
        else {
            return Entry::Skip;
        };
        if *stopped || pos <= self.sent {
            return Entry::Skip;
        }
        if Some(pos) != self.sent.next() && *floor_checked_at != Some(self.sent) {
            // A skipped position: trimmed since the floor was read. Read it again first.
            *stopped = true;
            self.actions.push_back(Action::ReadFloor);
            return Entry::Stop;
        }
        // The next position, or a hole above a floor just read (which trimming cannot make:
        // sent as it is rather than read again forever).
        self.sent = pos;
        *floor_checked_at = None;
        Entry::Send
    }

    /// The page read for [`Action::Read`] ended after `len` entries, of at most `limit`. A
    /// full page is followed by another read; a short one ends the read (with `sync_end`
    /// when it was asked for).
    pub fn handle_page_end(&mut self, len: usize, limit: usize) {
        let State::Reading {
            announce, stopped, ..
        } = self.state
        else {
            return;
        };
        if stopped {
            return;
        }
        if len >= limit {
            self.actions.push_back(Action::Read { after: self.sent });
            return;
        }
        self.state = State::Live;
        if announce {
            self.actions.push_back(Action::SyncEnd { head: self.sent });
        }
    }

    fn start_read(&mut self, announce: bool) {
        self.state = State::Reading {
            announce,
            floor_checked_at: None,
            stopped: false,
        };
        self.actions.push_back(Action::ReadFloor);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pos(n: u64) -> InboxPos {
        InboxPos::new(n).unwrap()
    }

    #[test]
    fn sync_past_the_head_resyncs_to_the_head() {
        let mut s = DeliveryStream::new();
        s.handle_sync(pos(9), pos(4));
        assert_eq!(
            s.poll_action(),
            Some(Action::Resync {
                reason: ResyncReason::CursorAhead,
                head: pos(4)
            })
        );
        assert_eq!(s.poll_action(), Some(Action::SyncEnd { head: pos(4) }));
        assert_eq!(s.poll_action(), None);
        // Later live deliveries go out instead of being taken for duplicates.
        assert_eq!(s.handle_live(pos(5)), Live::Send);
    }

    #[test]
    fn a_backlog_then_live() {
        let mut s = DeliveryStream::new();
        s.handle_sync(pos(1), pos(3));
        assert_eq!(s.poll_action(), Some(Action::ReadFloor));
        s.handle_floor(InboxPos::ZERO);
        assert_eq!(s.poll_action(), Some(Action::Read { after: pos(1) }));
        assert_eq!(s.handle_live(pos(2)), Live::Covered);
        assert_eq!(s.handle_entry(pos(2)), Entry::Send);
        assert_eq!(s.handle_entry(pos(3)), Entry::Send);
        s.handle_page_end(2, 10);
        assert_eq!(s.poll_action(), Some(Action::SyncEnd { head: pos(3) }));
        assert_eq!(s.handle_live(pos(3)), Live::Duplicate);
        assert_eq!(s.handle_live(pos(4)), Live::Send);
        assert_eq!(s.handle_live(pos(6)), Live::Gap);
        assert_eq!(s.poll_action(), Some(Action::ReadFloor));
        assert_eq!(s.ackable(pos(100)), pos(4));
    }

    #[test]
    fn a_repair_reads_after_the_last_position_sent() {
        let mut s = DeliveryStream::new();
        s.handle_sync(InboxPos::ZERO, InboxPos::ZERO);
        assert_eq!(s.poll_action(), Some(Action::ReadFloor));
        s.handle_floor(InboxPos::ZERO);
        assert_eq!(s.poll_action(), Some(Action::Read { after: pos(0) }));
        s.handle_page_end(0, 10);
        assert_eq!(s.poll_action(), Some(Action::SyncEnd { head: pos(0) }));
        assert_eq!(s.handle_live(pos(1)), Live::Send);
        // Position 2 was lost on the bus; the repair finds it without waiting for 3.
        s.handle_repair();
        assert_eq!(s.poll_action(), Some(Action::ReadFloor));
        s.handle_floor(InboxPos::ZERO);
        assert_eq!(s.poll_action(), Some(Action::Read { after: pos(1) }));
        // A second repair during the read changes nothing: the read covers it.
        s.handle_repair();
        assert_eq!(s.poll_action(), None);
        assert_eq!(s.handle_entry(pos(2)), Entry::Send);
        s.handle_page_end(1, 10);
        // A silent read: no sync_end the client did not ask for.
        assert_eq!(s.poll_action(), None);
        assert_eq!(s.handle_live(pos(2)), Live::Duplicate);
        assert_eq!(s.handle_live(pos(3)), Live::Send);
    }
}
