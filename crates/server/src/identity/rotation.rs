//! Devices renewing their own credentials over MQTT: a new certificate from a certificate signing
//! request, or a new credential whose secret the device made itself.
//!
//! | topic | who publishes | payload |
//! | --- | --- | --- |
//! | `devices/{id}/identity/csr` | the device | `{"request_id": "…", "csr": "-----BEGIN CERTIFICATE REQUEST-----…"}` |
//! | `devices/{id}/identity/credential` | the device | `{"request_id": "…", "secret_sha256": "<64 hex digits>", "expires_in_days": 365}` (expiry optional) |
//! | `devices/{id}/identity/response` | Herd (QoS 1) | `{"request_id": "…", "status": "issued", …}` or `{"request_id": "…", "status": "error", "code": "…", "message": "…"}` |
//!
//! Only the device itself can publish a request (devices reach only their own subtree, and
//! `gateway::TopicRules` lets no other client publish below `devices/+/identity/`), so a request is
//! authenticated by the connection it came over. A credential request carries the SHA-256 of a
//! secret the device generated (`hdc_` and 64 lowercase hex digits, like the secrets the REST API
//! makes): the secret itself never travels, and an answer holds nothing secret. The certificate's
//! subject is the device whatever the request says, as for the REST API.
//!
//! A device holds at most `identity.max_credentials_per_device` usable certificates, and as many
//! usable credentials: with the default of two it rotates by holding the old one and the new one
//! until an operator revokes the old one (which also closes the connection that used it; the
//! device reconnects with the new one and its session is still there). A request beyond that is
//! answered with `too_many_credentials`. Everything issued is audited with the device as actor
//! (`device:{id}`).
//!
//! The responder handles requests one after another on its own task; each feed holds
//! `BrokerConfig::internal_subscription_capacity` requests and further ones are dropped and counted
//! by the broker while it is full (the device retries after its own timeout).

use std::sync::Arc;

use domain::{
    Actor, CertificateSerial, DeviceId, LifecycleState, Mutation, NewDeviceCertificate,
    NewDeviceCredential, Timestamp, TokenHash,
};
use http_api::{CertificateIssuer, IssueError};
use mqtt_broker::{BrokerError, BrokerHandle, Message};
use serde::Deserialize;
use serde_json::{Value, json};
use store::Store;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::device_request::{self, Refused, request_id_of};

/// Where devices send certificate signing requests.
pub const CSR_FILTER: &str = "devices/+/identity/csr";

/// Where devices register a credential they generated.
pub const CREDENTIAL_FILTER: &str = "devices/+/identity/credential";

/// Largest request payload: a CSR is well under 4 KiB.
const MAX_REQUEST_BYTES: usize = 16 * 1024;

/// Longest expiry a device may ask for its credential, in days.
const MAX_EXPIRY_DAYS: u32 = 3650;

/// The broker subscriptions the responder reads.
#[derive(Debug)]
pub struct RotationFeeds {
    csr: mpsc::Receiver<Arc<Message>>,
    credential: mpsc::Receiver<Arc<Message>>,
}

impl RotationFeeds {
    /// Subscribes to both request topics; requests published before are not seen.
    ///
    /// # Errors
    /// [`BrokerError::Stopped`] when the broker task has stopped.
    pub async fn subscribe(broker: &BrokerHandle) -> Result<Self, BrokerError> {
        Ok(Self {
            csr: device_request::subscribe(broker, CSR_FILTER).await?,
            credential: device_request::subscribe(broker, CREDENTIAL_FILTER).await?,
        })
    }
}

/// What the responder needs besides the feeds.
#[derive(Clone)]
pub struct Responder {
    /// Where certificates and credentials are stored.
    pub store: Arc<dyn Store>,
    /// Where answers are published.
    pub broker: BrokerHandle,
    /// Signs certificates.
    pub issuer: Arc<dyn CertificateIssuer>,
    /// `identity.max_credentials_per_device`.
    pub max_per_device: usize,
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder").field("max_per_device", &self.max_per_device).finish()
    }
}

/// Answers the requests of `feeds` until the broker stops or `stop` is cancelled.
pub async fn serve_rotation(
    mut feeds: RotationFeeds,
    responder: Responder,
    stop: CancellationToken,
) {
    let (mut csr_open, mut credential_open) = (true, true);
    while csr_open || credential_open {
        let (kind, message) = tokio::select! {
            () = stop.cancelled() => break,
            m = feeds.csr.recv(), if csr_open => match m {
                Some(m) => (Kind::Csr, m),
                None => { csr_open = false; continue }
            },
            m = feeds.credential.recv(), if credential_open => match m {
                Some(m) => (Kind::Credential, m),
                None => { credential_open = false; continue }
            },
        };
        responder.answer(kind, &message).await;
    }
    tracing::debug!("identity rotation responder stopped");
}

/// Which request a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Csr,
    Credential,
}

/// A store failure as the device hears it.
fn store_refusal(error: &store::StoreError) -> Refused {
    tracing::error!(error = %error, "identity request failed: store error");
    Refused::new("unavailable", "the server cannot store it now; retry later")
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CsrRequest {
    request_id: String,
    csr: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialRequest {
    request_id: String,
    secret_sha256: String,
    expires_in_days: Option<u32>,
}

impl Responder {
    async fn answer(&self, kind: Kind, message: &Message) {
        let Some(device_id) = device_request::device_of(message) else { return };
        let request_id = request_id_of(&message.payload);
        let outcome = match kind {
            Kind::Csr => self.issue_certificate(&device_id, &message.payload).await,
            Kind::Credential => self.register_credential(&device_id, &message.payload).await,
        };
        let answer = match outcome {
            Ok(mut answer) => {
                answer["request_id"] = request_id;
                answer
            }
            Err(refused) => {
                metrics::counter!("identity_requests_refused_total", "reason" => refused.code)
                    .increment(1);
                tracing::info!(%device_id, code = refused.code, "identity request refused");
                refused.answer(request_id)
            }
        };
        device_request::respond(&self.broker, &device_id, message, "identity/response", &answer)
            .await;
    }

    /// Refuses a request when the device holds `usable` certificates or credentials (`what`)
    /// already, the most it may.
    fn check_room(&self, usable: usize, what: &str) -> Result<(), Refused> {
        if usable < self.max_per_device {
            return Ok(());
        }
        Err(Refused::new(
            "too_many_credentials",
            format!(
                "the device holds {usable} usable {what} already \
                 (identity.max_credentials_per_device); an operator must revoke one first"
            ),
        ))
    }

    /// The device, which must exist and be active, and the mutation it makes.
    async fn active_device(&self, device_id: &DeviceId) -> Result<Mutation, Refused> {
        let device = self.store.device(device_id).await.map_err(|e| store_refusal(&e))?;
        match device {
            Some(d) if d.state == LifecycleState::Active => Ok(Mutation {
                actor: Actor { token_id: None, name: format!("device:{}", device_id.as_str()) },
                at: Timestamp::now(),
            }),
            _ => Err(Refused::new("device_not_active", "the device is not active")),
        }
    }

    async fn issue_certificate(
        &self,
        device_id: &DeviceId,
        payload: &[u8],
    ) -> Result<Value, Refused> {
        let request: CsrRequest = device_request::parse(payload, MAX_REQUEST_BYTES)?;
        device_request::check_request_id(Some(&request.request_id))?;
        let m = self.active_device(device_id).await?;
        let certificates =
            self.store.device_certificates(device_id).await.map_err(|e| store_refusal(&e))?;
        self.check_room(
            certificates.iter().filter(|c| c.is_usable_at(m.at)).count(),
            "certificates",
        )?;
        let issued = self.issuer.issue(&request.csr, device_id).map_err(|e| match e {
            IssueError::InvalidCsr(reason) => Refused::new("invalid_csr", reason),
            IssueError::Failed(reason) => {
                tracing::error!(reason, "cannot issue a device certificate");
                Refused::new("unavailable", "the server cannot issue certificates now")
            }
        })?;
        let serial = CertificateSerial::new(issued.serial_hex.as_str())
            .map_err(|e| Refused::new("unavailable", e.to_string()))?;
        let new = NewDeviceCertificate {
            serial,
            device_id: device_id.clone(),
            fingerprint_sha256: issued.fingerprint_sha256,
            not_before: issued.not_before,
            not_after: issued.not_after,
            pem: issued.pem,
        };
        let stored =
            self.store.create_device_certificate(&new, &m).await.map_err(|e| store_refusal(&e))?;
        Ok(json!({
            "status": "issued",
            "serial": stored.serial.as_str(),
            "not_after": stored.not_after.to_rfc3339(),
            "certificate": stored.pem,
            "ca_certificate": self.issuer.ca_certificate_pem(),
        }))
    }

    async fn register_credential(
        &self,
        device_id: &DeviceId,
        payload: &[u8],
    ) -> Result<Value, Refused> {
        let request: CredentialRequest = device_request::parse(payload, MAX_REQUEST_BYTES)?;
        device_request::check_request_id(Some(&request.request_id))?;
        let hash = parse_sha256(&request.secret_sha256)?;
        let m = self.active_device(device_id).await?;
        let expires_at = match request.expires_in_days {
            None => None,
            Some(days) if (1..=MAX_EXPIRY_DAYS).contains(&days) => Some(Timestamp::from_millis(
                m.at.millis().saturating_add(i64::from(days) * 86_400_000),
            )),
            Some(days) => {
                return Err(Refused::new(
                    "invalid_request",
                    format!("expires_in_days must be between 1 and {MAX_EXPIRY_DAYS}, got {days}"),
                ));
            }
        };
        let credentials =
            self.store.device_credentials(device_id).await.map_err(|e| store_refusal(&e))?;
        self.check_room(
            credentials.iter().filter(|c| c.is_usable_at(m.at)).count(),
            "credentials",
        )?;
        let new = NewDeviceCredential {
            id: http_api::auth::generate_credential_id(),
            device_id: device_id.clone(),
            hash,
            expires_at,
        };
        let stored = self.store.create_device_credential(&new, &m).await.map_err(|e| match e {
            store::StoreError::AlreadyExists { .. } => {
                Refused::new("invalid_request", "a credential with this secret exists already")
            }
            e => store_refusal(&e),
        })?;
        Ok(json!({
            "status": "created",
            "credential_id": stored.id.as_str(),
            "expires_at": stored.expires_at.map(Timestamp::to_rfc3339),
        }))
    }
}

/// A SHA-256 as 64 lowercase hex digits.
fn parse_sha256(hex_digits: &str) -> Result<TokenHash, Refused> {
    let bad = || Refused::new("invalid_request", "secret_sha256 must be 64 lowercase hex digits");
    if hex_digits.len() != 64 || !hex_digits.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(bad());
    }
    let bytes: [u8; 32] =
        hex::decode(hex_digits).ok().and_then(|b| b.try_into().ok()).ok_or_else(bad)?;
    Ok(TokenHash::from_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_hashes_are_64_lowercase_hex_digits() {
        let hash = TokenHash::of_secret("hdc_secret");
        let hex_digits = hex::encode(hash.as_bytes());
        assert_eq!(parse_sha256(&hex_digits).unwrap(), hash);
        assert!(parse_sha256(&hex_digits.to_uppercase()).is_err());
        assert!(parse_sha256(&hex_digits[..62]).is_err());
        assert!(parse_sha256("zz").is_err());
    }
}
