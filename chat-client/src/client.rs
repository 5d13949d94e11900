//! [`Client`]: the app's handle, and its lifecycle: register, log in, open, close. Sending
//! lives in `outgoing.rs`; receiving in the driver task (`driver.rs`) the client starts and
//! stops with itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chat_core::protocol::{ClientFrame, ReceiptUpdate, Subscribe, TypingUpdate, Unsubscribe};
use chat_core::{
    ClientKey, Conversation, ConversationId, ConversationKind, DeviceAddress, DeviceId, ErrorCode,
    MessageId, ReceiptKind, UserId, Username,
};
use chat_crypto::Account;
use hyper::Method;
use serde_json::json;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::driver::{self, Command};
use crate::e2e::{self, Crypto};
use crate::error::{Error, Result};
use crate::event::{Event, Events, Message};
use crate::http::Http;
use crate::nodes::{IntoNodes, Nodes};
use crate::store::{ClientStore, ConversationRecord, DeviceRecord, Store, Write};
use crate::wire;

/// One-time prekeys uploaded at a time, and the pool size below which the client refills.
const PREKEY_BATCH: usize = 100;
const PREKEY_LOW: u64 = 25;
/// How old a signed prekey may get before the client makes a new one (a week).
const SIGNED_PREKEY_AGE_MS: u64 = 7 * 24 * 3600 * 1000;
/// How long [`Client::close`] waits for the driver to close the connection.
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);
/// Events buffered for a receiver that is not reading.
const EVENT_BUFFER: usize = 4096;

/// A logged-in device, opened by [`Client::builder`]: send and read in a conversation
/// through its [`Conversation`](crate::Conversation) handle ([`Client::conversation`]),
/// receive with [`Client::events`]. Cheap to clone: every clone is the same device (and so
/// is every handle, which holds a clone).
///
/// Dropping the last clone stops its connection ([`Client::close`] does it at once, and
/// tells the server); its store keeps everything, and
/// [`ClientBuilder::open`](crate::ClientBuilder::open) resumes where it stopped, resending
/// what the server had not acknowledged.
#[derive(Debug, Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
    running: Arc<Running>,
}

/// What stops with the last clone of a client.
#[derive(Debug)]
struct Running {
    inner: Arc<Inner>,
    /// The receiver that sees every event from the start, for the first `events` call.
    first_events: Mutex<Option<broadcast::Receiver<Event>>>,
    /// The driver task, until `close` joins it.
    driver: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        // Tasks started off the driver stop at their next step, or now.
        self.inner
            .closed
            .store(true, std::sync::atomic::Ordering::Release);
        if let Some(driver) = self.driver.get_mut().ok().and_then(Option::take) {
            driver.abort();
        }
        if let Ok(mut tasks) = self.inner.tasks.lock() {
            tasks.abort_all();
        }
    }
}

/// State shared by the client and its driver.
pub(crate) struct Inner {
    pub(crate) me: DeviceAddress,
    pub(crate) http: Http,
    /// The cluster's nodes and the one in use, shared with `http`.
    pub(crate) nodes: Nodes,
    pub(crate) token: String,
    pub(crate) store: Store,
    pub(crate) crypto: Crypto,
    pub(crate) events: broadcast::Sender<Event>,
    pub(crate) commands: mpsc::UnboundedSender<Command>,
    /// Callers waiting for `sent`, by client key.
    pub(crate) waiters: Mutex<HashMap<ClientKey, oneshot::Sender<Result<MessageId>>>>,
    /// The users whose presence the app asked for; subscribed again on every connection.
    pub(crate) presence: Mutex<std::collections::BTreeSet<UserId>>,
    /// The users this user blocks, whose group messages are hidden (see `people.rs`).
    pub(crate) blocked: Mutex<std::collections::BTreeSet<UserId>>,
    /// Who is typing where; indicators expire by themselves.
    pub(crate) typing: Mutex<chat_core::TypingTracker>,
    /// A history recovery task is running (see `recovery.rs`).
    pub(crate) recovering: std::sync::atomic::AtomicBool,
    /// How many `resync_required` were recorded; a recovery that sees it change while it
    /// runs goes again instead of clearing the newer points.
    pub(crate) resyncs: std::sync::atomic::AtomicU64,
    /// Held while recording recovery points and while clearing them.
    pub(crate) recovery_lock: Mutex<()>,
    /// The client was dropped: background tasks stop.
    pub(crate) closed: std::sync::atomic::AtomicBool,
    /// Conversations known to be in the store (a cache for `learn_conversation`).
    known: Mutex<std::collections::HashSet<ConversationId>>,
    /// How account identity changes of contacts are treated.
    pub(crate) policy: Mutex<crate::TrustPolicy>,
    /// Devices already reported as refused (each is reported once per client).
    pub(crate) refused: Mutex<std::collections::HashSet<DeviceAddress>>,
    /// The trust records read so far (the store's, with their signatures checked once).
    pub(crate) trusted: Mutex<HashMap<UserId, crate::trust::TrustRecord>>,
    /// Held while the account identity is made (log-in and key upkeep may race).
    pub(crate) establishing: tokio::sync::Mutex<()>,
    /// The link code this unlinked device showed, until it is linked.
    pub(crate) link_code: Mutex<Option<chat_crypto::LinkCode>>,
    /// Held while a group's signed changes are fetched and applied.
    pub(crate) group_sync: tokio::sync::Mutex<()>,
    /// The tasks started off the driver (history recovery, repairs, retries, learning a
    /// conversation); `close` joins them.
    pub(crate) tasks: Mutex<tokio::task::JoinSet<()>>,
    /// Group reports already made (each once per client).
    pub(crate) group_reports:
        Mutex<std::collections::HashSet<(ConversationId, crate::groups::Report)>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("me", &self.me)
            .field("nodes", &self.nodes)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Registers `username`, logs in a first device named `device_name`, creates its keys and
    /// publishes them ([`ClientBuilder::register`](crate::ClientBuilder::register)).
    pub(crate) async fn register(
        server: impl IntoNodes,
        username: &str,
        password: &str,
        device_name: &str,
        store: impl ClientStore,
    ) -> Result<Self> {
        let nodes = server.into_nodes()?;
        let username = Username::new(username)?;
        refuse_used(&store)?;
        let http = Http::new(nodes.clone(), None);
        http.send(
            Method::POST,
            "/v1/register",
            Some(&json!({"username": username, "password": password})),
        )
        .await?;
        Self::login(nodes, username.as_str(), password, device_name, store).await
    }

    /// Logs in a new device of an existing user, creating and publishing its keys
    /// ([`ClientBuilder::login`](crate::ClientBuilder::login)).
    pub(crate) async fn login(
        server: impl IntoNodes,
        username: &str,
        password: &str,
        device_name: &str,
        store: impl ClientStore,
    ) -> Result<Self> {
        let body = json!({"username": username, "password": password, "device_name": device_name});
        Self::login_with(server, body, store).await
    }

    /// Logs in again on an existing device (after a reinstall, with an empty store): new
    /// keys replace the device's old ones, and its peers see an identity change. `server` is
    /// given as to [`Client::builder`].
    ///
    /// Publishing a new identity empties the device's one-time prekey pool on the server
    /// (those keys belonged to the old identity) before the new ones are uploaded, so peers
    /// starting new sessions get keys this device holds.
    pub async fn relogin(
        server: impl IntoNodes,
        username: &str,
        password: &str,
        device: DeviceId,
        store: impl ClientStore,
    ) -> Result<Self> {
        let body = json!({"username": username, "password": password, "device_id": device});
        Self::login_with(server, body, store).await
    }

    async fn login_with(
        server: impl IntoNodes,
        body: serde_json::Value,
        store: impl ClientStore,
    ) -> Result<Self> {
        let nodes = server.into_nodes()?;
        refuse_used(&store)?;
        let store = Store::new(Arc::new(store));
        nodes.refresh().await;
        let http = Http::new(nodes.clone(), None);
        let login: wire::Login = http.call(Method::POST, "/v1/login", Some(&body)).await?;
        let me = DeviceAddress {
            user: login.user_id,
            device: login.device_id,
        };
        let mut account = Account::new(&mut rand::rng());
        let otks = account.generate_one_time_prekeys(&mut rand::rng(), PREKEY_BATCH);
        let keys = e2e::device_keys(&account)?;
        // Saved before anything is published: a key the server hands out must have its
        // secret on this device.
        store
            .commit(vec![
                Write::Device(DeviceRecord {
                    server: nodes.current().as_url(),
                    address: me,
                    token: login.token.clone(),
                }),
                Write::Account(account.pickle()),
                Write::SignedPrekeyMadeAt(now()),
            ])
            .await?;
        let http = http.with_token(login.token.clone());
        http.send(Method::PUT, "/v1/keys", Some(&keys)).await?;
        http.send(
            Method::POST,
            "/v1/keys/one-time",
            Some(&json!({"keys": e2e::one_time_keys(&otks)})),
        )
        .await?;
        let crypto = Crypto::new(me, store.clone(), account);
        // The same connections serve the client from now on.
        let client = Self::start(nodes, http, me, login.token, store, crypto);
        client.inner.establish_if_needed().await?;
        Ok(client)
    }

    /// Resumes the device kept in `store` (after a restart), connecting to `server`
    /// ([`ClientBuilder::open`](crate::ClientBuilder::open)).
    pub(crate) async fn open(server: impl IntoNodes, store: impl ClientStore) -> Result<Self> {
        let nodes = server.into_nodes()?;
        let record = store.device()?.ok_or(Error::NotLoggedIn)?;
        let store = Store::new(Arc::new(store));
        let crypto = Crypto::load(record.address, store.clone())?;
        let http = Http::new(nodes.clone(), Some(record.token.clone()));
        Ok(Self::start(
            nodes,
            http,
            record.address,
            record.token,
            store,
            crypto,
        ))
    }

    fn start(
        nodes: Nodes,
        http: Http,
        me: DeviceAddress,
        token: String,
        store: Store,
        crypto: Crypto,
    ) -> Self {
        let (events, first) = broadcast::channel(EVENT_BUFFER);
        let (commands, rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            me,
            http,
            nodes,
            token,
            store,
            crypto,
            events,
            commands,
            waiters: Mutex::new(HashMap::new()),
            presence: Mutex::new(std::collections::BTreeSet::new()),
            blocked: Mutex::new(std::collections::BTreeSet::new()),
            typing: Mutex::new(chat_core::TypingTracker::new()),
            recovering: std::sync::atomic::AtomicBool::new(false),
            resyncs: std::sync::atomic::AtomicU64::new(0),
            recovery_lock: Mutex::new(()),
            closed: std::sync::atomic::AtomicBool::new(false),
            known: Mutex::new(std::collections::HashSet::new()),
            policy: Mutex::new(crate::TrustPolicy::default()),
            refused: Mutex::new(std::collections::HashSet::new()),
            establishing: tokio::sync::Mutex::new(()),
            link_code: Mutex::new(None),
            group_sync: tokio::sync::Mutex::new(()),
            group_reports: Mutex::new(std::collections::HashSet::new()),
            tasks: Mutex::new(tokio::task::JoinSet::new()),
            trusted: Mutex::new(HashMap::new()),
        });
        let driver = tokio::spawn(driver::run(inner.clone(), rx));
        Self {
            running: Arc::new(Running {
                inner: inner.clone(),
                first_events: Mutex::new(Some(first)),
                driver: Mutex::new(Some(driver)),
            }),
            inner,
        }
    }

    /// The event stream. The first call sees every event since the client was created; later
    /// calls see events from then on.
    pub fn events(&self) -> Events {
        let first = self
            .running
            .first_events
            .lock()
            .ok()
            .and_then(|mut f| f.take());
        Events {
            rx: first.unwrap_or_else(|| self.inner.events.subscribe()),
        }
    }

    /// This device and its user.
    pub fn device(&self) -> DeviceAddress {
        self.inner.me
    }

    /// This user.
    pub fn user(&self) -> UserId {
        self.inner.me.user
    }

    /// Finds a user by exact username.
    pub async fn user_by_name(&self, username: &str) -> Result<UserId> {
        let name = Username::new(username)?;
        let v: wire::User = self
            .inner
            .http
            .get(&format!("/v1/users/by-name/{name}"))
            .await?;
        Ok(v.user_id)
    }

    /// Opens (or finds) the one-to-one conversation with `user`.
    pub async fn open_direct(&self, user: UserId) -> Result<ConversationId> {
        let c: Conversation = self
            .inner
            .http
            .call(
                Method::POST,
                "/v1/conversations/direct",
                Some(&json!({"user_id": user})),
            )
            .await?;
        self.remember(&c).await?;
        Ok(c.id)
    }

    /// The members of a conversation.
    pub(crate) async fn members(&self, conversation: ConversationId) -> Result<Vec<UserId>> {
        let m: wire::Members = self
            .inner
            .http
            .get(&format!("/v1/conversations/{conversation}/members"))
            .await?;
        Ok(m.members)
    }

    /// Fetches the conversations this user is in from the server and adds the ones this
    /// device did not know to [`Client::conversation_list`] (the local list, which is what
    /// an app shows); returns their IDs. Conversations started by others also join the list
    /// by themselves when their first message arrives, so this is for a new device or a
    /// store that lost its list.
    ///
    /// A conversation new to this device also gets this user's read position from the
    /// server (read on other devices before this one knew the conversation), so its unread
    /// count starts right.
    pub async fn sync_conversations(&self) -> Result<Vec<ConversationId>> {
        let list: Vec<Conversation> = self.inner.http.get("/v1/conversations").await?;
        let known: std::collections::BTreeSet<ConversationId> = self
            .inner
            .store
            .conversations()?
            .into_iter()
            .map(|c| c.id)
            .collect();
        for c in &list {
            if !known.contains(&c.id) {
                self.inner.learn_read_position(c.id).await?;
            }
            self.remember(c).await?;
        }
        Ok(list.into_iter().map(|c| c.id).collect())
    }

    /// Stored history of a conversation after `after` (exclusive), oldest first.
    pub(crate) fn history(
        &self,
        conversation: ConversationId,
        after: Option<MessageId>,
        limit: usize,
    ) -> Result<Vec<Message>> {
        Ok(self
            .inner
            .store
            .messages(conversation, after, limit)?
            .iter()
            .filter(|m| !self.inner.hides(m.sender.user))
            .map(Message::from_stored)
            .collect())
    }

    /// Messages written to the outbox and not yet acknowledged by the server.
    pub async fn pending(&self) -> Result<usize> {
        self.local(|c| c.inner.store.outbox_len()).await
    }

    /// Runs `call`, a call into the local store (a read, or a small staged write), on
    /// tokio's blocking pool ([`store::off_runtime`](crate::store::off_runtime)).
    pub(crate) async fn local<T: Send + 'static>(
        &self,
        call: impl FnOnce(&Self) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let client = self.clone();
        crate::store::off_runtime(move || call(&client)).await
    }

    pub(crate) async fn remember(&self, c: &Conversation) -> Result<()> {
        self.inner
            .store
            .commit(vec![Write::Conversation(ConversationRecord {
                id: c.id,
                kind: c.kind,
            })])
            .await
    }

    /// Raises this user's delivered or read position in a conversation.
    pub(crate) fn send_receipt(
        &self,
        conversation: ConversationId,
        kind: ReceiptKind,
        up_to: MessageId,
    ) -> Result<()> {
        self.frame(ClientFrame::Receipt(ReceiptUpdate {
            conversation,
            kind,
            up_to,
        }))
    }

    /// Starts or stops the typing indicator (the server expires it by itself).
    pub(crate) fn send_typing(&self, conversation: ConversationId, active: bool) -> Result<()> {
        self.frame(ClientFrame::Typing(TypingUpdate {
            conversation,
            active,
        }))
    }

    /// Subscribes to users' presence ([`Event::Presence`]); only users sharing a
    /// conversation with this user are accepted by the server.
    /// The subscription is renewed after every reconnect.
    pub fn subscribe_presence(&self, users: &[UserId]) -> Result<()> {
        self.inner
            .presence
            .lock()
            .map_err(|_| Error::Closed)?
            .extend(users.iter().copied());
        self.frame(ClientFrame::Subscribe(Subscribe {
            users: users.to_vec(),
        }))
    }

    /// Stops presence events for `users`.
    pub fn unsubscribe_presence(&self, users: &[UserId]) -> Result<()> {
        self.inner
            .presence
            .lock()
            .map_err(|_| Error::Closed)?
            .retain(|u| !users.contains(u));
        self.frame(ClientFrame::Unsubscribe(Unsubscribe {
            users: users.to_vec(),
        }))
    }

    pub(crate) fn frame(&self, frame: ClientFrame) -> Result<()> {
        self.inner
            .commands
            .send(Command::Frame(frame))
            .map_err(|_| Error::Closed)
    }

    /// Signs off: waits for the outbox to be sent, acknowledges what was received, closes
    /// the connection with a normal WebSocket close, stops the client, joins every task it
    /// started and closes its idle HTTP connections. The server counts a cleanly closed
    /// device as gone at once, so contacts see this user offline without waiting for the
    /// heartbeat window (a dropped client, or a lost connection, is seen as offline only when
    /// the window ends). Takes at most a few seconds in all: what is still unsent then stays
    /// in the store, and [`ClientBuilder::open`](crate::ClientBuilder::open) resumes it. Other calls (on every
    /// clone and handle) fail with [`Error::Closed`] afterwards.
    pub async fn close(&self) {
        let deadline = tokio::time::Instant::now() + CLOSE_TIMEOUT;
        self.flush_outbox(deadline).await;
        let (done, closed) = oneshot::channel::<()>();
        if self.inner.commands.send(Command::Close(done)).is_ok() {
            // Answered (by dropping `done`) once the driver has closed the connection.
            let _ = tokio::time::timeout_at(deadline, closed).await;
        }
        self.inner
            .closed
            .store(true, std::sync::atomic::Ordering::Release);
        let driver = self.running.driver.lock().ok().and_then(|mut d| d.take());
        if let Some(mut driver) = driver
            && tokio::time::timeout_at(deadline, &mut driver)
                .await
                .is_err()
        {
            driver.abort();
        }
        let mut tasks = match self.inner.tasks.lock() {
            Ok(mut tasks) => std::mem::take(&mut *tasks),
            Err(_) => tokio::task::JoinSet::new(),
        };
        while let Ok(Some(_)) = tokio::time::timeout_at(deadline, tasks.join_next()).await {}
        // Dropping the set aborts what did not finish in time.
        // Sends still waiting for an acknowledgement end now; their messages stay in the
        // outbox and go out when the device is opened again.
        let waiting: Vec<_> = match self.inner.waiters.lock() {
            Ok(mut waiters) => waiters.drain().map(|(_, tx)| tx).collect(),
            Err(_) => Vec::new(),
        };
        for tx in waiting {
            let _ = tx.send(Err(Error::Closed));
        }
        // What was staged and not yet synced (a `sent` answer, a read position, a refused
        // send's removal) is made durable now, also when the client was offline and the
        // driver never got to its own sync on close.
        if let Err(e) = self.inner.store.sync().await {
            tracing::warn!(cause = %e, "could not sync the store on close");
        }
        self.inner.http.close_idle();
    }

    /// Waits until the outbox is empty (every send acknowledged or failed), or `deadline`.
    async fn flush_outbox(&self, deadline: tokio::time::Instant) {
        let mut events = self.inner.events.subscribe();
        while self.pending().await.is_ok_and(|n| n > 0) {
            if tokio::time::timeout_at(deadline, events.recv())
                .await
                .is_err()
            {
                return;
            }
        }
    }

    /// Logs this device out on the server and stops the client. A linked device that is not
    /// its user's last first takes itself off the signed device list, so contacts stop
    /// encrypting to it (the last one stays listed: logging in again elsewhere then needs
    /// [`Client::recover_account`]).
    pub async fn logout(self) -> Result<()> {
        self.inner.unlist_self().await?;
        self.inner
            .http
            .send(Method::POST, "/v1/logout", None::<&()>)
            .await?;
        Ok(())
    }
}

/// The wall clock, as the protocol's timestamps.
pub(crate) fn now() -> chat_core::Timestamp {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    chat_core::Timestamp::from_millis(ms)
}

/// A store holds one device; logging another in would mix their keys and sessions.
fn refuse_used(store: &impl ClientStore) -> Result<()> {
    if store.device()?.is_some() {
        return Err(Error::StoreInUse);
    }
    Ok(())
}

impl Inner {
    pub(crate) async fn forget_devices(&self, conversation: ConversationId) {
        let forget = Write::ConversationDevices {
            conversation,
            devices: None,
        };
        if let Err(e) = self.store.commit(vec![forget]).await {
            tracing::warn!(cause = %e, "could not drop a device list");
        }
    }

    pub(crate) async fn kind(&self, conversation: ConversationId) -> Result<ConversationKind> {
        if let Some(c) = self.store.conversation(conversation)? {
            return Ok(c.kind);
        }
        let c: Conversation = self
            .http
            .get(&format!("/v1/conversations/{conversation}"))
            .await?;
        self.learn_read_position(c.id).await?;
        self.store
            .commit(vec![Write::Conversation(ConversationRecord {
                id: c.id,
                kind: c.kind,
            })])
            .await?;
        Ok(c.kind)
    }

    /// Learns a conversation a message arrived in, if this device does not know it yet (one
    /// started by someone else): it then shows in the conversation list. Off the caller's
    /// task; a failure is retried with the conversation's next message.
    pub(crate) fn learn_conversation(self: &Arc<Self>, conversation: ConversationId) {
        let Ok(mut known) = self.known.lock() else {
            return;
        };
        if known.contains(&conversation) {
            return;
        }
        // The store's list, read again only when a conversation is not in the cache.
        if let Ok(list) = self.store.conversations() {
            known.extend(list.iter().map(|c| c.id));
        }
        if !known.insert(conversation) {
            return;
        }
        drop(known);
        let inner = self.clone();
        self.spawn(async move {
            match inner.kind(conversation).await {
                Ok(kind) => inner.emit(Event::NewConversation {
                    id: conversation,
                    kind,
                }),
                Err(e) => {
                    tracing::debug!(cause = %e, %conversation, "could not learn a conversation");
                    // A passing failure is retried with the next message; no longer being a
                    // member is not.
                    let gone = matches!(e.code(), Some(ErrorCode::NotMember | ErrorCode::NotFound));
                    if !gone && let Ok(mut known) = inner.known.lock() {
                        known.remove(&conversation);
                    }
                }
            }
        });
    }
    /// Takes this user's read position in a conversation new to this device from the server
    /// (read on other devices before this one knew the conversation).
    pub(crate) async fn learn_read_position(&self, conversation: ConversationId) -> Result<()> {
        let r: wire::Receipts = self
            .http
            .get(&format!("/v1/conversations/{conversation}/receipts"))
            .await?;
        let mine = r
            .receipts
            .into_iter()
            .find(|p| p.user == self.me.user && p.kind == ReceiptKind::Read);
        if let Some(p) = mine {
            self.store
                .commit(vec![Write::ReadPosition {
                    conversation,
                    up_to: p.up_to,
                }])
                .await?;
        }
        Ok(())
    }

    /// Runs `task` beside the driver; [`Client::close`] joins it.
    pub(crate) fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        if let Ok(mut tasks) = self.tasks.lock() {
            // Reap the finished ones, so the set holds only what runs.
            while tasks.try_join_next().is_some() {}
            tasks.spawn(task);
        }
    }

    pub(crate) fn emit(&self, event: Event) {
        let _ = self.events.send(event);
    }

    /// Key upkeep on every connection: makes the account identity of a device from before
    /// device lists, tops up the one-time prekey pool on the server when it runs low, and
    /// rotates the signed prekey once it is a week old.
    pub(crate) async fn refill_prekeys(&self) -> Result<()> {
        self.establish_if_needed().await?;
        let made = self.store.signed_prekey_made_at()?;
        let now = now();
        if made
            .is_none_or(|t| now.as_millis().saturating_sub(t.as_millis()) >= SIGNED_PREKEY_AGE_MS)
        {
            let keys = self.crypto.rotate_signed_prekey(now).await?;
            self.http.send(Method::PUT, "/v1/keys", Some(&keys)).await?;
        }
        let c: wire::Count = self.http.get("/v1/keys/count").await?;
        if c.count >= PREKEY_LOW {
            return Ok(());
        }
        let keys = self.crypto.new_one_time_keys(PREKEY_BATCH).await?;
        self.http
            .send(
                Method::POST,
                "/v1/keys/one-time",
                Some(&json!({"keys": e2e::one_time_keys(&keys)})),
            )
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chat_core::{ConversationId, DeviceId, MessageId, UserId};

    use super::*;
    use crate::SqliteStore;

    /// A client that never reached its server stages a read position; `close` must make it
    /// durable itself (the driver's own sync on close needs a connection).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn close_makes_what_was_staged_offline_durable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(SqliteStore::open(dir.path().join("c.db")).expect("store"));
        let client = offline(&store).await;
        let conversation = ConversationId::new(3).unwrap();
        let up_to = MessageId::new(5).unwrap();
        client
            .conversation(conversation)
            .mark_read(up_to)
            .await
            .expect("mark read");
        let before = store.fsyncs();
        client.close().await;
        assert_eq!(
            store.fsyncs(),
            before + 1,
            "close synced the staged position"
        );
        assert_eq!(
            store.read_position(conversation).unwrap(),
            chat_core::ReadPosition::up_to(up_to)
        );
    }

    /// A local call that blocks (a slow disk, a store lock) leaves the caller's runtime
    /// running, even a current-thread one: the call below waits for a task on that runtime.
    /// Run inline, it would block the only thread and time out.
    #[tokio::test(flavor = "current_thread")]
    async fn local_calls_leave_the_runtime_running() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(SqliteStore::open(dir.path().join("c.db")).expect("store"));
        let client = offline(&store).await;
        let (tx, rx) = std::sync::mpsc::channel();
        let (waited, ()) = tokio::join!(
            client.local(move |_| Ok(rx.recv_timeout(std::time::Duration::from_secs(10)))),
            async {
                tokio::task::yield_now().await;
                tx.send(()).expect("send");
            }
        );
        assert_eq!(waited.expect("call"), Ok(()), "the runtime ran meanwhile");
        client.close().await;
    }

    /// A client opened on `store` for a server that cannot be reached: nothing listens on
    /// port 1 of the loopback, so every connection is refused.
    async fn offline(store: &Arc<SqliteStore>) -> Client {
        let server = "http://127.0.0.1:1";
        store
            .commit(vec![
                Write::Device(DeviceRecord {
                    server: server.into(),
                    address: DeviceAddress {
                        user: UserId::new(1).unwrap(),
                        device: DeviceId::new(1).unwrap(),
                    },
                    token: "token".into(),
                }),
                Write::Account(Account::new(&mut rand::rng()).pickle()),
            ])
            .expect("seed");
        Client::builder(server)
            .store(store.clone())
            .open()
            .await
            .expect("open")
    }
}
