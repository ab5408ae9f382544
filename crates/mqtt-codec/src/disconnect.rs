//! DISCONNECT (§3.14): the last packet of a connection, from either side; in v5 it carries a reason.

use bytes::{BufMut, BytesMut};

use crate::properties::Context;
use crate::wire::Reader;
use crate::{DecodeError, EncodeError, PacketType, Properties, ProtocolVersion, ReasonCode};

/// A DISCONNECT packet (§3.14).
///
/// In MQTT 5 the reason code and properties may be left out (§3.14.2.1): a Remaining Length of 0 means
/// Success without properties, 1 a reason code without properties; the decoder reads every form. The
/// encoder leaves out the body of a normal disconnection (Success, no properties), but writes any
/// other reason code with its Property Length, even when it is 0: some clients (rumqttc 0.25) cannot
/// read the one-byte form, and the two extra bytes cost nothing on the last packet of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    /// The reason code (§3.14.2.1).
    pub reason_code: ReasonCode,
    /// Properties (§3.14.2.2).
    pub properties: Properties,
}

impl Disconnect {
    /// A DISCONNECT with `reason_code` and no properties.
    #[must_use]
    pub fn new(reason_code: ReasonCode) -> Self {
        Self { reason_code, properties: Properties::default() }
    }

    pub(crate) fn decode(mut r: Reader, version: ProtocolVersion) -> Result<Self, DecodeError> {
        let mut packet = Self::new(ReasonCode::Success);
        if version == ProtocolVersion::V5 && !r.is_empty() {
            let code = r.u8("reason code")?;
            packet.reason_code = ReasonCode::from_byte(code)
                .filter(|c| c.allowed_in(PacketType::Disconnect))
                .ok_or(DecodeError::InvalidReasonCode { packet: PacketType::Disconnect, code })?;
            if !r.is_empty() {
                packet.properties =
                    Properties::decode(&mut r, Context::Packet(PacketType::Disconnect))?;
            }
        }
        r.finish()?;
        Ok(packet)
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        if version == ProtocolVersion::V311 {
            return Ok(0);
        }
        if !self.reason_code.allowed_in(PacketType::Disconnect) {
            return Err(EncodeError::ReasonCodeNotAllowed {
                packet: PacketType::Disconnect,
                code: self.reason_code,
            });
        }
        if self.properties.is_empty() && self.reason_code == ReasonCode::Success {
            return Ok(0);
        }
        Ok(1 + self.properties.encoded_len_with_prefix(Context::Packet(PacketType::Disconnect))?)
    }

    pub(crate) fn write_body(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        if version == ProtocolVersion::V311
            || (self.properties.is_empty() && self.reason_code == ReasonCode::Success)
        {
            return;
        }
        buf.put_u8(self.reason_code.to_byte());
        self.properties.write_in(Context::Packet(PacketType::Disconnect), buf);
    }
}
