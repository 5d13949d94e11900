//! Conversations, membership, messages, inboxes and receipts.

use super::*;

// ---- conversations --------------------------------------------------------------------

/// What [`conversation_from_row`] reads from a `conversations c` row: the last message ID is
/// the conversation's highest (`conversations.last_id` is no longer written; see `append`).
const CONVERSATION_COLUMNS: &str = "c.id, c.kind, c.created_at, \
     (SELECT COALESCE(MAX(id), 0) FROM messages WHERE conversation_id = c.id)";

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
        .prepare_cached(&format!(
            "SELECT {CONVERSATION_COLUMNS} FROM conversations c
             WHERE c.direct_low = ?1 AND c.direct_high = ?2"
        ))
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
    let group = plan_group(creator, members, limit)?;
    let all: Vec<UserId> = group.members().map(|(u, _)| u).collect();
    require_users(conn, &all)?;
    let conversation = new_conversation(conn, ConversationKind::Group, None, &all, now)?;
    write_group(conn, conversation.id, None, &group)?;
    Ok(conversation)
}

/// Writes `new` over `old` (`None`: every member is written): the member rows that
/// changed and the group's name, settings and join counter.
fn write_group(
    conn: &Connection,
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
    let mut remove = conn
        .prepare_cached("DELETE FROM members WHERE conversation_id = ?1 AND user_id = ?2")
        .map_err(backend)?;
    for user in diff.removed {
        remove.execute([id, to_sql(user.get())]).map_err(backend)?;
    }
    let mut upsert = conn
        .prepare_cached(
            "INSERT INTO members (conversation_id, user_id, role, joined) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (conversation_id, user_id)
             DO UPDATE SET role = excluded.role, joined = excluded.joined",
        )
        .map_err(backend)?;
    for (user, info) in diff.upserted {
        upsert
            .execute([
                id,
                to_sql(user.get()),
                role_sql(info.role),
                to_sql(info.joined),
            ])
            .map_err(backend)?;
    }
    let settings = new.settings();
    conn.prepare_cached(
        "UPDATE conversations SET group_name = ?2, add_members = ?3, edit_name = ?4,
         admitted = ?5 WHERE id = ?1",
    )
    .map_err(backend)?
    .execute(params![
        id,
        new.name(),
        permission_sql(settings.add_members),
        permission_sql(settings.edit_name),
        to_sql(new.admitted()),
    ])
    .map_err(backend)?;
    Ok(())
}

/// A group's state as stored.
pub(crate) fn group(conn: &Connection, conversation: ConversationId) -> StoreResult<GroupState> {
    group_and_head(conn, conversation).map(|(state, _)| state)
}

/// A group's state and the head of its chain of signed changes (`None` before the first).
fn group_and_head(
    conn: &Connection,
    conversation: ConversationId,
) -> StoreResult<(GroupState, Option<[u8; 32]>)> {
    require_group(conn, conversation)?;
    let id = to_sql(conversation.get());
    type Columns = (String, i64, i64, i64, Option<Vec<u8>>);
    let (name, add, edit, admitted, head): Columns = conn
        .prepare_cached(
            "SELECT group_name, add_members, edit_name, admitted, group_head
             FROM conversations WHERE id = ?1",
        )
        .map_err(backend)?
        .query_row([id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .map_err(backend)?;
    let head = head
        .map(|h| array_from_sql(&h, "group chain head"))
        .transpose()?;
    let mut stmt = conn
        .prepare_cached("SELECT user_id, role, joined FROM members WHERE conversation_id = ?1")
        .map_err(backend)?;
    let rows = stmt
        .query_map([id], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })
        .map_err(backend)?;
    let mut members = BTreeMap::new();
    for row in rows {
        let (user, role, joined) = row.map_err(backend)?;
        members.insert(
            from_sql(user, "user ID")?,
            MemberInfo {
                role: role_from_sql(role)?,
                joined: from_sql(joined, "join number")?,
            },
        );
    }
    let settings = GroupSettings {
        add_members: permission_from_sql(add)?,
        edit_name: permission_from_sql(edit)?,
    };
    let state = group_from_parts(name, settings, members, from_sql(admitted, "join counter")?)?;
    Ok((state, head))
}

/// Decides with `common::plan_group_change` (every check before the first write, as the
/// writer needs), then writes the state and, for a signed change, the chain's new link.
pub(crate) fn change_group(
    conn: &Connection,
    conversation: ConversationId,
    actor: UserId,
    op: &GroupOp,
    limit: usize,
    link: Option<&ChainLink>,
) -> StoreResult<GroupState> {
    if let GroupOp::Add(users) = op {
        require_users(conn, users)?;
    }
    let (current, head) = group_and_head(conn, conversation)?;
    let next = plan_group_change(&current, head.as_ref(), actor, op, limit, link)?;
    write_group(conn, conversation, Some(&current), &next)?;
    if let Some(link) = link {
        append_link(conn, conversation, link)?;
    }
    Ok(next)
}

/// Appends a signed change to its group's chain (the next sequence number; the single
/// writer makes it race-free) and makes its head the stored one.
fn append_link(
    conn: &Connection,
    conversation: ConversationId,
    link: &ChainLink,
) -> StoreResult<()> {
    let id = to_sql(conversation.get());
    conn.prepare_cached(
        "INSERT INTO group_changes (conversation_id, seq, change)
         SELECT ?1, coalesce(max(seq), 0) + 1, ?2 FROM group_changes WHERE conversation_id = ?1",
    )
    .map_err(backend)?
    .execute(params![id, &link.change[..]])
    .map_err(backend)?;
    conn.prepare_cached("UPDATE conversations SET group_head = ?2 WHERE id = ?1")
        .map_err(backend)?
        .execute(params![id, &link.head[..]])
        .map_err(backend)?;
    Ok(())
}

pub(crate) fn group_changes(
    conn: &Connection,
    conversation: ConversationId,
    after: u64,
    limit: usize,
) -> StoreResult<Vec<(u64, Bytes)>> {
    if conversation_kind(conn, conversation)? != ConversationKind::Group {
        return Err(StoreError::Invalid(
            "a one-to-one conversation has no group changes",
        ));
    }
    let mut stmt = conn
        .prepare_cached(
            "SELECT seq, change FROM group_changes
             WHERE conversation_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )
        .map_err(backend)?;
    let rows = stmt
        .query_map(
            [to_sql(conversation.get()), to_sql(after), limit_sql(limit)],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)),
        )
        .map_err(backend)?;
    rows.map(|row| {
        let (seq, change) = row.map_err(backend)?;
        Ok((from_sql(seq, "group change number")?, Bytes::from(change)))
    })
    .collect()
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

pub(crate) fn conversation(
    conn: &Connection,
    conversation: ConversationId,
) -> StoreResult<Option<Conversation>> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {CONVERSATION_COLUMNS} FROM conversations c WHERE c.id = ?1"
        ))
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
        .prepare_cached(&format!(
            "SELECT {CONVERSATION_COLUMNS} FROM members m
             JOIN conversations c ON c.id = m.conversation_id
             WHERE m.user_id = ?1 ORDER BY c.id"
        ))
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
            "SELECT conversation_id, id, sent_at FROM messages
             WHERE sender_device = ?1 AND client_key = ?2",
        )
        .map_err(backend)?;
    let first = dup
        .query_row(
            params![sender_device, &message.client_key.as_bytes()[..]],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            },
        )
        .optional()
        .map_err(backend)?;
    if let Some((conversation, id, sent_at)) = first {
        if conversation != to_sql(message.conversation.get()) {
            return Err(StoreError::ClientKeyReused);
        }
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
             WHERE m.conversation_id = ?1 AND d.linked",
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
    // The sending device is among the current devices exactly when it exists, is linked,
    // the conversation exists and the sender is a member; only a refusal needs to say which.
    if !devices.contains(&message.sender) {
        require_device(conn, message.sender)?;
        conversation_kind(conn, message.conversation)?;
        return Err(
            if is_member(conn, message.conversation, message.sender.user)? {
                StoreError::NotLinked
            } else {
                StoreError::NotMember
            },
        );
    }
    check_coverage(&devices, message)?;
    let withheld_from = super::people::withheld_from(conn, message)?;

    // The next ID from the conversation's highest, read from the `messages_by_id` leaf the
    // insert below writes anyway: no counter row to dirty per message (`conversations.last_id`
    // is no longer kept). Messages are never deleted, so an ID is never handed out twice; a
    // deletion would have to leave the conversation's highest row in place.
    let mut allocate = conn
        .prepare_cached("SELECT COALESCE(MAX(id), 0) + 1 FROM messages WHERE conversation_id = ?1")
        .map_err(backend)?;
    let id_sql: i64 = allocate.query_row([conv], |r| r.get(0)).map_err(backend)?;
    let id: MessageId = from_sql(id_sql, "message ID")?;
    let mut insert = conn
        .prepare_cached(
            "INSERT INTO messages (conversation_id, id, sender_user, sender_device, client_key,
                 sent_at, body, withheld_from)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
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
            withheld_from.map(|u| to_sql(u.get())),
        ])
        .map_err(backend)?;
    let seq = conn.last_insert_rowid();
    // Each recipient's next position from its inbox's highest, read from the inbox leaf the
    // insert below writes anyway (or from its floor, when trimming emptied it): no device row
    // to dirty per delivery. See `HEAD`.
    let mut head = conn
        .prepare_cached(&format!("SELECT {HEAD} + 1 FROM devices d WHERE d.id = ?1"))
        .map_err(backend)?;
    let mut entry = conn
        .prepare_cached(
            "INSERT INTO inbox (device_id, pos, message_seq, header, sent_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .map_err(backend)?;
    let mut deliveries = Vec::with_capacity(message.recipients.len());
    for recipient in &message.recipients {
        if Some(recipient.device.user) == withheld_from {
            continue;
        }
        let device = to_sql(recipient.device.device.get());
        let pos: i64 = head.query_row([device], |r| r.get(0)).map_err(backend)?;
        entry
            .execute(params![
                device,
                pos,
                seq,
                &recipient.header[..],
                ts_sql(message.sent_at)
            ])
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

/// `value`, an expression over the device's row `devices d`, as an inbox position.
fn device_value(
    conn: &Connection,
    device: DeviceAddress,
    value: &str,
    what: &str,
) -> StoreResult<InboxPos> {
    let sql = format!("SELECT {value} FROM devices d WHERE d.id = ?1 AND d.user_id = ?2");
    let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
    let value: Option<i64> = stmt
        .query_row(
            [to_sql(device.device.get()), to_sql(device.user.get())],
            |r| r.get(0),
        )
        .optional()
        .map_err(backend)?;
    from_sql(value.ok_or(StoreError::NotFound)?, what)
}

/// A device's inbox head, the highest position ever assigned (the `devices d` row): its
/// inbox's highest entry, or, when trimming deleted every entry, the highest it deleted
/// (`inbox_floor`). Entries go only by trimming (oldest first) and with the device, so that
/// is the highest ever assigned. The `devices.inbox_head` column is no longer written.
const HEAD: &str =
    "max(COALESCE((SELECT MAX(pos) FROM inbox WHERE device_id = d.id), 0), d.inbox_floor)";

pub(crate) fn inbox_head(conn: &Connection, device: DeviceAddress) -> StoreResult<InboxPos> {
    device_value(conn, device, HEAD, "inbox head")
}

pub(crate) fn cursor(conn: &Connection, device: DeviceAddress) -> StoreResult<InboxPos> {
    device_value(conn, device, "d.cursor", "cursor")
}

pub(crate) fn inbox_floor(conn: &Connection, device: DeviceAddress) -> StoreResult<InboxPos> {
    device_value(conn, device, "d.inbox_floor", "inbox floor")
}

/// Deletes up to `limit` of the oldest entries stored before `sent_before` (one range of
/// `inbox_by_time`) and raises each affected device's floor, which keeps its head (see
/// `HEAD`) when every entry goes.
pub(crate) fn trim_inboxes(
    conn: &Connection,
    sent_before: Timestamp,
    limit: usize,
) -> StoreResult<u64> {
    let mut delete = conn
        .prepare_cached(
            "DELETE FROM inbox WHERE (device_id, pos) IN (
                 SELECT device_id, pos FROM inbox WHERE sent_at < ?1 ORDER BY sent_at LIMIT ?2)
             RETURNING device_id, pos",
        )
        .map_err(backend)?;
    let mut tops = std::collections::BTreeMap::<i64, i64>::new();
    let mut deleted = 0u64;
    let mut rows = delete
        .query([ts_sql(sent_before), limit_sql(limit)])
        .map_err(backend)?;
    while let Some(r) = rows.next().map_err(backend)? {
        let (device, pos): (i64, i64) = (r.get(0).map_err(backend)?, r.get(1).map_err(backend)?);
        let top = tops.entry(device).or_insert(pos);
        *top = (*top).max(pos);
        deleted += 1;
    }
    drop(rows);
    let mut raise = conn
        .prepare_cached("UPDATE devices SET inbox_floor = max(inbox_floor, ?2) WHERE id = ?1")
        .map_err(backend)?;
    for (device, top) in tops {
        raise.execute([device, top]).map_err(backend)?;
    }
    Ok(deleted)
}

/// Raises a device's cursor; `RETURNING cursor` gives the stored value (no row: no such
/// device).
const ACK: &str = "UPDATE devices SET cursor = max(cursor, ?3) WHERE id = ?1 AND user_id = ?2
     RETURNING cursor";

pub(crate) fn ack(
    conn: &Connection,
    device: DeviceAddress,
    up_to: InboxPos,
) -> StoreResult<InboxPos> {
    let mut stmt = conn.prepare_cached(ACK).map_err(backend)?;
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

/// [`ack`] for each device, in the one transaction the writer runs it in; devices that no
/// longer exist are skipped.
pub(crate) fn ack_all(conn: &Connection, acks: &[(DeviceAddress, InboxPos)]) -> StoreResult<()> {
    for &(device, up_to) in acks {
        match ack(conn, device, up_to) {
            Ok(_) | Err(StoreError::NotFound) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
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
