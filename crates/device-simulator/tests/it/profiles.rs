//! A fleet configuration profile reaching a connected simulated fleet: the profile is created
//! once, the server's recompute task recomputes every device's desired state from the durable
//! queue and pushes the deltas, and every simulated device reports them applied, so every twin
//! ends `in_sync` with the profile's values.
//!
//! The fleet is `HERD_PROFILES_BENCH_DEVICES` devices (default 500 to keep CI short); the figures
//! print with `cargo test --release -p device-simulator --test it profiles -- --nocapture`.

use std::time::{Duration, Instant};

use device_simulator::profile::TwinBehaviour;
use serde_json::json;
use test_support::TestServer;

use crate::{Recorded, config};

/// `twin_recomputed_total` from `/metrics` (0 before the first recompute).
async fn recomputed(server: &TestServer) -> u64 {
    let text = reqwest::get(format!("{}/metrics", server.base_url))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .filter(|l| l.starts_with("twin_recomputed_total"))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[expect(clippy::print_stderr, reason = "the figures, shown with --nocapture")]
async fn a_fleet_profile_reaches_every_connected_device() {
    let devices: u64 = std::env::var("HERD_PROFILES_BENCH_DEVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let server = TestServer::start().await;
    let mut sim = config(&server, devices, "prof-");
    sim.duration = None;
    sim.ramp_rate = 2_000.0;
    sim.profile.telemetry_interval = Duration::from_secs(3600);
    sim.profile.event_rate_per_hour = 0.0;
    sim.profile.twin = Some(TwinBehaviour { delay: Duration::ZERO, drift_percent: 0.0 });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let sim_run = async {
        let mut recorded = Recorded::default();
        device_simulator::run(&sim, &mut recorded, async {
            let _ = stop_rx.await;
        })
        .await
    };
    let check = async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
        loop {
            let (status, preview) = server
                .post(
                    "/api/v1/config-profiles?dry_run=true",
                    &json!({"name": "probe", "target": "fleet", "document": {"a": 1}}),
                )
                .await;
            assert_eq!(status, 200, "{preview}");
            let affected = &preview["affected"];
            if affected["total"] == devices && affected["online"] == devices {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{preview}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let before = recomputed(&server).await;
        let start = Instant::now();
        let (status, body) = server
            .post(
                "/api/v1/config-profiles",
                &json!({"name": "fleet-sampling", "target": "fleet",
                        "document": {"sampling": {"interval_s": 30, "batch": 10}}}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
        while recomputed(&server).await < before + devices {
            assert!(tokio::time::Instant::now() < deadline, "the queue never drained");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let drained = start.elapsed();
        for index in 0..devices {
            let id = device_simulator::shard::device_id("prof-", index);
            loop {
                let (status, twin) = server.get(&format!("/api/v1/devices/{id}/twin")).await;
                assert_eq!(status, 200, "{twin}");
                if twin["status"]["state"] == "in_sync" && twin["desired"]["version"] != 0 {
                    assert_eq!(twin["reported"]["document"]["sampling"]["interval_s"], 30);
                    break;
                }
                assert!(tokio::time::Instant::now() < deadline, "{id} never converged: {twin:#}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let converged = start.elapsed();
        let _ = stop_tx.send(());
        (drained, converged)
    };
    let (summary, (drained, converged)) = tokio::join!(sim_run, check);
    let summary = summary.expect("the run started");
    eprintln!(
        "profiles: {devices} devices; every twin recomputed {:.2} s after the profile was created, \
         every twin in sync (the devices applied and reported it) after {:.2} s \
         (checked one device after another over REST); simulator: {} connected, {} failed",
        drained.as_secs_f64(),
        converged.as_secs_f64(),
        summary.connected,
        summary.failed,
    );
    server.stop().await;
}
