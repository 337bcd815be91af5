//! The gateway as its own process (`chat-gateway --upstream URL`): live sessions become gRPC
//! `Connect` streams to the user's chat server, and gRPC(-web) requests are forwarded: chat
//! calls to the user's chat server, everything else to the upstream. The user's chat server
//! is whatever `DiscoveryService.GetChatServer` at the upstream answers for the user's own
//! token, asked again for every new session: when a chat server dies, its sockets close with
//! 1012, clients reconnect, and Discovery sends them to a live server. The gateway keeps no
//! per-session state of its own, so several gateways can serve one cluster.

use std::{
    collections::HashMap,
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use daehwa::v1::{
    ClientEvent, GetChatServerRequest, SyncMessagesRequest, SyncMessagesResponse,
    chat_service_client::ChatServiceClient, discovery_service_client::DiscoveryServiceClient,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{
    Code, Request, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Channel, Endpoint},
};
use tower::{Service, ServiceExt};

use crate::{LiveSession, SessionPort, SharedEvent};

/// Client events buffered per session before the socket reader waits.
const CLIENT_EVENT_QUEUE: usize = 64;

/// How long Discovery's answer for a token is reused by forwarded chat calls (new sessions
/// always ask again).
const ANSWER_TTL: Duration = Duration::from_secs(5);
/// Tokens whose answers are remembered; a full cache is emptied (answers are cheap to redo).
const MAX_ANSWERS: usize = 10_000;
/// The longest a session open or a forwarded chat call waits for Discovery.
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(5);
/// Chat servers a gateway keeps a channel to; beyond, channels are rebuilt on demand.
const MAX_CHAT_SERVERS: usize = 1024;

/// Finds each user's chat server through Discovery at the upstream, and keeps one lazily
/// connecting channel per chat server.
pub struct ChatServers {
    upstream: Channel,
    channels: Mutex<HashMap<String, Channel>>,
    answers: Mutex<HashMap<MetadataValue<Ascii>, (Channel, Instant)>>,
}

impl ChatServers {
    /// Discovery at the server behind `upstream` (any server with the api role, or a single
    /// chatd, which answers itself).
    pub fn new(upstream: Channel) -> Arc<Self> {
        Arc::new(Self {
            upstream,
            channels: Mutex::default(),
            answers: Mutex::default(),
        })
    }

    /// The chat server of the user whose `authorization` this is: Discovery's answer, reused
    /// for [`ANSWER_TTL`] unless `fresh`. An upstream without Discovery (a chat-only server)
    /// is the chat server itself.
    pub async fn for_user(
        &self,
        authorization: &MetadataValue<Ascii>,
        fresh: bool,
    ) -> Result<Channel, Status> {
        if !fresh
            && let Some((channel, at)) = lock(&self.answers).get(authorization)
            && at.elapsed() < ANSWER_TTL
        {
            return Ok(channel.clone());
        }
        let mut discovery = DiscoveryServiceClient::with_interceptor(
            self.upstream.clone(),
            Bearer(authorization.clone()),
        );
        let answer = tokio::time::timeout(
            DISCOVERY_TIMEOUT,
            discovery.get_chat_server(GetChatServerRequest {}),
        )
        .await
        .map_err(|_| Status::unavailable("Discovery did not answer in time: retry shortly"))?;
        let channel = match answer {
            Ok(answer) => self.channel_to(&answer.into_inner().grpc_endpoint)?,
            Err(status) if status.code() == Code::Unimplemented => self.upstream.clone(),
            Err(status) => return Err(status),
        };
        let mut answers = lock(&self.answers);
        if answers.len() >= MAX_ANSWERS {
            answers.clear();
        }
        answers.insert(authorization.clone(), (channel.clone(), Instant::now()));
        Ok(channel)
    }

    /// Forgets the answer for `authorization` (its server failed a call).
    pub fn forget(&self, authorization: &MetadataValue<Ascii>) {
        lock(&self.answers).remove(authorization);
    }

    fn channel_to(&self, grpc_endpoint: &str) -> Result<Channel, Status> {
        if let Some(channel) = lock(&self.channels).get(grpc_endpoint) {
            return Ok(channel.clone());
        }
        let channel = Endpoint::from_shared(format!("http://{grpc_endpoint}"))
            .map_err(|e| Status::internal(format!("Discovery gave a bad endpoint: {e}")))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .connect_lazy();
        let mut channels = lock(&self.channels);
        if channels.len() >= MAX_CHAT_SERVERS {
            channels.clear();
        }
        channels.insert(grpc_endpoint.to_owned(), channel.clone());
        Ok(channel)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn bearer(access_token: &str) -> Result<MetadataValue<Ascii>, Status> {
    format!("Bearer {access_token}")
        .parse()
        .map_err(|_| Status::unauthenticated("invalid access token"))
}

/// Sessions opened as `Connect` streams on each user's chat server.
pub struct RemotePort {
    servers: Arc<ChatServers>,
}

impl RemotePort {
    /// Sessions on the chat servers `servers` finds.
    pub fn new(servers: Arc<ChatServers>) -> Self {
        Self { servers }
    }

    async fn chat(
        &self,
        access_token: &str,
        fresh: bool,
    ) -> Result<ChatServiceClient<InterceptedService<Channel, Bearer>>, Status> {
        let authorization = bearer(access_token)?;
        let channel = self.servers.for_user(&authorization, fresh).await?;
        Ok(ChatServiceClient::with_interceptor(
            channel,
            Bearer(authorization),
        ))
    }
}

/// Adds the session's `authorization` metadata to upstream calls.
#[derive(Clone)]
pub struct Bearer(MetadataValue<Ascii>);

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
        let (client_events, rx) = mpsc::channel::<Box<ClientEvent>>(CLIENT_EVENT_QUEUE);
        let events = self
            .chat(access_token, true)
            .await?
            .connect(tokio_stream::StreamExt::map(
                ReceiverStream::new(rx),
                |event| *event,
            ))
            .await?
            .into_inner();
        Ok(LiveSession {
            events: Box::pin(futures::StreamExt::map(events, |event| {
                event.map(SharedEvent::new)
            })),
            client_events,
        })
    }

    async fn sync(
        &self,
        access_token: &str,
        request: SyncMessagesRequest,
    ) -> Result<SyncMessagesResponse, Status> {
        Ok(self
            .chat(access_token, false)
            .await?
            .sync_messages(request)
            .await?
            .into_inner())
    }
}

/// Forwards gRPC requests (gRPC-web ones already translated): `chat.v1.ChatService` calls to
/// the caller's chat server, the rest to the upstream; an unreachable server answers
/// `UNAVAILABLE`.
#[derive(Clone)]
pub struct UpstreamProxy {
    servers: Arc<ChatServers>,
}

impl UpstreamProxy {
    /// Forwards through `servers`.
    pub fn new(servers: Arc<ChatServers>) -> Self {
        Self { servers }
    }
}

/// Paths answered by the caller's chat server rather than the upstream.
const CHAT_SERVICE_PREFIX: &str = "/chat.v1.ChatService/";

impl Service<http::Request<tonic::body::Body>> for UpstreamProxy {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let servers = self.servers.clone();
        Box::pin(async move {
            let authorization = request
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| MetadataValue::try_from(v.as_bytes()).ok());
            let to_chat_server = request.uri().path().starts_with(CHAT_SERVICE_PREFIX);
            let channel = match (&authorization, to_chat_server) {
                (Some(authorization), true) => match servers.for_user(authorization, false).await {
                    Ok(channel) => channel,
                    Err(status) => return Ok(status.into_http()),
                },
                _ => servers.upstream.clone(),
            };
            // A balanced channel with no server registered waits for one: bounded.
            let mut channel = channel;
            match tokio::time::timeout(DISCOVERY_TIMEOUT, channel.ready()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    return Ok(Status::unavailable(format!("server unavailable: {e}")).into_http());
                }
                Err(_) => {
                    return Ok(
                        Status::unavailable("no server answered in time: retry shortly")
                            .into_http(),
                    );
                }
            }
            match channel.call(request).await {
                Ok(response) => Ok(response),
                Err(e) => {
                    if let Some(authorization) = &authorization {
                        servers.forget(authorization);
                    }
                    Ok(Status::unavailable(format!("chat server unavailable: {e}")).into_http())
                }
            }
        })
    }
}
