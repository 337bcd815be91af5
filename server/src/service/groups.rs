//! Groups: who may create, read, join and leave them. Members may add their friends; the
//! owner may remove anyone; anyone may leave.

use std::{collections::HashSet, sync::Arc};

use crate::{
    auth::tokens::now_ms,
    backend::{Directory, directory::GroupRecord},
    error::{Error, Result},
    ids::{GroupId, UserId},
    service::{member_cache::MemberCache, validate},
};

/// Group membership rules.
pub struct GroupService {
    directory: Arc<dyn Directory>,
    max_members: usize,
    /// The chat path's member lists: every change made here forgets the group's.
    members: Arc<MemberCache>,
}

impl GroupService {
    /// Group rules over `directory`, with groups of at most `max_members`; membership
    /// changes are forgotten in `members`.
    pub fn new(
        directory: Arc<dyn Directory>,
        max_members: usize,
        members: Arc<MemberCache>,
    ) -> Self {
        Self {
            directory,
            max_members,
            members,
        }
    }

    /// Creates a group of `owner` and `members` (friends of the owner).
    pub async fn create(
        &self,
        owner: UserId,
        name: &str,
        members: &[UserId],
    ) -> Result<GroupRecord> {
        let name = validate::short_text("group name", name, 100)?;
        if name.is_empty() {
            return Err(Error::invalid("group name must not be empty"));
        }
        let others = distinct(members.iter().copied().filter(|m| *m != owner));
        self.check_size(others.len() + 1)?;
        self.ensure_addable(owner, &others).await?;
        self.directory
            .create_group(owner, &name, &others, self.max_members, now_ms())
            .await
    }

    /// A group the caller belongs to.
    pub async fn get(&self, me: UserId, id: GroupId) -> Result<GroupRecord> {
        let group = self
            .directory
            .group(id)
            .await?
            .ok_or_else(|| Error::not_found(format!("no group with id {id}")))?;
        if !group.members.contains(&me) {
            return Err(Error::denied("you are not a member of this group"));
        }
        Ok(group)
    }

    /// The groups `me` belongs to.
    pub async fn list(&self, me: UserId) -> Result<Vec<GroupRecord>> {
        self.directory.groups_of(me).await
    }

    /// Adds friends of `me` to a group `me` belongs to; already-members are ignored.
    pub async fn add_members(
        &self,
        me: UserId,
        id: GroupId,
        users: &[UserId],
    ) -> Result<GroupRecord> {
        if users.is_empty() {
            return Err(Error::invalid("user_ids must not be empty"));
        }
        let group = self.get(me, id).await?;
        let current: HashSet<UserId> = group.members.iter().copied().collect();
        let new = distinct(users.iter().copied().filter(|u| !current.contains(u)));
        if new.is_empty() {
            return Ok(group);
        }
        // The directory checks the limit again in the transaction that adds them.
        self.check_size(current.len() + new.len())?;
        self.ensure_addable(me, &new).await?;
        let _forget = self.members.forget_after(id);
        self.directory
            .add_members(id, &new, self.max_members, now_ms())
            .await
    }

    /// Removes `user` (the owner removes anyone; others only themselves).
    pub async fn remove_member(
        &self,
        me: UserId,
        id: GroupId,
        user: UserId,
    ) -> Result<GroupRecord> {
        let group = self.get(me, id).await?;
        if user != me && group.owner != me {
            return Err(Error::denied(
                "only the group owner can remove other members",
            ));
        }
        if !group.members.contains(&user) {
            return Err(Error::not_found(format!(
                "user {user} is not a member of this group"
            )));
        }
        let _forget = self.members.forget_after(id);
        self.directory.remove_member(id, user).await
    }

    /// `me` leaves the group (ownership passes on if `me` owned it).
    pub async fn leave(&self, me: UserId, id: GroupId) -> Result<()> {
        self.get(me, id).await?;
        let _forget = self.members.forget_after(id);
        self.directory.remove_member(id, me).await.map(|_| ())
    }

    /// Refuses a group of `n` members early (before any friendship lookups).
    fn check_size(&self, n: usize) -> Result<()> {
        if n > self.max_members {
            return Err(Error::exhausted(format!(
                "a group holds at most {} members",
                self.max_members
            )));
        }
        Ok(())
    }

    /// New members must exist and be friends of whoever adds them.
    async fn ensure_addable(&self, adder: UserId, users: &[UserId]) -> Result<()> {
        let found: HashSet<UserId> = self
            .directory
            .users_by_ids(users)
            .await?
            .iter()
            .map(|u| u.id)
            .collect();
        if let Some(missing) = users.iter().find(|u| !found.contains(u)) {
            return Err(Error::not_found(format!("no user with id {missing}")));
        }
        let friends: HashSet<UserId> = self
            .directory
            .friend_ids(adder)
            .await?
            .into_iter()
            .collect();
        if let Some(stranger) = users.iter().find(|u| !friends.contains(u)) {
            return Err(Error::denied(format!(
                "user {stranger} is not your friend: you can only add friends to a group"
            )));
        }
        Ok(())
    }
}

/// The ids in first-seen order, each once.
fn distinct(ids: impl Iterator<Item = UserId>) -> Vec<UserId> {
    let mut seen = HashSet::new();
    ids.filter(|id| seen.insert(*id)).collect()
}
