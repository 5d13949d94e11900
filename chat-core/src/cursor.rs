//! The client's sync cursor (R-SYNC-2): the highest inbox position the device has processed.
//!
//! Inbox positions are gapless, so every delivery is either the next one, one already
//! processed (a duplicate after a reconnect, dropped by the client), or past a gap (some
//! entries were not seen; the client asks for a `sync` from its cursor and does not advance).

use crate::ids::InboxPos;

/// What an incoming inbox position means for the cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The next entry: process it, then advance.
    Next,
    /// Already processed: drop it.
    Duplicate,
    /// Entries between the cursor and this one are missing: re-sync from the cursor.
    Gap {
        /// The position that should have come next.
        expected: InboxPos,
        /// The position that came.
        got: InboxPos,
    },
}

/// A device's sync cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncCursor {
    last: InboxPos,
}

impl Default for SyncCursor {
    fn default() -> Self {
        Self::new(InboxPos::ZERO)
    }
}

impl SyncCursor {
    /// A cursor that has processed everything up to `last` (`InboxPos::ZERO` for nothing).
    pub const fn new(last: InboxPos) -> Self {
        Self { last }
    }

    /// The highest processed position: what the client sends in `auth` and `ack`.
    pub const fn position(&self) -> InboxPos {
        self.last
    }

    /// Classifies `pos` without changing the cursor.
    pub fn check(&self, pos: InboxPos) -> Verdict {
        match self.last.next() {
            _ if pos <= self.last => Verdict::Duplicate,
            Some(expected) if pos == expected => Verdict::Next,
            Some(expected) => Verdict::Gap { expected, got: pos },
            // The cursor is at the largest position there is; nothing can be newer.
            None => Verdict::Duplicate,
        }
    }

    /// Classifies `pos` and advances the cursor to it when it is [`Verdict::Next`].
    ///
    /// Call this only once the entry is stored durably on the client: a cursor must never
    /// move past an entry that a crash could lose.
    pub fn advance(&mut self, pos: InboxPos) -> Verdict {
        let verdict = self.check(pos);
        if verdict == Verdict::Next {
            self.last = pos;
        }
        verdict
    }

    /// Checks the cursor against the `head` of a `sync_end`: after the backlog, the cursor
    /// must have reached the head. Returns the gap otherwise.
    pub fn check_backlog_end(&self, head: InboxPos) -> Result<(), Verdict> {
        if self.last >= head {
            return Ok(());
        }
        match self.last.next() {
            Some(expected) => Err(Verdict::Gap {
                expected,
                got: head,
            }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(n: u64) -> InboxPos {
        InboxPos::new(n).unwrap()
    }

    #[test]
    fn verdicts() {
        let mut c = SyncCursor::new(pos(3));
        assert_eq!(c.advance(pos(4)), Verdict::Next);
        assert_eq!(c.advance(pos(4)), Verdict::Duplicate);
        assert_eq!(c.advance(pos(2)), Verdict::Duplicate);
        assert_eq!(
            c.advance(pos(7)),
            Verdict::Gap {
                expected: pos(5),
                got: pos(7)
            }
        );
        assert_eq!(c.position(), pos(4));
        assert_eq!(c.check_backlog_end(pos(4)), Ok(()));
        assert!(c.check_backlog_end(pos(6)).is_err());
    }
}
