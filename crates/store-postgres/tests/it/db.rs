//! Fresh, isolated test databases: one new schema per test in the server named by
//! `HERD_TEST_POSTGRES_URL`.
//!
//! Schemas are named `herd_test_<hex>`, where the first 8 hex digits are the creation time in
//! seconds. A test that owns its [`TestDb`] drops its schema at the end; schemas left behind (by
//! a failed test, or by tests that only hold the store) are swept once per test process when they
//! are more than a day old.

use std::hash::{BuildHasher, RandomState};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use domain::{Actor, Mutation, Timestamp};
use sqlx::postgres::PgConnectOptions;
use sqlx::{AssertSqlSafe, Connection, PgConnection};
use store::Store;
use store_postgres::{PostgresOptions, PostgresStore};

/// The environment variable naming the test server.
pub(crate) const URL_VAR: &str = "HERD_TEST_POSTGRES_URL";

/// Schemas older than this are left over from earlier runs and swept.
const STALE_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

/// A store in a fresh schema, and what it takes to reach that schema directly.
#[derive(Debug)]
pub(crate) struct TestDb {
    /// The store under test.
    pub(crate) store: Arc<PostgresStore>,
    /// The schema holding its tables.
    pub(crate) schema: String,
    url: String,
}

impl TestDb {
    /// A plain connection into the test schema, for tests that tamper with stored rows.
    pub(crate) async fn raw(&self) -> PgConnection {
        let options = PgConnectOptions::from_str(&self.url)
            .expect("the URL parsed when the store connected")
            .options([("search_path", self.schema.as_str())]);
        PgConnection::connect_with(&options).await.expect("connect to the test schema")
    }

    /// Closes the store and drops the schema.
    pub(crate) async fn drop(self) {
        self.store.close().await;
        let options =
            PgConnectOptions::from_str(&self.url).expect("the URL parsed when the store connected");
        let mut conn =
            PgConnection::connect_with(&options).await.expect("connect to drop a schema");
        drop_schema(&mut conn, &self.schema).await;
        conn.close().await.expect("close the connection");
    }
}

/// A store in a fresh schema, or `None` (after saying so on stderr) when no server is configured.
pub(crate) async fn test_db() -> Option<TestDb> {
    let Some(url) = std::env::var(URL_VAR).ok().filter(|u| !u.is_empty()) else {
        skip_notice();
        return None;
    };
    sweep_stale_schemas(&url).await;
    let schema = fresh_schema_name();
    let mut options = PostgresOptions::new(url.clone());
    options.max_connections = 4;
    options.acquire_timeout = Duration::from_secs(30);
    options.schema = Some(schema.clone());
    let store = PostgresStore::connect(options)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {URL_VAR}: {e:#?}"));
    Some(TestDb { store: Arc::new(store), schema, url })
}

/// The factory the conformance suite calls: a fresh store and the guard that drops its schema
/// after the case, or `None` to skip.
pub(crate) async fn conformance_store() -> Option<(Arc<dyn Store>, SchemaGuard)> {
    let db = test_db().await?;
    let guard = SchemaGuard { url: db.url, schema: db.schema };
    Some((db.store, guard))
}

/// Drops a test schema when it goes out of scope.
///
/// `Drop` cannot await, and the test's runtime is a current-thread one, so the drop runs on a
/// thread of its own with a small runtime, and the guard waits for it (tests only).
#[derive(Debug)]
pub(crate) struct SchemaGuard {
    url: String,
    schema: String,
}

impl Drop for SchemaGuard {
    fn drop(&mut self) {
        let url = std::mem::take(&mut self.url);
        let schema = std::mem::take(&mut self.schema);
        let dropper = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build()
            else {
                return;
            };
            runtime.block_on(async {
                let Ok(options) = PgConnectOptions::from_str(&url) else { return };
                let Ok(mut conn) = PgConnection::connect_with(&options).await else { return };
                // This thread blocks the test's runtime while it waits. A transaction the store
                // dropped mid-test rolls back from a task on that runtime, so waiting for its locks
                // could wait forever: give up after a few seconds and leave the schema to the sweep.
                let _ = sqlx::query("SET lock_timeout = '5s'").execute(&mut conn).await;
                drop_schema(&mut conn, &schema).await;
                let _ = conn.close().await;
            });
        });
        // A failed drop leaves the schema for the sweep of stale schemas.
        let _ = dropper.join();
    }
}

/// A mutation by the system at `ms` milliseconds.
pub(crate) fn at(ms: i64) -> Mutation {
    Mutation { actor: Actor::system(), at: Timestamp::from_millis(ms) }
}

#[expect(clippy::print_stderr, reason = "a skipped test says why, where cargo test shows it")]
fn skip_notice() {
    eprintln!(
        "skipping: {URL_VAR} is not set (PostgreSQL conformance tests need a database, e.g. \
         {URL_VAR}=postgres://postgres@127.0.0.1:5432/postgres)"
    );
}

fn fresh_schema_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let random = RandomState::new().hash_one((
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        now.as_nanos(),
    ));
    format!("herd_test_{:08x}{random:016x}", now.as_secs() as u32)
}

/// Drops `herd_test_*` schemas created more than [`STALE_AFTER`] ago, once per process.
async fn sweep_stale_schemas(url: &str) {
    static SWEPT: AtomicBool = AtomicBool::new(false);
    if SWEPT.swap(true, Ordering::SeqCst) {
        return;
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let options = PgConnectOptions::from_str(url)
        .unwrap_or_else(|e| panic!("{URL_VAR} is not a PostgreSQL URL: {e}"));
    let mut conn = PgConnection::connect_with(&options)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {URL_VAR}: {e}"));
    let schemas: Vec<String> = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE nspname ~ '^herd_test_[0-9a-f]{24}$'",
    )
    .fetch_all(&mut conn)
    .await
    .expect("list test schemas");
    for schema in schemas {
        let Ok(created) = u64::from_str_radix(&schema["herd_test_".len()..][..8], 16) else {
            continue;
        };
        if now.saturating_sub(created) > STALE_AFTER.as_secs() {
            drop_schema(&mut conn, &schema).await;
        }
    }
    conn.close().await.expect("close the connection");
}

async fn drop_schema(conn: &mut PgConnection, schema: &str) {
    // The name is one of ours: `herd_test_` and hex digits. Another process sweeping at the same
    // time may have dropped it already, which is fine.
    let _ = sqlx::query(AssertSqlSafe(format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")))
        .execute(conn)
        .await;
}
