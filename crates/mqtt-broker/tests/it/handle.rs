//! In-process publish and subscribe through `BrokerHandle` (the internal identity).

use bytes::Bytes;
use mqtt_broker::Message;
use mqtt_codec::{Packet, QoS, ReasonCode, Will};

use crate::{TestBroker, V5, V311, connect, filter, publish, topic};

/// A message for `BrokerHandle::publish`.
pub(crate) fn message(t: &str, payload: &'static str, qos: QoS) -> Message {
    let mut m = Message::new(topic(t), Bytes::from_static(payload.as_bytes()));
    m.qos = qos;
    m
}

pub(crate) fn message_owned(t: &str, payload: String, qos: QoS) -> Message {
    let mut m = Message::new(topic(t), payload);
    m.qos = qos;
    m
}

#[tokio::test(start_paused = true)]
async fn internal_subscribers_receive_client_messages() {
    let broker = TestBroker::start();
    let mut rx = broker.handle.subscribe(filter("devices/+/telemetry")).await.unwrap();
    let mut client = broker.connect(V5, "d1").await;
    client.publish(publish("devices/d1/telemetry", "42", QoS::AtLeastOnce, 1)).await;
    let got = rx.recv().await.unwrap();
    assert_eq!(got.topic, topic("devices/d1/telemetry"));
    assert_eq!(got.payload, "42");
    assert_eq!(got.qos, QoS::AtLeastOnce);
}

#[tokio::test(start_paused = true)]
async fn internal_publish_reaches_clients() {
    let broker = TestBroker::start();
    let mut client = broker.connect(V5, "d1").await;
    client.subscribe("devices/d1/commands/#", QoS::AtLeastOnce).await;
    broker
        .handle
        .publish(message("devices/d1/commands/reboot", "now", QoS::AtLeastOnce))
        .await
        .unwrap();
    let got = client.recv_publish().await;
    assert_eq!(got.payload, "now");
}

#[tokio::test(start_paused = true)]
async fn dropping_the_receiver_ends_an_internal_subscription() {
    let broker = TestBroker::start();
    let rx = broker.handle.subscribe(filter("t")).await.unwrap();
    drop(rx);
    let mut client = broker.connect(V5, "c").await;
    client.send(Packet::Publish(publish("t", "x", QoS::AtLeastOnce, 1))).await;
    // The first message finds the closed receiver and removes the subscription.
    assert!(matches!(client.recv().await, Packet::PubAck(_)));
    client.send(Packet::Publish(publish("t", "x", QoS::AtLeastOnce, 2))).await;
    match client.recv().await {
        Packet::PubAck(ack) => {
            assert_eq!(ack.reason_code, mqtt_codec::ReasonCode::NoMatchingSubscribers);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn disconnect_client_closes_the_connection_and_publishes_the_will() {
    for version in [V311, V5] {
        let broker = TestBroker::start();
        let mut wills = broker.handle.subscribe(filter("wills/#")).await.unwrap();
        let mut c = connect(version, "dev-1");
        c.will = Some(Will {
            topic: crate::topic("wills/dev-1"),
            payload: "gone".into(),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Default::default(),
        });
        let (mut client, connack) = broker.connect_with(c).await;
        assert_eq!(connack.reason_code, ReasonCode::Success);
        let mut other = broker.connect(version, "dev-2").await;

        let found = broker
            .handle
            .disconnect_client("dev-1", ReasonCode::AdministrativeAction)
            .await
            .unwrap();
        assert!(found);
        // v5: DISCONNECT with the given reason; v3.1.1 has no server DISCONNECT, the socket closes.
        let disconnect = client.expect_closed().await;
        match version {
            V5 => assert_eq!(disconnect.unwrap().reason_code, ReasonCode::AdministrativeAction),
            V311 => assert!(disconnect.is_none()),
        }
        // A server-initiated close publishes the will ([MQTT-3.1.2-8]).
        assert_eq!(wills.recv().await.unwrap().payload, "gone");
        // Other clients are not affected.
        other.send(Packet::PingReq).await;
        assert!(matches!(other.recv().await, Packet::PingResp));
    }
}

#[tokio::test(start_paused = true)]
async fn disconnect_client_of_unknown_client_reports_none() {
    let broker = TestBroker::start();
    let _client = broker.connect(V5, "dev-1").await;
    let found =
        broker.handle.disconnect_client("nobody", ReasonCode::AdministrativeAction).await.unwrap();
    assert!(!found);
}
