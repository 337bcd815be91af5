//! Checkpoints: a frozen [`Recent`] table is written into redb in ONE durable transaction,
//! then the log segments that held it are deleted. Copy-on-write B-trees copy every page a
//! transaction touches, so one transaction a second over all busy conversations costs a
//! fraction of one per batch (BENCHMARKS.md has the measurements that led here).

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::Duration,
};

use redb::{Database, Durability, ReadableTable};

use super::{
    layout::{DIRECT, HEADS, IDEMPOTENCY, MESSAGES, READ_POSITIONS, db_err},
    log,
    recent::Recent,
};
use crate::error::{Error, Result};

/// How long a failed checkpoint waits before it tries again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// A frozen table and the newest log segment that holds any of it.
pub(super) struct Frozen {
    pub table: Arc<Recent>,
    pub through_generation: u64,
}

/// Writes `table` into redb in one durable transaction. Heads and read positions keep the
/// larger of the stored and the new value, so applying a table twice is harmless.
pub(super) fn apply(db: &Database, table: &Recent) -> Result<()> {
    let mut tx = db.begin_write().map_err(db_err)?;
    tx.set_durability(Durability::Immediate);
    {
        let mut messages = tx.open_table(MESSAGES).map_err(db_err)?;
        for (key, record) in &table.messages {
            messages.insert(key.as_slice(), &**record).map_err(db_err)?;
        }
        let mut idempotency = tx.open_table(IDEMPOTENCY).map_err(db_err)?;
        let mut keys: Vec<_> = table.idempotency.iter().collect();
        keys.sort_unstable();
        for (key, seq) in keys {
            idempotency.insert(key.as_slice(), *seq).map_err(db_err)?;
        }
        let mut heads = tx.open_table(HEADS).map_err(db_err)?;
        let mut entries: Vec<_> = table.heads.iter().collect();
        entries.sort_unstable();
        for (conv, seq) in entries {
            let stored = heads
                .get(conv.as_slice())
                .map_err(db_err)?
                .map(|g| g.value());
            if stored.is_none_or(|s| s < *seq) {
                heads.insert(conv.as_slice(), *seq).map_err(db_err)?;
            }
        }
        let mut reads = tx.open_table(READ_POSITIONS).map_err(db_err)?;
        let mut entries: Vec<_> = table.read_positions.iter().collect();
        entries.sort_unstable();
        for (key, seq) in entries {
            let stored = reads
                .get(key.as_slice())
                .map_err(db_err)?
                .map(|g| g.value());
            if stored.is_none_or(|s| s < *seq) {
                reads.insert(key.as_slice(), *seq).map_err(db_err)?;
            }
        }
        let mut direct = tx.open_table(DIRECT).map_err(db_err)?;
        for key in &table.direct {
            direct.insert(key.as_slice(), ()).map_err(db_err)?;
        }
    }
    tx.commit().map_err(db_err)
}

/// Starts the checkpoint thread. It applies each frozen table it receives, deletes the log
/// segments it came from, and reports the generation back on `done`; a failed checkpoint is
/// retried every second (the data stays durable in the log meanwhile) until `closing` is
/// set, after which one failure makes it give up and leave the segments for the next open
/// to replay.
pub(super) fn spawn(
    db: Arc<Database>,
    log_base: PathBuf,
    frozen: mpsc::Receiver<Frozen>,
    done: mpsc::SyncSender<u64>,
    closing: Arc<AtomicBool>,
) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("message-store-checkpoint".to_owned())
        .spawn(move || {
            for Frozen {
                table,
                through_generation,
            } in frozen.iter()
            {
                let mut attempts = 0u64;
                loop {
                    attempts += 1;
                    match apply(&db, &table) {
                        Ok(()) => break,
                        Err(e) => {
                            tracing::warn!(
                                error = %e, attempts,
                                "message store: checkpoint failed; the log still holds its data"
                            );
                            // Closing: the next open replays the log instead.
                            if closing.load(Ordering::SeqCst) {
                                return;
                            }
                            std::thread::sleep(RETRY_AFTER);
                        }
                    }
                }
                if let Err(e) = log::remove_through(&log_base, through_generation) {
                    tracing::warn!(error = %e, "message store: cannot delete checkpointed log segments");
                }
                // A writer that has stopped no longer waits for the answer.
                let _ = done.send(through_generation);
            }
        })
        .map_err(|e| Error::unavailable(format!("message store: cannot start checkpoints: {e}")))
}
