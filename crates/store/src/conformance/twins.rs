//! Conformance cases of device twins (`device_twin`, `update_twin`, `report_twin`,
//! `twin_history`, and what replacing or deleting a device does to a twin).

use std::num::NonZeroU32;
use std::sync::Arc;

use domain::twin::PropertyMeta;
use domain::{
    Convergence, DeviceTwin, LifecycleState, SectionName, Timestamp, TwinError, TwinEtag,
    TwinLimits, TwinPolicy,
};
use serde_json::{Value, json};

use crate::conformance::{
    BASE, at, audit_since, check_chain, check_record, id, last_seq, new_device,
};
use crate::{Store, StoreError, TwinHistoryQuery, TwinUpdate};

fn doc(v: Value) -> domain::twin::Document {
    match v {
        Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

fn ts(ms: i64) -> Timestamp {
    Timestamp::from_millis(BASE + ms)
}

fn desired(v: Value) -> TwinUpdate {
    TwinUpdate { desired: Some(v), ..TwinUpdate::default() }
}

fn history_query(
    section: Option<SectionName>,
    before: Option<u64>,
    limit: u32,
) -> TwinHistoryQuery {
    TwinHistoryQuery { section, before, limit: NonZeroU32::new(limit).unwrap() }
}

/// An unknown device has no twin; a device whose twin never changed has an empty one at
/// versions 0; a change of an unknown device is `NotFound` and writes nothing.
pub async fn twin_of_unknown_and_new_devices(store: Arc<dyn Store>) {
    let policy = TwinPolicy::default();
    assert_eq!(store.device_twin(&id("ghost")).await.unwrap(), None);
    store.create_device(&new_device("d1", LifecycleState::Active), &at(1)).await.unwrap();
    assert_eq!(store.device_twin(&id("d1")).await.unwrap(), Some(DeviceTwin::empty(id("d1"))));
    let seq = last_seq(&*store).await;
    let err = store.update_twin(&id("ghost"), &desired(json!({"a": 1})), &policy, &at(2)).await;
    assert!(matches!(err, Err(StoreError::NotFound { kind: "device", .. })), "{err:?}");
    let err = store.report_twin(&id("ghost"), &json!({"a": 1}), &policy, ts(2)).await;
    assert!(matches!(err, Err(StoreError::NotFound { kind: "device", .. })), "{err:?}");
    assert_eq!(last_seq(&*store).await, seq);
    let page = store.twin_history(&id("ghost"), &history_query(None, None, 10)).await.unwrap();
    assert!(page.items.is_empty());
    check_chain(&*store).await;
}

/// An operator's change merges its patches into the device's desired layer and the tags,
/// recomputes the effective desired document, bumps the changed sections' versions, keeps
/// per-property metadata and is audited once; a no-op writes nothing; a stale `if_match`, a
/// non-object patch or a result past the limits is refused and writes nothing.
pub async fn twin_update_patches_versions_and_audits(store: Arc<dyn Store>) {
    let policy = TwinPolicy::default();
    store.create_device(&new_device("d1", LifecycleState::Active), &at(1)).await.unwrap();
    let seq = last_seq(&*store).await;

    let m = at(10);
    let update = TwinUpdate {
        desired: Some(json!({"led": {"color": "red", "on": true}, "rate": 5})),
        tags: Some(json!({"owner": "ops"})),
        if_match: Some(TwinEtag { desired: 0, tags: 0 }),
    };
    let c = store.update_twin(&id("d1"), &update, &policy, &m).await.unwrap().unwrap();
    assert!(c.changed && c.desired_changed);
    let t = &c.twin;
    assert_eq!(t.desired.document, doc(json!({"led": {"color": "red", "on": true}, "rate": 5})));
    assert_eq!(t.device_desired.document, t.desired.document);
    assert_eq!(t.etag(), TwinEtag { desired: 1, tags: 1 });
    assert_eq!(t.desired.metadata["/led/color"], PropertyMeta { updated_at: m.at, version: 1 });
    assert_eq!(t.tags.document, doc(json!({"owner": "ops"})));
    assert_eq!(t.reported.version, 0);
    assert_eq!(store.device_twin(&id("d1")).await.unwrap().as_ref(), Some(t));
    let records = audit_since(&*store, seq).await;
    assert_eq!(records.len(), 1);
    let after = json!({
        "versions": {"desired": 1, "device_desired": 1, "tags": 1},
        "patch": {
            "desired": {"led": {"color": "red", "on": true}, "rate": 5},
            "tags": {"owner": "ops"},
        },
    });
    check_record(&records[0], &m, "device.twin.update", "device/d1", None, Some(after));

    // A second change: deletes with null, keeps the metadata of what it does not touch.
    let m2 = at(20);
    let c = store
        .update_twin(&id("d1"), &desired(json!({"led": {"on": null}, "rate": 6})), &policy, &m2)
        .await
        .unwrap()
        .unwrap();
    let t = &c.twin;
    assert_eq!(t.desired.document, doc(json!({"led": {"color": "red"}, "rate": 6})));
    assert_eq!(t.etag(), TwinEtag { desired: 2, tags: 1 });
    assert_eq!(t.desired.metadata["/led/color"], PropertyMeta { updated_at: m.at, version: 1 });
    assert_eq!(t.desired.metadata["/rate"], PropertyMeta { updated_at: m2.at, version: 2 });
    assert!(!t.desired.metadata.contains_key("/led/on"));
    let seq = last_seq(&*store).await;

    // A no-op: nothing written, versions kept.
    let c = store
        .update_twin(&id("d1"), &desired(json!({"rate": 6})), &policy, &at(30))
        .await
        .unwrap()
        .unwrap();
    assert!(!c.changed && !c.desired_changed);
    assert_eq!(c.twin.etag(), TwinEtag { desired: 2, tags: 1 });
    assert_eq!(last_seq(&*store).await, seq);

    // Refusals write nothing.
    let before = store.device_twin(&id("d1")).await.unwrap();
    let stale =
        TwinUpdate { if_match: Some(TwinEtag { desired: 1, tags: 1 }), ..desired(json!({"x": 1})) };
    assert_eq!(
        store.update_twin(&id("d1"), &stale, &policy, &at(40)).await.unwrap(),
        Err(TwinError::EtagMismatch {
            expected: TwinEtag { desired: 1, tags: 1 },
            current: TwinEtag { desired: 2, tags: 1 },
        })
    );
    let not_object = TwinUpdate { tags: Some(json!("x")), ..desired(json!({"x": 1})) };
    assert_eq!(
        store.update_twin(&id("d1"), &not_object, &policy, &at(41)).await.unwrap(),
        Err(TwinError::NotAnObject { section: "tags" })
    );
    let small = TwinPolicy {
        limits: TwinLimits { max_section_bytes: 64, max_depth: 3 },
        ..TwinPolicy::default()
    };
    let big = desired(json!({"blob": "x".repeat(64)}));
    let err = store.update_twin(&id("d1"), &big, &small, &at(42)).await.unwrap();
    assert!(
        matches!(err, Err(TwinError::TooLarge { section: "desired", limit: 64, .. })),
        "{err:?}"
    );
    let deep = desired(json!({"a": {"b": {"c": {"d": 1}}}}));
    let err = store.update_twin(&id("d1"), &deep, &small, &at(43)).await.unwrap();
    assert!(matches!(err, Err(TwinError::TooDeep { depth: 4, limit: 3, .. })), "{err:?}");
    assert_eq!(store.device_twin(&id("d1")).await.unwrap(), before);
    assert_eq!(last_seq(&*store).await, seq);
    check_chain(&*store).await;
}

/// A device's report merges into `reported` with its own version and metadata, is not audited,
/// never changes the operator-owned versions, and drives the delta and convergence.
pub async fn twin_report_converges_without_audit(store: Arc<dyn Store>) {
    let policy = TwinPolicy::default();
    store.create_device(&new_device("d1", LifecycleState::Active), &at(1)).await.unwrap();
    store
        .update_twin(&id("d1"), &desired(json!({"led": "red", "rate": 5})), &policy, &at(10))
        .await
        .unwrap()
        .unwrap();
    let seq = last_seq(&*store).await;
    let twin = store.device_twin(&id("d1")).await.unwrap().unwrap();
    assert_eq!(twin.delta(), doc(json!({"led": "red", "rate": 5})));
    assert_eq!(twin.convergence(), Convergence::Pending { since: ts(10) });

    let c = store.report_twin(&id("d1"), &json!({"led": "red"}), &policy, ts(20)).await.unwrap();
    let c = c.unwrap();
    assert!(c.changed && !c.desired_changed);
    assert_eq!(c.twin.reported.version, 1);
    assert_eq!(c.twin.etag(), TwinEtag { desired: 1, tags: 0 });
    assert_eq!(c.twin.delta(), doc(json!({"rate": 5})));
    assert_eq!(c.twin.convergence(), Convergence::Pending { since: ts(10) });

    // The device reports another rate after the desired one was set: drifted.
    let c = store.report_twin(&id("d1"), &json!({"rate": 4}), &policy, ts(30)).await.unwrap();
    assert_eq!(c.unwrap().twin.convergence(), Convergence::Drifted { since: ts(30) });

    let patch = json!({"rate": 5, "uptime": 9});
    let c = store.report_twin(&id("d1"), &patch, &policy, ts(40)).await.unwrap();
    let twin = c.unwrap().twin;
    assert!(twin.delta().is_empty());
    assert_eq!(twin.convergence(), Convergence::InSync);
    assert_eq!(twin.reported.version, 3);
    assert_eq!(twin.reported.metadata["/uptime"], PropertyMeta { updated_at: ts(40), version: 3 });
    assert_eq!(store.device_twin(&id("d1")).await.unwrap(), Some(twin.clone()));

    // A no-op report and a refused one change nothing.
    let c = store.report_twin(&id("d1"), &json!({"rate": 5}), &policy, ts(50)).await.unwrap();
    assert!(!c.unwrap().changed);
    let r = store.report_twin(&id("d1"), &json!([1]), &policy, ts(51)).await.unwrap();
    assert_eq!(r, Err(TwinError::NotAnObject { section: "reported" }));
    assert_eq!(store.device_twin(&id("d1")).await.unwrap(), Some(twin));
    assert_eq!(last_seq(&*store).await, seq, "reports are not audited");
    check_chain(&*store).await;
}

/// Every change of a section appends one history entry (newest first when read, filtered by
/// section, paged by `seq`); only the newest `history_per_device` entries of a device are kept.
pub async fn twin_history_pages_and_prunes(store: Arc<dyn Store>) {
    let policy = TwinPolicy { history_per_device: 4, ..TwinPolicy::default() };
    for d in ["d1", "d2"] {
        store.create_device(&new_device(d, LifecycleState::Active), &at(1)).await.unwrap();
    }
    let both = TwinUpdate { tags: Some(json!({"t": 1})), ..desired(json!({"a": 1})) };
    store.update_twin(&id("d1"), &both, &policy, &at(10)).await.unwrap().unwrap();
    store.report_twin(&id("d1"), &json!({"a": 1}), &policy, ts(20)).await.unwrap().unwrap();
    store
        .update_twin(&id("d2"), &desired(json!({"z": 1})), &policy, &at(21))
        .await
        .unwrap()
        .unwrap();
    store
        .update_twin(&id("d1"), &desired(json!({"a": 2})), &policy, &at(30))
        .await
        .unwrap()
        .unwrap();

    let page = store.twin_history(&id("d1"), &history_query(None, None, 10)).await.unwrap();
    assert!(!page.has_more);
    let got: Vec<_> =
        page.items.iter().map(|e| (e.seq, e.section, e.version, e.patch.clone())).collect();
    assert_eq!(
        got,
        [
            (4, SectionName::Desired, 2, json!({"a": 2})),
            (3, SectionName::Reported, 1, json!({"a": 1})),
            (2, SectionName::Tags, 1, json!({"t": 1})),
            (1, SectionName::Desired, 1, json!({"a": 1})),
        ]
    );
    assert_eq!(page.items[1].actor, "device:d1");
    assert_eq!(page.items[1].at, ts(20));
    assert_eq!(page.items[0].actor, at(30).actor.to_string());

    let first = store.twin_history(&id("d1"), &history_query(None, None, 2)).await.unwrap();
    assert!(first.has_more);
    let q = history_query(None, Some(first.items[1].seq), 2);
    let next = store.twin_history(&id("d1"), &q).await.unwrap();
    assert!(!next.has_more);
    assert_eq!(next.items.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 1]);
    let q = history_query(Some(SectionName::Desired), None, 10);
    let desired_only = store.twin_history(&id("d1"), &q).await.unwrap();
    let seqs: Vec<_> = desired_only.items.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [4, 1]);

    // Two more changes: the oldest two entries go.
    store.report_twin(&id("d1"), &json!({"a": 2}), &policy, ts(40)).await.unwrap().unwrap();
    store.report_twin(&id("d1"), &json!({"b": 2}), &policy, ts(41)).await.unwrap().unwrap();
    let page = store.twin_history(&id("d1"), &history_query(None, None, 10)).await.unwrap();
    assert_eq!(page.items.iter().map(|e| e.seq).collect::<Vec<_>>(), [6, 5, 4, 3]);
    let other = store.twin_history(&id("d2"), &history_query(None, None, 10)).await.unwrap();
    assert_eq!(other.items.len(), 1, "other devices keep theirs");
    check_chain(&*store).await;
}

/// Deleting a device deletes its twin and history; a device created again under the same id
/// starts with an empty twin.
pub async fn delete_device_removes_twin(store: Arc<dyn Store>) {
    let policy = TwinPolicy::default();
    store.create_device(&new_device("d1", LifecycleState::Active), &at(1)).await.unwrap();
    store
        .update_twin(&id("d1"), &desired(json!({"a": 1})), &policy, &at(2))
        .await
        .unwrap()
        .unwrap();
    store.report_twin(&id("d1"), &json!({"a": 1}), &policy, ts(3)).await.unwrap().unwrap();
    store.delete_device(&id("d1"), None, &at(4)).await.unwrap();
    assert_eq!(store.device_twin(&id("d1")).await.unwrap(), None);
    store.create_device(&new_device("d1", LifecycleState::Active), &at(5)).await.unwrap();
    assert_eq!(store.device_twin(&id("d1")).await.unwrap(), Some(DeviceTwin::empty(id("d1"))));
    let page = store.twin_history(&id("d1"), &history_query(None, None, 10)).await.unwrap();
    assert!(page.items.is_empty());
    check_chain(&*store).await;
}

/// Replacing a device gives the successor (created by the replacement) the old device's own
/// desired layer and twin tags, recomputed, with history by `replacement:<old>` and a
/// `device.twin.update` record on the successor; its reported section starts empty.
pub async fn replace_device_moves_the_twin(store: Arc<dyn Store>) {
    let policy = TwinPolicy::default();
    store.create_device(&new_device("old", LifecycleState::Active), &at(1)).await.unwrap();
    let both = TwinUpdate { tags: Some(json!({"owner": "ops"})), ..desired(json!({"led": "red"})) };
    store.update_twin(&id("old"), &both, &policy, &at(2)).await.unwrap().unwrap();
    store.report_twin(&id("old"), &json!({"led": "red"}), &policy, ts(3)).await.unwrap().unwrap();
    let old_twin = store.device_twin(&id("old")).await.unwrap().unwrap();
    let seq = last_seq(&*store).await;

    let m = at(100);
    store.replace_device(&id("old"), &id("new"), &m).await.unwrap();
    let twin = store.device_twin(&id("new")).await.unwrap().unwrap();
    assert_eq!(twin.device_desired.document, doc(json!({"led": "red"})));
    assert_eq!(twin.desired.document, doc(json!({"led": "red"})));
    assert_eq!(twin.tags.document, doc(json!({"owner": "ops"})));
    assert_eq!(twin.etag(), TwinEtag { desired: 1, tags: 1 });
    assert_eq!(twin.desired.metadata["/led"], PropertyMeta { updated_at: m.at, version: 1 });
    assert_eq!(twin.reported.version, 0);
    assert_eq!(twin.delta(), doc(json!({"led": "red"})));
    assert_eq!(
        store.device_twin(&id("old")).await.unwrap(),
        Some(old_twin),
        "the old keeps its own"
    );

    let page = store.twin_history(&id("new"), &history_query(None, None, 10)).await.unwrap();
    let got: Vec<_> = page.items.iter().map(|e| (e.section, e.actor.as_str())).collect();
    assert_eq!(
        got,
        [(SectionName::Tags, "replacement:old"), (SectionName::Desired, "replacement:old")]
    );
    let records = audit_since(&*store, seq).await;
    let twin_records: Vec<_> =
        records.iter().filter(|r| r.action == "device.twin.update").collect();
    assert_eq!(twin_records.len(), 1);
    let after = json!({
        "versions": {"desired": 1, "device_desired": 1, "tags": 1},
        "patch": {"desired": {"led": "red"}, "tags": {"owner": "ops"}},
        "from": "old",
    });
    check_record(twin_records[0], &m, "device.twin.update", "device/new", None, Some(after));
    assert_eq!(records.last().unwrap().action, "device.replace");
    check_chain(&*store).await;
}
