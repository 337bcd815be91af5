//! Checkpoints: a frozen [`Recent`] table is written into redb in ONE durable transaction,
//! then the log segments older than the one the writer was appending to at the freeze (they
//! hold nothing newer than the table) are deleted. Copy-on-write B-trees copy every page a
//! transaction touches, so one transaction every 100 ms over all busy conversations costs a
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
    background,
    layout::{DIRECT, HEADS, IDEMPOTENCY, MESSAGES, READ_POSITIONS, db_err},
    log,
    recent::Recent,
};
use crate::error::{Error, Result};

/// How long a failed checkpoint waits before it tries again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// A frozen table, the newest log segment that holds nothing newer than it, and the table
/// checkpointed before it, to be freed.
pub(super) struct Frozen {
    pub table: Arc<Recent>,
    pub through_generation: u64,
    /// The table checkpointed before, which readers no longer see: freed on the checkpoint
    /// thread once this one is committed and answered, so the writer never spends its time
    /// deallocating thousands of entries.
    pub retired: Option<Arc<Recent>>,
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
        raise_all(&mut tx.open_table(HEADS).map_err(db_err)?, &table.heads)?;
        raise_all(
            &mut tx.open_table(READ_POSITIONS).map_err(db_err)?,
            &table.read_positions,
        )?;
        let mut direct = tx.open_table(DIRECT).map_err(db_err)?;
        for key in &table.direct {
            direct.insert(key.as_slice(), ()).map_err(db_err)?;
        }
    }
    tx.commit().map_err(db_err)
}

/// Writes each entry, in key order, unless the table already holds a value at least as large
/// (heads and read positions only move up).
fn raise_all<const N: usize>(
    stored: &mut redb::Table<'_, &'static [u8], u64>,
    entries: &std::collections::HashMap<[u8; N], u64>,
) -> Result<()> {
    let mut entries: Vec<_> = entries.iter().collect();
    entries.sort_unstable();
    for (key, seq) in entries {
        let current = stored
            .get(key.as_slice())
            .map_err(db_err)?
            .map(|g| g.value());
        if current.is_none_or(|c| c < *seq) {
            stored.insert(key.as_slice(), *seq).map_err(db_err)?;
        }
    }
    Ok(())
}

/// Starts the checkpoint thread, at a lower CPU priority (`background`). It applies each
/// frozen table it receives, deletes the log segments before the one the writer was
/// appending to at the freeze, reports the generation back on `done`, and then frees the
/// table checkpointed before. A failed checkpoint is retried every second (the data stays
/// durable in the log meanwhile) until `closing` is set, after which one failure makes it
/// give up and leave the segments for the next open to replay.
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
            background::lower_this_thread();
            for Frozen {
                table,
                through_generation,
                retired,
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
                drop(retired);
            }
        })
        .map_err(|e| Error::unavailable(format!("message store: cannot start checkpoints: {e}")))
}
