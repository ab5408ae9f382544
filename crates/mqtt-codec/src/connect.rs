//! CONNECT (§3.1): the first packet a client sends, which also fixes the protocol version.

use bytes::{BufMut, Bytes, BytesMut};

use crate::properties::Context;
use crate::string::MAX_FIELD_LEN;
use crate::wire::{Reader, put_binary, put_string};
use crate::{
    ClientId, DecodeError, EncodeError, MqttString, PacketType, Properties, ProtocolVersion, QoS,
    TopicName,
};

const PROTOCOL_NAME: &[u8] = b"MQTT";

/// A CONNECT packet (§3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// The protocol version (Protocol Level, §3.1.2.2). Encoding a CONNECT always uses this version.
    pub protocol_version: ProtocolVersion,
    /// Clean Start (v5, §3.1.2.4) or Clean Session (v3.1.1, §3.1.2.4).
    pub clean_start: bool,
    /// Keep Alive in seconds; 0 turns the mechanism off (§3.1.2.10).
    pub keep_alive: u16,
    /// CONNECT properties (v5, §3.1.2.11).
    pub properties: Properties,
    /// The Client Identifier (§3.1.3.1); empty asks the server to assign one.
    pub client_id: ClientId,
    /// The Will Message, if any (§3.1.2.5, §3.1.3.2 to §3.1.3.4).
    pub will: Option<Will>,
    /// The User Name (§3.1.3.5).
    pub username: Option<MqttString>,
    /// The Password (§3.1.3.6), binary data of at most 65,535 bytes. In v3.1.1 it requires a user name
    /// ([MQTT-3.1.2-22]).
    pub password: Option<Bytes>,
}

/// The Will Message of a CONNECT (§3.1.2.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    /// The Will Topic (§3.1.3.3).
    pub topic: TopicName,
    /// The Will Payload (§3.1.3.4), at most 65,535 bytes.
    pub payload: Bytes,
    /// The Will QoS (§3.1.2.6).
    pub qos: QoS,
    /// The Will Retain flag (§3.1.2.7).
    pub retain: bool,
    /// The Will Properties (v5, §3.1.3.2).
    pub properties: Properties,
}

impl Connect {
    /// A CONNECT for `client_id` with a clean start, no will and no credentials.
    #[must_use]
    pub fn new(protocol_version: ProtocolVersion, client_id: ClientId, keep_alive: u16) -> Self {
        Self {
            protocol_version,
            clean_start: true,
            keep_alive,
            properties: Properties::default(),
            client_id,
            will: None,
            username: None,
            password: None,
        }
    }

    pub(crate) fn decode(mut r: Reader) -> Result<Self, DecodeError> {
        // [MQTT-3.1.2-1]: the protocol name is "MQTT"; a server may answer 0x84 otherwise.
        if r.binary("protocol name")? != PROTOCOL_NAME {
            return Err(DecodeError::InvalidProtocolName);
        }
        let protocol_version = match r.u8("protocol level")? {
            4 => ProtocolVersion::V311,
            5 => ProtocolVersion::V5,
            level => return Err(DecodeError::UnsupportedProtocolVersion(level)),
        };
        let v5 = protocol_version == ProtocolVersion::V5;
        let flags = r.u8("connect flags")?;
        if flags & 0x01 != 0 {
            return Err(DecodeError::ConnectReservedFlag); // [MQTT-3.1.2-3]
        }
        let clean_start = flags & 0x02 != 0;
        let will_flag = flags & 0x04 != 0;
        let will_qos = (flags >> 3) & 0x03;
        let will_retain = flags & 0x20 != 0;
        let password_flag = flags & 0x40 != 0;
        let username_flag = flags & 0x80 != 0;
        // [MQTT-3.1.2-11], [MQTT-3.1.2-13]: without a will, Will QoS and Will Retain are 0.
        if !will_flag && (will_qos != 0 || will_retain) {
            return Err(DecodeError::InvalidWillFlags);
        }
        // [MQTT-3.1.2-12] (v3.1.1 [MQTT-3.1.2-14]): Will QoS 3 is malformed.
        let will_qos = QoS::from_u8(will_qos).ok_or(DecodeError::InvalidWillFlags)?;
        if !v5 && password_flag && !username_flag {
            return Err(DecodeError::PasswordWithoutUsername); // v3.1.1 [MQTT-3.1.2-22]
        }
        let keep_alive = r.u16("keep alive")?;
        let properties = if v5 {
            Properties::decode(&mut r, Context::Packet(PacketType::Connect))?
        } else {
            Properties::default()
        };
        let client_id = ClientId::from(r.string("client identifier")?);
        let will = if will_flag {
            let properties =
                if v5 { Properties::decode(&mut r, Context::Will)? } else { Properties::default() };
            let topic = TopicName::from_mqtt_string(r.string("will topic")?)
                .map_err(DecodeError::InvalidTopicName)?;
            let payload = r.binary("will payload")?;
            Some(Will { topic, payload, qos: will_qos, retain: will_retain, properties })
        } else {
            None
        };
        let username = if username_flag { Some(r.string("user name")?) } else { None };
        let password = if password_flag { Some(r.binary("password")?) } else { None };
        r.finish()?;
        Ok(Self {
            protocol_version,
            clean_start,
            keep_alive,
            properties,
            client_id,
            will,
            username,
            password,
        })
    }

    fn v5(&self) -> bool {
        self.protocol_version == ProtocolVersion::V5
    }

    pub(crate) fn body_len(&self) -> Result<usize, EncodeError> {
        if !self.v5() && self.password.is_some() && self.username.is_none() {
            return Err(EncodeError::PasswordWithoutUsername);
        }
        // Protocol name, level, flags, keep alive.
        let mut len = 2 + PROTOCOL_NAME.len() + 1 + 1 + 2;
        if self.v5() {
            len += self.properties.encoded_len_with_prefix(Context::Packet(PacketType::Connect))?;
        }
        len += 2 + self.client_id.as_str().len();
        if let Some(will) = &self.will {
            if self.v5() {
                len += will.properties.encoded_len_with_prefix(Context::Will)?;
            }
            if will.payload.len() > MAX_FIELD_LEN {
                return Err(EncodeError::BinaryTooLong("will payload"));
            }
            len += 2 + will.topic.as_str().len() + 2 + will.payload.len();
        }
        if let Some(username) = &self.username {
            len += 2 + username.len();
        }
        if let Some(password) = &self.password {
            if password.len() > MAX_FIELD_LEN {
                return Err(EncodeError::BinaryTooLong("password"));
            }
            len += 2 + password.len();
        }
        Ok(len)
    }

    fn flags(&self) -> u8 {
        let mut flags = 0;
        if self.clean_start {
            flags |= 0x02;
        }
        if let Some(will) = &self.will {
            flags |= 0x04 | (will.qos.to_u8() << 3);
            if will.retain {
                flags |= 0x20;
            }
        }
        if self.password.is_some() {
            flags |= 0x40;
        }
        if self.username.is_some() {
            flags |= 0x80;
        }
        flags
    }

    pub(crate) fn write_body(&self, buf: &mut BytesMut) {
        put_binary(buf, PROTOCOL_NAME);
        buf.put_u8(self.protocol_version.level());
        buf.put_u8(self.flags());
        buf.put_u16(self.keep_alive);
        if self.v5() {
            self.properties.write_in(Context::Packet(PacketType::Connect), buf);
        }
        put_string(buf, self.client_id.as_mqtt_string());
        if let Some(will) = &self.will {
            if self.v5() {
                will.properties.write_in(Context::Will, buf);
            }
            put_string(buf, will.topic.as_mqtt_string());
            put_binary(buf, &will.payload);
        }
        if let Some(username) = &self.username {
            put_string(buf, username);
        }
        if let Some(password) = &self.password {
            put_binary(buf, password);
        }
    }
}
