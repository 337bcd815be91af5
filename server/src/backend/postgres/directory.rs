//! [`PostgresDirectory`]: the [`Directory`] on PostgreSQL, for servers that share one
//! directory. The behaviour is the SQLite directory's, to the letter (both pass the same
//! conformance suite, and the choices the trait leaves open are made the same way: an emptied
//! group stays with its owner, unknown users' settings are `NotFound`, a token presented at or
//! after its expiry is `Revoked`, rotated-out token hashes are kept).
//!
//! This file owns the pool and the trait; the queries live in `accounts` (users, settings,
//! devices, refresh tokens), `relations` (friend requests and friendships) and `groups`.
//!
//! # Atomicity across servers
//! SQLite gets atomic read-modify-writes from its single writer; here many servers write at
//! once, so each read-modify-write runs in one READ COMMITTED transaction that first locks
//! the rows its decision depends on, and only then reads them (a statement after the lock sees
//! everything committed before it was granted):
//! - a refresh rotation locks the token row and its device (`SELECT … FOR UPDATE`): of racing
//!   rotations one rotates, the others then see the token used and revoke the device;
//! - a friend request locks both users' rows, lower id first (`FOR NO KEY UPDATE`): crossed
//!   requests are serialized, so the second sees the first and makes the friendship;
//! - a group change locks the group row (`FOR NO KEY UPDATE`, which unlike `FOR UPDATE` does
//!   not block foreign-key checks of other rows) before counting members, so concurrent
//!   additions cannot pass the size limit.
//!
//! Locks are always taken in one order (token before device; users by id; one group), so
//! these transactions cannot deadlock each other. Reads that return a group with its members
//! are one statement (one snapshot).

mod accounts;
mod groups;
mod relations;

use async_trait::async_trait;
use sqlx::{PgPool, Postgres, Transaction};

use super::{Component, PostgresOptions, connect, from_sql_id, sql_id};
use crate::{
    backend::directory::{
        DeviceRecord, Directory, GroupRecord, ProfileUpdate, RefreshOutcome, Relation,
        RelationRecord, UserRecord, UserSettings,
    },
    error::{Error, Result},
    ids::{DeviceId, GroupId, UserId},
};

/// The PostgreSQL-backed [`Directory`]. Cheap to clone (a pool handle); see the module doc.
#[derive(Debug, Clone)]
pub struct PostgresDirectory {
    /// The connections; `pub(super)` so the backend's tests can inspect sessions.
    pub(super) pool: PgPool,
}

impl PostgresDirectory {
    /// Connects to `url` with default pool settings and brings the directory schema up to
    /// date; `Unavailable` when PostgreSQL cannot be reached.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, &PostgresOptions::default()).await
    }

    /// [`PostgresDirectory::connect`] with explicit pool settings.
    pub async fn connect_with(url: &str, options: &PostgresOptions) -> Result<Self> {
        let pool = connect(url, Component::Directory, options).await?;
        Ok(Self { pool })
    }

    /// Closes every connection, waiting for running calls; later calls fail `Unavailable`.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Starts a READ COMMITTED transaction (the callers lock what they decide on).
    async fn begin(&self) -> Result<Transaction<'static, Postgres>> {
        self.pool.begin().await.map_err(db_err)
    }
}

/// Maps an unexpected sqlx error of the directory (see the parent module's doc).
fn db_err(e: sqlx::Error) -> Error {
    super::db_err(Component::Directory, e)
}

/// The current time in milliseconds since the Unix epoch, for rows whose call carries none.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Ids as one `BIGINT[]` parameter (`= ANY($n)`), so a list of any length is one statement.
fn sql_ids(ids: &[UserId]) -> Vec<i64> {
    ids.iter().map(|id| sql_id(id.0)).collect()
}

#[async_trait]
impl Directory for PostgresDirectory {
    async fn create_user(
        &self,
        username: &str,
        password_hash: &str,
        display_name: &str,
    ) -> Result<UserRecord> {
        accounts::create_user(self, username, password_hash, display_name).await
    }

    async fn user_credentials(&self, username: &str) -> Result<Option<(UserRecord, String)>> {
        accounts::user_credentials(self, username).await
    }

    async fn user_by_id(&self, id: UserId) -> Result<Option<UserRecord>> {
        accounts::user_by_id(self, id).await
    }

    async fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>> {
        accounts::user_by_name(self, username).await
    }

    async fn users_by_ids(&self, ids: &[UserId]) -> Result<Vec<UserRecord>> {
        accounts::users_by_ids(self, ids).await
    }

    async fn update_profile(&self, id: UserId, update: &ProfileUpdate) -> Result<UserRecord> {
        accounts::update_profile(self, id, update).await
    }

    async fn settings(&self, id: UserId) -> Result<UserSettings> {
        accounts::settings(self, id).await
    }

    async fn update_settings(&self, id: UserId, settings: UserSettings) -> Result<UserSettings> {
        accounts::update_settings(self, id, settings).await
    }

    async fn create_device(
        &self,
        user: UserId,
        name: &str,
        refresh_hash: &[u8],
        refresh_expires_ms: i64,
    ) -> Result<DeviceRecord> {
        accounts::create_device(self, user, name, refresh_hash, refresh_expires_ms).await
    }

    async fn device(&self, id: DeviceId) -> Result<Option<DeviceRecord>> {
        accounts::device(self, id).await
    }

    async fn rotate_refresh_token(
        &self,
        old_hash: &[u8],
        new_hash: &[u8],
        new_expires_ms: i64,
        now_ms: i64,
    ) -> Result<RefreshOutcome> {
        accounts::rotate_refresh_token(self, old_hash, new_hash, new_expires_ms, now_ms).await
    }

    async fn revoke_device(&self, id: DeviceId) -> Result<()> {
        accounts::revoke_device(self, id).await
    }

    async fn request_friend(&self, me: UserId, other: UserId, now_ms: i64) -> Result<Relation> {
        relations::request_friend(self, me, other, now_ms).await
    }

    async fn remove_relation(&self, me: UserId, other: UserId) -> Result<bool> {
        relations::remove_relation(self, me, other).await
    }

    async fn relations(&self, me: UserId) -> Result<Vec<RelationRecord>> {
        relations::relations(self, me).await
    }

    async fn are_friends(&self, a: UserId, b: UserId) -> Result<bool> {
        relations::are_friends(self, a, b).await
    }

    async fn friend_ids(&self, me: UserId) -> Result<Vec<UserId>> {
        relations::friend_ids(self, me).await
    }

    async fn create_group(
        &self,
        owner: UserId,
        name: &str,
        members: &[UserId],
        max_members: usize,
        now_ms: i64,
    ) -> Result<GroupRecord> {
        groups::create_group(self, owner, name, members, max_members, now_ms).await
    }

    async fn group(&self, id: GroupId) -> Result<Option<GroupRecord>> {
        groups::group(self, id).await
    }

    async fn groups_of(&self, user: UserId) -> Result<Vec<GroupRecord>> {
        groups::groups_of(self, user).await
    }

    async fn add_members(
        &self,
        id: GroupId,
        users: &[UserId],
        max_members: usize,
        now_ms: i64,
    ) -> Result<GroupRecord> {
        groups::add_members(self, id, users, max_members, now_ms).await
    }

    async fn remove_member(&self, id: GroupId, user: UserId) -> Result<GroupRecord> {
        groups::remove_member(self, id, user).await
    }

    async fn is_member(&self, id: GroupId, user: UserId) -> Result<bool> {
        groups::is_member(self, id, user).await
    }

    async fn member_ids(&self, id: GroupId) -> Result<Vec<UserId>> {
        groups::member_ids(self, id).await
    }

    async fn close(&self) {
        PostgresDirectory::close(self).await;
    }
}
