//! CONNACK (§3.2): the server's answer to a CONNECT.

use bytes::{BufMut, BytesMut};

use crate::properties::Context;
use crate::wire::Reader;
use crate::{DecodeError, EncodeError, PacketType, Properties, ProtocolVersion, ReasonCode};

/// A CONNACK packet (§3.2).
///
/// On a v3.1.1 connection the reason code travels as a CONNACK return code (3.1.1 §3.2.2.3), translated by
/// [`ReasonCode::to_v311_connack`], and the properties are not sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    /// Session Present (§3.2.2.1.1). Sent as 0 whenever the reason code is an error, as [MQTT-3.2.2-6]
    /// requires.
    pub session_present: bool,
    /// The Connect Reason Code (§3.2.2.2).
    pub reason_code: ReasonCode,
    /// CONNACK properties (v5, §3.2.2.3).
    pub properties: Properties,
}

impl ConnAck {
    /// A CONNACK with `reason_code`, no session and no properties.
    #[must_use]
    pub fn new(reason_code: ReasonCode) -> Self {
        Self { session_present: false, reason_code, properties: Properties::default() }
    }

    pub(crate) fn decode(mut r: Reader, version: ProtocolVersion) -> Result<Self, DecodeError> {
        let flags = r.u8("connect acknowledge flags")?;
        if flags & 0xFE != 0 {
            return Err(DecodeError::ConnAckReservedFlags); // [MQTT-3.2.2-1]
        }
        let code = r.u8("connect reason code")?;
        let invalid = DecodeError::InvalidReasonCode { packet: PacketType::ConnAck, code };
        let (reason_code, properties) = match version {
            ProtocolVersion::V311 => {
                (ReasonCode::from_v311_connack(code).ok_or(invalid)?, Properties::default())
            }
            ProtocolVersion::V5 => {
                let reason_code = ReasonCode::from_byte(code)
                    .filter(|c| c.allowed_in(PacketType::ConnAck))
                    .ok_or(invalid)?;
                (reason_code, Properties::decode(&mut r, Context::Packet(PacketType::ConnAck))?)
            }
        };
        let session_present = flags & 0x01 != 0;
        if session_present && reason_code != ReasonCode::Success {
            // [MQTT-3.2.2-6] (v3.1.1 [MQTT-3.2.2-4]).
            return Err(DecodeError::SessionPresentOnFailure);
        }
        r.finish()?;
        Ok(Self { session_present, reason_code, properties })
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        match version {
            ProtocolVersion::V311 => Ok(2),
            ProtocolVersion::V5 => {
                if !self.reason_code.allowed_in(PacketType::ConnAck) {
                    return Err(EncodeError::ReasonCodeNotAllowed {
                        packet: PacketType::ConnAck,
                        code: self.reason_code,
                    });
                }
                Ok(2 + self
                    .properties
                    .encoded_len_with_prefix(Context::Packet(PacketType::ConnAck))?)
            }
        }
    }

    pub(crate) fn write_body(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        let success = self.reason_code == ReasonCode::Success;
        buf.put_u8(u8::from(self.session_present && success));
        match version {
            ProtocolVersion::V311 => buf.put_u8(self.reason_code.to_v311_connack()),
            ProtocolVersion::V5 => {
                buf.put_u8(self.reason_code.to_byte());
                self.properties.write_in(Context::Packet(PacketType::ConnAck), buf);
            }
        }
    }
}
