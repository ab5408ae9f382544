//! The MQTT device gateway end to end: devices created and given credentials through the REST API,
//! then connecting to the real server on port 0 with real clients (`mosquitto_pub`, `mosquitto_sub`,
//! `mosquitto_rr`) and with `Probe`, a small client on `mqtt-codec` for exact reason codes and for
//! "nothing else arrived" checks (a marker published after the forbidden message must be the first
//! thing received). Tests that need the Mosquitto clients print a skip line when they are absent.

use std::net::SocketAddr;
use std::process::{Output, Stdio};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt as _, StreamExt as _};
use mqtt_codec::{
    ClientId, Connect, Delivery, Disconnect, MAX_PACKET_SIZE, MqttString, Packet, PacketId,
    Properties, ProtocolVersion, Publish, ReasonCode, Subscribe, Subscription, SubscriptionOptions,
    TopicFilter, TopicName,
};
use serde_json::json;
use test_support::{TestCerts, TestServer};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use ProtocolVersion::{V5, V311};

mod access;
mod agent_reports;
mod commands;
mod jobs;
mod mtls;
pub(crate) mod profiles;
mod provision;
mod replacement;
mod twin;

/// How long a test waits for something that should happen.
const WAIT: Duration = Duration::from_secs(20);

/// Whether the Mosquitto command-line clients are installed; prints why a test is skipped if not.
#[expect(clippy::print_stderr, reason = "a skipped test says why, where cargo test shows it")]
pub(crate) fn mosquitto_clients() -> bool {
    let found = ["mosquitto_pub", "mosquitto_sub", "mosquitto_rr", "stdbuf"].iter().all(|c| {
        std::process::Command::new(c)
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    });
    if !found {
        eprintln!(
            "skipping the Mosquitto client checks: mosquitto_pub, mosquitto_sub, mosquitto_rr or \
             stdbuf is not installed"
        );
    }
    found
}

/// Creates device `id` (registered) and issues a credential; returns its secret.
pub(crate) async fn registered_device(server: &TestServer, id: &str) -> String {
    let (status, body) = server.post("/api/v1/devices", &json!({ "id": id })).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) =
        server.post(&format!("/api/v1/devices/{id}/credentials"), &json!({})).await;
    assert_eq!(status, 201, "{body}");
    body["token"].as_str().expect("token in the response").to_owned()
}

/// Creates device `id`, activates it and issues a credential; returns its secret.
pub(crate) async fn active_device(server: &TestServer, id: &str) -> String {
    let token = registered_device(server, id).await;
    set_state(server, id, "active").await;
    token
}

async fn set_state(server: &TestServer, id: &str, state: &str) {
    let (status, body) =
        server.patch(&format!("/api/v1/devices/{id}"), &json!({ "state": state })).await;
    assert_eq!(status, 200, "{body}");
}

fn version_flag(version: ProtocolVersion) -> &'static str {
    match version {
        V5 => "mqttv5",
        V311 => "mqttv311",
    }
}

/// Common arguments of the Mosquitto clients: server, protocol, device id as client id and user name.
fn client_args(
    addr: SocketAddr,
    version: ProtocolVersion,
    id: &str,
    password: &str,
) -> Vec<String> {
    [
        "-h",
        "127.0.0.1",
        "-p",
        &addr.port().to_string(),
        "-V",
        version_flag(version),
        "-i",
        id,
        "-u",
        id,
        "-P",
        password,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// Runs a Mosquitto client to completion (within `WAIT`).
async fn run(program: &str, args: &[String]) -> Output {
    let child = Command::new(program).args(args).stdin(Stdio::null()).kill_on_drop(true).output();
    tokio::time::timeout(WAIT, child).await.expect("client finished in time").expect("client ran")
}

/// `mosquitto_pub` of one QoS 1 message; returns once the client has exited.
async fn mosquitto_pub(
    server: &TestServer,
    version: ProtocolVersion,
    id: &str,
    password: &str,
    topic: &str,
    message: &str,
) -> Output {
    let mut args = client_args(server.mqtt_addr, version, id, password);
    args.extend(["-q", "1", "-t", topic, "-m", message].map(str::to_owned));
    run("mosquitto_pub", &args).await
}

/// A running `mosquitto_sub` in debug mode (`-d -v`), read line by line.
struct MosquittoSub {
    child: Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    seen: Vec<String>,
}

impl MosquittoSub {
    async fn start(
        server: &TestServer,
        version: ProtocolVersion,
        id: &str,
        password: &str,
        filters: &[&str],
    ) -> Self {
        let mut args = client_args(server.mqtt_addr, version, id, password);
        args.extend(["-d", "-v", "-q", "0"].map(str::to_owned));
        for f in filters {
            args.extend(["-t".to_owned(), (*f).to_owned()]);
        }
        // Debug lines are printed without flushing: `stdbuf` makes stdout line-buffered, so the
        // SUBACK line arrives when it happens.
        let mut child = Command::new("stdbuf")
            .arg("-oL")
            .arg("mosquitto_sub")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start mosquitto_sub");
        let stdout = child.stdout.take().expect("piped stdout");
        Self { child, lines: BufReader::new(stdout).lines(), seen: Vec::new() }
    }

    /// Reads output until a line contains `needle`.
    async fn wait_for(&mut self, needle: &str) {
        let found = tokio::time::timeout(WAIT, async {
            while let Ok(Some(line)) = self.lines.next_line().await {
                let hit = line.contains(needle);
                self.seen.push(line);
                if hit {
                    return true;
                }
            }
            false
        })
        .await;
        assert!(
            matches!(found, Ok(true)),
            "mosquitto_sub never printed {needle:?}; it printed:\n{}",
            self.seen.join("\n")
        );
    }

    /// Waits for the client to exit; returns its standard error.
    async fn exited(mut self) -> String {
        let status =
            tokio::time::timeout(WAIT, self.child.wait()).await.expect("mosquitto_sub exited");
        status.expect("mosquitto_sub status");
        let mut err = String::new();
        if let Some(mut stderr) = self.child.stderr.take() {
            let _ = stderr.read_to_string(&mut err).await;
        }
        err
    }
}

/// A byte stream to the server: TCP or TLS.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// How a [`Probe`] reaches the server.
enum Transport {
    /// A byte stream (TCP or TLS).
    Stream(Box<dyn Io>),
    /// A WebSocket (`/mqtt`): each packet is sent split over two binary messages, so the server
    /// must reassemble packets across messages.
    WebSocket(Box<WebSocketStream<TcpStream>>),
}

/// A minimal MQTT client on `mqtt-codec`: exact reason codes, and publish and subscribe on one
/// connection (a device has one connection: its client id is its device id).
struct Probe {
    io: Transport,
    /// The client's address as the server sees it.
    local_addr: SocketAddr,
    buf: BytesMut,
    version: ProtocolVersion,
    next_id: u16,
    /// Messages received while waiting for an acknowledgement.
    pending: std::collections::VecDeque<Publish>,
}

impl Probe {
    /// Connects as `id` with `password` (and the id as user name); returns the CONNACK reason.
    async fn connect(
        addr: SocketAddr,
        version: ProtocolVersion,
        id: &str,
        password: &str,
    ) -> (Self, ReasonCode) {
        let io = TcpStream::connect(addr).await.expect("connect to the MQTT listener");
        let local_addr = io.local_addr().expect("local address");
        Self::connect_over(Transport::Stream(Box::new(io)), local_addr, version, id, password).await
    }

    /// Sends CONNECT over `io` as `id` with `password`; returns the CONNACK reason.
    async fn connect_over(
        io: Transport,
        local_addr: SocketAddr,
        version: ProtocolVersion,
        id: &str,
        password: &str,
    ) -> (Self, ReasonCode) {
        let mut probe = Self {
            io,
            local_addr,
            buf: BytesMut::new(),
            version,
            next_id: 0,
            pending: Default::default(),
        };
        let mut connect = Connect::new(version, ClientId::new(id).expect("client id"), 0);
        connect.username = Some(MqttString::new(id).expect("user name"));
        connect.password = Some(Bytes::from(password.to_owned()));
        probe.send(Packet::Connect(Box::new(connect))).await;
        match probe.recv().await {
            Some(Packet::ConnAck(ack)) => {
                let code = ack.reason_code;
                (probe, code)
            }
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Connects and checks that the server accepted.
    async fn connected(addr: SocketAddr, version: ProtocolVersion, id: &str, pw: &str) -> Self {
        let (probe, code) = Self::connect(addr, version, id, pw).await;
        assert_eq!(code, ReasonCode::Success, "{id} should connect");
        probe
    }

    async fn send(&mut self, packet: Packet) {
        self.send_together(&[packet]).await;
    }

    /// Sends `packets` in one write (over WebSocket: in one binary message, split in two).
    async fn send_together(&mut self, packets: &[Packet]) {
        let mut out = BytesMut::new();
        for packet in packets {
            mqtt_codec::encode(packet, self.version, &mut out).expect("encodable packet");
        }
        match &mut self.io {
            Transport::Stream(io) => io.write_all(&out).await.expect("write to the server"),
            Transport::WebSocket(ws) if packets.len() == 1 => {
                // One packet over two messages [MQTT-6.0.0-2].
                let rest = out.split_off(out.len() / 2);
                for part in [out, rest] {
                    ws.send(WsMessage::Binary(part.freeze())).await.expect("send to the server");
                }
            }
            Transport::WebSocket(ws) => {
                // Several packets in one message.
                ws.send(WsMessage::Binary(out.freeze())).await.expect("send to the server");
            }
        }
    }

    /// Reads more bytes from the server into `buf`; 0 when the server closed the connection.
    async fn read_more(&mut self) -> usize {
        match &mut self.io {
            Transport::Stream(io) => io.read_buf(&mut self.buf).await.unwrap_or(0),
            Transport::WebSocket(ws) => loop {
                match ws.next().await {
                    Some(Ok(WsMessage::Binary(data))) => {
                        self.buf.extend_from_slice(&data);
                        break data.len();
                    }
                    Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => {}
                    Some(Ok(WsMessage::Text(t))) => panic!("the server sent a text message: {t}"),
                    Some(Ok(WsMessage::Close(_) | WsMessage::Frame(_)) | Err(_)) | None => {
                        break 0;
                    }
                }
            },
        }
    }

    /// The next packet, `None` when the server closed the connection.
    async fn recv(&mut self) -> Option<Packet> {
        loop {
            let decoded = mqtt_codec::decode_buf(&mut self.buf, self.version, MAX_PACKET_SIZE);
            if let Some(packet) = decoded.expect("valid packet from the server") {
                return Some(packet);
            }
            let read = tokio::time::timeout(WAIT, self.read_more())
                .await
                .expect("timed out waiting for a packet from the server");
            if read == 0 {
                return None;
            }
        }
    }

    fn packet_id(&mut self) -> PacketId {
        self.next_id += 1;
        PacketId::new(self.next_id).expect("non-zero packet id")
    }

    /// Subscribes to `filters` at QoS 0; returns the SUBACK reason codes.
    async fn subscribe(&mut self, filters: &[&str]) -> Vec<ReasonCode> {
        let packet_id = self.packet_id();
        let subscriptions = filters
            .iter()
            .map(|f| Subscription {
                filter: TopicFilter::new(*f).expect("valid filter"),
                options: SubscriptionOptions::default(),
            })
            .collect();
        self.send(Packet::Subscribe(Subscribe {
            packet_id,
            properties: Properties::default(),
            subscriptions,
        }))
        .await;
        match self.recv().await {
            Some(Packet::SubAck(ack)) => ack.reason_codes,
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// Publishes at QoS 1; returns the PUBACK reason code.
    async fn publish(&mut self, topic: &str, payload: &str) -> ReasonCode {
        let packet_id = self.packet_id();
        let mut publish = Publish::new(
            TopicName::new(topic).expect("valid topic"),
            Bytes::from(payload.to_owned()),
        );
        publish.delivery = Delivery::AtLeastOnce { packet_id, dup: false };
        self.send(Packet::Publish(publish)).await;
        loop {
            match self.recv().await {
                Some(Packet::PubAck(ack)) if ack.packet_id == packet_id => return ack.reason_code,
                // QoS 0 deliveries to our own subscriptions may come first; tests read them later.
                Some(Packet::Publish(p)) => self.pending.push_back(p),
                other => panic!("expected PUBACK, got {other:?}"),
            }
        }
    }

    /// The next message delivered to this client, as (topic, payload).
    async fn next_message(&mut self) -> (String, String) {
        let publish = match self.pending.pop_front() {
            Some(p) => p,
            None => match self.recv().await {
                Some(Packet::Publish(p)) => p,
                other => panic!("expected PUBLISH, got {other:?}"),
            },
        };
        let topic = publish.topic.map(|t| t.as_str().to_owned()).unwrap_or_default();
        (topic, String::from_utf8_lossy(&publish.payload).into_owned())
    }

    /// Waits for the server to close the connection; returns the reason of its DISCONNECT, if any.
    async fn closed(&mut self) -> Option<ReasonCode> {
        let mut reason = None;
        while let Some(packet) = self.recv().await {
            match packet {
                Packet::Disconnect(d) => reason = Some(d.reason_code),
                Packet::Publish(_) => {}
                other => panic!("expected the connection to close, got {other:?}"),
            }
        }
        reason
    }
}

/// A "not authorized" SUBACK / PUBACK code as each version shows it.
fn refused(version: ProtocolVersion) -> ReasonCode {
    match version {
        V5 => ReasonCode::NotAuthorized,
        // v3.1.1 SUBACK 0x80 Failure, decoded as 0x80 Unspecified error.
        V311 => ReasonCode::UnspecifiedError,
    }
}

/// The PUBACK of a message no subscription matched.
fn no_match(version: ProtocolVersion) -> ReasonCode {
    match version {
        V5 => ReasonCode::NoMatchingSubscribers,
        V311 => ReasonCode::Success,
    }
}

#[tokio::test]
async fn a_device_receives_its_own_telemetry() {
    let server = TestServer::start().await;
    let token = active_device(&server, "dev-1").await;
    // v3.1.1 and v5, publish and subscribe on one connection.
    for version in [V311, V5] {
        let mut probe = Probe::connected(server.mqtt_addr, version, "dev-1", &token).await;
        assert_eq!(probe.subscribe(&["devices/dev-1/#"]).await, vec![ReasonCode::Success]);
        let ack = probe.publish("devices/dev-1/telemetry", "21.5").await;
        assert!(matches!(ack, ReasonCode::Success), "{ack:?}");
        assert_eq!(probe.next_message().await, ("devices/dev-1/telemetry".into(), "21.5".into()));
    }
    if !mosquitto_clients() {
        return;
    }
    // mosquitto_rr (MQTT 5) subscribes to its response topic, then publishes its request there.
    let mut args = client_args(server.mqtt_addr, V5, "dev-1", &token);
    args.extend(
        [
            "-t",
            "devices/dev-1/telemetry",
            "-e",
            "devices/dev-1/telemetry",
            "-m",
            "22.0",
            "-W",
            "10",
        ]
        .map(str::to_owned),
    );
    let out = run("mosquitto_rr", &args).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "22.0");
    // mosquitto_pub publishes as the device.
    let out = mosquitto_pub(&server, V311, "dev-1", &token, "devices/dev-1/telemetry", "1").await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn wrong_or_missing_credentials_are_refused() {
    let server = TestServer::start().await;
    let token = active_device(&server, "dev-1").await;
    let other = active_device(&server, "dev-2").await;
    let addr = server.mqtt_addr;
    for version in [V311, V5] {
        // v5 0x86 Bad User Name or Password; on v3.1.1 return code 4, decoded as 0x86.
        let (_, code) = Probe::connect(addr, version, "dev-1", "hdc_wrong").await;
        assert_eq!(code, ReasonCode::BadUserNameOrPassword);
        // Another device's credential.
        let (_, code) = Probe::connect(addr, version, "dev-1", &other).await;
        assert_eq!(code, ReasonCode::BadUserNameOrPassword);
        // Not a device id: 0x85 Client Identifier not valid (v3.1.1 return code 2).
        let (_, code) = Probe::connect(addr, version, "no/such id", &token).await;
        assert_eq!(code, ReasonCode::ClientIdentifierNotValid);
    }
    if !mosquitto_clients() {
        return;
    }
    for version in [V311, V5] {
        let out = mosquitto_pub(&server, version, "dev-1", "wrong", "devices/dev-1/t", "x").await;
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(err.contains("bad user") || err.contains("username"), "{err}");
    }
}

#[tokio::test]
async fn devices_that_are_not_active_are_refused() {
    let server = TestServer::start().await;
    let token = registered_device(&server, "dev-1").await;
    for version in [V311, V5] {
        let (_, code) = Probe::connect(server.mqtt_addr, version, "dev-1", &token).await;
        // 0x87 Not authorized (v3.1.1 return code 5) for a device never activated.
        assert_eq!(code, ReasonCode::NotAuthorized);
    }
    set_state(&server, "dev-1", "active").await;
    set_state(&server, "dev-1", "suspended").await;
    let (_, code) = Probe::connect(server.mqtt_addr, V5, "dev-1", &token).await;
    // 0x8A Banned: taken out of service by an operator.
    assert_eq!(code, ReasonCode::Banned);
    let (_, code) = Probe::connect(server.mqtt_addr, V311, "dev-1", &token).await;
    assert_eq!(code, ReasonCode::NotAuthorized, "v3.1.1 return code 5");
    if !mosquitto_clients() {
        return;
    }
    let out = mosquitto_pub(&server, V311, "dev-1", &token, "devices/dev-1/t", "x").await;
    assert!(!out.status.success());
}

#[tokio::test]
async fn wildcards_never_reach_other_devices() {
    let server = TestServer::start().await;
    let a = active_device(&server, "dev-a").await;
    let b = active_device(&server, "dev-b").await;
    let forbidden = [
        "#",
        "+/dev-a/#",
        "devices/#",
        "devices/+/telemetry",
        "devices/dev-a/#",
        "$share/g/devices/dev-a/#",
        "$share/g/#",
    ];
    for version in [V311, V5] {
        let mut spy = Probe::connected(server.mqtt_addr, version, "dev-b", &b).await;
        let mut filters = forbidden.to_vec();
        filters.push("devices/dev-b/#");
        let codes = spy.subscribe(&filters).await;
        let mut expected = vec![refused(version); forbidden.len()];
        expected.push(ReasonCode::Success);
        assert_eq!(codes, expected);

        let mut victim = Probe::connected(server.mqtt_addr, version, "dev-a", &a).await;
        // v5 says no subscription matched at all (PUBACK 0x10): none of the spy's filters is live.
        assert_eq!(victim.publish("devices/dev-a/telemetry", "secret").await, no_match(version));
        // The broker routes in order: the spy's own marker arrives after anything routed before it.
        spy.publish("devices/dev-b/marker", "marker").await;
        assert_eq!(spy.next_message().await, ("devices/dev-b/marker".into(), "marker".into()));
    }
    if !mosquitto_clients() {
        return;
    }
    // mosquitto_sub is told its only subscription was refused and gives up.
    let sub = MosquittoSub::start(&server, V5, "dev-b", &b, &["#"]).await;
    let err = sub.exited().await;
    assert!(err.to_lowercase().contains("denied"), "{err}");
}

#[tokio::test]
async fn publishing_to_another_devices_topic_is_not_delivered() {
    let server = TestServer::start().await;
    let a = active_device(&server, "dev-a").await;
    let b = active_device(&server, "dev-b").await;
    for version in [V311, V5] {
        let mut victim = Probe::connected(server.mqtt_addr, version, "dev-a", &a).await;
        assert_eq!(victim.subscribe(&["devices/dev-a/#"]).await, vec![ReasonCode::Success]);
        // The will topic is checked too: 0x87 Not authorized (v3.1.1 return code 5).
        let mut attacker = Probe::connected(server.mqtt_addr, version, "dev-b", &b).await;
        let code = attacker.publish("devices/dev-a/commands", "reboot").await;
        // v5 PUBACK 0x87; v3.1.1 cannot refuse a PUBLISH: it is acknowledged and dropped.
        assert_eq!(
            code,
            if version == V5 { ReasonCode::NotAuthorized } else { ReasonCode::Success }
        );
        for topic in ["devices/dev-a", "devices", "other/topic"] {
            attacker.publish(topic, "x").await;
        }
        victim.publish("devices/dev-a/marker", "marker").await;
        assert_eq!(victim.next_message().await, ("devices/dev-a/marker".into(), "marker".into()));
    }
    if !mosquitto_clients() {
        return;
    }
    let mut victim = Probe::connected(server.mqtt_addr, V5, "dev-a", &a).await;
    victim.subscribe(&["devices/dev-a/#"]).await;
    for version in [V311, V5] {
        // mosquitto_pub waits for the PUBACK before it exits, so the broker has routed (or refused) it.
        let _ = mosquitto_pub(&server, version, "dev-b", &b, "devices/dev-a/commands", "x").await;
    }
    victim.publish("devices/dev-a/marker", "marker").await;
    assert_eq!(victim.next_message().await, ("devices/dev-a/marker".into(), "marker".into()));
}

#[tokio::test]
async fn suspending_a_device_disconnects_it() {
    let server = TestServer::start().await;
    let token = active_device(&server, "dev-1").await;
    // A v5 connection gets DISCONNECT 0x98 Administrative action.
    let mut probe = Probe::connected(server.mqtt_addr, V5, "dev-1", &token).await;
    probe.subscribe(&["devices/dev-1/#"]).await;
    set_state(&server, "dev-1", "suspended").await;
    assert_eq!(probe.closed().await, Some(ReasonCode::AdministrativeAction));
    // And it cannot come back.
    let (_, code) = Probe::connect(server.mqtt_addr, V5, "dev-1", &token).await;
    assert_eq!(code, ReasonCode::Banned);

    if !mosquitto_clients() {
        return;
    }
    set_state(&server, "dev-1", "active").await;
    for version in [V311, V5] {
        let mut sub =
            MosquittoSub::start(&server, version, "dev-1", &token, &["devices/dev-1/#"]).await;
        sub.wait_for("received SUBACK").await;
        set_state(&server, "dev-1", "suspended").await;
        // The connection closes; mosquitto_sub may try once more, is refused, and exits.
        let _ = sub.exited().await;
        set_state(&server, "dev-1", "active").await;
    }
}

#[tokio::test]
async fn revoked_credentials_are_refused_and_disconnected() {
    let server = TestServer::start().await;
    let token = active_device(&server, "dev-1").await;
    let (_, body) = server.get("/api/v1/devices/dev-1/credentials").await;
    let credential = body["items"][0]["id"].as_str().expect("credential id").to_owned();
    let mut live = Probe::connected(server.mqtt_addr, V311, "dev-1", &token).await;
    let (status, body) =
        server.delete(&format!("/api/v1/devices/dev-1/credentials/{credential}")).await;
    assert_eq!(status, 200, "{body}");
    // v3.1.1 has no server DISCONNECT: the socket just closes.
    assert_eq!(live.closed().await, None);
    for version in [V311, V5] {
        let (_, code) = Probe::connect(server.mqtt_addr, version, "dev-1", &token).await;
        assert_eq!(code, ReasonCode::BadUserNameOrPassword);
    }
}

#[tokio::test]
async fn shutdown_disconnects_devices_with_server_shutting_down() {
    let server = TestServer::start().await;
    let token = active_device(&server, "dev-1").await;
    let mut probe = Probe::connected(server.mqtt_addr, V5, "dev-1", &token).await;
    let addr = server.mqtt_addr;
    server.stop().await;
    assert_eq!(probe.closed().await, Some(ReasonCode::ServerShuttingDown));
    assert!(TcpStream::connect(addr).await.is_err(), "the MQTT listener is closed");
}

/// Polls `GET /api/v1/devices/{id}` until its `connectivity` satisfies `done`; returns it.
async fn connectivity_when(
    server: &TestServer,
    id: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    server.device_until(id, |d| done(&d["connectivity"])).await["connectivity"].clone()
}

#[tokio::test]
async fn presence_follows_connects_and_disconnects() {
    let server = TestServer::start().await;
    let token = active_device(&server, "dev-1").await;
    active_device(&server, "dev-2").await;
    let never = connectivity_when(&server, "dev-1", |_| true).await;
    assert_eq!(
        never,
        json!({
            "connected": false, "connected_at": null, "disconnected_at": null,
            "remote_addr": null, "protocol": null, "last_disconnect_reason": null,
        })
    );
    let (_, summary) = server.get("/api/v1/inventory/connectivity").await;
    assert_eq!(summary, json!({"connected": 0, "ever_connected": 0, "total": 2}));

    let mut probe = Probe::connected(server.mqtt_addr, V5, "dev-1", &token).await;
    let local = probe.local_addr.to_string();
    let live = connectivity_when(&server, "dev-1", |c| c["connected"] == true).await;
    assert_eq!(live["protocol"], "5");
    assert_eq!(live["remote_addr"], local.as_str());
    assert!(live["connected_at"].is_string(), "{live}");
    let (_, summary) = server.get("/api/v1/inventory/connectivity").await;
    assert_eq!(summary, json!({"connected": 1, "ever_connected": 1, "total": 2}));

    probe.send(Packet::Disconnect(Disconnect::new(ReasonCode::Success))).await;
    assert_eq!(probe.closed().await, None);
    let ended = connectivity_when(&server, "dev-1", |c| c["connected"] == false).await;
    assert_eq!(ended["last_disconnect_reason"], "clean");
    assert!(ended["disconnected_at"].is_string(), "{ended}");
    assert_eq!(ended["protocol"], "5");
    let (_, summary) = server.get("/api/v1/inventory/connectivity").await;
    assert_eq!(summary, json!({"connected": 0, "ever_connected": 1, "total": 2}));

    // Suspending a connected device records its end as a revocation.
    let mut probe = Probe::connected(server.mqtt_addr, V311, "dev-1", &token).await;
    connectivity_when(&server, "dev-1", |c| c["connected"] == true && c["protocol"] == "3.1.1")
        .await;
    set_state(&server, "dev-1", "suspended").await;
    assert_eq!(probe.closed().await, None);
    let revoked = connectivity_when(&server, "dev-1", |c| c["connected"] == false).await;
    assert_eq!(revoked["last_disconnect_reason"], "revoked");
}

/// A TLS connection to `addr` trusting only the test CA of `certs`, with `versions` of TLS.
async fn tls_connect(
    certs: &TestCerts,
    addr: SocketAddr,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certs.ca()).expect("CA certificate");
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = TcpStream::connect(addr).await.expect("connect to the TLS listener");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("server name");
    tokio::time::timeout(WAIT, connector.connect(name, tcp))
        .await
        .expect("TLS handshake in time")
        .expect("TLS handshake")
}

/// A [`Probe`] connected over TLS.
async fn tls_probe(
    certs: &TestCerts,
    addr: SocketAddr,
    versions: &[&'static rustls::SupportedProtocolVersion],
    version: ProtocolVersion,
    id: &str,
    password: &str,
) -> Probe {
    let tls = tls_connect(certs, addr, versions).await;
    let local_addr = tls.get_ref().0.local_addr().expect("local address");
    let (probe, code) =
        Probe::connect_over(Transport::Stream(Box::new(tls)), local_addr, version, id, password)
            .await;
    assert_eq!(code, ReasonCode::Success, "{id} should connect over TLS");
    probe
}

#[tokio::test]
async fn devices_connect_over_tls() {
    let certs = TestCerts::new();
    let tls = certs.config();
    let server = TestServer::start_with(|c| c.mqtt.tls = Some(tls)).await;
    let mqtts = server.mqtts_addr.expect("TLS listener");
    let token = active_device(&server, "dev-1").await;
    // A client that never starts its handshake does not hold up the others.
    let silent = TcpStream::connect(mqtts).await.expect("connect");
    for (versions, version) in
        [(&[&rustls::version::TLS13][..], V5), (&[&rustls::version::TLS12][..], V311)]
    {
        let mut probe = tls_probe(&certs, mqtts, versions, version, "dev-1", &token).await;
        assert_eq!(probe.subscribe(&["devices/dev-1/#"]).await, vec![ReasonCode::Success]);
        probe.publish("devices/dev-1/telemetry", "21.5").await;
        assert_eq!(probe.next_message().await, ("devices/dev-1/telemetry".into(), "21.5".into()));
    }
    drop(silent);

    // An MQTT client speaking plain TCP to the TLS port gets no CONNACK: the socket closes.
    let mut plain = TcpStream::connect(mqtts).await.expect("connect");
    let mut connect = Connect::new(V311, ClientId::new("dev-1").expect("client id"), 0);
    connect.username = Some(MqttString::new("dev-1").expect("user name"));
    connect.password = Some(Bytes::from(token.clone()));
    let mut out = BytesMut::new();
    mqtt_codec::encode(&Packet::Connect(Box::new(connect)), V311, &mut out).expect("encode");
    plain.write_all(&out).await.expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, plain.read_to_end(&mut answer))
        .await
        .expect("the server closes the connection");
    assert_ne!(answer.first(), Some(&0x20), "no CONNACK over plain TCP: {answer:?}");

    // The TLS listener still serves; and the presence shows the TLS connection.
    let mut probe = tls_probe(&certs, mqtts, &[&rustls::version::TLS13], V5, "dev-1", &token).await;
    let local = probe.local_addr.to_string();
    connectivity_when(&server, "dev-1", |c| {
        c["connected"] == true && c["remote_addr"] == local.as_str()
    })
    .await;
    probe.subscribe(&["devices/dev-1/#"]).await;
}

/// Arguments of a Mosquitto client reaching the TLS listener as `localhost` (the certificate's
/// name), trusting the test CA when `cafile`.
fn tls_client_args(certs: &TestCerts, mqtts: SocketAddr, cafile: bool, token: &str) -> Vec<String> {
    let mut args: Vec<String> = ["-h", "localhost", "-p", &mqtts.port().to_string()]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    if cafile {
        args.extend(["--cafile".to_owned(), certs.path("ca.pem").display().to_string()]);
    }
    args.extend(["-V", "mqttv5", "-i", "dev-1", "-u", "dev-1", "-P", token].map(str::to_owned));
    args
}

#[tokio::test]
async fn mosquitto_clients_connect_over_tls() {
    if !mosquitto_clients() {
        return;
    }
    let certs = TestCerts::new();
    let tls = certs.config();
    let server = TestServer::start_with(|c| c.mqtt.tls = Some(tls)).await;
    let mqtts = server.mqtts_addr.expect("TLS listener");
    let token = active_device(&server, "dev-1").await;
    // mosquitto_rr verifies the certificate against the CA, subscribes to its response topic and
    // publishes there: the message arrives over TLS.
    let mut args = tls_client_args(&certs, mqtts, true, &token);
    args.extend(
        [
            "-t",
            "devices/dev-1/telemetry",
            "-e",
            "devices/dev-1/telemetry",
            "-m",
            "tls-22",
            "-W",
            "10",
        ]
        .map(str::to_owned),
    );
    let out = run("mosquitto_rr", &args).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "tls-22");
    // mosquitto_pub at QoS 1 exits successfully only once its PUBACK came back.
    let mut args = tls_client_args(&certs, mqtts, true, &token);
    args.extend(["-q", "1", "-t", "devices/dev-1/telemetry", "-m", "1"].map(str::to_owned));
    let out = run("mosquitto_pub", &args).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Without --cafile it speaks plain MQTT to the TLS port, and fails.
    let mut args = tls_client_args(&certs, mqtts, false, &token);
    args.extend(["-q", "1", "-t", "devices/dev-1/telemetry", "-m", "1"].map(str::to_owned));
    let out = run("mosquitto_pub", &args).await;
    assert!(!out.status.success(), "plain MQTT to the TLS port must fail");
}

/// Opens a WebSocket to `/mqtt` offering `protocol`.
async fn websocket(
    server: &TestServer,
    protocol: &str,
) -> Result<
    (WebSocketStream<TcpStream>, tokio_tungstenite::tungstenite::handshake::client::Response),
    tokio_tungstenite::tungstenite::Error,
> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let mut request = format!("ws://{}/mqtt", server.addr).into_client_request().expect("request");
    request.headers_mut().insert("sec-websocket-protocol", protocol.parse().expect("header value"));
    let tcp = TcpStream::connect(server.addr).await.expect("connect to HTTP");
    tokio_tungstenite::client_async(request, tcp).await
}

#[tokio::test]
async fn devices_connect_over_websocket() {
    let server = TestServer::start().await;
    let token = active_device(&server, "dev-1").await;
    for version in [V311, V5] {
        let (ws, response) = websocket(&server, "mqtt").await.expect("WebSocket upgrade");
        assert_eq!(response.headers()["sec-websocket-protocol"], "mqtt");
        let local = ws.get_ref().local_addr().expect("local address");
        let (mut probe, code) = Probe::connect_over(
            Transport::WebSocket(Box::new(ws)),
            local,
            version,
            "dev-1",
            &token,
        )
        .await;
        assert_eq!(code, ReasonCode::Success);
        assert_eq!(probe.subscribe(&["devices/dev-1/#"]).await, vec![ReasonCode::Success]);
        assert_eq!(probe.publish("devices/dev-1/telemetry", "21.5").await, ReasonCode::Success);
        assert_eq!(probe.next_message().await, ("devices/dev-1/telemetry".into(), "21.5".into()));
        // Two packets in one WebSocket message.
        let packets = ["a", "b"].map(|m| {
            Packet::Publish(Publish::new(
                TopicName::new("devices/dev-1/x").expect("topic"),
                Bytes::from(m.to_owned()),
            ))
        });
        probe.send_together(&packets).await;
        assert_eq!(probe.next_message().await, ("devices/dev-1/x".into(), "a".into()));
        assert_eq!(probe.next_message().await, ("devices/dev-1/x".into(), "b".into()));
        let remote = local.to_string();
        connectivity_when(&server, "dev-1", |c| {
            c["connected"] == true && c["remote_addr"] == remote.as_str()
        })
        .await;
        probe.send(Packet::Disconnect(Disconnect::new(ReasonCode::Success))).await;
        assert_eq!(probe.closed().await, None);
    }
    // Wrong credentials are refused over WebSocket too.
    let (ws, _) = websocket(&server, "mqtt").await.expect("WebSocket upgrade");
    let local = ws.get_ref().local_addr().expect("local address");
    let (_, code) =
        Probe::connect_over(Transport::WebSocket(Box::new(ws)), local, V5, "dev-1", "hdc_wrong")
            .await;
    assert_eq!(code, ReasonCode::BadUserNameOrPassword);
}

#[tokio::test]
async fn websocket_needs_the_mqtt_subprotocol() {
    let server = TestServer::start().await;
    match websocket(&server, "chat").await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 400);
            assert_eq!(response.headers()["content-type"], "application/problem+json");
            let body: serde_json::Value =
                serde_json::from_slice(response.body().as_deref().unwrap_or_default())
                    .expect("problem body");
            assert_eq!(body["code"], "unsupported_subprotocol", "{body}");
        }
        other => panic!("expected 400, got {other:?}"),
    }
    // A plain GET (no upgrade), without any token, is a bad request rather than 401.
    let response = reqwest::get(server.url("/mqtt")).await.expect("GET /mqtt");
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.expect("problem body");
    assert_eq!(body["code"], "websocket_upgrade_required", "{body}");
    assert!(body["request_id"].is_string(), "{body}");
}

#[tokio::test]
async fn shutdown_disconnects_websocket_devices() {
    let server = TestServer::start().await;
    let token = active_device(&server, "dev-1").await;
    let (ws, _) = websocket(&server, "mqtt").await.expect("WebSocket upgrade");
    let local = ws.get_ref().local_addr().expect("local address");
    let mut probe = {
        let (probe, code) =
            Probe::connect_over(Transport::WebSocket(Box::new(ws)), local, V5, "dev-1", &token)
                .await;
        assert_eq!(code, ReasonCode::Success);
        probe
    };
    server.stop().await;
    assert_eq!(probe.closed().await, Some(ReasonCode::ServerShuttingDown));
}
