//! Integration tests of `mqtt-broker`: the broker runs in-process and tiny clients built on
//! `mqtt-codec` talk to it over `tokio::io::duplex` (or TCP for the interop tests). Tests are named
//! after the specification statements they check.
#![expect(clippy::unwrap_used, reason = "test code: an unexpected error fails the test")]

mod connect;
mod handle;
mod interop;
mod persist;
mod publish;
mod qos;
mod retained;
mod session;
mod subscribe;
mod will;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use mqtt_broker::{Acl, AllowAll, Authenticator, Broker, BrokerConfig, BrokerHandle, Identity};
use mqtt_codec::{
    ClientId, ConnAck, Connect, Delivery, Disconnect, MAX_PACKET_SIZE, Packet, PacketId,
    Properties, ProtocolVersion, PubAck, Publish, QoS, ReasonCode, SubAck, Subscribe, Subscription,
    SubscriptionOptions, TopicFilter, TopicName,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub(crate) use mqtt_codec::ProtocolVersion::{V5, V311};

/// How long a test waits for something that should happen. Tests run with paused time, so this costs
/// nothing when the event comes and only virtual time when it does not.
const WAIT: Duration = Duration::from_secs(120);

/// How long a test listens to conclude that nothing more arrives.
const SILENCE: Duration = Duration::from_secs(5);

/// A broker running in the test's runtime; stopped on drop.
pub(crate) struct TestBroker {
    pub(crate) handle: BrokerHandle,
    shutdown: CancellationToken,
    auth: Arc<TestAuth>,
    task: JoinHandle<()>,
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.task.abort();
    }
}

impl TestBroker {
    pub(crate) fn start() -> Self {
        Self::with_config(BrokerConfig::default())
    }

    pub(crate) fn with_config(config: BrokerConfig) -> Self {
        Self::with_auth(config, TestAuth::AllowAll)
    }

    pub(crate) fn with_auth(config: BrokerConfig, auth: TestAuth) -> Self {
        let shutdown = CancellationToken::new();
        let (broker, handle) = Broker::new(config, shutdown.clone());
        let task = tokio::spawn(broker.run());
        Self { handle, shutdown, auth: Arc::new(auth), task }
    }

    /// A new in-memory connection to the broker, served by a spawned task.
    pub(crate) fn socket(&self, buffer: usize) -> DuplexStream {
        let (client, server) = tokio::io::duplex(buffer);
        let handle = self.handle.clone();
        let auth = Arc::clone(&self.auth);
        tokio::spawn(async move {
            let _ = handle.serve(server, None, auth.as_ref()).await;
        });
        client
    }

    /// A client connected with `connect`, and its CONNACK.
    pub(crate) async fn connect_with(&self, connect: Connect) -> (Client, ConnAck) {
        let mut client = Client::new(self.socket(64 * 1024), connect.protocol_version);
        client.send(Packet::Connect(Box::new(connect))).await;
        match client.recv().await {
            Packet::ConnAck(connack) => (client, connack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// A client connected with a clean start, checked to be accepted.
    pub(crate) async fn connect(&self, version: ProtocolVersion, client_id: &str) -> Client {
        let (client, connack) = self.connect_with(connect(version, client_id)).await;
        assert_eq!(connack.reason_code, ReasonCode::Success);
        client
    }
}

/// The authenticators the tests use.
pub(crate) enum TestAuth {
    AllowAll,
    /// Refuses every client with this code.
    Refuse(ReasonCode),
    /// Allows publishing and subscribing only under this prefix.
    Prefix(&'static str),
    /// Allows publishing and subscribing only under the client's user name (a prefix such as
    /// `a/`; everything without one).
    PrefixFromUserName,
}

#[derive(Debug)]
struct PrefixAcl(String);

impl Acl for PrefixAcl {
    fn may_publish(&self, topic: &TopicName) -> bool {
        topic.as_str().starts_with(&self.0)
    }

    fn may_subscribe(&self, filter: &TopicFilter) -> bool {
        filter.share_name().is_none() && filter.filter().starts_with(&self.0)
    }
}

impl Authenticator for TestAuth {
    async fn authenticate(
        &self,
        connect: &Connect,
        peer: Option<std::net::SocketAddr>,
    ) -> Result<Identity, ReasonCode> {
        match self {
            Self::AllowAll => AllowAll.authenticate(connect, peer).await,
            Self::Refuse(code) => Err(*code),
            Self::Prefix(prefix) => {
                Ok(Identity::new("device", Arc::new(PrefixAcl((*prefix).to_owned()))))
            }
            Self::PrefixFromUserName => {
                let prefix = connect.username.as_ref().map_or("", |u| u.as_str()).to_owned();
                Ok(Identity::new(prefix.clone(), Arc::new(PrefixAcl(prefix))))
            }
        }
    }
}

/// A CONNECT with a clean start and keep-alive off.
pub(crate) fn connect(version: ProtocolVersion, client_id: &str) -> Connect {
    Connect::new(version, ClientId::new(client_id).unwrap(), 0)
}

pub(crate) fn topic(s: &str) -> TopicName {
    TopicName::new(s).unwrap()
}

pub(crate) fn filter(s: &str) -> TopicFilter {
    TopicFilter::new(s).unwrap()
}

pub(crate) fn pid(n: u16) -> PacketId {
    PacketId::new(n).unwrap()
}

pub(crate) fn sub_id(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

/// A PUBLISH of `payload` to `topic_name` with `qos` and packet id `id` (ignored for QoS 0).
pub(crate) fn publish(topic_name: &str, payload: &'static str, qos: QoS, id: u16) -> Publish {
    let mut p = Publish::new(topic(topic_name), Bytes::from_static(payload.as_bytes()));
    p.delivery = match qos {
        QoS::AtMostOnce => Delivery::AtMostOnce,
        QoS::AtLeastOnce => Delivery::AtLeastOnce { packet_id: pid(id), dup: false },
        QoS::ExactlyOnce => Delivery::ExactlyOnce { packet_id: pid(id), dup: false },
    };
    p
}

/// A SUBSCRIBE to one filter with `options`.
pub(crate) fn subscribe_packet(id: u16, f: &str, options: SubscriptionOptions) -> Subscribe {
    Subscribe {
        packet_id: pid(id),
        properties: Properties::default(),
        subscriptions: vec![Subscription { filter: filter(f), options }],
    }
}

pub(crate) fn qos_options(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions { qos, ..SubscriptionOptions::default() }
}

/// A test client: sends packets and reads what the broker sends back.
pub(crate) struct Client {
    io: DuplexStream,
    buf: BytesMut,
    version: ProtocolVersion,
}

impl Client {
    pub(crate) fn new(io: DuplexStream, version: ProtocolVersion) -> Self {
        Self { io, buf: BytesMut::new(), version }
    }

    pub(crate) async fn send(&mut self, packet: Packet) {
        let mut buf = BytesMut::new();
        mqtt_codec::encode(&packet, self.version, &mut buf).unwrap();
        self.io.write_all(&buf).await.unwrap();
    }

    /// Writes raw bytes.
    pub(crate) async fn send_raw(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.unwrap();
    }

    /// The next packet, or `None` when the broker closed the connection.
    pub(crate) async fn try_recv(&mut self) -> Option<Packet> {
        loop {
            let decoded = mqtt_codec::decode_buf(&mut self.buf, self.version, MAX_PACKET_SIZE);
            if let Some(packet) = decoded.unwrap() {
                return Some(packet);
            }
            let read = tokio::time::timeout(WAIT, self.io.read_buf(&mut self.buf))
                .await
                .expect("timed out waiting for a packet");
            if read.unwrap_or(0) == 0 {
                return None;
            }
        }
    }

    /// The next packet; panics when the connection closes.
    pub(crate) async fn recv(&mut self) -> Packet {
        self.try_recv().await.expect("connection closed")
    }

    /// The next packet, which must be a PUBLISH.
    pub(crate) async fn recv_publish(&mut self) -> Publish {
        match self.recv().await {
            Packet::Publish(p) => p,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    /// Asserts that nothing arrives within `SILENCE`.
    pub(crate) async fn expect_silence(&mut self) {
        let got = tokio::time::timeout(SILENCE, self.try_recv()).await;
        if let Ok(packet) = got {
            panic!("expected nothing, got {packet:?}");
        }
    }

    /// Reads until the broker closes the connection and returns the DISCONNECT it sent, if any.
    pub(crate) async fn expect_closed(&mut self) -> Option<Disconnect> {
        let mut last = None;
        while let Some(packet) = self.try_recv().await {
            match packet {
                Packet::Disconnect(d) => last = Some(d),
                other => panic!("expected the connection to close, got {other:?}"),
            }
        }
        last
    }

    /// Subscribes to one filter and returns the SUBACK.
    pub(crate) async fn subscribe(&mut self, f: &str, qos: QoS) -> SubAck {
        self.subscribe_with(subscribe_packet(1, f, qos_options(qos))).await
    }

    pub(crate) async fn subscribe_with(&mut self, subscribe: Subscribe) -> SubAck {
        self.send(Packet::Subscribe(subscribe)).await;
        match self.recv().await {
            Packet::SubAck(ack) => ack,
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// Publishes and, for QoS 1, waits for the PUBACK.
    pub(crate) async fn publish(&mut self, p: Publish) {
        let qos = p.delivery.qos();
        self.send(Packet::Publish(p)).await;
        if qos == QoS::AtLeastOnce {
            match self.recv().await {
                Packet::PubAck(_) => {}
                other => panic!("expected PUBACK, got {other:?}"),
            }
        }
    }

    pub(crate) async fn puback(&mut self, id: PacketId) {
        self.send(Packet::PubAck(PubAck::new(id))).await;
    }

    /// Sends a normal DISCONNECT and waits for the broker to close.
    pub(crate) async fn disconnect(mut self) {
        self.send(Packet::Disconnect(Disconnect::new(ReasonCode::Success))).await;
        assert!(self.expect_closed().await.is_none());
    }
}
