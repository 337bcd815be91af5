//! [`PostgresMessageStore`]: the [`MessageStore`] on PostgreSQL, for a cluster whose chat
//! servers append to the same conversations. It owns four tables (`messages_0001.sql`), the
//! embedded store's layout in SQL, with `conv` = [`ConversationId::to_key`]:
//!
//! | table | key | value |
//! |---|---|---|
//! | `messages` | `(conv, seq)`, unique `(conv, client_msg_id)` | the prost-encoded wire `Message` |
//! | `conversation_heads` | `conv` | last seq (absent: 0) |
//! | `read_positions` | `(user_id, conv)` | the user's read seq (absent: 0) |
//! | `direct_conversations` | `(user_id, conv)` | -, for both members of a direct conversation |
//!
//! # Gapless seq across servers
//! An append is one transaction: `INSERT INTO conversation_heads … ON CONFLICT DO UPDATE SET
//! last_seq = last_seq + 1 RETURNING last_seq` takes the next seq *and* the head row's lock,
//! which every other appender of that conversation, on any server, then waits for until this
//! transaction ends. So seqs are handed out in commit order, one at a time; a transaction that
//! rolls back (a duplicate, an error, a lost connection) gives its increment back with it, so
//! there is never a gap, and appends to different conversations never wait for each other.
//!
//! # Idempotency
//! The message row is inserted with `ON CONFLICT (conv, client_msg_id) DO NOTHING` while the
//! head lock is held, so the first append of an id has committed (or rolled back) before a
//! second one looks: when nothing is inserted, the append rolls back (returning its seq) and
//! answers the stored message with `duplicate = true`, however many appends of one id race.
//! The sender's read position and, for the first message of a direct conversation, both
//! members' index rows are written by the same statement, so they commit with the message.
//! A connection lost during `COMMIT` leaves the outcome unknown to the caller, who gets
//! `Unavailable`; the client's retry with the same `client_msg_id` then stores the message
//! once or answers the one that was stored.
//!
//! # Durability
//! Sessions run with `synchronous_commit = on` (PostgreSQL's default, set explicitly at
//! connect): `append` returns only after its commit is flushed to the WAL, so an acknowledged
//! message survives a crash of PostgreSQL or of its machine.
//!
//! # Reads
//! Every read is one statement (one snapshot). `read_after`, the sync batch, is a single range
//! scan of the primary key with `LIMIT`; `conversation_states` reads all heads, last messages
//! and read positions in one query over the list it is given.

use async_trait::async_trait;
use daehwa::v1::Message;
use prost::Message as _;
use sqlx::PgPool;

use super::{Component, PostgresOptions, connect, sql_id};
use crate::{
    backend::message_store::{Appended, ConversationState, MessageStore, NewMessage},
    error::{Error, Result},
    ids::{ConversationId, UserId},
};

/// The PostgreSQL-backed [`MessageStore`]. Cheap to clone (a pool handle); any number of
/// instances, in any number of processes, may share one database.
#[derive(Debug, Clone)]
pub struct PostgresMessageStore {
    /// The connections; `pub(super)` so the backend's tests can inspect sessions.
    pub(super) pool: PgPool,
}

impl PostgresMessageStore {
    /// Connects to `url` with default pool settings and brings the store's schema up to date;
    /// `Unavailable` when PostgreSQL cannot be reached.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, &PostgresOptions::default()).await
    }

    /// [`PostgresMessageStore::connect`] with explicit pool settings.
    pub async fn connect_with(url: &str, options: &PostgresOptions) -> Result<Self> {
        let pool = connect(url, Component::Messages, options).await?;
        Ok(Self { pool })
    }

    /// The first message stored under `client_msg_id` in `conv`, as a duplicate.
    async fn stored_duplicate(&self, new: &NewMessage, conv: &[u8]) -> Result<Appended> {
        let row: Option<(Vec<u8>,)> =
            sqlx::query_as("SELECT record FROM messages WHERE conv = $1 AND client_msg_id = $2")
                .bind(conv)
                .bind(&new.client_msg_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(db_err)?;
        let (record,) = row.ok_or_else(|| {
            Error::internal(format!(
                "message store: {}: client_msg_id {:?} conflicted but is not stored",
                new.conversation, new.client_msg_id
            ))
        })?;
        Ok(Appended {
            message: decode(&record)?,
            duplicate: true,
        })
    }
}

/// Maps an unexpected sqlx error of the store (see the parent module's doc).
fn db_err(e: sqlx::Error) -> Error {
    super::db_err(Component::Messages, e)
}

/// A seq or limit as a BIGINT parameter, saturating (no row has a seq above `i64::MAX`).
fn param(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

/// A stored seq; a negative one is damage.
fn stored_seq(seq: i64) -> Result<u64> {
    u64::try_from(seq).map_err(|_| Error::internal(format!("message store: negative seq {seq}")))
}

/// A stored record back into a `Message`; a record that does not decode is corruption.
fn decode(record: &[u8]) -> Result<Message> {
    Message::decode(record)
        .map_err(|e| Error::internal(format!("message store: undecodable message record: {e}")))
}

/// Decodes a page of records.
fn decode_all(rows: Vec<(Vec<u8>,)>) -> Result<Vec<Message>> {
    rows.iter().map(|(record,)| decode(record)).collect()
}

/// A Unix time in milliseconds as a protobuf timestamp.
fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        // rem_euclid(1000) is in 0..1000, so the product fits an i32.
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

#[async_trait]
impl MessageStore for PostgresMessageStore {
    async fn append(&self, new: NewMessage) -> Result<Appended> {
        if new.client_msg_id.is_empty() {
            return Err(Error::invalid("client_msg_id must not be empty"));
        }
        let conv = new.conversation.to_key();
        let members: Vec<i64> = match new.conversation {
            ConversationId::Direct { lo, hi } => vec![sql_id(lo.0), sql_id(hi.0)],
            ConversationId::Group(_) => Vec::new(),
        };
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        // The next seq, and the head's row lock until this transaction ends.
        let (seq,): (i64,) = sqlx::query_as(
            "INSERT INTO conversation_heads AS h (conv, last_seq) VALUES ($1, 1) \
             ON CONFLICT (conv) DO UPDATE SET last_seq = h.last_seq + 1 RETURNING last_seq",
        )
        .bind(conv.as_slice())
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err)?;
        let message = Message {
            message_id: new.message_id,
            conversation_id: new.conversation.to_string(),
            seq: stored_seq(seq)?,
            sender_id: new.sender.0,
            sender_device_id: new.sender_device.0,
            client_msg_id: new.client_msg_id.clone(),
            content: Some(new.content.clone()),
            created_at: Some(timestamp(new.created_at_ms)),
        };
        // The message, the sender's read position (one's own message is read; every earlier
        // seq is lower, so GREATEST only guards against a concurrent mark_read) and, with the
        // first message of a direct conversation, both members' index rows.
        let inserted: Option<(i64,)> = sqlx::query_as(
            "WITH m AS ( \
                 INSERT INTO messages (conv, seq, client_msg_id, record) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (conv, client_msg_id) DO NOTHING RETURNING seq), \
             r AS ( \
                 INSERT INTO read_positions AS p (user_id, conv, read_seq) \
                 SELECT $5, $1, m.seq FROM m \
                 ON CONFLICT (user_id, conv) \
                 DO UPDATE SET read_seq = GREATEST(p.read_seq, EXCLUDED.read_seq)), \
             d AS ( \
                 INSERT INTO direct_conversations (user_id, conv) \
                 SELECT u, $1 FROM m, unnest($6::BIGINT[]) AS u WHERE m.seq = 1 \
                 ON CONFLICT DO NOTHING) \
             SELECT seq FROM m",
        )
        .bind(conv.as_slice())
        .bind(seq)
        .bind(&new.client_msg_id)
        .bind(message.encode_to_vec())
        .bind(sql_id(new.sender.0))
        .bind(members)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?;
        if inserted.is_none() {
            // A duplicate: give the seq back, then answer the first message.
            tx.rollback().await.map_err(db_err)?;
            return self.stored_duplicate(&new, &conv).await;
        }
        tx.commit().await.map_err(db_err)?;
        Ok(Appended {
            message,
            duplicate: false,
        })
    }

    async fn read_after(
        &self,
        conversation: ConversationId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Message>> {
        let Ok(after) = i64::try_from(after_seq) else {
            return Ok(Vec::new());
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        let rows: Vec<(Vec<u8>,)> = sqlx::query_as(
            "SELECT record FROM messages WHERE conv = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(conversation.to_key().as_slice())
        .bind(after)
        .bind(param(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        decode_all(rows)
    }

    async fn read_before(
        &self,
        conversation: ConversationId,
        before_seq: u64,
        limit: usize,
    ) -> Result<Vec<Message>> {
        let last = match before_seq {
            0 => i64::MAX,
            n => param(n - 1),
        };
        if last == 0 || limit == 0 {
            return Ok(Vec::new());
        }
        let rows: Vec<(Vec<u8>,)> = sqlx::query_as(
            "SELECT record FROM messages WHERE conv = $1 AND seq <= $2 \
             ORDER BY seq DESC LIMIT $3",
        )
        .bind(conversation.to_key().as_slice())
        .bind(last)
        .bind(param(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        let mut messages = decode_all(rows)?;
        messages.reverse();
        Ok(messages)
    }

    async fn conversation_states(
        &self,
        user: UserId,
        conversations: &[ConversationId],
    ) -> Result<Vec<ConversationState>> {
        if conversations.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<Vec<u8>> = conversations.iter().map(|c| c.to_key().to_vec()).collect();
        let rows: Vec<(Option<i64>, Option<Vec<u8>>, Option<i64>)> = sqlx::query_as(
            "SELECT h.last_seq, m.record, r.read_seq \
             FROM unnest($1::BYTEA[]) WITH ORDINALITY AS c (conv, n) \
             LEFT JOIN conversation_heads h ON h.conv = c.conv \
             LEFT JOIN messages m ON m.conv = c.conv AND m.seq = h.last_seq \
             LEFT JOIN read_positions r ON r.user_id = $2 AND r.conv = c.conv \
             ORDER BY c.n",
        )
        .bind(keys)
        .bind(sql_id(user.0))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        if rows.len() != conversations.len() {
            return Err(Error::internal(format!(
                "message store: {} states for {} conversations",
                rows.len(),
                conversations.len()
            )));
        }
        conversations
            .iter()
            .zip(rows)
            .map(|(&conversation, (last_seq, record, read_seq))| {
                let last_seq = stored_seq(last_seq.unwrap_or(0))?;
                let last_message = match (last_seq, record) {
                    (0, _) => None,
                    (_, Some(record)) => Some(decode(&record)?),
                    (_, None) => {
                        return Err(Error::internal(format!(
                            "message store: {conversation}: head {last_seq} is missing"
                        )));
                    }
                };
                Ok(ConversationState {
                    conversation,
                    last_seq,
                    last_message,
                    read_seq: stored_seq(read_seq.unwrap_or(0))?,
                })
            })
            .collect()
    }

    async fn mark_read(&self, user: UserId, conversation: ConversationId, seq: u64) -> Result<u64> {
        // Capped at the head; never lowered; no row written for a position of 0.
        let (position,): (i64,) = sqlx::query_as(
            "WITH t AS ( \
                 SELECT LEAST($3, COALESCE( \
                     (SELECT last_seq FROM conversation_heads WHERE conv = $2), 0)) AS seq), \
             up AS ( \
                 INSERT INTO read_positions AS p (user_id, conv, read_seq) \
                 SELECT $1, $2, t.seq FROM t WHERE t.seq > 0 \
                 ON CONFLICT (user_id, conv) \
                 DO UPDATE SET read_seq = GREATEST(p.read_seq, EXCLUDED.read_seq) \
                 RETURNING read_seq) \
             SELECT COALESCE((SELECT read_seq FROM up), \
                 (SELECT read_seq FROM read_positions WHERE user_id = $1 AND conv = $2), 0)",
        )
        .bind(sql_id(user.0))
        .bind(conversation.to_key().as_slice())
        .bind(param(seq))
        .fetch_one(&self.pool)
        .await
        .map_err(db_err)?;
        stored_seq(position)
    }

    async fn direct_conversations(&self, user: UserId) -> Result<Vec<ConversationId>> {
        let rows: Vec<(Vec<u8>,)> = sqlx::query_as(
            "SELECT conv FROM direct_conversations WHERE user_id = $1 ORDER BY conv",
        )
        .bind(sql_id(user.0))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.into_iter()
            .map(|(key,)| {
                ConversationId::from_key(&key).ok_or_else(|| {
                    Error::internal(format!("message store: bad conversation key {key:02x?}"))
                })
            })
            .collect()
    }

    async fn close(&self) -> Result<()> {
        self.pool.close().await;
        Ok(())
    }
}
