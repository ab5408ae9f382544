//! Device presence in `device_presence`: one row per device that ever connected, written by the
//! MQTT gateway in single statements outside the audit log (presence is observed, not an
//! operator's change).

use domain::presence::SERVER_RESTART;
use domain::{DeviceId, Presence, Timestamp};
use sqlx::SqliteConnection;
use store::{ConnectivitySummary, StoreResult};

use crate::SqliteStore;
use crate::rows::{corrupt, db};

type PresenceRow =
    (String, i64, Option<i64>, Option<i64>, Option<String>, Option<String>, Option<String>);

/// Records a connection; a device that does not exist is ignored (the `SELECT` finds no row).
pub(crate) async fn record_connect(
    s: &SqliteStore,
    device: &DeviceId,
    at: Timestamp,
    remote_addr: &str,
    protocol: &str,
) -> StoreResult<()> {
    // `WHERE` in the `SELECT` also keeps SQLite from reading `ON CONFLICT` as a join constraint.
    sqlx::query(
        "INSERT INTO device_presence (device_id, connected, connected_at, remote_addr, protocol) \
         SELECT id, 1, ?, ?, ? FROM devices WHERE id = ? \
         ON CONFLICT (device_id) DO UPDATE SET connected = 1, \
         connected_at = excluded.connected_at, remote_addr = excluded.remote_addr, \
         protocol = excluded.protocol",
    )
    .bind(at.millis())
    .bind(remote_addr)
    .bind(protocol)
    .bind(device.as_str())
    .execute(&s.writer)
    .await
    .map_err(db)?;
    Ok(())
}

/// Records the end of a connection, if the device is recorded as connected.
pub(crate) async fn record_disconnect(
    s: &SqliteStore,
    device: &DeviceId,
    at: Timestamp,
    reason: &str,
) -> StoreResult<()> {
    sqlx::query(
        "UPDATE device_presence SET connected = 0, disconnected_at = ?, \
         last_disconnect_reason = ? WHERE device_id = ? AND connected = 1",
    )
    .bind(at.millis())
    .bind(reason)
    .bind(device.as_str())
    .execute(&s.writer)
    .await
    .map_err(db)?;
    Ok(())
}

/// Marks every connected device disconnected for a server restart.
pub(crate) async fn reset(s: &SqliteStore, at: Timestamp) -> StoreResult<u64> {
    let done = sqlx::query(
        "UPDATE device_presence SET connected = 0, disconnected_at = ?, \
         last_disconnect_reason = ? WHERE connected = 1",
    )
    .bind(at.millis())
    .bind(SERVER_RESTART)
    .execute(&s.writer)
    .await
    .map_err(db)?;
    Ok(done.rows_affected())
}

/// One device's presence row.
pub(crate) async fn get(
    conn: &mut SqliteConnection,
    device: &DeviceId,
) -> StoreResult<Option<Presence>> {
    let row: Option<PresenceRow> = sqlx::query_as(
        "SELECT device_id, connected, connected_at, disconnected_at, remote_addr, protocol, \
         last_disconnect_reason FROM device_presence WHERE device_id = ?",
    )
    .bind(device.as_str())
    .fetch_optional(&mut *conn)
    .await
    .map_err(db)?;
    row.map(presence_from_row).transpose()
}

/// Connected and ever-connected counts, from the partial index and the primary key.
pub(crate) async fn summary(conn: &mut SqliteConnection) -> StoreResult<ConnectivitySummary> {
    let connected: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM device_presence WHERE connected = 1")
            .fetch_one(&mut *conn)
            .await
            .map_err(db)?;
    let ever: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM device_presence")
        .fetch_one(&mut *conn)
        .await
        .map_err(db)?;
    Ok(ConnectivitySummary {
        connected: u64::try_from(connected).unwrap_or(0),
        ever_connected: u64::try_from(ever).unwrap_or(0),
    })
}

fn presence_from_row(row: PresenceRow) -> StoreResult<Presence> {
    let (id, connected, connected_at, disconnected_at, remote_addr, protocol, reason) = row;
    let device_id =
        DeviceId::new(id.as_str()).map_err(|e| corrupt("device_presence", &id, e.to_string()))?;
    Ok(Presence {
        device_id,
        connected: connected != 0,
        connected_at: connected_at.map(Timestamp::from_millis),
        disconnected_at: disconnected_at.map(Timestamp::from_millis),
        remote_addr,
        protocol,
        last_disconnect_reason: reason,
    })
}
