//! Recent "these two are friends" answers for the send path. Every direct message needs the
//! check, and asking the directory each time was the largest single cost of a send (with
//! SQLite: p50 latency 14.8 ms against 0.9 ms without the query at 20k msg/s, BENCHMARKS.md).
//!
//! Only positive answers are kept (a new friendship works at once), each for [`TTL`]. A
//! friendship ended through this server is forgotten at once, and an answer read from the
//! directory while that happens is not kept (the epoch check in [`FriendshipCache::remember`]),
//! so in one process an ended friendship stops direct messages immediately. Ended through
//! another chat server of a cluster, it stops them here within [`TTL`].

use std::{
    collections::HashMap,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use crate::ids::UserId;

/// How long a positive answer is trusted: the bound on how late an unfriend made on another
/// chat server takes effect here.
pub const TTL: Duration = Duration::from_secs(2);
/// The most pairs kept; when full, expired pairs are dropped, and if none are, all.
const CAPACITY: usize = 100_000;

/// Positive friendship answers, keyed by the ordered pair.
pub struct FriendshipCache {
    /// How long an answer is kept ([`TTL`] but in tests).
    ttl: Duration,
    /// Pair -> when its answer expires.
    friends: Mutex<HashMap<(UserId, UserId), Instant>>,
    /// Bumped by every [`FriendshipCache::forget`].
    epoch: AtomicU64,
}

impl Default for FriendshipCache {
    fn default() -> Self {
        Self::with_ttl(TTL)
    }
}

/// A reading of the cache's epoch, taken before asking the directory.
#[derive(Debug, Clone, Copy)]
pub struct Epoch(u64);

fn ordered(a: UserId, b: UserId) -> (UserId, UserId) {
    if a.0 <= b.0 { (a, b) } else { (b, a) }
}

impl FriendshipCache {
    /// A cache keeping answers for `ttl`.
    pub fn with_ttl(ttl: Duration) -> Self {
        Self {
            ttl,
            friends: Mutex::default(),
            epoch: AtomicU64::new(0),
        }
    }

    /// Whether `a` and `b` were friends less than [`TTL`] ago; `Err` carries the epoch to
    /// pass to [`Self::remember`] after asking the directory.
    pub fn check(&self, a: UserId, b: UserId) -> Result<(), Epoch> {
        let epoch = Epoch(self.epoch.load(Ordering::SeqCst));
        let friends = self.friends.lock().unwrap_or_else(PoisonError::into_inner);
        match friends.get(&ordered(a, b)) {
            Some(expires) if *expires > Instant::now() => Ok(()),
            _ => Err(epoch),
        }
    }

    /// Keeps the directory's "friends" answer, unless a friendship ended since `epoch` was
    /// read (the answer may predate it).
    pub fn remember(&self, a: UserId, b: UserId, epoch: Epoch) {
        let mut friends = self.friends.lock().unwrap_or_else(PoisonError::into_inner);
        if self.epoch.load(Ordering::SeqCst) != epoch.0 {
            return;
        }
        let now = Instant::now();
        if friends.len() >= CAPACITY {
            friends.retain(|_, expires| *expires > now);
            if friends.len() >= CAPACITY {
                friends.clear();
            }
        }
        friends.insert(ordered(a, b), now + self.ttl);
    }

    /// Drops the pair: called after the directory ended their friendship.
    pub fn forget(&self, a: UserId, b: UserId) {
        let mut friends = self.friends.lock().unwrap_or_else(PoisonError::into_inner);
        self.epoch.fetch_add(1, Ordering::SeqCst);
        friends.remove(&ordered(a, b));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_pairs_are_known_in_either_order_until_forgotten() {
        let cache = FriendshipCache::default();
        let epoch = cache.check(UserId(1), UserId(2)).expect_err("unknown");
        cache.remember(UserId(2), UserId(1), epoch);
        assert!(cache.check(UserId(1), UserId(2)).is_ok());
        assert!(cache.check(UserId(1), UserId(3)).is_err());
        cache.forget(UserId(1), UserId(2));
        assert!(cache.check(UserId(2), UserId(1)).is_err());
    }

    #[test]
    fn answers_expire() {
        let cache = FriendshipCache::with_ttl(Duration::ZERO);
        let epoch = cache.check(UserId(1), UserId(2)).expect_err("unknown");
        cache.remember(UserId(1), UserId(2), epoch);
        assert!(cache.check(UserId(1), UserId(2)).is_err());
    }

    #[test]
    fn an_answer_read_before_a_forget_is_not_kept() {
        let cache = FriendshipCache::default();
        let epoch = cache.check(UserId(1), UserId(2)).expect_err("unknown");
        // The friendship ends while the directory answered "friends".
        cache.forget(UserId(1), UserId(2));
        cache.remember(UserId(1), UserId(2), epoch);
        assert!(cache.check(UserId(1), UserId(2)).is_err());
    }
}
