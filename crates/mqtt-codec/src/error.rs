//! Decode and encode errors, and how each decode failure maps to the MQTT 5 reason code a server sends
//! before closing the connection.
//!
//! MQTT 5.0 §4.13 distinguishes a *Malformed Packet* (0x81: the bytes cannot be parsed according to the
//! specification) from a *Protocol Error* (0x82: the packet parses, but contains data the protocol does not
//! allow). Each variant below names the normative statement it enforces and [`DecodeError::reason_code`]
//! returns the code the specification assigns. MQTT 3.1.1 has no reason codes on DISCONNECT: a v3.1.1
//! server simply closes the connection, so the mapping is only used on v5 connections (and for CONNACK).

use crate::{PacketType, ReasonCode, StringError, TopicError};

/// Why a byte sequence is not a valid MQTT control packet.
///
/// Incomplete input is not an error: the decoders return `Ok(None)` when they need more bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The packet (fixed header plus remaining length) is larger than the maximum packet size the caller
    /// accepts. Detected from the fixed header alone, before the body arrives or is allocated.
    /// MQTT 5.0 §3.1.2.11.4 / [MQTT-3.2.2-15]; reason 0x95.
    #[error("packet of {size} bytes exceeds the maximum packet size of {max} bytes")]
    PacketTooLarge {
        /// Total packet size announced by the fixed header.
        size: u64,
        /// The limit the caller passed in.
        max: u32,
    },
    /// A Variable Byte Integer (the remaining length, a property length or a subscription identifier) uses
    /// more than four bytes, or more bytes than necessary ([MQTT-1.5.5-1], §2.1.4). Malformed.
    #[error("invalid variable byte integer")]
    InvalidVarInt,
    /// The packet type nibble is reserved (0, or 15 on a v3.1.1 connection). Malformed (§2.1.2).
    #[error("reserved packet type {0}")]
    ReservedPacketType(u8),
    /// The fixed-header flag bits are not the ones the packet type requires ([MQTT-2.1.3-1]). Malformed.
    #[error("invalid fixed header flags {flags:#06b} for {packet:?}")]
    InvalidFixedHeaderFlags {
        /// The packet whose flags are wrong.
        packet: PacketType,
        /// The four flag bits received.
        flags: u8,
    },
    /// A field extends past the end of the packet's remaining length. Malformed.
    #[error("{packet:?} ends before its {field} is complete")]
    UnexpectedEnd {
        /// The packet being decoded.
        packet: PacketType,
        /// The field that was cut short.
        field: &'static str,
    },
    /// Bytes are left over after the last field of the packet. Malformed.
    #[error("{packet:?} has {extra} bytes after its last field")]
    TrailingBytes {
        /// The packet being decoded.
        packet: PacketType,
        /// How many bytes were left over.
        extra: usize,
    },
    /// A UTF-8 Encoded String is ill-formed, contains U+0000 ([MQTT-1.5.4-1], [MQTT-1.5.4-2]). Malformed.
    #[error("invalid string in {packet:?}: {error}")]
    InvalidString {
        /// The packet being decoded.
        packet: PacketType,
        /// What is wrong with the string.
        error: StringError,
    },
    /// A Topic Name is empty ([MQTT-4.7.3-1], v3.1.1) or contains a wildcard ([MQTT-3.3.2-2]). Malformed
    /// (as Mosquitto does: the name cannot be parsed as a Topic Name).
    #[error("invalid topic name: {0}")]
    InvalidTopicName(TopicError),
    /// A Topic Filter breaks the wildcard or shared-subscription syntax ([MQTT-4.7.1-2], [MQTT-4.7.1-3],
    /// [MQTT-4.7.3-1], [MQTT-4.8.2-1], [MQTT-4.8.2-2]). Malformed.
    #[error("invalid topic filter: {0}")]
    InvalidTopicFilter(TopicError),
    /// The QoS bits of a PUBLISH are 3 ([MQTT-3.3.1-4]). Malformed.
    #[error("publish with qos 3")]
    InvalidPublishQos,
    /// A QoS 0 PUBLISH has the DUP flag set ([MQTT-3.3.1-2]). Malformed.
    #[error("publish with qos 0 and dup set")]
    DupWithQos0,
    /// The protocol name of a CONNECT is not `MQTT` ([MQTT-3.1.2-1]); reason 0x84.
    #[error("invalid protocol name")]
    InvalidProtocolName,
    /// The CONNECT protocol level is neither 4 (3.1.1) nor 5 ([MQTT-3.1.2-2]); reason 0x84.
    #[error("unsupported protocol level {0}")]
    UnsupportedProtocolVersion(u8),
    /// The reserved bit of the CONNECT flags is set ([MQTT-3.1.2-3]). Malformed.
    #[error("reserved connect flag set")]
    ConnectReservedFlag,
    /// The Will QoS is 3 ([MQTT-3.1.2-12], v5 §3.1.2.6), or Will QoS / Will Retain are set without the Will
    /// Flag ([MQTT-3.1.2-11], [MQTT-3.1.2-13]). Malformed.
    #[error("invalid will flags")]
    InvalidWillFlags,
    /// v3.1.1 only: the Password Flag is set without the User Name Flag ([MQTT-3.1.2-22]). Protocol error.
    #[error("password without user name")]
    PasswordWithoutUsername,
    /// Reserved bits of the CONNACK Acknowledge Flags are set ([MQTT-3.2.2-1]). Malformed.
    #[error("reserved connack flags set")]
    ConnAckReservedFlags,
    /// A CONNACK carries Session Present = 1 with a non-zero reason code ([MQTT-3.2.2-6]). Protocol error.
    #[error("session present with a failure reason code")]
    SessionPresentOnFailure,
    /// A property identifier not defined by MQTT 5.0 §2.2.2.2. Malformed.
    #[error("unknown property identifier {0:#04x}")]
    UnknownProperty(u32),
    /// A property identifier that is not valid for this packet type (§2.2.2.2). Malformed.
    #[error("property {id:#04x} is not allowed in {packet:?}")]
    PropertyNotAllowed {
        /// The property identifier.
        id: u8,
        /// The packet (or will) it appeared in.
        packet: PacketType,
    },
    /// A property that may appear only once appears twice (§2.2.2.2, e.g. §3.1.2.11.9 for
    /// Authentication Method). Protocol error.
    #[error("property {0:#04x} appears more than once")]
    DuplicateProperty(u8),
    /// A property value outside its allowed range: Receive Maximum 0 (§3.1.2.11.3), Maximum Packet Size 0
    /// (§3.1.2.11.4), Topic Alias 0 ([MQTT-3.3.2-8]), Subscription Identifier 0 (§3.8.2.1.2), a byte flag
    /// other than 0 or 1, Maximum QoS 2 (§3.2.2.3.4). Protocol error.
    #[error("invalid value for property {0:#04x}")]
    InvalidPropertyValue(u8),
    /// Authentication Data without Authentication Method (§3.1.2.11.10). Protocol error.
    #[error("authentication data without authentication method")]
    AuthDataWithoutMethod,
    /// A v5 PUBLISH has a zero-length Topic Name and no Topic Alias (§3.3.2.1). Protocol error.
    #[error("empty topic name without topic alias")]
    EmptyTopicWithoutAlias,
    /// A Packet Identifier is zero ([MQTT-2.2.1-3]). Protocol error.
    #[error("packet identifier 0 in {0:?}")]
    ZeroPacketId(PacketType),
    /// A SUBSCRIBE or UNSUBSCRIBE has no topic filter ([MQTT-3.8.3-2], [MQTT-3.10.3-2]). Protocol error.
    #[error("{0:?} without topic filters")]
    NoTopicFilters(PacketType),
    /// Reserved bits of a SUBSCRIBE's Subscription Options are set ([MQTT-3.8.3-5]; v3.1.1
    /// [MQTT-3.8.3-4]). Malformed.
    #[error("reserved subscription option bits set")]
    SubscriptionOptionsReserved,
    /// A subscription's Maximum QoS is 3 (v5 §3.8.3.1: protocol error; v3.1.1 [MQTT-3.8.3-4]: malformed,
    /// which closes the connection all the same).
    #[error("subscription with qos 3")]
    InvalidSubscriptionQos,
    /// A subscription's Retain Handling is 3 (§3.8.3.1). Protocol error.
    #[error("subscription with retain handling 3")]
    InvalidRetainHandling,
    /// No Local is set on a shared subscription ([MQTT-3.8.3-4]). Protocol error.
    #[error("no local on a shared subscription")]
    NoLocalOnSharedSubscription,
    /// A reason code the packet type does not allow (e.g. 0x10 in a CONNACK, 0x00 as a v3.1.1 CONNACK
    /// return code above 5). Protocol error: the byte parses, but its value is not allowed.
    #[error("reason code {code:#04x} is not allowed in {packet:?}")]
    InvalidReasonCode {
        /// The packet being decoded.
        packet: PacketType,
        /// The byte received.
        code: u8,
    },
    /// The first packet on a connection is not a CONNECT ([MQTT-3.1.0-1]). Protocol error.
    #[error("first packet is {0:?}, not connect")]
    FirstPacketNotConnect(PacketType),
}

impl DecodeError {
    /// The MQTT 5 reason code a server (or client) sends in its CONNACK or DISCONNECT before closing the
    /// connection because of this error (MQTT 5.0 §4.13).
    #[must_use]
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            Self::PacketTooLarge { .. } => ReasonCode::PacketTooLarge,
            Self::InvalidProtocolName | Self::UnsupportedProtocolVersion(_) => {
                ReasonCode::UnsupportedProtocolVersion
            }
            Self::InvalidVarInt
            | Self::ReservedPacketType(_)
            | Self::InvalidFixedHeaderFlags { .. }
            | Self::UnexpectedEnd { .. }
            | Self::TrailingBytes { .. }
            | Self::InvalidString { .. }
            | Self::InvalidTopicName(_)
            | Self::InvalidTopicFilter(_)
            | Self::InvalidPublishQos
            | Self::DupWithQos0
            | Self::ConnectReservedFlag
            | Self::InvalidWillFlags
            | Self::ConnAckReservedFlags
            | Self::UnknownProperty(_)
            | Self::PropertyNotAllowed { .. }
            | Self::SubscriptionOptionsReserved => ReasonCode::MalformedPacket,
            Self::PasswordWithoutUsername
            | Self::SessionPresentOnFailure
            | Self::DuplicateProperty(_)
            | Self::InvalidPropertyValue(_)
            | Self::AuthDataWithoutMethod
            | Self::EmptyTopicWithoutAlias
            | Self::ZeroPacketId(_)
            | Self::NoTopicFilters(_)
            | Self::InvalidSubscriptionQos
            | Self::InvalidRetainHandling
            | Self::NoLocalOnSharedSubscription
            | Self::InvalidReasonCode { .. }
            | Self::FirstPacketNotConnect(_) => ReasonCode::ProtocolError,
        }
    }
}

/// Why a [`Packet`](crate::Packet) cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The remaining length would exceed 268,435,455 bytes, the largest a Variable Byte Integer holds
    /// (§2.1.4).
    #[error("packet body of {0} bytes exceeds the 268435455 bytes a packet can carry")]
    PacketTooLarge(usize),
    /// Binary Data (password, correlation data, authentication data, will payload) is longer than 65,535
    /// bytes (§1.5.6).
    #[error("{0} is longer than 65535 bytes")]
    BinaryTooLong(&'static str),
    /// A property list (§2.2.2.1) is longer than a Variable Byte Integer can express.
    #[error("properties are too long")]
    PropertiesTooLong,
    /// The properties contain an identifier the packet type does not allow (§2.2.2.2).
    #[error("property {id:#04x} is not allowed in {packet:?}")]
    PropertyNotAllowed {
        /// The property identifier.
        id: u8,
        /// The packet (or will) that carries it.
        packet: PacketType,
    },
    /// A property value outside its allowed range: Maximum QoS 2, a Subscription Identifier above
    /// 268,435,455, Authentication Data without Authentication Method.
    #[error("invalid value for property {0:#04x}")]
    InvalidPropertyValue(u8),
    /// A property that may appear only once appears more than once (a second Subscription Identifier in a
    /// SUBSCRIBE).
    #[error("property {0:#04x} appears more than once")]
    DuplicateProperty(u8),
    /// The reason code is not one the packet type allows in MQTT 5.
    #[error("reason code {code:?} is not allowed in {packet:?}")]
    ReasonCodeNotAllowed {
        /// The packet being encoded.
        packet: PacketType,
        /// The offending reason code.
        code: ReasonCode,
    },
    /// A SUBSCRIBE or UNSUBSCRIBE without topic filters ([MQTT-3.8.3-2], [MQTT-3.10.3-2]).
    #[error("{0:?} without topic filters")]
    NoTopicFilters(PacketType),
    /// A PUBLISH without a Topic Name needs a Topic Alias, and exists only in MQTT 5 (§3.3.2.1).
    #[error("publish without topic name needs mqtt 5 and a topic alias")]
    EmptyTopicWithoutAlias,
    /// A v3.1.1 CONNECT with a password but no user name ([MQTT-3.1.2-22]).
    #[error("password without user name")]
    PasswordWithoutUsername,
    /// The packet type does not exist in this protocol version (AUTH in v3.1.1).
    #[error("{0:?} does not exist in mqtt 3.1.1")]
    NotInVersion(PacketType),
}
