//! Fleet jobs in `jobs` and `job_executions` (migration 0012).
//!
//! Every change runs in one write transaction under the writer advisory lock (`audit::begin_write`),
//! which also serializes the read-modify-write of a job's counters across connections and nodes.
//! The rules (transitions, retries, abort, completion) are `domain::job`'s and `store::jobs`'; this
//! module reads and writes rows.
//!
//! A target is resolved once per statement set into a [`Resolved`] target (the group looked up),
//! and [`push_target`] writes it as one SQL condition over `devices d`: the same condition drives
//! the `INSERT … SELECT` that creates a job's executions, the dry run ([`preview`],
//! [`target_ids`]) and the single-device probe of [`add_for`].

use std::num::NonZeroU32;

use domain::{
    Actor, DeviceId, ExecutionState, Filter, GroupName, Job, JobAction, JobCounters, JobExecution,
    JobId, JobSpec, JobState, JobTarget, LifecycleState, Mutation, NewAuditRecord, RolloutWindow,
    Selection, StatusDetails, Timestamp,
};
use sqlx::{PgConnection, PgPool, Postgres, QueryBuilder, Transaction};
use store::jobs::{
    IN_SERVICE, MAX_PREVIEW_DYNAMIC_GROUPS, MAX_PREVIEW_GROUPS, MAX_PREVIEW_SAMPLE, apply_action,
    execution_not_found, job_not_found, job_resource, job_summary, new_job, plan_execution_update,
    settle, spec_from_json, spec_to_json,
};
use store::{
    ExecutionUpdate, ExecutionUpdated, MAX_PAGE_SIZE, Page, StoreError, StoreResult, TargetPreview,
};

use crate::audit::{self, begin_write};
use crate::error::{PostgresError, db};
use crate::filter_sql;

const JOB_COLUMNS: &str = "id, spec_json, state, created_at, updated_at, version, queued, \
     in_progress, succeeded, failed, rejected, timed_out, canceled, removed, window_start, \
     window_started, aborted_by";

#[derive(sqlx::FromRow)]
struct JobRow {
    id: String,
    spec_json: String,
    state: String,
    created_at: i64,
    updated_at: i64,
    version: i64,
    queued: i64,
    in_progress: i64,
    succeeded: i64,
    failed: i64,
    rejected: i64,
    timed_out: i64,
    canceled: i64,
    removed: i64,
    window_start: Option<i64>,
    window_started: i64,
    aborted_by: Option<i64>,
}

const EXECUTION_COLUMNS: &str = "job_id, device_id, state, attempt, not_before, started_at, \
     timeout_at, created_at, updated_at, version, status_details";

#[derive(sqlx::FromRow)]
struct ExecutionRow {
    job_id: String,
    device_id: String,
    state: String,
    attempt: i64,
    not_before: i64,
    started_at: Option<i64>,
    timeout_at: Option<i64>,
    created_at: i64,
    updated_at: i64,
    version: i64,
    status_details: String,
}

fn corrupt(what: &'static str, key: &str, reason: &str) -> StoreError {
    PostgresError::corrupt(what, &format!("{key}: {reason}"))
}

fn to_i64(what: &'static str, value: u64) -> StoreResult<i64> {
    i64::try_from(value).map_err(|_| StoreError::backend(PostgresError::OutOfRange { what, value }))
}

fn job_from_row(r: &JobRow) -> StoreResult<Job> {
    let bad = |reason: &str| corrupt("job", &r.id, reason);
    let count = |v: i64| u64::try_from(v).map_err(|_| bad(&format!("negative count {v}")));
    let spec = spec_from_json(&r.spec_json).map_err(|e| bad(&e))?;
    let state = JobState::parse(&r.state).map_err(|e| bad(&e.to_string()))?;
    let counters = JobCounters {
        queued: count(r.queued)?,
        in_progress: count(r.in_progress)?,
        succeeded: count(r.succeeded)?,
        failed: count(r.failed)?,
        rejected: count(r.rejected)?,
        timed_out: count(r.timed_out)?,
        canceled: count(r.canceled)?,
        removed: count(r.removed)?,
    };
    Ok(Job {
        spec,
        state,
        counters,
        created_at: Timestamp::from_millis(r.created_at),
        updated_at: Timestamp::from_millis(r.updated_at),
        version: count(r.version)?,
        rollout_window: r.window_start.map(|start| RolloutWindow {
            start: Timestamp::from_millis(start),
            started: u64::try_from(r.window_started).unwrap_or(0),
        }),
        aborted_by: r.aborted_by.and_then(|i| usize::try_from(i).ok()),
    })
}

fn execution_from_row(r: &ExecutionRow) -> StoreResult<JobExecution> {
    let key = format!("{}/{}", r.job_id, r.device_id);
    let bad = |reason: &str| corrupt("job execution", &key, reason);
    let details = match serde_json::from_str(&r.status_details) {
        Ok(serde_json::Value::Object(map)) => StatusDetails::from_stored(map),
        _ => return Err(bad("status details are not a JSON object")),
    };
    Ok(JobExecution {
        job_id: JobId::new(r.job_id.clone()).map_err(|e| bad(&e.to_string()))?,
        device_id: DeviceId::new(r.device_id.clone()).map_err(|e| bad(&e.to_string()))?,
        state: ExecutionState::parse(&r.state).map_err(|e| bad(&e.to_string()))?,
        attempt: u32::try_from(r.attempt).map_err(|_| bad(&format!("attempt {}", r.attempt)))?,
        not_before: Timestamp::from_millis(r.not_before),
        started_at: r.started_at.map(Timestamp::from_millis),
        timeout_at: r.timeout_at.map(Timestamp::from_millis),
        created_at: Timestamp::from_millis(r.created_at),
        updated_at: Timestamp::from_millis(r.updated_at),
        version: u64::try_from(r.version).map_err(|_| bad(&format!("version {}", r.version)))?,
        status_details: details,
    })
}

/// A target with its group looked up: what [`push_target`] writes as SQL.
#[derive(Debug, Clone)]
enum Resolved {
    /// Every device (in service): a fleet profile's reach, for its dry run.
    InService,
    /// Listed device ids.
    Devices(Vec<String>),
    /// The explicit members of the static group with this `device_groups.id`.
    StaticGroup(i64),
    /// A filter target, or a dynamic group's filter.
    Filter(Filter),
}

/// Appends the condition over `devices d` that a resolved target means: devices in service among
/// those it names.
fn push_target(qb: &mut QueryBuilder<Postgres>, target: &Resolved) {
    let states: Vec<&str> = IN_SERVICE.iter().map(|s| s.as_str()).collect();
    qb.push("d.state = ANY(").push_bind(states).push(")");
    match target {
        Resolved::InService => {}
        Resolved::Devices(ids) => {
            qb.push(" AND d.id = ANY(").push_bind(ids.clone()).push(")");
        }
        Resolved::StaticGroup(key) => {
            qb.push(" AND d.id IN (SELECT device_id FROM group_members WHERE group_id = ")
                .push_bind(*key)
                .push(")");
        }
        Resolved::Filter(f) => {
            qb.push(" AND ");
            filter_sql::push_condition(qb, f);
        }
    }
}

/// Resolves `target`; `None` when its group does not exist (no device is in it). Listed devices
/// that do not exist simply match nothing here.
async fn target_of(conn: &mut PgConnection, target: &JobTarget) -> StoreResult<Option<Resolved>> {
    Ok(Some(match target {
        JobTarget::Devices(ids) => {
            Resolved::Devices(ids.iter().map(|d| d.as_str().to_owned()).collect())
        }
        JobTarget::Filter(f) => Resolved::Filter(f.clone()),
        JobTarget::Group(name) => {
            let row: Option<(i64, Option<String>)> =
                sqlx::query_as("SELECT id, filter FROM device_groups WHERE name = $1")
                    .bind(name.as_str())
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(db)?;
            match row {
                None => return Ok(None),
                Some((key, None)) => Resolved::StaticGroup(key),
                Some((_, Some(filter))) => Resolved::Filter(
                    Filter::parse(&filter)
                        .map_err(|e| corrupt("group filter", name.as_str(), &e.to_string()))?,
                ),
            }
        }
    }))
}

/// [`target_of`] for a new job or a dry run: an unknown group, or the first unknown device of a
/// list (in id order), is [`StoreError::NotFound`].
async fn resolve(conn: &mut PgConnection, target: &JobTarget) -> StoreResult<Resolved> {
    if let JobTarget::Devices(ids) = target {
        let list: Vec<&str> = ids.iter().map(DeviceId::as_str).collect();
        let missing: Option<String> = sqlx::query_scalar(
            "SELECT x FROM unnest($1::text[]) AS x \
             WHERE NOT EXISTS (SELECT 1 FROM devices WHERE id = x) ORDER BY x COLLATE \"C\" LIMIT 1",
        )
        .bind(list)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db)?;
        if let Some(id) = missing {
            return Err(StoreError::NotFound { kind: "device", id });
        }
    }
    target_of(conn, target).await?.ok_or_else(|| match target {
        JobTarget::Group(name) => group_not_found(name),
        _ => StoreError::Conflict("the target has no condition".to_owned()),
    })
}

fn group_not_found(name: &GroupName) -> StoreError {
    StoreError::NotFound { kind: "group", id: name.to_string() }
}

/// `head`, the target's condition, then nothing: the caller pushes the rest.
fn with_target(head: &str, target: &Resolved) -> QueryBuilder<Postgres> {
    let mut qb = QueryBuilder::new(head);
    push_target(&mut qb, target);
    qb
}

pub(crate) async fn create(pool: &PgPool, spec: &JobSpec, m: &Mutation) -> StoreResult<Job> {
    let mut job = new_job(spec, m.at);
    let mut tx = begin_write(pool).await?;
    let inserted = sqlx::query(
        "INSERT INTO jobs (id, spec_json, state, continuous, created_at, updated_at, version) \
         VALUES ($1, $2, $3, $4, $5, $5, 1) ON CONFLICT (id) DO NOTHING",
    )
    .bind(spec.id().as_str())
    .bind(spec_to_json(spec).to_string())
    .bind(job.state.as_str())
    .bind(spec.selection() == Selection::Continuous)
    .bind(m.at.millis())
    .execute(&mut *tx)
    .await
    .map_err(db)?
    .rows_affected();
    if inserted != 1 {
        return Err(StoreError::AlreadyExists { kind: "job", id: spec.id().to_string() });
    }
    let target = resolve(&mut tx, spec.target()).await?;
    let mut qb = QueryBuilder::new(
        "INSERT INTO job_executions (job_id, device_id, state, attempt, not_before, created_at, \
         updated_at, version, status_details) SELECT ",
    );
    qb.push_bind(spec.id().as_str().to_owned())
        .push(", d.id, 'queued', 1, ")
        .push_bind(m.at.millis())
        .push(", ")
        .push_bind(m.at.millis())
        .push(", ")
        .push_bind(m.at.millis())
        .push(", 1, '{}' FROM devices d WHERE ");
    push_target(&mut qb, &target);
    let done = qb.build().persistent(false).execute(&mut *tx).await.map_err(db)?;
    job.counters = job.counters.add(ExecutionState::Queued, done.rows_affected());
    job.state = settle(&job);
    write_job(&mut tx, &job).await?;
    let mut after = job_summary(&job);
    if let Some(obj) = after.as_object_mut() {
        obj.insert("spec".to_owned(), spec_to_json(spec));
        obj.insert("executions".to_owned(), job.counters.total().into());
    }
    let record = audit::record(m, "job.create", job_resource(spec.id()), None, Some(after));
    audit::append_and_commit(tx, &record).await?;
    Ok(job)
}

pub(crate) async fn get(conn: &mut PgConnection, id: &JobId) -> StoreResult<Option<Job>> {
    let row: Option<JobRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"
    )))
    .bind(id.as_str())
    .fetch_optional(&mut *conn)
    .await
    .map_err(db)?;
    row.as_ref().map(job_from_row).transpose()
}

async fn get_existing(conn: &mut PgConnection, id: &JobId) -> StoreResult<Job> {
    get(conn, id).await?.ok_or_else(|| job_not_found(id))
}

pub(crate) async fn list(
    pool: &PgPool,
    state: Option<JobState>,
    after: Option<&JobId>,
    limit: NonZeroU32,
) -> StoreResult<Page<Job>> {
    let limit = limit.get().min(MAX_PAGE_SIZE);
    let rows: Vec<JobRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE ($1::text IS NULL OR state = $1) AND id > $2 \
         ORDER BY id LIMIT $3"
    )))
    .bind(state.map(JobState::as_str))
    .bind(after.map_or("", JobId::as_str))
    .bind(i64::from(limit) + 1)
    .fetch_all(pool)
    .await
    .map_err(db)?;
    let mut items = rows.iter().map(job_from_row).collect::<StoreResult<Vec<_>>>()?;
    let has_more = items.len() > limit as usize;
    items.truncate(limit as usize);
    Ok(Page { items, has_more })
}

async fn get_execution(
    conn: &mut PgConnection,
    job: &JobId,
    device: &DeviceId,
) -> StoreResult<Option<JobExecution>> {
    let row: Option<ExecutionRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {EXECUTION_COLUMNS} FROM job_executions WHERE job_id = $1 AND device_id = $2"
    )))
    .bind(job.as_str())
    .bind(device.as_str())
    .fetch_optional(&mut *conn)
    .await
    .map_err(db)?;
    row.as_ref().map(execution_from_row).transpose()
}

pub(crate) async fn executions(
    pool: &PgPool,
    job: &JobId,
    state: Option<ExecutionState>,
    after: Option<&DeviceId>,
    limit: NonZeroU32,
) -> StoreResult<Page<JobExecution>> {
    let mut conn = pool.acquire().await.map_err(db)?;
    get_existing(&mut conn, job).await?;
    let limit = limit.get().min(MAX_PAGE_SIZE);
    let rows: Vec<ExecutionRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {EXECUTION_COLUMNS} FROM job_executions WHERE job_id = $1 \
         AND ($2::text IS NULL OR state = $2) AND device_id > $3 ORDER BY device_id LIMIT $4"
    )))
    .bind(job.as_str())
    .bind(state.map(ExecutionState::as_str))
    .bind(after.map_or("", DeviceId::as_str))
    .bind(i64::from(limit) + 1)
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    let mut items = rows.iter().map(execution_from_row).collect::<StoreResult<Vec<_>>>()?;
    let has_more = items.len() > limit as usize;
    items.truncate(limit as usize);
    Ok(Page { items, has_more })
}

pub(crate) async fn device_executions(
    pool: &PgPool,
    device: &DeviceId,
    pending_only: bool,
) -> StoreResult<Vec<JobExecution>> {
    let columns =
        EXECUTION_COLUMNS.split(", ").map(|c| format!("e.{c}")).collect::<Vec<_>>().join(", ");
    let rows: Vec<ExecutionRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {columns} FROM job_executions e JOIN jobs j ON j.id = e.job_id \
         WHERE e.device_id = $1 AND (NOT $2 OR e.state IN ('queued', 'in_progress')) \
         ORDER BY j.created_at, e.job_id LIMIT $3"
    )))
    .bind(device.as_str())
    .bind(pending_only)
    .bind(i64::from(MAX_PAGE_SIZE))
    .fetch_all(pool)
    .await
    .map_err(db)?;
    rows.iter().map(execution_from_row).collect()
}

pub(crate) async fn start_next(
    pool: &PgPool,
    id: &JobId,
    max: u32,
    now: Timestamp,
) -> StoreResult<Vec<JobExecution>> {
    let mut tx = begin_write(pool).await?;
    let mut job = get_existing(&mut tx, id).await?;
    if job.state != JobState::InProgress || max == 0 {
        return Ok(Vec::new());
    }
    let (allowed, mut window) = job.spec.rollout().allowance(
        job.created_at,
        job.rollout_window,
        job.counters.succeeded,
        now,
    );
    let n = allowed.min(u64::from(max));
    if n == 0 {
        return Ok(Vec::new());
    }
    let timeout_at = job.spec.timeout_at(now).map(Timestamp::millis);
    let rows: Vec<ExecutionRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE job_executions SET state = 'in_progress', started_at = $1, timeout_at = $2, \
         updated_at = $1, version = version + 1 \
         WHERE job_id = $3 AND device_id IN (SELECT device_id FROM job_executions \
         WHERE job_id = $3 AND state = 'queued' AND not_before <= $1 ORDER BY device_id LIMIT $4) \
         RETURNING {EXECUTION_COLUMNS}"
    )))
    .bind(now.millis())
    .bind(timeout_at)
    .bind(id.as_str())
    .bind(to_i64("start count", n)?)
    .fetch_all(&mut *tx)
    .await
    .map_err(db)?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let mut started = rows.iter().map(execution_from_row).collect::<StoreResult<Vec<_>>>()?;
    started.sort_by(|a, b| a.device_id.cmp(&b.device_id));
    let k = started.len() as u64;
    job.counters = job.counters.transition(ExecutionState::Queued, ExecutionState::InProgress, k);
    window.started += k;
    job.rollout_window = Some(window);
    write_job(&mut tx, &job).await?;
    tx.commit().await.map_err(db)?;
    Ok(started)
}

pub(crate) async fn update_execution(
    pool: &PgPool,
    job: &JobId,
    device: &DeviceId,
    update: &ExecutionUpdate,
    now: Timestamp,
) -> StoreResult<ExecutionUpdated> {
    let mut tx = begin_write(pool).await?;
    let (updated, record) = apply_update(&mut tx, job, device, update, now).await?;
    commit_with(tx, record.into_iter().collect()).await?;
    Ok(updated)
}

/// Commits `tx` after appending `records` to the audit chain.
async fn commit_with(
    mut tx: Transaction<'static, Postgres>,
    records: Vec<NewAuditRecord>,
) -> StoreResult<()> {
    for r in &records {
        audit::append(&mut tx, r).await?;
    }
    tx.commit().await.map_err(db)
}

/// One execution update inside `tx`; returns what it did and the audit record of an abort.
async fn apply_update(
    tx: &mut Transaction<'static, Postgres>,
    job_id: &JobId,
    device: &DeviceId,
    update: &ExecutionUpdate,
    now: Timestamp,
) -> StoreResult<(ExecutionUpdated, Option<NewAuditRecord>)> {
    let mut job = get_existing(tx, job_id).await?;
    let current = get_execution(tx, job_id, device)
        .await?
        .ok_or_else(|| execution_not_found(job_id, device))?;
    let plan = plan_execution_update(&job, &current, update, now)?;
    write_execution(tx, &plan.execution).await?;
    job.counters = plan.counters;
    let mut record = None;
    if let Some(criterion) = plan.abort {
        let before = job_summary(&job);
        let n = cancel_queued(tx, job_id, now).await?;
        job.counters = job.counters.transition(ExecutionState::Queued, ExecutionState::Canceled, n);
        job.state = JobState::Aborted;
        job.aborted_by = Some(criterion);
        job.version += 1;
        job.updated_at = now;
        let mut after = job_summary(&job);
        if let Some(obj) = after.as_object_mut() {
            obj.insert("abort_criterion".to_owned(), criterion.into());
        }
        let system = Mutation { actor: Actor::system(), at: now };
        record = Some(audit::record(
            &system,
            "job.abort",
            job_resource(job_id),
            Some(before),
            Some(after),
        ));
    }
    settle_and_write(tx, &mut job, now).await?;
    let execution = if plan.abort.is_some() {
        get_execution(tx, job_id, device)
            .await?
            .ok_or_else(|| execution_not_found(job_id, device))?
    } else {
        plan.execution
    };
    Ok((ExecutionUpdated { execution, retried: plan.retried, job }, record))
}

/// Moves the job to the state its counters settle it in (completion), then writes it.
async fn settle_and_write(
    conn: &mut PgConnection,
    job: &mut Job,
    now: Timestamp,
) -> StoreResult<()> {
    let settled = settle(job);
    if settled != job.state {
        job.state = settled;
        job.version += 1;
        job.updated_at = now;
    }
    write_job(conn, job).await
}

pub(crate) async fn time_out(
    pool: &PgPool,
    now: Timestamp,
    limit: NonZeroU32,
) -> StoreResult<Vec<JobExecution>> {
    let mut tx = begin_write(pool).await?;
    let due: Vec<(String, String)> = sqlx::query_as(
        "SELECT job_id, device_id FROM job_executions \
         WHERE state = 'in_progress' AND timeout_at IS NOT NULL AND timeout_at <= $1 \
         ORDER BY timeout_at, job_id, device_id LIMIT $2",
    )
    .bind(now.millis())
    .bind(i64::from(limit.get().min(MAX_PAGE_SIZE)))
    .fetch_all(&mut *tx)
    .await
    .map_err(db)?;
    if due.is_empty() {
        return Ok(Vec::new());
    }
    let update = ExecutionUpdate {
        state: ExecutionState::TimedOut,
        status_details: None,
        expected_version: None,
    };
    let mut out = Vec::with_capacity(due.len());
    let mut records = Vec::new();
    for (job, device) in due {
        let key = format!("{job}/{device}");
        let job = JobId::new(job).map_err(|e| corrupt("job execution", &key, &e.to_string()))?;
        let device =
            DeviceId::new(device).map_err(|e| corrupt("job execution", &key, &e.to_string()))?;
        let (updated, record) = apply_update(&mut tx, &job, &device, &update, now).await?;
        out.push(updated.execution);
        records.extend(record);
    }
    commit_with(tx, records).await?;
    Ok(out)
}

pub(crate) async fn set_state(
    pool: &PgPool,
    id: &JobId,
    action: JobAction,
    m: &Mutation,
) -> StoreResult<Job> {
    let mut tx = begin_write(pool).await?;
    let mut job = get_existing(&mut tx, id).await?;
    let to = apply_action(job.state, action)?;
    if to == job.state {
        return Ok(job);
    }
    let before = job_summary(&job);
    if matches!(action, JobAction::Cancel | JobAction::Abort) {
        let n = cancel_queued(&mut tx, id, m.at).await?;
        job.counters = job.counters.transition(ExecutionState::Queued, ExecutionState::Canceled, n);
    }
    job.state = to;
    job.version += 1;
    job.updated_at = m.at;
    settle_and_write(&mut tx, &mut job, m.at).await?;
    let action_name = format!("job.{}", action.as_str());
    let record =
        audit::record(m, &action_name, job_resource(id), Some(before), Some(job_summary(&job)));
    audit::append_and_commit(tx, &record).await?;
    Ok(job)
}

pub(crate) async fn add_for(
    pool: &PgPool,
    device: &DeviceId,
    now: Timestamp,
) -> StoreResult<Vec<JobExecution>> {
    let mut tx = begin_write(pool).await?;
    let rows: Vec<JobRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {JOB_COLUMNS} FROM jobs \
         WHERE continuous AND state IN ('in_progress', 'paused') ORDER BY id"
    )))
    .fetch_all(&mut *tx)
    .await
    .map_err(db)?;
    let mut created = Vec::new();
    for row in rows {
        let mut job = job_from_row(&row)?;
        let Some(target) = target_of(&mut tx, job.spec.target()).await? else { continue };
        let id = job.id().as_str().to_owned();
        let mut qb = QueryBuilder::new(
            "INSERT INTO job_executions (job_id, device_id, state, attempt, not_before, \
             created_at, updated_at, version, status_details) SELECT ",
        );
        qb.push_bind(id.clone())
            .push(", d.id, 'queued', 1, ")
            .push_bind(now.millis())
            .push(", ")
            .push_bind(now.millis())
            .push(", ")
            .push_bind(now.millis())
            .push(", 1, '{}' FROM devices d WHERE d.id = ")
            .push_bind(device.as_str().to_owned())
            .push(" AND ");
        push_target(&mut qb, &target);
        qb.push(" ON CONFLICT (job_id, device_id) DO NOTHING");
        let done = qb.build().persistent(false).execute(&mut *tx).await.map_err(db)?;
        if done.rows_affected() == 0 {
            continue;
        }
        job.counters = job.counters.add(ExecutionState::Queued, done.rows_affected());
        write_job(&mut tx, &job).await?;
        created.extend(get_execution(&mut tx, job.id(), device).await?);
    }
    if created.is_empty() {
        return Ok(created);
    }
    tx.commit().await.map_err(db)?;
    Ok(created)
}

pub(crate) async fn sync_continuous(pool: &PgPool, id: &JobId, now: Timestamp) -> StoreResult<u64> {
    let mut tx = begin_write(pool).await?;
    let mut job = get_existing(&mut tx, id).await?;
    if job.spec.selection() != Selection::Continuous
        || !matches!(job.state, JobState::InProgress | JobState::Paused)
    {
        return Ok(0);
    }
    let Some(target) = target_of(&mut tx, job.spec.target()).await? else { return Ok(0) };
    let mut qb = QueryBuilder::new(
        "INSERT INTO job_executions (job_id, device_id, state, attempt, not_before, \
         created_at, updated_at, version, status_details) SELECT ",
    );
    qb.push_bind(id.as_str().to_owned())
        .push(", d.id, 'queued', 1, ")
        .push_bind(now.millis())
        .push(", ")
        .push_bind(now.millis())
        .push(", ")
        .push_bind(now.millis())
        .push(", 1, '{}' FROM devices d WHERE ");
    push_target(&mut qb, &target);
    qb.push(" ON CONFLICT (job_id, device_id) DO NOTHING");
    let done = qb.build().persistent(false).execute(&mut *tx).await.map_err(db)?;
    let n = done.rows_affected();
    if n == 0 {
        return Ok(0);
    }
    job.counters = job.counters.add(ExecutionState::Queued, n);
    write_job(&mut tx, &job).await?;
    tx.commit().await.map_err(db)?;
    Ok(n)
}

pub(crate) async fn remove_for(
    pool: &PgPool,
    device: &DeviceId,
    now: Timestamp,
) -> StoreResult<Vec<JobExecution>> {
    let mut tx = begin_write(pool).await?;
    let state: Option<String> = sqlx::query_scalar("SELECT state FROM devices WHERE id = $1")
        .bind(device.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
    let in_service = state.is_some_and(|st| IN_SERVICE.iter().any(|s| s.as_str() == st));
    let rows: Vec<ExecutionRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {EXECUTION_COLUMNS} FROM job_executions \
         WHERE device_id = $1 AND state IN ('queued', 'in_progress') ORDER BY job_id"
    )))
    .bind(device.as_str())
    .fetch_all(&mut *tx)
    .await
    .map_err(db)?;
    let mut removed = Vec::new();
    for row in rows {
        let mut execution = execution_from_row(&row)?;
        let mut job = get_existing(&mut tx, &execution.job_id).await?;
        let leaves = if !in_service {
            true
        } else if job.spec.selection() == Selection::Continuous
            && execution.state == ExecutionState::Queued
        {
            !matches_target(&mut tx, job.spec.target(), device).await?
        } else {
            false
        };
        if !leaves {
            continue;
        }
        job.counters = job.counters.transition(execution.state, ExecutionState::Removed, 1);
        execution.state = ExecutionState::Removed;
        execution.timeout_at = None;
        execution.updated_at = now;
        execution.version += 1;
        write_execution(&mut tx, &execution).await?;
        settle_and_write(&mut tx, &mut job, now).await?;
        removed.push(execution);
    }
    if removed.is_empty() {
        return Ok(removed);
    }
    tx.commit().await.map_err(db)?;
    Ok(removed)
}

/// Whether `device` is in the set `target` resolves to now.
async fn matches_target(
    conn: &mut PgConnection,
    target: &JobTarget,
    device: &DeviceId,
) -> StoreResult<bool> {
    let Some(target) = target_of(conn, target).await? else { return Ok(false) };
    let mut qb = QueryBuilder::new("SELECT 1 FROM devices d WHERE d.id = ");
    qb.push_bind(device.as_str().to_owned()).push(" AND ");
    push_target(&mut qb, &target);
    let hit = qb.build().persistent(false).fetch_optional(&mut *conn).await.map_err(db)?;
    Ok(hit.is_some())
}

/// The dry run of `target`; `None` previews every device in service (a fleet profile's reach).
pub(crate) async fn preview(
    pool: &PgPool,
    target: Option<&JobTarget>,
    sample: u32,
) -> StoreResult<TargetPreview> {
    let mut tx = pool.begin().await.map_err(db)?;
    // One snapshot for every count.
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    let target = match target {
        Some(target) => resolve(&mut tx, target).await?,
        None => Resolved::InService,
    };
    let mut qb = with_target("SELECT d.state, count(*) FROM devices d WHERE ", &target);
    qb.push(" GROUP BY d.state");
    let counts: Vec<(String, i64)> =
        qb.build_query_as().persistent(false).fetch_all(&mut *tx).await.map_err(db)?;
    let mut by_state = Vec::new();
    for st in LifecycleState::ALL {
        if let Some((_, n)) = counts.iter().find(|(name, _)| name == st.as_str()) {
            by_state.push((st, u64::try_from(*n).unwrap_or(0)));
        }
    }
    let total: u64 = by_state.iter().map(|(_, n)| n).sum();

    let mut qb = with_target("SELECT count(*) FROM devices d WHERE ", &target);
    qb.push(
        " AND EXISTS (SELECT 1 FROM device_presence p WHERE p.device_id = d.id AND p.connected)",
    );
    let online: i64 =
        qb.build_query_scalar().persistent(false).fetch_one(&mut *tx).await.map_err(db)?;
    let online = u64::try_from(online).unwrap_or(0);

    let mut qb = with_target("SELECT d.id FROM devices d WHERE ", &target);
    qb.push(" ORDER BY d.id LIMIT ").push_bind(i64::from(sample.min(MAX_PREVIEW_SAMPLE)));
    let ids: Vec<String> =
        qb.build_query_scalar().persistent(false).fetch_all(&mut *tx).await.map_err(db)?;
    let sample = ids.iter().map(String::as_str).map(device_id).collect::<StoreResult<Vec<_>>>()?;

    let mut qb = with_target(
        "SELECT g.name, count(*) FROM group_members gm JOIN device_groups g ON g.id = gm.group_id \
         WHERE gm.device_id IN (SELECT d.id FROM devices d WHERE ",
        &target,
    );
    qb.push(") GROUP BY g.name");
    let mut groups: Vec<(String, i64)> =
        qb.build_query_as().persistent(false).fetch_all(&mut *tx).await.map_err(db)?;
    let dynamic: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, filter FROM device_groups WHERE kind = 'dynamic' ORDER BY name LIMIT $1",
    )
    .bind(i64::try_from(MAX_PREVIEW_DYNAMIC_GROUPS + 1).unwrap_or(i64::MAX))
    .fetch_all(&mut *tx)
    .await
    .map_err(db)?;
    let mut truncated = dynamic.len() > MAX_PREVIEW_DYNAMIC_GROUPS;
    for (name, filter) in dynamic.into_iter().take(MAX_PREVIEW_DYNAMIC_GROUPS) {
        let f =
            Filter::parse(&filter).map_err(|e| corrupt("group filter", &name, &e.to_string()))?;
        let mut qb = with_target("SELECT count(*) FROM devices d WHERE ", &target);
        qb.push(" AND ");
        filter_sql::push_condition(&mut qb, &f);
        let n: i64 =
            qb.build_query_scalar().persistent(false).fetch_one(&mut *tx).await.map_err(db)?;
        if n > 0 {
            groups.push((name, n));
        }
    }
    groups.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    truncated |= groups.len() > MAX_PREVIEW_GROUPS;
    groups.truncate(MAX_PREVIEW_GROUPS);
    let by_group = groups
        .into_iter()
        .map(|(name, n)| {
            let g = GroupName::new(name.clone())
                .map_err(|e| corrupt("group name", &name, &e.to_string()))?;
            Ok((g, u64::try_from(n).unwrap_or(0)))
        })
        .collect::<StoreResult<Vec<_>>>()?;
    tx.commit().await.map_err(db)?;
    Ok(TargetPreview {
        total,
        by_state,
        by_group,
        groups_truncated: truncated,
        online,
        offline: total.saturating_sub(online),
        sample,
    })
}

pub(crate) async fn target_ids(
    pool: &PgPool,
    target: &JobTarget,
    after: Option<&DeviceId>,
    limit: NonZeroU32,
) -> StoreResult<Page<DeviceId>> {
    let limit = limit.get().min(MAX_PAGE_SIZE);
    let mut conn = pool.acquire().await.map_err(db)?;
    let target = resolve(&mut conn, target).await?;
    let mut qb = with_target("SELECT d.id FROM devices d WHERE ", &target);
    qb.push(" AND d.id > ")
        .push_bind(after.map_or("", DeviceId::as_str).to_owned())
        .push(" ORDER BY d.id LIMIT ")
        .push_bind(i64::from(limit) + 1);
    let ids: Vec<String> =
        qb.build_query_scalar().persistent(false).fetch_all(&mut *conn).await.map_err(db)?;
    let mut items =
        ids.iter().map(String::as_str).map(device_id).collect::<StoreResult<Vec<_>>>()?;
    let has_more = items.len() > limit as usize;
    items.truncate(limit as usize);
    Ok(Page { items, has_more })
}

fn device_id(id: &str) -> StoreResult<DeviceId> {
    DeviceId::new(id).map_err(|e| corrupt("device id", id, &e.to_string()))
}

/// Cancels a job's queued executions; returns how many.
async fn cancel_queued(conn: &mut PgConnection, job: &JobId, now: Timestamp) -> StoreResult<u64> {
    let done = sqlx::query(
        "UPDATE job_executions SET state = 'canceled', updated_at = $1, version = version + 1 \
         WHERE job_id = $2 AND state = 'queued'",
    )
    .bind(now.millis())
    .bind(job.as_str())
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    Ok(done.rows_affected())
}

/// Writes a job's state, counters, version and rollout bookkeeping.
async fn write_job(conn: &mut PgConnection, job: &Job) -> StoreResult<()> {
    let c = &job.counters;
    sqlx::query(
        "UPDATE jobs SET state = $1, updated_at = $2, version = $3, queued = $4, \
         in_progress = $5, succeeded = $6, failed = $7, rejected = $8, timed_out = $9, \
         canceled = $10, removed = $11, window_start = $12, window_started = $13, \
         aborted_by = $14 WHERE id = $15",
    )
    .bind(job.state.as_str())
    .bind(job.updated_at.millis())
    .bind(to_i64("job version", job.version)?)
    .bind(to_i64("count", c.queued)?)
    .bind(to_i64("count", c.in_progress)?)
    .bind(to_i64("count", c.succeeded)?)
    .bind(to_i64("count", c.failed)?)
    .bind(to_i64("count", c.rejected)?)
    .bind(to_i64("count", c.timed_out)?)
    .bind(to_i64("count", c.canceled)?)
    .bind(to_i64("count", c.removed)?)
    .bind(job.rollout_window.map(|w| w.start.millis()))
    .bind(to_i64("count", job.rollout_window.map_or(0, |w| w.started))?)
    .bind(job.aborted_by.and_then(|i| i64::try_from(i).ok()))
    .bind(job.id().as_str())
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    Ok(())
}

/// Writes an execution's mutable columns.
async fn write_execution(conn: &mut PgConnection, e: &JobExecution) -> StoreResult<()> {
    sqlx::query(
        "UPDATE job_executions SET state = $1, attempt = $2, not_before = $3, started_at = $4, \
         timeout_at = $5, updated_at = $6, version = $7, status_details = $8 \
         WHERE job_id = $9 AND device_id = $10",
    )
    .bind(e.state.as_str())
    .bind(i64::from(e.attempt))
    .bind(e.not_before.millis())
    .bind(e.started_at.map(Timestamp::millis))
    .bind(e.timeout_at.map(Timestamp::millis))
    .bind(e.updated_at.millis())
    .bind(to_i64("execution version", e.version)?)
    .bind(e.status_details.to_json().to_string())
    .bind(e.job_id.as_str())
    .bind(e.device_id.as_str())
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    Ok(())
}
