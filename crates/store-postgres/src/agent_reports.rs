//! What devices' agents report about themselves, in `device_agent_reports`: one row per device whose
//! agent ever reported, written by the MQTT gateway in batches (one transaction each), outside the
//! audit log and without the writers' advisory lock (the reports are observed, not an operator's
//! change, and touch no audited row).

use domain::{AgentPayload, AgentReport, AgentReportUpdate, DeviceId, Timestamp};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use store::StoreResult;

use crate::error::{PostgresError, db};

/// Records `reports` in one transaction, each device's in order; reports of devices that do not
/// exist are ignored (the `SELECT` finds no row).
///
/// Rows are written in device id order (a stable sort keeps each device's reports in order), so
/// two batches running at once lock their rows in the same order and cannot deadlock. The `SELECT`
/// takes a key-share lock on the device: a device being deleted meanwhile is waited for and then
/// skipped, instead of failing the batch on the foreign key.
pub(crate) async fn record(pool: &PgPool, reports: &[AgentReportUpdate]) -> StoreResult<()> {
    if reports.is_empty() {
        return Ok(());
    }
    let mut ordered: Vec<&AgentReportUpdate> = reports.iter().collect();
    ordered.sort_by(|a, b| a.device_id().as_str().cmp(b.device_id().as_str()));
    let mut tx = pool.begin().await.map_err(db)?;
    for report in ordered {
        let (sql, device_id, payload, at) = match report {
            AgentReportUpdate::Facts { device_id, facts, at } => (
                "INSERT INTO device_agent_reports (device_id, facts, facts_at)
                 SELECT id, $1, $2 FROM devices WHERE id = $3 FOR KEY SHARE
                 ON CONFLICT (device_id) DO UPDATE SET facts = EXCLUDED.facts,
                     facts_at = EXCLUDED.facts_at",
                device_id,
                facts,
                at,
            ),
            AgentReportUpdate::Heartbeat { device_id, health, at } => (
                "INSERT INTO device_agent_reports (device_id, health, heartbeat_at, heartbeat_count)
                 SELECT id, $1, $2, 1 FROM devices WHERE id = $3 FOR KEY SHARE
                 ON CONFLICT (device_id) DO UPDATE SET health = EXCLUDED.health,
                     heartbeat_at = EXCLUDED.heartbeat_at,
                     heartbeat_count = device_agent_reports.heartbeat_count + 1",
                device_id,
                health,
                at,
            ),
        };
        sqlx::query(sql)
            .bind(payload.to_json_string())
            .bind(at.millis())
            .bind(device_id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db)?;
    }
    tx.commit().await.map_err(db)
}

/// One device's agent report.
pub(crate) async fn get(pool: &PgPool, device: &DeviceId) -> StoreResult<Option<AgentReport>> {
    let row = sqlx::query(
        "SELECT device_id, facts, facts_at, health, heartbeat_at, heartbeat_count
         FROM device_agent_reports WHERE device_id = $1",
    )
    .bind(device.as_str())
    .fetch_optional(pool)
    .await
    .map_err(db)?;
    row.map(|r| report(&r)).transpose()
}

fn report(row: &PgRow) -> StoreResult<AgentReport> {
    let id: String = row.try_get("device_id").map_err(db)?;
    let device_id = DeviceId::new(id.as_str())
        .map_err(|e| PostgresError::corrupt("agent report device id", &e))?;
    let heartbeats: i64 = row.try_get("heartbeat_count").map_err(db)?;
    Ok(AgentReport {
        device_id,
        facts: payload(row, "facts")?,
        facts_at: row
            .try_get::<Option<i64>, _>("facts_at")
            .map_err(db)?
            .map(Timestamp::from_millis),
        health: payload(row, "health")?,
        heartbeat_at: row
            .try_get::<Option<i64>, _>("heartbeat_at")
            .map_err(db)?
            .map(Timestamp::from_millis),
        heartbeats: u64::try_from(heartbeats)
            .map_err(|e| PostgresError::corrupt("agent report heartbeat count", &e))?,
    })
}

/// A stored JSON object column (`facts`, `health`).
fn payload(row: &PgRow, column: &'static str) -> StoreResult<Option<AgentPayload>> {
    let Some(text) = row.try_get::<Option<String>, _>(column).map_err(db)? else {
        return Ok(None);
    };
    match serde_json::from_str(&text) {
        Ok(serde_json::Value::Object(map)) => Ok(Some(AgentPayload::from_stored(map))),
        _ => Err(PostgresError::corrupt(
            "agent report",
            &format_args!("{column} is not a JSON object"),
        )),
    }
}
