//! Read positions and unread counts (R-MSG-8), computed from message IDs.
//!
//! A read position is "read up to and including this ID", per user and conversation. It only
//! ever moves forward ([`ReadPosition::raise`]), on the server and on every device, so devices
//! that raise it in any order agree on the highest. The unread count is never stored: it is
//! the number of messages after the position that the user did not send, recomputed from IDs
//! whenever either changes, so it cannot drift.

use std::collections::BTreeSet;

use crate::ids::{MessageId, UserId};

/// How far a user has read a conversation; starts at nothing read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReadPosition(Option<MessageId>);

impl ReadPosition {
    /// Nothing read yet.
    pub const NONE: Self = Self(None);

    /// Read up to and including `up_to`.
    pub const fn up_to(up_to: MessageId) -> Self {
        Self(Some(up_to))
    }

    /// The highest message read, if any.
    pub const fn get(self) -> Option<MessageId> {
        self.0
    }

    /// Moves the position to `up_to` if that is further; never backwards. Returns whether it
    /// moved.
    pub fn raise(&mut self, up_to: MessageId) -> bool {
        if self.0.is_some_and(|at| at >= up_to) {
            return false;
        }
        self.0 = Some(up_to);
        true
    }

    /// Whether message `id` is at or before the position.
    pub fn has_read(self, id: MessageId) -> bool {
        self.0.is_some_and(|at| id <= at)
    }
}

/// The unread count of a conversation for user `me`: distinct messages with an ID after
/// `read` that `me` did not send. `messages` are `(id, sender)` of the messages that count:
/// a client leaves out edits, deletes and reactions ([`Content::target`] is `Some`) and
/// deleted messages, which are not something to read.
///
/// [`Content::target`]: crate::Content::target
pub fn unread_count(
    me: UserId,
    read: ReadPosition,
    messages: impl IntoIterator<Item = (MessageId, UserId)>,
) -> usize {
    messages
        .into_iter()
        .filter(|&(id, sender)| sender != me && !read.has_read(id))
        .map(|(id, _)| id)
        .collect::<BTreeSet<_>>()
        .len()
}
