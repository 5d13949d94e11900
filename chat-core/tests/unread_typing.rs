//! Read positions and unread counts (R-MSG-8) and typing indicators (R-MSG-6) against simple
//! models, with time driven by the test.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chat_core::*;
use proptest::prelude::*;

fn mid(n: u64) -> MessageId {
    MessageId::new(n).unwrap()
}

fn uid(n: u64) -> UserId {
    UserId::new(n).unwrap()
}

fn conv(n: u64) -> ConversationId {
    ConversationId::new(n).unwrap()
}

fn addr(user: u64, device: u64) -> DeviceAddress {
    DeviceAddress {
        user: uid(user),
        device: DeviceId::new(device).unwrap(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Raises from several devices in any order: the position is the highest ever raised to,
    /// never lower than before, and the unread count matches counting by hand.
    #[test]
    fn read_positions_only_rise_and_unread_matches_model(
        raises in prop::collection::vec(1u64..60, 0..20),
        messages in prop::collection::vec((1u64..60, 1u64..4), 0..60),
    ) {
        let me = uid(1);
        let messages: Vec<(MessageId, UserId)> =
            messages.into_iter().map(|(id, from)| (mid(id), uid(from))).collect();
        let mut read = ReadPosition::NONE;
        let mut highest: Option<u64> = None;
        for to in raises {
            let before = read;
            let moved = read.raise(mid(to));
            prop_assert!(read >= before);
            prop_assert_eq!(moved, highest.is_none_or(|h| to > h));
            highest = Some(highest.map_or(to, |h| h.max(to)));
            prop_assert_eq!(read.get(), highest.map(mid));

            let distinct: BTreeSet<(MessageId, UserId)> = messages.iter().copied().collect();
            let ids: BTreeSet<MessageId> = distinct
                .iter()
                .filter(|(id, from)| *from != me && highest.is_none_or(|h| id.get() > h))
                .map(|(id, _)| *id)
                .collect();
            prop_assert_eq!(unread_count(me, read, messages.iter().copied()), ids.len());
        }
    }

    /// Typing events and clock steps in any mix: who is typing is exactly the devices whose
    /// last event was active with a deadline still ahead, and once time passes the last
    /// deadline nobody is typing and no timer is left.
    #[test]
    fn typing_expires_by_itself(
        steps in prop::collection::vec(
            (0u64..5_000, 1u64..3, 1u64..4, 1u64..3, any::<bool>(), 0u64..60_000),
            0..40,
        ),
    ) {
        let mut tracker = TypingTracker::new();
        let mut model: BTreeMap<(ConversationId, DeviceAddress), u64> = BTreeMap::new();
        let mut now = 0u64;
        for (advance, c, user, device, active, ttl) in steps {
            now += advance;
            let at = Timestamp::from_millis(now);
            // The timer fires whenever it is due, as a driver would arrange.
            if tracker.poll_timeout().is_some_and(|t| t <= at) {
                tracker.handle_timeout(at);
            }
            let (c, from) = (conv(c), addr(user, device));
            tracker.handle_typing(at, c, from, active, Duration::from_millis(ttl));
            model.retain(|_, deadline| *deadline > now);
            model.remove(&(c, from));
            let capped = ttl.min(MAX_TYPING_TTL.as_millis() as u64);
            if active && capped > 0 {
                model.insert((c, from), now + capped);
            }
            for c in [conv(1), conv(2)] {
                let expected: BTreeSet<UserId> =
                    model.keys().filter(|(k, _)| *k == c).map(|(_, a)| a.user).collect();
                prop_assert_eq!(tracker.typing(c), expected);
            }
            prop_assert_eq!(
                tracker.poll_timeout(),
                model.values().min().map(|&d| Timestamp::from_millis(d))
            );
        }
        let end = Timestamp::from_millis(now).saturating_add(MAX_TYPING_TTL);
        tracker.handle_timeout(end);
        prop_assert!(tracker.typing(conv(1)).is_empty() && tracker.typing(conv(2)).is_empty());
        prop_assert_eq!(tracker.poll_timeout(), None);
    }
}

#[test]
fn stop_ends_typing_and_a_huge_ttl_is_capped() {
    let mut tracker = TypingTracker::new();
    let t0 = Timestamp::from_millis(1_000);
    tracker.handle_typing(t0, conv(1), addr(2, 1), true, Duration::from_secs(3600));
    assert_eq!(tracker.typing(conv(1)), BTreeSet::from([uid(2)]));
    assert_eq!(
        tracker.poll_timeout(),
        Some(t0.saturating_add(MAX_TYPING_TTL))
    );
    tracker.handle_typing(t0, conv(1), addr(2, 1), false, Duration::from_secs(5));
    assert!(tracker.typing(conv(1)).is_empty());
    assert_eq!(tracker.poll_timeout(), None);
}

#[test]
fn unread_leaves_out_own_messages_and_counts_ids_once() {
    let me = uid(1);
    let msgs = [
        (mid(1), uid(2)),
        (mid(2), me),
        (mid(3), uid(2)),
        (mid(3), uid(2)),
    ];
    assert_eq!(unread_count(me, ReadPosition::NONE, msgs), 2);
    assert_eq!(unread_count(me, ReadPosition::up_to(mid(1)), msgs), 1);
    let mut read = ReadPosition::up_to(mid(3));
    assert!(!read.raise(mid(2)));
    assert_eq!(unread_count(me, read, msgs), 0);
}
