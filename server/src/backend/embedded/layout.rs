//! The on-disk layout of the embedded store: table definitions, key encoding, record
//! decoding and the mapping of redb errors to [`Error`]. Every key is big-endian so that a
//! byte-ordered range scan is a scan in id and seq order.

use daehwa::v1::Message;
use prost::Message as _;
use redb::TableDefinition;

use crate::{
    error::Error,
    ids::{ConversationId, UserId},
};

/// `conv key (17) ++ seq (8)` -> the encoded wire `Message`.
pub(super) const MESSAGES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("messages");
/// `conv key (17)` -> the conversation's last seq.
pub(super) const HEADS: TableDefinition<&[u8], u64> = TableDefinition::new("heads");
/// `conv key (17) ++ client_msg_id bytes` -> the seq of the first message with that id.
pub(super) const IDEMPOTENCY: TableDefinition<&[u8], u64> = TableDefinition::new("idempotency");
/// `user (8) ++ conv key (17)` -> the user's read position.
pub(super) const READ_POSITIONS: TableDefinition<&[u8], u64> =
    TableDefinition::new("read_positions");
/// `user (8) ++ conv key (17)` -> (), for both members of every direct conversation with a
/// message.
pub(super) const DIRECT: TableDefinition<&[u8], ()> = TableDefinition::new("direct_index");

/// A conversation's key, as [`ConversationId::to_key`] makes it.
pub(super) type ConvKey = [u8; 17];

/// The key of message `seq` of a conversation.
pub(super) fn message_key(conv: &ConvKey, seq: u64) -> [u8; 25] {
    let mut key = [0u8; 25];
    key[..17].copy_from_slice(conv);
    key[17..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// The key of a `(conversation, client_msg_id)` pair.
pub(super) fn idempotency_key(conv: &ConvKey, client_msg_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(17 + client_msg_id.len());
    key.extend_from_slice(conv);
    key.extend_from_slice(client_msg_id.as_bytes());
    key
}

/// The key of a user's entry for one conversation (read positions, direct index).
pub(super) fn user_conv_key(user: UserId, conv: &ConvKey) -> [u8; 25] {
    let mut key = [0u8; 25];
    key[..8].copy_from_slice(&user.0.to_be_bytes());
    key[8..].copy_from_slice(conv);
    key
}

/// The conversation of a [`user_conv_key`].
pub(super) fn conversation_of_user_key(key: &[u8]) -> Result<ConversationId, Error> {
    key.get(8..)
        .and_then(ConversationId::from_key)
        .ok_or_else(|| Error::internal(format!("message store: bad direct index key {key:02x?}")))
}

/// A stored record back into a `Message`; a record that does not decode is corruption.
pub(super) fn decode_message(bytes: &[u8]) -> Result<Message, Error> {
    Message::decode(bytes)
        .map_err(|e| Error::internal(format!("message store: undecodable message record: {e}")))
}

/// A Unix time in milliseconds as a protobuf timestamp.
pub(super) fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        // rem_euclid(1000) is in 0..1000, so the product fits an i32.
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

/// A redb error as an [`Error`]: corruption is `Internal`, anything else (I/O, a closed or
/// already open file) means the storage is unavailable.
pub(super) fn db_err(e: impl Into<redb::Error>) -> Error {
    match e.into() {
        redb::Error::Corrupted(detail) => {
            Error::internal(format!("message store: corrupted database: {detail}"))
        }
        other => Error::unavailable(format!("message store: storage failure: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::GroupId;

    #[test]
    fn message_keys_sort_by_conversation_then_seq() {
        let a = ConversationId::Group(GroupId(1)).to_key();
        let b = ConversationId::Group(GroupId(2)).to_key();
        assert!(message_key(&a, 255) < message_key(&a, 256));
        assert!(message_key(&a, u64::MAX) < message_key(&b, 0));
    }

    #[test]
    fn user_keys_round_trip() {
        let conv = ConversationId::direct(UserId(3), UserId(9)).unwrap();
        let key = user_conv_key(UserId(3), &conv.to_key());
        assert_eq!(conversation_of_user_key(&key).unwrap(), conv);
        assert!(conversation_of_user_key(&key[..20]).is_err());
    }

    #[test]
    fn timestamps_split_milliseconds() {
        let t = timestamp(1_700_000_000_123);
        assert_eq!((t.seconds, t.nanos), (1_700_000_000, 123_000_000));
        let t = timestamp(-1);
        assert_eq!((t.seconds, t.nanos), (-1, 999_000_000));
    }
}
