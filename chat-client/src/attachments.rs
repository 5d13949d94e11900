//! Attachments (R-ATT): files encrypted on the device with a fresh key (chat-crypto's
//! STREAM construction), the ciphertext uploaded, and the pointer (ID, key, size, digest)
//! sent inside an end-to-end encrypted message; downloads check the digest and size.

use bytes::Bytes;
use chat_core::{Content, ConversationId, MessageId};
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::Frame;

use crate::client::Client;
use crate::error::{Error, NetworkError, NetworkErrorKind, Result};
use crate::wire;

impl Client {
    /// Encrypts a file with a fresh key, uploads the ciphertext, and sends the pointer (id,
    /// key, size, digest) inside an end-to-end encrypted message; returns the message's ID.
    /// The whole file is held in memory while it is encrypted and uploaded.
    pub(crate) async fn send_attachment(
        &self,
        conversation: ConversationId,
        file: &[u8],
        mime: &str,
        name: Option<&str>,
    ) -> Result<MessageId> {
        let (ciphertext, pointer) = chat_crypto::attachment::encrypt(&mut rand::rng(), file)?;
        let uploaded: wire::Uploaded = self
            .inner
            .http
            .upload(
                &format!("/v1/attachments?conversation={conversation}"),
                ciphertext.into(),
            )
            .await?;
        let content = attachment(uploaded.id, &pointer, mime, name.map(str::to_owned));
        self.send(conversation, &content).await
    }

    /// Downloads an attachment received in a message, checks its digest and size, and
    /// decrypts it. A blob that was changed on the server is refused
    /// ([`Error::Crypto`] with `AttachmentDigest`).
    pub async fn download_attachment(
        &self,
        pointer: &chat_core::AttachmentPointer,
    ) -> Result<Vec<u8>> {
        let max = chat_crypto::attachment::encrypted_size(pointer.size)
            .ok_or(chat_crypto::Error::AttachmentSize)?;
        let ciphertext = self
            .inner
            .http
            .download(
                &format!("/v1/attachments/{}", pointer.id),
                usize::try_from(max).unwrap_or(usize::MAX),
            )
            .await?;
        let key = decryption_key(pointer);
        Ok(chat_crypto::attachment::decrypt(&key, &ciphertext)?)
    }

    /// Like [`send_attachment`](Self::send_attachment) for a file on disk, streamed: it is
    /// read, encrypted and uploaded 64 KiB at a time, never held whole in memory.
    pub(crate) async fn send_file(
        &self,
        conversation: ConversationId,
        path: impl AsRef<std::path::Path>,
        mime: &str,
    ) -> Result<MessageId> {
        use tokio::io::AsyncReadExt as _;

        let path = path.as_ref();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let io = |e: std::io::Error| Error::io(path, e);
        let mut file = tokio::fs::File::open(path).await.map_err(io)?;
        let (tx, rx) =
            tokio::sync::mpsc::channel::<std::result::Result<Frame<Bytes>, std::io::Error>>(4);
        let frames = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        let route = format!("/v1/attachments?conversation={conversation}");
        let upload = self
            .inner
            .http
            .upload_stream::<wire::Uploaded, _>(&route, StreamBody::new(frames));
        let produce = async move {
            let mut encryptor = chat_crypto::attachment::Encryptor::new(&mut rand::rng());
            let mut buf = vec![0u8; chat_crypto::attachment::CHUNK_SIZE];
            let mut size = 0u64;
            loop {
                let n = match file.read(&mut buf).await {
                    Ok(n) => n,
                    Err(e) => {
                        // An error item aborts the upload: the server keeps nothing.
                        let copy = std::io::Error::new(e.kind(), e.to_string());
                        let _ = tx.send(Err(e)).await;
                        return Err(Error::io(path, copy));
                    }
                };
                if n == 0 {
                    break;
                }
                size += n as u64;
                let chunk = encryptor.update(buf.get(..n).unwrap_or_default())?;
                if !chunk.is_empty() && tx.send(Ok(Frame::data(chunk.into()))).await.is_err() {
                    return Err(ended_early());
                }
            }
            let (tail, pointer) = encryptor.finish()?;
            if tx.send(Ok(Frame::data(tail.into()))).await.is_err() {
                return Err(ended_early());
            }
            Ok((pointer, size))
        };
        let (uploaded, produced) = tokio::join!(upload, produce);
        // A file that could not be read aborted the upload: that is the error to report.
        // Otherwise the upload's error first: when it fails, the reader only sees the body end.
        if let Err(e @ Error::Io { .. }) = produced {
            return Err(e);
        }
        let uploaded = uploaded?;
        let (pointer, size) = produced?;
        debug_assert_eq!(pointer.size, size, "the encryptor counts what it was given");
        let content = attachment(uploaded.id, &pointer, mime, name);
        self.send(conversation, &content).await
    }

    /// Like [`download_attachment`](Self::download_attachment), streamed into the file at
    /// `path`: chunks are authenticated as they arrive and written to `path` + `.part`,
    /// which is renamed to `path` only once the digest and size verified (and removed
    /// otherwise).
    pub async fn download_file(
        &self,
        pointer: &chat_core::AttachmentPointer,
        path: impl AsRef<std::path::Path>,
    ) -> Result<()> {
        let path = path.as_ref();
        let mut part = path.as_os_str().to_owned();
        part.push(".part");
        let part = std::path::PathBuf::from(part);
        let result = self.download_into(pointer, &part).await;
        match result {
            Ok(()) => tokio::fs::rename(&part, path)
                .await
                .map_err(|e| Error::io(path, e)),
            Err(e) => {
                let _ = tokio::fs::remove_file(&part).await;
                Err(e)
            }
        }
    }

    async fn download_into(
        &self,
        pointer: &chat_core::AttachmentPointer,
        part: &std::path::Path,
    ) -> Result<()> {
        use tokio::io::AsyncWriteExt as _;

        let io = |e: std::io::Error| Error::io(part, e);
        let mut body = self
            .inner
            .http
            .download_stream(&format!("/v1/attachments/{}", pointer.id))
            .await?;
        let mut file = tokio::fs::File::create(part).await.map_err(io)?;
        let key = decryption_key(pointer);
        let mut decryptor = chat_crypto::attachment::Decryptor::new(&key);
        let max = chat_crypto::attachment::encrypted_size(pointer.size)
            .ok_or(chat_crypto::Error::AttachmentSize)?;
        let mut received = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                NetworkError::new(
                    NetworkErrorKind::ConnectionLost,
                    self.inner.nodes.current().authority(),
                    e,
                )
            })?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            received += data.len() as u64;
            if received > max {
                return Err(chat_crypto::Error::AttachmentSize.into());
            }
            let plain = decryptor.update(&data)?;
            file.write_all(&plain).await.map_err(io)?;
        }
        let tail = decryptor.finish()?;
        file.write_all(&tail).await.map_err(io)?;
        file.sync_all().await.map_err(io)?;
        Ok(())
    }
}

/// The body of an upload stopped being read: the request failed (its error is the one to
/// report; this one only ends the file reader).
fn ended_early() -> Error {
    Error::protocol("the upload ended before the file was read")
}

/// The message content that hands an uploaded attachment to the other members: the blob's
/// ID on the server and what decrypts and checks it.
fn attachment(
    id: chat_core::AttachmentId,
    pointer: &chat_crypto::attachment::AttachmentPointer,
    mime: &str,
    name: Option<String>,
) -> Content {
    Content::Attachment(chat_core::AttachmentPointer {
        id,
        key: chat_core::AttachmentKey(*pointer.key()),
        size: pointer.size,
        sha256: pointer.sha256,
        mime: mime.to_owned(),
        name,
        caption: None,
    })
}

/// What decrypts and checks the attachment a received message points to.
fn decryption_key(
    pointer: &chat_core::AttachmentPointer,
) -> chat_crypto::attachment::AttachmentPointer {
    chat_crypto::attachment::AttachmentPointer::from_parts(
        pointer.key.0,
        pointer.size,
        pointer.sha256,
    )
}
