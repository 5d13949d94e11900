//! Profiles, the display-name directory and blocks (R-ACC-3, R-ACC-4).

use chat_core::{DisplayName, ProfileUpdate, SearchCursor, SearchPrefix, StatusText};

use super::*;

fn update(name: &str) -> ProfileUpdate {
    ProfileUpdate {
        display_name: DisplayName::new(name).expect("valid name"),
        status: None,
        avatar: None,
    }
}

fn prefix(p: &str) -> SearchPrefix {
    SearchPrefix::new(p).expect("valid prefix")
}

/// Profiles round-trip exactly (64 four-byte characters, status, avatar); a new profile
/// replaces the old one and its directory entry; unknown users are `NotFound`; names typed
/// in another normalization form are the same name and found by either form.
pub async fn profiles_round_trip(store: Arc<dyn Store>) {
    let alice = user(&*store).await;
    assert_eq!(store.profile(alice).await.expect("profile"), None);
    let longest = "😀".repeat(DisplayName::MAX_CHARS);
    let full = ProfileUpdate {
        display_name: DisplayName::new(&longest).expect("64 characters"),
        status: Some(StatusText::new(&"é".repeat(StatusText::MAX_CHARS)).expect("status")),
        avatar: Some(AttachmentId::from_bytes([7; 16])),
    };
    let later = Timestamp::from_millis(NOW.as_millis() + 5);
    let set = store.set_profile(alice, &full, later).await.expect("set");
    let got = store.profile(alice).await.expect("profile").expect("some");
    assert_eq!(got, set);
    assert_eq!(got.display_name.as_str(), longest);
    assert_eq!(got.status, full.status);
    assert_eq!(got.avatar, full.avatar);
    assert_eq!(got.updated_at, later);
    let username = store
        .user(alice)
        .await
        .expect("user")
        .expect("some")
        .username;
    assert_eq!(got.username, username);

    // NFD in, NFC stored; either form finds it.
    let renamed = store
        .set_profile(alice, &update("Zoe\u{308} Q"), NOW)
        .await
        .expect("rename");
    assert_eq!(renamed.display_name.as_str(), "Zoë Q");
    assert_eq!(renamed.status, None);
    assert_eq!(renamed.avatar, None);
    let got = store.profile(alice).await.expect("profile").expect("some");
    assert_eq!(got.display_name, DisplayName::new("Zoë Q").expect("nfc"));
    for p in ["zoë", "ZOE\u{308}", "Zoë q"] {
        let found = store
            .search_profiles(&prefix(p), None, 10)
            .await
            .expect("search");
        assert_eq!(found, vec![got.clone()], "{p:?}");
    }
    // The old name's entry is gone with it.
    let old = store
        .search_profiles(&prefix("😀"), None, 10)
        .await
        .expect("search");
    assert!(old.is_empty());

    let ghost = UserId::new(MAX_ID).expect("id");
    assert!(matches!(
        store.set_profile(ghost, &update("Ghost"), NOW).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(store.profile(ghost).await.expect("profile"), None);
}

/// Prefix search is case-insensitive, ordered by (key, user), keyset-paged exactly: pages
/// of the limit, a last short page, an exact fit with nothing after it, an empty page past
/// the end; names just outside the prefix never match; a cursor from below the range starts
/// at the range.
pub async fn search_pages_by_prefix(store: Arc<dyn Store>) {
    let names = [
        "Ann",
        "ann",
        "ANN b",
        "Anna",
        "Annabel",
        "anne-marie",
        "Annz",
    ];
    let mut expected = Vec::new();
    for name in names {
        let u = user(&*store).await;
        expected.push(store.set_profile(u, &update(name), NOW).await.expect("set"));
    }
    for decoy in ["An", "Anm", "Ano", "Bob", "Zann", "Án"] {
        let u = user(&*store).await;
        store
            .set_profile(u, &update(decoy), NOW)
            .await
            .expect("set decoy");
    }
    expected.sort_by_key(SearchCursor::after);
    assert_eq!(expected.len(), 7);

    // Pages of 3: 3, 3, 1, then past the end.
    let p = prefix("aNn");
    let mut after = None;
    let mut seen = Vec::new();
    let mut sizes = Vec::new();
    loop {
        let page = store
            .search_profiles(&p, after.as_ref(), 3)
            .await
            .expect("page");
        sizes.push(page.len());
        let Some(last) = page.last() else { break };
        after = Some(SearchCursor::after(last));
        seen.extend(page);
    }
    assert_eq!(sizes, [3, 3, 1, 0]);
    assert_eq!(seen, expected);

    // An exact fit: one full page, then nothing.
    let all = store.search_profiles(&p, None, 7).await.expect("all");
    assert_eq!(all, expected);
    let last = SearchCursor::after(all.last().expect("last"));
    let past = store
        .search_profiles(&p, Some(&last), 7)
        .await
        .expect("past");
    assert!(past.is_empty());

    // Narrower prefixes, including one with the trailing space.
    let annab = store
        .search_profiles(&prefix("annab"), None, 10)
        .await
        .expect("annab");
    assert_eq!(annab.len(), 1);
    assert_eq!(annab[0].display_name.as_str(), "Annabel");
    let spaced = store
        .search_profiles(&prefix("ann "), None, 10)
        .await
        .expect("spaced");
    assert_eq!(spaced.len(), 1);
    assert_eq!(spaced[0].display_name.as_str(), "ANN b");
    assert!(
        store
            .search_profiles(&prefix("annzz"), None, 10)
            .await
            .expect("none")
            .is_empty()
    );

    // A cursor below the prefix's range (from a search for "a") starts at the range.
    let below = SearchCursor {
        key: DisplayName::new("An").expect("name").search_key(),
        user: UserId::MIN,
    };
    let page = store
        .search_profiles(&p, Some(&below), 2)
        .await
        .expect("below");
    assert_eq!(page, expected[..2]);
    // Equal keys are ordered by user ID.
    let anns: Vec<UserId> = expected
        .iter()
        .filter(|e| e.display_name.search_key().as_str() == "ann")
        .map(|e| e.user)
        .collect();
    assert_eq!(anns.len(), 2);
    assert!(anns[0] < anns[1]);
}

/// Blocks are one-way, idempotent and listed by user ID; unknown users are `NotFound`,
/// blocking oneself `Invalid`; unblocking removes exactly the one block.
pub async fn blocks_are_one_way(store: Arc<dyn Store>) {
    let (a, b, c) = (
        user(&*store).await,
        user(&*store).await,
        user(&*store).await,
    );
    assert!(store.block(a, c, NOW).await.expect("block"));
    assert!(store.block(a, b, NOW).await.expect("block"));
    assert!(!store.block(a, b, NOW).await.expect("again"));
    assert!(store.block(c, b, NOW).await.expect("block"));
    assert!(store.is_blocked(a, b).await.expect("is"));
    assert!(!store.is_blocked(b, a).await.expect("reverse"));
    let listed: Vec<UserId> = store
        .blocks(a)
        .await
        .expect("blocks")
        .iter()
        .map(|x| x.user)
        .collect();
    let mut want = vec![b, c];
    want.sort();
    assert_eq!(listed, want);
    assert!(
        store
            .blocks(a)
            .await
            .expect("blocks")
            .iter()
            .all(|x| x.created_at == NOW)
    );
    assert!(store.blocks(b).await.expect("blocks").is_empty());
    let mut by = vec![a, c];
    by.sort();
    assert_eq!(store.blocked_by(b).await.expect("by"), by);
    assert!(store.blocked_by(a).await.expect("by").is_empty());

    let ghost = UserId::new(MAX_ID).expect("id");
    assert!(matches!(
        store.block(a, ghost, NOW).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.block(a, a, NOW).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(store.unblock(a, b).await.expect("unblock"));
    assert!(!store.unblock(a, b).await.expect("again"));
    assert!(!store.is_blocked(a, b).await.expect("gone"));
    assert!(store.is_blocked(c, b).await.expect("other block stays"));
    assert_eq!(store.blocked_by(b).await.expect("by"), vec![c]);
}

/// A send from a blocked user in a one-to-one with the blocker is stored (same ID rules,
/// idempotent) and reaches the sender's other devices, but writes nothing into the
/// blocker's inboxes and is recorded as withheld from the blocker, also after an unblock.
/// The recipient check still requires the blocker's devices. Groups and the reverse
/// direction are unaffected.
pub async fn blocked_direct_sends_are_withheld(store: Arc<dyn Store>) {
    let (alice, alice_devices) = user_with_devices(&*store, 2).await;
    let (bob, bob_devices) = user_with_devices(&*store, 2).await;
    let direct = store.open_direct(alice, bob, NOW).await.expect("direct").id;
    let group = store
        .create_group(alice, &[bob], MAX_GROUP_MEMBERS, NOW)
        .await
        .expect("group")
        .id;
    let all: Vec<DeviceAddress> = alice_devices.iter().chain(&bob_devices).copied().collect();
    assert!(store.block(alice, bob, NOW).await.expect("block"));

    // Bob to Alice: stored, withheld from Alice's devices only.
    let sender = bob_devices[0];
    let msg = message(direct, sender, &others(&all, sender));
    let done = store.append(msg.clone()).await.expect("append");
    assert_eq!((done.id, done.duplicate), (mid(1), false));
    assert_eq!(done.deliveries, vec![(bob_devices[1], pos(1))]);
    for &d in &alice_devices {
        assert_eq!(store.inbox_head(d).await.expect("head"), InboxPos::ZERO);
    }
    assert_eq!(
        store.inbox_head(bob_devices[1]).await.expect("head"),
        pos(1)
    );
    assert!(store.append(msg).await.expect("retry").duplicate);
    assert_eq!(
        store
            .withheld(direct, alice, &[mid(1), mid(2)])
            .await
            .expect("withheld"),
        vec![mid(1)]
    );
    assert!(
        store
            .withheld(direct, bob, &[mid(1)])
            .await
            .expect("not from the sender")
            .is_empty()
    );
    // Leaving the blocker's devices out is still stale: the block is not revealed.
    let short = message(direct, sender, &[bob_devices[1]]);
    let Err(StoreError::StaleDevices(m)) = store.append(short).await else {
        panic!("expected stale devices");
    };
    assert_eq!(m.missing, alice_devices);

    // Alice to Bob in the 1:1, and Bob in the group: delivered.
    let to_bob = message(direct, alice_devices[0], &others(&all, alice_devices[0]));
    let done = store.append(to_bob).await.expect("append");
    assert_eq!(done.id, mid(2));
    assert_eq!(done.deliveries.len(), 3);
    let in_group = message(group, sender, &others(&all, sender));
    let done = store.append(in_group).await.expect("group append");
    assert_eq!(done.deliveries.len(), 3);
    assert!(
        store
            .withheld(group, alice, &[done.id])
            .await
            .expect("withheld")
            .is_empty()
    );
    assert_eq!(
        store.inbox_head(alice_devices[0]).await.expect("head"),
        pos(1)
    );

    // After unblocking, new messages arrive; the withheld one stays withheld.
    assert!(store.unblock(alice, bob).await.expect("unblock"));
    let after = message(direct, sender, &others(&all, sender));
    let done = store.append(after).await.expect("append");
    assert_eq!(done.id, mid(3));
    assert_eq!(done.deliveries.len(), 3);
    assert_eq!(
        store
            .withheld(direct, alice, &[mid(1), mid(2), mid(3)])
            .await
            .expect("withheld"),
        vec![mid(1)]
    );
    let entries = store
        .inbox(alice_devices[1], InboxPos::ZERO, 10)
        .await
        .expect("inbox");
    let direct_ids: Vec<MessageId> = entries
        .iter()
        .filter(|e| e.envelope.conversation == direct)
        .map(|e| e.envelope.id)
        .collect();
    assert_eq!(direct_ids, [mid(2), mid(3)]);
    assert_eq!(entries.len(), 3, "the group message too");
}
