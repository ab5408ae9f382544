//! The device's transports against the real server: TLS (verified against the test CA), WebSocket
//! on the HTTP listener, and WebSocket over TLS through a TLS-terminating proxy; TLS failures that
//! are retried and TLS files that are configuration errors; and MQTT packets split across or
//! combined in WebSocket messages, from a fake server.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use device_agent::{ConfigError, Device, DeviceConfig, Protocol, TlsOptions, Transport};
use futures_util::{SinkExt as _, StreamExt as _};
use mqtt_codec::{ConnAck, Delivery, Packet, ProtocolVersion, PubAck, ReasonCode};
use serde_json::json;
use server::gateway::TopicRules;
use test_support::{TestCerts, TestServer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};

use crate::watcher::Watcher;
use crate::{Proxy, WAIT, active_device, config, reading, server, stop, until};

/// A server whose anonymous clients may watch telemetry, with MQTT over TLS on `certs`.
async fn tls_server(certs: &TestCerts) -> TestServer {
    let rules =
        TopicRules::new(&[] as &[&str], &["devices/+/telemetry"], &[]).expect("valid rules");
    let tls = certs.config();
    TestServer::start_with(|c| {
        c.mqtt.anonymous = Some(Arc::new(rules));
        c.mqtt.tls = Some(tls);
    })
    .await
}

fn tls(ca_file: PathBuf) -> TlsOptions {
    TlsOptions { ca_file: Some(ca_file), ..TlsOptions::default() }
}

fn websocket(tls: Option<TlsOptions>) -> Transport {
    Transport::WebSocket { path: "/mqtt".to_owned(), tls }
}

/// Device `dev-1` on `server` publishes three readings through `port` with `transport`; the watcher
/// receives them. Returns after a clean stop.
async fn check_telemetry(server: &TestServer, port: u16, protocol: Protocol, transport: Transport) {
    let token = active_device(server, "dev-1").await;
    let mut watcher = Watcher::connect(server.mqtt_addr, "devices/+/telemetry").await;
    let mut config = config(port, "dev-1", &token, protocol);
    config.transport = transport;
    let (device, task) = Device::spawn(config).expect("valid config");
    for n in 0..3 {
        device.telemetry(&reading(n)).await.expect("device task running");
    }
    for n in 0..3 {
        assert_eq!(watcher.next().await, ("devices/dev-1/telemetry".to_owned(), json!({ "n": n })));
    }
    let stats = until(&device, |s| s.acked == 3).await;
    assert!(stats.connected);
    assert_eq!(stats.reconnects, 0);
    stop(&device, task).await;
}

#[tokio::test]
async fn telemetry_over_tls() {
    let certs = TestCerts::new();
    let server = tls_server(&certs).await;
    let mqtts = server.mqtts_addr.expect("TLS listener").port();
    // The host 127.0.0.1 is the server name: the certificate holds it as an IP address.
    check_telemetry(&server, mqtts, Protocol::V5, Transport::Tls(tls(certs.path("ca.pem")))).await;
}

#[tokio::test]
async fn telemetry_over_tls_with_a_server_name() {
    let certs = TestCerts::new();
    let server = tls_server(&certs).await;
    let mqtts = server.mqtts_addr.expect("TLS listener").port();
    let options =
        TlsOptions { server_name: Some("localhost".to_owned()), ..tls(certs.path("ca.pem")) };
    check_telemetry(&server, mqtts, Protocol::V311, Transport::Tls(options)).await;
}

#[tokio::test]
async fn telemetry_over_websocket() {
    let server = server().await;
    for protocol in [Protocol::V5, Protocol::V311] {
        let port = server.addr.port();
        check_telemetry(&server, port, protocol, websocket(None)).await;
        let (status, body) = server.delete("/api/v1/devices/dev-1").await;
        assert!(status < 300, "{status}: {body}");
    }
}

#[tokio::test]
async fn telemetry_over_websocket_over_tls() {
    let certs = TestCerts::new();
    let server = server().await;
    let acceptor = tokio_rustls::TlsAcceptor::from(
        server::gateway::tls_server_config(&certs.config()).expect("TLS server config"),
    );
    let proxy = Forwarder::start(server.addr.port(), Some(acceptor)).await;
    let transport = websocket(Some(tls(certs.path("ca.pem"))));
    check_telemetry(&server, proxy.port, Protocol::V5, transport).await;
}

#[tokio::test]
async fn reconnects_over_websocket() {
    let server = server().await;
    let token = active_device(&server, "dev-1").await;
    let mut watcher = Watcher::connect(server.mqtt_addr, "devices/+/telemetry").await;
    let proxy = Proxy::start(server.addr.port()).await;
    let mut config = config(proxy.port, "dev-1", &token, Protocol::V5);
    config.transport = websocket(None);
    let (device, task) = Device::spawn(config).expect("valid config");

    device.telemetry(&reading(0)).await.unwrap();
    assert_eq!(watcher.next().await.1, json!({ "n": 0 }));
    until(&device, |s| s.acked == 1).await;

    proxy.set_open(false);
    until(&device, |s| !s.connected).await;
    for n in 1..=3 {
        device.telemetry(&reading(n)).await.unwrap();
    }
    until(&device, |s| s.buffered == 3).await;

    proxy.set_open(true);
    for n in 1..=3 {
        assert_eq!(watcher.next().await.1, json!({ "n": n }));
    }
    let stats = until(&device, |s| s.acked == 4).await;
    assert!(stats.connected);
    assert_eq!((stats.sent, stats.reconnects, stats.buffered), (4, 1, 0));

    stop(&device, task).await;
}

#[tokio::test]
async fn a_server_certificate_from_another_ca_is_refused_and_retried() {
    let certs = TestCerts::new();
    let other = TestCerts::new();
    let server = tls_server(&certs).await;
    let token = active_device(&server, "dev-1").await;
    // Counts the device's connection attempts on their way to the TLS listener.
    let counter = Forwarder::start(server.mqtts_addr.expect("TLS listener").port(), None).await;
    let mut config = config(counter.port, "dev-1", &token, Protocol::V5);
    config.transport = Transport::Tls(tls(other.path("ca.pem")));
    let (device, task) = Device::spawn(config).expect("valid config");

    // The handshake fails, and the device tries again (and again).
    let mut accepted = counter.accepted.clone();
    tokio::time::timeout(WAIT, accepted.wait_for(|&n| n >= 3))
        .await
        .expect("the device retried in time")
        .expect("the forwarder is running");
    // Had a handshake succeeded, the device would have stayed connected rather than retry; and
    // it does not connect in the next while either.
    let connected =
        tokio::time::timeout(Duration::from_millis(300), device.wait_for_stats(|s| s.connected))
            .await;
    assert!(connected.is_err(), "the device connected: {connected:?}");
    assert_eq!(device.stats().reconnects, 0);
    assert!(!task.is_finished(), "the device task keeps retrying");

    stop(&device, task).await;
}

/// What `Device::spawn` says about a configuration with `transport`.
#[track_caller]
fn spawn_error(transport: Transport) -> ConfigError {
    let mut config = DeviceConfig::new("127.0.0.1", 1, "dev-1", "hdc_0");
    config.transport = transport;
    match Device::spawn(config) {
        Ok(_) => panic!("the configuration was accepted"),
        Err(error) => error,
    }
}

#[test]
fn unusable_tls_files_are_configuration_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let error = spawn_error(Transport::Tls(tls(missing.clone())));
    assert!(matches!(&error, ConfigError::TlsFile { path, .. } if *path == missing), "{error:?}");
    assert!(error.to_string().contains("missing.pem"), "{error}");

    // Also under WebSocket, and for a file that holds no certificate.
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let error = spawn_error(websocket(Some(tls(empty.clone()))));
    assert!(matches!(&error, ConfigError::TlsFile { path, .. } if *path == empty), "{error:?}");

    // A client certificate whose key file is missing.
    let certs = TestCerts::new();
    let options = TlsOptions {
        client_cert: Some((certs.path("cert.pem"), missing.clone())),
        ..tls(certs.path("ca.pem"))
    };
    let error = spawn_error(Transport::Tls(options));
    assert!(matches!(&error, ConfigError::TlsFile { path, .. } if *path == missing), "{error:?}");
}

#[test]
fn invalid_names_and_paths_are_configuration_errors() {
    let certs = TestCerts::new();
    let options =
        TlsOptions { server_name: Some("not a name".to_owned()), ..tls(certs.path("ca.pem")) };
    let error = spawn_error(Transport::Tls(options));
    assert!(
        matches!(&error, ConfigError::TlsServerName(name) if name == "not a name"),
        "{error:?}"
    );

    let error = spawn_error(Transport::WebSocket { path: "mqtt".to_owned(), tls: None });
    assert!(
        matches!(&error, ConfigError::WebSocketUrl(url) if url == "ws://127.0.0.1:1mqtt"),
        "{error:?}"
    );
}

/// A fake WebSocket server splits the CONNACK over two messages and answers two PUBLISHes with
/// both PUBACKs in one message: the device reads MQTT packets however messages carry them.
#[tokio::test]
async fn packets_split_across_and_combined_in_websocket_messages() {
    const V5: ProtocolVersion = ProtocolVersion::V5;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let fake = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_hdr_async(tcp, answer_mqtt).await.unwrap();
        let mut input = BytesMut::new();
        assert!(matches!(next_packet_of(&mut ws, &mut input).await, Packet::Connect(_)));
        let mut out = BytesMut::new();
        mqtt_codec::encode(&Packet::ConnAck(ConnAck::new(ReasonCode::Success)), V5, &mut out)
            .unwrap();
        let tail = out.split_off(1);
        ws.send(Message::Binary(out.freeze())).await.unwrap();
        ws.send(Message::Binary(tail.freeze())).await.unwrap();
        let mut acks = BytesMut::new();
        for _ in 0..2 {
            let Packet::Publish(publish) = next_packet_of(&mut ws, &mut input).await else {
                panic!("expected PUBLISH");
            };
            let Delivery::AtLeastOnce { packet_id, .. } = publish.delivery else {
                panic!("expected QoS 1");
            };
            mqtt_codec::encode(&Packet::PubAck(PubAck::new(packet_id)), V5, &mut acks).unwrap();
        }
        ws.send(Message::Binary(acks.freeze())).await.unwrap();
        // Keep the connection until the device disconnects.
        while let Some(Ok(_)) = ws.next().await {}
    });

    let mut config = config(port, "dev-1", "hdc_0", Protocol::V5);
    config.transport = websocket(None);
    let (device, task) = Device::spawn(config).expect("valid config");
    until(&device, |s| s.connected).await;
    device.telemetry(&reading(0)).await.unwrap();
    device.telemetry(&reading(1)).await.unwrap();
    until(&device, |s| s.acked == 2).await;
    stop(&device, task).await;
    tokio::time::timeout(WAIT, fake).await.expect("the fake server ended").unwrap();
}

/// A fake server's WebSocket handshake: the device must ask for `mqtt`, which it gets.
#[expect(clippy::result_large_err, reason = "tungstenite's callback signature")]
fn answer_mqtt(request: &Request, mut response: Response) -> Result<Response, ErrorResponse> {
    let protocol = request.headers().get("sec-websocket-protocol").expect("a subprotocol");
    assert_eq!(protocol, "mqtt");
    response.headers_mut().insert("sec-websocket-protocol", protocol.clone());
    Ok(response)
}

/// The next MQTT 5 packet from the device on a fake server's WebSocket.
async fn next_packet_of(ws: &mut WebSocketStream<TcpStream>, input: &mut BytesMut) -> Packet {
    loop {
        if let Some(packet) =
            mqtt_codec::decode_buf(input, ProtocolVersion::V5, 1 << 20).expect("a valid packet")
        {
            return packet;
        }
        match ws.next().await.expect("a message").expect("a WebSocket message") {
            Message::Binary(data) => input.extend_from_slice(&data),
            other => panic!("expected a binary message, got {other:?}"),
        }
    }
}

/// Forwards TCP connections to `127.0.0.1:{upstream}`, terminating TLS first when given an
/// acceptor, and counts the connections it accepted.
struct Forwarder {
    port: u16,
    accepted: watch::Receiver<u64>,
    task: JoinHandle<()>,
}

impl Forwarder {
    async fn start(upstream: u16, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the forwarder");
        let port = listener.local_addr().expect("local address").port();
        let (count, accepted) = watch::channel(0);
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((client, _)) = accepted else { continue };
                        count.send_modify(|n| *n += 1);
                        let tls = tls.clone();
                        connections.spawn(async move {
                            let Ok(mut upstream) = TcpStream::connect(("127.0.0.1", upstream)).await
                            else {
                                return;
                            };
                            let _ = match tls {
                                None => {
                                    let mut client = client;
                                    tokio::io::copy_bidirectional(&mut client, &mut upstream).await
                                }
                                Some(acceptor) => {
                                    let Ok(mut client) = acceptor.accept(client).await else {
                                        return;
                                    };
                                    tokio::io::copy_bidirectional(&mut client, &mut upstream).await
                                }
                            };
                        });
                    }
                    Some(_) = connections.join_next() => {}
                }
            }
        });
        Self { port, accepted, task }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}
