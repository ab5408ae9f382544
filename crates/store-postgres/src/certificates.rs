//! Device certificates in `device_certificates`, keyed by serial.

use domain::{
    CertificateSerial, DeviceCertificate, DeviceId, Mutation, NewDeviceCertificate, Timestamp,
};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row as _};
use store::{StoreError, StoreResult};

use crate::audit::{self, begin_write};
use crate::error::{PostgresError, db};

/// The columns [`from_row`] reads, as a literal for `concat!`.
macro_rules! columns {
    () => {
        "serial, device_id, fingerprint_sha256, not_before, not_after, created_at, revoked_at, pem"
    };
}

/// Decodes a row selected with [`columns!`], re-validating the serial and device id.
fn from_row(row: &PgRow) -> StoreResult<DeviceCertificate> {
    let serial: String = row.try_get("serial").map_err(db)?;
    let device_id: String = row.try_get("device_id").map_err(db)?;
    let revoked_at: Option<i64> = row.try_get("revoked_at").map_err(db)?;
    Ok(DeviceCertificate {
        serial: CertificateSerial::new(serial)
            .map_err(|e| PostgresError::corrupt("certificate serial", &e))?,
        device_id: DeviceId::new(device_id)
            .map_err(|e| PostgresError::corrupt("certificate device id", &e))?,
        fingerprint_sha256: row.try_get("fingerprint_sha256").map_err(db)?,
        not_before: Timestamp::from_millis(row.try_get("not_before").map_err(db)?),
        not_after: Timestamp::from_millis(row.try_get("not_after").map_err(db)?),
        created_at: Timestamp::from_millis(row.try_get("created_at").map_err(db)?),
        revoked_at: revoked_at.map(Timestamp::from_millis),
        pem: row.try_get("pem").map_err(db)?,
    })
}

/// Stores a new certificate for an existing device.
pub(crate) async fn create(
    pool: &PgPool,
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
    let mut tx = begin_write(pool).await?;
    // Deleting a device takes the write lock too: it cannot go away before the insert.
    let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM devices WHERE id = $1")
        .bind(certificate.device_id.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
    if exists.is_none() {
        return Err(StoreError::NotFound { kind: "device", id: certificate.device_id.to_string() });
    }
    let inserted = sqlx::query(
        "INSERT INTO device_certificates (serial, device_id, fingerprint_sha256, not_before,
             not_after, created_at, pem)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT DO NOTHING",
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
    .map_err(db)?
    .rows_affected();
    if inserted != 1 {
        return Err(StoreError::AlreadyExists {
            kind: "certificate",
            id: certificate.serial.to_string(),
        });
    }
    let record = audit::record(
        m,
        "device.certificate.create",
        resource(&certificate.device_id),
        None,
        Some(certificate.audit_summary()),
    );
    audit::append_and_commit(tx, &record).await?;
    Ok(certificate)
}

/// Finds a certificate by its serial (the primary key).
pub(crate) async fn by_serial(
    pool: &PgPool,
    serial: &CertificateSerial,
) -> StoreResult<Option<DeviceCertificate>> {
    let row =
        sqlx::query(concat!("SELECT ", columns!(), " FROM device_certificates WHERE serial = $1"))
            .bind(serial.as_str())
            .fetch_optional(pool)
            .await
            .map_err(db)?;
    row.as_ref().map(from_row).transpose()
}

/// Certificates not revoked ending before `before`, soonest first.
pub(crate) async fn expiring(
    pool: &PgPool,
    before: Timestamp,
    limit: u32,
) -> StoreResult<Vec<DeviceCertificate>> {
    let rows = sqlx::query(concat!(
        "SELECT ",
        columns!(),
        " FROM device_certificates WHERE revoked_at IS NULL AND not_after < $1 \
         ORDER BY not_after, serial LIMIT $2"
    ))
    .bind(before.millis())
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await
    .map_err(db)?;
    rows.iter().map(from_row).collect()
}

/// A device's certificates, newest first (ties: highest serial first).
pub(crate) async fn list(
    conn: impl sqlx::PgExecutor<'_>,
    device: &DeviceId,
) -> StoreResult<Vec<DeviceCertificate>> {
    let rows = sqlx::query(concat!(
        "SELECT ",
        columns!(),
        " FROM device_certificates WHERE device_id = $1 ORDER BY created_at DESC, serial DESC"
    ))
    .bind(device.as_str())
    .fetch_all(conn)
    .await
    .map_err(db)?;
    rows.iter().map(from_row).collect()
}

/// Revokes one of a device's certificates; one revoked before keeps its first revocation time.
pub(crate) async fn revoke(
    pool: &PgPool,
    device: &DeviceId,
    serial: &CertificateSerial,
    m: &Mutation,
) -> StoreResult<DeviceCertificate> {
    let mut tx = begin_write(pool).await?;
    let row = sqlx::query(concat!(
        "SELECT ",
        columns!(),
        " FROM device_certificates WHERE serial = $1 AND device_id = $2 FOR UPDATE"
    ))
    .bind(serial.as_str())
    .bind(device.as_str())
    .fetch_optional(&mut *tx)
    .await
    .map_err(db)?;
    let current = row
        .as_ref()
        .map(from_row)
        .transpose()?
        .ok_or_else(|| StoreError::NotFound { kind: "certificate", id: serial.to_string() })?;
    if current.revoked_at.is_some() {
        return Ok(current);
    }
    let revoked = DeviceCertificate { revoked_at: Some(m.at), ..current.clone() };
    sqlx::query("UPDATE device_certificates SET revoked_at = $2 WHERE serial = $1")
        .bind(serial.as_str())
        .bind(m.at.millis())
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    let record = audit::record(
        m,
        "device.certificate.revoke",
        resource(device),
        Some(current.audit_summary()),
        Some(revoked.audit_summary()),
    );
    audit::append_and_commit(tx, &record).await?;
    Ok(revoked)
}

/// The audit resource of a certificate: the device it belongs to.
fn resource(device: &DeviceId) -> String {
    format!("device/{device}")
}
