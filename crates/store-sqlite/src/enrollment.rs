//! Enrollment groups (`enrollment_groups`), their claim codes (`enrollment_claim_codes`), which
//! devices they enrolled (`device_enrollments`) and the credentials provisioning issued
//! (`provisioning_credentials`), from migration 0007.

use std::num::NonZeroU32;

use domain::{
    Attestation, Attributes, ClaimCode, ClaimCodeId, CredentialId, Device, DeviceCredential,
    DeviceIdTemplate, EnrollmentGroup, EnrollmentGroupName, EnrollmentGroupPatch, GroupName,
    LifecycleState, Mutation, NewEnrollmentGroup, RegistrationRefusal, Tags, Timestamp,
};
use sqlx::SqliteConnection;
use store::{
    MAX_PAGE_SIZE, MAX_PROVISIONING_CREDENTIALS, NewClaimCode, Page, Registered, Registration,
    RegistrationRefusalRecord, StoreError, StoreResult,
};

use crate::SqliteStore;
use crate::audit_chain::{append_and_commit, entry};
use crate::rows::{corrupt, db, to_i64, unique_or_db};
use crate::{devices, groups};

/// The columns [`from_row`] reads.
const COLUMNS: &str = "name, attestation, sealed_key, ca_pem, enabled, expires_at, \
                       device_id_template, tags_json, groups_json, attributes_json, created_at, \
                       updated_at, registrations";

/// `enrollment_groups` columns in [`COLUMNS`] order.
type Row = (
    String,
    String,
    Option<Vec<u8>>,
    Option<String>,
    bool,
    Option<i64>,
    Option<String>,
    String,
    String,
    String,
    i64,
    i64,
    i64,
);

/// The columns [`claim_code_from_row`] reads.
const CLAIM_COLUMNS: &str = "id, group_name, uses, max_uses, expires_at, created_at";

/// `enrollment_claim_codes` columns in [`CLAIM_COLUMNS`] order.
type ClaimRow = (String, String, i64, i64, Option<i64>, i64);

/// Reads a group row back through the domain's validating constructors.
fn from_row(row: Row) -> StoreResult<EnrollmentGroup> {
    let (
        name,
        attestation,
        sealed_key,
        ca_pem,
        enabled,
        expires_at,
        template,
        tags_json,
        groups_json,
        attributes_json,
        created_at,
        updated_at,
        registrations,
    ) = row;
    let bad = |reason: String| corrupt("enrollment_groups", &name, reason);
    let attestation = match (attestation.as_str(), sealed_key) {
        ("symmetric_key", Some(sealed_key)) => Attestation::SymmetricKey { sealed_key },
        ("x509", None) => Attestation::X509 { ca_pem },
        ("claim_code", None) => Attestation::ClaimCode,
        (other, _) => return Err(bad(format!("attestation {other:?} with the wrong columns"))),
    };
    let tags: serde_json::Value =
        serde_json::from_str(&tags_json).map_err(|e| bad(format!("tags: {e}")))?;
    let group_names: Vec<String> =
        serde_json::from_str(&groups_json).map_err(|e| bad(format!("groups: {e}")))?;
    let attributes: serde_json::Value =
        serde_json::from_str(&attributes_json).map_err(|e| bad(format!("attributes: {e}")))?;
    Ok(EnrollmentGroup {
        name: EnrollmentGroupName::new(name.as_str()).map_err(|e| bad(e.to_string()))?,
        attestation,
        enabled,
        expires_at: expires_at.map(Timestamp::from_millis),
        device_id_template: template
            .map(DeviceIdTemplate::new)
            .transpose()
            .map_err(|e| bad(e.to_string()))?,
        tags: Tags::from_json(&tags).map_err(|e| bad(e.to_string()))?,
        groups: group_names
            .into_iter()
            .map(GroupName::new)
            .collect::<Result<_, _>>()
            .map_err(|e| bad(e.to_string()))?,
        attributes: Attributes::from_stored(attributes),
        created_at: Timestamp::from_millis(created_at),
        updated_at: Timestamp::from_millis(updated_at),
        registrations: u64::try_from(registrations)
            .map_err(|_| bad(format!("registrations {registrations} is negative")))?,
    })
}

fn claim_code_from_row(row: ClaimRow) -> StoreResult<ClaimCode> {
    let (id, group, uses, max_uses, expires_at, created_at) = row;
    let bad = |reason: String| corrupt("enrollment_claim_codes", &id, reason);
    Ok(ClaimCode {
        id: ClaimCodeId::new(id.as_str()).map_err(|e| bad(e.to_string()))?,
        group: EnrollmentGroupName::new(group).map_err(|e| bad(e.to_string()))?,
        uses: u32::try_from(uses).map_err(|_| bad(format!("uses {uses}")))?,
        max_uses: u32::try_from(max_uses).map_err(|_| bad(format!("max_uses {max_uses}")))?,
        expires_at: expires_at.map(Timestamp::from_millis),
        created_at: Timestamp::from_millis(created_at),
    })
}

/// The columns of a group that the attestation decides: (kind, sealed key, CA PEM).
fn attestation_columns(a: &Attestation) -> (&'static str, Option<&[u8]>, Option<&str>) {
    match a {
        Attestation::SymmetricKey { sealed_key } => ("symmetric_key", Some(sealed_key), None),
        Attestation::X509 { ca_pem } => ("x509", None, ca_pem.as_deref()),
        Attestation::ClaimCode => ("claim_code", None, None),
    }
}

fn groups_json(groups: &[GroupName]) -> String {
    serde_json::Value::from(groups.iter().map(GroupName::as_str).collect::<Vec<_>>()).to_string()
}

/// Checks that every group in `names` exists and is static.
async fn check_static_groups(conn: &mut SqliteConnection, names: &[GroupName]) -> StoreResult<()> {
    for name in names {
        let group = groups::get(conn, name)
            .await?
            .ok_or_else(|| StoreError::NotFound { kind: "group", id: name.to_string() })?;
        if !matches!(group.kind, domain::GroupKind::Static) {
            return Err(StoreError::Conflict(format!(
                "group {name} is dynamic: enrollment adds devices to static groups only"
            )));
        }
    }
    Ok(())
}

/// Creates an enrollment group.
pub(crate) async fn create(
    s: &SqliteStore,
    new: &NewEnrollmentGroup,
    m: &Mutation,
) -> StoreResult<EnrollmentGroup> {
    let group = EnrollmentGroup {
        name: new.name.clone(),
        attestation: new.attestation.clone(),
        enabled: new.enabled,
        expires_at: new.expires_at,
        device_id_template: new.device_id_template.clone(),
        tags: new.tags.clone(),
        groups: new.groups.clone(),
        attributes: new.attributes.clone(),
        created_at: m.at,
        updated_at: m.at,
        registrations: 0,
    };
    let mut tx = s.begin_write().await?;
    check_static_groups(&mut tx, &group.groups).await?;
    let (kind, sealed_key, ca_pem) = attestation_columns(&group.attestation);
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO enrollment_groups ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)"
    )))
    .bind(group.name.as_str())
    .bind(kind)
    .bind(sealed_key)
    .bind(ca_pem)
    .bind(group.enabled)
    .bind(group.expires_at.map(Timestamp::millis))
    .bind(group.device_id_template.as_ref().map(DeviceIdTemplate::as_str))
    .bind(group.tags.to_json().to_string())
    .bind(groups_json(&group.groups))
    .bind(group.attributes.as_json().to_string())
    .bind(group.created_at.millis())
    .bind(group.updated_at.millis())
    .execute(&mut *tx)
    .await
    .map_err(unique_or_db("enrollment_group", &group.name))?;
    append_and_commit(
        tx,
        &entry(
            m,
            "enrollment_group.create",
            resource(&group.name),
            None,
            Some(group.audit_summary()),
        ),
    )
    .await?;
    Ok(group)
}

/// Reads one group.
pub(crate) async fn get(
    conn: &mut SqliteConnection,
    name: &EnrollmentGroupName,
) -> StoreResult<Option<EnrollmentGroup>> {
    let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM enrollment_groups WHERE name = ?"
    )))
    .bind(name.as_str())
    .fetch_optional(&mut *conn)
    .await
    .map_err(db)?;
    row.map(from_row).transpose()
}

/// One page of groups in name order.
pub(crate) async fn list(
    conn: &mut SqliteConnection,
    after: Option<&EnrollmentGroupName>,
    limit: NonZeroU32,
) -> StoreResult<Page<EnrollmentGroup>> {
    let limit = limit.get().min(MAX_PAGE_SIZE);
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM enrollment_groups WHERE name > ? ORDER BY name LIMIT ?"
    )))
    .bind(after.map_or("", EnrollmentGroupName::as_str))
    .bind(i64::from(limit) + 1)
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    let mut items = rows.into_iter().map(from_row).collect::<StoreResult<Vec<_>>>()?;
    let has_more = items.len() > limit as usize;
    items.truncate(limit as usize);
    Ok(Page { items, has_more })
}

/// Applies a patch; one that changes nothing writes nothing.
pub(crate) async fn update(
    s: &SqliteStore,
    name: &EnrollmentGroupName,
    patch: &EnrollmentGroupPatch,
    m: &Mutation,
) -> StoreResult<EnrollmentGroup> {
    let mut tx = s.begin_write().await?;
    let old = get(&mut tx, name).await?.ok_or_else(|| not_found(name))?;
    let mut new = old.clone();
    patch.apply(&mut new);
    if new == old {
        return Ok(old);
    }
    if let Some(groups) = &patch.groups {
        check_static_groups(&mut tx, groups).await?;
    }
    new.updated_at = m.at;
    sqlx::query(
        "UPDATE enrollment_groups SET enabled = ?, expires_at = ?, device_id_template = ?, \
         tags_json = ?, groups_json = ?, attributes_json = ?, updated_at = ? WHERE name = ?",
    )
    .bind(new.enabled)
    .bind(new.expires_at.map(Timestamp::millis))
    .bind(new.device_id_template.as_ref().map(DeviceIdTemplate::as_str))
    .bind(new.tags.to_json().to_string())
    .bind(groups_json(&new.groups))
    .bind(new.attributes.as_json().to_string())
    .bind(new.updated_at.millis())
    .bind(name.as_str())
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    append_and_commit(
        tx,
        &entry(
            m,
            "enrollment_group.update",
            resource(name),
            Some(old.audit_summary()),
            Some(new.audit_summary()),
        ),
    )
    .await?;
    Ok(new)
}

/// Deletes a group; its claim codes and enrollment records go with it.
pub(crate) async fn delete(
    s: &SqliteStore,
    name: &EnrollmentGroupName,
    m: &Mutation,
) -> StoreResult<()> {
    let mut tx = s.begin_write().await?;
    let old = get(&mut tx, name).await?.ok_or_else(|| not_found(name))?;
    sqlx::query("DELETE FROM enrollment_groups WHERE name = ?")
        .bind(name.as_str())
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    append_and_commit(
        tx,
        &entry(m, "enrollment_group.delete", resource(name), Some(old.audit_summary()), None),
    )
    .await
}

/// Audits that an operator derived a device key from the group's secret.
pub(crate) async fn record_key_derivation(
    s: &SqliteStore,
    name: &EnrollmentGroupName,
    devices: &[domain::DeviceId],
    m: &Mutation,
) -> StoreResult<()> {
    let mut tx = s.begin_write().await?;
    get(&mut tx, name).await?.ok_or_else(|| not_found(name))?;
    let Some(after) = store::key_derivation_audit(devices) else { return Ok(()) };
    append_and_commit(
        tx,
        &entry(m, "enrollment_group.derive_key", resource(name), None, Some(after)),
    )
    .await
}

/// Stores a batch of claim codes for a claim code group.
pub(crate) async fn create_claim_codes(
    s: &SqliteStore,
    name: &EnrollmentGroupName,
    codes: &[NewClaimCode],
    max_uses: u32,
    expires_at: Option<Timestamp>,
    m: &Mutation,
) -> StoreResult<Vec<ClaimCode>> {
    let mut tx = s.begin_write().await?;
    let group = get(&mut tx, name).await?.ok_or_else(|| not_found(name))?;
    if !matches!(group.attestation, Attestation::ClaimCode) {
        return Err(not_claim_code_group(name));
    }
    let mut created = Vec::with_capacity(codes.len());
    for code in codes {
        sqlx::query(
            "INSERT INTO enrollment_claim_codes \
             (id, group_name, hash, uses, max_uses, expires_at, created_at) \
             VALUES (?, ?, ?, 0, ?, ?, ?)",
        )
        .bind(code.id.as_str())
        .bind(name.as_str())
        .bind(&code.hash.as_bytes()[..])
        .bind(i64::from(max_uses))
        .bind(expires_at.map(Timestamp::millis))
        .bind(m.at.millis())
        .execute(&mut *tx)
        .await
        .map_err(unique_or_db("claim_code", &code.id))?;
        created.push(ClaimCode {
            id: code.id.clone(),
            group: name.clone(),
            uses: 0,
            max_uses,
            expires_at,
            created_at: m.at,
        });
    }
    let after = store::claim_codes_audit_summary(&created, max_uses, expires_at);
    append_and_commit(
        tx,
        &entry(m, "enrollment_group.claim_codes.create", resource(name), None, Some(after)),
    )
    .await?;
    Ok(created)
}

/// A group's claim codes, oldest first.
pub(crate) async fn claim_codes(
    conn: &mut SqliteConnection,
    name: &EnrollmentGroupName,
) -> StoreResult<Vec<ClaimCode>> {
    let rows: Vec<ClaimRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {CLAIM_COLUMNS} FROM enrollment_claim_codes WHERE group_name = ? \
         ORDER BY created_at, id"
    )))
    .bind(name.as_str())
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    rows.into_iter().map(claim_code_from_row).collect()
}

/// `device_enrollments` of one device: group, registration id, claim code id, count.
type EnrollmentRow = (String, String, Option<String>, i64);

/// Registers a device (see [`Registration`] for the rules), in one write transaction.
pub(crate) async fn register(
    s: &SqliteStore,
    r: &Registration,
    m: &Mutation,
) -> StoreResult<Result<Registered, RegistrationRefusal>> {
    let mut tx = s.begin_write().await?;
    let Some(group) = get(&mut tx, &r.group).await? else {
        return Ok(Err(RegistrationRefusal::UnknownGroup));
    };
    // The claim code, when the group uses them: (id, expires_at).
    let code: Option<(String, Option<i64>)> = match (&group.attestation, &r.claim_code) {
        (Attestation::ClaimCode, Some(hash)) => {
            let row = sqlx::query_as(
                "SELECT id, expires_at FROM enrollment_claim_codes \
                 WHERE hash = ? AND group_name = ?",
            )
            .bind(&hash.as_bytes()[..])
            .bind(r.group.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
            match row {
                Some(row) => Some(row),
                None => return Ok(Err(RegistrationRefusal::InvalidClaimCode)),
            }
        }
        (Attestation::ClaimCode, None) => return Ok(Err(RegistrationRefusal::InvalidClaimCode)),
        _ => None,
    };
    // The proof (the claim code) is checked before the group's state, so that a disabled or
    // expired group does not tell who does not hold a code that it exists.
    if !group.enabled {
        return Ok(Err(RegistrationRefusal::GroupDisabled));
    }
    if group.expires_at.is_some_and(|e| m.at >= e) {
        return Ok(Err(RegistrationRefusal::GroupExpired));
    }
    let enrollment: Option<EnrollmentRow> = sqlx::query_as(
        "SELECT group_name, registration_id, claim_code_id, count FROM device_enrollments \
         WHERE device_id = ?",
    )
    .bind(r.device_id.as_str())
    .fetch_optional(&mut *tx)
    .await
    .map_err(db)?;
    let existing = devices::get(&mut tx, &r.device_id).await?;
    let (device, created, adopted, issued) = match (existing, enrollment) {
        (Some(device), Some((group_name, registration_id, claim_code_id, count)))
            if group_name == r.group.as_str()
                && registration_id == r.registration_id.as_str()
                && claim_code_id.as_deref() == code.as_ref().map(|c| c.0.as_str()) =>
        {
            sqlx::query(
                "UPDATE device_enrollments SET count = count + 1, last_at = ? WHERE device_id = ?",
            )
            .bind(m.at.millis())
            .bind(device.id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db)?;
            (device, false, false, count + 1)
        }
        // A device made beforehand (imported, or a replacement's successor) that no group
        // enrolled yet is adopted, by a proof that binds its id (a derived key, a certificate):
        // a claim code names no device, so its holder could take any. Any other existing
        // device is a conflict.
        (Some(device), None) if device.state == LifecycleState::Registered && code.is_none() => {
            let adopted = store::adopted_device(&device, &group, m.at)?;
            match enroll(&mut tx, r, &group, code.as_ref(), &adopted, Some(&device), m).await? {
                Ok(()) => (adopted, false, true, 1),
                Err(refusal) => return Ok(Err(refusal)),
            }
        }
        (Some(_), _) => return Ok(Err(RegistrationRefusal::DeviceConflict)),
        (None, _) => {
            let device = store::enrolled_device(&r.device_id, &group, m.at);
            match enroll(&mut tx, r, &group, code.as_ref(), &device, None, m).await? {
                Ok(()) => (device, true, false, 1),
                Err(refusal) => return Ok(Err(refusal)),
            }
        }
    };

    let credential = DeviceCredential {
        id: r.credential.id.clone(),
        device_id: device.id.clone(),
        hash: r.credential.hash,
        created_at: m.at,
        expires_at: r.credential.expires_at,
        revoked_at: None,
    };
    sqlx::query(
        "INSERT INTO device_credentials (id, device_id, hash, created_at, expires_at, revoked_at) \
         VALUES (?, ?, ?, ?, ?, NULL)",
    )
    .bind(credential.id.as_str())
    .bind(credential.device_id.as_str())
    .bind(&credential.hash.as_bytes()[..])
    .bind(credential.created_at.millis())
    .bind(credential.expires_at.map(Timestamp::millis))
    .execute(&mut *tx)
    .await
    .map_err(unique_or_db("credential", &credential.id))?;
    sqlx::query(
        "INSERT INTO provisioning_credentials (credential_id, device_id, issued) VALUES (?, ?, ?)",
    )
    .bind(credential.id.as_str())
    .bind(device.id.as_str())
    .bind(issued)
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    let stale: Vec<String> = sqlx::query_scalar(
        "SELECT p.credential_id FROM provisioning_credentials p \
         JOIN device_credentials c ON c.id = p.credential_id \
         WHERE p.device_id = ? AND c.revoked_at IS NULL \
         ORDER BY p.issued DESC LIMIT -1 OFFSET ?",
    )
    .bind(device.id.as_str())
    .bind(to_i64("provisioning credentials", MAX_PROVISIONING_CREDENTIALS as u64)?)
    .fetch_all(&mut *tx)
    .await
    .map_err(db)?;
    let mut revoked_credentials = Vec::with_capacity(stale.len());
    for id in stale {
        sqlx::query("UPDATE device_credentials SET revoked_at = ? WHERE id = ?")
            .bind(m.at.millis())
            .bind(&id)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        revoked_credentials.push(
            CredentialId::new(id.as_str())
                .map_err(|e| corrupt("provisioning_credentials", &id, e.to_string()))?,
        );
    }
    let registered = Registered { device, created, adopted, credential, revoked_credentials };
    let record = entry(
        m,
        "device.register",
        format!("device/{}", registered.device.id),
        None,
        Some(registered.audit_summary(r)),
    );
    append_and_commit(tx, &record).await?;
    Ok(Ok(registered))
}

/// The first enrollment of `device` through `group`: one claim code use (refused when the code
/// is expired or used up), the device inserted (`before` is `None`) or rewritten over `before`,
/// its static groups, the enrollment record and the group's count.
async fn enroll(
    tx: &mut SqliteConnection,
    r: &Registration,
    group: &EnrollmentGroup,
    code: Option<&(String, Option<i64>)>,
    device: &Device,
    before: Option<&Device>,
    m: &Mutation,
) -> StoreResult<Result<(), RegistrationRefusal>> {
    if let Some((id, expires_at)) = code {
        if expires_at.is_some_and(|e| m.at.millis() >= e) {
            return Ok(Err(RegistrationRefusal::ClaimCodeExpired));
        }
        let used = sqlx::query(
            "UPDATE enrollment_claim_codes SET uses = uses + 1 WHERE id = ? AND uses < max_uses",
        )
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        if used.rows_affected() != 1 {
            return Ok(Err(RegistrationRefusal::ClaimCodeExhausted));
        }
    }
    match before {
        None => devices::insert(&mut *tx, device).await?,
        Some(before) => devices::rewrite(&mut *tx, device, before.tags != device.tags).await?,
    }
    for g in &group.groups {
        // A static group deleted since the enrollment group named it is skipped.
        sqlx::query(
            "INSERT INTO group_members (group_name, device_id) \
             SELECT name, ? FROM groups WHERE name = ? AND kind = 'static' \
             ON CONFLICT DO NOTHING",
        )
        .bind(device.id.as_str())
        .bind(g.as_str())
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    }
    sqlx::query(
        "INSERT INTO device_enrollments \
         (device_id, group_name, registration_id, claim_code_id, first_at, last_at, count) \
         VALUES (?, ?, ?, ?, ?, ?, 1)",
    )
    .bind(device.id.as_str())
    .bind(r.group.as_str())
    .bind(r.registration_id.as_str())
    .bind(code.map(|c| c.0.as_str()))
    .bind(m.at.millis())
    .bind(m.at.millis())
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    sqlx::query("UPDATE enrollment_groups SET registrations = registrations + 1 WHERE name = ?")
        .bind(r.group.as_str())
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    Ok(Ok(()))
}

/// Audits a refused registration attempt.
pub(crate) async fn record_refusal(
    s: &SqliteStore,
    refusal: &RegistrationRefusalRecord,
    m: &Mutation,
) -> StoreResult<()> {
    let tx = s.begin_write().await?;
    let record = entry(
        m,
        "enrollment.register.refused",
        refusal.resource(),
        None,
        Some(refusal.audit_summary()),
    );
    append_and_commit(tx, &record).await
}

/// The audit resource of an enrollment group.
fn resource(name: &EnrollmentGroupName) -> String {
    format!("enrollment_group/{name}")
}

fn not_found(name: &EnrollmentGroupName) -> StoreError {
    StoreError::NotFound { kind: "enrollment_group", id: name.to_string() }
}

fn not_claim_code_group(name: &EnrollmentGroupName) -> StoreError {
    StoreError::Conflict(format!("enrollment group {name} does not use claim codes"))
}
