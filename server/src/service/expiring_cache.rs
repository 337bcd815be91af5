//! Directory answers kept for a short time, shared by the friendship and member-list caches
//! of the send path (`friendship_cache`, `member_cache`).
//!
//! An answer is kept for a TTL. A change made through this server forgets the answer it
//! invalidates at once, and an answer read from the directory while a change happens is not
//! kept: every [`ExpiringCache::forget`] bumps an epoch, the caller reads the epoch before it
//! asks the directory (the `Err` of [`ExpiringCache::get`]), and [`ExpiringCache::remember`]
//! drops the answer if the epoch moved since. So in one process a change takes effect
//! immediately; made through another chat server of a cluster, within the TTL.
//!
//! The epoch is one for the whole cache, not one per key: a change anywhere stops keeping
//! the answers being read at that moment (they are read again next time), which costs a
//! directory read now and then and never keeps a stale answer.
//!
//! Bounded by a total weight (what each answer counts is the caller's choice: one per pair,
//! one per member id): when an answer would pass it, expired answers are dropped, and if
//! that is not enough, all.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::{
        Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// A reading of a cache's epoch, taken before asking the directory.
#[derive(Debug, Clone, Copy)]
pub struct Epoch(u64);

struct Entry<V> {
    value: V,
    expires: Instant,
    weight: usize,
}

struct Entries<K, V> {
    by_key: HashMap<K, Entry<V>>,
    /// The weights of all kept answers.
    weight: usize,
}

impl<K, V> Entries<K, V> {
    fn remove(&mut self, key: &K)
    where
        K: Eq + Hash,
    {
        if let Some(old) = self.by_key.remove(key) {
            self.weight -= old.weight;
        }
    }
}

/// Answers by key, each kept for the TTL unless forgotten, within a total weight.
pub struct ExpiringCache<K, V> {
    ttl: Duration,
    capacity: usize,
    weigh: fn(&V) -> usize,
    /// A std mutex: every method takes it for a few map operations and never across an
    /// `.await` (nothing here is async), so an async mutex would only add cost.
    entries: Mutex<Entries<K, V>>,
    /// Bumped by every [`ExpiringCache::forget`].
    epoch: AtomicU64,
}

impl<K: Eq + Hash, V: Clone> ExpiringCache<K, V> {
    /// A cache keeping answers for `ttl`, at most `capacity` in total weight, each weighing
    /// `weigh(value)` (a weight of 0 counts as 1, so that every answer is bounded).
    pub fn new(ttl: Duration, capacity: usize, weigh: fn(&V) -> usize) -> Self {
        Self {
            ttl,
            capacity,
            weigh,
            entries: Mutex::new(Entries {
                by_key: HashMap::new(),
                weight: 0,
            }),
            epoch: AtomicU64::new(0),
        }
    }

    /// The answer for `key` if it was read less than the TTL ago; `Err` carries the epoch to
    /// pass to [`Self::remember`] after asking the directory.
    pub fn get(&self, key: &K) -> Result<V, Epoch> {
        let epoch = self.epoch();
        let entries = self.lock();
        match entries.by_key.get(key) {
            Some(entry) if entry.expires > Instant::now() => Ok(entry.value.clone()),
            _ => Err(epoch),
        }
    }

    /// The epoch now, for a directory read that does not follow a [`Self::get`].
    pub fn epoch(&self) -> Epoch {
        Epoch(self.epoch.load(Ordering::SeqCst))
    }

    /// Keeps the directory's answer, unless something was forgotten since `epoch` was read
    /// (the answer may predate that change) or it alone weighs more than the capacity.
    pub fn remember(&self, key: K, value: V, epoch: Epoch) {
        let weight = (self.weigh)(&value).max(1);
        let mut entries = self.lock();
        if self.epoch.load(Ordering::SeqCst) != epoch.0 || weight > self.capacity {
            return;
        }
        entries.remove(&key);
        let now = Instant::now();
        if entries.weight + weight > self.capacity {
            entries.by_key.retain(|_, entry| entry.expires > now);
            entries.weight = entries.by_key.values().map(|e| e.weight).sum();
            if entries.weight + weight > self.capacity {
                entries.by_key.clear();
                entries.weight = 0;
            }
        }
        entries.weight += weight;
        let expires = now + self.ttl;
        entries.by_key.insert(
            key,
            Entry {
                value,
                expires,
                weight,
            },
        );
    }

    /// Drops the answer for `key`: called after the directory changed what it answers.
    pub fn forget(&self, key: &K) {
        let mut entries = self.lock();
        self.epoch.fetch_add(1, Ordering::SeqCst);
        entries.remove(key);
    }

    fn lock(&self) -> MutexGuard<'_, Entries<K, V>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The total weight as counted, after checking it against the kept answers.
    #[cfg(test)]
    pub fn weight(&self) -> usize {
        let entries = self.lock();
        let kept: usize = entries.by_key.values().map(|e| e.weight).sum();
        assert_eq!(entries.weight, kept, "weight accounting drifted");
        entries.weight
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(ttl: Duration, capacity: usize) -> ExpiringCache<u32, Vec<u8>> {
        ExpiringCache::new(ttl, capacity, Vec::len)
    }

    #[test]
    fn an_answer_is_kept_until_forgotten() {
        let cache = cache(Duration::from_secs(60), 100);
        let epoch = cache.get(&1).expect_err("unknown");
        cache.remember(1, vec![1, 2], epoch);
        assert_eq!(cache.get(&1).expect("kept"), vec![1, 2]);
        assert!(cache.get(&2).is_err());
        cache.forget(&1);
        assert!(cache.get(&1).is_err());
    }

    #[test]
    fn answers_expire() {
        let cache = cache(Duration::ZERO, 100);
        let epoch = cache.get(&1).expect_err("unknown");
        cache.remember(1, vec![1], epoch);
        assert!(cache.get(&1).is_err());
    }

    #[test]
    fn an_answer_read_before_a_forget_is_not_kept() {
        let cache = cache(Duration::from_secs(60), 100);
        let epoch = cache.get(&1).expect_err("unknown");
        // The directory changes while it is being asked.
        cache.forget(&1);
        cache.remember(1, vec![1], epoch);
        assert!(cache.get(&1).is_err());
    }

    #[test]
    fn the_weight_follows_every_change_and_stays_within_the_capacity() {
        let cache = cache(Duration::from_secs(60), 10);
        cache.remember(1, vec![0; 3], cache.epoch());
        cache.remember(2, Vec::new(), cache.epoch());
        assert_eq!(cache.weight(), 4, "an empty answer weighs one");
        cache.remember(1, vec![0; 2], cache.epoch());
        assert_eq!(cache.weight(), 3, "a replaced answer counts once");
        cache.remember(3, vec![0; 8], cache.epoch());
        assert!(cache.weight() <= 10, "{} kept", cache.weight());
        assert!(cache.get(&3).is_ok(), "the newest answer is kept");
        assert!(cache.get(&1).is_err(), "the older ones made room");
        cache.remember(4, vec![0; 11], cache.epoch());
        assert!(
            cache.get(&4).is_err(),
            "heavier than the capacity: not kept"
        );
        cache.forget(&3);
        assert_eq!(cache.weight(), 0);
    }
}
