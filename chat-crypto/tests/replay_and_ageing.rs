//! Replays of first messages sent without a one-time prekey, and the age limit of skipped
//! message keys and old receiving chains (issue 16, item 5).

mod common;

use chat_crypto::{
    Account, DeviceSessions, Error, MAX_SESSIONS_PER_DEVICE, MAX_SKIPPED_KEY_AGE, Session,
    encrypt_for_devices,
};
use common::*;
use proptest::prelude::*;
use rand::rngs::StdRng;

/// A first message from a fresh Alice session started from Bob's bundle without a one-time
/// prekey (the server handed out none).
fn first_without_otk(
    rng: &mut StdRng,
    alice: &Account,
    bob: &Account,
    text: &[u8],
) -> (Session, (Vec<u8>, Vec<u8>)) {
    let bundle = bob.bundle(None).unwrap();
    let mut s = Session::initiate(rng, alice, ALICE, BOB, &bundle).unwrap();
    let m = send(rng, &mut s, text);
    (s, m)
}

#[test]
fn a_first_message_without_one_time_prekey_is_refused_after_its_session_was_evicted() {
    let mut rng = rng(1);
    let alice = Account::new(&mut rng);
    let mut bob = Account::new(&mut rng);
    let (_, (h, b)) = first_without_otk(&mut rng, &alice, &bob, b"once");
    let mut sessions = DeviceSessions::new();
    assert_eq!(
        text(sessions.decrypt(&mut bob, BOB, ALICE, &h, &b).unwrap()),
        b"once"
    );
    // Held: the session itself refuses the copy.
    assert_eq!(
        sessions.decrypt(&mut bob, BOB, ALICE, &h, &b).unwrap_err(),
        Error::DuplicateMessage
    );
    // Evicted (or lost with the device's session store): the account still refuses it, also
    // after a restart.
    sessions.clear();
    let mut bob = Account::from_pickle(&bob.pickle()).unwrap();
    assert_eq!(
        sessions.decrypt(&mut bob, BOB, ALICE, &h, &b).unwrap_err(),
        Error::ReplayedPrekeyMessage
    );
    assert!(sessions.is_empty());
    // Once its signed prekey is gone, such a message cannot open anyway and its entry goes.
    for _ in 0..3 {
        bob.rotate_signed_prekey(&mut rng);
    }
    assert_eq!(bob.replay_cache_len(), 0);
    assert_eq!(
        sessions.decrypt(&mut bob, BOB, ALICE, &h, &b).unwrap_err(),
        Error::UnknownSignedPrekey
    );
}

#[test]
fn a_replayed_first_message_never_displaces_a_session_with_replies() {
    let mut rng = rng(2);
    let mut p = pair(&mut rng);
    // Bob answers and Alice answers that: both sides' session is confirmed.
    let (h, b) = send(&mut rng, &mut p.bob, b"reply");
    text(p.alice.decrypt(&h, &b).unwrap());
    let (h, b) = send(&mut rng, &mut p.alice, b"again");
    text(p.bob.decrypt(&h, &b).unwrap());
    assert!(p.alice.is_confirmed() && p.bob.is_confirmed());
    let confirmed = p.bob.id();
    let mut sessions = DeviceSessions::new();
    sessions.add(p.bob).unwrap();

    // An old first message of another Alice session, made without a one-time prekey: it is
    // accepted (it may be genuine) but does not become the session Bob sends on.
    let (_, (h, b)) = first_without_otk(&mut rng, &p.alice_account, &p.bob_account, b"old");
    text(
        sessions
            .decrypt(&mut p.bob_account, BOB, ALICE, &h, &b)
            .unwrap(),
    );
    assert_eq!(sessions.active().unwrap().id(), confirmed);
    // Nor when a later message of that session arrives.
    let (mut s2, (h, b)) = first_without_otk(&mut rng, &p.alice_account, &p.bob_account, b"2");
    text(
        sessions
            .decrypt(&mut p.bob_account, BOB, ALICE, &h, &b)
            .unwrap(),
    );
    let (h, b) = send(&mut rng, &mut s2, b"3");
    text(
        sessions
            .decrypt(&mut p.bob_account, BOB, ALICE, &h, &b)
            .unwrap(),
    );
    assert_eq!(sessions.active().unwrap().id(), confirmed);
    // A new session that used a one-time prekey still takes over, as before.
    let otk = p.bob_account.generate_one_time_prekeys(&mut rng, 1);
    let bundle = p.bob_account.bundle(otk.first().copied()).unwrap();
    let mut s3 = Session::initiate(&mut rng, &p.alice_account, ALICE, BOB, &bundle).unwrap();
    let (h, b) = send(&mut rng, &mut s3, b"fresh");
    text(
        sessions
            .decrypt(&mut p.bob_account, BOB, ALICE, &h, &b)
            .unwrap(),
    );
    assert_eq!(sessions.active().unwrap().id(), s3.id());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Any order of deliveries and replays of first messages without a one-time prekey, with
    /// evictions and restarts in between: every message opens exactly once, and a session
    /// the peer confirmed stays the one Bob sends on.
    #[test]
    fn first_messages_without_one_time_prekey_open_exactly_once(
        seed in any::<u64>(),
        ops in proptest::collection::vec((0usize..7, 0u8..8), 1..40),
    ) {
        let mut rng = rng(seed);
        let mut p = pair(&mut rng);
        let (h, b) = send(&mut rng, &mut p.bob, b"reply");
        text(p.alice.decrypt(&h, &b).unwrap());
        let (h, b) = send(&mut rng, &mut p.alice, b"again");
        text(p.bob.decrypt(&h, &b).unwrap());
        let confirmed = p.bob.id();
        let mut sessions = DeviceSessions::new();
        sessions.add(p.bob).unwrap();
        let firsts: Vec<_> = (0..7)
            .map(|i| {
                first_without_otk(&mut rng, &p.alice_account, &p.bob_account, &[i as u8]).1
            })
            .collect();
        let mut opened = [false; 7];
        let mut cleared = false;
        let mut bob = p.bob_account;
        for (i, action) in ops {
            match action {
                // Restart: pickle and restore both.
                0 => {
                    bob = Account::from_pickle(&bob.pickle()).unwrap();
                    sessions = DeviceSessions::from_pickle(&sessions.pickle()).unwrap();
                }
                // The device lost its sessions with Alice (eviction taken to the end).
                1 if sessions.len() == MAX_SESSIONS_PER_DEVICE => {
                    sessions.clear();
                    cleared = true;
                }
                _ => {
                    let (h, b) = &firsts[i];
                    let r = sessions.decrypt(&mut bob, BOB, ALICE, h, b);
                    if opened[i] {
                        prop_assert!(
                            matches!(
                                r,
                                Err(Error::DuplicateMessage | Error::ReplayedPrekeyMessage)
                            ),
                            "replay of {i} gave {r:?}"
                        );
                    } else {
                        prop_assert_eq!(text(r.unwrap()), vec![i as u8]);
                        opened[i] = true;
                    }
                }
            }
            if !cleared {
                // Until the sessions were cleared, the confirmed one stays active.
                prop_assert_eq!(sessions.active().map(|s| s.id()), Some(confirmed));
            }
        }
    }
}

/// Alice sends `n` messages; returns them in order.
fn burst(rng: &mut StdRng, from: &mut Session, n: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    (0..n)
        .map(|i| send(rng, from, &(i as u32).to_be_bytes()))
        .collect()
}

#[test]
fn skipped_keys_expire_after_max_age_later_messages() {
    let mut rng = rng(3);
    let mut p = pair(&mut rng);
    let lost = burst(&mut rng, &mut p.alice, 3);
    let age = MAX_SKIPPED_KEY_AGE as usize;
    // The next message skips the three lost ones; then age - 1 more arrive.
    for (h, b) in burst(&mut rng, &mut p.alice, age) {
        text(p.bob.decrypt(&h, &b).unwrap());
    }
    // After the skip, age - 1 later messages: the oldest lost one still opens.
    assert_eq!(p.bob.skipped_key_count(), 3);
    text(p.bob.decrypt(&lost[0].0, &lost[0].1).unwrap());
    // That decryption was a later message too: the other two keys are now too old.
    assert_eq!(p.bob.skipped_key_count(), 0);
    assert_eq!(
        p.bob.decrypt(&lost[1].0, &lost[1].1).unwrap_err(),
        Error::DuplicateMessage
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// A lost message still opens while fewer than MAX_SKIPPED_KEY_AGE messages were
    /// decrypted on the session since its key was skipped, and never after; old receiving
    /// chains go the same way; memory stays within the caps.
    #[test]
    fn skipped_key_ageing(
        seed in any::<u64>(),
        lost in 1usize..6,
        later in prop_oneof![0usize..20, (MAX_SKIPPED_KEY_AGE as usize - 3)..(MAX_SKIPPED_KEY_AGE as usize + 3)],
        ratchet_between in any::<bool>(),
        pickle_between in any::<bool>(),
    ) {
        let mut rng = rng(seed);
        let mut p = pair(&mut rng);
        let held_back = burst(&mut rng, &mut p.alice, lost);
        // The message after them: Bob skips `lost` keys while decrypting it.
        let (h, b) = send(&mut rng, &mut p.alice, b"skip");
        text(p.bob.decrypt(&h, &b).unwrap());
        let mut decrypted_since = 0usize;
        if ratchet_between {
            // A round trip: Alice's next messages are on a new chain, the lost ones on an
            // old chain of Bob's.
            let (h, b) = send(&mut rng, &mut p.bob, b"turn");
            text(p.alice.decrypt(&h, &b).unwrap());
        }
        for (h, b) in burst(&mut rng, &mut p.alice, later) {
            text(p.bob.decrypt(&h, &b).unwrap());
            decrypted_since += 1;
            prop_assert!(p.bob.receiving_chain_count() <= chat_crypto::MAX_RECEIVER_CHAINS);
        }
        if pickle_between {
            p.bob = Session::from_pickle(&p.bob.pickle()).unwrap();
        }
        let (h, b) = &held_back[0];
        let r = p.bob.decrypt(h, b);
        if (decrypted_since as u64) < MAX_SKIPPED_KEY_AGE {
            prop_assert_eq!(text(r.unwrap()), 0u32.to_be_bytes().to_vec());
        } else {
            prop_assert!(r.is_err(), "a key {decrypted_since} messages old still opened");
            prop_assert_eq!(p.bob.skipped_key_count(), 0);
            if ratchet_between {
                // The old chain itself was dropped.
                prop_assert_eq!(p.bob.receiving_chain_count(), 1);
            }
        }
    }
}

#[test]
fn a_session_pickled_by_version_1_still_loads() {
    // The layout of version 1 (no confirmation, origin, counter or stamps): a version 2
    // pickle with those fields taken out.
    let mut rng = rng(4);
    let mut p = pair(&mut rng);
    let m = encrypt_for_devices(&mut rng, b"x", [&mut p.alice]).unwrap();
    text(p.bob.decrypt(&m.headers[0].1, &m.body).unwrap());
    let v2 = p.bob.pickle();
    // Bob: one receiving chain with no skipped keys, no pending prekey.
    let tail = 1 + 1 + 8; // confirmed, origin, received
    let mut v1 = v2[..v2.len() - tail].to_vec();
    v1[1] = 1;
    // Remove the chain's `used_at` (u64) after ratchet (32), key (32), index (4).
    let chains_at = v1.len() - (1 + 4 + 8 + 32 + 32 + 4 + 4);
    let used_at = chains_at + 4 + 32 + 32 + 4;
    v1.drain(used_at..used_at + 8);
    let mut back = Session::from_pickle(&v1).unwrap();
    assert_eq!(back.id(), p.bob.id());
    let m = encrypt_for_devices(&mut rng, b"y", [&mut p.alice]).unwrap();
    assert_eq!(text(back.decrypt(&m.headers[0].1, &m.body).unwrap()), b"y");
}

#[test]
fn group_skipped_keys_expire_after_max_age_later_messages() {
    use chat_crypto::{SenderKey, SenderKeyReceiver};
    let mut rng = rng(5);
    let mut key = SenderKey::new(&mut rng, b"group", ALICE).unwrap();
    let mut receiver = SenderKeyReceiver::new(ALICE, &key.distribution());
    let lost: Vec<_> = (0..3)
        .map(|i| key.encrypt(&mut rng, &[i]).unwrap())
        .collect();
    for i in 0..MAX_SKIPPED_KEY_AGE {
        let body = key.encrypt(&mut rng, &i.to_be_bytes()).unwrap();
        receiver.decrypt(&body).unwrap();
    }
    // Kept across a restart, with their ages.
    let mut receiver = SenderKeyReceiver::from_pickle(&receiver.pickle()).unwrap();
    assert_eq!(receiver.decrypt(&lost[0]).unwrap(), [0]);
    assert_eq!(
        receiver.decrypt(&lost[1]).unwrap_err(),
        Error::DuplicateMessage
    );
}
