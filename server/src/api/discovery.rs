//! `chat.v1.DiscoveryService`: which chat server a user should connect to, from the registry's
//! live view of the cluster (on one machine: this server).

use std::sync::Arc;

use daehwa::v1::{self, discovery_service_server::DiscoveryService};
use tonic::{Request, Response, Status};

use super::ApiContext;
use crate::{
    auth::layer::caller,
    backend::{
        Registry,
        registry::{ROLE_CHAT, pick_chat_server},
    },
    error::Error,
};

/// Answers from the registry: every server answers the same for the same user.
pub struct DiscoveryApi {
    /// The live view of the cluster.
    pub registry: Arc<dyn Registry>,
    /// Metrics for error counting.
    pub ctx: ApiContext,
}

#[tonic::async_trait]
impl DiscoveryService for DiscoveryApi {
    async fn get_chat_server(
        &self,
        request: Request<v1::GetChatServerRequest>,
    ) -> Result<Response<v1::GetChatServerResponse>, Status> {
        let me = caller(&request)?;
        let servers = self.registry.servers();
        let Some(server) = pick_chat_server(&servers, me.user.0) else {
            return Err(super::status(
                &self.ctx.metrics,
                Error::unavailable("no chat server is available right now: retry shortly"),
            ));
        };
        Ok(Response::new(v1::GetChatServerResponse {
            server_id: server.server_id.clone(),
            grpc_endpoint: server.grpc_endpoint.clone(),
            websocket_url: server.websocket_url.clone(),
        }))
    }

    async fn list_chat_servers(
        &self,
        request: Request<v1::ListChatServersRequest>,
    ) -> Result<Response<v1::ListChatServersResponse>, Status> {
        caller(&request)?;
        let servers = self
            .registry
            .servers()
            .into_iter()
            .filter(|s| s.has_role(ROLE_CHAT))
            .map(|s| v1::ChatServer {
                server_id: s.server_id,
                grpc_endpoint: s.grpc_endpoint,
                websocket_url: s.websocket_url,
                connections: s.connections,
                healthy: true,
            })
            .collect();
        Ok(Response::new(v1::ListChatServersResponse { servers }))
    }
}
