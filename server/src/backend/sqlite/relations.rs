//! Friend requests and friendships.
//!
//! A pending request is a `friend_requests` row (`from_id` asked `to_id`, with its time); a
//! friendship is one `friendships` row per pair, lower id first, with the time it formed. A pair
//! has at most one of these rows: [`request_friend`] runs in one write transaction and turns a
//! request from the other side into a friendship instead of adding a second request, so two
//! users asking each other at the same moment end up friends, never with crossed requests.

use super::{SqliteDirectory, db_err, from_sql_id, sql_id};
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
    db: &SqliteDirectory,
    me: UserId,
    other: UserId,
    now_ms: i64,
) -> Result<Relation> {
    if me == other {
        return Err(Error::invalid(
            "you cannot send a friend request to yourself",
        ));
    }
    let (lo, hi) = ordered(me, other);
    let mut tx = db.write().await?;
    let (me_exists, other_exists, friends, they_asked): (bool, bool, bool, bool) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM users WHERE id = ?1), \
                EXISTS (SELECT 1 FROM users WHERE id = ?2), \
                EXISTS (SELECT 1 FROM friendships WHERE lo = ?3 AND hi = ?4), \
                EXISTS (SELECT 1 FROM friend_requests WHERE from_id = ?2 AND to_id = ?1)",
    )
    .bind(sql_id(me.0))
    .bind(sql_id(other.0))
    .bind(lo)
    .bind(hi)
    .fetch_one(&mut *tx)
    .await
    .map_err(db_err)?;
    if !me_exists {
        return Err(Error::not_found(format!("user {me} not found")));
    }
    if !other_exists {
        return Err(Error::not_found(format!("user {other} not found")));
    }
    if friends {
        return Ok(Relation::Friends);
    }
    if they_asked {
        sqlx::query("DELETE FROM friend_requests WHERE from_id = ? AND to_id = ?")
            .bind(sql_id(other.0))
            .bind(sql_id(me.0))
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        sqlx::query("INSERT INTO friendships (lo, hi, since_ms) VALUES (?, ?, ?)")
            .bind(lo)
            .bind(hi)
            .bind(now_ms)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        return Ok(Relation::Friends);
    }
    sqlx::query("INSERT INTO friend_requests (from_id, to_id, created_at_ms) VALUES (?, ?, ?) ON CONFLICT DO NOTHING")
        .bind(sql_id(me.0))
        .bind(sql_id(other.0))
        .bind(now_ms)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    tx.commit().await.map_err(db_err)?;
    Ok(Relation::Outgoing)
}

/// Removes the friendship or the request (either direction) between us; true if one existed.
pub(super) async fn remove_relation(
    db: &SqliteDirectory,
    me: UserId,
    other: UserId,
) -> Result<bool> {
    if me == other {
        return Ok(false);
    }
    let (lo, hi) = ordered(me, other);
    let mut tx = db.write().await?;
    let friendship = sqlx::query("DELETE FROM friendships WHERE lo = ? AND hi = ?")
        .bind(lo)
        .bind(hi)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    let requests = sqlx::query(
        "DELETE FROM friend_requests WHERE (from_id = ?1 AND to_id = ?2) OR (from_id = ?2 AND to_id = ?1)",
    )
    .bind(sql_id(me.0))
    .bind(sql_id(other.0))
    .execute(&mut *tx)
    .await
    .map_err(db_err)?;
    tx.commit().await.map_err(db_err)?;
    Ok(friendship.rows_affected() + requests.rows_affected() > 0)
}

/// Everyone I have a relation with, oldest first (then by user id).
pub(super) async fn relations(db: &SqliteDirectory, me: UserId) -> Result<Vec<RelationRecord>> {
    // kind: 0 = outgoing, 1 = incoming, 2 = friends. One statement, so one snapshot.
    let rows: Vec<(i64, i64, i64)> = sqlx::query_as(
        "SELECT to_id, 0, created_at_ms FROM friend_requests WHERE from_id = ?1 \
         UNION ALL SELECT from_id, 1, created_at_ms FROM friend_requests WHERE to_id = ?1 \
         UNION ALL SELECT hi, 2, since_ms FROM friendships WHERE lo = ?1 \
         UNION ALL SELECT lo, 2, since_ms FROM friendships WHERE hi = ?1 \
         ORDER BY 3, 1",
    )
    .bind(sql_id(me.0))
    .fetch_all(&db.reader)
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
pub(super) async fn are_friends(db: &SqliteDirectory, a: UserId, b: UserId) -> Result<bool> {
    if a == b {
        return Ok(false);
    }
    let (lo, hi) = ordered(a, b);
    let (friends,): (bool,) =
        sqlx::query_as("SELECT EXISTS (SELECT 1 FROM friendships WHERE lo = ? AND hi = ?)")
            .bind(lo)
            .bind(hi)
            .fetch_one(&db.reader)
            .await
            .map_err(db_err)?;
    Ok(friends)
}

/// My friends' ids, ascending.
pub(super) async fn friend_ids(db: &SqliteDirectory, me: UserId) -> Result<Vec<UserId>> {
    let rows: Vec<(i64,)> = sqlx::query_as(
        "SELECT hi FROM friendships WHERE lo = ?1 UNION ALL SELECT lo FROM friendships WHERE hi = ?1 ORDER BY 1",
    )
    .bind(sql_id(me.0))
    .fetch_all(&db.reader)
    .await
    .map_err(db_err)?;
    Ok(rows
        .into_iter()
        .map(|(id,)| UserId(from_sql_id(id)))
        .collect())
}
