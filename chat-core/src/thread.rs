//! Aggregating a conversation's relations (R-MSG-7): the current state of each message after
//! its edits, reactions and delete.
//!
//! A [`Timeline`] holds one conversation. Feed it every decrypted message with
//! [`Timeline::handle_message`], in any order and as often as it arrives (live, from a backlog,
//! again after a resync); read the result with [`Timeline::message`] or
//! [`Timeline::messages`]. It does no I/O and needs no clock.
//!
//! The rules, all decided by message IDs (which the server assigns in commit order, R-MSG-1),
//! never by arrival order:
//! - an edit counts only if its sender is the target's sender and the target is a text; of
//!   several, the one with the highest ID wins;
//! - a reaction counts per (sender, emoji): the one with the highest ID wins, so adding twice
//!   is one reaction and a later `remove` takes it back;
//! - a delete counts only if its sender is the target's sender; it is a tombstone that hides
//!   the target's content, edits and reactions, and later ones are ignored;
//! - a relation must point at a lower ID than its own (the target existed when it was sent);
//!   one that does not is ignored.
//!
//! Invariant: the state of a message is a function of the *set* of messages fed so far. Each
//! relation is merged with an operation that is commutative, associative and idempotent
//! (highest ID wins, a delete absorbs everything), so any order or duplication of the same
//! messages gives the same views.
//!
//! A relation that arrives before its target is held as an *orphan* and applied when the
//! target arrives. Orphans are bounded: at most [`DEFAULT_MAX_ORPHANS`] (or the number given
//! to [`Timeline::with_max_orphans`]); past the cap the orphan with the lowest target ID
//! (the oldest message, the least likely to be shown) is dropped and counted in
//! [`Timeline::dropped_orphans`]. Only then can the order of arrival matter: a caller that
//! sees the count grow can fetch the history around the missing targets and feed it again.
//! Message IDs are unique within a conversation (R-MSG-1): a second message under a known ID
//! is taken for a duplicate.

use std::collections::{BTreeMap, BTreeSet};

use crate::content::{Content, Delete, Edit, Reaction, Text};
use crate::ids::{MessageId, UserId};

/// How many relations whose target has not arrived a [`Timeline`] holds by default.
pub const DEFAULT_MAX_ORPHANS: usize = 4096;

/// The current state of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageView {
    /// The message.
    pub id: MessageId,
    /// Who sent it.
    pub sender: UserId,
    /// What to show: the original content with the winning edit's text; `None` once deleted.
    pub content: Option<Content>,
    /// The edit whose text `content` shows, if it was edited (and not deleted).
    pub edited_by: Option<MessageId>,
    /// The delete that tombstoned it (the lowest ID of its sender's deletes).
    pub deleted_by: Option<MessageId>,
    /// Who reacted with what, per emoji; empty once deleted.
    pub reactions: BTreeMap<String, BTreeSet<UserId>>,
}

/// One conversation's messages with their relations applied.
#[derive(Debug, Clone)]
pub struct Timeline {
    messages: BTreeMap<MessageId, Entry>,
    /// Relations whose target has not arrived, by (target, own ID).
    orphans: BTreeMap<(MessageId, MessageId), Orphan>,
    max_orphans: usize,
    dropped_orphans: u64,
}

impl Default for Timeline {
    fn default() -> Self {
        Self::new()
    }
}

impl Timeline {
    /// An empty timeline holding at most [`DEFAULT_MAX_ORPHANS`] orphans.
    pub fn new() -> Self {
        Self::with_max_orphans(DEFAULT_MAX_ORPHANS)
    }

    /// An empty timeline holding at most `max` orphans (0: relations whose target is
    /// unknown are dropped at once).
    pub fn with_max_orphans(max: usize) -> Self {
        Self {
            messages: BTreeMap::new(),
            orphans: BTreeMap::new(),
            max_orphans: max,
            dropped_orphans: 0,
        }
    }

    /// Feeds one decrypted message. Returns the message whose view changed (the message
    /// itself, or the target of an edit, delete or reaction), or `None` if no view changed: a
    /// duplicate, a relation that does not count, or one held until its target arrives.
    pub fn handle_message(
        &mut self,
        id: MessageId,
        sender: UserId,
        content: Content,
    ) -> Option<MessageId> {
        let Some(target) = content.target() else {
            return self.handle_standalone(id, sender, content);
        };
        if target >= id {
            return None;
        }
        let relation = match content {
            Content::Edit(Edit { body, .. }) => Relation::Edit(body),
            Content::Delete(Delete { .. }) => Relation::Delete,
            Content::Reaction(Reaction { emoji, remove, .. }) => {
                Relation::Reaction { emoji, remove }
            }
            _ => return None,
        };
        if let Some(entry) = self.messages.get_mut(&target) {
            return entry.apply(id, sender, relation).then_some(target);
        }
        self.orphans
            .insert((target, id), Orphan { sender, relation });
        if self.orphans.len() > self.max_orphans {
            self.orphans.pop_first();
            self.dropped_orphans = self.dropped_orphans.saturating_add(1);
        }
        None
    }

    /// The current state of message `id`, if it has arrived (edits, deletes and reactions
    /// are not messages of their own here).
    pub fn message(&self, id: MessageId) -> Option<MessageView> {
        self.messages.get(&id).map(|entry| entry.view(id))
    }

    /// Every message's current state, in ID order (deleted ones as tombstones).
    pub fn messages(&self) -> impl DoubleEndedIterator<Item = MessageView> + '_ {
        self.messages.iter().map(|(id, entry)| entry.view(*id))
    }

    /// How many messages (not counting relations) it holds.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// Whether no message has arrived.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// How many relations wait for their target.
    pub fn orphans(&self) -> usize {
        self.orphans.len()
    }

    /// How many orphans were dropped because the cap was reached.
    pub fn dropped_orphans(&self) -> u64 {
        self.dropped_orphans
    }

    fn handle_standalone(
        &mut self,
        id: MessageId,
        sender: UserId,
        content: Content,
    ) -> Option<MessageId> {
        if self.messages.contains_key(&id) {
            return None;
        }
        let mut entry = Entry {
            sender,
            content,
            edit: None,
            deleted_by: None,
            reactions: BTreeMap::new(),
        };
        let held: Vec<(MessageId, MessageId)> = self
            .orphans
            .range((id, MessageId::MIN)..)
            .take_while(|((target, _), _)| *target == id)
            .map(|(key, _)| *key)
            .collect();
        for key in held {
            if let Some(orphan) = self.orphans.remove(&key) {
                entry.apply(key.1, orphan.sender, orphan.relation);
            }
        }
        self.messages.insert(id, entry);
        Some(id)
    }
}

#[derive(Debug, Clone)]
enum Relation {
    Edit(String),
    Delete,
    Reaction { emoji: String, remove: bool },
}

#[derive(Debug, Clone)]
struct Orphan {
    sender: UserId,
    relation: Relation,
}

#[derive(Debug, Clone)]
struct Entry {
    sender: UserId,
    content: Content,
    /// The winning edit: the highest ID among the sender's edits.
    edit: Option<(MessageId, String)>,
    deleted_by: Option<MessageId>,
    /// Per (reacting user, emoji): the highest reaction ID and whether it removes.
    reactions: BTreeMap<(UserId, String), (MessageId, bool)>,
}

impl Entry {
    /// Merges relation `id`; returns whether the view changed.
    fn apply(&mut self, id: MessageId, sender: UserId, relation: Relation) -> bool {
        if let Relation::Delete = relation {
            if sender != self.sender {
                return false;
            }
            let changed = self.deleted_by.is_none_or(|d| id < d);
            if changed {
                self.deleted_by = Some(id);
            }
            // Nothing of a deleted message stays in memory: its text, edits and reactions go.
            self.content = Content::Unknown {
                kind: self.content.kind(),
            };
            self.edit = None;
            self.reactions.clear();
            return changed;
        }
        if self.deleted_by.is_some() {
            return false;
        }
        match relation {
            Relation::Edit(body) => {
                let is_text = matches!(self.content, Content::Text(_));
                let newer = self.edit.as_ref().is_none_or(|(e, _)| id > *e);
                if sender != self.sender || !is_text || !newer {
                    return false;
                }
                self.edit = Some((id, body));
                true
            }
            Relation::Reaction { emoji, remove } => {
                // A new slot starts as the opposite of this reaction, so it is taken below.
                let slot = self
                    .reactions
                    .entry((sender, emoji))
                    .or_insert((id, !remove));
                if id < slot.0 || *slot == (id, remove) {
                    return false;
                }
                *slot = (id, remove);
                true
            }
            Relation::Delete => false,
        }
    }

    fn view(&self, id: MessageId) -> MessageView {
        if self.deleted_by.is_some() {
            return MessageView {
                id,
                sender: self.sender,
                content: None,
                edited_by: None,
                deleted_by: self.deleted_by,
                reactions: BTreeMap::new(),
            };
        }
        let content = match (&self.content, &self.edit) {
            (Content::Text(text), Some((_, body))) => Content::Text(Text {
                body: body.clone(),
                reply_to: text.reply_to,
            }),
            (content, _) => content.clone(),
        };
        let mut reactions: BTreeMap<String, BTreeSet<UserId>> = BTreeMap::new();
        for ((user, emoji), (_, remove)) in &self.reactions {
            if !remove {
                reactions.entry(emoji.clone()).or_default().insert(*user);
            }
        }
        MessageView {
            id,
            sender: self.sender,
            content: Some(content),
            edited_by: self.edit.as_ref().map(|(e, _)| *e),
            deleted_by: None,
            reactions,
        }
    }
}
