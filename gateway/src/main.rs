//! `chat-gateway`: the gateway as its own process in front of a cluster (or one chat server),
//! for when browsers' traffic should scale apart from the chat servers. (`chatd` embeds the
//! same gateway by default.)

use std::{sync::Arc, time::Duration};

use clap::Parser;
use daehwa_gateway::{
    GatewayConfig,
    remote::{ChatServers, RemotePort, UpstreamProxy},
};
use tokio::signal::unix::{SignalKind, signal};
use tonic::transport::Endpoint;
use tracing_subscriber::{EnvFilter, fmt};

/// Command-line flags; each also reads `DAEHWA_<NAME>`.
#[derive(Debug, Parser)]
#[command(
    name = "chat-gateway",
    version,
    about = "Daehwa gateway: WebSocket, gRPC-web and long polling in front of a chat server"
)]
struct Flags {
    /// Where to listen.
    #[arg(long, env = "DAEHWA_GATEWAY_LISTEN", default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    /// gRPC URL of a server with the api role (or of a single chatd). Each user's live
    /// session goes to the chat server Discovery names for them there.
    #[arg(
        long,
        env = "DAEHWA_UPSTREAM",
        default_value = "http://127.0.0.1:50051",
        conflicts_with = "registry"
    )]
    upstream: String,
    /// Instead of --upstream: the cluster's etcd (`etcd://HOST:PORT[,HOST:PORT...]`); the
    /// gateway balances over every registered api server.
    #[arg(long, env = "DAEHWA_REGISTRY")]
    registry: Option<String>,
    /// Comma-separated origins allowed to use gRPC-web cross-origin (`*`: any).
    #[arg(long, env = "DAEHWA_GATEWAY_ALLOWED_ORIGINS", value_delimiter = ',')]
    allowed_origins: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let flags = Flags::parse();
    let (channel, upstream) = match &flags.registry {
        Some(url) => (
            daehwa_gateway::registry::api_servers(daehwa_gateway::registry::etcd_endpoints(url)?)
                .await?,
            url.clone(),
        ),
        None => (
            Endpoint::from_shared(flags.upstream.clone())
                .map_err(|e| anyhow::anyhow!("bad --upstream {:?}: {e}", flags.upstream))?
                .connect_timeout(Duration::from_secs(5))
                .tcp_nodelay(true)
                .connect_lazy(),
            flags.upstream.clone(),
        ),
    };
    let config = GatewayConfig {
        allowed_origins: flags.allowed_origins,
        ..GatewayConfig::default()
    };
    let servers = ChatServers::new(channel);
    let router = daehwa_gateway::router(
        Arc::new(RemotePort::new(servers.clone())),
        UpstreamProxy::new(servers),
        &config,
    );
    let listener = daehwa_gateway::listen::bind(flags.listen)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", flags.listen))?;
    tracing::info!(addr = %listener.local_addr()?, %upstream, "chat-gateway listening");
    let mut terminate = signal(SignalKind::terminate())?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        tracing::info!("shutting down");
    };
    daehwa_gateway::serve(listener, router, shutdown).await?;
    Ok(())
}
