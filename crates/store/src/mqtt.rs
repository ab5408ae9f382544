//! The MQTT broker's state that outlives a restart, in the store's terms: persistent sessions with
//! their subscriptions and queued messages, and retained messages ([`MqttSnapshot`]), changed by
//! [`MqttOp`]s that [`Store::mqtt_apply`](crate::Store::mqtt_apply) commits in batches.
//!
//! The broker owns the meaning of these values; the store keeps them as given. Topics, filters and
//! client identifiers are plain strings, QoS a number (0, 1 or 2), and `properties` an opaque blob
//! (the broker's encoding of a message's MQTT 5 properties).

use domain::Timestamp;

/// Everything stored for the broker, as [`Store::mqtt_load`](crate::Store::mqtt_load) returns it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MqttSnapshot {
    /// The sessions, by client identifier.
    pub sessions: Vec<MqttSession>,
    /// The retained messages, by topic.
    pub retained: Vec<MqttMessage>,
}

/// A persistent MQTT session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttSession {
    /// The client identifier.
    pub client_id: String,
    /// The Session Expiry Interval, in seconds.
    pub expiry_secs: u32,
    /// When its last connection ended; `None` while connected.
    pub disconnected_at: Option<Timestamp>,
    /// Its subscriptions, by filter.
    pub subscriptions: Vec<MqttSubscription>,
    /// Its messages, by ascending `seq`.
    pub messages: Vec<MqttQueued>,
}

/// A subscription of a persistent session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttSubscription {
    /// The topic filter (one per session: putting the same filter again replaces it).
    pub filter: String,
    /// The granted QoS.
    pub qos: u8,
    /// MQTT 5 No Local.
    pub no_local: bool,
    /// MQTT 5 Retain As Published.
    pub retain_as_published: bool,
    /// MQTT 5 Subscription Identifier.
    pub subscription_id: Option<u32>,
}

/// A message waiting for a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttQueued {
    /// Its sequence number, unique within the session (the broker's numbers are unique overall).
    pub seq: u64,
    /// The message.
    pub message: MqttMessage,
}

/// A message, queued for a session or retained for its topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttMessage {
    /// Its topic (one retained message per topic).
    pub topic: String,
    /// Its payload.
    pub payload: Vec<u8>,
    /// Its QoS.
    pub qos: u8,
    /// Its RETAIN flag.
    pub retain: bool,
    /// Its MQTT 5 properties, encoded by the broker.
    pub properties: Vec<u8>,
    /// When it expires, if it does.
    pub expires_at: Option<Timestamp>,
}

/// One change to the broker's stored state. Every op is idempotent, and ops that name a session
/// that does not exist (a subscription or message for it, an acknowledgement) change nothing, so a
/// batch retried after a failure whose outcome was unknown commits without error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MqttOp {
    /// Creates a session or updates its expiry and disconnection time (keeping the rest).
    UpsertSession {
        /// The client identifier.
        client_id: String,
        /// The Session Expiry Interval, in seconds.
        expiry_secs: u32,
        /// When its connection ended; `None` while connected.
        disconnected_at: Option<Timestamp>,
    },
    /// Deletes a session with its subscriptions and messages.
    DeleteSession {
        /// The client identifier.
        client_id: String,
    },
    /// Adds or replaces (same filter) a subscription of an existing session.
    PutSubscription {
        /// The client identifier.
        client_id: String,
        /// The subscription.
        subscription: MqttSubscription,
    },
    /// Deletes a subscription.
    DeleteSubscription {
        /// The client identifier.
        client_id: String,
        /// Its filter.
        filter: String,
    },
    /// Adds a message to an existing session; a message with the same `seq` stays as it was.
    EnqueueMessage {
        /// The client identifier.
        client_id: String,
        /// The message and its sequence number.
        queued: MqttQueued,
    },
    /// Deletes a message of a session.
    AckMessage {
        /// The client identifier.
        client_id: String,
        /// The message's sequence number.
        seq: u64,
    },
    /// Sets the retained message of the message's topic, replacing any.
    PutRetained {
        /// The message.
        message: MqttMessage,
    },
    /// Deletes the retained message of a topic.
    DeleteRetained {
        /// The topic.
        topic: String,
    },
}
