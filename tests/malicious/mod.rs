//! A man in the middle between chat-client and the real chat-server, for tests of what a
//! malicious server can do (docs/SECURITY.md, "A malicious server, attack by attack").
//!
//! [`Mitm::start`] listens on 127.0.0.1:0 and forwards every connection to the node. HTTP
//! requests are copied as they are. A WebSocket upgrade (`GET /v1/ws`) is passed through
//! byte for byte, then both sides are framed, and every binary frame the server sends is
//! decoded as a [`ServerFrame`] and given to the installed rules before it reaches the client.
//!
//! # Writing a new attack
//!
//! A rule is a closure `FnMut(&Seen, ServerFrame) -> Vec<ServerFrame>`: return
//! `vec![frame]` to pass it on, `vec![]` to drop it, a changed frame to rewrite it, or several
//! frames to inject more (e.g. an earlier frame again, for a replay). [`Seen`] says which
//! device the connection belongs to (from its `welcome`, `None` before it) and holds every
//! frame the server sent on it so far, so a rule can replay or refile one. Rules run in the
//! order installed; each gets what the previous one returned. For example, to move every
//! delivery of conversation 1 to Bob into conversation 2:
//!
//! ```ignore
//! mitm.rule(move |seen, frame| match frame {
//!     ServerFrame::Deliver(mut d) if seen.device == Some(bob) && d.conversation == one => {
//!         d.conversation = two;
//!         vec![ServerFrame::Deliver(d)]
//!     }
//!     other => vec![other],
//! });
//! ```
//!
//! Frames the client sends can be intercepted too, with [`Mitm::client_rule`]: a closure
//! `FnMut(&Seen, ClientFrame) -> Intercepted` that says what goes on to the server and what the
//! proxy answers the client itself (e.g. a `stale_devices` that reports a device removed,
//! instead of the server's answer).
//!
//! HTTP answers can be rewritten with [`Mitm::http_rule`]: a closure
//! `FnMut(&Request, serde_json::Value) -> serde_json::Value` given each JSON answer (with the
//! request's method and path), e.g. to add a device to a `bundles` answer or swap one's
//! identity. Requests and answers are framed by `Content-Length` (what the node and the
//! client speak); anything else is copied unchanged to the end of the connection.
//!
//! Bounds: every connection task is aborted when the [`Mitm`] is dropped; a rule runs on the
//! connection's task, so it must not block.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use chat::core::protocol::{ClientFrame, ServerFrame};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

/// What a rule knows about the connection a frame travels on.
#[derive(Debug, Default)]
pub struct Seen {
    /// The device this connection is logged in as (from the server's `welcome`).
    pub device: Option<chat::core::DeviceAddress>,
    /// Every frame the server sent on this connection before this one, as sent.
    pub frames: Vec<ServerFrame>,
}

type Rule = Box<dyn FnMut(&Seen, ServerFrame) -> Vec<ServerFrame> + Send>;

/// What a client rule makes of one client frame.
#[derive(Debug, Default)]
pub struct Intercepted {
    /// Sent on to the server, in order.
    pub to_server: Vec<ClientFrame>,
    /// Answered to the client by the proxy, in order.
    pub to_client: Vec<ServerFrame>,
}

impl Intercepted {
    /// The frame goes on unchanged.
    pub fn pass(frame: ClientFrame) -> Self {
        Self {
            to_server: vec![frame],
            to_client: Vec::new(),
        }
    }
}

type ClientRule = Box<dyn FnMut(&Seen, ClientFrame) -> Intercepted + Send>;

/// The HTTP request an answer belongs to.
#[derive(Debug, Clone)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path and query, e.g. `/v1/users/2/bundles`.
    pub path: String,
}

type HttpRule = Box<dyn FnMut(&Request, serde_json::Value) -> serde_json::Value + Send>;

#[derive(Default)]
struct Rules {
    server: Vec<Rule>,
    client: Vec<ClientRule>,
    http: Vec<HttpRule>,
}

/// The proxy. Point clients at [`Mitm::url`].
pub struct Mitm {
    pub addr: SocketAddr,
    rules: Arc<Mutex<Rules>>,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Mitm {
    /// Starts a proxy in front of the node at `backend`.
    pub async fn start(backend: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind mitm");
        let addr = listener.local_addr().expect("addr");
        let rules: Arc<Mutex<Rules>> = Arc::default();
        let tasks: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let (r, t) = (rules.clone(), tasks.clone());
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let task = tokio::spawn(connection(inbound, backend, r.clone()));
                t.lock().expect("lock").push(task.abort_handle());
            }
        });
        tasks.lock().expect("lock").push(accept.abort_handle());
        Self { addr, rules, tasks }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Installs a rule for the server's frames on every connection, present and future.
    pub fn rule(&self, rule: impl FnMut(&Seen, ServerFrame) -> Vec<ServerFrame> + Send + 'static) {
        self.rules.lock().expect("lock").server.push(Box::new(rule));
    }

    /// Installs a rule for the clients' frames on every connection. Client rules run in the
    /// order installed on what the previous one sent on to the server.
    pub fn client_rule(
        &self,
        rule: impl FnMut(&Seen, ClientFrame) -> Intercepted + Send + 'static,
    ) {
        self.rules.lock().expect("lock").client.push(Box::new(rule));
    }

    /// Installs a rule for the node's JSON answers to HTTP requests, run in the order
    /// installed. Answers that are not JSON are passed on unchanged.
    pub fn http_rule(
        &self,
        rule: impl FnMut(&Request, serde_json::Value) -> serde_json::Value + Send + 'static,
    ) {
        self.rules.lock().expect("lock").http.push(Box::new(rule));
    }

    /// Removes every rule: the proxy forwards honestly again.
    pub fn honest(&self) {
        let mut rules = self.rules.lock().expect("lock");
        rules.server.clear();
        rules.client.clear();
        rules.http.clear();
    }
}

impl Drop for Mitm {
    fn drop(&mut self) {
        for t in self.tasks.lock().expect("lock").drain(..) {
            t.abort();
        }
    }
}

/// Reads up to and including the blank line that ends an HTTP head.
async fn head(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if buf.len() > 64 * 1024 || stream.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        buf.push(byte[0]);
    }
    Some(buf)
}

/// A header's value in an HTTP head (case-insensitive name).
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Reads the body that `head` announces by `Content-Length`; `None` for another framing.
async fn body(stream: &mut TcpStream, head: &str) -> Option<Vec<u8>> {
    let len: usize = match header(head, "content-length") {
        Some(n) => n.parse().ok()?,
        None if header(head, "transfer-encoding").is_some() => return None,
        None => 0,
    };
    let mut buf = vec![0; len];
    stream.read_exact(&mut buf).await.ok()?;
    Some(buf)
}

/// Relays HTTP/1.1 exchanges one at a time, giving JSON answers to the HTTP rules; falls
/// back to copying bytes when a message is not framed by `Content-Length`.
async fn http(
    mut inbound: TcpStream,
    mut outbound: TcpStream,
    mut request: Vec<u8>,
    rules: &Mutex<Rules>,
) {
    loop {
        let text = String::from_utf8_lossy(&request).into_owned();
        let mut words = text.split_whitespace();
        let req = Request {
            method: words.next().unwrap_or_default().to_owned(),
            path: words.next().unwrap_or_default().to_owned(),
        };
        let Some(sent) = body(&mut inbound, &text).await else {
            let _ = outbound.write_all(&request).await;
            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            return;
        };
        if outbound.write_all(&request).await.is_err() || outbound.write_all(&sent).await.is_err() {
            return;
        }
        let Some(answer) = head(&mut outbound).await else {
            return;
        };
        let answer_text = String::from_utf8_lossy(&answer).into_owned();
        let Some(mut answer_body) = body(&mut outbound, &answer_text).await else {
            let _ = inbound.write_all(&answer).await;
            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            return;
        };
        let mut answer_head = answer_text;
        if let Ok(mut json) = serde_json::from_slice::<serde_json::Value>(&answer_body) {
            let mut rules = rules.lock().expect("lock");
            if !rules.http.is_empty() {
                for rule in rules.http.iter_mut() {
                    json = rule(&req, json);
                }
                answer_body = serde_json::to_vec(&json).expect("json");
                answer_head = answer_head
                    .split("\r\n")
                    .filter(|l| {
                        !l.to_ascii_lowercase().starts_with("content-length:") && !l.is_empty()
                    })
                    .map(|l| format!("{l}\r\n"))
                    .collect::<String>()
                    + &format!("content-length: {}\r\n\r\n", answer_body.len());
            }
        }
        if inbound.write_all(answer_head.as_bytes()).await.is_err()
            || inbound.write_all(&answer_body).await.is_err()
        {
            return;
        }
        let Some(next) = head(&mut inbound).await else {
            return;
        };
        request = next;
    }
}

async fn connection(mut inbound: TcpStream, backend: SocketAddr, rules: Arc<Mutex<Rules>>) {
    let Ok(mut outbound) = TcpStream::connect(backend).await else {
        return;
    };
    let Some(request) = head(&mut inbound).await else {
        return;
    };
    let websocket = request.starts_with(b"GET /v1/ws");
    if !websocket {
        http(inbound, outbound, request, &rules).await;
        return;
    }
    if outbound.write_all(&request).await.is_err() {
        return;
    }
    let Some(answer) = head(&mut outbound).await else {
        return;
    };
    if inbound.write_all(&answer).await.is_err() || !answer.starts_with(b"HTTP/1.1 101") {
        return;
    }
    let client = WebSocketStream::from_raw_socket(inbound, Role::Server, None).await;
    let server = WebSocketStream::from_raw_socket(outbound, Role::Client, None).await;
    let (mut to_client, mut from_client) = client.split();
    let (mut to_server, mut from_server) = server.split();
    let device: Arc<Mutex<Option<chat::core::DeviceAddress>>> = Arc::default();
    let (answers, mut answered) = tokio::sync::mpsc::unbounded_channel::<ServerFrame>();
    let up = async {
        while let Some(Ok(m)) = from_client.next().await {
            let frame = match &m {
                Message::Binary(bytes) => ClientFrame::decode(bytes).ok(),
                _ => None,
            };
            let Some(frame) = frame else {
                if to_server.send(m).await.is_err() {
                    break;
                }
                continue;
            };
            let seen = Seen {
                device: *device.lock().expect("lock"),
                frames: Vec::new(),
            };
            let mut out = Intercepted::pass(frame);
            for rule in rules.lock().expect("lock").client.iter_mut() {
                let mut next = Intercepted::default();
                for f in out.to_server {
                    let r = rule(&seen, f);
                    next.to_server.extend(r.to_server);
                    next.to_client.extend(r.to_client);
                }
                next.to_client.splice(0..0, out.to_client);
                out = next;
            }
            for f in out.to_client {
                let _ = answers.send(f);
            }
            for f in out.to_server {
                if to_server
                    .send(Message::Binary(f.encode().into()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
        let _ = to_server.close().await;
    };
    let down = async {
        let mut seen = Seen::default();
        loop {
            let m = tokio::select! {
                m = from_server.next() => match m {
                    Some(Ok(m)) => m,
                    _ => break,
                },
                Some(f) = answered.recv() => {
                    if to_client.send(Message::Binary(f.encode().into())).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            let Message::Binary(bytes) = m else {
                if to_client.send(m).await.is_err() {
                    break;
                }
                continue;
            };
            let Ok(frame) = ServerFrame::decode(&bytes) else {
                if to_client.send(Message::Binary(bytes)).await.is_err() {
                    break;
                }
                continue;
            };
            if let ServerFrame::Welcome(w) = &frame {
                seen.device = Some(w.device);
                *device.lock().expect("lock") = Some(w.device);
            }
            let mut out = vec![frame.clone()];
            for rule in rules.lock().expect("lock").server.iter_mut() {
                out = out.into_iter().flat_map(|f| rule(&seen, f)).collect();
            }
            seen.frames.push(frame);
            for f in out {
                if to_client
                    .send(Message::Binary(f.encode().into()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
        let _ = to_client.close().await;
    };
    tokio::select! {
        () = up => {}
        () = down => {}
    }
}
