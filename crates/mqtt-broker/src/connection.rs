//! The connection task: one per client socket, generic over the byte stream so that TCP, TLS and
//! WebSocket share it.
//!
//! It reads the CONNECT within the connect timeout, authenticates it, asks the broker task for the
//! session (which may take it over from another connection), answers CONNACK, and then runs one
//! `select!` loop over the socket (read and written in one poll, `poll_io`), its mailbox from the
//! broker (messages, and the takeover or disconnect notice; a closed mailbox means the broker stopped,
//! at shutdown), the completions of inbound QoS 1 and 2 messages, and one timer (keep-alive, or the
//! end of a rate-limit pause). When the connection ends it hands the session state back to the
//! broker.
//!
//! Input flow control: the socket is not read while the write buffer is above half of
//! [`BrokerConfig::outbound_buffer_high_water`] (a client that does not read is slowed down by TCP)
//! or while [`BrokerConfig::publish_rate`] holds a PUBLISH back.
//!
//! Every packet from the client is checked against the [`Identity`] resolved at CONNECT: PUBLISH and
//! will topics against `may_publish`, SUBSCRIBE filters against `may_subscribe`.
//!
//! Outbound flow control: messages from the broker are taken off the mailbox at once. QoS 0 messages
//! are encoded straight into the write buffer, or dropped and counted when that buffer is above
//! [`BrokerConfig::outbound_buffer_high_water`]; QoS 1 and 2 messages wait in the session queue (bounded by
//! [`BrokerConfig::max_queued_messages`]) until the in-flight window, the smaller of the client's Receive
//! Maximum and [`BrokerConfig::max_inflight`], has room.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use mqtt_codec::{
    ClientId, ConnAck, Connect, DecodeError, Delivery, Disconnect, MAX_PACKET_SIZE, Packet,
    PacketId, ProtocolVersion, PubAck, PubComp, PubRec, PubRel, Publish, QoS, ReasonCode, SubAck,
    Subscribe, UnsubAck, Unsubscribe,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::oneshot;
use tokio::time::{Duration, Instant, timeout};
use tracing::Instrument;

use crate::broker::{
    Accepted, Command, ConnLink, ConnectReply, ConnectRequest, Control, Disconnected,
    SubscribeRequest, WillMessage,
};
use crate::counters::{self, DropReason};
use crate::events::{ConnectionEvent, DisconnectReason};
use crate::mailbox::{self, Received};
use crate::rate::TokenBucket;
use crate::session::{Awaiting, InFlight, Outbound, SessionState, SubscriberId};
use crate::topic_tree::SubOptions;
use crate::{Authenticator, BrokerConfig, BrokerHandle, ConnectionError, Identity, Message};

/// The size of each worker thread's scratch buffer for reads (see [`read_into`]).
const READ_SCRATCH: usize = 64 * 1024;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_SCRATCH].into_boxed_slice());
}

/// Serves one connection; see [`BrokerHandle::serve`].
///
/// `authenticator` is a reference or an owning pointer (`Arc`) to it.
pub(crate) fn serve<IO, A, R>(
    handle: BrokerHandle,
    io: IO,
    peer: Option<SocketAddr>,
    authenticator: R,
) -> impl Future<Output = Result<(), ConnectionError>> + Send
where
    IO: AsyncRead + AsyncWrite + Unpin + Send,
    A: Authenticator,
    R: Deref<Target = A> + Send + Sync,
{
    // Debug level: a span enabled at the default `info` level would cost every connection a few
    // hundred bytes for as long as it lives; the `info` lines of `serve_inner` carry their own
    // fields. Not an `async fn`, whose future would hold a second copy of `io`.
    let span = tracing::debug_span!(
        "mqtt_connection",
        peer = ?peer,
        client_id = tracing::field::Empty,
        identity = tracing::field::Empty,
    );
    serve_inner(handle, io, peer, authenticator).instrument(span)
}

/// The connection's three phases. The handshake and the finish are boxed: their futures are large
/// (the CONNECT, the authenticator's lookup) and short-lived, and the future of this function lives
/// as long as the connection, so it is kept to what the main loop needs.
async fn serve_inner<IO, A, R>(
    handle: BrokerHandle,
    io: IO,
    peer: Option<SocketAddr>,
    authenticator: R,
) -> Result<(), ConnectionError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send,
    A: Authenticator,
    R: Deref<Target = A> + Send + Sync,
{
    let (mut connection, will, conn_id) =
        match Box::pin(handshake(handle, io, peer, &*authenticator)).await {
            Ok(connected) => connected,
            Err(error) => {
                tracing::info!(?peer, error = %error, "connection closed before CONNACK");
                return Err(error);
            }
        };
    let end = connection.run().await;
    let client_id = connection.client_id.clone();
    let result = Box::pin(connection.finish(end, will, conn_id)).await;
    if let Err(error) = &result {
        tracing::info!(?peer, %client_id, error = %error, "connection ended abnormally");
    }
    result
}

/// Reads and answers the CONNECT, and takes the session from the broker.
async fn handshake<IO, A>(
    handle: BrokerHandle,
    io: IO,
    peer: Option<SocketAddr>,
    authenticator: &A,
) -> Result<(Connection<IO>, Option<WillMessage>, u64), ConnectionError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send,
    A: Authenticator,
{
    let config = handle.config_arc();
    let mut io = io;
    let mut in_buf = BytesMut::new();
    let max_packet_size = config.max_packet_size.get();
    let connect =
        match timeout(config.connect_timeout, read_connect(&mut io, &mut in_buf, max_packet_size))
            .await
        {
            Err(_) => return Err(ConnectionError::ConnectTimeout),
            Ok(Err(ConnectionError::Decode(
                error @ (DecodeError::UnsupportedProtocolVersion(_)
                | DecodeError::InvalidProtocolName),
            ))) => {
                // [MQTT-3.1.2-2]: answer with the v3.1.1 return code 1 (what every version understands).
                let connack = ConnAck::new(ReasonCode::UnsupportedProtocolVersion);
                write_now(&mut io, &Packet::ConnAck(connack), ProtocolVersion::V311, &config).await;
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
            write_now(&mut io, &packet, version, &config).await;
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
    let (outbound_tx, control_tx, mailbox) = mailbox::mailbox();
    let (reply_tx, reply_rx) = oneshot::channel();
    handle
        .send(Command::Connect(ConnectRequest {
            client_id: client_id.clone(),
            clean_start: connect.clean_start,
            session_expiry,
            identity: identity.clone(),
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
            write_now(&mut io, &packet, version, &config).await;
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
    let bucket = config.publish_rate.map(|rate| TokenBucket::new(rate, Instant::now()));
    // [MQTT-3.3.2-9]: never more aliases than the client accepts (none when it does not say).
    let out_alias_limit =
        connect.properties.topic_alias_maximum.unwrap_or(0).min(config.outbound_topic_aliases);
    let mut connection = Connection {
        handle,
        client_id,
        config,
        io,
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
        aliases: None,
        bucket: bucket.map(Box::new),
        held: None,
        resending: false,
        out_alias_limit,
        session_expiry,
        mailbox,
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
    Ok((connection, will, conn_id))
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
        let n = read_into(reader, buf).await?;
        if n == 0 {
            return Err(ConnectionError::ClosedByPeer);
        }
        counters::bytes_received(n);
    }
}

/// Reads what `reader` has, appending it to `buf`; returns the number of bytes read (0 at the end of
/// the stream).
async fn read_into<R: AsyncRead + Unpin>(reader: &mut R, buf: &mut BytesMut) -> io::Result<usize> {
    poll_fn(|cx| poll_read_into(cx, reader, buf)).await
}

/// Polls a read of what `reader` has into `buf`.
///
/// The read lands in the worker thread's scratch buffer and only what arrived is copied into `buf`,
/// so a connection waiting for input holds no buffer of its own: that is most of what an idle
/// connection would otherwise cost. Bytes are read and appended within one poll, or not at all.
fn poll_read_into<R: AsyncRead + Unpin>(
    cx: &mut Context<'_>,
    reader: &mut R,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    SCRATCH.with(|scratch| {
        // Never contended (one poll at a time per thread); if it were, a fresh buffer serves.
        let mut fallback;
        let mut borrowed = scratch.try_borrow_mut();
        let space: &mut [u8] = match &mut borrowed {
            Ok(scratch) => &mut scratch[..],
            Err(_) => {
                fallback = vec![0; READ_SCRATCH];
                &mut fallback
            }
        };
        let mut read = ReadBuf::new(space);
        match Pin::new(&mut *reader).poll_read(cx, &mut read) {
            Poll::Ready(Ok(())) => {
                buf.extend_from_slice(read.filled());
                Poll::Ready(Ok(read.filled().len()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => Poll::Pending,
        }
    })
}

/// Polls the socket for the main loop: a write of `out` (when `writing`), then a read into `input`
/// (when `reading`). One poll over the unsplit socket, instead of a future per direction over split
/// halves (which cost an allocation and a lock per operation).
///
/// Cancel-safe: progress is reported only by the poll that makes it.
fn poll_io<IO: AsyncRead + AsyncWrite + Unpin>(
    cx: &mut Context<'_>,
    io: &mut IO,
    input: &mut BytesMut,
    out: &[u8],
    reading: bool,
    writing: bool,
) -> Poll<Event> {
    if writing && let Poll::Ready(written) = Pin::new(&mut *io).poll_write(cx, out) {
        return Poll::Ready(Event::Written(written));
    }
    if reading && let Poll::Ready(read) = poll_read_into(cx, io, input) {
        return Poll::Ready(Event::Read(read));
    }
    Poll::Pending
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
    Control(Option<Control>),
    Read(std::io::Result<usize>),
    Written(std::io::Result<usize>),
    Outbound(Option<Outbound>),
    Accepted(Result<Accepted, oneshot::error::RecvError>),
    KeepAliveExpired,
    /// The rate limit lets the held PUBLISH through.
    Resume,
}

/// An inbound QoS 1 or 2 PUBLISH waiting for the broker to accept it.
#[derive(Debug)]
struct PendingAck {
    packet_id: PacketId,
    qos: QoS,
    accepted: oneshot::Receiver<Accepted>,
}

/// The topic aliases of a v5 connection (§3.3.2.3.4), boxed in [`Connection`] (kept small for
/// idle connections).
#[derive(Debug, Default)]
struct Aliases {
    /// Set by the client.
    inbound: HashMap<u16, mqtt_codec::TopicName>,
    /// Set by the broker, by topic.
    outbound: HashMap<mqtt_codec::TopicName, NonZeroU16>,
}

struct Connection<IO> {
    handle: BrokerHandle,
    client_id: ClientId,
    config: Arc<BrokerConfig>,
    /// The socket, not split: one poll (`poll_io`) reads and writes it.
    io: IO,
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
    /// Topic aliases in both directions (v5, §3.3.2.3.4); allocated when the first is set.
    aliases: Option<Box<Aliases>>,
    /// Whether in-flight messages of the resumed session wait for room in the window.
    resending: bool,
    /// The publish rate limit ([`BrokerConfig::publish_rate`]).
    bucket: Option<Box<TokenBucket>>,
    /// A PUBLISH over the rate limit, and when it may go.
    held: Option<Box<(Publish, Instant)>>,
    /// How many outbound aliases may be set: the client's Topic Alias Maximum, capped by
    /// [`BrokerConfig::outbound_topic_aliases`]; 0 on v3.1.1.
    out_alias_limit: u16,
    session_expiry: u32,
    /// Messages from the broker. Closed by `finish` before the state goes back to the broker.
    /// Messages and control notices (takeover, disconnect) from the broker.
    mailbox: mailbox::Receiver<Outbound>,
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
    /// mailbox and awaiting a `&mut oneshot::Receiver` lose no message; the keep-alive sleep is
    /// recreated from `self.last_packet` on every turn.
    async fn run(&mut self) -> End {
        loop {
            if let Err(error) = self.pump() {
                return End::Error(error);
            }
            self.handle.report_finished(&self.client_id, &mut self.state.finished).await;
            // Reads go through the thread's scratch buffer (`read_into`): only a partial packet
            // is kept between reads, and an idle connection holds no read buffer.
            if self.in_buf.is_empty() {
                self.in_buf = BytesMut::new();
            }
            // A client that does not read what it is sent is not read from either, until its
            // buffer drains: TCP then slows its publishing down, rather than the broker dropping
            // what it would send back (a client publishing to its own subscription, or
            // acknowledgements).
            // Half the mark, so that what one read brings in still fits below the mark.
            let reading = self.out_buf.len() < self.config.outbound_buffer_high_water / 2
                && self.held.is_none();
            // One timer: the keep-alive deadline, or, while the rate limit holds the client back,
            // when it may go on (keep-alive is suspended meanwhile: its PINGREQs wait unread).
            let (deadline, resumes) = match &self.held {
                Some(held) => (Some(held.1), true),
                None => (self.keep_alive.map(|k| self.last_packet + k), false),
            };
            let event = {
                let Self { io, in_buf, out_buf, mailbox, inbound, .. } = self;
                let writing = !out_buf.is_empty();
                // No shutdown branch: at shutdown the broker task stops and drops its end of every
                // mailbox, which ends the connection (`Received::Closed`).
                tokio::select! {
                    event = poll_fn(|cx| poll_io(cx, io, in_buf, out_buf, reading, writing)),
                        if reading || writing => event,
                    received = mailbox.recv() => match received {
                        Received::Control(control) => Event::Control(Some(control)),
                        Received::Message(out) => Event::Outbound(Some(out)),
                        Received::Closed => Event::Outbound(None),
                    },
                    accepted = async {
                        match inbound.front_mut() {
                            Some(pending) => (&mut pending.accepted).await,
                            None => std::future::pending().await,
                        }
                    }, if !inbound.is_empty() => Event::Accepted(accepted),
                    () = sleep_until_opt(deadline), if deadline.is_some() => {
                        if resumes { Event::Resume } else { Event::KeepAliveExpired }
                    }
                }
            };
            // Boxed: the handlers' futures are large and short-lived; the select above is what an idle
            // connection waits in.
            match Box::pin(self.on_event(event)).await {
                Ok(None) => {}
                Ok(Some(end)) => return end,
                Err(error) => return End::Error(error),
            }
        }
    }

    async fn on_event(&mut self, event: Event) -> Result<Option<End>, ConnectionError> {
        match event {
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
                if self.out_buf.is_empty() {
                    // Released (a written-out BytesMut cannot tell how large it was): an idle
                    // connection holds no write buffer.
                    self.out_buf = BytesMut::new();
                }
            }
            Event::Outbound(Some(out)) => {
                // Take everything already waiting: one turn of the loop for a burst. Pumping after
                // each keeps the window full before the queue's limit is applied.
                self.enqueue(out)?;
                self.pump()?;
                self.drain_mailbox()?;
            }
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
            Event::Resume => {
                if let Some(held) = self.held.take() {
                    self.last_packet = Instant::now();
                    if let Some(bucket) = &mut self.bucket {
                        // The token the wait was for.
                        let _ = bucket.take(self.last_packet);
                    }
                    self.on_publish(held.0).await?;
                }
                return self.process_input().await;
            }
        }
        Ok(None)
    }

    /// Decodes and handles every complete packet in the read buffer.
    ///
    /// A PUBLISH over the rate limit is held in `self.held` and decoding stops until
    /// [`Event::Resume`]; the rest stays in the buffer.
    async fn process_input(&mut self) -> Result<Option<End>, ConnectionError> {
        let max = self.config.max_packet_size.get();
        while self.held.is_none()
            && let Some(packet) = mqtt_codec::decode_buf(&mut self.in_buf, self.version, max)?
        {
            let now = Instant::now();
            self.last_packet = now;
            if let (Packet::Publish(publish), Some(bucket)) = (&packet, &mut self.bucket)
                && let Err(until) = bucket.take(now)
            {
                counters::publish_throttled();
                self.held = Some(Box::new((publish.clone(), until)));
                return Ok(None);
            }
            // Take what the broker has routed to this client meanwhile, so that a burst of input
            // (this client's own publications, say) does not overfill the mailbox.
            self.drain_mailbox()?;
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
                        self.aliases
                            .get_or_insert_default()
                            .inbound
                            .insert(alias.get(), topic.clone());
                        topic.clone()
                    }
                    None => self
                        .aliases
                        .as_ref()
                        .and_then(|aliases| aliases.inbound.get(&alias.get()))
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
                if let Some(flight) = self.state.inflight.remove(index) {
                    self.state.finish(&flight.out);
                }
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
            if let Some(flight) = self.state.inflight.remove(index) {
                self.state.finish(&flight.out);
            }
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

    /// Takes every message waiting in the mailbox (see [`Connection::enqueue`]).
    fn drain_mailbox(&mut self) -> Result<(), ConnectionError> {
        while let Some(out) = self.mailbox.try_recv() {
            self.enqueue(out)?;
            self.pump()?;
        }
        Ok(())
    }

    /// Takes a message from the broker, by the slow-consumer policy in the module documentation.
    fn enqueue(&mut self, out: Outbound) -> Result<(), ConnectionError> {
        if out.expires_at.is_some_and(|at| at <= Instant::now()) {
            counters::dropped(DropReason::Expired, out.qos);
            self.state.finish(&out);
            return Ok(());
        }
        if out.qos == QoS::AtMostOnce {
            if self.out_buf.len() >= self.config.outbound_buffer_high_water {
                counters::dropped(DropReason::SlowConsumer, out.qos);
                return Ok(());
            }
            let publish = Self::outbound_publish(&out, Delivery::AtMostOnce);
            self.write_publish(publish, out.qos)?;
            return Ok(());
        }
        if self.state.queue.len() >= self.config.max_queued_messages {
            counters::dropped(DropReason::QueueFull, out.qos);
            self.state.finish(&out);
            return Ok(());
        }
        self.state.queue.push_back(out);
        Ok(())
    }

    /// Moves queued QoS 1 and 2 messages into flight while the window and the write buffer have room.
    fn pump(&mut self) -> Result<(), ConnectionError> {
        if self.resending {
            self.resend_unsent()?;
            self.resending = self.state.inflight.iter().any(|f| !f.sent);
        }
        while self.state.inflight.len() < self.send_window
            && self.out_buf.len() < self.config.outbound_buffer_high_water
        {
            let Some(out) = self.state.queue.pop_front() else { break };
            if out.expires_at.is_some_and(|at| at <= Instant::now()) {
                counters::dropped(DropReason::Expired, out.qos);
                self.state.finish(&out);
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
            if self.write_publish(publish, out.qos)? {
                self.state.inflight.push_back(InFlight { packet_id, out, stage, sent: true });
            } else {
                self.state.finish(&out);
            }
        }
        Ok(())
    }

    /// Resends what a resumed session left in flight, with DUP set (§4.4).
    fn resend_inflight(&mut self) -> Result<(), ConnectionError> {
        for flight in &mut self.state.inflight {
            flight.sent = false;
        }
        self.resend_unsent()?;
        self.resending = self.state.inflight.iter().any(|f| !f.sent);
        Ok(())
    }

    /// Resends, oldest first, the in-flight messages of a resumed session that have not gone out
    /// on this connection, as far as the client's Receive Maximum allows ([MQTT-3.3.4-9]: a
    /// client that reconnects with a smaller one is never sent more); PUBRELs count too, since
    /// their messages are not yet completely acknowledged.
    fn resend_unsent(&mut self) -> Result<(), ConnectionError> {
        let mut outstanding = self.state.inflight.iter().filter(|f| f.sent).count();
        while outstanding < self.send_window {
            let Some(flight) = self.state.inflight.iter_mut().find(|f| !f.sent) else { break };
            flight.sent = true;
            let (packet_id, stage, out) = (flight.packet_id, flight.stage, flight.out.clone());
            outstanding += 1;
            match stage {
                Awaiting::PubAck => {
                    let delivery = Delivery::AtLeastOnce { packet_id, dup: true };
                    let publish = Self::outbound_publish(&out, delivery);
                    self.write_publish(publish, out.qos)?;
                }
                Awaiting::PubRec => {
                    let delivery = Delivery::ExactlyOnce { packet_id, dup: true };
                    let publish = Self::outbound_publish(&out, delivery);
                    self.write_publish(publish, out.qos)?;
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
    ///
    /// With outbound topic aliases (v5), the first message to a topic carries the topic and a new
    /// alias, later ones the alias and an empty topic (§3.3.2.3.4). An alias is recorded only once its
    /// PUBLISH is written, so the client always learns it before it sees it used.
    fn write_publish(&mut self, mut publish: Publish, qos: QoS) -> Result<bool, ConnectionError> {
        let mut new_alias = None;
        if self.out_alias_limit > 0
            && let Some(topic) = &publish.topic
        {
            let set = self.aliases.as_ref().map(|aliases| &aliases.outbound);
            let used = set.map_or(0, HashMap::len);
            if let Some(&alias) = set.and_then(|set| set.get(topic)) {
                publish.properties.topic_alias = Some(alias);
                publish.topic = None;
            } else if used < usize::from(self.out_alias_limit) {
                let next = u16::try_from(used + 1).ok().and_then(NonZeroU16::new);
                if let Some(alias) = next {
                    publish.properties.topic_alias = Some(alias);
                    new_alias = Some((topic.clone(), alias));
                }
            }
        }
        let packet = Packet::Publish(publish);
        let len = mqtt_codec::encoded_len(&packet, self.version)?;
        if u64::try_from(len).unwrap_or(u64::MAX) > u64::from(self.peer_max_packet_size) {
            counters::dropped(DropReason::TooLarge, qos);
            return Ok(false);
        }
        self.write(&packet)?;
        if let Some((topic, alias)) = new_alias {
            self.aliases.get_or_insert_default().outbound.insert(topic, alias);
        }
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
        self.mailbox.close();
        while let Some(out) = self.mailbox.try_recv() {
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
            self.io.write_all(&self.out_buf).await?;
            self.io.shutdown().await
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
