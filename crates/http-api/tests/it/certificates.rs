//! Device certificates: issued from a CSR by the configured issuer (the subject is always the
//! device), listed, revoked with an access-change event; 503 without an issuer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use domain::{
    AccessChangeReason, CertificateSerial, DeviceAccessChange, DeviceId, Role, Timestamp,
};
use http_api::{ApiConfig, CertificateIssuer, IssueError, IssuedCertificate};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, IsCa, Issuer, KeyPair, SerialNumber,
};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use store::Store;
use tokio::sync::mpsc;
use x509_parser::prelude::{FromDer as _, X509Certificate};

use crate::api::TestApi;

const CERTS: &str = "/api/v1/devices/boiler-7/certificates";

/// A CA for tests: signs with the CSR's key, names the device as subject, numbers serials from
/// `0x10` up.
pub(crate) struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pub(crate) pem: String,
    next: AtomicU8,
}

impl TestCa {
    pub(crate) fn new() -> Self {
        let key = KeyPair::generate().expect("generate the CA key");
        let mut params =
            CertificateParams::new(Vec::<String>::new()).expect("CA parameters without names");
        params.distinguished_name.push(DnType::CommonName, "test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        let pem = params.self_signed(&key).expect("self-sign the CA").pem();
        Self { issuer: Issuer::new(params, key), pem, next: AtomicU8::new(0x10) }
    }
}

impl CertificateIssuer for TestCa {
    fn issue(&self, csr_pem: &str, device: &DeviceId) -> Result<IssuedCertificate, IssueError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| IssueError::InvalidCsr(e.to_string()))?;
        let mut subject = DistinguishedName::new();
        subject.push(DnType::CommonName, device.as_str());
        csr.params.distinguished_name = subject;
        csr.params.subject_alt_names = Vec::new();
        let serial = self.next.fetch_add(1, Ordering::SeqCst);
        csr.params.serial_number = Some(SerialNumber::from(vec![serial]));
        // 36 days after the tests' clock (2026-11-26T12:00:00Z) it ends.
        csr.params.not_before = rcgen::date_time_ymd(2026, 11, 1);
        csr.params.not_after = rcgen::date_time_ymd(2027, 1, 1);
        let cert = csr.signed_by(&self.issuer).map_err(|e| IssueError::Failed(e.to_string()))?;
        let (_, parsed) =
            X509Certificate::from_der(cert.der()).expect("read back what rcgen signed");
        let time = |t: x509_parser::time::ASN1Time| Timestamp::from_millis(t.timestamp() * 1000);
        Ok(IssuedCertificate {
            pem: cert.pem(),
            serial_hex: format!("{serial:02x}"),
            not_before: time(parsed.validity().not_before),
            not_after: time(parsed.validity().not_after),
            fingerprint_sha256: hex_sha256(cert.der()),
        })
    }

    fn ca_certificate_pem(&self) -> &str {
        &self.pem
    }
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A PEM CSR for a fresh key whose subject names `cn`.
pub(crate) fn csr(cn: &str) -> String {
    let key = KeyPair::generate().expect("generate a device key");
    let mut params = CertificateParams::new(vec![cn.to_owned()]).expect("a valid name");
    params.distinguished_name.push(DnType::CommonName, cn);
    let request = params.serialize_request(&key).expect("sign the request");
    request.pem().expect("encode the request as PEM")
}

/// The common name of a PEM certificate's subject.
pub(crate) fn subject_cn(pem: &str) -> String {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("a PEM block");
    let cert = pem.parse_x509().expect("a certificate");
    let cn = cert.subject().iter_common_name().next().expect("a common name");
    cn.as_str().expect("a UTF-8 common name").to_owned()
}

/// An API with a test CA whose access-change events arrive on the returned receiver.
async fn api_with_ca() -> (TestApi, mpsc::Receiver<DeviceAccessChange>, String) {
    let (tx, rx) = mpsc::channel(16);
    let ca = Arc::new(TestCa::new());
    let ca_pem = ca.pem.clone();
    let api = TestApi::build(ApiConfig::default(), |s| {
        s.with_access_events(tx).with_certificate_issuer(ca)
    })
    .await;
    (api, rx, ca_pem)
}

#[tokio::test]
async fn issue_list_and_revoke() {
    let (api, mut rx, ca_pem) = api_with_ca().await;
    api.create_device(json!({"id": "boiler-7", "state": "active"})).await;
    let seq = api.store.audit_records(0, 1000.try_into().unwrap()).await.unwrap().len();

    // The CSR names another device: the certificate names the device of the path.
    let created = api
        .post(CERTS)
        .role(Role::Operator)
        .json(&json!({"csr": csr("someone-else")}))
        .send()
        .await
        .assert_status(201)
        .json();
    let pem = created["certificate"].as_str().unwrap().to_owned();
    assert_eq!(subject_cn(&pem), "boiler-7");
    let (_, der) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
    assert_eq!(created["fingerprint_sha256"], hex_sha256(&der.contents));
    assert_eq!(created["serial"], "10");
    assert_eq!(created["device_id"], "boiler-7");
    assert_eq!(created["created_at"], "2026-11-26T12:00:00Z");
    assert_eq!(created["revoked_at"], Value::Null);
    assert_eq!(created["ca_certificate"], ca_pem.as_str());
    assert!(created["not_before"].is_string() && created["not_after"].is_string(), "{created}");

    let stored = api
        .store
        .device_certificate_by_serial(&CertificateSerial::new("10").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.pem, pem);
    assert_eq!(stored.device_id.as_str(), "boiler-7");

    api.advance_millis(1000);
    let second =
        api.post(CERTS).json(&json!({"csr": csr("x")})).send().await.assert_status(201).json();
    assert_eq!(second["serial"], "11");

    // Listing is for viewers, newest first, without the CA certificate.
    let list = api.get(CERTS).role(Role::Viewer).send().await.assert_status(200).json();
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.iter().map(|c| c["serial"].clone()).collect::<Vec<_>>(), ["11", "10"]);
    assert_eq!(items[1]["certificate"], pem.as_str());
    assert!(items.iter().all(|c| c.get("ca_certificate").is_none()), "{list}");
    assert_events(&mut rx, &[]);

    api.advance_millis(1000);
    let revoked = api.delete(&format!("{CERTS}/10")).send().await.assert_status(200).json();
    assert_eq!(revoked["serial"], "10");
    assert_eq!(revoked["revoked_at"], "2026-11-26T12:00:02Z");
    assert_events(&mut rx, &[("boiler-7", AccessChangeReason::CredentialRevoked)]);
    // Revoking twice keeps the first time (and still tells the gateway).
    api.advance_millis(1000);
    let again = api.delete(&format!("{CERTS}/10")).send().await.assert_status(200).json();
    assert_eq!(again["revoked_at"], "2026-11-26T12:00:02Z");
    let list = api.get(CERTS).send().await.assert_status(200).json();
    assert_eq!(list["items"][1]["revoked_at"], "2026-11-26T12:00:02Z");
    assert_eq!(list["items"][0]["revoked_at"], Value::Null);

    // Audited on the device: two issues and one revocation, never the PEM.
    let records = api.store.audit_records(0, 1000.try_into().unwrap()).await.unwrap();
    let records: Vec<_> = records
        .into_iter()
        .skip(seq)
        .map(|r| (r.action, r.resource, r.actor, r.after.unwrap_or_default()))
        .collect();
    let actions: Vec<_> = records.iter().map(|r| (r.0.as_str(), r.1.as_str())).collect();
    assert_eq!(
        actions,
        [
            ("device.certificate.create", "device/boiler-7"),
            ("device.certificate.create", "device/boiler-7"),
            ("device.certificate.revoke", "device/boiler-7"),
        ]
    );
    assert!(records.iter().all(|r| !r.3.contains("BEGIN CERTIFICATE")), "{records:?}");
    assert!(records[0].3.contains("\"serial\":\"10\""), "{records:?}");
}

#[tokio::test]
async fn failures() {
    let (api, mut rx, _) = api_with_ca().await;
    api.create_device(json!({"id": "boiler-7"})).await;
    api.create_device(json!({"id": "other"})).await;
    let other = "/api/v1/devices/other/certificates";
    api.post(other).json(&json!({"csr": csr("other")})).send().await.assert_status(201);

    let not_pem = json!({"csr": "hello"});
    let cases: &[(&str, &str, Option<Value>, u16, &str)] = &[
        (
            "POST",
            "/api/v1/devices/nope/certificates",
            Some(json!({"csr": csr("nope")})),
            404,
            "device_not_found",
        ),
        ("GET", "/api/v1/devices/nope/certificates", None, 404, "device_not_found"),
        (
            "POST",
            "/api/v1/devices/bad%20id/certificates",
            Some(not_pem.clone()),
            400,
            "invalid_device_id",
        ),
        ("POST", CERTS, Some(not_pem), 400, "invalid_csr"),
        (
            "POST",
            CERTS,
            Some(
                json!({"csr": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"}),
            ),
            400,
            "invalid_csr",
        ),
        ("POST", CERTS, Some(json!({})), 400, "invalid_body"),
        ("POST", CERTS, Some(json!({"csr": csr("x"), "days": 3})), 400, "unknown_field"),
        ("DELETE", "/api/v1/devices/boiler-7/certificates/ff", None, 404, "certificate_not_found"),
        (
            "DELETE",
            "/api/v1/devices/boiler-7/certificates/NOT-HEX",
            None,
            404,
            "certificate_not_found",
        ),
        // Another device's certificate is not this device's.
        ("DELETE", "/api/v1/devices/boiler-7/certificates/10", None, 404, "certificate_not_found"),
    ];
    for (method, path, body, status, code) in cases {
        let req = api.req(method.parse().unwrap(), path);
        let req = match body {
            Some(b) => req.json(b),
            None => req,
        };
        let resp = req.send().await;
        let problem = resp.assert_problem(*status, code);
        if *code == "invalid_csr" {
            let detail = problem["detail"].as_str().unwrap();
            assert!(detail.starts_with("invalid certificate signing request: "), "{detail}");
        }
    }
    // Failures issue nothing, store nothing and end nobody's access.
    let list = api.get(CERTS).send().await.assert_status(200).json();
    assert_eq!(list, json!({"items": []}));
    assert_events(&mut rx, &[]);
}

#[tokio::test]
async fn the_renewal_report_lists_certificates_ending_soon() {
    let (api, _rx, _) = api_with_ca().await;
    api.create_device(json!({"id": "boiler-7", "state": "active"})).await;
    // The test CA's certificates end 36 days after the clock's now.
    let created = api
        .post(CERTS)
        .role(Role::Operator)
        .json(&json!({"csr": csr("boiler-7")}))
        .send()
        .await
        .assert_status(201)
        .json();
    let report = |query: &'static str| {
        let api = &api;
        async move {
            api.get(&format!("/api/v1/certificates/expiring{query}"))
                .role(Role::Viewer)
                .send()
                .await
                .assert_status(200)
                .json()
        }
    };
    assert_eq!(report("").await["items"], json!([]));
    let all = report("?within_days=37&limit=5").await;
    assert_eq!(all["items"].as_array().unwrap().len(), 1, "{all}");
    assert_eq!(all["items"][0]["serial"], created["serial"]);
    assert_eq!(all["items"][0]["device_id"], "boiler-7");
    for (query, status, code) in [
        ("?within_days=3651", 422, "validation_failed"),
        ("?within_days=soon", 400, "invalid_query"),
        ("?limit=0", 422, "validation_failed"),
        ("?days=3", 400, "invalid_query"),
    ] {
        let body = api
            .get(&format!("/api/v1/certificates/expiring{query}"))
            .role(Role::Viewer)
            .send()
            .await
            .assert_status(status)
            .json();
        assert_eq!(body["code"], code, "{query}: {body}");
    }
    // Revoked certificates need no renewal.
    let serial = created["serial"].as_str().unwrap();
    api.delete(&format!("{CERTS}/{serial}")).role(Role::Operator).send().await.assert_status(200);
    assert_eq!(report("?within_days=3650").await["items"], json!([]));
}

#[tokio::test]
async fn without_an_issuer_issuing_is_unavailable() {
    let api = TestApi::new().await;
    api.create_device(json!({"id": "boiler-7"})).await;
    api.post(CERTS)
        .json(&json!({"csr": csr("boiler-7")}))
        .send()
        .await
        .assert_problem(503, "ca_unavailable");
    let list = api.get(CERTS).send().await.assert_status(200).json();
    assert_eq!(list, json!({"items": []}));
}

#[track_caller]
fn assert_events(
    rx: &mut mpsc::Receiver<DeviceAccessChange>,
    expected: &[(&str, AccessChangeReason)],
) {
    let mut got = Vec::new();
    while let Ok(e) = rx.try_recv() {
        got.push(e);
    }
    let expected: Vec<_> = expected
        .iter()
        .map(|(id, reason)| DeviceAccessChange {
            device_id: DeviceId::new(*id).expect("a valid device id"),
            reason: *reason,
        })
        .collect();
    assert_eq!(got, expected);
}
