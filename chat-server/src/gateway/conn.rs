//! One connection's driver: authentication, backlog from the cursor, then the live loop.
//!
//! The store is the source of truth; the bus is only a fast path. What was sent, which live
//! deliveries go out, and when the store must be read (a gap, a `sync`, the trim floor of
//! inbox retention) is decided by chat-core's [`DeliveryStream`]; this driver carries out
//! its actions. While reading from the store it discards queued deliveries (each was
//! committed before it was published, so the read covers it) but forwards every other
//! queued event.
//!
//! A send is fanned out (and push decided) as soon as it is durable, before the `sent`
//! answer is written: nothing the sender's socket does afterwards can keep the message from
//! its recipients (R-ABUSE-3).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use bytes::Bytes;
use std::collections::{BTreeSet, HashSet};

use chat_core::limits::{MAX_FRAME_BYTES, MAX_PRESENCE_SUBSCRIPTIONS, MAX_SYNC_PAGE};
use chat_core::protocol::{
    self, Auth, ClientFrame, Closing, DecodeError, Deliver, PROTOCOL_VERSION, ReceiptEvent,
    ReceiptUpdate, ResyncReason, ResyncRequired, ServerFrame, Subscribe, SyncEnd, TypingEvent,
    TypingUpdate, Welcome,
};
use chat_core::{
    Action, BusMessage, DeliveryStream, DeviceAddress, Entry, ErrorCode, InboxPos, Live, Store,
    StoreError, StoreResult, Topic, UserId,
};
use futures::{SinkExt, StreamExt};
use tokio::time::{Instant as TokioInstant, timeout_at};

use super::send::{Pipeline, error_frame, rate_limited_frame};
use super::sink::ConnSink;
use crate::auth;
use crate::health;
use crate::limiter::{Bucket, Rate};
use crate::listener::ConnSlot;
use crate::state::{Shared, now};

/// How long the final `closing` and close frames may take to write.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// How long they may take after a slow consumer was cut: its socket still holds what was
/// written before, which a client that reads slowly needs time to drain first.
const SLOW_CONSUMER_GRACE: Duration = Duration::from_secs(5);

/// The most bus events a connection handles before it flushes what they wrote.
const BURST: usize = 64;

/// How long a typing indicator lasts unless renewed or stopped.
const TYPING_TTL_MS: u32 = 6_000;

/// Why a connection ends.
#[derive(Debug)]
enum End {
    /// The peer closed or the socket failed; nothing more can be sent.
    Gone,
    /// The peer closed with a normal (1000) or going-away (1001) close: the device signed
    /// off, so it is offline at once instead of when its heartbeat window ends.
    Left,
    /// The server closes with this code.
    Close(ErrorCode, &'static str),
}

type Step = Result<(), End>;

/// Runs one connection to its end; `slot`, its place in its address's connection count, is
/// given back when it ends.
///
/// Not an `async fn`: the state is built before the future, which then holds it once. An
/// `async fn` would also keep its arguments (the WebSocket alone is ~370 bytes) for as long
/// as the connection lasts, and every idle connection pays for its future's size.
pub(super) fn run(
    shared: Arc<Shared>,
    socket: WebSocket,
    slot: Option<ConnSlot>,
) -> impl Future<Output = ()> + Send {
    let mut conn = Conn::new(shared, socket);
    async move {
        metrics::gauge!("chat_connections").increment(1.0);
        conn.shared.connections.fetch_add(1, Ordering::Relaxed);
        let end = match conn.handshake().await {
            Ok(auth) => conn.serve(auth).await,
            Err(end) => end,
        };
        conn.finish(end).await;
        conn.shared.connections.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!("chat_connections").decrement(1.0);
        drop(slot);
    }
}

struct Conn {
    shared: Arc<Shared>,
    socket: WebSocket,
    /// The idle deadline: reset by every frame from the client.
    deadline: TokioInstant,
    frames: Bucket,
    rate: Rate,
    /// Frames refused by the frame limit since the last one accepted: the first refusal is
    /// answered, later ones are dropped, and a connection that keeps going past a burst's
    /// worth is closed.
    refused: u32,
    /// What this connection has sent of the device's inbox, and what to read.
    stream: DeliveryStream,
    device: Option<DeviceAddress>,
    /// The hash of the token the device authenticated with, checked again when the bus may
    /// have lost a `Close` for it.
    token: Option<chat_core::TokenHash>,
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
            refused: 0,
            stream: DeliveryStream::new(),
            device: None,
            token: None,
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
        self.token = auth::token_hash(&auth.token);
        Ok(auth)
    }

    async fn serve(&mut self, auth: Auth) -> End {
        let Some(device) = self.device else {
            return End::Gone;
        };
        let config = &self.shared.config;
        let sink = Arc::new(ConnSink::new(
            config.outbound_queue,
            config.outbound_queue_bytes,
        ));
        self.sink = Some(sink.clone());
        for topic in [Topic::Device(device.device), Topic::User(device.user)] {
            match self.shared.bus.subscribe(topic, sink.clone()).await {
                Ok(id) => self.subscriptions.push((topic, id)),
                Err(_) => return End::Close(ErrorCode::Unavailable, "bus unavailable"),
            }
        }
        tracing::debug!(user = %device.user, device = %device.device, "connected");
        self.shared.presence.connect(device).await;
        match Box::pin(self.start(device, auth.cursor)).await {
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
        let mut pipeline = Pipeline::new();
        // What handles one frame or event is boxed: its state exists only while it runs, and
        // inline it would make every idle connection's future as large as the largest
        // handler (about 1.5 KB more per connection, measured with `chat-bench idle`).
        let end = loop {
            let step = tokio::select! {
                biased;
                () = &mut shutting_down => {
                    Err(End::Close(ErrorCode::ShuttingDown, "server shutting down"))
                }
                () = &mut overflowed => {
                    Err(End::Close(ErrorCode::SlowConsumer, "outbound queue full; resume from your cursor"))
                }
                Some(answer) = pipeline.next(), if !pipeline.is_empty() => {
                    Box::pin(self.send_frame(&answer)).await
                }
                message = sink.recv() => Box::pin(self.outbound_burst(device, message, &sink)).await,
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
                    Some(Ok(message)) => {
                        Box::pin(self.inbound(device, message, &mut pipeline)).await
                    }
                },
            };
            if let Err(end) = step {
                break end;
            }
        };
        // Nothing takes events off the queue any more: the bus is told so from now on.
        sink.close();
        // Sends in flight finish on their own tasks (stored and fanned out whatever happens
        // here); their answers go out while the socket takes them.
        let mut writable = true;
        while let Some(answer) = pipeline.next().await {
            writable = writable && Box::pin(self.send_frame(&answer)).await.is_ok();
        }
        end
    }

    /// Sends `welcome`, then the backlog after `cursor` and `sync_end` (or
    /// `resync_required` where the cursor cannot be served as it is; see [`DeliveryStream`]).
    async fn start(&mut self, device: DeviceAddress, cursor: InboxPos) -> Step {
        let head = stored(&self.shared, self.shared.store.inbox_head(device)).await?;
        let welcome = Welcome {
            version: PROTOCOL_VERSION,
            device,
            heartbeat_ms: self.shared.config.heartbeat_interval_ms,
            max_frame: u32::try_from(MAX_FRAME_BYTES).unwrap_or(u32::MAX),
            head,
        };
        self.send_frame(&welcome.into()).await?;
        self.stream.handle_sync(cursor, head);
        self.drive(device).await
    }

    /// Carries out the delivery stream's actions until it has none: reads of the trim floor
    /// and of inbox pages, `resync_required` and `sync_end`.
    async fn drive(&mut self, device: DeviceAddress) -> Step {
        while let Some(action) = self.stream.poll_action() {
            match action {
                Action::ReadFloor => {
                    let floor = stored(&self.shared, self.shared.store.inbox_floor(device)).await?;
                    self.stream.handle_floor(floor);
                }
                Action::Read { after } => self.read_page(device, after).await?,
                Action::Resync { reason, head } => {
                    if reason == ResyncReason::InboxTrimmed {
                        tracing::debug!(device = %device.device, floor = head.get(), "cursor below the trim floor");
                        metrics::counter!("chat_resync_trimmed_total").increment(1);
                    }
                    self.send_frame(&ResyncRequired { reason, head }.into())
                        .await?;
                }
                Action::SyncEnd { head } => self.send_frame(&SyncEnd { head }.into()).await?,
            }
        }
        Ok(())
    }

    /// One page of the inbox after `after`, sent as the delivery stream decides.
    async fn read_page(&mut self, device: DeviceAddress, after: InboxPos) -> Step {
        let Some(sink) = self.sink.clone() else {
            return Err(End::Gone);
        };
        // Anything queued now was committed before this read, so the read covers it.
        while let Some(message) = sink.try_recv() {
            match message {
                BusMessage::Deliver { pos, .. } => {
                    self.stream.handle_live(pos);
                }
                // The read that follows covers what the bus may have lost.
                BusMessage::Resubscribed(Topic::Device(_)) => {
                    self.check_token().await?;
                    self.stream.handle_repair();
                }
                other => self.forward(other).await?,
            }
        }
        let page = stored(
            &self.shared,
            self.shared.store.inbox(device, after, MAX_SYNC_PAGE),
        )
        .await?;
        let len = page.len();
        for entry in page {
            match self.stream.handle_entry(entry.pos) {
                Entry::Send => {
                    let frame = ServerFrame::Deliver(Deliver::from(entry)).encode();
                    self.feed(Bytes::from(frame)).await?;
                }
                Entry::Skip => {}
                Entry::Stop => break,
            }
        }
        self.flush().await?;
        metrics::counter!("chat_backlog_pages_total").increment(1);
        self.stream.handle_page_end(len, MAX_SYNC_PAGE);
        Ok(())
    }

    /// Handles an event from the bus and those queued behind it (up to [`BURST`]), the
    /// deliveries among them written with one flush: a group message batch reaches a member
    /// as several deliveries at once, and one socket write for them all costs one syscall
    /// on each side instead of one per message.
    async fn outbound_burst(
        &mut self,
        device: DeviceAddress,
        first: BusMessage,
        sink: &ConnSink,
    ) -> Step {
        self.outbound(device, first).await?;
        for _ in 1..BURST {
            let Some(next) = sink.try_recv() else { break };
            self.outbound(device, next).await?;
        }
        self.flush().await
    }

    /// Handles one event from the bus; a delivery is fed to the socket, not flushed.
    async fn outbound(&mut self, device: DeviceAddress, message: BusMessage) -> Step {
        let (pos, frame) = match message {
            BusMessage::Deliver { pos, frame } => (pos, frame),
            BusMessage::Resubscribed(Topic::Device(_)) => {
                // Deliveries, or a `Close`, may have been lost meanwhile: the token is
                // checked again and the inbox read after the last position sent.
                self.check_token().await?;
                metrics::counter!("chat_bus_repairs_total").increment(1);
                self.stream.handle_repair();
                return self.drive(device).await;
            }
            other => return self.forward(other).await,
        };
        match self.stream.handle_live(pos) {
            Live::Send => {
                metrics::counter!("chat_deliveries_total").increment(1);
                self.feed(frame.to_bytes()).await
            }
            Live::Duplicate | Live::Covered => Ok(()),
            Live::Gap => self.drive(device).await,
        }
    }

    /// Handles a bus event other than a delivery.
    async fn forward(&mut self, message: BusMessage) -> Step {
        match message {
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
            // A presence change may have been lost: the current state replaces it.
            BusMessage::Resubscribed(Topic::Presence(user)) => {
                let snapshot = self.shared.presence.snapshot(user).await;
                self.send_frame(&snapshot.into()).await
            }
            _ => Ok(()),
        }
    }

    /// Closes the connection if its token no longer works (revoked while a `Close` on the
    /// bus may have been lost).
    async fn check_token(&mut self) -> Step {
        let Some(token) = self.token else {
            return Err(End::Close(
                ErrorCode::InvalidToken,
                "invalid or revoked token",
            ));
        };
        let store = self.shared.store.clone();
        match stored(&self.shared, store.authenticate(token)).await? {
            Some(device) if Some(device) == self.device => Ok(()),
            _ => Err(End::Close(
                ErrorCode::InvalidToken,
                "invalid or revoked token",
            )),
        }
    }

    /// Handles one WebSocket message from the client.
    async fn inbound(
        &mut self,
        device: DeviceAddress,
        message: Message,
        pipeline: &mut Pipeline,
    ) -> Step {
        self.deadline = TokioInstant::now() + self.shared.config.idle_timeout();
        let bytes = match message {
            Message::Binary(bytes) => bytes,
            Message::Close(Some(frame)) if matches!(frame.code, 1000 | 1001) => {
                return Err(End::Left);
            }
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
            // Told once; a client that keeps sending past a burst's worth of refusals is not
            // listening, and answering each frame would let it keep the node busy.
            self.refused = self.refused.saturating_add(1);
            metrics::counter!("chat_frames_refused_total").increment(1);
            if f64::from(self.refused) > self.rate.burst {
                return Err(End::Close(
                    ErrorCode::RateLimited,
                    "too many frames after being told to slow down",
                ));
            }
            if self.refused > 1 {
                return Ok(());
            }
            return self.rate_limited(None, wait, "too many frames").await;
        }
        self.refused = 0;
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
            ClientFrame::Send(send) => self.send(device, send, pipeline).await,
            ClientFrame::Ack(ack) => {
                // Stored with other devices' in the next batch (`cursors.rs`): nothing
                // waits for it, and a failing store does not end the connection.
                let up_to = self.stream.ackable(ack.up_to);
                self.shared.cursors.record(device, up_to);
                Ok(())
            }
            ClientFrame::Sync(sync) => {
                let head = stored(&self.shared, self.shared.store.inbox_head(device)).await?;
                self.stream.handle_sync(sync.after, head);
                self.drive(device).await
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

    /// Validates a send and starts it (see [`Pipeline`]): refused ones are answered in
    /// turn; one past the in-flight limit waits for earlier answers first.
    async fn send(
        &mut self,
        device: DeviceAddress,
        send: protocol::Send,
        pipeline: &mut Pipeline,
    ) -> Step {
        let req = Some(send.req);
        let refusal = if let Err(code) = send.validate() {
            Some(error_frame(req, code, "send refused by a limit"))
        } else if let Err(wait) = self
            .shared
            .limits
            .sends
            .check(&device.user, Instant::now())
            .await
        {
            Some(rate_limited_frame(
                req,
                wait,
                "too many messages from this account",
            ))
        } else {
            None
        };
        if let Some(refusal) = refusal {
            if pipeline.is_empty() {
                return self.send_frame(&refusal).await;
            }
            pipeline.answer(refusal);
            return Ok(());
        }
        metrics::counter!("chat_messages_in_total").increment(1);
        while pipeline.is_full() {
            if let Some(answer) = pipeline.next().await {
                self.send_frame(&answer).await?;
            }
        }
        pipeline.start(self.shared.clone(), device, send);
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
            let store = self.shared.store.clone();
            self.contacts =
                stored(&self.shared, load_contacts(store.as_ref(), device.user)).await?;
        }
        // Users who block the caller are refused exactly like non-contacts (R-ACC-4). Read
        // fresh each time: a block may have come since the contacts were loaded.
        let store = self.shared.store.clone();
        let blockers = stored(&self.shared, store.blocked_by(device.user)).await?;
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
        let store = self.shared.store.clone();
        if !stored(&self.shared, store.is_member(r.conversation, device.user)).await? {
            return self.error(None, ErrorCode::NotMember, "not a member").await;
        }
        // A position past the newest message would count every later message as read.
        let last = stored(&self.shared, store.conversation(r.conversation))
            .await?
            .and_then(|c| c.last_message);
        if last.is_none_or(|last| r.up_to > last) {
            return self
                .error(
                    None,
                    ErrorCode::InvalidRequest,
                    "receipt past the conversation's last message",
                )
                .await;
        }
        let up_to = stored(
            &self.shared,
            store.set_receipt(r.conversation, device.user, r.kind, r.up_to),
        )
        .await?;
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
        if let Err(wait) = self
            .shared
            .limits
            .typing
            .check(&device.user, Instant::now())
        {
            return self
                .rate_limited(None, wait, "too many typing updates from this account")
                .await;
        }
        let store = self.shared.store.clone();
        if !stored(&self.shared, store.is_member(t.conversation, device.user)).await? {
            return self.error(None, ErrorCode::NotMember, "not a member").await;
        }
        if stored(
            &self.shared,
            blocked_in_direct(store.as_ref(), device.user, t.conversation),
        )
        .await?
        {
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
    /// `wrap` (as a plain or an expiring frame), in one batch.
    async fn relay_to_members(
        &mut self,
        conversation: chat_core::ConversationId,
        skip: Option<chat_core::UserId>,
        wrap: impl Fn(Bytes) -> BusMessage,
        frame: Bytes,
    ) -> Step {
        let store = self.shared.store.clone();
        let members = stored(&self.shared, store.members(conversation)).await?;
        let events = members
            .into_iter()
            .filter(|m| Some(*m) != skip)
            .map(|member| (Topic::User(member), wrap(frame.clone())))
            .collect();
        for count in self.shared.bus.publish_many(events).await {
            if let Err(err) = count {
                tracing::warn!(cause = %err, "relay failed");
            }
        }
        Ok(())
    }

    async fn rate_limited(&mut self, req: Option<u32>, wait: Duration, message: &str) -> Step {
        self.send_frame(&rate_limited_frame(req, wait, message))
            .await
    }

    async fn error(&mut self, req: Option<u32>, code: ErrorCode, message: &str) -> Step {
        self.send_frame(&error_frame(req, code, message)).await
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
                End::Close(ErrorCode::InvalidToken, _) | End::Left => {
                    self.shared.presence.sign_out(device).await
                }
                _ => self.shared.presence.disconnect(device).await,
            }
        }
        if matches!(end, End::Left) {
            // The WebSocket queued its answer to the client's close; send it so the client
            // sees its sign-off completed.
            let _ = tokio::time::timeout(CLOSE_GRACE, self.socket.flush()).await;
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
            let grace = if code == ErrorCode::SlowConsumer {
                SLOW_CONSUMER_GRACE
            } else {
                CLOSE_GRACE
            };
            let goodbye = async {
                self.socket.send(Message::Binary(closing)).await?;
                self.socket.send(Message::Close(Some(frame))).await
            };
            let _ = tokio::time::timeout(grace, goodbye).await;
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
async fn load_contacts(store: &dyn Store, user: UserId) -> StoreResult<HashSet<UserId>> {
    let mut contacts = HashSet::new();
    for conversation in store.conversations_of(user).await? {
        contacts.extend(store.members(conversation.id).await?);
    }
    contacts.remove(&user);
    Ok(contacts)
}

/// Whether `conversation` is a one-to-one whose other member blocks `user`.
async fn blocked_in_direct(
    store: &dyn Store,
    user: UserId,
    conversation: chat_core::ConversationId,
) -> StoreResult<bool> {
    let blockers = store.blocked_by(user).await?;
    if blockers.is_empty() {
        return Ok(false);
    }
    let direct = store
        .conversation(conversation)
        .await?
        .is_some_and(|c| c.kind == chat_core::ConversationKind::Direct);
    if !direct {
        return Ok(false);
    }
    let members = store.members(conversation).await?;
    Ok(members.iter().any(|m| blockers.contains(m)))
}

/// Awaits a store call; a failure ends the connection with `unavailable` (the client
/// reconnects and resumes from its cursor), a backend failure recorded in the node's store
/// health.
async fn stored<T>(shared: &Shared, call: impl Future<Output = StoreResult<T>>) -> Result<T, End> {
    call.await.map_err(|err| {
        store_failed(shared, "connection", &err);
        End::Close(ErrorCode::Unavailable, "storage unavailable")
    })
}

/// Records a backend failure (throttled log, readiness); a model refusal is not one.
fn store_failed(shared: &Shared, during: &'static str, err: &StoreError) {
    if health::is_backend(err) {
        shared.health.failed(during, err);
    } else {
        tracing::debug!(cause = %err, during, "store refused during a connection");
    }
}
