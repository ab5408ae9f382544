//! Conformance cases of fleet jobs: creation with target resolution, the dry run, rollout pacing,
//! execution updates with exact counters, retries, timeouts, abort criteria, operator actions and
//! continuous jobs.

use std::collections::BTreeSet;
use std::sync::Arc;

use domain::{
    AbortCriterion, DevicePatch, ExecutionState, FailureType, ImportRow, Job, JobAction,
    JobCounters, JobExecution, JobId, JobOperation, JobSpec, JobSpecParts, JobState, JobTarget,
    LifecycleState, RetryPolicy, RetryRule, Rollout, Selection, StatusDetails, Timestamp,
};
use serde_json::json;

use crate::conformance::{
    BASE, at, audit_since, check_chain, check_record, dynamic_group, group_name, id, last_seq,
    new_device, nz, parse, put_in_state, static_group, tags,
};
use crate::jobs::{job_summary, spec_to_json};
use crate::{ExecutionUpdate, Store, StoreError};

fn job_id(s: &str) -> JobId {
    JobId::new(s).unwrap()
}

fn ts(ms: i64) -> Timestamp {
    Timestamp::from_millis(BASE + ms)
}

/// A snapshot desired-patch job on `target`, 1000 starts per minute, no timeout, retry or abort.
fn parts(job: &str, target: JobTarget) -> JobSpecParts {
    JobSpecParts {
        id: job_id(job),
        description: format!("job {job}"),
        operation: JobOperation::DesiredPatch { patch: json!({"fw": "2.0"}) },
        target,
        selection: Selection::Snapshot,
        rollout: Rollout::Constant { max_per_minute: 1000 },
        in_progress_timeout_secs: None,
        retry: RetryPolicy::default(),
        abort: Vec::new(),
    }
}

fn spec(p: JobSpecParts) -> JobSpec {
    JobSpec::new(p).unwrap()
}

fn filter_target(f: &str) -> JobTarget {
    JobTarget::Filter(parse(f))
}

fn report(state: ExecutionState) -> ExecutionUpdate {
    ExecutionUpdate { state, status_details: None, expected_version: None }
}

/// Creates device `dev_id` in `state` with tags.
async fn device_with(store: &dyn Store, dev_id: &str, state: LifecycleState, t: &[(&str, &str)]) {
    let mut clock = 0;
    put_in_state(store, &id(dev_id), state, &mut clock).await;
    if !t.is_empty() {
        let patch = DevicePatch { tags: Some(tags(t)), ..DevicePatch::default() };
        store.update_device(&id(dev_id), &patch, None, &at(5)).await.unwrap();
    }
}

/// Every execution of a job, through pages of 3.
async fn all_executions(store: &dyn Store, job: &str) -> Vec<JobExecution> {
    let mut out: Vec<JobExecution> = Vec::new();
    loop {
        let after = out.last().map(|e| e.device_id.clone());
        let page = store.job_executions(&job_id(job), None, after.as_ref(), nz(3)).await.unwrap();
        assert!(page.items.len() <= 3);
        let more = page.has_more;
        out.extend(page.items);
        if !more {
            return out;
        }
    }
}

fn execution_ids(executions: &[JobExecution]) -> Vec<String> {
    executions.iter().map(|e| e.device_id.to_string()).collect()
}

/// Every device id `target` resolves to, through pages of 2.
async fn all_target_ids(store: &dyn Store, target: &JobTarget) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    loop {
        let after = out.last().map(|s| id(s));
        let page = store.target_device_ids(target, after.as_ref(), nz(2)).await.unwrap();
        assert!(page.items.len() <= 2);
        let more = page.has_more;
        out.extend(page.items.iter().map(ToString::to_string));
        if !more {
            return out;
        }
    }
}

/// The job's counters equal the counts of its executions, and the job reads back as stored.
async fn check_counters(store: &dyn Store, job: &str) -> Job {
    let stored = store.job(&job_id(job)).await.unwrap().unwrap();
    let recount = JobCounters::count(all_executions(store, job).await.iter().map(|e| e.state));
    assert_eq!(stored.counters, recount, "counters of job {job}");
    stored
}

/// A small fleet: in-service devices with tags, out-of-service ones, a static and a dynamic group.
async fn fleet(store: &dyn Store) {
    use LifecycleState::{Active, Decommissioned, Registered, Retired, Suspended};
    device_with(store, "a1", Active, &[("site", "berlin")]).await;
    device_with(store, "a2", Active, &[("site", "paris")]).await;
    device_with(store, "a3", Registered, &[("site", "berlin")]).await;
    device_with(store, "a4", Suspended, &[("site", "berlin")]).await;
    device_with(store, "a5", Decommissioned, &[("site", "berlin")]).await;
    device_with(store, "a6", Retired, &[]).await;
    device_with(store, "a7", Active, &[("site", "berlin"), ("ring", "0")]).await;
    store.create_group(&static_group("lab"), &at(10)).await.unwrap();
    store
        .add_group_members(&group_name("lab"), &[id("a1"), id("a2"), id("a5")], &at(11))
        .await
        .unwrap();
    store
        .create_group(&dynamic_group("berlin", parse("tags.site = 'berlin'")), &at(12))
        .await
        .unwrap();
}

/// Creating a job resolves its target in service only (never decommissioned or retired devices),
/// inserts one queued execution per device at attempt 1, sets the counters and audits
/// `job.create`; the job reads back as returned. Duplicates, unknown groups and unknown listed
/// devices are refused and leave no trace.
pub async fn job_create_resolves_target_and_audits(store: Arc<dyn Store>) {
    fleet(&*store).await;
    let before = last_seq(&*store).await;
    let s = spec(parts("fw-1", filter_target("tags.site = 'berlin'")));
    let job = store.create_job(&s, &at(100)).await.unwrap();
    assert_eq!(job.state, JobState::InProgress);
    assert_eq!(job.version, 1);
    assert_eq!(job.counters, JobCounters { queued: 4, ..JobCounters::default() });
    assert_eq!(store.job(&job_id("fw-1")).await.unwrap(), Some(job.clone()));
    let executions = all_executions(&*store, "fw-1").await;
    assert_eq!(execution_ids(&executions), ["a1", "a3", "a4", "a7"]);
    for e in &executions {
        assert_eq!(e.state, ExecutionState::Queued);
        assert_eq!((e.attempt, e.version), (1, 1));
        assert_eq!((e.not_before, e.created_at, e.started_at), (ts(100), ts(100), None));
        assert!(e.status_details.fields().is_empty());
    }
    let records = audit_since(&*store, before).await;
    assert_eq!(records.len(), 1);
    let mut after = job_summary(&job);
    after["spec"] = spec_to_json(&s);
    after["executions"] = json!(4);
    check_record(&records[0], &at(100), "job.create", "job/fw-1", None, Some(after));

    let seq = last_seq(&*store).await;
    let dup = store.create_job(&s, &at(101)).await.unwrap_err();
    assert!(matches!(dup, StoreError::AlreadyExists { kind: "job", .. }), "{dup:?}");
    let unknown_group = spec(parts("g", JobTarget::Group(group_name("nope"))));
    let err = store.create_job(&unknown_group, &at(102)).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { kind: "group", .. }), "{err:?}");
    let unknown_device = spec(parts("d", JobTarget::Devices(vec![id("a1"), id("zz")])));
    let err = store.create_job(&unknown_device, &at(103)).await.unwrap_err();
    assert!(matches!(&err, StoreError::NotFound { kind: "device", id } if id == "zz"), "{err:?}");
    assert_eq!(store.job(&job_id("g")).await.unwrap(), None);
    assert_eq!(store.job(&job_id("d")).await.unwrap(), None);
    assert_eq!(last_seq(&*store).await, seq);
    check_chain(&*store).await;
}

/// The dry run (`preview_target`, `target_device_ids`) returns exactly the devices the real job
/// then gets executions for, for every kind of target, without writing anything; the preview's
/// breakdowns are right.
pub async fn job_dry_run_equals_real_run(store: Arc<dyn Store>) {
    fleet(&*store).await;
    store.record_connect(&id("a1"), ts(50), "127.0.0.1:1", "5").await.unwrap();
    store.record_connect(&id("a5"), ts(50), "127.0.0.1:2", "5").await.unwrap();
    let targets = [
        filter_target("tags.site = 'berlin'"),
        filter_target("state = 'active' or has tags.ring"),
        filter_target("not tags.site = 'berlin'"),
        JobTarget::Group(group_name("lab")),
        JobTarget::Group(group_name("berlin")),
        JobTarget::Devices(vec![id("a2"), id("a5"), id("a6"), id("a7")]),
    ];
    for (i, target) in targets.into_iter().enumerate() {
        let seq = last_seq(&*store).await;
        let preview = store.preview_target(&target, 2).await.unwrap();
        let ids = all_target_ids(&*store, &target).await;
        assert_eq!(last_seq(&*store).await, seq, "a dry run writes nothing");
        let name = format!("job-{i}");
        store.create_job(&spec(parts(&name, target.clone())), &at(200)).await.unwrap();
        let executions = execution_ids(&all_executions(&*store, &name).await);
        assert_eq!(ids, executions, "{target:?}");
        assert_eq!(preview.total, executions.len() as u64, "{target:?}");
        let by_state_total: u64 = preview.by_state.iter().map(|(_, n)| n).sum();
        assert_eq!(by_state_total, preview.total);
        assert_eq!(preview.online + preview.offline, preview.total);
        let expected_sample: Vec<String> = executions.iter().take(2).cloned().collect();
        let sample: Vec<String> = preview.sample.iter().map(ToString::to_string).collect();
        assert_eq!(sample, expected_sample);
    }
    // One preview in detail: berlin's in-service devices a1, a3 (registered), a4 (suspended), a7.
    let p = store.preview_target(&filter_target("tags.site = 'berlin'"), 10).await.unwrap();
    assert_eq!(p.total, 4);
    assert_eq!(
        p.by_state,
        [
            (LifecycleState::Registered, 1),
            (LifecycleState::Active, 2),
            (LifecycleState::Suspended, 1)
        ]
    );
    assert_eq!((p.online, p.offline), (1, 3));
    assert_eq!(p.by_group, [(group_name("berlin"), 4), (group_name("lab"), 1)]);
    assert!(!p.groups_truncated);
    let err = store.preview_target(&JobTarget::Group(group_name("nope")), 1).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { kind: "group", .. }), "{err:?}");
    check_chain(&*store).await;
}

/// A snapshot job whose target is empty completes at once; a continuous one keeps running.
pub async fn job_with_empty_target(store: Arc<dyn Store>) {
    let target = filter_target("tags.site = 'mars'");
    let job = store.create_job(&spec(parts("snap", target.clone())), &at(1)).await.unwrap();
    assert_eq!((job.state, job.counters.total()), (JobState::Completed, 0));
    let mut p = parts("cont", target);
    p.selection = Selection::Continuous;
    let job = store.create_job(&spec(p), &at(2)).await.unwrap();
    assert_eq!((job.state, job.counters.total()), (JobState::InProgress, 0));
}

/// `start_next_executions` starts queued executions in device id order, within the caller's
/// maximum and what the rollout allows in the current one-minute window, setting `started_at`
/// and the timeout; a paused job starts none.
pub async fn job_rollout_paces_starts(store: Arc<dyn Store>) {
    for i in 0..10 {
        store
            .create_device(&new_device(&format!("d{i}"), LifecycleState::Active), &at(1))
            .await
            .unwrap();
    }
    let mut p = parts("paced", filter_target("state = 'active'"));
    p.rollout = Rollout::Constant { max_per_minute: 3 };
    p.in_progress_timeout_secs = Some(30);
    let job = store.create_job(&spec(p), &at(10)).await.unwrap();
    let j = job.id().clone();
    let started = store.start_next_executions(&j, 2, ts(20)).await.unwrap();
    assert_eq!(execution_ids(&started), ["d0", "d1"]);
    for e in &started {
        assert_eq!(e.state, ExecutionState::InProgress);
        assert_eq!((e.started_at, e.timeout_at, e.version), (Some(ts(20)), Some(ts(30_020)), 2));
    }
    let started = store.start_next_executions(&j, 100, ts(30)).await.unwrap();
    assert_eq!(execution_ids(&started), ["d2"]);
    assert!(store.start_next_executions(&j, 100, ts(59_000)).await.unwrap().is_empty());
    // The next window starts a minute after the job.
    let started = store.start_next_executions(&j, 100, ts(60_010)).await.unwrap();
    assert_eq!(execution_ids(&started), ["d3", "d4", "d5"]);
    let job = check_counters(&*store, "paced").await;
    assert_eq!((job.counters.queued, job.counters.in_progress), (4, 6));
    store.set_job_state(&j, JobAction::Pause, &at(200_000)).await.unwrap();
    assert!(store.start_next_executions(&j, 100, ts(200_000)).await.unwrap().is_empty());
    store.set_job_state(&j, JobAction::Resume, &at(200_001)).await.unwrap();
    let started = store.start_next_executions(&j, 100, ts(200_002)).await.unwrap();
    assert_eq!(execution_ids(&started), ["d6", "d7", "d8"]);
    let err = store.start_next_executions(&job_id("nope"), 1, ts(1)).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { kind: "job", .. }), "{err:?}");

    // Exponential: 1 per minute, doubled after every success, at most 4.
    let mut p = parts("exp", filter_target("state = 'active'"));
    p.rollout = Rollout::Exponential {
        base_per_minute: 1,
        increment_factor: 2.0,
        increase_after_succeeded: 1,
        max_per_minute: 4,
    };
    let j = store.create_job(&spec(p), &at(300_000)).await.unwrap().id().clone();
    let started = store.start_next_executions(&j, 100, ts(300_000)).await.unwrap();
    assert_eq!(execution_ids(&started), ["d0"]);
    store
        .update_execution(&j, &id("d0"), &report(ExecutionState::Succeeded), ts(300_001))
        .await
        .unwrap();
    // Rate 2 now, one already started in this window.
    let started = store.start_next_executions(&j, 100, ts(300_002)).await.unwrap();
    assert_eq!(execution_ids(&started), ["d1"]);
    check_counters(&*store, "exp").await;
}

/// Execution updates follow the state machine, check versions, keep status details, keep the
/// counters exact through many transitions and complete the job with its last execution.
pub async fn job_execution_updates_keep_counters_exact(store: Arc<dyn Store>) {
    for i in 0..12 {
        store
            .create_device(&new_device(&format!("d{i:02}"), LifecycleState::Active), &at(1))
            .await
            .unwrap();
    }
    let j = store
        .create_job(&spec(parts("exact", filter_target("state = 'active'"))), &at(10))
        .await
        .unwrap()
        .id()
        .clone();
    store.start_next_executions(&j, 12, ts(20)).await.unwrap();
    let d = |i: usize| id(&format!("d{i:02}"));

    // A progress report keeps the state, stores its details and bumps the version.
    let details = StatusDetails::new(json!({"step": "download", "pct": 40})).unwrap();
    let progress = ExecutionUpdate {
        state: ExecutionState::InProgress,
        status_details: Some(details.clone()),
        expected_version: Some(2),
    };
    let done = store.update_execution(&j, &d(0), &progress, ts(30)).await.unwrap();
    assert_eq!(done.execution.state, ExecutionState::InProgress);
    assert_eq!((done.execution.version, done.execution.updated_at), (3, ts(30)));
    assert_eq!(done.execution.status_details, details);
    assert!(!done.retried);
    let stale = store.update_execution(&j, &d(0), &progress, ts(31)).await.unwrap_err();
    assert!(matches!(stale, StoreError::VersionMismatch { expected: 2, current: 3 }), "{stale:?}");
    // Details are kept when a report brings none.
    let done = store
        .update_execution(&j, &d(0), &report(ExecutionState::Succeeded), ts(32))
        .await
        .unwrap();
    assert_eq!(done.execution.status_details, details);
    let illegal = store
        .update_execution(&j, &d(0), &report(ExecutionState::Failed), ts(33))
        .await
        .unwrap_err();
    assert!(matches!(illegal, StoreError::Conflict(_)), "{illegal:?}");
    let err = store
        .update_execution(&j, &id("zz"), &report(ExecutionState::Failed), ts(33))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { kind: "job execution", .. }), "{err:?}");

    let outcomes = [
        ExecutionState::Succeeded,
        ExecutionState::Failed,
        ExecutionState::Rejected,
        ExecutionState::TimedOut,
        ExecutionState::Canceled,
        ExecutionState::Removed,
    ];
    for i in 1..11 {
        let to = outcomes[i % outcomes.len()];
        let done = store.update_execution(&j, &d(i), &report(to), ts(40 + i as i64)).await.unwrap();
        assert_eq!(done.execution.state, to);
        assert_eq!(done.job.state, JobState::InProgress);
        check_counters(&*store, "exact").await;
    }
    let done = store
        .update_execution(&j, &d(11), &report(ExecutionState::Succeeded), ts(100))
        .await
        .unwrap();
    assert_eq!(done.job.state, JobState::Completed);
    assert_eq!(done.job.version, 2);
    let job = check_counters(&*store, "exact").await;
    assert_eq!(job.state, JobState::Completed);
    assert_eq!(job.counters.unfinished(), 0);
    assert_eq!(job.counters.total(), 12);
    check_chain(&*store).await;
}

/// Failures the policy retries go back to `queued` with the next attempt and a back-off; they
/// start again only once it passed; the last attempt's failure stays.
pub async fn job_retries_failures_with_backoff(store: Arc<dyn Store>) {
    store.create_device(&new_device("d1", LifecycleState::Active), &at(1)).await.unwrap();
    let mut p = parts("retry", JobTarget::Devices(vec![id("d1")]));
    p.retry.failed =
        Some(RetryRule { max_attempts: 3, backoff_base_secs: 10, backoff_max_secs: 15 });
    let j = store.create_job(&spec(p), &at(0)).await.unwrap().id().clone();
    store.start_next_executions(&j, 1, ts(0)).await.unwrap();
    let done = store
        .update_execution(&j, &id("d1"), &report(ExecutionState::Failed), ts(1_000))
        .await
        .unwrap();
    assert!(done.retried);
    assert_eq!(done.execution.state, ExecutionState::Queued);
    assert_eq!((done.execution.attempt, done.execution.not_before), (2, ts(11_000)));
    assert_eq!((done.execution.started_at, done.execution.timeout_at), (None, None));
    assert_eq!(done.job.counters, JobCounters { queued: 1, ..JobCounters::default() });
    assert!(store.start_next_executions(&j, 1, ts(10_999)).await.unwrap().is_empty());
    let again = store.start_next_executions(&j, 1, ts(11_000)).await.unwrap();
    assert_eq!(again[0].attempt, 2);
    let done = store
        .update_execution(&j, &id("d1"), &report(ExecutionState::Failed), ts(12_000))
        .await
        .unwrap();
    assert_eq!((done.execution.attempt, done.execution.not_before), (3, ts(27_000)));
    store.start_next_executions(&j, 1, ts(70_000)).await.unwrap();
    let done = store
        .update_execution(&j, &id("d1"), &report(ExecutionState::Failed), ts(71_000))
        .await
        .unwrap();
    assert!(!done.retried);
    assert_eq!((done.execution.state, done.execution.attempt), (ExecutionState::Failed, 3));
    assert_eq!(done.job.state, JobState::Completed);
    // Nobody but the store queues an execution.
    let err = store
        .update_execution(&j, &id("d1"), &report(ExecutionState::Queued), ts(72_000))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    check_counters(&*store, "retry").await;
}

/// In-progress executions whose timeout passed time out (retried when the policy says so);
/// others are left alone.
pub async fn job_executions_time_out(store: Arc<dyn Store>) {
    for d in ["d1", "d2", "d3"] {
        store.create_device(&new_device(d, LifecycleState::Active), &at(1)).await.unwrap();
    }
    let mut p = parts("slow", filter_target("state = 'active'"));
    p.in_progress_timeout_secs = Some(30);
    p.retry.timed_out =
        Some(RetryRule { max_attempts: 2, backoff_base_secs: 0, backoff_max_secs: 0 });
    let j = store.create_job(&spec(p), &at(0)).await.unwrap().id().clone();
    store.start_next_executions(&j, 2, ts(0)).await.unwrap();
    store.start_next_executions(&j, 1, ts(10_000)).await.unwrap();
    assert!(store.time_out_executions(ts(29_999), nz(10)).await.unwrap().is_empty());
    let out = store.time_out_executions(ts(30_000), nz(10)).await.unwrap();
    assert_eq!(execution_ids(&out), ["d1", "d2"]);
    assert!(out.iter().all(|e| e.state == ExecutionState::Queued && e.attempt == 2));
    store.start_next_executions(&j, 2, ts(30_001)).await.unwrap();
    let out = store.time_out_executions(ts(61_000), nz(1)).await.unwrap();
    assert_eq!(execution_ids(&out), ["d3"]);
    let out = store.time_out_executions(ts(61_000), nz(10)).await.unwrap();
    assert_eq!(execution_ids(&out), ["d1", "d2"]);
    assert!(out.iter().all(|e| e.state == ExecutionState::TimedOut && e.timeout_at.is_none()));
    let job = check_counters(&*store, "slow").await;
    assert_eq!(job.counters.timed_out, 2);
    assert_eq!(job.counters.queued, 1);
}

/// When an abort criterion is met the job is aborted at once (audited as `job.abort` by
/// `system` with the criterion), its queued executions are canceled, and executions in progress
/// may still report.
pub async fn job_aborts_by_criteria(store: Arc<dyn Store>) {
    for i in 0..10 {
        store
            .create_device(&new_device(&format!("d{i}"), LifecycleState::Active), &at(1))
            .await
            .unwrap();
    }
    let mut p = parts("risky", filter_target("state = 'active'"));
    p.abort = vec![AbortCriterion {
        failure_types: BTreeSet::from([FailureType::Failed, FailureType::Rejected]),
        min_finished: 4,
        threshold_pct: 50.0,
    }];
    let j = store.create_job(&spec(p), &at(0)).await.unwrap().id().clone();
    store.start_next_executions(&j, 5, ts(1)).await.unwrap();
    let seq = last_seq(&*store).await;
    for (d, to) in [
        ("d0", ExecutionState::Succeeded),
        ("d1", ExecutionState::Failed),
        ("d2", ExecutionState::Succeeded),
    ] {
        let done = store.update_execution(&j, &id(d), &report(to), ts(2)).await.unwrap();
        assert_eq!(done.job.state, JobState::InProgress);
    }
    let before = store.job(&j).await.unwrap().unwrap();
    let done = store
        .update_execution(&j, &id("d3"), &report(ExecutionState::Rejected), ts(3))
        .await
        .unwrap();
    assert_eq!(done.job.state, JobState::Aborted);
    assert_eq!(done.job.aborted_by, Some(0));
    assert_eq!(done.job.version, 2);
    assert_eq!(done.job.counters.canceled, 5);
    assert_eq!(done.job.counters.in_progress, 1);
    let records = audit_since(&*store, seq).await;
    assert_eq!(records.len(), 1);
    let mut after = job_summary(&done.job);
    after["abort_criterion"] = json!(0);
    let system = domain::Mutation { actor: domain::Actor::system(), at: ts(3) };
    check_record(
        &records[0],
        &system,
        "job.abort",
        "job/risky",
        Some(job_summary(&before)),
        Some(after),
    );
    // The one still in progress finishes; nothing starts any more.
    let done = store
        .update_execution(&j, &id("d4"), &report(ExecutionState::Succeeded), ts(4))
        .await
        .unwrap();
    assert_eq!(done.job.state, JobState::Aborted);
    assert!(store.start_next_executions(&j, 5, ts(5)).await.unwrap().is_empty());
    check_counters(&*store, "risky").await;
    check_chain(&*store).await;
}

/// Pause, resume, cancel and abort by an operator: audited as `job.<action>` with the summaries,
/// version up by one; repeating the current state writes nothing; cancel and abort cancel the
/// queued executions and leave those in progress to finish; an ended job refuses the rest.
pub async fn job_pause_resume_cancel(store: Arc<dyn Store>) {
    for i in 0..5 {
        store
            .create_device(&new_device(&format!("d{i}"), LifecycleState::Active), &at(1))
            .await
            .unwrap();
    }
    let j = store
        .create_job(&spec(parts("ops", filter_target("state = 'active'"))), &at(0))
        .await
        .unwrap()
        .id()
        .clone();
    store.start_next_executions(&j, 2, ts(1)).await.unwrap();
    let seq = last_seq(&*store).await;
    let job0 = store.job(&j).await.unwrap().unwrap();
    let paused = store.set_job_state(&j, JobAction::Pause, &at(10)).await.unwrap();
    assert_eq!((paused.state, paused.version, paused.updated_at), (JobState::Paused, 2, ts(10)));
    assert_eq!(store.set_job_state(&j, JobAction::Pause, &at(11)).await.unwrap(), paused);
    let resumed = store.set_job_state(&j, JobAction::Resume, &at(12)).await.unwrap();
    assert_eq!((resumed.state, resumed.version), (JobState::InProgress, 3));
    let canceled = store.set_job_state(&j, JobAction::Cancel, &at(13)).await.unwrap();
    assert_eq!((canceled.state, canceled.version), (JobState::Canceled, 4));
    assert_eq!(
        canceled.counters,
        JobCounters { in_progress: 2, canceled: 3, ..JobCounters::default() }
    );
    let records = audit_since(&*store, seq).await;
    assert_eq!(records.len(), 3);
    check_record(
        &records[0],
        &at(10),
        "job.pause",
        "job/ops",
        Some(job_summary(&job0)),
        Some(job_summary(&paused)),
    );
    check_record(
        &records[1],
        &at(12),
        "job.resume",
        "job/ops",
        Some(job_summary(&paused)),
        Some(job_summary(&resumed)),
    );
    check_record(
        &records[2],
        &at(13),
        "job.cancel",
        "job/ops",
        Some(job_summary(&resumed)),
        Some(job_summary(&canceled)),
    );
    for action in [JobAction::Resume, JobAction::Pause, JobAction::Abort] {
        let err = store.set_job_state(&j, action, &at(14)).await.unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "{action:?}: {err:?}");
    }
    // In-progress executions of a canceled job still report; the job stays canceled.
    let done = store
        .update_execution(&j, &id("d0"), &report(ExecutionState::Succeeded), ts(15))
        .await
        .unwrap();
    assert_eq!(done.job.state, JobState::Canceled);
    // A failure of a canceled job is not retried.
    let done = store
        .update_execution(&j, &id("d1"), &report(ExecutionState::Failed), ts(16))
        .await
        .unwrap();
    assert!(!done.retried);
    check_counters(&*store, "ops").await;
    let err = store.set_job_state(&job_id("nope"), JobAction::Pause, &at(20)).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { kind: "job", .. }), "{err:?}");

    // Aborting by hand.
    let j = store
        .create_job(&spec(parts("ops2", filter_target("state = 'active'"))), &at(30))
        .await
        .unwrap()
        .id()
        .clone();
    let aborted = store.set_job_state(&j, JobAction::Abort, &at(31)).await.unwrap();
    assert_eq!(
        (aborted.state, aborted.counters.canceled, aborted.aborted_by),
        (JobState::Aborted, 5, None)
    );
    assert_eq!(audit_since(&*store, 0).await.last().unwrap().action, "job.abort");
    check_chain(&*store).await;
}

/// A continuous job reaches devices that join its target later, once; a snapshot job does not;
/// devices that leave the target or service are removed from what they had not started.
pub async fn job_continuous_reaches_new_devices(store: Arc<dyn Store>) {
    device_with(&*store, "b1", LifecycleState::Active, &[("site", "berlin")]).await;
    store.create_group(&static_group("lab"), &at(1)).await.unwrap();
    let mut p = parts("cont", filter_target("tags.site = 'berlin'"));
    p.selection = Selection::Continuous;
    store.create_job(&spec(p), &at(2)).await.unwrap();
    let mut p = parts("cont-lab", JobTarget::Group(group_name("lab")));
    p.selection = Selection::Continuous;
    store.create_job(&spec(p), &at(3)).await.unwrap();
    store
        .create_job(&spec(parts("snap", filter_target("tags.site = 'berlin'"))), &at(4))
        .await
        .unwrap();

    device_with(&*store, "b2", LifecycleState::Active, &[("site", "berlin")]).await;
    device_with(&*store, "p1", LifecycleState::Active, &[("site", "paris")]).await;
    let seq = last_seq(&*store).await;
    let added = store.add_job_executions_for(&id("b2"), ts(10)).await.unwrap();
    assert_eq!(added.len(), 1);
    assert_eq!((added[0].job_id.as_str(), added[0].device_id.as_str()), ("cont", "b2"));
    assert_eq!((added[0].state, added[0].not_before), (ExecutionState::Queued, ts(10)));
    assert!(store.add_job_executions_for(&id("b2"), ts(11)).await.unwrap().is_empty());
    assert!(store.add_job_executions_for(&id("p1"), ts(11)).await.unwrap().is_empty());
    assert_eq!(last_seq(&*store).await, seq, "not audited");
    store.add_group_members(&group_name("lab"), &[id("p1")], &at(12)).await.unwrap();
    let added = store.add_job_executions_for(&id("p1"), ts(13)).await.unwrap();
    assert_eq!(execution_ids(&added), ["p1"]);
    assert_eq!(added[0].job_id.as_str(), "cont-lab");
    assert_eq!(check_counters(&*store, "cont").await.counters.queued, 2);
    assert_eq!(check_counters(&*store, "snap").await.counters.queued, 1);

    // b2 moves to paris: removed from the continuous job only.
    let patch = DevicePatch { tags: Some(tags(&[("site", "paris")])), ..DevicePatch::default() };
    store.update_device(&id("b2"), &patch, None, &at(20)).await.unwrap();
    let removed = store.remove_job_executions_for(&id("b2"), ts(21)).await.unwrap();
    assert_eq!(removed.len(), 1);
    assert_eq!((removed[0].job_id.as_str(), removed[0].state), ("cont", ExecutionState::Removed));
    // b1 is decommissioned: removed everywhere; the snapshot job completes.
    let patch =
        DevicePatch { state: Some(LifecycleState::Decommissioned), ..DevicePatch::default() };
    store.update_device(&id("b1"), &patch, None, &at(22)).await.unwrap();
    let removed = store.remove_job_executions_for(&id("b1"), ts(23)).await.unwrap();
    assert_eq!(removed.len(), 2);
    assert_eq!(check_counters(&*store, "snap").await.state, JobState::Completed);
    // A deleted device: removed too; a device that is still in is kept.
    store.delete_device(&id("p1"), None, &at(24)).await.unwrap();
    assert_eq!(store.remove_job_executions_for(&id("p1"), ts(25)).await.unwrap().len(), 1);
    assert!(store.remove_job_executions_for(&id("b1"), ts(26)).await.unwrap().is_empty());
    let job = check_counters(&*store, "cont").await;
    assert_eq!(
        (job.state, job.counters.removed, job.counters.queued),
        (JobState::InProgress, 2, 0)
    );
    check_counters(&*store, "cont-lab").await;
    // A canceled continuous job takes no new devices.
    store.set_job_state(&job_id("cont"), JobAction::Cancel, &at(30)).await.unwrap();
    device_with(&*store, "b3", LifecycleState::Active, &[("site", "berlin")]).await;
    assert!(store.add_job_executions_for(&id("b3"), ts(31)).await.unwrap().is_empty());
    check_chain(&*store).await;
}

/// Jobs list in id order with a state filter; executions list by state; a device sees its
/// executions, pending ones only when asked.
pub async fn job_lists_and_device_view(store: Arc<dyn Store>) {
    store.create_device(&new_device("d1", LifecycleState::Active), &at(1)).await.unwrap();
    store.create_device(&new_device("d2", LifecycleState::Active), &at(1)).await.unwrap();
    for (i, j) in ["j3", "j1", "j2"].iter().enumerate() {
        store
            .create_job(&spec(parts(j, filter_target("state = 'active'"))), &at(10 + i as i64))
            .await
            .unwrap();
    }
    store.set_job_state(&job_id("j2"), JobAction::Pause, &at(20)).await.unwrap();
    let page = store.list_jobs(None, None, nz(2)).await.unwrap();
    let ids: Vec<&str> = page.items.iter().map(|j| j.id().as_str()).collect();
    assert_eq!((ids, page.has_more), (vec!["j1", "j2"], true));
    let page = store.list_jobs(None, Some(&job_id("j2")), nz(2)).await.unwrap();
    let ids: Vec<&str> = page.items.iter().map(|j| j.id().as_str()).collect();
    assert_eq!((ids, page.has_more), (vec!["j3"], false));
    let page = store.list_jobs(Some(JobState::Paused), None, nz(10)).await.unwrap();
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].id().as_str(), "j2");

    store.start_next_executions(&job_id("j3"), 1, ts(30)).await.unwrap();
    store
        .update_execution(&job_id("j3"), &id("d1"), &report(ExecutionState::Succeeded), ts(31))
        .await
        .unwrap();
    let page = store
        .job_executions(&job_id("j3"), Some(ExecutionState::Queued), None, nz(10))
        .await
        .unwrap();
    assert_eq!(execution_ids(&page.items), ["d2"]);
    let err = store.job_executions(&job_id("nope"), None, None, nz(1)).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { kind: "job", .. }), "{err:?}");

    let all = store.device_job_executions(&id("d1"), false).await.unwrap();
    let jobs: Vec<&str> = all.iter().map(|e| e.job_id.as_str()).collect();
    assert_eq!(jobs, ["j3", "j1", "j2"], "oldest job first");
    let pending = store.device_job_executions(&id("d1"), true).await.unwrap();
    let jobs: Vec<&str> = pending.iter().map(|e| e.job_id.as_str()).collect();
    assert_eq!(jobs, ["j1", "j2"]);
    assert!(store.device_job_executions(&id("zz"), false).await.unwrap().is_empty());
}

/// A job over 10 000 devices is created in one transaction with exact counters, and the dry run
/// agrees with it.
pub async fn job_over_ten_thousand_devices(store: Arc<dyn Store>) {
    let rows: Vec<ImportRow> = (0..10_000)
        .map(|i| ImportRow {
            line: i + 1,
            id: id(&format!("dev-{i:05}")),
            patch: DevicePatch {
                state: Some(LifecycleState::Active),
                tags: Some(tags(&[("ring", if i % 2 == 0 { "0" } else { "1" })])),
                ..DevicePatch::default()
            },
        })
        .collect();
    for chunk in rows.chunks(2_000) {
        store.import_devices(chunk, crate::ImportMode::Atomic, &at(1)).await.unwrap();
    }
    let target = filter_target("state = 'active'");
    let preview = store.preview_target(&target, 5).await.unwrap();
    let job = store.create_job(&spec(parts("big", target)), &at(2)).await.unwrap();
    assert_eq!(job.counters.queued, 10_000);
    assert_eq!(preview.total, 10_000);
    assert_eq!(preview.sample.len(), 5);
    let started = store.start_next_executions(job.id(), 1000, ts(3)).await.unwrap();
    assert_eq!(started.len(), 1000);
    let job = store.job(job.id()).await.unwrap().unwrap();
    assert_eq!((job.counters.queued, job.counters.in_progress), (9_000, 1_000));
    let ring = store.preview_target(&filter_target("tags.ring = '1'"), 0).await.unwrap();
    assert_eq!((ring.total, ring.sample.len()), (5_000, 0));
}

/// Counters stay equal to a recount of the executions through a long random mix of starts,
/// reports (legal and illegal), retries and timeouts.
pub async fn job_counters_stay_exact_under_random_reports(store: Arc<dyn Store>) {
    for i in 0..30 {
        store
            .create_device(&new_device(&format!("r{i:02}"), LifecycleState::Active), &at(1))
            .await
            .unwrap();
    }
    let mut p = parts("random", filter_target("state = 'active'"));
    p.in_progress_timeout_secs = Some(40);
    p.retry.failed = Some(RetryRule { max_attempts: 3, backoff_base_secs: 1, backoff_max_secs: 2 });
    p.retry.timed_out =
        Some(RetryRule { max_attempts: 2, backoff_base_secs: 0, backoff_max_secs: 0 });
    let j = store.create_job(&spec(p), &at(0)).await.unwrap().id().clone();
    let mut rng = crate::conformance::Rng(7);
    let mut now = 0;
    for step in 0..300 {
        now += 500;
        match rng.below(4) {
            0 => {
                let max = 1 + rng.below(5) as u32;
                store.start_next_executions(&j, max, ts(now)).await.unwrap();
            }
            1 => {
                store.time_out_executions(ts(now), nz(1 + rng.below(3) as u32)).await.unwrap();
            }
            _ => {
                let device = id(&format!("r{:02}", rng.below(30)));
                let to = ExecutionState::ALL[rng.below(ExecutionState::ALL.len())];
                match store.update_execution(&j, &device, &report(to), ts(now)).await {
                    Ok(done) => assert_eq!(done.job.counters.total(), 30),
                    Err(StoreError::Conflict(_)) => {}
                    Err(e) => panic!("step {step}: {e:?}"),
                }
            }
        }
        if step % 25 == 0 {
            check_counters(&*store, "random").await;
        }
    }
    let job = check_counters(&*store, "random").await;
    assert_eq!(job.counters.total(), 30);
    check_chain(&*store).await;
}

/// `sync_continuous_job` reaches, set-based, every in-service device that joined a continuous
/// job's target by any path (no `add_job_executions_for` call), once; snapshot and finished jobs
/// take none; an unknown job is not found.
pub async fn job_sync_continuous_reaches_every_new_device(store: Arc<dyn Store>) {
    device_with(&*store, "s1", LifecycleState::Active, &[("site", "berlin")]).await;
    store.create_group(&static_group("lab"), &at(1)).await.unwrap();
    let mut p = parts("cont", filter_target("tags.site = 'berlin'"));
    p.selection = Selection::Continuous;
    store.create_job(&spec(p), &at(2)).await.unwrap();
    let mut p = parts("cont-lab", JobTarget::Group(group_name("lab")));
    p.selection = Selection::Continuous;
    store.create_job(&spec(p), &at(3)).await.unwrap();
    store
        .create_job(&spec(parts("snap", filter_target("tags.site = 'berlin'"))), &at(4))
        .await
        .unwrap();
    assert_eq!(store.sync_continuous_job(&job_id("cont"), ts(5)).await.unwrap(), 0);

    // New devices by several paths: created with tags, tagged later, out of service, elsewhere.
    device_with(&*store, "s2", LifecycleState::Active, &[("site", "berlin")]).await;
    device_with(&*store, "s3", LifecycleState::Registered, &[]).await;
    let patch = DevicePatch { tags: Some(tags(&[("site", "berlin")])), ..DevicePatch::default() };
    store.update_device(&id("s3"), &patch, None, &at(6)).await.unwrap();
    device_with(&*store, "s4", LifecycleState::Decommissioned, &[("site", "berlin")]).await;
    device_with(&*store, "s5", LifecycleState::Active, &[("site", "paris")]).await;
    store.add_group_members(&group_name("lab"), &[id("s5")], &at(7)).await.unwrap();

    let seq = last_seq(&*store).await;
    assert_eq!(store.sync_continuous_job(&job_id("cont"), ts(10)).await.unwrap(), 2);
    assert_eq!(store.sync_continuous_job(&job_id("cont"), ts(11)).await.unwrap(), 0, "once");
    assert_eq!(store.sync_continuous_job(&job_id("cont-lab"), ts(12)).await.unwrap(), 1);
    assert_eq!(store.sync_continuous_job(&job_id("snap"), ts(13)).await.unwrap(), 0);
    assert_eq!(last_seq(&*store).await, seq, "not audited");
    let cont = all_executions(&*store, "cont").await;
    assert_eq!(execution_ids(&cont), ["s1", "s2", "s3"]);
    let new = cont.iter().find(|e| e.device_id.as_str() == "s2").unwrap();
    assert_eq!((new.state, new.attempt, new.not_before), (ExecutionState::Queued, 1, ts(10)));
    assert_eq!(execution_ids(&all_executions(&*store, "cont-lab").await), ["s5"]);
    assert_eq!(execution_ids(&all_executions(&*store, "snap").await), ["s1"]);
    assert_eq!(check_counters(&*store, "cont").await.counters.queued, 3);
    check_counters(&*store, "cont-lab").await;
    check_counters(&*store, "snap").await;
    // What the sync created is what the target resolves to now.
    assert_eq!(
        all_target_ids(&*store, &filter_target("tags.site = 'berlin'")).await,
        execution_ids(&cont)
    );

    // A paused job still takes devices; a canceled one does not.
    store.set_job_state(&job_id("cont"), JobAction::Pause, &at(20)).await.unwrap();
    device_with(&*store, "s6", LifecycleState::Active, &[("site", "berlin")]).await;
    assert_eq!(store.sync_continuous_job(&job_id("cont"), ts(21)).await.unwrap(), 1);
    store.set_job_state(&job_id("cont"), JobAction::Cancel, &at(22)).await.unwrap();
    device_with(&*store, "s7", LifecycleState::Active, &[("site", "berlin")]).await;
    assert_eq!(store.sync_continuous_job(&job_id("cont"), ts(23)).await.unwrap(), 0);
    check_counters(&*store, "cont").await;
    assert!(matches!(
        store.sync_continuous_job(&job_id("nope"), ts(24)).await,
        Err(StoreError::NotFound { kind: "job", .. })
    ));
    check_chain(&*store).await;
}
