//! `/api/v1/jobs`: fleet jobs (the AWS IoT Jobs model): a command or a desired-state patch rolled
//! out to the devices a target names, at a bounded rate, with retries and abort criteria. The
//! server's job scheduler starts executions and delivers them to devices over MQTT; this module
//! creates, lists and steers jobs, and shows their executions.
//!
//! A job's counters are kept exact by the store in the transaction of every change, so reading a
//! job never scans its executions.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use domain::{
    AbortCriterion, DeviceId, ExecutionState, FailureType, Filter, GroupName, Job, JobAction,
    JobCounters, JobExecution, JobId, JobOperation, JobSpec, JobSpecParts, JobState, JobTarget,
    RetryPolicy, RetryRule, Rollout, Selection, Timestamp,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use store::{StoreError, TargetPreview};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::auth::{Caller, Operator, Viewer};
use crate::error::{ApiError, Problem};
use crate::extract::{
    DevicePath, JsonBody, RawQuery, device_id, dry_run_param, parse_limit, path_params, set_once,
    unknown_parameter,
};
use crate::paging::{device_cursor, next_cursor, page_limit};

/// Rollout rate when the spec gives none: executions started per minute.
pub(crate) const DEFAULT_MAX_PER_MINUTE: u32 = 1000;
/// A command's answer timeout when the spec gives none, in seconds.
pub(crate) const DEFAULT_COMMAND_TIMEOUT_SECS: u32 = 30;
/// Job ids that name the fixed device topics below `devices/{id}/jobs/` and so cannot be used.
const RESERVED_JOB_IDS: [&str; 3] = ["get", "notify", "response"];
/// Device ids in a dry run's sample.
pub(crate) const PREVIEW_SAMPLE: u32 = 20;

/// A job spec, as `POST /api/v1/jobs` takes it and a job shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = JobSpec)]
pub(crate) struct JobSpecDto {
    /// Unique id: 1–64 characters of `[A-Za-z0-9._-]`.
    #[schema(example = "reboot-berlin-2026-11")]
    id: String,
    /// Free text, at most 1024 characters.
    #[serde(default)]
    description: String,
    /// What each device does.
    operation: OperationDto,
    /// Which devices (only devices in service get an execution).
    target: TargetDto,
    /// `snapshot` (default: the target is resolved once) or `continuous` (devices that join the
    /// target later get an execution too; group or filter targets only).
    #[serde(default)]
    selection: SelectionDto,
    /// How fast executions start (default 1000 per minute).
    #[serde(default)]
    rollout: Option<RolloutDto>,
    /// How long a device may stay `in_progress` before the execution is `timed_out`.
    #[serde(default)]
    in_progress_timeout_secs: Option<u32>,
    /// Retries of failed and timed-out executions.
    #[serde(default)]
    retry: Option<RetryDto>,
    /// Abort criteria, checked in order; the first one met aborts the job.
    #[serde(default)]
    abort: Vec<AbortDto>,
}

/// What a job does on each device: exactly one of the two.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
#[schema(as = JobOperation)]
pub(crate) enum OperationDto {
    /// Send the device a command.
    Command(CommandDto),
    /// Merge a JSON merge patch into the device twin's desired section.
    DesiredPatch(JobDesiredPatch),
}

/// A JSON merge patch (RFC 7396): a non-empty object, at most 32 KiB serialized.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(transparent)]
#[schema(value_type = Object)]
pub(crate) struct JobDesiredPatch(Value);

/// A command a job sends.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = JobCommand)]
pub(crate) struct CommandDto {
    /// 1–64 characters of `[A-Za-z0-9_.-/]`.
    #[schema(example = "reboot")]
    name: String,
    /// Any JSON value (default `null`), at most 32 KiB serialized.
    #[serde(default)]
    #[schema(value_type = Object)]
    payload: Value,
    /// How long the device has to answer, in seconds (default 30).
    #[serde(default)]
    timeout_secs: Option<u32>,
}

/// Which devices a job runs on: exactly one of the three.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
#[schema(as = JobTarget)]
pub(crate) enum TargetDto {
    /// These devices (1 to 10,000).
    Devices(Vec<String>),
    /// The members of a group (static or dynamic).
    Group(String),
    /// The devices a filter expression matches.
    Filter(String),
}

/// Snapshot or continuous.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = JobSelection)]
pub(crate) enum SelectionDto {
    /// Resolved once, when the job is created.
    #[default]
    Snapshot,
    /// Devices joining the target later are reached too.
    Continuous,
}

/// A rollout: a constant rate (`max_per_minute`) or an `exponential` one.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = JobRollout)]
pub(crate) struct RolloutDto {
    /// Constant rate: executions started per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_per_minute: Option<u32>,
    /// Exponential rate (instead of `max_per_minute`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exponential: Option<ExponentialDto>,
}

/// An exponential rollout.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = JobExponentialRollout)]
pub(crate) struct ExponentialDto {
    /// Starting rate per minute.
    base_per_minute: u32,
    /// Factor the rate grows by each step (above 1, at most 5).
    increment_factor: f64,
    /// Successes that make one step.
    increase_after_succeeded: u32,
    /// Highest rate per minute.
    max_per_minute: u32,
}

/// Retry rules per failure type.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = JobRetry)]
pub(crate) struct RetryDto {
    /// For `failed` executions.
    #[serde(default)]
    failed: Option<RetryRuleDto>,
    /// For `timed_out` executions.
    #[serde(default)]
    timed_out: Option<RetryRuleDto>,
}

/// One retry rule.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = JobRetryRule)]
pub(crate) struct RetryRuleDto {
    /// Attempts in all (the first included), at most 10.
    max_attempts: u32,
    /// Back-off before the first retry, doubled each retry.
    backoff_base_secs: u32,
    /// Longest back-off.
    backoff_max_secs: u32,
}

/// An abort criterion: abort when at least `threshold_pct` % of the finished executions (once
/// `min_finished` have finished) ended in one of `failure_types`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = JobAbortCriterion)]
pub(crate) struct AbortDto {
    /// `failed`, `rejected`, `timed_out`.
    failure_types: Vec<String>,
    /// Finished executions needed before the criterion is checked.
    min_finished: u64,
    /// Percentage, above 0 and at most 100.
    threshold_pct: f64,
}

/// Executions per state: the job's exact counters.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = JobCounters)]
pub(crate) struct CountersDto {
    queued: u64,
    in_progress: u64,
    succeeded: u64,
    failed: u64,
    rejected: u64,
    timed_out: u64,
    canceled: u64,
    removed: u64,
    /// All executions.
    total: u64,
}

impl From<&JobCounters> for CountersDto {
    fn from(c: &JobCounters) -> Self {
        Self {
            queued: c.queued,
            in_progress: c.in_progress,
            succeeded: c.succeeded,
            failed: c.failed,
            rejected: c.rejected,
            timed_out: c.timed_out,
            canceled: c.canceled,
            removed: c.removed,
            total: c.total(),
        }
    }
}

/// A job as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Job)]
pub(crate) struct JobDto {
    /// The job's id.
    id: String,
    /// `in_progress`, `paused`, `canceled`, `aborted` or `completed`.
    state: String,
    /// The spec, normalized (defaults filled in, device lists sorted).
    spec: JobSpecDto,
    /// Executions per state.
    counters: CountersDto,
    /// Which abort criterion (index into `spec.abort`) aborted the job, if one did.
    aborted_by: Option<usize>,
    /// RFC 3339.
    created_at: String,
    /// RFC 3339.
    updated_at: String,
    /// Incremented on every change of the job's state.
    version: u64,
}

impl From<&Job> for JobDto {
    fn from(j: &Job) -> Self {
        Self {
            id: j.id().to_string(),
            state: j.state.as_str().to_owned(),
            spec: JobSpecDto::from(&j.spec),
            counters: CountersDto::from(&j.counters),
            aborted_by: j.aborted_by,
            created_at: j.created_at.to_rfc3339(),
            updated_at: j.updated_at.to_rfc3339(),
            version: j.version,
        }
    }
}

/// One page of jobs.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct JobPage {
    /// The jobs, ordered by id.
    items: Vec<JobDto>,
    /// Pass as `cursor` to get the next page; `null` on the last page.
    next_cursor: Option<String>,
}

/// One device's execution of a job.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = JobExecution)]
pub(crate) struct ExecutionDto {
    job_id: String,
    device_id: String,
    /// `queued`, `in_progress`, `succeeded`, `failed`, `rejected`, `timed_out`, `canceled`,
    /// `removed`.
    state: String,
    /// From 1; grows with each retry.
    attempt: u32,
    /// A queued execution does not start before this (RFC 3339).
    not_before: String,
    started_at: Option<String>,
    timeout_at: Option<String>,
    created_at: String,
    updated_at: String,
    /// Incremented on every change.
    version: u64,
    /// What the device last reported.
    #[schema(value_type = Object)]
    status_details: Value,
}

impl From<&JobExecution> for ExecutionDto {
    fn from(e: &JobExecution) -> Self {
        Self {
            job_id: e.job_id.to_string(),
            device_id: e.device_id.to_string(),
            state: e.state.as_str().to_owned(),
            attempt: e.attempt,
            not_before: e.not_before.to_rfc3339(),
            started_at: e.started_at.map(Timestamp::to_rfc3339),
            timeout_at: e.timeout_at.map(Timestamp::to_rfc3339),
            created_at: e.created_at.to_rfc3339(),
            updated_at: e.updated_at.to_rfc3339(),
            version: e.version,
            status_details: e.status_details.to_json(),
        }
    }
}

/// One page of executions.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ExecutionPage {
    /// The executions, ordered by device id.
    items: Vec<ExecutionDto>,
    /// Pass as `cursor` to get the next page; `null` on the last page.
    next_cursor: Option<String>,
}

/// A device's executions.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeviceExecutions {
    /// Oldest job first (at most 1000).
    items: Vec<ExecutionDto>,
}

/// Devices per group in a dry run.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct GroupCount {
    group: String,
    devices: u64,
}

/// What a job would touch: `POST /api/v1/jobs?dry_run=true`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = JobTargetPreview)]
pub(crate) struct PreviewDto {
    /// Devices that would get an execution.
    total: u64,
    /// Devices per lifecycle state.
    by_state: BTreeMap<String, u64>,
    /// Devices per group, largest first (at most 20).
    by_group: Vec<GroupCount>,
    /// Whether `by_group` is incomplete.
    groups_truncated: bool,
    /// Connected now.
    online: u64,
    /// Not connected now.
    offline: u64,
    /// The first device ids, in id order.
    sample: Vec<String>,
}

impl From<TargetPreview> for PreviewDto {
    fn from(p: TargetPreview) -> Self {
        Self {
            total: p.total,
            by_state: p.by_state.iter().map(|(s, n)| (s.as_str().to_owned(), *n)).collect(),
            by_group: p
                .by_group
                .iter()
                .map(|(g, n)| GroupCount { group: g.to_string(), devices: *n })
                .collect(),
            groups_truncated: p.groups_truncated,
            online: p.online,
            offline: p.offline,
            sample: p.sample.iter().map(ToString::to_string).collect(),
        }
    }
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::InvalidJobSpec(message.into())
}

impl JobSpecDto {
    /// The validated spec.
    fn into_spec(self) -> Result<JobSpec, ApiError> {
        if RESERVED_JOB_IDS.contains(&self.id.as_str()) {
            return Err(invalid(format!(
                "job id {:?} is reserved (it names a device topic); choose another",
                self.id
            )));
        }
        let id = JobId::new(self.id).map_err(|e| invalid(e.to_string()))?;
        let operation = match self.operation {
            OperationDto::Command(c) => JobOperation::Command {
                name: c.name,
                payload: c.payload,
                timeout_secs: c.timeout_secs.unwrap_or(DEFAULT_COMMAND_TIMEOUT_SECS),
            },
            OperationDto::DesiredPatch(JobDesiredPatch(patch)) => {
                JobOperation::DesiredPatch { patch }
            }
        };
        let target = match self.target {
            TargetDto::Devices(ids) => JobTarget::Devices(
                ids.into_iter().map(device_id).collect::<Result<Vec<DeviceId>, _>>()?,
            ),
            TargetDto::Group(g) => {
                JobTarget::Group(GroupName::new(g.clone()).map_err(|_| ApiError::GroupNotFound(g))?)
            }
            TargetDto::Filter(f) => JobTarget::Filter(Filter::parse(&f)?),
        };
        let rollout = match self.rollout {
            None => Rollout::Constant { max_per_minute: DEFAULT_MAX_PER_MINUTE },
            Some(RolloutDto { max_per_minute: Some(m), exponential: None }) => {
                Rollout::Constant { max_per_minute: m }
            }
            Some(RolloutDto { max_per_minute: None, exponential: Some(e) }) => {
                Rollout::Exponential {
                    base_per_minute: e.base_per_minute,
                    increment_factor: e.increment_factor,
                    increase_after_succeeded: e.increase_after_succeeded,
                    max_per_minute: e.max_per_minute,
                }
            }
            Some(_) => {
                return Err(invalid("rollout: give exactly one of max_per_minute and exponential"));
            }
        };
        let rule = |r: Option<RetryRuleDto>| {
            r.map(|r| RetryRule {
                max_attempts: r.max_attempts,
                backoff_base_secs: r.backoff_base_secs,
                backoff_max_secs: r.backoff_max_secs,
            })
        };
        let retry = self.retry.unwrap_or_default();
        let retry = RetryPolicy { failed: rule(retry.failed), timed_out: rule(retry.timed_out) };
        let mut abort = Vec::with_capacity(self.abort.len());
        for (index, a) in self.abort.into_iter().enumerate() {
            let failure_types = a
                .failure_types
                .iter()
                .map(|t| {
                    FailureType::parse(t)
                        .map_err(|e| invalid(format!("abort criterion {index}: {e}")))
                })
                .collect::<Result<BTreeSet<_>, _>>()?;
            abort.push(AbortCriterion {
                failure_types,
                min_finished: a.min_finished,
                threshold_pct: a.threshold_pct,
            });
        }
        JobSpec::new(JobSpecParts {
            id,
            description: self.description,
            operation,
            target,
            selection: match self.selection {
                SelectionDto::Snapshot => Selection::Snapshot,
                SelectionDto::Continuous => Selection::Continuous,
            },
            rollout,
            in_progress_timeout_secs: self.in_progress_timeout_secs,
            retry,
            abort,
        })
        .map_err(|e| invalid(e.to_string()))
    }
}

impl From<&JobSpec> for JobSpecDto {
    fn from(spec: &JobSpec) -> Self {
        let p = spec.parts();
        let rule = |r: Option<RetryRule>| {
            r.map(|r| RetryRuleDto {
                max_attempts: r.max_attempts,
                backoff_base_secs: r.backoff_base_secs,
                backoff_max_secs: r.backoff_max_secs,
            })
        };
        Self {
            id: p.id.to_string(),
            description: p.description.clone(),
            operation: match &p.operation {
                JobOperation::Command { name, payload, timeout_secs } => {
                    OperationDto::Command(CommandDto {
                        name: name.clone(),
                        payload: payload.clone(),
                        timeout_secs: Some(*timeout_secs),
                    })
                }
                JobOperation::DesiredPatch { patch } => {
                    OperationDto::DesiredPatch(JobDesiredPatch(patch.clone()))
                }
            },
            target: match &p.target {
                JobTarget::Devices(ids) => {
                    TargetDto::Devices(ids.iter().map(ToString::to_string).collect())
                }
                JobTarget::Group(g) => TargetDto::Group(g.to_string()),
                JobTarget::Filter(f) => TargetDto::Filter(f.to_string()),
            },
            selection: match p.selection {
                Selection::Snapshot => SelectionDto::Snapshot,
                Selection::Continuous => SelectionDto::Continuous,
            },
            rollout: Some(match p.rollout {
                Rollout::Constant { max_per_minute } => {
                    RolloutDto { max_per_minute: Some(max_per_minute), exponential: None }
                }
                Rollout::Exponential {
                    base_per_minute,
                    increment_factor,
                    increase_after_succeeded,
                    max_per_minute,
                } => RolloutDto {
                    max_per_minute: None,
                    exponential: Some(ExponentialDto {
                        base_per_minute,
                        increment_factor,
                        increase_after_succeeded,
                        max_per_minute,
                    }),
                },
            }),
            in_progress_timeout_secs: p.in_progress_timeout_secs,
            retry: Some(RetryDto {
                failed: rule(p.retry.failed),
                timed_out: rule(p.retry.timed_out),
            }),
            abort: p
                .abort
                .iter()
                .map(|a| AbortDto {
                    failure_types: a.failure_types.iter().map(|t| t.as_str().to_owned()).collect(),
                    min_finished: a.min_finished,
                    threshold_pct: a.threshold_pct,
                })
                .collect(),
        }
    }
}

/// A job id taken from the path (`{id}`): an id no job can have is 404 `job_not_found`.
#[derive(Debug, Clone)]
pub(crate) struct JobPath(pub(crate) JobId);

impl<S: Send + Sync> FromRequestParts<S> for JobPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let raw: String = path_params(parts, state).await?.map_err(ApiError::JobNotFound)?;
        JobId::new(raw.clone()).map(Self).map_err(|_| ApiError::JobNotFound(raw))
    }
}

/// Store errors of job calls: an illegal action is `illegal_job_transition`.
fn job_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Conflict(message) => ApiError::IllegalJobTransition(message),
        e => ApiError::from(e),
    }
}

/// Query parameters of `POST /api/v1/jobs`.
#[derive(Debug, Default, IntoParams)]
#[into_params(parameter_in = Query)]
#[expect(dead_code, reason = "documents the query in OpenAPI; the handler parses it by hand")]
pub(crate) struct CreateParams {
    /// `true`: answer with what the job would touch (200) and create nothing.
    dry_run: Option<bool>,
}

/// Create a job; with `?dry_run=true`, preview its target instead.
#[utoipa::path(
    post,
    path = "/api/v1/jobs",
    tag = "jobs",
    params(CreateParams),
    request_body = JobSpecDto,
    security(("bearer" = ["operator"])),
    responses(
        (status = 201, description = "Created; `Location` holds its URL", body = JobDto),
        (status = 200, description = "Dry run: what the job would touch", body = PreviewDto),
        (status = 400, description = "Malformed body, `invalid_filter`, `invalid_device_id`, `invalid_query`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`group_not_found`, `device_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`job_exists`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`invalid_job_spec`", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn create_job(
    caller: Caller<Operator>,
    State(state): State<AppState>,
    query: RawQuery,
    JsonBody(body): JsonBody<JobSpecDto>,
) -> Result<Response, ApiError> {
    let dry_run = dry_run_param(&query)?;
    let spec = body.into_spec()?;
    if dry_run {
        let preview = state.store().preview_target(spec.target(), PREVIEW_SAMPLE).await?;
        return Ok(Json(PreviewDto::from(preview)).into_response());
    }
    let job = state.store().create_job(&spec, &state.mutation_by(&caller.token)).await?;
    let location = format!("/api/v1/jobs/{}", job.id());
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(JobDto::from(&job)))
        .into_response())
}

/// Query parameters of job and execution lists.
#[derive(Debug, Default, IntoParams)]
#[into_params(parameter_in = Query)]
#[expect(dead_code, reason = "documents the query in OpenAPI; the handler parses it by hand")]
pub(crate) struct StateListParams {
    /// Only those in this state.
    state: Option<String>,
    /// Page size, 1 to 1000 (default from the server's configuration, normally 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// The raw `state`, `limit` and `cursor` of a list query.
fn list_params(
    query: &RawQuery,
    default_limit: u32,
) -> Result<(Option<String>, u32, Option<String>), ApiError> {
    let (mut st, mut limit, mut cursor) = (None, None, None);
    for (key, value) in query.pairs() {
        match key.as_str() {
            "state" => set_once(&mut st, &key, value)?,
            "limit" => set_once(&mut limit, &key, value)?,
            "cursor" => set_once(&mut cursor, &key, value)?,
            _ => return Err(unknown_parameter(&key, &["state", "limit", "cursor"])),
        }
    }
    Ok((st, parse_limit(limit.as_deref(), default_limit)?, cursor))
}

/// List jobs, one page at a time, ordered by id.
#[utoipa::path(
    get,
    path = "/api/v1/jobs",
    tag = "jobs",
    params(StateListParams),
    security(("bearer" = ["viewer"])),
    responses(
        (status = 200, description = "One page of jobs", body = JobPage),
        (status = 400, description = "`invalid_cursor`, `invalid_query`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed` (state, limit)", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn list_jobs(
    _caller: Caller<Viewer>,
    State(state): State<AppState>,
    query: RawQuery,
) -> Result<Json<JobPage>, ApiError> {
    let (st, limit, cursor) = list_params(&query, state.config().page_size())?;
    let st = st.as_deref().map(JobState::parse).transpose()?;
    let after = cursor
        .as_deref()
        .map(|c| {
            // Job ids and device ids share the cursor form; a job cursor holds a job id.
            let raw = device_cursor(c)?;
            JobId::new(raw.as_str()).map_err(|_| ApiError::InvalidCursor)
        })
        .transpose()?;
    let page = state.store().list_jobs(st, after.as_ref(), page_limit(limit)).await?;
    let next_cursor = next_cursor(&page, |j| j.id().as_str());
    Ok(Json(JobPage { items: page.items.iter().map(JobDto::from).collect(), next_cursor }))
}

/// Read one job with its counters (never a scan of its executions).
#[utoipa::path(
    get,
    path = "/api/v1/jobs/{id}",
    tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    security(("bearer" = ["viewer"])),
    responses(
        (status = 200, description = "The job", body = JobDto),
        (status = 404, description = "`job_not_found`", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn get_job(
    _caller: Caller<Viewer>,
    State(state): State<AppState>,
    JobPath(id): JobPath,
) -> Result<Json<JobDto>, ApiError> {
    let job = state.store().job(&id).await?.ok_or_else(|| ApiError::JobNotFound(id.to_string()))?;
    Ok(Json(JobDto::from(&job)))
}

/// List a job's executions, one page at a time, ordered by device id.
#[utoipa::path(
    get,
    path = "/api/v1/jobs/{id}/executions",
    tag = "jobs",
    params(("id" = String, Path, description = "Job id"), StateListParams),
    security(("bearer" = ["viewer"])),
    responses(
        (status = 200, description = "One page of executions", body = ExecutionPage),
        (status = 400, description = "`invalid_cursor`, `invalid_query`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`job_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed` (state, limit)", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn job_executions(
    _caller: Caller<Viewer>,
    State(state): State<AppState>,
    JobPath(id): JobPath,
    query: RawQuery,
) -> Result<Json<ExecutionPage>, ApiError> {
    let (st, limit, cursor) = list_params(&query, state.config().page_size())?;
    let st = st.as_deref().map(ExecutionState::parse).transpose()?;
    let after = cursor.as_deref().map(device_cursor).transpose()?;
    let page = state.store().job_executions(&id, st, after.as_ref(), page_limit(limit)).await?;
    let next_cursor = next_cursor(&page, |e| e.device_id.as_str());
    Ok(Json(ExecutionPage {
        items: page.items.iter().map(ExecutionDto::from).collect(),
        next_cursor,
    }))
}

async fn act(
    state: &AppState,
    caller: &Caller<Operator>,
    id: &JobId,
    action: JobAction,
) -> Result<Json<JobDto>, ApiError> {
    let job = state
        .store()
        .set_job_state(id, action, &state.mutation_by(&caller.token))
        .await
        .map_err(job_error)?;
    Ok(Json(JobDto::from(&job)))
}

/// Pause a job: no execution starts until it is resumed; running ones may finish.
#[utoipa::path(
    post,
    path = "/api/v1/jobs/{id}/pause",
    tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    security(("bearer" = ["operator"])),
    responses(
        (status = 200, description = "The job", body = JobDto),
        (status = 404, description = "`job_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`illegal_job_transition`", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn pause_job(
    caller: Caller<Operator>,
    State(state): State<AppState>,
    JobPath(id): JobPath,
) -> Result<Json<JobDto>, ApiError> {
    act(&state, &caller, &id, JobAction::Pause).await
}

/// Resume a paused job.
#[utoipa::path(
    post,
    path = "/api/v1/jobs/{id}/resume",
    tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    security(("bearer" = ["operator"])),
    responses(
        (status = 200, description = "The job", body = JobDto),
        (status = 404, description = "`job_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`illegal_job_transition`", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn resume_job(
    caller: Caller<Operator>,
    State(state): State<AppState>,
    JobPath(id): JobPath,
) -> Result<Json<JobDto>, ApiError> {
    act(&state, &caller, &id, JobAction::Resume).await
}

/// Cancel a job: its queued executions are canceled; executions in progress may still finish.
#[utoipa::path(
    post,
    path = "/api/v1/jobs/{id}/cancel",
    tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    security(("bearer" = ["operator"])),
    responses(
        (status = 200, description = "The job", body = JobDto),
        (status = 404, description = "`job_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`illegal_job_transition`", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn cancel_job(
    caller: Caller<Operator>,
    State(state): State<AppState>,
    JobPath(id): JobPath,
) -> Result<Json<JobDto>, ApiError> {
    act(&state, &caller, &id, JobAction::Cancel).await
}

/// A device's job executions, oldest job first (`?pending=true`: queued and in progress only).
#[utoipa::path(
    get,
    path = "/api/v1/devices/{id}/jobs",
    tag = "jobs",
    params(
        ("id" = String, Path, description = "Device id"),
        ("pending" = Option<bool>, Query, description = "Only queued and in-progress executions"),
    ),
    security(("bearer" = ["viewer"])),
    responses(
        (status = 200, description = "The device's executions", body = DeviceExecutions),
        (status = 400, description = "`invalid_device_id`, `invalid_query`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`device_not_found`", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn device_jobs(
    _caller: Caller<Viewer>,
    State(state): State<AppState>,
    DevicePath(id): DevicePath,
    query: RawQuery,
) -> Result<Json<DeviceExecutions>, ApiError> {
    let mut pending = None;
    for (key, value) in query.pairs() {
        match key.as_str() {
            "pending" => set_once(&mut pending, &key, value)?,
            _ => return Err(unknown_parameter(&key, &["pending"])),
        }
    }
    let pending = match pending.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::InvalidQuery(format!(
                "pending must be true or false, got {other:?}"
            )));
        }
    };
    if state.store().device(&id).await?.is_none() {
        return Err(ApiError::DeviceNotFound(id.to_string()));
    }
    let items = state.store().device_job_executions(&id, pending).await?;
    Ok(Json(DeviceExecutions { items: items.iter().map(ExecutionDto::from).collect() }))
}

/// After a device was created or changed (tags, state, group membership): gives it executions of
/// the continuous jobs whose target it joined, and removes what it no longer belongs to. Best
/// effort for low latency: the scheduler's periodic sync reaches joined devices anyway.
pub(crate) async fn device_changed(state: &AppState, id: &DeviceId, left: bool) {
    let now = state.now();
    if left && let Err(e) = state.store().remove_job_executions_for(id, now).await {
        tracing::warn!(device = %id, error = %e, "could not remove job executions of a device");
    }
    if let Err(e) = state.store().add_job_executions_for(id, now).await {
        tracing::warn!(device = %id, error = %e, "could not add job executions for a device");
    }
}
