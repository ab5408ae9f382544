//! The simulator against the real server in-process: devices provisioned through the REST API
//! with the test server's admin token connect, send telemetry and are counted in the summary;
//! a second run with the same prefix reuses them. Also the binary's `--help`.

mod jobs;
mod profiles;

use std::time::Duration;

use device_simulator::{Progress, Report, SimConfig, Summary};
use test_support::TestServer;

/// How long a run may take before the test gives up (the runs themselves last seconds).
const WAIT: Duration = Duration::from_secs(120);

/// Collects what a run reports.
#[derive(Debug, Default)]
struct Recorded {
    progress: Vec<Progress>,
    notes: Vec<String>,
}

impl Report for Recorded {
    fn progress(&mut self, progress: &Progress) {
        self.progress.push(*progress);
    }
    fn note(&mut self, message: &str) {
        self.notes.push(message.to_owned());
    }
}

fn config(server: &TestServer, devices: u64, prefix: &str) -> SimConfig {
    let mut config = SimConfig::new(
        server.base_url.clone(),
        server.mqtt_addr.ip().to_string(),
        server.mqtt_addr.port(),
        devices,
    );
    config.token = Some(server.admin_token.clone());
    config.prefix = prefix.to_owned();
    config.duration = Some(Duration::from_secs(3));
    config.ramp_rate = 1_000.0;
    config.profile.telemetry_interval = Duration::from_millis(200);
    config.profile.event_rate_per_hour = 3_600.0;
    config.seed = Some(1);
    config
}

async fn run(config: &SimConfig) -> (Summary, Recorded) {
    let mut recorded = Recorded::default();
    let summary = tokio::time::timeout(
        WAIT,
        device_simulator::run(config, &mut recorded, std::future::pending()),
    )
    .await
    .expect("the run ended in time")
    .expect("the run started");
    (summary, recorded)
}

#[track_caller]
fn check_clean(summary: &Summary, devices: u64) {
    assert_eq!(summary.devices, devices, "{summary:#?}");
    assert_eq!(summary.connected, devices, "{summary:#?}");
    assert_eq!(summary.max_connected, devices, "{summary:#?}");
    assert_eq!(summary.failed, 0, "{summary:#?}");
    assert_eq!(summary.errors, 0, "{summary:#?}");
    assert!(summary.errors_by_kind.is_empty(), "{summary:#?}");
    assert!(summary.messages_acked > 0, "{summary:#?}");
    assert!(summary.messages_sent >= summary.messages_acked, "{summary:#?}");
    assert!(summary.connect_time_secs.is_some(), "{summary:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_devices_connect_send_and_are_reused() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&server, 50, "it-");
    config.credentials_file = Some(dir.path().join("credentials.json"));

    let (first, recorded) = run(&config).await;
    check_clean(&first, 50);
    assert!(first.events_sent > 0, "{first:#?}");
    assert!(
        recorded.notes.iter().any(|n| n.contains("50 created") && n.contains("50 new credentials")),
        "{:?}",
        recorded.notes
    );
    assert!(!recorded.progress.is_empty());
    let (status, body) = server.get("/api/v1/devices/it-00050").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "active", "{body}");
    assert_eq!(body["tags"]["simulator"], "herd-sim", "{body}");

    // Same prefix: the devices and their cached credentials are reused.
    let (second, recorded) = run(&config).await;
    check_clean(&second, 50);
    assert!(
        recorded.notes.iter().any(|n| n.contains("0 created, 50 reused, 0 new credentials")),
        "{:?}",
        recorded.notes
    );
    let (_, credentials) = server.get("/api/v1/devices/it-00001/credentials").await;
    assert_eq!(credentials["items"].as_array().map(Vec::len), Some(1), "{credentials}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_credentials_file_a_rerun_issues_new_credentials() {
    let server = TestServer::start().await;
    let mut config = config(&server, 5, "fresh-");
    config.protocol = device_agent::Protocol::V311;
    config.duration = Some(Duration::from_secs(1));
    let (first, _) = run(&config).await;
    check_clean(&first, 5);
    let (second, recorded) = run(&config).await;
    check_clean(&second, 5);
    assert!(
        recorded.notes.iter().any(|n| n.contains("0 created, 5 reused, 5 new credentials")),
        "{:?}",
        recorded.notes
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_disconnects_are_not_errors_but_refusals_are() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("credentials.json");
    let mut config = config(&server, 10, "flaky-");
    config.credentials_file = Some(path.clone());
    // Every device loses its connection every few seconds... and comes back after 1-10 s.
    config.profile.disconnect_rate_per_hour = 3_600.0;
    config.duration = Some(Duration::from_secs(4));
    let (summary, _) = run(&config).await;
    assert_eq!(summary.failed, 0, "{summary:#?}");
    assert_eq!(summary.errors, 0, "{summary:#?}");
    assert!(summary.injected_disconnects > 0, "{summary:#?}");

    // A cached secret the server does not know: the device is refused, counted, and fails.
    let mut cached: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    cached["devices"]["flaky-00003"] = "hdc_not_a_real_secret".into();
    std::fs::write(&path, cached.to_string()).unwrap();
    config.profile.disconnect_rate_per_hour = 0.0;
    config.duration = Some(Duration::from_secs(2));
    let (summary, _) = run(&config).await;
    assert_eq!(summary.failed, 1, "{summary:#?}");
    assert_eq!(summary.connected, 9, "{summary:#?}");
    assert_eq!(summary.errors_by_kind.get("refused"), Some(&1), "{summary:#?}");
    assert_eq!(summary.connect_time_secs, None, "{summary:#?}");
}

#[test]
fn the_binary_explains_itself() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_herd-sim"))
        .arg("--help")
        .output()
        .expect("herd-sim runs");
    assert!(output.status.success(), "{output:?}");
    let help = String::from_utf8(output.stdout).unwrap();
    for flag in ["--devices", "--ramp-rate", "--source-addresses", "--processes", "--duration"] {
        assert!(help.contains(flag), "{flag} in {help}");
    }
}

#[test]
fn the_binary_refuses_bad_flags_with_exit_code_2() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_herd-sim"))
        .args(["--mqtt", "nowhere", "--prefix", "a/b"])
        .env_remove("HERD_TOKEN")
        .output()
        .expect("herd-sim runs");
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("--mqtt") && stderr.contains("--prefix"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_devices_register_themselves_with_zero_touch() {
    let server = TestServer::start().await;
    let group = serde_json::json!({"name": "sim-zt", "attestation": "symmetric_key"});
    let (status, body) = server.post("/api/v1/enrollment-groups", &group).await;
    assert_eq!(status, 201, "{body}");
    let mut config = config(&server, 50, "zt-");
    config.zero_touch = Some("sim-zt".to_owned());
    config.register_concurrency = 8;

    let (summary, recorded) = run(&config).await;
    check_clean(&summary, 50);
    let zero_touch = summary.zero_touch.clone().expect("zero-touch figures");
    assert_eq!((zero_touch.registrations, zero_touch.failures), (50, 0), "{summary:#?}");
    assert!(zero_touch.rate_per_sec > 0.0, "{summary:#?}");
    assert!(
        recorded.notes.iter().any(|n| n.contains("zero-touch: 50 registered")),
        "{:?}",
        recorded.notes
    );
    let (_, group) = server.get("/api/v1/enrollment-groups/sim-zt").await;
    assert_eq!(group["registrations"], 50, "{group}");
    let (status, device) = server.get("/api/v1/devices/zt-00050").await;
    assert_eq!((status, &device["state"]), (200, &serde_json::json!("active")), "{device}");

    // A group with a device id template cannot name the simulated ids: the run does not start.
    let group = serde_json::json!({"name": "templated", "attestation": "symmetric_key",
                                   "device_id_template": "x-{registration_id}"});
    server.post("/api/v1/enrollment-groups", &group).await;
    config.zero_touch = Some("templated".to_owned());
    config.prefix = "zt2-".to_owned();
    let mut recorded = Recorded::default();
    let err = device_simulator::run(&config, &mut recorded, std::future::pending())
        .await
        .expect_err("refused");
    assert!(format!("{err:#}").contains("template"), "{err:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_devices_answer_commands_and_fail_the_seeded_share() {
    let server = TestServer::start().await;
    let mut config = config(&server, 10, "cmd-");
    config.duration = Some(Duration::from_secs(60));
    config.command_failure_pct = 30.0;
    config.command_delay = Duration::from_millis(50);
    let mut silent = device_simulator::Silent;
    let fleet = device_simulator::run(&config, &mut silent, std::future::pending());
    let commands = async {
        let mut failed = Vec::new();
        for index in 0..10_u64 {
            let id = device_simulator::shard::device_id("cmd-", index);
            let deadline = tokio::time::Instant::now() + WAIT;
            // The device may not be provisioned or connected yet: until it is, Herd answers
            // device_not_found or device_offline.
            let body = loop {
                let (status, body) = server
                    .post(
                        &format!("/api/v1/devices/{id}/commands"),
                        &serde_json::json!({"name": "ping", "payload": {"i": index}, "wait": true}),
                    )
                    .await;
                if status == 200 {
                    break body;
                }
                let code = body["code"].as_str();
                assert!(matches!(code, Some("device_offline" | "device_not_found")), "{body}");
                assert!(tokio::time::Instant::now() < deadline, "{id} never connected");
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            match body["state"].as_str() {
                Some("succeeded") => assert_eq!(body["result"], serde_json::json!({"i": index})),
                Some("failed") => failed.push(index),
                _ => panic!("unexpected answer: {body}"),
            }
        }
        failed
    };
    let failed = tokio::select! {
        summary = fleet => panic!("the run ended first: {summary:?}"),
        failed = commands => failed,
    };
    let salt = device_simulator::profile::salt(1, 3);
    let expected: Vec<u64> =
        (0..10).filter(|&i| device_simulator::profile::selected(i, 30.0, salt)).collect();
    assert_eq!(failed, expected);
    assert!(!failed.is_empty() && failed.len() < 10, "{failed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_devices_follow_their_desired_state_and_the_seeded_share_drifts() {
    let server = TestServer::start().await;
    let mut config = config(&server, 20, "tw-");
    config.duration = Some(Duration::from_secs(120));
    config.profile.telemetry_interval = Duration::from_secs(3600);
    config.profile.event_rate_per_hour = 0.0;
    let behaviour = device_simulator::profile::TwinBehaviour {
        delay: Duration::from_millis(20),
        drift_percent: 25.0,
    };
    config.profile.twin = Some(behaviour);
    let mut silent = device_simulator::Silent;
    let fleet = device_simulator::run(&config, &mut silent, std::future::pending());
    let converge = async {
        // Desired state for the whole fleet, with devices arriving meanwhile: a continuous
        // desired-patch job reaches each one as it is created.
        let (status, job) = server
            .post(
                "/api/v1/jobs",
                &serde_json::json!({
                    "id": "fleet-config",
                    "operation": {"desired_patch": {"sampling": {"interval_s": 5}}},
                    "target": {"filter": "id startswith 'tw-'"},
                    "selection": "continuous",
                }),
            )
            .await;
        assert_eq!(status, 201, "{job}");
        let mut states = Vec::new();
        for index in 0..20_u64 {
            let id = device_simulator::shard::device_id("tw-", index);
            let deadline = tokio::time::Instant::now() + WAIT;
            let twin = loop {
                let (status, twin) = server.get(&format!("/api/v1/devices/{id}/twin")).await;
                let state = twin["status"]["state"].as_str().unwrap_or("");
                if status == 200 && twin["desired"]["version"] != 0 && state != "pending" {
                    break twin;
                }
                assert!(tokio::time::Instant::now() < deadline, "{id} never settled: {twin:#}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            let expected = if behaviour.drifts(1, index) { "drifted" } else { "in_sync" };
            assert_eq!(twin["status"]["state"], expected, "{id}: {twin:#}");
            if expected == "in_sync" {
                assert_eq!(twin["reported"]["document"]["sampling"]["interval_s"], 5, "{twin:#}");
            }
            states.push(expected);
        }
        states
    };
    let states = tokio::select! {
        summary = fleet => panic!("the run ended first: {summary:?}"),
        states = converge => states,
    };
    let drifted = states.iter().filter(|s| **s == "drifted").count();
    assert!(drifted > 0 && drifted < 20, "{states:?}");
}
