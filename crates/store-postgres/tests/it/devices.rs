//! Devices: create, read, optimistic concurrency, lifecycle, paging, counts and import.

use std::num::NonZeroU32;

use domain::{
    Attributes, DeviceId, DevicePatch, DisplayName, ImportRow, LifecycleState, NewDevice, Tags,
};
use store::{DeviceQuery, ImportMode, ImportOutcome, Store, StoreError};

use crate::db::{at, test_db};

pub(crate) fn id(s: &str) -> DeviceId {
    DeviceId::new(s).expect("a valid test device id")
}

pub(crate) fn new_device(name: &str, tags: &[(&str, &str)]) -> NewDevice {
    NewDevice {
        id: id(name),
        name: DisplayName::new(format!("Device {name}")).expect("a valid name"),
        tags: Tags::new(tags.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())))
            .expect("valid test tags"),
        attributes: Attributes::new(serde_json::json!({"fw": "1.0", "n": 1.5}), 1024)
            .expect("valid attributes"),
        state: LifecycleState::Registered,
    }
}

pub(crate) fn page(limit: u32, after: Option<&str>) -> DeviceQuery {
    DeviceQuery {
        filter: None,
        after: after.map(id),
        limit: NonZeroU32::new(limit).expect("a positive limit"),
    }
}

#[tokio::test]
async fn create_read_update_delete() {
    let Some(db) = test_db().await else { return };
    let s = &db.store;

    let created =
        s.create_device(&new_device("d1", &[("site", "berlin")]), &at(1000)).await.unwrap();
    assert_eq!(created.version, 1);
    assert_eq!(created.created_at.millis(), 1000);
    assert_eq!(s.device(&id("d1")).await.unwrap(), Some(created.clone()));
    assert_eq!(s.device(&id("nope")).await.unwrap(), None);

    let again = s.create_device(&new_device("d1", &[]), &at(1001)).await.unwrap_err();
    assert!(matches!(again, StoreError::AlreadyExists { kind: "device", .. }), "{again:?}");

    let mut suspended = new_device("d2", &[]);
    suspended.state = LifecycleState::Suspended;
    let err = s.create_device(&suspended, &at(1002)).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");

    let patch = DevicePatch { state: Some(LifecycleState::Active), ..Default::default() };
    let updated = s.update_device(&id("d1"), &patch, Some(1), &at(2000)).await.unwrap();
    assert_eq!((updated.version, updated.state), (2, LifecycleState::Active));
    assert_eq!(updated.updated_at.millis(), 2000);
    assert_eq!(updated.created_at.millis(), 1000);

    // The same patch again is a no-op: same version, no new audit record.
    let same = s.update_device(&id("d1"), &patch, None, &at(2500)).await.unwrap();
    assert_eq!(same, updated);

    let stale = s.update_device(&id("d1"), &patch, Some(1), &at(3000)).await.unwrap_err();
    assert!(matches!(stale, StoreError::VersionMismatch { expected: 1, current: 2 }), "{stale:?}");

    let retire = DevicePatch { state: Some(LifecycleState::Retired), ..Default::default() };
    let illegal = s.update_device(&id("d1"), &retire, None, &at(3000)).await.unwrap_err();
    assert!(matches!(illegal, StoreError::IllegalTransition(_)), "{illegal:?}");

    let tags = Tags::new([("site".to_owned(), "paris".to_owned())]).unwrap();
    let retag = DevicePatch { tags: Some(tags.clone()), ..Default::default() };
    let retagged = s.update_device(&id("d1"), &retag, Some(2), &at(4000)).await.unwrap();
    assert_eq!(retagged.tags, tags);
    assert_eq!(retagged.version, 3);

    let missing = s.update_device(&id("nope"), &patch, None, &at(5000)).await.unwrap_err();
    assert!(matches!(missing, StoreError::NotFound { kind: "device", .. }), "{missing:?}");

    let err = s.delete_device(&id("d1"), Some(2), &at(5000)).await.unwrap_err();
    assert!(matches!(err, StoreError::VersionMismatch { .. }), "{err:?}");
    s.delete_device(&id("d1"), Some(3), &at(5000)).await.unwrap();
    assert_eq!(s.device(&id("d1")).await.unwrap(), None);
    let err = s.delete_device(&id("d1"), None, &at(5000)).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");

    let actions: Vec<String> =
        s.audit_records(0, NonZeroU32::MAX).await.unwrap().into_iter().map(|r| r.action).collect();
    assert_eq!(actions, ["device.create", "device.update", "device.update", "device.delete"]);
    db.drop().await;
}

#[tokio::test]
async fn pages_are_ordered_bytewise_by_id() {
    let Some(db) = test_db().await else { return };
    let s = &db.store;
    // Bytewise order puts upper case before lower case and '-' before digits.
    let ids = ["b", "B", "a-1", "a1", "a:1", "A", "a.1", "a_1", "Z9"];
    for (i, name) in ids.iter().enumerate() {
        s.create_device(&new_device(name, &[]), &at(i as i64)).await.unwrap();
    }
    let mut expected: Vec<&str> = ids.to_vec();
    expected.sort_unstable();

    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let p = s.list_devices(&page(4, after.as_deref())).await.unwrap();
        seen.extend(p.items.iter().map(|d| d.id.to_string()));
        if !p.has_more {
            break;
        }
        after = seen.last().cloned();
    }
    assert_eq!(seen, expected);

    let exact = s.list_devices(&page(9, None)).await.unwrap();
    assert_eq!((exact.items.len(), exact.has_more), (9, false));
    let huge = s.list_devices(&page(u32::MAX, None)).await.unwrap();
    assert_eq!(huge.items.len(), 9);
    db.drop().await;
}

#[tokio::test]
async fn counts_by_state() {
    let Some(db) = test_db().await else { return };
    let s = &db.store;
    for name in ["a", "b", "c"] {
        s.create_device(&new_device(name, &[]), &at(1)).await.unwrap();
    }
    let activate = DevicePatch { state: Some(LifecycleState::Active), ..Default::default() };
    s.update_device(&id("b"), &activate, None, &at(2)).await.unwrap();
    let counts = s.count_devices_by_state().await.unwrap();
    assert_eq!(counts.0, vec![(LifecycleState::Registered, 2), (LifecycleState::Active, 1)]);
    db.drop().await;
}

fn row(line: u64, name: &str, patch: DevicePatch) -> ImportRow {
    ImportRow { line, id: id(name), patch }
}

#[tokio::test]
async fn import_best_effort_and_atomic() {
    let Some(db) = test_db().await else { return };
    let s = &db.store;
    s.create_device(&new_device("old", &[]), &at(1)).await.unwrap();

    let activate = DevicePatch { state: Some(LifecycleState::Active), ..Default::default() };
    let retire = DevicePatch { state: Some(LifecycleState::Retired), ..Default::default() };
    let rename =
        DevicePatch { name: Some(DisplayName::new("renamed").unwrap()), ..Default::default() };
    let rows = [
        row(1, "new", rename.clone()),
        row(2, "old", activate.clone()),
        row(3, "old", retire.clone()),
        row(4, "new", rename.clone()),
        row(5, "new", activate.clone()),
    ];

    // Atomic: one bad row, nothing is written, yet each outcome says what would have happened.
    let outcomes = s.import_devices(&rows, ImportMode::Atomic, &at(2)).await.unwrap();
    assert!(
        matches!(
            outcomes.as_slice(),
            [
                ImportOutcome::Created,
                ImportOutcome::Updated,
                ImportOutcome::Rejected(_),
                ImportOutcome::Unchanged,
                ImportOutcome::Updated,
            ]
        ),
        "{outcomes:?}"
    );
    assert_eq!(s.device(&id("new")).await.unwrap(), None);
    assert_eq!(s.device(&id("old")).await.unwrap().unwrap().version, 1);
    assert_eq!(s.audit_records(0, NonZeroU32::MAX).await.unwrap().len(), 1);

    // Best effort: the good rows stick.
    let again = s.import_devices(&rows, ImportMode::BestEffort, &at(3)).await.unwrap();
    assert_eq!(again, outcomes);
    let new = s.device(&id("new")).await.unwrap().unwrap();
    assert_eq!((new.name.as_str(), new.state, new.version), ("renamed", LifecycleState::Active, 2));
    let old = s.device(&id("old")).await.unwrap().unwrap();
    assert_eq!((old.state, old.version), (LifecycleState::Active, 2));

    let actions: Vec<String> = s
        .audit_records(1, NonZeroU32::MAX)
        .await
        .unwrap()
        .into_iter()
        .map(|r| format!("{} {}", r.action, r.resource))
        .collect();
    assert_eq!(
        actions,
        ["device.create device/new", "device.update device/old", "device.update device/new"]
    );

    // Creating in a non-initial state is rejected.
    let suspended = DevicePatch { state: Some(LifecycleState::Suspended), ..Default::default() };
    let out = s
        .import_devices(&[row(1, "fresh", suspended)], ImportMode::BestEffort, &at(4))
        .await
        .unwrap();
    assert!(matches!(out.as_slice(), [ImportOutcome::Rejected(_)]), "{out:?}");
    db.drop().await;
}

#[tokio::test]
async fn corrupt_rows_are_errors_not_panics() {
    let Some(db) = test_db().await else { return };
    let s = &db.store;
    s.create_device(&new_device("d1", &[]), &at(1)).await.unwrap();
    let mut raw = db.raw().await;
    sqlx::query("UPDATE devices SET state = 'sleeping', tags = 'not json'")
        .execute(&mut raw)
        .await
        .unwrap();
    let err = s.device(&id("d1")).await.unwrap_err();
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
    let err = s.list_devices(&page(10, None)).await.unwrap_err();
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
    let err = s.count_devices_by_state().await.unwrap_err();
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
    sqlx::query("UPDATE audit_log SET hash = '\\x00'").execute(&mut raw).await.unwrap();
    let err = s.audit_records(0, NonZeroU32::MIN).await.unwrap_err();
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
    db.drop().await;
}
