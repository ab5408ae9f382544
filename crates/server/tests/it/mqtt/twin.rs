//! Device twins end to end: a device without the SDK (the Mosquitto clients, or `Probe`) gets its
//! delta, reports its state and converges; `If-Match` conflicts are 412 over REST; a device that
//! comes back gets its pending delta; `get` answers with the request's correlation (v3.1.1
//! `request_id`, MQTT 5 Response Topic and Correlation Data); limits are enforced over both.

use super::*;

/// PATCHes a device's twin with an optional `If-Match`; returns status, ETag and body.
async fn patch_twin(
    server: &TestServer,
    id: &str,
    if_match: Option<&str>,
    body: &serde_json::Value,
) -> (u16, Option<String>, serde_json::Value) {
    let mut req = reqwest::Client::new()
        .patch(server.url(&format!("/api/v1/devices/{id}/twin")))
        .bearer_auth(&server.admin_token)
        .header("content-type", "application/merge-patch+json")
        .body(body.to_string());
    if let Some(etag) = if_match {
        req = req.header("if-match", etag);
    }
    let r = req.send().await.expect("PATCH twin");
    let status = r.status().as_u16();
    let etag = r.headers().get("etag").and_then(|v| v.to_str().ok()).map(str::to_owned);
    (status, etag, r.json().await.unwrap_or(serde_json::Value::Null))
}

async fn twin(server: &TestServer, id: &str) -> serde_json::Value {
    let (status, body) = server.get(&format!("/api/v1/devices/{id}/twin")).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// The JSON of the next message on `topic` (other topics are skipped).
async fn next_on(probe: &mut Probe, topic: &str) -> serde_json::Value {
    loop {
        let (t, payload) = probe.next_message().await;
        if t == topic {
            return serde_json::from_str(&payload).expect("JSON payload");
        }
    }
}

#[tokio::test]
async fn a_plain_mosquitto_device_gets_its_delta_reports_and_converges() {
    if !mosquitto_clients() {
        return;
    }
    let server = TestServer::start().await;
    let token = active_device(&server, "thermo-1").await;

    let mut sub =
        MosquittoSub::start(&server, V311, "thermo-1", &token, &["devices/thermo-1/twin/delta"])
            .await;
    sub.wait_for("received SUBACK").await;
    let (status, etag, body) = patch_twin(
        &server,
        "thermo-1",
        Some("\"0.0\""),
        &json!({"desired": {"setpoint": 21, "fan": {"mode": "auto"}}, "tags": {"room": "lab"}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(etag.as_deref(), Some("\"1.1\""));
    assert_eq!(body["status"]["state"], "pending");
    // The delta arrives as `topic payload` (-v).
    sub.wait_for(r#"devices/thermo-1/twin/delta {"delta":{"fan":{"mode":"auto"},"setpoint":21},"version":1}"#)
        .await;
    drop(sub);

    // The device reports what it applied, plus something of its own.
    let out = mosquitto_pub(
        &server,
        V311,
        "thermo-1",
        &token,
        "devices/thermo-1/twin/reported",
        r#"{"request_id":"r1","reported":{"setpoint":21,"fan":{"mode":"auto"},"firmware":"1.2"}}"#,
    )
    .await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut body = twin(&server, "thermo-1").await;
    for _ in 0..200 {
        if body["status"]["state"] == "in_sync" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
        body = twin(&server, "thermo-1").await;
    }
    assert_eq!(body["status"], json!({"state": "in_sync"}), "{body}");
    assert_eq!(body["delta"], json!({}));
    assert_eq!(body["reported"]["document"]["firmware"], "1.2");
    assert_eq!(body["etag"], "1.1", "reports never change the ETag");

    // A stale If-Match is refused with the current ETag named.
    let (status, _, problem) =
        patch_twin(&server, "thermo-1", Some("\"0.0\""), &json!({"desired": {"setpoint": 19}}))
            .await;
    assert_eq!(status, 412, "{problem}");
    assert_eq!(problem["code"], "precondition_failed");
    assert!(problem["detail"].as_str().unwrap().contains("\"1.1\""), "{problem}");
}

/// Connects `id` with a persistent session (v3.1.1, clean session off).
async fn persistent_probe(server: &TestServer, id: &str, password: &str) -> Probe {
    let io = TcpStream::connect(server.mqtt_addr).await.expect("connect");
    let local_addr = io.local_addr().expect("local address");
    let mut probe = Probe {
        io: Transport::Stream(Box::new(io)),
        local_addr,
        buf: BytesMut::new(),
        version: V311,
        next_id: 0,
        pending: Default::default(),
    };
    let mut connect = Connect::new(V311, ClientId::new(id).expect("client id"), 0);
    connect.clean_start = false;
    connect.username = Some(MqttString::new(id).expect("user name"));
    connect.password = Some(Bytes::from(password.to_owned()));
    probe.send(Packet::Connect(Box::new(connect))).await;
    match probe.recv().await {
        Some(Packet::ConnAck(ack)) => assert_eq!(ack.reason_code, ReasonCode::Success),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    probe
}

#[tokio::test]
async fn a_device_that_comes_back_gets_its_pending_delta() {
    let server = TestServer::start().await;
    let token = active_device(&server, "valve-1").await;
    let (status, _, body) =
        patch_twin(&server, "valve-1", None, &json!({"desired": {"open": true}})).await;
    assert_eq!(status, 200, "{body}");

    // First connection: the session and its subscription are made.
    let mut probe = persistent_probe(&server, "valve-1", &token).await;
    probe.subscribe(&["devices/valve-1/twin/delta"]).await;
    drop(probe);
    server.device_until("valve-1", |d| d["connectivity"]["connected"] == false).await;

    // Coming back, the device is sent its delta without asking.
    let mut probe = persistent_probe(&server, "valve-1", &token).await;
    let delta = next_on(&mut probe, "devices/valve-1/twin/delta").await;
    assert_eq!(delta, json!({"version": 1, "delta": {"open": true}}));

    // Once it reports the desired state, it is in sync and a reconnect brings no delta: the
    // marker published afterwards is the next message.
    probe.subscribe(&["devices/valve-1/twin/response", "devices/valve-1/marker"]).await;
    probe.publish("devices/valve-1/twin/reported", r#"{"reported":{"open":true}}"#).await;
    let answer = next_on(&mut probe, "devices/valve-1/twin/response").await;
    assert_eq!(answer, json!({"request_id": null, "status": "ok", "reported_version": 1}));
    drop(probe);
    server.device_until("valve-1", |d| d["connectivity"]["connected"] == false).await;
    let mut probe = persistent_probe(&server, "valve-1", &token).await;
    server.device_until("valve-1", |d| d["connectivity"]["connected"] == true).await;
    probe.publish("devices/valve-1/marker", "m").await;
    assert_eq!(probe.next_message().await, ("devices/valve-1/marker".into(), "m".into()));
}

#[tokio::test]
async fn get_answers_with_the_requests_correlation_and_never_the_tags() {
    let server = TestServer::start().await;
    let token = active_device(&server, "cam-1").await;
    let (status, _, body) = patch_twin(
        &server,
        "cam-1",
        None,
        &json!({"desired": {"fps": 30}, "tags": {"secret_note": "x"}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // v3.1.1: the request id in the payload, the answer on twin/response.
    let mut v3 = Probe::connected(server.mqtt_addr, V311, "cam-1", &token).await;
    v3.subscribe(&["devices/cam-1/twin/response"]).await;
    v3.publish("devices/cam-1/twin/get", r#"{"request_id":"r-1"}"#).await;
    let answer = next_on(&mut v3, "devices/cam-1/twin/response").await;
    assert_eq!(answer["request_id"], "r-1");
    assert_eq!(answer["status"], "ok");
    assert_eq!(
        answer["twin"],
        json!({
            "desired": {"fps": 30},
            "reported": {},
            "delta": {"fps": 30},
            "versions": {"desired": 1, "reported": 0},
        })
    );
    assert!(!answer.to_string().contains("secret_note"), "tags never reach the device");
    // An empty payload is a get without a request id; garbage is answered with an error code.
    v3.publish("devices/cam-1/twin/get", "").await;
    let answer = next_on(&mut v3, "devices/cam-1/twin/response").await;
    assert_eq!((&answer["request_id"], &answer["status"]), (&json!(null), &json!("ok")));
    v3.publish("devices/cam-1/twin/get", "not json").await;
    let answer = next_on(&mut v3, "devices/cam-1/twin/response").await;
    assert_eq!((&answer["status"], &answer["code"]), (&json!("error"), &json!("invalid_request")));
    v3.publish("devices/cam-1/twin/reported", r#"{"request_id":"r-2","reported":[1]}"#).await;
    let answer = next_on(&mut v3, "devices/cam-1/twin/response").await;
    assert_eq!(answer["request_id"], "r-2");
    assert_eq!(answer["code"], "invalid_patch");
    drop(v3);

    // MQTT 5: Response Topic below the device's subtree and Correlation Data.
    let mut v5 = Probe::connected(server.mqtt_addr, V5, "cam-1", &token).await;
    v5.subscribe(&["devices/cam-1/replies/#", "devices/cam-1/twin/response"]).await;
    for (response_topic, expected_topic) in [
        ("devices/cam-1/replies/a", "devices/cam-1/replies/a"),
        // Outside the device's own subtree: answered on twin/response instead.
        ("devices/other/replies/a", "devices/cam-1/twin/response"),
    ] {
        let packet_id = v5.packet_id();
        let mut publish = Publish::new(
            TopicName::new("devices/cam-1/twin/get").expect("topic"),
            Bytes::from_static(b""),
        );
        publish.delivery = Delivery::AtLeastOnce { packet_id, dup: false };
        publish.properties.response_topic = Some(TopicName::new(response_topic).expect("topic"));
        publish.properties.correlation_data = Some(Bytes::from_static(b"corr-7"));
        v5.send(Packet::Publish(publish)).await;
        let answer = loop {
            match v5.recv().await {
                Some(Packet::Publish(p)) => break p,
                Some(Packet::PubAck(_)) => {}
                other => panic!("expected the answer, got {other:?}"),
            }
        };
        let topic = answer.topic.as_ref().map(|t| t.as_str().to_owned()).unwrap_or_default();
        assert_eq!(topic, expected_topic);
        let body: serde_json::Value = serde_json::from_slice(&answer.payload).unwrap();
        assert_eq!(body["twin"]["desired"], json!({"fps": 30}));
        if expected_topic.ends_with("/a") {
            assert_eq!(answer.properties.correlation_data.as_deref(), Some(&b"corr-7"[..]));
        } else {
            assert_eq!(answer.properties.correlation_data, None);
        }
    }
}

#[tokio::test]
async fn status_is_pending_until_the_device_reports_and_drifted_when_it_reports_otherwise() {
    let server = TestServer::start().await;
    let token = active_device(&server, "fan-1").await;
    let (status, _, body) =
        patch_twin(&server, "fan-1", None, &json!({"desired": {"speed": 3}})).await;
    assert_eq!(status, 200, "{body}");
    let pending = twin(&server, "fan-1").await;
    assert_eq!(pending["status"]["state"], "pending");
    assert!(pending["status"]["since"].is_string());

    let mut probe = Probe::connected(server.mqtt_addr, V311, "fan-1", &token).await;
    probe.subscribe(&["devices/fan-1/twin/response"]).await;
    probe.publish("devices/fan-1/twin/reported", r#"{"reported":{"speed":2}}"#).await;
    next_on(&mut probe, "devices/fan-1/twin/response").await;
    let drifted = twin(&server, "fan-1").await;
    assert_eq!(drifted["status"]["state"], "drifted", "{drifted}");
    assert_eq!(drifted["delta"], json!({"speed": 3}));
}

#[tokio::test]
async fn size_limits_hold_over_rest_and_mqtt() {
    let server = TestServer::start_with(|c| {
        c.twin.policy.limits.max_section_bytes = 1024;
        c.twin.max_request_bytes = 2048;
    })
    .await;
    let token = active_device(&server, "big-1").await;
    let (status, _, problem) =
        patch_twin(&server, "big-1", None, &json!({"desired": {"blob": "x".repeat(1100)}})).await;
    assert_eq!(status, 413, "{problem}");
    assert_eq!(problem["code"], "twin_too_large");
    assert!(problem["detail"].as_str().unwrap().contains("max_section_bytes (1024)"), "{problem}");

    let mut probe = Probe::connected(server.mqtt_addr, V311, "big-1", &token).await;
    probe.subscribe(&["devices/big-1/twin/response"]).await;
    let report = json!({"request_id": "big", "reported": {"blob": "x".repeat(1100)}});
    probe.publish("devices/big-1/twin/reported", &report.to_string()).await;
    let answer = next_on(&mut probe, "devices/big-1/twin/response").await;
    assert_eq!((&answer["request_id"], &answer["code"]), (&json!("big"), &json!("twin_too_large")));
    let huge = json!({"request_id": "huge", "reported": {"blob": "x".repeat(3000)}});
    probe.publish("devices/big-1/twin/reported", &huge.to_string()).await;
    let answer = next_on(&mut probe, "devices/big-1/twin/response").await;
    assert_eq!(answer["code"], "request_too_large");
    assert_eq!(twin(&server, "big-1").await["reported"]["version"], 0);
}
