//! The MQTT broker's persistent sessions and retained messages (`mqtt_*` tables, migration 0004):
//! loaded once at startup from a reader, changed in batches on the writer connection, one
//! transaction per batch, outside the audit log.

use std::collections::HashMap;

use domain::Timestamp;
use sqlx::{Sqlite, SqliteConnection, Transaction};
use store::{
    MqttMessage, MqttOp, MqttQueued, MqttSession, MqttSnapshot, MqttSubscription, StoreError,
    StoreResult,
};

use crate::rows::{corrupt, db};
use crate::{SqliteError, SqliteStore};

type SessionRow = (String, i64, Option<i64>);
type SubscriptionRow = (String, String, i64, bool, bool, Option<i64>);
type MessageRow = (String, i64, String, Vec<u8>, i64, bool, Vec<u8>, Option<i64>);
type RetainedRow = (String, Vec<u8>, i64, Vec<u8>, Option<i64>);

/// Everything stored, in the order `Store::mqtt_load` promises, read in one transaction.
pub(crate) async fn load(conn: &mut SqliteConnection) -> StoreResult<MqttSnapshot> {
    let mut tx = sqlx::Connection::begin(&mut *conn).await.map_err(db)?;
    let sessions: Vec<SessionRow> = sqlx::query_as(
        "SELECT client_id, expiry_secs, disconnected_at FROM mqtt_sessions ORDER BY client_id",
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(db)?;
    let subscriptions: Vec<SubscriptionRow> = sqlx::query_as(
        "SELECT client_id, filter, qos, no_local, retain_as_published, subscription_id \
         FROM mqtt_subscriptions ORDER BY client_id, filter",
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(db)?;
    let messages: Vec<MessageRow> = sqlx::query_as(
        "SELECT client_id, seq, topic, payload, qos, retain, properties, expires_at \
         FROM mqtt_messages ORDER BY client_id, seq",
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(db)?;
    let retained: Vec<RetainedRow> = sqlx::query_as(
        "SELECT topic, payload, qos, properties, expires_at FROM mqtt_retained ORDER BY topic",
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(db)?;
    tx.commit().await.map_err(db)?;

    let mut snapshot = MqttSnapshot::default();
    let mut index = HashMap::with_capacity(sessions.len());
    for (client_id, expiry, disconnected_at) in sessions {
        let expiry_secs = u32::try_from(expiry)
            .map_err(|_| corrupt("mqtt_sessions", &client_id, format!("expiry {expiry}")))?;
        index.insert(client_id.clone(), snapshot.sessions.len());
        snapshot.sessions.push(MqttSession {
            client_id,
            expiry_secs,
            disconnected_at: disconnected_at.map(Timestamp::from_millis),
            subscriptions: Vec::new(),
            messages: Vec::new(),
        });
    }
    for (client_id, filter, qos, no_local, retain_as_published, subscription_id) in subscriptions {
        let key = format!("{client_id} {filter}");
        let subscription = MqttSubscription {
            qos: qos_of("mqtt_subscriptions", &key, qos)?,
            no_local,
            retain_as_published,
            subscription_id: subscription_id
                .map(|id| {
                    u32::try_from(id).map_err(|_| {
                        corrupt("mqtt_subscriptions", &key, format!("subscription id {id}"))
                    })
                })
                .transpose()?,
            filter,
        };
        // The foreign key guarantees the session; a row without one would be skipped.
        if let Some(&i) = index.get(&client_id) {
            snapshot.sessions[i].subscriptions.push(subscription);
        }
    }
    for (client_id, seq, topic, payload, qos, retain, properties, expires_at) in messages {
        let key = format!("{client_id} {seq}");
        let queued = MqttQueued {
            seq: u64::try_from(seq)
                .map_err(|_| corrupt("mqtt_messages", &key, format!("seq {seq}")))?,
            message: MqttMessage {
                topic,
                payload,
                qos: qos_of("mqtt_messages", &key, qos)?,
                retain,
                properties,
                expires_at: expires_at.map(Timestamp::from_millis),
            },
        };
        if let Some(&i) = index.get(&client_id) {
            snapshot.sessions[i].messages.push(queued);
        }
    }
    for (topic, payload, qos, properties, expires_at) in retained {
        snapshot.retained.push(MqttMessage {
            qos: qos_of("mqtt_retained", &topic, qos)?,
            topic,
            payload,
            retain: true,
            properties,
            expires_at: expires_at.map(Timestamp::from_millis),
        });
    }
    Ok(snapshot)
}

/// Applies `ops` in one write transaction; any failure rolls all of them back.
pub(crate) async fn apply(s: &SqliteStore, ops: &[MqttOp]) -> StoreResult<()> {
    if ops.is_empty() {
        return Ok(());
    }
    let mut tx = s.begin_write().await?;
    for op in ops {
        apply_one(&mut tx, op).await?;
    }
    tx.commit().await.map_err(db)
}

async fn apply_one(tx: &mut Transaction<'static, Sqlite>, op: &MqttOp) -> StoreResult<()> {
    match op {
        MqttOp::UpsertSession { client_id, expiry_secs, disconnected_at } => {
            sqlx::query(
                "INSERT INTO mqtt_sessions (client_id, expiry_secs, disconnected_at) \
                 VALUES (?, ?, ?) ON CONFLICT (client_id) DO UPDATE SET \
                 expiry_secs = excluded.expiry_secs, disconnected_at = excluded.disconnected_at",
            )
            .bind(client_id)
            .bind(i64::from(*expiry_secs))
            .bind(disconnected_at.map(Timestamp::millis))
            .execute(&mut **tx)
            .await
        }
        MqttOp::DeleteSession { client_id } => {
            // Subscriptions and messages go with it (ON DELETE CASCADE).
            sqlx::query("DELETE FROM mqtt_sessions WHERE client_id = ?")
                .bind(client_id)
                .execute(&mut **tx)
                .await
        }
        MqttOp::PutSubscription { client_id, subscription: sub } => {
            // `WHERE` in the `SELECT` also keeps SQLite from reading `ON CONFLICT` as a join
            // constraint.
            sqlx::query(
                "INSERT INTO mqtt_subscriptions \
                 (client_id, filter, qos, no_local, retain_as_published, subscription_id) \
                 SELECT client_id, ?, ?, ?, ?, ? FROM mqtt_sessions WHERE client_id = ? \
                 ON CONFLICT (client_id, filter) DO UPDATE SET qos = excluded.qos, \
                 no_local = excluded.no_local, retain_as_published = excluded.retain_as_published, \
                 subscription_id = excluded.subscription_id",
            )
            .bind(&sub.filter)
            .bind(i64::from(sub.qos))
            .bind(sub.no_local)
            .bind(sub.retain_as_published)
            .bind(sub.subscription_id.map(i64::from))
            .bind(client_id)
            .execute(&mut **tx)
            .await
        }
        MqttOp::DeleteSubscription { client_id, filter } => {
            sqlx::query("DELETE FROM mqtt_subscriptions WHERE client_id = ? AND filter = ?")
                .bind(client_id)
                .bind(filter)
                .execute(&mut **tx)
                .await
        }
        MqttOp::EnqueueMessage { client_id, queued } => {
            let m = &queued.message;
            sqlx::query(
                "INSERT INTO mqtt_messages \
                 (client_id, seq, topic, payload, qos, retain, properties, expires_at) \
                 SELECT client_id, ?, ?, ?, ?, ?, ?, ? FROM mqtt_sessions WHERE client_id = ? \
                 ON CONFLICT (client_id, seq) DO NOTHING",
            )
            .bind(seq_column(queued.seq)?)
            .bind(&m.topic)
            .bind(&m.payload)
            .bind(i64::from(m.qos))
            .bind(m.retain)
            .bind(&m.properties)
            .bind(m.expires_at.map(Timestamp::millis))
            .bind(client_id)
            .execute(&mut **tx)
            .await
        }
        MqttOp::AckMessage { client_id, seq } => {
            // A number beyond any column names no stored message.
            let Ok(seq) = i64::try_from(*seq) else { return Ok(()) };
            sqlx::query("DELETE FROM mqtt_messages WHERE client_id = ? AND seq = ?")
                .bind(client_id)
                .bind(seq)
                .execute(&mut **tx)
                .await
        }
        MqttOp::PutRetained { message: m } => {
            sqlx::query(
                "INSERT INTO mqtt_retained (topic, payload, qos, properties, expires_at) \
                 VALUES (?, ?, ?, ?, ?) ON CONFLICT (topic) DO UPDATE SET \
                 payload = excluded.payload, qos = excluded.qos, \
                 properties = excluded.properties, expires_at = excluded.expires_at",
            )
            .bind(&m.topic)
            .bind(&m.payload)
            .bind(i64::from(m.qos))
            .bind(&m.properties)
            .bind(m.expires_at.map(Timestamp::millis))
            .execute(&mut **tx)
            .await
        }
        MqttOp::DeleteRetained { topic } => {
            sqlx::query("DELETE FROM mqtt_retained WHERE topic = ?")
                .bind(topic)
                .execute(&mut **tx)
                .await
        }
    }
    .map_err(db)?;
    Ok(())
}

fn seq_column(seq: u64) -> StoreResult<i64> {
    i64::try_from(seq).map_err(|_| {
        StoreError::backend(SqliteError::OutOfRange { what: "mqtt message seq", value: seq })
    })
}

fn qos_of(table: &'static str, key: &str, qos: i64) -> StoreResult<u8> {
    u8::try_from(qos)
        .ok()
        .filter(|q| *q <= 2)
        .ok_or_else(|| corrupt(table, key, format!("qos {qos}")))
}
