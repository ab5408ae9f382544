//! `/api/v1/config-profiles`: configuration profiles, named fragments of desired configuration
//! attached to the whole fleet or to one group, merged under each device's own desired layer
//! (see `domain::profile`); and `GET /api/v1/devices/{id}/twin/effective`, a device's effective
//! desired document computed now from its layers, with where each property comes from.
//!
//! A committed profile change puts the devices it reaches on the store's durable recompute queue
//! in its own transaction; the handler then wakes the server's recompute task
//! ([`AppState::with_recompute_wake`]), which recomputes their twins and pushes the new desired
//! documents to them. `?dry_run=true` on create, change and delete writes nothing and answers
//! with the profile as it would be, the devices its target reaches (the jobs' dry-run preview)
//! and the change of its document as a merge patch.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use domain::twin::{self, Document, Layer, LayerSource};
use domain::{
    ConfigProfile, GroupName, NewProfile, ProfileName, ProfilePatch, ProfileTarget, SectionName,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use store::{ProfileQuery, StoreError};
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::{Caller, Operator, Viewer};
use crate::error::{ApiError, Problem};
use crate::extract::{
    DevicePath, IfMatch, JsonBody, RawQuery, bool_param, dry_run_param, etag, parse_limit,
    path_params, set_once, unknown_parameter,
};
use crate::jobs::{PREVIEW_SAMPLE, PreviewDto};
use crate::paging::page_limit;
use crate::twins::present;

/// Longest profile description, in characters.
const MAX_DESCRIPTION_CHARS: usize = 1024;
/// How often a change without `If-Match` is retried when another change of the same profile
/// slipped in between the limit check and the write.
const UPDATE_ATTEMPTS: u32 = 3;

/// A configuration profile as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = ConfigProfile)]
pub(crate) struct ProfileDto {
    /// Unique name: 1–64 characters of `[A-Za-z0-9._-]`.
    #[schema(example = "base")]
    name: String,
    /// Free text.
    description: String,
    /// `fleet` (every device) or `group:<name>` (the members of a static group, the matches of
    /// a dynamic one).
    #[schema(example = "group:hot")]
    target: String,
    /// Among profiles of the same kind (fleet, group) a higher priority is merged later and
    /// wins; group profiles always win over fleet profiles, the device's own layer over both.
    priority: i32,
    /// The desired configuration it contributes, merged as a JSON merge patch (`null` removes
    /// what a lower layer set).
    #[schema(value_type = Object)]
    document: Value,
    /// RFC 3339.
    created_at: String,
    /// RFC 3339.
    updated_at: String,
    /// From 1, incremented on every change; the `ETag` is this number in quotes.
    version: u64,
}

impl From<&ConfigProfile> for ProfileDto {
    fn from(p: &ConfigProfile) -> Self {
        Self {
            name: p.name.to_string(),
            description: p.description.clone(),
            target: p.target.to_string(),
            priority: p.priority,
            document: Value::Object(p.document.clone()),
            created_at: p.created_at.to_rfc3339(),
            updated_at: p.updated_at.to_rfc3339(),
            version: p.version,
        }
    }
}

/// One page of profiles.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = ConfigProfilePage)]
pub(crate) struct ProfilePage {
    /// The profiles, ordered by name.
    items: Vec<ProfileDto>,
    /// Pass as `after` to get the next page (the last name on this one); `null` on the last page.
    next_after: Option<String>,
}

/// The body of `POST /api/v1/config-profiles`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = CreateConfigProfile)]
pub(crate) struct CreateProfile {
    /// Unique name: 1–64 characters of `[A-Za-z0-9._-]`.
    #[schema(example = "base")]
    name: String,
    /// Free text, at most 1024 characters (default empty).
    description: Option<String>,
    /// `fleet` or `group:<name>` (the group must exist).
    #[schema(example = "fleet")]
    target: String,
    /// -1,000,000 to 1,000,000 (default 0).
    priority: Option<i64>,
    /// A JSON object, within the twin limits (`twin.max_section_bytes`, `twin.max_depth`).
    #[schema(value_type = Object)]
    document: Map<String, Value>,
}

/// The body of `PATCH /api/v1/config-profiles/{name}`: the fields present change.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = UpdateConfigProfile)]
pub(crate) struct UpdateProfile {
    /// New description.
    description: Option<String>,
    /// New target: `fleet` or `group:<name>`.
    target: Option<String>,
    /// New priority.
    priority: Option<i64>,
    /// A JSON merge patch (RFC 7396) of the document: `null` deletes a property.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Object>)]
    document: Option<Value>,
}

/// What a profile change would do: `?dry_run=true` on create, change or delete.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = ConfigProfileDryRun)]
pub(crate) struct ProfileDryRun {
    /// Always `true`: nothing was written.
    dry_run: bool,
    /// The profile as it would be (for a delete: as it is).
    profile: ProfileDto,
    /// The devices its target reaches (after the change), as a job's dry run shows them.
    affected: PreviewDto,
    /// The devices the old target reached, when a change moves the profile to another target.
    #[serde(skip_serializing_if = "Option::is_none")]
    previously_affected: Option<PreviewDto>,
    /// The merge patch from the old document to the new one (a create: from `{}`; a delete: to
    /// `{}`).
    #[schema(value_type = Object)]
    document_changes: Value,
}

/// `PATCH` answers: the changed profile, or a dry run.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
#[expect(dead_code, reason = "documents the response in OpenAPI; handlers build its variants")]
pub(crate) enum ProfileChange {
    /// The changed profile.
    Changed(ProfileDto),
    /// `?dry_run=true`.
    DryRun(Box<ProfileDryRun>),
}

/// A profile name taken from the path (`{name}`): a name no profile can have is 404
/// `config_profile_not_found`.
#[derive(Debug, Clone)]
pub(crate) struct ProfilePath(pub(crate) ProfileName);

impl<S: Send + Sync> FromRequestParts<S> for ProfilePath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let raw: String = path_params(parts, state).await?.map_err(ApiError::ProfileNotFound)?;
        ProfileName::new(raw.clone()).map(Self).map_err(|_| ApiError::ProfileNotFound(raw))
    }
}

/// Parses a profile target: `fleet` or `group:<name>`.
fn parse_target(raw: &str) -> Result<ProfileTarget, ApiError> {
    if raw == "fleet" {
        return Ok(ProfileTarget::Fleet);
    }
    match raw.strip_prefix("group:") {
        Some(name) => GroupName::new(name)
            .map(ProfileTarget::Group)
            .map_err(|e| ApiError::ValidationFailed(format!("target {raw:?}: {e}"))),
        None => Err(ApiError::ValidationFailed(format!(
            "target must be \"fleet\" or \"group:<name>\", got {raw:?}"
        ))),
    }
}

fn description(raw: String) -> Result<String, ApiError> {
    if raw.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(ApiError::ValidationFailed(format!(
            "description must be at most {MAX_DESCRIPTION_CHARS} characters"
        )));
    }
    Ok(raw)
}

/// Checks a profile's document against the twin limits of the desired section: a profile that
/// could never fit in a twin is refused like a twin change would be (413 `twin_too_large`).
fn check_document(state: &AppState, doc: &Document) -> Result<(), ApiError> {
    twin::check_limits(SectionName::Desired, doc, &state.twin_policy().limits)
        .map_err(|e| ApiError::TwinTooLarge(format!("the profile's document is too large: {e}")))
}

/// 412 when `if_match` names another version than `current` (what the store would answer).
pub(crate) fn check_if_match(if_match: IfMatch, current: u64) -> Result<(), ApiError> {
    match if_match.expected() {
        Some(expected) if expected != current => {
            Err(ApiError::from(StoreError::VersionMismatch { expected, current }))
        }
        _ => Ok(()),
    }
}

fn profile_response(status: StatusCode, profile: &ConfigProfile) -> Response {
    let mut response = (status, Json(ProfileDto::from(profile))).into_response();
    let headers = response.headers_mut();
    if let Ok(v) = etag(profile.version).parse() {
        headers.insert(header::ETAG, v);
    }
    if status == StatusCode::CREATED
        && let Ok(v) = format!("/api/v1/config-profiles/{}", profile.name).parse()
    {
        headers.insert(header::LOCATION, v);
    }
    response
}

async fn existing_profile(state: &AppState, name: &ProfileName) -> Result<ConfigProfile, ApiError> {
    state.store().profile(name).await?.ok_or_else(|| ApiError::ProfileNotFound(name.to_string()))
}

async fn preview(state: &AppState, target: &ProfileTarget) -> Result<PreviewDto, ApiError> {
    Ok(PreviewDto::from(state.store().preview_profile_target(target, PREVIEW_SAMPLE).await?))
}

fn dry_run_response(
    profile: &ConfigProfile,
    affected: PreviewDto,
    previously_affected: Option<PreviewDto>,
    before: &Document,
    after: &Document,
) -> Response {
    Json(ProfileDryRun {
        dry_run: true,
        profile: ProfileDto::from(profile),
        affected,
        previously_affected,
        document_changes: Value::Object(twin::diff(before, after)),
    })
    .into_response()
}

/// Create a configuration profile; with `?dry_run=true`, preview it instead.
///
/// The devices its target reaches are queued for a recompute of their effective desired state
/// in the same transaction, and the server pushes them the result. Audited as
/// `config_profile.create`.
#[utoipa::path(
    post,
    path = "/api/v1/config-profiles",
    tag = "profiles",
    params(("dry_run" = Option<bool>, Query, description = "`true`: answer with what the profile would reach (200) and create nothing")),
    request_body = CreateProfile,
    security(("bearer" = ["operator"])),
    responses(
        (status = 201, description = "Created; `Location` holds its URL, `ETag` its version", body = ProfileDto),
        (status = 200, description = "Dry run: the profile as it would be and the devices it would reach", body = ProfileDryRun),
        (status = 400, description = "Malformed body, `invalid_query`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`group_not_found`: the target group does not exist", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`config_profile_exists`", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "`twin_too_large`: the document is past `twin.max_section_bytes` or `twin.max_depth`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed` (name, target, priority, description)", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn create_profile(
    caller: Caller<Operator>,
    State(state): State<AppState>,
    query: RawQuery,
    JsonBody(body): JsonBody<CreateProfile>,
) -> Result<Response, ApiError> {
    let dry_run = dry_run_param(&query)?;
    let priority = domain::profile::check_priority(body.priority.unwrap_or(0))?;
    let new = NewProfile {
        name: ProfileName::new(body.name)?,
        description: description(body.description.unwrap_or_default())?,
        target: parse_target(&body.target)?,
        priority,
        document: body.document,
    };
    check_document(&state, &new.document)?;
    if dry_run {
        let affected = preview(&state, &new.target).await?;
        if state.store().profile(&new.name).await?.is_some() {
            return Err(ApiError::ProfileExists(new.name.to_string()));
        }
        let now = state.now();
        let profile = ConfigProfile {
            name: new.name,
            description: new.description,
            target: new.target,
            priority: new.priority,
            document: new.document,
            created_at: now,
            updated_at: now,
            version: 1,
        };
        return Ok(dry_run_response(&profile, affected, None, &Document::new(), &profile.document));
    }
    let profile = state.store().create_profile(&new, &state.mutation_by(&caller.token)).await?;
    state.wake_recompute();
    Ok(profile_response(StatusCode::CREATED, &profile))
}

/// List configuration profiles, one page at a time, ordered by name.
#[utoipa::path(
    get,
    path = "/api/v1/config-profiles",
    tag = "profiles",
    params(
        ("target" = Option<String>, Query, description = "Only profiles with this target: `fleet` or `group:<name>`"),
        ("after" = Option<String>, Query, description = "Only profiles whose name sorts after this one: `next_after` of the previous page"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Page size, 1 to 1000 (default from the server's configuration, normally 100)"),
    ),
    security(("bearer" = ["viewer"])),
    responses(
        (status = 200, description = "One page of profiles", body = ProfilePage),
        (status = 400, description = "`invalid_query`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed` (target, after, limit)", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn list_profiles(
    _caller: Caller<Viewer>,
    State(state): State<AppState>,
    query: RawQuery,
) -> Result<Json<ProfilePage>, ApiError> {
    let (mut target, mut after, mut limit) = (None, None, None);
    for (key, value) in query.pairs() {
        match key.as_str() {
            "target" => set_once(&mut target, &key, value)?,
            "after" => set_once(&mut after, &key, value)?,
            "limit" => set_once(&mut limit, &key, value)?,
            _ => return Err(unknown_parameter(&key, &["target", "after", "limit"])),
        }
    }
    let q = ProfileQuery {
        target: target.as_deref().map(parse_target).transpose()?,
        after: after
            .map(|a| {
                ProfileName::new(a)
                    .map_err(|e| ApiError::ValidationFailed(format!("after must be a name: {e}")))
            })
            .transpose()?,
        limit: page_limit(parse_limit(limit.as_deref(), state.config().page_size())?),
    };
    let page = state.store().list_profiles(&q).await?;
    let next_after = match page.items.last() {
        Some(last) if page.has_more => Some(last.name.to_string()),
        _ => None,
    };
    Ok(Json(ProfilePage { items: page.items.iter().map(ProfileDto::from).collect(), next_after }))
}

/// Read one configuration profile.
#[utoipa::path(
    get,
    path = "/api/v1/config-profiles/{name}",
    tag = "profiles",
    params(("name" = String, Path, description = "Profile name")),
    security(("bearer" = ["viewer"])),
    responses(
        (status = 200, description = "The profile; `ETag` holds its version", body = ProfileDto),
        (status = 404, description = "`config_profile_not_found`", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn get_profile(
    _caller: Caller<Viewer>,
    State(state): State<AppState>,
    ProfilePath(name): ProfilePath,
) -> Result<Response, ApiError> {
    let profile = existing_profile(&state, &name).await?;
    Ok(profile_response(StatusCode::OK, &profile))
}

/// Change a configuration profile; with `?dry_run=true`, preview the change instead.
///
/// `description`, `target` and `priority` replace the current ones; `document` is a JSON merge
/// patch of the document (`Content-Type: application/merge-patch+json` or `application/json`).
/// A change that changes nothing keeps the version. The devices of the old and the new target
/// are queued for a recompute. Audited as `config_profile.update`.
#[utoipa::path(
    patch,
    path = "/api/v1/config-profiles/{name}",
    tag = "profiles",
    params(
        ("name" = String, Path, description = "Profile name"),
        ("If-Match" = Option<String>, Header, description = "`\"<version>\"` from the ETag, or `*`"),
        ("dry_run" = Option<bool>, Query, description = "`true`: answer with what the change would do and write nothing"),
    ),
    request_body(content = UpdateProfile, content_type = "application/merge-patch+json"),
    security(("bearer" = ["operator"])),
    responses(
        (status = 200, description = "The changed profile (`ETag` holds its version), or with `?dry_run=true` a `ConfigProfileDryRun`", body = ProfileChange),
        (status = 400, description = "Malformed body, `invalid_patch` (a document patch that is not an object), `invalid_query`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`config_profile_not_found`, `group_not_found` (the new target)", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "`precondition_failed`: the profile changed since", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "`twin_too_large`: the document would be past the twin limits", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed` (target, priority, description)", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn update_profile(
    caller: Caller<Operator>,
    State(state): State<AppState>,
    ProfilePath(name): ProfilePath,
    if_match: IfMatch,
    query: RawQuery,
    JsonBody(body): JsonBody<UpdateProfile>,
) -> Result<Response, ApiError> {
    let dry_run = dry_run_param(&query)?;
    if body.document.as_ref().is_some_and(|d| !d.is_object()) {
        return Err(ApiError::InvalidPatch(
            "the document patch must be a JSON object (a merge patch)".to_owned(),
        ));
    }
    let patch = ProfilePatch {
        description: body.description.map(description).transpose()?,
        target: body.target.as_deref().map(parse_target).transpose()?,
        priority: body.priority.map(domain::profile::check_priority).transpose()?,
        document: body.document,
        expected_version: if_match.expected(),
    };
    if dry_run {
        let current = existing_profile(&state, &name).await?;
        check_if_match(if_match, current.version)?;
        let mut new = patch.apply(&current);
        check_document(&state, &new.document)?;
        let affected = preview(&state, &new.target).await?;
        let previously_affected = if new.target == current.target {
            None
        } else {
            Some(preview(&state, &current.target).await?)
        };
        if new != current {
            new.version = current.version + 1;
            new.updated_at = state.now();
        }
        return Ok(dry_run_response(
            &new,
            affected,
            previously_affected,
            &current.document,
            &new.document,
        ));
    }
    let m = state.mutation_by(&caller.token);
    let mut attempt = 1;
    let profile = loop {
        let mut write = patch.clone();
        if write.document.is_some() {
            // The limits are checked on the merged document; pin the version it was merged
            // with so that a change slipping in between cannot take it past them.
            let current = existing_profile(&state, &name).await?;
            check_if_match(if_match, current.version)?;
            check_document(&state, &patch.apply(&current).document)?;
            write.expected_version = Some(current.version);
        }
        match state.store().update_profile(&name, &write, &m).await {
            Err(StoreError::VersionMismatch { .. })
                if patch.expected_version.is_none() && attempt < UPDATE_ATTEMPTS =>
            {
                attempt += 1;
            }
            result => break result?,
        }
    };
    state.wake_recompute();
    Ok(profile_response(StatusCode::OK, &profile))
}

/// Delete a configuration profile; with `?dry_run=true`, preview the deletion instead.
///
/// The devices it reached are queued for a recompute. Audited as `config_profile.delete`.
#[utoipa::path(
    delete,
    path = "/api/v1/config-profiles/{name}",
    tag = "profiles",
    params(
        ("name" = String, Path, description = "Profile name"),
        ("If-Match" = Option<String>, Header, description = "`\"<version>\"` from the ETag, or `*`"),
        ("dry_run" = Option<bool>, Query, description = "`true`: answer with what the deletion would do and delete nothing"),
    ),
    security(("bearer" = ["operator"])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 200, description = "Dry run: the profile and the devices it reaches", body = ProfileDryRun),
        (status = 400, description = "`invalid_query`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`config_profile_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "`precondition_failed`", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn delete_profile(
    caller: Caller<Operator>,
    State(state): State<AppState>,
    ProfilePath(name): ProfilePath,
    if_match: IfMatch,
    query: RawQuery,
) -> Result<Response, ApiError> {
    if dry_run_param(&query)? {
        let current = existing_profile(&state, &name).await?;
        check_if_match(if_match, current.version)?;
        let affected = preview(&state, &current.target).await?;
        return Ok(dry_run_response(&current, affected, None, &current.document, &Document::new()));
    }
    state
        .store()
        .delete_profile(&name, if_match.expected(), &state.mutation_by(&caller.token))
        .await?;
    state.wake_recompute();
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// One layer of a device's desired configuration.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = DesiredLayer)]
pub(crate) struct LayerDto {
    /// `profile:<name>` or `device` (the device's own layer).
    #[schema(example = "profile:base")]
    source: String,
    /// `profile` or `device`.
    #[schema(example = "profile")]
    kind: &'static str,
    /// The profile's name (profile layers only).
    #[serde(skip_serializing_if = "Option::is_none")]
    profile: Option<String>,
    /// The profile's target, `fleet` or `group:<name>` (profile layers only).
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<String>,
    /// The profile's priority (profile layers only).
    #[serde(skip_serializing_if = "Option::is_none")]
    priority: Option<i32>,
    /// The layer's document, merged as a JSON merge patch over the layers before it.
    #[schema(value_type = Object)]
    document: Value,
}

impl From<&Layer> for LayerDto {
    fn from(l: &Layer) -> Self {
        let (kind, profile, target, priority) = match &l.source {
            LayerSource::Device => ("device", None, None, None),
            LayerSource::Profile { name, target, priority } => {
                ("profile", Some(name.to_string()), Some(target.to_string()), Some(*priority))
            }
            LayerSource::Named(_) => ("other", None, None, None),
        };
        Self {
            source: l.source.to_string(),
            kind,
            profile,
            target,
            priority,
            document: Value::Object(l.document.clone()),
        }
    }
}

/// A device's effective desired document, computed now from its layers.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = EffectiveDesired)]
pub(crate) struct EffectiveDto {
    /// The device.
    device_id: String,
    /// The merge of its layers, lowest first: fleet profiles, group profiles, its own layer.
    #[schema(value_type = Object)]
    desired: Value,
    /// The version of the desired document stored in its twin (what the device was sent).
    stored_version: u64,
    /// Whether the device waits on the recompute queue: a change of its layers is committed and
    /// its stored desired document may not show it yet.
    pending_recompute: bool,
    /// With `?explain=true`: the layers, lowest first.
    #[serde(skip_serializing_if = "Option::is_none")]
    layers: Option<Vec<LayerDto>>,
    /// With `?explain=true`: the JSON Pointer of each leaf property → the `source` of the layer
    /// that set it.
    #[serde(skip_serializing_if = "Option::is_none")]
    sources: Option<BTreeMap<String, String>>,
}

/// A device's layers, lowest first: its profile layers for `device` as given, then its own.
pub(crate) async fn device_layers(
    state: &AppState,
    device: &domain::Device,
    own: &Document,
) -> Result<Vec<Layer>, ApiError> {
    let mut layers = state.store().desired_layers(device).await?;
    layers.push(Layer { source: LayerSource::Device, document: own.clone() });
    Ok(layers)
}

/// The names of the profiles among `layers`.
pub(crate) fn profile_names(layers: &[Layer]) -> Vec<String> {
    layers
        .iter()
        .filter_map(|l| match &l.source {
            LayerSource::Profile { name, .. } => Some(name.to_string()),
            _ => None,
        })
        .collect()
}

/// Read a device's effective desired document, computed now from its layers.
///
/// The fleet profiles, the profiles of the groups the device is in and its own layer, merged
/// lowest first. Normally equal to the twin's stored desired document; while a change of its
/// layers waits on the recompute queue (`pending_recompute`), this shows what it will become.
/// With `?explain=true` the layers and the source of every leaf property are included.
#[utoipa::path(
    get,
    path = "/api/v1/devices/{id}/twin/effective",
    tag = "twins",
    params(
        ("id" = String, Path, description = "Device id"),
        ("explain" = Option<bool>, Query, description = "`true`: include the layers and the source of each property"),
    ),
    security(("bearer" = ["viewer"])),
    responses(
        (status = 200, description = "The effective desired document", body = EffectiveDto),
        (status = 400, description = "`invalid_device_id`, `invalid_query`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`device_not_found`", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn effective_twin(
    _caller: Caller<Viewer>,
    State(state): State<AppState>,
    DevicePath(id): DevicePath,
    query: RawQuery,
) -> Result<Json<EffectiveDto>, ApiError> {
    let mut explain = None;
    for (key, value) in query.pairs() {
        match key.as_str() {
            "explain" => set_once(&mut explain, &key, value)?,
            _ => return Err(unknown_parameter(&key, &["explain"])),
        }
    }
    let explain = bool_param("explain", explain.as_deref())?;
    let not_found = || ApiError::DeviceNotFound(id.to_string());
    let device = state.store().device(&id).await?.ok_or_else(not_found)?;
    let stored = state.store().device_twin(&id).await?.ok_or_else(not_found)?;
    let layers = device_layers(&state, &device, &stored.device_desired.document).await?;
    let effective = twin::effective_desired(&layers);
    let pending_recompute = state.store().recompute_pending(&id).await?;
    Ok(Json(EffectiveDto {
        device_id: id.to_string(),
        desired: Value::Object(effective.document),
        stored_version: stored.desired.version,
        pending_recompute,
        layers: explain.then(|| layers.iter().map(LayerDto::from).collect()),
        sources: explain
            .then(|| effective.sources.iter().map(|(p, s)| (p.clone(), s.to_string())).collect()),
    }))
}
