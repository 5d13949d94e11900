//! The one place where errors become HTTP responses.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chat_core::{ErrorCode, StoreError};
use serde::Serialize;

use crate::health;

/// An error answered to an HTTP client as `{"code": n, "error": "name", "message": "…"}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    /// The stable code.
    pub code: ErrorCode,
    /// A human-readable explanation.
    pub message: String,
    /// For `rate_limited` and a busy `unavailable`: seconds until a retry can succeed.
    pub retry_after_secs: Option<u64>,
    /// The backend failure behind it, if any (logged, never sent).
    pub failure: Option<StoreFailure>,
}

impl ApiError {
    /// An error with a code and message.
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after_secs: None,
            failure: None,
        }
    }

    /// A `rate_limited` error.
    pub(crate) fn rate_limited(wait: std::time::Duration) -> Self {
        Self {
            code: ErrorCode::RateLimited,
            message: "too many requests".into(),
            retry_after_secs: Some(wait.as_secs().max(1)),
            failure: None,
        }
    }
}

impl ApiError {
    /// An `unavailable` error for a saturated resource, retryable after `wait`.
    pub(crate) fn unavailable(wait: std::time::Duration) -> Self {
        Self {
            code: ErrorCode::Unavailable,
            message: "busy, retry later".into(),
            retry_after_secs: Some(wait.as_secs().max(1)),
            failure: None,
        }
    }
}

/// The HTTP status for an error code.
pub(crate) fn status(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::MalformedFrame | ErrorCode::InvalidRequest | ErrorCode::UnexpectedFrame => {
            StatusCode::BAD_REQUEST
        }
        ErrorCode::InvalidToken | ErrorCode::BadCredentials => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden | ErrorCode::NotMember => StatusCode::FORBIDDEN,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::GroupFull
        | ErrorCode::StaleDevices
        | ErrorCode::Conflict
        | ErrorCode::TooManyDevices => StatusCode::CONFLICT,
        ErrorCode::BodyTooLarge
        | ErrorCode::HeaderTooLarge
        | ErrorCode::FrameTooLarge
        | ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Unavailable | ErrorCode::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

#[derive(Serialize)]
struct Body<'a> {
    code: u16,
    error: &'a str,
    message: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            code: self.code.number(),
            error: self.code.name(),
            message: &self.message,
        };
        let mut response = (status(self.code), Json(body)).into_response();
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(failure) = self.failure {
            response.extensions_mut().insert(failure);
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        let peer = health::peer_error(&err);
        let mut error = Self::new(peer.code, peer.message);
        if health::is_backend(&err) {
            error.failure = Some(StoreFailure(err.to_string()));
        }
        error
    }
}

/// A backend failure behind an error response, attached to the response so that the
/// router's [`record_failures`](super::record_failures) layer, which holds the node's
/// state, records and logs it. Its text is never sent.
#[derive(Debug, Clone)]
pub(crate) struct StoreFailure(pub(crate) String);

/// Shorthand for handler results.
pub(crate) type ApiResult<T> = Result<T, ApiError>;
