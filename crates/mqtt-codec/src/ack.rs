//! The body layout PUBACK, PUBREC, PUBREL and PUBCOMP share (§3.4.2, §3.5.2, §3.6.2, §3.7.2): a Packet
//! Identifier, then in MQTT 5 an optional reason code and optional properties.
//!
//! In MQTT 5 the reason code and the property length may be left out: a Remaining Length of 2 means
//! Success without properties, 3 means a reason code without properties. The encoder uses the shortest
//! form, so decoding what it wrote gives back the same values.

use bytes::{BufMut, BytesMut};

use crate::properties::Context;
use crate::wire::Reader;
use crate::{
    DecodeError, EncodeError, PacketId, PacketType, Properties, ProtocolVersion, ReasonCode,
};

/// The fields of an acknowledgement in the QoS 1 and QoS 2 flows.
#[derive(Debug)]
pub(crate) struct AckFields {
    pub(crate) packet_id: PacketId,
    pub(crate) reason_code: ReasonCode,
    pub(crate) properties: Properties,
}

pub(crate) fn decode(mut r: Reader, version: ProtocolVersion) -> Result<AckFields, DecodeError> {
    let packet = r.packet();
    let packet_id =
        PacketId::new(r.u16("packet identifier")?).ok_or(DecodeError::ZeroPacketId(packet))?;
    let mut fields = AckFields {
        packet_id,
        reason_code: ReasonCode::Success,
        properties: Properties::default(),
    };
    if version == ProtocolVersion::V5 && !r.is_empty() {
        let code = r.u8("reason code")?;
        fields.reason_code = ReasonCode::from_byte(code)
            .filter(|c| c.allowed_in(packet))
            .ok_or(DecodeError::InvalidReasonCode { packet, code })?;
        if !r.is_empty() {
            fields.properties = Properties::decode(&mut r, Context::Packet(packet))?;
        }
    }
    r.finish()?;
    Ok(fields)
}

pub(crate) fn body_len(
    packet: PacketType,
    reason_code: ReasonCode,
    properties: &Properties,
    version: ProtocolVersion,
) -> Result<usize, EncodeError> {
    if version == ProtocolVersion::V311 {
        return Ok(2);
    }
    if !reason_code.allowed_in(packet) {
        return Err(EncodeError::ReasonCodeNotAllowed { packet, code: reason_code });
    }
    if properties.is_empty() {
        return Ok(if reason_code == ReasonCode::Success { 2 } else { 3 });
    }
    Ok(3 + properties.encoded_len_with_prefix(Context::Packet(packet))?)
}

pub(crate) fn write_body(
    packet: PacketType,
    packet_id: PacketId,
    reason_code: ReasonCode,
    properties: &Properties,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) {
    buf.put_u16(packet_id.get());
    if version == ProtocolVersion::V311 {
        return;
    }
    if properties.is_empty() {
        if reason_code != ReasonCode::Success {
            buf.put_u8(reason_code.to_byte());
        }
        return;
    }
    buf.put_u8(reason_code.to_byte());
    properties.write_in(Context::Packet(packet), buf);
}

/// Defines one acknowledgement packet type on top of the shared layout.
macro_rules! ack_packet {
    ($(#[$doc:meta])* $name:ident, $packet:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name {
            /// The Packet Identifier of the message this acknowledges.
            pub packet_id: $crate::PacketId,
            /// The reason code (v5). v3.1.1 has none: it is not sent, and decodes as Success.
            pub reason_code: $crate::ReasonCode,
            /// Properties (v5): Reason String and User Properties.
            pub properties: $crate::Properties,
        }

        impl $name {
            /// A successful acknowledgement of `packet_id` without properties.
            #[must_use]
            pub fn new(packet_id: $crate::PacketId) -> Self {
                Self {
                    packet_id,
                    reason_code: $crate::ReasonCode::Success,
                    properties: $crate::Properties::default(),
                }
            }

            pub(crate) fn decode(
                r: $crate::wire::Reader,
                version: $crate::ProtocolVersion,
            ) -> Result<Self, $crate::DecodeError> {
                let fields = $crate::ack::decode(r, version)?;
                Ok(Self {
                    packet_id: fields.packet_id,
                    reason_code: fields.reason_code,
                    properties: fields.properties,
                })
            }

            pub(crate) fn body_len(
                &self,
                version: $crate::ProtocolVersion,
            ) -> Result<usize, $crate::EncodeError> {
                $crate::ack::body_len($packet, self.reason_code, &self.properties, version)
            }

            pub(crate) fn write_body(
                &self,
                version: $crate::ProtocolVersion,
                buf: &mut bytes::BytesMut,
            ) {
                $crate::ack::write_body(
                    $packet,
                    self.packet_id,
                    self.reason_code,
                    &self.properties,
                    version,
                    buf,
                );
            }
        }
    };
}

pub(crate) use ack_packet;
