//! The telemetry message a device publishes on `devices/{id}/telemetry`.

use bytes::Bytes;
use serde_json::{Map, Value};

/// One telemetry message: named measurements and an optional timestamp.
///
/// Its payload (docs/device-protocol.md, *Payloads*) is a UTF-8 JSON object,
/// `{"ts": "<RFC 3339>", …fields}`, with `ts` only when set.
/// Without `ts`, Herd stamps the time the message arrives.
/// A timestamp set with [`Telemetry::with_timestamp`] replaces a field named `ts`.
///
/// ```
/// use device_agent::Telemetry;
///
/// let t = Telemetry::new().with_field("temperature", 21.5).with_timestamp("2026-01-02T03:04:05Z");
/// let json: serde_json::Value = serde_json::from_slice(&t.to_payload()).unwrap();
/// assert_eq!(json, serde_json::json!({"ts": "2026-01-02T03:04:05Z", "temperature": 21.5}));
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Telemetry {
    ts: Option<String>,
    fields: Map<String, Value>,
}

impl Telemetry {
    /// A message without fields or timestamp.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// A message carrying `fields`.
    #[must_use]
    pub fn from_fields(fields: Map<String, Value>) -> Self {
        Self { ts: None, fields }
    }

    /// Adds (or replaces) the measurement `name`.
    #[must_use]
    pub fn with_field(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.fields.insert(name.into(), value.into());
        self
    }

    /// Sets the time of the measurements, an RFC 3339 date-time such as `2026-01-02T03:04:05Z`.
    /// The device does not check it; Herd does.
    #[must_use]
    pub fn with_timestamp(mut self, rfc3339: impl Into<String>) -> Self {
        self.ts = Some(rfc3339.into());
        self
    }

    /// The payload of a batch: a JSON array of the messages' objects.
    #[must_use]
    pub fn batch_payload(batch: &[Self]) -> Bytes {
        Bytes::from(Value::Array(batch.iter().map(Self::to_value).collect()).to_string())
    }

    /// The JSON payload, as published.
    #[must_use]
    pub fn to_payload(&self) -> Bytes {
        Bytes::from(self.to_value().to_string())
    }

    fn to_value(&self) -> Value {
        let mut object = Map::new();
        if let Some(ts) = &self.ts {
            object.insert("ts".to_owned(), Value::String(ts.clone()));
        }
        for (name, value) in &self.fields {
            if self.ts.is_none() || name != "ts" {
                object.insert(name.clone(), value.clone());
            }
        }
        Value::Object(object)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[track_caller]
    fn check(t: &Telemetry, expected: &str) {
        let got: Value = serde_json::from_slice(&t.to_payload()).unwrap();
        let want: Value = serde_json::from_str(expected).unwrap();
        assert_eq!(got, want);
    }

    #[test]
    fn payloads() {
        check(&Telemetry::new(), "{}");
        check(&Telemetry::new().with_field("b", 2).with_field("a", "x"), r#"{"a":"x","b":2}"#);
        check(
            &Telemetry::new().with_field("ts", "old").with_timestamp("2026-01-02T03:04:05Z"),
            r#"{"ts":"2026-01-02T03:04:05Z"}"#,
        );
        let Value::Object(fields) = json!({"rssi": -70, "door": true}) else { unreachable!() };
        check(&Telemetry::from_fields(fields), r#"{"door":true,"rssi":-70}"#);
        let batch = Telemetry::batch_payload(&[
            Telemetry::new().with_field("a", 1).with_timestamp("2026-01-02T03:04:05Z"),
            Telemetry::new().with_field("a", 2),
        ]);
        let got: Value = serde_json::from_slice(&batch).unwrap();
        assert_eq!(got, json!([{"ts": "2026-01-02T03:04:05Z", "a": 1}, {"a": 2}]));
    }
}
