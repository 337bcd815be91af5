//! The message log: per-conversation, append-only, ordered by a gapless `seq`.
//!
//! The contract every implementation keeps (checked by the `conformance` test suite):
//! - `append` is durable when it returns: a crash right after loses nothing it returned.
//! - `seq` is 1, 2, 3, ... per conversation in commit order, with no gap and no repeat, under
//!   any number of concurrent appenders.
//! - `(conversation, client_msg_id)` is unique: appending it again returns the first message
//!   unchanged (`duplicate = true`), whatever the new content.
//! - The sender's read position moves to the new seq in the same commit (one's own message is
//!   read), so `unread = last_seq - read_seq` counts only others' messages.
//! - Direct conversations are indexed per member for [`MessageStore::direct_conversations`].
//!
//! Records are the wire `Message` itself, encoded once at append and served as stored.

use async_trait::async_trait;
use daehwa::v1::{Content, Message};
use prometheus_client::metrics::histogram::Histogram;

use crate::{
    error::Result,
    ids::{ConversationId, DeviceId, UserId},
};

/// A message to append; the store assigns its `seq`.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub conversation: ConversationId,
    /// Snowflake id, assigned by the caller before the append.
    pub message_id: u64,
    pub sender: UserId,
    pub sender_device: DeviceId,
    pub client_msg_id: String,
    pub content: Content,
    /// Milliseconds since the Unix epoch.
    pub created_at_ms: i64,
}

/// The result of an append.
#[derive(Debug, Clone)]
pub struct Appended {
    pub message: Message,
    /// True when `client_msg_id` was already stored: `message` is the first one.
    pub duplicate: bool,
}

/// The head of one conversation and a user's place in it.
#[derive(Debug, Clone, PartialEq)]
pub struct ConversationState {
    pub conversation: ConversationId,
    /// 0 when the conversation has no messages.
    pub last_seq: u64,
    pub last_message: Option<Message>,
    /// The user's read position (0 = nothing read).
    pub read_seq: u64,
}

/// Where messages live. See the module doc for the contract.
#[async_trait]
pub trait MessageStore: Send + Sync + 'static {
    /// Appends durably and assigns the next seq; idempotent on `client_msg_id`.
    async fn append(&self, message: NewMessage) -> Result<Appended>;

    /// Appends `messages` in the given order (within a conversation their seqs follow it),
    /// each result as [`append`](Self::append) would give it. Lets a stream that sent
    /// several messages have them committed together (one durable commit where the store
    /// can) without reordering them. The default appends one at a time.
    async fn append_many(&self, messages: Vec<NewMessage>) -> Vec<Result<Appended>> {
        let mut results = Vec::with_capacity(messages.len());
        for message in messages {
            results.push(self.append(message).await);
        }
        results
    }

    /// Messages with `seq > after_seq`, ascending, at most `limit`.
    async fn read_after(
        &self,
        conversation: ConversationId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Message>>;

    /// The last `limit` messages with `seq < before_seq` (`before_seq == 0`: the newest),
    /// returned ascending.
    async fn read_before(
        &self,
        conversation: ConversationId,
        before_seq: u64,
        limit: usize,
    ) -> Result<Vec<Message>>;

    /// For each conversation (in the given order): last seq, last message and `user`'s read
    /// position.
    async fn conversation_states(
        &self,
        user: UserId,
        conversations: &[ConversationId],
    ) -> Result<Vec<ConversationState>>;

    /// Moves `user`'s read position in `conversation` to `max(current, seq)`, with `seq`
    /// capped at the conversation's last seq; returns the resulting position.
    async fn mark_read(&self, user: UserId, conversation: ConversationId, seq: u64) -> Result<u64>;

    /// The direct conversations `user` has messages in (sent or received).
    async fn direct_conversations(&self, user: UserId) -> Result<Vec<ConversationId>>;

    /// Flushes and closes; called once at shutdown. Appends after this fail `UNAVAILABLE`.
    async fn close(&self) -> Result<()>;

    /// Gives the store a histogram for the seconds its own durable writes take, so that a
    /// slow or stalling disk shows in the server's metrics (`store_log_sync_seconds`): the
    /// embedded store observes each write-ahead-log append with its `fdatasync`. Stores
    /// whose commits happen in another process (TiKV, PostgreSQL) ignore it.
    fn observe_durable_writes(&self, _histogram: Histogram) {}
}

/// The behaviour every [`MessageStore`] must show; run by each implementation's tests.
#[cfg(test)]
pub mod conformance;
