//! Passwords, bearer tokens and the authenticated-device extractor.
//!
//! Passwords are hashed with Argon2id on the bounded hashing pool ([`crate::hashing`]). A token is 32 random bytes shown
//! to the client once as 64 hex characters; the store keeps only its SHA-256, so a database
//! leak reveals no usable token, and lookups by hash do not leak token bytes through timing.

use std::sync::Arc;
use std::time::Duration;

use argon2::{Algorithm, Argon2, Params, Version};
use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use chat_core::{DeviceAddress, ErrorCode, TokenHash};
use sha2::{Digest, Sha256};

use crate::api::error::ApiError;
use crate::hashing::HashError;
use crate::state::Shared;

/// The shortest password accepted.
pub(crate) const MIN_PASSWORD_LEN: usize = 8;
/// The longest password accepted, in bytes (bounds the hashing work per request).
pub(crate) const MAX_PASSWORD_LEN: usize = 1024;

/// Builds the Argon2id hasher from the configured costs.
pub(crate) fn argon2(memory_kib: u32, iterations: u32) -> Result<Argon2<'static>, String> {
    let params = Params::new(memory_kib, iterations, 1, None).map_err(|e| e.to_string())?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Hashes a password to a PHC string on the hashing pool; `unavailable` when it is saturated.
pub(crate) async fn hash_password(shared: &Shared, password: String) -> Result<String, ApiError> {
    shared.hasher.hash(password).await.map_err(hash_error)
}

/// Verifies a password against a PHC string on the hashing pool. With `None` (unknown
/// user) it verifies against a dummy hash anyway, so response time does not reveal whether
/// a username exists; `unavailable` when the pool is saturated.
pub(crate) async fn verify_password(
    shared: &Shared,
    password: String,
    phc: Option<String>,
) -> Result<bool, ApiError> {
    let (phc, real) = match phc {
        Some(phc) => (phc, true),
        None => (shared.dummy_hash.clone(), false),
    };
    let ok = shared
        .hasher
        .verify(password, phc)
        .await
        .map_err(hash_error)?;
    Ok(ok && real)
}

fn hash_error(err: HashError) -> ApiError {
    match err {
        HashError::Busy => ApiError::unavailable(Duration::from_secs(1)),
        HashError::Failed => ApiError::new(ErrorCode::Internal, "hashing failed"),
    }
}

/// A new bearer token and its hash.
pub(crate) fn new_token() -> Result<(String, TokenHash), ApiError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|_| ApiError::new(ErrorCode::Internal, "no randomness"))?;
    let token = hex::encode(bytes);
    let hash = token_hash(&token).ok_or_else(|| ApiError::new(ErrorCode::Internal, "token"))?;
    Ok((token, hash))
}

/// The hash of a well-formed token (64 lowercase hex characters); `None` otherwise.
pub(crate) fn token_hash(token: &str) -> Option<TokenHash> {
    let mut raw = [0u8; 32];
    hex::decode_to_slice(token, &mut raw).ok()?;
    Some(TokenHash(Sha256::digest(raw).into()))
}

/// Resolves a token to its device, or `invalid_token`.
pub(crate) async fn authenticate(shared: &Shared, token: &str) -> Result<DeviceAddress, ApiError> {
    let invalid = || ApiError::new(ErrorCode::InvalidToken, "invalid or revoked token");
    let rejected = || {
        metrics::counter!("chat_token_failures_total").increment(1);
        invalid()
    };
    let hash = token_hash(token).ok_or_else(rejected)?;
    shared.store.authenticate(hash).await?.ok_or_else(rejected)
}

/// The device a request is authenticated as, from `Authorization: Bearer <token>`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Authed {
    /// The device.
    pub device: DeviceAddress,
    /// The hash of the token used (for log-out).
    pub token: TokenHash,
}

impl FromRequestParts<Arc<Shared>> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, shared: &Arc<Shared>) -> Result<Self, ApiError> {
        let token = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| ApiError::new(ErrorCode::InvalidToken, "missing bearer token"))?;
        let device = authenticate(shared, token).await?;
        let token = token_hash(token).ok_or_else(|| ApiError::new(ErrorCode::InvalidToken, ""))?;
        Ok(Self { device, token })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_hash_only_when_well_formed() {
        let (token, hash) = new_token().unwrap();
        assert_eq!(token.len(), 64);
        assert_eq!(token_hash(&token), Some(hash));
        assert_eq!(token_hash("xyz"), None);
        assert_eq!(token_hash(&token[..62]), None);
    }
}
