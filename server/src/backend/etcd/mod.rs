//! The cluster [`Registry`] on etcd (v3 API, etcd 3.4 or later): membership, load and leased
//! Snowflake worker ids for servers that share one etcd cluster.
//!
//! # Key layout (under `prefix`, default `/daehwa`)
//!
//! | key | value | lease |
//! |---|---|---|
//! | `{prefix}/servers/{server_id}` | [`ServerInfo`] as JSON, rewritten when the connection count changes | the server's |
//! | `{prefix}/workers/{n}` (n = 0..=1023) | the `server_id` holding worker id n | the server's |
//!
//! Each server holds one lease (TTL `lease_ttl`, renewed every TTL/3 over a keep-alive
//! stream); both of its keys live under it, so a server that dies without leaving loses its
//! entry and its worker id when the lease expires, and [`EtcdRegistry::leave`] removes both at
//! once by revoking the lease. A worker id is claimed with a transaction that puts the key only
//! if it does not exist (`create_revision == 0`), probing from a hash of the server id, so two
//! servers can never hold the same key at the same time.
//!
//! Every server watches `{prefix}/servers/` (a read at revision R, then a watch from R + 1) and
//! answers [`Registry::servers`] from memory.
//!
//! # Fencing
//!
//! Holding the key is not enough: a server cut off from etcd keeps running while its lease
//! expires and another server claims its worker id. It must stop issuing ids before that can
//! happen. etcd expires a lease no earlier than TTL after it processed the last keep-alive,
//! which it did after this server sent it; so the lease is certainly alive until
//! `sent + TTL`. [`Registry::worker_id`] answers `Some` only until `sent + TTL − TTL/3` of the
//! last keep-alive (or grant) that succeeded, checked against the monotonic clock on every
//! call, not by a background task that might itself be late. The TTL/3 margin absorbs clock
//! rate differences and the time between reading the worker id and stamping an id with it.
//! (Like every lease-based fence it assumes the process is not frozen for longer than the
//! margin between that check and the use of the id, e.g. by a suspended VM.)
//!
//! When etcd answers again the keep-alive tells whether the lease survived: if so the server
//! carries on with the same worker id; if it expired, the server grants a new lease, writes
//! its entry again and claims a worker id again (possibly another one). Failures are retried
//! with backoff and logged on each transition; nothing panics.

#[cfg(any(test, feature = "test-support"))]
pub mod test_server;
#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeMap, HashSet},
    fmt::Display,
    future::Future,
    sync::{
        Arc, Mutex, PoisonError, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, LeaseKeepAliveStream,
    LeaseKeeper, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::{sync::Notify, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::{
    backend::registry::{Registry, ServerInfo, fnv1a, mix64},
    error::{Error, Result},
};

/// How many Snowflake worker ids exist (10 bits).
const WORKER_IDS: u16 = 1024;

/// Settings of [`EtcdRegistry::join`]; the defaults suit production.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// How long etcd keeps this server's entry and worker id after its last keep-alive: how
    /// fast a dead server drops out. Whole seconds (etcd's unit), at least 1 s. Default 10 s.
    pub lease_ttl: Duration,
    /// The root of every key, so clusters (or tests) can share one etcd. Default `/daehwa`.
    pub prefix: String,
    /// The least time between two writes of this server's connection count, so a busy server
    /// does not write to etcd on every connect. Default 1 s.
    pub publish_interval: Duration,
    /// Cancelled at shutdown: stops the background tasks (without leaving; see
    /// [`Registry::leave`]).
    pub shutdown: CancellationToken,
    /// Where the worker id probe starts; `None` (the default) starts at a hash of the server
    /// id, which spreads servers out. Tests set it to make servers compete for the same ids.
    pub first_worker_id: Option<u16>,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        Self {
            lease_ttl: Duration::from_secs(10),
            prefix: "/daehwa".to_owned(),
            publish_interval: Duration::from_secs(1),
            shutdown: CancellationToken::new(),
            first_worker_id: None,
        }
    }
}

/// A server's membership in an etcd-backed cluster: its leased entry and worker id, kept alive
/// by a background task, and the live server list, kept current by a watch.
pub struct EtcdRegistry {
    shared: Arc<Shared>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// What the background tasks and the trait methods share.
struct Shared {
    client: Client,
    /// This server; `connections` is taken from [`Shared::connections`] when written.
    me: ServerInfo,
    prefix: String,
    /// The TTL asked for (whole seconds).
    ttl: Duration,
    publish_interval: Duration,
    first_worker_id: u16,
    connections: AtomicU64,
    connections_changed: Notify,
    /// Stops the background tasks: a child of the shutdown token, cancelled by leave and drop.
    stop: CancellationToken,
    holding: Mutex<Holding>,
    /// The servers as last read or watched, by etcd key.
    peers: RwLock<BTreeMap<String, ServerInfo>>,
    left: AtomicBool,
    /// Test hook: while set, no keep-alive is sent.
    paused: AtomicBool,
}

/// The lease and worker id this server holds, and until when it may use the worker id.
#[derive(Debug, Clone, Copy, Default)]
struct Holding {
    lease: Option<i64>,
    worker: Option<u16>,
    /// `sent + TTL − margin` of the last successful keep-alive or grant.
    valid_until: Option<Instant>,
}

/// A lease the background task keeps alive.
struct Lease {
    id: i64,
    /// The smaller of the TTL asked for and the one granted: the fence is computed from it.
    ttl: Duration,
    /// The keep-alive stream, opened lazily and dropped after any error.
    keeper: Option<(LeaseKeeper, LeaseKeepAliveStream)>,
    /// When the last keep-alive (or the grant) that succeeded was sent.
    last_sent: Instant,
}

/// Why a keep-alive failed.
enum KeepAliveError {
    /// etcd says the lease no longer exists: the entry and the worker id are gone.
    Expired,
    /// etcd did not answer (down, unreachable, slow): the lease may still be alive.
    Unreachable(String),
}

/// The etcd client endpoints of a registry URL as Daehwa's configuration spells it,
/// `etcd://host:port[,host:port...]` (a cluster lists several members): `http://host:port`
/// each. `INVALID_ARGUMENT` for another scheme or no host.
pub fn endpoints_from_url(url: &str) -> Result<Vec<String>> {
    let hosts = url.strip_prefix("etcd://").ok_or_else(|| {
        Error::invalid(format!(
            "registry URL {url:?} must look like etcd://host:port[,host:port...]"
        ))
    })?;
    let endpoints: Vec<String> = hosts
        .trim_end_matches('/')
        .split(',')
        .map(str::trim)
        .filter(|host| !host.is_empty())
        .map(|host| format!("http://{host}"))
        .collect();
    if endpoints.is_empty() {
        return Err(Error::invalid(format!(
            "registry URL {url:?} names no etcd host"
        )));
    }
    Ok(endpoints)
}

impl EtcdRegistry {
    /// Joins the cluster: grants a lease, writes this server's entry, claims a worker id and
    /// reads the server list, then keeps all of it current in background tasks until
    /// [`leave`](Registry::leave), drop or `options.shutdown`. `UNAVAILABLE` when etcd cannot
    /// be reached or all 1,024 worker ids are taken. `endpoints` are `http://host:port` or
    /// `host:port` (see [`endpoints_from_url`]).
    pub async fn join(
        endpoints: Vec<String>,
        me: ServerInfo,
        options: EtcdOptions,
    ) -> Result<Arc<Self>> {
        if endpoints.is_empty() {
            return Err(Error::invalid("registry (etcd): no endpoints configured"));
        }
        let ttl = Duration::from_secs(options.lease_ttl.as_secs().max(1));
        let request_timeout = request_timeout(ttl);
        let connect = ConnectOptions::new()
            .with_connect_timeout(request_timeout)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        let client = Client::connect(&endpoints, Some(connect))
            .await
            .map_err(unavailable)?;
        let first_worker_id = options
            .first_worker_id
            .map(|n| n % WORKER_IDS)
            .unwrap_or_else(|| {
                (mix64(fnv1a(0xcbf2_9ce4_8422_2325, me.server_id.as_bytes()))
                    % u64::from(WORKER_IDS)) as u16
            });
        let shared = Arc::new(Shared {
            client,
            connections: AtomicU64::new(me.connections),
            me,
            prefix: options.prefix.trim_end_matches('/').to_owned(),
            ttl,
            publish_interval: options.publish_interval,
            first_worker_id,
            connections_changed: Notify::new(),
            stop: options.shutdown.child_token(),
            holding: Mutex::new(Holding::default()),
            peers: RwLock::new(BTreeMap::new()),
            left: AtomicBool::new(false),
            paused: AtomicBool::new(false),
        });
        let lease = shared.establish().await?;
        tracing::info!(
            server_id = %shared.me.server_id,
            worker_id = shared.holding().worker,
            lease = lease.id,
            "joined the cluster (etcd)"
        );
        if let Err(e) = shared.load_servers().await {
            shared.revoke(lease.id).await;
            return Err(e);
        }
        let tasks = vec![
            shared.spawn(Shared::keep_lease(shared.clone(), lease)),
            shared.spawn(Shared::watch_servers(shared.clone())),
        ];
        Ok(Arc::new(Self {
            shared,
            tasks: Mutex::new(tasks),
        }))
    }

    /// Test hook: stops (`true`) or resumes (`false`) sending keep-alives, so a test can let
    /// this server's lease expire while the others renew theirs.
    #[cfg(any(test, feature = "test-support"))]
    pub fn pause_keep_alive(&self, paused: bool) {
        self.shared.paused.store(paused, Ordering::SeqCst);
    }
}

impl Drop for EtcdRegistry {
    /// Stops the background tasks without leaving: the entry and worker id stay until the lease
    /// expires, as when the process dies.
    fn drop(&mut self) {
        self.shared.stop.cancel();
    }
}

#[async_trait::async_trait]
impl Registry for EtcdRegistry {
    fn servers(&self) -> Vec<ServerInfo> {
        let me = &self.shared.me.server_id;
        let mut servers: Vec<ServerInfo> = self
            .shared
            .peers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter(|s| &s.server_id != me)
            .cloned()
            .collect();
        if !self.shared.left.load(Ordering::SeqCst) {
            servers.push(self.shared.current_info());
        }
        servers
    }

    fn set_connections(&self, connections: u64) {
        if self.shared.connections.swap(connections, Ordering::Relaxed) != connections {
            self.shared.connections_changed.notify_one();
        }
    }

    fn worker_id(&self) -> Option<u16> {
        let holding = self.shared.holding();
        match (holding.worker, holding.valid_until) {
            (Some(worker), Some(until)) if Instant::now() < until => Some(worker),
            _ => None,
        }
    }

    async fn leave(&self) {
        if self.shared.left.swap(true, Ordering::SeqCst) {
            return;
        }
        self.shared.stop.cancel();
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(PoisonError::into_inner));
        for task in tasks {
            // The tasks end at the cancellation; a task that panicked has nothing to clean up.
            let _ = task.await;
        }
        let lease = {
            let mut holding = self
                .shared
                .holding
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            std::mem::take(&mut *holding).lease
        };
        if let Some(lease) = lease {
            self.shared.revoke(lease).await;
        }
        tracing::info!(server_id = %self.shared.me.server_id, "left the cluster (etcd)");
    }
}

impl Shared {
    fn holding(&self) -> Holding {
        *self.holding.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_holding(&self, holding: Holding) {
        *self.holding.lock().unwrap_or_else(PoisonError::into_inner) = holding;
    }

    fn current_info(&self) -> ServerInfo {
        let mut me = self.me.clone();
        me.connections = self.connections.load(Ordering::Relaxed);
        me
    }

    fn server_key(&self) -> String {
        format!("{}/servers/{}", self.prefix, self.me.server_id)
    }

    fn servers_prefix(&self) -> String {
        format!("{}/servers/", self.prefix)
    }

    fn workers_prefix(&self) -> String {
        format!("{}/workers/", self.prefix)
    }

    /// Runs `task` until it ends or the registry stops, whichever comes first: a stopped
    /// registry writes nothing more to etcd.
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) -> JoinHandle<()> {
        let stop = self.stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = task => {}
            }
        })
    }

    /// `call` with the request timeout, its error mapped to `UNAVAILABLE`.
    async fn call<T>(
        &self,
        what: &str,
        call: impl Future<Output = std::result::Result<T, etcd_client::Error>>,
    ) -> Result<T> {
        match tokio::time::timeout(request_timeout(self.ttl), call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(unavailable(format!("{what}: {e}"))),
            Err(_) => Err(unavailable(format!("{what}: no answer in time"))),
        }
    }

    /// Grants a lease, writes this server's entry under it and claims a worker id; on success
    /// the worker id is usable until the fence computed from the grant.
    async fn establish(&self) -> Result<Lease> {
        let sent = Instant::now();
        let mut lease_client = self.client.lease_client();
        let granted = self
            .call(
                "grant a lease",
                lease_client.grant(self.ttl.as_secs() as i64, None),
            )
            .await?;
        let ttl = Duration::from_secs(granted.ttl().max(0) as u64).min(self.ttl);
        let id = granted.id();
        let claimed = async {
            self.put_entry(id).await?;
            self.claim_worker(id).await
        }
        .await;
        match claimed {
            Ok(worker) => {
                self.set_holding(Holding {
                    lease: Some(id),
                    worker: Some(worker),
                    valid_until: Some(fence(sent, ttl)),
                });
                Ok(Lease {
                    id,
                    ttl,
                    keeper: None,
                    last_sent: sent,
                })
            }
            Err(e) => {
                self.revoke(id).await;
                Err(e)
            }
        }
    }

    /// Writes this server's entry (with the current connection count) under `lease`.
    async fn put_entry(&self, lease: i64) -> Result<u64> {
        let info = self.current_info();
        let json = serde_json::to_vec(&info)
            .map_err(|e| Error::internal(format!("encode the registry entry: {e}")))?;
        let mut kv = self.client.kv_client();
        // Written only when free or already ours (same lease): a second live server with the
        // same id would otherwise overwrite this one's entry and share its bus channel.
        let key = self.server_key();
        let write = Txn::new()
            .when([Compare::lease(key.clone(), CompareOp::Equal, lease)])
            .and_then([TxnOp::put(
                key.clone(),
                json.clone(),
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key.clone(), None)]);
        let answer = self
            .call("write this server's entry", kv.txn(write))
            .await?;
        if !answer.succeeded() {
            let holder = answer.op_responses().into_iter().find_map(|op| match op {
                TxnOpResponse::Get(get) => Some(get.kvs().first().map(|kv| kv.lease())),
                _ => None,
            });
            if let Some(Some(other)) = holder {
                return Err(Error::unavailable(format!(
                    "server id {:?} is already registered by another live server (lease {other}): \
                     every server needs a unique --server-id",
                    self.me.server_id
                )));
            }
            let create = Txn::new()
                .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key,
                    json,
                    Some(PutOptions::new().with_lease(lease)),
                )]);
            if !self
                .call("write this server's entry", kv.txn(create))
                .await?
                .succeeded()
            {
                return Err(Error::unavailable(format!(
                    "server id {:?} was registered by another server meanwhile: every server \
                     needs a unique --server-id",
                    self.me.server_id
                )));
            }
        }
        Ok(info.connections)
    }

    /// Claims the first free worker id from the probe start, each with a create-only
    /// transaction so two servers never both win the same key.
    async fn claim_worker(&self, lease: i64) -> Result<u16> {
        let prefix = self.workers_prefix();
        let mut kv = self.client.kv_client();
        let taken = self
            .call(
                "list worker ids",
                kv.get(
                    prefix.clone(),
                    Some(GetOptions::new().with_prefix().with_keys_only()),
                ),
            )
            .await?;
        let taken: HashSet<u16> = taken
            .kvs()
            .iter()
            .filter_map(|kv| kv.key_str().ok()?.strip_prefix(&prefix)?.parse().ok())
            .collect();
        for step in 0..WORKER_IDS {
            let n = (self.first_worker_id + step) % WORKER_IDS;
            if taken.contains(&n) {
                continue;
            }
            let key = format!("{prefix}{n}");
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key,
                    self.me.server_id.clone(),
                    Some(PutOptions::new().with_lease(lease)),
                )]);
            if self
                .call("claim a worker id", kv.txn(txn))
                .await?
                .succeeded()
            {
                return Ok(n);
            }
        }
        Err(unavailable(format!(
            "all {WORKER_IDS} worker ids are taken"
        )))
    }

    /// Revokes `lease` (deleting this server's keys), best effort: an unreachable etcd expires
    /// it after the TTL anyway.
    async fn revoke(&self, lease: i64) {
        let mut lease_client = self.client.lease_client();
        if let Err(e) = self
            .call("revoke the lease", lease_client.revoke(lease))
            .await
        {
            tracing::warn!(error = %e, lease, "could not revoke the registry lease; it will expire");
        }
    }

    /// The lease task: keeps the lease alive every TTL/3, publishes the connection count,
    /// and after losing the lease grants a new one and claims a worker id again.
    async fn keep_lease(self: Arc<Self>, lease: Lease) {
        let mut next_keep_alive = lease.last_sent + lease.ttl / 3;
        let mut lease = Some(lease);
        let mut published = self.connections.load(Ordering::Relaxed);
        let mut last_publish = Instant::now();
        let mut publish_due: Option<Instant> = None;
        let mut backoff = Backoff::new(self.ttl);
        let mut unreachable = false;
        let mut fenced = false;
        loop {
            let Some(current) = lease.as_mut() else {
                // Lost: a new lease, entry and worker id.
                match self.establish().await {
                    Ok(new) => {
                        tracing::info!(
                            server_id = %self.me.server_id,
                            worker_id = self.holding().worker,
                            lease = new.id,
                            "registry lease re-established"
                        );
                        published = self.connections.load(Ordering::Relaxed);
                        last_publish = Instant::now();
                        next_keep_alive = new.last_sent + new.ttl / 3;
                        lease = Some(new);
                        backoff.reset();
                        unreachable = false;
                        fenced = false;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot re-establish the registry lease; retrying");
                        tokio::time::sleep(backoff.next()).await;
                    }
                }
                continue;
            };

            // Log the fence when it falls, even while the keep-alive is still failing.
            let holding = self.holding();
            if !fenced
                && holding.worker.is_some()
                && holding.valid_until.is_some_and(|t| Instant::now() >= t)
            {
                fenced = true;
                tracing::warn!(
                    worker_id = holding.worker,
                    "no keep-alive acknowledged in time: this server stops using its worker id"
                );
            }

            tokio::select! {
                () = tokio::time::sleep_until(next_keep_alive.into()) => {}
                () = self.connections_changed.notified() => {
                    let now = self.connections.load(Ordering::Relaxed);
                    if now != published && publish_due.is_none() {
                        publish_due = Some((last_publish + self.publish_interval).max(Instant::now()));
                    }
                    continue;
                }
                () = sleep_until_opt(publish_due) => {
                    publish_due = None;
                    if self.connections.load(Ordering::Relaxed) != published {
                        last_publish = Instant::now();
                        match self.put_entry(current.id).await {
                            Ok(written) => published = written,
                            Err(e) => {
                                tracing::debug!(error = %e, "cannot publish the connection count; retrying");
                                publish_due = Some(Instant::now() + self.publish_interval);
                            }
                        }
                    }
                    continue;
                }
            }

            if self.paused.load(Ordering::SeqCst) {
                // Test hook: behave as if every keep-alive were lost.
                next_keep_alive = Instant::now() + Duration::from_millis(20);
                continue;
            }
            match self.keep_alive_once(current).await {
                Ok(()) => {
                    if unreachable || fenced {
                        tracing::info!(
                            lease = current.id,
                            worker_id = self.holding().worker,
                            "registry lease renewed again: etcd is reachable and the lease survived"
                        );
                    }
                    unreachable = false;
                    fenced = false;
                    backoff.reset();
                    next_keep_alive = current.last_sent + current.ttl / 3;
                }
                Err(KeepAliveError::Expired) => {
                    tracing::warn!(
                        lease = current.id,
                        "registry lease expired: entry and worker id are gone; re-joining"
                    );
                    self.set_holding(Holding::default());
                    lease = None;
                    backoff.reset();
                }
                Err(KeepAliveError::Unreachable(e)) => {
                    if unreachable {
                        tracing::debug!(error = %e, "keep-alive failed again");
                    } else {
                        tracing::warn!(error = %e, "registry (etcd) unreachable: keep-alive failed; retrying");
                        unreachable = true;
                    }
                    next_keep_alive = Instant::now() + backoff.next();
                }
            }
        }
    }

    /// One keep-alive round trip; on success moves the fence forward from the time it was
    /// sent.
    async fn keep_alive_once(&self, lease: &mut Lease) -> Result<(), KeepAliveError> {
        let sent = Instant::now();
        let timeout = request_timeout(self.ttl);
        let answered_ttl = match lease.keeper.as_mut() {
            None => {
                // Opening the stream sends the first keep-alive and waits for its answer.
                let mut lease_client = self.client.lease_client();
                match tokio::time::timeout(timeout, lease_client.keep_alive(lease.id)).await {
                    Ok(Ok(keeper)) => {
                        lease.keeper = Some(keeper);
                        None
                    }
                    Ok(Err(e)) if lease_gone(&e) => return Err(KeepAliveError::Expired),
                    Ok(Err(e)) => return Err(KeepAliveError::Unreachable(e.to_string())),
                    Err(_) => {
                        return Err(KeepAliveError::Unreachable(
                            "no keep-alive answer in time".to_owned(),
                        ));
                    }
                }
            }
            Some((keeper, stream)) => {
                let answer = async {
                    keeper.keep_alive().await?;
                    stream.message().await
                };
                match tokio::time::timeout(timeout, answer).await {
                    Ok(Ok(Some(answer))) if answer.ttl() > 0 => Some(answer.ttl()),
                    Ok(Ok(Some(_))) => return Err(KeepAliveError::Expired),
                    Ok(Err(e)) if lease_gone(&e) => return Err(KeepAliveError::Expired),
                    failed => {
                        lease.keeper = None;
                        return Err(KeepAliveError::Unreachable(match failed {
                            Ok(Err(e)) => e.to_string(),
                            Ok(Ok(None)) => "keep-alive stream closed".to_owned(),
                            _ => "no keep-alive answer in time".to_owned(),
                        }));
                    }
                }
            }
        };
        let ttl = answered_ttl.map_or(lease.ttl, |t| Duration::from_secs(t as u64).min(lease.ttl));
        lease.last_sent = sent;
        let mut holding = self.holding.lock().unwrap_or_else(PoisonError::into_inner);
        if holding.lease == Some(lease.id) {
            holding.valid_until = Some(fence(sent, ttl));
        }
        Ok(())
    }

    /// Reads every server entry and returns the revision read at.
    async fn load_servers(&self) -> Result<i64> {
        let prefix = self.servers_prefix();
        let mut kv = self.client.kv_client();
        let answer = self
            .call(
                "list servers",
                kv.get(prefix, Some(GetOptions::new().with_prefix())),
            )
            .await?;
        let revision = answer.header().map_or(0, |h| h.revision());
        let servers = answer
            .kvs()
            .iter()
            .filter_map(|kv| decode_entry(kv.key(), kv.value()))
            .collect();
        *self.peers.write().unwrap_or_else(PoisonError::into_inner) = servers;
        Ok(revision)
    }

    /// The watch task: keeps [`Shared::peers`] current; after any error or compaction it reads
    /// the list again and watches from there, with backoff.
    async fn watch_servers(self: Arc<Self>) {
        let mut backoff = Backoff::new(self.ttl);
        let mut failing = false;
        loop {
            let Err(e) = self.watch_once(&mut backoff, &mut failing).await;
            if failing {
                tracing::debug!(error = %e, "registry watch failed again");
            } else {
                tracing::warn!(error = %e, "registry watch interrupted; the server list may be stale until it is read again");
                failing = true;
            }
            tokio::time::sleep(backoff.next()).await;
        }
    }

    /// Reads the server list, then applies the changes after it until an error.
    async fn watch_once(
        &self,
        backoff: &mut Backoff,
        failing: &mut bool,
    ) -> Result<std::convert::Infallible> {
        let revision = self.load_servers().await?;
        let mut watch_client = self.client.watch_client();
        let mut stream = self
            .call(
                "watch servers",
                watch_client.watch(
                    self.servers_prefix(),
                    Some(
                        WatchOptions::new()
                            .with_prefix()
                            .with_start_revision(revision + 1),
                    ),
                ),
            )
            .await?;
        backoff.reset();
        if std::mem::take(failing) {
            tracing::info!("registry watch restored: the server list is current again");
        }
        loop {
            let answer = stream
                .message()
                .await
                .map_err(|e| unavailable(format!("watch servers: {e}")))?
                .ok_or_else(|| unavailable("watch servers: stream closed"))?;
            if answer.canceled() || answer.compact_revision() > 0 {
                return Err(unavailable(format!(
                    "watch servers: cancelled ({}; compacted at {})",
                    answer.cancel_reason(),
                    answer.compact_revision()
                )));
            }
            let mut peers = self.peers.write().unwrap_or_else(PoisonError::into_inner);
            for event in answer.events() {
                let Some(kv) = event.kv() else { continue };
                match event.event_type() {
                    EventType::Put => {
                        if let Some((key, info)) = decode_entry(kv.key(), kv.value()) {
                            peers.insert(key, info);
                        }
                    }
                    EventType::Delete => {
                        peers.remove(String::from_utf8_lossy(kv.key()).as_ref());
                    }
                }
            }
        }
    }
}

/// Whether etcd answered that the lease does not exist (expired or revoked), as opposed to
/// not answering: the client reports it as a keep-alive error or as gRPC `NOT_FOUND`.
fn lease_gone(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::LeaseKeepAliveError(message) => message.contains("not found"),
        etcd_client::Error::GRpcStatus(status) => {
            status.code() == tonic::Code::NotFound && status.message().contains("lease")
        }
        _ => false,
    }
}

/// A server entry from etcd, or `None` (logged) when it is not valid JSON.
fn decode_entry(key: &[u8], value: &[u8]) -> Option<(String, ServerInfo)> {
    let key = String::from_utf8_lossy(key).into_owned();
    match serde_json::from_slice(value) {
        Ok(info) => Some((key, info)),
        Err(e) => {
            tracing::warn!(%key, error = %e, "ignoring a malformed registry entry");
            None
        }
    }
}

/// Until when a worker id may be used after a keep-alive (or grant) sent at `sent` succeeded.
fn fence(sent: Instant, ttl: Duration) -> Instant {
    sent + ttl - ttl / 3
}

/// The longest wait for one etcd request: a third of the TTL, at least one second.
fn request_timeout(ttl: Duration) -> Duration {
    (ttl / 3).max(Duration::from_secs(1))
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// `UNAVAILABLE` naming the registry as the cause.
fn unavailable(e: impl Display) -> Error {
    Error::unavailable(format!("registry (etcd) unavailable: {e}"))
}

/// Exponential backoff with jitter, from 100 ms up to a third of the TTL (at most 3 s).
struct Backoff {
    current: Duration,
    max: Duration,
}

impl Backoff {
    const MIN: Duration = Duration::from_millis(100);

    fn new(ttl: Duration) -> Self {
        Self {
            current: Self::MIN,
            max: (ttl / 3).clamp(Self::MIN, Duration::from_secs(3)),
        }
    }

    fn reset(&mut self) {
        self.current = Self::MIN;
    }

    /// The next wait: the current step with up to half of it taken off at random, so servers
    /// that lost etcd together do not retry in lockstep.
    fn next(&mut self) -> Duration {
        let step = self.current;
        self.current = (self.current * 2).min(self.max);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let jitter = step.mul_f64((mix64(u64::from(nanos)) % 1000) as f64 / 2000.0);
        step - jitter
    }
}
