//! `chatd`: parses configuration, binds the gRPC listener and runs the server until SIGINT or
//! SIGTERM, then shuts down gracefully (streams are told, nothing acknowledged is lost).

use daehwa_server::{Config, run};
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::{EnvFilter, fmt};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let config = match Config::load() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("chatd: {e:#}");
            std::process::exit(2);
        }
    };
    let listener = daehwa_gateway::listen::bind(config.listen)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let mut terminate = signal(SignalKind::terminate())?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received: shutting down"),
            _ = terminate.recv() => tracing::info!("SIGTERM received: shutting down"),
        }
    };
    run(config, listener, shutdown).await
}
