//! One live session as the load generator sees it, over either transport, so that every
//! scenario drives gRPC and WebSocket sessions with the same code.
//!
//! - gRPC: a `ChatService/Connect` bidi stream on its own HTTP/2 connection.
//! - WebSocket: `GET <ws url>?access_token=TOKEN` with the `daehwa.v1.proto` subprotocol on
//!   its own TCP connection; one binary frame carries one protobuf `ClientEvent` (out) or
//!   `ServerEvent` (in).
//!
//! Either way a [`Session`] is a bounded queue of client events (`tx`; for a WebSocket a
//! writer task drains it into frames) and an [`Inbound`] to read server events from, past
//! the first `ready` event. Dropping `tx` ends the session from the client side: gRPC
//! half-closes the request stream, WebSocket sends a close frame.

use std::{fmt, time::Duration};

use anyhow::Context;
use daehwa::v1::{ClientEvent, ServerEvent, server_event::Event};
use futures::{
    SinkExt, StreamExt,
    stream::{SplitSink, SplitStream},
};
use prost::Message as _;
use tokio::{net::TcpStream, sync::mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{
        Message,
        client::IntoClientRequest,
        http::HeaderValue,
        protocol::{WebSocketConfig, frame::coding::CloseCode},
    },
};
use tonic::{Streaming, transport::Channel};

use crate::load::{self, Identity};

/// How long a new session may take to deliver `ready`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a TCP connect plus handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Client events queued per session before a sender waits.
const CLIENT_QUEUE: usize = 1024;
/// The WebSocket subprotocol of protobuf binary frames (the gateway's default).
pub const WS_SUBPROTOCOL: &str = "daehwa.v1.proto";
/// Read and write buffer of each client WebSocket. Not measured (only the server's memory
/// is), but tungstenite's 128 KiB defaults would cost the load generator ~2 GiB for 15,000
/// idle sessions; 4 KiB is what the servers use.
const WS_BUFFER: usize = 4 * 1024;

/// How sessions reach the server: the `--transport` of a scenario.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// `ChatService/Connect` over HTTP/2.
    #[default]
    Grpc,
    /// The gateway's `/v1/ws` (binary protobuf frames).
    Ws,
}

impl Transport {
    /// Its name in reports, JSON and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Grpc => "grpc",
            Transport::Ws => "ws",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where sessions connect: a transport and its URL (`http://host:port` for gRPC,
/// `ws://host:port/v1/ws` for WebSocket). Cloned into every task that opens sessions.
#[derive(Debug, Clone)]
pub struct Dial {
    /// The transport.
    pub transport: Transport,
    /// The server's URL for that transport.
    pub url: String,
}

/// One live session, past its `ready` event.
pub struct Session {
    /// Client events to send (bounded).
    pub tx: mpsc::Sender<ClientEvent>,
    /// Server events after `ready`.
    pub rx: Inbound,
}

/// The WebSocket client stream type.
type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The receiving half of a session: what differs between the transports on the way in.
pub enum Inbound {
    /// A Connect response stream (boxed: it is ~30 times the size of the other variant).
    Grpc(Box<Streaming<ServerEvent>>),
    /// The reading half of a WebSocket.
    Ws(SplitStream<Ws>),
}

/// Why a session's inbound side failed: a gRPC status, a WebSocket error or an unexpected
/// close or frame. Only ever shown, so a message is all it holds.
#[derive(Debug)]
pub struct InboundError(String);

impl fmt::Display for InboundError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InboundError {}

impl Inbound {
    /// The next server event; `Ok(None)` when the server ended the session normally (gRPC
    /// OK trailers, WebSocket close 1000 or a close without a code).
    pub async fn message(&mut self) -> Result<Option<ServerEvent>, InboundError> {
        match self {
            Inbound::Grpc(stream) => stream
                .message()
                .await
                .map_err(|status| InboundError(status.to_string())),
            Inbound::Ws(stream) => loop {
                let frame = match stream.next().await {
                    None => return Ok(None),
                    Some(Err(e)) => return Err(InboundError(format!("websocket: {e}"))),
                    Some(Ok(frame)) => frame,
                };
                match frame {
                    Message::Binary(bytes) => {
                        return ServerEvent::decode(bytes.as_ref())
                            .map(Some)
                            .map_err(|e| InboundError(format!("not a chat.v1.ServerEvent: {e}")));
                    }
                    // tungstenite queues the pong itself and sends it on the next read.
                    Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                    Message::Text(_) => {
                        return Err(InboundError("text frame on daehwa.v1.proto".into()));
                    }
                    Message::Close(None) => return Ok(None),
                    Message::Close(Some(close)) if close.code == CloseCode::Normal => {
                        return Ok(None);
                    }
                    Message::Close(Some(close)) => {
                        return Err(InboundError(format!(
                            "websocket closed with {} {}",
                            u16::from(close.code),
                            close.reason
                        )));
                    }
                }
            },
        }
    }
}

/// Opens a session for `identity` on a new connection of its own (as one device would)
/// and waits for `ready`.
pub async fn connect_session(dial: &Dial, identity: &Identity) -> anyhow::Result<Session> {
    match dial.transport {
        Transport::Grpc => open_grpc(load::channel(&dial.url).await?, identity).await,
        Transport::Ws => open_ws(&dial.url, identity).await,
    }
}

/// Opens a Connect stream for `identity` on `channel` and waits for `ready`.
pub async fn open_grpc(channel: Channel, identity: &Identity) -> anyhow::Result<Session> {
    let (tx, rx) = mpsc::channel(CLIENT_QUEUE);
    let inbound = load::chat_client(channel, identity)?
        .connect(ReceiverStream::new(rx))
        .await
        .context("Connect refused")?
        .into_inner();
    wait_ready(Session {
        tx,
        rx: Inbound::Grpc(Box::new(inbound)),
    })
    .await
}

/// Opens a WebSocket at `url` for `identity` (TCP_NODELAY, 4 KiB buffers), starts its
/// writer task and waits for `ready`.
pub async fn open_ws(url: &str, identity: &Identity) -> anyhow::Result<Session> {
    let separator = if url.contains('?') { '&' } else { '?' };
    let mut request = format!(
        "{url}{separator}access_token={}",
        percent_encode(&identity.token)
    )
    .into_client_request()
    .context("bad WebSocket URL")?;
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static(WS_SUBPROTOCOL),
    );
    let config = WebSocketConfig::default()
        .read_buffer_size(WS_BUFFER)
        .write_buffer_size(WS_BUFFER);
    let (socket, _) = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio_tungstenite::connect_async_with_config(request, Some(config), true),
    )
    .await
    .with_context(|| format!("connecting to {url}: timed out"))?
    .with_context(|| format!("connecting to {url}"))?;
    let (sink, stream) = socket.split();
    let (tx, rx) = mpsc::channel(CLIENT_QUEUE);
    tokio::spawn(write_frames(sink, rx));
    wait_ready(Session {
        tx,
        rx: Inbound::Ws(stream),
    })
    .await
}

/// Drains a session's client events into binary frames, flushing once the queue is empty
/// (several queued events go out in one write); sends a close frame once every sender is
/// gone.
async fn write_frames(mut sink: SplitSink<Ws, Message>, mut events: mpsc::Receiver<ClientEvent>) {
    while let Some(event) = events.recv().await {
        if sink.feed(binary(&event)).await.is_err() {
            return;
        }
        while let Ok(event) = events.try_recv() {
            if sink.feed(binary(&event)).await.is_err() {
                return;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
    let _ = sink.close().await;
}

fn binary(event: &ClientEvent) -> Message {
    Message::Binary(event.encode_to_vec().into())
}

/// Waits for the session's first event, which must be `ready`.
async fn wait_ready(mut session: Session) -> anyhow::Result<Session> {
    let first = tokio::time::timeout(READY_TIMEOUT, session.rx.message())
        .await
        .context("no ready event in time")?
        .context("session failed before ready")?;
    match first.and_then(|e| e.event) {
        Some(Event::Ready(_)) => Ok(session),
        None => anyhow::bail!("session ended before ready"),
        Some(other) => anyhow::bail!("first event was not ready: {other:?}"),
    }
}

/// `token` safe inside a query string: everything but unreserved characters percent-encoded.
fn percent_encode(token: &str) -> String {
    let mut out = String::with_capacity(token.len());
    for b in token.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_query_safe() {
        assert_eq!(percent_encode("42"), "42");
        assert_eq!(percent_encode("a+b/c=="), "a%2Bb%2Fc%3D%3D");
        assert_eq!(percent_encode("x-y_z.~"), "x-y_z.~");
    }
}
