//! One connection to the server speaking MQTT: opening it (TCP, then the TLS and WebSocket
//! handshakes of the configured transport) and moving packets over it.

use bytes::BytesMut;
use mqtt_codec::{DecodeError, EncodeError, Packet, PacketType, ProtocolVersion, ReasonCode};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};

use crate::config::Validated;
use crate::transport::Connection;

/// The largest packet accepted from the server.
pub(crate) const MAX_PACKET_SIZE: u32 = 1024 * 1024;

/// Why a connection or an attempt ended, when it was not a shutdown.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LinkError {
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    #[error("WebSocket handshake failed: {0}")]
    WebSocket(Box<tokio_tungstenite::tungstenite::Error>),
    #[error("timed out")]
    Timeout,
    #[error("the server closed the connection")]
    Closed,
    #[error("malformed packet from the server")]
    Decode(#[from] DecodeError),
    #[error("packet could not be encoded")]
    Encode(#[from] EncodeError),
    #[error("the server refused the connection: {0:?}")]
    Refused(ReasonCode),
    #[error("unexpected {0:?} packet")]
    Unexpected(PacketType),
    #[error("the server disconnected: {0:?}")]
    Disconnected(ReasonCode),
    #[error("the connection was cut on request")]
    Severed(std::time::Duration),
}

/// One connection speaking MQTT.
#[derive(Debug)]
pub(crate) struct Link {
    /// Read and written through one object: a TCP socket, or TLS or WebSocket over one.
    stream: Connection,
    /// Bytes read and not yet decoded; kept here so that [`Link::recv`] is cancel-safe.
    read_buf: BytesMut,
    write_buf: BytesMut,
    version: ProtocolVersion,
}

impl Link {
    /// Opens the transport to the server (without any MQTT packet yet): connects over TCP (from
    /// the local address, if configured), then runs the transport's TLS and WebSocket handshakes.
    pub(crate) async fn open(config: &Validated) -> Result<Self, LinkError> {
        let (host, port) = &config.address;
        let stream = match config.local_address {
            None => TcpStream::connect((host.as_str(), *port)).await?,
            Some(local) => {
                let mut last = None;
                let mut stream = None;
                for remote in tokio::net::lookup_host((host.as_str(), *port)).await? {
                    if remote.is_ipv4() != local.is_ipv4() {
                        continue;
                    }
                    let socket =
                        if local.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
                    socket.bind(std::net::SocketAddr::new(local, 0))?;
                    match socket.connect(remote).await {
                        Ok(s) => {
                            stream = Some(s);
                            break;
                        }
                        Err(e) => last = Some(e),
                    }
                }
                match stream {
                    Some(s) => s,
                    None => {
                        return Err(LinkError::Io(last.unwrap_or_else(|| {
                            std::io::Error::new(
                                std::io::ErrorKind::AddrNotAvailable,
                                "no server address of the local address's family",
                            )
                        })));
                    }
                }
            }
        };
        stream.set_nodelay(true)?;
        let stream = config.transport.establish(stream).await?;
        Ok(Self {
            stream,
            read_buf: BytesMut::with_capacity(256),
            write_buf: BytesMut::new(),
            version: config.version,
        })
    }

    pub(crate) async fn send(&mut self, packet: &Packet) -> Result<(), LinkError> {
        self.write_buf.clear();
        mqtt_codec::encode(packet, self.version, &mut self.write_buf)?;
        self.stream.write_all(&self.write_buf).await?;
        // TLS and WebSocket may hold written bytes back; for TCP this does nothing.
        self.stream.flush().await?;
        Ok(())
    }

    /// The next packet from the server.
    ///
    /// # Cancel safety
    /// Cancel-safe: partial input stays in `read_buf` (and in the TLS session or the unread rest
    /// of a WebSocket message, which live in `stream`).
    pub(crate) async fn recv(&mut self) -> Result<Packet, LinkError> {
        loop {
            if let Some(packet) =
                mqtt_codec::decode_buf(&mut self.read_buf, self.version, MAX_PACKET_SIZE)?
            {
                return Ok(packet);
            }
            if self.stream.read_buf(&mut self.read_buf).await? == 0 {
                return Err(LinkError::Closed);
            }
        }
    }
}
