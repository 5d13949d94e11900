//! Typing indicators on a receiving device (R-MSG-6), without I/O or a clock.
//!
//! Every indicator carries its own expiry: a device is typing in a conversation from a
//! `typing {active: true}` until its TTL passes or a `typing {active: false}` arrives,
//! whichever is first. A TTL is capped at [`MAX_TYPING_TTL`], so however the events are lost,
//! reordered or malformed, no indicator outlives `MAX_TYPING_TTL` after its last event: it can
//! never get stuck.
//!
//! Driving it, as with the presence tracker: feed events with
//! [`TypingTracker::handle_typing`], arrange to call [`TypingTracker::handle_timeout`] at
//! [`TypingTracker::poll_timeout`], and read [`TypingTracker::typing`]. Every `handle_*`
//! first expires what ended at or before `now`, so the result never depends on how punctual
//! the timer is.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::ids::{ConversationId, DeviceAddress, UserId};
use crate::time::Timestamp;

/// The longest an indicator lasts without a new event, whatever TTL the event carries.
pub const MAX_TYPING_TTL: Duration = Duration::from_secs(30);

/// Who is typing where, per conversation and device.
#[derive(Debug, Clone, Default)]
pub struct TypingTracker {
    /// When each typing device's indicator expires.
    active: BTreeMap<(ConversationId, DeviceAddress), Timestamp>,
    /// The same, ordered by expiry.
    deadlines: BTreeSet<(Timestamp, ConversationId, DeviceAddress)>,
}

impl TypingTracker {
    /// Nobody typing.
    pub fn new() -> Self {
        Self::default()
    }

    /// A typing event from device `from` in `conversation`: typing for `ttl` (at most
    /// [`MAX_TYPING_TTL`]) if `active`, stopped otherwise. A zero TTL stops it too.
    pub fn handle_typing(
        &mut self,
        now: Timestamp,
        conversation: ConversationId,
        from: DeviceAddress,
        active: bool,
        ttl: Duration,
    ) {
        self.handle_timeout(now);
        if let Some(deadline) = self.active.remove(&(conversation, from)) {
            self.deadlines.remove(&(deadline, conversation, from));
        }
        if active && !ttl.is_zero() {
            let deadline = now.saturating_add(ttl.min(MAX_TYPING_TTL));
            self.active.insert((conversation, from), deadline);
            self.deadlines.insert((deadline, conversation, from));
        }
    }

    /// Expires every indicator whose deadline is at or before `now`.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        while let Some(&(deadline, conversation, from)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_first();
            self.active.remove(&(conversation, from));
        }
    }

    /// When [`Self::handle_timeout`] should next be called, if anyone is typing.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.deadlines.first().map(|&(deadline, _, _)| deadline)
    }

    /// The conversations where someone is typing, as of the last input.
    pub fn conversations(&self) -> BTreeSet<ConversationId> {
        self.active.keys().map(|(c, _)| *c).collect()
    }

    /// The users typing in `conversation` (on any device), as of the last input.
    pub fn typing(&self, conversation: ConversationId) -> BTreeSet<UserId> {
        self.active
            .keys()
            .filter(|(c, _)| *c == conversation)
            .map(|(_, from)| from.user)
            .collect()
    }
}
