//! Criterion benchmarks: ratchet and group encrypt+decrypt, the X3DH handshake, attachments.
//!
//! `CARGO_TARGET_DIR=/work/target-crypto cargo bench -p chat-crypto --bench crypto`

use std::hint::black_box;
use std::time::Duration;

use chat_crypto::attachment;
use chat_crypto::{
    Account, Decrypted, DeviceAddress, SenderKey, SenderKeyReceiver, Session, encrypt_for_devices,
    sender_key_headers,
};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rand::SeedableRng;
use rand::rngs::StdRng;

const A: DeviceAddress = DeviceAddress::new(1, 1);
const B: DeviceAddress = DeviceAddress::new(2, 1);
const SIZES: [(&str, usize); 3] = [("200B", 200), ("1KiB", 1024), ("100k_chars", 100_000)];

fn pair(rng: &mut StdRng) -> (Session, Session) {
    let alice = Account::new(rng);
    let mut bob = Account::new(rng);
    let otk = bob.generate_one_time_prekeys(rng, 1);
    let bundle = bob.bundle(otk.first().copied()).unwrap();
    let mut a = Session::initiate(rng, &alice, A, B, &bundle).unwrap();
    let m = encrypt_for_devices(rng, b"hi", [&mut a]).unwrap();
    let (mut b, _) = Session::accept(&mut bob, B, A, &m.headers[0].1, &m.body).unwrap();
    let m = encrypt_for_devices(rng, b"hi", [&mut b]).unwrap();
    a.decrypt(&m.headers[0].1, &m.body).unwrap();
    (a, b)
}

fn roundtrip(rng: &mut StdRng, from: &mut Session, to: &mut Session, msg: &[u8]) {
    let m = encrypt_for_devices(rng, msg, [from]).unwrap();
    let d = to.decrypt(&m.headers[0].1, &m.body).unwrap();
    black_box(d);
}

fn pairwise(c: &mut Criterion) {
    let mut g = c.benchmark_group("pairwise");
    let mut rng = StdRng::seed_from_u64(1);
    for (name, size) in SIZES {
        let msg = vec![b'a'; size];
        g.throughput(Throughput::Bytes(size as u64));
        let (mut a, mut b) = pair(&mut rng);
        g.bench_function(
            BenchmarkId::new("encrypt_decrypt_same_chain", name),
            |bench| bench.iter(|| roundtrip(&mut rng, &mut a, &mut b, &msg)),
        );
        let (mut a, mut b) = pair(&mut rng);
        let mut flip = false;
        g.bench_function(BenchmarkId::new("encrypt_decrypt_dh_step", name), |bench| {
            bench.iter(|| {
                flip = !flip;
                if flip {
                    roundtrip(&mut rng, &mut a, &mut b, &msg)
                } else {
                    roundtrip(&mut rng, &mut b, &mut a, &msg)
                }
            })
        });
    }
    g.finish();
}

fn group(c: &mut Criterion) {
    let mut g = c.benchmark_group("group");
    let mut rng = StdRng::seed_from_u64(2);
    let (mut a, mut b) = pair(&mut rng);
    let mut key = SenderKey::new(&mut rng, b"g", A).unwrap();
    let headers = sender_key_headers(&mut rng, &key.distribution(), [&mut a]);
    let Ok(Decrypted::SenderKey(d)) = b.decrypt(headers[0].1.as_ref().unwrap(), &[]) else {
        panic!()
    };
    let mut receiver = SenderKeyReceiver::new(A, &d);
    for (name, size) in SIZES {
        let msg = vec![b'a'; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(BenchmarkId::new("encrypt_decrypt", name), |bench| {
            bench.iter(|| {
                let body = key.encrypt(&mut rng, &msg).unwrap();
                black_box(receiver.decrypt(&body).unwrap());
            })
        });
    }
    g.finish();
}

fn handshake(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(3);
    let alice = Account::new(&mut rng);
    let mut bob = Account::new(&mut rng);
    // A bundle without a one-time prekey, so the same bundle can be used again and again.
    let bundle = bob.bundle(None).unwrap();
    c.bench_function("handshake/initiate_first_message_accept", |bench| {
        bench.iter(|| {
            let mut a = Session::initiate(&mut rng, &alice, A, B, &bundle).unwrap();
            let m = encrypt_for_devices(&mut rng, b"hi", [&mut a]).unwrap();
            black_box(Session::accept(&mut bob, B, A, &m.headers[0].1, &m.body).unwrap());
        })
    });
}

fn attachments(c: &mut Criterion) {
    let mut g = c.benchmark_group("attachment");
    let mut rng = StdRng::seed_from_u64(4);
    let file = vec![7u8; 8 << 20];
    g.throughput(Throughput::Bytes(file.len() as u64));
    g.bench_function("encrypt_8MiB", |bench| {
        bench.iter(|| black_box(attachment::encrypt(&mut rng, &file).unwrap()))
    });
    let (ct, ptr) = attachment::encrypt(&mut rng, &file).unwrap();
    g.bench_function("decrypt_8MiB", |bench| {
        bench.iter(|| black_box(attachment::decrypt(&ptr, &ct).unwrap()))
    });
    g.finish();
}

/// The raw primitives under the constructions, for comparison.
fn primitives(c: &mut Criterion) {
    use chacha20poly1305::aead::{AeadInOut, KeyInit};
    use chacha20poly1305::{ChaCha20Poly1305, XChaCha20Poly1305};
    use sha2::Digest;
    let mut g = c.benchmark_group("primitive_64KiB");
    let mut buf = vec![7u8; 64 * 1024];
    g.throughput(Throughput::Bytes(buf.len() as u64));
    let chacha = ChaCha20Poly1305::new(&[1u8; 32].into());
    g.bench_function("chacha20poly1305_seal", |bench| {
        bench.iter(|| {
            let tag = chacha
                .encrypt_inout_detached(&[0u8; 12].into(), b"", buf.as_mut_slice().into())
                .unwrap();
            black_box(tag);
        })
    });
    let xchacha = XChaCha20Poly1305::new(&[1u8; 32].into());
    g.bench_function("xchacha20poly1305_seal", |bench| {
        bench.iter(|| {
            let tag = xchacha
                .encrypt_inout_detached(&[0u8; 24].into(), b"", buf.as_mut_slice().into())
                .unwrap();
            black_box(tag);
        })
    });
    g.bench_function("sha256", |bench| {
        bench.iter(|| black_box(sha2::Sha256::digest(&buf)))
    });
    g.finish();
}

/// What issue 16's changes add to every one-to-one message: the body keys and commitment
/// (HKDF-SHA256 to 64 bytes, once by the sender and once by each receiving device), and the
/// 34-byte binding sealed in front of the content and checked (chat-client, every message).
fn per_message_additions(c: &mut Criterion) {
    use chat_crypto::{ConversationKind, MessageBinding};
    let mut g = c.benchmark_group("added_per_message");
    let content_key = [7u8; 32];
    g.bench_function("body_keys_hkdf_sha256_64B", |bench| {
        bench.iter(|| {
            let mut okm = [0u8; 64];
            hkdf::Hkdf::<sha2::Sha256>::new(Some(&[0u8; 32]), black_box(&content_key))
                .expand(b"chat-crypto/v2/body-keys", &mut okm)
                .unwrap();
            black_box(okm)
        })
    });
    let binding = MessageBinding {
        kind: ConversationKind::Direct,
        conversation: 3,
        message_id: [1; 16],
        sent_at_ms: 1_700_000_000_000,
    };
    let content = vec![9u8; 1024];
    g.bench_function("binding_seal_open_1KiB", |bench| {
        bench.iter(|| {
            let sealed = binding.seal(black_box(&content));
            let (_, c) =
                MessageBinding::open(&sealed, ConversationKind::Direct, 3, [1; 16]).unwrap();
            black_box(c.len())
        })
    });
    g.finish();
}

/// Issue 16's account identities: what a client does when a user's device list is new or
/// changed (not per message), and a safety number.
fn device_lists(c: &mut Criterion) {
    use chat_core::{DeviceId, UserId};
    use chat_crypto::{AccountIdentity, IdentityKeys, LinkCode, SignedDeviceList, safety_number};
    let mut rng = StdRng::seed_from_u64(9);
    let mut g = c.benchmark_group("device_lists");
    let account = AccountIdentity::generate(&mut rng);
    let user = UserId::new(1).unwrap();
    let devices: Vec<_> = (1..=10u64)
        .map(|d| {
            (
                DeviceId::new(d).unwrap(),
                IdentityKeys::generate(&mut rng).public(),
            )
        })
        .collect();
    g.bench_function("sign_10_devices", |bench| {
        bench.iter(|| {
            account
                .sign_device_list(user, 2, black_box(&devices))
                .unwrap()
        })
    });
    let list = account.sign_device_list(user, 2, &devices).unwrap();
    let older = account.sign_device_list(user, 1, &devices[..9]).unwrap();
    let bytes = list.encode();
    g.bench_function("decode_verify_10_devices", |bench| {
        bench.iter(|| SignedDeviceList::decode(black_box(&bytes)).unwrap())
    });
    g.bench_function("update_from", |bench| {
        bench.iter(|| list.update_from(black_box(&older)).unwrap())
    });
    let other = AccountIdentity::generate(&mut rng).public();
    g.bench_function("safety_number", |bench| {
        bench.iter(|| safety_number(user, &account.public(), UserId::new(2).unwrap(), &other))
    });
    let code = LinkCode::new(&mut rng, devices[9].0, devices[9].1);
    g.bench_function("link_seal_open", |bench| {
        bench.iter(|| {
            let sealed = code.seal(&mut rng, &account, &list).unwrap();
            code.open(user, &sealed).unwrap()
        })
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! { name = benches; config = config(); targets = pairwise, group, handshake, attachments, primitives, per_message_additions, device_lists }
criterion_main!(benches);
