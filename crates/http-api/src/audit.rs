//! `/api/v1/audit`: the hash-chained audit log, oldest first, paged by sequence number.
//!
//! `before` and `after` are the stored JSON text parsed back into JSON. serde_json keeps object
//! keys sorted, so `serde_json::Value::to_string()` of them reproduces the hashed text and a
//! client can verify the chain with `domain::audit::chain_hash`.

use axum::Json;
use axum::extract::State;
use domain::AuditRecord;
use serde::Serialize;
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::auth::{Caller, Viewer};
use crate::error::{ApiError, Problem};
use crate::extract::{RawQuery, parse_limit, set_once, unknown_parameter};
use crate::paging::page_limit;

/// Page size when the request gives no `limit`.
const DEFAULT_LIMIT: u32 = 100;

/// One audit record.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = AuditRecord)]
pub(crate) struct AuditRecordDto {
    /// Position in the chain, from 1, without gaps.
    seq: u64,
    /// When the change happened (RFC 3339).
    at: String,
    /// Who made it: `token:<id> (<name>)` or `system`.
    #[schema(example = "token:tok_0123456789abcdef (ci-pipeline)")]
    actor: String,
    /// What was done, as `resource.verb`.
    #[schema(example = "device.create")]
    action: String,
    /// What it was done to, as `kind/id`.
    #[schema(example = "device/sensor-01")]
    resource: String,
    /// A summary of the resource before the change (`null` on create).
    #[schema(value_type = Option<Object>)]
    before: Option<serde_json::Value>,
    /// A summary of the resource after the change (`null` on delete).
    #[schema(value_type = Option<Object>)]
    after: Option<serde_json::Value>,
    /// Hash of the previous record, 64 lowercase hex digits (zeros for the first).
    prev_hash: String,
    /// Hash of this record, 64 lowercase hex digits.
    hash: String,
}

impl From<&AuditRecord> for AuditRecordDto {
    fn from(r: &AuditRecord) -> Self {
        Self {
            seq: r.seq,
            at: r.at.to_rfc3339(),
            actor: r.actor.clone(),
            action: r.action.clone(),
            resource: r.resource.clone(),
            before: r.before.as_deref().map(|text| stored_json(r.seq, text)),
            after: r.after.as_deref().map(|text| stored_json(r.seq, text)),
            prev_hash: hex::encode(r.prev_hash),
            hash: hex::encode(r.hash),
        }
    }
}

/// Parses stored JSON text. Text that is not JSON (a damaged row) is passed on as a JSON string,
/// so the page still loads and the chain check names the record.
fn stored_json(seq: u64, text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| {
        tracing::warn!(seq, error = %e, "audit record holds text that is not JSON");
        serde_json::Value::String(text.to_owned())
    })
}

/// One page of audit records.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AuditPage {
    /// The records, oldest first.
    items: Vec<AuditRecordDto>,
    /// Pass as `after` to get the next page; `null` when this page was not full. A full last
    /// page is followed by one empty page.
    next_after: Option<u64>,
}

/// Query parameters of the audit log.
#[derive(Debug, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct AuditParams {
    /// Only records with a greater sequence number (default 0: from the start).
    after: Option<u64>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

impl AuditParams {
    fn parse(query: &RawQuery) -> Result<Self, ApiError> {
        let (mut after, mut limit) = (None, None);
        for (key, value) in query.pairs() {
            match key.as_str() {
                "after" => set_once(&mut after, &key, value)?,
                "limit" => set_once(&mut limit, &key, value)?,
                _ => return Err(unknown_parameter(&key, &["after", "limit"])),
            }
        }
        let after = after
            .map(|a| {
                a.parse::<u64>().map_err(|_| {
                    ApiError::InvalidQuery(format!("after must be a sequence number, got {a:?}"))
                })
            })
            .transpose()?;
        Ok(Self { after, limit: Some(parse_limit(limit.as_deref(), DEFAULT_LIMIT)?) })
    }
}

/// Read the audit log, oldest first.
#[utoipa::path(
    get,
    path = "/api/v1/audit",
    tag = "audit",
    params(AuditParams),
    security(("bearer" = ["viewer"])),
    responses(
        (status = 200, description = "One page of records", body = AuditPage),
        (status = 400, description = "`invalid_query`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`: limit out of range", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn list_audit(
    _caller: Caller<Viewer>,
    State(state): State<AppState>,
    query: RawQuery,
) -> Result<Json<AuditPage>, ApiError> {
    let params = AuditParams::parse(&query)?;
    let limit = params.limit.unwrap_or(DEFAULT_LIMIT);
    let records = state.store().audit_records(params.after.unwrap_or(0), page_limit(limit)).await?;
    let next_after = match records.last() {
        Some(last) if records.len() >= limit as usize => Some(last.seq),
        _ => None,
    };
    Ok(Json(AuditPage { items: records.iter().map(AuditRecordDto::from).collect(), next_after }))
}
