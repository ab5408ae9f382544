//! Conformance cases of device replacement (`replace_device`, RMA).

use std::sync::Arc;

use domain::{
    CertificateSerial, Device, DeviceCertificate, DeviceCredential, LifecycleState, NewDevice,
    NewDeviceCertificate, ReplacementError, Timestamp,
};
use serde_json::{Value, json};

use crate::conformance::{
    BASE, at, attributes, audit_since, check_chain, check_record, group_ids, group_name, id,
    last_seq, name, new_credential, new_device, put_in_state, static_group, tags,
};
use crate::{Store, StoreError};

/// Certificate `n` of device `dev_id`.
fn certificate(n: u8, dev_id: &str) -> NewDeviceCertificate {
    NewDeviceCertificate {
        serial: CertificateSerial::new(format!("{n:02x}{}", "7e".repeat(15))).unwrap(),
        device_id: id(dev_id),
        fingerprint_sha256: format!("{n:02x}").repeat(32),
        not_before: Timestamp::from_millis(BASE),
        not_after: Timestamp::from_millis(BASE + 86_400_000),
        pem: format!("-----BEGIN CERTIFICATE-----\nY2VydA{n:02x}\n-----END CERTIFICATE-----\n"),
    }
}

/// A device with tags and attributes.
fn rich_device(dev_id: &str, state: LifecycleState, t: &[(&str, &str)], a: Value) -> NewDevice {
    NewDevice {
        name: name(&format!("name of {dev_id}")),
        tags: tags(t),
        attributes: attributes(a),
        ..new_device(dev_id, state)
    }
}

/// Everything a replacement could touch, to compare before and after a refused one.
async fn snapshot(
    store: &dyn Store,
    ids: &[&str],
    groups: &[&str],
) -> (
    Vec<Option<Device>>,
    Vec<Vec<DeviceCredential>>,
    Vec<Vec<DeviceCertificate>>,
    Vec<Vec<String>>,
    u64,
) {
    let mut devices = Vec::new();
    let mut credentials = Vec::new();
    let mut certificates = Vec::new();
    for d in ids {
        devices.push(store.device(&id(d)).await.unwrap());
        credentials.push(store.device_credentials(&id(d)).await.unwrap());
        certificates.push(store.device_certificates(&id(d)).await.unwrap());
    }
    let mut members = Vec::new();
    for g in groups {
        members.push(group_ids(store, g, None).await);
    }
    (devices, credentials, certificates, members, last_seq(store).await)
}

/// Replacing an active device by an existing one: the successor takes over tags (the old
/// device's win), attributes (shallow merge, the old device's keys win) and static group
/// memberships (the old device leaves them); the two are linked; the old device's live
/// credentials and certificates are revoked (revoked ones keep their time, the successor's are
/// untouched); the old device goes `decommissioned` then `retired`, one version each. Audited as
/// each change would be (group member changes included, groups unchanged otherwise), then
/// `device.replace` with the counts; presence stays. The old device's own desired configuration
/// replaces the successor's (`device.twin.update` on the successor).
pub async fn replace_device_moves_identity_and_retires_old(store: Arc<dyn Store>) {
    let old = rich_device(
        "old",
        LifecycleState::Active,
        &[("site", "berlin"), ("rack", "4")],
        json!({"model": "x1", "slot": 2}),
    );
    let old = store.create_device(&old, &at(1)).await.unwrap();
    let new = rich_device(
        "new",
        LifecycleState::Active,
        &[("site", "paris"), ("hw", "rev2")],
        json!({"model": "x2", "serial": "S9"}),
    );
    let new = store.create_device(&new, &at(2)).await.unwrap();
    store.create_device(&new_device("bystander", LifecycleState::Active), &at(2)).await.unwrap();
    for g in ["g1", "g2", "g3"] {
        store.create_group(&static_group(g), &at(3)).await.unwrap();
    }
    let add = |g: &'static str, ids: &'static [&'static str]| {
        let store = Arc::clone(&store);
        async move {
            let ids: Vec<_> = ids.iter().map(|d| id(d)).collect();
            store.add_group_members(&group_name(g), &ids, &at(4)).await.unwrap();
        }
    };
    add("g1", &["old", "bystander"]).await;
    add("g2", &["old", "new"]).await;
    add("g3", &["new"]).await;
    let c1 = store.create_device_credential(&new_credential(1, "old", None), &at(5)).await.unwrap();
    let c2 = store.create_device_credential(&new_credential(2, "old", None), &at(6)).await.unwrap();
    let c2 = store.revoke_device_credential(&id("old"), &c2.id, &at(7)).await.unwrap();
    let c3 = store.create_device_credential(&new_credential(3, "new", None), &at(8)).await.unwrap();
    let k1 = store.create_device_certificate(&certificate(1, "old"), &at(9)).await.unwrap();
    let k2 = store.create_device_certificate(&certificate(2, "old"), &at(10)).await.unwrap();
    let k2 = store.revoke_device_certificate(&id("old"), &k2.serial, &at(11)).await.unwrap();
    store.record_connect(&id("old"), at(12).at, "192.0.2.1:1", "5").await.unwrap();
    let presence = store.presence(&id("old")).await.unwrap();
    assert!(presence.is_some());
    // Desired configuration: the old device's own layer replaces the successor's.
    let policy = domain::TwinPolicy::default();
    let twin_update = |v: Value| crate::TwinUpdate { desired: Some(v), ..Default::default() };
    store
        .update_twin(&id("old"), &twin_update(json!({"led": "red", "rate": 5})), &policy, &at(13))
        .await
        .unwrap()
        .unwrap();
    store
        .update_twin(&id("new"), &twin_update(json!({"fan": 1, "rate": 1})), &policy, &at(14))
        .await
        .unwrap()
        .unwrap();
    let seq = last_seq(&*store).await;

    let m = at(1_000);
    let r = store.replace_device(&id("old"), &id("new"), &m).await.unwrap();
    let twin = store.device_twin(&id("new")).await.unwrap().unwrap();
    assert_eq!(
        twin.desired.document,
        json!({"led": "red", "rate": 5}).as_object().unwrap().clone()
    );
    assert_eq!(twin.desired.version, 2);

    let successor = Device {
        tags: tags(&[("hw", "rev2"), ("rack", "4"), ("site", "berlin")]),
        attributes: attributes(json!({"model": "x1", "serial": "S9", "slot": 2})),
        updated_at: m.at,
        version: new.version + 1,
        replaces: Some(id("old")),
        ..new.clone()
    };
    let decommissioned = Device {
        state: LifecycleState::Decommissioned,
        updated_at: m.at,
        version: old.version + 1,
        ..old.clone()
    };
    let retired = Device {
        state: LifecycleState::Retired,
        version: old.version + 2,
        replaced_by: Some(id("new")),
        ..decommissioned.clone()
    };
    assert_eq!((&r.old, &r.successor, r.created), (&retired, &successor, false));
    let counts = r.counts;
    assert_eq!(
        (
            counts.tags,
            counts.attributes,
            counts.groups,
            counts.credentials_revoked,
            counts.certificates_revoked
        ),
        (2, 2, 2, 1, 1)
    );
    assert_eq!(store.device(&id("new")).await.unwrap(), Some(successor.clone()));
    assert_eq!(store.device(&id("old")).await.unwrap(), Some(retired.clone()));
    // The successor is found by its new tags; the old device keeps its own for the record.
    let filtered = store
        .list_devices(&crate::DeviceQuery {
            filter: Some(domain::Filter::parse("tags.rack = '4'").unwrap()),
            after: None,
            limit: std::num::NonZeroU32::new(10).unwrap(),
        })
        .await
        .unwrap();
    let found: Vec<_> = filtered.items.iter().map(|d| d.id.to_string()).collect();
    assert_eq!(found, ["new", "old"]);

    assert_eq!(group_ids(&*store, "g1", None).await, ["bystander", "new"]);
    assert_eq!(group_ids(&*store, "g2", None).await, ["new"]);
    assert_eq!(group_ids(&*store, "g3", None).await, ["new"]);
    for g in ["g1", "g2", "g3"] {
        let group = store.group(&group_name(g)).await.unwrap().unwrap();
        assert_eq!(group.version, 1, "membership is not part of a group's version");
    }

    let c1_revoked = DeviceCredential { revoked_at: Some(m.at), ..c1.clone() };
    assert_eq!(
        store.device_credentials(&id("old")).await.unwrap(),
        vec![c2.clone(), c1_revoked.clone()]
    );
    assert_eq!(store.device_credentials(&id("new")).await.unwrap(), vec![c3]);
    let k1_revoked = DeviceCertificate { revoked_at: Some(m.at), ..k1.clone() };
    assert_eq!(
        store.device_certificates(&id("old")).await.unwrap(),
        vec![k2.clone(), k1_revoked.clone()]
    );
    assert_eq!(store.presence(&id("old")).await.unwrap(), presence, "history stays");

    let records = audit_since(&*store, seq).await;
    assert_eq!(records.len(), 10, "{records:#?}");
    let summary = |d: &Device| Some(d.audit_summary());
    check_record(
        &records[0],
        &m,
        "device.update",
        "device/new",
        summary(&new),
        summary(&successor),
    );
    let twin_after = json!({
        "versions": {"desired": 2, "device_desired": 2, "tags": 0},
        "patch": {"desired": {"fan": null, "led": "red", "rate": 5}, "tags": null},
        "from": "old",
    });
    check_record(&records[1], &m, "device.twin.update", "device/new", None, Some(twin_after));
    // Group records as adding and removing members would write them, groups by name; `new` was
    // in g2 already.
    let (added, removed) = (Some(json!({"added": ["new"]})), Some(json!({"removed": ["old"]})));
    check_record(&records[2], &m, "group.members.add", "group/g1", None, added);
    check_record(&records[3], &m, "group.members.remove", "group/g1", None, removed.clone());
    check_record(&records[4], &m, "group.members.remove", "group/g2", None, removed);
    let (before, after) = (Some(c1.audit_summary()), Some(c1_revoked.audit_summary()));
    check_record(&records[5], &m, "device.credential.revoke", "device/old", before, after);
    let (before, after) = (Some(k1.audit_summary()), Some(k1_revoked.audit_summary()));
    check_record(&records[6], &m, "device.certificate.revoke", "device/old", before, after);
    check_record(
        &records[7],
        &m,
        "device.update",
        "device/old",
        summary(&old),
        summary(&decommissioned),
    );
    check_record(
        &records[8],
        &m,
        "device.update",
        "device/old",
        summary(&decommissioned),
        summary(&retired),
    );
    check_record(
        &records[9],
        &m,
        "device.replace",
        "device/old",
        None,
        Some(json!({
            "successor": "new",
            "created": false,
            "moved": {"tags": 2, "attributes": 2, "groups": 2},
            "revoked": {"credentials": 1, "certificates": 1},
        })),
    );
    let linked: Value = serde_json::from_str(records[8].after.as_deref().unwrap()).unwrap();
    assert_eq!(linked["replaced_by"], "new");
    check_chain(&*store).await;
}

/// A successor that does not exist is created `registered` at version 1 with the old device's
/// tags and attributes (and nothing else of it); an old device that is decommissioned already
/// takes one lifecycle step only.
pub async fn replace_device_creates_a_missing_successor(store: Arc<dyn Store>) {
    let old = rich_device("old", LifecycleState::Registered, &[("site", "oslo")], json!({"a": 1}));
    let old = store.create_device(&old, &at(1)).await.unwrap();
    let seq = last_seq(&*store).await;
    let m = at(100);
    let r = store.replace_device(&id("old"), &id("fresh"), &m).await.unwrap();
    let fresh = Device {
        id: id("fresh"),
        name: domain::DisplayName::default(),
        tags: old.tags.clone(),
        attributes: old.attributes.clone(),
        state: LifecycleState::Registered,
        created_at: m.at,
        updated_at: m.at,
        version: 1,
        replaces: Some(id("old")),
        replaced_by: None,
    };
    assert!(r.created);
    assert_eq!(r.successor, fresh);
    assert_eq!(store.device(&id("fresh")).await.unwrap(), Some(fresh.clone()));
    let old_after = store.device(&id("old")).await.unwrap().unwrap();
    assert_eq!(
        (old_after.state, old_after.version, old_after.replaced_by),
        (LifecycleState::Retired, 3, Some(id("fresh")))
    );
    let records = audit_since(&*store, seq).await;
    let actions: Vec<_> =
        records.iter().map(|r| (r.action.as_str(), r.resource.as_str())).collect();
    assert_eq!(
        actions,
        [
            ("device.create", "device/fresh"),
            ("device.update", "device/old"),
            ("device.update", "device/old"),
            ("device.replace", "device/old"),
        ]
    );
    check_record(
        &records[0],
        &m,
        "device.create",
        "device/fresh",
        None,
        Some(fresh.audit_summary()),
    );
    let after: Value = serde_json::from_str(records[3].after.as_deref().unwrap()).unwrap();
    assert_eq!(
        after,
        json!({
            "successor": "fresh",
            "created": true,
            "moved": {"tags": 1, "attributes": 1, "groups": 0},
            "revoked": {"credentials": 0, "certificates": 0},
        })
    );

    // Decommissioned already: straight to retired, one record for the state change.
    let mut t = 200;
    put_in_state(&*store, &id("gone"), LifecycleState::Decommissioned, &mut t).await;
    let seq = last_seq(&*store).await;
    let r = store.replace_device(&id("gone"), &id("fresh-2"), &at(300)).await.unwrap();
    assert_eq!((r.old.state, r.old.version), (LifecycleState::Retired, 3));
    let records = audit_since(&*store, seq).await;
    let actions: Vec<_> = records.iter().map(|r| r.action.as_str()).collect();
    assert_eq!(actions, ["device.create", "device.update", "device.replace"]);
    check_chain(&*store).await;
}

/// Refused replacements report why and change nothing at all: an unknown old device
/// (`NotFound`), the device itself as successor, a retired old device, a decommissioned or retired
/// successor, a successor that replaces another device already, and a merge that would give the
/// successor too many tags.
pub async fn replace_device_refusals_change_nothing(store: Arc<dyn Store>) {
    let mut t = 0;
    let many = |p: &str| (0..40).map(|i| (format!("{p}{i}"), "v".to_owned())).collect::<Vec<_>>();
    for (d, state) in [
        ("old", LifecycleState::Active),
        ("retired", LifecycleState::Retired),
        ("decom", LifecycleState::Decommissioned),
        ("a", LifecycleState::Active),
    ] {
        put_in_state(&*store, &id(d), state, &mut t).await;
    }
    store.create_group(&static_group("g"), &at(50)).await.unwrap();
    store.add_group_members(&group_name("g"), &[id("old")], &at(51)).await.unwrap();
    store.create_device_credential(&new_credential(1, "old", None), &at(52)).await.unwrap();
    store.create_device_certificate(&certificate(1, "old"), &at(53)).await.unwrap();
    // `b` replaced `a`: `b` cannot replace another device now, `a` cannot be replaced again.
    store.replace_device(&id("a"), &id("b"), &at(60)).await.unwrap();
    let mut crowded = new_device("crowded", LifecycleState::Active);
    crowded.tags = domain::Tags::new(many("c")).unwrap();
    store.create_device(&crowded, &at(61)).await.unwrap();
    let mut full = new_device("full", LifecycleState::Active);
    full.tags = domain::Tags::new(many("f")).unwrap();
    store.create_device(&full, &at(62)).await.unwrap();

    let ids = ["old", "retired", "decom", "a", "b", "crowded", "full", "ghost", "new"];
    let before = snapshot(&*store, &ids, &["g"]).await;
    use ReplacementError::{
        AlreadyRetired, MergedTags, SameDevice, SuccessorAlreadyReplaces, SuccessorOutOfService,
    };
    let tag_rule = "at most 64 tags per device".to_owned();
    let merged = MergedTags { id: id("full"), old: id("crowded"), reason: tag_rule };
    let cases = [
        ("ghost", "new", None),
        ("old", "old", Some(SameDevice(id("old")))),
        ("retired", "new", Some(AlreadyRetired { id: id("retired"), replaced_by: None })),
        ("a", "new", Some(AlreadyRetired { id: id("a"), replaced_by: Some(id("b")) })),
        (
            "old",
            "decom",
            Some(SuccessorOutOfService { id: id("decom"), state: LifecycleState::Decommissioned }),
        ),
        (
            "old",
            "retired",
            Some(SuccessorOutOfService { id: id("retired"), state: LifecycleState::Retired }),
        ),
        ("old", "a", Some(SuccessorOutOfService { id: id("a"), state: LifecycleState::Retired })),
        ("old", "b", Some(SuccessorAlreadyReplaces { id: id("b"), predecessor: id("a") })),
        ("crowded", "full", Some(merged)),
    ];
    for (old, new, expected) in cases {
        let result = store.replace_device(&id(old), &id(new), &at(100)).await;
        match (&result, expected) {
            (Err(StoreError::NotFound { kind: "device", id }), None) if id == old => {}
            (Err(StoreError::Replacement(got)), Some(expected)) if *got == expected => {}
            _ => panic!("{old} -> {new}: {result:?}"),
        }
        assert!(
            before == snapshot(&*store, &ids, &["g"]).await,
            "{old} -> {new} changed something"
        );
    }
    // After all that, the legal replacement still works.
    let r = store.replace_device(&id("old"), &id("new"), &at(200)).await.unwrap();
    assert_eq!(
        (r.counts.groups, r.counts.credentials_revoked, r.counts.certificates_revoked),
        (1, 1, 1)
    );
    check_chain(&*store).await;
}
