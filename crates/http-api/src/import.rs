//! `POST /api/v1/devices:import`: bulk create-or-update of devices from CSV or JSON Lines.
//!
//! The body is streamed, never buffered whole: each chunk goes through a decoder (`csv` or
//! `jsonl`) that yields one validated [`ImportRow`] or one rejected line per input line. Valid
//! rows reach the store in batches of [`ApiConfig::import_batch_size`](crate::ApiConfig), each
//! batch in one transaction (best effort), or, with `atomic=true`, all at once in a single
//! transaction that commits only when no line at all was rejected.
//!
//! When an atomic import is abandoned, the lines that were valid are reported `unchanged` with a
//! reason saying they were not applied, so that the counts describe what happened to the
//! registry and the line results still add up to the number of lines.
//!
//! After each committed batch, the devices it moved away from `active` are reported on the
//! access-change channel (see `state`), so their live sessions end.

mod csv;
mod jsonl;

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use domain::{AccessChangeReason, DeviceId, ImportRow, LifecycleState};
use futures_util::StreamExt;
use serde::Serialize;
use store::{ImportMode, ImportOutcome};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::auth::{Caller, Operator};
use crate::devices::device_patch;
use crate::error::{ApiError, Problem};
use crate::extract::{RawQuery, set_once, unknown_parameter};

use self::csv::CsvDecoder;
use self::jsonl::JsonlDecoder;

/// The result of an import.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ImportReport {
    /// Lines that created a device.
    created: u64,
    /// Lines that changed a device.
    updated: u64,
    /// Lines that left their device as it was (including valid lines of an abandoned atomic
    /// import).
    unchanged: u64,
    /// Lines that were rejected.
    rejected: u64,
    /// Whether the created and updated lines were written: always for a best-effort import;
    /// for an atomic one only when no line was rejected.
    committed: bool,
    /// One entry per line (blank lines and the CSV header excepted), in line order; only the
    /// rejected ones with `report=rejected`.
    lines: Vec<LineReport>,
}

/// What happened to one line.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct LineReport {
    /// The line's number in the file, from 1 (the CSV header is line 1).
    line: u64,
    /// The device the line is about, when its id was valid.
    id: Option<String>,
    /// What happened.
    result: LineResult,
    /// Why the line was rejected, or why a valid line was not applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

/// What happened to one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LineResult {
    /// A new device was created.
    Created,
    /// An existing device was changed.
    Updated,
    /// The device was left as it was.
    Unchanged,
    /// The line was not applied, and `reason` says why.
    Rejected,
}

/// Query parameters of an import.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ImportParams {
    /// `csv` or `jsonl`; by default taken from `Content-Type` (`text/csv`,
    /// `application/x-ndjson` or `application/jsonl`).
    #[param(value_type = Option<String>, pattern = "^(csv|jsonl)$")]
    format: Option<Format>,
    /// `true`: all lines or nothing, in one transaction; `false` (default): good lines are
    /// written in batches, bad ones reported.
    #[param(value_type = Option<bool>)]
    atomic: bool,
    /// `all` (default): report every line; `rejected`: only rejected lines.
    #[param(value_type = Option<String>, pattern = "^(all|rejected)$")]
    report: Report,
}

/// The format of the import body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Csv,
    Jsonl,
}

/// Which lines the report lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Report {
    All,
    Rejected,
}

impl ImportParams {
    fn parse(query: &RawQuery) -> Result<Self, ApiError> {
        let (mut format, mut atomic, mut report) = (None, None, None);
        for (key, value) in query.pairs() {
            match key.as_str() {
                "format" => set_once(&mut format, &key, value)?,
                "atomic" => set_once(&mut atomic, &key, value)?,
                "report" => set_once(&mut report, &key, value)?,
                _ => return Err(unknown_parameter(&key, &["format", "atomic", "report"])),
            }
        }
        let bad = |key: &str, value: &str, expected: &str| {
            ApiError::InvalidQuery(format!("{key} must be {expected}, got {value:?}"))
        };
        Ok(Self {
            format: match format.as_deref() {
                None => None,
                Some("csv") => Some(Format::Csv),
                Some("jsonl") => Some(Format::Jsonl),
                Some(other) => return Err(bad("format", other, "csv or jsonl")),
            },
            atomic: match atomic.as_deref() {
                None | Some("false") => false,
                Some("true") => true,
                Some(other) => return Err(bad("atomic", other, "true or false")),
            },
            report: match report.as_deref() {
                None | Some("all") => Report::All,
                Some("rejected") => Report::Rejected,
                Some(other) => return Err(bad("report", other, "all or rejected")),
            },
        })
    }
}

/// The format a request's `Content-Type` announces.
fn format_of(headers: &HeaderMap) -> Result<Format, ApiError> {
    let essence = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|ct| ct.split(';').next())
        .map(|e| e.trim().to_ascii_lowercase());
    match essence.as_deref() {
        Some("text/csv") => Ok(Format::Csv),
        Some("application/x-ndjson" | "application/jsonl" | "application/x-jsonlines") => {
            Ok(Format::Jsonl)
        }
        _ => Err(ApiError::UnsupportedMediaType(
            "send text/csv or application/x-ndjson, or name the format with ?format=csv|jsonl"
                .to_owned(),
        )),
    }
}

/// Import devices from CSV or JSON Lines.
///
/// Each line creates its device when missing, otherwise applies its fields as a patch. CSV
/// columns: `id` (required), `name`, `state`, `attributes` (JSON object text), `tag.<key>` (an
/// empty cell: no such tag). JSON Lines: one object per line with `id` and optional `name`,
/// `tags`, `attributes`, `state`; blank lines are skipped.
#[utoipa::path(
    post,
    path = "/api/v1/devices:import",
    tag = "import",
    params(ImportParams),
    request_body(
        description = "CSV with a header row, or JSON Lines",
        content(
            (String = "text/csv", example = "id,name,state,tag.site\nsensor-01,Hall 1,active,berlin\n"),
            (String = "application/x-ndjson", example = "{\"id\":\"sensor-01\",\"tags\":{\"site\":\"berlin\"}}\n"),
        ),
    ),
    security(("bearer" = ["operator"])),
    responses(
        (status = 200, description = "The report; rejected lines do not fail the request", body = ImportReport),
        (status = 400, description = "`invalid_csv_header`, `invalid_query`", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "`payload_too_large`: the body passed the import limit; `import_too_large`: an atomic import with too many rows", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "`unsupported_media_type`", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn import_devices(
    caller: Caller<Operator>,
    State(state): State<AppState>,
    query: RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<ImportReport>, ApiError> {
    let params = ImportParams::parse(&query)?;
    let format = match params.format {
        Some(format) => format,
        None => format_of(&headers)?,
    };
    let config = state.config();
    let max_bytes = config.max_import_bytes;
    let too_large =
        || ApiError::PayloadTooLarge(format!("the import body is larger than {max_bytes} bytes"));
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|len| len > max_bytes) {
        return Err(too_large());
    }

    let limits = LineLimits {
        max_line_bytes: config.max_body_bytes,
        max_attributes_bytes: config.max_attributes_bytes,
    };
    let mut decoder = match format {
        Format::Csv => Decoder::Csv(Box::new(CsvDecoder::new(limits))),
        Format::Jsonl => Decoder::Jsonl(JsonlDecoder::new(limits)),
    };
    let mut importer = Importer::new(&state, &caller, params.atomic, params.report);
    let mut parsed = Vec::new();
    let mut received: u64 = 0;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk
            .map_err(|e| ApiError::InvalidBody(format!("failed to read the request body: {e}")))?;
        received += chunk.len() as u64;
        if received > max_bytes {
            importer.log_abandoned("body too large");
            return Err(too_large());
        }
        decoder.push(&chunk, &mut parsed)?;
        for p in parsed.drain(..) {
            importer.accept(p).await?;
        }
    }
    decoder.finish(&mut parsed)?;
    for p in parsed.drain(..) {
        importer.accept(p).await?;
    }
    Ok(Json(importer.finish().await?))
}

/// Limits that apply to each line of an import.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LineLimits {
    /// Longest line or CSV record, in bytes.
    pub(crate) max_line_bytes: usize,
    /// Largest attributes object, in bytes of compact JSON.
    pub(crate) max_attributes_bytes: usize,
}

/// One decoded line: a row to import, or the reason it cannot be.
#[derive(Debug)]
pub(crate) enum Parsed {
    Row(ImportRow),
    Rejected { line: u64, id: Option<DeviceId>, reason: String },
}

impl Parsed {
    pub(crate) fn rejected(line: u64, id: Option<String>, reason: String) -> Self {
        Self::Rejected { line, id: id.and_then(|i| DeviceId::new(i).ok()), reason }
    }

    /// A one-line description for decoder tests: `<line> <id or -> ok|rejected: <reason>`.
    #[cfg(test)]
    pub(crate) fn summary(&self) -> String {
        match self {
            Self::Row(r) => format!("{} {} ok", r.line, r.id),
            Self::Rejected { line, id, reason } => {
                let id = id.as_ref().map_or("-", DeviceId::as_str);
                format!("{line} {id} rejected: {reason}")
            }
        }
    }
}

/// Validates the fields of one line into a row.
pub(crate) fn validated_row(
    line: u64,
    id: String,
    name: Option<String>,
    tags: Option<BTreeMap<String, String>>,
    attributes: Option<serde_json::Value>,
    state: Option<&str>,
    limits: &LineLimits,
) -> Parsed {
    let id = match DeviceId::new(id) {
        Ok(id) => id,
        Err(e) => return Parsed::Rejected { line, id: None, reason: e.to_string() },
    };
    match device_patch(name, tags, attributes, state, limits.max_attributes_bytes) {
        Ok(patch) => Parsed::Row(ImportRow { line, id, patch }),
        Err(e) => Parsed::Rejected { line, id: Some(id), reason: e.to_string() },
    }
}

/// The decoder for the request's format.
#[derive(Debug)]
enum Decoder {
    Csv(Box<CsvDecoder>),
    Jsonl(JsonlDecoder),
}

impl Decoder {
    fn push(&mut self, chunk: &[u8], out: &mut Vec<Parsed>) -> Result<(), ApiError> {
        match self {
            Self::Csv(d) => d.push(chunk, out),
            Self::Jsonl(d) => {
                d.push(chunk, out);
                Ok(())
            }
        }
    }

    fn finish(&mut self, out: &mut Vec<Parsed>) -> Result<(), ApiError> {
        match self {
            Self::Csv(d) => d.finish(out),
            Self::Jsonl(d) => {
                d.finish(out);
                Ok(())
            }
        }
    }
}

/// Collects rows into batches, writes them, and keeps the report.
struct Importer<'a> {
    state: &'a AppState,
    caller: &'a Caller<Operator>,
    atomic: bool,
    report: Report,
    batch_size: usize,
    max_atomic_rows: usize,
    /// Valid rows not yet written (best effort: up to a batch; atomic: all of them).
    rows: Vec<ImportRow>,
    /// The first line rejected, for the reason given to the lines of an abandoned atomic import.
    first_rejected: Option<u64>,
    /// Lines created, updated, unchanged and rejected, in that order.
    counts: [u64; 4],
    lines: Vec<LineReport>,
}

impl<'a> Importer<'a> {
    fn new(
        state: &'a AppState,
        caller: &'a Caller<Operator>,
        atomic: bool,
        report: Report,
    ) -> Self {
        let config = state.config();
        Self {
            state,
            caller,
            atomic,
            report,
            batch_size: config.import_batch_size.max(1),
            max_atomic_rows: config.max_atomic_import_rows,
            rows: Vec::new(),
            first_rejected: None,
            counts: [0; 4],
            lines: Vec::new(),
        }
    }

    async fn accept(&mut self, parsed: Parsed) -> Result<(), ApiError> {
        match parsed {
            Parsed::Rejected { line, id, reason } => {
                self.record(line, id.as_ref(), LineResult::Rejected, Some(reason));
            }
            Parsed::Row(row) if self.atomic => {
                if self.rows.len() >= self.max_atomic_rows {
                    self.log_abandoned("too many rows for an atomic import");
                    return Err(ApiError::ImportTooLarge(format!(
                        "an atomic import holds at most {} rows; import without atomic=true or split the file",
                        self.max_atomic_rows
                    )));
                }
                self.rows.push(row);
            }
            Parsed::Row(row) => {
                self.rows.push(row);
                if self.rows.len() >= self.batch_size {
                    self.write_batch().await?;
                }
            }
        }
        Ok(())
    }

    /// Writes the pending rows of a best-effort import.
    async fn write_batch(&mut self) -> Result<(), ApiError> {
        let rows = std::mem::take(&mut self.rows);
        let outcomes = self.write(&rows, ImportMode::BestEffort).await?;
        self.report_access_changes(&rows, &outcomes).await;
        for (row, outcome) in rows.iter().zip(outcomes) {
            self.record_outcome(row, outcome);
        }
        Ok(())
    }

    async fn write(
        &self,
        rows: &[ImportRow],
        mode: ImportMode,
    ) -> Result<Vec<ImportOutcome>, ApiError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let m = self.state.mutation_by(&self.caller.token);
        let outcomes = self.state.store().import_devices(rows, mode, &m).await?;
        // Created and changed devices were queued for a recompute of their profiles (an atomic
        // import that rejects a row commits nothing, and the wake costs nothing then).
        self.state.wake_recompute();
        if outcomes.len() != rows.len() {
            return Err(ApiError::internal(format!(
                "the store reported {} outcomes for {} import rows",
                outcomes.len(),
                rows.len()
            )));
        }
        Ok(outcomes)
    }

    async fn finish(mut self) -> Result<ImportReport, ApiError> {
        let committed = if !self.atomic {
            self.write_batch().await?;
            true
        } else if self.first_rejected.is_some() {
            let rows = std::mem::take(&mut self.rows);
            self.abandon(rows, None);
            false
        } else {
            let rows = std::mem::take(&mut self.rows);
            let outcomes = self.write(&rows, ImportMode::Atomic).await?;
            if outcomes.iter().any(|o| matches!(o, ImportOutcome::Rejected(_))) {
                self.abandon(rows, Some(outcomes));
                false
            } else {
                self.report_access_changes(&rows, &outcomes).await;
                for (row, outcome) in rows.iter().zip(outcomes) {
                    self.record_outcome(row, outcome);
                }
                true
            }
        };
        self.lines.sort_by_key(|l| l.line);
        let [created, updated, unchanged, rejected] = self.counts;
        Ok(ImportReport { created, updated, unchanged, rejected, committed, lines: self.lines })
    }

    /// Sends an access-change event for each device a committed batch moved away from `active`.
    ///
    /// Outcomes do not carry the resulting state, so the rows say it: a row that sets a state
    /// and whose outcome is `updated` set that state. The last such row of a device decides,
    /// because the batch was one transaction: a device suspended and reactivated within it never
    /// lost access as far as anyone could see.
    async fn report_access_changes(&self, rows: &[ImportRow], outcomes: &[ImportOutcome]) {
        let mut lost = BTreeMap::new();
        for (row, outcome) in rows.iter().zip(outcomes) {
            if let (ImportOutcome::Updated, Some(s)) = (outcome, row.patch.state) {
                lost.insert(&row.id, s != LifecycleState::Active);
            }
        }
        for (id, lost) in lost {
            if lost {
                self.state.access_changed(id.clone(), AccessChangeReason::NotActive).await;
            }
        }
    }

    /// Reports the rows of an atomic import that will not be written: those the store rejected
    /// with its reason, the others as unchanged, naming the first rejected line.
    fn abandon(&mut self, rows: Vec<ImportRow>, outcomes: Option<Vec<ImportOutcome>>) {
        let mut outcomes = outcomes.map(Vec::into_iter);
        let mut not_applied = Vec::with_capacity(rows.len());
        for row in rows {
            match outcomes.as_mut().and_then(Iterator::next) {
                Some(ImportOutcome::Rejected(reason)) => {
                    self.record(row.line, Some(&row.id), LineResult::Rejected, Some(reason));
                }
                _ => not_applied.push(row),
            }
        }
        let first = self.first_rejected.unwrap_or_default();
        let reason = format!("not applied: line {first} was rejected and the import is atomic");
        for row in not_applied {
            self.record(row.line, Some(&row.id), LineResult::Unchanged, Some(reason.clone()));
        }
    }

    fn record_outcome(&mut self, row: &ImportRow, outcome: ImportOutcome) {
        let (result, reason) = match outcome {
            ImportOutcome::Created => (LineResult::Created, None),
            ImportOutcome::Updated => (LineResult::Updated, None),
            ImportOutcome::Unchanged => (LineResult::Unchanged, None),
            ImportOutcome::Rejected(reason) => (LineResult::Rejected, Some(reason)),
        };
        self.record(row.line, Some(&row.id), result, reason);
    }

    fn record(
        &mut self,
        line: u64,
        id: Option<&DeviceId>,
        result: LineResult,
        reason: Option<String>,
    ) {
        if result == LineResult::Rejected && self.first_rejected.is_none_or(|f| line < f) {
            self.first_rejected = Some(line);
        }
        let slot = match result {
            LineResult::Created => 0,
            LineResult::Updated => 1,
            LineResult::Unchanged => 2,
            LineResult::Rejected => 3,
        };
        self.counts[slot] += 1;
        if self.report == Report::All || result == LineResult::Rejected {
            self.lines.push(LineReport {
                line,
                id: id.map(|i| i.as_str().to_owned()),
                result,
                reason,
            });
        }
    }

    fn log_abandoned(&self, why: &str) {
        let [created, updated, unchanged, rejected] = self.counts;
        tracing::info!(why, created, updated, unchanged, rejected, "import abandoned");
    }
}
