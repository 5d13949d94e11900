//! Body wrappers that report to the connection's clock: request bodies with a deadline that
//! grows with the bytes received, and response bodies that say when they are done.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use super::Conn;

/// A request body fell behind its deadline.
#[derive(Debug, thiserror::Error)]
#[error("request body too slow")]
pub(crate) struct BodyTimeout;

/// How fast a request body must arrive: in full within `timeout`, plus one second per
/// `min_rate` bytes received (0: no extension), like Apache's `RequestReadTimeout body=…,
/// MinRate=…`. A client sending at least `min_rate` bytes per second is never cut; one that
/// trickles is.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyPace {
    /// The allowance before any byte counts.
    pub(crate) timeout: Duration,
    /// Bytes per second that each earn one more second.
    pub(crate) min_rate: u64,
}

/// A request body cut (with an error, and the connection closed) when it misses its pace.
pub(crate) struct TimedBody {
    inner: Incoming,
    conn: Arc<Conn>,
    pace: BodyPace,
    start: Instant,
    received: u64,
    sleep: Pin<Box<Sleep>>,
}

impl TimedBody {
    /// Wraps a request body whose headers just arrived.
    pub(crate) fn new(inner: Incoming, conn: Arc<Conn>, pace: BodyPace) -> Self {
        let start = Instant::now();
        Self {
            inner,
            conn,
            pace,
            start,
            received: 0,
            sleep: Box::pin(tokio::time::sleep_until(start + pace.timeout)),
        }
    }

    fn deadline(&self) -> Instant {
        let earned = match self.pace.min_rate {
            0 => Duration::ZERO,
            rate => Duration::from_secs_f64(self.received as f64 / rate as f64),
        };
        self.start + self.pace.timeout + earned
    }
}

impl http_body::Body for TimedBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.received = self.received.saturating_add(data.len() as u64);
                    let deadline = self.deadline();
                    self.sleep.as_mut().reset(deadline);
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            Poll::Ready(Some(Err(err))) => return Poll::Ready(Some(Err(err.into()))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => {}
        }
        ready!(self.sleep.as_mut().poll(cx));
        tracing::debug!(received = self.received, "request body too slow; closing");
        self.conn.body_cut();
        Poll::Ready(Some(Err(BodyTimeout.into())))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that tells the connection's clock when it is done (sent or dropped).
pub(crate) struct TrackedBody {
    inner: Body,
    conn: Arc<Conn>,
}

impl TrackedBody {
    /// Wraps a response body of the request that started on `conn`.
    pub(crate) fn new(inner: Body, conn: Arc<Conn>) -> Self {
        Self { inner, conn }
    }
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        self.conn.response_done();
    }
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
