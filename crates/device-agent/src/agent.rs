//! The device task: one connection at a time, reconnection with back-off, QoS 1 bookkeeping,
//! subscriptions and the journal.
//!
//! [`Agent::run`] loops over connection attempts. A connected session resends what the previous
//! connection left unacknowledged (DUP), then publishes from the offline buffer, keeping at most
//! [`MAX_INFLIGHT`] (or the server's Receive Maximum) messages unacknowledged; everything else
//! waits in the buffer, so the buffer is both the offline queue and the flow-control queue.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::time::Duration;

use bytes::Bytes;
use mqtt_codec::{
    ConnAck, Connect, Delivery, Disconnect, Packet, PacketId, ProtocolVersion, PubAck, PubComp,
    PubRec, Publish, QoS, ReasonCode, Subscribe, Subscription, SubscriptionOptions, TopicName,
};
use rand::rngs::StdRng;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, Interval};

use crate::backoff::backoff_delay;
use crate::config::Validated;
use crate::device::{Command, Renewed, Stats};
use crate::error::AgentError;
use crate::journal::{Journal, Record};
use crate::link::{Link, LinkError};
use crate::message::{Channel, Incoming};
use crate::offline_buffer::OfflineBuffer;

/// The most QoS 1 messages left unacknowledged at once (fewer if the server's Receive Maximum says so).
pub(crate) const MAX_INFLIGHT: u16 = 32;

/// How long opening the connection (TCP, TLS and WebSocket handshakes) and the wait for CONNACK
/// may each take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A message to publish at QoS 1.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub(crate) channel: Channel,
    pub(crate) payload: Bytes,
    /// Its sequence number in the journal, when it is written there.
    pub(crate) seq: Option<u64>,
}

impl Outgoing {
    pub(crate) fn new(channel: Channel, payload: Bytes) -> Self {
        Self { channel, payload, seq: None }
    }

    /// The journal's form: a channel byte and the bytes to store (for [`Channel::Other`], the
    /// subtopic's length (u16, big-endian) and the subtopic before the payload).
    fn to_record(&self) -> (u8, Bytes) {
        match &self.channel {
            Channel::Telemetry => (0, self.payload.clone()),
            Channel::Events => (1, self.payload.clone()),
            Channel::Facts => (2, self.payload.clone()),
            Channel::Heartbeat => (3, self.payload.clone()),
            Channel::Other(sub) => {
                let len = u16::try_from(sub.0.len()).expect("a topic is at most 65,535 bytes");
                let mut bytes = Vec::with_capacity(2 + sub.0.len() + self.payload.len());
                bytes.extend_from_slice(&len.to_be_bytes());
                bytes.extend_from_slice(sub.0.as_bytes());
                bytes.extend_from_slice(&self.payload);
                (4, Bytes::from(bytes))
            }
        }
    }

    /// The message a journal record holds; `None` for a record this version cannot read.
    pub(crate) fn from_record(record: Record) -> Option<Self> {
        let channel = match record.channel {
            0 => Channel::Telemetry,
            1 => Channel::Events,
            2 => Channel::Facts,
            3 => Channel::Heartbeat,
            4 => {
                let bytes = &record.payload;
                let len = usize::from(u16::from_be_bytes([*bytes.first()?, *bytes.get(1)?]));
                let sub = std::str::from_utf8(bytes.get(2..2 + len)?).ok()?;
                let channel = Channel::subtopic(sub).ok()?;
                let payload = record.payload.slice(2 + len..);
                return Some(Self { channel, payload, seq: Some(record.seq) });
            }
            _ => return None,
        };
        Some(Self { channel, payload: record.payload, seq: Some(record.seq) })
    }
}

/// A message sent at QoS 1 and not yet acknowledged.
#[derive(Debug)]
struct InFlight {
    packet_id: PacketId,
    message: Outgoing,
}

/// The device task's state; lives across connections.
#[derive(Debug)]
pub(crate) struct Agent {
    config: Validated,
    /// Requests from the handles; closes when every handle is dropped.
    commands: mpsc::Receiver<Command>,
    /// Where messages from subscriptions go; `None` or closed: they are acknowledged and dropped.
    inbox: Option<mpsc::Sender<Incoming>>,
    /// The SUBSCRIBE waiting for its SUBACK on the current connection.
    subscribing: Option<PacketId>,
    /// Published after every change; read by the handles.
    stats: watch::Sender<Stats>,
    pending: OfflineBuffer,
    /// The on-disk copy of `pending` and `inflight`, when configured.
    journal: Option<Journal>,
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
        inbox: Option<mpsc::Sender<Incoming>>,
        stats: watch::Sender<Stats>,
        rng: StdRng,
        journal: Option<(Journal, Vec<Record>)>,
    ) -> Self {
        let mut pending = OfflineBuffer::new(config.offline_buffer_capacity);
        let journal = journal.map(|(journal, records)| {
            for record in records {
                match Outgoing::from_record(record) {
                    Some(message) => {
                        let _ = pending.push(message);
                    }
                    None => tracing::warn!("skipping a journal record of an unknown kind"),
                }
            }
            journal
        });
        let buffered = pending.len() as u64;
        stats.send_modify(|s| s.buffered = buffered);
        Self {
            journal,
            config,
            commands,
            inbox,
            subscribing: None,
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
            // Boxed: the connection attempt (TLS and WebSocket handshakes) is large and short-lived,
            // and would otherwise make every idle device's task that much larger.
            match Box::pin(self.connect()).await {
                Ok((mut link, connack)) => {
                    attempt = 0;
                    let reconnect = ever_connected;
                    ever_connected = true;
                    self.stats.send_modify(|s| {
                        s.connected = true;
                        s.reconnects += u64::from(reconnect);
                        s.sessions_resumed += u64::from(connack.session_present);
                    });
                    tracing::info!(session_present = connack.session_present, "connected");
                    let ended = self.session(&mut link, &connack).await;
                    self.stats.send_modify(|s| {
                        s.connected = false;
                        s.subscribed = false;
                    });
                    match ended {
                        Ok(()) => return Ok(()),
                        Err(LinkError::Severed(offline_for)) => {
                            tracing::info!(?offline_for, "connection cut on request");
                            if self.wait(offline_for).await.is_break() {
                                return Ok(());
                            }
                            continue;
                        }
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
        let mut link = tokio::time::timeout(CONNECT_TIMEOUT, Link::open(&self.config))
            .await
            .map_err(|_| LinkError::Timeout)??;
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
        self.subscribing = None;
        if !connack.session_present && !self.config.subscriptions.is_empty() {
            let packet_id = self.next_packet_id();
            self.subscribing = Some(packet_id);
            let subscriptions = self
                .config
                .subscriptions
                .iter()
                .map(|filter| Subscription {
                    filter: filter.clone(),
                    options: SubscriptionOptions { qos: QoS::AtLeastOnce, ..Default::default() },
                })
                .collect();
            let subscribe = Subscribe {
                packet_id,
                properties: mqtt_codec::Properties::default(),
                subscriptions,
            };
            link.send(&Packet::Subscribe(subscribe)).await?;
        }
        let subscribed = self.subscribing.is_none();
        self.stats.send_modify(|s| s.subscribed = subscribed);
        self.flush(link).await?;
        let mut ping = (self.config.keep_alive_secs > 0).then(|| {
            let period = Duration::from_secs(self.config.keep_alive_secs.into());
            tokio::time::interval_at(Instant::now() + period, period)
        });
        let mut ping_outstanding = false;
        loop {
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(Command::Publish(message)) => {
                        self.enqueue(message);
                        self.flush(link).await?;
                    }
                    Some(Command::Sever(offline_for)) => return Err(LinkError::Severed(offline_for)),
                    Some(Command::Renew(renewed)) => self.renew(renewed),
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
                    Packet::Publish(publish) => self.received(link, publish).await?,
                    Packet::PubRel(rel) => {
                        link.send(&Packet::PubComp(PubComp::new(rel.packet_id))).await?;
                    }
                    Packet::SubAck(ack) if Some(ack.packet_id) == self.subscribing => {
                        self.subscribing = None;
                        for (filter, code) in self.config.subscriptions.iter().zip(&ack.reason_codes) {
                            if code.is_error() {
                                tracing::warn!(filter = filter.as_str(), reason = ?code, "subscription refused");
                            }
                        }
                        self.stats.send_modify(|s| s.subscribed = true);
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

    /// Uses `renewed` from the next connection on.
    fn renew(&mut self, renewed: Renewed) {
        match renewed {
            Renewed::Password(secret) => self.config.password = secret,
            Renewed::Transport(dialer) => self.config.transport = *dialer,
        }
        tracing::info!("login material renewed; used from the next connection");
    }

    /// Waits `delay` between attempts, buffering telemetry meanwhile; breaks on shutdown.
    async fn wait(&mut self, delay: Duration) -> ControlFlow<()> {
        let deadline = tokio::time::sleep(delay);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                () = &mut deadline => return ControlFlow::Continue(()),
                command = self.commands.recv() => match command {
                    Some(Command::Publish(message)) => self.enqueue(message),
                    // Already offline.
                    Some(Command::Sever(_)) => {}
                    Some(Command::Renew(renewed)) => self.renew(renewed),
                    Some(Command::Shutdown) | None => return ControlFlow::Break(()),
                },
            }
        }
    }

    /// Hands a message from a subscription to the inbox, then acknowledges it: a message is
    /// acknowledged only once the application has it (or has dropped its inbox).
    async fn received(&mut self, link: &mut Link, publish: Publish) -> Result<(), LinkError> {
        if let (Some(inbox), Some(topic)) = (&self.inbox, &publish.topic) {
            let incoming = Incoming {
                topic: topic.as_str().to_owned(),
                payload: publish.payload.clone(),
                response_topic: publish
                    .properties
                    .response_topic
                    .as_ref()
                    .map(|t| t.as_str().to_owned()),
                correlation_data: publish.properties.correlation_data.clone(),
            };
            if inbox.send(incoming).await.is_err() {
                self.inbox = None;
            }
            self.stats.send_modify(|s| s.received += 1);
        }
        match publish.delivery {
            Delivery::AtMostOnce => {}
            Delivery::AtLeastOnce { packet_id, .. } => {
                link.send(&Packet::PubAck(PubAck::new(packet_id))).await?;
            }
            // Subscriptions ask for QoS 1, but a resumed session may hold QoS 2 messages.
            Delivery::ExactlyOnce { packet_id, .. } => {
                link.send(&Packet::PubRec(PubRec::new(packet_id))).await?;
            }
        }
        Ok(())
    }

    fn enqueue(&mut self, mut message: Outgoing) {
        let mut dropped = 0u64;
        if let Some(journal) = &mut self.journal {
            let (channel, bytes) = message.to_record();
            match journal.append(channel, &bytes) {
                Ok((seq, discarded)) => {
                    message.seq = Some(seq);
                    // The journal is full: its oldest messages are gone, drop them here too
                    // (one already in flight stays there: it is sent).
                    if !discarded.is_empty() {
                        dropped += self
                            .pending
                            .remove_where(|m| m.seq.is_some_and(|seq| discarded.contains(&seq)))
                            as u64;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot write the message to the journal; it is kept in memory only");
                }
            }
        }
        if let Some(old) = self.pending.push(message) {
            dropped += 1;
            self.forget(old.seq);
        }
        let buffered = self.pending.len() as u64;
        self.stats.send_modify(|s| {
            s.dropped += dropped;
            s.buffered = buffered;
        });
    }

    /// Publishes buffered messages while the in-flight window has room.
    async fn flush(&mut self, link: &mut Link) -> Result<(), LinkError> {
        while self.inflight.len() < usize::from(self.inflight_limit) {
            let Some(message) = self.pending.pop() else { break };
            let message = InFlight { packet_id: self.next_packet_id(), message };
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

    /// Removes a message that is acknowledged or dropped from the journal.
    fn forget(&mut self, seq: Option<u64>) {
        if let (Some(journal), Some(seq)) = (&mut self.journal, seq)
            && let Err(error) = journal.ack(seq)
        {
            // The message may come back after a restart: a duplicate, never a loss.
            tracing::warn!(%error, "cannot record an acknowledgement in the journal");
        }
    }

    fn acknowledged(&mut self, packet_id: PacketId) {
        if let Some(i) = self.inflight.iter().position(|m| m.packet_id == packet_id) {
            let done = self.inflight.remove(i).map(|m| m.message.seq);
            self.forget(done.flatten());
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
                && self.subscribing != Some(id)
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

fn topic(config: &Validated, channel: &Channel) -> TopicName {
    let known = |i: usize| config.topics[i].clone();
    match channel {
        Channel::Telemetry => known(0),
        Channel::Events => known(1),
        Channel::Facts => known(2),
        Channel::Heartbeat => known(3),
        Channel::Other(sub) => TopicName::new(format!("{}{}", config.topic_prefix, sub.0))
            .expect("validated subtopic under a validated prefix"),
    }
}

fn publish(config: &Validated, message: &InFlight, dup: bool) -> Packet {
    let mut publish =
        Publish::new(topic(config, &message.message.channel), message.message.payload.clone());
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
