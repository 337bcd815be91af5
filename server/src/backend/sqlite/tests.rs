//! Tests of the SQLite directory: the shared conformance suite on a file and in memory, plus
//! what only a file-backed store has (reopening, schema versions, connection settings).

use std::sync::Arc;

use tonic::Code;

use super::{MIGRATIONS, SqliteDirectory};
use crate::{
    backend::directory::{
        Directory, ProfileUpdate, RefreshOutcome, Relation, UserSettings, conformance,
    },
    ids::UserId,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let directory = SqliteDirectory::open(&dir.path().join("directory.db"))
        .await
        .unwrap();
    conformance::run_all(Arc::new(directory)).await;
}

#[tokio::test]
async fn conformance_in_memory() {
    let directory = SqliteDirectory::in_memory().await.unwrap();
    conformance::run_all(Arc::new(directory)).await;
}

#[tokio::test]
async fn conformance_twice_on_one_file() {
    // The checks must not depend on an empty store.
    let dir = tempfile::tempdir().unwrap();
    let directory: Arc<dyn Directory> = Arc::new(
        SqliteDirectory::open(&dir.path().join("d.db"))
            .await
            .unwrap(),
    );
    conformance::run_all(directory.clone()).await;
    conformance::run_all(directory).await;
}

#[tokio::test]
async fn data_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("directory.db");
    let db = SqliteDirectory::open(&path).await.unwrap();
    let a = db.create_user("alice", "hash-a", "Alice").await.unwrap();
    let b = db.create_user("bob", "hash-b", "Bob").await.unwrap();
    let update = ProfileUpdate {
        status_message: Some("hi".into()),
        ..Default::default()
    };
    let a = db.update_profile(a.id, &update).await.unwrap();
    let quiet = UserSettings {
        notifications_enabled: false,
        presence_visible: true,
    };
    db.update_settings(a.id, quiet).await.unwrap();
    let device = db
        .create_device(a.id, "phone", b"t1", i64::MAX)
        .await
        .unwrap();
    db.rotate_refresh_token(b"t1", b"t2", i64::MAX, 1)
        .await
        .unwrap();
    db.request_friend(a.id, b.id, 10).await.unwrap();
    db.request_friend(b.id, a.id, 20).await.unwrap();
    let group = db.create_group(a.id, "G", &[b.id], 10, 30).await.unwrap();
    db.close().await;
    drop(db);

    let db = SqliteDirectory::open(&path).await.unwrap();
    assert_eq!(db.user_by_id(a.id).await.unwrap(), Some(a.clone()));
    assert_eq!(
        db.user_credentials("bob").await.unwrap(),
        Some((b.clone(), "hash-b".to_owned()))
    );
    assert_eq!(db.settings(a.id).await.unwrap(), quiet);
    assert_eq!(db.device(device.id).await.unwrap(), Some(device.clone()));
    assert!(db.are_friends(a.id, b.id).await.unwrap());
    assert_eq!(db.relations(a.id).await.unwrap()[0].since_ms, 20);
    assert_eq!(db.group(group.id).await.unwrap(), Some(group));
    let reused = db
        .rotate_refresh_token(b"t1", b"t3", i64::MAX, 2)
        .await
        .unwrap();
    assert_eq!(
        reused,
        RefreshOutcome::Reused {
            user: a.id,
            device: device.id
        },
        "the used mark survived"
    );
    // Ids keep counting up, past the ones already handed out.
    let c = db.create_user("carol", "hash-c", "Carol").await.unwrap();
    assert!(c.id > b.id);
    assert_eq!(
        db.request_friend(c.id, a.id, 40).await.unwrap(),
        Relation::Outgoing
    );
}

#[tokio::test]
async fn open_sets_wal_full_sync_and_foreign_keys() {
    let dir = tempfile::tempdir().unwrap();
    let db = SqliteDirectory::open(&dir.path().join("d.db"))
        .await
        .unwrap();
    for pool in [&db.writer, &db.reader] {
        let (mode,): (String,) = sqlx::query_as("PRAGMA journal_mode")
            .fetch_one(pool)
            .await
            .unwrap();
        let (sync,): (i64,) = sqlx::query_as("PRAGMA synchronous")
            .fetch_one(pool)
            .await
            .unwrap();
        let (fk,): (i64,) = sqlx::query_as("PRAGMA foreign_keys")
            .fetch_one(pool)
            .await
            .unwrap();
        let (timeout,): (i64,) = sqlx::query_as("PRAGMA busy_timeout")
            .fetch_one(pool)
            .await
            .unwrap();
        assert_eq!((mode.as_str(), sync, fk), ("wal", 2, 1));
        assert!(timeout > 0);
    }
    let (version,): (i64,) = sqlx::query_as("PRAGMA user_version")
        .fetch_one(&db.reader)
        .await
        .unwrap();
    assert_eq!(version, MIGRATIONS.len() as i64);
}

#[tokio::test]
async fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.db");
    let db = SqliteDirectory::open(&path).await.unwrap();
    sqlx::raw_sql("PRAGMA user_version = 99")
        .execute(&db.writer)
        .await
        .unwrap();
    db.close().await;
    let err = SqliteDirectory::open(&path).await.unwrap_err();
    assert_eq!(err.code(), Code::Internal, "{err:?}");
    assert!(err.to_string().contains("99"), "{err}");
}

#[tokio::test]
async fn an_unopenable_path_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let err = SqliteDirectory::open(&dir.path().join("missing-dir").join("d.db"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.to_string().starts_with("directory unavailable: "),
        "{err}"
    );
}

#[tokio::test]
async fn a_closed_directory_is_unavailable() {
    let db = SqliteDirectory::in_memory().await.unwrap();
    db.close().await;
    let err = db.user_by_id(UserId(1)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let err = db.create_user("x", "h", "X").await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
}

#[tokio::test]
async fn taken_username_message() {
    let db = SqliteDirectory::in_memory().await.unwrap();
    db.create_user("dup", "h", "D").await.unwrap();
    let err = db.create_user("dup", "h", "D").await.unwrap_err();
    assert_eq!(err.to_string(), "username is taken");
}

#[tokio::test]
async fn in_memory_directories_are_separate() {
    let one = SqliteDirectory::in_memory().await.unwrap();
    let two = SqliteDirectory::in_memory().await.unwrap();
    one.create_user("same", "h", "S").await.unwrap();
    two.create_user("same", "h", "S").await.unwrap();
    assert_eq!(
        two.user_by_name("same").await.unwrap().map(|u| u.id),
        Some(UserId(1))
    );
}
