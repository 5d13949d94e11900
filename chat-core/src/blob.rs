//! The blob-store boundary (R-ATT-2): where encrypted attachment bytes live. Blobs are
//! streamed in and out, never held whole in memory.
//!
//! Every implementation keeps one promise: a blob is visible under its ID only once all of
//! it is stored. An upload that fails, is refused or is cut off leaves nothing under the ID,
//! and what it had written so far is removed at once; one cut off by a crash leaves an
//! orphan that is not a blob (a temporary file, an incomplete multipart upload), which
//! [`BlobStore::collect_garbage`] removes once it is old enough that no upload in flight on
//! any node can still own it. The conformance suite (`chat-server/tests/blob_stores.rs`)
//! checks both promises on every implementation.

use std::pin::Pin;
use std::time::Duration;

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

    /// Removes what unfinished uploads left behind (a crash midway) that was started, or
    /// last written to, more than `older_than` ago; returns how many it removed. Uploads in
    /// flight younger than that, on this node or another sharing the store, are left
    /// alone; an older one that is still running fails instead of storing a partial blob.
    async fn collect_garbage(&self, older_than: Duration) -> Result<u64, BlobError>;
}
