//! An in-process stand-in for a TiKV cluster (one PD and one TiKV store) that speaks their real
//! gRPC protocol, kvproto, compiled from the `.proto` files shipped in the `tikv-client` package.
//! It exists so that Daehwa's TiKV message store can be tested with the unmodified
//! `tikv-client` crate, on any machine, without a cluster.
//!
//! [`Standin::start`] binds two tonic servers on `127.0.0.1`, port 0: PD and the store. Give
//! [`Standin::pd_endpoint`] to `TransactionClient::new`. Dropping the [`Standin`] stops both.
//!
//! # What it implements
//! - PD: `GetMembers` (itself as leader), the `Tso` stream (monotonic timestamps, physical part
//!   from the wall clock), `GetRegion`, `GetRegionByID`, `GetStore`, `GetAllStores`. Every
//!   response carries a header with the cluster id. Region keys are memcomparable-encoded, as
//!   PD keeps them for transactional data.
//! - TiKV, transactional API: `KvGet`, `KvScan` (forward and reverse), `KvBatchGet`,
//!   `KvPrewrite` (including 1PC: `try_one_pc` commits at once and returns
//!   `one_pc_commit_ts`), `KvCommit`, `KvBatchRollback`, `KvTxnHeartBeat`, and lock resolution:
//!   `KvCheckTxnStatus`, `KvResolveLock`.
//! - MVCC as TiKV defines it for optimistic transactions (see `mvcc`): prewrite takes locks and
//!   fails with `KeyIsLocked` on another transaction's lock and with `WriteConflict` when a
//!   write newer than the start timestamp exists (or the transaction was rolled back); reads at
//!   a timestamp see the latest commit at or below it and report a lock taken at or below it as
//!   `KeyIsLocked`, which the client resolves through `CheckTxnStatus` (expired locks are
//!   rolled back) and `ResolveLock`.
//! - Regions: by default the key space is split in two regions at `split_keys` (both led by
//!   the one store), so the client's region routing and cross-region 2PC are exercised;
//!   requests are checked against the region named in their context (`KeyNotInRegion`,
//!   `RegionNotFound`).
//! - Every other call answers `UNIMPLEMENTED` naming the call.
//! - For tests: [`Standin::stats`] counts what was served (1PC and 2PC commits, conflicts,
//!   lock resolution), [`Standin::plant_orphan_lock`] leaves the lock of a crashed writer, and
//!   [`StandinOptions::scan_fault`] injects the symptoms of `tikv-client` 0.4.0's raw scan bug
//!   (duplicates, keys outside the range) into `KvScan` answers. The bug itself, in the client's
//!   raw scan, is not reproduced: the stand-in serves no raw API.
//!
//! # What it does not model
//! One process and one copy of the data: no Raft, no replication, no leader changes, no region
//! splits or merges at run time (the layout is fixed at start), no stale epochs, no GC, no
//! async commit, no pessimistic transactions, no raw API, no durability (memory only). Lock
//! TTLs use the wall clock like TiKV, but lock-resolution timing, back-pressure and latency of
//! a real cluster are not reproduced. It proves that a client uses the wire protocol and the
//! transaction semantics correctly; it proves nothing about a real cluster's failure
//! behaviour.

pub mod kvproto;
mod mvcc;
mod pd;
mod service;
mod tikv;

use std::{
    io,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use tokio::{net::TcpListener, sync::watch};
use tokio_stream::wrappers::TcpListenerStream;

use crate::mvcc::Mvcc;

/// How a [`Standin`] is laid out and how it behaves.
#[derive(Debug, Clone)]
pub struct StandinOptions {
    /// Raw (unencoded) keys at which the key space is split into regions; empty: one region.
    pub split_keys: Vec<Vec<u8>>,
    /// Fault injection for scan guards: `KvScan` answers each pair twice and adds the keys
    /// just outside the requested range, the symptoms `tikv-client` 0.4.0's raw scan showed.
    pub scan_fault: bool,
}

impl Default for StandinOptions {
    /// Two regions, split at `[0x80]`: keys whose first byte has the high bit set live in the
    /// second one.
    fn default() -> Self {
        Self {
            split_keys: vec![vec![0x80]],
            scan_fault: false,
        }
    }
}

/// Counters of what the stand-in has served, for tests that want to show which protocol paths
/// were exercised.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Prewrites committed at once (1PC).
    pub one_pc_commits: u64,
    /// `KvCommit` calls that succeeded (2PC).
    pub two_pc_commits: u64,
    /// Prewrites answered with a write conflict.
    pub write_conflicts: u64,
    /// Reads or prewrites answered with `KeyIsLocked`.
    pub key_is_locked: u64,
    /// `KvCheckTxnStatus` calls.
    pub check_txn_status: u64,
    /// `KvResolveLock` calls.
    pub resolve_lock: u64,
    /// `KvBatchRollback` calls.
    pub rollbacks: u64,
}

/// One region: `[start, end)` in raw keys (`end` empty: unbounded).
#[derive(Debug, Clone)]
pub(crate) struct Region {
    pub(crate) id: u64,
    pub(crate) start: Vec<u8>,
    pub(crate) end: Vec<u8>,
}

impl Region {
    pub(crate) fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice() && (self.end.is_empty() || key < self.end.as_slice())
    }
}

/// The counters behind [`Stats`].
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) one_pc_commits: AtomicU64,
    pub(crate) two_pc_commits: AtomicU64,
    pub(crate) write_conflicts: AtomicU64,
    pub(crate) key_is_locked: AtomicU64,
    pub(crate) check_txn_status: AtomicU64,
    pub(crate) resolve_lock: AtomicU64,
    pub(crate) rollbacks: AtomicU64,
}

/// The state both servers share.
pub(crate) struct Shared {
    pub(crate) cluster_id: u64,
    pub(crate) store_id: u64,
    pub(crate) pd_addr: SocketAddr,
    pub(crate) store_addr: SocketAddr,
    pub(crate) regions: Vec<Region>,
    pub(crate) scan_fault: bool,
    pub(crate) mvcc: Mutex<Mvcc>,
    /// `(physical ms, last logical)` of the last timestamp handed out.
    tso: Mutex<(i64, i64)>,
    stopped: AtomicBool,
    pub(crate) stop_rx: watch::Receiver<bool>,
    pub(crate) counters: Counters,
}

/// Logical timestamps per physical millisecond (TiKV's 18 bits).
const LOGICAL_LIMIT: i64 = 1 << 18;

impl Shared {
    /// `UNAVAILABLE` once the stand-in is stopped, like a cluster that went away.
    pub(crate) fn check_running(&self) -> Result<(), tonic::Status> {
        if self.stopped.load(Ordering::Acquire) {
            return Err(tonic::Status::unavailable("the TiKV stand-in is stopped"));
        }
        Ok(())
    }

    /// Allocates `count` timestamps; returns the physical part and the last logical one (the
    /// batch is `last - count + 1 ..= last`, as PD's TSO answers).
    pub(crate) fn allocate_ts(&self, count: u32) -> (i64, i64) {
        let count = i64::from(count.max(1));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        let mut tso = self.tso.lock().unwrap_or_else(|e| e.into_inner());
        if now > tso.0 {
            *tso = (now, 0);
        }
        if tso.1 + count >= LOGICAL_LIMIT {
            *tso = (tso.0 + 1, 0);
        }
        tso.1 += count;
        *tso
    }

    /// One fresh timestamp as a version (`physical << 18 | logical`).
    pub(crate) fn next_version(&self) -> u64 {
        let (physical, logical) = self.allocate_ts(1);
        u64::try_from((physical << 18) + logical).unwrap_or(0)
    }

    pub(crate) fn region_by_id(&self, id: u64) -> Option<&Region> {
        self.regions.iter().find(|r| r.id == id)
    }
}

/// A running stand-in: PD and one TiKV store on `127.0.0.1`. Stops when dropped.
pub struct Standin {
    shared: Arc<Shared>,
    stop_tx: watch::Sender<bool>,
}

impl Standin {
    /// Starts a stand-in with [`StandinOptions::default`].
    pub async fn start() -> io::Result<Self> {
        Self::start_with(StandinOptions::default()).await
    }

    /// Starts a stand-in laid out and behaving as `options` says.
    pub async fn start_with(options: StandinOptions) -> io::Result<Self> {
        let pd_listener = TcpListener::bind("127.0.0.1:0").await?;
        let store_listener = TcpListener::bind("127.0.0.1:0").await?;
        let mut splits = options.split_keys;
        splits.retain(|k| !k.is_empty());
        splits.sort();
        splits.dedup();
        let mut regions = Vec::new();
        let mut start = Vec::new();
        for (i, split) in splits.into_iter().chain([Vec::new()]).enumerate() {
            let id = 2 + i as u64;
            regions.push(Region {
                id,
                start: std::mem::replace(&mut start, split.clone()),
                end: split,
            });
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            cluster_id: 0x00da_e7a0,
            store_id: 1,
            pd_addr: pd_listener.local_addr()?,
            store_addr: store_listener.local_addr()?,
            regions,
            scan_fault: options.scan_fault,
            mvcc: Mutex::new(Mvcc::default()),
            tso: Mutex::new((0, 0)),
            stopped: AtomicBool::new(false),
            stop_rx: stop_rx.clone(),
            counters: Counters::default(),
        });
        service::serve(
            TcpListenerStream::new(pd_listener),
            pd::router(shared.clone()),
            stop_rx.clone(),
        );
        service::serve(
            TcpListenerStream::new(store_listener),
            tikv::router(shared.clone()),
            stop_rx,
        );
        Ok(Self { shared, stop_tx })
    }

    /// The PD endpoint (`127.0.0.1:PORT`) to hand to the client.
    pub fn pd_endpoint(&self) -> String {
        self.shared.pd_addr.to_string()
    }

    /// What has been served so far.
    pub fn stats(&self) -> Stats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            one_pc_commits: get(&c.one_pc_commits),
            two_pc_commits: get(&c.two_pc_commits),
            write_conflicts: get(&c.write_conflicts),
            key_is_locked: get(&c.key_is_locked),
            check_txn_status: get(&c.check_txn_status),
            resolve_lock: get(&c.resolve_lock),
            rollbacks: get(&c.rollbacks),
        }
    }

    /// Leaves a lock on `key` from a transaction that prewrote `value` there (as its primary)
    /// and then vanished, with a TTL of `ttl_ms` from now: the situation a client crash leaves,
    /// for tests of lock resolution. The next reader must resolve it (roll it back once
    /// expired) before it can proceed.
    pub fn plant_orphan_lock(&self, key: Vec<u8>, value: Vec<u8>, ttl_ms: u64) {
        let start_ts = self.shared.next_version();
        let mut mvcc = self.shared.mvcc.lock().unwrap_or_else(|e| e.into_inner());
        mvcc.plant_lock(key, start_ts, ttl_ms, value);
    }

    /// Stops both servers: listeners close, open streams end and every call still arriving on
    /// an open connection answers `UNAVAILABLE`. The data is gone with the stand-in.
    pub fn stop(&self) {
        self.shared.stopped.store(true, Ordering::Release);
        let _ = self.stop_tx.send(true);
    }
}

impl Drop for Standin {
    fn drop(&mut self) {
        self.stop();
    }
}

impl std::fmt::Debug for Standin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Standin")
            .field("pd", &self.shared.pd_addr)
            .field("store", &self.shared.store_addr)
            .finish_non_exhaustive()
    }
}
