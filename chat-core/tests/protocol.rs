//! Codec properties: every frame round-trips, arbitrary bytes never panic the decoder, and
//! the golden vectors decode to the documented values and re-encode byte for byte.

use bytes::Bytes;
use chat_core::protocol::*;
use chat_core::*;
use proptest::prelude::*;

fn id<T: TryFrom<u64>>(n: u64) -> T
where
    T::Error: std::fmt::Debug,
{
    T::try_from(n).unwrap()
}

fn any_id<T: TryFrom<u64> + std::fmt::Debug>() -> impl Strategy<Value = T>
where
    T::Error: std::fmt::Debug,
{
    (1..=MAX_ID).prop_map(|n| T::try_from(n).unwrap())
}

fn any_pos() -> impl Strategy<Value = InboxPos> {
    (0..=MAX_ID).prop_map(|n| InboxPos::new(n).unwrap())
}

fn any_bytes(max: usize) -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn any_addr() -> impl Strategy<Value = DeviceAddress> {
    (any_id(), any_id()).prop_map(|(user, device)| DeviceAddress { user, device })
}

fn any_code() -> impl Strategy<Value = ErrorCode> {
    any::<u16>().prop_map(ErrorCode::from_number)
}

fn any_kind() -> impl Strategy<Value = ReceiptKind> {
    prop_oneof![Just(ReceiptKind::Delivered), Just(ReceiptKind::Read)]
}

fn any_client_frame() -> impl Strategy<Value = ClientFrame> {
    prop_oneof![
        (any::<u16>(), ".{0,40}", any_pos()).prop_map(|(version, token, cursor)| Auth {
            version,
            token,
            cursor
        }
        .into()),
        (
            any::<u32>(),
            any_id(),
            any::<[u8; 16]>(),
            any_bytes(300),
            prop::collection::vec(
                (any_addr(), any_bytes(40))
                    .prop_map(|(device, header)| Recipient { device, header }),
                0..5
            )
        )
            .prop_map(|(req, conversation, key, body, recipients)| Send {
                req,
                conversation,
                client_key: ClientKey::from_bytes(key),
                body,
                recipients
            }
            .into()),
        any_pos().prop_map(|up_to| Ack { up_to }.into()),
        any_pos().prop_map(|after| SyncRequest { after }.into()),
        (any_id(), any_kind(), any_id()).prop_map(|(conversation, kind, up_to)| ReceiptUpdate {
            conversation,
            kind,
            up_to
        }
        .into()),
        (any_id(), any::<bool>()).prop_map(|(conversation, active)| TypingUpdate {
            conversation,
            active
        }
        .into()),
        Just(Heartbeat {}.into()),
        prop::collection::vec(any_id(), 0..10).prop_map(|users| Subscribe { users }.into()),
        prop::collection::vec(any_id(), 0..10).prop_map(|users| Unsubscribe { users }.into()),
    ]
}

fn any_server_frame() -> impl Strategy<Value = ServerFrame> {
    prop_oneof![
        (
            any::<u16>(),
            any_addr(),
            any::<u32>(),
            any::<u32>(),
            any_pos()
        )
            .prop_map(|(version, device, heartbeat_ms, max_frame, head)| Welcome {
                version,
                device,
                heartbeat_ms,
                max_frame,
                head
            }
            .into()),
        (
            any::<u32>(),
            any_id(),
            any_id(),
            any::<u64>(),
            any::<bool>()
        )
            .prop_map(|(req, conversation, id, t, duplicate)| Sent {
                req,
                conversation,
                id,
                sent_at: Timestamp::from_millis(t),
                duplicate
            }
            .into()),
        (
            any_pos(),
            any_id(),
            any_id(),
            any_addr(),
            any::<[u8; 16]>(),
            any::<u64>(),
            any_bytes(40),
            any_bytes(300)
        )
            .prop_map(
                |(pos, conversation, id, sender, key, t, header, body)| Deliver {
                    pos,
                    conversation,
                    id,
                    sender,
                    client_key: ClientKey::from_bytes(key),
                    sent_at: Timestamp::from_millis(t),
                    header,
                    body
                }
                .into()
            ),
        any_pos().prop_map(|head| SyncEnd { head }.into()),
        (any_id(), any_id(), any_kind(), any_id()).prop_map(|(conversation, user, kind, up_to)| {
            ReceiptEvent {
                conversation,
                user,
                kind,
                up_to,
            }
            .into()
        }),
        (any_id(), any_addr(), any::<bool>(), any::<u32>()).prop_map(
            |(conversation, from, active, ttl_ms)| TypingEvent {
                conversation,
                from,
                active,
                ttl_ms
            }
            .into()
        ),
        (any_id(), any::<bool>(), prop::option::of(any::<u64>())).prop_map(|(user, online, t)| {
            PresenceEvent {
                user,
                online,
                last_active_at: t.map(Timestamp::from_millis),
            }
            .into()
        }),
        (
            prop::option::of(any::<u32>()),
            any_code(),
            ".{0,40}",
            prop::option::of(any::<u32>())
        )
            .prop_map(|(req, code, message, retry_after_ms)| ErrorFrame {
                req,
                code,
                message,
                retry_after_ms
            }
            .into()),
        (
            any::<u32>(),
            prop::collection::vec(any_addr(), 0..4),
            prop::collection::vec(any_addr(), 0..4)
        )
            .prop_map(|(req, missing, extra)| StaleDevices {
                req,
                missing,
                extra
            }
            .into()),
        (any::<u8>(), any_pos()).prop_map(|(r, head)| ResyncRequired {
            reason: ResyncReason::from_number(r),
            head
        }
        .into()),
        (any_code(), ".{0,40}").prop_map(|(code, message)| Closing { code, message }.into()),
        (
            any_id(),
            ".{0,70}",
            prop::option::of(".{0,40}"),
            prop::option::of(any::<[u8; 16]>()),
            any::<u64>()
        )
            .prop_map(|(user, display_name, status, avatar, t)| ProfileEvent {
                user,
                display_name,
                status,
                avatar: avatar.map(AttachmentId::from_bytes),
                updated_at: Timestamp::from_millis(t),
            }
            .into()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn client_frames_round_trip(frame in any_client_frame()) {
        let bytes = frame.encode();
        prop_assert_eq!(ClientFrame::decode(&bytes), Ok(frame));
    }

    #[test]
    fn server_frames_round_trip(frame in any_server_frame()) {
        let bytes = frame.encode();
        prop_assert_eq!(ServerFrame::decode(&bytes), Ok(frame));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = ClientFrame::decode(&bytes);
        let _ = ServerFrame::decode(&bytes);
        let _ = Content::decode(&bytes);
    }

    #[test]
    fn mutated_frames_never_panic(
        frame in any_client_frame(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let encoded = frame.encode();
        // Definite-length CBOR is prefix-free: no strict prefix of a frame is a frame.
        let end = cut.index(encoded.len());
        prop_assert!(ClientFrame::decode(&encoded[..end]).is_err());
        let mut bytes = encoded;
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        let _ = ClientFrame::decode(&bytes);
    }
}

#[test]
fn frame_limit_is_enforced_before_parsing() {
    let big = vec![0u8; limits::MAX_FRAME_BYTES + 1];
    assert_eq!(
        ClientFrame::decode(&big),
        Err(DecodeError::TooLarge {
            len: big.len(),
            max: limits::MAX_FRAME_BYTES
        })
    );
}

#[test]
fn huge_declared_lengths_and_deep_nesting_fail_cleanly() {
    // A byte string claiming 2^63 bytes, an array claiming 2^32 items, 100k nested arrays.
    let cases: Vec<Vec<u8>> = vec![
        vec![
            0x82, 0x02, 0xa1, 0x03, 0x5b, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ],
        vec![0x82, 0x08, 0xa1, 0x00, 0x9a, 0xff, 0xff, 0xff, 0xff],
        std::iter::repeat_n(0x81u8, 100_000).collect(),
        [
            vec![0x82, 0x07, 0xa1, 0x05],
            std::iter::repeat_n(0x81u8, 100_000).collect(),
        ]
        .concat(),
    ];
    for bytes in cases {
        assert!(ClientFrame::decode(&bytes).is_err());
    }
}

#[test]
fn unknown_types_and_fields_are_tolerated_as_documented() {
    // An unknown frame type is reported with its number.
    assert_eq!(
        ClientFrame::decode(&[0x82, 0x18, 0x63, 0xa0]),
        Err(DecodeError::UnknownType(99))
    );
    // Unknown field 9 in a heartbeat, and a third array element, are skipped.
    let frame = ClientFrame::decode(&[0x83, 0x07, 0xa1, 0x09, 0x63, b'n', b'e', b'w', 0xf6]);
    assert_eq!(frame, Ok(Heartbeat {}.into()));
    // Trailing bytes after the frame are refused.
    assert!(matches!(
        ClientFrame::decode(&[0x82, 0x07, 0xa0, 0x00]),
        Err(DecodeError::Malformed(_))
    ));
    // Unknown error codes survive a round trip.
    let f: ServerFrame = Closing {
        code: ErrorCode::from_number(777),
        message: String::new(),
    }
    .into();
    assert_eq!(ServerFrame::decode(&f.encode()), Ok(f));
}

#[test]
fn send_validation_enforces_byte_bounds() {
    let addr = DeviceAddress {
        user: id(1),
        device: id(2),
    };
    let mut send = Send {
        req: 1,
        conversation: id(1),
        client_key: ClientKey::from_bytes([1; 16]),
        body: Bytes::from(vec![0; limits::MAX_BODY_BYTES]),
        recipients: vec![Recipient {
            device: addr,
            header: Bytes::new(),
        }],
    };
    assert_eq!(send.validate(), Ok(()));
    send.body = Bytes::from(vec![0; limits::MAX_BODY_BYTES + 1]);
    assert_eq!(send.validate(), Err(ErrorCode::BodyTooLarge));
    send.body = Bytes::new();
    send.recipients[0].header = Bytes::from(vec![0; limits::MAX_DEVICE_HEADER_BYTES + 1]);
    assert_eq!(send.validate(), Err(ErrorCode::HeaderTooLarge));
    send.recipients[0].header = Bytes::new();
    send.recipients.push(send.recipients[0].clone());
    assert_eq!(send.validate(), Err(ErrorCode::InvalidRequest));
}

#[test]
fn largest_valid_send_fits_the_frame_limit() {
    let recipients = (1..=limits::MAX_RECIPIENT_DEVICES as u64)
        .map(|n| Recipient {
            device: DeviceAddress {
                user: id(MAX_ID - n),
                device: id(MAX_ID - n),
            },
            header: Bytes::from(vec![0xff; limits::MAX_DEVICE_HEADER_BYTES]),
        })
        .collect();
    let send = Send {
        req: u32::MAX,
        conversation: id(MAX_ID),
        client_key: ClientKey::from_bytes([0xff; 16]),
        body: Bytes::from(vec![0xff; limits::MAX_BODY_BYTES]),
        recipients,
    };
    assert_eq!(send.validate(), Ok(()));
    let bytes = ClientFrame::from(send.clone()).encode();
    assert!(
        bytes.len() <= limits::MAX_FRAME_BYTES,
        "{} bytes",
        bytes.len()
    );
    assert_eq!(ClientFrame::decode(&bytes), Ok(send.into()));
}

// ---- any valid CBOR: indefinite lengths, long integer heads ----

/// Re-encodes one well-formed, definite-length CBOR item (our encoders' output) the way another
/// encoder may: every array, map, byte string and text string of indefinite length, strings
/// cut into chunks of at most `chunk` bytes (text only between characters, as RFC 8949
/// requires), and with `wide`, every integer head in its 8-byte form.
fn reencode(input: &[u8], chunk: usize, wide: bool) -> Vec<u8> {
    fn head(out: &mut Vec<u8>, major: u8, arg: u64, wide: bool) {
        match arg {
            0..=23 if !wide => out.push(major << 5 | arg as u8),
            0..=0xff if !wide => out.extend([major << 5 | 24, arg as u8]),
            0..=0xffff if !wide => {
                out.push(major << 5 | 25);
                out.extend((arg as u16).to_be_bytes())
            }
            0..=0xffff_ffff if !wide => {
                out.push(major << 5 | 26);
                out.extend((arg as u32).to_be_bytes())
            }
            _ => {
                out.push(major << 5 | 27);
                out.extend(arg.to_be_bytes())
            }
        }
    }
    fn item<'a>(input: &'a [u8], chunk: usize, wide: bool, out: &mut Vec<u8>) -> &'a [u8] {
        let (&first, rest) = input.split_first().unwrap();
        let (major, info) = (first >> 5, first & 0x1f);
        let (arg, rest) = match info {
            0..=23 => (u64::from(info), rest),
            24..=27 => {
                let (arg, rest) = rest.split_at(1 << (info - 24));
                let arg = arg.iter().fold(0, |n, &b| n << 8 | u64::from(b));
                (arg, rest)
            }
            _ => panic!("not a definite-length head: {first:#x}"),
        };
        match major {
            2 | 3 => {
                let (mut s, rest) = rest.split_at(arg as usize);
                out.push(major << 5 | 31);
                while !s.is_empty() {
                    let mut n = chunk.min(s.len());
                    while major == 3 && std::str::from_utf8(&s[..n]).is_err() {
                        n += 1;
                    }
                    head(out, major, n as u64, false);
                    out.extend(&s[..n]);
                    s = &s[n..];
                }
                out.push(0xff);
                rest
            }
            4 | 5 => {
                out.push(major << 5 | 31);
                let mut rest = rest;
                for _ in 0..arg * u64::from(major - 3) {
                    rest = item(rest, chunk, wide, out);
                }
                out.push(0xff);
                rest
            }
            6 => {
                head(out, major, arg, wide);
                item(rest, chunk, wide, out)
            }
            0 | 1 => {
                head(out, major, arg, wide);
                rest
            }
            _ => {
                out.extend(&input[..input.len() - rest.len()]);
                rest
            }
        }
    }
    let mut out = Vec::new();
    assert!(item(input, chunk, wide, &mut out).is_empty());
    out
}

fn any_content() -> impl Strategy<Value = Content> {
    let text = ".{0,30}";
    prop_oneof![
        (text, prop::option::of(any_id()))
            .prop_map(|(body, reply_to)| Content::Text(Text { body, reply_to })),
        (
            any::<[u8; 16]>(),
            any::<[u8; 32]>(),
            any::<u64>(),
            text,
            prop::option::of(text),
            prop::option::of(text)
        )
            .prop_map(|(id, key, size, mime, name, caption)| {
                Content::Attachment(AttachmentPointer {
                    id: AttachmentId::from_bytes(id),
                    key: AttachmentKey(key),
                    size,
                    sha256: key,
                    mime,
                    name,
                    caption,
                })
            }),
        (
            // Every action this version knows, and numbers of later versions (Unknown).
            prop_oneof![
                (0u32..8).prop_map(GroupAction::from_number),
                any::<u32>().prop_map(GroupAction::from_number),
            ],
            prop::collection::vec(any_id(), 0..4),
            prop::option::of(text)
        )
            .prop_map(|(action, users, name)| Content::GroupChange(GroupChange {
                action,
                users,
                name
            })),
        (any_id(), text).prop_map(|(target, body)| Content::Edit(Edit { target, body })),
        any_id().prop_map(|target| Content::Delete(Delete { target })),
        (any_id(), ".{1,10}", any::<bool>()).prop_map(|(target, emoji, remove)| {
            Content::Reaction(Reaction {
                target,
                emoji,
                remove,
            })
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// docs/PROTOCOL.md: decoders accept any valid CBOR encoding of a frame, not only the
    /// definite lengths and shortest heads our encoders write.
    #[test]
    fn frames_decode_from_indefinite_lengths_and_wide_heads(
        client in any_client_frame(),
        server in any_server_frame(),
        chunk in 1usize..8,
        wide in any::<bool>(),
    ) {
        let bytes = reencode(&client.encode(), chunk, wide);
        prop_assert_eq!(ClientFrame::decode(&bytes), Ok(client));
        let bytes = reencode(&server.encode(), chunk, wide);
        prop_assert_eq!(ServerFrame::decode(&bytes), Ok(server));
    }

    /// Content uses the frames' encoding, so the same holds for it.
    #[test]
    fn content_decodes_from_indefinite_lengths_and_wide_heads(
        content in any_content(),
        chunk in 1usize..8,
        wide in any::<bool>(),
    ) {
        let bytes = reencode(&content.encode().unwrap(), chunk, wide);
        prop_assert_eq!(Content::decode(&bytes), Ok(content));
    }
}

#[test]
fn indefinite_length_frames_as_documented() {
    let heartbeat = Ok(ClientFrame::from(Heartbeat {}));
    // [_ 7, {_ }]: an indefinite array holding an indefinite map.
    assert_eq!(
        ClientFrame::decode(&[0x9f, 0x07, 0xbf, 0xff, 0xff]),
        heartbeat
    );
    // Elements after the body are skipped up to the break, whatever they hold.
    let extra = [
        0x9f, 0x07, 0xa0, 0x01, 0x9f, 0x5f, 0x41, 0x00, 0xff, 0xff, 0xff,
    ];
    assert_eq!(ClientFrame::decode(&extra), heartbeat);
    // auth {0: 1, 1: (_ "to", "k"), 2: 5}: a text string in two chunks.
    let auth = [
        0x82, 0x01, 0xa3, 0x00, 0x01, 0x01, 0x7f, 0x62, b't', b'o', 0x61, b'k', 0xff, 0x02, 0x05,
    ];
    assert_eq!(
        ClientFrame::decode(&auth),
        Ok(Auth {
            version: 1,
            token: "tok".into(),
            cursor: InboxPos::new(5).unwrap(),
        }
        .into())
    );
    // A missing break, a frame of one element, a break where the body belongs, a break
    // outside any indefinite item, and a chunk of the wrong type are all malformed.
    for bad in [
        &[0x9f, 0x07, 0xa0][..],
        &[0x9f, 0x07, 0xff],
        &[0x9f, 0x07, 0xff, 0xa0],
        &[0x82, 0x07, 0xa0, 0xff],
        &[0x82, 0x01, 0xa1, 0x01, 0x7f, 0x41, b't', 0xff],
    ] {
        assert!(
            matches!(ClientFrame::decode(bad), Err(DecodeError::Malformed(_))),
            "{bad:02x?}"
        );
    }
    // A one-byte head for the type 7 (shortest form is not required).
    assert_eq!(ClientFrame::decode(&[0x82, 0x18, 0x07, 0xa0]), heartbeat);
}

// ---- golden vectors ----

enum Vector {
    Client(ClientFrame),
    Server(ServerFrame),
}

impl Vector {
    fn encode(&self) -> Vec<u8> {
        match self {
            Self::Client(f) => f.encode(),
            Self::Server(f) => f.encode(),
        }
    }
}

/// The documented example frames. Adding one here and running the test with
/// `CHAT_BLESS_VECTORS=1` appends it to the vectors file.
fn golden() -> Vec<(&'static str, Vector)> {
    let alice = DeviceAddress {
        user: id(1),
        device: id(10),
    };
    let bob = DeviceAddress {
        user: id(2),
        device: id(20),
    };
    let key = ClientKey::from_bytes(*b"0123456789abcdef");
    use Vector::{Client as C, Server as S};
    vec![
        (
            "client.auth",
            C(Auth {
                version: 1,
                token: "tok".into(),
                cursor: id(5),
            }
            .into()),
        ),
        (
            "client.send",
            C(Send {
                req: 7,
                conversation: id(3),
                client_key: key,
                body: Bytes::from_static(b"\xc1\xc2\xc3"),
                recipients: vec![Recipient {
                    device: bob,
                    header: Bytes::from_static(b"\xaa"),
                }],
            }
            .into()),
        ),
        ("client.ack", C(Ack { up_to: id(6) }.into())),
        ("client.sync", C(SyncRequest { after: id(0) }.into())),
        (
            "client.receipt",
            C(ReceiptUpdate {
                conversation: id(3),
                kind: ReceiptKind::Read,
                up_to: id(42),
            }
            .into()),
        ),
        (
            "client.typing",
            C(TypingUpdate {
                conversation: id(3),
                active: true,
            }
            .into()),
        ),
        ("client.heartbeat", C(Heartbeat {}.into())),
        (
            "client.subscribe",
            C(Subscribe {
                users: vec![id(2), id(3)],
            }
            .into()),
        ),
        (
            "client.unsubscribe",
            C(Unsubscribe { users: vec![id(2)] }.into()),
        ),
        (
            "server.welcome",
            S(Welcome {
                version: 1,
                device: alice,
                heartbeat_ms: 5000,
                // What the server sends (chat-server gateway: MAX_FRAME_BYTES).
                max_frame: chat_core::limits::MAX_FRAME_BYTES as u32,
                head: id(9),
            }
            .into()),
        ),
        (
            "server.sent",
            S(Sent {
                req: 7,
                conversation: id(3),
                id: id(42),
                sent_at: Timestamp::from_millis(1_700_000_000_000),
                duplicate: false,
            }
            .into()),
        ),
        (
            "server.deliver",
            S(Deliver {
                pos: id(9),
                conversation: id(3),
                id: id(42),
                sender: alice,
                client_key: key,
                sent_at: Timestamp::from_millis(1_700_000_000_000),
                header: Bytes::from_static(b"\xaa"),
                body: Bytes::from_static(b"\xc1\xc2\xc3"),
            }
            .into()),
        ),
        ("server.sync_end", S(SyncEnd { head: id(9) }.into())),
        (
            "server.receipt",
            S(ReceiptEvent {
                conversation: id(3),
                user: id(2),
                kind: ReceiptKind::Delivered,
                up_to: id(42),
            }
            .into()),
        ),
        (
            "server.typing",
            S(TypingEvent {
                conversation: id(3),
                from: bob,
                active: true,
                ttl_ms: 6000,
            }
            .into()),
        ),
        (
            "server.presence",
            S(PresenceEvent {
                user: id(2),
                online: false,
                last_active_at: Some(Timestamp::from_millis(1_700_000_000_000)),
            }
            .into()),
        ),
        (
            "server.error",
            S(ErrorFrame {
                req: Some(7),
                code: ErrorCode::NotMember,
                message: "not a member".into(),
                retry_after_ms: None,
            }
            .into()),
        ),
        (
            "server.stale_devices",
            S(StaleDevices {
                req: 7,
                missing: vec![bob],
                extra: vec![],
            }
            .into()),
        ),
        (
            "server.resync_required",
            S(ResyncRequired {
                reason: ResyncReason::CursorAhead,
                head: id(9),
            }
            .into()),
        ),
        (
            "server.closing",
            S(Closing {
                code: ErrorCode::SlowConsumer,
                message: "queue full".into(),
            }
            .into()),
        ),
        (
            "server.profile",
            S(ProfileEvent {
                user: id(2),
                display_name: "Bob".into(),
                status: Some("away".into()),
                avatar: None,
                updated_at: Timestamp::from_millis(1_700_000_000_000),
            }
            .into()),
        ),
    ]
}

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/frames.txt");
const PROTOCOL_DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/PROTOCOL.md");

#[test]
fn golden_vectors() {
    let golden = golden();
    if std::env::var_os("CHAT_BLESS_VECTORS").is_some() {
        let mut out = String::from(
            "# Golden vectors: `name hex`, one frame per line. See docs/PROTOCOL.md.\n",
        );
        for (name, v) in &golden {
            out.push_str(&format!("{name} {}\n", hex::encode(v.encode())));
        }
        std::fs::write(VECTORS, out).unwrap();
    }
    let file = std::fs::read_to_string(VECTORS).unwrap();
    let doc = std::fs::read_to_string(PROTOCOL_DOC).unwrap();
    let mut seen = 0;
    for line in file
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let (name, hex_str) = line.split_once(' ').unwrap();
        let bytes = hex::decode(hex_str).unwrap();
        let (_, expected) = golden.iter().find(|(n, _)| *n == name).unwrap();
        match expected {
            Vector::Client(f) => assert_eq!(&ClientFrame::decode(&bytes).unwrap(), f, "{name}"),
            Vector::Server(f) => assert_eq!(&ServerFrame::decode(&bytes).unwrap(), f, "{name}"),
        }
        assert_eq!(expected.encode(), bytes, "{name} re-encodes byte for byte");
        assert!(
            doc.contains(hex_str),
            "docs/PROTOCOL.md lacks the vector {name}"
        );
        seen += 1;
    }
    assert_eq!(seen, golden.len(), "every golden frame has a vector");
}

#[test]
fn documented_limits_match_the_constants() {
    fn grouped(n: usize) -> String {
        let s = n.to_string();
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        out
    }
    let doc = std::fs::read_to_string(PROTOCOL_DOC).unwrap();
    for n in [
        limits::MAX_FRAME_BYTES,
        limits::MAX_BODY_BYTES,
        limits::MAX_CONTENT_BYTES,
    ] {
        assert!(
            doc.contains(&grouped(n)),
            "docs/PROTOCOL.md does not state {}",
            grouped(n)
        );
    }
    for code in ErrorCode::ALL {
        let row = format!("| {} | `{}` |", code.number(), code.name());
        assert!(
            doc.contains(&row),
            "docs/PROTOCOL.md lacks the error code row {row}"
        );
    }
}
