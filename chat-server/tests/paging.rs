//! Paging and ID edge cases of the HTTP API (issue #18): history anchors at 0 and at the
//! largest ID, `limit` bounds on history and directory search, and IDs in paths that are
//! not valid IDs. Each answer is the documented one (docs/PROTOCOL.md section 11), never a
//! 500 or a silently changed request.

mod common;

use std::sync::Arc;

use chat_core::{ConversationId, MAX_ID, MessageId, MessageStore};
use chat_storage::MemoryStore;
use chat_storage::testing::message;
use common::{Account, TestServer, test_config};
use serde_json::{Value, json};

/// A server whose store the test appends to directly, Alice and Bob, their 1:1 and the IDs
/// of `count` messages from Alice in it, oldest first.
struct Fixture {
    server: TestServer,
    alice: Account,
    conversation: ConversationId,
    ids: Vec<u64>,
}

async fn fixture(count: usize) -> Fixture {
    let store = Arc::new(MemoryStore::new());
    let server = TestServer::with_store(test_config(), store.clone()).await;
    let alice = server.account("alice").await;
    let bob = server.account("bob").await;
    let (status, body) = server
        .http(
            "POST",
            "/v1/conversations/direct",
            Some(&alice.token),
            Some(json!({"user_id": bob.user()})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let conversation = ConversationId::new(body["id"].as_u64().unwrap()).unwrap();
    let mut ids = Vec::new();
    for _ in 0..count {
        let sent = store
            .append(message(conversation, alice.device, &[bob.device]))
            .await
            .unwrap();
        ids.push(sent.id.get());
    }
    Fixture {
        server,
        alice,
        conversation,
        ids,
    }
}

impl Fixture {
    async fn get(&self, path: &str) -> (u16, Value) {
        self.server
            .http("GET", path, Some(&self.alice.token), None)
            .await
    }

    /// The IDs of a history page, or panics with the error.
    async fn page(&self, query: &str) -> Vec<u64> {
        let path = format!("/v1/conversations/{}/messages?{query}", self.conversation);
        let (status, body) = self.get(&path).await;
        assert_eq!(status, 200, "{query}: {body}");
        body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_u64().unwrap())
            .collect()
    }

    /// Asserts `path` answers `status` with the JSON error `error` whose message names
    /// `mentions`.
    async fn refused(&self, path: &str, status: u16, error: &str, mentions: &str) {
        let (got, body) = self.get(path).await;
        assert_eq!(got, status, "{path}: {body}");
        assert_eq!(body["error"], error, "{path}: {body}");
        let text = body["message"].as_str().unwrap_or_default();
        assert!(text.contains(mentions), "{path}: {body}");
    }
}

#[tokio::test]
async fn after_zero_pages_from_the_first_message() {
    let f = fixture(5).await;
    assert_eq!(f.ids.first(), Some(&MessageId::MIN.get()));
    assert_eq!(f.page("after=0").await, f.ids);
    assert_eq!(f.page("after=0&limit=2").await, f.ids[..2]);
    assert_eq!(f.page("after=0&limit=1").await, f.ids[..1]);
    // Paging on from the last ID of the first page continues without a gap.
    assert_eq!(
        f.page(&format!("after={}&limit=2", f.ids[1])).await,
        f.ids[2..4]
    );
    // Nothing has an ID below 0 or 1.
    assert_eq!(f.page("before=0").await, Vec::<u64>::new());
    assert_eq!(f.page("before=1").await, Vec::<u64>::new());
}

#[tokio::test]
async fn after_zero_in_an_empty_conversation_is_an_empty_page() {
    let f = fixture(0).await;
    assert_eq!(f.page("after=0").await, Vec::<u64>::new());
    assert_eq!(f.page("").await, Vec::<u64>::new());
}

#[tokio::test]
async fn history_limit_must_be_1_to_100() {
    let f = fixture(3).await;
    let c = f.conversation;
    for limit in ["0", "101", "1000000"] {
        let path = format!("/v1/conversations/{c}/messages?limit={limit}");
        f.refused(&path, 400, "invalid_request", "limit").await;
        let path = format!("/v1/conversations/{c}/messages?after=0&limit={limit}");
        f.refused(&path, 400, "invalid_request", "limit").await;
    }
    for bad in ["-1", "x", "99999999999999999999999"] {
        let path = format!("/v1/conversations/{c}/messages?limit={bad}");
        f.refused(&path, 400, "invalid_request", "limit").await;
    }
    assert_eq!(f.page("limit=1").await, [f.ids[2]]);
    let newest_first: Vec<u64> = f.ids.iter().rev().copied().collect();
    assert_eq!(f.page("limit=100").await, newest_first);
}

#[tokio::test]
async fn search_limit_must_be_1_to_50() {
    let f = fixture(0).await;
    let (status, body) = f
        .server
        .http(
            "PUT",
            "/v1/profile",
            Some(&f.alice.token),
            Some(json!({"display_name": "Alice"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    for limit in ["0", "51", "1000000"] {
        let path = format!("/v1/users/search?prefix=al&limit={limit}");
        f.refused(&path, 400, "invalid_request", "limit").await;
    }
    for limit in ["1", "50"] {
        let (status, body) = f
            .get(&format!("/v1/users/search?prefix=al&limit={limit}"))
            .await;
        assert_eq!(status, 200, "{limit}: {body}");
        assert_eq!(body["users"].as_array().map(Vec::len), Some(1), "{body}");
    }
}

#[tokio::test]
async fn history_anchors_are_0_to_the_largest_id() {
    let f = fixture(3).await;
    let c = f.conversation;
    let newest_first: Vec<u64> = f.ids.iter().rev().copied().collect();
    assert_eq!(f.page(&format!("before={MAX_ID}")).await, newest_first);
    assert_eq!(f.page(&format!("after={MAX_ID}")).await, Vec::<u64>::new());
    let over = MAX_ID + 1;
    for (name, value) in [
        ("after", over.to_string()),
        ("before", over.to_string()),
        ("after", "-1".to_owned()),
        ("before", "x".to_owned()),
    ] {
        let path = format!("/v1/conversations/{c}/messages?{name}={value}");
        f.refused(&path, 400, "invalid_request", name).await;
    }
    let path = format!("/v1/conversations/{c}/messages?after=0&before=2");
    f.refused(&path, 400, "invalid_request", "before or after")
        .await;
}

#[tokio::test]
async fn ids_in_paths_are_validated_before_anything_is_looked_up() {
    let f = fixture(1).await;
    let c = f.conversation;
    let over = MAX_ID + 1;
    // Not IDs at all: `invalid_request`.
    for path in [
        "/v1/conversations/0".to_owned(),
        format!("/v1/conversations/{over}/receipts"),
        "/v1/conversations/0/messages".to_owned(),
        format!("/v1/conversations/{c}/messages/0"),
        format!("/v1/conversations/{c}/messages/{over}"),
        format!("/v1/conversations/{c}/messages/x"),
        "/v1/users/0/profile".to_owned(),
        format!("/v1/users/{over}/profile"),
    ] {
        f.refused(&path, 400, "invalid_request", "").await;
    }
    // Valid IDs of nothing: `not_member` for conversation routes, else `not_found`.
    for path in [
        format!("/v1/conversations/{MAX_ID}"),
        format!("/v1/conversations/{MAX_ID}/receipts"),
        format!("/v1/conversations/{MAX_ID}/messages/1"),
    ] {
        f.refused(&path, 403, "not_member", "").await;
    }
    for path in [
        format!("/v1/conversations/{c}/messages/{MAX_ID}"),
        format!("/v1/users/{MAX_ID}/profile"),
    ] {
        f.refused(&path, 404, "not_found", "").await;
    }
    let (status, body) = f
        .get(&format!("/v1/conversations/{c}/messages/{}", f.ids[0]))
        .await;
    assert_eq!(
        (status, body["id"].as_u64()),
        (200, Some(f.ids[0])),
        "{body}"
    );
    // Removing a member and unblocking take user IDs in the path too.
    for path in [
        format!("/v1/conversations/{c}/members/0"),
        "/v1/blocks/0".to_owned(),
    ] {
        let (status, body) = f
            .server
            .http("DELETE", &path, Some(&f.alice.token), None)
            .await;
        assert_eq!((status, &body["error"]), (400, &json!("invalid_request")));
    }
    // A well-formed user ID of nobody: blocking is `not_found`, unblocking succeeds as for
    // anyone not blocked.
    let token = Some(f.alice.token.as_str());
    let nobody = json!({"user_id": MAX_ID});
    let (status, body) = f
        .server
        .http("POST", "/v1/blocks", token, Some(nobody))
        .await;
    assert_eq!((status, &body["error"]), (404, &json!("not_found")));
    let path = format!("/v1/blocks/{MAX_ID}");
    let (status, _) = f.server.http("DELETE", &path, token, None).await;
    assert_eq!(status, 204);
}
