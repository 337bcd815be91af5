//! Wiring: opens the backends, builds the services and their gRPC adapters, serves them on a
//! listener, and runs the shutdown sequence:
//! health NOT_SERVING → refuse new streams and end every live stream with `UNAVAILABLE` →
//! stop accepting and drain requests (bounded by `shutdown_grace`) → stop background tasks →
//! close the push queue and the message store.
//! Every acknowledged message is already durable, so nothing acknowledged can be lost here.

use std::{future::Future, sync::Arc};

use anyhow::Context;
use daehwa::v1::{
    auth_service_server::AuthServiceServer, chat_service_server::ChatServiceServer,
    discovery_service_server::DiscoveryServiceServer, group_service_server::GroupServiceServer,
    presence_service_server::PresenceServiceServer, user_service_server::UserServiceServer,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{
    service::Routes,
    transport::{Server, server::TcpIncoming},
};
use tonic_health::ServingStatus;

use crate::{
    api::{
        ApiContext, auth::AuthApi, chat::ChatApi, discovery::DiscoveryApi,
        gateway::GatewaySessions, group::GroupApi, presence::PresenceApi, user::UserApi,
    },
    auth::{Authenticator, TokenSigner, layer::AuthLayer},
    backend::{
        Backends, Directory, MessageStore, Push,
        embedded::EmbeddedStore,
        postgres::{PostgresDirectory, PostgresMessageStore},
        push::NoPush,
        sqlite::SqliteDirectory,
        webhook::{WebhookConfig, WebhookPush},
    },
    config::{Config, DirectoryBackend, StoreBackend},
    metrics::{self, Metrics},
    service::{
        AccountService, ChatService, GroupService, PeopleService, PresenceService,
        chat::ChatLimits, rate_limit::RateLimiter,
    },
    session::{CloseReason, Hub, live::LiveSessions},
    snowflake::{self, Snowflake},
};

/// The gRPC service names, for health reporting.
const SERVICE_NAMES: &[&str] = &[
    "chat.v1.AuthService",
    "chat.v1.UserService",
    "chat.v1.GroupService",
    "chat.v1.ChatService",
    "chat.v1.PresenceService",
    "chat.v1.DiscoveryService",
];

/// Opens the embedded backends in `config.data_dir`.
pub async fn open_backends(config: &Config) -> anyhow::Result<Backends> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
    let directory: Arc<dyn Directory> = match config.directory_backend()? {
        DirectoryBackend::Sqlite(path) => Arc::new(
            SqliteDirectory::open(&path)
                .await
                .map_err(|e| anyhow::anyhow!("cannot open directory: {e}"))?,
        ),
        DirectoryBackend::Postgres(url) => Arc::new(
            PostgresDirectory::connect(&url)
                .await
                .map_err(|e| anyhow::anyhow!("cannot open directory: {e}"))?,
        ),
    };
    let messages: Arc<dyn MessageStore> = match config.store_backend()? {
        StoreBackend::Embedded(path) => Arc::new(
            EmbeddedStore::open(&path)
                .map_err(|e| anyhow::anyhow!("cannot open message store: {e}"))?,
        ),
        StoreBackend::Postgres(url) => Arc::new(
            PostgresMessageStore::connect(&url)
                .await
                .map_err(|e| anyhow::anyhow!("cannot open message store: {e}"))?,
        ),
    };
    let push: Arc<dyn Push> = match &config.push_webhook_url {
        Some(url) => {
            let webhook = WebhookConfig {
                include_text: config.push_include_text,
                ..WebhookConfig::new(url.clone())
            };
            Arc::new(
                WebhookPush::start(webhook)
                    .map_err(|e| anyhow::anyhow!("bad push webhook: {e}"))?,
            )
        }
        None => Arc::new(NoPush),
    };
    Ok(Backends {
        directory,
        messages,
        push,
    })
}

/// Runs a server on `listener` until `shutdown` resolves, then shuts down gracefully.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    config.validate()?;
    let backends = open_backends(&config).await?;
    let bound = listener.local_addr()?;
    let background = CancellationToken::new();
    let metrics = Metrics::new();
    if let Some(addr) = config.metrics_listen {
        let token = background.clone();
        let addr = metrics::serve(
            metrics.clone(),
            addr,
            async move { token.cancelled().await },
        )
        .await?;
        tracing::info!(%addr, "metrics listening");
    }

    let key_file = config
        .signing_key_file
        .clone()
        .unwrap_or_else(|| config.data_dir.join("signing.key"));
    let signer = TokenSigner::load_or_create(&key_file)?;
    let auth = Arc::new(Authenticator::new(
        signer,
        backends.directory.clone(),
        config.access_token_ttl,
    ));
    let hub = Hub::new(
        config.max_streams_per_user,
        config.outbox_capacity,
        metrics.clone(),
    );
    let presence = PresenceService::start(
        backends.directory.clone(),
        hub.clone(),
        config.offline_after,
        config.heartbeat_interval,
        config.outbox_capacity,
        config.max_streams_per_user,
        background.clone(),
    );
    let presence_for_shutdown = presence.clone();
    let floor_file = config.data_dir.join("snowflake.floor");
    let message_ids =
        Snowflake::new(config.worker_id).with_floor(snowflake::read_floor(&floor_file)?);
    snowflake::keep_floor_ahead(floor_file, background.clone()).await?;
    let accounts = Arc::new(AccountService::new(
        backends.directory.clone(),
        auth.clone(),
        hub.clone(),
        presence.clone(),
        config.access_token_ttl,
        config.refresh_token_ttl,
    ));
    let people = Arc::new(PeopleService::new(
        backends.directory.clone(),
        presence.clone(),
    ));
    let groups = Arc::new(GroupService::new(
        backends.directory.clone(),
        config.max_group_members,
    ));
    let limits = ChatLimits {
        max_content_bytes: config.max_content_bytes,
        max_page_size: config.max_page_size,
        push_include_text: config.push_include_text,
    };
    let chat = Arc::new(ChatService::new(
        backends.clone(),
        hub.clone(),
        message_ids,
        RateLimiter::new(config.send_rate, config.send_burst),
        limits,
        metrics.clone(),
    ));

    let live = Arc::new(LiveSessions::new(
        chat.clone(),
        presence.clone(),
        hub.clone(),
        config.server_id.clone(),
        metrics.clone(),
    ));
    let ctx = ApiContext {
        metrics: metrics.clone(),
    };
    let max = config.max_request_bytes();
    let grpc_endpoint = config
        .advertise
        .clone()
        .unwrap_or_else(|| bound.to_string());
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    for name in SERVICE_NAMES.iter().chain(&[""]) {
        health_reporter
            .set_service_status(*name, ServingStatus::Serving)
            .await;
    }
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(daehwa::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(daehwa::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let gateway_listener = match config.gateway_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} for the gateway"))?,
        ),
        None => None,
    };
    let websocket_url = match &gateway_listener {
        Some(listener) => format!("ws://{}/v1/ws", listener.local_addr()?),
        None => String::new(),
    };
    let routes = Routes::new(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            AuthServiceServer::new(AuthApi {
                accounts,
                ctx: ctx.clone(),
            })
            .max_decoding_message_size(max),
        )
        .add_service(
            UserServiceServer::new(UserApi {
                people,
                ctx: ctx.clone(),
            })
            .max_decoding_message_size(max),
        )
        .add_service(
            GroupServiceServer::new(GroupApi {
                groups,
                ctx: ctx.clone(),
            })
            .max_decoding_message_size(max),
        )
        .add_service(
            ChatServiceServer::new(ChatApi {
                chat: chat.clone(),
                presence: presence.clone(),
                live: live.clone(),
                ctx: ctx.clone(),
            })
            .max_decoding_message_size(max),
        )
        .add_service(
            PresenceServiceServer::new(PresenceApi {
                presence,
                heartbeat_interval: config.heartbeat_interval,
                ctx: ctx.clone(),
            })
            .max_decoding_message_size(max),
        )
        .add_service(DiscoveryServiceServer::new(DiscoveryApi {
            server_id: config.server_id.clone(),
            grpc_endpoint,
            websocket_url,
            hub: hub.clone(),
            ctx,
        }));
    let auth_layer = AuthLayer::new(auth.clone(), metrics.clone());
    let stop_accepting = CancellationToken::new();
    if let Some(listener) = gateway_listener {
        let port = Arc::new(GatewaySessions {
            auth: auth.clone(),
            chat: chat.clone(),
            live: live.clone(),
            metrics: metrics.clone(),
        });
        let grpc = tower::Layer::layer(&auth_layer, routes.clone().prepare());
        let router = daehwa_gateway::router(port, grpc, &gateway_config(&config));
        let addr = listener.local_addr()?;
        let stop = stop_accepting.clone();
        tokio::spawn(async move {
            if let Err(e) = daehwa_gateway::serve(listener, router, stop.cancelled_owned()).await {
                tracing::error!(error = %e, "gateway stopped");
            }
        });
        tracing::info!(%addr, "gateway listening");
    }
    let router = Server::builder().layer(auth_layer).add_routes(routes);

    tracing::info!(addr = %bound, server_id = %config.server_id, data_dir = %config.data_dir.display(), "chatd serving");
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let serve =
        router.serve_with_incoming_shutdown(incoming, stop_accepting.clone().cancelled_owned());
    tokio::pin!(serve);
    tokio::select! {
        result = &mut serve => result.context("gRPC server failed")?,
        () = shutdown => {
            tracing::info!("shutting down: closing streams");
            for name in SERVICE_NAMES.iter().chain(&[""]) {
                health_reporter.set_service_status(*name, ServingStatus::NotServing).await;
            }
            hub.close_all(CloseReason::Shutdown);
            presence_for_shutdown.close_all();
            stop_accepting.cancel();
            match tokio::time::timeout(config.shutdown_grace, &mut serve).await {
                Ok(result) => result.context("gRPC server failed during shutdown")?,
                Err(_) => tracing::warn!(grace = ?config.shutdown_grace, "shutdown grace expired with requests still running"),
            }
        }
    }
    background.cancel();
    backends.push.close().await;
    backends.directory.close().await;
    backends
        .messages
        .close()
        .await
        .map_err(|e| anyhow::anyhow!("closing message store: {e}"))?;
    tracing::info!("chatd stopped");
    Ok(())
}

/// The embedded gateway's settings.
fn gateway_config(config: &Config) -> daehwa_gateway::GatewayConfig {
    daehwa_gateway::GatewayConfig {
        allowed_origins: config.gateway_allowed_origins.clone(),
        max_frame_bytes: config.max_request_bytes(),
        ..daehwa_gateway::GatewayConfig::default()
    }
}
