//! Sends: appended and fanned out on tasks of their own, answered in the order they came.
//!
//! A connection keeps up to [`MAX_IN_FLIGHT`] sends in flight, so a busy sender is not
//! bound by its own commit latency: its sends share group commits. Its sends to one
//! conversation go to one task of their own (a sequencer), which appends all those queued
//! at once with [`MessageStore::append_all`](chat_core::MessageStore::append_all), so they
//! get IDs in the order they were sent on every store, and share a commit, without waiting
//! for one another. Answers (`sent`, `stale_devices`, `error`) go out in the order the
//! sends came.
//!
//! A sequencer appends, then hands the messages to their recipients' connections and
//! decides on push, and only then answers: it runs to its end on its own, whatever happens
//! to the sender's connection (R-ABUSE-3).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chat_core::protocol::{self, Deliver, ErrorFrame, Sent, ServerFrame, StaleDevices};
use chat_core::{
    Appended, BusMessage, ConversationId, DeviceAddress, Envelope, ErrorCode, InboxEntry,
    NewMessage, Recipient, StoreError, Topic,
};
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use tokio::sync::{mpsc, oneshot};

use crate::health::{self, PeerError};
use crate::state::{Shared, now};

/// The most sends one connection may have in flight; the next waits for the oldest.
pub(super) const MAX_IN_FLIGHT: usize = 32;

type Answer = Pin<Box<dyn Future<Output = ServerFrame> + Send>>;

/// A send waiting for its sequencer, and where its answer goes.
struct Queued {
    send: protocol::Send,
    reply: oneshot::Sender<ServerFrame>,
}

/// A connection's sends in flight and the answers queued behind them, in arrival order.
/// Allocated on the first send: most connections are idle, and a queue of futures costs a
/// few hundred bytes even when empty.
pub(super) struct Pipeline {
    answers: Option<FuturesOrdered<Answer>>,
    /// The conversation of each entry of `answers` (none for an answer that was ready).
    conversations: VecDeque<Option<ConversationId>>,
    /// The queue of each conversation's sequencer, while a send to it is unanswered.
    sequencers: Vec<(ConversationId, mpsc::UnboundedSender<Queued>)>,
}

impl Pipeline {
    pub(super) fn new() -> Self {
        Self {
            answers: None,
            conversations: VecDeque::new(),
            sequencers: Vec::new(),
        }
    }

    /// Whether nothing is in flight or queued.
    pub(super) fn is_empty(&self) -> bool {
        self.answers.as_ref().is_none_or(FuturesOrdered::is_empty)
    }

    /// Whether the next send must wait for the oldest answer: the pipeline is full.
    pub(super) fn is_full(&self) -> bool {
        self.conversations.len() >= MAX_IN_FLIGHT
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

    /// Hands a send to its conversation's sequencer, started if there is none.
    pub(super) fn start(
        &mut self,
        shared: Arc<Shared>,
        device: DeviceAddress,
        send: protocol::Send,
    ) {
        let (conversation, req) = (send.conversation, send.req);
        let (reply, answer) = oneshot::channel();
        let mut queued = Queued { send, reply };
        let running = self.sequencers.iter().position(|(c, _)| *c == conversation);
        if let Some(i) = running {
            match self.sequencers[i].1.send(queued) {
                Ok(()) => return self.wait_for(answer, conversation, req),
                // It ended early (a panic); its sends are answered with an error.
                Err(mpsc::error::SendError(back)) => {
                    self.sequencers.swap_remove(i);
                    queued = back;
                }
            }
        }
        let (queue, sends) = mpsc::unbounded_channel();
        // Cannot fail: `sends` is alive.
        let _ = queue.send(queued);
        tokio::spawn(sequence(shared, device, sends));
        self.sequencers.push((conversation, queue));
        self.wait_for(answer, conversation, req);
    }

    fn wait_for(
        &mut self,
        answer: oneshot::Receiver<ServerFrame>,
        conversation: ConversationId,
        req: u32,
    ) {
        let answer = Box::pin(async move {
            answer.await.unwrap_or_else(|_| {
                error_frame(Some(req), ErrorCode::Internal, "send failed; retry it")
            })
        });
        self.push(answer, Some(conversation));
    }

    /// The next answer, in arrival order; `None` when nothing is in flight. Cancel-safe.
    pub(super) async fn next(&mut self) -> Option<ServerFrame> {
        let answer = self.answers.as_mut()?.next().await?;
        if let Some(Some(done)) = self.conversations.pop_front()
            && !self.conversations.contains(&Some(done))
        {
            // Its sequencer has answered everything: it ends when its queue is dropped.
            self.sequencers.retain(|(c, _)| *c != done);
        }
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

/// A sequencer: appends the sends queued to one conversation, a batch at a time in their
/// order, fans out what was stored and answers each, until the queue is dropped and empty.
async fn sequence(
    shared: Arc<Shared>,
    device: DeviceAddress,
    mut queue: mpsc::UnboundedReceiver<Queued>,
) {
    let mut batch = Vec::new();
    while queue.recv_many(&mut batch, MAX_IN_FLIGHT).await > 0 {
        let mut replies = Vec::with_capacity(batch.len());
        let mut sends = Vec::with_capacity(batch.len());
        let mut messages = Vec::with_capacity(batch.len());
        for Queued { send, reply } in batch.drain(..) {
            messages.push(NewMessage {
                conversation: send.conversation,
                sender: device,
                client_key: send.client_key,
                body: send.body.clone(),
                recipients: send.recipients.clone(),
                sent_at: now(),
            });
            sends.push(send);
            replies.push(reply);
        }
        let started = Instant::now();
        let results = shared.store.append_all(messages).await;
        let took = started.elapsed().as_secs_f64();
        let mut stored = Vec::with_capacity(sends.len());
        let mut answers = Vec::with_capacity(sends.len());
        for (send, result) in sends.into_iter().zip(results) {
            answers.push(match result {
                Ok(appended) => {
                    metrics::histogram!("chat_append_seconds").record(took);
                    let message = Stored::new(device, send, appended);
                    let sent = message.sent();
                    stored.push(message);
                    sent
                }
                Err(err) => refusal(&shared, send.req, err),
            });
        }
        // One publish for the batch: a recipient's connection finds its deliveries queued
        // together and writes them with one flush.
        fan_out(&shared, &stored).await;
        for (reply, answer) in replies.into_iter().zip(answers) {
            // The sender may have gone; what was stored stands either way.
            let _ = reply.send(answer);
        }
    }
}

/// A message the store appended, with what its fan-out needs.
struct Stored {
    envelope: Envelope,
    recipients: Vec<Recipient>,
    req: u32,
    appended: Appended,
}

impl Stored {
    fn new(sender: DeviceAddress, send: protocol::Send, appended: Appended) -> Self {
        let envelope = Envelope {
            conversation: send.conversation,
            id: appended.id,
            sender,
            client_key: send.client_key,
            sent_at: appended.sent_at,
            body: send.body,
        };
        Self {
            envelope,
            recipients: send.recipients,
            req: send.req,
            appended,
        }
    }

    /// The sender's answer.
    fn sent(&self) -> ServerFrame {
        Sent {
            req: self.req,
            conversation: self.envelope.conversation,
            id: self.appended.id,
            sent_at: self.appended.sent_at,
            duplicate: self.appended.duplicate,
        }
        .into()
    }
}

/// The answer to a send the store refused.
fn refusal(shared: &Shared, req: u32, err: StoreError) -> ServerFrame {
    match err {
        StoreError::StaleDevices(mismatch) => StaleDevices {
            req,
            missing: mismatch.missing,
            extra: mismatch.extra,
        }
        .into(),
        // A conversation that does not exist is answered like one the sender is not in:
        // conversation IDs are sequential, and the difference would count them.
        StoreError::NotFound => {
            let PeerError { code, message } = health::peer_error(&StoreError::NotMember);
            error_frame(Some(req), code, &message)
        }
        err => {
            if health::is_backend(&err) {
                shared.health.failed("append", &err);
            }
            let PeerError { code, message } = health::peer_error(&err);
            error_frame(Some(req), code, &message)
        }
    }
}

/// Publishes stored messages to each recipient device's connections, in order, each body
/// encoded once and shared, in one batch (one round trip on a network bus, whatever the
/// group's size); a device no connection took (or that the bus could not reach) is woken
/// by push.
async fn fan_out(shared: &Shared, stored: &[Stored]) {
    let events = stored
        .iter()
        .flat_map(|message| {
            message.appended.deliveries.iter().map(|&(recipient, pos)| {
                let header = message
                    .recipients
                    .iter()
                    .find(|r| r.device == recipient)
                    .map_or_else(Bytes::new, |r| r.header.clone());
                let entry = InboxEntry {
                    pos,
                    envelope: message.envelope.clone(),
                    header,
                };
                let frame = Deliver::from(entry).encode_shared();
                let event = BusMessage::Deliver {
                    pos,
                    frame: Arc::new(frame),
                };
                (Topic::Device(recipient.device), event)
            })
        })
        .collect();
    let counts = shared.bus.publish_many(events).await;
    let deliveries = stored.iter().flat_map(|message| {
        let conversation = message.envelope.conversation;
        message
            .appended
            .deliveries
            .iter()
            .map(move |&(recipient, _)| (recipient, conversation))
    });
    for ((recipient, conversation), count) in deliveries.zip(counts) {
        match count {
            Ok(0) => shared.push.offline(recipient, conversation),
            Ok(_) => {}
            // The entry is in the inbox; whether a connection has it is unknown, so the
            // device is woken rather than forgotten.
            Err(err) => {
                tracing::warn!(cause = %err, "live delivery failed");
                shared.push.offline(recipient, conversation);
            }
        }
    }
}
