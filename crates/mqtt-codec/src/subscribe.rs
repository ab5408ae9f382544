//! SUBSCRIBE (§3.8): a client asks for messages matching one or more topic filters.

use bytes::{BufMut, BytesMut};

use crate::properties::Context;
use crate::wire::{Reader, put_string};
use crate::{
    DecodeError, EncodeError, PacketId, PacketType, Properties, ProtocolVersion, QoS, TopicFilter,
};

/// A SUBSCRIBE packet (§3.8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// The Packet Identifier (§3.8.2).
    pub packet_id: PacketId,
    /// SUBSCRIBE properties (v5, §3.8.2.1): at most one Subscription Identifier, User Properties.
    pub properties: Properties,
    /// The topic filters and their options, at least one ([MQTT-3.8.3-2]).
    pub subscriptions: Vec<Subscription>,
}

/// One topic filter of a SUBSCRIBE with its options (§3.8.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// The Topic Filter.
    pub filter: TopicFilter,
    /// The Subscription Options.
    pub options: SubscriptionOptions,
}

/// The Subscription Options byte (§3.8.3.1). v3.1.1 has only the QoS: the other fields are not sent on a
/// v3.1.1 connection and decode as their defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SubscriptionOptions {
    /// Maximum QoS (v3.1.1: Requested QoS).
    pub qos: QoS,
    /// No Local (v5): do not send the client its own messages. Not allowed on shared subscriptions
    /// ([MQTT-3.8.3-4]).
    pub no_local: bool,
    /// Retain As Published (v5): keep the RETAIN flag of forwarded messages.
    pub retain_as_published: bool,
    /// Retain Handling (v5): when retained messages are sent.
    pub retain_handling: RetainHandling,
}

/// When the server sends retained messages for a new subscription (§3.8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RetainHandling {
    /// 0: at the time of the subscribe.
    #[default]
    SendAtSubscribe,
    /// 1: at subscribe, only if the subscription does not already exist.
    SendAtSubscribeIfNew,
    /// 2: never.
    DoNotSend,
}

impl SubscriptionOptions {
    fn decode(
        byte: u8,
        filter: &TopicFilter,
        version: ProtocolVersion,
    ) -> Result<Self, DecodeError> {
        let reserved = match version {
            ProtocolVersion::V311 => 0xFC, // v3.1.1 [MQTT-3.8.3-4]
            ProtocolVersion::V5 => 0xC0,   // [MQTT-3.8.3-5]
        };
        if byte & reserved != 0 {
            return Err(DecodeError::SubscriptionOptionsReserved);
        }
        // §3.8.3.1: Maximum QoS 3 is a Protocol Error (v3.1.1: malformed).
        let qos = QoS::from_u8(byte & 0x03).ok_or(DecodeError::InvalidSubscriptionQos)?;
        let no_local = byte & 0x04 != 0;
        let retain_as_published = byte & 0x08 != 0;
        let retain_handling = match (byte >> 4) & 0x03 {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendAtSubscribeIfNew,
            2 => RetainHandling::DoNotSend,
            _ => return Err(DecodeError::InvalidRetainHandling), // §3.8.3.1
        };
        if no_local && filter.share_name().is_some() {
            return Err(DecodeError::NoLocalOnSharedSubscription); // [MQTT-3.8.3-4]
        }
        Ok(Self { qos, no_local, retain_as_published, retain_handling })
    }

    fn to_byte(self, version: ProtocolVersion) -> u8 {
        let qos = self.qos.to_u8();
        match version {
            ProtocolVersion::V311 => qos,
            ProtocolVersion::V5 => {
                let retain_handling = match self.retain_handling {
                    RetainHandling::SendAtSubscribe => 0,
                    RetainHandling::SendAtSubscribeIfNew => 1,
                    RetainHandling::DoNotSend => 2,
                };
                qos | (u8::from(self.no_local) << 2)
                    | (u8::from(self.retain_as_published) << 3)
                    | (retain_handling << 4)
            }
        }
    }
}

impl Subscribe {
    pub(crate) fn decode(mut r: Reader, version: ProtocolVersion) -> Result<Self, DecodeError> {
        let packet_id = PacketId::new(r.u16("packet identifier")?)
            .ok_or(DecodeError::ZeroPacketId(PacketType::Subscribe))?;
        let properties = match version {
            ProtocolVersion::V311 => Properties::default(),
            ProtocolVersion::V5 => {
                Properties::decode(&mut r, Context::Packet(PacketType::Subscribe))?
            }
        };
        let mut subscriptions = Vec::new();
        while !r.is_empty() {
            let filter = TopicFilter::from_mqtt_string(r.string("topic filter")?)
                .map_err(DecodeError::InvalidTopicFilter)?;
            let options =
                SubscriptionOptions::decode(r.u8("subscription options")?, &filter, version)?;
            subscriptions.push(Subscription { filter, options });
        }
        if subscriptions.is_empty() {
            return Err(DecodeError::NoTopicFilters(PacketType::Subscribe)); // [MQTT-3.8.3-2]
        }
        Ok(Self { packet_id, properties, subscriptions })
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        if self.subscriptions.is_empty() {
            return Err(EncodeError::NoTopicFilters(PacketType::Subscribe));
        }
        let mut len = 2;
        if version == ProtocolVersion::V5 {
            len +=
                self.properties.encoded_len_with_prefix(Context::Packet(PacketType::Subscribe))?;
        }
        for subscription in &self.subscriptions {
            len = len
                .checked_add(2 + subscription.filter.as_str().len() + 1)
                .ok_or(EncodeError::PacketTooLarge(usize::MAX))?;
        }
        Ok(len)
    }

    pub(crate) fn write_body(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        buf.put_u16(self.packet_id.get());
        if version == ProtocolVersion::V5 {
            self.properties.write_in(Context::Packet(PacketType::Subscribe), buf);
        }
        for subscription in &self.subscriptions {
            put_string(buf, subscription.filter.as_mqtt_string());
            buf.put_u8(subscription.options.to_byte(version));
        }
    }
}
