//! Conformance cases of configuration profiles: profile CRUD and its audit, groups with profiles,
//! the layers a device gets, the durable recompute queue (what fills it, draining it) and the
//! reach preview.

use std::num::NonZeroU32;
use std::sync::Arc;

use domain::{
    ConfigProfile, DevicePatch, GroupPatch, LifecycleState, NewProfile, ProfileName, ProfilePatch,
    ProfileTarget, SectionName, Timestamp, TwinError, TwinLimits, TwinPolicy,
};
use serde_json::{Value, json};

use crate::conformance::{
    BASE, at, audit_since, check_chain, check_record, dynamic_group, group_name, id, last_seq,
    new_device, nz, parse, put_in_state, static_group, tags,
};
use crate::profiles::{ProfileQuery, RECOMPUTE_ACTOR, Recomputed};
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

fn pname(s: &str) -> ProfileName {
    ProfileName::new(s).unwrap()
}

fn group(g: &str) -> ProfileTarget {
    ProfileTarget::Group(group_name(g))
}

fn new_profile(n: &str, target: ProfileTarget, priority: i32, document: Value) -> NewProfile {
    NewProfile {
        name: pname(n),
        description: format!("profile {n}"),
        target,
        priority,
        document: doc(document),
    }
}

fn profile_query(target: Option<ProfileTarget>, after: Option<&str>, limit: u32) -> ProfileQuery {
    ProfileQuery { target, after: after.map(pname), limit: nz(limit) }
}

fn names(items: &[ConfigProfile]) -> Vec<&str> {
    items.iter().map(|p| p.name.as_str()).collect()
}

/// Takes everything off the recompute queue with the default policy.
async fn drain(store: &dyn Store, t: i64) -> Recomputed {
    store
        .recompute_twins(NonZeroU32::new(1000).unwrap(), &TwinPolicy::default(), ts(t))
        .await
        .unwrap()
}

/// Asserts that exactly `expected` (among `known`) are on the recompute queue.
#[track_caller]
fn assert_queue(actual: &(Vec<&str>, u64), expected: &[&str], what: &str) {
    assert_eq!(actual.0, expected, "queued devices after {what}");
    assert_eq!(actual.1, expected.len() as u64, "queue length after {what}");
}

/// Which of `known` are queued, and the queue's length.
async fn queue_of<'a>(store: &dyn Store, known: &[&'a str]) -> (Vec<&'a str>, u64) {
    let mut pending = Vec::new();
    for d in known {
        if store.recompute_pending(&id(d)).await.unwrap() {
            pending.push(*d);
        }
    }
    (pending, store.recompute_queue_len().await.unwrap())
}

fn changed_ids(r: &Recomputed) -> Vec<String> {
    r.changed.iter().map(|t| t.device_id.to_string()).collect()
}

/// Profiles are created at version 1, read, listed in name order (pages, target filter), patched
/// with a version check and deleted, each change audited once with `audit_summary` before and
/// after; a duplicate name, an unknown group, an unknown profile or a stale version is refused and
/// writes nothing; a patch that changes nothing writes nothing.
pub async fn profile_crud_and_audit(store: Arc<dyn Store>) {
    store.create_group(&static_group("g"), &at(1)).await.unwrap();
    let seq = last_seq(&*store).await;

    let m1 = at(10);
    let base = store
        .create_profile(&new_profile("base", ProfileTarget::Fleet, 0, json!({"a": 1})), &m1)
        .await
        .unwrap();
    assert_eq!(
        (base.version, base.created_at, base.updated_at, base.priority),
        (1, m1.at, m1.at, 0)
    );
    assert_eq!(base.document, doc(json!({"a": 1})));
    let m2 = at(11);
    let st = store
        .create_profile(&new_profile("st", group("g"), 5, json!({"b": 2})), &m2)
        .await
        .unwrap();
    assert_eq!(store.profile(&pname("base")).await.unwrap().as_ref(), Some(&base));
    assert_eq!(store.profile(&pname("st")).await.unwrap().as_ref(), Some(&st));
    assert_eq!(store.profile(&pname("nope")).await.unwrap(), None);

    // Refusals write nothing.
    let seq_mid = last_seq(&*store).await;
    let err = store
        .create_profile(&new_profile("base", group("g"), 1, json!({})), &at(12))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::AlreadyExists { kind: "config_profile", id } if id == "base"),
        "{err:?}"
    );
    let err = store
        .create_profile(&new_profile("lost", group("ghost"), 1, json!({})), &at(12))
        .await
        .unwrap_err();
    assert!(matches!(&err, StoreError::NotFound { kind: "group", id } if id == "ghost"), "{err:?}");
    assert_eq!(store.profile(&pname("lost")).await.unwrap(), None);
    assert_eq!(last_seq(&*store).await, seq_mid);

    // Listing: name order, pages, target filter.
    store
        .create_profile(&new_profile("alpha", ProfileTarget::Fleet, 3, json!({})), &at(13))
        .await
        .unwrap();
    let all = store.list_profiles(&profile_query(None, None, 10)).await.unwrap();
    assert_eq!((names(&all.items), all.has_more), (vec!["alpha", "base", "st"], false));
    let page = store.list_profiles(&profile_query(None, None, 2)).await.unwrap();
    assert_eq!((names(&page.items), page.has_more), (vec!["alpha", "base"], true));
    let page = store.list_profiles(&profile_query(None, Some("base"), 2)).await.unwrap();
    assert_eq!((names(&page.items), page.has_more), (vec!["st"], false));
    let fleet =
        store.list_profiles(&profile_query(Some(ProfileTarget::Fleet), None, 10)).await.unwrap();
    assert_eq!(names(&fleet.items), ["alpha", "base"]);
    let of_g = store.list_profiles(&profile_query(Some(group("g")), None, 10)).await.unwrap();
    assert_eq!(of_g.items, std::slice::from_ref(&st));
    let of_other = store.list_profiles(&profile_query(Some(group("x")), None, 10)).await.unwrap();
    assert!(of_other.items.is_empty());

    // Update: merge patch of the document, version bump, audit.
    let m3 = at(20);
    let patch = ProfilePatch {
        description: Some("the base".to_owned()),
        priority: Some(7),
        document: Some(json!({"a": null, "c": {"d": 1}})),
        expected_version: Some(1),
        ..ProfilePatch::default()
    };
    let base2 = store.update_profile(&pname("base"), &patch, &m3).await.unwrap();
    assert_eq!((base2.version, base2.updated_at, base2.created_at), (2, m3.at, m1.at));
    assert_eq!((base2.description.as_str(), base2.priority), ("the base", 7));
    assert_eq!(base2.document, doc(json!({"c": {"d": 1}})));
    assert_eq!(store.profile(&pname("base")).await.unwrap().as_ref(), Some(&base2));

    let seq_mid = last_seq(&*store).await;
    let stale = ProfilePatch { priority: Some(8), expected_version: Some(1), ..patch.clone() };
    let err = store.update_profile(&pname("base"), &stale, &at(21)).await.unwrap_err();
    assert!(matches!(err, StoreError::VersionMismatch { expected: 1, current: 2 }), "{err:?}");
    let noop = ProfilePatch {
        priority: Some(7),
        document: Some(json!({"c": {"d": 1}})),
        ..ProfilePatch::default()
    };
    assert_eq!(store.update_profile(&pname("base"), &noop, &at(22)).await.unwrap(), base2);
    let to_ghost = ProfilePatch { target: Some(group("ghost")), ..ProfilePatch::default() };
    let err = store.update_profile(&pname("base"), &to_ghost, &at(23)).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { kind: "group", .. }), "{err:?}");
    let err = store.update_profile(&pname("nope"), &noop, &at(23)).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { kind: "config_profile", .. }), "{err:?}");
    assert_eq!(store.profile(&pname("base")).await.unwrap().as_ref(), Some(&base2));

    // Delete.
    let err = store.delete_profile(&pname("st"), Some(9), &at(24)).await.unwrap_err();
    assert!(matches!(err, StoreError::VersionMismatch { expected: 9, current: 1 }), "{err:?}");
    let err = store.delete_profile(&pname("nope"), None, &at(24)).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { kind: "config_profile", .. }), "{err:?}");
    assert_eq!(last_seq(&*store).await, seq_mid);
    let m4 = at(30);
    store.delete_profile(&pname("st"), Some(1), &m4).await.unwrap();
    assert_eq!(store.profile(&pname("st")).await.unwrap(), None);

    let records = audit_since(&*store, seq).await;
    assert_eq!(records.len(), 5);
    let resource = "config_profile/base";
    check_record(
        &records[0],
        &m1,
        "config_profile.create",
        resource,
        None,
        Some(base.audit_summary()),
    );
    check_record(
        &records[1],
        &m2,
        "config_profile.create",
        "config_profile/st",
        None,
        Some(st.audit_summary()),
    );
    assert_eq!(records[2].action, "config_profile.create");
    check_record(
        &records[3],
        &m3,
        "config_profile.update",
        resource,
        Some(base.audit_summary()),
        Some(base2.audit_summary()),
    );
    check_record(
        &records[4],
        &m4,
        "config_profile.delete",
        "config_profile/st",
        Some(st.audit_summary()),
        None,
    );
    check_chain(&*store).await;
}

/// A group with profiles attached cannot be deleted (the refusal names them and writes nothing);
/// once they are gone, it can.
pub async fn group_with_profiles_cannot_be_deleted(store: Arc<dyn Store>) {
    store.create_group(&static_group("g"), &at(1)).await.unwrap();
    store.create_group(&dynamic_group("dg", parse("tags.site = 'x'")), &at(1)).await.unwrap();
    store.create_profile(&new_profile("p2", group("g"), 0, json!({})), &at(2)).await.unwrap();
    store.create_profile(&new_profile("p1", group("g"), 0, json!({})), &at(2)).await.unwrap();
    store.create_profile(&new_profile("pd", group("dg"), 0, json!({})), &at(2)).await.unwrap();
    let seq = last_seq(&*store).await;
    let err = store.delete_group(&group_name("g"), &at(3)).await.unwrap_err();
    let StoreError::Conflict(message) = err else { panic!("{err:?}") };
    assert_eq!(
        message,
        "group g has configuration profiles attached (p1, p2): delete them or attach them \
         elsewhere first"
    );
    let err = store.delete_group(&group_name("dg"), &at(3)).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert!(store.group(&group_name("g")).await.unwrap().is_some());
    assert_eq!(last_seq(&*store).await, seq);

    store.delete_profile(&pname("p1"), None, &at(4)).await.unwrap();
    let moved = ProfilePatch { target: Some(ProfileTarget::Fleet), ..ProfilePatch::default() };
    store.update_profile(&pname("p2"), &moved, &at(5)).await.unwrap();
    store.delete_group(&group_name("g"), &at(6)).await.unwrap();
    assert!(store.group(&group_name("g")).await.unwrap().is_none());
    check_chain(&*store).await;
}

/// A device's layers: fleet profiles by priority then name, then the profiles of the groups it is
/// in (static members, dynamic matches) by priority, group name, profile name. For a changed copy
/// of a device, its tags as given count (nothing is written).
pub async fn desired_layers_in_merge_order(store: Arc<dyn Store>) {
    let mut d1 = new_device("d1", LifecycleState::Active);
    d1.tags = tags(&[("site", "north")]);
    let d1 = store.create_device(&d1, &at(1)).await.unwrap();
    let d2 = store.create_device(&new_device("d2", LifecycleState::Active), &at(1)).await.unwrap();
    store.create_group(&static_group("st"), &at(2)).await.unwrap();
    store.create_group(&static_group("other"), &at(2)).await.unwrap();
    store.add_group_members(&group_name("st"), &[id("d1")], &at(2)).await.unwrap();
    store.add_group_members(&group_name("other"), &[id("d2")], &at(2)).await.unwrap();
    store
        .create_group(&dynamic_group("north", parse("tags.site = 'north'")), &at(2))
        .await
        .unwrap();
    store
        .create_group(&dynamic_group("anorth", parse("tags.site = 'north'")), &at(2))
        .await
        .unwrap();
    let profiles = [
        ("base", ProfileTarget::Fleet, 0),
        ("early", ProfileTarget::Fleet, -1),
        ("also-base", ProfileTarget::Fleet, 0),
        ("st-hi", group("st"), 5),
        ("north-lo", group("north"), 1),
        ("anorth-lo", group("anorth"), 1),
        ("north-lo-b", group("north"), 1),
        ("other", group("other"), 0),
    ];
    for (n, target, priority) in profiles {
        let p = new_profile(n, target, priority, json!({ n: true }));
        store.create_profile(&p, &at(3)).await.unwrap();
    }
    let sources = |layers: Vec<domain::twin::Layer>| -> Vec<String> {
        layers.iter().map(|l| l.source.to_string()).collect()
    };
    let layers = store.desired_layers(&d1).await.unwrap();
    assert_eq!(layers[0].document, doc(json!({"early": true})));
    assert_eq!(
        sources(layers),
        [
            "profile:early",
            "profile:also-base",
            "profile:base",
            "profile:anorth-lo",
            "profile:north-lo",
            "profile:north-lo-b",
            "profile:st-hi",
        ]
    );
    assert_eq!(
        sources(store.desired_layers(&d2).await.unwrap()),
        ["profile:early", "profile:also-base", "profile:base", "profile:other"]
    );

    // A copy of d2 with d1's tags: the dynamic groups' profiles, without writing anything.
    let seq = last_seq(&*store).await;
    let queued = store.recompute_queue_len().await.unwrap();
    let mut copy = d2.clone();
    copy.tags = tags(&[("site", "north"), ("x", "y")]);
    assert_eq!(
        sources(store.desired_layers(&copy).await.unwrap()),
        [
            "profile:early",
            "profile:also-base",
            "profile:base",
            "profile:other",
            "profile:anorth-lo",
            "profile:north-lo",
            "profile:north-lo-b",
        ]
    );
    assert_eq!(store.device(&id("d2")).await.unwrap(), Some(d2));
    assert_eq!(last_seq(&*store).await, seq);
    assert_eq!(store.recompute_queue_len().await.unwrap(), queued);
}

/// Every change that can change a device's layers queues it, in its own transaction: a device
/// created while profiles exist, a tag change into a dynamic group with profiles, joining or
/// leaving a static group with profiles, a dynamic group's new filter (old and new matches), and
/// creating, changing or deleting a profile (its old and new target). A description-only change
/// of a profile, or changes while no profile exists, queue nothing.
pub async fn recompute_queue_filled_by_every_change(store: Arc<dyn Store>) {
    let known = ["d0", "d1", "d2", "d3"];
    let s = &*store;
    store.create_device(&new_device("d0", LifecycleState::Active), &at(1)).await.unwrap();
    assert_queue(&queue_of(s, &known).await, &[], "a device created without profiles");

    store
        .create_profile(&new_profile("base", ProfileTarget::Fleet, 0, json!({"a": 1})), &at(2))
        .await
        .unwrap();
    assert_queue(&queue_of(s, &known).await, &["d0"], "a fleet profile created");
    assert_eq!(drain(s, 3).await.taken, 1);
    assert_queue(&queue_of(s, &known).await, &[], "a drain");

    store.create_device(&new_device("d1", LifecycleState::Active), &at(4)).await.unwrap();
    let mut d2 = new_device("d2", LifecycleState::Registered);
    d2.tags = tags(&[("site", "south")]);
    store.create_device(&d2, &at(4)).await.unwrap();
    assert_queue(&queue_of(s, &known).await, &["d1", "d2"], "devices created with a fleet profile");
    drain(s, 5).await;

    // A dynamic group with a profile; a tag change moves d1 into it.
    store
        .create_group(&dynamic_group("north", parse("tags.site = 'north'")), &at(6))
        .await
        .unwrap();
    store
        .create_profile(&new_profile("pn", group("north"), 0, json!({"n": 1})), &at(7))
        .await
        .unwrap();
    assert_queue(&queue_of(s, &known).await, &[], "a profile on a group without devices");
    let patch = DevicePatch { tags: Some(tags(&[("site", "north")])), ..DevicePatch::default() };
    store.update_device(&id("d1"), &patch, None, &at(8)).await.unwrap();
    assert_queue(&queue_of(s, &known).await, &["d1"], "a tag change");
    let r = drain(s, 9).await;
    assert_eq!(changed_ids(&r), ["d1"]);
    assert_eq!(r.changed[0].desired.document, doc(json!({"a": 1, "n": 1})));
    store.update_device(&id("d1"), &DevicePatch::default(), None, &at(10)).await.unwrap();
    assert_queue(&queue_of(s, &known).await, &[], "a no-op device update");

    // A static group with a profile: joining and leaving.
    store.create_group(&static_group("st"), &at(11)).await.unwrap();
    store
        .create_profile(&new_profile("ps", group("st"), 0, json!({"s": 1})), &at(12))
        .await
        .unwrap();
    assert_queue(&queue_of(s, &known).await, &[], "a profile on an empty static group");
    store.add_group_members(&group_name("st"), &[id("d0")], &at(13)).await.unwrap();
    assert_queue(&queue_of(s, &known).await, &["d0"], "a member added");
    let r = drain(s, 14).await;
    assert_eq!(r.changed[0].desired.document, doc(json!({"a": 1, "s": 1})));
    store.remove_group_members(&group_name("st"), &[id("d0")], &at(15)).await.unwrap();
    assert_queue(&queue_of(s, &known).await, &["d0"], "a member removed");
    let r = drain(s, 16).await;
    assert_eq!(r.changed[0].desired.document, doc(json!({"a": 1})));

    // A group without profiles queues nothing.
    store.create_group(&static_group("plain"), &at(17)).await.unwrap();
    store.add_group_members(&group_name("plain"), &[id("d0")], &at(17)).await.unwrap();
    assert_queue(&queue_of(s, &known).await, &[], "a member added to a group without profiles");

    // A dynamic group's new filter: its old matches (d1) and its new ones (d2).
    let patch = GroupPatch { filter: Some(parse("tags.site = 'south'")), ..GroupPatch::default() };
    store.update_group(&group_name("north"), &patch, &at(18)).await.unwrap();
    assert_queue(&queue_of(s, &known).await, &["d1", "d2"], "a dynamic group's filter change");
    let r = drain(s, 19).await;
    assert_eq!(changed_ids(&r), ["d1", "d2"]);
    assert_eq!(r.changed[0].desired.document, doc(json!({"a": 1})));
    assert_eq!(r.changed[1].desired.document, doc(json!({"a": 1, "n": 1})));

    // Profile changes: description only (nothing), document (its target), target (old and new).
    let patch = ProfilePatch { description: Some("x".to_owned()), ..ProfilePatch::default() };
    store.update_profile(&pname("ps"), &patch, &at(20)).await.unwrap();
    assert_queue(&queue_of(s, &known).await, &[], "a profile's description change");
    store.create_device(&new_device("d3", LifecycleState::Active), &at(21)).await.unwrap();
    store.add_group_members(&group_name("st"), &[id("d3")], &at(21)).await.unwrap();
    drain(s, 22).await;
    let patch = ProfilePatch { document: Some(json!({"s": 2})), ..ProfilePatch::default() };
    store.update_profile(&pname("ps"), &patch, &at(23)).await.unwrap();
    assert_queue(&queue_of(s, &known).await, &["d3"], "a profile's document change");
    drain(s, 24).await;
    let patch = ProfilePatch { target: Some(group("north")), ..ProfilePatch::default() };
    store.update_profile(&pname("ps"), &patch, &at(25)).await.unwrap();
    assert_queue(&queue_of(s, &known).await, &["d2", "d3"], "a profile's target change");
    drain(s, 26).await;
    store.delete_profile(&pname("pn"), None, &at(27)).await.unwrap();
    assert_queue(&queue_of(s, &known).await, &["d2"], "a group profile deleted");
    drain(s, 28).await;
    store.delete_profile(&pname("base"), None, &at(29)).await.unwrap();
    assert_queue(&queue_of(s, &known).await, &known, "a fleet profile deleted");
    let r = drain(s, 30).await;
    assert_eq!(changed_ids(&r), known);
    let docs: Vec<Value> =
        r.changed.iter().map(|t| Value::Object(t.desired.document.clone())).collect();
    assert_eq!(docs, [json!({}), json!({}), json!({"s": 2}), json!({})]);
    check_chain(s).await;
}

/// Draining recomputes queued twins oldest first within the limit: the changed twins come back as
/// committed (the device's own layer still wins), with a history entry by `profiles`; a device
/// whose document does not change is taken without a write; an empty queue takes nothing. Twin
/// updates use the profiles' layers too.
pub async fn recompute_twins_applies_profiles(store: Arc<dyn Store>) {
    let policy = TwinPolicy::default();
    for d in ["d1", "d2", "d3"] {
        store.create_device(&new_device(d, LifecycleState::Active), &at(1)).await.unwrap();
    }
    let update = TwinUpdate { desired: Some(json!({"led": "blue"})), ..TwinUpdate::default() };
    store.update_twin(&id("d1"), &update, &policy, &at(2)).await.unwrap().unwrap();
    let seq = last_seq(&*store).await;
    store
        .create_profile(
            &new_profile("base", ProfileTarget::Fleet, 0, json!({"fan": "auto", "led": "green"})),
            &at(3),
        )
        .await
        .unwrap();
    assert_eq!(store.recompute_queue_len().await.unwrap(), 3);

    let r = store.recompute_twins(nz(2), &policy, ts(10)).await.unwrap();
    assert_eq!(
        (r.taken, changed_ids(&r), r.refused.len()),
        (2, vec!["d1".to_owned(), "d2".to_owned()], 0)
    );
    let t1 = &r.changed[0];
    assert_eq!(t1.desired.document, doc(json!({"fan": "auto", "led": "blue"})));
    assert_eq!(t1.device_desired.document, doc(json!({"led": "blue"})));
    assert_eq!(t1.desired.version, 2);
    assert_eq!(r.changed[1].desired.document, doc(json!({"fan": "auto", "led": "green"})));
    assert_eq!(store.device_twin(&id("d1")).await.unwrap().as_ref(), Some(t1));
    assert_eq!(store.device_twin(&id("d2")).await.unwrap().as_ref(), Some(&r.changed[1]));
    let q = TwinHistoryQuery { section: None, before: None, limit: nz(10) };
    let newest = &store.twin_history(&id("d1"), &q).await.unwrap().items[0];
    assert_eq!((newest.actor.as_str(), newest.section), (RECOMPUTE_ACTOR, SectionName::Desired));
    assert_eq!((newest.at, newest.version), (ts(10), 2));
    assert_eq!(newest.patch, json!({"fan": "auto"}));
    assert!(!store.recompute_pending(&id("d1")).await.unwrap());
    assert!(store.recompute_pending(&id("d3")).await.unwrap());

    let r = drain(&*store, 11).await;
    assert_eq!((r.taken, changed_ids(&r)), (1, vec!["d3".to_owned()]));
    let r = drain(&*store, 12).await;
    assert_eq!(r, Recomputed::default());
    // Recomputes are not audited: only the profile's creation.
    assert_eq!(audit_since(&*store, seq).await.len(), 1);

    // The device's own layer wins over the profiles in a twin update too.
    let update = TwinUpdate { desired: Some(json!({"fan": "max"})), ..TwinUpdate::default() };
    let c = store.update_twin(&id("d2"), &update, &policy, &at(13)).await.unwrap().unwrap();
    assert_eq!(c.twin.desired.document, doc(json!({"fan": "max", "led": "green"})));
    let update = TwinUpdate { desired: Some(json!({"fan": null})), ..TwinUpdate::default() };
    let c = store.update_twin(&id("d2"), &update, &policy, &at(14)).await.unwrap().unwrap();
    assert_eq!(c.twin.desired.document, doc(json!({"fan": "auto", "led": "green"})));

    // A recompute that changes nothing writes nothing.
    let before = store.device_twin(&id("d2")).await.unwrap();
    let patch = ProfilePatch { priority: Some(1), ..ProfilePatch::default() };
    store.update_profile(&pname("base"), &patch, &at(15)).await.unwrap();
    let r = drain(&*store, 16).await;
    assert_eq!((r.taken, r.changed.len()), (3, 0));
    assert_eq!(store.device_twin(&id("d2")).await.unwrap(), before);
    check_chain(&*store).await;
}

/// A device deleted while queued is dropped from the queue by the next drain; deleting a member of
/// a static group with profiles works (the membership trigger does not fail in the cascade).
pub async fn recompute_drops_deleted_devices(store: Arc<dyn Store>) {
    store.create_group(&static_group("st"), &at(1)).await.unwrap();
    store
        .create_profile(&new_profile("ps", group("st"), 0, json!({"s": 1})), &at(1))
        .await
        .unwrap();
    store
        .create_profile(&new_profile("base", ProfileTarget::Fleet, 0, json!({"a": 1})), &at(1))
        .await
        .unwrap();
    store.create_device(&new_device("d1", LifecycleState::Active), &at(2)).await.unwrap();
    store.create_device(&new_device("d2", LifecycleState::Active), &at(2)).await.unwrap();
    store.add_group_members(&group_name("st"), &[id("d1"), id("d2")], &at(3)).await.unwrap();
    assert_eq!(store.recompute_queue_len().await.unwrap(), 2);
    store.delete_device(&id("d1"), None, &at(4)).await.unwrap();
    let r = drain(&*store, 5).await;
    assert_eq!((r.taken, changed_ids(&r)), (2, vec!["d2".to_owned()]));
    // d2 was drained; now delete it while it is not queued, and d1 again while queued.
    store.delete_device(&id("d2"), None, &at(6)).await.unwrap();
    store.create_device(&new_device("d3", LifecycleState::Active), &at(7)).await.unwrap();
    store.delete_device(&id("d3"), None, &at(8)).await.unwrap();
    let r = drain(&*store, 9).await;
    assert_eq!(r.taken, 1, "only d3 was queued");
    assert!(r.changed.is_empty() && r.refused.is_empty(), "{r:?}");
    assert_eq!(store.recompute_queue_len().await.unwrap(), 0);
    assert!(!store.recompute_pending(&id("d3")).await.unwrap());
    assert_eq!(store.device_twin(&id("d3")).await.unwrap(), None);
    check_chain(&*store).await;
}

/// A merged document past the twin limits is refused: the device keeps its desired document, is
/// reported in `refused`, and leaves the queue.
pub async fn recompute_refuses_documents_past_limits(store: Arc<dyn Store>) {
    let policy = TwinPolicy::default();
    store.create_device(&new_device("d1", LifecycleState::Active), &at(1)).await.unwrap();
    let update = TwinUpdate { desired: Some(json!({"a": 1})), ..TwinUpdate::default() };
    store.update_twin(&id("d1"), &update, &policy, &at(2)).await.unwrap().unwrap();
    let before = store.device_twin(&id("d1")).await.unwrap();
    let big = json!({"blob": "x".repeat(100)});
    store.create_profile(&new_profile("big", ProfileTarget::Fleet, 0, big), &at(3)).await.unwrap();
    let small = TwinPolicy {
        limits: TwinLimits { max_section_bytes: 64, max_depth: 3 },
        ..TwinPolicy::default()
    };
    let r = store.recompute_twins(nz(10), &small, ts(4)).await.unwrap();
    assert_eq!((r.taken, r.changed.len(), r.refused.len()), (1, 0, 1));
    assert_eq!(r.refused[0].0, id("d1"));
    assert!(matches!(r.refused[0].1, TwinError::TooLarge { section: "desired", .. }), "{r:?}");
    assert_eq!(store.device_twin(&id("d1")).await.unwrap(), before);
    assert_eq!(store.recompute_queue_len().await.unwrap(), 0);
}

/// A profile's reach preview: every device in service for the fleet, a group's members in service
/// for a group; an unknown group is `NotFound`.
pub async fn preview_profile_target_fleet_and_group(store: Arc<dyn Store>) {
    let mut t = 0;
    put_in_state(&*store, &id("a1"), LifecycleState::Active, &mut t).await;
    put_in_state(&*store, &id("a2"), LifecycleState::Registered, &mut t).await;
    put_in_state(&*store, &id("a3"), LifecycleState::Decommissioned, &mut t).await;
    put_in_state(&*store, &id("a4"), LifecycleState::Suspended, &mut t).await;
    store.create_group(&static_group("g"), &at(100)).await.unwrap();
    store.add_group_members(&group_name("g"), &[id("a1"), id("a3")], &at(101)).await.unwrap();
    let seq = last_seq(&*store).await;

    let p = store.preview_profile_target(&ProfileTarget::Fleet, 2).await.unwrap();
    assert_eq!(p.total, 3);
    assert_eq!(
        p.by_state,
        [
            (LifecycleState::Registered, 1),
            (LifecycleState::Active, 1),
            (LifecycleState::Suspended, 1)
        ]
    );
    assert_eq!(p.sample, [id("a1"), id("a2")]);
    assert_eq!(p.by_group, [(group_name("g"), 1)]);
    assert_eq!((p.online, p.offline), (0, 3));

    let p = store.preview_profile_target(&group("g"), 10).await.unwrap();
    assert_eq!((p.total, p.sample.clone()), (1, vec![id("a1")]));
    let err = store.preview_profile_target(&group("ghost"), 10).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { kind: "group", .. }), "{err:?}");
    assert_eq!(last_seq(&*store).await, seq);
}
