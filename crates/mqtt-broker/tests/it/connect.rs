//! CONNECT and CONNACK, connect timeout, keep-alive, takeover, authentication (§3.1, §3.2, §4.13).

use std::num::NonZeroU16;

use mqtt_codec::{Packet, ProtocolVersion, QoS, ReasonCode, Will};
use tokio::time::{Duration, Instant};

use crate::{BrokerConfig, Client, TestAuth, TestBroker, V5, V311, connect, topic};

/// 5.0 [MQTT-3.2.2-9], [MQTT-3.2.2-21], §3.2.2.3 (Receive Maximum, Maximum Packet Size, Topic Alias
/// Maximum): a v5 CONNACK advertises the broker's limits, Maximum QoS when it is below 2, and a Server
/// Keep Alive when the client asked for more than the broker allows.
#[tokio::test(start_paused = true)]
async fn v5_connack_advertises_limits_mqtt_3_2_2_9() {
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

/// 3.1.1 [MQTT-3.1.4-4], [MQTT-3.2.2-1]: an accepted CONNECT gets return code 0; with Clean Session 1,
/// Session Present 0.
#[tokio::test(start_paused = true)]
async fn v311_connack_accepts_mqtt_3_1_4_4() {
    let broker = TestBroker::start();
    let (_client, connack) = broker.connect_with(connect(V311, "c1")).await;
    assert_eq!(connack.reason_code, ReasonCode::Success);
    assert!(!connack.session_present);
}

/// 5.0 §3.1.4 and 3.1.1 §3.1.4 (a SHOULD without statement id): a connection that sends no CONNECT
/// within `BrokerConfig::connect_timeout` is closed without CONNACK.
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

/// 5.0 and 3.1.1 [MQTT-3.1.0-1]: a first packet other than CONNECT closes the connection.
#[tokio::test(start_paused = true)]
async fn first_packet_must_be_connect_mqtt_3_1_0_1() {
    let broker = TestBroker::start();
    let mut client = Client::new(broker.socket(1024), V311);
    client.send(Packet::PingReq).await;
    assert!(client.try_recv().await.is_none());
}

/// 5.0 and 3.1.1 [MQTT-3.1.0-2]: a second CONNECT is a Protocol Error (v5: DISCONNECT 0x82).
#[tokio::test(start_paused = true)]
async fn second_connect_is_a_protocol_error_mqtt_3_1_0_2() {
    let broker = TestBroker::start();
    let mut client = broker.connect(V5, "c1").await;
    client.send(Packet::Connect(Box::new(connect(V5, "c1")))).await;
    let disconnect = client.expect_closed().await.unwrap();
    assert_eq!(disconnect.reason_code, ReasonCode::ProtocolError);
}

/// 3.1.1 [MQTT-3.1.2-2], 5.0 [MQTT-3.1.2-2]: an unsupported Protocol Level gets CONNACK return code 1
/// (0x84 in v5 terms, sent in the v3.1.1 form every version reads), then the connection closes.
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

/// 3.1.1 [MQTT-3.1.3-6], [MQTT-3.1.3-8]: an empty ClientId with Clean Session 0 is refused with return
/// code 2 and the connection closed; with Clean Session 1 the broker assigns one.
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

/// 5.0 [MQTT-3.1.3-6], [MQTT-3.1.3-7], [MQTT-3.2.2-16]: an empty ClientId gets a unique one, returned
/// as Assigned Client Identifier.
#[tokio::test(start_paused = true)]
async fn v5_empty_client_id_is_assigned_mqtt_3_2_2_16() {
    let broker = TestBroker::start();
    let (_client, connack) = broker.connect_with(connect(V5, "")).await;
    assert_eq!(connack.reason_code, ReasonCode::Success);
    let assigned = connack.properties.assigned_client_identifier.unwrap();
    assert!(!assigned.is_empty());
}

/// 3.1.1 [MQTT-3.1.2-24]; 5.0 [MQTT-3.1.2-22], [MQTT-3.2.2-22], [MQTT-3.12.4-1]: with no Server Keep
/// Alive the client's Keep Alive applies; any packet (here PINGREQ, answered by PINGRESP) restarts
/// it, and one and a half intervals without a packet close the connection (v5: DISCONNECT 0x8D).
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

/// 5.0 [MQTT-3.2.2-21], [MQTT-3.1.2-21], [MQTT-3.1.2-22]: a v5 client asking for no keep-alive is
/// given the broker's maximum as Server Keep Alive and held to one and a half times it.
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

/// 5.0 [MQTT-3.1.4-3]; 3.1.1 [MQTT-3.1.4-2]: a CONNECT with the ClientId of a connected client closes
/// the existing connection (v5: DISCONNECT 0x8E Session taken over).
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

/// 5.0 [MQTT-3.1.4-2], [MQTT-3.2.2-6], [MQTT-3.2.2-7], [MQTT-3.2.2-8]; 3.1.1 [MQTT-3.2.2-4],
/// [MQTT-3.2.2-5]: a refused CONNECT gets a CONNACK with the refusal's code and Session Present 0, then
/// the connection closes.
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

/// 5.0 [MQTT-3.1.4-2]: authorisation covers the will topic; a will the client may not publish refuses
/// the CONNECT (0x87 Not authorized).
#[tokio::test(start_paused = true)]
async fn will_topic_outside_the_acl_is_refused_mqtt_3_1_4_2() {
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

/// 5.0 [MQTT-4.12.0-1]: enhanced authentication is not supported, so any Authentication Method gets
/// CONNACK 0x8C (Bad authentication method) and the connection closes.
#[tokio::test(start_paused = true)]
async fn enhanced_authentication_is_refused_with_bad_authentication_method_mqtt_4_12_0_1() {
    let broker = TestBroker::start();
    let mut c = connect(V5, "c1");
    c.properties.authentication_method = Some(mqtt_codec::MqttString::new("SCRAM-SHA-1").unwrap());
    let (_client, connack) = broker.connect_with(c).await;
    assert_eq!(connack.reason_code, ReasonCode::BadAuthenticationMethod);
}

/// 5.0 [MQTT-3.2.2-15] (the client's duty) and §3.1.2.11.4: a packet larger than the Maximum Packet
/// Size the broker advertised gets DISCONNECT 0x95 (Packet too large, [MQTT-4.13.1-1]); v3.1.1 has no
/// way to say so, and the connection just closes.
#[tokio::test(start_paused = true)]
async fn oversized_packet_gets_disconnect_0x95() {
    for version in [V311, V5] {
        let broker = TestBroker::with_config(BrokerConfig {
            max_packet_size: std::num::NonZeroU32::new(64).unwrap(),
            ..BrokerConfig::default()
        });
        let mut client = broker.connect(version, "c1").await;
        let big: &'static str = Box::leak("x".repeat(100).into_boxed_str());
        client.send(Packet::Publish(crate::publish("t", big, QoS::AtMostOnce, 0))).await;
        let disconnect = client.expect_closed().await;
        match version {
            V5 => assert_eq!(disconnect.unwrap().reason_code, ReasonCode::PacketTooLarge),
            V311 => assert!(disconnect.is_none()),
        }
    }
}

/// 5.0 §3.14.2.1 (no statement id): at shutdown v5 clients get DISCONNECT 0x8B.
#[tokio::test(start_paused = true)]
async fn shutdown_sends_server_shutting_down() {
    let broker = TestBroker::start();
    let mut client = broker.connect(ProtocolVersion::V5, "c1").await;
    drop(broker);
    assert_eq!(client.expect_closed().await.unwrap().reason_code, ReasonCode::ServerShuttingDown);
}

/// 5.0 §3.1.4 and 3.1.1 §3.1.4 (no statement id): the connect timeout covers the whole CONNECT, so a
/// client that sends only part of one is closed at the timeout too.
#[tokio::test(start_paused = true)]
async fn partial_connect_is_dropped_after_connect_timeout() {
    let broker = TestBroker::with_config(BrokerConfig {
        connect_timeout: Duration::from_secs(3),
        ..BrokerConfig::default()
    });
    let mut client = Client::new(broker.socket(1024), V311);
    client.send_raw(&[0x10, 12, 0, 4, b'M', b'Q']).await;
    let start = Instant::now();
    assert!(client.try_recv().await.is_none());
    assert_eq!(start.elapsed(), Duration::from_secs(3));
}

/// 3.1.1 §3.1.2.10 and 5.0 [MQTT-3.2.2-22] (no Server Keep Alive, so the client's 0 applies): a Keep
/// Alive of 0 turns the timeout off. A v5 client gets 0 only from a broker whose
/// `BrokerConfig::max_keep_alive` is 0.
#[tokio::test(start_paused = true)]
async fn keep_alive_0_turns_the_timeout_off_mqtt_3_2_2_22() {
    for version in [V311, V5] {
        let broker =
            TestBroker::with_config(BrokerConfig { max_keep_alive: 0, ..BrokerConfig::default() });
        let (mut client, connack) = broker.connect_with(connect(version, "c1")).await;
        assert_eq!(connack.properties.server_keep_alive, None);
        tokio::time::sleep(Duration::from_secs(24 * 3600)).await;
        client.send(Packet::PingReq).await;
        assert_eq!(client.recv().await, Packet::PingResp);
    }
}

/// 3.1.1 [MQTT-3.1.2-24], 5.0 [MQTT-3.1.2-22]: any control packet restarts the keep-alive period, not
/// only PINGREQ.
#[tokio::test(start_paused = true)]
async fn any_packet_restarts_the_keep_alive_period_mqtt_3_1_2_22() {
    for version in [V311, V5] {
        let broker = TestBroker::start();
        let mut c = connect(version, "c1");
        c.keep_alive = 10;
        let (mut client, _) = broker.connect_with(c).await;
        tokio::time::sleep(Duration::from_secs(14)).await;
        client.send(Packet::Publish(crate::publish("t", "x", QoS::AtMostOnce, 0))).await;
        let start = Instant::now();
        client.expect_closed().await;
        assert_eq!(start.elapsed(), Duration::from_secs(15));
    }
}

/// 5.0 [MQTT-3.2.2-21], [MQTT-3.1.2-21], [MQTT-3.1.2-22]: a Keep Alive above
/// `BrokerConfig::max_keep_alive` is lowered to it, announced as Server Keep Alive, and enforced. v3.1.1
/// cannot be told, so a v3.1.1 client keeps its own value (a documented deviation).
#[tokio::test(start_paused = true)]
async fn keep_alive_above_the_maximum_is_lowered_for_v5_only_mqtt_3_2_2_21() {
    for (version, announced, closes_after) in [(V5, Some(20), 30), (V311, None, 90)] {
        let broker =
            TestBroker::with_config(BrokerConfig { max_keep_alive: 20, ..BrokerConfig::default() });
        let mut c = connect(version, "c1");
        c.keep_alive = 60;
        let (mut client, connack) = broker.connect_with(c).await;
        assert_eq!(connack.properties.server_keep_alive, announced);
        let start = Instant::now();
        client.expect_closed().await;
        assert_eq!(start.elapsed(), Duration::from_secs(closes_after));
    }
}

/// 5.0 [MQTT-3.2.2-9], [MQTT-3.2.2-10], [MQTT-3.2.2-11]: a broker limited to QoS 0 says so as
/// Maximum QoS, still accepts SUBSCRIBE at any requested QoS (granting 0), and answers a QoS 1 PUBLISH
/// with DISCONNECT 0x9B.
#[tokio::test(start_paused = true)]
async fn maximum_qos_0_is_advertised_and_enforced_mqtt_3_2_2_10() {
    let broker = TestBroker::with_config(BrokerConfig {
        maximum_qos: QoS::AtMostOnce,
        ..BrokerConfig::default()
    });
    let (mut client, connack) = broker.connect_with(connect(V5, "c1")).await;
    assert_eq!(connack.properties.maximum_qos, Some(QoS::AtMostOnce));
    let ack = client.subscribe("t", QoS::ExactlyOnce).await;
    assert_eq!(ack.reason_codes, vec![ReasonCode::Success]);
    client.send(Packet::Publish(crate::publish("t", "x", QoS::AtLeastOnce, 1))).await;
    assert_eq!(client.expect_closed().await.unwrap().reason_code, ReasonCode::QosNotSupported);
}

/// 5.0 [MQTT-3.2.2-12]: a will with a QoS above the broker's maximum refuses the CONNECT with 0x9B;
/// v3.1.1 has no such code and gets 3 (Server unavailable). Either way the connection closes
/// (3.1.1 [MQTT-3.2.2-5]).
#[tokio::test(start_paused = true)]
async fn will_qos_above_maximum_qos_is_refused_mqtt_3_2_2_12() {
    for (version, code) in
        [(V5, ReasonCode::QosNotSupported), (V311, ReasonCode::ServerUnavailable)]
    {
        let broker = TestBroker::with_config(BrokerConfig {
            maximum_qos: QoS::AtMostOnce,
            ..BrokerConfig::default()
        });
        let mut c = connect(version, "c1");
        c.will = Some(Will {
            topic: topic("wills/c1"),
            payload: "gone".into(),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Default::default(),
        });
        let (mut client, connack) = broker.connect_with(c).await;
        assert_eq!(connack.reason_code, code);
        assert!(!connack.session_present);
        assert!(client.try_recv().await.is_none());
    }
}

/// 5.0 [MQTT-3.1.4-6]; 3.1.1 [MQTT-3.1.4-5]: nothing a client sends after a refused CONNECT is
/// processed, even when it arrives in the same write.
#[tokio::test(start_paused = true)]
async fn nothing_after_a_refused_connect_is_processed_mqtt_3_1_4_6() {
    for version in [V311, V5] {
        let broker = TestBroker::with_auth(
            BrokerConfig::default(),
            TestAuth::Refuse(ReasonCode::NotAuthorized),
        );
        let mut spy = broker.handle.subscribe(crate::filter("#")).await.unwrap();
        let mut bytes = bytes::BytesMut::new();
        let mut retained = crate::publish("t", "x", QoS::AtMostOnce, 0);
        retained.retain = true;
        for packet in [Packet::Connect(Box::new(connect(version, "c1"))), Packet::Publish(retained)]
        {
            mqtt_codec::encode(&packet, version, &mut bytes).unwrap();
        }
        let mut client = Client::new(broker.socket(1024), version);
        client.send_raw(&bytes).await;
        assert!(
            matches!(client.recv().await, Packet::ConnAck(a) if a.reason_code == ReasonCode::NotAuthorized)
        );
        assert!(client.try_recv().await.is_none());
        assert!(spy.try_recv().is_err());
    }
}

/// 5.0 [MQTT-4.12.0-7] and [MQTT-4.13.1-1]: an AUTH packet from a client that gave no Authentication
/// Method is a Protocol Error: DISCONNECT 0x82.
#[tokio::test(start_paused = true)]
async fn auth_without_an_authentication_method_is_a_protocol_error_mqtt_4_12_0_7() {
    let broker = TestBroker::start();
    let mut client = broker.connect(V5, "c1").await;
    client.send(Packet::Auth(mqtt_codec::Auth::new(ReasonCode::ReAuthenticate))).await;
    assert_eq!(client.expect_closed().await.unwrap().reason_code, ReasonCode::ProtocolError);
}

/// 5.0 [MQTT-3.14.2-2]: the DISCONNECT packets the broker sends (here for a takeover and a keep-alive
/// timeout) never carry a Session Expiry Interval.
#[tokio::test(start_paused = true)]
async fn server_disconnect_carries_no_session_expiry_mqtt_3_14_2_2() {
    let broker = TestBroker::start();
    let mut c = connect(V5, "c1");
    c.properties.session_expiry_interval = Some(60);
    let (mut old, _) = broker.connect_with(c.clone()).await;
    c.keep_alive = 10;
    let (mut new, _) = broker.connect_with(c).await;
    for client in [&mut old, &mut new] {
        let disconnect = client.expect_closed().await.unwrap();
        assert_eq!(disconnect.properties.session_expiry_interval, None, "{disconnect:?}");
    }
}

/// 5.0 [MQTT-3.2.2-15], [MQTT-3.1.2-24] and §3.1.2.11.4: Maximum Packet Size counts the whole packet,
/// fixed header included, and a packet of exactly that size is allowed, in both directions.
#[tokio::test(start_paused = true)]
async fn a_packet_of_exactly_the_maximum_size_is_allowed_mqtt_3_2_2_15() {
    const MAX: u32 = 64;
    let broker = TestBroker::with_config(BrokerConfig {
        max_packet_size: std::num::NonZeroU32::new(MAX).unwrap(),
        ..BrokerConfig::default()
    });
    let mut c = connect(V5, "sub");
    c.properties.maximum_packet_size = std::num::NonZeroU32::new(MAX);
    let (mut sub, _) = broker.connect_with(c).await;
    sub.subscribe("t", QoS::AtMostOnce).await;
    let mut publ = broker.connect(V5, "pub").await;
    // A QoS 0 PUBLISH to "t" without properties: 2 bytes of fixed header, 3 of topic, 1 of property
    // length, then the payload.
    let exact: &'static str = Box::leak("x".repeat(MAX as usize - 6).into_boxed_str());
    let p = crate::publish("t", exact, QoS::AtMostOnce, 0);
    let len = mqtt_codec::encoded_len(&Packet::Publish(p.clone()), V5).unwrap();
    assert_eq!(len, MAX as usize);
    publ.send(Packet::Publish(p)).await;
    assert_eq!(sub.recv_publish().await.payload.len(), exact.len());
    let over: &'static str = Box::leak("x".repeat(MAX as usize - 5).into_boxed_str());
    publ.send(Packet::Publish(crate::publish("t", over, QoS::AtMostOnce, 0))).await;
    assert_eq!(publ.expect_closed().await.unwrap().reason_code, ReasonCode::PacketTooLarge);
}
