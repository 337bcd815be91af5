//! How the gateway opens live sessions, whatever runs them: the embedded chat session layer
//! in `chatd`, or (standalone) a gRPC `Connect` stream to a chat server.

use std::{
    ops::Deref,
    pin::Pin,
    sync::{Arc, OnceLock},
};

use axum::body::Bytes;
use daehwa::v1::{ClientEvent, ServerEvent, SyncMessagesRequest, SyncMessagesResponse};
use futures::Stream;
use prost::Message as _;
use tokio::sync::mpsc;
use tonic::Status;

/// Events from the server, ending with an error status when the server closes the session.
pub type ServerEvents = Pin<Box<dyn Stream<Item = Result<Arc<SharedEvent>, Status>> + Send>>;

/// A server event as every session it goes to shares it: one allocation for all its
/// recipients, and its protobuf encoding made once, by the first stream (gRPC or
/// WebSocket) that sends it, then reused by the others (a message to a 10,000-member group
/// is encoded once, not 10,000 times). Reads as the [`ServerEvent`] it holds.
#[derive(Debug)]
pub struct SharedEvent {
    inner: ServerEvent,
    proto: OnceLock<Bytes>,
}

impl SharedEvent {
    /// Wraps `event` for sharing.
    pub fn new(event: ServerEvent) -> Arc<Self> {
        Arc::new(Self {
            inner: event,
            proto: OnceLock::new(),
        })
    }

    /// The protobuf encoding, made on first use.
    pub fn proto(&self) -> Bytes {
        self.encoding().clone()
    }

    /// The same encoding, borrowed: for a writer that copies it (a gRPC stream's buffer).
    pub fn encoding(&self) -> &Bytes {
        self.proto
            .get_or_init(|| Bytes::from(self.inner.encode_to_vec()))
    }

    /// The event itself: moved out when this is its last holder, cloned otherwise.
    pub fn into_event(self: Arc<Self>) -> ServerEvent {
        match Arc::try_unwrap(self) {
            Ok(shared) => shared.inner,
            Err(shared) => shared.inner.clone(),
        }
    }
}

impl Deref for SharedEvent {
    type Target = ServerEvent;

    fn deref(&self) -> &ServerEvent {
        &self.inner
    }
}

/// One live session: events out, client events in.
pub struct LiveSession {
    /// Server events, `ready` first.
    pub events: ServerEvents,
    /// Client events, handled in order; dropping it ends the client's half. Boxed: a channel
    /// allocates its first block of 32 slots up front, and an idle session should not pay
    /// 32 × 128 bytes for events it has not sent.
    pub client_events: mpsc::Sender<Box<ClientEvent>>,
}

/// Opens live sessions for authenticated clients.
#[async_trait::async_trait]
pub trait SessionPort: Send + Sync + 'static {
    /// Opens a session for the holder of `access_token` (without the `Bearer ` prefix).
    /// `UNAUTHENTICATED` for a bad token; `RESOURCE_EXHAUSTED` over the stream limit.
    async fn open(&self, access_token: &str) -> Result<LiveSession, Status>;

    /// `ChatService.SyncMessages` for the holder of `access_token` (long polling).
    async fn sync(
        &self,
        access_token: &str,
        request: SyncMessagesRequest,
    ) -> Result<SyncMessagesResponse, Status>;
}
