//! Snowflake message ids: 41 bits of milliseconds since [`EPOCH_MS`], 10 bits of worker id,
//! 12 bits of sequence. Ids from one generator strictly increase, even when the wall clock
//! steps back: the generator never goes below the last millisecond it used, and when the
//! 4,096 ids of a millisecond are spent it borrows the next millisecond. Uniqueness across
//! servers comes from distinct worker ids (static config now, leased from the registry later).

use std::{
    sync::Mutex,
    time::{SystemTime, UNIX_EPOCH},
};

/// 2025-01-01T00:00:00Z: ids stay positive and 41 bits last until 2094.
pub const EPOCH_MS: u64 = 1_735_689_600_000;
const WORKER_BITS: u32 = 10;
const SEQUENCE_BITS: u32 = 12;
const MAX_SEQUENCE: u64 = (1 << SEQUENCE_BITS) - 1;

/// Hands out unique, increasing ids for one worker.
pub struct Snowflake {
    worker_id: u64,
    clock: Box<dyn Fn() -> u64 + Send + Sync>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    last_ms: u64,
    sequence: u64,
}

impl Snowflake {
    /// A generator on the system clock. `worker_id` must be below 1024.
    pub fn new(worker_id: u16) -> Self {
        Self::with_clock(worker_id, system_ms)
    }

    /// A generator on a custom clock (ms since the Unix epoch), for tests and for injecting
    /// clock skew.
    pub fn with_clock(worker_id: u16, clock: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        debug_assert!(worker_id < 1 << WORKER_BITS);
        Self {
            worker_id: u64::from(worker_id) & ((1 << WORKER_BITS) - 1),
            clock: Box::new(clock),
            state: Mutex::default(),
        }
    }

    /// The next id. Never blocks on the clock: a spent millisecond borrows the next one.
    pub fn next_id(&self) -> u64 {
        let now = (self.clock)().saturating_sub(EPOCH_MS);
        // The lock is never held across an await and the critical section is a few adds.
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if now > state.last_ms {
            state.last_ms = now;
            state.sequence = 0;
        } else if state.sequence < MAX_SEQUENCE {
            state.sequence += 1;
        } else {
            state.last_ms += 1;
            state.sequence = 0;
        }
        (state.last_ms << (WORKER_BITS + SEQUENCE_BITS))
            | (self.worker_id << SEQUENCE_BITS)
            | state.sequence
    }

    /// The millisecond timestamp (Unix epoch) encoded in an id.
    pub fn timestamp_ms(id: u64) -> u64 {
        (id >> (WORKER_BITS + SEQUENCE_BITS)) + EPOCH_MS
    }

    /// The worker id encoded in an id.
    pub fn worker_of(id: u64) -> u16 {
        ((id >> SEQUENCE_BITS) & ((1 << WORKER_BITS) - 1)) as u16
    }
}

fn system_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(EPOCH_MS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    };

    #[test]
    fn ids_increase_even_when_the_clock_steps_back() {
        let now = Arc::new(AtomicU64::new(EPOCH_MS + 1_000_000));
        let clock = now.clone();
        let ids = Snowflake::with_clock(7, move || clock.load(Ordering::SeqCst));
        let mut last = 0;
        for step in 0..20_000u64 {
            if step % 1000 == 999 {
                now.fetch_sub(5_000, Ordering::SeqCst); // clock jumps back 5 s
            }
            let id = ids.next_id();
            assert!(id > last, "id went backwards at step {step}");
            assert_eq!(Snowflake::worker_of(id), 7);
            last = id;
        }
    }

    #[test]
    fn a_spent_millisecond_borrows_the_next() {
        let ids = Snowflake::with_clock(1, || EPOCH_MS + 42);
        let ids: Vec<u64> = (0..5000).map(|_| ids.next_id()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(Snowflake::timestamp_ms(ids[0]), EPOCH_MS + 42);
        assert_eq!(Snowflake::timestamp_ms(ids[4999]), EPOCH_MS + 43);
    }

    #[test]
    fn workers_never_collide() {
        let a = Snowflake::with_clock(1, || EPOCH_MS + 5);
        let b = Snowflake::with_clock(2, || EPOCH_MS + 5);
        let mut all: Vec<u64> = (0..3000).flat_map(|_| [a.next_id(), b.next_id()]).collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 6000);
    }
}
