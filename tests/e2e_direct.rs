//! Two users with two devices each exchange text; every device decrypts it, and the
//! server's database holds no plaintext.

mod common;

use common::{TestServer, config, device, next_message, synced, user};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_reaches_every_device_and_the_server_stores_no_plaintext() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("server.db");
    let server = TestServer::start(config(&format!("sqlite://{}", db.display()))).await;

    let (alice1, mut a1) = user(&server, "alice").await;
    let (_alice2, mut a2) = device(&server, "alice", &alice1).await;
    let (bob1, mut b1) = user(&server, "bob").await;
    let (_bob2, mut b2) = device(&server, "bob", &bob1).await;
    for e in [&mut a1, &mut a2, &mut b1, &mut b2] {
        synced(e).await;
    }

    let bob = alice1.user_by_name("bob").await.expect("find bob");
    let chat = alice1.open_direct(bob).await.expect("open");
    let to_bob = alice1.conversation(chat);
    let canary = "canary-7f3a91c2-the-server-must-never-see-this";
    let id = to_bob.send_text(canary).await.expect("send");

    for events in [&mut b1, &mut b2, &mut a2] {
        let m = next_message(events, chat).await;
        assert_eq!(m.text(), Some(canary));
        assert_eq!(m.id, id);
        assert_eq!(m.sender, alice1.device());
    }

    // And back, from bob's second device, to all the others.
    let reply = "reply-0c1d2e3f-also-secret";
    let chat_b = bob1.open_direct(alice1.user()).await.expect("open");
    assert_eq!(chat_b, chat);
    let reply_id = _bob2
        .conversation(chat)
        .send_text(reply)
        .await
        .expect("reply");
    for events in [&mut a1, &mut a2, &mut b1] {
        let m = next_message(events, chat).await;
        assert_eq!(m.text(), Some(reply));
        assert_eq!(m.id, reply_id);
    }
    // The text limit: 100,000 characters go through (multi-byte ones too); one more is
    // refused on the device, before anything is encrypted or sent.
    let longest = "é".repeat(100_000);
    let long_id = to_bob.send_text(&longest).await.expect("longest text");
    let m = next_message(&mut b1, chat).await;
    assert_eq!((m.id, m.text().map(str::len)), (long_id, Some(200_000)));
    for events in [&mut b2, &mut a2] {
        assert_eq!(next_message(events, chat).await.id, long_id);
    }
    let too_long = to_bob.send_text(&"x".repeat(100_001)).await;
    assert!(matches!(too_long, Err(chat::client::Error::Content(_))));
    assert_eq!(alice1.pending().await.expect("outbox"), 0);

    let history = to_bob.history(None, 10).await.expect("history");
    let texts: Vec<_> = history.iter().filter_map(|m| m.text()).collect();
    assert_eq!(texts, [canary, reply, longest.as_str()]);

    // The handle is a clone of Alice's client: it goes too, or her connection stays.
    drop((to_bob, alice1, _alice2, bob1, _bob2));
    server.shutdown().await;
    let mut scanned = 0;
    for entry in std::fs::read_dir(dir.path()).expect("read dir") {
        // The store may still be removing its WAL files as it closes; a file that is gone
        // holds nothing (its pages are in the database file by then).
        let Ok(bytes) = std::fs::read(entry.expect("entry").path()) else {
            continue;
        };
        scanned += bytes.len();
        for needle in [canary, reply, "canary-7f3a91c2"] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "plaintext found in the server's files"
            );
        }
    }
    assert!(scanned > 0, "the server wrote its database");
}
