//! Inbox retention: `trim_inboxes` and `inbox_floor`.

use super::*;

/// `NOW` plus `ms` milliseconds.
fn at(ms: u64) -> Timestamp {
    Timestamp::from_millis(NOW.as_millis() + ms)
}

/// A message like [`message`], stored at `sent_at`.
fn message_at(
    conversation: ConversationId,
    sender: DeviceAddress,
    recipients: &[DeviceAddress],
    sent_at: Timestamp,
) -> NewMessage {
    NewMessage {
        sent_at,
        ..message(conversation, sender, recipients)
    }
}

fn positions(entries: &[chat_core::InboxEntry]) -> Vec<u64> {
    entries.iter().map(|e| e.pos.get()).collect()
}

/// Trimming raises the floor to the highest position deleted and keeps newer entries; the
/// head stays, positions are never reused (even after every entry is gone), and history
/// still has every message.
pub async fn trimming_raises_the_floor_and_never_reuses_positions(store: Arc<dyn Store>) {
    let (conv, _, all) = group(&*store, 2, 1).await;
    let (sender, reader) = (all[0], all[1]);
    assert_eq!(
        store.inbox_floor(reader).await.expect("floor"),
        InboxPos::ZERO
    );
    let mut bodies = Vec::new();
    for i in 0..5 {
        let msg = message_at(conv, sender, &[reader], at(i));
        bodies.push(msg.body.clone());
        store.append(msg).await.expect("append");
    }

    // Messages stored at +0, +1, +2 are before the cutoff; +3 (at it) and +4 stay.
    assert_eq!(store.trim_inboxes(at(3), 100).await.expect("trim"), 3);
    assert_eq!(store.inbox_floor(reader).await.expect("floor"), pos(3));
    assert_eq!(store.inbox_head(reader).await.expect("head"), pos(5));
    let left = store
        .inbox(reader, InboxPos::ZERO, 10)
        .await
        .expect("inbox");
    assert_eq!(positions(&left), vec![4, 5]);
    assert_eq!(left[0].envelope.body, bodies[3]);
    assert_eq!(left[0].header, format!("to {reader:?}").as_bytes());
    let left = store.inbox(reader, pos(3), 10).await.expect("inbox");
    assert_eq!(positions(&left), vec![4, 5]);
    // Nothing else is old enough.
    assert_eq!(store.trim_inboxes(at(3), 100).await.expect("trim"), 0);
    assert_eq!(store.inbox_floor(reader).await.expect("floor"), pos(3));

    // Every entry goes; the head and the position counter stay.
    assert_eq!(store.trim_inboxes(at(1_000), 100).await.expect("trim"), 2);
    assert_eq!(store.inbox_floor(reader).await.expect("floor"), pos(5));
    assert_eq!(store.inbox_head(reader).await.expect("head"), pos(5));
    assert!(
        store
            .inbox(reader, InboxPos::ZERO, 10)
            .await
            .expect("inbox")
            .is_empty()
    );
    let next = store
        .append(message_at(conv, sender, &[reader], at(2_000)))
        .await
        .expect("append");
    assert_eq!(next.deliveries, vec![(reader, pos(6))]);
    assert_eq!(store.inbox_head(reader).await.expect("head"), pos(6));
    assert_eq!(store.inbox_floor(reader).await.expect("floor"), pos(5));
    let left = store
        .inbox(reader, InboxPos::ZERO, 10)
        .await
        .expect("inbox");
    assert_eq!(positions(&left), vec![6]);

    // The messages themselves are never trimmed.
    let history = store
        .history(conv, mid(MAX_ID), Direction::Before, 100)
        .await
        .expect("history");
    assert_eq!(history.len(), 6);
    for (i, body) in bodies.iter().enumerate() {
        let found = store
            .message(conv, mid(i as u64 + 1))
            .await
            .expect("message")
            .expect("still there");
        assert_eq!(&found.body, body);
        assert_eq!(found.sent_at, at(i as u64));
    }
    // The sender's inbox (empty) was never trimmed.
    assert_eq!(
        store.inbox_floor(sender).await.expect("floor"),
        InboxPos::ZERO
    );
    let ghost = DeviceAddress {
        user: reader.user,
        device: chat_core::DeviceId::new(MAX_ID).expect("id"),
    };
    let err = store.inbox_floor(ghost).await;
    assert!(matches!(err, Err(StoreError::NotFound)), "{err:?}");
}

/// `limit` bounds each call, repeated calls finish the job, entries stored at or after the
/// cutoff stay, and devices with nothing old are untouched.
pub async fn trimming_is_batched_and_keeps_newer_entries(store: Arc<dyn Store>) {
    let (conv, _, all) = group(&*store, 3, 1).await;
    let (a, b, c) = (all[0], all[1], all[2]);
    for i in 0..10 {
        store
            .append(message_at(conv, a, &[b, c], at(i)))
            .await
            .expect("append");
    }
    for _ in 0..2 {
        store
            .append(message_at(conv, b, &[a, c], at(20)))
            .await
            .expect("append");
    }
    // Before +6: messages 1..=6 on b and c, 12 entries.
    assert_eq!(store.trim_inboxes(at(6), 0).await.expect("trim"), 0);
    assert_eq!(store.inbox_floor(b).await.expect("floor"), InboxPos::ZERO);
    let mut calls = Vec::new();
    loop {
        let n = store.trim_inboxes(at(6), 5).await.expect("trim");
        assert!(n <= 5, "a call deleted {n} entries, more than its limit");
        calls.push(n);
        if n < 5 {
            break;
        }
    }
    assert_eq!(calls.iter().sum::<u64>(), 12, "calls: {calls:?}");
    assert_eq!(calls.len(), 3, "calls: {calls:?}");

    assert_eq!(store.inbox_floor(b).await.expect("floor"), pos(6));
    assert_eq!(store.inbox_floor(c).await.expect("floor"), pos(6));
    assert_eq!(store.inbox_head(b).await.expect("head"), pos(10));
    assert_eq!(store.inbox_head(c).await.expect("head"), pos(12));
    let left = store.inbox(b, InboxPos::ZERO, 100).await.expect("inbox");
    assert_eq!(positions(&left), (7..=10).collect::<Vec<_>>());
    assert_eq!(left[0].envelope.sent_at, at(6));
    let left = store.inbox(c, InboxPos::ZERO, 100).await.expect("inbox");
    assert_eq!(positions(&left), (7..=12).collect::<Vec<_>>());
    // `a` only has entries from after the cutoff: untouched.
    assert_eq!(store.inbox_floor(a).await.expect("floor"), InboxPos::ZERO);
    let left = store.inbox(a, InboxPos::ZERO, 100).await.expect("inbox");
    assert_eq!(positions(&left), vec![1, 2]);
    assert_eq!(store.inbox_head(a).await.expect("head"), pos(2));
}

/// The floor never moves down: entries whose times are out of position order (clocks of
/// several nodes) are trimmed by time, and a later trim of a lower position keeps the
/// floor where it was.
pub async fn trim_floor_never_moves_down(store: Arc<dyn Store>) {
    let (conv, _, all) = group(&*store, 2, 1).await;
    let (sender, reader) = (all[0], all[1]);
    for ms in [10, 30, 20] {
        store
            .append(message_at(conv, sender, &[reader], at(ms)))
            .await
            .expect("append");
    }
    // Positions 1 (+10) and 3 (+20) are old; 2 (+30) is not.
    assert_eq!(store.trim_inboxes(at(25), 100).await.expect("trim"), 2);
    assert_eq!(store.inbox_floor(reader).await.expect("floor"), pos(3));
    let left = store
        .inbox(reader, InboxPos::ZERO, 10)
        .await
        .expect("inbox");
    assert_eq!(positions(&left), vec![2]);
    assert_eq!(store.trim_inboxes(at(35), 100).await.expect("trim"), 1);
    assert_eq!(store.inbox_floor(reader).await.expect("floor"), pos(3));
    assert_eq!(store.inbox_head(reader).await.expect("head"), pos(3));
}

/// Several trimmers (one per node) running with concurrent appends: every old entry is
/// deleted exactly once, new entries stay, and floors and heads come out exact.
pub async fn concurrent_trims_and_appends_agree(store: Arc<dyn Store>) {
    let (conv, _, all) = group(&*store, 4, 2).await;
    const OLD: usize = 40;
    const NEW_PER_SENDER: usize = 10;
    for i in 0..OLD {
        let sender = all[i % all.len()];
        store
            .append(message_at(conv, sender, &others(&all, sender), at(0)))
            .await
            .expect("append");
    }
    // Each device sent OLD / 8 of the old messages and received the rest.
    let old_per_device = (OLD - OLD / all.len()) as u64;
    let old_entries = old_per_device * all.len() as u64;
    let senders: Vec<DeviceAddress> = all[..4].to_vec();

    let mut tasks = JoinSet::new();
    for _ in 0..4 {
        let store = Arc::clone(&store);
        tasks.spawn(async move {
            let mut total = 0;
            loop {
                let n = store.trim_inboxes(at(1), 7).await.expect("trim");
                total += n;
                if n < 7 {
                    return total;
                }
            }
        });
    }
    for &sender in &senders {
        let store = Arc::clone(&store);
        let recipients = others(&all, sender);
        tasks.spawn(async move {
            for _ in 0..NEW_PER_SENDER {
                store
                    .append(message_at(conv, sender, &recipients, at(10)))
                    .await
                    .expect("append");
            }
            0
        });
    }
    let mut deleted = 0;
    while let Some(n) = tasks.join_next().await {
        deleted += n.expect("task");
    }
    // A trimmer may stop on a short batch another one shared; the next pass finishes.
    while let n @ 1.. = store.trim_inboxes(at(1), 7).await.expect("trim") {
        deleted += n;
    }
    assert_eq!(deleted, old_entries);

    for &d in &all {
        let sent = if senders.contains(&d) {
            NEW_PER_SENDER
        } else {
            0
        };
        let new = (senders.len() * NEW_PER_SENDER - sent) as u64;
        let head = old_per_device + new;
        assert_eq!(store.inbox_head(d).await.expect("head"), pos(head));
        assert_eq!(
            store.inbox_floor(d).await.expect("floor"),
            pos(old_per_device)
        );
        let left = store.inbox(d, InboxPos::ZERO, 1_000).await.expect("inbox");
        assert_eq!(
            positions(&left),
            (old_per_device + 1..=head).collect::<Vec<_>>()
        );
        assert!(left.iter().all(|e| e.envelope.sent_at == at(10)));
    }
    let history = store
        .history(conv, mid(MAX_ID), Direction::Before, 1_000)
        .await
        .expect("history");
    assert_eq!(history.len(), OLD + senders.len() * NEW_PER_SENDER);
}
