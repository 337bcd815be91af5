//! The TiKV message store against `daehwa-tikv-standin` (an in-process PD + TiKV speaking
//! kvproto; see its crate doc for what it does and does not model), and, opt-in, against a
//! real cluster.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::{Duration, Instant},
};

use daehwa_tikv_standin::{Standin, StandinOptions};

use super::*;
use crate::{
    backend::message_store::{conformance, conformance::new_message},
    ids::GroupId,
};

/// Three regions: conversations split in two halves by their hash prefix, users' keys in a
/// third, so appends run in one region (1PC) and the first message of a direct conversation
/// spans regions (2PC).
fn layout() -> StandinOptions {
    StandinOptions {
        split_keys: vec![vec![b'c', 0x80], vec![b'u']],
        scan_fault: false,
    }
}

async fn store_on(standin: &Standin) -> TikvMessageStore {
    TikvMessageStore::connect(vec![standin.pd_endpoint()])
        .await
        .expect("connect to the stand-in")
}

fn group(id: u64) -> ConversationId {
    ConversationId::Group(GroupId(id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_against_the_standin() {
    let standin = Standin::start_with(layout()).await.expect("stand-in");
    let store = store_on(&standin).await;
    conformance::run_all(Arc::new(store)).await;
    let stats = standin.stats();
    println!("stand-in served: {stats:?}");
    assert!(
        stats.one_pc_commits > 0,
        "single-region appends commit in 1PC"
    );
    assert!(
        stats.two_pc_commits > 0,
        "cross-region appends commit in 2PC"
    );
}

/// Two stores, as two chat servers, append concurrently to the same conversations: each
/// conversation's seqs are exactly 1..=n, every message stored once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_append_concurrently_without_gaps() {
    let standin = Standin::start_with(layout()).await.expect("stand-in");
    let servers = [
        Arc::new(store_on(&standin).await),
        Arc::new(store_on(&standin).await),
    ];
    let convs = [group(50_001), group(50_002)];
    const TASKS_PER_SERVER: u64 = 3;
    const APPENDS: u64 = 30;
    let mut tasks = Vec::new();
    for (s, server) in servers.iter().enumerate() {
        for t in 0..TASKS_PER_SERVER {
            let server = server.clone();
            tasks.push(tokio::spawn(async move {
                let mut got = Vec::new();
                for i in 0..APPENDS {
                    let conv = convs[usize::try_from(i % 2).unwrap()];
                    let id = format!("s{s}-t{t}-{i}");
                    let m = new_message(conv, 60_000 + s as u64, &id, "hi");
                    let appended = server.append(m).await.expect("append");
                    assert!(!appended.duplicate);
                    got.push((conv, appended.message.seq, appended.message.message_id));
                }
                got
            }));
        }
    }
    let mut seqs: BTreeMap<ConversationId, Vec<u64>> = BTreeMap::new();
    let mut ids = BTreeSet::new();
    for task in tasks {
        for (conv, seq, id) in task.await.expect("task") {
            seqs.entry(conv).or_default().push(seq);
            assert!(ids.insert(id), "message {id} stored twice");
        }
    }
    let per_conv = 2 * TASKS_PER_SERVER * APPENDS / 2;
    for conv in convs {
        let mut got = seqs.remove(&conv).unwrap_or_default();
        got.sort_unstable();
        assert_eq!(got, (1..=per_conv).collect::<Vec<_>>(), "{conv}: gapless");
        for server in &servers {
            let log = server.read_after(conv, 0, 1_000).await.expect("read");
            let log_seqs: Vec<u64> = log.iter().map(|m| m.seq).collect();
            assert_eq!(log_seqs, (1..=per_conv).collect::<Vec<_>>());
        }
    }
    println!("stand-in served: {:?}", standin.stats());
}

/// Regression test for the scan guard. `tikv-client` 0.4.0's raw scan returned duplicates and
/// keys outside a bounded range; here the stand-in injects those symptoms into every `KvScan`
/// answer. The unguarded client scan shows them, the store's guarded reads do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scans_are_guarded_against_duplicates_and_out_of_range_keys() {
    let standin = Standin::start_with(StandinOptions {
        scan_fault: true,
        ..layout()
    })
    .await
    .expect("stand-in");
    let store = store_on(&standin).await;
    // Neighbouring data on both sides of the conversation's log: its head and read positions
    // sort before and after the log.
    let conv = group(70_001);
    for i in 1..=12 {
        store
            .append(new_message(conv, 70_100 + i % 2, &format!("m{i}"), "x"))
            .await
            .expect("append");
    }
    let (start, end) = (keys::message(conv, 4), keys::message(conv, 9));

    // The fault is real: the client's own scan returns keys outside the range.
    let mut txn = store
        .client
        .begin_with_options(TikvMessageStore::options())
        .await
        .expect("begin");
    let raw: Vec<Vec<u8>> = txn
        .scan(start.clone()..end.clone(), 100)
        .await
        .expect("scan")
        .map(|p| p.0.into())
        .collect();
    txn.rollback().await.expect("rollback");
    assert!(
        raw.iter().any(|k| *k < start || *k >= end),
        "the stand-in should inject out-of-range keys"
    );

    // The guarded scan: strictly inside the range, strictly increasing, no duplicates.
    for (from, to, limit) in [
        (4, 9, 100),
        (4, 9, 2),
        (1, 13, 100),
        (12, 13, 5),
        (13, 20, 5),
    ] {
        let (start, end) = (keys::message(conv, from), keys::message(conv, to));
        let mut view = store.snapshot().await.expect("snapshot");
        let pairs = view
            .scan(start.clone(), end.clone(), limit)
            .await
            .expect("scan");
        assert!(pairs.iter().all(|(k, _)| *k >= start && *k < end));
        assert!(pairs.windows(2).all(|w| w[0].0 < w[1].0));
        let seqs: Vec<u64> = pairs.iter().filter_map(|(k, _)| keys::seq_of(k)).collect();
        let expected: Vec<u64> = (from..to.min(13)).take(limit).collect();
        assert_eq!(seqs, expected, "scan of {from}..{to} limit {limit}");
    }
    // And the store's reads built on it.
    let all: Vec<u64> = store
        .read_after(conv, 0, 100)
        .await
        .expect("read")
        .iter()
        .map(|m| m.seq)
        .collect();
    assert_eq!(all, (1..=12).collect::<Vec<_>>());
    let page: Vec<u64> = store
        .read_after(conv, 3, 4)
        .await
        .expect("read")
        .iter()
        .map(|m| m.seq)
        .collect();
    assert_eq!(page, vec![4, 5, 6, 7]);
    let dm = ConversationId::direct(UserId(70_200), UserId(70_201)).expect("dm");
    store
        .append(new_message(dm, 70_200, "d1", "x"))
        .await
        .expect("append");
    assert_eq!(
        store
            .direct_conversations(UserId(70_200))
            .await
            .expect("list"),
        vec![dm]
    );
}

/// A lock left by a writer that died after prewrite (on the head key, which every append
/// reads) is resolved through `CheckTxnStatus`/`ResolveLock` once expired, and the append goes
/// on; the dead writer's value is rolled back, not committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_locks_are_resolved() {
    let standin = Standin::start_with(layout()).await.expect("stand-in");
    let store = store_on(&standin).await;
    let conv = group(90_001);
    store
        .append(new_message(conv, 90_100, "one", "x"))
        .await
        .expect("append");
    standin.plant_orphan_lock(keys::head(conv), 99u64.to_be_bytes().to_vec(), 0);
    let appended = store
        .append(new_message(conv, 90_100, "two", "x"))
        .await
        .expect("append past the orphan lock");
    assert_eq!(appended.message.seq, 2);
    let stats = standin.stats();
    assert!(stats.key_is_locked > 0 && stats.check_txn_status > 0 && stats.resolve_lock > 0);
    let seqs: Vec<u64> = store
        .read_after(conv, 0, 10)
        .await
        .expect("read")
        .iter()
        .map(|m| m.seq)
        .collect();
    assert_eq!(seqs, vec![1, 2]);
}

/// When the cluster goes away the store answers `Unavailable` within its timeouts, never
/// panics; a store connected to a new cluster works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_cluster_is_unavailable_and_a_new_one_serves() {
    let standin = Standin::start_with(layout()).await.expect("stand-in");
    let store = store_on(&standin).await;
    let conv = group(80_001);
    store
        .append(new_message(conv, 80_100, "before", "x"))
        .await
        .expect("append");
    drop(standin);

    let started = Instant::now();
    let refused = store.append(new_message(conv, 80_100, "after", "x")).await;
    assert!(
        matches!(&refused, Err(Error::Unavailable(m)) if m.starts_with("message store (TiKV) unavailable")),
        "got {refused:?}"
    );
    let read = store.read_after(conv, 0, 10).await;
    assert!(matches!(read, Err(Error::Unavailable(_))), "got {read:?}");
    assert!(started.elapsed() < 2 * OP_TIMEOUT + Duration::from_secs(5));

    let restarted = Standin::start_with(layout()).await.expect("stand-in");
    let fresh = store_on(&restarted).await;
    let appended = fresh
        .append(new_message(conv, 80_100, "again", "x"))
        .await
        .expect("append on the new cluster");
    assert_eq!(appended.message.seq, 1, "a new, empty cluster");
}

#[tokio::test]
async fn connecting_to_nothing_is_unavailable() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let started = Instant::now();
    let result = TikvMessageStore::connect(vec![format!("127.0.0.1:{port}")]).await;
    assert!(
        matches!(&result, Err(Error::Unavailable(_))),
        "got {:?}",
        result.map(|_| ())
    );
    assert!(started.elapsed() < CONNECT_TIMEOUT + Duration::from_secs(5));
}

/// The conformance suite against a real TiKV cluster, opt-in: set `TIKV_PD_ENDPOINTS` to its
/// PD endpoints, comma-separated. It writes test data to the cluster's key space.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_cluster_conformance_when_tikv_pd_endpoints_set() {
    let Ok(endpoints) = std::env::var("TIKV_PD_ENDPOINTS") else {
        println!(
            "NOT RUN: real_cluster_conformance_when_tikv_pd_endpoints_set tested nothing; \
             set TIKV_PD_ENDPOINTS=host:port[,host:port] to run the conformance suite on a \
             real TiKV cluster"
        );
        return;
    };
    let endpoints: Vec<String> = endpoints
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
        .collect();
    let store = TikvMessageStore::connect(endpoints)
        .await
        .expect("connect to the cluster");
    conformance::run_all(Arc::new(store)).await;
}

#[test]
fn guard_keeps_only_sorted_unique_keys_in_range() {
    let pair = |k: &[u8]| (k.to_vec(), vec![0]);
    let got = guard_scan(
        [
            pair(b"b2"),
            pair(b"a9"),
            pair(b"b1"),
            pair(b"b1"),
            pair(b"c0"),
            pair(b"b3"),
            pair(b"b2"),
        ],
        b"b",
        b"c",
    );
    let keys: Vec<&[u8]> = got.iter().map(|(k, _)| k.as_slice()).collect();
    assert_eq!(keys, [b"b1", b"b2", b"b3"]);
    assert_eq!(
        guard_scan([pair(b"z")], b"b", b"").len(),
        1,
        "unbounded end"
    );
}

#[test]
fn log_keys_sort_by_seq_within_a_conversation() {
    let conv = group(1);
    assert!(keys::message(conv, 255) < keys::message(conv, 256));
    assert!(keys::head(conv) < keys::message(conv, 0));
    assert!(keys::message(conv, u64::MAX) < keys::log_end(conv));
    assert!(keys::log_end(conv) <= keys::read_position(conv, UserId(0)));
    assert_eq!(keys::seq_of(&keys::message(conv, 77)), Some(77));
    let prefix = keys::direct_prefix(UserId(5));
    let end = keys::prefix_end(&prefix);
    let dm = ConversationId::direct(UserId(5), UserId(9)).expect("dm");
    assert!(keys::direct(UserId(5), dm) > prefix && keys::direct(UserId(5), dm) < end);
    // The hash prefix spreads neighbouring conversations.
    let prefixes: BTreeSet<[u8; 2]> = (1..=64).map(|g| spread(&group(g).to_key())).collect();
    assert!(prefixes.len() > 50);
}
