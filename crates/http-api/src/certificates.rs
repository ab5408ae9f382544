//! `/api/v1/devices/{id}/certificates`: issue (from a certificate signing request), list and
//! revoke the X.509 certificates devices present when they connect over mutual TLS.
//!
//! The API does not sign anything itself: the server hands it a [`CertificateIssuer`] (its CA)
//! through [`AppState::with_certificate_issuer`]; without one, issuing answers 503
//! `ca_unavailable` (listing and revoking still work). The certificate's subject is always the
//! device the path names, whatever the request asks for. Revoking a certificate tells the MQTT
//! gateway, through the access-change channel (see `state`), to drop the device's sessions.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use domain::{
    AccessChangeReason, CertificateSerial, DeviceCertificate, DeviceId, NewDeviceCertificate,
    Timestamp,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::auth::{Caller, Operator, Viewer};
use crate::error::{ApiError, Problem};
use crate::extract::{
    CertificatePath, DevicePath, JsonBody, RawQuery, parse_limit, set_once, unknown_parameter,
};
use crate::paging::page_limit;

/// A certificate a [`CertificateIssuer`] signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCertificate {
    /// The certificate, PEM.
    pub pem: String,
    /// The serial number as lowercase hex digits, as encoded in the certificate.
    pub serial_hex: String,
    /// Start of validity.
    pub not_before: Timestamp,
    /// End of validity.
    pub not_after: Timestamp,
    /// SHA-256 of the certificate's DER encoding, lowercase hex.
    pub fingerprint_sha256: String,
}

/// Why a [`CertificateIssuer`] did not sign.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IssueError {
    /// The request is unusable; the reason is shown to the caller (400 `invalid_csr`).
    #[error("invalid certificate signing request: {0}")]
    InvalidCsr(String),
    /// The issuer failed (misconfigured lifetime, signing error): logged, 500 `internal`.
    #[error("cannot issue a certificate: {0}")]
    Failed(String),
}

/// Signs device certificates: the server's CA, seen from the API.
pub trait CertificateIssuer: Send + Sync + 'static {
    /// Signs a certificate for `device` with the public key of the PEM certificate signing
    /// request `csr_pem`; the subject is `device`, whatever the request says.
    ///
    /// # Errors
    /// [`IssueError::InvalidCsr`] when the request is unusable, [`IssueError::Failed`] otherwise.
    fn issue(&self, csr_pem: &str, device: &DeviceId) -> Result<IssuedCertificate, IssueError>;

    /// The CA certificate (PEM) that issued certificates chain to.
    fn ca_certificate_pem(&self) -> &str;
}

/// A device certificate as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = DeviceCertificate)]
pub(crate) struct CertificateDto {
    /// Serial number, lowercase hex: the certificate's id.
    #[schema(example = "3f9a0c1d2e4b5a697887766554433221")]
    serial: String,
    /// The device it authenticates (its subject).
    #[schema(example = "sensor-01")]
    device_id: String,
    /// SHA-256 of the certificate's DER encoding, lowercase hex.
    fingerprint_sha256: String,
    /// Start of validity (RFC 3339).
    not_before: String,
    /// End of validity (RFC 3339).
    not_after: String,
    /// When it was issued (RFC 3339).
    created_at: String,
    /// When it was revoked (RFC 3339), `null` while it is not.
    revoked_at: Option<String>,
    /// The certificate, PEM.
    certificate: String,
}

impl From<&DeviceCertificate> for CertificateDto {
    fn from(c: &DeviceCertificate) -> Self {
        Self {
            serial: c.serial.as_str().to_owned(),
            device_id: c.device_id.as_str().to_owned(),
            fingerprint_sha256: c.fingerprint_sha256.clone(),
            not_before: c.not_before.to_rfc3339(),
            not_after: c.not_after.to_rfc3339(),
            created_at: c.created_at.to_rfc3339(),
            revoked_at: c.revoked_at.map(|r| r.to_rfc3339()),
            certificate: c.pem.clone(),
        }
    }
}

/// A newly issued device certificate, with the CA certificate it chains to.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = CreatedDeviceCertificate)]
pub(crate) struct CreatedCertificateDto {
    #[serde(flatten)]
    certificate: CertificateDto,
    /// The CA certificate (PEM): what the device's peers, and Herd, trust.
    ca_certificate: String,
}

/// The body of `POST /api/v1/devices/{id}/certificates`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateCertificate {
    /// A PKCS #10 certificate signing request, PEM (`-----BEGIN CERTIFICATE REQUEST-----`). Only
    /// its public key is used: the subject is the device, whatever the request names.
    csr: String,
}

/// A list of certificates.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CertificateList {
    /// The certificates: a device's newest first, revoked ones included; in the renewal report
    /// soonest end first.
    items: Vec<CertificateDto>,
}

/// Issue a certificate for a device from a certificate signing request.
#[utoipa::path(
    post,
    path = "/api/v1/devices/{id}/certificates",
    tag = "certificates",
    params(("id" = String, Path, description = "Device id")),
    request_body = CreateCertificate,
    security(("bearer" = ["operator"])),
    responses(
        (status = 201, description = "Issued", body = CreatedCertificateDto),
        (status = 400, description = "`invalid_csr` (with the reason), a malformed body or an invalid device id", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`device_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`ca_unavailable`: this server has no CA to sign with", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn create_certificate(
    caller: Caller<Operator>,
    State(state): State<AppState>,
    DevicePath(device_id): DevicePath,
    JsonBody(body): JsonBody<CreateCertificate>,
) -> Result<(StatusCode, Json<CreatedCertificateDto>), ApiError> {
    let issuer = state.certificate_issuer().ok_or(ApiError::CaUnavailable)?;
    // Nothing is signed for a device that does not exist.
    if state.store().device(&device_id).await?.is_none() {
        return Err(ApiError::DeviceNotFound(device_id.to_string()));
    }
    let issued = issuer.issue(&body.csr, &device_id).map_err(|e| match e {
        IssueError::InvalidCsr(reason) => ApiError::InvalidCsr(reason),
        e @ IssueError::Failed(_) => ApiError::internal(e),
    })?;
    let serial = CertificateSerial::new(issued.serial_hex).map_err(ApiError::internal)?;
    let new = NewDeviceCertificate {
        serial,
        device_id,
        fingerprint_sha256: issued.fingerprint_sha256,
        not_before: issued.not_before,
        not_after: issued.not_after,
        pem: issued.pem,
    };
    let c =
        state.store().create_device_certificate(&new, &state.mutation_by(&caller.token)).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedCertificateDto {
            certificate: CertificateDto::from(&c),
            ca_certificate: issuer.ca_certificate_pem().to_owned(),
        }),
    ))
}

/// List a device's certificates, newest first, revoked ones included.
#[utoipa::path(
    get,
    path = "/api/v1/devices/{id}/certificates",
    tag = "certificates",
    params(("id" = String, Path, description = "Device id")),
    security(("bearer" = ["viewer"])),
    responses(
        (status = 200, description = "The device's certificates", body = CertificateList),
        (status = 400, description = "`invalid_device_id`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`device_not_found`", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn list_certificates(
    _caller: Caller<Viewer>,
    State(state): State<AppState>,
    DevicePath(id): DevicePath,
) -> Result<Json<CertificateList>, ApiError> {
    let certificates = state.store().device_certificates(&id).await?;
    // The store lists nothing for an unknown device; say which it is.
    if certificates.is_empty() && state.store().device(&id).await?.is_none() {
        return Err(ApiError::DeviceNotFound(id.to_string()));
    }
    Ok(Json(CertificateList { items: certificates.iter().map(CertificateDto::from).collect() }))
}

/// Revoke a device certificate (revoking twice keeps the first time).
///
/// It stops working at once, and the device's live connections are closed.
#[utoipa::path(
    delete,
    path = "/api/v1/devices/{id}/certificates/{serial}",
    tag = "certificates",
    params(
        ("id" = String, Path, description = "Device id"),
        ("serial" = String, Path, description = "Certificate serial (lowercase hex)"),
    ),
    security(("bearer" = ["operator"])),
    responses(
        (status = 200, description = "The revoked certificate", body = CertificateDto),
        (status = 400, description = "`invalid_device_id`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`certificate_not_found`: the device has no such certificate", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn revoke_certificate(
    caller: Caller<Operator>,
    State(state): State<AppState>,
    CertificatePath(device_id, serial): CertificatePath,
) -> Result<Json<CertificateDto>, ApiError> {
    let c = state
        .store()
        .revoke_device_certificate(&device_id, &serial, &state.mutation_by(&caller.token))
        .await?;
    state.access_changed(c.device_id.clone(), AccessChangeReason::CredentialRevoked).await;
    Ok(Json(CertificateDto::from(&c)))
}

/// Query parameters of the renewal report.
#[derive(Debug, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ExpiringParams {
    /// Certificates whose validity ends within this many days from now, expired ones included
    /// (0 to 3650, default 30).
    #[param(minimum = 0, maximum = 3650)]
    within_days: Option<u32>,
    /// Most certificates listed, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// Default of [`ExpiringParams::within_days`].
const DEFAULT_EXPIRING_WITHIN_DAYS: u32 = 30;
/// Largest [`ExpiringParams::within_days`]: ten years.
const MAX_EXPIRING_WITHIN_DAYS: u32 = 3650;
/// Default of [`ExpiringParams::limit`].
const DEFAULT_EXPIRING_LIMIT: u32 = 100;

impl ExpiringParams {
    fn parse(query: &RawQuery) -> Result<Self, ApiError> {
        let (mut within, mut limit) = (None, None);
        for (key, value) in query.pairs() {
            match key.as_str() {
                "within_days" => set_once(&mut within, &key, value)?,
                "limit" => set_once(&mut limit, &key, value)?,
                _ => return Err(unknown_parameter(&key, &["within_days", "limit"])),
            }
        }
        let within = match within {
            None => DEFAULT_EXPIRING_WITHIN_DAYS,
            Some(raw) => {
                let days: u32 = raw.parse().map_err(|_| {
                    ApiError::InvalidQuery(format!("within_days must be a number, got {raw:?}"))
                })?;
                if days > MAX_EXPIRING_WITHIN_DAYS {
                    return Err(ApiError::ValidationFailed(format!(
                        "within_days must be between 0 and {MAX_EXPIRING_WITHIN_DAYS}, got {days}"
                    )));
                }
                days
            }
        };
        let limit = parse_limit(limit.as_deref(), DEFAULT_EXPIRING_LIMIT)?;
        Ok(Self { within_days: Some(within), limit: Some(limit) })
    }
}

/// Certificates of every device that are not revoked and end within a number of days (expired
/// ones included), soonest end first: the renewal report.
#[utoipa::path(
    get,
    path = "/api/v1/certificates/expiring",
    tag = "certificates",
    params(ExpiringParams),
    security(("bearer" = ["viewer"])),
    responses(
        (status = 200, description = "The certificates, soonest end first", body = CertificateList),
        (status = 400, description = "`invalid_query`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`: within_days or limit out of range", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn expiring_certificates(
    _caller: Caller<Viewer>,
    State(state): State<AppState>,
    query: RawQuery,
) -> Result<Json<CertificateList>, ApiError> {
    let params = ExpiringParams::parse(&query)?;
    let within_days = params.within_days.unwrap_or(DEFAULT_EXPIRING_WITHIN_DAYS);
    let limit = params.limit.unwrap_or(DEFAULT_EXPIRING_LIMIT);
    let before = Timestamp::from_millis(
        state.now().millis().saturating_add(i64::from(within_days) * 86_400_000),
    );
    let certificates =
        state.store().expiring_device_certificates(before, page_limit(limit)).await?;
    Ok(Json(CertificateList { items: certificates.iter().map(CertificateDto::from).collect() }))
}
