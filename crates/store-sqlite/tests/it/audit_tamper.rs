//! What happens when someone edits the database file behind Herd's back.

use std::num::NonZeroU32;

use domain::audit::verify_chain;
use domain::{
    Actor, Attributes, DeviceId, DisplayName, LifecycleState, Mutation, NewDevice, Tags, Timestamp,
};
use sqlx::{Connection, SqliteConnection};
use store::{Store, StoreError};

use crate::TempStore;

async fn with_devices(n: usize) -> TempStore {
    let temp = TempStore::new().await;
    for i in 0..n {
        let new = NewDevice {
            id: DeviceId::new(format!("d{i}")).expect("valid id"),
            name: DisplayName::default(),
            tags: Tags::default(),
            attributes: Attributes::default(),
            state: LifecycleState::Active,
        };
        let m = Mutation { actor: Actor::system(), at: Timestamp::from_millis(1_000 + i as i64) };
        temp.store.create_device(&new, &m).await.expect("create device");
    }
    temp
}

/// Runs one statement on its own connection to the file, as a person with `sqlite3` would.
async fn tamper(temp: &TempStore, sql: &'static str) {
    let url = format!("sqlite://{}", temp.path.display());
    let mut conn = SqliteConnection::connect(&url).await.expect("open the file");
    let done = sqlx::query(sql).execute(&mut conn).await.expect("tamper");
    assert_eq!(done.rows_affected(), 1, "{sql}");
    conn.close().await.expect("close");
}

#[tokio::test]
async fn altered_audit_row_is_named_by_verify_chain() {
    let temp = with_devices(4).await;
    let records = temp.store.audit_records(0, NonZeroU32::new(100).unwrap()).await.unwrap();
    assert_eq!(verify_chain(&records), Ok(4));

    tamper(&temp, r#"UPDATE audit SET after = '{"id":"evil"}' WHERE seq = 2"#).await;

    let records = temp.store.audit_records(0, NonZeroU32::new(100).unwrap()).await.unwrap();
    assert_eq!(records[1].after.as_deref(), Some(r#"{"id":"evil"}"#));
    let broken = verify_chain(&records).unwrap_err();
    assert_eq!(broken.seq, 2);
    assert_eq!(
        broken.to_string(),
        "audit chain broken at record 2: its content does not match its hash (record altered)"
    );
}

#[tokio::test]
async fn removed_audit_row_is_named_by_verify_chain() {
    let temp = with_devices(4).await;
    tamper(&temp, "DELETE FROM audit WHERE seq = 3").await;
    let records = temp.store.audit_records(0, NonZeroU32::new(100).unwrap()).await.unwrap();
    assert_eq!(verify_chain(&records).unwrap_err().seq, 3);
}

#[tokio::test]
async fn corrupt_device_rows_are_backend_errors() {
    let temp = with_devices(3).await;
    tamper(&temp, "UPDATE devices SET state = 'sleeping' WHERE id = 'd0'").await;
    tamper(&temp, "UPDATE devices SET tags_json = 'not json' WHERE id = 'd1'").await;
    tamper(&temp, "UPDATE devices SET version = -1 WHERE id = 'd2'").await;
    for id in ["d0", "d1", "d2"] {
        let err = temp.store.device(&DeviceId::new(id).unwrap()).await;
        assert!(matches!(err, Err(StoreError::Backend(_))), "{id}: {err:?}");
        assert!(err.unwrap_err().to_string().starts_with("storage backend failed"));
    }
}

#[tokio::test]
async fn the_store_reopens_with_its_data() {
    let temp = with_devices(2).await;
    temp.store.close().await;
    let store = store_sqlite::SqliteStore::open(store_sqlite::SqliteOptions::new(&temp.path))
        .await
        .unwrap();
    assert!(store.device(&DeviceId::new("d1").unwrap()).await.unwrap().is_some());
    let records = store.audit_records(0, NonZeroU32::new(10).unwrap()).await.unwrap();
    assert_eq!(verify_chain(&records), Ok(2));
}
