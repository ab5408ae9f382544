//! Conformance cases of the MQTT session state (`mqtt_load`, `mqtt_apply`).

use std::sync::Arc;

use domain::Timestamp;

use crate::conformance::{check_chain, last_seq};
use crate::{
    MqttMessage, MqttOp, MqttQueued, MqttSession, MqttSnapshot, MqttSubscription, Store, StoreError,
};

fn message(topic: &str, payload: &[u8], expires_at: Option<i64>) -> MqttMessage {
    MqttMessage {
        topic: topic.to_owned(),
        payload: payload.to_vec(),
        qos: 1,
        retain: false,
        properties: vec![3, 1, 1, 0],
        expires_at: expires_at.map(Timestamp::from_millis),
    }
}

fn subscription(filter: &str, qos: u8, subscription_id: Option<u32>) -> MqttSubscription {
    MqttSubscription {
        filter: filter.to_owned(),
        qos,
        no_local: qos == 2,
        retain_as_published: subscription_id.is_some(),
        subscription_id,
    }
}

fn upsert(client_id: &str, expiry_secs: u32, disconnected_at: Option<i64>) -> MqttOp {
    MqttOp::UpsertSession {
        client_id: client_id.to_owned(),
        expiry_secs,
        disconnected_at: disconnected_at.map(Timestamp::from_millis),
    }
}

fn put_sub(client_id: &str, subscription: MqttSubscription) -> MqttOp {
    MqttOp::PutSubscription { client_id: client_id.to_owned(), subscription }
}

fn enqueue(client_id: &str, seq: u64, message: MqttMessage) -> MqttOp {
    MqttOp::EnqueueMessage { client_id: client_id.to_owned(), queued: MqttQueued { seq, message } }
}

fn ack(client_id: &str, seq: u64) -> MqttOp {
    MqttOp::AckMessage { client_id: client_id.to_owned(), seq }
}

fn session(client_id: &str, expiry_secs: u32, disconnected_at: Option<i64>) -> MqttSession {
    MqttSession {
        client_id: client_id.to_owned(),
        expiry_secs,
        disconnected_at: disconnected_at.map(Timestamp::from_millis),
        subscriptions: Vec::new(),
        messages: Vec::new(),
    }
}

fn queued(seq: u64, message: MqttMessage) -> MqttQueued {
    MqttQueued { seq, message }
}

#[track_caller]
fn check_snapshot(got: &MqttSnapshot, expected: &MqttSnapshot) {
    assert_eq!(got, expected);
}

/// A fresh store holds no MQTT state; an empty batch commits.
pub async fn mqtt_fresh_store_is_empty(store: Arc<dyn Store>) {
    assert_eq!(store.mqtt_load().await.unwrap(), MqttSnapshot::default());
    store.mqtt_apply(&[]).await.unwrap();
    assert_eq!(store.mqtt_load().await.unwrap(), MqttSnapshot::default());
}

/// What is applied loads back exactly, in order (sessions by id, subscriptions by filter, messages
/// by seq, retained by topic), without audit records.
pub async fn mqtt_sessions_round_trip(store: Arc<dyn Store>) {
    let seq = last_seq(&*store).await;
    let big = vec![0xA5_u8; 256 * 1024];
    let binary = [0_u8, 0xFF, 0xC3, 0x28];
    let max_seq = i64::MAX as u64;
    store
        .mqtt_apply(&[
            upsert("dev-b", u32::MAX, None),
            upsert("dev-a", 60, Some(1_700_000_000_000)),
            put_sub("dev-a", subscription("devices/dev-a/#", 1, None)),
            put_sub("dev-a", subscription("$share/g/x/+", 2, Some(268_435_455))),
            put_sub("dev-a", subscription("devices/dev-a/#", 2, Some(7))),
            enqueue("dev-a", 30, message("devices/dev-a/c", &binary, Some(1_700_000_060_000))),
            enqueue("dev-a", 10, message("devices/dev-a/a", b"", None)),
            enqueue("dev-a", max_seq, message("devices/dev-a/z", &big, None)),
            enqueue("dev-b", 20, message("b", b"b", None)),
            MqttOp::PutRetained {
                message: MqttMessage { retain: true, ..message("r/2", b"2", None) },
            },
            MqttOp::PutRetained {
                message: MqttMessage {
                    retain: true,
                    qos: 0,
                    properties: vec![0],
                    ..message("r/1", b"1", Some(5))
                },
            },
        ])
        .await
        .unwrap();
    let expected = MqttSnapshot {
        sessions: vec![
            MqttSession {
                subscriptions: vec![
                    subscription("$share/g/x/+", 2, Some(268_435_455)),
                    subscription("devices/dev-a/#", 2, Some(7)),
                ],
                messages: vec![
                    queued(10, message("devices/dev-a/a", b"", None)),
                    queued(30, message("devices/dev-a/c", &binary, Some(1_700_000_060_000))),
                    queued(max_seq, message("devices/dev-a/z", &big, None)),
                ],
                ..session("dev-a", 60, Some(1_700_000_000_000))
            },
            MqttSession {
                messages: vec![queued(20, message("b", b"b", None))],
                ..session("dev-b", u32::MAX, None)
            },
        ],
        retained: vec![
            MqttMessage {
                retain: true,
                qos: 0,
                properties: vec![0],
                ..message("r/1", b"1", Some(5))
            },
            MqttMessage { retain: true, ..message("r/2", b"2", None) },
        ],
    };
    check_snapshot(&store.mqtt_load().await.unwrap(), &expected);

    // Upserting a session changes its expiry and disconnection time and keeps the rest.
    store.mqtt_apply(&[upsert("dev-a", 120, None)]).await.unwrap();
    let mut expected = expected;
    expected.sessions[0].expiry_secs = 120;
    expected.sessions[0].disconnected_at = None;
    check_snapshot(&store.mqtt_load().await.unwrap(), &expected);

    assert_eq!(last_seq(&*store).await, seq, "MQTT session state must not be audited");
    check_chain(&*store).await;
}

/// Deleting a session deletes its subscriptions and messages, and nothing of other sessions.
pub async fn mqtt_delete_session_cascades(store: Arc<dyn Store>) {
    store
        .mqtt_apply(&[
            upsert("a", 60, None),
            upsert("b", 60, None),
            put_sub("a", subscription("t/a", 1, None)),
            put_sub("b", subscription("t/b", 1, None)),
            enqueue("a", 1, message("t/a", b"1", None)),
            enqueue("b", 2, message("t/b", b"2", None)),
            MqttOp::DeleteSession { client_id: "a".to_owned() },
        ])
        .await
        .unwrap();
    let b = MqttSession {
        subscriptions: vec![subscription("t/b", 1, None)],
        messages: vec![queued(2, message("t/b", b"2", None))],
        ..session("b", 60, None)
    };
    check_snapshot(
        &store.mqtt_load().await.unwrap(),
        &MqttSnapshot { sessions: vec![b.clone()], retained: vec![] },
    );
    // A session created again under the same id starts empty.
    store.mqtt_apply(&[upsert("a", 30, Some(9))]).await.unwrap();
    check_snapshot(
        &store.mqtt_load().await.unwrap(),
        &MqttSnapshot { sessions: vec![session("a", 30, Some(9)), b], retained: vec![] },
    );
}

/// Acknowledging removes exactly that message; unsubscribing removes exactly that subscription.
pub async fn mqtt_ack_and_unsubscribe_remove_one(store: Arc<dyn Store>) {
    store
        .mqtt_apply(&[
            upsert("a", 60, None),
            upsert("b", 60, None),
            put_sub("a", subscription("x", 1, None)),
            put_sub("a", subscription("y", 1, None)),
            enqueue("a", 1, message("x", b"1", None)),
            enqueue("a", 2, message("x", b"2", None)),
            enqueue("b", 3, message("x", b"3", None)),
        ])
        .await
        .unwrap();
    store
        .mqtt_apply(&[
            ack("a", 1),
            // Another session's number, and numbers nobody has: nothing happens.
            ack("b", 2),
            ack("a", 99),
            MqttOp::DeleteSubscription { client_id: "a".to_owned(), filter: "x".to_owned() },
            MqttOp::DeleteSubscription { client_id: "a".to_owned(), filter: "nope".to_owned() },
        ])
        .await
        .unwrap();
    let expected = MqttSnapshot {
        sessions: vec![
            MqttSession {
                subscriptions: vec![subscription("y", 1, None)],
                messages: vec![queued(2, message("x", b"2", None))],
                ..session("a", 60, None)
            },
            MqttSession {
                messages: vec![queued(3, message("x", b"3", None))],
                ..session("b", 60, None)
            },
        ],
        retained: vec![],
    };
    check_snapshot(&store.mqtt_load().await.unwrap(), &expected);
}

/// A retained message is put, overwritten by the next one for its topic, and deleted.
pub async fn mqtt_retained_put_overwrite_delete(store: Arc<dyn Store>) {
    let retained = |payload: &[u8]| MqttMessage { retain: true, ..message("r", payload, None) };
    store.mqtt_apply(&[MqttOp::PutRetained { message: retained(b"1") }]).await.unwrap();
    store.mqtt_apply(&[MqttOp::PutRetained { message: retained(b"2") }]).await.unwrap();
    assert_eq!(store.mqtt_load().await.unwrap().retained, vec![retained(b"2")]);
    store
        .mqtt_apply(&[
            MqttOp::DeleteRetained { topic: "r".to_owned() },
            MqttOp::DeleteRetained { topic: "never".to_owned() },
        ])
        .await
        .unwrap();
    assert_eq!(store.mqtt_load().await.unwrap(), MqttSnapshot::default());
}

/// Applying a batch twice leaves what applying it once does (an enqueue keeps the first message with
/// its number), and ops for sessions that do not exist change nothing.
pub async fn mqtt_ops_are_idempotent_and_ignore_unknown_sessions(store: Arc<dyn Store>) {
    let batch = [
        upsert("a", 60, None),
        put_sub("a", subscription("x", 1, None)),
        enqueue("a", 1, message("x", b"first", None)),
        MqttOp::PutRetained { message: MqttMessage { retain: true, ..message("r", b"r", None) } },
        put_sub("ghost", subscription("x", 1, None)),
        enqueue("ghost", 2, message("x", b"ghost", None)),
        ack("ghost", 2),
        MqttOp::DeleteSubscription { client_id: "ghost".to_owned(), filter: "x".to_owned() },
        MqttOp::DeleteSession { client_id: "ghost".to_owned() },
    ];
    store.mqtt_apply(&batch).await.unwrap();
    let once = store.mqtt_load().await.unwrap();
    store.mqtt_apply(&batch).await.unwrap();
    store.mqtt_apply(&[enqueue("a", 1, message("x", b"second", None))]).await.unwrap();
    let twice = store.mqtt_load().await.unwrap();
    assert_eq!(twice, once);
    assert_eq!(
        once,
        MqttSnapshot {
            sessions: vec![MqttSession {
                subscriptions: vec![subscription("x", 1, None)],
                messages: vec![queued(1, message("x", b"first", None))],
                ..session("a", 60, None)
            }],
            retained: vec![MqttMessage { retain: true, ..message("r", b"r", None) }],
        }
    );
}

/// A batch that fails applies nothing, not even the ops before the failing one.
pub async fn mqtt_failed_batch_applies_nothing(store: Arc<dyn Store>) {
    store.mqtt_apply(&[upsert("kept", 60, None)]).await.unwrap();
    let before = store.mqtt_load().await.unwrap();
    let result = store
        .mqtt_apply(&[
            upsert("a", 60, None),
            enqueue("a", 1, message("x", b"1", None)),
            MqttOp::DeleteSession { client_id: "kept".to_owned() },
            MqttOp::PutRetained {
                message: MqttMessage { retain: true, ..message("r", b"r", None) },
            },
            // No database column holds this sequence number.
            enqueue("a", u64::MAX, message("x", b"2", None)),
        ])
        .await;
    assert!(matches!(result, Err(StoreError::Backend(_))), "{result:?}");
    assert_eq!(store.mqtt_load().await.unwrap(), before);
}
