//! Cluster membership: which servers are alive, what they do, how loaded they are, and which
//! Snowflake worker id this server may use right now.
//!
//! One process needs no coordination: [`StaticRegistry`] knows only itself and a configured
//! worker id. A cluster uses [`EtcdRegistry`](crate::backend::etcd::EtcdRegistry), which keeps
//! every server's [`ServerInfo`] under an etcd lease and leases the worker ids, so two live
//! servers never issue ids with the same worker id.
//!
//! [`pick_chat_server`] is the one rule Discovery uses to send a user to a chat server, so that
//! every server of the cluster answers the same for the same user and the same membership.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::error::{Error, Result};

/// The role of a server that holds users' streams; the only role [`pick_chat_server`] picks.
pub const ROLE_CHAT: &str = "chat";

/// One server as the registry knows it (serde JSON in etcd).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServerInfo {
    /// Unique in the cluster; the key of the server's registry entry.
    pub server_id: String,
    /// "api", "chat", "presence".
    pub roles: Vec<String>,
    /// host:port others should use.
    pub grpc_endpoint: String,
    /// May be empty.
    pub websocket_url: String,
    /// Live streams, updated while running.
    pub connections: u64,
}

impl ServerInfo {
    /// Whether the server has `role` ("api", "chat", "presence").
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// Who is in the cluster and which Snowflake worker id this server holds; the services see
/// only this trait, so one process and a cluster run the same code.
#[async_trait::async_trait]
pub trait Registry: Send + Sync + 'static {
    /// The live servers as last seen, this one included (kept current by a watch: no I/O here).
    fn servers(&self) -> Vec<ServerInfo>;

    /// This server's live connection count; published when it changed, at most once per
    /// `publish_interval` (no I/O on the caller's path).
    fn set_connections(&self, connections: u64);

    /// The Snowflake worker id (0..=1023) this server holds right now; `None` while it holds
    /// none (lease lost or not yet re-acquired): no ids may be issued then.
    fn worker_id(&self) -> Option<u16>;

    /// Leaves the cluster: deletes this server's entry and releases its worker id (shutdown).
    /// Idempotent.
    async fn leave(&self);

    /// [`worker_id`](Self::worker_id) for a caller about to issue ids: `UNAVAILABLE` (retry
    /// later) while this server holds no worker id, so no request can issue a clashing id.
    fn require_worker_id(&self) -> Result<u16> {
        self.worker_id().ok_or_else(|| {
            Error::unavailable(
                "registry (etcd) unavailable: this server holds no message id worker id right now",
            )
        })
    }
}

/// The registry of a server that runs alone: it is the whole cluster and its worker id is
/// configured, not leased (one process, the default).
pub struct StaticRegistry {
    me: ServerInfo,
    worker_id: u16,
    connections: AtomicU64,
    left: AtomicBool,
}

impl StaticRegistry {
    /// A registry holding only `me`, with `worker_id` (below 1024) for as long as it runs.
    pub fn new(me: ServerInfo, worker_id: u16) -> Self {
        debug_assert!(worker_id < 1024, "worker ids have 10 bits");
        let connections = AtomicU64::new(me.connections);
        Self {
            me,
            worker_id,
            connections,
            left: AtomicBool::new(false),
        }
    }
}

#[async_trait::async_trait]
impl Registry for StaticRegistry {
    fn servers(&self) -> Vec<ServerInfo> {
        if self.left.load(Ordering::SeqCst) {
            return Vec::new();
        }
        let mut me = self.me.clone();
        me.connections = self.connections.load(Ordering::Relaxed);
        vec![me]
    }

    fn set_connections(&self, connections: u64) {
        self.connections.store(connections, Ordering::Relaxed);
    }

    fn worker_id(&self) -> Option<u16> {
        Some(self.worker_id)
    }

    async fn leave(&self) {
        self.left.store(true, Ordering::SeqCst);
    }
}

/// The chat server `user_id` should connect to: among the servers with the "chat" role, the
/// one with the highest rendezvous weight for (user, server). Every server computes the same
/// answer from the same membership, a user stays on one server while the set is unchanged,
/// and a server that leaves (or dies and drops out) moves only its own users.
///
/// Load-aware: servers holding more than `max(1.25 × mean, mean + 100)` connections are
/// skipped, unless all are, so a hot server stops receiving new users until it cools down.
pub fn pick_chat_server(servers: &[ServerInfo], user_id: u64) -> Option<&ServerInfo> {
    let chat: Vec<&ServerInfo> = servers.iter().filter(|s| s.has_role(ROLE_CHAT)).collect();
    if chat.is_empty() {
        return None;
    }
    let total: u128 = chat.iter().map(|s| u128::from(s.connections)).sum();
    let count = chat.len() as u128;
    // Over the limit: connections > max(1.25 × mean, mean + 100), in integers:
    // 4 × count × c > 5 × total  and  count × c > total + 100 × count.
    let overloaded = |s: &ServerInfo| {
        let c = u128::from(s.connections);
        4 * count * c > 5 * total && count * c > total + 100 * count
    };
    let eligible: Vec<&ServerInfo> = chat.iter().copied().filter(|s| !overloaded(s)).collect();
    let candidates = if eligible.is_empty() { chat } else { eligible };
    candidates.into_iter().max_by(|a, b| {
        let (wa, wb) = (
            rendezvous_weight(user_id, &a.server_id),
            rendezvous_weight(user_id, &b.server_id),
        );
        wa.cmp(&wb).then_with(|| b.server_id.cmp(&a.server_id))
    })
}

/// The weight of (user, server) for rendezvous hashing: FNV-1a over the user id and the
/// server id, then the SplitMix64 finaliser for avalanche. Fixed, so every server and every
/// release agrees (unlike std's randomly keyed hasher).
fn rendezvous_weight(user_id: u64, server_id: &str) -> u64 {
    let mut h = fnv1a(0xcbf2_9ce4_8422_2325, &user_id.to_le_bytes());
    h = fnv1a(h, server_id.as_bytes());
    mix64(h ^ mix64(user_id))
}

/// FNV-1a, 64 bits, continuing from `h`.
pub(crate) fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The SplitMix64 finaliser: every input bit affects every output bit.
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The behaviour every [`Registry`] must show; run by each implementation's tests.
#[cfg(test)]
pub mod conformance;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn static_registry_passes_conformance() {
        let registry = StaticRegistry::new(conformance::me("solo"), 5);
        conformance::run_all(&registry, "solo").await;
    }

    fn server(id: &str, connections: u64) -> ServerInfo {
        ServerInfo {
            server_id: id.to_owned(),
            roles: vec!["api".to_owned(), ROLE_CHAT.to_owned()],
            grpc_endpoint: format!("{id}:50051"),
            websocket_url: String::new(),
            connections,
        }
    }

    fn pick(servers: &[ServerInfo], user: u64) -> String {
        pick_chat_server(servers, user)
            .expect("a chat server")
            .server_id
            .clone()
    }

    const USERS: u64 = 10_000;

    #[test]
    fn a_user_stays_on_one_server_while_the_set_is_unchanged() {
        let servers = vec![server("a", 10), server("b", 12), server("c", 9)];
        let mut reordered = servers.clone();
        reordered.reverse();
        for user in 0..USERS {
            let first = pick(&servers, user);
            assert_eq!(pick(&servers, user), first);
            assert_eq!(pick(&reordered, user), first, "order of the list matters");
        }
    }

    #[test]
    fn users_spread_across_three_servers() {
        let servers = vec![
            server("chat-1", 0),
            server("chat-2", 0),
            server("chat-3", 0),
        ];
        let mut counts = std::collections::HashMap::new();
        for user in 0..USERS {
            *counts.entry(pick(&servers, user)).or_insert(0u64) += 1;
        }
        assert_eq!(counts.len(), 3);
        for (id, n) in counts {
            let share = n * 100 / USERS;
            assert!((20..=47).contains(&share), "{id} got {share}% of the users");
        }
    }

    #[test]
    fn removing_a_server_moves_only_its_users() {
        let all = vec![server("a", 0), server("b", 0), server("c", 0)];
        let without_b = vec![server("a", 0), server("c", 0)];
        let mut moved = 0;
        for user in 0..USERS {
            let before = pick(&all, user);
            let after = pick(&without_b, user);
            if before == "b" {
                moved += 1;
                assert_ne!(after, "b");
            } else {
                assert_eq!(after, before, "user {user} moved off a surviving server");
            }
        }
        assert!(moved > 0);
    }

    #[test]
    fn an_overloaded_server_is_avoided_unless_all_are() {
        let servers = vec![server("a", 100), server("b", 120), server("hot", 2_000)];
        for user in 0..USERS {
            assert_ne!(pick(&servers, user), "hot");
        }
        // Slightly above the mean is not overloaded: the small-cluster floor (mean + 100).
        let servers = vec![server("a", 10), server("b", 12), server("warm", 90)];
        assert!((0..USERS).any(|user| pick(&servers, user) == "warm"));
        // All equally loaded: nobody is over the mean, everyone is picked.
        let servers = vec![server("a", 5_000), server("b", 5_000)];
        assert!((0..USERS).any(|user| pick(&servers, user) == "a"));
        assert!((0..USERS).any(|user| pick(&servers, user) == "b"));
    }

    #[test]
    fn only_chat_servers_are_picked() {
        let mut api_only = server("api-only", 0);
        api_only.roles = vec!["api".to_owned()];
        assert!(pick_chat_server(std::slice::from_ref(&api_only), 1).is_none());
        let servers = vec![api_only, server("chat", 0)];
        for user in 0..100 {
            assert_eq!(pick(&servers, user), "chat");
        }
        assert!(pick_chat_server(&[], 1).is_none());
    }

    #[tokio::test]
    async fn a_static_registry_is_the_whole_cluster() {
        let registry = StaticRegistry::new(server("solo", 0), 7);
        assert_eq!(registry.worker_id(), Some(7));
        assert_eq!(registry.require_worker_id(), Ok(7));
        registry.set_connections(42);
        assert_eq!(registry.servers(), vec![server("solo", 42)]);
        registry.leave().await;
        registry.leave().await;
        assert!(registry.servers().is_empty());
    }
}
