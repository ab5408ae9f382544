//! Device twins in `device_twins` (one row per device, each section JSON text) and their history
//! in `device_twin_history` (migration 0010). A change locks the twin row (`SELECT … FOR UPDATE`,
//! after inserting an empty row for a device that has none) for its read-modify-write; an
//! operator's change also holds the audit write lock. The twin logic itself is the store
//! crate's (`store::plan_update`, `store::plan_report`, `store::recompute_desired`).

use domain::twin::Layer;
use domain::{
    DeviceId, DeviceTwin, Mutation, SectionName, Timestamp, TwinError, TwinPolicy, TwinSection,
};
use serde_json::Value;
use sqlx::{PgConnection, PgPool, Postgres, Row, Transaction};
use store::{
    MAX_PAGE_SIZE, NewTwinHistory, Page, StoreResult, TWIN_UPDATE_ACTION, TwinChange,
    TwinHistoryEntry, TwinHistoryQuery, TwinUpdate, TwinWrites,
};

use crate::audit::{self, begin_write};
use crate::devices::{self, resource};
use crate::error::{PostgresError, db};
use crate::profiles;
use crate::rows::version_to_sql;

fn corrupt(table: &'static str, key: &str, reason: impl std::fmt::Display) -> store::StoreError {
    PostgresError::corrupt(table, &format!("{key}: {reason}"))
}

/// A twin as read: the twin and the seq of its last history entry.
pub(crate) struct Stored {
    pub(crate) twin: DeviceTwin,
    history_seq: i64,
}

/// A device's twin; `None` for an unknown device.
pub(crate) async fn get(conn: &mut PgConnection, id: &DeviceId) -> StoreResult<Option<DeviceTwin>> {
    if let Some(stored) = read(conn, id).await? {
        return Ok(Some(stored.twin));
    }
    let exists = sqlx::query("SELECT 1 FROM devices WHERE id = $1")
        .bind(id.as_str())
        .fetch_optional(&mut *conn)
        .await
        .map_err(db)?;
    Ok(exists.map(|_| DeviceTwin::empty(id.clone())))
}

/// The stored twin row of `id`, or an empty twin when the device exists without one; `None` when
/// there is no row (the caller checks the device).
async fn read(conn: &mut PgConnection, id: &DeviceId) -> StoreResult<Option<Stored>> {
    read_with(conn, id, false).await
}

async fn read_with(
    conn: &mut PgConnection,
    id: &DeviceId,
    lock: bool,
) -> StoreResult<Option<Stored>> {
    let sql = if lock {
        "SELECT device_desired, desired, reported, tags, history_seq \
         FROM device_twins WHERE device_id = $1 FOR UPDATE"
    } else {
        "SELECT device_desired, desired, reported, tags, history_seq \
         FROM device_twins WHERE device_id = $1"
    };
    let row = sqlx::query(sql).bind(id.as_str()).fetch_optional(&mut *conn).await.map_err(db)?;
    let Some(row) = row else {
        return Ok(None);
    };
    let device_desired: String = row.try_get("device_desired").map_err(db)?;
    let desired: String = row.try_get("desired").map_err(db)?;
    let reported: String = row.try_get("reported").map_err(db)?;
    let tags: String = row.try_get("tags").map_err(db)?;
    let history_seq: i64 = row.try_get("history_seq").map_err(db)?;
    let section = |text: &str| -> StoreResult<TwinSection> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| corrupt("device_twins", id.as_str(), e.to_string()))?;
        TwinSection::from_stored_json(&v).map_err(|e| corrupt("device_twins", id.as_str(), e))
    };
    Ok(Some(Stored {
        twin: DeviceTwin {
            device_id: id.clone(),
            desired: section(&desired)?,
            device_desired: section(&device_desired)?,
            reported: section(&reported)?,
            tags: section(&tags)?,
        },
        history_seq,
    }))
}

/// The twin of an existing device for a change, its row locked until the transaction ends (an
/// empty row is inserted first for a device without one).
pub(crate) async fn for_update(conn: &mut PgConnection, id: &DeviceId) -> StoreResult<Stored> {
    let empty = TwinSection::default().to_stored_json().to_string();
    sqlx::query(
        "INSERT INTO device_twins (device_id, device_desired, desired, reported, tags, history_seq) \
         SELECT id, $2, $2, $2, $2, 0 FROM devices WHERE id = $1 \
         ON CONFLICT (device_id) DO NOTHING",
    )
    .bind(id.as_str())
    .bind(&empty)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    read_with(conn, id, true).await?.ok_or_else(|| devices::not_found(id))
}

/// The layers of desired configuration below the device's own, lowest priority first: the
/// configuration profiles that apply to the device as stored (none for an unknown device).
pub(crate) async fn base_layers(conn: &mut PgConnection, id: &DeviceId) -> StoreResult<Vec<Layer>> {
    match devices::read(conn, id).await? {
        Some(device) => profiles::layers(conn, &device).await,
        None => Ok(Vec::new()),
    }
}

/// Writes the twin row and `history`, pruning history to the newest `keep` entries (`None`: no
/// pruning).
pub(crate) async fn write(
    conn: &mut PgConnection,
    stored: &mut Stored,
    history: &[NewTwinHistory],
    keep: Option<u32>,
) -> StoreResult<()> {
    let t = &stored.twin;
    let id = t.device_id.as_str();
    for h in history {
        stored.history_seq += 1;
        sqlx::query(
            "INSERT INTO device_twin_history (device_id, seq, section, version, at, actor, patch) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(id)
        .bind(stored.history_seq)
        .bind(h.section.as_str())
        .bind(version_to_sql(h.version)?)
        .bind(h.at.millis())
        .bind(&h.actor)
        .bind(h.patch.to_string())
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    }
    sqlx::query(
        "INSERT INTO device_twins (device_id, device_desired, desired, reported, tags, history_seq) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (device_id) DO UPDATE SET device_desired = excluded.device_desired, \
         desired = excluded.desired, reported = excluded.reported, tags = excluded.tags, \
         history_seq = excluded.history_seq",
    )
    .bind(id)
    .bind(t.device_desired.to_stored_json().to_string())
    .bind(t.desired.to_stored_json().to_string())
    .bind(t.reported.to_stored_json().to_string())
    .bind(t.tags.to_stored_json().to_string())
    .bind(stored.history_seq)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    if let Some(keep) = keep {
        sqlx::query("DELETE FROM device_twin_history WHERE device_id = $1 AND seq <= $2")
            .bind(id)
            .bind(stored.history_seq - i64::from(keep.max(1)))
            .execute(&mut *conn)
            .await
            .map_err(db)?;
    }
    Ok(())
}

/// See [`store::Store::update_twin`].
pub(crate) async fn update(
    pool: &PgPool,
    id: &DeviceId,
    update: &TwinUpdate,
    policy: &TwinPolicy,
    m: &Mutation,
) -> StoreResult<Result<TwinChange, TwinError>> {
    let mut tx = begin_write(pool).await?;
    let mut stored = for_update(&mut tx, id).await?;
    let layers = base_layers(&mut tx, id).await?;
    let writes = match store::plan_update(&mut stored.twin, &layers, update, policy, m) {
        Ok(w) => w,
        Err(e) => return Ok(Err(e)),
    };
    finish(tx, stored, &writes, policy, m).await
}

async fn finish(
    mut tx: Transaction<'static, Postgres>,
    mut stored: Stored,
    writes: &TwinWrites,
    policy: &TwinPolicy,
    m: &Mutation,
) -> StoreResult<Result<TwinChange, TwinError>> {
    if !writes.changed() {
        return Ok(Ok(TwinChange { twin: stored.twin, desired_changed: false, changed: false }));
    }
    write(&mut tx, &mut stored, &writes.history, Some(policy.history_per_device)).await?;
    if let Some(after) = &writes.audit_after {
        let record = audit::record(
            m,
            TWIN_UPDATE_ACTION,
            resource(&stored.twin.device_id),
            None,
            Some(after.clone()),
        );
        audit::append(&mut tx, &record).await?;
    }
    tx.commit().await.map_err(db)?;
    Ok(Ok(TwinChange { twin: stored.twin, desired_changed: writes.desired_changed, changed: true }))
}

/// See [`store::Store::report_twin`].
pub(crate) async fn report(
    pool: &PgPool,
    id: &DeviceId,
    patch: &Value,
    policy: &TwinPolicy,
    at: Timestamp,
) -> StoreResult<Result<TwinChange, TwinError>> {
    // Not audited: the row lock alone orders it with other changes of this twin.
    let mut tx = pool.begin().await.map_err(db)?;
    let mut stored = for_update(&mut tx, id).await?;
    let writes = match store::plan_report(&mut stored.twin, patch, policy, at) {
        Ok(w) => w,
        Err(e) => return Ok(Err(e)),
    };
    if !writes.changed() {
        return Ok(Ok(TwinChange { twin: stored.twin, desired_changed: false, changed: false }));
    }
    write(&mut tx, &mut stored, &writes.history, Some(policy.history_per_device)).await?;
    tx.commit().await.map_err(db)?;
    Ok(Ok(TwinChange { twin: stored.twin, desired_changed: false, changed: true }))
}

/// Inside a replacement's transaction: gives `new` the twin sections of `old` that move (see
/// [`store::plan_replacement`]); returns the audit record's `after` when something changed.
pub(crate) async fn replace(
    conn: &mut PgConnection,
    old: &DeviceId,
    new: &DeviceId,
    at: Timestamp,
) -> StoreResult<Option<Value>> {
    let Some(old_twin) = read(conn, old).await? else { return Ok(None) };
    let mut stored = for_update(conn, new).await?;
    let layers = base_layers(conn, new).await?;
    let writes = store::plan_replacement(&mut stored.twin, &old_twin.twin, &layers, at);
    if writes.changed() {
        write(conn, &mut stored, &writes.history, None).await?;
    }
    Ok(writes.audit_after)
}

/// See [`store::Store::twin_history`].
pub(crate) async fn history(
    pool: &PgPool,
    id: &DeviceId,
    q: &TwinHistoryQuery,
) -> StoreResult<Page<TwinHistoryEntry>> {
    let limit = q.limit.get().min(MAX_PAGE_SIZE);
    let before = match q.before {
        Some(b) => i64::try_from(b).unwrap_or(i64::MAX),
        None => i64::MAX,
    };
    let rows = sqlx::query(
        "SELECT seq, section, version, at, actor, patch FROM device_twin_history \
         WHERE device_id = $1 AND seq < $2 AND ($3::TEXT IS NULL OR section = $3) \
         ORDER BY seq DESC LIMIT $4",
    )
    .bind(id.as_str())
    .bind(before)
    .bind(q.section.map(SectionName::as_str))
    .bind(i64::from(limit) + 1)
    .fetch_all(pool)
    .await
    .map_err(db)?;
    let has_more = rows.len() > limit as usize;
    let items = rows
        .into_iter()
        .take(limit as usize)
        .map(|row| {
            let bad = |e: String| corrupt("device_twin_history", id.as_str(), e);
            let seq: i64 = row.try_get("seq").map_err(db)?;
            let section: String = row.try_get("section").map_err(db)?;
            let version: i64 = row.try_get("version").map_err(db)?;
            let at: i64 = row.try_get("at").map_err(db)?;
            let actor: String = row.try_get("actor").map_err(db)?;
            let patch: String = row.try_get("patch").map_err(db)?;
            Ok(TwinHistoryEntry {
                seq: u64::try_from(seq).map_err(|e| bad(e.to_string()))?,
                section: SectionName::parse(&section).map_err(|e| bad(e.to_string()))?,
                version: u64::try_from(version).map_err(|e| bad(e.to_string()))?,
                at: Timestamp::from_millis(at),
                actor,
                patch: serde_json::from_str(&patch).map_err(|e| bad(e.to_string()))?,
            })
        })
        .collect::<StoreResult<Vec<_>>>()?;
    Ok(Page { items, has_more })
}
