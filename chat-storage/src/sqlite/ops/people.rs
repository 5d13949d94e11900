//! Profiles, the directory and blocks (schema version 2).

use chat_core::{
    AttachmentId, Block, ConversationId, DisplayName, MessageId, NewMessage, Profile,
    ProfileUpdate, SearchCursor, SearchPrefix, StatusText, StoreError, StoreResult, Timestamp,
    UserId, Username,
};
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::{backend, ts, ts_sql, user_exists};
use crate::common::{array_from_sql, failure, from_sql, limit_sql, to_sql};

const PROFILE_COLUMNS: &str =
    "p.user_id, u.username, p.display_name, p.status, p.avatar, p.updated_at";

fn profile_row(r: &Row<'_>) -> StoreResult<Profile> {
    let get_text = |i: usize| r.get::<_, String>(i).map_err(backend);
    let status: Option<String> = r.get(3).map_err(backend)?;
    let avatar: Option<Vec<u8>> = r.get(4).map_err(backend)?;
    Ok(Profile {
        user: from_sql(r.get(0).map_err(backend)?, "user ID")?,
        username: Username::new(get_text(1)?)
            .map_err(|e| failure(format!("stored username: {e}")))?,
        display_name: DisplayName::from_stored(get_text(2)?),
        status: status.map(StatusText::from_stored),
        avatar: avatar
            .map(|a| array_from_sql(&a, "avatar").map(AttachmentId::from_bytes))
            .transpose()?,
        updated_at: ts(r.get(5).map_err(backend)?),
    })
}

pub(crate) fn set_profile(
    conn: &Connection,
    user: UserId,
    update: &ProfileUpdate,
    now: Timestamp,
) -> StoreResult<Profile> {
    if !user_exists(conn, user)? {
        return Err(StoreError::NotFound);
    }
    let mut stmt = conn
        .prepare_cached(
            "INSERT INTO profiles (user_id, display_name, search_key, status, avatar, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (user_id) DO UPDATE SET display_name = excluded.display_name,
                 search_key = excluded.search_key, status = excluded.status,
                 avatar = excluded.avatar, updated_at = excluded.updated_at",
        )
        .map_err(backend)?;
    stmt.execute(params![
        to_sql(user.get()),
        update.display_name.as_str(),
        update.display_name.search_key().as_str(),
        update.status.as_ref().map(StatusText::as_str),
        update.avatar.as_ref().map(|a| &a.as_bytes()[..]),
        ts_sql(now),
    ])
    .map_err(backend)?;
    profile(conn, user)?.ok_or_else(|| failure("profile vanished after writing it"))
}

pub(crate) fn profile(conn: &Connection, user: UserId) -> StoreResult<Option<Profile>> {
    let sql = format!(
        "SELECT {PROFILE_COLUMNS} FROM profiles p JOIN users u ON u.id = p.user_id
         WHERE p.user_id = ?1"
    );
    let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
    let mut rows = stmt.query([to_sql(user.get())]).map_err(backend)?;
    match rows.next().map_err(backend)? {
        Some(r) => profile_row(r).map(Some),
        None => Ok(None),
    }
}

pub(crate) fn search_profiles(
    conn: &Connection,
    prefix: &SearchPrefix,
    after: Option<&SearchCursor>,
    limit: usize,
) -> StoreResult<Vec<Profile>> {
    // Both bounds on search_key make the page one range scan of profiles_by_search_key;
    // the row-value comparison only skips within it.
    let (after_key, after_user) = match after {
        Some(c) if c.key.as_str() >= prefix.as_str() => (c.key.as_str(), to_sql(c.user.get())),
        _ => (prefix.as_str(), 0),
    };
    let upper = prefix.upper_bound();
    let upper_clause = if upper.is_some() {
        "AND p.search_key < ?4"
    } else {
        "AND ?4 IS NULL"
    };
    let sql = format!(
        "SELECT {PROFILE_COLUMNS} FROM profiles p JOIN users u ON u.id = p.user_id
         WHERE p.search_key >= ?1 {upper_clause} AND (p.search_key, p.user_id) > (?1, ?2)
         ORDER BY p.search_key, p.user_id LIMIT ?3"
    );
    let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
    let mut rows = stmt
        .query(params![after_key, after_user, limit_sql(limit), upper])
        .map_err(backend)?;
    let mut page = Vec::new();
    while let Some(r) = rows.next().map_err(backend)? {
        page.push(profile_row(r)?);
    }
    Ok(page)
}

pub(crate) fn block(
    conn: &Connection,
    blocker: UserId,
    blocked: UserId,
    now: Timestamp,
) -> StoreResult<bool> {
    if blocker == blocked {
        return Err(StoreError::Invalid("cannot block oneself"));
    }
    if !user_exists(conn, blocker)? || !user_exists(conn, blocked)? {
        return Err(StoreError::NotFound);
    }
    let mut stmt = conn
        .prepare_cached(
            "INSERT INTO blocks (blocker, blocked, created_at) VALUES (?1, ?2, ?3)
             ON CONFLICT DO NOTHING",
        )
        .map_err(backend)?;
    let n = stmt
        .execute(params![
            to_sql(blocker.get()),
            to_sql(blocked.get()),
            ts_sql(now)
        ])
        .map_err(backend)?;
    Ok(n == 1)
}

pub(crate) fn unblock(conn: &Connection, blocker: UserId, blocked: UserId) -> StoreResult<bool> {
    let mut stmt = conn
        .prepare_cached("DELETE FROM blocks WHERE blocker = ?1 AND blocked = ?2")
        .map_err(backend)?;
    let n = stmt
        .execute([to_sql(blocker.get()), to_sql(blocked.get())])
        .map_err(backend)?;
    Ok(n == 1)
}

pub(crate) fn blocks(conn: &Connection, blocker: UserId) -> StoreResult<Vec<Block>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT blocked, created_at FROM blocks WHERE blocker = ?1 ORDER BY blocked",
        )
        .map_err(backend)?;
    let rows = stmt
        .query_map([to_sql(blocker.get())], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
        })
        .map_err(backend)?;
    rows.map(|row| {
        let (user, at) = row.map_err(backend)?;
        Ok(Block {
            user: from_sql(user, "user ID")?,
            created_at: ts(at),
        })
    })
    .collect()
}

pub(crate) fn is_blocked(conn: &Connection, blocker: UserId, blocked: UserId) -> StoreResult<bool> {
    let mut stmt = conn
        .prepare_cached("SELECT 1 FROM blocks WHERE blocker = ?1 AND blocked = ?2")
        .map_err(backend)?;
    stmt.exists([to_sql(blocker.get()), to_sql(blocked.get())])
        .map_err(backend)
}

pub(crate) fn blocked_by(conn: &Connection, user: UserId) -> StoreResult<Vec<UserId>> {
    let mut stmt = conn
        .prepare_cached("SELECT blocker FROM blocks WHERE blocked = ?1 ORDER BY blocker")
        .map_err(backend)?;
    let rows = stmt
        .query_map([to_sql(user.get())], |r| r.get::<_, i64>(0))
        .map_err(backend)?;
    rows.map(|row| from_sql(row.map_err(backend)?, "user ID"))
        .collect()
}

pub(crate) fn withheld(
    conn: &Connection,
    conversation: ConversationId,
    user: UserId,
    ids: &[MessageId],
) -> StoreResult<Vec<MessageId>> {
    let (Some(low), Some(high)) = (ids.iter().min(), ids.iter().max()) else {
        return Ok(Vec::new());
    };
    let mut stmt = conn
        .prepare_cached(
            "SELECT id FROM messages
             WHERE conversation_id = ?1 AND id BETWEEN ?2 AND ?3 AND withheld_from = ?4",
        )
        .map_err(backend)?;
    let rows = stmt
        .query_map(
            [
                to_sql(conversation.get()),
                to_sql(low.get()),
                to_sql(high.get()),
                to_sql(user.get()),
            ],
            |r| r.get::<_, i64>(0),
        )
        .map_err(backend)?;
    let mut found = Vec::new();
    for row in rows {
        let id: MessageId = from_sql(row.map_err(backend)?, "message ID")?;
        if ids.contains(&id) {
            found.push(id);
        }
    }
    Ok(found)
}

/// In a one-to-one conversation, the other member when they block the sender: the append
/// then writes no inbox entry for their devices and records the message as withheld.
pub(crate) fn withheld_from(
    conn: &Connection,
    message: &NewMessage,
) -> StoreResult<Option<UserId>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT m.user_id FROM conversations c
             JOIN members m ON m.conversation_id = c.id
             JOIN blocks b ON b.blocker = m.user_id AND b.blocked = ?2
             WHERE c.id = ?1 AND c.kind = 0 AND m.user_id <> ?2",
        )
        .map_err(backend)?;
    let user: Option<i64> = stmt
        .query_row(
            [
                to_sql(message.conversation.get()),
                to_sql(message.sender.user.get()),
            ],
            |r| r.get(0),
        )
        .optional()
        .map_err(backend)?;
    user.map(|u| from_sql(u, "user ID")).transpose()
}
