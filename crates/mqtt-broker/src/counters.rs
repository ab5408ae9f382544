//! The broker's Prometheus counters, named in one place.

use mqtt_codec::QoS;

/// Why a message was not delivered to a subscriber.
#[derive(Debug, Clone, Copy)]
pub(crate) enum DropReason {
    /// A QoS 0 message for a client whose socket is not keeping up.
    SlowConsumer,
    /// A QoS 1 or 2 message for a session whose queue is full.
    QueueFull,
    /// The channel to a connection was full.
    ChannelFull,
    /// A QoS 0 message for a session without a connection.
    Offline,
    /// An in-process subscription was full.
    InternalFull,
    /// The message expired before it could be sent.
    Expired,
    /// The message is larger than the client's Maximum Packet Size ([MQTT-3.1.2-25]).
    TooLarge,
}

impl DropReason {
    fn label(self) -> &'static str {
        match self {
            Self::SlowConsumer => "slow_consumer",
            Self::QueueFull => "queue_full",
            Self::ChannelFull => "channel_full",
            Self::Offline => "offline",
            Self::InternalFull => "internal_full",
            Self::Expired => "expired",
            Self::TooLarge => "too_large",
        }
    }
}

fn qos_label(qos: QoS) -> &'static str {
    match qos {
        QoS::AtMostOnce => "0",
        QoS::AtLeastOnce => "1",
        QoS::ExactlyOnce => "2",
    }
}

/// Counts a message dropped for one subscriber.
pub(crate) fn dropped(reason: DropReason, qos: QoS) {
    metrics::counter!("mqtt_messages_dropped_total", "reason" => reason.label(), "qos" => qos_label(qos))
        .increment(1);
}

/// Counts a PUBLISH refused by the publisher's ACL.
pub(crate) fn publish_denied() {
    metrics::counter!("mqtt_publish_denied_total").increment(1);
}

/// Counts a PUBLISH held back by the publisher's rate limit.
pub(crate) fn publish_throttled() {
    metrics::counter!("mqtt_publish_throttled_total").increment(1);
}

/// Counts a retained message that was not retained because the store is full.
pub(crate) fn retained_refused() {
    metrics::counter!("mqtt_retained_refused_total").increment(1);
}

/// Counts a message received from a client or handle, by QoS.
pub(crate) fn received(qos: QoS) {
    metrics::counter!("mqtt_messages_received_total", "qos" => qos_label(qos)).increment(1);
}

/// Counts a message written to a client, by QoS.
pub(crate) fn sent(qos: QoS) {
    metrics::counter!("mqtt_messages_sent_total", "qos" => qos_label(qos)).increment(1);
}

/// Counts bytes read from clients.
pub(crate) fn bytes_received(n: usize) {
    metrics::counter!("mqtt_bytes_received_total").increment(n as u64);
}

/// Counts bytes written to clients.
pub(crate) fn bytes_sent(n: usize) {
    metrics::counter!("mqtt_bytes_sent_total").increment(n as u64);
}

/// Tracks the number of clients holding a session on a live connection (`mqtt_connections`).
pub(crate) fn connection_opened() {
    metrics::gauge!("mqtt_connections").increment(1.0);
}

/// See [`connection_opened`].
pub(crate) fn connection_closed() {
    metrics::gauge!("mqtt_connections").decrement(1.0);
}

/// Counts a connection event the consumer had no room for.
pub(crate) fn presence_event_dropped(reason: &'static str) {
    metrics::counter!("mqtt_presence_events_dropped_total", "reason" => reason).increment(1);
}

/// Counts a commit of the session store and the changes it held.
pub(crate) fn session_store_committed(ops: usize) {
    metrics::counter!("mqtt_session_store_commits_total").increment(1);
    metrics::counter!("mqtt_session_store_ops_total").increment(ops as u64);
}

/// Counts a failed commit of the session store (it is retried).
pub(crate) fn session_store_failed() {
    metrics::counter!("mqtt_session_store_failures_total").increment(1);
}
