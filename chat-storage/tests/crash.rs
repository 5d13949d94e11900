//! Crash test for the SQLite backend (R-MSG-3): a child process appends with many concurrent
//! tasks and prints every acknowledged send; the parent kills it with SIGKILL mid-stream,
//! reopens the store and checks that every acknowledged message is there exactly once, with
//! intact, gapless inboxes.
//!
//! The child is this test binary run again with `CHAT_CRASH_CHILD` set.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;

use bytes::Bytes;
use chat_core::{
    ClientKey, ConversationId, ConversationStore, DeviceAddress, DeviceId, Direction, InboxPos,
    MAX_ID, MessageId, MessageStore, NewMessage, Recipient, Store, UserId,
};
use chat_storage::testing;
use chat_storage::{SqliteOptions, SqliteStore};

const CHILD_ENV: &str = "CHAT_CRASH_CHILD";
const TASKS: u64 = 64;
const ACKS_BEFORE_KILL: usize = 3_000;

#[test]
fn acknowledged_appends_survive_sigkill() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        child(&spec);
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("chat.db");

    // Set up a group of three devices; the child sends from the first to the other two.
    let (conv, devices) = rt.block_on(async {
        let store = SqliteStore::open(&path, SqliteOptions::default())
            .await
            .expect("open");
        let (a, da) = testing::user_with_devices(&store, 1).await;
        let (b, db) = testing::user_with_devices(&store, 2).await;
        let conv = store
            .create_group(a, &[b], 100, testing::NOW)
            .await
            .expect("group")
            .id;
        (conv, [da[0], db[0], db[1]])
    });
    let spec = format!(
        "{}|{}|{}",
        path.display(),
        conv,
        devices
            .iter()
            .map(|d| format!("{}:{}", d.user, d.device))
            .collect::<Vec<_>>()
            .join(",")
    );

    let exe = std::env::current_exe().expect("test binary");
    let mut child = Command::new(exe)
        .args([
            "acknowledged_appends_survive_sigkill",
            "--exact",
            "--nocapture",
        ])
        .env(CHILD_ENV, spec)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("child stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut acked: BTreeMap<ClientKey, MessageId> = BTreeMap::new();
    while acked.len() < ACKS_BEFORE_KILL {
        let line = lines.next().expect("child ended early").expect("read");
        record(&mut acked, &line);
    }
    child.kill().expect("SIGKILL");
    // Lines already in the pipe were acknowledged before the kill: check them too.
    for line in lines {
        let Ok(line) = line else { break };
        record(&mut acked, &line);
    }
    let status = child.wait().expect("wait");
    assert!(!status.success(), "the child was killed, not finished");

    rt.block_on(verify(&path, conv, devices, acked));
}

fn record(acked: &mut BTreeMap<ClientKey, MessageId>, line: &str) {
    if let Some(rest) = line.strip_prefix("ACK ") {
        let (key, id) = rest.split_once(' ').expect("ack line");
        let key: ClientKey = key.parse().expect("client key");
        let id: MessageId = id.parse().expect("message ID");
        assert!(acked.insert(key, id).is_none(), "key acknowledged twice");
    }
}

async fn verify(
    path: &std::path::Path,
    conv: ConversationId,
    devices: [DeviceAddress; 3],
    acked: BTreeMap<ClientKey, MessageId>,
) {
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(path, SqliteOptions::default())
            .await
            .expect("reopen"),
    );
    let last = store
        .conversation(conv)
        .await
        .expect("conversation")
        .expect("exists");
    let last = last.last_message.expect("messages").get();

    // History: IDs gapless from 1, each client key once.
    let mut history = Vec::new();
    let mut anchor = MessageId::MIN;
    let first = store
        .message(conv, anchor)
        .await
        .expect("message")
        .expect("message 1");
    history.push(first);
    loop {
        let page = store
            .history(conv, anchor, Direction::After, 500)
            .await
            .expect("history");
        let Some(next) = page.last() else { break };
        anchor = next.id;
        history.extend(page);
    }
    let ids: Vec<u64> = history.iter().map(|e| e.id.get()).collect();
    assert_eq!(
        ids,
        (1..=last).collect::<Vec<_>>(),
        "message IDs not gapless"
    );
    let by_key: BTreeMap<ClientKey, MessageId> =
        history.iter().map(|e| (e.client_key, e.id)).collect();
    assert_eq!(by_key.len(), history.len(), "a client key was stored twice");
    for (key, id) in &acked {
        assert_eq!(
            by_key.get(key),
            Some(id),
            "acknowledged message {key} lost or moved"
        );
    }
    assert!(history.len() >= acked.len());

    // Inboxes: every message exactly once, positions gapless, in message order.
    for device in &devices[1..] {
        let entries = store
            .inbox(*device, InboxPos::ZERO, 1_000_000)
            .await
            .expect("inbox");
        let positions: Vec<u64> = entries.iter().map(|e| e.pos.get()).collect();
        assert_eq!(
            positions,
            (1..=last).collect::<Vec<_>>(),
            "inbox positions not gapless"
        );
        let msg_ids: Vec<u64> = entries.iter().map(|e| e.envelope.id.get()).collect();
        assert_eq!(
            msg_ids, ids,
            "inbox does not hold every message once, in order"
        );
        assert_eq!(store.inbox_head(*device).await.expect("head").get(), last);
    }
    assert_eq!(
        store.inbox_head(devices[0]).await.expect("head"),
        InboxPos::ZERO
    );

    // A retry of an acknowledged send is still recognised.
    let (key, id) = acked.iter().next_back().expect("acks");
    let retry = store
        .append(message(conv, devices, *key))
        .await
        .expect("retry");
    assert_eq!((retry.id, retry.duplicate), (*id, true));
    let unique: BTreeSet<MessageId> = acked.values().copied().collect();
    assert_eq!(unique.len(), acked.len());
    println!(
        "crash test: {} acknowledged, {} committed in all",
        acked.len(),
        history.len()
    );
}

fn message(conv: ConversationId, devices: [DeviceAddress; 3], key: ClientKey) -> NewMessage {
    NewMessage {
        conversation: conv,
        sender: devices[0],
        client_key: key,
        body: Bytes::from(key.to_string().repeat(4)),
        recipients: devices[1..]
            .iter()
            .map(|&device| Recipient {
                device,
                header: Bytes::from_static(b"wrapped key"),
            })
            .collect(),
        sent_at: testing::NOW,
    }
}

/// The child: appends from `TASKS` concurrent tasks until it is killed, printing
/// `ACK <client key> <message ID>` for every append the store acknowledged.
fn child(spec: &str) {
    let mut parts = spec.split('|');
    let path = parts.next().expect("path").to_owned();
    let conv: ConversationId = parts.next().expect("conversation").parse().expect("conv");
    let devices: Vec<DeviceAddress> = parts
        .next()
        .expect("devices")
        .split(',')
        .map(|d| {
            let (u, d) = d.split_once(':').expect("user:device");
            DeviceAddress {
                user: u.parse::<UserId>().expect("user"),
                device: d.parse::<DeviceId>().expect("device"),
            }
        })
        .collect();
    let devices: [DeviceAddress; 3] = devices.try_into().expect("three devices");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let store = Arc::new(
            SqliteStore::open(&path, SqliteOptions::default())
                .await
                .expect("open"),
        );
        let mut tasks = tokio::task::JoinSet::new();
        for task in 0..TASKS {
            let store = Arc::clone(&store);
            tasks.spawn(async move {
                for i in 0..MAX_ID {
                    let mut key = [0u8; 16];
                    key[..8].copy_from_slice(&task.to_be_bytes());
                    key[8..].copy_from_slice(&i.to_be_bytes());
                    let key = ClientKey::from_bytes(key);
                    let done = store
                        .append(message(conv, devices, key))
                        .await
                        .expect("append");
                    println!("ACK {key} {}", done.id);
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    });
}
