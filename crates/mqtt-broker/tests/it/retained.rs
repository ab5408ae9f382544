//! Retained messages (§3.3.1.3) and Retain Handling / Retain As Published (§3.8.3.1).

use mqtt_codec::{Packet, QoS, RetainHandling, SubscriptionOptions};

use crate::{TestBroker, V5, V311, publish, qos_options, subscribe_packet};

fn retained(t: &str, payload: &'static str) -> mqtt_codec::Publish {
    let mut p = publish(t, payload, QoS::AtMostOnce, 0);
    p.retain = true;
    p
}

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

#[tokio::test(start_paused = true)]
async fn empty_retained_payload_deletes_mqtt_3_3_1_6_and_3_3_1_7() {
    let broker = TestBroker::start();
    let mut publ = broker.connect(V5, "pub").await;
    publ.send(Packet::Publish(retained("s/a", "x"))).await;
    let mut live = broker.connect(V5, "live").await;
    live.subscribe("s/a", QoS::AtMostOnce).await;
    assert_eq!(live.recv_publish().await.payload, "x");
    publ.send(Packet::Publish(retained("s/a", ""))).await;
    // Current subscribers still get the empty message.
    assert_eq!(live.recv_publish().await.payload, "");
    let mut sub = broker.connect(V5, "sub").await;
    sub.subscribe("s/#", QoS::AtMostOnce).await;
    sub.expect_silence().await;
}

#[tokio::test(start_paused = true)]
async fn retained_dollar_topics_do_not_match_leading_wildcards_mqtt_4_7_2_1() {
    let broker = TestBroker::start();
    let mut publ = broker.connect(V5, "pub").await;
    publ.send(Packet::Publish(retained("$SYS/x", "sys"))).await;
    let mut sub = broker.connect(V5, "sub").await;
    sub.subscribe("#", QoS::AtMostOnce).await;
    sub.expect_silence().await;
    sub.subscribe("$SYS/#", QoS::AtMostOnce).await;
    assert_eq!(sub.recv_publish().await.payload, "sys");
}

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

#[tokio::test(start_paused = true)]
async fn shared_subscriptions_get_no_retained_messages() {
    let broker = TestBroker::start();
    let mut publ = broker.connect(V5, "pub").await;
    publ.send(Packet::Publish(retained("t", "x"))).await;
    let mut sub = broker.connect(V5, "sub").await;
    sub.subscribe("$share/g/t", QoS::AtMostOnce).await;
    sub.expect_silence().await;
}
