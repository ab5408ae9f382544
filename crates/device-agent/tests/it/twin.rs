//! The SDK's device twin (`device_agent::twin`) against the real server: read the twin, receive
//! the delta an operator's change pushes, report it, and see the twin converge.

use std::num::NonZeroUsize;

use device_agent::twin::{self, TwinMessage};
use device_agent::{Device, Protocol};
use serde_json::json;

use crate::{WAIT, active_device, config, server, stop, until};

#[tokio::test]
async fn a_device_reads_its_twin_applies_the_delta_and_reports() {
    let server = server().await;
    let token = active_device(&server, "dev-1").await;
    let mut c = config(server.mqtt_addr.port(), "dev-1", &token, Protocol::V5);
    c.subscriptions = vec![twin::SUBSCRIPTION.to_owned()];
    let (device, mut inbox, task) =
        Device::spawn_with_inbox(c, NonZeroUsize::new(16).unwrap()).unwrap();
    until(&device, |s| s.connected && s.subscribed).await;

    let state = twin::get(&device, &mut inbox, WAIT, |_| {}).await.unwrap();
    assert!(state.desired.is_empty() && state.delta.is_empty());
    assert_eq!((state.desired_version, state.reported_version), (0, 0));

    let (status, body) =
        server.patch("/api/v1/devices/dev-1/twin", &json!({"desired": {"interval": 30}})).await;
    assert_eq!(status, 200, "{body}");
    // The desired state, then the delta, arrive on their own.
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let m = tokio::time::timeout(WAIT, inbox.recv()).await.unwrap().unwrap();
        seen.extend(TwinMessage::parse(&m));
    }
    assert!(matches!(&seen[0], TwinMessage::Desired { version: 1, .. }), "{seen:?}");
    let TwinMessage::Delta { version: 1, delta } = &seen[1] else { panic!("{seen:?}") };
    assert_eq!(json!(delta), json!({"interval": 30}));

    let version = twin::report(&device, &mut inbox, json!(delta), WAIT, |_| {}).await.unwrap();
    assert_eq!(version, 1);
    let state = twin::get(&device, &mut inbox, WAIT, |_| {}).await.unwrap();
    assert!(state.delta.is_empty(), "{state:?}");
    let (_, body) = server.get("/api/v1/devices/dev-1/twin").await;
    assert_eq!(body["status"]["state"], "in_sync");

    let refused = twin::report(&device, &mut inbox, json!([1]), WAIT, |_| {}).await;
    assert!(
        matches!(&refused, Err(twin::TwinError::Refused { code, .. }) if code == "invalid_patch"),
        "{refused:?}"
    );
    stop(&device, task).await;
}
