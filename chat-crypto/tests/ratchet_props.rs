//! Property tests: the Double Ratchet as a state machine under loss, reordering, duplication,
//! tampering and restarts.

mod common;

use chat_crypto::{MAX_RECEIVER_CHAINS, Session, is_prekey_message};
use common::*;
use proptest::prelude::*;
use rand::rngs::StdRng;

#[derive(Debug, Clone)]
enum Op {
    /// A sends to B (true) or B to A (false).
    Send(bool),
    /// Deliver the in-flight message picked by the index (to its receiver).
    Deliver(bool, usize),
    /// Lose an in-flight message.
    Drop(bool, usize),
    /// Deliver an already delivered message again.
    Replay(bool, usize),
    /// Deliver a copy of an in-flight message with one byte flipped.
    Tamper(bool, usize, usize),
    /// Pickle and restore the receiver.
    Restart(bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => any::<bool>().prop_map(Op::Send),
        4 => (any::<bool>(), any::<usize>()).prop_map(|(d, i)| Op::Deliver(d, i)),
        1 => (any::<bool>(), any::<usize>()).prop_map(|(d, i)| Op::Drop(d, i)),
        1 => (any::<bool>(), any::<usize>()).prop_map(|(d, i)| Op::Replay(d, i)),
        1 => (any::<bool>(), any::<usize>(), any::<usize>()).prop_map(|(d, i, j)| Op::Tamper(d, i, j)),
        1 => any::<bool>().prop_map(Op::Restart),
    ]
}

struct Msg {
    header: Vec<u8>,
    body: Vec<u8>,
    plaintext: Vec<u8>,
}

/// The ratchet public key a header carries (test-only knowledge of the wire layout).
fn ratchet_key(header: &[u8]) -> Vec<u8> {
    let start = if is_prekey_message(header) {
        // version, kind, identity (64), signature (64), base key (32), signed prekey id (4),
        // one-time prekey flag (+ id).
        let flag = header[166];
        167 + if flag == 1 { 4 } else { 0 }
    } else {
        0
    };
    header[start + 2..start + 34].to_vec()
}

/// One direction: the receiver's view of the sender's chains.
#[derive(Default)]
struct Lane {
    in_flight: Vec<Msg>,
    delivered: Vec<Msg>,
    /// Distinct ratchet keys the receiver decrypted with, most recent last.
    chains: Vec<Vec<u8>>,
}

impl Lane {
    fn expect_ok(&self, m: &Msg) -> bool {
        let k = ratchet_key(&m.header);
        match self.chains.iter().rposition(|c| *c == k) {
            None => true,
            Some(pos) => self.chains.len() - pos <= MAX_RECEIVER_CHAINS,
        }
    }

    fn opened(&mut self, m: &Msg) {
        let k = ratchet_key(&m.header);
        if !self.chains.contains(&k) {
            self.chains.push(k);
        }
    }
}

fn run(ops: Vec<Op>, seed: u64) {
    let mut rng: StdRng = rng(seed);
    let p = pair(&mut rng);
    let (mut alice, mut bob) = (p.alice, p.bob);
    // lanes[0]: A -> B, lanes[1]: B -> A.
    let mut lanes = [Lane::default(), Lane::default()];
    let mut counter = 0u32;
    for op in ops {
        match op {
            Op::Send(a_to_b) => {
                counter += 1;
                let plaintext = counter.to_be_bytes().to_vec();
                let sender = if a_to_b { &mut alice } else { &mut bob };
                let (header, body) = send(&mut rng, sender, &plaintext);
                lanes[usize::from(!a_to_b)].in_flight.push(Msg {
                    header,
                    body,
                    plaintext,
                });
            }
            Op::Deliver(a_to_b, _) | Op::Drop(a_to_b, _) | Op::Tamper(a_to_b, _, _)
                if lanes[usize::from(!a_to_b)].in_flight.is_empty() => {}
            Op::Deliver(a_to_b, i) => {
                let lane = &mut lanes[usize::from(!a_to_b)];
                let m = lane.in_flight.remove(i % lane.in_flight.len());
                let receiver: &mut Session = if a_to_b { &mut bob } else { &mut alice };
                let before = receiver.pickle();
                let result = receiver.decrypt(&m.header, &m.body);
                if lane.expect_ok(&m) {
                    assert_eq!(text(result.unwrap()), m.plaintext);
                    lane.opened(&m);
                } else {
                    assert!(result.is_err());
                    assert_eq!(*receiver.pickle(), *before);
                }
                lane.delivered.push(m);
            }
            Op::Drop(a_to_b, i) => {
                let lane = &mut lanes[usize::from(!a_to_b)];
                lane.in_flight.remove(i % lane.in_flight.len());
            }
            Op::Replay(a_to_b, i) => {
                let lane = &lanes[usize::from(!a_to_b)];
                if lane.delivered.is_empty() {
                    continue;
                }
                let m = &lane.delivered[i % lane.delivered.len()];
                let receiver: &mut Session = if a_to_b { &mut bob } else { &mut alice };
                let before = receiver.pickle();
                assert!(receiver.decrypt(&m.header, &m.body).is_err());
                assert_eq!(*receiver.pickle(), *before);
            }
            Op::Tamper(a_to_b, i, j) => {
                let lane = &lanes[usize::from(!a_to_b)];
                let m = &lane.in_flight[i % lane.in_flight.len()];
                let (mut header, mut body) = (m.header.clone(), m.body.clone());
                let j = j % (header.len() + body.len());
                if j < header.len() {
                    header[j] ^= 0x20;
                } else {
                    body[j - header.len()] ^= 0x20;
                }
                let receiver: &mut Session = if a_to_b { &mut bob } else { &mut alice };
                let before = receiver.pickle();
                assert!(receiver.decrypt(&header, &body).is_err());
                assert_eq!(*receiver.pickle(), *before);
            }
            Op::Restart(a) => {
                let s = if a { &mut alice } else { &mut bob };
                *s = Session::from_pickle(&s.pickle()).unwrap();
            }
        }
    }
    // Everything still in flight and within the caps opens, exactly once.
    for (lane, to_bob) in lanes.iter_mut().zip([true, false]) {
        let receiver: &mut Session = if to_bob { &mut bob } else { &mut alice };
        for m in std::mem::take(&mut lane.in_flight) {
            let ok = lane.expect_ok(&m);
            let result = receiver.decrypt(&m.header, &m.body);
            if ok {
                assert_eq!(text(result.unwrap()), m.plaintext);
                lane.opened(&m);
                assert!(receiver.decrypt(&m.header, &m.body).is_err());
            } else {
                assert!(result.is_err());
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn every_delivered_message_opens_exactly_once(
        ops in prop::collection::vec(op(), 1..70),
        seed in any::<u64>(),
    ) {
        run(ops, seed);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Decoders never panic on arbitrary bytes, and nothing opens.
    #[test]
    fn decoders_refuse_garbage_without_panicking(
        header in prop::collection::vec(any::<u8>(), 0..400),
        body in prop::collection::vec(any::<u8>(), 0..200),
        kind in 0u8..4,
    ) {
        let mut header = header;
        if kind < 3 && header.len() > 2 {
            // Make most inputs look like our messages so parsing goes deep.
            header[0] = 1;
            header[1] = kind;
        }
        let _ = Session::from_pickle(&header);
        let _ = chat_crypto::Account::from_pickle(&header);
        let _ = chat_crypto::PrekeyBundle::from_bytes(&header);
        let _ = chat_crypto::attachment::AttachmentPointer::from_bytes(&header);
        let _ = chat_crypto::SenderKey::from_pickle(&header);
        let _ = chat_crypto::SenderKeyReceiver::from_pickle(&header);
        let _ = chat_crypto::OutgoingMessage::from_pickle(&header);
        let _ = chat_crypto::DeviceSessions::from_pickle(&header);
        let mut sealed = header.clone();
        if let Some(first) = sealed.first_mut() {
            *first = 0xC1;
        }
        let _ = chat_crypto::MessageBinding::open(
            &sealed,
            chat_crypto::ConversationKind::Direct,
            u64::from(kind),
            [kind; 16],
        );
        let mut rng = rng(7);
        let mut p = pair(&mut rng);
        prop_assert!(p.bob.decrypt(&header, &body).is_err());
        let mut acct = chat_crypto::Account::new(&mut rng);
        prop_assert!(Session::accept(&mut acct, BOB, ALICE, &header, &body).is_err());
    }
}

/// Per device, the (header, body, plaintext) of the messages on their way to it, in order.
type Queues = [Vec<(Vec<u8>, Vec<u8>, Vec<u8>)>; 2];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    /// Both devices start a session at the same time, then exchange messages in any
    /// interleaving (each direction in order): every message opens exactly once, and after one
    /// exchange that does not cross, both send on the same session.
    #[test]
    fn simultaneous_initiation_converges(
        ops in prop::collection::vec((any::<bool>(), any::<bool>()), 0..24),
        seed in any::<u64>(),
    ) {
        use chat_crypto::{Account, DeviceSessions};
        let mut rng = rng(seed);
        let mut accts = [Account::new(&mut rng), Account::new(&mut rng)];
        let addrs = [ALICE, BOB];
        let mut sets = [DeviceSessions::new(), DeviceSessions::new()];
        for me in 0..2 {
            let bundle = accts[1 - me].bundle(None).unwrap();
            let s = Session::initiate(&mut rng, &accts[me], addrs[me], addrs[1 - me], &bundle).unwrap();
            sets[me].add(s).unwrap();
        }
        // queues[i]: messages to device i, in order.
        let mut queues: Queues = [Vec::new(), Vec::new()];
        let mut n = 0u32;
        let mut step = |sets: &mut [DeviceSessions; 2],
                        accts: &mut [Account; 2],
                        queues: &mut Queues,
                        from: usize,
                        deliver: bool,
                        rng: &mut StdRng| {
            if deliver {
                let to = 1 - from;
                if !queues[to].is_empty() {
                    let (h, b, p) = queues[to].remove(0);
                    let d = sets[to].decrypt(&mut accts[to], addrs[to], addrs[from], &h, &b).unwrap();
                    assert_eq!(text(d), p);
                    assert!(sets[to].decrypt(&mut accts[to], addrs[to], addrs[from], &h, &b).is_err());
                }
            } else {
                n += 1;
                let p = n.to_be_bytes().to_vec();
                let (h, b) = send(rng, sets[from].active().unwrap(), &p);
                queues[1 - from].push((h, b, p));
            }
        };
        // Both first messages cross.
        step(&mut sets, &mut accts, &mut queues, 0, false, &mut rng);
        step(&mut sets, &mut accts, &mut queues, 1, false, &mut rng);
        for (a_acts, deliver) in ops {
            step(&mut sets, &mut accts, &mut queues, usize::from(!a_acts), deliver, &mut rng);
        }
        // Drain, then one exchange that does not cross.
        while !queues[0].is_empty() || !queues[1].is_empty() {
            step(&mut sets, &mut accts, &mut queues, 1, true, &mut rng);
            step(&mut sets, &mut accts, &mut queues, 0, true, &mut rng);
        }
        for from in [0, 1] {
            step(&mut sets, &mut accts, &mut queues, from, false, &mut rng);
            step(&mut sets, &mut accts, &mut queues, from, true, &mut rng);
        }
        let [a, b] = &mut sets;
        prop_assert_eq!(a.active().unwrap().id(), b.active().unwrap().id());
    }
}
