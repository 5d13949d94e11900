//! `Deliver::encode_shared`: the head and the shared body together are exactly the frame's
//! ordinary encoding, for every body length class of the CBOR length prefix.

use bytes::Bytes;
use chat_core::protocol::{Deliver, ServerFrame};
use chat_core::{
    ClientKey, ConversationId, DeviceAddress, DeviceId, InboxPos, MessageId, Timestamp, UserId,
};
use proptest::prelude::*;

fn deliver(pos: u64, header: Vec<u8>, body: Vec<u8>) -> Deliver {
    Deliver {
        pos: InboxPos::new(pos).unwrap(),
        conversation: ConversationId::new(7).unwrap(),
        id: MessageId::new(pos).unwrap(),
        sender: DeviceAddress {
            user: UserId::new(3).unwrap(),
            device: DeviceId::new(4).unwrap(),
        },
        client_key: ClientKey::from_bytes([9; 16]),
        sent_at: Timestamp::from_millis(pos * 1_000),
        header: Bytes::from(header),
        body: Bytes::from(body),
    }
}

fn check(d: &Deliver) {
    let shared = d.encode_shared();
    let whole = ServerFrame::Deliver(d.clone()).encode();
    assert_eq!(shared.to_bytes(), whole);
    assert_eq!(shared.len(), whole.len());
    assert_eq!(shared.body, d.body, "the body is the message's, not a copy");
    assert_eq!(
        ServerFrame::decode(&shared.to_bytes()),
        Ok(ServerFrame::Deliver(d.clone()))
    );
}

#[test]
fn every_length_prefix_class() {
    for len in [0, 1, 23, 24, 255, 256, 65_535, 65_536, 300_000] {
        check(&deliver(1 + len as u64, vec![1; 5], vec![0xab; len]));
    }
}

proptest! {
    #[test]
    fn head_and_body_are_the_frame(
        pos in 1u64..u64::from(u32::MAX),
        header in prop::collection::vec(any::<u8>(), 0..80),
        body in prop::collection::vec(any::<u8>(), 0..600),
    ) {
        check(&deliver(pos, header, body));
    }
}
