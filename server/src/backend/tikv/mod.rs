//! [`TikvMessageStore`]: the [`MessageStore`] on TiKV, through `tikv-client`'s transactional
//! API, for a cluster of chat servers sharing one TiKV cluster (`--store tikv://PD1,PD2`).
//!
//! # Key layout
//! Every integer is big-endian, so a byte-ordered scan is a scan in id and seq order. `conv` is
//! [`ConversationId::to_key`] (17 bytes); `h(x)` is a 2-byte hash of `x` (the top 16 bits of
//! FNV-1a 64, frozen: changing it would orphan stored data) that spreads conversations and
//! users over the key space, so busy conversations land in different regions instead of piling
//! into the last one.
//!
//! | key | value |
//! |---|---|
//! | `c` `h(conv)` `conv` `h` | head: the conversation's last seq (absent: 0) |
//! | `c` `h(conv)` `conv` `m` `seq` | the prost-encoded wire `Message` |
//! | `c` `h(conv)` `conv` `i` `client_msg_id` | the seq stored under that id (idempotency) |
//! | `c` `h(conv)` `conv` `r` `user` | the user's read position (absent: 0) |
//! | `u` `h(user)` `user` `d` `conv` | `[1]`: a direct conversation of the user |
//!
//! A conversation's keys share one prefix, so they stay together (one region, unless a region
//! boundary falls inside one conversation): an append then touches a single region and commits
//! in one phase (`try_one_pc`; tikv-client only uses 1PC when every key is in one region and
//! falls back to 2PC otherwise, e.g. for the first message of a direct conversation, whose
//! index rows live under the users' prefixes).
//!
//! # Gapless seq across servers
//! An append is one optimistic transaction: read the head (and the idempotency key) at the
//! start timestamp, write `head + 1`, the message, the idempotency key and the sender's read
//! position. Two appenders of one conversation, on any servers, both write the head key, so
//! the second to prewrite gets a write conflict and its whole transaction is dropped: nothing of
//! it is stored, so no seq is skipped, and the append is retried from the top (bounded attempts
//! with jittered exponential backoff). Appends of one server to one conversation also queue on a
//! local lock stripe first, so conflicts come only from other servers. After a failed commit the
//! transaction is rolled back, so no lock is left behind on other regions.
//!
//! # Idempotency
//! The idempotency key is read in the same snapshot as the head: a retry finds it and answers
//! the stored message with `duplicate = true`. Two concurrent first appends of one id both write
//! the head, so one of them conflicts, retries and then finds the other's id.
//!
//! # Reads
//! `read_after` (the sync batch) is a range scan of the log in one snapshot, paged; every scan
//! result goes through [`guard_scan`] (only keys inside the requested range, ascending, no
//! duplicates), because `tikv-client` 0.4.0's raw scan was seen returning duplicates and keys
//! outside a bounded range in the last region; the raw API is not used at all. `read_before`
//! and `conversation_states` know their keys and use `batch_get` in one snapshot.
//!
//! # Failure
//! Every client call is bounded by [`CALL_TIMEOUT`] and every operation by [`OP_TIMEOUT`];
//! engine errors, timeouts, exhausted retries and a closed store are
//! `Unavailable("message store (TiKV) unavailable: ...")`, so callers get `UNAVAILABLE` and
//! retry. A commit whose outcome is unknown (the connection dropped while committing) is also
//! `Unavailable`: the client's retry with the same `client_msg_id` then stores the message once
//! or answers the stored one. Transactions are created with `CheckLevel::Warn`, so one dropped
//! uncommitted (a timeout) logs instead of panicking.
//!
//! # Tests
//! `tests.rs` runs the conformance suite and the cross-server checks against
//! `daehwa-tikv-standin`, an in-process PD + TiKV speaking the real kvproto gRPC protocol. That
//! proves this module's use of the client and the wire protocol, the key layout, region routing
//! over a fixed multi-region layout, and the transaction semantics as the stand-in implements
//! them (single-node MVCC, Percolator locks, write-conflict detection, lock resolution, 1PC and
//! 2PC). It does not prove Raft replication, durability, region splits or leader changes under
//! load, real lock-resolution timing or latency. The conformance suite also runs against a real
//! cluster when `TIKV_PD_ENDPOINTS` is set.

use std::{
    fmt::Display,
    future::Future,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use async_trait::async_trait;
use daehwa::v1::Message;
use prost::Message as _;
use tikv_client::{
    CheckLevel, Config, KvPair, Snapshot, Transaction, TransactionClient, TransactionOptions,
    transaction::HeartbeatOption,
};
use tokio::sync::Mutex;

use crate::{
    backend::message_store::{Appended, ConversationState, MessageStore, NewMessage},
    error::{Error, Result},
    ids::{ConversationId, UserId},
};

/// How long [`TikvMessageStore::connect`] may take to reach PD.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The bound of one client call (a read, a commit, a timestamp).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// The bound of one store operation, retries included.
pub const OP_TIMEOUT: Duration = Duration::from_secs(20);
/// Attempts of one read-modify-write transaction before giving up with `Unavailable`.
const MAX_ATTEMPTS: u32 = 64;
/// Keys asked per scan page.
const PAGE: usize = 256;
/// Extra keys asked per scan page, so that stray keys a scan returns cannot crowd out wanted
/// ones (see [`guard_scan`]).
const SCAN_SLACK: usize = 16;
/// Local lock stripes that queue one server's appends per conversation.
const STRIPES: usize = 64;

/// The TiKV-backed [`MessageStore`]. Any number of instances, in any number of processes, may
/// share one cluster; see the module doc for the layout and the guarantees.
pub struct TikvMessageStore {
    client: TransactionClient,
    closed: AtomicBool,
    stripes: Vec<Mutex<()>>,
}

impl std::fmt::Debug for TikvMessageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TikvMessageStore")
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// An error of the engine, a timeout or a closed store, as the caller sees it.
fn unavailable(what: impl Display) -> Error {
    Error::unavailable(format!("message store (TiKV) unavailable: {what}"))
}

/// Runs one client call within [`CALL_TIMEOUT`].
async fn call<T>(
    what: &str,
    fut: impl Future<Output = tikv_client::Result<T>>,
) -> std::result::Result<T, Failure> {
    match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            let kind = if is_conflict(&e) {
                EngineFailure::Conflict
            } else if matches!(e, tikv_client::Error::UndeterminedError(_)) {
                EngineFailure::Undetermined
            } else {
                EngineFailure::Other
            };
            Err(Failure::Engine(format!("{what}: {e}"), kind))
        }
        Err(_) => Err(Failure::Engine(
            format!("{what}: no answer within {CALL_TIMEOUT:?}"),
            EngineFailure::Other,
        )),
    }
}

/// Why an attempt failed.
#[derive(Debug)]
enum Failure {
    /// From the engine (or a timeout).
    Engine(String, EngineFailure),
    /// Not retried: corruption or a bug.
    Fatal(Error),
}

/// What an engine failure means for the transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EngineFailure {
    /// Another transaction got there first: retrying may succeed.
    Conflict,
    /// The commit may or may not have happened: do not touch the transaction again.
    Undetermined,
    /// Anything else: the engine is unavailable.
    Other,
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Self::Fatal(e)
    }
}

/// True for errors that mean "another transaction got there first": retry the transaction.
fn is_conflict(e: &tikv_client::Error) -> bool {
    use tikv_client::Error as E;
    match e {
        E::KeyError(k) => {
            k.conflict.is_some()
                || k.locked.is_some()
                || k.already_exist.is_some()
                || !k.retryable.is_empty()
        }
        E::MultipleKeyErrors(v) | E::ExtractedErrors(v) => v.iter().any(is_conflict),
        E::ResolveLockError(_) | E::OnePcFailure | E::DuplicateKeyInsertion => true,
        E::PessimisticLockError { inner, .. } => is_conflict(inner),
        _ => false,
    }
}

/// FNV-1a 64; the top 16 bits are the spreading prefix of the key layout. Frozen.
fn spread(bytes: &[u8]) -> [u8; 2] {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let [a, b, ..] = hash.to_be_bytes();
    [a, b]
}

/// The keys of the layout (see the module doc).
mod keys {
    use super::spread;
    use crate::ids::{ConversationId, UserId};

    /// `c h(conv) conv`: the prefix of everything of one conversation.
    pub(super) fn conversation(conv: ConversationId) -> Vec<u8> {
        let conv = conv.to_key();
        let mut key = Vec::with_capacity(1 + 2 + 17 + 1 + 8);
        key.push(b'c');
        key.extend_from_slice(&spread(&conv));
        key.extend_from_slice(&conv);
        key
    }

    fn tagged(conv: ConversationId, tag: u8, suffix: &[u8]) -> Vec<u8> {
        let mut key = conversation(conv);
        key.push(tag);
        key.extend_from_slice(suffix);
        key
    }

    pub(super) fn head(conv: ConversationId) -> Vec<u8> {
        tagged(conv, b'h', &[])
    }

    pub(super) fn message(conv: ConversationId, seq: u64) -> Vec<u8> {
        tagged(conv, b'm', &seq.to_be_bytes())
    }

    /// The end (exclusive) of a conversation's log.
    pub(super) fn log_end(conv: ConversationId) -> Vec<u8> {
        tagged(conv, b'm' + 1, &[])
    }

    /// The seq of a message key.
    pub(super) fn seq_of(key: &[u8]) -> Option<u64> {
        let tail = key.len().checked_sub(8).and_then(|at| key.get(at..))?;
        Some(u64::from_be_bytes(tail.try_into().ok()?))
    }

    pub(super) fn client_msg_id(conv: ConversationId, id: &str) -> Vec<u8> {
        tagged(conv, b'i', id.as_bytes())
    }

    pub(super) fn read_position(conv: ConversationId, user: UserId) -> Vec<u8> {
        tagged(conv, b'r', &user.0.to_be_bytes())
    }

    /// `u h(user) user d`: the prefix of a user's direct index.
    pub(super) fn direct_prefix(user: UserId) -> Vec<u8> {
        let user = user.0.to_be_bytes();
        let mut key = Vec::with_capacity(1 + 2 + 8 + 1 + 17);
        key.push(b'u');
        key.extend_from_slice(&spread(&user));
        key.extend_from_slice(&user);
        key.push(b'd');
        key
    }

    pub(super) fn direct(user: UserId, conv: ConversationId) -> Vec<u8> {
        let mut key = direct_prefix(user);
        key.extend_from_slice(&conv.to_key());
        key
    }

    /// The smallest key after every key starting with `prefix`.
    pub(super) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
        let mut end = prefix.to_vec();
        while let Some(last) = end.pop() {
            if last < u8::MAX {
                end.push(last + 1);
                return end;
            }
        }
        Vec::new()
    }
}

/// The guard every scan result passes through: keeps only keys in `[start, end)` (`end`
/// empty: unbounded), in strictly increasing key order, each once. `tikv-client` 0.4.0's raw
/// scan was seen returning duplicates and keys outside a bounded range in the last region; this
/// store never relies on a scan being well-behaved.
pub fn guard_scan(
    pairs: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>,
    start: &[u8],
    end: &[u8],
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut kept: Vec<_> = pairs
        .into_iter()
        .filter(|(k, _)| k.as_slice() >= start && (end.is_empty() || k.as_slice() < end))
        .collect();
    kept.sort_by(|a, b| a.0.cmp(&b.0));
    kept.dedup_by(|a, b| a.0 == b.0);
    kept
}

/// A read-only view at one timestamp: a `Snapshot` or an open transaction.
enum View<'a> {
    Snapshot(Box<Snapshot>),
    Txn(&'a mut Transaction),
}

impl View<'_> {
    async fn batch_get(
        &mut self,
        keys: Vec<Vec<u8>>,
    ) -> std::result::Result<Vec<(Vec<u8>, Vec<u8>)>, Failure> {
        let mut found = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(PAGE) {
            let chunk = chunk.to_vec();
            let pairs: Vec<KvPair> = match self {
                View::Snapshot(s) => {
                    call("batch_get", async {
                        s.batch_get(chunk).await.map(Iterator::collect)
                    })
                    .await?
                }
                View::Txn(t) => {
                    call("batch_get", async {
                        t.batch_get(chunk).await.map(Iterator::collect)
                    })
                    .await?
                }
            };
            found.extend(pairs.into_iter().map(|p| (p.0.into(), p.1)));
        }
        Ok(found)
    }

    async fn get(&mut self, key: Vec<u8>) -> std::result::Result<Option<Vec<u8>>, Failure> {
        Ok(self.batch_get(vec![key]).await?.pop().map(|(_, v)| v))
    }

    /// Up to `limit` pairs of `[start, end)` in key order, paged and guarded.
    async fn scan(
        &mut self,
        start: Vec<u8>,
        end: Vec<u8>,
        limit: usize,
    ) -> std::result::Result<Vec<(Vec<u8>, Vec<u8>)>, Failure> {
        let mut out = Vec::new();
        let mut from = start;
        while out.len() < limit {
            let want = (limit - out.len()).min(PAGE);
            let ask = want + SCAN_SLACK;
            let ask_u32 = u32::try_from(ask).unwrap_or(u32::MAX);
            let range = from.clone()..end.clone();
            let raw: Vec<KvPair> = match self {
                View::Snapshot(s) => {
                    call("scan", async {
                        s.scan(range, ask_u32).await.map(Iterator::collect)
                    })
                    .await?
                }
                View::Txn(t) => {
                    call("scan", async {
                        t.scan(range, ask_u32).await.map(Iterator::collect)
                    })
                    .await?
                }
            };
            let exhausted = raw.len() < ask;
            let page = guard_scan(raw.into_iter().map(|p| (p.0.into(), p.1)), &from, &end);
            let Some(last) = page.last().map(|(k, _)| k.clone()) else {
                break;
            };
            out.extend(page.into_iter().take(want));
            if exhausted {
                break;
            }
            // Continue right after the last key seen.
            from = out.last().map_or(last, |(k, _)| k.clone());
            from.push(0);
        }
        out.truncate(limit);
        Ok(out)
    }
}

fn decode(record: &[u8]) -> Result<Message> {
    Message::decode(record)
        .map_err(|e| Error::internal(format!("message store: undecodable message record: {e}")))
}

fn decode_u64(what: &str, bytes: &[u8]) -> Result<u64> {
    <[u8; 8]>::try_from(bytes)
        .map(u64::from_be_bytes)
        .map_err(|_| Error::internal(format!("message store: bad {what} value {bytes:02x?}")))
}

/// A Unix time in milliseconds as a protobuf timestamp.
fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        // rem_euclid(1000) is in 0..1000, so the product fits an i32.
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

/// The outcome of one append attempt that did not fail.
enum AppendOutcome {
    Stored(Message),
    Duplicate(Message),
}

impl TikvMessageStore {
    /// Connects to the cluster through its PD endpoints (`host:port`, comma-free), within
    /// [`CONNECT_TIMEOUT`]; `Unavailable` when PD cannot be reached.
    pub async fn connect(pd_endpoints: Vec<String>) -> Result<Self> {
        if pd_endpoints.is_empty() {
            return Err(Error::invalid("the TiKV message store needs a PD endpoint"));
        }
        let config = Config::default().with_timeout(CALL_TIMEOUT);
        let client = tokio::time::timeout(
            CONNECT_TIMEOUT,
            TransactionClient::new_with_config(pd_endpoints.clone(), config),
        )
        .await
        .map_err(|_| {
            unavailable(format!(
                "PD {pd_endpoints:?} did not answer within {CONNECT_TIMEOUT:?}"
            ))
        })?
        .map_err(|e| unavailable(format!("connecting to PD {pd_endpoints:?}: {e}")))?;
        Ok(Self {
            client,
            closed: AtomicBool::new(false),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
        })
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(unavailable("the store is closed"));
        }
        Ok(())
    }

    fn options() -> TransactionOptions {
        TransactionOptions::new_optimistic()
            .try_one_pc()
            .drop_check(CheckLevel::Warn)
            .heartbeat_option(HeartbeatOption::NoHeartbeat)
    }

    /// A snapshot at a fresh timestamp, for reads.
    async fn snapshot(&self) -> std::result::Result<View<'static>, Failure> {
        let ts = call("timestamp", self.client.current_timestamp()).await?;
        let options = TransactionOptions::new_optimistic()
            .read_only()
            .drop_check(CheckLevel::None)
            .heartbeat_option(HeartbeatOption::NoHeartbeat);
        Ok(View::Snapshot(Box::new(self.client.snapshot(ts, options))))
    }

    /// Runs `attempt` in fresh transactions until one commits, is refused for good, or
    /// [`MAX_ATTEMPTS`] / [`OP_TIMEOUT`] run out.
    async fn transact<T, F>(&self, what: &str, mut attempt: F) -> Result<T>
    where
        F: for<'t> FnMut(
            &'t mut Transaction,
        ) -> std::pin::Pin<
            Box<dyn Future<Output = std::result::Result<(T, bool), Failure>> + Send + 't>,
        >,
        T: Send,
    {
        let run = async {
            let mut delay = Duration::from_millis(1);
            let mut last = String::new();
            for _ in 0..MAX_ATTEMPTS {
                self.check_open()?;
                match self.attempt_once(&mut attempt).await {
                    Ok(v) => return Ok(v),
                    Err(Failure::Fatal(e)) => return Err(e),
                    Err(Failure::Engine(msg, EngineFailure::Conflict)) => last = msg,
                    Err(Failure::Engine(msg, _)) => return Err(unavailable(msg)),
                }
                // Jittered exponential backoff before the next attempt.
                let jitter = rand_below(delay.as_micros() as u64 + 1);
                tokio::time::sleep(delay / 2 + Duration::from_micros(jitter / 2)).await;
                delay = (delay * 2).min(Duration::from_millis(50));
            }
            Err(unavailable(format!(
                "{what}: still conflicting after {MAX_ATTEMPTS} attempts: {last}"
            )))
        };
        tokio::time::timeout(OP_TIMEOUT, run)
            .await
            .map_err(|_| unavailable(format!("{what}: not done within {OP_TIMEOUT:?}")))?
    }

    /// One transaction: begin, run `attempt`, commit when it asks to (else roll back).
    async fn attempt_once<T, F>(&self, attempt: &mut F) -> std::result::Result<T, Failure>
    where
        F: for<'t> FnMut(
            &'t mut Transaction,
        ) -> std::pin::Pin<
            Box<dyn Future<Output = std::result::Result<(T, bool), Failure>> + Send + 't>,
        >,
    {
        let mut txn = call("begin", self.client.begin_with_options(Self::options())).await?;
        let result = attempt(&mut txn).await;
        match result {
            Ok((value, true)) => match call("commit", txn.commit()).await {
                Ok(_) => Ok(value),
                Err(failure) => {
                    let undetermined =
                        matches!(failure, Failure::Engine(_, EngineFailure::Undetermined));
                    if !undetermined {
                        // Clear any lock the failed commit left (best effort).
                        let _ = tokio::time::timeout(CALL_TIMEOUT, txn.rollback()).await;
                    }
                    Err(failure)
                }
            },
            Ok((value, false)) => {
                let _ = tokio::time::timeout(CALL_TIMEOUT, txn.rollback()).await;
                Ok(value)
            }
            Err(failure) => {
                let _ = tokio::time::timeout(CALL_TIMEOUT, txn.rollback()).await;
                Err(failure)
            }
        }
    }

    fn stripe(&self, conv: ConversationId) -> &Mutex<()> {
        let [a, b] = spread(&conv.to_key());
        &self.stripes[usize::from(u16::from_be_bytes([a, b])) % STRIPES]
    }
}

/// A cheap random number in `0..n` for backoff jitter.
fn rand_below(n: u64) -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::Instant::now()) % n.max(1)
}

/// One append attempt inside `txn`.
async fn append_in(
    txn: &mut Transaction,
    new: &NewMessage,
) -> std::result::Result<(AppendOutcome, bool), Failure> {
    let conv = new.conversation;
    let (head_key, id_key) = (
        keys::head(conv),
        keys::client_msg_id(conv, &new.client_msg_id),
    );
    let found = View::Txn(&mut *txn)
        .batch_get(vec![head_key.clone(), id_key.clone()])
        .await?;
    let value_of = |key: &[u8]| found.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    if let Some(seq) = value_of(&id_key) {
        let seq = decode_u64("client_msg_id", &seq)?;
        let record = View::Txn(&mut *txn).get(keys::message(conv, seq)).await?;
        let record = record.ok_or_else(|| {
            Error::internal(format!(
                "message store: {conv}: client_msg_id {:?} names seq {seq}, which is missing",
                new.client_msg_id
            ))
        })?;
        return Ok((AppendOutcome::Duplicate(decode(&record)?), false));
    }
    let head = match value_of(&head_key) {
        Some(v) => decode_u64("head", &v)?,
        None => 0,
    };
    let seq = head + 1;
    let message = Message {
        message_id: new.message_id,
        conversation_id: conv.to_string(),
        seq,
        sender_id: new.sender.0,
        sender_device_id: new.sender_device.0,
        client_msg_id: new.client_msg_id.clone(),
        content: Some(new.content.clone()),
        created_at: Some(timestamp(new.created_at_ms)),
    };
    let seq_bytes = seq.to_be_bytes().to_vec();
    let mut puts = vec![
        (head_key, seq_bytes.clone()),
        (keys::message(conv, seq), message.encode_to_vec()),
        (id_key, seq_bytes.clone()),
        // One's own message is read; every earlier position is lower than the new seq.
        (keys::read_position(conv, new.sender), seq_bytes),
    ];
    if let (1, ConversationId::Direct { lo, hi }) = (seq, conv) {
        puts.push((keys::direct(lo, conv), vec![1]));
        puts.push((keys::direct(hi, conv), vec![1]));
    }
    for (key, value) in puts {
        call("put", txn.put(key, value)).await?;
    }
    Ok((AppendOutcome::Stored(message), true))
}

/// One `mark_read` attempt inside `txn`: returns the resulting position.
async fn mark_read_in(
    txn: &mut Transaction,
    user: UserId,
    conv: ConversationId,
    seq: u64,
) -> std::result::Result<(u64, bool), Failure> {
    let (head_key, read_key) = (keys::head(conv), keys::read_position(conv, user));
    let found = View::Txn(&mut *txn)
        .batch_get(vec![head_key.clone(), read_key.clone()])
        .await?;
    let value_of = |key: &[u8]| -> Result<u64> {
        match found.iter().find(|(k, _)| k == key) {
            Some((_, v)) => decode_u64("position", v),
            None => Ok(0),
        }
    };
    let (head, current) = (value_of(&head_key)?, value_of(&read_key)?);
    let target = seq.min(head);
    if target <= current {
        return Ok((current, false));
    }
    call("put", txn.put(read_key, target.to_be_bytes().to_vec())).await?;
    Ok((target, true))
}

/// A failure of a read-only operation as the caller sees it.
fn read_failure(what: &str, failure: Failure) -> Error {
    match failure {
        Failure::Fatal(e) => e,
        Failure::Engine(msg, _) => unavailable(format!("{what}: {msg}")),
    }
}

impl TikvMessageStore {
    /// Runs a read-only operation (which opens its snapshot) within [`OP_TIMEOUT`].
    async fn bounded<T>(
        &self,
        what: &str,
        run: impl Future<Output = std::result::Result<T, Failure>>,
    ) -> Result<T> {
        self.check_open()?;
        match tokio::time::timeout(OP_TIMEOUT, run).await {
            Ok(result) => result.map_err(|f| read_failure(what, f)),
            Err(_) => Err(unavailable(format!(
                "{what}: not done within {OP_TIMEOUT:?}"
            ))),
        }
    }
}

#[async_trait]
impl MessageStore for TikvMessageStore {
    async fn append(&self, new: NewMessage) -> Result<Appended> {
        self.check_open()?;
        if new.client_msg_id.is_empty() {
            return Err(Error::invalid("client_msg_id must not be empty"));
        }
        // This server's appends to one conversation queue here; other servers' conflict. The
        // wait is bounded like the operation itself.
        let _turn = tokio::time::timeout(OP_TIMEOUT, self.stripe(new.conversation).lock())
            .await
            .map_err(|_| {
                unavailable(format!(
                    "append: queued behind other appends for {OP_TIMEOUT:?}"
                ))
            })?;
        let outcome = self
            .transact("append", |txn| {
                let new = new.clone();
                Box::pin(async move { append_in(txn, &new).await })
            })
            .await?;
        Ok(match outcome {
            AppendOutcome::Stored(message) => Appended {
                message,
                duplicate: false,
            },
            AppendOutcome::Duplicate(message) => Appended {
                message,
                duplicate: true,
            },
        })
    }

    async fn read_after(
        &self,
        conversation: ConversationId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Message>> {
        let Some(first) = after_seq.checked_add(1) else {
            return Ok(Vec::new());
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        let (start, end) = (
            keys::message(conversation, first),
            keys::log_end(conversation),
        );
        let pairs = self
            .bounded("read_after", async {
                self.snapshot().await?.scan(start, end, limit).await
            })
            .await?;
        decode_log(conversation, pairs)
    }

    async fn read_before(
        &self,
        conversation: ConversationId,
        before_seq: u64,
        limit: usize,
    ) -> Result<Vec<Message>> {
        if limit == 0 || before_seq == 1 {
            return Ok(Vec::new());
        }
        let pairs = self
            .bounded("read_before", async {
                let mut view = self.snapshot().await?;
                let head = match view.get(keys::head(conversation)).await? {
                    Some(v) => decode_u64("head", &v)?,
                    None => 0,
                };
                let last = match before_seq {
                    0 => head,
                    n => (n - 1).min(head),
                };
                if last == 0 {
                    return Ok(Vec::new());
                }
                let count = u64::try_from(limit).unwrap_or(u64::MAX).min(last);
                let first = last - count + 1;
                let wanted: Vec<Vec<u8>> = (first..=last)
                    .map(|seq| keys::message(conversation, seq))
                    .collect();
                let mut found = view.batch_get(wanted).await?;
                found.sort_by(|a, b| a.0.cmp(&b.0));
                if found.len() as u64 != count {
                    return Err(Error::internal(format!(
                        "message store: {conversation}: {} of the messages {first}..={last} are stored",
                        found.len()
                    ))
                    .into());
                }
                Ok(found)
            })
            .await?;
        decode_log(conversation, pairs)
    }

    async fn conversation_states(
        &self,
        user: UserId,
        conversations: &[ConversationId],
    ) -> Result<Vec<ConversationState>> {
        if conversations.is_empty() {
            return Ok(Vec::new());
        }
        self.bounded("conversation_states", async {
            let mut view = self.snapshot().await?;
            let mut wanted = Vec::with_capacity(conversations.len() * 2);
            for &conv in conversations {
                wanted.push(keys::head(conv));
                wanted.push(keys::read_position(conv, user));
            }
            let found = view.batch_get(wanted).await?;
            let value = |key: &[u8]| -> Result<u64> {
                match found.iter().find(|(k, _)| k == key) {
                    Some((_, v)) => decode_u64("position", v),
                    None => Ok(0),
                }
            };
            let mut states = Vec::with_capacity(conversations.len());
            for &conv in conversations {
                states.push(ConversationState {
                    conversation: conv,
                    last_seq: value(&keys::head(conv))?,
                    last_message: None,
                    read_seq: value(&keys::read_position(conv, user))?,
                });
            }
            let last_keys: Vec<Vec<u8>> = states
                .iter()
                .filter(|s| s.last_seq > 0)
                .map(|s| keys::message(s.conversation, s.last_seq))
                .collect();
            let last = view.batch_get(last_keys).await?;
            for state in states.iter_mut().filter(|s| s.last_seq > 0) {
                let key = keys::message(state.conversation, state.last_seq);
                let (_, record) = last.iter().find(|(k, _)| *k == key).ok_or_else(|| {
                    Error::internal(format!(
                        "message store: {}: head {} is missing",
                        state.conversation, state.last_seq
                    ))
                })?;
                state.last_message = Some(decode(record)?);
            }
            Ok(states)
        })
        .await
    }

    async fn mark_read(&self, user: UserId, conversation: ConversationId, seq: u64) -> Result<u64> {
        self.check_open()?;
        self.transact("mark_read", |txn| {
            Box::pin(mark_read_in(txn, user, conversation, seq))
        })
        .await
    }

    async fn direct_conversations(&self, user: UserId) -> Result<Vec<ConversationId>> {
        let prefix = keys::direct_prefix(user);
        let end = keys::prefix_end(&prefix);
        let pairs = self
            .bounded("direct_conversations", async {
                let mut view = self.snapshot().await?;
                view.scan(prefix.clone(), end, usize::MAX).await
            })
            .await?;
        pairs
            .iter()
            .map(|(key, _)| {
                key.get(prefix.len()..)
                    .and_then(ConversationId::from_key)
                    .ok_or_else(|| {
                        Error::internal(format!("message store: bad direct index key {key:02x?}"))
                    })
            })
            .collect()
    }

    async fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        Ok(())
    }
}

/// Decodes a guarded page of the log, checking each record sits under its own seq.
fn decode_log(conv: ConversationId, pairs: Vec<(Vec<u8>, Vec<u8>)>) -> Result<Vec<Message>> {
    pairs
        .iter()
        .map(|(key, record)| {
            let message = decode(record)?;
            if keys::seq_of(key) != Some(message.seq) {
                return Err(Error::internal(format!(
                    "message store: {conv}: record of seq {} under key {key:02x?}",
                    message.seq
                )));
            }
            Ok(message)
        })
        .collect()
}

#[cfg(test)]
mod tests;
