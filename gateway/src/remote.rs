//! The gateway as its own process (`chat-gateway --upstream URL`): live sessions become gRPC
//! `Connect` streams to a chat server, and gRPC(-web) requests are forwarded to it. The
//! gateway keeps no per-session state of its own, so several gateways can serve one cluster.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use daehwa::v1::{
    SyncMessagesRequest, SyncMessagesResponse, chat_service_client::ChatServiceClient,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{
    Request, Status,
    metadata::MetadataValue,
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};
use tower::{Service, ServiceExt};

use crate::{LiveSession, SessionPort};

/// Client events buffered per session before the socket reader waits.
const CLIENT_EVENT_QUEUE: usize = 64;

/// Sessions opened as `Connect` streams on the upstream chat server.
pub struct RemotePort {
    channel: Channel,
}

impl RemotePort {
    /// Sessions on the server behind `channel` (a lazily connecting, reconnecting channel).
    pub fn new(channel: Channel) -> Self {
        Self { channel }
    }

    fn chat(
        &self,
        access_token: &str,
    ) -> Result<ChatServiceClient<InterceptedService<Channel, Bearer>>, Status> {
        let value: MetadataValue<_> = format!("Bearer {access_token}")
            .parse()
            .map_err(|_| Status::unauthenticated("invalid access token"))?;
        Ok(ChatServiceClient::with_interceptor(
            self.channel.clone(),
            Bearer(value),
        ))
    }
}

/// Adds the session's `authorization` metadata to upstream calls.
#[derive(Clone)]
pub struct Bearer(MetadataValue<tonic::metadata::Ascii>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

#[async_trait::async_trait]
impl SessionPort for RemotePort {
    async fn open(&self, access_token: &str) -> Result<LiveSession, Status> {
        let (client_events, rx) = mpsc::channel(CLIENT_EVENT_QUEUE);
        let events = self
            .chat(access_token)?
            .connect(ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(LiveSession {
            events: Box::pin(events),
            client_events,
        })
    }

    async fn sync(
        &self,
        access_token: &str,
        request: SyncMessagesRequest,
    ) -> Result<SyncMessagesResponse, Status> {
        Ok(self
            .chat(access_token)?
            .sync_messages(request)
            .await?
            .into_inner())
    }
}

/// Forwards gRPC requests (gRPC-web ones already translated) to the upstream server; an
/// unreachable upstream answers `UNAVAILABLE`.
#[derive(Clone)]
pub struct UpstreamProxy {
    channel: Channel,
}

impl UpstreamProxy {
    /// Forwards to the server behind `channel`.
    pub fn new(channel: Channel) -> Self {
        Self { channel }
    }
}

impl Service<http::Request<tonic::body::Body>> for UpstreamProxy {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let channel = self.channel.clone();
        Box::pin(async move {
            match channel.oneshot(request).await {
                Ok(response) => Ok(response),
                Err(e) => {
                    Ok(Status::unavailable(format!("chat server unavailable: {e}")).into_http())
                }
            }
        })
    }
}
