//! `chat-server backup`: a consistent copy of a node's embedded store and its attachments,
//! taken while the node runs.
//!
//! The copy is a directory holding `chat.db` and `blobs/`, the same layout as a node's data
//! directory, so a node started on `sqlite://COPY/chat.db` serves it as it is (its blobs
//! default to `COPY/blobs`, next to the store). The database is copied first, with SQLite's
//! `VACUUM INTO` (one snapshot, the write-ahead log included); the blobs after it. An
//! attachment's blob is complete before its record is committed, so every attachment the
//! copied database knows has its blob in the copy; blobs uploaded during the copy may be
//! there too, unreferenced and harmless. Unfinished uploads (`*.tmp`) are left out.
//!
//! PostgreSQL is backed up with its own tools (`pg_dump`); memory stores have nothing to
//! keep. Both are refused with a message saying so.

use std::io;
use std::path::{Path, PathBuf};

use chat_core::StoreError;

use crate::config::Config;

/// Why a backup could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// The store is not an embedded SQLite file.
    #[error(
        "{0} is not an embedded sqlite:// store; back PostgreSQL up with pg_dump \
         (docs/OPERATIONS.md, \"Backup and restore\"); a memory: store keeps nothing"
    )]
    NotEmbedded(String),
    /// The destination exists and is not an empty directory.
    #[error("the backup destination {0} exists and is not an empty directory")]
    DestinationInUse(PathBuf),
    /// Copying the database failed.
    #[error("cannot copy the store {store} to {dest}: {source}")]
    Store {
        /// The store's file.
        store: PathBuf,
        /// The copy's file.
        dest: PathBuf,
        /// Why.
        source: StoreError,
    },
    /// A file or directory could not be read, created or written.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// What a backup copied.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackupReport {
    /// The copy of the database.
    pub database: PathBuf,
    /// Its size in bytes.
    pub database_bytes: u64,
    /// The directory the blobs were copied to.
    pub blobs: PathBuf,
    /// Blobs copied.
    pub blob_files: u64,
    /// Their bytes.
    pub blob_bytes: u64,
}

/// Copies the store and blob directory `config` names (an `sqlite://` store) into `dest`,
/// created if missing (it must be empty if it exists): `dest/chat.db` and `dest/blobs/`.
/// Safe while a node is running on the store. Blocking: call it off an async runtime.
pub fn backup(config: &Config, dest: &Path) -> Result<BackupReport, BackupError> {
    let url = config.store.as_str();
    let Some(store) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    else {
        return Err(BackupError::NotEmbedded(config.store.redacted()));
    };
    let store = PathBuf::from(store);
    let io_error = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| BackupError::Io { what, path, source }
    };
    // Nothing is created before every check passed.
    let create = match std::fs::read_dir(dest) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(BackupError::DestinationInUse(dest.to_path_buf()));
            }
            false
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => true,
        Err(err) if err.kind() == io::ErrorKind::NotADirectory => {
            return Err(BackupError::DestinationInUse(dest.to_path_buf()));
        }
        Err(source) => {
            return Err(BackupError::Io {
                what: "cannot read the backup directory",
                path: dest.to_path_buf(),
                source,
            });
        }
    };
    if !store.is_file() {
        return Err(BackupError::Store {
            store: store.clone(),
            dest: dest.to_path_buf(),
            source: StoreError::Invalid("no such database file"),
        });
    }
    if create {
        std::fs::create_dir_all(dest)
            .map_err(io_error("cannot create the backup directory", dest))?;
    }
    let database = dest.join("chat.db");
    chat_storage::SqliteStore::backup(&store, &database).map_err(|source| BackupError::Store {
        store: store.clone(),
        dest: database.clone(),
        source,
    })?;
    let database_bytes = std::fs::metadata(&database)
        .map_err(io_error("cannot read the copy", &database))?
        .len();
    let blobs = dest.join("blobs");
    let (blob_files, blob_bytes) = copy_blobs(&config.blob_path(), &blobs)?;
    Ok(BackupReport {
        database,
        database_bytes,
        blobs,
        blob_files,
        blob_bytes,
    })
}

/// Copies the blob files under `from` (a blob store's directory: shard directories of
/// files) to `to`, flushing each, skipping unfinished uploads. A missing `from` (no
/// attachment was ever stored) copies nothing. Returns the files and bytes copied.
fn copy_blobs(from: &Path, to: &Path) -> Result<(u64, u64), BackupError> {
    let mut copied = (0, 0);
    let io_error = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| BackupError::Io { what, path, source }
    };
    std::fs::create_dir_all(to).map_err(io_error("cannot create", to))?;
    let shards = match std::fs::read_dir(from) {
        Ok(shards) => shards,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(copied),
        Err(source) => {
            return Err(BackupError::Io {
                what: "cannot read the blob directory",
                path: from.to_path_buf(),
                source,
            });
        }
    };
    for shard in shards {
        let shard = shard.map_err(io_error("cannot read the blob directory", from))?;
        let path = shard.path();
        // Files at the top level are uploads in progress (`*.tmp`).
        if !path.is_dir() {
            continue;
        }
        let target = to.join(shard.file_name());
        std::fs::create_dir_all(&target).map_err(io_error("cannot create", &target))?;
        for blob in std::fs::read_dir(&path).map_err(io_error("cannot read", &path))? {
            let blob = blob.map_err(io_error("cannot read", &path))?;
            let source = blob.path();
            if !source.is_file() || source.to_string_lossy().ends_with(".tmp") {
                continue;
            }
            let dest = target.join(blob.file_name());
            let bytes = std::fs::copy(&source, &dest).map_err(io_error("cannot copy", &source))?;
            std::fs::File::open(&dest)
                .and_then(|file| file.sync_all())
                .map_err(io_error("cannot flush", &dest))?;
            copied.0 += 1;
            copied.1 += bytes;
        }
    }
    Ok(copied)
}
