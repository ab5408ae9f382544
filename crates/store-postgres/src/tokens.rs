//! Operator API tokens in `api_tokens`: only the SHA-256 of each secret is stored.

use domain::{ApiToken, Mutation, NewToken, TokenHash, TokenId};
use sqlx::PgPool;
use store::{StoreError, StoreResult};

use crate::audit::{self, begin_write};
use crate::error::{PostgresError, db};
use crate::rows::{self, token_columns};

/// Stores a new token.
pub(crate) async fn create(pool: &PgPool, new: &NewToken, m: &Mutation) -> StoreResult<ApiToken> {
    let token = ApiToken {
        id: new.id.clone(),
        name: new.name.clone(),
        role: new.role,
        hash: new.hash,
        created_at: m.at,
        expires_at: new.expires_at,
        revoked_at: None,
    };
    let mut tx = begin_write(pool).await?;
    // No conflict target: a clash on the id or on the hash both mean the token exists.
    let inserted = sqlx::query(
        "INSERT INTO api_tokens (id, name, role, hash, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT DO NOTHING",
    )
    .bind(token.id.as_str())
    .bind(&token.name)
    .bind(token.role.as_str())
    .bind(&token.hash.as_bytes()[..])
    .bind(token.created_at.millis())
    .bind(token.expires_at.map(|t| t.millis()))
    .execute(&mut *tx)
    .await
    .map_err(db)?
    .rows_affected();
    if inserted != 1 {
        return Err(StoreError::AlreadyExists { kind: "token", id: token.id.to_string() });
    }
    let record =
        audit::record(m, "token.create", resource(&token.id), None, Some(token.audit_summary()));
    audit::append_and_commit(tx, &record).await?;
    Ok(token)
}

/// Finds a token by the hash of its secret.
pub(crate) async fn by_hash(pool: &PgPool, hash: &TokenHash) -> StoreResult<Option<ApiToken>> {
    let row =
        sqlx::query(concat!("SELECT ", token_columns!(), " FROM api_tokens t WHERE t.hash = $1"))
            .bind(&hash.as_bytes()[..])
            .fetch_optional(pool)
            .await
            .map_err(db)?;
    row.as_ref().map(rows::token).transpose()
}

/// All tokens, newest first (ties broken by id, highest first).
pub(crate) async fn list(pool: &PgPool) -> StoreResult<Vec<ApiToken>> {
    let rows = sqlx::query(concat!(
        "SELECT ",
        token_columns!(),
        " FROM api_tokens t ORDER BY t.created_at DESC, t.id DESC"
    ))
    .fetch_all(pool)
    .await
    .map_err(db)?;
    rows.iter().map(rows::token).collect()
}

/// Revokes a token; a token revoked before keeps its first revocation time.
pub(crate) async fn revoke(pool: &PgPool, id: &TokenId, m: &Mutation) -> StoreResult<ApiToken> {
    let mut tx = begin_write(pool).await?;
    let row = sqlx::query(concat!(
        "SELECT ",
        token_columns!(),
        " FROM api_tokens t WHERE t.id = $1 FOR UPDATE"
    ))
    .bind(id.as_str())
    .fetch_optional(&mut *tx)
    .await
    .map_err(db)?;
    let current = row
        .as_ref()
        .map(rows::token)
        .transpose()?
        .ok_or_else(|| StoreError::NotFound { kind: "token", id: id.to_string() })?;
    if current.revoked_at.is_some() {
        return Ok(current);
    }
    let revoked = ApiToken { revoked_at: Some(m.at), ..current.clone() };
    sqlx::query("UPDATE api_tokens SET revoked_at = $2 WHERE id = $1")
        .bind(id.as_str())
        .bind(m.at.millis())
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    let record = audit::record(
        m,
        "token.revoke",
        resource(id),
        Some(current.audit_summary()),
        Some(revoked.audit_summary()),
    );
    audit::append_and_commit(tx, &record).await?;
    Ok(revoked)
}

/// How many tokens exist, revoked ones included.
pub(crate) async fn count(pool: &PgPool) -> StoreResult<u64> {
    let n: i64 =
        sqlx::query_scalar("SELECT count(*) FROM api_tokens").fetch_one(pool).await.map_err(db)?;
    u64::try_from(n).map_err(|e| PostgresError::corrupt("token count", &e))
}

fn resource(id: &TokenId) -> String {
    format!("token/{id}")
}
