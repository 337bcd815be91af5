//! The [`Bus`] contract as executable checks: targeted envelopes reach only their server, in
//! the order published; broadcasts reach every subscriber; envelopes arrive unchanged.

use std::{sync::Arc, time::Duration};

use daehwa::v1::{HeartbeatAck, ServerEvent, server_event::Event};
use tokio::sync::mpsc;

use super::{Bus, BusEvent, Envelope};

/// How long a check waits for an envelope before failing.
const DEADLINE: Duration = Duration::from_secs(10);

/// Runs every check on one bus.
pub async fn run_all(bus: Arc<dyn Bus>) {
    let tag = format!(
        "{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos()
    );
    let a = format!("a-{tag}");
    let b = format!("b-{tag}");
    let mut rx_a = bus.subscribe(&a).await.expect("subscribe a");
    let mut rx_b = bus.subscribe(&b).await.expect("subscribe b");
    targeted_envelopes_arrive_in_order(bus.as_ref(), &a, &mut rx_a, &mut rx_b).await;
    broadcasts_reach_everyone(bus.as_ref(), &a, &mut rx_a, &mut rx_b).await;
}

/// An envelope with a recognisable payload.
pub fn envelope(origin: &str, n: u64) -> Envelope {
    Envelope {
        origin: origin.to_owned(),
        users: vec![n, n + 1],
        skip_device: n * 10,
        event: Some(ServerEvent {
            event: Some(Event::HeartbeatAck(HeartbeatAck {})),
        }),
        presence: n % 2 == 0,
        close_device: 0,
    }
}

/// The next envelope, failing the test after [`DEADLINE`].
pub async fn next_envelope(rx: &mut mpsc::Receiver<BusEvent>) -> Envelope {
    loop {
        match tokio::time::timeout(DEADLINE, rx.recv()).await {
            Ok(Some(BusEvent::Envelope(e))) => return *e,
            Ok(Some(BusEvent::Interrupted)) => continue,
            Ok(None) => panic!("bus subscription ended"),
            Err(_) => panic!("no envelope within {DEADLINE:?}"),
        }
    }
}

/// 100 envelopes to `a` arrive at `a`, unchanged and in order; `b` gets none of them.
async fn targeted_envelopes_arrive_in_order(
    bus: &dyn Bus,
    a: &str,
    rx_a: &mut mpsc::Receiver<BusEvent>,
    rx_b: &mut mpsc::Receiver<BusEvent>,
) {
    for n in 0..100 {
        bus.publish(a, &envelope("origin", n))
            .await
            .expect("publish");
    }
    for n in 0..100 {
        assert_eq!(next_envelope(rx_a).await, envelope("origin", n));
    }
    // A marker broadcast after the targeted ones: `b` must see it first (nothing leaked).
    bus.broadcast(&envelope("marker", 1000))
        .await
        .expect("broadcast");
    assert_eq!(next_envelope(rx_b).await, envelope("marker", 1000));
    assert_eq!(next_envelope(rx_a).await, envelope("marker", 1000));
}

/// A broadcast reaches every subscriber, its sender included.
async fn broadcasts_reach_everyone(
    bus: &dyn Bus,
    a: &str,
    rx_a: &mut mpsc::Receiver<BusEvent>,
    rx_b: &mut mpsc::Receiver<BusEvent>,
) {
    bus.broadcast(&envelope(a, 7)).await.expect("broadcast");
    assert_eq!(next_envelope(rx_a).await, envelope(a, 7));
    assert_eq!(next_envelope(rx_b).await, envelope(a, 7));
    // Publishing to a server nobody subscribed as is not an error.
    bus.publish("nobody-here", &envelope(a, 8))
        .await
        .expect("publish to an absent server");
}
