//! Appends, idempotency, device coverage, inboxes, history, receipts and cursors.

use super::*;

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
    let record = conversation_record(&*store, conv).await;
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

/// `append_all` from several senders at once: each list's messages get IDs in list order, a
/// refused message (stale devices) and a retry of an earlier key in the same list are
/// answered alone, and the conversation's IDs stay gapless.
pub async fn append_all_keeps_order_and_answers_each(store: Arc<dyn Store>) {
    let (conv, _, all) = group(&*store, 3, 1).await;
    const ROUNDS: usize = 4;
    const PER_LIST: usize = 8;
    let mut tasks = JoinSet::new();
    for &sender in &all {
        let store = Arc::clone(&store);
        let recipients = others(&all, sender);
        tasks.spawn(async move {
            let mut written = Vec::new();
            for _ in 0..ROUNDS {
                let mut list: Vec<NewMessage> = (0..PER_LIST)
                    .map(|_| message(conv, sender, &recipients))
                    .collect();
                list[3].recipients.pop();
                list[6] = list[1].clone();
                let results = store.append_all(list).await;
                assert_eq!(results.len(), PER_LIST, "one result per message");
                for (i, result) in results.into_iter().enumerate() {
                    match (i, result) {
                        (3, Err(StoreError::StaleDevices(m))) => assert_eq!(m.missing.len(), 1),
                        (3, other) => panic!("expected stale devices: {other:?}"),
                        (6, Ok(done)) => {
                            assert!(done.duplicate, "a retry within the list");
                            assert_eq!(Some(&done.id.get()), written.get(written.len() - 4));
                        }
                        (_, Ok(done)) => {
                            assert!(!done.duplicate);
                            written.push(done.id.get());
                        }
                        (_, Err(err)) => panic!("append {i}: {err:?}"),
                    }
                }
            }
            written
        });
    }
    let mut ids = Vec::new();
    while let Some(written) = tasks.join_next().await {
        let written = written.expect("task");
        assert!(
            written.windows(2).all(|w| w[0] < w[1]),
            "a list's IDs follow its order: {written:?}"
        );
        ids.extend(written);
    }
    ids.sort_unstable();
    let total = (all.len() * ROUNDS * (PER_LIST - 2)) as u64;
    assert_eq!(ids, (1..=total).collect::<Vec<_>>(), "gapless");
    for &d in &all {
        let entries = store.inbox(d, InboxPos::ZERO, 10_000).await.expect("inbox");
        assert_eq!(entries.len() as u64, total / 3 * 2);
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

/// A client key is the sending device's for one message: reusing it for another
/// conversation is refused, not answered with the first message's ID (which is in a
/// conversation the retry did not name), and writes nothing.
pub async fn client_key_reuse_in_another_conversation_is_refused(store: Arc<dyn Store>) {
    let (first_conv, _, all) = group(&*store, 2, 1).await;
    let sender = all[0];
    let first = message(first_conv, sender, &others(&all, sender));
    store.append(first.clone()).await.expect("append");

    let second_conv = store
        .create_group(sender.user, &[all[1].user], MAX_GROUP_MEMBERS, NOW)
        .await
        .expect("group")
        .id;
    let mut reuse = message(second_conv, sender, &others(&all, sender));
    reuse.client_key = first.client_key;
    assert!(matches!(
        store.append(reuse).await,
        Err(StoreError::ClientKeyReused)
    ));
    let history = store
        .history(second_conv, mid(MAX_ID), Direction::Before, 10)
        .await
        .expect("history");
    assert!(history.is_empty(), "nothing written");
    assert_eq!(store.inbox_head(all[1]).await.expect("head"), pos(1));
    // The retry in the first conversation is still the duplicate it always was.
    assert!(store.append(first).await.expect("retry").duplicate);
}

/// The write probe commits on a healthy store and changes nothing visible.
pub async fn probe_write_commits(store: Arc<dyn Store>) {
    let (conv, _, all) = group(&*store, 2, 1).await;
    store.probe_write().await.expect("probe");
    store.probe_write().await.expect("probe again");
    let done = store
        .append(message(conv, all[0], &all[1..]))
        .await
        .expect("append after probes");
    assert_eq!(done.id, mid(1));
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
    let record = conversation_record(&*store, conv).await;
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
    store
        .change_group(
            conv,
            users[0],
            &GroupOp::Remove(users[2]),
            MAX_GROUP_MEMBERS,
            None,
        )
        .await
        .expect("remove");
    let again = store
        .change_group(
            conv,
            users[0],
            &GroupOp::Remove(users[2]),
            MAX_GROUP_MEMBERS,
            None,
        )
        .await;
    assert!(
        matches!(again, Err(StoreError::Group(GroupRuleError::UnknownMember(u))) if u == users[2]),
        "{again:?}"
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

/// A batch of acknowledgements moves each device's cursor as single acks would: forward
/// only, the highest of a device's entries, devices that do not exist (or are named with
/// the wrong user) skipped, batches larger than a backend's chunk included.
pub async fn batched_acks_move_each_cursor_forward(store: Arc<dyn Store>) {
    let (_, a) = user_with_devices(&*store, 2).await;
    let (_, b) = user_with_devices(&*store, 1).await;
    let (a1, a2, b1) = (a[0], a[1], b[0]);
    store.ack(a2, pos(10)).await.expect("ack");
    store.ack_all(&[]).await.expect("empty batch");
    let ghost = DeviceAddress {
        user: a1.user,
        device: chat_core::DeviceId::new(MAX_ID).expect("id"),
    };
    let wrong_user = DeviceAddress {
        user: b1.user,
        device: a1.device,
    };
    let mut batch = vec![
        (a1, pos(5)),
        (ghost, pos(7)),
        (a2, pos(4)),
        (wrong_user, pos(99)),
    ];
    // More entries than any backend sends in one statement, the highest in the middle.
    batch.extend((1..=600).map(|n| (b1, pos(if n == 300 { 1_000 } else { n }))));
    batch.push((a1, pos(3)));
    store.ack_all(&batch).await.expect("batch");
    assert_eq!(store.cursor(a1).await.expect("cursor"), pos(5));
    assert_eq!(
        store.cursor(a2).await.expect("cursor"),
        pos(10),
        "never backwards"
    );
    assert_eq!(store.cursor(b1).await.expect("cursor"), pos(1_000));
}

/// Batched acks running while appends write to the same devices: neither fails (on
/// PostgreSQL both lock device rows, so a lock-order deadlock would show here), and every
/// cursor ends where the last batch put it.
pub async fn batched_acks_and_appends_run_together(store: Arc<dyn Store>) {
    let (conv, _, all) = group(&*store, 4, 2).await;
    const PER_SENDER: usize = 15;
    const ROUNDS: u64 = 30;
    let mut tasks = JoinSet::new();
    for &sender in all.iter().step_by(2) {
        let store = Arc::clone(&store);
        let recipients = others(&all, sender);
        tasks.spawn(async move {
            for _ in 0..PER_SENDER {
                store
                    .append(message(conv, sender, &recipients))
                    .await
                    .expect("append beside acks");
            }
        });
    }
    let acker = {
        let store = Arc::clone(&store);
        let all = all.clone();
        tokio::spawn(async move {
            for round in 1..=ROUNDS {
                // Devices in a different order each round, as several connections would.
                let mut batch: Vec<_> = all.iter().map(|&d| (d, pos(round))).collect();
                batch.rotate_left(round as usize % all.len());
                store.ack_all(&batch).await.expect("acks beside appends");
            }
        })
    };
    while let Some(done) = tasks.join_next().await {
        done.expect("sender");
    }
    acker.await.expect("acker");
    let total = (all.len() / 2 * PER_SENDER) as u64;
    let senders: Vec<_> = all.iter().step_by(2).copied().collect();
    for &d in &all {
        assert_eq!(store.cursor(d).await.expect("cursor"), pos(ROUNDS));
        let received = if senders.contains(&d) {
            total - PER_SENDER as u64
        } else {
            total
        };
        assert_eq!(store.inbox_head(d).await.expect("head"), pos(received));
    }
    let record = conversation_record(&*store, conv).await;
    assert_eq!(
        record.last_message,
        Some(mid(total)),
        "every append committed"
    );
}
