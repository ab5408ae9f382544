//! PUBLISH in both directions: QoS flows, flow control, aliases, expiry, properties, ACL (§3.3 to §3.7,
//! §4.3, §4.9).

use std::num::{NonZeroU16, NonZeroU32};

use mqtt_codec::{Delivery, MqttString, Packet, PubComp, PubRec, PubRel, QoS, ReasonCode};
use tokio::time::Duration;

use crate::{BrokerConfig, TestAuth, TestBroker, V5, V311, connect, pid, publish, topic};

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

#[tokio::test(start_paused = true)]
async fn v5_puback_says_no_matching_subscribers() {
    let broker = TestBroker::start();
    let mut client = broker.connect(V5, "c").await;
    client.send(Packet::Publish(publish("nobody", "x", QoS::AtLeastOnce, 1))).await;
    match client.recv().await {
        Packet::PubAck(ack) => assert_eq!(ack.reason_code, ReasonCode::NoMatchingSubscribers),
        other => panic!("{other:?}"),
    }
}

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

#[tokio::test(start_paused = true)]
async fn topic_alias_above_maximum_gets_disconnect_0x94_mqtt_3_3_2_8() {
    let broker =
        TestBroker::with_config(BrokerConfig { topic_alias_maximum: 2, ..BrokerConfig::default() });
    let mut client = broker.connect(V5, "c").await;
    let mut p = publish("t", "x", QoS::AtMostOnce, 0);
    p.properties.topic_alias = NonZeroU16::new(3);
    client.send(Packet::Publish(p)).await;
    assert_eq!(client.expect_closed().await.unwrap().reason_code, ReasonCode::TopicAliasInvalid);
}

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

#[tokio::test(start_paused = true)]
async fn publish_outside_the_acl_is_refused_and_not_delivered() {
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

#[tokio::test(start_paused = true)]
async fn outbound_topic_aliases_stay_within_the_clients_maximum_mqtt_3_3_2_9() {
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

#[tokio::test(start_paused = true)]
async fn no_outbound_topic_alias_without_the_clients_topic_alias_maximum_mqtt_3_2_2_17() {
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
