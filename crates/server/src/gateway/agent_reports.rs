//! Recording what devices' agents report about themselves: their facts (`devices/{id}/facts`, after
//! each connect) and their heartbeats (`devices/{id}/heartbeat`, periodically).
//!
//! The recorder reads both topics through in-process broker subscriptions ([`AgentReportFeeds`]) and
//! writes to the store in its own task, in batches of whatever has arrived meanwhile, so the broker
//! never waits for the store. Each feed holds `BrokerConfig::internal_subscription_capacity`
//! messages; when the store falls behind and a feed is full, the broker drops further reports and
//! counts them (`mqtt_messages_dropped_total{reason="internal_full"}`). A lost heartbeat is
//! corrected by the next one, lost facts by the next connect.
//!
//! A report must be a JSON object of at most `mqtt.agent_report_max_bytes`; anything else is ignored,
//! logged at debug level and counted (`agent_reports_rejected_total{reason}`). It is never an error
//! to the device: the broker has accepted and routed the PUBLISH like any other before the recorder
//! sees it.
//!
//! Devices can publish only under their own subtree, so a device reports only for itself.
//! Integration applications allowed to publish on these topics can report for any device: they are
//! trusted like the REST API's operators.

use std::sync::Arc;

use domain::{AgentPayload, AgentPayloadError, AgentReportUpdate, DeviceId, Timestamp};
use mqtt_broker::{BrokerError, BrokerHandle, Message};
use mqtt_codec::TopicFilter;
use store::Store;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The topic filter of agents' facts.
pub const FACTS_FILTER: &str = "devices/+/facts";

/// The topic filter of agents' heartbeats.
pub const HEARTBEAT_FILTER: &str = "devices/+/heartbeat";

/// Most reports written in one store transaction. Bigger batches commit less often; this bound keeps
/// one transaction short and the memory of one batch small.
const MAX_BATCH: usize = 512;

/// The broker subscriptions the recorder reads: one per topic. Dropping them ends the
/// subscriptions.
#[derive(Debug)]
pub struct AgentReportFeeds {
    /// Messages on [`FACTS_FILTER`]; closed when the broker stops.
    facts: mpsc::Receiver<Arc<Message>>,
    /// Messages on [`HEARTBEAT_FILTER`]; closed when the broker stops.
    heartbeats: mpsc::Receiver<Arc<Message>>,
}

impl AgentReportFeeds {
    /// Subscribes to facts and heartbeats. Subscribe before devices can connect: reports published
    /// before it are not seen.
    ///
    /// # Errors
    /// [`BrokerError::Stopped`] when the broker task has stopped.
    pub async fn subscribe(broker: &BrokerHandle) -> Result<Self, BrokerError> {
        let filter = |f: &str| TopicFilter::new(f).expect("the filter constants are valid");
        Ok(Self {
            facts: broker.subscribe(filter(FACTS_FILTER)).await?,
            heartbeats: broker.subscribe(filter(HEARTBEAT_FILTER)).await?,
        })
    }
}

/// What a message on a feed is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Facts,
    Heartbeat,
}

/// Records the agent reports of `feeds` in `store` until the broker stops (the feeds close) or
/// `stop` is cancelled; then records the reports already queued and returns.
///
/// Reports that are not JSON objects of at most `max_bytes` are ignored and counted. A store error
/// is logged and the batch is lost (counted in `agent_reports_dropped_total{reason="store_error"}`);
/// the next reports of its devices correct them.
pub async fn record_agent_reports(
    mut feeds: AgentReportFeeds,
    store: Arc<dyn Store>,
    max_bytes: usize,
    stop: CancellationToken,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let (mut facts_open, mut heartbeats_open) = (true, true);
    while facts_open || heartbeats_open {
        let (kind, message) = tokio::select! {
            () = stop.cancelled() => break,
            m = feeds.facts.recv(), if facts_open => match m {
                Some(m) => (Kind::Facts, m),
                None => { facts_open = false; continue }
            },
            m = feeds.heartbeats.recv(), if heartbeats_open => match m {
                Some(m) => (Kind::Heartbeat, m),
                None => { heartbeats_open = false; continue }
            },
        };
        push(&mut batch, kind, &message, max_bytes);
        drain(&mut feeds, &mut batch, max_bytes);
        write(store.as_ref(), &mut batch).await;
    }
    // Stopped, or the broker is gone: what is queued is still recorded.
    loop {
        drain(&mut feeds, &mut batch, max_bytes);
        if batch.is_empty() {
            break;
        }
        write(store.as_ref(), &mut batch).await;
    }
    tracing::debug!("agent report recorder stopped");
}

/// Moves what the feeds hold now into `batch`, up to [`MAX_BATCH`] reports.
fn drain(feeds: &mut AgentReportFeeds, batch: &mut Vec<AgentReportUpdate>, max_bytes: usize) {
    while batch.len() < MAX_BATCH {
        let (kind, message) = if let Ok(m) = feeds.facts.try_recv() {
            (Kind::Facts, m)
        } else if let Ok(m) = feeds.heartbeats.try_recv() {
            (Kind::Heartbeat, m)
        } else {
            break;
        };
        push(batch, kind, &message, max_bytes);
    }
}

/// Adds the report `message` carries to `batch`, or counts and logs why it is ignored.
fn push(batch: &mut Vec<AgentReportUpdate>, kind: Kind, message: &Message, max_bytes: usize) {
    match parse(kind, message, max_bytes, Timestamp::now()) {
        Ok(report) => batch.push(report),
        Err(rejected) => {
            metrics::counter!("agent_reports_rejected_total", "reason" => rejected.label())
                .increment(1);
            tracing::debug!(
                topic = message.topic.as_str(),
                reason = rejected.label(),
                error = %rejected,
                "ignored an agent report"
            );
        }
    }
}

/// Why a message is not a report.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Rejected {
    /// The topic's second level is not a device id (only an application could publish there).
    DeviceId(String),
    /// The payload is not a small JSON object.
    Payload(AgentPayloadError),
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::DeviceId(id) => write!(f, "{id:?} is not a device id"),
            Self::Payload(e) => e.fmt(f),
        }
    }
}

impl Rejected {
    fn label(&self) -> &'static str {
        match self {
            Self::DeviceId(_) => "invalid_device_id",
            Self::Payload(e) => e.label(),
        }
    }
}

/// The report in `message`, a message on the feed of `kind`, received `at`.
fn parse(
    kind: Kind,
    message: &Message,
    max_bytes: usize,
    at: Timestamp,
) -> Result<AgentReportUpdate, Rejected> {
    // The feed's filter `devices/+/…` guarantees three levels.
    let id = message.topic.as_str().split('/').nth(1).unwrap_or_default();
    let device_id = DeviceId::new(id).map_err(|_| Rejected::DeviceId(id.to_owned()))?;
    let payload = AgentPayload::parse(&message.payload, max_bytes).map_err(Rejected::Payload)?;
    Ok(match kind {
        Kind::Facts => AgentReportUpdate::Facts { device_id, facts: payload, at },
        Kind::Heartbeat => AgentReportUpdate::Heartbeat { device_id, health: payload, at },
    })
}

/// Writes `batch` in one transaction and empties it.
async fn write(store: &dyn Store, batch: &mut Vec<AgentReportUpdate>) {
    if batch.is_empty() {
        return;
    }
    if let Err(error) = store.record_agent_reports(batch).await {
        metrics::counter!("agent_reports_dropped_total", "reason" => "store_error")
            .increment(batch.len() as u64);
        tracing::warn!(reports = batch.len(), error = %error, "failed to record agent reports");
    }
    batch.clear();
}

#[cfg(test)]
mod tests {
    use mqtt_codec::TopicName;

    use super::*;

    const AT: Timestamp = Timestamp::from_millis(1_780_000_000_000);

    #[track_caller]
    fn check(kind: Kind, topic: &str, payload: &str, expected: Result<&str, &str>) {
        let message = Message::new(TopicName::new(topic).unwrap(), payload.to_owned());
        let got = match parse(kind, &message, 64, AT) {
            Ok(AgentReportUpdate::Facts { device_id, facts, at }) => {
                assert_eq!(at, AT);
                Ok(format!("facts {device_id} {}", facts.to_json_string()))
            }
            Ok(AgentReportUpdate::Heartbeat { device_id, health, at }) => {
                assert_eq!(at, AT);
                Ok(format!("heartbeat {device_id} {}", health.to_json_string()))
            }
            Err(rejected) => Err(rejected.label()),
        };
        assert_eq!(got.as_deref().map_err(|e| *e), expected);
    }

    #[test]
    fn reports_are_small_json_objects_of_a_device() {
        use Kind::{Facts, Heartbeat};
        check(
            Facts,
            "devices/gw-17/facts",
            r#"{"os":"linux"}"#,
            Ok(r#"facts gw-17 {"os":"linux"}"#),
        );
        check(Heartbeat, "devices/gw-17/heartbeat", "{}", Ok("heartbeat gw-17 {}"));
        check(Heartbeat, "devices/gw-17/heartbeat", "[]", Err("not_object"));
        check(Heartbeat, "devices/gw-17/heartbeat", "", Err("not_json"));
        check(Facts, "devices/gw-17/facts", "up", Err("not_json"));
        check(
            Facts,
            "devices/gw-17/facts",
            &format!(r#"{{"a":"{}"}}"#, "x".repeat(60)),
            Err("too_large"),
        );
        check(Facts, "devices/a b/facts", "{}", Err("invalid_device_id"));
        check(Facts, "devices//facts", "{}", Err("invalid_device_id"));
    }
}
