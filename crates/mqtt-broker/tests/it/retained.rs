//! Retained messages (§3.3.1.3) and Retain Handling / Retain As Published (§3.8.3.1).

use mqtt_codec::{Packet, QoS, RetainHandling, SubscriptionOptions};

use crate::{TestBroker, V5, V311, publish, qos_options, subscribe_packet};

fn retained(t: &str, payload: &'static str) -> mqtt_codec::Publish {
    let mut p = publish(t, payload, QoS::AtMostOnce, 0);
    p.retain = true;
    p
}

/// 5.0 [MQTT-3.3.1-5], [MQTT-3.3.1-9]; 3.1.1 [MQTT-3.3.1-5], [MQTT-3.3.1-6], [MQTT-3.3.1-7],
/// [MQTT-3.3.1-8]: a retained message (here QoS 0) replaces the topic's previous one, and a new
/// subscription gets the last retained message of each matching topic, with RETAIN set.
#[tokio::test(start_paused = true)]
async fn retained_message_is_sent_on_subscribe_with_retain_set_mqtt_3_3_1_5() {
    for version in [V311, V5] {
        let broker = TestBroker::start();
        let mut publ = broker.connect(version, "pub").await;
        publ.send(Packet::Publish(retained("s/a", "old"))).await;
        publ.send(Packet::Publish(retained("s/a", "new"))).await; // replaces
        publ.send(Packet::Publish(retained("s/b", "b"))).await;
        let mut sub = broker.connect(version, "sub").await;
        sub.subscribe("s/+", QoS::AtLeastOnce).await;
        let mut got = vec![];
        for _ in 0..2 {
            let p = sub.recv_publish().await;
            assert!(p.retain);
            got.push(String::from_utf8(p.payload.to_vec()).unwrap());
        }
        got.sort();
        assert_eq!(got, vec!["b", "new"]);
        sub.expect_silence().await;
    }
}

/// 5.0 [MQTT-3.3.1-6], [MQTT-3.3.1-7]; 3.1.1 [MQTT-3.3.1-10], [MQTT-3.3.1-11]: a retained PUBLISH with
/// an empty payload goes to current subscribers (without RETAIN) and removes the topic's retained
/// message; it is not retained itself.
#[tokio::test(start_paused = true)]
async fn empty_retained_payload_deletes_mqtt_3_3_1_6_and_3_3_1_7() {
    for version in [V311, V5] {
        let broker = TestBroker::start();
        let mut publ = broker.connect(version, "pub").await;
        publ.send(Packet::Publish(retained("s/a", "x"))).await;
        let mut live = broker.connect(version, "live").await;
        live.subscribe("s/a", QoS::AtMostOnce).await;
        assert_eq!(live.recv_publish().await.payload, "x");
        publ.send(Packet::Publish(retained("s/a", ""))).await;
        // Current subscribers still get the empty message.
        let empty = live.recv_publish().await;
        assert_eq!((empty.payload.as_ref(), empty.retain), (&b""[..], false));
        let mut sub = broker.connect(version, "sub").await;
        sub.subscribe("s/#", QoS::AtMostOnce).await;
        sub.expect_silence().await;
    }
}

/// 5.0 and 3.1.1 [MQTT-4.7.2-1]: a retained message on a `$` topic is not sent for filters starting
/// with `#` or `+`, only for a filter naming the `$` level.
#[tokio::test(start_paused = true)]
async fn retained_dollar_topics_do_not_match_leading_wildcards_mqtt_4_7_2_1() {
    let broker = TestBroker::start();
    let mut publ = broker.connect(V5, "pub").await;
    publ.send(Packet::Publish(retained("$SYS/x", "sys"))).await;
    let mut sub = broker.connect(V5, "sub").await;
    sub.subscribe("#", QoS::AtMostOnce).await;
    sub.subscribe("+/x", QoS::AtMostOnce).await;
    sub.expect_silence().await;
    sub.subscribe("$SYS/#", QoS::AtMostOnce).await;
    assert_eq!(sub.recv_publish().await.payload, "sys");
}

/// 5.0 [MQTT-3.3.1-10]: Retain Handling 1 sends retained messages only when the subscription is new.
#[tokio::test(start_paused = true)]
async fn retain_handling_1_sends_only_for_new_subscriptions_mqtt_3_3_1_10() {
    let broker = TestBroker::start();
    let mut publ = broker.connect(V5, "pub").await;
    publ.send(Packet::Publish(retained("t", "x"))).await;
    let mut sub = broker.connect(V5, "sub").await;
    let options = SubscriptionOptions {
        retain_handling: RetainHandling::SendAtSubscribeIfNew,
        ..qos_options(QoS::AtMostOnce)
    };
    sub.subscribe_with(subscribe_packet(1, "t", options)).await;
    assert_eq!(sub.recv_publish().await.payload, "x");
    sub.subscribe_with(subscribe_packet(2, "t", options)).await;
    sub.expect_silence().await;
}

/// 5.0 [MQTT-3.3.1-11]: Retain Handling 2 never sends retained messages.
#[tokio::test(start_paused = true)]
async fn retain_handling_2_never_sends_mqtt_3_3_1_11() {
    let broker = TestBroker::start();
    let mut publ = broker.connect(V5, "pub").await;
    publ.send(Packet::Publish(retained("t", "x"))).await;
    let mut sub = broker.connect(V5, "sub").await;
    let options = SubscriptionOptions {
        retain_handling: RetainHandling::DoNotSend,
        ..qos_options(QoS::AtMostOnce)
    };
    sub.subscribe_with(subscribe_packet(1, "t", options)).await;
    sub.expect_silence().await;
}

/// 5.0 [MQTT-3.3.1-12], [MQTT-3.3.1-13]: on messages forwarded to established subscriptions, RETAIN is
/// cleared unless the subscription asked for Retain As Published.
#[tokio::test(start_paused = true)]
async fn retain_flag_on_forwarded_messages_follows_retain_as_published_mqtt_3_3_1_12_and_13() {
    let broker = TestBroker::start();
    let mut plain = broker.connect(V5, "plain").await;
    plain.subscribe("t", QoS::AtMostOnce).await;
    let mut rap = broker.connect(V5, "rap").await;
    let options = SubscriptionOptions { retain_as_published: true, ..qos_options(QoS::AtMostOnce) };
    rap.subscribe_with(subscribe_packet(1, "t", options)).await;
    let mut publ = broker.connect(V5, "pub").await;
    publ.send(Packet::Publish(retained("t", "x"))).await;
    assert!(!plain.recv_publish().await.retain);
    assert!(rap.recv_publish().await.retain);
}

/// 5.0 §3.3.1.3 (no statement id: retained messages go to new *Non-shared* Subscriptions): a shared
/// subscription gets no retained messages.
#[tokio::test(start_paused = true)]
async fn shared_subscriptions_get_no_retained_messages() {
    let broker = TestBroker::start();
    let mut publ = broker.connect(V5, "pub").await;
    publ.send(Packet::Publish(retained("t", "x"))).await;
    let mut sub = broker.connect(V5, "sub").await;
    sub.subscribe("$share/g/t", QoS::AtMostOnce).await;
    sub.expect_silence().await;
}

/// 5.0 [MQTT-3.3.1-8]; 3.1.1 [MQTT-3.3.1-12]: a PUBLISH without RETAIN neither stores nor replaces
/// the topic's retained message.
#[tokio::test(start_paused = true)]
async fn publish_without_retain_leaves_the_retained_message_mqtt_3_3_1_8() {
    for version in [V311, V5] {
        let broker = TestBroker::start();
        let mut publ = broker.connect(version, "pub").await;
        publ.send(Packet::Publish(retained("s/a", "kept"))).await;
        publ.send(Packet::Publish(publish("s/a", "live", QoS::AtMostOnce, 0))).await;
        publ.send(Packet::Publish(publish("s/b", "live", QoS::AtMostOnce, 0))).await;
        let mut sub = broker.connect(version, "sub").await;
        sub.subscribe("s/+", QoS::AtMostOnce).await;
        assert_eq!(sub.recv_publish().await.payload, "kept");
        sub.expect_silence().await;
    }
}

/// 3.1.1 [MQTT-3.3.1-8], [MQTT-3.3.1-9]: RETAIN is 1 on a retained message sent because a subscription
/// was made, and 0 on a message sent to an established subscription, however it was published.
#[tokio::test(start_paused = true)]
async fn v311_retain_flag_is_set_only_for_new_subscriptions_mqtt_3_3_1_8_and_9() {
    let broker = TestBroker::start();
    let mut publ = broker.connect(V311, "pub").await;
    publ.send(Packet::Publish(retained("t", "old"))).await;
    let mut sub = broker.connect(V311, "sub").await;
    sub.subscribe("t", QoS::AtMostOnce).await;
    let old = sub.recv_publish().await;
    assert_eq!((old.payload.as_ref(), old.retain), (&b"old"[..], true));
    publ.send(Packet::Publish(retained("t", "new"))).await;
    let new = sub.recv_publish().await;
    assert_eq!((new.payload.as_ref(), new.retain), (&b"new"[..], false));
}

/// 5.0 [MQTT-3.8.4-4]; 3.1.1 [MQTT-3.8.4-3]: subscribing again to the same filter (Retain Handling 0)
/// replaces the subscription and sends the matching retained messages again.
#[tokio::test(start_paused = true)]
async fn subscribing_again_resends_retained_messages_mqtt_3_8_4_3() {
    for version in [V311, V5] {
        let broker = TestBroker::start();
        let mut publ = broker.connect(version, "pub").await;
        publ.send(Packet::Publish(retained("t", "x"))).await;
        let mut sub = broker.connect(version, "sub").await;
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
            sub.subscribe("t", qos).await;
            let got = sub.recv_publish().await;
            assert_eq!((got.payload.as_ref(), got.retain), (&b"x"[..], true));
        }
        sub.expect_silence().await;
    }
}

/// 5.0 [MQTT-3.8.4-8]; 3.1.1 [MQTT-3.8.4-6]: a retained message is sent at the lower of its own QoS
/// and the QoS granted to the subscription.
#[tokio::test(start_paused = true)]
async fn retained_message_is_sent_at_the_lower_qos_mqtt_3_8_4_8() {
    for version in [V311, V5] {
        let broker = TestBroker::start();
        let mut m = crate::handle::message("t", "x", QoS::AtLeastOnce);
        m.retain = true;
        broker.handle.publish(m).await.unwrap();
        let mut sub = broker.connect(version, "sub").await;
        for (granted, expected) in
            [(QoS::AtMostOnce, QoS::AtMostOnce), (QoS::ExactlyOnce, QoS::AtLeastOnce)]
        {
            sub.subscribe("t", granted).await;
            let got = sub.recv_publish().await;
            assert_eq!(got.delivery.qos(), expected);
            if let Some(id) = got.delivery.packet_id() {
                sub.puback(id).await;
            }
        }
    }
}

/// 3.1.1 [MQTT-3.1.2-7] (printed "MQTT-3.1.2.7" in the standard): retained messages are not part of
/// the session and survive its end.
#[tokio::test(start_paused = true)]
async fn retained_messages_outlive_the_session_that_published_them_mqtt_3_1_2_7() {
    let broker = TestBroker::start();
    let mut publ = broker.connect(V311, "pub").await;
    publ.send(Packet::Publish(retained("t", "x"))).await;
    publ.disconnect().await;
    let mut sub = broker.connect(V311, "sub").await;
    sub.subscribe("t", QoS::AtMostOnce).await;
    assert_eq!(sub.recv_publish().await.payload, "x");
}

/// 5.0 [MQTT-3.3.2-5], [MQTT-3.3.2-6]: a retained message carries its Message Expiry Interval minus the
/// time it has been retained, and is no longer sent once that has passed.
#[tokio::test(start_paused = true)]
async fn retained_messages_expire_mqtt_3_3_2_5_and_6() {
    let broker = TestBroker::start();
    let mut m = crate::handle::message("t", "x", QoS::AtMostOnce);
    m.retain = true;
    m.properties.message_expiry_interval = Some(10);
    broker.handle.publish(m).await.unwrap();
    tokio::time::sleep(tokio::time::Duration::from_secs(4)).await;
    let mut sub = broker.connect(V5, "early").await;
    sub.subscribe("t", QoS::AtMostOnce).await;
    assert_eq!(sub.recv_publish().await.properties.message_expiry_interval, Some(6));
    tokio::time::sleep(tokio::time::Duration::from_secs(7)).await;
    let mut late = broker.connect(V5, "late").await;
    late.subscribe("t", QoS::AtMostOnce).await;
    late.expect_silence().await;
}

/// Broker limit (`BrokerConfig::max_retained_messages`; the specification sets none, so this departs
/// from 5.0 [MQTT-3.3.1-5] / 3.1.1 [MQTT-3.3.1-5] once the limit is reached): a retained message for a
/// new topic beyond the limit still reaches current subscribers but is not retained; replacing a
/// topic's message still works.
#[tokio::test(start_paused = true)]
async fn retained_messages_beyond_the_limit_are_delivered_but_not_retained() {
    let broker = TestBroker::with_config(mqtt_broker::BrokerConfig {
        max_retained_messages: 1,
        ..mqtt_broker::BrokerConfig::default()
    });
    let mut live = broker.connect(V5, "live").await;
    live.subscribe("s/+", QoS::AtMostOnce).await;
    let mut publ = broker.connect(V5, "pub").await;
    for (t, payload) in [("s/a", "a1"), ("s/b", "b"), ("s/a", "a2")] {
        publ.send(Packet::Publish(retained(t, payload))).await;
        assert_eq!(live.recv_publish().await.payload, payload);
    }
    let mut sub = broker.connect(V5, "sub").await;
    sub.subscribe("s/+", QoS::AtMostOnce).await;
    assert_eq!(sub.recv_publish().await.payload, "a2");
    sub.expect_silence().await;
}
