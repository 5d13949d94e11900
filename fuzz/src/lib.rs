//! Shared pieces of the fuzz targets: a deterministic crypto fixture (two devices with an
//! established session, a group sender key, an attachment key) that the targets decrypt
//! against, and the byte layouts the targets split their input by. `examples/seeds.rs` builds
//! the seed corpus from the same fixture, so the seeds are messages the targets can open.

use std::sync::OnceLock;

use chat_crypto::{
    Account, DeviceAddress, DeviceSessions, SenderKey, SenderKeyReceiver, Session, attachment,
    encrypt_for_devices, sender_key_headers,
};
use rand::SeedableRng;
use rand::rngs::StdRng;

/// The sending device of every fixture message.
pub const ALICE: DeviceAddress = DeviceAddress::new(1, 1);
/// The receiving device.
pub const BOB: DeviceAddress = DeviceAddress::new(2, 1);
/// The group of the sender-key fixture.
pub const GROUP: &[u8] = b"fuzz group";

/// Bob's side of everything, as pickles (the targets restore a fresh copy for every input, so
/// a successful decryption in one run cannot change the next), and what Alice sent him.
pub struct Fixture {
    /// Bob's account before he accepted Alice's first message (its one-time prekey unused).
    pub bob_account: Vec<u8>,
    /// Alice's account, for initiating sessions from fuzzed bundles.
    pub alice_account: Vec<u8>,
    /// Bob's session after accepting Alice's first message and sending one reply.
    pub bob_session: Vec<u8>,
    /// [`Fixture::bob_session`] inside a [`DeviceSessions`].
    pub bob_sessions: Vec<u8>,
    /// Alice's group sender key, after sending the group bodies below.
    pub sender_key: Vec<u8>,
    /// Bob's receiver of Alice's sender key, before any group body.
    pub receiver: Vec<u8>,
    /// An outgoing message of Alice's.
    pub outgoing: Vec<u8>,
    /// Pairwise `(name, header, body)`: the first opens with [`Fixture::bob_account`]
    /// (`Session::accept`), the others with [`Fixture::bob_session`].
    pub messages: Vec<(&'static str, Vec<u8>, Vec<u8>)>,
    /// Group bodies that [`Fixture::receiver`] opens.
    pub group_bodies: Vec<(&'static str, Vec<u8>)>,
    /// Bob's published prekey bundle (`PrekeyBundle::to_bytes`).
    pub bundle: Vec<u8>,
    /// The key every attachment input is decrypted with (see [`attachment_rng`]).
    pub attachment_key: [u8; 32],
}

/// The fixture, built once per process.
pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(build)
}

/// A deterministic RNG (the fixture and the targets' own encryptions).
pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// The RNG whose first draw is [`Fixture::attachment_key`]: `attachment::encrypt` with it
/// makes ciphertext the attachment target can open.
pub fn attachment_rng() -> StdRng {
    rng(0xa77)
}

fn build() -> Fixture {
    let mut rng = rng(0x5eed);
    let alice_account = Account::new(&mut rng);
    let mut bob_account = Account::new(&mut rng);
    let otk = bob_account.generate_one_time_prekeys(&mut rng, 1);
    let bundle = bob_account
        .bundle(otk.first().copied())
        .expect("fresh account has a signed prekey");
    let bob_account_before = bob_account.pickle().to_vec();

    let mut alice = Session::initiate(&mut rng, &alice_account, ALICE, BOB, &bundle)
        .expect("bundle of a fresh account verifies");
    let m1 = send(&mut rng, &mut alice, b"first, a prekey message");
    let m2 = send(&mut rng, &mut alice, b"second, still a prekey message");
    let (mut bob, _) = Session::accept(&mut bob_account, BOB, ALICE, &m1.0, &m1.1)
        .expect("bob accepts alice's first message");
    let reply = send(&mut rng, &mut bob, b"reply");
    alice
        .decrypt(&reply.0, &reply.1)
        .expect("alice opens the reply");
    let bob_session = bob.pickle().to_vec();
    let mut bob_sessions = DeviceSessions::new();
    bob_sessions
        .add(Session::from_pickle(&bob_session).expect("own pickle"))
        .expect("one session fits");

    let m3 = send(&mut rng, &mut alice, b"third, after the ratchet step");
    let mut sender_key = SenderKey::new(&mut rng, GROUP, ALICE).expect("short group id");
    let distribution = sender_key.distribution();
    let receiver = SenderKeyReceiver::new(ALICE, &distribution)
        .pickle()
        .to_vec();
    let skd = sender_key_headers(&mut rng, &distribution, [&mut alice])
        .into_iter()
        .next()
        .and_then(|(_, h)| h.ok())
        .expect("alice's session encrypts");
    let _skipped = send(&mut rng, &mut alice, b"never delivered");
    let m5 = send(&mut rng, &mut alice, b"fifth, after a gap");
    let outgoing =
        encrypt_for_devices(&mut rng, b"outgoing", [&mut alice]).expect("alice's session encrypts");

    let mut group = |text: &[u8]| {
        sender_key
            .encrypt(&mut rng, text)
            .expect("fresh chain encrypts")
    };
    let g0 = group(b"group 0");
    let g1 = group(b"group 1");
    let _g2 = group(b"group 2, never delivered");
    let g3 = group(b"group 3, after a gap");

    Fixture {
        bob_account: bob_account_before,
        alice_account: alice_account.pickle().to_vec(),
        bob_session,
        bob_sessions: bob_sessions.pickle().to_vec(),
        sender_key: sender_key.pickle().to_vec(),
        receiver,
        outgoing: outgoing.pickle().to_vec(),
        messages: vec![
            ("prekey-first", m1.0, m1.1),
            ("prekey-second", m2.0, m2.1),
            ("normal", m3.0, m3.1),
            ("sender-key", skd, Vec::new()),
            ("normal-after-gap", m5.0, m5.1),
        ],
        group_bodies: vec![("first", g0), ("second", g1), ("after-gap", g3)],
        bundle: bundle.to_bytes(),
        attachment_key: *attachment::encrypt(&mut attachment_rng(), b"")
            .expect("an empty file encrypts")
            .1
            .key(),
    }
}

fn send(rng: &mut StdRng, from: &mut Session, plaintext: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let m = encrypt_for_devices(rng, plaintext, [from]).expect("session encrypts");
    let (_, header) = m.headers.into_iter().next().expect("one header");
    (header, m.body)
}

/// Splits `[len: u16 BE][first: len bytes][rest]`; a short input gives what is there.
pub fn split_u16(data: &[u8]) -> (&[u8], &[u8]) {
    let Some((len, rest)) = data.split_first_chunk::<2>() else {
        return (data, &[]);
    };
    rest.split_at(usize::from(u16::from_be_bytes(*len)).min(rest.len()))
}

/// The inverse of [`split_u16`], for building seeds.
pub fn join_u16(first: &[u8], rest: &[u8]) -> Vec<u8> {
    let len = u16::try_from(first.len()).expect("seed parts are small");
    [&len.to_be_bytes()[..], first, rest].concat()
}

#[cfg(test)]
mod tests {
    use chat_crypto::{Decrypted, SenderKeyReceiver};

    use super::*;

    /// The seeds are only worth their bytes if the targets can open them.
    #[test]
    fn fixture_messages_open() {
        let f = fixture();
        for (name, header, body) in &f.messages {
            let opened = if *name == "prekey-first" {
                let mut account = Account::from_pickle(&f.bob_account).unwrap();
                Session::accept(&mut account, BOB, ALICE, header, body).map(|(_, d)| d)
            } else {
                Session::from_pickle(&f.bob_session)
                    .unwrap()
                    .decrypt(header, body)
            };
            let opened = opened.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                *name == "sender-key",
                matches!(opened, Decrypted::SenderKey(_))
            );
        }
        for (name, body) in &f.group_bodies {
            let mut receiver = SenderKeyReceiver::from_pickle(&f.receiver).unwrap();
            receiver
                .decrypt(body)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}
