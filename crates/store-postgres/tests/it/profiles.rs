//! What only PostgreSQL has of configuration profiles: several nodes draining the twin recompute
//! queue at once.

use std::collections::BTreeSet;
use std::num::NonZeroU32;

use domain::{NewProfile, ProfileName, ProfileTarget, Timestamp, TwinPolicy};
use sqlx::Connection;
use store::Store;

use crate::db::{at, test_db};
use crate::devices::new_device;

fn fleet_profile() -> NewProfile {
    let serde_json::Value::Object(document) = serde_json::json!({"fan": "auto"}) else {
        unreachable!("an object literal")
    };
    NewProfile {
        name: ProfileName::new("base").expect("a valid profile name"),
        description: String::new(),
        target: ProfileTarget::Fleet,
        priority: 0,
        document,
    }
}

/// A drain skips the queue rows another drain holds instead of waiting for them, and takes them
/// once they are free; concurrent drains take disjoint devices.
#[tokio::test]
async fn drains_skip_rows_held_by_another_drain() {
    let Some(db) = test_db().await else { return };
    let s = &db.store;
    s.create_profile(&fleet_profile(), &at(1)).await.unwrap();
    for i in 0..30 {
        s.create_device(&new_device(&format!("d{i:02}"), &[]), &at(2 + i)).await.unwrap();
    }
    let policy = TwinPolicy::default();
    let limit = |n| NonZeroU32::new(n).unwrap();

    // Another node holds the five oldest rows.
    let mut other = db.raw().await;
    let mut tx = other.begin().await.unwrap();
    let held: Vec<String> = sqlx::query_scalar(
        "SELECT device_id FROM twin_recompute ORDER BY queued_at, device_id LIMIT 5 FOR UPDATE",
    )
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    assert_eq!(held, ["d00", "d01", "d02", "d03", "d04"]);
    let r = s.recompute_twins(limit(10), &policy, Timestamp::from_millis(100)).await.unwrap();
    let ids: Vec<&str> = r.changed.iter().map(|t| t.device_id.as_str()).collect();
    assert_eq!(ids, ["d05", "d06", "d07", "d08", "d09", "d10", "d11", "d12", "d13", "d14"]);
    tx.rollback().await.unwrap();

    // Two drains at once share the rest.
    let (a, b) = tokio::join!(
        s.recompute_twins(limit(12), &policy, Timestamp::from_millis(200)),
        s.recompute_twins(limit(12), &policy, Timestamp::from_millis(200)),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let mut seen = BTreeSet::new();
    for t in a.changed.iter().chain(&b.changed) {
        assert!(seen.insert(t.device_id.to_string()), "{} recomputed twice", t.device_id);
    }
    let rest = s.recompute_twins(limit(100), &policy, Timestamp::from_millis(300)).await.unwrap();
    seen.extend(rest.changed.iter().map(|t| t.device_id.to_string()));
    assert_eq!(a.taken + b.taken + rest.taken, 20);
    assert_eq!(seen.len(), 20);
    assert_eq!(s.recompute_queue_len().await.unwrap(), 0);
    other.close().await.unwrap();
    db.drop().await;
}
