//! Fleet jobs over REST: create (and dry run), read with counters, list and page, executions,
//! pause/resume/cancel, a device's jobs, problem codes, and continuous jobs reaching devices
//! created or changed through the API.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::api::TestApi;

async fn fleet() -> TestApi {
    let api = TestApi::new().await;
    for (id, site, state) in [
        ("a1", "berlin", "active"),
        ("a2", "berlin", "registered"),
        ("a3", "paris", "active"),
        ("a4", "berlin", "active"),
        ("a5", "berlin", "active"),
    ] {
        api.create_device(json!({"id": id, "tags": {"site": site}, "state": state})).await;
    }
    api
}

fn command_job(id: &str, target: Value) -> Value {
    let mut spec = json!({
        "id": id,
        "description": "reboot",
        "operation": {"command": {"name": "reboot", "payload": {"delay": 5}}},
        "target": Value::Null,
    });
    spec["target"] = target;
    spec
}

/// Every execution's device id, through pages of 2.
async fn execution_ids(api: &TestApi, job: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/jobs/{job}/executions?limit=2&cursor={c}"),
            None => format!("/api/v1/jobs/{job}/executions?limit=2"),
        };
        let page = api.get(&path).send().await.assert_status(200).json();
        for e in page["items"].as_array().expect("items") {
            out.push(e["device_id"].as_str().expect("device id").to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return out,
        }
    }
}

#[tokio::test]
async fn create_read_and_list_jobs() {
    let api = fleet().await;
    let resp = api
        .post("/api/v1/jobs")
        .json(&command_job("reboot", json!({"filter": "tags.site = 'berlin'"})))
        .send()
        .await
        .assert_status(201);
    assert_eq!(resp.header("location"), Some("/api/v1/jobs/reboot"));
    let job = resp.json();
    assert_eq!(job["state"], "in_progress");
    assert_eq!(job["counters"]["queued"], 4);
    assert_eq!(job["counters"]["total"], 4);
    assert_eq!(job["spec"]["operation"]["command"]["timeout_secs"], 30, "default filled in");
    assert_eq!(job["spec"]["rollout"]["max_per_minute"], 1000);
    assert_eq!(job["spec"]["selection"], "snapshot");

    let read = api.get("/api/v1/jobs/reboot").send().await.assert_status(200).json();
    assert_eq!(read, job);
    assert_eq!(execution_ids(&api, "reboot").await, ["a1", "a2", "a4", "a5"]);
    let queued =
        api.get("/api/v1/jobs/reboot/executions?state=queued").send().await.assert_status(200);
    assert_eq!(queued.json()["items"].as_array().map(Vec::len), Some(4));
    let e = &queued.json()["items"][0];
    assert_eq!((e["attempt"].clone(), e["status_details"].clone()), (json!(1), json!({})));

    // The same id again.
    api.post("/api/v1/jobs")
        .json(&command_job("reboot", json!({"devices": ["a1"]})))
        .send()
        .await
        .assert_problem(409, "job_exists");
    api.post("/api/v1/jobs")
        .json(&command_job("other", json!({"devices": ["a3"]})))
        .send()
        .await
        .assert_status(201);
    let page = api.get("/api/v1/jobs?limit=1").send().await.assert_status(200).json();
    assert_eq!(page["items"][0]["id"], "other");
    let cursor = page["next_cursor"].as_str().expect("a next page").to_owned();
    let page = api.get(&format!("/api/v1/jobs?limit=1&cursor={cursor}")).send().await.json();
    assert_eq!(page["items"][0]["id"], "reboot");
    assert_eq!(page["next_cursor"], Value::Null);
    let page = api.get("/api/v1/jobs?state=paused").send().await.assert_status(200).json();
    assert_eq!(page["items"], json!([]));

    // A device's jobs.
    let mine = api.get("/api/v1/devices/a1/jobs?pending=true").send().await.assert_status(200);
    assert_eq!(mine.json()["items"][0]["job_id"], "reboot");
    api.get("/api/v1/devices/nope/jobs").send().await.assert_problem(404, "device_not_found");
    api.get("/api/v1/jobs/nope").send().await.assert_problem(404, "job_not_found");
    api.get("/api/v1/jobs/nope/executions").send().await.assert_problem(404, "job_not_found");
    api.get("/api/v1/jobs?state=bogus").send().await.assert_problem(422, "validation_failed");
    api.get("/api/v1/jobs?colour=red").send().await.assert_problem(400, "invalid_query");
}

#[tokio::test]
async fn bad_specs_get_clear_problems() {
    let api = fleet().await;
    let cases = [
        // A continuous job on a device list.
        (
            json!({"id": "c", "operation": {"command": {"name": "x"}},
                   "target": {"devices": ["a1"]}, "selection": "continuous"}),
            422,
            "invalid_job_spec",
        ),
        // A bad command name.
        (command_job_named("bad name!"), 422, "invalid_job_spec"),
        // Both rollout kinds.
        (
            json!({"id": "r", "operation": {"command": {"name": "x"}}, "target": {"devices": ["a1"]},
                   "rollout": {"max_per_minute": 5, "exponential": {"base_per_minute": 1,
                   "increment_factor": 2.0, "increase_after_succeeded": 1, "max_per_minute": 5}}}),
            422,
            "invalid_job_spec",
        ),
        // A desired patch that is not an object.
        (
            json!({"id": "p", "operation": {"desired_patch": 5}, "target": {"devices": ["a1"]}}),
            422,
            "invalid_job_spec",
        ),
        // An unknown abort failure type.
        (
            json!({"id": "ab", "operation": {"command": {"name": "x"}}, "target": {"devices": ["a1"]},
                   "abort": [{"failure_types": ["exploded"], "min_finished": 1, "threshold_pct": 5.0}]}),
            422,
            "invalid_job_spec",
        ),
        // A reserved id.
        (
            json!({"id": "notify", "operation": {"command": {"name": "x"}}, "target": {"devices": ["a1"]}}),
            422,
            "invalid_job_spec",
        ),
        // Unknown things.
        (command_job("u", json!({"devices": ["ghost"]})), 404, "device_not_found"),
        (command_job("g", json!({"group": "ghosts"})), 404, "group_not_found"),
        (command_job("f", json!({"filter": "tags.site = "})), 400, "invalid_filter"),
        (
            json!({"id": "x", "operation": {"command": {"name": "x"}}, "target": {"devices": ["a1"]},
                   "colour": "red"}),
            400,
            "unknown_field",
        ),
    ];
    for (body, status, code) in cases {
        let problem =
            api.post("/api/v1/jobs").json(&body).send().await.assert_problem(status, code);
        assert!(problem["detail"].as_str().is_some_and(|d| !d.is_empty()), "{problem}");
    }
    let page = api.get("/api/v1/jobs").send().await.json();
    assert_eq!(page["items"], json!([]), "nothing was created");
}

fn command_job_named(name: &str) -> Value {
    json!({"id": "n", "operation": {"command": {"name": name}}, "target": {"devices": ["a1"]}})
}

#[tokio::test]
async fn dry_run_previews_exactly_the_devices_the_job_gets() {
    let api = fleet().await;
    api.create_device(json!({"id": "a6", "tags": {"site": "berlin"}, "state": "active"})).await;
    // Out of service: never targeted.
    api.create_device(json!({"id": "a7", "tags": {"site": "berlin"}})).await;
    api.patch("/api/v1/devices/a7").json(&json!({"state": "decommissioned"})).send().await;
    let spec = command_job("preview", json!({"filter": "tags.site = 'berlin'"}));
    let preview =
        api.post("/api/v1/jobs?dry_run=true").json(&spec).send().await.assert_status(200).json();
    assert_eq!(preview["total"], 5);
    assert_eq!(preview["by_state"], json!({"active": 4, "registered": 1}));
    assert_eq!(preview["online"], 0);
    assert_eq!(preview["offline"], 5);
    api.get("/api/v1/jobs/preview").send().await.assert_problem(404, "job_not_found");
    let sample: BTreeSet<String> = preview["sample"]
        .as_array()
        .expect("sample")
        .iter()
        .map(|v| v.as_str().expect("id").to_owned())
        .collect();

    api.post("/api/v1/jobs").json(&spec).send().await.assert_status(201);
    let executions: BTreeSet<String> = execution_ids(&api, "preview").await.into_iter().collect();
    assert_eq!(sample, executions, "the whole set (the fleet is smaller than the sample)");
    api.post("/api/v1/jobs?dry_run=maybe")
        .json(&spec)
        .send()
        .await
        .assert_problem(400, "invalid_query");
}

#[tokio::test]
async fn pause_resume_cancel() {
    let api = fleet().await;
    api.post("/api/v1/jobs")
        .json(&command_job("steer", json!({"filter": "tags.site = 'berlin'"})))
        .send()
        .await
        .assert_status(201);
    let job = api.post("/api/v1/jobs/steer/pause").send().await.assert_status(200).json();
    assert_eq!((job["state"].clone(), job["version"].clone()), (json!("paused"), json!(2)));
    let job = api.post("/api/v1/jobs/steer/resume").send().await.assert_status(200).json();
    assert_eq!(job["state"], "in_progress");
    let job = api.post("/api/v1/jobs/steer/cancel").send().await.assert_status(200).json();
    assert_eq!(job["state"], "canceled");
    assert_eq!(job["counters"]["canceled"], 4);
    assert_eq!(job["counters"]["queued"], 0);
    api.post("/api/v1/jobs/steer/resume")
        .send()
        .await
        .assert_problem(409, "illegal_job_transition");
    api.post("/api/v1/jobs/nope/pause").send().await.assert_problem(404, "job_not_found");
}

#[tokio::test]
async fn continuous_jobs_reach_devices_created_or_changed_through_the_api() {
    let api = fleet().await;
    let mut spec = command_job("keep", json!({"filter": "tags.site = 'paris'"}));
    spec["selection"] = json!("continuous");
    let job = api.post("/api/v1/jobs").json(&spec).send().await.assert_status(201).json();
    assert_eq!(job["counters"]["total"], 1);
    // Created in the target.
    api.create_device(json!({"id": "p2", "tags": {"site": "paris"}})).await;
    // Moved into the target.
    api.patch("/api/v1/devices/a1")
        .json(&json!({"tags": {"site": "paris"}}))
        .send()
        .await
        .assert_status(200);
    assert_eq!(execution_ids(&api, "keep").await, ["a1", "a3", "p2"]);
    // Moved out again: its queued execution is removed.
    api.patch("/api/v1/devices/a1")
        .json(&json!({"tags": {"site": "berlin"}}))
        .send()
        .await
        .assert_status(200);
    let job = api.get("/api/v1/jobs/keep").send().await.json();
    assert_eq!(
        (job["counters"]["queued"].clone(), job["counters"]["removed"].clone()),
        (json!(2), json!(1))
    );

    // A static group target: members added through the API.
    api.post("/api/v1/groups").json(&json!({"name": "lab"})).send().await.assert_status(201);
    let mut spec = command_job("lab-job", json!({"group": "lab"}));
    spec["selection"] = json!("continuous");
    api.post("/api/v1/jobs").json(&spec).send().await.assert_status(201);
    api.post("/api/v1/groups/lab/members")
        .json(&json!({"device_ids": ["a4", "a5"]}))
        .send()
        .await
        .assert_status(204);
    assert_eq!(execution_ids(&api, "lab-job").await, ["a4", "a5"]);
}
