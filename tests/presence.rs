//! PresenceService and presence events end to end: heartbeats and the offline timeout, Connect
//! streams opening and closing, WatchPresence snapshots and transitions, friends-only
//! visibility, `presence_visible`, and logout.
//!
//! "Nothing happened" is never proven by sleeping: every such claim is checked by triggering a
//! later event the watcher is entitled to and asserting it is the first one to arrive (the
//! server announces transitions through one ordered queue).

mod common;

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use common::{LiveStream, TestServer, TestUser, WAIT, befriend, eventually};
use daehwa::v1::{self, PresenceEvent, PresenceStatus, server_event::Event};
use tonic::{Code, Status, Streaming};

/// Short timings: offline after 1 s of silence, heartbeats every 200 ms.
const OFFLINE_AFTER: Duration = Duration::from_secs(1);
const HEARTBEAT: Duration = Duration::from_millis(200);

async fn start_fast() -> TestServer {
    TestServer::start_with(|c| {
        c.offline_after = OFFLINE_AFTER;
        c.heartbeat_interval = HEARTBEAT;
    })
    .await
}

/// A long offline timeout (longer than any wait of a test), so that going offline can only be
/// caused by what the test does (closing streams, logging out), never by silence.
async fn start_without_timeout(heartbeat_interval: Duration) -> TestServer {
    TestServer::start_with(|c| {
        c.offline_after = Duration::from_secs(30);
        c.heartbeat_interval = heartbeat_interval;
    })
    .await
}

fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

fn ms(ts: &prost_types::Timestamp) -> i64 {
    ts.seconds * 1000 + i64::from(ts.nanos) / 1_000_000
}

fn status_name(status: i32) -> String {
    PresenceStatus::try_from(status)
        .map(|s| format!("{s:?}"))
        .unwrap_or_else(|_| format!("unknown({status})"))
}

/// Asserts an event's user and status; with `visible`, that last_active_at is set, otherwise
/// that it is unset. Returns last_active_at in ms (0 when unset).
#[track_caller]
fn check(
    event: &PresenceEvent,
    user: &TestUser,
    status: PresenceStatus,
    visible: bool,
    what: &str,
) -> i64 {
    assert_eq!(
        (event.user_id, status_name(event.status)),
        (user.user_id, status_name(status as i32)),
        "{what}: {event:?}"
    );
    match (&event.last_active_at, visible) {
        (Some(ts), true) => ms(ts),
        (None, false) => 0,
        (ts, _) => panic!(
            "{what}: expected last_active_at {}, got {ts:?}",
            if visible { "set" } else { "unset" }
        ),
    }
}

async fn heartbeat(user: &TestUser) -> v1::HeartbeatResponse {
    user.presence()
        .heartbeat(v1::HeartbeatRequest {})
        .await
        .expect("Heartbeat")
        .into_inner()
}

async fn get_presence(viewer: &TestUser, ids: &[u64]) -> Result<Vec<v1::Presence>, Status> {
    Ok(viewer
        .presence()
        .get_presence(v1::GetPresenceRequest {
            user_ids: ids.to_vec(),
        })
        .await?
        .into_inner()
        .presences)
}

/// `viewer`'s view of `user`, as an event for [`check`].
async fn presence_of(viewer: &TestUser, user: &TestUser) -> PresenceEvent {
    let list = get_presence(viewer, &[user.user_id])
        .await
        .expect("GetPresence");
    assert_eq!(list.len(), 1, "one presence per id: {list:?}");
    let p = list.into_iter().next().unwrap();
    PresenceEvent {
        user_id: p.user_id,
        status: p.status,
        last_active_at: p.last_active_at,
    }
}

async fn set_presence_visible(user: &TestUser, visible: bool) {
    let settings = user
        .users()
        .update_settings(v1::UpdateSettingsRequest {
            settings: Some(v1::Settings {
                notifications_enabled: true,
                presence_visible: visible,
            }),
        })
        .await
        .expect("UpdateSettings")
        .into_inner()
        .settings
        .expect("settings");
    assert_eq!(settings.presence_visible, visible);
}

/// The next presence event on a Connect stream (other events are skipped).
async fn next_presence(stream: &mut LiveStream) -> PresenceEvent {
    stream
        .next_matching(|e| match e {
            Event::Presence(p) => Some(p),
            _ => None,
        })
        .await
}

/// Live streams this server holds, from discovery.
async fn connections(user: &TestUser) -> u64 {
    user.discovery()
        .list_chat_servers(v1::ListChatServersRequest {})
        .await
        .expect("ListChatServers")
        .into_inner()
        .servers
        .iter()
        .map(|s| s.connections)
        .sum()
}

async fn wait_connections(user: &TestUser, n: u64) {
    eventually(&format!("the server to hold {n} streams"), || async move {
        (connections(user).await == n).then_some(())
    })
    .await;
}

/// A WatchPresence stream, with events read ahead kept for [`Watch::next_for`].
struct Watch {
    stream: Streaming<PresenceEvent>,
    pending: VecDeque<PresenceEvent>,
}

impl Watch {
    async fn open(user: &TestUser, ids: &[u64]) -> Result<Self, Status> {
        let stream = user
            .presence()
            .watch_presence(v1::WatchPresenceRequest {
                user_ids: ids.to_vec(),
            })
            .await?
            .into_inner();
        Ok(Self {
            stream,
            pending: VecDeque::new(),
        })
    }

    async fn read(&mut self) -> PresenceEvent {
        match tokio::time::timeout(WAIT, self.stream.message()).await {
            Err(_) => panic!("no presence event within {WAIT:?}"),
            Ok(Err(status)) => panic!("WatchPresence failed: {status:?}"),
            Ok(Ok(None)) => panic!("WatchPresence ended"),
            Ok(Ok(Some(event))) => event,
        }
    }

    /// The next event, whoever it is about.
    async fn next(&mut self) -> PresenceEvent {
        match self.pending.pop_front() {
            Some(event) => event,
            None => self.read().await,
        }
    }

    /// The next event about `user`; events about others stay queued, in order.
    async fn next_for(&mut self, user: &TestUser) -> PresenceEvent {
        if let Some(i) = self.pending.iter().position(|e| e.user_id == user.user_id) {
            return self.pending.remove(i).expect("index in range");
        }
        loop {
            let event = self.read().await;
            if event.user_id == user.user_id {
                return event;
            }
            self.pending.push_back(event);
        }
    }
}

/// The status a refused WatchPresence ends with (at the call or as the first stream item).
async fn watch_error(user: &TestUser, ids: &[u64]) -> Status {
    match Watch::open(user, ids).await {
        Err(status) => status,
        Ok(mut watch) => match tokio::time::timeout(WAIT, watch.stream.message()).await {
            Ok(Err(status)) => status,
            other => panic!("WatchPresence of {ids:?} should be refused, got {other:?}"),
        },
    }
}

/// Sends a Heartbeat RPC every `every` until dropped (a well-behaved client).
struct Heartbeats(tokio::task::JoinHandle<()>);

impl Heartbeats {
    fn start(user: &TestUser, every: Duration) -> Self {
        let mut client = user.presence();
        Self(tokio::spawn(async move {
            loop {
                client
                    .heartbeat(v1::HeartbeatRequest {})
                    .await
                    .expect("background heartbeat");
                tokio::time::sleep(every).await;
            }
        }))
    }
}

impl Drop for Heartbeats {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[tokio::test]
async fn heartbeat_makes_a_user_online_and_silence_makes_them_offline() {
    let server = start_fast().await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    befriend(&alice, &bob).await;

    check(
        &presence_of(&bob, &alice).await,
        &alice,
        PresenceStatus::Offline,
        false,
        "never seen: offline without a last-active time",
    );

    let started = Instant::now();
    let before = wall_ms();
    let answer = heartbeat(&alice).await;
    let after = wall_ms();
    let due = ms(answer
        .next_heartbeat_at
        .as_ref()
        .expect("next_heartbeat_at"));
    assert!(
        due >= before + HEARTBEAT.as_millis() as i64 - 5 && due <= after + 5_000,
        "next heartbeat due one interval from now: {due} (sent at {before}..{after})"
    );

    let online = presence_of(&bob, &alice).await;
    let last_active = check(
        &online,
        &alice,
        PresenceStatus::Online,
        true,
        "right after the heartbeat",
    );
    assert!(
        (before - 5..=after + 5).contains(&last_active),
        "last_active_at {last_active} is the heartbeat's time ({before}..{after})"
    );

    let offline = eventually("alice to go offline without heartbeats", || async {
        let p = presence_of(&bob, &alice).await;
        (p.status == PresenceStatus::Offline as i32).then_some(p)
    })
    .await;
    assert!(
        started.elapsed() >= OFFLINE_AFTER,
        "offline only after offline_after ({OFFLINE_AFTER:?}), was {:?}",
        started.elapsed()
    );
    let last_seen = check(
        &offline,
        &alice,
        PresenceStatus::Offline,
        true,
        "offline after the timeout, last seen kept",
    );
    assert_eq!(
        last_seen, last_active,
        "last_active_at is the last heartbeat"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn connect_streams_announce_online_and_offline_when_the_last_stream_closes() {
    let server = start_without_timeout(HEARTBEAT).await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let carol = server.user("carol").await;
    befriend(&bob, &alice).await;
    befriend(&bob, &carol).await;

    let mut bobs = bob.connect().await;
    let laptop = alice.connect().await;
    let event = next_presence(&mut bobs).await;
    check(
        &event,
        &alice,
        PresenceStatus::Online,
        true,
        "alice opened a stream",
    );

    // A second stream (another device) while online announces nothing: carol's ONLINE, which
    // comes later, is the next presence event bob gets.
    let phone = alice.second_device().await.connect().await;
    let carols = carol.connect().await;
    check(
        &next_presence(&mut bobs).await,
        &carol,
        PresenceStatus::Online,
        true,
        "carol opened a stream (and nothing about alice's second stream before it)",
    );

    // Alice closes one of her two streams: she stays online. Proof: carol closes her only
    // stream afterwards, goes offline after the grace, comes back with a heartbeat; bob sees
    // exactly those two carol events and nothing about alice in between.
    drop(laptop);
    wait_connections(&bob, 3).await;
    drop(carols);
    wait_connections(&bob, 2).await;
    check(
        &next_presence(&mut bobs).await,
        &carol,
        PresenceStatus::Offline,
        true,
        "carol's last stream closed",
    );
    heartbeat(&carol).await;
    check(
        &next_presence(&mut bobs).await,
        &carol,
        PresenceStatus::Online,
        true,
        "carol heartbeats (and alice, with a stream left, did not go offline before it)",
    );
    check(
        &presence_of(&bob, &alice).await,
        &alice,
        PresenceStatus::Online,
        true,
        "alice with one stream left",
    );

    // Her last stream closes and stays closed: offline.
    drop(phone);
    check(
        &next_presence(&mut bobs).await,
        &alice,
        PresenceStatus::Offline,
        true,
        "alice's last stream closed",
    );
    check(
        &presence_of(&bob, &alice).await,
        &alice,
        PresenceStatus::Offline,
        true,
        "GetPresence after the last stream closed",
    );
    drop(bobs);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_quick_reconnect_does_not_flap() {
    // A 2 s reconnect grace, and no silence timeout within the test.
    let server = start_without_timeout(Duration::from_secs(2)).await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let carol = server.user("carol").await;
    befriend(&bob, &alice).await;
    befriend(&bob, &carol).await;

    let mut watch = Watch::open(&bob, &[alice.user_id, carol.user_id])
        .await
        .expect("WatchPresence");
    let first: HashMap<u64, i32> = [watch.next().await, watch.next().await]
        .into_iter()
        .map(|e| (e.user_id, e.status))
        .collect();
    assert_eq!(
        first,
        HashMap::from([
            (alice.user_id, PresenceStatus::Offline as i32),
            (carol.user_id, PresenceStatus::Offline as i32),
        ])
    );

    let stream = alice.connect().await;
    check(
        &watch.next().await,
        &alice,
        PresenceStatus::Online,
        true,
        "alice connected",
    );
    let carols = carol.connect().await;
    check(
        &watch.next().await,
        &carol,
        PresenceStatus::Online,
        true,
        "carol connected",
    );

    // Alice's connection drops and she reconnects at once.
    drop(stream);
    let again = alice.connect().await;
    wait_connections(&bob, 2).await;

    // Carol leaves for good afterwards: her OFFLINE comes after the grace; then she is back.
    drop(carols);
    wait_connections(&bob, 1).await;
    check(
        &watch.next().await,
        &carol,
        PresenceStatus::Offline,
        true,
        "carol left (and alice's reconnect did not make her flap before it)",
    );
    heartbeat(&carol).await;
    check(
        &watch.next().await,
        &carol,
        PresenceStatus::Online,
        true,
        "carol is back (and alice did not flap)",
    );
    check(
        &presence_of(&bob, &alice).await,
        &alice,
        PresenceStatus::Online,
        true,
        "alice reconnected",
    );
    drop(again);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn watch_presence_sends_the_current_state_first_then_transitions() {
    let server = start_fast().await;
    let watcher = server.user("watcher").await;
    let early = server.user("early").await;
    let idle = server.user("idle").await;
    befriend(&watcher, &early).await;
    befriend(&watcher, &idle).await;

    heartbeat(&early).await;
    let mut all = Watch::open(&watcher, &[]).await.expect("WatchPresence all");
    let mut only_idle = Watch::open(&watcher, &[idle.user_id])
        .await
        .expect("WatchPresence of idle");

    // The current state of every friend comes first, in any order.
    let mut first: HashMap<u64, PresenceEvent> = HashMap::new();
    for _ in 0..2 {
        let event = all.next().await;
        assert!(
            first.insert(event.user_id, event).is_none(),
            "one current state per friend: {event:?}"
        );
    }
    let early_seen = check(
        first.get(&early.user_id).expect("early's state"),
        &early,
        PresenceStatus::Online,
        true,
        "early heartbeated just before the watch",
    );
    check(
        first.get(&idle.user_id).expect("idle's state"),
        &idle,
        PresenceStatus::Offline,
        false,
        "idle was never seen",
    );
    check(
        &only_idle.next().await,
        &idle,
        PresenceStatus::Offline,
        false,
        "the explicit watch starts with idle's state",
    );

    // Then transitions: idle comes online, early times out.
    heartbeat(&idle).await;
    check(
        &all.next_for(&idle).await,
        &idle,
        PresenceStatus::Online,
        true,
        "idle heartbeated",
    );
    let last = check(
        &all.next_for(&early).await,
        &early,
        PresenceStatus::Offline,
        true,
        "early went silent",
    );
    assert_eq!(last, early_seen, "early was last active at the heartbeat");

    // Empty ids cover friends made after the watch started.
    let newcomer = server.user("newcomer").await;
    befriend(&newcomer, &watcher).await;
    heartbeat(&newcomer).await;
    check(
        &all.next_for(&newcomer).await,
        &newcomer,
        PresenceStatus::Online,
        true,
        "a friend made after the watch started",
    );

    // The explicit watch hears about idle only: its next events are idle's, although early
    // timed out (and newcomer came online) in between.
    check(
        &only_idle.next().await,
        &idle,
        PresenceStatus::Online,
        true,
        "explicit watch: idle online",
    );
    check(
        &only_idle.next().await,
        &idle,
        PresenceStatus::Offline,
        true,
        "explicit watch: idle timed out (nothing about early or newcomer before it)",
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn presence_of_non_friends_is_denied() {
    let server = start_fast().await;
    let alice = server.user("alice").await;
    let friend = server.user("friend").await;
    let stranger = server.user("stranger").await;
    befriend(&alice, &friend).await;
    // A pending request is not a friendship.
    alice
        .users()
        .add_friend(v1::AddFriendRequest {
            user_id: stranger.user_id,
        })
        .await
        .unwrap();
    heartbeat(&stranger).await;

    let denied = watch_error(&alice, &[stranger.user_id]).await;
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    let denied = watch_error(&alice, &[friend.user_id, stranger.user_id]).await;
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");

    for (viewer, ids) in [
        (&alice, vec![stranger.user_id]),
        (&alice, vec![friend.user_id, stranger.user_id]),
        (&stranger, vec![alice.user_id]),
        (&friend, vec![stranger.user_id]),
    ] {
        let denied = get_presence(viewer, &ids).await.unwrap_err();
        assert_eq!(
            denied.code(),
            Code::PermissionDenied,
            "GetPresence of {ids:?}: {denied:?}"
        );
    }
    // Friends are fine.
    assert_eq!(
        get_presence(&alice, &[friend.user_id]).await.unwrap().len(),
        1
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn transitions_reach_friends_only() {
    let server = start_fast().await;
    let subject = server.user("subject").await;
    let friend = server.user("friend").await;
    let stranger = server.user("stranger").await;
    let strangers_friend = server.user("sfriend").await;
    befriend(&subject, &friend).await;
    befriend(&stranger, &strangers_friend).await;
    // The subject asked the stranger, who never accepted: still not friends.
    subject
        .users()
        .add_friend(v1::AddFriendRequest {
            user_id: stranger.user_id,
        })
        .await
        .unwrap();

    let mut friends_watch = Watch::open(&friend, &[]).await.unwrap();
    check(
        &friends_watch.next().await,
        &subject,
        PresenceStatus::Offline,
        false,
        "friend's snapshot",
    );
    let mut strangers_watch = Watch::open(&stranger, &[]).await.unwrap();
    check(
        &strangers_watch.next().await,
        &strangers_friend,
        PresenceStatus::Offline,
        false,
        "stranger's snapshot holds their own friend only",
    );
    let mut strangers_stream = stranger.connect().await;

    // The subject comes online, then times out; the friend hears both.
    heartbeat(&subject).await;
    check(
        &friends_watch.next().await,
        &subject,
        PresenceStatus::Online,
        true,
        "friend hears the subject come online",
    );
    check(
        &friends_watch.next().await,
        &subject,
        PresenceStatus::Offline,
        true,
        "friend hears the subject time out",
    );

    // Then the stranger's own friend comes online: that is the first presence event the
    // stranger gets, on both the watch and the Connect stream.
    heartbeat(&strangers_friend).await;
    check(
        &strangers_watch.next().await,
        &strangers_friend,
        PresenceStatus::Online,
        true,
        "stranger's watch: nothing about the subject before their friend's event",
    );
    check(
        &next_presence(&mut strangers_stream).await,
        &strangers_friend,
        PresenceStatus::Online,
        true,
        "stranger's stream: nothing about the subject before their friend's event",
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn hidden_presence_shows_offline_to_friends() {
    let server = start_fast().await;
    let alice = server.user("alice").await;
    let hider = server.user("hider").await;
    let friend = server.user("friend").await;
    befriend(&alice, &friend).await;
    befriend(&hider, &friend).await;

    let mut watch = Watch::open(&friend, &[]).await.unwrap();
    for _ in 0..2 {
        let event = watch.next().await;
        assert_eq!(
            event.status,
            PresenceStatus::Offline as i32,
            "snapshot: {event:?}"
        );
    }

    // Alice is online with heartbeats running throughout.
    let beats = Heartbeats::start(&alice, HEARTBEAT);
    check(
        &watch.next().await,
        &alice,
        PresenceStatus::Online,
        true,
        "alice online",
    );

    // Turning presence off while online: friends see her go offline, with no last-active time.
    set_presence_visible(&alice, false).await;
    check(
        &watch.next().await,
        &alice,
        PresenceStatus::Offline,
        false,
        "alice hid her presence",
    );
    heartbeat(&alice).await;
    check(
        &presence_of(&friend, &alice).await,
        &alice,
        PresenceStatus::Offline,
        false,
        "GetPresence of a hidden user who heartbeats",
    );

    // Turning it on again: online.
    set_presence_visible(&alice, true).await;
    check(
        &watch.next().await,
        &alice,
        PresenceStatus::Online,
        true,
        "alice shows her presence again",
    );
    check(
        &presence_of(&friend, &alice).await,
        &alice,
        PresenceStatus::Online,
        true,
        "GetPresence of a visible user who heartbeats",
    );

    // A user hidden from the start never appears: not in GetPresence, not in events. Proof for
    // events: alice times out after her heartbeats stop, and that is the next event.
    set_presence_visible(&hider, false).await;
    heartbeat(&hider).await;
    check(
        &presence_of(&friend, &hider).await,
        &hider,
        PresenceStatus::Offline,
        false,
        "GetPresence of a user hidden from the start",
    );
    drop(beats);
    check(
        &watch.next().await,
        &alice,
        PresenceStatus::Offline,
        true,
        "alice timed out (and nothing about the hidden user before it)",
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn logout_of_the_only_device_is_offline_at_once() {
    // offline_after 30 s and a 5 s reconnect grace: neither can explain an offline within
    // the assertions below.
    let heartbeat_interval = Duration::from_secs(5);
    let server = start_without_timeout(heartbeat_interval).await;
    let rpc_only = server.user("rpconly").await;
    let streaming = server.user("streaming").await;
    let friend = server.user("friend").await;
    befriend(&rpc_only, &friend).await;
    befriend(&streaming, &friend).await;

    let mut watch = Watch::open(&friend, &[rpc_only.user_id]).await.unwrap();
    check(
        &watch.next().await,
        &rpc_only,
        PresenceStatus::Offline,
        false,
        "snapshot",
    );
    heartbeat(&rpc_only).await;
    check(
        &watch.next().await,
        &rpc_only,
        PresenceStatus::Online,
        true,
        "online by heartbeat",
    );
    rpc_only
        .auth()
        .logout(v1::LogoutRequest {})
        .await
        .expect("Logout");
    check(
        &watch.next().await,
        &rpc_only,
        PresenceStatus::Offline,
        true,
        "logged out of the only device",
    );
    check(
        &presence_of(&friend, &rpc_only).await,
        &rpc_only,
        PresenceStatus::Offline,
        true,
        "GetPresence after logout",
    );

    // The same with a live Connect stream: offline before the stream's reconnect grace.
    let mut friends_stream = friend.connect().await;
    let stream = streaming.connect().await;
    check(
        &next_presence(&mut friends_stream).await,
        &streaming,
        PresenceStatus::Online,
        true,
        "online by stream",
    );
    let logged_out = Instant::now();
    streaming
        .auth()
        .logout(v1::LogoutRequest {})
        .await
        .expect("Logout");
    check(
        &next_presence(&mut friends_stream).await,
        &streaming,
        PresenceStatus::Offline,
        true,
        "logged out of the only device, which had a stream",
    );
    assert!(
        logged_out.elapsed() < heartbeat_interval,
        "offline at once, not after the reconnect grace: {:?}",
        logged_out.elapsed()
    );
    drop(stream);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn logout_of_one_device_keeps_a_user_with_another_connected_device_online() {
    let server = start_without_timeout(HEARTBEAT).await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let carol = server.user("carol").await;
    befriend(&alice, &bob).await;
    befriend(&carol, &bob).await;
    let phone = alice.second_device().await;

    let mut watch = Watch::open(&bob, &[alice.user_id, carol.user_id])
        .await
        .unwrap();
    for _ in 0..2 {
        assert_eq!(watch.next().await.status, PresenceStatus::Offline as i32);
    }
    let phone_stream = phone.connect().await;
    check(
        &watch.next().await,
        &alice,
        PresenceStatus::Online,
        true,
        "alice's phone connected",
    );
    heartbeat(&alice).await;
    alice
        .auth()
        .logout(v1::LogoutRequest {})
        .await
        .expect("Logout of the laptop");
    heartbeat(&carol).await;
    check(
        &watch.next().await,
        &carol,
        PresenceStatus::Online,
        true,
        "carol came online (and alice did not go offline before it)",
    );
    check(
        &presence_of(&bob, &alice).await,
        &alice,
        PresenceStatus::Online,
        true,
        "alice's phone is still connected",
    );

    drop(phone_stream);
    check(
        &watch.next().await,
        &alice,
        PresenceStatus::Offline,
        true,
        "alice's last device disconnected",
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn heartbeats_keep_a_user_online_past_offline_after() {
    let server = start_fast().await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    befriend(&alice, &bob).await;

    let mut watch = Watch::open(&bob, &[alice.user_id]).await.unwrap();
    check(
        &watch.next().await,
        &alice,
        PresenceStatus::Offline,
        false,
        "snapshot",
    );

    let started = Instant::now();
    let mut last_beat = 0;
    while started.elapsed() < 2 * OFFLINE_AFTER + HEARTBEAT {
        last_beat = wall_ms();
        heartbeat(&alice).await;
        check(
            &presence_of(&bob, &alice).await,
            &alice,
            PresenceStatus::Online,
            true,
            "while heartbeating",
        );
        tokio::time::sleep(HEARTBEAT).await;
    }
    check(
        &presence_of(&bob, &alice).await,
        &alice,
        PresenceStatus::Online,
        true,
        "after 2 x offline_after of heartbeats",
    );

    check(
        &watch.next().await,
        &alice,
        PresenceStatus::Online,
        true,
        "the first heartbeat",
    );
    // With the heartbeats stopped she times out. That OFFLINE must be the very next event and
    // carry the last heartbeat's time: an offline in between (a flap) would carry an earlier
    // time.
    let off = check(
        &watch.next().await,
        &alice,
        PresenceStatus::Offline,
        true,
        "timed out after the heartbeats stopped",
    );
    assert!(
        off >= last_beat - 5,
        "the first OFFLINE is after the last heartbeat ({off} < {last_beat}): she flapped"
    );
    server.stop().await.unwrap();
}
