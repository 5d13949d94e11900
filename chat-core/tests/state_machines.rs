//! Property tests of the sync cursor and the presence state machine against simple models.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chat_core::*;
use proptest::prelude::*;

fn pos(n: u64) -> InboxPos {
    InboxPos::new(n).unwrap()
}

proptest! {
    /// Any sequence of positions: the cursor advances exactly on the next position, calls
    /// everything at or below it a duplicate and everything further a gap.
    #[test]
    fn cursor_verdicts_match_model(start in 0u64..50, seq in prop::collection::vec(0u64..80, 0..200)) {
        let mut cursor = SyncCursor::new(pos(start));
        let mut model = start;
        for p in seq {
            let verdict = cursor.advance(pos(p));
            let expected = if p <= model {
                Verdict::Duplicate
            } else if p == model + 1 {
                model = p;
                Verdict::Next
            } else {
                Verdict::Gap { expected: pos(model + 1), got: pos(p) }
            };
            prop_assert_eq!(verdict, expected);
            prop_assert_eq!(cursor.position(), pos(model));
        }
    }

    /// In-order delivery with duplicates mixed in (a reconnect re-sending a tail) processes
    /// every entry exactly once.
    #[test]
    fn duplicates_are_processed_once(n in 1u64..100, replays in prop::collection::vec((1u64..100, 1u64..20), 0..10)) {
        let mut stream: Vec<u64> = (1..=n).collect();
        for (at, len) in replays {
            let at = at.min(n) as usize;
            let from = at.saturating_sub(len as usize) as u64 + 1;
            let replay: Vec<u64> = (from..=at as u64).collect();
            stream.splice(at..at, replay);
        }
        let mut cursor = SyncCursor::default();
        let processed = stream.iter().filter(|&&p| cursor.advance(pos(p)) == Verdict::Next).count();
        prop_assert_eq!(processed as u64, n);
        prop_assert_eq!(cursor.check_backlog_end(pos(n)), Ok(()));
    }
}

// ---- presence ----

const INTERVAL: u64 = 5_000;
const MISSED: u64 = 3;
const WINDOW: u64 = INTERVAL * MISSED;

fn config() -> PresenceConfig {
    PresenceConfig {
        heartbeat_interval: Duration::from_millis(INTERVAL),
        missed_heartbeats: MISSED as u32,
    }
}

fn dev(user: u64, device: u64) -> DeviceAddress {
    DeviceAddress {
        user: UserId::new(user).unwrap(),
        device: DeviceId::new(device).unwrap(),
    }
}

fn t(ms: u64) -> Timestamp {
    Timestamp::from_millis(ms)
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Connect(u8),
    Heartbeat(u8),
    Disconnect(u8),
    SignOut(u8),
    Tick,
}

fn any_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (0u8..4).prop_map(Op::Connect),
        4 => (0u8..4).prop_map(Op::Heartbeat),
        1 => (0u8..4).prop_map(Op::Disconnect),
        1 => (0u8..4).prop_map(Op::SignOut),
        1 => Just(Op::Tick),
    ]
}

/// Devices 0..4: two users with two devices each.
fn device_of(i: u8) -> DeviceAddress {
    dev(1 + u64::from(i / 2), 10 + u64::from(i))
}

/// The model: a device is alive while `now < last_seen + WINDOW` and it has not signed out.
#[derive(Default)]
struct Model {
    last_seen: BTreeMap<DeviceAddress, u64>,
}

impl Model {
    fn expire(&mut self, now: u64) {
        self.last_seen.retain(|_, seen| now < *seen + WINDOW);
    }
    fn online(&self) -> BTreeSet<UserId> {
        self.last_seen.keys().map(|d| d.user).collect()
    }
}

fn drain(tracker: &mut PresenceTracker) -> Vec<PresenceChange> {
    std::iter::from_fn(|| tracker.poll_event()).collect()
}

/// Checks that `events` take the online set from `before` to `after` with exactly one event
/// per user whose status changed, and none for anyone else.
fn check_transition(
    before: &BTreeSet<UserId>,
    after: &BTreeSet<UserId>,
    events: &[PresenceChange],
) -> Result<(), TestCaseError> {
    let mut expected: Vec<(UserId, bool)> = before
        .symmetric_difference(after)
        .map(|u| (*u, after.contains(u)))
        .collect();
    let mut got: Vec<(UserId, bool)> = events
        .iter()
        .map(|e| match *e {
            PresenceChange::Online { user, .. } => (user, true),
            PresenceChange::Offline { user, .. } => (user, false),
        })
        .collect();
    expected.sort();
    got.sort();
    prop_assert_eq!(got, expected);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// For any schedule, a device counts online exactly while its heartbeats keep within the
    /// window; a user is online while any device is; status changes emit exactly one event.
    #[test]
    fn presence_matches_model(steps in prop::collection::vec((0u64..20_000, any_op()), 1..80)) {
        let mut tracker = PresenceTracker::new(config());
        let mut model = Model::default();
        let mut now = 1_000_000;
        for (dt, op) in steps {
            now += dt;
            // Phase 1: time passes.
            let before = model.online();
            model.expire(now);
            tracker.handle_timeout(t(now));
            check_transition(&before, &model.online(), &drain(&mut tracker))?;
            // Phase 2: the input.
            let before = model.online();
            match op {
                Op::Connect(i) => {
                    model.last_seen.insert(device_of(i), now);
                    tracker.handle_connect(t(now), device_of(i));
                }
                Op::Heartbeat(i) => {
                    model.last_seen.insert(device_of(i), now);
                    tracker.handle_heartbeat(t(now), device_of(i));
                }
                Op::Disconnect(i) => tracker.handle_disconnect(t(now), device_of(i)),
                Op::SignOut(i) => {
                    model.last_seen.remove(&device_of(i));
                    tracker.handle_sign_out(t(now), device_of(i));
                }
                Op::Tick => tracker.handle_timeout(t(now)),
            }
            check_transition(&before, &model.online(), &drain(&mut tracker))?;
            for user in [1, 2].map(|u| UserId::new(u).unwrap()) {
                prop_assert_eq!(tracker.is_online(user), model.online().contains(&user));
            }
            let next = model.last_seen.values().map(|s| s + WINDOW).min().map(t);
            prop_assert_eq!(tracker.poll_timeout(), next);
        }
    }

    /// Heartbeats with gaps below the window keep a device online without a single event;
    /// the first gap of exactly three intervals turns it offline, stamped with the last beat.
    #[test]
    fn offline_after_exactly_three_missed(gaps in prop::collection::vec(1u64..WINDOW, 0..30)) {
        let d = dev(1, 1);
        let mut tracker = PresenceTracker::new(config());
        let mut now = 0;
        tracker.handle_connect(t(now), d);
        prop_assert_eq!(drain(&mut tracker), vec![PresenceChange::Online { user: d.user, at: t(0) }]);
        for gap in gaps {
            now += gap;
            tracker.handle_heartbeat(t(now), d);
            prop_assert!(drain(&mut tracker).is_empty());
        }
        tracker.handle_timeout(t(now + WINDOW - 1));
        prop_assert!(drain(&mut tracker).is_empty());
        prop_assert_eq!(tracker.poll_timeout(), Some(t(now + WINDOW)));
        tracker.handle_timeout(t(now + WINDOW));
        prop_assert_eq!(
            drain(&mut tracker),
            vec![PresenceChange::Offline { user: d.user, last_active_at: t(now) }]
        );
        prop_assert!(!tracker.is_online(d.user));
    }

    /// Losing the connection and reconnecting inside the window emits no offline/online pair.
    #[test]
    fn quick_reconnect_does_not_flap(down in 0u64..WINDOW, up_after in 0u64..WINDOW) {
        let d = dev(1, 1);
        let mut tracker = PresenceTracker::new(config());
        tracker.handle_connect(t(0), d);
        drain(&mut tracker);
        tracker.handle_disconnect(t(down), d);
        let back = (down + up_after).min(WINDOW - 1);
        tracker.handle_connect(t(back), d);
        prop_assert!(drain(&mut tracker).is_empty());
        prop_assert!(tracker.is_online(d.user));
    }
}

#[test]
fn second_device_keeps_user_online() {
    let (a, b) = (dev(1, 1), dev(1, 2));
    let mut tracker = PresenceTracker::new(config());
    tracker.handle_connect(t(0), a);
    tracker.handle_connect(t(10_000), b);
    tracker.handle_timeout(t(WINDOW));
    assert_eq!(
        drain(&mut tracker),
        vec![PresenceChange::Online {
            user: a.user,
            at: t(0)
        }]
    );
    assert!(tracker.is_online(a.user));
    tracker.handle_sign_out(t(WINDOW + 1), b);
    assert_eq!(
        drain(&mut tracker),
        vec![PresenceChange::Offline {
            user: a.user,
            last_active_at: t(10_000)
        }]
    );
}
