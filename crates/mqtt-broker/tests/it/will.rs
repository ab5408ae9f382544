//! Will messages (§3.1.2.5, §3.1.3.2): publication on abnormal close, deletion on normal disconnect,
//! will delay and takeover.

use mqtt_codec::{Connect, Disconnect, Packet, ProtocolVersion, QoS, ReasonCode, Will};
use tokio::time::Duration;

use crate::{TestBroker, V5, V311, connect, filter, topic};

fn with_will(version: ProtocolVersion, id: &str, delay: Option<u32>, expiry: u32) -> Connect {
    let mut c = connect(version, id);
    let mut will = Will {
        topic: topic("wills/x"),
        payload: "gone".into(),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
    };
    will.properties.will_delay_interval = delay;
    c.will = Some(will);
    if version == V5 {
        c.properties.session_expiry_interval = Some(expiry);
    }
    c
}

#[tokio::test(start_paused = true)]
async fn will_is_published_when_the_connection_drops_mqtt_3_1_2_8() {
    for version in [V311, V5] {
        let broker = TestBroker::start();
        let mut rx = broker.handle.subscribe(filter("wills/#")).await.unwrap();
        let (client, _) = broker.connect_with(with_will(version, "c", None, 0)).await;
        drop(client);
        let will = rx.recv().await.unwrap();
        assert_eq!(will.payload, "gone");
        assert_eq!(will.qos, QoS::AtLeastOnce);
    }
}

#[tokio::test(start_paused = true)]
async fn will_is_deleted_by_normal_disconnect_mqtt_3_1_2_10() {
    for version in [V311, V5] {
        let broker = TestBroker::start();
        let mut rx = broker.handle.subscribe(filter("wills/#")).await.unwrap();
        let (client, _) = broker.connect_with(with_will(version, "c", None, 0)).await;
        client.disconnect().await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(rx.try_recv().is_err());
    }
}

#[tokio::test(start_paused = true)]
async fn disconnect_with_will_message_publishes_it() {
    let broker = TestBroker::start();
    let mut rx = broker.handle.subscribe(filter("wills/#")).await.unwrap();
    let (mut client, _) = broker.connect_with(with_will(V5, "c", None, 0)).await;
    client.send(Packet::Disconnect(Disconnect::new(ReasonCode::DisconnectWithWillMessage))).await;
    assert_eq!(rx.recv().await.unwrap().payload, "gone");
}

#[tokio::test(start_paused = true)]
async fn will_waits_for_its_delay_mqtt_3_1_3_9() {
    let broker = TestBroker::start();
    let mut rx = broker.handle.subscribe(filter("wills/#")).await.unwrap();
    let (client, _) = broker.connect_with(with_will(V5, "c", Some(30), 3600)).await;
    drop(client);
    tokio::time::sleep(Duration::from_secs(29)).await;
    assert!(rx.try_recv().is_err());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rx.try_recv().unwrap().payload, "gone");
}

#[tokio::test(start_paused = true)]
async fn will_is_published_when_the_session_ends_before_the_delay_mqtt_3_1_3_9() {
    let broker = TestBroker::start();
    let mut rx = broker.handle.subscribe(filter("wills/#")).await.unwrap();
    let (client, _) = broker.connect_with(with_will(V5, "c", Some(300), 10)).await;
    drop(client);
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert!(rx.try_recv().is_err());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rx.try_recv().unwrap().payload, "gone");
}

#[tokio::test(start_paused = true)]
async fn reconnecting_within_the_will_delay_cancels_the_will_mqtt_3_1_3_9() {
    let broker = TestBroker::start();
    let mut rx = broker.handle.subscribe(filter("wills/#")).await.unwrap();
    let (client, _) = broker.connect_with(with_will(V5, "c", Some(30), 3600)).await;
    drop(client);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let mut c = connect(V5, "c");
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(3600);
    let (_client, ack) = broker.connect_with(c).await;
    assert!(ack.session_present);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(rx.try_recv().is_err());
}

#[tokio::test(start_paused = true)]
async fn takeover_publishes_a_will_without_delay_but_not_a_delayed_one_mqtt_3_1_4_3() {
    let broker = TestBroker::start();
    let mut rx = broker.handle.subscribe(filter("wills/#")).await.unwrap();
    // No delay: the will goes out because the old connection closed.
    let (_old, _) = broker.connect_with(with_will(V5, "a", None, 3600)).await;
    let mut c = with_will(V5, "a", None, 3600);
    c.will = None;
    c.clean_start = false;
    let (_new, _) = broker.connect_with(c.clone()).await;
    assert_eq!(rx.recv().await.unwrap().payload, "gone");
    // With a delay and a session that continues, the new connection cancels it.
    let (_old, _) = broker.connect_with(with_will(V5, "b", Some(30), 3600)).await;
    let mut c = c;
    c.client_id = mqtt_codec::ClientId::new("b").unwrap();
    let (_new, _) = broker.connect_with(c).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(rx.try_recv().is_err());
}
