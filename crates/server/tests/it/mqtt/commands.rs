//! Direct commands end to end: a raw MQTT device (`Probe`, MQTT 3.1.1 and 5) receives commands on
//! `devices/{id}/commands/{command id}` and answers on `…/result`, while an operator sends them
//! through the REST API, synchronously or queued for an offline device.

use std::collections::HashSet;
use std::time::Duration;

use mqtt_codec::{
    Delivery, Packet, Properties, ProtocolVersion, PubAck, Publish, QoS, Subscribe, Subscription,
    SubscriptionOptions, TopicFilter,
};
use serde_json::{Value, json};
use test_support::TestServer;

use super::{Probe, V5, V311, WAIT, active_device};

/// A command request with an optional `Idempotency-Key`; returns status and JSON body.
async fn send(server: &TestServer, id: &str, body: &Value, key: Option<&str>) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(server.url(&format!("/api/v1/devices/{id}/commands")))
        .bearer_auth(&server.admin_token)
        .json(body);
    if let Some(key) = key {
        req = req.header("Idempotency-Key", key);
    }
    let r = req.send().await.expect("the server answers");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Polls a command until `done` holds for its JSON.
async fn command_until(
    server: &TestServer,
    id: &str,
    cid: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = server.get(&format!("/api/v1/devices/{id}/commands/{cid}")).await;
        assert_eq!(status, 200, "{body}");
        if done(&body) {
            return body;
        }
        assert!(tokio::time::Instant::now() < deadline, "the command never got there: {body:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Connects device `id` (created and activated here), subscribes to its commands, and waits until
/// its connection is recorded (commands go only to connected devices).
async fn online_device(server: &TestServer, version: ProtocolVersion, id: &str) -> Probe {
    let token = active_device(server, id).await;
    connect(server, version, id, &token).await
}

async fn connect(server: &TestServer, version: ProtocolVersion, id: &str, token: &str) -> Probe {
    let mut probe = Probe::connected(server.mqtt_addr, version, id, token).await;
    subscribe(&mut probe, &format!("devices/{id}/commands/+")).await;
    server.device_until(id, |d| d["connectivity"]["connected"] == true).await;
    probe
}

/// Subscribes at QoS 1, keeping commands that arrive before the SUBACK (Herd may send pending
/// ones as soon as the subscription exists).
async fn subscribe(probe: &mut Probe, filter: &str) {
    let packet_id = probe.packet_id();
    probe
        .send(Packet::Subscribe(Subscribe {
            packet_id,
            properties: Properties::default(),
            subscriptions: vec![Subscription {
                filter: TopicFilter::new(filter).expect("valid filter"),
                options: SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    ..SubscriptionOptions::default()
                },
            }],
        }))
        .await;
    loop {
        match probe.recv().await {
            Some(Packet::SubAck(ack)) => {
                assert!(ack.reason_codes.iter().all(|c| !c.is_error()), "{:?}", ack.reason_codes);
                return;
            }
            Some(Packet::Publish(p)) => probe.pending.push_back(p),
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }
}

/// Acknowledges a QoS 1 message.
async fn ack(probe: &mut Probe, publish: &Publish) {
    if let Delivery::AtLeastOnce { packet_id, .. } = publish.delivery {
        probe.send(Packet::PubAck(PubAck::new(packet_id))).await;
    }
}

/// The next PUBLISH the device gets.
async fn next_publish(probe: &mut Probe) -> Publish {
    if let Some(p) = probe.pending.pop_front() {
        ack(probe, &p).await;
        return p;
    }
    loop {
        match probe.recv().await {
            Some(Packet::Publish(p)) => {
                ack(probe, &p).await;
                return p;
            }
            Some(Packet::PubAck(_)) => {}
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }
}

/// The next command the device gets, as (topic, JSON).
async fn next_command(probe: &mut Probe) -> (String, Value) {
    let p = next_publish(probe).await;
    let topic = p.topic.map(|t| t.as_str().to_owned()).unwrap_or_default();
    (topic, serde_json::from_slice(&p.payload).expect("a command is JSON"))
}

#[tokio::test]
async fn a_synchronous_command_returns_the_devices_result() {
    let server = TestServer::start().await;
    let mut device = online_device(&server, V311, "cmd-sync").await;
    let request = {
        let (url, token) =
            (server.url("/api/v1/devices/cmd-sync/commands"), server.admin_token.clone());
        tokio::spawn(async move {
            let r = reqwest::Client::new()
                .post(url)
                .bearer_auth(token)
                .json(&json!({"name": "ping", "payload": {"echo": 7}, "wait": true, "timeout_secs": 20}))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        })
    };
    let (topic, command) = next_command(&mut device).await;
    let cid = command["id"].as_str().unwrap().to_owned();
    assert_eq!(topic, format!("devices/cmd-sync/commands/{cid}"));
    assert_eq!(command["name"], "ping");
    assert_eq!(command["payload"], json!({"echo": 7}));
    assert_eq!(command["timeout_secs"], 20);
    assert!(command.get("expires_at").is_none(), "{command}");
    let code = device
        .publish(
            &format!("devices/cmd-sync/commands/{cid}/result"),
            &json!({"status": "succeeded", "result": {"echo": 7}}).to_string(),
        )
        .await;
    assert!(!code.is_error(), "{code:?}");
    let (status, body) = request.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], cid.as_str());
    assert_eq!(body["state"], "succeeded");
    assert_eq!(body["result"], json!({"echo": 7}));
    assert!(body["delivered_at"].is_string() && body["completed_at"].is_string(), "{body}");
}

#[tokio::test]
async fn a_device_error_is_a_failed_command() {
    let server = TestServer::start().await;
    let mut device = online_device(&server, V311, "cmd-fail").await;
    let request = {
        let (url, token) =
            (server.url("/api/v1/devices/cmd-fail/commands"), server.admin_token.clone());
        tokio::spawn(async move {
            let r = reqwest::Client::new()
                .post(url)
                .bearer_auth(token)
                .json(&json!({"name": "flash", "wait": true}))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        })
    };
    let (_, command) = next_command(&mut device).await;
    let cid = command["id"].as_str().unwrap().to_owned();
    assert_eq!(command["payload"], Value::Null);
    device
        .publish(
            &format!("devices/cmd-fail/commands/{cid}/result"),
            &json!({"status": "failed", "code": "disk_full", "message": "no space"}).to_string(),
        )
        .await;
    let (status, body) = request.await.unwrap();
    assert_eq!(status, 200, "the device's answer is not an HTTP failure: {body}");
    assert_eq!(body["state"], "failed");
    assert_eq!(body["error"], json!({"code": "disk_full", "message": "no space"}));
}

#[tokio::test]
async fn an_unanswered_synchronous_command_times_out_with_408() {
    let server = TestServer::start().await;
    let mut device = online_device(&server, V311, "cmd-slow").await;
    let (status, body) =
        send(&server, "cmd-slow", &json!({"name": "slow", "wait": true, "timeout_secs": 1}), None)
            .await;
    assert_eq!(status, 408, "{body}");
    assert_eq!(body["code"], "command_timed_out");
    assert_eq!(body["state"], "timed_out");
    let cid = body["id"].as_str().unwrap().to_owned();
    assert_eq!(body["error"]["code"], "timed_out");
    // The device got it; its late answer changes nothing.
    let (_, command) = next_command(&mut device).await;
    assert_eq!(command["id"], cid.as_str());
    device
        .publish(
            &format!("devices/cmd-slow/commands/{cid}/result"),
            &json!({"status": "succeeded"}).to_string(),
        )
        .await;
    // A later command round-trips, so the late answer was handled before it.
    let request = {
        let (url, token) =
            (server.url("/api/v1/devices/cmd-slow/commands"), server.admin_token.clone());
        tokio::spawn(async move {
            reqwest::Client::new()
                .post(url)
                .bearer_auth(token)
                .json(&json!({"name": "after", "wait": true}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    let (_, after) = next_command(&mut device).await;
    device
        .publish(
            &format!("devices/cmd-slow/commands/{}/result", after["id"].as_str().unwrap()),
            &json!({"status": "succeeded"}).to_string(),
        )
        .await;
    assert_eq!(request.await.unwrap(), 200);
    let (_, stored) = server.get(&format!("/api/v1/devices/cmd-slow/commands/{cid}")).await;
    assert_eq!(stored["state"], "timed_out", "{stored}");
}

#[tokio::test]
async fn mqtt5_devices_get_a_response_topic_and_correlation_data() {
    let server = TestServer::start().await;
    let mut device = online_device(&server, V5, "cmd-v5").await;
    let request = {
        let (url, token) =
            (server.url("/api/v1/devices/cmd-v5/commands"), server.admin_token.clone());
        tokio::spawn(async move {
            let r = reqwest::Client::new()
                .post(url)
                .bearer_auth(token)
                .json(&json!({"name": "ping", "wait": true}))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        })
    };
    let publish = next_publish(&mut device).await;
    let command: Value = serde_json::from_slice(&publish.payload).unwrap();
    let cid = command["id"].as_str().unwrap().to_owned();
    let response_topic = publish.properties.response_topic.clone().expect("a response topic");
    assert_eq!(response_topic.as_str(), format!("devices/cmd-v5/commands/{cid}/result"));
    assert_eq!(publish.properties.correlation_data.as_deref(), Some(cid.as_bytes()));
    device
        .publish(
            response_topic.as_str(),
            &json!({"status": "rejected", "message": "busy"}).to_string(),
        )
        .await;
    let (status, body) = request.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "rejected");
    assert_eq!(body["error"], json!({"code": "rejected", "message": "busy"}));
}

#[tokio::test]
async fn an_offline_device_gets_its_queued_commands_in_order_when_it_connects() {
    let server = TestServer::start().await;
    let token = active_device(&server, "cmd-away").await;
    // Without a delivery window an offline device is refused, and nothing is stored.
    let (status, body) = send(&server, "cmd-away", &json!({"name": "now"}), None).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("device_offline")), "{body}");
    let mut ids = Vec::new();
    for name in ["first", "second"] {
        let (status, body) =
            send(&server, "cmd-away", &json!({"name": name, "ttl_secs": 600}), None).await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["state"], "queued");
        assert!(body["expires_at"].is_string(), "{body}");
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    let (_, list) = server.get("/api/v1/devices/cmd-away/commands").await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(2), "{list}");

    // A clean session: subscribe, then ask for what is pending (commands sent on arrival before
    // the subscription are lost to it).
    let mut device = connect(&server, V311, "cmd-away", &token).await;
    device.publish("devices/cmd-away/commands/pending/get", "").await;
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let (topic, command) = next_command(&mut device).await;
        let id = command["id"].as_str().unwrap().to_owned();
        assert_eq!(topic, format!("devices/cmd-away/commands/{id}"));
        assert!(command["expires_at"].is_string(), "{command}");
        if !seen.contains(&id) {
            seen.push(id);
        }
    }
    assert_eq!(seen, ids, "delivered in creation order");
    for id in &ids {
        command_until(&server, "cmd-away", id, |c| c["state"] == "delivered").await;
        device
            .publish(
                &format!("devices/cmd-away/commands/{id}/result"),
                &json!({"status": "succeeded"}).to_string(),
            )
            .await;
        command_until(&server, "cmd-away", id, |c| c["state"] == "succeeded").await;
    }
}

#[tokio::test]
async fn an_expired_command_is_never_delivered() {
    let server = TestServer::start().await;
    let token = active_device(&server, "cmd-late").await;
    let (status, body) =
        send(&server, "cmd-late", &json!({"name": "stale", "ttl_secs": 1}), None).await;
    assert_eq!(status, 202, "{body}");
    let stale = body["id"].as_str().unwrap().to_owned();
    let expired = command_until(&server, "cmd-late", &stale, |c| c["state"] == "expired").await;
    assert_eq!(expired["delivered_at"], Value::Null);
    assert_eq!(expired["error"]["code"], "expired");

    let mut device = connect(&server, V311, "cmd-late", &token).await;
    device.publish("devices/cmd-late/commands/pending/get", "").await;
    // A fresh command is the first thing the device gets: the expired one never comes.
    let (status, body) = send(&server, "cmd-late", &json!({"name": "fresh"}), None).await;
    assert_eq!(status, 202, "{body}");
    let fresh = body["id"].as_str().unwrap().to_owned();
    let (_, first) = next_command(&mut device).await;
    assert_eq!(first["id"], fresh.as_str(), "{first}");
    let (_, stored) = server.get(&format!("/api/v1/devices/cmd-late/commands/{stale}")).await;
    assert_eq!(stored["state"], "expired");
}

#[tokio::test]
async fn an_idempotency_key_returns_the_same_command() {
    let server = TestServer::start().await;
    active_device(&server, "cmd-idem").await;
    let body = json!({"name": "reboot", "payload": {"delay": 5}, "ttl_secs": 600});
    let (status, first) = send(&server, "cmd-idem", &body, Some("op-42")).await;
    assert_eq!(status, 202, "{first}");
    assert_eq!(first["idempotency_key"], "op-42");
    let (status, again) = send(&server, "cmd-idem", &body, Some("op-42")).await;
    assert_eq!(status, 202, "{again}");
    assert_eq!(again["id"], first["id"]);
    let other = json!({"name": "reboot", "payload": {"delay": 6}, "ttl_secs": 600});
    let (status, conflict) = send(&server, "cmd-idem", &other, Some("op-42")).await;
    assert_eq!((status, conflict["code"].as_str()), (409, Some("conflict")), "{conflict}");
    // Even an offline retry without a window finds the first command.
    let (status, retry) = send(
        &server,
        "cmd-idem",
        &json!({"name": "reboot", "payload": {"delay": 5}}),
        Some("op-42"),
    )
    .await;
    assert_eq!((status, &retry["id"]), (202, &first["id"]), "{retry}");
    let (_, list) = server.get("/api/v1/devices/cmd-idem/commands").await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1), "{list}");
}

#[tokio::test]
async fn a_queued_command_can_be_canceled_once() {
    let server = TestServer::start().await;
    active_device(&server, "cmd-cancel").await;
    let (_, body) =
        send(&server, "cmd-cancel", &json!({"name": "reboot", "ttl_secs": 600}), None).await;
    let cid = body["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/devices/cmd-cancel/commands/{cid}/cancel");
    let (status, canceled) = server.post(&path, &json!({})).await;
    assert_eq!(status, 200, "{canceled}");
    assert_eq!(canceled["state"], "canceled");
    let (status, again) = server.post(&path, &json!({})).await;
    assert_eq!((status, again["code"].as_str()), (409, Some("conflict")), "{again}");
    let (_, list) = server.get("/api/v1/devices/cmd-cancel/commands?state=canceled").await;
    let ids: HashSet<_> =
        list["items"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids, HashSet::from([cid.as_str()]));
    let (_, audit) = server.get("/api/v1/audit?limit=1000").await;
    let actions: Vec<_> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["action"].as_str())
        .filter(|a| a.starts_with("device.command."))
        .collect();
    assert_eq!(actions, ["device.command.create", "device.command.cancel"]);
}

/// Runs `herd` with the server's URL and admin token, off the async workers.
async fn herd_cli(server: &TestServer, args: &[&str]) -> std::process::Output {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let env = [
        ("HERD_URL".to_owned(), server.base_url.clone()),
        ("HERD_TOKEN".to_owned(), server.admin_token.clone()),
    ];
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        crate::herd(&args, &env)
    })
    .await
    .expect("herd ran")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_sends_lists_gets_and_cancels_commands() {
    let server = TestServer::start().await;
    active_device(&server, "cmd-cli").await;
    let out = herd_cli(&server, &["command", "send", "cmd-cli", "reboot"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(crate::stderr(&out).contains("device_offline"), "{}", crate::stderr(&out));

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("payload.json");
    std::fs::write(&file, r#"{"delay": 5}"#).unwrap();
    let arg = format!("@{}", file.display());
    let out = herd_cli(
        &server,
        &[
            "command",
            "send",
            "cmd-cli",
            "reboot",
            "--payload",
            &arg,
            "--ttl",
            "600",
            "--idempotency-key",
            "k",
            "-o",
            "json",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", crate::stderr(&out));
    let sent: Value = serde_json::from_str(&crate::stdout(&out)).unwrap();
    assert_eq!((sent["state"].as_str(), &sent["payload"]), (Some("queued"), &json!({"delay": 5})));
    let cid = sent["id"].as_str().unwrap().to_owned();

    let out = herd_cli(&server, &["command", "list", "cmd-cli", "--state", "queued"]).await;
    let table = crate::stdout(&out);
    assert!(table.starts_with("ID") && table.contains(&cid), "{table}");
    let out = herd_cli(&server, &["command", "get", "cmd-cli", &cid]).await;
    assert!(crate::stdout(&out).contains("state:     queued"), "{}", crate::stdout(&out));
    let out = herd_cli(&server, &["command", "cancel", "cmd-cli", &cid, "-o", "json"]).await;
    let canceled: Value = serde_json::from_str(&crate::stdout(&out)).unwrap();
    assert_eq!(canceled["state"], "canceled");
    let out = herd_cli(&server, &["command", "cancel", "cmd-cli", &cid]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(crate::stderr(&out).contains("conflict"), "{}", crate::stderr(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_waits_and_fails_on_a_failed_command() {
    let server = TestServer::start().await;
    let mut device = online_device(&server, V5, "cmd-cli-wait").await;
    let cli = {
        let (url, token) = (server.base_url.clone(), server.admin_token.clone());
        tokio::task::spawn_blocking(move || {
            crate::herd(
                &["command", "send", "cmd-cli-wait", "selftest", "--wait", "--timeout", "20"],
                &[("HERD_URL", url.as_str()), ("HERD_TOKEN", token.as_str())],
            )
        })
    };
    let (_, command) = next_command(&mut device).await;
    let cid = command["id"].as_str().unwrap().to_owned();
    device
        .publish(
            &format!("devices/cmd-cli-wait/commands/{cid}/result"),
            &json!({"status": "failed", "code": "sensor", "message": "no reading"}).to_string(),
        )
        .await;
    let out = cli.await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(crate::stdout(&out).contains("state:     failed"), "{}", crate::stdout(&out));
    assert!(
        crate::stderr(&out).contains("ended failed: sensor no reading"),
        "{}",
        crate::stderr(&out)
    );
}

/// The next command the SDK hands out.
async fn next_sdk_command(
    commands: &mut device_agent::commands::Commands,
) -> device_agent::commands::DeviceCommand {
    use device_agent::commands::Received;
    match tokio::time::timeout(WAIT, commands.next()).await.expect("a command in time") {
        Some(Received::Command(c)) => c,
        Some(other) => panic!("unexpected {other:?}"),
        None => panic!("the device stopped"),
    }
}

#[tokio::test]
async fn the_sdk_receives_queued_and_live_commands_and_answers() {
    use device_agent::commands::{Answer, COMMANDS_SUBSCRIPTION, Commands};

    let server = TestServer::start().await;
    let token = active_device(&server, "cmd-sdk").await;
    let (_, queued) =
        send(&server, "cmd-sdk", &json!({"name": "ping", "payload": 1, "ttl_secs": 600}), None)
            .await;
    let mut config = device_agent::DeviceConfig::new(
        server.mqtt_addr.ip().to_string(),
        server.mqtt_addr.port(),
        "cmd-sdk",
        &token,
    );
    config.subscriptions.push(COMMANDS_SUBSCRIPTION.to_owned());
    let (handle, inbox, _task) =
        device_agent::Device::spawn_with_inbox(config, std::num::NonZeroUsize::new(16).unwrap())
            .unwrap();
    let mut commands = Commands::new(handle.clone(), inbox);
    let first = next_sdk_command(&mut commands).await;
    assert_eq!(first.id, queued["id"].as_str().unwrap());
    assert_eq!((first.name.as_str(), &first.payload), ("ping", &json!(1)));
    commands.answer(&first, &Answer::succeeded(json!(2))).await.unwrap();
    command_until(&server, "cmd-sdk", &first.id, |c| c["state"] == "succeeded" && c["result"] == 2)
        .await;

    // A live, synchronous one.
    server.device_until("cmd-sdk", |d| d["connectivity"]["connected"] == true).await;
    let request = {
        let (url, token) =
            (server.url("/api/v1/devices/cmd-sdk/commands"), server.admin_token.clone());
        tokio::spawn(async move {
            let r = reqwest::Client::new()
                .post(url)
                .bearer_auth(token)
                .json(&json!({"name": "selftest", "wait": true}))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        })
    };
    let live = next_sdk_command(&mut commands).await;
    assert_eq!(live.name, "selftest");
    commands.answer(&live, &Answer::failed("sensor", "no reading")).await.unwrap();
    let (status, body) = request.await.unwrap();
    assert_eq!((status, body["state"].as_str()), (200, Some("failed")), "{body}");
    assert_eq!(body["error"], json!({"code": "sensor", "message": "no reading"}));
    handle.shutdown().await.ok();
}
