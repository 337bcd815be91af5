//! Who is online, and on which chat servers their streams are: the state every server of a
//! cluster must agree on.
//!
//! Liveness itself (heartbeats, stream activity, timeouts) is tracked in each chat server's
//! memory; this store hears only **state changes** (a user became live or went silent on a
//! server, a user's first stream opened or last stream closed on a server) and one **TTL
//! refresh** per `ttl / 3` for everything a server holds. It never hears a heartbeat. Every
//! entry a server writes carries an expiry, so a server that dies without cleaning up stops
//! counting after one TTL: its users read as offline, and no message is routed to it.
//!
//! The contract (checked by `conformance`):
//! - `set_live` answers whether the user was offline on every server before (friends must
//!   hear "online"); `clear_live` whether they are now offline on every server.
//! - An entry not refreshed for its TTL is gone, for `lookup` and for `routes` alike.
//! - `lookup` keeps the last-active time after the user went offline.
//! - `reap` of a server that left the cluster removes what it held, once across all callers,
//!   and names the users it leaves offline everywhere (their friends must hear "offline":
//!   a dead server cannot say it). A server that still refreshes (it lost its registry lease
//!   but runs) is not reaped: `reap` answers `None` until its refreshes stop for a TTL.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use async_trait::async_trait;
use tokio::time::Instant;

use crate::{error::Result, ids::UserId};

/// A user as `lookup` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SharedPresence {
    /// Live on at least one server.
    pub online: bool,
    /// Unix ms of the last activity any server reported; 0 when never seen.
    pub last_active_ms: i64,
}

/// Presence and session routes shared by the servers of a cluster.
#[async_trait]
pub trait PresenceStore: Send + Sync + 'static {
    /// `user` became live on `server`, for `ttl` unless refreshed. Returns true when they
    /// were offline on every server before.
    async fn set_live(
        &self,
        server: &str,
        user: UserId,
        last_active_ms: i64,
        ttl: Duration,
    ) -> Result<bool>;

    /// `user` is no longer live on `server`. Returns true when they are now offline on every
    /// server.
    async fn clear_live(&self, server: &str, user: UserId, last_active_ms: i64) -> Result<bool>;

    /// `user` has at least one stream on `server`, for `ttl` unless refreshed.
    async fn add_route(&self, server: &str, user: UserId, ttl: Duration) -> Result<()>;

    /// `user` has no stream left on `server`.
    async fn remove_route(&self, server: &str, user: UserId) -> Result<()>;

    /// Renews the TTL of everything `server` holds: `live` users (with their last activity)
    /// and `routed` users. Called every third of the TTL; a few round trips per call, however
    /// many users.
    async fn refresh(
        &self,
        server: &str,
        live: &[(UserId, i64)],
        routed: &[UserId],
        ttl: Duration,
    ) -> Result<()>;

    /// For each of `users` (same order), the servers holding their streams.
    async fn routes(&self, users: &[UserId]) -> Result<Vec<Vec<String>>>;

    /// For each of `users` (same order), whether they are online anywhere and when last
    /// active.
    async fn lookup(&self, users: &[UserId]) -> Result<Vec<SharedPresence>>;

    /// `server` left the cluster without cleaning up (it died): removes its live and route
    /// entries and returns the users it held (live or with streams there) who are now offline
    /// everywhere, with their last activity. Only the first caller for a departure gets them
    /// (every server sees the departure; one announces it); later callers get nothing.
    /// `None` while `server` still refreshes its entries (it is alive): ask again later.
    async fn reap(&self, server: &str) -> Result<Option<Vec<(UserId, i64)>>>;
}

/// The one-machine presence store: a map in this process's memory.
#[derive(Default)]
pub struct MemoryPresenceStore {
    users: Mutex<HashMap<UserId, Entry>>,
    /// Until when each server counts as alive (its last refresh plus the TTL).
    refreshed: Mutex<HashMap<String, Instant>>,
}

/// How long a user with no live entry and no route is remembered (for the last-active time).
const FORGET_AFTER: Duration = Duration::from_secs(24 * 3600);

#[derive(Default)]
struct Entry {
    live: HashMap<String, Instant>,
    routes: HashMap<String, Instant>,
    last_active_ms: i64,
}

impl Entry {
    fn online(&self, now: Instant) -> bool {
        self.live.values().any(|expiry| *expiry > now)
    }
}

impl MemoryPresenceStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, Entry>> {
        self.users.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl PresenceStore for MemoryPresenceStore {
    async fn set_live(
        &self,
        server: &str,
        user: UserId,
        last_active_ms: i64,
        ttl: Duration,
    ) -> Result<bool> {
        let now = Instant::now();
        let mut users = self.lock();
        let entry = users.entry(user).or_default();
        let was_online = entry.online(now);
        entry.live.insert(server.to_owned(), now + ttl);
        entry.last_active_ms = entry.last_active_ms.max(last_active_ms);
        Ok(!was_online)
    }

    async fn clear_live(&self, server: &str, user: UserId, last_active_ms: i64) -> Result<bool> {
        let now = Instant::now();
        let mut users = self.lock();
        let entry = users.entry(user).or_default();
        entry.live.remove(server);
        entry.live.retain(|_, expiry| *expiry > now);
        entry.last_active_ms = entry.last_active_ms.max(last_active_ms);
        Ok(!entry.online(now))
    }

    async fn add_route(&self, server: &str, user: UserId, ttl: Duration) -> Result<()> {
        let now = Instant::now();
        self.lock()
            .entry(user)
            .or_default()
            .routes
            .insert(server.to_owned(), now + ttl);
        Ok(())
    }

    async fn remove_route(&self, server: &str, user: UserId) -> Result<()> {
        if let Some(entry) = self.lock().get_mut(&user) {
            entry.routes.remove(server);
        }
        Ok(())
    }

    async fn refresh(
        &self,
        server: &str,
        live: &[(UserId, i64)],
        routed: &[UserId],
        ttl: Duration,
    ) -> Result<()> {
        let now = Instant::now();
        let expiry = now + ttl;
        self.refreshed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(server.to_owned(), expiry);
        let mut users = self.lock();
        // Bounded memory: forget users idle everywhere for a day.
        let forget_before = crate::auth::tokens::now_ms() - FORGET_AFTER.as_millis() as i64;
        users.retain(|_, e| {
            e.live.retain(|_, x| *x > now);
            e.routes.retain(|_, x| *x > now);
            !e.live.is_empty() || !e.routes.is_empty() || e.last_active_ms > forget_before
        });
        for &(user, last_active_ms) in live {
            let entry = users.entry(user).or_default();
            entry.live.insert(server.to_owned(), expiry);
            entry.last_active_ms = entry.last_active_ms.max(last_active_ms);
        }
        for &user in routed {
            users
                .entry(user)
                .or_default()
                .routes
                .insert(server.to_owned(), expiry);
        }
        Ok(())
    }

    async fn routes(&self, users: &[UserId]) -> Result<Vec<Vec<String>>> {
        let now = Instant::now();
        let map = self.lock();
        Ok(users
            .iter()
            .map(|user| {
                map.get(user).map_or_else(Vec::new, |entry| {
                    let mut servers: Vec<String> = entry
                        .routes
                        .iter()
                        .filter(|(_, expiry)| **expiry > now)
                        .map(|(server, _)| server.clone())
                        .collect();
                    servers.sort_unstable();
                    servers
                })
            })
            .collect())
    }

    async fn reap(&self, server: &str) -> Result<Option<Vec<(UserId, i64)>>> {
        let now = Instant::now();
        let alive = self
            .refreshed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(server)
            .is_some_and(|until| *until > now);
        if alive {
            return Ok(None);
        }
        let mut offline = Vec::new();
        let mut users = self.lock();
        for (user, entry) in users.iter_mut() {
            let held = entry.routes.remove(server).is_some() | entry.live.remove(server).is_some();
            if held && !entry.online(now) {
                offline.push((*user, entry.last_active_ms));
            }
        }
        Ok(Some(offline))
    }

    async fn lookup(&self, users: &[UserId]) -> Result<Vec<SharedPresence>> {
        let now = Instant::now();
        let map = self.lock();
        Ok(users
            .iter()
            .map(|user| {
                map.get(user)
                    .map_or_else(SharedPresence::default, |entry| SharedPresence {
                        online: entry.online(now),
                        last_active_ms: entry.last_active_ms,
                    })
            })
            .collect())
    }
}

/// The behaviour every [`PresenceStore`] must show; run by each implementation's tests.
#[cfg(any(test, feature = "test-support"))]
pub mod conformance;

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn memory_store_passes_conformance() {
        conformance::run_all(Arc::new(MemoryPresenceStore::new()), |d| async move {
            tokio::time::sleep(d).await
        })
        .await;
    }
}
