//! Conversations as people use them (R-MSG-6 to R-MSG-9): replies, edits, deletes and
//! reactions; the current state of messages; read positions and unread counts; typing
//! indicators that expire by themselves; local search.
//!
//! Everything here reads the local store: the server sees only ciphertext, so the meaning of
//! a relation lives in the client. Edits, deletes and reactions are messages like any other
//! (encrypted, stored, synced to every device); the client applies them to their target with
//! [`chat_core::Timeline`]'s rules whatever order they arrive in.

use std::collections::BTreeSet;
use std::time::Duration;

use chat_core::protocol::{ClientFrame, ReceiptUpdate};
use chat_core::{
    Content, ConversationId, ConversationKind, Delete, DeviceAddress, Edit, MessageId, Reaction,
    ReadPosition, ReceiptKind, Text, UserId,
};

use crate::client::{Client, Inner, now};
use crate::error::{Error, Result};
use crate::event::{Event, Message};
use crate::search::{SearchPage, SearchResults};
use crate::thread::{self, Derived, TimelineItem};

/// The most messages one [`Conversation::timeline`](crate::Conversation::timeline) page
/// returns.
pub const MAX_TIMELINE_PAGE: usize = 500;

/// One line of the conversation list.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConversationSummary {
    /// The conversation.
    pub id: ConversationId,
    /// One-to-one or group.
    pub kind: ConversationKind,
    /// Messages after this user's read position that others sent (texts, attachments),
    /// not counting deleted ones.
    pub unread: usize,
    /// How far this user has read (on any of their devices).
    pub read: ReadPosition,
    /// The newest message that stands on its own, in its current state.
    pub last: Option<TimelineItem>,
}

impl Client {
    /// Sends a text that replies to `reply_to` (a message of the same conversation).
    pub(crate) async fn send_reply(
        &self,
        conversation: ConversationId,
        reply_to: MessageId,
        text: &str,
    ) -> Result<MessageId> {
        let content = Content::Text(Text {
            body: text.to_owned(),
            reply_to: Some(reply_to),
        });
        self.send(conversation, &content).await
    }

    /// Replaces the text of one of this user's own text messages. Every device (this
    /// user's and the other members') shows the new text; an edit of someone else's message
    /// is refused here (and ignored by every client if sent anyway).
    pub(crate) async fn edit_message(
        &self,
        conversation: ConversationId,
        target: MessageId,
        text: &str,
    ) -> Result<MessageId> {
        self.own_target(conversation, target)?;
        let content = Content::Edit(Edit {
            target,
            body: text.to_owned(),
        });
        self.send(conversation, &content).await
    }

    /// Deletes one of this user's own messages for everyone: a tombstone that also hides its
    /// edits and reactions. Deleting someone else's message is refused.
    pub(crate) async fn delete_message(
        &self,
        conversation: ConversationId,
        target: MessageId,
    ) -> Result<MessageId> {
        self.own_target(conversation, target)?;
        self.send(conversation, &Content::Delete(Delete { target }))
            .await
    }

    /// Adds this user's reaction `emoji` (1 to 64 bytes of text) to a message. Reacting twice
    /// with the same emoji is one reaction.
    pub(crate) async fn react(
        &self,
        conversation: ConversationId,
        target: MessageId,
        emoji: &str,
    ) -> Result<MessageId> {
        self.reaction(conversation, target, emoji, false).await
    }

    /// Takes this user's reaction `emoji` on a message back.
    pub(crate) async fn unreact(
        &self,
        conversation: ConversationId,
        target: MessageId,
        emoji: &str,
    ) -> Result<MessageId> {
        self.reaction(conversation, target, emoji, true).await
    }

    async fn reaction(
        &self,
        conversation: ConversationId,
        target: MessageId,
        emoji: &str,
        remove: bool,
    ) -> Result<MessageId> {
        let content = Content::Reaction(Reaction {
            target,
            emoji: emoji.to_owned(),
            remove,
        });
        self.send(conversation, &content).await
    }

    /// Refuses a target this device knows to be someone else's (an unknown target is let
    /// through: it may not have synced yet, and receivers check the sender anyway).
    fn own_target(&self, conversation: ConversationId, target: MessageId) -> Result<()> {
        match self.inner.store.message(conversation, target)? {
            Some(m) if m.sender.user != self.user() => Err(Error::NotSender(target)),
            _ => Ok(()),
        }
    }

    /// A page of a conversation as it should be shown: messages that stand on their own,
    /// before `before` (exclusive; `None`: the newest), newest first, at most `limit`
    /// (capped at [`MAX_TIMELINE_PAGE`]), each with its edits, reactions and delete applied.
    /// Messages of users this user blocks are left out.
    pub(crate) fn timeline(
        &self,
        conversation: ConversationId,
        before: Option<MessageId>,
        limit: usize,
    ) -> Result<Vec<TimelineItem>> {
        let store = &*self.inner.store;
        let page = store.standalone(conversation, before, limit.min(MAX_TIMELINE_PAGE))?;
        let mut items = Vec::with_capacity(page.len());
        for m in page.iter().filter(|m| !self.inner.hides(m.sender.user)) {
            items.push(thread::item_of(store, m)?);
        }
        Ok(items)
    }

    /// One message in its current state, if it is stored here.
    pub(crate) fn message(
        &self,
        conversation: ConversationId,
        id: MessageId,
    ) -> Result<Option<TimelineItem>> {
        thread::item(&*self.inner.store, conversation, id)
    }

    /// Marks a conversation read up to and including `up_to`: raises the read position here
    /// (never lowers it) and sends it to the server, which keeps the highest and passes it to
    /// this user's other devices (their unread counts follow) and to the other members.
    ///
    /// The position is staged, not fsynced (an app calls this as the user scrolls): it is
    /// durable with the next acknowledgement or send. A power cut before then can lose it
    /// here; the server still has it.
    pub(crate) fn mark_read(&self, conversation: ConversationId, up_to: MessageId) -> Result<()> {
        self.inner
            .store
            .stage(vec![crate::store::Write::ReadPosition {
                conversation,
                up_to,
            }])?;
        self.frame(ClientFrame::Receipt(ReceiptUpdate {
            conversation,
            kind: ReceiptKind::Read,
            up_to,
        }))
    }

    /// This user's read position in a conversation (raised by [`Client::mark_read`] here and
    /// by read receipts from this user's other devices).
    pub(crate) fn read_position(&self, conversation: ConversationId) -> Result<ReadPosition> {
        self.inner.store.read_position(conversation)
    }

    /// The unread count of a conversation, computed from IDs (`chat_core::unread_count`):
    /// messages after the read position that others sent, deleted ones left out.
    pub(crate) fn unread_count(&self, conversation: ConversationId) -> Result<usize> {
        let read = self.inner.store.read_position(conversation)?;
        self.unread_after(conversation, read)
    }

    /// The unread count of a conversation read up to `read`.
    fn unread_after(&self, conversation: ConversationId, read: ReadPosition) -> Result<usize> {
        let candidates = self.inner.store.unread(conversation, read)?;
        Ok(chat_core::unread_count(
            self.user(),
            read,
            candidates
                .into_iter()
                .filter(|(_, sender)| !self.inner.hides(*sender)),
        ))
    }

    /// The conversations stored on this device with their unread counts and newest message,
    /// most recent first (call [`Client::sync_conversations`] first on a new device to learn them
    /// from the server).
    pub async fn conversation_list(&self) -> Result<Vec<ConversationSummary>> {
        self.local(Self::summaries).await
    }

    fn summaries(&self) -> Result<Vec<ConversationSummary>> {
        let mut list = Vec::new();
        for c in self.inner.store.conversations()? {
            let read = self.read_position(c.id)?;
            list.push(ConversationSummary {
                id: c.id,
                kind: c.kind,
                unread: self.unread_after(c.id, read)?,
                read,
                last: self.timeline(c.id, None, 1)?.pop(),
            });
        }
        list.sort_by(|a, b| {
            let at = |s: &ConversationSummary| s.last.as_ref().map(|l| l.sent_at);
            at(b).cmp(&at(a)).then(a.id.cmp(&b.id))
        });
        Ok(list)
    }

    /// Searches this device's history (decrypted text, current after edits, deleted
    /// messages forgotten): every whitespace-separated term must occur; newest first, a
    /// page at a time. See [`SearchIndex`](crate::store::SearchIndex) for what matches.
    pub async fn search(&self, query: &str, page: SearchPage) -> Result<SearchResults> {
        let query = query.to_owned();
        self.local(move |c| c.search_here(&query, page)).await
    }

    fn search_here(&self, query: &str, page: SearchPage) -> Result<SearchResults> {
        let mut results = self.inner.store.search(query, page)?;
        if let Ok(blocked) = self.inner.blocked.lock()
            && !blocked.is_empty()
        {
            let store = &*self.inner.store;
            results.hits.retain(|h| {
                store
                    .message(h.conversation, h.message)
                    .ok()
                    .flatten()
                    .is_none_or(|m| !blocked.contains(&m.sender.user))
            });
        }
        Ok(results)
    }

    /// The users typing in a conversation now (indicators expire by themselves).
    pub(crate) fn typing(&self, conversation: ConversationId) -> BTreeSet<UserId> {
        // Expiring reports what expired, so the events and this answer agree.
        self.inner.expire_typing();
        match self.inner.typing.lock() {
            Ok(t) => t.typing(conversation),
            Err(_) => BTreeSet::new(),
        }
    }
}

impl Inner {
    /// Reports what storing message `id` changed: the lost message it replaced, the message
    /// itself if it stands on its own (`message`: `None` for this device's own send, which
    /// `Event::Sent` reports), and the messages whose state changed.
    pub(crate) fn report(
        &self,
        conversation: ConversationId,
        id: MessageId,
        message: Option<Message>,
        derived: Derived,
    ) {
        if derived.replaced {
            self.emit(Event::Replaced { conversation, id });
        }
        let hidden = message.as_ref().is_some_and(|m| self.hides(m.sender.user));
        // A message whose delete arrived first is reported only as its tombstone (Updated):
        // its text was erased and must not reach the app.
        let deleted = derived
            .updated
            .as_ref()
            .is_some_and(|i| i.id() == id && i.is_deleted());
        if let Some(message) = message
            && derived.standalone
            && !hidden
            && !deleted
        {
            self.emit(Event::Message(message));
        }
        for item in derived.also_updated {
            self.emit(Event::Updated(item));
        }
        if let Some(item) = derived.updated
            && !hidden
            && !self.hides(item.view.sender)
        {
            self.emit(Event::Updated(item));
        }
    }

    /// A typing event from the server.
    pub(crate) fn typing_event(
        &self,
        conversation: ConversationId,
        from: DeviceAddress,
        active: bool,
        ttl: Duration,
    ) {
        if from.user == self.me.user {
            return; // This user typing on another device is not news.
        }
        // Indicators overdue anywhere are expired (and reported) first: the tracker expires
        // them on any input, and an expiry must never go unreported.
        self.expire_typing();
        let Ok(mut t) = self.typing.lock() else {
            return;
        };
        let before = t.typing(conversation);
        t.handle_typing(now(), conversation, from, active, ttl);
        let users = t.typing(conversation);
        drop(t);
        if users != before {
            self.emit(Event::Typing {
                conversation,
                users,
            });
        }
    }

    /// How long until the next typing indicator expires, if any is shown.
    pub(crate) fn typing_wait(&self) -> Option<Duration> {
        let deadline = self.typing.lock().ok()?.poll_timeout()?;
        let ms = deadline.as_millis().saturating_sub(now().as_millis());
        Some(Duration::from_millis(ms))
    }

    /// Expires the typing indicators whose TTL passed and reports the conversations whose
    /// set of typing users changed.
    pub(crate) fn expire_typing(&self) {
        self.change_typing(|t| t.handle_timeout(now()));
    }

    /// Forgets every typing indicator (the connection was lost: no stop would arrive).
    pub(crate) fn clear_typing(&self) {
        self.change_typing(|t| *t = chat_core::TypingTracker::new());
    }

    fn change_typing(&self, change: impl FnOnce(&mut chat_core::TypingTracker)) {
        let Ok(mut t) = self.typing.lock() else {
            return;
        };
        let conversations = t.conversations();
        let before: Vec<_> = conversations.iter().map(|c| t.typing(*c)).collect();
        change(&mut t);
        let after: Vec<_> = conversations.iter().map(|c| t.typing(*c)).collect();
        drop(t);
        for ((conversation, before), users) in conversations.into_iter().zip(before).zip(after) {
            if users != before {
                self.emit(Event::Typing {
                    conversation,
                    users,
                });
            }
        }
    }
}
