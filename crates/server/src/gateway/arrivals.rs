//! Devices arriving: the device ids whose MQTT connection was just recorded as presence, for the
//! features that send a device what it missed while it was away (its twin's delta, queued commands,
//! pending jobs).
//!
//! [`record_presence`](super::record_presence) announces a device once its `Connected` event is
//! committed, so a listener that reads the store sees the device connected. A persistent session's
//! subscriptions are back before that, so a message published then reaches the device; a device on
//! a clean session subscribes after its CONNACK and asks for what it needs itself (every such topic
//! has a `get`).
//!
//! The fan-out is a bounded broadcast ([`ARRIVALS_CAPACITY`] ids): the recorder never waits for a
//! listener, and a listener that falls behind misses arrivals (counted in
//! `device_arrivals_missed_total`; the devices concerned still get everything by asking).

use domain::DeviceId;
use tokio::sync::broadcast;

/// Arrivals a listener may fall behind by before it misses some.
pub const ARRIVALS_CAPACITY: usize = 4096;

/// The sending side, held by the presence recorder; cheap to clone.
#[derive(Debug, Clone)]
pub struct DeviceArrivals {
    tx: broadcast::Sender<DeviceId>,
}

impl Default for DeviceArrivals {
    fn default() -> Self {
        Self::new()
    }
}

impl DeviceArrivals {
    /// A fan-out with no listener yet.
    #[must_use]
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(ARRIVALS_CAPACITY);
        Self { tx }
    }

    /// A new listener: it sees the arrivals announced from now on.
    #[must_use]
    pub fn listen(&self) -> ArrivalListener {
        ArrivalListener { rx: self.tx.subscribe() }
    }

    /// Announces that `device` is connected (recorded). Never waits.
    pub fn announce(&self, device: DeviceId) {
        // No listener is not an error: nothing needs to know.
        let _ = self.tx.send(device);
    }
}

/// One listener's side.
#[derive(Debug)]
pub struct ArrivalListener {
    rx: broadcast::Receiver<DeviceId>,
}

impl ArrivalListener {
    /// The next device that arrived; `None` once the recorder is gone. Arrivals missed because
    /// this listener fell behind are skipped (and counted).
    pub async fn next(&mut self) -> Option<DeviceId> {
        loop {
            match self.rx.recv().await {
                Ok(device) => return Some(device),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    metrics::counter!("device_arrivals_missed_total").increment(missed);
                    tracing::warn!(missed, "a listener fell behind device arrivals");
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> DeviceId {
        DeviceId::new(s).unwrap()
    }

    #[tokio::test]
    async fn every_listener_sees_each_arrival_in_order() {
        let arrivals = DeviceArrivals::new();
        let (mut a, mut b) = (arrivals.listen(), arrivals.listen());
        arrivals.announce(id("d1"));
        arrivals.announce(id("d2"));
        for l in [&mut a, &mut b] {
            assert_eq!(l.next().await, Some(id("d1")));
            assert_eq!(l.next().await, Some(id("d2")));
        }
        drop(arrivals);
        assert_eq!(a.next().await, None);
    }

    #[tokio::test]
    async fn a_listener_that_falls_behind_skips_to_what_is_left() {
        let arrivals = DeviceArrivals::new();
        let mut l = arrivals.listen();
        for n in 0..=ARRIVALS_CAPACITY {
            arrivals.announce(id(&format!("d{n}")));
        }
        // The oldest one was overwritten; the listener carries on with the rest.
        assert_eq!(l.next().await, Some(id("d1")));
    }
}
