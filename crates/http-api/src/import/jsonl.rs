//! The JSON Lines decoder of imports: splits the streamed body on `\n` as chunks arrive and turns
//! each line into an import row or a rejected line.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::import::{LineLimits, Parsed, validated_row};

/// The UTF-8 byte order mark some editors put before the first line.
const BOM: &[u8] = b"\xef\xbb\xbf";

/// One line of a JSON Lines import.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportLine {
    id: String,
    name: Option<String>,
    tags: Option<BTreeMap<String, String>>,
    attributes: Option<serde_json::Value>,
    state: Option<String>,
}

/// Splits a stream of bytes into lines and decodes each.
#[derive(Debug)]
pub(crate) struct JsonlDecoder {
    limits: LineLimits,
    /// The bytes of the current line received so far.
    buf: Vec<u8>,
    /// The current line's number, from 1.
    line: u64,
    /// Whether the current line passed `limits.max_line_bytes`; its bytes are dropped.
    overlong: bool,
}

impl JsonlDecoder {
    pub(crate) fn new(limits: LineLimits) -> Self {
        Self { limits, buf: Vec::new(), line: 1, overlong: false }
    }

    /// Decodes the complete lines in `chunk` (with what earlier chunks left) into `out`.
    pub(crate) fn push(&mut self, mut chunk: &[u8], out: &mut Vec<Parsed>) {
        while !chunk.is_empty() {
            let (part, rest, complete) = match chunk.iter().position(|b| *b == b'\n') {
                Some(i) => (&chunk[..i], &chunk[i + 1..], true),
                None => (chunk, &chunk[chunk.len()..], false),
            };
            self.append(part);
            if complete {
                self.end_line(out);
            }
            chunk = rest;
        }
    }

    /// Decodes the last line when the body does not end with a newline.
    pub(crate) fn finish(&mut self, out: &mut Vec<Parsed>) {
        if !self.buf.is_empty() || self.overlong {
            self.end_line(out);
        }
    }

    fn append(&mut self, part: &[u8]) {
        if self.overlong {
            return;
        }
        if self.buf.len() + part.len() > self.limits.max_line_bytes {
            self.overlong = true;
            self.buf = Vec::new();
        } else {
            self.buf.extend_from_slice(part);
        }
    }

    fn end_line(&mut self, out: &mut Vec<Parsed>) {
        let line = self.line;
        self.line += 1;
        if std::mem::take(&mut self.overlong) {
            out.push(Parsed::rejected(
                line,
                None,
                format!("the line is longer than {} bytes", self.limits.max_line_bytes),
            ));
            return;
        }
        let text = std::mem::take(&mut self.buf);
        let text = text.strip_suffix(b"\r").unwrap_or(&text);
        let text = if line == 1 { text.strip_prefix(BOM).unwrap_or(text) } else { text };
        if text.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        out.push(decode_line(line, text, &self.limits));
    }
}

fn decode_line(line: u64, text: &[u8], limits: &LineLimits) -> Parsed {
    let l: ImportLine = match serde_json::from_slice(text) {
        Ok(l) => l,
        Err(e) => return Parsed::rejected(line, None, format!("not a valid line: {e}")),
    };
    validated_row(line, l.id, l.name, l.tags, l.attributes, l.state.as_deref(), limits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in_chunks(input: &str, chunk: usize) -> Vec<String> {
        let mut d =
            JsonlDecoder::new(LineLimits { max_line_bytes: 200, max_attributes_bytes: 100 });
        let mut out = Vec::new();
        for c in input.as_bytes().chunks(chunk) {
            d.push(c, &mut out);
        }
        d.finish(&mut out);
        out.iter().map(Parsed::summary).collect()
    }

    #[test]
    fn lines_split_across_chunks_decode_alike() {
        let input = concat!(
            "{\"id\":\"a\",\"tags\":{\"site\":\"berlin\"}}\n",
            "\r\n",
            "   \n",
            "{\"id\":\"bad id\"}\n",
            "{\"id\":\"b\",\"colour\":1}\r\n",
            "not json\n",
            "{\"id\":\"c\",\"state\":\"active\"}",
        );
        let expected = [
            "1 a ok",
            "4 - rejected: invalid device id: ' ' is not allowed; use letters, digits and . _ : -",
            "5 - rejected: not a valid line: unknown field `colour`, expected one of `id`, `name`, `tags`, `attributes`, `state` at line 1 column 18",
            "6 - rejected: not a valid line: expected ident at line 1 column 2",
            "7 c ok",
        ];
        for chunk in [1, 2, 3, 7, 1000] {
            assert_eq!(decode_in_chunks(input, chunk), expected, "chunk size {chunk}");
        }
    }

    #[test]
    fn a_byte_order_mark_is_skipped() {
        for chunk in [1, 100] {
            assert_eq!(decode_in_chunks("\u{feff}{\"id\":\"a\"}\n", chunk), ["1 a ok"]);
        }
    }

    #[test]
    fn overlong_lines_are_rejected_and_skipped() {
        let long = format!("{{\"id\":\"x\",\"name\":\"{}\"}}", "n".repeat(300));
        let input = format!("{long}\n{{\"id\":\"y\"}}\n{long}");
        let expected = [
            "1 - rejected: the line is longer than 200 bytes",
            "2 y ok",
            "3 - rejected: the line is longer than 200 bytes",
        ];
        for chunk in [1, 64, 10_000] {
            assert_eq!(decode_in_chunks(&input, chunk), expected, "chunk size {chunk}");
        }
    }
}
