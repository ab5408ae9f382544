//! Device filters ([`domain::Filter`]) translated to SQL over `devices d`.
//!
//! Values always travel as bind parameters; only fixed fragments and column names are written into
//! the SQL text. Each comparison maps onto an index:
//!
//! - `id`, `name`, `state`: columns of `devices` (`state` has an index on `(state, id)`, `id` is the
//!   primary key); `startswith` becomes a range `col >= $p AND col < $upper`, which the btree serves
//!   because the columns use the bytewise `"C"` collation.
//! - tags: an `EXISTS` over `device_tags`, whose index on `(key, value, device_id)` serves equality,
//!   lists, prefixes and presence.
//!
//! Every generated expression is non-NULL, so `NOT` has the same two-valued meaning as
//! [`Filter::matches`]. PostgreSQL text cannot hold NUL characters; no stored id, name, state or tag
//! value contains one either, so a comparison with such a value is decided here without binding it.

use domain::{Field, Filter, TagKey};
use sqlx::{Postgres, QueryBuilder};

/// Appends `filter` as a boolean SQL expression over the alias `d` (the `devices` table).
pub(crate) fn push_filter(qb: &mut QueryBuilder<Postgres>, filter: &Filter) {
    match filter {
        Filter::And(parts) => push_joined(qb, parts, " AND ", "TRUE"),
        Filter::Or(parts) => push_joined(qb, parts, " OR ", "FALSE"),
        Filter::Not(inner) => {
            qb.push("NOT (");
            push_filter(qb, inner);
            qb.push(")");
        }
        Filter::Eq(field, value) => push_eq(qb, field, value, true),
        Filter::Ne(field, value) => push_eq(qb, field, value, false),
        Filter::In(field, values) => {
            let values: Vec<&str> =
                values.iter().map(String::as_str).filter(|v| storable(v)).collect();
            if values.is_empty() {
                qb.push("FALSE");
                return;
            }
            match field {
                Field::Tag(key) => {
                    push_tag_exists(qb, key);
                    qb.push(" AND t.value = ANY(").push_bind(values).push("))");
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
                    push_tag_exists(qb, key);
                    if !prefix.is_empty() {
                        qb.push(" AND ");
                        push_prefix_range(qb, "t.value", prefix);
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
            push_tag_exists(qb, key);
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
fn push_eq(qb: &mut QueryBuilder<Postgres>, field: &Field, value: &str, equal: bool) {
    if !storable(value) {
        qb.push(if equal { "FALSE" } else { "TRUE" });
        return;
    }
    match field {
        Field::Tag(key) => {
            if !equal {
                qb.push("NOT ");
            }
            push_tag_exists(qb, key);
            qb.push(" AND t.value = ").push_bind(value).push(")");
        }
        column => {
            qb.push(column_name(column)).push(if equal { " = " } else { " <> " }).push_bind(value);
        }
    }
}

/// `(a AND b AND …)`, or `empty` for no parts.
fn push_joined(qb: &mut QueryBuilder<Postgres>, parts: &[Filter], op: &str, empty: &str) {
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
        push_filter(qb, part);
        qb.push(")");
    }
    qb.push(")");
}

/// Opens `EXISTS (SELECT 1 FROM device_tags t WHERE … t.key = $k`; the caller adds conditions on
/// `t.value` and closes the parenthesis.
fn push_tag_exists(qb: &mut QueryBuilder<Postgres>, key: &TagKey) {
    qb.push("EXISTS (SELECT 1 FROM device_tags t WHERE t.device_id = d.id AND t.key = ")
        .push_bind(key.as_str());
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
        push_filter(&mut qb, &Filter::parse(filter).unwrap());
        assert_eq!(qb.sql().as_str(), expected_sql, "{filter}");
    }

    #[test]
    fn translates() {
        check("id = 'a'", "d.id = $1");
        check("state != 'active'", "d.state <> $1");
        check(
            "tags.site = 'x' and not has tags.k",
            "((EXISTS (SELECT 1 FROM device_tags t WHERE t.device_id = d.id AND t.key = $1 AND t.value = $2)) AND (NOT (EXISTS (SELECT 1 FROM device_tags t WHERE t.device_id = d.id AND t.key = $3))))",
        );
        check(
            "tags.site != 'x'",
            "NOT EXISTS (SELECT 1 FROM device_tags t WHERE t.device_id = d.id AND t.key = $1 AND t.value = $2)",
        );
        check("id startswith 'sen'", "(d.id >= $1 AND d.id < $2)");
        check("id startswith ''", "TRUE");
        check("state in ('active', 'suspended')", "d.state = ANY($1)");
        check("id = 'a\0'", "FALSE");
        check("name != 'a\0'", "TRUE");
        check("id in ('a\0')", "FALSE");
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
