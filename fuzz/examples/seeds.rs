//! Writes the seed corpus, `fuzz/corpus/<target>/<name>`: the golden frame vectors, one of
//! each content type, JSON of each model type, and the crypto fixture's pickles and
//! messages (which the targets can open, so the fuzzer starts past every length check and
//! signature). Run from the repository root:
//!
//! ```text
//! cargo run --manifest-path fuzz/Cargo.toml --example seeds
//! ```
//!
//! Files it does not name are left alone (regression inputs added by hand stay).

use std::path::Path;

use chat_core::{
    AttachmentKey, AttachmentPointer, Content, Delete, Edit, GroupAction, GroupChange, MessageId,
    Reaction, Text, UserId,
};
use chat_crypto::attachment;
use chat_fuzz::{attachment_rng, fixture, join_u16};
use serde_json::json;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).expect("corpus directory");
        std::fs::write(dir.join(name), bytes).expect("corpus file");
    };

    let vectors = include_str!("../../chat-core/tests/vectors/frames.txt");
    for line in vectors.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, hex)) = line.split_once(' ') else {
            continue;
        };
        let bytes = hex::decode(hex).expect("vector hex");
        match name.split_once('.') {
            Some(("client", n)) => write("client_frame", n, &bytes),
            Some(("server", n)) => write("server_frame", n, &bytes),
            _ => {}
        }
    }

    // Indefinite lengths and chunked strings (docs/PROTOCOL.md section 2).
    write(
        "client_frame",
        "indefinite_heartbeat",
        &[0x9f, 0x07, 0xbf, 0xff, 0xff],
    );
    write(
        "client_frame",
        "chunked_auth",
        &[
            0x9f, 0x01, 0xbf, 0x00, 0x01, 0x01, 0x7f, 0x62, b't', b'o', 0x61, b'k', 0xff, 0x02,
            0x05, 0xff, 0xff,
        ],
    );
    write(
        "server_frame",
        "chunked_closing",
        &[
            0x9f, 0x0b, 0xbf, 0x00, 0x18, 0x1f, 0x01, 0x7f, 0x61, b'f', 0x61, b'u', 0xff, 0xff,
            0xff,
        ],
    );
    write(
        "content",
        "chunked_text",
        &[
            0x9f, 0x01, 0xbf, 0x00, 0x7f, 0x62, b'h', b'i', 0x60, 0xff, 0xff, 0xff,
        ],
    );

    let id = |n: u64| MessageId::new(n).expect("valid id");
    let user = |n: u64| UserId::new(n).expect("valid id");
    let contents = [
        (
            "text",
            Content::Text(Text {
                body: "héllo".into(),
                reply_to: Some(id(3)),
            }),
        ),
        (
            "attachment",
            Content::Attachment(AttachmentPointer {
                id: "000102030405060708090a0b0c0d0e0f".parse().expect("hex id"),
                key: AttachmentKey([7; 32]),
                size: 70_000,
                sha256: [9; 32],
                mime: "image/png".into(),
                name: Some("cat.png".into()),
                caption: None,
            }),
        ),
        (
            "group_change",
            Content::GroupChange(GroupChange {
                action: GroupAction::Added,
                users: vec![user(2), user(3)],
                name: Some("friends".into()),
            }),
        ),
        (
            "edit",
            Content::Edit(Edit {
                target: id(4),
                body: "fixed".into(),
            }),
        ),
        ("delete", Content::Delete(Delete { target: id(5) })),
        (
            "reaction",
            Content::Reaction(Reaction {
                target: id(6),
                emoji: "👍🏽".into(),
                remove: false,
            }),
        ),
    ];
    for (name, content) in contents {
        write("content", name, &content.encode().expect("valid content"));
    }
    write("content", "unknown_type", &[0x82, 0x18, 0x63, 0xa0]);

    let f = fixture();
    let json_seeds = [
        (0u8, "username", json!("alice_1.x")),
        (1, "user_id", json!(42)),
        (6, "device_keys", device_keys(&f.bundle)),
        (
            7,
            "one_time_prekeys",
            json!([{ "id": 1, "public": hex::encode([5u8; 32]) }]),
        ),
        (
            8,
            "push_token",
            json!({ "platform": "fcm", "token": "abc" }),
        ),
        (9, "display_name", json!("  Zoë  ")),
        (10, "status", json!("away")),
        (11, "members", json!([2, 3, 9007199254740993u64])),
        (
            13,
            "profile",
            json!({ "user": 1, "username": "bob", "display_name": "Bob", "status": null,
                    "avatar": null, "updated_at": 1700000000000u64 }),
        ),
        (
            14,
            "conversations",
            json!([{ "id": 1, "kind": "group", "created_at": 0, "last_message": 7 }]),
        ),
    ];
    for (which, name, value) in json_seeds {
        let mut bytes = vec![which];
        bytes.extend(serde_json::to_vec(&value).expect("json"));
        write("json_models", name, &bytes);
    }
    for (which, name, text) in [
        (18u8, "search_prefix", "jo "),
        (19, "search_cursor", "5.6a6f"),
        (20, "user_id_text", "17"),
        (22, "profile_text", "Zoe\u{308} \u{200d}"),
        (23, "username_text", "carol"),
    ] {
        write(
            "json_models",
            name,
            &[&[which][..], text.as_bytes()].concat(),
        );
    }

    for (which, name, pickle) in [
        (0u8, "account", &f.bob_account),
        (1, "session", &f.bob_session),
        (2, "device_sessions", &f.bob_sessions),
        (3, "sender_key", &f.sender_key),
        (4, "receiver", &f.receiver),
        (5, "outgoing", &f.outgoing),
    ] {
        write("crypto_pickle", name, &[&[which][..], pickle].concat());
    }

    for (name, header, body) in &f.messages {
        // The first message starts the session (mode 1); the others open with it (mode 0).
        let mode = u8::from(*name != "prekey-first") ^ 1;
        write(
            "crypto_session",
            name,
            &[&[mode][..], &join_u16(header, body)].concat(),
        );
        write(
            "crypto_session",
            &format!("{name}-any"),
            &[&[2][..], &join_u16(header, body)].concat(),
        );
    }
    // Decrypted payloads (mode 3): a content key with its body, a sender key distribution.
    let body = [1u8; 1 + 24 + 16];
    let content_key = [&[1u8][..], &[3; 32], &sha256(&body)].concat();
    write(
        "crypto_session",
        "payload-content-key",
        &[&[3][..], &join_u16(&content_key, &body)].concat(),
    );
    let distribution = [
        &[2u8][..],
        &u32::try_from(chat_fuzz::GROUP.len())
            .expect("short")
            .to_be_bytes(),
        chat_fuzz::GROUP,
        &7u32.to_be_bytes(),
        &0u32.to_be_bytes(),
        &[4; 32],
        &[5; 32],
    ]
    .concat();
    write(
        "crypto_session",
        "payload-sender-key",
        &[&[3][..], &join_u16(&distribution, &[])].concat(),
    );

    for (name, body) in &f.group_bodies {
        write("crypto_group", name, body);
    }

    let pointer = hex::decode(
        "01a78845f36fe62cfee364b906243252247542171c587bb2a050f82a67718ea1480000000000011170\
         58698711ca25ba67a04865adbad05c056cf05d97b1a9520e984edb2a6da8a10f",
    )
    .expect("chat-crypto's vector");
    write("crypto_parse", "pointer", &[&[0][..], &pointer].concat());
    write("crypto_parse", "bundle", &[&[1][..], &f.bundle].concat());
    let (identity, spk, sig) = bundle_parts(&f.bundle);
    write(
        "crypto_parse",
        "bundle_parts",
        &[&[2][..], &join_u16(identity, &join_u16(spk, sig))].concat(),
    );
    // One chunk and two chunks (the second barely started), small pieces and one piece.
    for (name, size, piece) in [
        ("attachment", 1000usize, 100u16),
        ("attachment_two_chunks", 65_600, 0),
    ] {
        let plaintext: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let (ciphertext, _) =
            attachment::encrypt(&mut attachment_rng(), &plaintext).expect("encrypts");
        let input = [
            &[3][..],
            &(size as u64).to_be_bytes(),
            &piece.to_be_bytes(),
            &ciphertext,
        ]
        .concat();
        write("crypto_parse", name, &input);
    }
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).to_vec()
}

/// `(published identity, signed prekey, signature)` out of `PrekeyBundle::to_bytes`:
/// version, identity (64), binding signature (64), prekey id (4), key (32), signature (64).
fn bundle_parts(bundle: &[u8]) -> (&[u8], &[u8], &[u8]) {
    (&bundle[1..129], &bundle[133..165], &bundle[165..229])
}

fn device_keys(bundle: &[u8]) -> serde_json::Value {
    let (identity, spk, sig) = bundle_parts(bundle);
    json!({
        "identity": hex::encode(identity),
        "signed_prekey": { "id": u32::from_be_bytes(bundle[129..133].try_into().expect("4 bytes")), "public": hex::encode(spk), "signature": hex::encode(sig) },
    })
}
