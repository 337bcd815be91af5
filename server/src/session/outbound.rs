//! The response half of a live stream: events from the outbox, then a final status when the
//! server closes the session. gRPC streams and the gateway's WebSockets both send each
//! event's shared encoding (`api::live_routes`, the gateway). Dropping the stream (the client
//! left) drops the [`SessionHandle`], which unregisters the session.
//!
//! It is polled once per event on every recipient's stream, so it is a plain [`Stream`]
//! that takes no lock of its own: a queued event costs one atomic check of the close flag,
//! and a stream with nothing queued registers its waker for the close too
//! ([`Session::poll_closed`](super::hub::Session::poll_closed)).

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::SystemTime,
};

use daehwa::v1::server_event::Event;
use futures::Stream;
use tokio::sync::mpsc;
use tonic::Status;

use super::{CloseReason, SessionHandle, SharedEvent};
use crate::metrics::Metrics;

/// The event stream of a session: queued events in order, then the close status.
pub fn response_stream(
    handle: SessionHandle,
    outbox: mpsc::Receiver<Arc<SharedEvent>>,
    metrics: Arc<Metrics>,
) -> impl Stream<Item = Result<Arc<SharedEvent>, Status>> + Send + 'static {
    Outbound {
        live: Some(Live { handle, outbox }),
        metrics,
    }
}

struct Outbound {
    /// The session and its outbox until the stream ends: dropped with the close status, so
    /// a closed session leaves the hub at once, not when the transport drops the stream.
    live: Option<Live>,
    metrics: Arc<Metrics>,
}

struct Live {
    handle: SessionHandle,
    outbox: mpsc::Receiver<Arc<SharedEvent>>,
}

impl Outbound {
    /// Ends the stream with the status of its session's close (unregistering the session).
    fn close_status(&mut self) -> Poll<Option<Result<Arc<SharedEvent>, Status>>> {
        let reason = self
            .live
            .take()
            .and_then(|live| live.handle.session().close_reason())
            .unwrap_or(CloseReason::Shutdown);
        Poll::Ready(Some(Err(reason.status())))
    }
}

impl Stream for Outbound {
    type Item = Result<Arc<SharedEvent>, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let Some(live) = &mut this.live else {
            return Poll::Ready(None);
        };
        // A closed session ends at once, even with events still queued.
        if live.handle.session().is_closed() {
            return this.close_status();
        }
        match live.outbox.poll_recv(cx) {
            Poll::Ready(Some(event)) => {
                if let Some(Event::Message(m)) = &event.event {
                    observe_delivery(&this.metrics, m.created_at.as_ref());
                }
                Poll::Ready(Some(Ok(event)))
            }
            Poll::Ready(None) => {
                this.live = None;
                Poll::Ready(None)
            }
            Poll::Pending if live.handle.session().poll_closed(cx) => this.close_status(),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Records how long after its creation a message left for a device.
fn observe_delivery(metrics: &Metrics, created_at: Option<&prost_types::Timestamp>) {
    let Some(created) = created_at.and_then(|t| SystemTime::try_from(*t).ok()) else {
        return;
    };
    if let Ok(elapsed) = SystemTime::now().duration_since(created) {
        metrics.delivery_latency.observe(elapsed.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use daehwa::v1::{HeartbeatAck, ServerEvent};
    use futures::{FutureExt, StreamExt};

    use super::*;
    use crate::{
        ids::{DeviceId, UserId},
        session::{Hub, hub::Session, live::SharedEventStream},
    };

    fn heartbeat_ack() -> Arc<SharedEvent> {
        SharedEvent::new(ServerEvent {
            event: Some(Event::HeartbeatAck(HeartbeatAck {})),
        })
    }

    /// A hub with one registered session (its `ready`, here a heartbeat ack, queued) and
    /// that session's response stream.
    fn open() -> (Arc<Hub>, Arc<Session>, SharedEventStream) {
        let metrics = Metrics::new();
        let hub = Hub::new(4, 16, metrics.clone());
        let (handle, outbox) = hub
            .register(UserId(1), DeviceId(1), heartbeat_ack())
            .unwrap();
        let session = handle.session().clone();
        (
            hub,
            session,
            Box::pin(response_stream(handle, outbox, metrics)),
        )
    }

    fn is_heartbeat_ack(item: Option<Result<Arc<SharedEvent>, Status>>) -> bool {
        matches!(item, Some(Ok(e)) if matches!(e.event, Some(Event::HeartbeatAck(_))))
    }

    #[tokio::test]
    async fn queued_events_then_the_close_status_then_the_end() {
        let (hub, session, mut stream) = open();
        assert!(is_heartbeat_ack(stream.next().await));
        // Nothing queued: the stream waits, and the close wakes it.
        let closer = tokio::spawn({
            let session = session.clone();
            async move {
                tokio::task::yield_now().await;
                session.close(CloseReason::Revoked);
            }
        });
        let ended = stream.next().await;
        closer.await.unwrap();
        let Some(Err(status)) = ended else {
            panic!("expected the close status, got {ended:?}");
        };
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        // The session left the hub with its status, before the stream itself is dropped.
        assert_eq!(hub.connections(), 0);
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn a_closed_session_ends_before_its_queued_events() {
        let (_hub, session, mut stream) = open();
        assert!(session.offer(heartbeat_ack()));
        session.close(CloseReason::TooSlow);
        let Some(Some(Err(status))) = stream.next().now_or_never() else {
            panic!("expected the close status at once");
        };
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(stream.next().await.is_none());
    }
}
