//! History recovery after `resync_required` (R-SYNC-2).
//!
//! When the server cannot serve the inbox from this device's cursor, the driver moves the
//! cursor to where the server said to continue and records, in the same commit, the newest
//! stored message of every conversation (the recovery points). Once the backlog after the new
//! cursor is in, this task reads each conversation's history after its point (it finds where to
//! start by reading backwards without keeping bodies, then goes forward a page at a time, so
//! memory stays at a page; at most 5,000 messages per conversation), and for every message the
//! device does not have:
//! - a group message under a sender key this device holds is decrypted from its body, stored
//!   and reported like a delivered one;
//! - anything else (one-to-one messages: their per-device header went with the inbox entry;
//!   a body that is not even hex) is reported as missed in [`Event::Recovered`], so the app
//!   can show that it exists.
//!
//! The points stay in the store until the recovery finished, so an app that stops first
//! recovers on its next connection. A message that arrives live while this runs is stored
//! once: both paths check the store under the crypto lock before decrypting.

use std::sync::atomic::Ordering;

use chat_core::{ConversationId, MessageId};

use crate::client::Inner;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::store::{ConversationRecord, RecoveryPoint, StoredMessage, Write};
use crate::wire::{History, HistoryMessage};

/// Messages read from history per request.
const PAGE: usize = 100;
/// The most messages recovery reads per conversation; older ones stay in history, where the
/// app can page them (they are not reported as missed).
const MAX_PER_CONVERSATION: usize = 5_000;

/// Runs the pending recovery, if any, and clears it.
pub(crate) async fn run(inner: &Inner) -> Result<()> {
    loop {
        let seen = inner.resyncs.load(Ordering::Acquire);
        if once(inner, seen).await? {
            return Ok(());
        }
    }
}

/// One pass over the pending points; `false` if a newer resync was recorded meanwhile (its
/// points are kept and the caller runs again).
async fn once(inner: &Inner, seen: u64) -> Result<bool> {
    let Some(mut points) = inner.store.recovery()? else {
        return Ok(true);
    };
    // Conversations this device had not heard of (started while it was away): all of their
    // history is new to it.
    let list: Vec<chat_core::Conversation> = inner.http.get("/v1/conversations").await?;
    let known: Vec<ConversationId> = inner.store.conversations()?.iter().map(|c| c.id).collect();
    for c in list {
        if !known.contains(&c.id) {
            // Started while this device was away: it joins the conversation list.
            inner.learn_read_position(c.id).await?;
            inner
                .store
                .commit(vec![Write::Conversation(ConversationRecord {
                    id: c.id,
                    kind: c.kind,
                })])
                .await?;
            inner.emit(Event::NewConversation {
                id: c.id,
                kind: c.kind,
            });
        }
        if !points.iter().any(|p| p.conversation == c.id) {
            points.push(RecoveryPoint {
                conversation: c.id,
                newest: None,
            });
        }
    }
    let mut recovered = 0;
    let mut missed = Vec::new();
    for point in points {
        if inner.closed.load(Ordering::Acquire) {
            return Ok(true); // The client is gone; the points stay for the next run.
        }
        match conversation(inner, point, &mut recovered, &mut missed).await {
            Ok(()) => {}
            // No longer a member (removed meanwhile): nothing to read.
            Err(Error::Server {
                code: chat_core::ErrorCode::NotMember,
                ..
            }) => {}
            Err(e) => return Err(e),
        }
    }
    // Messages that arrived live meanwhile are not missed.
    let mut still_missed = Vec::with_capacity(missed.len());
    for (conversation, id) in missed {
        if inner.store.message(conversation, id)?.is_none() {
            still_missed.push((conversation, id));
        }
    }
    let done = {
        let _guard = inner
            .recovery_lock
            .lock()
            .map_err(|_| Error::poisoned("recovery lock"))?;
        let done = inner.resyncs.load(Ordering::Acquire) == seen;
        if done {
            // Staged under the lock, synced after it: no lock is held across an fsync.
            inner.store.stage(vec![Write::Recovery(None)])?;
        }
        done
    };
    if done {
        inner.store.sync().await?;
    }
    inner.emit(Event::Recovered {
        recovered,
        missed: still_missed,
    });
    Ok(done)
}

/// Recovers one conversation: its history after the point, oldest first, a page at a time
/// (at most [`MAX_PER_CONVERSATION`] messages, the newest ones), so memory stays at a page.
async fn conversation(
    inner: &Inner,
    point: RecoveryPoint,
    recovered: &mut usize,
    missed: &mut Vec<(ConversationId, MessageId)>,
) -> Result<()> {
    let c = point.conversation;
    let Some(first) = first_after(inner, c, point.newest).await? else {
        return Ok(());
    };
    // The first message, then pages after it.
    let mut route = format!(
        "/v1/conversations/{c}/messages?limit=1&before={}",
        next(first)
    );
    let mut first_page = true;
    for _ in 0..MAX_PER_CONVERSATION.div_ceil(PAGE) + 1 {
        let page: History = inner.http.get(&route).await?;
        let full = page.messages.len() == PAGE;
        let Some(last) = page.messages.last().map(|m| m.id) else {
            break;
        };
        for m in page.messages {
            if inner.closed.load(Ordering::Acquire) {
                return Ok(());
            }
            open(inner, c, m, recovered, missed).await?;
        }
        if !full && !first_page {
            break;
        }
        first_page = false;
        route = format!("/v1/conversations/{c}/messages?limit={PAGE}&after={last}");
    }
    Ok(())
}

/// The ID of the first message after `newest` to recover (`None`: nothing), reading history
/// backwards without keeping bodies: at most [`MAX_PER_CONVERSATION`] messages back.
async fn first_after(
    inner: &Inner,
    conversation: ConversationId,
    newest: Option<MessageId>,
) -> Result<Option<MessageId>> {
    let mut first = None;
    let mut before: Option<MessageId> = None;
    let mut seen = 0;
    while seen < MAX_PER_CONVERSATION {
        let mut route = format!("/v1/conversations/{conversation}/messages?limit={PAGE}");
        if let Some(b) = before {
            route.push_str(&format!("&before={b}"));
        }
        let page: History = inner.http.get(&route).await?;
        let full = page.messages.len() == PAGE;
        for m in &page.messages {
            if newest.is_some_and(|n| m.id <= n) || seen == MAX_PER_CONVERSATION {
                return Ok(first);
            }
            first = Some(m.id);
            before = Some(m.id);
            seen += 1;
        }
        if !full {
            break;
        }
    }
    Ok(first)
}

/// `id + 1` (IDs are far below the maximum).
fn next(id: MessageId) -> MessageId {
    id.next().unwrap_or(id)
}

/// Opens one message read from history, unless it is stored here already.
async fn open(
    inner: &Inner,
    conversation: ConversationId,
    m: HistoryMessage,
    recovered: &mut usize,
    missed: &mut Vec<(ConversationId, MessageId)>,
) -> Result<()> {
    if m.sender == inner.me {
        // Sent from this device: stored when the server acknowledged it.
        return Ok(());
    }
    let Ok(body) = hex::decode(&m.body) else {
        // Not something this client can read; one bad message does not stop the rest.
        missed.push((conversation, m.id));
        return Ok(());
    };
    let envelope = StoredMessage {
        conversation,
        id: m.id,
        sender: m.sender,
        client_key: m.client_key,
        sent_at: m.sent_at,
        plaintext: Vec::new(),
    };
    match inner.crypto.open_history(envelope, &body).await {
        Ok(Some((message, derived))) => {
            *recovered += 1;
            inner.report(conversation, m.id, Some(message), derived);
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(Error::Crypto(e)) => {
            tracing::debug!(cause = %e, id = %m.id, "a message in history cannot be read here");
            missed.push((conversation, m.id));
            Ok(())
        }
        Err(e) => Err(e),
    }
}
