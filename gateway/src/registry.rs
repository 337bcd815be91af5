//! `chat-gateway --registry etcd://...`: the gateway finds the cluster's api servers in the
//! registry the servers keep in etcd (each server's own leased entry,
//! `/daehwa/servers/<server id>`, JSON with its roles and gRPC endpoint), follows it with a
//! watch, and balances Discovery and API calls over every live api server. Discovery at any
//! of them names each user's chat server, so a gateway needs no address of any server and
//! survives any one of them dying.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use etcd_client::{Client, ConnectOptions, EventType, GetOptions, WatchOptions};
use serde::Deserialize;
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint, channel::Change};

/// Where the servers register (the servers' default prefix).
pub const SERVERS_PREFIX: &str = "/daehwa/servers/";
/// Pending membership changes for the balancer.
const CHANGE_QUEUE: usize = 256;

/// The fields of a server's registry entry the gateway needs.
#[derive(Debug, Deserialize)]
struct Entry {
    roles: Vec<String>,
    grpc_endpoint: String,
}

/// The etcd endpoints (`http://HOST:PORT`) in an `etcd://HOST:PORT[,HOST:PORT...]` URL.
pub fn etcd_endpoints(url: &str) -> anyhow::Result<Vec<String>> {
    let hosts = url
        .trim()
        .strip_prefix("etcd://")
        .ok_or_else(|| anyhow::anyhow!("--registry {url:?}: expected etcd://HOST:PORT,..."))?;
    let endpoints: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|h| format!("http://{h}"))
        .collect();
    anyhow::ensure!(
        !endpoints.is_empty(),
        "--registry {url:?} names no etcd endpoint"
    );
    Ok(endpoints)
}

/// A channel balanced over the api servers registered in etcd at `endpoints`, kept current
/// in the background. Fails when etcd cannot be read at start.
pub async fn api_servers(endpoints: Vec<String>) -> anyhow::Result<Channel> {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(Duration::from_secs(5));
    let mut client = Client::connect(&endpoints, Some(options))
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the registry (etcd): {e}"))?;
    let (channel, changes) = Channel::balance_channel::<String>(CHANGE_QUEUE);
    let mut known = HashMap::new();
    let revision = resync(&mut client, &changes, &mut known)
        .await
        .map_err(|e| anyhow::anyhow!("cannot read the registry (etcd): {e}"))?;
    tracing::info!(api_servers = known.len(), "following the registry");
    tokio::spawn(follow(client, changes, known, revision));
    Ok(channel)
}

type Changes = mpsc::Sender<Change<String, Endpoint>>;
/// The api servers the balancer holds: server id → gRPC endpoint.
type Known = HashMap<String, String>;

/// Reads every entry and tells the balancer what appeared and what went; returns the
/// revision read.
async fn resync(
    client: &mut Client,
    changes: &Changes,
    known: &mut Known,
) -> Result<i64, etcd_client::Error> {
    let response = client
        .get(SERVERS_PREFIX, Some(GetOptions::new().with_prefix()))
        .await?;
    let revision = response.header().map_or(0, |h| h.revision());
    let mut present = HashSet::new();
    for kv in response.kvs() {
        if let Some(id) = apply_put(kv.key(), kv.value(), changes, known).await {
            present.insert(id);
        }
    }
    let gone: Vec<String> = known
        .keys()
        .filter(|id| !present.contains(*id))
        .cloned()
        .collect();
    for id in gone {
        known.remove(&id);
        let _ = changes.send(Change::Remove(id)).await;
    }
    Ok(revision)
}

/// Inserts an api server's entry (or removes a server that lost the role); returns its id
/// when it is an api server.
async fn apply_put(
    key: &[u8],
    value: &[u8],
    changes: &Changes,
    known: &mut Known,
) -> Option<String> {
    let id = String::from_utf8_lossy(key.strip_prefix(SERVERS_PREFIX.as_bytes())?).into_owned();
    let entry: Entry = match serde_json::from_slice(value) {
        Ok(entry) => entry,
        Err(e) => {
            tracing::warn!(server_id = %id, error = %e, "unreadable registry entry ignored");
            return None;
        }
    };
    if !entry.roles.iter().any(|r| r == "api") {
        if known.remove(&id).is_some() {
            let _ = changes.send(Change::Remove(id)).await;
        }
        return None;
    }
    // Entries are rewritten as load changes: only a new server or a new address is news.
    if known.get(&id) == Some(&entry.grpc_endpoint) {
        return Some(id);
    }
    let endpoint = Endpoint::from_shared(format!("http://{}", entry.grpc_endpoint))
        .ok()?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    tracing::info!(server_id = %id, endpoint = %entry.grpc_endpoint, "api server joined");
    known.insert(id.clone(), entry.grpc_endpoint);
    let _ = changes.send(Change::Insert(id.clone(), endpoint)).await;
    Some(id)
}

/// Watches the registry from `revision + 1`; on any break, reads it again and resumes.
async fn follow(mut client: Client, changes: Changes, mut known: Known, mut revision: i64) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        match client.watch(SERVERS_PREFIX, Some(options)).await {
            Ok(mut stream) => {
                backoff = Duration::from_millis(100);
                while let Ok(Some(response)) = stream.message().await {
                    if response.canceled() || response.compact_revision() > 0 {
                        break;
                    }
                    for event in response.events() {
                        let Some(kv) = event.kv() else { continue };
                        revision = revision.max(kv.mod_revision());
                        match event.event_type() {
                            EventType::Put => {
                                apply_put(kv.key(), kv.value(), &changes, &mut known).await;
                            }
                            EventType::Delete => {
                                let id = String::from_utf8_lossy(
                                    kv.key()
                                        .strip_prefix(SERVERS_PREFIX.as_bytes())
                                        .unwrap_or(kv.key()),
                                )
                                .into_owned();
                                if known.remove(&id).is_some() {
                                    tracing::info!(server_id = %id, "api server left");
                                    let _ = changes.send(Change::Remove(id)).await;
                                }
                            }
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "registry watch failed"),
        }
        if changes.is_closed() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
        match resync(&mut client, &changes, &mut known).await {
            Ok(read) => revision = read,
            Err(e) => {
                tracing::warn!(error = %e, "registry (etcd) unreachable; keeping the last known api servers")
            }
        }
    }
}
