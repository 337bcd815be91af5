//! The Redis backends against a real `redis-server` started for each test.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{RedisBus, RedisPresenceStore, test_server::RedisServer};
use crate::{
    backend::{
        Bus, PresenceStore,
        bus::{BusEvent, conformance as bus_conformance},
        presence_store::conformance as presence_conformance,
    },
    error::Error,
    ids::UserId,
};

#[tokio::test]
async fn presence_store_passes_conformance() {
    let redis = RedisServer::start();
    let store = RedisPresenceStore::connect(&redis.url()).await.unwrap();
    presence_conformance::run_all(Arc::new(store), tokio::time::sleep).await;
}

#[tokio::test]
async fn bus_passes_conformance() {
    let redis = RedisServer::start();
    let shutdown = CancellationToken::new();
    let bus = RedisBus::connect(&redis.url(), shutdown.clone())
        .await
        .unwrap();
    bus_conformance::run_all(Arc::new(bus)).await;
    shutdown.cancel();
}

/// Redis down: every call is UNAVAILABLE within the call timeout, nothing panics; Redis
/// back: the same store works again without being recreated.
#[tokio::test]
async fn presence_store_is_unavailable_while_redis_is_down_then_recovers() {
    let redis = RedisServer::start();
    let store = RedisPresenceStore::connect(&redis.url()).await.unwrap();
    let user = UserId(42);
    store
        .add_route("s1", user, std::time::Duration::from_secs(60))
        .await
        .unwrap();
    redis.stop();
    let started = std::time::Instant::now();
    match store.routes(&[user]).await {
        Err(Error::Unavailable(message)) => assert!(
            message.contains("presence (Redis) unavailable"),
            "unclear message: {message}"
        ),
        other => panic!("expected UNAVAILABLE with Redis down, got {other:?}"),
    }
    assert!(started.elapsed() < super::CALL_TIMEOUT * 3);
    redis.restart();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match store.routes(&[user]).await {
            // A restarted Redis without persistence is empty: the route is gone, the store works.
            Ok(routes) => {
                assert_eq!(routes, vec![Vec::<String>::new()]);
                break;
            }
            Err(e) => assert!(
                std::time::Instant::now() < deadline,
                "store did not recover after Redis restarted: {e}"
            ),
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A subscriber whose Redis restarts is told (`Interrupted`) and receives again afterwards.
#[tokio::test]
async fn bus_reports_interruption_and_resubscribes_after_redis_restart() {
    let redis = RedisServer::start();
    let shutdown = CancellationToken::new();
    let bus = RedisBus::connect(&redis.url(), shutdown.clone())
        .await
        .unwrap();
    let mut rx = bus.subscribe("s1").await.unwrap();
    redis.stop();
    redis.restart();
    let event = tokio::time::timeout(std::time::Duration::from_secs(15), rx.recv())
        .await
        .expect("interruption reported within 15 s");
    assert_eq!(event, Some(BusEvent::Interrupted));
    let envelope = bus_conformance::envelope("s2", 3);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while bus.publish("s1", &envelope).await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "publisher did not reconnect"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(bus_conformance::next_envelope(&mut rx).await, envelope);
    shutdown.cancel();
}
