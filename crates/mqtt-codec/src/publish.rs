//! PUBLISH (§3.3): an application message, in either direction.

use bytes::{BufMut, Bytes, BytesMut};

use crate::properties::Context;
use crate::wire::{Reader, put_string};
use crate::{
    DecodeError, EncodeError, PacketId, PacketType, Properties, ProtocolVersion, QoS, TopicName,
};

/// How a PUBLISH is delivered: its QoS with, for QoS 1 and 2, the Packet Identifier and the DUP flag.
///
/// A QoS 0 message has neither, which makes the Malformed Packet of [MQTT-3.3.1-2] (DUP set on QoS 0)
/// impossible to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Delivery {
    /// QoS 0.
    AtMostOnce,
    /// QoS 1.
    AtLeastOnce {
        /// The Packet Identifier (§3.3.2.2).
        packet_id: PacketId,
        /// DUP: this may be a re-delivery (§3.3.1.1).
        dup: bool,
    },
    /// QoS 2.
    ExactlyOnce {
        /// The Packet Identifier (§3.3.2.2).
        packet_id: PacketId,
        /// DUP: this may be a re-delivery (§3.3.1.1).
        dup: bool,
    },
}

impl Delivery {
    /// The QoS level.
    #[must_use]
    pub fn qos(self) -> QoS {
        match self {
            Self::AtMostOnce => QoS::AtMostOnce,
            Self::AtLeastOnce { .. } => QoS::AtLeastOnce,
            Self::ExactlyOnce { .. } => QoS::ExactlyOnce,
        }
    }

    /// The Packet Identifier, for QoS 1 and 2.
    #[must_use]
    pub fn packet_id(self) -> Option<PacketId> {
        match self {
            Self::AtMostOnce => None,
            Self::AtLeastOnce { packet_id, .. } | Self::ExactlyOnce { packet_id, .. } => {
                Some(packet_id)
            }
        }
    }

    /// The DUP flag.
    #[must_use]
    pub fn dup(self) -> bool {
        match self {
            Self::AtMostOnce => false,
            Self::AtLeastOnce { dup, .. } | Self::ExactlyOnce { dup, .. } => dup,
        }
    }
}

/// A PUBLISH packet (§3.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// QoS, Packet Identifier and DUP.
    pub delivery: Delivery,
    /// RETAIN (§3.3.1.3).
    pub retain: bool,
    /// The Topic Name (§3.3.2.1). `None` is the zero-length name that only a v5 PUBLISH with a Topic Alias
    /// may carry.
    pub topic: Option<TopicName>,
    /// PUBLISH properties (v5, §3.3.2.3).
    pub properties: Properties,
    /// The payload (§3.3.3): whatever follows the variable header, possibly empty.
    pub payload: Bytes,
}

impl Publish {
    /// A QoS 0, non-retained PUBLISH of `payload` to `topic`.
    #[must_use]
    pub fn new(topic: TopicName, payload: Bytes) -> Self {
        Self {
            delivery: Delivery::AtMostOnce,
            retain: false,
            topic: Some(topic),
            properties: Properties::default(),
            payload,
        }
    }

    pub(crate) fn decode(
        flags: u8,
        mut r: Reader,
        version: ProtocolVersion,
    ) -> Result<Self, DecodeError> {
        let dup = flags & 0x08 != 0;
        let retain = flags & 0x01 != 0;
        let qos = QoS::from_u8((flags >> 1) & 0x03).ok_or(DecodeError::InvalidPublishQos)?; // [MQTT-3.3.1-4]
        if qos == QoS::AtMostOnce && dup {
            return Err(DecodeError::DupWithQos0); // [MQTT-3.3.1-2]
        }
        let topic = r.string("topic name")?;
        let topic = if topic.is_empty() && version == ProtocolVersion::V5 {
            None
        } else {
            // [MQTT-3.3.2-2], [MQTT-4.7.3-1].
            Some(TopicName::from_mqtt_string(topic).map_err(DecodeError::InvalidTopicName)?)
        };
        let delivery = match qos {
            QoS::AtMostOnce => Delivery::AtMostOnce,
            QoS::AtLeastOnce | QoS::ExactlyOnce => {
                let packet_id = PacketId::new(r.u16("packet identifier")?)
                    .ok_or(DecodeError::ZeroPacketId(PacketType::Publish))?; // [MQTT-2.2.1-3]
                if qos == QoS::AtLeastOnce {
                    Delivery::AtLeastOnce { packet_id, dup }
                } else {
                    Delivery::ExactlyOnce { packet_id, dup }
                }
            }
        };
        let properties = match version {
            ProtocolVersion::V311 => Properties::default(),
            ProtocolVersion::V5 => {
                Properties::decode(&mut r, Context::Packet(PacketType::Publish))?
            }
        };
        if topic.is_none() && properties.topic_alias.is_none() {
            return Err(DecodeError::EmptyTopicWithoutAlias); // §3.3.2.3.4
        }
        let payload = r.rest();
        Ok(Self { delivery, retain, topic, properties, payload })
    }

    pub(crate) fn flags(&self) -> u8 {
        (u8::from(self.delivery.dup()) << 3)
            | (self.delivery.qos().to_u8() << 1)
            | u8::from(self.retain)
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        let topic_len = match (&self.topic, version) {
            (Some(topic), _) => topic.as_str().len(),
            (None, ProtocolVersion::V5) if self.properties.topic_alias.is_some() => 0,
            (None, _) => return Err(EncodeError::EmptyTopicWithoutAlias),
        };
        let mut len = 2 + topic_len;
        if self.delivery.packet_id().is_some() {
            len += 2;
        }
        if version == ProtocolVersion::V5 {
            len += self.properties.encoded_len_with_prefix(Context::Packet(PacketType::Publish))?;
        }
        len.checked_add(self.payload.len()).ok_or(EncodeError::PacketTooLarge(usize::MAX))
    }

    pub(crate) fn write_body(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        match &self.topic {
            Some(topic) => put_string(buf, topic.as_mqtt_string()),
            None => buf.put_u16(0),
        }
        if let Some(packet_id) = self.delivery.packet_id() {
            buf.put_u16(packet_id.get());
        }
        if version == ProtocolVersion::V5 {
            self.properties.write_in(Context::Packet(PacketType::Publish), buf);
        }
        buf.put_slice(&self.payload);
    }
}
