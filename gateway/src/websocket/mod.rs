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
#[cfg(test)]
mod tests;

use std::{sync::Arc, time::Duration};

use axum::{
    extract::{
        Query, State,
        ws::{Message, WebSocket, WebSocketUpgrade},
    },
    response::Response,
};
use daehwa::v1::ClientEvent;
use futures::{
    FutureExt, SinkExt, StreamExt,
    stream::{SplitSink, SplitStream},
};
use tokio::time::{Instant, timeout};
use tonic::Status;

use crate::{GatewayConfig, LiveSession, SessionPort, SharedEvent};
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
/// Most frames written per flush: the first (an event or our ping) plus the events already
/// queued behind it.
const MAX_BATCH: usize = 32;

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
        .on_upgrade(move |socket| {
            let codec = Codec::for_subprotocol(socket.protocol().and_then(|p| p.to_str().ok()));
            let (sink, frames) = socket.split();
            run(sink, frames, codec, state, token)
        })
}

type Sink = SplitSink<WebSocket, Message>;
type Frames = SplitStream<WebSocket>;

/// The close frame a session's socket ends with.
struct Closing {
    code: u16,
    reason: String,
}

impl Closing {
    fn new(code: u16, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
        }
    }

    /// The close frame for a session that ended with `status`.
    fn for_status(status: &Status) -> Self {
        Self::new(close::code_for(status), status.message())
    }
}

/// Sends a close frame, waiting at most a second (the peer may not be reading).
async fn close_with(sink: &mut Sink, code: u16, reason: &str) {
    tracing::debug!(code, reason, "closing websocket");
    let _ = timeout(
        Duration::from_secs(1),
        sink.send(close::frame(code, reason)),
    )
    .await;
}

/// One WebSocket session: authenticate, open the live session, relay until either side ends.
///
/// An idle session is one task parked in [`relay`], so the size of that state machine is
/// memory per connection: authentication and closing run in boxed futures of their own,
/// which exist only while they run.
async fn run(
    mut sink: Sink,
    mut frames: Frames,
    codec: Codec,
    state: WsState,
    token: Option<String>,
) {
    let opened = Box::pin(open_session(&mut frames, &state, token)).await;
    let closing = match opened {
        Ok(session) => relay(&mut sink, &mut frames, codec, session, &state).await,
        Err(closing) => Some(closing),
    };
    if let Some(Closing { code, reason }) = closing {
        Box::pin(close_with(&mut sink, code, &reason)).await;
    }
}

/// Authenticates (token from the URL or header, else the first text frame) and opens the
/// live session.
async fn open_session(
    frames: &mut Frames,
    state: &WsState,
    token: Option<String>,
) -> Result<LiveSession, Closing> {
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
                return Err(Closing::new(close::POLICY, reason));
            }
        },
    };
    state
        .port
        .open(&token)
        .await
        .map_err(|status| Closing::for_status(&status))
}

/// What the relay does next. Each wake-up is turned into one of these synchronously, so
/// no event (a `ServerEvent` is several hundred bytes) is held across an await: the parked
/// state machine stays small.
enum Step {
    /// Send this frame to the client (an event, or our ping).
    Send(Message),
    /// Hand this event to the session.
    Forward(Box<ClientEvent>),
    /// Nothing to do (a ping or pong from the peer).
    Nothing,
    /// Stop, with this close frame (none when the peer is gone).
    End(Option<Closing>),
}

/// Relays events both ways until the session or the socket ends; returns the close frame to
/// send, if any.
async fn relay(
    sink: &mut Sink,
    frames: &mut Frames,
    codec: Codec,
    session: LiveSession,
    state: &WsState,
) -> Option<Closing> {
    let LiveSession {
        mut events,
        client_events,
    } = session;
    let mut ping =
        tokio::time::interval_at(Instant::now() + state.ping_interval, state.ping_interval);
    let mut last_heard = Instant::now();
    loop {
        let step = tokio::select! {
            event = events.next() => outgoing(codec, event),
            frame = frames.next() => {
                last_heard = Instant::now();
                incoming(codec, frame, state.max_frame_bytes)
            }
            _ = ping.tick() => if last_heard.elapsed() >= state.idle_timeout {
                Step::End(Some(Closing::new(close::POLICY, "no frames or pongs within the idle timeout")))
            } else {
                Step::Send(Message::Ping(Default::default()))
            },
        };
        match step {
            Step::Send(frame) => {
                // A reader that stops reading stalls this send; the session's outbox then
                // fills and the session ends as too slow (1013). A peer that never reads
                // again is dropped after the idle timeout.
                match timeout(
                    state.idle_timeout,
                    send_batch(sink, frame, &mut events, codec),
                )
                .await
                {
                    Ok(Ok(None)) => {}
                    Ok(Ok(Some(closing))) => return Some(closing),
                    Ok(Err(_)) | Err(_) => return None,
                }
            }
            Step::Forward(event) => {
                // Refused only once the session has ended: its close status is next on
                // `events`, and the client gets it as the close frame.
                let _ = client_events.send(event).await;
            }
            Step::Nothing => {}
            Step::End(closing) => return closing,
        }
    }
}

/// Writes `first` and the events already queued behind it (at most [`MAX_BATCH`] frames), then
/// flushes once: under load several events leave in one write instead of one write each.
/// Returns the close frame when the session ended while draining its queue.
async fn send_batch<S, E>(
    sink: &mut S,
    first: Message,
    events: &mut E,
    codec: Codec,
) -> Result<Option<Closing>, S::Error>
where
    S: futures::Sink<Message> + Unpin,
    E: futures::Stream<Item = Result<Arc<SharedEvent>, Status>> + Unpin,
{
    sink.feed(first).await?;
    let mut ended = None;
    for _ in 1..MAX_BATCH {
        // Polled without waiting; the next `select!` polls `events` again with the task's
        // own waker.
        let Some(event) = events.next().now_or_never() else {
            break;
        };
        match outgoing(codec, event) {
            Step::Send(frame) => sink.feed(frame).await?,
            Step::End(closing) => {
                ended = closing;
                break;
            }
            // `outgoing` makes neither.
            Step::Forward(_) | Step::Nothing => {}
        }
    }
    sink.flush().await?;
    Ok(ended)
}

/// A server event (or the session's end) as the step that sends it.
fn outgoing(codec: Codec, event: Option<Result<Arc<SharedEvent>, Status>>) -> Step {
    match event {
        Some(Ok(event)) => Step::Send(codec.encode(&event)),
        Some(Err(status)) => Step::End(Some(Closing::for_status(&status))),
        None => Step::End(Some(Closing::new(close::NORMAL, "session ended"))),
    }
}

/// A frame from the client as the step that handles it: decoded and checked, or the close
/// it earns.
fn incoming(
    codec: Codec,
    frame: Option<Result<Message, axum::Error>>,
    max_frame_bytes: usize,
) -> Step {
    let frame = match frame {
        None | Some(Err(_)) => return Step::End(None), // the peer is gone (or broke the protocol)
        Some(Ok(frame)) => frame,
    };
    let size = match &frame {
        Message::Text(t) => t.len(),
        Message::Binary(b) => b.len(),
        Message::Close(_) => return Step::End(None),
        Message::Ping(_) | Message::Pong(_) => return Step::Nothing,
    };
    if size > max_frame_bytes {
        let reason = format!("frame of {size} bytes; the limit is {max_frame_bytes}");
        return Step::End(Some(Closing::new(close::TOO_BIG, reason)));
    }
    match codec.decode(&frame) {
        Ok(event) => Step::Forward(Box::new(event)),
        Err(DecodeError::Invalid(reason)) => {
            Step::End(Some(Closing::new(close::INVALID_PAYLOAD, reason)))
        }
        Err(DecodeError::WrongFrameType) => {
            let reason = match codec {
                Codec::Proto => "daehwa.v1.proto carries binary frames",
                Codec::Json => "daehwa.v1.json carries text frames",
            };
            Step::End(Some(Closing::new(close::UNSUPPORTED, reason)))
        }
    }
}
