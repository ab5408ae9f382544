//! Golden byte vectors: the examples of the MQTT 3.1.1 and 5.0 specifications, and packets built by hand
//! from their tables. Each vector decodes to the expected packet and that packet encodes back to the same
//! bytes.

use std::num::{NonZeroU16, NonZeroU32};

use bytes::Bytes;
use mqtt_codec::{
    Auth, ClientId, ConnAck, Connect, Delivery, Disconnect, MqttString, Packet, PacketId,
    PayloadFormat, Properties, ProtocolVersion, PubAck, PubComp, PubRec, PubRel, Publish, QoS,
    ReasonCode, RetainHandling, SubAck, Subscribe, Subscription, SubscriptionOptions, TopicFilter,
    TopicName, UnsubAck, Unsubscribe, Will,
};

use crate::{V5, V311, decode_all, encode};

/// Every golden vector: (name, version, bytes). Shared with the incomplete-input tests.
pub(crate) fn vectors() -> Vec<(&'static str, ProtocolVersion, Vec<u8>)> {
    let mut all = Vec::new();
    for (name, version, bytes, _) in cases() {
        all.push((name, version, bytes));
    }
    all
}

#[track_caller]
fn check(name: &str, version: ProtocolVersion, bytes: &[u8], expected: &Packet) {
    assert_eq!(&decode_all(bytes, version), expected, "{name}");
    assert_eq!(encode(expected, version), bytes, "{name}");
}

#[test]
fn golden_vectors() {
    for (name, version, bytes, packet) in cases() {
        check(name, version, &bytes, &packet);
    }
}

fn s(value: &str) -> MqttString {
    MqttString::new(value).unwrap()
}

fn topic(value: &str) -> TopicName {
    TopicName::new(value).unwrap()
}

fn filter(value: &str) -> TopicFilter {
    TopicFilter::new(value).unwrap()
}

fn pid(value: u16) -> PacketId {
    PacketId::new(value).unwrap()
}

fn cases() -> Vec<(&'static str, ProtocolVersion, Vec<u8>, Packet)> {
    vec![
        // 3.1.1 §3.1.2.10 Figure 3.6 flags 0xCE: user name, password, will QoS 1, will, clean session;
        // keep alive 10. Payload order from §3.1.3.
        (
            "connect v3.1.1 with will and credentials",
            V311,
            vec![
                0x10, 0x22, // CONNECT, remaining length 34
                0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name
                0x04, // protocol level 4
                0xCE, // connect flags
                0x00, 0x0A, // keep alive 10
                0x00, 0x03, b'c', b'i', b'd', // client identifier
                0x00, 0x03, b'a', b'/', b'b', // will topic
                0x00, 0x02, b'h', b'i', // will payload
                0x00, 0x04, b'u', b's', b'e', b'r', // user name
                0x00, 0x02, b'p', b'w', // password
            ],
            Packet::Connect(Box::new(Connect {
                protocol_version: V311,
                clean_start: true,
                keep_alive: 10,
                properties: Properties::default(),
                client_id: ClientId::new("cid").unwrap(),
                will: Some(Will {
                    topic: topic("a/b"),
                    payload: Bytes::from_static(b"hi"),
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    properties: Properties::default(),
                }),
                username: Some(s("user")),
                password: Some(Bytes::from_static(b"pw")),
            })),
        ),
        // 3.1.1 minimal CONNECT: empty client id, clean session, no keep alive.
        (
            "connect v3.1.1 minimal",
            V311,
            vec![
                0x10, 0x0C, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x00, 0x00, 0x00,
            ],
            Packet::Connect(Box::new(Connect::new(V311, ClientId::default(), 0))),
        ),
        // 5.0 §3.1.2 (Figure 3-6 shows the Session Expiry Interval property) with a will carrying
        // properties (§3.1.3.2) and every flag of §3.1.2.3 set except the reserved one.
        (
            "connect v5 with will and properties",
            V5,
            vec![
                0x10, 0x59, // CONNECT, remaining length 89
                0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name
                0x05, // protocol level 5
                0xF6, // user name, password, will retain, will QoS 2, will, clean start
                0x00, 0x3C, // keep alive 60
                0x11, // property length 17
                0x11, 0x00, 0x00, 0x00, 0x0A, // session expiry interval 10
                0x17, 0x01, // request problem information 1
                0x21, 0x00, 0x14, // receive maximum 20
                0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v', // user property k=v
                0x00, 0x04, b'd', b'e', b'v', b'1', // client identifier
                0x14, // will property length 20
                0x01, 0x01, // payload format indicator: UTF-8
                0x03, 0x00, 0x0A, b't', b'e', b'x', b't', b'/', b'p', b'l', b'a', b'i',
                b'n', // content type
                0x18, 0x00, 0x00, 0x00, 0x05, // will delay interval 5
                0x00, 0x0C, b'd', b'e', b'v', b'i', b'c', b'e', b's', b'/', b'd', b'e', b'v',
                b'1', // will topic
                0x00, 0x07, b'o', b'f', b'f', b'l', b'i', b'n', b'e', // will payload
                0x00, 0x04, b'd', b'e', b'v', b'1', // user name
                0x00, 0x03, 0x01, 0x02, 0x03, // password
            ],
            Packet::Connect(Box::new(Connect {
                protocol_version: V5,
                clean_start: true,
                keep_alive: 60,
                properties: Properties {
                    session_expiry_interval: Some(10),
                    request_problem_information: Some(true),
                    receive_maximum: NonZeroU16::new(20),
                    user_properties: vec![(s("k"), s("v"))],
                    ..Properties::default()
                },
                client_id: ClientId::new("dev1").unwrap(),
                will: Some(Will {
                    topic: topic("devices/dev1"),
                    payload: Bytes::from_static(b"offline"),
                    qos: QoS::ExactlyOnce,
                    retain: true,
                    properties: Properties {
                        payload_format_indicator: Some(PayloadFormat::Utf8),
                        content_type: Some(s("text/plain")),
                        will_delay_interval: Some(5),
                        ..Properties::default()
                    },
                }),
                username: Some(s("dev1")),
                password: Some(Bytes::from_static(&[1, 2, 3])),
            })),
        ),
        // 3.1.1 §3.2: session present, return code 0 (accepted).
        (
            "connack v3.1.1 accepted with session",
            V311,
            vec![0x20, 0x02, 0x01, 0x00],
            Packet::ConnAck(ConnAck { session_present: true, ..ConnAck::new(ReasonCode::Success) }),
        ),
        // 3.1.1 §3.2.2.3 Table 3.1: return code 5, not authorized.
        (
            "connack v3.1.1 not authorized",
            V311,
            vec![0x20, 0x02, 0x00, 0x05],
            Packet::ConnAck(ConnAck::new(ReasonCode::NotAuthorized)),
        ),
        // 5.0 §3.2.2.3: CONNACK properties.
        (
            "connack v5 with properties",
            V5,
            vec![
                0x20, 0x13, // CONNACK, remaining length 19
                0x00, // no session present
                0x00, // success
                0x10, // property length 16
                0x12, 0x00, 0x03, b'a', b'b', b'c', // assigned client identifier
                0x13, 0x00, 0x1E, // server keep alive 30
                0x22, 0x00, 0x0A, // topic alias maximum 10
                0x24, 0x01, // maximum QoS 1
                0x25, 0x00, // retain not available
            ],
            Packet::ConnAck(ConnAck {
                session_present: false,
                reason_code: ReasonCode::Success,
                properties: Properties {
                    assigned_client_identifier: Some(ClientId::new("abc").unwrap()),
                    server_keep_alive: Some(30),
                    topic_alias_maximum: Some(10),
                    maximum_qos: Some(QoS::AtLeastOnce),
                    retain_available: Some(false),
                    ..Properties::default()
                },
            }),
        ),
        // 5.0 §3.2.2.2: CONNACK 0x86, bad user name or password, empty properties.
        (
            "connack v5 bad credentials",
            V5,
            vec![0x20, 0x03, 0x00, 0x86, 0x00],
            Packet::ConnAck(ConnAck::new(ReasonCode::BadUserNameOrPassword)),
        ),
        // 3.1.1 §3.3: QoS 0 PUBLISH to "a/b" with payload "hello".
        (
            "publish v3.1.1 qos 0",
            V311,
            vec![0x30, 0x0A, 0x00, 0x03, b'a', b'/', b'b', b'h', b'e', b'l', b'l', b'o'],
            Packet::Publish(Publish::new(topic("a/b"), Bytes::from_static(b"hello"))),
        ),
        // 3.1.1 §3.3.2.3 Figure 3.11: topic "a/b", packet identifier 10; here QoS 1, retained.
        (
            "publish v3.1.1 qos 1 retained",
            V311,
            vec![0x33, 0x08, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x0A, b'x'],
            Packet::Publish(Publish {
                delivery: Delivery::AtLeastOnce { packet_id: pid(10), dup: false },
                retain: true,
                topic: Some(topic("a/b")),
                properties: Properties::default(),
                payload: Bytes::from_static(b"x"),
            }),
        ),
        // 5.0 §3.3.2.3: QoS 2 duplicate PUBLISH with every request/response property.
        (
            "publish v5 qos 2 with properties",
            V5,
            vec![
                0x3C, 0x23, // PUBLISH, DUP, QoS 2; remaining length 35
                0x00, 0x03, b'a', b'/', b'b', // topic name
                0x00, 0x0A, // packet identifier 10
                0x19, // property length 25
                0x01, 0x01, // payload format indicator: UTF-8
                0x02, 0x00, 0x00, 0x00, 0x3C, // message expiry interval 60
                0x08, 0x00, 0x05, b'r', b'e', b'p', b'l', b'y', // response topic
                0x09, 0x00, 0x02, 0xAB, 0xCD, // correlation data
                0x0B, 0x05, // subscription identifier 5
                0x23, 0x00, 0x02, // topic alias 2
                b'{', b'}', // payload
            ],
            Packet::Publish(Publish {
                delivery: Delivery::ExactlyOnce { packet_id: pid(10), dup: true },
                retain: false,
                topic: Some(topic("a/b")),
                properties: Properties {
                    payload_format_indicator: Some(PayloadFormat::Utf8),
                    message_expiry_interval: Some(60),
                    response_topic: Some(topic("reply")),
                    correlation_data: Some(Bytes::from_static(&[0xAB, 0xCD])),
                    subscription_identifiers: vec![NonZeroU32::new(5).unwrap()],
                    topic_alias: NonZeroU16::new(2),
                    ..Properties::default()
                },
                payload: Bytes::from_static(b"{}"),
            }),
        ),
        // 5.0 §3.3.2.3.4: a zero-length topic name with a Topic Alias.
        (
            "publish v5 topic alias only",
            V5,
            vec![0x30, 0x07, 0x00, 0x00, 0x03, 0x23, 0x00, 0x01, b'x'],
            Packet::Publish(Publish {
                delivery: Delivery::AtMostOnce,
                retain: false,
                topic: None,
                properties: Properties { topic_alias: NonZeroU16::new(1), ..Properties::default() },
                payload: Bytes::from_static(b"x"),
            }),
        ),
        // 3.1.1 §3.4: PUBACK for packet identifier 10.
        ("puback v3.1.1", V311, vec![0x40, 0x02, 0x00, 0x0A], Packet::PubAck(PubAck::new(pid(10)))),
        // 5.0 §3.4.2.1: Remaining Length 2 means Success without properties.
        ("puback v5 short", V5, vec![0x40, 0x02, 0x00, 0x0A], Packet::PubAck(PubAck::new(pid(10)))),
        // 5.0 §3.4.2.1: reason code without properties (Remaining Length 3).
        (
            "puback v5 no matching subscribers",
            V5,
            vec![0x40, 0x03, 0x00, 0x0A, 0x10],
            Packet::PubAck(PubAck {
                reason_code: ReasonCode::NoMatchingSubscribers,
                ..PubAck::new(pid(10))
            }),
        ),
        // 5.0 §3.4.2.2: a reason string.
        (
            "puback v5 not authorized with reason string",
            V5,
            vec![0x40, 0x0B, 0x00, 0x0A, 0x87, 0x07, 0x1F, 0x00, 0x04, b'd', b'e', b'n', b'y'],
            Packet::PubAck(PubAck {
                packet_id: pid(10),
                reason_code: ReasonCode::NotAuthorized,
                properties: Properties { reason_string: Some(s("deny")), ..Properties::default() },
            }),
        ),
        // 5.0 §3.5, §3.6 (fixed header flags 0010, §2.1.3), §3.7.
        ("pubrec v5", V5, vec![0x50, 0x02, 0x00, 0x0A], Packet::PubRec(PubRec::new(pid(10)))),
        ("pubrel v3.1.1", V311, vec![0x62, 0x02, 0x00, 0x0A], Packet::PubRel(PubRel::new(pid(10)))),
        (
            "pubcomp v5 packet identifier not found",
            V5,
            vec![0x70, 0x03, 0x00, 0x0A, 0x92],
            Packet::PubComp(PubComp {
                reason_code: ReasonCode::PacketIdentifierNotFound,
                ..PubComp::new(pid(10))
            }),
        ),
        // 3.1.1 §3.8.3 Figure 3.22: "a/b" QoS 1 and "c/d" QoS 2, packet identifier 10.
        (
            "subscribe v3.1.1 spec example",
            V311,
            vec![
                0x82, 0x0E, 0x00, 0x0A, 0x00, 0x03, b'a', b'/', b'b', 0x01, 0x00, 0x03, b'c', b'/',
                b'd', 0x02,
            ],
            Packet::Subscribe(Subscribe {
                packet_id: pid(10),
                properties: Properties::default(),
                subscriptions: vec![
                    Subscription {
                        filter: filter("a/b"),
                        options: SubscriptionOptions {
                            qos: QoS::AtLeastOnce,
                            ..Default::default()
                        },
                    },
                    Subscription {
                        filter: filter("c/d"),
                        options: SubscriptionOptions {
                            qos: QoS::ExactlyOnce,
                            ..Default::default()
                        },
                    },
                ],
            }),
        ),
        // 5.0 §3.8.2.1 and §3.8.3.1: a subscription identifier, every subscription option, a shared
        // subscription (§4.8.2).
        (
            "subscribe v5 with options",
            V5,
            vec![
                0x82, 0x1F, // SUBSCRIBE (flags 0010), remaining length 31
                0x00, 0x0A, // packet identifier 10
                0x02, 0x0B, 0x07, // properties: subscription identifier 7
                0x00, 0x03, b'a', b'/', b'+', // topic filter "a/+"
                0x2D, // QoS 1, no local, retain as published, retain handling 2
                0x00, 0x11, b'$', b's', b'h', b'a', b'r', b'e', b'/', b'g', b'/', b's', b'e', b'n',
                b's', b'o', b'r', b'/', b'#', // "$share/g/sensor/#"
                0x12, // QoS 2, retain handling 1
            ],
            Packet::Subscribe(Subscribe {
                packet_id: pid(10),
                properties: Properties {
                    subscription_identifiers: vec![NonZeroU32::new(7).unwrap()],
                    ..Properties::default()
                },
                subscriptions: vec![
                    Subscription {
                        filter: filter("a/+"),
                        options: SubscriptionOptions {
                            qos: QoS::AtLeastOnce,
                            no_local: true,
                            retain_as_published: true,
                            retain_handling: RetainHandling::DoNotSend,
                        },
                    },
                    Subscription {
                        filter: filter("$share/g/sensor/#"),
                        options: SubscriptionOptions {
                            qos: QoS::ExactlyOnce,
                            no_local: false,
                            retain_as_published: false,
                            retain_handling: RetainHandling::SendAtSubscribeIfNew,
                        },
                    },
                ],
            }),
        ),
        // 3.1.1 §3.9.3 Figure 3.26: granted QoS 0, granted QoS 2, failure.
        (
            "suback v3.1.1 spec example",
            V311,
            vec![0x90, 0x05, 0x00, 0x0A, 0x00, 0x02, 0x80],
            Packet::SubAck(SubAck {
                packet_id: pid(10),
                properties: Properties::default(),
                reason_codes: vec![
                    ReasonCode::Success,
                    ReasonCode::GrantedQos2,
                    ReasonCode::UnspecifiedError,
                ],
            }),
        ),
        // 5.0 §3.9.3: granted QoS 1, not authorized, wildcard subscriptions not supported.
        (
            "suback v5",
            V5,
            vec![0x90, 0x06, 0x00, 0x0A, 0x00, 0x01, 0x87, 0xA2],
            Packet::SubAck(SubAck {
                packet_id: pid(10),
                properties: Properties::default(),
                reason_codes: vec![
                    ReasonCode::GrantedQos1,
                    ReasonCode::NotAuthorized,
                    ReasonCode::WildcardSubscriptionsNotSupported,
                ],
            }),
        ),
        // 3.1.1 §3.10.3 Figure 3.30: "a/b" and "c/d".
        (
            "unsubscribe v3.1.1 spec example",
            V311,
            vec![
                0xA2, 0x0C, 0x00, 0x0A, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x03, b'c', b'/', b'd',
            ],
            Packet::Unsubscribe(Unsubscribe {
                packet_id: pid(10),
                properties: Properties::default(),
                filters: vec![filter("a/b"), filter("c/d")],
            }),
        ),
        // 5.0 §3.10: with a user property.
        (
            "unsubscribe v5",
            V5,
            vec![
                0xA2, 0x0D, 0x00, 0x0A, 0x05, 0x26, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, b'a', b'/',
                b'#',
            ],
            Packet::Unsubscribe(Unsubscribe {
                packet_id: pid(10),
                properties: Properties {
                    user_properties: vec![(s(""), s(""))],
                    ..Properties::default()
                },
                filters: vec![filter("a/#")],
            }),
        ),
        ("unsuback v3.1.1", V311, vec![0xB0, 0x02, 0x00, 0x0A], unsuback(vec![])),
        // 5.0 §3.11.3: success, no subscription existed.
        (
            "unsuback v5",
            V5,
            vec![0xB0, 0x05, 0x00, 0x0A, 0x00, 0x00, 0x11],
            unsuback(vec![ReasonCode::Success, ReasonCode::NoSubscriptionExisted]),
        ),
        // §3.12 and §3.13.
        ("pingreq v3.1.1", V311, vec![0xC0, 0x00], Packet::PingReq),
        ("pingreq v5", V5, vec![0xC0, 0x00], Packet::PingReq),
        ("pingresp v5", V5, vec![0xD0, 0x00], Packet::PingResp),
        // 3.1.1 §3.14.
        (
            "disconnect v3.1.1",
            V311,
            vec![0xE0, 0x00],
            Packet::Disconnect(Disconnect::new(ReasonCode::Success)),
        ),
        // 5.0 §3.14.2.1: Remaining Length 0 is a normal disconnection.
        (
            "disconnect v5 short",
            V5,
            vec![0xE0, 0x00],
            Packet::Disconnect(Disconnect::new(ReasonCode::Success)),
        ),
        (
            "disconnect v5 server shutting down",
            V5,
            vec![0xE0, 0x02, 0x8B, 0x00],
            Packet::Disconnect(Disconnect::new(ReasonCode::ServerShuttingDown)),
        ),
        // 5.0 §3.14.2: disconnect with will message, session expiry 0 and a reason string.
        (
            "disconnect v5 with properties",
            V5,
            vec![
                0xE0, 0x0D, // DISCONNECT, remaining length 13
                0x04, // disconnect with will message
                0x0B, // property length 11
                0x11, 0x00, 0x00, 0x00, 0x00, // session expiry interval 0
                0x1F, 0x00, 0x03, b'b', b'y', b'e', // reason string
            ],
            Packet::Disconnect(Disconnect {
                reason_code: ReasonCode::DisconnectWithWillMessage,
                properties: Properties {
                    session_expiry_interval: Some(0),
                    reason_string: Some(s("bye")),
                    ..Properties::default()
                },
            }),
        ),
        // 5.0 §3.15: continue authentication with a method and data.
        (
            "auth v5 continue",
            V5,
            vec![
                0xF0, 0x15, // AUTH, remaining length 21
                0x18, // continue authentication
                0x13, // property length 19
                0x15, 0x00, 0x0B, b'S', b'C', b'R', b'A', b'M', b'-', b'S', b'H', b'A', b'-', b'1',
                0x16, 0x00, 0x02, 0x01, 0x02, // authentication data
            ],
            Packet::Auth(Auth {
                reason_code: ReasonCode::ContinueAuthentication,
                properties: Properties {
                    authentication_method: Some(s("SCRAM-SHA-1")),
                    authentication_data: Some(Bytes::from_static(&[1, 2])),
                    ..Properties::default()
                },
            }),
        ),
        // 5.0 §3.15.2.1: Remaining Length 0 is Success.
        ("auth v5 short", V5, vec![0xF0, 0x00], Packet::Auth(Auth::new(ReasonCode::Success))),
    ]
}

fn unsuback(reason_codes: Vec<ReasonCode>) -> Packet {
    Packet::UnsubAck(UnsubAck {
        packet_id: pid(10),
        properties: Properties::default(),
        reason_codes,
    })
}

#[test]
fn properties_decode_in_any_order() {
    // The CONNACK vector above with its properties reversed.
    let bytes = [
        0x20, 0x13, 0x00, 0x00, 0x10, 0x25, 0x00, 0x24, 0x01, 0x22, 0x00, 0x0A, 0x13, 0x00, 0x1E,
        0x12, 0x00, 0x03, b'a', b'b', b'c',
    ];
    let Packet::ConnAck(ack) = decode_all(&bytes, V5) else { panic!("not a connack") };
    assert_eq!(ack.properties.server_keep_alive, Some(30));
    assert_eq!(ack.properties.retain_available, Some(false));
}

#[test]
fn user_properties_keep_order_and_repeat() {
    // 5.0 §3.3.2.3.7: the same name may appear more than once; order is preserved.
    let bytes = [
        0x30, 0x13, 0x00, 0x01, b't', 0x0E, // topic "t", property length 14
        0x26, 0x00, 0x01, b'a', 0x00, 0x01, b'1', // a=1
        0x26, 0x00, 0x01, b'a', 0x00, 0x01, b'2', // a=2
        b'p',
    ];
    let Packet::Publish(publish) = decode_all(&bytes, V5) else { panic!("not a publish") };
    assert_eq!(publish.properties.user_properties, vec![(s("a"), s("1")), (s("a"), s("2"))]);
    assert_eq!(publish.payload, Bytes::from_static(b"p"));
    assert_eq!(encode(&Packet::Publish(publish), V5), bytes);
}

#[test]
fn publish_subscription_identifiers_repeat() {
    // 5.0 §3.3.4: a PUBLISH to a client carries one Subscription Identifier per matching subscription.
    let bytes = [0x30, 0x09, 0x00, 0x01, b't', 0x05, 0x0B, 0x01, 0x0B, 0x80, 0x01];
    let Packet::Publish(publish) = decode_all(&bytes, V5) else { panic!("not a publish") };
    let ids: Vec<u32> =
        publish.properties.subscription_identifiers.iter().map(|id| id.get()).collect();
    assert_eq!(ids, vec![1, 128]);
}

#[test]
fn v311_drops_v5_fields_on_encode() {
    // A v5 PUBACK failure forwarded to a v3.1.1 peer: v3.1.1 has no reason codes (3.1.1 §3.4).
    let ack = Packet::PubAck(PubAck {
        packet_id: pid(1),
        reason_code: ReasonCode::NotAuthorized,
        properties: Properties { reason_string: Some(s("no")), ..Properties::default() },
    });
    assert_eq!(encode(&ack, V311), [0x40, 0x02, 0x00, 0x01]);
    // A v5-only CONNACK code becomes the closest v3.1.1 return code.
    let connack = Packet::ConnAck(ConnAck::new(ReasonCode::Banned));
    assert_eq!(encode(&connack, V311), [0x20, 0x02, 0x00, 0x05]);
    // Any SUBACK failure is 0x80 in v3.1.1.
    let suback = Packet::SubAck(SubAck {
        packet_id: pid(1),
        properties: Properties::default(),
        reason_codes: vec![ReasonCode::QuotaExceeded],
    });
    assert_eq!(encode(&suback, V311), [0x90, 0x03, 0x00, 0x01, 0x80]);
}

#[test]
fn decode_connect_reports_the_version() {
    for (version, bytes) in [
        (
            V311,
            &[0x10, 0x0C, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x00, 0x00, 0x00][..],
        ),
        (
            V5,
            &[
                0x10, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x00, 0x00, 0x00,
                0x00,
            ],
        ),
    ] {
        let (connect, len) =
            mqtt_codec::decode_connect(bytes, mqtt_codec::MAX_PACKET_SIZE).unwrap().unwrap();
        assert_eq!(connect.protocol_version, version);
        assert_eq!(len, bytes.len());
        let mut buf = bytes::BytesMut::from(bytes);
        buf.extend_from_slice(&[0xC0, 0x00]);
        let again = mqtt_codec::decode_connect_buf(&mut buf, 100).unwrap().unwrap();
        assert_eq!(again, connect);
        // The next packet stays in the buffer.
        assert_eq!(&buf[..], [0xC0, 0x00]);
    }
}
