//! UserService, GroupService and DiscoveryService end to end, plus the gRPC health service:
//! profiles and settings, the friend request life cycle, group membership rules (friends only,
//! the size limit, owner hand-over) and what discovery reports about this server.

mod common;

use std::fmt::Debug;

use common::{TestServer, TestUser, befriend, eventually};
use daehwa::v1::{self, FriendshipState, get_user_request::Key};
use tonic::{Code, Response, Status};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// Asserts that a call failed with `code` and a message that says something.
#[track_caller]
fn assert_code<T: Debug>(result: Result<Response<T>, Status>, code: Code, what: &str) -> Status {
    match result {
        Ok(response) => panic!("{what}: expected {code:?}, got {:?}", response.into_inner()),
        Err(status) => {
            assert_eq!(status.code(), code, "{what}: {status:?}");
            assert!(
                !status.message().is_empty(),
                "{what}: the status says what was wrong"
            );
            status
        }
    }
}

async fn get_me(user: &TestUser) -> v1::User {
    user.users()
        .get_me(v1::GetMeRequest {})
        .await
        .expect("GetMe")
        .into_inner()
        .user
        .expect("user")
}

async fn get_user(
    viewer: &TestUser,
    key: Option<Key>,
) -> Result<Response<v1::GetUserResponse>, Status> {
    viewer.users().get_user(v1::GetUserRequest { key }).await
}

async fn update_profile(
    user: &TestUser,
    request: v1::UpdateProfileRequest,
) -> Result<Response<v1::UpdateProfileResponse>, Status> {
    user.users().update_profile(request).await
}

async fn add_friend(
    user: &TestUser,
    other: u64,
) -> Result<Response<v1::AddFriendResponse>, Status> {
    user.users()
        .add_friend(v1::AddFriendRequest { user_id: other })
        .await
}

async fn remove_friend(
    user: &TestUser,
    other: u64,
) -> Result<Response<v1::RemoveFriendResponse>, Status> {
    user.users()
        .remove_friend(v1::RemoveFriendRequest { user_id: other })
        .await
}

/// ListFriends as (friends, incoming, outgoing) user ids.
async fn friend_ids(user: &TestUser) -> (Vec<u64>, Vec<u64>, Vec<u64>) {
    let lists = user
        .users()
        .list_friends(v1::ListFriendsRequest {})
        .await
        .expect("ListFriends")
        .into_inner();
    let ids = |users: Vec<v1::User>| users.into_iter().map(|u| u.user_id).collect::<Vec<_>>();
    (
        ids(lists.friends),
        ids(lists.incoming_requests),
        ids(lists.outgoing_requests),
    )
}

async fn create_group(
    owner: &TestUser,
    name: &str,
    members: &[u64],
) -> Result<Response<v1::CreateGroupResponse>, Status> {
    owner
        .groups()
        .create_group(v1::CreateGroupRequest {
            name: name.to_owned(),
            member_ids: members.to_vec(),
        })
        .await
}

async fn create_group_ok(owner: &TestUser, name: &str, members: &[u64]) -> v1::Group {
    create_group(owner, name, members)
        .await
        .expect("CreateGroup")
        .into_inner()
        .group
        .expect("group")
}

async fn get_group(user: &TestUser, id: u64) -> Result<Response<v1::GetGroupResponse>, Status> {
    user.groups()
        .get_group(v1::GetGroupRequest { group_id: id })
        .await
}

async fn get_group_ok(user: &TestUser, id: u64) -> v1::Group {
    get_group(user, id)
        .await
        .expect("GetGroup")
        .into_inner()
        .group
        .expect("group")
}

async fn add_members(
    user: &TestUser,
    group: u64,
    users: &[u64],
) -> Result<Response<v1::AddMembersResponse>, Status> {
    user.groups()
        .add_members(v1::AddMembersRequest {
            group_id: group,
            user_ids: users.to_vec(),
        })
        .await
}

async fn remove_member(
    user: &TestUser,
    group: u64,
    member: u64,
) -> Result<Response<v1::RemoveMemberResponse>, Status> {
    user.groups()
        .remove_member(v1::RemoveMemberRequest {
            group_id: group,
            user_id: member,
        })
        .await
}

async fn list_group_ids(user: &TestUser) -> Vec<u64> {
    user.groups()
        .list_groups(v1::ListGroupsRequest {})
        .await
        .expect("ListGroups")
        .into_inner()
        .groups
        .into_iter()
        .map(|g| g.group_id)
        .collect()
}

/// Signs up "owner", then `names` in order, and befriends the owner with each of them:
/// the people a group owner may add.
async fn owner_and_friends<const N: usize>(
    server: &TestServer,
    names: [&str; N],
) -> (TestUser, [TestUser; N]) {
    let owner = server.user("owner").await;
    let mut friends = Vec::with_capacity(N);
    for name in names {
        friends.push(server.user(name).await);
    }
    for friend in &friends {
        befriend(&owner, friend).await;
    }
    let Ok(friends) = friends.try_into() else {
        unreachable!("{N} users were signed up")
    };
    (owner, friends)
}

/// An id no user of this server has.
fn unknown_user_id(users: &[&TestUser]) -> u64 {
    users.iter().map(|u| u.user_id).max().unwrap_or(0) + 1_000_000
}

// ---------------------------------------------------------------------------------------------
// UserService: profiles and settings
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn get_me_and_get_user_by_id_and_by_username() {
    let server = TestServer::start().await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;

    let me = get_me(&alice).await;
    assert_eq!(me.user_id, alice.user_id);
    assert_eq!(me.username, alice.username);
    assert_eq!(me.display_name, format!("{} display", alice.username));
    assert!(me.created_at.is_some(), "created_at is set");

    let by_id = get_user(&bob, Some(Key::UserId(alice.user_id)))
        .await
        .expect("GetUser by id")
        .into_inner()
        .user
        .expect("user");
    assert_eq!(by_id, me, "GetUser by id returns the same public profile");

    let by_name = get_user(&bob, Some(Key::Username(alice.username.to_uppercase())))
        .await
        .expect("GetUser by username in upper case")
        .into_inner()
        .user
        .expect("user");
    assert_eq!(by_name, me, "usernames are case-insensitive");

    let bob_me = get_me(&bob).await;
    assert_eq!(bob_me.user_id, bob.user_id);
    assert_ne!(bob_me.user_id, me.user_id);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn get_user_not_found_and_invalid_argument() {
    let server = TestServer::start().await;
    let alice = server.user("alice").await;

    assert_code(
        get_user(&alice, Some(Key::UserId(unknown_user_id(&[&alice])))).await,
        Code::NotFound,
        "GetUser of an unknown id",
    );
    assert_code(
        get_user(&alice, Some(Key::UserId(u64::MAX))).await,
        Code::NotFound,
        "GetUser of id u64::MAX",
    );
    assert_code(
        get_user(&alice, Some(Key::Username("nobody_by_this_name".into()))).await,
        Code::NotFound,
        "GetUser of an unknown username",
    );
    assert_code(
        get_user(&alice, None).await,
        Code::InvalidArgument,
        "GetUser with neither id nor username",
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn update_profile_changes_only_the_fields_that_are_set() {
    let server = TestServer::start().await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let before = get_me(&alice).await;

    let updated = update_profile(
        &alice,
        v1::UpdateProfileRequest {
            display_name: None,
            status_message: Some("out for lunch".into()),
            avatar_url: None,
        },
    )
    .await
    .expect("UpdateProfile status only")
    .into_inner()
    .user
    .expect("user");
    assert_eq!(updated.status_message, "out for lunch");
    assert_eq!(
        updated.display_name, before.display_name,
        "unset display_name unchanged"
    );
    assert_eq!(
        updated.avatar_url, before.avatar_url,
        "unset avatar_url unchanged"
    );

    let updated = update_profile(
        &alice,
        v1::UpdateProfileRequest {
            display_name: Some("Alice A.".into()),
            status_message: None,
            avatar_url: Some("https://example.com/a.png".into()),
        },
    )
    .await
    .expect("UpdateProfile name and avatar")
    .into_inner()
    .user
    .expect("user");
    assert_eq!(updated.display_name, "Alice A.");
    assert_eq!(updated.avatar_url, "https://example.com/a.png");
    assert_eq!(
        updated.status_message, "out for lunch",
        "unset status_message unchanged"
    );
    assert_eq!(updated.username, before.username);
    assert_eq!(updated.user_id, before.user_id);

    // Others see the new profile; GetMe agrees.
    let seen = get_user(&bob, Some(Key::UserId(alice.user_id)))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(seen, updated);
    assert_eq!(get_me(&alice).await, updated);

    // Bad input is refused and changes nothing.
    assert_code(
        update_profile(
            &alice,
            v1::UpdateProfileRequest {
                display_name: Some(String::new()),
                ..Default::default()
            },
        )
        .await,
        Code::InvalidArgument,
        "empty display name",
    );
    assert_code(
        update_profile(
            &alice,
            v1::UpdateProfileRequest {
                display_name: Some("   ".into()),
                ..Default::default()
            },
        )
        .await,
        Code::InvalidArgument,
        "blank display name",
    );
    assert_code(
        update_profile(
            &alice,
            v1::UpdateProfileRequest {
                status_message: Some("x".repeat(1000)),
                ..Default::default()
            },
        )
        .await,
        Code::InvalidArgument,
        "too-long status message",
    );
    assert_code(
        update_profile(
            &alice,
            v1::UpdateProfileRequest {
                avatar_url: Some("ftp://example.com/a.png".into()),
                ..Default::default()
            },
        )
        .await,
        Code::InvalidArgument,
        "non-http avatar URL",
    );
    assert_code(
        update_profile(
            &alice,
            v1::UpdateProfileRequest {
                display_name: Some("Valid Name".into()),
                avatar_url: Some("javascript:alert(1)".into()),
                ..Default::default()
            },
        )
        .await,
        Code::InvalidArgument,
        "a bad field refuses the whole update",
    );
    assert_eq!(
        get_me(&alice).await,
        updated,
        "refused updates change nothing"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn settings_default_to_on_and_round_trip() {
    let server = TestServer::start().await;
    let alice = server.user("alice").await;
    let settings = alice
        .users()
        .get_settings(v1::GetSettingsRequest {})
        .await
        .unwrap()
        .into_inner()
        .settings
        .expect("settings");
    assert_eq!(
        settings,
        v1::Settings {
            notifications_enabled: true,
            presence_visible: true,
        },
        "defaults"
    );

    for wanted in [
        v1::Settings {
            notifications_enabled: false,
            presence_visible: true,
        },
        v1::Settings {
            notifications_enabled: true,
            presence_visible: false,
        },
        v1::Settings {
            notifications_enabled: false,
            presence_visible: false,
        },
    ] {
        let answered = alice
            .users()
            .update_settings(v1::UpdateSettingsRequest {
                settings: Some(wanted),
            })
            .await
            .expect("UpdateSettings")
            .into_inner()
            .settings
            .expect("settings");
        assert_eq!(answered, wanted, "UpdateSettings answers the new settings");
        let stored = alice
            .users()
            .get_settings(v1::GetSettingsRequest {})
            .await
            .unwrap()
            .into_inner()
            .settings
            .expect("settings");
        assert_eq!(stored, wanted, "GetSettings returns what was stored");
    }
    server.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// UserService: friends
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn friend_request_is_outgoing_then_incoming_then_friends_on_both_sides() {
    let server = TestServer::start().await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;

    let asked = add_friend(&alice, bob.user_id)
        .await
        .expect("AddFriend")
        .into_inner()
        .friendship
        .expect("friendship");
    assert_eq!(asked.user_id, bob.user_id);
    assert_eq!(asked.state, FriendshipState::Outgoing as i32);

    assert_eq!(
        friend_ids(&alice).await,
        (vec![], vec![], vec![bob.user_id]),
        "alice sees her outgoing request"
    );
    assert_eq!(
        friend_ids(&bob).await,
        (vec![], vec![alice.user_id], vec![]),
        "bob sees an incoming request"
    );

    // Asking again while pending stays a request.
    let again = add_friend(&alice, bob.user_id)
        .await
        .expect("AddFriend again")
        .into_inner()
        .friendship
        .expect("friendship");
    assert_eq!(again.state, FriendshipState::Outgoing as i32);

    let accepted = add_friend(&bob, alice.user_id)
        .await
        .expect("accept")
        .into_inner()
        .friendship
        .expect("friendship");
    assert_eq!(accepted.user_id, alice.user_id);
    assert_eq!(accepted.state, FriendshipState::Friends as i32);
    assert!(accepted.since.is_some());

    assert_eq!(
        friend_ids(&alice).await,
        (vec![bob.user_id], vec![], vec![])
    );
    assert_eq!(
        friend_ids(&bob).await,
        (vec![alice.user_id], vec![], vec![])
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn add_friend_refuses_oneself_and_unknown_users() {
    let server = TestServer::start().await;
    let alice = server.user("alice").await;
    assert_code(
        add_friend(&alice, alice.user_id).await,
        Code::InvalidArgument,
        "AddFriend of oneself",
    );
    assert_code(
        add_friend(&alice, unknown_user_id(&[&alice])).await,
        Code::NotFound,
        "AddFriend of an unknown user",
    );
    assert_eq!(
        friend_ids(&alice).await,
        (vec![], vec![], vec![]),
        "nothing was recorded"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn remove_friend_ends_friendships_and_declines_requests() {
    let server = TestServer::start().await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let carol = server.user("carol").await;

    befriend(&alice, &bob).await;
    let dm = alice.dm_with(&bob);
    alice.send_text(&dm, "while friends").await;
    remove_friend(&bob, alice.user_id)
        .await
        .expect("RemoveFriend");
    // The send path keeps recent friendship answers: an ended friendship must still stop
    // direct messages at once, both ways.
    for (from, to) in [(&alice, &bob), (&bob, &alice)] {
        let refused = from
            .try_send_text(&from.dm_with(to), "after-unfriend", "no longer friends")
            .await
            .expect_err("a direct message after the friendship ended");
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    }
    assert_eq!(friend_ids(&alice).await, (vec![], vec![], vec![]));
    assert_eq!(friend_ids(&bob).await, (vec![], vec![], vec![]));
    assert_code(
        remove_friend(&alice, bob.user_id).await,
        Code::NotFound,
        "RemoveFriend of an ended friendship",
    );
    assert_code(
        remove_friend(&alice, carol.user_id).await,
        Code::NotFound,
        "RemoveFriend of someone never related",
    );

    // Declining: carol asks alice, alice removes the request.
    add_friend(&carol, alice.user_id).await.expect("request");
    assert_eq!(
        friend_ids(&alice).await,
        (vec![], vec![carol.user_id], vec![])
    );
    remove_friend(&alice, carol.user_id)
        .await
        .expect("decline with RemoveFriend");
    assert_eq!(friend_ids(&alice).await, (vec![], vec![], vec![]));
    assert_eq!(
        friend_ids(&carol).await,
        (vec![], vec![], vec![]),
        "the declined request is gone for the asker too"
    );
    // After a decline, carol's new request is a fresh request, not an acceptance.
    let fresh = add_friend(&carol, alice.user_id)
        .await
        .unwrap()
        .into_inner()
        .friendship
        .unwrap();
    assert_eq!(fresh.state, FriendshipState::Outgoing as i32);

    // Withdrawing: bob asks carol, then takes it back.
    add_friend(&bob, carol.user_id).await.expect("request");
    remove_friend(&bob, carol.user_id)
        .await
        .expect("withdraw with RemoveFriend");
    assert_eq!(friend_ids(&bob).await, (vec![], vec![], vec![]));
    assert_eq!(
        friend_ids(&carol).await,
        (vec![], vec![], vec![alice.user_id])
    );
    server.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// GroupService
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn create_group_with_friends_lists_the_owner_first() {
    let server = TestServer::start().await;
    let (owner, [bob, carol]) = owner_and_friends(&server, ["bob", "carol"]).await;

    let group = create_group_ok(&owner, "hikers", &[carol.user_id, bob.user_id]).await;
    assert_eq!(group.name, "hikers");
    assert_eq!(group.owner_id, owner.user_id);
    assert_eq!(
        group.member_ids,
        vec![owner.user_id, carol.user_id, bob.user_id],
        "owner first, then the members in the order given"
    );
    assert_eq!(group.conversation_id, format!("g:{}", group.group_id));
    assert!(group.created_at.is_some());

    // Every member can read it and sees the same group.
    for member in [&owner, &bob, &carol] {
        assert_eq!(get_group_ok(member, group.group_id).await, group);
        assert_eq!(list_group_ids(member).await, vec![group.group_id]);
    }

    // The owner listed among the members, or a member twice, is not counted twice.
    let dup = create_group_ok(&owner, "dups", &[bob.user_id, owner.user_id, bob.user_id]).await;
    assert_eq!(dup.member_ids, vec![owner.user_id, bob.user_id]);

    // A group of one is allowed; ListGroups grows.
    let solo = create_group_ok(&owner, "just me", &[]).await;
    assert_eq!(solo.member_ids, vec![owner.user_id]);
    let mut listed = list_group_ids(&owner).await;
    listed.sort_unstable();
    let mut expected = vec![group.group_id, dup.group_id, solo.group_id];
    expected.sort_unstable();
    assert_eq!(listed, expected);
    assert_eq!(list_group_ids(&carol).await, vec![group.group_id]);

    // Members can talk in it.
    bob.send_text(&group.conversation_id, "hello group").await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn create_group_refusals() {
    let server = TestServer::start_with(|c| c.max_group_members = 3).await;
    let (owner, friends) = owner_and_friends(&server, ["f1", "f2", "f3"]).await;
    let stranger = server.user("stranger").await;

    assert_code(
        create_group(&owner, "g", &[friends[0].user_id, stranger.user_id]).await,
        Code::PermissionDenied,
        "CreateGroup with a non-friend",
    );
    // A pending request is not a friendship.
    add_friend(&owner, stranger.user_id).await.unwrap();
    assert_code(
        create_group(&owner, "g", &[stranger.user_id]).await,
        Code::PermissionDenied,
        "CreateGroup with someone who has not accepted",
    );
    assert_code(
        create_group(&owner, "g", &[unknown_user_id(&[&owner, &stranger])]).await,
        Code::NotFound,
        "CreateGroup with an unknown user",
    );
    assert_code(
        create_group(&owner, "", &[friends[0].user_id]).await,
        Code::InvalidArgument,
        "CreateGroup with an empty name",
    );
    assert_code(
        create_group(&owner, "   ", &[friends[0].user_id]).await,
        Code::InvalidArgument,
        "CreateGroup with a blank name",
    );
    let all: Vec<u64> = friends.iter().map(|f| f.user_id).collect();
    assert_code(
        create_group(&owner, "too big", &all).await,
        Code::ResourceExhausted,
        "CreateGroup beyond max_group_members (3)",
    );
    assert!(
        list_group_ids(&owner).await.is_empty(),
        "no refused group was created"
    );

    // Exactly the limit is fine.
    let full = create_group_ok(&owner, "full", &all[..2]).await;
    assert_eq!(full.member_ids.len(), 3);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn group_limit_counts_each_member_once() {
    // Clients often list the owner among the members, or repeat an id: the group is the set.
    let server = TestServer::start_with(|c| c.max_group_members = 3).await;
    let (owner, [bob, carol]) = owner_and_friends(&server, ["bob", "carol"]).await;

    let group = create_group(
        &owner,
        "exactly full",
        &[owner.user_id, bob.user_id, carol.user_id],
    )
    .await
    .expect("a group of 3 with max_group_members = 3, the owner also listed as a member")
    .into_inner()
    .group
    .unwrap();
    assert_eq!(
        group.member_ids,
        vec![owner.user_id, bob.user_id, carol.user_id]
    );

    let small = create_group_ok(&owner, "pair", &[bob.user_id]).await;
    let grown = add_members(
        &owner,
        small.group_id,
        &[carol.user_id, carol.user_id, bob.user_id, owner.user_id],
    )
    .await
    .expect("adding one new member (listed with repeats and existing members) to a group of 2")
    .into_inner()
    .group
    .unwrap();
    assert_eq!(
        grown.member_ids,
        vec![owner.user_id, bob.user_id, carol.user_id]
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn get_group_is_for_members_only() {
    let server = TestServer::start().await;
    let (owner, [bob, outsider]) = owner_and_friends(&server, ["bob", "outsider"]).await;
    let group = create_group_ok(&owner, "club", &[bob.user_id]).await;

    assert_code(
        get_group(&outsider, group.group_id).await,
        Code::PermissionDenied,
        "GetGroup by a non-member (even a friend of the owner)",
    );
    assert_code(
        get_group(&owner, group.group_id + 1_000_000).await,
        Code::NotFound,
        "GetGroup of an unknown group",
    );
    assert!(list_group_ids(&outsider).await.is_empty());
    assert_code(
        outsider
            .try_send_text(&group.conversation_id, "c-outsider", "let me in")
            .await
            .map(Response::new),
        Code::PermissionDenied,
        "a non-member cannot send to the group",
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn add_members_adds_friends_of_any_member_up_to_the_limit() {
    let server = TestServer::start_with(|c| c.max_group_members = 3).await;
    let owner = server.user("owner").await;
    let member = server.user("member").await;
    let members_friend = server.user("mfriend").await;
    let owners_friend = server.user("ofriend").await;
    let stranger = server.user("stranger").await;
    befriend(&owner, &member).await;
    befriend(&member, &members_friend).await;
    befriend(&owner, &owners_friend).await;
    befriend(&owner, &stranger).await;

    let group = create_group_ok(&owner, "club", &[member.user_id]).await;

    assert_code(
        add_members(&member, group.group_id, &[owners_friend.user_id]).await,
        Code::PermissionDenied,
        "a member adds someone who is not their friend",
    );
    assert_code(
        add_members(&members_friend, group.group_id, &[members_friend.user_id]).await,
        Code::PermissionDenied,
        "a non-member adds themselves",
    );
    assert_code(
        add_members(
            &owner,
            group.group_id,
            &[owners_friend.user_id, stranger.user_id],
        )
        .await,
        Code::ResourceExhausted,
        "adding two to a group of two with max_group_members = 3",
    );
    assert_code(
        add_members(&owner, group.group_id + 1_000_000, &[owners_friend.user_id]).await,
        Code::NotFound,
        "AddMembers to an unknown group",
    );
    assert_code(
        add_members(&owner, group.group_id, &[unknown_user_id(&[&stranger])]).await,
        Code::NotFound,
        "AddMembers of an unknown user",
    );
    assert_code(
        add_members(&owner, group.group_id, &[]).await,
        Code::InvalidArgument,
        "AddMembers of nobody",
    );
    assert_eq!(
        get_group_ok(&owner, group.group_id).await.member_ids,
        vec![owner.user_id, member.user_id],
        "refused additions change nothing"
    );

    let grown = add_members(&member, group.group_id, &[members_friend.user_id])
        .await
        .expect("a member adds their friend")
        .into_inner()
        .group
        .expect("group");
    assert_eq!(
        grown.member_ids,
        vec![owner.user_id, member.user_id, members_friend.user_id]
    );
    assert_eq!(grown.owner_id, owner.user_id);
    assert_eq!(
        get_group_ok(&members_friend, group.group_id).await,
        grown,
        "the new member can read the group"
    );
    assert_eq!(list_group_ids(&members_friend).await, vec![group.group_id]);

    // Adding an existing member again is not growth.
    let same = add_members(&owner, group.group_id, &[member.user_id])
        .await
        .expect("re-adding a member")
        .into_inner()
        .group
        .unwrap();
    assert_eq!(same.member_ids, grown.member_ids);

    assert_code(
        add_members(&owner, group.group_id, &[owners_friend.user_id]).await,
        Code::ResourceExhausted,
        "adding to a full group",
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn remove_member_is_for_the_owner_or_oneself() {
    let server = TestServer::start().await;
    let (owner, [bob, carol, dave]) = owner_and_friends(&server, ["bob", "carol", "dave"]).await;
    let group = create_group_ok(&owner, "club", &[bob.user_id, carol.user_id, dave.user_id]).await;

    assert_code(
        remove_member(&bob, group.group_id, carol.user_id).await,
        Code::PermissionDenied,
        "a member who is not the owner removes someone else",
    );
    assert_code(
        remove_member(&bob, group.group_id, owner.user_id).await,
        Code::PermissionDenied,
        "a member removes the owner",
    );

    let after = remove_member(&owner, group.group_id, carol.user_id)
        .await
        .expect("the owner removes a member")
        .into_inner()
        .group
        .unwrap();
    assert_eq!(
        after.member_ids,
        vec![owner.user_id, bob.user_id, dave.user_id]
    );
    assert_code(
        get_group(&carol, group.group_id).await,
        Code::PermissionDenied,
        "a removed member can no longer read the group",
    );
    assert!(list_group_ids(&carol).await.is_empty());
    assert_code(
        carol
            .try_send_text(&group.conversation_id, "c-removed", "still here?")
            .await
            .map(Response::new),
        Code::PermissionDenied,
        "a removed member can no longer send",
    );
    assert_code(
        remove_member(&owner, group.group_id, carol.user_id).await,
        Code::NotFound,
        "removing someone who is no longer a member",
    );

    let after = remove_member(&dave, group.group_id, dave.user_id)
        .await
        .expect("a member removes themselves")
        .into_inner()
        .group
        .unwrap();
    assert_eq!(after.member_ids, vec![owner.user_id, bob.user_id]);
    assert_code(
        get_group(&dave, group.group_id).await,
        Code::PermissionDenied,
        "who removed themselves is out",
    );
    server.stop().await.unwrap();
}

/// The send path keeps recent member lists; a change made through this server applies to
/// the very next message: a new member sends and receives at once, a removed one can neither.
#[tokio::test]
async fn membership_changes_apply_to_the_next_message() {
    let server = TestServer::start().await;
    let (owner, [bob, carol]) = owner_and_friends(&server, ["bob", "carol"]).await;
    let group = create_group_ok(&owner, "club", &[bob.user_id]).await;
    let conversation = group.conversation_id.as_str();
    // Sending reads (and keeps) the member list.
    bob.send_text(conversation, "first").await;
    let mut bobs_stream = bob.connect().await;
    let mut carols_stream = carol.connect().await;
    assert_code(
        carol
            .try_send_text(conversation, "c-early", "may I?")
            .await
            .map(Response::new),
        Code::PermissionDenied,
        "a non-member sends to a group (the kept list is checked against the directory)",
    );

    add_members(&owner, group.group_id, &[carol.user_id])
        .await
        .expect("add carol");
    // The owner's send would find the kept list without carol, had the add not dropped it.
    owner.send_text(conversation, "welcome").await;
    assert_eq!(
        common::text_of(&carols_stream.next_message().await),
        "welcome",
        "a member added a moment ago receives live"
    );
    assert_eq!(
        common::text_of(&bobs_stream.next_message().await),
        "welcome"
    );
    carol.send_text(conversation, "hello from carol").await;
    assert_eq!(
        common::text_of(&bobs_stream.next_message().await),
        "hello from carol",
        "a member added a moment ago sends to everyone"
    );

    remove_member(&owner, group.group_id, bob.user_id)
        .await
        .expect("remove bob");
    assert_code(
        bob.try_send_text(conversation, "b-removed", "still here?")
            .await
            .map(Response::new),
        Code::PermissionDenied,
        "a member removed a moment ago can no longer send",
    );
    owner.send_text(conversation, "bob has left").await;
    assert_eq!(
        common::text_of(&carols_stream.next_message().await),
        "bob has left"
    );
    // Deliveries reach a stream in the order they were offered, and the group message was
    // offered before the owner's send returned: bob's next message must be this one.
    let direct = owner.dm_with(&bob);
    owner.send_text(&direct, "just you now").await;
    let next = bobs_stream.next_message().await;
    assert_eq!(
        (next.conversation_id.as_str(), common::text_of(&next)),
        (direct.as_str(), "just you now"),
        "a removed member no longer receives the group's messages"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn owner_leaving_hands_the_group_to_the_longest_standing_member() {
    let server = TestServer::start().await;
    let (owner, [early, later, last]) =
        owner_and_friends(&server, ["early", "later", "last"]).await;
    // `later` signed up after `early` but joins first: joining order, not user ids, decides.
    let group = create_group_ok(&owner, "club", &[later.user_id, early.user_id]).await;
    add_members(&owner, group.group_id, &[last.user_id])
        .await
        .expect("add a later member");
    owner
        .send_text(&group.conversation_id, "before leaving")
        .await;

    owner
        .groups()
        .leave_group(v1::LeaveGroupRequest {
            group_id: group.group_id,
        })
        .await
        .expect("the owner leaves");

    let now = get_group_ok(&early, group.group_id).await;
    assert_eq!(
        now.owner_id, later.user_id,
        "ownership passes to the longest-standing member"
    );
    assert_eq!(
        now.member_ids,
        vec![later.user_id, early.user_id, last.user_id]
    );
    assert_code(
        get_group(&owner, group.group_id).await,
        Code::PermissionDenied,
        "who left cannot GetGroup",
    );
    assert!(list_group_ids(&owner).await.is_empty());
    assert_code(
        owner
            .try_send_text(&group.conversation_id, "c-after-leaving", "hello?")
            .await
            .map(Response::new),
        Code::PermissionDenied,
        "who left cannot send to the group",
    );
    assert_code(
        owner
            .groups()
            .leave_group(v1::LeaveGroupRequest {
                group_id: group.group_id,
            })
            .await,
        Code::PermissionDenied,
        "leaving again",
    );

    // The new owner has the owner's powers.
    remove_member(&later, group.group_id, last.user_id)
        .await
        .expect("the new owner removes a member");

    // A member who is not the owner leaves: ownership stays.
    early
        .groups()
        .leave_group(v1::LeaveGroupRequest {
            group_id: group.group_id,
        })
        .await
        .expect("a member leaves");
    let now = get_group_ok(&later, group.group_id).await;
    assert_eq!(now.owner_id, later.user_id);
    assert_eq!(now.member_ids, vec![later.user_id]);
    assert_code(
        early
            .try_send_text(&group.conversation_id, "c-early-left", "hello?")
            .await
            .map(Response::new),
        Code::PermissionDenied,
        "a member who left cannot send",
    );
    later.send_text(&group.conversation_id, "still mine").await;
    server.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// DiscoveryService and health
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn discovery_names_this_server_and_counts_its_live_streams() {
    let server = TestServer::start().await;
    let alice = server.user("alice").await;

    let chosen = alice
        .discovery()
        .get_chat_server(v1::GetChatServerRequest {})
        .await
        .expect("GetChatServer")
        .into_inner();
    assert_eq!(chosen.grpc_endpoint, server.addr.to_string());
    assert_eq!(chosen.server_id, server.config.server_id);

    let list = |user: TestUser| async move {
        user.discovery()
            .list_chat_servers(v1::ListChatServersRequest {})
            .await
            .expect("ListChatServers")
            .into_inner()
            .servers
    };
    let servers = list(alice.clone()).await;
    assert_eq!(servers.len(), 1, "one server: {servers:?}");
    assert_eq!(servers[0].server_id, chosen.server_id);
    assert_eq!(servers[0].grpc_endpoint, server.addr.to_string());
    assert_eq!(servers[0].websocket_url, chosen.websocket_url);
    assert!(servers[0].healthy);
    assert_eq!(servers[0].connections, 0, "no live stream yet");

    let stream = alice.connect().await;
    eventually("ListChatServers to count the Connect stream", || {
        let alice = alice.clone();
        async move {
            let servers = list(alice).await;
            (servers.len() == 1 && servers[0].healthy && servers[0].connections == 1).then_some(())
        }
    })
    .await;

    drop(stream);
    eventually("ListChatServers to forget the closed stream", || {
        let alice = alice.clone();
        async move {
            let servers = list(alice).await;
            (servers.len() == 1 && servers[0].connections == 0).then_some(())
        }
    })
    .await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn discovery_needs_a_token() {
    let server = TestServer::start().await;
    let mut anonymous =
        v1::discovery_service_client::DiscoveryServiceClient::new(server.channel().await);
    assert_code(
        anonymous.get_chat_server(v1::GetChatServerRequest {}).await,
        Code::Unauthenticated,
        "GetChatServer without a token",
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn health_reports_serving_without_a_token() {
    let server = TestServer::start().await;
    let mut health = HealthClient::new(server.channel().await);
    for service in ["", "chat.v1.ChatService"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .unwrap_or_else(|e| panic!("health check of {service:?}: {e:?}"))
            .into_inner()
            .status;
        assert_eq!(
            status,
            ServingStatus::Serving as i32,
            "health of {service:?}"
        );
    }
    assert_code(
        health
            .check(HealthCheckRequest {
                service: "chat.v1.NoSuchService".into(),
            })
            .await,
        Code::NotFound,
        "health of an unknown service",
    );
    server.stop().await.unwrap();
}
