//! Device groups: static ones with explicit members, dynamic ones with a saved filter.

use std::collections::BTreeSet;
use std::num::NonZeroU32;

use domain::{
    Device, DeviceId, Filter, Group, GroupKind, GroupName, GroupPatch, Mutation, NewGroup,
};
use sqlx::{Sqlite, SqliteConnection, Transaction};
use store::{DeviceQuery, MAX_PAGE_SIZE, Page, StoreError, StoreResult};

use crate::SqliteStore;
use crate::audit_chain::{append_and_commit, entry};
use crate::devices;
use crate::filter_sql::Scope;
use crate::profiles;
use crate::rows::{GROUP_COLUMNS, GroupRow, db, group_from_row, to_i64, unique_or_db};

/// Creates a group at version 1.
pub(crate) async fn create(s: &SqliteStore, new: &NewGroup, m: &Mutation) -> StoreResult<Group> {
    let group = Group {
        name: new.name.clone(),
        description: new.description.clone(),
        kind: new.kind.clone(),
        created_at: m.at,
        updated_at: m.at,
        version: 1,
    };
    let (kind, filter) = kind_columns(&group.kind);
    let mut tx = s.begin_write().await?;
    sqlx::query(
        "INSERT INTO groups (name, description, kind, filter, created_at, updated_at, version) \
         VALUES (?, ?, ?, ?, ?, ?, 1)",
    )
    .bind(group.name.as_str())
    .bind(&group.description)
    .bind(kind)
    .bind(filter)
    .bind(m.at.millis())
    .bind(m.at.millis())
    .execute(&mut *tx)
    .await
    .map_err(unique_or_db("group", &group.name))?;
    append_and_commit(
        tx,
        &entry(m, "group.create", resource(&group.name), None, Some(group.audit_summary())),
    )
    .await?;
    Ok(group)
}

/// Reads one group.
pub(crate) async fn get(
    conn: &mut SqliteConnection,
    name: &GroupName,
) -> StoreResult<Option<Group>> {
    let row: Option<GroupRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {GROUP_COLUMNS} FROM groups WHERE name = ?"
    )))
    .bind(name.as_str())
    .fetch_optional(&mut *conn)
    .await
    .map_err(db)?;
    row.map(group_from_row).transpose()
}

/// One page of groups in name order.
pub(crate) async fn list(
    conn: &mut SqliteConnection,
    after: Option<&GroupName>,
    limit: NonZeroU32,
) -> StoreResult<Page<Group>> {
    let limit = limit.get().min(MAX_PAGE_SIZE);
    let rows: Vec<GroupRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {GROUP_COLUMNS} FROM groups WHERE name > ? ORDER BY name LIMIT ?"
    )))
    .bind(after.map_or("", GroupName::as_str))
    .bind(i64::from(limit) + 1)
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    let mut items = rows.into_iter().map(group_from_row).collect::<StoreResult<Vec<_>>>()?;
    let has_more = items.len() > limit as usize;
    items.truncate(limit as usize);
    Ok(Page { items, has_more })
}

/// Changes a group's description or filter; a patch that changes nothing writes nothing.
pub(crate) async fn update(
    s: &SqliteStore,
    name: &GroupName,
    patch: &GroupPatch,
    m: &Mutation,
) -> StoreResult<Group> {
    let mut tx = s.begin_write().await?;
    let old = get(&mut tx, name).await?.ok_or_else(|| not_found(name))?;
    let mut new = old.clone();
    if let Some(description) = &patch.description {
        new.description.clone_from(description);
    }
    if let Some(filter) = &patch.filter {
        match &mut new.kind {
            GroupKind::Dynamic(f) => f.clone_from(filter),
            GroupKind::Static => {
                return Err(StoreError::Conflict(format!(
                    "group {name} is static: it has members, not a filter"
                )));
            }
        }
    }
    if new == old {
        return Ok(old);
    }
    new.version = old.version + 1;
    new.updated_at = m.at;
    if let (GroupKind::Dynamic(old_filter), GroupKind::Dynamic(new_filter)) = (&old.kind, &new.kind)
        && old_filter != new_filter
        && !profiles::attached_to(&mut tx, name).await?.is_empty()
    {
        // The devices leaving and those joining the group change layers.
        profiles::queue_filter(&mut tx, old_filter, m.at).await?;
        profiles::queue_filter(&mut tx, new_filter, m.at).await?;
    }
    let (_, filter) = kind_columns(&new.kind);
    sqlx::query(
        "UPDATE groups SET description = ?, filter = ?, updated_at = ?, version = ? WHERE name = ?",
    )
    .bind(&new.description)
    .bind(filter)
    .bind(m.at.millis())
    .bind(to_i64("group version", new.version)?)
    .bind(name.as_str())
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    append_and_commit(
        tx,
        &entry(
            m,
            "group.update",
            resource(name),
            Some(old.audit_summary()),
            Some(new.audit_summary()),
        ),
    )
    .await?;
    Ok(new)
}

/// Deletes a group and its memberships (not its devices); refused while configuration profiles
/// are attached to it.
pub(crate) async fn delete(s: &SqliteStore, name: &GroupName, m: &Mutation) -> StoreResult<()> {
    let mut tx = s.begin_write().await?;
    let old = get(&mut tx, name).await?.ok_or_else(|| not_found(name))?;
    profiles::check_group_unused(&mut tx, name).await?;
    sqlx::query("DELETE FROM groups WHERE name = ?")
        .bind(name.as_str())
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    append_and_commit(
        tx,
        &entry(m, "group.delete", resource(name), Some(old.audit_summary()), None),
    )
    .await
}

/// Adds devices to a static group. The audit record lists the devices that were not members yet,
/// in id order; when there are none, nothing is written.
pub(crate) async fn add_members(
    s: &SqliteStore,
    name: &GroupName,
    ids: &[DeviceId],
    m: &Mutation,
) -> StoreResult<()> {
    let mut tx = s.begin_write().await?;
    static_group(&mut tx, name).await?;
    for id in ids {
        let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM devices WHERE id = ?")
            .bind(id.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
        if exists.is_none() {
            return Err(StoreError::NotFound { kind: "device", id: id.to_string() });
        }
    }
    let statement = "INSERT INTO group_members (group_name, device_id) VALUES (?, ?) \
                     ON CONFLICT DO NOTHING";
    change_members(tx, name, ids, m, statement, "group.members.add", "added").await
}

/// Removes devices from a static group. The audit record lists the devices that were members, in
/// id order; when there are none, nothing is written.
pub(crate) async fn remove_members(
    s: &SqliteStore,
    name: &GroupName,
    ids: &[DeviceId],
    m: &Mutation,
) -> StoreResult<()> {
    let mut tx = s.begin_write().await?;
    static_group(&mut tx, name).await?;
    let statement = "DELETE FROM group_members WHERE group_name = ? AND device_id = ?";
    change_members(tx, name, ids, m, statement, "group.members.remove", "removed").await
}

/// One page of a group's devices, narrowed by `q.filter`.
pub(crate) async fn devices(
    conn: &mut SqliteConnection,
    name: &GroupName,
    q: &DeviceQuery,
    sparse_bound: u32,
) -> StoreResult<Page<Device>> {
    let group = get(conn, name).await?.ok_or_else(|| not_found(name))?;
    match group.kind {
        GroupKind::Static => {
            devices::page(conn, Scope::StaticGroup(name), q.filter.as_ref(), q, sparse_bound).await
        }
        GroupKind::Dynamic(f) => {
            let filter = Filter::all([Some(f), q.filter.clone()].into_iter().flatten().collect());
            devices::page(conn, Scope::All, filter.as_ref(), q, sparse_bound).await
        }
    }
}

/// Runs `statement` (binding the group name, then a device id) once per id in `tx`, then audits
/// the ids whose row it changed, in id order as `{ key: [...] }` under `action`, and commits. When
/// it changed no row, nothing is written: `tx` is dropped, which rolls it back.
async fn change_members(
    mut tx: Transaction<'static, Sqlite>,
    name: &GroupName,
    ids: &[DeviceId],
    m: &Mutation,
    statement: &'static str,
    action: &str,
    key: &str,
) -> StoreResult<()> {
    let mut changed = BTreeSet::new();
    for id in ids {
        let done = sqlx::query(statement)
            .bind(name.as_str())
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        if done.rows_affected() == 1 {
            changed.insert(id.as_str());
        }
    }
    if changed.is_empty() {
        return Ok(());
    }
    let after = serde_json::json!({ key: changed });
    append_and_commit(tx, &entry(m, action, resource(name), None, Some(after))).await
}

/// Checks that `name` is a static group.
async fn static_group(conn: &mut SqliteConnection, name: &GroupName) -> StoreResult<()> {
    let group = get(conn, name).await?.ok_or_else(|| not_found(name))?;
    match group.kind {
        GroupKind::Static => Ok(()),
        GroupKind::Dynamic(_) => Err(StoreError::Conflict(format!(
            "group {name} is dynamic: its members are the devices its filter matches"
        ))),
    }
}

/// The `kind` and `filter` columns of a group.
fn kind_columns(kind: &GroupKind) -> (&'static str, Option<String>) {
    match kind {
        GroupKind::Static => ("static", None),
        GroupKind::Dynamic(f) => ("dynamic", Some(f.to_string())),
    }
}

/// The audit resource of a group.
fn resource(name: &GroupName) -> String {
    format!("group/{name}")
}

fn not_found(name: &GroupName) -> StoreError {
    StoreError::NotFound { kind: "group", id: name.to_string() }
}
