//! Prometheus metrics of one server, served as text at `GET /metrics` on `--metrics-listen`.
//!
//! Each server owns its registry (no globals), so several servers can run in one test process.

use std::{net::SocketAddr, sync::Arc};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use tokio::net::TcpListener;

/// Label of the error counter: the gRPC code name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: String,
}

/// Every metric the server records.
pub struct Metrics {
    registry: Registry,
    /// Live streams (Connect, Subscribe).
    pub sessions: Gauge,
    /// Messages stored (duplicates of a retried client_msg_id not counted).
    pub messages_sent: Counter,
    /// Events handed to live sessions' outboxes.
    pub messages_delivered: Counter,
    /// Seconds from a message's creation to its departure on a recipient's stream.
    pub delivery_latency: Histogram,
    /// Seconds a message-store append takes (durable commit included).
    pub store_append_latency: Histogram,
    /// Seconds each write-ahead-log append of the embedded store takes, its `fdatasync`
    /// included: a disk that stalls shows here first (handed to the store by the app).
    pub store_log_sync: Histogram,
    /// RPC errors by gRPC code.
    pub errors: Family<CodeLabel, Counter>,
    /// Push notifications queued for offline users.
    pub pushes: Counter,
    /// Envelopes sent to other servers (targeted or broadcast).
    pub bus_published: Counter,
    /// Bus publishes and route lookups that failed (recipients catch up by sync).
    pub bus_errors: Counter,
    /// Times this server's bus subscription broke and its streams were told to sync.
    pub bus_interruptions: Counter,
}

impl Metrics {
    /// A fresh registry with every metric at zero.
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("daehwa");
        let buckets = || {
            Histogram::new([
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5,
            ])
        };
        let metrics = Self {
            sessions: Gauge::default(),
            messages_sent: Counter::default(),
            messages_delivered: Counter::default(),
            delivery_latency: buckets(),
            store_append_latency: buckets(),
            store_log_sync: buckets(),
            errors: Family::default(),
            pushes: Counter::default(),
            bus_published: Counter::default(),
            bus_errors: Counter::default(),
            bus_interruptions: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "sessions",
            "Live Connect and Subscribe streams",
            metrics.sessions.clone(),
        );
        registry.register(
            "messages_sent",
            "Messages stored",
            metrics.messages_sent.clone(),
        );
        registry.register(
            "messages_delivered",
            "Events handed to live sessions",
            metrics.messages_delivered.clone(),
        );
        registry.register(
            "delivery_latency_seconds",
            "Message creation to departure on a recipient stream",
            metrics.delivery_latency.clone(),
        );
        registry.register(
            "store_append_seconds",
            "Durable message-store append latency",
            metrics.store_append_latency.clone(),
        );
        registry.register(
            "store_log_sync_seconds",
            "Write-ahead-log append with its fdatasync, per batch (embedded message store)",
            metrics.store_log_sync.clone(),
        );
        registry.register(
            "rpc_errors",
            "RPC errors by gRPC code",
            metrics.errors.clone(),
        );
        registry.register(
            "push_notifications",
            "Push notifications queued",
            metrics.pushes.clone(),
        );
        registry.register(
            "bus_published",
            "Envelopes sent to other chat servers",
            metrics.bus_published.clone(),
        );
        registry.register(
            "bus_errors",
            "Failed bus publishes and route lookups",
            metrics.bus_errors.clone(),
        );
        registry.register(
            "bus_interruptions",
            "Bus subscription breaks (streams told to reconnect and sync)",
            metrics.bus_interruptions.clone(),
        );
        Arc::new(Self {
            registry,
            ..metrics
        })
    }

    /// Counts an error returned to a caller.
    pub fn count_error(&self, code: tonic::Code) {
        self.errors
            .get_or_create(&CodeLabel {
                code: format!("{code:?}"),
            })
            .inc();
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Serves `GET /metrics` until `shutdown` resolves.
pub async fn serve(
    metrics: Arc<Metrics>,
    addr: SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot bind metrics listener {addr}: {e}"))?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(
                        http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics.render(),
                )
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::warn!(error = %e, "metrics server stopped");
        }
    });
    Ok(bound)
}
