//! The errors a device sees: a bad configuration, a refusal it must not retry, a stopped task.

use std::time::Duration;

use mqtt_codec::ReasonCode;

/// A [`DeviceConfig`](crate::DeviceConfig) that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The device id is not a valid MQTT client identifier or topic level.
    #[error("invalid device id {0:?}")]
    DeviceId(String),
    /// The keep-alive interval is over 65,535 s.
    #[error("keep-alive {0:?} is longer than 65,535 s")]
    KeepAlive(Duration),
    /// The session expiry is over `u32::MAX` seconds.
    #[error("session expiry {0:?} is longer than 4,294,967,295 s")]
    SessionExpiry(Duration),
}

/// Why a device task stopped other than by [`DeviceHandle::shutdown`](crate::DeviceHandle::shutdown).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The server refused the CONNECT for a reason that retrying cannot fix: bad credentials,
    /// not authorized (unknown, inactive or suspended device), banned, invalid client id,
    /// unsupported protocol version. MQTT 3.1.1 return codes are given as their MQTT 5 reason.
    #[error("the server refused the connection: {0:?}")]
    Refused(ReasonCode),
}

/// The device task has stopped: nothing more can be sent through this handle.
#[derive(Debug, thiserror::Error)]
#[error("the device task has stopped")]
pub struct Stopped;
