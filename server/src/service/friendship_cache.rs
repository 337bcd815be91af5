//! Recent "these two are friends" answers for the send path. Every direct message needs the
//! check, and asking the directory each time was the largest single cost of a send (with
//! SQLite: p50 latency 14.8 ms against 0.9 ms without the query at 20k msg/s, BENCHMARKS.md).
//!
//! Only positive answers are kept (a new friendship works at once), each for [`TTL`]. A
//! friendship ended through this server is forgotten at once, and an answer read from the
//! directory while that happens is not kept (the epoch of [`ExpiringCache`]), so in one
//! process an ended friendship stops direct messages immediately. Ended through another
//! chat server of a cluster, it stops them here within [`TTL`].

use std::time::Duration;

use super::expiring_cache::{self, ExpiringCache};
use crate::ids::UserId;

/// How long a positive answer is trusted: the bound on how late an unfriend made on another
/// chat server takes effect here.
pub const TTL: Duration = Duration::from_secs(2);
/// The most pairs kept; when full, expired pairs are dropped, and if none are, all.
const CAPACITY: usize = 100_000;

/// A reading of the cache's epoch, taken before asking the directory (a type of its own, so
/// that a reading of another cache cannot be passed here).
#[derive(Debug, Clone, Copy)]
pub struct Epoch(expiring_cache::Epoch);

/// Positive friendship answers, keyed by the ordered pair.
pub struct FriendshipCache {
    friends: ExpiringCache<(UserId, UserId), ()>,
}

impl Default for FriendshipCache {
    fn default() -> Self {
        Self::with_ttl(TTL)
    }
}

fn ordered(a: UserId, b: UserId) -> (UserId, UserId) {
    if a.0 <= b.0 { (a, b) } else { (b, a) }
}

impl FriendshipCache {
    /// A cache keeping answers for `ttl`.
    pub fn with_ttl(ttl: Duration) -> Self {
        Self {
            friends: ExpiringCache::new(ttl, CAPACITY, |()| 1),
        }
    }

    /// Whether `a` and `b` were friends less than [`TTL`] ago; `Err` carries the epoch to
    /// pass to [`Self::remember`] after asking the directory.
    pub fn check(&self, a: UserId, b: UserId) -> Result<(), Epoch> {
        self.friends.get(&ordered(a, b)).map_err(Epoch)
    }

    /// Keeps the directory's "friends" answer, unless a friendship ended since `epoch` was
    /// read (the answer may predate it).
    pub fn remember(&self, a: UserId, b: UserId, epoch: Epoch) {
        self.friends.remember(ordered(a, b), (), epoch.0);
    }

    /// Drops the pair: called after the directory ended their friendship.
    pub fn forget(&self, a: UserId, b: UserId) {
        self.friends.forget(&ordered(a, b));
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
