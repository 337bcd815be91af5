//! The single writer thread: it turns whatever is queued (up to [`BATCH_CAP`] jobs) into one
//! log frame, syncs it, merges it into the active recent table and only then answers the
//! jobs (group commit: concurrent appends share one sync, none is acknowledged before it).
//!
//! Per batch: the jobs run in queue order against a [`BatchView`] (the batch's own changes,
//! then the recent tiers, then a redb read transaction), which allocates seqs from the heads
//! it sees and finds a duplicate `client_msg_id` even when its first use is earlier in the
//! same batch. The batch's changes are appended to the write-ahead log and synced; then they
//! are merged into the active table, where readers see them. redb is written only by
//! checkpoints: after each batch, if [`Tuning::freeze_after`] has passed (or the active table
//! is large) and no checkpoint is running, the writer hands the active table to the
//! checkpoint thread as frozen. Separately, once the log segment's zeroed space is used up,
//! it moves to the spare segment the log's helper thread has prepared (see `log`).
//!
//! Error rule inside a batch: a redb read error aborts the whole batch and every job in it
//! gets `Unavailable`; a bad record (undecodable, dangling index) fails only its own job,
//! which is detected before that job changes anything. A failed log write or sync fails the
//! batch and every later one until the store is reopened (the segment's tail is unknown
//! after it, and a sync that failed once cannot be trusted to have kept earlier pages).

use std::{
    path::PathBuf,
    sync::{
        Arc, OnceLock, PoisonError, RwLock,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use daehwa::v1::Message;
use prometheus_client::metrics::histogram::Histogram;
use prost::Message as _;
use redb::{Database, ReadOnlyTable, ReadTransaction};
use tokio::sync::{mpsc as mpsc_async, oneshot};

use super::{
    checkpoint::{self, Frozen},
    layout::{
        ConvKey, HEADS, IDEMPOTENCY, MESSAGES, READ_POSITIONS, db_err, decode_message,
        idempotency_key, message_key, timestamp, user_conv_key,
    },
    log::{self, AppendError, Log, SpareMaker},
    recent::{Recent, Tiers, UserConvKey},
};
use crate::{
    backend::message_store::{Appended, NewMessage},
    error::{Error, Result},
    ids::{ConversationId, UserId},
};

/// How many jobs may wait for the writer before senders wait in turn.
pub(super) const QUEUE_CAPACITY: usize = 4096;
/// The most jobs one transaction commits.
pub(super) const BATCH_CAP: usize = 256;

/// One write, with the channel its result goes back on. `result` is filled inside the
/// transaction and sent only once the transaction has committed.
pub(super) enum Job {
    Append {
        message: Box<NewMessage>,
        reply: oneshot::Sender<Result<Appended>>,
        result: Option<Result<Appended>>,
    },
    /// Several appends in order, in the same transaction.
    AppendMany {
        messages: Vec<NewMessage>,
        reply: oneshot::Sender<Result<Vec<Result<Appended>>>>,
        result: Option<Result<Vec<Result<Appended>>>>,
    },
    MarkRead {
        user: UserId,
        conversation: ConversationId,
        seq: u64,
        reply: oneshot::Sender<Result<u64>>,
        result: Option<Result<u64>>,
    },
}

impl Job {
    /// Sends the job's result if `committed` is Ok, else the commit's error.
    fn finish(self, committed: &Result<()>) {
        fn outcome<T>(committed: &Result<()>, result: Option<Result<T>>) -> Result<T> {
            match committed {
                Ok(()) => result.unwrap_or_else(|| {
                    Err(Error::internal(
                        "message store: job committed without a result",
                    ))
                }),
                Err(e) => Err(e.clone()),
            }
        }
        // A caller that went away no longer needs the answer: ignore send errors.
        match self {
            Job::Append { reply, result, .. } => {
                let _ = reply.send(outcome(committed, result));
            }
            Job::AppendMany { reply, result, .. } => {
                let _ = reply.send(outcome(committed, result));
            }
            Job::MarkRead { reply, result, .. } => {
                let _ = reply.send(outcome(committed, result));
            }
        }
    }
}

/// When the writer freezes the active table and how far it lets it grow.
#[derive(Debug, Clone)]
pub(super) struct Tuning {
    /// Freeze (start a checkpoint) at least this often while there are writes.
    pub freeze_after: Duration,
    /// Freeze as soon as the active table holds this many entries.
    pub freeze_at_entries: usize,
    /// Above this many active entries, with a checkpoint still running, a batch waits for
    /// it (back-pressure that bounds memory)...
    pub max_active_entries: usize,
    /// ... for at most this long, then fails `Unavailable`.
    pub checkpoint_wait: Duration,
    /// The zeroed size of the first log segment; each next one is twice the last...
    pub first_segment: u64,
    /// ... up to this size.
    pub max_segment: u64,
}

impl Default for Tuning {
    /// Ten checkpoints a second under load; ~40 MB of recent entries at most in the active
    /// table (the frozen one, and the last checkpointed one until it is freed, come beside it).
    ///
    /// Why 100 ms and not a second: a checkpoint slows the hot path while it runs (the log's
    /// syncs took 1–3 ms instead of ~0.25 ms during one, with the checkpoint thread at
    /// `SCHED_IDLE` too), so its length sets how far sends fall behind. At 20k msg/s a
    /// second's table took 120–190 ms to write; a tenth of it, side by side on one build:
    /// p99 11.2 / 9.9 ms against 16.0 / 14.4, and scenario (a) 87.6k / 96.9k msg/s against
    /// 83.3k / 88.0k (BENCHMARKS.md). A transaction per batch (~2,000 a second) stays far off.
    fn default() -> Self {
        Self {
            freeze_after: Duration::from_millis(100),
            freeze_at_entries: 131_072,
            max_active_entries: 262_144,
            checkpoint_wait: Duration::from_secs(5),
            first_segment: log::FIRST_SEGMENT,
            max_segment: log::MAX_SEGMENT,
        }
    }
}

/// Everything the writer thread owns: the log it appends to, the tiers it merges into and
/// the checkpoint thread it feeds.
pub(super) struct Writer {
    db: Arc<Database>,
    tiers: Arc<RwLock<Tiers>>,
    log: Log,
    log_base: PathBuf,
    spares: SpareMaker,
    tuning: Tuning,
    last_freeze: Instant,
    checkpoints: Checkpoints,
    /// The last checkpointed table, no longer visible to readers, handed to the checkpoint
    /// thread with the next freeze to be freed there. While no write comes, it stays here:
    /// at most one table (bounded like the active one) beside the tiers.
    retired: Option<Arc<Recent>>,
    /// Set after a failed log write: the segment's tail is unknown, so nothing more may be
    /// appended to it; every later batch fails with this error until the store is reopened.
    failed: Option<Error>,
    /// Observes each log append (its sync included), once the server has handed one over.
    log_syncs: Arc<OnceLock<Histogram>>,
}

struct Checkpoints {
    frozen: Option<mpsc::SyncSender<Frozen>>,
    done: mpsc::Receiver<u64>,
    closing: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// A writer appending to `log` (see `recover`), with its checkpoint thread started.
    pub fn new(
        db: Arc<Database>,
        tiers: Arc<RwLock<Tiers>>,
        log: Log,
        log_base: PathBuf,
        tuning: Tuning,
        log_syncs: Arc<OnceLock<Histogram>>,
    ) -> Result<Self> {
        let (frozen, frozen_receiver) = mpsc::sync_channel(1);
        let (done_sender, done) = mpsc::sync_channel(1);
        let closing = Arc::new(AtomicBool::new(false));
        let mut spares = SpareMaker::spawn(&log_base).map_err(|e| {
            Error::unavailable(format!("message store: cannot start the log's helper: {e}"))
        })?;
        spares.request(next_segment_size(&log, &tuning));
        let thread = checkpoint::spawn(
            Arc::clone(&db),
            log_base.clone(),
            frozen_receiver,
            done_sender,
            Arc::clone(&closing),
        )?;
        Ok(Self {
            db,
            tiers,
            log,
            log_base,
            spares,
            tuning,
            last_freeze: Instant::now(),
            checkpoints: Checkpoints {
                frozen: Some(frozen),
                done,
                closing,
                thread: Some(thread),
            },
            retired: None,
            failed: None,
            log_syncs,
        })
    }

    /// Starts the writer thread; it runs until every sender is dropped and the queue is
    /// drained, then checkpoints what is left.
    pub fn spawn(self) -> Result<(mpsc_async::Sender<Job>, JoinHandle<()>)> {
        let (sender, receiver) = mpsc_async::channel(QUEUE_CAPACITY);
        let thread = std::thread::Builder::new()
            .name("message-store-writer".to_owned())
            .spawn(move || {
                self.run(receiver);
            })
            .map_err(|e| Error::unavailable(format!("message store: cannot start writer: {e}")))?;
        Ok((sender, thread))
    }

    /// The writer's loop: one log frame per batch of queued jobs, until the queue is closed
    /// and empty. Returns the number of batches.
    pub fn run(mut self, mut receiver: mpsc_async::Receiver<Job>) -> u64 {
        let mut batch = Vec::with_capacity(BATCH_CAP);
        let mut batches = 0;
        while let Some(first) = receiver.blocking_recv() {
            batches += 1;
            batch.push(first);
            while batch.len() < BATCH_CAP {
                match receiver.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            let committed = self.write_batch(&mut batch);
            for job in batch.drain(..) {
                job.finish(&committed);
            }
            if self.log.is_full() && self.failed.is_none() {
                self.next_segment();
            }
            self.collect_checkpoints();
            if self.freeze_due() {
                self.freeze();
            }
        }
        self.shut_down();
        batches
    }

    /// Applies every job against the tiers and redb, appends the changes to the log, syncs
    /// it, and only then makes them visible. On error nothing of the batch is stored.
    fn write_batch(&mut self, batch: &mut [Job]) -> Result<()> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        self.make_room()?;
        let changes = {
            let tiers = self.tiers.read().unwrap_or_else(PoisonError::into_inner);
            let tx = self.db.begin_read().map_err(db_err)?;
            let mut view = BatchView::open(&tiers, &tx)?;
            apply_jobs(&mut view, batch)?;
            view.changes
        };
        if changes.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let appended = self.log.append(&changes);
        if let Some(histogram) = self.log_syncs.get() {
            histogram.observe(started.elapsed().as_secs_f64());
        }
        match appended {
            Ok(()) => {}
            Err(AppendError::TooLarge(bytes)) => {
                return Err(Error::unavailable(format!(
                    "message store: a batch of {bytes} bytes is too large for one log frame; retry"
                )));
            }
            Err(AppendError::Io(e)) => {
                let error = Error::unavailable(format!(
                    "message store: write-ahead log failed ({e}); writes are refused until restart"
                ));
                tracing::error!(%error);
                self.failed = Some(error.clone());
                return Err(error);
            }
        }
        self.tiers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .active
            .merge(changes);
        Ok(())
    }

    /// Moves the log to its next segment (the spare, if it is ready) and asks for the one
    /// after. On failure it stays on the current segment, which then grows past its zeros.
    fn next_segment(&mut self) {
        let size = next_segment_size(&self.log, &self.tuning);
        if let Err(e) = self.log.rotate(self.spares.take(), size) {
            tracing::warn!(error = %e, "message store: cannot start a log segment; appending to the current one");
            return;
        }
        self.spares
            .request(next_segment_size(&self.log, &self.tuning));
    }

    /// Drops every frozen table whose checkpoint has committed.
    fn collect_checkpoints(&mut self) {
        while self.checkpoints.done.try_recv().is_ok() {
            self.drop_frozen();
        }
    }

    /// Forgets the frozen table (its checkpoint committed). The table is freed by the
    /// checkpoint thread after the next freeze: neither readers (waiting on the lock) nor
    /// this thread wait for a large table's deallocation.
    fn drop_frozen(&mut self) {
        let frozen = self
            .tiers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .frozen
            .take();
        if frozen.is_some() {
            // Each freeze hands the retired table on, and a table is frozen again only
            // after the last one was taken out here.
            debug_assert!(
                self.retired.is_none(),
                "a retired table was never handed on"
            );
            self.retired = frozen;
        }
    }

    fn freeze_due(&self) -> bool {
        let tiers = self.tiers.read().unwrap_or_else(PoisonError::into_inner);
        tiers.frozen.is_none()
            && !tiers.active.is_empty()
            && (tiers.active.len() >= self.tuning.freeze_at_entries
                || self.last_freeze.elapsed() >= self.tuning.freeze_after)
    }

    /// Back-pressure: with the active table full and a checkpoint running, waits for it.
    fn make_room(&mut self) -> Result<()> {
        let (full, checkpointing) = {
            let tiers = self.tiers.read().unwrap_or_else(PoisonError::into_inner);
            (
                tiers.active.len() >= self.tuning.max_active_entries,
                tiers.frozen.is_some(),
            )
        };
        if !full {
            return Ok(());
        }
        if checkpointing {
            if self
                .checkpoints
                .done
                .recv_timeout(self.tuning.checkpoint_wait)
                .is_err()
            {
                return Err(Error::unavailable(
                    "message store: checkpoints are behind; try again later",
                ));
            }
            self.drop_frozen();
        }
        self.freeze();
        Ok(())
    }

    /// Moves the active table to frozen and hands it to the checkpoint thread, with the
    /// segments it may delete once committed: those before the one being appended to, which
    /// hold nothing newer than the table. Called only when nothing is frozen.
    fn freeze(&mut self) {
        let through_generation = self.log.generation().saturating_sub(1);
        // Built before the write lock is taken: only this thread changes the active table,
        // so its sizes cannot move meanwhile, and readers do not wait for the allocation.
        let next = Recent::sized_like(
            &self
                .tiers
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .active,
        );
        let table = {
            let mut tiers = self.tiers.write().unwrap_or_else(PoisonError::into_inner);
            let table = Arc::new(std::mem::replace(&mut tiers.active, next));
            tiers.frozen = Some(Arc::clone(&table));
            table
        };
        self.last_freeze = Instant::now();
        let sent = self.checkpoints.frozen.as_ref().map(|s| {
            s.send(Frozen {
                table,
                through_generation,
                retired: self.retired.take(),
            })
        });
        if !matches!(sent, Some(Ok(()))) {
            tracing::error!("message store: checkpoint thread is gone; the log keeps the data");
        }
    }

    /// After the queue closed: lets a running checkpoint finish, stops the thread, and writes
    /// what is left straight into redb so the next open has nothing to replay. Anything that
    /// fails here stays in the log and is replayed on the next open.
    fn shut_down(&mut self) {
        self.spares.stop(&self.log_base);
        self.checkpoints.closing.store(true, Ordering::SeqCst);
        let checkpointing = self
            .tiers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .frozen
            .is_some();
        if checkpointing && self.checkpoints.done.recv().is_ok() {
            self.drop_frozen();
        }
        self.retired = None;
        self.checkpoints.frozen = None;
        if let Some(thread) = self.checkpoints.thread.take() {
            let _ = thread.join();
        }
        let tiers = self.tiers.read().unwrap_or_else(PoisonError::into_inner);
        if tiers.frozen.is_some() {
            // The last checkpoint failed: the log keeps its table for the next open.
            return;
        }
        if !tiers.active.is_empty()
            && let Err(e) = checkpoint::apply(&self.db, &tiers.active)
        {
            tracing::warn!(error = %e, "message store: final checkpoint failed; the next open replays the log");
            return;
        }
        // Everything is in redb now, the current segment's frames included.
        if let Err(e) = log::remove_through(&self.log_base, self.log.generation()) {
            tracing::warn!(error = %e, "message store: cannot delete checkpointed log segments");
        }
    }
}

/// The size of the segment after `log`'s: twice its size, within the tuning's bounds.
fn next_segment_size(log: &Log, tuning: &Tuning) -> u64 {
    log.limit().saturating_mul(2).clamp(
        tuning.first_segment,
        tuning.max_segment.max(tuning.first_segment),
    )
}

/// Runs every job of the batch against the view, in queue order.
fn apply_jobs(view: &mut BatchView<'_>, batch: &mut [Job]) -> Result<()> {
    for job in batch.iter_mut() {
        match job {
            Job::Append {
                message, result, ..
            } => {
                *result = Some(view.append(message)?);
            }
            Job::AppendMany {
                messages, result, ..
            } => {
                let mut appended = Vec::with_capacity(messages.len());
                for message in messages.iter() {
                    appended.push(view.append(message)?);
                }
                *result = Some(Ok(appended));
            }
            Job::MarkRead {
                user,
                conversation,
                seq,
                result,
                ..
            } => {
                *result = Some(view.mark_read(*user, *conversation, *seq)?);
            }
        }
    }
    Ok(())
}

/// What one batch sees: its own changes first, then the recent tiers, then redb (a read
/// transaction opened after the tiers were locked, so nothing falls between them). Methods
/// return `Err` for a failure that aborts the batch and `Ok(Err)` for a failure of this job
/// alone.
struct BatchView<'a> {
    tiers: &'a Tiers,
    messages: ReadOnlyTable<&'static [u8], &'static [u8]>,
    heads: ReadOnlyTable<&'static [u8], u64>,
    idempotency: ReadOnlyTable<&'static [u8], u64>,
    read_positions: ReadOnlyTable<&'static [u8], u64>,
    /// What this batch wrote, as it will be logged and merged.
    changes: Recent,
}

impl<'a> BatchView<'a> {
    fn open(tiers: &'a Tiers, tx: &ReadTransaction) -> Result<Self> {
        Ok(Self {
            tiers,
            messages: tx.open_table(MESSAGES).map_err(db_err)?,
            heads: tx.open_table(HEADS).map_err(db_err)?,
            idempotency: tx.open_table(IDEMPOTENCY).map_err(db_err)?,
            read_positions: tx.open_table(READ_POSITIONS).map_err(db_err)?,
            changes: Recent::default(),
        })
    }

    fn head(&self, conv: &ConvKey) -> Result<u64> {
        if let Some(seq) = self.changes.heads.get(conv) {
            return Ok(*seq);
        }
        if let Some(seq) = self.tiers.newest(|t| &t.heads, conv) {
            return Ok(seq);
        }
        Ok(self
            .heads
            .get(conv.as_slice())
            .map_err(db_err)?
            .map_or(0, |g| g.value()))
    }

    fn read_position(&self, key: &UserConvKey) -> Result<u64> {
        if let Some(seq) = self.changes.read_positions.get(key) {
            return Ok(*seq);
        }
        if let Some(seq) = self.tiers.newest(|t| &t.read_positions, key) {
            return Ok(seq);
        }
        Ok(self
            .read_positions
            .get(key.as_slice())
            .map_err(db_err)?
            .map_or(0, |g| g.value()))
    }

    fn idempotent_seq(&self, key: &[u8]) -> Result<Option<u64>> {
        if let Some(seq) = self
            .changes
            .idempotency
            .get(key)
            .copied()
            .or_else(|| self.tiers.idempotent_seq(key))
        {
            return Ok(Some(seq));
        }
        Ok(self
            .idempotency
            .get(key)
            .map_err(db_err)?
            .map(|g| g.value()))
    }

    fn append(&mut self, new: &NewMessage) -> Result<Result<Appended>> {
        if new.client_msg_id.is_empty() {
            return Ok(Err(Error::invalid("client_msg_id must not be empty")));
        }
        let conv = new.conversation.to_key();
        let idempotency = idempotency_key(&conv, &new.client_msg_id);
        if let Some(seq) = self.idempotent_seq(&idempotency)? {
            return self.duplicate(new.conversation, &conv, seq);
        }

        let head = self.head(&conv)?;
        let Some(seq) = head.checked_add(1) else {
            return Ok(Err(Error::internal(format!(
                "{}: seq overflow",
                new.conversation
            ))));
        };
        let message = Message {
            message_id: new.message_id,
            conversation_id: new.conversation.to_string(),
            seq,
            sender_id: new.sender.0,
            sender_device_id: new.sender_device.0,
            client_msg_id: new.client_msg_id.clone(),
            content: Some(new.content.clone()),
            created_at: Some(timestamp(new.created_at_ms)),
        };
        let record: Arc<[u8]> = Arc::from(message.encode_to_vec());
        self.changes
            .messages
            .insert(message_key(&conv, seq), record);
        self.changes.heads.insert(conv, seq);
        self.changes.idempotency.insert(idempotency, seq);
        // One's own message is read: every earlier seq is below `seq`, so this only moves up.
        self.changes
            .read_positions
            .insert(user_conv_key(new.sender, &conv), seq);
        if let (ConversationId::Direct { lo, hi }, 0) = (new.conversation, head) {
            for member in [lo, hi] {
                self.changes.direct.insert(user_conv_key(member, &conv));
            }
        }
        Ok(Ok(Appended {
            message,
            duplicate: false,
        }))
    }

    /// The first message stored under a client_msg_id, reported as a duplicate.
    fn duplicate(
        &self,
        conversation: ConversationId,
        conv: &ConvKey,
        seq: u64,
    ) -> Result<Result<Appended>> {
        let key = message_key(conv, seq);
        let record = match self
            .changes
            .messages
            .get(&key)
            .cloned()
            .or_else(|| self.tiers.message(&key))
        {
            Some(record) => decode_message(&record),
            None => match self.messages.get(key.as_slice()).map_err(db_err)? {
                Some(stored) => decode_message(stored.value()),
                None => {
                    return Ok(Err(Error::internal(format!(
                        "message store: {conversation}: idempotency entry points to missing seq {seq}"
                    ))));
                }
            },
        };
        Ok(record.map(|message| Appended {
            message,
            duplicate: true,
        }))
    }

    fn mark_read(
        &mut self,
        user: UserId,
        conversation: ConversationId,
        seq: u64,
    ) -> Result<Result<u64>> {
        let conv = conversation.to_key();
        let target = seq.min(self.head(&conv)?);
        let key = user_conv_key(user, &conv);
        let current = self.read_position(&key)?;
        if target <= current {
            return Ok(Ok(current));
        }
        self.changes.read_positions.insert(key, target);
        Ok(Ok(target))
    }
}
