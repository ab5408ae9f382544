//! Device pages: a scope, a [`domain::Filter`] and a cursor, translated to one SQL query.
//!
//! Values always travel as bind parameters; only fixed fragments and column names are written into
//! the SQL text. A page is `… ORDER BY <key> LIMIT $n` with keyset pagination (`<key> > $cursor`),
//! and must stay fast at millions of devices, so the query names the table that drives it, the one
//! whose index lists the page in order, so that a first page never has to collect and sort every
//! match:
//!
//! - a static group's members come from `group_members` (primary key `(group_id, device_id)`);
//! - a top-level `tags.k = 'v'` (without a top-level condition on the id, which is a better seek)
//!   drives from `device_tags (key, value, device_id)`, which lists the matching devices in id order;
//! - otherwise `devices` is walked in id order, through its primary key, `(state, id)` or
//!   `(name, id)`.
//!
//! Every other comparison is a condition on the driven rows:
//!
//! - `id`, `name`, `state` compare columns of `devices`; `startswith` is a range
//!   `col >= $p AND col < $upper` (never `LIKE`, whose `_` and `%` are wildcards), which a btree
//!   serves because the columns use the bytewise `"C"` collation, as SQLite's `BINARY` does.
//! - tags are a correlated `EXISTS` over `device_tags`, which PostgreSQL runs as index probes of
//!   its primary key `(device_id, key)` or as a semi-join (anti-join for `NOT`) in id order: a
//!   missing tag makes `=`, `in`, `startswith` and `has` false and `!=` true, as
//!   [`Filter::matches`] says.
//!
//! When the driver is not `devices`, the cursor is repeated on `d.id`, and every tag probe repeats
//! it on `device_tags` (see [`push_tag_exists`]): the planner does not carry an inequality across
//! a join's equality, and without the repeated bound a merge join would read every row below the
//! cursor on every page.
//!
//! Page queries are sent as unnamed statements (not cached), so PostgreSQL plans each with its
//! actual values: a generic plan cannot tell a rare tag or state from a common one, and every
//! distinct filter shape would otherwise take a slot in the connection's statement cache.
//!
//! Every generated expression is non-NULL, so `NOT` has the same two-valued meaning as
//! [`Filter::matches`]. PostgreSQL text cannot hold NUL characters; no stored id, name, state or tag
//! value contains one either, so a comparison with such a value is decided here without binding it.

use domain::{DeviceId, Field, Filter, TagKey};
use sqlx::{Postgres, QueryBuilder};

use crate::rows::device_columns;

/// Which devices a page is taken from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Scope {
    /// The whole registry.
    All,
    /// The explicit members of the static group with this `device_groups.id`.
    StaticGroup(i64),
}

/// The query for one page: devices of `scope` matching `filter` whose id sorts after `after`, in
/// id order, at most `fetch` rows. It selects the columns of [`device_columns!`].
pub(crate) fn device_page(
    scope: Scope,
    filter: Option<&Filter>,
    after: Option<&DeviceId>,
    fetch: i64,
) -> QueryBuilder<Postgres> {
    let mut conjuncts = Vec::new();
    if let Some(f) = filter {
        flatten_and(f, &mut conjuncts);
    }
    let mut qb = QueryBuilder::new(concat!("SELECT ", device_columns!(), " "));
    let key = match scope {
        Scope::StaticGroup(group) => {
            qb.push(
                "FROM group_members g JOIN devices d ON d.id = g.device_id WHERE g.group_id = ",
            )
            .push_bind(group);
            "g.device_id"
        }
        Scope::All => match tag_driver(&conjuncts) {
            Some((i, key, value)) => {
                conjuncts.remove(i);
                qb.push("FROM device_tags t JOIN devices d ON d.id = t.device_id WHERE t.key = ")
                    .push_bind(key.as_str())
                    .push(" AND t.value = ")
                    .push_bind(value);
                "t.device_id"
            }
            None => {
                qb.push("FROM devices d WHERE TRUE");
                "d.id"
            }
        },
    };
    if let Some(after) = after {
        qb.push(" AND ").push(key).push(" > ").push_bind(after.as_str());
        if key != "d.id" {
            // Bound the devices side too (see the module documentation).
            qb.push(" AND d.id > ").push_bind(after.as_str());
        }
    }
    for c in conjuncts {
        qb.push(" AND (");
        push_filter(&mut qb, c, after.map(DeviceId::as_str));
        qb.push(")");
    }
    qb.push(" ORDER BY ").push(key).push(" LIMIT ").push_bind(fetch);
    qb
}

/// Appends `filter` as a parenthesized boolean condition over `devices d`, for set-based statements
/// that read every match (job targets, `jobs`).
pub(crate) fn push_condition(qb: &mut QueryBuilder<Postgres>, filter: &Filter) {
    qb.push("(");
    push_filter(qb, filter, None);
    qb.push(")");
}

/// The position of the top-level tag equality that should drive the page, if any.
///
/// A top-level condition on the id is a better driver (a seek or a short range on the primary
/// key), so it wins.
fn tag_driver<'a>(conjuncts: &[&'a Filter]) -> Option<(usize, &'a TagKey, &'a str)> {
    let id_driven = conjuncts.iter().any(|c| {
        matches!(
            c,
            Filter::Eq(Field::Id, _) | Filter::In(Field::Id, _) | Filter::StartsWith(Field::Id, _)
        )
    });
    if id_driven {
        return None;
    }
    conjuncts.iter().enumerate().find_map(|(i, c)| match c {
        Filter::Eq(Field::Tag(k), v) if storable(v) => Some((i, k, v.as_str())),
        _ => None,
    })
}

/// The conjuncts of nested `and`s, in order.
fn flatten_and<'a>(f: &'a Filter, out: &mut Vec<&'a Filter>) {
    match f {
        Filter::And(parts) => parts.iter().for_each(|p| flatten_and(p, out)),
        other => out.push(other),
    }
}

/// Appends `filter` as a boolean SQL expression over the alias `d` (the `devices` table).
///
/// `after` is the page's cursor: every tag probe repeats it on `device_tags`, see [`push_tag_exists`].
fn push_filter(qb: &mut QueryBuilder<Postgres>, filter: &Filter, after: Option<&str>) {
    match filter {
        Filter::And(parts) => push_joined(qb, parts, " AND ", "TRUE", after),
        Filter::Or(parts) => push_joined(qb, parts, " OR ", "FALSE", after),
        Filter::Not(inner) => {
            qb.push("NOT (");
            push_filter(qb, inner, after);
            qb.push(")");
        }
        Filter::Eq(field, value) => push_eq(qb, field, value, true, after),
        Filter::Ne(field, value) => push_eq(qb, field, value, false, after),
        Filter::In(field, values) => {
            let values: Vec<&str> =
                values.iter().map(String::as_str).filter(|v| storable(v)).collect();
            if values.is_empty() {
                qb.push("FALSE");
                return;
            }
            match field {
                Field::Tag(key) => {
                    push_tag_exists(qb, key, after);
                    qb.push(" AND x.value = ANY(").push_bind(values).push("))");
                }
                column => {
                    qb.push(column_name(column)).push(" = ANY(").push_bind(values).push(")");
                }
            }
        }
        Filter::StartsWith(field, prefix) => {
            if !storable(prefix) {
                qb.push("FALSE");
                return;
            }
            match field {
                Field::Tag(key) => {
                    push_tag_exists(qb, key, after);
                    if !prefix.is_empty() {
                        qb.push(" AND ");
                        push_prefix_range(qb, "x.value", prefix);
                    }
                    qb.push(")");
                }
                // Every value starts with the empty prefix; the columns are never NULL.
                _ if prefix.is_empty() => {
                    qb.push("TRUE");
                }
                column => push_prefix_range(qb, column_name(column), prefix),
            }
        }
        Filter::Has(key) => {
            push_tag_exists(qb, key, after);
            qb.push(")");
        }
    }
}

/// The smallest string greater than every string that starts with `prefix`, in code point order
/// (which is the bytewise order of UTF-8); `None` when there is none (a prefix of only `char::MAX`).
pub(crate) fn prefix_upper_bound(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = match u32::from(last) {
            // Skip the surrogate range, which holds no chars.
            0xD7FF => Some('\u{E000}'),
            code => char::from_u32(code + 1),
        };
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// `col = $v` (or `<>`), or the tag's `EXISTS` (or `NOT EXISTS`).
fn push_eq(
    qb: &mut QueryBuilder<Postgres>,
    field: &Field,
    value: &str,
    equal: bool,
    after: Option<&str>,
) {
    if !storable(value) {
        qb.push(if equal { "FALSE" } else { "TRUE" });
        return;
    }
    match field {
        Field::Tag(key) => {
            if !equal {
                qb.push("NOT ");
            }
            push_tag_exists(qb, key, after);
            qb.push(" AND x.value = ").push_bind(value).push(")");
        }
        column => {
            qb.push(column_name(column)).push(if equal { " = " } else { " <> " }).push_bind(value);
        }
    }
}

/// `(a AND b AND …)`, or `empty` for no parts.
fn push_joined(
    qb: &mut QueryBuilder<Postgres>,
    parts: &[Filter],
    op: &str,
    empty: &str,
    after: Option<&str>,
) {
    if parts.is_empty() {
        qb.push(empty);
        return;
    }
    qb.push("(");
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            qb.push(op);
        }
        qb.push("(");
        push_filter(qb, part, after);
        qb.push(")");
    }
    qb.push(")");
}

/// Opens `EXISTS (SELECT 1 FROM device_tags x WHERE … x.key = $k`; the caller adds conditions on
/// `x.value` and closes the parenthesis.
///
/// With a cursor, the probe also says `x.device_id > $cursor`. That follows from `x.device_id =
/// d.id` and the page's `d.id > $cursor`, but the planner does not derive it; without it, a
/// semi- or anti-join over `device_tags` would read every row below the cursor before the first
/// match, on every page.
fn push_tag_exists(qb: &mut QueryBuilder<Postgres>, key: &TagKey, after: Option<&str>) {
    qb.push("EXISTS (SELECT 1 FROM device_tags x WHERE x.device_id = d.id");
    if let Some(after) = after {
        qb.push(" AND x.device_id > ").push_bind(after);
    }
    qb.push(" AND x.key = ").push_bind(key.as_str());
}

/// `col >= $p AND col < $upper`: the index-friendly form of "starts with" under bytewise collation.
fn push_prefix_range(qb: &mut QueryBuilder<Postgres>, column: &str, prefix: &str) {
    qb.push("(").push(column).push(" >= ").push_bind(prefix);
    if let Some(upper) = prefix_upper_bound(prefix) {
        qb.push(" AND ").push(column).push(" < ").push_bind(upper);
    }
    qb.push(")");
}

/// The `devices` column of a non-tag field.
fn column_name(field: &Field) -> &'static str {
    match field {
        Field::Id => "d.id",
        Field::Name => "d.name",
        Field::State => "d.state",
        // Tags never reach here: callers match them first. Comparing a tag as a column would be a
        // bug, and the name of a column that does not exist makes the query fail loudly.
        Field::Tag(_) => "d.no_such_column",
    }
}

/// Whether PostgreSQL text can hold the value (it cannot hold NUL).
fn storable(value: &str) -> bool {
    !value.contains('\0')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(filter: &str, expected_sql: &str) {
        let mut qb = QueryBuilder::<Postgres>::new("");
        push_filter(&mut qb, &Filter::parse(filter).unwrap(), None);
        assert_eq!(qb.sql().as_str(), expected_sql, "{filter}");
    }

    #[test]
    fn translates() {
        check("id = 'a'", "d.id = $1");
        check("state != 'active'", "d.state <> $1");
        check(
            "tags.site = 'x' and not has tags.k",
            "((EXISTS (SELECT 1 FROM device_tags x WHERE x.device_id = d.id AND x.key = $1 AND x.value = $2)) AND (NOT (EXISTS (SELECT 1 FROM device_tags x WHERE x.device_id = d.id AND x.key = $3))))",
        );
        check(
            "tags.site != 'x'",
            "NOT EXISTS (SELECT 1 FROM device_tags x WHERE x.device_id = d.id AND x.key = $1 AND x.value = $2)",
        );
        check("id startswith 'sen'", "(d.id >= $1 AND d.id < $2)");
        check("id startswith ''", "TRUE");
        check("state in ('active', 'suspended')", "d.state = ANY($1)");
        check("id = 'a\0'", "FALSE");
        check("name != 'a\0'", "TRUE");
        check("id in ('a\0')", "FALSE");
    }

    #[track_caller]
    fn check_page(scope: Scope, filter: &str, expected_sql: &str) {
        let f = Filter::parse(filter).unwrap();
        let qb = device_page(scope, Some(&f), Some(&DeviceId::new("c").unwrap()), 51);
        let sql = qb.sql();
        let got = sql.as_str().strip_prefix(concat!("SELECT ", device_columns!(), " ")).unwrap();
        assert_eq!(got, expected_sql, "{filter}");
    }

    #[test]
    fn pages_name_their_driver() {
        check_page(
            Scope::All,
            "state = 'active' and tags.site = 'berlin' and has tags.fw",
            "FROM device_tags t JOIN devices d ON d.id = t.device_id WHERE t.key = $1 AND t.value = $2 AND t.device_id > $3 AND d.id > $4 AND (d.state = $5) AND (EXISTS (SELECT 1 FROM device_tags x WHERE x.device_id = d.id AND x.device_id > $6 AND x.key = $7)) ORDER BY t.device_id LIMIT $8",
        );
        check_page(
            Scope::All,
            "tags.site = 'berlin' and id startswith 'a'",
            "FROM devices d WHERE TRUE AND d.id > $1 AND (EXISTS (SELECT 1 FROM device_tags x WHERE x.device_id = d.id AND x.device_id > $2 AND x.key = $3 AND x.value = $4)) AND ((d.id >= $5 AND d.id < $6)) ORDER BY d.id LIMIT $7",
        );
        check_page(
            Scope::StaticGroup(7),
            "tags.site = 'berlin'",
            "FROM group_members g JOIN devices d ON d.id = g.device_id WHERE g.group_id = $1 AND g.device_id > $2 AND d.id > $3 AND (EXISTS (SELECT 1 FROM device_tags x WHERE x.device_id = d.id AND x.device_id > $4 AND x.key = $5 AND x.value = $6)) ORDER BY g.device_id LIMIT $7",
        );
    }

    #[test]
    fn upper_bounds() {
        assert_eq!(prefix_upper_bound("abc").as_deref(), Some("abd"));
        assert_eq!(prefix_upper_bound("a\u{D7FF}").as_deref(), Some("a\u{E000}"));
        assert_eq!(prefix_upper_bound("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_upper_bound("\u{10FFFF}"), None);
        assert_eq!(prefix_upper_bound(""), None);
    }
}
