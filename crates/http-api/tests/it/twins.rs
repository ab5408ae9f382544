//! Device twins over REST: `GET`/`PATCH /api/v1/devices/{id}/twin` (merge patch, `If-Match`,
//! limits, the twin-change channel) and `GET …/twin/history`.

use domain::{DeviceId, TwinLimits, TwinPolicy};
use http_api::ApiConfig;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::api::TestApi;

async fn api_with_changes(policy: TwinPolicy) -> (TestApi, mpsc::Receiver<DeviceId>) {
    let (tx, rx) = mpsc::channel(16);
    let api =
        TestApi::build(ApiConfig::default(), |s| s.with_twin_changes(tx).with_twin_policy(policy))
            .await;
    api.create_device(json!({"id": "dev-1", "state": "active"})).await;
    (api, rx)
}

fn changes(rx: &mut mpsc::Receiver<DeviceId>) -> Vec<String> {
    let mut got = Vec::new();
    while let Ok(id) = rx.try_recv() {
        got.push(id.to_string());
    }
    got
}

const TWIN: &str = "/api/v1/devices/dev-1/twin";

#[tokio::test]
async fn a_new_device_has_an_empty_twin_and_unknown_devices_none() {
    let (api, _rx) = api_with_changes(TwinPolicy::default()).await;
    let resp = api.get(TWIN).send().await.assert_status(200);
    assert_eq!(resp.header("etag"), Some("\"0.0\""));
    let twin = resp.json();
    assert_eq!(twin["device_id"], "dev-1");
    assert_eq!(twin["desired"], json!({"document": {}, "version": 0, "metadata": {}}));
    assert_eq!(twin["reported"]["version"], 0);
    assert_eq!(twin["delta"], json!({}));
    assert_eq!(twin["status"], json!({"state": "in_sync"}));
    assert_eq!(twin["etag"], "0.0");
    api.get("/api/v1/devices/ghost/twin").send().await.assert_problem(404, "device_not_found");
    api.patch("/api/v1/devices/ghost/twin")
        .json(&json!({"desired": {"a": 1}}))
        .send()
        .await
        .assert_problem(404, "device_not_found");
    api.get("/api/v1/devices/ghost/twin/history")
        .send()
        .await
        .assert_problem(404, "device_not_found");
}

#[tokio::test]
async fn merge_patch_sets_and_deletes_and_announces_desired_changes() {
    let (api, mut rx) = api_with_changes(TwinPolicy::default()).await;
    let body = json!({"desired": {"led": {"color": "red", "on": true}}, "tags": {"owner": "ops"}});
    let resp = api
        .patch(TWIN)
        .raw("application/merge-patch+json", body.to_string())
        .send()
        .await
        .assert_status(200);
    assert_eq!(resp.header("etag"), Some("\"1.1\""));
    let twin = resp.json();
    assert_eq!(twin["desired"]["document"], json!({"led": {"color": "red", "on": true}}));
    assert_eq!(twin["desired"]["metadata"]["/led/color"]["version"], 1);
    assert_eq!(twin["tags"]["document"], json!({"owner": "ops"}));
    assert_eq!(twin["delta"], json!({"led": {"color": "red", "on": true}}));
    assert_eq!(twin["status"]["state"], "pending");
    assert!(twin["status"]["since"].is_string());
    assert_eq!(changes(&mut rx), ["dev-1"]);

    // null deletes; plain application/json is accepted too.
    let twin = api
        .patch(TWIN)
        .json(&json!({"desired": {"led": {"on": null}}}))
        .send()
        .await
        .assert_status(200)
        .json();
    assert_eq!(twin["desired"]["document"], json!({"led": {"color": "red"}}));
    assert_eq!(twin["etag"], "2.1");
    assert_eq!(changes(&mut rx), ["dev-1"]);

    // Tags only, or a no-op: the device hears nothing.
    api.patch(TWIN).json(&json!({"tags": {"site": "b"}})).send().await.assert_status(200);
    let twin = api
        .patch(TWIN)
        .json(&json!({"desired": {"led": {"color": "red"}}}))
        .send()
        .await
        .assert_status(200)
        .json();
    assert_eq!(twin["etag"], "2.2");
    assert!(changes(&mut rx).is_empty());

    let audit = api.get("/api/v1/audit").send().await.assert_status(200).json();
    let twin_records: Vec<&Value> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "device.twin.update")
        .collect();
    assert_eq!(twin_records.len(), 3);
    assert_eq!(twin_records[0]["resource"], "device/dev-1");
}

#[tokio::test]
async fn if_match_checks_the_operator_versions() {
    let (api, _rx) = api_with_changes(TwinPolicy::default()).await;
    api.patch(TWIN)
        .header("if-match", "\"0.0\"")
        .json(&json!({"desired": {"a": 1}}))
        .send()
        .await
        .assert_status(200);
    let problem = api
        .patch(TWIN)
        .header("if-match", "\"0.0\"")
        .json(&json!({"desired": {"a": 2}}))
        .send()
        .await
        .assert_problem(412, "precondition_failed");
    assert!(problem["detail"].as_str().unwrap().contains("\"1.0\""), "{problem}");
    api.patch(TWIN)
        .header("if-match", "\"7\"")
        .json(&json!({"desired": {"a": 2}}))
        .send()
        .await
        .assert_problem(412, "precondition_failed");
    api.patch(TWIN)
        .header("if-match", "*")
        .json(&json!({"desired": {"a": 2}}))
        .send()
        .await
        .assert_status(200);
    let resp = api
        .patch(TWIN)
        .header("if-match", "\"2.0\"")
        .json(&json!({"desired": {"a": 3}}))
        .send()
        .await
        .assert_status(200);
    assert_eq!(resp.header("etag"), Some("\"3.0\""));
}

#[tokio::test]
async fn bad_patches_and_limits_are_refused() {
    let policy = TwinPolicy {
        limits: TwinLimits { max_section_bytes: 100, max_depth: 3 },
        ..TwinPolicy::default()
    };
    let (api, mut rx) = api_with_changes(policy).await;
    for body in [json!({"desired": [1]}), json!({"desired": null}), json!({"tags": "x"})] {
        let problem = api.patch(TWIN).json(&body).send().await.assert_problem(400, "invalid_patch");
        assert!(problem["detail"].as_str().unwrap().contains("JSON object"), "{problem}");
    }
    api.patch(TWIN)
        .json(&json!({"reported": {"a": 1}}))
        .send()
        .await
        .assert_problem(400, "unknown_field");
    let problem = api
        .patch(TWIN)
        .json(&json!({"desired": {"blob": "x".repeat(100)}}))
        .send()
        .await
        .assert_problem(413, "twin_too_large");
    assert!(problem["detail"].as_str().unwrap().contains("max_section_bytes (100)"), "{problem}");
    let problem = api
        .patch(TWIN)
        .json(&json!({"tags": {"a": {"b": {"c": {"d": 1}}}}}))
        .send()
        .await
        .assert_problem(413, "twin_too_large");
    assert!(problem["detail"].as_str().unwrap().contains("max_depth (3)"), "{problem}");
    api.patch(TWIN)
        .raw("text/plain", "{}")
        .send()
        .await
        .assert_problem(415, "unsupported_media_type");
    let twin = api.get(TWIN).send().await.assert_status(200).json();
    assert_eq!(twin["etag"], "0.0");
    assert!(changes(&mut rx).is_empty());
}

#[tokio::test]
async fn history_pages_newest_first_by_section() {
    let (api, _rx) = api_with_changes(TwinPolicy::default()).await;
    for i in 0..3 {
        api.patch(TWIN).json(&json!({"desired": {"n": i}})).send().await.assert_status(200);
    }
    api.patch(TWIN).json(&json!({"tags": {"t": 1}})).send().await.assert_status(200);
    let page = api.get(&format!("{TWIN}/history?limit=3")).send().await.assert_status(200).json();
    let items = page["items"].as_array().unwrap();
    let seqs: Vec<_> = items.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [4, 3, 2]);
    assert_eq!(items[0]["section"], "tags");
    assert_eq!(items[1]["patch"], json!({"n": 2}));
    assert!(items[1]["actor"].as_str().unwrap().starts_with("token:"));
    let cursor = page["next_cursor"].as_str().unwrap();
    let next =
        api.get(&format!("{TWIN}/history?cursor={cursor}")).send().await.assert_status(200).json();
    assert_eq!(next["items"].as_array().unwrap().len(), 1);
    assert_eq!(next["next_cursor"], Value::Null);
    let tags =
        api.get(&format!("{TWIN}/history?section=tags")).send().await.assert_status(200).json();
    assert_eq!(tags["items"].as_array().unwrap().len(), 1);
    api.get(&format!("{TWIN}/history?section=other"))
        .send()
        .await
        .assert_problem(400, "invalid_query");
    api.get(&format!("{TWIN}/history?cursor=zz"))
        .send()
        .await
        .assert_problem(400, "invalid_cursor");
    api.get(&format!("{TWIN}/history?limit=0"))
        .send()
        .await
        .assert_problem(422, "validation_failed");
}

#[tokio::test]
async fn a_dry_run_shows_the_change_and_writes_nothing() {
    let (api, mut rx) = api_with_changes(TwinPolicy::default()).await;
    api.patch(TWIN).json(&json!({"desired": {"mode": "eco"}})).send().await.assert_status(200);
    let _ = changes(&mut rx);
    let dry = api
        .patch(&format!("{TWIN}?dry_run=true"))
        .header("if-match", "\"1.0\"")
        .json(&json!({"desired": {"mode": "off", "fan": 2}, "tags": {"site": "b"}}))
        .send()
        .await
        .assert_status(200)
        .json();
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["desired_changes"], json!({"mode": "off", "fan": 2}));
    assert_eq!(dry["tags_changes"], json!({"site": "b"}));
    assert_eq!(dry["twin"]["etag"], "2.1");
    assert_eq!(dry["twin"]["desired"]["document"], json!({"mode": "off", "fan": 2}));
    // Nothing written, nobody told.
    let twin = api.get(TWIN).send().await.assert_status(200).json();
    assert_eq!(
        (twin["etag"].as_str(), &twin["desired"]["document"]),
        (Some("1.0"), &json!({"mode": "eco"}))
    );
    assert!(changes(&mut rx).is_empty());
    // The same checks as the real change.
    api.patch(&format!("{TWIN}?dry_run=true"))
        .header("if-match", "\"0.0\"")
        .json(&json!({"desired": {"mode": "off"}}))
        .send()
        .await
        .assert_problem(412, "precondition_failed");
    api.patch(&format!("{TWIN}?dry_run=maybe"))
        .json(&json!({"desired": {"mode": "off"}}))
        .send()
        .await
        .assert_problem(400, "invalid_query");
    api.patch("/api/v1/devices/ghost/twin?dry_run=true")
        .json(&json!({"desired": {"a": 1}}))
        .send()
        .await
        .assert_problem(404, "device_not_found");
}
