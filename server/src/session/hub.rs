//! The registry of live sessions on this server.
//!
//! Each session has a bounded outbox (`outbox_capacity` events). Delivery uses `try_send`:
//! a full outbox means the consumer cannot keep up, and the session is closed with
//! `RESOURCE_EXHAUSTED` instead of buffering without bound; the device reconnects and catches
//! up with SyncMessages (the store is the truth). Locks here are std mutexes held for a map
//! lookup or insert, never across an await.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
};

use futures::task::AtomicWaker;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::SharedEvent;
use crate::{
    error::{Error, Result},
    ids::{DeviceId, UserId},
    metrics::Metrics,
};

/// Why a session was closed by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Its outbox filled up.
    TooSlow,
    /// The device logged out or its tokens were revoked.
    Revoked,
    /// The server is shutting down.
    Shutdown,
    /// The client sent a malformed event.
    Invalid,
    /// The client sent an event larger than the request size limit.
    TooLarge,
    /// Events for this session may have been lost between servers (the bus was
    /// interrupted): the client must reconnect and sync.
    Resync,
}

impl CloseReason {
    /// The status the stream ends with.
    pub fn status(self) -> Status {
        match self {
            Self::TooSlow => Status::resource_exhausted(
                "stream closed: events arrived faster than this client read them; reconnect and sync",
            ),
            Self::Revoked => Status::unauthenticated("this session was revoked: log in again"),
            Self::Shutdown => Status::unavailable("server shutting down: reconnect"),
            Self::TooLarge => {
                Status::resource_exhausted("client event larger than the size limit: stream closed")
            }
            Self::Invalid => Status::invalid_argument("malformed client event: stream closed"),
            Self::Resync => Status::unavailable(
                "live delivery between servers was interrupted: reconnect and sync",
            ),
        }
    }
}

/// One live stream of one device.
pub struct Session {
    id: u64,
    user: UserId,
    device: DeviceId,
    outbox: mpsc::Sender<Arc<SharedEvent>>,
    /// Set when the session closes; read by the response stream before each event.
    is_closed: AtomicBool,
    /// Wakes the response stream when the session closes while its outbox is empty: an
    /// [`AtomicWaker`] costs no lock per event, unlike a cancellation future.
    closed_waker: AtomicWaker,
    /// Wakes every other task waiting for the close (the client-event reader).
    closed: CancellationToken,
    reason: OnceLock<CloseReason>,
}

impl Session {
    /// Closes the session; the first reason wins.
    pub fn close(&self, reason: CloseReason) {
        let _ = self.reason.set(reason);
        self.mark_closed();
    }

    fn mark_closed(&self) {
        self.is_closed.store(true, Ordering::Release);
        self.closed_waker.wake();
        self.closed.cancel();
    }

    /// The reason it was closed, if the server closed it.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.reason.get().copied()
    }

    /// Resolves when the session is closed (by the server or because the client left).
    pub async fn closed(&self) {
        self.closed.cancelled().await;
    }

    /// Whether the session is closed (one atomic load).
    pub(super) fn is_closed(&self) -> bool {
        self.is_closed.load(Ordering::Acquire)
    }

    /// Whether the session is closed; if not, `cx` is woken when it closes. For the one
    /// response stream of the session (a later registration replaces an earlier one).
    pub(super) fn poll_closed(&self, cx: &mut std::task::Context<'_>) -> bool {
        if self.is_closed() {
            return true;
        }
        self.closed_waker.register(cx.waker());
        // A close between the check and the registration woke nobody: look again.
        self.is_closed()
    }

    /// Queues an event without waiting; a full outbox closes the session as too slow.
    /// Returns whether the event was queued.
    pub fn offer(&self, event: Arc<SharedEvent>) -> bool {
        match self.outbox.try_send(event) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(user_id = %self.user, device_id = %self.device, "outbox full: closing slow session");
                self.close(CloseReason::TooSlow);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// The user whose stream this is.
    pub fn user(&self) -> UserId {
        self.user
    }

    /// The device whose stream this is.
    pub fn device(&self) -> DeviceId {
        self.device
    }
}

/// Unregisters its session when dropped (the client went away or the stream ended).
pub struct SessionHandle {
    session: Arc<Session>,
    hub: Arc<Hub>,
}

impl SessionHandle {
    /// The registered session.
    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }
}

impl Drop for SessionHandle {
    fn drop(&mut self) {
        self.session.mark_closed();
        self.hub.unregister(&self.session);
    }
}

/// Hears every session open and close on this server, in order (presence uses it).
/// Called under the hub's lock: implementations must be quick and never call the hub.
pub trait SessionObserver: Send + Sync {
    /// A session of `user` opened.
    fn opened(&self, user: UserId);
    /// A session of `user` closed; `remaining` of theirs are still open here.
    fn closed(&self, user: UserId, remaining: usize);
}

/// Live sessions by user.
pub struct Hub {
    sessions: Mutex<HashMap<UserId, Vec<Arc<Session>>>>,
    next_id: AtomicU64,
    total: AtomicUsize,
    closing: AtomicBool,
    max_per_user: usize,
    outbox_capacity: usize,
    metrics: Arc<Metrics>,
    observer: OnceLock<Arc<dyn SessionObserver>>,
}

impl Hub {
    /// A hub allowing `max_per_user` streams per user, each with `outbox_capacity` events.
    pub fn new(max_per_user: usize, outbox_capacity: usize, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            sessions: Mutex::default(),
            next_id: AtomicU64::new(1),
            total: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
            max_per_user,
            outbox_capacity,
            metrics,
            observer: OnceLock::new(),
        })
    }

    /// Sets who hears about sessions opening and closing (presence). Set once at start-up.
    pub fn set_observer(&self, observer: Arc<dyn SessionObserver>) {
        let _ = self.observer.set(observer);
    }

    /// Registers a stream; `ResourceExhausted` when the user has too many.
    /// `first` is queued before the session is visible to any delivery, so it is the first
    /// event the session sees (its `ready`).
    pub fn register(
        self: &Arc<Self>,
        user: UserId,
        device: DeviceId,
        first: Arc<SharedEvent>,
    ) -> Result<(SessionHandle, mpsc::Receiver<Arc<SharedEvent>>)> {
        let (tx, rx) = mpsc::channel(self.outbox_capacity);
        // A fresh channel with room for at least 16 events: this cannot fail.
        let _ = tx.try_send(first);
        let session = Arc::new(Session {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            user,
            device,
            outbox: tx,
            is_closed: AtomicBool::new(false),
            closed_waker: AtomicWaker::new(),
            closed: CancellationToken::new(),
            reason: OnceLock::new(),
        });
        {
            let mut sessions = self.lock();
            // Checked under the lock that close_all takes: no session slips in after it.
            if self.closing.load(Ordering::Acquire) {
                return Err(Error::unavailable(
                    "server shutting down: connect to another server or retry",
                ));
            }
            let list = sessions.entry(user).or_default();
            if list.len() >= self.max_per_user {
                return Err(Error::exhausted(format!(
                    "too many open streams for this user (limit {})",
                    self.max_per_user
                )));
            }
            list.push(session.clone());
            // The observer hears opens and closes in the order they happen to the map: it is
            // called under this lock (it never takes the hub's lock itself).
            if let Some(observer) = self.observer.get() {
                observer.opened(user);
            }
        }
        self.total.fetch_add(1, Ordering::Relaxed);
        self.metrics.sessions.inc();
        Ok((
            SessionHandle {
                session,
                hub: self.clone(),
            },
            rx,
        ))
    }

    fn unregister(&self, session: &Session) {
        {
            let mut sessions = self.lock();
            let Some(list) = sessions.get_mut(&session.user) else {
                return;
            };
            let before = list.len();
            list.retain(|s| s.id != session.id);
            if list.len() == before {
                return;
            }
            let remaining = list.len();
            if remaining == 0 {
                sessions.remove(&session.user);
            }
            if let Some(observer) = self.observer.get() {
                observer.closed(session.user, remaining);
            }
        }
        self.total.fetch_sub(1, Ordering::Relaxed);
        self.metrics.sessions.dec();
    }

    /// Offers an event to every session of `user` except those of `skip_device`; returns how
    /// many sessions took it.
    pub fn deliver(
        &self,
        user: UserId,
        skip_device: Option<DeviceId>,
        event: &Arc<SharedEvent>,
    ) -> usize {
        // Copied out under the lock, offered after it. Most users have one session here: it
        // is taken on its own, and the list (usually empty then) allocates nothing.
        let (first, others): (Option<Arc<Session>>, Vec<Arc<Session>>) =
            match self.lock().get(&user) {
                Some(list) => {
                    let mut targets = list
                        .iter()
                        .filter(|s| Some(s.device) != skip_device)
                        .cloned();
                    (targets.next(), targets.collect())
                }
                None => return 0,
            };
        let delivered = first
            .iter()
            .chain(&others)
            .filter(|s| s.offer(event.clone()))
            .count();
        self.metrics.messages_delivered.inc_by(delivered as u64);
        delivered
    }

    /// Whether any device of `user` has a live stream here.
    pub fn is_connected(&self, user: UserId) -> bool {
        self.lock().contains_key(&user)
    }

    /// Closes every stream of one device (logout).
    pub fn close_device(&self, user: UserId, device: DeviceId, reason: CloseReason) {
        let targets: Vec<Arc<Session>> = self
            .lock()
            .get(&user)
            .map(|l| l.iter().filter(|s| s.device == device).cloned().collect())
            .unwrap_or_default();
        targets.iter().for_each(|s| s.close(reason));
    }

    /// Whether `user` has a live stream from a device other than `device`.
    pub fn has_other_device(&self, user: UserId, device: DeviceId) -> bool {
        self.lock()
            .get(&user)
            .is_some_and(|l| l.iter().any(|s| s.device != device))
    }

    /// Closes every stream and refuses new ones (shutdown).
    pub fn close_all(&self, reason: CloseReason) {
        let all: Vec<Arc<Session>> = {
            let sessions = self.lock();
            self.closing.store(true, Ordering::Release);
            sessions.values().flatten().cloned().collect()
        };
        all.iter().for_each(|s| s.close(reason));
    }

    /// Closes every stream but keeps accepting new ones (the bus lost events: clients
    /// reconnect and sync).
    pub fn disconnect_all(&self, reason: CloseReason) {
        let all: Vec<Arc<Session>> = self.lock().values().flatten().cloned().collect();
        all.iter().for_each(|s| s.close(reason));
    }

    /// Live streams on this server.
    pub fn connections(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, Vec<Arc<Session>>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }
}
