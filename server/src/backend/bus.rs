//! The bus between chat servers: after the store holds a message, the servers holding the
//! recipients' streams are told, and deliver it. Presence transitions and logouts travel the
//! same way.
//!
//! The bus is a **doorbell, not the truth**: it may lose envelopes (a Redis restart, a
//! partition, a subscriber too slow). The message store is the truth and clients catch up by
//! cursor. So a subscriber that may have missed envelopes is told ([`BusEvent::Interrupted`])
//! and the server makes its clients reconnect and sync, instead of pretending nothing
//! happened.

use std::{collections::HashMap, sync::Mutex};

use async_trait::async_trait;
use daehwa::v1::ServerEvent;
use tokio::sync::mpsc;

use crate::error::Result;

/// Envelopes waiting for the receiving server's loop; a full queue makes the publisher wait
/// (in process) or the subscription fall behind and reconnect (Redis).
pub const RECEIVE_QUEUE: usize = 16_384;

/// What one server tells others: an event for some users' live sessions, or a device to
/// disconnect. Encoded with protobuf on the wire.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Envelope {
    /// The server that sent it (a broadcast reaches its sender too, which ignores it).
    #[prost(string, tag = "1")]
    pub origin: String,
    /// Whose sessions get `event`.
    #[prost(uint64, repeated, tag = "2")]
    pub users: Vec<u64>,
    /// Sessions of this device are skipped (the sending device); 0: none.
    #[prost(uint64, tag = "3")]
    pub skip_device: u64,
    /// The event to deliver.
    #[prost(message, optional, tag = "4")]
    pub event: Option<ServerEvent>,
    /// A presence event: WatchPresence streams of `users` get it too.
    #[prost(bool, tag = "5")]
    pub presence: bool,
    /// Logout: close every stream of this device of `users[0]`; 0: none.
    #[prost(uint64, tag = "6")]
    pub close_device: u64,
}

/// What a subscriber receives.
#[derive(Debug, Clone, PartialEq)]
pub enum BusEvent {
    /// An envelope for this server (or for all).
    Envelope(Box<Envelope>),
    /// The subscription broke and was re-established: envelopes may have been lost.
    Interrupted,
}

/// Carries envelopes between the servers of a cluster.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Starts receiving what is published to `server` and what is broadcast. Called once per
    /// server; the receiver ends when the bus shuts down.
    async fn subscribe(&self, server: &str) -> Result<mpsc::Receiver<BusEvent>>;

    /// Sends `envelope` to `server`. Best effort: `Ok` does not promise delivery.
    async fn publish(&self, server: &str, envelope: &Envelope) -> Result<()>;

    /// Sends `envelope` to every server, the sender included.
    async fn broadcast(&self, envelope: &Envelope) -> Result<()>;
}

/// The one-machine bus: channels inside this process (several servers in one process, as in
/// tests, reach each other).
#[derive(Default)]
pub struct LocalBus {
    subscribers: Mutex<HashMap<String, mpsc::Sender<BusEvent>>>,
}

impl LocalBus {
    /// A bus with no subscribers.
    pub fn new() -> Self {
        Self::default()
    }

    fn subscriber(&self, server: &str) -> Option<mpsc::Sender<BusEvent>> {
        self.lock().get(server).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::Sender<BusEvent>>> {
        self.subscribers.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Bus for LocalBus {
    async fn subscribe(&self, server: &str) -> Result<mpsc::Receiver<BusEvent>> {
        let (tx, rx) = mpsc::channel(RECEIVE_QUEUE);
        self.lock().insert(server.to_owned(), tx);
        Ok(rx)
    }

    async fn publish(&self, server: &str, envelope: &Envelope) -> Result<()> {
        if let Some(tx) = self.subscriber(server) {
            // A receiver that is gone (its server stopped) is like a server that is down.
            let _ = tx
                .send(BusEvent::Envelope(Box::new(envelope.clone())))
                .await;
        }
        Ok(())
    }

    async fn broadcast(&self, envelope: &Envelope) -> Result<()> {
        let all: Vec<mpsc::Sender<BusEvent>> = self.lock().values().cloned().collect();
        for tx in all {
            let _ = tx
                .send(BusEvent::Envelope(Box::new(envelope.clone())))
                .await;
        }
        Ok(())
    }
}

/// The behaviour every [`Bus`] must show; run by each implementation's tests.
#[cfg(test)]
pub mod conformance;

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn local_bus_passes_conformance() {
        conformance::run_all(Arc::new(LocalBus::new())).await;
    }
}
