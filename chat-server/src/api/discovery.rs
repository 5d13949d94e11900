//! `GET /v1/discovery` (R-SCALE-2): the chat node a client should connect to, and the live
//! nodes. Public: a client asks before it has an account or a token.

use std::sync::Arc;

use axum::extract::State;
use chat_core::{ErrorCode, NodeInfo, recommend};
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ApiResult};
use super::{Json, Query};
use crate::state::{Shared, now};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DiscoveryQuery {
    region: Option<String>,
}

#[derive(Serialize)]
pub(crate) struct Discovery {
    recommended: NodeInfo,
    nodes: Vec<NodeInfo>,
}

pub(crate) async fn discover(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<DiscoveryQuery>,
) -> ApiResult<Json<Discovery>> {
    let unavailable = || ApiError::new(ErrorCode::Unavailable, "no live chat node");
    let nodes = shared.registry.live(now()).await.map_err(|err| {
        tracing::error!(cause = %err, "node registry failed");
        unavailable()
    })?;
    let region = query.region.as_deref().filter(|r| !r.is_empty());
    let recommended = recommend(&nodes, region).cloned().ok_or_else(unavailable)?;
    Ok(Json(Discovery { recommended, nodes }))
}
