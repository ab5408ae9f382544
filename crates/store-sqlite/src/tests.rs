//! Unit tests that need the store's internals: the shared filter cases run again with the
//! sparse drivers turned off, so the ordered drivers, which large registries use, are checked on
//! the conformance suite's small data too.

use std::sync::Arc;

use store::conformance;

use crate::{SqliteOptions, SqliteStore};

/// A store that never picks a sparse driver, and the directory holding it.
async fn ordered_only() -> (Arc<dyn store::Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut store = SqliteStore::open(SqliteOptions::new(dir.path().join("t.db"))).await.unwrap();
    store.sparse_bound = 0;
    (Arc::new(store), dir)
}

#[tokio::test]
async fn filters_agree_with_in_memory_evaluation_on_ordered_drivers() {
    let (store, _dir) = ordered_only().await;
    conformance::filters_agree_with_in_memory_evaluation(store).await;
}

#[tokio::test]
async fn missing_tags_satisfy_only_negations_on_ordered_drivers() {
    let (store, _dir) = ordered_only().await;
    conformance::missing_tags_satisfy_only_negations(store).await;
}

#[tokio::test]
async fn group_devices_of_dynamic_group_on_ordered_drivers() {
    let (store, _dir) = ordered_only().await;
    conformance::group_devices_of_dynamic_group(store).await;
}
