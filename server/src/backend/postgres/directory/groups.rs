//! Groups and their members on PostgreSQL.
//!
//! Members are ordered by `join_seq`: the owner first at creation, then the others in the
//! order given, then later additions, each numbered after the group's largest `join_seq`. The
//! smallest remaining `join_seq` is the longest-standing member, who becomes owner when the
//! owner leaves.
//!
//! Every change locks the group row first (`FOR NO KEY UPDATE`), then checks the users, the
//! membership and the size limit and writes, all in one transaction: changes of one group are
//! serialized across servers, so concurrent additions can never push it past its limit, and
//! numbering after the largest `join_seq` is safe.
//!
//! When the last member leaves, the group row stays, with no members and its owner unchanged
//! (as in the SQLite directory): `g:<id>` always means this group and its history.

use std::collections::HashSet;

use sqlx::PgConnection;

use super::{PostgresDirectory, db_err, from_sql_id, sql_id, sql_ids};
use crate::{
    backend::directory::GroupRecord,
    error::{Error, Result},
    ids::{GroupId, UserId},
};

/// A whole group in one row: id, name, owner, creation time, members in joining order.
type GroupRow = (i64, String, i64, i64, Vec<i64>);

/// Selects [`GroupRow`]s from `chat_groups g`; one statement, so row and members agree.
macro_rules! group_select {
    () => {
        "SELECT g.id, g.name, g.owner_id, g.created_at_ms, \
         ARRAY(SELECT m.user_id FROM group_members m WHERE m.group_id = g.id ORDER BY m.join_seq) \
         FROM chat_groups g "
    };
}

fn group_record((id, name, owner, created_at_ms, members): GroupRow) -> GroupRecord {
    GroupRecord {
        id: GroupId(from_sql_id(id)),
        name,
        owner: UserId(from_sql_id(owner)),
        members: members
            .into_iter()
            .map(|m| UserId(from_sql_id(m)))
            .collect(),
        created_at_ms,
    }
}

fn group_not_found(id: GroupId) -> Error {
    Error::not_found(format!("group {id} not found"))
}

fn limit_error(max_members: usize) -> Error {
    Error::exhausted(format!("a group can have at most {max_members} members"))
}

/// `ids` without repeats, first occurrence kept.
fn dedup(ids: impl IntoIterator<Item = UserId>) -> Vec<UserId> {
    let mut seen = HashSet::new();
    ids.into_iter().filter(|id| seen.insert(*id)).collect()
}

/// `NotFound` naming every id in `ids` that is not a user.
async fn check_users_exist(conn: &mut PgConnection, ids: &[UserId]) -> Result<()> {
    let rows: Vec<(i64,)> = sqlx::query_as("SELECT id FROM users WHERE id = ANY($1)")
        .bind(sql_ids(ids))
        .fetch_all(&mut *conn)
        .await
        .map_err(db_err)?;
    let found: HashSet<u64> = rows.into_iter().map(|(id,)| from_sql_id(id)).collect();
    let missing: Vec<String> = ids
        .iter()
        .filter(|id| !found.contains(&id.0))
        .map(|id| id.to_string())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::not_found(format!(
            "unknown users: {}",
            missing.join(", ")
        )))
    }
}

/// The whole group, if it exists.
async fn load(conn: &mut PgConnection, id: GroupId) -> Result<Option<GroupRecord>> {
    let row: Option<GroupRow> = sqlx::query_as(concat!(group_select!(), "WHERE g.id = $1"))
        .bind(sql_id(id.0))
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_err)?;
    Ok(row.map(group_record))
}

/// Locks the group's row for a change; returns its owner, `NotFound` for an unknown group.
async fn lock_group(conn: &mut PgConnection, id: GroupId) -> Result<i64> {
    let row: Option<(i64,)> =
        sqlx::query_as("SELECT owner_id FROM chat_groups WHERE id = $1 FOR NO KEY UPDATE")
            .bind(sql_id(id.0))
            .fetch_optional(&mut *conn)
            .await
            .map_err(db_err)?;
    row.map(|(owner,)| owner).ok_or_else(|| group_not_found(id))
}

/// Appends `users` (not yet members) in order, numbered after `last_join_seq`.
async fn insert_members(
    conn: &mut PgConnection,
    id: GroupId,
    users: &[UserId],
    last_join_seq: i64,
    now_ms: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO group_members (group_id, user_id, join_seq, joined_at_ms) \
         SELECT $1, t.user_id, $2 + t.n, $4 \
         FROM unnest($3::BIGINT[]) WITH ORDINALITY AS t (user_id, n)",
    )
    .bind(sql_id(id.0))
    .bind(last_join_seq)
    .bind(sql_ids(users))
    .bind(now_ms)
    .execute(&mut *conn)
    .await
    .map_err(db_err)?;
    Ok(())
}

/// Creates a group of `owner` + `members` (deduplicated, owner first). `NotFound` naming
/// unknown users, then `ResourceExhausted` above `max_members`; nothing is written on error.
pub(super) async fn create_group(
    db: &PostgresDirectory,
    owner: UserId,
    name: &str,
    members: &[UserId],
    max_members: usize,
    now_ms: i64,
) -> Result<GroupRecord> {
    let wanted = dedup(std::iter::once(owner).chain(members.iter().copied()));
    let mut tx = db.begin().await?;
    check_users_exist(&mut tx, &wanted).await?;
    if wanted.len() > max_members {
        return Err(limit_error(max_members));
    }
    let (gid,): (i64,) = sqlx::query_as(
        "INSERT INTO chat_groups (name, owner_id, created_at_ms) VALUES ($1, $2, $3) RETURNING id",
    )
    .bind(name)
    .bind(sql_id(owner.0))
    .bind(now_ms)
    .fetch_one(&mut *tx)
    .await
    .map_err(db_err)?;
    let id = GroupId(from_sql_id(gid));
    insert_members(&mut tx, id, &wanted, 0, now_ms).await?;
    let group = load(&mut tx, id).await?;
    tx.commit().await.map_err(db_err)?;
    group.ok_or_else(|| {
        Error::internal("directory: a group vanished inside its creating transaction")
    })
}

/// The group with its members, if it exists.
pub(super) async fn group(db: &PostgresDirectory, id: GroupId) -> Result<Option<GroupRecord>> {
    let mut conn = db.pool.acquire().await.map_err(db_err)?;
    load(&mut conn, id).await
}

/// The groups `user` is a member of, by group id.
pub(super) async fn groups_of(db: &PostgresDirectory, user: UserId) -> Result<Vec<GroupRecord>> {
    let rows: Vec<GroupRow> = sqlx::query_as(concat!(
        group_select!(),
        "WHERE g.id IN (SELECT group_id FROM group_members WHERE user_id = $1) ORDER BY g.id"
    ))
    .bind(sql_id(user.0))
    .fetch_all(&db.pool)
    .await
    .map_err(db_err)?;
    Ok(rows.into_iter().map(group_record).collect())
}

/// Adds the users who are not members yet, in order. `NotFound` for an unknown group or
/// users, then `ResourceExhausted` if the group would exceed `max_members`; nothing is written
/// on error.
pub(super) async fn add_members(
    db: &PostgresDirectory,
    id: GroupId,
    users: &[UserId],
    max_members: usize,
    now_ms: i64,
) -> Result<GroupRecord> {
    let mut tx = db.begin().await?;
    lock_group(&mut tx, id).await?;
    let rows: Vec<(i64, i64)> =
        sqlx::query_as("SELECT user_id, join_seq FROM group_members WHERE group_id = $1")
            .bind(sql_id(id.0))
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err)?;
    let last_join_seq = rows.iter().map(|&(_, seq)| seq).max().unwrap_or(0);
    let current: HashSet<UserId> = rows
        .into_iter()
        .map(|(user, _)| UserId(from_sql_id(user)))
        .collect();
    let new = dedup(users.iter().copied().filter(|u| !current.contains(u)));
    if !new.is_empty() {
        check_users_exist(&mut tx, &new).await?;
        if current.len() + new.len() > max_members {
            return Err(limit_error(max_members));
        }
        insert_members(&mut tx, id, &new, last_join_seq, now_ms).await?;
    }
    let group = load(&mut tx, id)
        .await?
        .ok_or_else(|| group_not_found(id))?;
    tx.commit().await.map_err(db_err)?;
    Ok(group)
}

/// Removes a member; an owner who leaves hands the group to the longest-standing remaining
/// member (see the module doc for the last member). `NotFound` for an unknown group or a user
/// who is not a member.
pub(super) async fn remove_member(
    db: &PostgresDirectory,
    id: GroupId,
    user: UserId,
) -> Result<GroupRecord> {
    let mut tx = db.begin().await?;
    let owner = lock_group(&mut tx, id).await?;
    let removed = sqlx::query("DELETE FROM group_members WHERE group_id = $1 AND user_id = $2")
        .bind(sql_id(id.0))
        .bind(sql_id(user.0))
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    if removed.rows_affected() == 0 {
        return Err(Error::not_found(format!(
            "user {user} is not a member of group {id}"
        )));
    }
    if owner == sql_id(user.0) {
        // No row when the group is now empty: the owner then stays as it was.
        sqlx::query(
            "UPDATE chat_groups SET owner_id = m.user_id \
             FROM (SELECT user_id FROM group_members WHERE group_id = $1 \
                   ORDER BY join_seq LIMIT 1) AS m \
             WHERE id = $1",
        )
        .bind(sql_id(id.0))
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    }
    let group = load(&mut tx, id)
        .await?
        .ok_or_else(|| group_not_found(id))?;
    tx.commit().await.map_err(db_err)?;
    Ok(group)
}

/// Whether `user` is a member; `NotFound` for an unknown group.
pub(super) async fn is_member(db: &PostgresDirectory, id: GroupId, user: UserId) -> Result<bool> {
    let (group_exists, member): (bool, bool) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM chat_groups WHERE id = $1), \
                EXISTS (SELECT 1 FROM group_members WHERE group_id = $1 AND user_id = $2)",
    )
    .bind(sql_id(id.0))
    .bind(sql_id(user.0))
    .fetch_one(&db.pool)
    .await
    .map_err(db_err)?;
    if !group_exists {
        return Err(group_not_found(id));
    }
    Ok(member)
}

/// The members in joining order; `NotFound` for an unknown group (an emptied group has none).
pub(super) async fn member_ids(db: &PostgresDirectory, id: GroupId) -> Result<Vec<UserId>> {
    let row: Option<GroupRow> = sqlx::query_as(concat!(group_select!(), "WHERE g.id = $1"))
        .bind(sql_id(id.0))
        .fetch_optional(&db.pool)
        .await
        .map_err(db_err)?;
    row.map(|row| group_record(row).members)
        .ok_or_else(|| group_not_found(id))
}
