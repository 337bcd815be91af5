//! Accounts and sessions on PostgreSQL: users, their settings, their devices and the
//! devices' refresh tokens.
//!
//! Refresh tokens are stored only as hashes, one row per token ever issued. Rotation locks the
//! presented token's row and its device, marks the token `used` and inserts its successor in
//! the same transaction, so a token rotates once even when servers race; a used row presented
//! again is reuse (the token was copied), and the whole device is revoked. Revocation is a flag
//! on the device, so a token of a revoked device is answered `Revoked`, not `Unknown`.

use super::{PostgresDirectory, db_err, from_sql_id, now_ms, sql_id, sql_ids};
use crate::{
    backend::directory::{DeviceRecord, ProfileUpdate, RefreshOutcome, UserRecord, UserSettings},
    error::{Error, Result},
    ids::{DeviceId, UserId},
};

/// The columns of a [`UserRecord`], in [`UserRow`] order.
macro_rules! user_columns {
    () => {
        "id, username, display_name, status_message, avatar_url, created_at_ms"
    };
}

/// A `users` row as selected by [`user_columns!`].
type UserRow = (i64, String, String, String, String, i64);

/// Builds the record from its row.
fn user_record(
    (id, username, display_name, status_message, avatar_url, created_at_ms): UserRow,
) -> UserRecord {
    UserRecord {
        id: UserId(from_sql_id(id)),
        username,
        display_name,
        status_message,
        avatar_url,
        created_at_ms,
    }
}

fn user_not_found(id: UserId) -> Error {
    Error::not_found(format!("user {id} not found"))
}

/// Inserts a user; a taken username is `AlreadyExists`.
pub(super) async fn create_user(
    db: &PostgresDirectory,
    username: &str,
    password_hash: &str,
    display_name: &str,
) -> Result<UserRecord> {
    let row: UserRow = sqlx::query_as(concat!(
        "INSERT INTO users (username, password_hash, display_name, created_at_ms) ",
        "VALUES ($1, $2, $3, $4) RETURNING ",
        user_columns!()
    ))
    .bind(username)
    .bind(password_hash)
    .bind(display_name)
    .bind(now_ms())
    .fetch_one(&db.pool)
    .await
    .map_err(|e| match e {
        // `username` is the only unique column a new row can collide on.
        sqlx::Error::Database(ref d) if d.is_unique_violation() => {
            Error::AlreadyExists("username is taken".into())
        }
        e => db_err(e),
    })?;
    Ok(user_record(row))
}

/// The user named `username` and their password hash.
pub(super) async fn user_credentials(
    db: &PostgresDirectory,
    username: &str,
) -> Result<Option<(UserRecord, String)>> {
    let row: Option<(i64, String, String, String, String, i64, String)> = sqlx::query_as(concat!(
        "SELECT ",
        user_columns!(),
        ", password_hash FROM users WHERE username = $1"
    ))
    .bind(username)
    .fetch_optional(&db.pool)
    .await
    .map_err(db_err)?;
    Ok(
        row.map(|(id, name, display, status, avatar, created, hash)| {
            (
                user_record((id, name, display, status, avatar, created)),
                hash,
            )
        }),
    )
}

/// The user with this id, if any.
pub(super) async fn user_by_id(db: &PostgresDirectory, id: UserId) -> Result<Option<UserRecord>> {
    let row: Option<UserRow> = sqlx::query_as(concat!(
        "SELECT ",
        user_columns!(),
        " FROM users WHERE id = $1"
    ))
    .bind(sql_id(id.0))
    .fetch_optional(&db.pool)
    .await
    .map_err(db_err)?;
    Ok(row.map(user_record))
}

/// The user with this exact username, if any.
pub(super) async fn user_by_name(
    db: &PostgresDirectory,
    username: &str,
) -> Result<Option<UserRecord>> {
    let row: Option<UserRow> = sqlx::query_as(concat!(
        "SELECT ",
        user_columns!(),
        " FROM users WHERE username = $1"
    ))
    .bind(username)
    .fetch_optional(&db.pool)
    .await
    .map_err(db_err)?;
    Ok(row.map(user_record))
}

/// The existing users among `ids`, each once, in id order.
pub(super) async fn users_by_ids(
    db: &PostgresDirectory,
    ids: &[UserId],
) -> Result<Vec<UserRecord>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<UserRow> = sqlx::query_as(concat!(
        "SELECT ",
        user_columns!(),
        " FROM users WHERE id = ANY($1) ORDER BY id"
    ))
    .bind(sql_ids(ids))
    .fetch_all(&db.pool)
    .await
    .map_err(db_err)?;
    Ok(rows.into_iter().map(user_record).collect())
}

/// Sets the fields present in `update` in one statement; `NotFound` for an unknown user.
pub(super) async fn update_profile(
    db: &PostgresDirectory,
    id: UserId,
    update: &ProfileUpdate,
) -> Result<UserRecord> {
    let row: Option<UserRow> = sqlx::query_as(concat!(
        "UPDATE users SET display_name = COALESCE($1, display_name), ",
        "status_message = COALESCE($2, status_message), avatar_url = COALESCE($3, avatar_url) ",
        "WHERE id = $4 RETURNING ",
        user_columns!()
    ))
    .bind(update.display_name.as_deref())
    .bind(update.status_message.as_deref())
    .bind(update.avatar_url.as_deref())
    .bind(sql_id(id.0))
    .fetch_optional(&db.pool)
    .await
    .map_err(db_err)?;
    row.map(user_record).ok_or_else(|| user_not_found(id))
}

/// The user's settings (the defaults until they change one); `NotFound` for an unknown user.
pub(super) async fn settings(db: &PostgresDirectory, id: UserId) -> Result<UserSettings> {
    let row: Option<(Option<bool>, Option<bool>)> = sqlx::query_as(
        "SELECT s.notifications_enabled, s.presence_visible \
         FROM users u LEFT JOIN settings s ON s.user_id = u.id WHERE u.id = $1",
    )
    .bind(sql_id(id.0))
    .fetch_optional(&db.pool)
    .await
    .map_err(db_err)?;
    let (notifications, presence) = row.ok_or_else(|| user_not_found(id))?;
    let defaults = UserSettings::default();
    Ok(UserSettings {
        notifications_enabled: notifications.unwrap_or(defaults.notifications_enabled),
        presence_visible: presence.unwrap_or(defaults.presence_visible),
    })
}

/// Stores all of `settings`; `NotFound` for an unknown user.
pub(super) async fn update_settings(
    db: &PostgresDirectory,
    id: UserId,
    settings: UserSettings,
) -> Result<UserSettings> {
    // One statement: the SELECT yields no row for an unknown user, so nothing is written.
    let done = sqlx::query(
        "INSERT INTO settings (user_id, notifications_enabled, presence_visible) \
         SELECT id, $1, $2 FROM users WHERE id = $3 \
         ON CONFLICT (user_id) DO UPDATE SET \
         notifications_enabled = EXCLUDED.notifications_enabled, \
         presence_visible = EXCLUDED.presence_visible",
    )
    .bind(settings.notifications_enabled)
    .bind(settings.presence_visible)
    .bind(sql_id(id.0))
    .execute(&db.pool)
    .await
    .map_err(db_err)?;
    if done.rows_affected() == 0 {
        return Err(user_not_found(id));
    }
    Ok(settings)
}

/// Registers a device and its first refresh token; `NotFound` for an unknown user.
pub(super) async fn create_device(
    db: &PostgresDirectory,
    user: UserId,
    name: &str,
    refresh_hash: &[u8],
    refresh_expires_ms: i64,
) -> Result<DeviceRecord> {
    let mut tx = db.begin().await?;
    // No row for an unknown user, so no device.
    let id: Option<(i64,)> = sqlx::query_as(
        "INSERT INTO devices (user_id, name, created_at_ms) \
         SELECT id, $2, $3 FROM users WHERE id = $1 RETURNING id",
    )
    .bind(sql_id(user.0))
    .bind(name)
    .bind(now_ms())
    .fetch_optional(&mut *tx)
    .await
    .map_err(db_err)?;
    let Some((id,)) = id else {
        return Err(user_not_found(user));
    };
    sqlx::query("INSERT INTO refresh_tokens (hash, device_id, expires_at_ms) VALUES ($1, $2, $3)")
        .bind(refresh_hash)
        .bind(id)
        .bind(refresh_expires_ms)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    tx.commit().await.map_err(db_err)?;
    Ok(DeviceRecord {
        id: DeviceId(from_sql_id(id)),
        user,
        name: name.to_owned(),
        revoked: false,
    })
}

/// The device with this id, revoked or not.
pub(super) async fn device(db: &PostgresDirectory, id: DeviceId) -> Result<Option<DeviceRecord>> {
    let row: Option<(i64, String, bool)> =
        sqlx::query_as("SELECT user_id, name, revoked FROM devices WHERE id = $1")
            .bind(sql_id(id.0))
            .fetch_optional(&db.pool)
            .await
            .map_err(db_err)?;
    Ok(row.map(|(user, name, revoked)| DeviceRecord {
        id,
        user: UserId(from_sql_id(user)),
        name,
        revoked,
    }))
}

/// Rotates `old_hash` into `new_hash` in one transaction that first locks the token row and
/// its device. In order: an unknown hash is `Unknown`; a revoked device or an expired token
/// (`now_ms >= expires`) is `Revoked`; a used token revokes its device and is `Reused`;
/// otherwise the old row is marked used, the new one inserted, and the outcome is `Rotated`.
pub(super) async fn rotate_refresh_token(
    db: &PostgresDirectory,
    old_hash: &[u8],
    new_hash: &[u8],
    new_expires_ms: i64,
    now_ms: i64,
) -> Result<RefreshOutcome> {
    let mut tx = db.begin().await?;
    // FOR UPDATE locks both joined rows (token, then device). A racing rotation waits here,
    // then reads the rows as the winner committed them: used, so it is reuse.
    let row: Option<(i64, i64, bool, i64, bool)> = sqlx::query_as(
        "SELECT t.device_id, t.expires_at_ms, t.used, d.user_id, d.revoked \
         FROM refresh_tokens t JOIN devices d ON d.id = t.device_id WHERE t.hash = $1 \
         FOR UPDATE",
    )
    .bind(old_hash)
    .fetch_optional(&mut *tx)
    .await
    .map_err(db_err)?;
    let Some((device_id, expires_at_ms, used, user_id, revoked)) = row else {
        return Ok(RefreshOutcome::Unknown);
    };
    if revoked || now_ms >= expires_at_ms {
        return Ok(RefreshOutcome::Revoked);
    }
    let (user, device) = (
        UserId(from_sql_id(user_id)),
        DeviceId(from_sql_id(device_id)),
    );
    if used {
        sqlx::query("UPDATE devices SET revoked = TRUE WHERE id = $1")
            .bind(device_id)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        return Ok(RefreshOutcome::Reused { user, device });
    }
    sqlx::query("UPDATE refresh_tokens SET used = TRUE WHERE hash = $1")
        .bind(old_hash)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    sqlx::query("INSERT INTO refresh_tokens (hash, device_id, expires_at_ms) VALUES ($1, $2, $3)")
        .bind(new_hash)
        .bind(device_id)
        .bind(new_expires_ms)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    tx.commit().await.map_err(db_err)?;
    Ok(RefreshOutcome::Rotated { user, device })
}

/// Revokes a device, and with it every refresh token it holds; idempotent. `NotFound` for an
/// unknown device.
pub(super) async fn revoke_device(db: &PostgresDirectory, id: DeviceId) -> Result<()> {
    let done = sqlx::query("UPDATE devices SET revoked = TRUE WHERE id = $1")
        .bind(sql_id(id.0))
        .execute(&db.pool)
        .await
        .map_err(db_err)?;
    if done.rows_affected() == 0 {
        return Err(Error::not_found(format!("device {id} not found")));
    }
    Ok(())
}
