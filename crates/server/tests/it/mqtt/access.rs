//! Who may connect besides devices, and how much: anonymous clients and integration applications
//! with their topic rules, the credential cache under revocation, failed-login storms, the shared
//! connection budget of TCP and WebSocket, and `herd config hash-secret`.

use std::io::Write as _;
use std::sync::Arc;

use server::gateway::{Application, TopicRules};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::*;

/// The secret of the `grafana` application of these tests.
const APP_SECRET: &str = "grafana-secret-0123456789";

/// Connects as `client_id` with exactly the user name and password given (none when `None`);
/// returns the CONNACK reason.
async fn connect_as(
    addr: SocketAddr,
    version: ProtocolVersion,
    client_id: &str,
    username: Option<&str>,
    password: Option<&str>,
) -> (Probe, ReasonCode) {
    let io = TcpStream::connect(addr).await.expect("connect to the MQTT listener");
    let local_addr = io.local_addr().expect("local address");
    let mut probe = Probe {
        io: Transport::Stream(Box::new(io)),
        local_addr,
        buf: BytesMut::new(),
        version,
        next_id: 0,
        pending: Default::default(),
    };
    let mut connect = Connect::new(version, ClientId::new(client_id).expect("client id"), 0);
    connect.username = username.map(|u| MqttString::new(u).expect("user name"));
    connect.password = password.map(|p| Bytes::from(p.to_owned()));
    probe.send(Packet::Connect(Box::new(connect))).await;
    match probe.recv().await {
        Some(Packet::ConnAck(ack)) => (probe, ack.reason_code),
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

/// Connects and checks that the server accepted.
async fn connected_as(
    addr: SocketAddr,
    version: ProtocolVersion,
    client_id: &str,
    username: Option<&str>,
    password: Option<&str>,
) -> Probe {
    let (probe, code) = connect_as(addr, version, client_id, username, password).await;
    assert_eq!(code, ReasonCode::Success, "{client_id} should connect");
    probe
}

fn rules(publish: &[&str], subscribe: &[&str], deny: &[&str]) -> TopicRules {
    TopicRules::new(publish, subscribe, deny).expect("valid rules")
}

/// The PUBACK of a publish the rules refuse: MQTT 5 says 0x87; v3.1.1 cannot refuse a PUBLISH, so
/// it is acknowledged and dropped.
fn publish_refused(version: ProtocolVersion) -> ReasonCode {
    match version {
        V5 => ReasonCode::NotAuthorized,
        V311 => ReasonCode::Success,
    }
}

#[tokio::test]
async fn anonymous_clients_are_refused_by_default() {
    let server = TestServer::start().await;
    for version in [V311, V5] {
        // MQTT 5 §3.2.2.2 0x87 Not authorized (v3.1.1 §3.2.2.3 return code 5): no credentials at
        // all is not "malformed" user name or password data (0x86).
        let (_, code) = connect_as(server.mqtt_addr, version, "viewer", None, None).await;
        assert_eq!(code, ReasonCode::NotAuthorized);
        // A user name alone is a device without a password.
        let (_, code) = connect_as(server.mqtt_addr, version, "viewer", Some("viewer"), None).await;
        assert_eq!(code, ReasonCode::BadUserNameOrPassword);
    }
}

#[tokio::test]
async fn anonymous_clients_follow_their_rules() {
    let server = TestServer::start_with(|c| {
        c.mqtt.anonymous = Some(Arc::new(rules(&["public/+"], &["public/#"], &["public/admin"])));
    })
    .await;
    let token = active_device(&server, "dev-1").await;
    let addr = server.mqtt_addr;
    for version in [V311, V5] {
        let mut anon = connected_as(addr, version, "viewer", None, None).await;
        let codes = anon
            .subscribe(&["public/#", "#", "devices/+/telemetry", "devices/dev-1/#", "public/+"])
            .await;
        let no = refused(version);
        // public/# could deliver the denied public/admin; public/+ too.
        assert_eq!(codes, vec![no, no, no, no, no]);
        assert_eq!(anon.subscribe(&["public/news"]).await, vec![ReasonCode::Success]);
        assert_eq!(anon.publish("public/news", "hello").await, ReasonCode::Success);
        assert_eq!(anon.next_message().await, ("public/news".into(), "hello".into()));
        assert_eq!(anon.publish("public/admin", "x").await, publish_refused(version));
        assert_eq!(anon.publish("public/a/b", "x").await, publish_refused(version));

        // Nothing reaches a device from an anonymous client, and nothing of it reaches them.
        let mut device = Probe::connected(addr, version, "dev-1", &token).await;
        device.subscribe(&["devices/dev-1/#"]).await;
        assert_eq!(anon.publish("devices/dev-1/commands", "x").await, publish_refused(version));
        device.publish("devices/dev-1/telemetry", "21.5").await;
        assert_eq!(device.next_message().await, ("devices/dev-1/telemetry".into(), "21.5".into()));
        anon.publish("public/news", "marker").await;
        assert_eq!(anon.next_message().await, ("public/news".into(), "marker".into()));
    }
    // An anonymous client may not take a device's client id (it would take its session over).
    let (_, code) = connect_as(addr, V5, "dev-1", None, None).await;
    assert_eq!(code, ReasonCode::ClientIdentifierNotValid);
}

/// A server with the `grafana` application: reads device telemetry, publishes alerts, never
/// `alerts/internal/…`.
async fn server_with_grafana() -> TestServer {
    let rules = rules(&["alerts/#"], &["devices/+/telemetry", "alerts/+"], &["alerts/internal/#"]);
    let app = Application::new("grafana", domain::TokenHash::of_secret(APP_SECRET), rules)
        .expect("valid application");
    TestServer::start_with(|c| c.mqtt.applications = vec![app]).await
}

#[tokio::test]
async fn applications_read_device_telemetry_and_nothing_else() {
    let server = server_with_grafana().await;
    let token = active_device(&server, "dev-1").await;
    let addr = server.mqtt_addr;
    let app = (Some("grafana"), Some(APP_SECRET));
    for version in [V311, V5] {
        let mut grafana = connected_as(addr, version, "grafana-1", app.0, app.1).await;
        let no = refused(version);
        let codes = grafana
            .subscribe(&[
                "devices/+/telemetry",
                "$share/dashboards/devices/+/telemetry",
                "devices/#",
                "devices/dev-1/commands",
                "#",
                "alerts/fire",
                "alerts/+",
            ])
            .await;
        let ok = ReasonCode::Success;
        // alerts/+ could deliver the denied alerts/internal.
        assert_eq!(codes, vec![ok, ok, no, no, no, ok, no]);

        let mut device = Probe::connected(addr, version, "dev-1", &token).await;
        device.subscribe(&["devices/dev-1/#"]).await;
        device.publish("devices/dev-1/telemetry", "21.5").await;
        assert_eq!(device.next_message().await, ("devices/dev-1/telemetry".into(), "21.5".into()));
        assert_eq!(grafana.next_message().await, ("devices/dev-1/telemetry".into(), "21.5".into()));
        // The shared subscription got its own copy.
        assert_eq!(grafana.next_message().await, ("devices/dev-1/telemetry".into(), "21.5".into()));

        // Publishing: only alerts, never internal ones, never to devices.
        assert_eq!(grafana.publish("alerts/fire", "!").await, ReasonCode::Success);
        assert_eq!(grafana.next_message().await, ("alerts/fire".into(), "!".into()));
        assert_eq!(grafana.publish("alerts/internal/x", "x").await, publish_refused(version));
        assert_eq!(grafana.publish("devices/dev-1/commands", "x").await, publish_refused(version));
        device.publish("devices/dev-1/marker", "marker").await;
        assert_eq!(device.next_message().await, ("devices/dev-1/marker".into(), "marker".into()));
        grafana.send(Packet::Disconnect(Disconnect::new(ReasonCode::Success))).await;
        assert_eq!(grafana.closed().await, None);
    }
}

#[tokio::test]
async fn applications_need_their_secret_and_their_own_client_id() {
    let server = server_with_grafana().await;
    let token = active_device(&server, "dev-1").await;
    let addr = server.mqtt_addr;
    for version in [V311, V5] {
        for wrong in [Some("grafana-secret-0123456780"), Some(token.as_str()), None] {
            let (_, code) = connect_as(addr, version, "grafana-1", Some("grafana"), wrong).await;
            assert_eq!(code, ReasonCode::BadUserNameOrPassword, "{wrong:?}");
        }
        // An unknown application name is a device login that does not match.
        let (_, code) =
            connect_as(addr, version, "grafana-1", Some("grafanna"), Some(APP_SECRET)).await;
        assert_eq!(code, ReasonCode::BadUserNameOrPassword);
    }
    // The right secret with a device's client id: refused, and the device stays connected.
    let mut device = Probe::connected(addr, V5, "dev-1", &token).await;
    device.subscribe(&["devices/dev-1/#"]).await;
    let (_, code) = connect_as(addr, V5, "dev-1", Some("grafana"), Some(APP_SECRET)).await;
    assert_eq!(code, ReasonCode::ClientIdentifierNotValid);
    device.publish("devices/dev-1/marker", "still here").await;
    assert_eq!(device.next_message().await, ("devices/dev-1/marker".into(), "still here".into()));
    if !mosquitto_clients() {
        return;
    }
    // mosquitto_sub as the application receives a device's telemetry.
    let mut args: Vec<String> = ["-h", "127.0.0.1", "-p", &addr.port().to_string()]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    args.extend(
        ["-V", "mqttv5", "-i", "grafana-sub", "-u", "grafana", "-P", APP_SECRET].map(str::to_owned),
    );
    args.extend(["-d", "-v", "-t", "devices/+/telemetry", "-C", "1"].map(str::to_owned));
    let mut sub = Command::new("stdbuf")
        .arg("-oL")
        .arg("mosquitto_sub")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start mosquitto_sub");
    let stdout = sub.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let subscribed = tokio::time::timeout(WAIT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("received SUBACK") {
                return true;
            }
        }
        false
    })
    .await;
    assert!(matches!(subscribed, Ok(true)), "mosquitto_sub did not subscribe");
    device.publish("devices/dev-1/telemetry", "23.5").await;
    let line = tokio::time::timeout(WAIT, async {
        loop {
            match lines.next_line().await {
                Ok(Some(line)) if line.starts_with("devices/") => return line,
                Ok(Some(_)) => {}
                _ => panic!("mosquitto_sub ended without the message"),
            }
        }
    })
    .await
    .expect("the message in time");
    assert_eq!(line, "devices/dev-1/telemetry 23.5");
}

#[tokio::test]
async fn a_revoked_credential_is_refused_on_reconnect_although_cached() {
    let server = TestServer::start().await;
    let token = active_device(&server, "dev-1").await;
    let (_, body) = server.get("/api/v1/devices/dev-1/credentials").await;
    let credential = body["items"][0]["id"].as_str().expect("credential id").to_owned();
    // Two logins: the second is answered from the cache the first filled.
    for _ in 0..2 {
        let mut probe = Probe::connected(server.mqtt_addr, V5, "dev-1", &token).await;
        probe.send(Packet::Disconnect(Disconnect::new(ReasonCode::Success))).await;
        assert_eq!(probe.closed().await, None);
    }
    let (status, body) =
        server.delete(&format!("/api/v1/devices/dev-1/credentials/{credential}")).await;
    assert_eq!(status, 200, "{body}");
    // Straight after the answer, with no wait: refused.
    let (_, code) = Probe::connect(server.mqtt_addr, V5, "dev-1", &token).await;
    assert_eq!(code, ReasonCode::BadUserNameOrPassword);

    // Suspension likewise, for a new credential that is cached as well.
    let (status, body) = server.post("/api/v1/devices/dev-1/credentials", &json!({})).await;
    assert_eq!(status, 201, "{body}");
    let token = body["token"].as_str().expect("token").to_owned();
    let probe = Probe::connected(server.mqtt_addr, V311, "dev-1", &token).await;
    drop(probe);
    set_state(&server, "dev-1", "suspended").await;
    let (_, code) = Probe::connect(server.mqtt_addr, V5, "dev-1", &token).await;
    assert_eq!(code, ReasonCode::Banned);
    set_state(&server, "dev-1", "active").await;
    Probe::connected(server.mqtt_addr, V5, "dev-1", &token).await;
}

#[tokio::test]
async fn failed_logins_do_not_keep_a_device_out() {
    const FAILURES: usize = 1000;
    let server = TestServer::start().await;
    let token = active_device(&server, "dev-1").await;
    let addr = server.mqtt_addr;
    // At most this many failing clients at once, to stay well inside the file descriptor limit
    // of the test process (it holds both ends of every connection).
    let at_once = Arc::new(Semaphore::new(200));
    let mut failures = JoinSet::new();
    for i in 0..FAILURES {
        let at_once = Arc::clone(&at_once);
        failures.spawn(async move {
            let _slot = at_once.acquire_owned().await.expect("semaphore open");
            // Half are shaped like credentials (and reach the store), half are not; half claim
            // the very device that is trying to connect.
            let password = if i % 2 == 0 { format!("hdc_{i:064x}") } else { format!("guess-{i}") };
            let id = if i % 4 < 2 { "dev-1".to_owned() } else { format!("attacker-{i}") };
            let version = if i % 3 == 0 { V311 } else { V5 };
            let (_, code) = Probe::connect(addr, version, &id, &password).await;
            code
        });
    }
    // While they run, the device connects and makes a round trip.
    let mut probe = Probe::connected(addr, V5, "dev-1", &token).await;
    assert_eq!(probe.subscribe(&["devices/dev-1/#"]).await, vec![ReasonCode::Success]);
    assert_eq!(probe.publish("devices/dev-1/telemetry", "21.5").await, ReasonCode::Success);
    assert_eq!(probe.next_message().await, ("devices/dev-1/telemetry".into(), "21.5".into()));
    let mut refused = 0;
    while let Some(code) = failures.join_next().await {
        assert_eq!(code.expect("failing client ran"), ReasonCode::BadUserNameOrPassword);
        refused += 1;
    }
    assert_eq!(refused, FAILURES);
    // And it is still connected and served afterwards.
    probe.publish("devices/dev-1/telemetry", "22").await;
    assert_eq!(probe.next_message().await, ("devices/dev-1/telemetry".into(), "22".into()));
}

/// Connects over TCP and sends a CONNECT for `dev-1`; returns whether a CONNACK came back (the
/// server closes a connection beyond `mqtt.max_connections` before reading anything).
async fn tcp_accepted(addr: SocketAddr, token: &str) -> Option<Probe> {
    let mut io = TcpStream::connect(addr).await.expect("connect to the MQTT listener");
    let local_addr = io.local_addr().expect("local address");
    let mut connect = Connect::new(V5, ClientId::new("probe").expect("client id"), 0);
    connect.username = Some(MqttString::new("probe").expect("user name"));
    connect.password = Some(Bytes::from(token.to_owned()));
    let mut out = BytesMut::new();
    mqtt_codec::encode(&Packet::Connect(Box::new(connect)), V5, &mut out).expect("encode");
    // A closed connection may refuse the write, or take it and then read as closed.
    if io.write_all(&out).await.is_err() {
        return None;
    }
    let mut probe = Probe {
        io: Transport::Stream(Box::new(io)),
        local_addr,
        buf: BytesMut::new(),
        version: V5,
        next_id: 0,
        pending: Default::default(),
    };
    let mut first = [0u8; 1];
    let Transport::Stream(io) = &mut probe.io else { unreachable!("a TCP probe") };
    match tokio::time::timeout(WAIT, io.read(&mut first)).await.expect("an answer or a close") {
        Ok(1) => {
            probe.buf.extend_from_slice(&first);
            match probe.recv().await {
                // The client id `probe` is no device: refused, but it was served.
                Some(Packet::ConnAck(_)) => Some(probe),
                other => panic!("expected CONNACK, got {other:?}"),
            }
        }
        _ => None,
    }
}

/// Retries `attempt` until it succeeds (a permit is released when the server's connection task
/// ends, a moment after the client saw its socket close).
async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    mut attempt: impl FnMut() -> F,
) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(done) = attempt().await {
            return done;
        }
        assert!(tokio::time::Instant::now() < deadline, "never got a connection permit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn max_connections_is_one_budget_for_tcp_and_websocket() {
    let server = TestServer::start_with(|c| c.mqtt.max_connections = 3).await;
    let mut tokens = Vec::new();
    for id in ["dev-1", "dev-2", "dev-3", "dev-4"] {
        tokens.push(active_device(&server, id).await);
    }
    let addr = server.mqtt_addr;
    let mut probes = Vec::new();
    for (id, token) in ["dev-1", "dev-2", "dev-3"].iter().zip(&tokens) {
        probes.push(Probe::connected(addr, V5, id, token).await);
    }
    // The fourth is closed at once, over TCP and over WebSocket (503).
    assert!(tcp_accepted(addr, &tokens[3]).await.is_none(), "a 4th TCP connection is closed");
    match websocket(&server, "mqtt").await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503);
        }
        other => panic!("expected 503, got {other:?}"),
    }
    // The first three work.
    for (probe, id) in probes.iter_mut().zip(["dev-1", "dev-2", "dev-3"]) {
        let topic = format!("devices/{id}/telemetry");
        probe.subscribe(&[topic.as_str()]).await;
        assert_eq!(probe.publish(&topic, "1").await, ReasonCode::Success);
        assert_eq!(probe.next_message().await, (topic, "1".into()));
    }
    // Closing one lets one in: a WebSocket one.
    let mut first = probes.remove(0);
    first.send(Packet::Disconnect(Disconnect::new(ReasonCode::Success))).await;
    assert_eq!(first.closed().await, None);
    let token = tokens[3].clone();
    let mut ws_probe = eventually(|| {
        let server = &server;
        let token = token.clone();
        async move {
            let (ws, _) = websocket(server, "mqtt").await.ok()?;
            let local = ws.get_ref().local_addr().expect("local address");
            let (probe, code) =
                Probe::connect_over(Transport::WebSocket(Box::new(ws)), local, V5, "dev-4", &token)
                    .await;
            assert_eq!(code, ReasonCode::Success);
            Some(probe)
        }
    })
    .await;
    assert_eq!(ws_probe.subscribe(&["devices/dev-4/#"]).await, vec![ReasonCode::Success]);
    // Two over TCP and one over WebSocket: the budget is spent for TCP too.
    assert!(tcp_accepted(addr, &tokens[0]).await.is_none(), "the budget is shared");
    // Closing the WebSocket one lets a TCP one in.
    ws_probe.send(Packet::Disconnect(Disconnect::new(ReasonCode::Success))).await;
    assert_eq!(ws_probe.closed().await, None);
    let token = tokens[0].clone();
    eventually(|| tcp_accepted(addr, &token)).await;
}

#[test]
fn herd_config_hash_secret_prints_the_sha256_of_standard_input() {
    let run = |input: &str| {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_herd"))
            .args(["config", "hash-secret"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run herd");
        child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write the secret");
        child.wait_with_output().expect("herd finished")
    };
    // The newline of `echo` is not part of the secret, as in a secret_file.
    let out = run(&format!("{APP_SECRET}\n"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let expected = hex::encode(domain::TokenHash::of_secret(APP_SECRET).as_bytes());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), expected);
    let out = run("short\n");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("at least 16 characters"), "{err}");
}
