//! `GET /v1/ws`: a live session over a WebSocket, carrying the same `ClientEvent` and
//! `ServerEvent` messages as `ChatService.Connect`.
//!
//! - Subprotocols: `daehwa.v1.proto` (binary frames, the default) and `daehwa.v1.json`
//!   (text frames, protobuf-JSON); see [`codec`].
//! - Authentication before any event: the access token comes from the `access_token` query
//!   parameter (browsers cannot set headers on a WebSocket), an `Authorization: Bearer`
//!   header, or else the first text frame, which must be the token itself.
//! - Keep-alive: the server pings every `ping_interval`; a connection silent for
//!   `idle_timeout` is closed.
//! - Bounded: events wait in the session's bounded outbox; a reader too slow to drain it is
//!   closed with 1013 and catches up by sync. Frames above `max_frame_bytes` close with 1009.
//!   Close codes: [`close`].

pub mod close;
pub mod codec;

use std::{sync::Arc, time::Duration};

use axum::{
    extract::{
        Query, State,
        ws::{Message, WebSocket, WebSocketUpgrade},
    },
    response::Response,
};
use futures::{SinkExt, StreamExt, stream::SplitSink};
use tokio::time::{Instant, timeout};

use crate::{GatewayConfig, LiveSession, SessionPort};
use codec::{Codec, DecodeError, JSON_SUBPROTOCOL, PROTO_SUBPROTOCOL};

/// What the WebSocket handler needs.
#[derive(Clone)]
pub struct WsState {
    port: Arc<dyn SessionPort>,
    max_frame_bytes: usize,
    ping_interval: Duration,
    idle_timeout: Duration,
}

impl WsState {
    /// Handler state opening sessions through `port`.
    pub fn new(port: Arc<dyn SessionPort>, config: &GatewayConfig) -> Self {
        Self {
            port,
            max_frame_bytes: config.max_frame_bytes,
            ping_interval: config.ping_interval,
            idle_timeout: config.idle_timeout,
        }
    }
}

/// Query parameters of `/v1/ws`.
#[derive(Debug, serde::Deserialize)]
pub struct WsQuery {
    /// The access token, for clients that cannot set headers (browsers).
    pub access_token: Option<String>,
}

/// Initial read buffer of each WebSocket connection: it grows for a larger frame, and an idle
/// session keeps only this much (a chat frame is a few hundred bytes).
const READ_BUFFER: usize = 1024;
/// Queued outgoing bytes that trigger a flush.
const SOCKET_BUFFER: usize = 4 * 1024;

/// Upgrades the connection and runs the session.
pub async fn upgrade(
    State(state): State<WsState>,
    Query(query): Query<WsQuery>,
    headers: http::HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let header_token = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let token = query.access_token.or(header_token);
    // Frames a little above the limit are read and refused with 1009 by the session;
    // far larger ones are cut off by the WebSocket layer itself.
    let hard_limit = state.max_frame_bytes + 64 * 1024;
    ws.protocols([PROTO_SUBPROTOCOL, JSON_SUBPROTOCOL])
        // Per-connection buffers dominate an idle session's memory: tungstenite's 128 KiB
        // defaults cost ~136 KiB per socket; a 1 KiB read buffer costs 3 KiB less than a 4 KiB one.
        // Larger frames still work (the read buffer grows for them); writes are flushed once
        // 4 KiB are queued.
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(SOCKET_BUFFER)
        .max_write_buffer_size(hard_limit + SOCKET_BUFFER)
        .max_message_size(hard_limit)
        .max_frame_size(hard_limit)
        .on_upgrade(move |socket| run(socket, state, token))
}

type Sink = SplitSink<WebSocket, Message>;

/// Sends a close frame, waiting at most a second (the peer may not be reading).
async fn close_with(sink: &mut Sink, code: u16, reason: &str) {
    tracing::debug!(code, reason, "closing websocket");
    let _ = timeout(
        Duration::from_secs(1),
        sink.send(close::frame(code, reason)),
    )
    .await;
}

async fn run(socket: WebSocket, state: WsState, token: Option<String>) {
    let codec = Codec::for_subprotocol(socket.protocol().and_then(|p| p.to_str().ok()));
    let (mut sink, mut frames) = socket.split();
    let token = match token {
        Some(token) => token,
        None => match timeout(state.idle_timeout, frames.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => text
                .as_str()
                .trim()
                .trim_start_matches("Bearer ")
                .to_owned(),
            _ => {
                let reason = "authenticate first: access_token query parameter, Authorization header, or the token as the first text frame";
                return close_with(&mut sink, close::POLICY, reason).await;
            }
        },
    };
    let LiveSession {
        mut events,
        client_events,
    } = match state.port.open(&token).await {
        Ok(session) => session,
        Err(status) => {
            return close_with(&mut sink, close::code_for(&status), status.message()).await;
        }
    };
    let mut ping =
        tokio::time::interval_at(Instant::now() + state.ping_interval, state.ping_interval);
    let mut last_heard = Instant::now();
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(event)) => {
                    // A reader that stops reading stalls this send; the session's outbox then
                    // fills and the session ends as too slow (1013 below). A peer that never
                    // reads again is dropped after the idle timeout.
                    match timeout(state.idle_timeout, sink.send(codec.encode(&event))).await {
                        Ok(Ok(())) => {}
                        _ => return,
                    }
                }
                Some(Err(status)) => return close_with(&mut sink, close::code_for(&status), status.message()).await,
                None => return close_with(&mut sink, close::NORMAL, "session ended").await,
            },
            frame = frames.next() => {
                let frame = match frame {
                    None | Some(Err(_)) => return, // the peer is gone (or broke the protocol)
                    Some(Ok(frame)) => frame,
                };
                last_heard = Instant::now();
                let size = match &frame {
                    Message::Text(t) => t.len(),
                    Message::Binary(b) => b.len(),
                    Message::Close(_) => return,
                    Message::Ping(_) | Message::Pong(_) => continue,
                };
                if size > state.max_frame_bytes {
                    let reason = format!("frame of {size} bytes; the limit is {}", state.max_frame_bytes);
                    return close_with(&mut sink, close::TOO_BIG, &reason).await;
                }
                match codec.decode(&frame) {
                    Ok(event) => {
                        if client_events.send(Box::new(event)).await.is_err() {
                            return; // the session ended; its status arrives on `events`
                        }
                    }
                    Err(DecodeError::Invalid(reason)) => return close_with(&mut sink, close::INVALID_PAYLOAD, &reason).await,
                    Err(DecodeError::WrongFrameType) => {
                        let reason = match codec {
                            Codec::Proto => "daehwa.v1.proto carries binary frames",
                            Codec::Json => "daehwa.v1.json carries text frames",
                        };
                        return close_with(&mut sink, close::UNSUPPORTED, reason).await;
                    }
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() >= state.idle_timeout {
                    return close_with(&mut sink, close::POLICY, "no frames or pongs within the idle timeout").await;
                }
                if sink.send(Message::Ping(Default::default())).await.is_err() {
                    return;
                }
            }
        }
    }
}
