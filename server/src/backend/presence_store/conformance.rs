//! The [`PresenceStore`] contract as executable checks. Every check uses users of its own, so
//! several may share a store. `wait` must let `duration` pass for the store's expiries: a
//! paused tokio clock for the memory store, real time for Redis.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use super::{PresenceStore, SharedPresence};
use crate::ids::UserId;

/// Long enough that nothing expires within one check.
const LONG: Duration = Duration::from_secs(60);
/// Short enough to wait out in a test.
const SHORT: Duration = Duration::from_millis(400);

/// Runs every check on one store.
pub async fn run_all<W, F>(store: Arc<dyn PresenceStore>, wait: W)
where
    W: Fn(Duration) -> F,
    F: Future<Output = ()>,
{
    transitions_count_every_server(store.as_ref()).await;
    last_active_survives_going_offline(store.as_ref()).await;
    routes_list_each_server_once(store.as_ref()).await;
    unknown_users_are_offline_without_routes(store.as_ref()).await;
    expired_entries_count_for_nothing(store.as_ref(), &wait).await;
    refresh_keeps_entries_alive(store.as_ref(), &wait).await;
    reaping_a_dead_server_names_who_went_offline_once(store.as_ref()).await;
}

static NEXT_USER: AtomicU64 = AtomicU64::new(0);

/// A user id no other check (or earlier run against the same engine) uses.
fn fresh_user() -> UserId {
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros() as u64;
    UserId(base * 1000 + NEXT_USER.fetch_add(1, Ordering::Relaxed) % 1000)
}

/// Online on two servers: only the first `set_live` is a transition, only the last
/// `clear_live` is.
pub async fn transitions_count_every_server(store: &dyn PresenceStore) {
    let user = fresh_user();
    assert!(store.set_live("s1", user, 1_000, LONG).await.unwrap());
    assert!(!store.set_live("s1", user, 1_001, LONG).await.unwrap());
    assert!(!store.set_live("s2", user, 1_002, LONG).await.unwrap());
    assert!(!store.clear_live("s1", user, 1_003).await.unwrap());
    assert_eq!(
        store.lookup(&[user]).await.unwrap(),
        vec![SharedPresence {
            online: true,
            last_active_ms: 1_003
        }]
    );
    assert!(store.clear_live("s2", user, 1_004).await.unwrap());
    assert!(!store.lookup(&[user]).await.unwrap()[0].online);
    // Clearing again changes nothing and still reports offline.
    assert!(store.clear_live("s2", user, 1_004).await.unwrap());
}

/// The last-active time stays readable after the user went offline, and never moves back.
pub async fn last_active_survives_going_offline(store: &dyn PresenceStore) {
    let user = fresh_user();
    store.set_live("s1", user, 5_000, LONG).await.unwrap();
    store.clear_live("s1", user, 4_000).await.unwrap();
    assert_eq!(
        store.lookup(&[user]).await.unwrap(),
        vec![SharedPresence {
            online: false,
            last_active_ms: 5_000
        }]
    );
}

/// Routes name each server holding streams, once, and forget removed ones.
pub async fn routes_list_each_server_once(store: &dyn PresenceStore) {
    let (a, b) = (fresh_user(), fresh_user());
    store.add_route("s1", a, LONG).await.unwrap();
    store.add_route("s1", a, LONG).await.unwrap();
    store.add_route("s2", a, LONG).await.unwrap();
    store.add_route("s2", b, LONG).await.unwrap();
    let mut routes = store.routes(&[a, b]).await.unwrap();
    routes.iter_mut().for_each(|r| r.sort());
    assert_eq!(
        routes,
        vec![
            vec!["s1".to_owned(), "s2".to_owned()],
            vec!["s2".to_owned()]
        ]
    );
    store.remove_route("s1", a).await.unwrap();
    store.remove_route("s2", b).await.unwrap();
    assert_eq!(
        store.routes(&[a, b]).await.unwrap(),
        vec![vec!["s2".to_owned()], vec![]]
    );
    // Routes are not presence: a user with streams but no liveness reads offline.
    assert!(!store.lookup(&[a]).await.unwrap()[0].online);
}

/// Users the store never heard of: offline, never active, no routes.
pub async fn unknown_users_are_offline_without_routes(store: &dyn PresenceStore) {
    let user = fresh_user();
    assert_eq!(
        store.lookup(&[user]).await.unwrap(),
        vec![SharedPresence::default()]
    );
    assert_eq!(
        store.routes(&[user]).await.unwrap(),
        vec![Vec::<String>::new()]
    );
    assert!(store.lookup(&[]).await.unwrap().is_empty());
    assert!(store.routes(&[]).await.unwrap().is_empty());
}

/// A server that stops refreshing (it died) stops counting after its TTL: its users read
/// offline, have no route there, and the next `set_live` elsewhere is a transition.
pub async fn expired_entries_count_for_nothing<W, F>(store: &dyn PresenceStore, wait: &W)
where
    W: Fn(Duration) -> F,
    F: Future<Output = ()>,
{
    let user = fresh_user();
    store.set_live("dead", user, 7_000, SHORT).await.unwrap();
    store.add_route("dead", user, SHORT).await.unwrap();
    assert!(store.lookup(&[user]).await.unwrap()[0].online);
    wait(SHORT * 3).await;
    assert_eq!(
        store.lookup(&[user]).await.unwrap(),
        vec![SharedPresence {
            online: false,
            last_active_ms: 7_000
        }]
    );
    assert_eq!(
        store.routes(&[user]).await.unwrap(),
        vec![Vec::<String>::new()]
    );
    assert!(store.set_live("alive", user, 8_000, LONG).await.unwrap());
}

/// `refresh` renews entries past their first TTL and records newer activity.
pub async fn refresh_keeps_entries_alive<W, F>(store: &dyn PresenceStore, wait: &W)
where
    W: Fn(Duration) -> F,
    F: Future<Output = ()>,
{
    let (a, b) = (fresh_user(), fresh_user());
    store.set_live("s1", a, 1_000, SHORT).await.unwrap();
    store.add_route("s1", b, SHORT).await.unwrap();
    for step in 0..4 {
        wait(SHORT / 3).await;
        store
            .refresh("s1", &[(a, 2_000 + step)], &[b], SHORT)
            .await
            .unwrap();
    }
    assert_eq!(
        store.lookup(&[a]).await.unwrap(),
        vec![SharedPresence {
            online: true,
            last_active_ms: 2_003
        }]
    );
    assert_eq!(
        store.routes(&[b]).await.unwrap(),
        vec![vec!["s1".to_owned()]]
    );
}

/// Reaping a dead server removes its entries and names the users it held who are now offline
/// (not those live elsewhere); a second reap of the same departure names nobody.
pub async fn reaping_a_dead_server_names_who_went_offline_once(store: &dyn PresenceStore) {
    let dead = format!("dead-{}", fresh_user().0);
    let (alone, elsewhere, routed) = (fresh_user(), fresh_user(), fresh_user());
    store.set_live(&dead, alone, 9_000, LONG).await.unwrap();
    store.set_live(&dead, elsewhere, 9_001, LONG).await.unwrap();
    store
        .set_live("alive", elsewhere, 9_002, LONG)
        .await
        .unwrap();
    store.add_route(&dead, routed, LONG).await.unwrap();
    store.add_route(&dead, alone, LONG).await.unwrap();
    let mut reaped = store
        .reap(&dead)
        .await
        .unwrap()
        .expect("a silent server is reaped");
    reaped.sort();
    assert_eq!(reaped, vec![(alone, 9_000), (routed, 0)]);
    let found = store.lookup(&[alone, elsewhere]).await.unwrap();
    assert!(!found[0].online && found[1].online, "{found:?}");
    assert_eq!(
        store.routes(&[routed, alone]).await.unwrap(),
        vec![Vec::<String>::new(), vec![]]
    );
    assert_eq!(store.reap(&dead).await.unwrap(), Some(vec![]));

    // A server that still refreshes is alive (it may only have lost its registry lease).
    let running = format!("running-{}", fresh_user().0);
    let user = fresh_user();
    store.set_live(&running, user, 1, LONG).await.unwrap();
    store
        .refresh(&running, &[(user, 2)], &[user], LONG)
        .await
        .unwrap();
    assert_eq!(store.reap(&running).await.unwrap(), None);
    assert!(store.lookup(&[user]).await.unwrap()[0].online);
}
