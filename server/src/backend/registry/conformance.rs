//! The [`Registry`] contract as executable checks, run against every implementation on a
//! fresh registry that joined as [`me`]: it lists itself with what it registered, reports its
//! live connection count, holds a worker id, and is gone from its own view once it left.

use std::time::{Duration, Instant};

use super::{Registry, ServerInfo};

/// How long published changes may take to show in `servers()`.
const DEADLINE: Duration = Duration::from_secs(10);

/// The server every check's registry joins as.
pub fn me(server_id: &str) -> ServerInfo {
    ServerInfo {
        server_id: server_id.to_owned(),
        roles: vec!["chat".to_owned(), "presence".to_owned()],
        grpc_endpoint: format!("{server_id}.test:50051"),
        websocket_url: format!("ws://{server_id}.test:8080/v1/ws"),
        connections: 0,
    }
}

/// Runs every check; `registry` joined as `me(server_id)` and is left at the end.
pub async fn run_all(registry: &dyn Registry, server_id: &str) {
    lists_itself_as_registered(registry, server_id);
    holds_a_worker_id(registry);
    reports_its_connection_count(registry, server_id).await;
    leaving_removes_it(registry, server_id).await;
}

fn own_entry(registry: &dyn Registry, server_id: &str) -> Option<ServerInfo> {
    registry
        .servers()
        .into_iter()
        .find(|s| s.server_id == server_id)
}

/// `servers()` includes this server with its roles and endpoints, once.
pub fn lists_itself_as_registered(registry: &dyn Registry, server_id: &str) {
    let servers = registry.servers();
    let mine: Vec<&ServerInfo> = servers
        .iter()
        .filter(|s| s.server_id == server_id)
        .collect();
    assert_eq!(
        mine.len(),
        1,
        "exactly one entry for this server: {servers:?}"
    );
    let expected = me(server_id);
    assert_eq!(mine[0].roles, expected.roles);
    assert_eq!(mine[0].grpc_endpoint, expected.grpc_endpoint);
    assert_eq!(mine[0].websocket_url, expected.websocket_url);
}

/// A joined server holds a worker id in range, and `require_worker_id` agrees.
pub fn holds_a_worker_id(registry: &dyn Registry) {
    let id = registry
        .worker_id()
        .expect("a joined server holds a worker id");
    assert!(id < 1024, "worker ids have 10 bits: {id}");
    assert_eq!(registry.require_worker_id().expect("worker id"), id);
}

/// `set_connections` shows in this server's entry (after the publish interval).
pub async fn reports_its_connection_count(registry: &dyn Registry, server_id: &str) {
    for count in [7, 3] {
        registry.set_connections(count);
        let started = Instant::now();
        loop {
            let seen = own_entry(registry, server_id).map(|s| s.connections);
            if seen == Some(count) {
                break;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "connection count {count} not visible after {DEADLINE:?} (saw {seen:?})"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// After `leave`, this server is no longer listed (and leaving again is harmless).
pub async fn leaving_removes_it(registry: &dyn Registry, server_id: &str) {
    registry.leave().await;
    let started = Instant::now();
    while own_entry(registry, server_id).is_some() {
        assert!(
            started.elapsed() < DEADLINE,
            "still listed {DEADLINE:?} after leaving"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    registry.leave().await;
}
