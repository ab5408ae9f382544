//! The connection task: one per client socket, generic over the byte stream so that TCP, TLS and
//! WebSocket share it.
//!
//! It reads the CONNECT within the connect timeout, authenticates it, asks the broker task for the
//! session (which may take it over from another connection), answers CONNACK, and then runs one
//! `select!` loop over the socket, the broker's messages for this client, the completions of inbound
//! QoS 1 and 2 messages, the keep-alive deadline, takeover and shutdown. When the connection ends it
//! hands the session state back to the broker.
//!
//! Every packet from the client is checked against the [`Identity`] resolved at CONNECT: PUBLISH and
//! will topics against `may_publish`, SUBSCRIBE filters against `may_subscribe`.
//!
//! Outbound flow control: messages from the broker are taken off the channel at once. QoS 0 messages
//! are encoded straight into the write buffer, or dropped and counted when that buffer is above
//! [`BrokerConfig::outbound_buffer_high_water`]; QoS 1 and 2 messages wait in the session queue (bounded by
//! [`BrokerConfig::max_queued_messages`]) until the in-flight window, the smaller of the client's Receive
//! Maximum and [`BrokerConfig::max_inflight`], has room.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use mqtt_codec::{
    ClientId, ConnAck, Connect, DecodeError, Delivery, Disconnect, MAX_PACKET_SIZE, Packet,
    PacketId, ProtocolVersion, PubAck, PubComp, PubRec, PubRel, Publish, QoS, ReasonCode, SubAck,
    Subscribe, UnsubAck, Unsubscribe,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Duration, Instant, timeout};
use tracing::Instrument;

use crate::broker::{
    Accepted, Command, ConnLink, ConnectReply, ConnectRequest, Control, Disconnected,
    SubscribeRequest, WillMessage,
};
use crate::counters::{self, DropReason};
use crate::events::{ConnectionEvent, DisconnectReason};
use crate::session::{Awaiting, InFlight, Outbound, SessionState, SubscriberId};
use crate::topic_tree::SubOptions;
use crate::{Authenticator, BrokerConfig, BrokerHandle, ConnectionError, Identity, Message};

/// Room reserved in the read buffer before each read.
const READ_RESERVE: usize = 1024;
/// A read buffer larger than this is released once it is empty, so that one large packet does not
/// pin memory for the life of the connection.
const READ_BUFFER_KEEP: usize = 8 * 1024;

/// Serves one connection; see [`BrokerHandle::serve`].
pub(crate) async fn serve<IO, A>(
    handle: BrokerHandle,
    io: IO,
    peer: Option<SocketAddr>,
    authenticator: &A,
) -> Result<(), ConnectionError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send,
    A: Authenticator,
{
    let span = tracing::info_span!(
        "mqtt_connection",
        peer = ?peer,
        client_id = tracing::field::Empty,
        identity = tracing::field::Empty,
    );
    let result = serve_inner(handle, io, peer, authenticator).instrument(span.clone()).await;
    if let Err(error) = &result {
        span.in_scope(|| tracing::info!(error = %error, "connection ended abnormally"));
    }
    result
}

async fn serve_inner<IO, A>(
    handle: BrokerHandle,
    io: IO,
    peer: Option<SocketAddr>,
    authenticator: &A,
) -> Result<(), ConnectionError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send,
    A: Authenticator,
{
    let config = handle.config().clone();
    let (mut reader, mut writer) = tokio::io::split(io);
    let mut in_buf = BytesMut::new();
    let max_packet_size = config.max_packet_size.get();
    let connect = match timeout(
        config.connect_timeout,
        read_connect(&mut reader, &mut in_buf, max_packet_size),
    )
    .await
    {
        Err(_) => return Err(ConnectionError::ConnectTimeout),
        Ok(Err(ConnectionError::Decode(
            error @ (DecodeError::UnsupportedProtocolVersion(_) | DecodeError::InvalidProtocolName),
        ))) => {
            // [MQTT-3.1.2-2]: answer with the v3.1.1 return code 1 (what every version understands).
            let connack = ConnAck::new(ReasonCode::UnsupportedProtocolVersion);
            write_now(&mut writer, &Packet::ConnAck(connack), ProtocolVersion::V311, &config).await;
            return Err(ConnectionError::Decode(error));
        }
        Ok(result) => result?,
    };
    let version = connect.protocol_version;
    let v5 = version == ProtocolVersion::V5;

    let refuse = |code: ReasonCode| (Packet::ConnAck(ConnAck::new(code)), code);
    let prepared = prepare(&handle, &config, &connect, peer, authenticator).await;
    let (identity, client_id, assigned) = match prepared {
        Ok(ok) => ok,
        Err(code) => {
            let (packet, code) = refuse(code);
            write_now(&mut writer, &packet, version, &config).await;
            return Err(ConnectionError::Refused(code));
        }
    };
    let span = tracing::Span::current();
    span.record("client_id", client_id.as_str());
    span.record("identity", identity.name());

    // Session Expiry Interval: v5 asks for one; v3.1.1 Clean Session 0 means "keep it" (§3.1.2.4).
    let requested_expiry = if v5 {
        connect.properties.session_expiry_interval.unwrap_or(0)
    } else if connect.clean_start {
        0
    } else {
        u32::MAX
    };
    let session_expiry = requested_expiry.min(config.max_session_expiry);
    let mut keep_alive = connect.keep_alive;
    let mut server_keep_alive = None;
    if v5 && config.max_keep_alive > 0 && (keep_alive == 0 || keep_alive > config.max_keep_alive) {
        keep_alive = config.max_keep_alive;
        server_keep_alive = Some(keep_alive);
    }

    let conn_id = handle.next_id();
    let (outbound_tx, outbound_rx) = mpsc::channel(config.connection_channel_capacity.get());
    let (control_tx, control_rx) = mpsc::channel(1);
    let (reply_tx, reply_rx) = oneshot::channel();
    handle
        .send(Command::Connect(ConnectRequest {
            client_id: client_id.clone(),
            clean_start: connect.clean_start,
            session_expiry,
            link: ConnLink { conn_id, outbound: outbound_tx, control: control_tx },
            reply: reply_tx,
        }))
        .await
        .map_err(|_| ConnectionError::BrokerStopped)?;
    // A takeover waits for the previous connection to hand the session over.
    let reply: ConnectReply = match timeout(config.connect_timeout, reply_rx).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(_)) | Err(_) => {
            let (packet, code) = refuse(ReasonCode::ServerBusy);
            write_now(&mut writer, &packet, version, &config).await;
            return Err(ConnectionError::Refused(code));
        }
    };

    let mut connack = ConnAck::new(ReasonCode::Success);
    connack.session_present = reply.session_present;
    if v5 {
        let p = &mut connack.properties;
        if session_expiry != requested_expiry {
            p.session_expiry_interval = Some(session_expiry);
        }
        p.assigned_client_identifier = assigned;
        p.server_keep_alive = server_keep_alive;
        p.receive_maximum = Some(config.receive_maximum);
        if config.maximum_qos < QoS::ExactlyOnce {
            p.maximum_qos = Some(config.maximum_qos);
        }
        p.maximum_packet_size = Some(config.max_packet_size);
        p.topic_alias_maximum = Some(config.topic_alias_maximum);
    }
    // The send window: the client's Receive Maximum (§3.1.2.11.3), capped by ours.
    let peer_receive_maximum = connect.properties.receive_maximum.map_or(u16::MAX, |r| r.get());
    let config_max_inflight = config.max_inflight.get();
    let will = connect.will.map(|will| {
        let delay = will.properties.will_delay_interval.unwrap_or(0);
        let mut properties = will.properties;
        properties.will_delay_interval = None;
        WillMessage {
            message: Arc::new(Message {
                topic: will.topic,
                payload: will.payload,
                qos: will.qos,
                retain: will.retain,
                properties,
            }),
            delay,
        }
    });
    let mut connection = Connection {
        handle,
        client_id,
        config,
        reader,
        writer,
        in_buf,
        out_buf: BytesMut::new(),
        version,
        session: reply.session,
        identity,
        keep_alive: (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500)),
        last_packet: Instant::now(),
        send_window: usize::from(peer_receive_maximum.min(config_max_inflight)),
        peer_max_packet_size: connect
            .properties
            .maximum_packet_size
            .map_or(MAX_PACKET_SIZE, |m| m.get()),
        state: reply.state,
        inbound: VecDeque::new(),
        aliases: HashMap::new(),
        session_expiry,
        outbound_rx,
        control_rx,
    };
    connection.write(&Packet::ConnAck(connack))?;
    // [MQTT-4.4.0-1]: resend unacknowledged PUBLISH and PUBREL packets of a resumed session.
    connection.resend_inflight()?;
    tracing::debug!(?version, session_present = reply.session_present, "connected");
    counters::connection_opened();
    connection.handle.emit(ConnectionEvent::Connected {
        client_id: connection.client_id.clone(),
        peer,
        protocol: version,
    });

    let end = connection.run().await;
    connection.finish(end, will, conn_id).await
}

/// Validates, names and authenticates a CONNECT: the identity, the client identifier, and the identifier
/// the server assigned, if it did.
async fn prepare<A: Authenticator>(
    handle: &BrokerHandle,
    config: &BrokerConfig,
    connect: &Connect,
    peer: Option<SocketAddr>,
    authenticator: &A,
) -> Result<(Identity, ClientId, Option<ClientId>), ReasonCode> {
    let v5 = connect.protocol_version == ProtocolVersion::V5;
    if connect.properties.authentication_method.is_some() {
        // Enhanced authentication (§4.12) is not supported.
        return Err(ReasonCode::BadAuthenticationMethod);
    }
    let mut client_id = connect.client_id.clone();
    let mut assigned = None;
    if client_id.is_empty() {
        if !v5 && !connect.clean_start {
            return Err(ReasonCode::ClientIdentifierNotValid); // v3.1.1 [MQTT-3.1.3-8]
        }
        let id = ClientId::new(format!("herd-auto-{}", handle.next_id()))
            .map_err(|_| ReasonCode::UnspecifiedError)?;
        client_id = id.clone();
        assigned = Some(id); // [MQTT-3.1.3-6], [MQTT-3.2.2-16]
    }
    let identity = authenticator.authenticate(connect, peer).await?;
    if let Some(will) = &connect.will {
        if !identity.may_publish(&will.topic) {
            return Err(ReasonCode::NotAuthorized);
        }
        if will.qos > config.maximum_qos {
            return Err(ReasonCode::QosNotSupported); // [MQTT-3.2.2-12]
        }
    }
    Ok((identity, client_id, if v5 { assigned } else { None }))
}

/// Reads until a whole CONNECT is in `buf`.
async fn read_connect<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    max_packet_size: u32,
) -> Result<Connect, ConnectionError> {
    loop {
        if let Some(connect) = mqtt_codec::decode_connect_buf(buf, max_packet_size)? {
            return Ok(connect);
        }
        buf.reserve(READ_RESERVE);
        let n = reader.read_buf(buf).await?;
        if n == 0 {
            return Err(ConnectionError::ClosedByPeer);
        }
        counters::bytes_received(n);
    }
}

/// Writes one packet and flushes it, giving up after the close timeout; for answers after which the
/// connection closes.
async fn write_now<W: AsyncWrite + Unpin>(
    writer: &mut W,
    packet: &Packet,
    version: ProtocolVersion,
    config: &BrokerConfig,
) {
    let mut buf = BytesMut::new();
    if mqtt_codec::encode(packet, version, &mut buf).is_err() {
        return;
    }
    let _ = timeout(config.close_timeout, async {
        writer.write_all(&buf).await?;
        writer.shutdown().await
    })
    .await;
}

/// How the main loop ended.
#[derive(Debug)]
enum End {
    /// The client sent DISCONNECT; `publish_will` unless its reason was 0x00 ([MQTT-3.1.2-10]).
    Client { publish_will: bool },
    /// Another connection took the session over.
    TakenOver,
    /// The server closed the connection with this reason ([`BrokerHandle::disconnect_client`]).
    Server(ReasonCode),
    /// The server is shutting down.
    Shutdown,
    /// Something went wrong.
    Error(ConnectionError),
}

/// One event of the main loop, produced by the `select!` and handled after it.
#[derive(Debug)]
enum Event {
    Shutdown,
    Control(Option<Control>),
    Read(std::io::Result<usize>),
    Written(std::io::Result<usize>),
    Outbound(Option<Outbound>),
    Accepted(Result<Accepted, oneshot::error::RecvError>),
    KeepAliveExpired,
}

/// An inbound QoS 1 or 2 PUBLISH waiting for the broker to accept it.
#[derive(Debug)]
struct PendingAck {
    packet_id: PacketId,
    qos: QoS,
    accepted: oneshot::Receiver<Accepted>,
}

struct Connection<IO> {
    handle: BrokerHandle,
    client_id: ClientId,
    config: BrokerConfig,
    reader: ReadHalf<IO>,
    writer: WriteHalf<IO>,
    /// Bytes read and not yet decoded. Kept here, not in the loop, so a cancelled read loses nothing.
    in_buf: BytesMut,
    /// Encoded packets not yet written.
    out_buf: BytesMut,
    version: ProtocolVersion,
    session: SubscriberId,
    identity: Identity,
    /// 1.5 times the negotiated Keep Alive ([MQTT-3.1.2-24]); `None` when keep-alive is off.
    keep_alive: Option<Duration>,
    last_packet: Instant,
    /// How many outbound QoS 1 and 2 messages may be unacknowledged.
    send_window: usize,
    peer_max_packet_size: u32,
    state: SessionState,
    /// Inbound QoS 1 and 2 messages handed to the broker, in arrival order: acknowledged in that order
    /// once accepted ([MQTT-4.6.0-2]).
    inbound: VecDeque<PendingAck>,
    /// Inbound topic aliases (v5, §3.3.2.3.4).
    aliases: HashMap<u16, mqtt_codec::TopicName>,
    session_expiry: u32,
    /// Messages from the broker. Closed by `finish` before the state goes back to the broker.
    outbound_rx: mpsc::Receiver<Outbound>,
    /// Takeover notices from the broker.
    control_rx: mpsc::Receiver<Control>,
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send> Connection<IO> {
    fn v5(&self) -> bool {
        self.version == ProtocolVersion::V5
    }

    /// The main loop.
    ///
    /// # Cancel safety
    ///
    /// Each branch of the `select!` is cancel-safe: `read_buf` and `write` report progress only when
    /// they complete and keep partial input and output in `self.in_buf` / `self.out_buf`; `recv` on an
    /// mpsc receiver and awaiting a `&mut oneshot::Receiver` lose no message; the keep-alive sleep is
    /// recreated from `self.last_packet` on every turn.
    async fn run(&mut self) -> End {
        loop {
            if let Err(error) = self.pump() {
                return End::Error(error);
            }
            if self.in_buf.is_empty() && self.in_buf.capacity() > READ_BUFFER_KEEP {
                self.in_buf = BytesMut::new();
            }
            if self.in_buf.capacity() - self.in_buf.len() < READ_RESERVE / 4 {
                self.in_buf.reserve(READ_RESERVE);
            }
            let deadline = self.keep_alive.map(|k| self.last_packet + k);
            let event = {
                let Self {
                    handle,
                    reader,
                    writer,
                    in_buf,
                    out_buf,
                    outbound_rx,
                    control_rx,
                    inbound,
                    ..
                } = self;
                let writing = !out_buf.is_empty();
                tokio::select! {
                    () = handle.shutdown_token().cancelled() => Event::Shutdown,
                    control = control_rx.recv() => Event::Control(control),
                    read = reader.read_buf(in_buf) => Event::Read(read),
                    written = writer.write(out_buf), if writing => Event::Written(written),
                    out = outbound_rx.recv() => Event::Outbound(out),
                    accepted = async {
                        match inbound.front_mut() {
                            Some(pending) => (&mut pending.accepted).await,
                            None => std::future::pending().await,
                        }
                    }, if !inbound.is_empty() => Event::Accepted(accepted),
                    () = sleep_until_opt(deadline), if deadline.is_some() => Event::KeepAliveExpired,
                }
            };
            match self.on_event(event).await {
                Ok(None) => {}
                Ok(Some(end)) => return end,
                Err(error) => return End::Error(error),
            }
        }
    }

    async fn on_event(&mut self, event: Event) -> Result<Option<End>, ConnectionError> {
        match event {
            Event::Shutdown => return Ok(Some(End::Shutdown)),
            Event::Control(Some(Control::TakenOver)) => return Ok(Some(End::TakenOver)),
            Event::Control(Some(Control::Disconnect(reason))) => {
                return Ok(Some(End::Server(reason)));
            }
            // The broker dropped its side: it has stopped, normally because of a shutdown.
            Event::Control(None) | Event::Outbound(None) => {
                if self.handle.shutdown_token().is_cancelled() {
                    return Ok(Some(End::Shutdown));
                }
                return Err(ConnectionError::BrokerStopped);
            }
            Event::Read(read) => {
                let n = read?;
                if n == 0 {
                    return Err(ConnectionError::ClosedByPeer);
                }
                counters::bytes_received(n);
                return self.process_input().await;
            }
            Event::Written(written) => {
                let n = written?;
                if n == 0 {
                    return Err(ConnectionError::ClosedByPeer);
                }
                counters::bytes_sent(n);
                self.out_buf.advance(n);
            }
            Event::Outbound(Some(out)) => self.enqueue(out)?,
            Event::Accepted(accepted) => {
                let accepted = accepted.map_err(|_| ConnectionError::BrokerStopped)?;
                let Some(pending) = self.inbound.pop_front() else { return Ok(None) };
                let reason = if self.v5() && !accepted.matched {
                    ReasonCode::NoMatchingSubscribers
                } else {
                    ReasonCode::Success
                };
                let packet = match pending.qos {
                    QoS::ExactlyOnce => Packet::PubRec(PubRec {
                        reason_code: reason,
                        ..PubRec::new(pending.packet_id)
                    }),
                    _ => Packet::PubAck(PubAck {
                        reason_code: reason,
                        ..PubAck::new(pending.packet_id)
                    }),
                };
                self.write(&packet)?;
            }
            Event::KeepAliveExpired => return Err(ConnectionError::KeepAliveTimeout),
        }
        Ok(None)
    }

    /// Decodes and handles every complete packet in the read buffer.
    async fn process_input(&mut self) -> Result<Option<End>, ConnectionError> {
        let max = self.config.max_packet_size.get();
        while let Some(packet) = mqtt_codec::decode_buf(&mut self.in_buf, self.version, max)? {
            self.last_packet = Instant::now();
            if let Some(end) = self.on_packet(packet).await? {
                return Ok(Some(end));
            }
        }
        Ok(None)
    }

    async fn on_packet(&mut self, packet: Packet) -> Result<Option<End>, ConnectionError> {
        match packet {
            Packet::Publish(publish) => self.on_publish(publish).await?,
            Packet::PubAck(ack) => self.on_puback(ack.packet_id),
            Packet::PubRec(rec) => self.on_pubrec(&rec)?,
            Packet::PubRel(rel) => self.on_pubrel(rel.packet_id)?,
            Packet::PubComp(comp) => self.on_pubcomp(comp.packet_id),
            Packet::Subscribe(subscribe) => self.on_subscribe(subscribe).await?,
            Packet::Unsubscribe(unsubscribe) => self.on_unsubscribe(unsubscribe).await?,
            Packet::PingReq => self.write(&Packet::PingResp)?,
            Packet::Disconnect(disconnect) => return self.on_disconnect(&disconnect).map(Some),
            // [MQTT-3.1.0-2]: a second CONNECT is a Protocol Error; enhanced authentication (AUTH) is
            // not supported; the rest are packets only a server sends.
            Packet::Connect(_)
            | Packet::Auth(_)
            | Packet::ConnAck(_)
            | Packet::SubAck(_)
            | Packet::UnsubAck(_)
            | Packet::PingResp => {
                return Err(ConnectionError::Protocol(ReasonCode::ProtocolError));
            }
        }
        Ok(None)
    }

    async fn on_publish(&mut self, publish: Publish) -> Result<(), ConnectionError> {
        let qos = publish.delivery.qos();
        if qos > self.config.maximum_qos {
            return Err(ConnectionError::Protocol(ReasonCode::QosNotSupported)); // [MQTT-3.2.2-11]
        }
        let topic = match (&publish.topic, publish.properties.topic_alias) {
            (topic, Some(alias)) => {
                if alias.get() > self.config.topic_alias_maximum {
                    return Err(ConnectionError::Protocol(ReasonCode::TopicAliasInvalid));
                }
                match topic {
                    Some(topic) => {
                        self.aliases.insert(alias.get(), topic.clone());
                        topic.clone()
                    }
                    None => self
                        .aliases
                        .get(&alias.get())
                        .cloned()
                        .ok_or(ConnectionError::Protocol(ReasonCode::ProtocolError))?,
                }
            }
            (Some(topic), None) => topic.clone(),
            (None, None) => return Err(ConnectionError::Protocol(ReasonCode::ProtocolError)),
        };
        let packet_id = publish.delivery.packet_id();
        if let Some(id) = packet_id {
            if qos == QoS::ExactlyOnce && self.state.inbound_qos2.contains(&id) {
                // A resent QoS 2 PUBLISH that was already routed: acknowledge again, never route twice.
                if !self.inbound.iter().any(|p| p.packet_id == id) {
                    self.write(&Packet::PubRec(PubRec::new(id)))?;
                }
                return Ok(());
            }
            let unacknowledged = self.inbound.iter().filter(|p| p.qos == QoS::AtLeastOnce).count()
                + self.state.inbound_qos2.len();
            if unacknowledged >= usize::from(self.config.receive_maximum.get()) {
                return Err(ConnectionError::Protocol(ReasonCode::ReceiveMaximumExceeded));
            }
        }
        if !self.identity.may_publish(&topic) {
            counters::publish_denied();
            tracing::debug!(topic = %topic, "publish denied by acl");
            // v5 says so in the acknowledgement; v3.1.1 cannot, so the message is dropped silently.
            let reason = if self.v5() { ReasonCode::NotAuthorized } else { ReasonCode::Success };
            match (publish.delivery, packet_id) {
                (Delivery::AtLeastOnce { .. }, Some(id)) => {
                    self.write(&Packet::PubAck(PubAck { reason_code: reason, ..PubAck::new(id) }))?;
                }
                (Delivery::ExactlyOnce { .. }, Some(id)) => {
                    if !self.v5() {
                        // The client will send PUBREL: remember the identifier to complete the flow.
                        self.state.inbound_qos2.insert(id);
                    }
                    self.write(&Packet::PubRec(PubRec { reason_code: reason, ..PubRec::new(id) }))?;
                }
                _ => {}
            }
            return Ok(());
        }
        let message = Arc::new(Message::from_publish(topic, publish));
        let expires_at = message.expires_at(Instant::now());
        let publisher = Some(self.session);
        let accepted = match packet_id {
            None => None,
            Some(packet_id) => {
                let (tx, rx) = oneshot::channel();
                self.inbound.push_back(PendingAck { packet_id, qos, accepted: rx });
                if qos == QoS::ExactlyOnce {
                    self.state.inbound_qos2.insert(packet_id);
                }
                Some(tx)
            }
        };
        // Waiting here while the broker's queue is full stops reading the socket: back-pressure.
        self.handle
            .send(Command::Publish { message, expires_at, publisher, accepted })
            .await
            .map_err(|_| ConnectionError::BrokerStopped)
    }

    fn on_puback(&mut self, packet_id: PacketId) {
        self.complete(packet_id, Awaiting::PubAck);
    }

    fn on_pubcomp(&mut self, packet_id: PacketId) {
        self.complete(packet_id, Awaiting::PubComp);
    }

    /// Forgets the in-flight message `packet_id` if it is at `stage`; the window gets room.
    fn complete(&mut self, packet_id: PacketId, stage: Awaiting) {
        match self.state.inflight.iter().position(|f| f.packet_id == packet_id && f.stage == stage)
        {
            Some(index) => {
                self.state.inflight.remove(index);
            }
            None => tracing::debug!(%packet_id, ?stage, "acknowledgement for unknown packet id"),
        }
    }

    fn on_pubrec(&mut self, rec: &PubRec) -> Result<(), ConnectionError> {
        let id = rec.packet_id;
        let found = self.state.inflight.iter().position(|f| {
            f.packet_id == id && matches!(f.stage, Awaiting::PubRec | Awaiting::PubComp)
        });
        let Some(index) = found else {
            let mut rel = PubRel::new(id);
            if self.v5() {
                rel.reason_code = ReasonCode::PacketIdentifierNotFound;
            }
            return self.write(&Packet::PubRel(rel));
        };
        if rec.reason_code.is_error() {
            // §4.3.3: a PUBREC with an error ends the exchange.
            self.state.inflight.remove(index);
            return Ok(());
        }
        if let Some(flight) = self.state.inflight.get_mut(index) {
            flight.stage = Awaiting::PubComp;
        }
        self.write(&Packet::PubRel(PubRel::new(id)))
    }

    fn on_pubrel(&mut self, packet_id: PacketId) -> Result<(), ConnectionError> {
        let mut comp = PubComp::new(packet_id);
        if !self.state.inbound_qos2.remove(&packet_id) && self.v5() {
            comp.reason_code = ReasonCode::PacketIdentifierNotFound;
        }
        self.write(&Packet::PubComp(comp))
    }

    async fn on_subscribe(&mut self, subscribe: Subscribe) -> Result<(), ConnectionError> {
        let id = subscribe.properties.subscription_identifiers.first().copied();
        let mut codes = Vec::with_capacity(subscribe.subscriptions.len());
        let mut requests = Vec::new();
        let mut positions = Vec::new();
        for subscription in subscribe.subscriptions {
            if !self.identity.may_subscribe(&subscription.filter) {
                tracing::debug!(filter = %subscription.filter, "subscribe denied by acl");
                codes.push(ReasonCode::NotAuthorized); // v3.1.1: 0x80 Failure
                continue;
            }
            let qos = subscription.options.qos.min(self.config.maximum_qos);
            codes.push(match qos {
                QoS::AtMostOnce => ReasonCode::Success,
                QoS::AtLeastOnce => ReasonCode::GrantedQos1,
                QoS::ExactlyOnce => ReasonCode::GrantedQos2,
            });
            positions.push(codes.len() - 1);
            requests.push(SubscribeRequest {
                filter: subscription.filter,
                options: SubOptions {
                    qos,
                    no_local: subscription.options.no_local,
                    retain_as_published: subscription.options.retain_as_published,
                    id,
                },
                retain_handling: subscription.options.retain_handling,
            });
        }
        let mut retained = Vec::new();
        if !requests.is_empty() {
            let (reply, rx) = oneshot::channel();
            self.handle
                .send(Command::Subscribe { session: self.session, requests, reply })
                .await
                .map_err(|_| ConnectionError::BrokerStopped)?;
            let results = rx.await.map_err(|_| ConnectionError::BrokerStopped)?;
            for (position, result) in positions.into_iter().zip(results) {
                match result {
                    Ok(messages) => retained.extend(messages),
                    Err(code) => {
                        if let Some(slot) = codes.get_mut(position) {
                            *slot = code;
                        }
                    }
                }
            }
        }
        self.write(&Packet::SubAck(SubAck {
            packet_id: subscribe.packet_id,
            properties: mqtt_codec::Properties::default(),
            reason_codes: codes,
        }))?;
        // Retained messages follow the SUBACK.
        for out in retained {
            self.enqueue(out)?;
        }
        Ok(())
    }

    async fn on_unsubscribe(&mut self, unsubscribe: Unsubscribe) -> Result<(), ConnectionError> {
        let (reply, rx) = oneshot::channel();
        self.handle
            .send(Command::Unsubscribe {
                session: self.session,
                filters: unsubscribe.filters,
                reply,
            })
            .await
            .map_err(|_| ConnectionError::BrokerStopped)?;
        let existed = rx.await.map_err(|_| ConnectionError::BrokerStopped)?;
        let reason_codes = existed
            .into_iter()
            .map(|e| if e { ReasonCode::Success } else { ReasonCode::NoSubscriptionExisted })
            .collect();
        self.write(&Packet::UnsubAck(UnsubAck {
            packet_id: unsubscribe.packet_id,
            properties: mqtt_codec::Properties::default(),
            reason_codes,
        }))
    }

    fn on_disconnect(&mut self, disconnect: &Disconnect) -> Result<End, ConnectionError> {
        if let Some(expiry) = disconnect.properties.session_expiry_interval {
            if self.session_expiry == 0 && expiry != 0 {
                // [MQTT-3.14.2-2]: a session that was to end with its connection cannot be extended.
                return Err(ConnectionError::Protocol(ReasonCode::ProtocolError));
            }
            self.session_expiry = expiry.min(self.config.max_session_expiry);
        }
        // [MQTT-3.1.2-10]: only a normal disconnection (0x00) deletes the will.
        Ok(End::Client { publish_will: disconnect.reason_code != ReasonCode::Success })
    }

    /// Takes a message from the broker, by the slow-consumer policy in the module documentation.
    fn enqueue(&mut self, out: Outbound) -> Result<(), ConnectionError> {
        if out.expires_at.is_some_and(|at| at <= Instant::now()) {
            counters::dropped(DropReason::Expired, out.qos);
            return Ok(());
        }
        if out.qos == QoS::AtMostOnce {
            if self.out_buf.len() >= self.config.outbound_buffer_high_water {
                counters::dropped(DropReason::SlowConsumer, out.qos);
                return Ok(());
            }
            let publish = Self::outbound_publish(&out, Delivery::AtMostOnce);
            self.write_publish(&publish, out.qos)?;
            return Ok(());
        }
        if self.state.queue.len() >= self.config.max_queued_messages {
            counters::dropped(DropReason::QueueFull, out.qos);
            return Ok(());
        }
        self.state.queue.push_back(out);
        Ok(())
    }

    /// Moves queued QoS 1 and 2 messages into flight while the window and the write buffer have room.
    fn pump(&mut self) -> Result<(), ConnectionError> {
        while self.state.inflight.len() < self.send_window
            && self.out_buf.len() < self.config.outbound_buffer_high_water
        {
            let Some(out) = self.state.queue.pop_front() else { break };
            if out.expires_at.is_some_and(|at| at <= Instant::now()) {
                counters::dropped(DropReason::Expired, out.qos);
                continue;
            }
            let packet_id = self.state.next_packet_id();
            let (delivery, stage) = match out.qos {
                QoS::ExactlyOnce => {
                    (Delivery::ExactlyOnce { packet_id, dup: false }, Awaiting::PubRec)
                }
                _ => (Delivery::AtLeastOnce { packet_id, dup: false }, Awaiting::PubAck),
            };
            let publish = Self::outbound_publish(&out, delivery);
            if self.write_publish(&publish, out.qos)? {
                self.state.inflight.push_back(InFlight { packet_id, out, stage });
            }
        }
        Ok(())
    }

    /// Resends what a resumed session left in flight, with DUP set (§4.4).
    fn resend_inflight(&mut self) -> Result<(), ConnectionError> {
        let flights: Vec<(PacketId, Awaiting, Outbound)> =
            self.state.inflight.iter().map(|f| (f.packet_id, f.stage, f.out.clone())).collect();
        for (packet_id, stage, out) in flights {
            match stage {
                Awaiting::PubAck => {
                    let delivery = Delivery::AtLeastOnce { packet_id, dup: true };
                    let publish = Self::outbound_publish(&out, delivery);
                    self.write_publish(&publish, out.qos)?;
                }
                Awaiting::PubRec => {
                    let delivery = Delivery::ExactlyOnce { packet_id, dup: true };
                    let publish = Self::outbound_publish(&out, delivery);
                    self.write_publish(&publish, out.qos)?;
                }
                Awaiting::PubComp => self.write(&Packet::PubRel(PubRel::new(packet_id)))?,
            }
        }
        Ok(())
    }

    /// The PUBLISH that delivers `out` to this client.
    fn outbound_publish(out: &Outbound, delivery: Delivery) -> Publish {
        let mut properties = out.message.properties.clone();
        properties.subscription_identifiers.clone_from(&out.subscription_ids);
        if let Some(at) = out.expires_at {
            // [MQTT-3.3.2-6]: the interval sent is what remains of it.
            let remaining = at.saturating_duration_since(Instant::now());
            let seconds = remaining.as_millis().div_ceil(1000);
            properties.message_expiry_interval = Some(u32::try_from(seconds).unwrap_or(u32::MAX));
        }
        Publish {
            delivery,
            retain: out.retain,
            topic: Some(out.message.topic.clone()),
            properties,
            payload: out.message.payload.clone(),
        }
    }

    /// Encodes `publish` unless it is larger than the client accepts ([MQTT-3.1.2-25]: then it is
    /// dropped as if delivered). Returns whether it was written.
    fn write_publish(&mut self, publish: &Publish, qos: QoS) -> Result<bool, ConnectionError> {
        let packet = Packet::Publish(publish.clone());
        let len = mqtt_codec::encoded_len(&packet, self.version)?;
        if u64::try_from(len).unwrap_or(u64::MAX) > u64::from(self.peer_max_packet_size) {
            counters::dropped(DropReason::TooLarge, qos);
            return Ok(false);
        }
        self.write(&packet)?;
        counters::sent(qos);
        Ok(true)
    }

    /// Appends `packet` to the write buffer.
    fn write(&mut self, packet: &Packet) -> Result<(), ConnectionError> {
        mqtt_codec::encode(packet, self.version, &mut self.out_buf)?;
        Ok(())
    }

    /// Ends the connection: the last DISCONNECT (v5), the session back to the broker, the flush.
    async fn finish(
        mut self,
        end: End,
        will: Option<WillMessage>,
        conn_id: u64,
    ) -> Result<(), ConnectionError> {
        let ended = disconnect_reason(&end);
        let (reason, publish_will, result) = match end {
            End::Client { publish_will } => (None, publish_will, Ok(())),
            End::TakenOver => (Some(ReasonCode::SessionTakenOver), true, Ok(())),
            End::Shutdown => (Some(ReasonCode::ServerShuttingDown), true, Ok(())),
            // Server-initiated: the will is published ([MQTT-3.1.2-8]); v3.1.1 just closes.
            End::Server(reason) => (Some(reason), true, Ok(())),
            End::Error(error) => {
                let reason = match &error {
                    ConnectionError::Protocol(code) => Some(*code),
                    ConnectionError::Decode(decode) => Some(decode.reason_code()),
                    ConnectionError::KeepAliveTimeout => Some(ReasonCode::KeepAliveTimeout),
                    _ => None,
                };
                (reason, true, Err(error))
            }
        };
        tracing::debug!(?reason, "disconnecting");
        if let Some(reason) = reason
            && self.v5()
        {
            let _ = self.write(&Packet::Disconnect(Disconnect::new(reason)));
        }
        // Hand the session back before flushing, so a takeover does not wait on a slow socket. Messages
        // still in the channel join the queue; anything routed after `close` goes to the broker's copy.
        self.outbound_rx.close();
        while let Ok(out) = self.outbound_rx.try_recv() {
            if out.qos == QoS::AtMostOnce {
                counters::dropped(DropReason::Offline, out.qos);
            } else {
                self.state.queue.push_back(out);
            }
        }
        // Before the hand-over, so that the connection taking the session over reports `Connected`
        // after this (see the `events` module).
        counters::connection_closed();
        self.handle.emit(ConnectionEvent::Disconnected {
            client_id: self.client_id.clone(),
            reason: ended,
        });
        let state = std::mem::take(&mut self.state);
        let disconnected = Disconnected {
            session: self.session,
            conn_id,
            state,
            will: if publish_will { will } else { None },
            session_expiry: self.session_expiry,
        };
        let _ = self.handle.send(Command::Disconnected(disconnected)).await;
        let close_timeout = self.config.close_timeout;
        let pending = self.out_buf.len();
        let flushed = timeout(close_timeout, async {
            self.writer.write_all(&self.out_buf).await?;
            self.writer.shutdown().await
        })
        .await;
        if matches!(flushed, Ok(Ok(()))) {
            counters::bytes_sent(pending);
        }
        result
    }
}

/// Why the main loop's `end` ended the connection, as reported in [`ConnectionEvent::Disconnected`].
fn disconnect_reason(end: &End) -> DisconnectReason {
    match end {
        End::Client { .. } => DisconnectReason::Clean,
        End::TakenOver => DisconnectReason::TakenOver,
        End::Server(code) => DisconnectReason::Administrative(*code),
        End::Shutdown => DisconnectReason::ServerShutdown,
        End::Error(error) => match error {
            ConnectionError::KeepAliveTimeout => DisconnectReason::KeepAliveTimeout,
            ConnectionError::Decode(_) | ConnectionError::Protocol(_) => {
                DisconnectReason::ProtocolError
            }
            ConnectionError::ClosedByPeer => DisconnectReason::ConnectionLost,
            ConnectionError::Io(_) => DisconnectReason::IoError,
            ConnectionError::ConnectTimeout
            | ConnectionError::Encode(_)
            | ConnectionError::Refused(_)
            | ConnectionError::BrokerStopped => DisconnectReason::Error,
        },
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
