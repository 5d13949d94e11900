//! The blob-store boundary (R-ATT-2): where encrypted attachment bytes live. Blobs are
//! streamed in and out, never held whole in memory.

use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures_core::Stream;

use crate::ids::AttachmentId;

/// A stream of blob chunks.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, BlobError>> + Send>>;

/// Why a blob operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlobError {
    /// The blob is larger than the limit; nothing was stored.
    #[error("blob exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// The incoming stream failed (client went away); nothing was stored.
    #[error("upload interrupted: {0}")]
    Interrupted(String),
    /// The store failed.
    #[error("blob store failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Stores blobs by ID.
#[async_trait]
pub trait BlobStore: Send + Sync {
    /// Stores the stream under `id`, all or nothing: a failure or a crash midway leaves no
    /// blob under `id`. Refuses more than `limit` bytes. Returns the size.
    async fn put(&self, id: AttachmentId, data: ByteStream, limit: u64) -> Result<u64, BlobError>;

    /// The blob's size and contents, if it exists.
    async fn get(&self, id: AttachmentId) -> Result<Option<(u64, ByteStream)>, BlobError>;

    /// The blob's size, if it exists.
    async fn size(&self, id: AttachmentId) -> Result<Option<u64>, BlobError>;

    /// Deletes the blob. Returns whether it existed.
    async fn delete(&self, id: AttachmentId) -> Result<bool, BlobError>;
}
