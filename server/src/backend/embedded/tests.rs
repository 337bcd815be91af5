//! The conformance suite on a temporary redb file (once with the default tuning, once
//! checkpointing after every batch so reads cross the recent tier and redb all the time),
//! plus what only files can show: durability across reopen and across a crash (log replay),
//! release of the file on drop, a failed log write failing its batch and every later one, and
//! a failing redb losing nothing the log holds.

use std::{
    io,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
};

use tempfile::TempDir;

use super::{
    EmbeddedStore,
    log::{FIRST_SEGMENT, Log},
    recent::Tiers,
    recover,
    writer::{self, Job, Tuning, Writer},
};
use crate::{
    backend::message_store::{MessageStore, conformance, conformance::new_message},
    error::Error,
    ids::{ConversationId, GroupId, UserId},
};

fn open(dir: &TempDir) -> EmbeddedStore {
    EmbeddedStore::open(&dir.path().join("messages.redb")).expect("open")
}

fn fresh() -> (TempDir, Arc<dyn MessageStore>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(&dir);
    (dir, Arc::new(store))
}

/// Freezes after every batch: the tier is checkpointed into redb as fast as the checkpoint
/// thread can go, so reads and the writer's lookups find entries in all three places.
fn checkpoint_always() -> Tuning {
    Tuning {
        freeze_after: std::time::Duration::ZERO,
        freeze_at_entries: 1,
        ..Tuning::default()
    }
}

/// Never checkpoints while open: everything stays in the log and the recent tier.
fn checkpoint_never() -> Tuning {
    Tuning {
        freeze_after: std::time::Duration::from_secs(3600),
        freeze_at_entries: usize::MAX,
        max_active_entries: usize::MAX,
        ..Tuning::default()
    }
}

fn open_with(path: &std::path::Path, tuning: Tuning) -> EmbeddedStore {
    let db = redb::Database::create(path).expect("database");
    EmbeddedStore::with_database(db, path.to_owned(), tuning).expect("store")
}

macro_rules! conformance_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let (_dir, store) = fresh();
                conformance::$name(store).await;
            }
        )*
        /// The same suite with a checkpoint after every batch.
        mod checkpointing {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let dir = tempfile::tempdir().expect("temp dir");
                    let store = open_with(&dir.path().join("m.redb"), checkpoint_always());
                    conformance::$name(Arc::new(store)).await;
                }
            )*
        }
    };
}

conformance_tests!(
    run_all,
    gapless_seq_under_concurrency,
    stored_message_matches_the_append,
    idempotent_client_msg_id,
    append_many_keeps_order_and_idempotency,
    concurrent_duplicates_store_one_message,
    read_after_pages_forward,
    read_before_pages_backward,
    conversation_states_report_heads,
    mark_read_is_monotonic_and_capped,
    sender_read_position_follows_append,
    direct_conversations_index_both_members,
    closed_store_refuses_appends,
);

fn group(id: u64) -> ConversationId {
    ConversationId::Group(GroupId(id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_after_close_keeps_everything_and_continues_seq() {
    let dir = tempfile::tempdir().expect("temp dir");
    let dm = ConversationId::direct(UserId(1), UserId(2)).expect("dm");
    let store = open(&dir);
    let mut sent = Vec::new();
    for i in 0..20 {
        let conv = if i % 2 == 0 { group(1) } else { dm };
        let m = new_message(conv, 1, &format!("c{i}"), &format!("text {i}"));
        sent.push(store.append(m).await.expect("append").message);
    }
    assert_eq!(store.mark_read(UserId(2), dm, 4).await.expect("mark"), 4);
    store.close().await.expect("close");
    assert!(matches!(
        store.read_after(dm, 0, 1).await,
        Err(Error::Unavailable(_))
    ));
    store.close().await.expect("second close is a no-op");
    drop(store);

    let store = open(&dir);
    let mut stored = store.read_after(group(1), 0, 100).await.expect("read");
    stored.extend(store.read_after(dm, 0, 100).await.expect("read"));
    sent.sort_by_key(|m| (m.conversation_id.clone(), m.seq));
    stored.sort_by_key(|m| (m.conversation_id.clone(), m.seq));
    assert_eq!(stored, sent);
    let states = store
        .conversation_states(UserId(2), &[group(1), dm])
        .await
        .expect("states");
    assert_eq!(
        states
            .iter()
            .map(|s| (s.last_seq, s.read_seq))
            .collect::<Vec<_>>(),
        [(10, 0), (10, 4)]
    );
    assert_eq!(
        store.direct_conversations(UserId(2)).await.expect("list"),
        vec![dm]
    );
    let retry = store
        .append(new_message(dm, 1, "c1", "again"))
        .await
        .expect("retry");
    assert!(retry.duplicate);
    assert_eq!(retry.message.seq, 1);
    let next = store
        .append(new_message(dm, 2, "after-reopen", "hi"))
        .await
        .expect("append");
    assert_eq!((next.message.seq, next.duplicate), (11, false));
    store.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_stops_the_writer_and_releases_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(&dir);
    for i in 0..5 {
        store
            .append(new_message(group(2), 7, &format!("d{i}"), "x"))
            .await
            .expect("append");
    }
    drop(store);
    let store = open(&dir);
    let next = store
        .append(new_message(group(2), 7, "d5", "x"))
        .await
        .expect("append");
    assert_eq!(next.message.seq, 6);
}

/// A storage backend in shared memory whose writes and syncs can be made to fail; the bytes
/// outlive the database, as a file outlives a crashed process.
#[derive(Debug, Default, Clone)]
struct FlakyBackend {
    bytes: Arc<RwLock<Vec<u8>>>,
    failing: Arc<AtomicBool>,
}

impl FlakyBackend {
    fn check(&self) -> io::Result<()> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(io::Error::other("injected I/O failure"));
        }
        Ok(())
    }
}

impl redb::StorageBackend for FlakyBackend {
    fn len(&self) -> io::Result<u64> {
        Ok(self.bytes.read().expect("lock").len() as u64)
    }

    fn read(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let bytes = self.bytes.read().expect("lock");
        let start = usize::try_from(offset).expect("offset");
        Ok(bytes[start..start + len].to_vec())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.check()?;
        self.bytes
            .write()
            .expect("lock")
            .resize(usize::try_from(len).expect("len"), 0);
        Ok(())
    }

    fn sync_data(&self, _eventual: bool) -> io::Result<()> {
        self.check()
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.check()?;
        let start = usize::try_from(offset).expect("offset");
        self.bytes.write().expect("lock")[start..start + data.len()].copy_from_slice(data);
        Ok(())
    }
}

fn open_on(backend: &FlakyBackend, dir: &TempDir, tuning: Tuning) -> EmbeddedStore {
    let db = redb::Database::builder()
        .create_with_backend(backend.clone())
        .expect("database");
    EmbeddedStore::with_database(db, dir.path().join("flaky.redb"), tuning).expect("store")
}

fn client_ids(messages: &[daehwa::v1::Message]) -> Vec<&str> {
    messages.iter().map(|m| m.client_msg_id.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_redb_loses_nothing_the_log_acknowledged() {
    let backend = FlakyBackend::default();
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open_on(&backend, &dir, checkpoint_always());
    let conv = group(3);
    store
        .append(new_message(conv, 9, "before", "checkpointed"))
        .await
        .expect("append");

    // Every checkpoint now fails; appends are still acknowledged (the log holds them) and
    // readable (the recent tier serves them).
    backend.failing.store(true, Ordering::SeqCst);
    for i in 0..5 {
        store
            .append(new_message(conv, 9, &format!("during-{i}"), "logged"))
            .await
            .expect("append while redb fails");
    }
    assert_eq!(store.mark_read(UserId(10), conv, 4).await.expect("mark"), 4);
    let read = store.read_after(conv, 0, 100).await.expect("read");
    assert_eq!(read.len(), 6);
    drop(store);

    // As after a restart with a healthy disk: the log is replayed into redb.
    backend.failing.store(false, Ordering::SeqCst);
    let store = open_on(&backend, &dir, Tuning::default());
    let stored = store.read_after(conv, 0, 100).await.expect("read");
    assert_eq!(
        client_ids(&stored),
        [
            "before", "during-0", "during-1", "during-2", "during-3", "during-4"
        ]
    );
    let state = store
        .conversation_states(UserId(10), &[conv])
        .await
        .expect("states")
        .remove(0);
    assert_eq!((state.last_seq, state.read_seq), (6, 4));
    let retry = store
        .append(new_message(conv, 9, "during-2", "retried"))
        .await
        .expect("retry");
    assert_eq!((retry.message.seq, retry.duplicate), (4, true));
    let next = store
        .append(new_message(conv, 9, "after", "new"))
        .await
        .expect("append");
    assert_eq!((next.message.seq, next.duplicate), (7, false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_log_write_fails_its_batch_and_every_later_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("messages.redb");
    let conv = group(4);
    let store = open(&dir);
    store
        .append(new_message(conv, 9, "ok", "stored"))
        .await
        .expect("append");
    store.close().await.expect("close");
    drop(store);

    // The writer's segment refuses writes (opened read-only): a real I/O error on append.
    let db = Arc::new(redb::Database::create(&path).expect("database"));
    let generation = recover(&db, &path, FIRST_SEGMENT)
        .expect("recover")
        .generation();
    let log = Log::read_only(&path, generation).expect("read-only segment");
    let store =
        Arc::new(EmbeddedStore::with_log(db, log, path.clone(), Tuning::default()).expect("store"));
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .append(new_message(conv, 9, &format!("lost-{i}"), "not stored"))
                    .await
            })
        })
        .collect();
    for task in tasks {
        let result = task.await.expect("task");
        assert!(
            matches!(result, Err(Error::Unavailable(_))),
            "got {result:?}"
        );
    }
    let marked = store.mark_read(UserId(10), conv, 1).await;
    assert!(
        matches!(marked, Err(Error::Unavailable(_))),
        "got {marked:?}"
    );
    let read = store
        .read_after(conv, 0, 100)
        .await
        .expect("reads still work");
    assert_eq!(client_ids(&read), ["ok"]);
    store.close().await.expect("close");
    drop(store);

    // After a restart only the acknowledged message is there, and seq goes on from it.
    let store = open(&dir);
    let stored = store.read_after(conv, 0, 100).await.expect("read");
    assert_eq!(client_ids(&stored), ["ok"]);
    let next = store
        .append(new_message(conv, 9, "lost-0", "retried"))
        .await
        .expect("append");
    assert_eq!((next.message.seq, next.duplicate), (2, false));
}

/// A copy of the files taken while the store runs is what a crash (power loss after the
/// last acknowledgement) leaves: redb as of its last checkpoint plus the synced log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_image_recovers_every_acknowledged_write() {
    let segments = crash_image_recovers(checkpoint_never()).await;
    assert_eq!(segments, 1, "one log segment");
}

/// The same across many log segments: tiny ones, so the writer moves on every few batches
/// (to a zeroed spare when the helper has one ready, else to a file that grows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_image_across_log_segments_recovers_every_acknowledged_write() {
    let segments = crash_image_recovers(Tuning {
        first_segment: 512,
        max_segment: 2048,
        ..checkpoint_never()
    })
    .await;
    assert!(
        segments > 3,
        "the log moved on several times ({segments} segments)"
    );
}

/// Appends 40 messages and a read position with `tuning`, copies the files while the store
/// runs, and checks that the copy opens with all of it; returns how many log segments the
/// copy held.
async fn crash_image_recovers(tuning: Tuning) -> usize {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("messages.redb");
    let dm = ConversationId::direct(UserId(1), UserId(2)).expect("dm");
    let store = open_with(&path, tuning);
    let mut sent = Vec::new();
    for i in 0..40 {
        let conv = if i % 2 == 0 { group(8) } else { dm };
        let m = new_message(conv, 1, &format!("c{i}"), &format!("text {i}"));
        sent.push(store.append(m).await.expect("append").message);
    }
    assert_eq!(store.mark_read(UserId(2), dm, 7).await.expect("mark"), 7);

    let image = tempfile::tempdir().expect("temp dir");
    let mut segments = 0;
    for entry in std::fs::read_dir(dir.path()).expect("list") {
        let entry = entry.expect("entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        std::fs::copy(entry.path(), image.path().join(&name)).expect("copy");
        if name.starts_with("messages.redb.log.") && !name.ends_with("spare") {
            segments += 1;
        }
    }
    drop(store);

    let store = EmbeddedStore::open(&image.path().join("messages.redb")).expect("open image");
    let mut stored = store.read_after(group(8), 0, 100).await.expect("read");
    stored.extend(store.read_after(dm, 0, 100).await.expect("read"));
    sent.sort_by_key(|m| (m.conversation_id.clone(), m.seq));
    stored.sort_by_key(|m| (m.conversation_id.clone(), m.seq));
    assert_eq!(stored, sent);
    let state = store
        .conversation_states(UserId(2), &[dm])
        .await
        .expect("states")
        .remove(0);
    assert_eq!((state.last_seq, state.read_seq), (20, 7));
    assert_eq!(
        store.direct_conversations(UserId(1)).await.expect("list"),
        vec![dm]
    );
    let retry = store
        .append(new_message(group(8), 1, "c0", "again"))
        .await
        .expect("retry");
    assert_eq!((retry.message.seq, retry.duplicate), (1, true));
    let next = store
        .append(new_message(group(8), 1, "c40", "new"))
        .await
        .expect("append");
    assert_eq!((next.message.seq, next.duplicate), (21, false));
    store.close().await.expect("close");
    segments
}

/// Checkpoints after every batch while the log moves through tiny segments: checkpoints
/// delete the segments they covered as the writer goes, reads see every message, and a
/// closed store leaves no segment behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_delete_covered_segments_as_the_log_moves_on() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("messages.redb");
    let store = open_with(
        &path,
        Tuning {
            first_segment: 512,
            max_segment: 1024,
            ..checkpoint_always()
        },
    );
    let mut sent = Vec::new();
    for i in 0..200 {
        let m = new_message(group(3), 1, &format!("c{i}"), &format!("text {i}"));
        sent.push(store.append(m).await.expect("append").message);
    }
    let segments = || {
        std::fs::read_dir(dir.path())
            .expect("list")
            .filter(|e| {
                let name = e.as_ref().expect("entry").file_name();
                let name = name.to_string_lossy();
                name.starts_with("messages.redb.log.") && !name.ends_with("spare")
            })
            .count()
    };
    // 200 frames of > 100 bytes in segments of at most 1 KiB: ~30 segments were written.
    // The checkpoint thread runs at a lower priority and may still be catching up on a busy
    // machine (the writer only waits for it once the active table is full), so the
    // deletions are awaited, within a deadline.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut left = segments();
    while left >= 10 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        left = segments();
    }
    assert!(
        left < 10,
        "covered segments are deleted ({left} left after 10 s)"
    );
    assert!(left >= 1, "the segment being appended to is never deleted");
    assert_eq!(
        store.read_after(group(3), 0, 500).await.expect("read"),
        sent
    );
    store.close().await.expect("close");
    assert_eq!(segments(), 0, "closing checkpoints and deletes the log");
}

/// Runs a writer over `receiver` until it is drained, on a fresh database at `path`; returns
/// how many batches it made.
async fn run_writer(path: &std::path::Path, receiver: tokio::sync::mpsc::Receiver<Job>) -> u64 {
    let db = Arc::new(redb::Database::create(path).expect("database"));
    let log = recover(&db, path, FIRST_SEGMENT).expect("recover");
    let tiers = Arc::new(RwLock::new(Tiers::default()));
    let writer = Writer::new(
        db,
        tiers,
        log,
        path.to_owned(),
        Tuning::default(),
        Arc::default(),
    )
    .expect("writer");
    tokio::task::spawn_blocking(move || writer.run(receiver))
        .await
        .expect("writer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_jobs_share_transactions_and_same_batch_duplicates_are_found() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (sender, receiver) = tokio::sync::mpsc::channel(writer::QUEUE_CAPACITY);
    let mut answers = Vec::new();
    for i in 0..300 {
        // Jobs 0 and 1 carry the same client_msg_id and land in the same (first) batch.
        let id = if i == 1 {
            "m0".to_owned()
        } else {
            format!("m{i}")
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        let message = new_message(group(5), 1, &id, "queued");
        sender
            .try_send(Job::Append {
                message: Box::new(message),
                reply,
                result: None,
            })
            .expect("queue");
        answers.push(answer);
    }
    drop(sender);
    let batches = run_writer(&dir.path().join("w.redb"), receiver).await;
    assert_eq!(batches, 2, "300 queued jobs commit as 256 + 44");
    let mut results = Vec::new();
    for answer in answers {
        results.push(answer.await.expect("answered").expect("appended"));
    }
    assert!(results[1].duplicate);
    assert_eq!(results[1].message, results[0].message);
    let seqs: Vec<_> = results
        .iter()
        .filter(|a| !a.duplicate)
        .map(|a| a.message.seq)
        .collect();
    assert_eq!(seqs, (1..=299).collect::<Vec<_>>());
}

/// Every log append is timed into the histogram the server hands over (and none before).
#[tokio::test]
async fn log_appends_are_observed_once_a_histogram_is_given() {
    let (_dir, store) = fresh();
    store
        .append(new_message(group(5), 1, "before", "x"))
        .await
        .expect("append");
    let histogram = prometheus_client::metrics::histogram::Histogram::new([0.001, 1.0]);
    store.observe_durable_writes(histogram.clone());
    for i in 0..3 {
        store
            .append(new_message(group(5), 1, &format!("after-{i}"), "x"))
            .await
            .expect("append");
    }
    // Three acknowledged appends, each after its own log append and sync: three
    // observations (a batch can take only appends queued together; these were not).
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register("log_sync_seconds", "log appends", histogram);
    let mut page = String::new();
    prometheus_client::encoding::text::encode(&mut page, &registry).expect("encode");
    assert!(page.contains("log_sync_seconds_count 3\n"), "{page}");
    assert!(!page.contains("log_sync_seconds_sum 0.0\n"), "{page}");
}

#[tokio::test]
async fn empty_client_msg_id_is_refused() {
    let (_dir, store) = fresh();
    let refused = store.append(new_message(group(4), 1, "", "x")).await;
    assert!(
        matches!(refused, Err(Error::InvalidArgument(_))),
        "got {refused:?}"
    );
    assert_eq!(
        store
            .conversation_states(UserId(1), &[group(4)])
            .await
            .expect("states")[0]
            .last_seq,
        0
    );
}

/// Within one batch every job must see the heads and read positions earlier jobs left (they
/// are only in the batch's changes), and after it the store must hold the last of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_batch_sees_its_own_heads_and_read_positions() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("messages.redb");
    let conv = group(6);
    let (sender, receiver) = tokio::sync::mpsc::channel(writer::QUEUE_CAPACITY);
    let mut appends = Vec::new();
    let mut marks = Vec::new();
    let mut queue_append = |id: &str| {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let message = Box::new(new_message(conv, 1, id, "batched"));
        sender
            .try_send(Job::Append {
                message,
                reply,
                result: None,
            })
            .expect("queue");
        appends.push(answer);
    };
    queue_append("a");
    let mut queue_mark = |user: u64, seq: u64| {
        let (reply, answer) = tokio::sync::oneshot::channel();
        sender
            .try_send(Job::MarkRead {
                user: UserId(user),
                conversation: conv,
                seq,
                reply,
                result: None,
            })
            .expect("queue");
        marks.push(answer);
    };
    // User 2 reads seq 1 (the head so far, not yet in the table); asking for 9 is capped.
    queue_mark(2, 9);
    queue_mark(1, 1);
    queue_append("b");
    // User 1 sent seq 2, so it has read 2: marking 1 must not move it back (the batch's own
    // read positions are not in the table yet). The same for user 2 after marking 2.
    queue_mark(1, 1);
    queue_mark(2, 2);
    queue_mark(2, 1);
    drop(sender);
    let batches = run_writer(&path, receiver).await;
    assert_eq!(batches, 1, "all seven jobs share one batch");
    let mut seqs = Vec::new();
    for answer in appends {
        seqs.push(
            answer
                .await
                .expect("answered")
                .expect("appended")
                .message
                .seq,
        );
    }
    assert_eq!(seqs, [1, 2]);
    let mut positions = Vec::new();
    for answer in marks {
        positions.push(answer.await.expect("answered").expect("marked"));
    }
    // User 2 is capped at head 1; user 1 already read 1 by sending it; then neither moves
    // back from 2.
    assert_eq!(positions, [1, 1, 2, 2, 2]);

    let store = EmbeddedStore::open(&path).expect("reopen");
    for (user, read) in [(1, 2), (2, 2)] {
        let state = store
            .conversation_states(UserId(user), &[conv])
            .await
            .expect("states")
            .remove(0);
        assert_eq!((state.last_seq, state.read_seq), (2, read), "user {user}");
    }
}
