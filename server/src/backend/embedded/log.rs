//! The write-ahead log: every batch the writer acknowledges is first appended here as one
//! frame and synced, so redb itself only needs a durable commit once per checkpoint.
//!
//! # Files
//! Segments sit next to the redb file: `<db file>.log.<generation>` (generation as 16 hex
//! digits, so names sort in order). The writer appends to the newest; at each freeze it
//! starts a new one, and once the checkpoint of the frozen table has committed in redb every
//! older segment is deleted. On open, all segments are replayed (merged in order into one
//! [`Recent`]), applied to redb in one durable transaction and deleted.
//!
//! # Frames
//! `payload length (u32 LE) ++ CRC-32 of payload (u32 LE) ++ payload`, the payload one
//! [`Recent`] encoded as five counted lists (see [`encode`]). A frame is synced before any of
//! its jobs is answered, so only the last frame of a segment can be incomplete (a crash
//! during its write, never acknowledged): replay ignores a last frame that is short or fails
//! its CRC and says how many bytes it ignored. After a failed write or sync the writer
//! appends nothing more to the segment (see `writer`: the store refuses writes until
//! restarted), so a bad frame with bytes after it is corruption, and opening fails rather
//! than drop acknowledged writes silently.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    path::{Path, PathBuf},
    sync::Arc,
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

/// The open segment the writer appends to.
pub(super) struct Log {
    base: PathBuf,
    generation: u64,
    file: File,
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
    for (generation, path) in segments(base)? {
        let bytes = fs::read(&path)?;
        let mut rest = bytes.as_slice();
        while !rest.is_empty() {
            match next_frame(rest) {
                Some((frame, after)) => {
                    replayed.table.merge(frame);
                    rest = after;
                }
                None if is_torn_tail(rest) => {
                    replayed.ignored_bytes += rest.len() as u64;
                    break;
                }
                None => {
                    let offset = bytes.len() - rest.len();
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "{}: corrupt frame at byte {offset} with more frames after it; \
                             acknowledged writes would be lost (move the file away to accept that)",
                            path.display()
                        ),
                    ));
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
    /// Creates segment `generation` and makes its name durable. A file of that generation
    /// can only be left by an earlier attempt that failed to sync the directory (nothing is
    /// appended to a segment before this returned), so it is reused.
    pub fn create(base: &Path, generation: u64) -> io::Result<Self> {
        let path = segment_path(base, generation);
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        sync_dir(&dir_and_prefix(base).0)?;
        Ok(Self {
            base: base.to_owned(),
            generation,
            file,
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
        })
    }

    /// The segment being appended to.
    pub fn generation(&self) -> u64 {
        self.generation
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
        self.file.write_all(&frame).map_err(AppendError::Io)?;
        self.file.sync_data().map_err(AppendError::Io)
    }

    /// Starts the next segment; returns the generation of the one it replaced, which holds
    /// everything appended so far.
    pub fn rotate(&mut self) -> io::Result<u64> {
        let next = Self::create(&self.base, self.generation + 1)?;
        let previous = self.generation;
        *self = next;
        Ok(previous)
    }
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

/// Whether a frame that does not read is the tail of an interrupted write: it runs to the end
/// of the segment (a write is never followed by another once it failed). A bad frame with
/// bytes after it is corruption.
fn is_torn_tail(bytes: &[u8]) -> bool {
    match bytes.get(..4) {
        Some(length) => {
            let length = u32::from_le_bytes([length[0], length[1], length[2], length[3]]) as usize;
            length > MAX_FRAME || bytes.len() <= 8 + length
        }
        None => true,
    }
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

    #[test]
    fn replay_merges_segments_and_stops_at_a_torn_frame() {
        let dir = tempfile::tempdir().expect("temp dir");
        let base = dir.path().join("m.redb");
        let mut log = Log::create(&base, 1).expect("create");
        log.append(&sample(1)).expect("append");
        assert_eq!(log.rotate().expect("rotate"), 1);
        log.append(&sample(2)).expect("append");
        log.append(&sample(3)).expect("append");
        // A crash in the middle of writing a fourth frame.
        let torn = encode(&sample(4));
        let mut file = OpenOptions::new()
            .append(true)
            .open(segment_path(&base, 2))
            .expect("open");
        file.write_all(&(torn.len() as u32).to_le_bytes())
            .expect("write");
        file.write_all(&[0; 9]).expect("write");

        let replayed = replay(&base).expect("replay");
        let mut expected = sample(1);
        expected.merge(sample(2));
        expected.merge(sample(3));
        assert_eq!(replayed.table, expected);
        assert_eq!(replayed.last_generation, 2);
        assert_eq!(replayed.ignored_bytes, 13);

        remove_through(&base, 1).expect("remove");
        assert_eq!(
            segments(&base)
                .expect("list")
                .into_iter()
                .map(|(g, _)| g)
                .collect::<Vec<_>>(),
            [2]
        );
    }

    #[test]
    fn a_corrupt_frame_followed_by_others_fails_the_replay() {
        let dir = tempfile::tempdir().expect("temp dir");
        let base = dir.path().join("m.redb");
        let mut log = Log::create(&base, 7).expect("create");
        for n in 1..=3 {
            log.append(&sample(n)).expect("append");
        }
        let path = segment_path(&base, 7);
        let mut bytes = fs::read(&path).expect("read");
        bytes[20] ^= 1;
        fs::write(&path, &bytes).expect("write");
        let error = replay(&base).err().expect("corruption is an error");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn a_flipped_bit_in_the_last_frame_ends_replay() {
        let dir = tempfile::tempdir().expect("temp dir");
        let base = dir.path().join("m.redb");
        let mut log = Log::create(&base, 7).expect("create");
        log.append(&sample(1)).expect("append");
        log.append(&sample(2)).expect("append");
        let path = segment_path(&base, 7);
        let mut bytes = fs::read(&path).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&path, &bytes).expect("write");
        let replayed = replay(&base).expect("replay");
        assert_eq!(replayed.table, sample(1));
        assert!(replayed.ignored_bytes > 0);
    }
}
