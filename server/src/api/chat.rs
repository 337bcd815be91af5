//! `chat.v1.ChatService`: the live streams (Connect, Subscribe, run by
//! [`LiveSessions`]) and the unary calls.

use std::{pin::Pin, sync::Arc};

use daehwa::v1::{self, ClientEvent, ServerEvent, chat_service_server::ChatService as ChatRpc};
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::{ApiContext, reply, status};
use crate::{
    auth::layer::caller,
    error::Error,
    service::{ChatService, PresenceService},
    session::{
        SharedEvent,
        live::{LiveSessions, SharedEventStream},
    },
};

/// A live session's events as a gRPC response stream.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<ServerEvent, Status>> + Send>>;

/// Takes each event out of its share (moved when this session was its only recipient);
/// tonic encodes it.
fn grpc_events(events: SharedEventStream) -> EventStream {
    Box::pin(events.map(|event| event.map(SharedEvent::into_event)))
}

/// Adapter for [`ChatService`] and the live sessions.
pub struct ChatApi {
    pub chat: Arc<ChatService>,
    pub presence: Arc<PresenceService>,
    pub live: Arc<LiveSessions>,
    pub ctx: ApiContext,
}

impl ChatApi {
    /// Opens a two-way live session for a Connect call; its events are still shared. Public
    /// for [`super::live_routes`], which serves Connect with their shared encoding.
    pub async fn open_connect(
        &self,
        request: Request<Streaming<ClientEvent>>,
    ) -> Result<SharedEventStream, Status> {
        let me = caller(&request)?;
        self.live
            .connect(me, request.into_inner())
            .await
            .map_err(|e| status(&self.ctx.metrics, e))
    }

    /// Opens a receive-only live session for a Subscribe call (for
    /// [`super::live_routes`], like [`Self::open_connect`]).
    pub async fn open_subscribe(
        &self,
        request: Request<v1::SubscribeRequest>,
    ) -> Result<SharedEventStream, Status> {
        let me = caller(&request)?;
        self.live
            .subscribe(me)
            .await
            .map_err(|e| status(&self.ctx.metrics, e))
    }
}

/// The generated trait. chatd mounts it behind [`super::live_routes::ChatRoutes`], which
/// serves Connect and Subscribe itself: the two implementations here are reached only if the
/// generated server is mounted alone (each event then taken out of its share and encoded by
/// tonic per stream).
#[tonic::async_trait]
impl ChatRpc for ChatApi {
    type ConnectStream = EventStream;
    type SubscribeStream = EventStream;

    async fn connect(
        &self,
        request: Request<Streaming<ClientEvent>>,
    ) -> Result<Response<EventStream>, Status> {
        let events = self.open_connect(request).await?;
        Ok(Response::new(grpc_events(events)))
    }

    async fn subscribe(
        &self,
        request: Request<v1::SubscribeRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let events = self.open_subscribe(request).await?;
        Ok(Response::new(grpc_events(events)))
    }

    async fn send_message(
        &self,
        request: Request<v1::SendMessageRequest>,
    ) -> Result<Response<v1::SendMessageResponse>, Status> {
        let me = caller(&request)?;
        let r = request.into_inner();
        self.presence.touch(me.user);
        // Run to completion even if the caller goes away: once the message is stored, its
        // live delivery must still happen (a retry would find a duplicate and not deliver).
        let chat = self.chat.clone();
        let result = tokio::spawn(async move {
            chat.send(me, &r.client_msg_id, &r.conversation_id, r.content)
                .await
        })
        .await
        .unwrap_or_else(|e| Err(Error::internal(format!("send task failed: {e}"))));
        reply(
            &self.ctx.metrics,
            result.map(|m| v1::SendMessageResponse { message: Some(m) }),
        )
    }

    async fn sync_messages(
        &self,
        request: Request<v1::SyncMessagesRequest>,
    ) -> Result<Response<v1::SyncMessagesResponse>, Status> {
        let me = caller(&request)?;
        let r = request.into_inner();
        let cursors: Vec<(String, u64)> = r
            .cursors
            .into_iter()
            .map(|c| (c.conversation_id, c.after_seq))
            .collect();
        let result = self.chat.sync(me.user, &cursors, r.limit).await;
        reply(
            &self.ctx.metrics,
            result.map(|(messages, has_more)| v1::SyncMessagesResponse { messages, has_more }),
        )
    }

    async fn list_conversations(
        &self,
        request: Request<v1::ListConversationsRequest>,
    ) -> Result<Response<v1::ListConversationsResponse>, Status> {
        let me = caller(&request)?;
        let result = self.chat.conversations(me.user).await;
        reply(
            &self.ctx.metrics,
            result.map(|list| v1::ListConversationsResponse {
                conversations: list
                    .into_iter()
                    .map(|c| v1::Conversation {
                        conversation_id: c.state.conversation.to_string(),
                        last_seq: c.state.last_seq,
                        last_message: c.state.last_message,
                        read_seq: c.state.read_seq,
                        unread_count: c.unread,
                    })
                    .collect(),
            }),
        )
    }

    async fn get_history(
        &self,
        request: Request<v1::GetHistoryRequest>,
    ) -> Result<Response<v1::GetHistoryResponse>, Status> {
        let me = caller(&request)?;
        let r = request.into_inner();
        let result = self
            .chat
            .history(me.user, &r.conversation_id, r.before_seq, r.limit)
            .await;
        reply(
            &self.ctx.metrics,
            result.map(|messages| v1::GetHistoryResponse { messages }),
        )
    }

    async fn mark_read(
        &self,
        request: Request<v1::MarkReadRequest>,
    ) -> Result<Response<v1::MarkReadResponse>, Status> {
        let me = caller(&request)?;
        let r = request.into_inner();
        let result = self.chat.mark_read(me, &r.conversation_id, r.seq).await;
        reply(&self.ctx.metrics, result.map(|_| v1::MarkReadResponse {}))
    }

    async fn notify_typing(
        &self,
        request: Request<v1::NotifyTypingRequest>,
    ) -> Result<Response<v1::NotifyTypingResponse>, Status> {
        let me = caller(&request)?;
        let result = self
            .chat
            .typing(me, &request.into_inner().conversation_id)
            .await;
        reply(
            &self.ctx.metrics,
            result.map(|()| v1::NotifyTypingResponse {}),
        )
    }
}
