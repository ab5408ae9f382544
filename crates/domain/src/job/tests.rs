//! Unit tests of the job rules: spec validation, the state machines, counters, rollout, retry and
//! abort decisions, and a property test of the incremental counters.

use std::collections::BTreeSet;

use proptest::prelude::*;
use serde_json::json;

use super::*;

fn id(s: &str) -> DeviceId {
    DeviceId::new(s).unwrap()
}

fn parts() -> JobSpecParts {
    JobSpecParts {
        id: JobId::new("job-1").unwrap(),
        description: String::new(),
        operation: JobOperation::DesiredPatch { patch: json!({"fw": "1.2"}) },
        target: JobTarget::Filter(Filter::parse("tags.site = 'x'").unwrap()),
        selection: Selection::Snapshot,
        rollout: Rollout::Constant { max_per_minute: 100 },
        in_progress_timeout_secs: None,
        retry: RetryPolicy::default(),
        abort: Vec::new(),
    }
}

#[track_caller]
fn refused(change: impl FnOnce(&mut JobSpecParts), expected: &str) {
    let mut p = parts();
    change(&mut p);
    let err = JobSpec::new(p).unwrap_err();
    assert_eq!(err.to_string(), expected);
}

fn t(ms: i64) -> Timestamp {
    Timestamp::from_millis(ms)
}

#[test]
fn job_ids() {
    assert!(JobId::new("fw-2.1_rollout.a").is_ok());
    assert!(JobId::new("a".repeat(64)).is_ok());
    assert!(JobId::new("").is_err());
    assert!(JobId::new("a".repeat(65)).is_err());
    assert!(JobId::new("a/b").is_err());
    assert!(JobId::new("é").is_err());
}

#[test]
fn spec_validation() {
    assert!(JobSpec::new(parts()).is_ok());
    refused(|p| p.description = "x".repeat(1025), "the description is longer than 1024 characters");
    refused(
        |p| {
            p.operation = JobOperation::Command {
                name: "re boot".into(),
                payload: json!(null),
                timeout_secs: 5,
            }
        },
        "invalid command name \"re boot\": use 1 to 64 letters, digits and . _ - /",
    );
    refused(
        |p| {
            p.operation =
                JobOperation::Command { name: "reboot".into(), payload: json!(1), timeout_secs: 0 }
        },
        "the command timeout must be 1 to 604800 seconds",
    );
    refused(
        |p| {
            p.operation = JobOperation::Command {
                name: "x".into(),
                payload: json!("a".repeat(40_000)),
                timeout_secs: 5,
            }
        },
        "the command payload is 40002 bytes serialized; the limit is 32768",
    );
    refused(
        |p| p.operation = JobOperation::DesiredPatch { patch: json!({}) },
        "the desired patch must be a non-empty JSON object",
    );
    refused(
        |p| p.operation = JobOperation::DesiredPatch { patch: json!([1]) },
        "the desired patch must be a non-empty JSON object",
    );
    refused(|p| p.target = JobTarget::Devices(vec![]), "the target lists no device");
    refused(
        |p| p.target = JobTarget::Devices((0..10_001).map(|i| id(&format!("d{i}"))).collect()),
        "the target lists 10001 devices; the limit is 10000",
    );
    refused(
        |p| {
            p.target = JobTarget::Devices(vec![id("a")]);
            p.selection = Selection::Continuous;
        },
        "a continuous job needs a group or filter target, not a device list",
    );
    refused(
        |p| p.rollout = Rollout::Constant { max_per_minute: 0 },
        "rollout: max_per_minute must be 1 to 1000000",
    );
    let exp = |b, f, n, m| Rollout::Exponential {
        base_per_minute: b,
        increment_factor: f,
        increase_after_succeeded: n,
        max_per_minute: m,
    };
    refused(
        |p| p.rollout = exp(10, 1.0, 5, 100),
        "rollout: increment_factor must be above 1 and at most 5",
    );
    refused(
        |p| p.rollout = exp(10, 5.5, 5, 100),
        "rollout: increment_factor must be above 1 and at most 5",
    );
    refused(
        |p| p.rollout = exp(200, 2.0, 5, 100),
        "rollout: base_per_minute must be 1 to max_per_minute",
    );
    refused(
        |p| p.rollout = exp(10, 2.0, 0, 100),
        "rollout: increase_after_succeeded must be at least 1",
    );
    refused(
        |p| p.in_progress_timeout_secs = Some(0),
        "the in-progress timeout must be 1 to 604800 seconds",
    );
    let rule =
        |a, b, m| Some(RetryRule { max_attempts: a, backoff_base_secs: b, backoff_max_secs: m });
    refused(|p| p.retry.failed = rule(11, 1, 1), "retry for failed: max_attempts must be 1 to 10");
    refused(
        |p| p.retry.timed_out = rule(0, 1, 1),
        "retry for timed_out: max_attempts must be 1 to 10",
    );
    refused(
        |p| p.retry.failed = rule(3, 10, 5),
        "retry for failed: backoff_base_secs must not exceed backoff_max_secs",
    );
    let crit = |types: &[FailureType], n, pct| AbortCriterion {
        failure_types: types.iter().copied().collect(),
        min_finished: n,
        threshold_pct: pct,
    };
    refused(
        |p| p.abort = vec![crit(&[], 1, 10.0)],
        "abort criterion 0: name at least one failure type",
    );
    refused(
        |p| {
            p.abort =
                vec![crit(&[FailureType::Failed], 1, 10.0), crit(&[FailureType::Failed], 0, 10.0)]
        },
        "abort criterion 1: min_finished must be at least 1",
    );
    refused(
        |p| p.abort = vec![crit(&[FailureType::Failed], 1, 0.0)],
        "abort criterion 0: threshold_pct must be above 0 and at most 100",
    );
    refused(
        |p| p.abort = vec![crit(&[FailureType::Failed], 1, f64::NAN)],
        "abort criterion 0: threshold_pct must be above 0 and at most 100",
    );
    refused(
        |p| p.abort = vec![crit(&[FailureType::Failed], 1, 5.0); 9],
        "at most 8 abort criteria",
    );
}

#[test]
fn device_lists_are_sorted_and_deduplicated() {
    let mut p = parts();
    p.target = JobTarget::Devices(vec![id("b"), id("a"), id("b")]);
    let spec = JobSpec::new(p).unwrap();
    assert_eq!(spec.target(), &JobTarget::Devices(vec![id("a"), id("b")]));
}

#[test]
fn job_state_transitions() {
    use JobAction::{Abort, Cancel, Pause, Resume};
    use JobState::{Aborted, Canceled, Completed, InProgress, Paused};
    let cases = [
        (InProgress, Pause, Ok(Paused)),
        (Paused, Resume, Ok(InProgress)),
        (Paused, Pause, Ok(Paused)),
        (InProgress, Resume, Ok(InProgress)),
        (InProgress, Cancel, Ok(Canceled)),
        (Paused, Abort, Ok(Aborted)),
        (Canceled, Cancel, Ok(Canceled)),
        (Canceled, Resume, Err(())),
        (Completed, Cancel, Err(())),
        (Aborted, Pause, Err(())),
        (Completed, Abort, Err(())),
    ];
    for (from, action, expected) in cases {
        assert_eq!(from.apply(action).map_err(|_| ()), expected, "{from} {action:?}");
    }
    let err = Completed.apply(Resume).unwrap_err();
    assert_eq!(err.to_string(), "a completed job cannot be resumed");
    for s in JobState::ALL {
        assert_eq!(JobState::parse(s.as_str()).unwrap(), s);
    }
    assert!(JobState::parse("done").is_err());
}

#[test]
fn snapshot_jobs_complete_continuous_ones_do_not() {
    let done = JobCounters { succeeded: 3, failed: 1, ..JobCounters::default() };
    let busy = done.add(ExecutionState::Queued, 1);
    assert_eq!(JobState::InProgress.settle(Selection::Snapshot, &done), JobState::Completed);
    assert_eq!(JobState::Paused.settle(Selection::Snapshot, &done), JobState::Completed);
    assert_eq!(JobState::InProgress.settle(Selection::Snapshot, &busy), JobState::InProgress);
    assert_eq!(JobState::InProgress.settle(Selection::Continuous, &done), JobState::InProgress);
    assert_eq!(JobState::Canceled.settle(Selection::Snapshot, &done), JobState::Canceled);
    // A snapshot job whose target was empty completes at once.
    assert_eq!(
        JobState::InProgress.settle(Selection::Snapshot, &JobCounters::default()),
        JobState::Completed
    );
}

#[test]
fn execution_state_machine() {
    use ExecutionState::{
        Canceled, Failed, InProgress, Queued, Rejected, Removed, Succeeded, TimedOut,
    };
    let allowed = [
        (Queued, InProgress),
        (Queued, Canceled),
        (Queued, Removed),
        (InProgress, InProgress),
        (InProgress, Succeeded),
        (InProgress, Failed),
        (InProgress, Rejected),
        (InProgress, TimedOut),
        (InProgress, Canceled),
        (InProgress, Removed),
        (Failed, Queued),
        (TimedOut, Queued),
    ];
    for from in ExecutionState::ALL {
        for to in ExecutionState::ALL {
            assert_eq!(
                from.check_transition(to).is_ok(),
                allowed.contains(&(from, to)),
                "{from} -> {to}"
            );
        }
        assert_eq!(ExecutionState::parse(from.as_str()).unwrap(), from);
    }
    assert_eq!(
        Queued.check_transition(Succeeded).unwrap_err().to_string(),
        "a job execution cannot go from queued to succeeded"
    );
}

#[test]
fn counters_follow_transitions() {
    use ExecutionState::{Failed, InProgress, Queued, Succeeded};
    let c = JobCounters::default().add(Queued, 5);
    let c = c.transition(Queued, InProgress, 3);
    let c = c.transition(InProgress, Succeeded, 1).transition(InProgress, Failed, 1);
    let c = c.transition(Failed, Queued, 1);
    assert_eq!(
        c,
        JobCounters { queued: 3, in_progress: 1, succeeded: 1, ..JobCounters::default() }
    );
    assert_eq!(c.total(), 5);
    assert_eq!(c.finished(), 1);
    assert_eq!(c.unfinished(), 4);
    assert_eq!(c.transition(InProgress, InProgress, 1), c);
}

#[test]
fn constant_rollout_allowance() {
    let r = Rollout::Constant { max_per_minute: 10 };
    let start = t(1_000_000);
    // Nothing started yet: the whole rate.
    let (n, w) = r.allowance(start, None, 0, t(1_000_500));
    assert_eq!((n, w), (10, RolloutWindow { start, started: 0 }));
    // 7 started in this window: 3 more.
    let (n, _) = r.allowance(start, Some(RolloutWindow { start, started: 7 }), 0, t(1_030_000));
    assert_eq!(n, 3);
    // Past the minute: a new window.
    let (n, w) = r.allowance(start, Some(RolloutWindow { start, started: 10 }), 0, t(1_060_000));
    assert_eq!((n, w), (10, RolloutWindow { start: t(1_060_000), started: 0 }));
    // More started than allowed (a lower rate after a change): none, never negative.
    let (n, _) = r.allowance(start, Some(RolloutWindow { start, started: 12 }), 0, start);
    assert_eq!(n, 0);
    // A clock behind the start counts as the first window.
    let (_, w) = r.allowance(start, None, 0, t(0));
    assert_eq!(w.start, start);
}

#[test]
fn exponential_rollout_rate() {
    let r = Rollout::Exponential {
        base_per_minute: 10,
        increment_factor: 2.0,
        increase_after_succeeded: 5,
        max_per_minute: 100,
    };
    let rates: Vec<u64> = [0, 4, 5, 9, 10, 15, 20, 1_000_000].iter().map(|s| r.rate(*s)).collect();
    assert_eq!(rates, [10, 10, 20, 20, 40, 80, 100, 100]);
    let r = Rollout::Exponential {
        base_per_minute: 1,
        increment_factor: 1.5,
        increase_after_succeeded: 1,
        max_per_minute: 1_000_000,
    };
    assert_eq!(r.rate(u64::MAX), 1_000_000);
    assert_eq!(r.rate(1), 1);
    assert_eq!(r.rate(2), 2);
}

#[test]
fn retry_decisions() {
    let mut p = parts();
    p.retry.failed =
        Some(RetryRule { max_attempts: 4, backoff_base_secs: 10, backoff_max_secs: 25 });
    p.retry.timed_out =
        Some(RetryRule { max_attempts: 2, backoff_base_secs: 0, backoff_max_secs: 0 });
    let spec = JobSpec::new(p).unwrap();
    let now = t(1_000);
    assert_eq!(spec.retry_at(FailureType::Failed, 1, now), Some(t(11_000)));
    assert_eq!(spec.retry_at(FailureType::Failed, 2, now), Some(t(21_000)));
    assert_eq!(spec.retry_at(FailureType::Failed, 3, now), Some(t(26_000)));
    assert_eq!(spec.retry_at(FailureType::Failed, 4, now), None);
    assert_eq!(spec.retry_at(FailureType::TimedOut, 1, now), Some(now));
    assert_eq!(spec.retry_at(FailureType::TimedOut, 2, now), None);
    assert_eq!(spec.retry_at(FailureType::Rejected, 1, now), None);
    let none = JobSpec::new(parts()).unwrap();
    assert_eq!(none.retry_at(FailureType::Failed, 1, now), None);
}

#[test]
fn abort_evaluation() {
    let mut p = parts();
    p.abort = vec![
        AbortCriterion {
            failure_types: BTreeSet::from([FailureType::Failed, FailureType::TimedOut]),
            min_finished: 10,
            threshold_pct: 20.0,
        },
        AbortCriterion {
            failure_types: BTreeSet::from([FailureType::Rejected]),
            min_finished: 2,
            threshold_pct: 100.0,
        },
    ];
    let spec = JobSpec::new(p).unwrap();
    let c = |s, f, r, t, other| JobCounters {
        succeeded: s,
        failed: f,
        rejected: r,
        timed_out: t,
        canceled: other,
        queued: other,
        ..JobCounters::default()
    };
    assert_eq!(spec.abort_criterion_met(&c(0, 0, 0, 0, 50)), None);
    // 2 of 9 finished failed: not enough finished yet.
    assert_eq!(spec.abort_criterion_met(&c(7, 2, 0, 0, 0)), None);
    // 2 of 10: exactly 20 %.
    assert_eq!(spec.abort_criterion_met(&c(8, 1, 0, 1, 0)), Some(0));
    // 1 of 10: below; canceled and queued ones do not count.
    assert_eq!(spec.abort_criterion_met(&c(9, 1, 0, 0, 100)), None);
    // Every finished one rejected.
    assert_eq!(spec.abort_criterion_met(&c(0, 0, 2, 0, 0)), Some(1));
    assert_eq!(spec.abort_criterion_met(&c(0, 0, 1, 0, 0)), None);
}

#[test]
fn status_details_are_bounded_objects() {
    assert!(StatusDetails::new(json!({"step": "download", "pct": 40})).is_ok());
    assert!(StatusDetails::new(json!("x")).is_err());
    let err = StatusDetails::new(json!({"x": "a".repeat(5000)})).unwrap_err();
    assert!(err.to_string().contains("limit is 4096"), "{err}");
}

/// What a store does to one execution, as the incremental counters see it.
#[derive(Debug, Clone)]
enum Step {
    Create(usize),
    Move(usize, ExecutionState),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0usize..20).prop_map(Step::Create),
        ((0usize..20), (0usize..8)).prop_map(|(i, s)| Step::Move(i, ExecutionState::ALL[s])),
    ]
}

proptest! {
    /// Counters maintained transition by transition equal the counts recomputed from the
    /// executions, whatever legal and illegal moves are attempted (illegal ones change nothing).
    #[test]
    fn incremental_counters_equal_recount(steps in prop::collection::vec(step(), 0..200)) {
        let mut executions: Vec<Option<ExecutionState>> = vec![None; 20];
        let mut counters = JobCounters::default();
        for s in steps {
            match s {
                Step::Create(i) => {
                    if executions[i].is_none() {
                        executions[i] = Some(ExecutionState::Queued);
                        counters = counters.add(ExecutionState::Queued, 1);
                    }
                }
                Step::Move(i, to) => {
                    if let Some(from) = executions[i]
                        && from.check_transition(to).is_ok()
                    {
                        executions[i] = Some(to);
                        counters = counters.transition(from, to, 1);
                    }
                }
            }
            let recount = JobCounters::count(executions.iter().flatten().copied());
            prop_assert_eq!(counters, recount);
            prop_assert_eq!(counters.total(), executions.iter().flatten().count() as u64);
        }
    }
}
