//! Devices: create, read, list, update, delete and bulk import.
//!
//! A device is one row of `devices` (tags and attributes as JSON text, read back as they were
//! written) plus one `device_tags` row per tag, which the filters query. Both are written in the
//! same transaction as the audit record describing the change.

use std::collections::HashSet;

use domain::{
    Device, DeviceId, DevicePatch, Filter, ImportRow, LifecycleState, Mutation, NewAuditRecord,
    NewDevice, Tags,
};
use sqlx::{PgConnection, PgPool};
use store::{
    DeviceQuery, ImportMode, ImportOutcome, MAX_PAGE_SIZE, Page, StateCounts, StoreError,
    StoreResult,
};

use crate::audit::{self, begin_write};
use crate::error::{PostgresError, db};
use crate::filter_sql::{self, Scope};
use crate::rows::{self, device_columns};

/// Creates a device at version 1.
pub(crate) async fn create(pool: &PgPool, new: &NewDevice, m: &Mutation) -> StoreResult<Device> {
    if !new.state.is_initial() {
        return Err(not_initial(new.state));
    }
    let device = Device {
        id: new.id.clone(),
        name: new.name.clone(),
        tags: new.tags.clone(),
        attributes: new.attributes.clone(),
        state: new.state,
        created_at: m.at,
        updated_at: m.at,
        version: 1,
        replaces: None,
        replaced_by: None,
    };
    let mut tx = begin_write(pool).await?;
    if !insert(&mut tx, &device).await? {
        return Err(StoreError::AlreadyExists { kind: "device", id: device.id.to_string() });
    }
    audit::append_and_commit(tx, &created_record(&device, m)).await?;
    Ok(device)
}

/// Reads one device.
pub(crate) async fn get(pool: &PgPool, id: &DeviceId) -> StoreResult<Option<Device>> {
    let row = sqlx::query(concat!("SELECT ", device_columns!(), " FROM devices d WHERE d.id = $1"))
        .bind(id.as_str())
        .fetch_optional(pool)
        .await
        .map_err(db)?;
    row.as_ref().map(rows::device).transpose()
}

/// Reads one device inside the caller's transaction, without locking it.
pub(crate) async fn read(conn: &mut PgConnection, id: &DeviceId) -> StoreResult<Option<Device>> {
    let row = sqlx::query(concat!("SELECT ", device_columns!(), " FROM devices d WHERE d.id = $1"))
        .bind(id.as_str())
        .fetch_optional(&mut *conn)
        .await
        .map_err(db)?;
    row.as_ref().map(rows::device).transpose()
}

/// One page of devices of `scope` matching `filter` (not `q.filter`: the caller decides), after
/// `q.after`, at most `q.limit` (clamped to [`MAX_PAGE_SIZE`]).
pub(crate) async fn page(
    pool: &PgPool,
    scope: Scope,
    filter: Option<&Filter>,
    q: &DeviceQuery,
) -> StoreResult<Page<Device>> {
    let limit = q.limit.get().min(MAX_PAGE_SIZE);
    let mut qb = filter_sql::device_page(scope, filter, q.after.as_ref(), i64::from(limit) + 1);
    // Unnamed statement: planned with the actual values (see `filter_sql`).
    let rows = qb.build().persistent(false).fetch_all(pool).await.map_err(db)?;
    let mut items = rows.iter().map(rows::device).collect::<Result<Vec<_>, _>>()?;
    let has_more = items.len() > limit as usize;
    items.truncate(limit as usize);
    Ok(Page { items, has_more })
}

/// Counts devices per state, in lifecycle order.
pub(crate) async fn count_by_state(pool: &PgPool) -> StoreResult<StateCounts> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT state, count(*) FROM devices GROUP BY state")
            .fetch_all(pool)
            .await
            .map_err(db)?;
    let mut counts = Vec::with_capacity(rows.len());
    for (state, n) in rows {
        let state = state
            .parse::<LifecycleState>()
            .map_err(|e| PostgresError::corrupt("device state", &e))?;
        let n = u64::try_from(n).map_err(|e| PostgresError::corrupt("device count", &e))?;
        counts.push((state, n));
    }
    counts.sort_by_key(|(state, _)| *state);
    Ok(StateCounts(counts))
}

/// Applies a patch under optimistic concurrency.
pub(crate) async fn update(
    pool: &PgPool,
    id: &DeviceId,
    patch: &DevicePatch,
    expected_version: Option<u64>,
    m: &Mutation,
) -> StoreResult<Device> {
    let mut tx = begin_write(pool).await?;
    let current = get_for_update(&mut tx, id).await?.ok_or_else(|| not_found(id))?;
    check_version(&current, expected_version)?;
    let mut next = current.clone();
    patch.apply(&mut next)?;
    if next == current {
        // Nothing changes: no new version, no audit record. Dropping the transaction rolls it back.
        return Ok(current);
    }
    next.version += 1;
    next.updated_at = m.at;
    write_update(&mut tx, &current, &next).await?;
    audit::append_and_commit(tx, &updated_record(&current, &next, m)).await?;
    Ok(next)
}

/// Deletes a device; its tags and memberships go with it through `ON DELETE CASCADE`.
pub(crate) async fn delete(
    pool: &PgPool,
    id: &DeviceId,
    expected_version: Option<u64>,
    m: &Mutation,
) -> StoreResult<()> {
    let mut tx = begin_write(pool).await?;
    let current = get_for_update(&mut tx, id).await?.ok_or_else(|| not_found(id))?;
    check_version(&current, expected_version)?;
    sqlx::query("DELETE FROM devices WHERE id = $1")
        .bind(id.as_str())
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    let record = audit::record(
        m,
        "device.delete",
        resource(&current.id),
        Some(current.audit_summary()),
        None,
    );
    audit::append_and_commit(tx, &record).await
}

/// Imports rows in one transaction.
///
/// Each row is validated in memory before anything is written for it, so a rejected row leaves no
/// trace and best-effort mode needs no savepoints. Atomic mode rolls the whole transaction back
/// when any row was rejected; the outcomes still say what each row would have done.
pub(crate) async fn import(
    pool: &PgPool,
    import_rows: &[ImportRow],
    mode: ImportMode,
    m: &Mutation,
) -> StoreResult<Vec<ImportOutcome>> {
    let mut tx = begin_write(pool).await?;
    let mut outcomes = Vec::with_capacity(import_rows.len());
    for row in import_rows {
        outcomes.push(import_row(&mut tx, row, m).await?);
    }
    let rejected = outcomes.iter().any(|o| matches!(o, ImportOutcome::Rejected(_)));
    if mode == ImportMode::Atomic && rejected {
        tx.rollback().await.map_err(db)?;
    } else {
        tx.commit().await.map_err(db)?;
    }
    Ok(outcomes)
}

async fn import_row(
    conn: &mut PgConnection,
    row: &ImportRow,
    m: &Mutation,
) -> StoreResult<ImportOutcome> {
    let Some(current) = get_for_update(conn, &row.id).await? else {
        let state = row.patch.state.unwrap_or(LifecycleState::Registered);
        if !state.is_initial() {
            return Ok(ImportOutcome::Rejected(not_initial(state).to_string()));
        }
        let device = Device {
            id: row.id.clone(),
            name: row.patch.name.clone().unwrap_or_default(),
            tags: row.patch.tags.clone().unwrap_or_default(),
            attributes: row.patch.attributes.clone().unwrap_or_default(),
            state,
            created_at: m.at,
            updated_at: m.at,
            version: 1,
            replaces: None,
            replaced_by: None,
        };
        if !insert(conn, &device).await? {
            // The write lock is held and the device was just found missing: this cannot happen
            // unless another writer ignores the lock.
            return Err(StoreError::AlreadyExists { kind: "device", id: device.id.to_string() });
        }
        audit::append(conn, &created_record(&device, m)).await?;
        return Ok(ImportOutcome::Created);
    };
    let mut next = current.clone();
    if let Err(e) = row.patch.apply(&mut next) {
        return Ok(ImportOutcome::Rejected(e.to_string()));
    }
    if next == current {
        return Ok(ImportOutcome::Unchanged);
    }
    next.version += 1;
    next.updated_at = m.at;
    write_update(conn, &current, &next).await?;
    audit::append(conn, &updated_record(&current, &next, m)).await?;
    Ok(ImportOutcome::Updated)
}

/// Ids among `ids` that exist, for membership checks.
pub(crate) async fn existing_ids(
    conn: &mut PgConnection,
    ids: &[DeviceId],
) -> StoreResult<HashSet<String>> {
    let ids: Vec<&str> = ids.iter().map(DeviceId::as_str).collect();
    let found: Vec<String> = sqlx::query_scalar("SELECT id FROM devices WHERE id = ANY($1)")
        .bind(ids)
        .fetch_all(&mut *conn)
        .await
        .map_err(db)?;
    Ok(found.into_iter().collect())
}

/// Reads a device and locks its row for the rest of the transaction.
pub(crate) async fn get_for_update(
    conn: &mut PgConnection,
    id: &DeviceId,
) -> StoreResult<Option<Device>> {
    let row = sqlx::query(concat!(
        "SELECT ",
        device_columns!(),
        " FROM devices d WHERE d.id = $1 FOR UPDATE"
    ))
    .bind(id.as_str())
    .fetch_optional(&mut *conn)
    .await
    .map_err(db)?;
    row.as_ref().map(rows::device).transpose()
}

/// Inserts a device and its tags; `false` when the id is taken.
pub(crate) async fn insert(conn: &mut PgConnection, d: &Device) -> StoreResult<bool> {
    let inserted = sqlx::query(
        "INSERT INTO devices (id, name, tags, attributes, state, created_at, updated_at, version,
                              predecessor_id, successor_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(d.id.as_str())
    .bind(d.name.as_str())
    .bind(d.tags.to_json().to_string())
    .bind(d.attributes.as_json().to_string())
    .bind(d.state.as_str())
    .bind(d.created_at.millis())
    .bind(d.updated_at.millis())
    .bind(rows::version_to_sql(d.version)?)
    .bind(d.replaces.as_ref().map(DeviceId::as_str))
    .bind(d.replaced_by.as_ref().map(DeviceId::as_str))
    .execute(&mut *conn)
    .await
    .map_err(db)?
    .rows_affected()
        == 1;
    if inserted {
        insert_tags(conn, &d.id, &d.tags).await?;
    }
    Ok(inserted)
}

/// Writes `next` over `current` (same id), rewriting the tag rows when the tags changed.
pub(crate) async fn write_update(
    conn: &mut PgConnection,
    current: &Device,
    next: &Device,
) -> StoreResult<()> {
    sqlx::query(
        "UPDATE devices
         SET name = $2, tags = $3, attributes = $4, state = $5, updated_at = $6, version = $7,
             predecessor_id = $8, successor_id = $9
         WHERE id = $1",
    )
    .bind(next.id.as_str())
    .bind(next.name.as_str())
    .bind(next.tags.to_json().to_string())
    .bind(next.attributes.as_json().to_string())
    .bind(next.state.as_str())
    .bind(next.updated_at.millis())
    .bind(rows::version_to_sql(next.version)?)
    .bind(next.replaces.as_ref().map(DeviceId::as_str))
    .bind(next.replaced_by.as_ref().map(DeviceId::as_str))
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    if next.tags != current.tags {
        sqlx::query("DELETE FROM device_tags WHERE device_id = $1")
            .bind(next.id.as_str())
            .execute(&mut *conn)
            .await
            .map_err(db)?;
        insert_tags(conn, &next.id, &next.tags).await?;
    }
    Ok(())
}

async fn insert_tags(conn: &mut PgConnection, id: &DeviceId, tags: &Tags) -> StoreResult<()> {
    if tags.is_empty() {
        return Ok(());
    }
    let (keys, values): (Vec<&str>, Vec<&str>) = tags.iter().map(|(k, v)| (k.as_str(), v)).unzip();
    sqlx::query(
        "INSERT INTO device_tags (device_id, key, value)
         SELECT $1, k, v FROM UNNEST($2::text[], $3::text[]) AS pairs (k, v)",
    )
    .bind(id.as_str())
    .bind(keys)
    .bind(values)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    Ok(())
}

fn check_version(current: &Device, expected: Option<u64>) -> StoreResult<()> {
    match expected {
        Some(expected) if expected != current.version => {
            Err(StoreError::VersionMismatch { expected, current: current.version })
        }
        _ => Ok(()),
    }
}

pub(crate) fn created_record(d: &Device, m: &Mutation) -> NewAuditRecord {
    audit::record(m, "device.create", resource(&d.id), None, Some(d.audit_summary()))
}

pub(crate) fn updated_record(before: &Device, after: &Device, m: &Mutation) -> NewAuditRecord {
    audit::record(
        m,
        "device.update",
        resource(&after.id),
        Some(before.audit_summary()),
        Some(after.audit_summary()),
    )
}

pub(crate) fn resource(id: &DeviceId) -> String {
    format!("device/{id}")
}

pub(crate) fn not_found(id: &DeviceId) -> StoreError {
    StoreError::NotFound { kind: "device", id: id.to_string() }
}

fn not_initial(state: LifecycleState) -> StoreError {
    StoreError::Conflict(format!("a new device must start as registered or active, not {state}"))
}
