//! How a device reaches the server: plain TCP, TLS, or MQTT over WebSocket (itself over TCP or
//! TLS).
//!
//! [`Transport`] and [`TlsOptions`] are the settings ([`DeviceConfig::transport`]). [`Dialer`] is
//! their checked form, built once by `Validated::new`: certificate files are read and parsed there,
//! into one `Arc<rustls::ClientConfig>`, so reconnections never read them again. [`Dialer::establish`]
//! turns a connected TCP socket into a [`Connection`], the byte stream `Link` reads and writes.
//!
//! Plain TCP adds nothing per connection: its [`Connection`] is the socket itself (the simulator
//! runs thousands of devices in one process). TLS is rustls with the aws-lc-rs provider, as on the
//! server. WebSocket is `tokio-tungstenite` over our own TCP or TLS stream, with [`WsStream`]
//! turning binary messages into bytes.
//!
//! [`DeviceConfig::transport`]: crate::DeviceConfig::transport

use std::io;
use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures_util::{Sink, Stream};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::http::header::SEC_WEBSOCKET_PROTOCOL;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::error::ConfigError;
use crate::link::{LinkError, MAX_PACKET_SIZE};

/// How a device connects to the server ([`DeviceConfig::transport`]);
/// [`DeviceConfig::port`] is the server's port for that transport.
///
/// - [`Transport::Tcp`]: MQTT over plain TCP (the server's `mqtt.listen`, usually port 1883).
/// - [`Transport::Tls`]: MQTT over TLS 1.2 or 1.3 (`mqtt.tls_listen`, usually port 8883). The
///   device checks the server's certificate against [`TlsOptions::ca_file`].
/// - [`Transport::WebSocket`]: MQTT over WebSocket, `ws://HOST:PORT{path}` (the server's HTTP
///   listener, path `/mqtt`), or `wss://` when `tls` is set. The device asks for the subprotocol
///   `mqtt` and sends each MQTT packet as one binary message.
///
/// [`DeviceConfig::local_address`] applies to every transport: the TCP connection under TLS or
/// WebSocket is made from it.
///
/// # Example
///
/// A device verifying the server against the CA that issued its certificate:
///
/// ```no_run
/// use device_agent::{Device, DeviceConfig, TlsOptions, Transport};
///
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let mut config = DeviceConfig::new("herd.example.com", 8883, "sensor-1", "hdc_0123…");
/// config.transport = Transport::Tls(TlsOptions {
///     ca_file: Some("/etc/herd/ca.pem".into()),
///     ..TlsOptions::default()
/// });
/// // The CA file is read here, once: a missing or unreadable file is a `ConfigError`.
/// let (device, task) = Device::spawn(config)?;
/// # Ok(())
/// # }
/// ```
///
/// [`DeviceConfig::transport`]: crate::DeviceConfig::transport
/// [`DeviceConfig::port`]: crate::DeviceConfig::port
/// [`DeviceConfig::local_address`]: crate::DeviceConfig::local_address
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Transport {
    /// MQTT over plain TCP.
    #[default]
    Tcp,
    /// MQTT over TLS.
    Tls(TlsOptions),
    /// MQTT over WebSocket, over TLS when `tls` is set.
    WebSocket {
        /// The path of the WebSocket endpoint, starting with `/`; Herd serves `/mqtt`.
        path: String,
        /// `Some`: `wss://`, with these settings; `None`: `ws://`.
        tls: Option<TlsOptions>,
    },
}

/// How a device runs TLS: which certificate authorities it trusts, the name it expects on the
/// server's certificate, and its own certificate when the server asks for one.
///
/// The files are PEM, read once when the device starts ([`Device::spawn`]); a file that cannot be
/// read or parsed is a [`ConfigError::TlsFile`].
///
/// [`Device::spawn`]: crate::Device::spawn
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// The certificates of the authorities the server's certificate must chain to (PEM, one or
    /// more). `None`: the system's bundle, `/etc/ssl/certs/ca-certificates.crt` (Debian, Ubuntu,
    /// Alpine and their derivatives); where that file does not exist, the device does not start
    /// ([`ConfigError::TlsFile`]) and a CA file must be given.
    pub ca_file: Option<PathBuf>,
    /// The name the server's certificate must hold (DNS name or IP address). `None`: the host
    /// ([`DeviceConfig::host`](crate::DeviceConfig::host)).
    pub server_name: Option<String>,
    /// The device's own certificate chain and private key (PEM files, in that order), sent when the
    /// server asks for a client certificate (mutual TLS). `None`: none is sent.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// Where the CA bundle is read when [`TlsOptions::ca_file`] is `None`.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The WebSocket subprotocol of MQTT (MQTT 5 §6, MQTT 3.1.1 §6).
const SUBPROTOCOL: &str = "mqtt";

/// The largest WebSocket message accepted from the server. A message may hold several MQTT
/// packets, so this is a few packets' worth; the decoder still refuses any packet larger than
/// [`MAX_PACKET_SIZE`].
const MAX_MESSAGE_SIZE: usize = 4 * MAX_PACKET_SIZE as usize;

/// What tungstenite allocates up front for each WebSocket connection to read into. Its default is
/// 128 KiB; MQTT device traffic is small packets.
const WS_READ_BUFFER: usize = 4 * 1024;

/// A [`Transport`] checked, with its TLS settings loaded: how to turn a TCP connection to the
/// server into a [`Connection`].
#[derive(Debug, Clone)]
pub(crate) enum Dialer {
    Tcp,
    Tls(TlsClient),
    WebSocket {
        /// `ws://HOST:PORT/PATH` or `wss://…`, checked once.
        url: String,
        tls: Option<TlsClient>,
    },
}

impl Dialer {
    /// Checks `transport` for the server at `host`:`port`, reading and parsing its TLS files.
    pub(crate) fn new(transport: &Transport, host: &str, port: u16) -> Result<Self, ConfigError> {
        match transport {
            Transport::Tcp => Ok(Self::Tcp),
            Transport::Tls(options) => Ok(Self::Tls(TlsClient::new(options, host)?)),
            Transport::WebSocket { path, tls } => {
                let tls = tls.as_ref().map(|options| TlsClient::new(options, host)).transpose()?;
                let scheme = if tls.is_some() { "wss" } else { "ws" };
                let host = if host.parse::<Ipv6Addr>().is_ok() {
                    format!("[{host}]")
                } else {
                    host.to_owned()
                };
                let url = format!("{scheme}://{host}:{port}{path}");
                if !path.starts_with('/') || url.as_str().into_client_request().is_err() {
                    return Err(ConfigError::WebSocketUrl(url));
                }
                Ok(Self::WebSocket { url, tls })
            }
        }
    }

    /// This transport presenting another client certificate (PEM chain, PEM private key) from
    /// its next connection on.
    ///
    /// # Errors
    /// [`ConfigError::ClientCertificate`] when the transport has no TLS or the PEM is unusable.
    pub(crate) fn with_client_certificate(
        &self,
        chain_pem: &str,
        key_pem: &str,
    ) -> Result<Self, ConfigError> {
        let bad =
            |reason: &dyn std::fmt::Display| ConfigError::ClientCertificate(reason.to_string());
        let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(&e))?;
        if chain.is_empty() {
            return Err(bad(&"no PEM certificate"));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| bad(&e))?;
        let renewed = |tls: &TlsClient| tls.with_identity(chain.clone(), key.clone_key());
        match self {
            Self::Tcp | Self::WebSocket { tls: None, .. } => {
                Err(bad(&"the transport does not use TLS"))
            }
            Self::Tls(tls) => Ok(Self::Tls(renewed(tls).map_err(|e| bad(&e))?)),
            Self::WebSocket { url, tls: Some(tls) } => Ok(Self::WebSocket {
                url: url.clone(),
                tls: Some(renewed(tls).map_err(|e| bad(&e))?),
            }),
        }
    }

    /// Runs the TLS and WebSocket handshakes of this transport over `tcp`, if any.
    pub(crate) async fn establish(&self, tcp: TcpStream) -> Result<Connection, LinkError> {
        Ok(match self {
            Self::Tcp => Connection::Tcp(tcp),
            Self::Tls(tls) => Connection::Tls(Box::new(tls.handshake(tcp).await?)),
            Self::WebSocket { url, tls: None } => {
                Connection::WebSocket(Box::new(WsStream::handshake(url, tcp).await?))
            }
            Self::WebSocket { url, tls: Some(tls) } => {
                let tls = tls.handshake(tcp).await?;
                Connection::WebSocketTls(Box::new(WsStream::handshake(url, tls).await?))
            }
        })
    }
}

/// TLS settings loaded: shared by every connection of the device.
#[derive(Debug, Clone)]
pub(crate) struct TlsClient {
    config: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
    /// The authorities the server's certificate must chain to, kept to build a new configuration
    /// when the device's own certificate changes.
    roots: Arc<rustls::RootCertStore>,
}

impl TlsClient {
    pub(crate) fn new(options: &TlsOptions, host: &str) -> Result<Self, ConfigError> {
        let name = options.server_name.as_deref().unwrap_or(host);
        let server_name = ServerName::try_from(name.to_owned())
            .map_err(|_| ConfigError::TlsServerName(name.to_owned()))?;
        let mut roots = rustls::RootCertStore::empty();
        match &options.ca_file {
            Some(path) => {
                for cert in read_certs(path)? {
                    roots.add(cert).map_err(|e| tls_file(path, &e))?;
                }
            }
            None => {
                let path = Path::new(SYSTEM_CA_BUNDLE);
                let certs = CertificateDer::pem_file_iter(path)
                    .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                    .map_err(|e| {
                        tls_file(
                            path,
                            &format!("no CA file given, and the system bundle cannot be read: {e}"),
                        )
                    })?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(tls_file(
                        path,
                        &"no CA file given, and the system bundle holds no usable certificate",
                    ));
                }
            }
        }
        let roots = Arc::new(roots);
        let config = match &options.client_cert {
            None => client_config(&roots).with_no_client_auth(),
            Some((cert_file, key_file)) => {
                let chain = read_certs(cert_file)?;
                let key =
                    PrivateKeyDer::from_pem_file(key_file).map_err(|e| tls_file(key_file, &e))?;
                client_config(&roots)
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| tls_file(key_file, &e))?
            }
        };
        Ok(Self { config: Arc::new(config), server_name, roots })
    }

    /// The same settings with another client certificate chain and key.
    fn with_identity(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, rustls::Error> {
        let config = client_config(&self.roots).with_client_auth_cert(chain, key)?;
        Ok(Self {
            config: Arc::new(config),
            server_name: self.server_name.clone(),
            roots: Arc::clone(&self.roots),
        })
    }

    pub(crate) async fn handshake(
        &self,
        tcp: TcpStream,
    ) -> Result<TlsStream<TcpStream>, LinkError> {
        tokio_rustls::TlsConnector::from(Arc::clone(&self.config))
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(LinkError::Tls)
    }
}

/// A client configuration trusting `roots`, before its client authentication is chosen.
fn client_config(
    roots: &Arc<rustls::RootCertStore>,
) -> rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("the aws-lc-rs provider supports TLS 1.2 and 1.3")
        .with_root_certificates(Arc::clone(roots))
}

/// The certificates of a PEM file: at least one.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| tls_file(path, &e))?;
    if certs.is_empty() {
        return Err(tls_file(path, &"no PEM certificate in the file"));
    }
    Ok(certs)
}

fn tls_file(path: &Path, reason: &dyn std::fmt::Display) -> ConfigError {
    ConfigError::TlsFile { path: path.to_owned(), reason: reason.to_string() }
}

/// One open connection to the server: a byte stream, whatever carries it.
#[derive(Debug)]
pub(crate) enum Connection {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    WebSocket(Box<WsStream<TcpStream>>),
    WebSocketTls(Box<WsStream<TlsStream<TcpStream>>>),
}

/// Calls `$method` on whichever stream `$self` (a pinned [`Connection`]) holds.
macro_rules! delegate {
    ($self:ident, $method:ident($($arg:expr),*)) => {
        match $self.get_mut() {
            Connection::Tcp(s) => Pin::new(s).$method($($arg),*),
            Connection::Tls(s) => Pin::new(s.as_mut()).$method($($arg),*),
            Connection::WebSocket(s) => Pin::new(s.as_mut()).$method($($arg),*),
            Connection::WebSocketTls(s) => Pin::new(s.as_mut()).$method($($arg),*),
        }
    };
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, poll_read(cx, buf))
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, poll_shutdown(cx))
    }
}

/// A WebSocket as a byte stream: reads are the payloads of binary messages, in order, however they
/// split the MQTT packets (a packet may span messages, a message may hold several packets); each
/// write is sent as one binary message.
///
/// Writes go out on `flush` (which `Link::send` calls after each packet). Pings are answered by
/// tungstenite; a close message or the end of the connection reads as end of stream; a text
/// message is an error (MQTT-6.0.0-1).
#[derive(Debug)]
pub(crate) struct WsStream<S> {
    socket: WebSocketStream<S>,
    /// The unread rest of the last binary message; kept here so that reads are cancel-safe.
    unread: Bytes,
    eof: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsStream<S> {
    /// The WebSocket handshake with `url` over `stream`, asking for the subprotocol `mqtt`.
    async fn handshake(url: &str, stream: S) -> Result<Self, LinkError> {
        let mut request = url.into_client_request().map_err(ws_link_error)?;
        request.headers_mut().insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(SUBPROTOCOL));
        let config = WebSocketConfig::default()
            .read_buffer_size(WS_READ_BUFFER)
            // Each message is written at once; `Link::send` flushes after each packet anyway.
            .write_buffer_size(0)
            .max_message_size(Some(MAX_MESSAGE_SIZE))
            .max_frame_size(Some(MAX_MESSAGE_SIZE));
        // tungstenite checks that the server chose `mqtt` among the subprotocols asked for.
        let (socket, _response) =
            tokio_tungstenite::client_async_with_config(request, stream, Some(config))
                .await
                .map_err(ws_link_error)?;
        Ok(Self { socket, unread: Bytes::new(), eof: false })
    }
}

fn ws_link_error(error: tungstenite::Error) -> LinkError {
    LinkError::WebSocket(Box::new(error))
}

fn ws_io_error(error: tungstenite::Error) -> io::Error {
    match error {
        tungstenite::Error::Io(error) => error,
        other => io::Error::other(other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.unread.is_empty() {
                let n = this.unread.len().min(buf.remaining());
                buf.put_slice(&this.unread.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.socket).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => this.unread = data,
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(_))) | None => this.eof = true,
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "MQTT over WebSocket takes binary messages only",
                    )));
                }
                Some(Err(error)) => return Poll::Ready(Err(ws_io_error(error))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(Pin::new(&mut this.socket).poll_ready(cx)).map_err(ws_io_error)?;
        Pin::new(&mut this.socket)
            .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(ws_io_error)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().socket).poll_flush(cx).map_err(ws_io_error)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().socket).poll_close(cx).map_err(ws_io_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check_url(host: &str, port: u16, tls: bool, expected: &str) {
        let tls = tls.then(|| TlsOptions {
            server_name: Some("localhost".to_owned()),
            ..TlsOptions::default()
        });
        let transport = Transport::WebSocket { path: "/mqtt".to_owned(), tls };
        match Dialer::new(&transport, host, port) {
            Ok(Dialer::WebSocket { url, .. }) => assert_eq!(url, expected),
            // Without the system bundle, `wss` cannot be checked here.
            Err(ConfigError::TlsFile { path, .. }) if path == Path::new(SYSTEM_CA_BUNDLE) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn websocket_urls() {
        check_url("herd.example.com", 8080, false, "ws://herd.example.com:8080/mqtt");
        check_url("127.0.0.1", 80, false, "ws://127.0.0.1:80/mqtt");
        check_url("::1", 8080, false, "ws://[::1]:8080/mqtt");
        check_url("herd.example.com", 443, true, "wss://herd.example.com:443/mqtt");
    }

    #[test]
    fn without_a_ca_file_the_system_bundle_is_used() {
        let result = TlsClient::new(&TlsOptions::default(), "herd.example.com");
        if Path::new(SYSTEM_CA_BUNDLE).exists() {
            assert!(result.is_ok(), "{result:?}");
        } else {
            assert!(
                matches!(&result, Err(ConfigError::TlsFile { path, .. }) if path == Path::new(SYSTEM_CA_BUNDLE)),
                "{result:?}"
            );
        }
    }
}
