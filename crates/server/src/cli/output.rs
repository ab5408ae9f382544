//! Writing command output: tables for people, JSON for scripts, errors to stderr.

use std::io::Write as _;

/// Writes text to stdout as it is.
///
/// # Errors
/// When stdout is closed.
pub(crate) fn write_raw(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    if !text.ends_with('\n') {
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

/// Writes a JSON value, pretty-printed.
///
/// # Errors
/// When stdout is closed.
pub(crate) fn write_json(value: &serde_json::Value) -> anyhow::Result<()> {
    write_raw(&serde_json::to_string_pretty(value)?)
}

/// Writes an error message to stderr, prefixed with `error: `.
pub(crate) fn error(message: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "error: {}", message.trim_end());
}

/// Writes a note to stderr (progress, hints), keeping stdout for results.
pub(crate) fn note(message: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{message}");
}

/// A plain-text table with aligned columns.
#[derive(Debug)]
pub(crate) struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new(header: &[&str]) -> Self {
        Self { header: header.iter().map(|h| (*h).to_owned()).collect(), rows: Vec::new() }
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub(crate) fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(cell.chars().count());
                }
            }
        }
        let mut out = String::new();
        let mut line = |cells: &[String]| {
            let mut parts = Vec::with_capacity(cells.len());
            for (i, cell) in cells.iter().enumerate() {
                let w = widths.get(i).copied().unwrap_or(0);
                if i + 1 == cells.len() {
                    parts.push(cell.clone());
                } else {
                    parts.push(format!("{cell:<w$}"));
                }
            }
            out.push_str(parts.join("  ").trim_end());
            out.push('\n');
        };
        line(&self.header);
        for row in &self.rows {
            line(row);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let mut t = Table::new(&["ID", "STATE"]);
        t.row(vec!["sensor-1".into(), "active".into()]);
        t.row(vec!["x".into(), "registered".into()]);
        assert_eq!(t.render(), "ID        STATE\nsensor-1  active\nx         registered\n");
    }
}
