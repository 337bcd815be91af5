//! `presence`: online/offline and last-active time of friends.

use anyhow::Result;
use daehwa::v1::{GetPresenceRequest, ListFriendsRequest};
use serde_json::json;

use crate::names::Names;
use crate::render::{self, clean, presence_word, print_json};
use crate::session::{Ctx, Session};

/// `chat presence [USERNAME...]`: the given users, or all friends.
pub async fn run(ctx: &Ctx, usernames: &[String]) -> Result<()> {
    let mut session = Session::open(ctx).await?;
    let mut names = Names::new(&session);
    let user_ids = if usernames.is_empty() {
        let friends = session
            .call(async |mut api| api.users.list_friends(ListFriendsRequest {}).await)
            .await?;
        for user in &friends.friends {
            names.remember(user);
        }
        friends.friends.iter().map(|u| u.user_id).collect()
    } else {
        names.lookup_ids(&mut session, usernames).await?
    };
    if user_ids.is_empty() {
        if !ctx.json {
            println!("no friends yet: add one with `chat friends add USERNAME`");
        }
        return Ok(());
    }
    let request = GetPresenceRequest { user_ids };
    let r = session
        .call(async |mut api| api.presence.get_presence(request.clone()).await)
        .await?;
    for p in &r.presences {
        let name = names.name(&mut session, p.user_id).await;
        let status = presence_word(p.status);
        if ctx.json {
            print_json(&json!({
                "user_id": p.user_id, "username": name, "status": status,
                "last_active_at": render::rfc3339(p.last_active_at.as_ref()),
            }));
            continue;
        }
        let seen = match &p.last_active_at {
            Some(ts) => format!(
                "last active {} ({})",
                render::datetime(Some(ts)),
                render::ago(ts.seconds)
            ),
            None => "last active: never seen".to_string(),
        };
        println!("{:<20} {:<8} {seen}", clean(&name), status);
    }
    Ok(())
}
