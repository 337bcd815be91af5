//! The etcd registry against a real etcd started by [`EtcdServer`]: membership, dead servers,
//! worker id fencing while leases expire and renew, and an etcd outage.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use super::{EtcdOptions, EtcdRegistry, endpoints_from_url, test_server::EtcdServer};
use crate::{
    backend::registry::{Registry, ServerInfo},
    error::Error,
};

fn info(id: &str) -> ServerInfo {
    ServerInfo {
        server_id: id.to_owned(),
        roles: vec!["api".to_owned(), "chat".to_owned()],
        grpc_endpoint: format!("{id}.test:50051"),
        websocket_url: format!("ws://{id}.test:8080/ws"),
        connections: 0,
    }
}

/// Options for a test: a short TTL, fast publishing, and every server probing worker ids from
/// 0 so they compete for the same ids.
fn options(ttl_secs: u64) -> EtcdOptions {
    EtcdOptions {
        lease_ttl: Duration::from_secs(ttl_secs),
        prefix: "/daehwa-test".to_owned(),
        publish_interval: Duration::from_millis(50),
        first_worker_id: Some(0),
        ..EtcdOptions::default()
    }
}

/// Shows the registry's transitions in a failing test's output (`RUST_LOG` overrides).
fn logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

async fn join(etcd: &EtcdServer, id: &str, ttl_secs: u64) -> Arc<EtcdRegistry> {
    logs();
    let endpoints = endpoints_from_url(&etcd.url()).expect("the harness URL");
    assert_eq!(endpoints, [etcd.endpoint()]);
    EtcdRegistry::join(endpoints, info(id), options(ttl_secs))
        .await
        .unwrap_or_else(|e| panic!("{id} cannot join: {e}"))
}

/// Polls `condition` every 20 ms until it holds; fails the test after `within`.
async fn wait_for(what: &str, within: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ids(registry: &EtcdRegistry) -> Vec<String> {
    let mut ids: Vec<String> = registry
        .servers()
        .into_iter()
        .map(|s| s.server_id)
        .collect();
    ids.sort();
    ids
}

/// Whether `key` exists in etcd right now.
async fn exists(client: &mut etcd_client::Client, key: &str) -> bool {
    let answer = client
        .get(key, Some(etcd_client::GetOptions::new().with_count_only()))
        .await
        .expect("read etcd");
    answer.count() > 0
}

async fn raw_client(etcd: &EtcdServer) -> etcd_client::Client {
    etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .expect("connect to etcd")
}

#[test]
fn registry_urls_name_the_etcd_members() {
    assert_eq!(
        endpoints_from_url("etcd://etcd-1.example:2379,etcd-2.example:2379/").unwrap(),
        ["http://etcd-1.example:2379", "http://etcd-2.example:2379"]
    );
    assert_eq!(
        endpoints_from_url("etcd://localhost:2379").unwrap(),
        ["http://localhost:2379"]
    );
    for bad in ["http://localhost:2379", "etcd://", "localhost:2379"] {
        let error = endpoints_from_url(bad).expect_err(bad);
        assert_eq!(error.code(), tonic::Code::InvalidArgument, "{bad}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_see_each_other_and_a_leaving_server_drops_out() {
    let etcd = EtcdServer::start();
    assert!(etcd.url().starts_with("etcd://127.0.0.1:"));
    let a = join(&etcd, "a", 5).await;
    let b = join(&etcd, "b", 5).await;
    let both = vec!["a".to_owned(), "b".to_owned()];
    wait_for("a and b to see each other", Duration::from_secs(10), || {
        ids(&a) == both && ids(&b) == both
    })
    .await;
    assert_eq!(a.worker_id(), Some(0));
    assert_eq!(b.worker_id(), Some(1));

    // The connection count is published and seen by the other server.
    a.set_connections(7);
    wait_for(
        "b to see a's 7 connections",
        Duration::from_secs(10),
        || {
            b.servers().iter().any(|s| {
                s.server_id == "a"
                    && s.connections == 7
                    && s == &{
                        let mut expected = info("a");
                        expected.connections = 7;
                        expected
                    }
            })
        },
    )
    .await;

    a.leave().await;
    a.leave().await; // idempotent
    assert_eq!(a.worker_id(), None);
    wait_for("b to stop listing a", Duration::from_secs(10), || {
        ids(&b) == ["b"]
    })
    .await;
    let mut client = raw_client(&etcd).await;
    assert!(!exists(&mut client, "/daehwa-test/servers/a").await);
    assert!(!exists(&mut client, "/daehwa-test/workers/0").await);
    assert!(exists(&mut client, "/daehwa-test/workers/1").await);
    b.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_server_disappears_when_its_lease_ends() {
    let etcd = EtcdServer::start();
    let survivor = join(&etcd, "survivor", 2).await;
    let dead = join(&etcd, "dead", 2).await;
    wait_for("both listed", Duration::from_secs(10), || {
        ids(&survivor) == ["dead", "survivor"]
    })
    .await;
    let dead_worker = dead.worker_id().expect("a worker id");
    // Dropping stops its tasks without leaving, as when the process dies.
    let died = Instant::now();
    drop(dead);
    wait_for(
        "the dead server to drop out after its 2 s lease",
        Duration::from_secs(10),
        || ids(&survivor) == ["survivor"],
    )
    .await;
    assert!(
        died.elapsed() >= Duration::from_millis(1_000),
        "dropped out after {:?}: before its lease could have ended",
        died.elapsed()
    );
    let mut client = raw_client(&etcd).await;
    assert!(!exists(&mut client, &format!("/daehwa-test/workers/{dead_worker}")).await);
    survivor.leave().await;
}

/// Samples every registry's worker id every 2 ms until stopped; returns how many samples were
/// taken and every sample where two registries held the same worker id.
fn spawn_checker(
    registries: Vec<Arc<EtcdRegistry>>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(u64, Vec<String>)> {
    tokio::spawn(async move {
        let mut samples = 0;
        let mut clashes = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            let held: Vec<Option<u16>> = registries.iter().map(|r| r.worker_id()).collect();
            let mut some: Vec<u16> = held.iter().flatten().copied().collect();
            some.sort_unstable();
            if some.windows(2).any(|w| w[0] == w[1]) {
                clashes.push(format!("{held:?}"));
            }
            samples += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        (samples, clashes)
    })
}

/// Waits until `registry` reports no worker id, and asserts that etcd still held its worker
/// key under the old lease at that moment: the fence falls before anyone else could claim it.
/// Returns when it saw the worker id gone.
async fn fenced_before_expiry(
    registry: &EtcdRegistry,
    client: &mut etcd_client::Client,
    worker: u16,
) -> Instant {
    let key = format!("/daehwa-test/workers/{worker}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = Instant::now();
        if registry.worker_id().is_none() {
            assert!(
                exists(client, &key).await,
                "worker id {worker} was still in use when etcd had already released it"
            );
            return now;
        }
        assert!(now < deadline, "worker id never fenced");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_never_hold_the_same_worker_id() {
    let etcd = EtcdServer::start();
    let mut client = raw_client(&etcd).await;
    let a = join(&etcd, "a", 2).await;
    let b = join(&etcd, "b", 2).await;
    let c = join(&etcd, "c", 2).await;
    assert_eq!(
        [a.worker_id(), b.worker_id(), c.worker_id()],
        [Some(0), Some(1), Some(2)]
    );
    let stop = Arc::new(AtomicBool::new(false));
    let checker = spawn_checker(vec![a.clone(), b.clone(), c.clone()], stop.clone());

    // a and b stop renewing; c keeps renewing. Both fence themselves while etcd still holds
    // their keys.
    let paused = Instant::now();
    a.pause_keep_alive(true);
    b.pause_keep_alive(true);
    let fence_a = fenced_before_expiry(&a, &mut client, 0).await - paused;
    let fence_b = fenced_before_expiry(&b, &mut client, 1).await - paused;
    // Then etcd expires both leases: ids 0 and 1 are free for anyone.
    let deadline = Instant::now() + Duration::from_secs(10);
    while exists(&mut client, "/daehwa-test/workers/0").await
        || exists(&mut client, "/daehwa-test/workers/1").await
    {
        assert!(Instant::now() < deadline, "the paused leases never expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let expired = paused.elapsed();
    eprintln!("fenced after {fence_a:?} and {fence_b:?}; etcd released the ids after {expired:?}");
    assert!(
        fence_a < expired && fence_b < expired,
        "fenced after {fence_a:?} and {fence_b:?}, etcd released the ids after {expired:?}"
    );

    // b comes back first and, probing from 0, takes a's old id; then a comes back and gets
    // another one. c held its id throughout.
    b.pause_keep_alive(false);
    wait_for("b to take worker id 0", Duration::from_secs(10), || {
        b.worker_id() == Some(0)
    })
    .await;
    a.pause_keep_alive(false);
    wait_for("a to get worker id 1", Duration::from_secs(10), || {
        a.worker_id() == Some(1)
    })
    .await;
    wait_for(
        "c to still hold worker id 2",
        Duration::from_secs(10),
        || c.worker_id() == Some(2),
    )
    .await;
    wait_for("everyone listed again", Duration::from_secs(10), || {
        ids(&c) == ["a", "b", "c"]
    })
    .await;

    // A second round: c pauses; a (probing from 0) would take 2 only if c still had it.
    let paused = Instant::now();
    c.pause_keep_alive(true);
    let fence_c = fenced_before_expiry(&c, &mut client, 2).await - paused;
    assert!(
        fence_c < Duration::from_secs(2),
        "c fenced after {fence_c:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while exists(&mut client, "/daehwa-test/workers/2").await {
        assert!(Instant::now() < deadline, "c's lease never expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.pause_keep_alive(false);
    wait_for(
        "c to get worker id 2 again",
        Duration::from_secs(10),
        || c.worker_id() == Some(2),
    )
    .await;

    stop.store(true, Ordering::SeqCst);
    let (samples, clashes) = checker.await.expect("the checker ran");
    assert!(clashes.is_empty(), "worker ids held twice: {clashes:?}");
    assert!(samples > 100, "only {samples} samples");
    for registry in [a, b, c] {
        registry.leave().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_outage_fences_the_worker_id_and_the_registry_recovers() {
    let etcd = EtcdServer::start();
    let a = join(&etcd, "a", 2).await;
    assert!(a.worker_id().is_some());

    let stopped = Instant::now();
    tokio::task::block_in_place(|| etcd.stop());
    wait_for("a to give up its worker id", Duration::from_secs(2), || {
        a.worker_id().is_none()
    })
    .await;
    assert!(stopped.elapsed() < Duration::from_secs(2));
    let error = a
        .require_worker_id()
        .expect_err("no worker id while etcd is down");
    assert_eq!(error.code(), tonic::Code::Unavailable);
    // Everything else keeps working on what was last seen.
    a.set_connections(3);
    assert_eq!(ids(&a), ["a"]);
    match EtcdRegistry::join(vec![etcd.endpoint()], info("b"), options(2)).await {
        Err(Error::Unavailable(message)) => {
            assert!(
                message.starts_with("registry (etcd) unavailable"),
                "{message}"
            );
        }
        Err(other) => panic!("joining without etcd failed with {other:?}"),
        Ok(_) => panic!("joined without etcd"),
    }
    tokio::time::sleep(Duration::from_secs(3)).await; // an outage longer than the TTL
    assert_eq!(a.worker_id(), None);

    tokio::task::block_in_place(|| etcd.restart());
    wait_for(
        "a to hold a worker id again",
        Duration::from_secs(20),
        || a.worker_id().is_some(),
    )
    .await;
    let mut client = raw_client(&etcd).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !exists(&mut client, "/daehwa-test/servers/a").await {
        assert!(Instant::now() < deadline, "a's entry never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let b = join(&etcd, "b", 2).await;
    wait_for(
        "b to see a with its 3 connections",
        Duration::from_secs(10),
        || {
            b.servers()
                .iter()
                .any(|s| s.server_id == "a" && s.connections == 3)
        },
    )
    .await;
    assert_ne!(a.worker_id(), b.worker_id());
    a.leave().await;
    b.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_registry_passes_conformance() {
    let etcd = EtcdServer::start();
    let registry = EtcdRegistry::join(
        vec![etcd.endpoint()],
        crate::backend::registry::conformance::me("conformance-1"),
        options(2),
    )
    .await
    .expect("join");
    crate::backend::registry::conformance::run_all(registry.as_ref(), "conformance-1").await;
}

/// Two live servers may not share a server id: the second is refused at join (it would
/// overwrite the first one's entry and share its bus channel).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_live_server_with_the_same_id_is_refused() {
    let etcd = EtcdServer::start();
    let first = join(&etcd, "twin", 5).await;
    let second = EtcdRegistry::join(vec![etcd.endpoint()], info("twin"), options(5)).await;
    let Err(error) = second else {
        panic!("a second live server with the same id joined");
    };
    assert!(
        error.to_string().contains("unique --server-id"),
        "unclear refusal: {error}"
    );
    assert_eq!(ids(&first), vec!["twin".to_owned()]);
}
