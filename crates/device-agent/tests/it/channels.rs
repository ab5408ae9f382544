//! Events, other channels, subscriptions and severed connections.

use std::num::NonZeroUsize;
use std::time::Duration;

use device_agent::{Channel, Device, Event, Protocol};
use serde_json::json;

use crate::watcher::Watcher;
use crate::{WAIT, active_device, config, reading, server, stop, until};

#[tokio::test]
async fn events_go_to_the_events_topic() {
    let server = server().await;
    let token = active_device(&server, "dev-1").await;
    let mut watcher = Watcher::connect(server.mqtt_addr, "devices/+/events").await;
    let (device, task) =
        Device::spawn(config(server.mqtt_addr.port(), "dev-1", &token, Protocol::V311)).unwrap();
    device.event(&Event::new("door_opened").with_data("door", 2)).await.unwrap();
    let (topic, payload) = watcher.next().await;
    assert_eq!(topic, "devices/dev-1/events");
    assert_eq!(
        payload,
        json!({ "name": "door_opened", "severity": "info", "data": { "door": 2 } })
    );
    until(&device, |s| s.acked == 1).await;
    stop(&device, task).await;
}

#[tokio::test]
async fn subscriptions_deliver_to_the_inbox_and_survive_reconnects() {
    let server = server().await;
    let token = active_device(&server, "dev-1").await;
    let mut operator =
        Watcher::connect_as(server.mqtt_addr, "operator", "devices/+/telemetry").await;
    let mut c = config(server.mqtt_addr.port(), "dev-1", &token, Protocol::V5);
    c.subscriptions = vec!["commands/#".to_owned()];
    let (device, mut inbox, task) =
        Device::spawn_with_inbox(c, NonZeroUsize::new(4).unwrap()).unwrap();
    until(&device, |s| s.subscribed).await;

    operator.publish("devices/dev-1/commands/reboot", r#"{"delay":5}"#).await;
    let message = tokio::time::timeout(WAIT, inbox.recv()).await.unwrap().unwrap();
    assert_eq!(message.topic, "devices/dev-1/commands/reboot");
    assert_eq!(message.subtopic(), "commands/reboot");
    assert_eq!(&message.payload[..], br#"{"delay":5}"#);

    // A cut connection: the session (and its subscription) is resumed, telemetry sent meanwhile
    // is delivered, and commands reach the inbox again.
    device.sever(Duration::from_millis(50)).await.unwrap();
    device.telemetry(&reading(1)).await.unwrap();
    until(&device, |s| s.reconnects == 1 && s.connected && s.subscribed).await;
    assert_eq!(operator.next().await.1, json!({ "n": 1 }));
    operator.publish("devices/dev-1/commands/ping", "{}").await;
    let message = tokio::time::timeout(WAIT, inbox.recv()).await.unwrap().unwrap();
    assert_eq!(message.subtopic(), "commands/ping");
    assert_eq!(device.stats().received, 2);
    stop(&device, task).await;
}

#[tokio::test]
async fn other_channels_and_bad_subtopics() {
    assert!(Channel::subtopic("twin/+").is_err());
    let err = Device::spawn({
        let mut c = config(1, "dev-1", "hdc_x", Protocol::V5);
        c.subscriptions = vec!["/commands".to_owned()];
        c
    })
    .unwrap_err();
    assert!(err.to_string().contains("invalid subscription"), "{err}");
}
