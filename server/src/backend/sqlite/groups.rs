//! Groups and their members.
//!
//! Members are ordered by `join_seq`, an autoincrement assigned as they join: the owner first at
//! creation, then the others in the order given, then later additions. The smallest remaining
//! `join_seq` is the longest-standing member, who becomes owner when the owner leaves.
//!
//! Every change runs in one write transaction that checks the users, the membership and the
//! size limit and then writes, so concurrent additions can never push a group past its limit.
//!
//! When the last member leaves, the group row stays, with no members and its owner unchanged:
//! the id is never handed out again (so `g:<id>` always means this group and its history), and
//! an empty group simply has nobody who may read or write it. Adding members to it works as for
//! any group; whether anyone is allowed to is the service's decision.

use std::collections::HashSet;

use sqlx::SqliteConnection;

use super::{SqliteDirectory, db_err, from_sql_id, json_ids, sql_id};
use crate::{
    backend::directory::GroupRecord,
    error::{Error, Result},
    ids::{GroupId, UserId},
};

/// A `chat_groups` row: id, name, owner, creation time.
type GroupRow = (i64, String, i64, i64);

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
async fn check_users_exist(conn: &mut SqliteConnection, ids: &[UserId]) -> Result<()> {
    let rows: Vec<(i64,)> =
        sqlx::query_as("SELECT id FROM users WHERE id IN (SELECT value FROM json_each(?))")
            .bind(json_ids(ids.iter().map(|id| id.0)))
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

/// The group's members in joining order.
async fn members(conn: &mut SqliteConnection, id: i64) -> Result<Vec<UserId>> {
    let rows: Vec<(i64,)> =
        sqlx::query_as("SELECT user_id FROM group_members WHERE group_id = ? ORDER BY join_seq")
            .bind(id)
            .fetch_all(&mut *conn)
            .await
            .map_err(db_err)?;
    Ok(rows
        .into_iter()
        .map(|(user,)| UserId(from_sql_id(user)))
        .collect())
}

/// The group's row without members.
async fn group_row(conn: &mut SqliteConnection, id: GroupId) -> Result<Option<GroupRow>> {
    sqlx::query_as("SELECT id, name, owner_id, created_at_ms FROM chat_groups WHERE id = ?")
        .bind(sql_id(id.0))
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_err)
}

/// The whole group; call inside a transaction so row and members agree.
async fn load(conn: &mut SqliteConnection, id: GroupId) -> Result<Option<GroupRecord>> {
    let Some((gid, name, owner, created_at_ms)) = group_row(conn, id).await? else {
        return Ok(None);
    };
    let members = members(conn, gid).await?;
    Ok(Some(GroupRecord {
        id,
        name,
        owner: UserId(from_sql_id(owner)),
        members,
        created_at_ms,
    }))
}

/// Appends `users` (not yet members) in order.
async fn insert_members(
    conn: &mut SqliteConnection,
    id: i64,
    users: &[UserId],
    now_ms: i64,
) -> Result<()> {
    for user in users {
        sqlx::query("INSERT INTO group_members (group_id, user_id, joined_at_ms) VALUES (?, ?, ?)")
            .bind(id)
            .bind(sql_id(user.0))
            .bind(now_ms)
            .execute(&mut *conn)
            .await
            .map_err(db_err)?;
    }
    Ok(())
}

/// Creates a group of `owner` + `members` (deduplicated, owner first). `NotFound` naming unknown
/// users, then `ResourceExhausted` above `max_members`; nothing is written on error.
pub(super) async fn create_group(
    db: &SqliteDirectory,
    owner: UserId,
    name: &str,
    members: &[UserId],
    max_members: usize,
    now_ms: i64,
) -> Result<GroupRecord> {
    let wanted = dedup(std::iter::once(owner).chain(members.iter().copied()));
    let mut tx = db.write().await?;
    check_users_exist(&mut tx, &wanted).await?;
    if wanted.len() > max_members {
        return Err(limit_error(max_members));
    }
    let (gid,): (i64,) = sqlx::query_as(
        "INSERT INTO chat_groups (name, owner_id, created_at_ms) VALUES (?, ?, ?) RETURNING id",
    )
    .bind(name)
    .bind(sql_id(owner.0))
    .bind(now_ms)
    .fetch_one(&mut *tx)
    .await
    .map_err(db_err)?;
    insert_members(&mut tx, gid, &wanted, now_ms).await?;
    let group = load(&mut tx, GroupId(from_sql_id(gid))).await?;
    tx.commit().await.map_err(db_err)?;
    group.ok_or_else(|| {
        Error::internal("directory: a group vanished inside its creating transaction")
    })
}

/// The group with its members, if it exists.
pub(super) async fn group(db: &SqliteDirectory, id: GroupId) -> Result<Option<GroupRecord>> {
    let mut tx = db.read().await?;
    let group = load(&mut tx, id).await?;
    tx.commit().await.map_err(db_err)?;
    Ok(group)
}

/// The groups `user` is a member of, by group id.
pub(super) async fn groups_of(db: &SqliteDirectory, user: UserId) -> Result<Vec<GroupRecord>> {
    let mut tx = db.read().await?;
    let rows: Vec<GroupRow> = sqlx::query_as(
        "SELECT g.id, g.name, g.owner_id, g.created_at_ms FROM chat_groups g \
         JOIN group_members m ON m.group_id = g.id WHERE m.user_id = ? ORDER BY g.id",
    )
    .bind(sql_id(user.0))
    .fetch_all(&mut *tx)
    .await
    .map_err(db_err)?;
    let member_rows: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT group_id, user_id FROM group_members \
         WHERE group_id IN (SELECT group_id FROM group_members WHERE user_id = ?) ORDER BY group_id, join_seq",
    )
    .bind(sql_id(user.0))
    .fetch_all(&mut *tx)
    .await
    .map_err(db_err)?;
    tx.commit().await.map_err(db_err)?;

    // Both lists are sorted by group id: walk them together.
    let mut member_rows = member_rows.into_iter().peekable();
    let mut groups = Vec::with_capacity(rows.len());
    for (gid, name, owner, created_at_ms) in rows {
        let mut members = Vec::new();
        while let Some((_, member)) = member_rows.next_if(|&(g, _)| g <= gid) {
            members.push(UserId(from_sql_id(member)));
        }
        groups.push(GroupRecord {
            id: GroupId(from_sql_id(gid)),
            name,
            owner: UserId(from_sql_id(owner)),
            members,
            created_at_ms,
        });
    }
    Ok(groups)
}

/// Adds the users who are not members yet, in order. `NotFound` for an unknown group or users,
/// then `ResourceExhausted` if the group would exceed `max_members`; nothing is written on error.
pub(super) async fn add_members(
    db: &SqliteDirectory,
    id: GroupId,
    users: &[UserId],
    max_members: usize,
    now_ms: i64,
) -> Result<GroupRecord> {
    let mut tx = db.write().await?;
    let (gid, _, _, _) = group_row(&mut tx, id)
        .await?
        .ok_or_else(|| group_not_found(id))?;
    let current: HashSet<UserId> = members(&mut tx, gid).await?.into_iter().collect();
    let new = dedup(users.iter().copied().filter(|u| !current.contains(u)));
    if !new.is_empty() {
        check_users_exist(&mut tx, &new).await?;
        if current.len() + new.len() > max_members {
            return Err(limit_error(max_members));
        }
        insert_members(&mut tx, gid, &new, now_ms).await?;
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
    db: &SqliteDirectory,
    id: GroupId,
    user: UserId,
) -> Result<GroupRecord> {
    let mut tx = db.write().await?;
    let (gid, _, owner, _) = group_row(&mut tx, id)
        .await?
        .ok_or_else(|| group_not_found(id))?;
    let removed = sqlx::query("DELETE FROM group_members WHERE group_id = ? AND user_id = ?")
        .bind(gid)
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
             FROM (SELECT user_id FROM group_members WHERE group_id = ?1 ORDER BY join_seq LIMIT 1) AS m \
             WHERE id = ?1",
        )
        .bind(gid)
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
pub(super) async fn is_member(db: &SqliteDirectory, id: GroupId, user: UserId) -> Result<bool> {
    let (group_exists, member): (bool, bool) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM chat_groups WHERE id = ?1), \
                EXISTS (SELECT 1 FROM group_members WHERE group_id = ?1 AND user_id = ?2)",
    )
    .bind(sql_id(id.0))
    .bind(sql_id(user.0))
    .fetch_one(&db.reader)
    .await
    .map_err(db_err)?;
    if !group_exists {
        return Err(group_not_found(id));
    }
    Ok(member)
}

/// The members in joining order; `NotFound` for an unknown group (an emptied group has none).
pub(super) async fn member_ids(db: &SqliteDirectory, id: GroupId) -> Result<Vec<UserId>> {
    // One row with a NULL member for an existing empty group, no row for an unknown one.
    let rows: Vec<(Option<i64>,)> = sqlx::query_as(
        "SELECT m.user_id FROM chat_groups g LEFT JOIN group_members m ON m.group_id = g.id \
         WHERE g.id = ? ORDER BY m.join_seq",
    )
    .bind(sql_id(id.0))
    .fetch_all(&db.reader)
    .await
    .map_err(db_err)?;
    if rows.is_empty() {
        return Err(group_not_found(id));
    }
    Ok(rows
        .into_iter()
        .filter_map(|(user,)| user.map(|u| UserId(from_sql_id(u))))
        .collect())
}
