//! [`Coalescer`]: which offline device gets a notification when, as a pure state machine
//! (time comes in as an argument; no I/O).
//!
//! A device's first offline delivery opens a window; deliveries that arrive within it, or
//! while that device's notification is being sent, add to one count. When the window closes
//! and nothing is in flight for the device, the notification is ready. Inputs are
//! `handle_*(now, …)`; outputs are `poll_ready(now)` and `poll_timeout()`, which say what to
//! send and when to look again.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use chat_core::{ConversationId, DeviceAddress};

/// One notification to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ready {
    /// The offline device.
    pub(crate) device: DeviceAddress,
    /// The conversation of the newest waiting message.
    pub(crate) conversation: ConversationId,
    /// Messages coalesced into this notification.
    pub(crate) count: u32,
}

#[derive(Debug)]
struct Pending {
    conversation: ConversationId,
    count: u32,
    due: Instant,
}

/// Per-device coalescing of offline deliveries into notifications.
#[derive(Debug)]
pub(crate) struct Coalescer {
    window: Duration,
    capacity: usize,
    pending: HashMap<DeviceAddress, Pending>,
    /// Devices whose notification is being sent; their pending counts wait for it.
    in_flight: HashSet<DeviceAddress>,
    /// When each pending device that is not in flight becomes ready.
    deadlines: BTreeSet<(Instant, DeviceAddress)>,
}

impl Coalescer {
    /// Coalesces over `window`, tracking at most `capacity` devices with pending messages.
    pub(crate) fn new(window: Duration, capacity: usize) -> Self {
        Self {
            window,
            capacity,
            pending: HashMap::new(),
            in_flight: HashSet::new(),
            deadlines: BTreeSet::new(),
        }
    }

    /// A message landed in the inbox of `device`, which has no live connection. Returns
    /// false when it had to be dropped (too many devices pending).
    pub(crate) fn handle_offline(
        &mut self,
        now: Instant,
        device: DeviceAddress,
        conversation: ConversationId,
    ) -> bool {
        if let Some(pending) = self.pending.get_mut(&device) {
            pending.count = pending.count.saturating_add(1);
            pending.conversation = conversation;
            return true;
        }
        if self.pending.len() >= self.capacity {
            return false;
        }
        let due = now + self.window;
        self.pending.insert(
            device,
            Pending {
                conversation,
                count: 1,
                due,
            },
        );
        if !self.in_flight.contains(&device) {
            self.deadlines.insert((due, device));
        }
        true
    }

    /// The notification for `device` that [`Self::poll_ready`] handed out is done (sent,
    /// refused or given up). What arrived meanwhile becomes due.
    pub(crate) fn handle_done(&mut self, now: Instant, device: DeviceAddress) {
        self.in_flight.remove(&device);
        if let Some(pending) = self.pending.get_mut(&device) {
            pending.due = pending.due.max(now);
            self.deadlines.insert((pending.due, device));
        }
    }

    /// The next notification due at `now`; the device counts as in flight until
    /// [`Self::handle_done`].
    pub(crate) fn poll_ready(&mut self, now: Instant) -> Option<Ready> {
        let &(due, device) = self.deadlines.first()?;
        if due > now {
            return None;
        }
        self.deadlines.pop_first();
        let pending = self.pending.remove(&device)?;
        self.in_flight.insert(device);
        Some(Ready {
            device,
            conversation: pending.conversation,
            count: pending.count,
        })
    }

    /// When the next notification becomes due, if any is waiting.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.first().map(|&(due, _)| due)
    }
}

#[cfg(test)]
mod tests {
    use chat_core::{DeviceId, UserId};

    use super::*;

    fn dev(n: u64) -> DeviceAddress {
        DeviceAddress {
            user: UserId::new(n).unwrap(),
            device: DeviceId::new(n * 10).unwrap(),
        }
    }

    fn conv(n: u64) -> ConversationId {
        ConversationId::new(n).unwrap()
    }

    const W: Duration = Duration::from_millis(100);

    #[test]
    fn a_burst_within_the_window_is_one_notification() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(W, 10);
        assert!(c.handle_offline(t0, dev(1), conv(1)));
        assert!(c.handle_offline(t0 + W / 2, dev(1), conv(2)));
        assert!(c.handle_offline(t0 + W / 2, dev(2), conv(1)));
        assert_eq!(c.poll_timeout(), Some(t0 + W));
        assert_eq!(c.poll_ready(t0 + W / 2), None);
        let ready = c.poll_ready(t0 + W).unwrap();
        assert_eq!(
            (ready.device, ready.conversation, ready.count),
            (dev(1), conv(2), 2)
        );
        assert_eq!(c.poll_ready(t0 + W), None);
        assert_eq!(c.poll_timeout(), Some(t0 + W + W / 2));
        let ready = c.poll_ready(t0 + 2 * W).unwrap();
        assert_eq!((ready.device, ready.count), (dev(2), 1));
        assert_eq!(c.poll_timeout(), None);
    }

    #[test]
    fn messages_during_a_send_wait_for_it_then_go_as_one() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(W, 10);
        c.handle_offline(t0, dev(1), conv(1));
        assert_eq!(c.poll_ready(t0 + W).unwrap().count, 1);
        // The send hangs well past the window; three more arrive meanwhile.
        for i in 0..3 {
            c.handle_offline(t0 + W + Duration::from_millis(i), dev(1), conv(1));
        }
        assert_eq!(c.poll_timeout(), None, "nothing due while in flight");
        assert_eq!(c.poll_ready(t0 + 10 * W), None);
        c.handle_done(t0 + 10 * W, dev(1));
        let ready = c.poll_ready(t0 + 10 * W).unwrap();
        assert_eq!(ready.count, 3);
        c.handle_done(t0 + 10 * W, dev(1));
        assert_eq!(c.poll_timeout(), None);
    }

    #[test]
    fn capacity_bounds_the_devices_pending() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(W, 2);
        assert!(c.handle_offline(t0, dev(1), conv(1)));
        assert!(c.handle_offline(t0, dev(2), conv(1)));
        assert!(
            !c.handle_offline(t0, dev(3), conv(1)),
            "a third device is dropped"
        );
        assert!(
            c.handle_offline(t0, dev(1), conv(1)),
            "a known device still counts"
        );
        assert!(c.poll_ready(t0 + W).is_some());
        assert!(c.handle_offline(t0 + W, dev(3), conv(1)), "room again");
    }
}
