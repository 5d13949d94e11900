//! The transport boundary: a bidirectional connection carrying whole binary frames.
//!
//! chat-server and chat-client implement it over WebSocket; tests can implement it over an
//! in-memory channel pair to run a gateway or a client without sockets.

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::ErrorCode;

/// Why a transport operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The connection is closed.
    #[error("connection closed")]
    Closed,
    /// The peer sent a message larger than the frame limit.
    #[error("frame of {len} bytes exceeds the limit")]
    TooLarge {
        /// Its length.
        len: usize,
    },
    /// The underlying connection failed.
    #[error("transport failed: {0}")]
    Io(Box<dyn std::error::Error + Send + Sync>),
}

/// One connection carrying frames.
#[async_trait]
pub trait Transport: Send {
    /// Sends one frame.
    async fn send(&mut self, frame: Bytes) -> Result<(), TransportError>;

    /// Waits for the next frame; `Ok(None)` when the peer closed cleanly.
    async fn recv(&mut self) -> Result<Option<Bytes>, TransportError>;

    /// Closes the connection with a code and a short reason.
    async fn close(&mut self, code: ErrorCode, reason: &str) -> Result<(), TransportError>;
}
