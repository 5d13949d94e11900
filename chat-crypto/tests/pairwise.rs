//! One-to-one sessions: X3DH, the Double Ratchet, the envelope shape, tampering and caps.

mod common;

use chat_crypto::{
    Account, BODY_OVERHEAD_MAX, DeviceAddress, Error, MAX_DEVICE_HEADER_BYTES, MAX_FORWARD_JUMP,
    MAX_SKIPPED_TOTAL, OutgoingMessage, PAIRWISE_BODY_OVERHEAD, Session, encrypt_for_devices,
    is_prekey_message,
};
use common::*;

#[test]
fn conversation_in_both_directions() {
    let mut rng = rng(1);
    let mut p = pair(&mut rng);
    for i in 0..5u8 {
        let (h, b) = send(&mut rng, &mut p.bob, &[i; 10]);
        assert!(!is_prekey_message(&h));
        assert_eq!(text(p.alice.decrypt(&h, &b).unwrap()), [i; 10]);
        assert!(!p.alice.is_pending());
        let (h, b) = send(&mut rng, &mut p.alice, &[i; 3]);
        assert!(!is_prekey_message(&h));
        assert_eq!(text(p.bob.decrypt(&h, &b).unwrap()), [i; 3]);
    }
    assert_eq!(p.alice.id(), p.bob.id());
    assert_eq!(p.bob.their_identity(), p.alice_account.identity().public());
}

#[test]
fn prekey_messages_until_the_first_reply() {
    let mut rng = rng(2);
    let mut p = pair(&mut rng);
    let (h1, b1) = send(&mut rng, &mut p.alice, b"second");
    let (h2, b2) = send(&mut rng, &mut p.alice, b"third");
    assert!(is_prekey_message(&h1) && is_prekey_message(&h2));
    // Later prekey messages of the same session open on the accepted session, in any order.
    assert_eq!(text(p.bob.decrypt(&h2, &b2).unwrap()), b"third");
    assert_eq!(text(p.bob.decrypt(&h1, &b1).unwrap()), b"second");
    let (h, b) = send(&mut rng, &mut p.bob, b"reply");
    p.alice.decrypt(&h, &b).unwrap();
    let (h, _) = send(&mut rng, &mut p.alice, b"after");
    assert!(!is_prekey_message(&h));
}

#[test]
fn one_time_prekey_is_consumed_and_a_replayed_first_message_is_refused() {
    let mut rng = rng(3);
    let alice_account = Account::new(&mut rng);
    let mut bob_account = Account::new(&mut rng);
    let otk = bob_account.generate_one_time_prekeys(&mut rng, 2);
    let bundle = bob_account.bundle(Some(otk[0])).unwrap();
    let mut alice = Session::initiate(&mut rng, &alice_account, ALICE, BOB, &bundle).unwrap();
    let (h, b) = send(&mut rng, &mut alice, b"hi");
    let (mut bob, _) = Session::accept(&mut bob_account, BOB, ALICE, &h, &b).unwrap();
    assert_eq!(bob_account.one_time_prekey_count(), 1);
    assert_eq!(
        Session::accept(&mut bob_account, BOB, ALICE, &h, &b).unwrap_err(),
        Error::UnknownOneTimePrekey
    );
    assert_eq!(bob.decrypt(&h, &b).unwrap_err(), Error::DuplicateMessage);
}

#[test]
fn failed_accept_consumes_nothing() {
    let mut rng = rng(4);
    let alice_account = Account::new(&mut rng);
    let mut bob_account = Account::new(&mut rng);
    let otk = bob_account.generate_one_time_prekeys(&mut rng, 1);
    let bundle = bob_account.bundle(Some(otk[0])).unwrap();
    let mut alice = Session::initiate(&mut rng, &alice_account, ALICE, BOB, &bundle).unwrap();
    let (h, b) = send(&mut rng, &mut alice, b"hi");
    let before = bob_account.pickle();
    let mut bad = b.clone();
    *bad.last_mut().unwrap() ^= 1;
    assert!(Session::accept(&mut bob_account, BOB, ALICE, &h, &bad).is_err());
    assert_eq!(*bob_account.pickle(), *before);
    Session::accept(&mut bob_account, BOB, ALICE, &h, &b).unwrap();
}

#[test]
fn bundle_without_one_time_prekey_works() {
    let mut rng = rng(5);
    let alice_account = Account::new(&mut rng);
    let mut bob_account = Account::new(&mut rng);
    let bundle = bob_account.bundle(None).unwrap();
    let mut alice = Session::initiate(&mut rng, &alice_account, ALICE, BOB, &bundle).unwrap();
    let (h, b) = send(&mut rng, &mut alice, b"hi");
    let (_, d) = Session::accept(&mut bob_account, BOB, ALICE, &h, &b).unwrap();
    assert_eq!(text(d), b"hi");
}

#[test]
fn a_bad_bundle_is_refused() {
    let mut rng = rng(6);
    let alice_account = Account::new(&mut rng);
    let bob_account = Account::new(&mut rng);
    let mut bundle = bob_account.bundle(None).unwrap();
    bundle.signed_prekey.key[3] ^= 1;
    assert_eq!(
        Session::initiate(&mut rng, &alice_account, ALICE, BOB, &bundle).unwrap_err(),
        Error::BadSignature
    );
}

#[test]
fn signed_prekey_rotation_keeps_in_flight_messages() {
    let mut rng = rng(7);
    let alice_account = Account::new(&mut rng);
    let mut bob_account = Account::new(&mut rng);
    let bundle = bob_account.bundle(None).unwrap();
    let mut alice = Session::initiate(&mut rng, &alice_account, ALICE, BOB, &bundle).unwrap();
    let (h, b) = send(&mut rng, &mut alice, b"hi");
    bob_account.rotate_signed_prekey(&mut rng);
    bob_account.rotate_signed_prekey(&mut rng);
    Session::accept(&mut bob_account, BOB, ALICE, &h, &b).unwrap();
    bob_account.rotate_signed_prekey(&mut rng);
    assert_eq!(
        Session::accept(&mut bob_account, BOB, ALICE, &h, &b).unwrap_err(),
        Error::UnknownSignedPrekey
    );
}

#[test]
fn out_of_order_and_duplicates() {
    let mut rng = rng(8);
    let mut p = pair(&mut rng);
    let (h, b) = send(&mut rng, &mut p.bob, b"x");
    p.alice.decrypt(&h, &b).unwrap();
    let msgs: Vec<_> = (0..10u8)
        .map(|i| send(&mut rng, &mut p.alice, &[i]))
        .collect();
    for i in [9usize, 0, 5, 3, 1, 2, 4, 8, 6, 7] {
        let (h, b) = &msgs[i];
        assert_eq!(text(p.bob.decrypt(h, b).unwrap()), [i as u8]);
        assert_eq!(p.bob.decrypt(h, b).unwrap_err(), Error::DuplicateMessage);
    }
    assert_eq!(p.bob.skipped_key_count(), 0);
}

#[test]
fn tampering_with_any_byte_is_rejected_and_changes_nothing() {
    let mut rng = rng(9);
    let mut p = pair(&mut rng);
    let (h, b) = send(&mut rng, &mut p.bob, b"x");
    p.alice.decrypt(&h, &b).unwrap();
    for prekey in [false, true] {
        let mut fresh;
        let (sender, receiver) = if prekey {
            // A prekey message: Alice's session before any reply.
            fresh = pair(&mut rng);
            (&mut fresh.alice, &mut fresh.bob)
        } else {
            (&mut p.alice, &mut p.bob)
        };
        let (h, b) = send(&mut rng, sender, b"tamper with me");
        let before = receiver.pickle();
        for i in 0..h.len() {
            let mut bad = h.clone();
            bad[i] ^= 0x01;
            assert!(receiver.decrypt(&bad, &b).is_err(), "header byte {i}");
            assert_eq!(*receiver.pickle(), *before);
        }
        for i in 0..b.len() {
            let mut bad = b.clone();
            bad[i] ^= 0x80;
            assert!(receiver.decrypt(&h, &bad).is_err(), "body byte {i}");
            assert_eq!(*receiver.pickle(), *before);
        }
        assert!(receiver.decrypt(&h[..h.len() - 1], &b).is_err());
        assert!(receiver.decrypt(&h, &b[..b.len() - 1]).is_err());
        assert_eq!(*receiver.pickle(), *before);
        assert_eq!(text(receiver.decrypt(&h, &b).unwrap()), b"tamper with me");
    }
}

#[test]
fn a_swapped_body_is_detected() {
    let mut rng = rng(10);
    let mut p = pair(&mut rng);
    let (h1, _b1) = send(&mut rng, &mut p.alice, b"one");
    let (_h2, b2) = send(&mut rng, &mut p.alice, b"two");
    assert_eq!(p.bob.decrypt(&h1, &b2).unwrap_err(), Error::BodyMismatch);
}

#[test]
fn message_for_another_device_is_rejected() {
    let mut rng = rng(11);
    let mut p = pair(&mut rng);
    let mut q = pair(&mut rng);
    let (h, b) = send(&mut rng, &mut p.alice, b"for bob in p");
    let before = q.bob.pickle();
    assert!(q.bob.decrypt(&h, &b).is_err());
    assert_eq!(*q.bob.pickle(), *before);
}

#[test]
fn pickled_sessions_continue() {
    let mut rng = rng(12);
    let mut p = pair(&mut rng);
    let skipped = send(&mut rng, &mut p.alice, b"skipped");
    let (h, b) = send(&mut rng, &mut p.alice, b"m");
    p.bob.decrypt(&h, &b).unwrap();
    let mut alice = Session::from_pickle(&p.alice.pickle()).unwrap();
    let mut bob = Session::from_pickle(&p.bob.pickle()).unwrap();
    assert_eq!(*bob.pickle(), *p.bob.pickle());
    assert_eq!(
        text(bob.decrypt(&skipped.0, &skipped.1).unwrap()),
        b"skipped"
    );
    let (h, b) = send(&mut rng, &mut bob, b"back");
    assert_eq!(text(alice.decrypt(&h, &b).unwrap()), b"back");
    let (h, b) = send(&mut rng, &mut alice, b"again");
    assert_eq!(text(bob.decrypt(&h, &b).unwrap()), b"again");
    let account = Account::from_pickle(&p.bob_account.pickle()).unwrap();
    assert_eq!(
        account.identity().public(),
        p.bob_account.identity().public()
    );
}

#[test]
fn unknown_pickle_versions_and_garbage_are_refused() {
    let mut rng = rng(13);
    let p = pair(&mut rng);
    let mut bytes = p.alice.pickle().to_vec();
    bytes[1] = 9;
    assert_eq!(
        Session::from_pickle(&bytes).unwrap_err(),
        Error::UnsupportedVersion(9)
    );
    let good = p.alice.pickle();
    for cut in 0..good.len() {
        assert!(Session::from_pickle(&good[..cut]).is_err());
    }
    assert!(Session::from_pickle(&[good.as_slice(), &[0]].concat()).is_err());
}

#[test]
fn debug_output_has_no_secrets() {
    let mut rng = rng(14);
    let p = pair(&mut rng);
    let dbg = format!(
        "{:?} {:?} {:?}",
        p.alice,
        p.bob_account,
        p.bob_account.identity()
    );
    let pickle = p.alice.pickle();
    // The root key sits right after the addresses, identities and base key.
    let root = &pickle[2 + 32 + 128 + 32..2 + 32 + 128 + 64];
    assert!(!dbg.contains(&hex::encode(root)));
    assert!(!dbg.contains(&hex::encode(&root[..4])));
}

#[test]
fn a_jump_past_the_cap_errors_and_memory_stays_bounded() {
    let mut rng = rng(15);
    let mut p = pair(&mut rng);
    let (h, b) = send(&mut rng, &mut p.bob, b"x");
    p.alice.decrypt(&h, &b).unwrap();
    for _ in 0..MAX_FORWARD_JUMP {
        send(&mut rng, &mut p.alice, b"lost");
    }
    let (h, b) = send(&mut rng, &mut p.alice, b"at the cap");
    assert_eq!(text(p.bob.decrypt(&h, &b).unwrap()), b"at the cap");
    assert_eq!(p.bob.skipped_key_count(), MAX_FORWARD_JUMP as usize);
    for _ in 0..=MAX_FORWARD_JUMP {
        send(&mut rng, &mut p.alice, b"lost");
    }
    let (h, b) = send(&mut rng, &mut p.alice, b"past the cap");
    let before = p.bob.pickle();
    assert_eq!(
        p.bob.decrypt(&h, &b).unwrap_err(),
        Error::TooFarAhead {
            jump: MAX_FORWARD_JUMP + 1,
            max: MAX_FORWARD_JUMP
        }
    );
    assert_eq!(*p.bob.pickle(), *before);
    // Many new chains, each with the largest jump: the total stays capped, and the lost tail of
    // the old chain (longer than the cap) does not wedge the session.
    for _ in 0..3 {
        let (h, b) = send(&mut rng, &mut p.bob, b"ping");
        p.alice.decrypt(&h, &b).unwrap();
        for _ in 0..MAX_FORWARD_JUMP {
            send(&mut rng, &mut p.alice, b"lost");
        }
        let (h, b) = send(&mut rng, &mut p.alice, b"pong");
        p.bob.decrypt(&h, &b).unwrap();
        assert!(p.bob.skipped_key_count() <= MAX_SKIPPED_TOTAL);
    }
    assert_eq!(p.bob.skipped_key_count(), MAX_SKIPPED_TOTAL);
}

#[test]
fn sizes_respect_the_server_limits() {
    let mut rng = rng(16);
    let alice_account = Account::new(&mut rng);
    let mut bob_account = Account::new(&mut rng);
    let otk = bob_account.generate_one_time_prekeys(&mut rng, 1);
    let bundle = bob_account.bundle(Some(otk[0])).unwrap();
    let mut alice = Session::initiate(&mut rng, &alice_account, ALICE, BOB, &bundle).unwrap();
    let text = "é".repeat(100_000);
    let m = encrypt_for_devices(&mut rng, text.as_bytes(), [&mut alice]).unwrap();
    // The largest header: a prekey message with a one-time prekey.
    assert!(m.headers[0].1.len() <= MAX_DEVICE_HEADER_BYTES);
    assert_eq!(m.body.len() - text.len(), PAIRWISE_BODY_OVERHEAD);
    const { assert!(PAIRWISE_BODY_OVERHEAD <= BODY_OVERHEAD_MAX) };
}

#[test]
fn several_devices_and_a_device_list_mismatch() {
    let mut rng = rng(17);
    let me = Account::new(&mut rng);
    let mut accounts: Vec<(DeviceAddress, Account)> = [(2, 1), (2, 2), (1, 2)]
        .into_iter()
        .map(|(u, d)| (DeviceAddress::new(u, d), Account::new(&mut rng)))
        .collect();
    let mut sessions: Vec<Session> = accounts
        .iter()
        .map(|(addr, acct)| {
            Session::initiate(&mut rng, &me, ALICE, *addr, &acct.bundle(None).unwrap()).unwrap()
        })
        .collect();
    let mut m = encrypt_for_devices(&mut rng, b"to everyone", sessions.iter_mut().take(2)).unwrap();
    assert_eq!(m.headers.len(), 2);
    // The server says (1, 2) is missing and (2, 2) is gone: re-address, same body.
    let body = m.body.clone();
    m.remove_devices(&[DeviceAddress::new(2, 2)]);
    m.add_devices(&mut rng, sessions.iter_mut().skip(2));
    let m = OutgoingMessage::from_pickle(&m.pickle()).unwrap();
    assert_eq!(m.body, body);
    let addrs: Vec<_> = m.headers.iter().map(|(a, _)| *a).collect();
    assert_eq!(addrs, [DeviceAddress::new(2, 1), DeviceAddress::new(1, 2)]);
    for (addr, header) in &m.headers {
        let acct = &mut accounts.iter_mut().find(|(a, _)| a == addr).unwrap().1;
        let (_, d) = Session::accept(acct, *addr, ALICE, header, &m.body).unwrap();
        assert_eq!(text(d), b"to everyone");
    }
}

#[test]
fn simultaneous_initiation_converges() {
    use chat_crypto::DeviceSessions;
    let mut rng = rng(18);
    let mut a_acct = Account::new(&mut rng);
    let mut b_acct = Account::new(&mut rng);
    let (mut a, mut b) = (DeviceSessions::new(), DeviceSessions::new());
    // Both fetch the other's bundle and send before hearing anything.
    a.add(Session::initiate(&mut rng, &a_acct, ALICE, BOB, &b_acct.bundle(None).unwrap()).unwrap())
        .unwrap();
    b.add(Session::initiate(&mut rng, &b_acct, BOB, ALICE, &a_acct.bundle(None).unwrap()).unwrap())
        .unwrap();
    let (ha, ba) = send(&mut rng, a.active().unwrap(), b"from a");
    let (hb, bb) = send(&mut rng, b.active().unwrap(), b"from b");
    assert_eq!(
        text(a.decrypt(&mut a_acct, ALICE, BOB, &hb, &bb).unwrap()),
        b"from b"
    );
    assert_eq!(
        text(b.decrypt(&mut b_acct, BOB, ALICE, &ha, &ba).unwrap()),
        b"from a"
    );
    assert_eq!((a.len(), b.len()), (2, 2));
    // One round trip that does not cross.
    let (h, bd) = send(&mut rng, a.active().unwrap(), b"ping");
    assert_eq!(
        text(b.decrypt(&mut b_acct, BOB, ALICE, &h, &bd).unwrap()),
        b"ping"
    );
    let (h, bd) = send(&mut rng, b.active().unwrap(), b"pong");
    assert_eq!(
        text(a.decrypt(&mut a_acct, ALICE, BOB, &h, &bd).unwrap()),
        b"pong"
    );
    assert_eq!(a.active().unwrap().id(), b.active().unwrap().id());
    // From here on both send on the same session, and it survives a restart.
    let mut a = DeviceSessions::from_pickle(&a.pickle()).unwrap();
    for i in 0..3u8 {
        let (h, bd) = send(&mut rng, a.active().unwrap(), &[i]);
        assert_eq!(
            text(b.decrypt(&mut b_acct, BOB, ALICE, &h, &bd).unwrap()),
            [i]
        );
        let (h, bd) = send(&mut rng, b.active().unwrap(), &[i]);
        assert_eq!(
            text(a.decrypt(&mut a_acct, ALICE, BOB, &h, &bd).unwrap()),
            [i]
        );
        assert_eq!(a.active().unwrap().id(), b.active().unwrap().id());
    }
    // A replayed first message neither opens nor starts a new session.
    let before = b.pickle();
    assert!(b.decrypt(&mut b_acct, BOB, ALICE, &ha, &ba).is_err());
    assert_eq!(*b.pickle(), *before);
}

#[test]
fn an_identity_change_is_refused_until_cleared() {
    use chat_crypto::DeviceSessions;
    let mut rng = rng(19);
    let p = pair(&mut rng);
    let mut alice_account = p.alice_account;
    let mut at_alice = DeviceSessions::new();
    at_alice.add(p.alice).unwrap();
    // Bob's device is reinstalled with a new identity and starts a new session.
    let new_bob = Account::new(&mut rng);
    let mut s = Session::initiate(
        &mut rng,
        &new_bob,
        BOB,
        ALICE,
        &alice_account.bundle(None).unwrap(),
    )
    .unwrap();
    let (h, b) = send(&mut rng, &mut s, b"it's me, new bob");
    let before = (at_alice.pickle(), alice_account.pickle());
    assert_eq!(
        at_alice
            .decrypt(&mut alice_account, ALICE, BOB, &h, &b)
            .unwrap_err(),
        Error::IdentityChanged
    );
    assert_eq!((at_alice.pickle(), alice_account.pickle()), before);
    // Initiating towards the new identity is refused the same way.
    let other = Session::initiate(
        &mut rng,
        &alice_account,
        ALICE,
        BOB,
        &new_bob.bundle(None).unwrap(),
    )
    .unwrap();
    assert_eq!(at_alice.add(other).unwrap_err(), Error::IdentityChanged);
    // A session with another device does not belong here.
    let carol = Account::new(&mut rng);
    let to_carol = Session::initiate(
        &mut rng,
        &alice_account,
        ALICE,
        DeviceAddress::new(3, 1),
        &carol.bundle(None).unwrap(),
    )
    .unwrap();
    assert_eq!(at_alice.add(to_carol).unwrap_err(), Error::SessionMismatch);
    // The user accepts the change.
    at_alice.clear();
    let d = at_alice
        .decrypt(&mut alice_account, ALICE, BOB, &h, &b)
        .unwrap();
    assert_eq!(text(d), b"it's me, new bob");
    assert_eq!(at_alice.their_identity(), Some(new_bob.identity().public()));
}

#[test]
fn a_failing_session_does_not_block_the_others_and_is_unchanged() {
    let mut rng = rng(20);
    let mut p = pair(&mut rng);
    let carol = DeviceAddress::new(3, 1);
    let carol_account = Account::new(&mut rng);
    let to_carol = Session::initiate(
        &mut rng,
        &p.alice_account,
        ALICE,
        carol,
        &carol_account.bundle(None).unwrap(),
    )
    .unwrap();
    // Drive the sending chain to its last counter through a doctored pickle (layout: tag,
    // version, addresses, identities, base key, root key, ratchet secret, their ratchet key,
    // then the sending chain: flag, key, index).
    let mut bytes = to_carol.pickle().to_vec();
    assert_eq!(bytes[290], 1);
    bytes[323..327].copy_from_slice(&u32::MAX.to_be_bytes());
    let mut exhausted = Session::from_pickle(&bytes).unwrap();
    let before = exhausted.pickle();
    let m = encrypt_for_devices(&mut rng, b"to both", [&mut exhausted, &mut p.alice]).unwrap();
    assert_eq!(m.headers.len(), 1);
    assert_eq!(m.failed, [(carol, Error::ChainExhausted)]);
    assert_eq!(*exhausted.pickle(), *before);
    assert_eq!(
        text(p.bob.decrypt(&m.headers[0].1, &m.body).unwrap()),
        b"to both"
    );
}
