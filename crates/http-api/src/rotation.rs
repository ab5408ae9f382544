//! `POST /api/v1/devices/{id}/rotate-credentials` and `POST /api/v1/groups/{name}/rotate-credentials`:
//! operators ask devices to renew their certificate or credential now (a suspected leak, a policy
//! change, a CA roll-over), instead of waiting for the renewal before expiry.
//!
//! The request reaches each active device as a QoS 1 message on `devices/{id}/identity/rotate`
//! (`{"credential": "certificate" | "credential", "reason": "operator"}`), sent through the MQTT
//! gateway (see `AppState::with_device_notices`): a connected device gets it at once, an offline
//! device with a persistent session when it is back. The device then renews over MQTT
//! (`devices/{id}/identity/csr` or `…/credential`); what it gets is audited as usual. The old
//! certificate or credential keeps working until an operator revokes it.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use domain::{DeviceId, DeviceNotice, LifecycleState};
use serde::{Deserialize, Serialize};
use serde_json::json;
use store::DeviceQuery;
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::{Caller, Operator};
use crate::error::{ApiError, Problem};
use crate::extract::{DevicePath, GroupPath, JsonBody};
use crate::paging::page_limit;

/// The subtopic of rotation requests, below `devices/{id}/`.
const ROTATE_SUBTOPIC: &str = "identity/rotate";

/// What to renew.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum CredentialKind {
    /// The device's client certificate (the device sends a new CSR).
    Certificate,
    /// The device's credential (the device registers a new secret).
    Credential,
}

/// A rotation request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RotateCredentials {
    /// What the devices should renew.
    credential: CredentialKind,
}

/// What was sent.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RotationSent {
    /// What the devices were asked to renew.
    credential: CredentialKind,
    /// How many devices were asked (active devices only).
    devices: u64,
}

fn notice(device_id: DeviceId, credential: CredentialKind) -> DeviceNotice {
    DeviceNotice {
        device_id,
        subtopic: ROTATE_SUBTOPIC,
        payload: json!({ "credential": credential, "reason": "operator" }).to_string(),
    }
}

/// Ask a device to renew its certificate or credential now.
///
/// The request reaches the device on `devices/{id}/identity/rotate` (QoS 1; an offline device with
/// a persistent session gets it when it is back).
#[utoipa::path(
    post,
    path = "/api/v1/devices/{id}/rotate-credentials",
    tag = "credentials",
    params(("id" = String, Path, description = "Device id")),
    request_body = RotateCredentials,
    security(("bearer" = ["operator"])),
    responses(
        (status = 202, description = "Sent to the device", body = RotationSent),
        (status = 400, description = "Malformed body or invalid device id", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`device_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`conflict`: the device is not active", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`gateway_unavailable`: no MQTT gateway to send it through", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn rotate_device(
    _caller: Caller<Operator>,
    State(state): State<AppState>,
    DevicePath(id): DevicePath,
    JsonBody(body): JsonBody<RotateCredentials>,
) -> Result<(StatusCode, Json<RotationSent>), ApiError> {
    let device =
        state.store().device(&id).await?.ok_or_else(|| ApiError::DeviceNotFound(id.to_string()))?;
    if device.state != LifecycleState::Active {
        return Err(ApiError::Conflict(format!(
            "device {id} is {}: only active devices can renew their credentials",
            device.state.as_str()
        )));
    }
    state.notify(notice(id, body.credential)).await?;
    Ok((StatusCode::ACCEPTED, Json(RotationSent { credential: body.credential, devices: 1 })))
}

/// Ask every active device of a group to renew its certificate or credential now.
#[utoipa::path(
    post,
    path = "/api/v1/groups/{name}/rotate-credentials",
    tag = "credentials",
    params(("name" = String, Path, description = "Group name")),
    request_body = RotateCredentials,
    security(("bearer" = ["operator"])),
    responses(
        (status = 202, description = "Sent to the group's active devices", body = RotationSent),
        (status = 400, description = "Malformed body or invalid group name", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`group_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`gateway_unavailable`: no MQTT gateway to send it through", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn rotate_group(
    _caller: Caller<Operator>,
    State(state): State<AppState>,
    GroupPath(name): GroupPath,
    JsonBody(body): JsonBody<RotateCredentials>,
) -> Result<(StatusCode, Json<RotationSent>), ApiError> {
    if state.store().group(&name).await?.is_none() {
        return Err(ApiError::GroupNotFound(name.to_string()));
    }
    let mut query =
        DeviceQuery { filter: None, after: None, limit: page_limit(store::MAX_PAGE_SIZE) };
    let mut devices = 0;
    loop {
        let page = state.store().group_devices(&name, &query).await?;
        for device in &page.items {
            if device.state == LifecycleState::Active {
                state.notify(notice(device.id.clone(), body.credential)).await?;
                devices += 1;
            }
        }
        match page.items.last() {
            Some(last) if page.has_more => query.after = Some(last.id.clone()),
            _ => break,
        }
    }
    Ok((StatusCode::ACCEPTED, Json(RotationSent { credential: body.credential, devices })))
}
