//! The SQL of every operation. Each statement is a constant listed in [`STATEMENTS`] and
//! prepared once per connection.
//!
//! Locking, in one global order so that concurrent transactions cannot deadlock on each
//! other's rows (PostgreSQL would detect it, and the store retries, but it costs): a user's
//! row, then conversation rows in ID order, then device rows in ID order.
//! - An append batch ([`append_batch`]) locks its conversation rows in ID order, which
//!   serialises appends per conversation (IDs are allocated under the lock), then, in its
//!   last statement, the recipients' device rows in ID order to take their inbox positions.
//! - Membership changes lock the conversation row, so they serialise with appends and the
//!   member count is checked in the same transaction as the add.
//! - Adding or removing a device locks the user's row and then the rows of the user's
//!   conversations, so no append can commit with a device list that the change made stale.
//!   Making users members (a new direct conversation or group, an add) share-locks their
//!   rows first, so it orders strictly before or after a device change of those users.
//! - Trimming inboxes locks the affected device rows in ID order, then deletes their old
//!   entries; removing a device locks its row before deleting its entries, the same way.

use bytes::Bytes;
use chat_core::limits::MAX_DEVICES_PER_USER;
use chat_core::{
    Appended, AttachmentId, AttachmentMeta, ChainLink, ClientKey, Conversation, ConversationId,
    ConversationKind, Credentials, Device, DeviceAddress, DeviceId, DeviceKeys, DeviceListRecord,
    Direction, Envelope, GroupOp, GroupSettings, GroupState, InboxEntry, InboxPos, MemberInfo,
    MessageId, NewMessage, OneTimePrekey, PrekeyBundle, PushToken, ReceiptKind, ReceiptPosition,
    SignedPrekey, StoreError, StoreResult, Timestamp, TokenHash, User, UserId, Username,
};
use std::collections::BTreeMap;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{FromSql, ToSql};
use tokio_postgres::{Client, Row, Statement, Transaction};

use super::pool::Statements;
use crate::common::{
    GroupDiff, array_from_sql, check_coverage, check_distinct_recipients, failure, from_sql,
    group_diff, group_from_parts, limit_sql, permission_from_sql, permission_sql, plan_group,
    plan_group_change, role_from_sql, role_sql, to_sql, u32_from_sql,
};

/// Tells the retry loop to run the transaction again: a concurrent transaction committed a
/// row this one needs to see (a direct pair, a client key).
#[derive(Debug, thiserror::Error)]
#[error("concurrent insert; retrying")]
pub(crate) struct Retry;

/// Whether a failed transaction should simply run again.
pub(crate) fn should_retry(err: &StoreError) -> bool {
    let StoreError::Backend(inner) = err else {
        return false;
    };
    if inner.is::<Retry>() {
        return true;
    }
    inner
        .downcast_ref::<tokio_postgres::Error>()
        .and_then(|e| e.code())
        .is_some_and(|code| {
            *code == SqlState::T_R_DEADLOCK_DETECTED || *code == SqlState::T_R_SERIALIZATION_FAILURE
        })
}

fn pg(e: tokio_postgres::Error) -> StoreError {
    StoreError::backend(e)
}

fn conflict_or_pg(e: tokio_postgres::Error) -> StoreError {
    if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
        StoreError::Conflict
    } else {
        pg(e)
    }
}

type Params<'p> = &'p [&'p (dyn ToSql + Sync)];

enum Exec<'a> {
    Client(&'a Client),
    Tx(&'a Transaction<'a>),
}

/// A connection or transaction with its prepared statements.
pub(crate) struct Db<'a> {
    exec: Exec<'a>,
    statements: &'a Statements,
}

impl<'a> Db<'a> {
    pub(crate) fn client(client: &'a Client, statements: &'a Statements) -> Self {
        Self {
            exec: Exec::Client(client),
            statements,
        }
    }

    pub(crate) fn tx(tx: &'a Transaction<'a>, statements: &'a Statements) -> Self {
        Self {
            exec: Exec::Tx(tx),
            statements,
        }
    }

    fn statement(&self, sql: &'static str) -> StoreResult<&Statement> {
        self.statements
            .get(sql)
            .ok_or_else(|| failure("statement was not prepared"))
    }

    async fn query(&self, sql: &'static str, params: Params<'_>) -> StoreResult<Vec<Row>> {
        let st = self.statement(sql)?;
        match self.exec {
            Exec::Client(c) => c.query(st, params).await,
            Exec::Tx(t) => t.query(st, params).await,
        }
        .map_err(pg)
    }

    async fn opt(&self, sql: &'static str, params: Params<'_>) -> StoreResult<Option<Row>> {
        let st = self.statement(sql)?;
        match self.exec {
            Exec::Client(c) => c.query_opt(st, params).await,
            Exec::Tx(t) => t.query_opt(st, params).await,
        }
        .map_err(pg)
    }

    async fn exec_raw(
        &self,
        sql: &'static str,
        params: Params<'_>,
    ) -> Result<u64, tokio_postgres::Error> {
        let st = self.statements.get(sql);
        let Some(st) = st else { return Ok(0) };
        match self.exec {
            Exec::Client(c) => c.execute(st, params).await,
            Exec::Tx(t) => t.execute(st, params).await,
        }
    }

    async fn exec(&self, sql: &'static str, params: Params<'_>) -> StoreResult<u64> {
        self.statement(sql)?;
        self.exec_raw(sql, params).await.map_err(pg)
    }

    /// Like [`Self::exec`], mapping a uniqueness violation to [`StoreError::Conflict`].
    async fn exec_unique(&self, sql: &'static str, params: Params<'_>) -> StoreResult<u64> {
        self.statement(sql)?;
        self.exec_raw(sql, params).await.map_err(conflict_or_pg)
    }
}

fn get<'r, T: FromSql<'r>>(row: &'r Row, index: usize) -> StoreResult<T> {
    row.try_get(index).map_err(pg)
}

fn ts(value: i64) -> Timestamp {
    Timestamp::from_millis(u64::try_from(value).unwrap_or(0))
}

fn ts_sql(at: Timestamp) -> i64 {
    to_sql(at.as_millis())
}

fn kind_sql(kind: ConversationKind) -> i16 {
    match kind {
        ConversationKind::Direct => 0,
        ConversationKind::Group => 1,
    }
}

fn kind_from_sql(value: i16) -> StoreResult<ConversationKind> {
    match value {
        0 => Ok(ConversationKind::Direct),
        1 => Ok(ConversationKind::Group),
        other => Err(failure(format!(
            "stored conversation kind {other} is unknown"
        ))),
    }
}

fn ids_sql<T: Copy + Into<u64>>(ids: &[T]) -> Vec<i64> {
    ids.iter().map(|&id| to_sql(id.into())).collect()
}

mod append;
mod conversations;
mod people;

pub(crate) use append::{Outcome, append_batch, sender_refusal};

pub(crate) use conversations::*;
pub(crate) use people::*;

// ---- statements -----------------------------------------------------------------------

const CREATE_USER: &str = "INSERT INTO users (username, password_hash, created_at)
    VALUES ($1, $2, $3) RETURNING id";
const CREDENTIALS: &str = "SELECT id, password_hash, created_at FROM users WHERE username = $1";
const USER: &str = "SELECT username, created_at FROM users WHERE id = $1";
const LOCK_USER: &str = "SELECT 1 FROM users WHERE id = $1 FOR UPDATE";
/// Share-locks the users' rows (in ID order) and counts them.
const LOCK_USERS_SHARE: &str = "SELECT count(*) FROM (
        SELECT id FROM users WHERE id = ANY($1) ORDER BY id FOR SHARE) AS u";
const COUNT_DEVICES: &str = "SELECT count(*) FROM devices WHERE user_id = $1";
const INSERT_DEVICE: &str = "INSERT INTO devices (user_id, name, created_at, linked)
    VALUES ($1, $2, $3, NOT EXISTS (SELECT 1 FROM device_lists WHERE user_id = $1))
    RETURNING id, linked";
const INSERT_TOKEN: &str = "INSERT INTO tokens (hash, user_id, device_id, created_at)
    VALUES ($1, $2, $3, $4)";
const DEVICE_EXISTS: &str = "SELECT 1 FROM devices WHERE id = $1 AND user_id = $2";
const LOCK_DEVICE: &str = "SELECT 1 FROM devices WHERE id = $1 AND user_id = $2 FOR UPDATE";
const LOCK_DEVICE_SHARE: &str = "SELECT 1 FROM devices WHERE id = $1 AND user_id = $2 FOR SHARE";
const DEVICES: &str =
    "SELECT id, name, created_at, linked FROM devices WHERE user_id = $1 ORDER BY id";
const LOCK_CONVERSATIONS_OF: &str = "SELECT id FROM conversations
    WHERE id IN (SELECT conversation_id FROM members WHERE user_id = $1) ORDER BY id FOR UPDATE";
const DELETE_TOKENS_OF: &str = "DELETE FROM tokens WHERE device_id = $1";
const DELETE_PREKEYS_OF: &str = "DELETE FROM one_time_prekeys WHERE device_id = $1";
const DELETE_INBOX_OF: &str = "DELETE FROM inbox WHERE device_id = $1";
const DELETE_DEVICE: &str = "DELETE FROM devices WHERE id = $1";
const AUTHENTICATE: &str = "SELECT user_id, device_id FROM tokens WHERE hash = $1";
const REVOKE: &str = "DELETE FROM tokens WHERE hash = $1";
const SET_LAST_ACTIVE: &str = "UPDATE users
    SET last_active = GREATEST(coalesce(last_active, $2), $2) WHERE id = $1";
const LAST_ACTIVE: &str = "SELECT last_active FROM users WHERE id = $1";
/// A write that changes nothing visible: the version row rewritten with its own value.
const PROBE_WRITE: &str = "UPDATE schema_version SET version = version";

/// One-time prekeys belong to the identity that published them: a new identity starts with
/// an empty pool.
const DROP_STALE_PREKEYS: &str = "DELETE FROM one_time_prekeys WHERE device_id = $1 AND EXISTS
    (SELECT 1 FROM devices WHERE id = $1 AND identity IS DISTINCT FROM $2)";
const SET_KEYS: &str = "UPDATE devices
    SET identity = $3, spk_id = $4, spk_public = $5, spk_signature = $6
    WHERE id = $1 AND user_id = $2";
const ADD_PREKEYS: &str = "INSERT INTO one_time_prekeys (device_id, key_id, public)
    SELECT $1, k, p FROM unnest($2::bigint[], $3::bytea[]) AS t (k, p)
    ON CONFLICT DO NOTHING";
const DEVICE_LIST: &str = "SELECT version, list FROM device_lists WHERE user_id = $1";
const UPSERT_DEVICE_LIST: &str = "INSERT INTO device_lists (user_id, version, list)
    VALUES ($1, $2, $3)
    ON CONFLICT (user_id) DO UPDATE SET version = excluded.version, list = excluded.list";
const SET_LINKED: &str = "UPDATE devices SET linked = (id = ANY($2)) WHERE user_id = $1";
const SET_LINK_PAYLOAD: &str =
    "UPDATE devices SET link_payload = $3 WHERE id = $1 AND user_id = $2";
const LINK_PAYLOAD: &str = "SELECT link_payload FROM devices WHERE id = $1 AND user_id = $2";
const KEYED_DEVICES: &str = "SELECT id, identity, spk_id, spk_public, spk_signature
    FROM devices WHERE user_id = $1 AND identity IS NOT NULL ORDER BY id";
const CLAIM_PREKEY: &str = "DELETE FROM one_time_prekeys
    WHERE (device_id, key_id) = (
        SELECT device_id, key_id FROM one_time_prekeys WHERE device_id = $1
        ORDER BY key_id LIMIT 1 FOR UPDATE SKIP LOCKED)
    RETURNING key_id, public";
const PREKEY_COUNT: &str = "SELECT count(*) FROM one_time_prekeys k
    JOIN devices d ON d.id = k.device_id WHERE k.device_id = $1 AND d.user_id = $2";

const FIND_DIRECT: &str = "SELECT c.id, c.kind, c.created_at, c.last_id
    FROM direct_pairs p JOIN conversations c ON c.id = p.conversation_id
    WHERE p.low = $1 AND p.high = $2";
const INSERT_CONVERSATION: &str =
    "INSERT INTO conversations (kind, created_at) VALUES ($1, $2) RETURNING id";
const INSERT_DIRECT_PAIR: &str = "INSERT INTO direct_pairs (low, high, conversation_id)
    VALUES ($1, $2, $3) ON CONFLICT DO NOTHING";
const INSERT_MEMBERS: &str = "INSERT INTO members (conversation_id, user_id)
    SELECT $1, u FROM unnest($2::bigint[]) AS u ON CONFLICT DO NOTHING";
const LOCK_CONVERSATION: &str = "SELECT kind FROM conversations WHERE id = $1 FOR UPDATE";
const UPSERT_MEMBER: &str = "INSERT INTO members (conversation_id, user_id, role, joined)
    VALUES ($1, $2, $3, $4) ON CONFLICT (conversation_id, user_id)
    DO UPDATE SET role = excluded.role, joined = excluded.joined";
const GROUP: &str = "SELECT kind, group_name, add_members, edit_name, admitted, group_head
    FROM conversations WHERE id = $1";
const GROUP_MEMBERS: &str = "SELECT user_id, role, joined FROM members WHERE conversation_id = $1";
const UPDATE_GROUP: &str = "UPDATE conversations SET group_name = $2, add_members = $3,
    edit_name = $4, admitted = $5 WHERE id = $1";
const REMOVE_MEMBER: &str = "DELETE FROM members WHERE conversation_id = $1 AND user_id = $2";
/// Appends change $2 to group $1's chain with the next sequence number (safe under the
/// group's row lock) and makes $3 its head, in one round trip.
const APPEND_GROUP_CHANGE: &str = "WITH appended AS (
        INSERT INTO group_changes (conversation_id, seq, change)
        SELECT $1, coalesce(max(seq), 0) + 1, $2 FROM group_changes WHERE conversation_id = $1)
    UPDATE conversations SET group_head = $3 WHERE id = $1";
const GROUP_CHANGES: &str = "SELECT seq, change FROM group_changes
    WHERE conversation_id = $1 AND seq > $2 ORDER BY seq LIMIT $3";
const CONVERSATION: &str = "SELECT id, kind, created_at, last_id FROM conversations WHERE id = $1";
const MEMBERS: &str = "SELECT user_id FROM members WHERE conversation_id = $1 ORDER BY user_id";
const IS_MEMBER: &str = "SELECT 1 FROM members WHERE conversation_id = $1 AND user_id = $2";
const CONVERSATIONS_OF: &str = "SELECT c.id, c.kind, c.created_at, c.last_id
    FROM members m JOIN conversations c ON c.id = m.conversation_id
    WHERE m.user_id = $1 ORDER BY c.id";

const INBOX: &str = "SELECT i.pos, i.header, m.conversation_id, m.id, m.sender_user,
        m.sender_device, m.client_key, m.sent_at, m.body
    FROM inbox i JOIN messages m ON m.conversation_id = i.conversation_id AND m.id = i.message_id
    WHERE i.device_id = $1 AND i.pos > $2 ORDER BY i.pos LIMIT $3";
const DEVICE_POSITIONS: &str =
    "SELECT inbox_head, cursor, inbox_floor FROM devices WHERE id = $1 AND user_id = $2";
/// The oldest entries stored before $1, at most $2: a range of `inbox_by_time`.
const TRIM_CANDIDATES: &str =
    "SELECT device_id, pos FROM inbox WHERE sent_at < $1 ORDER BY sent_at LIMIT $2";
/// Locks devices in ID order (the global lock order; appends take them the same way).
const LOCK_DEVICES: &str = "SELECT id FROM devices WHERE id = ANY($1) ORDER BY id FOR UPDATE";
/// Deletes the candidates that are still there (by primary key: an entry's time never
/// changes, so a candidate stays old) and raises each affected device's floor to the
/// highest position deleted (never lowers it). Returns the count.
const TRIM: &str = "WITH gone AS (
        DELETE FROM inbox i USING unnest($1::bigint[], $2::bigint[]) AS t (d, p)
        WHERE i.device_id = t.d AND i.pos = t.p
        RETURNING i.device_id, i.pos),
    tops AS (SELECT device_id, max(pos) AS top FROM gone GROUP BY device_id),
    raised AS (
        UPDATE devices d SET inbox_floor = GREATEST(d.inbox_floor, tops.top) FROM tops
        WHERE d.id = tops.device_id RETURNING 1)
    SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM raised)";
const ACK: &str = "UPDATE devices SET cursor = GREATEST(cursor, $3)
    WHERE id = $1 AND user_id = $2 RETURNING cursor";
/// Raises the cursors of many devices ($1 device IDs, $2 their users, $3 positions; a
/// device listed twice takes its highest), their rows locked in ID order (the global lock
/// order) first. Devices that do not exist are skipped.
const ACK_ALL: &str = "WITH t AS (
        SELECT id, u, max(c) AS c FROM unnest($1::bigint[], $2::bigint[], $3::bigint[])
            AS t (id, u, c)
        GROUP BY id, u),
    locked AS (
        SELECT d.id, d.user_id FROM devices d JOIN t ON d.id = t.id AND d.user_id = t.u
        ORDER BY d.id FOR UPDATE OF d)
    UPDATE devices d SET cursor = GREATEST(d.cursor, t.c)
    FROM locked JOIN t ON t.id = locked.id AND t.u = locked.user_id
    WHERE d.id = locked.id";
const HISTORY_BEFORE: &str = "SELECT conversation_id, id, sender_user, sender_device,
        client_key, sent_at, body
    FROM messages WHERE conversation_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3";
const HISTORY_AFTER: &str = "SELECT conversation_id, id, sender_user, sender_device,
        client_key, sent_at, body
    FROM messages WHERE conversation_id = $1 AND id > $2 ORDER BY id ASC LIMIT $3";
const MESSAGE: &str = "SELECT conversation_id, id, sender_user, sender_device,
        client_key, sent_at, body
    FROM messages WHERE conversation_id = $1 AND id = $2";

const SET_RECEIPT: &str = "INSERT INTO receipts (conversation_id, user_id, kind, up_to)
    VALUES ($1, $2, $3, $4)
    ON CONFLICT (conversation_id, user_id, kind)
    DO UPDATE SET up_to = GREATEST(receipts.up_to, EXCLUDED.up_to)
    RETURNING up_to";
const RECEIPTS: &str = "SELECT r.user_id, r.kind, r.up_to FROM receipts r
    JOIN members m ON m.conversation_id = r.conversation_id AND m.user_id = r.user_id
    WHERE r.conversation_id = $1 ORDER BY r.user_id, r.kind";

const INSERT_ATTACHMENT: &str = "INSERT INTO attachments
        (id, conversation_id, uploader_user, uploader_device, size, created_at)
    VALUES ($1, $2, $3, $4, $5, $6)";
const ATTACHMENT: &str = "SELECT conversation_id, uploader_user, uploader_device, size,
        created_at
    FROM attachments WHERE id = $1";
const SET_PUSH: &str = "UPDATE devices SET push_platform = $3, push_token = $4
    WHERE id = $1 AND user_id = $2";
const PUSH: &str = "SELECT push_platform, push_token FROM devices WHERE id = $1 AND user_id = $2";

/// Every statement, prepared on each new connection.
pub(crate) const STATEMENTS: &[&str] = &[
    CREATE_USER,
    CREDENTIALS,
    USER,
    LOCK_USER,
    LOCK_USERS_SHARE,
    COUNT_DEVICES,
    INSERT_DEVICE,
    INSERT_TOKEN,
    DEVICE_EXISTS,
    LOCK_DEVICE,
    LOCK_DEVICE_SHARE,
    DEVICES,
    LOCK_CONVERSATIONS_OF,
    DELETE_TOKENS_OF,
    DELETE_PREKEYS_OF,
    DELETE_INBOX_OF,
    DELETE_DEVICE,
    AUTHENTICATE,
    REVOKE,
    SET_LAST_ACTIVE,
    LAST_ACTIVE,
    PROBE_WRITE,
    DROP_STALE_PREKEYS,
    SET_KEYS,
    ADD_PREKEYS,
    DEVICE_LIST,
    UPSERT_DEVICE_LIST,
    SET_LINKED,
    SET_LINK_PAYLOAD,
    LINK_PAYLOAD,
    KEYED_DEVICES,
    CLAIM_PREKEY,
    PREKEY_COUNT,
    FIND_DIRECT,
    INSERT_CONVERSATION,
    INSERT_DIRECT_PAIR,
    INSERT_MEMBERS,
    LOCK_CONVERSATION,
    UPSERT_MEMBER,
    GROUP,
    GROUP_MEMBERS,
    UPDATE_GROUP,
    REMOVE_MEMBER,
    APPEND_GROUP_CHANGE,
    GROUP_CHANGES,
    CONVERSATION,
    MEMBERS,
    IS_MEMBER,
    CONVERSATIONS_OF,
    append::LOCK_CONVERSATIONS,
    append::FIND_CLIENT_KEYS,
    append::MEMBER_DEVICES,
    append::WRITE_BATCH,
    people::SET_PROFILE,
    people::PROFILE,
    people::SEARCH,
    people::SEARCH_UNBOUNDED,
    people::BLOCK,
    people::UNBLOCK,
    people::BLOCKS,
    people::IS_BLOCKED,
    people::BLOCKED_BY,
    people::WITHHELD,
    people::USER_EXISTS,
    INBOX,
    DEVICE_POSITIONS,
    TRIM_CANDIDATES,
    LOCK_DEVICES,
    TRIM,
    ACK,
    ACK_ALL,
    HISTORY_BEFORE,
    HISTORY_AFTER,
    MESSAGE,
    SET_RECEIPT,
    RECEIPTS,
    INSERT_ATTACHMENT,
    ATTACHMENT,
    SET_PUSH,
    PUSH,
];

// ---- accounts -------------------------------------------------------------------------

pub(crate) async fn create_user(
    db: &Db<'_>,
    username: &Username,
    password_hash: &str,
    now: Timestamp,
) -> StoreResult<User> {
    let st = db.statement(CREATE_USER)?;
    let params: Params<'_> = &[&username.as_str(), &password_hash, &ts_sql(now)];
    let row = match db.exec {
        Exec::Client(c) => c.query_one(st, params).await,
        Exec::Tx(t) => t.query_one(st, params).await,
    }
    .map_err(conflict_or_pg)?;
    let id = from_sql(get(&row, 0)?, "user ID")?;
    Ok(User {
        id,
        username: username.clone(),
        created_at: now,
    })
}

pub(crate) async fn credentials(
    db: &Db<'_>,
    username: &Username,
) -> StoreResult<Option<Credentials>> {
    let Some(row) = db.opt(CREDENTIALS, &[&username.as_str()]).await? else {
        return Ok(None);
    };
    let user = User {
        id: from_sql(get(&row, 0)?, "user ID")?,
        username: username.clone(),
        created_at: ts(get(&row, 2)?),
    };
    Ok(Some(Credentials {
        user,
        password_hash: get(&row, 1)?,
    }))
}

pub(crate) async fn user(db: &Db<'_>, user: UserId) -> StoreResult<Option<User>> {
    let Some(row) = db.opt(USER, &[&to_sql(user.get())]).await? else {
        return Ok(None);
    };
    let name: String = get(&row, 0)?;
    let username = Username::new(name).map_err(|e| failure(format!("stored username: {e}")))?;
    Ok(Some(User {
        id: user,
        username,
        created_at: ts(get(&row, 1)?),
    }))
}

async fn require_device(db: &Db<'_>, device: DeviceAddress) -> StoreResult<()> {
    let params: Params<'_> = &[&to_sql(device.device.get()), &to_sql(device.user.get())];
    match db.opt(DEVICE_EXISTS, params).await? {
        Some(_) => Ok(()),
        None => Err(StoreError::NotFound),
    }
}

/// Share-locks the device's row until commit: a concurrent removal waits for this
/// transaction, so nothing it adds (a token, a prekey) can outlive the device.
async fn lock_device_share(db: &Db<'_>, device: DeviceAddress) -> StoreResult<()> {
    let params: Params<'_> = &[&to_sql(device.device.get()), &to_sql(device.user.get())];
    match db.opt(LOCK_DEVICE_SHARE, params).await? {
        Some(_) => Ok(()),
        None => Err(StoreError::NotFound),
    }
}

/// Locks the user's row and then their conversations' rows: see the module docs.
async fn lock_user_and_conversations(db: &Db<'_>, user: UserId) -> StoreResult<()> {
    let id = to_sql(user.get());
    if db.opt(LOCK_USER, &[&id]).await?.is_none() {
        return Err(StoreError::NotFound);
    }
    db.query(LOCK_CONVERSATIONS_OF, &[&id]).await?;
    Ok(())
}

pub(crate) async fn add_device(
    db: &Db<'_>,
    user: UserId,
    name: &str,
    token: TokenHash,
    now: Timestamp,
) -> StoreResult<Device> {
    lock_user_and_conversations(db, user).await?;
    let count = db.opt(COUNT_DEVICES, &[&to_sql(user.get())]).await?;
    let n: i64 = count.map(|r| get(&r, 0)).transpose()?.unwrap_or(0);
    if usize::try_from(n).unwrap_or(usize::MAX) >= MAX_DEVICES_PER_USER {
        return Err(StoreError::TooManyDevices);
    }
    let row = db
        .opt(INSERT_DEVICE, &[&to_sql(user.get()), &name, &ts_sql(now)])
        .await?
        .ok_or_else(|| failure("insert returned no row"))?;
    let address = DeviceAddress {
        user,
        device: from_sql(get(&row, 0)?, "device ID")?,
    };
    insert_token(db, address, token, now).await?;
    Ok(Device {
        address,
        name: name.to_owned(),
        created_at: now,
        linked: get(&row, 1)?,
    })
}

async fn insert_token(
    db: &Db<'_>,
    device: DeviceAddress,
    token: TokenHash,
    now: Timestamp,
) -> StoreResult<()> {
    let params: Params<'_> = &[
        &&token.0[..],
        &to_sql(device.user.get()),
        &to_sql(device.device.get()),
        &ts_sql(now),
    ];
    db.exec_unique(INSERT_TOKEN, params).await.map(drop)
}

pub(crate) async fn add_token(
    db: &Db<'_>,
    device: DeviceAddress,
    token: TokenHash,
    now: Timestamp,
) -> StoreResult<()> {
    lock_device_share(db, device).await?;
    if authenticate(db, token).await? == Some(device) {
        return Ok(());
    }
    insert_token(db, device, token, now).await
}

pub(crate) async fn devices(db: &Db<'_>, user: UserId) -> StoreResult<Vec<Device>> {
    let rows = db.query(DEVICES, &[&to_sql(user.get())]).await?;
    rows.iter()
        .map(|row| {
            let address = DeviceAddress {
                user,
                device: from_sql(get(row, 0)?, "device ID")?,
            };
            Ok(Device {
                address,
                name: get(row, 1)?,
                created_at: ts(get(row, 2)?),
                linked: get(row, 3)?,
            })
        })
        .collect()
}

pub(crate) async fn remove_device(db: &Db<'_>, device: DeviceAddress) -> StoreResult<()> {
    lock_user_and_conversations(db, device.user).await?;
    // The device row before its inbox rows, as trimming takes them: no lock cycle.
    let params: Params<'_> = &[&to_sql(device.device.get()), &to_sql(device.user.get())];
    if db.opt(LOCK_DEVICE, params).await?.is_none() {
        return Err(StoreError::NotFound);
    }
    let id = to_sql(device.device.get());
    for sql in [
        DELETE_TOKENS_OF,
        DELETE_PREKEYS_OF,
        DELETE_INBOX_OF,
        DELETE_DEVICE,
    ] {
        db.exec(sql, &[&id]).await?;
    }
    Ok(())
}

pub(crate) async fn authenticate(
    db: &Db<'_>,
    token: TokenHash,
) -> StoreResult<Option<DeviceAddress>> {
    let Some(row) = db.opt(AUTHENTICATE, &[&&token.0[..]]).await? else {
        return Ok(None);
    };
    Ok(Some(DeviceAddress {
        user: from_sql(get(&row, 0)?, "user ID")?,
        device: from_sql(get(&row, 1)?, "device ID")?,
    }))
}

pub(crate) async fn probe_write(db: &Db<'_>) -> StoreResult<()> {
    db.exec(PROBE_WRITE, &[]).await.map(drop)
}

pub(crate) async fn revoke_token(db: &Db<'_>, token: TokenHash) -> StoreResult<bool> {
    Ok(db.exec(REVOKE, &[&&token.0[..]]).await? > 0)
}

pub(crate) async fn set_last_active(db: &Db<'_>, user: UserId, at: Timestamp) -> StoreResult<()> {
    match db
        .exec(SET_LAST_ACTIVE, &[&to_sql(user.get()), &ts_sql(at)])
        .await?
    {
        0 => Err(StoreError::NotFound),
        _ => Ok(()),
    }
}

pub(crate) async fn last_active(db: &Db<'_>, user: UserId) -> StoreResult<Option<Timestamp>> {
    let Some(row) = db.opt(LAST_ACTIVE, &[&to_sql(user.get())]).await? else {
        return Ok(None);
    };
    Ok(get::<Option<i64>>(&row, 0)?.map(ts))
}

// ---- keys -----------------------------------------------------------------------------

pub(crate) async fn device_list(
    db: &Db<'_>,
    user: UserId,
) -> StoreResult<Option<DeviceListRecord>> {
    let Some(row) = db.opt(DEVICE_LIST, &[&to_sql(user.get())]).await? else {
        return Ok(None);
    };
    let list: Vec<u8> = get(&row, 1)?;
    Ok(Some(DeviceListRecord {
        version: from_sql(get(&row, 0)?, "device list version")?,
        list: list.into(),
    }))
}

/// Locks the user and their conversations first, as adding a device does: a message being
/// appended sees the devices linked either before or after the new list, never half.
pub(crate) async fn set_device_list(
    db: &Db<'_>,
    user: UserId,
    record: &DeviceListRecord,
    linked: &[DeviceId],
) -> StoreResult<()> {
    lock_user_and_conversations(db, user).await?;
    if device_list(db, user)
        .await?
        .is_some_and(|old| old.version >= record.version)
    {
        return Err(StoreError::Conflict);
    }
    let id = to_sql(user.get());
    let list: &[u8] = &record.list;
    db.exec(UPSERT_DEVICE_LIST, &[&id, &to_sql(record.version), &list])
        .await?;
    let linked: Vec<i64> = linked.iter().map(|d| to_sql(d.get())).collect();
    db.exec(SET_LINKED, &[&id, &linked]).await?;
    Ok(())
}

pub(crate) async fn set_link_payload(
    db: &Db<'_>,
    device: DeviceAddress,
    sealed: &[u8],
) -> StoreResult<()> {
    let params: Params<'_> = &[
        &to_sql(device.device.get()),
        &to_sql(device.user.get()),
        &sealed,
    ];
    match db.exec(SET_LINK_PAYLOAD, params).await? {
        0 => Err(StoreError::NotFound),
        _ => Ok(()),
    }
}

pub(crate) async fn link_payload(db: &Db<'_>, device: DeviceAddress) -> StoreResult<Option<Bytes>> {
    let params: Params<'_> = &[&to_sql(device.device.get()), &to_sql(device.user.get())];
    let row = db
        .opt(LINK_PAYLOAD, params)
        .await?
        .ok_or(StoreError::NotFound)?;
    let payload: Option<Vec<u8>> = get(&row, 0)?;
    Ok(payload.map(Bytes::from))
}

pub(crate) async fn set_device_keys(
    db: &Db<'_>,
    device: DeviceAddress,
    keys: &DeviceKeys,
) -> StoreResult<()> {
    let spk = &keys.signed_prekey;
    let params: Params<'_> = &[
        &to_sql(device.device.get()),
        &to_sql(device.user.get()),
        &&keys.identity[..],
        &i64::from(spk.id),
        &&spk.public[..],
        &&spk.signature[..],
    ];
    let identity: &[u8] = &keys.identity[..];
    db.exec(
        DROP_STALE_PREKEYS,
        &[&to_sql(device.device.get()), &identity],
    )
    .await?;
    match db.exec(SET_KEYS, params).await? {
        0 => Err(StoreError::NotFound),
        _ => Ok(()),
    }
}

pub(crate) async fn add_one_time_prekeys(
    db: &Db<'_>,
    device: DeviceAddress,
    keys: &[OneTimePrekey],
) -> StoreResult<()> {
    lock_device_share(db, device).await?;
    let ids: Vec<i64> = keys.iter().map(|k| i64::from(k.id)).collect();
    let publics: Vec<&[u8]> = keys.iter().map(|k| &k.public[..]).collect();
    db.exec(ADD_PREKEYS, &[&to_sql(device.device.get()), &ids, &publics])
        .await?;
    Ok(())
}

/// The bundles of `user`'s keyed devices, each claiming one one-time prekey when `claim`.
pub(crate) async fn claim_bundles(
    db: &Db<'_>,
    user: UserId,
    claim: bool,
) -> StoreResult<Vec<PrekeyBundle>> {
    let rows = db.query(KEYED_DEVICES, &[&to_sql(user.get())]).await?;
    let mut bundles = Vec::with_capacity(rows.len());
    for row in rows {
        let id: i64 = get(&row, 0)?;
        // Each claim is one statement; SKIP LOCKED makes concurrent claimers take
        // different keys instead of waiting for (and then missing) the same one.
        let claimed = match claim {
            true => db.opt(CLAIM_PREKEY, &[&id]).await?,
            false => None,
        };
        let one_time_prekey = match claimed {
            Some(k) => Some(OneTimePrekey {
                id: u32_from_sql(get(&k, 0)?, "prekey ID")?,
                public: Bytes::from(get::<Vec<u8>>(&k, 1)?),
            }),
            None => None,
        };
        bundles.push(PrekeyBundle {
            device: DeviceAddress {
                user,
                device: from_sql(id, "device ID")?,
            },
            identity: Bytes::from(get::<Vec<u8>>(&row, 1)?),
            signed_prekey: SignedPrekey {
                id: u32_from_sql(get(&row, 2)?, "signed prekey ID")?,
                public: Bytes::from(get::<Vec<u8>>(&row, 3)?),
                signature: Bytes::from(get::<Vec<u8>>(&row, 4)?),
            },
            one_time_prekey,
        });
    }
    Ok(bundles)
}

pub(crate) async fn one_time_prekey_count(db: &Db<'_>, device: DeviceAddress) -> StoreResult<u64> {
    let params: Params<'_> = &[&to_sql(device.device.get()), &to_sql(device.user.get())];
    let row = db.opt(PREKEY_COUNT, params).await?;
    let n: i64 = row.map(|r| get(&r, 0)).transpose()?.unwrap_or(0);
    Ok(u64::try_from(n).unwrap_or(0))
}

// ---- attachments and push tokens ------------------------------------------------------

pub(crate) async fn insert_attachment(db: &Db<'_>, meta: &AttachmentMeta) -> StoreResult<()> {
    let params: Params<'_> = &[
        &&meta.id.as_bytes()[..],
        &to_sql(meta.conversation.get()),
        &to_sql(meta.uploader.user.get()),
        &to_sql(meta.uploader.device.get()),
        &to_sql(meta.size),
        &ts_sql(meta.created_at),
    ];
    db.exec_unique(INSERT_ATTACHMENT, params).await.map(drop)
}

pub(crate) async fn attachment(
    db: &Db<'_>,
    id: AttachmentId,
) -> StoreResult<Option<AttachmentMeta>> {
    let Some(row) = db.opt(ATTACHMENT, &[&&id.as_bytes()[..]]).await? else {
        return Ok(None);
    };
    let size: i64 = get(&row, 3)?;
    Ok(Some(AttachmentMeta {
        id,
        conversation: from_sql(get(&row, 0)?, "conversation ID")?,
        uploader: DeviceAddress {
            user: from_sql(get(&row, 1)?, "user ID")?,
            device: from_sql(get(&row, 2)?, "device ID")?,
        },
        size: u64::try_from(size).map_err(|_| failure("stored attachment size is negative"))?,
        created_at: ts(get(&row, 4)?),
    }))
}

pub(crate) async fn set_push_token(
    db: &Db<'_>,
    device: DeviceAddress,
    token: Option<&PushToken>,
) -> StoreResult<()> {
    let platform = token.map(|t| t.platform.as_str());
    let value = token.map(|t| t.token.as_str());
    let params: Params<'_> = &[
        &to_sql(device.device.get()),
        &to_sql(device.user.get()),
        &platform,
        &value,
    ];
    match db.exec(SET_PUSH, params).await? {
        0 => Err(StoreError::NotFound),
        _ => Ok(()),
    }
}

pub(crate) async fn push_token(
    db: &Db<'_>,
    device: DeviceAddress,
) -> StoreResult<Option<PushToken>> {
    let params: Params<'_> = &[&to_sql(device.device.get()), &to_sql(device.user.get())];
    let Some(row) = db.opt(PUSH, params).await? else {
        return Ok(None);
    };
    let platform: Option<String> = get(&row, 0)?;
    let token: Option<String> = get(&row, 1)?;
    Ok(platform
        .zip(token)
        .map(|(platform, token)| PushToken { platform, token }))
}
