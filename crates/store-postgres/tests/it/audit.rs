//! The audit chain: one sealed record per change, verifiable, and tampering is named.

use std::num::NonZeroU32;

use domain::audit::verify_chain;
use domain::{DevicePatch, DisplayName};
use store::Store;

use crate::db::{at, test_db};
use crate::devices::{id, new_device};

#[tokio::test]
async fn chain_verifies_and_pages() {
    let Some(db) = test_db().await else { return };
    let s = &db.store;
    for i in 0..5 {
        s.create_device(&new_device(&format!("d{i}"), &[]), &at(i)).await.unwrap();
    }
    let all = s.audit_records(0, NonZeroU32::MAX).await.unwrap();
    assert_eq!(verify_chain(&all), Ok(5));
    let seqs: Vec<u64> = all.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    assert_eq!(all[0].actor, "system");
    assert_eq!(all[0].resource, "device/d0");
    let page = s.audit_records(2, NonZeroU32::new(2).unwrap()).await.unwrap();
    assert_eq!(page.iter().map(|r| r.seq).collect::<Vec<_>>(), [3, 4]);
    assert!(s.audit_records(u64::MAX, NonZeroU32::MAX).await.unwrap().is_empty());
    db.drop().await;
}

#[tokio::test]
async fn concurrent_writers_keep_one_chain() {
    let Some(db) = test_db().await else { return };
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let s = db.store.clone();
        tasks.spawn(async move {
            s.create_device(&new_device(&format!("d{i}"), &[]), &at(i)).await.unwrap();
            let patch = DevicePatch {
                name: Some(DisplayName::new(format!("n{i}")).unwrap()),
                ..Default::default()
            };
            s.update_device(&id(&format!("d{i}")), &patch, Some(1), &at(100 + i)).await.unwrap();
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let all = db.store.audit_records(0, NonZeroU32::MAX).await.unwrap();
    assert_eq!(verify_chain(&all), Ok(40));
    db.drop().await;
}

#[tokio::test]
async fn altered_row_is_named_by_verify_chain() {
    let Some(db) = test_db().await else { return };
    let s = &db.store;
    for i in 0..4 {
        s.create_device(&new_device(&format!("d{i}"), &[]), &at(i)).await.unwrap();
    }
    assert_eq!(verify_chain(&s.audit_records(0, NonZeroU32::MAX).await.unwrap()), Ok(4));

    let mut raw = db.raw().await;
    let changed = sqlx::query("UPDATE audit_log SET after = $1 WHERE seq = 3")
        .bind(r#"{"id":"someone-else"}"#)
        .execute(&mut raw)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(changed, 1);

    let broken = verify_chain(&s.audit_records(0, NonZeroU32::MAX).await.unwrap()).unwrap_err();
    assert_eq!(broken.seq, 3, "{broken}");
    assert!(broken.reason.contains("altered"), "{broken}");

    // Removing a record is named too: the first missing sequence number.
    sqlx::query("DELETE FROM audit_log WHERE seq = 2").execute(&mut raw).await.unwrap();
    let broken = verify_chain(&s.audit_records(0, NonZeroU32::MAX).await.unwrap()).unwrap_err();
    assert_eq!(broken.seq, 2, "{broken}");
    db.drop().await;
}
