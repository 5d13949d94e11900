//! Replies, edits, deletes and reactions (R-MSG-7): the content codec and the [`Timeline`]
//! aggregation, against a model computed from the set of messages.

use std::collections::{BTreeMap, BTreeSet};

use chat_core::*;
use proptest::prelude::*;

fn mid(n: u64) -> MessageId {
    MessageId::new(n).unwrap()
}

fn uid(n: u64) -> UserId {
    UserId::new(n).unwrap()
}

fn text(body: &str) -> Content {
    Content::Text(Text {
        body: body.into(),
        reply_to: None,
    })
}

fn edit(target: u64, body: &str) -> Content {
    Content::Edit(Edit {
        target: mid(target),
        body: body.into(),
    })
}

fn react(target: u64, emoji: &str, remove: bool) -> Content {
    Content::Reaction(Reaction {
        target: mid(target),
        emoji: emoji.into(),
        remove,
    })
}

fn delete(target: u64) -> Content {
    Content::Delete(Delete {
        target: mid(target),
    })
}

const EMOJI: [&str; 3] = ["👍", "❤️", "👨‍👩‍👧"];

/// Standalone messages 1..=roots (sent by users 1..=3, some texts, one attachment-like
/// unknown), then relations with IDs after them, each pointing at any earlier ID, sent by any
/// of users 1..=3.
fn any_conversation() -> impl Strategy<Value = Vec<(MessageId, UserId, Content)>> {
    (
        1u64..4,
        prop::collection::vec((1u64..4, 0u8..4, 0u64..8, 0usize..3, any::<bool>()), 0..24),
    )
        .prop_map(|(roots, relations)| {
            let mut msgs = Vec::new();
            for id in 1..=roots {
                let content = if id == 3 {
                    Content::Unknown { kind: 99 }
                } else {
                    text(&format!("original {id}"))
                };
                msgs.push((mid(id), uid(id), content));
            }
            for (i, (sender, kind, target, emoji, remove)) in relations.into_iter().enumerate() {
                let id = roots + 1 + i as u64;
                // Mostly at a standalone message, sometimes at a relation or a missing one.
                let target = (target % id).max(1);
                let content = match kind {
                    0 => edit(target, &format!("edit {id}")),
                    1 => delete(target),
                    _ => react(target, EMOJI[emoji], remove),
                };
                msgs.push((mid(id), uid(sender), content));
            }
            msgs
        })
}

/// The rules of R-MSG-7 applied to the set of messages directly.
fn model(msgs: &[(MessageId, UserId, Content)]) -> Vec<MessageView> {
    let standalone: BTreeMap<MessageId, (UserId, &Content)> = msgs
        .iter()
        .filter(|(_, _, c)| c.target().is_none())
        .map(|(id, s, c)| (*id, (*s, c)))
        .collect();
    standalone
        .iter()
        .map(|(&id, &(sender, content))| {
            let mine = |target: MessageId, from: UserId| target == id && from == sender;
            let deleted_by = msgs
                .iter()
                .filter(|(_, s, c)| matches!(c, Content::Delete(d) if mine(d.target, *s)))
                .map(|(m, _, _)| *m)
                .min();
            if deleted_by.is_some() {
                return MessageView {
                    id,
                    sender,
                    content: None,
                    edited_by: None,
                    deleted_by,
                    reactions: BTreeMap::new(),
                };
            }
            let last_edit = msgs
                .iter()
                .filter_map(|(m, s, c)| match c {
                    Content::Edit(e) if mine(e.target, *s) => Some((*m, e.body.clone())),
                    _ => None,
                })
                .max();
            let (content, edited_by) = match (content, last_edit) {
                (Content::Text(t), Some((m, body))) => (
                    Content::Text(Text {
                        body,
                        reply_to: t.reply_to,
                    }),
                    Some(m),
                ),
                (c, _) => (c.clone(), None),
            };
            let mut latest: BTreeMap<(UserId, String), (MessageId, bool)> = BTreeMap::new();
            for (m, s, c) in msgs {
                if let Content::Reaction(r) = c
                    && r.target == id
                {
                    let slot = latest
                        .entry((*s, r.emoji.clone()))
                        .or_insert((*m, r.remove));
                    if *m > slot.0 {
                        *slot = (*m, r.remove);
                    }
                }
            }
            let mut reactions: BTreeMap<String, BTreeSet<UserId>> = BTreeMap::new();
            for ((user, emoji), (_, remove)) in latest {
                if !remove {
                    reactions.entry(emoji).or_default().insert(user);
                }
            }
            MessageView {
                id,
                sender,
                content: Some(content),
                edited_by,
                deleted_by: None,
                reactions,
            }
        })
        .collect()
}

fn feed(msgs: impl IntoIterator<Item = (MessageId, UserId, Content)>) -> Timeline {
    let mut timeline = Timeline::new();
    for (id, sender, content) in msgs {
        timeline.handle_message(id, sender, content);
    }
    timeline
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any permutation of a conversation's messages, with any of them delivered twice,
    /// aggregates to the same state, and that state is the model's.
    #[test]
    fn any_order_and_duplication_aggregates_the_same(
        (msgs, shuffled) in any_conversation().prop_flat_map(|msgs| {
            let n = msgs.len();
            (Just(msgs.clone()), prop::collection::vec(0..n, 0..8))
                .prop_flat_map(|(msgs, dups)| {
                    let mut all = msgs.clone();
                    all.extend(dups.iter().map(|&i| msgs[i].clone()));
                    (Just(msgs), Just(all).prop_shuffle())
                })
        })
    ) {
        let expected = model(&msgs);
        let in_order: Vec<MessageView> = feed(msgs.clone()).messages().collect();
        prop_assert_eq!(&in_order, &expected);
        let timeline = feed(shuffled);
        let any_order: Vec<MessageView> = timeline.messages().collect();
        prop_assert_eq!(&any_order, &expected);
        prop_assert_eq!(timeline.dropped_orphans(), 0);
    }

    /// Edits and deletes by anyone but the sender change nothing, in any order.
    #[test]
    fn only_the_sender_edits_or_deletes(
        others in prop::collection::vec((2u64..6, any::<bool>()), 1..10),
        seed in prop::collection::vec(any::<prop::sample::Index>(), 1..10),
    ) {
        let mut msgs = vec![(mid(1), uid(1), text("hello"))];
        for (i, (sender, is_edit)) in others.into_iter().enumerate() {
            let id = 2 + i as u64;
            let content = if is_edit { edit(1, "forged") } else { delete(1) };
            msgs.push((mid(id), uid(sender), content));
        }
        // Rotate the original somewhere among its forged relations.
        let at = seed[0].index(msgs.len());
        msgs.rotate_left(at);
        let view = feed(msgs).message(mid(1)).unwrap();
        prop_assert_eq!(view.content, Some(text("hello")));
        prop_assert_eq!(view.edited_by, None);
        prop_assert_eq!(view.deleted_by, None);
    }

    /// Every content round-trips through its encoding.
    #[test]
    fn relations_round_trip(
        target in 1u64..1000,
        body in ".{0,40}",
        emoji in prop::sample::select(EMOJI.to_vec()),
        remove in any::<bool>(),
    ) {
        for content in [edit(target, &body), delete(target), react(target, emoji, remove)] {
            let bytes = content.encode().unwrap();
            prop_assert_eq!(Content::decode(&bytes), Ok(content));
        }
    }
}

#[test]
fn latest_edit_by_id_wins_and_reply_is_kept() {
    let mut timeline = Timeline::new();
    let reply = Content::Text(Text {
        body: "first".into(),
        reply_to: Some(mid(1)),
    });
    assert_eq!(
        timeline.handle_message(mid(5), uid(1), edit(2, "late")),
        None
    );
    assert_eq!(timeline.handle_message(mid(2), uid(1), reply), Some(mid(2)));
    assert_eq!(
        timeline.handle_message(mid(3), uid(1), edit(2, "early")),
        None
    );
    let view = timeline.message(mid(2)).unwrap();
    assert_eq!(
        view.content,
        Some(Content::Text(Text {
            body: "late".into(),
            reply_to: Some(mid(1)),
        }))
    );
    assert_eq!(view.edited_by, Some(mid(5)));
    assert_eq!(timeline.orphans(), 0);
}

#[test]
fn reactions_count_once_and_can_be_removed() {
    let mut timeline = Timeline::new();
    timeline.handle_message(mid(1), uid(1), text("hi"));
    assert_eq!(
        timeline.handle_message(mid(2), uid(2), react(1, "👍", false)),
        Some(mid(1))
    );
    assert_eq!(
        timeline.handle_message(mid(3), uid(2), react(1, "👍", false)),
        Some(mid(1))
    );
    assert_eq!(
        timeline.handle_message(mid(3), uid(2), react(1, "👍", false)),
        None
    );
    timeline.handle_message(mid(4), uid(3), react(1, "👍", false));
    let view = timeline.message(mid(1)).unwrap();
    assert_eq!(view.reactions["👍"], BTreeSet::from([uid(2), uid(3)]));
    timeline.handle_message(mid(5), uid(2), react(1, "👍", true));
    let view = timeline.message(mid(1)).unwrap();
    assert_eq!(view.reactions["👍"], BTreeSet::from([uid(3)]));
}

#[test]
fn delete_hides_edits_and_reactions_and_forgets_the_text() {
    let mut timeline = Timeline::new();
    timeline.handle_message(mid(1), uid(1), text("secret"));
    timeline.handle_message(mid(2), uid(1), edit(1, "edited"));
    timeline.handle_message(mid(3), uid(2), react(1, "👍", false));
    assert_eq!(
        timeline.handle_message(mid(4), uid(1), delete(1)),
        Some(mid(1))
    );
    assert_eq!(
        timeline.handle_message(mid(5), uid(1), edit(1, "again")),
        None
    );
    assert_eq!(
        timeline.handle_message(mid(6), uid(3), react(1, "👍", false)),
        None
    );
    let view = timeline.message(mid(1)).unwrap();
    assert_eq!(view.content, None);
    assert_eq!(view.deleted_by, Some(mid(4)));
    assert!(view.reactions.is_empty());
    assert!(!format!("{timeline:?}").contains("secret"));
}

#[test]
fn relations_pointing_forward_or_at_non_texts_are_ignored() {
    let mut timeline = Timeline::new();
    assert_eq!(
        timeline.handle_message(mid(2), uid(1), edit(2, "self")),
        None
    );
    assert_eq!(
        timeline.handle_message(mid(3), uid(1), edit(9, "future")),
        None
    );
    assert_eq!(timeline.orphans(), 0);
    timeline.handle_message(mid(4), uid(1), Content::Unknown { kind: 77 });
    assert_eq!(
        timeline.handle_message(mid(5), uid(1), edit(4, "text")),
        None
    );
    assert_eq!(
        timeline.message(mid(4)).unwrap().content,
        Some(Content::Unknown { kind: 77 })
    );
}

#[test]
fn orphans_are_capped_dropping_the_oldest_target() {
    let mut timeline = Timeline::with_max_orphans(2);
    timeline.handle_message(mid(10), uid(1), edit(3, "three"));
    timeline.handle_message(mid(11), uid(1), edit(1, "one"));
    timeline.handle_message(mid(12), uid(1), edit(2, "two"));
    assert_eq!(timeline.orphans(), 2);
    assert_eq!(timeline.dropped_orphans(), 1);
    for id in 1..=3 {
        timeline.handle_message(mid(id), uid(1), text("original"));
    }
    let bodies: Vec<Option<Content>> = timeline.messages().map(|v| v.content).collect();
    assert_eq!(
        bodies,
        vec![
            Some(text("original")),
            Some(text("two")),
            Some(text("three"))
        ]
    );
    assert_eq!(timeline.orphans(), 0);
}

#[test]
fn reactions_are_bounded_and_texts_in_edits_too() {
    assert_eq!(react(1, "", false).encode(), Err(ContentError::Reaction));
    let long = "x".repeat(MAX_REACTION_BYTES + 1);
    assert_eq!(react(1, &long, false).encode(), Err(ContentError::Reaction));
    assert!(
        react(1, &"x".repeat(MAX_REACTION_BYTES), false)
            .encode()
            .is_ok()
    );
    let huge = "y".repeat(limits::MAX_TEXT_CHARS + 1);
    assert!(matches!(
        edit(1, &huge).encode(),
        Err(ContentError::TextTooLong { .. })
    ));
}

#[test]
fn relation_encodings_are_stable() {
    let hex = |c: Content| hex::encode(c.encode().unwrap());
    assert_eq!(hex(edit(7, "hi")), "8204a2000701626869");
    assert_eq!(hex(delete(7)), "8205a10007");
    assert_eq!(hex(react(7, "+", true)), "8206a3000701612b02f5");
}
