//! Zero-touch provisioning over MQTT: a device with no credential yet logs in as the bootstrap
//! user `$provision` (see `gateway::GatewayAuthenticator`), publishes its registration to
//! `$herd/provision/{client id}/register` and reads the answer on
//! `$herd/provision/{client id}/response`.
//!
//! | topic | who publishes | payload |
//! | --- | --- | --- |
//! | `$herd/provision/{client id}/register` | the bootstrap client | `{"request_id": "…", "enrollment_group": "…", "proof": {…}, "csr": "…"}` (`csr` optional) |
//! | `$herd/provision/{client id}/response` | Herd (QoS 1) | `{"request_id": "…", "status": "registered", "device_id": "…", "created": …, "credential": {…}, "mqtt": {…}}` or `{"request_id": "…", "status": "error", "code": "…", "message": "…"}` |
//!
//! The registration id is the client id (the topic's third level), so a client registers only
//! itself; the proof is the same as over HTTPS and [`Provisioner::register`] does the rest, with
//! the same checks, audit records, stable codes and failure counts (per registration id, and per
//! the address the client logged in from, which the authenticator remembers by client id since a
//! published message does not carry it). A successful answer has the shape of the HTTPS answer
//! plus `request_id` and `status`; it carries the device's new secret, and only that bootstrap
//! client (its ACL) and Herd can subscribe to its topic: `gateway::TopicRules` opens nothing
//! under `$herd/` to applications or anonymous clients, and devices reach only their subtree.
//!
//! A registration published with RETAIN is answered like any other, and its retained copy is
//! cleared at once, so that no proof stays in the store.
//!
//! The responder handles requests one after another on its own task, like `identity::rotation`;
//! its feed holds `BrokerConfig::internal_subscription_capacity` requests and further ones are
//! dropped and counted by the broker while it is full (the client retries after its timeout).

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use domain::RegistrationId;
use http_api::{Proof, ProvisionError, Provisioner, RegisterRequest};
use mqtt_broker::{BrokerError, BrokerHandle, Message};
use mqtt_codec::{QoS, TopicFilter, TopicName};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::gateway::{GatewayAuthenticator, bootstrap_response_topic};

/// Where bootstrap clients publish their registrations.
pub const REGISTER_FILTER: &str = "$herd/provision/+/register";

/// Largest registration payload: a CSR is well under 4 KiB.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;

/// Longest `request_id`.
const MAX_REQUEST_ID_CHARS: usize = 128;

/// The broker subscription the responder reads.
#[derive(Debug)]
pub struct ProvisioningFeed {
    register: mpsc::Receiver<Arc<Message>>,
}

impl ProvisioningFeed {
    /// Subscribes to [`REGISTER_FILTER`]; requests published before are not seen.
    ///
    /// # Errors
    /// [`BrokerError::Stopped`] when the broker task has stopped.
    pub async fn subscribe(broker: &BrokerHandle) -> Result<Self, BrokerError> {
        let filter = TopicFilter::new(REGISTER_FILTER).expect("the filter constant is valid");
        Ok(Self { register: broker.subscribe(filter).await? })
    }
}

/// What the responder needs besides its feed.
#[derive(Debug)]
pub struct Responder {
    /// Registers devices (the REST API's, sharing its failure counts).
    pub provisioner: Provisioner,
    /// Where answers are published.
    pub broker: BrokerHandle,
    /// Remembers where bootstrap clients logged in from.
    pub authenticator: Arc<GatewayAuthenticator>,
}

/// Answers the registrations of `feed` until the broker stops or `stop` is cancelled.
pub async fn serve_provisioning(
    mut feed: ProvisioningFeed,
    responder: Responder,
    stop: CancellationToken,
) {
    loop {
        let message = tokio::select! {
            () = stop.cancelled() => break,
            m = feed.register.recv() => match m {
                Some(m) => m,
                None => break,
            },
        };
        responder.answer(&message).await;
    }
    tracing::debug!("MQTT provisioning responder stopped");
}

/// A registration as published (the proof's shape is the HTTPS body's).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterMessage {
    request_id: String,
    enrollment_group: String,
    proof: ProofMessage,
    csr: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum ProofMessage {
    SymmetricKey {
        expires_at: i64,
        signature: String,
    },
    ClaimCode {
        code: String,
    },
    /// The certificate the client presented over mutual TLS when it logged in.
    X509,
}

/// A request refused before it reached the provisioner: a stable code and a message.
#[derive(Debug)]
struct Invalid(String);

impl Responder {
    async fn answer(&self, message: &Message) {
        // The filter has the client id as its third level; only that client may publish there.
        let Some(client_id) =
            message.topic.as_str().split('/').nth(2).and_then(|id| RegistrationId::new(id).ok())
        else {
            return;
        };
        if message.retain {
            // An empty retained message clears the topic (ours, below, or the client's): nothing
            // to answer.
            if message.payload.is_empty() {
                return;
            }
            // A retained registration would keep its proof (a claim code) in the store: clear it.
            let mut clear = Message::new(message.topic.clone(), bytes::Bytes::new());
            clear.retain = true;
            if let Err(error) = self.broker.publish(clear).await {
                tracing::debug!(error = %error, "broker stopped; retained registration kept");
            }
        }
        let request_id = request_id_of(&message.payload);
        let answer = match parse(&message.payload) {
            Err(Invalid(why)) => error_answer("invalid_request", &why, None),
            Ok(request) => {
                let proof = match request.proof {
                    ProofMessage::SymmetricKey { expires_at, signature } => Proof::SymmetricKey {
                        expires_at,
                        // Undecodable base64 is a wrong proof like any other, counted and
                        // audited.
                        signature: BASE64.decode(signature.trim()).unwrap_or_default(),
                    },
                    ProofMessage::ClaimCode { code } => Proof::ClaimCode { code },
                    // Without a certificate at login the chain is empty: a wrong proof, counted
                    // and audited like any other.
                    ProofMessage::X509 => Proof::X509 {
                        chain: self
                            .authenticator
                            .bootstrap_certificate_chain(client_id.as_str())
                            .map(|chain| chain.as_ref().clone())
                            .unwrap_or_default(),
                    },
                };
                let register = RegisterRequest {
                    registration_id: client_id.as_str().to_owned(),
                    enrollment_group: request.enrollment_group,
                    proof,
                    csr: request.csr,
                    client_ip: self.authenticator.bootstrap_address(client_id.as_str()),
                    transport: "mqtt",
                };
                match self.provisioner.register(register).await {
                    Ok(provisioned) => {
                        let mut answer = provisioned.to_json();
                        answer["status"] = json!("registered");
                        answer
                    }
                    Err(e) => refusal_answer(&e),
                }
            }
        };
        let mut answer = answer;
        answer["request_id"] = request_id;
        if answer["status"] == "error" {
            let code = answer["code"].as_str().unwrap_or_default().to_owned();
            tracing::info!(registration_id = %client_id, code, "MQTT registration refused");
        }
        let topic = bootstrap_response_topic(client_id.as_str());
        let Ok(topic) = TopicName::new(topic) else { return };
        let mut response = Message::new(topic, answer.to_string());
        response.qos = QoS::AtLeastOnce;
        if let Err(error) = self.broker.publish(response).await {
            tracing::debug!(error = %error, "broker stopped; provisioning answer not sent");
        }
    }
}

/// The answer to a refused registration.
fn refusal_answer(e: &ProvisionError) -> Value {
    match e {
        ProvisionError::Internal(error) => {
            tracing::error!(error = %error, "MQTT registration failed");
            error_answer(e.code(), "the server cannot register devices now; retry later", None)
        }
        ProvisionError::TooManyAttempts(secs) => {
            error_answer(e.code(), &e.to_string(), Some(*secs))
        }
        e => error_answer(e.code(), &e.to_string(), None),
    }
}

fn error_answer(code: &str, message: &str, retry_after_secs: Option<u64>) -> Value {
    metrics::counter!("mqtt_registrations_refused_total", "reason" => code.to_owned()).increment(1);
    let mut answer = json!({"status": "error", "code": code, "message": message});
    if let Some(secs) = retry_after_secs {
        answer["retry_after_secs"] = json!(secs);
    }
    answer
}

/// The `request_id` of a request, echoed in its answer; `null` when there is none to echo.
fn request_id_of(payload: &[u8]) -> Value {
    if payload.len() > MAX_REQUEST_BYTES {
        return Value::Null;
    }
    serde_json::from_slice::<Value>(payload)
        .ok()
        .and_then(|v| v.get("request_id").and_then(Value::as_str).map(str::to_owned))
        .filter(|id| (1..=MAX_REQUEST_ID_CHARS).contains(&id.chars().count()))
        .map_or(Value::Null, Value::String)
}

fn parse(payload: &[u8]) -> Result<RegisterMessage, Invalid> {
    if payload.len() > MAX_REQUEST_BYTES {
        return Err(Invalid(format!("the request is larger than {MAX_REQUEST_BYTES} bytes")));
    }
    let request: RegisterMessage =
        serde_json::from_slice(payload).map_err(|e| Invalid(e.to_string()))?;
    if !(1..=MAX_REQUEST_ID_CHARS).contains(&request.request_id.chars().count()) {
        return Err(Invalid(format!("request_id must be 1 to {MAX_REQUEST_ID_CHARS} characters")));
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_parsed_strictly() {
        let ok = br#"{"request_id":"r1","enrollment_group":"g","proof":{"type":"claim_code","code":"X"}}"#;
        let r = parse(ok).unwrap();
        assert_eq!((r.request_id.as_str(), r.csr), ("r1", None));
        let bad: [&[u8]; 6] = [
            b"not json",
            br#"{"request_id":"","enrollment_group":"g","proof":{"type":"claim_code","code":"X"}}"#,
            br#"{"request_id":"r","enrollment_group":"g","proof":{"type":"claim_code","code":"X"},"extra":1}"#,
            br#"{"request_id":"r","enrollment_group":"g","proof":{"type":"password"}}"#,
            br#"{"request_id":"r","enrollment_group":"g","proof":{"type":"claim_code","code":"X","k":1}}"#,
            br#"{"request_id":"r","proof":{"type":"claim_code","code":"X"}}"#,
        ];
        for payload in bad {
            assert!(parse(payload).is_err(), "{}", String::from_utf8_lossy(payload));
        }
        let long = format!(
            r#"{{"request_id":"{}","enrollment_group":"g","proof":{{"type":"claim_code","code":"X"}}}}"#,
            "x".repeat(129)
        );
        assert!(parse(long.as_bytes()).is_err());
        let huge = format!(r#"{{"request_id":"r","pad":"{}"}}"#, "x".repeat(MAX_REQUEST_BYTES));
        assert!(parse(huge.as_bytes()).unwrap_err().0.contains("larger than"));
        assert_eq!(request_id_of(huge.as_bytes()), Value::Null);
    }

    #[test]
    fn refusals_carry_their_code_and_retry_time() {
        let a = refusal_answer(&ProvisionError::TooManyAttempts(42));
        assert_eq!(
            (&a["status"], &a["code"], &a["retry_after_secs"]),
            (&json!("error"), &json!("too_many_attempts"), &json!(42))
        );
        let a = refusal_answer(&ProvisionError::InvalidProof);
        assert_eq!(a["code"], "invalid_proof");
        assert!(a.get("retry_after_secs").is_none());
        let a = refusal_answer(&ProvisionError::Internal("disk full".into()));
        assert_eq!(a["code"], "internal");
        assert!(!a["message"].as_str().unwrap().contains("disk"), "internal details stay in logs");
    }
}
