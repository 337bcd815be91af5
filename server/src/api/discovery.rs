//! `chat.v1.DiscoveryService`. On one machine the answer is always this server; the
//! scale-out registry will answer from the live set of chat servers.

use std::sync::Arc;

use daehwa::v1::{self, discovery_service_server::DiscoveryService};
use tonic::{Request, Response, Status};

use super::ApiContext;
use crate::{auth::layer::caller, session::Hub};

/// This server as the one chat server.
pub struct DiscoveryApi {
    pub server_id: String,
    pub grpc_endpoint: String,
    pub websocket_url: String,
    pub hub: Arc<Hub>,
    pub ctx: ApiContext,
}

#[tonic::async_trait]
impl DiscoveryService for DiscoveryApi {
    async fn get_chat_server(
        &self,
        request: Request<v1::GetChatServerRequest>,
    ) -> Result<Response<v1::GetChatServerResponse>, Status> {
        caller(&request)?;
        Ok(Response::new(v1::GetChatServerResponse {
            server_id: self.server_id.clone(),
            grpc_endpoint: self.grpc_endpoint.clone(),
            websocket_url: self.websocket_url.clone(),
        }))
    }

    async fn list_chat_servers(
        &self,
        request: Request<v1::ListChatServersRequest>,
    ) -> Result<Response<v1::ListChatServersResponse>, Status> {
        caller(&request)?;
        Ok(Response::new(v1::ListChatServersResponse {
            servers: vec![v1::ChatServer {
                server_id: self.server_id.clone(),
                grpc_endpoint: self.grpc_endpoint.clone(),
                websocket_url: self.websocket_url.clone(),
                connections: self.hub.connections() as u64,
                healthy: true,
            }],
        }))
    }
}
