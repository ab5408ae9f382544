//! The inputs and outputs of the fleet job calls of [`crate::Store`], and the rules both backends
//! apply inside their transactions, so they behave alike:
//!
//! - [`spec_to_json`] / [`spec_from_json`]: the stored form of a [`JobSpec`] (a row shape, not an
//!   API contract);
//! - [`job_summary`]: a job's audit summary;
//! - [`plan_execution_update`]: what one execution update does (transition check, retry, counters,
//!   abort criterion), given the job and the execution as read in the transaction;
//! - [`settle`]: the job's state after its counters changed.
//!
//! # Target resolution
//!
//! A [`JobTarget`] resolves to the devices **in service** it names (state `registered`, `active` or
//! `suspended`; never `decommissioned` nor `retired`): a device list's devices, a static group's
//! explicit members, the devices a dynamic group's filter or a filter target matches. Each backend
//! has one function that turns a target into a SQL condition over `devices`, used by
//! `create_job`, `preview_target`, `target_device_ids` and `add_job_executions_for`, so a dry run
//! returns exactly the set the real run touches. An unknown group or an unknown device in a
//! device list is [`crate::StoreError::NotFound`].

use std::collections::BTreeSet;

use domain::{
    AbortCriterion, DeviceId, ExecutionState, FailureType, Filter, GroupName, Job, JobAction,
    JobCounters, JobExecution, JobId, JobOperation, JobSpec, JobSpecParts, JobState, JobTarget,
    LifecycleState, RetryPolicy, RetryRule, Rollout, Selection, StatusDetails, Timestamp,
};
use serde_json::{Value, json};

use crate::{StoreError, StoreResult};

/// Most groups a [`TargetPreview`] breaks the devices down by.
pub const MAX_PREVIEW_GROUPS: usize = 20;
/// Most dynamic groups whose filters a preview evaluates (in name order); beyond them
/// [`TargetPreview::groups_truncated`] is set.
pub const MAX_PREVIEW_DYNAMIC_GROUPS: usize = 200;
/// Most device ids in a preview's sample.
pub const MAX_PREVIEW_SAMPLE: u32 = 100;

/// The lifecycle states of the devices a job target resolves to: devices in service.
pub const IN_SERVICE: [LifecycleState; 3] =
    [LifecycleState::Registered, LifecycleState::Active, LifecycleState::Suspended];

/// What a device (or the scheduler) reports for one execution:
/// [`crate::Store::update_execution`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutionUpdate {
    /// The new state (`in_progress` again for a progress report).
    pub state: ExecutionState,
    /// New status details; `None` keeps the current ones.
    pub status_details: Option<StatusDetails>,
    /// The execution version the reporter saw, checked when given.
    pub expected_version: Option<u64>,
}

/// What [`crate::Store::update_execution`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutionUpdated {
    /// The execution as stored now (queued again, with the next attempt, when it was retried).
    pub execution: JobExecution,
    /// Whether a failure was turned into a retry.
    pub retried: bool,
    /// The job after the change: its counters, and its state (`aborted` when an abort criterion
    /// was met, `completed` when the last execution ended).
    pub job: Job,
}

/// A dry run of a target: what a job (or another bulk change) on it would touch, without writing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TargetPreview {
    /// How many devices.
    pub total: u64,
    /// How many per lifecycle state (states with none left out), in lifecycle order.
    pub by_state: Vec<(LifecycleState, u64)>,
    /// How many are in each group (static members and dynamic matches), the
    /// [`MAX_PREVIEW_GROUPS`] largest, largest first (ties by name); groups with none are left out.
    pub by_group: Vec<(GroupName, u64)>,
    /// Whether `by_group` is incomplete: more groups had devices than it lists, or there were more
    /// dynamic groups than [`MAX_PREVIEW_DYNAMIC_GROUPS`].
    pub groups_truncated: bool,
    /// How many are connected now.
    pub online: u64,
    /// How many are not (`total - online`).
    pub offline: u64,
    /// The first devices in id order, at most the sample size asked for (capped at
    /// [`MAX_PREVIEW_SAMPLE`]).
    pub sample: Vec<DeviceId>,
}

/// What an execution update does, computed by [`plan_execution_update`].
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedUpdate {
    /// The execution to store.
    pub execution: JobExecution,
    /// Whether the failure became a retry.
    pub retried: bool,
    /// The job's counters after the change (before an abort cancels queued executions).
    pub counters: JobCounters,
    /// The abort criterion the new counters meet, when the job is still running or paused.
    pub abort: Option<usize>,
}

/// Computes what an execution update does, from the job and the execution as read in the writing
/// transaction:
///
/// - the expected version, when given, must be the execution's;
/// - the move must be legal ([`ExecutionState::check_transition`]), and never to `queued`: only
///   the store queues an execution (a device or the scheduler cannot ask for a retry);
/// - a failure (`failed`, `timed_out`) of a job that is running or paused is retried when the
///   spec's policy allows ([`JobSpec::retry_at`]): the execution goes back to `queued` with the
///   next attempt and `not_before` set to the back-off, its start and timeout cleared;
/// - the counters move from the old state to the stored one, and the abort criteria are checked
///   against them (only for a running or paused job).
///
/// # Errors
/// [`StoreError::VersionMismatch`], or [`StoreError::Conflict`] for an illegal move.
pub fn plan_execution_update(
    job: &Job,
    current: &JobExecution,
    update: &ExecutionUpdate,
    now: Timestamp,
) -> StoreResult<PlannedUpdate> {
    if let Some(expected) = update.expected_version
        && expected != current.version
    {
        return Err(StoreError::VersionMismatch { expected, current: current.version });
    }
    if update.state == ExecutionState::Queued {
        // Only the store queues an execution (at creation, or as a retry its policy allows).
        return Err(StoreError::Conflict(format!(
            "a job execution cannot be set to queued; it is {}",
            current.state
        )));
    }
    current
        .state
        .check_transition(update.state)
        .map_err(|e| StoreError::Conflict(e.to_string()))?;
    let active = matches!(job.state, JobState::InProgress | JobState::Paused);
    let mut next = current.clone();
    next.updated_at = now;
    next.version = current.version + 1;
    if let Some(details) = &update.status_details {
        next.status_details = details.clone();
    }
    let retry_at = match update.state.failure_type() {
        Some(f @ (FailureType::Failed | FailureType::TimedOut)) if active => {
            job.spec.retry_at(f, current.attempt, now)
        }
        _ => None,
    };
    let retried = retry_at.is_some();
    if let Some(at) = retry_at {
        next.state = ExecutionState::Queued;
        next.attempt = current.attempt.saturating_add(1);
        next.not_before = at;
        next.started_at = None;
        next.timeout_at = None;
    } else {
        next.state = update.state;
        if update.state != ExecutionState::InProgress {
            next.timeout_at = None;
        }
    }
    let counters = job.counters.transition(current.state, next.state, 1);
    let abort = if active { job.spec.abort_criterion_met(&counters) } else { None };
    Ok(PlannedUpdate { execution: next, retried, counters, abort })
}

/// The state a job settles in after its counters changed: see [`JobState::settle`].
pub fn settle(job: &Job) -> JobState {
    job.state.settle(job.spec.selection(), &job.counters)
}

/// The state after an operator's action, as a store error when it is refused.
///
/// # Errors
/// [`StoreError::Conflict`] with the reason.
pub fn apply_action(state: JobState, action: JobAction) -> StoreResult<JobState> {
    state.apply(action).map_err(|e| StoreError::Conflict(e.to_string()))
}

/// A job's audit summary: id, state, version, selection, operation and target kind.
pub fn job_summary(job: &Job) -> Value {
    let operation = match job.spec.operation() {
        JobOperation::Command { name, .. } => json!({"type": "command", "name": name}),
        JobOperation::DesiredPatch { .. } => json!({"type": "desired_patch"}),
    };
    let target = match job.spec.target() {
        JobTarget::Devices(ids) => json!({"devices": ids.len()}),
        JobTarget::Group(g) => json!({"group": g.as_str()}),
        JobTarget::Filter(f) => json!({"filter": f.to_string()}),
    };
    json!({
        "id": job.id().as_str(),
        "state": job.state.as_str(),
        "version": job.version,
        "selection": job.spec.selection().as_str(),
        "operation": operation,
        "target": target,
    })
}

/// The audit resource of a job: `job/<id>`.
pub fn job_resource(id: &JobId) -> String {
    format!("job/{id}")
}

/// A [`StoreError::NotFound`] for a job.
pub fn job_not_found(id: &JobId) -> StoreError {
    StoreError::NotFound { kind: "job", id: id.to_string() }
}

/// A [`StoreError::NotFound`] for an execution (`<job>/<device>`).
pub fn execution_not_found(job: &JobId, device: &DeviceId) -> StoreError {
    StoreError::NotFound { kind: "job execution", id: format!("{job}/{device}") }
}

/// A new job as `create_job` starts it: `in_progress`, version 1, no counts yet.
pub fn new_job(spec: &JobSpec, at: Timestamp) -> Job {
    Job {
        spec: spec.clone(),
        state: JobState::InProgress,
        counters: JobCounters::default(),
        created_at: at,
        updated_at: at,
        version: 1,
        rollout_window: None,
        aborted_by: None,
    }
}

/// The stored form of a spec: a JSON object.
pub fn spec_to_json(spec: &JobSpec) -> Value {
    let p = spec.parts();
    let operation = match &p.operation {
        JobOperation::Command { name, payload, timeout_secs } => json!({
            "type": "command", "name": name, "payload": payload, "timeout_secs": timeout_secs,
        }),
        JobOperation::DesiredPatch { patch } => json!({"type": "desired_patch", "patch": patch}),
    };
    let target = match &p.target {
        JobTarget::Devices(ids) => {
            json!({"devices": ids.iter().map(DeviceId::as_str).collect::<Vec<_>>()})
        }
        JobTarget::Group(g) => json!({"group": g.as_str()}),
        JobTarget::Filter(f) => json!({"filter": f.to_string()}),
    };
    let rollout = match p.rollout {
        Rollout::Constant { max_per_minute } => json!({"max_per_minute": max_per_minute}),
        Rollout::Exponential {
            base_per_minute,
            increment_factor,
            increase_after_succeeded,
            max_per_minute,
        } => json!({"exponential": {
            "base_per_minute": base_per_minute,
            "increment_factor": increment_factor,
            "increase_after_succeeded": increase_after_succeeded,
            "max_per_minute": max_per_minute,
        }}),
    };
    let rule = |r: Option<RetryRule>| {
        r.map(|r| {
            json!({
                "max_attempts": r.max_attempts,
                "backoff_base_secs": r.backoff_base_secs,
                "backoff_max_secs": r.backoff_max_secs,
            })
        })
    };
    let abort: Vec<Value> = p
        .abort
        .iter()
        .map(|c| {
            json!({
                "failure_types": c.failure_types.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
                "min_finished": c.min_finished,
                "threshold_pct": c.threshold_pct,
            })
        })
        .collect();
    json!({
        "id": p.id.as_str(),
        "description": p.description,
        "operation": operation,
        "target": target,
        "selection": p.selection.as_str(),
        "rollout": rollout,
        "in_progress_timeout_secs": p.in_progress_timeout_secs,
        "retry": {"failed": rule(p.retry.failed), "timed_out": rule(p.retry.timed_out)},
        "abort": abort,
    })
}

/// Reads a stored spec back through [`JobSpec::new`].
///
/// # Errors
/// A description of what is wrong, for the backend's corrupt-row error.
pub fn spec_from_json(text: &str) -> Result<JobSpec, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("spec is not JSON: {e}"))?;
    let str_of = |v: &Value, k: &str| -> Result<String, String> {
        v.get(k).and_then(Value::as_str).map(str::to_owned).ok_or_else(|| format!("no text {k}"))
    };
    let u64_of = |v: &Value, k: &str| -> Result<u64, String> {
        v.get(k).and_then(Value::as_u64).ok_or_else(|| format!("no number {k}"))
    };
    let u32_of = |v: &Value, k: &str| -> Result<u32, String> {
        u32::try_from(u64_of(v, k)?).map_err(|_| format!("{k} out of range"))
    };
    let id = JobId::new(str_of(&v, "id")?).map_err(|e| e.to_string())?;
    let op = v.get("operation").ok_or("no operation")?;
    let operation = match str_of(op, "type")?.as_str() {
        "command" => JobOperation::Command {
            name: str_of(op, "name")?,
            payload: op.get("payload").cloned().unwrap_or(Value::Null),
            timeout_secs: u32_of(op, "timeout_secs")?,
        },
        "desired_patch" => {
            JobOperation::DesiredPatch { patch: op.get("patch").cloned().unwrap_or(Value::Null) }
        }
        other => return Err(format!("unknown operation {other:?}")),
    };
    let t = v.get("target").ok_or("no target")?;
    let target = if let Some(ids) = t.get("devices").and_then(Value::as_array) {
        let ids = ids
            .iter()
            .map(|i| {
                DeviceId::new(i.as_str().unwrap_or_default().to_owned()).map_err(|e| e.to_string())
            })
            .collect::<Result<Vec<_>, _>>()?;
        JobTarget::Devices(ids)
    } else if let Some(g) = t.get("group").and_then(Value::as_str) {
        JobTarget::Group(GroupName::new(g).map_err(|e| e.to_string())?)
    } else {
        JobTarget::Filter(Filter::parse(&str_of(t, "filter")?).map_err(|e| e.to_string())?)
    };
    let selection = match str_of(&v, "selection")?.as_str() {
        "snapshot" => Selection::Snapshot,
        "continuous" => Selection::Continuous,
        other => return Err(format!("unknown selection {other:?}")),
    };
    let r = v.get("rollout").ok_or("no rollout")?;
    let rollout = match r.get("exponential") {
        Some(e) => Rollout::Exponential {
            base_per_minute: u32_of(e, "base_per_minute")?,
            increment_factor: e
                .get("increment_factor")
                .and_then(Value::as_f64)
                .ok_or("no increment_factor")?,
            increase_after_succeeded: u32_of(e, "increase_after_succeeded")?,
            max_per_minute: u32_of(e, "max_per_minute")?,
        },
        None => Rollout::Constant { max_per_minute: u32_of(r, "max_per_minute")? },
    };
    let in_progress_timeout_secs = match v.get("in_progress_timeout_secs") {
        None | Some(Value::Null) => None,
        Some(_) => Some(u32_of(&v, "in_progress_timeout_secs")?),
    };
    let retry_v = v.get("retry").cloned().unwrap_or(Value::Null);
    let rule = |k: &str| -> Result<Option<RetryRule>, String> {
        match retry_v.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(r) => Ok(Some(RetryRule {
                max_attempts: u32_of(r, "max_attempts")?,
                backoff_base_secs: u32_of(r, "backoff_base_secs")?,
                backoff_max_secs: u32_of(r, "backoff_max_secs")?,
            })),
        }
    };
    let retry = RetryPolicy { failed: rule("failed")?, timed_out: rule("timed_out")? };
    let mut abort = Vec::new();
    for c in v.get("abort").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default() {
        let failure_types = c
            .get("failure_types")
            .and_then(Value::as_array)
            .ok_or("no failure_types")?
            .iter()
            .map(|t| FailureType::parse(t.as_str().unwrap_or_default()).map_err(|e| e.to_string()))
            .collect::<Result<BTreeSet<_>, _>>()?;
        abort.push(AbortCriterion {
            failure_types,
            min_finished: u64_of(c, "min_finished")?,
            threshold_pct: c
                .get("threshold_pct")
                .and_then(Value::as_f64)
                .ok_or("no threshold_pct")?,
        });
    }
    JobSpec::new(JobSpecParts {
        id,
        description: str_of(&v, "description")?,
        operation,
        target,
        selection,
        rollout,
        in_progress_timeout_secs,
        retry,
        abort,
    })
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_round_trip_through_json() {
        let specs = [
            JobSpecParts {
                id: JobId::new("a").unwrap(),
                description: "reboot the lab".into(),
                operation: JobOperation::Command {
                    name: "reboot".into(),
                    payload: json!({"delay": 5}),
                    timeout_secs: 30,
                },
                target: JobTarget::Devices(vec![DeviceId::new("d1").unwrap()]),
                selection: Selection::Snapshot,
                rollout: Rollout::Exponential {
                    base_per_minute: 5,
                    increment_factor: 1.5,
                    increase_after_succeeded: 10,
                    max_per_minute: 500,
                },
                in_progress_timeout_secs: Some(600),
                retry: RetryPolicy {
                    failed: Some(RetryRule {
                        max_attempts: 3,
                        backoff_base_secs: 5,
                        backoff_max_secs: 60,
                    }),
                    timed_out: None,
                },
                abort: vec![AbortCriterion {
                    failure_types: [FailureType::Failed, FailureType::TimedOut].into(),
                    min_finished: 20,
                    threshold_pct: 12.5,
                }],
            },
            JobSpecParts {
                id: JobId::new("b").unwrap(),
                description: String::new(),
                operation: JobOperation::DesiredPatch { patch: json!({"fw": {"v": "2"}}) },
                target: JobTarget::Filter(
                    Filter::parse("tags.site = 'x' or state = 'active'").unwrap(),
                ),
                selection: Selection::Continuous,
                rollout: Rollout::Constant { max_per_minute: 60 },
                in_progress_timeout_secs: None,
                retry: RetryPolicy::default(),
                abort: vec![],
            },
        ];
        for parts in specs {
            let spec = JobSpec::new(parts).unwrap();
            let text = spec_to_json(&spec).to_string();
            assert_eq!(spec_from_json(&text).unwrap(), spec, "{text}");
        }
        assert!(spec_from_json("{}").is_err());
        assert!(spec_from_json("x").is_err());
    }
}
