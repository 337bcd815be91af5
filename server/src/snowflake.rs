//! Snowflake message ids: 41 bits of milliseconds since [`EPOCH_MS`], 10 bits of worker id,
//! 12 bits of sequence. Ids from one generator strictly increase, even when the wall clock
//! steps back: the generator never goes below the last millisecond it used, and when the
//! 4,096 ids of a millisecond are spent it borrows the next millisecond. Uniqueness across
//! servers comes from distinct worker ids (static config now, leased from the registry later).
//! Across restarts, a floor file kept ahead of the clock ([`keep_floor_ahead`]) stops a
//! server whose clock went back from reusing the previous run's ids.

use std::{
    sync::Mutex,
    time::{SystemTime, UNIX_EPOCH},
};

/// 2025-01-01T00:00:00Z: ids stay positive and 41 bits last until 2094.
pub const EPOCH_MS: u64 = 1_735_689_600_000;
const WORKER_BITS: u32 = 10;
const SEQUENCE_BITS: u32 = 12;
const MAX_SEQUENCE: u64 = (1 << SEQUENCE_BITS) - 1;

/// Where the worker id comes from when it is leased (the registry): `None` while this server
/// holds no lease, and then no id may be issued.
pub type WorkerLease = std::sync::Arc<dyn Fn() -> Option<u16> + Send + Sync>;

/// Hands out unique, increasing ids for one worker.
pub struct Snowflake {
    worker_id: u64,
    lease: Option<WorkerLease>,
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
            lease: None,
            clock: Box::new(clock),
            state: Mutex::default(),
        }
    }

    /// A generator on the system clock shifted by `offset_ms` (for tests that make two servers'
    /// clocks disagree; 0 in production).
    pub fn with_clock_offset(worker_id: u16, offset_ms: i64) -> Self {
        Self::with_clock(worker_id, move || {
            system_ms().saturating_add_signed(offset_ms)
        })
    }

    /// Takes the worker id from `lease` at every call instead of the fixed one (a cluster:
    /// the registry leases worker ids so that no two live servers share one).
    pub fn with_lease(mut self, lease: WorkerLease) -> Self {
        self.lease = Some(lease);
        self
    }

    /// Never issues an id from a millisecond before `floor_ms` (Unix ms): a restart whose
    /// clock is behind the previous run's continues after that run's ids.
    pub fn with_floor(self, floor_ms: u64) -> Self {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.last_ms = state.last_ms.max(floor_ms.saturating_sub(EPOCH_MS));
        state.sequence = MAX_SEQUENCE; // the floor millisecond itself may be spent
        drop(state);
        self
    }

    /// The next id, or `None` while the worker id lease is lost (never two servers with one
    /// worker id). Never blocks on the clock: a spent millisecond borrows the next one.
    pub fn try_next_id(&self) -> Option<u64> {
        let worker_id = match &self.lease {
            Some(lease) => u64::from(lease()?) & ((1 << WORKER_BITS) - 1),
            None => self.worker_id,
        };
        Some(self.next_with(worker_id))
    }

    /// The next id for a generator with a fixed worker id (tests and one-machine use).
    pub fn next_id(&self) -> u64 {
        self.next_with(self.worker_id)
    }

    fn next_with(&self, worker_id: u64) -> u64 {
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
            | (worker_id << SEQUENCE_BITS)
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

/// How far ahead of the clock the persisted floor is kept. A crash can leave ids up to this
/// far past the last write; the next run starts above them.
const RESERVATION_MS: u64 = 10_000;

/// Reads the floor left by the previous run (`0` when there is none).
pub fn read_floor(path: &std::path::Path) -> anyhow::Result<u64> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let bytes: [u8; 8] = bytes
                .try_into()
                .map_err(|_| anyhow::anyhow!("{} must hold exactly 8 bytes", path.display()))?;
            Ok(u64::from_be_bytes(bytes))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
    }
}

/// Keeps `path` at least [`RESERVATION_MS`] ahead of the ids being issued: writes
/// `now + RESERVATION_MS` (durably: write a temp file, fsync, rename) at start and every
/// second until `stop` is cancelled. The first write happens before this returns.
pub async fn keep_floor_ahead(
    path: std::path::PathBuf,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let write = |path: std::path::PathBuf| {
        tokio::task::spawn_blocking(move || write_floor(&path, system_ms() + RESERVATION_MS))
    };
    write(path.clone()).await??;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            match write(path.clone()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot persist the message id floor"),
                Err(e) => tracing::warn!(error = %e, "id floor task failed"),
            }
        }
    });
    Ok(())
}

fn write_floor(path: &std::path::Path, floor_ms: u64) -> anyhow::Result<()> {
    use std::io::Write;
    let temp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&temp)?;
    file.write_all(&floor_ms.to_be_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temp, path)?;
    Ok(())
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
    fn a_floor_from_a_previous_run_wins_over_a_clock_that_is_behind() {
        let previous = Snowflake::with_clock(3, || EPOCH_MS + 50_000);
        let last_of_previous_run = previous.next_id();
        let restarted =
            Snowflake::with_clock(3, || EPOCH_MS + 20_000).with_floor(EPOCH_MS + 50_000);
        assert!(restarted.next_id() > last_of_previous_run);
    }

    #[tokio::test]
    async fn the_floor_file_is_written_ahead_of_the_clock_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snowflake.floor");
        assert_eq!(read_floor(&path).unwrap(), 0);
        let stop = tokio_util::sync::CancellationToken::new();
        keep_floor_ahead(path.clone(), stop.clone()).await.unwrap();
        stop.cancel();
        assert!(read_floor(&path).unwrap() >= system_ms() + RESERVATION_MS - 1_000);
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
