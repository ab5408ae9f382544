//! Rows as SQLite returns them, and their checked conversion into domain types.
//!
//! Stored data is read back through the same validating constructors as input, so a row that was
//! altered outside Herd becomes a [`StoreError::Backend`] naming the table, never a panic.

use std::fmt;
use std::str::FromStr;

use domain::{
    ApiToken, Attributes, AuditRecord, CredentialId, Device, DeviceCredential, DeviceId,
    DisplayName, Filter, Group, GroupKind, GroupName, LifecycleState, Role, Tags, Timestamp,
    TokenHash, TokenId,
};
use store::StoreError;

use crate::SqliteError;

/// `devices` columns in [`crate::filter_sql::DEVICE_COLUMNS`] order.
pub(crate) type DeviceRow =
    (String, String, String, String, String, i64, i64, i64, Option<String>, Option<String>);

/// `groups` columns in [`GROUP_COLUMNS`] order.
pub(crate) type GroupRow = (String, String, String, Option<String>, i64, i64, i64);

/// `api_tokens` columns in [`TOKEN_COLUMNS`] order.
pub(crate) type TokenRow = (String, String, String, Vec<u8>, i64, Option<i64>, Option<i64>);

/// `device_credentials` columns in [`CREDENTIAL_COLUMNS`] order.
pub(crate) type CredentialRow = (String, String, Vec<u8>, i64, Option<i64>, Option<i64>);

/// `audit` columns in [`AUDIT_COLUMNS`] order.
pub(crate) type AuditRow =
    (i64, i64, String, String, String, Option<String>, Option<String>, Vec<u8>, Vec<u8>);

/// The `groups` columns [`group_from_row`] reads.
pub(crate) const GROUP_COLUMNS: &str =
    "name, description, kind, filter, created_at, updated_at, version";

/// The `api_tokens` columns [`token_from_row`] reads.
pub(crate) const TOKEN_COLUMNS: &str = "id, name, role, hash, created_at, expires_at, revoked_at";

/// The `device_credentials` columns [`credential_from_row`] reads, qualified by the alias `c`.
pub(crate) const CREDENTIAL_COLUMNS: &str =
    "c.id, c.device_id, c.hash, c.created_at, c.expires_at, c.revoked_at";

/// The `audit` columns [`audit_from_row`] reads.
pub(crate) const AUDIT_COLUMNS: &str =
    "seq, at, actor, action, resource, before, after, prev_hash, hash";

/// Wraps a SQLite error as a backend failure.
pub(crate) fn db(e: sqlx::Error) -> StoreError {
    StoreError::backend(e)
}

/// For `.map_err` on an insert: a `UNIQUE` or `PRIMARY KEY` violation becomes
/// [`StoreError::AlreadyExists`] for the `kind` with `id`, any other error a backend failure.
pub(crate) fn unique_or_db(
    kind: &'static str,
    id: impl fmt::Display,
) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |e| {
        if is_unique_violation(&e) {
            StoreError::AlreadyExists { kind, id: id.to_string() }
        } else {
            db(e)
        }
    }
}

/// Whether an error is a `UNIQUE` or `PRIMARY KEY` violation.
fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// Converts a version or sequence number for storage.
pub(crate) fn to_i64(what: &'static str, value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::backend(SqliteError::OutOfRange { what, value }))
}

/// A backend error for a stored row that does not hold what Herd wrote.
pub(crate) fn corrupt(table: &'static str, key: &str, reason: impl Into<String>) -> StoreError {
    StoreError::backend(SqliteError::Corrupt { table, key: key.to_owned(), reason: reason.into() })
}

fn unsigned(table: &'static str, key: &str, what: &str, v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| corrupt(table, key, format!("{what} {v} is negative")))
}

/// Reads a device row back.
///
/// # Errors
/// [`StoreError::Backend`] when a column does not hold a valid value.
pub(crate) fn device_from_row(row: DeviceRow) -> Result<Device, StoreError> {
    let (
        id,
        name,
        state,
        tags_json,
        attributes_json,
        created_at,
        updated_at,
        version,
        predecessor,
        successor,
    ) = row;
    let bad = |reason: String| corrupt("devices", &id, reason);
    let tags_value: serde_json::Value =
        serde_json::from_str(&tags_json).map_err(|e| bad(format!("tags: {e}")))?;
    let attributes: serde_json::Value =
        serde_json::from_str(&attributes_json).map_err(|e| bad(format!("attributes: {e}")))?;
    if !attributes.is_object() {
        return Err(bad("attributes are not an object".to_owned()));
    }
    Ok(Device {
        id: DeviceId::new(id.as_str()).map_err(|e| bad(e.to_string()))?,
        name: DisplayName::new(name).map_err(|e| bad(e.to_string()))?,
        tags: Tags::from_json(&tags_value).map_err(|e| bad(e.to_string()))?,
        attributes: Attributes::from_stored(attributes),
        state: LifecycleState::from_str(&state).map_err(|e| bad(e.to_string()))?,
        created_at: Timestamp::from_millis(created_at),
        updated_at: Timestamp::from_millis(updated_at),
        version: unsigned("devices", &id, "version", version)?,
        replaces: predecessor.map(DeviceId::new).transpose().map_err(|e| bad(e.to_string()))?,
        replaced_by: successor.map(DeviceId::new).transpose().map_err(|e| bad(e.to_string()))?,
    })
}

/// Reads a group row back (a dynamic group's filter is parsed again).
///
/// # Errors
/// [`StoreError::Backend`] when a column does not hold a valid value.
pub(crate) fn group_from_row(row: GroupRow) -> Result<Group, StoreError> {
    let (name, description, kind, filter, created_at, updated_at, version) = row;
    let bad = |reason: String| corrupt("groups", &name, reason);
    let kind = group_kind(&name, &kind, filter)?;
    Ok(Group {
        name: GroupName::new(name.as_str()).map_err(|e| bad(e.to_string()))?,
        description,
        kind,
        created_at: Timestamp::from_millis(created_at),
        updated_at: Timestamp::from_millis(updated_at),
        version: unsigned("groups", &name, "version", version)?,
    })
}

/// Reads a group's `kind` and `filter` columns back (a dynamic group's filter is parsed again).
///
/// # Errors
/// [`StoreError::Backend`] when they do not hold a valid kind.
pub(crate) fn group_kind(
    name: &str,
    kind: &str,
    filter: Option<String>,
) -> Result<GroupKind, StoreError> {
    match (kind, filter) {
        ("static", None) => Ok(GroupKind::Static),
        ("dynamic", Some(text)) => Ok(GroupKind::Dynamic(
            Filter::parse(&text).map_err(|e| corrupt("groups", name, e.to_string()))?,
        )),
        (kind, filter) => {
            Err(corrupt("groups", name, format!("kind {kind:?} with filter {filter:?}")))
        }
    }
}

/// Reads a token row back.
///
/// # Errors
/// [`StoreError::Backend`] when a column does not hold a valid value.
pub(crate) fn token_from_row(row: TokenRow) -> Result<ApiToken, StoreError> {
    let (id, name, role, hash, created_at, expires_at, revoked_at) = row;
    let bad = |reason: String| corrupt("api_tokens", &id, reason);
    let hash: [u8; 32] =
        hash.try_into().map_err(|h: Vec<u8>| bad(format!("hash is {} bytes", h.len())))?;
    Ok(ApiToken {
        id: TokenId::new(id.as_str()).map_err(|e| bad(e.to_string()))?,
        name,
        role: Role::from_str(&role).map_err(|e| bad(e.to_string()))?,
        hash: TokenHash::from_bytes(hash),
        created_at: Timestamp::from_millis(created_at),
        expires_at: expires_at.map(Timestamp::from_millis),
        revoked_at: revoked_at.map(Timestamp::from_millis),
    })
}

/// Reads a device credential row back.
///
/// # Errors
/// [`StoreError::Backend`] when a column does not hold a valid value.
pub(crate) fn credential_from_row(row: CredentialRow) -> Result<DeviceCredential, StoreError> {
    let (id, device_id, hash, created_at, expires_at, revoked_at) = row;
    let bad = |reason: String| corrupt("device_credentials", &id, reason);
    let hash: [u8; 32] =
        hash.try_into().map_err(|h: Vec<u8>| bad(format!("hash is {} bytes", h.len())))?;
    Ok(DeviceCredential {
        id: CredentialId::new(id.as_str()).map_err(|e| bad(e.to_string()))?,
        device_id: DeviceId::new(device_id).map_err(|e| bad(e.to_string()))?,
        hash: TokenHash::from_bytes(hash),
        created_at: Timestamp::from_millis(created_at),
        expires_at: expires_at.map(Timestamp::from_millis),
        revoked_at: revoked_at.map(Timestamp::from_millis),
    })
}

/// Reads an audit row back. Its content is not checked here: that is what
/// [`domain::audit::verify_chain`] is for, and it needs to see altered rows as they are.
///
/// # Errors
/// [`StoreError::Backend`] when the sequence is negative or a hash is not 32 bytes.
pub(crate) fn audit_from_row(row: AuditRow) -> Result<AuditRecord, StoreError> {
    let (seq, at, actor, action, resource, before, after, prev_hash, hash) = row;
    let key = seq.to_string();
    let hash32 = |what: &str, h: Vec<u8>| -> Result<[u8; 32], StoreError> {
        h.try_into()
            .map_err(|h: Vec<u8>| corrupt("audit", &key, format!("{what} is {} bytes", h.len())))
    };
    Ok(AuditRecord {
        seq: unsigned("audit", &key, "seq", seq)?,
        at: Timestamp::from_millis(at),
        actor,
        action,
        resource,
        before,
        after,
        prev_hash: hash32("prev_hash", prev_hash)?,
        hash: hash32("hash", hash)?,
    })
}
