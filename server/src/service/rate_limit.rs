//! A token bucket per user, for message sends. Buckets refill continuously at `rate` per
//! second up to `burst`; idle buckets are dropped once they are full again, so memory is
//! bounded by the number of recently active users.

use std::{collections::HashMap, sync::Mutex, time::Instant};

use crate::ids::UserId;

struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Per-user send rate limiting.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<Buckets>,
}

/// The buckets and when to sweep them.

#[derive(Default)]
struct Buckets {
    by_user: HashMap<UserId, Bucket>,
    /// Size at which full buckets are next swept: twice what survived the last sweep, so
    /// sweeps cost O(1) amortised per acquire.
    sweep_at: usize,
}

/// Buckets kept before full ones are swept.
const SWEEP_AT: usize = 10_000;

impl RateLimiter {
    /// `rate` tokens per second, at most `burst` saved up.
    pub fn new(rate: f64, burst: u32) -> Self {
        Self {
            rate,
            burst: f64::from(burst),
            buckets: Mutex::new(Buckets {
                by_user: HashMap::new(),
                sweep_at: SWEEP_AT,
            }),
        }
    }

    /// Takes one token for `user`; false when the bucket is empty.
    pub fn try_acquire(&self, user: UserId) -> bool {
        self.try_acquire_at(user, Instant::now())
    }

    fn try_acquire_at(&self, user: UserId, now: Instant) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.by_user.len() >= buckets.sweep_at {
            let (rate, burst) = (self.rate, self.burst);
            buckets.by_user.retain(|_, b| {
                b.tokens + now.duration_since(b.updated).as_secs_f64() * rate < burst
            });
            buckets.sweep_at = SWEEP_AT.max(buckets.by_user.len() * 2);
        }
        let bucket = buckets.by_user.entry(user).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
        });
        let refill = now.saturating_duration_since(bucket.updated).as_secs_f64() * self.rate;
        bucket.tokens = (bucket.tokens + refill).min(self.burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_refill() {
        let limiter = RateLimiter::new(10.0, 3);
        let t0 = Instant::now();
        let user = UserId(1);
        assert!((0..3).all(|_| limiter.try_acquire_at(user, t0)));
        assert!(!limiter.try_acquire_at(user, t0));
        assert!(
            limiter.try_acquire_at(UserId(2), t0),
            "buckets are per user"
        );
        assert!(limiter.try_acquire_at(user, t0 + Duration::from_millis(100)));
        assert!(!limiter.try_acquire_at(user, t0 + Duration::from_millis(100)));
    }
}
