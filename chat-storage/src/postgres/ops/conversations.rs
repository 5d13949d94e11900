//! Conversations, membership, messages, inboxes and receipts.

use super::*;

// ---- conversations --------------------------------------------------------------------

fn conversation_from_row(row: &Row) -> StoreResult<Conversation> {
    let last_id: i64 = get(row, 3)?;
    Ok(Conversation {
        id: from_sql(get(row, 0)?, "conversation ID")?,
        kind: kind_from_sql(get(row, 1)?)?,
        created_at: ts(get(row, 2)?),
        last_message: if last_id == 0 {
            None
        } else {
            Some(from_sql(last_id, "message ID")?)
        },
    })
}

/// Checks that the users exist and share-locks their rows until commit: see the module
/// docs on lock order.
async fn require_users(db: &Db<'_>, users: &[UserId]) -> StoreResult<()> {
    let mut ids = ids_sql(users);
    ids.sort_unstable();
    ids.dedup();
    let row = db.opt(LOCK_USERS_SHARE, &[&ids]).await?;
    let n: i64 = row.map(|r| get(&r, 0)).transpose()?.unwrap_or(0);
    if usize::try_from(n).ok() == Some(ids.len()) {
        Ok(())
    } else {
        Err(StoreError::NotFound)
    }
}

async fn new_conversation(
    db: &Db<'_>,
    kind: ConversationKind,
    members: &[UserId],
    now: Timestamp,
) -> StoreResult<Conversation> {
    let row = db
        .opt(INSERT_CONVERSATION, &[&kind_sql(kind), &ts_sql(now)])
        .await?
        .ok_or_else(|| failure("insert returned no row"))?;
    let id: i64 = get(&row, 0)?;
    db.exec(INSERT_MEMBERS, &[&id, &ids_sql(members)]).await?;
    let id = from_sql(id, "conversation ID")?;
    Ok(Conversation {
        id,
        kind,
        created_at: now,
        last_message: None,
    })
}

pub(crate) async fn open_direct(
    db: &Db<'_>,
    a: UserId,
    b: UserId,
    now: Timestamp,
) -> StoreResult<Conversation> {
    require_users(db, &[a, b]).await?;
    let (low, high) = (a.min(b), a.max(b));
    let pair: Params<'_> = &[&to_sql(low.get()), &to_sql(high.get())];
    if let Some(row) = db.opt(FIND_DIRECT, pair).await? {
        return conversation_from_row(&row);
    }
    let conversation = new_conversation(db, ConversationKind::Direct, &[low, high], now).await?;
    let params: Params<'_> = &[
        &to_sql(low.get()),
        &to_sql(high.get()),
        &to_sql(conversation.id.get()),
    ];
    if db.exec(INSERT_DIRECT_PAIR, params).await? == 0 {
        // Another transaction opened it first; run again to find theirs.
        return Err(StoreError::backend(Retry));
    }
    Ok(conversation)
}

pub(crate) async fn create_group(
    db: &Db<'_>,
    creator: UserId,
    members: &[UserId],
    limit: usize,
    now: Timestamp,
) -> StoreResult<Conversation> {
    let group = plan_group(creator, members, limit)?;
    let all: Vec<UserId> = group.members().map(|(u, _)| u).collect();
    require_users(db, &all).await?;
    let conversation = new_conversation(db, ConversationKind::Group, &all, now).await?;
    write_group(db, conversation.id, None, &group).await?;
    Ok(conversation)
}

/// Writes `new` over `old` (`None`: every member is written): the member rows that
/// changed and the group's name, settings and join counter.
async fn write_group(
    db: &Db<'_>,
    conversation: ConversationId,
    old: Option<&GroupState>,
    new: &GroupState,
) -> StoreResult<()> {
    let id = to_sql(conversation.get());
    let diff = match old {
        Some(old) => group_diff(old, new),
        None => GroupDiff {
            removed: Vec::new(),
            upserted: new.members().collect(),
        },
    };
    for user in diff.removed {
        db.exec(REMOVE_MEMBER, &[&id, &to_sql(user.get())]).await?;
    }
    for (user, info) in diff.upserted {
        let role = small(role_sql(info.role));
        let params: Params<'_> = &[&id, &to_sql(user.get()), &role, &to_sql(info.joined)];
        db.exec(UPSERT_MEMBER, params).await?;
    }
    let settings = new.settings();
    let params: Params<'_> = &[
        &id,
        &new.name(),
        &small(permission_sql(settings.add_members)),
        &small(permission_sql(settings.edit_name)),
        &to_sql(new.admitted()),
    ];
    db.exec(UPDATE_GROUP, params).await?;
    Ok(())
}

/// A small enumeration's column value (`smallint`).
fn small(value: i64) -> i16 {
    i16::try_from(value).unwrap_or(i16::MAX)
}

/// A group's state as stored. With `lock`, holds the group's row until commit (membership
/// changes serialise on it, and with appends).
pub(crate) async fn group(
    db: &Db<'_>,
    conversation: ConversationId,
    lock: bool,
) -> StoreResult<GroupState> {
    group_and_head(db, conversation, lock)
        .await
        .map(|(state, _)| state)
}

/// A group's state and the head of its chain of signed changes (`None` before the first),
/// read together; `lock` as for [`group`].
async fn group_and_head(
    db: &Db<'_>,
    conversation: ConversationId,
    lock: bool,
) -> StoreResult<(GroupState, Option<[u8; 32]>)> {
    let id = to_sql(conversation.get());
    if lock {
        lock_group(db, conversation).await?;
    }
    let row = db.opt(GROUP, &[&id]).await?.ok_or(StoreError::NotFound)?;
    if kind_from_sql(get(&row, 0)?)? != ConversationKind::Group {
        return Err(StoreError::Invalid(
            "a one-to-one conversation has no group state",
        ));
    }
    let add: i16 = get(&row, 2)?;
    let edit: i16 = get(&row, 3)?;
    let settings = GroupSettings {
        add_members: permission_from_sql(add.into())?,
        edit_name: permission_from_sql(edit.into())?,
    };
    let mut members = BTreeMap::new();
    for r in db.query(GROUP_MEMBERS, &[&id]).await? {
        let role: i16 = get(&r, 1)?;
        members.insert(
            from_sql(get(&r, 0)?, "user ID")?,
            MemberInfo {
                role: role_from_sql(role.into())?,
                joined: from_sql(get(&r, 2)?, "join number")?,
            },
        );
    }
    let head = get::<Option<Vec<u8>>>(&row, 5)?
        .map(|h| array_from_sql(&h, "group chain head"))
        .transpose()?;
    let state = group_from_parts(
        get(&row, 1)?,
        settings,
        members,
        from_sql(get(&row, 4)?, "join counter")?,
    )?;
    Ok((state, head))
}

/// Decides with `common::plan_group_change` on what it read under the group's row lock,
/// then writes the state and, for a signed change, the chain's new link, all in the
/// caller's transaction.
pub(crate) async fn change_group(
    db: &Db<'_>,
    conversation: ConversationId,
    actor: UserId,
    op: &GroupOp,
    limit: usize,
    link: Option<&ChainLink>,
) -> StoreResult<GroupState> {
    if let GroupOp::Add(users) = op {
        require_users(db, users).await?;
    }
    let (current, head) = group_and_head(db, conversation, true).await?;
    let next = plan_group_change(&current, head.as_ref(), actor, op, limit, link)?;
    write_group(db, conversation, Some(&current), &next).await?;
    if let Some(link) = link {
        let params: Params<'_> = &[
            &to_sql(conversation.get()),
            &&link.change[..],
            &&link.head[..],
        ];
        db.exec(APPEND_GROUP_CHANGE, params).await?;
    }
    Ok(next)
}

pub(crate) async fn group_changes(
    db: &Db<'_>,
    conversation: ConversationId,
    after: u64,
    limit: usize,
) -> StoreResult<Vec<(u64, Bytes)>> {
    let params: Params<'_> = &[
        &to_sql(conversation.get()),
        &to_sql(after),
        &limit_sql(limit),
    ];
    let rows = db.query(GROUP_CHANGES, params).await?;
    if rows.is_empty() {
        // Only an empty page needs to tell "no changes" from "no such group".
        let found = self::conversation(db, conversation).await?;
        match found.ok_or(StoreError::NotFound)?.kind {
            ConversationKind::Group => {}
            ConversationKind::Direct => {
                return Err(StoreError::Invalid(
                    "a one-to-one conversation has no group changes",
                ));
            }
        }
    }
    rows.iter()
        .map(|row| {
            Ok((
                from_sql(get(row, 0)?, "group change number")?,
                Bytes::from(get::<Vec<u8>>(row, 1)?),
            ))
        })
        .collect()
}

/// Locks a group's row (serialising with appends and other membership changes).
async fn lock_group(db: &Db<'_>, conversation: ConversationId) -> StoreResult<()> {
    let row = db
        .opt(LOCK_CONVERSATION, &[&to_sql(conversation.get())])
        .await?;
    match kind_from_sql(get(&row.ok_or(StoreError::NotFound)?, 0)?)? {
        ConversationKind::Group => Ok(()),
        ConversationKind::Direct => Err(StoreError::Invalid(
            "members of a one-to-one conversation are fixed",
        )),
    }
}

pub(crate) async fn conversation(
    db: &Db<'_>,
    conversation: ConversationId,
) -> StoreResult<Option<Conversation>> {
    let row = db.opt(CONVERSATION, &[&to_sql(conversation.get())]).await?;
    row.as_ref().map(conversation_from_row).transpose()
}

async fn require_conversation(db: &Db<'_>, id: ConversationId) -> StoreResult<()> {
    match conversation(db, id).await? {
        Some(_) => Ok(()),
        None => Err(StoreError::NotFound),
    }
}

pub(crate) async fn members(db: &Db<'_>, conversation: ConversationId) -> StoreResult<Vec<UserId>> {
    require_conversation(db, conversation).await?;
    let rows = db.query(MEMBERS, &[&to_sql(conversation.get())]).await?;
    rows.iter()
        .map(|r| from_sql(get(r, 0)?, "user ID"))
        .collect()
}

pub(crate) async fn is_member(
    db: &Db<'_>,
    conversation: ConversationId,
    user: UserId,
) -> StoreResult<bool> {
    let params: Params<'_> = &[&to_sql(conversation.get()), &to_sql(user.get())];
    Ok(db.opt(IS_MEMBER, params).await?.is_some())
}

pub(crate) async fn conversations_of(db: &Db<'_>, user: UserId) -> StoreResult<Vec<Conversation>> {
    let rows = db.query(CONVERSATIONS_OF, &[&to_sql(user.get())]).await?;
    rows.iter().map(conversation_from_row).collect()
}

// ---- messages -------------------------------------------------------------------------

fn envelope(row: &Row, start: usize) -> StoreResult<Envelope> {
    let client_key: Vec<u8> = get(row, start + 4)?;
    Ok(Envelope {
        conversation: from_sql(get(row, start)?, "conversation ID")?,
        id: from_sql(get(row, start + 1)?, "message ID")?,
        sender: DeviceAddress {
            user: from_sql(get(row, start + 2)?, "user ID")?,
            device: from_sql(get(row, start + 3)?, "device ID")?,
        },
        client_key: ClientKey::from_bytes(array_from_sql(&client_key, "client key")?),
        sent_at: ts(get(row, start + 5)?),
        body: Bytes::from(get::<Vec<u8>>(row, start + 6)?),
    })
}

pub(crate) async fn inbox(
    db: &Db<'_>,
    device: DeviceAddress,
    after: InboxPos,
    limit: usize,
) -> StoreResult<Vec<InboxEntry>> {
    let params: Params<'_> = &[
        &to_sql(device.device.get()),
        &to_sql(after.get()),
        &limit_sql(limit),
    ];
    let rows = db.query(INBOX, params).await?;
    if rows.is_empty() {
        // Only an empty page needs to tell "nothing new" from "no such device".
        require_device(db, device).await?;
    }
    rows.iter()
        .map(|row| {
            Ok(InboxEntry {
                pos: from_sql(get(row, 0)?, "inbox position")?,
                header: Bytes::from(get::<Vec<u8>>(row, 1)?),
                envelope: envelope(row, 2)?,
            })
        })
        .collect()
}

/// A device's inbox head, cursor and trim floor.
async fn positions(db: &Db<'_>, device: DeviceAddress) -> StoreResult<[InboxPos; 3]> {
    let params: Params<'_> = &[&to_sql(device.device.get()), &to_sql(device.user.get())];
    let row = db
        .opt(DEVICE_POSITIONS, params)
        .await?
        .ok_or(StoreError::NotFound)?;
    Ok([
        from_sql(get(&row, 0)?, "inbox head")?,
        from_sql(get(&row, 1)?, "cursor")?,
        from_sql(get(&row, 2)?, "inbox floor")?,
    ])
}

pub(crate) async fn inbox_head(db: &Db<'_>, device: DeviceAddress) -> StoreResult<InboxPos> {
    let [head, _, _] = positions(db, device).await?;
    Ok(head)
}

pub(crate) async fn cursor(db: &Db<'_>, device: DeviceAddress) -> StoreResult<InboxPos> {
    let [_, cursor, _] = positions(db, device).await?;
    Ok(cursor)
}

pub(crate) async fn inbox_floor(db: &Db<'_>, device: DeviceAddress) -> StoreResult<InboxPos> {
    let [_, _, floor] = positions(db, device).await?;
    Ok(floor)
}

/// One trim batch, in one transaction: the candidates (no locks), their devices locked in
/// ID order, then the delete and the floors in one statement. A candidate another node
/// trimmed meanwhile is simply not deleted again.
pub(crate) async fn trim_inboxes(
    db: &Db<'_>,
    sent_before: Timestamp,
    limit: usize,
) -> StoreResult<u64> {
    let cutoff = ts_sql(sent_before);
    let rows = db
        .query(TRIM_CANDIDATES, &[&cutoff, &limit_sql(limit)])
        .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut devices = Vec::with_capacity(rows.len());
    let mut positions = Vec::with_capacity(rows.len());
    for row in &rows {
        devices.push(get::<i64>(row, 0)?);
        positions.push(get::<i64>(row, 1)?);
    }
    let mut lock = devices.clone();
    lock.sort_unstable();
    lock.dedup();
    db.query(LOCK_DEVICES, &[&lock]).await?;
    let row = db
        .opt(TRIM, &[&devices, &positions])
        .await?
        .ok_or_else(|| failure("trim returned no row"))?;
    Ok(u64::try_from(get::<i64>(&row, 0)?).unwrap_or(0))
}

pub(crate) async fn ack(
    db: &Db<'_>,
    device: DeviceAddress,
    up_to: InboxPos,
) -> StoreResult<InboxPos> {
    let params: Params<'_> = &[
        &to_sql(device.device.get()),
        &to_sql(device.user.get()),
        &to_sql(up_to.get()),
    ];
    let row = db.opt(ACK, params).await?.ok_or(StoreError::NotFound)?;
    from_sql(get(&row, 0)?, "cursor")
}

/// One statement (its own transaction) for a batch of acknowledgements; see [`ACK_ALL`].
pub(crate) async fn ack_all(db: &Db<'_>, acks: &[(DeviceAddress, InboxPos)]) -> StoreResult<()> {
    let devices: Vec<i64> = acks.iter().map(|(d, _)| to_sql(d.device.get())).collect();
    let users: Vec<i64> = acks.iter().map(|(d, _)| to_sql(d.user.get())).collect();
    let positions: Vec<i64> = acks.iter().map(|(_, p)| to_sql(p.get())).collect();
    db.exec(ACK_ALL, &[&devices, &users, &positions]).await?;
    Ok(())
}

pub(crate) async fn history(
    db: &Db<'_>,
    conversation: ConversationId,
    anchor: MessageId,
    direction: Direction,
    limit: usize,
) -> StoreResult<Vec<Envelope>> {
    let sql = match direction {
        Direction::Before => HISTORY_BEFORE,
        Direction::After => HISTORY_AFTER,
    };
    let params: Params<'_> = &[
        &to_sql(conversation.get()),
        &to_sql(anchor.get()),
        &limit_sql(limit),
    ];
    let rows = db.query(sql, params).await?;
    if rows.is_empty() {
        require_conversation(db, conversation).await?;
    }
    rows.iter().map(|row| envelope(row, 0)).collect()
}

pub(crate) async fn message(
    db: &Db<'_>,
    conversation: ConversationId,
    id: MessageId,
) -> StoreResult<Option<Envelope>> {
    let params: Params<'_> = &[&to_sql(conversation.get()), &to_sql(id.get())];
    db.opt(MESSAGE, params)
        .await?
        .map(|row| envelope(&row, 0))
        .transpose()
}

// ---- receipts -------------------------------------------------------------------------

pub(crate) async fn set_receipt(
    db: &Db<'_>,
    conversation: ConversationId,
    user: UserId,
    kind: ReceiptKind,
    up_to: MessageId,
) -> StoreResult<MessageId> {
    require_conversation(db, conversation).await?;
    if !is_member(db, conversation, user).await? {
        return Err(StoreError::NotMember);
    }
    let params: Params<'_> = &[
        &to_sql(conversation.get()),
        &to_sql(user.get()),
        &i16::from(kind.number()),
        &to_sql(up_to.get()),
    ];
    let row = db
        .opt(SET_RECEIPT, params)
        .await?
        .ok_or_else(|| failure("upsert returned no row"))?;
    from_sql(get(&row, 0)?, "receipt position")
}

pub(crate) async fn receipts(
    db: &Db<'_>,
    conversation: ConversationId,
) -> StoreResult<Vec<ReceiptPosition>> {
    require_conversation(db, conversation).await?;
    let rows = db.query(RECEIPTS, &[&to_sql(conversation.get())]).await?;
    rows.iter()
        .map(|row| {
            let kind: i16 = get(row, 1)?;
            let kind = u8::try_from(kind)
                .ok()
                .and_then(ReceiptKind::from_number)
                .ok_or_else(|| failure(format!("stored receipt kind {kind} is unknown")))?;
            Ok(ReceiptPosition {
                user: from_sql(get(row, 0)?, "user ID")?,
                kind,
                up_to: from_sql(get(row, 2)?, "receipt position")?,
            })
        })
        .collect()
}
