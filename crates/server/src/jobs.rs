//! Fleet jobs at run time: the scheduler that starts executions as each job's rollout allows and
//! delivers them to devices, and the responder for devices' job requests over MQTT.
//!
//! | topic | who publishes | payload |
//! | --- | --- | --- |
//! | `devices/{id}/jobs/notify` | Herd (QoS 1) | `{"jobs": [{"job_id", "state", "attempt", "version"}]}`: the device's pending (queued and in-progress) executions |
//! | `devices/{id}/jobs/{job_id}` | Herd (QoS 1) | the execution document, when it starts: `{"job_id", "state", "operation": {"command": {"name", "payload", "timeout_secs"}}, "attempt", "version", "status_details"}` |
//! | `devices/{id}/jobs/get` | the device | `{"request_id": "…"}` |
//! | `devices/{id}/jobs/{job_id}/update` | the device | `{"request_id", "status": "in_progress\|succeeded\|failed\|rejected", "status_details": {…}, "expected_version": 3}` |
//! | `devices/{id}/jobs/response` | Herd (QoS 1) | `{"request_id", "status": "ok", …}` or `{"request_id", "status": "error", "code", "message"}` |
//!
//! `docs/device-protocol.md` ("Jobs") is the contract for devices. An MQTT 5 request may name a
//! response topic below the device's own subtree (`devices/{id}/…`); the answer goes there, with
//! the request's correlation data. Only the device itself can publish its requests (devices reach
//! only their own subtree, and `gateway::TopicRules` lets no other client publish to these topics).
//!
//! # The scheduler
//!
//! One task, woken every `jobs.tick_ms`: it times out overdue executions (the store retries them
//! or records `timed_out`, and applies abort criteria), gives continuous jobs executions for every
//! device that joined their target (every `jobs.continuous_sync_secs`; crash-safe, as it is a
//! set-based query of what is missing), then for up to `jobs.max_jobs_per_tick` running jobs
//! starts what the rollout allows (at most `jobs.max_starts_per_tick` per tick over all jobs) and
//! delivers each started execution: a command job's document is published to the device; a
//! desired-patch job is applied through a [`DesiredPatcher`] and its execution ends at once. The
//! store decides everything else (retries, abort criteria, completion).
//!
//! Both tasks run on the presence task tracker and stop with it.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use domain::{
    DeviceId, ExecutionState, JobExecution, JobId, JobOperation, JobState, Selection,
    StatusDetails, Timestamp,
};
use mqtt_broker::{BrokerError, BrokerHandle, Message};
use mqtt_codec::{QoS, TopicName};
use serde::Deserialize;
use serde_json::{Value, json};
use store::{ExecutionUpdate, Store, StoreError};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::device_request::{self, Refused, check_request_id, device_of, request_id_of};
use crate::gateway::ArrivalListener;

/// Where devices ask for their pending jobs.
pub const GET_FILTER: &str = "devices/+/jobs/get";

/// Where devices report on an execution.
pub const UPDATE_FILTER: &str = "devices/+/jobs/+/update";

/// Job ids that cannot be used: they name the fixed topics below `devices/{id}/jobs/`.
pub const RESERVED_JOB_IDS: [&str; 3] = ["get", "notify", "response"];

/// The scheduler's pace and limits (`[jobs]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobsConfig {
    /// How often the scheduler wakes (`jobs.tick_ms`).
    pub tick: Duration,
    /// How often continuous jobs are synced with their targets (`jobs.continuous_sync_secs`).
    pub continuous_sync: Duration,
    /// Most executions started per tick over all jobs (`jobs.max_starts_per_tick`).
    pub max_starts_per_tick: u32,
    /// Most running jobs looked at per tick (`jobs.max_jobs_per_tick`).
    pub max_jobs_per_tick: NonZeroU32,
    /// Most executions timed out per tick (`jobs.timeout_batch`).
    pub timeout_batch: NonZeroU32,
    /// Largest device request payload (`jobs.max_request_bytes`).
    pub max_request_bytes: usize,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            tick: Duration::from_secs(1),
            continuous_sync: Duration::from_secs(10),
            max_starts_per_tick: 1000,
            max_jobs_per_tick: NonZeroU32::new(100).unwrap_or(NonZeroU32::MIN),
            timeout_batch: NonZeroU32::new(1000).unwrap_or(NonZeroU32::MIN),
            max_request_bytes: 16 * 1024,
        }
    }
}

/// Why a desired patch was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// The twin could not be read or written now (the store failed); the execution fails with
    /// `twin_unavailable` and the job's retry policy for `failed` applies.
    #[error("the device twin is not available now")]
    Unavailable,
    /// The twin refused the patch (the reason is shown).
    #[error("{0}")]
    Refused(String),
}

/// Applies a desired-patch job's patch to one device's twin.
#[async_trait]
pub trait DesiredPatcher: Send + Sync {
    /// Merges `patch` into `device`'s desired state on behalf of `job`.
    ///
    /// # Errors
    /// [`PatchError`] when it is not applied.
    async fn patch_desired(
        &self,
        device: &DeviceId,
        patch: &Value,
        job: &JobId,
    ) -> Result<(), PatchError>;
}

/// Desired-patch jobs on the device twins: the patch is merged into the device's own desired layer
/// (as `PATCH /api/v1/devices/{id}/twin` would, audited `device.twin.update` by `job:<id>`), and a
/// change of the effective desired state is handed to the twin task, which pushes it to the device.
#[derive(Debug)]
pub struct TwinPatcher {
    /// Where twins live.
    pub store: Arc<dyn Store>,
    /// The twin limits.
    pub policy: domain::TwinPolicy,
    /// The twin task's change channel (`server::twin`).
    pub changes: tokio::sync::mpsc::Sender<DeviceId>,
}

#[async_trait]
impl DesiredPatcher for TwinPatcher {
    async fn patch_desired(
        &self,
        device: &DeviceId,
        patch: &Value,
        job: &JobId,
    ) -> Result<(), PatchError> {
        let update = store::TwinUpdate { desired: Some(patch.clone()), tags: None, if_match: None };
        let m = domain::Mutation {
            actor: domain::Actor { token_id: None, name: format!("job:{}", job.as_str()) },
            at: domain::Timestamp::now(),
        };
        match self.store.update_twin(device, &update, &self.policy, &m).await {
            Ok(Ok(change)) => {
                if change.desired_changed {
                    // The device also gets the delta when it next arrives, should this fail.
                    let _ = self.changes.send(device.clone()).await;
                }
                Ok(())
            }
            Ok(Err(refused)) => Err(PatchError::Refused(refused.to_string())),
            Err(error) => {
                tracing::warn!(device = %device, job = %job.as_str(), %error, "a desired-patch job could not change a twin");
                Err(PatchError::Unavailable)
            }
        }
    }
}

/// What the scheduler and the responder share.
#[derive(Clone)]
pub struct Jobs {
    /// Where jobs live.
    pub store: Arc<dyn Store>,
    /// Where documents and answers are published.
    pub broker: BrokerHandle,
    /// Applies desired-patch jobs.
    pub patcher: Arc<dyn DesiredPatcher>,
    /// Pace and limits.
    pub config: JobsConfig,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs").field("config", &self.config).finish_non_exhaustive()
    }
}

/// Runs the scheduler until `stop` is cancelled.
pub async fn run_scheduler(jobs: Jobs, stop: CancellationToken) {
    let mut interval = tokio::time::interval(jobs.config.tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_sync: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = interval.tick() => {}
        }
        let sync = last_sync.is_none_or(|t| t.elapsed() >= jobs.config.continuous_sync);
        if sync {
            last_sync = Some(tokio::time::Instant::now());
        }
        if let Err(e) = jobs.tick(Timestamp::now(), sync).await {
            tracing::warn!(error = %e, "job scheduler tick failed; retrying next tick");
        }
    }
    tracing::debug!("job scheduler stopped");
}

impl Jobs {
    /// One scheduler pass at `now`; `sync` also syncs continuous jobs with their targets.
    ///
    /// # Errors
    /// A store error; the pass stops there and the next tick carries on.
    pub async fn tick(&self, now: Timestamp, sync: bool) -> Result<(), StoreError> {
        let timed_out = self.store.time_out_executions(now, self.config.timeout_batch).await?;
        for e in &timed_out {
            metrics::counter!("job_executions_timed_out_total").increment(1);
            self.notify(&e.device_id).await;
        }
        if sync {
            self.sync_continuous(now).await?;
        }
        let mut budget = self.config.max_starts_per_tick;
        let mut after: Option<JobId> = None;
        let mut looked_at = 0u32;
        while budget > 0 && looked_at < self.config.max_jobs_per_tick.get() {
            let limit = NonZeroU32::new(self.config.max_jobs_per_tick.get() - looked_at)
                .unwrap_or(NonZeroU32::MIN);
            let page =
                self.store.list_jobs(Some(JobState::InProgress), after.as_ref(), limit).await?;
            for job in &page.items {
                looked_at += 1;
                if budget == 0 {
                    break;
                }
                let started = match self.store.start_next_executions(job.id(), budget, now).await {
                    Ok(started) => started,
                    // Canceled or deleted in between: nothing to start.
                    Err(StoreError::NotFound { .. }) => continue,
                    Err(e) => return Err(e),
                };
                budget = budget.saturating_sub(u32::try_from(started.len()).unwrap_or(u32::MAX));
                metrics::counter!("job_executions_started_total").increment(started.len() as u64);
                for execution in &started {
                    self.deliver(job.spec.operation(), execution).await;
                }
            }
            if !page.has_more {
                break;
            }
            after = page.items.last().map(|j| j.id().clone());
        }
        Ok(())
    }

    /// Gives every running or paused continuous job executions for the devices that joined its
    /// target.
    async fn sync_continuous(&self, now: Timestamp) -> Result<(), StoreError> {
        for state in [JobState::InProgress, JobState::Paused] {
            let mut after: Option<JobId> = None;
            loop {
                let page = self
                    .store
                    .list_jobs(Some(state), after.as_ref(), NonZeroU32::MIN.saturating_add(999))
                    .await?;
                for job in page.items.iter().filter(|j| j.spec.selection() == Selection::Continuous)
                {
                    match self.store.sync_continuous_job(job.id(), now).await {
                        Ok(n) if n > 0 => {
                            tracing::debug!(job = %job.id(), added = n, "continuous job synced");
                        }
                        Ok(_) | Err(StoreError::NotFound { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
                if !page.has_more {
                    break;
                }
                after = page.items.last().map(|j| j.id().clone());
            }
        }
        Ok(())
    }

    /// Delivers an execution that just started.
    async fn deliver(&self, operation: &JobOperation, execution: &JobExecution) {
        match operation {
            JobOperation::Command { .. } => {
                let topic = format!(
                    "devices/{}/jobs/{}",
                    execution.device_id.as_str(),
                    execution.job_id.as_str()
                );
                self.publish(&topic, &document(operation, execution), None).await;
                self.notify(&execution.device_id).await;
            }
            JobOperation::DesiredPatch { patch } => {
                let outcome = self
                    .patcher
                    .patch_desired(&execution.device_id, patch, &execution.job_id)
                    .await;
                let (state, details) = match outcome {
                    Ok(()) => (ExecutionState::Succeeded, json!({"code": "desired_patched"})),
                    Err(PatchError::Unavailable) => {
                        (ExecutionState::Failed, json!({"code": "twin_unavailable"}))
                    }
                    Err(PatchError::Refused(reason)) => {
                        (ExecutionState::Failed, json!({"code": "patch_refused", "reason": reason}))
                    }
                };
                let update = ExecutionUpdate {
                    state,
                    status_details: StatusDetails::new(details).ok(),
                    expected_version: Some(execution.version),
                };
                if let Err(e) = self
                    .store
                    .update_execution(
                        &execution.job_id,
                        &execution.device_id,
                        &update,
                        Timestamp::now(),
                    )
                    .await
                {
                    tracing::warn!(job = %execution.job_id, device = %execution.device_id,
                        error = %e, "could not record a desired-patch execution's outcome");
                }
            }
        }
    }

    /// The device's pending executions as the notify and get payloads list them.
    async fn pending(&self, device: &DeviceId) -> Result<Vec<JobExecution>, StoreError> {
        self.store.device_job_executions(device, true).await
    }

    /// Publishes the device's pending list on `devices/{id}/jobs/notify`.
    pub async fn notify(&self, device: &DeviceId) {
        match self.pending(device).await {
            Ok(pending) => {
                let topic = format!("devices/{}/jobs/notify", device.as_str());
                self.publish(&topic, &json!({"jobs": summaries(&pending)}), None).await;
            }
            Err(e) => tracing::warn!(%device, error = %e, "cannot read a device's pending jobs"),
        }
    }

    /// Publishes the device's pending list when it has pending executions (on arrival: a device
    /// with nothing to do is not disturbed).
    pub async fn notify_if_pending(&self, device: &DeviceId) {
        match self.pending(device).await {
            Ok(pending) if pending.is_empty() => {}
            Ok(pending) => {
                let topic = format!("devices/{}/jobs/notify", device.as_str());
                self.publish(&topic, &json!({"jobs": summaries(&pending)}), None).await;
            }
            Err(e) => tracing::warn!(%device, error = %e, "cannot read a device's pending jobs"),
        }
    }

    async fn publish(&self, topic: &str, payload: &Value, correlation: Option<Bytes>) {
        let Ok(topic) = TopicName::new(topic.to_owned()) else { return };
        let mut message = Message::new(topic, payload.to_string());
        message.qos = QoS::AtLeastOnce;
        message.properties.correlation_data = correlation;
        if let Err(error) = self.broker.publish(message).await {
            tracing::debug!(error = %error, "broker stopped; job message not sent");
        }
    }
}

/// One pending execution as `notify` and `get` list it.
fn summaries(pending: &[JobExecution]) -> Vec<Value> {
    pending
        .iter()
        .map(|e| {
            json!({
                "job_id": e.job_id.as_str(),
                "state": e.state.as_str(),
                "attempt": e.attempt,
                "version": e.version,
            })
        })
        .collect()
}

/// The execution document a device runs.
fn document(operation: &JobOperation, e: &JobExecution) -> Value {
    let operation = match operation {
        JobOperation::Command { name, payload, timeout_secs } => json!({"command": {
            "name": name, "payload": payload, "timeout_secs": timeout_secs,
        }}),
        JobOperation::DesiredPatch { patch } => json!({"desired_patch": patch}),
    };
    json!({
        "job_id": e.job_id.as_str(),
        "state": e.state.as_str(),
        "operation": operation,
        "attempt": e.attempt,
        "version": e.version,
        "status_details": e.status_details.to_json(),
    })
}

/// The broker subscriptions of the device responder.
#[derive(Debug)]
pub struct JobFeeds {
    get: mpsc::Receiver<Arc<Message>>,
    update: mpsc::Receiver<Arc<Message>>,
}

impl JobFeeds {
    /// Subscribes to both request topics; requests published before are not seen.
    ///
    /// # Errors
    /// [`BrokerError::Stopped`] when the broker task has stopped.
    pub async fn subscribe(broker: &BrokerHandle) -> Result<Self, BrokerError> {
        Ok(Self {
            get: device_request::subscribe(broker, GET_FILTER).await?,
            update: device_request::subscribe(broker, UPDATE_FILTER).await?,
        })
    }
}

/// Answers devices' job requests and sends arriving devices their pending list, until the broker
/// stops or `stop` is cancelled.
pub async fn serve_devices(
    mut feeds: JobFeeds,
    mut arrivals: ArrivalListener,
    jobs: Jobs,
    stop: CancellationToken,
) {
    let (mut get_open, mut update_open, mut arrivals_open) = (true, true, true);
    while get_open || update_open {
        tokio::select! {
            () = stop.cancelled() => break,
            m = feeds.get.recv(), if get_open => match m {
                Some(m) => jobs.answer_get(&m).await,
                None => get_open = false,
            },
            m = feeds.update.recv(), if update_open => match m {
                Some(m) => jobs.answer_update(&m).await,
                None => update_open = false,
            },
            d = arrivals.next(), if arrivals_open => match d {
                Some(device) => jobs.notify_if_pending(&device).await,
                None => arrivals_open = false,
            },
        }
    }
    tracing::debug!("job responder stopped");
}

impl From<StoreError> for Refused {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { kind, id } => {
                Self::new("not_found", format!("{kind} {id} not found"))
            }
            StoreError::VersionMismatch { expected, current } => Self::new(
                "version_mismatch",
                format!("expected_version is {expected} but the execution is at {current}"),
            ),
            StoreError::Conflict(message) => Self::new("illegal_transition", message),
            e => {
                tracing::error!(error = %e, "job request failed: store error");
                Self::new("unavailable", "the server cannot answer now; retry later")
            }
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GetRequest {
    #[serde(default)]
    request_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateRequest {
    #[serde(default)]
    request_id: Option<String>,
    status: String,
    #[serde(default)]
    status_details: Option<Value>,
    #[serde(default)]
    expected_version: Option<u64>,
}

impl Jobs {
    fn parse<T: serde::de::DeserializeOwned>(&self, payload: &[u8]) -> Result<T, Refused> {
        device_request::parse(payload, self.config.max_request_bytes)
    }

    async fn respond(&self, device: &DeviceId, request: &Message, answer: &Value) {
        device_request::respond(&self.broker, device, request, "jobs/response", answer).await;
    }

    async fn answer_get(&self, message: &Message) {
        let Some(device) = device_of(message) else { return };
        let request_id = request_id_of(&message.payload);
        let answer = match self.get(&device, &message.payload).await {
            Ok(mut answer) => {
                answer["request_id"] = request_id;
                answer
            }
            Err(refused) => error_answer(&device, request_id, &refused),
        };
        self.respond(&device, message, &answer).await;
    }

    async fn get(&self, device: &DeviceId, payload: &[u8]) -> Result<Value, Refused> {
        let request: GetRequest = self.parse(payload)?;
        check_request_id(request.request_id.as_deref())?;
        let pending = self.pending(device).await?;
        let mut documents = Vec::new();
        let mut specs = HashMap::new();
        for e in pending.iter().filter(|e| e.state == ExecutionState::InProgress) {
            if !specs.contains_key(&e.job_id) {
                let job = self.store.job(&e.job_id).await?;
                specs.insert(e.job_id.clone(), job.map(|j| j.spec.operation().clone()));
            }
            if let Some(Some(operation)) = specs.get(&e.job_id) {
                documents.push(document(operation, e));
            }
        }
        Ok(json!({"status": "ok", "jobs": summaries(&pending), "documents": documents}))
    }

    async fn answer_update(&self, message: &Message) {
        let Some(device) = device_of(message) else { return };
        // `devices/{id}/jobs/{job_id}/update`
        let job = message.topic.as_str().split('/').nth(3).map(str::to_owned).unwrap_or_default();
        let request_id = request_id_of(&message.payload);
        let (answer, changed) = match self.update(&device, &job, &message.payload).await {
            Ok((mut answer, changed)) => {
                answer["request_id"] = request_id;
                (answer, changed)
            }
            Err(refused) => (error_answer(&device, request_id, &refused), false),
        };
        self.respond(&device, message, &answer).await;
        // The answer first, then the new pending list.
        if changed {
            self.notify(&device).await;
        }
    }

    /// Applies a device's report; returns the answer and whether the pending list changed.
    async fn update(
        &self,
        device: &DeviceId,
        job: &str,
        payload: &[u8],
    ) -> Result<(Value, bool), Refused> {
        let request: UpdateRequest = self.parse(payload)?;
        check_request_id(request.request_id.as_deref())?;
        let job = JobId::new(job)
            .map_err(|_| Refused::new("not_found", format!("job {job} not found")))?;
        let state = match request.status.as_str() {
            "in_progress" => ExecutionState::InProgress,
            "succeeded" => ExecutionState::Succeeded,
            "failed" => ExecutionState::Failed,
            "rejected" => ExecutionState::Rejected,
            other => {
                return Err(Refused::new(
                    "invalid_status",
                    format!(
                        "status must be in_progress, succeeded, failed or rejected, got {other:?}"
                    ),
                ));
            }
        };
        let status_details = request
            .status_details
            .map(StatusDetails::new)
            .transpose()
            .map_err(|e| Refused::new("invalid_request", format!("status_details: {e}")))?;
        let update =
            ExecutionUpdate { state, status_details, expected_version: request.expected_version };
        let updated = self.store.update_execution(&job, device, &update, Timestamp::now()).await?;
        let e = &updated.execution;
        let changed = e.state != ExecutionState::InProgress;
        let answer = json!({
            "status": "ok",
            "job_id": e.job_id.as_str(),
            "execution": {
                "state": e.state.as_str(),
                "attempt": e.attempt,
                "version": e.version,
                "retried": updated.retried,
            },
            "job_state": updated.job.state.as_str(),
        });
        Ok((answer, changed))
    }
}

fn error_answer(device: &DeviceId, request_id: Value, refused: &Refused) -> Value {
    metrics::counter!("job_requests_refused_total", "reason" => refused.code).increment(1);
    tracing::debug!(%device, code = refused.code, message = %refused.message, "job request refused");
    refused.answer(request_id)
}
