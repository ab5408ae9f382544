//! Fleet jobs end to end: the scheduler starts executions and a device receives its job document
//! over MQTT, reports progress and its result; the rollout rate bounds how many start; pause,
//! resume and cancel steer a running job; a continuous job reaches devices that join its target
//! later, by any path (the periodic sync); desired-patch jobs change each device's twin.

use serde_json::Value;

use super::*;

/// A fast scheduler for tests.
async fn job_server() -> TestServer {
    TestServer::start_with(|c| {
        c.jobs.tick = Duration::from_millis(20);
        c.jobs.continuous_sync = Duration::from_secs(1);
    })
    .await
}

/// Creates a job from `spec`; returns the created job.
async fn create_job(server: &TestServer, spec: &Value) -> Value {
    let (status, body) = server.post("/api/v1/jobs", spec).await;
    assert_eq!(status, 201, "{body}");
    body
}

/// Polls `GET /api/v1/jobs/{id}` until `done` holds; returns the job.
async fn job_until(server: &TestServer, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, job) = server.get(&format!("/api/v1/jobs/{id}")).await;
        assert_eq!(status, 200, "{job}");
        if done(&job) {
            return job;
        }
        assert!(tokio::time::Instant::now() < deadline, "the job never got there: {job:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The next message on `topic`, skipping others; its payload as JSON.
async fn next_on(probe: &mut Probe, topic: &str) -> Value {
    loop {
        let (t, payload) = probe.next_message().await;
        if t == topic {
            return serde_json::from_str(&payload).expect("JSON payload");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_device_runs_its_job_and_reports_progress_then_success() {
    let server = job_server().await;
    let token = active_device(&server, "jd-1").await;
    let mut probe = Probe::connected(server.mqtt_addr, V5, "jd-1", &token).await;
    assert_eq!(probe.subscribe(&["devices/jd-1/jobs/+"]).await, [ReasonCode::Success]);

    create_job(
        &server,
        &json!({
            "id": "reboot-1",
            "operation": {"command": {"name": "reboot", "payload": {"delay": 5}, "timeout_secs": 9}},
            "target": {"devices": ["jd-1"]},
        }),
    )
    .await;
    let document = next_on(&mut probe, "devices/jd-1/jobs/reboot-1").await;
    assert_eq!(document["job_id"], "reboot-1");
    assert_eq!(document["state"], "in_progress");
    assert_eq!(document["attempt"], 1);
    assert_eq!(
        document["operation"],
        json!({"command": {"name": "reboot", "payload": {"delay": 5}, "timeout_secs": 9}})
    );
    let version = document["version"].as_u64().expect("version");
    // (A notify sent when the device arrived may come first.)
    let mut notify = next_on(&mut probe, "devices/jd-1/jobs/notify").await;
    while notify["jobs"] == json!([]) {
        notify = next_on(&mut probe, "devices/jd-1/jobs/notify").await;
    }
    assert_eq!(notify["jobs"][0]["job_id"], "reboot-1");
    assert_eq!(notify["jobs"][0]["state"], "in_progress");

    // `get` lists it with its document.
    probe.publish("devices/jd-1/jobs/get", r#"{"request_id":"g1"}"#).await;
    let answer = next_on(&mut probe, "devices/jd-1/jobs/response").await;
    assert_eq!(answer["request_id"], "g1");
    assert_eq!(answer["status"], "ok");
    assert_eq!(answer["documents"][0], document);

    // Progress with status details.
    let progress = json!({"request_id": "u1", "status": "in_progress",
        "status_details": {"step": "downloading"}, "expected_version": version});
    probe.publish("devices/jd-1/jobs/reboot-1/update", &progress.to_string()).await;
    let answer = next_on(&mut probe, "devices/jd-1/jobs/response").await;
    assert_eq!(
        (answer["request_id"].clone(), answer["status"].clone()),
        (json!("u1"), json!("ok"))
    );
    assert_eq!(answer["execution"]["state"], "in_progress");
    let (_, page) = server.get("/api/v1/jobs/reboot-1/executions").await;
    assert_eq!(page["items"][0]["status_details"], json!({"step": "downloading"}));

    // Refusals: a status devices may not set, a stale version, an unknown job.
    for (topic, body, code) in [
        (
            "devices/jd-1/jobs/reboot-1/update",
            json!({"request_id": "e1", "status": "canceled"}),
            "invalid_status",
        ),
        (
            "devices/jd-1/jobs/reboot-1/update",
            json!({"request_id": "e2", "status": "succeeded", "expected_version": version}),
            "version_mismatch",
        ),
        (
            "devices/jd-1/jobs/ghost/update",
            json!({"request_id": "e3", "status": "succeeded"}),
            "not_found",
        ),
        (
            "devices/jd-1/jobs/reboot-1/update",
            json!({"request_id": "e4", "status": "succeeded", "colour": 1}),
            "invalid_request",
        ),
    ] {
        probe.publish(topic, &body.to_string()).await;
        let answer = next_on(&mut probe, "devices/jd-1/jobs/response").await;
        assert_eq!(answer["request_id"], body["request_id"], "{answer}");
        assert_eq!(
            (answer["status"].clone(), answer["code"].clone()),
            (json!("error"), json!(code))
        );
    }

    // The result.
    let done = json!({"request_id": "u2", "status": "succeeded", "status_details": {"uptime": 3}});
    probe.publish("devices/jd-1/jobs/reboot-1/update", &done.to_string()).await;
    let answer = next_on(&mut probe, "devices/jd-1/jobs/response").await;
    assert_eq!(answer["execution"]["state"], "succeeded");
    assert_eq!(answer["job_state"], "completed");
    let notify = next_on(&mut probe, "devices/jd-1/jobs/notify").await;
    assert_eq!(notify["jobs"], json!([]), "nothing pending any more");
    let job = job_until(&server, "reboot-1", |j| j["state"] == "completed").await;
    assert_eq!(job["counters"]["succeeded"], 1);
    let (_, page) = server.get("/api/v1/jobs/reboot-1/executions").await;
    assert_eq!(page["items"][0]["status_details"], json!({"uptime": 3}));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rollout_rate_bounds_how_many_start() {
    let server = job_server().await;
    for n in 0..6 {
        let (status, body) = server
            .post("/api/v1/devices", &json!({"id": format!("rate-{n}"), "tags": {"w": "1"}}))
            .await;
        assert_eq!(status, 201, "{body}");
    }
    create_job(
        &server,
        &json!({
            "id": "slow",
            "operation": {"command": {"name": "noop"}},
            "target": {"filter": "tags.w = '1'"},
            "rollout": {"max_per_minute": 2},
        }),
    )
    .await;
    job_until(&server, "slow", |j| j["counters"]["in_progress"] == 2).await;
    // Many more ticks pass (the allowance is per minute): still two.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (_, job) = server.get("/api/v1/jobs/slow").await;
        assert_eq!(job["counters"]["in_progress"], 2, "{job}");
        assert_eq!(job["counters"]["queued"], 4, "{job}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pause_resume_and_cancel_steer_a_running_job() {
    let server = job_server().await;
    for n in 0..4 {
        let (status, _) = server.post("/api/v1/devices", &json!({"id": format!("st-{n}")})).await;
        assert_eq!(status, 201);
    }
    let (status, _) = server.post("/api/v1/groups", &json!({"name": "steer"})).await;
    assert_eq!(status, 201);
    let ids: Vec<String> = (0..4).map(|n| format!("st-{n}")).collect();
    let (status, _) =
        server.post("/api/v1/groups/steer/members", &json!({"device_ids": ids})).await;
    assert_eq!(status, 204);
    // Paused before anything can start: nothing starts.
    create_job(
        &server,
        &json!({
            "id": "steer-job",
            "operation": {"command": {"name": "noop"}},
            "target": {"group": "steer"},
            "rollout": {"max_per_minute": 1},
        }),
    )
    .await;
    let (status, job) = server.post("/api/v1/jobs/steer-job/pause", &json!({})).await;
    assert_eq!((status, job["state"].clone()), (200, json!("paused")), "{job}");
    let started = job["counters"]["in_progress"].as_u64().expect("count");
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (_, job) = server.get("/api/v1/jobs/steer-job").await;
        assert_eq!(job["counters"]["in_progress"], started, "paused: {job}");
    }
    let (status, job) = server.post("/api/v1/jobs/steer-job/resume", &json!({})).await;
    assert_eq!((status, job["state"].clone()), (200, json!("in_progress")));
    job_until(&server, "steer-job", |j| j["counters"]["in_progress"] == 1).await;
    let (status, job) = server.post("/api/v1/jobs/steer-job/cancel", &json!({})).await;
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["state"], "canceled");
    assert_eq!(job["counters"]["canceled"], 3, "queued ones are canceled");
    assert_eq!(job["counters"]["in_progress"], 1, "the running one may finish");
    let (status, problem) = server.post("/api/v1/jobs/steer-job/resume", &json!({})).await;
    assert_eq!((status, problem["code"].clone()), (409, json!("illegal_job_transition")));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_continuous_job_reaches_devices_that_join_later() {
    let server = job_server().await;
    create_job(
        &server,
        &json!({
            "id": "onboard",
            "selection": "continuous",
            "operation": {"command": {"name": "configure"}},
            "target": {"filter": "tags.fleet = 'new'"},
        }),
    )
    .await;
    // Created through the REST API after the job, then tagged into its target: reached at once.
    let token = active_device(&server, "late-1").await;
    let mut probe = Probe::connected(server.mqtt_addr, V5, "late-1", &token).await;
    probe.subscribe(&["devices/late-1/jobs/+"]).await;
    let (status, _) =
        server.patch("/api/v1/devices/late-1", &json!({"tags": {"fleet": "new"}})).await;
    assert_eq!(status, 200);
    let document = next_on(&mut probe, "devices/late-1/jobs/onboard").await;
    assert_eq!(document["operation"]["command"]["name"], "configure");

    // Imported (no per-device hook): reached by the periodic sync.
    let response = reqwest::Client::new()
        .post(server.url("/api/v1/devices:import"))
        .bearer_auth(&server.admin_token)
        .header("content-type", "application/x-ndjson")
        .body("{\"id\":\"imp-1\",\"tags\":{\"fleet\":\"new\"}}\n{\"id\":\"imp-2\",\"tags\":{\"fleet\":\"old\"}}\n")
        .send()
        .await
        .expect("import");
    assert_eq!(response.status(), 200);
    let job = job_until(&server, "onboard", |j| j["counters"]["total"] == 2).await;
    assert_eq!(job["state"], "in_progress", "a continuous job keeps running");
    let (_, page) = server.get("/api/v1/jobs/onboard/executions").await;
    let ids: Vec<&str> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|e| e["device_id"].as_str())
        .collect();
    assert_eq!(ids, ["imp-1", "late-1"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn desired_patch_jobs_change_the_device_layer_of_each_twin() {
    let server = job_server().await;
    let (status, _) = server.post("/api/v1/devices", &json!({"id": "tw-1"})).await;
    assert_eq!(status, 201);
    let (status, body) =
        server.patch("/api/v1/devices/tw-1/twin", &json!({"desired": {"mode": "eco"}})).await;
    assert_eq!(status, 200, "{body}");
    create_job(
        &server,
        &json!({
            "id": "patch",
            "operation": {"desired_patch": {"fw": "2.0"}},
            "target": {"devices": ["tw-1"]},
        }),
    )
    .await;
    let job = job_until(&server, "patch", |j| j["state"] == "completed").await;
    assert_eq!(job["counters"]["succeeded"], 1, "{job}");
    // Merged into what the operator had set, as a PATCH of the twin would be.
    let (status, twin) = server.get("/api/v1/devices/tw-1/twin").await;
    assert_eq!(status, 200, "{twin}");
    assert_eq!(twin["desired"]["document"], json!({"mode": "eco", "fw": "2.0"}));
    let (_, history) = server.get("/api/v1/devices/tw-1/twin/history?section=desired").await;
    assert_eq!(history["items"][0]["actor"], "job:patch", "{history}");
    server.stop().await;
}
