//! The two entry points an app starts from (issue 19): [`ClientBuilder`], which opens a
//! [`Client`] by registering, logging in or resuming a stored device, and [`Conversation`],
//! a cheap, cloneable handle on one conversation that everything about it goes through.
//!
//! ```no_run
//! # async fn run() -> chat_client::Result<()> {
//! use chat_client::{Client, Credentials, SqliteStore};
//!
//! let alice = Client::builder("127.0.0.1:8080")
//!     .store(SqliteStore::open("alice.db")?)
//!     .device_name("laptop")
//!     .register(&Credentials::new("alice", "correct horse battery staple"))
//!     .await?;
//! let bob = alice.user_by_name("bob").await?;
//! let chat = alice.conversation(alice.open_direct(bob).await?);
//! chat.send_text("hi Bob").await?; // returns once the server stored it
//! # Ok(()) }
//! ```

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use chat_core::{
    AttachmentPointer, ClientKey, Content, ConversationId, GroupSettings, MessageId, ReadPosition,
    ReceiptKind, UserId,
};
use chat_crypto::Zeroizing;

use crate::client::Client;
use crate::error::Result;
use crate::event::Message;
use crate::groups::GroupInfo;
use crate::nodes::{IntoNodes, Nodes};
use crate::store::{ClientStore, MemoryStore};
use crate::thread::TimelineItem;

/// A username and password, for [`ClientBuilder::register`] and [`ClientBuilder::login`].
/// The password is zeroized when dropped and never shown by `Debug`.
#[derive(Clone)]
pub struct Credentials {
    username: String,
    password: Zeroizing<String>,
}

impl Credentials {
    /// A username (3 to 32 characters of `a-z`, `0-9`, `_`, `.`, `-`) and its password.
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            username: username.into(),
            password: Zeroizing::new(password.into()),
        }
    }

    /// The username.
    pub fn username(&self) -> &str {
        &self.username
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Opens a [`Client`]: where to connect ([`Client::builder`]), where to keep the device's
/// state ([`Self::store`]; in memory unless given) and the device's name, then one of
/// [`Self::register`], [`Self::login`] or [`Self::open`].
#[must_use = "a builder does nothing until register, login or open"]
pub struct ClientBuilder {
    nodes: Result<Nodes>,
    store: Option<Arc<dyn ClientStore>>,
    device_name: String,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("nodes", &self.nodes.as_ref().ok())
            .field("device_name", &self.device_name)
            .finish_non_exhaustive()
    }
}

/// The device name when the app gives none.
const DEFAULT_DEVICE_NAME: &str = "device";

impl ClientBuilder {
    pub(crate) fn new(server: impl IntoNodes) -> Self {
        Self {
            nodes: server.into_nodes(),
            store: None,
            device_name: DEFAULT_DEVICE_NAME.to_owned(),
        }
    }

    /// Keeps the device's keys, sessions, outbox and history in `store`
    /// ([`SqliteStore`](crate::SqliteStore) for an app; [`MemoryStore`], the default, for
    /// tests and bots that need nothing to survive a restart).
    pub fn store(mut self, store: impl ClientStore) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// The name other devices of the user see for this one (register and log-in only).
    pub fn device_name(mut self, name: impl Into<String>) -> Self {
        self.device_name = name.into();
        self
    }

    fn parts(self) -> Result<(Nodes, Arc<dyn ClientStore>, String)> {
        let store = self
            .store
            .unwrap_or_else(|| Arc::new(MemoryStore::new()) as Arc<dyn ClientStore>);
        Ok((self.nodes?, store, self.device_name))
    }

    /// Registers the user, logs this device in as its first, creates its keys and
    /// publishes them.
    pub async fn register(self, credentials: &Credentials) -> Result<Client> {
        let (nodes, store, name) = self.parts()?;
        Client::register(
            nodes,
            &credentials.username,
            &credentials.password,
            &name,
            store,
        )
        .await
    }

    /// Logs in a new device of an existing user, creating and publishing its keys. It
    /// reads and sends once linked by one of the user's devices
    /// ([`Client::link_device`]).
    pub async fn login(self, credentials: &Credentials) -> Result<Client> {
        let (nodes, store, name) = self.parts()?;
        Client::login(
            nodes,
            &credentials.username,
            &credentials.password,
            &name,
            store,
        )
        .await
    }

    /// Resumes the device kept in the store (after a restart), connecting to the server
    /// given to [`Client::builder`] (which may differ from the address it was registered
    /// with, and may be several nodes).
    pub async fn open(self) -> Result<Client> {
        let (nodes, store, _) = self.parts()?;
        Client::open(nodes, store).await
    }
}

/// One conversation, one-to-one or group: a cheap handle (a [`Client`] and an ID) to clone
/// and keep, made by [`Client::conversation`] from an ID ([`Client::open_direct`],
/// [`Client::create_group`], [`Client::conversation_list`], or any event's).
///
/// The handle holds a clone of its client, so the client's connection runs while a handle
/// is kept: a client stops when its last clone and its last handle are dropped.
#[derive(Clone)]
pub struct Conversation {
    client: Client,
    id: ConversationId,
}

impl fmt::Debug for Conversation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conversation")
            .field("id", &self.id)
            .finish()
    }
}

impl Client {
    /// Starts opening a client on `server`: `host:port`, `http://host:port`,
    /// `https://host`, or several nodes of one cluster ([`Nodes`]): the client moves to
    /// another node when its node cannot be reached.
    pub fn builder(server: impl IntoNodes) -> ClientBuilder {
        ClientBuilder::new(server)
    }

    /// A handle on the conversation `id` (no request is made).
    pub fn conversation(&self, id: ConversationId) -> Conversation {
        Conversation {
            client: self.clone(),
            id,
        }
    }
}

impl Conversation {
    /// Its ID.
    pub fn id(&self) -> ConversationId {
        self.id
    }

    /// The client it belongs to.
    pub fn client(&self) -> &Client {
        &self.client
    }

    // ---- sending ----------------------------------------------------------------------

    /// Sends a text; returns its ID once the server stored it (or fails).
    ///
    /// Encrypted for every device of every member and this user's other devices; sessions
    /// are set up on first use and the device list is repaired when the server says it is
    /// stale. The message is in the local outbox before it leaves the device, so it is sent
    /// even if the app restarts first (then [`crate::Event::Sent`] reports it).
    pub async fn send_text(&self, text: &str) -> Result<MessageId> {
        self.client.send_text(self.id, text).await
    }

    /// Sends any content (see [`Self::send_text`]).
    pub async fn send(&self, content: &Content) -> Result<MessageId> {
        self.client.send(self.id, content).await
    }

    /// Writes a text to the outbox and returns at once; it is sent now or on the next
    /// connection ([`crate::Event::Sent`] or [`crate::Event::SendFailed`] say how it ended).
    pub async fn queue_text(&self, text: &str) -> Result<ClientKey> {
        self.client.queue_text(self.id, text).await
    }

    /// Sends a text that replies to `to` (a message of this conversation).
    pub async fn reply(&self, to: MessageId, text: &str) -> Result<MessageId> {
        self.client.send_reply(self.id, to, text).await
    }

    /// Replaces the text of one of this user's own text messages. Every device (this
    /// user's and the other members') shows the new text; an edit of someone else's message
    /// is refused here (and ignored by every client if sent anyway).
    pub async fn edit(&self, message: MessageId, text: &str) -> Result<MessageId> {
        self.client.edit_message(self.id, message, text).await
    }

    /// Deletes one of this user's own messages for everyone: a tombstone that also hides its
    /// edits and reactions. Deleting someone else's message is refused.
    pub async fn delete(&self, message: MessageId) -> Result<MessageId> {
        self.client.delete_message(self.id, message).await
    }

    /// Adds this user's reaction `emoji` (1 to 64 bytes of text) to a message. Reacting twice
    /// with the same emoji is one reaction.
    pub async fn react(&self, message: MessageId, emoji: &str) -> Result<MessageId> {
        self.client.react(self.id, message, emoji).await
    }

    /// Takes this user's reaction `emoji` on a message back.
    pub async fn unreact(&self, message: MessageId, emoji: &str) -> Result<MessageId> {
        self.client.unreact(self.id, message, emoji).await
    }

    /// Encrypts a file with a fresh key, uploads the ciphertext, and sends the pointer (ID,
    /// key, size, digest) inside an end-to-end encrypted message; returns the message's ID.
    /// The whole file is held in memory while it is encrypted and uploaded
    /// ([`Self::send_file`] streams one from disk).
    pub async fn send_attachment(
        &self,
        file: &[u8],
        mime: &str,
        name: Option<&str>,
    ) -> Result<MessageId> {
        self.client.send_attachment(self.id, file, mime, name).await
    }

    /// Encrypts, uploads and sends a file from disk, streamed.
    pub async fn send_file(
        &self,
        path: impl AsRef<std::path::Path>,
        mime: &str,
    ) -> Result<MessageId> {
        self.client.send_file(self.id, path, mime).await
    }

    /// Downloads and decrypts an attachment received in this conversation
    /// ([`Client::download_attachment`]).
    pub async fn download_attachment(&self, pointer: &AttachmentPointer) -> Result<Vec<u8>> {
        self.client.download_attachment(pointer).await
    }

    /// Starts or stops this user's typing indicator (the server expires it by itself).
    pub fn set_typing(&self, active: bool) -> Result<()> {
        self.client.send_typing(self.id, active)
    }

    /// Raises this user's delivered or read position, as others see it.
    pub fn send_receipt(&self, kind: ReceiptKind, up_to: MessageId) -> Result<()> {
        self.client.send_receipt(self.id, kind, up_to)
    }

    // ---- reading (local, no request; on tokio's blocking pool) ---------------------------

    /// A page of the conversation as it should be shown: messages that stand on their own,
    /// before `before` (exclusive; `None`: the newest), newest first, at most `limit`
    /// (capped at [`MAX_TIMELINE_PAGE`](crate::MAX_TIMELINE_PAGE)), each with its edits,
    /// reactions and delete applied. Messages of users this user blocks are left out.
    pub async fn timeline(
        &self,
        before: Option<MessageId>,
        limit: usize,
    ) -> Result<Vec<TimelineItem>> {
        let id = self.id;
        self.client
            .local(move |c| c.timeline(id, before, limit))
            .await
    }

    /// One message in its current state, if it is stored here.
    pub async fn message(&self, id: MessageId) -> Result<Option<TimelineItem>> {
        let conversation = self.id;
        self.client
            .local(move |c| c.message(conversation, id))
            .await
    }

    /// The stored messages after `after` (exclusive), oldest first, as received (edits and
    /// reactions as messages of their own).
    pub async fn history(&self, after: Option<MessageId>, limit: usize) -> Result<Vec<Message>> {
        let id = self.id;
        self.client
            .local(move |c| c.history(id, after, limit))
            .await
    }

    /// Marks the conversation read up to and including `up_to`: raises the read position
    /// here (never lowers it) and sends it to the server, which keeps the highest and passes
    /// it to this user's other devices (their unread counts follow) and to the other members.
    /// It does not wait for the disk: the position is durable with the next acknowledgement
    /// or send (a power cut before then can lose it on this device, not on the server).
    pub async fn mark_read(&self, up_to: MessageId) -> Result<()> {
        let id = self.id;
        self.client.local(move |c| c.mark_read(id, up_to)).await
    }

    /// This user's read position (raised by [`Self::mark_read`] here and by read receipts
    /// from this user's other devices).
    pub async fn read_position(&self) -> Result<ReadPosition> {
        let id = self.id;
        self.client.local(move |c| c.read_position(id)).await
    }

    /// The unread count, computed from IDs: messages after the read position that others
    /// sent, deleted ones left out.
    pub async fn unread_count(&self) -> Result<usize> {
        let id = self.id;
        self.client.local(move |c| c.unread_count(id)).await
    }

    /// The users typing here now (indicators expire by themselves).
    pub fn typing(&self) -> BTreeSet<UserId> {
        self.client.typing(self.id)
    }

    // ---- members ------------------------------------------------------------------------

    /// The current members, as the server lists them.
    pub async fn members(&self) -> Result<Vec<UserId>> {
        self.client.members(self.id).await
    }

    /// The group's name, settings and members with their roles: the state this device
    /// verified from the group's signed changes, or the server's word for a group without
    /// them ([`GroupInfo::verified`] says which). For a one-to-one conversation, both
    /// members, neither an admin.
    pub async fn group_info(&self) -> Result<GroupInfo> {
        self.client.group_info(self.id).await
    }

    /// Adds members to a group, all or none (`group_full` past the limit), and announces it.
    /// Users already members are skipped.
    pub async fn add_members(&self, members: &[UserId]) -> Result<()> {
        self.client.add_members(self.id, members).await
    }

    /// Removes a member (admins only) and announces it to the others, or leaves (for this
    /// user). This device's next message to the group (the announcement) uses a new sender
    /// key that the removed member never gets.
    pub async fn remove_member(&self, user: UserId) -> Result<()> {
        self.client.remove_member(self.id, user).await
    }

    /// Leaves the group (announced first, while this user may still send to it). If this
    /// user was its last admin, the oldest member becomes one.
    pub async fn leave(&self) -> Result<()> {
        self.client.leave(self.id).await
    }

    /// Makes a member an admin (admins only), and announces it.
    pub async fn promote(&self, user: UserId) -> Result<()> {
        self.client.promote(self.id, user).await
    }

    /// Makes an admin a member again (admins only; never the last admin), and announces it.
    pub async fn demote(&self, user: UserId) -> Result<()> {
        self.client.demote(self.id, user).await
    }

    /// Renames the group (1 to 128 characters; who may is in its settings), and announces it.
    pub async fn rename(&self, name: &str) -> Result<()> {
        self.client.rename(self.id, name).await
    }

    /// Changes who may add members and rename (admins only), and announces it.
    pub async fn set_settings(&self, settings: GroupSettings) -> Result<()> {
        self.client.set_group_settings(self.id, settings).await
    }
}
