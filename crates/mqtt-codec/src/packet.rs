//! The [`Packet`] enum, the fixed header (§2.1) and the dispatch from packet type to the per-packet
//! modules.

use bytes::{BufMut, Bytes, BytesMut};

use crate::wire::{MAX_VAR_INT, Reader, put_var_int, read_var_int, var_int_len};
use crate::{
    Auth, ConnAck, Connect, DecodeError, Disconnect, EncodeError, PubAck, PubComp, PubRec, PubRel,
    Publish, SubAck, Subscribe, UnsubAck, Unsubscribe,
};

/// The protocol version of a connection, fixed by the Protocol Level of its CONNECT (§3.1.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProtocolVersion {
    /// MQTT 3.1.1, protocol level 4.
    V311,
    /// MQTT 5.0, protocol level 5.
    V5,
}

impl ProtocolVersion {
    /// The Protocol Level byte of a CONNECT.
    #[must_use]
    pub const fn level(self) -> u8 {
        match self {
            Self::V311 => 4,
            Self::V5 => 5,
        }
    }
}

/// The type of a control packet: the high nibble of the fixed header (§2.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketType {
    /// 1: CONNECT.
    Connect = 1,
    /// 2: CONNACK.
    ConnAck = 2,
    /// 3: PUBLISH.
    Publish = 3,
    /// 4: PUBACK.
    PubAck = 4,
    /// 5: PUBREC.
    PubRec = 5,
    /// 6: PUBREL.
    PubRel = 6,
    /// 7: PUBCOMP.
    PubComp = 7,
    /// 8: SUBSCRIBE.
    Subscribe = 8,
    /// 9: SUBACK.
    SubAck = 9,
    /// 10: UNSUBSCRIBE.
    Unsubscribe = 10,
    /// 11: UNSUBACK.
    UnsubAck = 11,
    /// 12: PINGREQ.
    PingReq = 12,
    /// 13: PINGRESP.
    PingResp = 13,
    /// 14: DISCONNECT.
    Disconnect = 14,
    /// 15: AUTH (MQTT 5 only).
    Auth = 15,
}

impl PacketType {
    fn from_nibble(nibble: u8) -> Option<Self> {
        Some(match nibble {
            1 => Self::Connect,
            2 => Self::ConnAck,
            3 => Self::Publish,
            4 => Self::PubAck,
            5 => Self::PubRec,
            6 => Self::PubRel,
            7 => Self::PubComp,
            8 => Self::Subscribe,
            9 => Self::SubAck,
            10 => Self::Unsubscribe,
            11 => Self::UnsubAck,
            12 => Self::PingReq,
            13 => Self::PingResp,
            14 => Self::Disconnect,
            15 => Self::Auth,
            _ => return None,
        })
    }

    /// The flag bits every packet type but PUBLISH must carry (the table of §2.1.3).
    const fn required_flags(self) -> Option<u8> {
        match self {
            Self::Publish => None,
            Self::PubRel | Self::Subscribe | Self::Unsubscribe => Some(0b0010),
            _ => Some(0),
        }
    }

    /// Whether an MQTT 5 packet of this type can carry properties.
    pub(crate) const fn has_properties(self) -> bool {
        !matches!(self, Self::PingReq | Self::PingResp)
    }
}

/// An MQTT control packet (§2.1.2), one variant per packet type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// CONNECT (§3.1). Boxed: it is by far the largest packet.
    Connect(Box<Connect>),
    /// CONNACK (§3.2).
    ConnAck(ConnAck),
    /// PUBLISH (§3.3).
    Publish(Publish),
    /// PUBACK (§3.4).
    PubAck(PubAck),
    /// PUBREC (§3.5).
    PubRec(PubRec),
    /// PUBREL (§3.6).
    PubRel(PubRel),
    /// PUBCOMP (§3.7).
    PubComp(PubComp),
    /// SUBSCRIBE (§3.8).
    Subscribe(Subscribe),
    /// SUBACK (§3.9).
    SubAck(SubAck),
    /// UNSUBSCRIBE (§3.10).
    Unsubscribe(Unsubscribe),
    /// UNSUBACK (§3.11).
    UnsubAck(UnsubAck),
    /// PINGREQ (§3.12).
    PingReq,
    /// PINGRESP (§3.13).
    PingResp,
    /// DISCONNECT (§3.14).
    Disconnect(Disconnect),
    /// AUTH (§3.15, MQTT 5 only).
    Auth(Auth),
}

impl Packet {
    /// The packet's type.
    #[must_use]
    pub fn packet_type(&self) -> PacketType {
        match self {
            Self::Connect(_) => PacketType::Connect,
            Self::ConnAck(_) => PacketType::ConnAck,
            Self::Publish(_) => PacketType::Publish,
            Self::PubAck(_) => PacketType::PubAck,
            Self::PubRec(_) => PacketType::PubRec,
            Self::PubRel(_) => PacketType::PubRel,
            Self::PubComp(_) => PacketType::PubComp,
            Self::Subscribe(_) => PacketType::Subscribe,
            Self::SubAck(_) => PacketType::SubAck,
            Self::Unsubscribe(_) => PacketType::Unsubscribe,
            Self::UnsubAck(_) => PacketType::UnsubAck,
            Self::PingReq => PacketType::PingReq,
            Self::PingResp => PacketType::PingResp,
            Self::Disconnect(_) => PacketType::Disconnect,
            Self::Auth(_) => PacketType::Auth,
        }
    }

    fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        match self {
            Self::Connect(p) => p.body_len(),
            Self::ConnAck(p) => p.body_len(version),
            Self::Publish(p) => p.body_len(version),
            Self::PubAck(p) => p.body_len(version),
            Self::PubRec(p) => p.body_len(version),
            Self::PubRel(p) => p.body_len(version),
            Self::PubComp(p) => p.body_len(version),
            Self::Subscribe(p) => p.body_len(version),
            Self::SubAck(p) => p.body_len(version),
            Self::Unsubscribe(p) => p.body_len(version),
            Self::UnsubAck(p) => p.body_len(version),
            Self::PingReq | Self::PingResp => Ok(0),
            Self::Disconnect(p) => p.body_len(version),
            Self::Auth(p) => p.body_len(version),
        }
    }

    fn write_body(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        match self {
            Self::Connect(p) => p.write_body(buf),
            Self::ConnAck(p) => p.write_body(version, buf),
            Self::Publish(p) => p.write_body(version, buf),
            Self::PubAck(p) => p.write_body(version, buf),
            Self::PubRec(p) => p.write_body(version, buf),
            Self::PubRel(p) => p.write_body(version, buf),
            Self::PubComp(p) => p.write_body(version, buf),
            Self::Subscribe(p) => p.write_body(version, buf),
            Self::SubAck(p) => p.write_body(version, buf),
            Self::Unsubscribe(p) => p.write_body(version, buf),
            Self::UnsubAck(p) => p.write_body(version, buf),
            Self::PingReq | Self::PingResp => {}
            Self::Disconnect(p) => p.write_body(version, buf),
            Self::Auth(p) => p.write_body(version, buf),
        }
    }

    fn first_byte(&self) -> u8 {
        let packet_type = self.packet_type();
        let flags = match self {
            Self::Publish(p) => p.flags(),
            _ => packet_type.required_flags().unwrap_or_default(),
        };
        ((packet_type as u8) << 4) | flags
    }
}

/// The fixed header of a packet whose type, flags and size have been checked.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FixedHeader {
    pub(crate) packet: PacketType,
    pub(crate) flags: u8,
    /// Length of the fixed header itself: 2 to 5 bytes.
    pub(crate) header_len: usize,
    /// The Remaining Length: the size of the body after the fixed header.
    pub(crate) body_len: usize,
}

impl FixedHeader {
    /// The size of the whole packet.
    pub(crate) fn total_len(&self) -> usize {
        self.header_len + self.body_len
    }
}

/// Which packets the decoder expects.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Expect {
    /// The first packet of a connection, which must be a CONNECT ([MQTT-3.1.0-1]).
    Connect,
    /// Any packet of an established connection.
    Any(ProtocolVersion),
}

/// Parses and checks the fixed header at the start of `buf`: `Ok(None)` if it is incomplete.
///
/// The packet type and flags are checked on the first byte, and the total size against `max_packet_size`
/// as soon as the Remaining Length is complete, so an oversized packet is refused before its body arrives.
pub(crate) fn fixed_header(
    buf: &[u8],
    expect: Expect,
    max_packet_size: u32,
) -> Result<Option<FixedHeader>, DecodeError> {
    let Some((&first, rest)) = buf.split_first() else { return Ok(None) };
    let nibble = first >> 4;
    let flags = first & 0x0F;
    let packet = PacketType::from_nibble(nibble).ok_or(DecodeError::ReservedPacketType(nibble))?;
    match expect {
        Expect::Connect if packet != PacketType::Connect => {
            return Err(DecodeError::FirstPacketNotConnect(packet));
        }
        Expect::Any(ProtocolVersion::V311) if packet == PacketType::Auth => {
            return Err(DecodeError::ReservedPacketType(nibble));
        }
        _ => {}
    }
    if let Some(required) = packet.required_flags()
        && flags != required
    {
        // [MQTT-2.1.3-1]: flags marked reserved must be set to the listed value.
        return Err(DecodeError::InvalidFixedHeaderFlags { packet, flags });
    }
    let Some((body_len, varint_len)) = read_var_int(rest)? else { return Ok(None) };
    let header = FixedHeader {
        packet,
        flags,
        header_len: 1 + varint_len,
        body_len: usize::try_from(body_len).unwrap_or(usize::MAX),
    };
    let size = u64::from(body_len) + 1 + u64::try_from(varint_len).unwrap_or(u64::MAX);
    if size > u64::from(max_packet_size) {
        return Err(DecodeError::PacketTooLarge { size, max: max_packet_size });
    }
    Ok(Some(header))
}

/// Decodes the body of a packet whose fixed header has been checked.
pub(crate) fn decode_body(
    header: FixedHeader,
    body: Bytes,
    expect: Expect,
) -> Result<Packet, DecodeError> {
    let r = Reader::new(body, header.packet);
    let version = match expect {
        Expect::Connect => return Connect::decode(r).map(|c| Packet::Connect(Box::new(c))),
        Expect::Any(version) => version,
    };
    Ok(match header.packet {
        PacketType::Connect => Packet::Connect(Box::new(Connect::decode(r)?)),
        PacketType::ConnAck => Packet::ConnAck(ConnAck::decode(r, version)?),
        PacketType::Publish => Packet::Publish(Publish::decode(header.flags, r, version)?),
        PacketType::PubAck => Packet::PubAck(PubAck::decode(r, version)?),
        PacketType::PubRec => Packet::PubRec(PubRec::decode(r, version)?),
        PacketType::PubRel => Packet::PubRel(PubRel::decode(r, version)?),
        PacketType::PubComp => Packet::PubComp(PubComp::decode(r, version)?),
        PacketType::Subscribe => Packet::Subscribe(Subscribe::decode(r, version)?),
        PacketType::SubAck => Packet::SubAck(SubAck::decode(r, version)?),
        PacketType::Unsubscribe => Packet::Unsubscribe(Unsubscribe::decode(r, version)?),
        PacketType::UnsubAck => Packet::UnsubAck(UnsubAck::decode(r, version)?),
        PacketType::PingReq => {
            r.finish()?;
            Packet::PingReq
        }
        PacketType::PingResp => {
            r.finish()?;
            Packet::PingResp
        }
        PacketType::Disconnect => Packet::Disconnect(Disconnect::decode(r, version)?),
        PacketType::Auth => Packet::Auth(Auth::decode(r, version)?),
    })
}

/// The encoded size of `packet` and of its body, after checking it can be encoded.
pub(crate) fn encoded_len(
    packet: &Packet,
    version: ProtocolVersion,
) -> Result<(usize, usize), EncodeError> {
    if version == ProtocolVersion::V311 && matches!(packet, Packet::Auth(_)) {
        return Err(EncodeError::NotInVersion(PacketType::Auth));
    }
    let body_len = packet.body_len(version)?;
    if body_len > MAX_VAR_INT as usize {
        return Err(EncodeError::PacketTooLarge(body_len));
    }
    Ok((1 + var_int_len(body_len) + body_len, body_len))
}

/// Encodes `packet` at the end of `buf`.
pub(crate) fn encode(
    packet: &Packet,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    let (total, body_len) = encoded_len(packet, version)?;
    buf.reserve(total);
    buf.put_u8(packet.first_byte());
    put_var_int(buf, body_len);
    packet.write_body(version, buf);
    Ok(())
}
