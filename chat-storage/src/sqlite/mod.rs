//! The embedded SQLite backend (the default): one file, nothing to install.
//!
//! Writes go to one writer thread that owns the only write connection and commits queued
//! requests together (see [`writer`]): with many concurrent senders, one fsync covers a whole
//! batch. Reads run on a few read-only connections on the blocking pool; in WAL mode they
//! never wait for the writer and always see every commit that was acknowledged before they
//! started, so a revoked token or a new message is visible at once.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use chat_core::{
    AccountStore, Appended, AttachmentId, AttachmentMeta, Block, BlockStore, ChainLink,
    Conversation, ConversationId, ConversationStore, Credentials, Device, DeviceAddress, DeviceId,
    DeviceKeys, DeviceListRecord, Direction, Envelope, GroupOp, GroupState, HealthStore,
    InboxEntry, InboxPos, KeyStore, MessageId, MessageStore, MetaStore, NewMessage, OneTimePrekey,
    PrekeyBundle, Profile, ProfileStore, ProfileUpdate, PushToken, ReceiptKind, ReceiptPosition,
    ReceiptStore, SearchCursor, SearchPrefix, StoreError, StoreResult, Timestamp, TokenHash, User,
    UserId, Username,
};
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::common::failure;

mod checkpointer;
mod ops;
mod schema;
#[cfg(all(test, feature = "testing"))]
#[allow(clippy::indexing_slicing)] // tests index their own fixtures
mod tests;
mod writer;

/// How hard SQLite pushes each commit to stable storage (`PRAGMA synchronous`).
///
/// Every setting keeps an acknowledged message across a crash of the process: the commit
/// has reached the operating system before the caller is answered. They differ on power loss
/// or a kernel crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Synchronous {
    /// `FULL`: the WAL is fsynced at every commit, so an acknowledged message also survives
    /// power loss. Group commit makes that one fsync per batch, not per message. The default.
    #[default]
    Full,
    /// `NORMAL`: the WAL is fsynced only at checkpoints. Survives a process crash; on power
    /// loss the last commits before it may be lost (never corrupted).
    Normal,
}

impl Synchronous {
    fn pragma(self) -> &'static str {
        match self {
            Self::Full => "FULL",
            Self::Normal => "NORMAL",
        }
    }
}

/// Settings for [`SqliteStore::open`].
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    synchronous: Synchronous,
    readers: usize,
    max_batch: usize,
    queue: usize,
    max_wal_bytes: u64,
}

/// The default bound on the write-ahead log's size: 64 MiB.
const MAX_WAL_BYTES: u64 = 64 * 1024 * 1024;

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            synchronous: Synchronous::Full,
            readers: 4,
            max_batch: 1024,
            queue: 8192,
            max_wal_bytes: MAX_WAL_BYTES,
        }
    }
}

impl SqliteOptions {
    /// Sets the durability level (default [`Synchronous::Full`]).
    pub fn synchronous(mut self, level: Synchronous) -> Self {
        self.synchronous = level;
        self
    }

    /// Sets how many read-only connections serve reads at once (default 4, at least 1).
    pub fn readers(mut self, readers: usize) -> Self {
        self.readers = readers.max(1);
        self
    }

    /// Sets the most writes committed together (default 1024, at least 1).
    pub fn max_batch(mut self, max_batch: usize) -> Self {
        self.max_batch = max_batch.max(1);
        self
    }

    /// Sets how many writes may wait for the writer before callers wait to enqueue (default
    /// 8192, at least 1): back-pressure instead of unbounded memory.
    pub fn queue(mut self, queue: usize) -> Self {
        self.queue = queue.max(1);
        self
    }

    /// Sets the size past which the write-ahead log is brought back to its start (default
    /// 64 MiB, at least 64 KiB): the writer then runs a checkpoint between two transactions
    /// that briefly holds new writes until every reader has moved past the log, and the file
    /// is cut back to this size. Under constant load the log would otherwise grow without end (see the
    /// checkpointer's module docs). Smaller means more of those short holds.
    pub fn max_wal_bytes(mut self, bytes: u64) -> Self {
        self.max_wal_bytes = bytes.max(64 * 1024);
        self
    }
}

/// The embedded SQLite store. Cheap to share behind an `Arc`; dropping the last handle stops
/// the writer thread after it has answered every queued write.
pub struct SqliteStore {
    queue: mpsc::Sender<writer::Job>,
    readers: Arc<Readers>,
    counters: Arc<writer::Counters>,
}

/// What the writer thread has done since the store was opened: with many concurrent
/// writers, `writes / commits` is the average group-commit batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SqliteStats {
    /// Transactions committed (with [`Synchronous::Full`], one WAL fsync each).
    pub commits: u64,
    /// Write requests committed (including ones that were refused, which wrote nothing).
    pub writes: u64,
    /// Batches rolled back and run again one savepoint per request, because a request
    /// failed after it had written (see the writer's module docs); rare.
    pub reruns: u64,
    /// Checkpoints run by the checkpointer thread (off the writer).
    pub checkpoints: u64,
    /// Checkpoints run by the writer, between two transactions, that brought the
    /// write-ahead log back to its start because it had passed
    /// [`SqliteOptions::max_wal_bytes`] (each holds new writes briefly).
    pub wal_restarts: u64,
    /// Microseconds new writes were held by those checkpoints, in all (failed attempts
    /// included).
    pub wal_restart_micros: u64,
    /// The longest of those holds, in microseconds.
    pub wal_restart_max_micros: u64,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.readers.path)
            .finish_non_exhaustive()
    }
}

struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    permits: Semaphore,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, applies pending migrations and
    /// starts the writer thread. [`StoreError::SchemaTooNew`] if a newer build wrote it.
    /// A path of `:memory:` is refused: each connection would get its own empty database.
    pub async fn open(path: impl AsRef<Path>, options: SqliteOptions) -> StoreResult<Self> {
        let path = path.as_ref().to_path_buf();
        if path.as_os_str() == ":memory:" || path.as_os_str().is_empty() {
            return Err(StoreError::Invalid(
                "SQLite needs a file path (use memory: for tests)",
            ));
        }
        let open_path = path.clone();
        let sync = options.synchronous;
        let max_wal = options.max_wal_bytes;
        let conn = tokio::task::spawn_blocking(move || open_writer(&open_path, sync, max_wal))
            .await
            .map_err(|e| failure(format!("open task failed: {e}")))??;
        let (tx, rx) = mpsc::channel(options.queue);
        let max_batch = options.max_batch;
        let counters = Arc::new(writer::Counters::default());
        let writer_counters = Arc::clone(&counters);
        // The writer wakes the checkpointer after its commits (one wake-up waiting is
        // enough); the checkpointer stops once the writer has ended with the store.
        let (committed, commits) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("chat-sqlite-writer".into())
            .spawn(move || writer::run(conn, rx, max_batch, &writer_counters, &committed))
            .map_err(StoreError::backend)?;
        let checkpoint_conn =
            checkpointer::open(&path, sync.pragma()).map_err(StoreError::backend)?;
        let max_wal_frames =
            checkpointer::frames(&checkpoint_conn, max_wal).map_err(StoreError::backend)?;
        let checkpoint_counters = Arc::clone(&counters);
        std::thread::Builder::new()
            .name("chat-sqlite-checkpointer".into())
            .spawn(move || {
                checkpointer::run(
                    checkpoint_conn,
                    max_wal_frames,
                    checkpoint_counters,
                    commits,
                )
            })
            .map_err(StoreError::backend)?;
        let readers = Readers {
            path,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(options.readers),
        };
        Ok(Self {
            queue: tx,
            readers: Arc::new(readers),
            counters,
        })
    }

    /// Copies the database at `src` into a new file `dest` with SQLite's `VACUUM INTO`: one
    /// consistent snapshot (the write-ahead log included), taken while a node keeps writing
    /// to `src`, and a complete database on its own (no `-wal` file). `dest` must not exist.
    /// Blocks until the copy is written and flushed; run it off an async runtime.
    pub fn backup(src: impl AsRef<Path>, dest: impl AsRef<Path>) -> StoreResult<()> {
        let (src, dest) = (src.as_ref(), dest.as_ref());
        if dest.exists() {
            return Err(StoreError::Invalid("the backup file exists already"));
        }
        let dest = dest
            .to_str()
            .ok_or(StoreError::Invalid("the backup path is not UTF-8"))?;
        // Read-write without create: a missing source is an error, not a new empty database;
        // a read-only connection could not open a WAL database whose `-shm` is absent.
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(src, flags).map_err(StoreError::backend)?;
        conn.execute_batch("PRAGMA busy_timeout = 5000;")
            .map_err(StoreError::backend)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(StoreError::backend)?;
        if version == 0 {
            return Err(StoreError::Invalid("the source is not a chat store"));
        }
        conn.execute("VACUUM INTO ?1", [dest])
            .map_err(StoreError::backend)?;
        std::fs::File::open(dest)
            .and_then(|file| file.sync_all())
            .map_err(StoreError::backend)?;
        Ok(())
    }

    /// The writer's counters so far.
    pub fn stats(&self) -> SqliteStats {
        SqliteStats {
            commits: self.counters.commits.load(Ordering::Relaxed),
            writes: self.counters.writes.load(Ordering::Relaxed),
            reruns: self.counters.reruns.load(Ordering::Relaxed),
            checkpoints: self.counters.checkpoints.load(Ordering::Relaxed),
            wal_restarts: self.counters.wal_restarts.load(Ordering::Relaxed),
            wal_restart_micros: self.counters.wal_restart_micros.load(Ordering::Relaxed),
            wal_restart_max_micros: self.counters.wal_restart_max_micros.load(Ordering::Relaxed),
        }
    }

    /// Queues a write and waits until the batch holding it has committed. `op` may run
    /// more than once (a batch rolled back for another request's failure runs again); only
    /// the run that is committed is answered.
    async fn write<T, F>(&self, op: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnMut(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let reply = self.submit(op).await?;
        reply.await.map_err(|_| writer::writer_gone())?
    }

    /// Queues a write and returns the receiver of its answer: writes queued one after
    /// another run in that order (the writer takes its queue first in, first out).
    async fn submit<T, F>(&self, op: F) -> StoreResult<oneshot::Receiver<StoreResult<T>>>
    where
        T: Send + 'static,
        F: FnMut(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let (job, reply) = writer::Pending::job(op);
        self.queue
            .send(job)
            .await
            .map_err(|_| writer::writer_gone())?;
        Ok(reply)
    }

    /// Runs a read on a read-only connection on the blocking pool.
    async fn read<T, F>(&self, op: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let permit = self
            .readers
            .permits
            .acquire()
            .await
            .map_err(StoreError::backend)?;
        let readers = Arc::clone(&self.readers);
        let result = tokio::task::spawn_blocking(move || {
            let idle = readers.idle.lock().ok().and_then(|mut idle| idle.pop());
            let conn = match idle {
                Some(conn) => conn,
                None => open_reader(&readers.path)?,
            };
            let result = op(&conn);
            if let Ok(mut idle) = readers.idle.lock() {
                idle.push(conn);
            }
            result
        })
        .await
        .map_err(|e| failure(format!("read task failed: {e}")))?;
        drop(permit);
        result
    }
}

fn open_writer(path: &Path, sync: Synchronous, max_wal_bytes: u64) -> StoreResult<Connection> {
    let mut conn = Connection::open(path).map_err(StoreError::backend)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(StoreError::backend)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(failure(format!(
            "could not switch the database to WAL (got {mode})"
        )));
    }
    // Checkpoints run on the checkpointer thread, never inside the writer's commits; the
    // WAL file is cut back to its bound when SQLite restarts it after a full checkpoint.
    conn.execute_batch(&format!(
        "PRAGMA synchronous = {};
         PRAGMA wal_autocheckpoint = 0;
         PRAGMA journal_size_limit = {max_wal_bytes};
         PRAGMA busy_timeout = 5000;
         PRAGMA cache_size = -65536;
         PRAGMA temp_store = MEMORY;",
        sync.pragma()
    ))
    .map_err(StoreError::backend)?;
    stable_plans(&conn)?;
    conn.set_prepared_statement_cache_capacity(128);
    schema::migrate(&mut conn)?;
    Ok(conn)
}

fn open_reader(path: &Path) -> StoreResult<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(StoreError::backend)?;
    conn.execute_batch("PRAGMA busy_timeout = 5000; PRAGMA cache_size = -32768;")
        .map_err(StoreError::backend)?;
    stable_plans(&conn)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Turns on the query planner stability guarantee, so a cached statement keeps its plan.
///
/// Without it, the bundled SQLite (built with STAT4) marks some bound parameters of a
/// statement as able to change its plan and compiles the statement again whenever their
/// values change: the append's members-and-devices join and its block check were parsed
/// and planned anew on every append, a third of the writer's time in a profile. We run no
/// `ANALYZE`, so value-dependent plans have nothing to gain.
fn stable_plans(conn: &Connection) -> StoreResult<()> {
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
        .map_err(StoreError::backend)?;
    Ok(())
}

#[async_trait]
impl AccountStore for SqliteStore {
    async fn create_user(
        &self,
        username: &Username,
        password_hash: &str,
        now: Timestamp,
    ) -> StoreResult<User> {
        let (username, hash) = (username.clone(), password_hash.to_owned());
        self.write(move |c| ops::create_user(c, &username, &hash, now))
            .await
    }

    async fn credentials(&self, username: &Username) -> StoreResult<Option<Credentials>> {
        let username = username.clone();
        self.read(move |c| ops::credentials(c, &username)).await
    }

    async fn user(&self, user: UserId) -> StoreResult<Option<User>> {
        self.read(move |c| ops::user(c, user)).await
    }

    async fn add_device(
        &self,
        user: UserId,
        name: &str,
        token: TokenHash,
        now: Timestamp,
    ) -> StoreResult<Device> {
        let name = name.to_owned();
        self.write(move |c| ops::add_device(c, user, &name, token, now))
            .await
    }

    async fn add_token(
        &self,
        device: DeviceAddress,
        token: TokenHash,
        now: Timestamp,
    ) -> StoreResult<()> {
        self.write(move |c| ops::add_token(c, device, token, now))
            .await
    }

    async fn devices(&self, user: UserId) -> StoreResult<Vec<Device>> {
        self.read(move |c| ops::devices(c, user)).await
    }

    async fn remove_device(&self, device: DeviceAddress) -> StoreResult<()> {
        self.write(move |c| ops::remove_device(c, device)).await
    }

    async fn authenticate(&self, token: TokenHash) -> StoreResult<Option<DeviceAddress>> {
        self.read(move |c| ops::authenticate(c, token)).await
    }

    async fn revoke_token(&self, token: TokenHash) -> StoreResult<bool> {
        self.write(move |c| ops::revoke_token(c, token)).await
    }

    async fn set_last_active(&self, user: UserId, at: Timestamp) -> StoreResult<()> {
        self.write(move |c| ops::set_last_active(c, user, at)).await
    }

    async fn last_active(&self, user: UserId) -> StoreResult<Option<Timestamp>> {
        self.read(move |c| ops::last_active(c, user)).await
    }
}

#[async_trait]
impl KeyStore for SqliteStore {
    async fn device_list(&self, user: UserId) -> StoreResult<Option<DeviceListRecord>> {
        self.read(move |c| ops::device_list(c, user)).await
    }

    async fn set_device_list(
        &self,
        user: UserId,
        record: &DeviceListRecord,
        linked: &[DeviceId],
    ) -> StoreResult<()> {
        let (record, linked) = (record.clone(), linked.to_vec());
        self.write(move |c| ops::set_device_list(c, user, &record, &linked))
            .await
    }

    async fn set_link_payload(&self, device: DeviceAddress, sealed: Bytes) -> StoreResult<()> {
        self.write(move |c| ops::set_link_payload(c, device, &sealed))
            .await
    }

    async fn link_payload(&self, device: DeviceAddress) -> StoreResult<Option<Bytes>> {
        self.read(move |c| ops::link_payload(c, device)).await
    }

    async fn set_device_keys(&self, device: DeviceAddress, keys: &DeviceKeys) -> StoreResult<()> {
        let keys = keys.clone();
        self.write(move |c| ops::set_device_keys(c, device, &keys))
            .await
    }

    async fn add_one_time_prekeys(
        &self,
        device: DeviceAddress,
        keys: &[OneTimePrekey],
    ) -> StoreResult<()> {
        let keys = keys.to_vec();
        self.write(move |c| ops::add_one_time_prekeys(c, device, &keys))
            .await
    }

    async fn claim_bundles(&self, user: UserId) -> StoreResult<Vec<PrekeyBundle>> {
        self.write(move |c| ops::claim_bundles(c, user, true)).await
    }

    async fn fallback_bundles(&self, user: UserId) -> StoreResult<Vec<PrekeyBundle>> {
        self.read(move |c| ops::claim_bundles(c, user, false)).await
    }

    async fn one_time_prekey_count(&self, device: DeviceAddress) -> StoreResult<u64> {
        self.read(move |c| ops::one_time_prekey_count(c, device))
            .await
    }
}

#[async_trait]
impl ConversationStore for SqliteStore {
    async fn open_direct(&self, a: UserId, b: UserId, now: Timestamp) -> StoreResult<Conversation> {
        self.write(move |c| ops::open_direct(c, a, b, now)).await
    }

    async fn create_group(
        &self,
        creator: UserId,
        members: &[UserId],
        limit: usize,
        now: Timestamp,
    ) -> StoreResult<Conversation> {
        let members = members.to_vec();
        self.write(move |c| ops::create_group(c, creator, &members, limit, now))
            .await
    }

    async fn change_group(
        &self,
        conversation: ConversationId,
        actor: UserId,
        op: &GroupOp,
        limit: usize,
        link: Option<&ChainLink>,
    ) -> StoreResult<GroupState> {
        let op = op.clone();
        let link = link.cloned();
        self.write(move |c| ops::change_group(c, conversation, actor, &op, limit, link.as_ref()))
            .await
    }

    async fn group_changes(
        &self,
        conversation: ConversationId,
        after: u64,
        limit: usize,
    ) -> StoreResult<Vec<(u64, Bytes)>> {
        self.read(move |c| ops::group_changes(c, conversation, after, limit))
            .await
    }

    async fn group(&self, conversation: ConversationId) -> StoreResult<GroupState> {
        self.read(move |c| ops::group(c, conversation)).await
    }

    async fn conversation(
        &self,
        conversation: ConversationId,
    ) -> StoreResult<Option<Conversation>> {
        self.read(move |c| ops::conversation(c, conversation)).await
    }

    async fn members(&self, conversation: ConversationId) -> StoreResult<Vec<UserId>> {
        self.read(move |c| ops::members(c, conversation)).await
    }

    async fn is_member(&self, conversation: ConversationId, user: UserId) -> StoreResult<bool> {
        self.read(move |c| ops::is_member(c, conversation, user))
            .await
    }

    async fn conversations_of(&self, user: UserId) -> StoreResult<Vec<Conversation>> {
        self.read(move |c| ops::conversations_of(c, user)).await
    }
}

#[async_trait]
impl HealthStore for SqliteStore {
    /// Sets `user_version` to its own value through the writer: page 1 is rewritten and
    /// committed with the configured sync, so a full disk or a read-only file fails it.
    async fn probe_write(&self) -> StoreResult<()> {
        self.write(ops::probe_write).await
    }
}

#[async_trait]
impl MessageStore for SqliteStore {
    async fn append(&self, message: NewMessage) -> StoreResult<Appended> {
        self.write(move |c| ops::append(c, &message)).await
    }

    /// All queued before any is awaited, so they share commits and run in order.
    async fn append_all(&self, messages: Vec<NewMessage>) -> Vec<StoreResult<Appended>> {
        let mut replies = Vec::with_capacity(messages.len());
        for message in messages {
            replies.push(self.submit(move |c| ops::append(c, &message)).await);
        }
        let mut results = Vec::with_capacity(replies.len());
        for reply in replies {
            results.push(match reply {
                Ok(reply) => reply.await.unwrap_or_else(|_| Err(writer::writer_gone())),
                Err(err) => Err(err),
            });
        }
        results
    }

    async fn inbox(
        &self,
        device: DeviceAddress,
        after: InboxPos,
        limit: usize,
    ) -> StoreResult<Vec<InboxEntry>> {
        self.read(move |c| ops::inbox(c, device, after, limit))
            .await
    }

    async fn inbox_head(&self, device: DeviceAddress) -> StoreResult<InboxPos> {
        self.read(move |c| ops::inbox_head(c, device)).await
    }

    async fn trim_inboxes(&self, sent_before: Timestamp, limit: usize) -> StoreResult<u64> {
        self.write(move |c| ops::trim_inboxes(c, sent_before, limit))
            .await
    }

    async fn inbox_floor(&self, device: DeviceAddress) -> StoreResult<InboxPos> {
        self.read(move |c| ops::inbox_floor(c, device)).await
    }

    async fn ack(&self, device: DeviceAddress, up_to: InboxPos) -> StoreResult<InboxPos> {
        self.write(move |c| ops::ack(c, device, up_to)).await
    }

    async fn ack_all(&self, acks: &[(DeviceAddress, InboxPos)]) -> StoreResult<()> {
        let acks = acks.to_vec();
        self.write(move |c| ops::ack_all(c, &acks)).await
    }

    async fn cursor(&self, device: DeviceAddress) -> StoreResult<InboxPos> {
        self.read(move |c| ops::cursor(c, device)).await
    }

    async fn history(
        &self,
        conversation: ConversationId,
        anchor: MessageId,
        direction: Direction,
        limit: usize,
    ) -> StoreResult<Vec<Envelope>> {
        self.read(move |c| ops::history(c, conversation, anchor, direction, limit))
            .await
    }

    async fn message(
        &self,
        conversation: ConversationId,
        id: MessageId,
    ) -> StoreResult<Option<Envelope>> {
        self.read(move |c| ops::message(c, conversation, id)).await
    }
}

#[async_trait]
impl ReceiptStore for SqliteStore {
    async fn set_receipt(
        &self,
        conversation: ConversationId,
        user: UserId,
        kind: ReceiptKind,
        up_to: MessageId,
    ) -> StoreResult<MessageId> {
        self.write(move |c| ops::set_receipt(c, conversation, user, kind, up_to))
            .await
    }

    async fn receipts(&self, conversation: ConversationId) -> StoreResult<Vec<ReceiptPosition>> {
        self.read(move |c| ops::receipts(c, conversation)).await
    }
}

#[async_trait]
impl MetaStore for SqliteStore {
    async fn insert_attachment(&self, meta: &AttachmentMeta) -> StoreResult<()> {
        let meta = meta.clone();
        self.write(move |c| ops::insert_attachment(c, &meta)).await
    }

    async fn attachment(&self, id: AttachmentId) -> StoreResult<Option<AttachmentMeta>> {
        self.read(move |c| ops::attachment(c, id)).await
    }

    async fn set_push_token(
        &self,
        device: DeviceAddress,
        token: Option<&PushToken>,
    ) -> StoreResult<()> {
        let token = token.cloned();
        self.write(move |c| ops::set_push_token(c, device, token.as_ref()))
            .await
    }

    async fn push_token(&self, device: DeviceAddress) -> StoreResult<Option<PushToken>> {
        self.read(move |c| ops::push_token(c, device)).await
    }
}

#[async_trait]
impl ProfileStore for SqliteStore {
    async fn set_profile(
        &self,
        user: UserId,
        update: &ProfileUpdate,
        now: Timestamp,
    ) -> StoreResult<Profile> {
        let update = update.clone();
        self.write(move |c| ops::set_profile(c, user, &update, now))
            .await
    }

    async fn profile(&self, user: UserId) -> StoreResult<Option<Profile>> {
        self.read(move |c| ops::profile(c, user)).await
    }

    async fn search_profiles(
        &self,
        prefix: &SearchPrefix,
        after: Option<&SearchCursor>,
        limit: usize,
    ) -> StoreResult<Vec<Profile>> {
        let (prefix, after) = (prefix.clone(), after.cloned());
        self.read(move |c| ops::search_profiles(c, &prefix, after.as_ref(), limit))
            .await
    }
}

#[async_trait]
impl BlockStore for SqliteStore {
    async fn block(&self, blocker: UserId, blocked: UserId, now: Timestamp) -> StoreResult<bool> {
        self.write(move |c| ops::block(c, blocker, blocked, now))
            .await
    }

    async fn unblock(&self, blocker: UserId, blocked: UserId) -> StoreResult<bool> {
        self.write(move |c| ops::unblock(c, blocker, blocked)).await
    }

    async fn blocks(&self, blocker: UserId) -> StoreResult<Vec<Block>> {
        self.read(move |c| ops::blocks(c, blocker)).await
    }

    async fn is_blocked(&self, blocker: UserId, blocked: UserId) -> StoreResult<bool> {
        self.read(move |c| ops::is_blocked(c, blocker, blocked))
            .await
    }

    async fn blocked_by(&self, user: UserId) -> StoreResult<Vec<UserId>> {
        self.read(move |c| ops::blocked_by(c, user)).await
    }

    async fn withheld(
        &self,
        conversation: ConversationId,
        user: UserId,
        ids: &[MessageId],
    ) -> StoreResult<Vec<MessageId>> {
        let ids = ids.to_vec();
        self.read(move |c| ops::withheld(c, conversation, user, &ids))
            .await
    }
}
