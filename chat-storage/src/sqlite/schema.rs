//! The SQLite schema and its versioned migrations.
//!
//! The version lives in `PRAGMA user_version`. Migration `i` of [`MIGRATIONS`] takes the
//! schema from version `i` to `i + 1`; each runs in its own transaction together with the
//! version bump, so a crash mid-migration leaves the previous version intact. A database
//! whose version is newer than [`LATEST`] was written by a newer build and is refused.

use chat_core::{StoreError, StoreResult};
use rusqlite::{Connection, TransactionBehavior};

/// The migrations, oldest first.
const MIGRATIONS: &[&str] = &[
    // Version 1.
    "
    CREATE TABLE users (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        username      TEXT    NOT NULL UNIQUE,
        password_hash TEXT    NOT NULL,
        created_at    INTEGER NOT NULL,
        last_active   INTEGER
    );
    -- A device row carries its inbox head and cursor, its public keys and its push token,
    -- so removing the row removes them all.
    CREATE TABLE devices (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        user_id       INTEGER NOT NULL,
        name          TEXT    NOT NULL,
        created_at    INTEGER NOT NULL,
        inbox_head    INTEGER NOT NULL DEFAULT 0,
        cursor        INTEGER NOT NULL DEFAULT 0,
        identity      BLOB,
        spk_id        INTEGER,
        spk_public    BLOB,
        spk_signature BLOB,
        push_platform TEXT,
        push_token    TEXT
    );
    CREATE INDEX devices_by_user ON devices (user_id, id);
    CREATE TABLE tokens (
        hash       BLOB    PRIMARY KEY,
        user_id    INTEGER NOT NULL,
        device_id  INTEGER NOT NULL,
        created_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX tokens_by_device ON tokens (device_id);
    CREATE TABLE one_time_prekeys (
        device_id INTEGER NOT NULL,
        key_id    INTEGER NOT NULL,
        public    BLOB    NOT NULL,
        PRIMARY KEY (device_id, key_id)
    ) WITHOUT ROWID;
    -- kind: 0 direct, 1 group. A direct conversation records its pair, low user ID first.
    CREATE TABLE conversations (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        kind        INTEGER NOT NULL,
        created_at  INTEGER NOT NULL,
        -- No longer written: a message's ID is its conversation's MAX(messages.id) + 1.
        last_id     INTEGER NOT NULL DEFAULT 0,
        direct_low  INTEGER,
        direct_high INTEGER
    );
    CREATE UNIQUE INDEX direct_pairs ON conversations (direct_low, direct_high)
        WHERE direct_low IS NOT NULL;
    CREATE TABLE members (
        conversation_id INTEGER NOT NULL,
        user_id         INTEGER NOT NULL,
        PRIMARY KEY (conversation_id, user_id)
    ) WITHOUT ROWID;
    CREATE INDEX members_by_user ON members (user_id, conversation_id);
    -- seq is the row's internal key, which inbox entries point at (one B-tree probe per
    -- entry on catch-up); (conversation_id, id) is the message's public identity.
    CREATE TABLE messages (
        seq             INTEGER PRIMARY KEY,
        conversation_id INTEGER NOT NULL,
        id              INTEGER NOT NULL,
        sender_user     INTEGER NOT NULL,
        sender_device   INTEGER NOT NULL,
        client_key      BLOB    NOT NULL,
        sent_at         INTEGER NOT NULL,
        body            BLOB    NOT NULL
    );
    CREATE UNIQUE INDEX messages_by_id ON messages (conversation_id, id);
    CREATE UNIQUE INDEX messages_by_client_key ON messages (sender_device, client_key);
    CREATE TABLE inbox (
        device_id   INTEGER NOT NULL,
        pos         INTEGER NOT NULL,
        message_seq INTEGER NOT NULL,
        header      BLOB    NOT NULL,
        PRIMARY KEY (device_id, pos)
    ) WITHOUT ROWID;
    -- kind: 0 delivered, 1 read.
    CREATE TABLE receipts (
        conversation_id INTEGER NOT NULL,
        user_id         INTEGER NOT NULL,
        kind            INTEGER NOT NULL,
        up_to           INTEGER NOT NULL,
        PRIMARY KEY (conversation_id, user_id, kind)
    ) WITHOUT ROWID;
    CREATE TABLE attachments (
        id              BLOB    PRIMARY KEY,
        conversation_id INTEGER NOT NULL,
        uploader_user   INTEGER NOT NULL,
        uploader_device INTEGER NOT NULL,
        size            INTEGER NOT NULL,
        created_at      INTEGER NOT NULL
    ) WITHOUT ROWID;
    ",
    // Version 2: profiles, the display-name directory, blocks (R-ACC-3, R-ACC-4).
    "
    -- search_key is the folded display name (chat_core::SearchKey). The default BINARY
    -- collation compares UTF-8 bytes, i.e. code points, so a prefix is the key range
    -- [prefix, upper bound) and one scan of this index serves a page, however many users.
    CREATE TABLE profiles (
        user_id      INTEGER PRIMARY KEY,
        display_name TEXT    NOT NULL,
        search_key   TEXT    NOT NULL,
        status       TEXT,
        avatar       BLOB,
        updated_at   INTEGER NOT NULL
    );
    CREATE INDEX profiles_by_search_key ON profiles (search_key, user_id);
    CREATE TABLE blocks (
        blocker    INTEGER NOT NULL,
        blocked    INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (blocker, blocked)
    ) WITHOUT ROWID;
    CREATE INDEX blocks_by_blocked ON blocks (blocked, blocker);
    -- The blocker a one-to-one message was withheld from (no inbox entry was written).
    ALTER TABLE messages ADD COLUMN withheld_from INTEGER;
    ",
    // Version 3: inbox retention (R-SYNC-2).
    "
    -- When the entry's message was stored (its sent_at), copied onto the entry so trimming
    -- finds old entries through inbox_by_time instead of joining every entry to messages.
    -- Existing entries take their message's time (entries whose message is missing, which
    -- no reader can serve, take 0 and go first).
    ALTER TABLE inbox ADD COLUMN sent_at INTEGER NOT NULL DEFAULT 0;
    UPDATE inbox SET sent_at = coalesce(
        (SELECT m.sent_at FROM messages m WHERE m.seq = inbox.message_seq), 0);
    -- The index carries the primary key (device_id, pos), so a trim batch is one range scan.
    CREATE INDEX inbox_by_time ON inbox (sent_at);
    -- The highest position trimming deleted. inbox_head stays the highest ever assigned.
    ALTER TABLE devices ADD COLUMN inbox_floor INTEGER NOT NULL DEFAULT 0;
    ",
    // Version 4: group roles and settings (issue 17). Role 0 member, 1 admin; `joined`
    // orders "the oldest member" (promoted when the last admin leaves); permissions 0
    // admins, 1 everyone; `admitted` is the group's next `joined` number. Groups from before
    // roles never recorded their creator, so every existing member becomes an admin: no one
    // loses what they could do before (any member could add and remove).
    "
    ALTER TABLE members ADD COLUMN role INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE members ADD COLUMN joined INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE conversations ADD COLUMN group_name TEXT NOT NULL DEFAULT 'Group';
    ALTER TABLE conversations ADD COLUMN add_members INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE conversations ADD COLUMN edit_name INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE conversations ADD COLUMN admitted INTEGER NOT NULL DEFAULT 1;
    ",
    // Version 5: signed device lists and linking (issue 16). Existing devices stay linked
    // (their users have no list yet); a device a user with a list logs in with starts
    // unlinked and receives nothing until a linked device adds it.
    "
    ALTER TABLE devices ADD COLUMN linked INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE devices ADD COLUMN link_payload BLOB;
    CREATE TABLE device_lists (
        user_id INTEGER PRIMARY KEY REFERENCES users (id),
        version INTEGER NOT NULL,
        list    BLOB NOT NULL
    );
    ",
    // Version 6: a group's chain of signed changes (issue 17). `group_head` is the chain's
    // head, NULL until the group's first signed change: existing groups have no chain and
    // keep changing by unsigned changes until a signed creation starts one. The changes are
    // opaque bytes, numbered from 1 per group. A rowid table, not WITHOUT ROWID: a change
    // (an add names up to a hundred users, plus a signature) is larger than such tables suit.
    "
    ALTER TABLE conversations ADD COLUMN group_head BLOB;
    CREATE TABLE group_changes (
        conversation_id INTEGER NOT NULL,
        seq             INTEGER NOT NULL,
        change          BLOB    NOT NULL,
        PRIMARY KEY (conversation_id, seq)
    );
    ",
];

/// The schema version this build writes.
pub(crate) const LATEST: u32 = MIGRATIONS.len() as u32;

/// Brings the database up to [`LATEST`], or refuses one that is newer. Each step takes the
/// write lock first, so processes opening a new database at once apply each step once.
pub(crate) fn migrate(conn: &mut Connection) -> StoreResult<()> {
    loop {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(StoreError::backend)?;
        let found: u32 = tx
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(StoreError::backend)?;
        if found > LATEST {
            return Err(StoreError::SchemaTooNew {
                found,
                supported: LATEST,
            });
        }
        let Some(sql) = MIGRATIONS.get(found as usize) else {
            return Ok(());
        };
        tx.execute_batch(sql).map_err(StoreError::backend)?;
        tx.pragma_update(None, "user_version", found + 1)
            .map_err(StoreError::backend)?;
        tx.commit().map_err(StoreError::backend)?;
        tracing::info!(version = found + 1, "applied store migration");
    }
}
