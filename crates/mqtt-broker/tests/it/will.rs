//! Will messages (§3.1.2.5, §3.1.3.2): publication on abnormal close, deletion on normal disconnect,
//! will delay and takeover.

use mqtt_codec::{Connect, Disconnect, MqttString, Packet, ProtocolVersion, QoS, ReasonCode, Will};
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

/// 5.0 [MQTT-3.1.2-7], [MQTT-3.1.2-8]; 3.1.1 [MQTT-3.1.2-8]: a connection that closes without
/// DISCONNECT publishes its will, with the will's QoS.
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

/// 5.0 [MQTT-3.1.2-10], [MQTT-3.14.4-3]; 3.1.1 [MQTT-3.1.2-10], [MQTT-3.14.4-3]: DISCONNECT (v5:
/// with 0x00 Normal disconnection) deletes the will without publishing it.
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

/// 5.0 [MQTT-3.1.2-8] and §3.14.2.1: DISCONNECT 0x04 (Disconnect with Will Message) does not delete
/// the will, so it is published.
#[tokio::test(start_paused = true)]
async fn disconnect_with_will_message_publishes_it() {
    let broker = TestBroker::start();
    let mut rx = broker.handle.subscribe(filter("wills/#")).await.unwrap();
    let (mut client, _) = broker.connect_with(with_will(V5, "c", None, 0)).await;
    client.send(Packet::Disconnect(Disconnect::new(ReasonCode::DisconnectWithWillMessage))).await;
    assert_eq!(rx.recv().await.unwrap().payload, "gone");
}

/// 5.0 [MQTT-3.1.2-8]: with a Will Delay Interval, the will is published once the delay has passed
/// (the session lasting longer).
#[tokio::test(start_paused = true)]
async fn will_waits_for_its_delay_mqtt_3_1_2_8() {
    let broker = TestBroker::start();
    let mut rx = broker.handle.subscribe(filter("wills/#")).await.unwrap();
    let (client, _) = broker.connect_with(with_will(V5, "c", Some(30), 3600)).await;
    drop(client);
    tokio::time::sleep(Duration::from_secs(29)).await;
    assert!(rx.try_recv().is_err());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rx.try_recv().unwrap().payload, "gone");
}

/// 5.0 [MQTT-3.1.2-8] (the session-end rule): a session that ends before the Will Delay Interval has
/// passed publishes the will when it ends.
#[tokio::test(start_paused = true)]
async fn will_is_published_when_the_session_ends_before_the_delay_mqtt_3_1_2_8() {
    let broker = TestBroker::start();
    let mut rx = broker.handle.subscribe(filter("wills/#")).await.unwrap();
    let (client, _) = broker.connect_with(with_will(V5, "c", Some(300), 10)).await;
    drop(client);
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert!(rx.try_recv().is_err());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rx.try_recv().unwrap().payload, "gone");
}

/// 5.0 [MQTT-3.1.3-9]: a new connection to the session before the Will Delay Interval has passed
/// means the will is never sent.
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

/// 5.0 [MQTT-3.1.4-3] with [MQTT-3.1.2-8] and [MQTT-3.1.3-9]: a takeover closes the old connection, so
/// a will without delay is published; a delayed will of a session the new connection resumes is
/// cancelled.
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

/// 5.0 [MQTT-3.1.2-14], [MQTT-3.1.2-15]; 3.1.1 [MQTT-3.1.2-16], [MQTT-3.1.2-17]: the will is published
/// as a retained message exactly when Will Retain is set.
#[tokio::test(start_paused = true)]
async fn will_retain_decides_whether_the_will_is_retained_mqtt_3_1_2_15() {
    for version in [V311, V5] {
        for retain in [false, true] {
            let broker = TestBroker::start();
            let mut c = with_will(version, "c", None, 0);
            if let Some(will) = &mut c.will {
                will.retain = retain;
            }
            let (client, _) = broker.connect_with(c).await;
            drop(client);
            // Only retained messages reach a subscription made after the will was published.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let mut sub = broker.connect(version, "sub").await;
            sub.subscribe("wills/#", QoS::AtMostOnce).await;
            if retain {
                let got = sub.recv_publish().await;
                assert_eq!((got.payload.as_ref(), got.retain), (&b"gone"[..], true));
            } else {
                sub.expect_silence().await;
            }
        }
    }
}

/// 5.0 [MQTT-3.1.3-10] with [MQTT-3.3.2-17], [MQTT-3.3.2-18]: the will's properties reach
/// subscribers, User Properties in their order; the Will Delay Interval is not one of them.
#[tokio::test(start_paused = true)]
async fn will_properties_reach_subscribers_in_order_mqtt_3_1_3_10() {
    let broker = TestBroker::start();
    let mut sub = broker.connect(V5, "sub").await;
    sub.subscribe("wills/#", QoS::AtMostOnce).await;
    let mut c = with_will(V5, "c", Some(1), 60);
    let pair = |a: &str, b: &str| (MqttString::new(a).unwrap(), MqttString::new(b).unwrap());
    let properties = {
        let will = c.will.as_mut().unwrap();
        will.properties.user_properties = vec![pair("k", "2"), pair("a", "b"), pair("k", "1")];
        will.properties.content_type = Some(MqttString::new("text/plain").unwrap());
        will.properties.response_topic = Some(topic("replies/c"));
        will.properties.correlation_data = Some("42".into());
        let mut sent = will.properties.clone();
        sent.will_delay_interval = None;
        sent
    };
    let (client, _) = broker.connect_with(c).await;
    drop(client);
    let got = sub.recv_publish().await;
    assert_eq!(got.properties, properties);
}

/// 3.1.1 [MQTT-3.1.2-8] ("the Client fails to communicate within the Keep Alive time"), 5.0
/// [MQTT-3.1.2-8]: a keep-alive timeout publishes the will.
#[tokio::test(start_paused = true)]
async fn keep_alive_timeout_publishes_the_will_mqtt_3_1_2_8() {
    for version in [V311, V5] {
        let broker = TestBroker::start();
        let mut rx = broker.handle.subscribe(filter("wills/#")).await.unwrap();
        let mut c = with_will(version, "c", None, 0);
        c.keep_alive = 10;
        let (mut client, _) = broker.connect_with(c).await;
        client.expect_closed().await;
        assert_eq!(rx.recv().await.unwrap().payload, "gone");
    }
}

/// 3.1.1 [MQTT-3.1.2-8] ("the Server closes the Network Connection because of a protocol error"), 5.0
/// [MQTT-3.1.2-8]: closing a connection for a protocol error (here a second CONNECT,
/// [MQTT-3.1.0-2]) publishes the will.
#[tokio::test(start_paused = true)]
async fn protocol_error_publishes_the_will_mqtt_3_1_2_8() {
    for version in [V311, V5] {
        let broker = TestBroker::start();
        let mut rx = broker.handle.subscribe(filter("wills/#")).await.unwrap();
        let (mut client, _) = broker.connect_with(with_will(version, "c", None, 0)).await;
        client.send(Packet::Connect(Box::new(connect(version, "c")))).await;
        client.expect_closed().await;
        assert_eq!(rx.recv().await.unwrap().payload, "gone");
    }
}

/// 5.0 [MQTT-3.1.2-8] with §3.14.2.2.2: a DISCONNECT that keeps the will (0x04) and sets the Session
/// Expiry Interval to 0 ends the session at once, so a delayed will is published at once.
#[tokio::test(start_paused = true)]
async fn ending_the_session_on_disconnect_publishes_a_delayed_will_at_once_mqtt_3_1_2_8() {
    let broker = TestBroker::start();
    let mut rx = broker.handle.subscribe(filter("wills/#")).await.unwrap();
    let (mut client, _) = broker.connect_with(with_will(V5, "c", Some(300), 3600)).await;
    let mut d = Disconnect::new(ReasonCode::DisconnectWithWillMessage);
    d.properties.session_expiry_interval = Some(0);
    client.send(Packet::Disconnect(d)).await;
    client.expect_closed().await;
    let start = tokio::time::Instant::now();
    assert_eq!(rx.recv().await.unwrap().payload, "gone");
    assert_eq!(start.elapsed(), Duration::ZERO);
}
