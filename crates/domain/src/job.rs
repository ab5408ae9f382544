//! Fleet jobs: one operation (a command or a desired-state patch) run on a target set of devices,
//! one *execution* per device, paced by a rollout rate, retried per failure type and aborted by
//! criteria over the executions' outcomes.
//!
//! - [`JobSpec`] is what an operator asks for, validated once by [`JobSpec::new`] from
//!   [`JobSpecParts`] (errors: [`JobSpecError`]); its document ([`JobOperation`]) is just data here.
//! - [`JobState`] is the job's own state; [`JobState::apply`] is the one place its rules live
//!   (operator actions, [`JobAction`]) and [`JobState::settle`] says when a job completes by itself.
//! - [`ExecutionState`] is a device's execution; [`ExecutionState::check_transition`] holds its
//!   state machine.
//! - [`JobCounters`] counts executions per state; [`JobCounters::transition`] keeps them exact
//!   incrementally, so reading a job's progress never scans its executions.
//! - Pure rules the store and the scheduler share: [`Rollout::allowance`] (how many executions may
//!   start now), [`JobSpec::abort_criterion_met`] (abort evaluation) and [`JobSpec::retry_at`]
//!   (retry decision).
//!
//! Time is always an argument (`now`), never read from a clock.

use std::collections::BTreeSet;
use std::fmt;

use crate::{DeviceId, Filter, GroupName, InvalidInput, Timestamp};

/// Most devices a [`JobTarget::Devices`] list may name.
pub const MAX_TARGET_DEVICES: usize = 10_000;
/// Largest serialized command payload or desired-state patch, in bytes.
pub const MAX_JOB_DOCUMENT_BYTES: usize = 32 * 1024;
/// Largest serialized status details of one execution, in bytes.
pub const MAX_STATUS_DETAILS_BYTES: usize = 4096;
/// Longest job description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 1024;
/// Highest rollout rate, in executions started per minute.
pub const MAX_PER_MINUTE: u32 = 1_000_000;
/// Largest exponential rollout increment factor.
pub const MAX_INCREMENT_FACTOR: f64 = 5.0;
/// Most attempts (the first one included) a retry rule may allow.
pub const MAX_ATTEMPTS: u32 = 10;
/// Longest retry back-off, in seconds (one day).
pub const MAX_BACKOFF_SECS: u32 = 86_400;
/// Longest in-progress timeout and command timeout, in seconds (seven days).
pub const MAX_TIMEOUT_SECS: u32 = 7 * 86_400;
/// Most abort criteria of one job.
pub const MAX_ABORT_CRITERIA: usize = 8;
/// The length of a rollout window, in milliseconds: rates are per minute.
pub const ROLLOUT_WINDOW_MS: i64 = 60_000;

/// A job's id: 1–64 characters of `[A-Za-z0-9_.-]`, chosen by the operator, unique.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobId(String);

impl JobId {
    /// Validates and wraps a job id.
    ///
    /// # Errors
    /// [`InvalidInput`] when the id is empty, too long or holds other characters.
    pub fn new(id: impl Into<String>) -> Result<Self, InvalidInput> {
        let id = id.into();
        if id.is_empty() || id.len() > 64 {
            return Err(InvalidInput::new("job id", "must be 1 to 64 characters"));
        }
        if let Some(c) =
            id.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(InvalidInput::new(
                "job id",
                format!("{c:?} is not allowed; use letters, digits and . _ -"),
            ));
        }
        Ok(Self(id))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a job does on each device.
#[derive(Debug, Clone, PartialEq)]
pub enum JobOperation {
    /// Send a direct command.
    Command {
        /// The command's name: 1–64 characters of `[A-Za-z0-9_.-/]`.
        name: String,
        /// Its payload (any JSON value, at most [`MAX_JOB_DOCUMENT_BYTES`] serialized).
        payload: serde_json::Value,
        /// How long one device has to answer, 1 to [`MAX_TIMEOUT_SECS`].
        timeout_secs: u32,
    },
    /// Merge a JSON merge patch (RFC 7396) into the device twin's desired section.
    DesiredPatch {
        /// A non-empty JSON object, at most [`MAX_JOB_DOCUMENT_BYTES`] serialized.
        patch: serde_json::Value,
    },
}

/// Which devices a job runs on. Whatever the target, only devices in service get an execution:
/// not `decommissioned` nor `retired` ones (see [`crate::LifecycleState`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobTarget {
    /// These devices (1 to [`MAX_TARGET_DEVICES`], kept sorted without duplicates).
    Devices(Vec<DeviceId>),
    /// The members of a group: a static group's explicit members, or the devices a dynamic group's
    /// filter matches when the target is resolved.
    Group(GroupName),
    /// The devices a filter expression matches.
    Filter(Filter),
}

/// Whether a job's target is resolved once or keeps growing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    /// The target is resolved when the job is created; the job completes when every execution
    /// has ended.
    Snapshot,
    /// Devices that join the target later get an execution too; the job never completes by
    /// itself (it is canceled or aborted). Needs a group or filter target.
    Continuous,
}

impl Selection {
    /// `snapshot` or `continuous`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Snapshot => "snapshot",
            Self::Continuous => "continuous",
        }
    }
}

/// How fast executions start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rollout {
    /// At most this many executions start per minute.
    Constant {
        /// 1 to [`MAX_PER_MINUTE`].
        max_per_minute: u32,
    },
    /// AWS IoT jobs' exponential rollout: the rate starts at `base_per_minute` and is multiplied by
    /// `increment_factor` each time `increase_after_succeeded` more executions succeeded, never
    /// above `max_per_minute`.
    Exponential {
        /// The starting rate, 1 to `max_per_minute`.
        base_per_minute: u32,
        /// Above 1, at most [`MAX_INCREMENT_FACTOR`].
        increment_factor: f64,
        /// How many more successes raise the rate one step (at least 1).
        increase_after_succeeded: u32,
        /// The highest rate, 1 to [`MAX_PER_MINUTE`].
        max_per_minute: u32,
    },
}

/// One retry rule: how often a failure type is retried and how long to wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryRule {
    /// Attempts in all, the first one included: 1 (no retry) to [`MAX_ATTEMPTS`].
    pub max_attempts: u32,
    /// The wait before the first retry, in seconds; doubled for each further retry.
    pub backoff_base_secs: u32,
    /// The longest wait, in seconds (at least the base, at most [`MAX_BACKOFF_SECS`]).
    pub backoff_max_secs: u32,
}

/// Retries per failure type; a type without a rule is not retried. A rejection is the device's
/// deliberate answer and is never retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetryPolicy {
    /// For executions that ended `failed`.
    pub failed: Option<RetryRule>,
    /// For executions that ended `timed_out`.
    pub timed_out: Option<RetryRule>,
}

/// An outcome that counts against a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FailureType {
    /// The device reported a failure.
    Failed,
    /// The device refused to run it.
    Rejected,
    /// The device did not finish within the in-progress timeout.
    TimedOut,
}

impl FailureType {
    /// Every failure type.
    pub const ALL: [Self; 3] = [Self::Failed, Self::Rejected, Self::TimedOut];

    /// `failed`, `rejected`, `timed_out`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Failed => "failed",
            Self::Rejected => "rejected",
            Self::TimedOut => "timed_out",
        }
    }

    /// The execution state this failure ends in.
    pub fn state(self) -> ExecutionState {
        match self {
            Self::Failed => ExecutionState::Failed,
            Self::Rejected => ExecutionState::Rejected,
            Self::TimedOut => ExecutionState::TimedOut,
        }
    }

    /// Parses `failed`, `rejected` or `timed_out`.
    ///
    /// # Errors
    /// [`InvalidInput`] for any other text.
    pub fn parse(s: &str) -> Result<Self, InvalidInput> {
        Self::ALL.into_iter().find(|t| t.as_str() == s).ok_or_else(|| {
            InvalidInput::new(
                "failure type",
                format!("{s:?} is not a failure type; expected failed, rejected or timed_out"),
            )
        })
    }
}

/// Abort the job when, after at least `min_finished` executions finished (succeeded, failed,
/// rejected or timed out; canceled and removed ones do not count), the share of those that ended
/// in one of `failure_types` is at least `threshold_pct` percent.
#[derive(Debug, Clone, PartialEq)]
pub struct AbortCriterion {
    /// The outcomes that count (at least one).
    pub failure_types: BTreeSet<FailureType>,
    /// How many executions must have finished before the criterion applies (at least 1).
    pub min_finished: u64,
    /// The threshold, above 0 and at most 100.
    pub threshold_pct: f64,
}

/// The raw parts of a job spec, checked by [`JobSpec::new`].
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpecParts {
    /// The job's id.
    pub id: JobId,
    /// Free text, at most [`MAX_DESCRIPTION_CHARS`] characters.
    pub description: String,
    /// What runs on each device.
    pub operation: JobOperation,
    /// Which devices.
    pub target: JobTarget,
    /// Snapshot or continuous.
    pub selection: Selection,
    /// How fast executions start.
    pub rollout: Rollout,
    /// How long an execution may stay `in_progress` before it times out (none: forever), 1 to
    /// [`MAX_TIMEOUT_SECS`].
    pub in_progress_timeout_secs: Option<u32>,
    /// Retries per failure type.
    pub retry: RetryPolicy,
    /// Abort criteria, checked in order; the first one met aborts the job.
    pub abort: Vec<AbortCriterion>,
}

/// Why a job spec was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobSpecError {
    /// The description is too long.
    #[error("the description is longer than {MAX_DESCRIPTION_CHARS} characters")]
    DescriptionTooLong,
    /// The command name is empty, too long or holds other characters.
    #[error("invalid command name {0:?}: use 1 to 64 letters, digits and . _ - /")]
    CommandName(String),
    /// A command payload or desired patch is too large.
    #[error("the {what} is {size} bytes serialized; the limit is {MAX_JOB_DOCUMENT_BYTES}")]
    DocumentTooLarge {
        /// `command payload` or `desired patch`.
        what: &'static str,
        /// Its size.
        size: usize,
    },
    /// A desired patch that is not a non-empty JSON object.
    #[error("the desired patch must be a non-empty JSON object")]
    PatchNotObject,
    /// A timeout out of range.
    #[error("{what} must be 1 to {MAX_TIMEOUT_SECS} seconds")]
    Timeout {
        /// `command timeout` or `in-progress timeout`.
        what: &'static str,
    },
    /// An empty device list.
    #[error("the target lists no device")]
    NoDevices,
    /// A device list above the limit.
    #[error("the target lists {0} devices; the limit is {MAX_TARGET_DEVICES}")]
    TooManyDevices(usize),
    /// A continuous job needs a target that can grow.
    #[error("a continuous job needs a group or filter target, not a device list")]
    ContinuousDeviceList,
    /// A rollout rate out of range.
    #[error("rollout: {0}")]
    Rollout(String),
    /// A retry rule out of range.
    #[error("retry for {failure}: {reason}")]
    Retry {
        /// `failed` or `timed_out`.
        failure: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Too many abort criteria.
    #[error("at most {MAX_ABORT_CRITERIA} abort criteria")]
    TooManyAbortCriteria,
    /// An abort criterion out of range.
    #[error("abort criterion {index}: {reason}")]
    AbortCriterion {
        /// Its position (from 0).
        index: usize,
        /// What is wrong.
        reason: String,
    },
}

/// A validated job spec: what an operator asked a job to do. Built only by [`JobSpec::new`].
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec(JobSpecParts);

impl JobSpec {
    /// Checks every part of a job spec. A device list is sorted and its duplicates dropped.
    ///
    /// # Errors
    /// The first [`JobSpecError`] found.
    pub fn new(mut parts: JobSpecParts) -> Result<Self, JobSpecError> {
        if parts.description.chars().count() > MAX_DESCRIPTION_CHARS {
            return Err(JobSpecError::DescriptionTooLong);
        }
        check_operation(&parts.operation)?;
        if let JobTarget::Devices(ids) = &mut parts.target {
            ids.sort();
            ids.dedup();
            if ids.is_empty() {
                return Err(JobSpecError::NoDevices);
            }
            if ids.len() > MAX_TARGET_DEVICES {
                return Err(JobSpecError::TooManyDevices(ids.len()));
            }
            if parts.selection == Selection::Continuous {
                return Err(JobSpecError::ContinuousDeviceList);
            }
        }
        parts.rollout.check()?;
        if let Some(t) = parts.in_progress_timeout_secs
            && !(1..=MAX_TIMEOUT_SECS).contains(&t)
        {
            return Err(JobSpecError::Timeout { what: "the in-progress timeout" });
        }
        check_retry("failed", parts.retry.failed)?;
        check_retry("timed_out", parts.retry.timed_out)?;
        if parts.abort.len() > MAX_ABORT_CRITERIA {
            return Err(JobSpecError::TooManyAbortCriteria);
        }
        for (index, c) in parts.abort.iter().enumerate() {
            let reason = if c.failure_types.is_empty() {
                "name at least one failure type"
            } else if c.min_finished == 0 {
                "min_finished must be at least 1"
            } else if !(c.threshold_pct > 0.0 && c.threshold_pct <= 100.0) {
                "threshold_pct must be above 0 and at most 100"
            } else {
                continue;
            };
            return Err(JobSpecError::AbortCriterion { index, reason: reason.to_owned() });
        }
        Ok(Self(parts))
    }

    /// The parts, as validated.
    pub fn parts(&self) -> &JobSpecParts {
        &self.0
    }

    /// The job's id.
    pub fn id(&self) -> &JobId {
        &self.0.id
    }

    /// The description.
    pub fn description(&self) -> &str {
        &self.0.description
    }

    /// What runs on each device.
    pub fn operation(&self) -> &JobOperation {
        &self.0.operation
    }

    /// Which devices.
    pub fn target(&self) -> &JobTarget {
        &self.0.target
    }

    /// Snapshot or continuous.
    pub fn selection(&self) -> Selection {
        self.0.selection
    }

    /// The rollout rate.
    pub fn rollout(&self) -> Rollout {
        self.0.rollout
    }

    /// The in-progress timeout in seconds, if any.
    pub fn in_progress_timeout_secs(&self) -> Option<u32> {
        self.0.in_progress_timeout_secs
    }

    /// Retries per failure type.
    pub fn retry(&self) -> RetryPolicy {
        self.0.retry
    }

    /// The abort criteria, in order.
    pub fn abort(&self) -> &[AbortCriterion] {
        &self.0.abort
    }

    /// When an execution that started at `started_at` times out, if the job has a timeout.
    pub fn timeout_at(&self, started_at: Timestamp) -> Option<Timestamp> {
        self.0.in_progress_timeout_secs.map(|s| {
            Timestamp::from_millis(started_at.millis().saturating_add(i64::from(s) * 1000))
        })
    }

    /// The retry decision: when the execution whose attempt number `attempt` (from 1) just ended in
    /// `failure` at `now` may start again, or `None` when it is not retried (no rule for that
    /// failure type, a rejection, or its attempts are used up).
    ///
    /// The wait is the rule's base, doubled for each earlier retry, capped at its maximum.
    pub fn retry_at(
        &self,
        failure: FailureType,
        attempt: u32,
        now: Timestamp,
    ) -> Option<Timestamp> {
        let rule = match failure {
            FailureType::Failed => self.0.retry.failed?,
            FailureType::TimedOut => self.0.retry.timed_out?,
            FailureType::Rejected => return None,
        };
        if attempt >= rule.max_attempts {
            return None;
        }
        let doublings = attempt.saturating_sub(1).min(32);
        let wait = u64::from(rule.backoff_base_secs)
            .saturating_mul(1u64 << doublings)
            .min(u64::from(rule.backoff_max_secs));
        let wait_ms = i64::try_from(wait * 1000).unwrap_or(i64::MAX);
        Some(Timestamp::from_millis(now.millis().saturating_add(wait_ms)))
    }

    /// Abort evaluation: the position of the first criterion the counters meet, if any.
    pub fn abort_criterion_met(&self, counters: &JobCounters) -> Option<usize> {
        let finished = counters.finished();
        if finished == 0 {
            return None;
        }
        self.0.abort.iter().position(|c| {
            let bad: u64 = c.failure_types.iter().map(|t| counters.get(t.state())).sum();
            // Compared in integers where possible: bad / finished ≥ pct / 100.
            finished >= c.min_finished && (bad as f64) * 100.0 >= c.threshold_pct * finished as f64
        })
    }
}

fn check_operation(op: &JobOperation) -> Result<(), JobSpecError> {
    match op {
        JobOperation::Command { name, payload, timeout_secs } => {
            let name_ok = !name.is_empty()
                && name.len() <= 64
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'));
            if !name_ok {
                return Err(JobSpecError::CommandName(name.clone()));
            }
            let size = payload.to_string().len();
            if size > MAX_JOB_DOCUMENT_BYTES {
                return Err(JobSpecError::DocumentTooLarge { what: "command payload", size });
            }
            if !(1..=MAX_TIMEOUT_SECS).contains(timeout_secs) {
                return Err(JobSpecError::Timeout { what: "the command timeout" });
            }
        }
        JobOperation::DesiredPatch { patch } => {
            if patch.as_object().is_none_or(serde_json::Map::is_empty) {
                return Err(JobSpecError::PatchNotObject);
            }
            let size = patch.to_string().len();
            if size > MAX_JOB_DOCUMENT_BYTES {
                return Err(JobSpecError::DocumentTooLarge { what: "desired patch", size });
            }
        }
    }
    Ok(())
}

fn check_retry(failure: &'static str, rule: Option<RetryRule>) -> Result<(), JobSpecError> {
    let Some(r) = rule else { return Ok(()) };
    let reason = if !(1..=MAX_ATTEMPTS).contains(&r.max_attempts) {
        format!("max_attempts must be 1 to {MAX_ATTEMPTS}")
    } else if r.backoff_max_secs > MAX_BACKOFF_SECS {
        format!("backoff_max_secs must be at most {MAX_BACKOFF_SECS}")
    } else if r.backoff_base_secs > r.backoff_max_secs {
        "backoff_base_secs must not exceed backoff_max_secs".to_owned()
    } else {
        return Ok(());
    };
    Err(JobSpecError::Retry { failure, reason })
}

/// The bookkeeping of a job's current rollout window: rates are counted in one-minute windows
/// anchored at the job's start (`started_at + k × 1 min`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RolloutWindow {
    /// Where the window counted in `started` begins.
    pub start: Timestamp,
    /// How many executions started in that window.
    pub started: u64,
}

impl Rollout {
    fn check(self) -> Result<(), JobSpecError> {
        let rate_ok = |r: u32| (1..=MAX_PER_MINUTE).contains(&r);
        let problem = match self {
            Self::Constant { max_per_minute } if !rate_ok(max_per_minute) => {
                format!("max_per_minute must be 1 to {MAX_PER_MINUTE}")
            }
            Self::Exponential {
                base_per_minute,
                increment_factor,
                increase_after_succeeded,
                max_per_minute,
            } => {
                if !rate_ok(max_per_minute) {
                    format!("max_per_minute must be 1 to {MAX_PER_MINUTE}")
                } else if !(1..=max_per_minute).contains(&base_per_minute) {
                    "base_per_minute must be 1 to max_per_minute".to_owned()
                } else if !(increment_factor > 1.0 && increment_factor <= MAX_INCREMENT_FACTOR) {
                    format!("increment_factor must be above 1 and at most {MAX_INCREMENT_FACTOR}")
                } else if increase_after_succeeded == 0 {
                    "increase_after_succeeded must be at least 1".to_owned()
                } else {
                    return Ok(());
                }
            }
            Self::Constant { .. } => return Ok(()),
        };
        Err(JobSpecError::Rollout(problem))
    }

    /// The rate in executions per minute once `succeeded` executions succeeded.
    pub fn rate(self, succeeded: u64) -> u64 {
        match self {
            Self::Constant { max_per_minute } => u64::from(max_per_minute),
            Self::Exponential {
                base_per_minute,
                increment_factor,
                increase_after_succeeded,
                max_per_minute,
            } => {
                let steps = succeeded / u64::from(increase_after_succeeded.max(1));
                let steps = i32::try_from(steps).unwrap_or(i32::MAX);
                let rate = f64::from(base_per_minute) * increment_factor.powi(steps);
                let max = f64::from(max_per_minute);
                // `rate` may be infinite; `min` caps it. The cast saturates.
                rate.min(max).floor().max(1.0) as u64
            }
        }
    }

    /// How many executions may start at `now`, and the window to record them in: the rate for
    /// `succeeded` successes minus what already started in the current window. `window` is the
    /// job's recorded window (`None` before anything started); the current window is the minute
    /// since the job's `started_at` that `now` falls in, so a recorded window that is not the
    /// current one counts as empty.
    pub fn allowance(
        self,
        started_at: Timestamp,
        window: Option<RolloutWindow>,
        succeeded: u64,
        now: Timestamp,
    ) -> (u64, RolloutWindow) {
        let elapsed = now.millis().saturating_sub(started_at.millis()).max(0);
        let start = Timestamp::from_millis(
            started_at.millis() + (elapsed / ROLLOUT_WINDOW_MS) * ROLLOUT_WINDOW_MS,
        );
        let started = window.filter(|w| w.start == start).map_or(0, |w| w.started);
        (self.rate(succeeded).saturating_sub(started), RolloutWindow { start, started })
    }
}

/// A job's own state.
///
/// ```text
/// in_progress ⇄ paused
///      │          │
///      └────┬─────┘
///           ├──▶ canceled   (operator)
///           ├──▶ aborted    (operator, or an abort criterion)
///           └──▶ completed  (a snapshot job whose executions all ended)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum JobState {
    /// Executions start as the rollout allows.
    InProgress,
    /// No execution starts; running ones may still finish.
    Paused,
    /// Stopped by an operator (terminal).
    Canceled,
    /// Stopped by an operator or an abort criterion (terminal).
    Aborted,
    /// Every execution of a snapshot job ended (terminal).
    Completed,
}

/// What an operator does to a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobAction {
    /// Stop starting executions.
    Pause,
    /// Start executions again.
    Resume,
    /// End the job; queued executions are canceled.
    Cancel,
    /// End the job as failed; queued executions are canceled.
    Abort,
}

impl JobAction {
    /// `pause`, `resume`, `cancel`, `abort`: the audit action is `job.<this>`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Cancel => "cancel",
            Self::Abort => "abort",
        }
    }
}

/// An operator action the job's state does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a {from} job cannot be {}", past(*action))]
pub struct IllegalJobTransition {
    /// The job's state.
    pub from: JobState,
    /// The refused action.
    pub action: JobAction,
}

fn past(a: JobAction) -> &'static str {
    match a {
        JobAction::Pause => "paused",
        JobAction::Resume => "resumed",
        JobAction::Cancel => "canceled",
        JobAction::Abort => "aborted",
    }
}

impl JobState {
    /// Every state.
    pub const ALL: [Self; 5] =
        [Self::InProgress, Self::Paused, Self::Canceled, Self::Aborted, Self::Completed];

    /// The state's name as used in the API and in storage.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InProgress => "in_progress",
            Self::Paused => "paused",
            Self::Canceled => "canceled",
            Self::Aborted => "aborted",
            Self::Completed => "completed",
        }
    }

    /// Parses a state name.
    ///
    /// # Errors
    /// [`InvalidInput`] for an unknown name.
    pub fn parse(s: &str) -> Result<Self, InvalidInput> {
        Self::ALL.into_iter().find(|st| st.as_str() == s).ok_or_else(|| {
            InvalidInput::new(
                "job state",
                format!(
                    "{s:?} is not a job state; expected in_progress, paused, canceled, aborted or completed"
                ),
            )
        })
    }

    /// Whether the job has ended (nothing changes its state any more).
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Canceled | Self::Aborted | Self::Completed)
    }

    /// The state after an operator's action. Repeating the state the job is in (pausing a paused
    /// job, canceling a canceled one) is allowed and changes nothing.
    ///
    /// # Errors
    /// [`IllegalJobTransition`] when the action does not apply: resuming or pausing an ended job,
    /// canceling or aborting a job that ended otherwise.
    pub fn apply(self, action: JobAction) -> Result<Self, IllegalJobTransition> {
        let to = match action {
            JobAction::Pause => Self::Paused,
            JobAction::Resume => Self::InProgress,
            JobAction::Cancel => Self::Canceled,
            JobAction::Abort => Self::Aborted,
        };
        if self == to || !self.is_terminal() {
            Ok(to)
        } else {
            Err(IllegalJobTransition { from: self, action })
        }
    }

    /// The state a job settles in given its counters: a snapshot job that is running or paused
    /// completes when no execution is queued or in progress; anything else stays as it is.
    pub fn settle(self, selection: Selection, counters: &JobCounters) -> Self {
        let active = matches!(self, Self::InProgress | Self::Paused);
        if active && selection == Selection::Snapshot && counters.unfinished() == 0 {
            Self::Completed
        } else {
            self
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state of one device's execution of a job.
///
/// ```text
/// queued ──▶ in_progress ──▶ succeeded | failed | rejected | timed_out | canceled | removed
///   │  ▲                                  │          │
///   │  └──────────── retry ───────────────┴──────────┘
///   └──▶ canceled | removed
/// ```
/// `removed`: the device left the target (it was deleted, decommissioned or retired, or no longer
/// matches a continuous job's target) before its execution ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ExecutionState {
    /// Waiting for the rollout to start it (and for its `not_before` time).
    Queued,
    /// Sent to the device, which is working on it.
    InProgress,
    /// The device reported success (terminal).
    Succeeded,
    /// The device reported a failure (terminal unless retried).
    Failed,
    /// The device refused it (terminal).
    Rejected,
    /// The device did not finish in time (terminal unless retried).
    TimedOut,
    /// The job was canceled or aborted before it ended (terminal).
    Canceled,
    /// The device left the target before it ended (terminal).
    Removed,
}

/// A move between execution states that the state machine does not connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a job execution cannot go from {from} to {to}")]
pub struct IllegalExecutionTransition {
    /// The current state.
    pub from: ExecutionState,
    /// The requested state.
    pub to: ExecutionState,
}

impl ExecutionState {
    /// Every state, in the order of [`JobCounters`].
    pub const ALL: [Self; 8] = [
        Self::Queued,
        Self::InProgress,
        Self::Succeeded,
        Self::Failed,
        Self::Rejected,
        Self::TimedOut,
        Self::Canceled,
        Self::Removed,
    ];

    /// The state's name as used in the API and in storage.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::InProgress => "in_progress",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Rejected => "rejected",
            Self::TimedOut => "timed_out",
            Self::Canceled => "canceled",
            Self::Removed => "removed",
        }
    }

    /// Parses a state name.
    ///
    /// # Errors
    /// [`InvalidInput`] for an unknown name.
    pub fn parse(s: &str) -> Result<Self, InvalidInput> {
        Self::ALL.into_iter().find(|st| st.as_str() == s).ok_or_else(|| {
            InvalidInput::new(
                "execution state",
                format!(
                    "{s:?} is not an execution state; expected queued, in_progress, succeeded, failed, rejected, timed_out, canceled or removed"
                ),
            )
        })
    }

    /// Whether the execution waits or runs (queued or in progress).
    pub fn is_pending(self) -> bool {
        matches!(self, Self::Queued | Self::InProgress)
    }

    /// The failure type this state is, if it is one.
    pub fn failure_type(self) -> Option<FailureType> {
        match self {
            Self::Failed => Some(FailureType::Failed),
            Self::Rejected => Some(FailureType::Rejected),
            Self::TimedOut => Some(FailureType::TimedOut),
            _ => None,
        }
    }

    /// The states an execution may move to from `self`. A retry (`failed`/`timed_out` → `queued`)
    /// is decided by [`JobSpec::retry_at`], never requested by a device.
    pub fn successors(self) -> &'static [Self] {
        match self {
            Self::Queued => &[Self::InProgress, Self::Canceled, Self::Removed],
            Self::InProgress => &[
                Self::Succeeded,
                Self::Failed,
                Self::Rejected,
                Self::TimedOut,
                Self::Canceled,
                Self::Removed,
            ],
            Self::Failed | Self::TimedOut => &[Self::Queued],
            Self::Succeeded | Self::Rejected | Self::Canceled | Self::Removed => &[],
        }
    }

    /// Checks `self → to`. Staying `in_progress` is allowed (a progress report with new status
    /// details); staying in any other state is not.
    ///
    /// # Errors
    /// [`IllegalExecutionTransition`] when the state machine does not allow the move.
    pub fn check_transition(self, to: Self) -> Result<(), IllegalExecutionTransition> {
        if (self == to && self == Self::InProgress) || self.successors().contains(&to) {
            Ok(())
        } else {
            Err(IllegalExecutionTransition { from: self, to })
        }
    }
}

impl fmt::Display for ExecutionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job's executions counted per state. Kept exact incrementally by the store with
/// [`JobCounters::transition`] and [`JobCounters::add`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JobCounters {
    /// Executions `queued`.
    pub queued: u64,
    /// Executions `in_progress`.
    pub in_progress: u64,
    /// Executions `succeeded`.
    pub succeeded: u64,
    /// Executions `failed`.
    pub failed: u64,
    /// Executions `rejected`.
    pub rejected: u64,
    /// Executions `timed_out`.
    pub timed_out: u64,
    /// Executions `canceled`.
    pub canceled: u64,
    /// Executions `removed`.
    pub removed: u64,
}

impl JobCounters {
    /// The count of one state.
    pub fn get(&self, state: ExecutionState) -> u64 {
        match state {
            ExecutionState::Queued => self.queued,
            ExecutionState::InProgress => self.in_progress,
            ExecutionState::Succeeded => self.succeeded,
            ExecutionState::Failed => self.failed,
            ExecutionState::Rejected => self.rejected,
            ExecutionState::TimedOut => self.timed_out,
            ExecutionState::Canceled => self.canceled,
            ExecutionState::Removed => self.removed,
        }
    }

    fn slot(&mut self, state: ExecutionState) -> &mut u64 {
        match state {
            ExecutionState::Queued => &mut self.queued,
            ExecutionState::InProgress => &mut self.in_progress,
            ExecutionState::Succeeded => &mut self.succeeded,
            ExecutionState::Failed => &mut self.failed,
            ExecutionState::Rejected => &mut self.rejected,
            ExecutionState::TimedOut => &mut self.timed_out,
            ExecutionState::Canceled => &mut self.canceled,
            ExecutionState::Removed => &mut self.removed,
        }
    }

    /// Every execution, whatever its state.
    pub fn total(&self) -> u64 {
        ExecutionState::ALL.iter().map(|s| self.get(*s)).sum()
    }

    /// Executions that ended with an outcome: succeeded, failed, rejected or timed out (what abort
    /// criteria count).
    pub fn finished(&self) -> u64 {
        self.succeeded + self.failed + self.rejected + self.timed_out
    }

    /// Executions queued or in progress.
    pub fn unfinished(&self) -> u64 {
        self.queued + self.in_progress
    }

    /// The counters after `n` new executions in `state`.
    #[must_use]
    pub fn add(mut self, state: ExecutionState, n: u64) -> Self {
        let slot = self.slot(state);
        *slot = slot.saturating_add(n);
        self
    }

    /// The counters after `n` executions moved from `from` to `to`. (Counts never go below zero:
    /// a caller moving more than there are has a bug, and the counts stay at zero.)
    #[must_use]
    pub fn transition(mut self, from: ExecutionState, to: ExecutionState, n: u64) -> Self {
        if from != to {
            let slot = self.slot(from);
            *slot = slot.saturating_sub(n);
            let slot = self.slot(to);
            *slot = slot.saturating_add(n);
        }
        self
    }

    /// Counts the given states from scratch (what the incremental counts must always equal).
    pub fn count<I: IntoIterator<Item = ExecutionState>>(states: I) -> Self {
        states.into_iter().fold(Self::default(), |c, s| c.add(s, 1))
    }
}

/// A free-form status details map a device reports with its progress: a JSON object of at most
/// [`MAX_STATUS_DETAILS_BYTES`] bytes serialized.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StatusDetails(serde_json::Map<String, serde_json::Value>);

impl StatusDetails {
    /// Checks a status details value.
    ///
    /// # Errors
    /// [`InvalidInput`] when it is not an object or is too large.
    pub fn new(value: serde_json::Value) -> Result<Self, InvalidInput> {
        let serde_json::Value::Object(map) = value else {
            return Err(InvalidInput::new("status details", "must be a JSON object"));
        };
        let size = serde_json::Value::Object(map.clone()).to_string().len();
        if size > MAX_STATUS_DETAILS_BYTES {
            return Err(InvalidInput::new(
                "status details",
                format!("{size} bytes serialized; the limit is {MAX_STATUS_DETAILS_BYTES}"),
            ));
        }
        Ok(Self(map))
    }

    /// Wraps details read back from storage, which were checked when written.
    pub fn from_stored(map: serde_json::Map<String, serde_json::Value>) -> Self {
        Self(map)
    }

    /// The details as a JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(self.0.clone())
    }

    /// The fields.
    pub fn fields(&self) -> &serde_json::Map<String, serde_json::Value> {
        &self.0
    }
}

/// A job as stored: its spec, state and counters.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// What the operator asked for.
    pub spec: JobSpec,
    /// The job's state.
    pub state: JobState,
    /// Executions per state.
    pub counters: JobCounters,
    /// When the job was created (and started: rollout windows are anchored here).
    pub created_at: Timestamp,
    /// When the job's state last changed.
    pub updated_at: Timestamp,
    /// Incremented on every change of the job's state, starting at 1 (not on counter changes).
    pub version: u64,
    /// The recorded rollout window (`None` before any execution started).
    pub rollout_window: Option<RolloutWindow>,
    /// The position of the abort criterion that aborted the job, when one did.
    pub aborted_by: Option<usize>,
}

impl Job {
    /// The job's id.
    pub fn id(&self) -> &JobId {
        self.spec.id()
    }
}

/// One device's execution of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobExecution {
    /// The job.
    pub job_id: JobId,
    /// The device.
    pub device_id: DeviceId,
    /// Its state.
    pub state: ExecutionState,
    /// Which attempt this is, from 1; a retry adds one.
    pub attempt: u32,
    /// A queued execution does not start before this time (its creation, or a retry's back-off).
    pub not_before: Timestamp,
    /// When the current attempt started (`None` while queued).
    pub started_at: Option<Timestamp>,
    /// When the current attempt times out (in progress, with an in-progress timeout).
    pub timeout_at: Option<Timestamp>,
    /// When the execution was created.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
    /// Incremented on every change, starting at 1: for optimistic concurrency.
    pub version: u64,
    /// What the device last reported with its progress.
    pub status_details: StatusDetails,
}

#[cfg(test)]
mod tests;
