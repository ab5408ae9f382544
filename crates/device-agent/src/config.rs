//! What a device needs to know to reach Herd, and its validated form.

use std::num::NonZeroUsize;
use std::time::Duration;

use bytes::Bytes;
use mqtt_codec::{ClientId, MqttString, ProtocolVersion, TopicName};

use crate::backoff::Backoff;
use crate::error::ConfigError;

/// The MQTT version a device speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// MQTT 3.1.1.
    V311,
    /// MQTT 5.0.
    V5,
}

/// How a device connects and behaves while disconnected.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    /// The server's host name or address.
    pub host: String,
    /// The server's MQTT (TCP) port.
    pub port: u16,
    /// The device id: the MQTT client identifier and user name.
    pub device_id: String,
    /// The device credential secret (`hdc_…`), sent as the MQTT password.
    pub token: String,
    /// The MQTT version.
    pub protocol: Protocol,
    /// The keep-alive interval, at most 65,535 s; a PINGREQ goes out at this period and the
    /// connection is given up when the previous one got no answer. Zero disables keep-alive.
    pub keep_alive: Duration,
    /// How long the server keeps the session after a disconnection (MQTT 5 Session Expiry
    /// Interval, whole seconds, at most `u32::MAX`). MQTT 3.1.1 has no such field: the server
    /// keeps a Clean Session 0 session for its own configured time.
    pub session_expiry: Duration,
    /// How many telemetry messages wait while the device cannot publish them; beyond, the oldest
    /// is dropped and counted in [`Stats::dropped`](crate::Stats::dropped).
    pub offline_buffer_capacity: NonZeroUsize,
    /// The waits between reconnection attempts.
    pub backoff: Backoff,
}

impl DeviceConfig {
    /// A configuration with defaults: MQTT 5, keep-alive 30 s, session expiry 1 h, 1,000 buffered
    /// messages, [`Backoff::default`].
    #[must_use]
    pub fn new(
        host: impl Into<String>,
        port: u16,
        device_id: impl Into<String>,
        token: impl Into<String>,
    ) -> Self {
        Self {
            host: host.into(),
            port,
            device_id: device_id.into(),
            token: token.into(),
            protocol: Protocol::V5,
            keep_alive: Duration::from_secs(30),
            session_expiry: Duration::from_secs(3_600),
            offline_buffer_capacity: NonZeroUsize::new(1_000).expect("1,000 is not zero"),
            backoff: Backoff::default(),
        }
    }
}

/// A [`DeviceConfig`] checked once, in the types the connection uses.
#[derive(Debug, Clone)]
pub(crate) struct Validated {
    pub(crate) address: (String, u16),
    pub(crate) client_id: ClientId,
    pub(crate) username: MqttString,
    pub(crate) password: Bytes,
    pub(crate) version: ProtocolVersion,
    pub(crate) keep_alive_secs: u16,
    pub(crate) session_expiry_secs: u32,
    pub(crate) telemetry_topic: TopicName,
    pub(crate) offline_buffer_capacity: NonZeroUsize,
    pub(crate) backoff: Backoff,
}

impl Validated {
    pub(crate) fn new(config: DeviceConfig) -> Result<Self, ConfigError> {
        let client_id = ClientId::new(config.device_id.as_str())
            .map_err(|_| ConfigError::DeviceId(config.device_id.clone()))?;
        let username = MqttString::new(config.device_id.as_str())
            .map_err(|_| ConfigError::DeviceId(config.device_id.clone()))?;
        let telemetry_topic = TopicName::new(format!("devices/{}/telemetry", config.device_id))
            .map_err(|_| ConfigError::DeviceId(config.device_id.clone()))?;
        let keep_alive_secs = u16::try_from(config.keep_alive.as_secs())
            .map_err(|_| ConfigError::KeepAlive(config.keep_alive))?;
        let session_expiry_secs = u32::try_from(config.session_expiry.as_secs())
            .map_err(|_| ConfigError::SessionExpiry(config.session_expiry))?;
        Ok(Self {
            address: (config.host, config.port),
            client_id,
            username,
            password: Bytes::from(config.token),
            version: match config.protocol {
                Protocol::V311 => ProtocolVersion::V311,
                Protocol::V5 => ProtocolVersion::V5,
            },
            keep_alive_secs,
            session_expiry_secs,
            telemetry_topic,
            offline_buffer_capacity: config.offline_buffer_capacity,
            backoff: config.backoff,
        })
    }
}
