//! What devices' agents report about themselves, in `device_agent_reports`: one row per device whose
//! agent ever reported, written by the MQTT gateway in batches (one transaction each) outside the
//! audit log (the reports are observed, not an operator's change).

use domain::{AgentPayload, AgentReport, AgentReportUpdate, DeviceId, Timestamp};
use sqlx::{Sqlite, SqliteConnection, Transaction};
use store::StoreResult;

use crate::SqliteStore;
use crate::rows::{corrupt, db};

type ReportRow = (String, Option<String>, Option<i64>, Option<String>, Option<i64>, i64);

/// Records `reports` in order in one transaction; reports of devices that do not exist are ignored
/// (the `SELECT` finds no row).
pub(crate) async fn record(s: &SqliteStore, reports: &[AgentReportUpdate]) -> StoreResult<()> {
    if reports.is_empty() {
        return Ok(());
    }
    let mut tx = s.begin_write().await?;
    for report in reports {
        record_one(&mut tx, report).await?;
    }
    tx.commit().await.map_err(db)
}

async fn record_one(
    tx: &mut Transaction<'static, Sqlite>,
    report: &AgentReportUpdate,
) -> StoreResult<()> {
    // `WHERE` in the `SELECT` also keeps SQLite from reading `ON CONFLICT` as a join constraint.
    let (sql, device_id, payload, at) = match report {
        AgentReportUpdate::Facts { device_id, facts, at } => (
            "INSERT INTO device_agent_reports (device_id, facts, facts_at) \
             SELECT id, ?, ? FROM devices WHERE id = ? \
             ON CONFLICT (device_id) DO UPDATE SET facts = excluded.facts, \
             facts_at = excluded.facts_at",
            device_id,
            facts,
            at,
        ),
        AgentReportUpdate::Heartbeat { device_id, health, at } => (
            "INSERT INTO device_agent_reports (device_id, health, heartbeat_at, heartbeat_count) \
             SELECT id, ?, ?, 1 FROM devices WHERE id = ? \
             ON CONFLICT (device_id) DO UPDATE SET health = excluded.health, \
             heartbeat_at = excluded.heartbeat_at, \
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
        .execute(&mut **tx)
        .await
        .map_err(db)?;
    Ok(())
}

/// One device's agent report.
pub(crate) async fn get(
    conn: &mut SqliteConnection,
    device: &DeviceId,
) -> StoreResult<Option<AgentReport>> {
    let row: Option<ReportRow> = sqlx::query_as(
        "SELECT device_id, facts, facts_at, health, heartbeat_at, heartbeat_count \
         FROM device_agent_reports WHERE device_id = ?",
    )
    .bind(device.as_str())
    .fetch_optional(&mut *conn)
    .await
    .map_err(db)?;
    row.map(report_from_row).transpose()
}

fn report_from_row(row: ReportRow) -> StoreResult<AgentReport> {
    let (id, facts, facts_at, health, heartbeat_at, heartbeats) = row;
    let device_id = DeviceId::new(id.as_str())
        .map_err(|e| corrupt("device_agent_reports", &id, e.to_string()))?;
    let payload = |text: Option<String>, column: &str| -> StoreResult<Option<AgentPayload>> {
        let Some(text) = text else { return Ok(None) };
        match serde_json::from_str(&text) {
            Ok(serde_json::Value::Object(map)) => Ok(Some(AgentPayload::from_stored(map))),
            _ => {
                Err(corrupt("device_agent_reports", &id, format!("{column} is not a JSON object")))
            }
        }
    };
    Ok(AgentReport {
        facts: payload(facts, "facts")?,
        facts_at: facts_at.map(Timestamp::from_millis),
        health: payload(health, "health")?,
        heartbeat_at: heartbeat_at.map(Timestamp::from_millis),
        heartbeats: u64::try_from(heartbeats).map_err(|_| {
            corrupt("device_agent_reports", &id, format!("heartbeat_count is {heartbeats}"))
        })?,
        device_id,
    })
}
