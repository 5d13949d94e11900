//! Accounts, devices, tokens, keys, attachments and push tokens.

use super::*;

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

/// Fallback bundles are what a claim returns minus the one-time prekey, and take nothing
/// from any pool; devices without published keys get none.
pub async fn fallback_bundles_claim_nothing(store: Arc<dyn Store>) {
    let (bob, devices) = user_with_devices(&*store, 3).await;
    assert!(
        store
            .fallback_bundles(bob)
            .await
            .expect("fallback")
            .is_empty()
    );
    for (i, device) in devices.iter().take(2).enumerate() {
        let n = u32::try_from(i).expect("small");
        store
            .set_device_keys(*device, &keys(n))
            .await
            .expect("keys");
        store
            .add_one_time_prekeys(*device, &one_time(10 * n..10 * n + 3))
            .await
            .expect("otk");
    }
    for _ in 0..5 {
        let mut bundles = store.fallback_bundles(bob).await.expect("fallback");
        bundles.sort_by_key(|b| b.device);
        assert_eq!(bundles.len(), 2);
        for (i, bundle) in bundles.iter().enumerate() {
            let n = u32::try_from(i).expect("small");
            assert_eq!(bundle.device, devices[i]);
            assert_eq!(bundle.identity, keys(n).identity);
            assert_eq!(bundle.signed_prekey, keys(n).signed_prekey);
            assert_eq!(bundle.one_time_prekey, None);
        }
    }
    for device in devices.iter().take(2) {
        assert_eq!(
            store.one_time_prekey_count(*device).await.expect("count"),
            3
        );
    }
    let mut claimed = store.claim_bundles(bob).await.expect("claim");
    claimed.sort_by_key(|b| b.device);
    assert_eq!(claimed[0].one_time_prekey, Some(one_time(0..1).remove(0)));
    assert_eq!(claimed[1].one_time_prekey, Some(one_time(10..11).remove(0)));
}

/// A new identity empties the one-time prekey pool (its keys belong to the old identity);
/// replacing only the signed prekey keeps it.
pub async fn new_identity_empties_the_prekey_pool(store: Arc<dyn Store>) {
    let (bob, devices) = user_with_devices(&*store, 1).await;
    let device = devices[0];
    store.set_device_keys(device, &keys(1)).await.expect("keys");
    store
        .add_one_time_prekeys(device, &one_time(0..4))
        .await
        .expect("otk");
    store
        .set_device_keys(device, &keys(2))
        .await
        .expect("new signed prekey");
    assert_eq!(store.one_time_prekey_count(device).await.expect("count"), 4);
    let rekeyed = DeviceKeys {
        identity: Bytes::from_static(b"a new identity"),
        ..keys(3)
    };
    store
        .set_device_keys(device, &rekeyed)
        .await
        .expect("new identity");
    assert_eq!(store.one_time_prekey_count(device).await.expect("count"), 0);
    let bundles = store.claim_bundles(bob).await.expect("claim");
    assert_eq!(
        (
            bundles[0].identity.clone(),
            bundles[0].one_time_prekey.clone()
        ),
        (rekeyed.identity.clone(), None)
    );
    store
        .add_one_time_prekeys(device, &one_time(10..12))
        .await
        .expect("otk");
    let bundles = store.claim_bundles(bob).await.expect("claim");
    assert_eq!(bundles[0].one_time_prekey, Some(one_time(10..11).remove(0)));
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

/// Signed device lists (issue 16): versions only grow, the list decides which devices are
/// linked, a device that logs in to a user with a list starts unlinked and gets nothing, and
/// link payloads reach only their device.
pub async fn device_lists_decide_which_devices_are_linked(store: Arc<dyn Store>) {
    let (alice, devices) = user_with_devices(&*store, 1).await;
    let first = devices[0];
    let listed = |version: u64| DeviceListRecord {
        version,
        list: Bytes::from(format!("list v{version}")),
    };
    let linked = |store: Arc<dyn Store>| async move {
        let devices = store.devices(alice).await.expect("devices");
        devices
            .iter()
            .filter(|d| d.linked)
            .map(|d| d.address)
            .collect::<Vec<_>>()
    };
    assert!(store.devices(alice).await.expect("devices")[0].linked);
    assert_eq!(store.device_list(alice).await.expect("list"), None);

    store
        .set_device_list(alice, &listed(1), &[first.device])
        .await
        .expect("first list");
    assert_eq!(
        store.device_list(alice).await.expect("list"),
        Some(listed(1))
    );
    // With a list, a new device waits unlinked, and a message to alice need not cover it.
    let second = store
        .add_device(alice, "laptop", token(), NOW)
        .await
        .expect("device");
    assert!(!second.linked);
    assert_eq!(linked(store.clone()).await, vec![first]);
    let (bob, bobs) = user_with_devices(&*store, 1).await;
    let conv = store.open_direct(alice, bob, NOW).await.expect("direct");
    store
        .append(message(conv.id, bobs[0], &[first]))
        .await
        .expect("the unlinked device is not a recipient");
    let with_unlinked = store
        .append(message(conv.id, bobs[0], &[first, second.address]))
        .await;
    let Err(StoreError::StaleDevices(m)) = with_unlinked else {
        panic!("expected stale devices: {with_unlinked:?}")
    };
    assert_eq!(m.extra, vec![second.address]);
    assert_eq!(
        store.inbox_head(second.address).await.expect("head"),
        InboxPos::ZERO
    );
    // An unlinked device may not send.
    assert!(matches!(
        store
            .append(message(conv.id, second.address, &[bobs[0]]))
            .await,
        Err(StoreError::NotLinked)
    ));

    // A link payload reaches only its device; another user's device is not found.
    assert_eq!(
        store.link_payload(second.address).await.expect("payload"),
        None
    );
    store
        .set_link_payload(second.address, Bytes::from_static(b"sealed"))
        .await
        .expect("payload");
    assert_eq!(
        store.link_payload(second.address).await.expect("payload"),
        Some(Bytes::from_static(b"sealed"))
    );
    let not_alices = DeviceAddress {
        user: bob,
        device: second.address.device,
    };
    assert!(matches!(
        store
            .set_link_payload(not_alices, Bytes::from_static(b"x"))
            .await,
        Err(StoreError::NotFound)
    ));

    // Version 2 links the second device and unlinks the first; an equal or lower version is
    // refused and changes nothing.
    store
        .set_device_list(alice, &listed(2), &[second.address.device])
        .await
        .expect("second list");
    assert_eq!(linked(store.clone()).await, vec![second.address]);
    for stale in [1, 2] {
        assert!(matches!(
            store
                .set_device_list(alice, &listed(stale), &[first.device])
                .await,
            Err(StoreError::Conflict)
        ));
    }
    assert_eq!(
        store.device_list(alice).await.expect("list"),
        Some(listed(2))
    );
    assert_eq!(linked(store.clone()).await, vec![second.address]);
    store
        .append(message(conv.id, bobs[0], &[second.address]))
        .await
        .expect("now the second device is the recipient");
    assert_eq!(
        store.inbox_head(second.address).await.expect("head"),
        pos(1)
    );
}
