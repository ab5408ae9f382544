//! Integration tests of `mqtt-codec`: golden byte vectors from the MQTT 3.1.1 and 5.0 specifications,
//! incomplete input, malformed input with its reason code, property tests, and differential decoding
//! against rmqtt-codec.
#![expect(clippy::unwrap_used, reason = "test code: an unexpected error fails the test")]

mod differential;
mod golden;
mod incomplete;
mod malformed;
mod roundtrip;
mod strategies;

use bytes::BytesMut;
use mqtt_codec::{MAX_PACKET_SIZE, Packet, ProtocolVersion};

pub(crate) use mqtt_codec::ProtocolVersion::{V5, V311};

/// Decodes `bytes` completely, with both decoders, and returns the packet.
#[track_caller]
pub(crate) fn decode_all(bytes: &[u8], version: ProtocolVersion) -> Packet {
    let (packet, len) = mqtt_codec::decode(bytes, version, MAX_PACKET_SIZE)
        .unwrap_or_else(|e| panic!("decode failed: {e:?}"))
        .expect("complete packet");
    assert_eq!(len, bytes.len(), "consumed length");
    let mut buf = BytesMut::from(bytes);
    let again = mqtt_codec::decode_buf(&mut buf, version, MAX_PACKET_SIZE).unwrap().unwrap();
    assert!(buf.is_empty());
    assert_eq!(again, packet);
    packet
}

/// Encodes `packet` and checks that `encoded_len` agrees.
#[track_caller]
pub(crate) fn encode(packet: &Packet, version: ProtocolVersion) -> Vec<u8> {
    let mut buf = BytesMut::new();
    mqtt_codec::encode(packet, version, &mut buf)
        .unwrap_or_else(|e| panic!("encode failed: {e:?}"));
    assert_eq!(mqtt_codec::encoded_len(packet, version).unwrap(), buf.len(), "encoded_len");
    buf.to_vec()
}
