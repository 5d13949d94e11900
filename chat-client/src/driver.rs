//! The driver: one task per client that owns the WebSocket.
//!
//! It connects, authenticates with the stored cursor, processes the backlog and live
//! deliveries through [`SyncCursor`] (duplicates dropped, a gap answered with `sync`), stores
//! each decrypted message with its session state and cursor in one atomic batch, fsyncs once
//! for every batch before each ack (group commit, see [`crate::SqliteStore`]), sends the
//! outbox (again after every reconnect, with the same client keys and bytes), sends
//! heartbeats on the interval from `welcome`, and reconnects with exponential backoff and
//! full jitter. What needs no socket (request IDs, busy entries, acks) is in `bookkeeping`.
//!
//! It connects to the current node of the client's [`crate::Nodes`]. A connection that is
//! lost is tried again on the same node; a node that cannot be connected to (or sends no
//! `welcome`) is reported to the node list, so the next attempt goes to the next node (for a
//! discovered list, after asking discovery again). On the new node the WebSocket resumes from
//! the stored cursor and the outbox goes again with its client keys, so a node's death loses
//! and duplicates nothing: the server stores one message per client key, and answers a
//! repeated key with the message it stored.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chat_core::protocol::{
    ACK_WITHIN, Ack, Auth, ClientFrame, Deliver, ErrorFrame, Heartbeat, PROTOCOL_VERSION,
    SUBPROTOCOL, ServerFrame, StaleDevices, SyncRequest,
};
use chat_core::{ClientKey, ErrorCode, Recipient, SyncCursor, Verdict};
use futures::{SinkExt, StreamExt};
use rand::RngExt as _;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::client::Inner;
use crate::e2e::{Opened, Payload};
use crate::error::Error;
use crate::event::{ConnectionState, Event, Message};
use crate::store::{OutboxEntry, RecoveryPoint, StoredMessage, Write};
use crate::thread;

mod bookkeeping;

use bookkeeping::{Acks, Refusal, Sends};

/// How long connecting and the `welcome` may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The first reconnect delay; doubled per failed attempt up to [`MAX_BACKOFF`].
const BASE_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Ack on this timer, and sooner after [`ACK_EVERY`](chat_core::protocol::ACK_EVERY)
/// entries: so within [`ACK_WITHIN`].
const ACK_INTERVAL: Duration = ACK_WITHIN;
/// How long the driver runs through ready frames before it lets the runtime's other tasks in.
const MAX_RUN: Duration = Duration::from_micros(500);
/// How long the server's answer to a normal close may take before the socket is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// How long the key upkeep after the first backlog may take.
const KEY_UPKEEP_TIMEOUT: Duration = Duration::from_secs(5);
/// Frames (receipts, typing) kept while disconnected.
const MAX_QUEUED_FRAMES: usize = 256;

/// What the client asks its driver to do.
#[derive(Debug)]
pub(crate) enum Command {
    /// An outbox entry is ready: send it unless it is in flight.
    Send(ClientKey),
    /// An outbox entry was repaired or may be retried: send it again.
    Retry(ClientKey),
    /// Send a frame (receipt, typing, presence subscription).
    Frame(ClientFrame),
    /// Close the connection with a normal WebSocket close and stop: the app signs off. The
    /// sender is dropped once the connection is closed.
    Close(tokio::sync::oneshot::Sender<()>),
}

enum End {
    /// The client was dropped.
    Closed,
    /// The token was refused.
    LoggedOut,
    /// The connection was lost; `synced` if it had got past the backlog.
    Lost { reason: String, synced: bool },
    /// The node could not be connected to or sent no `welcome`; the next node is current.
    Unreachable { reason: String },
}

type Ws = tokio_tungstenite::WebSocketStream<crate::net::Stream>;

/// Runs until the client is dropped or logged out.
pub(crate) async fn run(inner: Arc<Inner>, mut commands: mpsc::UnboundedReceiver<Command>) {
    let mut attempt: u32 = 0;
    let mut queued: Vec<ClientFrame> = Vec::new();
    // Discovery is asked before the first connection and after each node that failed.
    let mut discover = true;
    loop {
        if discover {
            inner.nodes.refresh().await;
            discover = false;
        }
        inner.emit(Event::Connection(ConnectionState::Connecting));
        let end = Conn::new(inner.clone())
            .run(&mut commands, &mut queued)
            .await;
        let reason = match end {
            End::Closed => return,
            End::LoggedOut => {
                inner.emit(Event::Connection(ConnectionState::LoggedOut));
                return;
            }
            End::Lost { reason, synced } => {
                inner.clear_typing();
                if synced {
                    attempt = 0;
                }
                reason
            }
            End::Unreachable { reason } => {
                discover = true;
                reason
            }
        };
        let delay = backoff(attempt);
        attempt = attempt.saturating_add(1);
        tracing::debug!(%reason, delay_ms = delay.as_millis() as u64, "reconnecting");
        inner.emit(Event::Connection(ConnectionState::Disconnected {
            reason,
            retry_in: delay,
        }));
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => break,
                cmd = commands.recv() => match cmd {
                    None | Some(Command::Close(_)) => return,
                    // The whole outbox is sent after the reconnect anyway.
                    Some(Command::Send(_) | Command::Retry(_)) => {}
                    // Presence subscriptions are renewed from the client's set on connect.
                    Some(Command::Frame(ClientFrame::Subscribe(_) | ClientFrame::Unsubscribe(_))) => {}
                    Some(Command::Frame(f)) => {
                        if queued.len() < MAX_QUEUED_FRAMES {
                            queued.push(f);
                        }
                    }
                },
            }
        }
    }
}

/// Waits `wait`, or forever without one.
async fn until(wait: Option<Duration>) {
    match wait {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// Exponential backoff with full jitter: a random delay in `[d/2, d]`.
fn backoff(attempt: u32) -> Duration {
    let d = BASE_BACKOFF
        .saturating_mul(1u32 << attempt.min(16))
        .min(MAX_BACKOFF);
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(2);
    Duration::from_millis(rand::rng().random_range(ms / 2..=ms))
}

/// One connection's state.
struct Conn {
    inner: Arc<Inner>,
    cursor: SyncCursor,
    acks: Acks,
    resyncing: bool,
    synced: bool,
    /// Entries sent on this connection and not answered, or being repaired.
    sends: Sends,
}

fn lost(reason: impl std::fmt::Display, synced: bool) -> End {
    End::Lost {
        reason: reason.to_string(),
        synced,
    }
}

impl Conn {
    fn new(inner: Arc<Inner>) -> Self {
        Self {
            inner,
            cursor: SyncCursor::default(),
            acks: Acks::default(),
            resyncing: false,
            synced: false,
            sends: Sends::default(),
        }
    }

    async fn run(
        mut self,
        commands: &mut mpsc::UnboundedReceiver<Command>,
        queued: &mut Vec<ClientFrame>,
    ) -> End {
        let node = self.inner.nodes.current();
        let reached = match self.connect(&node).await {
            Ok(mut ws) => self.handshake(&mut ws).await.map(|ms| (ws, ms)),
            Err(end) => Err(end),
        };
        let (mut ws, heartbeat_ms) = match reached {
            Ok(reached) => reached,
            Err(End::Lost { reason, .. }) => {
                self.inner.nodes.failed(&node);
                return End::Unreachable { reason };
            }
            Err(end) => return end,
        };
        self.inner
            .emit(Event::Connection(ConnectionState::Connected));
        let outbox = match self.inner.store.outbox() {
            Ok(o) => o,
            Err(e) => return lost(e, false),
        };
        // An entry read above may have been staged a moment ago (`ClientStore::stage`) and
        // not be on disk yet; nothing leaves the device before it is.
        if let Err(e) = self.inner.store.sync().await {
            return lost(e, false);
        }
        for entry in outbox {
            if let Err(end) = self.send_entry(&mut ws, &entry).await {
                return end;
            }
        }
        for f in queued.drain(..) {
            if let Err(end) = self.send(&mut ws, &f).await {
                return end;
            }
        }
        // Subscriptions end with a connection: renew them.
        let watched: Vec<_> = match self.inner.presence.lock() {
            Ok(set) => set.iter().copied().collect(),
            Err(_) => Vec::new(),
        };
        for users in watched.chunks(chat_core::limits::MAX_PRESENCE_SUBSCRIPTIONS) {
            let subscribe = chat_core::protocol::Subscribe {
                users: users.to_vec(),
            };
            if let Err(end) = self.send(&mut ws, &subscribe.into()).await {
                return end;
            }
        }
        let period = Duration::from_millis(u64::from(heartbeat_ms.max(100)));
        let mut heartbeat = tokio::time::interval(period);
        // Not at once, as `interval` would: there is nothing to acknowledge yet.
        let mut ack =
            tokio::time::interval_at(tokio::time::Instant::now() + ACK_INTERVAL, ACK_INTERVAL);
        let mut ran_since = Instant::now();
        loop {
            let typing_expiry = self.inner.typing_wait();
            let step = tokio::select! {
                incoming = ws.next() => match incoming {
                    Some(Ok(WsMessage::Binary(bytes))) => match ServerFrame::decode(&bytes) {
                        Ok(frame) => self.handle(&mut ws, frame).await,
                        // Unknown frame types are ignored (forward compatibility).
                        Err(chat_core::protocol::DecodeError::UnknownType(_)) => Ok(()),
                        Err(e) => Err(lost(e, self.synced)),
                    },
                    Some(Ok(WsMessage::Close(_))) | None => Err(lost("closed by the server", self.synced)),
                    Some(Err(e)) => Err(lost(e, self.synced)),
                    Some(Ok(_)) => Ok(()),
                },
                cmd = commands.recv() => match cmd {
                    None => {
                        let _ = ws.close(None).await;
                        return End::Closed;
                    }
                    Some(cmd) => self.command(&mut ws, cmd).await,
                },
                _ = heartbeat.tick() => self.send(&mut ws, &Heartbeat {}.into()).await,
                () = until(typing_expiry) => {
                    self.inner.expire_typing();
                    Ok(())
                },
                _ = ack.tick() => self.ack(&mut ws).await,
            };
            if let Err(end) = step {
                return end;
            }
            // Frames already buffered by the WebSocket never make the task yield on their
            // own, and tokio's budget (128 steps) would let a backlog hold the thread for
            // 128 decrypt-and-stores: yield once the task has run `MAX_RUN`, so the app's
            // other tasks wait at most that and one frame's work (and a dropped client stops
            // promptly). Not after every step: on a multi-threaded runtime that costs a
            // quarter of the backlog's storing rate.
            if ran_since.elapsed() >= MAX_RUN {
                tokio::task::yield_now().await;
                ran_since = Instant::now();
            }
        }
    }

    async fn connect(&mut self, server: &crate::net::Server) -> Result<Ws, End> {
        let mut request = server
            .ws_url()
            .into_client_request()
            .map_err(|e| lost(e, false))?;
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(SUBPROTOCOL),
        );
        let handshake = async {
            let stream = server.connect().await.map_err(|e| lost(e, false))?;
            tokio_tungstenite::client_async(request, stream)
                .await
                .map(|(ws, _)| ws)
                .map_err(|e| lost(e, false))
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, handshake).await {
            Ok(result) => result,
            Err(_) => Err(lost("connect timed out", false)),
        }
    }

    /// `auth` → `welcome`; returns the heartbeat interval.
    async fn handshake(&mut self, ws: &mut Ws) -> Result<u32, End> {
        let cursor = self.inner.store.cursor().map_err(|e| lost(e, false))?;
        self.cursor = SyncCursor::new(cursor);
        self.acks.resume(cursor);
        let auth = Auth {
            version: PROTOCOL_VERSION,
            token: self.inner.token.clone(),
            cursor,
        };
        self.send(ws, &auth.into()).await?;
        let first = tokio::time::timeout(CONNECT_TIMEOUT, async {
            loop {
                match ws.next().await {
                    Some(Ok(WsMessage::Binary(b))) => return Some(ServerFrame::decode(&b)),
                    Some(Ok(WsMessage::Close(_)) | Err(_)) | None => return None,
                    Some(Ok(_)) => {}
                }
            }
        })
        .await;
        match first {
            Ok(Some(Ok(ServerFrame::Welcome(w)))) => Ok(w.heartbeat_ms),
            Ok(Some(Ok(ServerFrame::Closing(c)))) if c.code == ErrorCode::InvalidToken => {
                Err(End::LoggedOut)
            }
            Ok(Some(Ok(ServerFrame::Closing(c)))) => Err(lost(c.message, false)),
            Ok(_) => Err(lost("no welcome", false)),
            Err(_) => Err(lost("welcome timed out", false)),
        }
    }

    async fn send(&mut self, ws: &mut Ws, frame: &ClientFrame) -> Result<(), End> {
        ws.send(WsMessage::Binary(frame.encode().into()))
            .await
            .map_err(|e| lost(e, self.synced))
    }

    async fn send_entry(&mut self, ws: &mut Ws, entry: &OutboxEntry) -> Result<(), End> {
        let payload = match Payload::decode(&entry.payload) {
            Ok(p) => p,
            Err(e) => {
                self.fail(entry.client_key, entry.conversation, ErrorCode::Internal, e);
                return Ok(());
            }
        };
        let (body, headers) = payload.wire();
        let req = self.sends.start(entry.client_key);
        let send = chat_core::protocol::Send {
            req,
            conversation: entry.conversation,
            client_key: entry.client_key,
            body: body.into(),
            recipients: headers
                .into_iter()
                .map(|(device, header)| Recipient {
                    device,
                    header: header.into(),
                })
                .collect(),
        };
        self.send(ws, &send.into()).await
    }

    async fn command(&mut self, ws: &mut Ws, cmd: Command) -> Result<(), End> {
        let key = match cmd {
            Command::Frame(f) => return self.send(ws, &f).await,
            Command::Close(_done) => return Err(self.close(ws).await),
            Command::Send(k) if !self.sends.wants(k) => return Ok(()),
            Command::Send(k) => k,
            Command::Retry(k) => {
                self.sends.retry(k);
                k
            }
        };
        // Queued (or repaired) entries are durable: they were synced before the command.
        let entry = self
            .inner
            .store
            .outbox_entry(key)
            .map_err(|e| lost(e, self.synced))?;
        match entry {
            Some(entry) => self.send_entry(ws, &entry).await,
            None => Ok(()),
        }
    }

    /// Acknowledges what was processed, closes with a normal close (the server then counts
    /// this device as gone at once, not after its heartbeat window) and waits briefly for
    /// the server's close in answer.
    async fn close(&mut self, ws: &mut Ws) -> End {
        let _ = self.ack(ws).await;
        // What is staged besides (a `sent` answer, a read position) is synced by
        // `Client::close` once the driver has stopped, connected or not.
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "signed off".into(),
        };
        if ws.close(Some(frame)).await.is_ok() {
            let answered = async { while let Some(Ok(_)) = ws.next().await {} };
            let _ = tokio::time::timeout(CLOSE_GRACE, answered).await;
        }
        End::Closed
    }

    async fn ack(&mut self, ws: &mut Ws) -> Result<(), End> {
        let Some(up_to) = self.acks.take(self.cursor.position()) else {
            return Ok(());
        };
        // Deliveries are staged (`Crypto::open`): one fsync makes all since the last ack
        // durable before the server may drop them.
        self.inner
            .store
            .sync()
            .await
            .map_err(|e| lost(e, self.synced))?;
        self.send(ws, &Ack { up_to }.into()).await
    }

    async fn handle(&mut self, ws: &mut Ws, frame: ServerFrame) -> Result<(), End> {
        match frame {
            ServerFrame::Deliver(d) => self.deliver(ws, d).await,
            ServerFrame::SyncEnd(end) => {
                self.resyncing = false;
                if self.cursor.check_backlog_end(end.head).is_err() {
                    return self.resync(ws).await;
                }
                self.ack(ws).await?;
                if !self.synced {
                    self.synced = true;
                    // Key upkeep (one-time prekey refill, weekly signed prekey) before the
                    // app hears it is up to date; bounded so a slow server cannot stall the
                    // connection. Frames arriving meanwhile wait in the socket.
                    match tokio::time::timeout(KEY_UPKEEP_TIMEOUT, self.inner.refill_prekeys())
                        .await
                    {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::warn!(cause = %e, "key upkeep failed"),
                        Err(_) => tracing::warn!("key upkeep timed out"),
                    }
                    self.inner.emit(Event::Connection(ConnectionState::Synced));
                }
                self.start_recovery();
                Ok(())
            }
            ServerFrame::ResyncRequired(r) => {
                tracing::warn!(reason = ?r.reason, head = r.head.get(), "server cannot serve from our cursor");
                // Where each conversation stood, kept with the new cursor in one batch: the
                // recovery after the backlog reads history after these points, even if the
                // app stops before it runs.
                {
                    // Under the recovery lock: a running recovery sees this resync before it
                    // clears what it was given (and runs again).
                    let _guard = self
                        .inner
                        .recovery_lock
                        .lock()
                        .map_err(|_| lost("poisoned", self.synced))?;
                    let points = self.recovery_points().map_err(|e| lost(e, self.synced))?;
                    self.inner
                        .store
                        .stage(vec![Write::Cursor(r.head), Write::Recovery(Some(points))])
                        .map_err(|e| lost(e, self.synced))?;
                    self.inner.resyncs.fetch_add(1, Ordering::AcqRel);
                }
                // Synced outside the lock: none is held across an fsync.
                self.inner
                    .store
                    .sync()
                    .await
                    .map_err(|e| lost(e, self.synced))?;
                self.cursor = SyncCursor::new(r.head);
                self.acks.restart(r.head);
                self.inner.emit(Event::ResyncRequired { reason: r.reason });
                Ok(())
            }
            ServerFrame::Sent(s) => {
                if let Some(key) = self.sends.stored(s.req) {
                    self.sent(key, &s).map_err(|e| lost(e, self.synced))?;
                }
                Ok(())
            }
            ServerFrame::StaleDevices(s) => {
                self.stale(s);
                Ok(())
            }
            ServerFrame::Error(e) => {
                self.error(e);
                Ok(())
            }
            ServerFrame::Receipt(r) => {
                if r.user == self.inner.me.user && r.kind == chat_core::ReceiptKind::Read {
                    // Read on another device of this user: unread counts follow everywhere.
                    let raise = Write::ReadPosition {
                        conversation: r.conversation,
                        up_to: r.up_to,
                    };
                    self.inner
                        .store
                        .commit(vec![raise])
                        .await
                        .map_err(|e| lost(e, self.synced))?;
                }
                self.inner.emit(Event::Receipt {
                    conversation: r.conversation,
                    user: r.user,
                    kind: r.kind,
                    up_to: r.up_to,
                });
                Ok(())
            }
            ServerFrame::Typing(t) => {
                let ttl = Duration::from_millis(u64::from(t.ttl_ms));
                self.inner
                    .typing_event(t.conversation, t.from, t.active, ttl);
                Ok(())
            }
            ServerFrame::Presence(p) => {
                self.inner.emit(Event::Presence {
                    user: p.user,
                    online: p.online,
                    last_active_at: p.last_active_at,
                });
                Ok(())
            }
            ServerFrame::Profile(p) => {
                self.inner.emit(Event::Profile {
                    user: p.user,
                    display_name: p.display_name,
                    status: p.status,
                    avatar: p.avatar,
                    updated_at: p.updated_at,
                });
                Ok(())
            }
            ServerFrame::Closing(c) if c.code == ErrorCode::InvalidToken => Err(End::LoggedOut),
            ServerFrame::Closing(c) => Err(lost(
                format!("{}: {}", c.code.name(), c.message),
                self.synced,
            )),
            _ => Ok(()),
        }
    }

    /// The newest stored message of every conversation this device has messages of or knows
    /// (a pending recovery's points are kept: they are older).
    fn recovery_points(&self) -> Result<Vec<RecoveryPoint>, Error> {
        let store = &self.inner.store;
        if let Some(pending) = store.recovery()? {
            return Ok(pending);
        }
        let newest: std::collections::BTreeMap<_, _> =
            store.newest_messages()?.into_iter().collect();
        let mut points: Vec<RecoveryPoint> = newest
            .iter()
            .map(|(conversation, id)| RecoveryPoint {
                conversation: *conversation,
                newest: Some(*id),
            })
            .collect();
        // Known conversations with nothing stored yet: everything in them is new.
        points.extend(
            store
                .conversations()?
                .into_iter()
                .filter(|c| !newest.contains_key(&c.id))
                .map(|c| RecoveryPoint {
                    conversation: c.id,
                    newest: None,
                }),
        );
        Ok(points)
    }

    /// Runs a pending history recovery off the connection's task, unless one is running.
    fn start_recovery(&mut self) {
        match self.inner.store.recovery() {
            Ok(Some(_)) => {}
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(cause = %e, "could not read the pending recovery");
                return;
            }
        }
        if self.inner.recovering.swap(true, Ordering::AcqRel) {
            return;
        }
        let inner = self.inner.clone();
        self.inner.spawn(async move {
            if let Err(e) = crate::recovery::run(&inner).await {
                // Kept in the store: the next connection tries again.
                tracing::warn!(cause = %e, "history recovery failed");
            }
            inner.recovering.store(false, Ordering::Release);
        });
    }

    async fn resync(&mut self, ws: &mut Ws) -> Result<(), End> {
        self.resyncing = true;
        let after = self.cursor.position();
        self.send(ws, &SyncRequest { after }.into()).await
    }

    async fn deliver(&mut self, ws: &mut Ws, d: Deliver) -> Result<(), End> {
        match self.cursor.check(d.pos) {
            Verdict::Duplicate => return Ok(()),
            Verdict::Gap { .. } if self.resyncing => return Ok(()),
            Verdict::Gap { expected, got } => {
                tracing::debug!(expected = expected.get(), got = got.get(), "inbox gap");
                return self.resync(ws).await;
            }
            Verdict::Next => {}
        }
        // Stored (message, sessions, cursor in one batch) before the cursor moves here, and
        // durable before the ack (`ack` syncs).
        // The sender's device must be on its user's trusted device list (fetched first for a
        // user or device this device has not seen, or one that presents new keys).
        let claims = chat_crypto::prekey_identity(&d.header).ok();
        let identity = self
            .inner
            .sender_identity(d.sender, claims)
            .await
            .map_err(|e| lost(e, self.synced))?;
        let opened = self
            .inner
            .crypto
            .open(&d, identity)
            .map_err(|e| lost(e, self.synced))?;
        self.cursor.advance(d.pos);
        match opened {
            Opened::Message(opened) => {
                let (m, derived) = *opened;
                self.inner.learn_conversation(m.conversation);
                let message = Message::from_stored(&m);
                if let chat_core::Content::GroupChange(_) = message.content {
                    // Membership changed: the next send reads the device list again, so a
                    // member who left no longer holds the sender key it uses (rotation),
                    // and the group's signed changes are fetched and verified now, so the
                    // app hears of them (`Event::GroupChanged`) with the announcement.
                    self.inner.forget_devices(m.conversation).await;
                    if let Err(e) = self.inner.sync_group(m.conversation).await {
                        tracing::warn!(cause = %e, conversation = %m.conversation, "could not fetch a group's changes");
                    }
                }
                self.inner
                    .report(m.conversation, m.id, Some(message), derived);
            }
            Opened::Known => {}
            Opened::Refused => {
                self.inner.refuse(d.sender);
                self.inner.emit(Event::Undecryptable {
                    conversation: d.conversation,
                    id: d.id,
                    sender: d.sender,
                });
            }
            Opened::Failed(e) => {
                tracing::warn!(cause = %e, conversation = %d.conversation, id = %d.id, "undecryptable message");
                self.inner.emit(Event::Undecryptable {
                    conversation: d.conversation,
                    id: d.id,
                    sender: d.sender,
                });
            }
        }
        if self.acks.due(d.pos) {
            self.ack(ws).await?;
        }
        Ok(())
    }

    /// The server stored an outbox entry: move it to history and tell the waiter.
    fn sent(&mut self, key: ClientKey, s: &chat_core::protocol::Sent) -> Result<(), Error> {
        let store = &self.inner.store;
        let Some(entry) = store.outbox_entry(key)? else {
            // A second answer for the same key (sent twice across a repair): already done.
            return Ok(());
        };
        let message = StoredMessage {
            conversation: s.conversation,
            id: s.id,
            sender: self.inner.me,
            client_key: key,
            sent_at: s.sent_at,
            plaintext: entry.plaintext,
        };
        // Under the crypto lock, like deliveries and recovery: what `derive` read is what the
        // batch applies to. Staged, not synced: if a power cut loses it, the entry is back in
        // the outbox and goes again with its client key, and the server answers with the
        // message it stored. The next ack (or `close`) syncs it.
        let derived = self.inner.crypto.serialized(|| {
            let stored = store.message(s.conversation, s.id)?;
            let mut derived = thread::derive(&**store, &message, stored.as_ref())?;
            let mut writes = vec![Write::OutboxRemove(key)];
            writes.extend(thread::store_writes(message, &mut derived));
            store.stage(writes)?;
            Ok(derived)
        })?;
        self.inner.report(s.conversation, s.id, None, derived);
        self.inner.finish(key, Ok(s.id));
        self.inner.emit(Event::Sent {
            conversation: s.conversation,
            id: s.id,
            client_key: key,
        });
        Ok(())
    }

    /// The device list was stale: repair the entry off the connection's task, then retry.
    fn stale(&mut self, s: StaleDevices) {
        let Some(key) = self.sends.answered(s.req) else {
            return;
        };
        let inner = self.inner.clone();
        self.inner.spawn(async move {
            let entry = inner.store.outbox_entry(key).ok().flatten();
            let Some(entry) = entry else {
                return;
            };
            match inner.repair(&entry, s.missing, s.extra).await {
                Ok(()) => {
                    let _ = inner.commands.send(Command::Retry(key));
                }
                Err(e) => {
                    tracing::warn!(cause = %e, "repairing a send failed");
                    fail(&inner, key, entry.conversation, ErrorCode::Internal, e);
                }
            }
        });
    }

    fn error(&mut self, e: ErrorFrame) {
        let refusal = e
            .req
            .and_then(|r| self.sends.refused(r, e.code, e.retry_after_ms));
        let key = match refusal {
            None => {
                tracing::debug!(code = e.code.name(), message = %e.message, "server error");
                return;
            }
            Some(Refusal::RetryAfter(key, wait)) => {
                let commands = self.inner.commands.clone();
                self.inner.spawn(async move {
                    tokio::time::sleep(wait).await;
                    let _ = commands.send(Command::Retry(key));
                });
                return;
            }
            Some(Refusal::Failed(key)) => key,
        };
        let conversation = self
            .inner
            .store
            .outbox_entry(key)
            .ok()
            .flatten()
            .map(|x| x.conversation);
        if let Some(conversation) = conversation {
            let err = Error::server(e.code, e.message);
            self.fail(key, conversation, e.code, err);
        }
    }

    fn fail(
        &mut self,
        key: ClientKey,
        conversation: chat_core::ConversationId,
        code: ErrorCode,
        err: Error,
    ) {
        self.sends.settle(key);
        fail(&self.inner, key, conversation, code, err);
    }
}

/// Drops an entry the server refused for good and tells the waiter and the app. The removal
/// is staged (durable with the next sync): if a power cut loses it, the entry goes again and
/// is refused again.
fn fail(
    inner: &Inner,
    key: ClientKey,
    conversation: chat_core::ConversationId,
    code: ErrorCode,
    err: Error,
) {
    if let Err(e) = inner.store.stage(vec![Write::OutboxRemove(key)]) {
        tracing::warn!(cause = %e, "could not drop a refused send");
    }
    inner.finish(key, Err(err));
    inner.emit(Event::SendFailed {
        conversation,
        client_key: key,
        code,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        for attempt in 0..40 {
            let full = BASE_BACKOFF
                .saturating_mul(1u32 << attempt.min(16))
                .min(MAX_BACKOFF);
            for _ in 0..20 {
                let d = backoff(attempt);
                assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
            }
        }
        assert!(backoff(100) <= MAX_BACKOFF);
    }
}
