//! Conformance cases of enrollment groups: CRUD and its audit records, claim codes and their use
//! counting, and the `register_device` transaction (creation, idempotent retries, conflicts,
//! refusals, at most two provisioning credentials).

use std::sync::Arc;

use domain::{
    Actor, Attestation, ClaimCode, ClaimCodeId, CredentialId, DeviceIdTemplate, EnrollmentGroup,
    EnrollmentGroupName, EnrollmentGroupPatch, LifecycleState, Mutation, NewDeviceCredential,
    NewEnrollmentGroup, RegistrationId, RegistrationRefusal, Tags, Timestamp, TokenHash,
};
use serde_json::json;

use crate::conformance::{
    BASE, at, attributes, audit_since, check_chain, check_record, dynamic_group, group_name, id,
    last_seq, new_device, nz, parse, static_group, tags,
};
use crate::{
    NewClaimCode, Page, Registered, Registration, RegistrationRefusalRecord, Store, StoreError,
    claim_codes_audit_summary,
};

fn ename(s: &str) -> EnrollmentGroupName {
    EnrollmentGroupName::new(s).unwrap()
}

fn rid(s: &str) -> RegistrationId {
    RegistrationId::new(s).unwrap()
}

fn new_group(name: &str, attestation: Attestation) -> NewEnrollmentGroup {
    NewEnrollmentGroup {
        name: ename(name),
        attestation,
        enabled: true,
        expires_at: None,
        device_id_template: None,
        tags: Tags::default(),
        groups: vec![],
        attributes: attributes(json!({})),
    }
}

fn symmetric(name: &str) -> NewEnrollmentGroup {
    new_group(name, Attestation::SymmetricKey { sealed_key: vec![7; 60] })
}

fn claim(name: &str) -> NewEnrollmentGroup {
    new_group(name, Attestation::ClaimCode)
}

/// The mutation of a registration through `group` at `BASE + ms`.
fn by_group(group: &str, ms: i64) -> Mutation {
    Mutation {
        actor: Actor { token_id: None, name: format!("enrollment:{group}") },
        at: Timestamp::from_millis(BASE + ms),
    }
}

fn code_hash(n: u8) -> TokenHash {
    TokenHash::of_secret(&format!("CODE{n:08}"))
}

fn new_code(n: u8) -> NewClaimCode {
    NewClaimCode { id: ClaimCodeId::from_random([n; 8]), hash: code_hash(n) }
}

/// Registration of `registration_id` as device `device` through `group`, with credential `n`.
fn registration(group: &str, registration_id: &str, device: &str, n: u8) -> Registration {
    Registration {
        group: ename(group),
        registration_id: rid(registration_id),
        device_id: id(device),
        claim_code: None,
        credential: NewDeviceCredential {
            id: CredentialId::from_random([n; 8]),
            device_id: id(device),
            hash: TokenHash::of_secret(&format!("provisioned-{n}")),
            expires_at: None,
        },
    }
}

fn with_code(mut r: Registration, n: u8) -> Registration {
    r.claim_code = Some(code_hash(n));
    r
}

async fn register(store: &dyn Store, r: &Registration, ms: i64) -> Registered {
    store.register_device(r, &by_group(r.group.as_str(), ms)).await.unwrap().unwrap()
}

async fn refused(store: &dyn Store, r: &Registration, ms: i64) -> RegistrationRefusal {
    let seq = last_seq(store).await;
    let result = store.register_device(r, &by_group(r.group.as_str(), ms)).await.unwrap();
    assert_eq!(last_seq(store).await, seq, "a refusal writes nothing");
    result.unwrap_err()
}

/// Create, read, list (by name, paged), patch (a no-op writes nothing), delete; each change
/// audited on `enrollment_group/<name>` without the key; the errors of create and update.
pub async fn enrollment_group_crud(store: Arc<dyn Store>) {
    store.create_group(&static_group("line-1"), &at(1)).await.unwrap();
    store
        .create_group(&dynamic_group("berlin", parse("tags.site = 'berlin'")), &at(1))
        .await
        .unwrap();
    let seq = last_seq(&*store).await;

    let mut new = symmetric("factory-b");
    new.tags = tags(&[("site", "berlin")]);
    new.groups = vec![group_name("line-1")];
    new.attributes = attributes(json!({"batch": 7}));
    new.device_id_template = Some(DeviceIdTemplate::new("fb-{registration_id}").unwrap());
    new.expires_at = Some(Timestamp::from_millis(BASE + 1_000_000));
    let b = store.create_enrollment_group(&new, &at(1_000)).await.unwrap();
    let expected = EnrollmentGroup {
        name: new.name.clone(),
        attestation: new.attestation.clone(),
        enabled: true,
        expires_at: new.expires_at,
        device_id_template: new.device_id_template.clone(),
        tags: new.tags.clone(),
        groups: new.groups.clone(),
        attributes: new.attributes.clone(),
        created_at: at(1_000).at,
        updated_at: at(1_000).at,
        registrations: 0,
    };
    assert_eq!(b, expected);
    assert_eq!(store.enrollment_group(&ename("factory-b")).await.unwrap(), Some(b.clone()));
    let ca = "-----BEGIN CERTIFICATE-----\nQ0E=\n-----END CERTIFICATE-----\n".to_owned();
    let a = store
        .create_enrollment_group(
            &new_group("factory-a", Attestation::X509 { ca_pem: Some(ca) }),
            &at(2_000),
        )
        .await
        .unwrap();
    let c = store.create_enrollment_group(&claim("factory-c"), &at(3_000)).await.unwrap();
    let herd_ca = new_group("factory-d", Attestation::X509 { ca_pem: None });
    let d = store.create_enrollment_group(&herd_ca, &at(4_000)).await.unwrap();

    let page = store.list_enrollment_groups(None, nz(2)).await.unwrap();
    assert_eq!(page, Page { items: vec![a.clone(), b.clone()], has_more: true });
    let page = store.list_enrollment_groups(Some(&b.name), nz(2)).await.unwrap();
    assert_eq!(page, Page { items: vec![c.clone(), d.clone()], has_more: false });

    let records = audit_since(&*store, seq).await;
    assert_eq!(records.len(), 4);
    check_record(
        &records[0],
        &at(1_000),
        "enrollment_group.create",
        "enrollment_group/factory-b",
        None,
        Some(b.audit_summary()),
    );
    for r in &records {
        assert!(!r.after.as_deref().unwrap_or("").contains("BEGIN"), "no PEM in the audit");
    }
    assert_eq!(b.audit_summary()["attestation"], "symmetric_key");

    // Errors: a taken name, an unknown or dynamic static group. None leaves a trace.
    let seq = last_seq(&*store).await;
    let err = store.create_enrollment_group(&claim("factory-b"), &at(5_000)).await;
    assert!(
        matches!(&err, Err(StoreError::AlreadyExists { kind: "enrollment_group", id }) if id == "factory-b"),
        "{err:?}"
    );
    let mut bad = claim("factory-e");
    bad.groups = vec![group_name("nope")];
    let err = store.create_enrollment_group(&bad, &at(5_000)).await;
    assert!(matches!(&err, Err(StoreError::NotFound { kind: "group", .. })), "{err:?}");
    bad.groups = vec![group_name("berlin")];
    let err = store.create_enrollment_group(&bad, &at(5_000)).await;
    assert!(matches!(&err, Err(StoreError::Conflict(_))), "{err:?}");
    assert!(store.enrollment_group(&ename("factory-e")).await.unwrap().is_none());
    assert_eq!(last_seq(&*store).await, seq);

    // Update: each field; a no-op writes nothing.
    let patch = EnrollmentGroupPatch {
        enabled: Some(false),
        expires_at: Some(None),
        device_id_template: Some(None),
        tags: Some(Tags::default()),
        groups: Some(vec![]),
        attributes: Some(attributes(json!({"batch": 8}))),
    };
    let b2 = store.update_enrollment_group(&b.name, &patch, &at(6_000)).await.unwrap();
    assert_eq!(
        b2,
        EnrollmentGroup {
            enabled: false,
            expires_at: None,
            device_id_template: None,
            tags: Tags::default(),
            groups: vec![],
            attributes: attributes(json!({"batch": 8})),
            updated_at: at(6_000).at,
            ..b.clone()
        }
    );
    let same = store.update_enrollment_group(&b.name, &patch, &at(7_000)).await.unwrap();
    assert_eq!(same, b2);
    let bad_patch =
        EnrollmentGroupPatch { groups: Some(vec![group_name("berlin")]), ..Default::default() };
    let err = store.update_enrollment_group(&b.name, &bad_patch, &at(7_000)).await;
    assert!(matches!(&err, Err(StoreError::Conflict(_))), "{err:?}");
    let err = store.update_enrollment_group(&ename("ghost"), &patch, &at(7_000)).await;
    assert!(matches!(&err, Err(StoreError::NotFound { kind: "enrollment_group", .. })), "{err:?}");

    store.delete_enrollment_group(&a.name, &at(8_000)).await.unwrap();
    assert!(store.enrollment_group(&a.name).await.unwrap().is_none());
    let err = store.delete_enrollment_group(&a.name, &at(9_000)).await;
    assert!(matches!(&err, Err(StoreError::NotFound { kind: "enrollment_group", .. })), "{err:?}");

    store.record_key_derivation(&c.name, &[id("dev-1")], &at(9_500)).await.unwrap();
    store.record_key_derivation(&c.name, &[], &at(9_600)).await.unwrap();
    store.record_key_derivation(&c.name, &[id("dev-2"), id("dev-3")], &at(9_700)).await.unwrap();
    let err = store.record_key_derivation(&ename("ghost"), &[id("dev-1")], &at(9_500)).await;
    assert!(matches!(&err, Err(StoreError::NotFound { kind: "enrollment_group", .. })), "{err:?}");

    let records = audit_since(&*store, seq).await;
    assert_eq!(records.len(), 4);
    check_record(
        &records[0],
        &at(6_000),
        "enrollment_group.update",
        "enrollment_group/factory-b",
        Some(b.audit_summary()),
        Some(b2.audit_summary()),
    );
    check_record(
        &records[1],
        &at(8_000),
        "enrollment_group.delete",
        "enrollment_group/factory-a",
        Some(a.audit_summary()),
        None,
    );
    check_record(
        &records[2],
        &at(9_500),
        "enrollment_group.derive_key",
        "enrollment_group/factory-c",
        None,
        Some(json!({"device_id": "dev-1"})),
    );
    check_record(
        &records[3],
        &at(9_700),
        "enrollment_group.derive_key",
        "enrollment_group/factory-c",
        None,
        Some(json!({"count": 2, "device_ids": ["dev-2", "dev-3"]})),
    );
    check_chain(&*store).await;
}

/// Claim codes are stored for claim code groups only (one audit record per batch, no codes),
/// listed oldest first; each use is counted, and an exhausted, expired or unknown code refuses a
/// new device.
pub async fn claim_codes_count_their_uses(store: Arc<dyn Store>) {
    store.create_enrollment_group(&claim("cc"), &at(1)).await.unwrap();
    store.create_enrollment_group(&symmetric("sk"), &at(1)).await.unwrap();
    let seq = last_seq(&*store).await;

    let two_uses =
        store.create_claim_codes(&ename("cc"), &[new_code(1)], 2, None, &at(1_000)).await.unwrap();
    let expiry = Some(Timestamp::from_millis(BASE + 5_000));
    let batch = [new_code(2), new_code(3)];
    let later = store.create_claim_codes(&ename("cc"), &batch, 1, expiry, &at(2_000)).await;
    let later = later.unwrap();
    assert_eq!(
        later[0],
        ClaimCode {
            id: new_code(2).id,
            group: ename("cc"),
            uses: 0,
            max_uses: 1,
            expires_at: expiry,
            created_at: at(2_000).at,
        }
    );
    let all = [two_uses.clone(), later.clone()].concat();
    assert_eq!(store.claim_codes(&ename("cc")).await.unwrap(), all);
    let records = audit_since(&*store, seq).await;
    assert_eq!(records.len(), 2);
    check_record(
        &records[1],
        &at(2_000),
        "enrollment_group.claim_codes.create",
        "enrollment_group/cc",
        None,
        Some(claim_codes_audit_summary(&later, 1, expiry)),
    );

    let seq = last_seq(&*store).await;
    let err = store.create_claim_codes(&ename("sk"), &[new_code(9)], 1, None, &at(3_000)).await;
    assert!(matches!(&err, Err(StoreError::Conflict(_))), "{err:?}");
    let err = store.create_claim_codes(&ename("ghost"), &[new_code(9)], 1, None, &at(3_000)).await;
    assert!(matches!(&err, Err(StoreError::NotFound { kind: "enrollment_group", .. })), "{err:?}");
    let taken = [new_code(9), new_code(1)];
    let err = store.create_claim_codes(&ename("cc"), &taken, 1, None, &at(3_000)).await;
    assert!(matches!(&err, Err(StoreError::AlreadyExists { kind: "claim_code", .. })), "{err:?}");
    assert_eq!(store.claim_codes(&ename("cc")).await.unwrap(), all, "a failed batch stores none");
    assert_eq!(last_seq(&*store).await, seq);

    // Code 1 enrolls two devices, then no more.
    for (n, dev) in [(10, "d1"), (11, "d2")] {
        let r = with_code(registration("cc", dev, dev, n), 1);
        assert!(register(&*store, &r, 3_000).await.created);
    }
    let third = with_code(registration("cc", "d3", "d3", 12), 1);
    assert_eq!(refused(&*store, &third, 3_000).await, RegistrationRefusal::ClaimCodeExhausted);
    // Code 2 has expired at 5 000; code 3 works before.
    let expired = with_code(registration("cc", "d3", "d3", 12), 2);
    assert_eq!(refused(&*store, &expired, 5_000).await, RegistrationRefusal::ClaimCodeExpired);
    let unknown = with_code(registration("cc", "d3", "d3", 12), 99);
    assert_eq!(refused(&*store, &unknown, 3_000).await, RegistrationRefusal::InvalidClaimCode);
    let missing = registration("cc", "d3", "d3", 12);
    assert_eq!(refused(&*store, &missing, 3_000).await, RegistrationRefusal::InvalidClaimCode);
    assert!(
        register(&*store, &with_code(registration("cc", "d3", "d3", 12), 3), 4_000).await.created
    );
    assert!(store.device(&id("d4")).await.unwrap().is_none());

    let uses: Vec<(u32, u32)> = store
        .claim_codes(&ename("cc"))
        .await
        .unwrap()
        .iter()
        .map(|c| (c.uses, c.max_uses))
        .collect();
    assert_eq!(uses, vec![(2, 2), (0, 1), (1, 1)]);
    let group = store.enrollment_group(&ename("cc")).await.unwrap().unwrap();
    assert_eq!(group.registrations, 3);
    check_chain(&*store).await;
}

/// A new device is created active with the group's tags, attributes and static groups (a deleted
/// one skipped), under the template's id, audited as `device.register`; a retry with the same
/// registration id is idempotent (no second device, no extra claim code use).
pub async fn register_creates_then_retries_idempotently(store: Arc<dyn Store>) {
    for g in ["line-1", "gone"] {
        store.create_group(&static_group(g), &at(1)).await.unwrap();
    }
    let mut new = symmetric("sk");
    new.tags = tags(&[("site", "berlin")]);
    new.attributes = attributes(json!({"fw": "1.0"}));
    new.groups = vec![group_name("line-1"), group_name("gone")];
    new.device_id_template = Some(DeviceIdTemplate::new("sk-{registration_id}").unwrap());
    store.create_enrollment_group(&new, &at(2)).await.unwrap();
    store.delete_group(&group_name("gone"), &at(3)).await.unwrap();
    let seq = last_seq(&*store).await;

    let r = registration("sk", "0001", "sk-0001", 1);
    let first = register(&*store, &r, 1_000).await;
    assert!(first.created);
    assert!(first.revoked_credentials.is_empty());
    assert_eq!(
        (first.device.state, &first.device.tags, first.device.attributes.as_json()),
        (LifecycleState::Active, &new.tags, &json!({"fw": "1.0"}))
    );
    assert_eq!(store.device(&id("sk-0001")).await.unwrap(), Some(first.device.clone()));
    let q = crate::DeviceQuery { filter: None, after: None, limit: nz(10) };
    let members = store.group_devices(&group_name("line-1"), &q).await.unwrap();
    assert_eq!(members.items, vec![first.device.clone()]);
    assert_eq!(
        store.device_credentials(&id("sk-0001")).await.unwrap(),
        vec![first.credential.clone()]
    );
    let records = audit_since(&*store, seq).await;
    assert_eq!(records.len(), 1);
    check_record(
        &records[0],
        &by_group("sk", 1_000),
        "device.register",
        "device/sk-0001",
        None,
        Some(first.audit_summary(&r)),
    );
    assert_eq!(records[0].actor, "enrollment:sk");

    let retry = registration("sk", "0001", "sk-0001", 2);
    let second = register(&*store, &retry, 2_000).await;
    assert!(!second.created);
    assert_eq!(second.device, first.device);
    assert_eq!(second.credential.created_at, at(2_000).at);
    let page = store.list_devices(&q).await.unwrap();
    assert_eq!(page.items.len(), 1, "a retry creates no device");
    let group = store.enrollment_group(&ename("sk")).await.unwrap().unwrap();
    assert_eq!(group.registrations, 1);

    // Claim codes: the same device retrying with its code uses nothing more.
    store.create_enrollment_group(&claim("cc"), &at(3_000)).await.unwrap();
    store.create_claim_codes(&ename("cc"), &[new_code(1)], 1, None, &at(3_000)).await.unwrap();
    let r = with_code(registration("cc", "c1", "c1", 3), 1);
    assert!(register(&*store, &r, 4_000).await.created);
    let again = with_code(registration("cc", "c1", "c1", 4), 1);
    assert!(!register(&*store, &again, 5_000).await.created);
    let codes = store.claim_codes(&ename("cc")).await.unwrap();
    assert_eq!((codes[0].uses, codes[0].max_uses), (1, 1));
    // Another device with the used-up code is refused.
    let other = with_code(registration("cc", "c2", "c2", 5), 1);
    assert_eq!(refused(&*store, &other, 6_000).await, RegistrationRefusal::ClaimCodeExhausted);
    check_chain(&*store).await;
}

/// Refusals: an unknown, disabled or expired group; a device that exists without enrollment, was
/// enrolled by another group, under another registration id, or with another claim code. A
/// deleted group forgets what it enrolled. Refusals write nothing.
pub async fn register_refusals_and_conflicts(store: Arc<dyn Store>) {
    store.create_device(&new_device("manual", LifecycleState::Active), &at(1)).await.unwrap();
    store.create_enrollment_group(&symmetric("sk"), &at(1)).await.unwrap();
    store.create_enrollment_group(&symmetric("other"), &at(1)).await.unwrap();
    let mut expiring = symmetric("expiring");
    expiring.expires_at = Some(Timestamp::from_millis(BASE + 5_000));
    store.create_enrollment_group(&expiring, &at(1)).await.unwrap();
    let mut off = symmetric("off");
    off.enabled = false;
    store.create_enrollment_group(&off, &at(1)).await.unwrap();

    let cases = [
        (registration("ghost", "x", "x", 1), RegistrationRefusal::UnknownGroup),
        (registration("off", "x", "x", 1), RegistrationRefusal::GroupDisabled),
        (registration("sk", "manual", "manual", 1), RegistrationRefusal::DeviceConflict),
    ];
    for (r, expected) in cases {
        assert_eq!(refused(&*store, &r, 1_000).await, expected, "{r:?}");
    }
    assert!(register(&*store, &registration("expiring", "e1", "e1", 2), 4_999).await.created);
    let late = registration("expiring", "e2", "e2", 3);
    assert_eq!(refused(&*store, &late, 5_000).await, RegistrationRefusal::GroupExpired);

    register(&*store, &registration("sk", "s1", "s1", 4), 1_000).await;
    let conflicts = [
        registration("other", "s1", "s1", 5),
        // Same device id, another registration id (a template maps both to it).
        registration("sk", "s1-bis", "s1", 5),
    ];
    for r in conflicts {
        assert_eq!(refused(&*store, &r, 2_000).await, RegistrationRefusal::DeviceConflict);
    }

    // Claim codes: the device must retry with the code that enrolled it.
    store.create_enrollment_group(&claim("cc"), &at(3_000)).await.unwrap();
    let codes = [new_code(1), new_code(2)];
    store.create_claim_codes(&ename("cc"), &codes, 5, None, &at(3_000)).await.unwrap();
    register(&*store, &with_code(registration("cc", "c1", "c1", 6), 1), 3_000).await;
    let stolen = with_code(registration("cc", "c1", "c1", 7), 2);
    assert_eq!(refused(&*store, &stolen, 4_000).await, RegistrationRefusal::DeviceConflict);

    // Deleting the group forgets its enrollments: the device is then un-enrolled.
    store.delete_enrollment_group(&ename("sk"), &at(6_000)).await.unwrap();
    store.create_enrollment_group(&symmetric("sk"), &at(6_000)).await.unwrap();
    let r = registration("sk", "s1", "s1", 8);
    assert_eq!(refused(&*store, &r, 7_000).await, RegistrationRefusal::DeviceConflict);

    // A taken credential id is an error and leaves nothing behind.
    let seq = last_seq(&*store).await;
    let taken = registration("other", "o1", "o1", 4);
    let err = store.register_device(&taken, &by_group("other", 8_000)).await;
    assert!(matches!(&err, Err(StoreError::AlreadyExists { kind: "credential", .. })), "{err:?}");
    assert!(store.device(&id("o1")).await.unwrap().is_none());
    assert_eq!(last_seq(&*store).await, seq);

    // A refusal put on record.
    let refusal = RegistrationRefusalRecord {
        group: Some(ename("sk")),
        registration_id: rid("s9"),
        reason: "invalid_proof".to_owned(),
        source: "https 192.0.2.7".to_owned(),
    };
    store.record_registration_refusal(&refusal, &by_group("sk", 9_000)).await.unwrap();
    let records = audit_since(&*store, seq).await;
    assert_eq!(records.len(), 1);
    check_record(
        &records[0],
        &by_group("sk", 9_000),
        "enrollment.register.refused",
        "registration/s9",
        None,
        Some(
            json!({"enrollment_group": "sk", "reason": "invalid_proof", "source": "https 192.0.2.7"}),
        ),
    );
    check_chain(&*store).await;
}

/// A device that exists in state `registered` with no enrollment (imported beforehand) is adopted
/// through a group whose proof binds the device id (not a claim code): it becomes active, the
/// group's tags and attributes are merged under its own, it joins the group's static groups,
/// audited as `device.register` with `"adopted": true`; retrying is then idempotent. A claim code
/// does not adopt it, devices in other states stay conflicts, and too many tags after the merge is
/// an error that writes nothing.
pub async fn register_adopts_registered_devices(store: Arc<dyn Store>) {
    store.create_group(&static_group("line-1"), &at(1)).await.unwrap();
    let mut pre = new_device("imp-1", LifecycleState::Registered);
    pre.tags = tags(&[("site", "paris"), ("batch", "b7")]);
    pre.attributes = attributes(json!({"fw": "0.9", "sn": "X1"}));
    store.create_device(&pre, &at(1)).await.unwrap();
    let mut new = symmetric("sk");
    new.tags = tags(&[("site", "berlin"), ("owner", "ops")]);
    new.attributes = attributes(json!({"fw": "1.0", "line": 1}));
    new.groups = vec![group_name("line-1")];
    store.create_enrollment_group(&new, &at(2)).await.unwrap();
    store.create_enrollment_group(&claim("cc"), &at(2)).await.unwrap();
    store.create_claim_codes(&ename("cc"), &[new_code(1)], 2, None, &at(2)).await.unwrap();
    let seq = last_seq(&*store).await;

    // A claim code names no device: it cannot take a pre-provisioned one.
    let r = with_code(registration("cc", "imp-1", "imp-1", 9), 1);
    assert_eq!(refused(&*store, &r, 500).await, RegistrationRefusal::DeviceConflict);
    assert_eq!(store.claim_codes(&ename("cc")).await.unwrap()[0].uses, 0);
    assert_eq!(audit_since(&*store, seq).await.len(), 0);

    let r = registration("sk", "imp-1", "imp-1", 1);
    let adopted = register(&*store, &r, 1_000).await;
    assert!(!adopted.created);
    assert!(adopted.adopted);
    let d = &adopted.device;
    assert_eq!(d.state, LifecycleState::Active);
    assert_eq!(d.tags, tags(&[("batch", "b7"), ("owner", "ops"), ("site", "paris")]));
    assert_eq!(d.attributes.as_json(), &json!({"fw": "0.9", "line": 1, "sn": "X1"}));
    assert_eq!((d.version, d.updated_at, d.created_at), (2, at(1_000).at, at(1).at));
    assert_eq!(store.device(&id("imp-1")).await.unwrap().as_ref(), Some(d));
    let q = crate::DeviceQuery { filter: None, after: None, limit: nz(10) };
    let members = store.group_devices(&group_name("line-1"), &q).await.unwrap();
    assert_eq!(members.items, vec![d.clone()]);
    // The merged tags are searchable.
    let by_tag = crate::DeviceQuery { filter: Some(parse("tags.owner = 'ops'")), ..q.clone() };
    assert_eq!(store.list_devices(&by_tag).await.unwrap().items.len(), 1);
    assert_eq!(store.enrollment_group(&ename("sk")).await.unwrap().unwrap().registrations, 1);
    let records = audit_since(&*store, seq).await;
    assert_eq!(records.len(), 1);
    check_record(
        &records[0],
        &by_group("sk", 1_000),
        "device.register",
        "device/imp-1",
        None,
        Some(adopted.audit_summary(&r)),
    );
    let after: serde_json::Value =
        serde_json::from_str(records[0].after.as_deref().unwrap()).unwrap();
    assert_eq!(after["adopted"], json!(true));

    // Now it was enrolled by this group: a retry is idempotent.
    let retry = registration("sk", "imp-1", "imp-1", 2);
    let again = register(&*store, &retry, 2_000).await;
    assert!(!again.created && !again.adopted);
    assert_eq!(&again.device, d);

    // Devices in any other state are not adopted.
    for (n, state) in [
        (3u8, LifecycleState::Active),
        (4, LifecycleState::Suspended),
        (5, LifecycleState::Decommissioned),
    ] {
        let dev = format!("other-{n}");
        store.create_device(&new_device(&dev, LifecycleState::Active), &at(3_000)).await.unwrap();
        if state != LifecycleState::Active {
            let patch = domain::DevicePatch { state: Some(state), ..Default::default() };
            store.update_device(&id(&dev), &patch, None, &at(3_000)).await.unwrap();
        }
        let r = registration("sk", &dev, &dev, n);
        assert_eq!(
            refused(&*store, &r, 4_000).await,
            RegistrationRefusal::DeviceConflict,
            "{state}"
        );
    }

    // Too many tags once merged: an error, nothing written.
    let mut crowded = new_device("imp-2", LifecycleState::Registered);
    crowded.tags = Tags::new((0..64).map(|i| (format!("k{i}"), "v".to_owned()))).unwrap();
    store.create_device(&crowded, &at(5_000)).await.unwrap();
    let seq = last_seq(&*store).await;
    let r = registration("sk", "imp-2", "imp-2", 9);
    let err = store.register_device(&r, &by_group("sk", 6_000)).await;
    assert!(matches!(&err, Err(StoreError::Conflict(_))), "{err:?}");
    assert_eq!(last_seq(&*store).await, seq);
    let still = store.device(&id("imp-2")).await.unwrap().unwrap();
    assert_eq!(still.state, LifecycleState::Registered);
    assert_eq!(store.claim_codes(&ename("cc")).await.unwrap()[0].uses, 0);
    check_chain(&*store).await;
}

/// Each registration issues a credential; only the newest two provisioning credentials stay
/// valid (older ones are revoked and reported), and credentials an operator issued are untouched.
pub async fn register_keeps_two_provisioning_credentials(store: Arc<dyn Store>) {
    store.create_enrollment_group(&symmetric("sk"), &at(1)).await.unwrap();
    let first = register(&*store, &registration("sk", "d1", "d1", 1), 1_000).await;
    let manual = NewDeviceCredential {
        id: CredentialId::from_random([0x50; 8]),
        device_id: id("d1"),
        hash: TokenHash::of_secret("manual"),
        expires_at: None,
    };
    let manual = store.create_device_credential(&manual, &at(1_500)).await.unwrap();
    // All in the same millisecond: the order of issue decides, not the time.
    let second = register(&*store, &registration("sk", "d1", "d1", 2), 2_000).await;
    assert!(second.revoked_credentials.is_empty());
    let third = register(&*store, &registration("sk", "d1", "d1", 3), 2_000).await;
    assert_eq!(third.revoked_credentials, vec![first.credential.id.clone()]);
    let fourth = register(&*store, &registration("sk", "d1", "d1", 4), 2_000).await;
    assert_eq!(fourth.revoked_credentials, vec![second.credential.id.clone()]);

    let now = at(3_000).at;
    let usable: Vec<CredentialId> = store
        .device_credentials(&id("d1"))
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.is_usable_at(now))
        .map(|c| c.id)
        .collect::<Vec<_>>();
    let mut expected =
        vec![manual.id.clone(), third.credential.id.clone(), fourth.credential.id.clone()];
    let mut usable = usable;
    usable.sort();
    expected.sort();
    assert_eq!(usable, expected);
    let revoked = store.device_credential_by_hash(&first.credential.hash).await.unwrap().unwrap();
    assert_eq!(revoked.revoked_at, Some(at(2_000).at));

    // Deleting the device removes its credentials and enrollment: registering creates it anew.
    store.delete_device(&id("d1"), None, &at(4_000)).await.unwrap();
    let again = register(&*store, &registration("sk", "d1", "d1", 5), 5_000).await;
    assert!(again.created);
    assert!(again.revoked_credentials.is_empty());
    check_chain(&*store).await;
}
