//! The WebSocket gateway: the upgrade and one driver task per connection.
//!
//! Buffers are set deliberately small: an idle chat connection needs a few KiB, not the
//! WebSocket library's default of 128 KiB read and write buffers.

mod conn;
mod send;
mod sink;

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::response::{IntoResponse, Response};
use chat_core::ErrorCode;
use chat_core::limits::MAX_FRAME_BYTES;
use chat_core::protocol::SUBPROTOCOL;

use crate::api::error::ApiError;
use crate::listener::ConnSlot;
use crate::state::Shared;

/// Read buffer per connection, allocated up front; grows only while a large frame arrives.
const READ_BUFFER: usize = 1024;
/// Outgoing bytes gathered before a write to the socket.
const WRITE_BUFFER: usize = 8 * 1024;
/// The largest WebSocket message read at all. Messages between `MAX_FRAME_BYTES` and this
/// are read and answered with `frame_too_large`, keeping the connection; larger ones end it.
const MAX_MESSAGE: usize = 2 * MAX_FRAME_BYTES;

/// `GET /v1/ws`. The client must offer [`SUBPROTOCOL`] (docs/PROTOCOL.md section 1): an
/// upgrade without it is refused with `invalid_request` before any WebSocket exists, so a
/// client of another protocol version never gets frames it cannot read. The connection's
/// place in its address's connection count (`slot`) moves into the WebSocket task, so an
/// open WebSocket keeps counting against the address.
pub(crate) async fn upgrade(
    State(shared): State<Arc<Shared>>,
    slot: Option<Extension<ConnSlot>>,
    ws: WebSocketUpgrade,
) -> Response {
    if *shared.shutdown.borrow() {
        return ApiError::new(ErrorCode::ShuttingDown, "shutting down").into_response();
    }
    let ws = ws.protocols([SUBPROTOCOL]);
    if ws.selected_protocol().is_none() {
        let message = format!("offer the WebSocket subprotocol {SUBPROTOCOL}");
        return ApiError::new(ErrorCode::InvalidRequest, message).into_response();
    }
    ws.read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(MAX_MESSAGE + WRITE_BUFFER)
        .max_message_size(MAX_MESSAGE)
        .max_frame_size(MAX_MESSAGE)
        .on_upgrade(move |socket| conn::run(shared, socket, slot.map(|Extension(slot)| slot)))
}
