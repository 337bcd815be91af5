//! How the gateway opens live sessions, whatever runs them: the embedded chat session layer
//! in `chatd`, or (standalone) a gRPC `Connect` stream to a chat server.

use std::pin::Pin;

use daehwa::v1::{ClientEvent, ServerEvent, SyncMessagesRequest, SyncMessagesResponse};
use futures::Stream;
use tokio::sync::mpsc;
use tonic::Status;

/// Events from the server, ending with an error status when the server closes the session.
pub type ServerEvents = Pin<Box<dyn Stream<Item = Result<ServerEvent, Status>> + Send>>;

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
