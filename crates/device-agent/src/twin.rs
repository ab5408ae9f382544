//! The device twin on the device side (`devices/{id}/twin/…`, see `docs/device-protocol.md`,
//! *Device twin*): read the twin, report state, and receive the desired state and delta Herd
//! pushes.
//!
//! Spawn the device with [`Device::spawn_with_inbox`](crate::Device::spawn_with_inbox) and
//! [`SUBSCRIPTION`] among its subscriptions; then [`get`] and [`report`] publish a request with a
//! fresh request id and wait for its answer in the inbox, and [`TwinMessage::parse`] reads the
//! other messages ([`TwinMessage::Desired`], [`TwinMessage::Delta`]) that arrive meanwhile or
//! later.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use std::num::NonZeroUsize;
//! use std::time::Duration;
//!
//! use device_agent::twin::{self, TwinMessage};
//! use device_agent::{Device, DeviceConfig};
//! use serde_json::json;
//!
//! let mut config = DeviceConfig::new("127.0.0.1", 1883, "thermo-1", "hdc_secret");
//! config.subscriptions = vec![twin::SUBSCRIPTION.to_owned()];
//! let (device, mut inbox, _task) = Device::spawn_with_inbox(config, NonZeroUsize::new(16).unwrap())?;
//! let timeout = Duration::from_secs(10);
//!
//! // At start: read the twin and apply what differs.
//! let state = twin::get(&device, &mut inbox, timeout, |_| {}).await?;
//! let applied = state.delta.clone(); // apply it to the hardware here
//! twin::report(&device, &mut inbox, json!(applied), timeout, |_| {}).await?;
//!
//! // Then: apply each delta as it comes and report it.
//! while let Some(message) = inbox.recv().await {
//!     if let Some(TwinMessage::Delta { delta, .. }) = TwinMessage::parse(&message) {
//!         twin::report(&device, &mut inbox, json!(delta), timeout, |_| {}).await?;
//!     }
//! }
//! # Ok(())
//! # }
//! ```

use std::time::Duration;

use bytes::Bytes;
use rand::Rng as _;
use serde_json::{Map, Value, json};

use crate::device::{DeviceHandle, Inbox};
use crate::message::{Channel, Incoming};

/// The subscription (below `devices/{id}/`) that brings answers, desired states and deltas.
pub const SUBSCRIPTION: &str = "twin/+";

/// Where Herd answers twin requests, below `devices/{id}/`.
pub const RESPONSE_SUBTOPIC: &str = "twin/response";

/// Where Herd sends the desired state when it changes.
pub const DESIRED_SUBTOPIC: &str = "twin/desired";

/// Where Herd sends the delta.
pub const DELTA_SUBTOPIC: &str = "twin/delta";

/// Why a twin request failed.
#[derive(Debug, thiserror::Error)]
pub enum TwinError {
    /// The device task has stopped.
    #[error("the device task has stopped")]
    Stopped,
    /// No answer came within the time given.
    #[error("no answer from the server within {0:?}")]
    TimedOut(Duration),
    /// The inbox closed (the device task stopped) before the answer came.
    #[error("the inbox closed before the answer came")]
    InboxClosed,
    /// The server refused the request.
    #[error("the server refused the request: {message} ({code})")]
    Refused {
        /// The stable code (`twin_too_large`, `invalid_patch`, …).
        code: String,
        /// Why, for logs.
        message: String,
    },
    /// The answer could not be read.
    #[error("the server's answer is malformed: {0}")]
    Malformed(String),
}

/// The twin as a device sees it (never the tags).
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceTwin {
    /// The desired state.
    pub desired: Map<String, Value>,
    /// The reported state.
    pub reported: Map<String, Value>,
    /// The desired properties whose value differs from the reported one.
    pub delta: Map<String, Value>,
    /// The desired version.
    pub desired_version: u64,
    /// The reported version.
    pub reported_version: u64,
}

/// A twin message from Herd.
#[derive(Debug, Clone, PartialEq)]
pub enum TwinMessage {
    /// The desired state changed.
    Desired {
        /// Its version.
        version: u64,
        /// The whole desired state.
        desired: Map<String, Value>,
    },
    /// What differs from the reported state (sent when the desired state changes and on every
    /// connection while it is not empty).
    Delta {
        /// The desired version it was computed from.
        version: u64,
        /// The properties to apply.
        delta: Map<String, Value>,
    },
    /// An answer to a request (the JSON as sent).
    Answer(Value),
}

impl TwinMessage {
    /// Reads a message of the inbox; `None` for other topics or payloads that are not what
    /// Herd sends there.
    #[must_use]
    pub fn parse(message: &Incoming) -> Option<Self> {
        let body: Value = serde_json::from_slice(&message.payload).ok()?;
        let version = || body.get("version").and_then(Value::as_u64);
        let object = |k: &str| body.get(k).and_then(Value::as_object).cloned();
        match message.subtopic() {
            DESIRED_SUBTOPIC => {
                Some(Self::Desired { version: version()?, desired: object("desired")? })
            }
            DELTA_SUBTOPIC => Some(Self::Delta { version: version()?, delta: object("delta")? }),
            RESPONSE_SUBTOPIC => Some(Self::Answer(body)),
            _ => None,
        }
    }
}

impl TwinMessage {
    /// The delta to apply and the desired version it was computed from: a pushed delta, or the
    /// delta in the answer to a `twin/get`; `None` for other messages.
    #[must_use]
    pub fn into_delta(self) -> Option<(Map<String, Value>, u64)> {
        match self {
            Self::Delta { version, delta } => Some((delta, version)),
            Self::Answer(answer) => {
                let twin = answer.get("twin")?;
                let delta = twin.get("delta")?.as_object()?.clone();
                Some((delta, twin.get("versions")?.get("desired")?.as_u64()?))
            }
            Self::Desired { .. } => None,
        }
    }
}

/// Publishes `twin/get` (request ids `<prefix>-1`, `-2`, …) whenever the device has (re)connected
/// and subscribed, without waiting for the answer: for a device that reads its messages in one
/// loop and applies the answer's delta as it comes ([`TwinMessage::into_delta`]). Ends when the
/// device task does.
pub async fn request_on_each_connection(device: DeviceHandle, prefix: &'static str) {
    let mut n = 0_u64;
    loop {
        if device.wait_for_stats(|s| s.connected && s.subscribed).await.is_err() {
            return;
        }
        n += 1;
        let payload = Bytes::from(json!({"request_id": format!("{prefix}-{n}")}).to_string());
        if device.publish(channel("twin/get"), payload).await.is_err() {
            return;
        }
        if device.wait_for_stats(|s| !s.connected).await.is_err() {
            return;
        }
    }
}

/// Publishes a merge patch of the reported state on `twin/reported` with request id
/// `request_id`, without waiting for the answer.
///
/// # Errors
/// [`TwinError::Stopped`].
pub async fn report_without_waiting(
    device: &DeviceHandle,
    reported: Value,
    request_id: &str,
) -> Result<(), TwinError> {
    let payload = Bytes::from(json!({"request_id": request_id, "reported": reported}).to_string());
    device.publish(channel("twin/reported"), payload).await.map_err(|_| TwinError::Stopped)
}

fn request_id() -> String {
    let bytes: [u8; 8] = rand::rng().random();
    format!("twin-{}", hex::encode(bytes))
}

fn channel(subtopic: &str) -> Channel {
    Channel::subtopic(subtopic).expect("the twin subtopics are valid")
}

/// Reads the twin: publishes `twin/get` and waits up to `timeout` for the answer. Messages that
/// are not the answer (desired states, deltas, anything else) are handed to `other`.
///
/// # Errors
/// [`TwinError::Stopped`], [`TwinError::TimedOut`], [`TwinError::InboxClosed`],
/// [`TwinError::Refused`], [`TwinError::Malformed`].
pub async fn get(
    device: &DeviceHandle,
    inbox: &mut Inbox,
    timeout: Duration,
    other: impl FnMut(Incoming),
) -> Result<DeviceTwin, TwinError> {
    let id = request_id();
    let payload = Bytes::from(json!({"request_id": id}).to_string());
    let answer = exchange(device, inbox, channel("twin/get"), payload, &id, timeout, other).await?;
    let twin = answer.get("twin").ok_or_else(|| TwinError::Malformed("no twin".to_owned()))?;
    let object = |k: &str| twin.get(k).and_then(Value::as_object).cloned().unwrap_or_default();
    let version = |k: &str| twin["versions"].get(k).and_then(Value::as_u64).unwrap_or(0);
    Ok(DeviceTwin {
        desired: object("desired"),
        reported: object("reported"),
        delta: object("delta"),
        desired_version: version("desired"),
        reported_version: version("reported"),
    })
}

/// Reports state: publishes the merge patch `reported` (`null` deletes a property) on
/// `twin/reported` and waits up to `timeout` for the answer; returns the new reported version.
/// Messages that are not the answer are handed to `other`.
///
/// # Errors
/// As [`get`]; [`TwinError::Refused`] with `twin_too_large` when the reported state would pass
/// the server's limit.
pub async fn report(
    device: &DeviceHandle,
    inbox: &mut Inbox,
    reported: Value,
    timeout: Duration,
    other: impl FnMut(Incoming),
) -> Result<u64, TwinError> {
    let id = request_id();
    let payload = Bytes::from(json!({"request_id": id, "reported": reported}).to_string());
    let answer =
        exchange(device, inbox, channel("twin/reported"), payload, &id, timeout, other).await?;
    answer
        .get("reported_version")
        .and_then(Value::as_u64)
        .ok_or_else(|| TwinError::Malformed("no reported_version".to_owned()))
}

/// Publishes a request and waits for the answer with its request id.
async fn exchange(
    device: &DeviceHandle,
    inbox: &mut Inbox,
    channel: Channel,
    payload: Bytes,
    request_id: &str,
    timeout: Duration,
    mut other: impl FnMut(Incoming),
) -> Result<Value, TwinError> {
    device.publish(channel, payload).await.map_err(|_| TwinError::Stopped)?;
    let wait = async {
        loop {
            let incoming = inbox.recv().await.ok_or(TwinError::InboxClosed)?;
            if incoming.subtopic() != RESPONSE_SUBTOPIC {
                other(incoming);
                continue;
            }
            let Ok(answer) = serde_json::from_slice::<Value>(&incoming.payload) else { continue };
            if answer.get("request_id").and_then(Value::as_str) != Some(request_id) {
                tracing::debug!("skipping a twin answer to another request");
                continue;
            }
            if answer.get("status").and_then(Value::as_str) == Some("error") {
                let field =
                    |k: &str| answer.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
                return Err(TwinError::Refused { code: field("code"), message: field("message") });
            }
            return Ok(answer);
        }
    };
    tokio::time::timeout(timeout, wait).await.map_err(|_| TwinError::TimedOut(timeout))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incoming(topic: &str, payload: &str) -> Incoming {
        Incoming {
            topic: topic.to_owned(),
            payload: Bytes::from(payload.to_owned()),
            response_topic: None,
            correlation_data: None,
        }
    }

    #[test]
    fn pushed_messages_parse() {
        let m = incoming("devices/d/twin/delta", r#"{"version":3,"delta":{"a":1}}"#);
        let mut delta = Map::new();
        delta.insert("a".into(), json!(1));
        assert_eq!(TwinMessage::parse(&m), Some(TwinMessage::Delta { version: 3, delta }));
        let m = incoming("devices/d/twin/desired", r#"{"version":3,"desired":{}}"#);
        assert!(matches!(TwinMessage::parse(&m), Some(TwinMessage::Desired { version: 3, .. })));
        assert_eq!(TwinMessage::parse(&incoming("devices/d/twin/delta", "[]")), None);
        assert_eq!(TwinMessage::parse(&incoming("devices/d/commands/x", "{}")), None);
    }
}
