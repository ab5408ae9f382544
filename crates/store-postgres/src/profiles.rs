//! Configuration profiles in `config_profiles` and the durable twin recompute queue
//! `twin_recompute` (migration 0013).
//!
//! Every profile change runs in one write transaction (`audit::begin_write`) with its audit
//! record and puts the devices it can affect on the queue in that same transaction: every device
//! for a fleet profile, the members of a static group, the devices a dynamic group's filter
//! matches (the filter translated by `filter_sql`, as for jobs). Device and membership changes
//! queue their device through the migration's triggers. Which profiles apply to a device and the
//! merge itself are `store::profiles`' logic.
//!
//! [`recompute`] drains the queue. It takes the writers' advisory lock in *shared* mode: drains on
//! several nodes run side by side (each takes its rows with `FOR UPDATE SKIP LOCKED`, so they take
//! different devices), but never while a writer is in the middle of a change, so what a drain reads
//! (devices, memberships, profiles) cannot change under it before it commits, and a change that
//! queues a device a drain has taken is committed either before the drain reads or after it
//! commits (and then queues the device again). Twin rows are locked as in `twins`.

use std::collections::BTreeSet;
use std::num::NonZeroU32;

use domain::twin::Layer;
use domain::{
    ConfigProfile, Device, DeviceId, Filter, GroupKind, GroupName, Mutation, NewProfile,
    ProfileName, ProfilePatch, ProfileTarget, Timestamp, TwinPolicy,
};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Postgres, QueryBuilder, Row};
use store::profiles::{
    Candidate, PROFILE_CREATE_ACTION, PROFILE_DELETE_ACTION, PROFILE_UPDATE_ACTION, ProfileQuery,
    Recomputed, applicable_layers, changes_layers, check_version, document_from_json,
    document_to_json, group_has_profiles, new_profile, plan_profile_update, plan_recompute,
    profile_not_found, profile_resource,
};
use store::{MAX_PAGE_SIZE, Page, StoreError, StoreResult};

use crate::audit::{self, WRITE_LOCK, begin_write};
use crate::error::{PostgresError, db};
use crate::rows::{self, version_to_sql};
use crate::{devices, filter_sql, twins};

/// The `config_profiles` columns [`profile`] reads, qualified by the alias `p`, for `concat!`.
macro_rules! profile_columns {
    () => {
        "p.name, p.description, p.group_name, p.priority, p.document_json, p.created_at, \
         p.updated_at, p.version"
    };
}

/// Creates a profile at version 1 and queues the devices it targets.
pub(crate) async fn create(
    pool: &PgPool,
    new: &NewProfile,
    m: &Mutation,
) -> StoreResult<ConfigProfile> {
    let profile = new_profile(new, m.at);
    let mut tx = begin_write(pool).await?;
    let reach = reach(&mut tx, &profile.target).await?;
    let inserted = sqlx::query(
        "INSERT INTO config_profiles (name, description, group_name, priority, document_json, \
         created_at, updated_at, version) VALUES ($1, $2, $3, $4, $5, $6, $6, 1) \
         ON CONFLICT (name) DO NOTHING",
    )
    .bind(profile.name.as_str())
    .bind(&profile.description)
    .bind(profile.target.group().map(GroupName::as_str))
    .bind(profile.priority)
    .bind(document_to_json(&profile.document))
    .bind(m.at.millis())
    .execute(&mut *tx)
    .await
    .map_err(db)?
    .rows_affected();
    if inserted != 1 {
        return Err(StoreError::AlreadyExists {
            kind: "config_profile",
            id: profile.name.to_string(),
        });
    }
    queue(&mut tx, &reach, m.at).await?;
    let record = audit::record(
        m,
        PROFILE_CREATE_ACTION,
        profile_resource(&profile.name),
        None,
        Some(profile.audit_summary()),
    );
    audit::append_and_commit(tx, &record).await?;
    Ok(profile)
}

/// Reads one profile.
pub(crate) async fn get(pool: &PgPool, name: &ProfileName) -> StoreResult<Option<ConfigProfile>> {
    let mut conn = pool.acquire().await.map_err(db)?;
    get_in(&mut conn, name, false).await
}

/// One page of profiles in name order, optionally only those with one target.
pub(crate) async fn list(pool: &PgPool, q: &ProfileQuery) -> StoreResult<Page<ConfigProfile>> {
    let limit = q.limit.get().min(MAX_PAGE_SIZE);
    let mut qb = QueryBuilder::<Postgres>::new(concat!(
        "SELECT ",
        profile_columns!(),
        " FROM config_profiles p WHERE p.name > "
    ));
    qb.push_bind(q.after.as_ref().map_or("", ProfileName::as_str).to_owned());
    match &q.target {
        None => {}
        Some(ProfileTarget::Fleet) => {
            qb.push(" AND p.group_name IS NULL");
        }
        Some(ProfileTarget::Group(g)) => {
            qb.push(" AND p.group_name = ").push_bind(g.as_str().to_owned());
        }
    }
    qb.push(" ORDER BY p.name LIMIT ").push_bind(i64::from(limit) + 1);
    let rows = qb.build().fetch_all(pool).await.map_err(db)?;
    let mut items = rows.iter().map(profile).collect::<StoreResult<Vec<_>>>()?;
    let has_more = items.len() > limit as usize;
    items.truncate(limit as usize);
    Ok(Page { items, has_more })
}

/// Applies a patch and queues the devices of the old and the new target; a patch that changes
/// nothing writes nothing, and one that changes only the description queues nothing.
pub(crate) async fn update(
    pool: &PgPool,
    name: &ProfileName,
    patch: &ProfilePatch,
    m: &Mutation,
) -> StoreResult<ConfigProfile> {
    let mut tx = begin_write(pool).await?;
    let old = get_in(&mut tx, name, true).await?.ok_or_else(|| profile_not_found(name))?;
    let Some(new) = plan_profile_update(&old, patch, m.at)? else { return Ok(old) };
    let new_reach =
        if new.target == old.target { None } else { Some(reach(&mut tx, &new.target).await?) };
    sqlx::query(
        "UPDATE config_profiles SET description = $2, group_name = $3, priority = $4, \
         document_json = $5, updated_at = $6, version = $7 WHERE name = $1",
    )
    .bind(name.as_str())
    .bind(&new.description)
    .bind(new.target.group().map(GroupName::as_str))
    .bind(new.priority)
    .bind(document_to_json(&new.document))
    .bind(m.at.millis())
    .bind(version_to_sql(new.version)?)
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    if changes_layers(&old, &new) {
        let old_reach = reach(&mut tx, &old.target).await?;
        queue(&mut tx, &old_reach, m.at).await?;
        if let Some(new_reach) = &new_reach {
            queue(&mut tx, new_reach, m.at).await?;
        }
    }
    let record = audit::record(
        m,
        PROFILE_UPDATE_ACTION,
        profile_resource(name),
        Some(old.audit_summary()),
        Some(new.audit_summary()),
    );
    audit::append_and_commit(tx, &record).await?;
    Ok(new)
}

/// Deletes a profile and queues the devices it targeted.
pub(crate) async fn delete(
    pool: &PgPool,
    name: &ProfileName,
    expected_version: Option<u64>,
    m: &Mutation,
) -> StoreResult<()> {
    let mut tx = begin_write(pool).await?;
    let old = get_in(&mut tx, name, true).await?.ok_or_else(|| profile_not_found(name))?;
    check_version(&old, expected_version)?;
    let old_reach = reach(&mut tx, &old.target).await?;
    sqlx::query("DELETE FROM config_profiles WHERE name = $1")
        .bind(name.as_str())
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    queue(&mut tx, &old_reach, m.at).await?;
    let record = audit::record(
        m,
        PROFILE_DELETE_ACTION,
        profile_resource(name),
        Some(old.audit_summary()),
        None,
    );
    audit::append_and_commit(tx, &record).await
}

/// The layers below `device`'s own (see [`store::Store::desired_layers`]), read in one snapshot.
pub(crate) async fn desired_layers(pool: &PgPool, device: &Device) -> StoreResult<Vec<Layer>> {
    let mut tx = pool.begin().await.map_err(db)?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    let layers = layers(&mut tx, device).await?;
    tx.commit().await.map_err(db)?;
    Ok(layers)
}

/// The layers below `device`'s own, inside the caller's transaction.
pub(crate) async fn layers(conn: &mut PgConnection, device: &Device) -> StoreResult<Vec<Layer>> {
    let candidates = candidates(conn).await?;
    layers_from(conn, device, candidates).await
}

/// The names of the profiles attached to `group`, in name order.
pub(crate) async fn attached_to(
    conn: &mut PgConnection,
    group: &GroupName,
) -> StoreResult<Vec<ProfileName>> {
    let names: Vec<String> =
        sqlx::query_scalar("SELECT name FROM config_profiles WHERE group_name = $1 ORDER BY name")
            .bind(group.as_str())
            .fetch_all(&mut *conn)
            .await
            .map_err(db)?;
    names
        .into_iter()
        .map(|n| ProfileName::new(n).map_err(|e| PostgresError::corrupt("profile name", &e)))
        .collect()
}

/// Refuses to delete `group` while profiles are attached to it.
pub(crate) async fn check_group_unused(
    conn: &mut PgConnection,
    group: &GroupName,
) -> StoreResult<()> {
    let attached = attached_to(conn, group).await?;
    if attached.is_empty() {
        return Ok(());
    }
    Err(group_has_profiles(group, &attached))
}

/// Queues every device `filter` matches now (a dynamic group's members).
pub(crate) async fn queue_filter(
    conn: &mut PgConnection,
    filter: &Filter,
    at: Timestamp,
) -> StoreResult<()> {
    queue(conn, &Reach::Filter(filter.clone()), at).await
}

/// Whether `id` is on the recompute queue.
pub(crate) async fn pending(pool: &PgPool, id: &DeviceId) -> StoreResult<bool> {
    let hit: Option<i32> = sqlx::query_scalar("SELECT 1 FROM twin_recompute WHERE device_id = $1")
        .bind(id.as_str())
        .fetch_optional(pool)
        .await
        .map_err(db)?;
    Ok(hit.is_some())
}

/// How many devices are on the recompute queue.
pub(crate) async fn queue_len(pool: &PgPool) -> StoreResult<u64> {
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM twin_recompute")
        .fetch_one(pool)
        .await
        .map_err(db)?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Takes up to `limit` devices off the queue, oldest first, skipping those another drain holds,
/// and recomputes their effective desired documents in one transaction (see the module
/// documentation and [`store::Store::recompute_twins`]).
pub(crate) async fn recompute(
    pool: &PgPool,
    limit: NonZeroU32,
    policy: &TwinPolicy,
    at: Timestamp,
) -> StoreResult<Recomputed> {
    let mut tx = pool.begin().await.map_err(db)?;
    sqlx::query("SELECT pg_advisory_xact_lock_shared($1)")
        .bind(WRITE_LOCK)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT device_id FROM twin_recompute ORDER BY queued_at, device_id LIMIT $1 \
         FOR UPDATE SKIP LOCKED",
    )
    .bind(i64::from(limit.get()))
    .fetch_all(&mut *tx)
    .await
    .map_err(db)?;
    let mut done = Recomputed { taken: ids.len() as u64, ..Recomputed::default() };
    if ids.is_empty() {
        return Ok(done);
    }
    let candidates = candidates(&mut tx).await?;
    for raw in &ids {
        let id = DeviceId::new(raw.as_str())
            .map_err(|e| PostgresError::corrupt("twin_recompute device id", &e))?;
        // A device deleted since it was queued: nothing to recompute.
        let Some(device) = devices::read(&mut tx, &id).await? else { continue };
        let mut stored = twins::for_update(&mut tx, &id).await?;
        let layers = layers_from(&mut tx, &device, candidates.clone()).await?;
        match plan_recompute(&mut stored.twin, &layers, policy, at) {
            Ok(Some(history)) => {
                twins::write(&mut tx, &mut stored, &[history], Some(policy.history_per_device))
                    .await?;
                done.changed.push(stored.twin);
            }
            Ok(None) => {}
            Err(e) => done.refused.push((id, e)),
        }
    }
    sqlx::query("DELETE FROM twin_recompute WHERE device_id = ANY($1)")
        .bind(&ids)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    tx.commit().await.map_err(db)?;
    Ok(done)
}

/// The devices a profile target reaches, with its group looked up.
#[derive(Debug, Clone)]
enum Reach {
    /// Every device.
    Fleet,
    /// The explicit members of the static group with this `device_groups.id`.
    StaticGroup(i64),
    /// The devices a dynamic group's filter matches.
    Filter(Filter),
}

/// Looks up a target's group.
///
/// # Errors
/// [`StoreError::NotFound`] (kind `group`) for a group that does not exist.
async fn reach(conn: &mut PgConnection, target: &ProfileTarget) -> StoreResult<Reach> {
    let ProfileTarget::Group(name) = target else { return Ok(Reach::Fleet) };
    let row: Option<(i64, String, Option<String>)> =
        sqlx::query_as("SELECT id, kind, filter FROM device_groups WHERE name = $1")
            .bind(name.as_str())
            .fetch_optional(&mut *conn)
            .await
            .map_err(db)?;
    let Some((key, kind, filter)) = row else {
        return Err(StoreError::NotFound { kind: "group", id: name.to_string() });
    };
    Ok(match rows::group_kind(&kind, filter)? {
        GroupKind::Static => Reach::StaticGroup(key),
        GroupKind::Dynamic(f) => Reach::Filter(f),
    })
}

/// Queues every device `reach` covers (a device already queued keeps its place).
async fn queue(conn: &mut PgConnection, reach: &Reach, at: Timestamp) -> StoreResult<()> {
    let mut qb = QueryBuilder::<Postgres>::new(
        "INSERT INTO twin_recompute (device_id, queued_at) SELECT d.id, ",
    );
    qb.push_bind(at.millis()).push(" FROM devices d");
    match reach {
        Reach::Fleet => {}
        Reach::StaticGroup(key) => {
            qb.push(" WHERE d.id IN (SELECT device_id FROM group_members WHERE group_id = ")
                .push_bind(*key)
                .push(")");
        }
        Reach::Filter(f) => {
            qb.push(" WHERE ");
            filter_sql::push_condition(&mut qb, f);
        }
    }
    qb.push(" ON CONFLICT DO NOTHING");
    qb.build().persistent(false).execute(&mut *conn).await.map_err(db)?;
    Ok(())
}

/// Reads one profile, locking its row for the rest of the transaction when `lock`.
async fn get_in(
    conn: &mut PgConnection,
    name: &ProfileName,
    lock: bool,
) -> StoreResult<Option<ConfigProfile>> {
    let sql = if lock {
        concat!(
            "SELECT ",
            profile_columns!(),
            " FROM config_profiles p WHERE p.name = $1 FOR UPDATE"
        )
    } else {
        concat!("SELECT ", profile_columns!(), " FROM config_profiles p WHERE p.name = $1")
    };
    let row = sqlx::query(sql).bind(name.as_str()).fetch_optional(&mut *conn).await.map_err(db)?;
    row.as_ref().map(profile).transpose()
}

/// Every profile with its group's kind, in name order: what [`applicable_layers`] chooses from.
async fn candidates(conn: &mut PgConnection) -> StoreResult<Vec<Candidate>> {
    let rows = sqlx::query(concat!(
        "SELECT ",
        profile_columns!(),
        ", g.kind AS group_kind, g.filter AS group_filter FROM config_profiles p \
         LEFT JOIN device_groups g ON g.name = p.group_name ORDER BY p.name"
    ))
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    rows.iter()
        .map(|row| {
            let kind: Option<String> = row.try_get("group_kind").map_err(db)?;
            let filter: Option<String> = row.try_get("group_filter").map_err(db)?;
            let group_kind = kind.map(|k| rows::group_kind(&k, filter)).transpose()?;
            Ok(Candidate { profile: profile(row)?, group_kind })
        })
        .collect()
}

/// The layers of `device` among `candidates`, given its static memberships as stored.
async fn layers_from(
    conn: &mut PgConnection,
    device: &Device,
    candidates: Vec<Candidate>,
) -> StoreResult<Vec<Layer>> {
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT g.name FROM group_members gm \
         JOIN device_groups g ON g.id = gm.group_id \
         JOIN config_profiles p ON p.group_name = g.name WHERE gm.device_id = $1",
    )
    .bind(device.id.as_str())
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    let static_groups = names
        .into_iter()
        .map(|n| GroupName::new(n).map_err(|e| PostgresError::corrupt("group name", &e)))
        .collect::<StoreResult<BTreeSet<_>>>()?;
    Ok(applicable_layers(device, candidates, &static_groups))
}

/// Decodes a row selected with [`profile_columns!`].
fn profile(row: &PgRow) -> StoreResult<ConfigProfile> {
    let name: String = row.try_get("name").map_err(db)?;
    let group: Option<String> = row.try_get("group_name").map_err(db)?;
    let document: String = row.try_get("document_json").map_err(db)?;
    let version: i64 = row.try_get("version").map_err(db)?;
    let bad = |reason: &dyn std::fmt::Display| {
        PostgresError::corrupt("config profile", &format!("{name}: {reason}"))
    };
    let target = match group {
        None => ProfileTarget::Fleet,
        Some(g) => ProfileTarget::Group(GroupName::new(g).map_err(|e| bad(&e))?),
    };
    Ok(ConfigProfile {
        name: ProfileName::new(name.as_str()).map_err(|e| bad(&e))?,
        description: row.try_get("description").map_err(db)?,
        target,
        priority: row.try_get("priority").map_err(db)?,
        document: document_from_json(&document).map_err(|e| bad(&e))?,
        created_at: Timestamp::from_millis(row.try_get("created_at").map_err(db)?),
        updated_at: Timestamp::from_millis(row.try_get("updated_at").map_err(db)?),
        version: u64::try_from(version).map_err(|e| bad(&e))?,
    })
}
