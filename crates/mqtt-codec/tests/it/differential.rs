//! Differential decoding against rmqtt-codec, an independent MQTT 3.1.1 and 5 decoder: the same
//! bytes go through both, and both must agree on whether they are a valid packet and, when they
//! are, on every field both expose ([`View`]).
//!
//! - Valid packets: arbitrary packets of the property-test strategies, written by our encoder.
//! - Hand-written vectors, valid and not, each naming the statement of the specification it is
//!   about.
//! - Mutated packets: wherever both decoders accept the same mutated bytes, they read the same
//!   fields.
//!
//! rmqtt-codec checks less than the specification asks in places, and more in a few. Each such
//! case is a vector below marked [`Rmqtt::Accepts`] or [`Rmqtt::Rejects`] with the statement it
//! concerns; the test asserts that our decoder does what the specification says and that
//! rmqtt-codec still differs (so the list stays true when rmqtt-codec changes).

use std::collections::BTreeMap;
use std::fmt;
use std::num::{NonZeroU16, NonZeroU32};

use bytes::BytesMut;
use mqtt_codec::{
    MAX_PACKET_SIZE, MqttString, Packet, PayloadFormat, Properties, ProtocolVersion, QoS,
    RetainHandling,
};
use proptest::prelude::*;
use rmqtt_codec::{v3, v5};
use tokio_util::codec::Decoder as _;

use crate::strategies::packet;
use crate::{V5, V311, encode};

/// The fields of a decoded packet that both decoders expose, normalised to common types (absent
/// properties with a default value read as that default, as rmqtt-codec stores them), each
/// formatted with `Debug`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct View(BTreeMap<&'static str, String>);

impl View {
    fn of(packet_type: &str) -> Self {
        Self(BTreeMap::from([("type", packet_type.to_owned())]))
    }

    fn with(mut self, field: &'static str, value: impl fmt::Debug) -> Self {
        self.0.insert(field, format!("{value:?}"));
        self
    }
}

/// Our decoder's reading of `bytes`: the packet's view, or why it is not a (whole) packet.
fn ours(bytes: &[u8], version: ProtocolVersion) -> Result<View, String> {
    match mqtt_codec::decode(bytes, version, MAX_PACKET_SIZE) {
        Ok(Some((packet, len))) if len == bytes.len() => Ok(our_view(&packet, version)),
        Ok(Some((_, len))) => Err(format!("{} bytes after the packet", bytes.len() - len)),
        Ok(None) => Err("incomplete".to_owned()),
        Err(e) => Err(format!("{e:?}")),
    }
}

/// rmqtt-codec's reading of `bytes`, with its decoder for `version`.
fn rmqtt(bytes: &[u8], version: ProtocolVersion) -> Result<View, String> {
    let mut buf = BytesMut::from(bytes);
    let view = match version {
        V311 => match v3::Codec::new(0).decode(&mut buf) {
            Ok(Some((packet, _))) => rmqtt_v3_view(&packet),
            Ok(None) => return Err("incomplete".to_owned()),
            Err(e) => return Err(format!("{e:?}")),
        },
        V5 => match v5::Codec::new(0, 0).decode(&mut buf) {
            Ok(Some((packet, _))) => rmqtt_v5_view(&packet),
            Ok(None) => return Err("incomplete".to_owned()),
            Err(e) => return Err(format!("{e:?}")),
        },
    };
    if buf.is_empty() { Ok(view) } else { Err(format!("{} bytes after the packet", buf.len())) }
}

/// How rmqtt-codec treats a vector, compared with the specification.
#[derive(Debug, Clone, Copy)]
enum Rmqtt {
    /// As the specification says, and as we do.
    Agrees,
    /// It accepts bytes the specification makes a Malformed Packet or a Protocol Error: it does not
    /// check the statement named.
    Accepts(&'static str),
    /// It rejects a packet the specification allows: the statement named.
    Rejects(&'static str),
}

/// Checks a vector the specification rejects: we reject it, and rmqtt-codec does as `rmqtt` says.
#[track_caller]
fn check_invalid(version: ProtocolVersion, bytes: &[u8], rmqtt_does: Rmqtt) {
    let ours = ours(bytes, version);
    assert!(ours.is_err(), "we accept {bytes:02X?} ({version:?}): {ours:?}");
    let theirs = rmqtt(bytes, version);
    match rmqtt_does {
        Rmqtt::Agrees => assert!(theirs.is_err(), "rmqtt-codec accepts {bytes:02X?}: {theirs:?}"),
        Rmqtt::Accepts(statement) => assert!(
            theirs.is_ok(),
            "rmqtt-codec now rejects {bytes:02X?} ({statement}): {theirs:?}; mark it Agrees"
        ),
        Rmqtt::Rejects(_) => panic!("a vector both reject cannot be a stricter divergence"),
    }
}

/// Checks a vector the specification accepts: we accept it, and rmqtt-codec does as `rmqtt` says;
/// when both accept, they read the same fields.
#[track_caller]
fn check_valid(version: ProtocolVersion, bytes: &[u8], rmqtt_does: Rmqtt) {
    let ours = ours(bytes, version)
        .unwrap_or_else(|e| panic!("we reject {bytes:02X?} ({version:?}): {e}"));
    let theirs = rmqtt(bytes, version);
    match rmqtt_does {
        Rmqtt::Agrees => {
            let theirs = theirs.unwrap_or_else(|e| panic!("rmqtt-codec rejects {bytes:02X?}: {e}"));
            assert_eq!(ours, theirs, "{bytes:02X?} ({version:?})");
        }
        Rmqtt::Rejects(statement) => assert!(
            theirs.is_err(),
            "rmqtt-codec now accepts {bytes:02X?} ({statement}): {theirs:?}; mark it Agrees"
        ),
        Rmqtt::Accepts(_) => panic!("a vector both accept cannot be a laxer divergence"),
    }
}

/// Where rmqtt-codec knowingly rejects a valid packet of the strategies: the statement, if any.
fn stricter(packet: &Packet, version: ProtocolVersion) -> Option<&'static str> {
    let zero_expiry = |p: &Properties| p.message_expiry_interval == Some(0);
    match packet {
        // 3.1.1 [MQTT-3.1.3-8]: a zero-byte ClientId with CleanSession 0 is refused with CONNACK
        // 0x02 (identifier rejected), so the CONNECT must decode; MQTT 5 [MQTT-3.1.3-6] lets the
        // server accept a zero-byte ClientId whatever Clean Start says. rmqtt-codec fails the
        // decoding (InvalidClientId): the server cannot send the CONNACK.
        Packet::Connect(c) if c.client_id.is_empty() && !c.clean_start => match version {
            V311 => Some("3.1.1 [MQTT-3.1.3-8]"),
            V5 => Some("5.0 [MQTT-3.1.3-6]"),
        },
        // 5.0 §3.3.2.3.3 and §3.1.3.2.4: a Message Expiry Interval is any Four Byte Integer;
        // rmqtt-codec holds it as a NonZeroU32 and reports 0 as a Malformed Packet.
        Packet::Connect(c)
            if version == V5 && c.will.as_ref().is_some_and(|w| zero_expiry(&w.properties)) =>
        {
            Some("5.0 §3.1.3.2.4")
        }
        Packet::Publish(p) if version == V5 && zero_expiry(&p.properties) => Some("5.0 §3.3.2.3.3"),
        _ => None,
    }
}

/// Encodes `packet` with our encoder and decodes the bytes with both decoders.
fn differential(packet: &Packet, version: ProtocolVersion) {
    let bytes = encode(packet, version);
    let ours =
        ours(&bytes, version).unwrap_or_else(|e| panic!("we reject our own {packet:?}: {e}"));
    match (stricter(packet, version), rmqtt(&bytes, version)) {
        (None, Ok(theirs)) => assert_eq!(ours, theirs, "{packet:?}"),
        (None, Err(e)) => panic!("rmqtt-codec rejects {packet:?} ({bytes:02X?}): {e}"),
        (Some(_), Err(_)) => {}
        (Some(statement), Ok(_)) => {
            panic!("rmqtt-codec now accepts {packet:?} ({statement}): remove the divergence")
        }
    }
}

/// When both decoders accept `bytes`, they read the same fields.
fn agree_when_both_accept(bytes: &[u8], version: ProtocolVersion) {
    if let (Ok(ours), Ok(theirs)) = (ours(bytes, version), rmqtt(bytes, version)) {
        assert_eq!(ours, theirs, "{bytes:02X?} ({version:?})");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn valid_v311_packets_decode_alike(p in packet(V311)) {
        differential(&p, V311);
    }

    #[test]
    fn valid_v5_packets_decode_alike(p in packet(V5)) {
        differential(&p, V5);
    }

    #[test]
    fn mutated_packets_decode_alike_when_both_accept(
        p in prop_oneof![packet(V311).prop_map(|p| (p, V311)), packet(V5).prop_map(|p| (p, V5))],
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let (p, version) = p;
        let mut bytes = encode(&p, version);
        for (index, value) in flips {
            let i = index.index(bytes.len());
            bytes[i] = value;
        }
        agree_when_both_accept(&bytes, version);
    }
}

/// A CONNECT with protocol `level`, connect `flags`, keep alive 0, empty properties (level 5) and
/// `payload`.
fn connect(level: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', level, flags, 0x00, 0x00];
    if level == 5 {
        body.push(0x00);
    }
    body.extend_from_slice(payload);
    bytes(0x10, &body)
}

/// A v5 CONNECT with the property bytes `props`, an empty client identifier and Clean Start.
fn connect_props(props: &[u8]) -> Vec<u8> {
    let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x00];
    body.push(u8::try_from(props.len()).unwrap());
    body.extend_from_slice(props);
    body.extend_from_slice(&[0x00, 0x00]);
    bytes(0x10, &body)
}

/// A v5 SUBSCRIBE with packet identifier 1, no properties and one `filter` with `options`.
fn subscribe(filter: &[u8], options: u8) -> Vec<u8> {
    let mut body = vec![0x00, 0x01, 0x00, 0x00, u8::try_from(filter.len()).unwrap()];
    body.extend_from_slice(filter);
    body.push(options);
    bytes(0x82, &body)
}

/// The packet with first byte `first` and `body` (shorter than 128 bytes).
fn bytes(first: u8, body: &[u8]) -> Vec<u8> {
    let mut packet = vec![first, u8::try_from(body.len()).unwrap()];
    packet.extend_from_slice(body);
    packet
}

#[test]
fn valid_edge_cases_decode_alike() {
    // 5.0 §3.4.2.1, §3.4.2.2.1: a PUBACK may leave out its reason code (success) and, with a reason
    // code, its property length.
    check_valid(V5, &[0x40, 0x02, 0x00, 0x01], Rmqtt::Agrees);
    check_valid(V5, &[0x40, 0x03, 0x00, 0x01, 0x10], Rmqtt::Agrees);
    check_valid(V5, &[0x62, 0x03, 0x00, 0x01, 0x92], Rmqtt::Agrees);
    // 5.0 §3.14.2.1, §3.15.2.1: DISCONNECT and AUTH with Remaining Length 0 mean 0x00.
    check_valid(V5, &[0xE0, 0x00], Rmqtt::Agrees);
    check_valid(V5, &[0xF0, 0x00], Rmqtt::Agrees);
    // 5.0 §3.1.2.9: a password without a user name is allowed in MQTT 5.
    check_valid(V5, &connect(5, 0x42, &[0x00, 0x01, b'c', 0x00, 0x01, b'p']), Rmqtt::Agrees);
    // 5.0 §3.3.2.1: an empty Topic Name with a Topic Alias.
    check_valid(V5, &[0x30, 0x06, 0x00, 0x00, 0x03, 0x23, 0x00, 0x01], Rmqtt::Agrees);
    // 3.1.1 §3.9.3: a SUBACK return code per filter, 0x80 for a failure.
    check_valid(V311, &[0x90, 0x04, 0x00, 0x07, 0x02, 0x80], Rmqtt::Agrees);
    // A shared subscription with every other option (5.0 §3.8.3.1, §4.8.2).
    check_valid(V5, &subscribe(b"$share/g/a/+/#", 0x2A), Rmqtt::Agrees);
}

#[test]
fn rmqtt_codec_rejects_some_valid_packets() {
    // 3.1.1 [MQTT-3.1.3-8]: a zero-byte ClientId with CleanSession 0 must decode, so that the
    // server can answer CONNACK 0x02 (identifier rejected); rmqtt-codec fails the decoding instead
    // (InvalidClientId). MQTT 5 [MQTT-3.1.3-6] even lets the server accept it.
    check_valid(V311, &connect(4, 0x00, &[0x00, 0x00]), Rmqtt::Rejects("3.1.1 [MQTT-3.1.3-8]"));
    check_valid(V5, &connect(5, 0x00, &[0x00, 0x00]), Rmqtt::Rejects("5.0 [MQTT-3.1.3-6]"));
    // 5.0 §3.3.2.3.3: a Message Expiry Interval is any Four Byte Integer, 0 included;
    // rmqtt-codec holds it as a NonZeroU32 and reports a Malformed Packet.
    check_valid(
        V5,
        &[0x30, 0x09, 0x00, 0x01, b'a', 0x05, 0x02, 0x00, 0x00, 0x00, 0x00],
        Rmqtt::Rejects("5.0 §3.3.2.3.3"),
    );
}

#[test]
fn both_reject() {
    // 5.0 §2.1.2: reserved packet type 0; AUTH (15) does not exist in 3.1.1.
    check_invalid(V5, &[0x00, 0x00], Rmqtt::Agrees);
    check_invalid(V311, &[0xF0, 0x00], Rmqtt::Agrees);
    // [MQTT-2.1.3-1]: fixed header flags.
    check_invalid(V5, &[0x60, 0x02, 0x00, 0x01], Rmqtt::Agrees);
    check_invalid(V311, &[0x80, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00], Rmqtt::Agrees);
    check_invalid(V5, &[0x42, 0x02, 0x00, 0x01], Rmqtt::Agrees);
    // §1.5.5: a Variable Byte Integer of five bytes.
    check_invalid(V5, &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F], Rmqtt::Agrees);
    // A field running past the Remaining Length.
    check_invalid(V5, &[0x30, 0x05, 0x00, 0x05, b'a', b'b', b'c'], Rmqtt::Agrees);
    check_invalid(V5, &[0x40, 0x04, 0x00, 0x01, 0x00, 0x05], Rmqtt::Agrees);
    // [MQTT-1.5.4-1]: ill-formed UTF-8 (an encoded surrogate, a lone 0xFF).
    check_invalid(V311, &[0x30, 0x05, 0x00, 0x03, 0xED, 0xA0, 0x80], Rmqtt::Agrees);
    check_invalid(V5, &[0x30, 0x04, 0x00, 0x01, 0xFF, 0x00], Rmqtt::Agrees);
    // [MQTT-3.3.1-4]: QoS 3.
    check_invalid(V5, &[0x36, 0x05, 0x00, 0x01, b'a', 0x00, 0x01], Rmqtt::Agrees);
    // 3.1.1 [MQTT-4.7.3-1]: an empty Topic Name.
    check_invalid(V311, &[0x30, 0x02, 0x00, 0x00], Rmqtt::Agrees);
    // [MQTT-2.2.1-3]: packet identifier 0.
    check_invalid(V311, &[0x32, 0x05, 0x00, 0x01, b'a', 0x00, 0x00], Rmqtt::Agrees);
    check_invalid(V5, &[0x40, 0x02, 0x00, 0x00], Rmqtt::Agrees);
    // [MQTT-3.3.2-8]: Topic Alias 0.
    check_invalid(V5, &[0x30, 0x07, 0x00, 0x01, b'a', 0x03, 0x23, 0x00, 0x00], Rmqtt::Agrees);
    // 5.0 §3.3.2.3.2: Payload Format Indicator 2.
    check_invalid(V5, &[0x30, 0x06, 0x00, 0x01, b'a', 0x02, 0x01, 0x02], Rmqtt::Agrees);
    // 5.0 §2.2.2.2: a property the packet does not allow, an unknown one, a repeated one.
    check_invalid(
        V5,
        &[0x30, 0x09, 0x00, 0x01, b'a', 0x05, 0x11, 0x00, 0x00, 0x00, 0x00],
        Rmqtt::Agrees,
    );
    check_invalid(V5, &[0x40, 0x05, 0x00, 0x01, 0x00, 0x01, 0x7F], Rmqtt::Agrees);
    check_invalid(
        V5,
        &[0x40, 0x0A, 0x00, 0x01, 0x80, 0x06, 0x1F, 0x00, 0x00, 0x1F, 0x00, 0x00],
        Rmqtt::Agrees,
    );
    // 5.0 §3.1.2.11.3, §3.1.2.11.4, §3.1.2.11.7: Receive Maximum 0, Maximum Packet Size 0,
    // Request Problem Information 2.
    check_invalid(V5, &connect_props(&[0x21, 0x00, 0x00]), Rmqtt::Agrees);
    check_invalid(V5, &connect_props(&[0x27, 0x00, 0x00, 0x00, 0x00]), Rmqtt::Agrees);
    check_invalid(V5, &connect_props(&[0x17, 0x02]), Rmqtt::Agrees);
    // 5.0 §3.1.3.2: a will property list with a CONNECT-only property.
    check_invalid(V5, &connect(5, 0x06, &[0x00, 0x00, 0x02, 0x11, 0x00]), Rmqtt::Agrees);
    // [MQTT-3.1.2-3]: the reserved connect flag; [MQTT-3.1.2-11], [MQTT-3.1.2-13], 3.1.1
    // [MQTT-3.1.2-14]: will QoS and retain without the will flag, will QoS 3.
    check_invalid(V311, &connect(4, 0x03, &[0x00, 0x00]), Rmqtt::Agrees);
    check_invalid(V311, &connect(4, 0x0A, &[0x00, 0x00]), Rmqtt::Agrees);
    check_invalid(V311, &connect(4, 0x22, &[0x00, 0x00]), Rmqtt::Agrees);
    check_invalid(V5, &connect(5, 0x1E, &[0x00, 0x00]), Rmqtt::Agrees);
    // [MQTT-3.2.2-1]: reserved CONNACK flags; 5.0 §3.2.2.2: 0x10 is no CONNACK reason code.
    check_invalid(V311, &[0x20, 0x02, 0x02, 0x00], Rmqtt::Agrees);
    check_invalid(V5, &[0x20, 0x03, 0x00, 0x10, 0x00], Rmqtt::Agrees);
    // 5.0 §3.6.2.1, §3.15.2.1, §3.14.2.1: reason codes the packet does not allow.
    check_invalid(V5, &[0x62, 0x03, 0x00, 0x01, 0x10], Rmqtt::Agrees);
    check_invalid(V5, &[0xF0, 0x01, 0x87], Rmqtt::Agrees);
    check_invalid(V5, &[0xE0, 0x01, 0x84], Rmqtt::Agrees);
    // 3.1.1 §3.9.3: SUBACK return codes other than 0, 1, 2 and 0x80.
    check_invalid(V311, &[0x90, 0x03, 0x00, 0x01, 0x03], Rmqtt::Agrees);
    check_invalid(V311, &[0x90, 0x03, 0x00, 0x01, 0x87], Rmqtt::Agrees);
    // [MQTT-3.8.3-2], [MQTT-3.10.3-2]: SUBSCRIBE and UNSUBSCRIBE without a topic filter.
    check_invalid(V311, &[0x82, 0x02, 0x00, 0x01], Rmqtt::Agrees);
    check_invalid(V5, &[0x82, 0x03, 0x00, 0x01, 0x00], Rmqtt::Agrees);
    check_invalid(V5, &[0xA2, 0x03, 0x00, 0x01, 0x00], Rmqtt::Agrees);
    // 3.1.1 [MQTT-4.7.3-1]: an empty topic filter.
    check_invalid(V311, &[0x82, 0x05, 0x00, 0x01, 0x00, 0x00, 0x00], Rmqtt::Agrees);
    // 5.0 [MQTT-3.8.3-5]: reserved subscription option bits; §3.8.3.1: QoS 3, Retain Handling 3.
    check_invalid(V5, &subscribe(b"a", 0x40), Rmqtt::Agrees);
    check_invalid(V5, &subscribe(b"a", 0x03), Rmqtt::Agrees);
    check_invalid(V5, &subscribe(b"a", 0x30), Rmqtt::Agrees);
    // 5.0 §3.8.2.1.2: Subscription Identifier 0, or two of them.
    let with_props = |props: &[u8]| {
        let mut body = vec![0x00, 0x01, u8::try_from(props.len()).unwrap()];
        body.extend_from_slice(props);
        body.extend_from_slice(&[0x00, 0x01, b'a', 0x00]);
        bytes(0x82, &body)
    };
    check_invalid(V5, &with_props(&[0x0B, 0x00]), Rmqtt::Agrees);
    check_invalid(V5, &with_props(&[0x0B, 0x01, 0x0B, 0x02]), Rmqtt::Agrees);
    check_invalid(V5, &with_props(&[0x0B, 0x80, 0x80, 0x80, 0x80, 0x01]), Rmqtt::Agrees);
}

#[test]
fn rmqtt_codec_accepts_some_invalid_packets() {
    // 5.0 §3.12, §3.14 (3.1.1 §3.12, §3.14): PINGREQ has no variable header and no payload, and a
    // 3.1.1 DISCONNECT neither; rmqtt-codec ignores the Remaining Length of these packets.
    check_invalid(V5, &[0xC0, 0x01, 0x00], Rmqtt::Accepts("5.0 §3.12"));
    check_invalid(V311, &[0xE0, 0x01, 0x00], Rmqtt::Accepts("3.1.1 §3.14"));
    // 5.0 [MQTT-1.5.5-1]: a Variable Byte Integer in more bytes than needed (Remaining Length 0
    // written as 0x80 0x00).
    check_invalid(V5, &[0xC0, 0x80, 0x00], Rmqtt::Accepts("5.0 [MQTT-1.5.5-1]"));
    // 5.0 [MQTT-1.5.4-2] (3.1.1 [MQTT-1.5.3-2]): U+0000 in a string.
    check_invalid(
        V5,
        &[0x30, 0x06, 0x00, 0x03, b'a', 0x00, b'b', 0x00],
        Rmqtt::Accepts("[MQTT-1.5.4-2]"),
    );
    check_invalid(V311, &connect(4, 0x02, &[0x00, 0x01, 0x00]), Rmqtt::Accepts("[MQTT-1.5.3-2]"));
    // [MQTT-3.3.1-2]: DUP set on a QoS 0 PUBLISH.
    check_invalid(V311, &[0x38, 0x03, 0x00, 0x01, b'a'], Rmqtt::Accepts("[MQTT-3.3.1-2]"));
    // [MQTT-3.3.2-2]: wildcards in a Topic Name, in a will topic, and (5.0 [MQTT-3.3.2-14]) in a
    // Response Topic.
    check_invalid(
        V311,
        &[0x30, 0x05, 0x00, 0x03, b'a', b'/', b'#'],
        Rmqtt::Accepts("[MQTT-3.3.2-2]"),
    );
    check_invalid(V5, &[0x30, 0x04, 0x00, 0x01, b'+', 0x00], Rmqtt::Accepts("[MQTT-3.3.2-2]"));
    check_invalid(
        V311,
        &connect(4, 0x06, &[0x00, 0x00, 0x00, 0x01, b'#', 0x00, 0x00]),
        Rmqtt::Accepts("[MQTT-3.3.2-2]"),
    );
    check_invalid(
        V5,
        &[0x30, 0x08, 0x00, 0x01, b'a', 0x04, 0x08, 0x00, 0x01, b'#'],
        Rmqtt::Accepts("5.0 [MQTT-3.3.2-14]"),
    );
    // 5.0 §3.3.2.1: "It is a Protocol Error if the Topic Name is zero length and there is no Topic
    // Alias".
    check_invalid(V5, &[0x30, 0x03, 0x00, 0x00, 0x00], Rmqtt::Accepts("5.0 §3.3.2.1"));
    // 5.0 [MQTT-3.1.2-11], [MQTT-3.1.2-13]: Will QoS or Will Retain without the Will Flag (its
    // 3.1.1 decoder checks them).
    check_invalid(V5, &connect(5, 0x0A, &[0x00, 0x00]), Rmqtt::Accepts("5.0 [MQTT-3.1.2-11]"));
    check_invalid(V5, &connect(5, 0x22, &[0x00, 0x00]), Rmqtt::Accepts("5.0 [MQTT-3.1.2-13]"));
    // 3.1.1 [MQTT-3.1.2-22]: a password without a user name.
    check_invalid(
        V311,
        &connect(4, 0x42, &[0x00, 0x00, 0x00, 0x01, b'p']),
        Rmqtt::Accepts("3.1.1 [MQTT-3.1.2-22]"),
    );
    // [MQTT-3.1.2-1]: a protocol name other than "MQTT". rmqtt-codec also speaks MQTT 3.1
    // ("MQIsdp", level 3), which we do not: we answer CONNACK 0x01 [MQTT-3.1.2-2].
    let mqisdp = |level| {
        let mut body =
            vec![0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', level, 0x02, 0x00, 0x00];
        body.extend_from_slice(&[0x00, 0x01, b'c']);
        bytes(0x10, &body)
    };
    check_invalid(V311, &mqisdp(4), Rmqtt::Accepts("3.1.1 [MQTT-3.1.2-1]"));
    check_invalid(V311, &mqisdp(3), Rmqtt::Accepts("3.1.1 [MQTT-3.1.2-2] (MQTT 3.1)"));
    // §3.1: bytes after the last field of a CONNECT.
    check_invalid(V5, &connect(5, 0x02, &[0x00, 0x01, b'c', 0xFF]), Rmqtt::Accepts("5.0 §3.1.3"));
    // 3.1.1 [MQTT-3.8.3-4]: reserved bits in a requested QoS byte.
    check_invalid(
        V311,
        &[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x04],
        Rmqtt::Accepts("3.1.1 [MQTT-3.8.3-4]"),
    );
    // 5.0 [MQTT-3.8.3-4]: No Local on a shared subscription.
    check_invalid(V5, &subscribe(b"$share/g/a", 0x04), Rmqtt::Accepts("5.0 [MQTT-3.8.3-4]"));
    // Topic filter syntax: 3.1.1 [MQTT-4.7.1-2] ('#' last), [MQTT-4.7.1-3] ('+' a whole level),
    // 5.0 [MQTT-4.7.3-1] (not empty), [MQTT-4.8.2-1] (a ShareName of one character at least).
    check_invalid(
        V311,
        &[0x82, 0x0A, 0x00, 0x01, 0x00, 0x05, b'a', b'/', b'#', b'/', b'b', 0x00],
        Rmqtt::Accepts("3.1.1 [MQTT-4.7.1-2]"),
    );
    check_invalid(V5, &subscribe(b"a+", 0x00), Rmqtt::Accepts("3.1.1 [MQTT-4.7.1-3]"));
    check_invalid(V5, &subscribe(b"", 0x00), Rmqtt::Accepts("5.0 [MQTT-4.7.3-1]"));
    check_invalid(V5, &subscribe(b"$share//a", 0x00), Rmqtt::Accepts("5.0 [MQTT-4.8.2-1]"));
    // 5.0 §3.1.2.11.10: Authentication Data without an Authentication Method.
    check_invalid(V5, &connect_props(&[0x16, 0x00, 0x00]), Rmqtt::Accepts("5.0 §3.1.2.11.10"));
    // 5.0 §3.2.2.3.4: Maximum QoS 2; §3.2.2.3.6: Maximum Packet Size 0; [MQTT-3.2.2-6]: Session
    // Present with a failure reason code.
    check_invalid(
        V5,
        &[0x20, 0x05, 0x00, 0x00, 0x02, 0x24, 0x02],
        Rmqtt::Accepts("5.0 §3.2.2.3.4"),
    );
    check_invalid(
        V5,
        &[0x20, 0x08, 0x00, 0x00, 0x05, 0x27, 0x00, 0x00, 0x00, 0x00],
        Rmqtt::Accepts("5.0 §3.2.2.3.6"),
    );
    check_invalid(V5, &[0x20, 0x03, 0x01, 0x87, 0x00], Rmqtt::Accepts("5.0 [MQTT-3.2.2-6]"));
    // 3.1.1 §3.2.2.3: CONNACK return codes 6-255 are reserved; rmqtt-codec accepts 6.
    check_invalid(V311, &[0x20, 0x02, 0x00, 0x06], Rmqtt::Accepts("3.1.1 §3.2.2.3"));
    // 5.0 §3.14.2.1: the DISCONNECT reason codes leave out 0x8C (Bad authentication method),
    // which Table 2-6 of §2.4 lists for DISCONNECT too; we follow §3.14.2.1, rmqtt-codec Table 2-6.
    check_invalid(V5, &[0xE0, 0x01, 0x8C], Rmqtt::Accepts("5.0 §3.14.2.1"));
}

// -- Our views ---------------------------------------------------------------------------------

fn string(s: Option<&MqttString>) -> Option<&str> {
    s.map(MqttString::as_str)
}

fn users(p: &Properties) -> Vec<(&str, &str)> {
    p.user_properties.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

fn retain_handling(r: RetainHandling) -> u8 {
    match r {
        RetainHandling::SendAtSubscribe => 0,
        RetainHandling::SendAtSubscribeIfNew => 1,
        RetainHandling::DoNotSend => 2,
    }
}

/// The MQTT 5 reason string and user properties every acknowledgement may carry.
fn with_ack_properties(view: View, p: &Properties) -> View {
    view.with("reason_string", string(p.reason_string.as_ref())).with("user_properties", users(p))
}

fn our_view(packet: &Packet, version: ProtocolVersion) -> View {
    let v5 = version == V5;
    match packet {
        Packet::Connect(c) => {
            let will = c
                .will
                .as_ref()
                .map(|w| (w.topic.as_str(), &w.payload[..], w.qos.to_u8(), w.retain));
            let mut view = View::of("CONNECT")
                .with("clean_start", c.clean_start)
                .with("keep_alive", c.keep_alive)
                .with("client_id", c.client_id.as_str())
                .with("username", string(c.username.as_ref()))
                .with("password", c.password.as_deref())
                .with("will", will);
            if v5 {
                let p = &c.properties;
                view = view
                    .with("session_expiry_interval", p.session_expiry_interval.unwrap_or(0))
                    .with("receive_maximum", p.receive_maximum.map(NonZeroU16::get))
                    .with("maximum_packet_size", p.maximum_packet_size.map(NonZeroU32::get))
                    .with("topic_alias_maximum", p.topic_alias_maximum.unwrap_or(0))
                    .with(
                        "request_problem_information",
                        p.request_problem_information.unwrap_or(true),
                    )
                    .with(
                        "request_response_information",
                        p.request_response_information.unwrap_or(false),
                    )
                    .with("authentication_method", string(p.authentication_method.as_ref()))
                    .with("authentication_data", p.authentication_data.as_deref())
                    .with("user_properties", users(p));
                if let Some(w) = &c.will {
                    let p = &w.properties;
                    view = view
                        .with("will_delay_interval", p.will_delay_interval)
                        .with(
                            "will_payload_utf8",
                            p.payload_format_indicator.map(|f| f == PayloadFormat::Utf8),
                        )
                        .with("will_message_expiry_interval", p.message_expiry_interval)
                        .with("will_content_type", string(p.content_type.as_ref()))
                        .with("will_response_topic", p.response_topic.as_ref().map(|t| t.as_str()))
                        .with("will_correlation_data", p.correlation_data.as_deref())
                        .with("will_user_properties", users(p));
                }
            }
            view
        }
        Packet::ConnAck(a) => {
            let view = View::of("CONNACK").with("session_present", a.session_present);
            if !v5 {
                return view.with("reason", a.reason_code.to_v311_connack());
            }
            let p = &a.properties;
            view.with("reason", a.reason_code.to_byte())
                .with("session_expiry_interval", p.session_expiry_interval)
                .with("receive_maximum", p.receive_maximum.map_or(65535, NonZeroU16::get))
                .with("maximum_qos", p.maximum_qos.unwrap_or(QoS::ExactlyOnce).to_u8())
                .with("maximum_packet_size", p.maximum_packet_size.map(NonZeroU32::get))
                .with(
                    "assigned_client_identifier",
                    p.assigned_client_identifier.as_ref().map(|c| c.as_str()),
                )
                .with("topic_alias_maximum", p.topic_alias_maximum.unwrap_or(0))
                .with("retain_available", p.retain_available.unwrap_or(true))
                .with("wildcard_available", p.wildcard_subscription_available.unwrap_or(true))
                .with(
                    "subscription_identifiers_available",
                    p.subscription_identifiers_available.unwrap_or(true),
                )
                .with("shared_available", p.shared_subscription_available.unwrap_or(true))
                .with("server_keep_alive", p.server_keep_alive)
                .with("response_information", string(p.response_information.as_ref()))
                .with("server_reference", string(p.server_reference.as_ref()))
                .with("authentication_method", string(p.authentication_method.as_ref()))
                .with("authentication_data", p.authentication_data.as_deref())
                .with("reason_string", string(p.reason_string.as_ref()))
                .with("user_properties", users(p))
        }
        Packet::Publish(p) => {
            let view = View::of("PUBLISH")
                .with("qos", p.delivery.qos().to_u8())
                .with("packet_id", p.delivery.packet_id().map(|id| id.get()))
                .with("dup", p.delivery.dup())
                .with("retain", p.retain)
                .with("topic", p.topic.as_ref().map_or("", |t| t.as_str()))
                .with("payload", &p.payload[..]);
            if !v5 {
                return view;
            }
            let props = &p.properties;
            view.with("payload_utf8", props.payload_format_indicator == Some(PayloadFormat::Utf8))
                .with("message_expiry_interval", props.message_expiry_interval)
                .with("topic_alias", props.topic_alias.map(NonZeroU16::get))
                .with("response_topic", props.response_topic.as_ref().map(|t| t.as_str()))
                .with("correlation_data", props.correlation_data.as_deref())
                .with("content_type", string(props.content_type.as_ref()))
                .with(
                    "subscription_identifiers",
                    props.subscription_identifiers.iter().map(|id| id.get()).collect::<Vec<_>>(),
                )
                .with("user_properties", users(props))
        }
        Packet::PubAck(a) => {
            our_ack("PUBACK", a.packet_id.get(), a.reason_code.to_byte(), &a.properties, v5)
        }
        Packet::PubRec(a) => {
            our_ack("PUBREC", a.packet_id.get(), a.reason_code.to_byte(), &a.properties, v5)
        }
        Packet::PubRel(a) => {
            our_ack("PUBREL", a.packet_id.get(), a.reason_code.to_byte(), &a.properties, v5)
        }
        Packet::PubComp(a) => {
            our_ack("PUBCOMP", a.packet_id.get(), a.reason_code.to_byte(), &a.properties, v5)
        }
        Packet::Subscribe(s) => {
            let filters: Vec<_> = s
                .subscriptions
                .iter()
                .map(|s| {
                    let o = s.options;
                    let rh = retain_handling(o.retain_handling);
                    (s.filter.as_str(), o.qos.to_u8(), o.no_local, o.retain_as_published, rh)
                })
                .collect();
            let view =
                View::of("SUBSCRIBE").with("packet_id", s.packet_id.get()).with("filters", filters);
            if !v5 {
                return view;
            }
            let id = s.properties.subscription_identifiers.first().map(|id| id.get());
            view.with("subscription_identifier", id).with("user_properties", users(&s.properties))
        }
        Packet::SubAck(a) => {
            let view = View::of("SUBACK").with("packet_id", a.packet_id.get());
            if !v5 {
                let codes: Vec<u8> = a.reason_codes.iter().map(|c| c.to_v311_suback()).collect();
                return view.with("reasons", codes);
            }
            let codes: Vec<u8> = a.reason_codes.iter().map(|c| c.to_byte()).collect();
            with_ack_properties(view.with("reasons", codes), &a.properties)
        }
        Packet::Unsubscribe(u) => {
            let filters: Vec<&str> = u.filters.iter().map(|f| f.as_str()).collect();
            let view = View::of("UNSUBSCRIBE")
                .with("packet_id", u.packet_id.get())
                .with("filters", filters);
            if v5 { view.with("user_properties", users(&u.properties)) } else { view }
        }
        Packet::UnsubAck(a) => {
            let view = View::of("UNSUBACK").with("packet_id", a.packet_id.get());
            if !v5 {
                return view;
            }
            let codes: Vec<u8> = a.reason_codes.iter().map(|c| c.to_byte()).collect();
            with_ack_properties(view.with("reasons", codes), &a.properties)
        }
        Packet::PingReq => View::of("PINGREQ"),
        Packet::PingResp => View::of("PINGRESP"),
        Packet::Disconnect(d) => {
            if !v5 {
                return View::of("DISCONNECT");
            }
            let p = &d.properties;
            let view = View::of("DISCONNECT")
                .with("reason", d.reason_code.to_byte())
                .with("session_expiry_interval", p.session_expiry_interval)
                .with("server_reference", string(p.server_reference.as_ref()));
            with_ack_properties(view, p)
        }
        Packet::Auth(a) => {
            let p = &a.properties;
            let view = View::of("AUTH")
                .with("reason", a.reason_code.to_byte())
                .with("authentication_method", string(p.authentication_method.as_ref()))
                .with("authentication_data", p.authentication_data.as_deref());
            with_ack_properties(view, p)
        }
    }
}

fn our_ack(packet_type: &str, packet_id: u16, reason: u8, p: &Properties, v5: bool) -> View {
    let view = View::of(packet_type).with("packet_id", packet_id);
    if v5 { with_ack_properties(view.with("reason", reason), p) } else { view }
}

// -- rmqtt-codec's views -----------------------------------------------------------------------

fn rmqtt_users(p: &v5::UserProperties) -> Vec<(&str, &str)> {
    p.iter().map(|(k, v)| (&**k, &**v)).collect()
}

fn rmqtt_ack_properties(view: View, reason_string: Option<&str>, p: &v5::UserProperties) -> View {
    view.with("reason_string", reason_string).with("user_properties", rmqtt_users(p))
}

fn rmqtt_v3_view(packet: &v3::Packet) -> View {
    match packet {
        v3::Packet::Connect(c) => {
            let will =
                c.last_will.as_ref().map(|w| (&*w.topic, &w.message[..], w.qos.value(), w.retain));
            View::of("CONNECT")
                .with("clean_start", c.clean_session)
                .with("keep_alive", c.keep_alive)
                .with("client_id", &*c.client_id)
                .with("username", c.username.as_deref())
                .with("password", c.password.as_deref())
                .with("will", will)
        }
        v3::Packet::ConnectAck(a) => View::of("CONNACK")
            .with("session_present", a.session_present)
            .with("reason", u8::from(a.return_code)),
        v3::Packet::Publish(p) => View::of("PUBLISH")
            .with("qos", p.qos.value())
            .with("packet_id", p.packet_id.map(NonZeroU16::get))
            .with("dup", p.dup)
            .with("retain", p.retain)
            .with("topic", &*p.topic)
            .with("payload", &p.payload[..]),
        v3::Packet::PublishAck { packet_id } => {
            View::of("PUBACK").with("packet_id", packet_id.get())
        }
        v3::Packet::PublishReceived { packet_id } => {
            View::of("PUBREC").with("packet_id", packet_id.get())
        }
        v3::Packet::PublishRelease { packet_id } => {
            View::of("PUBREL").with("packet_id", packet_id.get())
        }
        v3::Packet::PublishComplete { packet_id } => {
            View::of("PUBCOMP").with("packet_id", packet_id.get())
        }
        v3::Packet::Subscribe { packet_id, topic_filters } => {
            let filters: Vec<_> =
                topic_filters.iter().map(|(f, q)| (&**f, q.value(), false, false, 0u8)).collect();
            View::of("SUBSCRIBE").with("packet_id", packet_id.get()).with("filters", filters)
        }
        v3::Packet::SubscribeAck { packet_id, status } => {
            let codes: Vec<u8> = status
                .iter()
                .map(|s| match s {
                    v3::SubscribeReturnCode::Success(q) => q.value(),
                    v3::SubscribeReturnCode::Failure => 0x80,
                })
                .collect();
            View::of("SUBACK").with("packet_id", packet_id.get()).with("reasons", codes)
        }
        v3::Packet::Unsubscribe { packet_id, topic_filters } => {
            let filters: Vec<&str> = topic_filters.iter().map(|f| &**f).collect();
            View::of("UNSUBSCRIBE").with("packet_id", packet_id.get()).with("filters", filters)
        }
        v3::Packet::UnsubscribeAck { packet_id } => {
            View::of("UNSUBACK").with("packet_id", packet_id.get())
        }
        v3::Packet::PingRequest => View::of("PINGREQ"),
        v3::Packet::PingResponse => View::of("PINGRESP"),
        v3::Packet::Disconnect => View::of("DISCONNECT"),
    }
}

fn rmqtt_v5_view(packet: &v5::Packet) -> View {
    match packet {
        v5::Packet::Connect(c) => {
            let will =
                c.last_will.as_ref().map(|w| (&*w.topic, &w.message[..], w.qos.value(), w.retain));
            let mut view = View::of("CONNECT")
                .with("clean_start", c.clean_start)
                .with("keep_alive", c.keep_alive)
                .with("client_id", &*c.client_id)
                .with("username", c.username.as_deref())
                .with("password", c.password.as_deref())
                .with("will", will)
                .with("session_expiry_interval", c.session_expiry_interval_secs)
                .with("receive_maximum", c.receive_max.map(NonZeroU16::get))
                .with("maximum_packet_size", c.max_packet_size.map(NonZeroU32::get))
                .with("topic_alias_maximum", c.topic_alias_max)
                .with("request_problem_information", c.request_problem_info)
                .with("request_response_information", c.request_response_info)
                .with("authentication_method", c.auth_method.as_deref())
                .with("authentication_data", c.auth_data.as_deref())
                .with("user_properties", rmqtt_users(&c.user_properties));
            if let Some(w) = &c.last_will {
                view = view
                    .with("will_delay_interval", w.will_delay_interval_sec)
                    .with("will_payload_utf8", w.is_utf8_payload)
                    .with(
                        "will_message_expiry_interval",
                        w.message_expiry_interval.map(NonZeroU32::get),
                    )
                    .with("will_content_type", w.content_type.as_deref())
                    .with("will_response_topic", w.response_topic.as_deref())
                    .with("will_correlation_data", w.correlation_data.as_deref())
                    .with("will_user_properties", rmqtt_users(&w.user_properties));
            }
            view
        }
        v5::Packet::ConnectAck(a) => {
            let view = View::of("CONNACK")
                .with("session_present", a.session_present)
                .with("reason", u8::from(a.reason_code))
                .with("session_expiry_interval", a.session_expiry_interval_secs)
                .with("receive_maximum", a.receive_max.get())
                .with("maximum_qos", a.max_qos.value())
                .with("maximum_packet_size", a.max_packet_size)
                .with("assigned_client_identifier", a.assigned_client_id.as_deref())
                .with("topic_alias_maximum", a.topic_alias_max)
                .with("retain_available", a.retain_available)
                .with("wildcard_available", a.wildcard_subscription_available)
                .with("subscription_identifiers_available", a.subscription_identifiers_available)
                .with("shared_available", a.shared_subscription_available)
                .with("server_keep_alive", a.server_keepalive_sec)
                .with("response_information", a.response_info.as_deref())
                .with("server_reference", a.server_reference.as_deref())
                .with("authentication_method", a.auth_method.as_deref())
                .with("authentication_data", a.auth_data.as_deref());
            rmqtt_ack_properties(view, a.reason_string.as_deref(), &a.user_properties)
        }
        v5::Packet::Publish(p) => {
            let props = p.properties.clone().unwrap_or_default();
            View::of("PUBLISH")
                .with("qos", p.qos.value())
                .with("packet_id", p.packet_id.map(NonZeroU16::get))
                .with("dup", p.dup)
                .with("retain", p.retain)
                .with("topic", &*p.topic)
                .with("payload", &p.payload[..])
                .with("payload_utf8", props.is_utf8_payload)
                .with("message_expiry_interval", props.message_expiry_interval.map(NonZeroU32::get))
                .with("topic_alias", props.topic_alias.map(NonZeroU16::get))
                .with("response_topic", props.response_topic.as_deref())
                .with("correlation_data", props.correlation_data.as_deref())
                .with("content_type", props.content_type.as_deref())
                .with(
                    "subscription_identifiers",
                    props.subscription_ids.iter().map(|id| id.get()).collect::<Vec<_>>(),
                )
                .with("user_properties", rmqtt_users(&props.user_properties))
        }
        v5::Packet::PublishAck(a) => rmqtt_ack("PUBACK", a.packet_id, u8::from(a.reason_code), a),
        v5::Packet::PublishReceived(a) => {
            rmqtt_ack("PUBREC", a.packet_id, u8::from(a.reason_code), a)
        }
        v5::Packet::PublishRelease(a) => {
            let view = View::of("PUBREL")
                .with("packet_id", a.packet_id.get())
                .with("reason", u8::from(a.reason_code));
            rmqtt_ack_properties(view, a.reason_string.as_deref(), &a.properties)
        }
        v5::Packet::PublishComplete(a) => {
            let view = View::of("PUBCOMP")
                .with("packet_id", a.packet_id.get())
                .with("reason", u8::from(a.reason_code));
            rmqtt_ack_properties(view, a.reason_string.as_deref(), &a.properties)
        }
        v5::Packet::Subscribe(s) => {
            let filters: Vec<_> = s
                .topic_filters
                .iter()
                .map(|(f, o)| {
                    let rh = u8::from(o.retain_handling);
                    (&**f, o.qos.value(), o.no_local, o.retain_as_published, rh)
                })
                .collect();
            View::of("SUBSCRIBE")
                .with("packet_id", s.packet_id.get())
                .with("filters", filters)
                .with("subscription_identifier", s.id.map(NonZeroU32::get))
                .with("user_properties", rmqtt_users(&s.user_properties))
        }
        v5::Packet::SubscribeAck(a) => {
            let codes: Vec<u8> = a.status.iter().map(|c| u8::from(*c)).collect();
            let view =
                View::of("SUBACK").with("packet_id", a.packet_id.get()).with("reasons", codes);
            rmqtt_ack_properties(view, a.reason_string.as_deref(), &a.properties)
        }
        v5::Packet::Unsubscribe(u) => {
            let filters: Vec<&str> = u.topic_filters.iter().map(|f| &**f).collect();
            View::of("UNSUBSCRIBE")
                .with("packet_id", u.packet_id.get())
                .with("filters", filters)
                .with("user_properties", rmqtt_users(&u.user_properties))
        }
        v5::Packet::UnsubscribeAck(a) => {
            let codes: Vec<u8> = a.status.iter().map(|c| u8::from(*c)).collect();
            let view =
                View::of("UNSUBACK").with("packet_id", a.packet_id.get()).with("reasons", codes);
            rmqtt_ack_properties(view, a.reason_string.as_deref(), &a.properties)
        }
        v5::Packet::PingRequest => View::of("PINGREQ"),
        v5::Packet::PingResponse => View::of("PINGRESP"),
        v5::Packet::Disconnect(d) => {
            let view = View::of("DISCONNECT")
                .with("reason", u8::from(d.reason_code))
                .with("session_expiry_interval", d.session_expiry_interval_secs)
                .with("server_reference", d.server_reference.as_deref());
            rmqtt_ack_properties(view, d.reason_string.as_deref(), &d.user_properties)
        }
        v5::Packet::Auth(a) => {
            let view = View::of("AUTH")
                .with("reason", u8::from(a.reason_code))
                .with("authentication_method", a.auth_method.as_deref())
                .with("authentication_data", a.auth_data.as_deref());
            rmqtt_ack_properties(view, a.reason_string.as_deref(), &a.user_properties)
        }
    }
}

fn rmqtt_ack(packet_type: &str, packet_id: NonZeroU16, reason: u8, a: &v5::PublishAck) -> View {
    let view = View::of(packet_type).with("packet_id", packet_id.get()).with("reason", reason);
    rmqtt_ack_properties(view, a.reason_string.as_deref(), &a.properties)
}
