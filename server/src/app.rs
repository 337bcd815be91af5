//! Wiring: opens the backends, builds the services and their gRPC adapters, serves them on a
//! listener, and runs the shutdown sequence:
//! health NOT_SERVING → refuse new streams and end every live stream with `UNAVAILABLE` →
//! stop accepting and drain requests (bounded by `shutdown_grace`) → stop background tasks →
//! close the push queue and the message store.
//! Every acknowledged message is already durable, so nothing acknowledged can be lost here.

use std::{future::Future, sync::Arc};

use anyhow::Context;
use daehwa::v1::{
    auth_service_server::AuthServiceServer, discovery_service_server::DiscoveryServiceServer,
    group_service_server::GroupServiceServer, presence_service_server::PresenceServiceServer,
    user_service_server::UserServiceServer,
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
        gateway::GatewaySessions, group::GroupApi, live_routes::ChatRoutes, presence::PresenceApi,
        user::UserApi,
    },
    auth::{Authenticator, TokenSigner, layer::AuthLayer},
    backend::{
        Backends, Bus, Directory, MessageStore, PresenceStore, Push, Registry,
        bus::LocalBus,
        embedded::EmbeddedStore,
        etcd::{EtcdOptions, EtcdRegistry},
        postgres::{PostgresDirectory, PostgresMessageStore},
        presence_store::MemoryPresenceStore,
        push::NoPush,
        redis::{RedisBus, RedisPresenceStore},
        registry::{ServerInfo, StaticRegistry},
        sqlite::SqliteDirectory,
        tikv::TikvMessageStore,
        webhook::{WebhookConfig, WebhookPush},
    },
    config::{Config, DirectoryBackend, StoreBackend},
    metrics::{self, Metrics},
    service::{
        AccountService, ChatService, DirectoryCaches, GroupService, PeopleService, PresenceService,
        chat::ChatLimits, delivery::Delivery, presence::PresenceSettings, rate_limit::RateLimiter,
    },
    session::{CloseReason, Hub, live::LiveSessions},
    snowflake::{self, Snowflake},
};

/// The gRPC service names by role, for health reporting.
const SERVICE_NAMES: &[(&str, &str)] = &[
    ("api", "chat.v1.AuthService"),
    ("api", "chat.v1.UserService"),
    ("api", "chat.v1.GroupService"),
    ("chat", "chat.v1.ChatService"),
    ("presence", "chat.v1.PresenceService"),
    ("api", "chat.v1.DiscoveryService"),
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
        StoreBackend::Tikv(endpoints) => Arc::new(
            TikvMessageStore::connect(endpoints)
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

/// The services of one server, shared by the gRPC adapters and the gateway.
struct Services {
    metrics: Arc<Metrics>,
    auth: Arc<Authenticator>,
    registry: Arc<dyn Registry>,
    hub: Arc<Hub>,
    presence: Arc<PresenceService>,
    accounts: Arc<AccountService>,
    people: Arc<PeopleService>,
    groups: Arc<GroupService>,
    chat: Arc<ChatService>,
    live: Arc<LiveSessions>,
}

/// Runs a server on `listener` until `shutdown` resolves, then shuts down gracefully.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    config.validate()?;
    let backends = open_backends(&config).await?;
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
    let gateway_listener = match config.gateway_listen {
        Some(addr) => Some(
            daehwa_gateway::listen::bind(addr)
                .with_context(|| format!("cannot listen on {addr} for the gateway"))?,
        ),
        None => None,
    };
    let me = ServerInfo {
        server_id: config.server_id.clone(),
        roles: config.roles.clone(),
        grpc_endpoint: config
            .advertise
            .clone()
            .unwrap_or(listener.local_addr()?.to_string()),
        websocket_url: match &gateway_listener {
            Some(listener) => websocket_url(listener.local_addr()?, config.advertise.as_deref()),
            None => String::new(),
        },
        connections: 0,
    };
    backends
        .messages
        .observe_durable_writes(metrics.store_log_sync.clone());
    let services = build_services(&config, &backends, me, metrics, &background).await?;
    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, &config, ServingStatus::Serving).await;
    let routes = grpc_routes(&config, &services, health_service)?;
    let auth_layer = AuthLayer::new(services.auth.clone(), services.metrics.clone());
    let stop_accepting = CancellationToken::new();
    if let Some(listener) = gateway_listener {
        let grpc = tower::Layer::layer(&auth_layer, routes.clone().prepare());
        spawn_gateway(listener, &config, &services, grpc, stop_accepting.clone())?;
    }

    let bound = listener.local_addr()?;
    tracing::info!(addr = %bound, server_id = %config.server_id, data_dir = %config.data_dir.display(), "chatd serving");
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let serve = Server::builder()
        .layer(auth_layer)
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, stop_accepting.clone().cancelled_owned());
    tokio::pin!(serve);
    tokio::select! {
        result = &mut serve => result.context("gRPC server failed")?,
        () = shutdown => {
            tracing::info!("shutting down: leaving the cluster, closing streams");
            set_health(&health, &config, ServingStatus::NotServing).await;
            services.registry.leave().await;
            services.hub.close_all(CloseReason::Shutdown);
            services.presence.close_all();
            stop_accepting.cancel();
            match tokio::time::timeout(config.shutdown_grace, &mut serve).await {
                Ok(result) => result.context("gRPC server failed during shutdown")?,
                Err(_) => tracing::warn!(grace = ?config.shutdown_grace, "shutdown grace expired with requests still running"),
            }
        }
    }
    background.cancel();
    close_backends(&backends).await?;
    tracing::info!("chatd stopped");
    Ok(())
}

/// Builds every service over `backends`, joining the registry as `me`; background tasks
/// stop with `background`.
async fn build_services(
    config: &Config,
    backends: &Backends,
    me: ServerInfo,
    metrics: Arc<Metrics>,
    background: &CancellationToken,
) -> anyhow::Result<Services> {
    let key_file = config
        .signing_key_file
        .clone()
        .unwrap_or_else(|| config.data_dir.join("signing.key"));
    let signer = TokenSigner::load_or_create(&key_file)?;
    let directory = backends.directory.clone();
    let auth = Arc::new(Authenticator::new(
        signer,
        directory.clone(),
        config.access_token_ttl,
    ));
    let hub = Hub::new(
        config.max_streams_per_user,
        config.outbox_capacity,
        metrics.clone(),
    );
    let registry = join_registry(config, me, background).await?;
    publish_connections(registry.clone(), hub.clone(), background.clone());
    let (store, bus) = open_cluster_backends(config, background).await?;
    let delivery = Arc::new(Delivery::new(
        config.server_id.clone(),
        hub.clone(),
        store,
        bus,
        config.cluster_backends()?.1.is_some(),
        config.offline_after,
        metrics.clone(),
    ));
    let presence = PresenceService::start(
        directory.clone(),
        delivery.clone(),
        PresenceSettings {
            offline_after: config.offline_after,
            heartbeat_interval: config.heartbeat_interval,
            watcher_capacity: config.outbox_capacity,
            max_watchers_per_user: config.max_streams_per_user,
        },
        background.clone(),
    );
    tokio::spawn(
        presence
            .clone()
            .reap_departed(registry.clone(), background.clone()),
    );
    delivery
        .start_receiving(presence.clone(), background.clone())
        .await
        .map_err(|e| anyhow::anyhow!("cannot subscribe to the bus: {e}"))?;
    let floor_file = config.data_dir.join("snowflake.floor");
    let leased = registry.clone();
    let message_ids = Snowflake::with_clock_offset(config.worker_id, config.id_clock_offset_ms)
        .with_lease(Arc::new(move || leased.worker_id()))
        .with_floor(snowflake::read_floor(&floor_file)?);
    snowflake::keep_floor_ahead(floor_file, background.clone()).await?;
    let accounts = Arc::new(AccountService::new(
        directory.clone(),
        auth.clone(),
        delivery.clone(),
        presence.clone(),
        config.access_token_ttl,
        config.refresh_token_ttl,
    ));
    let caches = DirectoryCaches::default();
    let people = Arc::new(PeopleService::new(
        directory.clone(),
        presence.clone(),
        caches.friendships.clone(),
    ));
    let groups = Arc::new(GroupService::new(
        directory,
        config.max_group_members,
        caches.members.clone(),
    ));
    let limits = ChatLimits {
        max_content_bytes: config.max_content_bytes,
        max_page_size: config.max_page_size,
        push_include_text: config.push_include_text,
    };
    let rate = RateLimiter::new(config.send_rate, config.send_burst);
    let chat = Arc::new(ChatService::new(
        backends.clone(),
        delivery.clone(),
        message_ids,
        rate,
        limits,
        metrics.clone(),
        caches,
    ));
    let live = Arc::new(LiveSessions::new(
        chat.clone(),
        presence.clone(),
        delivery.clone(),
        config.server_id.clone(),
        metrics.clone(),
    ));
    Ok(Services {
        metrics,
        auth,
        registry,
        hub,
        presence,
        accounts,
        people,
        groups,
        chat,
        live,
    })
}

/// The WebSocket URL Discovery hands out for a gateway bound to `bound`: its own address,
/// or, when it listens on every interface, the host of `advertise` (the address others use)
/// with the gateway's port.
fn websocket_url(bound: std::net::SocketAddr, advertise: Option<&str>) -> String {
    let host = match advertise
        .and_then(|a| a.rsplit_once(':'))
        .map(|(host, _)| host)
    {
        Some(host) if bound.ip().is_unspecified() && !host.is_empty() => host.to_owned(),
        _ if bound.is_ipv6() => format!("[{}]", bound.ip()),
        _ => bound.ip().to_string(),
    };
    format!("ws://{host}:{}/v1/ws", bound.port())
}

/// Joins the configured registry: this process alone (`static`), or etcd.
async fn join_registry(
    config: &Config,
    me: ServerInfo,
    background: &CancellationToken,
) -> anyhow::Result<Arc<dyn Registry>> {
    Ok(match config.registry_endpoints()? {
        None => Arc::new(StaticRegistry::new(me, config.worker_id)),
        Some(endpoints) => {
            let options = EtcdOptions {
                lease_ttl: config.registry_lease_ttl,
                shutdown: background.clone(),
                ..EtcdOptions::default()
            };
            EtcdRegistry::join(endpoints, me, options)
                .await
                .map_err(|e| anyhow::anyhow!("cannot join the registry: {e}"))?
        }
    })
}

/// Reports this server's live connection count to the registry every second (the registry
/// writes it only when it changed).
fn publish_connections(registry: Arc<dyn Registry>, hub: Arc<Hub>, stop: CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => registry.set_connections(hub.connections() as u64),
            }
        }
    });
}

/// The presence store and bus: in process, or shared on Redis.
async fn open_cluster_backends(
    config: &Config,
    background: &CancellationToken,
) -> anyhow::Result<(Arc<dyn PresenceStore>, Arc<dyn Bus>)> {
    let (presence, bus) = config.cluster_backends()?;
    let store: Arc<dyn PresenceStore> = match presence {
        None => Arc::new(MemoryPresenceStore::new()),
        Some(url) => Arc::new(
            RedisPresenceStore::connect(&url)
                .await
                .map_err(|e| anyhow::anyhow!("cannot open the presence store: {e}"))?,
        ),
    };
    let bus: Arc<dyn Bus> = match bus {
        None => Arc::new(LocalBus::new()),
        Some(url) => Arc::new(
            RedisBus::connect(&url, background.clone())
                .await
                .map_err(|e| anyhow::anyhow!("cannot open the bus: {e}"))?,
        ),
    };
    Ok((store, bus))
}

/// Every gRPC service of the API, plus health and reflection (v1 and v1alpha: grpcurl 1.8
/// speaks only v1alpha). Authentication is added by whoever serves the routes.
fn grpc_routes(
    config: &Config,
    services: &Services,
    health: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
) -> anyhow::Result<Routes> {
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(daehwa::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let ctx = ApiContext {
        metrics: services.metrics.clone(),
    };
    let max = config.max_request_bytes();
    let mut routes = Routes::new(health)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?);
    if config.has_role("api") {
        routes = routes
            .add_service(
                AuthServiceServer::new(AuthApi {
                    accounts: services.accounts.clone(),
                    ctx: ctx.clone(),
                })
                .max_decoding_message_size(max),
            )
            .add_service(
                UserServiceServer::new(UserApi {
                    people: services.people.clone(),
                    ctx: ctx.clone(),
                })
                .max_decoding_message_size(max),
            )
            .add_service(
                GroupServiceServer::new(GroupApi {
                    groups: services.groups.clone(),
                    ctx: ctx.clone(),
                })
                .max_decoding_message_size(max),
            )
            .add_service(DiscoveryServiceServer::new(DiscoveryApi {
                registry: services.registry.clone(),
                ctx: ctx.clone(),
            }));
    }
    if config.has_role("chat") {
        routes = routes.add_service(ChatRoutes::new(
            ChatApi {
                chat: services.chat.clone(),
                presence: services.presence.clone(),
                live: services.live.clone(),
                ctx: ctx.clone(),
            },
            max,
        ));
    }
    if config.has_role("presence") {
        routes = routes.add_service(
            PresenceServiceServer::new(PresenceApi {
                presence: services.presence.clone(),
                heartbeat_interval: config.heartbeat_interval,
                ctx,
            })
            .max_decoding_message_size(max),
        );
    }
    Ok(routes)
}

/// Serves the embedded gateway on `listener` until `stop`: WebSocket sessions run on this
/// server's live sessions; `grpc` (already authenticating) answers gRPC and gRPC-web.
fn spawn_gateway<S>(
    listener: TcpListener,
    config: &Config,
    services: &Services,
    grpc: S,
    stop: CancellationToken,
) -> anyhow::Result<()>
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let port = Arc::new(GatewaySessions {
        auth: services.auth.clone(),
        chat: services.chat.clone(),
        live: services.live.clone(),
        metrics: services.metrics.clone(),
    });
    let router = daehwa_gateway::router(port, grpc, &gateway_config(config));
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = daehwa_gateway::serve(listener, router, stop.cancelled_owned()).await {
            tracing::error!(error = %e, "gateway stopped");
        }
    });
    tracing::info!(%addr, "gateway listening");
    Ok(())
}

/// Reports every service of this server's roles (and the server as a whole, "") as `status`.
async fn set_health(
    health: &tonic_health::server::HealthReporter,
    config: &Config,
    status: ServingStatus,
) {
    for (role, name) in SERVICE_NAMES {
        if config.has_role(role) {
            health.set_service_status(*name, status).await;
        }
    }
    health.set_service_status("", status).await;
}

/// Closes the push queue, the directory and the message store, in that order.
async fn close_backends(backends: &Backends) -> anyhow::Result<()> {
    backends.push.close().await;
    backends.directory.close().await;
    backends
        .messages
        .close()
        .await
        .map_err(|e| anyhow::anyhow!("closing message store: {e}"))
}

/// The embedded gateway's settings.
fn gateway_config(config: &Config) -> daehwa_gateway::GatewayConfig {
    daehwa_gateway::GatewayConfig {
        allowed_origins: config.gateway_allowed_origins.clone(),
        max_frame_bytes: config.max_request_bytes(),
        ..daehwa_gateway::GatewayConfig::default()
    }
}

#[cfg(test)]
mod tests {
    use super::websocket_url;

    #[test]
    fn websocket_urls_use_the_advertised_host_when_bound_to_every_interface() {
        let any = "0.0.0.0:8080".parse().unwrap();
        let local = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(
            websocket_url(any, Some("chat-1.example:50051")),
            "ws://chat-1.example:8080/v1/ws"
        );
        assert_eq!(
            websocket_url(local, Some("chat-1.example:50051")),
            "ws://127.0.0.1:8080/v1/ws"
        );
        assert_eq!(websocket_url(local, None), "ws://127.0.0.1:8080/v1/ws");
        assert_eq!(websocket_url(any, None), "ws://0.0.0.0:8080/v1/ws");
        assert_eq!(
            websocket_url("[::1]:9000".parse().unwrap(), None),
            "ws://[::1]:9000/v1/ws"
        );
    }
}
