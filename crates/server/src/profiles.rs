//! Configuration profiles at run time: the task that drains the store's durable recompute queue.
//!
//! Every change that can alter a device's desired layers (a profile created, changed or deleted;
//! a device created or its tags, name or state changed; a static group's members; a dynamic
//! group's filter) puts the devices concerned on the recompute queue in the change's own
//! transaction (see the `Store` trait, section "configuration profiles"). [`run_recompute`] takes
//! them off in batches with `Store::recompute_twins`, which recomputes each twin's effective
//! desired document from its layers, and sends the id of every device whose document changed on
//! the twin-change channel, so that the twin task pushes the new desired document and delta to the
//! device (the same bounded channel REST twin changes use: `send().await` waits for room, a
//! change is never dropped).
//!
//! The task wakes when the REST API or a registration (HTTPS or MQTT) commits such a change
//! ([`http_api::AppState::with_recompute_wake`]) and at least every `twin.recompute_interval_ms`,
//! which also covers changes made by other paths (another node) and work left by a store failure. A batch that came back full is
//! followed at once by the next one until the queue is empty. A device whose merged document would
//! be past the twin limits keeps its current desired document; it is logged at warn and counted
//! (`twin_recompute_refused_total`). The task runs on the presence task tracker and stops with it.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use domain::{DeviceId, Timestamp, TwinPolicy};
use store::Store;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

/// What the recompute task needs.
#[derive(Clone)]
pub struct Recompute {
    /// Where the queue and the twins are.
    pub store: Arc<dyn Store>,
    /// Twin limits and history.
    pub policy: TwinPolicy,
    /// Devices per `recompute_twins` call (`twin.recompute_batch`).
    pub batch: NonZeroU32,
    /// How often the queue is drained when nothing wakes the task (`twin.recompute_interval_ms`).
    pub interval: Duration,
    /// The twin task's change channel: the ids of devices whose desired document changed.
    pub changes: mpsc::Sender<DeviceId>,
}

impl std::fmt::Debug for Recompute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recompute")
            .field("policy", &self.policy)
            .field("batch", &self.batch)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

/// Drains the recompute queue whenever `wake` is notified and every `interval`, until `stop` is
/// cancelled.
pub async fn run_recompute(service: Recompute, wake: Arc<Notify>, stop: CancellationToken) {
    let mut interval = tokio::time::interval(service.interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            () = wake.notified() => {}
            _ = interval.tick() => {}
        }
        if service.drain(&stop).await.is_break() {
            break;
        }
    }
    tracing::debug!("profile recompute task stopped");
}

impl Recompute {
    /// Recomputes batches until the queue is empty, a store call fails (retried next tick) or
    /// the task must stop; `Break` when the task must stop (shutdown, or the twin task is gone).
    async fn drain(&self, stop: &CancellationToken) -> std::ops::ControlFlow<()> {
        use std::ops::ControlFlow::{Break, Continue};
        loop {
            if stop.is_cancelled() {
                return Break(());
            }
            let done = match self
                .store
                .recompute_twins(self.batch, &self.policy, Timestamp::now())
                .await
            {
                Ok(done) => done,
                Err(error) => {
                    tracing::warn!(error = %error, "recomputing twins failed; retrying next tick");
                    return Continue(());
                }
            };
            metrics::counter!("twin_recomputed_total").increment(done.taken);
            for (device_id, error) in &done.refused {
                metrics::counter!("twin_recompute_refused_total").increment(1);
                tracing::warn!(
                    %device_id,
                    error = %error,
                    "the merged desired document is past the twin limits; the device keeps its current one"
                );
            }
            for twin in done.changed {
                tokio::select! {
                    () = stop.cancelled() => return Break(()),
                    sent = self.changes.send(twin.device_id) => if let Err(e) = sent {
                        tracing::debug!(device_id = %e.0, "twin task gone; recomputed twin not pushed");
                        return Break(());
                    },
                }
            }
            if done.taken < u64::from(self.batch.get()) {
                return Continue(());
            }
        }
    }
}
