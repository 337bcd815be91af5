//! The write-ahead log: every batch the writer acknowledges is first appended here as one
//! frame and synced, so redb itself only needs a durable commit once per checkpoint.
//!
//! # Files
//! Segments sit next to the redb file: `<db file>.log.<generation>` (generation as 16 hex
//! digits, so names sort in order). The writer appends to the newest. A segment is a file
//! already filled with zeros and synced, so an append overwrites allocated blocks and its
//! `fdatasync` writes the data alone; appending to a growing file also writes the inode
//! (its size) on every sync, which cost ~40 % more CPU and time per sync on this project's
//! machines (BENCHMARKS.md). When a segment's zeroed space is used up the writer moves to a
//! spare that a helper thread has zeroed in the background (`<db file>.log.spare`, renamed to
//! the next generation), each spare twice the size of the last up to [`MAX_SEGMENT`]; if
//! none is ready, to a new file that grows (slower syncs, nothing else changes).
//! A segment therefore spans many checkpoints: once a checkpoint has committed in redb, the
//! segments older than the one being appended to at its freeze are deleted. On open, every
//! segment is replayed (merged in order into one [`Recent`]) and applied to redb in one
//! durable transaction, then deleted; applying entries that a checkpoint already wrote is
//! harmless (the same records, and heads and read positions only move up).
//!
//! # Frames
//! `payload length (u32 LE) ++ CRC-32 of payload (u32 LE) ++ payload`, the payload one
//! [`Recent`] encoded as five counted lists (see [`encode`]). A segment's frames are
//! followed by the zeros not yet written over. A frame is synced before any of its jobs is
//! answered, and the writer moves to a new segment only after a successful append, so only
//! the last frame of the newest written segment can be incomplete (a crash during its
//! write, never acknowledged): replay ignores a frame that does not read when no valid
//! frame follows it, in its segment or a later one, and says how many bytes it ignored.
//! After a failed write or sync the writer appends nothing more (see `writer`: the store
//! refuses writes until restarted), so a bad frame followed by a valid one is corruption,
//! and opening fails rather than drop acknowledged writes silently.

use std::{
    fs::{self, File, OpenOptions},
    io,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
};

use super::recent::Recent;

/// The largest frame: replay takes a larger length for corruption, and the writer refuses a
/// batch that would need one (before writing anything, so the log stays usable).
const MAX_FRAME: usize = 1024 * 1024 * 1024;

/// Why [`Log::append`] failed.
#[derive(Debug)]
pub(super) enum AppendError {
    /// The batch's frame would exceed [`MAX_FRAME`] bytes; nothing was written.
    TooLarge(usize),
    /// A write or sync failed: the segment's tail is unknown.
    Io(io::Error),
}

/// The zeroed size of the first segment after an open; a small store never needs more.
pub(super) const FIRST_SEGMENT: u64 = 256 * 1024;
/// The largest zeroed segment (~4 s of appends at 20k msg/s).
pub(super) const MAX_SEGMENT: u64 = 16 * 1024 * 1024;
/// Zeros are written and synced this many bytes at a time, with [`ZERO_PAUSE`] between
/// chunks, so that a log sync on the hot path never waits behind a large flush of the spare.
/// Measured with 200-byte appends each synced, while 8 MiB were zero-filled beside them:
/// p99 of the appends' syncs 2.2 ms with 256 KiB chunks back to back, 2.0 with 64 KiB
/// chunks, 0.37 with 64 KiB chunks 1 ms apart; 0.26–0.29 alone.
const ZERO_CHUNK: usize = 64 * 1024;
/// The pause between two chunks of zeros (under 64 MB/s of zeros: over ten times the log's
/// rate at 20k msg/s).
const ZERO_PAUSE: std::time::Duration = std::time::Duration::from_millis(1);

/// The open segment the writer appends to.
pub(super) struct Log {
    base: PathBuf,
    generation: u64,
    file: File,
    /// Bytes of frames in the segment: where the next one goes.
    written: u64,
    /// The writer moves to the next segment once this many bytes are written: the zeroed
    /// size, or for a segment that could not be zeroed ahead, the size it would have had.
    limit: u64,
}

/// A zero-filled file, synced, waiting to become the next segment.
pub(super) struct Spare {
    file: File,
    zeroed: u64,
}

/// The segments found next to `base`, oldest first.
pub(super) fn segments(base: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let (dir, prefix) = dir_and_prefix(base);
    let mut found = Vec::new();
    for entry in fs::read_dir(&dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(generation) = name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|g| u64::from_str_radix(g, 16).ok())
        else {
            continue;
        };
        found.push((generation, entry.path()));
    }
    found.sort();
    Ok(found)
}

/// What replaying the segments found.
pub(super) struct Replayed {
    /// Every complete frame of every segment, merged in order.
    pub table: Recent,
    /// The newest generation found (0 if none).
    pub last_generation: u64,
    /// Bytes after a short or corrupt frame, ignored (the tail of an interrupted write).
    pub ignored_bytes: u64,
}

/// Reads every segment next to `base`.
pub(super) fn replay(base: &Path) -> io::Result<Replayed> {
    let mut replayed = Replayed {
        table: Recent::default(),
        last_generation: 0,
        ignored_bytes: 0,
    };
    let corrupt = |path: &Path, offset: usize, why: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}: corrupt frame at byte {offset} ({why}); acknowledged writes would be lost \
                 (move the file away to accept that)",
                path.display()
            ),
        )
    };
    // Where a torn frame was found: only the newest written segment may end with one.
    let mut torn_at: Option<(PathBuf, usize)> = None;
    for (generation, path) in segments(base)? {
        let bytes = fs::read(&path)?;
        let mut rest = bytes.as_slice();
        while !rest.is_empty() {
            match next_frame(rest) {
                Some((frame, after)) => {
                    if let Some((torn_path, offset)) = &torn_at {
                        return Err(corrupt(torn_path, *offset, "a later segment has frames"));
                    }
                    replayed.table.merge(frame);
                    rest = after;
                }
                None => {
                    // The segment's unused, zeroed space, possibly after a torn last frame.
                    let written = written_prefix(rest);
                    if written.is_empty() {
                        break;
                    }
                    let offset = bytes.len() - rest.len();
                    if frame_starts_after(rest, written.len()) {
                        return Err(corrupt(&path, offset, "a valid frame follows it"));
                    }
                    replayed.ignored_bytes += written.len() as u64;
                    torn_at = Some((path.clone(), offset));
                    break;
                }
            }
        }
        replayed.last_generation = generation;
    }
    Ok(replayed)
}

/// Deletes every segment up to and including `generation`.
pub(super) fn remove_through(base: &Path, generation: u64) -> io::Result<()> {
    for (g, path) in segments(base)? {
        if g <= generation {
            fs::remove_file(path)?;
        }
    }
    Ok(())
}

impl Log {
    /// Creates segment `generation` of `size` bytes, zero-filled and synced if `zero_fill`
    /// (else an empty file that grows), and makes its name durable. A file of that generation
    /// can only be left by an earlier attempt that failed to sync the directory (nothing is
    /// appended to a segment before this returned), so it is overwritten.
    pub fn create(base: &Path, generation: u64, size: u64, zero_fill: bool) -> io::Result<Self> {
        let path = segment_path(base, generation);
        let file = zero_filled(
            &path,
            if zero_fill { size } else { 0 },
            &AtomicBool::new(false),
        )?;
        sync_dir(&dir_and_prefix(base).0)?;
        Ok(Self {
            base: base.to_owned(),
            generation,
            file,
            written: 0,
            limit: size,
        })
    }

    /// Segment `generation`, opened read-only so that every append fails: a real I/O error
    /// for tests of the writer's failure path.
    #[cfg(test)]
    pub fn read_only(base: &Path, generation: u64) -> io::Result<Self> {
        Ok(Self {
            base: base.to_owned(),
            generation,
            file: File::open(segment_path(base, generation))?,
            written: 0,
            limit: u64::MAX,
        })
    }

    /// The segment being appended to.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The size at which the writer leaves this segment.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Whether the segment is used up: the writer should move to the next one.
    pub fn is_full(&self) -> bool {
        self.written >= self.limit
    }

    /// Appends `changes` as one frame and syncs it: when this returns Ok the batch survives
    /// a crash. [`AppendError::TooLarge`] means nothing was written.
    pub fn append(&mut self, changes: &Recent) -> Result<(), AppendError> {
        let payload = encode(changes);
        let length = u32::try_from(payload.len())
            .ok()
            .filter(|&l| l as usize <= MAX_FRAME)
            .ok_or(AppendError::TooLarge(payload.len()))?;
        let mut frame = Vec::with_capacity(8 + payload.len());
        frame.extend_from_slice(&length.to_le_bytes());
        frame.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        frame.extend_from_slice(&payload);
        self.file
            .write_all_at(&frame, self.written)
            .map_err(AppendError::Io)?;
        self.file.sync_data().map_err(AppendError::Io)?;
        self.written += frame.len() as u64;
        Ok(())
    }

    /// Starts the next segment, in `spare` if there is one (else in a new file that grows,
    /// left at `size` bytes); returns the generation of the one it replaced.
    pub fn rotate(&mut self, spare: Option<Spare>, size: u64) -> io::Result<u64> {
        let generation = self.generation + 1;
        let next = match spare {
            Some(spare) => {
                fs::rename(spare_path(&self.base), segment_path(&self.base, generation))?;
                sync_dir(&dir_and_prefix(&self.base).0)?;
                Self {
                    base: self.base.clone(),
                    generation,
                    file: spare.file,
                    written: 0,
                    limit: spare.zeroed,
                }
            }
            None => Self::create(&self.base, generation, size, false)?,
        };
        let previous = self.generation;
        *self = next;
        Ok(previous)
    }
}

/// The helper thread that zero-fills the next segment while the writer appends to the
/// current one: [`SpareMaker::request`] one, [`SpareMaker::take`] it when ready.
pub(super) struct SpareMaker {
    requests: Option<mpsc::SyncSender<u64>>,
    /// Set by [`SpareMaker::stop`]: a fill in progress gives up at its next chunk.
    stopping: Arc<AtomicBool>,
    ready: mpsc::Receiver<io::Result<Spare>>,
    /// A spare was requested and has not been taken yet.
    pending: bool,
    thread: Option<JoinHandle<()>>,
}

impl SpareMaker {
    /// Starts the thread; any spare an earlier run left next to `base` is deleted first.
    pub fn spawn(base: &Path) -> io::Result<Self> {
        match fs::remove_file(spare_path(base)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let (requests, requested) = mpsc::sync_channel::<u64>(1);
        let (made, ready) = mpsc::sync_channel(1);
        let path = spare_path(base);
        let stopping = Arc::new(AtomicBool::new(false));
        let stop = Arc::clone(&stopping);
        let thread = std::thread::Builder::new()
            .name("message-store-spare".to_owned())
            .spawn(move || {
                for zeroed in requested.iter() {
                    let spare =
                        zero_filled(&path, zeroed, &stop).map(|file| Spare { file, zeroed });
                    if spare.is_err() {
                        // Not left to fill the disk: a partial spare is of no use.
                        let _ = fs::remove_file(&path);
                    }
                    if made.send(spare).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Self {
            requests: Some(requests),
            stopping,
            ready,
            pending: false,
            thread: Some(thread),
        })
    }

    /// Asks for a spare of `zeroed` bytes, unless one is already on its way.
    pub fn request(&mut self, zeroed: u64) {
        if self.pending {
            return;
        }
        let sent = self.requests.as_ref().map(|r| r.try_send(zeroed));
        self.pending = matches!(sent, Some(Ok(())));
    }

    /// The requested spare if it is ready; `None` if it is not (yet), or could not be made.
    pub fn take(&mut self) -> Option<Spare> {
        match self.ready.try_recv() {
            Ok(Ok(spare)) => {
                self.pending = false;
                Some(spare)
            }
            Ok(Err(e)) => {
                self.pending = false;
                tracing::warn!(error = %e, "message store: cannot prepare the next log segment");
                None
            }
            Err(_) => None,
        }
    }

    /// Stops the thread (after the spare it is making, if any) and deletes an untaken spare.
    /// At most one spare is in flight and its channel holds one, so the thread never blocks.
    pub fn stop(&mut self, base: &Path) {
        self.stopping.store(true, Ordering::Relaxed);
        self.requests = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = fs::remove_file(spare_path(base));
    }
}

/// Creates (or truncates) `path` and fills it with `size` zero bytes, synced chunk by chunk
/// (this thread sleeps between chunks: call it off the hot path); fails `Interrupted` once
/// `stop` is set.
fn zero_filled(path: &Path, size: u64, stop: &AtomicBool) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    let zeros = vec![0u8; ZERO_CHUNK];
    let mut offset = 0;
    while offset < size {
        if stop.load(Ordering::Relaxed) {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "stopping"));
        }
        let n = (size - offset).min(ZERO_CHUNK as u64);
        file.write_all_at(&zeros[..n as usize], offset)?;
        file.sync_data()?;
        offset += n;
        if offset < size {
            std::thread::sleep(ZERO_PAUSE);
        }
    }
    Ok(file)
}

/// Where the spare segment is made (not a segment name: [`segments`] skips it).
fn spare_path(base: &Path) -> PathBuf {
    let (dir, prefix) = dir_and_prefix(base);
    dir.join(format!("{prefix}spare"))
}

fn segment_path(base: &Path, generation: u64) -> PathBuf {
    let (dir, prefix) = dir_and_prefix(base);
    dir.join(format!("{prefix}{generation:016x}"))
}

/// The directory segments live in and their file-name prefix.
fn dir_and_prefix(base: &Path) -> (PathBuf, String) {
    let dir = match base.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = base
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    (dir, format!("{name}.log."))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// `bytes` without its trailing zeros: what frames were written over a segment's zeros.
fn written_prefix(bytes: &[u8]) -> &[u8] {
    let end = bytes
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |last| last + 1);
    &bytes[..end]
}

/// Whether a valid frame (length, CRC and contents) starts after the first byte of `rest`
/// and within its first `written` bytes (the rest is zeros, where no frame starts; a frame
/// may end there, its last bytes being zeros). `rest` begins with a frame that does not
/// read. If no frame follows it, that frame is the
/// torn tail of an interrupted write: the pages of one write may reach the disk in any
/// order, so its header may read as zeros while a later page of it survived, and only a
/// complete frame after it tells corruption apart. Runs only on replay after a crash; most
/// offsets are rejected by their length field alone.
fn frame_starts_after(rest: &[u8], written: usize) -> bool {
    (1..written).any(|offset| next_frame(&rest[offset..]).is_some())
}

/// One frame from the front of `bytes` and what follows it; `None` if it is short, fails its
/// CRC or does not decode.
fn next_frame(bytes: &[u8]) -> Option<(Recent, &[u8])> {
    let length = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?);
    if length > MAX_FRAME {
        return None;
    }
    let payload = bytes.get(8..8 + length)?;
    if crc32fast::hash(payload) != crc {
        return None;
    }
    Some((decode(payload)?, &bytes[8 + length..]))
}

/// A [`Recent`] as bytes: five lists, each a u32 LE count then its entries — messages
/// (key 25, u32 length, record), heads (key 17, u64), idempotency (u32 length, key, u64),
/// read positions (key 25, u64), direct entries (key 25). Integers little-endian.
pub(super) fn encode(table: &Recent) -> Vec<u8> {
    let records: usize = table.messages.values().map(|r| r.len() + 29).sum();
    let mut out = Vec::with_capacity(20 + records + table.len() * 40);
    let count = |out: &mut Vec<u8>, n: usize| {
        out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes());
    };
    count(&mut out, table.messages.len());
    for (key, record) in &table.messages {
        out.extend_from_slice(key);
        count(&mut out, record.len());
        out.extend_from_slice(record);
    }
    count(&mut out, table.heads.len());
    for (conv, seq) in &table.heads {
        out.extend_from_slice(conv);
        out.extend_from_slice(&seq.to_le_bytes());
    }
    count(&mut out, table.idempotency.len());
    for (key, seq) in &table.idempotency {
        count(&mut out, key.len());
        out.extend_from_slice(key);
        out.extend_from_slice(&seq.to_le_bytes());
    }
    count(&mut out, table.read_positions.len());
    for (key, seq) in &table.read_positions {
        out.extend_from_slice(key);
        out.extend_from_slice(&seq.to_le_bytes());
    }
    count(&mut out, table.direct.len());
    for key in &table.direct {
        out.extend_from_slice(key);
    }
    out
}

/// The inverse of [`encode`]; `None` if the bytes are not exactly one encoded table.
pub(super) fn decode(bytes: &[u8]) -> Option<Recent> {
    let mut reader = Reader(bytes);
    let mut table = Recent::default();
    for _ in 0..reader.u32()? {
        let key = reader.array::<25>()?;
        let length = reader.u32()? as usize;
        table.messages.insert(key, Arc::from(reader.take(length)?));
    }
    for _ in 0..reader.u32()? {
        let conv = reader.array::<17>()?;
        table.heads.insert(conv, reader.u64()?);
    }
    for _ in 0..reader.u32()? {
        let length = reader.u32()? as usize;
        let key = reader.take(length)?.to_vec();
        table.idempotency.insert(key, reader.u64()?);
    }
    for _ in 0..reader.u32()? {
        let key = reader.array::<25>()?;
        table.read_positions.insert(key, reader.u64()?);
    }
    for _ in 0..reader.u32()? {
        table.direct.insert(reader.array::<25>()?);
    }
    reader.0.is_empty().then_some(table)
}

/// A cursor over a payload; every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    fn u32(&mut self) -> Option<u32> {
        self.array::<4>().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Option<u64> {
        self.array::<8>().map(u64::from_le_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: u8) -> Recent {
        let mut table = Recent::default();
        table
            .messages
            .insert([n; 25], Arc::from(vec![n; usize::from(n) * 10]));
        table.heads.insert([n; 17], u64::from(n));
        table.idempotency.insert(vec![n; 20], 1);
        table.read_positions.insert([n; 25], 2);
        table.direct.insert([n; 25]);
        table
    }

    #[test]
    fn a_table_round_trips() {
        let table = sample(3);
        assert_eq!(decode(&encode(&table)), Some(table));
        assert_eq!(decode(&encode(&Recent::default())), Some(Recent::default()));
        let bytes = encode(&sample(4));
        assert_eq!(decode(&bytes[..bytes.len() - 1]), None, "short");
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(decode(&long), None, "trailing bytes");
    }

    /// Segment `generation` next to `base`, zero-filled to 4 KiB.
    fn zeroed(base: &Path, generation: u64) -> Log {
        Log::create(base, generation, 4096, true).expect("create")
    }

    /// A zeroed segment holding one frame per sample in `samples`.
    fn segment_of(base: &Path, generation: u64, samples: std::ops::RangeInclusive<u8>) -> Log {
        let mut log = zeroed(base, generation);
        for n in samples {
            log.append(&sample(n)).expect("append");
        }
        log
    }

    /// Flips the bits of `mask` in byte `at` of segment `generation`, as a disk might.
    fn flip(base: &Path, generation: u64, at: usize, mask: u8) {
        let path = segment_path(base, generation);
        let mut bytes = fs::read(&path).expect("read");
        bytes[at] ^= mask;
        fs::write(&path, &bytes).expect("write");
    }

    /// Replay refuses the segments next to `base` as corrupt.
    fn assert_corrupt(base: &Path) {
        let error = replay(base).err().expect("corruption is an error");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    }

    /// The offset of the last byte of `log`'s last frame.
    fn last_byte(log: &Log) -> usize {
        usize::try_from(log.written).expect("small") - 1
    }

    #[test]
    fn replay_merges_segments_and_stops_at_a_torn_frame() {
        let dir = tempfile::tempdir().expect("temp dir");
        let base = dir.path().join("m.redb");
        let mut log = zeroed(&base, 1);
        log.append(&sample(1)).expect("append");
        // No spare: the next segment is a file that grows.
        assert_eq!(log.rotate(None, 4096).expect("rotate"), 1);
        log.append(&sample(2)).expect("append");
        let mut log = zeroed(&base, 3);
        log.append(&sample(3)).expect("append");
        // A crash in the middle of writing a fourth frame, over the segment's zeros.
        let torn = encode(&sample(4));
        let mut header = (torn.len() as u32).to_le_bytes().to_vec();
        header.extend_from_slice(&[7; 9]);
        log.file.write_all_at(&header, log.written).expect("write");

        let replayed = replay(&base).expect("replay");
        let mut expected = sample(1);
        expected.merge(sample(2));
        expected.merge(sample(3));
        assert_eq!(replayed.table, expected);
        assert_eq!(replayed.last_generation, 3);
        assert_eq!(replayed.ignored_bytes, 13);

        remove_through(&base, 2).expect("remove");
        assert_eq!(
            segments(&base)
                .expect("list")
                .into_iter()
                .map(|(g, _)| g)
                .collect::<Vec<_>>(),
            [3]
        );
    }

    #[test]
    fn a_zeroed_segment_with_nothing_written_replays_to_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let base = dir.path().join("m.redb");
        let log = zeroed(&base, 5);
        assert_eq!(
            fs::metadata(segment_path(&base, 5)).expect("stat").len(),
            4096
        );
        assert!(!log.is_full());
        let replayed = replay(&base).expect("replay");
        assert_eq!(replayed.table, Recent::default());
        assert_eq!((replayed.last_generation, replayed.ignored_bytes), (5, 0));
    }

    #[test]
    fn appends_fill_the_zeros_then_the_segment_is_full() {
        let dir = tempfile::tempdir().expect("temp dir");
        let base = dir.path().join("m.redb");
        let mut log = Log::create(&base, 1, 200, true).expect("create");
        let mut expected = Recent::default();
        let mut n = 1;
        while !log.is_full() {
            log.append(&sample(n)).expect("append");
            expected.merge(sample(n));
            n += 1;
        }
        assert!(n > 2, "several frames fit in 200 bytes");
        // The last frame may run past the zeros: the file grows, nothing is lost.
        assert_eq!(replay(&base).expect("replay").table, expected);
    }

    #[test]
    fn a_corrupt_frame_followed_by_others_fails_the_replay() {
        let dir = tempfile::tempdir().expect("temp dir");
        let base = dir.path().join("m.redb");
        segment_of(&base, 7, 1..=3);
        flip(&base, 7, 20, 1);
        assert_corrupt(&base);
    }

    #[test]
    fn a_flipped_bit_in_the_last_frame_ends_replay() {
        let dir = tempfile::tempdir().expect("temp dir");
        let base = dir.path().join("m.redb");
        let log = segment_of(&base, 7, 1..=2);
        flip(&base, 7, last_byte(&log), 1);
        let replayed = replay(&base).expect("replay");
        assert_eq!(replayed.table, sample(1));
        assert!(replayed.ignored_bytes > 0);
    }

    #[test]
    fn a_torn_frame_whose_header_never_reached_the_disk_ends_replay() {
        let dir = tempfile::tempdir().expect("temp dir");
        let base = dir.path().join("m.redb");
        let mut log = Log::create(&base, 2, 65536, true).expect("create");
        log.append(&sample(1)).expect("append");
        // A large last frame whose first page was lost (still zeros) and a later one kept.
        log.file
            .write_all_at(&[9; 300], log.written + 5000)
            .expect("write");
        let replayed = replay(&base).expect("a torn write is not corruption");
        assert_eq!(replayed.table, sample(1));
        assert_eq!(replayed.ignored_bytes, 5300);
    }

    #[test]
    fn a_flipped_high_bit_in_a_frame_length_is_corruption() {
        let dir = tempfile::tempdir().expect("temp dir");
        let base = dir.path().join("m.redb");
        segment_of(&base, 7, 1..=3);
        // The first frame now claims more than a gigabyte.
        flip(&base, 7, 3, 0x80);
        assert_corrupt(&base);
    }

    #[test]
    fn a_torn_frame_before_a_later_segment_with_frames_is_corruption() {
        let dir = tempfile::tempdir().expect("temp dir");
        let base = dir.path().join("m.redb");
        let log = segment_of(&base, 1, 1..=2);
        flip(&base, 1, last_byte(&log), 1);
        segment_of(&base, 2, 3..=3);
        assert_corrupt(&base);
        // A later segment with nothing written (a spare renamed in, then the crash) is fine.
        fs::remove_file(segment_path(&base, 2)).expect("remove");
        zeroed(&base, 2);
        assert_eq!(replay(&base).expect("replay").table, sample(1));
    }

    #[test]
    fn the_spare_becomes_the_next_segment() {
        let dir = tempfile::tempdir().expect("temp dir");
        let base = dir.path().join("m.redb");
        fs::write(spare_path(&base), b"left by an earlier run").expect("write");
        let mut spares = SpareMaker::spawn(&base).expect("spawn");
        assert!(!spare_path(&base).exists(), "a leftover spare is deleted");
        spares.request(8192);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let spare = loop {
            if let Some(spare) = spares.take() {
                break spare;
            }
            assert!(std::time::Instant::now() < deadline, "no spare within 10 s");
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        let mut log = zeroed(&base, 1);
        log.append(&sample(1)).expect("append");
        assert_eq!(log.rotate(Some(spare), 1).expect("rotate"), 1);
        assert_eq!((log.generation(), log.limit()), (2, 8192));
        assert!(!spare_path(&base).exists());
        assert_eq!(
            fs::metadata(segment_path(&base, 2)).expect("stat").len(),
            8192
        );
        log.append(&sample(2)).expect("append");
        let mut expected = sample(1);
        expected.merge(sample(2));
        assert_eq!(replay(&base).expect("replay").table, expected);
        spares.request(4096);
        spares.stop(&base);
        assert!(!spare_path(&base).exists(), "stop deletes an untaken spare");
    }
}
