//! Zero-touch provisioning over MQTT: devices with no credential log in as `$provision`, register
//! on `$herd/provision/{registration id}/register` and read their credential on
//! `$herd/provision/{registration id}/response`; the bootstrap login reaches nothing else, and no
//! application reaches `$herd/`.

#![expect(clippy::unwrap_used, reason = "test code: an unexpected error fails the test")]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::Value;
use server::gateway::{Application, TopicRules};
use sha2::{Digest as _, Sha256};

use super::*;

const GROUPS: &str = "/api/v1/enrollment-groups";

/// HMAC-SHA256 (RFC 2104), written out here so the test does not take the server's word for it.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.map(|b| b ^ byte);
    let inner = Sha256::new().chain_update(pad(0x36)).chain_update(message).finalize();
    Sha256::new().chain_update(pad(0x5c)).chain_update(inner).finalize().into()
}

fn now_secs() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    i64::try_from(now.as_secs()).unwrap()
}

/// The derived key of `device` in `group`, from the REST API.
async fn derived_key(server: &TestServer, group: &str, device: &str) -> Vec<u8> {
    let (status, body) =
        server.post(&format!("{GROUPS}/{group}/derive-key"), &json!({ "device_id": device })).await;
    assert_eq!(status, 200, "{body}");
    BASE64.decode(body["derived_key"].as_str().unwrap()).unwrap()
}

/// A symmetric-key registration of `registration_id` signed with `key`.
fn signed(request_id: &str, group: &str, registration_id: &str, key: &[u8]) -> Value {
    let expires_at = now_secs() + 600;
    let message = format!("{registration_id}\n{expires_at}");
    let signature = BASE64.encode(hmac_sha256(key, message.as_bytes()));
    json!({
        "request_id": request_id,
        "enrollment_group": group,
        "proof": {"type": "symmetric_key", "expires_at": expires_at, "signature": signature},
    })
}

fn claimed(request_id: &str, group: &str, code: &str) -> Value {
    json!({
        "request_id": request_id,
        "enrollment_group": group,
        "proof": {"type": "claim_code", "code": code},
    })
}

async fn create_group(server: &TestServer, body: Value) {
    let (status, body) = server.post(GROUPS, &body).await;
    assert_eq!(status, 201, "{body}");
}

async fn claim_code(server: &TestServer, group: &str) -> String {
    let (status, body) =
        server.post(&format!("{GROUPS}/{group}/claim-codes"), &json!({"count": 1})).await;
    assert_eq!(status, 201, "{body}");
    body["items"][0]["code"].as_str().unwrap().to_owned()
}

/// Connects as the bootstrap user with client id `id` (and `password`, when given).
async fn bootstrap_connect(
    addr: SocketAddr,
    version: ProtocolVersion,
    id: &str,
    password: Option<&str>,
) -> (Probe, ReasonCode) {
    let io = TcpStream::connect(addr).await.unwrap();
    let local_addr = io.local_addr().unwrap();
    let mut probe = Probe {
        io: Transport::Stream(Box::new(io)),
        local_addr,
        buf: BytesMut::new(),
        version,
        next_id: 0,
        pending: Default::default(),
    };
    let mut connect = Connect::new(version, ClientId::new(id).unwrap(), 0);
    connect.username = Some(MqttString::new("$provision").unwrap());
    connect.password = password.map(|p| Bytes::from(p.to_owned()));
    probe.send(Packet::Connect(Box::new(connect))).await;
    match probe.recv().await {
        Some(Packet::ConnAck(ack)) => (probe, ack.reason_code),
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

/// A bootstrap client `id`, subscribed to its answers.
async fn bootstrap(server: &TestServer, version: ProtocolVersion, id: &str) -> Probe {
    let (mut probe, code) = bootstrap_connect(server.mqtt_addr, version, id, None).await;
    assert_eq!(code, ReasonCode::Success, "{id} should log in as $provision");
    let response = format!("$herd/provision/{id}/response");
    assert_eq!(probe.subscribe(&[&response]).await, vec![ReasonCode::Success]);
    probe
}

/// Publishes `request` as the registration of bootstrap client `id`; the JSON answer.
async fn register(probe: &mut Probe, id: &str, request: &Value) -> Value {
    let code = probe.publish(&format!("$herd/provision/{id}/register"), &request.to_string()).await;
    assert_eq!(code, ReasonCode::Success);
    let (topic, payload) = probe.next_message().await;
    assert_eq!(topic, format!("$herd/provision/{id}/response"));
    serde_json::from_str(&payload).unwrap()
}

#[track_caller]
fn check_error(answer: &Value, request_id: &str, code: &str) {
    assert_eq!(
        (&answer["request_id"], &answer["status"], &answer["code"]),
        (&json!(request_id), &json!("error"), &json!(code)),
        "{answer}"
    );
    assert!(answer["message"].is_string(), "{answer}");
    assert!(answer.get("credential").is_none(), "{answer}");
}

#[tokio::test]
async fn devices_register_with_a_symmetric_key_and_connect_with_the_answer() {
    let server = TestServer::start_with(|c| c.api.provisioning_max_failures_per_minute = 3).await;
    create_group(
        &server,
        json!({"name": "factory-a", "attestation": "symmetric_key",
               "device_id_template": "fa-{registration_id}", "tags": {"site": "berlin"}}),
    )
    .await;
    let key = derived_key(&server, "factory-a", "fa-SN-1").await;

    for version in [V5, V311] {
        let mut probe = bootstrap(&server, version, "SN-1").await;
        let answer = register(&mut probe, "SN-1", &signed("r-1", "factory-a", "SN-1", &key)).await;
        assert_eq!(answer["request_id"], "r-1");
        assert_eq!(answer["status"], "registered", "{answer}");
        assert_eq!(answer["device_id"], "fa-SN-1");
        // The first registration created the device; the one over 3.1.1 is a retry.
        assert_eq!(answer["created"], version == V5);
        assert_eq!(answer["credential"]["type"], "token");
        assert_eq!(answer["mqtt"], json!({"client_id": "fa-SN-1", "username": "fa-SN-1"}));
        assert!(answer.get("certificate_pem").is_none(), "{answer}");
        let secret = answer["credential"]["secret"].as_str().unwrap();

        // The device connects with what it received, on its own topics.
        let mut device = Probe::connected(server.mqtt_addr, version, "fa-SN-1", secret).await;
        assert_eq!(device.subscribe(&["devices/fa-SN-1/#"]).await, vec![ReasonCode::Success]);
        device.publish("devices/fa-SN-1/telemetry", "hello").await;
        assert_eq!(device.next_message().await.1, "hello");

        // Retrying on the same connection is idempotent: the same device, a new credential.
        let again = register(&mut probe, "SN-1", &signed("r-2", "factory-a", "SN-1", &key)).await;
        assert_eq!((&again["request_id"], &again["created"]), (&json!("r-2"), &json!(false)));
        assert_eq!(again["device_id"], "fa-SN-1");
    }
    let (_, d) = server.get("/api/v1/devices/fa-SN-1").await;
    assert_eq!((&d["state"], &d["tags"]), (&json!("active"), &json!({"site": "berlin"})));

    // A wrong proof, then too many of them (3 a minute here) from this registration id.
    let mut probe = bootstrap(&server, V5, "SN-2").await;
    let bad = signed("w-1", "factory-a", "SN-2", &[0; 32]);
    for _ in 0..3 {
        check_error(&register(&mut probe, "SN-2", &bad).await, "w-1", "invalid_proof");
    }
    let limited = register(&mut probe, "SN-2", &bad).await;
    check_error(&limited, "w-1", "too_many_attempts");
    assert!(limited["retry_after_secs"].as_u64().is_some_and(|s| (1..=60).contains(&s)));
    // Refusals are audited like those over HTTPS, with the transport and address.
    let (_, audit) = server.get("/api/v1/audit?limit=1000").await;
    let text = audit.to_string();
    assert!(text.contains("mqtt 127.0.0.1"), "{text}");

    // Malformed requests get `invalid_request`, with the request id when there is one.
    let mut probe = bootstrap(&server, V5, "SN-3").await;
    let mut unknown = signed("m-1", "factory-a", "SN-3", &key);
    unknown["registration_id"] = json!("SN-4");
    check_error(&register(&mut probe, "SN-3", &unknown).await, "m-1", "invalid_request");
    let no_id =
        json!({"enrollment_group": "factory-a", "proof": {"type": "claim_code", "code": "x"}});
    let answer = register(&mut probe, "SN-3", &no_id).await;
    assert_eq!((&answer["request_id"], &answer["code"]), (&Value::Null, &json!("invalid_request")));
}

#[tokio::test]
async fn claim_codes_disabled_groups_and_csrs() {
    let server = TestServer::start().await;
    create_group(
        &server,
        json!({"name": "cc", "attestation": "claim_code", "enabled": false,
               "device_id_template": "cc-{registration_id}"}),
    )
    .await;
    let code = claim_code(&server, "cc").await;
    let mut probe = bootstrap(&server, V5, "C-1").await;
    check_error(
        &register(&mut probe, "C-1", &claimed("d", "cc", &code)).await,
        "d",
        "enrollment_disabled",
    );
    let (status, body) = server.patch(&format!("{GROUPS}/cc"), &json!({"enabled": true})).await;
    assert_eq!(status, 200, "{body}");

    // A CSR asking for another device's name: the certificate names this device all the same.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, "fa-SN-1");
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let mut request = claimed("c", "cc", &code.to_lowercase());
    request["csr"] = json!(csr);
    let answer = register(&mut probe, "C-1", &request).await;
    assert_eq!((&answer["status"], &answer["device_id"]), (&json!("registered"), &json!("cc-C-1")));
    let pem = answer["certificate_pem"].as_str().unwrap();
    let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
    let cert = parsed.parse_x509().unwrap();
    let cn = cert.subject().iter_common_name().next().unwrap().as_str().unwrap().to_owned();
    assert_eq!(cn, "cc-C-1");
    assert!(answer["ca_pem"].as_str().unwrap().contains("BEGIN CERTIFICATE"), "{answer}");

    // The code is used up: another device is refused; a bad CSR changes nothing.
    let mut other = bootstrap(&server, V311, "C-2").await;
    let answer = register(&mut other, "C-2", &claimed("x", "cc", &code)).await;
    check_error(&answer, "x", "claim_code_exhausted");
    let mut request = claimed("y", "cc", &code);
    request["csr"] = json!("not a CSR");
    check_error(&register(&mut probe, "C-1", &request).await, "y", "invalid_csr");
}

#[tokio::test]
async fn bootstrap_clients_reach_only_their_own_topics() {
    let rules = TopicRules::new(&["#"], &["#", "devices/#", "$herd/#"], &[] as &[&str]).unwrap();
    let app = Application::new("bridge", domain::TokenHash::of_secret("bridge-secret-0123"), rules)
        .unwrap();
    let server = TestServer::start_with(|c| c.mqtt.applications = vec![app]).await;
    let token = server.active_device("dev-1").await;

    for version in [V5, V311] {
        let mut probe = bootstrap(&server, version, "SN-9").await;
        for filter in [
            "devices/#",
            "devices/dev-1/#",
            "#",
            "$herd/#",
            "$herd/provision/+/response",
            "$herd/provision/SN-8/response",
            "$herd/provision/SN-9/#",
            "$herd/provision/SN-9/register",
        ] {
            assert_eq!(probe.subscribe(&[filter]).await, vec![refused(version)], "{filter}");
        }
        for topic in [
            "devices/SN-9/telemetry",
            "devices/dev-1/telemetry",
            "$herd/provision/SN-8/register",
            "$herd/provision/SN-9/response",
        ] {
            let expected =
                if version == V5 { ReasonCode::NotAuthorized } else { ReasonCode::Success };
            assert_eq!(probe.publish(topic, "{}").await, expected, "{topic}");
        }
    }
    // A device's client id is not a bootstrap client id: no taking over its session.
    let (_, code) = bootstrap_connect(server.mqtt_addr, V5, "dev-1", None).await;
    assert_eq!(code, ReasonCode::ClientIdentifierNotValid);
    let (_, code) = bootstrap_connect(server.mqtt_addr, V5, "not/valid", None).await;
    assert_eq!(code, ReasonCode::ClientIdentifierNotValid);

    // An application allowed `#`, `devices/#` and even `$herd/#` reads nothing under `$herd/`.
    let (mut app, code) = app_connect(&server, "bridge").await;
    assert_eq!(code, ReasonCode::Success);
    for filter in ["$herd/#", "$herd/provision/SN-9/response", "$herd/provision/+/response"] {
        assert_eq!(app.subscribe(&[filter]).await, vec![ReasonCode::NotAuthorized], "{filter}");
    }
    assert_eq!(app.subscribe(&["devices/#"]).await, vec![ReasonCode::Success]);
    assert_eq!(app.publish("$herd/provision/SN-9/register", "{}").await, ReasonCode::NotAuthorized);
    // The device itself is not touched by any of this.
    Probe::connected(server.mqtt_addr, V5, "dev-1", &token).await;
}

/// Connects as application `name` (user name) with client id `{name}-1`.
async fn app_connect(server: &TestServer, name: &str) -> (Probe, ReasonCode) {
    let io = TcpStream::connect(server.mqtt_addr).await.unwrap();
    let local_addr = io.local_addr().unwrap();
    let mut probe = Probe {
        io: Transport::Stream(Box::new(io)),
        local_addr,
        buf: BytesMut::new(),
        version: V5,
        next_id: 0,
        pending: Default::default(),
    };
    let mut connect = Connect::new(V5, ClientId::new(format!("{name}-1")).unwrap(), 0);
    connect.username = Some(MqttString::new(name).unwrap());
    connect.password = Some(Bytes::from(format!("{name}-secret-0123")));
    probe.send(Packet::Connect(Box::new(connect))).await;
    match probe.recv().await {
        Some(Packet::ConnAck(ack)) => (probe, ack.reason_code),
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

#[tokio::test]
async fn the_bootstrap_login_can_be_protected_or_turned_off() {
    let server = TestServer::start_with(|c| {
        c.mqtt.provisioning = Some(server::config::MqttProvisioningConfig {
            password: Some(domain::TokenHash::of_secret("factory-pass")),
            max_tracked_clients: 100,
        });
    })
    .await;
    for wrong in [None, Some("factory-pas")] {
        let (_, code) = bootstrap_connect(server.mqtt_addr, V5, "SN-1", wrong).await;
        assert_eq!(code, ReasonCode::BadUserNameOrPassword);
    }
    let (_, code) = bootstrap_connect(server.mqtt_addr, V5, "SN-1", Some("factory-pass")).await;
    assert_eq!(code, ReasonCode::Success);

    let server = TestServer::start_with(|c| c.mqtt.provisioning = None).await;
    let (_, code) = bootstrap_connect(server.mqtt_addr, V5, "SN-1", None).await;
    assert_eq!(code, ReasonCode::NotAuthorized);
}

/// A device imported beforehand (state `registered`) registers over MQTT with its own id as
/// client id: it is adopted, and its bootstrap connection is never its presence.
#[tokio::test]
async fn a_pre_provisioned_device_is_adopted_over_mqtt() {
    let server = TestServer::start().await;
    let (status, body) =
        server.post("/api/v1/devices", &json!({"id": "pre-1", "tags": {"site": "paris"}})).await;
    assert_eq!(status, 201, "{body}");
    // A claim code names no device: it cannot take the pre-provisioned one.
    create_group(&server, json!({"name": "cc", "attestation": "claim_code"})).await;
    let code = claim_code(&server, "cc").await;
    let mut probe = bootstrap(&server, V5, "pre-1").await;
    let answer = register(&mut probe, "pre-1", &claimed("c", "cc", &code)).await;
    check_error(&answer, "c", "device_conflict");
    // A derived key binds the id: it adopts it.
    create_group(
        &server,
        json!({"name": "sk", "attestation": "symmetric_key", "tags": {"site": "berlin", "line": "2"}}),
    )
    .await;
    let key = derived_key(&server, "sk", "pre-1").await;
    let answer = register(&mut probe, "pre-1", &signed("a", "sk", "pre-1", &key)).await;
    assert_eq!(
        (&answer["status"], &answer["device_id"], &answer["created"]),
        (&json!("registered"), &json!("pre-1"), &json!(false)),
        "{answer}"
    );
    let (_, d) = server.get("/api/v1/devices/pre-1").await;
    assert_eq!(
        (&d["state"], &d["tags"]),
        (&json!("active"), &json!({"line": "2", "site": "paris"}))
    );
    // Active now: the bootstrap login may no longer use its id.
    probe.send(Packet::Disconnect(Disconnect::new(ReasonCode::Success))).await;
    assert_eq!(probe.closed().await, None);
    let (_, code) = bootstrap_connect(server.mqtt_addr, V5, "pre-1", None).await;
    assert_eq!(code, ReasonCode::ClientIdentifierNotValid);

    // Presence events are handled in order: once another device's connection is recorded, the
    // bootstrap connection's events have been handled, and recorded nothing for pre-1.
    let token = server.active_device("marker").await;
    let _marker = Probe::connected(server.mqtt_addr, V5, "marker", &token).await;
    connectivity_when(&server, "marker", |c| c["connected"] == true).await;
    let never = connectivity_when(&server, "pre-1", |_| true).await;
    assert_eq!((&never["connected"], &never["connected_at"]), (&json!(false), &Value::Null));

    // The device then connects with its new credential, and that is its presence.
    let secret = answer["credential"]["secret"].as_str().unwrap();
    let _device = Probe::connected(server.mqtt_addr, V5, "pre-1", secret).await;
    connectivity_when(&server, "pre-1", |c| c["connected"] == true).await;
}

/// A registration published with RETAIN is answered, and its proof does not stay in the store.
#[tokio::test]
async fn retained_registrations_are_answered_and_cleared() {
    let server = TestServer::start().await;
    create_group(&server, json!({"name": "cc", "attestation": "claim_code"})).await;
    let code = claim_code(&server, "cc").await;
    let mut probe = bootstrap(&server, V5, "SN-r").await;
    let mut publish = Publish::new(
        TopicName::new("$herd/provision/SN-r/register").unwrap(),
        Bytes::from(claimed("r", "cc", &code).to_string()),
    );
    publish.retain = true;
    publish.delivery = Delivery::AtLeastOnce { packet_id: PacketId::new(99).unwrap(), dup: false };
    probe.send(Packet::Publish(publish)).await;
    let answer = loop {
        match probe.recv().await {
            Some(Packet::PubAck(_)) => {}
            Some(Packet::Publish(p)) => break serde_json::from_slice::<Value>(&p.payload).unwrap(),
            other => panic!("expected the answer, got {other:?}"),
        }
    };
    assert_eq!((&answer["status"], &answer["request_id"]), (&json!("registered"), &json!("r")));
    // Only one answer: the clearing is not a request.
    assert_eq!(probe.publish("$herd/provision/SN-r/register", "{}").await, ReasonCode::Success);
    let (_, next) = probe.next_message().await;
    assert!(next.contains("invalid_request"), "{next}");
    let url = format!("sqlite://{}", server.database_path().display());
    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM mqtt_retained")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        if stored == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the retained registration stayed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `mosquitto_rr` registers a claim-code device end to end; `mosquitto_pub` then publishes as it.
#[tokio::test]
async fn mosquitto_clients_register_a_device() {
    if !mosquitto_clients() {
        return;
    }
    let server = TestServer::start().await;
    create_group(&server, json!({"name": "cc", "attestation": "claim_code"})).await;
    let code = claim_code(&server, "cc").await;
    let port = server.mqtt_addr.port().to_string();
    let request = claimed("rr-1", "cc", &code).to_string();
    let args = [
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-V",
        "mqttv5",
        "-i",
        "SN-rr",
        "-u",
        "$provision",
        "-t",
        "$herd/provision/SN-rr/register",
        "-e",
        "$herd/provision/SN-rr/response",
        "-q",
        "1",
        "-W",
        "15",
        "-m",
        &request,
    ]
    .map(str::to_owned);
    let out = run("mosquitto_rr", &args).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((&answer["status"], &answer["device_id"]), (&json!("registered"), &json!("SN-rr")));
    let secret = answer["credential"]["secret"].as_str().unwrap();
    let out = mosquitto_pub(&server, V5, "SN-rr", secret, "devices/SN-rr/telemetry", "{}").await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
