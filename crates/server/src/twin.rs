//! Device twins over MQTT: devices read their twin and report their state, and Herd pushes them
//! their desired state and delta.
//!
//! | topic | who publishes | payload |
//! | --- | --- | --- |
//! | `devices/{id}/twin/get` | the device | `{"request_id": "…"}` (optional; the payload may be empty) |
//! | `devices/{id}/twin/reported` | the device | `{"request_id": "…", "reported": {merge patch}}` |
//! | `devices/{id}/twin/response` | Herd | `{"request_id", "status": "ok", "twin": {…}}`, `{"request_id", "status": "ok", "reported_version": n}` or `{"request_id", "status": "error", "code", "message"}` |
//! | `devices/{id}/twin/desired` | Herd | `{"version": n, "desired": {…}}` when the effective desired state changes |
//! | `devices/{id}/twin/delta` | Herd | `{"version": n, "delta": {…}}` when the desired state changes and the delta is not empty, and whenever the device connects while it is not empty |
//!
//! Everything Herd publishes is QoS 1. An MQTT 5 request with a Response Topic below the
//! device's own `devices/{id}/` subtree is answered there instead, with its Correlation Data.
//! The tags section is never sent to a device.
//!
//! One task ([`serve_twins`]) answers requests one after another, pushes desired changes that
//! REST requests committed (their device ids arrive on a bounded channel,
//! [`TWIN_CHANGES_CAPACITY`]; a full channel holds the request that sends) and catches arriving
//! devices up (`gateway::DeviceArrivals`). Each broker feed holds
//! `BrokerConfig::internal_subscription_capacity` requests; further ones are dropped and counted by
//! the broker while it is full (the device retries after its own timeout). Bad requests are
//! answered with an error code, never dropped silently.

use std::sync::Arc;

use domain::{DeviceId, DeviceTwin, Timestamp, TwinError, TwinPolicy};
use mqtt_broker::{BrokerError, BrokerHandle, Message};
use mqtt_codec::{QoS, TopicFilter, TopicName};
use serde_json::{Value, json};
use store::Store;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::device_request::{self, MAX_REQUEST_ID_CHARS, Refused};
use crate::gateway::ArrivalListener;

/// Where devices ask for their twin.
pub const GET_FILTER: &str = "devices/+/twin/get";

/// Where devices report their state.
pub const REPORTED_FILTER: &str = "devices/+/twin/reported";

/// Desired-state changes committed by REST requests that may wait for the twin task.
pub const TWIN_CHANGES_CAPACITY: usize = 1024;

/// The broker subscriptions the twin task reads.
#[derive(Debug)]
pub struct TwinFeeds {
    get: mpsc::Receiver<Arc<Message>>,
    reported: mpsc::Receiver<Arc<Message>>,
}

impl TwinFeeds {
    /// Subscribes to both request topics; requests published before are not seen.
    ///
    /// # Errors
    /// [`BrokerError::Stopped`] when the broker task has stopped.
    pub async fn subscribe(broker: &BrokerHandle) -> Result<Self, BrokerError> {
        let filter = |f: &str| TopicFilter::new(f).expect("the filter constants are valid");
        Ok(Self {
            get: broker.subscribe(filter(GET_FILTER)).await?,
            reported: broker.subscribe(filter(REPORTED_FILTER)).await?,
        })
    }
}

/// What the twin task needs besides its inputs.
#[derive(Clone)]
pub struct TwinService {
    /// Where twins are stored.
    pub store: Arc<dyn Store>,
    /// Where answers and pushes are published.
    pub broker: BrokerHandle,
    /// Size limits and history.
    pub policy: TwinPolicy,
    /// Largest request payload (`twin.max_request_bytes`).
    pub max_request_bytes: usize,
}

impl std::fmt::Debug for TwinService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TwinService")
            .field("policy", &self.policy)
            .field("max_request_bytes", &self.max_request_bytes)
            .finish_non_exhaustive()
    }
}

/// Answers requests, pushes desired changes and catches arriving devices up until the broker
/// stops or `stop` is cancelled.
pub async fn serve_twins(
    mut feeds: TwinFeeds,
    mut changes: mpsc::Receiver<DeviceId>,
    mut arrivals: ArrivalListener,
    service: TwinService,
    stop: CancellationToken,
) {
    let (mut get_open, mut reported_open, mut changes_open, mut arrivals_open) =
        (true, true, true, true);
    while get_open || reported_open {
        tokio::select! {
            () = stop.cancelled() => break,
            m = feeds.get.recv(), if get_open => match m {
                Some(m) => service.answer(Kind::Get, &m).await,
                None => get_open = false,
            },
            m = feeds.reported.recv(), if reported_open => match m {
                Some(m) => service.answer(Kind::Reported, &m).await,
                None => reported_open = false,
            },
            d = changes.recv(), if changes_open => match d {
                Some(device) => service.push(&device, true).await,
                None => changes_open = false,
            },
            d = arrivals.next(), if arrivals_open => match d {
                Some(device) => service.push(&device, false).await,
                None => arrivals_open = false,
            },
        }
    }
    tracing::debug!("twin responder stopped");
}

/// Which request a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Get,
    Reported,
}

/// A store failure as the device hears it.
fn store_refusal(error: &store::StoreError) -> Refused {
    match error {
        store::StoreError::NotFound { .. } => {
            Refused::new("device_not_found", "the device does not exist")
        }
        other => {
            tracing::error!(error = %other, "twin request failed: store error");
            Refused::new("unavailable", "the server cannot handle it now; retry later")
        }
    }
}

/// A refused twin change as the device hears it.
fn twin_refusal(error: &TwinError) -> Refused {
    let code = match error {
        TwinError::TooLarge { .. } | TwinError::TooDeep { .. } => "twin_too_large",
        TwinError::NotAnObject { .. } | TwinError::EtagMismatch { .. } => "invalid_patch",
    };
    Refused::new(code, error.to_string())
}

/// What a device sees of its twin: desired and reported, their versions and the delta (never
/// the tags).
pub fn device_view(twin: &DeviceTwin) -> Value {
    json!({
        "desired": twin.desired.document,
        "reported": twin.reported.document,
        "delta": twin.delta(),
        "versions": {
            "desired": twin.desired.version,
            "reported": twin.reported.version,
        },
    })
}

impl TwinService {
    async fn answer(&self, kind: Kind, message: &Message) {
        let Some(device_id) = device_request::device_of(message) else { return };
        let (request_id, outcome) = match parse_request(&message.payload, self.max_request_bytes) {
            Ok((request_id, request)) => {
                let outcome = match kind {
                    Kind::Get => self.get(&device_id).await,
                    Kind::Reported => self.report(&device_id, request).await,
                };
                (request_id, outcome)
            }
            Err((request_id, refused)) => (request_id, Err(refused)),
        };
        let answer = match outcome {
            Ok(mut answer) => {
                answer["request_id"] = request_id;
                answer
            }
            Err(refused) => {
                metrics::counter!("twin_requests_refused_total", "reason" => refused.code)
                    .increment(1);
                tracing::info!(%device_id, code = refused.code, "twin request refused");
                refused.answer(request_id)
            }
        };
        device_request::respond(&self.broker, &device_id, message, "twin/response", &answer).await;
    }
}

/// The request id and the request object of a payload (an empty payload is `{}`); a refusal
/// carries whatever request id could be read.
fn parse_request(payload: &[u8], max_bytes: usize) -> Result<(Value, Value), (Value, Refused)> {
    if payload.len() > max_bytes {
        return Err((
            Value::Null,
            Refused::new(
                "request_too_large",
                format!(
                    "the request is {} bytes, more than twin.max_request_bytes ({})",
                    payload.len(),
                    max_bytes
                ),
            ),
        ));
    }
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Ok((Value::Null, json!({})));
    }
    let request: Value = serde_json::from_slice(payload)
        .map_err(|e| (Value::Null, Refused::new("invalid_request", format!("not JSON: {e}"))))?;
    if !request.is_object() {
        return Err((
            Value::Null,
            Refused::new("invalid_request", "the request must be a JSON object"),
        ));
    }
    let request_id = match request.get("request_id") {
        None | Some(Value::Null) => Value::Null,
        Some(Value::String(id)) if !id.is_empty() && id.chars().count() <= MAX_REQUEST_ID_CHARS => {
            Value::String(id.clone())
        }
        Some(_) => {
            return Err((
                Value::Null,
                Refused::new(
                    "invalid_request",
                    format!(
                        "request_id must be a string of 1 to {MAX_REQUEST_ID_CHARS} characters"
                    ),
                ),
            ));
        }
    };
    Ok((request_id, request))
}

impl TwinService {
    async fn get(&self, device_id: &DeviceId) -> Result<Value, Refused> {
        let twin = self.store.device_twin(device_id).await.map_err(|e| store_refusal(&e))?;
        let twin =
            twin.ok_or_else(|| Refused::new("device_not_found", "the device does not exist"))?;
        Ok(json!({"status": "ok", "twin": device_view(&twin)}))
    }

    async fn report(&self, device_id: &DeviceId, request: Value) -> Result<Value, Refused> {
        let Value::Object(mut request) = request else {
            return Err(Refused::new("invalid_request", "the request must be a JSON object"));
        };
        request.remove("request_id");
        let Some(patch) = request.remove("reported") else {
            return Err(Refused::new("invalid_request", "the request has no reported object"));
        };
        if let Some(field) = request.keys().next() {
            return Err(Refused::new("invalid_request", format!("unknown field {field:?}")));
        }
        let change = self
            .store
            .report_twin(device_id, &patch, &self.policy, Timestamp::now())
            .await
            .map_err(|e| store_refusal(&e))?
            .map_err(|e| twin_refusal(&e))?;
        Ok(json!({"status": "ok", "reported_version": change.twin.reported.version}))
    }

    /// Sends `device` its desired state (when `desired_changed`) and its delta when it is not
    /// empty.
    async fn push(&self, device: &DeviceId, desired_changed: bool) {
        let twin = match self.store.device_twin(device).await {
            Ok(Some(twin)) => twin,
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(%device, error = %error, "cannot read the twin to push it");
                return;
            }
        };
        let topic = |leaf: &str| TopicName::new(format!("devices/{}/twin/{leaf}", device.as_str()));
        if desired_changed {
            let Ok(t) = topic("desired") else { return };
            let body = json!({"version": twin.desired.version, "desired": twin.desired.document});
            let mut m = Message::new(t, body.to_string());
            m.qos = QoS::AtLeastOnce;
            self.publish(m).await;
        }
        let delta = twin.delta();
        if !delta.is_empty() {
            let Ok(t) = topic("delta") else { return };
            let body = json!({"version": twin.desired.version, "delta": delta});
            let mut m = Message::new(t, body.to_string());
            m.qos = QoS::AtLeastOnce;
            self.publish(m).await;
        }
    }

    async fn publish(&self, message: Message) {
        if let Err(error) = self.broker.publish(message).await {
            tracing::debug!(error = %error, "broker stopped; twin message not sent");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_or_are_refused_with_a_code() {
        let parse = |p: &[u8]| parse_request(p, 64);
        assert_eq!(parse(b"").unwrap(), (Value::Null, json!({})));
        assert_eq!(parse(br#"{"request_id":"r1"}"#).unwrap().0, json!("r1"));
        assert_eq!(parse(b"[1]").unwrap_err().1.code, "invalid_request");
        assert_eq!(parse(b"nope").unwrap_err().1.code, "invalid_request");
        assert_eq!(parse(br#"{"request_id":7}"#).unwrap_err().1.code, "invalid_request");
        assert_eq!(parse(&[b' '; 65]).unwrap_err().1.code, "request_too_large");
    }
}
