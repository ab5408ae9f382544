//! Device presence in `device_presence`: one row per device that ever connected, written by the
//! MQTT gateway in batches (one transaction each), outside the audit log and without the writers'
//! advisory lock (presence is observed, not an operator's change, and touches no audited row).

use domain::presence::SERVER_RESTART;
use domain::{DeviceId, Presence, Timestamp};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use store::{ConnectivitySummary, PresenceEvent, StoreResult};

use crate::error::{PostgresError, db};

/// Records `events` in one transaction, each device's in order. A connect of a device that does not
/// exist is ignored (the `SELECT` finds no row); so is a disconnect of a device not recorded as
/// connected (the `UPDATE` matches no row).
///
/// The transaction first takes a key-share lock on the batch's devices, in id order: a device being
/// deleted meanwhile is waited for and then skipped, instead of failing the batch on the foreign
/// key, and a deletion that comes later waits for the batch, so it cannot hold a device that the
/// batch waits for while waiting for a presence row that the batch holds. Rows are then written in
/// device id order (a stable sort keeps each device's events in order), so two batches running at
/// once lock their rows in the same order and cannot deadlock.
pub(crate) async fn record(pool: &PgPool, events: &[PresenceEvent]) -> StoreResult<()> {
    if events.is_empty() {
        return Ok(());
    }
    let mut ordered: Vec<&PresenceEvent> = events.iter().collect();
    ordered.sort_by(|a, b| a.device_id().as_str().cmp(b.device_id().as_str()));
    let mut ids: Vec<&str> = ordered.iter().map(|e| e.device_id().as_str()).collect();
    ids.dedup();
    let mut tx = pool.begin().await.map_err(db)?;
    sqlx::query("SELECT id FROM devices WHERE id = ANY($1) ORDER BY id FOR KEY SHARE")
        .bind(&ids)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    for event in ordered {
        let query = match event {
            PresenceEvent::Connect { device_id, at, remote_addr, protocol } => sqlx::query(
                "INSERT INTO device_presence
                     (device_id, connected, connected_at, remote_addr, protocol)
                 SELECT id, TRUE, $1, $2, $3 FROM devices WHERE id = $4
                 ON CONFLICT (device_id) DO UPDATE SET connected = TRUE,
                     connected_at = EXCLUDED.connected_at, remote_addr = EXCLUDED.remote_addr,
                     protocol = EXCLUDED.protocol",
            )
            .bind(at.millis())
            .bind(remote_addr.as_str())
            .bind(protocol.as_str())
            .bind(device_id.as_str()),
            PresenceEvent::Disconnect { device_id, at, reason } => sqlx::query(
                "UPDATE device_presence SET connected = FALSE, disconnected_at = $1,
                     last_disconnect_reason = $2
                 WHERE device_id = $3 AND connected",
            )
            .bind(at.millis())
            .bind(reason.as_str())
            .bind(device_id.as_str()),
        };
        query.execute(&mut *tx).await.map_err(db)?;
    }
    tx.commit().await.map_err(db)
}

/// Marks every connected device disconnected for a server restart.
pub(crate) async fn reset(pool: &PgPool, at: Timestamp) -> StoreResult<u64> {
    let done = sqlx::query(
        "UPDATE device_presence SET connected = FALSE, disconnected_at = $1,
             last_disconnect_reason = $2
         WHERE connected",
    )
    .bind(at.millis())
    .bind(SERVER_RESTART)
    .execute(pool)
    .await
    .map_err(db)?;
    Ok(done.rows_affected())
}

/// One device's presence row.
pub(crate) async fn get(pool: &PgPool, device: &DeviceId) -> StoreResult<Option<Presence>> {
    let row = sqlx::query(
        "SELECT device_id, connected, connected_at, disconnected_at, remote_addr, protocol,
             last_disconnect_reason
         FROM device_presence WHERE device_id = $1",
    )
    .bind(device.as_str())
    .fetch_optional(pool)
    .await
    .map_err(db)?;
    row.map(|r| presence(&r)).transpose()
}

/// Connected and ever-connected counts, from the partial index and the primary key.
pub(crate) async fn summary(pool: &PgPool) -> StoreResult<ConnectivitySummary> {
    let connected: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM device_presence WHERE connected")
        .fetch_one(pool)
        .await
        .map_err(db)?;
    let ever: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM device_presence")
        .fetch_one(pool)
        .await
        .map_err(db)?;
    Ok(ConnectivitySummary {
        connected: u64::try_from(connected).unwrap_or(0),
        ever_connected: u64::try_from(ever).unwrap_or(0),
    })
}

fn presence(row: &PgRow) -> StoreResult<Presence> {
    let id: String = row.try_get("device_id").map_err(db)?;
    let device_id =
        DeviceId::new(id.as_str()).map_err(|e| PostgresError::corrupt("presence device id", &e))?;
    Ok(Presence {
        device_id,
        connected: row.try_get("connected").map_err(db)?,
        connected_at: row
            .try_get::<Option<i64>, _>("connected_at")
            .map_err(db)?
            .map(Timestamp::from_millis),
        disconnected_at: row
            .try_get::<Option<i64>, _>("disconnected_at")
            .map_err(db)?
            .map(Timestamp::from_millis),
        remote_addr: row.try_get("remote_addr").map_err(db)?,
        protocol: row.try_get("protocol").map_err(db)?,
        last_disconnect_reason: row.try_get("last_disconnect_reason").map_err(db)?,
    })
}
