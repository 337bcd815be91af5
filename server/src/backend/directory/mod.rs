//! Accounts, devices (login sessions), settings, friendships and groups.
//!
//! The contract every implementation keeps (checked by the `conformance` test suite):
//! - Usernames are unique, compared as stored (the service lowercases them first).
//! - Each refresh token (stored only as its SHA-256 hash) can be rotated once; presenting a
//!   rotated-out token again revokes its device at once ([`RefreshOutcome::Reused`]).
//! - A friend request to someone who already asked me makes us friends, atomically.
//! - Group size limits are checked in the same transaction that adds members.
//! - Backend failures are `Error::Unavailable`; bad references are `NotFound`.

use async_trait::async_trait;

use crate::{
    error::Result,
    ids::{DeviceId, GroupId, UserId},
};

/// A user's public profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub id: UserId,
    pub username: String,
    pub display_name: String,
    pub status_message: String,
    pub avatar_url: String,
    /// Milliseconds since the Unix epoch.
    pub created_at_ms: i64,
}

/// Fields of a profile update; `None` leaves a field unchanged.
#[derive(Debug, Clone, Default)]
pub struct ProfileUpdate {
    pub display_name: Option<String>,
    pub status_message: Option<String>,
    pub avatar_url: Option<String>,
}

/// Per-user preferences.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserSettings {
    pub notifications_enabled: bool,
    pub presence_visible: bool,
}

impl Default for UserSettings {
    fn default() -> Self {
        Self {
            notifications_enabled: true,
            presence_visible: true,
        }
    }
}

/// A device: one login of a user, with its own refresh token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    pub id: DeviceId,
    pub user: UserId,
    pub name: String,
    pub revoked: bool,
}

/// What happened to a refresh token presented for rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// The token was current: it is now replaced by the new hash.
    Rotated { user: UserId, device: DeviceId },
    /// The token was already rotated out: the device is now revoked.
    Reused { user: UserId, device: DeviceId },
    /// The token's device was revoked (logout) or the token expired.
    Revoked,
    /// No such token.
    Unknown,
}

/// One side of a relationship, seen from the user who asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation {
    /// I asked them.
    Outgoing,
    /// They asked me.
    Incoming,
    Friends,
}

/// Another user and my relation to them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationRecord {
    pub other: UserId,
    pub relation: Relation,
    /// When the request was made or the friendship formed (ms since epoch).
    pub since_ms: i64,
}

/// A group with its members (in joining order; the owner first at creation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRecord {
    pub id: GroupId,
    pub name: String,
    pub owner: UserId,
    pub members: Vec<UserId>,
    pub created_at_ms: i64,
}

/// The directory of accounts and relationships. See the module doc for the contract.
#[async_trait]
pub trait Directory: Send + Sync + 'static {
    /// Creates an account; `AlreadyExists` when the username is taken.
    async fn create_user(
        &self,
        username: &str,
        password_hash: &str,
        display_name: &str,
    ) -> Result<UserRecord>;
    /// The account and its password hash, for login.
    async fn user_credentials(&self, username: &str) -> Result<Option<(UserRecord, String)>>;
    async fn user_by_id(&self, id: UserId) -> Result<Option<UserRecord>>;
    async fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>>;
    /// The users that exist among `ids`, in no particular order.
    async fn users_by_ids(&self, ids: &[UserId]) -> Result<Vec<UserRecord>>;
    /// `NotFound` when the user does not exist.
    async fn update_profile(&self, id: UserId, update: &ProfileUpdate) -> Result<UserRecord>;
    async fn settings(&self, id: UserId) -> Result<UserSettings>;
    async fn update_settings(&self, id: UserId, settings: UserSettings) -> Result<UserSettings>;

    /// Registers a device for `user` with its first refresh token hash.
    async fn create_device(
        &self,
        user: UserId,
        name: &str,
        refresh_hash: &[u8],
        refresh_expires_ms: i64,
    ) -> Result<DeviceRecord>;
    async fn device(&self, id: DeviceId) -> Result<Option<DeviceRecord>>;
    /// Rotates a refresh token (see [`RefreshOutcome`]); `now_ms` decides expiry.
    async fn rotate_refresh_token(
        &self,
        old_hash: &[u8],
        new_hash: &[u8],
        new_expires_ms: i64,
        now_ms: i64,
    ) -> Result<RefreshOutcome>;
    /// Revokes a device and all its refresh tokens.
    async fn revoke_device(&self, id: DeviceId) -> Result<()>;

    /// Sends a friend request, or accepts theirs; returns my relation afterwards.
    async fn request_friend(&self, me: UserId, other: UserId, now_ms: i64) -> Result<Relation>;
    /// Removes a friendship or a request in either direction; true if something was removed.
    async fn remove_relation(&self, me: UserId, other: UserId) -> Result<bool>;
    async fn relations(&self, me: UserId) -> Result<Vec<RelationRecord>>;
    async fn are_friends(&self, a: UserId, b: UserId) -> Result<bool>;
    async fn friend_ids(&self, me: UserId) -> Result<Vec<UserId>>;

    /// Creates a group owned by `owner` with `owner` + `members` (deduplicated);
    /// `ResourceExhausted` above `max_members`.
    async fn create_group(
        &self,
        owner: UserId,
        name: &str,
        members: &[UserId],
        max_members: usize,
        now_ms: i64,
    ) -> Result<GroupRecord>;
    async fn group(&self, id: GroupId) -> Result<Option<GroupRecord>>;
    async fn groups_of(&self, user: UserId) -> Result<Vec<GroupRecord>>;
    /// Adds members (existing ones are ignored); `ResourceExhausted` above `max_members`.
    async fn add_members(
        &self,
        id: GroupId,
        users: &[UserId],
        max_members: usize,
        now_ms: i64,
    ) -> Result<GroupRecord>;
    /// Removes a member; when the owner leaves, the longest-standing remaining member becomes
    /// owner. Returns the group afterwards.
    async fn remove_member(&self, id: GroupId, user: UserId) -> Result<GroupRecord>;
    async fn is_member(&self, id: GroupId, user: UserId) -> Result<bool>;
    async fn member_ids(&self, id: GroupId) -> Result<Vec<UserId>>;

    /// Closes connections, waiting for running calls; called once at shutdown. Later calls
    /// fail `Unavailable`.
    async fn close(&self);
}

/// The behaviour every `Directory` must show; run by each implementation's tests.
#[cfg(test)]
pub mod conformance;
