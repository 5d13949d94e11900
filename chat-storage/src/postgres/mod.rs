//! The PostgreSQL backend: for several server nodes sharing one store.
//!
//! Every rule that spans rows holds through row locks inside one transaction (see
//! [`ops`]), at READ COMMITTED, so it holds across any number of nodes. Appends are
//! group-committed by a few appender tasks ([`appender`]): one transaction, two round trips
//! and one WAL flush per batch of queued appends, so durable throughput is not one commit
//! per message. A transaction that loses a deadlock or a race on a unique key is run again,
//! a few times at most.

use std::fmt;

use async_trait::async_trait;
use bytes::Bytes;
use chat_core::{
    AccountStore, Appended, AttachmentId, AttachmentMeta, Block, BlockStore, ChainLink,
    Conversation, ConversationId, ConversationStore, Credentials, Device, DeviceAddress, DeviceId,
    DeviceKeys, DeviceListRecord, Direction, Envelope, GroupOp, GroupState, HealthStore,
    InboxEntry, InboxPos, KeyStore, MessageId, MessageStore, MetaStore, NewMessage, OneTimePrekey,
    PrekeyBundle, Profile, ProfileStore, ProfileUpdate, PushToken, ReceiptKind, ReceiptPosition,
    ReceiptStore, SearchCursor, SearchPrefix, StoreError, StoreResult, Timestamp, TokenHash, User,
    UserId, Username,
};
use tokio_postgres::Config;

use crate::Durability;
use crate::common::failure;

use appender::Appender;
use ops::Db;
use pool::Pool;

mod appender;
mod ops;
mod pool;
mod schema;

/// How many times a transaction that lost a race is run again before giving up.
const MAX_RETRIES: u32 = 8;

/// Most appends in one group commit.
const MAX_BATCH: usize = 512;

/// Most devices whose cursors one statement of [`MessageStore::ack_all`] raises.
const ACK_CHUNK: usize = 256;

/// Settings for [`PostgresStore::connect`].
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    pool_size: usize,
    appenders: usize,
    schema: Option<String>,
    durability: Durability,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            pool_size: 16,
            appenders: 2,
            schema: None,
            durability: Durability::Fsync,
        }
    }
}

impl PostgresOptions {
    /// Sets the most connections held open (default 16, at least 1).
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size.max(1);
        self
    }

    /// Sets how many appends run their group commits at once (default 2, at least 1), each
    /// on a connection of its own besides the pool's: while one waits for its commit's
    /// WAL flush, the next batch runs.
    pub fn appenders(mut self, appenders: usize) -> Self {
        self.appenders = appenders.max(1);
        self
    }

    /// Sets the durability of commits (default [`Durability::Fsync`]): with
    /// [`Durability::Os`] the store's sessions run with `synchronous_commit = off`.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Keeps the store's tables in this schema (created if missing) instead of the
    /// connection's default search path: several stores can share one database, and tests
    /// can run in parallel. The name must be 1 to 63 characters of `a-z`, `0-9` and `_`.
    pub fn schema(mut self, name: impl Into<String>) -> Self {
        self.schema = Some(name.into());
        self
    }
}

/// The PostgreSQL store. Cheap to share behind an `Arc`.
pub struct PostgresStore {
    pool: Pool,
    appender: Appender,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore").finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects to `url` (a `postgres://` URL or a libpq key-value string), applies pending
    /// migrations and returns the store. [`StoreError::SchemaTooNew`] if a newer build has
    /// migrated the database.
    pub async fn connect(url: &str, options: PostgresOptions) -> StoreResult<Self> {
        let mut config: Config = url.parse().map_err(StoreError::backend)?;
        if config.get_application_name().is_none() {
            config.application_name("chat-storage");
        }
        if let Some(schema) = &options.schema {
            let valid = !schema.is_empty()
                && schema.len() <= 63
                && schema
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !valid {
                return Err(StoreError::Invalid("schema names are a-z, 0-9 and _"));
            }
            let setup = pool::connect(&config).await?;
            setup
                .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
                .await
                .map_err(StoreError::backend)?;
        }
        let mut session = Vec::new();
        if let Some(schema) = &options.schema {
            session.push(format!("-c search_path={schema}"));
        }
        if options.durability == Durability::Os {
            session.push("-c synchronous_commit=off".to_owned());
        }
        if !session.is_empty() {
            config.options(session.join(" "));
        }
        let mut first = pool::connect(&config).await?;
        schema::migrate(&mut first).await?;
        drop(first);
        Ok(Self {
            appender: Appender::start(config.clone(), options.appenders, MAX_BATCH),
            pool: Pool::new(config, options.pool_size),
        })
    }
}

/// Runs `$body` with `$db` bound to a [`Db`] over a fresh transaction, commits, and runs it
/// again when it lost a race ([`ops::should_retry`]).
macro_rules! in_tx {
    ($store:expr, |$db:ident| $body:expr) => {{
        let mut pooled = $store.pool.get().await?;
        let conn = pooled.conn()?;
        let mut attempt = 0;
        loop {
            let tx = conn
                .client
                .transaction()
                .await
                .map_err(StoreError::backend)?;
            let result = {
                let $db = Db::tx(&tx, &conn.statements);
                $body
            };
            let result = match result {
                Ok(value) => tx
                    .commit()
                    .await
                    .map(|()| value)
                    .map_err(StoreError::backend),
                Err(e) => {
                    let _ = tx.rollback().await;
                    Err(e)
                }
            };
            match result {
                Err(e) if attempt < MAX_RETRIES && ops::should_retry(&e) => attempt += 1,
                other => break other,
            }
        }
    }};
}

/// Runs `$body` with `$db` bound to a [`Db`] over a pooled connection, each statement in
/// its own implicit transaction.
macro_rules! on_conn {
    ($store:expr, |$db:ident| $body:expr) => {{
        let mut pooled = $store.pool.get().await?;
        let conn = pooled.conn()?;
        let $db = Db::client(&conn.client, &conn.statements);
        $body
    }};
}

#[async_trait]
impl AccountStore for PostgresStore {
    async fn create_user(
        &self,
        username: &Username,
        password_hash: &str,
        now: Timestamp,
    ) -> StoreResult<User> {
        on_conn!(self, |db| ops::create_user(
            &db,
            username,
            password_hash,
            now
        )
        .await)
    }

    async fn credentials(&self, username: &Username) -> StoreResult<Option<Credentials>> {
        on_conn!(self, |db| ops::credentials(&db, username).await)
    }

    async fn user(&self, user: UserId) -> StoreResult<Option<User>> {
        on_conn!(self, |db| ops::user(&db, user).await)
    }

    async fn add_device(
        &self,
        user: UserId,
        name: &str,
        token: TokenHash,
        now: Timestamp,
    ) -> StoreResult<Device> {
        in_tx!(self, |db| ops::add_device(&db, user, name, token, now)
            .await)
    }

    async fn add_token(
        &self,
        device: DeviceAddress,
        token: TokenHash,
        now: Timestamp,
    ) -> StoreResult<()> {
        in_tx!(self, |db| ops::add_token(&db, device, token, now).await)
    }

    async fn devices(&self, user: UserId) -> StoreResult<Vec<Device>> {
        on_conn!(self, |db| ops::devices(&db, user).await)
    }

    async fn remove_device(&self, device: DeviceAddress) -> StoreResult<()> {
        in_tx!(self, |db| ops::remove_device(&db, device).await)
    }

    async fn authenticate(&self, token: TokenHash) -> StoreResult<Option<DeviceAddress>> {
        on_conn!(self, |db| ops::authenticate(&db, token).await)
    }

    async fn revoke_token(&self, token: TokenHash) -> StoreResult<bool> {
        on_conn!(self, |db| ops::revoke_token(&db, token).await)
    }

    async fn set_last_active(&self, user: UserId, at: Timestamp) -> StoreResult<()> {
        on_conn!(self, |db| ops::set_last_active(&db, user, at).await)
    }

    async fn last_active(&self, user: UserId) -> StoreResult<Option<Timestamp>> {
        on_conn!(self, |db| ops::last_active(&db, user).await)
    }
}

#[async_trait]
impl KeyStore for PostgresStore {
    async fn device_list(&self, user: UserId) -> StoreResult<Option<DeviceListRecord>> {
        on_conn!(self, |db| ops::device_list(&db, user).await)
    }

    async fn set_device_list(
        &self,
        user: UserId,
        record: &DeviceListRecord,
        linked: &[DeviceId],
    ) -> StoreResult<()> {
        in_tx!(self, |db| ops::set_device_list(&db, user, record, linked)
            .await)
    }

    async fn set_link_payload(&self, device: DeviceAddress, sealed: Bytes) -> StoreResult<()> {
        on_conn!(self, |db| ops::set_link_payload(&db, device, &sealed).await)
    }

    async fn link_payload(&self, device: DeviceAddress) -> StoreResult<Option<Bytes>> {
        on_conn!(self, |db| ops::link_payload(&db, device).await)
    }

    async fn set_device_keys(&self, device: DeviceAddress, keys: &DeviceKeys) -> StoreResult<()> {
        on_conn!(self, |db| ops::set_device_keys(&db, device, keys).await)
    }

    async fn add_one_time_prekeys(
        &self,
        device: DeviceAddress,
        keys: &[OneTimePrekey],
    ) -> StoreResult<()> {
        in_tx!(self, |db| ops::add_one_time_prekeys(&db, device, keys)
            .await)
    }

    async fn claim_bundles(&self, user: UserId) -> StoreResult<Vec<PrekeyBundle>> {
        on_conn!(self, |db| ops::claim_bundles(&db, user, true).await)
    }

    async fn fallback_bundles(&self, user: UserId) -> StoreResult<Vec<PrekeyBundle>> {
        on_conn!(self, |db| ops::claim_bundles(&db, user, false).await)
    }

    async fn one_time_prekey_count(&self, device: DeviceAddress) -> StoreResult<u64> {
        on_conn!(self, |db| ops::one_time_prekey_count(&db, device).await)
    }
}

#[async_trait]
impl ConversationStore for PostgresStore {
    async fn open_direct(&self, a: UserId, b: UserId, now: Timestamp) -> StoreResult<Conversation> {
        in_tx!(self, |db| ops::open_direct(&db, a, b, now).await)
    }

    async fn create_group(
        &self,
        creator: UserId,
        members: &[UserId],
        limit: usize,
        now: Timestamp,
    ) -> StoreResult<Conversation> {
        in_tx!(self, |db| ops::create_group(
            &db, creator, members, limit, now
        )
        .await)
    }

    async fn change_group(
        &self,
        conversation: ConversationId,
        actor: UserId,
        op: &GroupOp,
        limit: usize,
        link: Option<&ChainLink>,
    ) -> StoreResult<GroupState> {
        in_tx!(self, |db| ops::change_group(
            &db,
            conversation,
            actor,
            op,
            limit,
            link
        )
        .await)
    }

    async fn group_changes(
        &self,
        conversation: ConversationId,
        after: u64,
        limit: usize,
    ) -> StoreResult<Vec<(u64, Bytes)>> {
        on_conn!(self, |db| ops::group_changes(
            &db,
            conversation,
            after,
            limit
        )
        .await)
    }

    async fn group(&self, conversation: ConversationId) -> StoreResult<GroupState> {
        on_conn!(self, |db| ops::group(&db, conversation, false).await)
    }

    async fn conversation(
        &self,
        conversation: ConversationId,
    ) -> StoreResult<Option<Conversation>> {
        on_conn!(self, |db| ops::conversation(&db, conversation).await)
    }

    async fn members(&self, conversation: ConversationId) -> StoreResult<Vec<UserId>> {
        on_conn!(self, |db| ops::members(&db, conversation).await)
    }

    async fn is_member(&self, conversation: ConversationId, user: UserId) -> StoreResult<bool> {
        on_conn!(self, |db| ops::is_member(&db, conversation, user).await)
    }

    async fn conversations_of(&self, user: UserId) -> StoreResult<Vec<Conversation>> {
        on_conn!(self, |db| ops::conversations_of(&db, user).await)
    }
}

#[async_trait]
impl HealthStore for PostgresStore {
    /// Rewrites the schema version row with its own value in a committed transaction.
    async fn probe_write(&self) -> StoreResult<()> {
        in_tx!(self, |db| ops::probe_write(&db).await)
    }
}

#[async_trait]
impl MessageStore for PostgresStore {
    async fn append(&self, message: NewMessage) -> StoreResult<Appended> {
        let mut results = self.appender.append(vec![message]).await;
        results
            .pop()
            .unwrap_or_else(|| Err(failure("the appender gave no answer")))
    }

    /// One request to the appenders: the messages run in one batch, in their order.
    async fn append_all(&self, messages: Vec<NewMessage>) -> Vec<StoreResult<Appended>> {
        self.appender.append(messages).await
    }

    async fn inbox(
        &self,
        device: DeviceAddress,
        after: InboxPos,
        limit: usize,
    ) -> StoreResult<Vec<InboxEntry>> {
        on_conn!(self, |db| ops::inbox(&db, device, after, limit).await)
    }

    async fn inbox_head(&self, device: DeviceAddress) -> StoreResult<InboxPos> {
        on_conn!(self, |db| ops::inbox_head(&db, device).await)
    }

    async fn trim_inboxes(&self, sent_before: Timestamp, limit: usize) -> StoreResult<u64> {
        in_tx!(self, |db| ops::trim_inboxes(&db, sent_before, limit).await)
    }

    async fn inbox_floor(&self, device: DeviceAddress) -> StoreResult<InboxPos> {
        on_conn!(self, |db| ops::inbox_floor(&db, device).await)
    }

    async fn ack(&self, device: DeviceAddress, up_to: InboxPos) -> StoreResult<InboxPos> {
        on_conn!(self, |db| ops::ack(&db, device, up_to).await)
    }

    /// A statement per 256 devices (`ACK_CHUNK`), each its own transaction, so appends to
    /// those devices (which lock the same rows) never wait behind a whole batch.
    async fn ack_all(&self, acks: &[(DeviceAddress, InboxPos)]) -> StoreResult<()> {
        for chunk in acks.chunks(ACK_CHUNK) {
            on_conn!(self, |db| ops::ack_all(&db, chunk).await)?;
        }
        Ok(())
    }

    async fn cursor(&self, device: DeviceAddress) -> StoreResult<InboxPos> {
        on_conn!(self, |db| ops::cursor(&db, device).await)
    }

    async fn history(
        &self,
        conversation: ConversationId,
        anchor: MessageId,
        direction: Direction,
        limit: usize,
    ) -> StoreResult<Vec<Envelope>> {
        on_conn!(self, |db| ops::history(
            &db,
            conversation,
            anchor,
            direction,
            limit
        )
        .await)
    }

    async fn message(
        &self,
        conversation: ConversationId,
        id: MessageId,
    ) -> StoreResult<Option<Envelope>> {
        on_conn!(self, |db| ops::message(&db, conversation, id).await)
    }
}

#[async_trait]
impl ReceiptStore for PostgresStore {
    async fn set_receipt(
        &self,
        conversation: ConversationId,
        user: UserId,
        kind: ReceiptKind,
        up_to: MessageId,
    ) -> StoreResult<MessageId> {
        in_tx!(self, |db| ops::set_receipt(
            &db,
            conversation,
            user,
            kind,
            up_to
        )
        .await)
    }

    async fn receipts(&self, conversation: ConversationId) -> StoreResult<Vec<ReceiptPosition>> {
        on_conn!(self, |db| ops::receipts(&db, conversation).await)
    }
}

#[async_trait]
impl MetaStore for PostgresStore {
    async fn insert_attachment(&self, meta: &AttachmentMeta) -> StoreResult<()> {
        on_conn!(self, |db| ops::insert_attachment(&db, meta).await)
    }

    async fn attachment(&self, id: AttachmentId) -> StoreResult<Option<AttachmentMeta>> {
        on_conn!(self, |db| ops::attachment(&db, id).await)
    }

    async fn set_push_token(
        &self,
        device: DeviceAddress,
        token: Option<&PushToken>,
    ) -> StoreResult<()> {
        on_conn!(self, |db| ops::set_push_token(&db, device, token).await)
    }

    async fn push_token(&self, device: DeviceAddress) -> StoreResult<Option<PushToken>> {
        on_conn!(self, |db| ops::push_token(&db, device).await)
    }
}

#[async_trait]
impl ProfileStore for PostgresStore {
    async fn set_profile(
        &self,
        user: UserId,
        update: &ProfileUpdate,
        now: Timestamp,
    ) -> StoreResult<Profile> {
        on_conn!(self, |db| ops::set_profile(&db, user, update, now).await)
    }

    async fn profile(&self, user: UserId) -> StoreResult<Option<Profile>> {
        on_conn!(self, |db| ops::profile(&db, user).await)
    }

    async fn search_profiles(
        &self,
        prefix: &SearchPrefix,
        after: Option<&SearchCursor>,
        limit: usize,
    ) -> StoreResult<Vec<Profile>> {
        on_conn!(self, |db| ops::search_profiles(&db, prefix, after, limit)
            .await)
    }
}

#[async_trait]
impl BlockStore for PostgresStore {
    async fn block(&self, blocker: UserId, blocked: UserId, now: Timestamp) -> StoreResult<bool> {
        on_conn!(self, |db| ops::block(&db, blocker, blocked, now).await)
    }

    async fn unblock(&self, blocker: UserId, blocked: UserId) -> StoreResult<bool> {
        on_conn!(self, |db| ops::unblock(&db, blocker, blocked).await)
    }

    async fn blocks(&self, blocker: UserId) -> StoreResult<Vec<Block>> {
        on_conn!(self, |db| ops::blocks(&db, blocker).await)
    }

    async fn is_blocked(&self, blocker: UserId, blocked: UserId) -> StoreResult<bool> {
        on_conn!(self, |db| ops::is_blocked(&db, blocker, blocked).await)
    }

    async fn blocked_by(&self, user: UserId) -> StoreResult<Vec<UserId>> {
        on_conn!(self, |db| ops::blocked_by(&db, user).await)
    }

    async fn withheld(
        &self,
        conversation: ConversationId,
        user: UserId,
        ids: &[MessageId],
    ) -> StoreResult<Vec<MessageId>> {
        on_conn!(self, |db| ops::withheld(&db, conversation, user, ids).await)
    }
}
