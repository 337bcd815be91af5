//! The embedded gateway's [`SessionPort`]: WebSocket sessions authenticate with the same
//! [`Authenticator`] and run on the same [`LiveSessions`] as gRPC streams, in this process.

use std::sync::Arc;

use daehwa_gateway::{LiveSession, SessionPort};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use daehwa::v1::{ClientEvent, SyncMessagesRequest, SyncMessagesResponse};

use crate::{
    auth::Authenticator, metrics::Metrics, service::ChatService, session::live::LiveSessions,
};

/// Client events buffered per WebSocket before the socket reader waits.
const CLIENT_EVENT_QUEUE: usize = 64;

/// Opens gateway sessions on this server's live sessions.
pub struct GatewaySessions {
    pub auth: Arc<Authenticator>,
    pub chat: Arc<ChatService>,
    pub live: Arc<LiveSessions>,
    pub metrics: Arc<Metrics>,
}

#[async_trait::async_trait]
impl SessionPort for GatewaySessions {
    async fn open(&self, access_token: &str) -> Result<LiveSession, Status> {
        let count = |e: crate::error::Error| {
            self.metrics.count_error(e.code());
            e.into_status()
        };
        let me = self
            .auth
            .authenticate(Some(&format!("Bearer {access_token}")))
            .await
            .map_err(count)?;
        let (client_events, rx) = mpsc::channel(CLIENT_EVENT_QUEUE);
        let events = self
            .live
            .connect(
                me,
                ReceiverStream::new(rx).map(|event: Box<ClientEvent>| Ok(*event)),
            )
            .await
            .map_err(count)?;
        Ok(LiveSession {
            events,
            client_events,
        })
    }

    async fn sync(
        &self,
        access_token: &str,
        request: SyncMessagesRequest,
    ) -> Result<SyncMessagesResponse, Status> {
        let count = |e: crate::error::Error| {
            self.metrics.count_error(e.code());
            e.into_status()
        };
        let me = self
            .auth
            .authenticate(Some(&format!("Bearer {access_token}")))
            .await
            .map_err(count)?;
        let cursors: Vec<(String, u64)> = request
            .cursors
            .into_iter()
            .map(|c| (c.conversation_id, c.after_seq))
            .collect();
        let (messages, has_more) = self
            .chat
            .sync(me.user, &cursors, request.limit)
            .await
            .map_err(count)?;
        Ok(SyncMessagesResponse { messages, has_more })
    }
}
