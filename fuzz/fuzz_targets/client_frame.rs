//! `ClientFrame::decode`, as the server's gateway calls it on every binary WebSocket message.
//! A frame that decodes re-encodes to bytes that decode to the same frame, and its
//! validation never panics.
#![no_main]

use chat_core::protocol::ClientFrame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = ClientFrame::decode(data) else {
        return;
    };
    let encoded = frame.encode();
    assert_eq!(ClientFrame::decode(&encoded).as_ref(), Ok(&frame));
    // Our own encoding is canonical: encoding again gives the same bytes.
    assert_eq!(
        ClientFrame::decode(&encoded).map(|f| f.encode()),
        Ok(encoded)
    );
    match &frame {
        ClientFrame::Send(send) => {
            let _ = send.validate();
        }
        ClientFrame::Subscribe(subscribe) => {
            let _ = subscribe.validate();
        }
        _ => {}
    }
});
