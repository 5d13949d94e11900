//! [`S3BlobStore`]: attachment ciphertext in a bucket of an S3-compatible object store (AWS
//! S3, MinIO, Ceph RGW, Cloudflare R2, …), which every node of a cluster shares (R-ATT-2):
//! an attachment uploaded through one node downloads through any other.
//!
//! Requests are signed by rusty-s3, a sans-IO crate that presigns URLs with AWS Signature
//! Version 4 and parses S3's XML answers, and sent over the hyper HTTP/1.1 client and rustls
//! the workspace already builds (chat-client uses them). object_store's `aws` feature was
//! the alternative: it adds about twenty crates to the tree, among them reqwest, h2,
//! quick-xml, chrono and aws-lc-sys (a C library built with cmake); rusty-s3 adds eight
//! small ones (rusty-s3, instant-xml and its macros, xmlparser, jiff with jiff-core and
//! jiff-static, portable-atomic-util) and shares hmac, sha2 and url with the tree, in the
//! versions already there (`cargo tree -d` shows no new duplicate). Each request opens its
//! own connection (no pool yet: a 100 MiB upload is 15 requests).
//!
//! All or nothing, as [`BlobStore::put`] promises:
//! - A blob up to [`PART_SIZE`] is held in memory until its last byte arrived and fitted the
//!   limit, then stored with one `PutObject`; S3 makes an object visible only once its PUT
//!   completed, so a PUT cut off midway leaves nothing.
//! - A larger blob is a multipart upload: each part goes as it fills, and
//!   `CompleteMultipartUpload`, the one request that makes the object visible under its key,
//!   is sent only after the last byte arrived and fitted. An upload that fails or is refused
//!   is aborted before `put` returns; one whose task is dropped (the client went away) is
//!   aborted by a task the drop spawns.
//! - A crash midway leaves an incomplete multipart upload: invisible under the key, but its
//!   parts take space (and are billed) until aborted. [`BlobStore::collect_garbage`] aborts
//!   those started longer ago than its bound; the node runs it at start and every hour. A
//!   bucket lifecycle rule (`AbortIncompleteMultipartUpload`) is the same on the service's
//!   side and worth setting too.
//!
//! Memory: one part buffer ([`PART_SIZE`]) per upload in flight; downloads stream.
//! Presigned URLs grant access for their lifetime, so neither they nor the credentials ever
//! reach a log or an error message.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use chat_core::{AttachmentId, BlobError, BlobStore, ByteStream};
use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::header::{CONTENT_LENGTH, ETAG, HOST};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use instant_xml::FromXml;
use rusty_s3::actions::{
    AbortMultipartUpload, CompleteMultipartUpload, CreateMultipartUpload, DeleteObject, GetObject,
    HeadBucket, HeadObject, ListParts, PutObject, UploadPart,
};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use url::Url;

use crate::config::S3Config;

/// The size of each part of a multipart upload (S3 wants at least 5 MiB for all but the
/// last), and the largest blob stored with one `PutObject`.
pub const PART_SIZE: usize = 8 * 1024 * 1024;
/// The smallest part size S3 accepts.
const MIN_PART_SIZE: usize = 5 * 1024 * 1024;
/// How long a presigned URL stays valid: long enough for one request.
const URL_LIFETIME: Duration = Duration::from_secs(600);
/// How long a request may take until the answer's head arrives (a part's upload included).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// The largest XML answer read (a page of 1,000 multipart uploads is far smaller).
const MAX_ANSWER: usize = 4 * 1024 * 1024;

/// Blobs as objects in one S3 bucket, under `<prefix><32 hex digits of the ID>`.
#[derive(Clone)]
pub struct S3BlobStore {
    inner: Arc<Inner>,
}

struct Inner {
    bucket: Bucket,
    credentials: Credentials,
    prefix: String,
    part_size: usize,
    /// TLS settings for an `https` endpoint.
    tls: Option<TlsConnector>,
}

impl std::fmt::Debug for S3BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3BlobStore")
            .field("bucket", &self.inner.bucket.name())
            .field("endpoint", &self.inner.bucket.base_url().as_str())
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

/// Why the S3 store could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum S3Error {
    /// The settings are incomplete or malformed.
    #[error("s3 settings: {0}")]
    Config(String),
    /// The bucket could not be reached or does not exist.
    #[error("s3 bucket {bucket}: {cause}")]
    Bucket {
        /// The bucket's name.
        bucket: String,
        /// What failed.
        cause: String,
    },
}

impl S3BlobStore {
    /// Opens the bucket configured in `config` and checks that it is there (`HeadBucket`),
    /// so a node with a wrong bucket, endpoint or key refuses to start.
    pub async fn open(config: &S3Config) -> Result<Self, S3Error> {
        let store = Self::new(config, PART_SIZE)?;
        let url =
            HeadBucket::new(&store.inner.bucket, Some(&store.inner.credentials)).sign(URL_LIFETIME);
        let unreachable = |cause: String| S3Error::Bucket {
            bucket: config.bucket.clone(),
            cause,
        };
        let answer = store
            .inner
            .send(Method::HEAD, url, Vec::new(), Bytes::new())
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        match answer.status() {
            s if s.is_success() => Ok(store),
            StatusCode::NOT_FOUND => Err(unreachable("no such bucket".into())),
            StatusCode::FORBIDDEN => Err(unreachable(
                "access denied (check the access key and the secret)".into(),
            )),
            s => Err(unreachable(format!("HTTP {s}"))),
        }
    }

    /// The store with parts of `part_size` bytes (at least 5 MiB), without checking the
    /// bucket.
    pub fn new(config: &S3Config, part_size: usize) -> Result<Self, S3Error> {
        let bad = |m: String| S3Error::Config(m);
        let endpoint: Url = config
            .endpoint()
            .parse()
            .map_err(|e| bad(format!("endpoint: {e}")))?;
        let style = match config.virtual_host_style {
            true => UrlStyle::VirtualHost,
            false => UrlStyle::Path,
        };
        let tls = match endpoint.scheme() {
            "https" => Some(tls_connector()?),
            _ => None,
        };
        let bucket = Bucket::new(
            endpoint,
            style,
            config.bucket.clone(),
            config.region().to_owned(),
        )
        .map_err(|e| bad(format!("bucket: {e}")))?;
        let key = config
            .access_key_id
            .clone()
            .ok_or_else(|| bad("no access key ID".into()))?;
        let secret = config
            .secret()
            .map_err(|e| bad(e.0))?
            .ok_or_else(|| bad("no secret access key".into()))?;
        let credentials = match &config.session_token {
            Some(token) => Credentials::new_with_token(
                key,
                secret.expose().to_owned(),
                token.expose().to_owned(),
            ),
            None => Credentials::new(key, secret.expose().to_owned()),
        };
        if part_size < MIN_PART_SIZE {
            return Err(bad(format!("parts must be at least {MIN_PART_SIZE} bytes")));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                bucket,
                credentials,
                prefix: config.prefix().to_owned(),
                part_size,
                tls,
            }),
        })
    }

    /// How many incomplete multipart uploads the bucket holds under the prefix now: those
    /// in flight on any node and what crashes left.
    pub async fn unfinished_uploads(&self) -> Result<u64, BlobError> {
        let mut count = 0;
        let mut after = None;
        loop {
            let page = self.list_uploads(after.take()).await?;
            count += page.uploads.len() as u64;
            match (page.truncated, page.next_key, page.next_upload_id) {
                (true, Some(key), Some(upload)) => after = Some((key, upload)),
                _ => return Ok(count),
            }
        }
    }

    /// Whether a part of `upload` was written after `cutoff` (or there are too many parts to
    /// tell from one page, which counts as yes).
    async fn written_since(
        &self,
        upload: &Upload,
        cutoff: jiff::Timestamp,
    ) -> Result<bool, BlobError> {
        let inner = &self.inner;
        let url = ListParts::new(
            &inner.bucket,
            Some(&inner.credentials),
            &upload.key,
            &upload.upload_id,
        )
        .sign(URL_LIFETIME);
        let answer = inner
            .send(Method::GET, url, Vec::new(), Bytes::new())
            .await?;
        if answer.status() == StatusCode::NOT_FOUND {
            return Ok(false);
        }
        let body = inner.read_ok(answer, "list parts").await?;
        let text = std::str::from_utf8(&body).map_err(|e| failed("list parts", e))?;
        let parts = ListParts::parse_response(text).map_err(|e| failed("list parts", e))?;
        if parts.next_part_number_marker.is_some() {
            return Ok(true);
        }
        Ok(parts.parts.iter().any(|part| {
            part.last_modified
                .parse::<jiff::Timestamp>()
                .map_or(true, |t| t > cutoff)
        }))
    }

    fn key(&self, id: AttachmentId) -> String {
        format!("{}{id}", self.inner.prefix)
    }

    /// One page of the bucket's incomplete multipart uploads under the prefix.
    async fn list_uploads(&self, after: Option<(String, String)>) -> Result<Uploads, BlobError> {
        let inner = &self.inner;
        let mut query: Vec<(&str, &str)> = Vec::new();
        if let Some((key, upload)) = &after {
            query.push(("key-marker", key));
            query.push(("upload-id-marker", upload));
        }
        query.push(("prefix", &inner.prefix));
        query.push(("uploads", ""));
        let url = inner.sign(
            rusty_s3::Method::Get,
            inner.bucket.base_url().clone(),
            &query,
        );
        let answer = inner
            .send(Method::GET, url, Vec::new(), Bytes::new())
            .await?;
        let body = inner.read_ok(answer, "list multipart uploads").await?;
        let text = std::str::from_utf8(&body).map_err(|e| failed("list multipart uploads", e))?;
        instant_xml::from_str(text).map_err(|e| failed("list multipart uploads", e))
    }
}

#[async_trait]
impl BlobStore for S3BlobStore {
    async fn put(
        &self,
        id: AttachmentId,
        mut data: ByteStream,
        limit: u64,
    ) -> Result<u64, BlobError> {
        let key = self.key(id);
        let part_size = self.inner.part_size;
        let mut buf = BytesMut::new();
        let mut size: u64 = 0;
        let mut upload: Option<Multipart> = None;
        let result = async {
            while let Some(chunk) = data.next().await {
                let chunk = chunk?;
                size = size.saturating_add(chunk.len() as u64);
                if size > limit {
                    return Err(BlobError::TooLarge { limit });
                }
                buf.extend_from_slice(&chunk);
                while buf.len() >= part_size {
                    let part = buf.split_to(part_size).freeze();
                    if upload.is_none() {
                        upload = Some(Multipart::create(self.inner.clone(), key.clone()).await?);
                    }
                    if let Some(upload) = &mut upload {
                        upload.part(part).await?;
                    }
                }
            }
            match &mut upload {
                None => self.inner.put_object(&key, buf.split().freeze()).await,
                Some(upload) => {
                    if !buf.is_empty() {
                        upload.part(buf.split().freeze()).await?;
                    }
                    upload.complete().await
                }
            }
        }
        .await;
        match result {
            Ok(()) => Ok(size),
            Err(err) => {
                if let Some(upload) = upload {
                    upload.abort().await;
                }
                Err(err)
            }
        }
    }

    async fn get(&self, id: AttachmentId) -> Result<Option<(u64, ByteStream)>, BlobError> {
        let inner = &self.inner;
        let key = self.key(id);
        let url = GetObject::new(&inner.bucket, Some(&inner.credentials), &key).sign(URL_LIFETIME);
        let answer = inner
            .send(Method::GET, url, Vec::new(), Bytes::new())
            .await?;
        if answer.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !answer.status().is_success() {
            return Err(status_error("get", answer.status()));
        }
        let size = content_length(&answer).ok_or_else(|| failed("get", "no Content-Length"))?;
        let stream = http_body_util::BodyStream::new(answer.into_body()).filter_map(|frame| {
            std::future::ready(match frame {
                Ok(frame) => frame.into_data().ok().map(Ok),
                Err(e) => Some(Err(failed("get", e))),
            })
        });
        Ok(Some((size, Box::pin(stream))))
    }

    async fn size(&self, id: AttachmentId) -> Result<Option<u64>, BlobError> {
        self.inner.head(&self.key(id)).await
    }

    async fn delete(&self, id: AttachmentId) -> Result<bool, BlobError> {
        // S3 answers a DELETE the same whether the object existed or not: ask first.
        let inner = &self.inner;
        let key = self.key(id);
        if inner.head(&key).await?.is_none() {
            return Ok(false);
        }
        let url =
            DeleteObject::new(&inner.bucket, Some(&inner.credentials), &key).sign(URL_LIFETIME);
        let answer = inner
            .send(Method::DELETE, url, Vec::new(), Bytes::new())
            .await?;
        inner.read_ok(answer, "delete").await?;
        Ok(true)
    }

    async fn collect_garbage(&self, older_than: Duration) -> Result<u64, BlobError> {
        let cutoff = jiff::Timestamp::now()
            .checked_sub(
                jiff::SignedDuration::try_from(older_than).unwrap_or(jiff::SignedDuration::MAX),
            )
            .unwrap_or(jiff::Timestamp::MIN);
        let mut removed = 0;
        let mut after = None;
        loop {
            let page = self.list_uploads(after.take()).await?;
            for upload in &page.uploads {
                let started: jiff::Timestamp = match upload.initiated.parse() {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::warn!(cause = %e, key = %upload.key, "unreadable upload start time");
                        continue;
                    }
                };
                // Some servers (moto) report a fixed start time: the newest part counts too,
                // so an upload still being written is never taken.
                if started > cutoff || self.written_since(upload, cutoff).await? {
                    continue;
                }
                let orphan = Multipart {
                    inner: self.inner.clone(),
                    key: upload.key.clone(),
                    upload_id: upload.upload_id.clone(),
                    etags: Vec::new(),
                    done: false,
                };
                if orphan.abort().await {
                    tracing::info!(key = %upload.key, started = %started, "aborted an unfinished upload");
                    removed += 1;
                }
            }
            match (page.truncated, page.next_key, page.next_upload_id) {
                (true, Some(key), Some(upload)) => after = Some((key, upload)),
                _ => return Ok(removed),
            }
        }
    }
}

/// A multipart upload in progress; aborted when dropped before it completed.
struct Multipart {
    inner: Arc<Inner>,
    key: String,
    upload_id: String,
    /// The ETag of each uploaded part, in order (part numbers count from 1).
    etags: Vec<String>,
    done: bool,
}

impl Multipart {
    async fn create(inner: Arc<Inner>, key: String) -> Result<Self, BlobError> {
        // rusty-s3's CreateMultipartUpload signs `?uploads=1`, which AWS and MinIO take but
        // some S3-compatible servers (moto) refuse: `?uploads=`, as the AWS SDKs send it.
        let object = inner
            .bucket
            .object_url(&key)
            .map_err(|e| failed("create multipart upload", e))?;
        let url = inner.sign(rusty_s3::Method::Post, object, &[("uploads", "")]);
        let answer = inner
            .send(Method::POST, url, Vec::new(), Bytes::new())
            .await?;
        let body = inner.read_ok(answer, "create multipart upload").await?;
        let text = std::str::from_utf8(&body).map_err(|e| failed("create multipart upload", e))?;
        let created = CreateMultipartUpload::parse_response(text)
            .map_err(|e| failed("create multipart upload", e))?;
        Ok(Self {
            upload_id: created.upload_id().to_owned(),
            inner,
            key,
            etags: Vec::new(),
            done: false,
        })
    }

    async fn part(&mut self, part: Bytes) -> Result<(), BlobError> {
        let number = u16::try_from(self.etags.len() + 1)
            .ok()
            .filter(|n| *n <= 10_000)
            .ok_or_else(|| failed("upload part", "more than 10,000 parts"))?;
        let inner = &self.inner;
        let url = UploadPart::new(
            &inner.bucket,
            Some(&inner.credentials),
            &self.key,
            number,
            &self.upload_id,
        )
        .sign(URL_LIFETIME);
        let answer = inner.send(Method::PUT, url, Vec::new(), part).await?;
        let etag = answer
            .headers()
            .get(ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        inner.read_ok(answer, "upload part").await?;
        let etag = etag.ok_or_else(|| failed("upload part", "no ETag"))?;
        self.etags.push(etag);
        Ok(())
    }

    /// Makes the object visible under its key: the only step that does.
    async fn complete(&mut self) -> Result<(), BlobError> {
        let inner = self.inner.clone();
        let action = CompleteMultipartUpload::new(
            &inner.bucket,
            Some(&inner.credentials),
            &self.key,
            &self.upload_id,
            self.etags.iter().map(String::as_str),
        );
        let url = action.sign(URL_LIFETIME);
        let body = action.body();
        let answer = inner
            .send(Method::POST, url, Vec::new(), Bytes::from(body))
            .await?;
        let text = inner.read_ok(answer, "complete multipart upload").await?;
        // S3 may answer 200 with an error document when the completion failed late.
        if String::from_utf8_lossy(&text).contains("<Error>") {
            return Err(failed(
                "complete multipart upload",
                "the service refused it",
            ));
        }
        self.done = true;
        Ok(())
    }

    /// Aborts the upload, dropping its parts; returns whether the service confirmed it.
    async fn abort(mut self) -> bool {
        self.done = true;
        let aborted = abort(&self.inner, &self.key, &self.upload_id).await;
        if let Err(err) = &aborted {
            tracing::warn!(cause = %err, key = %self.key, "could not abort an unfinished upload; the collector will");
        }
        aborted.is_ok()
    }
}

impl Drop for Multipart {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // A dropped upload task (the client went away): abort off the dropped task.
        let (inner, key, upload_id) = (
            self.inner.clone(),
            std::mem::take(&mut self.key),
            std::mem::take(&mut self.upload_id),
        );
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(err) = abort(&inner, &key, &upload_id).await {
                    tracing::warn!(cause = %err, %key, "could not abort a dropped upload; the collector will");
                }
            });
        }
    }
}

async fn abort(inner: &Inner, key: &str, upload_id: &str) -> Result<(), BlobError> {
    let url = AbortMultipartUpload::new(&inner.bucket, Some(&inner.credentials), key, upload_id)
        .sign(URL_LIFETIME);
    let answer = inner
        .send(Method::DELETE, url, Vec::new(), Bytes::new())
        .await?;
    // Already gone (aborted by another node's collector, or completed): nothing left.
    if answer.status() == StatusCode::NOT_FOUND {
        return Ok(());
    }
    inner.read_ok(answer, "abort multipart upload").await?;
    Ok(())
}

impl Inner {
    /// Presigns `url` for `method` with `query`, whose names must be in sorted order.
    fn sign(&self, method: rusty_s3::Method, url: Url, query: &[(&str, &str)]) -> Url {
        rusty_s3::signing::sign(
            &jiff::Timestamp::now(),
            method,
            url,
            self.credentials.key(),
            self.credentials.secret(),
            self.credentials.token(),
            self.bucket.region(),
            URL_LIFETIME.as_secs(),
            query.iter().copied(),
            std::iter::empty(),
        )
    }

    async fn put_object(&self, key: &str, body: Bytes) -> Result<(), BlobError> {
        let url = PutObject::new(&self.bucket, Some(&self.credentials), key).sign(URL_LIFETIME);
        let answer = self.send(Method::PUT, url, Vec::new(), body).await?;
        self.read_ok(answer, "put").await?;
        Ok(())
    }

    async fn head(&self, key: &str) -> Result<Option<u64>, BlobError> {
        let url = HeadObject::new(&self.bucket, Some(&self.credentials), key).sign(URL_LIFETIME);
        let answer = self
            .send(Method::HEAD, url, Vec::new(), Bytes::new())
            .await?;
        match answer.status() {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => content_length(&answer)
                .map(Some)
                .ok_or_else(|| failed("head", "no Content-Length")),
            s => Err(status_error("head", s)),
        }
    }

    /// The answer's body if its status is a success, else an error naming `what`.
    async fn read_ok(
        &self,
        answer: Response<hyper::body::Incoming>,
        what: &str,
    ) -> Result<Bytes, BlobError> {
        let status = answer.status();
        let body = http_body_util::Limited::new(answer.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| failed(what, e))?
            .to_bytes();
        if !status.is_success() {
            return Err(status_error(what, status));
        }
        Ok(body)
    }

    /// Sends one request to a presigned URL on a connection of its own.
    async fn send(
        &self,
        method: Method,
        url: Url,
        headers: Vec<(&'static str, String)>,
        body: Bytes,
    ) -> Result<Response<hyper::body::Incoming>, BlobError> {
        let host = url.host_str().ok_or_else(|| failed("request", "no host"))?;
        let port = url
            .port_or_known_default()
            .ok_or_else(|| failed("request", "no port"))?;
        // The Host header as the signature covers it: the port only when not the default.
        let host_header = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        let path = match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        };
        let request = async {
            let tcp = TcpStream::connect((host, port))
                .await
                .map_err(|e| failed("connect", e))?;
            let _ = tcp.set_nodelay(true);
            let stream = match &self.tls {
                Some(tls) => {
                    let name =
                        ServerName::try_from(host.to_owned()).map_err(|e| failed("connect", e))?;
                    let tls = tls.connect(name, tcp).await.map_err(|e| failed("TLS", e))?;
                    Stream::Tls(Box::new(tls))
                }
                None => Stream::Plain(tcp),
            };
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| failed("connect", e))?;
            tokio::spawn(conn);
            let mut builder = Request::builder()
                .method(method)
                .uri(path)
                .header(HOST, host_header)
                .header(CONTENT_LENGTH, body.len());
            for (name, value) in headers {
                builder = builder.header(name, value);
            }
            let request = builder
                .body(Full::new(body))
                .map_err(|e| failed("request", e))?;
            sender
                .send_request(request)
                .await
                .map_err(|e| failed("request", e))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, request)
            .await
            .map_err(|_| failed("request", "timed out"))?
    }
}

/// A page of `ListMultipartUploads`.
#[derive(Debug, FromXml)]
#[xml(
    rename = "ListMultipartUploadsResult",
    ns("http://s3.amazonaws.com/doc/2006-03-01/")
)]
struct Uploads {
    uploads: Vec<Upload>,
    #[xml(rename = "IsTruncated")]
    truncated: bool,
    #[xml(rename = "NextKeyMarker")]
    next_key: Option<String>,
    #[xml(rename = "NextUploadIdMarker")]
    next_upload_id: Option<String>,
}

#[derive(Debug, FromXml)]
#[xml(rename = "Upload", ns("http://s3.amazonaws.com/doc/2006-03-01/"))]
struct Upload {
    #[xml(rename = "Key")]
    key: String,
    #[xml(rename = "UploadId")]
    upload_id: String,
    #[xml(rename = "Initiated")]
    initiated: String,
}

fn content_length<B>(answer: &Response<B>) -> Option<u64> {
    answer
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// A failed S3 operation as a [`BlobError`] (never carrying a URL: it is a credential).
fn failed(what: &str, cause: impl std::fmt::Display) -> BlobError {
    BlobError::Io(std::io::Error::other(format!("s3 {what}: {cause}")))
}

fn status_error(what: &str, status: StatusCode) -> BlobError {
    failed(what, format_args!("HTTP {status}"))
}

fn tls_connector() -> Result<TlsConnector, S3Error> {
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| S3Error::Config(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// A connection to the service, with or without TLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
