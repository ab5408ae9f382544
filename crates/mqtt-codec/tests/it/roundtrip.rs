//! Property tests: `decode(encode(p)) == p` for arbitrary packets of both versions, and arbitrary or
//! mutated bytes never panic the decoder nor make it report more bytes than it was given (STYLE §7).

use bytes::BytesMut;
use mqtt_codec::{MAX_PACKET_SIZE, Packet, ProtocolVersion};
use proptest::prelude::*;

use crate::strategies::packet;
use crate::{V5, V311, decode_all, encode};

fn round_trip(packet: &Packet, version: ProtocolVersion) {
    let bytes = encode(packet, version);
    assert_eq!(&decode_all(&bytes, version), packet);
    if let Packet::Connect(connect) = packet {
        let (first, len) = mqtt_codec::decode_connect(&bytes, MAX_PACKET_SIZE).unwrap().unwrap();
        assert_eq!(&first, connect.as_ref());
        assert_eq!(len, bytes.len());
    }
}

/// Decodes `bytes` every way there is and checks no decoder claims more than it was given.
fn decode_never_overreads(bytes: &[u8], max: u32) {
    for version in [V311, V5] {
        if let Ok(Some((packet, len))) = mqtt_codec::decode(bytes, version, max) {
            assert!(len <= bytes.len());
            assert!(len <= max as usize);
            // Whatever decodes re-encodes to something that decodes to the same packet.
            let version = match &packet {
                Packet::Connect(connect) => connect.protocol_version,
                _ => version,
            };
            assert_eq!(decode_all(&encode(&packet, version), version), packet);
        }
        let mut buf = BytesMut::from(bytes);
        if let Ok(Some(_)) = mqtt_codec::decode_buf(&mut buf, version, max) {
            assert!(buf.len() < bytes.len());
        }
    }
    if let Ok(Some((_, len))) = mqtt_codec::decode_connect(bytes, max) {
        assert!(len <= bytes.len());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn round_trip_v311(p in packet(V311)) {
        round_trip(&p, V311);
    }

    #[test]
    fn round_trip_v5(p in packet(V5)) {
        round_trip(&p, V5);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256), max in 0u32..512) {
        decode_never_overreads(&bytes, max);
        decode_never_overreads(&bytes, MAX_PACKET_SIZE);
    }

    #[test]
    fn mutated_packets_never_panic(
        p in packet(V5),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = encode(&p, V5);
        for (index, value) in flips {
            let i = index.index(bytes.len());
            bytes[i] = value;
        }
        decode_never_overreads(&bytes, MAX_PACKET_SIZE);
        let end = cut.index(bytes.len() + 1);
        decode_never_overreads(&bytes[..end], MAX_PACKET_SIZE);
    }
}

proptest! {
    /// The stored form of a PUBLISH's properties reads back as what was written.
    #[test]
    fn publish_properties_round_trip(p in packet(V5)) {
        if let Packet::Publish(publish) = p {
            let mut buf = BytesMut::new();
            publish.properties.encode_publish(&mut buf).unwrap();
            let back = mqtt_codec::Properties::decode_publish(buf.freeze()).unwrap();
            prop_assert_eq!(back, publish.properties);
        }
    }
}

#[test]
fn stored_publish_properties_reject_trailing_bytes() {
    let mut buf = BytesMut::new();
    mqtt_codec::Properties::default().encode_publish(&mut buf).unwrap();
    assert_eq!(&buf[..], &[0]);
    buf.extend_from_slice(&[1]);
    assert!(mqtt_codec::Properties::decode_publish(buf.freeze()).is_err());
}
