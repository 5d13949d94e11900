//! chat-crypto's pickle decoders (`from_pickle` of every stateful type). Pickles come from
//! the client's own store, but a corrupted or tampered store must give an error, never a
//! panic. A pickle that restores re-pickles, after one normalization, to a fixed point.
#![no_main]

use chat_crypto::{
    Account, DeviceSessions, Error, OutgoingMessage, SenderKey, SenderKeyReceiver, Session,
};
use libfuzzer_sys::fuzz_target;
use zeroize::Zeroizing;

/// `from_pickle`, then checks that `pickle ∘ from_pickle` is idempotent from there on (the
/// first pass may normalize, e.g. drop duplicate map entries).
fn check<T>(
    bytes: &[u8],
    from: impl Fn(&[u8]) -> Result<T, Error>,
    pickle: impl Fn(&T) -> Zeroizing<Vec<u8>>,
) {
    let Ok(value) = from(bytes) else {
        return;
    };
    let once = pickle(&value);
    let twice = pickle(&from(&once).expect("a fresh pickle restores"));
    assert_eq!(*once, *twice);
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 6 {
        0 => check(rest, Account::from_pickle, Account::pickle),
        1 => check(rest, Session::from_pickle, Session::pickle),
        2 => check(rest, DeviceSessions::from_pickle, DeviceSessions::pickle),
        3 => check(rest, SenderKey::from_pickle, SenderKey::pickle),
        4 => check(
            rest,
            SenderKeyReceiver::from_pickle,
            SenderKeyReceiver::pickle,
        ),
        _ => check(rest, OutgoingMessage::from_pickle, OutgoingMessage::pickle),
    }
});
