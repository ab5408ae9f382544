//! The broker's error types: [`BrokerError`] for handle calls and [`ConnectionError`] for the end of a
//! connection.

use mqtt_codec::{DecodeError, EncodeError, ReasonCode};

/// Why a [`BrokerHandle`](crate::BrokerHandle) call failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The broker task has stopped (shutdown).
    #[error("broker is not running")]
    Stopped,
}

/// Why a connection ended abnormally. A connection that ends by the client's DISCONNECT, by a session
/// takeover or by shutdown ends with `Ok`.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// Reading or writing the socket failed.
    #[error("socket i/o failed")]
    Io(#[from] std::io::Error),
    /// The socket closed without a DISCONNECT.
    #[error("connection closed by peer without disconnect")]
    ClosedByPeer,
    /// No complete CONNECT arrived within the connect timeout.
    #[error("no connect within the connect timeout")]
    ConnectTimeout,
    /// Nothing arrived within 1.5 times the keep-alive interval ([MQTT-3.1.2-24]).
    #[error("keep alive timeout")]
    KeepAliveTimeout,
    /// The client sent bytes that are not a valid packet.
    #[error("malformed packet from client")]
    Decode(#[from] DecodeError),
    /// A packet could not be encoded; a bug in the broker.
    #[error("failed to encode a packet")]
    Encode(#[from] EncodeError),
    /// The client broke the protocol; `0` is the reason sent to a v5 client.
    #[error("protocol violation by client: {0:?}")]
    Protocol(ReasonCode),
    /// The CONNECT was refused with this reason.
    #[error("connect refused: {0:?}")]
    Refused(ReasonCode),
    /// The broker task has stopped.
    #[error("broker is not running")]
    BrokerStopped,
}
