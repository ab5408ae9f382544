//! Multi-row statements for batch writes: an import writes a few statements per few hundred rows
//! instead of several per row, which is what makes a large import fast on SQLite.

use sqlx::SqliteConnection;

/// Rows per statement: 400 rows of up to 9 columns stays far below SQLite's limit of 32,766 bind
/// parameters, and long enough that per-statement overhead disappears.
const ROWS_PER_STATEMENT: usize = 400;

/// One bind parameter of a batch write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    /// Text.
    Text(String),
    /// Text or `NULL`.
    OptText(Option<String>),
    /// An integer.
    Int(i64),
    /// Bytes.
    Blob(Vec<u8>),
}

/// Runs `head VALUES (…), (…) … tail` for rows of `width` values each, taken in order from
/// `values`, in as few statements as [`ROWS_PER_STATEMENT`] allows.
///
/// `head` is the statement up to `VALUES` (`INSERT INTO t (a, b)`), `tail` what follows the
/// values (an `ON CONFLICT` clause, or nothing).
pub(crate) async fn insert_rows(
    conn: &mut SqliteConnection,
    head: &str,
    tail: &str,
    width: usize,
    values: Vec<Value>,
) -> Result<(), sqlx::Error> {
    debug_assert!(width > 0 && values.len().is_multiple_of(width), "values must fill whole rows");
    let one_row = format!("({})", vec!["?"; width].join(", "));
    let mut values = values.into_iter().peekable();
    while values.peek().is_some() {
        let chunk: Vec<Value> = values.by_ref().take(ROWS_PER_STATEMENT * width).collect();
        let rows = chunk.len() / width;
        let text = format!("{head} VALUES {}{tail}", vec![one_row.as_str(); rows].join(", "));
        execute(conn, text, chunk).await?;
    }
    Ok(())
}

/// Runs `head (?, ?, …) tail` with `values` bound to the list, in chunks: a `DELETE … WHERE x IN`
/// or `SELECT … WHERE x IN` over many keys. Returns nothing; see [`select_in`] for reads.
pub(crate) async fn execute_in(
    conn: &mut SqliteConnection,
    head: &str,
    values: Vec<Value>,
) -> Result<(), sqlx::Error> {
    for chunk in values.chunks(ROWS_PER_STATEMENT) {
        let text = format!("{head} ({})", vec!["?"; chunk.len()].join(", "));
        execute(conn, text, chunk.to_vec()).await?;
    }
    Ok(())
}

/// Runs `head (?, ?, …)` in chunks over `keys`, collecting the rows of type `R`.
pub(crate) async fn select_in<R>(
    conn: &mut SqliteConnection,
    head: &str,
    keys: &[&str],
) -> Result<Vec<R>, sqlx::Error>
where
    R: for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow> + Send + Unpin,
{
    let mut out = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(ROWS_PER_STATEMENT) {
        let text = format!("{head} ({})", vec!["?"; chunk.len()].join(", "));
        let mut query = sqlx::query_as::<_, R>(sqlx::AssertSqlSafe(text));
        for key in chunk {
            query = query.bind(*key);
        }
        out.extend(query.fetch_all(&mut *conn).await?);
    }
    Ok(out)
}

async fn execute(
    conn: &mut SqliteConnection,
    text: String,
    values: Vec<Value>,
) -> Result<(), sqlx::Error> {
    let mut query = sqlx::query(sqlx::AssertSqlSafe(text));
    for v in values {
        query = match v {
            Value::Text(s) => query.bind(s),
            Value::OptText(s) => query.bind(s),
            Value::Int(i) => query.bind(i),
            Value::Blob(b) => query.bind(b),
        };
    }
    query.execute(&mut *conn).await?;
    Ok(())
}
