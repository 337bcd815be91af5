//! `send_batch`: the events already queued behind a frame leave with it, in order, at most
//! `MAX_BATCH` frames per flush, and a session that ends while its queue is drained still
//! gets its close frame after the events before the end.

use std::sync::Arc;

use axum::extract::ws::Message;
use daehwa::v1::{HeartbeatAck, ServerEvent, server_event::Event};
use futures::channel::mpsc;
use tonic::Status;

use super::{MAX_BATCH, close, codec::Codec, send_batch};
use crate::SharedEvent;

type Queued = Result<Arc<SharedEvent>, Status>;

fn event() -> Arc<SharedEvent> {
    SharedEvent::new(ServerEvent {
        event: Some(Event::HeartbeatAck(HeartbeatAck {})),
    })
}

fn frame(n: u8) -> Message {
    Message::Binary(vec![n].into())
}

/// A session's queue holding `items`, still open (more may come).
fn queue(
    items: Vec<Queued>,
) -> (
    mpsc::UnboundedSender<Queued>,
    mpsc::UnboundedReceiver<Queued>,
) {
    let (tx, rx) = mpsc::unbounded();
    for item in items {
        tx.unbounded_send(item).expect("queue open");
    }
    (tx, rx)
}

#[tokio::test]
async fn queued_events_follow_the_first_frame_in_order() {
    let (_tx, mut events) = queue((0..3).map(|_| Ok(event())).collect());
    let mut sink: Vec<Message> = Vec::new();
    let ended = send_batch(&mut sink, frame(7), &mut events, Codec::Proto)
        .await
        .expect("a Vec takes every frame");
    assert!(ended.is_none(), "the session goes on");
    let proto = Codec::Proto.encode(&event());
    assert_eq!(sink, vec![frame(7), proto.clone(), proto.clone(), proto]);
}

#[tokio::test]
async fn one_flush_takes_at_most_max_batch_frames() {
    let (_tx, mut events) = queue((0..MAX_BATCH + 5).map(|_| Ok(event())).collect());
    let mut sink: Vec<Message> = Vec::new();
    send_batch(&mut sink, frame(0), &mut events, Codec::Proto)
        .await
        .expect("a Vec takes every frame");
    assert_eq!(sink.len(), MAX_BATCH);
    // What did not fit stays queued for the next batch: 5 more than a batch's events.
    let mut left = 0;
    while events.try_recv().is_ok() {
        left += 1;
    }
    assert_eq!(left, 6);
}

#[tokio::test]
async fn a_session_that_ends_while_draining_gets_its_close_frame() {
    let (_tx, mut events) = queue(vec![
        Ok(event()),
        Err(Status::resource_exhausted("too slow")),
        Ok(event()),
    ]);
    let mut sink: Vec<Message> = Vec::new();
    let ended = send_batch(&mut sink, frame(1), &mut events, Codec::Proto)
        .await
        .expect("a Vec takes every frame");
    let closing = ended.expect("the session ended");
    assert_eq!(closing.code, close::TRY_AGAIN_LATER);
    assert_eq!(closing.reason, "too slow");
    assert_eq!(
        sink,
        vec![frame(1), Codec::Proto.encode(&event())],
        "the events before the end are written, nothing after it"
    );
}
