//! The device task: one TCP connection at a time, reconnection with back-off, QoS 1 bookkeeping.
//!
//! [`Agent::run`] loops over connection attempts. A connected session resends what the previous
//! connection left unacknowledged (DUP), then publishes from the offline buffer, keeping at most
//! [`MAX_INFLIGHT`] (or the server's Receive Maximum) messages unacknowledged; everything else
//! waits in the buffer, so the buffer is both the offline queue and the flow-control queue.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use mqtt_codec::{
    ConnAck, Connect, DecodeError, Delivery, Disconnect, EncodeError, Packet, PacketId, PacketType,
    ProtocolVersion, PubAck, Publish, ReasonCode,
};
use rand::rngs::StdRng;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, Interval};

use crate::backoff::backoff_delay;
use crate::config::Validated;
use crate::device::{Command, Stats};
use crate::error::AgentError;
use crate::offline_buffer::OfflineBuffer;

/// The most QoS 1 messages left unacknowledged at once (fewer if the server's Receive Maximum says so).
pub(crate) const MAX_INFLIGHT: u16 = 32;

/// How long the TCP connect and the wait for CONNACK may each take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest packet accepted from the server.
const MAX_PACKET_SIZE: u32 = 1024 * 1024;

/// Why a connection or an attempt ended, when it was not a shutdown.
#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("i/o error")]
    Io(#[from] std::io::Error),
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
}

/// A message sent at QoS 1 and not yet acknowledged.
#[derive(Debug)]
struct InFlight {
    packet_id: PacketId,
    payload: Bytes,
}

/// The device task's state; lives across connections.
#[derive(Debug)]
pub(crate) struct Agent {
    config: Validated,
    /// Requests from the handles; closes when every handle is dropped.
    commands: mpsc::Receiver<Command>,
    /// Published after every change; read by the handles.
    stats: watch::Sender<Stats>,
    pending: OfflineBuffer,
    /// In the order first sent.
    inflight: VecDeque<InFlight>,
    inflight_limit: u16,
    last_packet_id: u16,
    rng: StdRng,
}

impl Agent {
    pub(crate) fn new(
        config: Validated,
        commands: mpsc::Receiver<Command>,
        stats: watch::Sender<Stats>,
        rng: StdRng,
    ) -> Self {
        let pending = OfflineBuffer::new(config.offline_buffer_capacity);
        Self {
            config,
            commands,
            stats,
            pending,
            inflight: VecDeque::new(),
            inflight_limit: MAX_INFLIGHT,
            last_packet_id: 0,
            rng,
        }
    }

    pub(crate) async fn run(mut self) -> Result<(), AgentError> {
        let mut attempt = 0u32;
        let mut ever_connected = false;
        loop {
            match self.connect().await {
                Ok((mut link, connack)) => {
                    attempt = 0;
                    let reconnect = ever_connected;
                    ever_connected = true;
                    self.stats.send_modify(|s| {
                        s.connected = true;
                        s.reconnects += u64::from(reconnect);
                    });
                    tracing::info!(session_present = connack.session_present, "connected");
                    let ended = self.session(&mut link, &connack).await;
                    self.stats.send_modify(|s| s.connected = false);
                    match ended {
                        Ok(()) => return Ok(()),
                        Err(error) => tracing::warn!(%error, "connection lost"),
                    }
                }
                Err(LinkError::Refused(code)) if is_final(code) => {
                    tracing::error!(reason = ?code, "connection refused for good");
                    return Err(AgentError::Refused(code));
                }
                Err(error) => tracing::warn!(%error, attempt, "connection attempt failed"),
            }
            let delay = backoff_delay(attempt, &self.config.backoff, &mut self.rng);
            attempt = attempt.saturating_add(1);
            if self.wait(delay).await.is_break() {
                return Ok(());
            }
        }
    }

    /// Opens a connection and sends CONNECT; returns the accepting CONNACK.
    async fn connect(&mut self) -> Result<(Link, ConnAck), LinkError> {
        let (host, port) = &self.config.address;
        let stream =
            tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host.as_str(), *port)))
                .await
                .map_err(|_| LinkError::Timeout)??;
        stream.set_nodelay(true)?;
        let mut link = Link::new(stream, self.config.version);
        let mut connect = Connect::new(
            self.config.version,
            self.config.client_id.clone(),
            self.config.keep_alive_secs,
        );
        // A persistent session: the server keeps it across disconnections.
        connect.clean_start = false;
        connect.username = Some(self.config.username.clone());
        connect.password = Some(self.config.password.clone());
        if self.config.version == ProtocolVersion::V5 {
            connect.properties.session_expiry_interval = Some(self.config.session_expiry_secs);
        }
        link.send(&Packet::Connect(Box::new(connect))).await?;
        let packet = tokio::time::timeout(CONNECT_TIMEOUT, link.recv())
            .await
            .map_err(|_| LinkError::Timeout)??;
        match packet {
            Packet::ConnAck(ack) if ack.reason_code == ReasonCode::Success => Ok((link, ack)),
            Packet::ConnAck(ack) => Err(LinkError::Refused(ack.reason_code)),
            other => Err(LinkError::Unexpected(other.packet_type())),
        }
    }

    /// Runs one accepted connection until it fails (`Err`) or the device shuts down (`Ok`).
    async fn session(&mut self, link: &mut Link, connack: &ConnAck) -> Result<(), LinkError> {
        self.inflight_limit = connack
            .properties
            .receive_maximum
            .map_or(MAX_INFLIGHT, |max| max.get().min(MAX_INFLIGHT));
        // Resent with DUP even when the server lost the session (Session Present 0): telemetry is
        // worth more delivered twice than lost, and the packet ids are free in a new session.
        for message in &self.inflight {
            link.send(&publish(&self.config, message, true)).await?;
        }
        self.flush(link).await?;
        let mut ping = (self.config.keep_alive_secs > 0).then(|| {
            let period = Duration::from_secs(self.config.keep_alive_secs.into());
            tokio::time::interval_at(Instant::now() + period, period)
        });
        let mut ping_outstanding = false;
        loop {
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(Command::Telemetry(payload)) => {
                        self.enqueue(payload);
                        self.flush(link).await?;
                    }
                    Some(Command::Shutdown) | None => {
                        link.send(&Packet::Disconnect(Disconnect::new(ReasonCode::Success))).await?;
                        return Ok(());
                    }
                },
                packet = link.recv() => match packet? {
                    Packet::PubAck(ack) => {
                        self.acknowledged(ack.packet_id);
                        self.flush(link).await?;
                    }
                    Packet::PingResp => ping_outstanding = false,
                    Packet::Publish(publish) => {
                        // The device subscribes to nothing yet; acknowledge what a resumed session
                        // may still deliver so the server does not resend it forever.
                        if let Delivery::AtLeastOnce { packet_id, .. } = publish.delivery {
                            link.send(&Packet::PubAck(PubAck::new(packet_id))).await?;
                        }
                    }
                    Packet::Disconnect(d) => return Err(LinkError::Disconnected(d.reason_code)),
                    other => return Err(LinkError::Unexpected(other.packet_type())),
                },
                () = tick(&mut ping) => {
                    if ping_outstanding {
                        return Err(LinkError::Timeout);
                    }
                    link.send(&Packet::PingReq).await?;
                    ping_outstanding = true;
                }
            }
        }
    }

    /// Waits `delay` between attempts, buffering telemetry meanwhile; breaks on shutdown.
    async fn wait(&mut self, delay: Duration) -> ControlFlow<()> {
        let deadline = tokio::time::sleep(delay);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                () = &mut deadline => return ControlFlow::Continue(()),
                command = self.commands.recv() => match command {
                    Some(Command::Telemetry(payload)) => self.enqueue(payload),
                    Some(Command::Shutdown) | None => return ControlFlow::Break(()),
                },
            }
        }
    }

    fn enqueue(&mut self, payload: Bytes) {
        let dropped = self.pending.push(payload);
        let buffered = self.pending.len() as u64;
        self.stats.send_modify(|s| {
            s.dropped += u64::from(dropped);
            s.buffered = buffered;
        });
    }

    /// Publishes buffered messages while the in-flight window has room.
    async fn flush(&mut self, link: &mut Link) -> Result<(), LinkError> {
        while self.inflight.len() < usize::from(self.inflight_limit) {
            let Some(payload) = self.pending.pop() else { break };
            let message = InFlight { packet_id: self.next_packet_id(), payload };
            let packet = publish(&self.config, &message, false);
            // In flight before it is written: if the write fails, the next connection resends it.
            self.inflight.push_back(message);
            let buffered = self.pending.len() as u64;
            self.stats.send_modify(|s| {
                s.sent += 1;
                s.buffered = buffered;
            });
            link.send(&packet).await?;
        }
        Ok(())
    }

    fn acknowledged(&mut self, packet_id: PacketId) {
        if let Some(i) = self.inflight.iter().position(|m| m.packet_id == packet_id) {
            self.inflight.remove(i);
            self.stats.send_modify(|s| s.acked += 1);
        } else {
            tracing::debug!(packet_id = packet_id.get(), "PUBACK for an unknown packet id");
        }
    }

    /// The next packet identifier not in flight (at most [`MAX_INFLIGHT`] are, so one is free).
    fn next_packet_id(&mut self) -> PacketId {
        loop {
            self.last_packet_id = self.last_packet_id.wrapping_add(1);
            if let Some(id) = PacketId::new(self.last_packet_id)
                && !self.inflight.iter().any(|m| m.packet_id == id)
            {
                return id;
            }
        }
    }
}

/// Refusals that another attempt cannot fix; the others (server unavailable or busy, …) are retried.
fn is_final(code: ReasonCode) -> bool {
    matches!(
        code,
        ReasonCode::BadUserNameOrPassword
            | ReasonCode::NotAuthorized
            | ReasonCode::Banned
            | ReasonCode::ClientIdentifierNotValid
            | ReasonCode::BadAuthenticationMethod
            | ReasonCode::UnsupportedProtocolVersion
    )
}

fn publish(config: &Validated, message: &InFlight, dup: bool) -> Packet {
    let mut publish = Publish::new(config.telemetry_topic.clone(), message.payload.clone());
    publish.delivery = Delivery::AtLeastOnce { packet_id: message.packet_id, dup };
    Packet::Publish(publish)
}

/// Completes at the next keep-alive tick, or never without keep-alive.
async fn tick(ping: &mut Option<Interval>) {
    match ping {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// One TCP connection speaking MQTT.
#[derive(Debug)]
struct Link {
    read: OwnedReadHalf,
    write: OwnedWriteHalf,
    /// Bytes read and not yet decoded; kept here so that [`Link::recv`] is cancel-safe.
    read_buf: BytesMut,
    write_buf: BytesMut,
    version: ProtocolVersion,
}

impl Link {
    fn new(stream: TcpStream, version: ProtocolVersion) -> Self {
        let (read, write) = stream.into_split();
        Self {
            read,
            write,
            read_buf: BytesMut::with_capacity(256),
            write_buf: BytesMut::new(),
            version,
        }
    }

    async fn send(&mut self, packet: &Packet) -> Result<(), LinkError> {
        self.write_buf.clear();
        mqtt_codec::encode(packet, self.version, &mut self.write_buf)?;
        self.write.write_all(&self.write_buf).await?;
        Ok(())
    }

    /// The next packet from the server.
    ///
    /// # Cancel safety
    /// Cancel-safe: partial input stays in `read_buf`.
    async fn recv(&mut self) -> Result<Packet, LinkError> {
        loop {
            if let Some(packet) =
                mqtt_codec::decode_buf(&mut self.read_buf, self.version, MAX_PACKET_SIZE)?
            {
                return Ok(packet);
            }
            if self.read.read_buf(&mut self.read_buf).await? == 0 {
                return Err(LinkError::Closed);
            }
        }
    }
}
