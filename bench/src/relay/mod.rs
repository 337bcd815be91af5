//! The ceiling: a bare relay speaking Daehwa's live-session protocol with no
//! authentication, no persistence and no limits beyond a bounded queue per session, over
//! both transports chatd offers:
//! - [`grpc`]: a bare tonic `chat.v1.ChatService/Connect` (beside chatd's own);
//! - [`ws`]: a bare axum WebSocket at `/v1/ws` (beside the gateway's), binary protobuf
//!   frames.
//!
//! It runs as a child process (`chat-bench relay-server`, one port per transport) so that
//! its CPU and memory are measured apart from the load generator's, like chatd's.
//!
//! Identity: the token is the user id itself (`authorization: Bearer 42`, or
//! `/v1/ws?access_token=42`), so the load generator drives both servers with the same code.
//! A `send` is answered with a `send_result` carrying the relayed message, and the message
//! goes as a `message` event to every session of the conversation's other member
//! (`dm:<lo>:<hi>`) or, for a group id (`g:<n>`), to every session of every other connected
//! user. Seq is counted per conversation so the exactly-once check works as it does against
//! chatd. The routing, the seqs and the session registry ([`Relay`], [`Attached`]) are
//! shared by both transports (and so are the sessions: a gRPC session may message a
//! WebSocket one); each transport only moves events in and out.

pub mod grpc;
pub mod ws;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::SystemTime,
};

use daehwa::v1::{
    self, ClientEvent, ErrorStatus, HeartbeatAck, Message, SendResult, ServerEvent, SessionReady,
    client_event, send_result::Outcome, server_event::Event,
};
use tokio::sync::{Notify, mpsc};

/// Events queued per session before the relay gives up on a reader (as chatd's default).
const OUTBOX: usize = 1024;
/// Largest frame accepted, as chatd's default (64 KiB content plus envelope).
const MAX_FRAME: usize = 128 * 1024;

/// A session's queue of server events, drained by its transport.
type Outbox = mpsc::Sender<ServerEvent>;

/// One open session.
struct Live {
    id: u64,
    outbox: Outbox,
    /// Woken to end the session when its queue overflowed.
    kill: Arc<Notify>,
}

/// Live sessions by user, and the last seq of each conversation.
#[derive(Default)]
struct Registry {
    sessions: Mutex<HashMap<u64, Vec<Live>>>,
    seqs: Mutex<HashMap<String, u64>>,
    next_session: AtomicU64,
    next_message: AtomicU64,
}

impl Registry {
    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Vec<Live>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn next_seq(&self, conversation: &str) -> u64 {
        let mut seqs = self.seqs.lock().unwrap_or_else(|p| p.into_inner());
        let seq = seqs.entry(conversation.to_owned()).or_insert(0);
        *seq += 1;
        *seq
    }

    fn unregister(&self, user: u64, id: u64) {
        let mut sessions = self.sessions();
        if let Some(list) = sessions.get_mut(&user) {
            list.retain(|s| s.id != id);
            if list.is_empty() {
                sessions.remove(&user);
            }
        }
    }

    /// Queues `event` on every session of the users `to` picks; a full queue ends that
    /// session.
    fn deliver(&self, to: impl Fn(u64) -> bool, event: &ServerEvent) {
        let targets: Vec<(u64, u64, Outbox, Arc<Notify>)> = self
            .sessions()
            .iter()
            .filter(|(user, _)| to(**user))
            .flat_map(|(user, list)| {
                list.iter()
                    .map(|s| (*user, s.id, s.outbox.clone(), s.kill.clone()))
            })
            .collect();
        for (user, id, outbox, kill) in targets {
            if let Err(mpsc::error::TrySendError::Full(_)) = outbox.try_send(event.clone()) {
                self.unregister(user, id);
                kill.notify_one();
            }
        }
    }
}

/// The relay's shared state: every transport's sessions and the seqs. Cheap to clone.
#[derive(Clone, Default)]
pub struct Relay {
    registry: Arc<Registry>,
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
    /// Registers a new session of user `me` with `ready` already queued; the transport
    /// sends what arrives on the returned receiver and hands client events to the
    /// [`Attached`] (which unregisters the session when dropped).
    fn attach(&self, me: u64) -> (Attached, mpsc::Receiver<ServerEvent>) {
        let (tx, rx) = mpsc::channel(OUTBOX);
        let ready = ServerEvent {
            event: Some(Event::Ready(SessionReady {
                user_id: me,
                device_id: me,
                server_id: "relay".into(),
            })),
        };
        // A fresh queue has room.
        let _ = tx.try_send(ready);
        let id = self.registry.next_session.fetch_add(1, Ordering::Relaxed);
        let kill = Arc::new(Notify::new());
        self.registry.sessions().entry(me).or_default().push(Live {
            id,
            outbox: tx.clone(),
            kill: kill.clone(),
        });
        let attached = Attached {
            relay: self.clone(),
            me,
            id,
            own: tx,
            kill,
        };
        (attached, rx)
    }

    /// Relays one `send` of `me`: the message to its recipients, the outcome to the sender.
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
}

/// One registered session as its transport's reader holds it: answers client events and
/// unregisters the session when dropped.
struct Attached {
    relay: Relay,
    me: u64,
    id: u64,
    /// The session's own outbox, for answers to its client events.
    own: Outbox,
    /// Notified when a full outbox ended the session.
    kill: Arc<Notify>,
}

impl Attached {
    /// Handles one client event (a `send` is relayed, a heartbeat acknowledged, the rest
    /// ignored) and queues the answer; `false` once the session must end (its outbox is
    /// full or gone).
    fn handle(&self, event: ClientEvent) -> bool {
        let reply = match event.event {
            Some(client_event::Event::Send(send)) => {
                let client_msg_id = send.client_msg_id.clone();
                Event::SendResult(SendResult {
                    client_msg_id,
                    outcome: Some(self.relay.relay(self.me, send)),
                })
            }
            Some(client_event::Event::Heartbeat(_)) => Event::HeartbeatAck(HeartbeatAck {}),
            Some(client_event::Event::Read(_) | client_event::Event::Typing(_)) | None => {
                return true;
            }
        };
        self.own
            .try_send(ServerEvent { event: Some(reply) })
            .is_ok()
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.relay.registry.unregister(self.me, self.id);
    }
}

/// Serves the relay until the process ends: gRPC on `grpc`, WebSocket on `ws`, one shared
/// registry.
pub async fn serve(
    grpc: tokio::net::TcpListener,
    ws: tokio::net::TcpListener,
) -> anyhow::Result<()> {
    let relay = Relay::default();
    tokio::try_join!(grpc::serve(grpc, relay.clone()), ws::serve(ws, relay))?;
    Ok(())
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

    #[tokio::test]
    async fn relays_between_sessions_and_counts_seqs() {
        let relay = Relay::default();
        let (alice, mut alice_rx) = relay.attach(1);
        let (_bob, mut bob_rx) = relay.attach(2);
        for rx in [&mut alice_rx, &mut bob_rx] {
            assert!(matches!(
                rx.try_recv().map(|e| e.event),
                Ok(Some(Event::Ready(_)))
            ));
        }
        for expected in 1..=2 {
            let send = daehwa::v1::client_event::Event::Send(v1::SendMessageRequest {
                client_msg_id: format!("c{expected}"),
                conversation_id: "dm:1:2".into(),
                content: None,
            });
            assert!(alice.handle(ClientEvent { event: Some(send) }));
            let Ok(Some(Event::SendResult(result))) = alice_rx.try_recv().map(|e| e.event) else {
                panic!("no send_result");
            };
            assert!(matches!(result.outcome, Some(Outcome::Message(m)) if m.seq == expected));
            let Ok(Some(Event::Message(m))) = bob_rx.try_recv().map(|e| e.event) else {
                panic!("no message");
            };
            assert_eq!(m.seq, expected);
        }
        drop(alice);
        assert!(!relay.registry.sessions().contains_key(&1));
    }
}
