//! Usernames: resolving `@username` to a user, and a per-run cache of user id → username so
//! that a history of hundreds of messages costs one GetUser per distinct sender.

use std::collections::HashMap;

use anyhow::{Result, anyhow};
use daehwa::v1::{GetUserRequest, User, get_user_request::Key};

use crate::session::Session;
use crate::target::Target;

/// User id → username, filled on demand.
#[derive(Debug, Default)]
pub struct Names {
    by_id: HashMap<u64, String>,
    groups: HashMap<u64, String>,
}

impl Names {
    /// A cache that already knows the logged-in user.
    pub fn new(session: &Session) -> Names {
        let mut names = Names::default();
        let me = session.profile();
        names.by_id.insert(me.user_id, me.username.clone());
        names
    }

    /// Remembers a user seen in some response.
    pub fn remember(&mut self, user: &User) {
        self.by_id.insert(user.user_id, user.username.clone());
    }

    /// Remembers a group's name, for conversation titles.
    pub fn remember_group(&mut self, group_id: u64, name: &str) {
        self.groups.insert(group_id, name.to_string());
    }

    /// The username of `id`, asking the server once; `user#<id>` when it cannot say.
    pub async fn name(&mut self, session: &mut Session, id: u64) -> String {
        if let Some(name) = self.by_id.get(&id) {
            return name.clone();
        }
        let name = match get_user(session, Key::UserId(id)).await {
            Ok(user) if !user.username.is_empty() => user.username,
            _ => format!("user#{id}"),
        };
        self.by_id.insert(id, name.clone());
        name
    }

    /// Looks a user up by username (NOT_FOUND from the server when there is none).
    pub async fn lookup(&mut self, session: &mut Session, username: &str) -> Result<User> {
        let username = username.trim_start_matches('@').to_lowercase();
        let user = get_user(session, Key::Username(username)).await?;
        self.remember(&user);
        Ok(user)
    }

    /// Resolves several usernames to user ids, in order.
    pub async fn lookup_ids(
        &mut self,
        session: &mut Session,
        usernames: &[String],
    ) -> Result<Vec<u64>> {
        let mut ids = Vec::with_capacity(usernames.len());
        for username in usernames {
            ids.push(self.lookup(session, username).await?.user_id);
        }
        Ok(ids)
    }

    /// The conversation id a [`Target`] stands for.
    pub async fn conversation_id(
        &mut self,
        session: &mut Session,
        target: &Target,
    ) -> Result<String> {
        Ok(match target {
            Target::User(username) => {
                let peer = self.lookup(session, username).await?;
                daehwa::dm_conversation_id(session.me(), peer.user_id)
            }
            Target::Group(group_id) => daehwa::group_conversation_id(*group_id),
            Target::Conversation(id) => id.clone(),
        })
    }

    /// A short human title for a conversation: `@peer` for a dm, `#<id>` for a group.
    pub async fn title(&mut self, session: &mut Session, conversation_id: &str) -> String {
        if let Some(group) = conversation_id.strip_prefix("g:") {
            let name = group.parse().ok().and_then(|id: u64| self.groups.get(&id));
            return match name {
                Some(name) => format!("#{group} {name}"),
                None => format!("#{group}"),
            };
        }
        let me = session.me();
        let peer = conversation_id
            .strip_prefix("dm:")
            .and_then(|rest| rest.split_once(':'))
            .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
            .map(|(a, b)| if a == me { b } else { a });
        match peer {
            Some(peer) => format!("@{}", self.name(session, peer).await),
            None => conversation_id.to_string(),
        }
    }
}

async fn get_user(session: &mut Session, key: Key) -> Result<User> {
    let response = session
        .call(async |mut api| {
            api.users
                .get_user(GetUserRequest {
                    key: Some(key.clone()),
                })
                .await
        })
        .await?;
    response
        .user
        .ok_or_else(|| anyhow!("the server returned no user"))
}
