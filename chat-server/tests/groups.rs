//! Group roles and settings over real sockets on 127.0.0.1 (issue 17): the routes enforce
//! chat-core's group rules (a non-admin cannot remove others, admins promote and demote,
//! the settings decide who adds and renames), the member list carries roles, and the
//! 100-member limit holds under concurrent adds against SQLite and PostgreSQL.

mod common;

use std::sync::Arc;

use chat_core::ConversationId;
use chat_core::limits::MAX_GROUP_MEMBERS;
use common::{Account, TestServer, conversation_id, direct, test_config};
use futures::future::join_all;
use serde_json::{Value, json};

async fn create(server: &TestServer, creator: &Account, others: &[&Account]) -> ConversationId {
    let members: Vec<u64> = others.iter().map(|a| a.user().get()).collect();
    let (status, body) = server
        .http(
            "POST",
            "/v1/conversations/groups",
            Some(&creator.token),
            Some(json!({"members": members})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    conversation_id(&body)
}

async fn members(server: &TestServer, who: &Account, group: ConversationId) -> Value {
    let path = format!("/v1/conversations/{group}/members");
    let (status, body) = server.http("GET", &path, Some(&who.token), None).await;
    assert_eq!(status, 200, "{body}");
    body
}

fn role(body: &Value, who: &Account) -> Option<String> {
    body["roles"]
        .as_array()?
        .iter()
        .find(|r| r["user_id"].as_u64() == Some(who.user().get()))
        .and_then(|r| r["role"].as_str().map(str::to_owned))
}

/// `(status, error code)` of a request.
async fn call(
    server: &TestServer,
    who: &Account,
    method: &str,
    path: String,
    body: Option<Value>,
) -> (u16, Option<String>) {
    let (status, answer) = server.http(method, &path, Some(&who.token), body).await;
    (status, answer["error"].as_str().map(str::to_owned))
}

#[tokio::test]
async fn roles_and_settings_are_enforced_by_the_routes() {
    let server = TestServer::start(test_config()).await;
    let alice = server.account("alice").await;
    let bob = server.account("bob").await;
    let carol = server.account("carol").await;
    let dave = server.account("dave").await;
    let g = create(&server, &alice, &[&bob, &carol]).await;
    let forbidden = (403, Some("forbidden".to_owned()));
    let ok = (204, None);

    // The creator is the admin; the list keeps `members` for old clients and adds roles.
    let list = members(&server, &bob, g).await;
    assert_eq!(list["members"].as_array().map(Vec::len), Some(3));
    assert_eq!(role(&list, &alice).as_deref(), Some("admin"));
    assert_eq!(role(&list, &bob).as_deref(), Some("member"));
    assert_eq!(list["settings"]["add_members"], "admins");

    // A member cannot remove another, add, promote or change the settings.
    let kick_carol = format!("/v1/conversations/{g}/members/{}", carol.user());
    let add = format!("/v1/conversations/{g}/members");
    let admin_of = |a: &Account| format!("/v1/conversations/{g}/members/{}/admin", a.user());
    let settings = format!("/v1/conversations/{g}/settings");
    let everyone = json!({"add_members": "everyone", "edit_name": "admins"});
    assert_eq!(
        call(&server, &bob, "DELETE", kick_carol.clone(), None).await,
        forbidden
    );
    let dave_in = json!({"members": [dave.user()]});
    assert_eq!(
        call(&server, &bob, "POST", add.clone(), Some(dave_in.clone())).await,
        forbidden
    );
    assert_eq!(
        call(&server, &bob, "PUT", admin_of(&bob), None).await,
        forbidden
    );
    assert_eq!(
        call(
            &server,
            &bob,
            "PUT",
            settings.clone(),
            Some(everyone.clone())
        )
        .await,
        forbidden
    );
    assert_eq!(members(&server, &alice, g).await, list, "nothing changed");

    // Once the admin lets everyone add, bob adds; renaming became admins-only.
    assert_eq!(
        call(&server, &alice, "PUT", settings, Some(everyone)).await,
        ok
    );
    assert_eq!(call(&server, &bob, "POST", add, Some(dave_in)).await, ok);
    let name = format!("/v1/conversations/{g}/name");
    assert_eq!(
        call(
            &server,
            &bob,
            "PUT",
            name.clone(),
            Some(json!({"name": "x"}))
        )
        .await,
        forbidden
    );
    assert_eq!(
        call(&server, &alice, "PUT", name, Some(json!({"name": "Team"}))).await,
        ok
    );
    let list = members(&server, &dave, g).await;
    assert_eq!(list["name"], "Team");
    assert_eq!(role(&list, &dave).as_deref(), Some("member"));

    // Promote bob, who then removes carol; the last admin cannot be demoted.
    assert_eq!(call(&server, &alice, "PUT", admin_of(&bob), None).await, ok);
    assert_eq!(call(&server, &bob, "DELETE", kick_carol, None).await, ok);
    assert_eq!(
        call(&server, &bob, "DELETE", admin_of(&alice), None).await,
        ok
    );
    assert_eq!(
        call(&server, &bob, "DELETE", admin_of(&bob), None).await,
        (400, Some("invalid_request".to_owned()))
    );

    // The last admin leaving promotes the oldest member (alice, a creator-batch member).
    let leave = format!("/v1/conversations/{g}/leave");
    assert_eq!(call(&server, &bob, "POST", leave.clone(), None).await, ok);
    let list = members(&server, &alice, g).await;
    assert_eq!(role(&list, &alice).as_deref(), Some("admin"));
    assert_eq!(role(&list, &bob), None);
    // bob is no longer a member: every route refuses him.
    assert_eq!(
        call(&server, &bob, "POST", leave, None).await,
        (403, Some("not_member".to_owned()))
    );

    // A one-to-one conversation has no roles or group operations.
    let d = direct(&server, &alice, &dave).await;
    let list = members(&server, &alice, d).await;
    assert!(list.get("roles").is_none(), "{list}");
    assert_eq!(
        call(
            &server,
            &alice,
            "PUT",
            format!("/v1/conversations/{d}/members/{}/admin", dave.user()),
            None
        )
        .await
        .0,
        400
    );
}

#[tokio::test]
async fn create_takes_an_optional_name_and_settings() {
    let server = TestServer::start(test_config()).await;
    let alice = server.account("alice").await;
    let bob = server.account("bob").await;
    let (status, body) = server
        .http(
            "POST",
            "/v1/conversations/groups",
            Some(&alice.token),
            Some(json!({
                "members": [bob.user()],
                "name": "Hikers",
                "settings": {"add_members": "everyone", "edit_name": "everyone"},
            })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let list = members(&server, &bob, conversation_id(&body)).await;
    assert_eq!(list["name"], "Hikers");
    assert_eq!(list["settings"]["add_members"], "everyone");
    let (status, body) = server
        .http(
            "POST",
            "/v1/conversations/groups",
            Some(&alice.token),
            Some(json!({"members": [bob.user()], "name": ""})),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request"))
    );
}

/// Concurrent adds of one user each, from two admins over separate connections: exactly
/// `MAX_GROUP_MEMBERS` members in the end, every refusal `group_full`.
async fn concurrent_adds_stop_at_the_limit(server: TestServer) {
    let alice = server.account("alice").await;
    let bob = server.account("bob").await;
    let g = create(&server, &alice, &[&bob]).await;
    let (status, _) = server
        .http(
            "PUT",
            &format!("/v1/conversations/{g}/members/{}/admin", bob.user()),
            Some(&alice.token),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let server = Arc::new(server);
    let mut candidates = Vec::new();
    for chunk in (0..MAX_GROUP_MEMBERS + 10).collect::<Vec<_>>().chunks(20) {
        let batch = chunk.iter().map(|i| {
            let server = Arc::clone(&server);
            async move { server.account(&format!("user{i}")).await }
        });
        candidates.extend(join_all(batch).await);
    }
    let adds = candidates.iter().enumerate().map(|(i, c)| {
        let server = Arc::clone(&server);
        let admin = if i % 2 == 0 { &alice } else { &bob };
        let body = json!({"members": [c.user()]});
        let token = admin.token.clone();
        async move {
            let path = format!("/v1/conversations/{g}/members");
            server.http("POST", &path, Some(&token), Some(body)).await
        }
    });
    let (mut ok, mut full) = (0, 0);
    for (status, body) in join_all(adds).await {
        match status {
            204 => ok += 1,
            409 => {
                assert_eq!(body["error"], "group_full");
                full += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!((ok, full), (MAX_GROUP_MEMBERS - 2, 12));
    let list = members(&server, &alice, g).await;
    assert_eq!(
        list["members"].as_array().map(Vec::len),
        Some(MAX_GROUP_MEMBERS)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_adds_stop_at_the_limit_on_sqlite() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = chat_server::Config {
        store: format!("sqlite://{}/chat.db", dir.path().display()).into(),
        ..test_config()
    };
    concurrent_adds_stop_at_the_limit(TestServer::start(config).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_adds_stop_at_the_limit_on_postgres() {
    let Some(db) = chat_storage::testing::FreshPostgres::create("chat_groups").await else {
        return;
    };
    let store = chat_storage::PostgresStore::connect(&db.url(), Default::default())
        .await
        .expect("connect");
    let server = TestServer::with_store(test_config(), Arc::new(store)).await;
    concurrent_adds_stop_at_the_limit(server).await;
}
