//! Device credentials in `device_credentials`: only the SHA-256 of each secret is stored.

use domain::{
    CredentialId, DeviceCredential, DeviceId, LifecycleState, Mutation, NewDeviceCredential,
    TokenHash,
};
use sqlx::{PgPool, Row as _};
use store::{DeviceLogin, StoreError, StoreResult};

use crate::audit::{self, begin_write};
use crate::error::{PostgresError, db};
use crate::rows::{self, credential_columns};

/// Stores a new credential for an existing device.
pub(crate) async fn create(
    pool: &PgPool,
    new: &NewDeviceCredential,
    m: &Mutation,
) -> StoreResult<DeviceCredential> {
    let credential = DeviceCredential {
        id: new.id.clone(),
        device_id: new.device_id.clone(),
        hash: new.hash,
        created_at: m.at,
        expires_at: new.expires_at,
        revoked_at: None,
    };
    let mut tx = begin_write(pool).await?;
    // Deleting a device takes the write lock too: it cannot go away before the insert.
    let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM devices WHERE id = $1")
        .bind(credential.device_id.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
    if exists.is_none() {
        return Err(StoreError::NotFound { kind: "device", id: credential.device_id.to_string() });
    }
    // No conflict target: a clash on the id or on the hash both mean the credential exists.
    let inserted = sqlx::query(
        "INSERT INTO device_credentials (id, device_id, hash, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT DO NOTHING",
    )
    .bind(credential.id.as_str())
    .bind(credential.device_id.as_str())
    .bind(&credential.hash.as_bytes()[..])
    .bind(credential.created_at.millis())
    .bind(credential.expires_at.map(|t| t.millis()))
    .execute(&mut *tx)
    .await
    .map_err(db)?
    .rows_affected();
    if inserted != 1 {
        return Err(StoreError::AlreadyExists {
            kind: "credential",
            id: credential.id.to_string(),
        });
    }
    let record = audit::record(
        m,
        "device.credential.create",
        resource(&credential.device_id),
        None,
        Some(credential.audit_summary()),
    );
    audit::append_and_commit(tx, &record).await?;
    Ok(credential)
}

/// Finds a credential by the hash of its secret (served by the unique index on `hash`).
pub(crate) async fn by_hash(
    pool: &PgPool,
    hash: &TokenHash,
) -> StoreResult<Option<DeviceCredential>> {
    let row = sqlx::query(concat!(
        "SELECT ",
        credential_columns!(),
        " FROM device_credentials c WHERE c.hash = $1"
    ))
    .bind(&hash.as_bytes()[..])
    .fetch_optional(pool)
    .await
    .map_err(db)?;
    row.as_ref().map(rows::credential).transpose()
}

/// Finds a credential by the hash of its secret with its device's state, in one statement (the
/// unique index on `hash`, then the device's primary key).
pub(crate) async fn login_by_hash(
    pool: &PgPool,
    hash: &TokenHash,
) -> StoreResult<Option<DeviceLogin>> {
    let row = sqlx::query(concat!(
        "SELECT ",
        credential_columns!(),
        ", d.state FROM device_credentials c JOIN devices d ON d.id = c.device_id
         WHERE c.hash = $1"
    ))
    .bind(&hash.as_bytes()[..])
    .fetch_optional(pool)
    .await
    .map_err(db)?;
    let Some(row) = row else { return Ok(None) };
    let state: String = row.try_get("state").map_err(db)?;
    let device_state =
        state.parse::<LifecycleState>().map_err(|e| PostgresError::corrupt("device state", &e))?;
    Ok(Some(DeviceLogin { credential: rows::credential(&row)?, device_state }))
}

/// A device's credentials, newest first (ties broken by id, highest first).
pub(crate) async fn list(
    conn: impl sqlx::PgExecutor<'_>,
    device: &DeviceId,
) -> StoreResult<Vec<DeviceCredential>> {
    let rows = sqlx::query(concat!(
        "SELECT ",
        credential_columns!(),
        " FROM device_credentials c WHERE c.device_id = $1 ORDER BY c.created_at DESC, c.id DESC"
    ))
    .bind(device.as_str())
    .fetch_all(conn)
    .await
    .map_err(db)?;
    rows.iter().map(rows::credential).collect()
}

/// Revokes one of a device's credentials; one revoked before keeps its first revocation time.
pub(crate) async fn revoke(
    pool: &PgPool,
    device: &DeviceId,
    id: &CredentialId,
    m: &Mutation,
) -> StoreResult<DeviceCredential> {
    let mut tx = begin_write(pool).await?;
    let row = sqlx::query(concat!(
        "SELECT ",
        credential_columns!(),
        " FROM device_credentials c WHERE c.id = $1 AND c.device_id = $2 FOR UPDATE"
    ))
    .bind(id.as_str())
    .bind(device.as_str())
    .fetch_optional(&mut *tx)
    .await
    .map_err(db)?;
    let current = row
        .as_ref()
        .map(rows::credential)
        .transpose()?
        .ok_or_else(|| StoreError::NotFound { kind: "credential", id: id.to_string() })?;
    if current.revoked_at.is_some() {
        return Ok(current);
    }
    let revoked = DeviceCredential { revoked_at: Some(m.at), ..current.clone() };
    sqlx::query("UPDATE device_credentials SET revoked_at = $2 WHERE id = $1")
        .bind(id.as_str())
        .bind(m.at.millis())
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    let record = audit::record(
        m,
        "device.credential.revoke",
        resource(device),
        Some(current.audit_summary()),
        Some(revoked.audit_summary()),
    );
    audit::append_and_commit(tx, &record).await?;
    Ok(revoked)
}

/// The audit resource of a credential: the device it belongs to.
fn resource(device: &DeviceId) -> String {
    format!("device/{device}")
}
