//! Device replacement (RMA) end to end: the replaced device's live session is cut and it cannot
//! come back, while its successor, with the old device's tags, groups and desired configuration
//! (device twin), connects.

use super::*;

#[tokio::test]
async fn replacing_a_device_cuts_it_off_and_its_successor_takes_over() {
    let server = TestServer::start().await;
    let old_token = active_device(&server, "pump-1").await;
    let (status, body) =
        server.patch("/api/v1/devices/pump-1", &json!({"tags": {"site": "berlin"}})).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = server.post("/api/v1/groups", &json!({"name": "pumps"})).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) =
        server.post("/api/v1/groups/pumps/members", &json!({"device_ids": ["pump-1"]})).await;
    assert_eq!(status, 204, "{body}");

    // Its desired configuration (device twin), which the successor must take over.
    let (status, body) = server
        .patch("/api/v1/devices/pump-1/twin", &json!({"desired": {"flow": {"max": 40}}}))
        .await;
    assert_eq!(status, 200, "{body}");

    let mut live = Probe::connected(server.mqtt_addr, V5, "pump-1", &old_token).await;
    live.subscribe(&["devices/pump-1/#"]).await;
    server.device_until("pump-1", |d| d["connectivity"]["connected"] == true).await;

    let (status, body) =
        server.post("/api/v1/devices/pump-1/replace", &json!({"with": "pump-2"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["created"], true);

    // The old device's session is cut at once (v5: DISCONNECT 0x98 Administrative action).
    let reason = tokio::time::timeout(WAIT, live.closed())
        .await
        .expect("the replaced device's session should be cut");
    assert_eq!(reason, Some(ReasonCode::AdministrativeAction));
    // Its credential is revoked: it cannot come back, whatever the version.
    for version in [V311, V5] {
        let (_, code) = Probe::connect(server.mqtt_addr, version, "pump-1", &old_token).await;
        assert_eq!(code, ReasonCode::BadUserNameOrPassword, "{version:?}");
    }
    let old = server.device_until("pump-1", |d| d["connectivity"]["connected"] == false).await;
    assert_eq!((&old["state"], &old["replaced_by"]), (&json!("retired"), &json!("pump-2")));
    assert_eq!(old["connectivity"]["last_disconnect_reason"], "revoked");

    // The successor onboards through the normal flow: activate, credential, connect.
    let (status, body) = server.patch("/api/v1/devices/pump-2", &json!({"state": "active"})).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = server.post("/api/v1/devices/pump-2/credentials", &json!({})).await;
    assert_eq!(status, 201, "{body}");
    let new_token = body["token"].as_str().expect("a token").to_owned();
    let mut successor = Probe::connected(server.mqtt_addr, V5, "pump-2", &new_token).await;
    successor.subscribe(&["devices/pump-2/#"]).await;
    successor.publish("devices/pump-2/telemetry", "21.5").await;
    // A clean-session device subscribes after its CONNACK, so the delta Herd pushes when it arrives
    // may come before its subscription: it asks for its twin, as the protocol says.
    successor.publish("devices/pump-2/twin/get", r#"{"request_id":"r1"}"#).await;
    // Its own telemetry comes back, and (in any order) the delta of the desired configuration it
    // took over: in the arrival push when it came after the subscription, and in the answer.
    let (mut telemetry, mut delta) = (None, None);
    while telemetry.is_none() || delta.is_none() {
        let (topic, payload) = successor.next_message().await;
        match topic.as_str() {
            "devices/pump-2/telemetry" => telemetry = Some(payload),
            "devices/pump-2/twin/delta" => {
                let body: serde_json::Value = serde_json::from_str(&payload).unwrap();
                assert_eq!(body["delta"], json!({"flow": {"max": 40}}), "{body}");
            }
            "devices/pump-2/twin/response" => {
                let body: serde_json::Value = serde_json::from_str(&payload).unwrap();
                assert_eq!(body["request_id"], "r1", "{body}");
                delta = Some(body["twin"]["delta"].clone());
            }
            _ => {}
        }
    }
    assert_eq!(telemetry.as_deref(), Some("21.5"));
    assert_eq!(delta, Some(json!({"flow": {"max": 40}})));

    let new = server.device_until("pump-2", |d| d["connectivity"]["connected"] == true).await;
    assert_eq!((&new["tags"], &new["replaces"]), (&json!({"site": "berlin"}), &json!("pump-1")));
    let (status, members) = server.get("/api/v1/groups/pumps/devices").await;
    assert_eq!(status, 200, "{members}");
    let ids: Vec<&str> = members["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|d| d["id"].as_str())
        .collect();
    assert_eq!(ids, ["pump-2"]);

    // The successor has the old device's desired configuration, and is sent it on arrival.
    let (status, twin) = server.get("/api/v1/devices/pump-2/twin").await;
    assert_eq!(status, 200, "{twin}");
    assert_eq!(twin["desired"]["document"], json!({"flow": {"max": 40}}));
    assert_eq!(twin["delta"], json!({"flow": {"max": 40}}));

    let (status, audit) = server.get("/api/v1/audit?limit=1000").await;
    assert_eq!(status, 200, "{audit}");
    let replaced = audit["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|r| r["action"] == "device.replace")
        .expect("a device.replace record")
        .clone();
    assert_eq!(replaced["resource"], "device/pump-1");
    assert_eq!(replaced["after"]["successor"], "pump-2");
    assert_eq!(replaced["after"]["revoked"]["credentials"], 1);
}
