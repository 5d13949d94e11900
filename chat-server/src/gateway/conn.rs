//! One connection's driver: authentication, backlog from the cursor, then the live loop.
//!
//! The store is the source of truth; the bus is only a fast path. The driver remembers the
//! last inbox position it sent (`sent`): a live delivery at `sent + 1` goes out at once, one
//! at or below `sent` is a duplicate and is dropped, and one beyond `sent + 1` means the bus
//! skipped something, so the driver reads the gap from the store. While reading from the
//! store it discards queued deliveries (each was committed before it was published, so the
//! read covers it) but forwards every other queued event.
//!
//! Inbox retention: every read from the store (the backlog, a `sync`, a gap repair) first
//! checks the device's trim floor, and again whenever the entries read skip a position. A
//! device below the floor gets `resync_required {inbox_trimmed, head: floor}` and the
//! entries after the floor: it is told, never silently moved past what was trimmed.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use bytes::Bytes;
use std::collections::{BTreeSet, HashSet};

use chat_core::limits::{MAX_FRAME_BYTES, MAX_PRESENCE_SUBSCRIPTIONS, MAX_SYNC_PAGE};
use chat_core::protocol::{
    self, Auth, ClientFrame, Closing, DecodeError, Deliver, ErrorFrame, PROTOCOL_VERSION,
    ReceiptEvent, ReceiptUpdate, ResyncReason, ResyncRequired, Sent, ServerFrame, StaleDevices,
    Subscribe, SyncEnd, TypingEvent, TypingUpdate, Welcome,
};
use chat_core::{
    BusMessage, DeviceAddress, Envelope, ErrorCode, InboxPos, NewMessage, Store, StoreError, Topic,
    UserId,
};
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::{Instant as TokioInstant, timeout_at};

use super::sink::ConnSink;
use crate::auth;
use crate::limiter::{Bucket, Rate};
use crate::state::{Shared, now};

/// How long the final `closing` and close frames may take to write.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// How long a typing indicator lasts unless renewed or stopped.
const TYPING_TTL_MS: u32 = 6_000;

/// Why a connection ends.
#[derive(Debug)]
enum End {
    /// The peer closed or the socket failed; nothing more can be sent.
    Gone,
    /// The server closes with this code.
    Close(ErrorCode, &'static str),
}

type Step = Result<(), End>;

/// Runs one connection to its end.
pub(super) async fn run(shared: Arc<Shared>, socket: WebSocket) {
    metrics::gauge!("chat_connections").increment(1.0);
    shared.connections.fetch_add(1, Ordering::Relaxed);
    let mut conn = Conn::new(shared, socket);
    let end = match conn.handshake().await {
        Ok(auth) => conn.serve(auth).await,
        Err(end) => end,
    };
    conn.finish(end).await;
    conn.shared.connections.fetch_sub(1, Ordering::Relaxed);
    metrics::gauge!("chat_connections").decrement(1.0);
}

struct Conn {
    shared: Arc<Shared>,
    socket: WebSocket,
    /// The idle deadline: reset by every frame from the client.
    deadline: TokioInstant,
    frames: Bucket,
    rate: Rate,
    /// The last inbox position sent on this connection.
    sent: InboxPos,
    device: Option<DeviceAddress>,
    subscriptions: Vec<(Topic, chat_core::SubscriptionId)>,
    /// Users sharing a conversation with this device's user, loaded when first needed.
    contacts: HashSet<UserId>,
    /// This connection's bus sink, once authenticated: a write blocked on a client that
    /// does not read is abandoned as soon as the sink overflows.
    sink: Option<Arc<ConnSink>>,
}

impl Conn {
    fn new(shared: Arc<Shared>, socket: WebSocket) -> Self {
        let rate = Rate::new(shared.config.frame_burst, shared.config.frames_per_second);
        let deadline = TokioInstant::now() + shared.config.idle_timeout();
        Self {
            shared,
            socket,
            deadline,
            frames: Bucket::full(rate, Instant::now()),
            rate,
            sent: InboxPos::ZERO,
            device: None,
            subscriptions: Vec::new(),
            sink: None,
            contacts: HashSet::new(),
        }
    }

    /// Waits for `auth` and checks it.
    async fn handshake(&mut self) -> Result<Auth, End> {
        let frame = match timeout_at(self.deadline, self.socket.next()).await {
            Err(_) => return Err(End::Close(ErrorCode::HeartbeatTimeout, "no auth frame")),
            Ok(None | Some(Err(_))) => return Err(End::Gone),
            Ok(Some(Ok(message))) => message,
        };
        let auth = match frame {
            Message::Binary(bytes) => match ClientFrame::decode(&bytes) {
                Ok(ClientFrame::Auth(auth)) => auth,
                Ok(_) => {
                    return Err(End::Close(
                        ErrorCode::UnexpectedFrame,
                        "auth must come first",
                    ));
                }
                Err(err) => return Err(End::Close(err.code(), "malformed auth frame")),
            },
            Message::Close(_) => return Err(End::Gone),
            _ => return Err(End::Close(ErrorCode::MalformedFrame, "frames are binary")),
        };
        if auth.version != PROTOCOL_VERSION {
            return Err(End::Close(
                ErrorCode::UnsupportedVersion,
                "unsupported protocol version",
            ));
        }
        let device = auth::authenticate(&self.shared, &auth.token)
            .await
            .map_err(|e| End::Close(e.code, "invalid or revoked token"))?;
        self.device = Some(device);
        Ok(auth)
    }

    async fn serve(&mut self, auth: Auth) -> End {
        let Some(device) = self.device else {
            return End::Gone;
        };
        let (sink, mut rx) = ConnSink::new(self.shared.config.outbound_queue);
        let sink = Arc::new(sink);
        self.sink = Some(sink.clone());
        for topic in [Topic::Device(device.device), Topic::User(device.user)] {
            match self.shared.bus.subscribe(topic, sink.clone()).await {
                Ok(id) => self.subscriptions.push((topic, id)),
                Err(_) => return End::Close(ErrorCode::Unavailable, "bus unavailable"),
            }
        }
        tracing::debug!(user = %device.user, device = %device.device, "connected");
        self.shared.presence.connect(device).await;
        match self.start(device, auth.cursor, &mut rx).await {
            Ok(()) => {}
            Err(end) => return end,
        }
        let mut shutdown = self.shared.shutdown.clone();
        // The futures that outlive one turn of the loop are created once: re-creating timers
        // and waiters for every frame is most of what an idle connection's heartbeat costs.
        let shutting_down = async move {
            let _ = shutdown.wait_for(|down| *down).await;
        };
        let overflowed = sink.overflowed();
        let idle = tokio::time::sleep_until(self.deadline);
        tokio::pin!(shutting_down, overflowed, idle);
        loop {
            let step = tokio::select! {
                biased;
                () = &mut shutting_down => {
                    Err(End::Close(ErrorCode::ShuttingDown, "server shutting down"))
                }
                () = &mut overflowed => {
                    Err(End::Close(ErrorCode::SlowConsumer, "outbound queue full; resume from your cursor"))
                }
                message = rx.recv() => match message {
                    Some(message) => self.outbound(device, message, &mut rx).await,
                    None => Err(End::Gone),
                },
                () = &mut idle => {
                    // Frames move the deadline without touching the timer; check it now.
                    if self.deadline <= TokioInstant::now() {
                        Err(End::Close(ErrorCode::HeartbeatTimeout, "no heartbeat"))
                    } else {
                        idle.as_mut().reset(self.deadline);
                        Ok(())
                    }
                }
                incoming = self.socket.next() => match incoming {
                    None | Some(Err(_)) => Err(End::Gone),
                    Some(Ok(message)) => self.inbound(device, message, &mut rx).await,
                },
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    /// Sends `welcome`, then the backlog after `cursor`, then `sync_end`. A cursor ahead of
    /// the head gets `resync_required {cursor_ahead, head}` instead of a backlog; one below
    /// the trim floor gets `resync_required {inbox_trimmed, head: floor}` before the
    /// backlog after the floor (see [`Self::catch_up`]).
    async fn start(
        &mut self,
        device: DeviceAddress,
        cursor: InboxPos,
        rx: &mut mpsc::Receiver<BusMessage>,
    ) -> Step {
        let head = self
            .shared
            .store
            .inbox_head(device)
            .await
            .map_err(unavailable)?;
        let welcome = Welcome {
            version: PROTOCOL_VERSION,
            device,
            heartbeat_ms: self.shared.config.heartbeat_interval_ms,
            max_frame: u32::try_from(MAX_FRAME_BYTES).unwrap_or(u32::MAX),
            head,
        };
        self.send_frame(&welcome.into()).await?;
        if cursor > head {
            let resync = ResyncRequired {
                reason: ResyncReason::CursorAhead,
                head,
            };
            self.sent = head;
            self.send_frame(&resync.into()).await?;
        } else {
            self.sent = cursor;
            self.catch_up(device, rx).await?;
        }
        self.send_frame(&SyncEnd { head: self.sent }.into()).await
    }

    /// Streams the inbox after `self.sent` from the store until it is exhausted. Starting
    /// below the trim floor, or finding a skipped position on the way (trimming while the
    /// device was connected), moves `self.sent` to the floor with a `resync_required`.
    async fn catch_up(
        &mut self,
        device: DeviceAddress,
        rx: &mut mpsc::Receiver<BusMessage>,
    ) -> Step {
        self.skip_trimmed(device).await?;
        loop {
            // Anything queued now was committed before this read, so the read covers it.
            while let Ok(message) = rx.try_recv() {
                match message {
                    BusMessage::Deliver { .. } => {}
                    other => self.outbound(device, other, rx).await?,
                }
            }
            let page = self
                .shared
                .store
                .inbox(device, self.sent, MAX_SYNC_PAGE)
                .await
                .map_err(unavailable)?;
            let done = page.len() < MAX_SYNC_PAGE;
            for entry in page {
                let pos = entry.pos;
                if Some(pos) != self.sent.next() {
                    // A skipped position: trimmed since the floor was read.
                    self.flush().await?;
                    self.skip_trimmed(device).await?;
                    if pos <= self.sent {
                        // Left below the new floor (trimming goes by time, not position).
                        continue;
                    }
                }
                let frame = ServerFrame::Deliver(Deliver::from(entry)).encode();
                self.feed(Bytes::from(frame)).await?;
                self.sent = pos;
            }
            self.flush().await?;
            metrics::counter!("chat_backlog_pages_total").increment(1);
            if done {
                return Ok(());
            }
        }
    }

    /// Moves `self.sent` up to the device's trim floor if it is below it, saying so with
    /// `resync_required {inbox_trimmed, head: floor}`: the client continues from there.
    async fn skip_trimmed(&mut self, device: DeviceAddress) -> Step {
        let floor = self
            .shared
            .store
            .inbox_floor(device)
            .await
            .map_err(unavailable)?;
        if floor <= self.sent {
            return Ok(());
        }
        tracing::debug!(
            device = %device.device,
            cursor = self.sent.get(),
            floor = floor.get(),
            "cursor below the trim floor"
        );
        metrics::counter!("chat_resync_trimmed_total").increment(1);
        self.sent = floor;
        let resync = ResyncRequired {
            reason: ResyncReason::InboxTrimmed,
            head: floor,
        };
        self.send_frame(&resync.into()).await
    }

    /// Handles one event from the bus.
    async fn outbound(
        &mut self,
        device: DeviceAddress,
        message: BusMessage,
        rx: &mut mpsc::Receiver<BusMessage>,
    ) -> Step {
        match message {
            BusMessage::Deliver { pos, frame } => {
                if pos <= self.sent {
                    return Ok(());
                }
                if Some(pos) == self.sent.next() {
                    self.sent = pos;
                    metrics::counter!("chat_deliveries_total").increment(1);
                    return self.send_bytes(frame).await;
                }
                Box::pin(self.catch_up(device, rx)).await
            }
            BusMessage::Frame(frame) => self.send_bytes(frame).await,
            BusMessage::Expiring { frame, expires_at } => {
                if now() >= expires_at {
                    metrics::counter!("chat_expired_frames_dropped_total").increment(1);
                    return Ok(());
                }
                self.send_bytes(frame).await
            }
            BusMessage::Close(code) => Err(End::Close(code, "closed by the server")),
            BusMessage::Unsubscribe(Topic::Presence(user)) => {
                self.unsubscribe(&[user]).await;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Handles one WebSocket message from the client.
    async fn inbound(
        &mut self,
        device: DeviceAddress,
        message: Message,
        rx: &mut mpsc::Receiver<BusMessage>,
    ) -> Step {
        self.deadline = TokioInstant::now() + self.shared.config.idle_timeout();
        let bytes = match message {
            Message::Binary(bytes) => bytes,
            Message::Close(_) => return Err(End::Gone),
            Message::Ping(_) | Message::Pong(_) => return Ok(()),
            Message::Text(_) => {
                return self
                    .error(None, ErrorCode::MalformedFrame, "frames are binary")
                    .await;
            }
        };
        metrics::counter!("chat_frames_in_total").increment(1);
        if let Err(wait) = self.frames.take(self.rate, Instant::now()) {
            return self.rate_limited(None, wait, "too many frames").await;
        }
        let frame = match ClientFrame::decode(&bytes) {
            Ok(frame) => frame,
            Err(err) => {
                let message = match &err {
                    DecodeError::UnknownType(_) | DecodeError::TooLarge { .. } => err.to_string(),
                    DecodeError::Malformed(_) => "malformed frame".into(),
                    _ => err.to_string(),
                };
                return self.error(None, err.code(), &message).await;
            }
        };
        match frame {
            ClientFrame::Send(send) => self.send(device, send).await,
            ClientFrame::Ack(ack) => {
                let up_to = ack.up_to.min(self.sent);
                self.shared
                    .store
                    .ack(device, up_to)
                    .await
                    .map_err(unavailable)?;
                Ok(())
            }
            ClientFrame::Sync(sync) => {
                self.sent = sync.after;
                self.catch_up(device, rx).await?;
                self.send_frame(&SyncEnd { head: self.sent }.into()).await
            }
            ClientFrame::Receipt(receipt) => self.receipt(device, receipt).await,
            ClientFrame::Typing(typing) => self.typing(device, typing).await,
            ClientFrame::Heartbeat(_) => {
                self.shared.presence.heartbeat(device).await;
                Ok(())
            }
            ClientFrame::Subscribe(subscribe) => self.subscribe(device, subscribe).await,
            ClientFrame::Unsubscribe(unsubscribe) => {
                self.unsubscribe(&unsubscribe.users).await;
                Ok(())
            }
            ClientFrame::Auth(_) => {
                self.error(None, ErrorCode::UnexpectedFrame, "already authenticated")
                    .await
            }
            _ => {
                self.error(None, ErrorCode::UnknownFrameType, "unsupported frame")
                    .await
            }
        }
    }

    /// Validates, appends durably, acknowledges, then fans out.
    async fn send(&mut self, device: DeviceAddress, send: protocol::Send) -> Step {
        let req = Some(send.req);
        if let Err(code) = send.validate() {
            return self.error(req, code, "send refused by a limit").await;
        }
        if let Err(wait) = self.shared.limits.sends.check(&device.user, Instant::now()) {
            return self
                .rate_limited(req, wait, "too many messages from this account")
                .await;
        }
        metrics::counter!("chat_messages_in_total").increment(1);
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
        let appended = match self.shared.store.append(message).await {
            Ok(appended) => appended,
            Err(StoreError::StaleDevices(mismatch)) => {
                let stale = StaleDevices {
                    req: send.req,
                    missing: mismatch.missing,
                    extra: mismatch.extra,
                };
                return self.send_frame(&stale.into()).await;
            }
            Err(err) => {
                let code = err.code();
                if code == ErrorCode::Unavailable {
                    tracing::error!(cause = %err, "append failed");
                }
                return self.error(req, code, &err.to_string()).await;
            }
        };
        metrics::histogram!("chat_append_seconds").record(started.elapsed().as_secs_f64());
        let sent = Sent {
            req: send.req,
            conversation: send.conversation,
            id: appended.id,
            sent_at: appended.sent_at,
            duplicate: appended.duplicate,
        };
        // The ack goes out before any delivery, so a sender never sees its own message
        // arrive on another device before it knows the message is stored.
        self.send_frame(&sent.into()).await?;
        let envelope = Envelope {
            conversation: send.conversation,
            id: appended.id,
            sender: device,
            client_key: send.client_key,
            sent_at: appended.sent_at,
            body,
        };
        for (recipient, pos) in appended.deliveries {
            let header = headers
                .iter()
                .find(|r| r.device == recipient)
                .map(|r| r.header.clone())
                .unwrap_or_default();
            let entry = chat_core::InboxEntry {
                pos,
                envelope: envelope.clone(),
                header,
            };
            let frame = Bytes::from(ServerFrame::Deliver(Deliver::from(entry)).encode());
            let event = BusMessage::Deliver { pos, frame };
            match self
                .shared
                .bus
                .publish(Topic::Device(recipient.device), event)
                .await
            {
                // No live connection took it: wake the device (queued, never waits).
                Ok(0) => self.shared.push.offline(recipient, send.conversation),
                Ok(_) => {}
                // The entry is in the inbox; the device gets it on its next sync.
                Err(err) => tracing::warn!(cause = %err, "live delivery failed"),
            }
        }
        Ok(())
    }

    /// Subscribes to the presence of contacts (users sharing a conversation with the caller),
    /// answering with each one's current state; anyone else is refused with `forbidden`.
    async fn subscribe(&mut self, device: DeviceAddress, subscribe: Subscribe) -> Step {
        if let Err(code) = subscribe.validate() {
            return self
                .error(None, code, "too many users in one subscribe")
                .await;
        }
        let Some(sink) = self.sink.clone() else {
            return Err(End::Gone);
        };
        let wanted: BTreeSet<UserId> = subscribe.users.into_iter().collect();
        if wanted.iter().any(|u| !self.contacts.contains(u)) {
            // Conversations may have been joined since the last look: refresh once.
            self.contacts = load_contacts(self.shared.store.as_ref(), device.user).await?;
        }
        // Users who block the caller are refused exactly like non-contacts (R-ACC-4). Read
        // fresh each time: a block may have come since the contacts were loaded.
        let blockers = self
            .shared
            .store
            .blocked_by(device.user)
            .await
            .map_err(unavailable)?;
        let (allowed, refused): (Vec<UserId>, Vec<UserId>) = wanted
            .into_iter()
            .partition(|u| self.contacts.contains(u) && !blockers.contains(u));
        for user in allowed {
            let topic = Topic::Presence(user);
            if self.subscriptions.iter().any(|(t, _)| *t == topic) {
                continue;
            }
            if self.subscriptions.len() >= MAX_PRESENCE_SUBSCRIPTIONS + 2 {
                return self
                    .error(
                        None,
                        ErrorCode::InvalidRequest,
                        "too many presence subscriptions",
                    )
                    .await;
            }
            let id = self
                .shared
                .bus
                .subscribe(topic, sink.clone())
                .await
                .map_err(|_| End::Close(ErrorCode::Unavailable, "bus unavailable"))?;
            self.subscriptions.push((topic, id));
            let snapshot = self.shared.presence.snapshot(user).await;
            self.send_frame(&snapshot.into()).await?;
        }
        if refused.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = refused.iter().map(ToString::to_string).collect();
        let message = format!("not a contact: {}", ids.join(", "));
        self.error(None, ErrorCode::Forbidden, &message).await
    }

    async fn unsubscribe(&mut self, users: &[UserId]) {
        let mut dropped = Vec::new();
        self.subscriptions.retain(|(topic, id)| match topic {
            Topic::Presence(user) if users.contains(user) => {
                dropped.push((*topic, *id));
                false
            }
            _ => true,
        });
        for (topic, id) in dropped {
            let _ = self.shared.bus.unsubscribe(topic, id).await;
        }
    }

    async fn receipt(&mut self, device: DeviceAddress, r: ReceiptUpdate) -> Step {
        let store = &self.shared.store;
        if !store
            .is_member(r.conversation, device.user)
            .await
            .map_err(unavailable)?
        {
            return self.error(None, ErrorCode::NotMember, "not a member").await;
        }
        let stored = store
            .set_receipt(r.conversation, device.user, r.kind, r.up_to)
            .await;
        let up_to = stored.map_err(unavailable)?;
        if up_to != r.up_to {
            return Ok(()); // Lower than the stored position: nothing moved.
        }
        let event = ReceiptEvent {
            conversation: r.conversation,
            user: device.user,
            kind: r.kind,
            up_to,
        };
        let frame = Bytes::from(ServerFrame::Receipt(event).encode());
        self.relay_to_members(r.conversation, None, BusMessage::Frame, frame)
            .await
    }

    async fn typing(&mut self, device: DeviceAddress, t: TypingUpdate) -> Step {
        if !self
            .shared
            .store
            .is_member(t.conversation, device.user)
            .await
            .map_err(unavailable)?
        {
            return self.error(None, ErrorCode::NotMember, "not a member").await;
        }
        if blocked_in_direct(self.shared.store.as_ref(), device.user, t.conversation).await? {
            return Ok(()); // Dropped silently, like a withheld send.
        }
        let event = TypingEvent {
            conversation: t.conversation,
            from: device,
            active: t.active,
            ttl_ms: TYPING_TTL_MS,
        };
        // Never delivered after its own TTL: a stale "typing" would show for a full TTL more.
        let frame = Bytes::from(ServerFrame::Typing(event).encode());
        let expires_at = now().saturating_add(Duration::from_millis(u64::from(TYPING_TTL_MS)));
        self.relay_to_members(
            t.conversation,
            Some(device.user),
            |frame| BusMessage::Expiring { frame, expires_at },
            frame,
        )
        .await
    }

    /// Publishes an encoded frame to every member's connections except `skip`'s, wrapped by
    /// `wrap` (as a plain or an expiring frame).
    async fn relay_to_members(
        &mut self,
        conversation: chat_core::ConversationId,
        skip: Option<chat_core::UserId>,
        wrap: impl Fn(Bytes) -> BusMessage,
        frame: Bytes,
    ) -> Step {
        let members = self
            .shared
            .store
            .members(conversation)
            .await
            .map_err(unavailable)?;
        for member in members.into_iter().filter(|m| Some(*m) != skip) {
            let message = wrap(frame.clone());
            if let Err(err) = self.shared.bus.publish(Topic::User(member), message).await {
                tracing::warn!(cause = %err, "relay failed");
            }
        }
        Ok(())
    }

    async fn rate_limited(&mut self, req: Option<u32>, wait: Duration, message: &str) -> Step {
        let frame = ErrorFrame {
            req,
            code: ErrorCode::RateLimited,
            message: message.into(),
            retry_after_ms: Some(u32::try_from(wait.as_millis()).unwrap_or(u32::MAX)),
        };
        self.send_frame(&frame.into()).await
    }

    async fn error(&mut self, req: Option<u32>, code: ErrorCode, message: &str) -> Step {
        let frame = ErrorFrame {
            req,
            code,
            message: message.into(),
            retry_after_ms: None,
        };
        self.send_frame(&frame.into()).await
    }

    async fn send_frame(&mut self, frame: &ServerFrame) -> Step {
        self.send_bytes(Bytes::from(frame.encode())).await
    }

    async fn send_bytes(&mut self, frame: Bytes) -> Step {
        let sink = self.sink.clone();
        let write = self.socket.send(Message::Binary(frame));
        unless_overflowed(sink.as_deref(), write).await
    }

    async fn feed(&mut self, frame: Bytes) -> Step {
        let sink = self.sink.clone();
        let write = self.socket.feed(Message::Binary(frame));
        unless_overflowed(sink.as_deref(), write).await
    }

    async fn flush(&mut self) -> Step {
        let sink = self.sink.clone();
        let write = self.socket.flush();
        unless_overflowed(sink.as_deref(), write).await
    }

    /// Unsubscribes and, when the server ends the connection, says why before closing.
    async fn finish(&mut self, end: End) {
        for (topic, id) in self.subscriptions.drain(..) {
            let _ = self.shared.bus.unsubscribe(topic, id).await;
        }
        if let Some(device) = self.device {
            match end {
                End::Close(ErrorCode::InvalidToken, _) => {
                    self.shared.presence.sign_out(device).await
                }
                _ => self.shared.presence.disconnect(device).await,
            }
        }
        if let End::Close(code, message) = end {
            if let Some(device) = self.device {
                tracing::debug!(device = %device.device, code = %code, "closing connection");
            }
            let closing = Bytes::from(
                ServerFrame::from(Closing {
                    code,
                    message: message.into(),
                })
                .encode(),
            );
            let close_code = if code == ErrorCode::ShuttingDown {
                1001
            } else {
                1008
            };
            let frame = CloseFrame {
                code: close_code,
                reason: code.name().into(),
            };
            // A client that does not read gets a short grace, not a hung task.
            let goodbye = async {
                self.socket.send(Message::Binary(closing)).await?;
                self.socket.send(Message::Close(Some(frame))).await
            };
            let _ = tokio::time::timeout(CLOSE_GRACE, goodbye).await;
        }
    }
}

/// Runs a socket write, abandoning it with `slow_consumer` if the outbound queue overflows
/// meanwhile (the client stopped reading).
async fn unless_overflowed<E>(
    sink: Option<&ConnSink>,
    write: impl std::future::Future<Output = Result<(), E>>,
) -> Step {
    let Some(sink) = sink else {
        return write.await.map_err(|_| End::Gone);
    };
    tokio::select! {
        result = write => result.map_err(|_| End::Gone),
        () = sink.overflowed() => {
            Err(End::Close(ErrorCode::SlowConsumer, "outbound queue full; resume from your cursor"))
        }
    }
}

/// Everyone who shares a conversation with `user`.
async fn load_contacts(store: &dyn Store, user: UserId) -> Result<HashSet<UserId>, End> {
    let mut contacts = HashSet::new();
    for conversation in store.conversations_of(user).await.map_err(unavailable)? {
        contacts.extend(store.members(conversation.id).await.map_err(unavailable)?);
    }
    contacts.remove(&user);
    Ok(contacts)
}

/// Whether `conversation` is a one-to-one whose other member blocks `user`.
async fn blocked_in_direct(
    store: &dyn Store,
    user: UserId,
    conversation: chat_core::ConversationId,
) -> Result<bool, End> {
    let blockers = store.blocked_by(user).await.map_err(unavailable)?;
    if blockers.is_empty() {
        return Ok(false);
    }
    let direct = store
        .conversation(conversation)
        .await
        .map_err(unavailable)?
        .is_some_and(|c| c.kind == chat_core::ConversationKind::Direct);
    if !direct {
        return Ok(false);
    }
    let members = store.members(conversation).await.map_err(unavailable)?;
    Ok(members.iter().any(|m| blockers.contains(m)))
}

fn unavailable(err: StoreError) -> End {
    tracing::error!(cause = %err, "store failed during a connection");
    End::Close(ErrorCode::Unavailable, "storage unavailable")
}
