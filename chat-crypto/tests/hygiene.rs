//! Secret hygiene: secret types are not `Clone`, and their `Debug` output shows no secret.

mod common;

use chat_crypto::attachment;
use chat_crypto::{
    Account, Decrypted, DeviceSessions, IdentityKeys, OutgoingMessage, SenderKey,
    SenderKeyDistribution, SenderKeyReceiver, Session, encrypt_for_devices, sender_key_headers,
};
use common::*;

/// Compiles only if `T` is not `Clone` (the call is ambiguous when both impls apply).
trait AmbiguousIfClone<A> {
    fn check() {}
}
impl<T: ?Sized> AmbiguousIfClone<()> for T {}
#[allow(dead_code)]
struct IsClone;
impl<T: Clone> AmbiguousIfClone<IsClone> for T {}

#[test]
fn secret_types_are_not_clone() {
    <Account as AmbiguousIfClone<_>>::check();
    <IdentityKeys as AmbiguousIfClone<_>>::check();
    <Session as AmbiguousIfClone<_>>::check();
    <DeviceSessions as AmbiguousIfClone<_>>::check();
    <SenderKey as AmbiguousIfClone<_>>::check();
    <SenderKeyReceiver as AmbiguousIfClone<_>>::check();
    <SenderKeyDistribution as AmbiguousIfClone<_>>::check();
    <OutgoingMessage as AmbiguousIfClone<_>>::check();
    <attachment::AttachmentPointer as AmbiguousIfClone<_>>::check();
    <attachment::Encryptor as AmbiguousIfClone<_>>::check();
    <attachment::Decryptor as AmbiguousIfClone<_>>::check();
}

/// Every 4-byte window of `secret`, in hex: none may appear in `debug`.
fn leaks(debug: &str, secret: &[u8]) -> bool {
    secret.windows(4).any(|w| debug.contains(&hex::encode(w)))
}

#[test]
fn debug_output_shows_no_secret_or_plaintext() {
    let mut rng = rng(1);
    let mut p = pair(&mut rng);
    let m = encrypt_for_devices(&mut rng, b"top secret plaintext", [&mut p.alice]).unwrap();
    let d = p.bob.decrypt(&m.headers[0].1, &m.body).unwrap();
    let dbg = format!("{d:?}");
    assert!(!dbg.contains("top secret") && !leaks(&dbg, b"top secret plaintext"));

    // The secret parts of each pickle (layouts in src/*.rs): the session's root key and
    // ratchet secret, the account's identity secrets, the message's content key.
    let session = p.alice.pickle();
    let account = p.bob_account.pickle();
    let outgoing = m.pickle();
    for (dbg, secret) in [
        (format!("{:?}", p.alice), &session[194..258]),
        (
            format!("{:?} {:?}", p.bob_account, p.bob_account.identity()),
            &account[2..66],
        ),
        (format!("{m:?}"), &outgoing[2..34]),
    ] {
        assert!(!leaks(&dbg, secret), "{dbg}");
    }

    let mut key = SenderKey::new(&mut rng, b"g", ALICE).unwrap();
    let headers = sender_key_headers(&mut rng, &key.distribution(), [&mut p.alice]);
    let Decrypted::SenderKey(dist) = p.bob.decrypt(headers[0].1.as_ref().unwrap(), &[]).unwrap()
    else {
        panic!()
    };
    let receiver = SenderKeyReceiver::new(ALICE, &dist);
    let _ = key.encrypt(&mut rng, b"x").unwrap();
    for (dbg, pickle) in [
        (format!("{key:?} {dist:?}"), key.pickle()),
        (format!("{receiver:?}"), receiver.pickle()),
    ] {
        assert!(!leaks(&dbg, &pickle[pickle.len() - 64..]), "{dbg}");
    }

    let (_, ptr) = attachment::encrypt(&mut rng, b"file").unwrap();
    assert!(!leaks(&format!("{ptr:?}"), ptr.key()));
}
