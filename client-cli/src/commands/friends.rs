//! `friends`: list friends and requests, add (request or accept) and remove (unfriend,
//! withdraw or decline).

use anyhow::Result;
use clap::Subcommand;
use daehwa::v1::{
    AddFriendRequest, FriendshipState, ListFriendsRequest, RemoveFriendRequest, User,
};
use serde_json::json;

use crate::names::Names;
use crate::render::{clean, print_json};
use crate::session::{Ctx, Session};

/// Subcommands of `chat friends` (none: list).
#[derive(Debug, Subcommand)]
pub enum FriendsCmd {
    /// Send a friend request, or accept the one they sent you.
    Add {
        /// Their username.
        username: String,
    },
    /// Unfriend, withdraw your request, or decline theirs.
    Remove {
        /// Their username.
        username: String,
    },
}

/// Runs `chat friends [add|remove USERNAME]`.
pub async fn run(ctx: &Ctx, cmd: Option<FriendsCmd>) -> Result<()> {
    let mut session = Session::open(ctx).await?;
    match cmd {
        None => list(ctx, &mut session).await,
        Some(FriendsCmd::Add { username }) => add(ctx, &mut session, &username).await,
        Some(FriendsCmd::Remove { username }) => remove(ctx, &mut session, &username).await,
    }
}

async fn list(ctx: &Ctx, session: &mut Session) -> Result<()> {
    let r = session
        .call(async |mut api| api.users.list_friends(ListFriendsRequest {}).await)
        .await?;
    let sections = [
        ("friends", "Friends", &r.friends),
        (
            "incoming",
            "Incoming requests (accept with `chat friends add USERNAME`)",
            &r.incoming_requests,
        ),
        ("outgoing", "Outgoing requests", &r.outgoing_requests),
    ];
    for (state, title, users) in sections {
        if ctx.json {
            for user in users.iter() {
                print_json(&user_json(user, state));
            }
            continue;
        }
        if users.is_empty() && state != "friends" {
            continue;
        }
        println!("{title} ({}):", users.len());
        for user in users.iter() {
            println!("  {}", user_line(user));
        }
    }
    Ok(())
}

async fn add(ctx: &Ctx, session: &mut Session, username: &str) -> Result<()> {
    let user = Names::default().lookup(session, username).await?;
    let id = user.user_id;
    let r = session
        .call(async |mut api| api.users.add_friend(AddFriendRequest { user_id: id }).await)
        .await?;
    let state = r
        .friendship
        .and_then(|f| FriendshipState::try_from(f.state).ok())
        .unwrap_or(FriendshipState::Unspecified);
    let word = state_word(state);
    if ctx.json {
        print_json(&user_json(&user, word));
        return Ok(());
    }
    let name = clean(&user.username);
    match state {
        FriendshipState::Friends => println!("you and {name} are now friends"),
        FriendshipState::Outgoing => println!("friend request sent to {name}"),
        FriendshipState::Incoming => println!("{name} has asked to be your friend"),
        FriendshipState::Unspecified => println!("friend request to {name} done"),
    }
    Ok(())
}

async fn remove(ctx: &Ctx, session: &mut Session, username: &str) -> Result<()> {
    let user = Names::default().lookup(session, username).await?;
    let id = user.user_id;
    session
        .call(async |mut api| {
            api.users
                .remove_friend(RemoveFriendRequest { user_id: id })
                .await
        })
        .await?;
    if ctx.json {
        print_json(&user_json(&user, "none"));
    } else {
        println!("{} is no longer a friend or request", clean(&user.username));
    }
    Ok(())
}

fn state_word(state: FriendshipState) -> &'static str {
    match state {
        FriendshipState::Friends => "friends",
        FriendshipState::Outgoing => "outgoing",
        FriendshipState::Incoming => "incoming",
        FriendshipState::Unspecified => "unknown",
    }
}

/// `username (Display Name)`.
pub fn user_line(user: &User) -> String {
    if user.display_name.is_empty() || user.display_name == user.username {
        clean(&user.username).into_owned()
    } else {
        format!("{} ({})", clean(&user.username), clean(&user.display_name))
    }
}

fn user_json(user: &User, state: &str) -> serde_json::Value {
    json!({
        "user_id": user.user_id, "username": user.username,
        "display_name": user.display_name, "state": state,
    })
}
