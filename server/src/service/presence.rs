//! Presence: who is online, since when they were last active, and who hears about it.
//!
//! Liveness is kept in this server's memory: heartbeats (the RPC or the stream event) and any
//! stream activity refresh a user's `last_active`; nothing is written per heartbeat. A user
//! goes offline when nothing was heard for `offline_after`, or `heartbeat_interval` after
//! their last stream closed with nothing heard since (a quick reconnect does not flap).
//! Transitions are queued to one fan-out task, which records them in the shared
//! [`PresenceStore`](crate::backend::PresenceStore) (only state changes, and one TTL refresh per third of `offline_after` for
//! everyone live here: never per heartbeat) and, when the user's state changed across the
//! whole cluster, sends a `PresenceEvent` to the user's friends only (their live sessions and
//! WatchPresence streams, on every server), and to nobody while the user has
//! `presence_visible` off (turning it off announces "offline"). The same task records which
//! users have streams on this server (the routes messages follow).

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use daehwa::v1::{PresenceEvent, PresenceStatus};
use tokio::{sync::mpsc, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::{
    auth::tokens::now_ms,
    backend::{Directory, Registry},
    error::{Error, Result},
    ids::UserId,
    service::delivery::{Delivery, PresenceListener},
    session::hub::SessionObserver,
};

/// Transitions waiting for fan-out before new ones are dropped (state stays right; only the
/// push to friends is lost, and GetPresence still answers correctly).
const CHANGE_QUEUE: usize = 65_536;

#[derive(Debug, Clone, Copy)]
struct UserPresence {
    online: bool,
    last_active: Instant,
    last_active_ms: i64,
    streams: usize,
    last_stream_closed: Option<Instant>,
}

/// What the fan-out task records in the shared store (and maybe announces), one at a time,
/// in the order it happened here: so a refresh can never bring back what a later change
/// cleared, nor record ahead of time what an earlier change has yet to announce.
#[derive(Debug)]
enum Change {
    /// `user` became live or silent on this server.
    Presence {
        user: UserId,
        online: bool,
        last_active_ms: i64,
        /// The user turned `presence_visible` on or off: friends hear it as online/offline
        /// (hiding carries no last-active time); the shared state is not touched.
        visibility: bool,
    },
    /// `user`'s last stream here closed: their route here goes (unless a new stream came).
    StreamsClosed(UserId),
    /// The server holding `user` died and the store was cleaned: offline everywhere now.
    Departed { user: UserId, last_active_ms: i64 },
    /// Renew the TTL of everything this server held when the renewal was queued.
    Refresh(Renewal),
}

/// Who was live and who had streams here at one instant, taken under the same lock as the
/// changes queued around it. A snapshot taken later, when the fan-out task gets to it, would
/// hold users whose "online" is still queued: `set_live` would then find them live already,
/// and their friends would never hear it.
struct Renewal {
    live: Vec<(UserId, i64)>,
    routed: Vec<UserId>,
}

impl std::fmt::Debug for Renewal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renewal")
            .field("live", &self.live.len())
            .field("routed", &self.routed.len())
            .finish()
    }
}

/// Presence timing and limits.
#[derive(Debug, Clone, Copy)]
pub struct PresenceSettings {
    /// Silence after which a user is offline; also the TTL of shared entries.
    pub offline_after: Duration,
    /// How often clients beat; the grace before a user whose last stream closed is offline.
    pub heartbeat_interval: Duration,
    /// Events queued per WatchPresence stream.
    pub watcher_capacity: usize,
    /// WatchPresence streams per user.
    pub max_watchers_per_user: usize,
}

/// One WatchPresence stream.
struct Watcher {
    id: u64,
    /// `None`: all friends.
    only: Option<HashSet<UserId>>,
    tx: mpsc::Sender<PresenceEvent>,
    too_slow: CancellationToken,
}

/// A WatchPresence subscription; unregisters when dropped.
pub struct WatchHandle {
    service: Arc<PresenceService>,
    watcher: UserId,
    id: u64,
    /// Changes for this watcher, queued from the moment it was registered.
    events: mpsc::Receiver<PresenceEvent>,
    /// The current state of each watched friend, sent before any change.
    initial: VecDeque<PresenceEvent>,
    /// The current state as sent, by user, until that user's first different event: a
    /// change already in the snapshot can still be queued behind it (its fan-out had not
    /// run yet), and the watcher must not hear it twice.
    in_snapshot: HashMap<u64, PresenceEvent>,
    /// Cancelled when the watcher fell too far behind.
    pub too_slow: CancellationToken,
    /// Cancelled when the server shuts down.
    pub closing: CancellationToken,
}

impl WatchHandle {
    /// The next event: the current states first, then each change (a repeat of a state
    /// already sent in the snapshot is skipped). `None` once the service dropped the watcher.
    pub async fn next(&mut self) -> Option<PresenceEvent> {
        if let Some(event) = self.initial.pop_front() {
            return Some(event);
        }
        loop {
            let event = self.events.recv().await?;
            match self.in_snapshot.get(&event.user_id) {
                Some(sent) if *sent == event => continue,
                Some(_) => {
                    self.in_snapshot.remove(&event.user_id);
                }
                None => {}
            }
            return Some(event);
        }
    }
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        let mut watchers = self
            .service
            .watchers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(list) = watchers.get_mut(&self.watcher) {
            list.retain(|w| w.id != self.id);
            if list.is_empty() {
                watchers.remove(&self.watcher);
            }
        }
    }
}

/// Presence state and its fan-out.
pub struct PresenceService {
    directory: Arc<dyn Directory>,
    delivery: Arc<Delivery>,
    offline_after: Duration,
    reconnect_grace: Duration,
    users: Mutex<HashMap<UserId, UserPresence>>,
    changes: mpsc::Sender<Change>,
    watchers: Mutex<HashMap<UserId, Vec<Watcher>>>,
    next_watcher: AtomicU64,
    watcher_capacity: usize,
    max_watchers_per_user: usize,
    closing: CancellationToken,
}

impl PresenceService {
    /// Starts the service with its sweeper, refresher and fan-out tasks; they stop on
    /// `shutdown`. It observes the sessions of `delivery`'s hub.
    pub fn start(
        directory: Arc<dyn Directory>,
        delivery: Arc<Delivery>,
        settings: PresenceSettings,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let (changes, rx) = mpsc::channel(CHANGE_QUEUE);
        let service = Arc::new(Self {
            directory,
            delivery: delivery.clone(),
            offline_after: settings.offline_after,
            reconnect_grace: settings.heartbeat_interval,
            users: Mutex::default(),
            changes,
            watchers: Mutex::default(),
            next_watcher: AtomicU64::new(1),
            watcher_capacity: settings.watcher_capacity,
            max_watchers_per_user: settings.max_watchers_per_user,
            closing: CancellationToken::new(),
        });
        delivery
            .hub()
            .set_observer(Arc::new(StreamObserver(Arc::downgrade(&service))));
        tokio::spawn(service.clone().fan_out(rx, shutdown.clone()));
        tokio::spawn(service.clone().sweep_loop(shutdown.clone()));
        tokio::spawn(service.clone().refresh_loop(shutdown));
        service
    }

    /// Records activity (a heartbeat or any stream event); may bring the user online.
    pub fn touch(&self, user: UserId) {
        let now = Instant::now();
        let mut users = self.lock_users();
        let entry = users.entry(user).or_insert(UserPresence {
            online: false,
            last_active: now,
            last_active_ms: 0,
            streams: 0,
            last_stream_closed: None,
        });
        entry.last_active = now;
        entry.last_active_ms = now_ms();
        if !entry.online {
            entry.online = true;
            self.announce(user, true, entry.last_active_ms, false);
        }
    }

    /// The device logged out; with no other device connected, the user is offline at once.
    pub fn logged_out(&self, user: UserId, other_devices_connected: bool) {
        if other_devices_connected {
            return;
        }
        let mut users = self.lock_users();
        if let Some(entry) = users.get_mut(&user).filter(|e| e.online) {
            entry.online = false;
            self.announce(user, false, entry.last_active_ms, false);
        }
    }

    /// The user changed `presence_visible`: if they are online (on any server), friends see
    /// them appear or disappear.
    pub fn visibility_changed(&self, user: UserId, visible: bool) {
        let last_active_ms = self.lock_users().get(&user).map_or(0, |e| e.last_active_ms);
        self.announce(user, visible, last_active_ms, true);
    }

    /// Presence of `ids` as `viewer` may see it: friends (and oneself) only.
    pub async fn presence_for(&self, viewer: UserId, ids: &[UserId]) -> Result<Vec<PresenceEvent>> {
        if ids.len() > 1000 {
            return Err(Error::invalid("at most 1000 user ids per request"));
        }
        let friends: HashSet<UserId> = self
            .directory
            .friend_ids(viewer)
            .await?
            .into_iter()
            .collect();
        if let Some(stranger) = ids
            .iter()
            .find(|id| **id != viewer && !friends.contains(id))
        {
            return Err(Error::denied(format!(
                "user {stranger} is not your friend: presence is visible to friends only"
            )));
        }
        self.visible_presence(viewer, ids).await
    }

    /// Presence of `ids`, who must be `viewer` or friends of `viewer` (unchecked here).
    /// Presence as this server knows it (live here) merged with the shared store (live on
    /// another server, or last seen anywhere).
    async fn visible_presence(&self, viewer: UserId, ids: &[UserId]) -> Result<Vec<PresenceEvent>> {
        let shared = self.delivery.store().lookup(ids).await?;
        let mut out = Vec::with_capacity(ids.len());
        for (&id, shared) in ids.iter().zip(shared) {
            let visible = id == viewer || self.directory.settings(id).await?.presence_visible;
            let local = self.lock_users().get(&id).copied();
            let online = shared.online || local.is_some_and(|l| l.online);
            let last_active_ms = shared
                .last_active_ms
                .max(local.map_or(0, |l| l.last_active_ms));
            out.push(if visible && last_active_ms > 0 {
                PresenceEvent {
                    user_id: id.0,
                    status: if online {
                        PresenceStatus::Online
                    } else {
                        PresenceStatus::Offline
                    } as i32,
                    last_active_at: Some(timestamp(last_active_ms)),
                }
            } else {
                PresenceEvent {
                    user_id: id.0,
                    status: PresenceStatus::Offline as i32,
                    last_active_at: None,
                }
            });
        }
        Ok(out)
    }

    /// Subscribes `viewer` to presence changes of `ids` (empty: all friends, present and
    /// future); the current state of each watched friend is queued first.
    pub async fn watch(self: &Arc<Self>, viewer: UserId, ids: &[UserId]) -> Result<WatchHandle> {
        let initial_ids = if ids.is_empty() {
            self.directory.friend_ids(viewer).await?
        } else {
            ids.to_vec()
        };
        if self.closing.is_cancelled() {
            return Err(Error::unavailable("server shutting down: reconnect"));
        }
        let initial = if ids.is_empty() {
            self.visible_presence(viewer, &initial_ids).await?
        } else {
            self.presence_for(viewer, &initial_ids).await?
        };
        let (tx, events) = mpsc::channel(self.watcher_capacity.max(initial.len() + 16));
        let too_slow = CancellationToken::new();
        let id = self.next_watcher.fetch_add(1, Ordering::Relaxed);
        let only = (!ids.is_empty()).then(|| ids.iter().copied().collect());
        {
            let mut watchers = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
            let mine = watchers.entry(viewer).or_default();
            if mine.len() >= self.max_watchers_per_user {
                return Err(Error::exhausted(format!(
                    "too many WatchPresence streams for this user (limit {})",
                    self.max_watchers_per_user
                )));
            }
            mine.push(Watcher {
                id,
                only,
                tx,
                too_slow: too_slow.clone(),
            });
        }
        let in_snapshot = initial.iter().map(|e| (e.user_id, *e)).collect();
        Ok(WatchHandle {
            service: self.clone(),
            watcher: viewer,
            id,
            events,
            initial: initial.into(),
            in_snapshot,
            too_slow,
            closing: self.closing.clone(),
        })
    }

    /// Ends every WatchPresence stream (shutdown); new ones are refused.
    pub fn close_all(&self) {
        self.closing.cancel();
    }

    fn announce(&self, user: UserId, online: bool, last_active_ms: i64, visibility: bool) {
        self.queue(Change::Presence {
            user,
            online,
            last_active_ms,
            visibility,
        });
    }

    fn queue(&self, change: Change) {
        match self.changes.try_send(change) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(change)) => {
                tracing::warn!(?change, "presence change queue full: change not recorded");
            }
            // The fan-out task has stopped: the server is shutting down.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    async fn fan_out(self: Arc<Self>, mut rx: mpsc::Receiver<Change>, shutdown: CancellationToken) {
        loop {
            let change = tokio::select! {
                () = shutdown.cancelled() => return,
                change = rx.recv() => match change { Some(c) => c, None => return },
            };
            if let Err(e) = self.deliver_change(&change).await {
                tracing::warn!(?change, error = %e, "presence fan-out failed");
            }
        }
    }

    /// Records a change in the shared store and, when the user's state changed across the
    /// cluster, tells their friends.
    async fn deliver_change(&self, change: &Change) -> Result<()> {
        let store = self.delivery.store();
        let server = self.delivery.server_id();
        let (user, online, mut last_active_ms, visibility) = match *change {
            Change::Refresh(ref renewal) => return self.refresh_shared(renewal).await,
            Change::StreamsClosed(user) => return self.delivery.route_closed(user).await,
            Change::Departed {
                user,
                last_active_ms,
            } => (user, false, last_active_ms, false),
            Change::Presence {
                user,
                online,
                last_active_ms,
                visibility,
            } => (user, online, last_active_ms, visibility),
        };
        if matches!(change, Change::Departed { .. }) {
            if !self.directory.settings(user).await?.presence_visible {
                return Ok(());
            }
        } else if !visibility {
            let changed_everywhere = if online {
                store
                    .set_live(server, user, last_active_ms, self.offline_after)
                    .await?
            } else {
                store.clear_live(server, user, last_active_ms).await?
            };
            if !changed_everywhere || !self.directory.settings(user).await?.presence_visible {
                return Ok(());
            }
        } else {
            // Only a user online somewhere appears or disappears.
            let shared = store
                .lookup(&[user])
                .await?
                .first()
                .copied()
                .unwrap_or_default();
            let online_here = self.lock_users().get(&user).is_some_and(|e| e.online);
            if !shared.online && !online_here {
                return Ok(());
            }
            last_active_ms = last_active_ms.max(shared.last_active_ms);
        }
        let event = PresenceEvent {
            user_id: user.0,
            status: if online {
                PresenceStatus::Online
            } else {
                PresenceStatus::Offline
            } as i32,
            last_active_at: (online || !visibility).then(|| timestamp(last_active_ms)),
        };
        let friends = self.directory.friend_ids(user).await?;
        self.delivery
            .presence_to_friends(&friends, event, self)
            .await;
        Ok(())
    }

    /// Announces "offline" for the users of servers that left the registry without saying
    /// so (they died): every second, departed servers are reaped from the shared store, which
    /// hands each departure's users to one reaper only.
    pub async fn reap_departed(
        self: Arc<Self>,
        registry: Arc<dyn Registry>,
        shutdown: CancellationToken,
    ) {
        let ids = |registry: &dyn Registry| -> HashSet<String> {
            registry
                .servers()
                .into_iter()
                .map(|s| s.server_id)
                .collect()
        };
        let mut known = ids(registry.as_ref());
        let mut interval = tokio::time::interval(Duration::from_secs(1));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = interval.tick() => {}
            }
            let mut current = ids(registry.as_ref());
            let departed: Vec<String> = known.difference(&current).cloned().collect();
            for gone in &departed {
                match self.delivery.store().reap(gone).await {
                    // Still refreshing its entries: alive (only its registry lease was lost).
                    Ok(None) => {
                        current.insert(gone.clone());
                    }
                    Ok(Some(users)) => {
                        if !users.is_empty() {
                            tracing::info!(server_id = %gone, users = users.len(), "server left the cluster: its users are offline");
                        }
                        for (user, last_active_ms) in users {
                            self.queue(Change::Departed {
                                user,
                                last_active_ms,
                            });
                        }
                    }
                    Err(e) => {
                        tracing::warn!(server_id = %gone, error = %e, "cannot reap a departed server; retrying");
                        current.insert(gone.clone()); // still "known": retried next tick
                    }
                }
            }
            known = current;
        }
    }

    /// Asks for a renewal of the shared entries of everyone live or connected here, every
    /// third of `offline_after`: the only periodic write, whatever the heartbeat rate. The
    /// renewal runs in order with the other changes (see [`Change`]).
    async fn refresh_loop(self: Arc<Self>, shutdown: CancellationToken) {
        let mut interval = tokio::time::interval(self.offline_after / 3);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval.tick().await;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = interval.tick() => self.queue_refresh(),
            }
        }
    }

    /// Queues a renewal of the users live here and of those with streams here (and of this
    /// server's own liveness, even with nobody), as they are now.
    fn queue_refresh(&self) {
        let users = self.lock_users();
        let renewal = Renewal {
            live: users
                .iter()
                .filter(|(_, p)| p.online)
                .map(|(u, p)| (*u, p.last_active_ms))
                .collect(),
            routed: users
                .iter()
                .filter(|(_, p)| p.streams > 0)
                .map(|(u, _)| *u)
                .collect(),
        };
        // Queued under the lock: every change made before the snapshot is ahead of it.
        self.queue(Change::Refresh(renewal));
    }

    /// Renews the shared entries in `renewal` and this server's own liveness.
    async fn refresh_shared(&self, renewal: &Renewal) -> Result<()> {
        self.delivery
            .store()
            .refresh(
                self.delivery.server_id(),
                &renewal.live,
                &renewal.routed,
                self.offline_after,
            )
            .await
    }

    async fn sweep_loop(self: Arc<Self>, shutdown: CancellationToken) {
        let tick =
            (self.offline_after / 4).clamp(Duration::from_millis(20), Duration::from_secs(1));
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = interval.tick() => self.sweep(Instant::now()),
            }
        }
    }

    /// Marks offline everyone who timed out or whose last stream closed and stayed closed.
    fn sweep(&self, now: Instant) {
        let mut users = self.lock_users();
        for (user, p) in users.iter_mut().filter(|(_, p)| p.online) {
            let silent = now.duration_since(p.last_active) >= self.offline_after;
            let left = p.streams == 0
                && p.last_stream_closed.is_some_and(|closed| {
                    now.duration_since(closed) >= self.reconnect_grace && p.last_active <= closed
                });
            if silent || left {
                p.online = false;
                self.announce(*user, false, p.last_active_ms, false);
            }
        }
        // Forget users offline for long; bounded memory. Their last-active time is lost.
        users.retain(|_, p| {
            p.online
                || p.streams > 0
                || now.duration_since(p.last_active) < Duration::from_secs(24 * 3600)
        });
    }

    fn lock_users(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, UserPresence>> {
        self.users.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Hears streams open and close from the hub. Holds the service weakly: the hub holds the
/// observer, and the service holds the hub, so a strong reference would be a cycle.
struct StreamObserver(std::sync::Weak<PresenceService>);

impl SessionObserver for StreamObserver {
    fn opened(&self, user: UserId) {
        let Some(service) = self.0.upgrade() else {
            return;
        };
        service
            .lock_users()
            .entry(user)
            .or_insert(UserPresence {
                online: false,
                last_active: Instant::now(),
                last_active_ms: now_ms(),
                streams: 0,
                last_stream_closed: None,
            })
            .streams += 1;
        service.touch(user);
    }

    fn closed(&self, user: UserId, remaining: usize) {
        let Some(service) = self.0.upgrade() else {
            return;
        };
        let mut users = service.lock_users();
        if let Some(p) = users.get_mut(&user) {
            p.streams = remaining;
            if remaining == 0 {
                p.last_stream_closed = Some(Instant::now());
                service.queue(Change::StreamsClosed(user));
            }
        }
    }
}

impl PresenceListener for PresenceService {
    /// Offers a friend's presence event to the WatchPresence streams of `friends` held here.
    fn presence_arrived(&self, friends: &[UserId], event: &PresenceEvent) {
        let subject = UserId(event.user_id);
        let watchers = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        for friend in friends {
            for w in watchers.get(friend).into_iter().flatten() {
                if w.only.as_ref().is_some_and(|only| !only.contains(&subject)) {
                    continue;
                }
                if let Err(mpsc::error::TrySendError::Full(_)) = w.tx.try_send(*event) {
                    w.too_slow.cancel();
                }
            }
        }
    }
}

/// A protobuf timestamp from Unix milliseconds.
pub fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

#[cfg(test)]
mod tests;
