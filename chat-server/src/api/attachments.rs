//! Attachments (R-ATT): encrypted blobs uploaded and downloaded over HTTP, streamed between
//! the socket and the [`chat_core::BlobStore`], never held whole in memory.
//!
//! Only members of the conversation named at upload may upload to it or download from it.
//! The server never sees the key: the client encrypts before uploading and sends the
//! pointer, key and digest inside an end-to-end encrypted message.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chat_core::{AttachmentId, AttachmentMeta, BlobError, ConversationId, ErrorCode, UserId};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ApiResult};
use super::{Json, Path, Query};
use crate::auth::Authed;
use crate::state::{Shared, now};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UploadQuery {
    conversation: ConversationId,
}

#[derive(Serialize)]
pub(crate) struct Uploaded {
    id: AttachmentId,
    size: u64,
}

/// `POST /v1/attachments?conversation=ID`: streams the body into the blob store.
pub(crate) async fn upload(
    State(shared): State<Arc<Shared>>,
    authed: Authed,
    Query(query): Query<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<Uploaded>)> {
    let user = authed.device.user;
    require_member(&shared, query.conversation, user).await?;
    let _place = shared
        .limits
        .uploads
        .enter(&user)
        .ok_or_else(|| quota(Duration::from_secs(1), "too many uploads at once"))?;
    let limit = shared.config.max_attachment_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(too_large(limit));
    }
    // The byte budget: refused up front when the declared length is over what is left,
    // charged chunk by chunk as bytes arrive, and cut (the blob store keeps nothing of a
    // failed upload) when it runs out mid-stream.
    if let Some(len) = declared {
        let check = shared
            .limits
            .upload_bytes
            .check_n(&user, len as f64, Instant::now(), false);
        check.map_err(|wait| quota(wait, "upload quota exceeded"))?;
    }
    let id = new_id()?;
    let over_quota = Arc::new(Mutex::new(None));
    let stream = {
        let (shared, over_quota) = (shared.clone(), over_quota.clone());
        body.into_data_stream().map(move |chunk| {
            let chunk = chunk.map_err(|err| BlobError::Interrupted(err.to_string()))?;
            let budget = &shared.limits.upload_bytes;
            if let Err(wait) = budget.check_n(&user, chunk.len() as f64, Instant::now(), true) {
                *over_quota.lock().unwrap_or_else(|e| e.into_inner()) = Some(wait);
                return Err(BlobError::Interrupted("upload quota exceeded".into()));
            }
            Ok(chunk)
        })
    };
    let stored = shared.blobs.put(id, Box::pin(stream), limit).await;
    let size = match stored {
        Ok(size) => size,
        Err(err) => {
            if let Some(wait) = *over_quota.lock().unwrap_or_else(|e| e.into_inner()) {
                tracing::info!(user = %user, "attachment upload cut: quota exceeded");
                return Err(quota(wait, "upload quota exceeded"));
            }
            return Err(blob_error(err, limit));
        }
    };
    let meta = AttachmentMeta {
        id,
        conversation: query.conversation,
        uploader: authed.device,
        size,
        created_at: now(),
    };
    if let Err(err) = shared.store.insert_attachment(&meta).await {
        // Without its record nobody could download it: do not keep the bytes.
        if let Err(cause) = shared.blobs.delete(id).await {
            tracing::warn!(cause = %cause, attachment = %id, "cannot remove an unrecorded blob");
        }
        return Err(err.into());
    }
    metrics::counter!("chat_attachment_bytes_in_total").increment(size);
    Ok((StatusCode::CREATED, Json(Uploaded { id, size })))
}

/// `GET /v1/attachments/{id}`: streams the blob back to a member of its conversation.
pub(crate) async fn download(
    State(shared): State<Arc<Shared>>,
    authed: Authed,
    Path(id): Path<AttachmentId>,
) -> ApiResult<Response> {
    authorize(&shared, authed, id).await?;
    let Some((size, stream)) = shared.blobs.get(id).await.map_err(|e| blob_error(e, 0))? else {
        tracing::error!(attachment = %id, "attachment record without a blob");
        return Err(missing());
    };
    metrics::counter!("chat_attachment_bytes_out_total").increment(size);
    let headers = [
        (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
        (header::CONTENT_LENGTH, size.to_string()),
    ];
    Ok((headers, Body::from_stream(stream)).into_response())
}

/// `HEAD /v1/attachments/{id}`: the size as `Content-Length`, no body.
pub(crate) async fn head(
    State(shared): State<Arc<Shared>>,
    authed: Authed,
    Path(id): Path<AttachmentId>,
) -> ApiResult<Response> {
    let meta = authorize(&shared, authed, id).await?;
    let headers = [
        (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
        (header::CONTENT_LENGTH, meta.size.to_string()),
    ];
    Ok(headers.into_response())
}

/// The attachment's record, if the caller is a member of its conversation.
async fn authorize(shared: &Shared, authed: Authed, id: AttachmentId) -> ApiResult<AttachmentMeta> {
    let meta = shared.store.attachment(id).await?.ok_or_else(missing)?;
    require_member(shared, meta.conversation, authed.device.user).await?;
    Ok(meta)
}

/// Members only; non-members cannot tell a conversation they are not in from one that does
/// not exist (as for the conversation routes).
async fn require_member(
    shared: &Shared,
    conversation: ConversationId,
    user: UserId,
) -> ApiResult<()> {
    if shared.store.is_member(conversation, user).await? {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorCode::NotMember,
        "not a member of this conversation",
    ))
}

fn missing() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such attachment")
}

/// `rate_limited` for the upload quotas, retryable after `wait` (at most a day).
fn quota(wait: Duration, message: &str) -> ApiError {
    let mut err = ApiError::rate_limited(wait.min(Duration::from_secs(86_400)));
    err.message = message.into();
    err
}

fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!("attachments are limited to {limit} bytes"),
    )
}

fn blob_error(err: BlobError, limit: u64) -> ApiError {
    match err {
        BlobError::TooLarge { .. } => too_large(limit),
        BlobError::Interrupted(cause) => {
            tracing::debug!(%cause, "upload interrupted");
            ApiError::new(ErrorCode::InvalidRequest, "upload interrupted")
        }
        other => {
            tracing::error!(cause = %other, "blob store failed");
            ApiError::new(ErrorCode::Unavailable, "blob store unavailable")
        }
    }
}

/// A fresh unguessable ID: 128 bits from the operating system's generator.
fn new_id() -> ApiResult<AttachmentId> {
    let mut bytes = [0u8; AttachmentId::LEN];
    getrandom::fill(&mut bytes).map_err(|_| ApiError::new(ErrorCode::Internal, "no randomness"))?;
    Ok(AttachmentId::from_bytes(bytes))
}
