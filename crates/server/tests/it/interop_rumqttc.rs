//! Interoperability with rumqttc, the most used Rust MQTT client: its MQTT 3.1.1 client
//! (`rumqttc::AsyncClient`) and its MQTT 5 client (`rumqttc::v5::AsyncClient`), over TCP, against
//! the real server: QoS 0, 1 and 2 round trips within a device's own
//! topics, a retained message, a persistent session resumed with a queued and an unacknowledged
//! message and then taken over, and the refusals (bad credentials, empty client id, inactive device,
//! ACL).
//!
//! The scenarios are written once against [`Client`], which both rumqttc clients implement.
//!
//! WebSocket is not covered with rumqttc: its `websocket` feature brings crates under the Unlicense,
//! outside our licence allow-list (STYLE.md). TLS is not covered with rumqttc either: rumqttc 0.25 reaches rustls only through its
//! `use-rustls-no-provider` feature, which depends on `rustls-webpki` 0.102 with its default
//! features and so brings `ring` into the build, where we use aws-lc-rs only. The paho-mqtt and
//! Mosquitto tests cover TLS.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use test_support::TestServer;

use crate::mqtt::{active_device, registered_device};

use v5::V5;
use v311::V311;

/// How long a test waits for something that should happen.
const WAIT: Duration = Duration::from_secs(20);

/// The largest packet either side may send: rumqttc's default (10 kB) is below the large payload.
const MAX_PACKET: u32 = 1 << 20;

/// The Session Expiry Interval of persistent MQTT 5 sessions, in seconds.
const SESSION_EXPIRY: u32 = 300;

#[derive(Debug, Clone, Copy)]
enum Transport {
    Tcp,
}

/// Whether the session outlives its connection.
#[derive(Debug, Clone, Copy)]
enum Session {
    /// 3.1.1 Clean Session 1; MQTT 5 Clean Start 1 without Session Expiry Interval.
    Clean,
    /// 3.1.1 Clean Session 0; MQTT 5 a Session Expiry Interval, and Clean Start 0 when `resume`.
    Persistent { resume: bool },
}

/// How a [`Client`] connects.
#[derive(Debug, Clone, Copy)]
struct Connection<'a> {
    server: &'a TestServer,
    transport: Transport,
    /// The client id: a device id.
    device: &'a str,
    /// The user name; the server requires the device id.
    user: &'a str,
    token: &'a str,
    session: Session,
    /// Acknowledge received messages only when the test calls [`Client::ack`].
    manual_acks: bool,
    /// A QoS 1 will: topic and payload.
    will: Option<(&'a str, &'a str)>,
}

impl<'a> Connection<'a> {
    fn new(server: &'a TestServer, transport: Transport, device: &'a str, token: &'a str) -> Self {
        Self {
            server,
            transport,
            device,
            user: device,
            token,
            session: Session::Clean,
            manual_acks: false,
            will: None,
        }
    }

    /// rumqttc's broker address and port.
    fn broker(&self) -> (String, u16) {
        match self.transport {
            Transport::Tcp => ("127.0.0.1".to_owned(), self.server.mqtt_addr.port()),
        }
    }

    fn name(&self) -> String {
        format!("{} over {:?}", self.device, self.transport)
    }
}

/// A received message.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Message {
    topic: String,
    payload: Bytes,
    qos: u8,
    retain: bool,
    dup: bool,
    /// The server's packet identifier, for [`Client::ack`].
    pkid: u16,
}

/// Why the server refused a CONNECT, as both protocol versions can say it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Refusal {
    /// 3.1.1 return code 2 (identifier rejected); MQTT 5 0x85.
    ClientIdentifierNotValid,
    /// 3.1.1 return code 4; MQTT 5 0x86.
    BadUserNameOrPassword,
    /// 3.1.1 return code 5; MQTT 5 0x87.
    NotAuthorized,
    /// Any other, as rumqttc names it.
    Other(String),
}

/// What the scenarios need of an MQTT client; implemented for both rumqttc clients.
trait Client: Sized {
    /// The SUBACK code of a refused filter: 3.1.1 0x80 (Failure), MQTT 5 0x87 (Not authorized).
    const SUBSCRIBE_REFUSED: u8;
    /// The PUBACK code of a refused publish: 3.1.1 cannot refuse (0), MQTT 5 0x87.
    const PUBLISH_REFUSED: u8;
    /// How the end of a connection taken over looks to the client: the reason code of the
    /// server's DISCONNECT, or `None` when it only sees the connection close (3.1.1 has no
    /// DISCONNECT from the server).
    const TAKEN_OVER: Option<u8>;

    /// Connects; returns the client and the CONNACK's Session Present, or why it was refused.
    async fn connect(connection: &Connection<'_>) -> Result<(Self, bool), Refusal>;

    /// Subscribes to `filters` (filter, QoS); returns the SUBACK codes.
    async fn subscribe(&mut self, filters: &[(&str, u8)]) -> Vec<u8>;

    /// Publishes and waits for the end of the QoS flow (sent, PUBACK, or PUBCOMP; or a refusing
    /// PUBREC); returns the reason code of the acknowledgement (0 for QoS 0 and for 3.1.1).
    async fn publish(&mut self, topic: &str, qos: u8, retain: bool, payload: Bytes) -> u8;

    /// The next message the server delivered.
    async fn message(&mut self) -> Message;

    /// Acknowledges `message` (with manual acknowledgements); returns once the PUBACK (PUBREC)
    /// is written.
    async fn ack(&mut self, message: &Message);

    /// Sends DISCONNECT (normal disconnection) and waits until it is written.
    async fn disconnect(self);

    /// Waits for the server to end the connection; returns the reason code of its DISCONNECT
    /// (MQTT 5), `None` when it just closed.
    async fn closed(self) -> Option<u8>;
}

/// Checks the next message's topic, payload, QoS and retain flag; returns it.
async fn expect_message<C: Client>(
    client: &mut C,
    topic: &str,
    payload: &[u8],
    qos: u8,
    retain: bool,
) -> Message {
    let m = client.message().await;
    assert_eq!(
        (m.topic.as_str(), &m.payload[..], m.qos, m.retain),
        (topic, payload, qos, retain),
        "unexpected message"
    );
    m
}

/// Every QoS, a large payload and a retained message, within the device's own topics.
async fn round_trips<C: Client>(transport: Transport) {
    let server = TestServer::start().await;
    let token = active_device(&server, "dev-1").await;
    let (mut c, present) =
        C::connect(&Connection::new(&server, transport, "dev-1", &token)).await.expect("connect");
    assert!(!present, "session present on a clean start");
    assert_eq!(c.subscribe(&[("devices/dev-1/interop/#", 2)]).await, vec![2]);
    for qos in 0..=2 {
        let topic = format!("devices/dev-1/interop/qos{qos}");
        let payload: Bytes = (0..=255u8).collect();
        assert_eq!(c.publish(&topic, qos, false, payload.clone()).await, 0, "QoS {qos}");
        expect_message(&mut c, &topic, &payload, qos, false).await;
    }
    let large: Bytes = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    c.publish("devices/dev-1/interop/large", 1, false, large.clone()).await;
    expect_message(&mut c, "devices/dev-1/interop/large", &large, 1, false).await;
    // A retained message reaches a later subscription with the retain flag set (3.1.1
    // [MQTT-3.3.1-8], 5.0 §3.3.1.3).
    c.publish("devices/dev-1/retained/state", 1, true, Bytes::from_static(b"on")).await;
    assert_eq!(c.subscribe(&[("devices/dev-1/retained/#", 1)]).await, vec![1]);
    expect_message(&mut c, "devices/dev-1/retained/state", b"on", 1, true).await;
    c.disconnect().await;
}

/// A persistent session keeps its subscriptions, queues the will published while it is offline
/// (no other client may publish to the device's topics, so the device's own will does), and sends
/// an unacknowledged message again with DUP set ([MQTT-4.4.0-1], [MQTT-3.3.1-1]).
async fn persistent_session<C: Client>(transport: Transport) {
    let server = TestServer::start().await;
    let token = active_device(&server, "dev-1").await;
    let (status, inbox) = ("devices/dev-1/status", "devices/dev-1/inbox");
    let base = Connection::new(&server, transport, "dev-1", &token);

    let first = Connection {
        session: Session::Persistent { resume: false },
        manual_acks: true,
        will: Some((status, "offline")),
        ..base
    };
    let (mut c, present) = C::connect(&first).await.expect("connect");
    assert!(!present, "session present on the first connection");
    assert_eq!(c.subscribe(&[(status, 1), (inbox, 1)]).await, vec![1, 1]);
    c.publish(inbox, 1, false, Bytes::from_static(b"unacknowledged")).await;
    let m = expect_message(&mut c, inbox, b"unacknowledged", 1, false).await;
    assert!(!m.dup, "first delivery with DUP set");
    // The connection ends without DISCONNECT and without acknowledging the message.
    drop(c);

    let resume =
        Connection { session: Session::Persistent { resume: true }, manual_acks: true, ..base };
    let (mut c, present) = C::connect(&resume).await.expect("reconnect");
    assert!(present, "CONNACK without Session Present on resumption");
    let again = expect_message(&mut c, inbox, b"unacknowledged", 1, false).await;
    assert!(again.dup, "a message sent again must have DUP set [MQTT-3.3.1-1]");
    let will = expect_message(&mut c, status, b"offline", 1, false).await;
    c.ack(&again).await;
    c.ack(&will).await;
    // The subscriptions held: a new message arrives without a new SUBSCRIBE.
    c.publish(status, 1, false, Bytes::from_static(b"online")).await;
    let online = expect_message(&mut c, status, b"online", 1, false).await;
    c.ack(&online).await;
    c.disconnect().await;

    // Everything was acknowledged: the next resumption sends nothing old.
    let (mut c, present) = C::connect(&resume).await.expect("reconnect");
    assert!(present, "session lost after a normal DISCONNECT");
    c.publish(inbox, 1, false, Bytes::from_static(b"marker")).await;
    let marker = expect_message(&mut c, inbox, b"marker", 1, false).await;
    c.ack(&marker).await;

    // A second connection with the same client id takes the session over from the live one, which
    // the server closes [MQTT-3.1.4-3] (MQTT 5: after DISCONNECT 0x8E, Session taken over, which
    // rumqttc reads since our encoder writes its Property Length; see `TAKEN_OVER`).
    let (mut taker, present) = C::connect(&resume).await.expect("take over");
    assert!(present, "no session on takeover");
    assert_eq!(c.closed().await, C::TAKEN_OVER);
    taker.publish(inbox, 1, false, Bytes::from_static(b"after takeover")).await;
    let m = expect_message(&mut taker, inbox, b"after takeover", 1, false).await;
    taker.ack(&m).await;
    taker.disconnect().await;

    // A clean start discards it.
    let (c, present) = C::connect(&base).await.expect("connect");
    assert!(!present, "session present after a clean start");
    c.disconnect().await;
}

/// Refused CONNECTs, and SUBSCRIBE and PUBLISH outside the device's subtree.
async fn refusals<C: Client>(transport: Transport) {
    let server = TestServer::start().await;
    let token = active_device(&server, "dev-1").await;
    let other_token = active_device(&server, "dev-2").await;
    let inactive_token = registered_device(&server, "dev-3").await;
    let refused =
        async |connection: Connection<'_>, expected: Refusal| match C::connect(&connection).await {
            Err(refusal) => assert_eq!(refusal, expected, "{}", connection.name()),
            Ok(_) => panic!("{} connected, expected {expected:?}", connection.name()),
        };
    let base = Connection::new(&server, transport, "dev-1", &token);
    refused(Connection { token: "hdc_not_the_password", ..base }, Refusal::BadUserNameOrPassword)
        .await;
    refused(Connection { user: "dev-2", ..base }, Refusal::BadUserNameOrPassword).await;
    refused(Connection::new(&server, transport, "dev-3", &inactive_token), Refusal::NotAuthorized)
        .await;
    // An empty client id names no device: 3.1.1 return code 2, MQTT 5 0x85.
    refused(Connection { device: "", ..base }, Refusal::ClientIdentifierNotValid).await;

    let (mut c, _) = C::connect(&base).await.expect("connect");
    let codes = c.subscribe(&[("devices/dev-1/#", 1), ("devices/dev-2/#", 1), ("#", 0)]).await;
    assert_eq!(codes, vec![1, C::SUBSCRIBE_REFUSED, C::SUBSCRIBE_REFUSED]);
    let (mut other, _) = C::connect(&Connection::new(&server, transport, "dev-2", &other_token))
        .await
        .expect("dev-2");
    assert_eq!(other.subscribe(&[("devices/dev-2/#", 1)]).await, vec![1]);
    let forbidden = Bytes::from_static(b"forbidden");
    assert_eq!(c.publish("devices/dev-2/commands", 1, false, forbidden).await, C::PUBLISH_REFUSED);
    // dev-1's connection is still usable, and dev-2 never got the message: its own marker comes
    // first.
    c.publish("devices/dev-1/interop/still", 1, false, Bytes::from_static(b"here")).await;
    expect_message(&mut c, "devices/dev-1/interop/still", b"here", 1, false).await;
    other.publish("devices/dev-2/commands", 1, false, Bytes::from_static(b"marker")).await;
    expect_message(&mut other, "devices/dev-2/commands", b"marker", 1, false).await;
    c.disconnect().await;
    other.disconnect().await;
}

/// rumqttc's MQTT 3.1.1 client.
mod v311 {
    use rumqttc::{
        AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, LastWill, MqttOptions,
        Outgoing, Packet, Publish, QoS, SubscribeFilter, SubscribeReasonCode,
    };

    use super::*;

    /// A connection: the client handle, its event loop (polled by the test), and messages that
    /// arrived while the test waited for something else.
    pub(super) struct V311 {
        name: String,
        client: AsyncClient,
        events: EventLoop,
        pending: VecDeque<Publish>,
        unacknowledged: HashMap<u16, Publish>,
    }

    fn qos(value: u8) -> QoS {
        rumqttc::qos(value).expect("QoS 0, 1 or 2")
    }

    impl V311 {
        async fn next(&mut self) -> Event {
            match tokio::time::timeout(WAIT, self.events.poll()).await {
                Ok(Ok(event)) => event,
                Ok(Err(e)) => panic!("{}: connection failed: {e}", self.name),
                Err(_) => panic!("{}: nothing happened within {WAIT:?}", self.name),
            }
        }
    }

    impl Client for V311 {
        const SUBSCRIBE_REFUSED: u8 = 0x80;
        const PUBLISH_REFUSED: u8 = 0;
        const TAKEN_OVER: Option<u8> = None;

        async fn connect(c: &Connection<'_>) -> Result<(Self, bool), Refusal> {
            let (host, port) = c.broker();
            let mut options = MqttOptions::new(c.device, host, port);
            options.set_credentials(c.user, c.token);
            options.set_max_packet_size(MAX_PACKET as usize, MAX_PACKET as usize);
            options.set_manual_acks(c.manual_acks);
            options.set_clean_session(matches!(c.session, Session::Clean));
            if let Some((topic, payload)) = c.will {
                options.set_last_will(LastWill::new(topic, payload, QoS::AtLeastOnce, false));
            }
            let (client, mut events) = AsyncClient::new(options, 16);
            match tokio::time::timeout(WAIT, events.poll()).await.expect("CONNACK in time") {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    let connected = Self {
                        name: c.name(),
                        client,
                        events,
                        pending: VecDeque::new(),
                        unacknowledged: HashMap::new(),
                    };
                    Ok((connected, ack.session_present))
                }
                Err(ConnectionError::ConnectionRefused(code)) => Err(match code {
                    ConnectReturnCode::BadClientId => Refusal::ClientIdentifierNotValid,
                    ConnectReturnCode::BadUserNamePassword => Refusal::BadUserNameOrPassword,
                    ConnectReturnCode::NotAuthorized => Refusal::NotAuthorized,
                    other => Refusal::Other(format!("{other:?}")),
                }),
                other => panic!("{}: expected CONNACK, got {other:?}", c.name()),
            }
        }

        async fn subscribe(&mut self, filters: &[(&str, u8)]) -> Vec<u8> {
            let filters =
                filters.iter().map(|(f, q)| SubscribeFilter::new((*f).to_owned(), qos(*q)));
            self.client.subscribe_many(filters).await.expect("queue SUBSCRIBE");
            loop {
                match self.next().await {
                    Event::Incoming(Packet::SubAck(ack)) => {
                        return ack
                            .return_codes
                            .iter()
                            .map(|code| match code {
                                SubscribeReasonCode::Success(q) => *q as u8,
                                SubscribeReasonCode::Failure => 0x80,
                            })
                            .collect();
                    }
                    Event::Incoming(Packet::Publish(p)) => self.pending.push_back(p),
                    _ => {}
                }
            }
        }

        async fn publish(&mut self, topic: &str, q: u8, retain: bool, payload: Bytes) -> u8 {
            self.client.publish(topic, qos(q), retain, payload).await.expect("queue PUBLISH");
            loop {
                match self.next().await {
                    Event::Outgoing(Outgoing::Publish(_)) if q == 0 => return 0,
                    Event::Incoming(Packet::PubAck(_)) if q == 1 => return 0,
                    Event::Incoming(Packet::PubComp(_)) if q == 2 => return 0,
                    Event::Incoming(Packet::Publish(p)) => self.pending.push_back(p),
                    _ => {}
                }
            }
        }

        async fn message(&mut self) -> Message {
            let p = match self.pending.pop_front() {
                Some(p) => p,
                None => loop {
                    if let Event::Incoming(Packet::Publish(p)) = self.next().await {
                        break p;
                    }
                },
            };
            let message = Message {
                topic: p.topic.clone(),
                payload: p.payload.clone(),
                qos: p.qos as u8,
                retain: p.retain,
                dup: p.dup,
                pkid: p.pkid,
            };
            self.unacknowledged.insert(p.pkid, p);
            message
        }

        async fn ack(&mut self, message: &Message) {
            let publish = self.unacknowledged.remove(&message.pkid).expect("a received message");
            self.client.ack(&publish).await.expect("queue acknowledgement");
            loop {
                match self.next().await {
                    Event::Outgoing(Outgoing::PubAck(id) | Outgoing::PubRec(id))
                        if id == message.pkid =>
                    {
                        return;
                    }
                    Event::Incoming(Packet::Publish(p)) => self.pending.push_back(p),
                    _ => {}
                }
            }
        }

        async fn disconnect(mut self) {
            self.client.disconnect().await.expect("queue DISCONNECT");
            while !matches!(self.next().await, Event::Outgoing(Outgoing::Disconnect)) {}
        }

        async fn closed(mut self) -> Option<u8> {
            loop {
                match tokio::time::timeout(WAIT, self.events.poll()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(_)) => return None,
                    Err(_) => panic!("{}: still open after {WAIT:?}", self.name),
                }
            }
        }
    }
}

/// rumqttc's MQTT 5 client.
mod v5 {
    use rumqttc::Outgoing;
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::{
        ConnectReturnCode, Filter, LastWill, Packet, PubAckReason, PubRecReason, Publish,
        SubscribeReasonCode,
    };
    use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, StateError};

    use super::*;

    /// As [`super::v311::V311`], for MQTT 5.
    pub(super) struct V5 {
        name: String,
        client: AsyncClient,
        events: EventLoop,
        pending: VecDeque<Publish>,
        unacknowledged: HashMap<u16, Publish>,
    }

    fn qos(value: u8) -> QoS {
        rumqttc::v5::mqttbytes::qos(value).expect("QoS 0, 1 or 2")
    }

    fn puback_code(reason: PubAckReason) -> u8 {
        match reason {
            PubAckReason::Success => 0x00,
            PubAckReason::NoMatchingSubscribers => 0x10,
            PubAckReason::UnspecifiedError => 0x80,
            PubAckReason::ImplementationSpecificError => 0x83,
            PubAckReason::NotAuthorized => 0x87,
            PubAckReason::TopicNameInvalid => 0x90,
            PubAckReason::PacketIdentifierInUse => 0x91,
            PubAckReason::QuotaExceeded => 0x97,
            PubAckReason::PayloadFormatInvalid => 0x99,
        }
    }

    fn pubrec_code(reason: PubRecReason) -> u8 {
        match reason {
            PubRecReason::Success => 0x00,
            PubRecReason::NoMatchingSubscribers => 0x10,
            PubRecReason::UnspecifiedError => 0x80,
            PubRecReason::ImplementationSpecificError => 0x83,
            PubRecReason::NotAuthorized => 0x87,
            PubRecReason::TopicNameInvalid => 0x90,
            PubRecReason::PacketIdentifierInUse => 0x91,
            PubRecReason::QuotaExceeded => 0x97,
            PubRecReason::PayloadFormatInvalid => 0x99,
        }
    }

    fn suback_code(code: SubscribeReasonCode) -> u8 {
        match code {
            SubscribeReasonCode::Success(q) => q as u8,
            SubscribeReasonCode::Failure | SubscribeReasonCode::Unspecified => 0x80,
            SubscribeReasonCode::ImplementationSpecific => 0x83,
            SubscribeReasonCode::NotAuthorized => 0x87,
            SubscribeReasonCode::TopicFilterInvalid => 0x8F,
            SubscribeReasonCode::PkidInUse => 0x91,
            SubscribeReasonCode::QuotaExceeded => 0x97,
            SubscribeReasonCode::SharedSubscriptionsNotSupported => 0x9E,
            SubscribeReasonCode::SubscriptionIdNotSupported => 0xA1,
            SubscribeReasonCode::WildcardSubscriptionsNotSupported => 0xA2,
        }
    }

    impl V5 {
        async fn next(&mut self) -> Event {
            match tokio::time::timeout(WAIT, self.events.poll()).await {
                Ok(Ok(event)) => event,
                Ok(Err(e)) => panic!("{}: connection failed: {e}", self.name),
                Err(_) => panic!("{}: nothing happened within {WAIT:?}", self.name),
            }
        }
    }

    impl Client for V5 {
        const SUBSCRIBE_REFUSED: u8 = 0x87;
        const PUBLISH_REFUSED: u8 = 0x87;
        /// DISCONNECT 0x8E (see [`rumqttc_v5_reads_our_disconnect_with_a_reason`]).
        const TAKEN_OVER: Option<u8> = Some(0x8E);

        async fn connect(c: &Connection<'_>) -> Result<(Self, bool), Refusal> {
            let (host, port) = c.broker();
            let mut options = MqttOptions::new(c.device, host, port);
            options.set_credentials(c.user, c.token);
            options.set_max_packet_size(Some(MAX_PACKET));
            options.set_manual_acks(c.manual_acks);
            match c.session {
                Session::Clean => {
                    options.set_clean_start(true);
                }
                Session::Persistent { resume } => {
                    options.set_clean_start(!resume);
                    options.set_session_expiry_interval(Some(SESSION_EXPIRY));
                }
            }
            if let Some((topic, payload)) = c.will {
                options.set_last_will(LastWill::new(topic, payload, QoS::AtLeastOnce, false, None));
            }
            let (client, mut events) = AsyncClient::new(options, 16);
            match tokio::time::timeout(WAIT, events.poll()).await.expect("CONNACK in time") {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    let connected = Self {
                        name: c.name(),
                        client,
                        events,
                        pending: VecDeque::new(),
                        unacknowledged: HashMap::new(),
                    };
                    Ok((connected, ack.session_present))
                }
                Err(ConnectionError::ConnectionRefused(code)) => Err(match code {
                    ConnectReturnCode::ClientIdentifierNotValid => {
                        Refusal::ClientIdentifierNotValid
                    }
                    ConnectReturnCode::BadUserNamePassword => Refusal::BadUserNameOrPassword,
                    ConnectReturnCode::NotAuthorized => Refusal::NotAuthorized,
                    other => Refusal::Other(format!("{other:?}")),
                }),
                other => panic!("{}: expected CONNACK, got {other:?}", c.name()),
            }
        }

        async fn subscribe(&mut self, filters: &[(&str, u8)]) -> Vec<u8> {
            let filters = filters.iter().map(|(f, q)| Filter::new(*f, qos(*q)));
            self.client.subscribe_many(filters).await.expect("queue SUBSCRIBE");
            loop {
                match self.next().await {
                    Event::Incoming(Packet::SubAck(ack)) => {
                        return ack.return_codes.into_iter().map(suback_code).collect();
                    }
                    Event::Incoming(Packet::Publish(p)) => self.pending.push_back(p),
                    _ => {}
                }
            }
        }

        async fn publish(&mut self, topic: &str, q: u8, retain: bool, payload: Bytes) -> u8 {
            self.client.publish(topic, qos(q), retain, payload).await.expect("queue PUBLISH");
            loop {
                match self.next().await {
                    Event::Outgoing(Outgoing::Publish(_)) if q == 0 => return 0,
                    Event::Incoming(Packet::PubAck(ack)) if q == 1 => {
                        return puback_code(ack.reason);
                    }
                    // A refusing PUBREC ends the QoS 2 flow.
                    Event::Incoming(Packet::PubRec(rec))
                        if q == 2 && pubrec_code(rec.reason) >= 0x80 =>
                    {
                        return pubrec_code(rec.reason);
                    }
                    Event::Incoming(Packet::PubComp(_)) if q == 2 => return 0,
                    Event::Incoming(Packet::Publish(p)) => self.pending.push_back(p),
                    _ => {}
                }
            }
        }

        async fn message(&mut self) -> Message {
            let p = match self.pending.pop_front() {
                Some(p) => p,
                None => loop {
                    if let Event::Incoming(Packet::Publish(p)) = self.next().await {
                        break p;
                    }
                },
            };
            let message = Message {
                topic: String::from_utf8(p.topic.to_vec()).expect("UTF-8 topic"),
                payload: p.payload.clone(),
                qos: p.qos as u8,
                retain: p.retain,
                dup: p.dup,
                pkid: p.pkid,
            };
            self.unacknowledged.insert(p.pkid, p);
            message
        }

        async fn ack(&mut self, message: &Message) {
            let publish = self.unacknowledged.remove(&message.pkid).expect("a received message");
            self.client.ack(&publish).await.expect("queue acknowledgement");
            loop {
                match self.next().await {
                    Event::Outgoing(Outgoing::PubAck(id) | Outgoing::PubRec(id))
                        if id == message.pkid =>
                    {
                        return;
                    }
                    Event::Incoming(Packet::Publish(p)) => self.pending.push_back(p),
                    _ => {}
                }
            }
        }

        async fn disconnect(mut self) {
            self.client.disconnect().await.expect("queue DISCONNECT");
            while !matches!(self.next().await, Event::Outgoing(Outgoing::Disconnect)) {}
        }

        async fn closed(mut self) -> Option<u8> {
            loop {
                match tokio::time::timeout(WAIT, self.events.poll()).await {
                    // rumqttc reports the server's DISCONNECT as an error of the event loop.
                    Ok(Err(ConnectionError::MqttState(StateError::ServerDisconnect {
                        reason_code,
                        ..
                    }))) => return Some(reason_code as u8),
                    Ok(Ok(_)) => {}
                    Ok(Err(_)) => return None,
                    Err(_) => panic!("{}: still open after {WAIT:?}", self.name),
                }
            }
        }
    }
}

#[tokio::test]
async fn rumqttc_v311_round_trips_over_tcp() {
    round_trips::<V311>(Transport::Tcp).await;
}

#[tokio::test]
async fn rumqttc_v5_round_trips_over_tcp() {
    round_trips::<V5>(Transport::Tcp).await;
}

#[tokio::test]
async fn rumqttc_v311_persistent_session_over_tcp() {
    persistent_session::<V311>(Transport::Tcp).await;
}

#[tokio::test]
async fn rumqttc_v5_persistent_session_over_tcp() {
    persistent_session::<V5>(Transport::Tcp).await;
}

#[tokio::test]
async fn rumqttc_v311_refusals_over_tcp() {
    refusals::<V311>(Transport::Tcp).await;
}

#[tokio::test]
async fn rumqttc_v5_refusals_over_tcp() {
    refusals::<V5>(Transport::Tcp).await;
}

/// What the server sends a v5 connection it closes because another took its session over:
/// DISCONNECT 0x8E with a zero Property Length. 5.0 §3.14.2.2.1 would allow leaving the Property
/// Length out, but rumqttc 0.25's MQTT 5 decoder requires it (it reads `E0 01 8E` as an incomplete
/// packet and never reports the reason), so our encoder always writes it.
#[test]
fn rumqttc_v5_reads_our_disconnect_with_a_reason() {
    use bytes::BytesMut;
    use mqtt_codec::{Disconnect, Packet, ProtocolVersion, ReasonCode};
    use rumqttc::v5::mqttbytes::v5::Packet as RumqttcPacket;

    let mut ours = BytesMut::new();
    let taken_over = Packet::Disconnect(Disconnect::new(ReasonCode::SessionTakenOver));
    mqtt_codec::encode(&taken_over, ProtocolVersion::V5, &mut ours).expect("encode");
    assert_eq!(&ours[..], &[0xE0, 0x02, 0x8E, 0x00]);
    assert!(matches!(RumqttcPacket::read(&mut ours, None), Ok(RumqttcPacket::Disconnect(_))));
}
