//! QoS 1 and 2 protocol flows in both directions: packet identifiers, the DUP flag, ordering,
//! redelivery to a resumed session and flow control by Receive Maximum (5.0 §4.3, §4.4, §4.6, §4.9;
//! 3.1.1 §4.3, §4.4, §4.6). Each test cites the statements it checks, with the version they come from.

use std::collections::HashSet;
use std::num::NonZeroU16;

use mqtt_codec::{
    Connect, Delivery, Packet, ProtocolVersion, PubComp, PubRec, PubRel, QoS, ReasonCode,
};

use crate::{BrokerConfig, TestBroker, V5, V311, connect, pid, publish};

/// A CONNECT that keeps the session for an hour (v3.1.1: Clean Session 0) unless `clean`.
fn persistent(version: ProtocolVersion, id: &str, clean: bool) -> Connect {
    let mut c = connect(version, id);
    c.clean_start = clean;
    if version == V5 {
        c.properties.session_expiry_interval = Some(3600);
    }
    c
}

/// A v5 CONNECT for a persistent session whose client accepts `receive_maximum` unacknowledged
/// messages.
fn with_receive_maximum(id: &str, clean: bool, receive_maximum: u16) -> Connect {
    let mut c = persistent(V5, id, clean);
    c.properties.receive_maximum = NonZeroU16::new(receive_maximum);
    c
}

/// 5.0 [MQTT-4.3.2-5], 3.1.1 [MQTT-4.3.2-2]: once the server has sent PUBACK, a PUBLISH with the same
/// Packet Identifier is a new message, whatever its DUP flag.
#[tokio::test(start_paused = true)]
async fn qos1_packet_id_reused_after_puback_is_a_new_message_mqtt_4_3_2_5() {
    for version in [V311, V5] {
        let broker = TestBroker::start();
        let mut sub = broker.connect(version, "sub").await;
        sub.subscribe("t", QoS::AtMostOnce).await;
        let mut publ = broker.connect(version, "pub").await;
        publ.publish(publish("t", "first", QoS::AtLeastOnce, 1)).await;
        let mut again = publish("t", "second", QoS::AtLeastOnce, 1);
        again.delivery = Delivery::AtLeastOnce { packet_id: pid(1), dup: true };
        publ.publish(again).await;
        assert_eq!(sub.recv_publish().await.payload, "first");
        assert_eq!(sub.recv_publish().await.payload, "second");
    }
}

/// 5.0 [MQTT-4.3.3-8], [MQTT-4.3.3-11], [MQTT-4.3.3-12]; 3.1.1 [MQTT-4.3.3-2]: the server answers a QoS 2
/// PUBLISH with PUBREC and a PUBREL with PUBCOMP, each with the same Packet Identifier, and after the
/// PUBCOMP the identifier starts a new message.
#[tokio::test(start_paused = true)]
async fn qos2_packet_id_reused_after_pubcomp_is_a_new_message_mqtt_4_3_3_12() {
    for version in [V311, V5] {
        let broker = TestBroker::start();
        let mut sub = broker.connect(version, "sub").await;
        sub.subscribe("t", QoS::AtMostOnce).await;
        let mut publ = broker.connect(version, "pub").await;
        for payload in ["first", "second"] {
            publ.send(Packet::Publish(publish("t", payload, QoS::ExactlyOnce, 7))).await;
            assert_eq!(publ.recv().await, Packet::PubRec(PubRec::new(pid(7))));
            publ.send(Packet::PubRel(PubRel::new(pid(7)))).await;
            assert_eq!(publ.recv().await, Packet::PubComp(PubComp::new(pid(7))));
            assert_eq!(sub.recv_publish().await.payload, payload);
        }
    }
}

/// 5.0 and 3.1.1 [MQTT-3.3.1-3]: the DUP flag of a forwarded PUBLISH says only whether that packet is a
/// retransmission; the publisher's DUP flag is not passed on.
#[tokio::test(start_paused = true)]
async fn dup_flag_is_not_forwarded_mqtt_3_3_1_3() {
    for version in [V311, V5] {
        let broker = TestBroker::start();
        let mut sub = broker.connect(version, "sub").await;
        sub.subscribe("t", QoS::AtLeastOnce).await;
        let mut publ = broker.connect(version, "pub").await;
        let mut p = publish("t", "x", QoS::AtLeastOnce, 3);
        p.delivery = Delivery::AtLeastOnce { packet_id: pid(3), dup: true };
        publ.publish(p).await;
        let got = sub.recv_publish().await;
        assert!(matches!(got.delivery, Delivery::AtLeastOnce { dup: false, .. }), "{got:?}");
    }
}

/// 5.0 [MQTT-2.2.1-4], [MQTT-4.3.2-1], [MQTT-4.3.2-2], [MQTT-4.3.3-1], [MQTT-4.3.3-2]; 3.1.1
/// [MQTT-4.3.2-1], [MQTT-4.3.3-1]: each new QoS 1 or 2 PUBLISH the server sends carries a non-zero
/// Packet Identifier that no other unacknowledged message uses, and DUP 0.
#[tokio::test(start_paused = true)]
async fn outbound_packet_ids_are_unused_and_dup_is_0_mqtt_2_2_1_4() {
    for version in [V311, V5] {
        let broker = TestBroker::start();
        let mut sub = broker.connect(version, "sub").await;
        sub.subscribe("t", QoS::ExactlyOnce).await;
        for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            broker.handle.publish(crate::handle::message("t", "x", qos)).await.unwrap();
        }
        let mut ids = HashSet::new();
        for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let got = sub.recv_publish().await;
            assert_eq!(got.delivery.qos(), qos);
            assert!(!got.delivery.dup(), "{got:?}");
            assert!(ids.insert(got.delivery.packet_id().unwrap()), "packet id reused: {got:?}");
        }
    }
}

/// 5.0 and 3.1.1 [MQTT-4.6.0-6]: messages from one publisher to one topic at one QoS reach a
/// subscriber in the order they were published, also when most of them wait behind a small send
/// window.
#[tokio::test(start_paused = true)]
async fn messages_keep_their_publish_order_mqtt_4_6_0_6() {
    const PAYLOADS: [&str; 8] = ["0", "1", "2", "3", "4", "5", "6", "7"];
    for version in [V311, V5] {
        let broker = TestBroker::with_config(BrokerConfig {
            max_inflight: NonZeroU16::new(2).unwrap(),
            ..BrokerConfig::default()
        });
        let mut sub = broker.connect(version, "sub").await;
        sub.subscribe("t", QoS::AtLeastOnce).await;
        let mut publ = broker.connect(version, "pub").await;
        for (id, payload) in (1..).zip(PAYLOADS) {
            publ.send(Packet::Publish(publish("t", payload, QoS::AtLeastOnce, id))).await;
        }
        for payload in PAYLOADS {
            let got = sub.recv_publish().await;
            assert_eq!(got.payload, payload);
            sub.puback(got.delivery.packet_id().unwrap()).await;
        }
    }
}

/// 5.0 [MQTT-4.4.0-2], [MQTT-3.3.4-9]: a PUBREC with a Reason Code of 0x80 or greater acknowledges the
/// PUBLISH: no PUBREL follows, it frees its place in the client's Receive Maximum, and it is not sent
/// again when the session resumes.
#[tokio::test(start_paused = true)]
async fn pubrec_with_an_error_code_ends_the_exchange_mqtt_4_4_0_2() {
    let broker = TestBroker::start();
    let (mut sub, _) = broker.connect_with(with_receive_maximum("sub", true, 1)).await;
    sub.subscribe("t", QoS::ExactlyOnce).await;
    for payload in ["one", "two"] {
        broker
            .handle
            .publish(crate::handle::message("t", payload, QoS::ExactlyOnce))
            .await
            .unwrap();
    }
    let one = sub.recv_publish().await;
    assert_eq!(one.payload, "one");
    sub.expect_silence().await;
    let rec = PubRec {
        reason_code: ReasonCode::UnspecifiedError,
        ..PubRec::new(one.delivery.packet_id().unwrap())
    };
    sub.send(Packet::PubRec(rec)).await;
    // The next packet is the second message, not a PUBREL for the first.
    let two = sub.recv_publish().await;
    assert_eq!(two.payload, "two");
    drop(sub);
    let (mut sub, ack) = broker.connect_with(with_receive_maximum("sub", false, 1)).await;
    assert!(ack.session_present);
    let again = sub.recv_publish().await;
    assert_eq!(again.payload, "two");
    assert!(again.delivery.dup());
    sub.expect_silence().await;
}

/// 5.0 [MQTT-3.3.4-10], [MQTT-4.9.0-3]: while the client's Receive Maximum is used up, the server
/// still answers PINGREQ and SUBSCRIBE at once.
#[tokio::test(start_paused = true)]
async fn a_full_send_window_does_not_delay_other_packets_mqtt_3_3_4_10() {
    let broker = TestBroker::start();
    let (mut sub, _) = broker.connect_with(with_receive_maximum("sub", true, 1)).await;
    sub.subscribe("t", QoS::AtLeastOnce).await;
    for payload in ["one", "two"] {
        broker
            .handle
            .publish(crate::handle::message("t", payload, QoS::AtLeastOnce))
            .await
            .unwrap();
    }
    let one = sub.recv_publish().await;
    sub.send(Packet::PingReq).await;
    assert_eq!(sub.recv().await, Packet::PingResp);
    let ack = sub.subscribe("u", QoS::AtLeastOnce).await;
    assert_eq!(ack.reason_codes, vec![ReasonCode::GrantedQos1]);
    sub.puback(one.delivery.packet_id().unwrap()).await;
    assert_eq!(sub.recv_publish().await.payload, "two");
}

/// 5.0 [MQTT-3.3.4-9], [MQTT-4.9.0-2] together with [MQTT-4.4.0-1]: the messages resent to a resumed
/// session count against the Receive Maximum of the new connection, so a client that reconnects with
/// a smaller one never has more unacknowledged messages than it allows.
#[tokio::test(start_paused = true)]
async fn redelivery_respects_the_receive_maximum_of_the_new_connection_mqtt_3_3_4_9() {
    let broker = TestBroker::start();
    let (mut sub, _) = broker.connect_with(with_receive_maximum("sub", true, 10)).await;
    sub.subscribe("t", QoS::AtLeastOnce).await;
    for payload in ["one", "two", "three"] {
        broker
            .handle
            .publish(crate::handle::message("t", payload, QoS::AtLeastOnce))
            .await
            .unwrap();
    }
    for payload in ["one", "two", "three"] {
        assert_eq!(sub.recv_publish().await.payload, payload);
    }
    drop(sub);
    let (mut sub, ack) = broker.connect_with(with_receive_maximum("sub", false, 1)).await;
    assert!(ack.session_present);
    for payload in ["one", "two", "three"] {
        let got = sub.recv_publish().await;
        assert_eq!((got.payload.as_ref(), got.delivery.dup()), (payload.as_bytes(), true));
        // One at a time: nothing more until this one is acknowledged.
        sub.expect_silence().await;
        sub.puback(got.delivery.packet_id().unwrap()).await;
    }
}

/// v3.1.1 has no Receive Maximum, but the broker holds v3.1.1 clients to its own
/// (`BrokerConfig::receive_maximum`) and, having no DISCONNECT to send, closes the connection. A
/// documented deviation (docs/mqtt-conformance.md); v5 gets DISCONNECT 0x93 (see
/// `publish::exceeding_our_receive_maximum_gets_disconnect_0x93_mqtt_3_3_4_7`).
#[tokio::test(start_paused = true)]
async fn v311_client_exceeding_our_receive_maximum_is_disconnected() {
    let broker = TestBroker::with_config(BrokerConfig {
        receive_maximum: NonZeroU16::new(2).unwrap(),
        ..BrokerConfig::default()
    });
    let mut client = broker.connect(V311, "c").await;
    for id in 1..=2 {
        client.send(Packet::Publish(publish("t", "x", QoS::ExactlyOnce, id))).await;
        assert!(matches!(client.recv().await, Packet::PubRec(_)));
    }
    client.send(Packet::Publish(publish("t", "x", QoS::ExactlyOnce, 3))).await;
    assert!(client.expect_closed().await.is_none());
}

/// 5.0 [MQTT-4.3.3-10], [MQTT-4.4.0-1]; 3.1.1 [MQTT-4.3.3-2], [MQTT-4.4.0-1]: the QoS 2 identifiers a
/// client has sent and not yet released belong to the session: after a reconnect, the resent PUBLISH is
/// acknowledged and not delivered again, and the PUBREL completes with PUBCOMP 0x00.
#[tokio::test(start_paused = true)]
async fn inbound_qos2_state_survives_a_reconnect_mqtt_4_3_3_10() {
    for version in [V311, V5] {
        let broker = TestBroker::start();
        let mut sub = broker.connect(version, "sub").await;
        sub.subscribe("t", QoS::AtMostOnce).await;
        let (mut publ, _) = broker.connect_with(persistent(version, "pub", false)).await;
        publ.send(Packet::Publish(publish("t", "once", QoS::ExactlyOnce, 5))).await;
        assert_eq!(publ.recv().await, Packet::PubRec(PubRec::new(pid(5))));
        assert_eq!(sub.recv_publish().await.payload, "once");
        drop(publ);
        let (mut publ, ack) = broker.connect_with(persistent(version, "pub", false)).await;
        assert!(ack.session_present);
        let mut again = publish("t", "once", QoS::ExactlyOnce, 5);
        again.delivery = Delivery::ExactlyOnce { packet_id: pid(5), dup: true };
        publ.send(Packet::Publish(again)).await;
        assert_eq!(publ.recv().await, Packet::PubRec(PubRec::new(pid(5))));
        publ.send(Packet::PubRel(PubRel::new(pid(5)))).await;
        assert_eq!(publ.recv().await, Packet::PubComp(PubComp::new(pid(5))));
        sub.expect_silence().await;
    }
}

/// 5.0 [MQTT-3.1.4-3], [MQTT-4.4.0-1]; 3.1.1 [MQTT-3.1.4-2], [MQTT-4.4.0-1]: a takeover with Clean
/// Start 0 hands the new connection the messages the old one had not had acknowledged, resent with DUP
/// and their original Packet Identifiers.
#[tokio::test(start_paused = true)]
async fn takeover_resends_what_the_old_connection_left_unacknowledged_mqtt_4_4_0_1() {
    for version in [V311, V5] {
        let broker = TestBroker::start();
        let (mut old, _) = broker.connect_with(persistent(version, "s", false)).await;
        old.subscribe("t", QoS::AtLeastOnce).await;
        broker.handle.publish(crate::handle::message("t", "x", QoS::AtLeastOnce)).await.unwrap();
        let sent = old.recv_publish().await;
        let (mut new, ack) = broker.connect_with(persistent(version, "s", false)).await;
        assert!(ack.session_present);
        old.expect_closed().await;
        let again = new.recv_publish().await;
        let packet_id = sent.delivery.packet_id().unwrap();
        assert_eq!(again.delivery, Delivery::AtLeastOnce { packet_id, dup: true });
        assert_eq!(again.payload, "x");
    }
}
