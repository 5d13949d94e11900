//! The conformance suite: one set of tests, written once against the `chat_core` storage
//! traits, that every backend runs (memory, SQLite, PostgreSQL) through
//! [`conformance_tests!`](crate::conformance_tests).
//!
//! Each function here checks one guarantee of the trait contract and panics when it does
//! not hold. Concurrency tests start many tasks at once on a multi-threaded runtime and check
//! the invariants on the result; nothing sleeps.

use std::any::Any;
use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use chat_core::limits::{MAX_DEVICES_PER_USER, MAX_GROUP_MEMBERS};
use chat_core::{
    AttachmentId, AttachmentMeta, ChainLink, ClientKey, ConversationId, ConversationKind,
    DeviceAddress, DeviceKeys, DeviceListRecord, Direction, GroupOp, GroupRuleError, GroupSettings,
    InboxPos, MAX_ID, MessageId, NewMessage, OneTimePrekey, Permission, PushToken, ReceiptKind,
    Recipient, Role, SignedPrekey, Store, StoreError, Timestamp, TokenHash, UserId, Username,
};
use tokio::task::JoinSet;

/// A store under test, with whatever must live as long as it (a temporary directory, say).
pub struct Fixture {
    store: Arc<dyn Store>,
    _guard: Option<Box<dyn Any + Send>>,
}

impl Fixture {
    /// A fixture for a store that needs nothing else kept alive.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            _guard: None,
        }
    }

    /// A fixture that keeps `guard` alive (and drops it after the store).
    pub fn with_guard(store: Arc<dyn Store>, guard: impl Any + Send) -> Self {
        Self {
            store,
            _guard: Some(Box::new(guard)),
        }
    }

    /// The store.
    pub fn store(&self) -> Arc<dyn Store> {
        Arc::clone(&self.store)
    }
}

impl fmt::Debug for Fixture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fixture").finish_non_exhaustive()
    }
}

/// The environment variable that makes a missing test service a failure instead of a skip.
/// `.ci/run` sets it, so CI never passes without running the tests that need PostgreSQL
/// or Redis.
pub const REQUIRE_SERVICES_VAR: &str = "CHAT_TEST_REQUIRE_SERVICES";

/// The URL of a service a test needs, read from `var` (`CHAT_TEST_POSTGRES_URL`,
/// `CHAT_TEST_REDIS_URL`); `None` when it is unset or empty, and the test should return.
///
/// A skip is never silent: it writes `skipped: <test>: set <var> …` straight to the
/// process's stderr, which the test harness does not capture (it only captures `print!`
/// and `eprint!`), so `cargo test` shows every test that did not run. With
/// `CHAT_TEST_REQUIRE_SERVICES=1` ([`REQUIRE_SERVICES_VAR`], set by `.ci/run`) a missing
/// variable panics instead, failing the test.
pub fn service_url(var: &str) -> Option<String> {
    if let Some(url) = std::env::var(var).ok().filter(|u| !u.is_empty()) {
        return Some(url);
    }
    let current = std::thread::current();
    let test = current.name().unwrap_or("a test");
    if std::env::var(REQUIRE_SERVICES_VAR).is_ok_and(|v| v == "1") {
        panic!("{test} needs {var}, and {REQUIRE_SERVICES_VAR}=1 forbids skipping it");
    }
    skipped(&format!(
        "set {var} to run it (see README.md, \"Commands\")"
    ));
    None
}

/// Says that the current test is skipped and why, on the process's stderr, which the
/// test harness does not capture: for tests that cannot run here (no service, not root).
pub fn skipped(why: &str) {
    use std::io::Write as _;
    let current = std::thread::current();
    let test = current.name().unwrap_or("a test");
    let _ = writeln!(std::io::stderr(), "skipped: {test}: {why}");
}

/// Expands to one `#[tokio::test]` per guarantee of the storage contract, each running on a
/// fresh store from `$fixture`: an expression evaluating to a future of
/// `Option<`[`Fixture`]`>` (`None` skips the test, for a backend that is not configured).
///
/// The invoking crate needs `tokio` with the `macros` and `rt-multi-thread` features.
///
/// ```ignore
/// async fn fresh() -> Option<chat_storage::testing::Fixture> {
///     Some(chat_storage::testing::Fixture::new(std::sync::Arc::new(
///         chat_storage::MemoryStore::new(),
///     )))
/// }
/// chat_storage::conformance_tests!(fresh());
/// ```
#[macro_export]
macro_rules! conformance_tests {
    ($fixture:expr) => {
        $crate::conformance_tests!(@each $fixture;
            accounts_and_tokens,
            too_many_devices,
            device_lists_decide_which_devices_are_linked,
            device_removal_revokes_everything,
            prekeys_are_claimed_at_most_once_concurrently,
            signed_prekey_is_the_fallback,
            fallback_bundles_claim_nothing,
            new_identity_empties_the_prekey_pool,
            concurrent_appends_are_gapless_and_ordered,
            append_all_keeps_order_and_answers_each,
            idempotent_retries_write_nothing,
            client_key_reuse_in_another_conversation_is_refused,
            probe_write_commits,
            concurrent_retries_make_one_message,
            stale_devices_are_reported_exactly,
            non_members_cannot_send,
            removed_member_gets_nothing_after_removal,
            member_limit_holds_under_concurrent_adds,
            member_limit_is_all_or_nothing,
            group_roles_and_settings_follow_the_rules,
            signed_creation_must_match_the_group,
            stale_group_change_changes_nothing,
            group_chain_pages_in_order,
            unsigned_change_is_refused_once_chained,
            signed_changes_follow_the_rules_strictly,
            concurrent_signed_changes_on_one_parent_one_wins,
            group_changes_need_a_group,
            direct_conversation_is_one_per_pair_concurrently,
            conversation_records,
            inbox_paging_edges,
            history_paging_edges,
            message_lookup,
            receipts_are_monotonic,
            cursor_ack_is_monotonic,
            batched_acks_move_each_cursor_forward,
            batched_acks_and_appends_run_together,
            attachments_and_push_tokens,
            profiles_round_trip,
            search_pages_by_prefix,
            blocks_are_one_way,
            blocked_direct_sends_are_withheld,
            trimming_raises_the_floor_and_never_reuses_positions,
            trimming_is_batched_and_keeps_newer_entries,
            trim_floor_never_moves_down,
            concurrent_trims_and_appends_agree,
        );
    };
    (@each $fixture:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let Some(fixture) = $fixture.await else { return };
                $crate::testing::$name(fixture.store()).await;
            }
        )*
    };
}

static COUNTER: AtomicU64 = AtomicU64::new(1);

fn unique() -> u64 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// A token hash no other test uses.
pub fn token() -> TokenHash {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&unique().to_be_bytes());
    bytes[8..16].copy_from_slice(&std::process::id().to_be_bytes().repeat(2));
    TokenHash(bytes)
}

/// A client message key no other test uses.
pub fn client_key() -> ClientKey {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&unique().to_be_bytes());
    bytes[8..12].copy_from_slice(&std::process::id().to_be_bytes());
    ClientKey::from_bytes(bytes)
}

/// The time the suite uses for "now".
pub const NOW: Timestamp = Timestamp::from_millis(1_700_000_000_000);

/// Creates a user with a fresh name.
pub async fn user(store: &dyn Store) -> UserId {
    let name = Username::new(format!("user{}", unique())).expect("valid name");
    store
        .create_user(&name, "$argon2id$test", NOW)
        .await
        .expect("create user")
        .id
}

/// Registers a device for `user`.
pub async fn device(store: &dyn Store, user: UserId) -> DeviceAddress {
    store
        .add_device(user, "test", token(), NOW)
        .await
        .expect("add device")
        .address
}

/// A user with `devices` devices.
pub async fn user_with_devices(store: &dyn Store, devices: usize) -> (UserId, Vec<DeviceAddress>) {
    let id = user(store).await;
    let mut list = Vec::new();
    for _ in 0..devices {
        list.push(device(store, id).await);
    }
    (id, list)
}

/// A message from `sender` to exactly `recipients`, with a fresh client key.
pub fn message(
    conversation: ConversationId,
    sender: DeviceAddress,
    recipients: &[DeviceAddress],
) -> NewMessage {
    NewMessage {
        conversation,
        sender,
        client_key: client_key(),
        body: Bytes::from(format!("body {}", unique())),
        recipients: recipients
            .iter()
            .map(|&device| Recipient {
                device,
                header: Bytes::from(format!("to {device:?}")),
            })
            .collect(),
        sent_at: NOW,
    }
}

fn others(all: &[DeviceAddress], sender: DeviceAddress) -> Vec<DeviceAddress> {
    all.iter().copied().filter(|d| *d != sender).collect()
}

fn pos(n: u64) -> InboxPos {
    InboxPos::new(n).expect("valid position")
}

fn mid(n: u64) -> MessageId {
    MessageId::new(n).expect("valid message ID")
}

/// The conversation's record, which must exist.
async fn conversation_record(store: &dyn Store, conv: ConversationId) -> chat_core::Conversation {
    store
        .conversation(conv)
        .await
        .expect("conversation")
        .expect("exists")
}

/// A group of `users` users with `devices` devices each; returns it and all devices.
async fn group(
    store: &dyn Store,
    users: usize,
    devices: usize,
) -> (ConversationId, Vec<UserId>, Vec<DeviceAddress>) {
    let mut ids = Vec::new();
    let mut all = Vec::new();
    for _ in 0..users {
        let (id, list) = user_with_devices(store, devices).await;
        ids.push(id);
        all.extend(list);
    }
    let (creator, rest) = ids.split_first().expect("at least one user");
    let conv = store
        .create_group(*creator, rest, MAX_GROUP_MEMBERS, NOW)
        .await
        .expect("group");
    (conv.id, ids, all)
}

mod accounts;
mod chain;
mod conversations;
mod messages;
mod people;
#[cfg(feature = "postgres")]
mod postgres;
mod retention;

pub use accounts::{
    accounts_and_tokens, attachments_and_push_tokens, device_lists_decide_which_devices_are_linked,
    device_removal_revokes_everything, fallback_bundles_claim_nothing,
    new_identity_empties_the_prekey_pool, prekeys_are_claimed_at_most_once_concurrently,
    signed_prekey_is_the_fallback, too_many_devices,
};
pub use chain::{
    GroupsBeforeChains, concurrent_signed_changes_on_one_parent_one_wins,
    group_chain_pages_in_order, group_changes_need_a_group, groups_before_chains,
    groups_made_before_chains_still_change, signed_changes_follow_the_rules_strictly,
    signed_creation_must_match_the_group, stale_group_change_changes_nothing,
    unsigned_change_is_refused_once_chained,
};
pub use conversations::{
    conversation_records, direct_conversation_is_one_per_pair_concurrently,
    group_roles_and_settings_follow_the_rules, member_limit_holds_under_concurrent_adds,
    member_limit_is_all_or_nothing,
};
pub use messages::{
    append_all_keeps_order_and_answers_each, batched_acks_and_appends_run_together,
    batched_acks_move_each_cursor_forward, client_key_reuse_in_another_conversation_is_refused,
    concurrent_appends_are_gapless_and_ordered, concurrent_retries_make_one_message,
    cursor_ack_is_monotonic, history_paging_edges, idempotent_retries_write_nothing,
    inbox_paging_edges, message_lookup, non_members_cannot_send, probe_write_commits,
    receipts_are_monotonic, removed_member_gets_nothing_after_removal,
    stale_devices_are_reported_exactly,
};
pub use people::{
    blocked_direct_sends_are_withheld, blocks_are_one_way, profiles_round_trip,
    search_pages_by_prefix,
};
#[cfg(feature = "postgres")]
pub use postgres::FreshPostgres;
pub use retention::{
    concurrent_trims_and_appends_agree, trim_floor_never_moves_down,
    trimming_is_batched_and_keeps_newer_entries,
    trimming_raises_the_floor_and_never_reuses_positions,
};
