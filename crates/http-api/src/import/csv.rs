//! The CSV decoder of imports: parses the streamed body incrementally with `csv-core` (quoted
//! fields may hold commas and newlines and may span chunks), checks the header row, and turns
//! each record into an import row or a rejected line.
//!
//! Columns: `id` (required), `name`, `state`, `attributes` (a JSON object) and `tag.<key>`. An
//! empty cell means "not given": the field keeps its value (or default); for `tag.<key>` it means
//! the device has no such tag. When the file has any `tag.` column, each row's tags replace the
//! device's tags.
//!
//! A record's line is the physical line of the file where it starts (the header is line 1), so a
//! record after a quoted field that spans lines has a line number larger than its position.

use std::collections::BTreeMap;

use csv_core::{ReadRecordResult, Reader};
use domain::TagKey;

use crate::error::ApiError;
use crate::import::{LineLimits, Parsed, validated_row};

/// Most fields in one record.
const MAX_FIELDS: usize = 1024;
/// The UTF-8 byte order mark some spreadsheet programs put before the first line.
const BOM: char = '\u{feff}';

/// A column of the import CSV.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Column {
    Id,
    Name,
    State,
    Attributes,
    Tag(TagKey),
}

/// Parses a stream of CSV bytes record by record.
#[derive(Debug)]
pub(crate) struct CsvDecoder {
    limits: LineLimits,
    reader: Reader,
    /// The current record's unescaped field bytes, contiguous.
    out: Vec<u8>,
    out_len: usize,
    /// Where each field of the current record ends in `out`.
    ends: Vec<usize>,
    ends_len: usize,
    /// The physical line the reader is on: 1 plus the newlines consumed so far.
    line: u64,
    /// Whether a record has started and not yet ended.
    in_record: bool,
    /// The line where the current record started.
    record_line: u64,
    /// Whether the current record outgrew the limits; its bytes are dropped.
    overlong: bool,
    /// The columns, once the header row was read.
    columns: Option<Vec<Column>>,
}

impl CsvDecoder {
    pub(crate) fn new(limits: LineLimits) -> Self {
        Self {
            reader: Reader::new(),
            out: vec![0; limits.max_line_bytes.clamp(1, 4096)],
            out_len: 0,
            ends: vec![0; 16],
            ends_len: 0,
            line: 1,
            in_record: false,
            record_line: 1,
            overlong: false,
            columns: None,
            limits,
        }
    }

    /// Decodes the complete records in `chunk` (with what earlier chunks left) into `out`.
    ///
    /// # Errors
    /// `invalid_csv_header` when the header row is not acceptable.
    pub(crate) fn push(&mut self, mut input: &[u8], out: &mut Vec<Parsed>) -> Result<(), ApiError> {
        loop {
            if !self.in_record {
                // Line ends between records (blank lines, the `\n` of a `\r\n`) are skipped
                // here, so that a record's first line is known exactly.
                let skip = input.iter().take_while(|b| matches!(b, b'\n' | b'\r')).count();
                self.count_lines(&input[..skip]);
                input = &input[skip..];
                if input.is_empty() {
                    return Ok(());
                }
                self.in_record = true;
                self.record_line = self.line;
            }
            let (result, read) = self.read(input);
            self.count_lines(&input[..read]);
            input = &input[read..];
            match result {
                ReadRecordResult::Record => self.end_record(out)?,
                ReadRecordResult::InputEmpty | ReadRecordResult::End => return Ok(()),
                ReadRecordResult::OutputFull | ReadRecordResult::OutputEndsFull => {}
            }
        }
    }

    /// Decodes the last record when the body does not end with a newline.
    ///
    /// # Errors
    /// `invalid_csv_header` when the body had no header row at all.
    pub(crate) fn finish(&mut self, out: &mut Vec<Parsed>) -> Result<(), ApiError> {
        if self.in_record {
            loop {
                match self.read(&[]).0 {
                    ReadRecordResult::Record => {
                        self.end_record(out)?;
                        break;
                    }
                    ReadRecordResult::End | ReadRecordResult::InputEmpty => break,
                    ReadRecordResult::OutputFull | ReadRecordResult::OutputEndsFull => {}
                }
            }
        }
        if self.columns.is_none() {
            return Err(ApiError::InvalidCsvHeader(
                "the CSV has no header row; the first line names the columns".to_owned(),
            ));
        }
        Ok(())
    }

    /// One step of the reader, growing the buffers it filled. Returns how much input it read.
    fn read(&mut self, input: &[u8]) -> (ReadRecordResult, usize) {
        let (result, read, written, ended) = self.reader.read_record(
            input,
            &mut self.out[self.out_len..],
            &mut self.ends[self.ends_len..],
        );
        self.out_len += written;
        self.ends_len += ended;
        // Past the limits, keep reading to the record's end but drop its bytes.
        if self.out_len > self.limits.max_line_bytes {
            self.overlong = true;
            self.out_len = 0;
        }
        if self.ends_len >= MAX_FIELDS {
            self.overlong = true;
            self.ends_len = 0;
        }
        match result {
            ReadRecordResult::OutputFull if self.out_len == self.out.len() => {
                let len = (self.out.len() * 2).min(self.limits.max_line_bytes + 1);
                self.out.resize(len.max(self.out.len() + 1), 0);
            }
            ReadRecordResult::OutputEndsFull if self.ends_len == self.ends.len() => {
                self.ends.resize(self.ends.len() * 2, 0);
            }
            _ => {}
        }
        (result, read)
    }

    fn count_lines(&mut self, consumed: &[u8]) {
        self.line += consumed.iter().filter(|b| **b == b'\n').count() as u64;
    }

    fn end_record(&mut self, out: &mut Vec<Parsed>) -> Result<(), ApiError> {
        let line = self.record_line;
        let overlong = std::mem::take(&mut self.overlong);
        let (out_len, ends_len) = (self.out_len, self.ends_len);
        self.in_record = false;
        self.out_len = 0;
        self.ends_len = 0;
        if overlong {
            if self.columns.is_none() {
                return Err(ApiError::InvalidCsvHeader("the header row is too long".to_owned()));
            }
            out.push(Parsed::rejected(
                line,
                None,
                format!(
                    "the record is longer than {} bytes or {MAX_FIELDS} fields",
                    self.limits.max_line_bytes
                ),
            ));
            return Ok(());
        }
        let mut fields = Vec::with_capacity(ends_len);
        let mut start = 0;
        for &end in &self.ends[..ends_len] {
            let end = end.min(out_len);
            fields.push(&self.out[start.min(end)..end]);
            start = end;
        }
        match &self.columns {
            None => self.columns = Some(header(&fields)?),
            Some(columns) => out.push(decode_record(line, columns, &fields, &self.limits)),
        }
        Ok(())
    }
}

fn header(fields: &[&[u8]]) -> Result<Vec<Column>, ApiError> {
    let mut columns = Vec::with_capacity(fields.len());
    for (i, field) in fields.iter().enumerate() {
        let mut name = std::str::from_utf8(field)
            .map_err(|_| ApiError::InvalidCsvHeader("the header row is not UTF-8".to_owned()))?;
        if i == 0 {
            // csv-core drops a byte order mark only when it arrives in one chunk.
            name = name.trim_start_matches(BOM);
        }
        let name = name.trim();
        let column = match name {
            "id" => Column::Id,
            "name" => Column::Name,
            "state" => Column::State,
            "attributes" => Column::Attributes,
            other => {
                match other.strip_prefix("tag.") {
                    Some(key) => Column::Tag(TagKey::new(key).map_err(|e| {
                        ApiError::InvalidCsvHeader(format!("column {other:?}: {e}"))
                    })?),
                    None => {
                        return Err(ApiError::InvalidCsvHeader(format!(
                            "unknown column {other:?}; columns are id, name, state, attributes and tag.<key>"
                        )));
                    }
                }
            }
        };
        if columns.contains(&column) {
            return Err(ApiError::InvalidCsvHeader(format!("column {name:?} appears twice")));
        }
        columns.push(column);
    }
    if !columns.contains(&Column::Id) {
        return Err(ApiError::InvalidCsvHeader("the header has no id column".to_owned()));
    }
    Ok(columns)
}

fn decode_record(line: u64, columns: &[Column], fields: &[&[u8]], limits: &LineLimits) -> Parsed {
    if fields.len() != columns.len() {
        return Parsed::rejected(
            line,
            None,
            format!("the record has {} fields but the header has {}", fields.len(), columns.len()),
        );
    }
    let mut id = String::new();
    let (mut name, mut state, mut attributes) = (None, None, None);
    let mut tags = columns.iter().any(|c| matches!(c, Column::Tag(_))).then(BTreeMap::new);
    for (column, field) in columns.iter().zip(fields) {
        let Ok(text) = std::str::from_utf8(field) else {
            return Parsed::rejected(line, None, "the record is not UTF-8".to_owned());
        };
        if text.is_empty() {
            continue;
        }
        match column {
            Column::Id => text.clone_into(&mut id),
            Column::Name => name = Some(text.to_owned()),
            Column::State => state = Some(text.to_owned()),
            Column::Attributes => match serde_json::from_str(text) {
                Ok(value) => attributes = Some(value),
                Err(e) => {
                    let id = domain::DeviceId::new(id.clone()).ok().map(|i| i.to_string());
                    return Parsed::rejected(line, id, format!("attributes are not JSON: {e}"));
                }
            },
            Column::Tag(key) => {
                if let Some(tags) = &mut tags {
                    tags.insert(key.as_str().to_owned(), text.to_owned());
                }
            }
        }
    }
    validated_row(line, id, name, tags, attributes, state.as_deref(), limits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in_chunks(input: &str, chunk: usize) -> Result<Vec<String>, String> {
        let mut d = CsvDecoder::new(LineLimits { max_line_bytes: 64, max_attributes_bytes: 100 });
        let mut out = Vec::new();
        for c in input.as_bytes().chunks(chunk) {
            d.push(c, &mut out).map_err(|e| e.to_string())?;
        }
        d.finish(&mut out).map_err(|e| e.to_string())?;
        Ok(out.iter().map(Parsed::summary).collect())
    }

    #[track_caller]
    fn check(input: &str, expected: &[&str]) {
        for chunk in [1, 2, 5, 1000] {
            assert_eq!(decode_in_chunks(input, chunk).unwrap(), expected, "chunk size {chunk}");
        }
    }

    #[track_caller]
    fn check_header_error(input: &str, expected: &str) {
        for chunk in [1, 1000] {
            assert_eq!(decode_in_chunks(input, chunk).unwrap_err(), expected);
        }
    }

    #[test]
    fn quoted_fields_with_commas_and_newlines_span_chunks() {
        check(
            "id,name,attributes,tag.site\r\na,\"Hall, \"\"north\"\"\",\"{\"\"floor\"\":\n2}\",berlin\r\n\r\nb,,,\nc,x\n",
            &["2 a ok", "5 b ok", "6 - rejected: the record has 2 fields but the header has 4"],
        );
    }

    #[test]
    fn lines_count_blank_lines_and_embedded_newlines() {
        check(
            "id,state\n\n\"x\",bogus\n\"y\ny\",active\nz,active",
            &[
                "3 x rejected: invalid state: \"bogus\" is not a lifecycle state; expected one of registered, active, suspended, decommissioned, retired",
                "4 - rejected: invalid device id: '\\n' is not allowed; use letters, digits and . _ : -",
                "6 z ok",
            ],
        );
    }

    #[test]
    fn overlong_records_are_rejected_and_skipped() {
        let long = "n".repeat(100);
        check(
            &format!("id,name\na,{long}\nb,short\n"),
            &["2 - rejected: the record is longer than 64 bytes or 1024 fields", "3 b ok"],
        );
    }

    #[test]
    fn a_byte_order_mark_is_skipped() {
        check("\u{feff}id,name\na,b\n", &["2 a ok"]);
    }

    #[test]
    fn header_errors() {
        check_header_error("", "the CSV has no header row; the first line names the columns");
        check_header_error(
            "id,colour\na,red\n",
            "unknown column \"colour\"; columns are id, name, state, attributes and tag.<key>",
        );
        check_header_error("name\nx\n", "the header has no id column");
        check_header_error("id,id\n", "column \"id\" appears twice");
        check_header_error(
            "id,tag.bad key\n",
            "column \"tag.bad key\": invalid tag key: ' ' in \"bad key\" is not allowed; use letters, digits and . _ -",
        );
    }
}
