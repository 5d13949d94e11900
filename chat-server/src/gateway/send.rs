//! Sends: appended and fanned out on tasks of their own, answered in the order they came.
//!
//! A connection keeps up to [`MAX_IN_FLIGHT`] sends in flight, so a busy sender is not
//! bound by its own commit latency: its sends share group commits. At most one send per
//! conversation is in flight, so a sender's messages to one conversation get IDs in the
//! order it sent them on every store (PostgreSQL's row locks do not queue in arrival order).
//! Answers (`sent`, `stale_devices`, `error`) go out in the order the sends came.
//!
//! Each send's task appends, then hands the message to its recipients' connections and
//! decides on push, and only then returns the answer: it runs to its end on its own,
//! whatever happens to the sender's connection (R-ABUSE-3).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chat_core::protocol::{self, Deliver, ErrorFrame, Sent, ServerFrame, StaleDevices};
use chat_core::{
    BusMessage, ConversationId, DeviceAddress, Envelope, ErrorCode, InboxEntry, InboxPos,
    NewMessage, Recipient, StoreError, Topic,
};
use futures::StreamExt;
use futures::stream::FuturesOrdered;

use crate::health::{self, PeerError};
use crate::state::{Shared, now};

/// The most sends one connection may have in flight; the next waits for the oldest.
pub(super) const MAX_IN_FLIGHT: usize = 32;

type Answer = Pin<Box<dyn Future<Output = ServerFrame> + Send>>;

/// A connection's sends in flight and the answers queued behind them, in arrival order.
/// Allocated on the first send: most connections are idle, and a queue of futures costs a
/// few hundred bytes even when empty.
pub(super) struct Pipeline {
    answers: Option<FuturesOrdered<Answer>>,
    /// The conversation of each entry of `answers` (none for an answer that was ready).
    conversations: VecDeque<Option<ConversationId>>,
}

impl Pipeline {
    pub(super) fn new() -> Self {
        Self {
            answers: None,
            conversations: VecDeque::new(),
        }
    }

    /// Whether nothing is in flight or queued.
    pub(super) fn is_empty(&self) -> bool {
        self.answers.as_ref().is_none_or(FuturesOrdered::is_empty)
    }

    /// Whether a send to `conversation` must wait for an earlier one to be answered: one to
    /// the same conversation is in flight, or the pipeline is full.
    pub(super) fn must_wait(&self, conversation: ConversationId) -> bool {
        self.conversations.len() >= MAX_IN_FLIGHT
            || self.conversations.contains(&Some(conversation))
    }

    /// Queues an answer that is ready (a refusal) behind the sends in flight.
    pub(super) fn answer(&mut self, frame: ServerFrame) {
        self.push(Box::pin(std::future::ready(frame)), None);
    }

    fn push(&mut self, answer: Answer, conversation: Option<ConversationId>) {
        self.answers
            .get_or_insert_with(FuturesOrdered::new)
            .push_back(answer);
        self.conversations.push_back(conversation);
    }

    /// Starts a send on a task of its own.
    pub(super) fn start(
        &mut self,
        shared: Arc<Shared>,
        device: DeviceAddress,
        send: protocol::Send,
    ) {
        let (conversation, req) = (send.conversation, send.req);
        let task = tokio::spawn(append(shared, device, send));
        let answer = Box::pin(async move {
            task.await.unwrap_or_else(|_| {
                error_frame(Some(req), ErrorCode::Internal, "send failed; retry it")
            })
        });
        self.push(answer, Some(conversation));
    }

    /// The next answer, in arrival order; `None` when nothing is in flight. Cancel-safe.
    pub(super) async fn next(&mut self) -> Option<ServerFrame> {
        let answer = self.answers.as_mut()?.next().await?;
        self.conversations.pop_front();
        Some(answer)
    }
}

/// An `error` frame.
pub(super) fn error_frame(req: Option<u32>, code: ErrorCode, message: &str) -> ServerFrame {
    ErrorFrame {
        req,
        code,
        message: message.into(),
        retry_after_ms: None,
    }
    .into()
}

/// An `error {rate_limited}` frame saying when to retry.
pub(super) fn rate_limited_frame(req: Option<u32>, wait: Duration, message: &str) -> ServerFrame {
    ErrorFrame {
        req,
        code: ErrorCode::RateLimited,
        message: message.into(),
        retry_after_ms: Some(u32::try_from(wait.as_millis()).unwrap_or(u32::MAX)),
    }
    .into()
}

/// Appends durably, fans out, and returns the answer for the sender.
async fn append(shared: Arc<Shared>, device: DeviceAddress, send: protocol::Send) -> ServerFrame {
    let req = Some(send.req);
    let headers = send.recipients.clone();
    let message = NewMessage {
        conversation: send.conversation,
        sender: device,
        client_key: send.client_key,
        body: send.body,
        recipients: send.recipients,
        sent_at: now(),
    };
    let body = message.body.clone();
    let started = Instant::now();
    let appended = match shared.store.append(message).await {
        Ok(appended) => appended,
        Err(StoreError::StaleDevices(mismatch)) => {
            return StaleDevices {
                req: send.req,
                missing: mismatch.missing,
                extra: mismatch.extra,
            }
            .into();
        }
        // A conversation that does not exist is answered like one the sender is not in:
        // conversation IDs are sequential, and the difference would count them.
        Err(StoreError::NotFound) => {
            let PeerError { code, message } = health::peer_error(&StoreError::NotMember);
            return error_frame(req, code, &message);
        }
        Err(err) => {
            if health::is_backend(&err) {
                shared.health.failed("append", &err);
            }
            let PeerError { code, message } = health::peer_error(&err);
            return error_frame(req, code, &message);
        }
    };
    metrics::histogram!("chat_append_seconds").record(started.elapsed().as_secs_f64());
    let envelope = Envelope {
        conversation: send.conversation,
        id: appended.id,
        sender: device,
        client_key: send.client_key,
        sent_at: appended.sent_at,
        body,
    };
    fan_out(&shared, &envelope, &headers, &appended.deliveries).await;
    Sent {
        req: send.req,
        conversation: send.conversation,
        id: appended.id,
        sent_at: appended.sent_at,
        duplicate: appended.duplicate,
    }
    .into()
}

/// Publishes a stored message to each recipient device's connections, its body encoded once
/// and shared, in one batch (one round trip on a network bus, whatever the group's size); a
/// device no connection took (or that the bus could not reach) is woken by push.
async fn fan_out(
    shared: &Shared,
    envelope: &Envelope,
    headers: &[Recipient],
    deliveries: &[(DeviceAddress, InboxPos)],
) {
    let events = deliveries
        .iter()
        .map(|&(recipient, pos)| {
            let header = headers
                .iter()
                .find(|r| r.device == recipient)
                .map_or_else(Bytes::new, |r| r.header.clone());
            let entry = InboxEntry {
                pos,
                envelope: envelope.clone(),
                header,
            };
            let frame = Deliver::from(entry).encode_shared();
            let event = BusMessage::Deliver {
                pos,
                frame: Arc::new(frame),
            };
            (Topic::Device(recipient.device), event)
        })
        .collect();
    let counts = shared.bus.publish_many(events).await;
    for (&(recipient, _), count) in deliveries.iter().zip(counts) {
        match count {
            Ok(0) => shared.push.offline(recipient, envelope.conversation),
            Ok(_) => {}
            // The entry is in the inbox; whether a connection has it is unknown, so the
            // device is woken rather than forgotten.
            Err(err) => {
                tracing::warn!(cause = %err, "live delivery failed");
                shared.push.offline(recipient, envelope.conversation);
            }
        }
    }
}
