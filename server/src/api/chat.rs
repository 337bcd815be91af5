//! `chat.v1.ChatService`: the live streams (Connect, Subscribe) and the unary calls.
//!
//! A Connect stream registers the device in the hub, queues `ready`, then runs one task that
//! reads client events in order: each `send` is persisted before its `send_result` is queued,
//! so results arrive in the order the sends were made.

use std::{pin::Pin, sync::Arc};

use daehwa::v1::{
    self, ClientEvent, ErrorStatus, HeartbeatAck, SendResult, ServerEvent, SessionReady,
    chat_service_server::ChatService as ChatRpc, client_event, send_result::Outcome,
    server_event::Event,
};
use futures::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::{ApiContext, reply, status};
use crate::error::Error;
use crate::{
    auth::{AuthContext, layer::caller},
    service::{ChatService, PresenceService},
    session::{CloseReason, Hub, hub::Session, outbound::response_stream},
};

/// The stream type of Connect and Subscribe.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<ServerEvent, Status>> + Send>>;

/// Adapter for [`ChatService`] and the live sessions.
pub struct ChatApi {
    pub chat: Arc<ChatService>,
    pub presence: Arc<PresenceService>,
    pub hub: Arc<Hub>,
    pub server_id: String,
    pub ctx: ApiContext,
}

impl ChatApi {
    /// Registers a session and returns its response stream, with `ready` queued first.
    fn open_session(&self, me: AuthContext) -> Result<(Arc<Session>, EventStream), Status> {
        let (handle, outbox) = self
            .hub
            .register(me.user, me.device)
            .map_err(|e| status(&self.ctx.metrics, e))?;
        let session = handle.session().clone();
        session.offer(Arc::new(ServerEvent {
            event: Some(Event::Ready(SessionReady {
                user_id: me.user.0,
                device_id: me.device.0,
                server_id: self.server_id.clone(),
            })),
        }));
        Ok((
            session,
            Box::pin(response_stream(handle, outbox, self.ctx.metrics.clone())),
        ))
    }
}

/// Reads a Connect stream's client events until the client stops or the session closes.
async fn serve_inbound(
    me: AuthContext,
    session: Arc<Session>,
    mut inbound: Streaming<ClientEvent>,
    chat: Arc<ChatService>,
    presence: Arc<PresenceService>,
) {
    loop {
        let next = tokio::select! {
            () = session.closed() => return,
            next = inbound.message() => next,
        };
        let event = match next {
            Ok(Some(ClientEvent { event: Some(event) })) => event,
            Ok(Some(ClientEvent { event: None })) => continue,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(user_id = %me.user, error = %e, "client stream ended with an error");
                match e.code() {
                    tonic::Code::Cancelled => {}
                    tonic::Code::OutOfRange | tonic::Code::ResourceExhausted => {
                        session.close(CloseReason::TooLarge)
                    }
                    _ => session.close(CloseReason::Invalid),
                }
                return;
            }
        };
        presence.touch(me.user);
        match event {
            client_event::Event::Send(send) => {
                let outcome = match chat
                    .send(me, &send.client_msg_id, &send.conversation_id, send.content)
                    .await
                {
                    Ok(message) => Outcome::Message(message),
                    Err(e) => Outcome::Error(ErrorStatus {
                        code: e.code() as i32,
                        message: e.public_message(),
                    }),
                };
                let result = SendResult {
                    client_msg_id: send.client_msg_id,
                    outcome: Some(outcome),
                };
                session.offer(Arc::new(ServerEvent {
                    event: Some(Event::SendResult(result)),
                }));
            }
            client_event::Event::Read(read) => {
                if let Err(e) = chat.mark_read(me, &read.conversation_id, read.seq).await {
                    tracing::debug!(user_id = %me.user, error = %e, "read event refused");
                }
            }
            client_event::Event::Typing(typing) => {
                if let Err(e) = chat.typing(me, &typing.conversation_id).await {
                    tracing::debug!(user_id = %me.user, error = %e, "typing event refused");
                }
            }
            client_event::Event::Heartbeat(_) => {
                session.offer(Arc::new(ServerEvent {
                    event: Some(Event::HeartbeatAck(HeartbeatAck {})),
                }));
            }
        }
    }
}

#[tonic::async_trait]
impl ChatRpc for ChatApi {
    type ConnectStream = EventStream;
    type SubscribeStream = EventStream;

    async fn connect(
        &self,
        request: Request<Streaming<ClientEvent>>,
    ) -> Result<Response<EventStream>, Status> {
        let me = caller(&request)?;
        let (session, stream) = self.open_session(me)?;
        tokio::spawn(serve_inbound(
            me,
            session,
            request.into_inner(),
            self.chat.clone(),
            self.presence.clone(),
        ));
        Ok(Response::new(stream))
    }

    async fn subscribe(
        &self,
        request: Request<v1::SubscribeRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let me = caller(&request)?;
        let (_, stream) = self.open_session(me)?;
        Ok(Response::new(stream))
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
