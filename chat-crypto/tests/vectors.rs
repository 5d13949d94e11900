//! Known-answer vectors of this crate's own constructions: fixed randomness in, exact bytes
//! out. The file `tests/vectors/v1.json` is the published artefact (see docs/SECURITY.md);
//! this test recomputes every value and compares. Regenerate (only on a deliberate format
//! change, with a new version) with `CHAT_CRYPTO_WRITE_VECTORS=1 cargo test -p chat-crypto
//! --test vectors`.
//!
//! The randomness is a byte tape: block `i` is SHA-256("chat-crypto/v1/test-tape" || u32 BE i),
//! the blocks are concatenated, and every random draw takes the next bytes of the tape. Each
//! draw is also listed in the file, in order, with what it was used for.

use std::convert::Infallible;

use chat_core::UserId;
use chat_crypto::attachment;
use chat_crypto::{
    Account, AccountIdentity, Decrypted, DeviceAddress, PrekeyBundle, SenderKey, SenderKeyReceiver,
    Session, encrypt_for_devices, safety_number, sender_key_headers,
};
use rand_core::{TryCryptoRng, TryRng};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

struct Tape {
    buf: Vec<u8>,
    block: u32,
    draws: Vec<Value>,
    label: &'static str,
}

impl Tape {
    fn new() -> Self {
        Self {
            buf: Vec::new(),
            block: 0,
            draws: Vec::new(),
            label: "",
        }
    }

    fn for_(&mut self, label: &'static str) -> &mut Self {
        self.label = label;
        self
    }
}

impl TryRng for Tape {
    type Error = Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let mut b = [0; 4];
        self.try_fill_bytes(&mut b)?;
        Ok(u32::from_be_bytes(b))
    }
    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let mut b = [0; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_be_bytes(b))
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        while self.buf.len() < dst.len() {
            let mut h = Sha256::new();
            h.update(b"chat-crypto/v1/test-tape");
            h.update(self.block.to_be_bytes());
            self.buf.extend_from_slice(&h.finalize());
            self.block += 1;
        }
        dst.copy_from_slice(&self.buf[..dst.len()]);
        self.buf.drain(..dst.len());
        self.draws
            .push(json!({ "for": self.label, "bytes": hex::encode(&*dst) }));
        Ok(())
    }
}

impl TryCryptoRng for Tape {}

fn text(d: Decrypted) -> Vec<u8> {
    match d {
        Decrypted::Message(m) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

fn compute() -> Value {
    let mut t = Tape::new();
    let alice_addr = DeviceAddress::new(1, 1);
    let bob_addr = DeviceAddress::new(2, 7);

    // Pairwise: accounts, bundle, X3DH, first message, reply.
    let mut bob = Account::new(t.for_("bob: ed25519 seed, x25519 identity, signed prekey 1"));
    let otk = bob.generate_one_time_prekeys(t.for_("bob: one-time prekey 2"), 1);
    let alice = Account::new(t.for_("alice: ed25519 seed, x25519 identity, signed prekey 1"));
    let bundle = bob.bundle(otk.first().copied()).unwrap();
    let mut a = Session::initiate(
        t.for_("alice: X3DH ephemeral, then first ratchet key"),
        &alice,
        alice_addr,
        bob_addr,
        &bundle,
    )
    .unwrap();
    let m1 = encrypt_for_devices(
        t.for_("message 1: content key, body nonce, header nonce"),
        b"hello bob",
        [&mut a],
    )
    .unwrap();
    let (mut b, d1) =
        Session::accept(&mut bob, bob_addr, alice_addr, &m1.headers[0].1, &m1.body).unwrap();
    assert_eq!(text(d1), b"hello bob");
    let m2 = encrypt_for_devices(
        t.for_("message 2: content key, body nonce, bob's new ratchet key, header nonce"),
        b"hello alice",
        [&mut b],
    )
    .unwrap();
    assert_eq!(
        text(a.decrypt(&m2.headers[0].1, &m2.body).unwrap()),
        b"hello alice"
    );

    // Group: a sender key, its distribution to bob over the pairwise session, one message.
    let group_id = b"group-1";
    let mut sk = SenderKey::new(
        t.for_("sender key: key id (4), signing seed, chain key"),
        group_id,
        alice_addr,
    )
    .unwrap();
    let skdm = sender_key_headers(
        t.for_("distribution header: header nonce"),
        &sk.distribution(),
        [&mut a],
    );
    let skdm = skdm[0].1.clone().unwrap();
    let Decrypted::SenderKey(d) = b.decrypt(&skdm, &[]).unwrap() else {
        panic!()
    };
    let mut receiver = SenderKeyReceiver::new(alice_addr, &d);
    let g1 = sk
        .encrypt(t.for_("group message: nonce"), b"hello group")
        .unwrap();
    assert_eq!(receiver.decrypt(&g1).unwrap(), b"hello group");

    // Attachment: 70,000 bytes (two chunks), byte i = i mod 251.
    let file: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
    let (ct, ptr) = attachment::encrypt(t.for_("attachment: file key"), &file).unwrap();
    assert_eq!(attachment::decrypt(&ptr, &ct).unwrap(), file);

    // Safety number (version 2) of alice's and bob's account identities.
    let alice_account = AccountIdentity::generate(t.for_("alice account identity"));
    let bob_account = AccountIdentity::generate(t.for_("bob account identity"));
    let user = |n| UserId::new(n).unwrap();
    let sn = safety_number(
        user(1),
        &alice_account.public(),
        user(2),
        &bob_account.public(),
    );
    assert_ne!(
        sn,
        safety_number(
            user(1),
            &bob_account.public(),
            user(2),
            &bob_account.public()
        )
    );

    json!({
        "version": 1,
        "rng": "byte tape: block i = SHA-256(\"chat-crypto/v1/test-tape\" || u32 BE i), concatenated; each draw takes the next bytes",
        "draws": t.draws,
        "pairwise": {
            "alice_address": [alice_addr.user, alice_addr.device],
            "bob_address": [bob_addr.user, bob_addr.device],
            "alice_identity": hex::encode(alice.identity().public().to_bytes()),
            "alice_identity_signature": hex::encode(alice.identity().binding_signature()),
            "bob_bundle": hex::encode(bundle.to_bytes()),
            "message_1": { "plaintext": "hello bob", "header": hex::encode(&m1.headers[0].1), "body": hex::encode(&m1.body) },
            "message_2": { "plaintext": "hello alice", "header": hex::encode(&m2.headers[0].1), "body": hex::encode(&m2.body) },
            "session_id": hex::encode(a.id()),
        },
        "group": {
            "group_id": hex::encode(group_id),
            "sender": [alice_addr.user, alice_addr.device],
            "key_id": sk.key_id(),
            "distribution_header_for_bob": hex::encode(&skdm),
            "message": { "plaintext": "hello group", "body": hex::encode(&g1) },
        },
        "attachment": {
            "plaintext": "70000 bytes, byte i = i mod 251",
            "pointer": hex::encode(&*ptr.to_bytes()),
            "ciphertext_len": ct.len(),
            "ciphertext_sha256": hex::encode(ptr.sha256),
            "ciphertext_first_32": hex::encode(&ct[..32]),
            "ciphertext_last_32": hex::encode(&ct[ct.len() - 32..]),
        },
        "safety_number": {
            "version": 2,
            "alice_user_id": 1,
            "alice_account_key": hex::encode(alice_account.public().to_bytes()),
            "bob_user_id": 2,
            "bob_account_key": hex::encode(bob_account.public().to_bytes()),
            "user_id_encoding": "u64 big-endian",
            "digits": sn.digits(),
        },
    })
}

#[test]
fn known_answer_vectors_match_the_published_file() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/v1.json");
    let computed = compute();
    if std::env::var_os("CHAT_CRYPTO_WRITE_VECTORS").is_some() {
        std::fs::write(
            path,
            serde_json::to_string_pretty(&computed).unwrap() + "\n",
        )
        .unwrap();
    }
    let published: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(
        computed, published,
        "tests/vectors/v1.json does not match this build"
    );
}

/// The byte layouts docs/SECURITY.md states, read off the published vectors by their
/// documented offsets alone (another implementation's parser would do the same).
#[test]
fn documented_layouts_match_the_vectors() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/v1.json");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let bytes = |p: &str| hex::decode(v.pointer(p).unwrap().as_str().unwrap()).unwrap();
    let u32be = |b: &[u8]| u32::from_be_bytes(b.try_into().unwrap());

    // One-to-one body (version 2): 02 ‖ nonce (24) ‖ key commitment (32) ‖ ciphertext ‖ tag.
    let body = bytes("/pairwise/message_1/body");
    assert_eq!(body[0], 2);
    assert_eq!(body.len(), 1 + 24 + 32 + b"hello bob".len() + 16);
    assert_eq!(
        body.len() - b"hello bob".len(),
        chat_crypto::PAIRWISE_BODY_OVERHEAD
    );

    // Prekey message: 01 02 ‖ identity (64) ‖ binding signature (64) ‖ base key (32) ‖
    // signed prekey id (u32) ‖ 01 ‖ one-time prekey id (u32) ‖ normal message.
    let h1 = bytes("/pairwise/message_1/header");
    assert_eq!(h1[..2], [1, 2]);
    assert_eq!(h1[2..66], bytes("/pairwise/alice_identity")[..]);
    assert_eq!(h1[66..130], bytes("/pairwise/alice_identity_signature")[..]);
    assert_eq!(h1[130..162], bytes("/pairwise/session_id")[..]);
    let bundle = PrekeyBundle::from_bytes(&bytes("/pairwise/bob_bundle")).unwrap();
    assert_eq!(u32be(&h1[162..166]), bundle.signed_prekey.id);
    assert_eq!(h1[166], 1);
    assert_eq!(
        Some(u32be(&h1[167..171])),
        bundle.one_time_prekey.map(|k| k.id)
    );
    // Normal message: 01 01 ‖ ratchet key (32) ‖ PN (u32) ‖ N (u32) ‖ nonce (24) ‖
    // ciphertext of the 65-byte content-key payload ‖ tag (16).
    assert_eq!(h1[171..173], [1, 1]);
    assert_eq!(u32be(&h1[209..213]), 0);
    assert_eq!(h1.len(), 171 + 42 + 24 + 65 + 16);
    let h2 = bytes("/pairwise/message_2/header");
    assert_eq!(h2[..2], [1, 1]);
    assert_eq!((u32be(&h2[34..38]), u32be(&h2[38..42])), (0, 0));
    assert_eq!(h2.len(), 42 + 24 + 65 + 16);
    // The distribution header is a normal message whose payload is 02 ‖ group id length
    // (u32) ‖ group id ("group-1", 7 bytes) ‖ key id ‖ iteration ‖ chain key ‖ signing key:
    // 1 + 4 + 7 + 4 + 4 + 32 + 32 = 84 bytes.
    let dist = bytes("/group/distribution_header_for_bob");
    assert_eq!(dist.len(), 42 + 24 + 84 + 16);

    // Group body: 01 ‖ key id (u32) ‖ iteration (u32) ‖ nonce (24) ‖ ciphertext ‖ tag (16) ‖
    // Ed25519 signature (64).
    let g = bytes("/group/message/body");
    assert_eq!(g[0], 1);
    assert_eq!(
        u32be(&g[1..5]),
        v.pointer("/group/key_id").unwrap().as_u64().unwrap() as u32
    );
    assert_eq!(u32be(&g[5..9]), 0);
    assert_eq!(g.len(), 9 + 24 + b"hello group".len() + 16 + 64);

    // Attachment pointer: 01 ‖ key (32) ‖ plaintext size (u64) ‖ SHA-256 of the ciphertext.
    let p = bytes("/attachment/pointer");
    assert_eq!((p[0], p.len()), (1, 73));
    assert_eq!(u64::from_be_bytes(p[33..41].try_into().unwrap()), 70_000);
    assert_eq!(p[41..73], bytes("/attachment/ciphertext_sha256")[..]);
    assert_eq!(
        v.pointer("/attachment/ciphertext_len").unwrap().as_u64(),
        chat_crypto::attachment::encrypted_size(70_000)
    );
}
