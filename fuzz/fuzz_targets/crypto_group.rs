//! `SenderKeyReceiver::decrypt`: a group body from a peer, opened with the fixture's receiver
//! of Alice's sender key (see `src/lib.rs`). A body that opens must not open twice, and a
//! failed one must leave the receiver as it was.
#![no_main]

use chat_crypto::{Error, SenderKeyReceiver};
use chat_fuzz::fixture;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let mut receiver = SenderKeyReceiver::from_pickle(&f.receiver).expect("fixture");
    match receiver.decrypt(data) {
        Ok(_) => assert!(matches!(
            receiver.decrypt(data),
            Err(Error::DuplicateMessage)
        )),
        Err(_) => assert_eq!(*receiver.pickle(), f.receiver),
    }
});
