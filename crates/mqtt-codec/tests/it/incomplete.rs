//! Incomplete input is not an error: every proper prefix of a packet decodes to `Ok(None)` (STYLE §3),
//! and the `BytesMut` decoder leaves the buffer untouched.

use bytes::BytesMut;
use mqtt_codec::{DecodeError, MAX_PACKET_SIZE};

use crate::golden::vectors;

#[test]
fn every_split_point_needs_more() {
    for (name, version, bytes) in vectors() {
        for split in 0..bytes.len() {
            let prefix = &bytes[..split];
            assert_eq!(
                mqtt_codec::decode(prefix, version, MAX_PACKET_SIZE),
                Ok(None),
                "{name} at {split}"
            );
            let mut buf = BytesMut::from(prefix);
            assert_eq!(
                mqtt_codec::decode_buf(&mut buf, version, MAX_PACKET_SIZE),
                Ok(None),
                "{name} at {split}"
            );
            assert_eq!(&buf[..], prefix, "{name} at {split}: buffer changed");
            if bytes[0] >> 4 == 1 {
                assert_eq!(mqtt_codec::decode_connect(prefix, MAX_PACKET_SIZE), Ok(None));
            }
        }
    }
}

#[test]
fn two_packets_in_one_buffer() {
    let mut buf = BytesMut::from(&[0xC0, 0x00, 0x40, 0x02, 0x00][..]);
    let first = mqtt_codec::decode_buf(&mut buf, crate::V5, MAX_PACKET_SIZE).unwrap();
    assert_eq!(first, Some(mqtt_codec::Packet::PingReq));
    assert_eq!(mqtt_codec::decode_buf(&mut buf, crate::V5, MAX_PACKET_SIZE), Ok(None));
    buf.extend_from_slice(&[0x01]);
    let second = mqtt_codec::decode_buf(&mut buf, crate::V5, MAX_PACKET_SIZE).unwrap();
    assert!(matches!(second, Some(mqtt_codec::Packet::PubAck(_))));
    assert!(buf.is_empty());
}

#[test]
fn packet_too_large_is_reported_before_the_body_arrives() {
    // 5.0 §3.1.2.11.4: the announced size (2 + 11 bytes) exceeds the limit; only 2 bytes are present.
    let header = [0x30, 0x0B];
    let expected = DecodeError::PacketTooLarge { size: 13, max: 12 };
    assert_eq!(mqtt_codec::decode(&header, crate::V5, 12), Err(expected.clone()));
    assert_eq!(expected.reason_code(), mqtt_codec::ReasonCode::PacketTooLarge);
    // The limit counts the whole packet, fixed header included.
    assert_eq!(mqtt_codec::decode(&header, crate::V5, 13), Ok(None));
    // A four-byte remaining length of 268,435,455 is refused with a small limit, nothing allocated.
    let huge = [0x30, 0xFF, 0xFF, 0xFF, 0x7F];
    let mut buf = BytesMut::from(&huge[..]);
    assert!(matches!(
        mqtt_codec::decode_buf(&mut buf, crate::V311, 1024),
        Err(DecodeError::PacketTooLarge { size: 268_435_460, max: 1024 })
    ));
    assert!(matches!(
        mqtt_codec::decode_connect(&[0x10, 0xFF, 0x7F], 100),
        Err(DecodeError::PacketTooLarge { .. })
    ));
}
