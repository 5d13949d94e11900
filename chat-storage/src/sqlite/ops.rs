//! The SQL of every operation, as plain functions over a connection. Writes run on the
//! writer thread inside the batch transaction (and their own savepoint); reads run on a
//! read-only connection.

use bytes::Bytes;
use chat_core::limits::MAX_DEVICES_PER_USER;
use chat_core::{
    Appended, AttachmentId, AttachmentMeta, ClientKey, Conversation, ConversationId,
    ConversationKind, Credentials, Device, DeviceAddress, DeviceKeys, Direction, Envelope,
    InboxEntry, InboxPos, MessageId, NewMessage, OneTimePrekey, PrekeyBundle, PushToken,
    ReceiptKind, ReceiptPosition, SignedPrekey, StoreError, StoreResult, Timestamp, TokenHash,
    User, UserId, Username,
};
use rusqlite::{Connection, ErrorCode, OptionalExtension, Row, params};

use crate::common::{
    array_from_sql, check_coverage, check_distinct_recipients, effective_limit, failure, from_sql,
    limit_sql, to_sql, u32_from_sql,
};

type Sql = rusqlite::Error;

fn backend(e: Sql) -> StoreError {
    StoreError::backend(e)
}

/// Maps a uniqueness violation to [`StoreError::Conflict`].
fn conflict_or_backend(e: Sql) -> StoreError {
    if e.sqlite_error_code() == Some(ErrorCode::ConstraintViolation) {
        StoreError::Conflict
    } else {
        StoreError::backend(e)
    }
}

fn ts(value: i64) -> Timestamp {
    Timestamp::from_millis(u64::try_from(value).unwrap_or(0))
}

fn ts_sql(at: Timestamp) -> i64 {
    to_sql(at.as_millis())
}

fn kind_sql(kind: ConversationKind) -> i64 {
    match kind {
        ConversationKind::Direct => 0,
        ConversationKind::Group => 1,
    }
}

fn kind_from_sql(value: i64) -> StoreResult<ConversationKind> {
    match value {
        0 => Ok(ConversationKind::Direct),
        1 => Ok(ConversationKind::Group),
        other => Err(failure(format!(
            "stored conversation kind {other} is unknown"
        ))),
    }
}

// ---- accounts -------------------------------------------------------------------------

pub(crate) fn create_user(
    conn: &Connection,
    username: &Username,
    password_hash: &str,
    now: Timestamp,
) -> StoreResult<User> {
    let mut stmt = conn
        .prepare_cached(
            "INSERT INTO users (username, password_hash, created_at) VALUES (?1, ?2, ?3)
             RETURNING id",
        )
        .map_err(backend)?;
    let id: i64 = stmt
        .query_row(
            params![username.as_str(), password_hash, ts_sql(now)],
            |r| r.get(0),
        )
        .map_err(conflict_or_backend)?;
    Ok(User {
        id: from_sql(id, "user ID")?,
        username: username.clone(),
        created_at: now,
    })
}

pub(crate) fn credentials(
    conn: &Connection,
    username: &Username,
) -> StoreResult<Option<Credentials>> {
    let mut stmt = conn
        .prepare_cached("SELECT id, password_hash, created_at FROM users WHERE username = ?1")
        .map_err(backend)?;
    let row = stmt
        .query_row([username.as_str()], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })
        .optional()
        .map_err(backend)?;
    let Some((id, password_hash, created_at)) = row else {
        return Ok(None);
    };
    let user = User {
        id: from_sql(id, "user ID")?,
        username: username.clone(),
        created_at: ts(created_at),
    };
    Ok(Some(Credentials {
        user,
        password_hash,
    }))
}

pub(crate) fn user(conn: &Connection, user: UserId) -> StoreResult<Option<User>> {
    let mut stmt = conn
        .prepare_cached("SELECT username, created_at FROM users WHERE id = ?1")
        .map_err(backend)?;
    let row = stmt
        .query_row([to_sql(user.get())], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })
        .optional()
        .map_err(backend)?;
    let Some((name, created_at)) = row else {
        return Ok(None);
    };
    let username = Username::new(name).map_err(|e| failure(format!("stored username: {e}")))?;
    Ok(Some(User {
        id: user,
        username,
        created_at: ts(created_at),
    }))
}

fn user_exists(conn: &Connection, user: UserId) -> StoreResult<bool> {
    let mut stmt = conn
        .prepare_cached("SELECT 1 FROM users WHERE id = ?1")
        .map_err(backend)?;
    stmt.exists([to_sql(user.get())]).map_err(backend)
}

/// Whether the device exists and belongs to its address's user.
fn device_exists(conn: &Connection, device: DeviceAddress) -> StoreResult<bool> {
    let mut stmt = conn
        .prepare_cached("SELECT 1 FROM devices WHERE id = ?1 AND user_id = ?2")
        .map_err(backend)?;
    stmt.exists([to_sql(device.device.get()), to_sql(device.user.get())])
        .map_err(backend)
}

fn require_device(conn: &Connection, device: DeviceAddress) -> StoreResult<()> {
    if device_exists(conn, device)? {
        Ok(())
    } else {
        Err(StoreError::NotFound)
    }
}

pub(crate) fn add_device(
    conn: &Connection,
    user: UserId,
    name: &str,
    token: TokenHash,
    now: Timestamp,
) -> StoreResult<Device> {
    if !user_exists(conn, user)? {
        return Err(StoreError::NotFound);
    }
    let mut count = conn
        .prepare_cached("SELECT count(*) FROM devices WHERE user_id = ?1")
        .map_err(backend)?;
    let n: i64 = count
        .query_row([to_sql(user.get())], |r| r.get(0))
        .map_err(backend)?;
    if usize::try_from(n).unwrap_or(usize::MAX) >= MAX_DEVICES_PER_USER {
        return Err(StoreError::TooManyDevices);
    }
    let mut insert = conn
        .prepare_cached(
            "INSERT INTO devices (user_id, name, created_at) VALUES (?1, ?2, ?3) RETURNING id",
        )
        .map_err(backend)?;
    let id: i64 = insert
        .query_row(params![to_sql(user.get()), name, ts_sql(now)], |r| r.get(0))
        .map_err(backend)?;
    let address = DeviceAddress {
        user,
        device: from_sql(id, "device ID")?,
    };
    insert_token(conn, address, token, now)?;
    Ok(Device {
        address,
        name: name.to_owned(),
        created_at: now,
    })
}

fn insert_token(
    conn: &Connection,
    device: DeviceAddress,
    token: TokenHash,
    now: Timestamp,
) -> StoreResult<()> {
    let mut stmt = conn
        .prepare_cached(
            "INSERT INTO tokens (hash, user_id, device_id, created_at) VALUES (?1, ?2, ?3, ?4)",
        )
        .map_err(backend)?;
    stmt.execute(params![
        &token.0[..],
        to_sql(device.user.get()),
        to_sql(device.device.get()),
        ts_sql(now)
    ])
    .map_err(conflict_or_backend)?;
    Ok(())
}

pub(crate) fn add_token(
    conn: &Connection,
    device: DeviceAddress,
    token: TokenHash,
    now: Timestamp,
) -> StoreResult<()> {
    require_device(conn, device)?;
    if authenticate(conn, token)? == Some(device) {
        return Ok(());
    }
    insert_token(conn, device, token, now)
}

pub(crate) fn devices(conn: &Connection, user: UserId) -> StoreResult<Vec<Device>> {
    let mut stmt = conn
        .prepare_cached("SELECT id, name, created_at FROM devices WHERE user_id = ?1 ORDER BY id")
        .map_err(backend)?;
    let rows = stmt
        .query_map([to_sql(user.get())], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })
        .map_err(backend)?;
    rows.map(|row| {
        let (id, name, created_at) = row.map_err(backend)?;
        let address = DeviceAddress {
            user,
            device: from_sql(id, "device ID")?,
        };
        Ok(Device {
            address,
            name,
            created_at: ts(created_at),
        })
    })
    .collect()
}

pub(crate) fn remove_device(conn: &Connection, device: DeviceAddress) -> StoreResult<()> {
    require_device(conn, device)?;
    let id = to_sql(device.device.get());
    for sql in [
        "DELETE FROM tokens WHERE device_id = ?1",
        "DELETE FROM one_time_prekeys WHERE device_id = ?1",
        "DELETE FROM inbox WHERE device_id = ?1",
        "DELETE FROM devices WHERE id = ?1",
    ] {
        conn.prepare_cached(sql)
            .and_then(|mut s| s.execute([id]))
            .map_err(backend)?;
    }
    Ok(())
}

pub(crate) fn authenticate(
    conn: &Connection,
    token: TokenHash,
) -> StoreResult<Option<DeviceAddress>> {
    let mut stmt = conn
        .prepare_cached("SELECT user_id, device_id FROM tokens WHERE hash = ?1")
        .map_err(backend)?;
    let row = stmt
        .query_row([&token.0[..]], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
        })
        .optional()
        .map_err(backend)?;
    let Some((user, device)) = row else {
        return Ok(None);
    };
    Ok(Some(DeviceAddress {
        user: from_sql(user, "user ID")?,
        device: from_sql(device, "device ID")?,
    }))
}

pub(crate) fn revoke_token(conn: &Connection, token: TokenHash) -> StoreResult<bool> {
    let mut stmt = conn
        .prepare_cached("DELETE FROM tokens WHERE hash = ?1")
        .map_err(backend)?;
    Ok(stmt.execute([&token.0[..]]).map_err(backend)? > 0)
}

pub(crate) fn set_last_active(conn: &Connection, user: UserId, at: Timestamp) -> StoreResult<()> {
    let mut stmt = conn
        .prepare_cached(
            "UPDATE users SET last_active = max(coalesce(last_active, ?2), ?2) WHERE id = ?1",
        )
        .map_err(backend)?;
    match stmt
        .execute([to_sql(user.get()), ts_sql(at)])
        .map_err(backend)?
    {
        0 => Err(StoreError::NotFound),
        _ => Ok(()),
    }
}

pub(crate) fn last_active(conn: &Connection, user: UserId) -> StoreResult<Option<Timestamp>> {
    let mut stmt = conn
        .prepare_cached("SELECT last_active FROM users WHERE id = ?1")
        .map_err(backend)?;
    let row: Option<Option<i64>> = stmt
        .query_row([to_sql(user.get())], |r| r.get(0))
        .optional()
        .map_err(backend)?;
    Ok(row.flatten().map(ts))
}

// ---- keys -----------------------------------------------------------------------------

pub(crate) fn set_device_keys(
    conn: &Connection,
    device: DeviceAddress,
    keys: &DeviceKeys,
) -> StoreResult<()> {
    let mut stmt = conn
        .prepare_cached(
            "UPDATE devices SET identity = ?3, spk_id = ?4, spk_public = ?5, spk_signature = ?6
             WHERE id = ?1 AND user_id = ?2",
        )
        .map_err(backend)?;
    let spk = &keys.signed_prekey;
    let n = stmt
        .execute(params![
            to_sql(device.device.get()),
            to_sql(device.user.get()),
            &keys.identity[..],
            i64::from(spk.id),
            &spk.public[..],
            &spk.signature[..],
        ])
        .map_err(backend)?;
    if n == 0 {
        Err(StoreError::NotFound)
    } else {
        Ok(())
    }
}

pub(crate) fn add_one_time_prekeys(
    conn: &Connection,
    device: DeviceAddress,
    keys: &[OneTimePrekey],
) -> StoreResult<()> {
    require_device(conn, device)?;
    let mut stmt = conn
        .prepare_cached(
            "INSERT OR IGNORE INTO one_time_prekeys (device_id, key_id, public) VALUES (?1, ?2, ?3)",
        )
        .map_err(backend)?;
    for key in keys {
        stmt.execute(params![
            to_sql(device.device.get()),
            i64::from(key.id),
            &key.public[..]
        ])
        .map_err(backend)?;
    }
    Ok(())
}

pub(crate) fn claim_bundles(conn: &Connection, user: UserId) -> StoreResult<Vec<PrekeyBundle>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT id, identity, spk_id, spk_public, spk_signature FROM devices
             WHERE user_id = ?1 AND identity IS NOT NULL ORDER BY id",
        )
        .map_err(backend)?;
    let rows = stmt
        .query_map([to_sql(user.get())], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Vec<u8>>(3)?,
                r.get::<_, Vec<u8>>(4)?,
            ))
        })
        .map_err(backend)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(backend)?;
    let mut claim = conn
        .prepare_cached(
            "DELETE FROM one_time_prekeys WHERE device_id = ?1 AND key_id = (
                 SELECT key_id FROM one_time_prekeys WHERE device_id = ?1 ORDER BY key_id LIMIT 1)
             RETURNING key_id, public",
        )
        .map_err(backend)?;
    let mut bundles = Vec::with_capacity(rows.len());
    for (id, identity, spk_id, spk_public, spk_signature) in rows {
        let one_time = claim
            .query_row([id], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))
            .optional()
            .map_err(backend)?;
        let one_time_prekey = match one_time {
            Some((key_id, public)) => Some(OneTimePrekey {
                id: u32_from_sql(key_id, "prekey ID")?,
                public: Bytes::from(public),
            }),
            None => None,
        };
        bundles.push(PrekeyBundle {
            device: DeviceAddress {
                user,
                device: from_sql(id, "device ID")?,
            },
            identity: Bytes::from(identity),
            signed_prekey: SignedPrekey {
                id: u32_from_sql(spk_id, "signed prekey ID")?,
                public: Bytes::from(spk_public),
                signature: Bytes::from(spk_signature),
            },
            one_time_prekey,
        });
    }
    Ok(bundles)
}

pub(crate) fn one_time_prekey_count(conn: &Connection, device: DeviceAddress) -> StoreResult<u64> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT count(*) FROM one_time_prekeys k JOIN devices d ON d.id = k.device_id
             WHERE k.device_id = ?1 AND d.user_id = ?2",
        )
        .map_err(backend)?;
    let n: i64 = stmt
        .query_row(
            [to_sql(device.device.get()), to_sql(device.user.get())],
            |r| r.get(0),
        )
        .map_err(backend)?;
    Ok(u64::try_from(n).unwrap_or(0))
}

// ---- conversations --------------------------------------------------------------------

fn conversation_from_row(r: &Row<'_>) -> rusqlite::Result<(i64, i64, i64, i64)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
}

fn make_conversation(
    (id, kind, created_at, last_id): (i64, i64, i64, i64),
) -> StoreResult<Conversation> {
    Ok(Conversation {
        id: from_sql(id, "conversation ID")?,
        kind: kind_from_sql(kind)?,
        created_at: ts(created_at),
        last_message: if last_id == 0 {
            None
        } else {
            Some(from_sql(last_id, "message ID")?)
        },
    })
}

fn new_conversation(
    conn: &Connection,
    kind: ConversationKind,
    pair: Option<(UserId, UserId)>,
    members: &[UserId],
    now: Timestamp,
) -> StoreResult<Conversation> {
    let mut stmt = conn
        .prepare_cached(
            "INSERT INTO conversations (kind, created_at, direct_low, direct_high)
             VALUES (?1, ?2, ?3, ?4) RETURNING id",
        )
        .map_err(backend)?;
    let (low, high) = pair.map_or((None, None), |(a, b)| {
        (Some(to_sql(a.get())), Some(to_sql(b.get())))
    });
    let id: i64 = stmt
        .query_row(params![kind_sql(kind), ts_sql(now), low, high], |r| {
            r.get(0)
        })
        .map_err(backend)?;
    let mut add = conn
        .prepare_cached("INSERT OR IGNORE INTO members (conversation_id, user_id) VALUES (?1, ?2)")
        .map_err(backend)?;
    for user in members {
        add.execute([id, to_sql(user.get())]).map_err(backend)?;
    }
    Ok(Conversation {
        id: from_sql(id, "conversation ID")?,
        kind,
        created_at: now,
        last_message: None,
    })
}

fn require_users(conn: &Connection, users: &[UserId]) -> StoreResult<()> {
    for &u in users {
        if !user_exists(conn, u)? {
            return Err(StoreError::NotFound);
        }
    }
    Ok(())
}

pub(crate) fn open_direct(
    conn: &Connection,
    a: UserId,
    b: UserId,
    now: Timestamp,
) -> StoreResult<Conversation> {
    require_users(conn, &[a, b])?;
    let (low, high) = (a.min(b), a.max(b));
    let mut stmt = conn
        .prepare_cached(
            "SELECT id, kind, created_at, last_id FROM conversations
             WHERE direct_low = ?1 AND direct_high = ?2",
        )
        .map_err(backend)?;
    let found = stmt
        .query_row(
            [to_sql(low.get()), to_sql(high.get())],
            conversation_from_row,
        )
        .optional()
        .map_err(backend)?;
    match found {
        Some(row) => make_conversation(row),
        None => new_conversation(
            conn,
            ConversationKind::Direct,
            Some((low, high)),
            &[low, high],
            now,
        ),
    }
}

pub(crate) fn create_group(
    conn: &Connection,
    creator: UserId,
    members: &[UserId],
    limit: usize,
    now: Timestamp,
) -> StoreResult<Conversation> {
    let mut all: Vec<UserId> = members.iter().copied().chain([creator]).collect();
    all.sort_unstable();
    all.dedup();
    let limit = effective_limit(limit);
    if all.len() > limit {
        return Err(StoreError::GroupFull { limit });
    }
    require_users(conn, &all)?;
    new_conversation(conn, ConversationKind::Group, None, &all, now)
}

fn conversation_kind(
    conn: &Connection,
    conversation: ConversationId,
) -> StoreResult<ConversationKind> {
    let mut stmt = conn
        .prepare_cached("SELECT kind FROM conversations WHERE id = ?1")
        .map_err(backend)?;
    let kind: Option<i64> = stmt
        .query_row([to_sql(conversation.get())], |r| r.get(0))
        .optional()
        .map_err(backend)?;
    kind_from_sql(kind.ok_or(StoreError::NotFound)?)
}

fn require_group(conn: &Connection, conversation: ConversationId) -> StoreResult<()> {
    match conversation_kind(conn, conversation)? {
        ConversationKind::Group => Ok(()),
        ConversationKind::Direct => Err(StoreError::Invalid(
            "members of a one-to-one conversation are fixed",
        )),
    }
}

pub(crate) fn add_members(
    conn: &Connection,
    conversation: ConversationId,
    users: &[UserId],
    limit: usize,
) -> StoreResult<()> {
    require_users(conn, users)?;
    require_group(conn, conversation)?;
    let mut add = conn
        .prepare_cached("INSERT OR IGNORE INTO members (conversation_id, user_id) VALUES (?1, ?2)")
        .map_err(backend)?;
    for user in users {
        add.execute([to_sql(conversation.get()), to_sql(user.get())])
            .map_err(backend)?;
    }
    // Counted inside the same transaction (this request's savepoint): over the limit, the
    // savepoint is rolled back and nothing was added.
    let mut count = conn
        .prepare_cached("SELECT count(*) FROM members WHERE conversation_id = ?1")
        .map_err(backend)?;
    let n: i64 = count
        .query_row([to_sql(conversation.get())], |r| r.get(0))
        .map_err(backend)?;
    let limit = effective_limit(limit);
    if usize::try_from(n).unwrap_or(usize::MAX) > limit {
        return Err(StoreError::GroupFull { limit });
    }
    Ok(())
}

pub(crate) fn remove_member(
    conn: &Connection,
    conversation: ConversationId,
    user: UserId,
) -> StoreResult<bool> {
    require_group(conn, conversation)?;
    let mut stmt = conn
        .prepare_cached("DELETE FROM members WHERE conversation_id = ?1 AND user_id = ?2")
        .map_err(backend)?;
    Ok(stmt
        .execute([to_sql(conversation.get()), to_sql(user.get())])
        .map_err(backend)?
        > 0)
}

pub(crate) fn conversation(
    conn: &Connection,
    conversation: ConversationId,
) -> StoreResult<Option<Conversation>> {
    let mut stmt = conn
        .prepare_cached("SELECT id, kind, created_at, last_id FROM conversations WHERE id = ?1")
        .map_err(backend)?;
    let row = stmt
        .query_row([to_sql(conversation.get())], conversation_from_row)
        .optional()
        .map_err(backend)?;
    row.map(make_conversation).transpose()
}

pub(crate) fn members(conn: &Connection, conversation: ConversationId) -> StoreResult<Vec<UserId>> {
    conversation_kind(conn, conversation)?;
    let mut stmt = conn
        .prepare_cached("SELECT user_id FROM members WHERE conversation_id = ?1 ORDER BY user_id")
        .map_err(backend)?;
    let rows = stmt
        .query_map([to_sql(conversation.get())], |r| r.get::<_, i64>(0))
        .map_err(backend)?;
    rows.map(|r| from_sql(r.map_err(backend)?, "user ID"))
        .collect()
}

pub(crate) fn is_member(
    conn: &Connection,
    conversation: ConversationId,
    user: UserId,
) -> StoreResult<bool> {
    let mut stmt = conn
        .prepare_cached("SELECT 1 FROM members WHERE conversation_id = ?1 AND user_id = ?2")
        .map_err(backend)?;
    stmt.exists([to_sql(conversation.get()), to_sql(user.get())])
        .map_err(backend)
}

pub(crate) fn conversations_of(conn: &Connection, user: UserId) -> StoreResult<Vec<Conversation>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT c.id, c.kind, c.created_at, c.last_id FROM members m
             JOIN conversations c ON c.id = m.conversation_id
             WHERE m.user_id = ?1 ORDER BY c.id",
        )
        .map_err(backend)?;
    let rows = stmt
        .query_map([to_sql(user.get())], conversation_from_row)
        .map_err(backend)?;
    rows.map(|r| make_conversation(r.map_err(backend)?))
        .collect()
}

// ---- messages -------------------------------------------------------------------------

pub(crate) fn append(conn: &Connection, message: &NewMessage) -> StoreResult<Appended> {
    let sender_device = to_sql(message.sender.device.get());
    let mut dup = conn
        .prepare_cached(
            "SELECT id, sent_at FROM messages WHERE sender_device = ?1 AND client_key = ?2",
        )
        .map_err(backend)?;
    let first = dup
        .query_row(
            params![sender_device, &message.client_key.as_bytes()[..]],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
        )
        .optional()
        .map_err(backend)?;
    if let Some((id, sent_at)) = first {
        let id = from_sql(id, "message ID")?;
        return Ok(Appended {
            id,
            sent_at: ts(sent_at),
            duplicate: true,
            deliveries: Vec::new(),
        });
    }
    check_distinct_recipients(message)?;
    let conv = to_sql(message.conversation.get());
    let mut current = conn
        .prepare_cached(
            "SELECT d.user_id, d.id FROM members m JOIN devices d ON d.user_id = m.user_id
             WHERE m.conversation_id = ?1",
        )
        .map_err(backend)?;
    let devices = current
        .query_map([conv], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
        .map_err(backend)?
        .map(|row| {
            let (user, device) = row.map_err(backend)?;
            Ok(DeviceAddress {
                user: from_sql(user, "user ID")?,
                device: from_sql(device, "device ID")?,
            })
        })
        .collect::<StoreResult<Vec<_>>>()?;
    // The sending device is among the current devices exactly when it exists, the
    // conversation exists and the sender is a member; only a refusal needs to say which.
    if !devices.contains(&message.sender) {
        require_device(conn, message.sender)?;
        conversation_kind(conn, message.conversation)?;
        return Err(StoreError::NotMember);
    }
    check_coverage(&devices, message)?;

    let mut allocate = conn
        .prepare_cached(
            "UPDATE conversations SET last_id = last_id + 1 WHERE id = ?1 RETURNING last_id",
        )
        .map_err(backend)?;
    let id_sql: i64 = allocate.query_row([conv], |r| r.get(0)).map_err(backend)?;
    let id: MessageId = from_sql(id_sql, "message ID")?;
    let mut insert = conn
        .prepare_cached(
            "INSERT INTO messages
                 (conversation_id, id, sender_user, sender_device, client_key, sent_at, body)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .map_err(backend)?;
    insert
        .execute(params![
            conv,
            id_sql,
            to_sql(message.sender.user.get()),
            sender_device,
            &message.client_key.as_bytes()[..],
            ts_sql(message.sent_at),
            &message.body[..],
        ])
        .map_err(backend)?;
    let seq = conn.last_insert_rowid();
    let mut head = conn
        .prepare_cached(
            "UPDATE devices SET inbox_head = inbox_head + 1 WHERE id = ?1 RETURNING inbox_head",
        )
        .map_err(backend)?;
    let mut entry = conn
        .prepare_cached(
            "INSERT INTO inbox (device_id, pos, message_seq, header) VALUES (?1, ?2, ?3, ?4)",
        )
        .map_err(backend)?;
    let mut deliveries = Vec::with_capacity(message.recipients.len());
    for recipient in &message.recipients {
        let device = to_sql(recipient.device.device.get());
        let pos: i64 = head.query_row([device], |r| r.get(0)).map_err(backend)?;
        entry
            .execute(params![device, pos, seq, &recipient.header[..]])
            .map_err(backend)?;
        deliveries.push((recipient.device, from_sql(pos, "inbox position")?));
    }
    Ok(Appended {
        id,
        sent_at: message.sent_at,
        duplicate: false,
        deliveries,
    })
}

/// The columns of an envelope, in the order [`envelope`] reads them from `start`.
const ENVELOPE_COLUMNS: &str =
    "m.conversation_id, m.id, m.sender_user, m.sender_device, m.client_key, m.sent_at, m.body";

fn envelope(r: &Row<'_>, start: usize) -> StoreResult<Envelope> {
    let get_i64 = |i: usize| r.get::<_, i64>(start + i).map_err(backend);
    let client_key: Vec<u8> = r.get(start + 4).map_err(backend)?;
    let body: Vec<u8> = r.get(start + 6).map_err(backend)?;
    Ok(Envelope {
        conversation: from_sql(get_i64(0)?, "conversation ID")?,
        id: from_sql(get_i64(1)?, "message ID")?,
        sender: DeviceAddress {
            user: from_sql(get_i64(2)?, "user ID")?,
            device: from_sql(get_i64(3)?, "device ID")?,
        },
        client_key: ClientKey::from_bytes(array_from_sql(&client_key, "client key")?),
        sent_at: ts(get_i64(5)?),
        body: Bytes::from(body),
    })
}

pub(crate) fn inbox(
    conn: &Connection,
    device: DeviceAddress,
    after: InboxPos,
    limit: usize,
) -> StoreResult<Vec<InboxEntry>> {
    require_device(conn, device)?;
    let sql = format!(
        "SELECT i.pos, i.header, {ENVELOPE_COLUMNS} FROM inbox i
         JOIN messages m ON m.seq = i.message_seq
         WHERE i.device_id = ?1 AND i.pos > ?2 ORDER BY i.pos LIMIT ?3"
    );
    let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
    let mut rows = stmt
        .query([
            to_sql(device.device.get()),
            to_sql(after.get()),
            limit_sql(limit),
        ])
        .map_err(backend)?;
    let mut entries = Vec::with_capacity(limit.min(1024));
    while let Some(r) = rows.next().map_err(backend)? {
        let pos: i64 = r.get(0).map_err(backend)?;
        let header: Vec<u8> = r.get(1).map_err(backend)?;
        entries.push(InboxEntry {
            pos: from_sql(pos, "inbox position")?,
            envelope: envelope(r, 2)?,
            header: Bytes::from(header),
        });
    }
    Ok(entries)
}

fn device_column(conn: &Connection, device: DeviceAddress, column: &str) -> StoreResult<InboxPos> {
    let sql = format!("SELECT {column} FROM devices WHERE id = ?1 AND user_id = ?2");
    let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
    let value: Option<i64> = stmt
        .query_row(
            [to_sql(device.device.get()), to_sql(device.user.get())],
            |r| r.get(0),
        )
        .optional()
        .map_err(backend)?;
    from_sql(value.ok_or(StoreError::NotFound)?, column)
}

pub(crate) fn inbox_head(conn: &Connection, device: DeviceAddress) -> StoreResult<InboxPos> {
    device_column(conn, device, "inbox_head")
}

pub(crate) fn cursor(conn: &Connection, device: DeviceAddress) -> StoreResult<InboxPos> {
    device_column(conn, device, "cursor")
}

pub(crate) fn ack(
    conn: &Connection,
    device: DeviceAddress,
    up_to: InboxPos,
) -> StoreResult<InboxPos> {
    let mut stmt = conn
        .prepare_cached(
            "UPDATE devices SET cursor = max(cursor, ?3) WHERE id = ?1 AND user_id = ?2
             RETURNING cursor",
        )
        .map_err(backend)?;
    let value: Option<i64> = stmt
        .query_row(
            [
                to_sql(device.device.get()),
                to_sql(device.user.get()),
                to_sql(up_to.get()),
            ],
            |r| r.get(0),
        )
        .optional()
        .map_err(backend)?;
    from_sql(value.ok_or(StoreError::NotFound)?, "cursor")
}

pub(crate) fn history(
    conn: &Connection,
    conversation: ConversationId,
    anchor: MessageId,
    direction: Direction,
    limit: usize,
) -> StoreResult<Vec<Envelope>> {
    conversation_kind(conn, conversation)?;
    let (cmp, order) = match direction {
        Direction::Before => ("<", "DESC"),
        Direction::After => (">", "ASC"),
    };
    let sql = format!(
        "SELECT {ENVELOPE_COLUMNS} FROM messages m
         WHERE m.conversation_id = ?1 AND m.id {cmp} ?2 ORDER BY m.id {order} LIMIT ?3"
    );
    let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
    let mut rows = stmt
        .query([
            to_sql(conversation.get()),
            to_sql(anchor.get()),
            limit_sql(limit),
        ])
        .map_err(backend)?;
    let mut page = Vec::with_capacity(limit.min(1024));
    while let Some(r) = rows.next().map_err(backend)? {
        page.push(envelope(r, 0)?);
    }
    Ok(page)
}

pub(crate) fn message(
    conn: &Connection,
    conversation: ConversationId,
    id: MessageId,
) -> StoreResult<Option<Envelope>> {
    let sql = format!(
        "SELECT {ENVELOPE_COLUMNS} FROM messages m WHERE m.conversation_id = ?1 AND m.id = ?2"
    );
    let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
    let mut rows = stmt
        .query([to_sql(conversation.get()), to_sql(id.get())])
        .map_err(backend)?;
    match rows.next().map_err(backend)? {
        Some(r) => envelope(r, 0).map(Some),
        None => Ok(None),
    }
}

// ---- receipts -------------------------------------------------------------------------

fn receipt_kind_from_sql(value: i64) -> StoreResult<ReceiptKind> {
    u8::try_from(value)
        .ok()
        .and_then(ReceiptKind::from_number)
        .ok_or_else(|| failure(format!("stored receipt kind {value} is unknown")))
}

pub(crate) fn set_receipt(
    conn: &Connection,
    conversation: ConversationId,
    user: UserId,
    kind: ReceiptKind,
    up_to: MessageId,
) -> StoreResult<MessageId> {
    conversation_kind(conn, conversation)?;
    if !is_member(conn, conversation, user)? {
        return Err(StoreError::NotMember);
    }
    let mut stmt = conn
        .prepare_cached(
            "INSERT INTO receipts (conversation_id, user_id, kind, up_to) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (conversation_id, user_id, kind)
             DO UPDATE SET up_to = max(up_to, excluded.up_to)
             RETURNING up_to",
        )
        .map_err(backend)?;
    let stored: i64 = stmt
        .query_row(
            [
                to_sql(conversation.get()),
                to_sql(user.get()),
                i64::from(kind.number()),
                to_sql(up_to.get()),
            ],
            |r| r.get(0),
        )
        .map_err(backend)?;
    from_sql(stored, "receipt position")
}

pub(crate) fn receipts(
    conn: &Connection,
    conversation: ConversationId,
) -> StoreResult<Vec<ReceiptPosition>> {
    conversation_kind(conn, conversation)?;
    let mut stmt = conn
        .prepare_cached(
            "SELECT r.user_id, r.kind, r.up_to FROM receipts r
             JOIN members m ON m.conversation_id = r.conversation_id AND m.user_id = r.user_id
             WHERE r.conversation_id = ?1 ORDER BY r.user_id, r.kind",
        )
        .map_err(backend)?;
    let rows = stmt
        .query_map([to_sql(conversation.get())], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })
        .map_err(backend)?;
    rows.map(|row| {
        let (user, kind, up_to) = row.map_err(backend)?;
        Ok(ReceiptPosition {
            user: from_sql(user, "user ID")?,
            kind: receipt_kind_from_sql(kind)?,
            up_to: from_sql(up_to, "receipt position")?,
        })
    })
    .collect()
}

// ---- attachments and push tokens ------------------------------------------------------

pub(crate) fn insert_attachment(conn: &Connection, meta: &AttachmentMeta) -> StoreResult<()> {
    let mut stmt = conn
        .prepare_cached(
            "INSERT INTO attachments
                 (id, conversation_id, uploader_user, uploader_device, size, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .map_err(backend)?;
    stmt.execute(params![
        &meta.id.as_bytes()[..],
        to_sql(meta.conversation.get()),
        to_sql(meta.uploader.user.get()),
        to_sql(meta.uploader.device.get()),
        to_sql(meta.size),
        ts_sql(meta.created_at),
    ])
    .map_err(conflict_or_backend)?;
    Ok(())
}

pub(crate) fn attachment(
    conn: &Connection,
    id: AttachmentId,
) -> StoreResult<Option<AttachmentMeta>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT conversation_id, uploader_user, uploader_device, size, created_at
             FROM attachments WHERE id = ?1",
        )
        .map_err(backend)?;
    let row = stmt
        .query_row([&id.as_bytes()[..]], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })
        .optional()
        .map_err(backend)?;
    let Some((conversation, user, device, size, created_at)) = row else {
        return Ok(None);
    };
    Ok(Some(AttachmentMeta {
        id,
        conversation: from_sql(conversation, "conversation ID")?,
        uploader: DeviceAddress {
            user: from_sql(user, "user ID")?,
            device: from_sql(device, "device ID")?,
        },
        size: u64::try_from(size).map_err(|_| failure("stored attachment size is negative"))?,
        created_at: ts(created_at),
    }))
}

pub(crate) fn set_push_token(
    conn: &Connection,
    device: DeviceAddress,
    token: Option<&PushToken>,
) -> StoreResult<()> {
    let mut stmt = conn
        .prepare_cached(
            "UPDATE devices SET push_platform = ?3, push_token = ?4 WHERE id = ?1 AND user_id = ?2",
        )
        .map_err(backend)?;
    let (platform, value) = token.map_or((None, None), |t| {
        (Some(t.platform.as_str()), Some(t.token.as_str()))
    });
    let n = stmt
        .execute(params![
            to_sql(device.device.get()),
            to_sql(device.user.get()),
            platform,
            value
        ])
        .map_err(backend)?;
    if n == 0 {
        Err(StoreError::NotFound)
    } else {
        Ok(())
    }
}

pub(crate) fn push_token(
    conn: &Connection,
    device: DeviceAddress,
) -> StoreResult<Option<PushToken>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT push_platform, push_token FROM devices WHERE id = ?1 AND user_id = ?2",
        )
        .map_err(backend)?;
    let row = stmt
        .query_row(
            [to_sql(device.device.get()), to_sql(device.user.get())],
            |r| {
                Ok((
                    r.get::<_, Option<String>>(0)?,
                    r.get::<_, Option<String>>(1)?,
                ))
            },
        )
        .optional()
        .map_err(backend)?;
    Ok(match row {
        Some((Some(platform), Some(token))) => Some(PushToken { platform, token }),
        _ => None,
    })
}
