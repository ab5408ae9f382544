//! Direct commands in `device_commands` (migration 0011), as in the SQLite backend.

use domain::command::deliver_by;
use domain::{
    Command, CommandError, CommandId, CommandName, CommandState, DeviceId, IdempotencyKey,
    Mutation, NewCommand, Timestamp,
};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row as _};
use store::{
    CommandProgress, CommandQuery, CommandUpdate, CreatedCommand, MAX_PAGE_SIZE, Page, StoreError,
    StoreResult,
};

use crate::audit::{self, append_and_commit, begin_write};
use crate::error::{PostgresError, db};

/// The columns [`from_row`] reads.
const COLUMNS: &str = "id, device_id, seq, name, payload, state, created_at, created_by, \
     timeout_secs, expires_at, delivered_at, completed_at, result, error_code, error_message, \
     idempotency_key";

fn resource(device: &DeviceId) -> String {
    format!("device/{}", device.as_str())
}

/// Reads a row selected with [`COLUMNS`], re-validating every value.
fn from_row(row: &PgRow) -> StoreResult<Command> {
    let id: String = row.try_get("id").map_err(db)?;
    let bad = |reason: String| PostgresError::corrupt("device command", &format!("{id}: {reason}"));
    let json = |text: String| serde_json::from_str(&text).map_err(|e| bad(e.to_string()));
    let payload: String = row.try_get("payload").map_err(db)?;
    let result: Option<String> = row.try_get("result").map_err(db)?;
    let state: String = row.try_get("state").map_err(db)?;
    let seq: i64 = row.try_get("seq").map_err(db)?;
    let timeout_secs: i64 = row.try_get("timeout_secs").map_err(db)?;
    let error_code: Option<String> = row.try_get("error_code").map_err(db)?;
    let error_message: Option<String> = row.try_get("error_message").map_err(db)?;
    let key: Option<String> = row.try_get("idempotency_key").map_err(db)?;
    let opt_ts = |name: &str| -> StoreResult<Option<Timestamp>> {
        Ok(row.try_get::<Option<i64>, _>(name).map_err(db)?.map(Timestamp::from_millis))
    };
    Ok(Command {
        id: CommandId::new(id.as_str()).map_err(|e| bad(e.to_string()))?,
        device_id: DeviceId::new(row.try_get::<String, _>("device_id").map_err(db)?)
            .map_err(|e| bad(e.to_string()))?,
        name: CommandName::new(row.try_get::<String, _>("name").map_err(db)?)
            .map_err(|e| bad(e.to_string()))?,
        payload: json(payload)?,
        state: state.parse().map_err(|e: domain::InvalidInput| bad(e.to_string()))?,
        created_at: Timestamp::from_millis(row.try_get("created_at").map_err(db)?),
        created_by: row.try_get("created_by").map_err(db)?,
        timeout_secs: u32::try_from(timeout_secs).map_err(|e| bad(e.to_string()))?,
        expires_at: opt_ts("expires_at")?,
        delivered_at: opt_ts("delivered_at")?,
        completed_at: opt_ts("completed_at")?,
        result: result.map(json).transpose()?,
        error: match (error_code, error_message) {
            (Some(code), message) => {
                Some(CommandError { code, message: message.unwrap_or_default() })
            }
            (None, _) => None,
        },
        idempotency_key: key
            .map(IdempotencyKey::new)
            .transpose()
            .map_err(|e| bad(e.to_string()))?,
        seq: u64::try_from(seq).map_err(|e| bad(e.to_string()))?,
    })
}

async fn get(
    conn: &mut PgConnection,
    device: &DeviceId,
    id: &CommandId,
) -> StoreResult<Option<Command>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM device_commands WHERE id = $1 AND device_id = $2"
    )))
    .bind(id.as_str())
    .bind(device.as_str())
    .fetch_optional(&mut *conn)
    .await
    .map_err(db)?;
    row.as_ref().map(from_row).transpose()
}

fn not_found(id: &CommandId) -> StoreError {
    StoreError::NotFound { kind: "command", id: id.to_string() }
}

/// Creates a command, or finds the one its idempotency key made.
pub(crate) async fn create(
    pool: &PgPool,
    new: &NewCommand,
    idempotency_since: Timestamp,
    m: &Mutation,
) -> StoreResult<CreatedCommand> {
    let mut tx = begin_write(pool).await?;
    let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM devices WHERE id = $1")
        .bind(new.device_id.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
    if exists.is_none() {
        return Err(StoreError::NotFound { kind: "device", id: new.device_id.to_string() });
    }
    if let Some(key) = &new.idempotency_key {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM device_commands WHERE device_id = $1 AND idempotency_key = $2 \
             AND created_at >= $3 ORDER BY created_at DESC LIMIT 1"
        )))
        .bind(new.device_id.as_str())
        .bind(key.as_str())
        .bind(idempotency_since.millis())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        if let Some(row) = row {
            let existing = from_row(&row)?;
            if !new.same_request(&existing) {
                return Err(StoreError::Conflict(format!(
                    "idempotency key {:?} was used for command {} with another name or payload",
                    key.as_str(),
                    existing.id
                )));
            }
            return Ok(CreatedCommand { command: existing, created: false });
        }
    }
    let last: Option<i64> =
        sqlx::query_scalar("SELECT MAX(seq) FROM device_commands WHERE device_id = $1")
            .bind(new.device_id.as_str())
            .fetch_one(&mut *tx)
            .await
            .map_err(db)?;
    let seq = last.unwrap_or(0) + 1;
    let command = Command {
        id: new.id.clone(),
        device_id: new.device_id.clone(),
        name: new.name.clone(),
        payload: new.payload.clone(),
        state: CommandState::Queued,
        created_at: m.at,
        created_by: m.actor.to_string(),
        timeout_secs: new.timeout_secs,
        expires_at: new.expires_at,
        delivered_at: None,
        completed_at: None,
        result: None,
        error: None,
        idempotency_key: new.idempotency_key.clone(),
        seq: u64::try_from(seq).unwrap_or(0),
    };
    sqlx::query(
        "INSERT INTO device_commands (id, device_id, seq, name, payload, state, created_at, \
         created_by, timeout_secs, expires_at, deliver_by, idempotency_key) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(command.id.as_str())
    .bind(command.device_id.as_str())
    .bind(seq)
    .bind(command.name.as_str())
    .bind(command.payload.to_string())
    .bind(command.state.as_str())
    .bind(command.created_at.millis())
    .bind(&command.created_by)
    .bind(i64::from(command.timeout_secs))
    .bind(command.expires_at.map(Timestamp::millis))
    .bind(deliver_by(command.created_at, command.expires_at, command.timeout_secs).millis())
    .bind(command.idempotency_key.as_ref().map(IdempotencyKey::as_str))
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    append_and_commit(
        tx,
        &audit::record(
            m,
            "device.command.create",
            resource(&command.device_id),
            None,
            Some(command.audit_summary()),
        ),
    )
    .await?;
    Ok(CreatedCommand { command, created: true })
}

/// Reads one command of a device.
pub(crate) async fn read(
    conn: &mut PgConnection,
    device: &DeviceId,
    id: &CommandId,
) -> StoreResult<Option<Command>> {
    get(conn, device, id).await
}

/// One page of a device's commands, newest first.
pub(crate) async fn list(
    conn: &mut PgConnection,
    device: &DeviceId,
    q: &CommandQuery,
) -> StoreResult<Page<Command>> {
    let limit = q.limit.get().min(MAX_PAGE_SIZE);
    let before = match q.before_seq {
        Some(seq) => i64::try_from(seq).unwrap_or(i64::MAX),
        None => i64::MAX,
    };
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM device_commands WHERE device_id = $1 AND seq < $2 \
         AND ($3::TEXT IS NULL OR state = $4) ORDER BY seq DESC LIMIT $5"
    )))
    .bind(device.as_str())
    .bind(before)
    .bind(q.state.map(CommandState::as_str))
    .bind(q.state.map(CommandState::as_str))
    .bind(i64::from(limit) + 1)
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    let mut items = rows.iter().map(from_row).collect::<StoreResult<Vec<_>>>()?;
    let has_more = items.len() > limit as usize;
    items.truncate(limit as usize);
    Ok(Page { items, has_more })
}

/// A device's pending commands, oldest first.
pub(crate) async fn pending(
    conn: &mut PgConnection,
    device: &DeviceId,
    now: Timestamp,
    limit: u32,
) -> StoreResult<Vec<Command>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM device_commands WHERE device_id = $1 \
         AND ((state = 'queued' AND deliver_by > $2) OR state = 'delivered') \
         ORDER BY seq LIMIT $3"
    )))
    .bind(device.as_str())
    .bind(now.millis())
    .bind(i64::from(limit))
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    rows.iter().map(from_row).collect()
}

/// Writes `command`'s state and outcome columns, if it is still in state `from`.
async fn write_state(
    conn: &mut PgConnection,
    command: &Command,
    from: CommandState,
) -> StoreResult<bool> {
    let done = sqlx::query(
        "UPDATE device_commands SET state = $1, delivered_at = $2, answer_by = $3, completed_at = $4, \
         result = $5, error_code = $6, error_message = $7 WHERE id = $8 AND state = $9",
    )
    .bind(command.state.as_str())
    .bind(command.delivered_at.map(Timestamp::millis))
    .bind(command.answer_by().map(Timestamp::millis))
    .bind(command.completed_at.map(Timestamp::millis))
    .bind(command.result.as_ref().map(ToString::to_string))
    .bind(command.error.as_ref().map(|e| e.code.as_str()))
    .bind(command.error.as_ref().map(|e| e.message.as_str()))
    .bind(command.id.as_str())
    .bind(from.as_str())
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    Ok(done.rows_affected() == 1)
}

/// Records an observed change.
pub(crate) async fn advance(
    pool: &PgPool,
    device: &DeviceId,
    id: &CommandId,
    progress: &CommandProgress,
    at: Timestamp,
) -> StoreResult<CommandUpdate> {
    let mut tx = begin_write(pool).await?;
    let command = get(&mut tx, device, id).await?.ok_or_else(|| not_found(id))?;
    let Some(next) = store::command_after_progress(&command, progress, at) else {
        return Ok(CommandUpdate { command, changed: false });
    };
    let changed = write_state(&mut tx, &next, command.state).await?;
    tx.commit().await.map_err(db)?;
    Ok(if changed {
        CommandUpdate { command: next, changed }
    } else {
        CommandUpdate { command, changed }
    })
}

/// Cancels a command that has not ended.
pub(crate) async fn cancel(
    pool: &PgPool,
    device: &DeviceId,
    id: &CommandId,
    m: &Mutation,
) -> StoreResult<Command> {
    let mut tx = begin_write(pool).await?;
    let command = get(&mut tx, device, id).await?.ok_or_else(|| not_found(id))?;
    let next = store::command_after_cancel(&command, m.at)?;
    write_state(&mut tx, &next, command.state).await?;
    append_and_commit(
        tx,
        &audit::record(
            m,
            "device.command.cancel",
            resource(device),
            Some(command.audit_summary()),
            Some(next.audit_summary()),
        ),
    )
    .await?;
    Ok(next)
}

/// Ends overdue commands.
pub(crate) async fn expire(pool: &PgPool, now: Timestamp, limit: u32) -> StoreResult<Vec<Command>> {
    let mut tx = begin_write(pool).await?;
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM ( \
           SELECT * FROM device_commands WHERE state = 'queued' AND deliver_by <= $1 \
           UNION ALL \
           SELECT * FROM device_commands WHERE state = 'delivered' AND answer_by <= $1 \
         ) AS overdue ORDER BY id LIMIT $2"
    )))
    .bind(now.millis())
    .bind(i64::from(limit))
    .fetch_all(&mut *tx)
    .await
    .map_err(db)?;
    let mut changed = Vec::with_capacity(rows.len());
    for row in &rows {
        let command = from_row(row)?;
        if let Some(next) = store::command_after_sweep(&command, now)
            && write_state(&mut tx, &next, command.state).await?
        {
            changed.push(next);
        }
    }
    tx.commit().await.map_err(db)?;
    Ok(changed)
}

/// Deletes ended commands completed before `before`.
pub(crate) async fn prune(pool: &PgPool, before: Timestamp, limit: u32) -> StoreResult<u64> {
    let mut tx = begin_write(pool).await?;
    let done = sqlx::query(
        "DELETE FROM device_commands WHERE id IN (SELECT id FROM device_commands \
         WHERE completed_at IS NOT NULL AND completed_at < $1 LIMIT $2)",
    )
    .bind(before.millis())
    .bind(i64::from(limit))
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    tx.commit().await.map_err(db)?;
    Ok(done.rows_affected())
}
