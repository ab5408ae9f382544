//! Device groups: static groups with explicit members in `group_members`, dynamic groups with a
//! saved filter evaluated when their devices are listed.

use std::num::NonZeroU32;

use domain::{
    Device, DeviceId, Filter, Group, GroupKind, GroupName, GroupPatch, Mutation, NewGroup,
};
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use store::{DeviceQuery, MAX_PAGE_SIZE, Page, StoreError, StoreResult};

use crate::audit::{self, begin_write};
use crate::devices;
use crate::error::db;
use crate::filter_sql::Scope;
use crate::profiles;
use crate::rows::{self, StoredGroup, group_columns};

/// Creates a group at version 1.
pub(crate) async fn create(pool: &PgPool, new: &NewGroup, m: &Mutation) -> StoreResult<Group> {
    let group = Group {
        name: new.name.clone(),
        description: new.description.clone(),
        kind: new.kind.clone(),
        created_at: m.at,
        updated_at: m.at,
        version: 1,
    };
    let (kind, filter) = kind_columns(&group.kind);
    let mut tx = begin_write(pool).await?;
    let inserted = sqlx::query(
        "INSERT INTO device_groups (name, description, kind, filter, created_at, updated_at, version)
         VALUES ($1, $2, $3, $4, $5, $6, 1)
         ON CONFLICT (name) DO NOTHING",
    )
    .bind(group.name.as_str())
    .bind(&group.description)
    .bind(kind)
    .bind(filter)
    .bind(group.created_at.millis())
    .bind(group.updated_at.millis())
    .execute(&mut *tx)
    .await
    .map_err(db)?
    .rows_affected();
    if inserted != 1 {
        return Err(StoreError::AlreadyExists { kind: "group", id: group.name.to_string() });
    }
    let record =
        audit::record(m, "group.create", resource(&group.name), None, Some(group.audit_summary()));
    audit::append_and_commit(tx, &record).await?;
    Ok(group)
}

/// Reads one group.
pub(crate) async fn get(pool: &PgPool, name: &GroupName) -> StoreResult<Option<Group>> {
    Ok(get_stored(pool, name).await?.map(|g| g.group))
}

/// One page of groups ordered by name.
pub(crate) async fn list(
    pool: &PgPool,
    after: Option<&GroupName>,
    limit: NonZeroU32,
) -> StoreResult<Page<Group>> {
    let limit = limit.get().min(MAX_PAGE_SIZE);
    let rows = sqlx::query(concat!(
        "SELECT ",
        group_columns!(),
        " FROM device_groups g WHERE ($1::text IS NULL OR g.name > $1) ORDER BY g.name LIMIT $2"
    ))
    .bind(after.map(GroupName::as_str))
    .bind(i64::from(limit) + 1)
    .fetch_all(pool)
    .await
    .map_err(db)?;
    let mut items =
        rows.iter().map(|r| rows::group(r).map(|g| g.group)).collect::<Result<Vec<_>, _>>()?;
    let has_more = items.len() > limit as usize;
    items.truncate(limit as usize);
    Ok(Page { items, has_more })
}

/// Changes a group's description or (dynamic groups only) its filter.
pub(crate) async fn update(
    pool: &PgPool,
    name: &GroupName,
    patch: &GroupPatch,
    m: &Mutation,
) -> StoreResult<Group> {
    let mut tx = begin_write(pool).await?;
    let current = get_for_update(&mut tx, name).await?;
    let mut next = current.group.clone();
    if let Some(description) = &patch.description {
        next.description.clone_from(description);
    }
    if let Some(filter) = &patch.filter {
        match &mut next.kind {
            GroupKind::Dynamic(f) => *f = filter.clone(),
            GroupKind::Static => {
                return Err(StoreError::Conflict(format!(
                    "group {name} is static: it has members, not a filter"
                )));
            }
        }
    }
    if next == current.group {
        return Ok(next);
    }
    next.version += 1;
    next.updated_at = m.at;
    if let (GroupKind::Dynamic(old_filter), GroupKind::Dynamic(new_filter)) =
        (&current.group.kind, &next.kind)
        && old_filter != new_filter
        && !profiles::attached_to(&mut tx, name).await?.is_empty()
    {
        // The devices leaving and those joining the group change layers.
        profiles::queue_filter(&mut tx, old_filter, m.at).await?;
        profiles::queue_filter(&mut tx, new_filter, m.at).await?;
    }
    let (_, filter) = kind_columns(&next.kind);
    sqlx::query(
        "UPDATE device_groups SET description = $2, filter = $3, updated_at = $4, version = $5
         WHERE id = $1",
    )
    .bind(current.key)
    .bind(&next.description)
    .bind(filter)
    .bind(next.updated_at.millis())
    .bind(rows::version_to_sql(next.version)?)
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    let record = audit::record(
        m,
        "group.update",
        resource(name),
        Some(current.group.audit_summary()),
        Some(next.audit_summary()),
    );
    audit::append_and_commit(tx, &record).await?;
    Ok(next)
}

/// Deletes a group; its memberships go with it, its devices stay. Refused while configuration
/// profiles are attached to it.
pub(crate) async fn delete(pool: &PgPool, name: &GroupName, m: &Mutation) -> StoreResult<()> {
    let mut tx = begin_write(pool).await?;
    let current = get_for_update(&mut tx, name).await?;
    profiles::check_group_unused(&mut tx, name).await?;
    sqlx::query("DELETE FROM device_groups WHERE id = $1")
        .bind(current.key)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    let record =
        audit::record(m, "group.delete", resource(name), Some(current.group.audit_summary()), None);
    audit::append_and_commit(tx, &record).await
}

/// Adds devices to a static group. The audit record lists the devices that were not members yet,
/// in id order; when there are none, nothing is written.
pub(crate) async fn add_members(
    pool: &PgPool,
    name: &GroupName,
    ids: &[DeviceId],
    m: &Mutation,
) -> StoreResult<()> {
    let mut tx = begin_write(pool).await?;
    let group = get_static_for_update(&mut tx, name).await?;
    let existing = devices::existing_ids(&mut tx, ids).await?;
    if let Some(missing) = ids.iter().find(|id| !existing.contains(id.as_str())) {
        return Err(StoreError::NotFound { kind: "device", id: missing.to_string() });
    }
    let statement = "INSERT INTO group_members (group_id, device_id)
         SELECT DISTINCT $1::bigint, id FROM UNNEST($2::text[]) AS ids (id)
         ON CONFLICT DO NOTHING
         RETURNING device_id";
    change_members(tx, &group, ids, m, statement, "group.members.add", "added").await
}

/// Removes devices from a static group. The audit record lists the devices that were members, in
/// id order; when there are none, nothing is written.
pub(crate) async fn remove_members(
    pool: &PgPool,
    name: &GroupName,
    ids: &[DeviceId],
    m: &Mutation,
) -> StoreResult<()> {
    let mut tx = begin_write(pool).await?;
    let group = get_static_for_update(&mut tx, name).await?;
    let statement = "DELETE FROM group_members WHERE group_id = $1 AND device_id = ANY($2)
         RETURNING device_id";
    change_members(tx, &group, ids, m, statement, "group.members.remove", "removed").await
}

/// One page of a group's devices: members of a static group, matches of a dynamic one.
pub(crate) async fn devices(
    pool: &PgPool,
    name: &GroupName,
    q: &DeviceQuery,
) -> StoreResult<Page<Device>> {
    let stored = get_stored(pool, name).await?.ok_or_else(|| not_found(name))?;
    match stored.group.kind {
        GroupKind::Static => {
            devices::page(pool, Scope::StaticGroup(stored.key), q.filter.as_ref(), q).await
        }
        GroupKind::Dynamic(f) => {
            let filter = Filter::all([Some(f), q.filter.clone()].into_iter().flatten().collect());
            devices::page(pool, Scope::All, filter.as_ref(), q).await
        }
    }
}

/// Runs `statement` in `tx` with the group's key and `ids` as `$1` and `$2`; it returns the ids of
/// the member rows it changed. Those ids are audited in id order as `{ key: [...] }` under
/// `action`, and `tx` commits. When no row changed, nothing is written: `tx` is dropped, which
/// rolls it back.
async fn change_members(
    mut tx: Transaction<'static, Postgres>,
    group: &StoredGroup,
    ids: &[DeviceId],
    m: &Mutation,
    statement: &'static str,
    action: &str,
    key: &str,
) -> StoreResult<()> {
    let ids: Vec<&str> = ids.iter().map(DeviceId::as_str).collect();
    let mut changed: Vec<String> = sqlx::query_scalar(statement)
        .bind(group.key)
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
    if changed.is_empty() {
        return Ok(());
    }
    changed.sort_unstable();
    let after = serde_json::json!({ key: changed });
    let record = audit::record(m, action, resource(&group.group.name), None, Some(after));
    audit::append_and_commit(tx, &record).await
}

/// Reads one group with its `device_groups.id` key, without locking it.
async fn get_stored(pool: &PgPool, name: &GroupName) -> StoreResult<Option<StoredGroup>> {
    let row = sqlx::query(concat!(
        "SELECT ",
        group_columns!(),
        " FROM device_groups g WHERE g.name = $1"
    ))
    .bind(name.as_str())
    .fetch_optional(pool)
    .await
    .map_err(db)?;
    row.as_ref().map(rows::group).transpose()
}

async fn get_for_update(conn: &mut PgConnection, name: &GroupName) -> StoreResult<StoredGroup> {
    let row = sqlx::query(concat!(
        "SELECT ",
        group_columns!(),
        " FROM device_groups g WHERE g.name = $1 FOR UPDATE"
    ))
    .bind(name.as_str())
    .fetch_optional(&mut *conn)
    .await
    .map_err(db)?;
    row.as_ref().map(rows::group).transpose()?.ok_or_else(|| not_found(name))
}

async fn get_static_for_update(
    conn: &mut PgConnection,
    name: &GroupName,
) -> StoreResult<StoredGroup> {
    let group = get_for_update(conn, name).await?;
    match group.group.kind {
        GroupKind::Static => Ok(group),
        GroupKind::Dynamic(_) => Err(StoreError::Conflict(format!(
            "group {name} is dynamic: its members are the devices its filter matches"
        ))),
    }
}

/// The `kind` and `filter` columns of a group kind.
fn kind_columns(kind: &GroupKind) -> (&'static str, Option<String>) {
    match kind {
        GroupKind::Static => ("static", None),
        GroupKind::Dynamic(filter) => ("dynamic", Some(filter.to_string())),
    }
}

fn resource(name: &GroupName) -> String {
    format!("group/{name}")
}

fn not_found(name: &GroupName) -> StoreError {
    StoreError::NotFound { kind: "group", id: name.to_string() }
}
