//! `/api/v1/devices/{id}/twin`: read a device's twin, change its desired state and tags with
//! JSON merge patches (`If-Match` on the `"<desired version>.<tags version>"` ETag), and read
//! its history.
//!
//! After a committed change of the effective desired document the device id is sent on the
//! twin-change channel ([`AppState::with_twin_changes`]), so the server pushes the new desired
//! document and delta to the device. The channel is bounded; a full channel holds the request
//! (changes are never dropped), a closed one is logged.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use domain::{DeviceTwin, SectionName, TwinError, TwinEtag, TwinSection};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use store::{TwinHistoryEntry, TwinHistoryQuery, TwinUpdate};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::auth::{Caller, Operator, Viewer};
use crate::error::{ApiError, Problem};
use crate::extract::{DevicePath, JsonBody, RawQuery, parse_limit, set_once, unknown_parameter};
use crate::paging::page_limit;

/// Page size of the history when the request gives no `limit`.
const DEFAULT_HISTORY_LIMIT: u32 = 100;

/// When and at which section version a property was last set.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = TwinPropertyMetadata)]
pub(crate) struct MetaDto {
    /// When (RFC 3339).
    updated_at: String,
    /// The section version that set it.
    version: u64,
}

/// One section of a twin.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = TwinSection)]
pub(crate) struct SectionDto {
    /// The document, a JSON object.
    #[schema(value_type = Object)]
    document: Value,
    /// Starts at 0, one more with every change of the document.
    version: u64,
    /// JSON Pointer of each leaf property (`/led/color`) → when and at which version it was set.
    metadata: BTreeMap<String, MetaDto>,
}

impl From<&TwinSection> for SectionDto {
    fn from(s: &TwinSection) -> Self {
        Self {
            document: Value::Object(s.document.clone()),
            version: s.version,
            metadata: s
                .metadata
                .iter()
                .map(|(p, m)| {
                    (
                        p.clone(),
                        MetaDto { updated_at: m.updated_at.to_rfc3339(), version: m.version },
                    )
                })
                .collect(),
        }
    }
}

/// Whether the device has converged to its desired state.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = TwinStatus)]
pub(crate) struct StatusDto {
    /// `in_sync` (empty delta), `pending` (the device has not reported the desired values yet)
    /// or `drifted` (it reported other values after they were set).
    #[schema(example = "pending")]
    state: &'static str,
    /// Since when (RFC 3339): for `pending` the oldest differing desired property, for `drifted`
    /// the latest contradicting report; absent when `in_sync`.
    #[serde(skip_serializing_if = "Option::is_none")]
    since: Option<String>,
}

/// A device's twin.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = DeviceTwin)]
pub(crate) struct TwinDto {
    /// The device.
    device_id: String,
    /// The effective desired state the device sees (operator-owned).
    desired: SectionDto,
    /// What the device reported (device-owned).
    reported: SectionDto,
    /// Service-only metadata, never sent to the device (operator-owned).
    tags: SectionDto,
    /// The desired properties whose value differs from the reported one (`{}` when in sync).
    #[schema(value_type = Object)]
    delta: Value,
    /// Convergence.
    status: StatusDto,
    /// `<desired version>.<tags version>`, also the `ETag` header (quoted).
    #[schema(example = "3.1")]
    etag: String,
}

impl From<&DeviceTwin> for TwinDto {
    fn from(t: &DeviceTwin) -> Self {
        let convergence = t.convergence();
        Self {
            device_id: t.device_id.to_string(),
            desired: SectionDto::from(&t.desired),
            reported: SectionDto::from(&t.reported),
            tags: SectionDto::from(&t.tags),
            delta: Value::Object(t.delta()),
            status: StatusDto {
                state: convergence.as_str(),
                since: convergence.since().map(|s| s.to_rfc3339()),
            },
            etag: t.etag().to_string(),
        }
    }
}

fn twin_response(twin: &DeviceTwin) -> Response {
    let etag = format!("\"{}\"", twin.etag());
    ([(header::ETAG, etag)], Json(TwinDto::from(twin))).into_response()
}

/// The body of `PATCH /api/v1/devices/{id}/twin`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TwinPatch {
    /// JSON merge patch (RFC 7396) of the device's desired state: `null` deletes a property.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Object>)]
    desired: Option<Value>,
    /// JSON merge patch of the tags.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Object>)]
    tags: Option<Value>,
}

/// A field that is present, `null` included (so `"desired": null` is refused, not ignored).
pub(crate) fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// `If-Match` of a twin: `"<desired>.<tags>"` or `*`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TwinIfMatch(Option<TwinEtag>);

impl<S: Send + Sync> FromRequestParts<S> for TwinIfMatch {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get(header::IF_MATCH) else { return Ok(Self(None)) };
        let text = value.to_str().unwrap_or_default().trim();
        if text == "*" {
            return Ok(Self(None));
        }
        TwinEtag::parse(text).map(|e| Self(Some(e))).map_err(|_| {
            ApiError::PreconditionFailed(format!(
                "If-Match {text:?} names no version of this twin; use the ETag \"<desired>.<tags>\" it was served with"
            ))
        })
    }
}

impl From<TwinError> for ApiError {
    fn from(e: TwinError) -> Self {
        let message = e.to_string();
        match e {
            TwinError::NotAnObject { .. } => Self::InvalidPatch(message),
            TwinError::TooLarge { .. } | TwinError::TooDeep { .. } => Self::TwinTooLarge(message),
            TwinError::EtagMismatch { expected, current } => Self::PreconditionFailed(format!(
                "If-Match names ETag \"{expected}\" but the current ETag is \"{current}\""
            )),
        }
    }
}

/// Read a device's twin.
///
/// The effective desired state, the reported state and the tags, each with its version and
/// per-property metadata, the delta and the convergence status. The `ETag` header is
/// `"<desired version>.<tags version>"`: reports of the device never change it.
#[utoipa::path(
    get,
    path = "/api/v1/devices/{id}/twin",
    tag = "twins",
    params(("id" = String, Path, description = "Device id")),
    security(("bearer" = ["viewer"])),
    responses(
        (status = 200, description = "The twin; `ETag` holds `\"<desired version>.<tags version>\"`", body = TwinDto),
        (status = 400, description = "`invalid_device_id`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`device_not_found`", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn get_twin(
    _caller: Caller<Viewer>,
    State(state): State<AppState>,
    DevicePath(id): DevicePath,
) -> Result<Response, ApiError> {
    let twin = state
        .store()
        .device_twin(&id)
        .await?
        .ok_or_else(|| ApiError::DeviceNotFound(id.to_string()))?;
    Ok(twin_response(&twin))
}

/// Change a device's desired state and tags.
///
/// Both are JSON merge patches (RFC 7396; `Content-Type: application/merge-patch+json` or
/// `application/json`), applied together or not at all; `null` deletes a property. A patch
/// that changes nothing keeps the versions. Audited as `device.twin.update`. When the desired
/// state changes, the device is sent the new desired state and delta over MQTT. With
/// `?dry_run=true` nothing is written: the answer is a `TwinDryRun`, the twin as it would be
/// and the changes of its effective desired document and tags (the same checks apply: 412,
/// 413).
#[utoipa::path(
    patch,
    path = "/api/v1/devices/{id}/twin",
    tag = "twins",
    params(
        ("id" = String, Path, description = "Device id"),
        ("If-Match" = Option<String>, Header, description = "`\"<desired version>.<tags version>\"` from the ETag, or `*`"),
        ("dry_run" = Option<bool>, Query, description = "`true`: answer with what the change would do and write nothing"),
    ),
    request_body(content = TwinPatch, content_type = "application/merge-patch+json"),
    security(("bearer" = ["operator"])),
    responses(
        (status = 200, description = "The changed twin (`ETag` holds its versions), or with `?dry_run=true` a `TwinDryRun`", body = TwinPatchResponse),
        (status = 400, description = "`invalid_patch` (a patch that is not a JSON object), `malformed_json`, `unknown_field`, `invalid_device_id`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`device_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "`precondition_failed`: the twin changed since; the message names the current ETag", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "`twin_too_large`: a section would pass `max_section_bytes` or `max_depth`; `payload_too_large`", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "`unsupported_media_type`", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn patch_twin(
    caller: Caller<Operator>,
    State(state): State<AppState>,
    DevicePath(id): DevicePath,
    TwinIfMatch(if_match): TwinIfMatch,
    query: RawQuery,
    JsonBody(body): JsonBody<TwinPatch>,
) -> Result<Response, ApiError> {
    let dry_run = crate::extract::dry_run_param(&query)?;
    let update = TwinUpdate { desired: body.desired, tags: body.tags, if_match };
    let m = state.mutation_by(&caller.token);
    if dry_run {
        return twin_dry_run(&state, &id, &update, &m).await;
    }
    let change = state.store().update_twin(&id, &update, state.twin_policy(), &m).await??;
    if change.desired_changed {
        state.twin_changed(id).await;
    }
    Ok(twin_response(&change.twin))
}

/// What a twin change would do (`PATCH …/twin?dry_run=true`).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TwinDryRun {
    /// Always `true`.
    dry_run: bool,
    /// The twin as it would be.
    twin: TwinDto,
    /// The change of the effective desired document, as a merge patch (`{}`: none).
    #[schema(value_type = Object)]
    desired_changes: Value,
    /// The change of the tags section, as a merge patch.
    #[schema(value_type = Object)]
    tags_changes: Value,
}

/// The answer of `PATCH …/twin`: the twin, or with `?dry_run=true` what the change would do.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
#[expect(dead_code, reason = "documents the response in OpenAPI; handlers build its variants")]
pub(crate) enum TwinPatchResponse {
    /// The changed twin.
    Twin(TwinDto),
    /// The dry run.
    DryRun(TwinDryRun),
}

/// Applies `update` to a copy of the twin with the device's current layers, writing nothing.
async fn twin_dry_run(
    state: &AppState,
    id: &domain::DeviceId,
    update: &TwinUpdate,
    m: &domain::Mutation,
) -> Result<Response, ApiError> {
    let store = state.store();
    let device = store.device(id).await?.ok_or_else(|| ApiError::DeviceNotFound(id.to_string()))?;
    let before =
        store.device_twin(id).await?.ok_or_else(|| ApiError::DeviceNotFound(id.to_string()))?;
    let layers = store.desired_layers(&device).await?;
    let mut after = before.clone();
    store::plan_update(&mut after, &layers, update, state.twin_policy(), m)?;
    Ok(Json(TwinDryRun {
        dry_run: true,
        twin: TwinDto::from(&after),
        desired_changes: Value::Object(domain::twin::diff(
            &before.desired.document,
            &after.desired.document,
        )),
        tags_changes: Value::Object(domain::twin::diff(
            &before.tags.document,
            &after.tags.document,
        )),
    })
    .into_response())
}

/// One change of a twin section.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = TwinHistoryEntry)]
pub(crate) struct HistoryEntryDto {
    /// Per device, growing with every change.
    seq: u64,
    /// `desired` (the effective document), `reported` or `tags`.
    #[schema(example = "desired")]
    section: &'static str,
    /// The section's version after the change.
    version: u64,
    /// When (RFC 3339).
    at: String,
    /// Who: `token:<id> (<name>)`, `device:<id>` or `replacement:<old device id>`.
    actor: String,
    /// The change, as a JSON merge patch.
    #[schema(value_type = Object)]
    patch: Value,
}

impl From<&TwinHistoryEntry> for HistoryEntryDto {
    fn from(e: &TwinHistoryEntry) -> Self {
        Self {
            seq: e.seq,
            section: e.section.as_str(),
            version: e.version,
            at: e.at.to_rfc3339(),
            actor: e.actor.clone(),
            patch: e.patch.clone(),
        }
    }
}

/// One page of a twin's history, newest first.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = TwinHistoryPage)]
pub(crate) struct HistoryPage {
    /// The entries, newest first.
    items: Vec<HistoryEntryDto>,
    /// Pass as `cursor` for the next (older) page; `null` on the last page.
    next_cursor: Option<String>,
}

/// Query parameters of a twin's history.
#[derive(Debug, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct HistoryParams {
    /// Only changes of this section: `desired`, `reported` or `tags`.
    section: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

impl HistoryParams {
    fn parse(query: &RawQuery) -> Result<Self, ApiError> {
        let (mut section, mut cursor, mut limit) = (None, None, None);
        for (key, value) in query.pairs() {
            match key.as_str() {
                "section" => set_once(&mut section, &key, value)?,
                "cursor" => set_once(&mut cursor, &key, value)?,
                "limit" => set_once(&mut limit, &key, value)?,
                _ => return Err(unknown_parameter(&key, &["section", "cursor", "limit"])),
            }
        }
        let limit = Some(parse_limit(limit.as_deref(), DEFAULT_HISTORY_LIMIT)?);
        Ok(Self { section, cursor, limit })
    }

    fn query(&self) -> Result<TwinHistoryQuery, ApiError> {
        let section = self
            .section
            .as_deref()
            .map(|s| SectionName::parse(s).map_err(|e| ApiError::InvalidQuery(e.to_string())))
            .transpose()?;
        let before = self
            .cursor
            .as_deref()
            .map(|c| {
                c.strip_prefix('h')
                    .and_then(|n| n.parse::<u64>().ok())
                    .ok_or(ApiError::InvalidCursor)
            })
            .transpose()?;
        let limit = page_limit(self.limit.unwrap_or(DEFAULT_HISTORY_LIMIT));
        Ok(TwinHistoryQuery { section, before, limit })
    }
}

/// Read a device twin's history, newest first.
///
/// Every change of the effective desired state, the reported state and the tags, with who made
/// it and the change as a merge patch. Only the newest `twin.history_per_device` entries of a
/// device are kept.
#[utoipa::path(
    get,
    path = "/api/v1/devices/{id}/twin/history",
    tag = "twins",
    params(("id" = String, Path, description = "Device id"), HistoryParams),
    security(("bearer" = ["viewer"])),
    responses(
        (status = 200, description = "One page of changes", body = HistoryPage),
        (status = 400, description = "`invalid_query`, `invalid_cursor`, `invalid_device_id`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`device_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`: limit out of range", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn twin_history(
    _caller: Caller<Viewer>,
    State(state): State<AppState>,
    DevicePath(id): DevicePath,
    query: RawQuery,
) -> Result<Json<HistoryPage>, ApiError> {
    let q = HistoryParams::parse(&query)?.query()?;
    if state.store().device(&id).await?.is_none() {
        return Err(ApiError::DeviceNotFound(id.to_string()));
    }
    let page = state.store().twin_history(&id, &q).await?;
    let next_cursor = match page.items.last() {
        Some(last) if page.has_more => Some(format!("h{}", last.seq)),
        _ => None,
    };
    Ok(Json(HistoryPage {
        items: page.items.iter().map(HistoryEntryDto::from).collect(),
        next_cursor,
    }))
}
