//! [`BrokerConfig`]: every limit of the broker, each documented with what happens when it is reached.

use std::num::{NonZeroU16, NonZeroU32, NonZeroUsize};

use mqtt_codec::QoS;
use tokio::time::Duration;

/// The broker's limits and advertised capabilities.
///
/// `server` builds it from the `[mqtt]` section of the configuration file; tests build it from
/// [`BrokerConfig::default`] and change what they need.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// How long a new connection may take to send a complete CONNECT. At the limit the socket is closed
    /// without a CONNACK.
    pub connect_timeout: Duration,
    /// The largest Keep Alive, in seconds, the broker lets a v5 client choose. A v5 client asking for
    /// more, or for 0 (no keep-alive), is told this value as Server Keep Alive in its CONNACK (§3.2.2.3.14)
    /// and held to it. v3.1.1 has no way to say so: v3.1.1 clients keep their own value. 0 turns the
    /// limit off.
    pub max_keep_alive: u16,
    /// The largest packet, in bytes, a client may send; advertised as Maximum Packet Size in a v5
    /// CONNACK. A larger packet is refused as soon as its fixed header arrives: v5 clients get DISCONNECT
    /// 0x95 (Packet too large), then the connection is closed.
    pub max_packet_size: NonZeroU32,
    /// The highest QoS the broker supports; advertised as Maximum QoS in a v5 CONNACK when below 2.
    /// Subscriptions are granted at most this QoS; a PUBLISH above it gets DISCONNECT 0x9B (QoS not
    /// supported, [MQTT-3.2.2-11]) and the connection is closed.
    pub maximum_qos: QoS,
    /// How many QoS 1 and 2 PUBLISH packets from one client may be unacknowledged at once; advertised as
    /// Receive Maximum in a v5 CONNACK. One more gets DISCONNECT 0x93 (Receive Maximum exceeded) and
    /// the connection is closed. Applies to v3.1.1 clients too, which cannot be told.
    pub receive_maximum: NonZeroU16,
    /// How many topic aliases a v5 client may set on the messages it sends; advertised as Topic Alias
    /// Maximum in the CONNACK. A PUBLISH with an alias above this gets DISCONNECT 0x94 (Topic Alias
    /// invalid); an alias of 0 is malformed ([MQTT-3.3.2-8]) and gets 0x82 (Protocol Error). 0
    /// disables inbound topic aliases.
    pub topic_alias_maximum: u16,
    /// How many topic aliases the broker sets, per connection, on the messages it sends a v5 client
    /// (never more than the client's own Topic Alias Maximum). The first topics sent get an alias, and
    /// later messages to them are sent with the alias and an empty topic; each alias costs the
    /// connection its topic's length in memory. 0 turns outbound aliases off.
    pub outbound_topic_aliases: u16,
    /// The most PUBLISH packets per second one connection may send (a device connects once, so this is
    /// the per-device limit), with bursts. A client over it is not refused anything: its connection
    /// stops reading the socket until the rate allows the next PUBLISH, so TCP slows the client down
    /// and nothing acknowledged is lost; throttled publishes are counted
    /// (`mqtt_publish_throttled_total`). Keep-alive is suspended meanwhile. `None` turns it off.
    pub publish_rate: Option<crate::PublishRate>,
    /// The most QoS 1 and 2 messages the broker sends one client before it acknowledges them, whatever
    /// Receive Maximum the client allows (the smaller of the two applies). Further messages wait in the
    /// session's queue.
    pub max_inflight: NonZeroU16,
    /// How many QoS 1 and 2 messages may wait for one session, online (behind the in-flight window) or
    /// offline (a persistent session without a connection). Messages beyond it are dropped and counted
    /// in `mqtt_messages_dropped_total{reason="queue_full"}`.
    pub max_queued_messages: usize,
    /// The most encoded bytes waiting to be written to one client's socket. When a client reads more
    /// slowly than messages arrive, QoS 0 messages arriving above this mark are dropped and counted
    /// (`reason="slow_consumer"`), and QoS 1 and 2 messages wait in the session's queue. From half
    /// of it on, the connection stops reading the client's packets until the client has read what
    /// it was sent, so TCP slows a client down that publishes faster than it reads (its own
    /// deliveries, its acknowledgements). The buffer is allocated only while bytes wait.
    pub outbound_buffer_high_water: usize,
    /// How many QoS 0 messages may wait in the mailbox from the broker task to each connection (QoS 1
    /// and 2 messages may also use `max_queued_messages` more). The connection empties it
    /// continuously into its own queue, so it fills only when the connection task cannot keep up; then
    /// the broker drops further messages for that connection and counts them (`reason="channel_full"`)
    /// rather than wait. Allocated only while messages wait.
    pub connection_channel_capacity: NonZeroUsize,
    /// The longest Session Expiry Interval, in seconds, the broker grants. A v5 client asking for more
    /// is told this value in its CONNACK; a v3.1.1 client with Clean Session 0 gets this value. At
    /// expiry the session, its subscriptions and its queued messages are discarded.
    pub max_session_expiry: u32,
    /// The most subscriptions one session may hold. A SUBSCRIBE filter beyond it is refused with 0x97
    /// (Quota exceeded; v3.1.1: 0x80 Failure). Replacing an existing subscription does not count.
    pub max_subscriptions_per_session: usize,
    /// The most topics with a retained message. A retained message for a new topic beyond it is still
    /// delivered to current subscribers but not retained, and is counted
    /// (`mqtt_retained_refused_total`).
    pub max_retained_messages: usize,
    /// The capacity of each in-process subscription made through
    /// [`BrokerHandle::subscribe`](crate::BrokerHandle::subscribe). When the subscriber falls behind and
    /// it is full, further messages for it are dropped and counted (`reason="internal_full"`).
    pub internal_subscription_capacity: NonZeroUsize,
    /// The capacity of the broker task's command channel, shared by every connection and handle. When
    /// it is full, senders wait: connections stop reading their sockets, which pushes back on clients.
    pub command_channel_capacity: NonZeroUsize,
    /// How long the broker waits for the last bytes (a final DISCONNECT) to be written when it closes a
    /// connection. At the limit the socket is dropped.
    pub close_timeout: Duration,
    /// With a session store ([`Broker::with_store`](crate::Broker::with_store)): how many batches of
    /// changes the broker task may hand the session writer before the writer commits them, and how
    /// many reports of acknowledged messages connections may send it. When the database falls behind
    /// and it is full, the broker task waits (it takes no further commands, so connections stop
    /// reading their sockets and publishers wait for their acknowledgements) and connections wait to
    /// report acknowledgements. Unused without a store.
    pub session_store_queue_capacity: NonZeroUsize,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            max_keep_alive: 3600,
            max_packet_size: NonZeroU32::new(1024 * 1024).expect("non-zero"),
            maximum_qos: QoS::ExactlyOnce,
            receive_maximum: NonZeroU16::new(64).expect("non-zero"),
            topic_alias_maximum: 16,
            outbound_topic_aliases: 16,
            publish_rate: None,
            max_inflight: NonZeroU16::new(32).expect("non-zero"),
            max_queued_messages: 1000,
            outbound_buffer_high_water: 256 * 1024,
            connection_channel_capacity: NonZeroUsize::new(1024).expect("non-zero"),
            max_session_expiry: 7 * 24 * 3600,
            max_subscriptions_per_session: 100,
            max_retained_messages: 100_000,
            internal_subscription_capacity: NonZeroUsize::new(1024).expect("non-zero"),
            command_channel_capacity: NonZeroUsize::new(1024).expect("non-zero"),
            close_timeout: Duration::from_secs(1),
            session_store_queue_capacity: NonZeroUsize::new(64).expect("non-zero"),
        }
    }
}
