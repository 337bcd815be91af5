//! `chat.v1.PresenceService`.

use std::{pin::Pin, sync::Arc, time::Duration};

use daehwa::v1::{self, PresenceEvent, presence_service_server::PresenceService as PresenceRpc};
use futures::{Stream, stream};
use tonic::{Request, Response, Status};

use super::{ApiContext, reply, status};
use crate::{
    auth::{layer::caller, tokens::now_ms},
    ids::UserId,
    service::{PresenceService, presence::timestamp},
};

/// Adapter for [`PresenceService`].
pub struct PresenceApi {
    pub presence: Arc<PresenceService>,
    pub heartbeat_interval: Duration,
    pub ctx: ApiContext,
}

fn to_presence(e: PresenceEvent) -> v1::Presence {
    v1::Presence {
        user_id: e.user_id,
        status: e.status,
        last_active_at: e.last_active_at,
    }
}

#[tonic::async_trait]
impl PresenceRpc for PresenceApi {
    type WatchPresenceStream = Pin<Box<dyn Stream<Item = Result<PresenceEvent, Status>> + Send>>;

    async fn heartbeat(
        &self,
        request: Request<v1::HeartbeatRequest>,
    ) -> Result<Response<v1::HeartbeatResponse>, Status> {
        let me = caller(&request)?;
        self.presence.touch(me.user);
        let next = now_ms() + self.heartbeat_interval.as_millis() as i64;
        Ok(Response::new(v1::HeartbeatResponse {
            next_heartbeat_at: Some(timestamp(next)),
        }))
    }

    async fn get_presence(
        &self,
        request: Request<v1::GetPresenceRequest>,
    ) -> Result<Response<v1::GetPresenceResponse>, Status> {
        let me = caller(&request)?;
        let ids: Vec<UserId> = request
            .into_inner()
            .user_ids
            .into_iter()
            .map(UserId)
            .collect();
        let result = self.presence.presence_for(me.user, &ids).await;
        reply(
            &self.ctx.metrics,
            result.map(|list| v1::GetPresenceResponse {
                presences: list.into_iter().map(to_presence).collect(),
            }),
        )
    }

    async fn watch_presence(
        &self,
        request: Request<v1::WatchPresenceRequest>,
    ) -> Result<Response<Self::WatchPresenceStream>, Status> {
        let me = caller(&request)?;
        let ids: Vec<UserId> = request
            .into_inner()
            .user_ids
            .into_iter()
            .map(UserId)
            .collect();
        let handle = self
            .presence
            .watch(me.user, &ids)
            .await
            .map_err(|e| status(&self.ctx.metrics, e))?;
        let stream = stream::unfold(Some(handle), |handle| async move {
            let mut handle = handle?;
            let too_slow = handle.too_slow.clone();
            let closing = handle.closing.clone();
            tokio::select! {
                biased;
                () = closing.cancelled() => Some((Err(Status::unavailable("server shutting down: reconnect")), None)),
                () = too_slow.cancelled() => Some((Err(Status::resource_exhausted("presence stream closed: too slow; reconnect")), None)),
                event = handle.next() => event.map(|e| (Ok(e), Some(handle))),
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
