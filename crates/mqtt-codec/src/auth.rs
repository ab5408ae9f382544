//! AUTH (§3.15): enhanced authentication exchanges (MQTT 5 only).

use bytes::{BufMut, BytesMut};

use crate::properties::Context;
use crate::wire::Reader;
use crate::{DecodeError, EncodeError, PacketType, Properties, ProtocolVersion, ReasonCode};

/// An AUTH packet (§3.15).
///
/// In MQTT 5 the reason code and properties may be left out (§3.15.2.1): a Remaining Length of 0 means
/// Success without properties, 1 a reason code without properties. The encoder uses the shortest form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    /// The reason code (§3.15.2.1).
    pub reason_code: ReasonCode,
    /// Properties (§3.15.2.2).
    pub properties: Properties,
}

impl Auth {
    /// An AUTH with `reason_code` and no properties.
    #[must_use]
    pub fn new(reason_code: ReasonCode) -> Self {
        Self { reason_code, properties: Properties::default() }
    }

    pub(crate) fn decode(mut r: Reader, version: ProtocolVersion) -> Result<Self, DecodeError> {
        let mut packet = Self::new(ReasonCode::Success);
        if version == ProtocolVersion::V5 && !r.is_empty() {
            let code = r.u8("reason code")?;
            packet.reason_code = ReasonCode::from_byte(code)
                .filter(|c| c.allowed_in(PacketType::Auth))
                .ok_or(DecodeError::InvalidReasonCode { packet: PacketType::Auth, code })?;
            if !r.is_empty() {
                packet.properties = Properties::decode(&mut r, Context::Packet(PacketType::Auth))?;
            }
        }
        r.finish()?;
        Ok(packet)
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        if version == ProtocolVersion::V311 {
            return Ok(0);
        }
        if !self.reason_code.allowed_in(PacketType::Auth) {
            return Err(EncodeError::ReasonCodeNotAllowed {
                packet: PacketType::Auth,
                code: self.reason_code,
            });
        }
        if self.properties.is_empty() {
            return Ok(usize::from(self.reason_code != ReasonCode::Success));
        }
        Ok(1 + self.properties.encoded_len_with_prefix(Context::Packet(PacketType::Auth))?)
    }

    pub(crate) fn write_body(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        if version == ProtocolVersion::V311
            || (self.properties.is_empty() && self.reason_code == ReasonCode::Success)
        {
            return;
        }
        buf.put_u8(self.reason_code.to_byte());
        if !self.properties.is_empty() {
            self.properties.write_in(Context::Packet(PacketType::Auth), buf);
        }
    }
}
