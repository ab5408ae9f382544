//! MQTT 3.1.1 and 5.0 control packets to and from bytes: a pure, sans-I/O codec.
//!
//! [`Packet`] has one variant per control packet, each a struct in its own module ([`Connect`],
//! [`Publish`], [`SubAck`], …). MQTT 5 [`Properties`] and [`ReasonCode`]s are part of those structs; on a
//! v3.1.1 connection they are not sent, and the reason codes that v3.1.1 does have (CONNACK and SUBACK
//! return codes) are translated. Strings are validated once, at the boundary, into [`MqttString`],
//! [`ClientId`], [`TopicName`] and [`TopicFilter`].
//!
//! Decoding:
//! - [`decode_connect`] / [`decode_connect_buf`] read the first packet of a connection, which must be a
//!   CONNECT; it carries the [`ProtocolVersion`] the rest of the connection uses.
//! - [`decode`] / [`decode_buf`] read any packet once the version is known.
//!
//! All four return `Ok(None)` when the buffer does not yet hold a whole packet, and check the announced
//! packet size against the caller's maximum as soon as the fixed header is complete, before the body
//! arrives. A [`DecodeError`] means the connection must be closed; [`DecodeError::reason_code`] is the MQTT 5
//! reason to send first.
//!
//! The `&[u8]` decoders copy each packet's body into one new allocation; the `BytesMut` decoders split
//! the packet off the caller's buffer without copying. Either way, payloads and binary fields of the
//! decoded packet are [`bytes::Bytes`] slices of that body.
//!
//! Encoding: [`encode`] appends a packet to a `BytesMut`; [`encoded_len`] returns the size it would
//! take, for checking a peer's Maximum Packet Size before sending.
#![warn(clippy::cast_possible_truncation, clippy::indexing_slicing)]

mod ack;
mod auth;
mod connack;
mod connect;
mod disconnect;
mod error;
mod packet;
mod properties;
mod puback;
mod pubcomp;
mod publish;
mod pubrec;
mod pubrel;
mod qos;
mod reason_code;
mod string;
mod suback;
mod subscribe;
mod topic;
mod unsuback;
mod unsubscribe;
mod wire;

use bytes::{Buf, Bytes, BytesMut};

pub use crate::auth::Auth;
pub use crate::connack::ConnAck;
pub use crate::connect::{Connect, Will};
pub use crate::disconnect::Disconnect;
pub use crate::error::{DecodeError, EncodeError};
pub use crate::packet::{Packet, PacketType, ProtocolVersion};
pub use crate::properties::{PayloadFormat, Properties};
pub use crate::puback::PubAck;
pub use crate::pubcomp::PubComp;
pub use crate::publish::{Delivery, Publish};
pub use crate::pubrec::PubRec;
pub use crate::pubrel::PubRel;
pub use crate::qos::{PacketId, QoS};
pub use crate::reason_code::ReasonCode;
pub use crate::string::{ClientId, MqttString, StringError};
pub use crate::suback::SubAck;
pub use crate::subscribe::{RetainHandling, Subscribe, Subscription, SubscriptionOptions};
pub use crate::topic::{TopicError, TopicFilter, TopicName};
pub use crate::unsuback::UnsubAck;
pub use crate::unsubscribe::Unsubscribe;

use crate::packet::{Expect, decode_body, fixed_header};

/// The largest packet MQTT can carry: a 5-byte fixed header plus a Remaining Length of 268,435,455.
pub const MAX_PACKET_SIZE: u32 = 268_435_460;

/// Decodes the packet at the start of `buf` on a connection speaking `version`.
///
/// Returns `Ok(None)` if `buf` holds less than a whole packet, otherwise the packet and the number of
/// bytes it took. A CONNECT decodes too (with the version it carries), so the caller can reject a second
/// one ([MQTT-3.1.0-2]). The body is copied once into a new buffer that the packet's `Bytes` fields share.
///
/// # Errors
///
/// [`DecodeError::PacketTooLarge`] as soon as the fixed header announces a packet larger than
/// `max_packet_size` bytes, even if the body has not arrived; any other [`DecodeError`] for a packet that
/// breaks the specification.
pub fn decode(
    buf: &[u8],
    version: ProtocolVersion,
    max_packet_size: u32,
) -> Result<Option<(Packet, usize)>, DecodeError> {
    decode_slice(buf, Expect::Any(version), max_packet_size)
}

/// Like [`decode`], but takes the packet's bytes off the front of `buf` without copying them.
///
/// On `Ok(None)`, and on an error found in the fixed header (including
/// [`DecodeError::PacketTooLarge`]), the buffer is untouched; on `Ok(Some(_))` and on an error found in
/// the body, the packet's bytes have been removed from it.
///
/// # Errors
///
/// As [`decode`].
pub fn decode_buf(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    max_packet_size: u32,
) -> Result<Option<Packet>, DecodeError> {
    decode_split(buf, Expect::Any(version), max_packet_size)
}

/// Decodes the first packet of a connection, which must be a CONNECT ([MQTT-3.1.0-1]).
///
/// Works before the protocol version is known: the CONNECT's Protocol Level decides it, and the returned
/// [`Connect::protocol_version`] is the version to pass to [`decode`] from then on.
///
/// # Errors
///
/// [`DecodeError::FirstPacketNotConnect`] for any other packet type, as soon as the first byte is in;
/// [`DecodeError::UnsupportedProtocolVersion`] or [`DecodeError::InvalidProtocolName`] (answer with a
/// CONNACK 0x84 / v3.1.1 return code 1); otherwise as [`decode`].
pub fn decode_connect(
    buf: &[u8],
    max_packet_size: u32,
) -> Result<Option<(Connect, usize)>, DecodeError> {
    match decode_slice(buf, Expect::Connect, max_packet_size)? {
        Some((Packet::Connect(connect), len)) => Ok(Some((*connect, len))),
        Some((other, _)) => Err(DecodeError::FirstPacketNotConnect(other.packet_type())),
        None => Ok(None),
    }
}

/// Like [`decode_connect`], but takes the packet's bytes off the front of `buf` without copying them, as
/// [`decode_buf`] does.
///
/// # Errors
///
/// As [`decode_connect`].
pub fn decode_connect_buf(
    buf: &mut BytesMut,
    max_packet_size: u32,
) -> Result<Option<Connect>, DecodeError> {
    match decode_split(buf, Expect::Connect, max_packet_size)? {
        Some(Packet::Connect(connect)) => Ok(Some(*connect)),
        Some(other) => Err(DecodeError::FirstPacketNotConnect(other.packet_type())),
        None => Ok(None),
    }
}

/// Appends `packet`, encoded for a connection speaking `version`, to `buf`.
///
/// A [`Connect`] is always encoded with its own [`Connect::protocol_version`]. MQTT 5 fields are left out
/// on v3.1.1 (properties, subscription options other than QoS, reason codes of acknowledgements), and
/// reason codes become v3.1.1 return codes where v3.1.1 has them (CONNACK, SUBACK). Nothing is written
/// when an error is returned.
///
/// # Errors
///
/// An [`EncodeError`] for a packet that has no valid encoding: too large, a binary field over 65,535
/// bytes, a property or reason code the packet type does not allow, and so on.
pub fn encode(
    packet: &Packet,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    packet::encode(packet, version, buf)
}

/// The number of bytes [`encode`] would write for `packet`, fixed header included: the size to compare
/// with the peer's Maximum Packet Size (§3.1.2.11.4).
///
/// # Errors
///
/// As [`encode`].
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> Result<usize, EncodeError> {
    packet::encoded_len(packet, version).map(|(total, _)| total)
}

fn decode_slice(
    buf: &[u8],
    expect: Expect,
    max_packet_size: u32,
) -> Result<Option<(Packet, usize)>, DecodeError> {
    let Some(header) = fixed_header(buf, expect, max_packet_size)? else { return Ok(None) };
    let total = header.total_len();
    let Some(body) = buf.get(header.header_len..total) else { return Ok(None) };
    let packet = decode_body(header, Bytes::copy_from_slice(body), expect)?;
    Ok(Some((packet, total)))
}

fn decode_split(
    buf: &mut BytesMut,
    expect: Expect,
    max_packet_size: u32,
) -> Result<Option<Packet>, DecodeError> {
    let Some(header) = fixed_header(buf, expect, max_packet_size)? else { return Ok(None) };
    if buf.len() < header.total_len() {
        return Ok(None);
    }
    let mut frame = buf.split_to(header.total_len());
    frame.advance(header.header_len);
    decode_body(header, frame.freeze(), expect).map(Some)
}
