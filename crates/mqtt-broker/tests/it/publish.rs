//! PUBLISH in both directions: QoS flows, flow control, aliases, expiry, properties, ACL (§3.3 to §3.7,
//! §4.3, §4.9).

use std::num::{NonZeroU16, NonZeroU32};

use mqtt_codec::{Delivery, MqttString, Packet, PubComp, PubRec, PubRel, QoS, ReasonCode};
use tokio::time::Duration;

use crate::{BrokerConfig, TestAuth, TestBroker, V5, V311, connect, pid, publish, topic};

/// 5.0 [MQTT-3.8.4-8], [MQTT-3.3.4-1], [MQTT-4.3.2-4], [MQTT-4.3.3-8], [MQTT-4.3.3-11]; 3.1.1
/// [MQTT-3.8.4-6], [MQTT-3.3.4-1], [MQTT-4.3.2-2], [MQTT-4.3.3-2]: the server answers each QoS as the
/// protocol says, with the publisher's Packet Identifier, and delivers at the lower of the published
/// and the granted QoS.
#[tokio::test(start_paused = true)]
async fn qos_0_1_2_are_delivered_at_the_lower_of_published_and_granted_qos_mqtt_3_8_4_8() {
    for version in [V311, V5] {
        let broker = TestBroker::start();
        let mut sub = broker.connect(version, "sub").await;
        sub.subscribe("t/+", QoS::AtLeastOnce).await;
        let mut publ = broker.connect(version, "pub").await;
        for (qos, id) in [(QoS::AtMostOnce, 0), (QoS::AtLeastOnce, 1), (QoS::ExactlyOnce, 2)] {
            publ.send(Packet::Publish(publish("t/a", "x", qos, id))).await;
            match qos {
                QoS::AtMostOnce => {}
                QoS::AtLeastOnce => {
                    assert!(matches!(publ.recv().await, Packet::PubAck(a) if a.packet_id == pid(1)))
                }
                QoS::ExactlyOnce => {
                    assert!(
                        matches!(publ.recv().await, Packet::PubRec(r) if r.packet_id == pid(2))
                    );
                    publ.send(Packet::PubRel(PubRel::new(pid(2)))).await;
                    assert!(
                        matches!(publ.recv().await, Packet::PubComp(c) if c.packet_id == pid(2))
                    );
                }
            }
            let got = sub.recv_publish().await;
            assert_eq!(got.delivery.qos(), qos.min(QoS::AtLeastOnce));
            assert_eq!(got.payload, "x");
            if let Some(id) = got.delivery.packet_id() {
                sub.puback(id).await;
            }
        }
    }
}

/// 5.0 [MQTT-4.3.3-1] to [MQTT-4.3.3-5]; 3.1.1 [MQTT-4.3.3-1]: as QoS 2 sender the server sends
/// PUBLISH with DUP 0, answers PUBREC with a PUBREL of the same identifier, and stops at PUBCOMP.
#[tokio::test(start_paused = true)]
async fn outbound_qos2_flow_publish_pubrec_pubrel_pubcomp_mqtt_4_3_3() {
    let broker = TestBroker::start();
    let mut sub = broker.connect(V5, "sub").await;
    sub.subscribe("t", QoS::ExactlyOnce).await;
    broker.handle.publish(crate::handle::message("t", "x", QoS::ExactlyOnce)).await.unwrap();
    let got = sub.recv_publish().await;
    let Delivery::ExactlyOnce { packet_id, dup: false } = got.delivery else { panic!("{got:?}") };
    sub.send(Packet::PubRec(PubRec::new(packet_id))).await;
    assert_eq!(sub.recv().await, Packet::PubRel(PubRel::new(packet_id)));
    sub.send(Packet::PubComp(PubComp::new(packet_id))).await;
    sub.expect_silence().await;
}

/// 5.0 §3.4.2.1 (no statement id; [MQTT-3.4.2-1] requires a PUBACK reason code): a QoS 1 message
/// nobody subscribed to is acknowledged with 0x10 No matching subscribers.
#[tokio::test(start_paused = true)]
async fn v5_puback_says_no_matching_subscribers_mqtt_3_4_2_1() {
    let broker = TestBroker::start();
    let mut client = broker.connect(V5, "c").await;
    client.send(Packet::Publish(publish("nobody", "x", QoS::AtLeastOnce, 1))).await;
    match client.recv().await {
        Packet::PubAck(ack) => assert_eq!(ack.reason_code, ReasonCode::NoMatchingSubscribers),
        other => panic!("{other:?}"),
    }
}

/// 5.0 [MQTT-4.3.3-10]; 3.1.1 [MQTT-4.3.3-2]: until PUBREL, a QoS 2 PUBLISH sent again with the same
/// identifier is acknowledged with PUBREC again and not delivered twice. A PUBREL for an unknown
/// identifier gets PUBCOMP 0x92 (5.0 §3.7.2.1).
#[tokio::test(start_paused = true)]
async fn resent_qos2_publish_is_not_delivered_twice_mqtt_4_3_3_10() {
    let broker = TestBroker::start();
    let mut sub = broker.connect(V5, "sub").await;
    sub.subscribe("t", QoS::AtMostOnce).await;
    let mut publ = broker.connect(V5, "pub").await;
    publ.send(Packet::Publish(publish("t", "once", QoS::ExactlyOnce, 7))).await;
    assert!(matches!(publ.recv().await, Packet::PubRec(_)));
    let mut again = publish("t", "once", QoS::ExactlyOnce, 7);
    again.delivery = Delivery::ExactlyOnce { packet_id: pid(7), dup: true };
    publ.send(Packet::Publish(again)).await;
    assert!(matches!(publ.recv().await, Packet::PubRec(_)));
    publ.send(Packet::PubRel(PubRel::new(pid(7)))).await;
    assert!(
        matches!(publ.recv().await, Packet::PubComp(c) if c.reason_code == ReasonCode::Success)
    );
    assert_eq!(sub.recv_publish().await.payload, "once");
    sub.expect_silence().await;
    // A PUBREL for an identifier not in use gets 0x92 (§3.7.2.1).
    publ.send(Packet::PubRel(PubRel::new(pid(7)))).await;
    assert!(matches!(publ.recv().await,
        Packet::PubComp(c) if c.reason_code == ReasonCode::PacketIdentifierNotFound));
}

/// 5.0 [MQTT-3.3.4-7] (the client's duty) and §3.3.4: a client with more unacknowledged QoS 1 and 2
/// PUBLISH packets than the Receive Maximum the broker advertised gets DISCONNECT 0x93
/// ([MQTT-4.13.1-1]).
#[tokio::test(start_paused = true)]
async fn exceeding_our_receive_maximum_gets_disconnect_0x93_mqtt_3_3_4_7() {
    let broker = TestBroker::with_config(BrokerConfig {
        receive_maximum: NonZeroU16::new(2).unwrap(),
        ..BrokerConfig::default()
    });
    let mut client = broker.connect(V5, "c").await;
    // QoS 2 messages stay unacknowledged until PUBREL.
    for id in 1..=2 {
        client.send(Packet::Publish(publish("t", "x", QoS::ExactlyOnce, id))).await;
        assert!(matches!(client.recv().await, Packet::PubRec(_)));
    }
    client.send(Packet::Publish(publish("t", "x", QoS::ExactlyOnce, 3))).await;
    let disconnect = client.expect_closed().await.unwrap();
    assert_eq!(disconnect.reason_code, ReasonCode::ReceiveMaximumExceeded);
}

/// 5.0 [MQTT-3.3.4-9], [MQTT-4.9.0-1], [MQTT-4.9.0-2]: the broker never has more unacknowledged QoS 1
/// and 2 messages out than the client's Receive Maximum; a PUBACK makes room for the next.
#[tokio::test(start_paused = true)]
async fn outbound_window_respects_client_receive_maximum_mqtt_3_3_4_9() {
    let broker = TestBroker::start();
    let mut c = connect(V5, "sub");
    c.properties.receive_maximum = NonZeroU16::new(2);
    let (mut sub, _) = broker.connect_with(c).await;
    sub.subscribe("t", QoS::AtLeastOnce).await;
    for _ in 0..5 {
        broker.handle.publish(crate::handle::message("t", "x", QoS::AtLeastOnce)).await.unwrap();
    }
    let first = sub.recv_publish().await;
    let _second = sub.recv_publish().await;
    sub.expect_silence().await;
    sub.puback(first.delivery.packet_id().unwrap()).await;
    let third = sub.recv_publish().await;
    sub.expect_silence().await;
    assert_ne!(third.delivery.packet_id(), None);
}

/// Slow-consumer policy (no statement: the specification leaves limits to the implementation, 3.1.1
/// §4.1): QoS 1 and 2 messages beyond the in-flight window wait in the session queue up to
/// `BrokerConfig::max_queued_messages`; later ones are dropped and counted.
#[tokio::test(start_paused = true)]
async fn slow_consumer_qos1_is_queued_up_to_the_limit_then_dropped() {
    let broker = TestBroker::with_config(BrokerConfig {
        max_inflight: NonZeroU16::new(1).unwrap(),
        max_queued_messages: 3,
        ..BrokerConfig::default()
    });
    let mut sub = broker.connect(V5, "sub").await;
    sub.subscribe("t", QoS::AtLeastOnce).await;
    for _ in 0..10 {
        broker.handle.publish(crate::handle::message("t", "x", QoS::AtLeastOnce)).await.unwrap();
    }
    // One in flight, three queued, six dropped.
    let mut received = 0;
    loop {
        let got = tokio::time::timeout(Duration::from_secs(5), sub.try_recv()).await;
        let Ok(Some(Packet::Publish(p))) = got else { break };
        received += 1;
        sub.puback(p.delivery.packet_id().unwrap()).await;
    }
    assert_eq!(received, 4);
}

/// Slow-consumer policy (no statement; QoS 0 is "at most once", 5.0 §4.3.1): QoS 0 messages for a
/// client that does not read are dropped above `BrokerConfig::outbound_buffer_high_water`, and the
/// client stays connected.
#[tokio::test(start_paused = true)]
async fn slow_consumer_qos0_is_dropped_without_disconnecting() {
    let broker = TestBroker::with_config(BrokerConfig {
        outbound_buffer_high_water: 100,
        ..BrokerConfig::default()
    });
    // A tiny socket buffer that the client does not read.
    let mut sub = crate::Client::new(broker.socket(64), V5);
    sub.send(Packet::Connect(Box::new(connect(V5, "sub")))).await;
    assert!(matches!(sub.recv().await, Packet::ConnAck(_)));
    sub.subscribe("t", QoS::AtMostOnce).await;
    for _ in 0..100 {
        broker
            .handle
            .publish(crate::handle::message("t", "0123456789", QoS::AtMostOnce))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut received = 0;
    loop {
        let got = tokio::time::timeout(Duration::from_secs(5), sub.try_recv()).await;
        match got {
            Ok(Some(Packet::Publish(_))) => received += 1,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => break,
        }
    }
    assert!(received > 0 && received < 100, "received {received}");
    // Still connected.
    sub.send(Packet::PingReq).await;
    assert_eq!(sub.recv().await, Packet::PingResp);
}

/// 5.0 [MQTT-3.3.2-12]: the broker accepts the Topic Aliases a client sets (up to the maximum it
/// announced) and forwards the message with its topic, never with the client's alias.
#[tokio::test(start_paused = true)]
async fn inbound_topic_alias_mqtt_3_3_2_12() {
    let broker = TestBroker::start();
    let mut sub = broker.connect(V5, "sub").await;
    sub.subscribe("long/topic/name", QoS::AtMostOnce).await;
    let mut publ = broker.connect(V5, "pub").await;
    let mut first = publish("long/topic/name", "1", QoS::AtMostOnce, 0);
    first.properties.topic_alias = NonZeroU16::new(3);
    publ.send(Packet::Publish(first)).await;
    let mut second = publish("long/topic/name", "2", QoS::AtMostOnce, 0);
    second.topic = None;
    second.properties.topic_alias = NonZeroU16::new(3);
    publ.send(Packet::Publish(second)).await;
    for payload in ["1", "2"] {
        let got = sub.recv_publish().await;
        assert_eq!(got.topic, Some(topic("long/topic/name")));
        assert_eq!(got.payload, payload);
        // The alias is per hop: never forwarded.
        assert_eq!(got.properties.topic_alias, None);
    }
}

/// 5.0 [MQTT-3.3.2-9] (the client's duty) and §3.3.2.3.4: a Topic Alias above the Topic Alias Maximum
/// in the CONNACK gets DISCONNECT 0x94 (Topic Alias invalid).
#[tokio::test(start_paused = true)]
async fn topic_alias_above_maximum_gets_disconnect_0x94_mqtt_3_3_2_9() {
    let broker =
        TestBroker::with_config(BrokerConfig { topic_alias_maximum: 2, ..BrokerConfig::default() });
    let mut client = broker.connect(V5, "c").await;
    let mut p = publish("t", "x", QoS::AtMostOnce, 0);
    p.properties.topic_alias = NonZeroU16::new(3);
    client.send(Packet::Publish(p)).await;
    assert_eq!(client.expect_closed().await.unwrap().reason_code, ReasonCode::TopicAliasInvalid);
}

/// 5.0 §3.3.2.3.4 (no statement id): a PUBLISH with an empty topic and an alias the client never
/// mapped is a Protocol Error (DISCONNECT 0x82, [MQTT-4.13.1-1]).
#[tokio::test(start_paused = true)]
async fn unknown_topic_alias_is_a_protocol_error() {
    let broker = TestBroker::start();
    let mut client = broker.connect(V5, "c").await;
    let mut p = publish("t", "x", QoS::AtMostOnce, 0);
    p.topic = None;
    p.properties.topic_alias = NonZeroU16::new(1);
    client.send(Packet::Publish(p)).await;
    assert_eq!(client.expect_closed().await.unwrap().reason_code, ReasonCode::ProtocolError);
}

/// 5.0 [MQTT-3.3.2-4], [MQTT-3.3.2-15], [MQTT-3.3.2-16], [MQTT-3.3.2-17], [MQTT-3.3.2-18],
/// [MQTT-3.3.2-20]: Payload Format Indicator, Response Topic, Correlation Data, Content Type and User
/// Properties reach subscribers unaltered, User Properties in their order (repeated names kept).
#[tokio::test(start_paused = true)]
async fn request_response_and_user_properties_pass_through_mqtt_3_3_2_15_to_17() {
    let broker = TestBroker::start();
    let mut sub = broker.connect(V5, "sub").await;
    sub.subscribe("req", QoS::AtMostOnce).await;
    let mut publ = broker.connect(V5, "pub").await;
    let mut p = publish("req", "x", QoS::AtMostOnce, 0);
    p.properties.response_topic = Some(topic("resp/1"));
    p.properties.correlation_data = Some("abc".into());
    p.properties.content_type = Some(MqttString::new("application/json").unwrap());
    p.properties.payload_format_indicator = Some(mqtt_codec::PayloadFormat::Utf8);
    let pair = |a: &str, b: &str| (MqttString::new(a).unwrap(), MqttString::new(b).unwrap());
    p.properties.user_properties = vec![pair("k", "1"), pair("k", "2"), pair("a", "b")];
    let sent = p.properties.clone();
    publ.send(Packet::Publish(p)).await;
    let got = sub.recv_publish().await;
    assert_eq!(got.properties, sent);
}

/// 5.0 [MQTT-3.3.2-5], [MQTT-3.3.2-6]: a message waiting for an offline session is dropped when its
/// Message Expiry Interval passes, and one sent later carries what remains of its interval.
#[tokio::test(start_paused = true)]
async fn message_expiry_counts_down_and_expired_messages_are_not_sent_mqtt_3_3_2_5_and_6() {
    let broker = TestBroker::start();
    // A persistent session that goes offline.
    let mut c = connect(V5, "sub");
    c.properties.session_expiry_interval = Some(3600);
    let (mut sub, _) = broker.connect_with(c.clone()).await;
    sub.subscribe("t", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut short = crate::handle::message("t", "short", QoS::AtLeastOnce);
    short.properties.message_expiry_interval = Some(5);
    let mut long = crate::handle::message("t", "long", QoS::AtLeastOnce);
    long.properties.message_expiry_interval = Some(100);
    broker.handle.publish(short).await.unwrap();
    broker.handle.publish(long).await.unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    c.clean_start = false;
    let (mut sub, connack) = broker.connect_with(c).await;
    assert!(connack.session_present);
    let got = sub.recv_publish().await;
    assert_eq!(got.payload, "long");
    assert_eq!(got.properties.message_expiry_interval, Some(90));
    sub.puback(got.delivery.packet_id().unwrap()).await;
    sub.expect_silence().await;
}

/// 5.0 [MQTT-3.2.2-10], [MQTT-3.2.2-11] (the client's duty) and §3.2.2.3.4: with Maximum QoS 1 a
/// SUBSCRIBE at QoS 2 is accepted and granted QoS 1, and a QoS 2 PUBLISH gets DISCONNECT 0x9B.
#[tokio::test(start_paused = true)]
async fn publish_above_maximum_qos_gets_disconnect_0x9b_mqtt_3_2_2_11() {
    let broker = TestBroker::with_config(BrokerConfig {
        maximum_qos: QoS::AtLeastOnce,
        ..BrokerConfig::default()
    });
    let mut client = broker.connect(V5, "c").await;
    let ack = client.subscribe("t", QoS::ExactlyOnce).await;
    assert_eq!(ack.reason_codes, vec![ReasonCode::GrantedQos1]);
    client.send(Packet::Publish(publish("t", "x", QoS::ExactlyOnce, 1))).await;
    assert_eq!(client.expect_closed().await.unwrap().reason_code, ReasonCode::QosNotSupported);
}

/// 5.0 §3.4.2.1 (PUBACK 0x87 Not authorized); 3.1.1 [MQTT-3.3.5-2]: a PUBLISH the client may not make
/// is not delivered; v5 says so in the PUBACK, v3.1.1 gets a positive acknowledgement.
#[tokio::test(start_paused = true)]
async fn publish_outside_the_acl_is_refused_and_not_delivered_mqtt_3_3_5_2() {
    let broker = TestBroker::with_auth(BrokerConfig::default(), TestAuth::Prefix("devices/d1/"));
    let mut spy = broker.handle.subscribe(crate::filter("#")).await.unwrap();
    for (version, expected) in [(V5, ReasonCode::NotAuthorized), (V311, ReasonCode::Success)] {
        let mut client = broker.connect(version, "d1").await;
        client.send(Packet::Publish(publish("devices/d2/x", "x", QoS::AtLeastOnce, 1))).await;
        match client.recv().await {
            Packet::PubAck(ack) => assert_eq!(ack.reason_code, expected),
            other => panic!("{other:?}"),
        }
        client.publish(publish("devices/d1/x", "ok", QoS::AtLeastOnce, 2)).await;
        assert_eq!(spy.recv().await.unwrap().payload, "ok");
    }
    assert!(spy.try_recv().is_err());
}

/// 5.0 [MQTT-3.1.2-24], [MQTT-3.1.2-25]: a message larger than the client's Maximum Packet Size is
/// not sent; the next one is.
#[tokio::test(start_paused = true)]
async fn messages_larger_than_the_client_maximum_are_not_sent_mqtt_3_1_2_25() {
    let broker = TestBroker::start();
    let mut c = connect(V5, "sub");
    c.properties.maximum_packet_size = NonZeroU32::new(50);
    let (mut sub, _) = broker.connect_with(c).await;
    sub.subscribe("t", QoS::AtLeastOnce).await;
    let big = "x".repeat(100);
    broker.handle.publish(crate::handle::message_owned("t", big, QoS::AtLeastOnce)).await.unwrap();
    broker.handle.publish(crate::handle::message("t", "small", QoS::AtLeastOnce)).await.unwrap();
    assert_eq!(sub.recv_publish().await.payload, "small");
}

/// 5.0 [MQTT-3.3.2-11], [MQTT-3.1.2-26]: the broker sets Topic Aliases on what it sends, never more
/// than the client's Topic Alias Maximum; the first message to a topic carries topic and alias, later
/// ones the alias alone.
#[tokio::test(start_paused = true)]
async fn outbound_topic_aliases_stay_within_the_clients_maximum_mqtt_3_3_2_11() {
    let broker = TestBroker::start();
    let mut c = connect(V5, "sub");
    c.properties.topic_alias_maximum = Some(1);
    let (mut sub, _) = broker.connect_with(c).await;
    sub.subscribe("t/+", QoS::AtMostOnce).await;
    let mut publ = broker.connect(V5, "pub").await;
    for t in ["t/a", "t/a", "t/b", "t/a"] {
        publ.send(Packet::Publish(publish(t, "x", QoS::AtMostOnce, 0))).await;
    }
    // First message to t/a: topic and alias 1; then alias alone; t/b gets no alias (the client
    // accepts one); t/a again by alias.
    let first = sub.recv_publish().await;
    assert_eq!(first.topic, Some(topic("t/a")));
    assert_eq!(first.properties.topic_alias, NonZeroU16::new(1));
    let second = sub.recv_publish().await;
    assert_eq!(second.topic, None);
    assert_eq!(second.properties.topic_alias, NonZeroU16::new(1));
    let third = sub.recv_publish().await;
    assert_eq!(third.topic, Some(topic("t/b")));
    assert_eq!(third.properties.topic_alias, None);
    let fourth = sub.recv_publish().await;
    assert_eq!((fourth.topic, fourth.properties.topic_alias), (None, NonZeroU16::new(1)));
}

/// 5.0 [MQTT-3.1.2-27]: without a Topic Alias Maximum from the client (and on v3.1.1) the broker sends
/// no Topic Alias.
#[tokio::test(start_paused = true)]
async fn no_outbound_topic_alias_without_the_clients_topic_alias_maximum_mqtt_3_1_2_27() {
    for version in [V311, V5] {
        let broker = TestBroker::start();
        let mut sub = broker.connect(version, "sub").await;
        sub.subscribe("t", QoS::AtMostOnce).await;
        for _ in 0..2 {
            broker.handle.publish(crate::handle::message("t", "x", QoS::AtMostOnce)).await.unwrap();
            let got = sub.recv_publish().await;
            assert_eq!((got.topic, got.properties.topic_alias), (Some(topic("t")), None));
        }
    }
}

/// Publish rate limit (no statement; a broker policy): a client over `BrokerConfig::publish_rate` is
/// slowed down, and every message is still acknowledged and delivered.
#[tokio::test(start_paused = true)]
async fn a_client_over_its_publish_rate_is_slowed_down_not_refused() {
    let config = BrokerConfig {
        publish_rate: Some(mqtt_broker::PublishRate { per_second: 10.0, burst: 2 }),
        ..BrokerConfig::default()
    };
    let broker = TestBroker::with_config(config);
    let mut sub = broker.connect(V5, "sub").await;
    sub.subscribe("t", QoS::AtLeastOnce).await;
    let mut publ = broker.connect(V5, "pub").await;
    let start = tokio::time::Instant::now();
    for id in 1..=5 {
        publ.send(Packet::Publish(publish("t", "x", QoS::AtLeastOnce, id))).await;
    }
    for id in 1..=5 {
        match publ.recv().await {
            Packet::PubAck(ack) => {
                assert_eq!((ack.packet_id, ack.reason_code), (pid(id), ReasonCode::Success));
            }
            other => panic!("{other:?}"),
        }
        let got = sub.recv_publish().await;
        sub.puback(got.delivery.packet_id().unwrap()).await;
    }
    // Two at once (the burst), then one per 100 ms of (virtual) time.
    assert!(start.elapsed() >= Duration::from_millis(300), "{:?}", start.elapsed());
}

/// A v5 CONNECT for a persistent session that accepts `topic_alias_maximum` aliases.
fn with_topic_aliases(id: &str, clean: bool, topic_alias_maximum: u16) -> mqtt_codec::Connect {
    let mut c = connect(V5, id);
    c.clean_start = clean;
    c.properties.session_expiry_interval = Some(3600);
    c.properties.topic_alias_maximum = Some(topic_alias_maximum);
    c
}

/// 5.0 [MQTT-3.3.2-7]: Topic Alias mappings end with their connection, in both directions: an alias
/// the client set before reconnecting is unknown afterwards (DISCONNECT 0x82), and the first message
/// the broker sends on the new connection carries its topic again.
#[tokio::test(start_paused = true)]
async fn topic_aliases_do_not_outlive_their_connection_mqtt_3_3_2_7() {
    let broker = TestBroker::start();
    let (mut sub, _) = broker.connect_with(with_topic_aliases("sub", true, 5)).await;
    sub.subscribe("t", QoS::AtMostOnce).await;
    let mut publ = broker.connect(V5, "pub").await;
    let mut first = publish("t", "1", QoS::AtMostOnce, 0);
    first.properties.topic_alias = NonZeroU16::new(1);
    publ.send(Packet::Publish(first)).await;
    let got = sub.recv_publish().await;
    assert_eq!((got.topic, got.properties.topic_alias), (Some(topic("t")), NonZeroU16::new(1)));
    sub.disconnect().await;
    publ.disconnect().await;

    let (mut sub, _) = broker.connect_with(with_topic_aliases("sub", false, 5)).await;
    broker.handle.publish(crate::handle::message("t", "2", QoS::AtMostOnce)).await.unwrap();
    let got = sub.recv_publish().await;
    assert_eq!((got.topic, got.properties.topic_alias), (Some(topic("t")), NonZeroU16::new(1)));
    let mut publ = broker.connect(V5, "pub").await;
    let mut by_alias = publish("t", "3", QoS::AtMostOnce, 0);
    by_alias.topic = None;
    by_alias.properties.topic_alias = NonZeroU16::new(1);
    publ.send(Packet::Publish(by_alias)).await;
    assert_eq!(publ.expect_closed().await.unwrap().reason_code, ReasonCode::ProtocolError);
}

/// 5.0 [MQTT-3.3.2-8] (the client's duty): a Topic Alias of 0 is a Protocol Error, answered with
/// DISCONNECT 0x82 ([MQTT-4.13.1-1]). (`BrokerConfig::topic_alias_maximum` documents 0x94 for it; the
/// codec rejects the packet first.)
#[tokio::test(start_paused = true)]
async fn topic_alias_0_is_a_protocol_error_mqtt_3_3_2_8() {
    let broker = TestBroker::start();
    let mut client = broker.connect(V5, "c").await;
    // PUBLISH QoS 0, topic "t", properties: Topic Alias (0x23) = 0, payload "x".
    client.send_raw(&[0x30, 8, 0, 1, b't', 3, 0x23, 0, 0, b'x']).await;
    assert_eq!(client.expect_closed().await.unwrap().reason_code, ReasonCode::ProtocolError);
}

/// 5.0 [MQTT-3.3.2-12] and §3.3.2.3.4: a client may map an alias to another topic by sending it with a
/// new topic; later PUBLISH packets with the alias alone go to the new topic.
#[tokio::test(start_paused = true)]
async fn inbound_topic_alias_can_be_remapped_mqtt_3_3_2_12() {
    let broker = TestBroker::start();
    let mut sub = broker.connect(V5, "sub").await;
    sub.subscribe("+", QoS::AtMostOnce).await;
    let mut publ = broker.connect(V5, "pub").await;
    for (t, payload) in [(Some("a"), "1"), (Some("b"), "2"), (None, "3")] {
        let mut p = publish("x", payload, QoS::AtMostOnce, 0);
        p.topic = t.map(topic);
        p.properties.topic_alias = NonZeroU16::new(1);
        publ.send(Packet::Publish(p)).await;
    }
    for (t, payload) in [("a", "1"), ("b", "2"), ("b", "3")] {
        let got = sub.recv_publish().await;
        assert_eq!((got.topic, got.payload.as_ref()), (Some(topic(t)), payload.as_bytes()));
    }
}

/// 5.0 [MQTT-3.1.2-28] and §3.1.2.11.6: the broker returns no Response Information, whether or not the
/// client asks for it (asking is a request the server may ignore).
#[tokio::test(start_paused = true)]
async fn no_response_information_is_returned_mqtt_3_1_2_28() {
    let broker = TestBroker::start();
    for requested in [None, Some(false), Some(true)] {
        let mut c = connect(V5, "c");
        c.properties.request_response_information = requested;
        let (client, connack) = broker.connect_with(c).await;
        assert_eq!(connack.properties.response_information, None);
        client.disconnect().await;
    }
}

/// 5.0 [MQTT-3.3.2-5]: a message whose expiry passes while it waits behind a full send window (the
/// client's Receive Maximum) is dropped, not sent.
#[tokio::test(start_paused = true)]
async fn messages_expiring_behind_a_full_window_are_not_sent_mqtt_3_3_2_5() {
    let broker = TestBroker::start();
    let mut c = connect(V5, "sub");
    c.properties.receive_maximum = NonZeroU16::new(1);
    let (mut sub, _) = broker.connect_with(c).await;
    sub.subscribe("t", QoS::AtLeastOnce).await;
    let mut short = crate::handle::message("t", "short", QoS::AtLeastOnce);
    short.properties.message_expiry_interval = Some(5);
    for m in [crate::handle::message("t", "first", QoS::AtLeastOnce), short] {
        broker.handle.publish(m).await.unwrap();
    }
    let first = sub.recv_publish().await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    broker.handle.publish(crate::handle::message("t", "last", QoS::AtLeastOnce)).await.unwrap();
    sub.puback(first.delivery.packet_id().unwrap()).await;
    assert_eq!(sub.recv_publish().await.payload, "last");
}

/// 5.0 [MQTT-4.3.3-7], [MQTT-4.4.0-1]: once a QoS 2 PUBLISH has been sent, message expiry no longer
/// applies to it: a resumed session gets it again after its interval has passed.
#[tokio::test(start_paused = true)]
async fn a_message_already_sent_is_resent_after_it_expires_mqtt_4_3_3_7() {
    let broker = TestBroker::start();
    let mut c = connect(V5, "sub");
    c.properties.session_expiry_interval = Some(3600);
    let (mut sub, _) = broker.connect_with(c.clone()).await;
    sub.subscribe("t", QoS::ExactlyOnce).await;
    let mut m = crate::handle::message("t", "x", QoS::ExactlyOnce);
    m.properties.message_expiry_interval = Some(5);
    broker.handle.publish(m).await.unwrap();
    let sent = sub.recv_publish().await;
    drop(sub);
    tokio::time::sleep(Duration::from_secs(10)).await;
    c.clean_start = false;
    let (mut sub, ack) = broker.connect_with(c).await;
    assert!(ack.session_present);
    let again = sub.recv_publish().await;
    assert_eq!(again.payload, "x");
    let packet_id = sent.delivery.packet_id().unwrap();
    assert_eq!(again.delivery, Delivery::ExactlyOnce { packet_id, dup: true });
}

/// 5.0 [MQTT-3.1.2-25]: after discarding a message too large for the client, the broker behaves as if
/// it had been sent: it does not hold a place in the client's Receive Maximum.
#[tokio::test(start_paused = true)]
async fn a_discarded_oversized_message_counts_as_delivered_mqtt_3_1_2_25() {
    let broker = TestBroker::start();
    let mut c = connect(V5, "sub");
    c.properties.maximum_packet_size = NonZeroU32::new(50);
    c.properties.receive_maximum = NonZeroU16::new(1);
    let (mut sub, _) = broker.connect_with(c).await;
    sub.subscribe("t", QoS::AtLeastOnce).await;
    let big = "x".repeat(100);
    broker.handle.publish(crate::handle::message_owned("t", big, QoS::AtLeastOnce)).await.unwrap();
    broker.handle.publish(crate::handle::message("t", "small", QoS::AtLeastOnce)).await.unwrap();
    assert_eq!(sub.recv_publish().await.payload, "small");
}

/// Slow-consumer policy, a documented deviation from 5.0 [MQTT-4.5.0-1] / 3.1.1 [MQTT-4.5.0-1]: when a
/// connection task falls so far behind that its mailbox from the broker is full, further messages
/// for it are dropped rather than added to its session: QoS 0 ones beyond
/// `BrokerConfig::connection_channel_capacity`, QoS 1 and 2 ones beyond that plus
/// `BrokerConfig::max_queued_messages` (the room of the session's queue). Here the broker routes
/// three messages before the connection task runs once (the test runtime has one thread, and the
/// broker task handles the commands already waiting in one go).
#[tokio::test(start_paused = true)]
async fn a_full_connection_mailbox_drops_qos0_beyond_its_capacity_and_qos1_beyond_the_queue() {
    for (qos, expected) in [(QoS::AtMostOnce, 1), (QoS::AtLeastOnce, 2)] {
        let broker = TestBroker::with_config(BrokerConfig {
            connection_channel_capacity: std::num::NonZeroUsize::new(1).unwrap(),
            max_queued_messages: 1,
            ..BrokerConfig::default()
        });
        let mut sub = broker.connect(V5, "sub").await;
        sub.subscribe("t", qos).await;
        for payload in ["1", "2", "3"] {
            broker.handle.publish(crate::handle::message("t", payload, qos)).await.unwrap();
        }
        for n in 1..=expected {
            let got = sub.recv_publish().await;
            assert_eq!(got.payload, n.to_string(), "{qos:?}");
            if let Some(id) = got.delivery.packet_id() {
                sub.puback(id).await;
            }
        }
        sub.expect_silence().await;
    }
}
