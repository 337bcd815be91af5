//! Delivery of live events to users wherever their streams are: this server's hub directly,
//! other chat servers through the [`Bus`], addressed by the routes in the [`PresenceStore`].
//!
//! On one machine (`clustered == false`) everything is in this process: delivery is the hub
//! alone, and no route is looked up. In a cluster, a message costs one route lookup for its
//! recipients and one envelope per other server holding some of them, sent before the sender
//! is answered (so the envelopes of one sending stream leave in the order it sent). Presence
//! events are broadcast (transitions are rare; each server picks the friends it holds), and
//! so are logouts. A stream's route is written before its `ready` event goes out.
//!
//! Nothing here is the truth: a lost envelope is repaired by the recipient's cursor sync.
//! When this server's subscription to the bus breaks, its clients are disconnected with
//! `UNAVAILABLE` so they reconnect and sync.

use std::{
    collections::BTreeMap,
    hash::{Hash, Hasher},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use daehwa::v1::{PresenceEvent, ServerEvent, server_event::Event};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    backend::{
        Bus, PresenceStore,
        bus::{BusEvent, Envelope},
    },
    ids::{DeviceId, UserId},
    metrics::Metrics,
    session::{CloseReason, Hub, SharedEvent},
};

/// Route writes of one user are serialised on one of this many locks.
const ROUTE_LOCKS: usize = 64;
/// After a failed route lookup, cross-server delivery is skipped this long (senders are not
/// slowed by a Redis that is down; recipients catch up by sync).
const ROUTES_BACKOFF: Duration = Duration::from_secs(1);

/// Where events for users go: here, or to the servers holding their streams.
pub struct Delivery {
    server_id: String,
    hub: Arc<Hub>,
    store: Arc<dyn PresenceStore>,
    bus: Arc<dyn Bus>,
    clustered: bool,
    route_ttl: Duration,
    /// Orders a user's route additions (a stream opening) and removals (the last closing).
    route_locks: Vec<tokio::sync::Mutex<()>>,
    /// Until when route lookups are skipped after a failure.
    routes_down_until: Mutex<Option<Instant>>,
    metrics: Arc<Metrics>,
}

/// Hears presence events that arrive from other servers (the presence service's watchers).
pub trait PresenceListener: Send + Sync {
    /// `event` for the WatchPresence streams of `friends` held here.
    fn presence_arrived(&self, friends: &[UserId], event: &PresenceEvent);
}

impl Delivery {
    /// Delivery for server `server_id`; `clustered` when other servers share `store` and
    /// `bus`. Routes live `route_ttl` unless refreshed.
    pub fn new(
        server_id: String,
        hub: Arc<Hub>,
        store: Arc<dyn PresenceStore>,
        bus: Arc<dyn Bus>,
        clustered: bool,
        route_ttl: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            server_id,
            hub,
            store,
            bus,
            clustered,
            route_ttl,
            route_locks: (0..ROUTE_LOCKS)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            routes_down_until: Mutex::new(None),
            metrics,
        }
    }

    fn route_lock(&self, user: UserId) -> &tokio::sync::Mutex<()> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        user.hash(&mut hasher);
        &self.route_locks[hasher.finish() as usize % ROUTE_LOCKS]
    }

    /// Records that `user` has a stream here, before the stream's `ready` goes out: a message
    /// stored after the client's catch-up read finds the route. Call after the session is
    /// in the hub.
    pub async fn route_opened(&self, user: UserId) -> crate::error::Result<()> {
        if !self.clustered {
            return Ok(());
        }
        let _order = self.route_lock(user).lock().await;
        self.store
            .add_route(&self.server_id, user, self.route_ttl)
            .await
    }

    /// Removes `user`'s route here, unless a stream of theirs opened meanwhile (checked under
    /// the same lock `route_opened` takes after registering in the hub, so an opening stream
    /// never loses its route).
    pub async fn route_closed(&self, user: UserId) -> crate::error::Result<()> {
        if !self.clustered {
            return Ok(());
        }
        let _order = self.route_lock(user).lock().await;
        if self.hub.is_connected(user) {
            return Ok(());
        }
        self.store.remove_route(&self.server_id, user).await
    }

    /// The routes of `users`, or `None` when they cannot be read (or failed less than
    /// [`ROUTES_BACKOFF`] ago).
    async fn routes(&self, users: &[UserId]) -> Option<Vec<Vec<String>>> {
        let backing_off = {
            let mut down = self
                .routes_down_until
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let backing_off = down.is_some_and(|until| Instant::now() < until);
            if !backing_off {
                *down = None;
            }
            backing_off
        };
        if backing_off {
            self.metrics.bus_errors.inc();
            return None;
        }
        match self.store.routes(users).await {
            Ok(routes) => Some(routes),
            Err(e) => {
                self.metrics.bus_errors.inc();
                tracing::warn!(error = %e, "cannot read routes: other servers' sessions will catch up by sync");
                *self
                    .routes_down_until
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + ROUTES_BACKOFF);
                None
            }
        }
    }

    /// This server's id in routes and envelopes.
    pub fn server_id(&self) -> &str {
        &self.server_id
    }

    /// The live sessions of this server.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// The shared presence store.
    pub fn store(&self) -> &Arc<dyn PresenceStore> {
        &self.store
    }

    /// Offers `event` to every session of `users` (except those of `skip_device`), here and
    /// on the other servers holding their streams. Returns the users with no stream anywhere
    /// (candidates for a push); when the routes cannot be read, nobody is reported (a push
    /// is a hint: better none than one to a connected user).
    pub async fn to_users(
        &self,
        users: &[UserId],
        skip_device: Option<DeviceId>,
        event: &Arc<SharedEvent>,
    ) -> Vec<UserId> {
        // Users no session here took the event: offline here unless their only session is
        // the skipped device (the hub is asked again only for them, not for every member).
        let unreached: Vec<UserId> = users
            .iter()
            .copied()
            .filter(|&user| self.hub.deliver(user, skip_device, event) == 0)
            .collect();
        if !self.clustered {
            return unreached
                .into_iter()
                .filter(|u| !self.hub.is_connected(*u))
                .collect();
        }
        let Some(routes) = self.routes(users).await else {
            return Vec::new();
        };
        let mut offline = Vec::new();
        let mut by_server: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        for (user, servers) in users.iter().zip(&routes) {
            if servers.is_empty() && !self.hub.is_connected(*user) {
                offline.push(*user);
            }
            for server in servers.iter().filter(|s| **s != self.server_id) {
                by_server.entry(server).or_default().push(user.0);
            }
        }
        for (server, users) in by_server {
            let envelope = Envelope {
                origin: self.server_id.clone(),
                users,
                skip_device: skip_device.map_or(0, |d| d.0),
                event: Some((**event).clone()),
                presence: false,
                close_device: 0,
            };
            self.publish(Some(server), &envelope).await;
        }
        offline
    }

    /// Offers a presence event to `friends`' live sessions and WatchPresence streams, on
    /// every server. `local` receives it for this server's watchers. For a user with no friends
    /// nothing is sent: no event is made and nothing crosses the bus.
    pub async fn presence_to_friends(
        &self,
        friends: &[UserId],
        event: PresenceEvent,
        local: &dyn PresenceListener,
    ) {
        if friends.is_empty() {
            return;
        }
        let server_event = SharedEvent::new(ServerEvent {
            event: Some(Event::Presence(event)),
        });
        for &friend in friends {
            self.hub.deliver(friend, None, &server_event);
        }
        local.presence_arrived(friends, &event);
        if self.clustered {
            let envelope = Envelope {
                origin: self.server_id.clone(),
                users: friends.iter().map(|f| f.0).collect(),
                skip_device: 0,
                event: Some((*server_event).clone()),
                presence: true,
                close_device: 0,
            };
            self.publish(None, &envelope).await;
        }
    }

    /// Closes every stream of `device` on every server (logout, revocation).
    pub async fn close_device(&self, user: UserId, device: DeviceId) {
        self.hub.close_device(user, device, CloseReason::Revoked);
        if self.clustered {
            let envelope = Envelope {
                origin: self.server_id.clone(),
                users: vec![user.0],
                close_device: device.0,
                ..Envelope::default()
            };
            self.publish(None, &envelope).await;
        }
    }

    /// Sends to one server, or broadcasts (`None`); failures are logged and counted (the
    /// store has the truth).
    async fn publish(&self, server: Option<&str>, envelope: &Envelope) {
        let sent = match server {
            Some(server) => self.bus.publish(server, envelope).await,
            None => self.bus.broadcast(envelope).await,
        };
        match sent {
            Ok(()) => {
                self.metrics.bus_published.inc();
            }
            Err(e) => {
                self.metrics.bus_errors.inc();
                tracing::warn!(error = %e, "bus publish failed: recipients catch up by sync");
            }
        };
    }

    /// Subscribes this server to the bus and delivers what arrives until `shutdown`.
    pub async fn start_receiving(
        self: &Arc<Self>,
        presence: Arc<dyn PresenceListener>,
        shutdown: CancellationToken,
    ) -> crate::error::Result<()> {
        if !self.clustered {
            return Ok(());
        }
        let rx = self.bus.subscribe(&self.server_id).await?;
        tokio::spawn(self.clone().receive(rx, presence, shutdown));
        Ok(())
    }

    async fn receive(
        self: Arc<Self>,
        mut rx: mpsc::Receiver<BusEvent>,
        presence: Arc<dyn PresenceListener>,
        shutdown: CancellationToken,
    ) {
        loop {
            let event = tokio::select! {
                () = shutdown.cancelled() => return,
                event = rx.recv() => match event { Some(e) => e, None => return },
            };
            match event {
                BusEvent::Envelope(envelope) => self.arrived(*envelope, presence.as_ref()),
                BusEvent::Interrupted => {
                    tracing::warn!(
                        "bus interrupted: disconnecting this server's streams so clients sync"
                    );
                    self.metrics.bus_interruptions.inc();
                    self.hub.disconnect_all(CloseReason::Resync);
                }
            }
        }
    }

    /// Delivers an envelope from another server to the sessions held here.
    fn arrived(&self, envelope: Envelope, presence: &dyn PresenceListener) {
        if envelope.origin == self.server_id {
            return; // our own broadcast: delivered locally when sent
        }
        let users: Vec<UserId> = envelope.users.iter().map(|u| UserId(*u)).collect();
        if envelope.close_device != 0 {
            if let Some(user) = users.first() {
                self.hub
                    .close_device(*user, DeviceId(envelope.close_device), CloseReason::Revoked);
            }
            return;
        }
        let Some(event) = envelope.event else { return };
        let skip = (envelope.skip_device != 0).then_some(DeviceId(envelope.skip_device));
        if envelope.presence
            && let Some(Event::Presence(p)) = &event.event
        {
            presence.presence_arrived(&users, p);
        }
        let event = SharedEvent::new(event);
        for user in users {
            self.hub.deliver(user, skip, &event);
        }
    }
}
