//! redb's file, with the start of a checkpoint's writes sent to the disk in slices.
//!
//! A checkpoint commits a few MB of copied B-tree pages at once, then syncs. On a disk with a
//! write-back cache a sync flushes the whole cache, so the log's next `fdatasync` (the hot
//! path: every send waits for one) can wait behind all of them. Here the first
//! [`PACED_BYTES`] of each commit are synced every [`SLICE`] bytes with a pause after each,
//! so a log sync that lands during a usual checkpoint (~2 MB at 20k msg/s) waits behind one
//! slice at most. Beyond that the commit goes at full speed: a larger one means the
//! checkpoints are behind, and pacing all of it held a 30 MB checkpoint long enough for the
//! writer to stop at its memory bound (a 0.8 s stall in scenario (a), BENCHMARKS.md).
//! Durability is unchanged: redb still ends each commit with its own `sync_data`; the extra
//! syncs only make data durable earlier (redb's checksummed commit already recovers from any
//! subset of a commit's pages reaching the disk). Side by side at 5,000 msg/s, 256 KiB
//! slices without pauses lowered the p99 latency in each of 6 alternating pairs, by ~12 %;
//! with 64 KiB slices 1 ms apart, together with the log's zero-filled segments, by 25–45 %.

use std::{
    fs::File,
    io,
    os::unix::fs::FileExt,
    sync::atomic::{AtomicU64, Ordering},
};

use redb::{DatabaseError, StorageBackend};
use rustix::fs::FlockOperation;

/// Bytes written between two syncs...
const SLICE: u64 = 64 * 1024;
/// ... and the pause after each of those syncs, which lets the log's syncs through...
const PAUSE: std::time::Duration = std::time::Duration::from_millis(1);
/// ... for this many bytes of each commit (at most 32 pauses).
const PACED_BYTES: u64 = 2 * 1024 * 1024;

/// The database file: what redb's own `FileBackend` does (an exclusive `flock`, positioned
/// reads and writes, `fdatasync`), plus paced syncs at the start of each commit.
#[derive(Debug)]
pub(super) struct PacedFile {
    file: File,
    /// Bytes written since the last sync.
    unsynced: AtomicU64,
    /// Bytes written since redb's last own sync (the end of the previous commit).
    since_commit: AtomicU64,
}

impl PacedFile {
    /// Takes the file for one database; a second open of the same file fails with
    /// `DatabaseAlreadyOpen`, as with redb's own backend. The lock goes with the file.
    pub fn new(file: File) -> Result<Self, DatabaseError> {
        match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => return Err(DatabaseError::DatabaseAlreadyOpen),
            Err(e) => return Err(io::Error::from(e).into()),
        }
        Ok(Self {
            file,
            unsynced: AtomicU64::new(0),
            since_commit: AtomicU64::new(0),
        })
    }
}

impl StorageBackend for PacedFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn read(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buffer = vec![0; len];
        self.file.read_exact_at(&mut buffer, offset)?;
        Ok(buffer)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn sync_data(&self, _eventual: bool) -> io::Result<()> {
        self.unsynced.store(0, Ordering::Relaxed);
        self.since_commit.store(0, Ordering::Relaxed);
        self.file.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, offset)?;
        let written = data.len() as u64;
        // redb writes from one thread at a time (its write buffer's lock): plain loads and
        // stores of the counters are enough.
        if self.since_commit.fetch_add(written, Ordering::Relaxed) >= PACED_BYTES {
            return Ok(());
        }
        if self.unsynced.fetch_add(written, Ordering::Relaxed) + written >= SLICE {
            self.unsynced.store(0, Ordering::Relaxed);
            self.file.sync_data()?;
            std::thread::sleep(PAUSE);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_open_of_the_same_file_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("db");
        let open = || {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .expect("open")
        };
        let first = PacedFile::new(open()).expect("first");
        assert!(matches!(
            PacedFile::new(open()),
            Err(DatabaseError::DatabaseAlreadyOpen)
        ));
        drop(first);
        PacedFile::new(open()).expect("free again once the first is closed");
    }
}
