//! Profiles, the directory and blocking over real sockets (R-ACC-3, R-ACC-4).
//!
//! "Never delivered" is checked without sleeping: after the refused or withheld thing, a
//! later event is sent on the same path, and it must be the first one that arrives (the bus
//! queue of a connection is FIFO, and one connection handles its frames in order).

mod common;

use bytes::Bytes;
use chat_core::protocol::{ClientFrame, Send, ServerFrame, Subscribe, TypingUpdate};
use chat_core::{ClientKey, ConversationId, DeviceAddress, DeviceId, ErrorCode, Recipient, UserId};
use common::{Account, Client, TestServer, test_config};
use serde_json::{Value, json};

async fn server() -> TestServer {
    TestServer::start(chat_server::Config {
        search_burst_per_account: 6,
        searches_per_account_per_second: 0.001,
        ..test_config()
    })
    .await
}

async fn direct(server: &TestServer, a: &Account, b: &Account) -> (u16, Value) {
    server
        .http(
            "POST",
            "/v1/conversations/direct",
            Some(&a.token),
            Some(json!({"user_id": b.user()})),
        )
        .await
}

fn conversation(body: &Value) -> ConversationId {
    ConversationId::new(body["id"].as_u64().expect("id")).unwrap()
}

async fn set_profile(server: &TestServer, who: &Account, body: Value) -> (u16, Value) {
    server
        .http("PUT", "/v1/profile", Some(&who.token), Some(body))
        .await
}

/// The devices a send from `from` must cover, each with an empty header.
async fn recipients(server: &TestServer, from: &Account, conv: ConversationId) -> Vec<Recipient> {
    let path = format!("/v1/conversations/{conv}/devices");
    let (status, body) = server.http("GET", &path, Some(&from.token), None).await;
    assert_eq!(status, 200, "{body}");
    body["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| DeviceAddress {
            user: UserId::new(d["user"].as_u64().unwrap()).unwrap(),
            device: DeviceId::new(d["device"].as_u64().unwrap()).unwrap(),
        })
        .filter(|d| *d != from.device)
        .map(|device| Recipient {
            device,
            header: Bytes::new(),
        })
        .collect()
}

fn send(req: u32, conversation: ConversationId, key: u8, to: Vec<Recipient>) -> ClientFrame {
    Send {
        req,
        conversation,
        client_key: ClientKey::from_bytes([key; 16]),
        body: Bytes::from(vec![key; 8]),
        recipients: to,
    }
    .into()
}

async fn connected(server: &TestServer, account: &Account) -> Client {
    let mut client = server.connect(account, 0).await;
    client.until(|f| matches!(f, ServerFrame::SyncEnd(_))).await;
    client
}

/// The error fields a client can see, without the human-readable message.
fn code(body: &Value) -> (u64, String) {
    (
        body["code"].as_u64().unwrap_or(0),
        body["error"].as_str().unwrap_or("").to_owned(),
    )
}

#[tokio::test]
async fn profiles_are_validated_and_normalized() {
    let server = server().await;
    let alice = server.account("alice").await;
    let (status, body) = server
        .http("GET", "/v1/profile", Some(&alice.token), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["username"], "alice");
    assert!(body["display_name"].is_null());

    let too_long = "x".repeat(65);
    let longest = "😀".repeat(64);
    for bad in [
        json!({"display_name": ""}),
        json!({"display_name": "   "}),
        json!({"display_name": too_long}),
        json!({"display_name": "a\u{7}b"}),
        json!({"display_name": "a\u{202e}b"}),
        json!({"display_name": "ok", "status": "line\nbreak"}),
        json!({"display_name": "ok", "status": "s".repeat(141)}),
        json!({"display_name": "ok", "avatar": "00112233445566778899aabbccddeeff"}),
        json!({"display_name": "ok", "colour": "red"}),
    ] {
        let (status, body) = set_profile(&server, &alice, bad.clone()).await;
        assert_eq!(
            (status, code(&body).1.as_str()),
            (400, "invalid_request"),
            "{bad}"
        );
    }
    let (status, body) = set_profile(&server, &alice, json!({"display_name": longest})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["display_name"], longest.as_str());

    // NFD in, NFC out; trimmed; an empty status is no status.
    let (status, body) = set_profile(
        &server,
        &alice,
        json!({"display_name": "  Zoe\u{308}  ", "status": ""}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["display_name"], "Zoë");
    assert!(body["status"].is_null());
    let (_, got) = server
        .http("GET", "/v1/profile", Some(&alice.token), None)
        .await;
    assert_eq!(got, body);
    // Found by the NFC form and by the NFD form of the prefix.
    for prefix in ["zo%C3%AB", "ZOE%CC%88"] {
        let path = format!("/v1/users/search?prefix={prefix}");
        let (status, page) = server.http("GET", &path, Some(&alice.token), None).await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["users"][0]["display_name"], "Zoë", "{prefix}");
    }
}

#[tokio::test]
async fn profiles_are_shown_to_contacts_only_and_refusal_looks_like_absence() {
    let server = server().await;
    let alice = server.account("alice").await;
    let bob = server.account("bob").await;
    let (status, _) = set_profile(&server, &alice, json!({"display_name": "Alice A."})).await;
    assert_eq!(status, 200);
    let path = format!("/v1/users/{}/profile", alice.user());
    let (status, refused) = server.http("GET", &path, Some(&bob.token), None).await;
    assert_eq!(status, 404);
    let (status, missing) = server
        .http("GET", "/v1/users/999999/profile", Some(&bob.token), None)
        .await;
    assert_eq!(status, 404);
    assert_eq!(
        refused, missing,
        "a hidden profile looks like a missing user"
    );

    assert_eq!(direct(&server, &alice, &bob).await.0, 200);
    let (status, body) = server.http("GET", &path, Some(&bob.token), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["display_name"], "Alice A.");
    assert_eq!(body["username"], "alice");
    // Bob never set one: his contact sees the account with null profile fields.
    let path = format!("/v1/users/{}/profile", bob.user());
    let (status, body) = server.http("GET", &path, Some(&alice.token), None).await;
    assert_eq!(status, 200);
    assert!(body["display_name"].is_null());
}

#[tokio::test]
async fn search_pages_exactly_and_is_rate_limited_per_account() {
    let server = server().await;
    let searcher = server.account("searcher").await;
    for (i, name) in ["Ann Lee", "anna", "ANNE", "Annika", "Anno"]
        .iter()
        .enumerate()
    {
        let account = server.account(&format!("ann{i}")).await;
        let (status, _) = set_profile(&server, &account, json!({"display_name": name})).await;
        assert_eq!(status, 200);
    }
    let decoy = server.account("decoy").await;
    set_profile(&server, &decoy, json!({"display_name": "Anm"})).await;

    // Pages of 2: 2, 2, 1; the last has no cursor.
    let mut names = Vec::new();
    let mut after: Option<String> = None;
    let mut sizes = Vec::new();
    loop {
        let mut path = "/v1/users/search?prefix=aNn&limit=2".to_owned();
        if let Some(after) = &after {
            path.push_str(&format!("&after={after}"));
        }
        let (status, page) = server.http("GET", &path, Some(&searcher.token), None).await;
        assert_eq!(status, 200, "{page}");
        let users = page["users"].as_array().unwrap();
        sizes.push(users.len());
        names.extend(
            users
                .iter()
                .map(|u| u["display_name"].as_str().unwrap().to_owned()),
        );
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(sizes, [2, 2, 1]);
    assert_eq!(names, ["Ann Lee", "anna", "ANNE", "Annika", "Anno"]);

    // An exact fit: all five, and no cursor to a page that would be empty.
    let (status, page) = server
        .http(
            "GET",
            "/v1/users/search?prefix=ann&limit=5",
            Some(&searcher.token),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(page["users"].as_array().unwrap().len(), 5);
    assert!(page.get("next").is_none(), "{page}");

    // Bad input is refused (and still costs a token).
    let (status, body) = server
        .http(
            "GET",
            "/v1/users/search?prefix=ann&after=zz",
            Some(&searcher.token),
            None,
        )
        .await;
    assert_eq!((status, code(&body).1.as_str()), (400, "invalid_request"));

    // Five searches made, one left in the burst of six, then rate_limited with Retry-After.
    let (status, _) = server
        .http(
            "GET",
            "/v1/users/search?prefix=b",
            Some(&searcher.token),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = server
        .http(
            "GET",
            "/v1/users/search?prefix=b",
            Some(&searcher.token),
            None,
        )
        .await;
    assert_eq!((status, code(&body).1.as_str()), (429, "rate_limited"));
    // Another account has its own budget.
    let (status, _) = server
        .http("GET", "/v1/users/search?prefix=b", Some(&decoy.token), None)
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn blocked_user_is_refused_or_silently_dropped_everywhere() {
    blocked_paths(server().await).await;
}

/// The same on the embedded SQLite store, where the withholding happens in SQL.
#[tokio::test]
async fn blocked_user_is_refused_or_silently_dropped_on_sqlite() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = format!("sqlite://{}", dir.path().join("chat.db").display());
    blocked_paths(
        TestServer::start(chat_server::Config {
            store: store.into(),
            ..test_config()
        })
        .await,
    )
    .await;
}

async fn blocked_paths(server: TestServer) {
    let alice = server.account("alice").await;
    let bob = server.account("bob").await;
    let bob2 = server.login("bob").await;
    let carol = server.account("carol").await;
    let (status, body) = direct(&server, &alice, &bob).await;
    assert_eq!(status, 200);
    let one_to_one = conversation(&body);
    let (status, body) = server
        .http(
            "POST",
            "/v1/conversations/groups",
            Some(&alice.token),
            Some(json!({"members": [bob.user(), carol.user()]})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let group = conversation(&body);
    let bundles = format!("/v1/users/{}/bundles", alice.user());
    assert_eq!(
        server.http("GET", &bundles, Some(&bob.token), None).await.0,
        200
    );

    // Bob watches Alice's presence before the block; Alice is not connected yet.
    let mut bob_ws = connected(&server, &bob).await;
    bob_ws
        .send(
            Subscribe {
                users: vec![alice.user()],
            }
            .into(),
        )
        .await;
    assert!(matches!(bob_ws.recv().await, ServerFrame::Presence(p) if !p.online));

    let (status, _) = server
        .http(
            "POST",
            "/v1/blocks",
            Some(&alice.token),
            Some(json!({"user_id": bob.user()})),
        )
        .await;
    assert_eq!(status, 204);
    let (status, again) = server
        .http(
            "POST",
            "/v1/blocks",
            Some(&alice.token),
            Some(json!({"user_id": bob.user()})),
        )
        .await;
    assert_eq!(status, 204, "blocking twice is fine: {again}");
    let (_, list) = server
        .http("GET", "/v1/blocks", Some(&alice.token), None)
        .await;
    assert_eq!(list["blocks"][0]["user_id"], bob.user().get());
    assert_eq!(list["blocks"].as_array().unwrap().len(), 1);
    let (_, bobs) = server
        .http("GET", "/v1/blocks", Some(&bob.token), None)
        .await;
    assert_eq!(bobs["blocks"], json!([]), "a block is one-way");

    // Opening the 1:1 and fetching bundles look exactly like a missing user.
    let (status, refused) = direct(&server, &bob, &alice).await;
    assert_eq!(status, 404);
    let (_, missing) = server
        .http(
            "POST",
            "/v1/conversations/direct",
            Some(&bob.token),
            Some(json!({"user_id": 999_999})),
        )
        .await;
    assert_eq!(code(&refused), code(&missing));
    let (status, refused) = server.http("GET", &bundles, Some(&bob.token), None).await;
    assert_eq!(status, 404);
    let (_, missing) = server
        .http("GET", "/v1/users/999999/bundles", Some(&bob.token), None)
        .await;
    assert_eq!(refused, missing);
    // The blocker still can.
    assert_eq!(direct(&server, &alice, &bob).await.0, 200);

    // Presence: the old subscription ended with the block (the drop is queued ahead of this
    // frame, and the connection reads its queue first), and a new one is refused like a
    // non-contact's.
    bob_ws
        .send(
            Subscribe {
                users: vec![alice.user()],
            }
            .into(),
        )
        .await;
    let ServerFrame::Error(err) = bob_ws.recv().await else {
        panic!("expected a refusal")
    };
    assert_eq!(err.code, ErrorCode::Forbidden);
    assert_eq!(err.message, format!("not a contact: {}", alice.user()));

    let mut alice_ws = connected(&server, &alice).await; // Alice comes online.
    let mut bob2_ws = connected(&server, &bob2).await;

    // Bob's 1:1 send is acknowledged and reaches his other device, not Alice.
    bob_ws
        .send(send(
            1,
            one_to_one,
            1,
            recipients(&server, &bob, one_to_one).await,
        ))
        .await;
    let ServerFrame::Sent(sent) = bob_ws.recv().await else {
        panic!("expected sent")
    };
    assert!(!sent.duplicate);
    assert!(matches!(bob2_ws.recv().await, ServerFrame::Deliver(d) if d.id == sent.id));
    // So is a retry, and typing.
    bob_ws
        .send(send(
            2,
            one_to_one,
            1,
            recipients(&server, &bob, one_to_one).await,
        ))
        .await;
    assert!(matches!(bob_ws.recv().await, ServerFrame::Sent(s) if s.duplicate && s.id == sent.id));
    bob_ws
        .send(
            TypingUpdate {
                conversation: one_to_one,
                active: true,
            }
            .into(),
        )
        .await;
    // In the group both stay members: Bob's group message is the first thing Alice gets.
    bob_ws
        .send(send(3, group, 3, recipients(&server, &bob, group).await))
        .await;
    assert!(matches!(bob_ws.recv().await, ServerFrame::Sent(s) if s.conversation == group));
    match alice_ws.recv().await {
        ServerFrame::Deliver(d) => assert_eq!(d.conversation, group),
        other => panic!("Alice got {other:?} before the group message"),
    }
    // Bob got no presence event when Alice came online (every frame he read above was the
    // expected one), and Alice's reply in the 1:1 (the block is one-way) is his next frame.
    alice_ws
        .send(send(
            4,
            one_to_one,
            4,
            recipients(&server, &alice, one_to_one).await,
        ))
        .await;
    assert!(matches!(alice_ws.recv().await, ServerFrame::Sent(_)));
    match bob_ws.recv().await {
        ServerFrame::Deliver(d) => assert_eq!(d.conversation, one_to_one),
        other => panic!("Bob got {other:?} before Alice's message"),
    }

    // Alice's inbox never held it, and her history does not show it; Bob's does.
    drop(alice_ws);
    let mut again = server.connect(&alice, 0).await;
    let (before, _) = again.until(|f| matches!(f, ServerFrame::SyncEnd(_))).await;
    assert!(before.iter().all(
        |f| !matches!(f, ServerFrame::Deliver(d) if d.conversation == one_to_one && d.id == sent.id)
    ));
    let history = format!("/v1/conversations/{one_to_one}/messages");
    let (_, mine) = server.http("GET", &history, Some(&alice.token), None).await;
    let ids: Vec<u64> = mine["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert!(!ids.contains(&sent.id.get()), "{mine}");
    assert_eq!(ids.len(), 1, "only Alice's own message");
    let (_, theirs) = server.http("GET", &history, Some(&bob.token), None).await;
    assert_eq!(theirs["messages"].as_array().unwrap().len(), 2);
    let one = format!("/v1/conversations/{one_to_one}/messages/{}", sent.id);
    assert_eq!(
        server.http("GET", &one, Some(&alice.token), None).await.0,
        404
    );
    assert_eq!(
        server.http("GET", &one, Some(&bob.token), None).await.0,
        200
    );

    // Unblocking restores everything; what was withheld stays withheld.
    let path = format!("/v1/blocks/{}", bob.user());
    assert_eq!(
        server
            .http("DELETE", &path, Some(&alice.token), None)
            .await
            .0,
        204
    );
    assert_eq!(
        server
            .http("DELETE", &path, Some(&alice.token), None)
            .await
            .0,
        204
    );
    assert_eq!(direct(&server, &bob, &alice).await.0, 200);
    assert_eq!(
        server.http("GET", &bundles, Some(&bob.token), None).await.0,
        200
    );
    assert_eq!(
        server.http("GET", &one, Some(&alice.token), None).await.0,
        404
    );
    bob_ws
        .send(send(
            5,
            one_to_one,
            5,
            recipients(&server, &bob, one_to_one).await,
        ))
        .await;
    match again.recv().await {
        ServerFrame::Deliver(d) => assert_eq!(d.conversation, one_to_one),
        other => panic!("expected Bob's message, got {other:?}"),
    }
    assert!(matches!(bob_ws.recv().await, ServerFrame::Sent(s) if s.id.get() == 3));

    // Blocked again, a fourth message is withheld; Alice's newest page of two is filled from
    // older messages in its place: 3 and 2 (1 and 4 were withheld).
    let (status, _) = server
        .http(
            "POST",
            "/v1/blocks",
            Some(&alice.token),
            Some(json!({"user_id": bob.user()})),
        )
        .await;
    assert_eq!(status, 204);
    bob_ws
        .send(send(
            6,
            one_to_one,
            6,
            recipients(&server, &bob, one_to_one).await,
        ))
        .await;
    assert!(matches!(bob_ws.recv().await, ServerFrame::Sent(s) if s.id.get() == 4));
    let page = format!("{history}?limit=2");
    let (_, body) = server.http("GET", &page, Some(&alice.token), None).await;
    let ids: Vec<u64> = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [3, 2]);
}

#[tokio::test]
async fn profile_changes_reach_peers_on_other_connections() {
    let server = server().await;
    let alice = server.account("alice").await;
    let alice2 = server.login("alice").await;
    let bob = server.account("bob").await;
    let carol = server.account("carol").await;
    assert_eq!(direct(&server, &alice, &bob).await.0, 200);
    let mut bob_ws = connected(&server, &bob).await;
    let mut alice2_ws = connected(&server, &alice2).await;
    let mut carol_ws = connected(&server, &carol).await;

    let (status, _) = set_profile(
        &server,
        &alice,
        json!({"display_name": "Alice", "status": "in a meeting"}),
    )
    .await;
    assert_eq!(status, 200);
    for ws in [&mut bob_ws, &mut alice2_ws] {
        match ws.recv().await {
            ServerFrame::Profile(p) => {
                assert_eq!(p.user, alice.user());
                assert_eq!(p.display_name, "Alice");
                assert_eq!(p.status.as_deref(), Some("in a meeting"));
                assert_eq!(p.avatar, None);
            }
            other => panic!("expected a profile event, got {other:?}"),
        }
    }
    // Carol shares no conversation with Alice: the first profile event she sees is her own.
    let (status, _) = set_profile(&server, &carol, json!({"display_name": "Carol"})).await;
    assert_eq!(status, 200);
    match carol_ws.recv().await {
        ServerFrame::Profile(p) => assert_eq!(p.user, carol.user()),
        other => panic!("expected Carol's own profile event, got {other:?}"),
    }
}
