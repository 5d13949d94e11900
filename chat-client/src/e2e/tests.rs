use std::sync::Arc;

use super::*;
use crate::store::MemoryStore;

/// Runs a future of the crypto API to its end on this thread's runtime.
trait Now: std::future::Future + Sized {
    fn now(self) -> Self::Output {
        thread_local! {
            static RUNTIME: tokio::runtime::Runtime =
                tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        }
        RUNTIME.with(|r| r.block_on(self))
    }
}

impl<F: std::future::Future> Now for F {}
use chat_core::{Content, Delete, InboxPos, MessageId, Text};

/// One device's crypto over an in-memory store.
struct Dev {
    crypto: Crypto,
    store: Store,
    addr: DeviceAddress,
}

impl Dev {
    /// This device's identity, as a trusted device list gives it.
    fn id(&self) -> Option<IdentityPublic> {
        Some(self.crypto.identity().unwrap())
    }
}

/// The devices to start sessions with, with their identities.
fn wanted(devs: &[&Dev]) -> BTreeMap<DeviceAddress, IdentityPublic> {
    devs.iter()
        .map(|d| (d.addr, d.crypto.identity().unwrap()))
        .collect()
}

fn device(user: u64) -> Dev {
    let store = Store::new(Arc::new(MemoryStore::new()));
    let account = Account::new(&mut rand::rng());
    crate::store::ClientStore::commit(&*store, vec![Write::Account(account.pickle())]).unwrap();
    let addr = dev(user, 1);
    Dev {
        crypto: Crypto::new(addr, store.clone(), account),
        store,
        addr,
    }
}

/// `to`'s bundle as the directory would serve it, with a one-time prekey.
fn bundle(to: &Dev) -> chat_core::PrekeyBundle {
    let keys = to.crypto.staged(|account| device_keys(account)).unwrap();
    let otk = to.crypto.new_one_time_keys(1).now().unwrap();
    chat_core::PrekeyBundle {
        device: to.addr,
        identity: keys.identity,
        signed_prekey: keys.signed_prekey,
        one_time_prekey: one_time_keys(&otk).into_iter().next(),
    }
}

fn text(body: &str) -> Vec<u8> {
    Content::Text(Text {
        body: body.into(),
        reply_to: None,
    })
    .encode()
    .unwrap()
}

/// What the server delivers of `entry` to `to`, filed where the (lying) server says.
fn deliver(
    entry: &OutboxEntry,
    from: &Dev,
    to: &Dev,
    conversation: ConversationId,
    id: u64,
) -> Deliver {
    let (body, headers) = Payload::decode(&entry.payload).unwrap().wire();
    let header = headers
        .into_iter()
        .find(|(d, _)| *d == to.addr)
        .map(|(_, h)| h)
        .unwrap();
    Deliver {
        pos: InboxPos::new(id).unwrap(),
        conversation,
        id: MessageId::new(id).unwrap(),
        sender: from.addr,
        client_key: entry.client_key,
        sent_at: Timestamp::from_millis(1),
        header: header.into(),
        body: body.into(),
    }
}

fn conv(n: u64) -> ConversationId {
    ConversationId::new(n).unwrap()
}

fn failed(opened: Opened) -> chat_crypto::Error {
    match opened {
        Opened::Failed(e) => e,
        Opened::Message(_) => panic!("the message was accepted"),
        Opened::Known => panic!("the message was taken as known"),
        Opened::Refused => panic!("the sender was refused unopened"),
    }
}

/// The server delivers Alice's first message as if from a device whose trusted identity
/// is another (a swapped identity), then from a device on no list: both are refused and
/// nothing but the cursor is committed, so the genuine delivery still opens.
#[test]
fn a_sender_with_another_identity_than_the_trusted_one_is_refused() {
    let (alice, bob, mallory) = (device(1), device(2), device(3));
    alice
        .crypto
        .add_bundles(&[bundle(&bob)], &wanted(&[&bob]))
        .now()
        .unwrap();
    let entry = alice
        .crypto
        .encrypt_direct(random_client_key(), conv(1), &[bob.addr], &[], text("hi"))
        .now()
        .unwrap();
    let d = deliver(&entry, &alice, &bob, conv(1), 1);
    assert_eq!(
        failed(bob.crypto.open(&d, mallory.id()).unwrap()),
        chat_crypto::Error::IdentityChanged
    );
    assert!(bob.store.sessions(alice.addr).unwrap().is_none());
    assert!(matches!(
        bob.crypto.open(&d, None).unwrap(),
        Opened::Refused
    ));
    assert!(matches!(
        bob.crypto.open(&d, alice.id()).unwrap(),
        Opened::Message(_)
    ));
}

#[test]
fn a_message_refiled_into_another_conversation_is_refused() {
    let (alice, bob) = (device(1), device(2));
    alice
        .crypto
        .add_bundles(&[bundle(&bob)], &wanted(&[&bob]))
        .now()
        .unwrap();
    let key = random_client_key();
    let entry = alice
        .crypto
        .encrypt_direct(key, conv(1), &[bob.addr], &[], text("private"))
        .now()
        .unwrap();
    // The server files the one-to-one message under a group Bob shares with others.
    let opened = bob
        .crypto
        .open(&deliver(&entry, &alice, &bob, conv(2), 1), alice.id())
        .unwrap();
    assert_eq!(failed(opened), chat_crypto::Error::Misfiled);
    assert!(
        bob.store
            .message(conv(2), MessageId::new(1).unwrap())
            .unwrap()
            .is_none()
    );
    // Nor under another client key (the sender-chosen ID is bound too).
    let mut other = deliver(&entry, &alice, &bob, conv(1), 2);
    other.client_key = random_client_key();
    assert_eq!(
        failed(bob.crypto.open(&other, alice.id()).unwrap()),
        chat_crypto::Error::Misfiled
    );
    // Where it was sent, it opens (the refused copies changed nothing).
    let opened = bob
        .crypto
        .open(&deliver(&entry, &alice, &bob, conv(1), 3), alice.id())
        .unwrap();
    assert!(matches!(opened, Opened::Message(_)));
}

#[test]
fn a_sender_key_handout_refiled_under_another_group_is_refused() {
    let (alice, bob) = (device(1), device(2));
    alice
        .crypto
        .add_bundles(&[bundle(&bob)], &wanted(&[&bob]))
        .now()
        .unwrap();
    let entry = alice
        .crypto
        .encrypt_group(
            random_client_key(),
            conv(1),
            &[bob.addr],
            &[],
            text("group 1"),
        )
        .now()
        .unwrap();
    let opened = bob
        .crypto
        .open(&deliver(&entry, &alice, &bob, conv(2), 1), alice.id())
        .unwrap();
    assert_eq!(failed(opened), chat_crypto::Error::SenderKeyMismatch);
    assert!(bob.store.receiver(conv(2), alice.addr).unwrap().is_none());
    let opened = bob
        .crypto
        .open(&deliver(&entry, &alice, &bob, conv(1), 2), alice.id())
        .unwrap();
    assert!(matches!(opened, Opened::Message(_)));
}

#[test]
fn a_server_renumbering_messages_cannot_aim_a_delete_at_another_message() {
    let (alice, bob) = (device(1), device(2));
    alice
        .crypto
        .add_bundles(&[bundle(&bob)], &wanted(&[&bob]))
        .now()
        .unwrap();
    let c = conv(1);
    let send = |content: Vec<u8>| {
        alice
            .crypto
            .encrypt_direct(random_client_key(), c, &[bob.addr], &[], content)
            .now()
            .unwrap()
    };
    let first = send(text("first"));
    let second = send(text("second"));
    // Alice deletes her message 1 ("first"), naming it by its client key too.
    let delete = Content::Delete(Delete {
        target: MessageId::new(1).unwrap(),
    })
    .encode_with_target_key(first.client_key)
    .unwrap();
    let delete = send(delete);
    // The server numbers the two the other way round for Bob.
    for (entry, id) in [(&second, 1), (&first, 2), (&delete, 3)] {
        let opened = bob
            .crypto
            .open(&deliver(entry, &alice, &bob, c, id), alice.id())
            .unwrap();
        assert!(matches!(opened, Opened::Message(_)));
    }
    let one = thread::item(&*bob.store, c, MessageId::new(1).unwrap())
        .unwrap()
        .unwrap();
    assert!(!one.is_deleted(), "the delete hit another message");
    assert_eq!(one.text(), Some("second"));
    let stored = bob
        .store
        .message(c, MessageId::new(1).unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(stored.plaintext, text("second"), "erased from the store");
}

fn dev(u: u64, d: u64) -> DeviceAddress {
    DeviceAddress {
        user: UserId::new(u).unwrap(),
        device: DeviceId::new(d).unwrap(),
    }
}

#[test]
fn payloads_round_trip() {
    let mut rng = rand::rng();
    let msg = encrypt_for_devices(&mut rng, b"hi", std::iter::empty()).unwrap();
    let direct = Payload::Direct {
        msg,
        empty: vec![dev(2, 3)],
    };
    let back = Payload::decode(&direct.encode()).unwrap();
    assert_eq!(back.wire(), direct.wire());
    let group = Payload::Group {
        key_before: Secret::new(vec![1, 2, 3]),
        body: vec![9; 40],
        headers: vec![(dev(2, 3), vec![]), (dev(4, 5), vec![7; 10])],
    };
    let back = Payload::decode(&group.encode()).unwrap();
    assert_eq!(back.wire(), group.wire());
    assert!(Payload::decode(&[2, 0, 0]).is_err());
    assert!(Payload::decode(&[]).is_err());
}
/// The queued entry of `key`, as the driver would send it after a repair.
fn queued(d: &Dev, key: ClientKey) -> OutboxEntry {
    d.store
        .outbox()
        .unwrap()
        .into_iter()
        .find(|e| e.client_key == key)
        .unwrap()
}

/// `entry` handed to `to` even though it has no header in it (a server forwarding the
/// ciphertext to a device that was removed).
fn forwarded(entry: &OutboxEntry, from: &Dev, to: &Dev, id: u64) -> Deliver {
    let (body, headers) = Payload::decode(&entry.payload).unwrap().wire();
    let header = headers
        .into_iter()
        .find(|(d, _)| *d == to.addr)
        .map(|(_, h)| h)
        .unwrap_or_default();
    Deliver {
        pos: InboxPos::new(id).unwrap(),
        conversation: entry.conversation,
        id: MessageId::new(id).unwrap(),
        sender: from.addr,
        client_key: entry.client_key,
        sent_at: Timestamp::from_millis(1),
        header: header.into(),
        body: body.into(),
    }
}

#[test]
fn a_repaired_group_message_is_encrypted_again_under_a_new_key() {
    let (alice, bob, carol) = (device(1), device(2), device(3));
    alice
        .crypto
        .add_bundles(&[bundle(&bob), bundle(&carol)], &wanted(&[&bob, &carol]))
        .now()
        .unwrap();
    let c = conv(1);
    let first = alice
        .crypto
        .encrypt_group(
            random_client_key(),
            c,
            &[bob.addr, carol.addr],
            &[],
            text("one"),
        )
        .now()
        .unwrap();
    for (to, id) in [(&bob, 1), (&carol, 1)] {
        let opened = to
            .crypto
            .open(&deliver(&first, &alice, to, c, id), alice.id())
            .unwrap();
        assert!(matches!(opened, Opened::Message(_)));
    }
    // Alice's list is stale: the server answers that Carol's device is gone.
    let key = random_client_key();
    alice
        .crypto
        .encrypt_group(key, c, &[bob.addr, carol.addr], &[], text("two"))
        .now()
        .unwrap();
    alice
        .crypto
        .repair(key, &[], &[], &[carol.addr])
        .now()
        .unwrap();
    let second = queued(&alice, key);
    let (_, headers) = Payload::decode(&second.payload).unwrap().wire();
    assert_eq!(
        headers.iter().map(|(d, _)| *d).collect::<Vec<_>>(),
        vec![bob.addr]
    );
    // Carol, handed the ciphertext anyway, holds only the old key.
    let opened = carol
        .crypto
        .open(&forwarded(&second, &alice, &carol, 2), alice.id())
        .unwrap();
    assert_eq!(failed(opened), chat_crypto::Error::UnknownSenderKey);
    let opened = bob
        .crypto
        .open(&forwarded(&second, &alice, &bob, 2), alice.id())
        .unwrap();
    assert!(matches!(opened, Opened::Message(_)));
    // The next message stays on the new key, without handing it out again.
    let third = alice
        .crypto
        .encrypt_group(random_client_key(), c, &[bob.addr], &[], text("three"))
        .now()
        .unwrap();
    let (_, headers) = Payload::decode(&third.payload).unwrap().wire();
    assert!(headers.iter().all(|(_, h)| h.is_empty()));
    let opened = bob
        .crypto
        .open(&forwarded(&third, &alice, &bob, 3), alice.id())
        .unwrap();
    assert!(matches!(opened, Opened::Message(_)));
    let opened = carol
        .crypto
        .open(&forwarded(&third, &alice, &carol, 3), alice.id())
        .unwrap();
    assert_eq!(failed(opened), chat_crypto::Error::UnknownSenderKey);
}

/// One step of the sender-key proptest.
#[derive(Debug, Clone)]
enum Step {
    /// Send to the devices whose bit is set (a device left out has left).
    Send(u8),
    /// The server reports the device at this index gone while repairing the last send.
    Gone(usize),
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    prop_oneof![
        (0u8..8).prop_map(Step::Send),
        (0usize..3).prop_map(Step::Gone)
    ]
}

/// The sender key id a group body was encrypted under (`01` ‖ key id ‖ ...).
fn body_key_id(entry: &OutboxEntry) -> u32 {
    let (body, _) = Payload::decode(&entry.payload).unwrap().wire();
    u32::from_be_bytes(body[1..5].try_into().unwrap())
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

    /// Whatever the sends and removals, no message sent after a device left is under a
    /// key that device was handed before it left.
    #[test]
    fn a_removed_device_never_holds_a_later_key(
        steps in proptest::collection::vec(step(), 1..12),
    ) {
        let alice = device(1);
        let others = [device(2), device(3), device(4)];
        let bundles: Vec<_> = others.iter().map(bundle).collect();
        let addrs: Vec<_> = others.iter().map(|d| d.addr).collect();
        alice
            .crypto
            .add_bundles(&bundles, &wanted(&others.iter().collect::<Vec<_>>()))
            .now().unwrap();
        let c = conv(1);
        // Key ids each device was handed; the ids it held when it last left.
        let mut handed: Vec<BTreeSet<u32>> = vec![BTreeSet::new(); 3];
        let mut left: Vec<Option<BTreeSet<u32>>> = vec![None; 3];
        let mut last: Option<(ClientKey, Vec<usize>)> = None;
        let record = |entry: &OutboxEntry,
                      handed: &mut Vec<BTreeSet<u32>>,
                      left: &[Option<BTreeSet<u32>>]| {
            let k = body_key_id(entry);
            for (i, gone) in left.iter().enumerate() {
                if let Some(ids) = gone {
                    assert!(!ids.contains(&k), "device {i} left but holds key {k}");
                }
            }
            let (_, headers) = Payload::decode(&entry.payload).unwrap().wire();
            for (d, h) in headers {
                if !h.is_empty() {
                    let i = addrs.iter().position(|a| *a == d).unwrap();
                    handed[i].insert(k);
                }
            }
        };
        for s in steps {
            match s {
                Step::Send(mask) => {
                    let members: Vec<usize> =
                        (0..3).filter(|i| mask & (1 << i) != 0).collect();
                    for (i, gone) in left.iter_mut().enumerate() {
                        if members.contains(&i) {
                            *gone = None;
                        } else if gone.is_none() {
                            *gone = Some(handed[i].clone());
                        }
                    }
                    let list: Vec<_> = members.iter().map(|i| addrs[*i]).collect();
                    let key = random_client_key();
                    let entry = alice.crypto.encrypt_group(key, c, &list, &[], text("m")).now().unwrap();
                    record(&entry, &mut handed, &left);
                    last = Some((key, members));
                }
                Step::Gone(i) => {
                    let Some((key, members)) = last.as_mut() else { continue };
                    if !members.contains(&i) {
                        continue;
                    }
                    members.retain(|m| *m != i);
                    left[i] = Some(handed[i].clone());
                    alice.crypto.repair(*key, &[], &[], &[addrs[i]]).now().unwrap();
                    let entry = queued(&alice, *key);
                    record(&entry, &mut handed, &left);
                }
            }
        }
    }
}
