//! Translation of a device [`Filter`] into one SQL page query, values always as bind parameters.
//!
//! A page is `… ORDER BY <key> LIMIT ?` with keyset pagination (`<key> > cursor`), and it must stay
//! fast at millions of devices. So the query is shaped for SQLite's planner rather than left to it:
//!
//! - The *driver* is the index whose order is the page order, so no page ever sorts:
//!   - a top-level `tags.k = 'v'` drives from `device_tags`' primary key `(key, value, device_id)`,
//!     which lists the matching devices in id order;
//!   - otherwise `devices` is walked in id order, or through `(state, id)` / `(name, id)` when a
//!     top-level `state = …` / `name = …` lets the planner seek there; a top-level condition on `id`
//!     (`=`, `in`, `startswith`) is a seek or a range on the primary key, and it and `name = …`
//!     take precedence over a tag equality.
//! - Every other comparison is written so that it cannot be used to pick an index (`+d.state`):
//!   an `or` or `in` over an indexed column would otherwise tempt the planner into collecting all
//!   matches and sorting them, which is what a first page must never do.
//! - Tag conditions are correlated `EXISTS` probes on `(device_id, key)`: one index seek per
//!   candidate device. A missing tag makes `=`, `in`, `startswith` and `has` false and `!=` true,
//!   as [`Filter::matches`] says.
//! - `startswith` is a range (`>= prefix and < successor(prefix)`), never `LIKE`: `LIKE` cannot use
//!   an index with a bound pattern, treats `_` and `%` as wildcards and ignores ASCII case.
//!
//! Text compares with SQLite's `BINARY` collation, byte order of UTF-8, which is code point order;
//! [`prefix_successor`] relies on that.

use std::fmt::Write as _;

use domain::{DeviceId, Field, Filter, GroupName, TagKey};

/// The `devices` columns every device query selects, in [`crate::rows::DeviceRow`] order.
pub(crate) const DEVICE_COLUMNS: &str =
    "d.id, d.name, d.state, d.tags_json, d.attributes_json, d.created_at, d.updated_at, d.version";

/// A bind parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Arg {
    /// A text value.
    Text(String),
    /// An integer value.
    Int(i64),
}

/// SQL text and its bind parameters, in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Sql {
    /// The statement, with `?` placeholders only.
    pub(crate) text: String,
    /// One value per placeholder.
    pub(crate) args: Vec<Arg>,
}

impl Sql {
    fn push(&mut self, s: &str) {
        self.text.push_str(s);
    }

    fn bind(&mut self, s: &str) {
        self.text.push('?');
        self.args.push(Arg::Text(s.to_owned()));
    }

    fn bind_list(&mut self, values: &[String]) {
        self.text.push('(');
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                self.text.push_str(", ");
            }
            self.bind(v);
        }
        self.text.push(')');
    }
}

/// Which devices a page is taken from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Scope<'a> {
    /// The whole registry.
    All,
    /// The explicit members of a static group.
    StaticGroup(&'a GroupName),
}

/// Builds the query for one page: devices of `scope` matching `filter` whose id sorts after
/// `after`, in id order, at most `fetch` rows.
pub(crate) fn device_page(
    scope: Scope<'_>,
    filter: Option<&Filter>,
    after: Option<&DeviceId>,
    fetch: u32,
) -> Sql {
    let mut conjuncts = Vec::new();
    if let Some(f) = filter {
        flatten_and(f, &mut conjuncts);
    }
    let mut sql = Sql::default();
    let _ = write!(sql.text, "SELECT {DEVICE_COLUMNS} ");
    // `CROSS JOIN` makes SQLite keep the written join order: the driving table stays outermost.
    let (key, top_level_indexable) = match scope {
        Scope::StaticGroup(name) => {
            sql.push(
                "FROM group_members g CROSS JOIN devices d \
                 WHERE d.id = g.device_id AND g.group_name = ",
            );
            sql.bind(name.as_str());
            ("g.device_id", false)
        }
        Scope::All => match tag_driver(&conjuncts) {
            Some((i, k, v)) => {
                conjuncts.remove(i);
                sql.push(
                    "FROM device_tags t CROSS JOIN devices d \
                     WHERE d.id = t.device_id AND t.key = ",
                );
                sql.bind(k.as_str());
                sql.push(" AND t.value = ");
                sql.bind(v);
                ("t.device_id", false)
            }
            None => {
                sql.push("FROM devices d WHERE 1");
                ("d.id", true)
            }
        },
    };
    if let Some(after) = after {
        let _ = write!(sql.text, " AND {key} > ");
        sql.bind(after.as_str());
    }
    for c in conjuncts {
        sql.push(" AND ");
        emit(&mut sql, c, top_level_indexable);
    }
    let _ = write!(sql.text, " ORDER BY {key} LIMIT ?");
    sql.args.push(Arg::Int(i64::from(fetch)));
    sql
}

/// The position of the top-level tag equality that should drive the page, if any.
///
/// A top-level condition on the id (a seek or a short range on the primary key) or an equality on
/// the name (names are nearly unique) is a better driver, so it wins.
fn tag_driver<'a>(conjuncts: &[&'a Filter]) -> Option<(usize, &'a TagKey, &'a str)> {
    let better = conjuncts.iter().any(|c| {
        matches!(
            c,
            Filter::Eq(Field::Id | Field::Name, _)
                | Filter::In(Field::Id, _)
                | Filter::StartsWith(Field::Id, _)
        )
    });
    if better {
        return None;
    }
    conjuncts.iter().enumerate().find_map(|(i, c)| match c {
        Filter::Eq(Field::Tag(k), v) => Some((i, k, v.as_str())),
        _ => None,
    })
}

fn flatten_and<'a>(f: &'a Filter, out: &mut Vec<&'a Filter>) {
    match f {
        Filter::And(parts) => parts.iter().for_each(|p| flatten_and(p, out)),
        other => out.push(other),
    }
}

/// What a comparison reads: a `devices` column, or a tag probed through `device_tags`.
enum Target<'a> {
    Column(&'static str),
    Tag(&'a TagKey),
}

/// The target of `field`. `indexable` leaves the planner free to seek on a column; otherwise the
/// unary `+` keeps the planner from driving the page through it.
fn target(field: &Field, indexable: bool) -> Target<'_> {
    Target::Column(match (field, indexable) {
        (Field::Tag(k), _) => return Target::Tag(k),
        (Field::Id, true) => "d.id",
        (Field::Id, false) => "+d.id",
        (Field::Name, true) => "d.name",
        (Field::Name, false) => "+d.name",
        (Field::State, true) => "d.state",
        (Field::State, false) => "+d.state",
    })
}

/// Appends the boolean SQL expression for `f`. `top_level` is true for a conjunct of the whole
/// filter in a query that walks `devices` itself; only there may a comparison pick the index.
fn emit(sql: &mut Sql, f: &Filter, top_level: bool) {
    // Equality on any column, and `in` and `startswith` on the id, can drive the page in id order
    // (see the module documentation); `in` or a range on name or state would need a sort.
    let id_seek = |field: &Field| top_level && *field == Field::Id;
    match f {
        Filter::And(parts) if parts.is_empty() => sql.push("1"),
        Filter::Or(parts) if parts.is_empty() => sql.push("0"),
        Filter::And(parts) | Filter::Or(parts) => {
            let op = if matches!(f, Filter::And(_)) { " AND " } else { " OR " };
            sql.push("(");
            for (i, p) in parts.iter().enumerate() {
                if i > 0 {
                    sql.push(op);
                }
                emit(sql, p, false);
            }
            sql.push(")");
        }
        Filter::Not(inner) => {
            sql.push("NOT (");
            emit(sql, inner, false);
            sql.push(")");
        }
        Filter::Has(k) => {
            tag_probe(sql, k);
            sql.push(")");
        }
        Filter::Eq(field, v) => match target(field, top_level) {
            Target::Column(col) => {
                let _ = write!(sql.text, "{col} = ");
                sql.bind(v);
            }
            Target::Tag(k) => {
                tag_probe(sql, k);
                sql.push(" AND x.value = ");
                sql.bind(v);
                sql.push(")");
            }
        },
        Filter::Ne(field, v) => match target(field, false) {
            Target::Column(col) => {
                let _ = write!(sql.text, "{col} != ");
                sql.bind(v);
            }
            Target::Tag(k) => {
                sql.push("NOT ");
                tag_probe(sql, k);
                sql.push(" AND x.value = ");
                sql.bind(v);
                sql.push(")");
            }
        },
        Filter::In(field, vs) => match target(field, id_seek(field)) {
            Target::Column(col) => {
                let _ = write!(sql.text, "{col} IN ");
                sql.bind_list(vs);
            }
            Target::Tag(k) => {
                tag_probe(sql, k);
                sql.push(" AND x.value IN ");
                sql.bind_list(vs);
                sql.push(")");
            }
        },
        Filter::StartsWith(field, prefix) => match target(field, id_seek(field)) {
            Target::Column(col) => {
                sql.push("(");
                prefix_range(sql, col, prefix);
                sql.push(")");
            }
            Target::Tag(k) => {
                tag_probe(sql, k);
                sql.push(" AND ");
                prefix_range(sql, "x.value", prefix);
                sql.push(")");
            }
        },
    }
}

/// Opens `EXISTS (… WHERE x.device_id = d.id AND x.key = ?`; the caller may add a value condition
/// and closes the parenthesis.
fn tag_probe(sql: &mut Sql, key: &TagKey) {
    sql.push("EXISTS (SELECT 1 FROM device_tags x WHERE x.device_id = d.id AND x.key = ");
    sql.bind(key.as_str());
}

/// `expr >= prefix AND expr < successor(prefix)`: exactly the texts that start with `prefix`.
fn prefix_range(sql: &mut Sql, expr: &str, prefix: &str) {
    let _ = write!(sql.text, "{expr} >= ");
    sql.bind(prefix);
    if let Some(upper) = prefix_successor(prefix) {
        let _ = write!(sql.text, " AND {expr} < ");
        sql.bind(&upper);
    }
}

/// The smallest text greater than every text that starts with `prefix`: the prefix with its last
/// character replaced by the next code point (dropping trailing `U+10FFFF`s, which have no next).
/// `None` when no such text exists (the prefix is empty or all `U+10FFFF`): then every text at or
/// above the prefix starts with it.
///
/// Correct because UTF-8 byte order, which SQLite's `BINARY` collation compares, is code point order.
pub(crate) fn prefix_successor(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = match last {
            '\u{D7FF}' => Some('\u{E000}'),
            c => char::from_u32(u32::from(c) + 1),
        };
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

#[cfg(test)]
mod tests;
