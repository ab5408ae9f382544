//! `proptest` strategies for arbitrary valid packets of each protocol version. They live in the tests, not
//! in the library: the library has no `Arbitrary` implementations.

use std::num::{NonZeroU16, NonZeroU32};

use bytes::Bytes;
use mqtt_codec::{
    Auth, ClientId, ConnAck, Connect, Delivery, Disconnect, MqttString, Packet, PacketId,
    PacketType, PayloadFormat, Properties, ProtocolVersion, PubAck, PubComp, PubRec, PubRel,
    Publish, QoS, ReasonCode, RetainHandling, SubAck, Subscribe, Subscription, SubscriptionOptions,
    TopicFilter, TopicName, UnsubAck, Unsubscribe, Will,
};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::select;

pub(crate) fn string() -> impl Strategy<Value = MqttString> {
    "[a-zA-Z0-9/ é€😀\u{feff}]{0,8}".prop_map(|s| MqttString::new(s).unwrap())
}

pub(crate) fn binary() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..16).prop_map(Bytes::from)
}

pub(crate) fn topic_name() -> impl Strategy<Value = TopicName> {
    "[a-z0-9$ é]{1,4}(/[a-z0-9]{0,4}){0,3}".prop_map(|s| TopicName::new(s).unwrap())
}

pub(crate) fn topic_filter() -> impl Strategy<Value = TopicFilter> {
    let level = prop_oneof!["[a-z0-9$]{0,4}", Just("+".to_owned())];
    (vec(level, 1..4), any::<bool>(), option::of("[a-z0-9]{1,4}")).prop_map(
        |(levels, hash, share)| {
            let mut filter = levels.join("/");
            if hash {
                filter.push_str("/#");
            }
            if filter.is_empty() {
                filter.push('x');
            }
            if let Some(group) = share {
                filter = format!("$share/{group}/{filter}");
            }
            TopicFilter::new(filter).unwrap()
        },
    )
}

fn packet_id() -> impl Strategy<Value = PacketId> {
    (1..=u16::MAX).prop_map(|id| PacketId::new(id).unwrap())
}

fn qos() -> impl Strategy<Value = QoS> {
    select(vec![QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce])
}

/// Reason codes MQTT 5 allows in `packet`.
fn reason(packet: PacketType) -> impl Strategy<Value = ReasonCode> {
    let codes: Vec<ReasonCode> =
        (0..=255).filter_map(ReasonCode::from_byte).filter(|c| c.allowed_in(packet)).collect();
    select(codes)
}

/// Where a property list goes; `None` is a will.
type Ctx = Option<PacketType>;

/// Arbitrary properties allowed in `ctx`.
fn properties(ctx: Ctx) -> impl Strategy<Value = Properties> {
    let group1 = (
        option::of(select(vec![PayloadFormat::Unspecified, PayloadFormat::Utf8])),
        option::of(any::<u32>()),
        option::of(string()),
        option::of(topic_name()),
        option::of(binary()),
        vec((1..=268_435_455u32).prop_map(|v| NonZeroU32::new(v).unwrap()), 0..3),
        option::of(any::<u32>()),
        option::of(string()),
        option::of(any::<u16>()),
    );
    let group2 = (
        option::of(string()),
        option::of(binary()),
        option::of(any::<bool>()),
        option::of(any::<u32>()),
        option::of(any::<bool>()),
        option::of(string()),
        option::of(string()),
        option::of(string()),
        option::of(any::<NonZeroU16>()),
    );
    let group3 = (
        option::of(any::<u16>()),
        option::of(any::<NonZeroU16>()),
        option::of(select(vec![QoS::AtMostOnce, QoS::AtLeastOnce])),
        option::of(any::<bool>()),
        vec((string(), string()), 0..3),
        option::of(any::<NonZeroU32>()),
        option::of(any::<bool>()),
        option::of(any::<bool>()),
        option::of(any::<bool>()),
    );
    (group1, group2, group3).prop_map(move |(g1, g2, g3)| {
        let mut p = Properties {
            payload_format_indicator: g1.0,
            message_expiry_interval: g1.1,
            content_type: g1.2,
            response_topic: g1.3,
            correlation_data: g1.4,
            subscription_identifiers: g1.5,
            session_expiry_interval: g1.6,
            assigned_client_identifier: g1.7.map(ClientId::from),
            server_keep_alive: g1.8,
            authentication_method: g2.0,
            authentication_data: g2.1,
            request_problem_information: g2.2,
            will_delay_interval: g2.3,
            request_response_information: g2.4,
            response_information: g2.5,
            server_reference: g2.6,
            reason_string: g2.7,
            receive_maximum: g2.8,
            topic_alias_maximum: g3.0,
            topic_alias: g3.1,
            maximum_qos: g3.2,
            retain_available: g3.3,
            user_properties: g3.4,
            maximum_packet_size: g3.5,
            wildcard_subscription_available: g3.6,
            subscription_identifiers_available: g3.7,
            shared_subscription_available: g3.8,
        };
        restrict(&mut p, ctx);
        p
    })
}

/// Clears the properties `ctx` does not allow (the table of MQTT 5.0 §2.2.2.2).
fn restrict(p: &mut Properties, ctx: Ctx) {
    use PacketType::{Auth, ConnAck, Connect, Disconnect, Publish, Subscribe};
    let is = |types: &[PacketType]| ctx.is_some_and(|t| types.contains(&t));
    let publish_or_will = ctx.is_none() || is(&[Publish]);
    if !publish_or_will {
        p.payload_format_indicator = None;
        p.message_expiry_interval = None;
        p.content_type = None;
        p.response_topic = None;
        p.correlation_data = None;
    }
    if !is(&[Publish, Subscribe]) {
        p.subscription_identifiers.clear();
    }
    if is(&[Subscribe]) {
        p.subscription_identifiers.truncate(1);
    }
    if !is(&[Connect, ConnAck, Disconnect]) {
        p.session_expiry_interval = None;
    }
    if !is(&[ConnAck]) {
        p.assigned_client_identifier = None;
        p.server_keep_alive = None;
        p.response_information = None;
        p.maximum_qos = None;
        p.retain_available = None;
        p.wildcard_subscription_available = None;
        p.subscription_identifiers_available = None;
        p.shared_subscription_available = None;
    }
    if !is(&[Connect, ConnAck, Auth]) || p.authentication_method.is_none() {
        p.authentication_method = None;
        p.authentication_data = None;
    }
    if !is(&[Connect]) {
        p.request_problem_information = None;
        p.request_response_information = None;
    }
    if ctx.is_some() {
        p.will_delay_interval = None;
    }
    if !is(&[ConnAck, Disconnect]) {
        p.server_reference = None;
    }
    if ctx.is_none() || is(&[Connect, Publish, Subscribe, PacketType::Unsubscribe]) {
        p.reason_string = None;
    }
    if !is(&[Connect, ConnAck]) {
        p.receive_maximum = None;
        p.topic_alias_maximum = None;
        p.maximum_packet_size = None;
    }
    if !is(&[Publish]) {
        p.topic_alias = None;
    }
}

/// Properties for `ctx` on a connection speaking `version`: none on v3.1.1.
fn props(version: ProtocolVersion, ctx: Ctx) -> BoxedStrategy<Properties> {
    match version {
        ProtocolVersion::V311 => Just(Properties::default()).boxed(),
        ProtocolVersion::V5 => properties(ctx).boxed(),
    }
}

fn connect(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let will = (topic_name(), binary(), qos(), any::<bool>(), props(version, None)).prop_map(
        |(topic, payload, qos, retain, properties)| Will {
            topic,
            payload,
            qos,
            retain,
            properties,
        },
    );
    (
        any::<bool>(),
        any::<u16>(),
        props(version, Some(PacketType::Connect)),
        string(),
        option::of(will),
        option::of(string()),
        option::of(binary()),
    )
        .prop_map(
            move |(clean_start, keep_alive, properties, id, will, mut username, password)| {
                if version == ProtocolVersion::V311 && password.is_some() && username.is_none() {
                    username = Some(MqttString::default());
                }
                Packet::Connect(Box::new(Connect {
                    protocol_version: version,
                    clean_start,
                    keep_alive,
                    properties,
                    client_id: ClientId::from(id),
                    will,
                    username,
                    password,
                }))
            },
        )
}

fn connack(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let code = match version {
        ProtocolVersion::V311 => {
            (0..=5u8).prop_map(|c| ReasonCode::from_v311_connack(c).unwrap()).boxed()
        }
        ProtocolVersion::V5 => reason(PacketType::ConnAck).boxed(),
    };
    (any::<bool>(), code, props(version, Some(PacketType::ConnAck))).prop_map(
        |(session_present, reason_code, properties)| {
            Packet::ConnAck(ConnAck {
                session_present: session_present && reason_code == ReasonCode::Success,
                reason_code,
                properties,
            })
        },
    )
}

fn publish(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let delivery = prop_oneof![
        Just(Delivery::AtMostOnce),
        (packet_id(), any::<bool>())
            .prop_map(|(packet_id, dup)| Delivery::AtLeastOnce { packet_id, dup }),
        (packet_id(), any::<bool>())
            .prop_map(|(packet_id, dup)| Delivery::ExactlyOnce { packet_id, dup }),
    ];
    (
        delivery,
        any::<bool>(),
        option::of(topic_name()),
        props(version, Some(PacketType::Publish)),
        vec(any::<u8>(), 0..64),
    )
        .prop_map(move |(delivery, retain, topic, properties, payload)| {
            let topic = match topic {
                None if version == ProtocolVersion::V5 && properties.topic_alias.is_some() => None,
                None => Some(TopicName::new("fallback").unwrap()),
                some => some,
            };
            Packet::Publish(Publish {
                delivery,
                retain,
                topic,
                properties,
                payload: Bytes::from(payload),
            })
        })
}

fn ack(version: ProtocolVersion, packet: PacketType) -> impl Strategy<Value = Packet> {
    let code = match version {
        ProtocolVersion::V311 => Just(ReasonCode::Success).boxed(),
        ProtocolVersion::V5 => reason(packet).boxed(),
    };
    (packet_id(), code, props(version, Some(packet))).prop_map(
        move |(packet_id, reason_code, properties)| match packet {
            PacketType::PubAck => Packet::PubAck(PubAck { packet_id, reason_code, properties }),
            PacketType::PubRec => Packet::PubRec(PubRec { packet_id, reason_code, properties }),
            PacketType::PubRel => Packet::PubRel(PubRel { packet_id, reason_code, properties }),
            _ => Packet::PubComp(PubComp { packet_id, reason_code, properties }),
        },
    )
}

fn subscribe(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let retain_handling = select(vec![
        RetainHandling::SendAtSubscribe,
        RetainHandling::SendAtSubscribeIfNew,
        RetainHandling::DoNotSend,
    ]);
    let subscription = (topic_filter(), qos(), any::<bool>(), any::<bool>(), retain_handling)
        .prop_map(move |(filter, qos, no_local, retain_as_published, retain_handling)| {
            let options = match version {
                ProtocolVersion::V311 => {
                    SubscriptionOptions { qos, ..SubscriptionOptions::default() }
                }
                ProtocolVersion::V5 => SubscriptionOptions {
                    qos,
                    no_local: no_local && filter.share_name().is_none(),
                    retain_as_published,
                    retain_handling,
                },
            };
            Subscription { filter, options }
        });
    (packet_id(), props(version, Some(PacketType::Subscribe)), vec(subscription, 1..4)).prop_map(
        |(packet_id, properties, subscriptions)| {
            Packet::Subscribe(Subscribe { packet_id, properties, subscriptions })
        },
    )
}

fn suback(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let code = match version {
        ProtocolVersion::V311 => select(vec![
            ReasonCode::Success,
            ReasonCode::GrantedQos1,
            ReasonCode::GrantedQos2,
            ReasonCode::UnspecifiedError,
        ])
        .boxed(),
        ProtocolVersion::V5 => reason(PacketType::SubAck).boxed(),
    };
    (packet_id(), props(version, Some(PacketType::SubAck)), vec(code, 0..4)).prop_map(
        |(packet_id, properties, reason_codes)| {
            Packet::SubAck(SubAck { packet_id, properties, reason_codes })
        },
    )
}

fn unsubscribe(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    (packet_id(), props(version, Some(PacketType::Unsubscribe)), vec(topic_filter(), 1..4))
        .prop_map(|(packet_id, properties, filters)| {
            Packet::Unsubscribe(Unsubscribe { packet_id, properties, filters })
        })
}

fn unsuback(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let codes = match version {
        ProtocolVersion::V311 => Just(Vec::new()).boxed(),
        ProtocolVersion::V5 => vec(reason(PacketType::UnsubAck), 0..4).boxed(),
    };
    (packet_id(), props(version, Some(PacketType::UnsubAck)), codes).prop_map(
        |(packet_id, properties, reason_codes)| {
            Packet::UnsubAck(UnsubAck { packet_id, properties, reason_codes })
        },
    )
}

fn disconnect(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let code = match version {
        ProtocolVersion::V311 => Just(ReasonCode::Success).boxed(),
        ProtocolVersion::V5 => reason(PacketType::Disconnect).boxed(),
    };
    (code, props(version, Some(PacketType::Disconnect))).prop_map(|(reason_code, properties)| {
        Packet::Disconnect(Disconnect { reason_code, properties })
    })
}

fn auth() -> impl Strategy<Value = Packet> {
    (reason(PacketType::Auth), properties(Some(PacketType::Auth)))
        .prop_map(|(reason_code, properties)| Packet::Auth(Auth { reason_code, properties }))
}

/// An arbitrary valid packet for a connection speaking `version`.
pub(crate) fn packet(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let common = prop_oneof![
        connect(version),
        connack(version),
        publish(version),
        ack(version, PacketType::PubAck),
        ack(version, PacketType::PubRec),
        ack(version, PacketType::PubRel),
        ack(version, PacketType::PubComp),
        subscribe(version),
        suback(version),
        unsubscribe(version),
        unsuback(version),
        Just(Packet::PingReq),
        Just(Packet::PingResp),
        disconnect(version),
    ];
    match version {
        ProtocolVersion::V311 => common.boxed(),
        ProtocolVersion::V5 => prop_oneof![14 => common, 1 => auth()].boxed(),
    }
}
