//! The device SDK against a server that is killed (SIGKILL) mid-stream and started again on the
//! same data directory: the device keeps measuring while the server is down, buffers, reconnects
//! and flushes, and every reading reaches a persistent subscriber — none lost, and duplicates only
//! where QoS 1 allows them (a message the server committed but whose PUBACK died with it is sent
//! again, so it may arrive twice; at most one in-flight window of them).
//!
//! The device connects through a TCP proxy whose upstream follows the server's new port, as a
//! device would follow a DNS name; the subscriber is an application with a persistent session
//! that is offline during the stream, so what it receives is exactly what the server committed.
#![expect(clippy::unwrap_used, reason = "test code: an unexpected error fails the test")]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use device_agent::{Backoff, Device, DeviceConfig, Protocol, Telemetry};
use mqtt_codec::ProtocolVersion;
use test_support::TcpProxy;

use crate::persistence::{ADMIN, Client, active_device};
use crate::process::{Serving, spawn_serve};

/// Readings the device sends in all.
const READINGS: u64 = 1_500;
/// The SDK's in-flight window: at most this many messages can be unacknowledged at a crash.
const WINDOW: usize = 32;
const WAIT: Duration = Duration::from_secs(60);
const WATCHER_SECRET: &str = "watcher-secret-0123456789";

fn start(dir: &std::path::Path) -> Serving {
    let data = dir.join("data");
    let config = dir.join("herd.toml");
    let args = [
        "--data-dir",
        data.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--http-listen",
        "127.0.0.1:0",
        "--mqtt-listen",
        "127.0.0.1:0",
    ];
    tokio::task::block_in_place(|| spawn_serve(&args, &[("HERD_ADMIN_TOKEN", ADMIN)]))
}

fn port(serving: &Serving) -> u16 {
    serving.mqtt.rsplit(':').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_device_flushes_its_buffer_after_a_server_crash_with_nothing_lost() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("watcher.secret");
    std::fs::write(&secret, WATCHER_SECRET).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(
        dir.path().join("herd.toml"),
        format!(
            "[mqtt]\nmax_queued_messages = 5000\n\n[[mqtt.applications]]\nname = \"watcher\"\nsecret_file = {:?}\nsubscribe = [\"devices/+/telemetry\"]\n",
            secret.to_str().unwrap()
        ),
    )
    .unwrap();
    let serving = start(dir.path());
    let token = active_device(&serving, "dev-crash").await;

    // The subscriber's persistent session exists before the stream starts, then goes offline:
    // the server queues every reading for it, durably, before acknowledging it to the device.
    let (mut watcher, _) =
        Client::connect(&serving, ProtocolVersion::V5, "watcher", WATCHER_SECRET).await;
    watcher.subscribe("devices/dev-crash/telemetry").await;
    watcher.disconnect().await;

    let proxy = TcpProxy::start(port(&serving)).await;
    let mut config = DeviceConfig::new("127.0.0.1", proxy.port, "dev-crash", &token);
    config.protocol = Protocol::V5;
    config.offline_buffer_capacity = 10_000.try_into().unwrap();
    config.backoff = Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(500),
        jitter: 0.5,
    };
    let (device, task) = Device::spawn(config).unwrap();

    // The device measures at its own pace whatever the server does.
    let producer = {
        let device = device.clone();
        tokio::spawn(async move {
            for n in 0..READINGS {
                device.telemetry(&Telemetry::new().with_field("n", n)).await.unwrap();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };

    // Mid-stream: kill -9, keep buffering while the server is down, start it again.
    tokio::time::timeout(WAIT, device.wait_for_stats(|s| s.acked >= 300)).await.unwrap().unwrap();
    tokio::task::block_in_place(|| serving.kill9());
    tokio::time::timeout(WAIT, device.wait_for_stats(|s| !s.connected)).await.unwrap().unwrap();
    let down = tokio::time::timeout(WAIT, device.wait_for_stats(|s| s.buffered >= 50))
        .await
        .unwrap()
        .unwrap();
    assert!(down.acked < READINGS, "the crash came mid-stream: {down:?}");
    let serving = start(dir.path());
    proxy.set_upstream(port(&serving));

    producer.await.unwrap();
    let stats = tokio::time::timeout(
        WAIT,
        device.wait_for_stats(|s| s.acked == READINGS && s.buffered == 0),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(stats.reconnects >= 1, "{stats:?}");
    assert_eq!(stats.dropped, 0, "{stats:?}");
    device.shutdown().await.unwrap();
    task.await.unwrap().unwrap();

    // Everything the subscriber's session holds, in order of arrival.
    let (mut watcher, present) =
        Client::connect(&serving, ProtocolVersion::V5, "watcher", WATCHER_SECRET).await;
    assert!(present, "the subscriber's session survived the crash");
    let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
    let mut order = Vec::new();
    while seen.len() < usize::try_from(READINGS).unwrap() {
        let (topic, payload, packet_id) = watcher.next_message().await;
        assert_eq!(topic, "devices/dev-crash/telemetry");
        let value: serde_json::Value = serde_json::from_str(&payload).unwrap();
        let n = value["n"].as_u64().unwrap();
        *seen.entry(n).or_default() += 1;
        order.push(n);
        watcher.puback(packet_id.unwrap()).await;
    }
    let missing: Vec<u64> = (0..READINGS).filter(|n| !seen.contains_key(n)).collect();
    assert!(missing.is_empty(), "lost readings: {missing:?}");
    let duplicates: Vec<u64> = seen.iter().filter(|(_, c)| **c > 1).map(|(n, _)| *n).collect();
    assert!(
        duplicates.len() <= WINDOW,
        "more duplicates than one in-flight window: {duplicates:?}"
    );
    // First deliveries come in the order the device measured.
    let mut firsts = Vec::new();
    let mut first_seen = std::collections::BTreeSet::new();
    for n in order {
        if first_seen.insert(n) {
            firsts.push(n);
        }
    }
    assert!(firsts.windows(2).all(|w| w[0] < w[1]), "readings out of order");
}
