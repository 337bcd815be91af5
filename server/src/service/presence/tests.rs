//! Presence timing on a paused clock: timeouts, the reconnect grace, and the order of stream
//! opens and closes, without waiting in real time.

use std::{sync::Arc, time::Duration};

use daehwa::v1::{PresenceEvent, PresenceStatus};
use tokio_util::sync::CancellationToken;

use super::{PresenceService, PresenceSettings, WatchHandle};
use crate::{
    backend::{
        Directory,
        bus::LocalBus,
        directory::{
            DeviceRecord, GroupRecord, ProfileUpdate, RefreshOutcome, Relation, RelationRecord,
            UserRecord, UserSettings,
        },
        presence_store::MemoryPresenceStore,
    },
    error::Result,
    ids::{DeviceId, GroupId, UserId},
    metrics::Metrics,
    service::delivery::Delivery,
    session::{Hub, SharedEvent},
};

/// Two users who are friends, in memory: presence reads only friendships and settings.
/// (The real directories need a running clock for their connection pools; this one does
/// not, so the tests can pause time.)
struct TwoFriends;

const ALICE: UserId = UserId(1);
const BOB: UserId = UserId(2);

#[async_trait::async_trait]
impl Directory for TwoFriends {
    async fn friend_ids(&self, me: UserId) -> Result<Vec<UserId>> {
        Ok(if me == ALICE { vec![BOB] } else { vec![ALICE] })
    }
    async fn settings(&self, _: UserId) -> Result<UserSettings> {
        Ok(UserSettings::default())
    }
    async fn create_user(&self, _: &str, _: &str, _: &str) -> Result<UserRecord> {
        unreachable!("not used by presence")
    }
    async fn user_credentials(&self, _: &str) -> Result<Option<(UserRecord, String)>> {
        unreachable!("not used by presence")
    }
    async fn user_by_id(&self, _: UserId) -> Result<Option<UserRecord>> {
        unreachable!("not used by presence")
    }
    async fn user_by_name(&self, _: &str) -> Result<Option<UserRecord>> {
        unreachable!("not used by presence")
    }
    async fn users_by_ids(&self, _: &[UserId]) -> Result<Vec<UserRecord>> {
        unreachable!("not used by presence")
    }
    async fn update_profile(&self, _: UserId, _: &ProfileUpdate) -> Result<UserRecord> {
        unreachable!("not used by presence")
    }
    async fn update_settings(&self, _: UserId, _: UserSettings) -> Result<UserSettings> {
        unreachable!("not used by presence")
    }
    async fn create_device(&self, _: UserId, _: &str, _: &[u8], _: i64) -> Result<DeviceRecord> {
        unreachable!("not used by presence")
    }
    async fn device(&self, _: DeviceId) -> Result<Option<DeviceRecord>> {
        unreachable!("not used by presence")
    }
    async fn rotate_refresh_token(
        &self,
        _: &[u8],
        _: &[u8],
        _: i64,
        _: i64,
    ) -> Result<RefreshOutcome> {
        unreachable!("not used by presence")
    }
    async fn revoke_device(&self, _: DeviceId) -> Result<()> {
        unreachable!("not used by presence")
    }
    async fn request_friend(&self, _: UserId, _: UserId, _: i64) -> Result<Relation> {
        unreachable!("not used by presence")
    }
    async fn remove_relation(&self, _: UserId, _: UserId) -> Result<bool> {
        unreachable!("not used by presence")
    }
    async fn relations(&self, _: UserId) -> Result<Vec<RelationRecord>> {
        unreachable!("not used by presence")
    }
    async fn are_friends(&self, _: UserId, _: UserId) -> Result<bool> {
        unreachable!("not used by presence")
    }
    async fn create_group(
        &self,
        _: UserId,
        _: &str,
        _: &[UserId],
        _: usize,
        _: i64,
    ) -> Result<GroupRecord> {
        unreachable!("not used by presence")
    }
    async fn group(&self, _: GroupId) -> Result<Option<GroupRecord>> {
        unreachable!("not used by presence")
    }
    async fn groups_of(&self, _: UserId) -> Result<Vec<GroupRecord>> {
        unreachable!("not used by presence")
    }
    async fn add_members(&self, _: GroupId, _: &[UserId], _: usize, _: i64) -> Result<GroupRecord> {
        unreachable!("not used by presence")
    }
    async fn remove_member(&self, _: GroupId, _: UserId) -> Result<GroupRecord> {
        unreachable!("not used by presence")
    }
    async fn is_member(&self, _: GroupId, _: UserId) -> Result<bool> {
        unreachable!("not used by presence")
    }
    async fn member_ids(&self, _: GroupId) -> Result<Vec<UserId>> {
        unreachable!("not used by presence")
    }
    async fn close(&self) {}
}

/// A placeholder first event for sessions registered directly in the hub.
fn ready() -> Arc<SharedEvent> {
    SharedEvent::new(daehwa::v1::ServerEvent { event: None })
}

const OFFLINE_AFTER: Duration = Duration::from_secs(30);
const HEARTBEAT: Duration = Duration::from_secs(5);

struct Fixture {
    presence: Arc<PresenceService>,
    hub: Arc<Hub>,
    alice: UserId,
    bob: UserId,
    _stop: tokio_util::sync::DropGuard,
}

/// Alice and Bob are friends; presence runs on a paused clock.
async fn fixture() -> Fixture {
    let (directory, alice, bob) = (Arc::new(TwoFriends), ALICE, BOB);
    let metrics = Metrics::new();
    let hub = Hub::new(16, 64, metrics.clone());
    let delivery = Arc::new(Delivery::new(
        "test".to_owned(),
        hub.clone(),
        Arc::new(MemoryPresenceStore::new()),
        Arc::new(LocalBus::new()),
        false,
        OFFLINE_AFTER,
        metrics,
    ));
    let stop = CancellationToken::new();
    let presence = PresenceService::start(
        directory,
        delivery,
        PresenceSettings {
            offline_after: OFFLINE_AFTER,
            heartbeat_interval: HEARTBEAT,
            watcher_capacity: 64,
            max_watchers_per_user: 4,
        },
        stop.clone(),
    );
    Fixture {
        presence,
        hub,
        alice,
        bob,
        _stop: stop.drop_guard(),
    }
}

/// The next presence event for a watcher, on the paused clock (time jumps to it).
async fn next(watch: &mut WatchHandle) -> (u64, PresenceStatus) {
    let event = tokio::time::timeout(Duration::from_secs(3600), watch.next())
        .await
        .expect("an event")
        .expect("open");
    (event.user_id, event.status())
}

#[tokio::test(start_paused = true)]
async fn silence_for_offline_after_goes_offline_and_heartbeats_keep_online() {
    let f = fixture().await;
    let mut watch = f.presence.watch(f.bob, &[]).await.unwrap();
    assert_eq!(
        next(&mut watch).await,
        (f.alice.0, PresenceStatus::Offline),
        "initial state"
    );
    f.presence.touch(f.alice);
    assert_eq!(next(&mut watch).await, (f.alice.0, PresenceStatus::Online));
    let start = tokio::time::Instant::now();
    for _ in 0..20 {
        tokio::time::sleep(HEARTBEAT).await;
        f.presence.touch(f.alice);
    }
    assert!(
        watch.events.try_recv().is_err(),
        "no flap while heartbeats continue"
    );
    assert_eq!(next(&mut watch).await, (f.alice.0, PresenceStatus::Offline));
    let silent = tokio::time::Instant::now() - start - HEARTBEAT * 20;
    assert!(
        silent >= OFFLINE_AFTER && silent < OFFLINE_AFTER + Duration::from_secs(10),
        "offline after {silent:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_reconnect_within_the_grace_does_not_flap_but_staying_away_goes_offline() {
    let f = fixture().await;
    let mut watch = f.presence.watch(f.bob, &[f.alice]).await.unwrap();
    assert_eq!(next(&mut watch).await.1, PresenceStatus::Offline);
    let (first, _rx) = f.hub.register(f.alice, DeviceId(1), ready()).unwrap();
    assert_eq!(next(&mut watch).await, (f.alice.0, PresenceStatus::Online));
    drop(first);
    tokio::time::sleep(HEARTBEAT / 2).await;
    let (second, _rx2) = f.hub.register(f.alice, DeviceId(1), ready()).unwrap();
    tokio::time::sleep(HEARTBEAT * 2).await;
    assert!(
        watch.events.try_recv().is_err(),
        "a quick reconnect is not announced"
    );
    drop(second);
    let closed = tokio::time::Instant::now();
    assert_eq!(next(&mut watch).await, (f.alice.0, PresenceStatus::Offline));
    let after = tokio::time::Instant::now() - closed;
    assert!(
        after >= HEARTBEAT && after < OFFLINE_AFTER,
        "offline {after:?} after the last stream closed"
    );
}

#[tokio::test(start_paused = true)]
async fn overlapping_streams_count_in_order() {
    let f = fixture().await;
    let mut watch = f.presence.watch(f.bob, &[f.alice]).await.unwrap();
    next(&mut watch).await;
    let (a, _ra) = f.hub.register(f.alice, DeviceId(1), ready()).unwrap();
    let (b, _rb) = f.hub.register(f.alice, DeviceId(2), ready()).unwrap();
    assert_eq!(next(&mut watch).await.1, PresenceStatus::Online);
    drop(a);
    // One stream is still open: heartbeats on it keep the user online past the grace.
    for _ in 0..4 {
        tokio::time::sleep(HEARTBEAT).await;
        f.presence.touch(f.alice);
    }
    assert!(
        watch.events.try_recv().is_err(),
        "still online with a stream open"
    );
    drop(b);
    assert_eq!(next(&mut watch).await.1, PresenceStatus::Offline);
}

/// A renewal queued just before a user's first heartbeat is processed after it: the renewal
/// must not record the user as live ahead of the "online" announcement, or `set_live` finds
/// them live already and friends never hear that they came online.
#[tokio::test(start_paused = true)]
async fn a_renewal_queued_before_a_heartbeat_does_not_swallow_the_online_event() {
    let f = fixture().await;
    let mut watch = f.presence.watch(f.bob, &[f.alice]).await.unwrap();
    assert_eq!(next(&mut watch).await.1, PresenceStatus::Offline);
    // Both queued before the fan-out task runs (no await in between, one thread).
    f.presence.queue_refresh();
    f.presence.touch(f.alice);
    assert_eq!(
        next(&mut watch).await,
        (f.alice.0, PresenceStatus::Online),
        "the heartbeat's online is announced"
    );
}

#[tokio::test(start_paused = true)]
async fn a_change_already_in_the_snapshot_is_not_sent_twice() {
    let f = fixture().await;
    let mut watch = f.presence.watch(f.bob, &[]).await.unwrap();
    let tx = f.presence.watchers.lock().unwrap()[&f.bob][0].tx.clone();
    let snapshot = watch.next().await.expect("initial state");
    assert_eq!(
        (snapshot.user_id, snapshot.status()),
        (f.alice.0, PresenceStatus::Offline)
    );
    // The fan-out of a change the snapshot already holds arrives after it: skipped.
    let online = PresenceEvent {
        status: PresenceStatus::Online as i32,
        ..snapshot
    };
    for event in [snapshot, online, snapshot] {
        tx.send(event).await.unwrap();
    }
    assert_eq!(watch.next().await, Some(online), "the repeat is skipped");
    assert_eq!(
        watch.next().await,
        Some(snapshot),
        "after a change, the same state is a transition again"
    );
}
