//! Tests of the filter translation: the SQL text, and the plans SQLite makes of it.

use sqlx::AssertSqlSafe;

use super::*;
use crate::{SqliteOptions, SqliteStore};

#[track_caller]
fn check(filter: &str, expected: &str) {
    let f = Filter::parse(filter).unwrap();
    let driver = default_driver(&conjuncts(Some(&f)));
    let sql = device_page(Scope::All, Some(&f), None, 51, driver);
    let args: Vec<String> = sql
        .args
        .iter()
        .map(|a| match a {
            Arg::Text(s) => format!("{s:?}"),
            Arg::Int(i) => i.to_string(),
        })
        .collect();
    let got = format!(
        "{} -- [{}]",
        sql.text.replace(&format!("SELECT {DEVICE_COLUMNS} "), ""),
        args.join(", ")
    );
    assert_eq!(got, expected, "{filter}");
}

#[test]
fn translates() {
    check(
        "tags.site = 'berlin' and state = 'active'",
        "FROM device_tags t NOT INDEXED CROSS JOIN devices d WHERE d.id = t.device_id AND t.key = ? AND t.value = ? AND +d.state = ? ORDER BY t.device_id LIMIT ? -- [\"site\", \"berlin\", \"active\", 51]",
    );
    check(
        "state = 'active' and name != 'x'",
        "FROM devices d WHERE 1 AND d.state = ? AND +d.name != ? ORDER BY d.id LIMIT ? -- [\"active\", \"x\", 51]",
    );
    check(
        "id startswith 'dev-0001' and tags.site = 'b'",
        "FROM devices d WHERE 1 AND (d.id >= ? AND d.id < ?) AND EXISTS (SELECT 1 FROM device_tags x WHERE x.device_id = d.id AND x.key = ? AND x.value = ?) ORDER BY d.id LIMIT ? -- [\"dev-0001\", \"dev-0002\", \"site\", \"b\", 51]",
    );
    check(
        "state = 'retired' or not tags.a in ('x', 'y')",
        "FROM devices d WHERE 1 AND (+d.state = ? OR NOT (EXISTS (SELECT 1 FROM device_tags x WHERE x.device_id = d.id AND x.key = ? AND x.value IN (?, ?)))) ORDER BY d.id LIMIT ? -- [\"retired\", \"a\", \"x\", \"y\", 51]",
    );
}

#[test]
fn successors() {
    assert_eq!(prefix_successor("dev-0001").as_deref(), Some("dev-0002"));
    assert_eq!(prefix_successor("az").as_deref(), Some("a{"));
    assert_eq!(prefix_successor(""), None);
    assert_eq!(prefix_successor("a\u{10FFFF}").as_deref(), Some("b"));
    assert_eq!(prefix_successor("\u{10FFFF}"), None);
    assert_eq!(prefix_successor("\u{D7FF}").as_deref(), Some("\u{E000}"));
}

/// The query plan of one page query, one line per plan step, indented by depth.
async fn plan(store: &SqliteStore, sql: Sql) -> String {
    let mut query = sqlx::query_as::<_, (i64, i64, i64, String)>(AssertSqlSafe(format!(
        "EXPLAIN QUERY PLAN {}",
        sql.text
    )));
    for arg in sql.args {
        query = match arg {
            Arg::Text(s) => query.bind(s),
            Arg::Int(i) => query.bind(i),
        };
    }
    let rows = query.fetch_all(&store.writer).await.unwrap();
    let mut depth = std::collections::HashMap::new();
    let mut out = Vec::new();
    for (id, parent, _, detail) in rows {
        let d = depth.get(&parent).map_or(0, |d| d + 1);
        depth.insert(id, d);
        out.push(format!("{}{detail}", "  ".repeat(d)));
    }
    out.join("\n")
}

/// Every page query walks an index in page order, so a first page never collects and sorts all
/// matches: the plan names its driving index and never a `TEMP B-TREE`.
#[tokio::test]
async fn pages_are_index_backed() {
    const BY_ID: &str = "SEARCH d USING INDEX sqlite_autoindex_devices_1 (id>?)";
    const ID_SEEK: &str = "SEARCH d USING INDEX sqlite_autoindex_devices_1 (id=?)";
    const TAG_PROBE: &str = "SEARCH x EXISTS USING COVERING INDEX device_tags_device_key \
                             (device_id=? AND key=? AND value=?)";
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(SqliteOptions::new(dir.path().join("plan.db"))).await.unwrap();
    let after = DeviceId::new("dev-0000500").unwrap();
    let group = GroupName::new("g").unwrap();
    let cases: &[(Scope<'_>, Option<&str>, &[&str])] = &[
        (Scope::All, None, &[BY_ID]),
        (
            Scope::All,
            Some("state = 'active'"),
            &["SEARCH d USING INDEX devices_state_id (state=? AND id>?)"],
        ),
        (
            Scope::All,
            Some("tags.site = 'berlin' and state = 'active'"),
            &["SEARCH t USING PRIMARY KEY (key=? AND value=? AND device_id>?)", ID_SEEK],
        ),
        (
            Scope::All,
            Some("id startswith 'dev-0001' and tags.site = 'rome'"),
            &["SEARCH d USING INDEX sqlite_autoindex_devices_1 (id>? AND id<?)", TAG_PROBE],
        ),
        (Scope::All, Some("id in ('a', 'b')"), &[ID_SEEK]),
        (
            Scope::All,
            Some("name = 'Sensor 1' and tags.site = 'rome'"),
            &["SEARCH d USING INDEX devices_name_id (name=? AND id>?)", TAG_PROBE],
        ),
        (
            Scope::All,
            Some("tags.site = 'berlin' or state = 'suspended'"),
            &[
                BY_ID,
                "CORRELATED SCALAR SUBQUERY 1",
                "  SEARCH x USING PRIMARY KEY (key=? AND value=? AND device_id=?)",
            ],
        ),
        (Scope::All, Some("state not in ('active', 'registered')"), &[BY_ID]),
        (Scope::All, Some("state in ('active', 'registered') or name = 'x'"), &[BY_ID]),
        (Scope::All, Some("tags.site in ('oslo', 'rome')"), &[BY_ID, TAG_PROBE]),
        (
            Scope::All,
            Some("tags.fw startswith '1.' and name startswith 'S'"),
            &[
                BY_ID,
                "SEARCH x EXISTS USING COVERING INDEX device_tags_device_key \
             (device_id=? AND key=? AND value>? AND value<?)",
            ],
        ),
        (
            Scope::StaticGroup(&group),
            Some("tags.site = 'berlin' and state = 'active'"),
            &["SEARCH g USING PRIMARY KEY (group_name=? AND device_id>?)", ID_SEEK, TAG_PROBE],
        ),
    ];
    for (scope, filter, expected) in cases {
        let f = filter.map(|f| Filter::parse(f).unwrap());
        let driver = default_driver(&conjuncts(f.as_ref()));
        let sql = device_page(*scope, f.as_ref(), Some(&after), 51, driver);
        assert_eq!(plan(&store, sql).await, expected.join("\n"), "{scope:?} {filter:?}");
    }
}

/// A sparse driver reads the condition's index and sorts the few devices it finds.
#[tokio::test]
async fn sparse_pages_read_the_condition_index() {
    const ID_SEEK: &str = "SEARCH d USING INDEX sqlite_autoindex_devices_1 (id=?)";
    const SORT: &str = "USE TEMP B-TREE FOR ORDER BY";
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(SqliteOptions::new(dir.path().join("plan.db"))).await.unwrap();
    let after = DeviceId::new("dev-0000500").unwrap();
    let cases: &[(&str, Driver, &[&str])] = &[
        // A rare state beats a common tag: the walk seeks the state's index, still in id order.
        (
            "tags.site = 'berlin' and state = 'retired'",
            Driver::Walk,
            &[
                "SEARCH d USING INDEX devices_state_id (state=? AND id>?)",
                "SEARCH x EXISTS USING COVERING INDEX device_tags_device_key \
                 (device_id=? AND key=? AND value=?)",
            ],
        ),
        (
            "state = 'active' and tags.site in ('oslo', 'rome')",
            Driver::Sparse(1),
            &["SEARCH t USING PRIMARY KEY (key=? AND value=? AND device_id>?)", ID_SEEK, SORT],
        ),
        (
            "tags.fw startswith '1.' and state = 'active'",
            Driver::Sparse(0),
            &["SEARCH t USING PRIMARY KEY (key=? AND value>? AND value<?)", ID_SEEK, SORT],
        ),
        ("has tags.x", Driver::Sparse(0), &["SEARCH t USING PRIMARY KEY (key=?)", ID_SEEK, SORT]),
        (
            "name startswith 'Sensor 99' and state = 'active'",
            Driver::Sparse(0),
            &["SEARCH d USING INDEX devices_name_id (name>? AND name<?)", SORT],
        ),
        (
            "state in ('retired', 'suspended') and tags.a = 'b'",
            Driver::Sparse(0),
            &[
                "SEARCH d USING INDEX devices_state_id (state=? AND id>?)",
                "SEARCH x EXISTS USING COVERING INDEX device_tags_device_key \
                 (device_id=? AND key=? AND value=?)",
                SORT,
            ],
        ),
        (
            "name in ('a', 'b')",
            Driver::Sparse(0),
            &["SEARCH d USING INDEX devices_name_id (name=? AND id>?)", SORT],
        ),
    ];
    for (filter, driver, expected) in cases {
        let f = Filter::parse(filter).unwrap();
        let sql = device_page(Scope::All, Some(&f), Some(&after), 51, *driver);
        assert_eq!(plan(&store, sql).await, expected.join("\n"), "{filter} {driver:?}");
    }
}

/// Probes are offered for the conditions an index can find, and none when the id decides.
#[test]
fn probes_cover_indexed_conditions() {
    let probe_drivers = |filter: &str| {
        let f = Filter::parse(filter).unwrap();
        probes(&conjuncts(Some(&f)), 1000).into_iter().map(|p| p.driver).collect::<Vec<_>>()
    };
    assert_eq!(
        probe_drivers(
            "tags.a = 'x' and state = 'active' and (name = 'n' or has tags.b) and has tags.c \
             and name startswith 'p' and state in ('active') and tags.d startswith 'q'"
        ),
        [
            Driver::TagEq(0),
            Driver::Walk,
            Driver::Sparse(3),
            Driver::Sparse(4),
            Driver::Sparse(5),
            Driver::Sparse(6)
        ]
    );
    assert_eq!(probe_drivers("tags.a = 'x' and id startswith 'd'"), []);
    assert_eq!(probe_drivers("tags.a = 'x' and name = 'n'"), []);
    assert_eq!(probe_drivers("tags.a = 'x' or state = 'active'"), []);
}
