//! The mock's ChatService (with a live Connect stream) and PresenceService.

use daehwa::v1::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{EventStream, Mock, Res, now};

fn event(event: server_event::Event) -> Result<ServerEvent, Status> {
    Ok(ServerEvent { event: Some(event) })
}

#[tonic::async_trait]
impl chat_service_server::ChatService for Mock {
    type ConnectStream = EventStream;
    type SubscribeStream = EventStream;

    async fn connect(&self, r: Request<Streaming<ClientEvent>>) -> Res<EventStream> {
        let me = self.me(&r)?;
        let mut inbound = r.into_inner();
        let mut live = self.live.subscribe();
        let (tx, rx) = mpsc::channel(64);
        let ready = SessionReady {
            user_id: me,
            device_id: 1,
            server_id: "mock".into(),
        };
        tx.send(event(server_event::Event::Ready(ready))).await.ok();
        let mock = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    message = live.recv() => {
                        let Ok(message) = message else { break };
                        let mine = message.sender_id == me;
                        if !mine && Mock::member(&mock.lock(), me, &message.conversation_id) {
                            // Someone types before they send.
                            let typing = TypingNotice { conversation_id: message.conversation_id.clone(), user_id: message.sender_id };
                            tx.send(event(server_event::Event::Typing(typing))).await.ok();
                            tx.send(event(server_event::Event::Message(message))).await.ok();
                        }
                    }
                    incoming = inbound.message() => {
                        let Ok(Some(incoming)) = incoming else { break };
                        let reply = match incoming.event {
                            Some(client_event::Event::Send(send)) => {
                                let client_msg_id = send.client_msg_id.clone();
                                let outcome = match mock.store(me, send) {
                                    Ok(m) => send_result::Outcome::Message(m),
                                    Err(s) => send_result::Outcome::Error(ErrorStatus { code: s.code() as i32, message: s.message().into() }),
                                };
                                server_event::Event::SendResult(SendResult { client_msg_id, outcome: Some(outcome) })
                            }
                            Some(client_event::Event::Read(read)) => {
                                mock.lock().reads.insert((read.conversation_id, me), read.seq);
                                continue;
                            }
                            _ => server_event::Event::HeartbeatAck(HeartbeatAck {}),
                        };
                        if tx.send(event(reply)).await.is_err() {
                            break;
                        }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
    async fn subscribe(&self, _: Request<SubscribeRequest>) -> Res<EventStream> {
        Err(Status::unimplemented("mock"))
    }
    async fn send_message(&self, r: Request<SendMessageRequest>) -> Res<SendMessageResponse> {
        let me = self.me(&r)?;
        let message = self.store(me, r.into_inner())?;
        Ok(Response::new(SendMessageResponse {
            message: Some(message),
        }))
    }
    async fn sync_messages(&self, _: Request<SyncMessagesRequest>) -> Res<SyncMessagesResponse> {
        Err(Status::unimplemented("mock"))
    }
    async fn list_conversations(
        &self,
        r: Request<ListConversationsRequest>,
    ) -> Res<ListConversationsResponse> {
        let me = self.me(&r)?;
        let st = self.lock();
        let mut conversations = Vec::new();
        for (id, list) in &st.messages {
            if !Mock::member(&st, me, id) {
                continue;
            }
            let read_seq = st.reads.get(&(id.clone(), me)).copied().unwrap_or(0);
            let unread_count = list
                .iter()
                .filter(|m| m.seq > read_seq && m.sender_id != me)
                .count() as u64;
            conversations.push(Conversation {
                conversation_id: id.clone(),
                last_seq: list.len() as u64,
                last_message: list.last().cloned(),
                read_seq,
                unread_count,
            });
        }
        Ok(Response::new(ListConversationsResponse { conversations }))
    }
    async fn get_history(&self, r: Request<GetHistoryRequest>) -> Res<GetHistoryResponse> {
        let me = self.me(&r)?;
        let r = r.into_inner();
        let st = self.lock();
        if !Mock::member(&st, me, &r.conversation_id) {
            return Err(Status::permission_denied(
                "you are not in this conversation",
            ));
        }
        let list = st
            .messages
            .get(&r.conversation_id)
            .cloned()
            .unwrap_or_default();
        let limit = if r.limit == 0 { 50 } else { r.limit as usize };
        let messages = list[list.len().saturating_sub(limit)..].to_vec();
        Ok(Response::new(GetHistoryResponse { messages }))
    }
    async fn mark_read(&self, _: Request<MarkReadRequest>) -> Res<MarkReadResponse> {
        Err(Status::unimplemented("mock"))
    }
    async fn notify_typing(&self, _: Request<NotifyTypingRequest>) -> Res<NotifyTypingResponse> {
        Err(Status::unimplemented("mock"))
    }
}

#[tonic::async_trait]
impl presence_service_server::PresenceService for Mock {
    type WatchPresenceStream =
        std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<PresenceEvent, Status>> + Send>>;

    async fn heartbeat(&self, _: Request<HeartbeatRequest>) -> Res<HeartbeatResponse> {
        Err(Status::unimplemented("mock"))
    }
    async fn get_presence(&self, r: Request<GetPresenceRequest>) -> Res<GetPresenceResponse> {
        self.me(&r)?;
        let presences = r
            .into_inner()
            .user_ids
            .into_iter()
            .map(|user_id| Presence {
                user_id,
                status: PresenceStatus::Online as i32,
                last_active_at: Some(now()),
            })
            .collect();
        Ok(Response::new(GetPresenceResponse { presences }))
    }
    async fn watch_presence(
        &self,
        _: Request<WatchPresenceRequest>,
    ) -> Res<Self::WatchPresenceStream> {
        Err(Status::unimplemented("mock"))
    }
}
