//! Device presence in `device_presence`: one row per device that ever connected, written by the
//! MQTT gateway in batches (one transaction each) outside the audit log (presence is observed, not
//! an operator's change).

use domain::presence::SERVER_RESTART;
use domain::{DeviceId, Presence, Timestamp};
use sqlx::{Sqlite, SqliteConnection, Transaction};
use store::{ConnectivitySummary, PresenceEvent, StoreResult};

use crate::SqliteStore;
use crate::rows::{corrupt, db};

type PresenceRow =
    (String, i64, Option<i64>, Option<i64>, Option<String>, Option<String>, Option<String>);

/// Records `events` in order in one write transaction. A connect of a device that does not exist
/// is ignored (the `SELECT` finds no row); so is a disconnect of a device not recorded as connected
/// (the `UPDATE` matches no row).
pub(crate) async fn record(s: &SqliteStore, events: &[PresenceEvent]) -> StoreResult<()> {
    if events.is_empty() {
        return Ok(());
    }
    let mut tx = s.begin_write().await?;
    for event in events {
        record_one(&mut tx, event).await?;
    }
    tx.commit().await.map_err(db)
}

async fn record_one(
    tx: &mut Transaction<'static, Sqlite>,
    event: &PresenceEvent,
) -> StoreResult<()> {
    let query = match event {
        // `WHERE` in the `SELECT` also keeps SQLite from reading `ON CONFLICT` as a join constraint.
        PresenceEvent::Connect { device_id, at, remote_addr, protocol } => sqlx::query(
            "INSERT INTO device_presence (device_id, connected, connected_at, remote_addr, \
             protocol) \
             SELECT id, 1, ?, ?, ? FROM devices WHERE id = ? \
             ON CONFLICT (device_id) DO UPDATE SET connected = 1, \
             connected_at = excluded.connected_at, remote_addr = excluded.remote_addr, \
             protocol = excluded.protocol",
        )
        .bind(at.millis())
        .bind(remote_addr.as_str())
        .bind(protocol.as_str())
        .bind(device_id.as_str()),
        PresenceEvent::Disconnect { device_id, at, reason } => sqlx::query(
            "UPDATE device_presence SET connected = 0, disconnected_at = ?, \
             last_disconnect_reason = ? WHERE device_id = ? AND connected = 1",
        )
        .bind(at.millis())
        .bind(reason.as_str())
        .bind(device_id.as_str()),
    };
    query.execute(&mut **tx).await.map_err(db)?;
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
