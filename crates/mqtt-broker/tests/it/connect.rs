//! CONNECT and CONNACK, connect timeout, keep-alive, takeover, authentication (§3.1, §3.2, §4.13).

use std::num::NonZeroU16;

use mqtt_codec::{Packet, ProtocolVersion, QoS, ReasonCode, Will};
use tokio::time::{Duration, Instant};

use crate::{BrokerConfig, Client, TestAuth, TestBroker, V5, V311, connect, topic};

#[tokio::test(start_paused = true)]
async fn v5_connack_advertises_limits_mqtt_3_2_2_3() {
    let config = BrokerConfig {
        maximum_qos: QoS::AtLeastOnce,
        receive_maximum: NonZeroU16::new(7).unwrap(),
        topic_alias_maximum: 5,
        max_keep_alive: 60,
        ..BrokerConfig::default()
    };
    let max_packet_size = config.max_packet_size;
    let broker = TestBroker::with_config(config);
    let mut c = connect(V5, "c1");
    c.keep_alive = 600;
    let (_client, connack) = broker.connect_with(c).await;
    assert_eq!(connack.reason_code, ReasonCode::Success);
    assert!(!connack.session_present);
    let p = &connack.properties;
    assert_eq!(p.receive_maximum, NonZeroU16::new(7));
    assert_eq!(p.maximum_qos, Some(QoS::AtLeastOnce));
    assert_eq!(p.maximum_packet_size, Some(max_packet_size));
    assert_eq!(p.topic_alias_maximum, Some(5));
    // [MQTT-3.2.2-21]: the client must use the Server Keep Alive.
    assert_eq!(p.server_keep_alive, Some(60));
}

#[tokio::test(start_paused = true)]
async fn v311_connack_accepts() {
    let broker = TestBroker::start();
    let (_client, connack) = broker.connect_with(connect(V311, "c1")).await;
    assert_eq!(connack.reason_code, ReasonCode::Success);
    assert!(!connack.session_present);
}

#[tokio::test(start_paused = true)]
async fn socket_without_connect_is_dropped_after_connect_timeout() {
    let broker = TestBroker::with_config(BrokerConfig {
        connect_timeout: Duration::from_secs(3),
        ..BrokerConfig::default()
    });
    let mut client = Client::new(broker.socket(1024), V5);
    let start = Instant::now();
    assert!(client.try_recv().await.is_none());
    assert_eq!(start.elapsed(), Duration::from_secs(3));
}

#[tokio::test(start_paused = true)]
async fn first_packet_must_be_connect_mqtt_3_1_0_1() {
    let broker = TestBroker::start();
    let mut client = Client::new(broker.socket(1024), V311);
    client.send(Packet::PingReq).await;
    assert!(client.try_recv().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn second_connect_is_a_protocol_error_mqtt_3_1_0_2() {
    let broker = TestBroker::start();
    let mut client = broker.connect(V5, "c1").await;
    client.send(Packet::Connect(Box::new(connect(V5, "c1")))).await;
    let disconnect = client.expect_closed().await.unwrap();
    assert_eq!(disconnect.reason_code, ReasonCode::ProtocolError);
}

#[tokio::test(start_paused = true)]
async fn unsupported_protocol_level_gets_return_code_1_mqtt_3_1_2_2() {
    let broker = TestBroker::start();
    let mut client = Client::new(broker.socket(1024), V311);
    // A CONNECT with protocol level 3 (MQTT 3.1).
    client.send_raw(&[0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 3, 2, 0, 0, 0, 0]).await;
    let mut raw = Vec::new();
    while let Some(packet) = client.try_recv().await {
        raw.push(packet);
    }
    match raw.as_slice() {
        [Packet::ConnAck(ack)] => {
            assert_eq!(ack.reason_code, ReasonCode::UnsupportedProtocolVersion)
        }
        other => panic!("expected one CONNACK, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn v311_empty_client_id_needs_clean_session_mqtt_3_1_3_8() {
    let broker = TestBroker::start();
    let mut c = connect(V311, "");
    c.clean_start = false;
    let (mut client, connack) = broker.connect_with(c).await;
    assert_eq!(connack.reason_code, ReasonCode::ClientIdentifierNotValid);
    assert!(client.try_recv().await.is_none());
    let (_client, connack) = broker.connect_with(connect(V311, "")).await;
    assert_eq!(connack.reason_code, ReasonCode::Success);
}

#[tokio::test(start_paused = true)]
async fn v5_empty_client_id_is_assigned_mqtt_3_2_2_16() {
    let broker = TestBroker::start();
    let (_client, connack) = broker.connect_with(connect(V5, "")).await;
    assert_eq!(connack.reason_code, ReasonCode::Success);
    let assigned = connack.properties.assigned_client_identifier.unwrap();
    assert!(!assigned.is_empty());
}

#[tokio::test(start_paused = true)]
async fn keep_alive_closes_after_one_and_a_half_intervals_mqtt_3_1_2_24() {
    for version in [V311, V5] {
        let broker = TestBroker::start();
        let mut c = connect(version, "c1");
        c.keep_alive = 10;
        let (mut client, _) = broker.connect_with(c).await;
        // Traffic within the window keeps the connection open.
        tokio::time::sleep(Duration::from_secs(14)).await;
        client.send(Packet::PingReq).await;
        assert_eq!(client.recv().await, Packet::PingResp);
        let start = Instant::now();
        let disconnect = client.expect_closed().await;
        assert_eq!(start.elapsed(), Duration::from_secs(15));
        if version == V5 {
            assert_eq!(disconnect.unwrap().reason_code, ReasonCode::KeepAliveTimeout);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn v5_server_keep_alive_applies_when_client_asks_for_none_mqtt_3_2_2_21() {
    let broker =
        TestBroker::with_config(BrokerConfig { max_keep_alive: 20, ..BrokerConfig::default() });
    let (mut client, connack) = broker.connect_with(connect(V5, "c1")).await;
    assert_eq!(connack.properties.server_keep_alive, Some(20));
    let start = Instant::now();
    assert_eq!(client.expect_closed().await.unwrap().reason_code, ReasonCode::KeepAliveTimeout);
    assert_eq!(start.elapsed(), Duration::from_secs(30));
}

#[tokio::test(start_paused = true)]
async fn takeover_disconnects_the_existing_client_mqtt_3_1_4_3() {
    for version in [V311, V5] {
        let broker = TestBroker::start();
        let mut old = broker.connect(version, "same").await;
        let mut new = broker.connect(version, "same").await;
        let disconnect = old.expect_closed().await;
        if version == V5 {
            assert_eq!(disconnect.unwrap().reason_code, ReasonCode::SessionTakenOver);
        } else {
            assert!(disconnect.is_none());
        }
        // The new connection works.
        new.send(Packet::PingReq).await;
        assert_eq!(new.recv().await, Packet::PingResp);
    }
}

#[tokio::test(start_paused = true)]
async fn authenticator_refusal_is_the_connack_reason_mqtt_3_2_2_8() {
    for (version, code) in
        [(V5, ReasonCode::BadUserNameOrPassword), (V311, ReasonCode::NotAuthorized)]
    {
        let broker = TestBroker::with_auth(BrokerConfig::default(), TestAuth::Refuse(code));
        let (mut client, connack) = broker.connect_with(connect(version, "c1")).await;
        assert_eq!(connack.reason_code, code);
        assert!(!connack.session_present); // [MQTT-3.2.2-6]
        assert!(client.try_recv().await.is_none()); // [MQTT-3.2.2-7]
    }
}

#[tokio::test(start_paused = true)]
async fn will_topic_outside_the_acl_is_refused() {
    let broker = TestBroker::with_auth(BrokerConfig::default(), TestAuth::Prefix("devices/d1/"));
    let mut c = connect(V5, "d1");
    c.will = Some(Will {
        topic: topic("devices/d2/status"),
        payload: "gone".into(),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Default::default(),
    });
    let (_client, connack) = broker.connect_with(c).await;
    assert_eq!(connack.reason_code, ReasonCode::NotAuthorized);
}

#[tokio::test(start_paused = true)]
async fn enhanced_authentication_is_refused_with_bad_authentication_method() {
    let broker = TestBroker::start();
    let mut c = connect(V5, "c1");
    c.properties.authentication_method = Some(mqtt_codec::MqttString::new("SCRAM-SHA-1").unwrap());
    let (_client, connack) = broker.connect_with(c).await;
    assert_eq!(connack.reason_code, ReasonCode::BadAuthenticationMethod);
}

#[tokio::test(start_paused = true)]
async fn oversized_packet_gets_disconnect_0x95() {
    let broker = TestBroker::with_config(BrokerConfig {
        max_packet_size: std::num::NonZeroU32::new(64).unwrap(),
        ..BrokerConfig::default()
    });
    let mut client = broker.connect(V5, "c1").await;
    let big: &'static str = Box::leak("x".repeat(100).into_boxed_str());
    client.send(Packet::Publish(crate::publish("t", big, QoS::AtMostOnce, 0))).await;
    assert_eq!(client.expect_closed().await.unwrap().reason_code, ReasonCode::PacketTooLarge);
}

#[tokio::test(start_paused = true)]
async fn shutdown_sends_server_shutting_down() {
    let broker = TestBroker::start();
    let mut client = broker.connect(ProtocolVersion::V5, "c1").await;
    drop(broker);
    assert_eq!(client.expect_closed().await.unwrap().reason_code, ReasonCode::ServerShuttingDown);
}
