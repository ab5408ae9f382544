//! Appending sealed records to the audit chain inside a write transaction.
//!
//! The chain's tail (last sequence number and hash) is read inside the same write transaction
//! that makes the change, so with SQLite's single writer the records of concurrent writes can
//! neither interleave nor fork the chain.

use domain::audit::GENESIS;
use domain::{AuditRecord, Mutation, NewAuditRecord};
use sqlx::{Sqlite, SqliteConnection, Transaction};
use store::StoreResult;

use crate::bulk::{self, Value};
use crate::rows::{corrupt, db, to_i64};

/// The tail of the chain as seen by one write transaction.
#[derive(Debug)]
pub(crate) struct AuditChain {
    last_seq: u64,
    last_hash: [u8; 32],
}

impl AuditChain {
    /// Reads the chain's tail. Call inside the write transaction that appends.
    pub(crate) async fn load(conn: &mut SqliteConnection) -> StoreResult<Self> {
        let tail: Option<(i64, Vec<u8>)> =
            sqlx::query_as("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
                .fetch_optional(&mut *conn)
                .await
                .map_err(db)?;
        let Some((seq, hash)) = tail else {
            return Ok(Self { last_seq: 0, last_hash: GENESIS });
        };
        let key = seq.to_string();
        let last_seq = u64::try_from(seq).map_err(|_| corrupt("audit", &key, "negative seq"))?;
        let last_hash = <[u8; 32]>::try_from(hash)
            .map_err(|h| corrupt("audit", &key, format!("hash is {} bytes", h.len())))?;
        Ok(Self { last_seq, last_hash })
    }

    /// Seals `new` as the next record and inserts it.
    pub(crate) async fn append(
        &mut self,
        conn: &mut SqliteConnection,
        new: &NewAuditRecord,
    ) -> StoreResult<()> {
        let r = AuditRecord::seal(self.last_seq + 1, self.last_hash, new);
        sqlx::query(
            "INSERT INTO audit (seq, at, actor, action, resource, before, after, prev_hash, hash) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(to_i64("audit seq", r.seq)?)
        .bind(r.at.millis())
        .bind(&r.actor)
        .bind(&r.action)
        .bind(&r.resource)
        .bind(&r.before)
        .bind(&r.after)
        .bind(&r.prev_hash[..])
        .bind(&r.hash[..])
        .execute(&mut *conn)
        .await
        .map_err(db)?;
        self.last_seq = r.seq;
        self.last_hash = r.hash;
        Ok(())
    }
}

impl AuditChain {
    /// Seals `entries` as the next records, in order, and inserts them in a few statements.
    pub(crate) async fn append_many(
        &mut self,
        conn: &mut SqliteConnection,
        entries: &[NewAuditRecord],
    ) -> StoreResult<()> {
        let mut values = Vec::with_capacity(entries.len() * 9);
        for new in entries {
            let r = AuditRecord::seal(self.last_seq + 1, self.last_hash, new);
            values.extend([
                Value::Int(to_i64("audit seq", r.seq)?),
                Value::Int(r.at.millis()),
                Value::Text(r.actor),
                Value::Text(r.action),
                Value::Text(r.resource),
                Value::OptText(r.before),
                Value::OptText(r.after),
                Value::Blob(r.prev_hash.to_vec()),
                Value::Blob(r.hash.to_vec()),
            ]);
            self.last_seq = r.seq;
            self.last_hash = r.hash;
        }
        bulk::insert_rows(
            conn,
            "INSERT INTO audit (seq, at, actor, action, resource, before, after, prev_hash, hash)",
            "",
            9,
            values,
        )
        .await
        .map_err(db)
    }
}

/// Appends `new` to the chain inside `tx`, then commits `tx`: the last step of every write that
/// makes one audited change.
pub(crate) async fn append_and_commit(
    mut tx: Transaction<'static, Sqlite>,
    new: &NewAuditRecord,
) -> StoreResult<()> {
    let mut chain = AuditChain::load(&mut tx).await?;
    chain.append(&mut tx, new).await?;
    tx.commit().await.map_err(db)
}

/// An audit entry for a change made under `m`.
pub(crate) fn entry(
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
