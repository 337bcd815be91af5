//! The live session of one device, whatever carries it (a gRPC Connect or Subscribe stream,
//! or a gateway WebSocket): register in the hub (and its route, in a cluster), queue `ready`,
//! then read client events in order. Sends the client already has in flight are taken
//! together and committed together, in order; each `send` is persisted before its
//! `send_result` is queued, so results arrive in the order the sends were made.

use std::{ops::ControlFlow, sync::Arc};

use daehwa::v1::{
    ClientEvent, ErrorStatus, HeartbeatAck, SendResult, ServerEvent, SessionReady, client_event,
    send_result::Outcome, server_event::Event,
};
use futures::{FutureExt, Stream, StreamExt};
use tonic::Status;

use crate::{
    auth::AuthContext,
    error::Result,
    metrics::Metrics,
    service::{ChatService, PresenceService, chat::SendRequest, delivery::Delivery},
    session::{CloseReason, Hub, SharedEvent, hub::Session, outbound::response_stream},
};

/// Client events a stream hands over at once (its sends committed together).
const MAX_PIPELINE: usize = 64;

/// The server-to-client half of a live session (the gateway's WebSockets send it as it is;
/// gRPC streams take each event out, see `api::chat`).
pub type SharedEventStream = daehwa_gateway::port::ServerEvents;

/// Opens live sessions on this server.
pub struct LiveSessions {
    chat: Arc<ChatService>,
    presence: Arc<PresenceService>,
    delivery: Arc<Delivery>,
    hub: Arc<Hub>,
    server_id: String,
    metrics: Arc<Metrics>,
}

impl LiveSessions {
    /// Live sessions registered in `delivery`'s hub and handling events with `chat`.
    pub fn new(
        chat: Arc<ChatService>,
        presence: Arc<PresenceService>,
        delivery: Arc<Delivery>,
        server_id: String,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            chat,
            presence,
            hub: delivery.hub().clone(),
            delivery,
            server_id,
            metrics,
        }
    }

    /// A receive-only session (Subscribe).
    pub async fn subscribe(&self, me: AuthContext) -> Result<SharedEventStream> {
        self.open(me).await.map(|(_, stream)| stream)
    }

    /// A two-way session: `inbound` client events are handled in order by a task that ends
    /// when the client stops sending or the session closes.
    pub async fn connect<S>(&self, me: AuthContext, inbound: S) -> Result<SharedEventStream>
    where
        S: Stream<Item = std::result::Result<ClientEvent, Status>> + Send + Unpin + 'static,
    {
        let (session, stream) = self.open(me).await?;
        tokio::spawn(serve_inbound(
            me,
            session,
            inbound,
            self.chat.clone(),
            self.presence.clone(),
        ));
        Ok(stream)
    }

    /// Registers a session (in the hub, then its route in a cluster) and returns its
    /// response stream, with `ready` queued first. A route that cannot be written (Redis
    /// down) is logged: the session works, and the refresh writes the route when Redis is
    /// back.
    async fn open(&self, me: AuthContext) -> Result<(Arc<Session>, SharedEventStream)> {
        let ready = SharedEvent::new(ServerEvent {
            event: Some(Event::Ready(SessionReady {
                user_id: me.user.0,
                device_id: me.device.0,
                server_id: self.server_id.clone(),
            })),
        });
        // `ready` is first in the outbox; the client sees it only once this returns, after
        // the route is written.
        let (handle, outbox) = self.hub.register(me.user, me.device, ready)?;
        if let Err(e) = self.delivery.route_opened(me.user).await {
            tracing::warn!(user_id = %me.user, error = %e, "cannot record the stream's route");
        }
        let session = handle.session().clone();
        Ok((
            session,
            Box::pin(response_stream(handle, outbox, self.metrics.clone())),
        ))
    }
}

/// Reads client events until the client stops or the session closes.
///
/// An idle session is this task parked on its next event, so its state machine is memory per
/// connection: the handling of what arrived (stores, fan-out, reads) runs in a boxed future
/// that exists only while it runs.
async fn serve_inbound<S>(
    me: AuthContext,
    session: Arc<Session>,
    mut inbound: S,
    chat: Arc<ChatService>,
    presence: Arc<PresenceService>,
) where
    S: Stream<Item = std::result::Result<ClientEvent, Status>> + Send + Unpin,
{
    loop {
        let first = tokio::select! {
            () = session.closed() => return,
            next = inbound.next() => next,
        };
        // Take what else the client has already sent, without waiting, so that sends in
        // flight are committed together (in order) instead of one durable commit each.
        let mut ready = vec![first];
        while ready.len() < MAX_PIPELINE
            && matches!(ready.last(), Some(Some(Ok(_))))
            && let Some(next) = inbound.next().now_or_never()
        {
            ready.push(next);
        }
        if Box::pin(handle_ready(me, &session, &chat, &presence, ready))
            .await
            .is_break()
        {
            return;
        }
    }
}

/// Handles client events in the order they were sent; breaks when the client's half ended.
async fn handle_ready(
    me: AuthContext,
    session: &Session,
    chat: &ChatService,
    presence: &PresenceService,
    ready: Vec<Option<std::result::Result<ClientEvent, Status>>>,
) -> ControlFlow<()> {
    let mut sends = Vec::new();
    for next in ready {
        let event = match next {
            Some(Ok(ClientEvent { event: Some(event) })) => event,
            Some(Ok(ClientEvent { event: None })) => continue,
            None => {
                flush_sends(me, session, chat, &mut sends).await;
                return ControlFlow::Break(());
            }
            Some(Err(e)) => {
                flush_sends(me, session, chat, &mut sends).await;
                tracing::debug!(user_id = %me.user, error = %e, "client stream ended with an error");
                match e.code() {
                    tonic::Code::Cancelled => {}
                    tonic::Code::OutOfRange | tonic::Code::ResourceExhausted => {
                        session.close(CloseReason::TooLarge)
                    }
                    _ => session.close(CloseReason::Invalid),
                }
                return ControlFlow::Break(());
            }
        };
        presence.touch(me.user);
        if let client_event::Event::Send(send) = event {
            sends.push(SendRequest {
                client_msg_id: send.client_msg_id,
                conversation: send.conversation_id,
                content: send.content,
            });
            continue;
        }
        // Anything else is handled after the sends before it, in the order sent.
        flush_sends(me, session, chat, &mut sends).await;
        match event {
            // Queued above, never here.
            client_event::Event::Send(_) => {}
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
                session.offer(SharedEvent::new(ServerEvent {
                    event: Some(Event::HeartbeatAck(HeartbeatAck {})),
                }));
            }
        }
    }
    flush_sends(me, session, chat, &mut sends).await;
    ControlFlow::Continue(())
}

/// Stores and delivers the queued sends (in order, committed together), then queues their
/// `send_result`s in the same order.
async fn flush_sends(
    me: AuthContext,
    session: &Session,
    chat: &ChatService,
    sends: &mut Vec<SendRequest>,
) {
    if sends.is_empty() {
        return;
    }
    let batch = std::mem::take(sends);
    let ids: Vec<String> = batch.iter().map(|s| s.client_msg_id.clone()).collect();
    let outcomes = chat.send_many(me, batch).await;
    for (client_msg_id, outcome) in ids.into_iter().zip(outcomes) {
        let outcome = match outcome {
            Ok(message) => Outcome::Message(message),
            Err(e) => Outcome::Error(ErrorStatus {
                code: e.code() as i32,
                message: e.public_message(),
            }),
        };
        session.offer(SharedEvent::new(ServerEvent {
            event: Some(Event::SendResult(SendResult {
                client_msg_id,
                outcome: Some(outcome),
            })),
        }));
    }
}
