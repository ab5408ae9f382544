//! The request/answer exchange devices use towards Herd on `devices/{id}/<area>/<verb>`
//! (identity renewal, twin, jobs; see `docs/device-protocol.md`): subscribing to a request
//! topic, reading the device id (the topic's second level) and the request id, parsing a bounded
//! JSON request, refusing with a stable code, and answering on `devices/{id}/<area>/response` —
//! or, when an MQTT 5 request names a response topic below the device's own subtree, on that
//! topic with the request's correlation data. Only the device itself can publish below
//! `devices/{id}/` (the gateway's ACL), so the device id of a request topic is authenticated.

use std::sync::Arc;

use domain::DeviceId;
use mqtt_broker::{BrokerError, BrokerHandle, Message};
use mqtt_codec::{QoS, TopicFilter, TopicName};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// Longest `request_id` a request may carry.
pub const MAX_REQUEST_ID_CHARS: usize = 128;

/// A refused request: a stable code and a message for the device's logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// Stable, snake_case.
    pub code: &'static str,
    /// Words for people.
    pub message: String,
}

impl Refused {
    /// A refusal.
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }

    /// The answer's body: `{"request_id", "status": "error", "code", "message"}`.
    pub fn answer(&self, request_id: Value) -> Value {
        let mut answer = json!({"status": "error", "code": self.code, "message": self.message});
        answer["request_id"] = request_id;
        answer
    }
}

/// Subscribes to one request topic filter (a constant of the caller's); requests published before
/// are not seen.
///
/// # Errors
/// [`BrokerError::Stopped`] when the broker task has stopped.
pub async fn subscribe(
    broker: &BrokerHandle,
    filter: &'static str,
) -> Result<mpsc::Receiver<Arc<Message>>, BrokerError> {
    let filter = TopicFilter::new(filter).expect("request filters are valid constants");
    broker.subscribe(filter).await
}

/// The device of a request topic (`devices/{id}/…`).
pub fn device_of(message: &Message) -> Option<DeviceId> {
    message.topic.as_str().split('/').nth(1).and_then(|id| DeviceId::new(id).ok())
}

/// The `request_id` of a request, echoed in its answer; `null` when there is none to echo (no
/// JSON, not a string, too long).
pub fn request_id_of(payload: &[u8]) -> Value {
    serde_json::from_slice::<Value>(payload)
        .ok()
        .and_then(|v| v.get("request_id").and_then(Value::as_str).map(str::to_owned))
        .filter(|id| id.chars().count() <= MAX_REQUEST_ID_CHARS)
        .map_or(Value::Null, Value::String)
}

/// Checks a request id read from a request: 1 to [`MAX_REQUEST_ID_CHARS`] characters.
///
/// # Errors
/// `invalid_request`.
pub fn check_request_id(id: Option<&str>) -> Result<(), Refused> {
    match id {
        Some(id) if id.is_empty() || id.chars().count() > MAX_REQUEST_ID_CHARS => {
            Err(Refused::new(
                "invalid_request",
                format!("request_id must be 1 to {MAX_REQUEST_ID_CHARS} characters"),
            ))
        }
        _ => Ok(()),
    }
}

/// Parses a JSON request of at most `max_bytes`.
///
/// # Errors
/// `invalid_request`, naming the size or the JSON problem.
pub fn parse<T: serde::de::DeserializeOwned>(
    payload: &[u8],
    max_bytes: usize,
) -> Result<T, Refused> {
    if payload.len() > max_bytes {
        return Err(Refused::new(
            "invalid_request",
            format!("the request is {} bytes, more than {max_bytes}", payload.len()),
        ));
    }
    serde_json::from_slice(payload).map_err(|e| Refused::new("invalid_request", e.to_string()))
}

/// Publishes `answer` (QoS 1) for `request` from `device`: on the request's MQTT 5 response topic
/// with its correlation data when that topic is below `devices/{id}/`, else on
/// `devices/{id}/{response_subtopic}`.
pub async fn respond(
    broker: &BrokerHandle,
    device: &DeviceId,
    request: &Message,
    response_subtopic: &str,
    answer: &Value,
) {
    let own = format!("devices/{}/", device.as_str());
    let (topic, correlation) = match &request.properties.response_topic {
        Some(t) if t.as_str().starts_with(&own) => {
            (t.clone(), request.properties.correlation_data.clone())
        }
        _ => {
            let Ok(t) = TopicName::new(format!("{own}{response_subtopic}")) else { return };
            (t, None)
        }
    };
    let mut message = Message::new(topic, answer.to_string());
    message.qos = QoS::AtLeastOnce;
    message.properties.correlation_data = correlation;
    if let Err(error) = broker.publish(message).await {
        tracing::debug!(error = %error, "broker stopped; answer to a device not sent");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_echoed_when_they_can_be() {
        assert_eq!(request_id_of(br#"{"request_id":"r1","csr":"x"}"#), json!("r1"));
        assert_eq!(request_id_of(br#"{"request_id":7}"#), Value::Null);
        assert_eq!(request_id_of(b"not json"), Value::Null);
        let long = format!(r#"{{"request_id":"{}"}}"#, "x".repeat(129));
        assert_eq!(request_id_of(long.as_bytes()), Value::Null);
        assert!(check_request_id(Some(&"x".repeat(129))).is_err());
        assert!(check_request_id(Some("")).is_err());
        assert!(check_request_id(None).is_ok());
    }

    #[test]
    fn requests_are_bounded_json() {
        let ok: Result<Value, _> = parse(br#"{"a":1}"#, 100);
        assert_eq!(ok.unwrap(), json!({"a": 1}));
        let big: Result<Value, _> = parse(&[b' '; 101], 100);
        assert_eq!(big.unwrap_err().code, "invalid_request");
        let bad: Result<Value, _> = parse(b"{", 100);
        assert_eq!(bad.unwrap_err().code, "invalid_request");
    }
}
