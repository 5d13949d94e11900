//! The conformance suite: one set of tests, written once against the `chat_core` storage
//! traits, that every backend runs (memory, SQLite, PostgreSQL) through
//! [`conformance_tests!`](crate::conformance_tests).
//!
//! Each function here checks one guarantee of the trait contract and panics when it does
//! not hold. Concurrency tests start many tasks at once on a multi-threaded runtime and check
//! the invariants on the result; nothing sleeps.

use std::any::Any;
use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use chat_core::limits::{MAX_DEVICES_PER_USER, MAX_GROUP_MEMBERS};
use chat_core::{
    AttachmentId, AttachmentMeta, ClientKey, ConversationId, ConversationKind, DeviceAddress,
    DeviceKeys, Direction, InboxPos, MAX_ID, MessageId, NewMessage, OneTimePrekey, PushToken,
    ReceiptKind, Recipient, SignedPrekey, Store, StoreError, Timestamp, TokenHash, UserId,
    Username,
};
use tokio::task::JoinSet;

/// A store under test, with whatever must live as long as it (a temporary directory, say).
pub struct Fixture {
    store: Arc<dyn Store>,
    _guard: Option<Box<dyn Any + Send>>,
}

impl Fixture {
    /// A fixture for a store that needs nothing else kept alive.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            _guard: None,
        }
    }

    /// A fixture that keeps `guard` alive (and drops it after the store).
    pub fn with_guard(store: Arc<dyn Store>, guard: impl Any + Send) -> Self {
        Self {
            store,
            _guard: Some(Box::new(guard)),
        }
    }

    /// The store.
    pub fn store(&self) -> Arc<dyn Store> {
        Arc::clone(&self.store)
    }
}

impl fmt::Debug for Fixture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fixture").finish_non_exhaustive()
    }
}

/// Expands to one `#[tokio::test]` per guarantee of the storage contract, each running on a
/// fresh store from `$fixture`: an expression evaluating to a future of
/// `Option<`[`Fixture`]`>` (`None` skips the test, for a backend that is not configured).
///
/// The invoking crate needs `tokio` with the `macros` and `rt-multi-thread` features.
///
/// ```ignore
/// async fn fresh() -> Option<chat_storage::testing::Fixture> {
///     Some(chat_storage::testing::Fixture::new(std::sync::Arc::new(
///         chat_storage::MemoryStore::new(),
///     )))
/// }
/// chat_storage::conformance_tests!(fresh());
/// ```
#[macro_export]
macro_rules! conformance_tests {
    ($fixture:expr) => {
        $crate::conformance_tests!(@each $fixture;
            accounts_and_tokens,
            too_many_devices,
            device_removal_revokes_everything,
            prekeys_are_claimed_at_most_once_concurrently,
            signed_prekey_is_the_fallback,
            concurrent_appends_are_gapless_and_ordered,
            idempotent_retries_write_nothing,
            concurrent_retries_make_one_message,
            stale_devices_are_reported_exactly,
            non_members_cannot_send,
            removed_member_gets_nothing_after_removal,
            member_limit_holds_under_concurrent_adds,
            member_limit_is_all_or_nothing,
            direct_conversation_is_one_per_pair_concurrently,
            conversation_records,
            inbox_paging_edges,
            history_paging_edges,
            message_lookup,
            receipts_are_monotonic,
            cursor_ack_is_monotonic,
            attachments_and_push_tokens,
        );
    };
    (@each $fixture:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let Some(fixture) = $fixture.await else { return };
                $crate::testing::$name(fixture.store()).await;
            }
        )*
    };
}

static COUNTER: AtomicU64 = AtomicU64::new(1);

fn unique() -> u64 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// A token hash no other test uses.
pub fn token() -> TokenHash {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&unique().to_be_bytes());
    bytes[8..16].copy_from_slice(&std::process::id().to_be_bytes().repeat(2));
    TokenHash(bytes)
}

/// A client message key no other test uses.
pub fn client_key() -> ClientKey {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&unique().to_be_bytes());
    bytes[8..12].copy_from_slice(&std::process::id().to_be_bytes());
    ClientKey::from_bytes(bytes)
}

/// The time the suite uses for "now".
pub const NOW: Timestamp = Timestamp::from_millis(1_700_000_000_000);

/// Creates a user with a fresh name.
pub async fn user(store: &dyn Store) -> UserId {
    let name = Username::new(format!("user{}", unique())).expect("valid name");
    store
        .create_user(&name, "$argon2id$test", NOW)
        .await
        .expect("create user")
        .id
}

/// Registers a device for `user`.
pub async fn device(store: &dyn Store, user: UserId) -> DeviceAddress {
    store
        .add_device(user, "test", token(), NOW)
        .await
        .expect("add device")
        .address
}

/// A user with `devices` devices.
pub async fn user_with_devices(store: &dyn Store, devices: usize) -> (UserId, Vec<DeviceAddress>) {
    let id = user(store).await;
    let mut list = Vec::new();
    for _ in 0..devices {
        list.push(device(store, id).await);
    }
    (id, list)
}

/// A message from `sender` to exactly `recipients`, with a fresh client key.
pub fn message(
    conversation: ConversationId,
    sender: DeviceAddress,
    recipients: &[DeviceAddress],
) -> NewMessage {
    NewMessage {
        conversation,
        sender,
        client_key: client_key(),
        body: Bytes::from(format!("body {}", unique())),
        recipients: recipients
            .iter()
            .map(|&device| Recipient {
                device,
                header: Bytes::from(format!("to {device:?}")),
            })
            .collect(),
        sent_at: NOW,
    }
}

fn others(all: &[DeviceAddress], sender: DeviceAddress) -> Vec<DeviceAddress> {
    all.iter().copied().filter(|d| *d != sender).collect()
}

fn pos(n: u64) -> InboxPos {
    InboxPos::new(n).expect("valid position")
}

fn mid(n: u64) -> MessageId {
    MessageId::new(n).expect("valid message ID")
}

/// A group of `users` users with `devices` devices each; returns it and all devices.
async fn group(
    store: &dyn Store,
    users: usize,
    devices: usize,
) -> (ConversationId, Vec<UserId>, Vec<DeviceAddress>) {
    let mut ids = Vec::new();
    let mut all = Vec::new();
    for _ in 0..users {
        let (id, list) = user_with_devices(store, devices).await;
        ids.push(id);
        all.extend(list);
    }
    let (creator, rest) = ids.split_first().expect("at least one user");
    let conv = store
        .create_group(*creator, rest, MAX_GROUP_MEMBERS, NOW)
        .await
        .expect("group");
    (conv.id, ids, all)
}

/// Users, devices and tokens: creation, conflicts, lookup, revocation, last-active.
pub async fn accounts_and_tokens(store: Arc<dyn Store>) {
    let name = Username::new(format!("alice{}", unique())).expect("name");
    let alice = store
        .create_user(&name, "$argon2id$x", NOW)
        .await
        .expect("create");
    assert!(matches!(
        store.create_user(&name, "$other", NOW).await,
        Err(StoreError::Conflict)
    ));
    let creds = store
        .credentials(&name)
        .await
        .expect("credentials")
        .expect("exists");
    assert_eq!(creds.user, alice);
    assert_eq!(creds.password_hash, "$argon2id$x");
    let nobody = Username::new(format!("nobody{}", unique())).expect("name");
    assert!(
        store
            .credentials(&nobody)
            .await
            .expect("credentials")
            .is_none()
    );
    assert_eq!(
        store.user(alice.id).await.expect("user"),
        Some(alice.clone())
    );

    let t1 = token();
    let phone = store
        .add_device(alice.id, "phone", t1, NOW)
        .await
        .expect("device");
    assert_eq!(phone.address.user, alice.id);
    assert_eq!(phone.name, "phone");
    let laptop = device(&*store, alice.id).await;
    let listed: Vec<_> = store.devices(alice.id).await.expect("devices");
    assert_eq!(
        listed.iter().map(|d| d.address).collect::<Vec<_>>(),
        vec![phone.address, laptop]
    );

    assert_eq!(
        store.authenticate(t1).await.expect("auth"),
        Some(phone.address)
    );
    let t2 = token();
    store
        .add_token(phone.address, t2, NOW)
        .await
        .expect("add token");
    assert_eq!(
        store.authenticate(t2).await.expect("auth"),
        Some(phone.address)
    );
    // A token hash already bound to another device is refused.
    assert!(matches!(
        store.add_token(laptop, t1, NOW).await,
        Err(StoreError::Conflict)
    ));
    let wrong_owner = DeviceAddress {
        user: user(&*store).await,
        device: phone.address.device,
    };
    assert!(matches!(
        store.add_token(wrong_owner, token(), NOW).await,
        Err(StoreError::NotFound)
    ));

    // Revocation is visible to the very next lookup.
    assert!(store.revoke_token(t1).await.expect("revoke"));
    assert_eq!(store.authenticate(t1).await.expect("auth"), None);
    assert!(!store.revoke_token(t1).await.expect("revoke again"));
    assert_eq!(
        store.authenticate(t2).await.expect("auth"),
        Some(phone.address)
    );
    assert_eq!(store.authenticate(token()).await.expect("auth"), None);

    assert_eq!(
        store.last_active(alice.id).await.expect("last active"),
        None
    );
    let later = Timestamp::from_millis(NOW.as_millis() + 5_000);
    store.set_last_active(alice.id, later).await.expect("set");
    store
        .set_last_active(alice.id, NOW)
        .await
        .expect("set older");
    assert_eq!(
        store.last_active(alice.id).await.expect("last active"),
        Some(later)
    );
    let ghost = UserId::new(MAX_ID).expect("id");
    assert!(matches!(
        store.set_last_active(ghost, NOW).await,
        Err(StoreError::NotFound)
    ));
    assert!(store.user(ghost).await.expect("user").is_none());
    assert!(matches!(
        store.add_device(ghost, "x", token(), NOW).await,
        Err(StoreError::NotFound)
    ));
}

/// The device limit per user.
pub async fn too_many_devices(store: Arc<dyn Store>) {
    let (alice, _) = user_with_devices(&*store, MAX_DEVICES_PER_USER).await;
    let extra = store.add_device(alice, "one too many", token(), NOW).await;
    assert!(
        matches!(extra, Err(StoreError::TooManyDevices)),
        "{extra:?}"
    );
    assert_eq!(
        store.devices(alice).await.expect("devices").len(),
        MAX_DEVICES_PER_USER
    );
}

fn keys(spk: u32) -> DeviceKeys {
    DeviceKeys {
        identity: Bytes::from_static(b"identity-key-bundle"),
        signed_prekey: SignedPrekey {
            id: spk,
            public: Bytes::from_static(&[7; 32]),
            signature: Bytes::from_static(&[9; 64]),
        },
    }
}

fn one_time(ids: std::ops::Range<u32>) -> Vec<OneTimePrekey> {
    ids.map(|id| OneTimePrekey {
        id,
        public: Bytes::from(id.to_be_bytes().repeat(8)),
    })
    .collect()
}

/// Removing a device revokes its tokens at once and drops its keys, push token and inbox;
/// later messages must not name it.
pub async fn device_removal_revokes_everything(store: Arc<dyn Store>) {
    let (alice, alice_devices) = user_with_devices(&*store, 1).await;
    let sender = alice_devices[0];
    let bob = user(&*store).await;
    let t = token();
    let phone = store
        .add_device(bob, "phone", t, NOW)
        .await
        .expect("device")
        .address;
    let laptop = device(&*store, bob).await;
    store.set_device_keys(phone, &keys(1)).await.expect("keys");
    store
        .add_one_time_prekeys(phone, &one_time(0..3))
        .await
        .expect("otks");
    let push = PushToken {
        platform: "webhook".into(),
        token: "secret".into(),
    };
    store
        .set_push_token(phone, Some(&push))
        .await
        .expect("push");
    let conv = store.open_direct(alice, bob, NOW).await.expect("direct").id;
    store
        .append(message(conv, sender, &[phone, laptop]))
        .await
        .expect("append");

    let stranger = DeviceAddress {
        user: alice,
        device: phone.device,
    };
    assert!(matches!(
        store.remove_device(stranger).await,
        Err(StoreError::NotFound)
    ));
    store.remove_device(phone).await.expect("remove");

    assert_eq!(store.authenticate(t).await.expect("auth"), None);
    assert_eq!(store.devices(bob).await.expect("devices").len(), 1);
    assert!(store.claim_bundles(bob).await.expect("claim").is_empty());
    assert_eq!(store.one_time_prekey_count(phone).await.expect("count"), 0);
    assert_eq!(store.push_token(phone).await.expect("push"), None);
    assert!(matches!(
        store.inbox(phone, InboxPos::ZERO, 10).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.inbox_head(phone).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.remove_device(phone).await,
        Err(StoreError::NotFound)
    ));

    let err = store.append(message(conv, sender, &[phone, laptop])).await;
    match err {
        Err(StoreError::StaleDevices(m)) => {
            assert!(m.missing.is_empty());
            assert_eq!(m.extra, vec![phone]);
        }
        other => panic!("expected stale devices, got {other:?}"),
    }
    store
        .append(message(conv, sender, &[laptop]))
        .await
        .expect("append");
    assert_eq!(store.inbox_head(laptop).await.expect("head"), pos(2));
}

/// Many concurrent claims never hand out one one-time prekey twice; the signed prekey
/// remains the fallback once the pool is empty.
pub async fn prekeys_are_claimed_at_most_once_concurrently(store: Arc<dyn Store>) {
    let (bob, devices) = user_with_devices(&*store, 2).await;
    for (i, d) in devices.iter().enumerate() {
        store
            .set_device_keys(*d, &keys(i as u32))
            .await
            .expect("keys");
        store
            .add_one_time_prekeys(*d, &one_time(0..20))
            .await
            .expect("otks");
    }
    // A key ID already in the pool is ignored.
    store
        .add_one_time_prekeys(devices[0], &one_time(10..25))
        .await
        .expect("otks");
    assert_eq!(
        store
            .one_time_prekey_count(devices[0])
            .await
            .expect("count"),
        25
    );
    assert_eq!(
        store
            .one_time_prekey_count(devices[1])
            .await
            .expect("count"),
        20
    );

    let mut tasks = JoinSet::new();
    for _ in 0..32 {
        let store = Arc::clone(&store);
        tasks.spawn(async move { store.claim_bundles(bob).await.expect("claim") });
    }
    let mut handed_out = BTreeSet::new();
    let mut fallbacks = 0;
    while let Some(bundles) = tasks.join_next().await {
        let bundles = bundles.expect("task");
        assert_eq!(
            bundles.iter().map(|b| b.device).collect::<Vec<_>>(),
            devices
        );
        for b in bundles {
            assert_eq!(b.identity, keys(0).identity);
            match b.one_time_prekey {
                Some(k) => assert!(
                    handed_out.insert((b.device, k.id)),
                    "{k:?} handed out twice"
                ),
                None => fallbacks += 1,
            }
        }
    }
    assert_eq!(handed_out.len(), 45);
    assert_eq!(fallbacks, 64 - 45);
    for d in &devices {
        assert_eq!(store.one_time_prekey_count(*d).await.expect("count"), 0);
    }
}

/// Devices without published keys get no bundle; with an empty pool the bundle carries
/// only the signed prekey; replacing keys replaces the signed prekey.
pub async fn signed_prekey_is_the_fallback(store: Arc<dyn Store>) {
    let (bob, devices) = user_with_devices(&*store, 2).await;
    assert!(store.claim_bundles(bob).await.expect("claim").is_empty());
    store
        .set_device_keys(devices[1], &keys(1))
        .await
        .expect("keys");
    store
        .set_device_keys(devices[1], &keys(2))
        .await
        .expect("replace keys");
    let bundles = store.claim_bundles(bob).await.expect("claim");
    assert_eq!(bundles.len(), 1);
    assert_eq!(bundles[0].device, devices[1]);
    assert_eq!(bundles[0].signed_prekey, keys(2).signed_prekey);
    assert_eq!(bundles[0].one_time_prekey, None);
    store
        .add_one_time_prekeys(devices[1], &one_time(5..6))
        .await
        .expect("otk");
    let bundles = store.claim_bundles(bob).await.expect("claim");
    assert_eq!(bundles[0].one_time_prekey, Some(one_time(5..6).remove(0)));
    let ghost = DeviceAddress {
        user: bob,
        device: chat_core::DeviceId::new(MAX_ID).expect("id"),
    };
    assert!(matches!(
        store.set_device_keys(ghost, &keys(1)).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.add_one_time_prekeys(ghost, &one_time(0..1)).await,
        Err(StoreError::NotFound)
    ));
}

/// Concurrent appenders to one conversation: IDs are exactly 1..=N, every inbox is gapless
/// from 1 and lists the conversation's messages in ID order.
pub async fn concurrent_appends_are_gapless_and_ordered(store: Arc<dyn Store>) {
    let (conv, _, all) = group(&*store, 4, 2).await;
    const PER_TASK: usize = 20;
    let mut tasks = JoinSet::new();
    for &sender in &all {
        let store = Arc::clone(&store);
        let recipients = others(&all, sender);
        tasks.spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..PER_TASK {
                let done = store
                    .append(message(conv, sender, &recipients))
                    .await
                    .expect("append");
                assert!(!done.duplicate);
                assert_eq!(done.deliveries.len(), recipients.len());
                ids.push(done.id.get());
            }
            ids
        });
    }
    let mut ids = Vec::new();
    while let Some(batch) = tasks.join_next().await {
        let batch = batch.expect("task");
        assert!(
            batch.windows(2).all(|w| w[0] < w[1]),
            "one sender's IDs must increase"
        );
        ids.extend(batch);
    }
    ids.sort_unstable();
    let total = (all.len() * PER_TASK) as u64;
    assert_eq!(ids, (1..=total).collect::<Vec<_>>());
    let record = store
        .conversation(conv)
        .await
        .expect("conversation")
        .expect("exists");
    assert_eq!(record.last_message, Some(mid(total)));

    for &d in &all {
        let expected = total - PER_TASK as u64;
        assert_eq!(store.inbox_head(d).await.expect("head"), pos(expected));
        let entries = store.inbox(d, InboxPos::ZERO, 10_000).await.expect("inbox");
        let positions: Vec<u64> = entries.iter().map(|e| e.pos.get()).collect();
        assert_eq!(positions, (1..=expected).collect::<Vec<_>>());
        let msg_ids: Vec<MessageId> = entries.iter().map(|e| e.envelope.id).collect();
        assert!(
            msg_ids.windows(2).all(|w| w[0] < w[1]),
            "inbox out of message order"
        );
        assert!(entries.iter().all(|e| e.envelope.sender != d));
        assert!(
            entries
                .iter()
                .all(|e| e.header == format!("to {d:?}").as_bytes())
        );
    }
}

/// A retry with the same client key returns the first ID and writes nothing.
pub async fn idempotent_retries_write_nothing(store: Arc<dyn Store>) {
    let (conv, _, all) = group(&*store, 2, 2).await;
    let sender = all[0];
    let first = message(conv, sender, &others(&all, sender));
    let done = store.append(first.clone()).await.expect("append");
    assert_eq!((done.id, done.duplicate), (mid(1), false));
    let heads: Vec<_> = others(&all, sender).iter().map(|&d| (d, pos(1))).collect();
    assert_eq!(done.deliveries, heads);

    let mut retry = first.clone();
    retry.body = Bytes::from_static(b"a different body");
    retry.sent_at = Timestamp::from_millis(NOW.as_millis() + 1);
    let again = store.append(retry).await.expect("retry");
    assert_eq!(
        (again.id, again.sent_at, again.duplicate),
        (mid(1), NOW, true)
    );
    assert!(again.deliveries.is_empty());
    // Even a now-stale recipient list is a duplicate: the key decides, before any check.
    let mut stale = first.clone();
    stale.recipients.clear();
    assert!(store.append(stale).await.expect("stale retry").duplicate);

    for d in others(&all, sender) {
        assert_eq!(store.inbox_head(d).await.expect("head"), pos(1));
    }
    let history = store
        .history(conv, mid(MAX_ID), Direction::Before, 10)
        .await
        .expect("history");
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].body, first.body);
    assert_eq!(history[0].client_key, first.client_key);

    // The same key from another device is a different message.
    let mut other_device = first.clone();
    other_device.sender = all[1];
    other_device.recipients = message(conv, all[1], &others(&all, all[1])).recipients;
    assert_eq!(store.append(other_device).await.expect("append").id, mid(2));
}

/// Many concurrent sends of one message (same key) make exactly one message.
pub async fn concurrent_retries_make_one_message(store: Arc<dyn Store>) {
    let (conv, _, all) = group(&*store, 2, 1).await;
    let msg = message(conv, all[0], &all[1..]);
    let mut tasks = JoinSet::new();
    for _ in 0..16 {
        let store = Arc::clone(&store);
        let msg = msg.clone();
        tasks.spawn(async move { store.append(msg).await.expect("append") });
    }
    let mut firsts = 0;
    while let Some(done) = tasks.join_next().await {
        let done = done.expect("task");
        assert_eq!(done.id, mid(1));
        firsts += usize::from(!done.duplicate);
    }
    assert_eq!(firsts, 1);
    assert_eq!(store.inbox_head(all[1]).await.expect("head"), pos(1));
}

/// A stale recipient list is refused with the exact missing and extra sets and writes
/// nothing; a duplicate recipient is invalid.
pub async fn stale_devices_are_reported_exactly(store: Arc<dyn Store>) {
    let (conv, users, all) = group(&*store, 3, 2).await;
    let sender = all[0];
    let (_, outsider) = user_with_devices(&*store, 1).await;
    // Missing the sender's own other device and one of user 2's; includes the sender itself
    // and an outsider.
    let given = [sender, all[2], all[4], all[5], outsider[0]];
    let err = store.append(message(conv, sender, &given)).await;
    let Err(StoreError::StaleDevices(m)) = err else {
        panic!("expected stale devices: {err:?}")
    };
    let mut missing = vec![all[1], all[3]];
    missing.sort();
    let mut extra = vec![sender, outsider[0]];
    extra.sort();
    assert_eq!((m.missing, m.extra), (missing, extra));

    let mut twice = message(conv, sender, &others(&all, sender));
    twice.recipients.push(twice.recipients[0].clone());
    assert!(matches!(
        store.append(twice).await,
        Err(StoreError::Invalid(_))
    ));

    // Nothing was written: no message, no inbox entry, the key is still free.
    let failed = message(conv, sender, &all[1..2]);
    assert!(store.append(failed.clone()).await.is_err());
    for &d in &all {
        assert_eq!(store.inbox_head(d).await.expect("head"), InboxPos::ZERO);
    }
    let record = store
        .conversation(conv)
        .await
        .expect("conversation")
        .expect("exists");
    assert_eq!(record.last_message, None);
    let mut fixed = failed;
    fixed.recipients = message(conv, sender, &others(&all, sender)).recipients;
    let done = store.append(fixed).await.expect("append with the same key");
    assert_eq!((done.id, done.duplicate), (mid(1), false));

    // A new device of a member makes the old list stale.
    let new = device(&*store, users[2]).await;
    let err = store
        .append(message(conv, sender, &others(&all, sender)))
        .await;
    let Err(StoreError::StaleDevices(m)) = err else {
        panic!("expected stale devices: {err:?}")
    };
    assert_eq!((m.missing, m.extra), (vec![new], vec![]));
}

/// Only members send; unknown conversations and devices are not found.
pub async fn non_members_cannot_send(store: Arc<dyn Store>) {
    let (conv, _, all) = group(&*store, 2, 1).await;
    let (_, outsider) = user_with_devices(&*store, 1).await;
    let err = store.append(message(conv, outsider[0], &all)).await;
    assert!(matches!(err, Err(StoreError::NotMember)), "{err:?}");
    let ghost = ConversationId::new(MAX_ID).expect("id");
    let err = store.append(message(ghost, all[0], &all[1..])).await;
    assert!(matches!(err, Err(StoreError::NotFound)), "{err:?}");
    assert_eq!(
        store.inbox_head(all[1]).await.expect("head"),
        InboxPos::ZERO
    );
}

/// After removal a member is sent nothing, and can no longer send.
pub async fn removed_member_gets_nothing_after_removal(store: Arc<dyn Store>) {
    let (conv, users, all) = group(&*store, 3, 1).await;
    store
        .append(message(conv, all[0], &all[1..]))
        .await
        .expect("append");
    assert!(store.remove_member(conv, users[2]).await.expect("remove"));
    assert!(
        !store
            .remove_member(conv, users[2])
            .await
            .expect("remove again")
    );
    assert!(!store.is_member(conv, users[2]).await.expect("is member"));
    assert_eq!(
        store.members(conv).await.expect("members"),
        users[..2].to_vec()
    );

    let err = store.append(message(conv, all[0], &all[1..])).await;
    let Err(StoreError::StaleDevices(m)) = err else {
        panic!("expected stale devices: {err:?}")
    };
    assert_eq!((m.missing, m.extra), (vec![], vec![all[2]]));
    store
        .append(message(conv, all[0], &all[1..2]))
        .await
        .expect("append");
    assert_eq!(store.inbox_head(all[2]).await.expect("head"), pos(1));
    assert_eq!(store.inbox_head(all[1]).await.expect("head"), pos(2));
    let err = store.append(message(conv, all[2], &all[..2])).await;
    assert!(matches!(err, Err(StoreError::NotMember)), "{err:?}");
    assert!(
        store
            .conversations_of(users[2])
            .await
            .expect("conversations")
            .is_empty()
    );
}

/// Concurrent adds at the limit never take a group past it.
pub async fn member_limit_holds_under_concurrent_adds(store: Arc<dyn Store>) {
    let creator = user(&*store).await;
    let conv = store
        .create_group(creator, &[], MAX_GROUP_MEMBERS, NOW)
        .await
        .expect("group")
        .id;
    let mut candidates = Vec::new();
    for _ in 0..MAX_GROUP_MEMBERS + 20 {
        candidates.push(user(&*store).await);
    }
    let mut tasks = JoinSet::new();
    for chunk in candidates.chunks(2) {
        let store = Arc::clone(&store);
        let chunk = chunk.to_vec();
        // A limit above the build's is capped at the build's.
        tasks.spawn(async move { store.add_members(conv, &chunk, 1_000).await });
    }
    let (mut ok, mut full) = (0, 0);
    while let Some(result) = tasks.join_next().await {
        match result.expect("task") {
            Ok(()) => ok += 1,
            Err(StoreError::GroupFull { limit }) => {
                assert_eq!(limit, MAX_GROUP_MEMBERS);
                full += 1;
            }
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    // Pairs all-or-nothing: 49 pairs fit beside the creator, then one slot stays free.
    assert_eq!((ok, full), (49, 11));
    assert_eq!(store.members(conv).await.expect("members").len(), 99);
    let last = candidates.last().copied().expect("candidate");
    if store.is_member(conv, last).await.expect("is member") {
        store.remove_member(conv, last).await.expect("remove");
    }
    let mut tasks = JoinSet::new();
    for &u in &candidates {
        let store = Arc::clone(&store);
        tasks.spawn(async move { store.add_members(conv, &[u], MAX_GROUP_MEMBERS).await });
    }
    while let Some(result) = tasks.join_next().await {
        let _ = result.expect("task");
    }
    assert_eq!(
        store.members(conv).await.expect("members").len(),
        MAX_GROUP_MEMBERS
    );
}

/// Group creation and adds refuse going past the limit as a whole; adding existing
/// members is a no-op; one-to-one membership is fixed.
pub async fn member_limit_is_all_or_nothing(store: Arc<dyn Store>) {
    let mut users = Vec::new();
    for _ in 0..6 {
        users.push(user(&*store).await);
    }
    let too_many = store.create_group(users[0], &users[1..], 5, NOW).await;
    assert!(
        matches!(too_many, Err(StoreError::GroupFull { limit: 5 })),
        "{too_many:?}"
    );
    let conv = store
        .create_group(users[0], &users[1..3], 5, NOW)
        .await
        .expect("group");
    assert_eq!(conv.kind, ConversationKind::Group);
    let err = store.add_members(conv.id, &users[3..6], 5).await;
    assert!(
        matches!(err, Err(StoreError::GroupFull { limit: 5 })),
        "{err:?}"
    );
    assert_eq!(
        store.members(conv.id).await.expect("members"),
        users[..3].to_vec()
    );
    store
        .add_members(conv.id, &[users[1], users[3], users[3], users[4]], 5)
        .await
        .expect("add");
    assert_eq!(
        store.members(conv.id).await.expect("members"),
        users[..5].to_vec()
    );
    let ghost = UserId::new(MAX_ID).expect("id");
    assert!(matches!(
        store.add_members(conv.id, &[ghost], 100).await,
        Err(StoreError::NotFound)
    ));
    let direct = store
        .open_direct(users[0], users[1], NOW)
        .await
        .expect("direct");
    let err = store.add_members(direct.id, &[users[2]], 100).await;
    assert!(matches!(err, Err(StoreError::Invalid(_))), "{err:?}");
    let err = store.remove_member(direct.id, users[1]).await;
    assert!(matches!(err, Err(StoreError::Invalid(_))), "{err:?}");
}

/// One direct conversation per pair, the same from both sides, even when opened at once.
pub async fn direct_conversation_is_one_per_pair_concurrently(store: Arc<dyn Store>) {
    let a = user(&*store).await;
    let b = user(&*store).await;
    let mut tasks = JoinSet::new();
    for i in 0..16 {
        let store = Arc::clone(&store);
        let (x, y) = if i % 2 == 0 { (a, b) } else { (b, a) };
        tasks.spawn(async move { store.open_direct(x, y, NOW).await.expect("open") });
    }
    let mut ids = BTreeSet::new();
    while let Some(conv) = tasks.join_next().await {
        let conv = conv.expect("task");
        assert_eq!(conv.kind, ConversationKind::Direct);
        ids.insert(conv.id);
    }
    assert_eq!(ids.len(), 1);
    let id = ids.first().copied().expect("one ID");
    let mut both = vec![a, b];
    both.sort();
    assert_eq!(store.members(id).await.expect("members"), both);
    let c = user(&*store).await;
    assert_ne!(store.open_direct(a, c, NOW).await.expect("open").id, id);
    let ghost = UserId::new(MAX_ID).expect("id");
    assert!(matches!(
        store.open_direct(a, ghost, NOW).await,
        Err(StoreError::NotFound)
    ));
}

/// Conversation records, membership queries and listings.
pub async fn conversation_records(store: Arc<dyn Store>) {
    let (conv, users, all) = group(&*store, 3, 1).await;
    let record = store
        .conversation(conv)
        .await
        .expect("conversation")
        .expect("exists");
    assert_eq!(
        (record.id, record.kind, record.created_at),
        (conv, ConversationKind::Group, NOW)
    );
    assert_eq!(record.last_message, None);
    assert!(store.is_member(conv, users[1]).await.expect("is member"));
    let outsider = user(&*store).await;
    assert!(!store.is_member(conv, outsider).await.expect("is member"));
    let direct = store
        .open_direct(users[0], users[1], NOW)
        .await
        .expect("direct")
        .id;
    let listed: Vec<_> = store.conversations_of(users[0]).await.expect("list");
    let mut expected = vec![conv, direct];
    expected.sort();
    assert_eq!(listed.iter().map(|c| c.id).collect::<Vec<_>>(), expected);
    assert_eq!(
        store.conversations_of(users[2]).await.expect("list").len(),
        1
    );
    store
        .append(message(conv, all[0], &all[1..]))
        .await
        .expect("append");
    let record = store
        .conversation(conv)
        .await
        .expect("conversation")
        .expect("exists");
    assert_eq!(record.last_message, Some(mid(1)));
    let ghost = ConversationId::new(MAX_ID).expect("id");
    assert_eq!(store.conversation(ghost).await.expect("conversation"), None);
    assert!(matches!(
        store.members(ghost).await,
        Err(StoreError::NotFound)
    ));
    assert!(!store.is_member(ghost, users[0]).await.expect("is member"));
}

/// Inbox pages: empty, one entry, exact page size, past the end, zero limit.
pub async fn inbox_paging_edges(store: Arc<dyn Store>) {
    let (conv, _, all) = group(&*store, 2, 1).await;
    let (sender, reader) = (all[0], all[1]);
    assert!(
        store
            .inbox(reader, InboxPos::ZERO, 5)
            .await
            .expect("inbox")
            .is_empty()
    );
    assert_eq!(
        store.inbox_head(reader).await.expect("head"),
        InboxPos::ZERO
    );

    let first = message(conv, sender, &[reader]);
    store.append(first.clone()).await.expect("append");
    let one = store.inbox(reader, InboxPos::ZERO, 5).await.expect("inbox");
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].pos, pos(1));
    assert_eq!(one[0].header, first.recipients[0].header);
    assert_eq!(one[0].envelope.body, first.body);
    assert_eq!(one[0].envelope.sender, sender);
    assert_eq!(one[0].envelope.client_key, first.client_key);
    assert_eq!(one[0].envelope.sent_at, NOW);
    assert_eq!(one[0].envelope.conversation, conv);
    assert!(
        store
            .inbox(reader, pos(1), 5)
            .await
            .expect("inbox")
            .is_empty()
    );

    for _ in 0..9 {
        store
            .append(message(conv, sender, &[reader]))
            .await
            .expect("append");
    }
    let page = store.inbox(reader, InboxPos::ZERO, 5).await.expect("inbox");
    assert_eq!(
        page.iter().map(|e| e.pos.get()).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    let page = store.inbox(reader, pos(5), 5).await.expect("inbox");
    assert_eq!(
        page.iter().map(|e| e.pos.get()).collect::<Vec<_>>(),
        vec![6, 7, 8, 9, 10]
    );
    assert!(
        store
            .inbox(reader, pos(10), 5)
            .await
            .expect("inbox")
            .is_empty()
    );
    assert!(
        store
            .inbox(reader, pos(1_000), 5)
            .await
            .expect("inbox")
            .is_empty()
    );
    assert!(
        store
            .inbox(reader, InboxPos::ZERO, 0)
            .await
            .expect("inbox")
            .is_empty()
    );
    assert_eq!(
        store.inbox(reader, pos(8), 100).await.expect("inbox").len(),
        2
    );
    assert_eq!(store.inbox_head(reader).await.expect("head"), pos(10));
    // The sender's own inbox is untouched.
    assert_eq!(
        store.inbox_head(sender).await.expect("head"),
        InboxPos::ZERO
    );
}

/// History pages backwards and forwards from any anchor, with every edge.
pub async fn history_paging_edges(store: Arc<dyn Store>) {
    let (conv, _, all) = group(&*store, 2, 1).await;
    let top = mid(MAX_ID);
    let ids = |page: Vec<chat_core::Envelope>| page.iter().map(|e| e.id.get()).collect::<Vec<_>>();
    assert!(
        store
            .history(conv, top, Direction::Before, 5)
            .await
            .expect("history")
            .is_empty()
    );
    assert!(
        store
            .history(conv, mid(1), Direction::After, 5)
            .await
            .expect("history")
            .is_empty()
    );

    store
        .append(message(conv, all[0], &all[1..]))
        .await
        .expect("append");
    assert_eq!(
        ids(store
            .history(conv, top, Direction::Before, 5)
            .await
            .expect("h")),
        vec![1]
    );
    assert!(
        store
            .history(conv, mid(1), Direction::Before, 5)
            .await
            .expect("h")
            .is_empty()
    );
    assert!(
        store
            .history(conv, mid(1), Direction::After, 5)
            .await
            .expect("h")
            .is_empty()
    );

    for _ in 0..9 {
        store
            .append(message(conv, all[1], &all[..1]))
            .await
            .expect("append");
    }
    let before = |anchor, limit| store.history(conv, mid(anchor), Direction::Before, limit);
    assert_eq!(ids(before(11, 3).await.expect("h")), vec![10, 9, 8]);
    assert_eq!(ids(before(4, 3).await.expect("h")), vec![3, 2, 1]);
    assert_eq!(ids(before(3, 3).await.expect("h")), vec![2, 1]);
    assert_eq!(ids(before(6, 0).await.expect("h")), Vec::<u64>::new());
    assert_eq!(ids(before(MAX_ID, 100).await.expect("h")).len(), 10);
    let after = |anchor, limit| store.history(conv, mid(anchor), Direction::After, limit);
    assert_eq!(ids(after(1, 3).await.expect("h")), vec![2, 3, 4]);
    assert_eq!(ids(after(7, 3).await.expect("h")), vec![8, 9, 10]);
    assert_eq!(ids(after(8, 3).await.expect("h")), vec![9, 10]);
    assert_eq!(ids(after(10, 3).await.expect("h")), Vec::<u64>::new());
    assert_eq!(ids(after(500, 3).await.expect("h")), Vec::<u64>::new());
    let ghost = ConversationId::new(MAX_ID).expect("id");
    let err = store.history(ghost, top, Direction::Before, 5).await;
    assert!(matches!(err, Err(StoreError::NotFound)), "{err:?}");
}

/// A message by ID, and absent IDs.
pub async fn message_lookup(store: Arc<dyn Store>) {
    let (conv, _, all) = group(&*store, 2, 1).await;
    let mut sent = Vec::new();
    for _ in 0..3 {
        let msg = message(conv, all[0], &all[1..]);
        store.append(msg.clone()).await.expect("append");
        sent.push(msg);
    }
    let found = store
        .message(conv, mid(2))
        .await
        .expect("message")
        .expect("exists");
    assert_eq!(
        (found.id, found.conversation, found.sender),
        (mid(2), conv, all[0])
    );
    assert_eq!(
        (found.body, found.client_key),
        (sent[1].body.clone(), sent[1].client_key)
    );
    assert_eq!(store.message(conv, mid(4)).await.expect("message"), None);
    let ghost = ConversationId::new(MAX_ID).expect("id");
    assert_eq!(store.message(ghost, mid(1)).await.expect("message"), None);
}

/// Receipt positions only move forward, per user and kind; only members have them.
pub async fn receipts_are_monotonic(store: Arc<dyn Store>) {
    let (conv, users, _) = group(&*store, 3, 1).await;
    let set = |u, kind, n| store.set_receipt(conv, u, kind, mid(n));
    assert_eq!(
        set(users[0], ReceiptKind::Read, 5).await.expect("set"),
        mid(5)
    );
    assert_eq!(
        set(users[0], ReceiptKind::Read, 3).await.expect("set"),
        mid(5)
    );
    assert_eq!(
        set(users[0], ReceiptKind::Delivered, 7).await.expect("set"),
        mid(7)
    );
    assert_eq!(
        set(users[1], ReceiptKind::Delivered, 2).await.expect("set"),
        mid(2)
    );
    assert_eq!(
        set(users[0], ReceiptKind::Read, 6).await.expect("set"),
        mid(6)
    );
    let mut got = store.receipts(conv).await.expect("receipts");
    got.sort_by_key(|r| (r.user, r.kind));
    let got: Vec<_> = got
        .iter()
        .map(|r| (r.user, r.kind, r.up_to.get()))
        .collect();
    assert_eq!(
        got,
        vec![
            (users[0], ReceiptKind::Delivered, 7),
            (users[0], ReceiptKind::Read, 6),
            (users[1], ReceiptKind::Delivered, 2),
        ]
    );
    let outsider = user(&*store).await;
    let err = store
        .set_receipt(conv, outsider, ReceiptKind::Read, mid(1))
        .await;
    assert!(matches!(err, Err(StoreError::NotMember)), "{err:?}");
}

/// The acknowledged cursor only moves forward.
pub async fn cursor_ack_is_monotonic(store: Arc<dyn Store>) {
    let (_, devices) = user_with_devices(&*store, 1).await;
    let d = devices[0];
    assert_eq!(store.cursor(d).await.expect("cursor"), InboxPos::ZERO);
    assert_eq!(store.ack(d, pos(3)).await.expect("ack"), pos(3));
    assert_eq!(store.ack(d, pos(1)).await.expect("ack"), pos(3));
    assert_eq!(store.ack(d, pos(4)).await.expect("ack"), pos(4));
    assert_eq!(store.cursor(d).await.expect("cursor"), pos(4));
    let ghost = DeviceAddress {
        user: d.user,
        device: chat_core::DeviceId::new(MAX_ID).expect("id"),
    };
    assert!(matches!(
        store.ack(ghost, pos(1)).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.cursor(ghost).await,
        Err(StoreError::NotFound)
    ));
}

/// Attachment records and push tokens.
pub async fn attachments_and_push_tokens(store: Arc<dyn Store>) {
    let (conv, _, all) = group(&*store, 2, 1).await;
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&unique().to_be_bytes());
    let meta = AttachmentMeta {
        id: AttachmentId::from_bytes(id),
        conversation: conv,
        uploader: all[0],
        size: 123_456,
        created_at: NOW,
    };
    assert_eq!(store.attachment(meta.id).await.expect("attachment"), None);
    store.insert_attachment(&meta).await.expect("insert");
    assert_eq!(
        store.attachment(meta.id).await.expect("attachment"),
        Some(meta.clone())
    );
    assert!(matches!(
        store.insert_attachment(&meta).await,
        Err(StoreError::Conflict)
    ));

    let d = all[1];
    assert_eq!(store.push_token(d).await.expect("push"), None);
    let t = PushToken {
        platform: "fcm".into(),
        token: "abc".into(),
    };
    store.set_push_token(d, Some(&t)).await.expect("set");
    assert_eq!(store.push_token(d).await.expect("push"), Some(t));
    let t2 = PushToken {
        platform: "apns".into(),
        token: "def".into(),
    };
    store.set_push_token(d, Some(&t2)).await.expect("replace");
    assert_eq!(store.push_token(d).await.expect("push"), Some(t2));
    store.set_push_token(d, None).await.expect("clear");
    assert_eq!(store.push_token(d).await.expect("push"), None);
}
