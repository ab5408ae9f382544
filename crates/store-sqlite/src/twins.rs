//! Device twins in `device_twins` (one row per device, each section JSON text) and their history
//! in `device_twin_history` (migration 0010). Changes run in the write transaction (SQLite has
//! one writer, so the read-modify-write cannot interleave); the twin logic itself is the
//! store crate's (`store::plan_update`, `store::plan_report`, `store::recompute_desired`).

use domain::twin::Layer;
use domain::{
    DeviceId, DeviceTwin, Mutation, SectionName, Timestamp, TwinError, TwinPolicy, TwinSection,
};
use serde_json::Value;
use sqlx::SqliteConnection;
use store::{
    MAX_PAGE_SIZE, NewTwinHistory, Page, StoreResult, TWIN_UPDATE_ACTION, TwinChange,
    TwinHistoryEntry, TwinHistoryQuery, TwinUpdate, TwinWrites,
};

use crate::SqliteStore;
use crate::audit_chain::{AuditChain, entry};
use crate::devices::{self, resource};
use crate::profiles;
use crate::rows::{corrupt, db, to_i64};

type TwinRow = (String, String, String, String, i64);

/// A twin as read: the twin and the seq of its last history entry.
pub(crate) struct Stored {
    pub(crate) twin: DeviceTwin,
    history_seq: i64,
}

/// A device's twin; `None` for an unknown device.
pub(crate) async fn get(
    conn: &mut SqliteConnection,
    id: &DeviceId,
) -> StoreResult<Option<DeviceTwin>> {
    if let Some(stored) = read(conn, id).await? {
        return Ok(Some(stored.twin));
    }
    Ok(devices::get(conn, id).await?.map(|_| DeviceTwin::empty(id.clone())))
}

/// The stored twin row of `id`, or an empty twin when the device exists without one; `None` when
/// there is no row (the caller checks the device).
async fn read(conn: &mut SqliteConnection, id: &DeviceId) -> StoreResult<Option<Stored>> {
    let row: Option<TwinRow> = sqlx::query_as(
        "SELECT device_desired, desired, reported, tags, history_seq \
         FROM device_twins WHERE device_id = ?",
    )
    .bind(id.as_str())
    .fetch_optional(&mut *conn)
    .await
    .map_err(db)?;
    let Some((device_desired, desired, reported, tags, history_seq)) = row else {
        return Ok(None);
    };
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

/// The twin of an existing device for a change inside the write transaction.
pub(crate) async fn for_update(conn: &mut SqliteConnection, id: &DeviceId) -> StoreResult<Stored> {
    if let Some(stored) = read(conn, id).await? {
        return Ok(stored);
    }
    devices::get(conn, id).await?.ok_or_else(|| devices::not_found(id))?;
    Ok(Stored { twin: DeviceTwin::empty(id.clone()), history_seq: 0 })
}

/// The layers of desired configuration below the device's own, lowest priority first: the
/// configuration profiles that apply to the device as stored (none for an unknown device).
pub(crate) async fn base_layers(
    conn: &mut SqliteConnection,
    id: &DeviceId,
) -> StoreResult<Vec<Layer>> {
    match devices::get(conn, id).await? {
        Some(device) => profiles::layers(conn, &device).await,
        None => Ok(Vec::new()),
    }
}

/// Writes the twin row and `history`, pruning history to the newest `keep` entries (`None`: no
/// pruning).
pub(crate) async fn write(
    conn: &mut SqliteConnection,
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
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(id)
        .bind(stored.history_seq)
        .bind(h.section.as_str())
        .bind(to_i64("twin version", h.version)?)
        .bind(h.at.millis())
        .bind(&h.actor)
        .bind(h.patch.to_string())
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    }
    sqlx::query(
        "INSERT INTO device_twins (device_id, device_desired, desired, reported, tags, history_seq) \
         VALUES (?, ?, ?, ?, ?, ?) \
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
        sqlx::query("DELETE FROM device_twin_history WHERE device_id = ? AND seq <= ?")
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
    s: &SqliteStore,
    id: &DeviceId,
    update: &TwinUpdate,
    policy: &TwinPolicy,
    m: &Mutation,
) -> StoreResult<Result<TwinChange, TwinError>> {
    let mut tx = s.begin_write().await?;
    let mut stored = for_update(&mut tx, id).await?;
    let layers = base_layers(&mut tx, id).await?;
    let writes = match store::plan_update(&mut stored.twin, &layers, update, policy, m) {
        Ok(w) => w,
        Err(e) => return Ok(Err(e)),
    };
    finish(tx, stored, &writes, policy, m).await
}

async fn finish(
    mut tx: sqlx::Transaction<'static, sqlx::Sqlite>,
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
        let record = entry(
            m,
            TWIN_UPDATE_ACTION,
            resource(&stored.twin.device_id),
            None,
            Some(after.clone()),
        );
        let mut chain = AuditChain::load(&mut tx).await?;
        chain.append(&mut tx, &record).await?;
    }
    tx.commit().await.map_err(db)?;
    Ok(Ok(TwinChange { twin: stored.twin, desired_changed: writes.desired_changed, changed: true }))
}

/// See [`store::Store::report_twin`].
pub(crate) async fn report(
    s: &SqliteStore,
    id: &DeviceId,
    patch: &Value,
    policy: &TwinPolicy,
    at: Timestamp,
) -> StoreResult<Result<TwinChange, TwinError>> {
    let mut tx = s.begin_write().await?;
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
    conn: &mut SqliteConnection,
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

type HistoryRow = (i64, String, i64, i64, String, String);

/// See [`store::Store::twin_history`].
pub(crate) async fn history(
    conn: &mut SqliteConnection,
    id: &DeviceId,
    q: &TwinHistoryQuery,
) -> StoreResult<Page<TwinHistoryEntry>> {
    let limit = q.limit.get().min(MAX_PAGE_SIZE);
    let before = match q.before {
        Some(b) => i64::try_from(b).unwrap_or(i64::MAX),
        None => i64::MAX,
    };
    let rows: Vec<HistoryRow> = sqlx::query_as(
        "SELECT seq, section, version, at, actor, patch FROM device_twin_history \
         WHERE device_id = ? AND seq < ? AND (? IS NULL OR section = ?) \
         ORDER BY seq DESC LIMIT ?",
    )
    .bind(id.as_str())
    .bind(before)
    .bind(q.section.map(SectionName::as_str))
    .bind(q.section.map(SectionName::as_str))
    .bind(i64::from(limit) + 1)
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    let has_more = rows.len() > limit as usize;
    let items = rows
        .into_iter()
        .take(limit as usize)
        .map(|(seq, section, version, at, actor, patch)| {
            let bad = |e: String| corrupt("device_twin_history", id.as_str(), e);
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
