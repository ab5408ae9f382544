//! Configuration profiles in `config_profiles` and the durable twin recompute queue
//! `twin_recompute` (migration 0013).
//!
//! Every profile change runs in one write transaction with its audit record and puts the devices
//! it can affect on the queue in that same transaction: every device for a fleet profile, the
//! members of a static group, the devices a dynamic group's filter matches (the filter translated
//! by `filter_sql`, as for jobs). Device and membership changes queue their device through the
//! migration's triggers. [`recompute`] drains the queue on the writer connection; which profiles
//! apply to a device and the merge itself are `store::profiles`' logic.

use std::collections::BTreeSet;
use std::num::NonZeroU32;

use domain::twin::Layer;
use domain::{
    ConfigProfile, Device, DeviceId, Filter, GroupKind, GroupName, Mutation, NewProfile,
    ProfileName, ProfilePatch, ProfileTarget, Timestamp, TwinPolicy,
};
use sqlx::SqliteConnection;
use store::profiles::{
    Candidate, PROFILE_CREATE_ACTION, PROFILE_DELETE_ACTION, PROFILE_UPDATE_ACTION, ProfileQuery,
    Recomputed, applicable_layers, changes_layers, check_version, document_from_json,
    document_to_json, group_has_profiles, new_profile, plan_profile_update, plan_recompute,
    profile_not_found, profile_resource,
};
use store::{MAX_PAGE_SIZE, Page, StoreError, StoreResult};

use crate::SqliteStore;
use crate::audit_chain::{append_and_commit, entry};
use crate::filter_sql::{self, Arg, Sql};
use crate::rows::{corrupt, db, group_kind, to_i64, unique_or_db};
use crate::{devices, groups, twins};

/// The `config_profiles` columns [`profile_from_row`] reads, qualified by the alias `p`.
const PROFILE_COLUMNS: &str = "p.name, p.description, p.group_name, p.priority, p.document_json, \
     p.created_at, p.updated_at, p.version";

/// `config_profiles` columns in [`PROFILE_COLUMNS`] order.
type ProfileRow = (String, String, Option<String>, i64, String, i64, i64, i64);

/// A profile row followed by its group's `kind` and `filter` (`NULL` for a fleet profile).
type CandidateRow =
    (String, String, Option<String>, i64, String, i64, i64, i64, Option<String>, Option<String>);

/// Creates a profile at version 1 and queues the devices it targets.
pub(crate) async fn create(
    s: &SqliteStore,
    new: &NewProfile,
    m: &Mutation,
) -> StoreResult<ConfigProfile> {
    let profile = new_profile(new, m.at);
    let mut tx = s.begin_write().await?;
    check_target(&mut tx, &profile.target).await?;
    sqlx::query(
        "INSERT INTO config_profiles (name, description, group_name, priority, document_json, \
         created_at, updated_at, version) VALUES (?, ?, ?, ?, ?, ?, ?, 1)",
    )
    .bind(profile.name.as_str())
    .bind(&profile.description)
    .bind(profile.target.group().map(GroupName::as_str))
    .bind(profile.priority)
    .bind(document_to_json(&profile.document))
    .bind(m.at.millis())
    .bind(m.at.millis())
    .execute(&mut *tx)
    .await
    .map_err(unique_or_db("config_profile", &profile.name))?;
    queue_target(&mut tx, &profile.target, m.at).await?;
    let record = entry(
        m,
        PROFILE_CREATE_ACTION,
        profile_resource(&profile.name),
        None,
        Some(profile.audit_summary()),
    );
    append_and_commit(tx, &record).await?;
    Ok(profile)
}

/// Reads one profile.
pub(crate) async fn get(
    conn: &mut SqliteConnection,
    name: &ProfileName,
) -> StoreResult<Option<ConfigProfile>> {
    let row: Option<ProfileRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {PROFILE_COLUMNS} FROM config_profiles p WHERE p.name = ?"
    )))
    .bind(name.as_str())
    .fetch_optional(&mut *conn)
    .await
    .map_err(db)?;
    row.map(profile_from_row).transpose()
}

/// One page of profiles in name order, optionally only those with one target.
pub(crate) async fn list(
    conn: &mut SqliteConnection,
    q: &ProfileQuery,
) -> StoreResult<Page<ConfigProfile>> {
    let limit = q.limit.get().min(MAX_PAGE_SIZE);
    let target_cond = match &q.target {
        None => "",
        Some(ProfileTarget::Fleet) => "p.group_name IS NULL AND",
        Some(ProfileTarget::Group(_)) => "p.group_name = ? AND",
    };
    let mut query = sqlx::query_as::<_, ProfileRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {PROFILE_COLUMNS} FROM config_profiles p WHERE {target_cond} p.name > ? \
         ORDER BY p.name LIMIT ?"
    )));
    if let Some(ProfileTarget::Group(g)) = &q.target {
        query = query.bind(g.as_str());
    }
    let rows = query
        .bind(q.after.as_ref().map_or("", ProfileName::as_str))
        .bind(i64::from(limit) + 1)
        .fetch_all(&mut *conn)
        .await
        .map_err(db)?;
    let mut items = rows.into_iter().map(profile_from_row).collect::<StoreResult<Vec<_>>>()?;
    let has_more = items.len() > limit as usize;
    items.truncate(limit as usize);
    Ok(Page { items, has_more })
}

/// Applies a patch and queues the devices of the old and the new target; a patch that changes
/// nothing writes nothing, and one that changes only the description queues nothing.
pub(crate) async fn update(
    s: &SqliteStore,
    name: &ProfileName,
    patch: &ProfilePatch,
    m: &Mutation,
) -> StoreResult<ConfigProfile> {
    let mut tx = s.begin_write().await?;
    let old = get(&mut tx, name).await?.ok_or_else(|| profile_not_found(name))?;
    let Some(new) = plan_profile_update(&old, patch, m.at)? else { return Ok(old) };
    if new.target != old.target {
        check_target(&mut tx, &new.target).await?;
    }
    sqlx::query(
        "UPDATE config_profiles SET description = ?, group_name = ?, priority = ?, \
         document_json = ?, updated_at = ?, version = ? WHERE name = ?",
    )
    .bind(&new.description)
    .bind(new.target.group().map(GroupName::as_str))
    .bind(new.priority)
    .bind(document_to_json(&new.document))
    .bind(m.at.millis())
    .bind(to_i64("profile version", new.version)?)
    .bind(name.as_str())
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    if changes_layers(&old, &new) {
        queue_target(&mut tx, &old.target, m.at).await?;
        if new.target != old.target {
            queue_target(&mut tx, &new.target, m.at).await?;
        }
    }
    let record = entry(
        m,
        PROFILE_UPDATE_ACTION,
        profile_resource(name),
        Some(old.audit_summary()),
        Some(new.audit_summary()),
    );
    append_and_commit(tx, &record).await?;
    Ok(new)
}

/// Deletes a profile and queues the devices it targeted.
pub(crate) async fn delete(
    s: &SqliteStore,
    name: &ProfileName,
    expected_version: Option<u64>,
    m: &Mutation,
) -> StoreResult<()> {
    let mut tx = s.begin_write().await?;
    let old = get(&mut tx, name).await?.ok_or_else(|| profile_not_found(name))?;
    check_version(&old, expected_version)?;
    sqlx::query("DELETE FROM config_profiles WHERE name = ?")
        .bind(name.as_str())
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    queue_target(&mut tx, &old.target, m.at).await?;
    let record =
        entry(m, PROFILE_DELETE_ACTION, profile_resource(name), Some(old.audit_summary()), None);
    append_and_commit(tx, &record).await
}

/// The layers below `device`'s own (see [`store::Store::desired_layers`]).
pub(crate) async fn layers(
    conn: &mut SqliteConnection,
    device: &Device,
) -> StoreResult<Vec<Layer>> {
    let candidates = candidates(conn).await?;
    layers_from(conn, device, candidates).await
}

/// The names of the profiles attached to `group`, in name order.
pub(crate) async fn attached_to(
    conn: &mut SqliteConnection,
    group: &GroupName,
) -> StoreResult<Vec<ProfileName>> {
    let names: Vec<String> =
        sqlx::query_scalar("SELECT name FROM config_profiles WHERE group_name = ? ORDER BY name")
            .bind(group.as_str())
            .fetch_all(&mut *conn)
            .await
            .map_err(db)?;
    names
        .into_iter()
        .map(|n| {
            ProfileName::new(n.clone()).map_err(|e| corrupt("config_profiles", &n, e.to_string()))
        })
        .collect()
}

/// Refuses to delete `group` while profiles are attached to it.
pub(crate) async fn check_group_unused(
    conn: &mut SqliteConnection,
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
    conn: &mut SqliteConnection,
    filter: &Filter,
    at: Timestamp,
) -> StoreResult<()> {
    let mut sql = Sql {
        text: "INSERT OR IGNORE INTO twin_recompute (device_id, queued_at) \
               SELECT d.id, ? FROM devices d WHERE "
            .to_owned(),
        args: vec![Arg::Int(at.millis())],
    };
    filter_sql::push_condition(&mut sql, filter);
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.text));
    for arg in sql.args {
        query = match arg {
            Arg::Text(s) => query.bind(s),
            Arg::Int(i) => query.bind(i),
        };
    }
    query.execute(&mut *conn).await.map_err(db)?;
    Ok(())
}

/// Whether `id` is on the recompute queue.
pub(crate) async fn pending(conn: &mut SqliteConnection, id: &DeviceId) -> StoreResult<bool> {
    let hit: Option<i64> = sqlx::query_scalar("SELECT 1 FROM twin_recompute WHERE device_id = ?")
        .bind(id.as_str())
        .fetch_optional(&mut *conn)
        .await
        .map_err(db)?;
    Ok(hit.is_some())
}

/// How many devices are on the recompute queue.
pub(crate) async fn queue_len(conn: &mut SqliteConnection) -> StoreResult<u64> {
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM twin_recompute")
        .fetch_one(&mut *conn)
        .await
        .map_err(db)?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Takes up to `limit` devices off the queue, oldest first, and recomputes their effective
/// desired documents, all in one write transaction (see [`store::Store::recompute_twins`]).
pub(crate) async fn recompute(
    s: &SqliteStore,
    limit: NonZeroU32,
    policy: &TwinPolicy,
    at: Timestamp,
) -> StoreResult<Recomputed> {
    let mut tx = s.begin_write().await?;
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT device_id FROM twin_recompute ORDER BY queued_at, device_id LIMIT ?",
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
        sqlx::query("DELETE FROM twin_recompute WHERE device_id = ?")
            .bind(raw)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        let id = DeviceId::new(raw.as_str())
            .map_err(|e| corrupt("twin_recompute", raw, e.to_string()))?;
        // A device deleted since it was queued: nothing to recompute.
        let Some(device) = devices::get(&mut tx, &id).await? else { continue };
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
    tx.commit().await.map_err(db)?;
    Ok(done)
}

/// Every profile with its group's kind, in name order: what [`applicable_layers`] chooses from.
async fn candidates(conn: &mut SqliteConnection) -> StoreResult<Vec<Candidate>> {
    let rows: Vec<CandidateRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {PROFILE_COLUMNS}, g.kind, g.filter FROM config_profiles p \
         LEFT JOIN groups g ON g.name = p.group_name ORDER BY p.name"
    )))
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    rows.into_iter()
        .map(
            |(name, description, group, priority, doc, created, updated, version, kind, filter)| {
                let group_kind = match (&group, kind) {
                    (Some(g), Some(kind)) => Some(group_kind(g, &kind, filter)?),
                    _ => None,
                };
                let profile = profile_from_row((
                    name,
                    description,
                    group,
                    priority,
                    doc,
                    created,
                    updated,
                    version,
                ))?;
                Ok(Candidate { profile, group_kind })
            },
        )
        .collect()
}

/// The layers of `device` among `candidates`, given its static memberships as stored.
async fn layers_from(
    conn: &mut SqliteConnection,
    device: &Device,
    candidates: Vec<Candidate>,
) -> StoreResult<Vec<Layer>> {
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT gm.group_name FROM group_members gm \
         JOIN config_profiles p ON p.group_name = gm.group_name WHERE gm.device_id = ?",
    )
    .bind(device.id.as_str())
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    let static_groups = names
        .into_iter()
        .map(|n| GroupName::new(n.clone()).map_err(|e| corrupt("group_members", &n, e.to_string())))
        .collect::<StoreResult<BTreeSet<_>>>()?;
    Ok(applicable_layers(device, candidates, &static_groups))
}

/// Checks that a group target exists.
async fn check_target(conn: &mut SqliteConnection, target: &ProfileTarget) -> StoreResult<()> {
    match target {
        ProfileTarget::Fleet => Ok(()),
        ProfileTarget::Group(name) => match groups::get(conn, name).await? {
            Some(_) => Ok(()),
            None => Err(StoreError::NotFound { kind: "group", id: name.to_string() }),
        },
    }
}

/// Queues every device a profile with `target` reaches: the whole registry, a static group's
/// members, or the devices a dynamic group's filter matches. An unknown group reaches nobody.
async fn queue_target(
    conn: &mut SqliteConnection,
    target: &ProfileTarget,
    at: Timestamp,
) -> StoreResult<()> {
    match target {
        ProfileTarget::Fleet => {
            sqlx::query(
                "INSERT OR IGNORE INTO twin_recompute (device_id, queued_at) \
                 SELECT id, ? FROM devices",
            )
            .bind(at.millis())
            .execute(&mut *conn)
            .await
            .map_err(db)?;
        }
        ProfileTarget::Group(name) => match groups::get(conn, name).await?.map(|g| g.kind) {
            None => {}
            Some(GroupKind::Static) => {
                sqlx::query(
                    "INSERT OR IGNORE INTO twin_recompute (device_id, queued_at) \
                     SELECT device_id, ? FROM group_members WHERE group_name = ?",
                )
                .bind(at.millis())
                .bind(name.as_str())
                .execute(&mut *conn)
                .await
                .map_err(db)?;
            }
            Some(GroupKind::Dynamic(f)) => queue_filter(conn, &f, at).await?,
        },
    }
    Ok(())
}

/// Reads a profile row back.
fn profile_from_row(row: ProfileRow) -> StoreResult<ConfigProfile> {
    let (name, description, group, priority, document, created_at, updated_at, version) = row;
    let bad = |reason: String| corrupt("config_profiles", &name, reason);
    let target = match group {
        None => ProfileTarget::Fleet,
        Some(g) => ProfileTarget::Group(GroupName::new(g).map_err(|e| bad(e.to_string()))?),
    };
    Ok(ConfigProfile {
        name: ProfileName::new(name.as_str()).map_err(|e| bad(e.to_string()))?,
        description,
        target,
        priority: i32::try_from(priority).map_err(|e| bad(format!("priority: {e}")))?,
        document: document_from_json(&document).map_err(bad)?,
        created_at: Timestamp::from_millis(created_at),
        updated_at: Timestamp::from_millis(updated_at),
        version: u64::try_from(version).map_err(|e| bad(format!("version: {e}")))?,
    })
}
