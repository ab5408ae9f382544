//! The on-disk offline journal: messages survive the end of the device's process (simulated by
//! aborting its task) and are sent once the server is reachable; acknowledged ones do not return.

use device_agent::{Device, OfflineJournal, Protocol};
use serde_json::json;

use crate::watcher::Watcher;
use crate::{Proxy, active_device, config, reading, server, stop, until};

#[tokio::test]
async fn journaled_messages_survive_a_restart_of_the_device() {
    let server = server().await;
    let token = active_device(&server, "dev-1").await;
    let mut watcher = Watcher::connect(server.mqtt_addr, "devices/+/telemetry").await;
    let proxy = Proxy::start(server.mqtt_addr.port()).await;
    proxy.set_open(false);
    let dir = tempfile::tempdir().unwrap();
    let journaled = || {
        let mut c = config(proxy.port, "dev-1", &token, Protocol::V5);
        c.offline_journal = Some(OfflineJournal {
            dir: dir.path().join("journal"),
            max_bytes: 1 << 20,
            sync: true,
        });
        c
    };

    // Offline: five readings are journaled, then the process "crashes".
    let (device, task) = Device::spawn(journaled()).unwrap();
    for n in 0..5 {
        device.telemetry(&reading(n)).await.unwrap();
    }
    until(&device, |s| s.buffered == 5).await;
    task.abort();
    let _ = task.await;
    drop(device);

    // The next start finds them and sends them, in order, once the server is reachable.
    let (device, task) = Device::spawn(journaled()).unwrap();
    assert_eq!(device.stats().buffered, 5);
    proxy.set_open(true);
    for n in 0..5 {
        assert_eq!(watcher.next().await.1, json!({ "n": n }));
    }
    until(&device, |s| s.acked == 5).await;
    stop(&device, task).await;

    // Acknowledged messages are gone from the journal.
    let (device, task) = Device::spawn(journaled()).unwrap();
    assert_eq!(device.stats().buffered, 0);
    device.telemetry(&reading(5)).await.unwrap();
    assert_eq!(watcher.next().await.1, json!({ "n": 5 }));
    until(&device, |s| s.acked == 1).await;
    stop(&device, task).await;
}

#[tokio::test]
async fn a_journal_is_used_by_one_device_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let journaled = || {
        let mut c = config(1, "dev-1", "hdc_x", Protocol::V5);
        c.offline_journal =
            Some(OfflineJournal { dir: dir.path().to_owned(), max_bytes: 1 << 20, sync: false });
        c
    };
    let (_device, task) = Device::spawn(journaled()).unwrap();
    let err = Device::spawn(journaled()).unwrap_err();
    assert!(err.to_string().contains("offline journal"), "{err}");
    task.abort();
}
