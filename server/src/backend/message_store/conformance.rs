//! The [`MessageStore`] contract as executable checks. Each implementation's tests call
//! [`run_all`] on a fresh store, or the individual checks on fresh stores. Every check uses its
//! own users and conversations, so they may share one store; [`closed_store_refuses_appends`]
//! closes it and must run last.

use std::{
    collections::BTreeSet,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use daehwa::v1::{Content, Message, content::Kind};

use super::{MessageStore, NewMessage};
use crate::{
    error::Error,
    ids::{ConversationId, DeviceId, GroupId, UserId},
};

/// Runs every check on one store, closing it at the end.
pub async fn run_all(store: Arc<dyn MessageStore>) {
    gapless_seq_under_concurrency(store.clone()).await;
    stored_message_matches_the_append(store.clone()).await;
    idempotent_client_msg_id(store.clone()).await;
    append_many_keeps_order_and_idempotency(store.clone()).await;
    concurrent_duplicates_store_one_message(store.clone()).await;
    read_after_pages_forward(store.clone()).await;
    read_before_pages_backward(store.clone()).await;
    conversation_states_report_heads(store.clone()).await;
    mark_read_is_monotonic_and_capped(store.clone()).await;
    sender_read_position_follows_append(store.clone()).await;
    direct_conversations_index_both_members(store.clone()).await;
    closed_store_refuses_appends(store).await;
}

static NEXT_MESSAGE_ID: AtomicU64 = AtomicU64::new(1_000_000);

/// A text message from `sender` with a fresh message id.
pub fn new_message(
    conv: ConversationId,
    sender: u64,
    client_msg_id: &str,
    text: &str,
) -> NewMessage {
    NewMessage {
        conversation: conv,
        message_id: NEXT_MESSAGE_ID.fetch_add(1, Ordering::Relaxed),
        sender: UserId(sender),
        sender_device: DeviceId(sender * 10 + 1),
        client_msg_id: client_msg_id.to_owned(),
        content: text_content(text),
        created_at_ms: 1_700_000_000_123,
    }
}

fn text_content(text: &str) -> Content {
    Content {
        kind: Some(Kind::Text(text.to_owned())),
    }
}

fn group(id: u64) -> ConversationId {
    ConversationId::Group(GroupId(id))
}

fn dm(a: u64, b: u64) -> ConversationId {
    ConversationId::direct(UserId(a), UserId(b)).expect("two different users")
}

/// Appends `n` messages from `sender`, returning them as stored.
async fn fill(store: &dyn MessageStore, conv: ConversationId, sender: u64, n: u64) -> Vec<Message> {
    let mut stored = Vec::new();
    for i in 1..=n {
        let m = new_message(conv, sender, &format!("fill-{i}"), &format!("message {i}"));
        stored.push(store.append(m).await.expect("append").message);
    }
    stored
}

fn seqs(messages: &[Message]) -> Vec<u64> {
    messages.iter().map(|m| m.seq).collect()
}

async fn state(store: &dyn MessageStore, user: u64, conv: ConversationId) -> (u64, u64) {
    let states = store
        .conversation_states(UserId(user), &[conv])
        .await
        .expect("states");
    assert_eq!(states.len(), 1);
    (states[0].last_seq, states[0].read_seq)
}

/// A batch keeps its order (seqs follow it per conversation, interleaved with another
/// conversation), a repeated client_msg_id inside the batch or from before is a duplicate,
/// and concurrent batches stay gapless.
pub async fn append_many_keeps_order_and_idempotency(store: Arc<dyn MessageStore>) {
    let (a, b) = (group(1_501), group(1_502));
    let first = store
        .append(new_message(a, 150, "before", "before"))
        .await
        .expect("append");
    let batch = vec![
        new_message(a, 150, "m1", "one"),
        new_message(b, 150, "n1", "uno"),
        new_message(a, 150, "m2", "two"),
        new_message(a, 150, "m1", "one again"),
        new_message(a, 150, "before", "before again"),
        new_message(b, 150, "n2", "dos"),
    ];
    let results: Vec<_> = store
        .append_many(batch)
        .await
        .into_iter()
        .map(|r| r.expect("append_many"))
        .collect();
    let seen: Vec<(u64, bool)> = results
        .iter()
        .map(|r| (r.message.seq, r.duplicate))
        .collect();
    assert_eq!(
        seen,
        vec![
            (2, false),
            (1, false),
            (3, false),
            (2, true),
            (first.message.seq, true),
            (2, false)
        ]
    );
    assert_eq!(
        seqs(&store.read_after(a, 0, 10).await.unwrap()),
        vec![1, 2, 3]
    );
    assert_eq!(seqs(&store.read_after(b, 0, 10).await.unwrap()), vec![1, 2]);
    let texts: Vec<String> = store
        .read_after(a, 0, 10)
        .await
        .unwrap()
        .iter()
        .map(|m| match m.content.as_ref().and_then(|c| c.kind.as_ref()) {
            Some(Kind::Text(t)) => t.clone(),
            _ => String::new(),
        })
        .collect();
    assert_eq!(texts, vec!["before", "one", "two"]);
    assert!(store.append_many(Vec::new()).await.is_empty());

    // Four concurrent batches of 25 into one conversation: seqs 1..=100, each batch in order.
    let c = group(1_503);
    let tasks: Vec<_> = (0..4u64)
        .map(|task| {
            let store = store.clone();
            tokio::spawn(async move {
                let batch = (0..25)
                    .map(|i| new_message(c, 160 + task, &format!("b{task}-{i}"), "x"))
                    .collect();
                store
                    .append_many(batch)
                    .await
                    .into_iter()
                    .map(|r| r.expect("append_many").message.seq)
                    .collect::<Vec<u64>>()
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        let seqs = task.await.expect("task");
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "batch reordered: {seqs:?}"
        );
        all.extend(seqs);
    }
    all.sort_unstable();
    assert_eq!(all, (1..=100).collect::<Vec<u64>>());
}

/// 8 tasks x 50 appends to one conversation get exactly the seqs 1..=400, and the log holds
/// them in seq order.
pub async fn gapless_seq_under_concurrency(store: Arc<dyn MessageStore>) {
    let conv = group(1_001);
    let tasks: Vec<_> = (0..8u64)
        .map(|task| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut seqs = Vec::new();
                for i in 0..50 {
                    let m = new_message(conv, 100 + task, &format!("t{task}-{i}"), "hi");
                    let appended = store.append(m).await.expect("append");
                    assert!(!appended.duplicate);
                    seqs.push(appended.message.seq);
                }
                seqs
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        let seqs = task.await.expect("task");
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "one task's seqs must increase"
        );
        all.extend(seqs);
    }
    all.sort_unstable();
    assert_eq!(all, (1..=400).collect::<Vec<_>>());
    let log = store.read_after(conv, 0, 1_000).await.expect("read");
    assert_eq!(seqs(&log), (1..=400).collect::<Vec<_>>());
    assert_eq!(state(&*store, 100, conv).await.0, 400);
}

/// The returned and the stored message carry every field of the append.
pub async fn stored_message_matches_the_append(store: Arc<dyn MessageStore>) {
    let conv = dm(2_001, 2_002);
    let new = new_message(conv, 2_002, "fields", "hello");
    let appended = store.append(new.clone()).await.expect("append");
    assert!(!appended.duplicate);
    let m = &appended.message;
    assert_eq!(m.message_id, new.message_id);
    assert_eq!(m.conversation_id, "dm:2001:2002");
    assert_eq!(m.seq, 1);
    assert_eq!(
        (m.sender_id, m.sender_device_id),
        (2_002, new.sender_device.0)
    );
    assert_eq!(m.client_msg_id, "fields");
    assert_eq!(m.content, Some(text_content("hello")));
    let created = m.created_at.expect("created_at");
    assert_eq!(
        (created.seconds, created.nanos),
        (1_700_000_000, 123_000_000)
    );
    let stored = store.read_after(conv, 0, 10).await.expect("read");
    assert_eq!(stored, vec![appended.message]);
}

/// A repeated client_msg_id returns the first message unchanged, whatever the new content;
/// the id is scoped to its conversation.
pub async fn idempotent_client_msg_id(store: Arc<dyn MessageStore>) {
    let conv = group(3_001);
    let first = store
        .append(new_message(conv, 3_100, "same", "first"))
        .await
        .expect("append");
    assert!(!first.duplicate);
    let again = store
        .append(new_message(conv, 3_100, "same", "first"))
        .await
        .expect("retry");
    assert!(again.duplicate);
    assert_eq!(again.message, first.message);
    let changed = store
        .append(new_message(conv, 3_101, "same", "other"))
        .await
        .expect("retry");
    assert!(changed.duplicate);
    assert_eq!(changed.message, first.message);
    let next = store
        .append(new_message(conv, 3_100, "next", "second"))
        .await
        .expect("append");
    assert!(!next.duplicate);
    assert_eq!(next.message.seq, 2);
    let elsewhere = group(3_002);
    let other = store
        .append(new_message(elsewhere, 3_100, "same", "x"))
        .await
        .expect("append");
    assert!(!other.duplicate, "client_msg_id is per conversation");
    assert_eq!(other.message.seq, 1);
    assert_eq!(
        seqs(&store.read_after(conv, 0, 10).await.expect("read")),
        vec![1, 2]
    );
}

/// Many concurrent appends of one client_msg_id store one message and all return it.
pub async fn concurrent_duplicates_store_one_message(store: Arc<dyn MessageStore>) {
    let conv = group(4_001);
    fill(&*store, conv, 4_100, 3).await;
    let tasks: Vec<_> = (0..16u64)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let m = new_message(conv, 4_100 + i, "racer", &format!("copy {i}"));
                store.append(m).await.expect("append")
            })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.expect("task"));
    }
    assert_eq!(results.iter().filter(|a| !a.duplicate).count(), 1);
    let first = &results
        .iter()
        .find(|a| !a.duplicate)
        .expect("one original")
        .message;
    assert_eq!(first.seq, 4);
    assert!(results.iter().all(|a| &a.message == first));
    assert_eq!(state(&*store, 4_100, conv).await.0, 4);
    assert_eq!(store.read_after(conv, 0, 100).await.expect("read").len(), 4);
}

/// `read_after` pages forward, ascending, within `limit`, never into another conversation.
pub async fn read_after_pages_forward(store: Arc<dyn MessageStore>) {
    let (conv, before, after) = (group(5_002), group(5_001), group(5_003));
    fill(&*store, before, 5_100, 3).await;
    fill(&*store, after, 5_100, 3).await;
    let stored = fill(&*store, conv, 5_100, 25).await;
    let page = |after_seq, limit| {
        let store = store.clone();
        async move {
            store
                .read_after(conv, after_seq, limit)
                .await
                .expect("read")
        }
    };
    assert_eq!(page(0, 10).await, stored[..10].to_vec());
    assert_eq!(seqs(&page(10, 10).await), (11..=20).collect::<Vec<_>>());
    assert_eq!(seqs(&page(20, 10).await), (21..=25).collect::<Vec<_>>());
    assert!(page(25, 10).await.is_empty());
    assert!(page(u64::MAX, 10).await.is_empty());
    assert!(page(0, 0).await.is_empty());
    assert_eq!(page(0, usize::MAX).await, stored);
    assert!(
        store
            .read_after(group(5_004), 0, 10)
            .await
            .expect("read")
            .is_empty()
    );
}

/// `read_before` returns the last `limit` messages below the cursor, ascending.
pub async fn read_before_pages_backward(store: Arc<dyn MessageStore>) {
    let (conv, before, after) = (group(6_002), group(6_001), group(6_003));
    fill(&*store, before, 6_100, 3).await;
    fill(&*store, after, 6_100, 3).await;
    let stored = fill(&*store, conv, 6_100, 25).await;
    let page = |before_seq, limit| {
        let store = store.clone();
        async move {
            store
                .read_before(conv, before_seq, limit)
                .await
                .expect("read")
        }
    };
    assert_eq!(page(0, 10).await, stored[15..].to_vec());
    assert_eq!(seqs(&page(16, 10).await), (6..=15).collect::<Vec<_>>());
    assert_eq!(seqs(&page(6, 10).await), (1..=5).collect::<Vec<_>>());
    assert!(page(1, 10).await.is_empty());
    assert_eq!(seqs(&page(100, 5).await), (21..=25).collect::<Vec<_>>());
    assert_eq!(seqs(&page(u64::MAX, 2).await), vec![24, 25]);
    assert!(page(0, 0).await.is_empty());
    assert_eq!(page(0, usize::MAX).await, stored);
    assert!(
        store
            .read_before(group(6_004), 0, 10)
            .await
            .expect("read")
            .is_empty()
    );
}

/// States come back in the order asked, with head, last message and the user's position.
pub async fn conversation_states_report_heads(store: Arc<dyn MessageStore>) {
    let (busy, empty, direct) = (group(7_001), group(7_002), dm(7_100, 7_101));
    let last = fill(&*store, busy, 7_100, 3).await.pop();
    let dm_last = fill(&*store, direct, 7_101, 2).await.pop();
    let asked = [empty, busy, direct];
    let states = store
        .conversation_states(UserId(7_100), &asked)
        .await
        .expect("states");
    let got: Vec<_> = states
        .iter()
        .map(|s| (s.conversation, s.last_seq, s.read_seq))
        .collect();
    assert_eq!(got, vec![(empty, 0, 0), (busy, 3, 3), (direct, 2, 0)]);
    assert_eq!(states[0].last_message, None);
    assert_eq!(states[1].last_message, last);
    assert_eq!(states[2].last_message, dm_last);
    let none = store
        .conversation_states(UserId(7_100), &[])
        .await
        .expect("states");
    assert!(none.is_empty());
}

/// `mark_read` never moves backwards and never passes the conversation's last seq.
pub async fn mark_read_is_monotonic_and_capped(store: Arc<dyn MessageStore>) {
    let (conv, reader) = (group(8_001), UserId(8_200));
    fill(&*store, conv, 8_100, 5).await;
    assert_eq!(store.mark_read(reader, conv, 3).await.expect("mark"), 3);
    assert_eq!(store.mark_read(reader, conv, 2).await.expect("mark"), 3);
    assert_eq!(state(&*store, reader.0, conv).await, (5, 3));
    assert_eq!(store.mark_read(reader, conv, 100).await.expect("mark"), 5);
    assert_eq!(state(&*store, reader.0, conv).await, (5, 5));
    store
        .append(new_message(conv, 8_100, "sixth", "more"))
        .await
        .expect("append");
    assert_eq!(state(&*store, reader.0, conv).await, (6, 5));
    assert_eq!(store.mark_read(reader, conv, 0).await.expect("mark"), 5);
    assert_eq!(
        store
            .mark_read(reader, group(8_002), 7)
            .await
            .expect("mark"),
        0
    );
    assert_eq!(state(&*store, reader.0, group(8_002)).await, (0, 0));
}

/// Appending moves the sender's read position to the new seq, and only the sender's.
pub async fn sender_read_position_follows_append(store: Arc<dyn MessageStore>) {
    let (a, b) = (9_001, 9_002);
    let conv = dm(a, b);
    fill(&*store, conv, a, 1).await;
    assert_eq!(state(&*store, a, conv).await, (1, 1));
    assert_eq!(state(&*store, b, conv).await, (1, 0));
    store
        .append(new_message(conv, b, "b-1", "reply"))
        .await
        .expect("append");
    assert_eq!(state(&*store, a, conv).await, (2, 1));
    assert_eq!(state(&*store, b, conv).await, (2, 2));
    store
        .append(new_message(conv, a, "a-2", "again"))
        .await
        .expect("append");
    assert_eq!(state(&*store, a, conv).await, (3, 3));
    let dup = store
        .append(new_message(conv, b, "a-2", "again"))
        .await
        .expect("append");
    assert!(dup.duplicate);
    assert_eq!(
        state(&*store, b, conv).await,
        (3, 2),
        "a duplicate moves nothing"
    );
}

/// Both members of a direct conversation find it, whoever sent; groups are not listed.
pub async fn direct_conversations_index_both_members(store: Arc<dyn MessageStore>) {
    let (a, b, c, d) = (10_001, 10_002, 10_003, 10_004);
    fill(&*store, dm(a, b), a, 2).await;
    fill(&*store, dm(a, c), c, 1).await;
    fill(&*store, group(10_001), a, 1).await;
    store.mark_read(UserId(d), dm(a, d), 5).await.expect("mark");
    let list = |user: u64| {
        let store = store.clone();
        async move {
            let list = store
                .direct_conversations(UserId(user))
                .await
                .expect("list");
            let set: BTreeSet<_> = list.iter().copied().collect();
            assert_eq!(set.len(), list.len(), "no conversation twice");
            set
        }
    };
    assert_eq!(list(a).await, BTreeSet::from([dm(a, b), dm(a, c)]));
    assert_eq!(list(b).await, BTreeSet::from([dm(a, b)]));
    assert_eq!(list(c).await, BTreeSet::from([dm(a, c)]));
    assert!(list(d).await.is_empty(), "no messages, no listing");
}

/// After `close`, appends fail `Unavailable`. Closes the store.
pub async fn closed_store_refuses_appends(store: Arc<dyn MessageStore>) {
    let conv = group(11_001);
    fill(&*store, conv, 11_100, 1).await;
    store.close().await.expect("close");
    let refused = store
        .append(new_message(conv, 11_100, "late", "too late"))
        .await;
    assert!(
        matches!(refused, Err(Error::Unavailable(_))),
        "got {refused:?}"
    );
}
