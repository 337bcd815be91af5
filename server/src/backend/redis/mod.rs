//! Redis backends: the shared [`PresenceStore`](super::PresenceStore) ([`RedisPresenceStore`])
//! and the [`Bus`](super::Bus) between chat servers ([`RedisBus`]).
//!
//! One Redis (or a primary with replicas) serves a cluster. Keys start with `daehwa:`; a
//! user's presence is one hash, so every script touches keys a single node owns. Redis
//! Cluster is not supported yet (the batch scripts take keys of many slots).
//!
//! Every call is bounded by [`CALL_TIMEOUT`]; a Redis that is down or slow turns into
//! `UNAVAILABLE` ("presence (Redis) unavailable: ...") for the caller, and the connection
//! manager reconnects by itself when Redis returns.

mod bus;
mod presence;
#[cfg(any(test, feature = "test-support"))]
pub mod test_server;
#[cfg(test)]
mod tests;

use std::{future::Future, time::Duration};

pub use bus::RedisBus;
pub use presence::RedisPresenceStore;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::error::{Error, Result};

/// The longest any Redis call may take before the caller gets `UNAVAILABLE`.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// Opens a client for `url` (`redis://HOST:PORT[/DB]`) and a self-reconnecting connection.
async fn connect(url: &str, what: &str) -> Result<(redis::Client, ConnectionManager)> {
    let client = redis::Client::open(url)
        .map_err(|e| Error::invalid(format!("bad {what} Redis URL {url:?}: {e}")))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(CALL_TIMEOUT)
        .set_response_timeout(CALL_TIMEOUT)
        .set_number_of_retries(2)
        .set_max_delay(500);
    let manager = bounded(
        what,
        ConnectionManager::new_with_config(client.clone(), config),
    )
    .await?;
    Ok((client, manager))
}

/// Runs a Redis call with [`CALL_TIMEOUT`], mapping every failure to `UNAVAILABLE`.
async fn bounded<T>(what: &str, call: impl Future<Output = redis::RedisResult<T>>) -> Result<T> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(Error::unavailable(format!(
            "{what} (Redis) unavailable: {e}; retry shortly"
        ))),
        Err(_) => Err(Error::unavailable(format!(
            "{what} (Redis) unavailable: no answer within {CALL_TIMEOUT:?}; retry shortly"
        ))),
    }
}
