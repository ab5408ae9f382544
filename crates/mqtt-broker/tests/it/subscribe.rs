//! SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK and matching (§3.8 to §3.11, §4.7, §4.8).

use mqtt_codec::{
    Packet, Properties, QoS, ReasonCode, Subscribe, SubscriptionOptions, Unsubscribe,
};

use crate::{
    BrokerConfig, TestAuth, TestBroker, V5, V311, filter, pid, publish, qos_options, sub_id,
    subscribe_packet,
};

/// 5.0 [MQTT-3.8.4-1], [MQTT-3.8.4-2], [MQTT-3.8.4-5], [MQTT-3.8.4-6], [MQTT-3.8.4-7],
/// [MQTT-3.9.3-1]; 3.1.1 [MQTT-3.8.4-1], [MQTT-3.8.4-2], [MQTT-3.8.4-4], [MQTT-3.8.4-5],
/// [MQTT-3.9.3-1]: one SUBACK with the SUBSCRIBE's identifier and a code per filter, in order, each the
/// granted QoS or a failure (v5 0x87 Not authorized, v3.1.1 0x80).
#[tokio::test(start_paused = true)]
async fn suback_refuses_filters_outside_the_acl_0x87_and_0x80_mqtt_3_9_3_1() {
    let broker = TestBroker::with_auth(BrokerConfig::default(), TestAuth::Prefix("devices/d1/"));
    for version in [V5, V311] {
        let mut client = broker.connect(version, "d1").await;
        let mut s = subscribe_packet(5, "devices/d1/#", qos_options(QoS::AtLeastOnce));
        for f in ["#", "devices/+/x", "$share/g/devices/d1/x"] {
            s.subscriptions.push(mqtt_codec::Subscription {
                filter: filter(f),
                options: qos_options(QoS::AtMostOnce),
            });
        }
        let ack = client.subscribe_with(s).await;
        assert_eq!(ack.packet_id, pid(5)); // [MQTT-3.8.4-2]
        let denied = ReasonCode::NotAuthorized;
        if version == V5 {
            assert_eq!(ack.reason_codes, vec![ReasonCode::GrantedQos1, denied, denied, denied]);
        } else {
            // v3.1.1 carries a denial as 0x80 Failure; the decoder reads that back as 0x80.
            let failure = ReasonCode::UnspecifiedError;
            assert_eq!(ack.reason_codes, vec![ReasonCode::GrantedQos1, failure, failure, failure]);
        }
        client.disconnect().await;
    }
}

/// 5.0 [MQTT-3.8.4-3]; 3.1.1 [MQTT-3.8.4-3]: a SUBSCRIBE to a filter the session already has replaces
/// that subscription (here its QoS) rather than adding a second one.
#[tokio::test(start_paused = true)]
async fn subscribing_again_replaces_the_subscription_mqtt_3_8_4_3() {
    let broker = TestBroker::start();
    let mut sub = broker.connect(V5, "sub").await;
    sub.subscribe("t", QoS::AtMostOnce).await;
    sub.subscribe("t", QoS::AtLeastOnce).await;
    broker.handle.publish(crate::handle::message("t", "x", QoS::ExactlyOnce)).await.unwrap();
    let got = sub.recv_publish().await;
    assert_eq!(got.delivery.qos(), QoS::AtLeastOnce);
    sub.puback(got.delivery.packet_id().unwrap()).await;
    sub.expect_silence().await;
}

/// 5.0 [MQTT-3.3.4-2], [MQTT-3.3.4-3], [MQTT-3.3.4-4]: overlapping subscriptions of one client get
/// one copy, at the highest granted QoS, carrying every matching Subscription Identifier.
#[tokio::test(start_paused = true)]
async fn overlapping_subscriptions_deliver_once_with_max_qos_and_all_ids_mqtt_3_3_4_3_to_5() {
    let broker = TestBroker::start();
    let mut sub = broker.connect(V5, "sub").await;
    for (id, f, qos) in [(1, "a/+", QoS::AtMostOnce), (2, "a/#", QoS::AtLeastOnce)] {
        let mut s = subscribe_packet(id, f, qos_options(qos));
        s.properties.subscription_identifiers = vec![sub_id(u32::from(id) * 10)];
        sub.subscribe_with(s).await;
    }
    let mut publ = broker.connect(V5, "pub").await;
    publ.send(Packet::Publish(publish("a/b", "x", QoS::AtLeastOnce, 1))).await;
    let got = sub.recv_publish().await;
    assert_eq!(got.delivery.qos(), QoS::AtLeastOnce);
    let mut ids = got.properties.subscription_identifiers.clone();
    ids.sort_unstable();
    assert_eq!(ids, vec![sub_id(10), sub_id(20)]);
    sub.puback(got.delivery.packet_id().unwrap()).await;
    sub.expect_silence().await;
}

/// 5.0 and 3.1.1 [MQTT-4.7.2-1]: filters starting with `#` or `+` do not match topics starting with `$`.
#[tokio::test(start_paused = true)]
async fn wildcards_do_not_match_dollar_topics_mqtt_4_7_2_1() {
    let broker = TestBroker::start();
    let mut sub = broker.connect(V5, "sub").await;
    sub.subscribe("#", QoS::AtMostOnce).await;
    sub.subscribe("+/x", QoS::AtMostOnce).await;
    broker.handle.publish(crate::handle::message("$SYS/x", "no", QoS::AtMostOnce)).await.unwrap();
    broker.handle.publish(crate::handle::message("a/x", "yes", QoS::AtMostOnce)).await.unwrap();
    assert_eq!(sub.recv_publish().await.payload, "yes");
    sub.expect_silence().await;
}

/// 5.0 [MQTT-3.8.3-3]: with No Local, a client's own messages are not sent back to it.
#[tokio::test(start_paused = true)]
async fn no_local_does_not_echo_the_publisher_mqtt_3_8_3_3() {
    let broker = TestBroker::start();
    let mut client = broker.connect(V5, "c").await;
    let options = SubscriptionOptions { no_local: true, ..qos_options(QoS::AtMostOnce) };
    client.subscribe_with(subscribe_packet(1, "t", options)).await;
    client.send(Packet::Publish(publish("t", "mine", QoS::AtMostOnce, 0))).await;
    client.expect_silence().await;
    broker.handle.publish(crate::handle::message("t", "theirs", QoS::AtMostOnce)).await.unwrap();
    assert_eq!(client.recv_publish().await.payload, "theirs");
}

/// 5.0 §4.8.2 (no statement id for the distribution itself; the filter syntax is [MQTT-4.8.2-1],
/// [MQTT-4.8.2-2]): each message matching `$share/{group}/{filter}` goes to one member of the group
/// (round-robin here).
#[tokio::test(start_paused = true)]
async fn shared_subscription_delivers_each_message_to_one_member_mqtt_4_8_2() {
    let broker = TestBroker::start();
    let mut a = broker.connect(V5, "a").await;
    let mut b = broker.connect(V5, "b").await;
    a.subscribe("$share/g/jobs/+", QoS::AtMostOnce).await;
    b.subscribe("$share/g/jobs/+", QoS::AtMostOnce).await;
    for _ in 0..4 {
        broker
            .handle
            .publish(crate::handle::message("jobs/1", "j", QoS::AtMostOnce))
            .await
            .unwrap();
    }
    for client in [&mut a, &mut b] {
        client.recv_publish().await;
        client.recv_publish().await;
        client.expect_silence().await;
    }
}

/// 5.0 [MQTT-3.10.4-1], [MQTT-3.10.4-4], [MQTT-3.10.4-5], [MQTT-3.10.4-6], [MQTT-3.11.3-1]; 3.1.1
/// [MQTT-3.10.4-1], [MQTT-3.10.4-4], [MQTT-3.10.4-5], [MQTT-3.10.4-6]: UNSUBSCRIBE deletes the
/// subscriptions whose filters match exactly and is always answered by one UNSUBACK with its
/// identifier (v5: a code per filter, 0x11 where none existed).
#[tokio::test(start_paused = true)]
async fn unsubscribe_stops_delivery_and_reports_missing_filters_mqtt_3_10_4_1() {
    let broker = TestBroker::start();
    let mut sub = broker.connect(V5, "sub").await;
    sub.subscribe("t", QoS::AtMostOnce).await;
    sub.send(Packet::Unsubscribe(Unsubscribe {
        packet_id: pid(9),
        properties: Properties::default(),
        filters: vec![filter("t"), filter("other")],
    }))
    .await;
    match sub.recv().await {
        Packet::UnsubAck(ack) => {
            assert_eq!(ack.packet_id, pid(9)); // 5.0 [MQTT-3.10.4-5], 3.1.1 [MQTT-3.10.4-4]
            assert_eq!(
                ack.reason_codes,
                vec![ReasonCode::Success, ReasonCode::NoSubscriptionExisted]
            );
        }
        other => panic!("{other:?}"),
    }
    broker.handle.publish(crate::handle::message("t", "x", QoS::AtMostOnce)).await.unwrap();
    sub.expect_silence().await;
}

/// 5.0 [MQTT-3.8.4-7], [MQTT-3.9.3-2]: a filter beyond `BrokerConfig::max_subscriptions_per_session`
/// gets 0x97 Quota exceeded; replacing an existing subscription does not count.
#[tokio::test(start_paused = true)]
async fn subscriptions_beyond_the_limit_get_quota_exceeded_mqtt_3_8_4_7() {
    let broker = TestBroker::with_config(BrokerConfig {
        max_subscriptions_per_session: 1,
        ..BrokerConfig::default()
    });
    let mut client = broker.connect(V5, "c").await;
    let s = Subscribe {
        packet_id: pid(1),
        properties: Properties::default(),
        subscriptions: ["a", "b", "a"]
            .into_iter()
            .map(|f| mqtt_codec::Subscription {
                filter: filter(f),
                options: qos_options(QoS::AtMostOnce),
            })
            .collect(),
    };
    let ack = client.subscribe_with(s).await;
    assert_eq!(
        ack.reason_codes,
        vec![ReasonCode::Success, ReasonCode::QuotaExceeded, ReasonCode::Success]
    );
}

/// Subscribes a fresh client to `filter` and to `end`, publishes to `topic` and then to `end`, and says
/// whether the message to `topic` arrived before the one to `end`.
async fn matches(filter: &str, topic: &str) -> bool {
    let broker = TestBroker::start();
    let mut sub = broker.connect(V5, "sub").await;
    sub.subscribe(filter, QoS::AtMostOnce).await;
    sub.subscribe("end", QoS::AtMostOnce).await;
    broker.handle.publish(crate::handle::message(topic, "x", QoS::AtMostOnce)).await.unwrap();
    broker.handle.publish(crate::handle::message("end", "end", QoS::AtMostOnce)).await.unwrap();
    let first = sub.recv_publish().await;
    if first.payload == "end" {
        return false;
    }
    assert_eq!(sub.recv_publish().await.payload, "end");
    true
}

/// 5.0 [MQTT-4.7.1-1], [MQTT-4.7.1-2], [MQTT-4.7.2-1], [MQTT-4.7.3-4]; 3.1.1 [MQTT-4.7.1-2],
/// [MQTT-4.7.1-3], [MQTT-4.7.2-1], [MQTT-4.7.3-4]: the examples of §4.7 through the whole broker. `#`
/// matches its parent level and any number of children; `+` exactly one level; neither matches a
/// topic starting with `$` from the first level; no normalisation.
#[tokio::test(start_paused = true)]
async fn topic_filters_match_as_section_4_7_says_mqtt_4_7_1_2() {
    let cases = [
        ("sport/tennis/player1/#", "sport/tennis/player1", true),
        ("sport/tennis/player1/#", "sport/tennis/player1/ranking", true),
        ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", true),
        ("sport/#", "sport", true),
        ("#", "sport/tennis", true),
        ("sport/tennis/+", "sport/tennis/player1", true),
        ("sport/tennis/+", "sport/tennis/player1/ranking", false),
        ("sport/+", "sport", false),
        ("sport/+", "sport/", true),
        ("+/+", "/finance", true),
        ("/+", "/finance", true),
        ("+", "/finance", false),
        ("+/tennis/#", "sport/tennis/player1", true),
        ("#", "$SYS/monitor/Clients", false),
        ("+/monitor/Clients", "$SYS/monitor/Clients", false),
        ("$SYS/#", "$SYS/monitor/Clients", true),
        ("$SYS/monitor/+", "$SYS/monitor/Clients", true),
        ("ACCOUNTS", "Accounts", false),
        ("/finance", "finance", false),
        ("Accounts payable", "Accounts payable", true),
    ];
    for (filter, topic, expected) in cases {
        assert_eq!(matches(filter, topic).await, expected, "filter {filter:?}, topic {topic:?}");
    }
}

/// 3.1.1 [MQTT-3.3.5-1]: a message matching several overlapping subscriptions of one client is
/// delivered once, at the highest QoS among them (the broker never sends the optional extra copies).
#[tokio::test(start_paused = true)]
async fn v311_overlapping_subscriptions_deliver_once_at_the_highest_qos_mqtt_3_3_5_1() {
    let broker = TestBroker::start();
    let mut sub = broker.connect(V311, "sub").await;
    sub.subscribe("a/+", QoS::AtMostOnce).await;
    sub.subscribe("a/#", QoS::ExactlyOnce).await;
    sub.subscribe("#", QoS::AtLeastOnce).await;
    broker.handle.publish(crate::handle::message("a/b", "x", QoS::ExactlyOnce)).await.unwrap();
    let got = sub.recv_publish().await;
    assert_eq!(got.delivery.qos(), QoS::ExactlyOnce);
    sub.expect_silence().await;
}

/// 5.0 [MQTT-3.3.4-3]: only the Subscription Identifiers of the subscriptions a message matched travel
/// with it, also on the retained messages a subscription brings (§3.8.2.1.2).
#[tokio::test(start_paused = true)]
async fn subscription_identifiers_come_only_from_matching_subscriptions_mqtt_3_3_4_3() {
    let broker = TestBroker::start();
    let mut retained = crate::handle::message("a/r", "kept", QoS::AtMostOnce);
    retained.retain = true;
    broker.handle.publish(retained).await.unwrap();
    let mut sub = broker.connect(V5, "sub").await;
    let mut with_id = subscribe_packet(1, "a/+", qos_options(QoS::AtMostOnce));
    with_id.properties.subscription_identifiers = vec![sub_id(7)];
    sub.subscribe_with(with_id).await;
    let got = sub.recv_publish().await;
    assert_eq!(
        (got.payload.as_ref(), got.properties.subscription_identifiers),
        (&b"kept"[..], vec![sub_id(7)])
    );
    sub.subscribe("b/#", QoS::AtMostOnce).await;
    for (t, ids) in [("b/x", vec![]), ("a/x", vec![sub_id(7)])] {
        broker.handle.publish(crate::handle::message(t, "x", QoS::AtMostOnce)).await.unwrap();
        assert_eq!(sub.recv_publish().await.properties.subscription_identifiers, ids, "{t}");
    }
}

/// 5.0 [MQTT-3.3.4-5]: a client with a shared and a non-shared subscription matching one message gets
/// one copy for each, each with the Subscription Identifier of its own subscription.
#[tokio::test(start_paused = true)]
async fn shared_and_non_shared_subscriptions_each_get_a_copy_mqtt_3_3_4_5() {
    let broker = TestBroker::start();
    let mut sub = broker.connect(V5, "sub").await;
    for (id, f) in [(1, "t"), (2, "$share/g/t")] {
        let mut s = subscribe_packet(id, f, qos_options(QoS::AtMostOnce));
        s.properties.subscription_identifiers = vec![sub_id(u32::from(id))];
        sub.subscribe_with(s).await;
    }
    broker.handle.publish(crate::handle::message("t", "x", QoS::AtMostOnce)).await.unwrap();
    let mut ids: Vec<_> = Vec::new();
    for _ in 0..2 {
        ids.extend(sub.recv_publish().await.properties.subscription_identifiers);
    }
    ids.sort_unstable();
    assert_eq!(ids, vec![sub_id(1), sub_id(2)]);
    sub.expect_silence().await;
}

/// 5.0 [MQTT-4.8.2-3]: each member of a shared subscription gets messages at most at the QoS it was
/// granted.
#[tokio::test(start_paused = true)]
async fn shared_subscription_respects_each_members_granted_qos_mqtt_4_8_2_3() {
    let broker = TestBroker::start();
    let mut a = broker.connect(V5, "a").await;
    let mut b = broker.connect(V5, "b").await;
    a.subscribe("$share/g/t", QoS::AtMostOnce).await;
    b.subscribe("$share/g/t", QoS::AtLeastOnce).await;
    for _ in 0..2 {
        broker.handle.publish(crate::handle::message("t", "x", QoS::ExactlyOnce)).await.unwrap();
    }
    assert_eq!(a.recv_publish().await.delivery.qos(), QoS::AtMostOnce);
    assert_eq!(b.recv_publish().await.delivery.qos(), QoS::AtLeastOnce);
}

/// 5.0 [MQTT-4.8.2-6]: a PUBACK with a Reason Code of 0x80 or greater from the member that got a
/// shared message ends it: no other member gets it.
#[tokio::test(start_paused = true)]
async fn shared_message_refused_by_its_member_is_not_sent_to_another_mqtt_4_8_2_6() {
    let broker = TestBroker::start();
    let mut a = broker.connect(V5, "a").await;
    let mut b = broker.connect(V5, "b").await;
    a.subscribe("$share/g/t", QoS::AtLeastOnce).await;
    b.subscribe("$share/g/t", QoS::AtLeastOnce).await;
    broker.handle.publish(crate::handle::message("t", "x", QoS::AtLeastOnce)).await.unwrap();
    // Whichever member got it refuses it; the other must hear nothing.
    let (chosen, other) = tokio::select! {
        got = a.recv_publish() => ((&mut a, got), &mut b),
        got = b.recv_publish() => ((&mut b, got), &mut a),
    };
    let (member, got) = chosen;
    let refusal = mqtt_codec::PubAck {
        reason_code: ReasonCode::UnspecifiedError,
        ..mqtt_codec::PubAck::new(got.delivery.packet_id().unwrap())
    };
    member.send(Packet::PubAck(refusal)).await;
    other.expect_silence().await;
    member.expect_silence().await;
}

/// 5.0 [MQTT-3.8.3-4]: No Local on a shared subscription is a Protocol Error: DISCONNECT 0x82
/// ([MQTT-4.13.1-1]).
#[tokio::test(start_paused = true)]
async fn no_local_on_a_shared_subscription_is_a_protocol_error_mqtt_3_8_3_4() {
    let broker = TestBroker::start();
    let mut client = broker.connect(V5, "c").await;
    let options = SubscriptionOptions { no_local: true, ..qos_options(QoS::AtMostOnce) };
    client.send(Packet::Subscribe(subscribe_packet(1, "$share/g/t", options))).await;
    assert_eq!(client.expect_closed().await.unwrap().reason_code, ReasonCode::ProtocolError);
}

/// 5.0 [MQTT-3.10.4-2], [MQTT-3.10.4-3]; 3.1.1 [MQTT-3.10.4-2], [MQTT-3.10.4-3]: after UNSUBSCRIBE no
/// new messages are added for the client, and a QoS 2 message it had already been sent still completes
/// (PUBREC gets PUBREL).
#[tokio::test(start_paused = true)]
async fn unsubscribe_completes_messages_already_sent_mqtt_3_10_4_3() {
    for version in [V311, V5] {
        let broker = TestBroker::start();
        let mut sub = broker.connect(version, "sub").await;
        sub.subscribe("t", QoS::ExactlyOnce).await;
        broker.handle.publish(crate::handle::message("t", "x", QoS::ExactlyOnce)).await.unwrap();
        let id = sub.recv_publish().await.delivery.packet_id().unwrap();
        sub.send(Packet::Unsubscribe(Unsubscribe {
            packet_id: pid(2),
            properties: Properties::default(),
            filters: vec![filter("t")],
        }))
        .await;
        assert!(matches!(sub.recv().await, Packet::UnsubAck(ack) if ack.packet_id == pid(2)));
        broker.handle.publish(crate::handle::message("t", "y", QoS::ExactlyOnce)).await.unwrap();
        sub.send(Packet::PubRec(mqtt_codec::PubRec::new(id))).await;
        assert_eq!(sub.recv().await, Packet::PubRel(mqtt_codec::PubRel::new(id)));
        sub.send(Packet::PubComp(mqtt_codec::PubComp::new(id))).await;
        sub.expect_silence().await;
    }
}

/// v3.1.1 has no Quota exceeded: a filter beyond `BrokerConfig::max_subscriptions_per_session` gets
/// return code 0x80 Failure (3.1.1 [MQTT-3.8.4-5], [MQTT-3.9.3-1]).
#[tokio::test(start_paused = true)]
async fn v311_subscriptions_beyond_the_limit_get_failure_mqtt_3_8_4_5() {
    let broker = TestBroker::with_config(BrokerConfig {
        max_subscriptions_per_session: 1,
        ..BrokerConfig::default()
    });
    let mut client = broker.connect(V311, "c").await;
    let mut s = subscribe_packet(1, "a", qos_options(QoS::AtLeastOnce));
    s.subscriptions.push(mqtt_codec::Subscription {
        filter: filter("b"),
        options: qos_options(QoS::AtLeastOnce),
    });
    let ack = client.subscribe_with(s).await;
    assert_eq!(ack.reason_codes, vec![ReasonCode::GrantedQos1, ReasonCode::UnspecifiedError]);
}

/// 5.0 [MQTT-3.3.4-6] is the client's duty; a Subscription Identifier a publisher sends anyway is not
/// passed on: subscribers see only the identifiers of their own subscriptions.
#[tokio::test(start_paused = true)]
async fn subscription_identifiers_from_a_publisher_are_not_forwarded_mqtt_3_3_4_6() {
    let broker = TestBroker::start();
    let mut sub = broker.connect(V5, "sub").await;
    sub.subscribe("t", QoS::AtMostOnce).await;
    let mut publ = broker.connect(V5, "pub").await;
    let mut p = publish("t", "x", QoS::AtMostOnce, 0);
    p.properties.subscription_identifiers = vec![sub_id(5)];
    publ.send(Packet::Publish(p)).await;
    assert_eq!(sub.recv_publish().await.properties.subscription_identifiers, vec![]);
}
