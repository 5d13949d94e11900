//! Shared helpers for the integration tests.
#![allow(dead_code, unreachable_pub)]

use chat_crypto::{Account, Decrypted, DeviceAddress, Session, encrypt_for_devices};
use rand::SeedableRng;
use rand::rngs::StdRng;

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

pub const ALICE: DeviceAddress = DeviceAddress::new(1, 1);
pub const BOB: DeviceAddress = DeviceAddress::new(2, 1);

pub struct Pair {
    pub alice_account: Account,
    pub bob_account: Account,
    pub alice: Session,
    pub bob: Session,
}

/// Alice starts a session from Bob's bundle (with a one-time prekey); Bob accepts Alice's first
/// message.
pub fn pair(rng: &mut StdRng) -> Pair {
    let alice_account = Account::new(rng);
    let mut bob_account = Account::new(rng);
    let otk = bob_account.generate_one_time_prekeys(rng, 1);
    let bundle = bob_account.bundle(otk.first().copied()).unwrap();
    let mut alice = Session::initiate(rng, &alice_account, ALICE, BOB, &bundle).unwrap();
    let m = encrypt_for_devices(rng, b"hello", [&mut alice]).unwrap();
    let (bob, first) =
        Session::accept(&mut bob_account, BOB, ALICE, &m.headers[0].1, &m.body).unwrap();
    assert_eq!(text(first), b"hello");
    Pair {
        alice_account,
        bob_account,
        alice,
        bob,
    }
}

pub fn text(d: Decrypted) -> Vec<u8> {
    match d {
        Decrypted::Message(m) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

/// (header, body) of one pairwise message.
pub fn send(rng: &mut StdRng, from: &mut Session, plaintext: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let m = encrypt_for_devices(rng, plaintext, [from]).unwrap();
    let (_, header) = m.headers.into_iter().next().unwrap();
    (header, m.body)
}
