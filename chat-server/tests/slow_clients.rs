//! Slow and idle HTTP clients over real sockets: trickled heads and bodies are cut after
//! their timeouts, idle kept-alive connections are closed, and one address cannot hold more
//! than its share of connections. Timeouts are short here (hundreds of milliseconds).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use common::{TestServer, WAIT, connect_from, test_config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

fn config() -> chat_server::Config {
    chat_server::Config {
        http_header_timeout_ms: 300,
        http_idle_timeout_ms: 300,
        http_body_timeout_ms: 300,
        http_body_min_bytes_per_second: 100,
        ..test_config()
    }
}

/// Reads until the server closes the connection (end of stream or reset); what arrived.
/// Fails the test if it stays open for [`WAIT`].
async fn until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("the server closes the connection");
    got
}

/// Writes `bytes` one at a time, `gap` apart, counting what was written; stops at the
/// first write error (the server closed).
fn trickle(
    mut write: tokio::net::tcp::OwnedWriteHalf,
    bytes: Vec<u8>,
    gap: Duration,
) -> (Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = sent.clone();
    let task = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(gap);
        for byte in bytes {
            ticks.tick().await;
            if write.write_all(&[byte]).await.is_err() {
                return;
            }
            counter.fetch_add(1, Ordering::SeqCst);
        }
        // Hold the write half open until the test ends.
        std::future::pending::<()>().await;
    });
    (sent, task)
}

#[tokio::test]
async fn a_trickled_request_head_is_closed_after_the_header_timeout() {
    let server = TestServer::start(config()).await;
    let head = format!(
        "GET /healthz HTTP/1.1\r\nHost: {}\r\nX-Slow: yes\r\n\r\n",
        server.addr
    );
    let (mut read, write) = TcpStream::connect(server.addr).await.unwrap().into_split();
    let started = Instant::now();
    let (sent, writer) = trickle(write, head.clone().into_bytes(), Duration::from_millis(40));
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, read.read_to_end(&mut got))
        .await
        .expect("closed in time")
        .ok();
    let elapsed = started.elapsed();
    writer.abort();
    assert!(got.is_empty(), "no response to a head that never completed");
    assert!(
        sent.load(Ordering::SeqCst) < head.len(),
        "closed before the head was complete"
    );
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");

    // A connection that sends nothing at all is closed after the header timeout too.
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    assert!(until_closed(&mut silent).await.is_empty());
    server.shutdown().await;
}

#[tokio::test]
async fn a_trickled_request_body_is_cut() {
    let server = TestServer::start(config()).await;
    let body = vec![b' '; 200];
    let head = format!(
        "POST /v1/login HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        server.addr,
        body.len()
    );
    let (mut read, mut write) = TcpStream::connect(server.addr).await.unwrap().into_split();
    write.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    // 20 bytes a second earn 0.2 s a second: the deadline falls behind.
    let (sent, writer) = trickle(write, body.clone(), Duration::from_millis(50));
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, read.read_to_end(&mut got))
        .await
        .expect("cut in time")
        .ok();
    let elapsed = started.elapsed();
    writer.abort();
    assert!(
        sent.load(Ordering::SeqCst) < body.len(),
        "cut before the body was complete ({elapsed:?})"
    );
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_body_sent_at_the_minimum_rate_is_not_cut() {
    let server = TestServer::start(chat_server::Config {
        http_body_min_bytes_per_second: 10,
        ..config()
    })
    .await;
    // 20 bytes a second, each earning 0.1 s: always ahead of the deadline.
    let body = br#"{"username": "nobody", "password": "wrong horse"}"#.to_vec();
    let head = format!(
        "POST /v1/login HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        server.addr,
        body.len()
    );
    let (mut read, mut write) = TcpStream::connect(server.addr).await.unwrap().into_split();
    write.write_all(head.as_bytes()).await.unwrap();
    let (_, writer) = trickle(write, body, Duration::from_millis(50));
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, read.read_to_end(&mut got))
        .await
        .expect("answered in time")
        .unwrap();
    writer.abort();
    let (status, body) = common::parse_response(&got);
    assert_eq!(status, 401, "{body}");
    server.shutdown().await;
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed() {
    let server = TestServer::start(chat_server::Config {
        http_header_timeout_ms: 5_000,
        ..config()
    })
    .await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", server.addr);
    for _ in 0..2 {
        // Kept alive: two requests on one connection.
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.ends_with(b"\r\n\r\nok") {
            let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
                .await
                .expect("response in time")
                .unwrap();
            assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got.starts_with(b"HTTP/1.1 200"));
    }
    let idle_from = Instant::now();
    assert!(until_closed(&mut stream).await.is_empty());
    let idle = idle_from.elapsed();
    assert!(idle >= Duration::from_millis(250), "{idle:?}");
    assert!(
        idle < Duration::from_secs(4),
        "the idle timeout, not the header one: {idle:?}"
    );
    server.shutdown().await;
}

/// `GET /healthz` from `from`: the status, or 0 when the connection was closed unanswered.
async fn probe(from: [u8; 4], addr: std::net::SocketAddr) -> u16 {
    let mut stream = connect_from(from, addr).await.unwrap();
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    // The write may fail when the node has already closed the connection.
    let _ = stream.write_all(request.as_bytes()).await;
    common::parse_response(&until_closed(&mut stream).await).0
}

#[tokio::test]
async fn connections_per_address_are_capped() {
    let server = TestServer::start(chat_server::Config {
        max_connections_per_address: 3,
        http_header_timeout_ms: 30_000,
        http_idle_timeout_ms: 30_000,
        ..test_config()
    })
    .await;
    let crowded = [127, 0, 0, 5];
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect_from(crowded, server.addr).await.unwrap());
    }
    // Served while the three are open: each is accepted before the next connects.
    let status = probe(crowded, server.addr).await;
    assert_eq!(status, 0, "a fourth connection is closed at accept");
    let status = probe([127, 0, 0, 6], server.addr).await;
    assert_eq!(status, 200, "other addresses are served");

    // Once one of the three closes, the address gets its place back.
    drop(held.pop());
    let deadline = Instant::now() + WAIT;
    loop {
        let status = probe(crowded, server.addr).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the place never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // An open WebSocket keeps its place after the upgrade.
    let ws_address = [127, 0, 0, 7];
    let mut sockets = Vec::new();
    for _ in 0..3 {
        let stream = connect_from(ws_address, server.addr).await.unwrap();
        let mut request = format!("ws://{}/v1/ws", server.addr)
            .into_client_request()
            .unwrap();
        request.headers_mut().insert(
            "sec-websocket-protocol",
            chat_core::protocol::SUBPROTOCOL.parse().unwrap(),
        );
        let (ws, _) = tokio_tungstenite::client_async(request, stream)
            .await
            .expect("upgrade");
        sockets.push(ws);
    }
    let status = probe(ws_address, server.addr).await;
    assert_eq!(status, 0, "three WebSockets fill the address's places");
    drop(sockets);
    drop(held);
    server.shutdown().await;
}
