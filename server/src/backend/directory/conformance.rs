//! The behaviour every [`Directory`] must show, as executable checks.
//!
//! Each implementation's tests call [`run_all`] on a fresh instance. Every check creates its own
//! users (with names no other check or earlier run uses) and groups, so the checks are
//! independent of each other and of their order, and can also run on a store that already
//! holds data. Times passed as `now_ms` are made up: implementations must use the value given.

use std::{
    collections::HashSet,
    fmt::Debug,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use tonic::Code;

use super::{
    Directory, ProfileUpdate, RefreshOutcome, Relation, RelationRecord, UserRecord, UserSettings,
};
use crate::{
    error::Result,
    ids::{DeviceId, GroupId, UserId},
};

/// A user id no implementation assigns in a test (and above `i64::MAX`).
const NO_USER: UserId = UserId(u64::MAX - 7);
/// A group id no implementation assigns in a test.
const NO_GROUP: GroupId = GroupId(u64::MAX - 7);
/// A device id no implementation assigns in a test.
const NO_DEVICE: DeviceId = DeviceId(u64::MAX - 7);
/// Far enough in the future for a refresh token not to expire during the checks.
const LATER: i64 = i64::MAX / 2;

/// Runs every check, one after the other.
pub async fn run_all(dir: Arc<dyn Directory>) {
    usernames_are_unique(dir.clone()).await;
    users_are_found_by_id_and_name(dir.clone()).await;
    users_by_ids_skips_unknown(dir.clone()).await;
    profile_update_is_partial(dir.clone()).await;
    settings_default_on_then_update(dir.clone()).await;
    devices_are_created(dir.clone()).await;
    refresh_rotates_once_then_reuse_revokes(dir.clone()).await;
    expired_refresh_is_revoked(dir.clone()).await;
    revoked_device_refresh_is_revoked(dir.clone()).await;
    concurrent_rotations_rotate_once(dir.clone()).await;
    friend_request_then_accept(dir.clone()).await;
    friend_request_errors(dir.clone()).await;
    relations_are_removed_either_way(dir.clone()).await;
    friend_ids_lists_only_friends(dir.clone()).await;
    crossed_requests_make_friends(dir.clone()).await;
    groups_are_created(dir.clone()).await;
    group_creation_checks_users_and_limit(dir.clone()).await;
    members_are_added(dir.clone()).await;
    concurrent_additions_respect_limit(dir.clone()).await;
    members_leave_and_ownership_passes(dir.clone()).await;
    groups_of_lists_memberships(dir.clone()).await;
    unknown_group_is_not_found(dir).await;
}

/// A name unique in this process and, through the clock, across runs on one store.
fn unique(tag: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{tag}_{nanos:x}_{n}")
}

/// A fresh user.
async fn user(dir: &dyn Directory, tag: &str) -> UserRecord {
    dir.create_user(&unique(tag), "argon2-hash", &format!("{tag} name"))
        .await
        .expect("create_user")
}

/// A fresh refresh-token hash (any bytes do; real ones are SHA-256 digests).
fn token() -> Vec<u8> {
    unique("token").into_bytes()
}

/// The error's message, after checking its kind.
#[track_caller]
fn expect_err<T: Debug>(result: Result<T>, code: Code, what: &str) -> String {
    match result {
        Err(e) if e.code() == code => e.to_string(),
        other => panic!("{what}: expected {code:?}, got {other:?}"),
    }
}

fn sorted(mut ids: Vec<UserId>) -> Vec<UserId> {
    ids.sort();
    ids
}

/// Creating a second account with a taken username fails `AlreadyExists`; ids are distinct.
pub async fn usernames_are_unique(dir: Arc<dyn Directory>) {
    let name = unique("unique");
    let first = dir
        .create_user(&name, "h1", "First")
        .await
        .expect("create_user");
    assert_eq!(first.username, name);
    assert_eq!(first.display_name, "First");
    assert_eq!(
        (first.status_message.as_str(), first.avatar_url.as_str()),
        ("", "")
    );
    assert!(first.created_at_ms > 0, "created_at_ms is set");
    let again = dir.create_user(&name, "h2", "Second").await;
    expect_err(again, Code::AlreadyExists, "taken username");
    let other = dir
        .create_user(&unique("unique"), "h3", "Third")
        .await
        .expect("create_user");
    assert_ne!(first.id, other.id);
    let (stored, hash) = dir
        .user_credentials(&name)
        .await
        .expect("user_credentials")
        .expect("user exists");
    assert_eq!(
        (stored, hash.as_str()),
        (first, "h1"),
        "the first account is untouched"
    );
}

/// Lookups by id, by name and for login agree; unknown ones are `None`.
pub async fn users_are_found_by_id_and_name(dir: Arc<dyn Directory>) {
    let alice = user(&*dir, "lookup").await;
    assert_eq!(
        dir.user_by_id(alice.id).await.expect("user_by_id"),
        Some(alice.clone())
    );
    assert_eq!(
        dir.user_by_name(&alice.username)
            .await
            .expect("user_by_name"),
        Some(alice.clone())
    );
    let (record, hash) = dir
        .user_credentials(&alice.username)
        .await
        .expect("credentials")
        .expect("exists");
    assert_eq!((record, hash.as_str()), (alice, "argon2-hash"));
    assert_eq!(dir.user_by_id(NO_USER).await.expect("user_by_id"), None);
    assert_eq!(
        dir.user_by_name(&unique("nobody"))
            .await
            .expect("user_by_name"),
        None
    );
    assert_eq!(
        dir.user_credentials(&unique("nobody"))
            .await
            .expect("credentials"),
        None
    );
}

/// `users_by_ids` returns the users that exist, whatever else the list holds.
pub async fn users_by_ids_skips_unknown(dir: Arc<dyn Directory>) {
    let a = user(&*dir, "batch").await;
    let b = user(&*dir, "batch").await;
    let mut found = dir
        .users_by_ids(&[b.id, NO_USER, a.id, a.id])
        .await
        .expect("users_by_ids");
    found.sort_by_key(|u| u.id);
    found.dedup();
    let mut expected = vec![a, b];
    expected.sort_by_key(|u| u.id);
    assert_eq!(found, expected);
    assert!(
        dir.users_by_ids(&[])
            .await
            .expect("users_by_ids")
            .is_empty()
    );
    assert!(
        dir.users_by_ids(&[NO_USER])
            .await
            .expect("users_by_ids")
            .is_empty()
    );
}

/// A profile update changes only the fields it carries.
pub async fn profile_update_is_partial(dir: Arc<dyn Directory>) {
    let u = user(&*dir, "profile").await;
    let update = ProfileUpdate {
        display_name: Some("New Name".into()),
        ..Default::default()
    };
    let after = dir
        .update_profile(u.id, &update)
        .await
        .expect("update_profile");
    assert_eq!(
        after,
        UserRecord {
            display_name: "New Name".into(),
            ..u.clone()
        }
    );
    let update = ProfileUpdate {
        status_message: Some("busy".into()),
        avatar_url: Some("https://a/b.png".into()),
        ..Default::default()
    };
    let after = dir
        .update_profile(u.id, &update)
        .await
        .expect("update_profile");
    let expected = UserRecord {
        display_name: "New Name".into(),
        status_message: "busy".into(),
        avatar_url: "https://a/b.png".into(),
        ..u.clone()
    };
    assert_eq!(after, expected);
    let unchanged = dir
        .update_profile(u.id, &ProfileUpdate::default())
        .await
        .expect("empty update");
    assert_eq!(unchanged, expected);
    let cleared = ProfileUpdate {
        status_message: Some(String::new()),
        ..Default::default()
    };
    assert_eq!(
        dir.update_profile(u.id, &cleared)
            .await
            .expect("clear")
            .status_message,
        ""
    );
    assert_eq!(
        dir.user_by_id(u.id)
            .await
            .expect("user_by_id")
            .expect("exists")
            .status_message,
        ""
    );
    expect_err(
        dir.update_profile(NO_USER, &update).await,
        Code::NotFound,
        "unknown user's profile",
    );
}

/// Settings start all on, and an update is stored for that user only.
pub async fn settings_default_on_then_update(dir: Arc<dyn Directory>) {
    let a = user(&*dir, "settings").await;
    let b = user(&*dir, "settings").await;
    let defaults = UserSettings {
        notifications_enabled: true,
        presence_visible: true,
    };
    assert_eq!(dir.settings(a.id).await.expect("settings"), defaults);
    let quiet = UserSettings {
        notifications_enabled: false,
        presence_visible: true,
    };
    assert_eq!(
        dir.update_settings(a.id, quiet)
            .await
            .expect("update_settings"),
        quiet
    );
    assert_eq!(dir.settings(a.id).await.expect("settings"), quiet);
    let hidden = UserSettings {
        notifications_enabled: true,
        presence_visible: false,
    };
    dir.update_settings(a.id, hidden)
        .await
        .expect("update_settings");
    assert_eq!(dir.settings(a.id).await.expect("settings"), hidden);
    assert_eq!(
        dir.settings(b.id).await.expect("settings"),
        defaults,
        "other users keep theirs"
    );
    expect_err(
        dir.settings(NO_USER).await,
        Code::NotFound,
        "unknown user's settings",
    );
    expect_err(
        dir.update_settings(NO_USER, quiet).await,
        Code::NotFound,
        "unknown user's settings update",
    );
}

/// Devices are created unrevoked for an existing user and can be read back.
pub async fn devices_are_created(dir: Arc<dyn Directory>) {
    let u = user(&*dir, "devices").await;
    let phone = dir
        .create_device(u.id, "phone", &token(), LATER)
        .await
        .expect("create_device");
    assert_eq!(
        (phone.user, phone.name.as_str(), phone.revoked),
        (u.id, "phone", false)
    );
    let laptop = dir
        .create_device(u.id, "laptop", &token(), LATER)
        .await
        .expect("create_device");
    assert_ne!(phone.id, laptop.id);
    assert_eq!(dir.device(phone.id).await.expect("device"), Some(phone));
    assert_eq!(dir.device(NO_DEVICE).await.expect("device"), None);
    expect_err(
        dir.create_device(NO_USER, "x", &token(), LATER).await,
        Code::NotFound,
        "device of unknown user",
    );
}

/// A refresh token rotates once; presenting it again revokes the device and all its tokens,
/// and only that device.
pub async fn refresh_rotates_once_then_reuse_revokes(dir: Arc<dyn Directory>) {
    let u = user(&*dir, "rotate").await;
    let (t1, t2, t3) = (token(), token(), token());
    let device = dir
        .create_device(u.id, "phone", &t1, LATER)
        .await
        .expect("create_device");
    let other_token = token();
    let other = dir
        .create_device(u.id, "laptop", &other_token, LATER)
        .await
        .expect("create_device");
    let rotated = RefreshOutcome::Rotated {
        user: u.id,
        device: device.id,
    };
    assert_eq!(
        dir.rotate_refresh_token(&t1, &t2, LATER, 1_000)
            .await
            .expect("rotate"),
        rotated
    );
    assert_eq!(
        dir.rotate_refresh_token(&t2, &t3, LATER, 2_000)
            .await
            .expect("rotate"),
        rotated
    );
    let reused = dir
        .rotate_refresh_token(&t1, &token(), LATER, 3_000)
        .await
        .expect("rotate");
    assert_eq!(
        reused,
        RefreshOutcome::Reused {
            user: u.id,
            device: device.id
        }
    );
    assert!(
        dir.device(device.id)
            .await
            .expect("device")
            .expect("exists")
            .revoked
    );
    let current = dir
        .rotate_refresh_token(&t3, &token(), LATER, 4_000)
        .await
        .expect("rotate");
    assert_eq!(
        current,
        RefreshOutcome::Revoked,
        "reuse revokes the device's current token too"
    );
    let again = dir
        .rotate_refresh_token(&t1, &token(), LATER, 5_000)
        .await
        .expect("rotate");
    assert_eq!(
        again,
        RefreshOutcome::Revoked,
        "a revoked device stays revoked"
    );
    let untouched = dir
        .rotate_refresh_token(&other_token, &token(), LATER, 6_000)
        .await
        .expect("rotate");
    assert_eq!(
        untouched,
        RefreshOutcome::Rotated {
            user: u.id,
            device: other.id
        }
    );
    assert!(
        !dir.device(other.id)
            .await
            .expect("device")
            .expect("exists")
            .revoked
    );
    assert_eq!(
        dir.rotate_refresh_token(&token(), &token(), LATER, 7_000)
            .await
            .expect("rotate"),
        RefreshOutcome::Unknown
    );
}

/// A token presented at or after its expiry is `Revoked`; the new token's expiry is the one given.
pub async fn expired_refresh_is_revoked(dir: Arc<dyn Directory>) {
    let u = user(&*dir, "expiry").await;
    let t1 = token();
    dir.create_device(u.id, "phone", &t1, 10_000)
        .await
        .expect("create_device");
    assert_eq!(
        dir.rotate_refresh_token(&t1, &token(), LATER, 10_001)
            .await
            .expect("rotate"),
        RefreshOutcome::Revoked
    );
    let (t2, t3) = (token(), token());
    let device = dir
        .create_device(u.id, "laptop", &t2, 10_000)
        .await
        .expect("create_device");
    let rotated = dir
        .rotate_refresh_token(&t2, &t3, 20_000, 9_999)
        .await
        .expect("rotate");
    assert_eq!(
        rotated,
        RefreshOutcome::Rotated {
            user: u.id,
            device: device.id
        }
    );
    assert_eq!(
        dir.rotate_refresh_token(&t3, &token(), LATER, 20_001)
            .await
            .expect("rotate"),
        RefreshOutcome::Revoked
    );
}

/// After `revoke_device` (logout) the device's token is `Revoked`; unknown devices are `NotFound`.
pub async fn revoked_device_refresh_is_revoked(dir: Arc<dyn Directory>) {
    let u = user(&*dir, "logout").await;
    let t1 = token();
    let device = dir
        .create_device(u.id, "phone", &t1, LATER)
        .await
        .expect("create_device");
    dir.revoke_device(device.id).await.expect("revoke_device");
    assert!(
        dir.device(device.id)
            .await
            .expect("device")
            .expect("exists")
            .revoked
    );
    assert_eq!(
        dir.rotate_refresh_token(&t1, &token(), LATER, 1_000)
            .await
            .expect("rotate"),
        RefreshOutcome::Revoked
    );
    dir.revoke_device(device.id)
        .await
        .expect("revoking twice is fine");
    expect_err(
        dir.revoke_device(NO_DEVICE).await,
        Code::NotFound,
        "unknown device",
    );
}

/// Racing rotations of one token: exactly one wins, the others count as reuse.
pub async fn concurrent_rotations_rotate_once(dir: Arc<dyn Directory>) {
    let u = user(&*dir, "race").await;
    let t1 = token();
    let device = dir
        .create_device(u.id, "phone", &t1, LATER)
        .await
        .expect("create_device");
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (dir, t1) = (dir.clone(), t1.clone());
            tokio::spawn(async move { dir.rotate_refresh_token(&t1, &token(), LATER, 1_000).await })
        })
        .collect();
    let mut rotated = 0;
    for task in tasks {
        match task.await.expect("task").expect("rotate") {
            RefreshOutcome::Rotated { .. } => rotated += 1,
            RefreshOutcome::Reused { .. } | RefreshOutcome::Revoked => {}
            RefreshOutcome::Unknown => panic!("a stored token was Unknown"),
        }
    }
    assert_eq!(rotated, 1, "one token, one rotation");
    assert!(
        dir.device(device.id)
            .await
            .expect("device")
            .expect("exists")
            .revoked,
        "the losers revoked it"
    );
}

fn rel(other: UserId, relation: Relation, since_ms: i64) -> RelationRecord {
    RelationRecord {
        other,
        relation,
        since_ms,
    }
}

/// A request is outgoing for me and incoming for them until they ask back; both are idempotent.
pub async fn friend_request_then_accept(dir: Arc<dyn Directory>) {
    let a = user(&*dir, "friend").await;
    let b = user(&*dir, "friend").await;
    assert_eq!(
        dir.request_friend(a.id, b.id, 1_000)
            .await
            .expect("request"),
        Relation::Outgoing
    );
    assert_eq!(
        dir.request_friend(a.id, b.id, 2_000)
            .await
            .expect("request"),
        Relation::Outgoing
    );
    assert_eq!(
        dir.relations(a.id).await.expect("relations"),
        vec![rel(b.id, Relation::Outgoing, 1_000)]
    );
    assert_eq!(
        dir.relations(b.id).await.expect("relations"),
        vec![rel(a.id, Relation::Incoming, 1_000)]
    );
    assert!(!dir.are_friends(a.id, b.id).await.expect("are_friends"));
    assert!(dir.friend_ids(a.id).await.expect("friend_ids").is_empty());

    assert_eq!(
        dir.request_friend(b.id, a.id, 3_000).await.expect("accept"),
        Relation::Friends
    );
    assert_eq!(
        dir.relations(a.id).await.expect("relations"),
        vec![rel(b.id, Relation::Friends, 3_000)]
    );
    assert_eq!(
        dir.relations(b.id).await.expect("relations"),
        vec![rel(a.id, Relation::Friends, 3_000)]
    );
    assert!(dir.are_friends(a.id, b.id).await.expect("are_friends"));
    assert!(dir.are_friends(b.id, a.id).await.expect("are_friends"));
    assert_eq!(dir.friend_ids(a.id).await.expect("friend_ids"), vec![b.id]);
    assert_eq!(dir.friend_ids(b.id).await.expect("friend_ids"), vec![a.id]);

    assert_eq!(
        dir.request_friend(a.id, b.id, 4_000)
            .await
            .expect("request"),
        Relation::Friends
    );
    assert_eq!(
        dir.request_friend(b.id, a.id, 4_000)
            .await
            .expect("request"),
        Relation::Friends
    );
    assert_eq!(
        dir.relations(a.id).await.expect("relations"),
        vec![rel(b.id, Relation::Friends, 3_000)]
    );
}

/// Asking oneself is `InvalidArgument`, asking an unknown user `NotFound`; neither leaves a trace.
pub async fn friend_request_errors(dir: Arc<dyn Directory>) {
    let a = user(&*dir, "lonely").await;
    expect_err(
        dir.request_friend(a.id, a.id, 1_000).await,
        Code::InvalidArgument,
        "request to self",
    );
    expect_err(
        dir.request_friend(a.id, NO_USER, 1_000).await,
        Code::NotFound,
        "request to unknown user",
    );
    assert!(dir.relations(a.id).await.expect("relations").is_empty());
    assert!(!dir.are_friends(a.id, a.id).await.expect("are_friends"));
    assert!(
        !dir.remove_relation(a.id, a.id)
            .await
            .expect("remove_relation")
    );
}

/// Requests and friendships are removed by either side; removing nothing returns false.
pub async fn relations_are_removed_either_way(dir: Arc<dyn Directory>) {
    let a = user(&*dir, "remove").await;
    let b = user(&*dir, "remove").await;
    assert!(
        !dir.remove_relation(a.id, b.id)
            .await
            .expect("remove nothing")
    );
    // Withdrawn by the sender.
    dir.request_friend(a.id, b.id, 1_000)
        .await
        .expect("request");
    assert!(dir.remove_relation(a.id, b.id).await.expect("withdraw"));
    assert!(
        !dir.remove_relation(a.id, b.id)
            .await
            .expect("withdraw again")
    );
    assert!(dir.relations(b.id).await.expect("relations").is_empty());
    // Declined by the recipient.
    dir.request_friend(a.id, b.id, 2_000)
        .await
        .expect("request");
    assert!(dir.remove_relation(b.id, a.id).await.expect("decline"));
    assert!(dir.relations(a.id).await.expect("relations").is_empty());
    assert!(dir.relations(b.id).await.expect("relations").is_empty());
    // A friendship ended by either side.
    for (first, second, ender) in [(a.id, b.id, a.id), (b.id, a.id, b.id), (a.id, b.id, b.id)] {
        dir.request_friend(first, second, 3_000)
            .await
            .expect("request");
        dir.request_friend(second, first, 4_000)
            .await
            .expect("accept");
        let other = if ender == a.id { b.id } else { a.id };
        assert!(dir.remove_relation(ender, other).await.expect("unfriend"));
        assert!(!dir.are_friends(a.id, b.id).await.expect("are_friends"));
        assert!(dir.friend_ids(a.id).await.expect("friend_ids").is_empty());
        assert!(dir.relations(b.id).await.expect("relations").is_empty());
    }
    // After removal a new request starts over as outgoing.
    assert_eq!(
        dir.request_friend(b.id, a.id, 5_000)
            .await
            .expect("request"),
        Relation::Outgoing
    );
}

/// `friend_ids` lists friends only; `relations` lists every kind, each with the right side.
pub async fn friend_ids_lists_only_friends(dir: Arc<dyn Directory>) {
    let me = user(&*dir, "hub").await;
    let friend1 = user(&*dir, "hub").await;
    let friend2 = user(&*dir, "hub").await;
    let asked = user(&*dir, "hub").await;
    let asker = user(&*dir, "hub").await;
    for friend in [friend1.id, friend2.id] {
        dir.request_friend(friend, me.id, 1_000)
            .await
            .expect("request");
        dir.request_friend(me.id, friend, 2_000)
            .await
            .expect("accept");
    }
    dir.request_friend(me.id, asked.id, 3_000)
        .await
        .expect("request");
    dir.request_friend(asker.id, me.id, 4_000)
        .await
        .expect("request");
    assert_eq!(
        sorted(dir.friend_ids(me.id).await.expect("friend_ids")),
        sorted(vec![friend1.id, friend2.id])
    );
    let mut relations = dir.relations(me.id).await.expect("relations");
    relations.sort_by_key(|r| r.other);
    let mut expected = vec![
        rel(friend1.id, Relation::Friends, 2_000),
        rel(friend2.id, Relation::Friends, 2_000),
        rel(asked.id, Relation::Outgoing, 3_000),
        rel(asker.id, Relation::Incoming, 4_000),
    ];
    expected.sort_by_key(|r| r.other);
    assert_eq!(relations, expected);
    assert_eq!(dir.friend_ids(asked.id).await.expect("friend_ids"), vec![]);
}

/// Two users asking each other at the same moment end up friends, with no request left over.
pub async fn crossed_requests_make_friends(dir: Arc<dyn Directory>) {
    for _ in 0..5 {
        let a = user(&*dir, "crossed").await;
        let b = user(&*dir, "crossed").await;
        let (d1, d2) = (dir.clone(), dir.clone());
        let ab = tokio::spawn(async move { d1.request_friend(a.id, b.id, 1_000).await });
        let ba = tokio::spawn(async move { d2.request_friend(b.id, a.id, 1_000).await });
        let results = [
            ab.await.expect("task").expect("request"),
            ba.await.expect("task").expect("request"),
        ];
        assert!(
            results.contains(&Relation::Friends),
            "the later request accepts: {results:?}"
        );
        assert!(dir.are_friends(a.id, b.id).await.expect("are_friends"));
        assert_eq!(
            dir.relations(a.id).await.expect("relations"),
            vec![rel(b.id, Relation::Friends, 1_000)]
        );
        assert_eq!(
            dir.relations(b.id).await.expect("relations"),
            vec![rel(a.id, Relation::Friends, 1_000)]
        );
    }
}

/// A group holds its owner first, then the other members without repeats.
pub async fn groups_are_created(dir: Arc<dyn Directory>) {
    let owner = user(&*dir, "owner").await;
    let a = user(&*dir, "member").await;
    let b = user(&*dir, "member").await;
    let group = dir
        .create_group(owner.id, "Team", &[a.id, owner.id, b.id, a.id], 10, 5_000)
        .await
        .expect("create");
    assert_eq!(
        (group.name.as_str(), group.owner, group.created_at_ms),
        ("Team", owner.id, 5_000)
    );
    assert_eq!(group.members, vec![owner.id, a.id, b.id]);
    assert_eq!(
        dir.group(group.id).await.expect("group"),
        Some(group.clone())
    );
    assert_eq!(
        dir.member_ids(group.id).await.expect("member_ids"),
        group.members
    );
    for member in [owner.id, a.id, b.id] {
        assert!(dir.is_member(group.id, member).await.expect("is_member"));
    }
    let outsider = user(&*dir, "outsider").await;
    assert!(
        !dir.is_member(group.id, outsider.id)
            .await
            .expect("is_member")
    );
    let alone = dir
        .create_group(owner.id, "Solo", &[], 1, 6_000)
        .await
        .expect("create alone");
    assert_eq!(alone.members, vec![owner.id]);
    assert_ne!(alone.id, group.id);
}

/// Unknown users are `NotFound`, naming them; too many members is `ResourceExhausted`, naming
/// the limit; a refused group leaves nothing behind.
pub async fn group_creation_checks_users_and_limit(dir: Arc<dyn Directory>) {
    let owner = user(&*dir, "limits").await;
    let a = user(&*dir, "limits").await;
    let b = user(&*dir, "limits").await;
    let c = user(&*dir, "limits").await;
    let unknown = UserId(u64::MAX - 8);
    let msg = expect_err(
        dir.create_group(owner.id, "G", &[a.id, NO_USER, unknown], 10, 1_000)
            .await,
        Code::NotFound,
        "unknown members",
    );
    assert!(
        msg.contains(&NO_USER.to_string()) && msg.contains(&unknown.to_string()),
        "names the ids: {msg}"
    );
    let msg = expect_err(
        dir.create_group(owner.id, "G", &[a.id, b.id, c.id], 3, 1_000)
            .await,
        Code::ResourceExhausted,
        "limit",
    );
    assert!(msg.contains('3'), "names the limit: {msg}");
    assert!(
        dir.groups_of(owner.id).await.expect("groups_of").is_empty(),
        "nothing created"
    );
    assert!(
        dir.groups_of(a.id).await.expect("groups_of").is_empty(),
        "nothing created"
    );
    let full = dir
        .create_group(owner.id, "G", &[a.id, b.id, a.id, owner.id], 3, 1_000)
        .await
        .expect("exactly full");
    assert_eq!(
        full.members,
        vec![owner.id, a.id, b.id],
        "repeats do not count toward the limit"
    );
}

/// Adding skips existing members, keeps order, and checks users and the limit atomically.
pub async fn members_are_added(dir: Arc<dyn Directory>) {
    let owner = user(&*dir, "adder").await;
    let a = user(&*dir, "adder").await;
    let b = user(&*dir, "adder").await;
    let c = user(&*dir, "adder").await;
    let group = dir
        .create_group(owner.id, "G", &[a.id], 4, 1_000)
        .await
        .expect("create");
    let after = dir
        .add_members(group.id, &[a.id, c.id, owner.id, c.id], 4, 2_000)
        .await
        .expect("add");
    assert_eq!(after.members, vec![owner.id, a.id, c.id]);
    assert_eq!(
        (after.owner, after.name.as_str(), after.created_at_ms),
        (owner.id, "G", 1_000)
    );
    let same = dir
        .add_members(group.id, &[a.id, owner.id], 4, 2_500)
        .await
        .expect("add existing");
    assert_eq!(same.members, after.members);
    let msg = expect_err(
        dir.add_members(group.id, &[b.id, NO_USER], 4, 3_000).await,
        Code::NotFound,
        "unknown",
    );
    assert!(msg.contains(&NO_USER.to_string()), "names the id: {msg}");
    let d = user(&*dir, "adder").await;
    let msg = expect_err(
        dir.add_members(group.id, &[b.id, d.id], 4, 3_000).await,
        Code::ResourceExhausted,
        "limit",
    );
    assert!(msg.contains('4'), "names the limit: {msg}");
    assert_eq!(
        dir.member_ids(group.id).await.expect("member_ids"),
        after.members,
        "nothing added"
    );
    let full = dir
        .add_members(group.id, &[d.id], 4, 4_000)
        .await
        .expect("fill");
    assert_eq!(full.members, vec![owner.id, a.id, c.id, d.id]);
    expect_err(
        dir.add_members(NO_GROUP, &[b.id], 4, 5_000).await,
        Code::NotFound,
        "unknown group",
    );
}

/// Concurrent additions never push a group past its limit.
pub async fn concurrent_additions_respect_limit(dir: Arc<dyn Directory>) {
    let owner = user(&*dir, "crowd").await;
    let group = dir
        .create_group(owner.id, "Crowd", &[], 5, 1_000)
        .await
        .expect("create");
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let joiner = user(&*dir, "crowd").await;
        let dir = dir.clone();
        tasks.push(tokio::spawn(async move {
            dir.add_members(group.id, &[joiner.id], 5, 2_000).await
        }));
    }
    let (mut added, mut refused) = (0, 0);
    for task in tasks {
        match task.await.expect("task") {
            Ok(g) => {
                assert!(g.members.len() <= 5, "over the limit: {:?}", g.members);
                added += 1;
            }
            Err(e) if e.code() == Code::ResourceExhausted => refused += 1,
            Err(e) => panic!("unexpected error {e:?}"),
        }
    }
    assert_eq!((added, refused), (4, 6));
    assert_eq!(dir.member_ids(group.id).await.expect("member_ids").len(), 5);
}

/// Leaving: non-members are `NotFound`; an owner's leaving passes ownership to the
/// longest-standing member; the last member's leaving keeps the empty group and its owner.
pub async fn members_leave_and_ownership_passes(dir: Arc<dyn Directory>) {
    let owner = user(&*dir, "leaver").await;
    let a = user(&*dir, "leaver").await;
    let b = user(&*dir, "leaver").await;
    let stranger = user(&*dir, "leaver").await;
    let group = dir
        .create_group(owner.id, "G", &[a.id, b.id], 10, 1_000)
        .await
        .expect("create");
    expect_err(
        dir.remove_member(group.id, stranger.id).await,
        Code::NotFound,
        "not a member",
    );

    let g = dir.remove_member(group.id, a.id).await.expect("a leaves");
    assert_eq!(
        (g.owner, g.members.clone()),
        (owner.id, vec![owner.id, b.id])
    );
    assert!(!dir.is_member(group.id, a.id).await.expect("is_member"));
    assert!(dir.groups_of(a.id).await.expect("groups_of").is_empty());
    let g = dir
        .add_members(group.id, &[a.id], 10, 2_000)
        .await
        .expect("a rejoins");
    assert_eq!(
        g.members,
        vec![owner.id, b.id, a.id],
        "rejoining goes to the end"
    );

    let g = dir
        .remove_member(group.id, owner.id)
        .await
        .expect("owner leaves");
    assert_eq!(
        (g.owner, g.members.clone()),
        (b.id, vec![b.id, a.id]),
        "b has been there longest"
    );
    assert_eq!(
        dir.group(group.id)
            .await
            .expect("group")
            .expect("exists")
            .owner,
        b.id
    );
    let g = dir
        .remove_member(group.id, b.id)
        .await
        .expect("new owner leaves");
    assert_eq!((g.owner, g.members.clone()), (a.id, vec![a.id]));
    let g = dir
        .remove_member(group.id, a.id)
        .await
        .expect("last member leaves");
    assert_eq!(
        (g.owner, g.members.clone()),
        (a.id, vec![]),
        "the empty group keeps its owner"
    );
    let kept = dir
        .group(group.id)
        .await
        .expect("group")
        .expect("the empty group remains");
    assert_eq!((kept.name.as_str(), kept.members.len()), ("G", 0));
    assert_eq!(dir.member_ids(group.id).await.expect("member_ids"), vec![]);
    expect_err(
        dir.remove_member(group.id, a.id).await,
        Code::NotFound,
        "leaving twice",
    );
}

/// `groups_of` lists exactly the user's groups, as `group` returns them.
pub async fn groups_of_lists_memberships(dir: Arc<dyn Directory>) {
    let a = user(&*dir, "many").await;
    let b = user(&*dir, "many").await;
    let c = user(&*dir, "many").await;
    let g1 = dir
        .create_group(a.id, "One", &[b.id], 10, 1_000)
        .await
        .expect("create");
    let g2 = dir
        .create_group(b.id, "Two", &[c.id, a.id], 10, 2_000)
        .await
        .expect("create");
    let g3 = dir
        .create_group(c.id, "Three", &[], 10, 3_000)
        .await
        .expect("create");
    let ids =
        |groups: Vec<super::GroupRecord>| groups.into_iter().map(|g| g.id).collect::<HashSet<_>>();
    assert_eq!(
        ids(dir.groups_of(a.id).await.expect("groups_of")),
        HashSet::from([g1.id, g2.id])
    );
    assert_eq!(
        ids(dir.groups_of(b.id).await.expect("groups_of")),
        HashSet::from([g1.id, g2.id])
    );
    assert_eq!(
        ids(dir.groups_of(c.id).await.expect("groups_of")),
        HashSet::from([g2.id, g3.id])
    );
    for group in dir.groups_of(a.id).await.expect("groups_of") {
        assert_eq!(
            Some(group.clone()),
            dir.group(group.id).await.expect("group"),
            "full records"
        );
    }
    let loner = user(&*dir, "many").await;
    assert!(dir.groups_of(loner.id).await.expect("groups_of").is_empty());
}

/// Every group operation on an unknown group is `NotFound` (`group` returns `None`).
pub async fn unknown_group_is_not_found(dir: Arc<dyn Directory>) {
    let u = user(&*dir, "nogroup").await;
    assert_eq!(dir.group(NO_GROUP).await.expect("group"), None);
    expect_err(dir.member_ids(NO_GROUP).await, Code::NotFound, "member_ids");
    expect_err(
        dir.is_member(NO_GROUP, u.id).await,
        Code::NotFound,
        "is_member",
    );
    expect_err(
        dir.remove_member(NO_GROUP, u.id).await,
        Code::NotFound,
        "remove_member",
    );
    expect_err(
        dir.add_members(NO_GROUP, &[u.id], 10, 1_000).await,
        Code::NotFound,
        "add_members",
    );
}
