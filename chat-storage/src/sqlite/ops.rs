//! The SQL of every operation, as plain functions over a connection. Writes run on the
//! writer thread inside the batch transaction; reads run on a read-only connection.
//!
//! A write makes every check that can refuse it before its first write, so a refusal
//! leaves nothing behind without a savepoint (see `writer`). A write that still fails
//! after writing (a constraint error) is correct too, only slower: its batch runs again.

use bytes::Bytes;
use chat_core::limits::MAX_DEVICES_PER_USER;
use chat_core::{
    Appended, AttachmentId, AttachmentMeta, ChainLink, ClientKey, Conversation, ConversationId,
    ConversationKind, Credentials, Device, DeviceAddress, DeviceId, DeviceKeys, DeviceListRecord,
    Direction, Envelope, GroupOp, GroupSettings, GroupState, InboxEntry, InboxPos, MemberInfo,
    MessageId, NewMessage, OneTimePrekey, PrekeyBundle, PushToken, ReceiptKind, ReceiptPosition,
    SignedPrekey, StoreError, StoreResult, Timestamp, TokenHash, User, UserId, Username,
};
use rusqlite::{Connection, ErrorCode, OptionalExtension, Row, params};
use std::collections::BTreeMap;

use crate::common::{
    GroupDiff, array_from_sql, check_coverage, check_distinct_recipients, failure, from_sql,
    group_diff, group_from_parts, limit_sql, permission_from_sql, permission_sql, plan_group,
    plan_group_change, role_from_sql, role_sql, to_sql, u32_from_sql,
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

mod conversations;
mod people;

pub(crate) use conversations::*;
pub(crate) use people::*;

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
    if authenticate(conn, token)?.is_some() {
        return Err(StoreError::Conflict);
    }
    let mut insert = conn
        .prepare_cached(
            "INSERT INTO devices (user_id, name, created_at, linked)
             VALUES (?1, ?2, ?3, NOT EXISTS (SELECT 1 FROM device_lists WHERE user_id = ?1))
             RETURNING id, linked",
        )
        .map_err(backend)?;
    let (id, linked): (i64, bool) = insert
        .query_row(params![to_sql(user.get()), name, ts_sql(now)], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
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
        linked,
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
        .prepare_cached(
            "SELECT id, name, created_at, linked FROM devices WHERE user_id = ?1 ORDER BY id",
        )
        .map_err(backend)?;
    let rows = stmt
        .query_map([to_sql(user.get())], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, bool>(3)?,
            ))
        })
        .map_err(backend)?;
    rows.map(|row| {
        let (id, name, created_at, linked) = row.map_err(backend)?;
        let address = DeviceAddress {
            user,
            device: from_sql(id, "device ID")?,
        };
        Ok(Device {
            address,
            name,
            created_at: ts(created_at),
            linked,
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

pub(crate) fn probe_write(conn: &Connection) -> StoreResult<()> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(backend)?;
    conn.pragma_update(None, "user_version", version)
        .map_err(backend)
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

pub(crate) fn device_list(
    conn: &Connection,
    user: UserId,
) -> StoreResult<Option<DeviceListRecord>> {
    let mut stmt = conn
        .prepare_cached("SELECT version, list FROM device_lists WHERE user_id = ?1")
        .map_err(backend)?;
    let row = stmt
        .query_row([to_sql(user.get())], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
        })
        .optional()
        .map_err(backend)?;
    row.map(|(version, list)| {
        Ok(DeviceListRecord {
            version: from_sql(version, "device list version")?,
            list: list.into(),
        })
    })
    .transpose()
}

pub(crate) fn set_device_list(
    conn: &Connection,
    user: UserId,
    record: &DeviceListRecord,
    linked: &[DeviceId],
) -> StoreResult<()> {
    if !user_exists(conn, user)? {
        return Err(StoreError::NotFound);
    }
    if device_list(conn, user)?.is_some_and(|old| old.version >= record.version) {
        return Err(StoreError::Conflict);
    }
    conn.prepare_cached(
        "INSERT INTO device_lists (user_id, version, list) VALUES (?1, ?2, ?3)
         ON CONFLICT (user_id) DO UPDATE SET version = excluded.version, list = excluded.list",
    )
    .and_then(|mut s| {
        s.execute(params![
            to_sql(user.get()),
            to_sql(record.version),
            &record.list[..]
        ])
    })
    .map_err(backend)?;
    let user = to_sql(user.get());
    conn.prepare_cached("UPDATE devices SET linked = 0 WHERE user_id = ?1")
        .and_then(|mut s| s.execute([user]))
        .map_err(backend)?;
    let mut link = conn
        .prepare_cached("UPDATE devices SET linked = 1 WHERE id = ?1 AND user_id = ?2")
        .map_err(backend)?;
    for device in linked {
        link.execute([to_sql(device.get()), user])
            .map_err(backend)?;
    }
    Ok(())
}

pub(crate) fn set_link_payload(
    conn: &Connection,
    device: DeviceAddress,
    sealed: &[u8],
) -> StoreResult<()> {
    require_device(conn, device)?;
    conn.prepare_cached("UPDATE devices SET link_payload = ?2 WHERE id = ?1")
        .and_then(|mut s| s.execute(params![to_sql(device.device.get()), sealed]))
        .map_err(backend)?;
    Ok(())
}

pub(crate) fn link_payload(conn: &Connection, device: DeviceAddress) -> StoreResult<Option<Bytes>> {
    require_device(conn, device)?;
    let mut stmt = conn
        .prepare_cached("SELECT link_payload FROM devices WHERE id = ?1")
        .map_err(backend)?;
    let payload: Option<Vec<u8>> = stmt
        .query_row([to_sql(device.device.get())], |r| r.get(0))
        .map_err(backend)?;
    Ok(payload.map(Bytes::from))
}

pub(crate) fn set_device_keys(
    conn: &Connection,
    device: DeviceAddress,
    keys: &DeviceKeys,
) -> StoreResult<()> {
    require_device(conn, device)?;
    // One-time prekeys belong to the identity that published them: a new identity starts
    // with an empty pool, or peers would start sessions on keys the device no longer has.
    let mut drop_pool = conn
        .prepare_cached(
            "DELETE FROM one_time_prekeys WHERE device_id = ?1 AND EXISTS
                 (SELECT 1 FROM devices WHERE id = ?1 AND identity IS NOT ?2)",
        )
        .map_err(backend)?;
    drop_pool
        .execute(params![to_sql(device.device.get()), &keys.identity[..]])
        .map_err(backend)?;
    let mut stmt = conn
        .prepare_cached(
            "UPDATE devices SET identity = ?3, spk_id = ?4, spk_public = ?5, spk_signature = ?6
             WHERE id = ?1 AND user_id = ?2",
        )
        .map_err(backend)?;
    let spk = &keys.signed_prekey;
    stmt.execute(params![
        to_sql(device.device.get()),
        to_sql(device.user.get()),
        &keys.identity[..],
        i64::from(spk.id),
        &spk.public[..],
        &spk.signature[..],
    ])
    .map_err(backend)?;
    Ok(())
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

/// The bundles of `user`'s keyed devices, each claiming one one-time prekey when `claim`
/// (without, the statement that claims is not even prepared: this runs on read connections).
pub(crate) fn claim_bundles(
    conn: &Connection,
    user: UserId,
    claim: bool,
) -> StoreResult<Vec<PrekeyBundle>> {
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
    let mut claim = match claim {
        true => Some(
            conn.prepare_cached(
                "DELETE FROM one_time_prekeys WHERE device_id = ?1 AND key_id = (
                 SELECT key_id FROM one_time_prekeys WHERE device_id = ?1 ORDER BY key_id LIMIT 1)
             RETURNING key_id, public",
            )
            .map_err(backend)?,
        ),
        false => None,
    };
    let mut bundles = Vec::with_capacity(rows.len());
    for (id, identity, spk_id, spk_public, spk_signature) in rows {
        let one_time = match claim.as_mut() {
            Some(claim) => claim
                .query_row([id], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))
                .optional()
                .map_err(backend)?,
            None => None,
        };
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
