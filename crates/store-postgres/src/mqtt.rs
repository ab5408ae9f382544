//! The MQTT broker's persistent sessions and retained messages (`mqtt_*` tables, migration 0004):
//! loaded once at startup in one repeatable-read transaction, changed in batches, one transaction
//! per batch. These writes touch no audited row, so they take neither the audit log nor the
//! writers' advisory lock; the broker has a single writer for them.

use std::collections::HashMap;

use domain::Timestamp;
use sqlx::{PgPool, Postgres, Row, Transaction};
use store::{
    MqttMessage, MqttOp, MqttQueued, MqttSession, MqttSnapshot, MqttSubscription, StoreError,
    StoreResult,
};

use crate::error::{PostgresError, db};

/// Everything stored, in the order `Store::mqtt_load` promises.
pub(crate) async fn load(pool: &PgPool) -> StoreResult<MqttSnapshot> {
    let mut tx = pool.begin().await.map_err(db)?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    let sessions = sqlx::query(
        "SELECT client_id, expiry_secs, disconnected_at FROM mqtt_sessions ORDER BY client_id",
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(db)?;
    let subscriptions = sqlx::query(
        "SELECT client_id, filter, qos, no_local, retain_as_published, subscription_id
         FROM mqtt_subscriptions ORDER BY client_id, filter",
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(db)?;
    let messages = sqlx::query(
        "SELECT client_id, seq, topic, payload, qos, retain, properties, expires_at
         FROM mqtt_messages ORDER BY client_id, seq",
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(db)?;
    let retained = sqlx::query(
        "SELECT topic, payload, qos, properties, expires_at FROM mqtt_retained ORDER BY topic",
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(db)?;
    tx.commit().await.map_err(db)?;

    let mut snapshot = MqttSnapshot::default();
    let mut index = HashMap::with_capacity(sessions.len());
    for row in sessions {
        let client_id: String = row.try_get("client_id").map_err(db)?;
        let expiry: i64 = row.try_get("expiry_secs").map_err(db)?;
        let disconnected_at: Option<i64> = row.try_get("disconnected_at").map_err(db)?;
        index.insert(client_id.clone(), snapshot.sessions.len());
        snapshot.sessions.push(MqttSession {
            client_id,
            expiry_secs: u32::try_from(expiry)
                .map_err(|e| PostgresError::corrupt("mqtt session expiry", &e))?,
            disconnected_at: disconnected_at.map(Timestamp::from_millis),
            subscriptions: Vec::new(),
            messages: Vec::new(),
        });
    }
    for row in subscriptions {
        let client_id: String = row.try_get("client_id").map_err(db)?;
        let subscription_id: Option<i64> = row.try_get("subscription_id").map_err(db)?;
        let subscription = MqttSubscription {
            filter: row.try_get("filter").map_err(db)?,
            qos: qos(row.try_get("qos").map_err(db)?)?,
            no_local: row.try_get("no_local").map_err(db)?,
            retain_as_published: row.try_get("retain_as_published").map_err(db)?,
            subscription_id: subscription_id
                .map(u32::try_from)
                .transpose()
                .map_err(|e| PostgresError::corrupt("mqtt subscription id", &e))?,
        };
        // The foreign key guarantees the session.
        if let Some(&i) = index.get(&client_id) {
            snapshot.sessions[i].subscriptions.push(subscription);
        }
    }
    for row in messages {
        let client_id: String = row.try_get("client_id").map_err(db)?;
        let seq: i64 = row.try_get("seq").map_err(db)?;
        let queued = MqttQueued {
            seq: u64::try_from(seq).map_err(|e| PostgresError::corrupt("mqtt message seq", &e))?,
            message: message(&row, row.try_get("retain").map_err(db)?)?,
        };
        if let Some(&i) = index.get(&client_id) {
            snapshot.sessions[i].messages.push(queued);
        }
    }
    for row in retained {
        snapshot.retained.push(message(&row, true)?);
    }
    Ok(snapshot)
}

fn message(row: &sqlx::postgres::PgRow, retain: bool) -> StoreResult<MqttMessage> {
    let expires_at: Option<i64> = row.try_get("expires_at").map_err(db)?;
    Ok(MqttMessage {
        topic: row.try_get("topic").map_err(db)?,
        payload: row.try_get("payload").map_err(db)?,
        qos: qos(row.try_get("qos").map_err(db)?)?,
        retain,
        properties: row.try_get("properties").map_err(db)?,
        expires_at: expires_at.map(Timestamp::from_millis),
    })
}

fn qos(value: i16) -> StoreResult<u8> {
    u8::try_from(value)
        .ok()
        .filter(|q| *q <= 2)
        .ok_or_else(|| PostgresError::corrupt("mqtt qos", &value))
}

/// Applies `ops` in one transaction; any failure rolls all of them back.
pub(crate) async fn apply(pool: &PgPool, ops: &[MqttOp]) -> StoreResult<()> {
    if ops.is_empty() {
        return Ok(());
    }
    let mut tx = pool.begin().await.map_err(db)?;
    for op in ops {
        apply_one(&mut tx, op).await?;
    }
    tx.commit().await.map_err(db)
}

async fn apply_one(tx: &mut Transaction<'static, Postgres>, op: &MqttOp) -> StoreResult<()> {
    match op {
        MqttOp::UpsertSession { client_id, expiry_secs, disconnected_at } => {
            sqlx::query(
                "INSERT INTO mqtt_sessions (client_id, expiry_secs, disconnected_at)
                 VALUES ($1, $2, $3)
                 ON CONFLICT (client_id) DO UPDATE SET expiry_secs = EXCLUDED.expiry_secs,
                     disconnected_at = EXCLUDED.disconnected_at",
            )
            .bind(client_id)
            .bind(i64::from(*expiry_secs))
            .bind(disconnected_at.map(Timestamp::millis))
            .execute(&mut **tx)
            .await
        }
        MqttOp::DeleteSession { client_id } => {
            // Subscriptions and messages go with it (ON DELETE CASCADE).
            sqlx::query("DELETE FROM mqtt_sessions WHERE client_id = $1")
                .bind(client_id)
                .execute(&mut **tx)
                .await
        }
        MqttOp::PutSubscription { client_id, subscription: sub } => {
            sqlx::query(
                "INSERT INTO mqtt_subscriptions
                     (client_id, filter, qos, no_local, retain_as_published, subscription_id)
                 SELECT client_id, $2, $3, $4, $5, $6 FROM mqtt_sessions WHERE client_id = $1
                 ON CONFLICT (client_id, filter) DO UPDATE SET qos = EXCLUDED.qos,
                     no_local = EXCLUDED.no_local,
                     retain_as_published = EXCLUDED.retain_as_published,
                     subscription_id = EXCLUDED.subscription_id",
            )
            .bind(client_id)
            .bind(&sub.filter)
            .bind(i16::from(sub.qos))
            .bind(sub.no_local)
            .bind(sub.retain_as_published)
            .bind(sub.subscription_id.map(i64::from))
            .execute(&mut **tx)
            .await
        }
        MqttOp::DeleteSubscription { client_id, filter } => {
            sqlx::query("DELETE FROM mqtt_subscriptions WHERE client_id = $1 AND filter = $2")
                .bind(client_id)
                .bind(filter)
                .execute(&mut **tx)
                .await
        }
        MqttOp::EnqueueMessage { client_id, queued } => {
            let m = &queued.message;
            let seq = i64::try_from(queued.seq).map_err(|_| {
                StoreError::backend(PostgresError::OutOfRange {
                    what: "mqtt message seq",
                    value: queued.seq,
                })
            })?;
            sqlx::query(
                "INSERT INTO mqtt_messages
                     (client_id, seq, topic, payload, qos, retain, properties, expires_at)
                 SELECT client_id, $2, $3, $4, $5, $6, $7, $8 FROM mqtt_sessions
                 WHERE client_id = $1
                 ON CONFLICT (client_id, seq) DO NOTHING",
            )
            .bind(client_id)
            .bind(seq)
            .bind(&m.topic)
            .bind(&m.payload)
            .bind(i16::from(m.qos))
            .bind(m.retain)
            .bind(&m.properties)
            .bind(m.expires_at.map(Timestamp::millis))
            .execute(&mut **tx)
            .await
        }
        MqttOp::AckMessage { client_id, seq } => {
            // A number beyond any column names no stored message.
            let Ok(seq) = i64::try_from(*seq) else { return Ok(()) };
            sqlx::query("DELETE FROM mqtt_messages WHERE client_id = $1 AND seq = $2")
                .bind(client_id)
                .bind(seq)
                .execute(&mut **tx)
                .await
        }
        MqttOp::PutRetained { message: m } => {
            sqlx::query(
                "INSERT INTO mqtt_retained (topic, payload, qos, properties, expires_at)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (topic) DO UPDATE SET payload = EXCLUDED.payload,
                     qos = EXCLUDED.qos, properties = EXCLUDED.properties,
                     expires_at = EXCLUDED.expires_at",
            )
            .bind(&m.topic)
            .bind(&m.payload)
            .bind(i16::from(m.qos))
            .bind(&m.properties)
            .bind(m.expires_at.map(Timestamp::millis))
            .execute(&mut **tx)
            .await
        }
        MqttOp::DeleteRetained { topic } => {
            sqlx::query("DELETE FROM mqtt_retained WHERE topic = $1")
                .bind(topic)
                .execute(&mut **tx)
                .await
        }
    }
    .map_err(db)?;
    Ok(())
}
