//! Malformed and protocol-violating input: each case names the normative statement it breaks, the
//! expected error and the MQTT 5 reason code a server sends before closing the connection (§4.13).

use mqtt_codec::{
    DecodeError, MAX_PACKET_SIZE, PacketType, ProtocolVersion, ReasonCode, StringError, TopicError,
};

use crate::{V5, V311};

const MALFORMED: ReasonCode = ReasonCode::MalformedPacket;
const PROTOCOL: ReasonCode = ReasonCode::ProtocolError;

#[track_caller]
fn check(version: ProtocolVersion, bytes: &[u8], expected: DecodeError, reason: ReasonCode) {
    assert_eq!(expected.reason_code(), reason, "{expected:?}");
    let actual = mqtt_codec::decode(bytes, version, MAX_PACKET_SIZE);
    assert_eq!(actual, Err(expected), "{bytes:02X?}");
}

#[track_caller]
fn check_connect(bytes: &[u8], expected: DecodeError, reason: ReasonCode) {
    assert_eq!(expected.reason_code(), reason, "{expected:?}");
    let actual = mqtt_codec::decode_connect(bytes, MAX_PACKET_SIZE);
    assert_eq!(actual, Err(expected), "{bytes:02X?}");
}

/// A CONNECT with protocol `level`, `flags`, keep alive 0, empty properties (v5) and `payload`.
fn connect(level: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', level, flags, 0x00, 0x00];
    if level == 5 {
        body.push(0x00);
    }
    body.extend_from_slice(payload);
    let mut packet = vec![0x10, u8::try_from(body.len()).unwrap()];
    packet.extend(body);
    packet
}

#[test]
fn fixed_header() {
    // §2.1.2: packet type 0 is reserved; 15 is reserved in v3.1.1 (AUTH is v5 only).
    check(V5, &[0x00, 0x00], DecodeError::ReservedPacketType(0), MALFORMED);
    check(V311, &[0xF0, 0x00], DecodeError::ReservedPacketType(15), MALFORMED);
    // [MQTT-2.1.3-1]: PUBREL, SUBSCRIBE, UNSUBSCRIBE flags are 0010, all others 0000.
    let flags = |packet, flags| DecodeError::InvalidFixedHeaderFlags { packet, flags };
    check(V5, &[0x60, 0x02, 0x00, 0x01], flags(PacketType::PubRel, 0), MALFORMED);
    check(V311, &[0x80, 0x02], flags(PacketType::Subscribe, 0), MALFORMED);
    check(V5, &[0xA3], flags(PacketType::Unsubscribe, 3), MALFORMED);
    check(V5, &[0xC1, 0x00], flags(PacketType::PingReq, 1), MALFORMED);
    check(V5, &[0x42, 0x02, 0x00, 0x01], flags(PacketType::PubAck, 2), MALFORMED);
    // §1.5.5, §2.1.4: at most four bytes, minimal encoding [MQTT-1.5.5-1].
    check(V5, &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F], DecodeError::InvalidVarInt, MALFORMED);
    check(V5, &[0xC0, 0x80, 0x00], DecodeError::InvalidVarInt, MALFORMED);
}

#[test]
fn lengths() {
    // A field running past the remaining length.
    let end = |packet, field| DecodeError::UnexpectedEnd { packet, field };
    check(
        V5,
        &[0x30, 0x05, 0x00, 0x05, b'a', b'b', b'c'],
        end(PacketType::Publish, "topic name"),
        MALFORMED,
    );
    check(V5, &[0x40, 0x01, 0x00], end(PacketType::PubAck, "packet identifier"), MALFORMED);
    // A property list longer than the packet.
    check(
        V5,
        &[0x40, 0x04, 0x00, 0x01, 0x00, 0x05],
        end(PacketType::PubAck, "properties"),
        MALFORMED,
    );
    // Bytes after the last field.
    let trailing = |packet, extra| DecodeError::TrailingBytes { packet, extra };
    check(V5, &[0xC0, 0x01, 0x00], trailing(PacketType::PingReq, 1), MALFORMED);
    check(V311, &[0x40, 0x03, 0x00, 0x01, 0x00], trailing(PacketType::PubAck, 1), MALFORMED);
    check(V311, &[0xE0, 0x01, 0x00], trailing(PacketType::Disconnect, 1), MALFORMED);
}

#[test]
fn strings() {
    let invalid = |error| DecodeError::InvalidString { packet: PacketType::Publish, error };
    // [MQTT-1.5.4-1]: ill-formed UTF-8, including an encoded surrogate (U+D800).
    check(
        V311,
        &[0x30, 0x05, 0x00, 0x03, 0xED, 0xA0, 0x80],
        invalid(StringError::InvalidUtf8),
        MALFORMED,
    );
    check(V311, &[0x30, 0x03, 0x00, 0x01, 0xFF], invalid(StringError::InvalidUtf8), MALFORMED);
    // [MQTT-1.5.4-2]: U+0000.
    check(
        V5,
        &[0x30, 0x06, 0x00, 0x03, b'a', 0x00, b'b', 0x00],
        invalid(StringError::NullCharacter),
        MALFORMED,
    );
}

#[test]
fn publish() {
    // [MQTT-3.3.1-4]: QoS 3.
    check(
        V5,
        &[0x36, 0x05, 0x00, 0x01, b'a', 0x00, 0x01],
        DecodeError::InvalidPublishQos,
        MALFORMED,
    );
    // [MQTT-3.3.1-2]: DUP with QoS 0.
    check(V311, &[0x38, 0x03, 0x00, 0x01, b'a'], DecodeError::DupWithQos0, MALFORMED);
    // [MQTT-3.3.2-2]: wildcards in a Topic Name.
    let name = DecodeError::InvalidTopicName;
    check(
        V311,
        &[0x30, 0x05, 0x00, 0x03, b'a', b'/', b'#'],
        name(TopicError::WildcardInName),
        MALFORMED,
    );
    check(V5, &[0x30, 0x04, 0x00, 0x01, b'+', 0x00], name(TopicError::WildcardInName), MALFORMED);
    // [MQTT-4.7.3-1]: a v3.1.1 Topic Name is at least one character.
    check(V311, &[0x30, 0x02, 0x00, 0x00], name(TopicError::Empty), MALFORMED);
    // 5.0 §3.3.2.1: zero-length Topic Name without a Topic Alias.
    check(V5, &[0x30, 0x03, 0x00, 0x00, 0x00], DecodeError::EmptyTopicWithoutAlias, PROTOCOL);
    // [MQTT-3.3.2-8]: Topic Alias 0.
    check(
        V5,
        &[0x30, 0x07, 0x00, 0x01, b'a', 0x03, 0x23, 0x00, 0x00],
        DecodeError::InvalidPropertyValue(0x23),
        PROTOCOL,
    );
    // [MQTT-2.2.1-3]: a QoS 1 PUBLISH with packet identifier 0.
    check(
        V311,
        &[0x32, 0x05, 0x00, 0x01, b'a', 0x00, 0x00],
        DecodeError::ZeroPacketId(PacketType::Publish),
        PROTOCOL,
    );
    // §3.3.2.3.9 / [MQTT-3.3.2-14]: a Response Topic with a wildcard.
    check(
        V5,
        &[0x30, 0x08, 0x00, 0x01, b'a', 0x04, 0x08, 0x00, 0x01, b'#'],
        name(TopicError::WildcardInName),
        MALFORMED,
    );
}

#[test]
fn properties() {
    // §2.2.2.2: an identifier not valid for the packet type (Session Expiry Interval in PUBLISH).
    check(
        V5,
        &[0x30, 0x09, 0x00, 0x01, b'a', 0x05, 0x11, 0x00, 0x00, 0x00, 0x00],
        DecodeError::PropertyNotAllowed { id: 0x11, packet: PacketType::Publish },
        MALFORMED,
    );
    // §2.2.2.2: an identifier MQTT 5 does not define.
    check(
        V5,
        &[0x40, 0x05, 0x00, 0x01, 0x00, 0x01, 0x7F],
        DecodeError::UnknownProperty(0x7F),
        MALFORMED,
    );
    // §2.2.2.2: a two-byte identifier (no defined identifier is that large).
    check(
        V5,
        &[0x40, 0x06, 0x00, 0x01, 0x00, 0x02, 0x80, 0x01],
        DecodeError::UnknownProperty(128),
        MALFORMED,
    );
    // §3.1.2.11.9: a second Authentication Method is a Protocol Error.
    check_connect(
        &[
            0x10, 0x19, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x00, //
            0x0C, 0x15, 0x00, 0x03, b'a', b'b', b'c', 0x15, 0x00, 0x03, b'a', b'b', b'c', //
            0x00, 0x00,
        ],
        DecodeError::DuplicateProperty(0x15),
        PROTOCOL,
    );
    // §3.4.2.2: a second Reason String.
    check(
        V5,
        &[0x40, 0x0A, 0x00, 0x01, 0x80, 0x06, 0x1F, 0x00, 0x00, 0x1F, 0x00, 0x00],
        DecodeError::DuplicateProperty(0x1F),
        PROTOCOL,
    );
    // §3.1.2.11.3: Receive Maximum 0.
    check_connect(
        &connect_props(&[0x21, 0x00, 0x00]),
        DecodeError::InvalidPropertyValue(0x21),
        PROTOCOL,
    );
    // §3.1.2.11.4: Maximum Packet Size 0.
    check_connect(
        &connect_props(&[0x27, 0x00, 0x00, 0x00, 0x00]),
        DecodeError::InvalidPropertyValue(0x27),
        PROTOCOL,
    );
    // §3.1.2.11.7: Request Problem Information other than 0 or 1.
    check_connect(&connect_props(&[0x17, 0x02]), DecodeError::InvalidPropertyValue(0x17), PROTOCOL);
    // §3.1.2.11.10: Authentication Data without Authentication Method.
    check_connect(
        &connect_props(&[0x16, 0x00, 0x00]),
        DecodeError::AuthDataWithoutMethod,
        PROTOCOL,
    );
    // §3.2.2.3.4: Maximum QoS 2.
    check(
        V5,
        &[0x20, 0x05, 0x00, 0x00, 0x02, 0x24, 0x02],
        DecodeError::InvalidPropertyValue(0x24),
        PROTOCOL,
    );
    // A will property list may not carry CONNECT-only properties (§3.1.3.2).
    check_connect(
        &connect(5, 0x06, &[0x00, 0x00, 0x02, 0x11, 0x00]),
        DecodeError::PropertyNotAllowed { id: 0x11, packet: PacketType::Connect },
        MALFORMED,
    );
}

/// A v5 CONNECT with the given property bytes and an empty client identifier.
fn connect_props(props: &[u8]) -> Vec<u8> {
    let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x00];
    body.push(u8::try_from(props.len()).unwrap());
    body.extend_from_slice(props);
    body.extend_from_slice(&[0x00, 0x00]);
    let mut packet = vec![0x10, u8::try_from(body.len()).unwrap()];
    packet.extend(body);
    packet
}

#[test]
fn connect_packet() {
    let empty_id = [0x00, 0x00];
    // [MQTT-3.1.2-3]: the reserved flag.
    check_connect(&connect(4, 0x03, &empty_id), DecodeError::ConnectReservedFlag, MALFORMED);
    // [MQTT-3.1.2-12] (3.1.1 [MQTT-3.1.2-14]): Will QoS 3.
    check_connect(&connect(5, 0x1E, &empty_id), DecodeError::InvalidWillFlags, MALFORMED);
    // [MQTT-3.1.2-11]: Will QoS without the Will Flag.
    check_connect(&connect(5, 0x0A, &empty_id), DecodeError::InvalidWillFlags, MALFORMED);
    // [MQTT-3.1.2-13]: Will Retain without the Will Flag.
    check_connect(&connect(4, 0x22, &empty_id), DecodeError::InvalidWillFlags, MALFORMED);
    // 3.1.1 [MQTT-3.1.2-22]: a password without a user name (allowed in v5, §3.1.2.9).
    check_connect(
        &connect(4, 0x42, &[0x00, 0x00, 0x00, 0x01, b'p']),
        DecodeError::PasswordWithoutUsername,
        PROTOCOL,
    );
    assert!(
        mqtt_codec::decode_connect(&connect(5, 0x42, &[0x00, 0x00, 0x00, 0x01, b'p']), 100).is_ok()
    );
    // [MQTT-3.1.2-2]: protocol level 3 (MQTT 3.1) is not supported: CONNACK 0x84.
    check_connect(
        &connect(3, 0x02, &empty_id),
        DecodeError::UnsupportedProtocolVersion(3),
        ReasonCode::UnsupportedProtocolVersion,
    );
    // [MQTT-3.1.2-1]: protocol name other than "MQTT".
    check_connect(
        &[
            0x10, 0x0E, 0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x03, 0x02, 0x00, 0x00,
            0x00, 0x00,
        ],
        DecodeError::InvalidProtocolName,
        ReasonCode::UnsupportedProtocolVersion,
    );
    // [MQTT-3.1.0-1]: the first packet must be a CONNECT; known from the first byte.
    check_connect(&[0x30], DecodeError::FirstPacketNotConnect(PacketType::Publish), PROTOCOL);
    // A will topic with a wildcard ([MQTT-3.1.3-?] via [MQTT-3.3.2-2]).
    check_connect(
        &connect(4, 0x06, &[0x00, 0x00, 0x00, 0x01, b'#', 0x00, 0x00]),
        DecodeError::InvalidTopicName(TopicError::WildcardInName),
        MALFORMED,
    );
    // Client identifier with U+0000 [MQTT-1.5.4-2].
    check_connect(
        &connect(5, 0x02, &[0x00, 0x01, 0x00]),
        DecodeError::InvalidString {
            packet: PacketType::Connect,
            error: StringError::NullCharacter,
        },
        MALFORMED,
    );
}

#[test]
fn connack() {
    // [MQTT-3.2.2-1]: reserved acknowledge flags.
    check(V311, &[0x20, 0x02, 0x02, 0x00], DecodeError::ConnAckReservedFlags, MALFORMED);
    // 3.1.1 §3.2.2.3: return codes 6-255 are reserved.
    let code = |code| DecodeError::InvalidReasonCode { packet: PacketType::ConnAck, code };
    check(V311, &[0x20, 0x02, 0x00, 0x06], code(6), PROTOCOL);
    // 5.0 §3.2.2.2: 0x10 is not a CONNACK reason code.
    check(V5, &[0x20, 0x03, 0x00, 0x10, 0x00], code(0x10), PROTOCOL);
    // [MQTT-3.2.2-6]: Session Present with a failure code.
    check(V5, &[0x20, 0x03, 0x01, 0x87, 0x00], DecodeError::SessionPresentOnFailure, PROTOCOL);
}

#[test]
fn acks() {
    // [MQTT-2.2.1-3]: packet identifier 0.
    check(V5, &[0x40, 0x02, 0x00, 0x00], DecodeError::ZeroPacketId(PacketType::PubAck), PROTOCOL);
    check(
        V311,
        &[0x70, 0x02, 0x00, 0x00],
        DecodeError::ZeroPacketId(PacketType::PubComp),
        PROTOCOL,
    );
    // §3.6.2.1: PUBREL allows only 0x00 and 0x92.
    check(
        V5,
        &[0x62, 0x03, 0x00, 0x01, 0x10],
        DecodeError::InvalidReasonCode { packet: PacketType::PubRel, code: 0x10 },
        PROTOCOL,
    );
    // §3.15.2.1: AUTH allows only 0x00, 0x18, 0x19.
    check(
        V5,
        &[0xF0, 0x01, 0x87],
        DecodeError::InvalidReasonCode { packet: PacketType::Auth, code: 0x87 },
        PROTOCOL,
    );
    // §3.14.2.1: 0x84 is not a DISCONNECT reason code.
    check(
        V5,
        &[0xE0, 0x01, 0x84],
        DecodeError::InvalidReasonCode { packet: PacketType::Disconnect, code: 0x84 },
        PROTOCOL,
    );
    // §3.9.3: 0x03 is not a SUBACK reason code; 3.1.1 allows only 0, 1, 2, 0x80.
    check(
        V311,
        &[0x90, 0x03, 0x00, 0x01, 0x03],
        DecodeError::InvalidReasonCode { packet: PacketType::SubAck, code: 3 },
        PROTOCOL,
    );
    check(
        V311,
        &[0x90, 0x03, 0x00, 0x01, 0x87],
        DecodeError::InvalidReasonCode { packet: PacketType::SubAck, code: 0x87 },
        PROTOCOL,
    );
}

/// A SUBSCRIBE with `props` and one filter `filter` with options `options`.
fn subscribe(props: &[u8], filter: &[u8], options: u8) -> Vec<u8> {
    let mut body = vec![0x00, 0x01, u8::try_from(props.len()).unwrap()];
    body.extend_from_slice(props);
    body.extend_from_slice(&[0x00, u8::try_from(filter.len()).unwrap()]);
    body.extend_from_slice(filter);
    body.push(options);
    let mut packet = vec![0x82, u8::try_from(body.len()).unwrap()];
    packet.extend(body);
    packet
}

#[test]
fn subscribe_packets() {
    // [MQTT-3.8.3-2]: no topic filter.
    check(
        V311,
        &[0x82, 0x02, 0x00, 0x01],
        DecodeError::NoTopicFilters(PacketType::Subscribe),
        PROTOCOL,
    );
    check(
        V5,
        &[0x82, 0x03, 0x00, 0x01, 0x00],
        DecodeError::NoTopicFilters(PacketType::Subscribe),
        PROTOCOL,
    );
    // [MQTT-3.10.3-2].
    check(
        V311,
        &[0xA2, 0x02, 0x00, 0x01],
        DecodeError::NoTopicFilters(PacketType::Unsubscribe),
        PROTOCOL,
    );
    // [MQTT-3.8.3-5]: reserved option bits.
    check(V5, &subscribe(&[], b"a", 0x40), DecodeError::SubscriptionOptionsReserved, MALFORMED);
    // 3.1.1 [MQTT-3.8.3-4]: bits 7-2 are reserved in v3.1.1 (No Local is a v5 option).
    check(
        V311,
        &[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x04],
        DecodeError::SubscriptionOptionsReserved,
        MALFORMED,
    );
    // §3.8.3.1: Maximum QoS 3, Retain Handling 3.
    check(V5, &subscribe(&[], b"a", 0x03), DecodeError::InvalidSubscriptionQos, PROTOCOL);
    check(V5, &subscribe(&[], b"a", 0x30), DecodeError::InvalidRetainHandling, PROTOCOL);
    // [MQTT-3.8.3-4]: No Local on a shared subscription.
    check(
        V5,
        &subscribe(&[], b"$share/g/a", 0x04),
        DecodeError::NoLocalOnSharedSubscription,
        PROTOCOL,
    );
    // [MQTT-4.7.1-2], [MQTT-4.7.1-3], [MQTT-4.8.2-1]: topic filter syntax.
    let filter = DecodeError::InvalidTopicFilter;
    check(
        V5,
        &subscribe(&[], b"a/#/b", 0x00),
        filter(TopicError::MisplacedMultiLevelWildcard),
        MALFORMED,
    );
    check(
        V5,
        &subscribe(&[], b"a+", 0x00),
        filter(TopicError::MisplacedSingleLevelWildcard),
        MALFORMED,
    );
    check(V5, &subscribe(&[], b"$share//a", 0x00), filter(TopicError::InvalidShare), MALFORMED);
    check(V5, &subscribe(&[], b"", 0x00), filter(TopicError::Empty), MALFORMED);
    // §3.8.2.1.2: Subscription Identifier 0, or more than one.
    check(
        V5,
        &subscribe(&[0x0B, 0x00], b"a", 0x00),
        DecodeError::InvalidPropertyValue(0x0B),
        PROTOCOL,
    );
    check(
        V5,
        &subscribe(&[0x0B, 0x01, 0x0B, 0x02], b"a", 0x00),
        DecodeError::DuplicateProperty(0x0B),
        PROTOCOL,
    );
    // A Subscription Identifier of more than four bytes.
    check(
        V5,
        &subscribe(&[0x0B, 0x80, 0x80, 0x80, 0x80, 0x01], b"a", 0x00),
        DecodeError::InvalidVarInt,
        MALFORMED,
    );
}

#[test]
fn encode_errors() {
    use bytes::{Bytes, BytesMut};
    use mqtt_codec::{
        Auth, ConnAck, EncodeError, Packet, Properties, PubAck, Publish, TopicName, Unsubscribe,
    };

    let encode = |packet: &Packet, version| {
        let mut buf = BytesMut::new();
        let result = mqtt_codec::encode(packet, version, &mut buf);
        assert!(result.is_ok() || buf.is_empty(), "wrote bytes before failing");
        result
    };
    let pid = mqtt_codec::PacketId::new(1).unwrap();
    assert_eq!(
        encode(&Packet::Auth(Auth::new(ReasonCode::Success)), V311),
        Err(EncodeError::NotInVersion(PacketType::Auth))
    );
    assert_eq!(
        encode(&Packet::ConnAck(ConnAck::new(ReasonCode::NoMatchingSubscribers)), V5),
        Err(EncodeError::ReasonCodeNotAllowed {
            packet: PacketType::ConnAck,
            code: ReasonCode::NoMatchingSubscribers
        })
    );
    let publish =
        Publish { topic: None, ..Publish::new(TopicName::new("t").unwrap(), Bytes::new()) };
    assert_eq!(encode(&Packet::Publish(publish), V5), Err(EncodeError::EmptyTopicWithoutAlias));
    let mut with_expiry = Publish::new(TopicName::new("t").unwrap(), Bytes::new());
    with_expiry.properties.session_expiry_interval = Some(1);
    assert_eq!(
        encode(&Packet::Publish(with_expiry), V5),
        Err(EncodeError::PropertyNotAllowed { id: 0x11, packet: PacketType::Publish })
    );
    let ack = PubAck {
        properties: Properties {
            correlation_data: Some(Bytes::from(vec![0; 70_000])),
            ..Properties::default()
        },
        ..PubAck::new(pid)
    };
    assert!(encode(&Packet::PubAck(ack), V5).is_err());
    let unsubscribe =
        Unsubscribe { packet_id: pid, properties: Properties::default(), filters: vec![] };
    assert_eq!(
        encode(&Packet::Unsubscribe(unsubscribe), V311),
        Err(EncodeError::NoTopicFilters(PacketType::Unsubscribe))
    );
    // §2.1.4: a body above 268,435,455 bytes.
    let big = Publish::new(TopicName::new("t").unwrap(), Bytes::from(vec![0; 268_435_455]));
    assert_eq!(encode(&Packet::Publish(big), V311), Err(EncodeError::PacketTooLarge(268_435_458)));
}
