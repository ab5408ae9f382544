//! MQTT 5 reason codes (§2.4) and their translation to the v3.1.1 CONNACK return codes (3.1.1 §3.2.2.3)
//! and SUBACK return codes (3.1.1 §3.9.3).
//!
//! One enum serves both versions: code that builds packets speaks MQTT 5, and the codec translates when it
//! writes a v3.1.1 connection. Decoding a v3.1.1 return code yields the MQTT 5 code with the same meaning.

use crate::PacketType;

/// An MQTT 5 reason code (§2.4). Several codes share a byte value and a name depending on the packet; this
/// enum uses one variant per byte value and documents the other names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ReasonCode {
    /// 0x00: Success; also *Normal disconnection* (DISCONNECT) and *Granted QoS 0* (SUBACK).
    Success,
    /// 0x01: Granted QoS 1 (SUBACK).
    GrantedQos1,
    /// 0x02: Granted QoS 2 (SUBACK).
    GrantedQos2,
    /// 0x04: Disconnect with Will Message (DISCONNECT).
    DisconnectWithWillMessage,
    /// 0x10: No matching subscribers (PUBACK, PUBREC).
    NoMatchingSubscribers,
    /// 0x11: No subscription existed (UNSUBACK).
    NoSubscriptionExisted,
    /// 0x18: Continue authentication (AUTH).
    ContinueAuthentication,
    /// 0x19: Re-authenticate (AUTH).
    ReAuthenticate,
    /// 0x80: Unspecified error; also the v3.1.1 SUBACK *Failure* return code.
    UnspecifiedError,
    /// 0x81: Malformed Packet.
    MalformedPacket,
    /// 0x82: Protocol Error.
    ProtocolError,
    /// 0x83: Implementation specific error.
    ImplementationSpecificError,
    /// 0x84: Unsupported Protocol Version (v3.1.1 CONNACK return code 1).
    UnsupportedProtocolVersion,
    /// 0x85: Client Identifier not valid (v3.1.1 CONNACK return code 2, *identifier rejected*).
    ClientIdentifierNotValid,
    /// 0x86: Bad User Name or Password (v3.1.1 CONNACK return code 4).
    BadUserNameOrPassword,
    /// 0x87: Not authorized (v3.1.1 CONNACK return code 5).
    NotAuthorized,
    /// 0x88: Server unavailable (v3.1.1 CONNACK return code 3).
    ServerUnavailable,
    /// 0x89: Server busy.
    ServerBusy,
    /// 0x8A: Banned.
    Banned,
    /// 0x8B: Server shutting down.
    ServerShuttingDown,
    /// 0x8C: Bad authentication method.
    BadAuthenticationMethod,
    /// 0x8D: Keep Alive timeout.
    KeepAliveTimeout,
    /// 0x8E: Session taken over.
    SessionTakenOver,
    /// 0x8F: Topic Filter invalid.
    TopicFilterInvalid,
    /// 0x90: Topic Name invalid.
    TopicNameInvalid,
    /// 0x91: Packet Identifier in use.
    PacketIdentifierInUse,
    /// 0x92: Packet Identifier not found.
    PacketIdentifierNotFound,
    /// 0x93: Receive Maximum exceeded.
    ReceiveMaximumExceeded,
    /// 0x94: Topic Alias invalid.
    TopicAliasInvalid,
    /// 0x95: Packet too large.
    PacketTooLarge,
    /// 0x96: Message rate too high.
    MessageRateTooHigh,
    /// 0x97: Quota exceeded.
    QuotaExceeded,
    /// 0x98: Administrative action.
    AdministrativeAction,
    /// 0x99: Payload format invalid.
    PayloadFormatInvalid,
    /// 0x9A: Retain not supported.
    RetainNotSupported,
    /// 0x9B: QoS not supported.
    QosNotSupported,
    /// 0x9C: Use another server.
    UseAnotherServer,
    /// 0x9D: Server moved.
    ServerMoved,
    /// 0x9E: Shared Subscriptions not supported.
    SharedSubscriptionsNotSupported,
    /// 0x9F: Connection rate exceeded.
    ConnectionRateExceeded,
    /// 0xA0: Maximum connect time.
    MaximumConnectTime,
    /// 0xA1: Subscription Identifiers not supported.
    SubscriptionIdentifiersNotSupported,
    /// 0xA2: Wildcard Subscriptions not supported.
    WildcardSubscriptionsNotSupported,
}

/// Every reason code, in byte order.
pub(crate) const ALL: [ReasonCode; 43] = [
    ReasonCode::Success,
    ReasonCode::GrantedQos1,
    ReasonCode::GrantedQos2,
    ReasonCode::DisconnectWithWillMessage,
    ReasonCode::NoMatchingSubscribers,
    ReasonCode::NoSubscriptionExisted,
    ReasonCode::ContinueAuthentication,
    ReasonCode::ReAuthenticate,
    ReasonCode::UnspecifiedError,
    ReasonCode::MalformedPacket,
    ReasonCode::ProtocolError,
    ReasonCode::ImplementationSpecificError,
    ReasonCode::UnsupportedProtocolVersion,
    ReasonCode::ClientIdentifierNotValid,
    ReasonCode::BadUserNameOrPassword,
    ReasonCode::NotAuthorized,
    ReasonCode::ServerUnavailable,
    ReasonCode::ServerBusy,
    ReasonCode::Banned,
    ReasonCode::ServerShuttingDown,
    ReasonCode::BadAuthenticationMethod,
    ReasonCode::KeepAliveTimeout,
    ReasonCode::SessionTakenOver,
    ReasonCode::TopicFilterInvalid,
    ReasonCode::TopicNameInvalid,
    ReasonCode::PacketIdentifierInUse,
    ReasonCode::PacketIdentifierNotFound,
    ReasonCode::ReceiveMaximumExceeded,
    ReasonCode::TopicAliasInvalid,
    ReasonCode::PacketTooLarge,
    ReasonCode::MessageRateTooHigh,
    ReasonCode::QuotaExceeded,
    ReasonCode::AdministrativeAction,
    ReasonCode::PayloadFormatInvalid,
    ReasonCode::RetainNotSupported,
    ReasonCode::QosNotSupported,
    ReasonCode::UseAnotherServer,
    ReasonCode::ServerMoved,
    ReasonCode::SharedSubscriptionsNotSupported,
    ReasonCode::ConnectionRateExceeded,
    ReasonCode::MaximumConnectTime,
    ReasonCode::SubscriptionIdentifiersNotSupported,
    ReasonCode::WildcardSubscriptionsNotSupported,
];

impl ReasonCode {
    /// The byte that represents this code on the wire in MQTT 5.
    #[must_use]
    pub const fn to_byte(self) -> u8 {
        match self {
            Self::Success => 0x00,
            Self::GrantedQos1 => 0x01,
            Self::GrantedQos2 => 0x02,
            Self::DisconnectWithWillMessage => 0x04,
            Self::NoMatchingSubscribers => 0x10,
            Self::NoSubscriptionExisted => 0x11,
            Self::ContinueAuthentication => 0x18,
            Self::ReAuthenticate => 0x19,
            Self::UnspecifiedError => 0x80,
            Self::MalformedPacket => 0x81,
            Self::ProtocolError => 0x82,
            Self::ImplementationSpecificError => 0x83,
            Self::UnsupportedProtocolVersion => 0x84,
            Self::ClientIdentifierNotValid => 0x85,
            Self::BadUserNameOrPassword => 0x86,
            Self::NotAuthorized => 0x87,
            Self::ServerUnavailable => 0x88,
            Self::ServerBusy => 0x89,
            Self::Banned => 0x8A,
            Self::ServerShuttingDown => 0x8B,
            Self::BadAuthenticationMethod => 0x8C,
            Self::KeepAliveTimeout => 0x8D,
            Self::SessionTakenOver => 0x8E,
            Self::TopicFilterInvalid => 0x8F,
            Self::TopicNameInvalid => 0x90,
            Self::PacketIdentifierInUse => 0x91,
            Self::PacketIdentifierNotFound => 0x92,
            Self::ReceiveMaximumExceeded => 0x93,
            Self::TopicAliasInvalid => 0x94,
            Self::PacketTooLarge => 0x95,
            Self::MessageRateTooHigh => 0x96,
            Self::QuotaExceeded => 0x97,
            Self::AdministrativeAction => 0x98,
            Self::PayloadFormatInvalid => 0x99,
            Self::RetainNotSupported => 0x9A,
            Self::QosNotSupported => 0x9B,
            Self::UseAnotherServer => 0x9C,
            Self::ServerMoved => 0x9D,
            Self::SharedSubscriptionsNotSupported => 0x9E,
            Self::ConnectionRateExceeded => 0x9F,
            Self::MaximumConnectTime => 0xA0,
            Self::SubscriptionIdentifiersNotSupported => 0xA1,
            Self::WildcardSubscriptionsNotSupported => 0xA2,
        }
    }

    /// The reason code an MQTT 5 byte stands for, if any.
    #[must_use]
    pub fn from_byte(byte: u8) -> Option<Self> {
        ALL.iter().copied().find(|code| code.to_byte() == byte)
    }

    /// Whether this code reports a failure (its byte is 0x80 or above, §2.4).
    #[must_use]
    pub const fn is_error(self) -> bool {
        self.to_byte() >= 0x80
    }

    /// Whether MQTT 5 allows this code in the given packet type (the tables of §3.2.2.2, §3.4.2.1,
    /// §3.5.2.1, §3.6.2.1, §3.7.2.1, §3.9.3, §3.11.3, §3.14.2.1 and §3.15.2.1).
    #[must_use]
    pub fn allowed_in(self, packet: PacketType) -> bool {
        let byte = self.to_byte();
        match packet {
            PacketType::ConnAck => {
                matches!(byte, 0x00 | 0x80..=0x8A | 0x8C | 0x90 | 0x95 | 0x97 | 0x99..=0x9D | 0x9F)
            }
            PacketType::PubAck | PacketType::PubRec => {
                matches!(byte, 0x00 | 0x10 | 0x80 | 0x83 | 0x87 | 0x90 | 0x91 | 0x97 | 0x99)
            }
            PacketType::PubRel | PacketType::PubComp => matches!(byte, 0x00 | 0x92),
            PacketType::SubAck => {
                matches!(
                    byte,
                    0x00..=0x02 | 0x80 | 0x83 | 0x87 | 0x8F | 0x91 | 0x97 | 0x9E | 0xA1 | 0xA2
                )
            }
            PacketType::UnsubAck => matches!(byte, 0x00 | 0x11 | 0x80 | 0x83 | 0x87 | 0x8F | 0x91),
            PacketType::Disconnect => matches!(
                byte,
                0x00 | 0x04 | 0x80..=0x83 | 0x87 | 0x89 | 0x8B | 0x8D..=0x90 | 0x93..=0xA2
            ),
            PacketType::Auth => matches!(byte, 0x00 | 0x18 | 0x19),
            PacketType::Connect
            | PacketType::Publish
            | PacketType::Subscribe
            | PacketType::Unsubscribe
            | PacketType::PingReq
            | PacketType::PingResp => false,
        }
    }

    /// The v3.1.1 CONNACK return code (3.1.1 §3.2.2.3) closest to this code.
    ///
    /// Codes without a v3.1.1 equivalent map to the nearest meaning: authentication and authorization
    /// failures (`Banned`, `BadAuthenticationMethod`) to 5 *not authorized*, load and availability failures
    /// (`ServerBusy`, `UseAnotherServer`, …) and anything else to 3 *server unavailable*.
    #[must_use]
    pub const fn to_v311_connack(self) -> u8 {
        match self {
            Self::Success => 0,
            Self::UnsupportedProtocolVersion => 1,
            Self::ClientIdentifierNotValid => 2,
            Self::BadUserNameOrPassword => 4,
            Self::NotAuthorized | Self::Banned | Self::BadAuthenticationMethod => 5,
            _ => 3,
        }
    }

    /// The reason code a v3.1.1 CONNACK return code (0 to 5) stands for.
    #[must_use]
    pub const fn from_v311_connack(code: u8) -> Option<Self> {
        match code {
            0 => Some(Self::Success),
            1 => Some(Self::UnsupportedProtocolVersion),
            2 => Some(Self::ClientIdentifierNotValid),
            3 => Some(Self::ServerUnavailable),
            4 => Some(Self::BadUserNameOrPassword),
            5 => Some(Self::NotAuthorized),
            _ => None,
        }
    }

    /// The v3.1.1 SUBACK return code for this code: the granted QoS 0, 1 or 2, or 0x80 *Failure* for any
    /// error.
    #[must_use]
    pub const fn to_v311_suback(self) -> u8 {
        match self {
            Self::Success => 0x00,
            Self::GrantedQos1 => 0x01,
            Self::GrantedQos2 => 0x02,
            _ => 0x80,
        }
    }

    /// The reason code a v3.1.1 SUBACK return code (0, 1, 2 or 0x80) stands for.
    #[must_use]
    pub const fn from_v311_suback(code: u8) -> Option<Self> {
        match code {
            0x00 => Some(Self::Success),
            0x01 => Some(Self::GrantedQos1),
            0x02 => Some(Self::GrantedQos2),
            0x80 => Some(Self::UnspecifiedError),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_and_are_sorted() {
        let mut previous = None;
        for code in ALL {
            assert_eq!(ReasonCode::from_byte(code.to_byte()), Some(code));
            assert!(previous < Some(code.to_byte()));
            previous = Some(code.to_byte());
        }
        assert_eq!(ReasonCode::from_byte(0x03), None);
        assert_eq!(ReasonCode::from_byte(0xA3), None);
    }

    #[test]
    fn v311_connack_codes_round_trip() {
        for code in 0..=5 {
            let reason = ReasonCode::from_v311_connack(code).unwrap();
            assert_eq!(reason.to_v311_connack(), code);
        }
        assert_eq!(ReasonCode::from_v311_connack(6), None);
        assert_eq!(ReasonCode::Banned.to_v311_connack(), 5);
        assert_eq!(ReasonCode::ServerBusy.to_v311_connack(), 3);
    }
}
