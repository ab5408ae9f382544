//! `POST /api/v1/devices/{id}/replace`: replace a device by another (RMA).
//!
//! The store does the whole replacement in one transaction (see `store::Store::replace_device`);
//! afterwards the old device's live MQTT sessions are cut through the access-change channel,
//! because its credentials and certificates were revoked and it is retired.

use axum::Json;
use axum::extract::State;
use domain::{AccessChangeReason, Replacement};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::{Caller, Operator};
use crate::devices::DeviceDto;
use crate::error::{ApiError, Problem};
use crate::extract::{DevicePath, JsonBody, device_id};

/// The body of `POST /api/v1/devices/{id}/replace`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReplaceDevice {
    /// The successor's id: an existing device (not decommissioned or retired, not the
    /// successor of another device), or a new id, which creates it in state `registered`.
    #[schema(example = "sensor-01b")]
    with: String,
}

/// What a replacement did.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = DeviceReplacement)]
pub(crate) struct ReplacementDto {
    /// The replaced device, now `retired` with `replaced_by` set.
    replaced: DeviceDto,
    /// The successor, with `replaces` set.
    successor: DeviceDto,
    /// Whether the replacement created the successor.
    created: bool,
    /// What the successor took over.
    moved: MovedDto,
    /// What of the replaced device was revoked.
    revoked: RevokedDto,
}

/// Counts of what moved to the successor.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = ReplacementMoved)]
pub(crate) struct MovedDto {
    /// Tags set on the successor (the replaced device's win on key conflicts).
    tags: usize,
    /// Top-level attribute keys set on the successor (shallow merge, the replaced device's win).
    attributes: usize,
    /// Static groups the successor joined in the replaced device's place.
    groups: usize,
}

/// Counts of what was revoked.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = ReplacementRevoked)]
pub(crate) struct RevokedDto {
    /// Credentials of the replaced device revoked now (ones revoked before are not counted).
    credentials: usize,
    /// Certificates of the replaced device revoked now.
    certificates: usize,
}

impl From<&Replacement> for ReplacementDto {
    fn from(r: &Replacement) -> Self {
        Self {
            replaced: DeviceDto::from(&r.old),
            successor: DeviceDto::from(&r.successor),
            created: r.created,
            moved: MovedDto {
                tags: r.counts.tags,
                attributes: r.counts.attributes,
                groups: r.counts.groups,
            },
            revoked: RevokedDto {
                credentials: r.counts.credentials_revoked,
                certificates: r.counts.certificates_revoked,
            },
        }
    }
}

/// Replace a device by another (RMA), in one transaction.
///
/// The successor takes over the device's tags (the device's win on key conflicts), attributes
/// (shallow merge, the device's keys win) and static group memberships; the two are linked
/// (`replaces` / `replaced_by`). Every credential and certificate of the device is revoked, its
/// live connections are closed, and it goes through `decommissioned` to `retired`, keeping its
/// history (presence, audit). Audited as `device.replace` on `device/{id}`.
#[utoipa::path(
    post,
    path = "/api/v1/devices/{id}/replace",
    tag = "devices",
    params(("id" = String, Path, description = "Id of the device to replace")),
    request_body = ReplaceDevice,
    security(("bearer" = ["operator"])),
    responses(
        (status = 200, description = "Replaced", body = ReplacementDto),
        (status = 400, description = "Malformed body or invalid device id (`invalid_device_id`)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`device_not_found`: no device to replace", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`device_retired` (replaced already), `successor_out_of_service` (decommissioned or retired), `successor_already_replaces`, `illegal_transition`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`replace_same_device`; `validation_failed` when the merged tags break a tag rule", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn replace_device(
    caller: Caller<Operator>,
    State(state): State<AppState>,
    DevicePath(old): DevicePath,
    JsonBody(body): JsonBody<ReplaceDevice>,
) -> Result<Json<ReplacementDto>, ApiError> {
    let new = device_id(body.with)?;
    let r = state.store().replace_device(&old, &new, &state.mutation_by(&caller.token)).await?;
    // The successor took over static group memberships (and their profiles).
    state.wake_recompute();
    state.access_changed(old, AccessChangeReason::NotActive).await;
    Ok(Json(ReplacementDto::from(&r)))
}
