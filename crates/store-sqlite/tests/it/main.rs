//! Integration tests of the SQLite store: the shared conformance suite, plus what only SQLite has
//! (its file on disk).

mod audit_tamper;

use std::sync::Arc;

use store::Store;
use store_sqlite::{SqliteOptions, SqliteStore};
use tempfile::TempDir;

/// A store on a new database file in its own temporary directory, removed on drop.
pub(crate) struct TempStore {
    pub(crate) store: SqliteStore,
    pub(crate) path: std::path::PathBuf,
    pub(crate) dir: TempDir,
}

impl TempStore {
    pub(crate) async fn new() -> Self {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let path = dir.path().join("herd.db");
        let store = SqliteStore::open(SqliteOptions::new(&path)).await.expect("open the store");
        Self { store, path, dir }
    }
}

/// The conformance suite's factory: a fresh database in its own temporary directory, which the
/// generated test keeps until the case ends.
async fn fresh_store() -> (Arc<dyn Store>, TempDir) {
    let temp = TempStore::new().await;
    (Arc::new(temp.store), temp.dir)
}

mod conformance {
    store::conformance_tests!(crate::fresh_store());
}
