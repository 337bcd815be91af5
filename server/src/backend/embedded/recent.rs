//! The recent tier: what the store has acknowledged but not yet checkpointed into redb,
//! kept in memory (and made durable by the write-ahead log, see `log`).
//!
//! A [`Recent`] is used three ways: as the delta one batch of the writer produces, as the
//! active table every batch is merged into, and (frozen behind an `Arc`) as the table the
//! checkpoint thread applies to redb in one transaction. Merging is idempotent: heads and
//! read positions keep the maximum, everything else is keyed, so replaying a log segment
//! whose contents already reached redb changes nothing.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use super::layout::{ConvKey, message_key};

/// `user (8) ++ conv key (17)`, the key of read positions and the direct index.
pub(super) type UserConvKey = [u8; 25];
/// `conv key (17) ++ seq (8)`, the key of a message.
pub(super) type MessageKey = [u8; 25];

/// Acknowledged writes not yet in redb, keyed exactly as redb keys them.
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) struct Recent {
    /// Encoded `Message` records.
    pub messages: BTreeMap<MessageKey, Arc<[u8]>>,
    /// Each conversation's last seq.
    pub heads: HashMap<ConvKey, u64>,
    /// `conv ++ client_msg_id` -> the seq of the first message with that id.
    pub idempotency: HashMap<Vec<u8>, u64>,
    /// Read positions that moved.
    pub read_positions: HashMap<UserConvKey, u64>,
    /// Direct-index entries added.
    pub direct: BTreeSet<UserConvKey>,
}

impl Recent {
    /// How many entries the table holds, the measure the writer freezes and throttles by.
    pub fn len(&self) -> usize {
        self.messages.len()
            + self.heads.len()
            + self.idempotency.len()
            + self.read_positions.len()
            + self.direct.len()
    }

    /// An empty table whose hash maps have room for as many entries as `previous` held, so
    /// the active table does not rehash its way up to the same size again after each freeze.
    pub fn sized_like(previous: &Recent) -> Self {
        Self {
            heads: HashMap::with_capacity(previous.heads.len()),
            idempotency: HashMap::with_capacity(previous.idempotency.len()),
            read_positions: HashMap::with_capacity(previous.read_positions.len()),
            ..Self::default()
        }
    }

    /// Whether there is nothing to checkpoint.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds `other` to this table: heads and read positions keep the larger value.
    pub fn merge(&mut self, other: Recent) {
        self.messages.extend(other.messages);
        for (conv, seq) in other.heads {
            raise(self.heads.entry(conv).or_insert(0), seq);
        }
        self.idempotency.extend(other.idempotency);
        for (key, seq) in other.read_positions {
            raise(self.read_positions.entry(key).or_insert(0), seq);
        }
        self.direct.extend(other.direct);
    }

    /// Up to `limit` records of a conversation with seq in `first..=last`, in seq order
    /// (or in reverse order if `reverse`).
    pub fn messages_in(
        &self,
        conv: &ConvKey,
        first: u64,
        last: u64,
        limit: usize,
        reverse: bool,
    ) -> Vec<(u64, Arc<[u8]>)> {
        if first > last {
            return Vec::new();
        }
        let range = self
            .messages
            .range(message_key(conv, first)..=message_key(conv, last));
        let entry = |(key, record): (&MessageKey, &Arc<[u8]>)| (seq_of(key), record.clone());
        if reverse {
            range.rev().take(limit).map(entry).collect()
        } else {
            range.take(limit).map(entry).collect()
        }
    }

    /// The conversations of a user's direct-index entries.
    pub fn direct_of(&self, user: u64) -> impl Iterator<Item = &UserConvKey> {
        let mut from = [0u8; 25];
        from[..8].copy_from_slice(&user.to_be_bytes());
        let mut to = [0xffu8; 25];
        to[..8].copy_from_slice(&user.to_be_bytes());
        self.direct.range(from..=to)
    }
}

/// The seq of a [`MessageKey`].
pub(super) fn seq_of(key: &MessageKey) -> u64 {
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&key[17..]);
    u64::from_be_bytes(seq)
}

/// Sets `*slot` to `value` if that is larger.
fn raise(slot: &mut u64, value: u64) {
    *slot = (*slot).max(value);
}

/// What readers and the writer consult before redb: the table batches are merged into, and
/// the one being checkpointed (if any). Data moves active -> frozen -> redb, and frozen is
/// dropped only after redb has committed it, so a reader that takes this snapshot first and
/// opens its redb read transaction after it sees every acknowledged write in one of the
/// three.
#[derive(Debug, Default)]
pub(super) struct Tiers {
    /// Batches merged since the last freeze.
    pub active: Recent,
    /// The table the checkpoint thread is writing to redb.
    pub frozen: Option<Arc<Recent>>,
}

impl Tiers {
    /// The newest value of a max-merged entry (a head or a read position) in either table.
    pub fn newest<K: Eq + std::hash::Hash>(
        &self,
        pick: impl Fn(&Recent) -> &HashMap<K, u64>,
        key: &K,
    ) -> Option<u64> {
        let active = pick(&self.active).get(key).copied();
        let frozen = self
            .frozen
            .as_deref()
            .and_then(|f| pick(f).get(key).copied());
        active.max(frozen)
    }

    /// A message record in either table.
    pub fn message(&self, key: &MessageKey) -> Option<Arc<[u8]>> {
        self.active
            .messages
            .get(key)
            .or_else(|| self.frozen.as_deref().and_then(|f| f.messages.get(key)))
            .cloned()
    }

    /// The seq an idempotency key maps to in either table.
    pub fn idempotent_seq(&self, key: &[u8]) -> Option<u64> {
        self.active
            .idempotency
            .get(key)
            .or_else(|| self.frozen.as_deref().and_then(|f| f.idempotency.get(key)))
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{ConversationId, GroupId};

    fn conv(id: u64) -> ConvKey {
        ConversationId::Group(GroupId(id)).to_key()
    }

    #[test]
    fn merge_keeps_the_larger_head_and_read_position() {
        let mut a = Recent::default();
        a.heads.insert(conv(1), 5);
        a.read_positions.insert([1; 25], 4);
        let mut b = Recent::default();
        b.heads.insert(conv(1), 3);
        b.heads.insert(conv(2), 1);
        b.read_positions.insert([1; 25], 7);
        a.merge(b);
        assert_eq!(a.heads[&conv(1)], 5);
        assert_eq!(a.heads[&conv(2)], 1);
        assert_eq!(a.read_positions[&[1; 25]], 7);
    }

    #[test]
    fn messages_in_stays_inside_its_conversation_and_range() {
        let mut table = Recent::default();
        for c in 1..=3 {
            for seq in 1..=5 {
                let record: Arc<[u8]> = Arc::from(vec![c as u8, seq as u8]);
                table.messages.insert(message_key(&conv(c), seq), record);
            }
        }
        let seqs = |v: Vec<(u64, Arc<[u8]>)>| v.into_iter().map(|(s, _)| s).collect::<Vec<_>>();
        assert_eq!(
            seqs(table.messages_in(&conv(2), 2, 4, 10, false)),
            [2, 3, 4]
        );
        assert_eq!(seqs(table.messages_in(&conv(2), 1, 5, 2, true)), [5, 4]);
        assert!(table.messages_in(&conv(2), 4, 3, 10, false).is_empty());
        assert!(
            table
                .messages_in(&conv(2), 1, 5, 10, false)
                .iter()
                .all(|(_, r)| r[0] == 2)
        );
    }
}
