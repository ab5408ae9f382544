//! The hash-chained audit log in the `audit_log` table.
//!
//! Every write transaction takes the transaction-scoped advisory lock [`WRITE_LOCK`] first (see
//! [`begin_write`]), so appends to the chain are serialized: reading the last `seq` and `hash` and
//! inserting the next record cannot interleave with another writer. Taking the lock before any row
//! lock keeps writers from deadlocking on each other. Draining the twin recompute queue takes the
//! same lock in shared mode (see `profiles`): drains run side by side, but never during a write.

use std::num::NonZeroU32;

use domain::audit::GENESIS;
use domain::{AuditRecord, Mutation, NewAuditRecord};
use sqlx::{PgConnection, PgPool, Postgres, Row, Transaction};
use store::{MAX_PAGE_SIZE, StoreError, StoreResult};

use crate::error::{PostgresError, db};
use crate::rows;

/// The key of the advisory lock that serializes Herd's write transactions ("herd" + "audt").
pub(crate) const WRITE_LOCK: i64 = 0x6865_7264_6175_6474;

/// Begins a write transaction holding [`WRITE_LOCK`] until it commits or rolls back.
pub(crate) async fn begin_write(pool: &PgPool) -> StoreResult<Transaction<'static, Postgres>> {
    let mut tx = pool.begin().await.map_err(db)?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(WRITE_LOCK)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    Ok(tx)
}

/// Seals `new` as the next record of the chain and inserts it, inside the caller's transaction
/// (which must come from [`begin_write`]).
pub(crate) async fn append(conn: &mut PgConnection, new: &NewAuditRecord) -> StoreResult<()> {
    let last = sqlx::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&mut *conn)
        .await
        .map_err(db)?;
    let (seq, prev_hash) = match last {
        None => (1, GENESIS),
        Some(row) => {
            let seq: i64 = row.try_get("seq").map_err(db)?;
            let seq = u64::try_from(seq)
                .ok()
                .and_then(|s| s.checked_add(1))
                .ok_or_else(|| PostgresError::corrupt("audit seq", &format!("{seq}")))?;
            (seq, rows::hash32(row.try_get("hash").map_err(db)?, "audit hash")?)
        }
    };
    let record = AuditRecord::seal(seq, prev_hash, new);
    sqlx::query(
        "INSERT INTO audit_log (seq, at, actor, action, resource, before, after, prev_hash, hash)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(i64::try_from(record.seq).map_err(|e| PostgresError::corrupt("audit seq", &e))?)
    .bind(record.at.millis())
    .bind(&record.actor)
    .bind(&record.action)
    .bind(&record.resource)
    .bind(&record.before)
    .bind(&record.after)
    .bind(&record.prev_hash[..])
    .bind(&record.hash[..])
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    Ok(())
}

/// Appends `new` to the chain inside `tx` (from [`begin_write`]), then commits `tx`: the last step
/// of every write that makes one audited change.
pub(crate) async fn append_and_commit(
    mut tx: Transaction<'static, Postgres>,
    new: &NewAuditRecord,
) -> StoreResult<()> {
    append(&mut tx, new).await?;
    tx.commit().await.map_err(db)
}

/// The audit record of a change made under `m` to `resource`, with its state `before` and `after`.
pub(crate) fn record(
    m: &Mutation,
    action: &str,
    resource: String,
    before: Option<serde_json::Value>,
    after: Option<serde_json::Value>,
) -> NewAuditRecord {
    NewAuditRecord {
        actor: m.actor.clone(),
        at: m.at,
        action: action.to_owned(),
        resource,
        before,
        after,
    }
}

/// Records with `seq > after`, oldest first, at most `limit` (clamped to [`MAX_PAGE_SIZE`]).
pub(crate) async fn records(
    pool: &PgPool,
    after: u64,
    limit: NonZeroU32,
) -> StoreResult<Vec<AuditRecord>> {
    // A cursor beyond the largest BIGINT has nothing after it.
    let Ok(after) = i64::try_from(after) else {
        return Ok(Vec::new());
    };
    let limit = limit.get().min(MAX_PAGE_SIZE);
    let rows = sqlx::query(concat!(
        "SELECT ",
        rows::audit_columns!(),
        " FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2"
    ))
    .bind(after)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await
    .map_err(db)?;
    rows.iter().map(rows::audit_record).collect::<Result<_, StoreError>>()
}
