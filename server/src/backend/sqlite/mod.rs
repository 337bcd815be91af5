//! The one-machine [`Directory`]: accounts, devices, friendships and groups in one SQLite file.
//!
//! This module owns the connection set-up, the schema and its migrations, and the mapping of
//! SQLite failures to [`Error`]; the queries live in `accounts` (users, settings, devices,
//! refresh tokens), `relations` (friend requests and friendships) and `groups`.
//!
//! # Connections and atomicity
//! Two pools open the same file: one **writer** connection and a few **readers**. The journal
//! is WAL, so readers never wait for the writer. Every read-modify-write ("was this token
//! used?", "did they already ask me?", "is the group full?") runs in one `BEGIN IMMEDIATE`
//! transaction on the writer, which takes SQLite's write lock before its first read: the check
//! and the write it decides are one atomic step. With a single writer connection, concurrent
//! writers of this process queue fairly in the pool instead of polling SQLite's busy handler;
//! `busy_timeout` still covers another process (a backup, the `sqlite3` shell) holding the lock.
//! Reads that need several statements run in one read transaction, so they see one snapshot.
//!
//! # Durability
//! `synchronous = FULL`: a commit is on disk when the call returns, even across power loss.
//! `NORMAL` would only risk the last commits on an OS crash or power cut, but here those are
//! exactly the writes that must not roll back: a logout or a reuse-detected revocation coming
//! undone would make a stolen refresh token valid again, and a rotation coming undone would log
//! the device out. Directory writes are rare (sign-ups, logins, token refreshes, friend and
//! group changes), so the extra fsync per commit is cheap.
//!
//! # Ids
//! The id newtypes carry `u64`; SQLite stores `i64`. `sql_id` maps one onto the other by
//! reinterpreting the bits, a bijection: ids the directory assigns are positive and map to
//! themselves, and an id above `i64::MAX` from a client maps to a negative number that no row
//! has, so it is simply not found.
//!
//! # Errors
//! I/O, locking, full-disk and pool failures become `Unavailable("directory unavailable: …")`
//! (retry later); constraint violations the code does not expect, corruption and decoding
//! failures are bugs or a damaged file and become `Internal`. Expected conditions (a taken
//! username, an unknown user) are checked explicitly and reported with their own kind.
//!
//! # Choices the trait leaves open
//! - When a group's last member leaves, the group stays, empty, with its owner unchanged (see
//!   `groups`); `is_member` and `member_ids` of an unknown group are `NotFound`.
//! - `settings` and `update_settings` of an unknown user are `NotFound`.
//! - A token presented at or after its expiry (`now_ms >= expires`) is `Revoked`, and so is a
//!   used token that has expired (expiry is checked before reuse).
//! - Rotated-out token hashes are kept (that is how reuse is recognised), one row per rotation;
//!   nothing prunes them yet.

mod accounts;
mod groups;
mod relations;

use std::{
    path::Path,
    str::FromStr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;
use sqlx::{
    Sqlite, SqlitePool, Transaction,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

use crate::{
    backend::directory::{
        DeviceRecord, Directory, GroupRecord, ProfileUpdate, RefreshOutcome, Relation,
        RelationRecord, UserRecord, UserSettings,
    },
    error::{Error, Result},
    ids::{DeviceId, GroupId, UserId},
};

/// The schema, in order; `PRAGMA user_version` is the number of migrations applied.
const MIGRATIONS: &[&str] = &[include_str!("migrations/0001_init.sql")];

/// How long a statement waits for a lock held by another connection before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Read connections; reads are short, so a few are enough on a small machine.
const READERS: u32 = 4;

/// The SQLite-backed [`Directory`]. Cheap to share behind an `Arc`; see the module doc.
#[derive(Debug, Clone)]
pub struct SqliteDirectory {
    /// One connection: every write goes through it, in `BEGIN IMMEDIATE` transactions.
    writer: SqlitePool,
    /// Connections for plain reads (the same pool as `writer` for an in-memory database).
    reader: SqlitePool,
}

impl SqliteDirectory {
    /// Opens (creating if needed) the directory file at `path` and brings its schema up to date.
    pub async fn open(path: &Path) -> Result<Self> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let cannot_open = |e: sqlx::Error| {
            Error::unavailable(format!(
                "directory unavailable: cannot open {}: {e}",
                path.display()
            ))
        };
        // The writer connects first and switches the file to WAL (a persistent setting), so the
        // readers never need the exclusive lock that changing the journal mode takes.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone().journal_mode(SqliteJournalMode::Wal))
            .await
            .map_err(cannot_open)?;
        migrate(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(READERS)
            .connect_with(options)
            .await
            .map_err(cannot_open)?;
        Ok(Self { writer, reader })
    }

    /// A private in-memory directory (for tests and throwaway servers); gone when dropped.
    pub async fn in_memory() -> Result<Self> {
        // `sqlite::memory:` gives each call its own database. It lives as long as a connection
        // to it does, so the pool keeps exactly one, forever.
        let options = SqliteConnectOptions::from_str("sqlite::memory:")
            .map_err(db_err)?
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await
            .map_err(db_err)?;
        migrate(&pool).await?;
        Ok(Self {
            writer: pool.clone(),
            reader: pool,
        })
    }

    /// Closes every connection, waiting for running calls; later calls fail `Unavailable`.
    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }

    /// Starts a write transaction holding SQLite's write lock from its first statement.
    async fn write(&self) -> Result<Transaction<'static, Sqlite>> {
        self.writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db_err)
    }

    /// Starts a read transaction: every statement in it sees the same snapshot.
    async fn read(&self) -> Result<Transaction<'static, Sqlite>> {
        self.reader.begin().await.map_err(db_err)
    }
}

/// Applies the migrations the file has not seen yet, all in one transaction.
async fn migrate(pool: &SqlitePool) -> Result<()> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.map_err(db_err)?;
    let (version,): (i64,) = sqlx::query_as("PRAGMA user_version")
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err)?;
    let applied = usize::try_from(version)
        .ok()
        .filter(|&v| v <= MIGRATIONS.len())
        .ok_or_else(|| {
            Error::internal(format!(
                "directory schema version {version} is not one this server knows (0..={})",
                MIGRATIONS.len()
            ))
        })?;
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        // `Executor::execute` with a `&str` runs every statement of the script; unlike
        // `raw_sql(..).execute(..)` its future is `Send` for any caller.
        sqlx::Executor::execute(&mut *tx, *sql)
            .await
            .map_err(db_err)?;
        let set_version = format!("PRAGMA user_version = {}", index + 1);
        sqlx::Executor::execute(&mut *tx, set_version.as_str())
            .await
            .map_err(db_err)?;
    }
    tx.commit().await.map_err(db_err)
}

/// The stored form of an id: the same 64 bits read as signed (see the module doc).
fn sql_id(id: u64) -> i64 {
    id as i64
}

/// The inverse of `sql_id`.
fn from_sql_id(id: i64) -> u64 {
    id as u64
}

/// The current time in milliseconds since the Unix epoch, for rows whose call carries none.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A JSON array of ids, bound as one parameter and expanded in SQL with `json_each`, so a
/// list of any length is one statement with one placeholder.
fn json_ids(ids: impl IntoIterator<Item = u64>) -> String {
    let items: Vec<String> = ids.into_iter().map(|id| sql_id(id).to_string()).collect();
    format!("[{}]", items.join(","))
}

/// Primary SQLite result codes that mean "the store cannot serve right now", not "bug".
const TRANSIENT_CODES: &[i32] = &[
    3,  // SQLITE_PERM
    4,  // SQLITE_ABORT
    5,  // SQLITE_BUSY
    6,  // SQLITE_LOCKED
    7,  // SQLITE_NOMEM
    8,  // SQLITE_READONLY
    9,  // SQLITE_INTERRUPT
    10, // SQLITE_IOERR
    13, // SQLITE_FULL
    14, // SQLITE_CANTOPEN
    15, // SQLITE_PROTOCOL
    17, // SQLITE_SCHEMA
    22, // SQLITE_NOLFS
];

/// Maps an unexpected sqlx error: environment trouble is `Unavailable`, the rest `Internal`.
fn db_err(e: sqlx::Error) -> Error {
    let transient = match &e {
        sqlx::Error::Database(db) => {
            let extended = db.code().and_then(|c| c.parse::<i32>().ok()).unwrap_or(0);
            TRANSIENT_CODES.contains(&(extended & 0xff))
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::Configuration(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    };
    if transient {
        tracing::warn!(error = %e, "directory unavailable");
        Error::unavailable(format!("directory unavailable: {e}"))
    } else {
        Error::internal(format!("directory: {e}"))
    }
}

#[async_trait]
impl Directory for SqliteDirectory {
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
        SqliteDirectory::close(self).await;
    }
}

#[cfg(test)]
mod tests;
