//! Connection events: what the server learns of clients coming and going ([`ConnectionEvent`]),
//! through the receiver of [`BrokerHandle::connection_events`](crate::BrokerHandle::connection_events).
//!
//! # Overload policy
//!
//! Events are sent with `try_send` by the connection tasks: the broker and its connections never wait
//! for the consumer. When the channel is full the event is dropped and counted in
//! `mqtt_presence_events_dropped_total`; a consumer that records presence can then be wrong about a
//! client until its next connect or disconnect.
//!
//! # Order
//!
//! The events of one client identifier arrive in order: a connection sends `Disconnected` before it
//! hands its session back, and the connection that takes the session over sends `Connected` only once
//! it holds it. A connection refused at CONNECT sends nothing.

use std::net::SocketAddr;

use mqtt_codec::{ClientId, ProtocolVersion, ReasonCode};

/// A client connected or disconnected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionEvent {
    /// The client was accepted (CONNACK 0x00 queued) and holds its session.
    Connected {
        /// Its client identifier.
        client_id: ClientId,
        /// Its remote address, when the transport has one.
        peer: Option<SocketAddr>,
        /// The MQTT version of its CONNECT.
        protocol: ProtocolVersion,
    },
    /// The connection of a client that had connected has ended.
    Disconnected {
        /// Its client identifier.
        client_id: ClientId,
        /// Why it ended.
        reason: DisconnectReason,
    },
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The client sent DISCONNECT.
    Clean,
    /// Nothing arrived within 1.5 times the keep-alive interval.
    KeepAliveTimeout,
    /// Another connection with the same client identifier took the session over.
    TakenOver,
    /// The server closed it with this reason ([`BrokerHandle::disconnect_client`](crate::BrokerHandle::disconnect_client)).
    Administrative(ReasonCode),
    /// The server is shutting down.
    ServerShutdown,
    /// The client broke the protocol or sent a malformed packet.
    ProtocolError,
    /// The socket closed without a DISCONNECT.
    ConnectionLost,
    /// Reading or writing the socket failed.
    IoError,
    /// Anything else (the broker task stopped, a packet could not be encoded).
    Error,
}

impl DisconnectReason {
    /// A stable snake_case label for logs, metrics and records: `clean`, `keep_alive_timeout`,
    /// `taken_over`, `administrative`, `server_shutdown`, `protocol_error`, `connection_lost`,
    /// `io_error`, `error`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Clean => "clean",
            Self::KeepAliveTimeout => "keep_alive_timeout",
            Self::TakenOver => "taken_over",
            Self::Administrative(_) => "administrative",
            Self::ServerShutdown => "server_shutdown",
            Self::ProtocolError => "protocol_error",
            Self::ConnectionLost => "connection_lost",
            Self::IoError => "io_error",
            Self::Error => "error",
        }
    }
}

/// The label of a protocol version as recorded: `3.1.1` or `5`.
#[must_use]
pub fn protocol_label(version: ProtocolVersion) -> &'static str {
    match version {
        ProtocolVersion::V311 => "3.1.1",
        ProtocolVersion::V5 => "5",
    }
}
