//! What a device's agent reports about itself (`devices/{id}/facts`, `devices/{id}/heartbeat`)
//! reaches the device's record (`agent` in `GET /api/v1/devices/{id}`, `herd device get`);
//! malformed reports are ignored without troubling the device; reports received before a shutdown
//! are recorded.

use domain::DeviceId;
use server::config::StoreConfig;
use store::Store as _;
use store_sqlite::{SqliteOptions, SqliteStore};

use super::*;

/// Polls `GET /api/v1/devices/{id}` until its `agent` satisfies `done`; returns the whole device.
async fn device_when(
    server: &TestServer,
    id: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    server.device_until(id, |d| done(&d["agent"])).await
}

#[tokio::test(flavor = "multi_thread")]
async fn facts_and_heartbeats_reach_the_device_record() {
    let server = TestServer::start_with(|c| c.mqtt.agent_report_max_bytes = 512).await;
    let token = active_device(&server, "gw-17").await;
    let (_, before) = server.get("/api/v1/devices/gw-17").await;
    assert_eq!(before.get("agent"), None, "nothing reported yet: {before}");

    let mut probe = Probe::connected(server.mqtt_addr, V5, "gw-17", &token).await;
    // Malformed reports first: each is accepted like any publish (the recorder's subscription
    // matches it) and ignored.
    let too_big = json!({ "blob": "x".repeat(600) }).to_string();
    for (topic, payload) in [
        ("devices/gw-17/facts", "not json"),
        ("devices/gw-17/facts", too_big.as_str()),
        ("devices/gw-17/heartbeat", "[1, 2, 3]"),
        ("devices/gw-17/heartbeat", ""),
        ("devices/gw-17/heartbeat", "\"up\""),
    ] {
        assert_eq!(probe.publish(topic, payload).await, ReasonCode::Success, "{payload}");
    }
    let facts = json!({
        "agent_version": "0.1.0", "os": "Debian GNU/Linux 12 (bookworm)",
        "kernel": "6.1.0-18-amd64", "arch": "x86_64", "hostname": "gw-17",
        "boot_id": "5c2f1e0a-8f7e-4c7c-9a59-1f1d2b3c4d5e", "uptime_secs": 12345,
    });
    let health = json!({
        "ts": "2026-05-28T10:00:00Z", "uptime_secs": 12400, "cpu_percent": 3.5,
        "memory_used_bytes": 123_456_789, "memory_total_bytes": 2_000_000_000_u64,
        "reconnects": 2, "buffered": 0, "dropped": 0,
    });
    let ack = probe.publish("devices/gw-17/facts", &facts.to_string()).await;
    assert_eq!(ack, ReasonCode::Success);
    let ack = probe.publish("devices/gw-17/heartbeat", &health.to_string()).await;
    assert_eq!(ack, ReasonCode::Success);

    // Each feed is recorded in order, so once the good reports show, the bad ones were ignored.
    let device =
        device_when(&server, "gw-17", |a| a["heartbeats"] == 1 && a["facts"].is_object()).await;
    let agent = &device["agent"];
    assert_eq!(agent["facts"], facts);
    assert_eq!(agent["health"], health);
    assert!(agent["facts_reported_at"].is_string(), "{agent}");
    assert!(agent["last_heartbeat_at"].is_string(), "{agent}");
    assert_eq!(device["connectivity"]["connected"], true, "the device stays connected");
    assert_eq!(device["version"], 2, "reports do not change the device's version");

    // The device is still connected and heard: the next heartbeat replaces the health.
    let next = json!({ "uptime_secs": 12430, "cpu_percent": 1.0 });
    assert_eq!(
        probe.publish("devices/gw-17/heartbeat", &next.to_string()).await,
        ReasonCode::Success
    );
    let device = device_when(&server, "gw-17", |a| a["heartbeats"] == 2).await;
    assert_eq!(device["agent"]["health"], next);
    assert_eq!(device["agent"]["facts"], facts, "facts stay until the next facts");

    // `herd device get` shows them.
    let env = [("HERD_URL", server.base_url.as_str()), ("HERD_TOKEN", server.admin_token.as_str())];
    let out = tokio::task::block_in_place(|| crate::herd(&["device", "get", "gw-17"], &env));
    assert!(out.status.success(), "{}", crate::stderr(&out));
    let table = crate::stdout(&out);
    assert!(table.contains("agent facts") && table.contains("Debian GNU/Linux 12"), "{table}");
    assert!(table.contains("agent health") && table.contains("2 in all"), "{table}");
}

#[tokio::test]
async fn reports_on_other_topics_or_of_other_devices_are_not_recorded() {
    let server = TestServer::start().await;
    let token = active_device(&server, "dev-1").await;
    active_device(&server, "dev-2").await;
    let mut probe = Probe::connected(server.mqtt_addr, V311, "dev-1", &token).await;
    // Another device's subtree is refused by the ACL (3.1.1: dropped), sub-topics are not reports.
    probe.publish("devices/dev-2/facts", r#"{"os": "spoofed"}"#).await;
    probe.publish("devices/dev-1/facts/extra", r#"{"os": "nested"}"#).await;
    probe.publish("devices/dev-1/facts", r#"{"os": "linux"}"#).await;
    let device = device_when(&server, "dev-1", |a| a["facts"].is_object()).await;
    assert_eq!(device["agent"]["facts"], json!({"os": "linux"}));
    assert_eq!(device["agent"]["heartbeats"], 0);
    assert_eq!(device["agent"]["health"], serde_json::Value::Null);
    let (_, other) = server.get("/api/v1/devices/dev-2").await;
    assert_eq!(other.get("agent"), None, "{other}");
}

#[tokio::test]
async fn reports_received_before_a_shutdown_are_recorded() {
    // The database lives outside the server's data directory, so it outlives the server.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herd.db");
    let server = TestServer::start_with(|c| {
        c.store = StoreConfig::Sqlite {
            path: path.clone(),
            synchronous: store_sqlite::Synchronous::Normal,
            readers: 2,
        };
    })
    .await;
    let token = active_device(&server, "dev-1").await;
    let mut probe = Probe::connected(server.mqtt_addr, V5, "dev-1", &token).await;
    for n in 1..=20 {
        let health = json!({ "n": n }).to_string();
        assert_eq!(probe.publish("devices/dev-1/heartbeat", &health).await, ReasonCode::Success);
    }
    // Every heartbeat was acknowledged, so the broker had handed it to the recorder; the shutdown
    // waits for the recorder to write it.
    server.stop().await;
    let store = SqliteStore::open(SqliteOptions::new(&path)).await.expect("reopen the store");
    let report = store.agent_report(&DeviceId::new("dev-1").unwrap()).await.unwrap().unwrap();
    assert_eq!(report.heartbeats, 20);
    assert_eq!(report.health.map(|h| h.to_json()), Some(json!({ "n": 20 })));
    store.close().await;
}
