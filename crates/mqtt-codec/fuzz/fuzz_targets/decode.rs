//! Fuzz target: arbitrary bytes never panic the decoders nor make them claim more bytes than they were
//! given, and every packet that decodes re-encodes to bytes that decode to the same packet.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use mqtt_codec::{MAX_PACKET_SIZE, Packet, ProtocolVersion};

fuzz_target!(|data: &[u8]| {
    for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
        if let Ok(Some((packet, len))) = mqtt_codec::decode(data, version, MAX_PACKET_SIZE) {
            assert!(len <= data.len());
            check_re_encode(&packet, version);
        }
        let mut buf = BytesMut::from(data);
        if let Ok(Some(_)) = mqtt_codec::decode_buf(&mut buf, version, MAX_PACKET_SIZE) {
            assert!(buf.len() < data.len());
        }
    }
    if let Ok(Some((connect, len))) = mqtt_codec::decode_connect(data, 4096) {
        assert!(len <= data.len() && len <= 4096);
        check_re_encode(&Packet::Connect(Box::new(connect)), ProtocolVersion::V5);
    }
});

fn check_re_encode(packet: &Packet, version: ProtocolVersion) {
    let mut buf = BytesMut::new();
    mqtt_codec::encode(packet, version, &mut buf).expect("a decoded packet encodes");
    assert_eq!(mqtt_codec::encoded_len(packet, version).ok(), Some(buf.len()));
    let (again, len) = mqtt_codec::decode(&buf, version, MAX_PACKET_SIZE)
        .expect("re-encoded packet decodes")
        .expect("re-encoded packet is complete");
    assert_eq!(len, buf.len());
    assert_eq!(&again, packet);
}
