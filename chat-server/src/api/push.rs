//! Push registration (R-PUSH-1): a device sets or removes the token its push gateway needs
//! to wake it. The token is opaque to the server and never logged.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use chat_core::{ErrorCode, PushToken};
use serde::Deserialize;

use super::Json;
use super::error::{ApiError, ApiResult};
use crate::auth::Authed;
use crate::state::Shared;

/// The longest platform name accepted.
const MAX_PLATFORM: usize = 32;
/// The longest token accepted (APNs and FCM tokens are a few hundred bytes).
const MAX_TOKEN: usize = 4096;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Registration {
    platform: String,
    token: String,
}

/// `PUT /v1/push`: sets (or replaces) the caller's device's push token.
pub(crate) async fn register(
    State(shared): State<Arc<Shared>>,
    authed: Authed,
    Json(req): Json<Registration>,
) -> ApiResult<StatusCode> {
    let platform_ok = (1..=MAX_PLATFORM).contains(&req.platform.len())
        && req
            .platform
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if !platform_ok {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "platform must be 1 to 32 characters of a-z, 0-9, '.', '_', '-'",
        ));
    }
    if !(1..=MAX_TOKEN).contains(&req.token.len()) {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "token must be 1 to 4096 bytes",
        ));
    }
    let token = PushToken {
        platform: req.platform,
        token: req.token,
    };
    shared
        .store
        .set_push_token(authed.device, Some(&token))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /v1/push`: removes the caller's device's push token (no error if it had none).
pub(crate) async fn unregister(
    State(shared): State<Arc<Shared>>,
    authed: Authed,
) -> ApiResult<StatusCode> {
    shared.store.set_push_token(authed.device, None).await?;
    Ok(StatusCode::NO_CONTENT)
}
