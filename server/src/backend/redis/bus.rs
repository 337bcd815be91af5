//! [`Bus`] on Redis pub/sub: one channel per server (`daehwa:bus:server:<id>`) for
//! envelopes addressed to it, and `daehwa:bus:all` for broadcasts. Pub/sub keeps nothing:
//! a server that is disconnected misses what was published meanwhile. That is the bus's
//! contract (a doorbell); the subscriber reports every re-subscription as
//! [`BusEvent::Interrupted`] so its server can make clients sync.

use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use prost::Message as _;
use redis::aio::ConnectionManager;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{CALL_TIMEOUT, bounded, connect};
use crate::{
    backend::bus::{Bus, BusEvent, Envelope, RECEIVE_QUEUE},
    error::Result,
};

const WHAT: &str = "message bus";
const BROADCAST: &str = "daehwa:bus:all";

/// The bus between chat servers on Redis pub/sub.
pub struct RedisBus {
    client: redis::Client,
    connection: ConnectionManager,
    shutdown: CancellationToken,
}

impl RedisBus {
    /// Connects to `url`; subscriptions end when `shutdown` is cancelled.
    pub async fn connect(url: &str, shutdown: CancellationToken) -> Result<Self> {
        let (client, connection) = connect(url, WHAT).await?;
        Ok(Self {
            client,
            connection,
            shutdown,
        })
    }

    async fn publish_to(&self, channel: &str, envelope: &Envelope) -> Result<()> {
        let mut connection = self.connection.clone();
        let mut publish = redis::cmd("PUBLISH");
        publish.arg(channel).arg(envelope.encode_to_vec());
        let _: i64 = bounded(WHAT, publish.query_async(&mut connection)).await?;
        Ok(())
    }
}

fn channel_of(server: &str) -> String {
    format!("daehwa:bus:server:{server}")
}

/// A pub/sub connection subscribed to `channels`.
async fn open(client: &redis::Client, channels: &[String]) -> Result<redis::aio::PubSub> {
    let mut pubsub = bounded(WHAT, client.get_async_pubsub()).await?;
    for channel in channels {
        bounded(WHAT, pubsub.subscribe(channel)).await?;
    }
    Ok(pubsub)
}

/// Forwards envelopes until `shutdown` or until the receiver is dropped; re-subscribes with
/// backoff when the connection breaks, announcing each gap as `Interrupted`.
async fn receive(
    client: redis::Client,
    channels: Vec<String>,
    mut pubsub: redis::aio::PubSub,
    tx: mpsc::Sender<BusEvent>,
    shutdown: CancellationToken,
) {
    loop {
        {
            let mut messages = pubsub.on_message();
            loop {
                let message = tokio::select! {
                    () = shutdown.cancelled() => return,
                    message = messages.next() => message,
                };
                let Some(message) = message else { break };
                match Envelope::decode(message.get_payload_bytes()) {
                    Ok(envelope) => {
                        if tx
                            .send(BusEvent::Envelope(Box::new(envelope)))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "undecodable envelope on the bus: ignored")
                    }
                }
            }
        }
        tracing::warn!("message bus (Redis) subscription lost: reconnecting");
        let mut delay = Duration::from_millis(50);
        pubsub = loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
            match open(&client, &channels).await {
                Ok(pubsub) => break pubsub,
                Err(e) => {
                    tracing::debug!(error = %e, "message bus (Redis) still unavailable");
                    delay = (delay * 2).min(CALL_TIMEOUT);
                }
            }
        };
        tracing::info!("message bus (Redis) subscription restored");
        if tx.send(BusEvent::Interrupted).await.is_err() {
            return;
        }
    }
}

#[async_trait]
impl Bus for RedisBus {
    async fn subscribe(&self, server: &str) -> Result<mpsc::Receiver<BusEvent>> {
        let channels = vec![channel_of(server), BROADCAST.to_owned()];
        let pubsub = open(&self.client, &channels).await?;
        let (tx, rx) = mpsc::channel(RECEIVE_QUEUE);
        tokio::spawn(receive(
            self.client.clone(),
            channels,
            pubsub,
            tx,
            self.shutdown.clone(),
        ));
        Ok(rx)
    }

    async fn publish(&self, server: &str, envelope: &Envelope) -> Result<()> {
        self.publish_to(&channel_of(server), envelope).await
    }

    async fn broadcast(&self, envelope: &Envelope) -> Result<()> {
        self.publish_to(BROADCAST, envelope).await
    }
}
