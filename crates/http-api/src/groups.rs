//! `/api/v1/groups`: static groups (explicit members) and dynamic groups (a saved filter), their
//! members, and the devices in them.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use domain::{DeviceId, Filter, Group, GroupKind, GroupName, GroupPatch, NewGroup};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::{Caller, Operator, Viewer};
use crate::devices::DevicePage;
use crate::error::{ApiError, Problem};
use crate::extract::{GroupPath, JsonBody, MemberPath, RawQuery, device_id};
use crate::paging::{DeviceListParams, PageParams, group_cursor, next_cursor, page_limit};

/// Longest group description, in characters.
const MAX_DESCRIPTION_CHARS: usize = 1024;
/// Most device ids in one `POST …/members`.
const MAX_MEMBERS_PER_REQUEST: usize = 1000;

/// A group as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Group)]
pub(crate) struct GroupDto {
    /// Unique name: 1–64 characters of `[A-Za-z0-9._-]`.
    #[schema(example = "berlin-sensors")]
    name: String,
    /// Free text.
    description: String,
    /// `static`: members are added and removed explicitly; `dynamic`: members are the devices
    /// the filter matches, evaluated at read time.
    kind: GroupKindDto,
    /// The filter of a dynamic group; `null` for a static one.
    #[schema(example = "tags.site = 'berlin'")]
    filter: Option<String>,
    /// When the group was created (RFC 3339).
    created_at: String,
    /// When the group last changed (RFC 3339; membership changes do not count).
    updated_at: String,
    /// Incremented on every change of the group itself.
    version: u64,
}

/// Whether a group's members are explicit or a filter's matches.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = GroupKind)]
pub(crate) enum GroupKindDto {
    /// Explicit members.
    Static,
    /// A saved filter.
    Dynamic,
}

impl From<&Group> for GroupDto {
    fn from(g: &Group) -> Self {
        let (kind, filter) = match &g.kind {
            GroupKind::Static => (GroupKindDto::Static, None),
            GroupKind::Dynamic(f) => (GroupKindDto::Dynamic, Some(f.to_string())),
        };
        Self {
            name: g.name.as_str().to_owned(),
            description: g.description.clone(),
            kind,
            filter,
            created_at: g.created_at.to_rfc3339(),
            updated_at: g.updated_at.to_rfc3339(),
            version: g.version,
        }
    }
}

/// One page of groups.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct GroupPage {
    /// The groups, ordered by name.
    items: Vec<GroupDto>,
    /// Pass as `cursor` to get the next page; `null` on the last page.
    next_cursor: Option<String>,
}

/// The body of `POST /api/v1/groups`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateGroup {
    /// Unique name: 1–64 characters of `[A-Za-z0-9._-]`.
    #[schema(example = "berlin-sensors")]
    name: String,
    /// Free text, at most 1024 characters (default empty).
    description: Option<String>,
    /// A filter expression: present makes the group dynamic, absent static.
    #[schema(example = "tags.site = 'berlin'")]
    filter: Option<String>,
}

/// The body of `PATCH /api/v1/groups/{name}`. A group's kind never changes.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateGroup {
    /// New description.
    description: Option<String>,
    /// New filter (dynamic groups only; 409 `conflict` on a static group).
    filter: Option<String>,
}

/// The body of `POST /api/v1/groups/{name}/members`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AddMembers {
    /// 1 to 1000 device ids; adding a member twice is a no-op.
    device_ids: Vec<String>,
}

fn description(raw: String) -> Result<String, ApiError> {
    if raw.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(ApiError::ValidationFailed(format!(
            "description must be at most {MAX_DESCRIPTION_CHARS} characters"
        )));
    }
    Ok(raw)
}

/// Create a group.
#[utoipa::path(
    post,
    path = "/api/v1/groups",
    tag = "groups",
    request_body = CreateGroup,
    security(("bearer" = ["operator"])),
    responses(
        (status = 201, description = "Created; `Location` holds its URL", body = GroupDto),
        (status = 400, description = "Malformed body or `invalid_filter`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`group_exists`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn create_group(
    caller: Caller<Operator>,
    State(state): State<AppState>,
    JsonBody(body): JsonBody<CreateGroup>,
) -> Result<Response, ApiError> {
    let name = GroupName::new(body.name)?;
    let kind = match body.filter {
        Some(expr) => GroupKind::Dynamic(Filter::parse(&expr)?),
        None => GroupKind::Static,
    };
    let new =
        NewGroup { name, description: description(body.description.unwrap_or_default())?, kind };
    let group = state.store().create_group(&new, &state.mutation_by(&caller.token)).await?;
    let location = format!("/api/v1/groups/{}", group.name);
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(GroupDto::from(&group)))
        .into_response())
}

/// List groups, one page at a time, ordered by name.
#[utoipa::path(
    get,
    path = "/api/v1/groups",
    tag = "groups",
    params(PageParams),
    security(("bearer" = ["viewer"])),
    responses(
        (status = 200, description = "One page of groups", body = GroupPage),
        (status = 400, description = "`invalid_cursor`, `invalid_query`", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn list_groups(
    _caller: Caller<Viewer>,
    State(state): State<AppState>,
    query: RawQuery,
) -> Result<Json<GroupPage>, ApiError> {
    let params = PageParams::parse(&query)?;
    let after = params.cursor.as_deref().map(group_cursor).transpose()?;
    let limit = page_limit(params.limit.unwrap_or(state.config().page_size()));
    let page = state.store().list_groups(after.as_ref(), limit).await?;
    let next_cursor = next_cursor(&page, |g| g.name.as_str());
    Ok(Json(GroupPage { items: page.items.iter().map(GroupDto::from).collect(), next_cursor }))
}

/// Read one group.
#[utoipa::path(
    get,
    path = "/api/v1/groups/{name}",
    tag = "groups",
    params(("name" = String, Path, description = "Group name")),
    security(("bearer" = ["viewer"])),
    responses(
        (status = 200, description = "The group", body = GroupDto),
        (status = 404, description = "`group_not_found`", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn get_group(
    _caller: Caller<Viewer>,
    State(state): State<AppState>,
    GroupPath(name): GroupPath,
) -> Result<Json<GroupDto>, ApiError> {
    let group = existing_group(&state, &name).await?;
    Ok(Json(GroupDto::from(&group)))
}

/// Change a group's description or (dynamic groups) filter.
#[utoipa::path(
    patch,
    path = "/api/v1/groups/{name}",
    tag = "groups",
    params(("name" = String, Path, description = "Group name")),
    request_body = UpdateGroup,
    security(("bearer" = ["operator"])),
    responses(
        (status = 200, description = "The changed group", body = GroupDto),
        (status = 400, description = "Malformed body or `invalid_filter`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`group_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`conflict`: a filter for a static group", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn update_group(
    caller: Caller<Operator>,
    State(state): State<AppState>,
    GroupPath(name): GroupPath,
    JsonBody(body): JsonBody<UpdateGroup>,
) -> Result<Json<GroupDto>, ApiError> {
    let patch = GroupPatch {
        description: body.description.map(description).transpose()?,
        filter: body.filter.as_deref().map(Filter::parse).transpose()?,
    };
    let group =
        state.store().update_group(&name, &patch, &state.mutation_by(&caller.token)).await?;
    // Another filter moves devices into or out of the group and its profiles.
    state.wake_recompute();
    Ok(Json(GroupDto::from(&group)))
}

/// Delete a group (not its devices).
#[utoipa::path(
    delete,
    path = "/api/v1/groups/{name}",
    tag = "groups",
    params(("name" = String, Path, description = "Group name")),
    security(("bearer" = ["operator"])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "`group_not_found`", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn delete_group(
    caller: Caller<Operator>,
    State(state): State<AppState>,
    GroupPath(name): GroupPath,
) -> Result<StatusCode, ApiError> {
    state.store().delete_group(&name, &state.mutation_by(&caller.token)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// List the devices in a group, one page at a time, ordered by id: the members of a static
/// group, the filter's matches for a dynamic one. The query narrows the page further.
#[utoipa::path(
    get,
    path = "/api/v1/groups/{name}/devices",
    tag = "groups",
    params(("name" = String, Path, description = "Group name"), DeviceListParams),
    security(("bearer" = ["viewer"])),
    responses(
        (status = 200, description = "One page of devices", body = DevicePage),
        (status = 400, description = "`invalid_filter`, `invalid_cursor`, `invalid_query`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`group_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed` (state, tag, limit)", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn group_devices(
    _caller: Caller<Viewer>,
    State(state): State<AppState>,
    GroupPath(name): GroupPath,
    query: RawQuery,
) -> Result<Json<DevicePage>, ApiError> {
    let q = DeviceListParams::parse(&query)?.into_query(state.config().page_size())?;
    let page = state.store().group_devices(&name, &q).await?;
    if page.items.is_empty() {
        // An empty page and a missing group look alike to some backends; tell them apart.
        existing_group(&state, &name).await?;
    }
    Ok(Json(page.into()))
}

/// Add devices to a static group.
#[utoipa::path(
    post,
    path = "/api/v1/groups/{name}/members",
    tag = "groups",
    params(("name" = String, Path, description = "Group name")),
    request_body = AddMembers,
    security(("bearer" = ["operator"])),
    responses(
        (status = 204, description = "Added"),
        (status = 400, description = "Malformed body or `invalid_device_id`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`group_not_found` or `device_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`conflict`: the group is dynamic", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`: no ids, or more than 1000", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn add_members(
    caller: Caller<Operator>,
    State(state): State<AppState>,
    GroupPath(name): GroupPath,
    JsonBody(body): JsonBody<AddMembers>,
) -> Result<StatusCode, ApiError> {
    if body.device_ids.is_empty() || body.device_ids.len() > MAX_MEMBERS_PER_REQUEST {
        return Err(ApiError::ValidationFailed(format!(
            "device_ids must hold 1 to {MAX_MEMBERS_PER_REQUEST} ids, got {}",
            body.device_ids.len()
        )));
    }
    let ids = body.device_ids.into_iter().map(device_id).collect::<Result<Vec<DeviceId>, _>>()?;
    state.store().add_group_members(&name, &ids, &state.mutation_by(&caller.token)).await?;
    state.wake_recompute();
    for id in &ids {
        crate::jobs::device_changed(&state, id, false).await;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Remove a device from a static group (removing a non-member is a no-op).
#[utoipa::path(
    delete,
    path = "/api/v1/groups/{name}/members/{device_id}",
    tag = "groups",
    params(
        ("name" = String, Path, description = "Group name"),
        ("device_id" = String, Path, description = "Device id"),
    ),
    security(("bearer" = ["operator"])),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "`invalid_device_id`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`group_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`conflict`: the group is dynamic", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn remove_member(
    caller: Caller<Operator>,
    State(state): State<AppState>,
    MemberPath(name, id): MemberPath,
) -> Result<StatusCode, ApiError> {
    state
        .store()
        .remove_group_members(&name, std::slice::from_ref(&id), &state.mutation_by(&caller.token))
        .await?;
    state.wake_recompute();
    crate::jobs::device_changed(&state, &id, true).await;
    Ok(StatusCode::NO_CONTENT)
}

async fn existing_group(state: &AppState, name: &GroupName) -> Result<Group, ApiError> {
    state.store().group(name).await?.ok_or_else(|| ApiError::GroupNotFound(name.to_string()))
}
