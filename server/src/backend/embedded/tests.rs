//! The conformance suite on a temporary redb file, plus what only a file can show: durability
//! across reopen, release of the file on drop, and a failed commit failing its whole batch.

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
    writer::{self, Job},
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

macro_rules! conformance_tests {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let (_dir, store) = fresh();
            conformance::$name(store).await;
        }
    )*};
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

fn open_on(backend: &FlakyBackend) -> EmbeddedStore {
    let db = redb::Database::builder()
        .create_with_backend(backend.clone())
        .expect("database");
    EmbeddedStore::with_database(db).expect("store")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_commit_fails_every_job_and_stores_none() {
    let backend = FlakyBackend::default();
    let store = Arc::new(open_on(&backend));
    let conv = group(3);
    store
        .append(new_message(conv, 9, "ok", "stored"))
        .await
        .expect("append");

    backend.failing.store(true, Ordering::SeqCst);
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
    drop(store);

    // As after a restart: only the acknowledged message is there, and seq goes on from it.
    backend.failing.store(false, Ordering::SeqCst);
    let store = open_on(&backend);
    let stored = store.read_after(conv, 0, 100).await.expect("read");
    assert_eq!(
        stored
            .iter()
            .map(|m| m.client_msg_id.as_str())
            .collect::<Vec<_>>(),
        ["ok"]
    );
    let next = store
        .append(new_message(conv, 9, "lost-0", "retried"))
        .await
        .expect("append");
    assert_eq!((next.message.seq, next.duplicate), (2, false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_jobs_share_transactions_and_same_batch_duplicates_are_found() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = Arc::new(redb::Database::create(dir.path().join("w.redb")).expect("database"));
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
    let db_for_writer = db.clone();
    let transactions = tokio::task::spawn_blocking(move || writer::run(&db_for_writer, receiver))
        .await
        .expect("writer");
    assert_eq!(transactions, 2, "300 queued jobs commit as 256 + 44");
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

/// Heads and read positions are written back once per batch: within the batch every job
/// must still see the values earlier jobs left, and after the commit the table must hold the
/// last of them.
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
    {
        let db = Arc::new(redb::Database::create(&path).expect("database"));
        let transactions = tokio::task::spawn_blocking(move || writer::run(&db, receiver))
            .await
            .expect("writer");
        assert_eq!(transactions, 1, "all seven jobs share one transaction");
    }
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
