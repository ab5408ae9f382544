//! `/api/v1/devices`: create, list, read, change and delete devices, with `ETag`/`If-Match`
//! optimistic concurrency on the device's version.
//!
//! `PATCH …?dry_run=true` shows the blast radius of a change of a device's tags, name or state
//! without writing it: the dynamic groups it would join and leave, the configuration profiles it
//! would gain and lose, and how its effective desired document would change.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderName, StatusCode, header};
use axum::response::{IntoResponse, Response};
use domain::twin::{diff, effective_desired};
use domain::{
    AccessChangeReason, AgentReport, Attributes, Device, DevicePatch, DisplayName, GroupKind,
    GroupName, InvalidInput, LifecycleState, NewDevice, Presence, Tags,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use store::Page;
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::{Caller, Operator, Viewer};
use crate::error::{ApiError, Problem};
use crate::extract::dry_run_param;
use crate::extract::{DevicePath, IfMatch, JsonBody, RawQuery, device_id, etag};
use crate::paging::{DeviceListParams, next_cursor, page_limit};
use crate::profiles::{check_if_match, device_layers, profile_names};

/// A device as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Device)]
pub(crate) struct DeviceDto {
    /// Unique id: 1–128 characters of `[A-Za-z0-9._:-]`.
    #[schema(example = "sensor-01")]
    id: String,
    /// Display name (may be empty).
    name: String,
    /// Labels: up to 64 `key: value` pairs.
    tags: BTreeMap<String, String>,
    /// Free-form JSON object.
    #[schema(value_type = Object)]
    attributes: serde_json::Value,
    /// Lifecycle state.
    state: StateDto,
    /// When the device was created (RFC 3339).
    #[schema(example = "2026-11-26T12:00:00Z")]
    created_at: String,
    /// When the device last changed (RFC 3339).
    updated_at: String,
    /// Incremented on every change; the `ETag` is this number in quotes.
    version: u64,
    /// The device this one replaced (`POST /api/v1/devices/{id}/replace`); absent when none.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "sensor-00")]
    replaces: Option<String>,
    /// The device that replaced this one (it is retired); absent when none.
    #[serde(skip_serializing_if = "Option::is_none")]
    replaced_by: Option<String>,
    /// The device's MQTT connection as the gateway last saw it. Only in the response of
    /// `GET /api/v1/devices/{id}`; not part of the `ETag` (it is not versioned).
    #[serde(skip_serializing_if = "Option::is_none")]
    connectivity: Option<ConnectivityDto>,
    /// What the device's agent last reported about itself. Only in the response of
    /// `GET /api/v1/devices/{id}`, and only once the agent has reported something; not part of
    /// the `ETag`.
    #[serde(skip_serializing_if = "Option::is_none")]
    agent: Option<AgentDto>,
}

/// What a device's agent reported about itself over MQTT (`devices/{id}/facts` after each connect,
/// `devices/{id}/heartbeat` periodically). Both objects are free-form, kept as the agent sent them.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = AgentReport)]
pub(crate) struct AgentDto {
    /// The facts the agent last reported (agent version, OS, kernel, architecture, hostname, …);
    /// `null` until it reports them.
    #[schema(value_type = Option<Object>)]
    facts: Option<serde_json::Value>,
    /// When Herd received those facts (RFC 3339).
    #[schema(example = "2026-11-26T12:00:00Z")]
    facts_reported_at: Option<String>,
    /// The health of the last heartbeat (uptime, CPU, memory, disk, …; `ts` when the device
    /// measured it, if it said); `null` until the first heartbeat.
    #[schema(value_type = Option<Object>)]
    health: Option<serde_json::Value>,
    /// When Herd received the last heartbeat (RFC 3339).
    #[schema(example = "2026-11-26T12:00:30Z")]
    last_heartbeat_at: Option<String>,
    /// How many heartbeats Herd has recorded for the device.
    heartbeats: u64,
}

impl From<AgentReport> for AgentDto {
    fn from(r: AgentReport) -> Self {
        Self {
            facts: r.facts.map(|f| f.to_json()),
            facts_reported_at: r.facts_at.map(|t| t.to_rfc3339()),
            health: r.health.map(|h| h.to_json()),
            last_heartbeat_at: r.heartbeat_at.map(|t| t.to_rfc3339()),
            heartbeats: r.heartbeats,
        }
    }
}

/// A device's MQTT connection: all fields but `connected` are `null` when it never connected.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Connectivity)]
pub(crate) struct ConnectivityDto {
    /// Whether the device has an open MQTT connection now.
    connected: bool,
    /// When its current (or last) connection was accepted (RFC 3339).
    #[schema(example = "2026-11-26T12:00:00Z")]
    connected_at: Option<String>,
    /// When its last connection ended (RFC 3339).
    disconnected_at: Option<String>,
    /// Remote address (`ip:port`) of its current (or last) connection.
    #[schema(example = "192.0.2.10:53012")]
    remote_addr: Option<String>,
    /// MQTT version of its current (or last) connection: `3.1.1` or `5`.
    #[schema(example = "5")]
    protocol: Option<String>,
    /// Why its last connection ended: `clean`, `keep_alive_timeout`, `taken_over`, `revoked`,
    /// `server_shutdown`, `server_restart`, `protocol_error`, `connection_lost`, `io_error`,
    /// `administrative` or `error`.
    #[schema(example = "clean")]
    last_disconnect_reason: Option<String>,
}

impl From<Option<Presence>> for ConnectivityDto {
    fn from(p: Option<Presence>) -> Self {
        match p {
            Some(p) => Self {
                connected: p.connected,
                connected_at: p.connected_at.map(|t| t.to_rfc3339()),
                disconnected_at: p.disconnected_at.map(|t| t.to_rfc3339()),
                remote_addr: p.remote_addr,
                protocol: p.protocol,
                last_disconnect_reason: p.last_disconnect_reason,
            },
            None => Self {
                connected: false,
                connected_at: None,
                disconnected_at: None,
                remote_addr: None,
                protocol: None,
                last_disconnect_reason: None,
            },
        }
    }
}

impl From<&Device> for DeviceDto {
    fn from(d: &Device) -> Self {
        Self {
            id: d.id.as_str().to_owned(),
            name: d.name.as_str().to_owned(),
            tags: d.tags.iter().map(|(k, v)| (k.as_str().to_owned(), v.to_owned())).collect(),
            attributes: d.attributes.as_json().clone(),
            state: d.state.into(),
            created_at: d.created_at.to_rfc3339(),
            updated_at: d.updated_at.to_rfc3339(),
            version: d.version,
            replaces: d.replaces.as_ref().map(|r| r.as_str().to_owned()),
            replaced_by: d.replaced_by.as_ref().map(|r| r.as_str().to_owned()),
            connectivity: None,
            agent: None,
        }
    }
}

/// A device's lifecycle state. `registered → active ⇄ suspended`, any of those →
/// `decommissioned → retired`.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = LifecycleState)]
pub(crate) enum StateDto {
    /// Known to the registry, never activated.
    Registered,
    /// In service.
    Active,
    /// Temporarily barred from connecting.
    Suspended,
    /// Out of service, history kept.
    Decommissioned,
    /// Terminal.
    Retired,
}

impl From<LifecycleState> for StateDto {
    fn from(s: LifecycleState) -> Self {
        match s {
            LifecycleState::Registered => Self::Registered,
            LifecycleState::Active => Self::Active,
            LifecycleState::Suspended => Self::Suspended,
            LifecycleState::Decommissioned => Self::Decommissioned,
            LifecycleState::Retired => Self::Retired,
        }
    }
}

/// One page of devices.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DevicePage {
    /// The devices, ordered by id.
    items: Vec<DeviceDto>,
    /// Pass as `cursor` to get the next page; `null` on the last page.
    next_cursor: Option<String>,
}

impl From<Page<Device>> for DevicePage {
    fn from(page: Page<Device>) -> Self {
        let next_cursor = next_cursor(&page, |d| d.id.as_str());
        Self { items: page.items.iter().map(DeviceDto::from).collect(), next_cursor }
    }
}

/// The body of `POST /api/v1/devices`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateDevice {
    /// Unique id: 1–128 characters of `[A-Za-z0-9._:-]`.
    #[schema(example = "sensor-01")]
    id: String,
    /// Display name (default empty).
    name: Option<String>,
    /// Labels (default none).
    tags: Option<BTreeMap<String, String>>,
    /// A JSON object (default `{}`), at most 16 KiB by default.
    #[schema(value_type = Option<Object>)]
    attributes: Option<serde_json::Value>,
    /// `registered` (default) or `active`.
    #[schema(value_type = Option<StateDto>)]
    state: Option<String>,
}

/// The body of `PATCH /api/v1/devices/{id}`: the fields present replace the current ones.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateDevice {
    /// New display name.
    name: Option<String>,
    /// New tags (replace all tags).
    tags: Option<BTreeMap<String, String>>,
    /// New attributes (replace all attributes).
    #[schema(value_type = Option<Object>)]
    attributes: Option<serde_json::Value>,
    /// New lifecycle state; must be reachable from the current one.
    #[schema(value_type = Option<StateDto>)]
    state: Option<String>,
}

/// What a device change would do: `PATCH /api/v1/devices/{id}?dry_run=true`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = DeviceDryRun)]
pub(crate) struct DeviceDryRun {
    /// Always `true`: nothing was written.
    dry_run: bool,
    /// The device as it would be.
    device: DeviceDto,
    /// The dynamic groups whose filter would start or stop matching it.
    groups: GroupChanges,
    /// The configuration profiles that would start or stop applying to it, in merge order.
    profiles: ProfileChanges,
    /// Its effective desired document before and after.
    desired: DesiredChanges,
}

/// Dynamic groups a device would join and leave.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = DeviceDryRunGroups)]
pub(crate) struct GroupChanges {
    /// Group names, in name order.
    joined: Vec<String>,
    /// Group names, in name order.
    left: Vec<String>,
}

/// Configuration profiles a device would gain and lose.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = DeviceDryRunProfiles)]
pub(crate) struct ProfileChanges {
    /// Profile names.
    gained: Vec<String>,
    /// Profile names.
    lost: Vec<String>,
}

/// A device's effective desired document before and after a change.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = DeviceDryRunDesired)]
pub(crate) struct DesiredChanges {
    /// Computed from its current layers.
    #[schema(value_type = Object)]
    before: Value,
    /// Computed from the layers it would have.
    #[schema(value_type = Object)]
    after: Value,
    /// The merge patch from `before` to `after` (`{}`: no change).
    #[schema(value_type = Object)]
    changes: Value,
}

/// `PATCH /api/v1/devices/{id}` answers: the changed device, or a dry run.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
#[expect(dead_code, reason = "documents the response in OpenAPI; handlers build its variants")]
pub(crate) enum DevicePatchResponse {
    /// The changed device.
    Changed(Box<DeviceDto>),
    /// `?dry_run=true`.
    DryRun(Box<DeviceDryRun>),
}

/// Validates the optional device fields of a request or import line into a patch.
///
/// # Errors
/// The first rule broken.
pub(crate) fn device_patch(
    name: Option<String>,
    tags: Option<BTreeMap<String, String>>,
    attributes: Option<serde_json::Value>,
    state: Option<&str>,
    max_attributes_bytes: usize,
) -> Result<DevicePatch, InvalidInput> {
    Ok(DevicePatch {
        name: name.map(DisplayName::new).transpose()?,
        tags: tags.map(Tags::new).transpose()?,
        attributes: attributes.map(|a| Attributes::new(a, max_attributes_bytes)).transpose()?,
        state: state.map(str::parse).transpose()?,
    })
}

/// A device response: the device as JSON with its `ETag`.
fn device_response(status: StatusCode, device: &Device) -> Response {
    with_etag(status, device, DeviceDto::from(device))
}

/// `dto` as JSON with the `ETag` of `device` (and its `Location` when created).
fn with_etag(status: StatusCode, device: &Device, dto: DeviceDto) -> Response {
    let mut headers = vec![(header::ETAG, etag(device.version))];
    if status == StatusCode::CREATED {
        let location: (HeaderName, String) =
            (header::LOCATION, format!("/api/v1/devices/{}", device.id));
        headers.push(location);
    }
    let mut response = (status, Json(dto)).into_response();
    for (name, value) in headers {
        if let Ok(value) = value.parse() {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

/// Register a device.
#[utoipa::path(
    post,
    path = "/api/v1/devices",
    tag = "devices",
    request_body = CreateDevice,
    security(("bearer" = ["operator"])),
    responses(
        (status = 201, description = "Created; `ETag` holds the version, `Location` the URL", body = DeviceDto),
        (status = 400, description = "Malformed body or invalid device id", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`device_exists`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn create_device(
    caller: Caller<Operator>,
    State(state): State<AppState>,
    JsonBody(body): JsonBody<CreateDevice>,
) -> Result<Response, ApiError> {
    let id = device_id(body.id)?;
    let patch = device_patch(
        body.name,
        body.tags,
        body.attributes,
        body.state.as_deref(),
        state.config().max_attributes_bytes,
    )?;
    let initial = patch.state.unwrap_or(LifecycleState::Registered);
    if !initial.is_initial() {
        return Err(ApiError::ValidationFailed(format!(
            "a new device starts as registered or active, not {initial}"
        )));
    }
    let new = NewDevice {
        id,
        name: patch.name.unwrap_or_default(),
        tags: patch.tags.unwrap_or_default(),
        attributes: patch.attributes.unwrap_or_default(),
        state: initial,
    };
    let device = state.store().create_device(&new, &state.mutation_by(&caller.token)).await?;
    // Fleet profiles apply to the new device: the store queued it for a recompute.
    state.wake_recompute();
    crate::jobs::device_changed(&state, &device.id, false).await;
    Ok(device_response(StatusCode::CREATED, &device))
}

/// List devices, one page at a time, ordered by id.
#[utoipa::path(
    get,
    path = "/api/v1/devices",
    tag = "devices",
    params(DeviceListParams),
    security(("bearer" = ["viewer"])),
    responses(
        (status = 200, description = "One page of devices", body = DevicePage),
        (status = 400, description = "`invalid_filter`, `invalid_cursor`, `invalid_query`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed` (state, tag, limit)", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn list_devices(
    _caller: Caller<Viewer>,
    State(state): State<AppState>,
    query: RawQuery,
) -> Result<Json<DevicePage>, ApiError> {
    let q = DeviceListParams::parse(&query)?.into_query(state.config().page_size())?;
    let page = state.store().list_devices(&q).await?;
    Ok(Json(page.into()))
}

/// Read one device.
#[utoipa::path(
    get,
    path = "/api/v1/devices/{id}",
    tag = "devices",
    params(("id" = String, Path, description = "Device id")),
    security(("bearer" = ["viewer"])),
    responses(
        (status = 200, description = "The device with its `connectivity` and, once its agent has reported, `agent`; `ETag` holds its version", body = DeviceDto),
        (status = 400, description = "`invalid_device_id`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`device_not_found`", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn get_device(
    _caller: Caller<Viewer>,
    State(state): State<AppState>,
    DevicePath(id): DevicePath,
) -> Result<Response, ApiError> {
    let device =
        state.store().device(&id).await?.ok_or_else(|| ApiError::DeviceNotFound(id.to_string()))?;
    let presence = state.store().presence(&id).await?;
    let agent = state.store().agent_report(&id).await?;
    let dto = DeviceDto {
        connectivity: Some(presence.into()),
        agent: agent.map(AgentDto::from),
        ..DeviceDto::from(&device)
    };
    Ok(with_etag(StatusCode::OK, &device, dto))
}

/// Change a device's name, tags, attributes or lifecycle state; with `?dry_run=true`, show what
/// the change would do instead.
///
/// With `If-Match: "<version>"` the change applies only to that version (412 otherwise). A dry
/// run writes nothing and answers with the device as it would be, the dynamic groups it would
/// join and leave, the configuration profiles it would gain and lose, and its effective desired
/// document before and after.
#[utoipa::path(
    patch,
    path = "/api/v1/devices/{id}",
    tag = "devices",
    params(
        ("id" = String, Path, description = "Device id"),
        ("If-Match" = Option<String>, Header, description = "`\"<version>\"` from the ETag, or `*`"),
        ("dry_run" = Option<bool>, Query, description = "`true`: answer with what the change would do and write nothing"),
    ),
    request_body = UpdateDevice,
    security(("bearer" = ["operator"])),
    responses(
        (status = 200, description = "The changed device (`ETag` holds its version), or with `?dry_run=true` a `DeviceDryRun`", body = DevicePatchResponse),
        (status = 400, description = "Malformed body or invalid device id", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`device_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`illegal_transition`", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "`precondition_failed`: the device changed since", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn update_device(
    caller: Caller<Operator>,
    State(state): State<AppState>,
    DevicePath(id): DevicePath,
    if_match: IfMatch,
    query: RawQuery,
    JsonBody(body): JsonBody<UpdateDevice>,
) -> Result<Response, ApiError> {
    let dry_run = dry_run_param(&query)?;
    let patch = device_patch(
        body.name,
        body.tags,
        body.attributes,
        body.state.as_deref(),
        state.config().max_attributes_bytes,
    )?;
    if dry_run {
        return Ok(Json(device_dry_run(&state, &id, if_match, &patch).await?).into_response());
    }
    let device = state
        .store()
        .update_device(&id, &patch, if_match.expected(), &state.mutation_by(&caller.token))
        .await?;
    if patch.tags.is_some() || patch.name.is_some() || patch.state.is_some() {
        // Dynamic groups (and their profiles) may match the device now, or no longer: the
        // store queued it for a recompute.
        state.wake_recompute();
    }
    if patch.tags.is_some() || patch.state.is_some() {
        crate::jobs::device_changed(&state, &id, true).await;
    }
    if patch.state.is_some_and(|s| s != LifecycleState::Active) {
        state.access_changed(id, AccessChangeReason::NotActive).await;
    }
    Ok(device_response(StatusCode::OK, &device))
}

/// Delete a device and its group memberships (its audit history stays).
#[utoipa::path(
    delete,
    path = "/api/v1/devices/{id}",
    tag = "devices",
    params(
        ("id" = String, Path, description = "Device id"),
        ("If-Match" = Option<String>, Header, description = "`\"<version>\"` from the ETag, or `*`"),
    ),
    security(("bearer" = ["operator"])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "`invalid_device_id`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`device_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "`precondition_failed`", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn delete_device(
    caller: Caller<Operator>,
    State(state): State<AppState>,
    DevicePath(id): DevicePath,
    if_match: IfMatch,
) -> Result<StatusCode, ApiError> {
    state
        .store()
        .delete_device(&id, if_match.expected(), &state.mutation_by(&caller.token))
        .await?;
    crate::jobs::device_changed(&state, &id, true).await;
    state.access_changed(id, AccessChangeReason::Deleted).await;
    Ok(StatusCode::NO_CONTENT)
}

/// The blast radius of `patch` on device `id`, computed on a copy; writes nothing.
async fn device_dry_run(
    state: &AppState,
    id: &domain::DeviceId,
    if_match: IfMatch,
    patch: &DevicePatch,
) -> Result<DeviceDryRun, ApiError> {
    let not_found = || ApiError::DeviceNotFound(id.to_string());
    let before = state.store().device(id).await?.ok_or_else(not_found)?;
    check_if_match(if_match, before.version)?;
    let mut after = before.clone();
    patch.apply(&mut after).map_err(|e| ApiError::IllegalTransition(e.to_string()))?;
    if after != before {
        after.version = before.version + 1;
        after.updated_at = state.now();
    }

    // Static memberships do not change with the device; dynamic ones follow its fields.
    let (mut joined, mut left) = (Vec::new(), Vec::new());
    let mut cursor: Option<GroupName> = None;
    loop {
        let page =
            state.store().list_groups(cursor.as_ref(), page_limit(store::MAX_PAGE_SIZE)).await?;
        for group in &page.items {
            if let GroupKind::Dynamic(filter) = &group.kind {
                match (filter.matches(&before), filter.matches(&after)) {
                    (false, true) => joined.push(group.name.to_string()),
                    (true, false) => left.push(group.name.to_string()),
                    _ => {}
                }
            }
        }
        match page.items.last() {
            Some(last) if page.has_more => cursor = Some(last.name.clone()),
            _ => break,
        }
    }

    let twin = state.store().device_twin(id).await?.ok_or_else(not_found)?;
    let own = &twin.device_desired.document;
    let layers_before = device_layers(state, &before, own).await?;
    let layers_after = device_layers(state, &after, own).await?;
    let (names_before, names_after) = (profile_names(&layers_before), profile_names(&layers_after));
    let gained = names_after.iter().filter(|n| !names_before.contains(n)).cloned().collect();
    let lost = names_before.iter().filter(|n| !names_after.contains(n)).cloned().collect();
    let desired_before = effective_desired(&layers_before).document;
    let desired_after = effective_desired(&layers_after).document;
    let changes = diff(&desired_before, &desired_after);
    Ok(DeviceDryRun {
        dry_run: true,
        device: DeviceDto::from(&after),
        groups: GroupChanges { joined, left },
        profiles: ProfileChanges { gained, lost },
        desired: DesiredChanges {
            before: Value::Object(desired_before),
            after: Value::Object(desired_after),
            changes: Value::Object(changes),
        },
    })
}
