//! Fleet jobs in `jobs` and `job_executions` (migration 0012).
//!
//! Every change runs on the writer connection in one transaction, which with SQLite's single
//! writer also serializes the read-modify-write of a job's counters. The rules (transitions,
//! retries, abort, completion) are `domain::job`'s and `store::jobs`'; this module reads and
//! writes rows.
//!
//! A target becomes one SQL condition over `devices d` in [`resolve`] / [`target_condition`]: the
//! same text drives the `INSERT … SELECT` that creates a job's executions, the dry run
//! ([`preview`], [`target_ids`]) and the single-device probe of [`add_for`].

use std::num::NonZeroU32;

use domain::{
    Actor, DeviceId, ExecutionState, GroupKind, GroupName, Job, JobAction, JobCounters,
    JobExecution, JobId, JobSpec, JobState, JobTarget, LifecycleState, Mutation, NewAuditRecord,
    RolloutWindow, Selection, StatusDetails, Timestamp,
};
use serde_json::json;
use sqlx::{Sqlite, SqliteConnection, Transaction};
use store::jobs::{
    IN_SERVICE, MAX_PREVIEW_DYNAMIC_GROUPS, MAX_PREVIEW_GROUPS, MAX_PREVIEW_SAMPLE, apply_action,
    execution_not_found, job_not_found, job_resource, job_summary, new_job, plan_execution_update,
    settle, spec_from_json, spec_to_json,
};
use store::{
    ExecutionUpdate, ExecutionUpdated, MAX_PAGE_SIZE, Page, StoreError, StoreResult, TargetPreview,
};

use crate::SqliteStore;
use crate::audit_chain::{AuditChain, append_and_commit, entry};
use crate::filter_sql::{self, Arg, Sql};
use crate::groups;
use crate::rows::{corrupt, db, to_i64, unique_or_db};

/// Binds every argument of a built statement, in order.
macro_rules! bind_args {
    ($query:expr, $args:expr) => {{
        let mut q = $query;
        for arg in $args {
            q = match arg {
                Arg::Text(s) => q.bind(s),
                Arg::Int(i) => q.bind(i),
            };
        }
        q
    }};
}

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

fn job_from_row(r: &JobRow) -> StoreResult<Job> {
    let bad = |reason: String| corrupt("jobs", &r.id, reason);
    let count = |v: i64| u64::try_from(v).map_err(|_| bad(format!("negative count {v}")));
    let spec = spec_from_json(&r.spec_json).map_err(bad)?;
    let state = JobState::parse(&r.state).map_err(|e| bad(e.to_string()))?;
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
    let bad = |reason: String| corrupt("job_executions", &key, reason);
    let details = match serde_json::from_str(&r.status_details) {
        Ok(serde_json::Value::Object(map)) => StatusDetails::from_stored(map),
        _ => return Err(bad("status details are not a JSON object".to_owned())),
    };
    Ok(JobExecution {
        job_id: JobId::new(r.job_id.clone()).map_err(|e| bad(e.to_string()))?,
        device_id: DeviceId::new(r.device_id.clone()).map_err(|e| bad(e.to_string()))?,
        state: ExecutionState::parse(&r.state).map_err(|e| bad(e.to_string()))?,
        attempt: u32::try_from(r.attempt).map_err(|_| bad(format!("attempt {}", r.attempt)))?,
        not_before: Timestamp::from_millis(r.not_before),
        started_at: r.started_at.map(Timestamp::from_millis),
        timeout_at: r.timeout_at.map(Timestamp::from_millis),
        created_at: Timestamp::from_millis(r.created_at),
        updated_at: Timestamp::from_millis(r.updated_at),
        version: u64::try_from(r.version).map_err(|_| bad(format!("version {}", r.version)))?,
        status_details: details,
    })
}

/// `d.state IN ('registered', 'active', 'suspended')`: devices in service.
fn in_service() -> String {
    let states: Vec<String> = IN_SERVICE.iter().map(|s| format!("'{}'", s.as_str())).collect();
    format!("d.state IN ({})", states.join(", "))
}

/// The condition over `devices d` that `target` resolves to; `None` when its group does not exist
/// (no device is in it). Listed devices that do not exist simply match nothing here.
async fn target_condition(
    conn: &mut SqliteConnection,
    target: &JobTarget,
) -> StoreResult<Option<Sql>> {
    let mut sql = Sql { text: in_service(), args: Vec::new() };
    match target {
        JobTarget::Devices(ids) => {
            let list: Vec<&str> = ids.iter().map(DeviceId::as_str).collect();
            sql.text.push_str(" AND d.id IN (SELECT value FROM json_each(?))");
            sql.args.push(Arg::Text(json!(list).to_string()));
        }
        JobTarget::Group(name) => match groups::get(conn, name).await? {
            None => return Ok(None),
            Some(g) => match g.kind {
                GroupKind::Static => {
                    sql.text.push_str(
                        " AND d.id IN (SELECT device_id FROM group_members WHERE group_name = ?)",
                    );
                    sql.args.push(Arg::Text(name.as_str().to_owned()));
                }
                GroupKind::Dynamic(f) => {
                    sql.text.push_str(" AND ");
                    filter_sql::push_condition(&mut sql, &f);
                }
            },
        },
        JobTarget::Filter(f) => {
            sql.text.push_str(" AND ");
            filter_sql::push_condition(&mut sql, f);
        }
    }
    Ok(Some(sql))
}

/// [`target_condition`] for a new job or a dry run: an unknown group, or the first unknown device
/// of a list (in id order), is [`StoreError::NotFound`].
async fn resolve(conn: &mut SqliteConnection, target: &JobTarget) -> StoreResult<Sql> {
    if let JobTarget::Devices(ids) = target {
        let list: Vec<&str> = ids.iter().map(DeviceId::as_str).collect();
        let missing: Option<String> = sqlx::query_scalar(
            "SELECT j.value FROM json_each(?) j \
             WHERE NOT EXISTS (SELECT 1 FROM devices WHERE id = j.value) ORDER BY j.value LIMIT 1",
        )
        .bind(json!(list).to_string())
        .fetch_optional(&mut *conn)
        .await
        .map_err(db)?;
        if let Some(id) = missing {
            return Err(StoreError::NotFound { kind: "device", id });
        }
    }
    target_condition(conn, target).await?.ok_or_else(|| match target {
        JobTarget::Group(name) => group_not_found(name),
        _ => StoreError::Conflict("the target has no condition".to_owned()),
    })
}

fn group_not_found(name: &GroupName) -> StoreError {
    StoreError::NotFound { kind: "group", id: name.to_string() }
}

/// `head` followed by `cond`'s text and arguments, then `tail` with `tail_args`.
fn compose(head: &str, head_args: Vec<Arg>, cond: &Sql, tail: &str, tail_args: Vec<Arg>) -> Sql {
    let mut args = head_args;
    args.extend(cond.args.iter().cloned());
    args.extend(tail_args);
    Sql { text: format!("{head}{}{tail}", cond.text), args }
}

pub(crate) async fn create(s: &SqliteStore, spec: &JobSpec, m: &Mutation) -> StoreResult<Job> {
    let mut job = new_job(spec, m.at);
    let mut tx = s.begin_write().await?;
    sqlx::query(
        "INSERT INTO jobs (id, spec_json, state, continuous, created_at, updated_at, version) \
         VALUES (?, ?, ?, ?, ?, ?, 1)",
    )
    .bind(spec.id().as_str())
    .bind(spec_to_json(spec).to_string())
    .bind(job.state.as_str())
    .bind(i64::from(spec.selection() == Selection::Continuous))
    .bind(m.at.millis())
    .bind(m.at.millis())
    .execute(&mut *tx)
    .await
    .map_err(unique_or_db("job", spec.id()))?;
    let cond = resolve(&mut tx, spec.target()).await?;
    let at = m.at.millis();
    let sql = compose(
        "INSERT INTO job_executions (job_id, device_id, state, attempt, not_before, created_at, \
         updated_at, version, status_details) \
         SELECT ?, d.id, 'queued', 1, ?, ?, ?, 1, '{}' FROM devices d WHERE ",
        vec![Arg::Text(spec.id().as_str().to_owned()), Arg::Int(at), Arg::Int(at), Arg::Int(at)],
        &cond,
        "",
        Vec::new(),
    );
    let done = bind_args!(sqlx::query(sqlx::AssertSqlSafe(sql.text)), sql.args)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    job.counters = job.counters.add(ExecutionState::Queued, done.rows_affected());
    job.state = settle(&job);
    write_job(&mut tx, &job).await?;
    let mut after = job_summary(&job);
    if let Some(obj) = after.as_object_mut() {
        obj.insert("spec".to_owned(), spec_to_json(spec));
        obj.insert("executions".to_owned(), job.counters.total().into());
    }
    append_and_commit(tx, &entry(m, "job.create", job_resource(spec.id()), None, Some(after)))
        .await?;
    Ok(job)
}

pub(crate) async fn get(conn: &mut SqliteConnection, id: &JobId) -> StoreResult<Option<Job>> {
    let row: Option<JobRow> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?")))
            .bind(id.as_str())
            .fetch_optional(&mut *conn)
            .await
            .map_err(db)?;
    row.as_ref().map(job_from_row).transpose()
}

async fn get_existing(conn: &mut SqliteConnection, id: &JobId) -> StoreResult<Job> {
    get(conn, id).await?.ok_or_else(|| job_not_found(id))
}

pub(crate) async fn list(
    conn: &mut SqliteConnection,
    state: Option<JobState>,
    after: Option<&JobId>,
    limit: NonZeroU32,
) -> StoreResult<Page<Job>> {
    let limit = limit.get().min(MAX_PAGE_SIZE);
    let state_cond = if state.is_some() { "state = ? AND" } else { "" };
    let mut q = sqlx::query_as::<_, JobRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE {state_cond} id > ? ORDER BY id LIMIT ?"
    )));
    if let Some(st) = state {
        q = q.bind(st.as_str());
    }
    let rows = q
        .bind(after.map_or("", JobId::as_str))
        .bind(i64::from(limit) + 1)
        .fetch_all(&mut *conn)
        .await
        .map_err(db)?;
    let mut items = rows.iter().map(job_from_row).collect::<StoreResult<Vec<_>>>()?;
    let has_more = items.len() > limit as usize;
    items.truncate(limit as usize);
    Ok(Page { items, has_more })
}

async fn get_execution(
    conn: &mut SqliteConnection,
    job: &JobId,
    device: &DeviceId,
) -> StoreResult<Option<JobExecution>> {
    let row: Option<ExecutionRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {EXECUTION_COLUMNS} FROM job_executions WHERE job_id = ? AND device_id = ?"
    )))
    .bind(job.as_str())
    .bind(device.as_str())
    .fetch_optional(&mut *conn)
    .await
    .map_err(db)?;
    row.as_ref().map(execution_from_row).transpose()
}

pub(crate) async fn executions(
    conn: &mut SqliteConnection,
    job: &JobId,
    state: Option<ExecutionState>,
    after: Option<&DeviceId>,
    limit: NonZeroU32,
) -> StoreResult<Page<JobExecution>> {
    get_existing(conn, job).await?;
    let limit = limit.get().min(MAX_PAGE_SIZE);
    let state_cond = if state.is_some() { "AND state = ?" } else { "" };
    let mut q = sqlx::query_as::<_, ExecutionRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {EXECUTION_COLUMNS} FROM job_executions WHERE job_id = ? {state_cond} \
         AND device_id > ? ORDER BY device_id LIMIT ?"
    )))
    .bind(job.as_str());
    if let Some(st) = state {
        q = q.bind(st.as_str());
    }
    let rows = q
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
    conn: &mut SqliteConnection,
    device: &DeviceId,
    pending_only: bool,
) -> StoreResult<Vec<JobExecution>> {
    let pending = if pending_only { "AND e.state IN ('queued', 'in_progress')" } else { "" };
    let columns =
        EXECUTION_COLUMNS.split(", ").map(|c| format!("e.{c}")).collect::<Vec<_>>().join(", ");
    let rows: Vec<ExecutionRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {columns} FROM job_executions e JOIN jobs j ON j.id = e.job_id \
         WHERE e.device_id = ? {pending} ORDER BY j.created_at, e.job_id LIMIT ?"
    )))
    .bind(device.as_str())
    .bind(i64::from(MAX_PAGE_SIZE))
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    rows.iter().map(execution_from_row).collect()
}

pub(crate) async fn start_next(
    s: &SqliteStore,
    id: &JobId,
    max: u32,
    now: Timestamp,
) -> StoreResult<Vec<JobExecution>> {
    let mut tx = s.begin_write().await?;
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
        "UPDATE job_executions SET state = 'in_progress', started_at = ?, timeout_at = ?, \
         updated_at = ?, version = version + 1 \
         WHERE job_id = ? AND device_id IN (SELECT device_id FROM job_executions \
         WHERE job_id = ? AND state = 'queued' AND not_before <= ? ORDER BY device_id LIMIT ?) \
         RETURNING {EXECUTION_COLUMNS}"
    )))
    .bind(now.millis())
    .bind(timeout_at)
    .bind(now.millis())
    .bind(id.as_str())
    .bind(id.as_str())
    .bind(now.millis())
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
    s: &SqliteStore,
    job: &JobId,
    device: &DeviceId,
    update: &ExecutionUpdate,
    now: Timestamp,
) -> StoreResult<ExecutionUpdated> {
    let mut tx = s.begin_write().await?;
    let (updated, record) = apply_update(&mut tx, job, device, update, now).await?;
    commit_with(tx, record.into_iter().collect()).await?;
    Ok(updated)
}

/// Commits `tx` after appending `records` to the audit chain.
async fn commit_with(
    mut tx: Transaction<'static, Sqlite>,
    records: Vec<NewAuditRecord>,
) -> StoreResult<()> {
    if !records.is_empty() {
        let mut chain = AuditChain::load(&mut tx).await?;
        for r in &records {
            chain.append(&mut tx, r).await?;
        }
    }
    tx.commit().await.map_err(db)
}

/// One execution update inside `tx`; returns what it did and the audit record of an abort.
async fn apply_update(
    tx: &mut Transaction<'static, Sqlite>,
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
        record = Some(entry(&system, "job.abort", job_resource(job_id), Some(before), Some(after)));
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
    conn: &mut SqliteConnection,
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
    s: &SqliteStore,
    now: Timestamp,
    limit: NonZeroU32,
) -> StoreResult<Vec<JobExecution>> {
    let mut tx = s.begin_write().await?;
    let due: Vec<(String, String)> = sqlx::query_as(
        "SELECT job_id, device_id FROM job_executions \
         WHERE state = 'in_progress' AND timeout_at IS NOT NULL AND timeout_at <= ? \
         ORDER BY timeout_at, job_id, device_id LIMIT ?",
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
        let job = JobId::new(job).map_err(|e| corrupt("job_executions", &key, e.to_string()))?;
        let device =
            DeviceId::new(device).map_err(|e| corrupt("job_executions", &key, e.to_string()))?;
        // An earlier abort in this batch may have ended this one's job: it is still in progress
        // (aborts leave running executions), so it times out all the same.
        let (updated, record) = apply_update(&mut tx, &job, &device, &update, now).await?;
        out.push(updated.execution);
        records.extend(record);
    }
    commit_with(tx, records).await?;
    Ok(out)
}

pub(crate) async fn set_state(
    s: &SqliteStore,
    id: &JobId,
    action: JobAction,
    m: &Mutation,
) -> StoreResult<Job> {
    let mut tx = s.begin_write().await?;
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
    append_and_commit(
        tx,
        &entry(m, &action_name, job_resource(id), Some(before), Some(job_summary(&job))),
    )
    .await?;
    Ok(job)
}

pub(crate) async fn add_for(
    s: &SqliteStore,
    device: &DeviceId,
    now: Timestamp,
) -> StoreResult<Vec<JobExecution>> {
    let mut tx = s.begin_write().await?;
    let rows: Vec<JobRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {JOB_COLUMNS} FROM jobs \
         WHERE continuous = 1 AND state IN ('in_progress', 'paused') ORDER BY id"
    )))
    .fetch_all(&mut *tx)
    .await
    .map_err(db)?;
    let mut created = Vec::new();
    for row in rows {
        let mut job = job_from_row(&row)?;
        let Some(cond) = target_condition(&mut tx, job.spec.target()).await? else { continue };
        let at = now.millis();
        let id = job.id().as_str().to_owned();
        let sql = compose(
            "INSERT INTO job_executions (job_id, device_id, state, attempt, not_before, \
             created_at, updated_at, version, status_details) \
             SELECT ?, d.id, 'queued', 1, ?, ?, ?, 1, '{}' FROM devices d WHERE d.id = ? AND ",
            vec![
                Arg::Text(id.clone()),
                Arg::Int(at),
                Arg::Int(at),
                Arg::Int(at),
                Arg::Text(device.as_str().to_owned()),
            ],
            &cond,
            " AND NOT EXISTS (SELECT 1 FROM job_executions e WHERE e.job_id = ? AND e.device_id = d.id)",
            vec![Arg::Text(id)],
        );
        let done = bind_args!(sqlx::query(sqlx::AssertSqlSafe(sql.text)), sql.args)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
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

pub(crate) async fn sync_continuous(
    s: &SqliteStore,
    id: &JobId,
    now: Timestamp,
) -> StoreResult<u64> {
    let mut tx = s.begin_write().await?;
    let mut job = get_existing(&mut tx, id).await?;
    if job.spec.selection() != Selection::Continuous
        || !matches!(job.state, JobState::InProgress | JobState::Paused)
    {
        return Ok(0);
    }
    let Some(cond) = target_condition(&mut tx, job.spec.target()).await? else { return Ok(0) };
    let at = now.millis();
    let sql = compose(
        "INSERT INTO job_executions (job_id, device_id, state, attempt, not_before, \
         created_at, updated_at, version, status_details) \
         SELECT ?, d.id, 'queued', 1, ?, ?, ?, 1, '{}' FROM devices d WHERE ",
        vec![Arg::Text(id.as_str().to_owned()), Arg::Int(at), Arg::Int(at), Arg::Int(at)],
        &cond,
        " AND NOT EXISTS (SELECT 1 FROM job_executions e WHERE e.job_id = ? AND e.device_id = d.id)",
        vec![Arg::Text(id.as_str().to_owned())],
    );
    let done = bind_args!(sqlx::query(sqlx::AssertSqlSafe(sql.text)), sql.args)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
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
    s: &SqliteStore,
    device: &DeviceId,
    now: Timestamp,
) -> StoreResult<Vec<JobExecution>> {
    let mut tx = s.begin_write().await?;
    let state: Option<String> = sqlx::query_scalar("SELECT state FROM devices WHERE id = ?")
        .bind(device.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
    let in_service = state.is_some_and(|st| IN_SERVICE.iter().any(|s| s.as_str() == st));
    let rows: Vec<ExecutionRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {EXECUTION_COLUMNS} FROM job_executions \
         WHERE device_id = ? AND state IN ('queued', 'in_progress') ORDER BY job_id"
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
    conn: &mut SqliteConnection,
    target: &JobTarget,
    device: &DeviceId,
) -> StoreResult<bool> {
    let Some(cond) = target_condition(conn, target).await? else { return Ok(false) };
    let sql = compose(
        "SELECT 1 FROM devices d WHERE d.id = ? AND ",
        vec![Arg::Text(device.as_str().to_owned())],
        &cond,
        "",
        Vec::new(),
    );
    let hit: Option<i64> = bind_args!(sqlx::query_scalar(sqlx::AssertSqlSafe(sql.text)), sql.args)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db)?;
    Ok(hit.is_some())
}

/// The dry run of `target`; `None` previews every device in service (a fleet profile's reach).
pub(crate) async fn preview(
    s: &SqliteStore,
    target: Option<&JobTarget>,
    sample: u32,
) -> StoreResult<TargetPreview> {
    // One read transaction: every count sees the same snapshot.
    let mut tx = s.readers.begin().await.map_err(db)?;
    let cond = match target {
        Some(target) => resolve(&mut tx, target).await?,
        None => Sql { text: in_service(), args: Vec::new() },
    };
    let sql = compose(
        "SELECT d.state, count(*) FROM devices d WHERE ",
        vec![],
        &cond,
        " GROUP BY d.state",
        vec![],
    );
    let counts: Vec<(String, i64)> =
        bind_args!(sqlx::query_as(sqlx::AssertSqlSafe(sql.text)), sql.args)
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?;
    let mut by_state = Vec::new();
    for st in LifecycleState::ALL {
        if let Some((_, n)) = counts.iter().find(|(name, _)| name == st.as_str()) {
            by_state.push((st, u64::try_from(*n).unwrap_or(0)));
        }
    }
    let total: u64 = by_state.iter().map(|(_, n)| n).sum();
    let sql = compose(
        "SELECT count(*) FROM devices d WHERE ",
        vec![],
        &cond,
        " AND EXISTS (SELECT 1 FROM device_presence p WHERE p.device_id = d.id AND p.connected = 1)",
        vec![],
    );
    let online: i64 = bind_args!(sqlx::query_scalar(sqlx::AssertSqlSafe(sql.text)), sql.args)
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?;
    let online = u64::try_from(online).unwrap_or(0);
    let n = sample.min(MAX_PREVIEW_SAMPLE);
    let sql = compose(
        "SELECT d.id FROM devices d WHERE ",
        vec![],
        &cond,
        " ORDER BY d.id LIMIT ?",
        vec![Arg::Int(i64::from(n))],
    );
    let ids: Vec<String> = bind_args!(sqlx::query_scalar(sqlx::AssertSqlSafe(sql.text)), sql.args)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
    let sample = ids.iter().map(String::as_str).map(device_id).collect::<StoreResult<Vec<_>>>()?;

    let sql = compose(
        "SELECT gm.group_name, count(*) FROM group_members gm \
         WHERE gm.device_id IN (SELECT d.id FROM devices d WHERE ",
        vec![],
        &cond,
        ") GROUP BY gm.group_name",
        vec![],
    );
    let mut groups: Vec<(String, i64)> =
        bind_args!(sqlx::query_as(sqlx::AssertSqlSafe(sql.text)), sql.args)
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?;
    let dynamic: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, filter FROM groups WHERE kind = 'dynamic' ORDER BY name LIMIT ?",
    )
    .bind(i64::try_from(MAX_PREVIEW_DYNAMIC_GROUPS + 1).unwrap_or(i64::MAX))
    .fetch_all(&mut *tx)
    .await
    .map_err(db)?;
    let mut truncated = dynamic.len() > MAX_PREVIEW_DYNAMIC_GROUPS;
    for (name, filter) in dynamic.into_iter().take(MAX_PREVIEW_DYNAMIC_GROUPS) {
        let f =
            domain::Filter::parse(&filter).map_err(|e| corrupt("groups", &name, e.to_string()))?;
        let mut group_cond = Sql { text: String::new(), args: Vec::new() };
        filter_sql::push_condition(&mut group_cond, &f);
        let sql = compose("SELECT count(*) FROM devices d WHERE ", vec![], &cond, " AND ", vec![]);
        let sql = compose(&sql.text, sql.args, &group_cond, "", vec![]);
        let n: i64 = bind_args!(sqlx::query_scalar(sqlx::AssertSqlSafe(sql.text)), sql.args)
            .fetch_one(&mut *tx)
            .await
            .map_err(db)?;
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
                .map_err(|e| corrupt("groups", &name, e.to_string()))?;
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
    conn: &mut SqliteConnection,
    target: &JobTarget,
    after: Option<&DeviceId>,
    limit: NonZeroU32,
) -> StoreResult<Page<DeviceId>> {
    let limit = limit.get().min(MAX_PAGE_SIZE);
    let cond = resolve(conn, target).await?;
    let sql = compose(
        "SELECT d.id FROM devices d WHERE ",
        vec![],
        &cond,
        " AND d.id > ? ORDER BY d.id LIMIT ?",
        vec![
            Arg::Text(after.map_or("", DeviceId::as_str).to_owned()),
            Arg::Int(i64::from(limit) + 1),
        ],
    );
    let ids: Vec<String> = bind_args!(sqlx::query_scalar(sqlx::AssertSqlSafe(sql.text)), sql.args)
        .fetch_all(&mut *conn)
        .await
        .map_err(db)?;
    let mut items =
        ids.iter().map(String::as_str).map(device_id).collect::<StoreResult<Vec<_>>>()?;
    let has_more = items.len() > limit as usize;
    items.truncate(limit as usize);
    Ok(Page { items, has_more })
}

fn device_id(id: &str) -> StoreResult<DeviceId> {
    DeviceId::new(id).map_err(|e| corrupt("devices", id, e.to_string()))
}

/// Cancels a job's queued executions; returns how many.
async fn cancel_queued(
    conn: &mut SqliteConnection,
    job: &JobId,
    now: Timestamp,
) -> StoreResult<u64> {
    let done = sqlx::query(
        "UPDATE job_executions SET state = 'canceled', updated_at = ?, version = version + 1 \
         WHERE job_id = ? AND state = 'queued'",
    )
    .bind(now.millis())
    .bind(job.as_str())
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    Ok(done.rows_affected())
}

/// Writes a job's state, counters, version and rollout bookkeeping.
async fn write_job(conn: &mut SqliteConnection, job: &Job) -> StoreResult<()> {
    let c = &job.counters;
    let n = |what, v| to_i64(what, v);
    sqlx::query(
        "UPDATE jobs SET state = ?, updated_at = ?, version = ?, queued = ?, in_progress = ?, \
         succeeded = ?, failed = ?, rejected = ?, timed_out = ?, canceled = ?, removed = ?, \
         window_start = ?, window_started = ?, aborted_by = ? WHERE id = ?",
    )
    .bind(job.state.as_str())
    .bind(job.updated_at.millis())
    .bind(n("job version", job.version)?)
    .bind(n("count", c.queued)?)
    .bind(n("count", c.in_progress)?)
    .bind(n("count", c.succeeded)?)
    .bind(n("count", c.failed)?)
    .bind(n("count", c.rejected)?)
    .bind(n("count", c.timed_out)?)
    .bind(n("count", c.canceled)?)
    .bind(n("count", c.removed)?)
    .bind(job.rollout_window.map(|w| w.start.millis()))
    .bind(n("count", job.rollout_window.map_or(0, |w| w.started))?)
    .bind(job.aborted_by.and_then(|i| i64::try_from(i).ok()))
    .bind(job.id().as_str())
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    Ok(())
}

/// Writes an execution's mutable columns.
async fn write_execution(conn: &mut SqliteConnection, e: &JobExecution) -> StoreResult<()> {
    sqlx::query(
        "UPDATE job_executions SET state = ?, attempt = ?, not_before = ?, started_at = ?, \
         timeout_at = ?, updated_at = ?, version = ?, status_details = ? \
         WHERE job_id = ? AND device_id = ?",
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
