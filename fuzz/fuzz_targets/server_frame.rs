//! `ServerFrame::decode`, as a client calls it on every binary WebSocket message from the
//! server (which the E2E layer treats as an adversary). A frame that decodes re-encodes to
//! bytes that decode to the same frame.
#![no_main]

use chat_core::protocol::ServerFrame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = ServerFrame::decode(data) else {
        return;
    };
    let encoded = frame.encode();
    assert_eq!(ServerFrame::decode(&encoded).as_ref(), Ok(&frame));
    assert_eq!(
        ServerFrame::decode(&encoded).map(|f| f.encode()),
        Ok(encoded)
    );
    if let ServerFrame::Error(e) = &frame {
        let _ = e.code.to_string();
    }
});
