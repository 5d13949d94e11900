//! Registration, log-in, log-out and devices (R-ACC-1, R-ACC-2).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use chat_core::{
    BusMessage, Credentials, DeviceAddress, DeviceId, ErrorCode, Timestamp, Topic, UserId, Username,
};
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ApiResult};
use super::{Json, Path};
use crate::auth::{self, Authed, MAX_PASSWORD_LEN, MIN_PASSWORD_LEN};
use crate::login_limits::Outcome;
use crate::state::{Shared, now};

/// The longest device name accepted, in bytes.
const MAX_DEVICE_NAME: usize = 64;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RegisterRequest {
    username: Username,
    password: String,
}

#[derive(Serialize)]
pub(crate) struct UserView {
    user_id: UserId,
    username: Username,
}

pub(crate) async fn register(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Json(req): Json<RegisterRequest>,
) -> ApiResult<(StatusCode, Json<UserView>)> {
    shared
        .limits
        .login_addr
        .check(&peer.ip(), Instant::now())
        .await
        .map_err(ApiError::rate_limited)?;
    check_password(&req.password)?;
    let hash = auth::hash_password(&shared, req.password).await?;
    let user = shared
        .store
        .create_user(&req.username, &hash, now())
        .await?;
    tracing::info!(user = %user.id, "registered");
    Ok((
        StatusCode::CREATED,
        Json(UserView {
            user_id: user.id,
            username: user.username,
        }),
    ))
}

fn check_password(password: &str) -> ApiResult<()> {
    if (MIN_PASSWORD_LEN..=MAX_PASSWORD_LEN).contains(&password.len()) {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "passwords are 8 to 1024 bytes",
        ))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LoginRequest {
    username: Username,
    password: String,
    /// A new device's name; ignored when `device_id` is given.
    #[serde(default)]
    device_name: Option<String>,
    /// Log in again on an existing device instead of registering a new one.
    #[serde(default)]
    device_id: Option<DeviceId>,
}

#[derive(Serialize)]
pub(crate) struct LoginResponse {
    token: String,
    user_id: UserId,
    device_id: DeviceId,
}

pub(crate) async fn login(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Json(req): Json<LoginRequest>,
) -> ApiResult<Json<LoginResponse>> {
    let t = Instant::now();
    shared
        .limits
        .login_addr
        .check(&peer.ip(), t)
        .await
        .map_err(ApiError::rate_limited)?;
    let bad = || ApiError::new(ErrorCode::BadCredentials, "wrong username or password");
    if req.password.len() > MAX_PASSWORD_LEN {
        return Err(bad());
    }
    // Only failures are limited, per (address, username) and per username (see
    // login_limits): a guesser elsewhere cannot make the owner's right password answer 429.
    let limits = &shared.limits.login;
    let attempt = limits
        .start(peer.ip(), req.username.as_str(), t)
        .await
        .map_err(ApiError::rate_limited)?;
    let checked = check_credentials(&shared, &req.username, req.password).await;
    let outcome = match &checked {
        Ok(Some(_)) => Outcome::Success,
        Ok(None) => Outcome::Failure,
        Err(_) => Outcome::NotChecked,
    };
    limits.finish(attempt, outcome, Instant::now()).await;
    // Counted in chat_login_failures_total by `finish`; logged here.
    if outcome == Outcome::Failure {
        // The address, never the username typed (people type passwords into it).
        if let Some(unlogged) = shared.failed_logins.record(Instant::now()) {
            tracing::warn!(peer = %peer.ip(), unlogged, "failed log-in");
        }
    }
    let credentials = checked?.ok_or_else(bad)?;
    let user = credentials.user.id;
    let (token, hash) = auth::new_token()?;
    let device = match req.device_id {
        Some(device) => {
            let address = DeviceAddress { user, device };
            shared.store.add_token(address, hash, now()).await?;
            device
        }
        None => {
            let name = req.device_name.unwrap_or_default();
            if name.len() > MAX_DEVICE_NAME || name.chars().any(char::is_control) {
                return Err(ApiError::new(ErrorCode::InvalidRequest, "bad device name"));
            }
            shared
                .store
                .add_device(user, &name, hash, now())
                .await?
                .address
                .device
        }
    };
    tracing::info!(user = %user, device = %device, "logged in");
    Ok(Json(LoginResponse {
        token,
        user_id: user,
        device_id: device,
    }))
}

/// The account's credentials if `password` is its password; `None` for a wrong password or
/// an unknown username (which costs the same hash).
async fn check_credentials(
    shared: &Shared,
    username: &Username,
    password: String,
) -> ApiResult<Option<Credentials>> {
    let credentials = shared.store.credentials(username).await?;
    let phc = credentials.as_ref().map(|c| c.password_hash.clone());
    let ok = auth::verify_password(shared, password, phc).await?;
    Ok(credentials.filter(|_| ok))
}

pub(crate) async fn logout(
    State(shared): State<Arc<Shared>>,
    authed: Authed,
) -> ApiResult<StatusCode> {
    shared.store.revoke_token(authed.token).await?;
    disconnect(&shared, authed.device.device).await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize)]
pub(crate) struct DeviceView {
    device_id: DeviceId,
    name: String,
    created_at: Timestamp,
    /// On the user's signed device list (or the user has none): messages reach it.
    linked: bool,
}

pub(crate) async fn devices(
    State(shared): State<Arc<Shared>>,
    authed: Authed,
) -> ApiResult<Json<Vec<DeviceView>>> {
    let devices = shared.store.devices(authed.device.user).await?;
    Ok(Json(
        devices
            .into_iter()
            .map(|d| DeviceView {
                device_id: d.address.device,
                name: d.name,
                created_at: d.created_at,
                linked: d.linked,
            })
            .collect(),
    ))
}

pub(crate) async fn remove_device(
    State(shared): State<Arc<Shared>>,
    authed: Authed,
    Path(device): Path<DeviceId>,
) -> ApiResult<StatusCode> {
    shared
        .store
        .remove_device(DeviceAddress {
            user: authed.device.user,
            device,
        })
        .await?;
    disconnect(&shared, device).await;
    tracing::info!(user = %authed.device.user, device = %device, "device removed");
    Ok(StatusCode::NO_CONTENT)
}

/// Closes the device's live connections (on any node), since its token no longer works.
async fn disconnect(shared: &Shared, device: DeviceId) {
    let close = BusMessage::Close(ErrorCode::InvalidToken);
    if let Err(err) = shared.bus.publish(Topic::Device(device), close).await {
        tracing::warn!(cause = %err, device = %device, "could not close revoked connections");
    }
}

pub(crate) async fn user_by_name(
    State(shared): State<Arc<Shared>>,
    _authed: Authed,
    Path(username): Path<String>,
) -> ApiResult<Json<UserView>> {
    let name =
        Username::new(username).map_err(|_| ApiError::new(ErrorCode::NotFound, "no such user"))?;
    let credentials = shared
        .store
        .credentials(&name)
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "no such user"))?;
    Ok(Json(UserView {
        user_id: credentials.user.id,
        username: credentials.user.username,
    }))
}
