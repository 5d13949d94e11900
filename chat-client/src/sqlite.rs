//! [`SqliteStore`]: the embedded, durable [`ClientStore`].
//!
//! One SQLite file in WAL mode; a [`Write`] batch is one transaction. Group commit: a staged
//! batch ([`ClientStore::stage`]) is written to the WAL without an fsync
//! (`synchronous=NORMAL`), and [`ClientStore::sync`] fsyncs the WAL file once for every batch
//! written before it, so concurrent commits share one fsync and the crypto lock is never held
//! across one. A batch that `commit` or `sync` returned for survives a power cut as well as a
//! crash of the app; one only staged survives a crash of the app (it is in the OS's cache), and
//! a power cut loses staged batches only as a suffix: SQLite's recovery replays the WAL's
//! committed transactions in order up to the first one not wholly on disk. An fsync that fails
//! leaves the store refusing every later write ([`StoreError::SyncFailed`]): what it covered may
//! or may not be on disk, and nothing may act as if it were. `secure_delete=ON`, so
//! the text of a message deleted for everyone (erased by [`Write::Redact`]) and its index
//! entries do not linger in free pages.
//!
//! Encryption at rest ([`SqliteStore::open_encrypted`]): every secret value (the device's
//! token, its account and its sessions, sender keys, message plaintext, the outbox) is sealed
//! with a [`StoreCipher`] under the app's key, bound to its table and row; the search index,
//! which is plaintext by nature, then lives in memory only (SQLite's `temp` schema) and is
//! built again from the decrypted messages each time the store opens. What stays readable in
//! the file is metadata: conversation and message IDs, senders, times, content types and
//! reply targets, read positions, the devices and trusted public keys of contacts, group
//! states.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use chat_core::{
    ClientKey, ConversationId, ConversationKind, DeviceAddress, DeviceId, InboxPos, MessageId,
    ReadPosition, Timestamp, UserId, kinds,
};
use chat_crypto::{StoreCipher, Zeroizing};
use rusqlite::{Connection, OptionalExtension, params};

use crate::error::{Error, Result, StoreError};
use crate::search::{SearchPage, SearchResults};
use crate::store::{
    ClientStore, ConversationRecord, DeviceRecord, OutboxEntry, RecoveryPoint, Secret,
    StoredMessage, Write, apply_search, blocking, classify,
};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
    user INTEGER NOT NULL, device INTEGER NOT NULL, pickle BLOB NOT NULL,
    PRIMARY KEY (user, device));
CREATE TABLE IF NOT EXISTS sender_keys (
    conversation INTEGER PRIMARY KEY, pickle BLOB NOT NULL, distributed BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS receivers (
    conversation INTEGER NOT NULL, user INTEGER NOT NULL, device INTEGER NOT NULL,
    pickle BLOB NOT NULL, PRIMARY KEY (conversation, user, device));
CREATE TABLE IF NOT EXISTS messages (
    conversation INTEGER NOT NULL, id INTEGER NOT NULL,
    sender_user INTEGER NOT NULL, sender_device INTEGER NOT NULL,
    client_key BLOB NOT NULL, sent_at INTEGER NOT NULL, plaintext BLOB NOT NULL,
    kind INTEGER NOT NULL DEFAULT 0, target INTEGER,
    PRIMARY KEY (conversation, id));
CREATE TABLE IF NOT EXISTS read_positions (
    conversation INTEGER PRIMARY KEY, up_to INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, client_key BLOB NOT NULL UNIQUE,
    conversation INTEGER NOT NULL, payload BLOB NOT NULL, plaintext BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS conversations (id INTEGER PRIMARY KEY, kind TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS conversation_devices (
    conversation INTEGER PRIMARY KEY, devices BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS trust (user INTEGER PRIMARY KEY, record BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS groups (conversation INTEGER PRIMARY KEY, state BLOB NOT NULL);
";

/// Created after the columns they index exist (a store made before them gains the columns in
/// [`migrate`]).
const INDEXES: &str = "
CREATE INDEX IF NOT EXISTS messages_by_target ON messages (conversation, target, id)
    WHERE target IS NOT NULL;
";

/// A [`ClientStore`] in one SQLite file, encrypted or not.
///
/// Three connections: writes go through one (on a multi-threaded tokio runtime inside
/// `block_in_place`, so the worker's other tasks move to another thread while SQLite works;
/// the client runs [`sync`](ClientStore::sync) on tokio's blocking pool), reads through the
/// second, which WAL lets read the last commit while the next one is being written (so a
/// read never waits for a write, its fsync or a checkpoint; only the encrypted store's
/// search reads on the writer, whose in-memory schema holds its index), and checkpoints run
/// on the third (see `Checkpointer`).
pub struct SqliteStore {
    conn: Mutex<Connection>,
    reader: Mutex<Connection>,
    values: Values,
    wal: Wal,
    /// `None` for an in-memory database (no WAL).
    checkpointer: Option<Arc<Checkpointer>>,
}

/// What a connection does when another holds a lock it needs (the checkpointer's brief
/// exclusive steps, mostly): tries again every 100 µs, for 5 s in all. SQLite's own busy
/// timeout sleeps in growing steps (1, 2, 5 … 100 ms), so a lock held for a millisecond
/// could cost the waiting connection 50 ms or more.
fn retry_busy(attempt: i32) -> bool {
    busy_step(attempt, 50_000)
}

/// The checkpointer's busy handler: the same steps for 100 ms in all. Only a `TRUNCATE`
/// waits at all (for readers to leave the WAL), and it holds SQLite's write lock while it
/// does, so it gives up soon and is tried again at the next start.
fn retry_busy_briefly(attempt: i32) -> bool {
    busy_step(attempt, 1_000)
}

/// Waits 100 µs; whether to try again (fewer than `attempts` so far).
fn busy_step(attempt: i32, attempts: i32) -> bool {
    std::thread::sleep(std::time::Duration::from_micros(100));
    attempt < attempts
}

/// The WAL is copied into the database after this many batches (a few pages each, so about
/// SQLite's own default of 1,000 pages).
const CHECKPOINT_BATCHES: u64 = 256;

/// Copies the WAL into the database on a connection of its own, off the write path: a
/// commit never checkpoints (SQLite's automatic checkpoint is off), so neither the writer's
/// mutex nor the crypto lock around a staged batch is held across a checkpoint's copying
/// and fsyncs. A sync that finds [`CHECKPOINT_BATCHES`] batches written since the last
/// checkpoint starts one on tokio's blocking pool (in place outside a runtime) and does not
/// wait for it. It is `PASSIVE`: it copies what no reader still needs and never holds up the
/// writer; SQLite writes the WAL from its start again at the next commit once everything is
/// copied. The file keeps its largest size (no `journal_size_limit`: cutting it back is an
/// `ftruncate` in the commit, measured at 45 to 60 ms while the checkpoint's fsyncs ran).
///
/// A batch that erases text ([`Write::Redact`], [`Write::Forget`]) starts one at once, in
/// `TRUNCATE` mode: the WAL still holds the erased text in earlier frames, so everything is
/// copied into the database (whose freed pages `secure_delete` overwrote) and the WAL is
/// emptied. It runs on its own connection, so the erasing call (and the locks around it)
/// does not wait for it; but it holds SQLite's write lock while it copies and while it waits
/// for readers to leave the WAL (100 ms at most), so a write that comes meanwhile waits for
/// it (in `retry_busy`). One that a reader or an error kept from finishing is tried again at
/// the next start.
struct Checkpointer {
    db: PathBuf,
    /// Opened at the first checkpoint.
    conn: Mutex<Option<Connection>>,
    running: AtomicBool,
    /// The batches written (`Wal::written`) when the last checkpoint started.
    started_at: AtomicU64,
    /// A batch erased text since the last `TRUNCATE` checkpoint (or that one was kept from
    /// finishing by a reader).
    erased: AtomicBool,
    /// Checkpoints run so far (a test waits on it).
    #[cfg(test)]
    runs: tokio::sync::watch::Sender<u64>,
}

impl Checkpointer {
    /// Starts a checkpoint if `written` (batches so far) is far enough past the last one, or
    /// an erasure waits for one, and none is running.
    fn start_if_due(self: &Arc<Self>, written: u64) {
        let due = self.erased.load(Ordering::SeqCst)
            || written.saturating_sub(self.started_at.load(Ordering::Acquire))
                >= CHECKPOINT_BATCHES;
        if !due || self.running.swap(true, Ordering::SeqCst) {
            return;
        }
        self.started_at.store(written, Ordering::Release);
        let this = Arc::clone(self);
        let run = move || {
            loop {
                let blocked = this.run().unwrap_or_else(|e| {
                    tracing::debug!(cause = %e, "checkpoint");
                    true
                });
                this.running.store(false, Ordering::SeqCst);
                // An erasure that came while this one ran found it running and left it to
                // this thread: do it now (unless a reader or an error just stopped one; the
                // next start tries again).
                if blocked
                    || !this.erased.load(Ordering::SeqCst)
                    || this.running.swap(true, Ordering::SeqCst)
                {
                    return;
                }
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(run)),
            Err(_) => run(),
        }
    }

    /// Runs one checkpoint: `TRUNCATE` if an erasure waits for one, else `PASSIVE`. Returns
    /// whether an erasure's checkpoint could not finish (a reader outlasted the busy
    /// handler); it is then still wanted, as it is after an error.
    fn run(&self) -> Result<bool> {
        let truncate = self.erased.swap(false, Ordering::SeqCst);
        let result = self.checkpoint(truncate);
        if truncate && !matches!(result, Ok(false)) {
            self.erased.store(true, Ordering::SeqCst);
        }
        result
    }

    /// Whether the checkpoint was kept from finishing.
    fn checkpoint(&self, truncate: bool) -> Result<bool> {
        let mut conn = self
            .conn
            .lock()
            .map_err(|_| Error::poisoned("sqlite checkpointer"))?;
        let conn = match &mut *conn {
            Some(conn) => conn,
            slot => {
                let mut conn = Connection::open(&self.db)?;
                conn.busy_handler(Some(retry_busy_briefly))?;
                slot.insert(conn)
            }
        };
        let sql = if truncate {
            "PRAGMA wal_checkpoint(TRUNCATE)"
        } else {
            "PRAGMA wal_checkpoint(PASSIVE)"
        };
        let busy: i64 = conn.query_row(sql, [], |r| r.get(0))?;
        #[cfg(test)]
        self.runs.send_modify(|n| *n += 1);
        // A passive checkpoint that could not copy everything is not held up: it copies
        // the rest next time.
        Ok(truncate && busy != 0)
    }
}

/// The group commit's bookkeeping: batches written to the WAL, and how many of them an fsync
/// made durable.
struct Wal {
    /// The WAL file (`None` for an in-memory database, which has nothing to make durable).
    path: Option<PathBuf>,
    /// Batches written to the WAL, counted after each transaction commits.
    written: AtomicU64,
    /// Set when an fsync failed; every later write and sync is refused.
    failed: AtomicBool,
    /// Held across the fsync: a caller that waited for it finds its batch covered.
    synced: Mutex<Synced>,
    /// Fsyncs done.
    #[cfg(test)]
    fsyncs: AtomicU64,
}

struct Synced {
    /// Batches durable: `written` as it was when the last fsync began.
    upto: u64,
    /// The WAL, opened at the first sync.
    file: Option<File>,
}

impl Wal {
    fn new(path: Option<PathBuf>) -> Self {
        Self {
            path,
            written: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            synced: Mutex::new(Synced {
                upto: 0,
                file: None,
            }),
            #[cfg(test)]
            fsyncs: AtomicU64::new(0),
        }
    }

    fn check(&self) -> Result<()> {
        if self.failed.load(Ordering::Acquire) {
            return Err(StoreError::SyncFailed(None).into());
        }
        Ok(())
    }

    /// Fsyncs the WAL unless every batch written before the call is durable already.
    fn sync(&self) -> Result<()> {
        self.check()?;
        let Some(path) = &self.path else {
            return Ok(());
        };
        let wanted = self.written.load(Ordering::Acquire);
        let mut synced = self
            .synced
            .lock()
            .map_err(|_| Error::poisoned("sqlite store"))?;
        if synced.upto >= wanted {
            return Ok(());
        }
        // Every batch counted here is wholly in the file: the count follows the commit.
        let upto = self.written.load(Ordering::Acquire);
        let result = match &synced.file {
            Some(file) => file.sync_data(),
            None => File::options().append(true).open(path).and_then(|file| {
                // The WAL's directory entry too, once: a file SQLite just made.
                if let Some(dir) = path.parent() {
                    sync_dir(dir)?;
                }
                file.sync_data()?;
                synced.file = Some(file);
                Ok(())
            }),
        };
        match result {
            Ok(()) => {
                synced.upto = upto;
                #[cfg(test)]
                self.fsyncs.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                self.failed.store(true, Ordering::Release);
                Err(StoreError::SyncFailed(Some(e)).into())
            }
        }
    }
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    File::open(dir)?.sync_all()
}

/// Directories cannot be opened for an fsync elsewhere (NTFS journals the entry).
#[cfg(not(unix))]
fn sync_dir(_: &Path) -> std::io::Result<()> {
    Ok(())
}

/// Seals and opens the secret values of an encrypted store; passes them through otherwise.
struct Values(Option<StoreCipher>);

/// What the key check in an encrypted store's `meta` holds.
const KEY_CHECK: &[u8] = b"chat-client store key check";

impl Values {
    /// `value` as stored at the place `ad` names.
    fn seal(&self, ad: &str, value: &[u8]) -> Result<Vec<u8>> {
        match &self.0 {
            None => Ok(value.to_vec()),
            Some(cipher) => Ok(cipher.seal(&mut rand::rng(), ad.as_bytes(), value)?),
        }
    }

    /// The value stored at `ad`. An empty column (an erased message) is empty.
    fn open(&self, ad: &str, stored: Vec<u8>) -> Result<Vec<u8>> {
        match &self.0 {
            Some(cipher) if !stored.is_empty() => {
                let opened: Zeroizing<Vec<u8>> = cipher
                    .open(ad.as_bytes(), &stored)
                    .map_err(|_| corrupt("sealed value"))?;
                Ok(opened.to_vec())
            }
            _ => Ok(stored),
        }
    }
}

fn message_ad(conversation: i64, message: i64) -> String {
    format!("messages/{conversation}/{message}")
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SqliteStore")
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the unencrypted store at `path`. An encrypted one is
    /// refused ([`StoreError::KeyRequired`]).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let conn = Self::connect(path)?;
        if meta_of(&conn, "key_check")?.is_some() {
            return Err(StoreError::KeyRequired.into());
        }
        Self::with(path, conn, Values(None))
    }

    fn with(path: &Path, conn: Connection, values: Values) -> Result<Self> {
        let mut reader = Connection::open(path)?;
        reader.busy_handler(Some(retry_busy))?;
        reader.pragma_update(None, "query_only", "ON")?;
        // An in-memory database ("memory" journal) has no WAL to make durable.
        let mode: String = conn.pragma_query_value(None, "journal_mode", |r| r.get(0))?;
        let wal = mode.eq_ignore_ascii_case("wal").then(|| {
            let mut wal = path.as_os_str().to_owned();
            wal.push("-wal");
            PathBuf::from(wal)
        });
        let checkpointer = match wal {
            Some(_) => {
                // Commits never checkpoint; the checkpointer does (see `Checkpointer`).
                conn.pragma_update(None, "wal_autocheckpoint", 0)?;
                Some(Arc::new(Checkpointer {
                    db: path.to_owned(),
                    conn: Mutex::new(None),
                    running: AtomicBool::new(false),
                    started_at: AtomicU64::new(0),
                    erased: AtomicBool::new(false),
                    #[cfg(test)]
                    runs: tokio::sync::watch::Sender::new(0),
                }))
            }
            None => None,
        };
        Ok(Self {
            conn: Mutex::new(conn),
            reader: Mutex::new(reader),
            values,
            wal: Wal::new(wal),
            checkpointer,
        })
    }

    /// Opens (creating if needed) the store at `path`, encrypted under `key`: 32 random
    /// bytes the app keeps outside the store, in the OS keychain (Keychain, the Android
    /// Keystore, the Secret Service, DPAPI). A store made with another key is refused
    /// ([`StoreError::WrongKey`]), as is one made without encryption
    /// ([`StoreError::NotEncrypted`]). Opening rebuilds the in-memory search index from
    /// every stored message (see the module docs).
    pub fn open_encrypted(path: impl AsRef<Path>, key: &[u8; 32]) -> Result<Self> {
        let path = path.as_ref();
        let conn = Self::connect(path)?;
        let cipher = StoreCipher::new(key)?;
        match meta_of(&conn, "key_check")? {
            Some(check) => {
                let opened = cipher
                    .open(b"meta/key_check", &check)
                    .map_err(|_| StoreError::WrongKey)?;
                if opened.as_slice() != KEY_CHECK {
                    return Err(StoreError::WrongKey.into());
                }
            }
            None if meta_of(&conn, "device")?.is_some() => {
                return Err(StoreError::NotEncrypted.into());
            }
            None => {
                let check = cipher.seal(&mut rand::rng(), b"meta/key_check", KEY_CHECK)?;
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('key_check', ?1)",
                    [check],
                )?;
            }
        }
        let store = Self::with(path, conn, Values(Some(cipher)))?;
        store.index_in_memory()?;
        Ok(store)
    }

    /// Whether a device registered or logged in with this store, so that
    /// [`ClientBuilder::open`](crate::ClientBuilder::open) resumes it (a new store needs
    /// `register` or `login` instead).
    pub fn has_device(&self) -> Result<bool> {
        Ok(self.meta("device")?.is_some())
    }

    fn connect(path: impl AsRef<Path>) -> Result<Connection> {
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // Commits reach the disk through `Wal::sync` (see the module docs).
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_handler(Some(retry_busy))?;
        // Deleted messages are erased, not just unlinked: freed pages are overwritten.
        conn.pragma_update(None, "secure_delete", "ON")?;
        migrate(&mut conn)?;
        Ok(conn)
    }

    /// An encrypted store's search index: in SQLite's `temp` schema, kept in memory (names
    /// resolve there before the file's empty tables), filled from the decrypted messages.
    fn index_in_memory(&self) -> Result<()> {
        let mut conn = self.conn()?;
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        crate::search::create_temp_schema(&conn)?;
        let tx = conn.transaction()?;
        index_all(&tx, &self.values)?;
        tx.commit()?;
        Ok(())
    }

    /// Fsyncs of the WAL so far.
    #[cfg(test)]
    pub(crate) fn fsyncs(&self) -> u64 {
        self.wal.fsyncs.load(Ordering::Relaxed)
    }

    /// Checkpoints run by the checkpointer so far.
    #[cfg(test)]
    pub(crate) fn checkpoints(&self) -> u64 {
        self.checkpointer.as_ref().map_or(0, |c| *c.runs.borrow())
    }

    /// Waits until `n` checkpoints have run.
    #[cfg(test)]
    pub(crate) async fn checkpointed(&self, n: u64) {
        let checkpointer = self.checkpointer.as_ref().expect("a WAL store");
        let mut runs = checkpointer.runs.subscribe();
        let wait = runs.wait_for(|runs| *runs >= n);
        tokio::time::timeout(std::time::Duration::from_secs(10), wait)
            .await
            .expect("the checkpoint ran")
            .expect("the store is open");
    }

    /// After a sync: copies the WAL into the database if it has grown (without waiting).
    fn checkpoint_if_due(&self) {
        if let Some(checkpointer) = &self.checkpointer {
            checkpointer.start_if_due(self.wal.written.load(Ordering::Acquire));
        }
    }

    /// The connection that commits. A std mutex: every use is a synchronous call, never
    /// held across an await.
    fn conn(&self) -> Result<MutexGuard<'_, Connection>> {
        self.conn
            .lock()
            .map_err(|_| Error::poisoned("sqlite store"))
    }

    /// The connection that reads.
    fn read(&self) -> Result<MutexGuard<'_, Connection>> {
        self.reader
            .lock()
            .map_err(|_| Error::poisoned("sqlite store"))
    }

    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        meta_of(&*self.read()?, key)
    }

    /// A secret `meta` value, opened.
    fn secret_meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.meta(key)?
            .map(|v| self.values.open(&format!("meta/{key}"), v))
            .transpose()
    }
}

fn meta_of(conn: &Connection, key: &str) -> Result<Option<Vec<u8>>> {
    Ok(conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()?)
}

/// The schema version this build writes, in `PRAGMA user_version`. Version 0 is a new file or
/// one from before versioning; every later step is a numbered migration below.
///
/// 1. `messages.kind` and `target` (derived from the plaintext), their index, the search
///    index filled with every message's text; the outbox, conversations and their devices.
/// 2. The `trust` table: the device lists this device trusts (issue 16).
/// 3. The `groups` table: the group states this device verified (issue 17).
const LATEST: u32 = 3;

/// Brings the store to [`LATEST`], or refuses a file a newer build wrote
/// ([`StoreError::TooNew`]). Each step commits with its version, so a crash in between leaves
/// the previous version.
fn migrate(conn: &mut Connection) -> Result<()> {
    let found: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > LATEST {
        return Err(StoreError::TooNew {
            found,
            supported: LATEST,
        }
        .into());
    }
    if found == 0 {
        // A new file gets the latest shape at once; a file from before versioning gets the
        // tables it lacks, then the one migration it may need.
        let tx = conn.transaction()?;
        tx.execute_batch(SCHEMA)?;
        crate::search::create_schema(&tx)?;
        tx.commit()?;
        add_kind_and_target(conn)?;
        let tx = conn.transaction()?;
        tx.execute_batch(INDEXES)?;
        tx.pragma_update(None, "user_version", LATEST)?;
        tx.commit()?;
        return Ok(());
    }
    if found < 2 {
        let tx = conn.transaction()?;
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS trust (user INTEGER PRIMARY KEY, record BLOB NOT NULL);",
        )?;
        tx.pragma_update(None, "user_version", 2)?;
        tx.commit()?;
    }
    if found < 3 {
        let tx = conn.transaction()?;
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS groups (conversation INTEGER PRIMARY KEY, state BLOB NOT NULL);",
        )?;
        tx.pragma_update(None, "user_version", 3)?;
        tx.commit()?;
    }
    Ok(())
}

/// Migration 1 for a file from before versioning: messages gain their content type and target
/// (derived from the plaintext), and the search index is filled with every message's current
/// text. One transaction; a no-op on a file that has them.
fn add_kind_and_target(conn: &mut Connection) -> Result<()> {
    let has_target: bool = conn
        .prepare("SELECT 1 FROM pragma_table_info('messages') WHERE name = 'target'")?
        .exists([])?;
    if has_target {
        return Ok(());
    }
    let tx = conn.transaction()?;
    tx.execute_batch(
        "ALTER TABLE messages ADD COLUMN kind INTEGER NOT NULL DEFAULT 0;
         ALTER TABLE messages ADD COLUMN target INTEGER;",
    )?;
    let rows: Vec<(i64, Vec<u8>)> = tx
        .prepare("SELECT rowid, plaintext FROM messages")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (rowid, plaintext) in rows {
        let (kind, target) = classify(&plaintext);
        tx.execute(
            "UPDATE messages SET kind = ?2, target = ?3 WHERE rowid = ?1",
            params![rowid, kind, target.map(|t| id(t.get()))],
        )?;
    }
    // The relations of each message are read below: index them first.
    tx.execute_batch(INDEXES)?;
    // A file from before versioning was never encrypted.
    index_all(&tx, &Values(None))?;
    tx.commit()?;
    Ok(())
}

/// Indexes every message's current text for search (each standalone message with its
/// edits and deletes applied).
fn index_all(conn: &Connection, values: &Values) -> Result<()> {
    let standalone = select_messages(
        conn,
        values,
        "WHERE target IS NULL ORDER BY conversation, id",
        [],
    )?;
    for m in standalone {
        let relations = select_messages(
            conn,
            values,
            "WHERE conversation = ?1 AND target = ?2 ORDER BY id",
            params![id(m.conversation.get()), id(m.id.get())],
        )?;
        if let Some(text) = crate::thread::searchable(&crate::thread::view(&m, &relations)) {
            crate::search::upsert(conn, m.conversation, m.id, &text)?;
        }
    }
    Ok(())
}

/// The columns [`row_of`] reads.
const COLUMNS: &str =
    "conversation, id, sender_user, sender_device, client_key, sent_at, plaintext";

type Row = (i64, i64, i64, i64, Vec<u8>, i64, Vec<u8>);

fn row_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
    ))
}

fn stored(values: &Values, (c, mid, su, sd, k, at, text): Row) -> Result<StoredMessage> {
    let text = values.open(&message_ad(c, mid), text)?;
    Ok(StoredMessage {
        conversation: ConversationId::new(uid(c)).map_err(|_| corrupt("conversation"))?,
        id: MessageId::new(uid(mid)).map_err(|_| corrupt("message id"))?,
        sender: address(su, sd)?,
        client_key: ClientKey::from_bytes(k.try_into().map_err(|_| corrupt("client key"))?),
        sent_at: Timestamp::from_millis(uid(at)),
        plaintext: text,
    })
}

/// Messages selected by `clause` (a `WHERE ... ORDER BY ... LIMIT ...` tail).
fn select_messages(
    conn: &Connection,
    values: &Values,
    clause: &str,
    args: impl rusqlite::Params,
) -> Result<Vec<StoredMessage>> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {COLUMNS} FROM messages {clause}"))?;
    let rows = stmt.query_map(args, row_of)?;
    rows.map(|r| r.map_err(Error::from).and_then(|r| stored(values, r)))
        .collect()
}

fn id(n: u64) -> i64 {
    // IDs are below 2^63 by construction (chat_core::MAX_ID).
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn uid(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

type OutboxRow = (Vec<u8>, i64, Vec<u8>, Vec<u8>);

fn outbox_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<OutboxRow> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
}

fn outbox_entry(values: &Values, (k, c, p, t): OutboxRow) -> Result<OutboxEntry> {
    let client_key = ClientKey::from_bytes(k.try_into().map_err(|_| corrupt("client key"))?);
    Ok(OutboxEntry {
        client_key,
        conversation: ConversationId::new(uid(c)).map_err(|_| corrupt("conversation"))?,
        payload: Secret::new(values.open(&outbox_ad(client_key, "payload"), p)?),
        plaintext: values.open(&outbox_ad(client_key, "plaintext"), t)?,
    })
}

fn outbox_ad(client_key: ClientKey, column: &str) -> String {
    format!("outbox/{}/{column}", hex::encode(client_key.as_bytes()))
}

fn conversation_record((cid, kind): (i64, String)) -> Result<ConversationRecord> {
    Ok(ConversationRecord {
        id: ConversationId::new(uid(cid)).map_err(|_| corrupt("conversation"))?,
        kind: if kind == "group" {
            ConversationKind::Group
        } else {
            ConversationKind::Direct
        },
    })
}

fn corrupt(what: &'static str) -> Error {
    Error::corrupt(what)
}

fn address(user: i64, device: i64) -> Result<DeviceAddress> {
    Ok(DeviceAddress {
        user: UserId::new(uid(user)).map_err(|_| corrupt("user id"))?,
        device: DeviceId::new(uid(device)).map_err(|_| corrupt("device id"))?,
    })
}

fn encode_addresses(list: &[DeviceAddress]) -> Vec<u8> {
    list.iter()
        .flat_map(|a| {
            let mut b = a.user.get().to_be_bytes().to_vec();
            b.extend_from_slice(&a.device.get().to_be_bytes());
            b
        })
        .collect()
}

fn decode_addresses(bytes: &[u8]) -> Result<Vec<DeviceAddress>> {
    bytes
        .chunks_exact(16)
        .map(|c| {
            let (u, d) = c.split_at(8);
            let u = u64::from_be_bytes(u.try_into().map_err(|_| corrupt("address"))?);
            let d = u64::from_be_bytes(d.try_into().map_err(|_| corrupt("address"))?);
            address(id(u), id(d))
        })
        .collect()
}

fn sessions_ad(device: DeviceAddress) -> String {
    format!("sessions/{}/{}", device.user, device.device)
}

fn receiver_ad(conversation: ConversationId, sender: DeviceAddress) -> String {
    format!("receivers/{conversation}/{}/{}", sender.user, sender.device)
}

fn kind_name(kind: ConversationKind) -> &'static str {
    match kind {
        ConversationKind::Direct => "direct",
        ConversationKind::Group => "group",
    }
}

impl SqliteStore {
    /// Writes one batch to the WAL (no fsync).
    fn write(&self, writes: Vec<Write>) -> Result<()> {
        self.wal.check()?;
        let mut conn = self.conn()?;
        let erases = writes
            .iter()
            .any(|w| matches!(w, Write::Redact { .. } | Write::Forget { .. }));
        let tx = conn.transaction()?;
        for w in writes {
            match w {
                Write::Device(d) => {
                    let json = serde_json::json!({
                        "server": d.server,
                        "user": d.address.user.get(),
                        "device": d.address.device.get(),
                        "token": d.token,
                    });
                    tx.execute(
                        "INSERT OR REPLACE INTO meta (key, value) VALUES ('device', ?1)",
                        [self
                            .values
                            .seal("meta/device", json.to_string().as_bytes())?],
                    )?;
                }
                Write::Account(a) => {
                    tx.execute(
                        "INSERT OR REPLACE INTO meta (key, value) VALUES ('account', ?1)",
                        [self.values.seal("meta/account", a.as_slice())?],
                    )?;
                }
                Write::Sessions(d, p) => {
                    tx.execute(
                        "INSERT OR REPLACE INTO sessions (user, device, pickle) VALUES (?1, ?2, ?3)",
                        params![
                            id(d.user.get()),
                            id(d.device.get()),
                            self.values.seal(&sessions_ad(d), p.as_slice())?
                        ],
                    )?;
                }
                Write::SenderKey {
                    conversation,
                    pickle,
                    distributed,
                } => {
                    tx.execute(
                        "INSERT OR REPLACE INTO sender_keys (conversation, pickle, distributed) VALUES (?1, ?2, ?3)",
                        params![
                            id(conversation.get()),
                            self.values.seal(&format!("sender_keys/{conversation}"), pickle.as_slice())?,
                            encode_addresses(&distributed)
                        ],
                    )?;
                }
                Write::Receiver {
                    conversation,
                    sender,
                    pickle,
                } => {
                    tx.execute(
                        "INSERT OR REPLACE INTO receivers (conversation, user, device, pickle) VALUES (?1, ?2, ?3, ?4)",
                        params![
                            id(conversation.get()),
                            id(sender.user.get()),
                            id(sender.device.get()),
                            self.values.seal(&receiver_ad(conversation, sender), pickle.as_slice())?
                        ],
                    )?;
                }
                Write::Cursor(c) => {
                    tx.execute(
                        "INSERT OR REPLACE INTO meta (key, value) VALUES ('cursor', ?1)",
                        [c.get().to_be_bytes().to_vec()],
                    )?;
                }
                Write::Message(m) => {
                    let (kind, target) = classify(&m.plaintext);
                    tx.prepare_cached(
                        "INSERT OR IGNORE INTO messages (conversation, id, sender_user, sender_device, client_key, sent_at, plaintext, kind, target) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    )?
                    .execute(params![
                        id(m.conversation.get()),
                        id(m.id.get()),
                        id(m.sender.user.get()),
                        id(m.sender.device.get()),
                        m.client_key.as_bytes().as_slice(),
                        id(m.sent_at.as_millis()),
                        self.values.seal(
                            &message_ad(id(m.conversation.get()), id(m.id.get())),
                            &m.plaintext
                        )?,
                        kind,
                        target.map(|t| id(t.get()))
                    ])?;
                }
                Write::ReadPosition {
                    conversation,
                    up_to,
                } => {
                    tx.execute(
                        "INSERT INTO read_positions (conversation, up_to) VALUES (?1, ?2)
                         ON CONFLICT (conversation) DO UPDATE SET up_to = max(up_to, excluded.up_to)",
                        params![id(conversation.get()), id(up_to.get())],
                    )?;
                }
                Write::Search(w) => apply_search(&tx, &w)?,
                Write::LowerReadPosition {
                    conversation,
                    up_to: None,
                } => {
                    tx.execute(
                        "DELETE FROM read_positions WHERE conversation = ?1",
                        [id(conversation.get())],
                    )?;
                }
                Write::LowerReadPosition {
                    conversation,
                    up_to: Some(up_to),
                } => {
                    tx.execute(
                        "UPDATE read_positions SET up_to = min(up_to, ?2) WHERE conversation = ?1",
                        params![id(conversation.get()), id(up_to.get())],
                    )?;
                }
                Write::Forget {
                    conversation,
                    id: message,
                } => {
                    tx.prepare_cached("DELETE FROM messages WHERE conversation = ?1 AND id = ?2")?
                        .execute(params![id(conversation.get()), id(message.get())])?;
                    crate::search::remove(&tx, conversation, message)?;
                }
                Write::Redact {
                    conversation,
                    id: message,
                } => {
                    tx.prepare_cached(
                        "UPDATE messages SET plaintext = x'' WHERE conversation = ?1 AND id = ?2",
                    )?
                    .execute(params![id(conversation.get()), id(message.get())])?;
                }
                Write::Recovery(None) => {
                    tx.execute("DELETE FROM meta WHERE key = 'recovery'", [])?;
                }
                Write::Recovery(Some(points)) => {
                    let bytes: Vec<u8> = points
                        .iter()
                        .flat_map(|p| {
                            let mut b = p.conversation.get().to_be_bytes().to_vec();
                            b.extend_from_slice(&p.newest.map_or(0, MessageId::get).to_be_bytes());
                            b
                        })
                        .collect();
                    tx.execute(
                        "INSERT OR REPLACE INTO meta (key, value) VALUES ('recovery', ?1)",
                        [bytes],
                    )?;
                }
                Write::OutboxPut(e) => {
                    tx.execute(
                        "INSERT INTO outbox (client_key, conversation, payload, plaintext) VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT (client_key) DO UPDATE SET payload = excluded.payload",
                        params![
                            e.client_key.as_bytes().as_slice(),
                            id(e.conversation.get()),
                            self.values.seal(&outbox_ad(e.client_key, "payload"), e.payload.as_slice())?,
                            self.values.seal(&outbox_ad(e.client_key, "plaintext"), &e.plaintext)?
                        ],
                    )?;
                }
                Write::OutboxRemove(k) => {
                    tx.execute(
                        "DELETE FROM outbox WHERE client_key = ?1",
                        [k.as_bytes().as_slice()],
                    )?;
                }
                Write::ConversationDevices {
                    conversation,
                    devices: Some(devices),
                } => {
                    tx.execute(
                        "INSERT OR REPLACE INTO conversation_devices (conversation, devices) VALUES (?1, ?2)",
                        params![id(conversation.get()), encode_addresses(&devices)],
                    )?;
                }
                Write::ConversationDevices {
                    conversation,
                    devices: None,
                } => {
                    tx.execute(
                        "DELETE FROM conversation_devices WHERE conversation = ?1",
                        [id(conversation.get())],
                    )?;
                }
                Write::Trust { user, record } => {
                    tx.execute(
                        "INSERT OR REPLACE INTO trust (user, record) VALUES (?1, ?2)",
                        params![id(user.get()), record],
                    )?;
                }
                Write::VerifiedGroup {
                    conversation,
                    pickle,
                } => {
                    tx.execute(
                        "INSERT OR REPLACE INTO groups (conversation, state) VALUES (?1, ?2)",
                        params![id(conversation.get()), pickle],
                    )?;
                }
                Write::SignedPrekeyMadeAt(t) => {
                    tx.execute(
                        "INSERT OR REPLACE INTO meta (key, value) VALUES ('spk_made_at', ?1)",
                        [t.as_millis().to_be_bytes().to_vec()],
                    )?;
                }
                Write::Conversation(c) => {
                    tx.execute(
                        "INSERT OR REPLACE INTO conversations (id, kind) VALUES (?1, ?2)",
                        params![id(c.id.get()), kind_name(c.kind)],
                    )?;
                }
            }
        }
        tx.commit()?;
        let written = self.wal.written.fetch_add(1, Ordering::AcqRel) + 1;
        drop(conn);
        if erases && let Some(checkpointer) = &self.checkpointer {
            // The erased text is still in the WAL's earlier frames (see `Checkpointer`).
            checkpointer.erased.store(true, Ordering::SeqCst);
            checkpointer.start_if_due(written);
        }
        Ok(())
    }
}

impl ClientStore for SqliteStore {
    fn commit(&self, writes: Vec<Write>) -> Result<()> {
        blocking(|| {
            self.write(writes)?;
            self.wal.sync()
        })?;
        self.checkpoint_if_due();
        Ok(())
    }
    fn stage(&self, writes: Vec<Write>) -> Result<()> {
        blocking(|| self.write(writes))
    }
    fn sync(&self) -> Result<()> {
        blocking(|| self.wal.sync())?;
        self.checkpoint_if_due();
        Ok(())
    }
    fn device(&self) -> Result<Option<DeviceRecord>> {
        let Some(bytes) = self.secret_meta("device")? else {
            return Ok(None);
        };
        let v: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|_| corrupt("device record"))?;
        let num = |k: &str| v.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
        let text = |k: &str| {
            v.get(k)
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| corrupt("device record"))
        };
        Ok(Some(DeviceRecord {
            server: text("server")?,
            address: address(id(num("user")), id(num("device")))?,
            token: text("token")?,
        }))
    }

    fn account(&self) -> Result<Option<Secret>> {
        Ok(self.secret_meta("account")?.map(Secret::new))
    }

    fn sessions(&self, device: DeviceAddress) -> Result<Option<Secret>> {
        Ok(self
            .read()?
            .query_row(
                "SELECT pickle FROM sessions WHERE user = ?1 AND device = ?2",
                [id(device.user.get()), id(device.device.get())],
                |r| r.get::<_, Vec<u8>>(0),
            )
            .optional()?
            .map(|p| self.values.open(&sessions_ad(device), p))
            .transpose()?
            .map(Secret::new))
    }

    fn sender_key(
        &self,
        conversation: ConversationId,
    ) -> Result<Option<(Secret, Vec<DeviceAddress>)>> {
        let row = self
            .read()?
            .query_row(
                "SELECT pickle, distributed FROM sender_keys WHERE conversation = ?1",
                [id(conversation.get())],
                |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?)),
            )
            .optional()?;
        match row {
            Some((p, d)) => {
                let p = self
                    .values
                    .open(&format!("sender_keys/{conversation}"), p)?;
                Ok(Some((Secret::new(p), decode_addresses(&d)?)))
            }
            None => Ok(None),
        }
    }

    fn receiver(
        &self,
        conversation: ConversationId,
        sender: DeviceAddress,
    ) -> Result<Option<Secret>> {
        Ok(self
            .read()?
            .query_row(
                "SELECT pickle FROM receivers WHERE conversation = ?1 AND user = ?2 AND device = ?3",
                [
                    id(conversation.get()),
                    id(sender.user.get()),
                    id(sender.device.get()),
                ],
                |r| r.get::<_, Vec<u8>>(0),
            )
            .optional()?
            .map(|p| self.values.open(&receiver_ad(conversation, sender), p))
            .transpose()?
            .map(Secret::new))
    }

    fn cursor(&self) -> Result<InboxPos> {
        match self.meta("cursor")? {
            None => Ok(InboxPos::ZERO),
            Some(b) => {
                let n = u64::from_be_bytes(b.try_into().map_err(|_| corrupt("cursor"))?);
                InboxPos::new(n).map_err(|_| corrupt("cursor"))
            }
        }
    }

    fn outbox(&self) -> Result<Vec<OutboxEntry>> {
        let conn = self.read()?;
        let mut stmt = conn.prepare_cached(
            "SELECT client_key, conversation, payload, plaintext FROM outbox ORDER BY seq",
        )?;
        let rows = stmt.query_map([], outbox_row)?;
        rows.map(|r| {
            r.map_err(Error::from)
                .and_then(|r| outbox_entry(&self.values, r))
        })
        .collect()
    }

    fn outbox_len(&self) -> Result<usize> {
        let conn = self.read()?;
        let mut stmt = conn.prepare_cached("SELECT COUNT(*) FROM outbox")?;
        let n: i64 = stmt.query_row([], |r| r.get(0))?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    fn outbox_entry(&self, client_key: ClientKey) -> Result<Option<OutboxEntry>> {
        let conn = self.read()?;
        let mut stmt = conn.prepare_cached(
            "SELECT client_key, conversation, payload, plaintext FROM outbox WHERE client_key = ?1",
        )?;
        stmt.query_row([client_key.as_bytes().as_slice()], outbox_row)
            .optional()?
            .map(|r| outbox_entry(&self.values, r))
            .transpose()
    }

    fn messages(
        &self,
        conversation: ConversationId,
        after: Option<MessageId>,
        limit: usize,
    ) -> Result<Vec<StoredMessage>> {
        select_messages(
            &*self.read()?,
            &self.values,
            "WHERE conversation = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
            params![
                id(conversation.get()),
                id(after.map_or(0, MessageId::get)),
                i64::try_from(limit).unwrap_or(i64::MAX)
            ],
        )
    }

    fn message(
        &self,
        conversation: ConversationId,
        message: MessageId,
    ) -> Result<Option<StoredMessage>> {
        Ok(select_messages(
            &*self.read()?,
            &self.values,
            "WHERE conversation = ?1 AND id = ?2",
            params![id(conversation.get()), id(message.get())],
        )?
        .pop())
    }

    fn newest_messages(&self) -> Result<Vec<(ConversationId, MessageId)>> {
        let conn = self.read()?;
        let mut stmt =
            conn.prepare("SELECT conversation, max(id) FROM messages GROUP BY conversation")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (c, m) = row?;
            out.push((
                ConversationId::new(uid(c)).map_err(|_| corrupt("conversation"))?,
                MessageId::new(uid(m)).map_err(|_| corrupt("message id"))?,
            ));
        }
        Ok(out)
    }

    fn standalone(
        &self,
        conversation: ConversationId,
        before: Option<MessageId>,
        limit: usize,
    ) -> Result<Vec<StoredMessage>> {
        select_messages(
            &*self.read()?,
            &self.values,
            "WHERE conversation = ?1 AND id < ?2 AND target IS NULL ORDER BY id DESC LIMIT ?3",
            params![
                id(conversation.get()),
                id(before.map_or(MessageId::MAX, |b| b).get()),
                i64::try_from(limit).unwrap_or(i64::MAX)
            ],
        )
    }

    fn relations(
        &self,
        conversation: ConversationId,
        target: MessageId,
    ) -> Result<Vec<StoredMessage>> {
        select_messages(
            &*self.read()?,
            &self.values,
            "WHERE conversation = ?1 AND target = ?2 ORDER BY id",
            params![id(conversation.get()), id(target.get())],
        )
    }

    fn read_position(&self, conversation: ConversationId) -> Result<ReadPosition> {
        let up_to: Option<i64> = self
            .read()?
            .query_row(
                "SELECT up_to FROM read_positions WHERE conversation = ?1",
                [id(conversation.get())],
                |r| r.get(0),
            )
            .optional()?;
        match up_to {
            None => Ok(ReadPosition::NONE),
            Some(n) => Ok(ReadPosition::up_to(
                MessageId::new(uid(n)).map_err(|_| corrupt("read position"))?,
            )),
        }
    }

    fn unread(
        &self,
        conversation: ConversationId,
        read: ReadPosition,
    ) -> Result<Vec<(MessageId, UserId)>> {
        let conn = self.read()?;
        // Texts, attachments and unknown types (see `counts_as_unread`), minus those a delete
        // by their own sender tombstoned.
        let mut stmt = conn.prepare_cached(
            "SELECT m.id, m.sender_user FROM messages m
             WHERE m.conversation = ?1 AND m.id > ?2 AND m.target IS NULL
               AND m.kind NOT IN (?3, ?4, ?5, ?6)
               AND NOT EXISTS (SELECT 1 FROM messages d
                   WHERE d.conversation = m.conversation AND d.target = m.id AND d.kind = ?5
                     AND d.sender_user = m.sender_user)
             ORDER BY m.id",
        )?;
        let rows = stmt.query_map(
            params![
                id(conversation.get()),
                id(read.get().map_or(0, MessageId::get)),
                kinds::GROUP_CHANGE,
                kinds::EDIT,
                kinds::DELETE,
                kinds::REACTION
            ],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
        )?;
        let mut out = Vec::new();
        for row in rows {
            let (m, u) = row?;
            out.push((
                MessageId::new(uid(m)).map_err(|_| corrupt("message id"))?,
                UserId::new(uid(u)).map_err(|_| corrupt("user id"))?,
            ));
        }
        Ok(out)
    }

    fn search(&self, query: &str, page: SearchPage) -> Result<SearchResults> {
        // An encrypted store's index is in the committing connection's memory.
        let conn = if self.values.0.is_some() {
            self.conn()?
        } else {
            self.read()?
        };
        Ok(crate::search::search(&conn, query, page)?)
    }

    fn recovery(&self) -> Result<Option<Vec<RecoveryPoint>>> {
        let Some(bytes) = self.meta("recovery")? else {
            return Ok(None);
        };
        bytes
            .chunks_exact(16)
            .map(|c| {
                let (conv, newest) = c.split_at(8);
                let conv = u64::from_be_bytes(conv.try_into().map_err(|_| corrupt("recovery"))?);
                let newest =
                    u64::from_be_bytes(newest.try_into().map_err(|_| corrupt("recovery"))?);
                Ok(RecoveryPoint {
                    conversation: ConversationId::new(conv).map_err(|_| corrupt("recovery"))?,
                    newest: (newest != 0)
                        .then(|| MessageId::new(newest).map_err(|_| corrupt("recovery")))
                        .transpose()?,
                })
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    fn conversation_devices(
        &self,
        conversation: ConversationId,
    ) -> Result<Option<Vec<DeviceAddress>>> {
        let row = self
            .read()?
            .query_row(
                "SELECT devices FROM conversation_devices WHERE conversation = ?1",
                [id(conversation.get())],
                |r| r.get::<_, Vec<u8>>(0),
            )
            .optional()?;
        row.map(|b| decode_addresses(&b)).transpose()
    }

    fn trust(&self, user: UserId) -> Result<Option<Vec<u8>>> {
        Ok(self
            .read()?
            .query_row(
                "SELECT record FROM trust WHERE user = ?1",
                [id(user.get())],
                |r| r.get::<_, Vec<u8>>(0),
            )
            .optional()?)
    }

    fn verified_group(&self, conversation: ConversationId) -> Result<Option<Vec<u8>>> {
        Ok(self
            .read()?
            .query_row(
                "SELECT state FROM groups WHERE conversation = ?1",
                [id(conversation.get())],
                |r| r.get::<_, Vec<u8>>(0),
            )
            .optional()?)
    }

    fn signed_prekey_made_at(&self) -> Result<Option<Timestamp>> {
        match self.meta("spk_made_at")? {
            None => Ok(None),
            Some(b) => {
                let ms = u64::from_be_bytes(b.try_into().map_err(|_| corrupt("timestamp"))?);
                Ok(Some(Timestamp::from_millis(ms)))
            }
        }
    }

    fn conversations(&self) -> Result<Vec<ConversationRecord>> {
        let conn = self.read()?;
        let mut stmt = conn.prepare_cached("SELECT id, kind FROM conversations ORDER BY id")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?;
        rows.map(|r| r.map_err(Error::from).and_then(conversation_record))
            .collect()
    }

    fn conversation(&self, cid: ConversationId) -> Result<Option<ConversationRecord>> {
        let conn = self.read()?;
        let mut stmt = conn.prepare_cached("SELECT id, kind FROM conversations WHERE id = ?1")?;
        stmt.query_row([id(cid.get())], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })
        .optional()?
        .map(conversation_record)
        .transpose()
    }
}
