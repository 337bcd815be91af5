//! The single writer thread: it owns every write transaction of the embedded store and
//! group-commits whatever is queued (up to [`BATCH_CAP`] jobs) in one durable transaction.
//!
//! Error rule inside a batch: a redb error aborts the whole transaction and every job in it
//! gets `Unavailable`; a bad record (undecodable, dangling index) fails only its own job,
//! which is detected before that job writes anything.
//!
//! Heads and read positions are written back once per batch: an append used to read the
//! idempotency key and the head and write the message, the idempotency key, the head and the
//! sender's read position (two reads, four writes per message; the writer thread is about
//! half of the server's CPU under load). Now the batch keeps heads and read positions in
//! [`Tables`]' pending maps, reads its own pending values first, and writes each changed key
//! once, in key order, before the commit: a message costs one idempotency read and two
//! writes, plus one head read per conversation and one head and read-position write per
//! changed key per batch.

use std::{collections::BTreeMap, sync::Arc, thread::JoinHandle};

use daehwa::v1::Message;
use prost::Message as _;
use redb::{Database, Durability, ReadableTable, Table, WriteTransaction};
use tokio::sync::{mpsc, oneshot};

use super::layout::{
    ConvKey, DIRECT, HEADS, IDEMPOTENCY, MESSAGES, READ_POSITIONS, db_err, decode_message,
    idempotency_key, message_key, timestamp, user_conv_key,
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

/// Starts the writer thread on `db`; it runs until every sender is dropped and the queue is
/// drained.
pub(super) fn spawn(db: Arc<Database>) -> Result<(mpsc::Sender<Job>, JoinHandle<()>)> {
    let (sender, receiver) = mpsc::channel(QUEUE_CAPACITY);
    let thread = std::thread::Builder::new()
        .name("message-store-writer".to_owned())
        .spawn(move || {
            run(&db, receiver);
        })
        .map_err(|e| Error::unavailable(format!("message store: cannot start writer: {e}")))?;
    Ok((sender, thread))
}

/// The writer's loop: one transaction per batch of queued jobs, until the queue is closed
/// and empty. Returns the number of transactions it ran.
pub(super) fn run(db: &Database, mut receiver: mpsc::Receiver<Job>) -> u64 {
    let mut batch = Vec::with_capacity(BATCH_CAP);
    let mut transactions = 0;
    while let Some(first) = receiver.blocking_recv() {
        transactions += 1;
        batch.push(first);
        while batch.len() < BATCH_CAP {
            match receiver.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let committed = write_batch(db, &mut batch);
        for job in batch.drain(..) {
            job.finish(&committed);
        }
    }
    transactions
}

/// Applies every job in one transaction and commits it durably. On error nothing of the
/// batch is stored.
fn write_batch(db: &Database, batch: &mut [Job]) -> Result<()> {
    let mut tx = db.begin_write().map_err(db_err)?;
    tx.set_durability(Durability::Immediate);
    {
        let mut tables = Tables::open(&tx)?;
        apply_jobs(&mut tables, batch)?;
        tables.write_back()?;
    }
    tx.commit().map_err(db_err)
}

/// Runs every job of the batch against the open tables, in queue order.
fn apply_jobs(tables: &mut Tables<'_>, batch: &mut [Job]) -> Result<()> {
    for job in batch.iter_mut() {
        match job {
            Job::Append {
                message, result, ..
            } => {
                *result = Some(tables.append(message)?);
            }
            Job::AppendMany {
                messages, result, ..
            } => {
                let mut appended = Vec::with_capacity(messages.len());
                for message in messages.iter() {
                    appended.push(tables.append(message)?);
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
                *result = Some(tables.mark_read(*user, *conversation, *seq)?);
            }
        }
    }
    Ok(())
}

/// The tables open in one write transaction, with the heads and read positions this batch
/// changed but has not written yet. Methods return `Err` for a failure that aborts the
/// transaction and `Ok(Err)` for a failure of this job alone.
struct Tables<'t> {
    messages: Table<'t, &'static [u8], &'static [u8]>,
    heads: Table<'t, &'static [u8], u64>,
    idempotency: Table<'t, &'static [u8], u64>,
    read_positions: Table<'t, &'static [u8], u64>,
    direct: Table<'t, &'static [u8], ()>,
    /// Heads as of the last job of this batch, for conversations it appended to.
    pending_heads: BTreeMap<ConvKey, u64>,
    /// Read positions as of the last job of this batch, for the ones it moved.
    pending_read_positions: BTreeMap<[u8; 25], u64>,
}

impl<'t> Tables<'t> {
    fn open(tx: &'t WriteTransaction) -> Result<Self> {
        Ok(Self {
            messages: tx.open_table(MESSAGES).map_err(db_err)?,
            heads: tx.open_table(HEADS).map_err(db_err)?,
            idempotency: tx.open_table(IDEMPOTENCY).map_err(db_err)?,
            read_positions: tx.open_table(READ_POSITIONS).map_err(db_err)?,
            direct: tx.open_table(DIRECT).map_err(db_err)?,
            pending_heads: BTreeMap::new(),
            pending_read_positions: BTreeMap::new(),
        })
    }

    /// Writes every head and read position the batch changed, once each, in key order.
    fn write_back(&mut self) -> Result<()> {
        for (conv, seq) in std::mem::take(&mut self.pending_heads) {
            self.heads.insert(conv.as_slice(), seq).map_err(db_err)?;
        }
        for (key, seq) in std::mem::take(&mut self.pending_read_positions) {
            self.read_positions
                .insert(key.as_slice(), seq)
                .map_err(db_err)?;
        }
        Ok(())
    }

    fn head(&self, conv: &ConvKey) -> Result<u64> {
        if let Some(seq) = self.pending_heads.get(conv) {
            return Ok(*seq);
        }
        Ok(self
            .heads
            .get(conv.as_slice())
            .map_err(db_err)?
            .map_or(0, |g| g.value()))
    }

    fn read_position(&self, key: &[u8; 25]) -> Result<u64> {
        if let Some(seq) = self.pending_read_positions.get(key) {
            return Ok(*seq);
        }
        Ok(self
            .read_positions
            .get(key.as_slice())
            .map_err(db_err)?
            .map_or(0, |g| g.value()))
    }

    fn append(&mut self, new: &NewMessage) -> Result<Result<Appended>> {
        if new.client_msg_id.is_empty() {
            return Ok(Err(Error::invalid("client_msg_id must not be empty")));
        }
        let conv = new.conversation.to_key();
        let idempotency = idempotency_key(&conv, &new.client_msg_id);
        let first = self
            .idempotency
            .get(idempotency.as_slice())
            .map_err(db_err)?;
        if let Some(seq) = first.map(|g| g.value()) {
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
        let record = message.encode_to_vec();
        let key = message_key(&conv, seq);
        self.messages
            .insert(key.as_slice(), record.as_slice())
            .map_err(db_err)?;
        self.pending_heads.insert(conv, seq);
        self.idempotency
            .insert(idempotency.as_slice(), seq)
            .map_err(db_err)?;
        // One's own message is read: every earlier seq is below `seq`, so this only moves up.
        self.pending_read_positions
            .insert(user_conv_key(new.sender, &conv), seq);
        if let (ConversationId::Direct { lo, hi }, 0) = (new.conversation, head) {
            for member in [lo, hi] {
                self.direct
                    .insert(user_conv_key(member, &conv).as_slice(), ())
                    .map_err(db_err)?;
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
        let Some(record) = self.messages.get(key.as_slice()).map_err(db_err)? else {
            return Ok(Err(Error::internal(format!(
                "message store: {conversation}: idempotency entry points to missing seq {seq}"
            ))));
        };
        Ok(decode_message(record.value()).map(|message| Appended {
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
        self.pending_read_positions.insert(key, target);
        Ok(Ok(target))
    }
}
