//! What a device's agent reports about itself: its facts (agent version, OS, kernel, hostname, …),
//! sent after each connect, and its health (uptime, CPU, memory, disk, …), sent with each
//! heartbeat.
//!
//! Like presence, these reports are observed, not decided by an operator: they are recorded as
//! they arrive and are not audited. Their contents are free-form: Herd checks only that each is a
//! JSON object of bounded size ([`AgentPayload`]) and keeps it as sent.

use crate::{DeviceId, Timestamp};

/// The facts or the health an agent reported: a JSON object, at most a configured size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentPayload(serde_json::Map<String, serde_json::Value>);

/// Why a payload is not an [`AgentPayload`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AgentPayloadError {
    /// The payload is larger than the limit.
    #[error("the payload is {size} bytes; the limit is {max}")]
    TooLarge {
        /// Its size in bytes.
        size: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// The payload is not JSON in UTF-8.
    #[error("the payload is not JSON")]
    NotJson,
    /// The payload is JSON, but not an object.
    #[error("the payload is not a JSON object")]
    NotObject,
}

impl AgentPayloadError {
    /// A short label for metrics and logs: `too_large`, `not_json`, `not_object`.
    pub fn label(self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "too_large",
            Self::NotJson => "not_json",
            Self::NotObject => "not_object",
        }
    }
}

impl AgentPayload {
    /// Parses a payload as it arrived: a JSON object of at most `max_bytes` bytes. The size is
    /// checked before anything is parsed.
    ///
    /// # Errors
    /// [`AgentPayloadError`] when the payload is too large, not JSON, or not an object.
    pub fn parse(payload: &[u8], max_bytes: usize) -> Result<Self, AgentPayloadError> {
        if payload.len() > max_bytes {
            return Err(AgentPayloadError::TooLarge { size: payload.len(), max: max_bytes });
        }
        match serde_json::from_slice(payload).map_err(|_| AgentPayloadError::NotJson)? {
            serde_json::Value::Object(map) => Ok(Self(map)),
            _ => Err(AgentPayloadError::NotObject),
        }
    }

    /// Wraps a payload read back from storage, which was checked when it arrived.
    pub fn from_stored(map: serde_json::Map<String, serde_json::Value>) -> Self {
        Self(map)
    }

    /// The payload's fields.
    pub fn fields(&self) -> &serde_json::Map<String, serde_json::Value> {
        &self.0
    }

    /// The payload as a JSON value (an object).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(self.0.clone())
    }

    /// The payload as compact JSON text, as stores keep it.
    pub fn to_json_string(&self) -> String {
        serde_json::Value::Object(self.0.clone()).to_string()
    }
}

/// One report of a device's agent, as the gateway received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentReportUpdate {
    /// The agent's facts (`devices/{id}/facts`): they replace the facts recorded before.
    Facts {
        /// The reporting device.
        device_id: DeviceId,
        /// What it reported.
        facts: AgentPayload,
        /// When Herd received it.
        at: Timestamp,
    },
    /// A heartbeat (`devices/{id}/heartbeat`): its health replaces the health recorded before, and
    /// the device's heartbeat count goes up by one.
    Heartbeat {
        /// The reporting device.
        device_id: DeviceId,
        /// What it reported.
        health: AgentPayload,
        /// When Herd received it.
        at: Timestamp,
    },
}

impl AgentReportUpdate {
    /// The reporting device.
    pub fn device_id(&self) -> &DeviceId {
        match self {
            Self::Facts { device_id, .. } | Self::Heartbeat { device_id, .. } => device_id,
        }
    }
}

/// What is recorded of a device's agent: its last facts and its last heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentReport {
    /// The device.
    pub device_id: DeviceId,
    /// The facts it last reported, if it ever did.
    pub facts: Option<AgentPayload>,
    /// When those facts arrived.
    pub facts_at: Option<Timestamp>,
    /// The health of its last heartbeat, if it ever sent one.
    pub health: Option<AgentPayload>,
    /// When its last heartbeat arrived.
    pub heartbeat_at: Option<Timestamp>,
    /// How many heartbeats were recorded for it.
    pub heartbeats: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(payload: &str, max: usize, expected: Result<&str, AgentPayloadError>) {
        let got = AgentPayload::parse(payload.as_bytes(), max).map(|p| p.to_json_string());
        assert_eq!(got.as_deref().map_err(|e| *e), expected);
    }

    #[test]
    fn payloads_must_be_small_json_objects() {
        check(r#"{"os": "linux", "n": 1}"#, 100, Ok(r#"{"n":1,"os":"linux"}"#));
        check("{}", 2, Ok("{}"));
        check("{} ", 2, Err(AgentPayloadError::TooLarge { size: 3, max: 2 }));
        check("[1, 2]", 100, Err(AgentPayloadError::NotObject));
        check("42", 100, Err(AgentPayloadError::NotObject));
        check("null", 100, Err(AgentPayloadError::NotObject));
        check("not json", 100, Err(AgentPayloadError::NotJson));
        check("", 100, Err(AgentPayloadError::NotJson));
        check(r#"{"a": 1} {"b": 2}"#, 100, Err(AgentPayloadError::NotJson));
        assert_eq!(
            AgentPayload::parse(b"{\"a\": \"\xff\"}", 100),
            Err(AgentPayloadError::NotJson),
            "not UTF-8"
        );
    }
}
