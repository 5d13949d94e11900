//! The behaviour every [`ClientStore`] must have, run against each implementation (with the
//! `testing` feature, also against a store of one's own: call [`run`] from its tests).

use chat_core::{
    ClientKey, ConversationId, ConversationKind, DeviceAddress, InboxPos, MessageId, Timestamp,
};

use super::*;

fn dev(u: u64, d: u64) -> DeviceAddress {
    DeviceAddress {
        user: chat_core::UserId::new(u).unwrap(),
        device: chat_core::DeviceId::new(d).unwrap(),
    }
}

fn msg(c: u64, id: u64, text: &[u8]) -> StoredMessage {
    StoredMessage {
        conversation: ConversationId::new(c).unwrap(),
        id: MessageId::new(id).unwrap(),
        sender: dev(1, 1),
        client_key: ClientKey::from_bytes([id as u8; 16]),
        sent_at: Timestamp::from_millis(5),
        plaintext: text.to_vec(),
    }
}

/// Checks a new, empty `store` against the behaviour the client relies on (atomic batches,
/// point reads, history pages, relations, read positions, unread counts, search, the
/// outbox, recovery points); panics at the first difference. Leaves the store holding what
/// it wrote (the inbox cursor at 41 and one outbox entry), so a test can reopen a durable
/// store and check that it kept them.
pub fn run(store: &dyn ClientStore) {
    let conv = ConversationId::new(3).unwrap();
    assert!(store.device().unwrap().is_none());
    let someone = chat_core::UserId::new(4).unwrap();
    assert_eq!(store.trust(someone).unwrap(), None);
    for record in [vec![1, 2], vec![3]] {
        store
            .commit(vec![Write::Trust {
                user: someone,
                record,
            }])
            .unwrap();
    }
    assert_eq!(store.trust(someone).unwrap(), Some(vec![3]));
    // A staged batch is read back at once, and stays after the sync that makes it durable.
    store
        .stage(vec![Write::Trust {
            user: someone,
            record: vec![4],
        }])
        .unwrap();
    assert_eq!(store.trust(someone).unwrap(), Some(vec![4]));
    store.sync().unwrap();
    store.sync().unwrap();
    assert_eq!(store.trust(someone).unwrap(), Some(vec![4]));
    assert_eq!(store.verified_group(conv).unwrap(), None);
    for pickle in [vec![1, 2], vec![3]] {
        store
            .commit(vec![Write::VerifiedGroup {
                conversation: conv,
                pickle,
            }])
            .unwrap();
    }
    assert_eq!(store.verified_group(conv).unwrap(), Some(vec![3]));
    assert_eq!(store.signed_prekey_made_at().unwrap(), None);
    store
        .commit(vec![Write::SignedPrekeyMadeAt(Timestamp::from_millis(77))])
        .unwrap();
    assert_eq!(
        store.signed_prekey_made_at().unwrap(),
        Some(Timestamp::from_millis(77))
    );
    assert_eq!(store.cursor().unwrap(), InboxPos::ZERO);
    let record = DeviceRecord {
        server: "127.0.0.1:1".into(),
        address: dev(1, 2),
        token: "t".into(),
    };
    store
        .commit(vec![
            Write::Device(record.clone()),
            Write::Account(Secret::new(vec![1, 2])),
            Write::Sessions(dev(2, 3), Secret::new(vec![9])),
            Write::SenderKey {
                conversation: conv,
                pickle: Secret::new(vec![7]),
                distributed: vec![dev(2, 3), dev(4, 5)],
            },
            Write::Receiver {
                conversation: conv,
                sender: dev(2, 3),
                pickle: Secret::new(vec![8]),
            },
            Write::Cursor(InboxPos::new(41).unwrap()),
            Write::Conversation(ConversationRecord {
                id: conv,
                kind: ConversationKind::Group,
            }),
        ])
        .unwrap();
    assert_eq!(store.device().unwrap(), Some(record));
    assert_eq!(store.account().unwrap().unwrap().as_slice(), [1, 2]);
    assert_eq!(store.sessions(dev(2, 3)).unwrap().unwrap().as_slice(), [9]);
    assert!(store.sessions(dev(2, 4)).unwrap().is_none());
    let (sk, holders) = store.sender_key(conv).unwrap().unwrap();
    assert_eq!(
        (sk.as_slice(), holders),
        (&[7u8][..], vec![dev(2, 3), dev(4, 5)])
    );
    assert_eq!(
        store.receiver(conv, dev(2, 3)).unwrap().unwrap().as_slice(),
        [8]
    );
    assert_eq!(store.cursor().unwrap().get(), 41);
    assert_eq!(
        store.conversations().unwrap()[0].kind,
        ConversationKind::Group
    );
    let first = store.conversations().unwrap()[0];
    assert_eq!(store.conversation(first.id).unwrap(), Some(first));
    assert_eq!(
        store
            .conversation(ConversationId::new(999).unwrap())
            .unwrap(),
        None
    );

    // History: ordered, paged, and a message stored twice is kept once (the first).
    store
        .commit(vec![
            Write::Message(msg(3, 2, b"b")),
            Write::Message(msg(3, 1, b"a")),
            Write::Message(msg(4, 1, b"other")),
        ])
        .unwrap();
    store
        .commit(vec![Write::Message(msg(3, 2, b"dup"))])
        .unwrap();
    let h = store.messages(conv, None, 10).unwrap();
    assert_eq!(h, vec![msg(3, 1, b"a"), msg(3, 2, b"b")]);
    let after = store
        .messages(conv, Some(MessageId::new(1).unwrap()), 10)
        .unwrap();
    assert_eq!(after, vec![msg(3, 2, b"b")]);

    // Outbox: oldest first; a put with a known key replaces the payload in place.
    let entry = |k: u8, p: u8| OutboxEntry {
        client_key: ClientKey::from_bytes([k; 16]),
        conversation: conv,
        payload: Secret::new(vec![p]),
        plaintext: vec![k],
    };
    store
        .commit(vec![
            Write::OutboxPut(entry(1, 1)),
            Write::OutboxPut(entry(2, 1)),
        ])
        .unwrap();
    store.commit(vec![Write::OutboxPut(entry(1, 9))]).unwrap();
    assert_eq!(
        store.outbox_entry(entry(2, 1).client_key).unwrap(),
        Some(entry(2, 1))
    );
    assert_eq!(store.outbox_entry(entry(9, 9).client_key).unwrap(), None);
    assert_eq!(store.outbox_len().unwrap(), 2);
    let o = store.outbox().unwrap();
    assert_eq!(o, vec![entry(1, 9), entry(2, 1)]);
    store
        .commit(vec![Write::OutboxRemove(ClientKey::from_bytes([1; 16]))])
        .unwrap();
    assert_eq!(store.outbox().unwrap(), vec![entry(2, 1)]);

    relations_reads_and_search(store);
}

fn content_msg(c: u64, id: u64, user: u64, content: &chat_core::Content) -> StoredMessage {
    StoredMessage {
        sender: dev(user, 1),
        ..msg(c, id, &content.encode().unwrap())
    }
}

fn text(body: &str) -> chat_core::Content {
    chat_core::Content::Text(chat_core::Text {
        body: body.into(),
        reply_to: None,
    })
}

fn ids(list: &[StoredMessage]) -> Vec<u64> {
    list.iter().map(|m| m.id.get()).collect()
}

fn relations_reads_and_search(store: &dyn ClientStore) {
    use chat_core::{Content, Delete, Edit, Reaction, ReadPosition, UserId};

    let conv = ConversationId::new(9).unwrap();
    let mid = |n: u64| MessageId::new(n).unwrap();
    let target = |n: u64| mid(n);
    let alice = UserId::new(1).unwrap();
    let bob = UserId::new(2).unwrap();
    store
        .commit(vec![
            Write::Message(content_msg(9, 1, 1, &text("one"))),
            Write::Message(content_msg(9, 2, 2, &text("two"))),
            Write::Message(content_msg(
                9,
                3,
                1,
                &Content::Edit(Edit {
                    target: target(1),
                    body: "uno".into(),
                }),
            )),
            Write::Message(content_msg(9, 4, 2, &text("four"))),
            Write::Message(content_msg(
                9,
                5,
                2,
                &Content::Reaction(Reaction {
                    target: target(1),
                    emoji: "+1".into(),
                    remove: false,
                }),
            )),
            // Bob deletes his own message 4; a delete of Alice's 2 by... Alice does not count.
            Write::Message(content_msg(
                9,
                6,
                2,
                &Content::Delete(Delete { target: target(4) }),
            )),
            Write::Message(content_msg(
                9,
                7,
                1,
                &Content::Delete(Delete { target: target(2) }),
            )),
            Write::Message(content_msg(9, 8, 2, &text("eight"))),
        ])
        .unwrap();

    assert_eq!(store.message(conv, mid(3)).unwrap().unwrap().id, mid(3));
    assert!(store.message(conv, mid(99)).unwrap().is_none());
    let newest = store.newest_messages().unwrap();
    assert!(newest.contains(&(conv, mid(8))), "{newest:?}");
    assert!(newest.iter().all(|(c, _)| c.get() != 77));

    // Standalone messages only, newest first, paged by `before`.
    assert_eq!(
        ids(&store.standalone(conv, None, 10).unwrap()),
        [8, 4, 2, 1]
    );
    assert_eq!(ids(&store.standalone(conv, Some(mid(4)), 1).unwrap()), [2]);
    // Relations by target, in ID order.
    assert_eq!(ids(&store.relations(conv, mid(1)).unwrap()), [3, 5]);
    assert_eq!(ids(&store.relations(conv, mid(4)).unwrap()), [6]);
    assert!(store.relations(conv, mid(8)).unwrap().is_empty());

    // Read positions only move forward.
    assert_eq!(store.read_position(conv).unwrap(), ReadPosition::NONE);
    store
        .commit(vec![Write::ReadPosition {
            conversation: conv,
            up_to: mid(2),
        }])
        .unwrap();
    store
        .commit(vec![Write::ReadPosition {
            conversation: conv,
            up_to: mid(1),
        }])
        .unwrap();
    let read = store.read_position(conv).unwrap();
    assert_eq!(read, ReadPosition::up_to(mid(2)));

    // Unread candidates: standalone, after the position, not deleted by their own sender
    // (4 is; 2 was "deleted" by someone else, but it is before the position anyway).
    let unread = store.unread(conv, read).unwrap();
    assert_eq!(unread, vec![(mid(8), bob)]);
    let all = store.unread(conv, ReadPosition::NONE).unwrap();
    assert_eq!(all, vec![(mid(1), alice), (mid(2), bob), (mid(8), bob)]);

    // Search writes are applied with the batch; edits replace, removes forget.
    let page = crate::search::SearchPage::first(10);
    store
        .commit(vec![
            Write::Search(SearchWrite::Index {
                conversation: conv,
                message: mid(1),
                text: "one".into(),
            }),
            Write::Search(SearchWrite::Index {
                conversation: conv,
                message: mid(8),
                text: "eight".into(),
            }),
        ])
        .unwrap();
    store
        .commit(vec![Write::Search(SearchWrite::Index {
            conversation: conv,
            message: mid(1),
            text: "uno dos".into(),
        })])
        .unwrap();
    assert!(store.search("one", page).unwrap().hits.is_empty());
    let hits = store.search("uno", page).unwrap().hits;
    assert_eq!(hits.iter().map(|h| h.message).collect::<Vec<_>>(), [mid(1)]);
    store
        .commit(vec![Write::Search(SearchWrite::Remove {
            conversation: conv,
            message: mid(8),
        })])
        .unwrap();
    assert!(store.search("eight", page).unwrap().hits.is_empty());

    // Forgetting a message removes it, its search entry and its place among relations.
    store
        .commit(vec![
            Write::Forget {
                conversation: conv,
                id: mid(1),
            },
            Write::Forget {
                conversation: conv,
                id: mid(5),
            },
        ])
        .unwrap();
    assert!(store.message(conv, mid(1)).unwrap().is_none());
    assert!(store.search("uno", page).unwrap().hits.is_empty());
    assert_eq!(ids(&store.relations(conv, mid(1)).unwrap()), [3]);
    assert_eq!(ids(&store.standalone(conv, None, 10).unwrap()), [8, 4, 2]);

    // A pending recovery is kept until cleared.
    assert_eq!(store.recovery().unwrap(), None);
    let points = vec![
        RecoveryPoint {
            conversation: conv,
            newest: Some(mid(8)),
        },
        RecoveryPoint {
            conversation: ConversationId::new(77).unwrap(),
            newest: None,
        },
    ];
    store
        .commit(vec![Write::Recovery(Some(points.clone()))])
        .unwrap();
    assert_eq!(store.recovery().unwrap(), Some(points));
    store.commit(vec![Write::Recovery(None)]).unwrap();
    assert_eq!(store.recovery().unwrap(), None);
}

#[test]
fn memory() {
    run(&MemoryStore::new());
}

#[test]
fn sqlite_migrates_a_store_made_before_relations() {
    use chat_core::{Content, Edit};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE messages (
                conversation INTEGER NOT NULL, id INTEGER NOT NULL,
                sender_user INTEGER NOT NULL, sender_device INTEGER NOT NULL,
                client_key BLOB NOT NULL, sent_at INTEGER NOT NULL, plaintext BLOB NOT NULL,
                PRIMARY KEY (conversation, id));",
        )
        .unwrap();
        let edit = Content::Edit(Edit {
            target: MessageId::new(1).unwrap(),
            body: "edited words".into(),
        });
        for m in [
            content_msg(5, 1, 1, &text("original words")),
            content_msg(5, 2, 1, &edit),
        ] {
            conn.execute(
                "INSERT INTO messages VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                rusqlite::params![
                    5,
                    i64::try_from(m.id.get()).unwrap(),
                    1,
                    1,
                    m.client_key.as_bytes().as_slice(),
                    5,
                    m.plaintext
                ],
            )
            .unwrap();
        }
    }
    let store = crate::SqliteStore::open(&path).unwrap();
    let conv = ConversationId::new(5).unwrap();
    assert_eq!(ids(&store.standalone(conv, None, 10).unwrap()), [1]);
    assert_eq!(
        ids(&store.relations(conv, MessageId::new(1).unwrap()).unwrap()),
        [2]
    );
    let page = crate::search::SearchPage::first(10);
    assert_eq!(store.search("edited", page).unwrap().hits.len(), 1);
    assert!(store.search("original", page).unwrap().hits.is_empty());
    // Opening again is a no-op.
    drop(store);
    let store = crate::SqliteStore::open(&path).unwrap();
    assert_eq!(store.search("edited", page).unwrap().hits.len(), 1);
}

#[test]
fn the_schema_version_is_recorded_and_a_newer_one_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.db");
    drop(crate::SqliteStore::open(&path).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: u32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 3);
    // A version 1 file (before the trust and groups tables) gains them.
    conn.execute_batch("DROP TABLE trust; DROP TABLE groups; PRAGMA user_version = 1;")
        .unwrap();
    drop(conn);
    let store = crate::SqliteStore::open(&path).unwrap();
    let someone = chat_core::UserId::new(3).unwrap();
    store
        .commit(vec![
            Write::Trust {
                user: someone,
                record: vec![1],
            },
            Write::VerifiedGroup {
                conversation: ConversationId::new(5).unwrap(),
                pickle: vec![2],
            },
        ])
        .unwrap();
    drop(store);
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("PRAGMA user_version = 99;").unwrap();
    drop(conn);
    assert!(matches!(
        crate::SqliteStore::open(&path),
        Err(Error::Store(crate::StoreError::TooNew {
            found: 99,
            supported: 3
        }))
    ));
}

#[test]
fn sqlite_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    run(&crate::SqliteStore::open(&path).unwrap());
    let again = crate::SqliteStore::open(&path).unwrap();
    assert_eq!(again.cursor().unwrap().get(), 41);
    assert_eq!(again.outbox().unwrap().len(), 1);
}

/// Group commit: staged batches are read back at once and share one fsync, a sync with nothing
/// new does none, a commit is one; what threads staged and synced at once is all in the file
/// when it opens again.
#[test]
fn sqlite_staged_batches_share_one_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.db");
    let store = crate::SqliteStore::open(&path).unwrap();
    let before = store.fsyncs();
    for n in 1..=3 {
        store
            .stage(vec![Write::Cursor(InboxPos::new(n).unwrap())])
            .unwrap();
        assert_eq!(store.cursor().unwrap().get(), n);
    }
    assert_eq!(store.fsyncs(), before);
    store.sync().unwrap();
    assert_eq!(store.fsyncs(), before + 1);
    store.sync().unwrap();
    assert_eq!(store.fsyncs(), before + 1);
    store
        .commit(vec![Write::Cursor(InboxPos::new(4).unwrap())])
        .unwrap();
    assert_eq!(store.fsyncs(), before + 2);
    let users: Vec<_> = (1..=4)
        .map(|u| chat_core::UserId::new(u).unwrap())
        .collect();
    std::thread::scope(|s| {
        for &user in &users {
            let store = &store;
            s.spawn(move || {
                for i in 0..25u8 {
                    store
                        .stage(vec![Write::Trust {
                            user,
                            record: vec![i],
                        }])
                        .unwrap();
                    store.sync().unwrap();
                }
            });
        }
    });
    drop(store);
    let again = crate::SqliteStore::open(&path).unwrap();
    assert_eq!(again.cursor().unwrap().get(), 4);
    for user in users {
        assert_eq!(again.trust(user).unwrap(), Some(vec![24]));
    }
}

/// Commits never checkpoint (the database file stays as it was while 5 MB of WAL is
/// written); the sync after enough batches does, on the checkpointer's own connection (in
/// place here: no runtime), and the data reads back after it.
#[test]
fn sqlite_checkpoints_after_a_sync_not_inside_commits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.db");
    let store = crate::SqliteStore::open(&path).unwrap();
    let db_size = || std::fs::metadata(&path).unwrap().len();
    let empty = db_size();
    for id in 1..=1_250 {
        store
            .stage(vec![Write::Message(msg(1, id, &[b'x'; 4_000]))])
            .unwrap();
    }
    assert_eq!(db_size(), empty, "a commit checkpointed");
    assert_eq!(store.checkpoints(), 0);
    store.sync().unwrap();
    assert_eq!(store.checkpoints(), 1);
    assert!(
        db_size() > 4_000_000,
        "the WAL was copied: {} bytes",
        db_size()
    );
    let m = store.message(msg(1, 1, b"").conversation, msg(1, 1, b"").id);
    assert_eq!(m.unwrap().unwrap().plaintext, vec![b'x'; 4_000]);
    // One batch later there is nothing to copy yet.
    store
        .stage(vec![Write::Message(msg(1, 1_251, b"y"))])
        .unwrap();
    store.sync().unwrap();
    assert_eq!(store.checkpoints(), 1);
}

#[cfg(test)]
const KEY: [u8; 32] = [0x5A; 32];

#[test]
fn sqlite_encrypted_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    run(&crate::SqliteStore::open_encrypted(&path, &KEY).unwrap());
    let again = crate::SqliteStore::open_encrypted(&path, &KEY).unwrap();
    assert_eq!(again.cursor().unwrap().get(), 41);
    assert_eq!(again.outbox().unwrap().len(), 1);
}

/// Everything secret is sealed in the file (and its WAL): the token, the account and session
/// pickles, message and outbox plaintext, the search index. The file opens only with its key;
/// the index, kept in memory, is built again from the messages when it opens.
#[test]
fn an_encrypted_store_keeps_no_secret_in_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let conv = ConversationId::new(3).unwrap();
    let secrets: [&[u8]; 7] = [
        b"token-SECRET-7f3a",
        b"ACCOUNT-PICKLE-SECRET",
        b"SESSION-PICKLE-SECRET",
        b"SENDERKEY-PICKLE-SECRET",
        b"meet me at the old mill",
        b"outgoing private words",
        b"RECEIVER-PICKLE-SECRET",
    ];
    {
        let store = crate::SqliteStore::open_encrypted(&path, &KEY).unwrap();
        store
            .commit(vec![
                Write::Device(DeviceRecord {
                    server: "127.0.0.1:1".into(),
                    address: dev(1, 1),
                    token: "token-SECRET-7f3a".into(),
                }),
                Write::Account(Secret::new(secrets[1].to_vec())),
                Write::Sessions(dev(2, 1), Secret::new(secrets[2].to_vec())),
                Write::SenderKey {
                    conversation: conv,
                    pickle: Secret::new(secrets[3].to_vec()),
                    distributed: vec![dev(2, 1)],
                },
                Write::Receiver {
                    conversation: conv,
                    sender: dev(2, 1),
                    pickle: Secret::new(secrets[6].to_vec()),
                },
                Write::Message(content_msg(3, 1, 2, &text("meet me at the old mill"))),
                Write::Search(SearchWrite::Index {
                    conversation: conv,
                    message: MessageId::new(1).unwrap(),
                    text: "meet me at the old mill".into(),
                }),
                Write::OutboxPut(OutboxEntry {
                    client_key: ClientKey::from_bytes([9; 16]),
                    conversation: conv,
                    payload: Secret::new(b"ciphertext".to_vec()),
                    plaintext: b"outgoing private words".to_vec(),
                }),
            ])
            .unwrap();
        let hits = store
            .search("old mill", crate::search::SearchPage::first(5))
            .unwrap()
            .hits;
        assert_eq!(hits.len(), 1);
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            for secret in secrets {
                assert!(
                    !bytes.windows(secret.len()).any(|w| w == secret),
                    "{} in the files",
                    String::from_utf8_lossy(secret)
                );
            }
            assert!(
                !bytes.windows(4).any(|w| w == b"mill"),
                "the index is in the file"
            );
        }
    }
    let store = crate::SqliteStore::open_encrypted(&path, &KEY).unwrap();
    assert!(store.has_device().unwrap());
    assert_eq!(store.device().unwrap().unwrap().token, "token-SECRET-7f3a");
    assert_eq!(store.account().unwrap().unwrap().as_slice(), secrets[1]);
    assert_eq!(
        store.sessions(dev(2, 1)).unwrap().unwrap().as_slice(),
        secrets[2]
    );
    assert_eq!(store.outbox().unwrap()[0].plaintext, secrets[5]);
    let held = store.sender_key(conv).unwrap().unwrap();
    assert_eq!(held.0.as_slice(), secrets[3]);
    assert_eq!(
        store.receiver(conv, dev(2, 1)).unwrap().unwrap().as_slice(),
        secrets[6]
    );
    let hits = store
        .search("old mill", crate::search::SearchPage::first(5))
        .unwrap()
        .hits;
    assert_eq!(hits.len(), 1, "the index is built again on opening");
    drop(store);

    assert!(matches!(
        crate::SqliteStore::open(&path),
        Err(Error::Store(crate::StoreError::KeyRequired))
    ));
    assert!(matches!(
        crate::SqliteStore::open_encrypted(&path, &[1; 32]),
        Err(Error::Store(crate::StoreError::WrongKey))
    ));
    let plain = dir.path().join("plain.db");
    let fresh = crate::SqliteStore::open(&plain).unwrap();
    assert!(!fresh.has_device().unwrap());
    fresh
        .commit(vec![Write::Device(DeviceRecord {
            server: "127.0.0.1:1".into(),
            address: dev(1, 1),
            token: "t".into(),
        })])
        .unwrap();
    assert!(fresh.has_device().unwrap());
    drop(fresh);
    assert!(matches!(
        crate::SqliteStore::open_encrypted(&plain, &KEY),
        Err(Error::Store(crate::StoreError::NotEncrypted))
    ));
}
