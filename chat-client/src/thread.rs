//! Relations in the client (R-MSG-7): a message's current state after its edits, reactions
//! and delete, and what storing a message changes besides history.
//!
//! The aggregation rules live in [`chat_core::Timeline`]; this module feeds it from the
//! store. A message's view is computed from the message and the relations that point at it
//! (the store indexes them by target), so nothing derived is kept that could drift: the
//! search index is the one derived copy, and it is updated in the same commit as the message
//! that changed it.

use chat_core::{
    Content, ConversationId, DeviceAddress, MessageId, MessageView, Timeline, Timestamp,
};

use crate::error::Result;
use crate::store::{ClientStore, SearchWrite, StoredMessage, Write};

/// A message as a conversation view shows it: its current state with who sent it and when.
#[derive(Clone, PartialEq, Eq)]
pub struct TimelineItem {
    /// Its conversation.
    pub conversation: ConversationId,
    /// The sending device.
    pub sender: DeviceAddress,
    /// When the server stored it.
    pub sent_at: Timestamp,
    /// Its current content, edits, reactions and tombstone.
    pub view: MessageView,
}

impl TimelineItem {
    /// Its ID.
    pub fn id(&self) -> MessageId {
        self.view.id
    }

    /// The text to show, if it is a text (after its latest edit) and not deleted.
    pub fn text(&self) -> Option<&str> {
        match &self.view.content {
            Some(Content::Text(t)) => Some(&t.body),
            _ => None,
        }
    }

    /// Whether it was deleted by its sender.
    pub fn is_deleted(&self) -> bool {
        self.view.deleted_by.is_some()
    }

    /// Whether its text was edited.
    pub fn is_edited(&self) -> bool {
        self.view.edited_by.is_some()
    }

    pub(crate) fn new(message: &StoredMessage, view: MessageView) -> Self {
        Self {
            conversation: message.conversation,
            sender: message.sender,
            sent_at: message.sent_at,
            view,
        }
    }
}

impl std::fmt::Debug for TimelineItem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print plaintext.
        f.debug_struct("TimelineItem")
            .field("conversation", &self.conversation)
            .field("id", &self.view.id)
            .field("sender", &self.sender)
            .field("edited", &self.is_edited())
            .field("deleted", &self.is_deleted())
            .field("reactions", &self.view.reactions.len())
            .finish_non_exhaustive()
    }
}

fn content(m: &StoredMessage) -> Content {
    Content::decode(&m.plaintext).unwrap_or(Content::Unknown { kind: 0 })
}

/// Whether relation `r` is meant for `message`: a relation that names its target's client
/// key (the sender-chosen ID, bound inside the encryption) applies only to the message with
/// that key, so a server that numbers messages differently for this device cannot aim an
/// edit, delete or reaction at another message.
fn aimed_at(r: &StoredMessage, message: &StoredMessage) -> bool {
    Content::target_key(&r.plaintext).is_none_or(|key| key == message.client_key)
}

/// The view of `message` with `relations` (those pointing at it) applied.
pub(crate) fn view(message: &StoredMessage, relations: &[StoredMessage]) -> MessageView {
    let mut timeline = Timeline::with_max_orphans(0);
    timeline.handle_message(message.id, message.sender.user, content(message));
    for r in relations.iter().filter(|r| aimed_at(r, message)) {
        timeline.handle_message(r.id, r.sender.user, content(r));
    }
    timeline.message(message.id).unwrap_or(MessageView {
        id: message.id,
        sender: message.sender.user,
        content: None,
        edited_by: None,
        deleted_by: None,
        reactions: Default::default(),
    })
}

/// The text a message is found by in search: a text's current body, an attachment's name
/// and caption; nothing for a deleted message.
pub(crate) fn searchable(view: &MessageView) -> Option<String> {
    match view.content.as_ref()? {
        Content::Text(t) => Some(t.body.clone()),
        Content::Attachment(a) => {
            let parts: Vec<&str> = [a.name.as_deref(), a.caption.as_deref()]
                .into_iter()
                .flatten()
                .collect();
            (!parts.is_empty()).then(|| parts.join(" "))
        }
        _ => None,
    }
}

/// The current view of one stored message.
pub(crate) fn item(
    store: &dyn ClientStore,
    conversation: ConversationId,
    id: MessageId,
) -> Result<Option<TimelineItem>> {
    store
        .message(conversation, id)?
        .map(|m| item_of(store, &m))
        .transpose()
}

/// The current view of a stored message, with the relations the store holds for it.
pub(crate) fn item_of(store: &dyn ClientStore, message: &StoredMessage) -> Result<TimelineItem> {
    let relations = store.relations(message.conversation, message.id)?;
    Ok(TimelineItem::new(message, view(message, &relations)))
}

/// What storing `new` changes besides history.
pub(crate) struct Derived {
    /// Search index updates, for the same commit as the message.
    pub(crate) writes: Vec<Write>,
    /// The message whose view `new` changed, when it is not `new` itself or `new` arrived
    /// after relations that already point at it.
    pub(crate) updated: Option<TimelineItem>,
    /// Whether `new` is a message of its own (not an edit, delete or reaction).
    pub(crate) standalone: bool,
    /// Whether `new` replaced a different message stored under its ID (one the server lost
    /// when it was restored from a backup).
    pub(crate) replaced: bool,
    /// Writes that go before the message's own (forgetting what it replaces).
    pub(crate) before: Vec<Write>,
    /// Other messages whose state changed (they lost relations the server lost).
    pub(crate) also_updated: Vec<TimelineItem>,
}

/// Works out the search updates and the changed view for a message about to be stored
/// (`new` is not in the store yet; the store holds everything committed before).
/// `stored` is what the store holds under `new`'s ID, as the caller read it before deciding
/// to store `new` (read once per message: callers need it to drop duplicates anyway).
pub(crate) fn derive(
    store: &dyn ClientStore,
    new: &StoredMessage,
    stored: Option<&StoredMessage>,
) -> Result<Derived> {
    // A different message stored under the same ID is one the server lost and then gave
    // the ID to `new` (it was restored from a backup). IDs are assigned in order, so every
    // message stored here under that ID or a later one predates the restore and was lost
    // too: they all go, and `new` is worked out without them.
    let replaced = stored.is_some_and(|old| !old.same_message(new));
    if !replaced {
        return derive_new(store, new, None);
    }
    let conversation = new.conversation;
    let lost = store.messages(
        conversation,
        new.id
            .get()
            .checked_sub(1)
            .and_then(|n| MessageId::new(n).ok()),
        MAX_LOST,
    )?;
    let mut before: Vec<Write> = lost
        .iter()
        .map(|m| Write::Forget {
            conversation,
            id: m.id,
        })
        .collect();
    // Messages that stay lose the lost relations' effects: their views and index entries
    // are worked out again without them.
    let mut touched: Vec<MessageId> = lost
        .iter()
        .filter_map(|m| content(m).target())
        .filter(|t| *t < new.id)
        .collect();
    touched.sort_unstable();
    touched.dedup();
    let mut also_updated = Vec::new();
    for target in touched {
        let Some(message) = store.message(conversation, target)? else {
            continue;
        };
        let relations: Vec<StoredMessage> = store
            .relations(conversation, target)?
            .into_iter()
            .filter(|r| r.id < new.id)
            .collect();
        let view = view(&message, &relations);
        before.push(Write::Search(match searchable(&view) {
            Some(text) => SearchWrite::Index {
                conversation,
                message: target,
                text,
            },
            None => SearchWrite::Remove {
                conversation,
                message: target,
            },
        }));
        also_updated.push(TimelineItem::new(&message, view));
    }
    // What this user had read of the lost messages is not read of the new ones.
    if store.read_position(conversation)?.has_read(new.id) {
        before.push(Write::LowerReadPosition {
            conversation,
            up_to: new
                .id
                .get()
                .checked_sub(1)
                .and_then(|n| MessageId::new(n).ok()),
        });
    }
    let mut derived = derive_new(store, new, Some(new.id))?;
    derived.replaced = true;
    derived.before = before;
    derived.also_updated = also_updated;
    Ok(derived)
}

/// The most messages forgotten at once when a restored server reuses IDs.
const MAX_LOST: usize = 100_000;

/// The writes that store `message` with what [`derive`] worked out for it, in order: the
/// messages it replaces forgotten first, then the message, then the index updates.
pub(crate) fn store_writes(message: StoredMessage, derived: &mut Derived) -> Vec<Write> {
    let mut writes = std::mem::take(&mut derived.before);
    writes.push(Write::Message(message));
    writes.append(&mut derived.writes);
    writes
}

/// [`derive`] for a message that replaces none; `lost_from`: stored relations with this ID or
/// a later one are lost on the server and left out.
fn derive_new(
    store: &dyn ClientStore,
    new: &StoredMessage,
    lost_from: Option<MessageId>,
) -> Result<Derived> {
    let conversation = new.conversation;
    let (target, standalone) = match content(new).target() {
        Some(target) => (target, false),
        None => (new.id, true),
    };
    let mut relations = store.relations(conversation, target)?;
    if let Some(from) = lost_from {
        relations.retain(|r| r.id < from);
    }
    let message = if standalone {
        new.clone()
    } else {
        match store.message(conversation, target)? {
            Some(m) => m,
            // The target has not arrived: its own arrival will apply this relation.
            None => {
                return Ok(Derived {
                    writes: Vec::new(),
                    updated: None,
                    standalone,
                    replaced: false,
                    before: Vec::new(),
                    also_updated: Vec::new(),
                });
            }
        }
    };
    let before = (!standalone).then(|| view(&message, &relations));
    if !standalone {
        relations.push(new.clone());
        relations.sort_by_key(|r| r.id);
    }
    let after = view(&message, &relations);
    let unchanged = before.as_ref() == Some(&after);
    // A standalone message with no relations yet is reported by its own event; a relation
    // that changes nothing (a non-sender's edit, a repeated reaction) reports nothing.
    let report = if standalone {
        !relations.is_empty()
    } else {
        !unchanged
    };
    let write = match searchable(&after) {
        Some(text) => Some(SearchWrite::Index {
            conversation,
            message: target,
            text,
        }),
        // Nothing was indexed for a new message without text.
        None if standalone => None,
        None => Some(SearchWrite::Remove {
            conversation,
            message: target,
        }),
    };
    let same_text = before.as_ref().map(searchable) == Some(searchable(&after));
    let mut writes: Vec<Write> = write
        .filter(|_| !same_text)
        .map(Write::Search)
        .into_iter()
        .collect();
    if after.deleted_by.is_some() {
        // Deleted for everyone: its text and its edits' texts are erased from this device
        // too, not only hidden (when the delete lands, or as they arrive after it).
        let was_deleted = before.as_ref().is_some_and(|b| b.deleted_by.is_some());
        let erase = relations
            .iter()
            .filter(|r| matches!(content(r), Content::Edit(_)) && aimed_at(r, &message))
            .filter(|r| !was_deleted || r.id == new.id)
            .map(|r| r.id)
            .chain((!was_deleted).then_some(target));
        writes.extend(erase.map(|id| Write::Redact { conversation, id }));
    }
    Ok(Derived {
        writes,
        updated: report.then(|| TimelineItem::new(&message, after)),
        standalone,
        replaced: false,
        before: Vec::new(),
        also_updated: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use chat_core::{ClientKey, Delete, Edit, Reaction, Text, UserId};
    use proptest::prelude::*;

    use super::*;
    use crate::search::SearchPage;

    fn stored(id: u64, user: u64, content: Content) -> StoredMessage {
        StoredMessage {
            conversation: ConversationId::new(1).unwrap(),
            id: MessageId::new(id).unwrap(),
            sender: DeviceAddress {
                user: UserId::new(user).unwrap(),
                device: chat_core::DeviceId::new(user).unwrap(),
            },
            client_key: ClientKey::from_bytes([id as u8; 16]),
            sent_at: Timestamp::from_millis(id),
            plaintext: content.encode().unwrap(),
        }
    }

    fn reaction(target: u64, emoji: &str, remove: bool) -> Content {
        Content::Reaction(Reaction {
            target: MessageId::new(target).unwrap(),
            emoji: emoji.into(),
            remove,
        })
    }

    fn edit(target: u64, body: &str) -> Content {
        Content::Edit(Edit {
            target: MessageId::new(target).unwrap(),
            body: body.into(),
        })
    }

    /// A message by user 1 and its relations: edits by its sender and by someone else,
    /// reactions added twice and taken back, a reply, and (optionally) a delete.
    fn scenario(with_delete: bool) -> Vec<StoredMessage> {
        let mut all = vec![
            stored(
                1,
                1,
                Content::Text(Text {
                    body: "first draft".into(),
                    reply_to: None,
                }),
            ),
            stored(2, 1, edit(1, "second draft")),
            stored(3, 2, reaction(1, "+1", false)),
            stored(4, 2, edit(1, "not yours")),
            stored(5, 2, reaction(1, "+1", false)),
            stored(6, 3, reaction(1, "heart", false)),
            stored(7, 3, reaction(1, "heart", true)),
            stored(8, 1, edit(1, "final words")),
            stored(
                9,
                2,
                Content::Text(Text {
                    body: "a reply".into(),
                    reply_to: Some(MessageId::new(1).unwrap()),
                }),
            ),
        ];
        if with_delete {
            all.push(stored(
                10,
                1,
                Content::Delete(Delete {
                    target: MessageId::new(1).unwrap(),
                }),
            ));
        }
        all
    }

    /// Stores `messages` in this order the way the client does (derived writes in the
    /// same commit) and returns message 1's state and what search finds.
    /// Message 1's state, the hits for its final and its drafts' words, and the messages
    /// whose plaintext was erased.
    type Arrived = (TimelineItem, usize, usize, Vec<u64>);

    fn arrive(store: &dyn ClientStore, messages: &[StoredMessage]) -> Arrived {
        for m in messages {
            let stored = store.message(m.conversation, m.id).unwrap();
            let mut derived = derive(store, m, stored.as_ref()).unwrap();
            store.commit(store_writes(m.clone(), &mut derived)).unwrap();
        }
        let conv = ConversationId::new(1).unwrap();
        let item = item(store, conv, MessageId::new(1).unwrap())
            .unwrap()
            .unwrap();
        let page = SearchPage::first(10);
        let final_hits = store.search("final", page).unwrap().hits.len();
        let draft_hits = store.search("draft", page).unwrap().hits.len();
        let erased = store
            .messages(conv, None, 100)
            .unwrap()
            .iter()
            .filter(|m| m.plaintext.is_empty())
            .map(|m| m.id.get())
            .collect();
        (item, final_hits, draft_hits, erased)
    }

    #[test]
    fn a_relation_that_changes_nothing_reports_nothing() {
        let store = crate::MemoryStore::new();
        let all = scenario(false);
        arrive(&store, &all[..3]); // the text, its sender's edit, Bob's +1
        for ignored in [
            stored(20, 2, edit(1, "not yours")),       // not the sender's
            stored(21, 2, reaction(1, "+1", false)),   // Bob's +1 again
            stored(22, 3, reaction(1, "heart", true)), // taking back what was never given
        ] {
            let derived = derive(&store, &ignored, None).unwrap();
            assert!(derived.updated.is_none(), "message {}", ignored.id);
            assert!(derived.writes.is_empty(), "message {}", ignored.id);
        }
        let counted = derive(&store, &stored(23, 1, edit(1, "third draft")), None).unwrap();
        assert_eq!(
            counted.updated.as_ref().and_then(TimelineItem::text),
            Some("third draft")
        );
        assert_eq!(counted.writes.len(), 1, "the index follows the edit");
    }

    /// Stores a secret text and an edit of it, then deletes it: returns the directory, the
    /// open store and the secret.
    fn delete_a_secret() -> (tempfile::TempDir, crate::SqliteStore, &'static str) {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::SqliteStore::open(dir.path().join("c.db")).unwrap();
        let secret = "zebra-passphrase-correct-horse";
        let text = Content::Text(Text {
            body: format!("the code is {secret}"),
            reply_to: None,
        });
        let delete = Content::Delete(Delete {
            target: MessageId::new(1).unwrap(),
        });
        arrive(
            &store,
            &[
                stored(1, 1, text),
                stored(2, 1, edit(1, &format!("still {secret}"))),
            ],
        );
        let (item, ..) = arrive(&store, &[stored(3, 1, delete)]);
        assert!(item.is_deleted());
        (dir, store, secret)
    }

    /// Reads the files while the store is open, as someone with a copy of the device's
    /// files would.
    fn assert_no_trace(dir: &std::path::Path, secret: &str) {
        let mut bytes = std::fs::read(dir.join("c.db")).unwrap();
        bytes.extend(std::fs::read(dir.join("c.db-wal")).unwrap_or_default());
        let found = bytes.windows(secret.len()).any(|w| w == secret.as_bytes());
        assert!(
            !found,
            "the deleted text is still in the database or its WAL"
        );
    }

    /// Without a runtime the erasure's checkpoint runs in place, before the delete returns.
    #[test]
    fn a_deleted_text_leaves_no_trace_in_the_file() {
        let (dir, store, secret) = delete_a_secret();
        assert_no_trace(dir.path(), secret);
        drop(store);
    }

    /// A reader that keeps its snapshot through the erasure keeps the text in the WAL (its
    /// frames are still in use) and outlasts the checkpoint's busy handler (100 ms); the
    /// erasure stays wanted, and the next sync's checkpoint empties the WAL.
    #[test]
    fn an_erasure_a_reader_held_up_is_done_at_the_next_sync() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let store = crate::SqliteStore::open(&path).unwrap();
        let secret = "zebra-passphrase-correct-horse";
        let text = Content::Text(Text {
            body: format!("the code is {secret}"),
            reply_to: None,
        });
        arrive(&store, &[stored(1, 1, text)]);
        let reader = rusqlite::Connection::open(&path).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        let n: i64 = reader
            .query_row("SELECT count(*) FROM messages", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
        let delete = Content::Delete(Delete {
            target: MessageId::new(1).unwrap(),
        });
        let before = store.checkpoints();
        let (item, ..) = arrive(&store, &[stored(2, 1, delete)]);
        assert!(item.is_deleted());
        let tried = store.checkpoints();
        assert!(tried > before, "it was tried");
        reader.execute_batch("COMMIT").unwrap();
        drop(reader);
        store.sync().unwrap();
        assert_eq!(store.checkpoints(), tried + 1, "and tried again");
        assert_no_trace(dir.path(), secret);
        store.sync().unwrap();
        assert_eq!(store.checkpoints(), tried + 1, "once done, not again");
    }

    /// On a runtime it runs on the blocking pool, off the writer: the trace is gone once it
    /// has run.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_deleted_text_is_erased_off_the_writer_on_a_runtime() {
        let (dir, store, secret) = delete_a_secret();
        store.checkpointed(1).await;
        assert_no_trace(dir.path(), secret);
        drop(store);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn any_arrival_order_gives_the_same_state_and_index(
            with_delete in any::<bool>(),
            order in Just((0..10usize).collect::<Vec<_>>()).prop_shuffle(),
        ) {
            let all = scenario(with_delete);
            let shuffled: Vec<_> = order.iter().filter_map(|i| all.get(*i).cloned()).collect();
            let expected = arrive(&crate::MemoryStore::new(), &all);
            let memory = arrive(&crate::MemoryStore::new(), &shuffled);
            let dir = tempfile::tempdir().unwrap();
            let sqlite = arrive(&crate::SqliteStore::open(dir.path().join("s.db")).unwrap(), &shuffled);
            prop_assert_eq!(&memory, &expected);
            prop_assert_eq!(&sqlite, &expected);
            let (item, final_hits, draft_hits, erased) = expected;
            if with_delete {
                // The text and every edit of it are erased from the store, not only hidden.
                prop_assert_eq!(erased, vec![1, 2, 4, 8]);
                prop_assert!(item.is_deleted());
                prop_assert_eq!(item.text(), None);
                prop_assert!(item.view.reactions.is_empty());
                prop_assert_eq!(final_hits, 0);
            } else {
                // Only the sender's edits count; the newest wins. Bob's +1 (added twice) stays,
                // Carol's heart was taken back.
                prop_assert!(erased.is_empty());
                prop_assert_eq!(item.text(), Some("final words"));
                prop_assert_eq!(item.view.edited_by, MessageId::new(8).ok());
                let reactions: Vec<_> = item.view.reactions.iter()
                    .map(|(e, users)| (e.clone(), users.iter().map(|u| u.get()).collect::<Vec<_>>()))
                    .collect();
                prop_assert_eq!(reactions, vec![("+1".to_owned(), vec![2])]);
                prop_assert_eq!(final_hits, 1);
            }
            // Edited-away text is not found; the reply (message 9) has no "draft" either.
            prop_assert_eq!(draft_hits, 0);
        }
    }
}
