//! Protocol connections for load: connect from a chosen loopback source address,
//! authenticate, and split into a writer channel and a frame stream.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use chat_core::InboxPos;
use chat_core::protocol::{
    Auth, ClientFrame, Heartbeat, PROTOCOL_VERSION, SUBPROTOCOL, ServerFrame,
};
use futures::stream::SplitStream;
use futures::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::http::{Account, Result};

pub(crate) type Reader = SplitStream<WebSocketStream<TcpStream>>;

/// Loopback source addresses 127.0.0.2 to 127.0.0.254, so one machine can open more
/// connections to one server port than one source address has ephemeral ports.
pub(crate) fn source_address(i: usize) -> IpAddr {
    IpAddr::from([127, 0, 0, 2 + (i % 253) as u8])
}

/// Connects, authenticates and returns a writer channel (a task owns the sink) and the
/// reader, positioned after `welcome`. With `keepalive`, the writer sends a heartbeat
/// whenever it has sent nothing for the heartbeat interval the node's `welcome` names, so a
/// connection that a workload leaves idle (a user who sends nothing for a while at a low
/// rate) is not closed by the node (which closes one silent for a few intervals).
pub(crate) async fn connect(
    server: SocketAddr,
    source: IpAddr,
    account: &Account,
    cursor: u64,
    keepalive: bool,
) -> Result<(mpsc::Sender<Bytes>, Reader)> {
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    socket
        .bind(SocketAddr::new(source, 0))
        .map_err(|e| format!("bind {source}: {e}"))?;
    let stream = socket
        .connect(server)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    // As chat-client does: without it, a small frame written right after another (a send
    // after an ack) waits for the node's delayed ACK, tens of milliseconds (Nagle).
    stream
        .set_nodelay(true)
        .map_err(|e| format!("nodelay: {e}"))?;
    let config = WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(chat_core::limits::MAX_FRAME_BYTES));
    let mut request = format!("ws://{server}/v1/ws")
        .into_client_request()
        .map_err(|e| e.to_string())?;
    // The server refuses upgrades that do not offer the protocol's subprotocol.
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(SUBPROTOCOL),
    );
    let (ws, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(config))
        .await
        .map_err(|e| format!("websocket: {e}"))?;
    let (mut sink, mut reader) = ws.split();
    let auth = Auth {
        version: PROTOCOL_VERSION,
        token: account.token.clone(),
        cursor: InboxPos::new(cursor).map_err(|e| e.to_string())?,
    };
    sink.send(Message::Binary(Bytes::from(
        ClientFrame::from(auth).encode(),
    )))
    .await
    .map_err(|e| e.to_string())?;
    let interval = match next_frame(&mut reader).await {
        Some(ServerFrame::Welcome(w)) => Duration::from_millis(u64::from(w.heartbeat_ms.max(1))),
        other => return Err(format!("expected welcome, got {other:?}")),
    };
    let (tx, mut rx) = mpsc::channel::<Bytes>(1024);
    let beat = Bytes::from(ClientFrame::from(Heartbeat {}).encode());
    tokio::spawn(async move {
        loop {
            let next = if keepalive {
                match tokio::time::timeout(interval, rx.recv()).await {
                    Ok(next) => next,
                    Err(_) => Some(beat.clone()),
                }
            } else {
                rx.recv().await
            };
            let Some(frame) = next else { break };
            if sink.feed(Message::Binary(frame)).await.is_err() {
                return;
            }
            // Batch whatever else is queued into the same write.
            while let Ok(frame) = rx.try_recv() {
                if sink.feed(Message::Binary(frame)).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
        let _ = sink.close().await;
    });
    Ok((tx, reader))
}

/// The next server frame, or `None` when the connection ends.
pub(crate) async fn next_frame(reader: &mut Reader) -> Option<ServerFrame> {
    loop {
        match reader.next().await? {
            Ok(Message::Binary(bytes)) => return ServerFrame::decode(&bytes).ok(),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}
