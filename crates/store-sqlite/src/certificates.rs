//! Device certificates in `device_certificates`, keyed by serial.

use domain::{
    CertificateSerial, DeviceCertificate, DeviceId, Mutation, NewDeviceCertificate, Timestamp,
};
use sqlx::SqliteConnection;
use store::{StoreError, StoreResult};

use crate::SqliteStore;
use crate::audit_chain::{append_and_commit, entry};
use crate::rows::{corrupt, db, unique_or_db};

/// The columns [`from_row`] reads.
const COLUMNS: &str =
    "serial, device_id, fingerprint_sha256, not_before, not_after, created_at, revoked_at, pem";

/// `device_certificates` columns in [`COLUMNS`] order.
type Row = (String, String, String, i64, i64, i64, Option<i64>, String);

/// Reads a row back, re-validating the serial and device id.
fn from_row(row: Row) -> StoreResult<DeviceCertificate> {
    let (serial, device_id, fingerprint_sha256, not_before, not_after, created_at, revoked_at, pem) =
        row;
    let bad = |reason: String| corrupt("device_certificates", &serial, reason);
    Ok(DeviceCertificate {
        serial: CertificateSerial::new(serial.as_str()).map_err(|e| bad(e.to_string()))?,
        device_id: DeviceId::new(device_id).map_err(|e| bad(e.to_string()))?,
        fingerprint_sha256,
        not_before: Timestamp::from_millis(not_before),
        not_after: Timestamp::from_millis(not_after),
        created_at: Timestamp::from_millis(created_at),
        revoked_at: revoked_at.map(Timestamp::from_millis),
        pem,
    })
}

/// Stores a new certificate for an existing device.
pub(crate) async fn create(
    s: &SqliteStore,
    new: &NewDeviceCertificate,
    m: &Mutation,
) -> StoreResult<DeviceCertificate> {
    let certificate = DeviceCertificate {
        serial: new.serial.clone(),
        device_id: new.device_id.clone(),
        fingerprint_sha256: new.fingerprint_sha256.clone(),
        not_before: new.not_before,
        not_after: new.not_after,
        created_at: m.at,
        revoked_at: None,
        pem: new.pem.clone(),
    };
    let mut tx = s.begin_write().await?;
    // The write lock is held: the device cannot go away between this check and the insert.
    let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM devices WHERE id = ?")
        .bind(certificate.device_id.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
    if exists.is_none() {
        return Err(StoreError::NotFound { kind: "device", id: certificate.device_id.to_string() });
    }
    sqlx::query(
        "INSERT INTO device_certificates (serial, device_id, fingerprint_sha256, not_before, \
         not_after, created_at, revoked_at, pem) VALUES (?, ?, ?, ?, ?, ?, NULL, ?)",
    )
    .bind(certificate.serial.as_str())
    .bind(certificate.device_id.as_str())
    .bind(&certificate.fingerprint_sha256)
    .bind(certificate.not_before.millis())
    .bind(certificate.not_after.millis())
    .bind(certificate.created_at.millis())
    .bind(&certificate.pem)
    .execute(&mut *tx)
    .await
    .map_err(unique_or_db("certificate", &certificate.serial))?;
    append_and_commit(
        tx,
        &entry(
            m,
            "device.certificate.create",
            resource(&certificate.device_id),
            None,
            Some(certificate.audit_summary()),
        ),
    )
    .await?;
    Ok(certificate)
}

/// Finds a certificate by its serial (the primary key).
pub(crate) async fn by_serial(
    conn: &mut SqliteConnection,
    serial: &CertificateSerial,
) -> StoreResult<Option<DeviceCertificate>> {
    let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM device_certificates WHERE serial = ?"
    )))
    .bind(serial.as_str())
    .fetch_optional(&mut *conn)
    .await
    .map_err(db)?;
    row.map(from_row).transpose()
}

/// Certificates not revoked ending before `before`, soonest first.
pub(crate) async fn expiring(
    conn: &mut SqliteConnection,
    before: Timestamp,
    limit: u32,
) -> StoreResult<Vec<DeviceCertificate>> {
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM device_certificates WHERE revoked_at IS NULL AND not_after < ? \
         ORDER BY not_after, serial LIMIT ?"
    )))
    .bind(before.millis())
    .bind(i64::from(limit))
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    rows.into_iter().map(from_row).collect()
}

/// A device's certificates, newest first (ties: highest serial first).
pub(crate) async fn list(
    conn: &mut SqliteConnection,
    device: &DeviceId,
) -> StoreResult<Vec<DeviceCertificate>> {
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM device_certificates WHERE device_id = ? \
         ORDER BY created_at DESC, serial DESC"
    )))
    .bind(device.as_str())
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    rows.into_iter().map(from_row).collect()
}

/// Revokes one of a device's certificates; revoking a revoked one changes nothing and writes
/// nothing.
pub(crate) async fn revoke(
    s: &SqliteStore,
    device: &DeviceId,
    serial: &CertificateSerial,
    m: &Mutation,
) -> StoreResult<DeviceCertificate> {
    let mut tx = s.begin_write().await?;
    let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM device_certificates WHERE serial = ? AND device_id = ?"
    )))
    .bind(serial.as_str())
    .bind(device.as_str())
    .fetch_optional(&mut *tx)
    .await
    .map_err(db)?;
    let old = row
        .map(from_row)
        .transpose()?
        .ok_or_else(|| StoreError::NotFound { kind: "certificate", id: serial.to_string() })?;
    if old.revoked_at.is_some() {
        return Ok(old);
    }
    let new = DeviceCertificate { revoked_at: Some(m.at), ..old.clone() };
    sqlx::query("UPDATE device_certificates SET revoked_at = ? WHERE serial = ?")
        .bind(m.at.millis())
        .bind(serial.as_str())
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    append_and_commit(
        tx,
        &entry(
            m,
            "device.certificate.revoke",
            resource(device),
            Some(old.audit_summary()),
            Some(new.audit_summary()),
        ),
    )
    .await?;
    Ok(new)
}

/// The audit resource of a certificate: the device it belongs to.
fn resource(device: &DeviceId) -> String {
    format!("device/{device}")
}
