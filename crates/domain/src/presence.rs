//! Device presence: whether a device is connected to the MQTT gateway, since when, from where, and
//! why its last connection ended.
//!
//! Presence is observed, not decided by an operator: it is recorded by the gateway as connections
//! come and go, and it is not audited.

use crate::{DeviceId, Timestamp};

/// What the gateway last saw of a device's connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    /// The device.
    pub device_id: DeviceId,
    /// Whether a connection of the device is open now.
    pub connected: bool,
    /// When its current (or last) connection was accepted.
    pub connected_at: Option<Timestamp>,
    /// When its last connection ended, if one has ended.
    pub disconnected_at: Option<Timestamp>,
    /// The remote address of its current (or last) connection (`ip:port`).
    pub remote_addr: Option<String>,
    /// The MQTT version of its current (or last) connection: `3.1.1` or `5`.
    pub protocol: Option<String>,
    /// Why its last connection ended: `clean`, `keep_alive_timeout`, `taken_over`, `revoked`,
    /// `server_shutdown`, `server_restart`, `protocol_error`, `connection_lost`, `io_error`, …
    pub last_disconnect_reason: Option<String>,
}

/// The reason recorded for connections that were open when the server stopped without recording
/// their end (it is set at the next start).
pub const SERVER_RESTART: &str = "server_restart";
