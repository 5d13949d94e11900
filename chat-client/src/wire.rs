//! The JSON bodies the client reads from the server's HTTP API (docs/PROTOCOL.md), in one
//! place: each type names the route that answers with it. Only the fields the client uses
//! are read; the server may add others (old clients keep working). Binary values are hex
//! strings, decoded where they are used. Request bodies are built
//! where they are sent; error bodies are read by `http.rs`.

use chat_core::{
    ClientKey, DeviceAddress, DeviceId, GroupSettings, MessageId, PrekeyBundle, ReceiptPosition,
    Role, Timestamp, UserId,
};
use serde::Deserialize;

/// `POST /v1/login` (also after `POST /v1/register`).
#[derive(Deserialize)]
pub(crate) struct Login {
    pub(crate) token: String,
    pub(crate) user_id: UserId,
    pub(crate) device_id: DeviceId,
}

/// One user: `GET /v1/users/by-name/{name}`, and each entry of [`Blocks`].
#[derive(Deserialize)]
pub(crate) struct User {
    pub(crate) user_id: UserId,
}

/// `GET /v1/conversations/{id}/members`: the members; for a group also their roles, its
/// name and its settings.
#[derive(Deserialize)]
pub(crate) struct Members {
    pub(crate) members: Vec<UserId>,
    #[serde(default)]
    pub(crate) roles: Option<Vec<MemberRole>>,
    #[serde(default)]
    pub(crate) name: Option<String>,
    #[serde(default)]
    pub(crate) settings: Option<GroupSettings>,
}

/// One member's role in [`Members`].
#[derive(Deserialize)]
pub(crate) struct MemberRole {
    pub(crate) user_id: UserId,
    pub(crate) role: Role,
}

/// `GET /v1/conversations/{id}/devices`: every member device.
#[derive(Deserialize)]
pub(crate) struct Devices {
    pub(crate) devices: Vec<DeviceAddress>,
}

/// `GET /v1/conversations/{id}/receipts`: each member's receipt positions.
#[derive(Deserialize)]
pub(crate) struct Receipts {
    pub(crate) receipts: Vec<ReceiptPosition>,
}

/// `GET /v1/conversations/{id}/changes`: a page of a group's signed changes.
#[derive(Deserialize)]
pub(crate) struct Changes {
    pub(crate) changes: Vec<Change>,
}

/// One signed group change in [`Changes`], hex.
#[derive(Deserialize)]
pub(crate) struct Change {
    pub(crate) change: String,
}

/// `GET /v1/conversations/{id}/messages`: a page of history.
#[derive(Deserialize)]
pub(crate) struct History {
    pub(crate) messages: Vec<HistoryMessage>,
}

/// One stored message in [`History`]; `body` is its shared body (hex): per-device headers
/// reach a device only through its inbox.
#[derive(Deserialize)]
pub(crate) struct HistoryMessage {
    pub(crate) id: MessageId,
    pub(crate) sender: DeviceAddress,
    pub(crate) client_key: ClientKey,
    pub(crate) sent_at: Timestamp,
    pub(crate) body: String,
}

/// `GET /v1/keys/count`: the one-time prekeys the server still holds for this device.
#[derive(Deserialize)]
pub(crate) struct Count {
    pub(crate) count: u64,
}

/// `GET /v1/users/{id}/bundles`: one prekey bundle per device of a user.
#[derive(Deserialize)]
pub(crate) struct Bundles {
    pub(crate) bundles: Vec<PrekeyBundle>,
}

/// `GET /v1/users/{id}/device-list`: the user's signed device list, hex.
#[derive(Deserialize)]
pub(crate) struct DeviceList {
    pub(crate) list: String,
}

/// `GET /v1/link`: the account identity a linked device sealed for this one, hex.
#[derive(Deserialize)]
pub(crate) struct Link {
    pub(crate) sealed: String,
}

/// `GET /v1/blocks`: the users this user blocks.
#[derive(Deserialize)]
pub(crate) struct Blocks {
    pub(crate) blocks: Vec<User>,
}

/// `POST /v1/attachments`: the stored blob's ID.
#[derive(Deserialize)]
pub(crate) struct Uploaded {
    pub(crate) id: chat_core::AttachmentId,
}

/// `GET /v1/discovery`: the node to use and every node of the cluster.
#[derive(Deserialize)]
pub(crate) struct Discovery {
    pub(crate) recommended: Node,
    #[serde(default)]
    pub(crate) nodes: Vec<Node>,
}

/// One node in [`Discovery`].
#[derive(Deserialize)]
pub(crate) struct Node {
    pub(crate) url: String,
}
