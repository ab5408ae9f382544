//! The broker's session store on Herd's [`Store`]: [`StoreSessions`] implements mqtt-broker's
//! persistence port ([`SessionStore`]) with [`Store::mqtt_load`] and [`Store::mqtt_apply`],
//! converting the broker's types to the store's and back.
//!
//! It exists so that neither crate learns the other's types: `mqtt-broker` does not depend on the
//! store, and the store keeps plain strings, numbers and bytes. Stored values are validated again
//! on the way back (client ids, topics and filters through their MQTT constructors); a value that
//! does not validate fails the load, and with it the startup, naming what is wrong.

use std::num::NonZeroU32;
use std::sync::Arc;

use anyhow::Context as _;
use bytes::Bytes;
use domain::Timestamp;
use mqtt_broker::{
    BoxFuture, PersistError, PersistOp, QueuedMessage, SessionStore, Snapshot, StoredMessage,
    StoredSession, StoredSubscription,
};
use mqtt_codec::{ClientId, QoS, TopicFilter, TopicName};
use store::{MqttMessage, MqttOp, MqttQueued, MqttSession, MqttSnapshot, MqttSubscription, Store};

/// The broker's [`SessionStore`] on a [`Store`].
#[derive(Debug, Clone)]
pub struct StoreSessions {
    store: Arc<dyn Store>,
}

impl StoreSessions {
    /// Sessions kept in `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }
}

impl SessionStore for StoreSessions {
    fn load(&self) -> BoxFuture<'_, Result<Snapshot, PersistError>> {
        Box::pin(async move {
            let stored = self.store.mqtt_load().await.map_err(PersistError::new)?;
            snapshot(stored).map_err(PersistError::new)
        })
    }

    fn apply<'a>(&'a self, ops: &'a [PersistOp]) -> BoxFuture<'a, Result<(), PersistError>> {
        Box::pin(async move {
            let ops: Vec<MqttOp> = ops.iter().map(store_op).collect();
            self.store.mqtt_apply(&ops).await.map_err(PersistError::new)
        })
    }
}

fn snapshot(stored: MqttSnapshot) -> anyhow::Result<Snapshot> {
    let sessions = stored.sessions.into_iter().map(session).collect::<anyhow::Result<_>>()?;
    let retained = stored
        .retained
        .into_iter()
        .map(|m| {
            let topic = m.topic.clone();
            message(m).with_context(|| format!("invalid stored retained message of {topic:?}"))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(Snapshot { sessions, retained })
}

fn session(stored: MqttSession) -> anyhow::Result<StoredSession> {
    let id = stored.client_id;
    let context = || format!("invalid stored MQTT session {id:?}");
    let client_id = ClientId::new(id.as_str()).with_context(context)?;
    let subscriptions = stored
        .subscriptions
        .iter()
        .map(subscription)
        .collect::<anyhow::Result<_>>()
        .with_context(context)?;
    let messages = stored
        .messages
        .into_iter()
        .map(|q| Ok(QueuedMessage { seq: q.seq, message: message(q.message)? }))
        .collect::<anyhow::Result<_>>()
        .with_context(context)?;
    Ok(StoredSession {
        client_id,
        expiry: stored.expiry_secs,
        disconnected_at: stored.disconnected_at.map(unix_millis),
        subscriptions,
        messages,
    })
}

fn subscription(stored: &MqttSubscription) -> anyhow::Result<StoredSubscription> {
    Ok(StoredSubscription {
        filter: TopicFilter::new(stored.filter.as_str())
            .with_context(|| format!("invalid filter {:?}", stored.filter))?,
        qos: qos(stored.qos)?,
        no_local: stored.no_local,
        retain_as_published: stored.retain_as_published,
        subscription_id: stored.subscription_id.and_then(NonZeroU32::new),
    })
}

fn message(stored: MqttMessage) -> anyhow::Result<StoredMessage> {
    Ok(StoredMessage {
        topic: TopicName::new(stored.topic.as_str())
            .with_context(|| format!("invalid topic {:?}", stored.topic))?,
        payload: Bytes::from(stored.payload),
        qos: qos(stored.qos)?,
        retain: stored.retain,
        properties: Bytes::from(stored.properties),
        expires_at: stored.expires_at.map(unix_millis),
    })
}

fn qos(value: u8) -> anyhow::Result<QoS> {
    QoS::from_u8(value).with_context(|| format!("invalid QoS {value}"))
}

fn unix_millis(at: Timestamp) -> u64 {
    u64::try_from(at.millis()).unwrap_or(0)
}

fn timestamp(unix_ms: u64) -> Timestamp {
    Timestamp::from_millis(i64::try_from(unix_ms).unwrap_or(i64::MAX))
}

fn store_op(op: &PersistOp) -> MqttOp {
    match op {
        PersistOp::UpsertSession { client_id, expiry, disconnected_at } => MqttOp::UpsertSession {
            client_id: client_id.as_str().to_owned(),
            expiry_secs: *expiry,
            disconnected_at: disconnected_at.map(timestamp),
        },
        PersistOp::DeleteSession { client_id } => {
            MqttOp::DeleteSession { client_id: client_id.as_str().to_owned() }
        }
        PersistOp::PutSubscription { client_id, subscription } => MqttOp::PutSubscription {
            client_id: client_id.as_str().to_owned(),
            subscription: MqttSubscription {
                filter: subscription.filter.as_str().to_owned(),
                qos: subscription.qos.to_u8(),
                no_local: subscription.no_local,
                retain_as_published: subscription.retain_as_published,
                subscription_id: subscription.subscription_id.map(NonZeroU32::get),
            },
        },
        PersistOp::DeleteSubscription { client_id, filter } => MqttOp::DeleteSubscription {
            client_id: client_id.as_str().to_owned(),
            filter: filter.as_str().to_owned(),
        },
        PersistOp::EnqueueMessage { client_id, seq, message } => MqttOp::EnqueueMessage {
            client_id: client_id.as_str().to_owned(),
            queued: MqttQueued { seq: *seq, message: store_message(message) },
        },
        PersistOp::AckMessage { client_id, seq } => {
            MqttOp::AckMessage { client_id: client_id.as_str().to_owned(), seq: *seq }
        }
        PersistOp::PutRetained { message } => {
            MqttOp::PutRetained { message: store_message(message) }
        }
        PersistOp::DeleteRetained { topic } => {
            MqttOp::DeleteRetained { topic: topic.as_str().to_owned() }
        }
    }
}

fn store_message(message: &StoredMessage) -> MqttMessage {
    MqttMessage {
        topic: message.topic.as_str().to_owned(),
        payload: message.payload.to_vec(),
        qos: message.qos.to_u8(),
        retain: message.retain,
        properties: message.properties.to_vec(),
        expires_at: message.expires_at.map(timestamp),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every op survives the trip to the store's types and back through a snapshot.
    #[test]
    fn broker_values_round_trip_through_store_values() {
        let message = StoredMessage {
            topic: TopicName::new("devices/d/inbox").unwrap(),
            payload: Bytes::from_static(&[0, 255]),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties: Bytes::from_static(&[2, 1, 1]),
            expires_at: Some(1_700_000_000_000),
        };
        let subscription = StoredSubscription {
            filter: TopicFilter::new("$share/g/devices/d/#").unwrap(),
            qos: QoS::AtLeastOnce,
            no_local: true,
            retain_as_published: true,
            subscription_id: NonZeroU32::new(9),
        };
        let client_id = ClientId::new("d").unwrap();
        let ops = [
            PersistOp::UpsertSession {
                client_id: client_id.clone(),
                expiry: 60,
                disconnected_at: Some(5),
            },
            PersistOp::PutSubscription {
                client_id: client_id.clone(),
                subscription: subscription.clone(),
            },
            PersistOp::EnqueueMessage {
                client_id: client_id.clone(),
                seq: 3,
                message: message.clone(),
            },
            PersistOp::PutRetained { message: message.clone() },
        ];
        let MqttOp::UpsertSession { expiry_secs, disconnected_at, .. } = store_op(&ops[0]) else {
            panic!("not an upsert");
        };
        let MqttOp::PutSubscription { subscription: stored_sub, .. } = store_op(&ops[1]) else {
            panic!("not a subscription");
        };
        let MqttOp::EnqueueMessage { queued, .. } = store_op(&ops[2]) else {
            panic!("not an enqueue");
        };
        let MqttOp::PutRetained { message: retained } = store_op(&ops[3]) else {
            panic!("not a retained message");
        };
        let stored = MqttSnapshot {
            sessions: vec![MqttSession {
                client_id: "d".to_owned(),
                expiry_secs,
                disconnected_at,
                subscriptions: vec![stored_sub],
                messages: vec![queued],
            }],
            retained: vec![retained],
        };
        let expected = Snapshot {
            sessions: vec![StoredSession {
                client_id,
                expiry: 60,
                disconnected_at: Some(5),
                subscriptions: vec![subscription],
                messages: vec![QueuedMessage { seq: 3, message: message.clone() }],
            }],
            retained: vec![message],
        };
        assert_eq!(snapshot(stored).unwrap(), expected);
    }

    #[test]
    fn invalid_stored_values_name_the_session() {
        let stored = MqttSnapshot {
            sessions: vec![MqttSession {
                client_id: "d".to_owned(),
                expiry_secs: 60,
                disconnected_at: None,
                subscriptions: vec![MqttSubscription {
                    filter: "a/#/b".to_owned(),
                    qos: 1,
                    no_local: false,
                    retain_as_published: false,
                    subscription_id: None,
                }],
                messages: vec![],
            }],
            retained: vec![],
        };
        let error = format!("{:#}", snapshot(stored).unwrap_err());
        assert!(error.contains("\"d\"") && error.contains("a/#/b"), "{error}");
    }
}
