//! The relay over WebSocket: a bare axum `GET /v1/ws?access_token=<user id>` with the
//! `daehwa.v1.proto` subprotocol, one protobuf `ClientEvent` / `ServerEvent` per binary
//! frame, on the same stack as the gateway's `/v1/ws` (axum 0.8, hyper HTTP/1.1,
//! tungstenite) but with nothing behind it except the shared [`Relay`]. No pings, no idle
//! timeout: a ceiling does no more than relay.

use std::time::Duration;

use axum::{
    Router,
    extract::{
        Query, State,
        ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade},
    },
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
    serve::ListenerExt,
};
use daehwa::v1::{ClientEvent, ServerEvent};
use futures::SinkExt;
use prost::Message as _;

use super::{MAX_FRAME, Relay};
use crate::session::WS_SUBPROTOCOL;

/// Read and write buffer of each relay WebSocket. Buffers dominate an idle WebSocket
/// session's memory, which scenario (c) measures: with tungstenite's defaults (128 KiB
/// write buffer, 128 KiB read buffer) a session costs ~136 KiB, with 4 KiB ones ~8.8 KiB.
/// The gateway uses 4 KiB too, so the ceiling is measured with the same setting. Larger
/// frames still work (the read buffer grows for them; writes flush once 4 KiB are queued).
const BUFFER: usize = 4 * 1024;
/// Close code: the session's outbox overflowed (the client reads too slowly), as the
/// gateway's.
const TRY_AGAIN_LATER: u16 = 1013;
/// Close code: a frame that is not a `ClientEvent`.
const INVALID_PAYLOAD: u16 = 1007;
/// Close code: a text frame on the binary subprotocol.
const UNSUPPORTED: u16 = 1003;

/// Serves the WebSocket relay on `listener` (TCP_NODELAY) until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, relay: Relay) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/v1/ws", get(upgrade))
        .with_state(relay);
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await?;
    Ok(())
}

/// Query parameters of the relay's `/v1/ws`.
#[derive(Debug, serde::Deserialize)]
struct WsQuery {
    /// The user id (the relay's whole notion of a token).
    access_token: Option<String>,
}

async fn upgrade(
    State(relay): State<Relay>,
    Query(query): Query<WsQuery>,
    ws: WebSocketUpgrade,
) -> Response {
    let Some(me) = query
        .access_token
        .and_then(|t| t.trim().parse::<u64>().ok())
    else {
        return (
            StatusCode::UNAUTHORIZED,
            "relay: /v1/ws?access_token=<user id>",
        )
            .into_response();
    };
    ws.protocols([WS_SUBPROTOCOL])
        .read_buffer_size(BUFFER)
        .write_buffer_size(BUFFER)
        .max_message_size(MAX_FRAME)
        .max_frame_size(MAX_FRAME)
        .on_upgrade(move |socket| run(socket, relay, me))
}

/// One connection: the session's outbox into binary frames (flushed once the outbox is
/// empty), binary frames into the shared relay, until either side ends.
async fn run(mut socket: WebSocket, relay: Relay, me: u64) {
    let (session, mut outbox) = relay.attach(me);
    loop {
        tokio::select! {
            () = session.kill.notified() => {
                return close(&mut socket, TRY_AGAIN_LATER, "relay: outbox full").await;
            }
            event = outbox.recv() => {
                // The session holds a sender of its own outbox, so it never ends here.
                let Some(event) = event else { return };
                if socket.feed(binary(&event)).await.is_err() {
                    return;
                }
                while let Ok(event) = outbox.try_recv() {
                    if socket.feed(binary(&event)).await.is_err() {
                        return;
                    }
                }
                if socket.flush().await.is_err() {
                    return;
                }
            }
            frame = socket.recv() => match frame {
                Some(Ok(Message::Binary(bytes))) => match ClientEvent::decode(bytes.as_ref()) {
                    Ok(event) => {
                        if !session.handle(event) {
                            return;
                        }
                    }
                    Err(_) => {
                        return close(&mut socket, INVALID_PAYLOAD, "relay: not a ClientEvent").await;
                    }
                },
                // tungstenite answers pings itself.
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Text(_))) => {
                    return close(&mut socket, UNSUPPORTED, "relay: binary frames only").await;
                }
                Some(Ok(Message::Close(_)) | Err(_)) | None => return,
            },
        }
    }
}

fn binary(event: &ServerEvent) -> Message {
    Message::Binary(event.encode_to_vec().into())
}

/// Sends a close frame, waiting at most a second (the peer may not be reading).
async fn close(socket: &mut WebSocket, code: u16, reason: &'static str) {
    let frame = Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }));
    let _ = tokio::time::timeout(Duration::from_secs(1), socket.send(frame)).await;
}
