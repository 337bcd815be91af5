//! `groups`: list my groups, create one, add members, leave.

use anyhow::{Result, bail};
use clap::Subcommand;
use daehwa::v1::{
    AddMembersRequest, CreateGroupRequest, Group, LeaveGroupRequest, ListGroupsRequest,
};
use serde_json::json;

use crate::names::Names;
use crate::render::{clean, print_json, rfc3339};
use crate::session::{Ctx, Session};
use crate::target::parse_group_id;

/// Subcommands of `chat groups` (none: list).
#[derive(Debug, Subcommand)]
pub enum GroupsCmd {
    /// Create a group; the members must be your friends.
    Create {
        /// The group's name.
        name: String,
        /// Usernames of the first members besides you.
        members: Vec<String>,
    },
    /// Add your friends to a group you are in.
    Add {
        /// The group id (12, #12 or g:12).
        group_id: String,
        /// Usernames to add.
        #[arg(required = true)]
        usernames: Vec<String>,
    },
    /// Leave a group.
    Leave {
        /// The group id (12, #12 or g:12).
        group_id: String,
    },
}

/// Runs `chat groups [create|add|leave ...]`.
pub async fn run(ctx: &Ctx, cmd: Option<GroupsCmd>) -> Result<()> {
    let mut session = Session::open(ctx).await?;
    let mut names = Names::new(&session);
    match cmd {
        None => {
            let r = session
                .call(async |mut api| api.groups.list_groups(ListGroupsRequest {}).await)
                .await?;
            if r.groups.is_empty() && !ctx.json {
                println!("no groups yet: create one with `chat groups create NAME [USERNAME...]`");
            }
            for group in &r.groups {
                show(ctx, &mut session, &mut names, group).await;
            }
        }
        Some(GroupsCmd::Create { name, members }) => {
            let member_ids = names.lookup_ids(&mut session, &members).await?;
            let request = CreateGroupRequest { name, member_ids };
            let r = session
                .call(async |mut api| api.groups.create_group(request.clone()).await)
                .await?;
            let Some(group) = r.group else {
                bail!("the server returned no group")
            };
            if !ctx.json {
                print!("created ");
            }
            show(ctx, &mut session, &mut names, &group).await;
        }
        Some(GroupsCmd::Add {
            group_id,
            usernames,
        }) => {
            let group_id = parse_group_id(&group_id)?;
            let user_ids = names.lookup_ids(&mut session, &usernames).await?;
            let request = AddMembersRequest { group_id, user_ids };
            let r = session
                .call(async |mut api| api.groups.add_members(request.clone()).await)
                .await?;
            match r.group {
                Some(group) => show(ctx, &mut session, &mut names, &group).await,
                None if ctx.json => {
                    print_json(&json!({ "group_id": group_id, "added": usernames }))
                }
                None => println!("added {} to #{group_id}", usernames.join(", ")),
            }
        }
        Some(GroupsCmd::Leave { group_id }) => {
            let group_id = parse_group_id(&group_id)?;
            session
                .call(async |mut api| api.groups.leave_group(LeaveGroupRequest { group_id }).await)
                .await?;
            if ctx.json {
                print_json(&json!({ "group_id": group_id, "left": true }));
            } else {
                println!("left group #{group_id}");
            }
        }
    }
    Ok(())
}

/// Prints one group: `#12 name — 3 members: alice (owner), bob, carol  [g:12]`.
async fn show(ctx: &Ctx, session: &mut Session, names: &mut Names, group: &Group) {
    let mut members = Vec::with_capacity(group.member_ids.len());
    for &id in &group.member_ids {
        members.push(names.name(session, id).await);
    }
    let conversation_id = if group.conversation_id.is_empty() {
        daehwa::group_conversation_id(group.group_id)
    } else {
        group.conversation_id.clone()
    };
    if ctx.json {
        print_json(&json!({
            "group_id": group.group_id, "name": group.name, "owner_id": group.owner_id,
            "member_ids": group.member_ids, "members": members,
            "conversation_id": conversation_id, "created_at": rfc3339(group.created_at.as_ref()),
        }));
        return;
    }
    let listed: Vec<String> = group
        .member_ids
        .iter()
        .zip(&members)
        .map(|(&id, name)| {
            let name = clean(name);
            if id == group.owner_id {
                format!("{name} (owner)")
            } else {
                name.into_owned()
            }
        })
        .collect();
    let count = group.member_ids.len();
    let noun = if count == 1 { "member" } else { "members" };
    println!(
        "#{} {} — {count} {noun}: {}  [{conversation_id}]",
        group.group_id,
        clean(&group.name),
        listed.join(", ")
    );
}
