//! UNSUBACK (§3.11): the server's answer to an UNSUBSCRIBE.

use bytes::{BufMut, BytesMut};

use crate::properties::Context;
use crate::wire::Reader;
use crate::{
    DecodeError, EncodeError, PacketId, PacketType, Properties, ProtocolVersion, ReasonCode,
};

/// An UNSUBACK packet (§3.11).
///
/// A v3.1.1 UNSUBACK carries only the Packet Identifier (3.1.1 §3.11): the reason codes and properties
/// are not sent, and decode as empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    /// The Packet Identifier of the UNSUBSCRIBE.
    pub packet_id: PacketId,
    /// UNSUBACK properties (v5, §3.11.2.1): Reason String, User Properties.
    pub properties: Properties,
    /// One reason code per topic filter, in the UNSUBSCRIBE's order (v5, [MQTT-3.11.3-1]).
    pub reason_codes: Vec<ReasonCode>,
}

impl UnsubAck {
    pub(crate) fn decode(mut r: Reader, version: ProtocolVersion) -> Result<Self, DecodeError> {
        let packet_id = PacketId::new(r.u16("packet identifier")?)
            .ok_or(DecodeError::ZeroPacketId(PacketType::UnsubAck))?;
        let mut ack =
            Self { packet_id, properties: Properties::default(), reason_codes: Vec::new() };
        if version == ProtocolVersion::V5 {
            ack.properties = Properties::decode(&mut r, Context::Packet(PacketType::UnsubAck))?;
            ack.reason_codes.reserve(r.remaining());
            while !r.is_empty() {
                let code = r.u8("reason code")?;
                let reason = ReasonCode::from_byte(code)
                    .filter(|c| c.allowed_in(PacketType::UnsubAck))
                    .ok_or(DecodeError::InvalidReasonCode { packet: PacketType::UnsubAck, code })?;
                ack.reason_codes.push(reason);
            }
        }
        r.finish()?;
        Ok(ack)
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        match version {
            ProtocolVersion::V311 => Ok(2),
            ProtocolVersion::V5 => {
                if let Some(&code) =
                    self.reason_codes.iter().find(|c| !c.allowed_in(PacketType::UnsubAck))
                {
                    return Err(EncodeError::ReasonCodeNotAllowed {
                        packet: PacketType::UnsubAck,
                        code,
                    });
                }
                let props = self
                    .properties
                    .encoded_len_with_prefix(Context::Packet(PacketType::UnsubAck))?;
                Ok(2 + props + self.reason_codes.len())
            }
        }
    }

    pub(crate) fn write_body(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        buf.put_u16(self.packet_id.get());
        if version == ProtocolVersion::V5 {
            self.properties.write_in(Context::Packet(PacketType::UnsubAck), buf);
            for code in &self.reason_codes {
                buf.put_u8(code.to_byte());
            }
        }
    }
}
