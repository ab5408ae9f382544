//! Tests of the device CA: creation and reload, file checks, and what issued certificates say.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use domain::DeviceId;
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, UnixTime};
use x509_parser::extensions::GeneralName;

use crate::identity::ca::{CaError, CaOptions, CertificateAuthority, IssuedCertificate};

const DAY: Duration = Duration::from_secs(86_400);

fn new_ca(dir: &Path) -> CertificateAuthority {
    CertificateAuthority::load_or_create(dir, &CaOptions::default()).unwrap()
}

fn device(id: &str) -> DeviceId {
    DeviceId::new(id).unwrap()
}

/// A CSR from a fresh P-256 key that asks for much more than a device may have: another device's
/// name, a DNS name, server authentication and CA powers.
fn greedy_csr() -> String {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::new(vec!["evil.example".to_owned()]).unwrap();
    params.distinguished_name.remove(DnType::CommonName);
    params.distinguished_name.push(DnType::CommonName, "other-device");
    params.distinguished_name.push(DnType::OrganizationName, "Evil Corp");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.serialize_request(&key).unwrap().pem().unwrap()
}

fn parse_pem(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().to_vec()
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[cfg(unix)]
fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Verifies `issued` as a TLS client certificate chaining to `ca`, as a TLS listener would.
#[track_caller]
fn verify_client_cert(ca: &CertificateAuthority, issued: &IssuedCertificate) {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(parse_pem(ca.ca_pem()))).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .unwrap();
    let leaf = CertificateDer::from(parse_pem(&issued.pem));
    verifier.verify_client_cert(&leaf, &[], UnixTime::now()).unwrap();
}

#[test]
fn created_once_then_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("data/ca");
    let ca = new_ca(&ca_dir);
    assert_eq!(ca.cert_path(), ca_dir.join("ca.pem"));
    assert!(ca.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"), "{}", ca.ca_pem());
    #[cfg(unix)]
    {
        assert_eq!(mode(&ca_dir.join("ca.key")), 0o600);
        assert_eq!(mode(&ca_dir), 0o700);
    }
    let again = new_ca(&ca_dir);
    assert_eq!(again.ca_pem(), ca.ca_pem());
    // The reloaded CA signs certificates the first one's certificate verifies.
    let issued = again.issue_for_csr(&greedy_csr(), &device("dev-1"), DAY).unwrap();
    verify_client_cert(&ca, &issued);

    let der = parse_pem(ca.ca_pem());
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert_eq!(cert.subject().to_string(), "CN=Herd device CA");
    assert!(cert.basic_constraints().unwrap().unwrap().value.ca);
    let usage = cert.key_usage().unwrap().unwrap().value;
    assert!(usage.key_cert_sign() && usage.crl_sign() && !usage.digital_signature());
    let years = (cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp())
        / (365 * 86_400);
    assert_eq!(years, 10);
}

#[cfg(unix)]
#[test]
fn a_key_other_users_can_read_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    new_ca(dir.path());
    let key = dir.path().join("ca.key");
    chmod(&key, 0o644);
    let err = CertificateAuthority::load_or_create(dir.path(), &CaOptions::default()).unwrap_err();
    assert!(matches!(err, CaError::KeyNotPrivate { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("chmod 600") && text.contains(&key.display().to_string()), "{text}");
    chmod(&key, 0o600);
    new_ca(dir.path());
}

#[test]
fn broken_or_mismatched_files_are_refused_naming_the_file() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    new_ca(a.path());
    new_ca(b.path());
    let (cert, key) = (a.path().join("ca.pem"), a.path().join("ca.key"));
    // Another CA's key.
    let err = CertificateAuthority::from_files(&cert, &b.path().join("ca.key")).unwrap_err();
    assert!(matches!(err, CaError::KeyMismatch { .. }), "{err:?}");
    assert!(err.to_string().contains(&cert.display().to_string()), "{err}");
    // A certificate that is not PEM.
    std::fs::write(b.path().join("ca.pem"), "garbage").unwrap();
    let err = CertificateAuthority::from_files(&b.path().join("ca.pem"), &b.path().join("ca.key"))
        .unwrap_err();
    assert!(err.to_string().starts_with(&b.path().join("ca.pem").display().to_string()), "{err}");
    // A key that is not PEM.
    let garbage = b.path().join("garbage.key");
    std::fs::write(&garbage, "garbage").unwrap();
    #[cfg(unix)]
    chmod(&garbage, 0o600);
    let err = CertificateAuthority::from_files(&cert, &garbage).unwrap_err();
    assert!(err.to_string().starts_with(&garbage.display().to_string()), "{err}");
    // One file without the other is never silently replaced.
    std::fs::remove_file(&key).unwrap();
    let err = CertificateAuthority::load_or_create(a.path(), &CaOptions::default()).unwrap_err();
    assert!(matches!(err, CaError::Incomplete { .. }), "{err:?}");
    assert!(cert.exists() && !key.exists());
}

#[test]
fn an_external_ca_loads_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let created = new_ca(dir.path());
    let external =
        CertificateAuthority::from_files(&dir.path().join("ca.pem"), &dir.path().join("ca.key"))
            .unwrap();
    let issued = external.issue_for_csr(&greedy_csr(), &device("dev-1"), DAY).unwrap();
    verify_client_cert(&created, &issued);
}

#[test]
fn subject_and_names_come_from_herd_never_from_the_csr() {
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca(dir.path());
    let id = device("plant-3:sensor_42");
    let issued = ca.issue_for_csr(&greedy_csr(), &id, DAY).unwrap();
    verify_client_cert(&ca, &issued);

    let der = parse_pem(&issued.pem);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert_eq!(cert.subject().to_string(), "CN=plant-3:sensor_42");
    let ca_der = parse_pem(ca.ca_pem());
    let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
    assert_eq!(cert.issuer(), ca_cert.subject());
    cert.verify_signature(Some(ca_cert.public_key())).unwrap();
    let sans = &cert.subject_alternative_name().unwrap().unwrap().value.general_names;
    assert_eq!(sans, &[GeneralName::URI("urn:herd:device:plant-3:sensor_42")]);
    assert!(!cert.is_ca());
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth && !eku.any && eku.other.is_empty());
    let usage = cert.key_usage().unwrap().unwrap().value;
    assert!(usage.digital_signature() && !usage.key_cert_sign());
    assert_eq!(hex::encode(cert.raw_serial()), issued.serial_hex);
    assert_eq!(issued.fingerprint_sha256.len(), 64);
}

#[test]
fn serials_differ_and_the_lifetime_is_respected() {
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca(dir.path());
    let csr = greedy_csr();
    let one = ca.issue_for_csr(&csr, &device("dev-1"), 30 * DAY).unwrap();
    let two = ca.issue_for_csr(&csr, &device("dev-1"), 30 * DAY).unwrap();
    assert_ne!(one.serial_hex, two.serial_hex);
    assert_ne!(one.fingerprint_sha256, two.fingerprint_sha256);

    let now = domain::Timestamp::now().millis();
    let skew = 5 * 60 * 1000;
    let lifetime = 30 * 86_400 * 1000;
    assert_eq!(one.not_after.millis() - one.not_before.millis(), lifetime + skew);
    assert!((now - skew - 2000..=now - skew).contains(&one.not_before.millis()), "{one:?}");
    let der = parse_pem(&one.pem);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert_eq!(cert.validity().not_before.timestamp() * 1000, one.not_before.millis());
    assert_eq!(cert.validity().not_after.timestamp() * 1000, one.not_after.millis());

    for bad in [Duration::ZERO, 20 * 365 * DAY] {
        let err = ca.issue_for_csr(&csr, &device("dev-1"), bad).unwrap_err();
        assert!(matches!(err, CaError::InvalidLifetime(_)), "{err:?}");
    }
}

#[test]
fn broken_requests_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca(dir.path());
    let check = |csr: &str, expected: &str| {
        let err = ca.issue_for_csr(csr, &device("dev-1"), DAY).unwrap_err();
        let CaError::InvalidCsr(reason) = &err else { panic!("{err:?}") };
        assert!(reason.contains(expected), "{reason}");
    };
    check("hello", "not PEM");
    check(ca.ca_pem(), "expected a CERTIFICATE REQUEST");
    check(
        &pem("CERTIFICATE REQUEST", b"\x30\x03\x02\x01\x01"),
        "not a certificate signing request",
    );

    // One byte of the signed part changed: the signature no longer verifies.
    let csr = greedy_csr();
    let mut der = rustls::pki_types::CertificateSigningRequestDer::from_pem_slice(csr.as_bytes())
        .unwrap()
        .as_ref()
        .to_vec();
    let at = der.windows(12).position(|w| w == b"other-device").unwrap();
    der[at] = b'b';
    check(&pem("CERTIFICATE REQUEST", &der), "signature does not verify");
}

/// PEM-encodes `der` (the test needs to build broken requests; the server never writes PEM itself).
fn pem(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let lines: Vec<&str> =
        b64.as_bytes().chunks(64).map(|l| std::str::from_utf8(l).unwrap()).collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}
