//! Sender keys: distribution over pairwise sessions, signatures, rotation, tampering.

mod common;

use chat_crypto::{
    Account, BODY_OVERHEAD_MAX, Decrypted, DeviceAddress, Error, GROUP_BODY_OVERHEAD,
    MAX_FORWARD_JUMP, SenderKey, SenderKeyReceiver, Session, sender_key_headers,
};
use common::rng;
use rand::rngs::StdRng;

const GROUP: &[u8] = b"group-42";

struct Member {
    addr: DeviceAddress,
    account: Account,
}

fn member(rng: &mut StdRng, user: u64) -> Member {
    Member {
        addr: DeviceAddress::new(user, 1),
        account: Account::new(rng),
    }
}

/// Sender `from` distributes its key to `to` over fresh pairwise sessions; returns receivers.
fn distribute(
    rng: &mut StdRng,
    from: &Member,
    key: &SenderKey,
    to: &mut [Member],
) -> Vec<SenderKeyReceiver> {
    let mut sessions: Vec<Session> = to
        .iter()
        .map(|m| {
            Session::initiate(
                rng,
                &from.account,
                from.addr,
                m.addr,
                &m.account.bundle(None).unwrap(),
            )
            .unwrap()
        })
        .collect();
    let headers = sender_key_headers(rng, &key.distribution(), sessions.iter_mut());
    headers
        .iter()
        .zip(to.iter_mut())
        .map(|((addr, header), m)| {
            assert_eq!(*addr, m.addr);
            let (session, d) = Session::accept(
                &mut m.account,
                m.addr,
                from.addr,
                header.as_ref().unwrap(),
                &[],
            )
            .unwrap();
            match d {
                Decrypted::SenderKey(d) => {
                    assert_eq!(d.group_id(), GROUP);
                    SenderKeyReceiver::new(session.their_address(), &d)
                }
                other => panic!("expected a sender key, got {other:?}"),
            }
        })
        .collect()
}

#[test]
fn group_messages_open_for_every_member_and_out_of_order() {
    let mut rng = rng(1);
    let alice = member(&mut rng, 1);
    let mut others: Vec<Member> = (2..6).map(|u| member(&mut rng, u)).collect();
    let mut key = SenderKey::new(&mut rng, GROUP, alice.addr).unwrap();
    let mut receivers = distribute(&mut rng, &alice, &key, &mut others);
    let bodies: Vec<Vec<u8>> = (0..5u8)
        .map(|i| key.encrypt(&mut rng, &[i; 100]).unwrap())
        .collect();
    assert_eq!(bodies[0].len() - 100, GROUP_BODY_OVERHEAD);
    const { assert!(GROUP_BODY_OVERHEAD <= BODY_OVERHEAD_MAX) };
    for r in &mut receivers {
        for i in [4usize, 0, 2, 1, 3] {
            assert_eq!(r.decrypt(&bodies[i]).unwrap(), [i as u8; 100]);
            assert_eq!(r.decrypt(&bodies[i]).unwrap_err(), Error::DuplicateMessage);
        }
    }
    // Pickles continue.
    let mut key = SenderKey::from_pickle(&key.pickle()).unwrap();
    let mut r = SenderKeyReceiver::from_pickle(&receivers[0].pickle()).unwrap();
    let body = key.encrypt(&mut rng, b"after restore").unwrap();
    assert_eq!(r.decrypt(&body).unwrap(), b"after restore");
}

#[test]
fn tampering_is_rejected_before_decryption_and_changes_nothing() {
    let mut rng = rng(2);
    let alice = member(&mut rng, 1);
    let mut others = vec![member(&mut rng, 2)];
    let mut key = SenderKey::new(&mut rng, GROUP, alice.addr).unwrap();
    let mut r = distribute(&mut rng, &alice, &key, &mut others)
        .pop()
        .unwrap();
    let body = key.encrypt(&mut rng, b"signed").unwrap();
    let before = r.pickle();
    for i in 0..body.len() {
        let mut bad = body.clone();
        bad[i] ^= 0x10;
        assert!(r.decrypt(&bad).is_err(), "byte {i}");
        assert_eq!(*r.pickle(), *before);
    }
    assert!(r.decrypt(&body[..body.len() - 1]).is_err());
    assert_eq!(r.decrypt(&body).unwrap(), b"signed");
}

#[test]
fn a_member_cannot_forge_another_senders_messages() {
    let mut rng = rng(3);
    let alice = member(&mut rng, 1);
    let mut others = vec![member(&mut rng, 2)];
    let key = SenderKey::new(&mut rng, GROUP, alice.addr).unwrap();
    let mut r = distribute(&mut rng, &alice, &key, &mut others)
        .pop()
        .unwrap();
    // Mallory holds the same chain (she is a member) but not Alice's signing key: build a
    // sender key with the same id from a pickle with a different signing key.
    let mut pickle = key.pickle().to_vec();
    let n = pickle.len();
    pickle[n - 1] ^= 1;
    let mut forged = SenderKey::from_pickle(&pickle).unwrap();
    let body = forged.encrypt(&mut rng, b"forged").unwrap();
    assert_eq!(r.decrypt(&body).unwrap_err(), Error::BadSignature);
}

#[test]
fn a_removed_member_cannot_read_after_rotation() {
    let mut rng = rng(4);
    let alice = member(&mut rng, 1);
    let mut others: Vec<Member> = (2..5).map(|u| member(&mut rng, u)).collect();
    let mut key = SenderKey::new(&mut rng, GROUP, alice.addr).unwrap();
    let mut receivers = distribute(&mut rng, &alice, &key, &mut others);
    let before = key.encrypt(&mut rng, b"before").unwrap();
    for r in &mut receivers {
        assert_eq!(r.decrypt(&before).unwrap(), b"before");
    }
    // Member 4 is removed: Alice rotates and distributes to the remaining two only.
    let mut removed = receivers.pop().unwrap();
    let mut key = SenderKey::new(&mut rng, GROUP, alice.addr).unwrap();
    let fresh = distribute(&mut rng, &alice, &key, &mut others[..2]);
    let after = key.encrypt(&mut rng, b"after").unwrap();
    for mut f in fresh {
        assert_eq!(f.decrypt(&after).unwrap(), b"after");
    }
    assert_eq!(
        removed.decrypt(&after).unwrap_err(),
        Error::UnknownSenderKey
    );
}

#[test]
fn rotation_keeps_in_flight_messages_of_the_old_key() {
    let mut rng = rng(5);
    let alice = member(&mut rng, 1);
    let mut others = vec![member(&mut rng, 2)];
    let mut old = SenderKey::new(&mut rng, GROUP, alice.addr).unwrap();
    let mut r = distribute(&mut rng, &alice, &old, &mut others)
        .pop()
        .unwrap();
    let in_flight = old.encrypt(&mut rng, b"old").unwrap();
    let mut new = SenderKey::new(&mut rng, GROUP, alice.addr).unwrap();
    r.add(alice.addr, &new.distribution()).unwrap();
    assert_eq!(
        r.decrypt(&new.encrypt(&mut rng, b"new").unwrap()).unwrap(),
        b"new"
    );
    assert_eq!(r.decrypt(&in_flight).unwrap(), b"old");
    // Re-adding a known key does not rewind it: the old message stays a duplicate.
    let old_dist_again = old.distribution();
    r.add(alice.addr, &old_dist_again).unwrap();
    assert_eq!(r.decrypt(&in_flight).unwrap_err(), Error::DuplicateMessage);
    // A distribution for another sender or group is refused.
    let bob = DeviceAddress::new(9, 9);
    assert_eq!(
        r.add(bob, &new.distribution()).unwrap_err(),
        Error::SenderKeyMismatch
    );
    let other = SenderKey::new(&mut rng, b"other", alice.addr).unwrap();
    assert_eq!(
        r.add(alice.addr, &other.distribution()).unwrap_err(),
        Error::SenderKeyMismatch
    );
}

#[test]
fn a_late_joiner_cannot_read_earlier_messages_and_jumps_are_capped() {
    let mut rng = rng(6);
    let alice = member(&mut rng, 1);
    let mut key = SenderKey::new(&mut rng, GROUP, alice.addr).unwrap();
    let early = key.encrypt(&mut rng, b"early").unwrap();
    let mut late = vec![member(&mut rng, 2)];
    let mut r = distribute(&mut rng, &alice, &key, &mut late).pop().unwrap();
    assert_eq!(r.decrypt(&early).unwrap_err(), Error::DuplicateMessage);
    // A sender far ahead: move the iteration in the pickle (layout: tag, version, group id
    // with its length, sender, key id, chain key, iteration, signing seed) instead of
    // encrypting 2,001 messages; the receiver refuses before deriving anything.
    let mut bytes = key.pickle().to_vec();
    let at = 2 + 4 + GROUP.len() + 16 + 4 + 32;
    let next = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    bytes[at..at + 4].copy_from_slice(&(next + MAX_FORWARD_JUMP + 1).to_be_bytes());
    let mut far_key = SenderKey::from_pickle(&bytes).unwrap();
    let far = far_key.encrypt(&mut rng, b"far").unwrap();
    let before = r.pickle();
    assert_eq!(
        r.decrypt(&far).unwrap_err(),
        Error::TooFarAhead {
            jump: MAX_FORWARD_JUMP + 1,
            max: MAX_FORWARD_JUMP
        }
    );
    assert_eq!(*r.pickle(), *before);
    // A jump of exactly the cap passes the cap check (the doctored chain key then does not
    // match, so the AEAD refuses it).
    bytes[at..at + 4].copy_from_slice(&(next + MAX_FORWARD_JUMP).to_be_bytes());
    let near = SenderKey::from_pickle(&bytes)
        .unwrap()
        .encrypt(&mut rng, b"near")
        .unwrap();
    assert_eq!(r.decrypt(&near).unwrap_err(), Error::DecryptionFailed);
    assert_eq!(*r.pickle(), *before);
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(12))]

        /// Any delivery order with duplicates and loss: each message opens exactly once.
        #[test]
        fn any_order_opens_exactly_once(
            deliveries in prop::collection::vec(0usize..20, 1..40),
            seed in any::<u64>(),
        ) {
            let mut rng = rng(seed);
            let alice = member(&mut rng, 1);
            let mut others = vec![member(&mut rng, 2)];
            let mut key = SenderKey::new(&mut rng, GROUP, alice.addr).unwrap();
            let mut r = distribute(&mut rng, &alice, &key, &mut others).pop().unwrap();
            let bodies: Vec<Vec<u8>> =
                (0..20u8).map(|i| key.encrypt(&mut rng, &[i]).unwrap()).collect();
            let mut opened = [false; 20];
            for i in deliveries {
                let before = r.pickle();
                match r.decrypt(&bodies[i]) {
                    Ok(p) => {
                        prop_assert!(!opened[i]);
                        prop_assert_eq!(p, vec![i as u8]);
                        opened[i] = true;
                    }
                    Err(e) => {
                        prop_assert!(opened[i], "fresh message {} failed: {:?}", i, e);
                        prop_assert_eq!(e, Error::DuplicateMessage);
                        prop_assert_eq!(&*r.pickle(), &*before);
                    }
                }
            }
        }
    }
}
