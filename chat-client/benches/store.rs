//! The client's SQLite store with and without encryption at rest (issue 19): messages stored
//! per second one commit at a time (a delivery's writes, message, search entry and cursor,
//! in one `commit`, written and fsynced; the driver itself stages deliveries and fsyncs once
//! per ack) and in batches of 100 (the CPU part, fsyncs amortised), and how long opening takes once 10,000 messages are stored (an encrypted
//! store builds its in-memory search index then).
//!
//! `cargo bench -p chat-client --bench store` (`STORE_MESSAGES` for the one-at-a-time count,
//! default 1,000; `STORE_RUNS` for runs per figure, default 3, the median is shown).

use std::time::Instant;

use chat_client::store::{ClientStore, SearchWrite, StoredMessage, Write};
use chat_client::{
    ClientKey, Content, ConversationId, DeviceAddress, DeviceId, MessageId, SqliteStore, Text,
    UserId,
};
use chat_core::{InboxPos, Timestamp};

const KEY: [u8; 32] = [0x42; 32];
const BACKLOG: u64 = 10_000;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn open(path: &std::path::Path, encrypted: bool) -> SqliteStore {
    if encrypted {
        SqliteStore::open_encrypted(path, &KEY).expect("open")
    } else {
        SqliteStore::open(path).expect("open")
    }
}

/// What storing delivery `n` writes.
fn delivery(n: u64) -> Vec<Write> {
    let conversation = ConversationId::new(1 + n % 20).expect("id");
    let id = MessageId::new(n).expect("id");
    let body = format!("message {n}: see you at the library at noon, bring the slides");
    let plaintext = Content::Text(Text {
        body: body.clone(),
        reply_to: None,
    })
    .encode()
    .expect("encode");
    vec![
        Write::Message(StoredMessage {
            conversation,
            id,
            sender: DeviceAddress {
                user: UserId::new(2).expect("id"),
                device: DeviceId::new(1).expect("id"),
            },
            client_key: ClientKey::from_bytes({
                let mut k = [0; 16];
                k[..8].copy_from_slice(&n.to_be_bytes());
                k
            }),
            sent_at: Timestamp::from_millis(n),
            plaintext,
        }),
        Write::Search(SearchWrite::Index {
            conversation,
            message: id,
            text: body,
        }),
        Write::Cursor(InboxPos::new(n).expect("pos")),
    ]
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() {
    let one_at_a_time = env("STORE_MESSAGES", 1_000) as u64;
    let runs = env("STORE_RUNS", 3).max(1);
    println!(
        "{:<11} {:>24} {:>24} {:>29}",
        "store",
        "one commit each (msg/s)",
        "100 per commit (msg/s)",
        "open with 10,000 stored (ms)"
    );
    for encrypted in [false, true] {
        let (mut single, mut batched, mut opening) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("client.db");
            let store = open(&path, encrypted);
            let start = Instant::now();
            for n in 1..=one_at_a_time {
                store.commit(delivery(n)).expect("commit");
            }
            single.push(one_at_a_time as f64 / start.elapsed().as_secs_f64());

            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("client.db");
            let store = open(&path, encrypted);
            let start = Instant::now();
            for chunk in (1..=BACKLOG).collect::<Vec<_>>().chunks(100) {
                store
                    .commit(chunk.iter().flat_map(|n| delivery(*n)).collect())
                    .expect("commit");
            }
            batched.push(BACKLOG as f64 / start.elapsed().as_secs_f64());
            drop(store);

            let start = Instant::now();
            let store = open(&path, encrypted);
            opening.push(start.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(store.cursor().expect("cursor").get(), BACKLOG);
        }
        println!(
            "{:<11} {:>24.0} {:>24.0} {:>29.1}",
            if encrypted { "encrypted" } else { "plain" },
            median(single),
            median(batched),
            median(opening)
        );
    }
}
