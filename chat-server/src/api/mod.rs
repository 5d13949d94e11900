//! The HTTP API (JSON): accounts, devices, keys, conversations, history, health and metrics.
//! docs/PROTOCOL.md lists every route.

pub(crate) mod accounts;
pub(crate) mod attachments;
pub(crate) mod conversations;
pub(crate) mod discovery;
pub(crate) mod error;
pub(crate) mod group_changes;
pub(crate) mod keys;
pub(crate) mod people;
pub(crate) mod push;

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{delete, get, post, put};
use chat_core::ErrorCode;

use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::Response;

use self::error::{ApiError, StoreFailure};
use crate::gateway;
use crate::health;
use crate::state::Shared;

/// The largest JSON request body accepted (1,000 one-time prekeys fit).
const MAX_JSON_BODY: usize = 256 * 1024;

/// The node's router: every route, with its state.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    use conversations as c;
    Router::new()
        .route("/v1/register", post(accounts::register))
        .route("/v1/login", post(accounts::login))
        .route("/v1/logout", post(accounts::logout))
        .route("/v1/devices", get(accounts::devices))
        .route("/v1/devices/{device_id}", delete(accounts::remove_device))
        .route("/v1/users/by-name/{username}", get(accounts::user_by_name))
        .route("/v1/users/{user_id}/bundles", get(keys::bundles))
        .route("/v1/users/{user_id}/device-list", get(keys::device_list))
        .route("/v1/device-list", put(keys::put_device_list))
        .route("/v1/devices/{device_id}/link", put(keys::put_link))
        .route("/v1/link", get(keys::get_link))
        .route("/v1/users/{user_id}/profile", get(people::of_user))
        .route("/v1/users/search", get(people::search))
        .route("/v1/profile", get(people::own).put(people::set))
        .route("/v1/blocks", get(people::blocks).post(people::block))
        .route("/v1/blocks/{user_id}", delete(people::unblock))
        .route("/v1/keys", put(keys::put_keys))
        .route("/v1/keys/one-time", post(keys::add_one_time))
        .route("/v1/keys/count", get(keys::count))
        .route("/v1/push", put(push::register).delete(push::unregister))
        .route("/v1/conversations", get(c::list))
        .route("/v1/conversations/direct", post(c::open_direct))
        .route("/v1/conversations/groups", post(c::create_group))
        .route("/v1/conversations/{id}", get(c::get))
        .route(
            "/v1/conversations/{id}/members",
            get(c::members).post(c::add_members),
        )
        .route(
            "/v1/conversations/{id}/members/{user_id}",
            delete(c::remove_member),
        )
        .route(
            "/v1/conversations/{id}/members/{user_id}/admin",
            put(c::promote).delete(c::demote),
        )
        .route(
            "/v1/conversations/{id}/changes",
            get(group_changes::list).post(group_changes::post),
        )
        .route("/v1/conversations/{id}/leave", post(c::leave))
        .route("/v1/conversations/{id}/name", put(c::rename))
        .route("/v1/conversations/{id}/settings", put(c::settings))
        .route("/v1/conversations/{id}/devices", get(c::devices))
        .route("/v1/conversations/{id}/messages", get(c::history))
        .route(
            "/v1/conversations/{id}/messages/{message_id}",
            get(c::message),
        )
        .route("/v1/conversations/{id}/receipts", get(c::receipts))
        .route(
            "/v1/attachments",
            // The upload streams to the blob store under its own limit, checked as it goes.
            post(attachments::upload).layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/v1/attachments/{id}",
            get(attachments::download).head(attachments::head),
        )
        .route("/v1/discovery", get(discovery::discover))
        .route("/v1/ws", get(gateway::upgrade))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::new(ErrorCode::NotFound, "no such route") })
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY))
        .layer(middleware::from_fn_with_state(
            shared.clone(),
            record_failures,
        ))
        .layer(middleware::from_fn(count_requests))
        .with_state(shared)
}

/// Counts every request in `chat_http_requests_total{route, method, status}` and times it
/// in `chat_http_request_seconds{route}`. The route is the matched pattern
/// (`/v1/conversations/{id}`), never the path itself, so the label set stays bounded.
async fn count_requests(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::histogram!("chat_http_request_seconds", "route" => route.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!(
        "chat_http_requests_total",
        "route" => route,
        "method" => method,
        "status" => status
    )
    .increment(1);
    response
}

/// Records the backend failure behind an error response (see [`StoreFailure`]) in the
/// node's store health: logged at most once per interval, and counted for readiness.
async fn record_failures(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let mut response = next.run(request).await;
    if let Some(failure) = response.extensions_mut().remove::<StoreFailure>() {
        shared.health.failed("http request", &failure.0);
    }
    response
}

/// Ready when the node is not shutting down and its store takes writes: no backend failure
/// in the last few seconds, and a probe write (made at most once a second) succeeds.
async fn ready(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    if *shared.shutdown.borrow() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    }
    if shared.health.failed_within(health::FAILING_FOR) {
        return (StatusCode::SERVICE_UNAVAILABLE, "store failing");
    }
    if !shared.health.writable(shared.store.as_ref()).await {
        return (StatusCode::SERVICE_UNAVAILABLE, "store cannot take writes");
    }
    (StatusCode::OK, "ready")
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    match &shared.metrics {
        Some(render) => (StatusCode::OK, render()),
        None => (StatusCode::NOT_FOUND, "metrics are not enabled".to_owned()),
    }
}

/// `axum::Json` whose rejections are [`ApiError`]s, so malformed bodies get the documented
/// JSON error.
#[derive(Debug, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub(crate) struct Json<T>(pub(crate) T);

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let code = if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ErrorCode::PayloadTooLarge
        } else {
            ErrorCode::InvalidRequest
        };
        Self::new(code, r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        Self::new(ErrorCode::InvalidRequest, r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::new(ErrorCode::InvalidRequest, r.body_text())
    }
}

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> axum::response::Response {
        axum::Json(self.0).into_response()
    }
}

/// `axum::extract::Path` with [`ApiError`] rejections.
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub(crate) struct Path<T>(pub(crate) T);

/// `axum::extract::Query` with [`ApiError`] rejections.
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub(crate) struct Query<T>(pub(crate) T);
