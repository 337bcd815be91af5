//! A cluster for end-to-end tests, on real engines: etcd (registry, leased worker ids), Redis
//! (presence, routes, the bus) and PostgreSQL (directory and message store), each a private
//! process on free ports, and real `chatd` binaries: one `api,presence` server and chat-role
//! servers.

use std::{
    collections::{BTreeMap, HashSet},
    path::PathBuf,
    sync::Arc,
};

use daehwa::v1::{self, GetChatServerRequest, Message, SyncMessagesRequest};
use daehwa_server::backend::{
    etcd::test_server::EtcdServer, postgres::test_server::PgServer, redis::test_server::RedisServer,
};

use super::{Chatd, TestUser, channel, eventually, unique_name};

/// The engines and servers of one test cluster.
pub struct Cluster {
    pub etcd: EtcdServer,
    pub redis: RedisServer,
    pub pg: Arc<PgServer>,
    pub database: String,
    pub dir: tempfile::TempDir,
    pub key_file: PathBuf,
    pub api: Chatd,
    pub chat: BTreeMap<String, Chatd>,
}

impl Cluster {
    /// etcd + Redis + a PostgreSQL database, one api server and a chat server per
    /// `(server id, id clock offset ms)`.
    pub async fn start(chat_servers: &[(&str, i64)]) -> Self {
        let etcd = EtcdServer::start();
        let redis = RedisServer::start();
        let pg = PgServer::shared();
        let database = pg.create_database().await;
        let dir = tempfile::tempdir().expect("temp dir");
        let key_file = dir.path().join("signing.key");
        let mut cluster = Self {
            api: Chatd::spawn(
                &dir.path().join("api"),
                &Self::args_for(
                    &etcd,
                    &redis,
                    &database,
                    &key_file,
                    "api-1",
                    "api,presence",
                    0,
                )
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            )
            .await,
            etcd,
            redis,
            pg,
            database,
            dir,
            key_file,
            chat: BTreeMap::new(),
        };
        for (id, offset) in chat_servers {
            cluster.start_chat(id, *offset).await;
        }
        cluster.wait_for_chat_servers(chat_servers.len()).await;
        cluster
    }

    fn args_for(
        etcd: &EtcdServer,
        redis: &RedisServer,
        database: &str,
        key_file: &std::path::Path,
        server_id: &str,
        roles: &str,
        clock_offset_ms: i64,
    ) -> Vec<String> {
        [
            "--directory",
            database,
            "--store",
            database,
            "--presence",
            &redis.url(),
            "--bus",
            &redis.url(),
            "--registry",
            &etcd.url(),
            // Short, so a dead server drops out quickly; long enough that a loaded CI machine
            // renews in time (the worker id is fenced at two thirds of it).
            "--registry-lease-ttl",
            "4s",
            "--signing-key-file",
            key_file.to_str().expect("utf-8 path"),
            "--server-id",
            server_id,
            "--roles",
            roles,
            "--offline-after",
            "3s",
            "--heartbeat-interval",
            "1s",
            "--send-rate",
            "1000",
            "--send-burst",
            "1000",
            &format!("--id-clock-offset-ms={clock_offset_ms}"),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    }

    pub async fn start_chat(&mut self, id: &str, clock_offset_ms: i64) {
        let args = Self::args_for(
            &self.etcd,
            &self.redis,
            &self.database,
            &self.key_file,
            id,
            "chat",
            clock_offset_ms,
        );
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let server = Chatd::spawn(&self.dir.path().join(id), &args).await;
        self.chat.insert(id.to_owned(), server);
    }

    /// Waits until Discovery lists `n` chat servers.
    pub async fn wait_for_chat_servers(&self, n: usize) {
        let probe = TestUser::sign_up(&self.api.url(), &unique_name("probe")).await;
        eventually(&format!("{n} chat servers in Discovery"), || {
            let probe = probe.clone();
            async move {
                let listed = probe
                    .discovery()
                    .list_chat_servers(v1::ListChatServersRequest {})
                    .await
                    .ok()?
                    .into_inner()
                    .servers;
                (listed.len() == n).then_some(())
            }
        })
        .await;
    }

    /// The same device talking to the api server (Auth, User, Group, Presence, Discovery).
    pub async fn at_api(&self, user: &TestUser) -> TestUser {
        on_server(user, &self.api.addr.to_string()).await
    }

    /// Signs up a user (on the api server) who Discovery sends to chat server `server_id`;
    /// returns them with their client pointed at that server.
    pub async fn user_on(&self, prefix: &str, server_id: &str) -> TestUser {
        for _ in 0..64 {
            let user = TestUser::sign_up(&self.api.url(), &unique_name(prefix)).await;
            let answer = discover(&user).await;
            if answer.server_id == server_id {
                return on_server(&user, &answer.grpc_endpoint).await;
            }
        }
        panic!("Discovery never sent any of 64 new users to {server_id}");
    }
}

/// Discovery's answer for `user`, asked at the api server.
pub async fn discover(user: &TestUser) -> v1::GetChatServerResponse {
    user.discovery()
        .get_chat_server(GetChatServerRequest {})
        .await
        .expect("GetChatServer")
        .into_inner()
}

/// The same device, talking to another server.
pub async fn on_server(user: &TestUser, endpoint: &str) -> TestUser {
    let url = format!("http://{endpoint}");
    TestUser {
        channel: channel(&url).await,
        url,
        ..user.clone()
    }
}

/// Everything in `conversation` after `after`, through SyncMessages pages.
pub async fn sync_all(user: &TestUser, conversation: &str, mut after: u64) -> Vec<Message> {
    let mut out = Vec::new();
    loop {
        let page = user
            .chat()
            .sync_messages(SyncMessagesRequest {
                cursors: vec![v1::Cursor {
                    conversation_id: conversation.to_owned(),
                    after_seq: after,
                }],
                limit: 500,
            })
            .await
            .expect("SyncMessages")
            .into_inner();
        if let Some(last) = page.messages.last() {
            after = last.seq;
        }
        out.extend(page.messages);
        if !page.has_more {
            return out;
        }
    }
}

/// Asserts `messages` are seq 1..=n with no gap or duplicate, and contain every id in `acked`.
pub fn assert_complete(messages: &[Message], acked: &HashSet<u64>) {
    for (i, m) in messages.iter().enumerate() {
        assert_eq!(m.seq, i as u64 + 1, "seq gap or duplicate at position {i}");
    }
    let stored: HashSet<u64> = messages.iter().map(|m| m.message_id).collect();
    assert_eq!(stored.len(), messages.len(), "duplicate message ids");
    let missing: Vec<&u64> = acked.iter().filter(|id| !stored.contains(id)).collect();
    assert!(
        missing.is_empty(),
        "acknowledged messages missing: {missing:?}"
    );
}
