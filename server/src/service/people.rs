//! Profiles, settings and friendships.

use std::{collections::HashMap, sync::Arc};

use crate::{
    auth::tokens::now_ms,
    backend::{
        Directory,
        directory::{ProfileUpdate, Relation, UserRecord, UserSettings},
    },
    error::{Error, Result},
    ids::UserId,
    service::{friendship_cache::FriendshipCache, presence::PresenceService, validate},
};

/// A user's relationships, with the other users' profiles.
#[derive(Debug, Default)]
pub struct FriendLists {
    pub friends: Vec<UserRecord>,
    pub incoming: Vec<UserRecord>,
    pub outgoing: Vec<UserRecord>,
}

/// Which user a lookup names.
pub enum UserKey {
    Id(UserId),
    Name(String),
}

/// Profiles, settings and friends.
pub struct PeopleService {
    directory: Arc<dyn Directory>,
    presence: Arc<PresenceService>,
    /// The send path's friendship answers: an ended friendship is forgotten here.
    friendships: Arc<FriendshipCache>,
}

impl PeopleService {
    /// Profiles and friends over `directory`; visibility changes reach `presence`, ended
    /// friendships `friendships`.
    pub fn new(
        directory: Arc<dyn Directory>,
        presence: Arc<PresenceService>,
        friendships: Arc<FriendshipCache>,
    ) -> Self {
        Self {
            directory,
            presence,
            friendships,
        }
    }

    /// A user by id or username; `NotFound` otherwise.
    pub async fn user(&self, key: UserKey) -> Result<UserRecord> {
        let found = match &key {
            UserKey::Id(id) => self.directory.user_by_id(*id).await?,
            UserKey::Name(name) => match validate::username(name) {
                Ok(name) => self.directory.user_by_name(&name).await?,
                Err(_) => None,
            },
        };
        found.ok_or_else(|| match key {
            UserKey::Id(id) => Error::not_found(format!("no user with id {id}")),
            UserKey::Name(name) => Error::not_found(format!("no user named {name:?}")),
        })
    }

    /// Changes the fields that are set, after validating them.
    pub async fn update_profile(&self, me: UserId, update: ProfileUpdate) -> Result<UserRecord> {
        let update = ProfileUpdate {
            display_name: match update.display_name {
                Some(name) => {
                    let name = validate::short_text("display_name", &name, 64)?;
                    if name.is_empty() {
                        return Err(Error::invalid("display_name must not be empty"));
                    }
                    Some(name)
                }
                None => None,
            },
            status_message: update
                .status_message
                .map(|s| validate::short_text("status_message", &s, 140))
                .transpose()?,
            avatar_url: update
                .avatar_url
                .map(|u| validate::url("avatar_url", &u))
                .transpose()?,
        };
        self.directory.update_profile(me, &update).await
    }

    /// `me`'s settings.
    pub async fn settings(&self, me: UserId) -> Result<UserSettings> {
        self.directory.settings(me).await
    }

    /// Replaces settings; friends see a presence change when visibility flips.
    pub async fn update_settings(
        &self,
        me: UserId,
        settings: UserSettings,
    ) -> Result<UserSettings> {
        let before = self.directory.settings(me).await?;
        let after = self.directory.update_settings(me, settings).await?;
        if before.presence_visible != after.presence_visible {
            self.presence.visibility_changed(me, after.presence_visible);
        }
        Ok(after)
    }

    /// Sends or accepts a friend request.
    pub async fn add_friend(&self, me: UserId, other: UserId) -> Result<Relation> {
        if me == other {
            return Err(Error::invalid("you cannot befriend yourself"));
        }
        if self.directory.user_by_id(other).await?.is_none() {
            return Err(Error::not_found(format!("no user with id {other}")));
        }
        self.directory.request_friend(me, other, now_ms()).await
    }

    /// Ends a friendship or withdraws/declines a request; `NotFound` if there was none.
    pub async fn remove_friend(&self, me: UserId, other: UserId) -> Result<()> {
        if self.directory.remove_relation(me, other).await? {
            self.friendships.forget(me, other);
            Ok(())
        } else {
            Err(Error::not_found(format!(
                "no friendship or request with user {other}"
            )))
        }
    }

    /// Friends, incoming and outgoing requests, with profiles.
    pub async fn friends(&self, me: UserId) -> Result<FriendLists> {
        let relations = self.directory.relations(me).await?;
        let ids: Vec<UserId> = relations.iter().map(|r| r.other).collect();
        let mut profiles: HashMap<UserId, UserRecord> = self
            .directory
            .users_by_ids(&ids)
            .await?
            .into_iter()
            .map(|u| (u.id, u))
            .collect();
        let mut lists = FriendLists::default();
        for relation in relations {
            let Some(user) = profiles.remove(&relation.other) else {
                continue;
            };
            match relation.relation {
                Relation::Friends => lists.friends.push(user),
                Relation::Incoming => lists.incoming.push(user),
                Relation::Outgoing => lists.outgoing.push(user),
            }
        }
        Ok(lists)
    }
}
