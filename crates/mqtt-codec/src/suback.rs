//! SUBACK (§3.9): the server's answer to a SUBSCRIBE, one reason code per topic filter.

use bytes::{BufMut, BytesMut};

use crate::properties::Context;
use crate::wire::Reader;
use crate::{
    DecodeError, EncodeError, PacketId, PacketType, Properties, ProtocolVersion, ReasonCode,
};

/// A SUBACK packet (§3.9).
///
/// On a v3.1.1 connection each reason code travels as a SUBACK return code (3.1.1 §3.9.3): the granted
/// QoS, or 0x80 *Failure* for any error ([`ReasonCode::to_v311_suback`]); properties are not sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    /// The Packet Identifier of the SUBSCRIBE.
    pub packet_id: PacketId,
    /// SUBACK properties (v5, §3.9.2.1): Reason String, User Properties.
    pub properties: Properties,
    /// One reason code per topic filter, in the SUBSCRIBE's order ([MQTT-3.9.3-1]).
    pub reason_codes: Vec<ReasonCode>,
}

impl SubAck {
    pub(crate) fn decode(mut r: Reader, version: ProtocolVersion) -> Result<Self, DecodeError> {
        let packet_id = PacketId::new(r.u16("packet identifier")?)
            .ok_or(DecodeError::ZeroPacketId(PacketType::SubAck))?;
        let properties = match version {
            ProtocolVersion::V311 => Properties::default(),
            ProtocolVersion::V5 => Properties::decode(&mut r, Context::Packet(PacketType::SubAck))?,
        };
        let mut reason_codes = Vec::with_capacity(r.remaining());
        while !r.is_empty() {
            let code = r.u8("reason code")?;
            let reason = match version {
                ProtocolVersion::V311 => ReasonCode::from_v311_suback(code),
                ProtocolVersion::V5 => {
                    ReasonCode::from_byte(code).filter(|c| c.allowed_in(PacketType::SubAck))
                }
            };
            reason_codes.push(
                reason
                    .ok_or(DecodeError::InvalidReasonCode { packet: PacketType::SubAck, code })?,
            );
        }
        Ok(Self { packet_id, properties, reason_codes })
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        let mut len = 2 + self.reason_codes.len();
        if version == ProtocolVersion::V5 {
            if let Some(&code) =
                self.reason_codes.iter().find(|c| !c.allowed_in(PacketType::SubAck))
            {
                return Err(EncodeError::ReasonCodeNotAllowed { packet: PacketType::SubAck, code });
            }
            len += self.properties.encoded_len_with_prefix(Context::Packet(PacketType::SubAck))?;
        }
        Ok(len)
    }

    pub(crate) fn write_body(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        buf.put_u16(self.packet_id.get());
        match version {
            ProtocolVersion::V311 => {
                for code in &self.reason_codes {
                    buf.put_u8(code.to_v311_suback());
                }
            }
            ProtocolVersion::V5 => {
                self.properties.write_in(Context::Packet(PacketType::SubAck), buf);
                for code in &self.reason_codes {
                    buf.put_u8(code.to_byte());
                }
            }
        }
    }
}
