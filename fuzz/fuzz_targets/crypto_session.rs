//! What a device does with a pairwise message from a peer: `Session::decrypt`,
//! `Session::accept` (a prekey message starting a session) and `DeviceSessions::decrypt`, on
//! the fixture's state (see `src/lib.rs`), plus the payload parser behind the AEAD (content
//! key, sender key distribution) through chat-crypto's `cfg(fuzzing)` hook.
//!
//! Input: `[mode][header length: u16 BE][header][body]`. A message that opens must not open
//! twice (replay), and a failed one must leave the session as it was.
#![no_main]

use chat_crypto::{Account, Decrypted, DeviceSessions, Error, Session, is_prekey_message};
use chat_fuzz::{ALICE, BOB, fixture, split_u16};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (header, body) = split_u16(rest);
    let f = fixture();
    let _ = is_prekey_message(header);
    match mode % 4 {
        0 => {
            let mut session = Session::from_pickle(&f.bob_session).expect("fixture");
            match session.decrypt(header, body) {
                Ok(_) => assert!(matches!(
                    session.decrypt(header, body),
                    Err(Error::DuplicateMessage)
                )),
                Err(_) => assert_eq!(*session.pickle(), f.bob_session),
            }
        }
        1 => {
            let mut account = Account::from_pickle(&f.bob_account).expect("fixture");
            match Session::accept(&mut account, BOB, ALICE, header, body) {
                Ok((mut session, _)) => assert!(session.decrypt(header, body).is_err()),
                Err(_) => assert_eq!(*account.pickle(), f.bob_account),
            }
        }
        2 => {
            let mut account = Account::from_pickle(&f.bob_account).expect("fixture");
            let mut sessions = DeviceSessions::from_pickle(&f.bob_sessions).expect("fixture");
            if sessions
                .decrypt(&mut account, BOB, ALICE, header, body)
                .is_err()
            {
                assert_eq!(*sessions.pickle(), f.bob_sessions);
                assert_eq!(*account.pickle(), f.bob_account);
            }
        }
        _ => {
            // `header` stands for the decrypted payload here.
            if let Ok(Decrypted::SenderKey(d)) = chat_crypto::fuzzing::open_payload(header, body) {
                let _ = (d.group_id(), d.key_id());
                let receiver = chat_crypto::SenderKeyReceiver::new(ALICE, &d);
                let restored =
                    chat_crypto::SenderKeyReceiver::from_pickle(&receiver.pickle()).expect("own");
                assert_eq!(*restored.pickle(), *receiver.pickle());
            }
        }
    }
});
