//! The PostgreSQL schema and its versioned migrations.
//!
//! Messages, members and receipts are keyed by conversation first; inbox entries, one-time
//! prekeys and client keys by device first: the shard keys (see docs/STORAGE.md). The
//! version lives in `schema_version`; migrations run under a transaction-scoped advisory
//! lock, so several nodes starting at once apply each step exactly once.

use chat_core::{StoreError, StoreResult};
use tokio_postgres::{Client, Transaction};

/// The migrations, oldest first; migration `i` takes the schema to version `i + 1`.
const MIGRATIONS: &[&str] = &[
    // Version 1.
    "
    CREATE TABLE users (
        id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        username      text   NOT NULL UNIQUE,
        password_hash text   NOT NULL,
        created_at    bigint NOT NULL,
        last_active   bigint
    );
    CREATE TABLE devices (
        id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        user_id       bigint NOT NULL,
        name          text   NOT NULL,
        created_at    bigint NOT NULL,
        inbox_head    bigint NOT NULL DEFAULT 0,
        cursor        bigint NOT NULL DEFAULT 0,
        identity      bytea,
        spk_id        bigint,
        spk_public    bytea,
        spk_signature bytea,
        push_platform text,
        push_token    text
    );
    CREATE INDEX devices_by_user ON devices (user_id, id);
    CREATE TABLE tokens (
        hash       bytea  PRIMARY KEY,
        user_id    bigint NOT NULL,
        device_id  bigint NOT NULL,
        created_at bigint NOT NULL
    );
    CREATE INDEX tokens_by_device ON tokens (device_id);
    CREATE TABLE one_time_prekeys (
        device_id bigint NOT NULL,
        key_id    bigint NOT NULL,
        public    bytea  NOT NULL,
        PRIMARY KEY (device_id, key_id)
    );
    -- kind: 0 direct, 1 group.
    CREATE TABLE conversations (
        id         bigint   GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        kind       smallint NOT NULL,
        created_at bigint   NOT NULL,
        last_id    bigint   NOT NULL DEFAULT 0
    );
    CREATE TABLE direct_pairs (
        low             bigint NOT NULL,
        high            bigint NOT NULL,
        conversation_id bigint NOT NULL,
        PRIMARY KEY (low, high)
    );
    CREATE TABLE members (
        conversation_id bigint NOT NULL,
        user_id         bigint NOT NULL,
        PRIMARY KEY (conversation_id, user_id)
    );
    CREATE INDEX members_by_user ON members (user_id, conversation_id);
    CREATE TABLE messages (
        conversation_id bigint NOT NULL,
        id              bigint NOT NULL,
        sender_user     bigint NOT NULL,
        sender_device   bigint NOT NULL,
        client_key      bytea  NOT NULL,
        sent_at         bigint NOT NULL,
        body            bytea  NOT NULL,
        PRIMARY KEY (conversation_id, id)
    );
    -- Idempotency (R-MSG-2), keyed by the sending device so it shards with devices.
    CREATE TABLE client_keys (
        sender_device   bigint NOT NULL,
        client_key      bytea  NOT NULL,
        conversation_id bigint NOT NULL,
        message_id      bigint NOT NULL,
        sent_at         bigint NOT NULL,
        PRIMARY KEY (sender_device, client_key)
    );
    CREATE TABLE inbox (
        device_id       bigint NOT NULL,
        pos             bigint NOT NULL,
        conversation_id bigint NOT NULL,
        message_id      bigint NOT NULL,
        header          bytea  NOT NULL,
        PRIMARY KEY (device_id, pos)
    );
    -- kind: 0 delivered, 1 read.
    CREATE TABLE receipts (
        conversation_id bigint   NOT NULL,
        user_id         bigint   NOT NULL,
        kind            smallint NOT NULL,
        up_to           bigint   NOT NULL,
        PRIMARY KEY (conversation_id, user_id, kind)
    );
    CREATE TABLE attachments (
        id              bytea  PRIMARY KEY,
        conversation_id bigint NOT NULL,
        uploader_user   bigint NOT NULL,
        uploader_device bigint NOT NULL,
        size            bigint NOT NULL,
        created_at      bigint NOT NULL
    );
    ",
    // Version 2: profiles, the display-name directory, blocks (R-ACC-3, R-ACC-4). Additive
    // only: nodes still on version 1 keep working against it.
    "
    -- search_key is the folded display name (chat_core::SearchKey), in byte (= code point)
    -- order, so a prefix is the range [prefix, upper bound) of this b-tree: one index range
    -- scan per page, however many users.
    CREATE TABLE profiles (
        user_id      bigint PRIMARY KEY,
        display_name text   NOT NULL,
        search_key   text   COLLATE \"C\" NOT NULL,
        status       text,
        avatar       bytea,
        updated_at   bigint NOT NULL
    );
    CREATE INDEX profiles_by_search_key ON profiles (search_key, user_id);
    CREATE TABLE blocks (
        blocker    bigint NOT NULL,
        blocked    bigint NOT NULL,
        created_at bigint NOT NULL,
        PRIMARY KEY (blocker, blocked)
    );
    CREATE INDEX blocks_by_blocked ON blocks (blocked, blocker);
    -- The blocker a one-to-one message was withheld from (no inbox entry was written).
    -- Nullable without a default: a catalog-only change, no table rewrite.
    ALTER TABLE messages ADD COLUMN withheld_from bigint;
    ",
    // Version 3: inbox retention (R-SYNC-2). Additive: nodes still on version 2 keep
    // working against it (their inbox inserts take the column default below).
    "
    -- The highest position trimming deleted; inbox_head stays the highest ever assigned.
    -- A constant default: a catalog-only change, no table rewrite.
    ALTER TABLE devices ADD COLUMN inbox_floor bigint NOT NULL DEFAULT 0;
    -- When the entry's message was stored (its sent_at), copied onto the entry so trimming
    -- finds old entries through inbox_by_time instead of joining every entry to messages.
    -- Existing entries take their message's time, in one pass over the inbox (entries
    -- whose message is missing, which no reader can serve, take 0 and go first).
    ALTER TABLE inbox ADD COLUMN sent_at bigint;
    UPDATE inbox i SET sent_at = coalesce((SELECT m.sent_at FROM messages m
        WHERE m.conversation_id = i.conversation_id AND m.id = i.message_id), 0);
    -- For inserts by version 2 nodes during a rolling upgrade: the time of the insert.
    ALTER TABLE inbox ALTER COLUMN sent_at
        SET DEFAULT (extract(epoch FROM now()) * 1000)::bigint;
    ALTER TABLE inbox ALTER COLUMN sent_at SET NOT NULL;
    -- With the primary key columns, so a trim batch is one index-only range scan.
    CREATE INDEX inbox_by_time ON inbox (sent_at, device_id, pos);
    ",
    // Version 4: group roles and settings (issue 17). Role 0 member, 1 admin; `joined`
    // orders "the oldest member" (promoted when the last admin leaves); permissions 0
    // admins, 1 everyone; `admitted` is the group's next `joined` number. Groups from before
    // roles never recorded their creator, so every existing member becomes an admin: no one
    // loses what they could do before (any member could add and remove). Constant
    // defaults: catalog-only changes. The role default stays admin, so what a node still
    // on version 3 writes during a rolling upgrade (a group it creates, members it adds)
    // reads like data from before roles: every such member an admin, never a group
    // without one.
    "
    ALTER TABLE members ADD COLUMN role smallint NOT NULL DEFAULT 1;
    ALTER TABLE members ADD COLUMN joined bigint NOT NULL DEFAULT 0;
    ALTER TABLE conversations ADD COLUMN group_name text NOT NULL DEFAULT 'Group';
    ALTER TABLE conversations ADD COLUMN add_members smallint NOT NULL DEFAULT 0;
    ALTER TABLE conversations ADD COLUMN edit_name smallint NOT NULL DEFAULT 1;
    ALTER TABLE conversations ADD COLUMN admitted bigint NOT NULL DEFAULT 1;
    ",
    // Version 5: signed device lists and linking (issue 16). Existing devices stay linked
    // (their users have no list yet), and so do devices a version 4 node registers during a
    // rolling upgrade; a device a user with a list logs in with starts unlinked and
    // receives nothing until a linked device adds it. Constant defaults: catalog-only.
    "
    ALTER TABLE devices ADD COLUMN linked boolean NOT NULL DEFAULT true;
    ALTER TABLE devices ADD COLUMN link_payload bytea;
    CREATE TABLE device_lists (
        user_id bigint PRIMARY KEY REFERENCES users (id),
        version bigint NOT NULL,
        list    bytea NOT NULL
    );
    ",
    // Version 6: a group's chain of signed changes (issue 17). `group_head` is the chain's
    // head, NULL until the group's first signed change: existing groups have no chain and
    // keep changing by unsigned changes until a signed creation starts one. The changes are
    // opaque bytes, numbered from 1 per group, keyed by conversation like `messages` (the
    // shard key). Nullable without a default and a new table: catalog only, and nodes still
    // on version 5 keep working (they know nothing of chains: see docs/STORAGE.md).
    "
    ALTER TABLE conversations ADD COLUMN group_head bytea;
    CREATE TABLE group_changes (
        conversation_id bigint NOT NULL,
        seq             bigint NOT NULL,
        change          bytea  NOT NULL,
        PRIMARY KEY (conversation_id, seq)
    );
    ",
];

/// The schema version this build writes.
pub(crate) const LATEST: u32 = MIGRATIONS.len() as u32;

/// Brings the schema (the first one on the search path) up to [`LATEST`], or refuses one
/// that is newer.
pub(crate) async fn migrate(client: &mut Client) -> StoreResult<()> {
    let tx = client.transaction().await.map_err(StoreError::backend)?;
    match apply(&tx).await {
        Ok(()) => tx.commit().await.map_err(StoreError::backend),
        Err(e) => {
            // Roll back now rather than on drop: the advisory lock goes with it.
            let _ = tx.rollback().await;
            Err(e)
        }
    }
}

async fn apply(tx: &Transaction<'_>) -> StoreResult<()> {
    tx.batch_execute(
        "SELECT pg_advisory_xact_lock(hashtext('chat-storage migrate ' || current_schema()));
         CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL);",
    )
    .await
    .map_err(StoreError::backend)?;
    let row = tx
        .query_opt("SELECT max(version) FROM schema_version", &[])
        .await
        .map_err(StoreError::backend)?;
    let found: Option<i32> = match row {
        Some(r) => r.try_get(0).map_err(StoreError::backend)?,
        None => None,
    };
    let found = found.unwrap_or(0);
    let found = u32::try_from(found).unwrap_or(0);
    if found > LATEST {
        return Err(StoreError::SchemaTooNew {
            found,
            supported: LATEST,
        });
    }
    for (version, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tx.batch_execute(sql).await.map_err(StoreError::backend)?;
        tracing::info!(version = version + 1, "applied store migration");
    }
    if found < LATEST {
        tx.execute("DELETE FROM schema_version", &[])
            .await
            .map_err(StoreError::backend)?;
        let latest = i32::try_from(LATEST).unwrap_or(i32::MAX);
        tx.execute(
            "INSERT INTO schema_version (version) VALUES ($1)",
            &[&latest],
        )
        .await
        .map_err(StoreError::backend)?;
    }
    Ok(())
}
