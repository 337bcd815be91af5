//! The response half of a live stream: events from the outbox, then a final status when the
//! server closes the session. gRPC streams take each event out of its [`SharedEvent`]
//! (`api::chat`); the gateway's WebSockets send its shared encoding. Dropping the stream (the
//! client left) drops the [`SessionHandle`], which unregisters the session.

use std::{sync::Arc, time::SystemTime};

use daehwa::v1::server_event::Event;
use futures::{Stream, stream};
use tokio::sync::mpsc;
use tonic::Status;

use super::{CloseReason, SessionHandle, SharedEvent};
use crate::metrics::Metrics;

struct State {
    handle: SessionHandle,
    outbox: mpsc::Receiver<Arc<SharedEvent>>,
    metrics: Arc<Metrics>,
}

/// The event stream of a session: queued events in order, then the close status.
pub fn response_stream(
    handle: SessionHandle,
    outbox: mpsc::Receiver<Arc<SharedEvent>>,
    metrics: Arc<Metrics>,
) -> impl Stream<Item = Result<Arc<SharedEvent>, Status>> + Send + 'static {
    stream::unfold(
        Some(State {
            handle,
            outbox,
            metrics,
        }),
        |state| async move {
            let mut state = state?;
            let session = state.handle.session().clone();
            tokio::select! {
                biased;
                () = session.closed() => {
                    let status = session.close_reason().unwrap_or(CloseReason::Shutdown).status();
                    Some((Err(status), None))
                }
                event = state.outbox.recv() => {
                    let event = event?;
                    if let Some(Event::Message(m)) = &event.event {
                        observe_delivery(&state.metrics, m.created_at.as_ref());
                    }
                    Some((Ok(event), Some(state)))
                }
            }
        },
    )
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
