//! What a device sends and receives besides telemetry: the channels of its subtree, events and
//! messages from subscriptions.

use bytes::Bytes;
use mqtt_codec::TopicName;
use serde_json::{Map, Value};

/// Where under `devices/{id}/` an outgoing message goes (docs/device-protocol.md, *Topics*).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Channel {
    /// `devices/{id}/telemetry`: measurements.
    Telemetry,
    /// `devices/{id}/events`: notable occurrences.
    Events,
    /// `devices/{id}/facts`: what the device is (agent version, OS, …), sent after connecting.
    Facts,
    /// `devices/{id}/heartbeat`: periodic health.
    Heartbeat,
    /// Any other topic in the device's subtree, such as `twin/reported`; built by
    /// [`Channel::subtopic`].
    Other(Subtopic),
}

/// A validated topic below `devices/{id}/` (for example `twin/reported`), for [`Channel::Other`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subtopic(pub(crate) String);

impl Channel {
    /// A channel for `devices/{id}/{subtopic}`.
    ///
    /// # Errors
    /// [`InvalidSubtopic`] when `subtopic` is empty, holds a wildcard (`+`, `#`) or a NUL, or
    /// starts or ends with `/`.
    pub fn subtopic(subtopic: impl Into<String>) -> Result<Self, InvalidSubtopic> {
        let subtopic = subtopic.into();
        if subtopic.is_empty()
            || subtopic.starts_with('/')
            || subtopic.ends_with('/')
            || subtopic.contains(['+', '#', '\0'])
            || TopicName::new(format!("devices/x/{subtopic}")).is_err()
        {
            return Err(InvalidSubtopic(subtopic));
        }
        Ok(Self::Other(Subtopic(subtopic)))
    }

    /// The part of the topic after `devices/{id}/`.
    #[must_use]
    pub fn as_subtopic(&self) -> &str {
        match self {
            Self::Telemetry => "telemetry",
            Self::Events => "events",
            Self::Facts => "facts",
            Self::Heartbeat => "heartbeat",
            Self::Other(Subtopic(s)) => s,
        }
    }
}

/// A subtopic that cannot be published to.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid subtopic {0:?}: it must be a topic name without wildcards, not starting or ending with '/'"
)]
pub struct InvalidSubtopic(pub String);

/// One event: a named occurrence with a severity, optional data and timestamp.
///
/// Its payload is `{"name": …, "severity": …, "ts"?: …, "data"?: {…}}`.
///
/// ```
/// use device_agent::Event;
///
/// let e = Event::new("door_opened").with_severity("warning").with_data("door", 2);
/// let json: serde_json::Value = serde_json::from_slice(&e.to_payload()).unwrap();
/// assert_eq!(json, serde_json::json!({"name": "door_opened", "severity": "warning", "data": {"door": 2}}));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    name: String,
    severity: String,
    ts: Option<String>,
    data: Map<String, Value>,
}

impl Event {
    /// An event of severity `info` without data.
    #[must_use]
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into(), severity: "info".to_owned(), ts: None, data: Map::new() }
    }

    /// Sets the severity (`info`, `warning`, `error`, `critical` by convention).
    #[must_use]
    pub fn with_severity(mut self, severity: impl Into<String>) -> Self {
        self.severity = severity.into();
        self
    }

    /// Adds (or replaces) one data field.
    #[must_use]
    pub fn with_data(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.data.insert(name.into(), value.into());
        self
    }

    /// Sets the time it happened, an RFC 3339 date-time; without it Herd stamps the arrival.
    #[must_use]
    pub fn with_timestamp(mut self, rfc3339: impl Into<String>) -> Self {
        self.ts = Some(rfc3339.into());
        self
    }

    /// The JSON payload, as published.
    #[must_use]
    pub fn to_payload(&self) -> Bytes {
        let mut object = Map::new();
        object.insert("name".to_owned(), Value::String(self.name.clone()));
        object.insert("severity".to_owned(), Value::String(self.severity.clone()));
        if let Some(ts) = &self.ts {
            object.insert("ts".to_owned(), Value::String(ts.clone()));
        }
        if !self.data.is_empty() {
            object.insert("data".to_owned(), Value::Object(self.data.clone()));
        }
        Bytes::from(Value::Object(object).to_string())
    }
}

/// A message the server sent on one of the device's subscriptions
/// ([`DeviceConfig::subscriptions`](crate::DeviceConfig::subscriptions)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    /// The full topic, `devices/{id}/…`.
    pub topic: String,
    /// The payload.
    pub payload: Bytes,
    /// MQTT 5 Response Topic: where a request wants its answer.
    pub response_topic: Option<String>,
    /// MQTT 5 Correlation Data, to be returned with the answer.
    pub correlation_data: Option<Bytes>,
}

impl Incoming {
    /// The topic after `devices/{id}/`, for example `commands/reboot`.
    #[must_use]
    pub fn subtopic(&self) -> &str {
        // devices/{id}/rest: skip two levels.
        let mut parts = self.topic.splitn(3, '/');
        let _devices = parts.next();
        let _id = parts.next();
        parts.next().unwrap_or("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subtopics() {
        assert_eq!(Channel::subtopic("twin/reported").unwrap().as_subtopic(), "twin/reported");
        for bad in ["", "/a", "a/", "a/+", "#", "a\0b"] {
            assert!(Channel::subtopic(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Channel::Heartbeat.as_subtopic(), "heartbeat");
    }

    #[test]
    fn incoming_subtopic() {
        let m = Incoming {
            topic: "devices/dev-1/commands/reboot".to_owned(),
            payload: Bytes::new(),
            response_topic: None,
            correlation_data: None,
        };
        assert_eq!(m.subtopic(), "commands/reboot");
    }

    #[test]
    fn event_payloads() {
        let e = Event::new("boot").with_timestamp("2026-01-02T03:04:05Z");
        let json: Value = serde_json::from_slice(&e.to_payload()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"name": "boot", "severity": "info", "ts": "2026-01-02T03:04:05Z"})
        );
    }
}
