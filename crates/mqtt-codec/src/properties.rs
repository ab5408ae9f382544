//! MQTT 5 properties (§2.2.2): every property identifier of §2.2.2.2 with its data type, which packets may
//! carry it, and the rule that each appears at most once except User Property and (in PUBLISH)
//! Subscription Identifier.
//!
//! One [`Properties`] struct serves every packet; decoding rejects identifiers the packet type does not
//! allow (a Malformed Packet, §2.2.2.2) and encoding refuses them ([`EncodeError::PropertyNotAllowed`]).
//! Properties exist only in MQTT 5: on a v3.1.1 connection they are neither read nor written.

use std::num::{NonZeroU16, NonZeroU32};

use bytes::{BufMut, Bytes, BytesMut};

use crate::wire::{MAX_VAR_INT, Reader, put_binary, put_string, put_var_int, var_int_len};
use crate::{ClientId, DecodeError, EncodeError, MqttString, PacketType, QoS, TopicName};

/// The Payload Format Indicator (§3.3.2.3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PayloadFormat {
    /// 0: the payload is unspecified bytes.
    Unspecified,
    /// 1: the payload is UTF-8 encoded character data.
    Utf8,
}

/// The properties of a v5 packet or will (§2.2.2). Absent properties are `None` or empty.
///
/// Each field names its property identifier and the packets that may carry it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    /// 0x01 Payload Format Indicator: PUBLISH, will.
    pub payload_format_indicator: Option<PayloadFormat>,
    /// 0x02 Message Expiry Interval, seconds: PUBLISH, will.
    pub message_expiry_interval: Option<u32>,
    /// 0x03 Content Type: PUBLISH, will.
    pub content_type: Option<MqttString>,
    /// 0x08 Response Topic: PUBLISH, will. No wildcards ([MQTT-3.3.2-14]).
    pub response_topic: Option<TopicName>,
    /// 0x09 Correlation Data: PUBLISH, will.
    pub correlation_data: Option<Bytes>,
    /// 0x0B Subscription Identifier, 1 to 268,435,455: PUBLISH (repeatable), SUBSCRIBE (at most one).
    pub subscription_identifiers: Vec<NonZeroU32>,
    /// 0x11 Session Expiry Interval, seconds: CONNECT, CONNACK, DISCONNECT.
    pub session_expiry_interval: Option<u32>,
    /// 0x12 Assigned Client Identifier: CONNACK.
    pub assigned_client_identifier: Option<ClientId>,
    /// 0x13 Server Keep Alive, seconds: CONNACK.
    pub server_keep_alive: Option<u16>,
    /// 0x15 Authentication Method: CONNECT, CONNACK, AUTH.
    pub authentication_method: Option<MqttString>,
    /// 0x16 Authentication Data: CONNECT, CONNACK, AUTH; only with an Authentication Method.
    pub authentication_data: Option<Bytes>,
    /// 0x17 Request Problem Information: CONNECT.
    pub request_problem_information: Option<bool>,
    /// 0x18 Will Delay Interval, seconds: will.
    pub will_delay_interval: Option<u32>,
    /// 0x19 Request Response Information: CONNECT.
    pub request_response_information: Option<bool>,
    /// 0x1A Response Information: CONNACK.
    pub response_information: Option<MqttString>,
    /// 0x1C Server Reference: CONNACK, DISCONNECT.
    pub server_reference: Option<MqttString>,
    /// 0x1F Reason String: CONNACK, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK, UNSUBACK, DISCONNECT, AUTH.
    pub reason_string: Option<MqttString>,
    /// 0x21 Receive Maximum: CONNECT, CONNACK.
    pub receive_maximum: Option<NonZeroU16>,
    /// 0x22 Topic Alias Maximum: CONNECT, CONNACK.
    pub topic_alias_maximum: Option<u16>,
    /// 0x23 Topic Alias: PUBLISH.
    pub topic_alias: Option<NonZeroU16>,
    /// 0x24 Maximum QoS, 0 or 1 (absent means 2): CONNACK.
    pub maximum_qos: Option<QoS>,
    /// 0x25 Retain Available: CONNACK.
    pub retain_available: Option<bool>,
    /// 0x26 User Property, name and value pairs in order, repeatable: every packet with properties.
    pub user_properties: Vec<(MqttString, MqttString)>,
    /// 0x27 Maximum Packet Size: CONNECT, CONNACK.
    pub maximum_packet_size: Option<NonZeroU32>,
    /// 0x28 Wildcard Subscription Available: CONNACK.
    pub wildcard_subscription_available: Option<bool>,
    /// 0x29 Subscription Identifiers Available: CONNACK.
    pub subscription_identifiers_available: Option<bool>,
    /// 0x2A Shared Subscription Available: CONNACK.
    pub shared_subscription_available: Option<bool>,
}

/// Where a property list sits: in a packet's variable header or in a CONNECT's will.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Context {
    Packet(PacketType),
    Will,
}

impl Context {
    fn packet(self) -> PacketType {
        match self {
            Self::Packet(packet) => packet,
            Self::Will => PacketType::Connect,
        }
    }
}

const USER_PROPERTY: u8 = 0x26;
const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
const AUTHENTICATION_DATA: u8 = 0x16;

/// Whether property `id` may appear in `context` (the table of §2.2.2.2). Unknown identifiers never may.
fn allowed(id: u8, context: Context) -> bool {
    use PacketType::{
        Auth, ConnAck, Connect, Disconnect, PubAck, PubComp, PubRec, PubRel, Publish, SubAck,
        Subscribe, UnsubAck,
    };
    let packet = match context {
        Context::Will => return matches!(id, 0x01 | 0x02 | 0x03 | 0x08 | 0x09 | 0x18 | 0x26),
        Context::Packet(packet) => packet,
    };
    match id {
        0x01 | 0x02 | 0x03 | 0x08 | 0x09 | 0x23 => packet == Publish,
        0x0B => matches!(packet, Publish | Subscribe),
        0x11 => matches!(packet, Connect | ConnAck | Disconnect),
        0x12 | 0x13 | 0x1A | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => packet == ConnAck,
        0x15 | 0x16 => matches!(packet, Connect | ConnAck | Auth),
        0x17 | 0x19 | 0x21 | 0x22 | 0x27 if packet == Connect => true,
        0x21 | 0x22 | 0x27 => packet == ConnAck,
        0x1C => matches!(packet, ConnAck | Disconnect),
        0x1F => matches!(
            packet,
            ConnAck | PubAck | PubRec | PubRel | PubComp | SubAck | UnsubAck | Disconnect | Auth
        ),
        0x26 => packet.has_properties(),
        _ => false,
    }
}

/// Whether `id` is a property identifier MQTT 5 defines.
fn known(id: u8) -> bool {
    matches!(id, 0x01..=0x03 | 0x08 | 0x09 | 0x0B | 0x11..=0x13 | 0x15..=0x19 | 0x1A | 0x1C | 0x1F | 0x21..=0x2A)
}

/// A property value borrowed for encoding, by data type (§2.2.2.2).
enum Value<'a> {
    Byte(u8),
    TwoByte(u16),
    FourByte(u32),
    VarInt(u32),
    String(&'a MqttString),
    Binary(&'a [u8]),
    Pair(&'a MqttString, &'a MqttString),
}

impl Value<'_> {
    fn len(&self) -> usize {
        match self {
            Self::Byte(_) => 1,
            Self::TwoByte(_) => 2,
            Self::FourByte(_) => 4,
            Self::VarInt(value) => var_int_len(usize::try_from(*value).unwrap_or(usize::MAX)),
            Self::String(value) => 2 + value.len(),
            Self::Binary(value) => 2 + value.len(),
            Self::Pair(name, value) => 4 + name.len() + value.len(),
        }
    }

    fn write(&self, buf: &mut BytesMut) {
        match self {
            Self::Byte(value) => buf.put_u8(*value),
            Self::TwoByte(value) => buf.put_u16(*value),
            Self::FourByte(value) => buf.put_u32(*value),
            Self::VarInt(value) => put_var_int(buf, usize::try_from(*value).unwrap_or_default()),
            Self::String(value) => put_string(buf, value),
            Self::Binary(value) => put_binary(buf, value),
            Self::Pair(name, value) => {
                put_string(buf, name);
                put_string(buf, value);
            }
        }
    }
}

impl Properties {
    /// Whether no property is set.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Appends these properties as the property list of a v5 PUBLISH (length prefix included): the
    /// form in which a broker stores the properties of a message it must keep across restarts.
    ///
    /// # Errors
    ///
    /// When a property is not allowed in a PUBLISH or its value cannot be encoded.
    pub fn encode_publish(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        let len = self.encoded_len(Context::Packet(PacketType::Publish))?;
        self.write(len, buf);
        Ok(())
    }

    /// Reads a property list written by [`Properties::encode_publish`]: exactly one v5 PUBLISH
    /// property list, nothing after it.
    ///
    /// # Errors
    ///
    /// When `bytes` is not such a list.
    pub fn decode_publish(bytes: Bytes) -> Result<Self, DecodeError> {
        let mut reader = Reader::new(bytes, PacketType::Publish);
        let properties = Self::decode(&mut reader, Context::Packet(PacketType::Publish))?;
        reader.finish()?;
        Ok(properties)
    }

    /// Calls `f` with each property that is set, in identifier order.
    fn visit(
        &self,
        mut f: impl FnMut(u8, Value<'_>) -> Result<(), EncodeError>,
    ) -> Result<(), EncodeError> {
        let flag = |value: bool| Value::Byte(u8::from(value));
        if let Some(format) = self.payload_format_indicator {
            f(0x01, Value::Byte(u8::from(format == PayloadFormat::Utf8)))?;
        }
        if let Some(value) = self.message_expiry_interval {
            f(0x02, Value::FourByte(value))?;
        }
        if let Some(value) = &self.content_type {
            f(0x03, Value::String(value))?;
        }
        if let Some(value) = &self.response_topic {
            f(0x08, Value::String(value.as_mqtt_string()))?;
        }
        if let Some(value) = &self.correlation_data {
            f(0x09, Value::Binary(value))?;
        }
        for value in &self.subscription_identifiers {
            f(SUBSCRIPTION_IDENTIFIER, Value::VarInt(value.get()))?;
        }
        if let Some(value) = self.session_expiry_interval {
            f(0x11, Value::FourByte(value))?;
        }
        if let Some(value) = &self.assigned_client_identifier {
            f(0x12, Value::String(value.as_mqtt_string()))?;
        }
        if let Some(value) = self.server_keep_alive {
            f(0x13, Value::TwoByte(value))?;
        }
        if let Some(value) = &self.authentication_method {
            f(0x15, Value::String(value))?;
        }
        if let Some(value) = &self.authentication_data {
            f(AUTHENTICATION_DATA, Value::Binary(value))?;
        }
        if let Some(value) = self.request_problem_information {
            f(0x17, flag(value))?;
        }
        if let Some(value) = self.will_delay_interval {
            f(0x18, Value::FourByte(value))?;
        }
        if let Some(value) = self.request_response_information {
            f(0x19, flag(value))?;
        }
        if let Some(value) = &self.response_information {
            f(0x1A, Value::String(value))?;
        }
        if let Some(value) = &self.server_reference {
            f(0x1C, Value::String(value))?;
        }
        if let Some(value) = &self.reason_string {
            f(0x1F, Value::String(value))?;
        }
        if let Some(value) = self.receive_maximum {
            f(0x21, Value::TwoByte(value.get()))?;
        }
        if let Some(value) = self.topic_alias_maximum {
            f(0x22, Value::TwoByte(value))?;
        }
        if let Some(value) = self.topic_alias {
            f(0x23, Value::TwoByte(value.get()))?;
        }
        if let Some(value) = self.maximum_qos {
            f(0x24, Value::Byte(value.to_u8()))?;
        }
        if let Some(value) = self.retain_available {
            f(0x25, flag(value))?;
        }
        for (name, value) in &self.user_properties {
            f(USER_PROPERTY, Value::Pair(name, value))?;
        }
        if let Some(value) = self.maximum_packet_size {
            f(0x27, Value::FourByte(value.get()))?;
        }
        if let Some(value) = self.wildcard_subscription_available {
            f(0x28, flag(value))?;
        }
        if let Some(value) = self.subscription_identifiers_available {
            f(0x29, flag(value))?;
        }
        if let Some(value) = self.shared_subscription_available {
            f(0x2A, flag(value))?;
        }
        Ok(())
    }

    /// The length of the encoded property list, without its length prefix, after checking that every
    /// property is allowed in `context` and has an encodable value.
    pub(crate) fn encoded_len(&self, context: Context) -> Result<usize, EncodeError> {
        if self.maximum_qos == Some(QoS::ExactlyOnce) {
            return Err(EncodeError::InvalidPropertyValue(0x24));
        }
        if self.authentication_data.is_some() && self.authentication_method.is_none() {
            return Err(EncodeError::InvalidPropertyValue(AUTHENTICATION_DATA));
        }
        if context == Context::Packet(PacketType::Subscribe)
            && self.subscription_identifiers.len() > 1
        {
            return Err(EncodeError::DuplicateProperty(SUBSCRIPTION_IDENTIFIER));
        }
        let mut total: usize = 0;
        self.visit(|id, value| {
            if !allowed(id, context) {
                return Err(EncodeError::PropertyNotAllowed { id, packet: context.packet() });
            }
            match value {
                Value::VarInt(v) if v > MAX_VAR_INT => {
                    return Err(EncodeError::InvalidPropertyValue(id));
                }
                Value::Binary(v) if v.len() > crate::string::MAX_FIELD_LEN => {
                    return Err(EncodeError::BinaryTooLong("property"));
                }
                _ => {}
            }
            total = total.checked_add(1 + value.len()).ok_or(EncodeError::PropertiesTooLong)?;
            Ok(())
        })?;
        if total > MAX_VAR_INT as usize {
            return Err(EncodeError::PropertiesTooLong);
        }
        Ok(total)
    }

    /// The length of the property list with its length prefix.
    pub(crate) fn encoded_len_with_prefix(&self, context: Context) -> Result<usize, EncodeError> {
        let len = self.encoded_len(context)?;
        Ok(var_int_len(len) + len)
    }

    /// Writes the length prefix and the properties. `len` is what [`Self::encoded_len`] returned.
    pub(crate) fn write(&self, len: usize, buf: &mut BytesMut) {
        put_var_int(buf, len);
        // The closure never fails, so neither does the visit.
        let _ = self.visit(|id, value| {
            buf.put_u8(id);
            value.write(buf);
            Ok(())
        });
    }

    /// Writes the length prefix and the properties, which [`Self::encoded_len`] has accepted for
    /// `context`.
    pub(crate) fn write_in(&self, context: Context, buf: &mut BytesMut) {
        let len = self.encoded_len(context).unwrap_or_default();
        self.write(len, buf);
    }

    /// Reads a property list (length prefix included) allowed in `context`.
    pub(crate) fn decode(reader: &mut Reader, context: Context) -> Result<Self, DecodeError> {
        let len = reader.var_int("property length")?;
        let bytes = reader.take(usize::try_from(len).unwrap_or(usize::MAX), "properties")?;
        let mut r = Reader::new(bytes, reader.packet());
        let mut props = Self::default();
        let mut seen: u64 = 0;
        while !r.is_empty() {
            // Property identifiers are Variable Byte Integers, all one byte long in MQTT 5.0 (§2.2.2.2).
            let raw = r.var_int("property identifier")?;
            let id = u8::try_from(raw).map_err(|_| DecodeError::UnknownProperty(raw))?;
            if !known(id) {
                return Err(DecodeError::UnknownProperty(raw));
            }
            if !allowed(id, context) {
                return Err(DecodeError::PropertyNotAllowed { id, packet: context.packet() });
            }
            let repeatable = id == USER_PROPERTY
                || (id == SUBSCRIPTION_IDENTIFIER
                    && context == Context::Packet(PacketType::Publish));
            let bit = 1u64 << id;
            if seen & bit != 0 && !repeatable {
                return Err(DecodeError::DuplicateProperty(id));
            }
            seen |= bit;
            props.decode_value(id, &mut r)?;
        }
        if props.authentication_data.is_some() && props.authentication_method.is_none() {
            // §3.1.2.11.10, §3.2.2.3.18, §3.15.2.2.3.
            return Err(DecodeError::AuthDataWithoutMethod);
        }
        Ok(props)
    }

    fn decode_value(&mut self, id: u8, r: &mut Reader) -> Result<(), DecodeError> {
        let invalid = || DecodeError::InvalidPropertyValue(id);
        let flag = |r: &mut Reader| match r.u8("property value")? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(invalid()),
        };
        match id {
            0x01 => {
                self.payload_format_indicator =
                    Some(if flag(r)? { PayloadFormat::Utf8 } else { PayloadFormat::Unspecified });
            }
            0x02 => self.message_expiry_interval = Some(r.u32("message expiry interval")?),
            0x03 => self.content_type = Some(r.string("content type")?),
            0x08 => {
                let topic = r.string("response topic")?;
                self.response_topic = Some(
                    TopicName::from_mqtt_string(topic).map_err(DecodeError::InvalidTopicName)?,
                );
            }
            0x09 => self.correlation_data = Some(r.binary("correlation data")?),
            0x0B => {
                // §3.8.2.1.2: a Subscription Identifier of 0 is a Protocol Error.
                let value = r.var_int("subscription identifier")?;
                self.subscription_identifiers.push(NonZeroU32::new(value).ok_or_else(invalid)?);
            }
            0x11 => self.session_expiry_interval = Some(r.u32("session expiry interval")?),
            0x12 => {
                self.assigned_client_identifier =
                    Some(ClientId::from(r.string("assigned client identifier")?));
            }
            0x13 => self.server_keep_alive = Some(r.u16("server keep alive")?),
            0x15 => self.authentication_method = Some(r.string("authentication method")?),
            0x16 => self.authentication_data = Some(r.binary("authentication data")?),
            0x17 => self.request_problem_information = Some(flag(r)?),
            0x18 => self.will_delay_interval = Some(r.u32("will delay interval")?),
            0x19 => self.request_response_information = Some(flag(r)?),
            0x1A => self.response_information = Some(r.string("response information")?),
            0x1C => self.server_reference = Some(r.string("server reference")?),
            0x1F => self.reason_string = Some(r.string("reason string")?),
            // §3.1.2.11.3: a Receive Maximum of 0 is a Protocol Error.
            0x21 => {
                self.receive_maximum =
                    Some(NonZeroU16::new(r.u16("receive maximum")?).ok_or_else(invalid)?);
            }
            0x22 => self.topic_alias_maximum = Some(r.u16("topic alias maximum")?),
            // [MQTT-3.3.2-8]: a Topic Alias of 0 is a Protocol Error.
            0x23 => {
                self.topic_alias = Some(NonZeroU16::new(r.u16("topic alias")?).ok_or_else(invalid)?)
            }
            // §3.2.2.3.4: Maximum QoS other than 0 or 1 is a Protocol Error.
            0x24 => {
                self.maximum_qos = Some(if flag(r)? { QoS::AtLeastOnce } else { QoS::AtMostOnce });
            }
            0x25 => self.retain_available = Some(flag(r)?),
            0x26 => {
                let name = r.string("user property name")?;
                let value = r.string("user property value")?;
                self.user_properties.push((name, value));
            }
            // §3.1.2.11.4: a Maximum Packet Size of 0 is a Protocol Error.
            0x27 => {
                self.maximum_packet_size =
                    Some(NonZeroU32::new(r.u32("maximum packet size")?).ok_or_else(invalid)?);
            }
            0x28 => self.wildcard_subscription_available = Some(flag(r)?),
            0x29 => self.subscription_identifiers_available = Some(flag(r)?),
            0x2A => self.shared_subscription_available = Some(flag(r)?),
            _ => return Err(DecodeError::UnknownProperty(u32::from(id))),
        }
        Ok(())
    }
}
