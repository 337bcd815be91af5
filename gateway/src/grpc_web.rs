//! gRPC-web in front of tonic routes, with CORS for browsers on other origins.
//!
//! Browsers cannot stream request bodies, so only unary and server-streaming RPCs work over
//! gRPC-web: `ChatService.Subscribe` plus `SendMessage` is the gRPC-web way to chat (or use
//! the WebSocket). CORS exposes `grpc-status`, `grpc-message` and `grpc-status-details-bin`:
//! without them a browser reports every error as a missing trailer.

use std::convert::Infallible;

use http::{HeaderName, HeaderValue, Method};
use tonic_web::GrpcWebLayer;
use tower::{ServiceBuilder, util::BoxCloneSyncService};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// Request headers a gRPC-web client sends.
const ALLOWED_HEADERS: &[&str] = &[
    "content-type",
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
    "authorization",
];
/// Response headers a gRPC-web client must be able to read.
const EXPOSED_HEADERS: &[&str] = &["grpc-status", "grpc-message", "grpc-status-details-bin"];

/// The HTTP service: CORS, then gRPC-web translation, then the routes (which must already
/// carry authentication).
pub fn service<S>(
    routes: S,
    allowed_origins: &[String],
) -> BoxCloneSyncService<
    http::Request<axum::body::Body>,
    http::Response<tonic::body::Body>,
    Infallible,
>
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let service = ServiceBuilder::new()
        .layer(cors(allowed_origins))
        .layer(GrpcWebLayer::new())
        .service(routes);
    BoxCloneSyncService::new(service)
}

fn cors(allowed_origins: &[String]) -> CorsLayer {
    let origins = if allowed_origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            allowed_origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok()),
        )
    };
    let names = |list: &[&'static str]| {
        list.iter()
            .map(|h| HeaderName::from_static(h))
            .collect::<Vec<_>>()
    };
    CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([Method::POST, Method::OPTIONS])
        .allow_headers(names(ALLOWED_HEADERS))
        .expose_headers(names(EXPOSED_HEADERS))
}
