//! Sessions: clean start, session present, offline queues, redelivery, expiry (§3.1.2.4, §3.2.2.1.1,
//! §4.1, §4.4).

use mqtt_codec::{Delivery, Packet, PubRec, PubRel, QoS};
use tokio::time::Duration;

use crate::{TestBroker, V5, V311, connect};

fn persistent(version: mqtt_codec::ProtocolVersion, id: &str, clean: bool) -> mqtt_codec::Connect {
    let mut c = connect(version, id);
    c.clean_start = clean;
    if version == V5 {
        c.properties.session_expiry_interval = Some(3600);
    }
    c
}

#[tokio::test(start_paused = true)]
async fn session_present_and_offline_queue_mqtt_3_2_2_2_and_3_2_2_3() {
    for version in [V311, V5] {
        let broker = TestBroker::start();
        let (mut sub, ack) = broker.connect_with(persistent(version, "s", false)).await;
        assert!(!ack.session_present);
        sub.subscribe("t", QoS::AtLeastOnce).await;
        sub.disconnect().await;
        broker.handle.publish(crate::handle::message("t", "q1", QoS::AtLeastOnce)).await.unwrap();
        broker.handle.publish(crate::handle::message("t", "q0", QoS::AtMostOnce)).await.unwrap();
        let (mut sub, ack) = broker.connect_with(persistent(version, "s", false)).await;
        assert!(ack.session_present);
        let got = sub.recv_publish().await;
        assert_eq!(got.payload, "q1");
        sub.puback(got.delivery.packet_id().unwrap()).await;
        // QoS 0 messages are not queued for offline sessions.
        sub.expect_silence().await;
    }
}

#[tokio::test(start_paused = true)]
async fn clean_start_discards_the_session_mqtt_3_1_2_4() {
    for version in [V311, V5] {
        let broker = TestBroker::start();
        let (mut sub, _) = broker.connect_with(persistent(version, "s", false)).await;
        sub.subscribe("t", QoS::AtLeastOnce).await;
        sub.disconnect().await;
        let (mut sub, ack) = broker.connect_with(persistent(version, "s", true)).await;
        assert!(!ack.session_present);
        broker.handle.publish(crate::handle::message("t", "x", QoS::AtLeastOnce)).await.unwrap();
        sub.expect_silence().await;
    }
}

#[tokio::test(start_paused = true)]
async fn v311_clean_session_ends_with_the_connection_mqtt_3_1_2_6() {
    let broker = TestBroker::start();
    let (mut sub, _) = broker.connect_with(connect(V311, "s")).await;
    sub.subscribe("t", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let (_sub, ack) = broker.connect_with(persistent(V311, "s", false)).await;
    assert!(!ack.session_present);
}

#[tokio::test(start_paused = true)]
async fn unacknowledged_messages_are_resent_with_dup_on_reconnect_mqtt_4_4_0_1() {
    for version in [V311, V5] {
        let broker = TestBroker::start();
        let (mut sub, _) = broker.connect_with(persistent(version, "s", false)).await;
        sub.subscribe("t", QoS::ExactlyOnce).await;
        broker.handle.publish(crate::handle::message("t", "one", QoS::AtLeastOnce)).await.unwrap();
        broker.handle.publish(crate::handle::message("t", "two", QoS::ExactlyOnce)).await.unwrap();
        broker
            .handle
            .publish(crate::handle::message("t", "three", QoS::ExactlyOnce))
            .await
            .unwrap();
        let one = sub.recv_publish().await;
        let two = sub.recv_publish().await;
        let three = sub.recv_publish().await;
        // "two" reaches PUBREL; "one" and "three" stay unacknowledged.
        let two_id = two.delivery.packet_id().unwrap();
        sub.send(Packet::PubRec(PubRec::new(two_id))).await;
        assert_eq!(sub.recv().await, Packet::PubRel(PubRel::new(two_id)));
        drop(sub); // network failure
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (mut sub, ack) = broker.connect_with(persistent(version, "s", false)).await;
        assert!(ack.session_present);
        let again = sub.recv_publish().await;
        assert_eq!(again.payload, "one");
        assert_eq!(
            again.delivery,
            Delivery::AtLeastOnce { packet_id: one.delivery.packet_id().unwrap(), dup: true }
        );
        assert_eq!(sub.recv().await, Packet::PubRel(PubRel::new(two_id)));
        let again = sub.recv_publish().await;
        assert_eq!(again.payload, "three");
        assert_eq!(
            again.delivery,
            Delivery::ExactlyOnce { packet_id: three.delivery.packet_id().unwrap(), dup: true }
        );
    }
}

#[tokio::test(start_paused = true)]
async fn session_expires_after_its_interval_mqtt_3_1_2_11_2() {
    let broker = TestBroker::start();
    let mut c = connect(V5, "s");
    c.properties.session_expiry_interval = Some(60);
    let (sub, _) = broker.connect_with(c.clone()).await;
    sub.disconnect().await;
    tokio::time::sleep(Duration::from_secs(59)).await;
    c.clean_start = false;
    let (sub, ack) = broker.connect_with(c.clone()).await;
    assert!(ack.session_present);
    sub.disconnect().await;
    tokio::time::sleep(Duration::from_secs(61)).await;
    let (_sub, ack) = broker.connect_with(c).await;
    assert!(!ack.session_present);
}

#[tokio::test(start_paused = true)]
async fn disconnect_cannot_extend_a_zero_expiry_mqtt_3_14_2_2() {
    let broker = TestBroker::start();
    let mut client = broker.connect(V5, "s").await;
    let mut d = mqtt_codec::Disconnect::new(mqtt_codec::ReasonCode::Success);
    d.properties.session_expiry_interval = Some(60);
    client.send(Packet::Disconnect(d)).await;
    assert_eq!(
        client.expect_closed().await.unwrap().reason_code,
        mqtt_codec::ReasonCode::ProtocolError
    );
}

#[tokio::test(start_paused = true)]
async fn takeover_keeps_the_session_mqtt_3_1_4_3() {
    let broker = TestBroker::start();
    let (mut old, _) = broker.connect_with(persistent(V5, "s", true)).await;
    old.subscribe("t", QoS::AtLeastOnce).await;
    let (mut new, ack) = broker.connect_with(persistent(V5, "s", false)).await;
    assert!(ack.session_present);
    old.expect_closed().await;
    broker.handle.publish(crate::handle::message("t", "x", QoS::AtLeastOnce)).await.unwrap();
    assert_eq!(new.recv_publish().await.payload, "x");
}
