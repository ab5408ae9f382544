//! SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK and matching (§3.8 to §3.11, §4.7, §4.8).

use mqtt_codec::{
    Packet, Properties, QoS, ReasonCode, Subscribe, SubscriptionOptions, Unsubscribe,
};

use crate::{
    BrokerConfig, TestAuth, TestBroker, V5, V311, filter, pid, publish, qos_options, sub_id,
    subscribe_packet,
};

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
            assert_eq!(ack.packet_id, pid(9)); // [MQTT-3.10.4-4]
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

#[tokio::test(start_paused = true)]
async fn subscriptions_beyond_the_limit_get_quota_exceeded() {
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
