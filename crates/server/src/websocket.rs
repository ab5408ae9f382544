//! MQTT over WebSocket: `GET /mqtt` on the HTTP listener, subprotocol `mqtt` (MQTT 5 §6, MQTT 3.1.1
//! §6).
//!
//! - [`router`] is the server-owned route, merged into the HTTP surface with
//!   [`http_api::router_with`] (so it shares the request id, metrics and problem+json layers). It
//!   needs no bearer token: devices authenticate in CONNECT like on TCP.
//! - A request that does not offer the `mqtt` subprotocol gets 400 `unsupported_subprotocol`; one
//!   that is not a WebSocket upgrade gets 400 `websocket_upgrade_required`; when every connection
//!   permit (`mqtt.max_connections`, shared with TCP and TLS) is taken, 503 `too_many_connections`.
//! - [`WsStream`] turns the WebSocket's binary messages into a byte stream for
//!   [`BrokerHandle::serve`]: MQTT packets may span messages and a message may hold several
//!   packets [MQTT-6.0.0-2, MQTT-6.0.0-3]. A text message ends the connection [MQTT-6.0.0-1].

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use axum::routing::get;
use futures_util::{Sink, Stream};
use mqtt_broker::BrokerHandle;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use crate::gateway::GatewayAuthenticator;

/// Where MQTT over WebSocket is served on the HTTP listener.
pub const PATH: &str = "/mqtt";

/// The WebSocket subprotocol of MQTT.
pub const SUBPROTOCOL: &str = "mqtt";

/// What the `/mqtt` route needs to hand a connection to the broker.
#[derive(Debug, Clone)]
pub struct WebSocketGateway {
    /// The broker serving the connections.
    pub broker: BrokerHandle,
    /// Checks each CONNECT.
    pub authenticator: Arc<GatewayAuthenticator>,
    /// Connection permits shared with the TCP and TLS listeners.
    pub permits: Arc<Semaphore>,
    /// The tasks of MQTT connections, waited for at shutdown.
    pub connections: TaskTracker,
    /// Largest WebSocket message a client may send, in bytes (`mqtt.max_packet_size`).
    pub max_message_bytes: usize,
}

/// The `GET /mqtt` route on `gateway`.
pub fn router(gateway: WebSocketGateway) -> Router {
    Router::new().route(PATH, get(upgrade)).with_state(gateway)
}

async fn upgrade(
    State(gateway): State<WebSocketGateway>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => {
            return http_api::problem(
                StatusCode::BAD_REQUEST,
                "websocket_upgrade_required",
                format!("{PATH} serves MQTT over WebSocket only: {rejection}"),
            );
        }
    };
    let offers_mqtt = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == SUBPROTOCOL);
    if !offers_mqtt {
        return http_api::problem(
            StatusCode::BAD_REQUEST,
            "unsupported_subprotocol",
            format!(
                "{PATH} needs the WebSocket subprotocol \"{SUBPROTOCOL}\" (Sec-WebSocket-Protocol)"
            ),
        );
    }
    let Ok(permit) = Arc::clone(&gateway.permits).try_acquire_owned() else {
        metrics::counter!("mqtt_connections_rejected_total", "reason" => "max_connections")
            .increment(1);
        tracing::warn!(%peer, "too many MQTT connections; refusing a WebSocket one");
        return http_api::problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_connections",
            "the server holds as many MQTT connections as it may (mqtt.max_connections)",
        );
    };
    let WebSocketGateway { broker, authenticator, connections, max_message_bytes, .. } = gateway;
    ws.protocols([SUBPROTOCOL])
        .max_message_size(max_message_bytes)
        .max_frame_size(max_message_bytes)
        .on_upgrade(move |socket| {
            // Tracked like TCP connections, so shutdown waits for their DISCONNECT.
            connections.spawn(async move {
                let stream = WsStream::new(socket);
                let _ = broker.serve(stream, Some(peer), authenticator.as_ref()).await;
                drop(permit);
            });
            std::future::ready(())
        })
}

/// A WebSocket as a byte stream: reads are the payloads of binary messages, in order, regardless of
/// how they split the bytes; each write is sent as one binary message.
///
/// Ping and pong messages are handled by the WebSocket itself; a close message or the end of the
/// connection reads as end of stream; a text message is an error ([MQTT-6.0.0-1]).
///
/// Writes are flushed by themselves (the broker, written for sockets, does not call `flush` after
/// each packet): a write sends its message as far as the socket takes it, and what is left is
/// sent by the next write, flush or read.
#[derive(Debug)]
pub struct WsStream {
    socket: WebSocket,
    /// The unread rest of the last binary message.
    unread: Bytes,
    eof: bool,
    /// A written message may still sit in the WebSocket's buffer.
    unflushed: bool,
}

impl WsStream {
    /// Wraps an upgraded WebSocket.
    pub fn new(socket: WebSocket) -> Self {
        Self { socket, unread: Bytes::new(), eof: false, unflushed: false }
    }

    /// Sends what earlier writes left in the buffer, as far as the socket takes it now.
    fn poll_send_buffered(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.unflushed {
            return Poll::Ready(Ok(()));
        }
        ready!(Pin::new(&mut self.socket).poll_flush(cx)).map_err(ws_error)?;
        self.unflushed = false;
        Poll::Ready(Ok(()))
    }
}

fn ws_error(error: axum::Error) -> io::Error {
    io::Error::other(error)
}

impl AsyncRead for WsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // A pending flush makes progress whenever the connection reads (it always does).
        if let Poll::Ready(Err(error)) = this.poll_send_buffered(cx) {
            return Poll::Ready(Err(error));
        }
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
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | None => this.eof = true,
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "MQTT over WebSocket takes binary messages only",
                    )));
                }
                Some(Err(error)) => return Poll::Ready(Err(ws_error(error))),
            }
        }
    }
}

impl AsyncWrite for WsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(Pin::new(&mut this.socket).poll_ready(cx)).map_err(ws_error)?;
        Pin::new(&mut this.socket)
            .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(ws_error)?;
        this.unflushed = true;
        if let Poll::Ready(Err(error)) = this.poll_send_buffered(cx) {
            return Poll::Ready(Err(error));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.unflushed = true;
        this.poll_send_buffered(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().socket).poll_close(cx).map_err(ws_error)
    }
}
