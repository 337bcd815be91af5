//! # Daehwa gateway
//!
//! Browsers cannot speak HTTP/2 gRPC. The gateway serves, on one HTTP/1.1 + HTTP/2 port:
//! - `GET /v1/ws`: a WebSocket carrying the same `ClientEvent`/`ServerEvent` frames as
//!   `ChatService.Connect` ([`websocket`]), protobuf binary or protobuf-JSON;
//! - `POST /v1/poll`: long polling, the last fallback ([`poll`]);
//! - everything else: the gRPC services, reachable with gRPC-web ([`grpc_web`]) from browsers
//!   and with plain gRPC from anything else.
//!
//! Live sessions come from a [`SessionPort`]: embedded in `chatd` it is the chat session layer
//! itself (no gRPC hop, no second copy of session state).
//!
//! ## Layout
//! - [`port`]: how the gateway opens a live session.
//! - [`websocket`]: the `/v1/ws` endpoint: upgrade, authentication, frames, close codes.
//! - [`poll`]: the `/v1/poll` long-polling endpoint.
//! - [`json`]: the proto3 JSON mapping of chat.v1 messages.
//! - [`grpc_web`]: gRPC-web translation and CORS in front of tonic routes.
//! - [`remote`]: the standalone gateway's port and proxy to an upstream chat server.
//! - [`listen`]: listening sockets with a deep accept queue (also chatd's and the
//!   benchmark relay's).

pub mod grpc_web;
pub mod json;
pub mod listen;
pub mod poll;
pub mod port;
pub mod registry;
pub mod remote;
pub mod web;
pub mod websocket;

use std::{net::SocketAddr, sync::Arc, time::Duration};

pub use port::{LiveSession, SessionPort, SharedEvent};
use tokio::net::TcpListener;

/// Gateway settings.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Origins allowed to call gRPC-web cross-origin (`*` for any); empty: same origin only.
    pub allowed_origins: Vec<String>,
    /// Largest WebSocket frame accepted from a client.
    pub max_frame_bytes: usize,
    /// How often the server pings an idle WebSocket.
    pub ping_interval: Duration,
    /// How long a client may wait before authenticating (first frame) or answering pings.
    pub idle_timeout: Duration,
    /// The longest a long poll waits for new messages.
    pub poll_wait: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            allowed_origins: Vec::new(),
            max_frame_bytes: 128 * 1024,
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            poll_wait: Duration::from_secs(25),
        }
    }
}

/// The gateway's routes: `/v1/ws` for live sessions, and gRPC(-web) for everything else.
/// `grpc` must authenticate requests itself (the gateway only translates).
pub fn router<S>(port: Arc<dyn SessionPort>, grpc: S, config: &GatewayConfig) -> axum::Router
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let ws = axum::Router::new()
        .route("/v1/ws", axum::routing::get(websocket::upgrade))
        .with_state(websocket::WsState::new(port.clone(), config));
    let poll = axum::Router::new()
        .route("/v1/poll", axum::routing::post(poll::poll))
        .with_state(poll::PollState {
            port,
            max_wait: config.poll_wait,
        });
    axum::Router::new()
        .merge(ws)
        .merge(poll)
        .merge(web::routes())
        .fallback_service(grpc_web::service(grpc, &config.allowed_origins))
}

/// Serves `router` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Chat frames are small and latency-bound: no Nagle delay on any socket.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
