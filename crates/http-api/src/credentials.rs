//! `/api/v1/devices/{id}/credentials`: issue, list and revoke the secrets a device presents
//! when it connects (its MQTT password).
//!
//! A secret is `hdc_` and 64 lowercase hex digits from the OS random number generator, shown in
//! the create response once; the store keeps only its SHA-256. Revoking a credential tells the
//! MQTT gateway, through the access-change channel (see `state`), to drop the device's sessions.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use domain::{AccessChangeReason, DeviceCredential, NewDeviceCredential, TokenHash};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::{Caller, Operator, Viewer, generate_credential_id, generate_credential_secret};
use crate::error::{ApiError, Problem};
use crate::extract::{CredentialPath, DevicePath, JsonBody};
use crate::tokens::expiry;

/// A device credential as the API shows it: never its secret.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = DeviceCredential)]
pub(crate) struct CredentialDto {
    /// Public id.
    #[schema(example = "cred_0123456789abcdef")]
    id: String,
    /// The device it authenticates.
    #[schema(example = "sensor-01")]
    device_id: String,
    /// When it was issued (RFC 3339).
    created_at: String,
    /// When it stops working (RFC 3339), `null` for never.
    expires_at: Option<String>,
    /// When it was revoked (RFC 3339), `null` while it is not.
    revoked_at: Option<String>,
}

impl From<&DeviceCredential> for CredentialDto {
    fn from(c: &DeviceCredential) -> Self {
        Self {
            id: c.id.as_str().to_owned(),
            device_id: c.device_id.as_str().to_owned(),
            created_at: c.created_at.to_rfc3339(),
            expires_at: c.expires_at.map(|e| e.to_rfc3339()),
            revoked_at: c.revoked_at.map(|r| r.to_rfc3339()),
        }
    }
}

/// A new device credential, with its secret: shown this once and never again.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = CreatedDeviceCredential)]
pub(crate) struct CreatedCredentialDto {
    /// Public id.
    #[schema(example = "cred_0123456789abcdef")]
    id: String,
    /// The device it authenticates.
    #[schema(example = "sensor-01")]
    device_id: String,
    /// When it was issued (RFC 3339).
    created_at: String,
    /// When it stops working (RFC 3339), `null` for never.
    expires_at: Option<String>,
    /// Always `null` for a new credential.
    revoked_at: Option<String>,
    /// The secret the device sends as its MQTT password. Only its hash is stored: it cannot be
    /// shown again.
    #[schema(example = "hdc_0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0")]
    token: String,
}

/// The body of `POST /api/v1/devices/{id}/credentials`. Give at most one of `expires_at` and
/// `expires_in_days`; with neither (`{}`) the credential does not expire.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateCredential {
    /// When it stops working (RFC 3339, in the future).
    #[schema(example = "2027-01-01T00:00:00Z")]
    expires_at: Option<String>,
    /// How many days from now it stops working (1 to 36500).
    expires_in_days: Option<u32>,
}

/// A device's credentials.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CredentialList {
    /// The credentials, newest first, revoked ones included.
    items: Vec<CredentialDto>,
}

/// Issue a credential for a device. The response holds its secret, which is never shown again.
#[utoipa::path(
    post,
    path = "/api/v1/devices/{id}/credentials",
    tag = "credentials",
    params(("id" = String, Path, description = "Device id")),
    request_body = CreateCredential,
    security(("bearer" = ["operator"])),
    responses(
        (status = 201, description = "Issued, with the secret in `token`", body = CreatedCredentialDto),
        (status = 400, description = "Malformed body or invalid device id", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`device_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`: expiry", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn create_credential(
    caller: Caller<Operator>,
    State(state): State<AppState>,
    DevicePath(device_id): DevicePath,
    JsonBody(body): JsonBody<CreateCredential>,
) -> Result<(StatusCode, Json<CreatedCredentialDto>), ApiError> {
    let m = state.mutation_by(&caller.token);
    let expires_at = expiry(body.expires_at.as_deref(), body.expires_in_days, m.at)?;
    let secret = generate_credential_secret();
    let new = NewDeviceCredential {
        id: generate_credential_id(),
        device_id,
        hash: TokenHash::of_secret(&secret),
        expires_at,
    };
    let c = state.store().create_device_credential(&new, &m).await?;
    let CredentialDto { id, device_id, created_at, expires_at, revoked_at } =
        CredentialDto::from(&c);
    Ok((
        StatusCode::CREATED,
        Json(CreatedCredentialDto {
            id,
            device_id,
            created_at,
            expires_at,
            revoked_at,
            token: secret,
        }),
    ))
}

/// List a device's credentials, newest first, revoked ones included (never their secrets).
#[utoipa::path(
    get,
    path = "/api/v1/devices/{id}/credentials",
    tag = "credentials",
    params(("id" = String, Path, description = "Device id")),
    security(("bearer" = ["viewer"])),
    responses(
        (status = 200, description = "The device's credentials", body = CredentialList),
        (status = 400, description = "`invalid_device_id`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`device_not_found`", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn list_credentials(
    _caller: Caller<Viewer>,
    State(state): State<AppState>,
    DevicePath(id): DevicePath,
) -> Result<Json<CredentialList>, ApiError> {
    let credentials = state.store().device_credentials(&id).await?;
    // The store lists nothing for an unknown device; say which it is.
    if credentials.is_empty() && state.store().device(&id).await?.is_none() {
        return Err(ApiError::DeviceNotFound(id.to_string()));
    }
    Ok(Json(CredentialList { items: credentials.iter().map(CredentialDto::from).collect() }))
}

/// Revoke a device credential (revoking twice keeps the first time).
///
/// It stops working at once, and the device's live connections are closed.
#[utoipa::path(
    delete,
    path = "/api/v1/devices/{id}/credentials/{credential_id}",
    tag = "credentials",
    params(
        ("id" = String, Path, description = "Device id"),
        ("credential_id" = String, Path, description = "Credential id (`cred_…`)"),
    ),
    security(("bearer" = ["operator"])),
    responses(
        (status = 200, description = "The revoked credential", body = CredentialDto),
        (status = 400, description = "`invalid_device_id`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`credential_not_found`: the device has no such credential", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn revoke_credential(
    caller: Caller<Operator>,
    State(state): State<AppState>,
    CredentialPath(device_id, id): CredentialPath,
) -> Result<Json<CredentialDto>, ApiError> {
    let c = state
        .store()
        .revoke_device_credential(&device_id, &id, &state.mutation_by(&caller.token))
        .await?;
    state.access_changed(c.device_id.clone(), AccessChangeReason::CredentialRevoked).await;
    Ok(Json(CredentialDto::from(&c)))
}
