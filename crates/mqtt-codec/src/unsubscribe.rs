//! UNSUBSCRIBE (§3.10): a client drops one or more subscriptions.

use bytes::{BufMut, BytesMut};

use crate::properties::Context;
use crate::wire::{Reader, put_string};
use crate::{
    DecodeError, EncodeError, PacketId, PacketType, Properties, ProtocolVersion, TopicFilter,
};

/// An UNSUBSCRIBE packet (§3.10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    /// The Packet Identifier (§3.10.2).
    pub packet_id: PacketId,
    /// UNSUBSCRIBE properties (v5, §3.10.2.1): User Properties.
    pub properties: Properties,
    /// The topic filters to drop, at least one ([MQTT-3.10.3-2]).
    pub filters: Vec<TopicFilter>,
}

impl Unsubscribe {
    pub(crate) fn decode(mut r: Reader, version: ProtocolVersion) -> Result<Self, DecodeError> {
        let packet_id = PacketId::new(r.u16("packet identifier")?)
            .ok_or(DecodeError::ZeroPacketId(PacketType::Unsubscribe))?;
        let properties = match version {
            ProtocolVersion::V311 => Properties::default(),
            ProtocolVersion::V5 => {
                Properties::decode(&mut r, Context::Packet(PacketType::Unsubscribe))?
            }
        };
        let mut filters = Vec::new();
        while !r.is_empty() {
            let filter = TopicFilter::from_mqtt_string(r.string("topic filter")?)
                .map_err(DecodeError::InvalidTopicFilter)?;
            filters.push(filter);
        }
        if filters.is_empty() {
            return Err(DecodeError::NoTopicFilters(PacketType::Unsubscribe)); // [MQTT-3.10.3-2]
        }
        Ok(Self { packet_id, properties, filters })
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        if self.filters.is_empty() {
            return Err(EncodeError::NoTopicFilters(PacketType::Unsubscribe));
        }
        let mut len = 2;
        if version == ProtocolVersion::V5 {
            len += self
                .properties
                .encoded_len_with_prefix(Context::Packet(PacketType::Unsubscribe))?;
        }
        for filter in &self.filters {
            len = len
                .checked_add(2 + filter.as_str().len())
                .ok_or(EncodeError::PacketTooLarge(usize::MAX))?;
        }
        Ok(len)
    }

    pub(crate) fn write_body(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        buf.put_u16(self.packet_id.get());
        if version == ProtocolVersion::V5 {
            self.properties.write_in(Context::Packet(PacketType::Unsubscribe), buf);
        }
        for filter in &self.filters {
            put_string(buf, filter.as_mqtt_string());
        }
    }
}
