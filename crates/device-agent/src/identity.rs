//! Renewing the device's own certificate or credential over MQTT (`devices/{id}/identity/…`, see
//! `docs/device-protocol.md`, *Renewing credentials*).
//!
//! A device subscribes to [`RESPONSE_SUBTOPIC`] (and [`ROTATE_SUBTOPIC`], where Herd asks it to
//! renew), publishes a [`CertificateRequest`] or a [`CredentialRequest`] on its channel, reads the
//! [`Answer`] with the same request id, stores the new material and hands it to the device task
//! ([`DeviceHandle::set_client_certificate`], [`DeviceHandle::set_password`]), which uses it from
//! its next connection on. [`exchange`] does the publish-and-wait part.
//!
//! The key of a certificate request is generated here (ECDSA P-256) and never leaves the device;
//! a credential's secret is generated here too and only its SHA-256 is sent.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use rand::Rng as _;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::device::{DeviceHandle, Inbox};
use crate::message::Channel;

/// Where Herd answers identity requests, below `devices/{id}/`.
pub const RESPONSE_SUBTOPIC: &str = "identity/response";

/// Where Herd asks the device to renew a credential, below `devices/{id}/`.
pub const ROTATE_SUBTOPIC: &str = "identity/rotate";

/// Why a request could not be made or answered.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The key or the certificate signing request could not be generated.
    #[error("cannot generate a key and CSR: {0}")]
    Generate(String),
    /// The device task has stopped.
    #[error("the device task has stopped")]
    Stopped,
    /// No answer came within the time given.
    #[error("no answer from the server within {0:?}")]
    TimedOut(Duration),
    /// The inbox closed (the device task stopped) before the answer came.
    #[error("the inbox closed before the answer came")]
    InboxClosed,
}

fn request_id() -> String {
    let bytes: [u8; 8] = rand::rng().random();
    hex::encode(bytes)
}

/// A request for a new certificate: a fresh key and a CSR for it.
#[derive(Debug, Clone)]
pub struct CertificateRequest {
    /// Echoed in the answer.
    pub request_id: String,
    /// The certificate signing request (PEM).
    pub csr_pem: String,
    /// The new private key (PKCS #8 PEM): keep it secret, with the certificate it gets.
    pub key_pem: String,
}

impl CertificateRequest {
    /// Generates an ECDSA P-256 key and a CSR naming `device_id` (Herd names the device in the
    /// certificate anyway).
    ///
    /// # Errors
    /// [`IdentityError::Generate`].
    pub fn generate(device_id: &str) -> Result<Self, IdentityError> {
        let fail = |e: rcgen::Error| IdentityError::Generate(e.to_string());
        let key = rcgen::KeyPair::generate().map_err(fail)?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
        params.distinguished_name.push(rcgen::DnType::CommonName, device_id);
        let csr_pem = params.serialize_request(&key).map_err(fail)?.pem().map_err(fail)?;
        Ok(Self { request_id: request_id(), csr_pem, key_pem: key.serialize_pem() })
    }

    /// The channel it is published on.
    #[must_use]
    pub fn channel() -> Channel {
        Channel::subtopic("identity/csr").expect("a valid subtopic")
    }

    /// The request's JSON payload.
    #[must_use]
    pub fn payload(&self) -> Bytes {
        Bytes::from(json!({"request_id": self.request_id, "csr": self.csr_pem}).to_string())
    }
}

/// A request registering a new credential whose secret the device generated.
#[derive(Debug, Clone)]
pub struct CredentialRequest {
    /// Echoed in the answer.
    pub request_id: String,
    /// The new secret (`hdc_` and 64 lowercase hex digits): keep it secret; only its SHA-256 is
    /// sent.
    pub secret: String,
    /// Days until it expires, if it should.
    pub expires_in_days: Option<u32>,
}

impl CredentialRequest {
    /// A request with a fresh secret of 32 random bytes.
    #[must_use]
    pub fn generate(expires_in_days: Option<u32>) -> Self {
        let bytes: [u8; 32] = rand::rng().random();
        Self {
            request_id: request_id(),
            secret: format!("hdc_{}", hex::encode(bytes)),
            expires_in_days,
        }
    }

    /// The channel it is published on.
    #[must_use]
    pub fn channel() -> Channel {
        Channel::subtopic("identity/credential").expect("a valid subtopic")
    }

    /// The request's JSON payload: the secret's SHA-256, never the secret.
    #[must_use]
    pub fn payload(&self) -> Bytes {
        let mut request = json!({
            "request_id": self.request_id,
            "secret_sha256": hex::encode(Sha256::digest(self.secret.as_bytes())),
        });
        if let Some(days) = self.expires_in_days {
            request["expires_in_days"] = days.into();
        }
        Bytes::from(request.to_string())
    }
}

/// Herd's answer to an identity request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A certificate was issued.
    CertificateIssued {
        /// The request answered.
        request_id: String,
        /// The certificate (PEM).
        certificate_pem: String,
        /// The CA certificate that issued it (PEM).
        ca_certificate_pem: String,
        /// Its serial (lowercase hex).
        serial: String,
    },
    /// The credential was registered.
    CredentialCreated {
        /// The request answered.
        request_id: String,
        /// Its id.
        credential_id: String,
    },
    /// The request was refused.
    Refused {
        /// The request answered, when Herd could read it.
        request_id: Option<String>,
        /// A stable code, such as `too_many_credentials` or `invalid_csr`.
        code: String,
        /// What went wrong.
        message: String,
    },
}

impl Answer {
    /// Reads an answer; `None` when `payload` is not one.
    #[must_use]
    pub fn parse(payload: &[u8]) -> Option<Self> {
        let v: Value = serde_json::from_slice(payload).ok()?;
        let text = |key: &str| v.get(key).and_then(Value::as_str).map(str::to_owned);
        let request_id = text("request_id");
        match v.get("status")?.as_str()? {
            "issued" => Some(Self::CertificateIssued {
                request_id: request_id?,
                certificate_pem: text("certificate")?,
                ca_certificate_pem: text("ca_certificate")?,
                serial: text("serial")?,
            }),
            "created" => Some(Self::CredentialCreated {
                request_id: request_id?,
                credential_id: text("credential_id")?,
            }),
            "error" => Some(Self::Refused {
                request_id,
                code: text("code")?,
                message: text("message").unwrap_or_default(),
            }),
            _ => None,
        }
    }

    /// The id of the request it answers.
    #[must_use]
    pub fn request_id(&self) -> Option<&str> {
        match self {
            Self::CertificateIssued { request_id, .. }
            | Self::CredentialCreated { request_id, .. } => Some(request_id),
            Self::Refused { request_id, .. } => request_id.as_deref(),
        }
    }
}

/// What Herd asks for on [`ROTATE_SUBTOPIC`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotate {
    /// A new certificate.
    Certificate,
    /// A new credential.
    Credential,
}

impl Rotate {
    /// Reads a rotation request (`{"credential": "certificate"}` or `{"credential": "credential"}`).
    #[must_use]
    pub fn parse(payload: &[u8]) -> Option<Self> {
        let v: Value = serde_json::from_slice(payload).ok()?;
        match v.get("credential")?.as_str()? {
            "certificate" => Some(Self::Certificate),
            "credential" => Some(Self::Credential),
            _ => None,
        }
    }
}

/// The end of validity of a PEM certificate (the first of the file).
#[must_use]
pub fn certificate_not_after(pem: &str) -> Option<SystemTime> {
    let (_, der) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    let cert = der.parse_x509().ok()?;
    let secs = u64::try_from(cert.validity().not_after.timestamp()).ok()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// Publishes a request on `channel` and waits up to `timeout` for its answer in `inbox`, which
/// must be subscribed to [`RESPONSE_SUBTOPIC`]. Other answers are skipped; messages on other
/// topics are handed to `other` (for example rotation requests on [`ROTATE_SUBTOPIC`]).
///
/// # Errors
/// [`IdentityError::Stopped`], [`IdentityError::TimedOut`], [`IdentityError::InboxClosed`].
pub async fn exchange(
    device: &DeviceHandle,
    inbox: &mut Inbox,
    channel: Channel,
    payload: Bytes,
    request_id: &str,
    timeout: Duration,
    mut other: impl FnMut(crate::message::Incoming),
) -> Result<Answer, IdentityError> {
    device.publish(channel, payload).await.map_err(|_| IdentityError::Stopped)?;
    let wait = async {
        loop {
            let incoming = inbox.recv().await.ok_or(IdentityError::InboxClosed)?;
            if !incoming.topic.ends_with(RESPONSE_SUBTOPIC) {
                other(incoming);
                continue;
            }
            match Answer::parse(&incoming.payload) {
                Some(answer) if answer.request_id() == Some(request_id) => return Ok(answer),
                _ => tracing::debug!("skipping an identity answer to another request"),
            }
        }
    };
    tokio::time::timeout(timeout, wait).await.map_err(|_| IdentityError::TimedOut(timeout))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_carry_a_csr_or_only_the_hash_of_the_secret() {
        let request = CertificateRequest::generate("dev-1").unwrap();
        let payload: Value = serde_json::from_slice(&request.payload()).unwrap();
        assert_eq!(payload["request_id"], request.request_id.as_str());
        assert!(
            payload["csr"].as_str().unwrap().starts_with("-----BEGIN CERTIFICATE REQUEST-----")
        );
        assert!(request.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));

        let request = CredentialRequest::generate(Some(30));
        assert_eq!(request.secret.len(), 4 + 64);
        let payload = request.payload();
        let text = std::str::from_utf8(&payload).unwrap();
        assert!(!text.contains(&request.secret));
        let payload: Value = serde_json::from_str(text).unwrap();
        assert_eq!(
            payload["secret_sha256"],
            hex::encode(Sha256::digest(request.secret.as_bytes()))
        );
        assert_eq!(payload["expires_in_days"], 30);
    }

    #[test]
    fn answers_and_rotation_requests_are_read() {
        let issued = br#"{"request_id":"r1","status":"issued","certificate":"C","ca_certificate":"A","serial":"0a","not_after":"x"}"#;
        assert_eq!(
            Answer::parse(issued),
            Some(Answer::CertificateIssued {
                request_id: "r1".into(),
                certificate_pem: "C".into(),
                ca_certificate_pem: "A".into(),
                serial: "0a".into(),
            })
        );
        let refused =
            br#"{"request_id":null,"status":"error","code":"invalid_request","message":"m"}"#;
        assert_eq!(Answer::parse(refused).unwrap().request_id(), None);
        assert_eq!(Answer::parse(b"{}"), None);
        assert_eq!(Rotate::parse(br#"{"credential":"certificate"}"#), Some(Rotate::Certificate));
        assert_eq!(Rotate::parse(br#"{"credential":"credential"}"#), Some(Rotate::Credential));
        assert_eq!(Rotate::parse(br#"{"credential":"other"}"#), None);
    }

    #[test]
    fn the_end_of_validity_is_read_from_the_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.not_after = rcgen::date_time_ymd(2030, 1, 1);
        let cert = params.self_signed(&key).unwrap();
        let not_after = certificate_not_after(&cert.pem()).unwrap();
        assert_eq!(
            not_after.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(),
            1_893_456_000
        );
        assert_eq!(certificate_not_after("junk"), None);
    }
}
