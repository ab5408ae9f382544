//! Translation of a device [`Filter`] into one SQL page query, values always as bind parameters.
//!
//! A page is `… ORDER BY <key> LIMIT ?` with keyset pagination (`<key> > cursor`), and it must stay
//! fast at millions of devices. So the query is shaped for SQLite's planner rather than left to it,
//! around a [`Driver`]: the index the page is read from.
//!
//! - Ordered drivers read an index whose order is the page order, so the page stops after `limit`
//!   matches and never sorts. They suit conditions that many devices meet:
//!   - a top-level `tags.k = 'v'` reads `device_tags`' primary key `(key, value, device_id)`,
//!     which lists the matching devices in id order ([`Driver::TagEq`]);
//!   - otherwise `devices` is walked in id order, or through `(state, id)` / `(name, id)` when a
//!     top-level `state = …` / `name = …` lets the planner seek there; a top-level condition on `id`
//!     (`=`, `in`, `startswith`) is a seek or a range on the primary key ([`Driver::Walk`]).
//! - When few devices meet a top-level condition, walking in id order would read most of the
//!   registry before the page fills (or learns it is empty). The store first counts, up to a
//!   bound, the index entries of each candidate condition ([`probes`]); the rarest one under the
//!   bound drives, and when its index is not in id order its few matches are sorted
//!   ([`Driver::Sparse`]). A filter whose top-level conditions are each common but rare together
//!   (or an `or` of rare conditions) still walks; that is the remaining slow case.
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
pub(crate) const DEVICE_COLUMNS: &str = "d.id, d.name, d.state, d.tags_json, d.attributes_json, d.created_at, d.updated_at, d.version, \
     d.predecessor_id, d.successor_id";

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

/// How a page of the whole registry finds its devices. Positions refer to the filter's top-level
/// conjuncts, in the order [`conjuncts`] lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Driver {
    /// Walk `devices` in id order; the planner may seek on a top-level equality on id, name or
    /// state (their indexes are in id order too), or on an id `in` or `startswith`.
    Walk,
    /// Walk `device_tags` for the tag equality at this position: its devices in id order.
    TagEq(usize),
    /// Collect the few devices that the condition at this position selects, through its index,
    /// and sort them: the way to a page when matches are rare and no ordered index finds them.
    Sparse(usize),
}

/// A bounded count of the index entries a driver would read: `SELECT count(*)` over at most
/// the bound given to [`probes`].
#[derive(Debug)]
pub(crate) struct Probe {
    /// The driver the count is for.
    pub(crate) driver: Driver,
    /// The counting query.
    pub(crate) sql: Sql,
}

/// The filter's top-level conjuncts (`a and (b and c)` has three), in a fixed order.
pub(crate) fn conjuncts(filter: Option<&Filter>) -> Vec<&Filter> {
    fn flatten<'a>(f: &'a Filter, out: &mut Vec<&'a Filter>) {
        match f {
            Filter::And(parts) => parts.iter().for_each(|p| flatten(p, out)),
            other => out.push(other),
        }
    }
    let mut out = Vec::new();
    if let Some(f) = filter {
        flatten(f, &mut out);
    }
    out
}

/// The driver to use without knowing how many devices each condition selects: a tag equality
/// when there is one, else the id walk. A top-level condition on the id (a seek or a short range
/// on the primary key) or an equality on the name (names are nearly unique) keeps the walk.
pub(crate) fn default_driver(conjuncts: &[&Filter]) -> Driver {
    if conjuncts.iter().any(|c| walk_is_best(c)) {
        return Driver::Walk;
    }
    conjuncts
        .iter()
        .position(|c| matches!(c, Filter::Eq(Field::Tag(_), _)))
        .map_or(Driver::Walk, Driver::TagEq)
}

fn walk_is_best(c: &Filter) -> bool {
    matches!(
        c,
        Filter::Eq(Field::Id | Field::Name, _)
            | Filter::In(Field::Id, _)
            | Filter::StartsWith(Field::Id, _)
    )
}

/// Count probes for the drivers worth considering, each counting at most `bound` entries. Empty
/// when the default driver cannot be beaten (a condition on the id, or no indexed condition).
pub(crate) fn probes(conjuncts: &[&Filter], bound: u32) -> Vec<Probe> {
    if conjuncts.iter().any(|c| walk_is_best(c)) {
        return Vec::new();
    }
    let mut out = Vec::new();
    for (i, c) in conjuncts.iter().enumerate() {
        let mut sql = Sql::default();
        sql.push("SELECT count(*) FROM (SELECT 1 FROM ");
        let driver = match c {
            Filter::Eq(Field::State, v) => {
                sql.push("devices WHERE state = ");
                sql.bind(v);
                Driver::Walk
            }
            Filter::In(Field::State | Field::Name, vs) => {
                let _ = write!(sql.text, "devices WHERE {} IN ", column_name(c));
                sql.bind_list(vs);
                Driver::Sparse(i)
            }
            Filter::StartsWith(Field::Name, prefix) => {
                sql.push("devices WHERE ");
                prefix_range(&mut sql, "name", prefix);
                Driver::Sparse(i)
            }
            Filter::Eq(Field::Tag(k), _)
            | Filter::In(Field::Tag(k), _)
            | Filter::StartsWith(Field::Tag(k), _)
            | Filter::Has(k) => {
                sql.push("device_tags WHERE key = ");
                sql.bind(k.as_str());
                tag_value_condition(&mut sql, c, "value");
                if matches!(c, Filter::Eq(..)) { Driver::TagEq(i) } else { Driver::Sparse(i) }
            }
            _ => continue,
        };
        sql.push(" LIMIT ?)");
        sql.args.push(Arg::Int(i64::from(bound)));
        out.push(Probe { driver, sql });
    }
    out
}

/// Builds the query for one page: devices of `scope` matching `filter` whose id sorts after
/// `after`, in id order, at most `fetch` rows. `driver` applies to [`Scope::All`] only (see
/// [`Driver`]); a static group's page is driven by its membership, in id order.
pub(crate) fn device_page(
    scope: Scope<'_>,
    filter: Option<&Filter>,
    after: Option<&DeviceId>,
    fetch: u32,
    driver: Driver,
) -> Sql {
    let mut conjuncts = conjuncts(filter);
    let mut sql = Sql::default();
    let _ = write!(sql.text, "SELECT {DEVICE_COLUMNS} ");
    // `CROSS JOIN` makes SQLite keep the written join order: the driving table stays outermost.
    let (key, top_level_indexable) = match (scope, driver) {
        (Scope::StaticGroup(name), _) => {
            sql.push(
                "FROM group_members g CROSS JOIN devices d \
                 WHERE d.id = g.device_id AND g.group_name = ",
            );
            sql.bind(name.as_str());
            ("g.device_id", false)
        }
        (Scope::All, Driver::TagEq(i) | Driver::Sparse(i))
            if is_tag_condition(conjuncts.get(i)) =>
        {
            let c = conjuncts.remove(i);
            // `NOT INDEXED` makes SQLite read `device_tags` by its primary key (key, value,
            // device_id) rather than walk `(device_id, key)` for its order.
            sql.push(
                "FROM device_tags t NOT INDEXED CROSS JOIN devices d \
                 WHERE d.id = t.device_id AND t.key = ",
            );
            if let Filter::Eq(Field::Tag(k), _)
            | Filter::In(Field::Tag(k), _)
            | Filter::StartsWith(Field::Tag(k), _)
            | Filter::Has(k) = c
            {
                sql.bind(k.as_str());
            }
            tag_value_condition(&mut sql, c, "t.value");
            ("t.device_id", false)
        }
        (Scope::All, Driver::Sparse(i)) if conjuncts.get(i).is_some() => {
            let c = conjuncts.remove(i);
            let index =
                if column_name(c) == "state" { "devices_state_id" } else { "devices_name_id" };
            let _ = write!(sql.text, "FROM devices d INDEXED BY {index} WHERE ");
            match c {
                Filter::StartsWith(_, prefix) => prefix_range(&mut sql, "d.name", prefix),
                Filter::In(_, vs) => {
                    let _ = write!(sql.text, "d.{} IN ", column_name(c));
                    sql.bind_list(vs);
                }
                _ => sql.push("1"),
            }
            ("d.id", false)
        }
        (Scope::All, _) => {
            sql.push("FROM devices d WHERE 1");
            ("d.id", true)
        }
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

/// Appends `filter` as a boolean condition over `devices d`, for set-based statements that read
/// every match (job targets, `jobs::target_condition`): each top-level conjunct may use its index.
pub(crate) fn push_condition(sql: &mut Sql, filter: &Filter) {
    sql.push("(1");
    for c in conjuncts(Some(filter)) {
        sql.push(" AND ");
        emit(sql, c, true);
    }
    sql.push(")");
}

fn is_tag_condition(c: Option<&&Filter>) -> bool {
    matches!(
        c,
        Some(
            Filter::Eq(Field::Tag(_), _)
                | Filter::In(Field::Tag(_), _)
                | Filter::StartsWith(Field::Tag(_), _)
                | Filter::Has(_)
        )
    )
}

/// The `devices` column a name or state condition reads (`id` for anything else).
fn column_name(c: &Filter) -> &'static str {
    match c {
        Filter::Eq(Field::Name, _)
        | Filter::In(Field::Name, _)
        | Filter::StartsWith(Field::Name, _) => "name",
        Filter::Eq(Field::State, _) | Filter::In(Field::State, _) => "state",
        _ => "id",
    }
}

/// Appends the condition on a tag's value that `c` (a tag comparison or `has`) makes, as
/// ` AND <column> …`; nothing for `has`.
fn tag_value_condition(sql: &mut Sql, c: &Filter, column: &str) {
    match c {
        Filter::Eq(_, v) => {
            let _ = write!(sql.text, " AND {column} = ");
            sql.bind(v);
        }
        Filter::In(_, vs) => {
            let _ = write!(sql.text, " AND {column} IN ");
            sql.bind_list(vs);
        }
        Filter::StartsWith(_, prefix) => {
            sql.push(" AND ");
            prefix_range(sql, column, prefix);
        }
        _ => {}
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
