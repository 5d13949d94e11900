//! Property tests of the server's delivery bookkeeping ([`DeliveryStream`]) against a model
//! inbox: whatever the bus loses, duplicates or delays, however trimming and `sync` requests
//! interleave, the client sees a gapless stream, every `sync_end` names what it has, and a
//! final `sync` brings it to the head.

use std::collections::{BTreeSet, VecDeque};

use chat_core::protocol::ResyncReason;
use chat_core::{Action, DeliveryStream, Entry, InboxPos, Live};
use proptest::prelude::*;

/// Entries per page read from the model store (small, so reads span pages).
const PAGE: usize = 3;

fn pos(n: u64) -> InboxPos {
    InboxPos::new(n).unwrap()
}

#[derive(Debug, Clone)]
enum Op {
    /// A message is appended; `published` says whether the bus carries it to the connection.
    Append { published: bool },
    /// The connection takes the next queued bus event.
    Deliver,
    /// The bus hands the connection an old position again.
    Duplicate(u64),
    /// The bus loses the next queued event.
    Lose,
    /// Retention raises the floor by `by` and deletes the positions below it picked by `mask`.
    Trim { by: u64, mask: u64 },
    /// The client asks for everything after `after` (`after` past the head included).
    Sync { after: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => any::<bool>().prop_map(|published| Op::Append { published }),
        4 => Just(Op::Deliver),
        1 => (0u64..40).prop_map(Op::Duplicate),
        1 => Just(Op::Lose),
        1 => (0u64..6, any::<u64>()).prop_map(|(by, mask)| Op::Trim { by, mask }),
        1 => (0u64..45).prop_map(|after| Op::Sync { after }),
    ]
}

/// The store, the bus queue of one connection, and what its client has seen.
struct World {
    head: u64,
    floor: u64,
    present: BTreeSet<u64>,
    queue: VecDeque<u64>,
    stream: DeliveryStream,
    /// The client's cursor: the last position it received.
    client: u64,
    /// The position the client asked to sync from, until its `sync_end`.
    syncing_from: Option<u64>,
}

impl World {
    fn new() -> Self {
        Self {
            head: 0,
            floor: 0,
            present: BTreeSet::new(),
            queue: VecDeque::new(),
            stream: DeliveryStream::new(),
            client: 0,
            syncing_from: None,
        }
    }

    fn receive(&mut self, p: u64) -> Result<(), TestCaseError> {
        prop_assert_eq!(p, self.client + 1, "the client saw a gap or a repeat");
        self.client = p;
        Ok(())
    }

    /// Carries out every queued action, as the gateway's driver does.
    fn drive(&mut self) -> Result<(), TestCaseError> {
        let mut steps = 0;
        while let Some(action) = self.stream.poll_action() {
            steps += 1;
            prop_assert!(steps < 1_000, "the stream loops");
            match action {
                Action::ReadFloor => self.stream.handle_floor(pos(self.floor)),
                Action::Read { after } => {
                    prop_assert_eq!(after.get(), self.client);
                    while let Some(p) = self.queue.pop_front() {
                        prop_assert_eq!(self.stream.handle_live(pos(p)), Live::Covered);
                    }
                    let page: Vec<u64> = self
                        .present
                        .range(after.get() + 1..)
                        .take(PAGE)
                        .copied()
                        .collect();
                    for &p in &page {
                        match self.stream.handle_entry(pos(p)) {
                            Entry::Send => self.receive(p)?,
                            Entry::Skip => {}
                            Entry::Stop => break,
                        }
                    }
                    self.stream.handle_page_end(page.len(), PAGE);
                }
                Action::Resync { reason, head } => {
                    match reason {
                        ResyncReason::CursorAhead => {
                            prop_assert!(self.client > self.head);
                            prop_assert_eq!(head.get(), self.head);
                        }
                        ResyncReason::InboxTrimmed => {
                            prop_assert!(self.client < self.floor);
                            prop_assert_eq!(head.get(), self.floor);
                        }
                        other => prop_assert!(false, "unexpected reason {:?}", other),
                    }
                    self.client = head.get();
                }
                Action::SyncEnd { head } => {
                    prop_assert!(self.syncing_from.take().is_some(), "sync_end unasked");
                    prop_assert_eq!(head.get(), self.client);
                }
            }
        }
        Ok(())
    }

    fn apply(&mut self, op: Op) -> Result<(), TestCaseError> {
        match op {
            Op::Append { published } => {
                self.head += 1;
                self.present.insert(self.head);
                if published {
                    self.queue.push_back(self.head);
                }
            }
            Op::Deliver => {
                if let Some(p) = self.queue.pop_front() {
                    match self.stream.handle_live(pos(p)) {
                        Live::Send => self.receive(p)?,
                        Live::Duplicate => prop_assert!(p <= self.client),
                        Live::Gap => prop_assert!(p > self.client + 1),
                        Live::Covered => prop_assert!(false, "covered while live"),
                    }
                }
            }
            Op::Duplicate(p) => {
                if (1..=self.head).contains(&p) {
                    self.queue.push_back(p);
                }
            }
            Op::Lose => {
                self.queue.pop_front();
            }
            Op::Trim { by, mask } => {
                self.floor = (self.floor + by).min(self.head);
                let floor = self.floor;
                // Trimming goes by time: it may leave entries below the floor, but it always
                // deletes the one at the floor (the floor is the highest position deleted).
                self.present
                    .retain(|&p| p > floor || (p < floor && mask & (1 << (p % 64)) != 0));
            }
            Op::Sync { after } => {
                self.client = after;
                self.syncing_from = Some(after);
                self.stream.handle_sync(pos(after), pos(self.head));
            }
        }
        self.drive()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// Any interleaving of appends, bus deliveries, losses and duplicates, trims and syncs:
    /// the client sees every position once and in order (or is told where it moved), and a
    /// final `sync` from its cursor brings it to the head.
    #[test]
    fn the_client_sees_a_gapless_stream(start in 0u64..5, ops in prop::collection::vec(op(), 0..120)) {
        let mut world = World::new();
        for _ in 0..start {
            world.apply(Op::Append { published: false })?;
        }
        world.apply(Op::Sync { after: 0 })?;
        for op in ops {
            world.apply(op)?;
        }
        let cursor = world.client;
        world.apply(Op::Sync { after: cursor })?;
        prop_assert!(world.syncing_from.is_none(), "the final sync never ended");
        prop_assert_eq!(world.client, world.head);
        prop_assert_eq!(world.stream.sent().get(), world.head);
    }
}
