//! The fleet-jobs acceptance test: simulated devices run a command job rolled out at a bounded
//! rate; 20 % of executions fail (seeded), so the job's abort criterion (at least 10 % failed once
//! 100 finished) aborts it; the job's counters then equal a recount of a full page-through of its
//! executions, exactly.
//!
//! The fleet is `HERD_JOBS_ACCEPTANCE_DEVICES` devices (default 5000, the figure; about
//! 10 s in a debug build on 2 cores); the figures print with
//! `cargo test --release -p device-simulator --test it jobs -- --nocapture`.

use std::time::Duration;

use device_simulator::profile::JobBehaviour;
use serde_json::{Value, json};
use test_support::TestServer;

use crate::{Recorded, config};

/// Every execution of `job`, through pages of 1000.
async fn all_executions(server: &TestServer, job: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/jobs/{job}/executions?limit=1000&cursor={c}"),
            None => format!("/api/v1/jobs/{job}/executions?limit=1000"),
        };
        let (status, page) = server.get(&path).await;
        assert_eq!(status, 200, "{page}");
        out.extend(page["items"].as_array().expect("items").iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return out,
        }
    }
}

async fn job(server: &TestServer, id: &str) -> Value {
    let (status, job) = server.get(&format!("/api/v1/jobs/{id}")).await;
    assert_eq!(status, 200, "{job}");
    job
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[expect(clippy::print_stderr, reason = "the acceptance figures, shown with --nocapture")]
async fn a_command_job_over_the_fleet_aborts_by_its_criterion_with_exact_counters() {
    let devices: u64 = std::env::var("HERD_JOBS_ACCEPTANCE_DEVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let server = TestServer::start_with(|c| {
        c.jobs.tick = Duration::from_millis(50);
    })
    .await;
    let mut sim = config(&server, devices, "job-");
    sim.duration = None;
    sim.ramp_rate = 2_000.0;
    sim.profile.telemetry_interval = Duration::from_secs(3600);
    sim.profile.event_rate_per_hour = 0.0;
    sim.profile.jobs =
        Some(JobBehaviour { delay: Duration::from_millis(20), failure_percent: 20.0 });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let started = std::time::Instant::now();
    let sim_run = async {
        let mut recorded = Recorded::default();
        device_simulator::run(&sim, &mut recorded, async {
            let _ = stop_rx.await;
        })
        .await
    };
    let check = async {
        // Wait until the whole fleet exists and is connected.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
        loop {
            let (_, inventory) = server.get("/api/v1/inventory/connectivity").await;
            let (status, preview) = server
                .post(
                    "/api/v1/jobs?dry_run=true",
                    &json!({"id": "probe", "operation": {"command": {"name": "x"}},
                        "target": {"filter": "tags.simulator = 'herd-sim'"}}),
                )
                .await;
            assert_eq!(status, 200, "{preview}");
            if preview["total"] == devices && preview["online"] == devices {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{preview} {inventory}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let fleet_up = started.elapsed();

        // A fifth of the fleet per minute (at least 300, so that the criterion is decided in the
        // first one-minute window).
        let rate = (devices / 5).max(300);
        let (status, created) = server
            .post(
                "/api/v1/jobs",
                &json!({
                    "id": "fleet-reboot",
                    "operation": {"command": {"name": "reboot", "payload": {"delay": 0}}},
                    "target": {"filter": "tags.simulator = 'herd-sim'"},
                    "rollout": {"max_per_minute": rate},
                    "abort": [{"failure_types": ["failed", "timed_out"], "min_finished": 100,
                               "threshold_pct": 10.0}],
                }),
            )
            .await;
        assert_eq!(status, 201, "{created}");
        assert_eq!(created["counters"]["queued"], devices);
        let job_start = std::time::Instant::now();

        let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
        let aborted = loop {
            let j = job(&server, "fleet-reboot").await;
            if j["state"] != "in_progress" {
                break j;
            }
            assert!(tokio::time::Instant::now() < deadline, "{j:#}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let to_abort = job_start.elapsed();
        assert_eq!(aborted["state"], "aborted", "{aborted:#}");
        assert_eq!(aborted["aborted_by"], 0, "{aborted:#}");
        let c = &aborted["counters"];
        let finished = ["succeeded", "failed", "rejected", "timed_out"]
            .iter()
            .map(|k| c[*k].as_u64().unwrap_or(0))
            .sum::<u64>();
        assert!(finished >= 100, "the criterion waits for 100 finished: {c}");
        assert!(c["failed"].as_u64().unwrap_or(0) * 100 >= 10 * finished, "{c}");
        assert_eq!(c["queued"], 0, "aborting cancels what was queued: {c}");
        assert!(c["total"].as_u64().unwrap_or(0) == devices, "{c}");
        // The rollout's window is one minute from the job's start: within it, at most `rate` start.
        let started_count = devices - c["canceled"].as_u64().unwrap_or(0);
        if to_abort < Duration::from_secs(55) {
            assert!(started_count <= rate, "{started_count} started, rate {rate}/min: {c}");
        }
        // Stop the devices.
        let _ = stop_tx.send(());
        (fleet_up, to_abort)
    };
    let (summary, (fleet_up, to_abort)) = tokio::join!(sim_run, check);
    let summary = summary.expect("the run started");

    // Let in-flight reports settle: two equal reads a second apart.
    let mut last = job(&server, "fleet-reboot").await;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = job(&server, "fleet-reboot").await;
        if now == last {
            break;
        }
        last = now;
    }
    let executions = all_executions(&server, "fleet-reboot").await;
    assert_eq!(executions.len() as u64, devices);
    let mut recount = serde_json::Map::new();
    for k in [
        "queued",
        "in_progress",
        "succeeded",
        "failed",
        "rejected",
        "timed_out",
        "canceled",
        "removed",
    ] {
        recount.insert(k.to_owned(), json!(0));
    }
    for e in &executions {
        let state = e["state"].as_str().expect("state");
        let n = recount[state].as_u64().unwrap_or(0);
        recount.insert(state.to_owned(), json!(n + 1));
    }
    recount.insert("total".to_owned(), json!(devices));
    assert_eq!(last["counters"], Value::Object(recount), "counters equal the recount exactly");
    assert_eq!(job(&server, "fleet-reboot").await, last, "nothing moved during the recount");
    eprintln!(
        "jobs acceptance: {devices} devices up in {:.1} s; aborted after {:.1} s with {}; \
         simulator summary: {} connected, {} failed",
        fleet_up.as_secs_f64(),
        to_abort.as_secs_f64(),
        last["counters"],
        summary.connected,
        summary.failed,
    );
    server.stop().await;
}
