//! The ceiling: a bare tonic bidi relay speaking the same `chat.v1.ChatService/Connect` as
//! chatd, with no authentication, no persistence and no limits beyond a bounded queue per
//! stream. It runs as a child process (`chat-bench relay-server`) so that its CPU and memory
//! are measured apart from the load generator's, like chatd's.
//!
//! Identity: the bearer token is the user id itself (`authorization: Bearer 42`), so the load
//! generator drives both servers with the same code. A `send` is answered with a
//! `send_result` carrying the relayed message, and the message goes as a `message` event to
//! every stream of the conversation's other member (`dm:<lo>:<hi>`) or, for a group id
//! (`g:<n>`), to every stream of every other connected user. Seq is counted per conversation
//! so the exactly-once check works as it does against chatd. Every other RPC is
//! `UNIMPLEMENTED`.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::SystemTime,
};

use daehwa::v1::{
    self, ClientEvent, ErrorStatus, HeartbeatAck, Message, SendResult, ServerEvent, SessionReady,
    chat_service_server::{ChatService, ChatServiceServer},
    client_event,
    send_result::Outcome,
    server_event::Event,
};
use futures::Stream;
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming, transport::server::TcpIncoming};

/// Events queued per stream before the relay gives up on a reader (as chatd's default).
const OUTBOX: usize = 1024;
/// Largest frame accepted, as chatd's default (64 KiB content plus envelope).
const MAX_FRAME: usize = 128 * 1024;

type Outbox = mpsc::Sender<Result<ServerEvent, Status>>;

/// One open Connect stream.
struct Live {
    id: u64,
    outbox: Outbox,
    /// Woken to end the stream when its queue overflowed.
    kill: Arc<Notify>,
}

/// Live streams by user, and the last seq of each conversation.
#[derive(Default)]
struct Registry {
    streams: Mutex<HashMap<u64, Vec<Live>>>,
    seqs: Mutex<HashMap<String, u64>>,
    next_stream: AtomicU64,
    next_message: AtomicU64,
}

impl Registry {
    fn streams(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Vec<Live>>> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn next_seq(&self, conversation: &str) -> u64 {
        let mut seqs = self.seqs.lock().unwrap_or_else(|p| p.into_inner());
        let seq = seqs.entry(conversation.to_owned()).or_insert(0);
        *seq += 1;
        *seq
    }

    fn unregister(&self, user: u64, id: u64) {
        let mut streams = self.streams();
        if let Some(list) = streams.get_mut(&user) {
            list.retain(|s| s.id != id);
            if list.is_empty() {
                streams.remove(&user);
            }
        }
    }

    /// Queues `event` on every stream of the users `to` picks; a full queue ends that stream.
    fn deliver(&self, to: impl Fn(u64) -> bool, event: &ServerEvent) {
        let targets: Vec<(u64, u64, Outbox, Arc<Notify>)> = self
            .streams()
            .iter()
            .filter(|(user, _)| to(**user))
            .flat_map(|(user, list)| {
                list.iter()
                    .map(|s| (*user, s.id, s.outbox.clone(), s.kill.clone()))
            })
            .collect();
        for (user, id, outbox, kill) in targets {
            if let Err(mpsc::error::TrySendError::Full(_)) = outbox.try_send(Ok(event.clone())) {
                self.unregister(user, id);
                kill.notify_one();
            }
        }
    }
}

/// The relay service: Connect only.
#[derive(Clone, Default)]
pub struct Relay {
    registry: Arc<Registry>,
}

/// Serves the relay on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener) -> anyhow::Result<()> {
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(ChatServiceServer::new(Relay::default()).max_decoding_message_size(MAX_FRAME))
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

/// Who receives a message of `conversation` sent by `me`: `None` if `me` is not a member.
fn recipients(conversation: &str, me: u64) -> Option<Recipients> {
    if let Some(ids) = conversation.strip_prefix("dm:") {
        let (lo, hi) = ids.split_once(':')?;
        let (lo, hi): (u64, u64) = (lo.parse().ok()?, hi.parse().ok()?);
        return match me {
            m if m == lo => Some(Recipients::One(hi)),
            m if m == hi => Some(Recipients::One(lo)),
            _ => None,
        };
    }
    conversation
        .strip_prefix("g:")
        .and_then(|g| g.parse::<u64>().ok())
        .map(|_| Recipients::AllBut(me))
}

#[derive(Clone, Copy)]
enum Recipients {
    One(u64),
    AllBut(u64),
}

impl Relay {
    fn relay(&self, me: u64, send: v1::SendMessageRequest) -> Outcome {
        let Some(to) = recipients(&send.conversation_id, me) else {
            return Outcome::Error(ErrorStatus {
                code: tonic::Code::PermissionDenied as i32,
                message: "relay: not a member of this conversation".into(),
            });
        };
        let message = Message {
            message_id: self.registry.next_message.fetch_add(1, Ordering::Relaxed) + 1,
            seq: self.registry.next_seq(&send.conversation_id),
            conversation_id: send.conversation_id,
            sender_id: me,
            sender_device_id: me,
            client_msg_id: send.client_msg_id,
            content: send.content,
            created_at: Some(prost_types::Timestamp::from(SystemTime::now())),
        };
        let event = ServerEvent {
            event: Some(Event::Message(message.clone())),
        };
        match to {
            Recipients::One(user) => self.registry.deliver(|u| u == user, &event),
            Recipients::AllBut(sender) => self.registry.deliver(|u| u != sender, &event),
        }
        Outcome::Message(message)
    }

    async fn serve_inbound(
        self,
        me: u64,
        id: u64,
        own: Outbox,
        kill: Arc<Notify>,
        mut inbound: Streaming<ClientEvent>,
    ) {
        loop {
            let next = tokio::select! {
                () = kill.notified() => break,
                next = inbound.message() => next,
            };
            let event = match next {
                Ok(Some(ClientEvent { event: Some(e) })) => e,
                Ok(Some(ClientEvent { event: None })) => continue,
                Ok(None) | Err(_) => break,
            };
            let reply = match event {
                client_event::Event::Send(send) => {
                    let client_msg_id = send.client_msg_id.clone();
                    Event::SendResult(SendResult {
                        client_msg_id,
                        outcome: Some(self.relay(me, send)),
                    })
                }
                client_event::Event::Heartbeat(_) => Event::HeartbeatAck(HeartbeatAck {}),
                client_event::Event::Read(_) | client_event::Event::Typing(_) => continue,
            };
            let reply = ServerEvent { event: Some(reply) };
            if own.try_send(Ok(reply)).is_err() {
                break;
            }
        }
        self.registry.unregister(me, id);
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
        let (tx, rx) = mpsc::channel(OUTBOX);
        let ready = ServerEvent {
            event: Some(Event::Ready(SessionReady {
                user_id: me,
                device_id: me,
                server_id: "relay".into(),
            })),
        };
        tx.try_send(Ok(ready))
            .map_err(|_| Status::internal("relay: fresh queue refused an event"))?;
        let id = self.registry.next_stream.fetch_add(1, Ordering::Relaxed);
        let kill = Arc::new(Notify::new());
        self.registry.streams().entry(me).or_default().push(Live {
            id,
            outbox: tx.clone(),
            kill: kill.clone(),
        });
        tokio::spawn(
            self.clone()
                .serve_inbound(me, id, tx, kill, request.into_inner()),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_of_direct_and_group_conversations() {
        assert!(matches!(recipients("dm:1:2", 1), Some(Recipients::One(2))));
        assert!(matches!(recipients("dm:1:2", 2), Some(Recipients::One(1))));
        assert!(recipients("dm:1:2", 3).is_none());
        assert!(recipients("dm:x:2", 2).is_none());
        assert!(matches!(recipients("g:7", 3), Some(Recipients::AllBut(3))));
        assert!(recipients("q:7", 3).is_none());
    }
}
