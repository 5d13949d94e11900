//! A small JSON client for the server's HTTP API over hyper's HTTP/1.1 connection API (TLS
//! for `https` servers, see `net.rs`).
//!
//! Requests with a body in memory reuse idle connections (a few, for a minute at most), so a
//! burst of calls pays for one TCP and TLS handshake, not one each. When a reused connection
//! turns out to be closed, the request goes again on a fresh one if hyper hands it back unsent,
//! or if it is idempotent (GET, PUT, DELETE); a POST that may have reached the server is never
//! repeated.
//! Streamed uploads and downloads use a connection of their own.
//!
//! Requests go to the current node of the client's [`Nodes`]; a node that cannot be
//! connected to is reported there and the request goes to the next one (nothing was sent, so
//! this is safe for every method). Idle connections are kept only for the current node.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use chat_core::ErrorCode;
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, RETRY_AFTER};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, NetworkError, NetworkErrorKind, ProtocolError, Result};
use crate::net::Server;
use crate::nodes::Nodes;

/// The largest response body read (a page of history is far smaller).
const MAX_RESPONSE: usize = 16 * 1024 * 1024;
/// How long a request may take until the response head arrives (uploads excepted).
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
const OCTET_STREAM: &str = "application/octet-stream";
/// How often a rate-limited request is retried before the error reaches the caller.
const RATE_LIMIT_RETRIES: u32 = 5;

/// Idle connections kept per client, and for how long.
const MAX_IDLE: usize = 4;
const IDLE_FOR: std::time::Duration = std::time::Duration::from_secs(60);
/// How long a connection may take to be ready again after its answer was read.
const IDLE_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// An idle keep-alive connection: since when, the node it reaches, its sender.
type Idle = (tokio::time::Instant, Server, Sender);

/// Calls the HTTP API with an optional bearer token.
#[derive(Clone)]
pub(crate) struct Http {
    nodes: Nodes,
    token: Option<String>,
    /// Idle keep-alive connections, with when they became idle and the node they reach;
    /// `None` once [`Http::close_idle`] ran (no connection is kept after that).
    idle: Arc<Mutex<Option<Vec<Idle>>>>,
}

impl std::fmt::Debug for Http {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http")
            .field("nodes", &self.nodes)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Http {
    pub(crate) fn new(nodes: Nodes, token: Option<String>) -> Self {
        Self {
            nodes,
            token,
            idle: Arc::new(Mutex::new(Some(Vec::new()))),
        }
    }

    pub(crate) fn with_token(&self, token: String) -> Self {
        Self::new(self.nodes.clone(), Some(token))
    }

    /// A JSON request; decodes a JSON answer (use `serde::de::IgnoredAny` for none).
    pub(crate) async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T> {
        let body = match body {
            Some(b) => Bytes::from(
                serde_json::to_vec(b).map_err(|e| Error::invalid_because("a request body", e))?,
            ),
            None => Bytes::new(),
        };
        let bytes = self
            .raw(method, path, body, "application/json", MAX_RESPONSE)
            .await?;
        let bytes: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
        serde_json::from_slice(bytes).map_err(|e| {
            Error::Protocol(ProtocolError::with_source(
                format!("the answer to {path}"),
                e,
            ))
        })
    }

    /// `GET path`, decoding the JSON answer.
    pub(crate) async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call(Method::GET, path, None::<&()>).await
    }

    /// A request with a JSON body whose answer is not needed (only its success).
    pub(crate) async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<()> {
        let _: serde::de::IgnoredAny = self.call(method, path, body).await?;
        Ok(())
    }

    /// Uploads raw bytes (`application/octet-stream`); decodes the JSON answer.
    pub(crate) async fn upload<T: DeserializeOwned>(&self, path: &str, body: Bytes) -> Result<T> {
        let bytes = self
            .raw(Method::POST, path, body, OCTET_STREAM, MAX_RESPONSE)
            .await?;
        serde_json::from_slice(&bytes).map_err(|e| {
            Error::Protocol(ProtocolError::with_source(
                format!("the answer to {path}"),
                e,
            ))
        })
    }

    /// Downloads raw bytes, refusing more than `max`.
    pub(crate) async fn download(&self, path: &str, max: usize) -> Result<Bytes> {
        self.raw(Method::GET, path, Bytes::new(), "application/json", max)
            .await
    }

    async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
        content_type: &str,
        max: usize,
    ) -> Result<Bytes> {
        let mut attempt = 0;
        loop {
            match self
                .once(method.clone(), path, body.clone(), content_type, max)
                .await
            {
                Err(Retry(wait)) if attempt < RATE_LIMIT_RETRIES => {
                    attempt += 1;
                    tokio::time::sleep(wait).await;
                }
                Err(Retry(wait)) => {
                    return Err(Error::RateLimited {
                        retry_after: Some(wait),
                    });
                }
                Ok(result) => return result,
            }
        }
    }

    async fn once(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
        content_type: &str,
        max: usize,
    ) -> Result<Result<Bytes>, Retry> {
        let has_body = !body.is_empty();
        let (addr, mut sender, response) = match self
            .pooled_request(method, path, body, has_body.then_some(content_type))
            .await
        {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        let status = response.status();
        let retry_after = retry_after(&response);
        let limited = http_body_util::Limited::new(response.into_body(), max);
        // Small JSON answers (or an attachment held in memory, which may take longer).
        let wait = if max > MAX_RESPONSE {
            REQUEST_TIMEOUT * 20
        } else {
            REQUEST_TIMEOUT
        };
        let bytes = match tokio::time::timeout(wait, limited.collect()).await {
            Ok(Ok(c)) => c.to_bytes(),
            Ok(Err(e)) => return Ok(Err(lost(&addr, e).into())),
            Err(_) => return Ok(Err(NetworkError::timeout(addr.authority()).into())),
        };
        // The whole answer was read: the connection can carry the next request.
        let ready = tokio::time::timeout(IDLE_CHECK, sender.ready()).await;
        if matches!(ready, Ok(Ok(()))) {
            self.put_idle(addr, sender);
        }
        if status.is_success() {
            return Ok(Ok(bytes));
        }
        match error_of(status, &bytes) {
            Error::RateLimited { .. } => Err(Retry(std::time::Duration::from_secs(
                retry_after.unwrap_or(1).clamp(1, 30),
            ))),
            e => Ok(Err(e)),
        }
    }

    /// Uploads a streamed body (`application/octet-stream`, chunked); decodes the JSON answer.
    /// Not retried: a stream cannot be replayed.
    pub(crate) async fn upload_stream<T, B>(&self, path: &str, body: B) -> Result<T>
    where
        T: DeserializeOwned,
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (addr, response) = self
            .request(Method::POST, path, body, Some(OCTET_STREAM))
            .await?;
        let status = response.status();
        let limited = http_body_util::Limited::new(response.into_body(), MAX_RESPONSE);
        let bytes = limited
            .collect()
            .await
            .map_err(|e| lost(&addr, e))?
            .to_bytes();
        if !status.is_success() {
            return Err(error_of(status, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            Error::Protocol(ProtocolError::with_source(
                format!("the answer to {path}"),
                e,
            ))
        })
    }

    /// Starts a download and returns its body to stream, once the status says it succeeded.
    pub(crate) async fn download_stream(&self, path: &str) -> Result<hyper::body::Incoming> {
        let (addr, response) = self
            .request(Method::GET, path, Full::new(Bytes::new()), None)
            .await?;
        let status = response.status();
        if status.is_success() {
            return Ok(response.into_body());
        }
        let limited = http_body_util::Limited::new(response.into_body(), MAX_RESPONSE);
        let bytes = limited
            .collect()
            .await
            .map_err(|e| lost(&addr, e))?
            .to_bytes();
        Err(error_of(status, &bytes))
    }

    /// Sends one request on an idle connection if there is one, else on a new one; returns
    /// the connection with the answer, to be put back once the answer was read.
    async fn pooled_request(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
        content_type: Option<&str>,
    ) -> Result<(Server, Sender, hyper::Response<hyper::body::Incoming>)> {
        let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
        let idempotent = matches!(
            method,
            Method::GET | Method::HEAD | Method::PUT | Method::DELETE
        );
        // A request hyper handed back unsent, to go on the next connection.
        let mut unsent: Option<Request<Full<Bytes>>> = None;
        loop {
            let (addr, mut sender, reused) = match self.take_idle() {
                Some((addr, sender)) => (addr, sender, true),
                None => {
                    let (addr, sender) = self.open(deadline).await?;
                    (addr, sender, false)
                }
            };
            let request = match unsent.take() {
                Some(mut request) => {
                    set_host(&mut request, &addr)?;
                    request
                }
                None => self.build(
                    &addr,
                    method.clone(),
                    path,
                    Full::new(body.clone()),
                    content_type,
                )?,
            };
            // Until the response head; an upload's body is sent inside this call and may take
            // as long as its size needs.
            let sent = if content_type == Some(OCTET_STREAM) {
                sender.try_send_request(request).await
            } else {
                tokio::time::timeout_at(deadline, sender.try_send_request(request))
                    .await
                    .map_err(|_| NetworkError::timeout(addr.authority()))?
            };
            match sent {
                Ok(response) => return Ok((addr, sender, response)),
                Err(mut e) => match e.take_message() {
                    // Never written to the connection (the server had closed it): send it
                    // on the next connection.
                    Some(request) if reused => unsent = Some(request),
                    // The idle connection broke under it before an answer: an idempotent
                    // request may be sent again, as browsers do.
                    _ if reused && idempotent && !e.error().is_timeout() => {}
                    _ => return Err(lost(&addr, e.into_error()).into()),
                },
            }
        }
    }

    /// An idle connection to the current node that is still open and not too old.
    fn take_idle(&self) -> Option<(Server, Sender)> {
        let current = self.nodes.current();
        let mut idle = self.idle.lock().ok()?;
        let idle = idle.as_mut()?;
        let now = tokio::time::Instant::now();
        while let Some((since, addr, sender)) = idle.pop() {
            if addr == current && now.duration_since(since) < IDLE_FOR && !sender.is_closed() {
                return Some((addr, sender));
            }
        }
        None
    }

    /// Drops the idle connections, and every connection a request finishes with from now
    /// on: each one's task sees its last sender go and closes the socket.
    /// [`Client::close`](crate::Client::close) calls it last, so no keep-alive connection
    /// (or its task) outlives a closed client.
    pub(crate) fn close_idle(&self) {
        if let Ok(mut idle) = self.idle.lock() {
            *idle = None;
        }
    }

    fn put_idle(&self, addr: Server, sender: Sender) {
        if let Ok(mut idle) = self.idle.lock()
            && let Some(idle) = idle.as_mut()
            && idle.len() < MAX_IDLE
        {
            idle.push((tokio::time::Instant::now(), addr, sender));
        }
    }

    /// Opens a connection to the current node and starts its task. A node that cannot be
    /// reached is reported to the node list and the next one is tried, each node once.
    async fn open<B>(
        &self,
        deadline: tokio::time::Instant,
    ) -> Result<(Server, hyper::client::conn::http1::SendRequest<B>)>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let mut addr = self.nodes.current();
        let mut tries = self.nodes.len();
        loop {
            match Self::open_at(&addr, deadline).await {
                Ok(sender) => return Ok((addr, sender)),
                Err(e @ Error::Network(_)) => {
                    tries -= 1;
                    let next = self.nodes.failed(&addr);
                    if tries == 0 || tokio::time::Instant::now() >= deadline {
                        return Err(e);
                    }
                    tracing::debug!(cause = %e, node = addr.authority(), "node unreachable");
                    addr = next;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn open_at<B>(
        addr: &Server,
        deadline: tokio::time::Instant,
    ) -> Result<hyper::client::conn::http1::SendRequest<B>>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let timed_out = |_| NetworkError::timeout(addr.authority());
        let stream = tokio::time::timeout_at(deadline, addr.connect())
            .await
            .map_err(timed_out)??;
        let (sender, conn) = tokio::time::timeout_at(
            deadline,
            hyper::client::conn::http1::handshake(TokioIo::new(stream)),
        )
        .await
        .map_err(timed_out)?
        .map_err(|e| lost(addr, e))?;
        tokio::spawn(conn);
        Ok(sender)
    }

    fn build<B>(
        &self,
        addr: &Server,
        method: Method,
        path: &str,
        body: B,
        content_type: Option<&str>,
    ) -> Result<Request<B>> {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, addr.authority());
        if let Some(content_type) = content_type {
            request = request.header(CONTENT_TYPE, content_type);
        }
        if let Some(token) = &self.token {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        request
            .body(body)
            .map_err(|e| Error::invalid_because("a request (path or token)", e))
    }

    /// Sends one request on a connection of its own (streamed bodies); the connection lives
    /// until the response body is read or dropped.
    async fn request<B>(
        &self,
        method: Method,
        path: &str,
        body: B,
        content_type: Option<&str>,
    ) -> Result<(Server, hyper::Response<hyper::body::Incoming>)>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
        let (addr, mut sender) = self.open(deadline).await?;
        let request = self.build(&addr, method, path, body, content_type)?;
        // Until the response head: a body may then take as long as its size needs (an
        // upload streams its body inside this call, so uploads get no deadline here).
        let response = if content_type == Some(OCTET_STREAM) {
            sender.send_request(request).await
        } else {
            tokio::time::timeout_at(deadline, sender.send_request(request))
                .await
                .map_err(|_| NetworkError::timeout(addr.authority()))?
        };
        let response = response.map_err(|e| lost(&addr, e))?;
        Ok((addr, response))
    }
}

/// A connection to `addr` that broke, or whose HTTP could not be read.
fn lost(addr: &Server, e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> NetworkError {
    NetworkError::new(NetworkErrorKind::ConnectionLost, addr.authority(), e)
}

/// Points a request that goes to another node than it was built for at that node.
fn set_host<B>(request: &mut Request<B>, addr: &Server) -> Result<()> {
    let host = hyper::header::HeaderValue::from_str(addr.authority())
        .map_err(|e| Error::invalid_because("a server address", e))?;
    request.headers_mut().insert(HOST, host);
    Ok(())
}

fn retry_after<B>(response: &hyper::Response<B>) -> Option<u64> {
    response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// The documented JSON error body as an [`Error`].
fn error_of(status: hyper::StatusCode, bytes: &[u8]) -> Error {
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(e) => Error::server(ErrorCode::from_number(e.code), e.message),
        Err(_) => Error::server(ErrorCode::Internal, format!("HTTP {status}")),
    }
}

struct Retry(std::time::Duration);

#[derive(serde::Deserialize)]
struct ErrorBody {
    code: u16,
    #[serde(default)]
    message: String,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// A keep-alive connection stays open after its answer, and closes when the idle
    /// connections are dropped: the server reads the end of the stream.
    #[tokio::test]
    async fn closing_the_idle_connections_closes_their_sockets() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (answered_tx, answered_rx) = tokio::sync::oneshot::channel();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = socket.read(&mut buf).await.unwrap();
                assert!(n > 0, "the request ended early");
                request.extend_from_slice(&buf[..n]);
            }
            socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}")
                .await
                .unwrap();
            let _ = answered_tx.send(());
            // Nothing more comes on this connection; it ends when the client closes it.
            socket.read(&mut buf).await.unwrap()
        });
        let http = Http::new(Nodes::new([addr.to_string()]).unwrap(), None);
        let _: serde::de::IgnoredAny = http.get("/v1/anything").await.expect("answer");
        answered_rx.await.unwrap();
        assert_eq!(
            http.idle.lock().unwrap().as_ref().map(Vec::len),
            Some(1),
            "kept for the next call"
        );
        http.close_idle();
        let read = tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("the socket was closed")
            .unwrap();
        assert_eq!(read, 0, "end of stream, no other request");
    }
}
