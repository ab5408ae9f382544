//! Device presence in `device_presence`: one row per device that ever connected, written by the
//! MQTT gateway in single statements, outside the audit log and without the writers' advisory lock
//! (presence is observed, not an operator's change, and touches no audited row).

use domain::presence::SERVER_RESTART;
use domain::{DeviceId, Presence, Timestamp};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use store::{ConnectivitySummary, StoreResult};

use crate::error::{PostgresError, db};

/// Records a connection; a device that does not exist is ignored (the `SELECT` finds no row).
pub(crate) async fn record_connect(
    pool: &PgPool,
    device: &DeviceId,
    at: Timestamp,
    remote_addr: &str,
    protocol: &str,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO device_presence (device_id, connected, connected_at, remote_addr, protocol)
         SELECT id, TRUE, $1, $2, $3 FROM devices WHERE id = $4
         ON CONFLICT (device_id) DO UPDATE SET connected = TRUE,
             connected_at = EXCLUDED.connected_at, remote_addr = EXCLUDED.remote_addr,
             protocol = EXCLUDED.protocol",
    )
    .bind(at.millis())
    .bind(remote_addr)
    .bind(protocol)
    .bind(device.as_str())
    .execute(pool)
    .await
    .map_err(db)?;
    Ok(())
}

/// Records the end of a connection, if the device is recorded as connected.
pub(crate) async fn record_disconnect(
    pool: &PgPool,
    device: &DeviceId,
    at: Timestamp,
    reason: &str,
) -> StoreResult<()> {
    sqlx::query(
        "UPDATE device_presence SET connected = FALSE, disconnected_at = $1,
             last_disconnect_reason = $2
         WHERE device_id = $3 AND connected",
    )
    .bind(at.millis())
    .bind(reason)
    .bind(device.as_str())
    .execute(pool)
    .await
    .map_err(db)?;
    Ok(())
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
