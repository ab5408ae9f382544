//! Conformance cases of device certificates (`create_device_certificate`,
//! `device_certificate_by_serial`, `device_certificates`, `revoke_device_certificate`).

use std::sync::Arc;

use domain::{
    CertificateSerial, DeviceCertificate, LifecycleState, NewDeviceCertificate, Timestamp,
};

use crate::conformance::{
    BASE, at, audit_since, check_chain, check_record, id, last_seq, new_device,
};
use crate::{Store, StoreError};

fn serial(n: u8) -> CertificateSerial {
    CertificateSerial::new(format!("{n:02x}{}", "5a".repeat(15))).unwrap()
}

/// Certificate `n` of device `dev_id`, valid from `BASE` for a day.
fn new_certificate(n: u8, dev_id: &str) -> NewDeviceCertificate {
    NewDeviceCertificate {
        serial: serial(n),
        device_id: id(dev_id),
        fingerprint_sha256: format!("{n:02x}").repeat(32),
        not_before: Timestamp::from_millis(BASE),
        not_after: Timestamp::from_millis(BASE + 86_400_000),
        pem: format!(
            "-----BEGIN CERTIFICATE-----\nY2VydGlmaWNhdGUt{n:02x}\n-----END CERTIFICATE-----\n"
        ),
    }
}

async fn create(store: &dyn Store, n: u8, dev_id: &str, ms: i64) -> DeviceCertificate {
    store.create_device_certificate(&new_certificate(n, dev_id), &at(ms)).await.unwrap()
}

async fn devices(store: &dyn Store) {
    for d in ["d1", "d2"] {
        store.create_device(&new_device(d, LifecycleState::Active), &at(1)).await.unwrap();
    }
}

/// Creating a certificate for an existing device returns it as given, stamped with the mutation's
/// time, and audits it on the device; a missing device is `NotFound`, a taken serial
/// `AlreadyExists` (kind `certificate`, across devices too), and failures leave no trace.
pub async fn create_device_certificates(store: Arc<dyn Store>) {
    devices(&*store).await;
    let seq = last_seq(&*store).await;
    let c1 = create(&*store, 1, "d1", 1_000).await;
    let c2 = create(&*store, 2, "d1", 2_000).await;
    let new = new_certificate(2, "d1");
    assert_eq!(
        c2,
        DeviceCertificate {
            serial: new.serial,
            device_id: new.device_id,
            fingerprint_sha256: new.fingerprint_sha256,
            not_before: new.not_before,
            not_after: new.not_after,
            created_at: at(2_000).at,
            revoked_at: None,
            pem: new.pem,
        }
    );
    assert!(c2.is_usable_at(at(3_000).at));
    assert_eq!(store.device_certificates(&id("d1")).await.unwrap(), vec![c2.clone(), c1.clone()]);

    let records = audit_since(&*store, seq).await;
    assert_eq!(records.len(), 2);
    for (r, (c, ms)) in records.iter().zip([(&c1, 1_000), (&c2, 2_000)]) {
        let after = Some(c.audit_summary());
        check_record(r, &at(ms), "device.certificate.create", "device/d1", None, after);
    }

    let seq = last_seq(&*store).await;
    let err = store.create_device_certificate(&new_certificate(3, "ghost"), &at(3_000)).await;
    assert!(
        matches!(&err, Err(StoreError::NotFound { kind: "device", id }) if id == "ghost"),
        "{err:?}"
    );
    for dev in ["d1", "d2"] {
        let mut same_serial = new_certificate(1, dev);
        same_serial.fingerprint_sha256 = "ff".repeat(32);
        let err = store.create_device_certificate(&same_serial, &at(3_000)).await;
        assert!(
            matches!(&err, Err(StoreError::AlreadyExists { kind: "certificate", id }) if *id == c1.serial.to_string()),
            "{err:?}"
        );
    }
    assert_eq!(store.device_certificates(&id("d1")).await.unwrap(), vec![c2, c1]);
    assert!(store.device_certificates(&id("d2")).await.unwrap().is_empty());
    assert!(store.device_certificate_by_serial(&serial(3)).await.unwrap().is_none());
    assert_eq!(last_seq(&*store).await, seq);
    check_chain(&*store).await;
}

/// Lookup by serial finds any device's certificate, revoked ones too, and writes nothing; a
/// device's list is its own certificates only, newest first (ties: highest serial first).
pub async fn device_certificate_lookup_and_list(store: Arc<dyn Store>) {
    devices(&*store).await;
    let c1 = create(&*store, 1, "d1", 1_000).await;
    // Two issued at the same time: the higher serial lists first.
    let c3 = create(&*store, 3, "d1", 2_000).await;
    let c2 = create(&*store, 2, "d1", 2_000).await;
    let other = create(&*store, 4, "d2", 3_000).await;
    let c3 = store.revoke_device_certificate(&id("d1"), &c3.serial, &at(4_000)).await.unwrap();
    let seq = last_seq(&*store).await;

    for c in [&c1, &c2, &c3, &other] {
        let found = store.device_certificate_by_serial(&c.serial).await.unwrap();
        assert_eq!(found.as_ref(), Some(c));
    }
    assert!(store.device_certificate_by_serial(&serial(5)).await.unwrap().is_none());
    assert_eq!(
        store.device_certificates(&id("d1")).await.unwrap(),
        vec![c3.clone(), c2.clone(), c1.clone()]
    );
    assert_eq!(store.device_certificates(&id("d2")).await.unwrap(), vec![other]);
    assert!(store.device_certificates(&id("ghost")).await.unwrap().is_empty());
    assert_eq!(last_seq(&*store).await, seq, "reads must not be audited");
    check_chain(&*store).await;
}

/// Revoking sets `revoked_at` from the mutation; revoking again keeps the first time and writes
/// nothing; an unknown serial, or another device's certificate, is `NotFound` (kind
/// `certificate`).
pub async fn revoke_device_certificate(store: Arc<dyn Store>) {
    devices(&*store).await;
    let c1 = create(&*store, 1, "d1", 1_000).await;
    let c2 = create(&*store, 2, "d1", 2_000).await;
    let c3 = create(&*store, 3, "d2", 3_000).await;
    let seq = last_seq(&*store).await;

    let revoked = store.revoke_device_certificate(&id("d1"), &c1.serial, &at(5_000)).await;
    let revoked = revoked.unwrap();
    assert_eq!(revoked, DeviceCertificate { revoked_at: Some(at(5_000).at), ..c1.clone() });
    assert!(!revoked.is_usable_at(at(5_000).at));
    let again = store.revoke_device_certificate(&id("d1"), &c1.serial, &at(6_000)).await;
    assert_eq!(again.unwrap(), revoked);
    let found = store.device_certificate_by_serial(&c1.serial).await.unwrap();
    assert_eq!(found, Some(revoked.clone()));
    assert_eq!(
        store.device_certificates(&id("d1")).await.unwrap(),
        vec![c2.clone(), revoked.clone()]
    );

    let cases = [("d1", serial(7)), ("d2", c1.serial.clone()), ("d1", c3.serial.clone())];
    for (device, s) in cases {
        let err = store.revoke_device_certificate(&id(device), &s, &at(7_000)).await;
        assert!(
            matches!(&err, Err(StoreError::NotFound { kind: "certificate", id }) if *id == s.to_string()),
            "{device} {s}: {err:?}"
        );
    }
    let err = store.revoke_device_certificate(&id("ghost"), &c2.serial, &at(7_000)).await;
    assert!(matches!(&err, Err(StoreError::NotFound { kind: "certificate", .. })), "{err:?}");
    assert_eq!(store.device_certificate_by_serial(&c2.serial).await.unwrap(), Some(c2));
    assert_eq!(store.device_certificate_by_serial(&c3.serial).await.unwrap(), Some(c3));

    let records = audit_since(&*store, seq).await;
    assert_eq!(records.len(), 1);
    check_record(
        &records[0],
        &at(5_000),
        "device.certificate.revoke",
        "device/d1",
        Some(c1.audit_summary()),
        Some(revoked.audit_summary()),
    );
    check_chain(&*store).await;
}

/// The renewal report lists the certificates not revoked that end before a time, of every
/// device, soonest end first, expired ones included, up to the limit.
pub async fn expiring_device_certificates(store: Arc<dyn Store>) {
    devices(&*store).await;
    let day = 86_400_000;
    let mut ends = Vec::new();
    // Certificate n ends n days after BASE (n = 1..=4; 3 is revoked), d1 and d2 alternating.
    for n in 1..=4u8 {
        let mut new = new_certificate(n, if n % 2 == 0 { "d2" } else { "d1" });
        new.not_after = Timestamp::from_millis(BASE + i64::from(n) * day);
        ends.push(store.create_device_certificate(&new, &at(1_000)).await.unwrap());
    }
    // Same end as certificate 2, lower serial: it comes first.
    let mut tie = new_certificate(0, "d1");
    tie.not_after = ends[1].not_after;
    let tie = store.create_device_certificate(&tie, &at(1_000)).await.unwrap();
    store.revoke_device_certificate(&id("d1"), &ends[2].serial, &at(2_000)).await.unwrap();

    let limit = |n| std::num::NonZeroU32::new(n).unwrap();
    let expiring = |before: i64, n: u32| {
        let store = Arc::clone(&store);
        async move {
            store
                .expiring_device_certificates(Timestamp::from_millis(before), limit(n))
                .await
                .unwrap()
        }
    };
    assert_eq!(expiring(BASE + day, 10).await, vec![]);
    assert_eq!(expiring(BASE + day + 1, 10).await, vec![ends[0].clone()]);
    assert_eq!(
        expiring(BASE + 10 * day, 10).await,
        vec![ends[0].clone(), tie.clone(), ends[1].clone(), ends[3].clone()]
    );
    assert_eq!(expiring(BASE + 10 * day, 2).await, vec![ends[0].clone(), tie]);
}

/// Deleting a device deletes its certificates (only the device's own record is written); a new
/// device with the same id starts without any, and the serials are free again.
pub async fn delete_device_removes_certificates(store: Arc<dyn Store>) {
    devices(&*store).await;
    let c1 = create(&*store, 1, "d1", 1_000).await;
    let c2 = create(&*store, 2, "d1", 2_000).await;
    store.revoke_device_certificate(&id("d1"), &c2.serial, &at(2_500)).await.unwrap();
    let c3 = create(&*store, 3, "d2", 3_000).await;
    let seq = last_seq(&*store).await;

    store.delete_device(&id("d1"), None, &at(4_000)).await.unwrap();
    for c in [&c1, &c2] {
        assert!(store.device_certificate_by_serial(&c.serial).await.unwrap().is_none());
    }
    assert!(store.device_certificates(&id("d1")).await.unwrap().is_empty());
    assert_eq!(store.device_certificates(&id("d2")).await.unwrap(), vec![c3]);
    let records = audit_since(&*store, seq).await;
    assert_eq!(records.len(), 1);
    assert_eq!(
        (records[0].action.as_str(), records[0].resource.as_str()),
        ("device.delete", "device/d1")
    );

    store.create_device(&new_device("d1", LifecycleState::Active), &at(5_000)).await.unwrap();
    assert!(store.device_certificates(&id("d1")).await.unwrap().is_empty());
    let again = create(&*store, 1, "d1", 6_000).await;
    assert_eq!(again, DeviceCertificate { created_at: at(6_000).at, ..c1 });
    check_chain(&*store).await;
}
