//! Ten devices of one account that never read, sent 400 KB messages: the node's memory stays
//! bounded (queues are bounded in bytes and a message body is shared by every recipient's
//! frame, not copied per connection), and each device is cut with `closing {slow_consumer}`.
//! A test binary of its own, so the peak RSS it reads is this test's alone.

mod common;

use chat_core::ErrorCode;
use chat_core::protocol::ServerFrame;
use common::{TestServer, WAIT, backlog, direct, peak_rss, recipients, send_frame, test_config};

const DEVICES: usize = 10;
const MESSAGES: u32 = 60;
const BODY: usize = 400_000;
/// What the node may add while the devices are stalled. Copied per connection and bounded in
/// frames only, the queues held about 240 MB here (60 x 400 KB x 10).
const BOUND: u64 = 120 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_devices_hold_bounded_memory_and_are_told_why() {
    let server = TestServer::start(test_config()).await;
    let alice = server.account("alice").await;
    let bob = server.account("bob").await;
    let mut stalled = vec![server.connect(&bob, 0).await];
    for _ in 1..DEVICES {
        let device = server.login("bob").await;
        stalled.push(server.connect(&device, 0).await);
    }
    for device in &mut stalled {
        backlog(device).await;
    }
    let conversation = direct(&server, &alice, &bob).await;
    let mut sender = server.connect(&alice, 0).await;
    backlog(&mut sender).await;
    let to_bob = recipients(&server, &alice, conversation, b"").await;
    assert_eq!(to_bob.len(), DEVICES);
    let body = vec![7u8; BODY];
    let before = peak_rss();
    for i in 0..MESSAGES {
        sender
            .send(send_frame(i, conversation, i as u8, &body, to_bob.clone()))
            .await;
        assert!(matches!(sender.recv().await, ServerFrame::Sent(_)));
    }
    let grown = peak_rss().saturating_sub(before);
    println!("peak RSS grew by {} MiB", grown / (1024 * 1024));
    assert!(grown < BOUND, "peak RSS grew by {grown} bytes");
    // Each stalled device, reading at last, finds why it was cut after what was written.
    for device in &mut stalled {
        let mut told = false;
        while let Some(frame) = device.try_recv(WAIT).await {
            if let ServerFrame::Closing(c) = frame {
                assert_eq!(c.code, ErrorCode::SlowConsumer);
                told = true;
                break;
            }
        }
        assert!(
            told,
            "a stalled device was cut without closing {{slow_consumer}}"
        );
    }
}
