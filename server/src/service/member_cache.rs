//! Recent member lists of groups for the send, read and sync paths. Every group message needs
//! its member list (who may send, who receives), and reading it from the directory each time
//! cost a query returning every member: for a 10,000-member group that query, not the
//! delivery, was most of the sender's wait (BENCHMARKS.md, scenario d).
//!
//! A list is kept for [`TTL`]. A membership change made through this server (add, remove,
//! leave) forgets the group's list at once, and a list read from the directory while that
//! happens is not kept (the epoch of [`ExpiringCache`]), so in one process a change takes
//! effect immediately. Made through another chat server of a cluster, it takes effect here
//! within [`TTL`]: a removed member can still send or read here that long, and a new
//! member's live deliveries from here start that late (its device sees the seq gap on the
//! next message and catches up by sync). A member missing from a kept list is asked again
//! (see `ChatService::ensure_reader`), so a new member is never refused for a stale list.

use std::{sync::Arc, time::Duration};

use super::expiring_cache::{self, ExpiringCache};
use crate::ids::{GroupId, UserId};

/// How long a member list is trusted: the bound on how late a membership change made on
/// another chat server takes effect here.
pub const TTL: Duration = Duration::from_secs(2);
/// The most member ids kept over all groups (8 bytes each); when a list would pass it,
/// expired lists are dropped, and if that is not enough, all. An empty list counts one.
const CAPACITY: usize = 1_000_000;

/// A group's members, sorted by id (so membership is a binary search).
pub type Members = Arc<[UserId]>;

/// A reading of the cache's epoch, taken before asking the directory (a type of its own, so
/// that a reading of another cache cannot be passed here).
#[derive(Debug, Clone, Copy)]
pub struct Epoch(expiring_cache::Epoch);

/// Member lists by group.
pub struct MemberCache {
    lists: ExpiringCache<GroupId, Members>,
}

impl Default for MemberCache {
    fn default() -> Self {
        Self::with_ttl(TTL)
    }
}

impl MemberCache {
    /// A cache keeping lists for `ttl`.
    pub fn with_ttl(ttl: Duration) -> Self {
        Self {
            lists: ExpiringCache::new(ttl, CAPACITY, |members: &Members| members.len()),
        }
    }

    /// The group's members if they were read less than the TTL ago; `Err` carries the epoch
    /// to pass to [`Self::remember`] after asking the directory.
    pub fn get(&self, group: GroupId) -> Result<Members, Epoch> {
        self.lists.get(&group).map_err(Epoch)
    }

    /// The epoch now, for a directory read that follows a kept list without the caller in it.
    pub fn epoch(&self) -> Epoch {
        Epoch(self.lists.epoch())
    }

    /// Sorts the directory's member list, keeps it unless a membership changed since `epoch`
    /// was read (the list may predate the change), and returns it.
    pub fn remember(&self, group: GroupId, mut members: Vec<UserId>, epoch: Epoch) -> Members {
        members.sort_unstable();
        members.dedup();
        let members: Members = members.into();
        self.lists.remember(group, members.clone(), epoch.0);
        members
    }

    /// Drops the group's list: called after the directory changed its membership.
    pub fn forget(&self, group: GroupId) {
        self.lists.forget(&group);
    }

    /// Forgets the group's list when the returned guard is dropped: held across a directory
    /// change, so the list is forgotten after it even when the caller is cancelled mid-way
    /// (a client that hangs up does not leave a stale list behind).
    pub fn forget_after(&self, group: GroupId) -> ForgetOnDrop<'_> {
        ForgetOnDrop { cache: self, group }
    }
}

/// See [`MemberCache::forget_after`].
pub struct ForgetOnDrop<'a> {
    cache: &'a MemberCache,
    group: GroupId,
}

impl Drop for ForgetOnDrop<'_> {
    fn drop(&mut self) {
        self.cache.forget(self.group);
    }
}

/// Whether sorted `members` holds `user`.
pub fn contains(members: &[UserId], user: UserId) -> bool {
    members.binary_search(&user).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(raw: &[u64]) -> Vec<UserId> {
        raw.iter().map(|&id| UserId(id)).collect()
    }

    #[test]
    fn a_remembered_list_is_sorted_and_kept_until_forgotten() {
        let cache = MemberCache::default();
        let epoch = cache.get(GroupId(7)).expect_err("unknown group");
        let members = cache.remember(GroupId(7), ids(&[30, 10, 20, 10]), epoch);
        assert_eq!(&*members, ids(&[10, 20, 30]).as_slice());
        assert!(contains(&members, UserId(20)));
        assert!(!contains(&members, UserId(25)));
        assert_eq!(&*cache.get(GroupId(7)).expect("kept"), &*members);
        assert!(cache.get(GroupId(8)).is_err());
        cache.forget(GroupId(7));
        assert!(cache.get(GroupId(7)).is_err());
    }

    #[test]
    fn lists_expire() {
        let cache = MemberCache::with_ttl(Duration::ZERO);
        let epoch = cache.get(GroupId(1)).expect_err("unknown group");
        cache.remember(GroupId(1), ids(&[1, 2]), epoch);
        assert!(cache.get(GroupId(1)).is_err());
    }

    #[test]
    fn a_list_read_before_a_change_is_not_kept() {
        let cache = MemberCache::default();
        let epoch = cache.get(GroupId(1)).expect_err("unknown group");
        // A member is removed while the directory answered with the old list.
        cache.forget(GroupId(1));
        let members = cache.remember(GroupId(1), ids(&[1, 2]), epoch);
        assert_eq!(members.len(), 2, "the caller still gets the list it read");
        assert!(cache.get(GroupId(1)).is_err());
    }

    #[test]
    fn the_cache_stays_within_its_capacity() {
        let cache = MemberCache::default();
        let half = CAPACITY / 2 + 1;
        let big = |offset: u64| (0..half as u64).map(|i| UserId(offset + i)).collect();
        let epoch = cache.get(GroupId(1)).expect_err("unknown group");
        cache.remember(GroupId(1), big(0), epoch);
        let epoch = cache.get(GroupId(2)).expect_err("unknown group");
        cache.remember(GroupId(2), big(1 << 32), epoch);
        assert!(cache.size() <= CAPACITY, "{} member ids kept", cache.size());
        assert!(cache.get(GroupId(2)).is_ok(), "the newest list is kept");
        assert!(cache.get(GroupId(1)).is_err(), "the older one made room");
    }

    impl MemberCache {
        /// The member ids kept, as counted (checked against the kept lists).
        fn size(&self) -> usize {
            self.lists.weight()
        }
    }

    #[test]
    fn the_size_follows_every_change() {
        let cache = MemberCache::default();
        let epoch = cache.get(GroupId(1)).expect_err("unknown group");
        cache.remember(GroupId(1), ids(&[1, 2, 3]), epoch);
        let epoch = cache.get(GroupId(2)).expect_err("unknown group");
        cache.remember(GroupId(2), Vec::new(), epoch);
        assert_eq!(cache.size(), 4, "an empty list counts one");
        let epoch = cache.epoch();
        cache.remember(GroupId(1), ids(&[1, 2]), epoch);
        assert_eq!(cache.size(), 3, "a replaced list counts once");
        {
            let _guard = cache.forget_after(GroupId(1));
            assert!(cache.get(GroupId(1)).is_ok(), "forgotten only when dropped");
        }
        assert!(cache.get(GroupId(1)).is_err());
        assert_eq!(cache.size(), 1);
    }
}
