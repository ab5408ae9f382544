//! Stored rows ⇄ domain values.
//!
//! Every column list used in a `SELECT` lives here next to the function that decodes it, so the two
//! cannot drift apart. Decoding re-validates through the domain constructors: a row edited by hand
//! becomes a [`StoreError::Backend`], never a panic or an invalid domain value.

use domain::{
    ApiToken, Attributes, AuditRecord, CredentialId, Device, DeviceCredential, DeviceId,
    DisplayName, Filter, Group, GroupKind, GroupName, LifecycleState, Role, Tags, Timestamp,
    TokenHash, TokenId,
};
use sqlx::Row;
use sqlx::postgres::PgRow;
use store::StoreError;

use crate::error::{PostgresError, db};

/// The columns [`device`] reads, qualified by the alias `d`, as a literal for `concat!`.
macro_rules! device_columns {
    () => {
        "d.id, d.name, d.tags, d.attributes, d.state, d.created_at, d.updated_at, d.version, \
         d.predecessor_id, d.successor_id"
    };
}
pub(crate) use device_columns;

/// The columns [`group`] reads, qualified by the alias `g`, as a literal for `concat!`.
macro_rules! group_columns {
    () => {
        "g.id, g.name, g.description, g.kind, g.filter, g.created_at, g.updated_at, g.version"
    };
}
pub(crate) use group_columns;

/// The columns [`token`] reads, qualified by the alias `t`, as a literal for `concat!`.
macro_rules! token_columns {
    () => {
        "t.id, t.name, t.role, t.hash, t.created_at, t.expires_at, t.revoked_at"
    };
}
pub(crate) use token_columns;

/// The columns [`credential`] reads, qualified by the alias `c`, as a literal for `concat!`.
macro_rules! credential_columns {
    () => {
        "c.id, c.device_id, c.hash, c.created_at, c.expires_at, c.revoked_at"
    };
}
pub(crate) use credential_columns;

/// The columns [`audit_record`] reads, as a literal for `concat!`.
macro_rules! audit_columns {
    () => {
        "seq, at, actor, action, resource, before, after, prev_hash, hash"
    };
}
pub(crate) use audit_columns;

/// Decodes a row selected with [`device_columns!`].
pub(crate) fn device(row: &PgRow) -> Result<Device, StoreError> {
    let id: String = row.try_get("id").map_err(db)?;
    let name: String = row.try_get("name").map_err(db)?;
    let tags: String = row.try_get("tags").map_err(db)?;
    let attributes: String = row.try_get("attributes").map_err(db)?;
    let state: String = row.try_get("state").map_err(db)?;
    let tags: serde_json::Value =
        serde_json::from_str(&tags).map_err(|e| PostgresError::corrupt("device tags", &e))?;
    let attributes: serde_json::Value = serde_json::from_str(&attributes)
        .map_err(|e| PostgresError::corrupt("device attributes", &e))?;
    Ok(Device {
        id: DeviceId::new(id).map_err(|e| PostgresError::corrupt("device id", &e))?,
        name: DisplayName::new(name).map_err(|e| PostgresError::corrupt("device name", &e))?,
        tags: Tags::from_json(&tags).map_err(|e| PostgresError::corrupt("device tags", &e))?,
        attributes: Attributes::from_stored(attributes),
        state: state
            .parse::<LifecycleState>()
            .map_err(|e| PostgresError::corrupt("device state", &e))?,
        created_at: Timestamp::from_millis(row.try_get("created_at").map_err(db)?),
        updated_at: Timestamp::from_millis(row.try_get("updated_at").map_err(db)?),
        version: version(row, "device version")?,
        replaces: link(row, "predecessor_id")?,
        replaced_by: link(row, "successor_id")?,
    })
}

/// Decodes a device's predecessor or successor column.
fn link(row: &PgRow, column: &'static str) -> Result<Option<DeviceId>, StoreError> {
    let id: Option<String> = row.try_get(column).map_err(db)?;
    id.map(DeviceId::new).transpose().map_err(|e| PostgresError::corrupt(column, &e))
}

/// A group as stored, with its surrogate key (members reference it).
#[derive(Debug, Clone)]
pub(crate) struct StoredGroup {
    /// The `device_groups.id` key.
    pub(crate) key: i64,
    /// The group itself.
    pub(crate) group: Group,
}

/// Decodes a row selected with [`group_columns!`].
pub(crate) fn group(row: &PgRow) -> Result<StoredGroup, StoreError> {
    let name: String = row.try_get("name").map_err(db)?;
    let kind: String = row.try_get("kind").map_err(db)?;
    let filter: Option<String> = row.try_get("filter").map_err(db)?;
    let kind = group_kind(&kind, filter)?;
    Ok(StoredGroup {
        key: row.try_get("id").map_err(db)?,
        group: Group {
            name: GroupName::new(name).map_err(|e| PostgresError::corrupt("group name", &e))?,
            description: row.try_get("description").map_err(db)?,
            kind,
            created_at: Timestamp::from_millis(row.try_get("created_at").map_err(db)?),
            updated_at: Timestamp::from_millis(row.try_get("updated_at").map_err(db)?),
            version: version(row, "group version")?,
        },
    })
}

/// Decodes a group's `kind` and `filter` columns (a dynamic group's filter is parsed again).
pub(crate) fn group_kind(kind: &str, filter: Option<String>) -> Result<GroupKind, StoreError> {
    match (kind, filter) {
        ("static", None) => Ok(GroupKind::Static),
        ("dynamic", Some(text)) => Ok(GroupKind::Dynamic(
            Filter::parse(&text).map_err(|e| PostgresError::corrupt("group filter", &e))?,
        )),
        (other, filter) => Err(PostgresError::corrupt(
            "group kind",
            &format!("kind {other:?} with filter {filter:?}"),
        )),
    }
}

/// Decodes a row selected with [`token_columns!`].
pub(crate) fn token(row: &PgRow) -> Result<ApiToken, StoreError> {
    let id: String = row.try_get("id").map_err(db)?;
    let role: String = row.try_get("role").map_err(db)?;
    let hash: Vec<u8> = row.try_get("hash").map_err(db)?;
    let expires_at: Option<i64> = row.try_get("expires_at").map_err(db)?;
    let revoked_at: Option<i64> = row.try_get("revoked_at").map_err(db)?;
    Ok(ApiToken {
        id: TokenId::new(id).map_err(|e| PostgresError::corrupt("token id", &e))?,
        name: row.try_get("name").map_err(db)?,
        role: role.parse::<Role>().map_err(|e| PostgresError::corrupt("token role", &e))?,
        hash: TokenHash::from_bytes(hash32(hash, "token hash")?),
        created_at: Timestamp::from_millis(row.try_get("created_at").map_err(db)?),
        expires_at: expires_at.map(Timestamp::from_millis),
        revoked_at: revoked_at.map(Timestamp::from_millis),
    })
}

/// Decodes a row selected with [`credential_columns!`].
pub(crate) fn credential(row: &PgRow) -> Result<DeviceCredential, StoreError> {
    let id: String = row.try_get("id").map_err(db)?;
    let device_id: String = row.try_get("device_id").map_err(db)?;
    let hash: Vec<u8> = row.try_get("hash").map_err(db)?;
    let expires_at: Option<i64> = row.try_get("expires_at").map_err(db)?;
    let revoked_at: Option<i64> = row.try_get("revoked_at").map_err(db)?;
    Ok(DeviceCredential {
        id: CredentialId::new(id).map_err(|e| PostgresError::corrupt("credential id", &e))?,
        device_id: DeviceId::new(device_id)
            .map_err(|e| PostgresError::corrupt("credential device id", &e))?,
        hash: TokenHash::from_bytes(hash32(hash, "credential hash")?),
        created_at: Timestamp::from_millis(row.try_get("created_at").map_err(db)?),
        expires_at: expires_at.map(Timestamp::from_millis),
        revoked_at: revoked_at.map(Timestamp::from_millis),
    })
}

/// Decodes a row selected with [`audit_columns!`].
pub(crate) fn audit_record(row: &PgRow) -> Result<AuditRecord, StoreError> {
    let seq: i64 = row.try_get("seq").map_err(db)?;
    let prev_hash: Vec<u8> = row.try_get("prev_hash").map_err(db)?;
    let hash: Vec<u8> = row.try_get("hash").map_err(db)?;
    Ok(AuditRecord {
        seq: u64::try_from(seq).map_err(|e| PostgresError::corrupt("audit seq", &e))?,
        at: Timestamp::from_millis(row.try_get("at").map_err(db)?),
        actor: row.try_get("actor").map_err(db)?,
        action: row.try_get("action").map_err(db)?,
        resource: row.try_get("resource").map_err(db)?,
        before: row.try_get("before").map_err(db)?,
        after: row.try_get("after").map_err(db)?,
        prev_hash: hash32(prev_hash, "audit prev_hash")?,
        hash: hash32(hash, "audit hash")?,
    })
}

/// A 32-byte hash column.
pub(crate) fn hash32(bytes: Vec<u8>, what: &'static str) -> Result<[u8; 32], StoreError> {
    <[u8; 32]>::try_from(bytes)
        .map_err(|b| PostgresError::corrupt(what, &format!("{} bytes, expected 32", b.len())))
}

/// A `BIGINT` version column as the domain's `u64`.
fn version(row: &PgRow, what: &'static str) -> Result<u64, StoreError> {
    let v: i64 = row.try_get("version").map_err(db)?;
    u64::try_from(v).map_err(|e| PostgresError::corrupt(what, &e))
}

/// A domain version as a `BIGINT`.
pub(crate) fn version_to_sql(v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|e| PostgresError::corrupt("version", &e))
}
