//! Device credentials: stored by the SHA-256 of their secret, never the secret.

use std::str::FromStr as _;

use domain::{
    CredentialId, DeviceCredential, DeviceId, LifecycleState, Mutation, NewDeviceCredential,
    TokenHash,
};
use sqlx::SqliteConnection;
use store::{DeviceLogin, StoreError, StoreResult};

use crate::SqliteStore;
use crate::audit_chain::{append_and_commit, entry};
use crate::rows::{
    CREDENTIAL_COLUMNS, CredentialRow, corrupt, credential_from_row, db, unique_or_db,
};

/// [`CREDENTIAL_COLUMNS`] and the device's `state`.
type LoginRow = (String, String, Vec<u8>, i64, Option<i64>, Option<i64>, String);

/// Stores a new credential for an existing device.
pub(crate) async fn create(
    s: &SqliteStore,
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
    let mut tx = s.begin_write().await?;
    // The write lock is held: the device cannot go away between this check and the insert.
    let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM devices WHERE id = ?")
        .bind(credential.device_id.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
    if exists.is_none() {
        return Err(StoreError::NotFound { kind: "device", id: credential.device_id.to_string() });
    }
    sqlx::query(
        "INSERT INTO device_credentials (id, device_id, hash, created_at, expires_at, revoked_at) \
         VALUES (?, ?, ?, ?, ?, NULL)",
    )
    .bind(credential.id.as_str())
    .bind(credential.device_id.as_str())
    .bind(&credential.hash.as_bytes()[..])
    .bind(credential.created_at.millis())
    .bind(credential.expires_at.map(|t| t.millis()))
    .execute(&mut *tx)
    .await
    .map_err(unique_or_db("credential", &credential.id))?;
    append_and_commit(
        tx,
        &entry(
            m,
            "device.credential.create",
            resource(&credential.device_id),
            None,
            Some(credential.audit_summary()),
        ),
    )
    .await?;
    Ok(credential)
}

/// Finds a credential by the hash of its secret (served by the unique index on `hash`).
pub(crate) async fn by_hash(
    conn: &mut SqliteConnection,
    hash: &TokenHash,
) -> StoreResult<Option<DeviceCredential>> {
    let row: Option<CredentialRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {CREDENTIAL_COLUMNS} FROM device_credentials c WHERE hash = ?"
    )))
    .bind(&hash.as_bytes()[..])
    .fetch_optional(&mut *conn)
    .await
    .map_err(db)?;
    row.map(credential_from_row).transpose()
}

/// Finds a credential by the hash of its secret with its device's state, in one statement (the
/// unique index on `hash`, then the device's primary key).
pub(crate) async fn login_by_hash(
    conn: &mut SqliteConnection,
    hash: &TokenHash,
) -> StoreResult<Option<DeviceLogin>> {
    let row: Option<LoginRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {CREDENTIAL_COLUMNS}, d.state FROM device_credentials c \
         JOIN devices d ON d.id = c.device_id WHERE c.hash = ?"
    )))
    .bind(&hash.as_bytes()[..])
    .fetch_optional(&mut *conn)
    .await
    .map_err(db)?;
    let Some((id, device_id, hash, created_at, expires_at, revoked_at, state)) = row else {
        return Ok(None);
    };
    let device_state = LifecycleState::from_str(&state)
        .map_err(|e| corrupt("devices", &device_id, e.to_string()))?;
    let credential =
        credential_from_row((id, device_id, hash, created_at, expires_at, revoked_at))?;
    Ok(Some(DeviceLogin { credential, device_state }))
}

/// A device's credentials, newest first.
pub(crate) async fn list(
    conn: &mut SqliteConnection,
    device: &DeviceId,
) -> StoreResult<Vec<DeviceCredential>> {
    let rows: Vec<CredentialRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {CREDENTIAL_COLUMNS} FROM device_credentials c WHERE device_id = ? \
         ORDER BY created_at DESC, id DESC"
    )))
    .bind(device.as_str())
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    rows.into_iter().map(credential_from_row).collect()
}

/// Revokes one of a device's credentials; revoking a revoked one changes nothing and writes
/// nothing.
pub(crate) async fn revoke(
    s: &SqliteStore,
    device: &DeviceId,
    id: &CredentialId,
    m: &Mutation,
) -> StoreResult<DeviceCredential> {
    let mut tx = s.begin_write().await?;
    let row: Option<CredentialRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {CREDENTIAL_COLUMNS} FROM device_credentials c WHERE id = ? AND device_id = ?"
    )))
    .bind(id.as_str())
    .bind(device.as_str())
    .fetch_optional(&mut *tx)
    .await
    .map_err(db)?;
    let old = row
        .map(credential_from_row)
        .transpose()?
        .ok_or_else(|| StoreError::NotFound { kind: "credential", id: id.to_string() })?;
    if old.revoked_at.is_some() {
        return Ok(old);
    }
    let new = DeviceCredential { revoked_at: Some(m.at), ..old.clone() };
    sqlx::query("UPDATE device_credentials SET revoked_at = ? WHERE id = ?")
        .bind(m.at.millis())
        .bind(id.as_str())
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    append_and_commit(
        tx,
        &entry(
            m,
            "device.credential.revoke",
            resource(device),
            Some(old.audit_summary()),
            Some(new.audit_summary()),
        ),
    )
    .await?;
    Ok(new)
}

/// The audit resource of a credential: the device it belongs to.
fn resource(device: &DeviceId) -> String {
    format!("device/{device}")
}
