//! [`FsBlobStore`]: the default [`BlobStore`], attachment ciphertext as files under one
//! directory (R-ATT-2).
//!
//! Layout: a blob lives at `DIR/<first two hex digits>/<32 hex digits of its ID>`, so no
//! single directory grows past a few hundred thousand entries at scale. An upload is written
//! to `DIR/<id>.<random>.tmp`, flushed to disk (`fsync`), then renamed to its final name and
//! the directory entry flushed too. A crash or a dropped upload therefore never leaves a half
//! blob under a real ID: at worst a `.tmp` file (removed at once when the upload fails or its
//! task is dropped). [`BlobStore::collect_garbage`] removes `.tmp` files not written to for
//! longer than its bound, which the node runs at start and every hour: an upload in flight
//! writes its file as bytes arrive, so its modification time stays recent, and another
//! node's upload in a shared directory is never taken for a crash's leftover. (Removing
//! every `.tmp` at start, as this store once did, would cut those off.)
//!
//! The store belongs to one node unless its directory is shared by every node (a network
//! file system with POSIX rename); a cluster should use the S3 store (`s3.rs`) instead.
//!
//! Nothing is held in memory beyond one chunk: `put` writes chunks as they arrive and `get`
//! reads [`READ_CHUNK`] bytes at a time.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use chat_core::{AttachmentId, BlobError, BlobStore, ByteStream};
use futures::StreamExt;
use tokio::fs::{self, File};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bytes read from disk per chunk of a download.
const READ_CHUNK: usize = 64 * 1024;

/// The suffix of upload files that are not complete yet.
const TMP_SUFFIX: &str = ".tmp";

/// Blobs as files under one directory.
#[derive(Debug, Clone)]
pub struct FsBlobStore {
    dir: PathBuf,
}

impl FsBlobStore {
    /// Opens the store under `dir`. The directory is created on the first upload, so a node
    /// that never stores an attachment leaves no trace on disk. Leftovers of uploads a crash
    /// cut off are removed by [`BlobStore::collect_garbage`], not here: in a shared directory
    /// they could be another node's uploads in flight.
    pub fn open(dir: impl Into<PathBuf>) -> io::Result<Self> {
        Ok(Self { dir: dir.into() })
    }

    /// The directory the blobs live in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How many unfinished uploads (`.tmp` files) the directory holds now: those in flight
    /// and what crashes left.
    pub async fn unfinished_uploads(&self) -> io::Result<u64> {
        let mut entries = match fs::read_dir(&self.dir).await {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(err) => return Err(err),
        };
        let mut count = 0;
        while let Some(entry) = entries.next_entry().await? {
            if entry.file_name().to_string_lossy().ends_with(TMP_SUFFIX) {
                count += 1;
            }
        }
        Ok(count)
    }

    fn path(&self, id: AttachmentId) -> PathBuf {
        let hex = id.to_string();
        let shard = hex.get(..2).unwrap_or("00").to_owned();
        self.dir.join(shard).join(hex)
    }

    fn tmp_path(&self, id: AttachmentId) -> Result<PathBuf, BlobError> {
        let mut salt = [0u8; 8];
        getrandom::fill(&mut salt).map_err(|e| io::Error::other(e.to_string()))?;
        let name = format!("{id}.{}{TMP_SUFFIX}", hex::encode(salt));
        Ok(self.dir.join(name))
    }
}

#[async_trait]
impl BlobStore for FsBlobStore {
    async fn put(
        &self,
        id: AttachmentId,
        mut data: ByteStream,
        limit: u64,
    ) -> Result<u64, BlobError> {
        fs::create_dir_all(&self.dir).await?;
        let tmp = TmpFile::new(self.tmp_path(id)?);
        let mut file = File::create(&tmp.path).await?;
        let mut size: u64 = 0;
        while let Some(chunk) = data.next().await {
            let chunk = chunk?;
            size = size.saturating_add(chunk.len() as u64);
            if size > limit {
                return Err(BlobError::TooLarge { limit });
            }
            file.write_all(&chunk).await?;
        }
        file.flush().await?;
        file.sync_all().await?;
        drop(file);
        let path = self.path(id);
        let parent = path.parent().unwrap_or(&self.dir).to_path_buf();
        fs::create_dir_all(&parent).await?;
        // Fails if the collector took the file meanwhile: nothing is stored then.
        fs::rename(&tmp.path, &path).await?;
        tmp.disarm();
        sync_dir(parent).await?;
        Ok(size)
    }

    async fn get(&self, id: AttachmentId) -> Result<Option<(u64, ByteStream)>, BlobError> {
        let file = match File::open(self.path(id)).await {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err.into()),
        };
        let size = file.metadata().await?.len();
        let stream = futures::stream::try_unfold(file, |mut file| async move {
            let mut buf = BytesMut::zeroed(READ_CHUNK);
            let n = file.read(&mut buf).await?;
            if n == 0 {
                return Ok(None);
            }
            buf.truncate(n);
            Ok(Some((Bytes::from(buf), file)))
        });
        Ok(Some((size, Box::pin(stream))))
    }

    async fn size(&self, id: AttachmentId) -> Result<Option<u64>, BlobError> {
        match fs::metadata(self.path(id)).await {
            Ok(meta) => Ok(Some(meta.len())),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    async fn delete(&self, id: AttachmentId) -> Result<bool, BlobError> {
        match fs::remove_file(self.path(id)).await {
            Ok(()) => Ok(true),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(err) => Err(err.into()),
        }
    }

    async fn collect_garbage(&self, older_than: Duration) -> Result<u64, BlobError> {
        let mut entries = match fs::read_dir(&self.dir).await {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(err) => return Err(err.into()),
        };
        let mut removed = 0;
        while let Some(entry) = entries.next_entry().await? {
            if !entry.file_name().to_string_lossy().ends_with(TMP_SUFFIX) {
                continue;
            }
            // Gone meanwhile (its upload finished or failed): nothing to do.
            let Ok(meta) = entry.metadata().await else {
                continue;
            };
            let idle = meta
                .modified()
                .ok()
                .and_then(|m| m.elapsed().ok())
                .unwrap_or(Duration::ZERO);
            if idle < older_than {
                continue;
            }
            match fs::remove_file(entry.path()).await {
                Ok(()) => {
                    tracing::info!(file = ?entry.path(), idle_s = idle.as_secs(), "removed an unfinished upload");
                    removed += 1;
                }
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => return Err(err.into()),
            }
        }
        Ok(removed)
    }
}

/// An upload's temporary file, removed when dropped unless it was renamed into place. The
/// drop also covers a request task that is cancelled midway (the client went away).
struct TmpFile {
    path: PathBuf,
    armed: bool,
}

impl TmpFile {
    fn new(path: PathBuf) -> Self {
        Self { path, armed: true }
    }

    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for TmpFile {
    fn drop(&mut self) {
        // A blocking unlink in Drop: one metadata operation, and Drop cannot await.
        if !self.armed {
            return;
        }
        if let Err(err) = std::fs::remove_file(&self.path)
            && err.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(cause = %err, file = ?self.path, "cannot remove an unfinished upload");
        }
    }
}

/// Flushes a directory's entries (the rename) to disk.
async fn sync_dir(dir: PathBuf) -> io::Result<()> {
    tokio::task::spawn_blocking(move || std::fs::File::open(dir)?.sync_all())
        .await
        .map_err(io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: Vec<Result<Bytes, BlobError>>) -> ByteStream {
        Box::pin(futures::stream::iter(parts))
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for entry in walk(dir) {
            out.push(entry.strip_prefix(dir).unwrap().display().to_string());
        }
        out.sort();
        out
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
        out
    }

    async fn read_all(stream: ByteStream) -> Vec<u8> {
        let parts: Vec<_> = stream.collect().await;
        parts
            .into_iter()
            .flat_map(|c| c.unwrap().to_vec())
            .collect()
    }

    #[tokio::test]
    async fn put_get_size_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(dir.path().join("blobs")).unwrap();
        let id = AttachmentId::from_bytes([7; 16]);
        assert!(store.get(id).await.unwrap().is_none());
        let data = vec![
            Ok(Bytes::from_static(b"abc")),
            Ok(Bytes::from(vec![1u8; 100_000])),
        ];
        assert_eq!(store.put(id, chunks(data), 1 << 20).await.unwrap(), 100_003);
        assert_eq!(store.size(id).await.unwrap(), Some(100_003));
        let (size, stream) = store.get(id).await.unwrap().unwrap();
        assert_eq!(size, 100_003);
        let body = read_all(stream).await;
        assert_eq!(&body[..3], b"abc");
        assert_eq!(body.len(), 100_003);
        assert_eq!(files(store.dir()), vec![format!("07/{}", "07".repeat(16))]);
        assert!(store.delete(id).await.unwrap());
        assert!(!store.delete(id).await.unwrap());
        assert_eq!(store.size(id).await.unwrap(), None);
    }

    #[tokio::test]
    async fn failed_uploads_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(dir.path()).unwrap();
        let id = AttachmentId::from_bytes([1; 16]);
        let big = vec![
            Ok(Bytes::from(vec![0u8; 600])),
            Ok(Bytes::from(vec![0u8; 600])),
        ];
        let err = store.put(id, chunks(big), 1000).await.unwrap_err();
        assert!(matches!(err, BlobError::TooLarge { limit: 1000 }));
        let broken = vec![
            Ok(Bytes::from_static(b"part")),
            Err(BlobError::Interrupted("gone".into())),
        ];
        let err = store.put(id, chunks(broken), 1000).await.unwrap_err();
        assert!(matches!(err, BlobError::Interrupted(_)));
        assert!(files(dir.path()).is_empty());
        assert_eq!(store.size(id).await.unwrap(), None);
    }

    #[tokio::test]
    async fn only_old_leftovers_are_collected() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(dir.path()).unwrap();
        let id = AttachmentId::from_bytes([2; 16]);
        let data = vec![Ok(Bytes::from_static(b"kept"))];
        store.put(id, chunks(data), 10).await.unwrap();
        let (old, fresh) = (
            dir.path().join("0202.ab.tmp"),
            dir.path().join("0202.cd.tmp"),
        );
        std::fs::write(&old, b"half").unwrap();
        std::fs::write(&fresh, b"in flight").unwrap();
        let hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(hour_ago)
            .unwrap();
        // Opening (a node starting beside others) removes nothing.
        let store = FsBlobStore::open(dir.path()).unwrap();
        assert_eq!(files(dir.path()).len(), 3);
        let removed = store
            .collect_garbage(Duration::from_secs(600))
            .await
            .unwrap();
        assert_eq!(removed, 1);
        assert_eq!(
            files(dir.path()),
            vec![format!("02/{}", "02".repeat(16)), "0202.cd.tmp".to_owned()]
        );
        assert_eq!(store.size(id).await.unwrap(), Some(4));
    }
}
