//! PostgreSQL backends, for a cluster of `chatd` on an engine every operator already runs:
//! [`PostgresDirectory`] (the same behaviour as the SQLite directory) and
//! [`PostgresMessageStore`] (the message log, with gapless seqs across servers).
//!
//! This module owns what both share: connecting ([`PostgresOptions`], one pool per backend),
//! the schema migrations, the id mapping and the one translation of sqlx errors into
//! [`Error`]. The queries live in `directory` (with `accounts`, `relations`, `groups`) and
//! `messages`.
//!
//! # Connections
//! Each backend owns a pool (sqlx, runtime queries only: no compile-time checked macros, so
//! building needs no database). The directory and the store may use one database or two;
//! [`PostgresBackend::connect`] opens both on one URL, with a pool each, so each trait's
//! `close` closes only its own connections. Every session is opened with
//! `synchronous_commit = on`, the PostgreSQL default, set explicitly so a lowered server or
//! database default cannot weaken it: a transaction is flushed to the WAL on disk (and to the
//! synchronous standbys, when the operator configured some) before `COMMIT` returns, so
//! whatever a call acknowledged survives a crash of PostgreSQL. Sessions also get
//! `idle_in_transaction_session_timeout = 30s`: the backends never pause inside a transaction,
//! so only a `chatd` cut off mid-transaction (a network partition, where no FIN arrives) is
//! idle there, and PostgreSQL then ends its transaction, releasing the row locks it holds (a
//! conversation head, a group), instead of waiting for TCP keepalive (hours by default).
//!
//! Each pool opens at most [`PostgresOptions::max_connections`] (default 10) connections, so
//! one `chatd` uses up to 20; size PostgreSQL's `max_connections` for the number of servers.
//! The role in the URL must be allowed to create tables in its schema (simplest: own the
//! database; since PostgreSQL 15 `public` no longer grants CREATE to everyone).
//!
//! # Migrations
//! The schema is embedded SQL (`migrations/*.sql`), one ordered list per backend. At connect,
//! one transaction takes `pg_advisory_xact_lock` (so several `chatd` starting at once apply
//! each script exactly once, one after the other), creates `schema_version` if missing, reads
//! the backend's version there, applies the scripts it has not seen and records the new
//! version; the lock is released at commit. A version newer than this server knows is refused
//! (`Internal`): an older binary must not write into a newer schema.
//!
//! # Ids
//! The id newtypes carry `u64`; PostgreSQL has `BIGINT` (i64). `sql_id` maps one onto the
//! other by reinterpreting the bits, as the SQLite directory does: ids from `BIGSERIAL` are
//! positive and map to themselves, and an id above `i64::MAX` from a client maps to a negative
//! number no row has, so it is simply not found.
//!
//! # Errors
//! Anything that means "PostgreSQL cannot serve right now" (connection refused or lost, pool
//! timeout or closed, shutdown, too many connections, serialization failure, deadlock, disk
//! full, a read-only standby after a failover, authentication or a missing database) becomes
//! `Unavailable("directory unavailable: …")` or `Unavailable("message store unavailable: …")`:
//! the client retries, and the pool reconnects by itself when PostgreSQL is back. Constraint
//! violations the code does not expect and undecodable rows are bugs or damage: `Internal`.
//! Nothing here panics.

mod directory;
mod messages;

/// A private PostgreSQL server for tests, reusable by any test of the workspace (feature
/// `test-support`).
#[cfg(any(test, feature = "test-support"))]
pub mod test_server;
#[cfg(test)]
mod tests;

use std::{str::FromStr, time::Duration};

use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

pub use self::{directory::PostgresDirectory, messages::PostgresMessageStore};
use crate::error::{Error, Result};

/// Pool settings of one backend.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// The most connections the pool opens.
    pub max_connections: u32,
    /// How long a call waits for a connection (including reconnecting to a PostgreSQL that is
    /// down) before it fails `Unavailable`.
    pub acquire_timeout: Duration,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

/// Both PostgreSQL backends, opened on one URL with a pool each.
pub struct PostgresBackend {
    /// Accounts, devices, friendships and groups.
    pub directory: PostgresDirectory,
    /// The message log, read positions and the direct-conversation index.
    pub messages: PostgresMessageStore,
}

impl PostgresBackend {
    /// Connects both backends to `url` (`postgres://user:password@host:port/database`) with
    /// default pool settings and brings both schemas up to date.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, &PostgresOptions::default()).await
    }

    /// [`PostgresBackend::connect`] with explicit pool settings (one pool of each per backend).
    pub async fn connect_with(url: &str, options: &PostgresOptions) -> Result<Self> {
        let directory = PostgresDirectory::connect_with(url, options).await?;
        let messages = PostgresMessageStore::connect_with(url, options).await?;
        Ok(Self {
            directory,
            messages,
        })
    }
}

/// Which backend a pool, an error or a migration list belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Component {
    Directory,
    Messages,
}

impl Component {
    /// The name used in `schema_version` and in error messages.
    fn label(self) -> &'static str {
        match self {
            Self::Directory => "directory",
            Self::Messages => "message store",
        }
    }

    /// The backend's migrations, in order; the version is the number applied.
    fn migrations(self) -> &'static [&'static str] {
        match self {
            Self::Directory => &[include_str!("migrations/directory_0001.sql")],
            Self::Messages => &[include_str!("migrations/messages_0001.sql")],
        }
    }
}

/// The advisory lock every migration transaction holds ("daehwa" in ASCII).
const MIGRATION_LOCK: i64 = 0x6461_6568_7761;

/// Opens `component`'s pool on `url` and applies its migrations.
pub(super) async fn connect(
    url: &str,
    component: Component,
    options: &PostgresOptions,
) -> Result<PgPool> {
    // The URL may carry a password: never put it into an error.
    let connect = PgConnectOptions::from_str(url)
        .map_err(|e| {
            Error::unavailable(format!(
                "{} unavailable: bad PostgreSQL url: {e}",
                component.label()
            ))
        })?
        .application_name("chatd")
        .options([
            ("synchronous_commit", "on"),
            ("idle_in_transaction_session_timeout", "30s"),
        ]);
    let pool = PgPoolOptions::new()
        .max_connections(options.max_connections.max(1))
        .acquire_timeout(options.acquire_timeout)
        .connect_with(connect)
        .await
        .map_err(|e| db_err(component, e))?;
    migrate(&pool, component).await?;
    Ok(pool)
}

/// Applies the migrations of `component` that the database has not seen, in one transaction
/// under the migration lock (see the module doc).
pub(super) async fn migrate(pool: &PgPool, component: Component) -> Result<()> {
    let err = |e| db_err(component, e);
    let mut tx = pool.begin().await.map_err(err)?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *tx)
        .await
        .map_err(err)?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS schema_version \
         (component TEXT PRIMARY KEY, version INTEGER NOT NULL)",
    )
    .execute(&mut *tx)
    .await
    .map_err(err)?;
    let version: Option<(i32,)> =
        sqlx::query_as("SELECT version FROM schema_version WHERE component = $1")
            .bind(component.label())
            .fetch_optional(&mut *tx)
            .await
            .map_err(err)?;
    let version = version.map_or(0, |(v,)| v);
    let migrations = component.migrations();
    let applied = usize::try_from(version)
        .ok()
        .filter(|&v| v <= migrations.len())
        .ok_or_else(|| {
            Error::internal(format!(
                "{} schema version {version} is not one this server knows (0..={})",
                component.label(),
                migrations.len()
            ))
        })?;
    if applied == migrations.len() {
        return tx.commit().await.map_err(err);
    }
    for sql in &migrations[applied..] {
        // A `&str` without arguments runs as a simple query: every statement of the script.
        sqlx::Executor::execute(&mut *tx, *sql).await.map_err(err)?;
    }
    let latest = i32::try_from(migrations.len())
        .map_err(|_| Error::internal("too many migrations for schema_version"))?;
    sqlx::query(
        "INSERT INTO schema_version (component, version) VALUES ($1, $2) \
         ON CONFLICT (component) DO UPDATE SET version = EXCLUDED.version",
    )
    .bind(component.label())
    .bind(latest)
    .execute(&mut *tx)
    .await
    .map_err(err)?;
    tx.commit().await.map_err(err)
}

/// The stored form of an id: the same 64 bits read as signed (see the module doc).
pub(super) fn sql_id(id: u64) -> i64 {
    id as i64
}

/// The inverse of [`sql_id`].
pub(super) fn from_sql_id(id: i64) -> u64 {
    id as u64
}

/// SQLSTATE classes (first two characters) that mean "cannot serve right now".
const TRANSIENT_CLASSES: &[&str] = &[
    "08", // connection exception
    "28", // invalid authorization (a changed password, a missing role)
    "3D", // invalid catalog name: the database does not exist (yet)
    "40", // transaction rollback: serialization failure, deadlock
    "53", // insufficient resources: disk full, out of memory, too many connections
    "57", // operator intervention: shutdown, statement timeout, cannot connect now
    "58", // system error: I/O
];

/// Single SQLSTATEs outside those classes that are transient too.
const TRANSIENT_CODES: &[&str] = &[
    "25006", // read_only_sql_transaction: a standby after a failover
    "55P03", // lock_not_available
];

/// Whether `e` means PostgreSQL cannot serve right now (retry later) rather than a bug.
pub(super) fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            TRANSIENT_CODES.contains(&code.as_ref())
                || code
                    .get(..2)
                    .is_some_and(|class| TRANSIENT_CLASSES.contains(&class))
        }),
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::Configuration(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}

/// Maps an unexpected sqlx error of `component`: transient trouble is `Unavailable`, the rest
/// `Internal`.
pub(super) fn db_err(component: Component, e: sqlx::Error) -> Error {
    let label = component.label();
    if !is_transient(&e) {
        return Error::internal(format!("{label}: {e}"));
    }
    tracing::warn!(error = %e, "{label} unavailable");
    match e {
        sqlx::Error::PoolClosed => Error::unavailable(format!("{label} unavailable: closed")),
        sqlx::Error::PoolTimedOut => Error::unavailable(format!(
            "{label} unavailable: no PostgreSQL connection could be opened or freed in time"
        )),
        e => Error::unavailable(format!("{label} unavailable: {e}")),
    }
}
