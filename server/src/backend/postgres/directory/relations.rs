//! Friend requests and friendships on PostgreSQL.
//!
//! A pending request is a `friend_requests` row (`from_id` asked `to_id`, with its time); a
//! friendship is one `friendships` row per pair, lower id first, with the time it formed. A
//! pair has at most one of these rows: [`request_friend`] locks both users' rows (lower id
//! first) before it looks, and turns a request from the other side into a friendship instead
//! of adding a second request. Two users asking each other at the same moment, through any two
//! servers, are serialized by those locks and end up friends, never with crossed requests.

use super::{PostgresDirectory, db_err, from_sql_id, sql_id};
use crate::{
    backend::directory::{Relation, RelationRecord},
    error::{Error, Result},
    ids::UserId,
};

/// The pair in the order `friendships` stores it.
fn ordered(a: UserId, b: UserId) -> (i64, i64) {
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    (sql_id(lo.0), sql_id(hi.0))
}

/// Asks `other` to be my friend, or accepts their request; returns my relation afterwards.
/// Idempotent: asking again keeps the first request's time, asking a friend changes nothing.
pub(super) async fn request_friend(
    db: &PostgresDirectory,
    me: UserId,
    other: UserId,
    now_ms: i64,
) -> Result<Relation> {
    if me == other {
        return Err(Error::invalid(
            "you cannot send a friend request to yourself",
        ));
    }
    let (me_id, other_id) = (sql_id(me.0), sql_id(other.0));
    let (lo, hi) = ordered(me, other);
    let mut tx = db.begin().await?;
    // Rows are locked in the ORDER BY order, so two requests of one pair cannot deadlock.
    let locked: Vec<(i64,)> =
        sqlx::query_as("SELECT id FROM users WHERE id IN ($1, $2) ORDER BY id FOR NO KEY UPDATE")
            .bind(lo)
            .bind(hi)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err)?;
    for (user, id) in [(me, me_id), (other, other_id)] {
        if !locked.iter().any(|&(locked,)| locked == id) {
            return Err(Error::not_found(format!("user {user} not found")));
        }
    }
    let (friends, they_asked): (bool, bool) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM friendships WHERE lo = $1 AND hi = $2), \
                EXISTS (SELECT 1 FROM friend_requests WHERE from_id = $3 AND to_id = $4)",
    )
    .bind(lo)
    .bind(hi)
    .bind(other_id)
    .bind(me_id)
    .fetch_one(&mut *tx)
    .await
    .map_err(db_err)?;
    if friends {
        return Ok(Relation::Friends);
    }
    if they_asked {
        sqlx::query("DELETE FROM friend_requests WHERE from_id = $1 AND to_id = $2")
            .bind(other_id)
            .bind(me_id)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        sqlx::query("INSERT INTO friendships (lo, hi, since_ms) VALUES ($1, $2, $3)")
            .bind(lo)
            .bind(hi)
            .bind(now_ms)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        return Ok(Relation::Friends);
    }
    sqlx::query(
        "INSERT INTO friend_requests (from_id, to_id, created_at_ms) VALUES ($1, $2, $3) \
         ON CONFLICT DO NOTHING",
    )
    .bind(me_id)
    .bind(other_id)
    .bind(now_ms)
    .execute(&mut *tx)
    .await
    .map_err(db_err)?;
    tx.commit().await.map_err(db_err)?;
    Ok(Relation::Outgoing)
}

/// Removes the friendship or the request (either direction) between us; true if one existed.
pub(super) async fn remove_relation(
    db: &PostgresDirectory,
    me: UserId,
    other: UserId,
) -> Result<bool> {
    if me == other {
        return Ok(false);
    }
    let (lo, hi) = ordered(me, other);
    // One statement: both deletes see one snapshot and commit together.
    let (removed,): (i64,) = sqlx::query_as(
        "WITH f AS (DELETE FROM friendships WHERE lo = $1 AND hi = $2 RETURNING 1), \
              r AS (DELETE FROM friend_requests \
                    WHERE (from_id = $1 AND to_id = $2) OR (from_id = $2 AND to_id = $1) \
                    RETURNING 1) \
         SELECT (SELECT count(*) FROM f) + (SELECT count(*) FROM r)",
    )
    .bind(lo)
    .bind(hi)
    .fetch_one(&db.pool)
    .await
    .map_err(db_err)?;
    Ok(removed > 0)
}

/// Everyone I have a relation with, oldest first (then by user id).
pub(super) async fn relations(db: &PostgresDirectory, me: UserId) -> Result<Vec<RelationRecord>> {
    // kind: 0 = outgoing, 1 = incoming, 2 = friends. One statement, so one snapshot.
    let rows: Vec<(i64, i32, i64)> = sqlx::query_as(
        "SELECT to_id, 0, created_at_ms FROM friend_requests WHERE from_id = $1 \
         UNION ALL SELECT from_id, 1, created_at_ms FROM friend_requests WHERE to_id = $1 \
         UNION ALL SELECT hi, 2, since_ms FROM friendships WHERE lo = $1 \
         UNION ALL SELECT lo, 2, since_ms FROM friendships WHERE hi = $1 \
         ORDER BY 3, 1",
    )
    .bind(sql_id(me.0))
    .fetch_all(&db.pool)
    .await
    .map_err(db_err)?;
    rows.into_iter()
        .map(|(other, kind, since_ms)| {
            let relation = match kind {
                0 => Relation::Outgoing,
                1 => Relation::Incoming,
                2 => Relation::Friends,
                _ => {
                    return Err(Error::internal(format!(
                        "directory: unexpected relation kind {kind}"
                    )));
                }
            };
            Ok(RelationRecord {
                other: UserId(from_sql_id(other)),
                relation,
                since_ms,
            })
        })
        .collect()
}

/// Whether `a` and `b` are friends (a user is not their own friend).
pub(super) async fn are_friends(db: &PostgresDirectory, a: UserId, b: UserId) -> Result<bool> {
    if a == b {
        return Ok(false);
    }
    let (lo, hi) = ordered(a, b);
    let (friends,): (bool,) =
        sqlx::query_as("SELECT EXISTS (SELECT 1 FROM friendships WHERE lo = $1 AND hi = $2)")
            .bind(lo)
            .bind(hi)
            .fetch_one(&db.pool)
            .await
            .map_err(db_err)?;
    Ok(friends)
}

/// My friends' ids, ascending.
pub(super) async fn friend_ids(db: &PostgresDirectory, me: UserId) -> Result<Vec<UserId>> {
    let rows: Vec<(i64,)> = sqlx::query_as(
        "SELECT hi FROM friendships WHERE lo = $1 \
         UNION ALL SELECT lo FROM friendships WHERE hi = $1 ORDER BY 1",
    )
    .bind(sql_id(me.0))
    .fetch_all(&db.pool)
    .await
    .map_err(db_err)?;
    Ok(rows
        .into_iter()
        .map(|(id,)| UserId(from_sql_id(id)))
        .collect())
}
