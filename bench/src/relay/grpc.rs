//! The relay over gRPC: a bare tonic `chat.v1.ChatService/Connect` with the bearer token as
//! the user id. Every other RPC is `UNIMPLEMENTED`.

use std::pin::Pin;

use daehwa::v1::{
    self, ClientEvent, ServerEvent,
    chat_service_server::{ChatService, ChatServiceServer},
};
use futures::{Stream, StreamExt};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming, transport::server::TcpIncoming};

use super::{Attached, MAX_FRAME, Relay};

/// Serves the gRPC relay on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, relay: Relay) -> anyhow::Result<()> {
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(ChatServiceServer::new(relay).max_decoding_message_size(MAX_FRAME))
        .serve_with_incoming(incoming)
        .await?;
    Ok(())
}

/// The user id a request claims: `authorization: Bearer <user id>`.
fn claimed_user<T>(request: &Request<T>) -> Result<u64, Status> {
    request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| Status::unauthenticated("relay: authorization must be `Bearer <user id>`"))
}

/// Reads a Connect stream's client events until it ends or its outbox overflowed.
async fn serve_inbound(session: Attached, mut inbound: Streaming<ClientEvent>) {
    loop {
        let next = tokio::select! {
            () = session.kill.notified() => break,
            next = inbound.message() => next,
        };
        match next {
            Ok(Some(event)) => {
                if !session.handle(event) {
                    break;
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<ServerEvent, Status>> + Send>>;

#[tonic::async_trait]
impl ChatService for Relay {
    type ConnectStream = EventStream;
    type SubscribeStream = EventStream;

    async fn connect(
        &self,
        request: Request<Streaming<ClientEvent>>,
    ) -> Result<Response<EventStream>, Status> {
        let me = claimed_user(&request)?;
        let (session, outbox) = self.attach(me);
        tokio::spawn(serve_inbound(session, request.into_inner()));
        Ok(Response::new(Box::pin(ReceiverStream::new(outbox).map(Ok))))
    }

    async fn subscribe(
        &self,
        _: Request<v1::SubscribeRequest>,
    ) -> Result<Response<EventStream>, Status> {
        Err(Status::unimplemented("relay: Connect only"))
    }

    async fn send_message(
        &self,
        _: Request<v1::SendMessageRequest>,
    ) -> Result<Response<v1::SendMessageResponse>, Status> {
        Err(Status::unimplemented("relay: Connect only"))
    }

    async fn sync_messages(
        &self,
        _: Request<v1::SyncMessagesRequest>,
    ) -> Result<Response<v1::SyncMessagesResponse>, Status> {
        Err(Status::unimplemented("relay: Connect only"))
    }

    async fn list_conversations(
        &self,
        _: Request<v1::ListConversationsRequest>,
    ) -> Result<Response<v1::ListConversationsResponse>, Status> {
        Err(Status::unimplemented("relay: Connect only"))
    }

    async fn get_history(
        &self,
        _: Request<v1::GetHistoryRequest>,
    ) -> Result<Response<v1::GetHistoryResponse>, Status> {
        Err(Status::unimplemented("relay: Connect only"))
    }

    async fn mark_read(
        &self,
        _: Request<v1::MarkReadRequest>,
    ) -> Result<Response<v1::MarkReadResponse>, Status> {
        Err(Status::unimplemented("relay: Connect only"))
    }

    async fn notify_typing(
        &self,
        _: Request<v1::NotifyTypingRequest>,
    ) -> Result<Response<v1::NotifyTypingResponse>, Status> {
        Err(Status::unimplemented("relay: Connect only"))
    }
}
