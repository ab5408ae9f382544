//! Zero-touch provisioning: a device Herd has never seen registers itself through an enrollment
//! group, proving it belongs, and receives its credential (and a certificate when it sent a CSR).
//!
//! [`Provisioner::register`] holds the whole logic and knows no HTTP types, so other transports
//! (an MQTT bootstrap topic) can call it; `POST /provision/v1/register` ([`register`]) is a thin
//! wrapper that takes no operator token.
//!
//! The order of checks never tells a caller without a valid proof anything about a group: an
//! unknown group, a proof of the wrong type and a wrong proof are the same 401 `invalid_proof`;
//! only after the proof holds do the group's state (403 `enrollment_disabled`,
//! `enrollment_expired`) and the claim code's uses matter. Every refusal is audited
//! (`enrollment.register.refused`) and counted by [`FailureLimiter`] per registration id and per
//! client address; past the limit, attempts are refused with 429 before any check, so neither the
//! proofs nor the audit log can be hammered.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use domain::{
    AccessChangeReason, Actor, Attestation, CertificateSerial, CredentialId, DeviceAccessChange,
    DeviceId, EnrollmentGroupName, Mutation, NewDeviceCertificate, NewDeviceCredential,
    RegistrationId, RegistrationRefusal, Timestamp, TokenHash,
};
use serde::{Deserialize, Serialize};
use store::{Registration, RegistrationRefusalRecord, Store, StoreError};
use tokio::sync::mpsc;
use utoipa::ToSchema;

use crate::auth::{generate_credential_id, generate_credential_secret};
use crate::error::{ApiError, Problem};
use crate::extract::JsonBody;
use crate::secrets::{self, SecretBox};
use crate::{ApiConfig, AppState, CertificateIssuer, Clock, IssueError, enrollment};

/// How long failures count against a registration id or an address.
const WINDOW_MILLIS: i64 = 60_000;

/// What counts failures: a registration id or a client address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum FailureKey {
    Registration(String),
    Address(IpAddr),
}

/// Failures of one key in its current one-minute window.
#[derive(Debug, Clone, Copy)]
struct Window {
    start: i64,
    failures: u32,
}

/// Counts failed registrations per registration id and per client address in fixed one-minute
/// windows, in a bounded map (see [`ApiConfig::provisioning_max_tracked_clients`] for what happens
/// when it is full).
#[derive(Debug)]
pub struct FailureLimiter {
    max_failures: u32,
    max_entries: usize,
    windows: Mutex<HashMap<FailureKey, Window>>,
}

impl FailureLimiter {
    /// A limiter allowing `max_failures` failures per key and minute, tracking at most
    /// `max_entries` keys.
    pub fn new(max_failures: u32, max_entries: usize) -> Self {
        Self { max_failures, max_entries: max_entries.max(1), windows: Mutex::new(HashMap::new()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<FailureKey, Window>> {
        // A panic while holding the lock leaves counts that are still usable.
        self.windows.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Seconds until attempts for any of `keys` are allowed again, or `None` when they are now.
    fn blocked(&self, keys: &[FailureKey], now: Timestamp) -> Option<u64> {
        let windows = self.lock();
        keys.iter()
            .filter_map(|k| windows.get(k))
            .filter(|w| now.millis() - w.start < WINDOW_MILLIS && w.failures >= self.max_failures)
            .map(|w| {
                let left = WINDOW_MILLIS - (now.millis() - w.start);
                u64::try_from((left + 999) / 1000).unwrap_or(1).max(1)
            })
            .max()
    }

    /// Counts one failure for each of `keys`.
    fn record(&self, keys: &[FailureKey], now: Timestamp) {
        let mut windows = self.lock();
        for key in keys {
            if !windows.contains_key(key) && windows.len() >= self.max_entries {
                windows.retain(|_, w| now.millis() - w.start < WINDOW_MILLIS);
                if windows.len() >= self.max_entries {
                    let oldest =
                        windows.iter().min_by_key(|(_, w)| w.start).map(|(k, _)| k.clone());
                    if let Some(oldest) = oldest {
                        windows.remove(&oldest);
                    }
                }
            }
            let w =
                windows.entry(key.clone()).or_insert(Window { start: now.millis(), failures: 0 });
            if now.millis() - w.start >= WINDOW_MILLIS {
                *w = Window { start: now.millis(), failures: 0 };
            }
            w.failures = w.failures.saturating_add(1);
        }
    }
}

/// How a device proves it belongs to the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proof {
    /// `signature` = HMAC-SHA256 under the device's derived key of
    /// `"<registration_id>\n<expires_at>"`.
    SymmetricKey {
        /// Unix seconds after which the proof is void.
        expires_at: i64,
        /// The signature bytes (decoded from base64 by the transport).
        signature: Vec<u8>,
    },
    /// A claim code of the group, as typed (`XXXX-XXXX-XXXX`; case and dashes do not matter).
    ClaimCode {
        /// The code.
        code: String,
    },
    /// The certificate chain (DER, the device's certificate first) the device presented over
    /// mutual TLS, so it holds the private key. Only a transport that verified the TLS handshake
    /// may build it; the chain must lead to the group's CA, the device's certificate must be valid
    /// now and its subject's common name must be the registration id.
    X509 {
        /// The chain, end-entity first.
        chain: Vec<Vec<u8>>,
    },
}

impl Proof {
    fn kind(&self) -> &'static str {
        match self {
            Self::SymmetricKey { .. } => "symmetric_key",
            Self::ClaimCode { .. } => "claim_code",
            Self::X509 { .. } => "x509",
        }
    }
}

/// Whether `chain` (DER, end-entity first) leads to the CA certificate `ca_pem` (each
/// certificate's issuer is the next one's subject and the next one's key signed it, up to the
/// CA), the end-entity certificate is valid at `now`, and its common name is `registration_id`.
fn x509_chain_proves(
    chain: &[Vec<u8>],
    ca_pem: &str,
    registration_id: &str,
    now: Timestamp,
) -> bool {
    use x509_parser::prelude::{FromDer as _, X509Certificate};
    let Ok((_, ca)) = x509_parser::pem::parse_x509_pem(ca_pem.as_bytes()) else { return false };
    let Ok(ca) = ca.parse_x509() else { return false };
    let mut parsed = Vec::with_capacity(chain.len());
    for der in chain {
        match X509Certificate::from_der(der) {
            Ok((_, cert)) => parsed.push(cert),
            Err(_) => return false,
        }
    }
    let Some(device) = parsed.first() else { return false };
    let now_secs = now.millis().div_euclid(1000);
    let validity = device.validity();
    if now_secs < validity.not_before.timestamp() || now_secs > validity.not_after.timestamp() {
        return false;
    }
    let cn = device.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok());
    if cn != Some(registration_id) {
        return false;
    }
    // Walk up: each certificate signed by the next of the chain, or by the CA.
    let mut current = 0;
    loop {
        let Some(cert) = parsed.get(current) else { return false };
        if cert.issuer() == ca.subject() && cert.verify_signature(Some(ca.public_key())).is_ok() {
            return true;
        }
        let Some(next) = parsed.get(current + 1) else { return false };
        if cert.issuer() != next.subject()
            || cert.verify_signature(Some(next.public_key())).is_err()
        {
            return false;
        }
        current += 1;
    }
}

/// One registration attempt, as any transport hands it over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterRequest {
    /// What the device calls itself.
    pub registration_id: String,
    /// The group it enrolls through.
    pub enrollment_group: String,
    /// Its proof.
    pub proof: Proof,
    /// An optional PEM certificate signing request: a certificate for the device id is issued
    /// with its public key (the subject is Herd's, whatever the request says).
    pub csr: Option<String>,
    /// The client's address, when known (rate limiting and audit).
    pub client_ip: Option<IpAddr>,
    /// The transport, for the audit record (`https`, `mqtt`).
    pub transport: &'static str,
}

/// A successful registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provisioned {
    /// The device's id.
    pub device_id: DeviceId,
    /// Whether this registration created it (`false`: an idempotent retry).
    pub created: bool,
    /// The device's new credential secret (its MQTT password); shown once.
    pub secret: String,
    /// The issued certificate, when a CSR was sent.
    pub certificate_pem: Option<String>,
    /// The CA certificate the issued certificate chains to, when one was issued.
    pub ca_pem: Option<String>,
    /// Older provisioning credentials that were revoked.
    pub revoked_credentials: Vec<CredentialId>,
}

/// Why a registration failed; each has a stable code (see [`ProvisionError::code`]).
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// The request is malformed (registration id, device id from the template): `validation_failed`.
    #[error("{0}")]
    InvalidInput(String),
    /// Unknown group, wrong proof type, wrong or expired proof: `invalid_proof`.
    #[error("the registration proof is not valid")]
    InvalidProof,
    /// `enrollment_disabled`.
    #[error("enrollment through this group is disabled")]
    Disabled,
    /// `enrollment_expired`.
    #[error("enrollment through this group has expired")]
    Expired,
    /// `claim_code_exhausted`.
    #[error("the claim code has been used up")]
    ClaimCodeExhausted,
    /// `claim_code_expired`.
    #[error("the claim code has expired")]
    ClaimCodeExpired,
    /// `device_conflict`: the device exists and was not enrolled this way.
    #[error("device {0} exists and was not enrolled by this group with this registration id")]
    DeviceConflict(String),
    /// `too_many_attempts`.
    #[error("too many failed attempts; retry after {0} s")]
    TooManyAttempts(u64),
    /// `secrets_unavailable`: the server has no master key.
    #[error("this server has no master key for enrollment secrets")]
    SecretsUnavailable,
    /// `ca_unavailable`: a CSR was sent but the server has no CA.
    #[error("this server has no certificate authority to issue certificates with")]
    CaUnavailable,
    /// `invalid_csr`.
    #[error("invalid certificate signing request: {0}")]
    InvalidCsr(String),
    /// `internal`: the store or the CA failed.
    #[error("provisioning failed: {0}")]
    Internal(Box<dyn std::error::Error + Send + Sync>),
}

impl ProvisionError {
    /// The stable code, as in the HTTP API's problem bodies.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidInput(_) => "validation_failed",
            Self::InvalidProof => "invalid_proof",
            Self::Disabled => "enrollment_disabled",
            Self::Expired => "enrollment_expired",
            Self::ClaimCodeExhausted => "claim_code_exhausted",
            Self::ClaimCodeExpired => "claim_code_expired",
            Self::DeviceConflict(_) => "device_conflict",
            Self::TooManyAttempts(_) => "too_many_attempts",
            Self::SecretsUnavailable => "secrets_unavailable",
            Self::CaUnavailable => "ca_unavailable",
            Self::InvalidCsr(_) => "invalid_csr",
            Self::Internal(_) => "internal",
        }
    }
}

impl From<StoreError> for ProvisionError {
    fn from(e: StoreError) -> Self {
        match e {
            // Adopting a device whose own tags and the group's exceed the tag limit together.
            StoreError::Conflict(message) => Self::InvalidInput(message),
            e => Self::Internal(Box::new(e)),
        }
    }
}

impl From<ProvisionError> for ApiError {
    fn from(e: ProvisionError) -> Self {
        match e {
            ProvisionError::InvalidInput(s) => Self::ValidationFailed(s),
            ProvisionError::InvalidProof => Self::InvalidProof,
            ProvisionError::Disabled => Self::EnrollmentDisabled,
            ProvisionError::Expired => Self::EnrollmentExpired,
            ProvisionError::ClaimCodeExhausted => Self::ClaimCodeExhausted,
            ProvisionError::ClaimCodeExpired => Self::ClaimCodeExpired,
            e @ ProvisionError::DeviceConflict(_) => Self::DeviceConflict(e.to_string()),
            ProvisionError::TooManyAttempts(retry_after_secs) => {
                Self::TooManyAttempts { retry_after_secs }
            }
            ProvisionError::SecretsUnavailable => Self::SecretsUnavailable,
            ProvisionError::CaUnavailable => Self::CaUnavailable,
            ProvisionError::InvalidCsr(s) => Self::InvalidCsr(s),
            ProvisionError::Internal(e) => Self::Internal(e),
        }
    }
}

/// The provisioning logic, independent of the transport. Cheap to build
/// ([`AppState::provisioner`]); clones of the state share its failure counts.
pub struct Provisioner {
    store: Arc<dyn Store>,
    clock: Clock,
    max_proof_lifetime_secs: u64,
    secret_box: Option<Arc<SecretBox>>,
    issuer: Option<Arc<dyn CertificateIssuer>>,
    access_events: Option<mpsc::Sender<DeviceAccessChange>>,
    failures: Arc<FailureLimiter>,
    /// Woken after a registration: the new device may need its configuration profiles.
    recompute_wake: Option<Arc<tokio::sync::Notify>>,
}

impl std::fmt::Debug for Provisioner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provisioner")
            .field("store", &self.store)
            .field("max_proof_lifetime_secs", &self.max_proof_lifetime_secs)
            .field("secret_box", &self.secret_box.is_some())
            .field("issuer", &self.issuer.is_some())
            .finish_non_exhaustive()
    }
}

/// What a checked registration needs next: the group's name, the device id, the claim code hash.
struct Checked {
    group: EnrollmentGroupName,
    registration_id: RegistrationId,
    device_id: DeviceId,
    claim_code: Option<TokenHash>,
}

impl Provisioner {
    /// A provisioner over `store` with the limits of `config`.
    pub fn new(
        store: Arc<dyn Store>,
        config: &ApiConfig,
        clock: Clock,
        secret_box: Option<Arc<SecretBox>>,
        issuer: Option<Arc<dyn CertificateIssuer>>,
        access_events: Option<mpsc::Sender<DeviceAccessChange>>,
        failures: Arc<FailureLimiter>,
    ) -> Self {
        Self {
            store,
            clock,
            max_proof_lifetime_secs: config.provisioning_max_proof_lifetime_secs,
            secret_box,
            issuer,
            access_events,
            failures,
            recompute_wake: None,
        }
    }

    /// Wakes the profile recompute task after each registration (see
    /// [`crate::AppState::with_recompute_wake`]).
    #[must_use]
    pub fn with_recompute_wake(mut self, wake: Option<Arc<tokio::sync::Notify>>) -> Self {
        self.recompute_wake = wake;
        self
    }

    /// Registers a device (see the module docs for the order of checks).
    ///
    /// # Errors
    /// A [`ProvisionError`] with its stable code; refusals are audited and counted.
    pub async fn register(&self, req: RegisterRequest) -> Result<Provisioned, ProvisionError> {
        let registration_id = RegistrationId::new(req.registration_id.as_str())
            .map_err(|e| ProvisionError::InvalidInput(e.to_string()))?;
        let mut keys = vec![FailureKey::Registration(registration_id.as_str().to_owned())];
        keys.extend(req.client_ip.map(FailureKey::Address));
        let now = (self.clock)();
        if let Some(secs) = self.failures.blocked(&keys, now) {
            return Err(ProvisionError::TooManyAttempts(secs));
        }
        let group = EnrollmentGroupName::new(req.enrollment_group.as_str()).ok();
        let result = self.try_register(&req, group.as_ref(), &registration_id, now).await;
        if let Err(e) = &result
            && matches!(
                e,
                ProvisionError::InvalidProof
                    | ProvisionError::Disabled
                    | ProvisionError::Expired
                    | ProvisionError::ClaimCodeExhausted
                    | ProvisionError::ClaimCodeExpired
                    | ProvisionError::DeviceConflict(_)
            )
        {
            self.failures.record(&keys, now);
            let source = match req.client_ip {
                Some(ip) => format!("{} {ip}", req.transport),
                None => req.transport.to_owned(),
            };
            let refusal = RegistrationRefusalRecord {
                group: group.clone(),
                registration_id,
                reason: e.code().to_owned(),
                source,
            };
            self.store
                .record_registration_refusal(&refusal, &mutation(group.as_ref(), now))
                .await?;
        }
        result
    }

    async fn try_register(
        &self,
        req: &RegisterRequest,
        group_name: Option<&EnrollmentGroupName>,
        registration_id: &RegistrationId,
        now: Timestamp,
    ) -> Result<Provisioned, ProvisionError> {
        let checked = self.check_proof(req, group_name, registration_id, now).await?;
        // The certificate is signed before anything is stored, so a bad CSR changes nothing; it
        // is stored (and so becomes usable) only once the registration committed.
        let issued = match (&req.csr, &self.issuer) {
            (None, _) => None,
            (Some(_), None) => return Err(ProvisionError::CaUnavailable),
            (Some(csr), Some(issuer)) => {
                Some(issuer.issue(csr, &checked.device_id).map_err(|e| match e {
                    IssueError::InvalidCsr(reason) => ProvisionError::InvalidCsr(reason),
                    e @ IssueError::Failed(_) => ProvisionError::Internal(Box::new(e)),
                })?)
            }
        };
        let secret = generate_credential_secret();
        let registration = Registration {
            group: checked.group.clone(),
            registration_id: checked.registration_id,
            device_id: checked.device_id.clone(),
            claim_code: checked.claim_code,
            credential: NewDeviceCredential {
                id: generate_credential_id(),
                device_id: checked.device_id.clone(),
                hash: TokenHash::of_secret(&secret),
                expires_at: None,
            },
        };
        let m = mutation(Some(&checked.group), now);
        let registered = match self.store.register_device(&registration, &m).await? {
            Ok(r) => r,
            Err(refusal) => {
                return Err(match refusal {
                    RegistrationRefusal::UnknownGroup | RegistrationRefusal::InvalidClaimCode => {
                        ProvisionError::InvalidProof
                    }
                    RegistrationRefusal::GroupDisabled => ProvisionError::Disabled,
                    RegistrationRefusal::GroupExpired => ProvisionError::Expired,
                    RegistrationRefusal::ClaimCodeExhausted => ProvisionError::ClaimCodeExhausted,
                    RegistrationRefusal::ClaimCodeExpired => ProvisionError::ClaimCodeExpired,
                    RegistrationRefusal::DeviceConflict => {
                        ProvisionError::DeviceConflict(checked.device_id.to_string())
                    }
                });
            }
        };
        if let Some(wake) = &self.recompute_wake {
            wake.notify_one();
        }
        if let Some(tx) = &self.access_events {
            for _ in &registered.revoked_credentials {
                let change = DeviceAccessChange {
                    device_id: checked.device_id.clone(),
                    reason: AccessChangeReason::CredentialRevoked,
                };
                if tx.send(change).await.is_err() {
                    tracing::warn!(device_id = %checked.device_id, "access change not delivered");
                }
            }
        }
        let (certificate_pem, ca_pem) = match (issued, &self.issuer) {
            (Some(issued), Some(issuer)) => {
                let serial = CertificateSerial::new(issued.serial_hex)
                    .map_err(|e| ProvisionError::Internal(Box::new(e)))?;
                let new = NewDeviceCertificate {
                    serial,
                    device_id: checked.device_id.clone(),
                    fingerprint_sha256: issued.fingerprint_sha256,
                    not_before: issued.not_before,
                    not_after: issued.not_after,
                    pem: issued.pem,
                };
                let c = self.store.create_device_certificate(&new, &m).await?;
                (Some(c.pem), Some(issuer.ca_certificate_pem().to_owned()))
            }
            _ => (None, None),
        };
        Ok(Provisioned {
            device_id: registered.device.id,
            created: registered.created,
            secret,
            certificate_pem,
            ca_pem,
            revoked_credentials: registered.revoked_credentials,
        })
    }

    /// Checks that the group exists, takes this kind of proof and that the proof holds (a claim
    /// code is checked by the store, in the registration's transaction).
    async fn check_proof(
        &self,
        req: &RegisterRequest,
        group_name: Option<&EnrollmentGroupName>,
        registration_id: &RegistrationId,
        now: Timestamp,
    ) -> Result<Checked, ProvisionError> {
        let name = group_name.ok_or(ProvisionError::InvalidProof)?;
        let group = self.store.enrollment_group(name).await?.ok_or(ProvisionError::InvalidProof)?;
        let device_id = group
            .device_id_for(registration_id)
            .map_err(|e| ProvisionError::InvalidInput(e.to_string()))?;
        let claim_code = match (&group.attestation, &req.proof) {
            (
                Attestation::SymmetricKey { sealed_key },
                Proof::SymmetricKey { expires_at, signature },
            ) => {
                let lifetime = i64::try_from(self.max_proof_lifetime_secs).unwrap_or(i64::MAX);
                let now_secs = now.millis().div_euclid(1000);
                if *expires_at <= now_secs || *expires_at > now_secs.saturating_add(lifetime) {
                    return Err(ProvisionError::InvalidProof);
                }
                let secret_box =
                    self.secret_box.as_deref().ok_or(ProvisionError::SecretsUnavailable)?;
                let group_key = enrollment::open_group_key(secret_box, &group.name, sealed_key)
                    .map_err(|e| ProvisionError::Internal(e.into()))?;
                let device_key = secrets::derive_device_key(&group_key, device_id.as_str());
                if !secrets::verify_proof_signature(
                    &device_key,
                    registration_id.as_str(),
                    *expires_at,
                    signature,
                ) {
                    return Err(ProvisionError::InvalidProof);
                }
                None
            }
            (Attestation::ClaimCode, Proof::ClaimCode { code }) => {
                Some(enrollment::claim_code_hash(code).ok_or(ProvisionError::InvalidProof)?)
            }
            (Attestation::X509 { ca_pem }, Proof::X509 { chain }) => {
                let ca = match (ca_pem, &self.issuer) {
                    (Some(pem), _) => pem.as_str(),
                    (None, Some(issuer)) => issuer.ca_certificate_pem(),
                    (None, None) => return Err(ProvisionError::CaUnavailable),
                };
                if !x509_chain_proves(chain, ca, registration_id.as_str(), now) {
                    return Err(ProvisionError::InvalidProof);
                }
                None
            }
            (attestation, proof) => {
                tracing::debug!(
                    group = %group.name,
                    expected = attestation.kind(),
                    got = proof.kind(),
                    "registration proof of the wrong type"
                );
                return Err(ProvisionError::InvalidProof);
            }
        };
        Ok(Checked {
            group: group.name,
            registration_id: registration_id.clone(),
            device_id,
            claim_code,
        })
    }
}

/// The context of a registration's writes: the enrollment group acts, now.
fn mutation(group: Option<&EnrollmentGroupName>, at: Timestamp) -> Mutation {
    let name = match group {
        Some(g) => format!("enrollment:{g}"),
        None => "enrollment".to_owned(),
    };
    Mutation { actor: Actor { token_id: None, name }, at }
}

// ---- HTTP ----

/// The client's IP address, when the server was started with connection info (it always is;
/// tests calling the router directly may leave it out).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientIp(Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip())))
    }
}

/// A registration proof.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum ProofDto {
    /// For `symmetric_key` groups.
    SymmetricKey {
        /// Unix seconds after which the proof is void: in the future, at most
        /// `provisioning.max_proof_lifetime_secs` (default 1 h) ahead.
        #[schema(example = 1_795_698_000)]
        expires_at: i64,
        /// Base64 of HMAC-SHA256 under the device's derived key of
        /// `"<registration_id>\n<expires_at>"`.
        signature: String,
    },
    /// For `claim_code` groups.
    ClaimCode {
        /// The claim code.
        #[schema(example = "7KQ4-M9XP-3HTW")]
        code: String,
    },
}

/// The body of `POST /provision/v1/register`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RegisterBody {
    /// What the device calls itself (its serial number, say): 1–128 characters of
    /// `[A-Za-z0-9._:-]`. The group's template turns it into the device id.
    #[schema(example = "SN-0042")]
    registration_id: String,
    /// The enrollment group's name.
    #[schema(example = "factory-a")]
    enrollment_group: String,
    /// How the device proves it belongs to the group.
    proof: ProofDto,
    /// An optional PEM certificate signing request: a certificate for the device is issued with
    /// its public key; the subject is the device id, whatever the request says.
    csr: Option<String>,
}

/// Where and as whom the device connects over MQTT.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct MqttLogin {
    /// The MQTT client identifier: the device id.
    client_id: String,
    /// The MQTT username: the device id.
    username: String,
}

/// The device's new credential.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ProvisionedCredential {
    /// Always `token`.
    r#type: &'static str,
    /// The MQTT password; shown once, only its hash is stored.
    secret: String,
}

/// What a registered device receives.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RegisterResponse {
    /// The device id.
    device_id: String,
    /// Whether this registration created the device (`false`: a retry found it).
    created: bool,
    /// A new credential (at most two provisioning credentials stay valid per device).
    credential: ProvisionedCredential,
    /// The device certificate (PEM), when a CSR was sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    certificate_pem: Option<String>,
    /// The CA certificate (PEM) it chains to, when a certificate was issued.
    #[serde(skip_serializing_if = "Option::is_none")]
    ca_pem: Option<String>,
    /// How to log in over MQTT.
    mqtt: MqttLogin,
}

impl From<Provisioned> for RegisterResponse {
    fn from(p: Provisioned) -> Self {
        Self {
            device_id: p.device_id.to_string(),
            created: p.created,
            credential: ProvisionedCredential { r#type: "token", secret: p.secret },
            certificate_pem: p.certificate_pem,
            ca_pem: p.ca_pem,
            mqtt: MqttLogin {
                client_id: p.device_id.to_string(),
                username: p.device_id.to_string(),
            },
        }
    }
}

impl Provisioned {
    /// The answer of `POST /provision/v1/register` as JSON: what every transport answers a
    /// successful registration with (the MQTT bootstrap topic adds `request_id` and `status`).
    pub fn to_json(self) -> serde_json::Value {
        // Serializing a struct of strings and booleans cannot fail.
        serde_json::to_value(RegisterResponse::from(self)).unwrap_or_default()
    }
}

/// Register a device through an enrollment group (zero-touch provisioning). Takes no operator
/// token: the device proves itself with its derived key or a claim code.
#[utoipa::path(
    post,
    path = "/provision/v1/register",
    tag = "provisioning",
    request_body = RegisterBody,
    responses(
        (status = 201, description = "The device was created", body = RegisterResponse),
        (status = 200, description = "The device was registered before by this group with this registration id (a new credential), or existed in state `registered` without enrollment and was adopted (now active)", body = RegisterResponse),
        (status = 400, description = "Malformed body or `invalid_csr`", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`invalid_proof`: unknown group, wrong proof type, wrong or expired proof", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`enrollment_disabled`, `enrollment_expired`, `claim_code_exhausted`, `claim_code_expired`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`device_conflict`: the device exists and was not enrolled this way", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`: registration id, or the device id the template makes", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`too_many_attempts`, with `Retry-After`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`secrets_unavailable` or `ca_unavailable`", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn register(
    State(state): State<AppState>,
    ClientIp(client_ip): ClientIp,
    JsonBody(body): JsonBody<RegisterBody>,
) -> Result<(StatusCode, Json<RegisterResponse>), ApiError> {
    let proof = match body.proof {
        ProofDto::SymmetricKey { expires_at, signature } => Proof::SymmetricKey {
            expires_at,
            // Undecodable base64 is a wrong proof like any other, counted and audited.
            signature: BASE64.decode(signature.trim()).unwrap_or_default(),
        },
        ProofDto::ClaimCode { code } => Proof::ClaimCode { code },
    };
    let request = RegisterRequest {
        registration_id: body.registration_id,
        enrollment_group: body.enrollment_group,
        proof,
        csr: body.csr,
        client_ip,
        transport: "https",
    };
    let p = state.provisioner().register(request).await?;
    let status = if p.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(RegisterResponse::from(p))))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CA, an intermediate it signed and a device certificate for `cn` the intermediate
    /// signed (valid 2026 to 2030): (CA PEM, intermediate DER, device DER).
    fn x509_chain(cn: &str) -> (String, Vec<u8>, Vec<u8>) {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "Factory CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let ca_issuer = Issuer::new(ca, ca_key);
        let int_key = KeyPair::generate().unwrap();
        let mut int = CertificateParams::new(Vec::<String>::new()).unwrap();
        int.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        int.distinguished_name.push(DnType::CommonName, "Line 3");
        let int_cert = int.signed_by(&int_key, &ca_issuer).unwrap();
        let int_issuer = Issuer::new(int, int_key);
        let key = KeyPair::generate().unwrap();
        let mut device = CertificateParams::new(Vec::<String>::new()).unwrap();
        device.distinguished_name.push(DnType::CommonName, cn);
        device.not_before = rcgen::date_time_ymd(2026, 1, 1);
        device.not_after = rcgen::date_time_ymd(2030, 1, 1);
        let device_cert = device.signed_by(&key, &int_issuer).unwrap();
        (ca_cert.pem(), int_cert.der().to_vec(), device_cert.der().to_vec())
    }

    #[test]
    fn an_x509_proof_is_a_chain_to_the_group_ca_naming_the_registration_id() {
        let now = Timestamp::parse_rfc3339("2027-06-01T00:00:00Z").unwrap();
        let (ca, intermediate, device) = x509_chain("SN-7");
        let only_device = std::slice::from_ref(&device);
        assert!(!x509_chain_proves(only_device, &ca, "SN-7", now), "the intermediate missing");
        let chain = vec![device, intermediate];
        assert!(x509_chain_proves(&chain, &ca, "SN-7", now));
        assert!(!x509_chain_proves(&chain, &ca, "SN-8", now), "another registration id");
        let (other_ca, _, _) = x509_chain("SN-7");
        assert!(!x509_chain_proves(&chain, &other_ca, "SN-7", now), "another CA");
        let late = Timestamp::parse_rfc3339("2031-01-01T00:00:00Z").unwrap();
        assert!(!x509_chain_proves(&chain, &ca, "SN-7", late), "expired");
        assert!(!x509_chain_proves(&[], &ca, "SN-7", now));
        assert!(!x509_chain_proves(&[b"junk".to_vec()], &ca, "SN-7", now));
    }

    #[test]
    fn limiter_blocks_after_the_limit_and_forgets_after_a_minute() {
        let l = FailureLimiter::new(2, 10);
        let k = [FailureKey::Registration("a".to_owned())];
        let t = Timestamp::from_millis(1_000_000);
        assert_eq!(l.blocked(&k, t), None);
        l.record(&k, t);
        assert_eq!(l.blocked(&k, t), None);
        l.record(&k, t);
        assert_eq!(l.blocked(&k, t), Some(60));
        assert_eq!(l.blocked(&k, Timestamp::from_millis(1_059_500)), Some(1));
        assert_eq!(l.blocked(&k, Timestamp::from_millis(1_060_000)), None);
        l.record(&k, Timestamp::from_millis(1_060_000));
        assert_eq!(l.blocked(&k, Timestamp::from_millis(1_060_000)), None);
    }

    #[test]
    fn limiter_is_bounded() {
        let l = FailureLimiter::new(1, 3);
        for i in 0..10u8 {
            let key = FailureKey::Address(IpAddr::from([10, 0, 0, i]));
            let t = Timestamp::from_millis(i64::from(i));
            l.record(std::slice::from_ref(&key), t);
            assert_eq!(l.blocked(&[key], t), Some(60));
        }
        assert_eq!(l.lock().len(), 3);
    }
}
