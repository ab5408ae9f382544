//! Enrollment groups (`enrollment_groups`), their claim codes (`enrollment_claim_codes`), which
//! devices they enrolled (`device_enrollments`) and the credentials provisioning issued
//! (`provisioning_credentials`), from migration 0007.

use std::num::NonZeroU32;

use domain::{
    Attestation, Attributes, ClaimCode, ClaimCodeId, CredentialId, Device, DeviceCredential,
    DeviceId, DeviceIdTemplate, EnrollmentGroup, EnrollmentGroupName, EnrollmentGroupPatch,
    GroupName, LifecycleState, Mutation, NewEnrollmentGroup, RegistrationRefusal, Tags, Timestamp,
};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgExecutor, PgPool, Row as _};
use store::{
    MAX_PAGE_SIZE, MAX_PROVISIONING_CREDENTIALS, NewClaimCode, Page, Registered, Registration,
    RegistrationRefusalRecord, StoreError, StoreResult, claim_codes_audit_summary,
};

use crate::audit::{self, begin_write};
use crate::devices;
use crate::error::{PostgresError, db};

/// The columns [`from_row`] reads, as a literal for `concat!`.
macro_rules! columns {
    () => {
        "name, attestation, sealed_key, ca_pem, enabled, expires_at, device_id_template, tags, \
         groups, attributes, created_at, updated_at, registrations"
    };
}

/// The columns [`claim_code_from_row`] reads, as a literal for `concat!`.
macro_rules! claim_columns {
    () => {
        "id, group_name, uses, max_uses, expires_at, created_at"
    };
}

/// Decodes a row selected with [`columns!`] through the domain's validating constructors.
fn from_row(row: &PgRow) -> StoreResult<EnrollmentGroup> {
    let corrupt = |e: &dyn std::fmt::Display| PostgresError::corrupt("enrollment group", e);
    let name: String = row.try_get("name").map_err(db)?;
    let kind: String = row.try_get("attestation").map_err(db)?;
    let sealed_key: Option<Vec<u8>> = row.try_get("sealed_key").map_err(db)?;
    let ca_pem: Option<String> = row.try_get("ca_pem").map_err(db)?;
    let attestation = match (kind.as_str(), sealed_key) {
        ("symmetric_key", Some(sealed_key)) => Attestation::SymmetricKey { sealed_key },
        ("x509", None) => Attestation::X509 { ca_pem },
        ("claim_code", None) => Attestation::ClaimCode,
        (other, _) => {
            return Err(corrupt(&format!("attestation {other:?} with the wrong columns")));
        }
    };
    let tags: String = row.try_get("tags").map_err(db)?;
    let tags: serde_json::Value = serde_json::from_str(&tags).map_err(|e| corrupt(&e))?;
    let groups: String = row.try_get("groups").map_err(db)?;
    let groups: Vec<String> = serde_json::from_str(&groups).map_err(|e| corrupt(&e))?;
    let attributes: String = row.try_get("attributes").map_err(db)?;
    let attributes: serde_json::Value =
        serde_json::from_str(&attributes).map_err(|e| corrupt(&e))?;
    let template: Option<String> = row.try_get("device_id_template").map_err(db)?;
    let expires_at: Option<i64> = row.try_get("expires_at").map_err(db)?;
    let registrations: i64 = row.try_get("registrations").map_err(db)?;
    Ok(EnrollmentGroup {
        name: EnrollmentGroupName::new(name).map_err(|e| corrupt(&e))?,
        attestation,
        enabled: row.try_get("enabled").map_err(db)?,
        expires_at: expires_at.map(Timestamp::from_millis),
        device_id_template: template
            .map(DeviceIdTemplate::new)
            .transpose()
            .map_err(|e| corrupt(&e))?,
        tags: Tags::from_json(&tags).map_err(|e| corrupt(&e))?,
        groups: groups
            .into_iter()
            .map(GroupName::new)
            .collect::<Result<_, _>>()
            .map_err(|e| corrupt(&e))?,
        attributes: Attributes::from_stored(attributes),
        created_at: Timestamp::from_millis(row.try_get("created_at").map_err(db)?),
        updated_at: Timestamp::from_millis(row.try_get("updated_at").map_err(db)?),
        registrations: u64::try_from(registrations).map_err(|e| corrupt(&e))?,
    })
}

fn claim_code_from_row(row: &PgRow) -> StoreResult<ClaimCode> {
    let corrupt = |e: &dyn std::fmt::Display| PostgresError::corrupt("claim code", e);
    let id: String = row.try_get("id").map_err(db)?;
    let group: String = row.try_get("group_name").map_err(db)?;
    let uses: i64 = row.try_get("uses").map_err(db)?;
    let max_uses: i64 = row.try_get("max_uses").map_err(db)?;
    let expires_at: Option<i64> = row.try_get("expires_at").map_err(db)?;
    Ok(ClaimCode {
        id: ClaimCodeId::new(id).map_err(|e| corrupt(&e))?,
        group: EnrollmentGroupName::new(group).map_err(|e| corrupt(&e))?,
        uses: u32::try_from(uses).map_err(|e| corrupt(&e))?,
        max_uses: u32::try_from(max_uses).map_err(|e| corrupt(&e))?,
        expires_at: expires_at.map(Timestamp::from_millis),
        created_at: Timestamp::from_millis(row.try_get("created_at").map_err(db)?),
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
async fn check_static_groups(conn: &mut PgConnection, names: &[GroupName]) -> StoreResult<()> {
    for name in names {
        let kind: Option<String> =
            sqlx::query_scalar("SELECT kind FROM device_groups WHERE name = $1")
                .bind(name.as_str())
                .fetch_optional(&mut *conn)
                .await
                .map_err(db)?;
        match kind.as_deref() {
            None => return Err(StoreError::NotFound { kind: "group", id: name.to_string() }),
            Some("static") => {}
            Some(_) => {
                return Err(StoreError::Conflict(format!(
                    "group {name} is dynamic: enrollment adds devices to static groups only"
                )));
            }
        }
    }
    Ok(())
}

/// Creates an enrollment group.
pub(crate) async fn create(
    pool: &PgPool,
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
    let mut tx = begin_write(pool).await?;
    check_static_groups(&mut tx, &group.groups).await?;
    let (kind, sealed_key, ca_pem) = attestation_columns(&group.attestation);
    let inserted = sqlx::query(concat!(
        "INSERT INTO enrollment_groups (",
        columns!(),
        ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 0) ON CONFLICT DO NOTHING"
    ))
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
    .map_err(db)?
    .rows_affected();
    if inserted != 1 {
        return Err(StoreError::AlreadyExists {
            kind: "enrollment_group",
            id: group.name.to_string(),
        });
    }
    let record = audit::record(
        m,
        "enrollment_group.create",
        resource(&group.name),
        None,
        Some(group.audit_summary()),
    );
    audit::append_and_commit(tx, &record).await?;
    Ok(group)
}

/// Reads one group, from the pool or inside a transaction.
pub(crate) async fn get<'e>(
    ex: impl PgExecutor<'e>,
    name: &EnrollmentGroupName,
) -> StoreResult<Option<EnrollmentGroup>> {
    let row =
        sqlx::query(concat!("SELECT ", columns!(), " FROM enrollment_groups WHERE name = $1"))
            .bind(name.as_str())
            .fetch_optional(ex)
            .await
            .map_err(db)?;
    row.as_ref().map(from_row).transpose()
}

/// Reads one group inside a write transaction, locking its row.
async fn get_for_update(
    conn: &mut PgConnection,
    name: &EnrollmentGroupName,
) -> StoreResult<Option<EnrollmentGroup>> {
    let row = sqlx::query(concat!(
        "SELECT ",
        columns!(),
        " FROM enrollment_groups WHERE name = $1 FOR UPDATE"
    ))
    .bind(name.as_str())
    .fetch_optional(&mut *conn)
    .await
    .map_err(db)?;
    row.as_ref().map(from_row).transpose()
}

/// One page of groups ordered by name.
pub(crate) async fn list(
    pool: &PgPool,
    after: Option<&EnrollmentGroupName>,
    limit: NonZeroU32,
) -> StoreResult<Page<EnrollmentGroup>> {
    let limit = limit.get().min(MAX_PAGE_SIZE);
    let rows = sqlx::query(concat!(
        "SELECT ",
        columns!(),
        " FROM enrollment_groups WHERE ($1::text IS NULL OR name > $1) ORDER BY name LIMIT $2"
    ))
    .bind(after.map(EnrollmentGroupName::as_str))
    .bind(i64::from(limit) + 1)
    .fetch_all(pool)
    .await
    .map_err(db)?;
    let mut items = rows.iter().map(from_row).collect::<StoreResult<Vec<_>>>()?;
    let has_more = items.len() > limit as usize;
    items.truncate(limit as usize);
    Ok(Page { items, has_more })
}

/// Applies a patch; one that changes nothing writes nothing.
pub(crate) async fn update(
    pool: &PgPool,
    name: &EnrollmentGroupName,
    patch: &EnrollmentGroupPatch,
    m: &Mutation,
) -> StoreResult<EnrollmentGroup> {
    let mut tx = begin_write(pool).await?;
    let old = get_for_update(&mut tx, name).await?.ok_or_else(|| not_found(name))?;
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
        "UPDATE enrollment_groups SET enabled = $2, expires_at = $3, device_id_template = $4,
             tags = $5, groups = $6, attributes = $7, updated_at = $8
         WHERE name = $1",
    )
    .bind(name.as_str())
    .bind(new.enabled)
    .bind(new.expires_at.map(Timestamp::millis))
    .bind(new.device_id_template.as_ref().map(DeviceIdTemplate::as_str))
    .bind(new.tags.to_json().to_string())
    .bind(groups_json(&new.groups))
    .bind(new.attributes.as_json().to_string())
    .bind(new.updated_at.millis())
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    let record = audit::record(
        m,
        "enrollment_group.update",
        resource(name),
        Some(old.audit_summary()),
        Some(new.audit_summary()),
    );
    audit::append_and_commit(tx, &record).await?;
    Ok(new)
}

/// Deletes a group; its claim codes and enrollment records go with it.
pub(crate) async fn delete(
    pool: &PgPool,
    name: &EnrollmentGroupName,
    m: &Mutation,
) -> StoreResult<()> {
    let mut tx = begin_write(pool).await?;
    let old = get_for_update(&mut tx, name).await?.ok_or_else(|| not_found(name))?;
    sqlx::query("DELETE FROM enrollment_groups WHERE name = $1")
        .bind(name.as_str())
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    let record = audit::record(
        m,
        "enrollment_group.delete",
        resource(name),
        Some(old.audit_summary()),
        None,
    );
    audit::append_and_commit(tx, &record).await
}

/// Audits that an operator derived a device key from the group's secret.
pub(crate) async fn record_key_derivation(
    pool: &PgPool,
    name: &EnrollmentGroupName,
    devices: &[DeviceId],
    m: &Mutation,
) -> StoreResult<()> {
    let mut tx = begin_write(pool).await?;
    get(&mut *tx, name).await?.ok_or_else(|| not_found(name))?;
    let Some(after) = store::key_derivation_audit(devices) else { return Ok(()) };
    let record = audit::record(m, "enrollment_group.derive_key", resource(name), None, Some(after));
    audit::append_and_commit(tx, &record).await
}

/// Stores a batch of claim codes for a claim code group.
pub(crate) async fn create_claim_codes(
    pool: &PgPool,
    name: &EnrollmentGroupName,
    codes: &[NewClaimCode],
    max_uses: u32,
    expires_at: Option<Timestamp>,
    m: &Mutation,
) -> StoreResult<Vec<ClaimCode>> {
    let mut tx = begin_write(pool).await?;
    let group = get_for_update(&mut tx, name).await?.ok_or_else(|| not_found(name))?;
    if !matches!(group.attestation, Attestation::ClaimCode) {
        return Err(StoreError::Conflict(format!(
            "enrollment group {name} does not use claim codes"
        )));
    }
    let mut created = Vec::with_capacity(codes.len());
    for code in codes {
        let inserted = sqlx::query(
            "INSERT INTO enrollment_claim_codes
                 (id, group_name, hash, uses, max_uses, expires_at, created_at)
             VALUES ($1, $2, $3, 0, $4, $5, $6)
             ON CONFLICT DO NOTHING",
        )
        .bind(code.id.as_str())
        .bind(name.as_str())
        .bind(&code.hash.as_bytes()[..])
        .bind(i64::from(max_uses))
        .bind(expires_at.map(Timestamp::millis))
        .bind(m.at.millis())
        .execute(&mut *tx)
        .await
        .map_err(db)?
        .rows_affected();
        if inserted != 1 {
            return Err(StoreError::AlreadyExists { kind: "claim_code", id: code.id.to_string() });
        }
        created.push(ClaimCode {
            id: code.id.clone(),
            group: name.clone(),
            uses: 0,
            max_uses,
            expires_at,
            created_at: m.at,
        });
    }
    let after = claim_codes_audit_summary(&created, max_uses, expires_at);
    let record =
        audit::record(m, "enrollment_group.claim_codes.create", resource(name), None, Some(after));
    audit::append_and_commit(tx, &record).await?;
    Ok(created)
}

/// A group's claim codes, oldest first.
pub(crate) async fn claim_codes(
    pool: &PgPool,
    name: &EnrollmentGroupName,
) -> StoreResult<Vec<ClaimCode>> {
    let rows = sqlx::query(concat!(
        "SELECT ",
        claim_columns!(),
        " FROM enrollment_claim_codes WHERE group_name = $1 ORDER BY created_at, id"
    ))
    .bind(name.as_str())
    .fetch_all(pool)
    .await
    .map_err(db)?;
    rows.iter().map(claim_code_from_row).collect()
}

/// Registers a device (see [`Registration`] for the rules), in one write transaction.
pub(crate) async fn register(
    pool: &PgPool,
    r: &Registration,
    m: &Mutation,
) -> StoreResult<Result<Registered, RegistrationRefusal>> {
    let mut tx = begin_write(pool).await?;
    let Some(group) = get_for_update(&mut tx, &r.group).await? else {
        return Ok(Err(RegistrationRefusal::UnknownGroup));
    };
    // The claim code, when the group uses them: (id, expires_at).
    let code: Option<(String, Option<i64>)> = match (&group.attestation, &r.claim_code) {
        (Attestation::ClaimCode, Some(hash)) => {
            let row = sqlx::query(
                "SELECT id, expires_at FROM enrollment_claim_codes
                 WHERE hash = $1 AND group_name = $2 FOR UPDATE",
            )
            .bind(&hash.as_bytes()[..])
            .bind(r.group.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
            match row {
                Some(row) => {
                    Some((row.try_get("id").map_err(db)?, row.try_get("expires_at").map_err(db)?))
                }
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
    let enrollment = sqlx::query(
        "SELECT group_name, registration_id, claim_code_id, count FROM device_enrollments
         WHERE device_id = $1 FOR UPDATE",
    )
    .bind(r.device_id.as_str())
    .fetch_optional(&mut *tx)
    .await
    .map_err(db)?;
    let enrollment: Option<(String, String, Option<String>, i64)> = match enrollment {
        Some(row) => Some((
            row.try_get("group_name").map_err(db)?,
            row.try_get("registration_id").map_err(db)?,
            row.try_get("claim_code_id").map_err(db)?,
            row.try_get("count").map_err(db)?,
        )),
        None => None,
    };
    let existing = devices::get_for_update(&mut tx, &r.device_id).await?;
    let code_id = code.as_ref().map(|c| c.0.as_str());
    let (device, created, adopted, issued) = match (existing, enrollment) {
        (Some(device), Some((group_name, registration_id, claim_code_id, count)))
            if group_name == r.group.as_str()
                && registration_id == r.registration_id.as_str()
                && claim_code_id.as_deref() == code_id =>
        {
            sqlx::query(
                "UPDATE device_enrollments SET count = count + 1, last_at = $2 WHERE device_id = $1",
            )
            .bind(device.id.as_str())
            .bind(m.at.millis())
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
    let inserted = sqlx::query(
        "INSERT INTO device_credentials (id, device_id, hash, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT DO NOTHING",
    )
    .bind(credential.id.as_str())
    .bind(credential.device_id.as_str())
    .bind(&credential.hash.as_bytes()[..])
    .bind(credential.created_at.millis())
    .bind(credential.expires_at.map(Timestamp::millis))
    .execute(&mut *tx)
    .await
    .map_err(db)?
    .rows_affected();
    if inserted != 1 {
        return Err(StoreError::AlreadyExists {
            kind: "credential",
            id: credential.id.to_string(),
        });
    }
    sqlx::query(
        "INSERT INTO provisioning_credentials (credential_id, device_id, issued) VALUES ($1, $2, $3)",
    )
    .bind(credential.id.as_str())
    .bind(device.id.as_str())
    .bind(issued)
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    let keep = i64::try_from(MAX_PROVISIONING_CREDENTIALS).unwrap_or(i64::MAX);
    let stale: Vec<String> = sqlx::query_scalar(
        "UPDATE device_credentials SET revoked_at = $3
         WHERE id IN (
             SELECT p.credential_id FROM provisioning_credentials p
             JOIN device_credentials c ON c.id = p.credential_id
             WHERE p.device_id = $1 AND c.revoked_at IS NULL
             ORDER BY p.issued DESC OFFSET $2)
         RETURNING id",
    )
    .bind(device.id.as_str())
    .bind(keep)
    .bind(m.at.millis())
    .fetch_all(&mut *tx)
    .await
    .map_err(db)?;
    let revoked_credentials = stale
        .into_iter()
        .map(|id| {
            CredentialId::new(id).map_err(|e| PostgresError::corrupt("provisioning credential", &e))
        })
        .collect::<StoreResult<Vec<_>>>()?;
    let registered = Registered { device, created, adopted, credential, revoked_credentials };
    let record = audit::record(
        m,
        "device.register",
        format!("device/{}", registered.device.id),
        None,
        Some(registered.audit_summary(r)),
    );
    audit::append_and_commit(tx, &record).await?;
    Ok(Ok(registered))
}

/// The first enrollment of `device` through `group`: one claim code use (refused when the code
/// is expired or used up), the device inserted (`before` is `None`; a concurrent insert of the
/// same id is a conflict) or written over `before`, its static groups, the enrollment record and
/// the group's count.
async fn enroll(
    tx: &mut PgConnection,
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
            "UPDATE enrollment_claim_codes SET uses = uses + 1 WHERE id = $1 AND uses < max_uses",
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
        None => {
            if !devices::insert(&mut *tx, device).await? {
                return Ok(Err(RegistrationRefusal::DeviceConflict));
            }
        }
        Some(before) => devices::write_update(&mut *tx, before, device).await?,
    }
    let names: Vec<&str> = group.groups.iter().map(GroupName::as_str).collect();
    // A static group deleted since the enrollment group named it is skipped.
    sqlx::query(
        "INSERT INTO group_members (group_id, device_id)
         SELECT g.id, $1 FROM device_groups g
         WHERE g.name = ANY($2) AND g.kind = 'static'
         ON CONFLICT DO NOTHING",
    )
    .bind(device.id.as_str())
    .bind(names)
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    sqlx::query(
        "INSERT INTO device_enrollments
             (device_id, group_name, registration_id, claim_code_id, first_at, last_at, count)
         VALUES ($1, $2, $3, $4, $5, $5, 1)",
    )
    .bind(device.id.as_str())
    .bind(r.group.as_str())
    .bind(r.registration_id.as_str())
    .bind(code.map(|c| c.0.as_str()))
    .bind(m.at.millis())
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    sqlx::query("UPDATE enrollment_groups SET registrations = registrations + 1 WHERE name = $1")
        .bind(r.group.as_str())
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    Ok(Ok(()))
}

/// Audits a refused registration attempt.
pub(crate) async fn record_refusal(
    pool: &PgPool,
    refusal: &RegistrationRefusalRecord,
    m: &Mutation,
) -> StoreResult<()> {
    let tx = begin_write(pool).await?;
    let record = audit::record(
        m,
        "enrollment.register.refused",
        refusal.resource(),
        None,
        Some(refusal.audit_summary()),
    );
    audit::append_and_commit(tx, &record).await
}

/// The audit resource of an enrollment group.
fn resource(name: &EnrollmentGroupName) -> String {
    format!("enrollment_group/{name}")
}

fn not_found(name: &EnrollmentGroupName) -> StoreError {
    StoreError::NotFound { kind: "enrollment_group", id: name.to_string() }
}
