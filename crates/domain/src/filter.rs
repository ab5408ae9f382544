//! The device filter expression language.
//!
//! ```text
//! expr       := or
//! or         := and ("or" and)*
//! and        := unary ("and" unary)*
//! unary      := "not" unary | "(" expr ")" | "has" tag | comparison
//! comparison := field ("=" | "!=") string
//!             | field "startswith" string
//!             | field ["not"] "in" "(" string ("," string)* ")"
//! field      := "id" | "name" | "state" | tag
//! tag        := "tags." key
//! string     := "'" (any character, "''" for a quote)* "'"
//! ```
//! Keywords are case-insensitive. Values are always quoted strings; `state` values must name a
//! lifecycle state. A missing tag compares unequal to everything (`tags.site != 'x'` is true for a
//! device without the tag). See `docs/filters.md` for the operator-facing description.

use std::fmt;

use crate::device::{Device, LifecycleState, TagKey};

/// Longest filter expression accepted, in bytes.
pub const MAX_FILTER_LEN: usize = 4096;
/// Deepest nesting of parentheses and `not`.
pub const MAX_DEPTH: usize = 16;
/// Most comparisons in one expression.
pub const MAX_TERMS: usize = 64;
/// Most values in one `in (…)` list.
pub const MAX_IN_VALUES: usize = 256;

/// A field a filter compares.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Field {
    /// The device id.
    Id,
    /// The display name.
    Name,
    /// The lifecycle state.
    State,
    /// A tag's value.
    Tag(TagKey),
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Id => f.write_str("id"),
            Self::Name => f.write_str("name"),
            Self::State => f.write_str("state"),
            Self::Tag(k) => write!(f, "tags.{k}"),
        }
    }
}

/// A parsed, validated filter expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// All of the parts hold.
    And(Vec<Filter>),
    /// Any of the parts holds.
    Or(Vec<Filter>),
    /// The part does not hold.
    Not(Box<Filter>),
    /// `field = value`.
    Eq(Field, String),
    /// `field != value` (true when a tag is missing).
    Ne(Field, String),
    /// `field in (values…)`.
    In(Field, Vec<String>),
    /// `field startswith prefix`.
    StartsWith(Field, String),
    /// `has tags.key`: the tag is present, whatever its value.
    Has(TagKey),
}

/// Why a filter expression was rejected, with the byte offset where the problem is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid filter at position {position}: {message}")]
pub struct FilterError {
    /// Byte offset into the expression.
    pub position: usize,
    /// What is wrong.
    pub message: String,
}

impl Filter {
    /// Parses a filter expression.
    ///
    /// # Errors
    /// [`FilterError`] naming the position and the problem.
    pub fn parse(input: &str) -> Result<Self, FilterError> {
        if input.len() > MAX_FILTER_LEN {
            return Err(FilterError {
                position: MAX_FILTER_LEN,
                message: format!("expression is longer than {MAX_FILTER_LEN} bytes"),
            });
        }
        let tokens = lex(input)?;
        let mut p = Parser { tokens, pos: 0, depth: 0, terms: 0, end: input.len() };
        let f = p.or()?;
        if let Some((tok, at)) = p.tokens.get(p.pos) {
            return Err(FilterError { position: *at, message: format!("unexpected {tok}") });
        }
        Ok(f)
    }

    /// Joins filters with `and`, flattening; `None` when the list is empty.
    pub fn all(parts: Vec<Filter>) -> Option<Filter> {
        let mut flat = Vec::with_capacity(parts.len());
        for p in parts {
            match p {
                Filter::And(inner) => flat.extend(inner),
                other => flat.push(other),
            }
        }
        match flat.len() {
            0 => None,
            1 => flat.pop(),
            _ => Some(Filter::And(flat)),
        }
    }

    /// Evaluates the filter against a device in memory.
    pub fn matches(&self, d: &Device) -> bool {
        let value = |field: &Field| -> Option<String> {
            match field {
                Field::Id => Some(d.id.as_str().to_owned()),
                Field::Name => Some(d.name.as_str().to_owned()),
                Field::State => Some(d.state.as_str().to_owned()),
                Field::Tag(k) => d.tags.get(k).map(str::to_owned),
            }
        };
        match self {
            Filter::And(parts) => parts.iter().all(|p| p.matches(d)),
            Filter::Or(parts) => parts.iter().any(|p| p.matches(d)),
            Filter::Not(inner) => !inner.matches(d),
            Filter::Eq(f, v) => value(f).as_deref() == Some(v.as_str()),
            Filter::Ne(f, v) => value(f).as_deref() != Some(v.as_str()),
            Filter::In(f, vs) => value(f).is_some_and(|x| vs.contains(&x)),
            Filter::StartsWith(f, prefix) => {
                value(f).is_some_and(|x| x.starts_with(prefix.as_str()))
            }
            Filter::Has(k) => d.tags.get(k).is_some(),
        }
    }
}

impl fmt::Display for Filter {
    /// Renders the filter back as an expression that parses to the same filter.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn quote(s: &str) -> String {
            format!("'{}'", s.replace('\'', "''"))
        }
        fn join(f: &mut fmt::Formatter<'_>, parts: &[Filter], op: &str) -> fmt::Result {
            f.write_str("(")?;
            for (i, p) in parts.iter().enumerate() {
                if i > 0 {
                    write!(f, " {op} ")?;
                }
                write!(f, "{p}")?;
            }
            f.write_str(")")
        }
        match self {
            Filter::And(parts) => join(f, parts, "and"),
            Filter::Or(parts) => join(f, parts, "or"),
            Filter::Not(inner) => write!(f, "not {inner}"),
            Filter::Eq(field, v) => write!(f, "{field} = {}", quote(v)),
            Filter::Ne(field, v) => write!(f, "{field} != {}", quote(v)),
            Filter::In(field, vs) => {
                let list: Vec<String> = vs.iter().map(|v| quote(v)).collect();
                write!(f, "{field} in ({})", list.join(", "))
            }
            Filter::StartsWith(field, v) => write!(f, "{field} startswith {}", quote(v)),
            Filter::Has(k) => write!(f, "has tags.{k}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    Str(String),
    LParen,
    RParen,
    Comma,
    Eq,
    Ne,
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Ident(s) => write!(f, "{s:?}"),
            Tok::Str(s) => write!(f, "string '{s}'"),
            Tok::LParen => f.write_str("'('"),
            Tok::RParen => f.write_str("')'"),
            Tok::Comma => f.write_str("','"),
            Tok::Eq => f.write_str("'='"),
            Tok::Ne => f.write_str("'!='"),
        }
    }
}

fn lex(input: &str) -> Result<Vec<(Tok, usize)>, FilterError> {
    let mut out = Vec::new();
    let mut chars = input.char_indices().peekable();
    while let Some(&(at, c)) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '(' | ')' | ',' | '=' => {
                chars.next();
                out.push((
                    match c {
                        '(' => Tok::LParen,
                        ')' => Tok::RParen,
                        ',' => Tok::Comma,
                        _ => Tok::Eq,
                    },
                    at,
                ));
            }
            '!' => {
                chars.next();
                match chars.next() {
                    Some((_, '=')) => out.push((Tok::Ne, at)),
                    _ => return Err(FilterError { position: at, message: "expected '!='".into() }),
                }
            }
            '\'' => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next() {
                        Some((_, '\'')) => {
                            if matches!(chars.peek(), Some((_, '\''))) {
                                chars.next();
                                s.push('\'');
                            } else {
                                break;
                            }
                        }
                        Some((_, ch)) => s.push(ch),
                        None => {
                            return Err(FilterError {
                                position: at,
                                message: "unterminated string".into(),
                            });
                        }
                    }
                }
                out.push((Tok::Str(s), at));
            }
            c if c.is_ascii_alphanumeric() || c == '_' => {
                let mut s = String::new();
                while let Some(&(_, ch)) = chars.peek() {
                    if ch.is_ascii_alphanumeric() || matches!(ch, '_' | '.' | '-') {
                        s.push(ch);
                        chars.next();
                    } else {
                        break;
                    }
                }
                out.push((Tok::Ident(s), at));
            }
            other => {
                return Err(FilterError {
                    position: at,
                    message: format!(
                        "unexpected character {other:?} (values must be quoted: 'value')"
                    ),
                });
            }
        }
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<(Tok, usize)>,
    pos: usize,
    depth: usize,
    terms: usize,
    end: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.pos).map(|(t, _)| t)
    }

    fn at(&self) -> usize {
        self.tokens.get(self.pos).map_or(self.end, |(_, at)| *at)
    }

    fn err<T>(&self, message: impl Into<String>) -> Result<T, FilterError> {
        Err(FilterError { position: self.at(), message: message.into() })
    }

    fn keyword(&mut self, kw: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Ident(s)) if s.eq_ignore_ascii_case(kw)) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, tok: &Tok) -> Result<(), FilterError> {
        if self.peek() == Some(tok) {
            self.pos += 1;
            Ok(())
        } else {
            match self.peek() {
                Some(found) => self.err(format!("expected {tok}, found {found}")),
                None => self.err(format!("expected {tok}, found end of expression")),
            }
        }
    }

    fn or(&mut self) -> Result<Filter, FilterError> {
        let mut parts = vec![self.and()?];
        while self.keyword("or") {
            parts.push(self.and()?);
        }
        Ok(if parts.len() == 1 { parts.remove(0) } else { Filter::Or(parts) })
    }

    fn and(&mut self) -> Result<Filter, FilterError> {
        let mut parts = vec![self.unary()?];
        while self.keyword("and") {
            parts.push(self.unary()?);
        }
        Ok(if parts.len() == 1 { parts.remove(0) } else { Filter::And(parts) })
    }

    fn nested<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, FilterError>,
    ) -> Result<T, FilterError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return self.err(format!("nesting deeper than {MAX_DEPTH}"));
        }
        let r = f(self);
        self.depth -= 1;
        r
    }

    fn unary(&mut self) -> Result<Filter, FilterError> {
        if self.keyword("not") {
            return self.nested(|p| Ok(Filter::Not(Box::new(p.unary()?))));
        }
        if self.peek() == Some(&Tok::LParen) {
            self.pos += 1;
            let inner = self.nested(Self::or)?;
            self.expect(&Tok::RParen)?;
            return Ok(inner);
        }
        self.terms += 1;
        if self.terms > MAX_TERMS {
            return self.err(format!("more than {MAX_TERMS} comparisons"));
        }
        if self.keyword("has") {
            return match self.field()? {
                Field::Tag(k) => Ok(Filter::Has(k)),
                other => self.err(format!("'has' takes a tag (tags.key), not {other}")),
            };
        }
        let field = self.field()?;
        let op_at = self.at();
        match self.peek().cloned() {
            Some(Tok::Eq) => {
                self.pos += 1;
                let v = self.value(&field)?;
                Ok(Filter::Eq(field, v))
            }
            Some(Tok::Ne) => {
                self.pos += 1;
                let v = self.value(&field)?;
                Ok(Filter::Ne(field, v))
            }
            Some(Tok::Ident(kw)) if kw.eq_ignore_ascii_case("startswith") => {
                self.pos += 1;
                if field == Field::State {
                    return Err(FilterError {
                        position: op_at,
                        message: "state supports =, != and in".into(),
                    });
                }
                let v = self.string()?;
                Ok(Filter::StartsWith(field, v))
            }
            Some(Tok::Ident(kw)) if kw.eq_ignore_ascii_case("in") => {
                self.pos += 1;
                let vs = self.list(&field)?;
                Ok(Filter::In(field, vs))
            }
            Some(Tok::Ident(kw)) if kw.eq_ignore_ascii_case("not") => {
                self.pos += 1;
                if !self.keyword("in") {
                    return self.err("expected 'in' after 'not'");
                }
                let vs = self.list(&field)?;
                Ok(Filter::Not(Box::new(Filter::In(field, vs))))
            }
            Some(other) => self.err(format!(
                "expected =, !=, in, not in or startswith after {field}, found {other}"
            )),
            None => self.err(format!("expected =, !=, in, not in or startswith after {field}")),
        }
    }

    fn field(&mut self) -> Result<Field, FilterError> {
        let Some(Tok::Ident(name)) = self.peek().cloned() else {
            return match self.peek() {
                Some(t) => {
                    self.err(format!("expected a field (id, name, state, tags.<key>), found {t}"))
                }
                None => self
                    .err("expected a field (id, name, state, tags.<key>), found end of expression"),
            };
        };
        let field = match name.to_ascii_lowercase().as_str() {
            "id" => Field::Id,
            "name" => Field::Name,
            "state" => Field::State,
            _ => match name.strip_prefix("tags.") {
                Some(key) => match TagKey::new(key) {
                    Ok(k) => Field::Tag(k),
                    Err(e) => return self.err(e.to_string()),
                },
                None => {
                    return self.err(format!(
                        "unknown field {name:?}; fields are id, name, state, tags.<key>"
                    ));
                }
            },
        };
        self.pos += 1;
        Ok(field)
    }

    fn string(&mut self) -> Result<String, FilterError> {
        match self.peek().cloned() {
            Some(Tok::Str(s)) => {
                self.pos += 1;
                Ok(s)
            }
            Some(t) => self.err(format!("expected a quoted string, found {t}")),
            None => self.err("expected a quoted string, found end of expression"),
        }
    }

    fn value(&mut self, field: &Field) -> Result<String, FilterError> {
        let at = self.at();
        let v = self.string()?;
        if *field == Field::State && v.parse::<LifecycleState>().is_err() {
            return Err(FilterError {
                position: at,
                message: format!(
                    "{v:?} is not a lifecycle state (registered, active, suspended, decommissioned, retired)"
                ),
            });
        }
        Ok(v)
    }

    fn list(&mut self, field: &Field) -> Result<Vec<String>, FilterError> {
        self.expect(&Tok::LParen)?;
        let mut values = vec![self.value(field)?];
        while self.peek() == Some(&Tok::Comma) {
            self.pos += 1;
            values.push(self.value(field)?);
            if values.len() > MAX_IN_VALUES {
                return self.err(format!("more than {MAX_IN_VALUES} values in a list"));
            }
        }
        self.expect(&Tok::RParen)?;
        Ok(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(input: &str, expected: &str) {
        let got = match Filter::parse(input) {
            Ok(f) => f.to_string(),
            Err(e) => format!("error: {e}"),
        };
        assert_eq!(got, expected, "{input}");
    }

    #[test]
    fn parses() {
        check(
            "tags.site = 'berlin' and state = 'active'",
            "(tags.site = 'berlin' and state = 'active')",
        );
        check("id startswith 'sensor-'", "id startswith 'sensor-'");
        check("state in ('active','suspended')", "state in ('active', 'suspended')");
        check("state not in ('retired')", "not state in ('retired')");
        check(
            "a = 'x'",
            "error: invalid filter at position 0: unknown field \"a\"; fields are id, name, state, tags.<key>",
        );
        check("has tags.site or not (name = 'it''s')", "(has tags.site or not name = 'it''s')");
        check("NAME != 'x' AND tags.fw-ver = '1.2'", "(name != 'x' and tags.fw-ver = '1.2')");
    }

    #[test]
    fn rejects() {
        check(
            "state = 'sleeping'",
            "error: invalid filter at position 8: \"sleeping\" is not a lifecycle state (registered, active, suspended, decommissioned, retired)",
        );
        check(
            "tags.site = berlin",
            "error: invalid filter at position 12: expected a quoted string, found \"berlin\"",
        );
        check("tags.site = 'x", "error: invalid filter at position 12: unterminated string");
        check(
            "(id = 'a'",
            "error: invalid filter at position 9: expected ')', found end of expression",
        );
        check("id = 'a' id = 'b'", "error: invalid filter at position 9: unexpected \"id\"");
        check(
            "",
            "error: invalid filter at position 0: expected a field (id, name, state, tags.<key>), found end of expression",
        );
        check(
            "has id",
            "error: invalid filter at position 6: 'has' takes a tag (tags.key), not id",
        );
        let deep = format!("{}id = 'a'{}", "(".repeat(20), ")".repeat(20));
        assert!(Filter::parse(&deep).is_err());
    }

    #[test]
    fn round_trips() {
        for input in
            ["(tags.a = 'x' or tags.b in ('1', '2')) and not state = 'retired'", "has tags.x"]
        {
            let f = Filter::parse(input).unwrap();
            assert_eq!(Filter::parse(&f.to_string()).unwrap(), f);
        }
    }
}
