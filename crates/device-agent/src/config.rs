//! What a device needs to know to reach Herd, and its validated form.

use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use mqtt_codec::{ClientId, MqttString, ProtocolVersion, TopicFilter, TopicName};

use crate::backoff::Backoff;
use crate::error::ConfigError;
use crate::transport::{Dialer, Transport};

/// The MQTT version a device speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// MQTT 3.1.1.
    V311,
    /// MQTT 5.0.
    V5,
}

/// An on-disk journal of outgoing messages ([`DeviceConfig::offline_journal`]).
///
/// Every message is written to the journal before it is sent and removed once the server
/// acknowledged it; at start the device sends again what the journal holds (a message sent just
/// before a crash may then arrive twice: QoS 1 is at least once). When the journal's live
/// messages would exceed `max_bytes`, the oldest are dropped, as in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfflineJournal {
    /// Its directory, created if missing; one device per directory.
    pub dir: PathBuf,
    /// The most bytes of unacknowledged messages kept.
    pub max_bytes: u64,
    /// Whether every write is flushed to the disk (`fsync`) before it counts, so that messages
    /// survive a power loss too, not only a crash of the process.
    pub sync: bool,
}

/// How a device connects and behaves while disconnected.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    /// The server's host name or address.
    pub host: String,
    /// The server's port for [`DeviceConfig::transport`] (MQTT 1883, TLS 8883, WebSocket: the
    /// HTTP listener's).
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
    /// How many messages wait while the device cannot publish them; beyond, the oldest is dropped
    /// and counted in [`Stats::dropped`](crate::Stats::dropped).
    pub offline_buffer_capacity: NonZeroUsize,
    /// Keep outgoing messages on disk too until the server acknowledges them, so that they
    /// survive a restart or crash of the device's process. `None`: in memory only.
    pub offline_journal: Option<OfflineJournal>,
    /// The waits between reconnection attempts.
    pub backoff: Backoff,
    /// The local address connections are made from (port chosen by the system), for example one
    /// of several `127.0.0.x` addresses when one address runs out of ephemeral ports. `None`: the
    /// system chooses.
    pub local_address: Option<IpAddr>,
    /// Topic filters below `devices/{id}/` the device subscribes to at QoS 1, for example
    /// `commands/#`; messages arrive on the [`Inbox`](crate::Inbox) of
    /// [`Device::spawn_with_inbox`](crate::Device::spawn_with_inbox).
    pub subscriptions: Vec<String>,
    /// How the device reaches the server: TCP, TLS, or WebSocket (over TCP or TLS); [`port`] is
    /// the server's port for that transport. TLS files are read once, by
    /// [`Device::spawn`](crate::Device::spawn).
    ///
    /// [`port`]: DeviceConfig::port
    pub transport: Transport,
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
            offline_journal: None,
            backoff: Backoff::default(),
            local_address: None,
            subscriptions: Vec::new(),
            transport: Transport::Tcp,
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
    /// `devices/{id}/`.
    pub(crate) topic_prefix: String,
    /// The topics of [`Channel::Telemetry`](crate::Channel), `Events`, `Facts` and `Heartbeat`.
    pub(crate) topics: [TopicName; 4],
    pub(crate) subscriptions: Vec<TopicFilter>,
    pub(crate) offline_buffer_capacity: NonZeroUsize,
    pub(crate) offline_journal: Option<OfflineJournal>,
    pub(crate) backoff: Backoff,
    pub(crate) local_address: Option<IpAddr>,
    /// The transport checked, its TLS files loaded.
    pub(crate) transport: Dialer,
}

impl Validated {
    pub(crate) fn new(config: DeviceConfig) -> Result<Self, ConfigError> {
        let client_id = ClientId::new(config.device_id.as_str())
            .map_err(|_| ConfigError::DeviceId(config.device_id.clone()))?;
        let username = MqttString::new(config.device_id.as_str())
            .map_err(|_| ConfigError::DeviceId(config.device_id.clone()))?;
        let topic_prefix = format!("devices/{}/", config.device_id);
        let topic = |suffix: &str| {
            TopicName::new(format!("{topic_prefix}{suffix}"))
                .map_err(|_| ConfigError::DeviceId(config.device_id.clone()))
        };
        let topics = [topic("telemetry")?, topic("events")?, topic("facts")?, topic("heartbeat")?];
        let subscriptions = config
            .subscriptions
            .iter()
            .map(|f| {
                TopicFilter::new(format!("{topic_prefix}{f}"))
                    .ok()
                    .filter(|_| !f.is_empty() && !f.starts_with('/'))
                    .ok_or_else(|| ConfigError::Subscription(f.clone()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let keep_alive_secs = u16::try_from(config.keep_alive.as_secs())
            .map_err(|_| ConfigError::KeepAlive(config.keep_alive))?;
        let session_expiry_secs = u32::try_from(config.session_expiry.as_secs())
            .map_err(|_| ConfigError::SessionExpiry(config.session_expiry))?;
        let transport = Dialer::new(&config.transport, &config.host, config.port)?;
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
            topic_prefix,
            topics,
            subscriptions,
            offline_buffer_capacity: config.offline_buffer_capacity,
            offline_journal: config.offline_journal,
            backoff: config.backoff,
            local_address: config.local_address,
            transport,
        })
    }
}
