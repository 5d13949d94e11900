//! Profiles, the directory and blocks (schema version 2).
//!
//! `profiles.search_key` is declared `COLLATE "C"`: byte order, which for UTF-8 is code-point
//! order, the order `SearchPrefix::upper_bound` assumes, and the collation a b-tree index
//! needs to serve `>=`/`<` ranges (a linguistic collation would not). A page is one range
//! scan of `profiles_by_search_key`.

use chat_core::{
    AttachmentId, Block, ConversationId, DisplayName, MessageId, Profile, ProfileUpdate,
    SearchCursor, SearchPrefix, StatusText, Username,
};

use super::*;

/// Upserts a profile of an existing user and returns the username (no row: no such user).
pub(super) const SET_PROFILE: &str = "WITH u AS (SELECT id, username FROM users WHERE id = $1),
    p AS (
        INSERT INTO profiles (user_id, display_name, search_key, status, avatar, updated_at)
        SELECT id, $2, $3, $4, $5, $6 FROM u
        ON CONFLICT (user_id) DO UPDATE SET display_name = EXCLUDED.display_name,
            search_key = EXCLUDED.search_key, status = EXCLUDED.status,
            avatar = EXCLUDED.avatar, updated_at = EXCLUDED.updated_at
        RETURNING user_id)
    SELECT u.username FROM u JOIN p ON p.user_id = u.id";
pub(super) const PROFILE: &str = "SELECT p.user_id, u.username, p.display_name, p.status,
        p.avatar, p.updated_at
    FROM profiles p JOIN users u ON u.id = p.user_id WHERE p.user_id = $1";
pub(super) const SEARCH: &str = "SELECT p.user_id, u.username, p.display_name, p.status,
        p.avatar, p.updated_at
    FROM profiles p JOIN users u ON u.id = p.user_id
    WHERE p.search_key >= $1 AND p.search_key < $4 AND (p.search_key, p.user_id) > ($1, $2)
    ORDER BY p.search_key, p.user_id LIMIT $3";
/// [`SEARCH`] for a prefix without an upper bound (all `U+10FFFF`).
pub(super) const SEARCH_UNBOUNDED: &str = "SELECT p.user_id, u.username, p.display_name,
        p.status, p.avatar, p.updated_at
    FROM profiles p JOIN users u ON u.id = p.user_id
    WHERE p.search_key >= $1 AND (p.search_key, p.user_id) > ($1, $2)
    ORDER BY p.search_key, p.user_id LIMIT $3";
pub(super) const USER_EXISTS: &str = "SELECT count(*) FROM users WHERE id = ANY($1)";
pub(super) const BLOCK: &str = "INSERT INTO blocks (blocker, blocked, created_at)
    VALUES ($1, $2, $3) ON CONFLICT DO NOTHING";
pub(super) const UNBLOCK: &str = "DELETE FROM blocks WHERE blocker = $1 AND blocked = $2";
pub(super) const BLOCKS: &str =
    "SELECT blocked, created_at FROM blocks WHERE blocker = $1 ORDER BY blocked";
pub(super) const IS_BLOCKED: &str = "SELECT 1 FROM blocks WHERE blocker = $1 AND blocked = $2";
pub(super) const BLOCKED_BY: &str =
    "SELECT blocker FROM blocks WHERE blocked = $1 ORDER BY blocker";
pub(super) const WITHHELD: &str = "SELECT id FROM messages
    WHERE conversation_id = $1 AND id = ANY($2) AND withheld_from = $3";

fn profile_row(row: &Row) -> StoreResult<Profile> {
    let status: Option<String> = get(row, 3)?;
    let avatar: Option<Vec<u8>> = get(row, 4)?;
    Ok(Profile {
        user: from_sql(get(row, 0)?, "user ID")?,
        username: Username::new(get::<String>(row, 1)?)
            .map_err(|e| failure(format!("stored username: {e}")))?,
        display_name: DisplayName::from_stored(get(row, 2)?),
        status: status.map(StatusText::from_stored),
        avatar: avatar
            .map(|a| array_from_sql(&a, "avatar").map(AttachmentId::from_bytes))
            .transpose()?,
        updated_at: ts(get(row, 5)?),
    })
}

pub(crate) async fn set_profile(
    db: &Db<'_>,
    user: UserId,
    update: &ProfileUpdate,
    now: Timestamp,
) -> StoreResult<Profile> {
    let key = update.display_name.search_key();
    let avatar = update.avatar.as_ref().map(|a| &a.as_bytes()[..]);
    let params: Params<'_> = &[
        &to_sql(user.get()),
        &update.display_name.as_str(),
        &key.as_str(),
        &update.status.as_ref().map(StatusText::as_str),
        &avatar,
        &ts_sql(now),
    ];
    let row = db.opt(SET_PROFILE, params).await?;
    let Some(row) = row else {
        return Err(StoreError::NotFound);
    };
    let username = Username::new(get::<String>(&row, 0)?)
        .map_err(|e| failure(format!("stored username: {e}")))?;
    Ok(Profile {
        user,
        username,
        display_name: update.display_name.clone(),
        status: update.status.clone(),
        avatar: update.avatar,
        updated_at: now,
    })
}

pub(crate) async fn profile(db: &Db<'_>, user: UserId) -> StoreResult<Option<Profile>> {
    db.opt(PROFILE, &[&to_sql(user.get())])
        .await?
        .map(|row| profile_row(&row))
        .transpose()
}

pub(crate) async fn search_profiles(
    db: &Db<'_>,
    prefix: &SearchPrefix,
    after: Option<&SearchCursor>,
    limit: usize,
) -> StoreResult<Vec<Profile>> {
    let (after_key, after_user) = match after {
        Some(c) if c.key.as_str() >= prefix.as_str() => (c.key.as_str(), to_sql(c.user.get())),
        _ => (prefix.as_str(), 0),
    };
    let limit = limit_sql(limit);
    let rows = match prefix.upper_bound() {
        Some(upper) => {
            let params: Params<'_> = &[&after_key, &after_user, &limit, &upper];
            db.query(SEARCH, params).await?
        }
        None => {
            let params: Params<'_> = &[&after_key, &after_user, &limit];
            db.query(SEARCH_UNBOUNDED, params).await?
        }
    };
    rows.iter().map(profile_row).collect()
}

pub(crate) async fn block(
    db: &Db<'_>,
    blocker: UserId,
    blocked: UserId,
    now: Timestamp,
) -> StoreResult<bool> {
    if blocker == blocked {
        return Err(StoreError::Invalid("cannot block oneself"));
    }
    let ids = ids_sql(&[blocker, blocked]);
    let row = db.opt(USER_EXISTS, &[&ids]).await?;
    let n: i64 = row.map(|r| get(&r, 0)).transpose()?.unwrap_or(0);
    if n != 2 {
        return Err(StoreError::NotFound);
    }
    let params: Params<'_> = &[&to_sql(blocker.get()), &to_sql(blocked.get()), &ts_sql(now)];
    Ok(db.exec(BLOCK, params).await? == 1)
}

pub(crate) async fn unblock(db: &Db<'_>, blocker: UserId, blocked: UserId) -> StoreResult<bool> {
    let params: Params<'_> = &[&to_sql(blocker.get()), &to_sql(blocked.get())];
    Ok(db.exec(UNBLOCK, params).await? == 1)
}

pub(crate) async fn blocks(db: &Db<'_>, blocker: UserId) -> StoreResult<Vec<Block>> {
    let rows = db.query(BLOCKS, &[&to_sql(blocker.get())]).await?;
    rows.iter()
        .map(|r| {
            Ok(Block {
                user: from_sql(get(r, 0)?, "user ID")?,
                created_at: ts(get(r, 1)?),
            })
        })
        .collect()
}

pub(crate) async fn is_blocked(db: &Db<'_>, blocker: UserId, blocked: UserId) -> StoreResult<bool> {
    let params: Params<'_> = &[&to_sql(blocker.get()), &to_sql(blocked.get())];
    Ok(db.opt(IS_BLOCKED, params).await?.is_some())
}

pub(crate) async fn blocked_by(db: &Db<'_>, user: UserId) -> StoreResult<Vec<UserId>> {
    let rows = db.query(BLOCKED_BY, &[&to_sql(user.get())]).await?;
    rows.iter()
        .map(|r| from_sql(get(r, 0)?, "user ID"))
        .collect()
}

pub(crate) async fn withheld(
    db: &Db<'_>,
    conversation: ConversationId,
    user: UserId,
    ids: &[MessageId],
) -> StoreResult<Vec<MessageId>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let params: Params<'_> = &[
        &to_sql(conversation.get()),
        &ids_sql(ids),
        &to_sql(user.get()),
    ];
    let rows = db.query(WITHHELD, params).await?;
    rows.iter()
        .map(|r| from_sql(get(r, 0)?, "message ID"))
        .collect()
}
