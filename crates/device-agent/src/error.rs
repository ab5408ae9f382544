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
    /// A subscription is not a valid topic filter below `devices/{id}/`.
    #[error("invalid subscription {0:?}: a topic filter below devices/{{id}}/ such as commands/#")]
    Subscription(String),
    /// A TLS file of [`TlsOptions`](crate::TlsOptions) (CA certificates, client certificate chain
    /// or key, or the system CA bundle when no CA file is given) cannot be read or used.
    #[error("cannot use TLS file {path}: {reason}")]
    TlsFile {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The TLS server name (the host unless [`TlsOptions::server_name`](crate::TlsOptions) says
    /// otherwise) is neither a DNS name nor an IP address.
    #[error("invalid TLS server name {0:?}")]
    TlsServerName(String),
    /// The WebSocket URL made of the host, port and [`Transport::WebSocket`](crate::Transport)
    /// path is not valid (the path must start with `/`).
    #[error("invalid WebSocket URL {0:?}")]
    WebSocketUrl(String),
    /// A client certificate given to
    /// [`DeviceHandle::set_client_certificate`](crate::DeviceHandle::set_client_certificate) is
    /// unusable, or the device does not connect over TLS.
    #[error("cannot use the client certificate: {0}")]
    ClientCertificate(String),
    /// The offline journal cannot be opened (its directory cannot be created or read, or another
    /// process holds it).
    #[error("cannot open the offline journal: {0}")]
    Journal(String),
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

/// Why new login material could not be handed to the device task.
#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    /// The material is unusable (see [`ConfigError::ClientCertificate`]).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The task has ended.
    #[error(transparent)]
    Stopped(#[from] Stopped),
}
