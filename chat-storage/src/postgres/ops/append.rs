//! Appends, a batch at a time: one transaction for every append the appender gathered, in
//! two round trips (see [`append_batch`]).
//!
//! Each request of a batch is checked on its own, in batch order, against what the first
//! round trip read under the conversations' row locks, with the writes of the requests
//! before it taken into account (IDs, inbox positions, client keys). A refused request
//! writes nothing, so it cannot affect the others; only the accepted ones go into the one
//! write statement. Locks follow the global order of the module docs: the batch's
//! conversation rows in ID order (first round trip), then its recipients' device rows in ID
//! order (the write statement, just before the commit).

use std::collections::{BTreeMap, HashMap};

use super::*;

/// Locks the batch's conversations in ID order and reads their last IDs.
pub(crate) const LOCK_CONVERSATIONS: &str =
    "SELECT id, last_id FROM conversations WHERE id = ANY($1) ORDER BY id FOR UPDATE";
/// Earlier sends under the batch's (device, client key) pairs.
pub(crate) const FIND_CLIENT_KEYS: &str =
    "SELECT k.sender_device, k.client_key, k.conversation_id, k.message_id, k.sent_at
    FROM unnest($1::bigint[], $2::bytea[]) AS t (d, k)
    JOIN client_keys k ON k.sender_device = t.d AND k.client_key = t.k";
/// Every member of the batch's conversations with each of their devices (none for a
/// member without devices), and whether the member blocks another member of a one-to-one
/// conversation (a message from that other member is then withheld from them).
pub(crate) const MEMBER_DEVICES: &str =
    "SELECT m.conversation_id, m.user_id, d.id, c.kind = 0 AND EXISTS (
        SELECT 1 FROM members o JOIN blocks b ON b.blocked = o.user_id
        WHERE o.conversation_id = m.conversation_id AND o.user_id <> m.user_id
            AND b.blocker = m.user_id)
    FROM conversations c JOIN members m ON m.conversation_id = c.id
    LEFT JOIN devices d ON d.user_id = m.user_id AND d.linked
    WHERE c.id = ANY($1)";
/// Writes the batch's accepted messages: client keys, messages, the conversations' last
/// IDs, then the recipients' device rows locked in ID order and bumped by their number of
/// new entries, and the entries. Returns each device with its head before the bump.
///
/// An entry whose device row is missing gets no base, so its position is NULL and the
/// statement fails (the commit sent behind it then rolls back): entries are never
/// silently dropped. A client key taken meanwhile by another transaction fails the
/// statement with a uniqueness violation, and the batch runs again.
pub(crate) const WRITE_BATCH: &str = "WITH msg AS (
        SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[],
            $5::bytea[], $6::bigint[], $7::bytea[], $8::bigint[])
        AS t (conversation_id, id, sender_user, sender_device, client_key, sent_at, body,
            withheld_from)),
    keys AS (
        INSERT INTO client_keys (sender_device, client_key, conversation_id, message_id, sent_at)
        SELECT sender_device, client_key, conversation_id, id, sent_at FROM msg),
    written AS (
        INSERT INTO messages (conversation_id, id, sender_user, sender_device, client_key,
            sent_at, body, withheld_from)
        SELECT conversation_id, id, sender_user, sender_device, client_key, sent_at, body,
            withheld_from FROM msg),
    ids AS (
        UPDATE conversations c SET last_id = t.last
        FROM unnest($9::bigint[], $10::bigint[]) AS t (id, last) WHERE c.id = t.id),
    locked AS (
        SELECT id FROM devices WHERE id = ANY($11::bigint[]) ORDER BY id FOR UPDATE),
    bumped AS (
        UPDATE devices d SET inbox_head = d.inbox_head + t.n
        FROM locked JOIN unnest($11::bigint[], $12::bigint[]) AS t (id, n) ON t.id = locked.id
        WHERE d.id = locked.id RETURNING d.id, d.inbox_head - t.n AS base),
    entries AS (
        INSERT INTO inbox (device_id, pos, conversation_id, message_id, header, sent_at)
        SELECT e.d, b.base + e.r, e.c, e.m, e.h, e.s
        FROM unnest($13::bigint[], $14::bigint[], $15::bigint[], $16::bigint[],
            $17::bytea[], $18::bigint[]) AS e (d, r, c, m, h, s)
        LEFT JOIN bumped b ON b.id = e.d)
    SELECT id, base FROM bumped";

/// What one request of a batch comes to.
pub(crate) enum Outcome {
    /// Answered: a duplicate, a refusal, or (after the commit) the append.
    Done(StoreResult<Appended>),
    /// Written by this batch. Each delivery's position is its device's head before the
    /// batch plus its rank among the device's entries of the batch (from 1).
    Written {
        id: MessageId,
        sent_at: Timestamp,
        delivered: Vec<(DeviceAddress, i64)>,
    },
    /// The sender is not among the members' devices and its user is no member: NotMember
    /// if the device exists, else NotFound (looked up after the batch).
    NotMemberOrUnknown,
}

/// A member of a conversation: their devices and whether they block the other member (in
/// a one-to-one conversation).
#[derive(Default)]
struct Member {
    devices: Vec<DeviceAddress>,
    blocks_other: bool,
}

/// What the first round trip read.
struct Snapshot {
    last_ids: HashMap<i64, i64>,
    keys: HashMap<(i64, Vec<u8>), (i64, i64, i64)>,
    members: HashMap<i64, BTreeMap<i64, Member>>,
}

/// The arrays of the write statement.
#[derive(Default)]
struct Writes<'m> {
    conv: Vec<i64>,
    id: Vec<i64>,
    sender_user: Vec<i64>,
    sender_device: Vec<i64>,
    key: Vec<&'m [u8]>,
    sent_at: Vec<i64>,
    body: Vec<&'m [u8]>,
    withheld: Vec<Option<i64>>,
    /// Each device's number of new entries, by device.
    counts: BTreeMap<i64, i64>,
    e_device: Vec<i64>,
    e_rank: Vec<i64>,
    e_conv: Vec<i64>,
    e_msg: Vec<i64>,
    e_header: Vec<&'m [u8]>,
    e_sent_at: Vec<i64>,
}

/// Runs `batch` in one transaction and returns each request's outcome, in order, once
/// the commit is durable. An error means the transaction did not commit: none of the
/// batch happened (the caller decides whether to run it again).
///
/// Round trip 1, pipelined: `BEGIN`, lock the conversations, read the client keys, read the
/// members' devices (after the locks, so membership and devices cannot change before the
/// commit). Round trip 2, pipelined: the write statement and `COMMIT`.
pub(crate) async fn append_batch(
    client: &Client,
    statements: &Statements,
    batch: &[&NewMessage],
) -> StoreResult<Vec<Outcome>> {
    let result = run_batch(client, statements, batch).await;
    if result.is_err() {
        // Harmless when the transaction already ended (a warning from the server).
        let _ = client.batch_execute("ROLLBACK").await;
    }
    result
}

async fn run_batch(
    client: &Client,
    statements: &Statements,
    batch: &[&NewMessage],
) -> StoreResult<Vec<Outcome>> {
    let st = |sql| {
        statements
            .get(sql)
            .ok_or_else(|| failure("statement was not prepared"))
    };
    let (lock, find_keys, member_devices, write) = (
        st(LOCK_CONVERSATIONS)?,
        st(FIND_CLIENT_KEYS)?,
        st(MEMBER_DEVICES)?,
        st(WRITE_BATCH)?,
    );
    let mut convs: Vec<i64> = batch.iter().map(|m| to_sql(m.conversation.get())).collect();
    convs.sort_unstable();
    convs.dedup();
    let key_devices: Vec<i64> = batch
        .iter()
        .map(|m| to_sql(m.sender.device.get()))
        .collect();
    let keys: Vec<&[u8]> = batch.iter().map(|m| &m.client_key.as_bytes()[..]).collect();

    // Sent in this order on first poll (tokio-postgres pipelines concurrent requests) and
    // run by the server in this order.
    let conv_params: Params<'_> = &[&convs];
    let key_params: Params<'_> = &[&key_devices, &keys];
    let (begin, locked, found, devices) = tokio::join!(
        client.batch_execute("BEGIN"),
        client.query(lock, conv_params),
        client.query(find_keys, key_params),
        client.query(member_devices, conv_params),
    );
    begin.map_err(pg)?;
    let snapshot = Snapshot::read(
        &locked.map_err(pg)?,
        &found.map_err(pg)?,
        &devices.map_err(pg)?,
    )?;

    let mut writes = Writes::default();
    let mut outcomes = plan(batch, snapshot, &mut writes)?;
    if writes.id.is_empty() {
        client.batch_execute("COMMIT").await.map_err(pg)?;
        return Ok(outcomes);
    }
    let (last_conv, last_id): (Vec<i64>, Vec<i64>) = {
        let mut last = BTreeMap::new();
        for (&c, &id) in writes.conv.iter().zip(&writes.id) {
            last.insert(c, id);
        }
        last.into_iter().unzip()
    };
    let (count_device, count): (Vec<i64>, Vec<i64>) =
        writes.counts.iter().map(|(&d, &n)| (d, n)).unzip();
    let w = &writes;
    let params: Params<'_> = &[
        &w.conv,
        &w.id,
        &w.sender_user,
        &w.sender_device,
        &w.key,
        &w.sent_at,
        &w.body,
        &w.withheld,
        &last_conv,
        &last_id,
        &count_device,
        &count,
        &w.e_device,
        &w.e_rank,
        &w.e_conv,
        &w.e_msg,
        &w.e_header,
        &w.e_sent_at,
    ];
    let (bases, commit) = tokio::join!(client.query(write, params), client.batch_execute("COMMIT"));
    // A failed write aborted the transaction, and the COMMIT behind it rolled it back.
    let bases = bases.map_err(write_error)?;
    commit.map_err(pg)?;

    let mut base = HashMap::with_capacity(bases.len());
    for row in &bases {
        base.insert(get::<i64>(row, 0)?, get::<i64>(row, 1)?);
    }
    for outcome in &mut outcomes {
        let Outcome::Written {
            id,
            sent_at,
            delivered,
        } = outcome
        else {
            continue;
        };
        let mut deliveries = Vec::with_capacity(delivered.len());
        for &(device, rank) in delivered.iter() {
            let start = *base
                .get(&to_sql(device.device.get()))
                .ok_or_else(|| failure("recipient device vanished"))?;
            deliveries.push((
                device,
                from_sql::<InboxPos>(start + rank, "inbox position")?,
            ));
        }
        *outcome = Outcome::Done(Ok(Appended {
            id: *id,
            sent_at: *sent_at,
            duplicate: false,
            deliveries,
        }));
    }
    Ok(outcomes)
}

/// A failed write: a client key another transaction committed meanwhile (in another
/// conversation: one in the same conversation waits for the lock and is then found) is a
/// race to run again; anything else is a backend error.
fn write_error(e: tokio_postgres::Error) -> StoreError {
    let lost_key_race = e.code() == Some(&SqlState::UNIQUE_VIOLATION)
        && e.as_db_error()
            .and_then(|db| db.constraint())
            .is_some_and(|c| c == "client_keys_pkey");
    if lost_key_race {
        StoreError::backend(Retry)
    } else {
        pg(e)
    }
}

impl Snapshot {
    fn read(locked: &[Row], found: &[Row], devices: &[Row]) -> StoreResult<Self> {
        let mut last_ids = HashMap::with_capacity(locked.len());
        for row in locked {
            last_ids.insert(get::<i64>(row, 0)?, get::<i64>(row, 1)?);
        }
        let mut keys = HashMap::with_capacity(found.len());
        for row in found {
            keys.insert(
                (get::<i64>(row, 0)?, get::<Vec<u8>>(row, 1)?),
                (
                    get::<i64>(row, 2)?,
                    get::<i64>(row, 3)?,
                    get::<i64>(row, 4)?,
                ),
            );
        }
        let mut members: HashMap<i64, BTreeMap<i64, Member>> = HashMap::new();
        for row in devices {
            let user_sql: i64 = get(row, 1)?;
            let member = members
                .entry(get(row, 0)?)
                .or_default()
                .entry(user_sql)
                .or_default();
            if let Some(device) = get::<Option<i64>>(row, 2)? {
                member.devices.push(DeviceAddress {
                    user: from_sql(user_sql, "user ID")?,
                    device: from_sql(device, "device ID")?,
                });
            }
            member.blocks_other = get(row, 3)?;
        }
        Ok(Self {
            last_ids,
            keys,
            members,
        })
    }
}

/// Decides every request of the batch, in order, and collects the writes of the accepted
/// ones. The checks are those of the contract, in its order: the client key, distinct
/// recipients, the conversation, membership, exact device coverage.
fn plan<'m>(
    batch: &[&'m NewMessage],
    mut snapshot: Snapshot,
    writes: &mut Writes<'m>,
) -> StoreResult<Vec<Outcome>> {
    let mut outcomes = Vec::with_capacity(batch.len());
    for message in batch {
        outcomes.push(plan_one(message, &mut snapshot, writes)?);
    }
    Ok(outcomes)
}

fn plan_one<'m>(
    message: &'m NewMessage,
    snapshot: &mut Snapshot,
    writes: &mut Writes<'m>,
) -> StoreResult<Outcome> {
    let conv = to_sql(message.conversation.get());
    let sender_device = to_sql(message.sender.device.get());
    let key = &message.client_key.as_bytes()[..];
    // Earlier sends: committed ones, and those written earlier in this batch.
    if let Some(&(first_conv, id, sent_at)) = snapshot.keys.get(&(sender_device, key.to_vec())) {
        if first_conv != conv {
            return Ok(Outcome::Done(Err(StoreError::ClientKeyReused)));
        }
        return Ok(Outcome::Done(Ok(Appended {
            id: from_sql(id, "message ID")?,
            sent_at: ts(sent_at),
            duplicate: true,
            deliveries: Vec::new(),
        })));
    }
    if let Err(e) = check_distinct_recipients(message) {
        return Ok(Outcome::Done(Err(e)));
    }
    let Some(last_id) = snapshot.last_ids.get(&conv).copied() else {
        return Ok(Outcome::Done(Err(StoreError::NotFound)));
    };
    let empty = BTreeMap::new();
    let members = snapshot.members.get(&conv).unwrap_or(&empty);
    let current: Vec<DeviceAddress> = members
        .values()
        .flat_map(|m| m.devices.iter().copied())
        .collect();
    // The sender's own device is among the current devices exactly when the device exists,
    // is linked, and its user is a member.
    if !current.contains(&message.sender) {
        return Ok(
            if members.contains_key(&to_sql(message.sender.user.get())) {
                Outcome::Done(Err(StoreError::NotLinked))
            } else {
                Outcome::NotMemberOrUnknown
            },
        );
    }
    if let Err(e) = check_coverage(&current, message) {
        return Ok(Outcome::Done(Err(e)));
    }
    // Only one-to-one conversations have `blocks_other` set; there the other member is the
    // sender.
    let sender_user = to_sql(message.sender.user.get());
    let withheld_from = members
        .iter()
        .find(|&(&user, m)| user != sender_user && m.blocks_other)
        .map(|(&user, _)| user);

    let id_sql = last_id + 1;
    let id: MessageId = from_sql(id_sql, "message ID")?;
    snapshot.last_ids.insert(conv, id_sql);
    snapshot.keys.insert(
        (sender_device, key.to_vec()),
        (conv, id_sql, ts_sql(message.sent_at)),
    );

    let sent_at = ts_sql(message.sent_at);
    writes.conv.push(conv);
    writes.id.push(id_sql);
    writes.sender_user.push(sender_user);
    writes.sender_device.push(sender_device);
    writes.key.push(key);
    writes.sent_at.push(sent_at);
    writes.body.push(&message.body[..]);
    writes.withheld.push(withheld_from);
    // A withheld message gets no inbox entry on the blocker's devices.
    let mut delivered = Vec::with_capacity(message.recipients.len());
    for recipient in &message.recipients {
        let device = recipient.device;
        if Some(to_sql(device.user.get())) == withheld_from {
            continue;
        }
        let device_sql = to_sql(device.device.get());
        let count = writes.counts.entry(device_sql).or_insert(0);
        *count += 1;
        writes.e_device.push(device_sql);
        writes.e_rank.push(*count);
        writes.e_conv.push(conv);
        writes.e_msg.push(id_sql);
        writes.e_header.push(&recipient.header[..]);
        writes.e_sent_at.push(sent_at);
        delivered.push((device, *count));
    }
    Ok(Outcome::Written {
        id,
        sent_at: message.sent_at,
        delivered,
    })
}

/// The refusal for a sender that is not among the members' devices (and whose user is no
/// member): [`StoreError::NotFound`] when the device does not exist, else
/// [`StoreError::NotMember`].
pub(crate) async fn sender_refusal(db: &Db<'_>, sender: DeviceAddress) -> StoreError {
    match require_device(db, sender).await {
        Ok(()) => StoreError::NotMember,
        Err(e) => e,
    }
}
