//! Device replacement (RMA): [`store::Store::replace_device`] in one write transaction.
//!
//! The rules and the two devices' new registry entries come from [`ReplacementPlan`]; this module
//! reads what the plan needs, applies it, moves static group memberships, revokes the old
//! device's credentials and certificates, gives the successor the old device's desired
//! configuration and twin tags, and appends every audit record before it commits.

use domain::{
    DeviceCertificate, DeviceCredential, DeviceId, Mutation, NewAuditRecord, Replacement,
    ReplacementError, ReplacementPlan,
};
use serde_json::json;
use sqlx::SqliteConnection;
use store::StoreResult;

use crate::audit_chain::{AuditChain, entry};
use crate::devices::{self, resource};
use crate::rows::db;
use crate::{SqliteStore, certificates, credentials, twins};

/// Replaces `old` with `new`; see [`store::Store::replace_device`].
pub(crate) async fn replace(
    s: &SqliteStore,
    old: &DeviceId,
    new: &DeviceId,
    m: &Mutation,
) -> StoreResult<Replacement> {
    if old == new {
        return Err(ReplacementError::SameDevice(old.clone()).into());
    }
    let mut tx = s.begin_write().await?;
    let old_device = devices::current(&mut tx, old, None).await?;
    let existing = devices::get(&mut tx, new).await?;
    let plan = ReplacementPlan::new(&old_device, new, existing.as_ref(), m.at)?;
    let mut entries: Vec<NewAuditRecord> = Vec::new();

    match &plan.successor_before {
        None => {
            devices::insert(&mut tx, &plan.successor).await?;
            entries.push(entry(
                m,
                "device.create",
                resource(new),
                None,
                Some(plan.successor.audit_summary()),
            ));
        }
        Some(before) => {
            devices::rewrite(&mut tx, &plan.successor, plan.successor.tags != before.tags).await?;
            entries.push(entry(
                m,
                "device.update",
                resource(new),
                Some(before.audit_summary()),
                Some(plan.successor.audit_summary()),
            ));
        }
    }
    // The successor takes the old device's own desired configuration and twin tags.
    if let Some(after) = twins::replace(&mut tx, old, new, m.at).await? {
        entries.push(entry(m, store::TWIN_UPDATE_ACTION, resource(new), None, Some(after)));
    }
    let groups = move_group_memberships(&mut tx, old, new).await?;
    for (group, added) in &groups {
        if *added {
            let after = json!({ "added": [new.as_str()] });
            entries.push(entry(
                m,
                "group.members.add",
                format!("group/{group}"),
                None,
                Some(after),
            ));
        }
        let after = json!({ "removed": [old.as_str()] });
        entries.push(entry(m, "group.members.remove", format!("group/{group}"), None, Some(after)));
    }

    let credentials = revoke_credentials(&mut tx, old, m).await?;
    for (before, after) in &credentials {
        entries.push(entry(
            m,
            "device.credential.revoke",
            resource(old),
            Some(before.audit_summary()),
            Some(after.audit_summary()),
        ));
    }
    let certificates = revoke_certificates(&mut tx, old, m).await?;
    for (before, after) in &certificates {
        entries.push(entry(
            m,
            "device.certificate.revoke",
            resource(old),
            Some(before.audit_summary()),
            Some(after.audit_summary()),
        ));
    }

    let mut before = &plan.old;
    for step in &plan.retirement {
        devices::rewrite(&mut tx, step, false).await?;
        entries.push(entry(
            m,
            "device.update",
            resource(old),
            Some(before.audit_summary()),
            Some(step.audit_summary()),
        ));
        before = step;
    }

    let mut counts = plan.counts;
    counts.groups = groups.len();
    counts.credentials_revoked = credentials.len();
    counts.certificates_revoked = certificates.len();
    let replacement = Replacement {
        old: plan.old_after().clone(),
        successor: plan.successor.clone(),
        created: plan.successor_before.is_none(),
        counts,
    };
    entries.push(entry(
        m,
        "device.replace",
        resource(old),
        None,
        Some(replacement.audit_summary()),
    ));
    let mut chain = AuditChain::load(&mut tx).await?;
    chain.append_many(&mut tx, &entries).await?;
    tx.commit().await.map_err(db)?;
    Ok(replacement)
}

/// Adds `new` to every static group `old` is in (where it is not already) and takes `old` out of
/// them; returns those groups by name, each with whether `new` was added to it (it was not when
/// it was a member already).
async fn move_group_memberships(
    conn: &mut SqliteConnection,
    old: &DeviceId,
    new: &DeviceId,
) -> StoreResult<Vec<(String, bool)>> {
    let groups: Vec<(String, bool)> = sqlx::query_as(
        "SELECT m.group_name, NOT EXISTS (SELECT 1 FROM group_members n \
         WHERE n.group_name = m.group_name AND n.device_id = ?) \
         FROM group_members m WHERE m.device_id = ? ORDER BY m.group_name",
    )
    .bind(new.as_str())
    .bind(old.as_str())
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    sqlx::query(
        "INSERT INTO group_members (group_name, device_id) \
         SELECT group_name, ? FROM group_members WHERE device_id = ? \
         ON CONFLICT (group_name, device_id) DO NOTHING",
    )
    .bind(new.as_str())
    .bind(old.as_str())
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    sqlx::query("DELETE FROM group_members WHERE device_id = ?")
        .bind(old.as_str())
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    Ok(groups)
}

/// Revokes every credential of `device` not revoked yet; returns each as it was and as it is.
async fn revoke_credentials(
    conn: &mut SqliteConnection,
    device: &DeviceId,
    m: &Mutation,
) -> StoreResult<Vec<(DeviceCredential, DeviceCredential)>> {
    let mut live: Vec<DeviceCredential> = credentials::list(conn, device).await?;
    live.retain(|c| c.revoked_at.is_none());
    live.reverse(); // oldest first, the order they were issued in
    sqlx::query(
        "UPDATE device_credentials SET revoked_at = ? WHERE device_id = ? AND revoked_at IS NULL",
    )
    .bind(m.at.millis())
    .bind(device.as_str())
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    Ok(live
        .into_iter()
        .map(|c| {
            let revoked = DeviceCredential { revoked_at: Some(m.at), ..c.clone() };
            (c, revoked)
        })
        .collect())
}

/// Revokes every certificate of `device` not revoked yet; returns each as it was and as it is.
async fn revoke_certificates(
    conn: &mut SqliteConnection,
    device: &DeviceId,
    m: &Mutation,
) -> StoreResult<Vec<(DeviceCertificate, DeviceCertificate)>> {
    let mut live: Vec<DeviceCertificate> = certificates::list(conn, device).await?;
    live.retain(|c| c.revoked_at.is_none());
    live.reverse(); // oldest first, the order they were issued in
    sqlx::query(
        "UPDATE device_certificates SET revoked_at = ? WHERE device_id = ? AND revoked_at IS NULL",
    )
    .bind(m.at.millis())
    .bind(device.as_str())
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    Ok(live
        .into_iter()
        .map(|c| {
            let revoked = DeviceCertificate { revoked_at: Some(m.at), ..c.clone() };
            (c, revoked)
        })
        .collect())
}
