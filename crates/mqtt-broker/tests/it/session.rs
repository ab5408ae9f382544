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

/// 5.0 [MQTT-3.1.2-5], [MQTT-3.1.2-6], [MQTT-3.1.2-23], [MQTT-3.2.2-3], [MQTT-4.5.0-1]; 3.1.1
/// [MQTT-3.1.2-4], [MQTT-3.1.2-5], [MQTT-3.2.2-2], [MQTT-3.2.2-3]: Clean Start 0 creates a session
/// when there is none (Session Present 0) and resumes it later (Session Present 1); the session keeps
/// the QoS 1 and 2 messages that arrive while it is offline. QoS 0 ones are not kept (3.1.1 "MAY").
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

/// 5.0 [MQTT-3.1.2-4], [MQTT-3.2.2-2]; 3.1.1 [MQTT-3.1.2-6], [MQTT-3.2.2-1]: Clean Start (Clean
/// Session) 1 discards the existing session and answers Session Present 0.
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

/// 3.1.1 [MQTT-3.1.2-6]: a Clean Session 1 session lasts as long as its connection.
#[tokio::test(start_paused = true)]
async fn v311_clean_session_ends_with_the_connection_mqtt_3_1_2_6() {
    let broker = TestBroker::start();
    let (mut sub, _) = broker.connect_with(connect(V311, "s")).await;
    sub.subscribe("t", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let (_sub, ack) = broker.connect_with(persistent(V311, "s", false)).await;
    assert!(!ack.session_present);
}

/// 5.0 and 3.1.1 [MQTT-4.4.0-1], 5.0 [MQTT-3.3.1-1], [MQTT-4.3.3-6]; 3.1.1 [MQTT-3.3.1-1],
/// [MQTT-4.3.3-1]: a resumed session gets its unacknowledged PUBLISH packets again with their original
/// Packet Identifiers and DUP set, and its unfinished PUBREL packets, not the PUBLISH they released.
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

/// 5.0 [MQTT-3.1.2-23], [MQTT-4.1.0-2]: the session outlives its connection for the Session Expiry
/// Interval and is discarded once it has passed.
#[tokio::test(start_paused = true)]
async fn session_expires_after_its_interval_mqtt_4_1_0_2() {
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

/// 5.0 §3.14.2.2.2 (no statement id): a client whose session had expiry 0 may not set a non-zero
/// Session Expiry Interval on DISCONNECT; that is a Protocol Error (DISCONNECT 0x82,
/// [MQTT-4.13.1-1]).
#[tokio::test(start_paused = true)]
async fn disconnect_cannot_extend_a_zero_expiry() {
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

/// 5.0 [MQTT-3.1.4-3], [MQTT-3.1.2-5]; 3.1.1 [MQTT-3.1.4-2], [MQTT-3.1.2-4]: a takeover with Clean
/// Start 0 closes the old connection and continues its session (subscriptions included).
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

#[tokio::test(start_paused = true)]
async fn a_resumed_session_keeps_only_what_the_new_identity_may_see() {
    // A session is found by client identifier; its subscriptions and waiting messages were checked
    // against whoever made them. Another identity resuming it must not inherit them.
    let broker = crate::TestBroker::with_auth(
        mqtt_broker::BrokerConfig::default(),
        crate::TestAuth::PrefixFromUserName,
    );
    for version in [V311, V5] {
        let as_user = |user: &str, clean: bool| {
            let mut c = persistent(version, "shared-id", clean);
            c.username = Some(mqtt_codec::MqttString::new(user).unwrap());
            c
        };
        let (first, _) = broker.connect_with(as_user("a/", true)).await;
        first.disconnect().await;
        let (mut first, _) = broker.connect_with(as_user("a/", false)).await;
        first.subscribe("a/#", QoS::AtLeastOnce).await;
        first.disconnect().await;
        broker
            .handle
            .publish(crate::handle::message("a/x", "secret", QoS::AtLeastOnce))
            .await
            .unwrap();

        let (mut second, ack) = broker.connect_with(as_user("b/", false)).await;
        assert!(ack.session_present);
        second.expect_silence().await;
        broker
            .handle
            .publish(crate::handle::message("a/y", "secret", QoS::AtLeastOnce))
            .await
            .unwrap();
        second.expect_silence().await;
        // Its own subscriptions work as usual.
        second.subscribe("b/#", QoS::AtLeastOnce).await;
        broker
            .handle
            .publish(crate::handle::message("b/z", "mine", QoS::AtLeastOnce))
            .await
            .unwrap();
        assert_eq!(second.recv_publish().await.payload, "mine");
        second.disconnect().await;
        // Clean up for the next version.
        let (c, _) = broker.connect_with(as_user("b/", true)).await;
        c.disconnect().await;
    }
}

/// 5.0 [MQTT-3.1.2-23], [MQTT-4.1.0-2]: a v5 session without a Session Expiry Interval (0) ends with
/// its connection even with Clean Start 0.
#[tokio::test(start_paused = true)]
async fn v5_session_without_expiry_ends_with_the_connection_mqtt_3_1_2_23() {
    let broker = TestBroker::start();
    let mut c = connect(V5, "s");
    c.clean_start = false;
    let (mut sub, _) = broker.connect_with(c.clone()).await;
    sub.subscribe("t", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    broker.handle.publish(crate::handle::message("t", "x", QoS::AtLeastOnce)).await.unwrap();
    let (mut sub, ack) = broker.connect_with(c).await;
    assert!(!ack.session_present);
    sub.expect_silence().await;
}

/// 5.0 §3.14.2.2.2 and [MQTT-4.1.0-2]: a Session Expiry Interval sent on DISCONNECT replaces the one
/// from CONNECT; 0 ends the session with the connection.
#[tokio::test(start_paused = true)]
async fn disconnect_can_end_the_session_with_expiry_0_mqtt_4_1_0_2() {
    let broker = TestBroker::start();
    let (mut sub, _) = broker.connect_with(persistent(V5, "s", true)).await;
    sub.subscribe("t", QoS::AtLeastOnce).await;
    let mut d = mqtt_codec::Disconnect::new(mqtt_codec::ReasonCode::Success);
    d.properties.session_expiry_interval = Some(0);
    sub.send(Packet::Disconnect(d)).await;
    assert!(sub.expect_closed().await.is_none());
    let (_sub, ack) = broker.connect_with(persistent(V5, "s", false)).await;
    assert!(!ack.session_present);
}

/// 5.0 §3.2.2.3.2 (no statement id): the broker grants at most `BrokerConfig::max_session_expiry`,
/// says so in the CONNACK, and holds the session to it.
#[tokio::test(start_paused = true)]
async fn session_expiry_above_the_maximum_is_lowered_and_announced() {
    let broker = TestBroker::with_config(mqtt_broker::BrokerConfig {
        max_session_expiry: 60,
        ..mqtt_broker::BrokerConfig::default()
    });
    let (sub, ack) = broker.connect_with(persistent(V5, "s", true)).await;
    assert_eq!(ack.properties.session_expiry_interval, Some(60));
    sub.disconnect().await;
    tokio::time::sleep(Duration::from_secs(61)).await;
    let (_sub, ack) = broker.connect_with(persistent(V5, "s", false)).await;
    assert!(!ack.session_present);
}

/// 5.0 [MQTT-3.1.4-3], [MQTT-3.1.2-4]; 3.1.1 [MQTT-3.1.4-2], [MQTT-3.1.2-6]: a takeover with Clean
/// Start 1 closes the old connection and starts a new session: Session Present 0, no subscriptions.
#[tokio::test(start_paused = true)]
async fn takeover_with_clean_start_discards_the_session_mqtt_3_1_4_3() {
    for version in [V311, V5] {
        let broker = TestBroker::start();
        let (mut old, _) = broker.connect_with(persistent(version, "s", true)).await;
        old.subscribe("t", QoS::AtLeastOnce).await;
        let (mut new, ack) = broker.connect_with(persistent(version, "s", true)).await;
        assert!(!ack.session_present);
        old.expect_closed().await;
        broker.handle.publish(crate::handle::message("t", "x", QoS::AtLeastOnce)).await.unwrap();
        new.expect_silence().await;
    }
}

/// 3.1.1 [MQTT-3.1.2-5], 5.0 [MQTT-4.5.0-1] and [MQTT-4.6.0-6], bounded by
/// `BrokerConfig::max_queued_messages`: an offline session keeps the oldest messages up to the limit,
/// in order, and drops later ones.
#[tokio::test(start_paused = true)]
async fn offline_queue_keeps_the_oldest_messages_up_to_its_limit_mqtt_3_1_2_5() {
    for version in [V311, V5] {
        let broker = TestBroker::with_config(mqtt_broker::BrokerConfig {
            max_queued_messages: 3,
            ..mqtt_broker::BrokerConfig::default()
        });
        let (mut sub, _) = broker.connect_with(persistent(version, "s", false)).await;
        sub.subscribe("t", QoS::AtLeastOnce).await;
        sub.disconnect().await;
        for payload in ["1", "2", "3", "4", "5"] {
            let m = crate::handle::message("t", payload, QoS::AtLeastOnce);
            broker.handle.publish(m).await.unwrap();
        }
        let (mut sub, ack) = broker.connect_with(persistent(version, "s", false)).await;
        assert!(ack.session_present);
        for payload in ["1", "2", "3"] {
            let got = sub.recv_publish().await;
            assert_eq!(got.payload, payload);
            sub.puback(got.delivery.packet_id().unwrap()).await;
        }
        sub.expect_silence().await;
    }
}
