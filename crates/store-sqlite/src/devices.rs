//! The device registry: create, read, page, update, delete and bulk import.

use std::collections::{HashMap, HashSet};

use domain::{
    Device, DeviceId, DevicePatch, Filter, ImportRow, LifecycleState, Mutation, NewDevice,
};
use sqlx::SqliteConnection;
use store::{
    DeviceQuery, ImportMode, ImportOutcome, MAX_PAGE_SIZE, Page, StateCounts, StoreError,
    StoreResult,
};

use crate::SqliteStore;
use crate::audit_chain::{AuditChain, append_and_commit, entry};
use crate::bulk::{self, Value};
use crate::filter_sql::{self, Arg, DEVICE_COLUMNS, Driver, Scope, Sql};
use crate::rows::{DeviceRow, db, device_from_row, to_i64, unique_or_db};

/// Creates a device at version 1.
pub(crate) async fn create(s: &SqliteStore, new: &NewDevice, m: &Mutation) -> StoreResult<Device> {
    if !new.state.is_initial() {
        return Err(StoreError::Conflict(not_initial(new.state)));
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
    let mut tx = s.begin_write().await?;
    insert(&mut tx, &device).await?;
    append_and_commit(
        tx,
        &entry(m, "device.create", resource(&device.id), None, Some(device.audit_summary())),
    )
    .await?;
    Ok(device)
}

/// Reads one device.
pub(crate) async fn get(conn: &mut SqliteConnection, id: &DeviceId) -> StoreResult<Option<Device>> {
    let row: Option<DeviceRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {DEVICE_COLUMNS} FROM devices d WHERE d.id = ?"
    )))
    .bind(id.as_str())
    .fetch_optional(&mut *conn)
    .await
    .map_err(db)?;
    row.map(device_from_row).transpose()
}

/// One page of devices of `scope` matching `filter`, after `q.after`, at most `q.limit` (clamped to
/// [`MAX_PAGE_SIZE`]). `q.filter` is not read: the caller passes the filter to apply.
pub(crate) async fn page(
    conn: &mut SqliteConnection,
    scope: Scope<'_>,
    filter: Option<&Filter>,
    q: &DeviceQuery,
    sparse_bound: u32,
) -> StoreResult<Page<Device>> {
    let limit = q.limit.get().min(MAX_PAGE_SIZE);
    let driver = match scope {
        Scope::All => choose_driver(conn, filter, sparse_bound).await?,
        Scope::StaticGroup(_) => Driver::Walk,
    };
    let sql = filter_sql::device_page(scope, filter, q.after.as_ref(), limit + 1, driver);
    let mut items = fetch(conn, sql).await?;
    let has_more = items.len() > limit as usize;
    items.truncate(limit as usize);
    Ok(Page { items, has_more })
}

/// Below this many matches a condition is *sparse*: its index finds them faster than a walk in
/// id order, even with a sort (see [`Driver::Sparse`]).
pub(crate) const SPARSE_BOUND: u32 = 1000;

/// Picks how to find a page's devices: the top-level condition whose index reads the fewest
/// entries, when one reads fewer than `bound` (normally [`SPARSE_BOUND`]; 0 turns probing off),
/// else [`filter_sql::default_driver`].
///
/// Each probe counts at most `bound` index entries, so choosing costs a fraction of a
/// millisecond, and saves walking most of a large registry when matches are rare.
async fn choose_driver(
    conn: &mut SqliteConnection,
    filter: Option<&Filter>,
    bound: u32,
) -> StoreResult<Driver> {
    let conjuncts = filter_sql::conjuncts(filter);
    let mut best: Option<(i64, Driver)> = None;
    if bound == 0 {
        return Ok(filter_sql::default_driver(&conjuncts));
    }
    for probe in filter_sql::probes(&conjuncts, bound) {
        let mut query = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(probe.sql.text));
        for arg in probe.sql.args {
            query = match arg {
                Arg::Text(s) => query.bind(s),
                Arg::Int(i) => query.bind(i),
            };
        }
        let n = query.fetch_one(&mut *conn).await.map_err(db)?;
        if n < i64::from(bound) && best.is_none_or(|(m, _)| n < m) {
            best = Some((n, probe.driver));
        }
    }
    Ok(best.map_or_else(|| filter_sql::default_driver(&conjuncts), |(_, driver)| driver))
}

/// Runs a device query built by [`filter_sql`].
async fn fetch(conn: &mut SqliteConnection, sql: Sql) -> StoreResult<Vec<Device>> {
    let mut query = sqlx::query_as::<_, DeviceRow>(sqlx::AssertSqlSafe(sql.text));
    for arg in sql.args {
        query = match arg {
            Arg::Text(s) => query.bind(s),
            Arg::Int(i) => query.bind(i),
        };
    }
    let rows = query.fetch_all(&mut *conn).await.map_err(db)?;
    rows.into_iter().map(device_from_row).collect()
}

/// Counts devices per state, in lifecycle order.
pub(crate) async fn count_by_state(conn: &mut SqliteConnection) -> StoreResult<StateCounts> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT state, count(*) FROM devices GROUP BY state")
            .fetch_all(&mut *conn)
            .await
            .map_err(db)?;
    let mut counts = Vec::with_capacity(rows.len());
    for (state, n) in rows {
        let state: LifecycleState = state.parse().map_err(StoreError::backend)?;
        counts.push((state, u64::try_from(n).unwrap_or(0)));
    }
    counts.sort_by_key(|(state, _)| *state);
    Ok(StateCounts(counts))
}

/// Applies a patch; a patch that changes nothing writes nothing.
pub(crate) async fn update(
    s: &SqliteStore,
    id: &DeviceId,
    patch: &DevicePatch,
    expected_version: Option<u64>,
    m: &Mutation,
) -> StoreResult<Device> {
    let mut tx = s.begin_write().await?;
    let old = current(&mut tx, id, expected_version).await?;
    let mut new = old.clone();
    patch.apply(&mut new)?;
    if new == old {
        return Ok(old);
    }
    new.version = old.version + 1;
    new.updated_at = m.at;
    rewrite(&mut tx, &new, new.tags != old.tags).await?;
    append_and_commit(
        tx,
        &entry(
            m,
            "device.update",
            resource(id),
            Some(old.audit_summary()),
            Some(new.audit_summary()),
        ),
    )
    .await?;
    Ok(new)
}

/// Deletes a device; its tags and group memberships go with it (foreign keys cascade).
pub(crate) async fn delete(
    s: &SqliteStore,
    id: &DeviceId,
    expected_version: Option<u64>,
    m: &Mutation,
) -> StoreResult<()> {
    let mut tx = s.begin_write().await?;
    let old = current(&mut tx, id, expected_version).await?;
    sqlx::query("DELETE FROM devices WHERE id = ?")
        .bind(id.as_str())
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    append_and_commit(tx, &entry(m, "device.delete", resource(id), Some(old.audit_summary()), None))
        .await
}

/// Imports rows in one transaction; see [`store::Store::import_devices`].
///
/// The batch is judged in memory first: the devices it names are read once, then each row is
/// applied in order on top of what the rows before it did (so a repeated id sees the earlier row's
/// result), giving its outcome and audit entry. A rejected row changes nothing, so best-effort
/// mode needs no savepoints; in atomic mode a rejection means nothing is written at all. Then the
/// final state of every changed device and the audit records go to the database in multi-row
/// statements.
pub(crate) async fn import(
    s: &SqliteStore,
    rows: &[ImportRow],
    mode: ImportMode,
    m: &Mutation,
) -> StoreResult<Vec<ImportOutcome>> {
    let mut tx = s.begin_write().await?;
    let stored = stored_devices(&mut tx, rows).await?;
    let mut current: HashMap<&DeviceId, Device> =
        stored.iter().map(|(id, d)| (id, d.clone())).collect();
    // Devices the batch changes, in the order of their first change.
    let mut changed: Vec<&DeviceId> = Vec::new();
    let mut changed_ids: HashSet<&DeviceId> = HashSet::new();
    let mut entries = Vec::new();
    let mut outcomes = Vec::with_capacity(rows.len());
    for row in rows {
        let (outcome, new) = judge(current.get(&row.id), row, m);
        if let Some(new) = new {
            let before = current.get(&row.id).map(Device::audit_summary);
            let action = if before.is_some() { "device.update" } else { "device.create" };
            entries.push(entry(m, action, resource(&row.id), before, Some(new.audit_summary())));
            if changed_ids.insert(&row.id) {
                changed.push(&row.id);
            }
            current.insert(&row.id, new);
        }
        outcomes.push(outcome);
    }
    let any_rejected = outcomes.iter().any(|o| matches!(o, ImportOutcome::Rejected(_)));
    if entries.is_empty() || (any_rejected && mode == ImportMode::Atomic) {
        tx.rollback().await.map_err(db)?;
        return Ok(outcomes);
    }
    let finals: Vec<&Device> = changed.iter().filter_map(|id| current.get(*id)).collect();
    write_devices(&mut tx, &finals, &stored).await?;
    let mut chain = AuditChain::load(&mut tx).await?;
    chain.append_many(&mut tx, &entries).await?;
    tx.commit().await.map_err(db)?;
    Ok(outcomes)
}

/// The outcome of one import row applied to the device as the batch has it so far (`None`: it
/// does not exist), and the device after the row when the row changes it.
fn judge(
    current: Option<&Device>,
    row: &ImportRow,
    m: &Mutation,
) -> (ImportOutcome, Option<Device>) {
    let Some(old) = current else {
        let state = row.patch.state.unwrap_or(LifecycleState::Registered);
        if !state.is_initial() {
            return (ImportOutcome::Rejected(not_initial(state)), None);
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
        return (ImportOutcome::Created, Some(device));
    };
    let mut new = old.clone();
    if let Err(e) = row.patch.apply(&mut new) {
        return (ImportOutcome::Rejected(e.to_string()), None);
    }
    if new == *old {
        return (ImportOutcome::Unchanged, None);
    }
    new.version = old.version + 1;
    new.updated_at = m.at;
    (ImportOutcome::Updated, Some(new))
}

/// The stored devices among those the rows name, read in a few statements.
async fn stored_devices(
    conn: &mut SqliteConnection,
    rows: &[ImportRow],
) -> StoreResult<HashMap<DeviceId, Device>> {
    let mut ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    let head = format!("SELECT {DEVICE_COLUMNS} FROM devices d WHERE d.id IN");
    let found: Vec<DeviceRow> = bulk::select_in(conn, &head, &ids).await.map_err(db)?;
    found.into_iter().map(|row| device_from_row(row).map(|d| (d.id.clone(), d))).collect()
}

/// Writes the final state of the devices an import changed: new rows for new devices, the
/// changed columns for stored ones, and their tag rows where the tags changed.
async fn write_devices(
    conn: &mut SqliteConnection,
    devices: &[&Device],
    stored: &HashMap<DeviceId, Device>,
) -> StoreResult<()> {
    let mut rows = Vec::with_capacity(devices.len() * 8);
    let mut stale_tags = Vec::new();
    let mut tag_rows = Vec::new();
    for d in devices {
        rows.extend([
            Value::Text(d.id.to_string()),
            Value::Text(d.name.as_str().to_owned()),
            Value::Text(d.state.as_str().to_owned()),
            Value::Text(d.tags.to_json().to_string()),
            Value::Text(d.attributes.as_json().to_string()),
            Value::Int(d.created_at.millis()),
            Value::Int(d.updated_at.millis()),
            Value::Int(to_i64("device version", d.version)?),
        ]);
        let old_tags = stored.get(&d.id).map(|old| &old.tags);
        if old_tags == Some(&d.tags) {
            continue;
        }
        if old_tags.is_some() {
            stale_tags.push(Value::Text(d.id.to_string()));
        }
        for (k, v) in d.tags.iter() {
            tag_rows.extend([
                Value::Text(d.id.to_string()),
                Value::Text(k.as_str().to_owned()),
                Value::Text(v.to_owned()),
            ]);
        }
    }
    bulk::insert_rows(
        conn,
        "INSERT INTO devices \
         (id, name, state, tags_json, attributes_json, created_at, updated_at, version)",
        " ON CONFLICT (id) DO UPDATE SET name = excluded.name, state = excluded.state, \
         tags_json = excluded.tags_json, attributes_json = excluded.attributes_json, \
         updated_at = excluded.updated_at, version = excluded.version",
        8,
        rows,
    )
    .await
    .map_err(db)?;
    bulk::execute_in(conn, "DELETE FROM device_tags WHERE device_id IN", stale_tags)
        .await
        .map_err(db)?;
    bulk::insert_rows(conn, "INSERT INTO device_tags (device_id, key, value)", "", 3, tag_rows)
        .await
        .map_err(db)
}

/// The audit resource of a device.
pub(crate) fn resource(id: &DeviceId) -> String {
    format!("device/{id}")
}

pub(crate) fn not_found(id: &DeviceId) -> StoreError {
    StoreError::NotFound { kind: "device", id: id.to_string() }
}

fn not_initial(state: LifecycleState) -> String {
    format!("a new device starts as registered or active, not {state}")
}

/// Reads a device for a write, checking that it exists and has the expected version.
pub(crate) async fn current(
    conn: &mut SqliteConnection,
    id: &DeviceId,
    expected_version: Option<u64>,
) -> StoreResult<Device> {
    let device = get(conn, id).await?.ok_or_else(|| not_found(id))?;
    match expected_version {
        Some(expected) if expected != device.version => {
            Err(StoreError::VersionMismatch { expected, current: device.version })
        }
        _ => Ok(device),
    }
}

/// Inserts a new device row and its tags.
pub(crate) async fn insert(conn: &mut SqliteConnection, d: &Device) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO devices \
         (id, name, state, tags_json, attributes_json, created_at, updated_at, version, \
         predecessor_id, successor_id) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(d.id.as_str())
    .bind(d.name.as_str())
    .bind(d.state.as_str())
    .bind(d.tags.to_json().to_string())
    .bind(d.attributes.as_json().to_string())
    .bind(d.created_at.millis())
    .bind(d.updated_at.millis())
    .bind(to_i64("device version", d.version)?)
    .bind(d.replaces.as_ref().map(DeviceId::as_str))
    .bind(d.replaced_by.as_ref().map(DeviceId::as_str))
    .execute(&mut *conn)
    .await
    .map_err(unique_or_db("device", &d.id))?;
    insert_tags(conn, d).await
}

/// Writes a changed device over its row, replacing its tag rows when the tags changed.
pub(crate) async fn rewrite(
    conn: &mut SqliteConnection,
    d: &Device,
    tags_changed: bool,
) -> StoreResult<()> {
    sqlx::query(
        "UPDATE devices SET name = ?, state = ?, tags_json = ?, attributes_json = ?, \
         updated_at = ?, version = ?, predecessor_id = ?, successor_id = ? WHERE id = ?",
    )
    .bind(d.name.as_str())
    .bind(d.state.as_str())
    .bind(d.tags.to_json().to_string())
    .bind(d.attributes.as_json().to_string())
    .bind(d.updated_at.millis())
    .bind(to_i64("device version", d.version)?)
    .bind(d.replaces.as_ref().map(DeviceId::as_str))
    .bind(d.replaced_by.as_ref().map(DeviceId::as_str))
    .bind(d.id.as_str())
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    if tags_changed {
        sqlx::query("DELETE FROM device_tags WHERE device_id = ?")
            .bind(d.id.as_str())
            .execute(&mut *conn)
            .await
            .map_err(db)?;
        insert_tags(conn, d).await?;
    }
    Ok(())
}

/// Inserts one `device_tags` row per tag, in one statement (at most `MAX_TAGS` rows).
async fn insert_tags(conn: &mut SqliteConnection, d: &Device) -> StoreResult<()> {
    if d.tags.is_empty() {
        return Ok(());
    }
    let mut text = String::from("INSERT INTO device_tags (device_id, key, value) VALUES ");
    for i in 0..d.tags.len() {
        text.push_str(if i == 0 { "(?, ?, ?)" } else { ", (?, ?, ?)" });
    }
    let mut query = sqlx::query(sqlx::AssertSqlSafe(text));
    for (k, v) in d.tags.iter() {
        query = query.bind(d.id.as_str()).bind(k.as_str()).bind(v);
    }
    query.execute(&mut *conn).await.map_err(db)?;
    Ok(())
}
