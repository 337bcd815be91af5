//! `chat.v1.ChatService` as chatd mounts it: the two live streams (Connect, Subscribe) are
//! served here with each event's protobuf encoding made once and copied into every
//! recipient's stream; every other method goes to the generated server.
//!
//! The generated route would take each event out of its share and have tonic encode it per
//! stream: a message to a 10,000-member group was cloned (its strings and content) and
//! encoded 10,000 times. Here the first stream that sends an event encodes it
//! ([`SharedEvent::proto`]), and the others copy those bytes, as the gateway's WebSockets do.
//! Requests are decoded, limited and answered as by the generated server: the same codec
//! buffers and request size limit. Neither server compresses (no service here enables it),
//! so there is no compression setting to carry over.

use std::{
    convert::Infallible,
    sync::Arc,
    task::{Context, Poll},
};

use daehwa::v1::{self, ClientEvent, chat_service_server::ChatServiceServer};
use tonic::{
    Request, Response, Status, Streaming,
    body::Body,
    codegen::BoxFuture,
    server::{Grpc, NamedService, ServerStreamingService, StreamingService},
};

use super::{chat::ChatApi, shared_event_codec::SharedEventCodec};
use crate::session::{SharedEvent, live::SharedEventStream};

const CONNECT: &str = "/chat.v1.ChatService/Connect";
const SUBSCRIBE: &str = "/chat.v1.ChatService/Subscribe";

/// The chat service's routes, mounted instead of the generated server so that a live event
/// is encoded once for all its recipients: Connect and Subscribe are served here, the rest
/// by the generated server.
#[derive(Clone)]
pub struct ChatRoutes {
    api: Arc<ChatApi>,
    generated: ChatServiceServer<ChatApi>,
    max_decoding_message_size: usize,
}

impl ChatRoutes {
    /// Routes for `api`, refusing client messages above `max_decoding_message_size` bytes
    /// (as every other service does).
    pub fn new(api: ChatApi, max_decoding_message_size: usize) -> Self {
        let api = Arc::new(api);
        Self {
            generated: ChatServiceServer::from_arc(api.clone())
                .max_decoding_message_size(max_decoding_message_size),
            api,
            max_decoding_message_size,
        }
    }

    fn grpc<U>(&self) -> Grpc<SharedEventCodec<U>>
    where
        U: prost::Message + Default + Send + 'static,
    {
        Grpc::new(SharedEventCodec::default())
            .apply_max_message_size_config(Some(self.max_decoding_message_size), None)
    }
}

impl NamedService for ChatRoutes {
    const NAME: &'static str = <ChatServiceServer<ChatApi> as NamedService>::NAME;
}

impl tower::Service<http::Request<Body>> for ChatRoutes {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        match request.uri().path() {
            CONNECT => {
                let mut grpc = self.grpc::<ClientEvent>();
                let method = ConnectMethod(self.api.clone());
                Box::pin(async move { Ok(grpc.streaming(method, request).await) })
            }
            SUBSCRIBE => {
                let mut grpc = self.grpc::<v1::SubscribeRequest>();
                let method = SubscribeMethod(self.api.clone());
                Box::pin(async move { Ok(grpc.server_streaming(method, request).await) })
            }
            _ => self.generated.call(request),
        }
    }
}

/// Connect: a two-way live session.
struct ConnectMethod(Arc<ChatApi>);

impl StreamingService<ClientEvent> for ConnectMethod {
    type Response = Arc<SharedEvent>;
    type ResponseStream = SharedEventStream;
    type Future = BoxFuture<Response<SharedEventStream>, Status>;

    fn call(&mut self, request: Request<Streaming<ClientEvent>>) -> Self::Future {
        let api = self.0.clone();
        Box::pin(async move { api.open_connect(request).await.map(Response::new) })
    }
}

/// Subscribe: a receive-only live session.
struct SubscribeMethod(Arc<ChatApi>);

impl ServerStreamingService<v1::SubscribeRequest> for SubscribeMethod {
    type Response = Arc<SharedEvent>;
    type ResponseStream = SharedEventStream;
    type Future = BoxFuture<Response<SharedEventStream>, Status>;

    fn call(&mut self, request: Request<v1::SubscribeRequest>) -> Self::Future {
        let api = self.0.clone();
        Box::pin(async move { api.open_subscribe(request).await.map(Response::new) })
    }
}
