//! Tests of the PostgreSQL backends against a real PostgreSQL started by the test harness
//! (`test_server`): both conformance suites, then what only a shared, networked engine has:
//! several servers (pools) writing one conversation or one group at once, concurrent
//! migrations, forced `synchronous_commit`, and an engine that stops and comes back.

use std::{sync::Arc, time::Duration};

use tonic::Code;

use super::{
    PostgresBackend, PostgresDirectory, PostgresMessageStore, PostgresOptions,
    test_server::PgServer,
};
use crate::{
    backend::{
        directory::{self, Directory, RefreshOutcome, Relation},
        message_store::{self, MessageStore, conformance::new_message},
    },
    error::Error,
    ids::{ConversationId, GroupId, UserId},
};

/// A fresh database on the shared server; keep the server handle alive for the test.
async fn fresh_database() -> (Arc<PgServer>, String) {
    let server = PgServer::shared();
    let url = server.create_database().await;
    (server, url)
}

fn group(id: u64) -> ConversationId {
    ConversationId::Group(GroupId(id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_conformance() {
    let (_server, url) = fresh_database().await;
    let directory = PostgresDirectory::connect(&url).await.unwrap();
    directory::conformance::run_all(Arc::new(directory)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_conformance_twice_through_two_servers() {
    // The checks must not depend on an empty database; the second "server" finds the schema
    // already migrated.
    let (_server, url) = fresh_database().await;
    for _ in 0..2 {
        let directory = PostgresDirectory::connect(&url).await.unwrap();
        directory::conformance::run_all(Arc::new(directory)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_store_conformance() {
    let (_server, url) = fresh_database().await;
    let store = PostgresMessageStore::connect(&url).await.unwrap();
    message_store::conformance::run_all(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_backends_share_one_database() {
    let (_server, url) = fresh_database().await;
    let backend = PostgresBackend::connect(&url).await.unwrap();
    directory::conformance::run_all(Arc::new(backend.directory)).await;
    message_store::conformance::run_all(Arc::new(backend.messages)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_append_to_one_conversation_gaplessly() {
    let (_server, url) = fresh_database().await;
    let servers: Vec<Arc<dyn MessageStore>> = vec![
        Arc::new(PostgresMessageStore::connect(&url).await.unwrap()),
        Arc::new(PostgresMessageStore::connect(&url).await.unwrap()),
    ];
    let conv = group(77);
    let mut tasks = Vec::new();
    for (s, store) in servers.iter().enumerate() {
        for t in 0..4 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut seqs = Vec::new();
                for i in 0..50 {
                    let m = new_message(conv, 1 + t, &format!("s{s}-t{t}-{i}"), "hi");
                    let appended = store.append(m).await.expect("append");
                    assert!(!appended.duplicate);
                    seqs.push(appended.message.seq);
                }
                seqs
            }));
        }
    }
    let mut all = Vec::new();
    for task in tasks {
        let seqs = task.await.unwrap();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        all.extend(seqs);
    }
    all.sort_unstable();
    assert_eq!(all, (1..=400).collect::<Vec<_>>());
    for store in &servers {
        let log = store.read_after(conv, 0, 1_000).await.unwrap();
        assert_eq!(
            log.iter().map(|m| m.seq).collect::<Vec<_>>(),
            (1..=400).collect::<Vec<_>>()
        );
    }

    // One client_msg_id sent through both servers at once is stored once, at seq 401.
    let racers: Vec<_> = (0..16)
        .map(|i| {
            let store = servers[i % 2].clone();
            tokio::spawn(async move {
                let m = new_message(conv, 9, "retried", &format!("copy {i}"));
                store.append(m).await.expect("append")
            })
        })
        .collect();
    let mut results = Vec::new();
    for racer in racers {
        results.push(racer.await.unwrap());
    }
    assert_eq!(results.iter().filter(|a| !a.duplicate).count(), 1);
    assert!(results.iter().all(|a| a.message == results[0].message));
    assert_eq!(results[0].message.seq, 401);
    let states = servers[1]
        .conversation_states(UserId(1), &[conv])
        .await
        .unwrap();
    assert_eq!(states[0].last_seq, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_directory_servers_race_safely() {
    let (_server, url) = fresh_database().await;
    let a: Arc<dyn Directory> = Arc::new(PostgresDirectory::connect(&url).await.unwrap());
    let b: Arc<dyn Directory> = Arc::new(PostgresDirectory::connect(&url).await.unwrap());
    let servers = [a.clone(), b.clone()];

    // Additions to one group through both servers stop at the limit.
    let owner = a.create_user("owner", "h", "Owner").await.unwrap();
    let g = a.create_group(owner.id, "G", &[], 5, 1).await.unwrap();
    let mut joins = Vec::new();
    for i in 0..10 {
        let joiner = a
            .create_user(&format!("joiner{i}"), "h", "J")
            .await
            .unwrap();
        let dir = servers[i % 2].clone();
        joins.push(tokio::spawn(async move {
            dir.add_members(g.id, &[joiner.id], 5, 2).await
        }));
    }
    let mut added = 0;
    for join in joins {
        match join.await.unwrap() {
            Ok(_) => added += 1,
            Err(e) => assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}"),
        }
    }
    assert_eq!(added, 4);
    assert_eq!(b.member_ids(g.id).await.unwrap().len(), 5);

    // One refresh token rotated through both servers at once rotates once.
    let device = a
        .create_device(owner.id, "phone", b"t0", i64::MAX)
        .await
        .unwrap();
    let rotations: Vec<_> = (0..8u8)
        .map(|i| {
            let dir = servers[usize::from(i) % 2].clone();
            tokio::spawn(async move { dir.rotate_refresh_token(b"t0", &[i], i64::MAX, 1).await })
        })
        .collect();
    let mut rotated = 0;
    for rotation in rotations {
        match rotation.await.unwrap().unwrap() {
            RefreshOutcome::Rotated { .. } => rotated += 1,
            RefreshOutcome::Reused { .. } | RefreshOutcome::Revoked => {}
            RefreshOutcome::Unknown => panic!("a stored token was Unknown"),
        }
    }
    assert_eq!(rotated, 1);
    assert!(b.device(device.id).await.unwrap().unwrap().revoked);

    // Crossed friend requests through different servers make friends.
    for i in 0..5 {
        let x = a.create_user(&format!("x{i}"), "h", "X").await.unwrap();
        let y = b.create_user(&format!("y{i}"), "h", "Y").await.unwrap();
        let (da, db) = (a.clone(), b.clone());
        let xy = tokio::spawn(async move { da.request_friend(x.id, y.id, 7).await });
        let yx = tokio::spawn(async move { db.request_friend(y.id, x.id, 7).await });
        let results = [xy.await.unwrap().unwrap(), yx.await.unwrap().unwrap()];
        assert!(results.contains(&Relation::Friends), "{results:?}");
        assert!(a.are_friends(x.id, y.id).await.unwrap());
        assert_eq!(b.relations(x.id).await.unwrap().len(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_starts_migrate_once() {
    let (_server, url) = fresh_database().await;
    let starts: Vec<_> = (0..6)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { PostgresBackend::connect(&url).await })
        })
        .collect();
    let mut backends = Vec::new();
    for start in starts {
        backends.push(start.await.unwrap().expect("connect"));
    }
    let versions: Vec<(String, i32)> =
        sqlx::query_as("SELECT component, version FROM schema_version ORDER BY component")
            .fetch_all(&backends[0].directory.pool)
            .await
            .unwrap();
    assert_eq!(
        versions,
        vec![("directory".to_owned(), 1), ("message store".to_owned(), 1)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_schema_is_refused() {
    let (_server, url) = fresh_database().await;
    let store = PostgresMessageStore::connect(&url).await.unwrap();
    sqlx::query("UPDATE schema_version SET version = 99 WHERE component = 'message store'")
        .execute(&store.pool)
        .await
        .unwrap();
    let err = PostgresMessageStore::connect(&url).await.unwrap_err();
    assert_eq!(err.code(), Code::Internal, "{err:?}");
    assert!(err.to_string().contains("99"), "{err}");
    PostgresDirectory::connect(&url)
        .await
        .expect("the directory's version is its own");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_commit_synchronously_even_if_the_database_says_otherwise() {
    let (_server, url) = fresh_database().await;
    let first = PostgresBackend::connect(&url).await.unwrap();
    sqlx::Executor::execute(
        &first.messages.pool,
        "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET synchronous_commit = off', \
         current_database()); END $$",
    )
    .await
    .unwrap();
    let second = PostgresBackend::connect(&url).await.unwrap();
    for pool in [&second.messages.pool, &second.directory.pool] {
        let (setting,): (String,) = sqlx::query_as("SHOW synchronous_commit")
            .fetch_one(pool)
            .await
            .unwrap();
        assert_eq!(setting, "on");
        let (idle,): (String,) = sqlx::query_as("SHOW idle_in_transaction_session_timeout")
            .fetch_one(pool)
            .await
            .unwrap();
        assert_eq!(idle, "30s");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_postgres_is_unavailable_and_recovers() {
    let server = PgServer::start();
    let url = server.url("postgres");
    let options = PostgresOptions {
        max_connections: 4,
        acquire_timeout: Duration::from_secs(2),
    };
    let directory = PostgresDirectory::connect_with(&url, &options)
        .await
        .unwrap();
    let store = PostgresMessageStore::connect_with(&url, &options)
        .await
        .unwrap();
    let user = directory.create_user("durable", "h", "D").await.unwrap();
    let conv = group(5);
    let first = store
        .append(new_message(conv, 1, "m1", "before"))
        .await
        .unwrap();

    server.stop();
    let unavailable = |result: Result<(), Error>, prefix: &str| match result {
        Err(Error::Unavailable(msg)) => assert!(msg.starts_with(prefix), "{msg}"),
        other => panic!("expected Unavailable({prefix}…), got {other:?}"),
    };
    for _ in 0..2 {
        let found = directory.user_by_id(user.id).await.map(drop);
        unavailable(found, "directory unavailable: ");
        let appended = store
            .append(new_message(conv, 1, "m2", "during"))
            .await
            .map(drop);
        unavailable(appended, "message store unavailable: ");
        let read = store.read_after(conv, 0, 10).await.map(drop);
        unavailable(read, "message store unavailable: ");
    }
    let connect = PostgresDirectory::connect_with(&url, &options)
        .await
        .map(drop);
    unavailable(connect, "directory unavailable: ");

    // Back again: the same pools reconnect, and what was acknowledged before the crash-like
    // stop is there.
    server.restart();
    let found = directory.user_by_id(user.id).await.unwrap();
    assert_eq!(found, Some(user));
    let second = store
        .append(new_message(conv, 1, "m2", "after"))
        .await
        .unwrap();
    assert_eq!(second.message.seq, 2);
    let log = store.read_after(conv, 0, 10).await.unwrap();
    assert_eq!(log, vec![first.message, second.message]);
}

#[tokio::test]
async fn unreachable_or_malformed_urls_are_unavailable() {
    let options = PostgresOptions {
        max_connections: 1,
        acquire_timeout: Duration::from_millis(500),
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/nothing");
    let err = PostgresMessageStore::connect_with(&url, &options)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.to_string().starts_with("message store unavailable: "),
        "{err}"
    );
    let err = PostgresDirectory::connect_with("postgres://u:secret@[bad/x", &options)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(!err.to_string().contains("secret"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_backends_are_unavailable_and_names_unique() {
    let (_server, url) = fresh_database().await;
    let backend = PostgresBackend::connect(&url).await.unwrap();
    let (directory, store) = (backend.directory, backend.messages);
    directory.create_user("dup", "h", "D").await.unwrap();
    let err = directory.create_user("dup", "h", "D").await.unwrap_err();
    assert_eq!(err, Error::AlreadyExists("username is taken".into()));
    Directory::close(&directory).await;
    let err = directory.user_by_id(UserId(1)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    store.close().await.unwrap();
    let err = store.read_after(group(1), 0, 1).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
}

#[test]
fn errors_are_classified() {
    use super::{Component, db_err};
    for e in [
        sqlx::Error::PoolTimedOut,
        sqlx::Error::PoolClosed,
        sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
    ] {
        assert_eq!(db_err(Component::Directory, e).code(), Code::Unavailable);
    }
    for e in [
        sqlx::Error::RowNotFound,
        sqlx::Error::ColumnNotFound("x".into()),
    ] {
        assert_eq!(db_err(Component::Messages, e).code(), Code::Internal);
    }
}
