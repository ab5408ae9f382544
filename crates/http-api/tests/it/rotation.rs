//! Operators asking devices to renew their credentials: `POST /api/v1/devices/{id}/rotate-credentials`
//! and `POST /api/v1/groups/{name}/rotate-credentials` hand one notice per active device to the
//! gateway's channel.

use domain::{DeviceNotice, Role};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::api::TestApi;

async fn api_with_notices() -> (TestApi, mpsc::Receiver<DeviceNotice>) {
    let (tx, rx) = mpsc::channel(64);
    let api = TestApi::build(http_api::ApiConfig::default(), |s| s.with_device_notices(tx)).await;
    (api, rx)
}

fn received(rx: &mut mpsc::Receiver<DeviceNotice>) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    while let Ok(n) = rx.try_recv() {
        assert_eq!(n.subtopic, "identity/rotate");
        let payload: Value = serde_json::from_str(&n.payload).expect("JSON payload");
        out.push((n.device_id.to_string(), payload));
    }
    out
}

#[tokio::test]
async fn a_device_is_asked_to_renew() {
    let (api, mut rx) = api_with_notices().await;
    api.create_device(json!({"id": "gw-1", "state": "active"})).await;
    api.create_device(json!({"id": "gw-2"})).await;
    let sent = api
        .post("/api/v1/devices/gw-1/rotate-credentials")
        .role(Role::Operator)
        .json(&json!({"credential": "certificate"}))
        .send()
        .await
        .assert_status(202)
        .json();
    assert_eq!(sent, json!({"credential": "certificate", "devices": 1}));
    assert_eq!(
        received(&mut rx),
        vec![("gw-1".to_owned(), json!({"credential": "certificate", "reason": "operator"}))]
    );

    for (path, body, status, code) in [
        ("gw-2", json!({"credential": "credential"}), 409, "conflict"),
        ("ghost", json!({"credential": "credential"}), 404, "device_not_found"),
        ("gw-1", json!({"credential": "password"}), 400, "invalid_body"),
        ("gw-1", json!({"credential": "credential", "now": true}), 400, "unknown_field"),
    ] {
        let problem = api
            .post(&format!("/api/v1/devices/{path}/rotate-credentials"))
            .role(Role::Operator)
            .json(&body)
            .send()
            .await
            .assert_status(status)
            .json();
        assert_eq!(problem["code"], code, "{path} {body}: {problem}");
    }
    assert_eq!(received(&mut rx), vec![], "nothing sent for refused requests");
}

#[tokio::test]
async fn a_group_asks_its_active_devices() {
    let (api, mut rx) = api_with_notices().await;
    for (id, state) in [("a", "active"), ("b", "registered"), ("c", "active"), ("d", "active")] {
        api.create_device(json!({"id": id, "state": state})).await;
    }
    api.post("/api/v1/groups")
        .role(Role::Operator)
        .json(&json!({"name": "line"}))
        .send()
        .await
        .assert_status(201);
    api.post("/api/v1/groups/line/members")
        .role(Role::Operator)
        .json(&json!({"device_ids": ["a", "b", "c"]}))
        .send()
        .await
        .assert_status(204);
    let sent = api
        .post("/api/v1/groups/line/rotate-credentials")
        .role(Role::Operator)
        .json(&json!({"credential": "credential"}))
        .send()
        .await
        .assert_status(202)
        .json();
    assert_eq!(sent["devices"], 2);
    let ids: Vec<String> = received(&mut rx).into_iter().map(|(id, _)| id).collect();
    assert_eq!(ids, ["a", "c"]);
    let problem = api
        .post("/api/v1/groups/nope/rotate-credentials")
        .role(Role::Operator)
        .json(&json!({"credential": "credential"}))
        .send()
        .await
        .assert_status(404)
        .json();
    assert_eq!(problem["code"], "group_not_found");
}

#[tokio::test]
async fn without_a_gateway_nothing_can_be_sent() {
    let api = TestApi::new().await;
    api.create_device(json!({"id": "gw-1", "state": "active"})).await;
    let problem = api
        .post("/api/v1/devices/gw-1/rotate-credentials")
        .role(Role::Operator)
        .json(&json!({"credential": "certificate"}))
        .send()
        .await
        .assert_status(503)
        .json();
    assert_eq!(problem["code"], "gateway_unavailable");
}
