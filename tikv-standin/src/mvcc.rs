//! The stand-in's storage: a single-node, in-memory MVCC key space with Percolator locks, the
//! model TiKV's transactional API implements (locks from prewrite, write records from commit
//! and rollback, reads at a timestamp). Every operation runs under one mutex, so each call is
//! atomic; conflicts between transactions are detected exactly as the protocol defines them,
//! not by timing.

// The protocol's `KeyError` is large, but it is built once per failed call and moved straight
// into the response, so boxing it would only add an allocation.
#![allow(clippy::result_large_err)]

use std::{collections::BTreeMap, ops::Bound};

use crate::kvproto::kvrpcpb::{
    Action, AlreadyExist, KeyError, LockInfo, Mutation, Op, TxnInfo, TxnNotFound, WriteConflict,
    write_conflict::Reason,
};

/// The physical part (milliseconds) of a TSO timestamp.
pub(crate) fn physical(ts: u64) -> u64 {
    ts >> 18
}

/// A prewrite lock on one key.
#[derive(Debug, Clone)]
struct Lock {
    primary: Vec<u8>,
    start_ts: u64,
    ttl: u64,
    /// What commit will write: `Put`, `Del` or `Lock`.
    op: Op,
    value: Vec<u8>,
    txn_size: u64,
}

/// What a write record says about its transaction's effect on a key.
#[derive(Debug, Clone)]
enum WriteKind {
    Put(Vec<u8>),
    Delete,
    /// A committed `Op::Lock`: no new value.
    Lock,
    /// The transaction was rolled back on this key; `commit_ts == start_ts`.
    Rollback,
}

/// One committed (or rolled back) version of a key.
#[derive(Debug, Clone)]
struct Write {
    start_ts: u64,
    commit_ts: u64,
    kind: WriteKind,
}

/// The key space: locks and write records (ascending by `commit_ts`) per key.
#[derive(Debug, Default)]
pub(crate) struct Mvcc {
    locks: BTreeMap<Vec<u8>, Lock>,
    writes: BTreeMap<Vec<u8>, Vec<Write>>,
}

/// The outcome of a read of one key.
pub(crate) type ReadResult = Result<Option<Vec<u8>>, Box<KeyError>>;

fn locked(key: &[u8], lock: &Lock) -> Box<KeyError> {
    Box::new(KeyError {
        locked: Some(lock_info(key, lock)),
        ..Default::default()
    })
}

fn lock_info(key: &[u8], lock: &Lock) -> LockInfo {
    LockInfo {
        primary_lock: lock.primary.clone(),
        lock_version: lock.start_ts,
        key: key.to_vec(),
        lock_ttl: lock.ttl,
        txn_size: lock.txn_size,
        lock_type: lock.op as i32,
        ..Default::default()
    }
}

fn abort(message: String) -> KeyError {
    KeyError {
        abort: message,
        ..Default::default()
    }
}

impl Mvcc {
    /// The value of `key` visible at `ts`, or the lock that hides it.
    pub(crate) fn get(&self, key: &[u8], ts: u64) -> ReadResult {
        if let Some(lock) = self.locks.get(key) {
            // A lock taken before the read's snapshot may commit below it: the reader must
            // resolve it first. `Op::Lock` locks never change the value.
            if lock.start_ts <= ts && lock.op != Op::Lock {
                return Err(locked(key, lock));
            }
        }
        Ok(self.committed_value(key, ts))
    }

    /// The latest committed value at `ts`, ignoring locks.
    fn committed_value(&self, key: &[u8], ts: u64) -> Option<Vec<u8>> {
        let writes = self.writes.get(key)?;
        for write in writes.iter().rev().filter(|w| w.commit_ts <= ts) {
            match &write.kind {
                WriteKind::Put(value) => return Some(value.clone()),
                WriteKind::Delete => return None,
                WriteKind::Lock | WriteKind::Rollback => {}
            }
        }
        None
    }

    /// Keys of `[start, end)` (`end` empty: unbounded) that have a lock or a write record, in
    /// order (descending when `reverse`).
    pub(crate) fn keys_in(&self, start: &[u8], end: &[u8], reverse: bool) -> Vec<Vec<u8>> {
        let upper = if end.is_empty() {
            Bound::Unbounded
        } else {
            Bound::Excluded(end.to_vec())
        };
        let range = (Bound::Included(start.to_vec()), upper);
        let mut keys: Vec<Vec<u8>> = self
            .writes
            .range(range.clone())
            .map(|(k, _)| k.clone())
            .chain(self.locks.range(range).map(|(k, _)| k.clone()))
            .collect();
        keys.sort();
        keys.dedup();
        if reverse {
            keys.reverse();
        }
        keys
    }

    /// Prewrite: lock every mutated key for `start_ts`, or report why not (a lock of another
    /// transaction, a newer commit = write conflict, an existing key for `Insert`). Nothing is
    /// written unless every mutation passes. With `one_pc`, the mutations are committed at once
    /// (instead of being locked) at the timestamp it draws, which is returned.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn prewrite(
        &mut self,
        mutations: &[Mutation],
        primary: &[u8],
        start_ts: u64,
        ttl: u64,
        txn_size: u64,
        one_pc: Option<&dyn Fn() -> u64>,
    ) -> (Vec<KeyError>, Option<u64>) {
        let mut errors = Vec::new();
        let mut accepted = Vec::new();
        for m in mutations {
            let op = Op::try_from(m.op).unwrap_or(Op::Put);
            if let Some(lock) = self.locks.get(&m.key) {
                if lock.start_ts != start_ts {
                    errors.push(*locked(&m.key, lock));
                }
                // Our own lock: a retried prewrite, nothing to do.
                continue;
            }
            let writes = self
                .writes
                .get(&m.key)
                .map(Vec::as_slice)
                .unwrap_or_default();
            if let Some(own) = writes.iter().find(|w| w.start_ts == start_ts) {
                if matches!(own.kind, WriteKind::Rollback) {
                    errors.push(conflict(
                        &m.key,
                        primary,
                        start_ts,
                        own,
                        Reason::SelfRolledBack,
                    ));
                }
                // Already committed: a retried prewrite after commit.
                continue;
            }
            if let Some(newest) = writes.last()
                && newest.commit_ts > start_ts
            {
                errors.push(conflict(
                    &m.key,
                    primary,
                    start_ts,
                    newest,
                    Reason::Optimistic,
                ));
                continue;
            }
            if matches!(op, Op::Insert | Op::CheckNotExists)
                && self.committed_value(&m.key, u64::MAX).is_some()
            {
                errors.push(KeyError {
                    already_exist: Some(AlreadyExist { key: m.key.clone() }),
                    ..Default::default()
                });
                continue;
            }
            let lock_op = match op {
                Op::Put | Op::Insert => Op::Put,
                Op::Del => Op::Del,
                Op::Lock => Op::Lock,
                // Checks only: nothing to lock or commit.
                _ => continue,
            };
            accepted.push((
                m.key.clone(),
                Lock {
                    primary: primary.to_vec(),
                    start_ts,
                    ttl,
                    op: lock_op,
                    value: m.value.clone(),
                    txn_size,
                },
            ));
        }
        if !errors.is_empty() {
            return (errors, None);
        }
        let one_pc_commit_ts = one_pc.map(|allocate| allocate());
        for (key, lock) in accepted {
            match one_pc_commit_ts {
                Some(commit_ts) => self.commit_lock(key, &lock, commit_ts),
                None => {
                    self.locks.insert(key, lock);
                }
            }
        }
        (Vec::new(), one_pc_commit_ts)
    }

    fn commit_lock(&mut self, key: Vec<u8>, lock: &Lock, commit_ts: u64) {
        let kind = match lock.op {
            Op::Put => WriteKind::Put(lock.value.clone()),
            Op::Del => WriteKind::Delete,
            _ => WriteKind::Lock,
        };
        self.push_write(
            key,
            Write {
                start_ts: lock.start_ts,
                commit_ts,
                kind,
            },
        );
    }

    fn push_write(&mut self, key: Vec<u8>, write: Write) {
        let writes = self.writes.entry(key).or_default();
        let at = writes.partition_point(|w| w.commit_ts <= write.commit_ts);
        writes.insert(at, write);
    }

    fn own_write(&self, key: &[u8], start_ts: u64) -> Option<&Write> {
        self.writes
            .get(key)?
            .iter()
            .find(|w| w.start_ts == start_ts)
    }

    fn rollback_key(&mut self, key: &[u8], start_ts: u64) -> Result<(), KeyError> {
        if self.locks.get(key).is_some_and(|l| l.start_ts == start_ts) {
            self.locks.remove(key);
        } else if let Some(own) = self.own_write(key, start_ts) {
            if matches!(own.kind, WriteKind::Rollback) {
                return Ok(());
            }
            return Err(abort(format!(
                "transaction {start_ts} is already committed at {}",
                own.commit_ts
            )));
        }
        // Also without a lock: a rollback record keeps a late prewrite from succeeding.
        self.push_write(
            key.to_vec(),
            Write {
                start_ts,
                commit_ts: start_ts,
                kind: WriteKind::Rollback,
            },
        );
        Ok(())
    }

    /// Commits `start_ts`'s locks on `keys` at `commit_ts`; idempotent once committed.
    pub(crate) fn commit(
        &mut self,
        keys: &[Vec<u8>],
        start_ts: u64,
        commit_ts: u64,
    ) -> Result<(), KeyError> {
        if commit_ts <= start_ts {
            return Err(abort(format!(
                "commit ts {commit_ts} is not above start ts {start_ts}"
            )));
        }
        for key in keys {
            let ours = self.locks.get(key).is_some_and(|l| l.start_ts == start_ts);
            if ours {
                continue;
            }
            match self.own_write(key, start_ts) {
                Some(w) if !matches!(w.kind, WriteKind::Rollback) => {}
                _ => {
                    return Err(KeyError {
                        retryable: format!(
                            "TxnLockNotFound {{ start_ts: {start_ts}, commit_ts: {commit_ts} }}"
                        ),
                        ..Default::default()
                    });
                }
            }
        }
        for key in keys {
            if let Some(lock) = self.locks.remove(key) {
                self.commit_lock(key.clone(), &lock, commit_ts);
            }
        }
        Ok(())
    }

    /// Rolls back `start_ts` on `keys`.
    pub(crate) fn rollback(&mut self, keys: &[Vec<u8>], start_ts: u64) -> Result<(), KeyError> {
        for key in keys {
            self.rollback_key(key, start_ts)?;
        }
        Ok(())
    }

    /// The status of transaction `lock_ts` from its primary key; rolls back an expired lock,
    /// and a missing one when `rollback_if_not_exist`. Returns the response's fields
    /// `(lock_ttl, commit_version, action, lock_info)`.
    pub(crate) fn check_txn_status(
        &mut self,
        primary: &[u8],
        lock_ts: u64,
        current_ts: u64,
        rollback_if_not_exist: bool,
    ) -> Result<(u64, u64, Action, Option<LockInfo>), KeyError> {
        if let Some(lock) = self.locks.get(primary).filter(|l| l.start_ts == lock_ts) {
            if physical(current_ts) >= physical(lock_ts).saturating_add(lock.ttl) {
                self.rollback_key(primary, lock_ts)?;
                return Ok((0, 0, Action::TtlExpireRollback, None));
            }
            let info = lock_info(primary, lock);
            return Ok((lock.ttl.max(1), 0, Action::NoAction, Some(info)));
        }
        match self.own_write(primary, lock_ts) {
            Some(Write {
                kind: WriteKind::Rollback,
                ..
            }) => Ok((0, 0, Action::NoAction, None)),
            Some(w) => Ok((0, w.commit_ts, Action::NoAction, None)),
            None if rollback_if_not_exist => {
                self.rollback_key(primary, lock_ts)?;
                Ok((0, 0, Action::LockNotExistRollback, None))
            }
            None => Err(KeyError {
                txn_not_found: Some(TxnNotFound {
                    start_ts: lock_ts,
                    primary_key: primary.to_vec(),
                }),
                ..Default::default()
            }),
        }
    }

    /// Commits (status > 0) or rolls back (status 0) every lock of the given transactions in
    /// `[start, end)`, or only on `keys` when given.
    pub(crate) fn resolve(&mut self, txns: &[TxnInfo], keys: &[Vec<u8>], start: &[u8], end: &[u8]) {
        let candidates: Vec<Vec<u8>> = if keys.is_empty() {
            self.keys_in(start, end, false)
        } else {
            keys.to_vec()
        };
        for key in candidates {
            let Some(lock) = self.locks.get(&key).cloned() else {
                continue;
            };
            let Some(txn) = txns.iter().find(|t| t.txn == lock.start_ts) else {
                continue;
            };
            self.locks.remove(&key);
            if txn.status > 0 {
                self.commit_lock(key, &lock, txn.status);
            } else {
                self.push_write(
                    key,
                    Write {
                        start_ts: lock.start_ts,
                        commit_ts: lock.start_ts,
                        kind: WriteKind::Rollback,
                    },
                );
            }
        }
    }

    /// Leaves a prewrite lock on `key` as a client that crashed after prewrite would.
    pub(crate) fn plant_lock(&mut self, key: Vec<u8>, start_ts: u64, ttl: u64, value: Vec<u8>) {
        let lock = Lock {
            primary: key.clone(),
            start_ts,
            ttl,
            op: Op::Put,
            value,
            txn_size: 1,
        };
        self.locks.insert(key, lock);
    }

    /// Extends the TTL of `start_ts`'s primary lock; returns the TTL now in force.
    pub(crate) fn heart_beat(
        &mut self,
        primary: &[u8],
        start_ts: u64,
        advise_ttl: u64,
    ) -> Result<u64, KeyError> {
        match self.locks.get_mut(primary) {
            Some(lock) if lock.start_ts == start_ts => {
                lock.ttl = lock.ttl.max(advise_ttl);
                Ok(lock.ttl)
            }
            _ => Err(KeyError {
                txn_not_found: Some(TxnNotFound {
                    start_ts,
                    primary_key: primary.to_vec(),
                }),
                ..Default::default()
            }),
        }
    }
}

/// A write conflict error: a newer write, or the transaction's own rollback.
fn conflict(key: &[u8], primary: &[u8], start_ts: u64, write: &Write, reason: Reason) -> KeyError {
    KeyError {
        conflict: Some(WriteConflict {
            start_ts,
            conflict_ts: write.start_ts,
            key: key.to_vec(),
            primary: primary.to_vec(),
            conflict_commit_ts: write.commit_ts,
            reason: reason as i32,
        }),
        ..Default::default()
    }
}
