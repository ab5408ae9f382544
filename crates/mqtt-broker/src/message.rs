//! [`Message`]: an application message as the broker routes it, independent of any packet.

use bytes::Bytes;
use mqtt_codec::{Properties, Publish, QoS, TopicName};
use tokio::time::{Duration, Instant};

/// An application message (§1.2): what a PUBLISH or a will carries, as the broker stores and forwards it.
///
/// `properties` holds the v5 properties that travel with the message from publisher to subscriber
/// unchanged: Payload Format Indicator, Message Expiry Interval, Content Type, Response Topic, Correlation
/// Data and User Properties ([MQTT-3.3.2-4], [MQTT-3.3.2-15], [MQTT-3.3.2-16], [MQTT-3.3.2-17]). Per-hop
/// properties (Topic Alias, Subscription Identifiers) are never kept here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The topic the message was published to.
    pub topic: TopicName,
    /// The payload, possibly empty.
    pub payload: Bytes,
    /// The QoS it was published with: the most it is delivered with.
    pub qos: QoS,
    /// Whether the publisher asked for it to be retained.
    pub retain: bool,
    /// The v5 properties forwarded with the message (see the type's documentation).
    pub properties: Properties,
}

impl Message {
    /// A QoS 0, non-retained message without properties.
    #[must_use]
    pub fn new(topic: TopicName, payload: impl Into<Bytes>) -> Self {
        Self {
            topic,
            payload: payload.into(),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Properties::default(),
        }
    }

    /// The message a client's PUBLISH carries once its topic is resolved (aliases applied): the per-hop
    /// properties are dropped.
    pub(crate) fn from_publish(topic: TopicName, publish: Publish) -> Self {
        let mut properties = publish.properties;
        properties.topic_alias = None;
        properties.subscription_identifiers.clear();
        Self {
            topic,
            payload: publish.payload,
            qos: publish.delivery.qos(),
            retain: publish.retain,
            properties,
        }
    }

    /// When the message expires, counted from `received` (§3.3.2.3.3).
    pub(crate) fn expires_at(&self, received: Instant) -> Option<Instant> {
        self.properties
            .message_expiry_interval
            .map(|seconds| received + Duration::from_secs(u64::from(seconds)))
    }
}
