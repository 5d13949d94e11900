//! The public-key directory (R-E2E-1): devices publish keys; senders claim bundles.
//!
//! The identity blob a device publishes is 128 bytes: its Ed25519 key (32), its X25519
//! identity key (32) and the Ed25519 signature binding them (64). The server checks that
//! binding and the signed prekey's signature before storing either, so a client can never
//! fetch a bundle the server would have had to vouch for blindly.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::StatusCode;
use bytes::Bytes;
use chat_core::{
    ConversationKind, DeviceAddress, DeviceId, DeviceKeys, DeviceListRecord, ErrorCode,
    OneTimePrekey, PrekeyBundle, StoreError, UserId,
};
use chat_crypto::{IdentityPublic, MAX_ONE_TIME_PREKEYS, SignedPrekey};
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ApiResult};
use super::{Json, Path};
use crate::auth::Authed;
use crate::state::Shared;

/// Length of the published identity blob (chat-crypto's layout).
pub const IDENTITY_BYTES: usize = chat_crypto::PUBLISHED_IDENTITY_BYTES;

/// The body of `PUT /v1/keys`: [`DeviceKeys`] with unknown fields refused, like every other
/// request body. The model type stays lenient because clients also read it from bundles,
/// where new fields must be ignored.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PutKeys {
    identity: String,
    signed_prekey: PutSignedPrekey,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutSignedPrekey {
    id: u32,
    public: String,
    signature: String,
}

impl PutKeys {
    fn into_keys(self) -> ApiResult<DeviceKeys> {
        let hex = |s: &str| {
            hex::decode(s)
                .map(Bytes::from)
                .map_err(|_| ApiError::new(ErrorCode::InvalidRequest, "keys are hex strings"))
        };
        Ok(DeviceKeys {
            identity: hex(&self.identity)?,
            signed_prekey: chat_core::SignedPrekey {
                id: self.signed_prekey.id,
                public: hex(&self.signed_prekey.public)?,
                signature: hex(&self.signed_prekey.signature)?,
            },
        })
    }
}

pub(crate) async fn put_keys(
    State(shared): State<Arc<Shared>>,
    authed: Authed,
    Json(req): Json<PutKeys>,
) -> ApiResult<StatusCode> {
    let keys = req.into_keys()?;
    verify_keys(&keys)?;
    shared.store.set_device_keys(authed.device, &keys).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Checks the identity binding and the signed prekey's signature (strict Ed25519).
fn verify_keys(keys: &DeviceKeys) -> ApiResult<()> {
    let bad = |m: &str| ApiError::new(ErrorCode::InvalidRequest, m);
    let (public, binding) = IdentityPublic::from_published(&keys.identity)
        .map_err(|_| bad("identity must be 128 bytes"))?;
    public
        .verify_binding(&binding)
        .map_err(|_| bad("identity signature does not verify"))?;
    let spk = &keys.signed_prekey;
    let signed = SignedPrekey {
        id: spk.id,
        key: spk
            .public
            .as_ref()
            .try_into()
            .map_err(|_| bad("prekeys are 32 bytes"))?,
        signature: spk
            .signature
            .as_ref()
            .try_into()
            .map_err(|_| bad("signatures are 64 bytes"))?,
    };
    signed
        .verify(&public)
        .map_err(|_| bad("signed prekey signature does not verify"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OneTimeKeys {
    keys: Vec<StrictOneTimePrekey>,
}

/// A [`OneTimePrekey`] in an upload, unknown fields refused.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StrictOneTimePrekey {
    id: u32,
    public: String,
}

#[derive(Serialize)]
pub(crate) struct Count {
    count: u64,
}

pub(crate) async fn add_one_time(
    State(shared): State<Arc<Shared>>,
    authed: Authed,
    Json(req): Json<OneTimeKeys>,
) -> ApiResult<Json<Count>> {
    if req.keys.len() > MAX_ONE_TIME_PREKEYS {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "at most 1000 keys per upload",
        ));
    }
    let keys = req
        .keys
        .into_iter()
        .map(|k| match hex::decode(&k.public) {
            Ok(public) if public.len() == 32 => Ok(OneTimePrekey {
                id: k.id,
                public: Bytes::from(public),
            }),
            _ => Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "prekeys are 32 bytes in hex",
            )),
        })
        .collect::<ApiResult<Vec<_>>>()?;
    shared
        .store
        .add_one_time_prekeys(authed.device, &keys)
        .await?;
    let count = shared.store.one_time_prekey_count(authed.device).await?;
    Ok(Json(Count { count }))
}

pub(crate) async fn count(
    State(shared): State<Arc<Shared>>,
    authed: Authed,
) -> ApiResult<Json<Count>> {
    let count = shared.store.one_time_prekey_count(authed.device).await?;
    Ok(Json(Count { count }))
}

#[derive(Serialize)]
pub(crate) struct Bundles {
    bundles: Vec<PrekeyBundle>,
}

pub(crate) async fn bundles(
    State(shared): State<Arc<Shared>>,
    authed: Authed,
    Path(user): Path<UserId>,
) -> ApiResult<Json<Bundles>> {
    shared
        .limits
        .bundles
        .check(&(authed.device.user, user), Instant::now())
        .await
        .map_err(ApiError::rate_limited)?;
    let missing = || ApiError::new(ErrorCode::NotFound, "no such user");
    if shared.store.user(user).await?.is_none() {
        return Err(missing());
    }
    // A user who blocks the caller looks like one who does not exist (R-ACC-4).
    super::people::unless_blocked_by(&shared, user, authed.device.user, missing).await?;
    // The per-target budget: past it nobody gets one-time prekeys for a while, so a group of
    // accounts cannot empty the pool; sessions then start from the signed prekey alone.
    let claim = shared
        .limits
        .prekey_claims
        .check(&user, Instant::now())
        .await;
    let bundles = match claim {
        Ok(()) => {
            let bundles = shared.store.claim_bundles(user).await?;
            let empty = bundles
                .iter()
                .filter(|b| b.one_time_prekey.is_none())
                .count();
            if empty > 0 {
                metrics::counter!("chat_prekey_pool_drained_total").increment(empty as u64);
                tracing::info!(user = %user, devices = empty, "one-time prekey pool empty");
            }
            bundles
        }
        Err(_) => {
            metrics::counter!("chat_prekey_fallback_total").increment(1);
            tracing::info!(user = %user, "one-time prekey budget spent; signed prekeys only");
            shared.store.fallback_bundles(user).await?
        }
    };
    Ok(Json(Bundles { bundles }))
}

/// The identity blob for `public` and its binding signature, as `PUT /v1/keys` expects it.
pub fn identity_blob(public: &IdentityPublic, binding: &[u8; 64]) -> Bytes {
    Bytes::copy_from_slice(&public.published_with(binding))
}

/// The most bytes of a sealed link payload: the account seed, a full device list and the
/// AEAD overhead fit with room to spare.
pub(crate) const MAX_LINK_PAYLOAD_BYTES: usize = 4096;

/// A signed device list as `GET /v1/users/{id}/device-list` returns it.
#[derive(Serialize)]
pub(crate) struct DeviceListView {
    version: u64,
    /// The encoded, signed list (hex).
    list: String,
}

pub(crate) async fn device_list(
    State(shared): State<Arc<Shared>>,
    authed: Authed,
    Path(user): Path<UserId>,
) -> ApiResult<Json<DeviceListView>> {
    let missing = || ApiError::new(ErrorCode::NotFound, "no device list");
    // A user who blocks the caller looks like one who does not exist, except to a fellow
    // member of a group: there the caller sees the user anyway, and needs the account key
    // to verify the group's signed changes (issue 17).
    if shared.store.is_blocked(user, authed.device.user).await?
        && !share_a_group(&shared, user, authed.device.user).await?
    {
        return Err(missing());
    }
    let record = shared.store.device_list(user).await?.ok_or_else(missing)?;
    Ok(Json(DeviceListView {
        version: record.version,
        list: hex::encode(&record.list),
    }))
}

/// Whether `a` and `b` are both members of some group.
async fn share_a_group(shared: &Shared, a: UserId, b: UserId) -> ApiResult<bool> {
    for conversation in shared.store.conversations_of(a).await? {
        if conversation.kind == ConversationKind::Group
            && shared.store.is_member(conversation.id, b).await?
        {
            return Ok(true);
        }
    }
    Ok(false)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PutDeviceList {
    list: String,
}

/// Publishes the caller's signed device list. The server checks what it can, so that an
/// honest server never relays a list its clients would refuse: the signature under the
/// account key the list names, that the list is the caller's, that every device it names is
/// one of the caller's with those published keys, and that its version is higher than the
/// stored one (409 otherwise). The listed devices become the ones messages fan out to.
pub(crate) async fn put_device_list(
    State(shared): State<Arc<Shared>>,
    authed: Authed,
    Json(req): Json<PutDeviceList>,
) -> ApiResult<StatusCode> {
    let bad = |m: &str| ApiError::new(ErrorCode::InvalidRequest, m);
    let bytes = hex::decode(&req.list).map_err(|_| bad("the list is a hex string"))?;
    let list = chat_crypto::SignedDeviceList::decode(&bytes)
        .map_err(|e| bad(&format!("device list refused: {e}")))?;
    let user = authed.device.user;
    if list.user() != user {
        return Err(bad("the list is another user's"));
    }
    let published = shared.store.fallback_bundles(user).await?;
    for (device, identity) in list.devices() {
        let keys = published.iter().find(|b| b.device.device == *device);
        let matches = keys.is_some_and(|b| {
            IdentityPublic::from_published(&b.identity).is_ok_and(|(id, _)| id == *identity)
        });
        if !matches {
            return Err(bad(&format!(
                "device {device} is not the caller's with the listed identity"
            )));
        }
    }
    let linked: Vec<DeviceId> = list.devices().iter().map(|(d, _)| *d).collect();
    let record = DeviceListRecord {
        version: list.version(),
        list: Bytes::from(bytes),
    };
    shared
        .store
        .set_device_list(user, &record, &linked)
        .await
        .map_err(|e| match e {
            StoreError::Conflict => ApiError::new(
                ErrorCode::Conflict,
                "a list of this version or a later one is published",
            ),
            other => other.into(),
        })?;
    tracing::info!(user = %user, version = list.version(), devices = linked.len(), "device list published");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LinkPayload {
    /// The sealed payload (hex): opaque to the server.
    sealed: String,
}

/// Leaves a sealed link payload for another device of the caller (the device being linked
/// fetches it with `GET /v1/link`).
pub(crate) async fn put_link(
    State(shared): State<Arc<Shared>>,
    authed: Authed,
    Path(device): Path<DeviceId>,
    Json(req): Json<LinkPayload>,
) -> ApiResult<StatusCode> {
    let sealed = hex::decode(&req.sealed)
        .ok()
        .filter(|s| s.len() <= MAX_LINK_PAYLOAD_BYTES)
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidRequest,
                "the payload is hex, at most 4096 bytes",
            )
        })?;
    let address = DeviceAddress {
        user: authed.device.user,
        device,
    };
    shared
        .store
        .set_link_payload(address, Bytes::from(sealed))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The sealed link payload left for the calling device.
pub(crate) async fn get_link(
    State(shared): State<Arc<Shared>>,
    authed: Authed,
) -> ApiResult<Json<LinkPayload>> {
    let sealed = shared
        .store
        .link_payload(authed.device)
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "no link payload yet"))?;
    Ok(Json(LinkPayload {
        sealed: hex::encode(&sealed),
    }))
}
