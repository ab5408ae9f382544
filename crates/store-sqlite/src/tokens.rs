//! Operator API tokens: stored by the SHA-256 of their secret, never the secret.

use domain::{ApiToken, Mutation, NewToken, TokenHash, TokenId};
use sqlx::SqliteConnection;
use store::{StoreError, StoreResult};

use crate::SqliteStore;
use crate::audit_chain::{append_and_commit, entry};
use crate::rows::{TOKEN_COLUMNS, TokenRow, db, token_from_row, unique_or_db};

/// Stores a new token.
pub(crate) async fn create(s: &SqliteStore, new: &NewToken, m: &Mutation) -> StoreResult<ApiToken> {
    let token = ApiToken {
        id: new.id.clone(),
        name: new.name.clone(),
        role: new.role,
        hash: new.hash,
        created_at: m.at,
        expires_at: new.expires_at,
        revoked_at: None,
    };
    let mut tx = s.begin_write().await?;
    sqlx::query(
        "INSERT INTO api_tokens (id, name, role, hash, created_at, expires_at, revoked_at) \
         VALUES (?, ?, ?, ?, ?, ?, NULL)",
    )
    .bind(token.id.as_str())
    .bind(&token.name)
    .bind(token.role.as_str())
    .bind(&token.hash.as_bytes()[..])
    .bind(token.created_at.millis())
    .bind(token.expires_at.map(|t| t.millis()))
    .execute(&mut *tx)
    .await
    .map_err(unique_or_db("token", &token.id))?;
    append_and_commit(
        tx,
        &entry(m, "token.create", resource(&token.id), None, Some(token.audit_summary())),
    )
    .await?;
    Ok(token)
}

/// Finds a token by the hash of its secret.
pub(crate) async fn by_hash(
    conn: &mut SqliteConnection,
    hash: &TokenHash,
) -> StoreResult<Option<ApiToken>> {
    let row: Option<TokenRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE hash = ?"
    )))
    .bind(&hash.as_bytes()[..])
    .fetch_optional(&mut *conn)
    .await
    .map_err(db)?;
    row.map(token_from_row).transpose()
}

/// All tokens, newest first.
pub(crate) async fn list(conn: &mut SqliteConnection) -> StoreResult<Vec<ApiToken>> {
    let rows: Vec<TokenRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY created_at DESC, id DESC"
    )))
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    rows.into_iter().map(token_from_row).collect()
}

/// Revokes a token; revoking a revoked token changes nothing and writes nothing.
pub(crate) async fn revoke(s: &SqliteStore, id: &TokenId, m: &Mutation) -> StoreResult<ApiToken> {
    let mut tx = s.begin_write().await?;
    let row: Option<TokenRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE id = ?"
    )))
    .bind(id.as_str())
    .fetch_optional(&mut *tx)
    .await
    .map_err(db)?;
    let old = row
        .map(token_from_row)
        .transpose()?
        .ok_or_else(|| StoreError::NotFound { kind: "token", id: id.to_string() })?;
    if old.revoked_at.is_some() {
        return Ok(old);
    }
    let new = ApiToken { revoked_at: Some(m.at), ..old.clone() };
    sqlx::query("UPDATE api_tokens SET revoked_at = ? WHERE id = ?")
        .bind(m.at.millis())
        .bind(id.as_str())
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    append_and_commit(
        tx,
        &entry(
            m,
            "token.revoke",
            resource(id),
            Some(old.audit_summary()),
            Some(new.audit_summary()),
        ),
    )
    .await?;
    Ok(new)
}

/// How many tokens exist, revoked ones included.
pub(crate) async fn count(conn: &mut SqliteConnection) -> StoreResult<u64> {
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM api_tokens")
        .fetch_one(&mut *conn)
        .await
        .map_err(db)?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// The audit resource of a token.
fn resource(id: &TokenId) -> String {
    format!("token/{id}")
}
