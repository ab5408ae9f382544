//! Configuration profiles end to end: a fleet profile, a static group's profile and a dynamic
//! group's profile merge under the device's own layer into the exact effective document the
//! README documents ("Configuration profiles"); `twin/effective?explain=true` names the source of
//! each property; a dry run of a tag change shows the group and profile it would bring and changes
//! nothing; the real tag change reaches a plain Mosquitto device as a twin delta, pushed by the
//! server's recompute task.

use super::*;

#[track_caller]
fn ok(status: u16, body: &serde_json::Value, expected: u16) {
    assert_eq!(status, expected, "{body}");
}

async fn twin_desired(server: &TestServer, id: &str) -> serde_json::Value {
    let (status, body) = server.get(&format!("/api/v1/devices/{id}/twin")).await;
    assert_eq!(status, 200, "{body}");
    body["desired"]["document"].clone()
}

/// Polls the stored desired document until it is `expected` (the recompute task runs after
/// each change).
async fn desired_becomes(server: &TestServer, id: &str, expected: &serde_json::Value) {
    let mut desired = twin_desired(server, id).await;
    for _ in 0..400 {
        if &desired == expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
        desired = twin_desired(server, id).await;
    }
    assert_eq!(&desired, expected, "the stored desired document never became the expected one");
}

#[tokio::test]
async fn profiles_merge_under_the_device_layer_and_follow_its_groups() {
    if !mosquitto_clients() {
        return;
    }
    let server = TestServer::start().await;
    acceptance(&server).await;
}

/// The scenario, on a fresh server of any backend (`postgres::profiles_on_postgres` runs it on
/// PostgreSQL).
pub(crate) async fn acceptance(server: &TestServer) {
    let token = active_device(server, "kiln-1").await;

    // Fleet profile (priority 0), a static group "a" with the device and a profile of priority
    // 10, a dynamic group "hot" with a profile of priority 20, and the device's own layer.
    let profile = |name: &str, target: &str, priority: i64, document: serde_json::Value| json!({"name": name, "target": target, "priority": priority, "document": document});
    let (s, b) = server
        .post(
            "/api/v1/config-profiles",
            &profile("base", "fleet", 0, json!({"fan": "auto", "interval": 60, "led": "green"})),
        )
        .await;
    ok(s, &b, 201);
    let (s, b) = server.post("/api/v1/groups", &json!({"name": "a"})).await;
    ok(s, &b, 201);
    let (s, b) = server.post("/api/v1/groups/a/members", &json!({"device_ids": ["kiln-1"]})).await;
    ok(s, &b, 204);
    let (s, b) = server
        .post(
            "/api/v1/config-profiles",
            &profile("a-prof", "group:a", 10, json!({"fan": "low", "heater": true, "mode": "eco"})),
        )
        .await;
    ok(s, &b, 201);
    let (s, b) =
        server.post("/api/v1/groups", &json!({"name": "hot", "filter": "tags.zone = 'hot'"})).await;
    ok(s, &b, 201);
    let (s, b) = server
        .post(
            "/api/v1/config-profiles",
            &profile("hot-prof", "group:hot", 20, json!({"fan": "max", "interval": 10})),
        )
        .await;
    ok(s, &b, 201);
    let (s, b) = server
        .patch("/api/v1/devices/kiln-1/twin", &json!({"desired": {"led": "blue", "heater": false}}))
        .await;
    ok(s, &b, 200);

    // The documented example: the group profile overrides the fleet's fan, the device's own
    // layer overrides the fleet's led and the group's heater.
    let expected =
        json!({"fan": "low", "heater": false, "interval": 60, "led": "blue", "mode": "eco"});
    desired_becomes(server, "kiln-1", &expected).await;
    let (s, eff) = server.get("/api/v1/devices/kiln-1/twin/effective?explain=true").await;
    ok(s, &eff, 200);
    assert_eq!(eff["desired"], expected);
    assert_eq!(eff["pending_recompute"], false);
    assert_eq!(
        eff["sources"],
        json!({
            "/fan": "profile:a-prof",
            "/heater": "device",
            "/interval": "profile:base",
            "/led": "device",
            "/mode": "profile:a-prof",
        })
    );
    let sources: Vec<&str> = eff["layers"]
        .as_array()
        .expect("explain lists the layers")
        .iter()
        .map(|l| l["source"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(sources, ["profile:base", "profile:a-prof", "device"]);

    // A dry run of the tag change: the device would join "hot" and gain its profile; nothing
    // changes.
    let (_, device_before) = server.get("/api/v1/devices/kiln-1").await;
    let (s, dry) = server
        .patch("/api/v1/devices/kiln-1?dry_run=true", &json!({"tags": {"zone": "hot"}}))
        .await;
    ok(s, &dry, 200);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["groups"], json!({"joined": ["hot"], "left": []}));
    assert_eq!(dry["profiles"], json!({"gained": ["hot-prof"], "lost": []}));
    assert_eq!(dry["desired"]["before"], expected);
    assert_eq!(dry["desired"]["changes"], json!({"fan": "max", "interval": 10}));
    let (_, device_after) = server.get("/api/v1/devices/kiln-1").await;
    assert_eq!(device_after["version"], device_before["version"]);
    assert_eq!(device_after["tags"], json!({}));
    assert_eq!(twin_desired(server, "kiln-1").await, expected);

    // The device listens for its delta; the tag change brings the hot profile's values.
    let mut sub =
        MosquittoSub::start(server, V311, "kiln-1", &token, &["devices/kiln-1/twin/delta"]).await;
    sub.wait_for("received SUBACK").await;
    let (s, b) = server.patch("/api/v1/devices/kiln-1", &json!({"tags": {"zone": "hot"}})).await;
    ok(s, &b, 200);
    sub.wait_for(
        r#"devices/kiln-1/twin/delta {"delta":{"fan":"max","heater":false,"interval":10,"led":"blue","mode":"eco"}"#,
    )
    .await;
    drop(sub);
    let hot = json!({"fan": "max", "heater": false, "interval": 10, "led": "blue", "mode": "eco"});
    assert_eq!(twin_desired(server, "kiln-1").await, hot);
    let (_, eff) = server.get("/api/v1/devices/kiln-1/twin/effective?explain=true").await;
    assert_eq!(eff["sources"]["/fan"], "profile:hot-prof");
    assert_eq!(eff["sources"]["/interval"], "profile:hot-prof");

    // The recompute is on the twin's history, by `profiles`.
    let (_, history) =
        server.get("/api/v1/devices/kiln-1/twin/history?section=desired&limit=1").await;
    assert_eq!(history["items"][0]["actor"], "profiles", "{history}");
    assert_eq!(history["items"][0]["patch"], json!({"fan": "max", "interval": 10}));
}
