//! The accept loop: HTTP/1.1 (plain or TLS) connections served by hyper with the node's
//! router, under limits that keep slow and idle clients from holding sockets forever.
//!
//! - A request head must arrive in full within `http_header_timeout_ms` (a new connection's
//!   first one from the accept; later ones from their first byte), a kept-alive connection
//!   may stay silent `http_idle_timeout_ms`, and a request body must keep the pace of
//!   [`BodyPace`]; a connection that misses any of them is closed. The timing state of a
//!   connection is the pure [`ConnClock`]; this module only feeds it and sleeps until its
//!   deadline.
//! - One source address may hold at most `max_connections_per_address` connections
//!   (WebSocket ones included, for as long as they last); more are closed at accept.
//! - TLS handshakes must finish within the header timeout.
//!
//! Shutdown: when the watch flips, the loop stops accepting, every connection finishes the
//! request it is handling and closes (hyper's graceful shutdown; idle ones close at once),
//! and the loop returns when all have, or after `grace`.

mod body;
mod clock;

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::Request;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

pub(crate) use self::body::BodyPace;
use self::body::{TimedBody, TrackedBody};
use self::clock::ConnClock;
use crate::config::Config;

/// The connection limits, from the configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HttpLimits {
    header: Duration,
    idle: Duration,
    body: BodyPace,
    per_address: usize,
}

impl HttpLimits {
    /// The `http_*` and `max_connections_per_address` settings.
    pub(crate) fn new(config: &Config) -> Self {
        Self {
            header: Duration::from_millis(config.http_header_timeout_ms),
            idle: Duration::from_millis(config.http_idle_timeout_ms),
            body: BodyPace {
                timeout: Duration::from_millis(config.http_body_timeout_ms),
                min_rate: config.http_body_min_bytes_per_second,
            },
            per_address: config.max_connections_per_address,
        }
    }
}

/// Serves `router` on `listener` until `shutdown` flips, then drains connections for up to
/// `grace`.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    router: Router,
    limits: HttpLimits,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    let addresses = Arc::new(AddressCounts::new(limits.per_address));
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        // Out of file descriptors, usually: back off instead of spinning.
                        tracing::warn!(cause = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Some(slot) = AddressCounts::claim(&addresses, peer.ip()) else {
                    metrics::counter!("chat_http_connections_refused_total").increment(1);
                    tracing::debug!(peer = %peer, "too many connections from this address");
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let conn = Connection {
                    peer,
                    slot: ConnSlot(Arc::new(slot)),
                    router: router.clone(),
                    limits,
                    shutdown: shutdown.clone(),
                };
                connections.spawn(conn.run(stream, tls.clone()));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.len(),
            "HTTP connections still open after the shutdown grace period; closing them"
        );
    }
}

/// What one connection's handlers share with its driver: the clock and a wake-up for when
/// it changed.
pub(crate) struct Conn {
    clock: Mutex<ConnClock>,
    changed: Notify,
}

impl Conn {
    fn update(&self, f: impl FnOnce(&mut ConnClock)) {
        f(&mut self.clock.lock().unwrap_or_else(|e| e.into_inner()));
        self.changed.notify_one();
    }

    fn read(&self) {
        let mut clock = self.clock.lock().unwrap_or_else(|e| e.into_inner());
        let before = clock.poll_deadline();
        clock.handle_read(Instant::now());
        // Only the first byte after an idle spell moves the deadline.
        if clock.poll_deadline() != before {
            self.changed.notify_one();
        }
    }

    fn request(&self) {
        self.update(ConnClock::handle_request);
    }

    fn response_done(&self) {
        self.update(|c| c.handle_response_done(Instant::now()));
    }

    fn body_cut(&self) {
        self.update(ConnClock::handle_body_cut);
    }
}

/// A connection's place in its address's count, given back when dropped. Handlers receive
/// it as a request extension, so a WebSocket keeps it for as long as it is open.
#[derive(Clone)]
pub(crate) struct ConnSlot(#[allow(dead_code)] Arc<AddressSlot>);

impl std::fmt::Debug for ConnSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnSlot").finish_non_exhaustive()
    }
}

struct Connection {
    peer: SocketAddr,
    slot: ConnSlot,
    router: Router,
    limits: HttpLimits,
    shutdown: watch::Receiver<bool>,
}

impl Connection {
    async fn run(self, stream: TcpStream, tls: Option<TlsAcceptor>) {
        let Some(tls) = tls else {
            return self.drive(stream).await;
        };
        match tokio::time::timeout(self.limits.header, tls.accept(stream)).await {
            Ok(Ok(stream)) => self.drive(stream).await,
            Ok(Err(err)) => {
                tracing::debug!(peer = %self.peer, cause = %err, "TLS handshake failed")
            }
            Err(_) => {
                metrics::counter!("chat_http_timeouts_total", "kind" => "tls").increment(1);
                tracing::debug!(peer = %self.peer, "TLS handshake too slow");
            }
        }
    }

    async fn drive<S>(mut self, stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let conn = Arc::new(Conn {
            clock: Mutex::new(ConnClock::new(
                Instant::now(),
                self.limits.header,
                self.limits.idle,
            )),
            changed: Notify::new(),
        });
        let io = TokioIo::new(Watched {
            inner: stream,
            conn: conn.clone(),
        });
        let service = {
            let (conn, peer, slot, router) = (
                conn.clone(),
                self.peer,
                self.slot.clone(),
                self.router.clone(),
            );
            let pace = self.limits.body;
            hyper::service::service_fn(move |req: Request<Incoming>| {
                conn.request();
                let mut req = req.map(|body| Body::new(TimedBody::new(body, conn.clone(), pace)));
                req.extensions_mut().insert(ConnectInfo(peer));
                req.extensions_mut().insert(slot.clone());
                let response = tower_service::Service::call(&mut router.clone(), req);
                let conn = conn.clone();
                async move {
                    let response = response.await?;
                    Ok::<_, Infallible>(response.map(|body| TrackedBody::new(body, conn)))
                }
            })
        };
        let connection = hyper::server::conn::http1::Builder::new()
            .serve_connection(io, service)
            .with_upgrades();
        tokio::pin!(connection);
        let mut draining = false;
        loop {
            let (expired, deadline) = {
                let clock = conn.clock.lock().unwrap_or_else(|e| e.into_inner());
                (clock.expired(Instant::now()), clock.poll_deadline())
            };
            if let Some(expiry) = expired {
                metrics::counter!("chat_http_timeouts_total", "kind" => expiry.as_str())
                    .increment(1);
                tracing::debug!(peer = %self.peer, kind = expiry.as_str(), "closing a slow or idle connection");
                return;
            }
            let sleep = async {
                match deadline {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(err) = result {
                        tracing::debug!(peer = %self.peer, cause = %err, "connection ended");
                    }
                    return;
                }
                () = conn.changed.notified() => {}
                () = sleep => {}
                _ = self.shutdown.changed(), if !draining => {
                    draining = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// A stream that tells the connection's clock when bytes arrive.
struct Watched<S> {
    inner: S,
    conn: Arc<Conn>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.conn.read();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Open connections per source address.
struct AddressCounts {
    max: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

impl AddressCounts {
    /// At most `max` connections per address; 0 for no limit.
    fn new(max: usize) -> Self {
        Self {
            max,
            counts: Mutex::default(),
        }
    }

    /// A place for one more connection from `ip`, or `None` when it has its maximum.
    fn claim(this: &Arc<Self>, ip: IpAddr) -> Option<AddressSlot> {
        let mut counts = this.counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(ip).or_insert(0);
        if this.max > 0 && *count >= this.max {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            ip,
            counts: this.clone(),
        })
    }
}

/// One connection's place in [`AddressCounts`].
struct AddressSlot {
    ip: IpAddr,
    counts: Arc<AddressCounts>,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}
