//! The device agent against the real server in-process: a device created and given a credential
//! through the REST API publishes telemetry, which an anonymous watcher subscribed to
//! `devices/+/telemetry` receives. A TCP proxy between device and server cuts the connection for
//! the reconnection tests.

mod channels;
mod journal;
mod renewal;
mod transports;
mod twin;
mod watcher;

use std::sync::Arc;
use std::time::Duration;

use device_agent::{
    AgentError, Backoff, Device, DeviceConfig, DeviceHandle, Protocol, ReasonCode, Stats, Telemetry,
};
use serde_json::json;
use server::gateway::TopicRules;
use test_support::{TcpProxy as Proxy, TestServer};
use tokio::task::JoinHandle;

use crate::watcher::Watcher;

/// How long a test waits for something that should happen.
const WAIT: Duration = Duration::from_secs(20);

/// A server whose anonymous clients may subscribe to every device's telemetry.
async fn server() -> TestServer {
    let rules = TopicRules::new(
        &["devices/+/commands/#"],
        &["devices/+/telemetry", "devices/+/events"],
        &[],
    )
    .expect("valid rules");
    TestServer::start_with(|c| c.mqtt.anonymous = Some(Arc::new(rules))).await
}

/// Creates device `id`, activates it and issues a credential; returns its secret.
async fn active_device(server: &TestServer, id: &str) -> String {
    server.active_device(id).await
}

fn config(port: u16, id: &str, token: &str, protocol: Protocol) -> DeviceConfig {
    let mut config = DeviceConfig::new("127.0.0.1", port, id, token);
    config.protocol = protocol;
    config.backoff = Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(200),
        jitter: 0.5,
    };
    config
}

/// Waits until the device's counters satisfy `condition`.
async fn until(device: &DeviceHandle, condition: impl FnMut(&Stats) -> bool) -> Stats {
    tokio::time::timeout(WAIT, device.wait_for_stats(condition))
        .await
        .expect("the condition came true in time")
        .expect("the device task is running")
}

/// Shuts the device down; checks that its task ends cleanly.
async fn stop(device: &DeviceHandle, task: JoinHandle<Result<(), AgentError>>) {
    device.shutdown().await.expect("the device task is running");
    let result = tokio::time::timeout(WAIT, task).await.expect("stopped in time");
    result.expect("the task did not panic").expect("a clean stop");
}

fn reading(n: u64) -> Telemetry {
    Telemetry::new().with_field("n", n)
}

async fn telemetry_reaches_the_server(protocol: Protocol) {
    let server = server().await;
    let token = active_device(&server, "dev-1").await;
    let mut watcher = Watcher::connect(server.mqtt_addr, "devices/+/telemetry").await;
    let (device, task) = Device::spawn(config(server.mqtt_addr.port(), "dev-1", &token, protocol))
        .expect("valid config");

    for n in 0..3 {
        device
            .telemetry(&reading(n).with_timestamp("2026-01-02T03:04:05Z"))
            .await
            .expect("device task running");
    }
    for n in 0..3 {
        let (topic, payload) = watcher.next().await;
        assert_eq!(topic, "devices/dev-1/telemetry");
        assert_eq!(payload, json!({ "ts": "2026-01-02T03:04:05Z", "n": n }));
    }
    let stats = until(&device, |s| s.acked == 3).await;
    assert!(stats.connected);
    assert_eq!((stats.sent, stats.reconnects, stats.buffered, stats.dropped), (3, 0, 0, 0));

    stop(&device, task).await;
}

#[tokio::test]
async fn telemetry_reaches_the_server_v5() {
    telemetry_reaches_the_server(Protocol::V5).await;
}

#[tokio::test]
async fn telemetry_reaches_the_server_v311() {
    telemetry_reaches_the_server(Protocol::V311).await;
}

#[tokio::test]
async fn a_wrong_credential_stops_the_device() {
    let server = server().await;
    let token = active_device(&server, "dev-1").await;
    let wrong = format!("hdc_{}", "0".repeat(64));
    assert_ne!(token, wrong);
    for (protocol, code) in [
        (Protocol::V5, ReasonCode::BadUserNameOrPassword),
        (Protocol::V311, ReasonCode::BadUserNameOrPassword),
    ] {
        let (device, task) =
            Device::spawn(config(server.mqtt_addr.port(), "dev-1", &wrong, protocol)).unwrap();
        let result = tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
        assert!(matches!(result, Err(AgentError::Refused(c)) if c == code), "{result:?}");
        assert!(device.telemetry(&reading(0)).await.is_err());
    }
}

#[tokio::test]
async fn reconnects_and_sends_the_offline_buffer_in_order() {
    let server = server().await;
    let token = active_device(&server, "dev-1").await;
    let mut watcher = Watcher::connect(server.mqtt_addr, "devices/+/telemetry").await;
    let proxy = Proxy::start(server.mqtt_addr.port()).await;
    let (device, task) =
        Device::spawn(config(proxy.port, "dev-1", &token, Protocol::V5)).expect("valid config");

    device.telemetry(&reading(0)).await.unwrap();
    assert_eq!(watcher.next().await.1, json!({ "n": 0 }));
    until(&device, |s| s.acked == 1).await;

    proxy.set_open(false);
    until(&device, |s| !s.connected).await;
    for n in 1..=4 {
        device.telemetry(&reading(n)).await.unwrap();
    }
    let stats = until(&device, |s| s.buffered == 4).await;
    assert_eq!((stats.sent, stats.acked), (1, 1));

    proxy.set_open(true);
    for n in 1..=4 {
        assert_eq!(watcher.next().await.1, json!({ "n": n }));
    }
    let stats = until(&device, |s| s.acked == 5).await;
    assert!(stats.connected);
    assert_eq!((stats.sent, stats.reconnects, stats.buffered, stats.dropped), (5, 1, 0, 0));

    stop(&device, task).await;
}

#[tokio::test]
async fn a_full_offline_buffer_drops_the_oldest() {
    let server = server().await;
    let token = active_device(&server, "dev-1").await;
    let mut watcher = Watcher::connect(server.mqtt_addr, "devices/+/telemetry").await;
    let proxy = Proxy::start(server.mqtt_addr.port()).await;
    proxy.set_open(false);
    let mut config = config(proxy.port, "dev-1", &token, Protocol::V311);
    config.offline_buffer_capacity = 2.try_into().unwrap();
    let (device, task) = Device::spawn(config).expect("valid config");

    for n in 0..5 {
        device.telemetry(&reading(n)).await.unwrap();
    }
    let stats = until(&device, |s| s.dropped == 3).await;
    assert_eq!((stats.buffered, stats.sent), (2, 0));

    proxy.set_open(true);
    assert_eq!(watcher.next().await.1, json!({ "n": 3 }));
    assert_eq!(watcher.next().await.1, json!({ "n": 4 }));
    until(&device, |s| s.acked == 2).await;

    stop(&device, task).await;
}
