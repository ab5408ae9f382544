//! Mutual TLS: devices logging in with a certificate Herd's CA issued, on the same TLS port as
//! token devices; certificates checked against the store at CONNECT (revoked ones refused,
//! one device's certificate never passing for another's) and revocation closing live sessions.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::*;

/// A device key and the certificate the server issued for it through the REST API, as PEM files.
struct DeviceCert {
    serial: String,
    cert_file: PathBuf,
    key_file: PathBuf,
    cert_pem: String,
    key_pem: String,
    _dir: tempfile::TempDir,
}

/// Generates a key and a CSR naming `subject` and asks the server to issue a certificate to
/// device `id` from it.
async fn issue_certificate(server: &TestServer, id: &str, subject: &str) -> DeviceCert {
    let key = rcgen::KeyPair::generate().expect("device key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CSR params");
    params.distinguished_name.push(rcgen::DnType::CommonName, subject);
    let csr = params.serialize_request(&key).expect("CSR").pem().expect("CSR PEM");
    let (status, body) =
        server.post(&format!("/api/v1/devices/{id}/certificates"), &json!({ "csr": csr })).await;
    assert_eq!(status, 201, "{body}");
    let dir = tempfile::tempdir().expect("temporary directory");
    let cert_pem = body["certificate"].as_str().expect("certificate PEM").to_owned();
    let key_pem = key.serialize_pem();
    let cert_file = dir.path().join("device.pem");
    let key_file = dir.path().join("device.key");
    std::fs::write(&cert_file, &cert_pem).expect("write the certificate");
    std::fs::write(&key_file, &key_pem).expect("write the key");
    DeviceCert {
        serial: body["serial"].as_str().expect("serial").to_owned(),
        cert_file,
        key_file,
        cert_pem,
        key_pem,
        _dir: dir,
    }
}

/// A TLS connection to `addr` trusting the test CA and presenting `cert`.
async fn mtls_connect(
    certs: &TestCerts,
    addr: SocketAddr,
    cert: &DeviceCert,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, std::io::Error> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certs.ca()).expect("CA certificate");
    let chain = vec![CertificateDer::from_pem_slice(cert.cert_pem.as_bytes()).expect("cert PEM")];
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).expect("key PEM");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client certificate");
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.expect("connect to the TLS listener");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("server name");
    tokio::time::timeout(WAIT, connector.connect(name, tcp)).await.expect("TLS handshake in time")
}

/// Connects over mutual TLS with `cert` as client `id` (the id is also sent as user name, with a
/// password the server ignores); the CONNACK's reason.
async fn mtls_probe(
    certs: &TestCerts,
    addr: SocketAddr,
    cert: &DeviceCert,
    version: ProtocolVersion,
    id: &str,
) -> (Probe, ReasonCode) {
    let tls = mtls_connect(certs, addr, cert).await.expect("TLS handshake");
    let local_addr = tls.get_ref().0.local_addr().expect("local address");
    Probe::connect_over(Transport::Stream(Box::new(tls)), local_addr, version, id, "ignored").await
}

async fn mtls_server() -> (TestCerts, TestServer, SocketAddr) {
    let certs = TestCerts::new();
    let tls = certs.config();
    let server = TestServer::start_with(|c| c.mqtt.tls = Some(tls)).await;
    let mqtts = server.mqtts_addr.expect("TLS listener");
    (certs, server, mqtts)
}

/// The CONNACK code of a refused certificate as each version shows it (v3.1.1 return code 5 is
/// decoded as 0x87).
const CERTIFICATE_REFUSED: ReasonCode = ReasonCode::NotAuthorized;

#[tokio::test]
async fn devices_log_in_with_the_certificate_herd_issued_them() {
    let (certs, server, mqtts) = mtls_server().await;
    server.active_device("dev-a").await;
    let token_b = server.active_device("dev-b").await;
    // The CSR asks for dev-b's name: the certificate names dev-a all the same.
    let cert_a = issue_certificate(&server, "dev-a", "dev-b").await;

    for version in [V5, V311] {
        let (mut probe, code) = mtls_probe(&certs, mqtts, &cert_a, version, "dev-a").await;
        assert_eq!(code, ReasonCode::Success);
        assert_eq!(probe.subscribe(&["devices/dev-a/#"]).await, vec![ReasonCode::Success]);
        probe.publish("devices/dev-a/telemetry", "mtls").await;
        assert_eq!(probe.next_message().await, ("devices/dev-a/telemetry".into(), "mtls".into()));
        // Its own subtree only.
        assert_eq!(probe.subscribe(&["devices/dev-b/#"]).await, vec![refused(version)]);
    }
    // dev-a's certificate does not pass for dev-b, whatever the password.
    let (_, code) = mtls_probe(&certs, mqtts, &cert_a, V5, "dev-b").await;
    assert_eq!(code, CERTIFICATE_REFUSED);
    // Token devices still log in on the same port, without a certificate.
    let mut probe =
        tls_probe(&certs, mqtts, &[&rustls::version::TLS13], V5, "dev-b", &token_b).await;
    assert_eq!(probe.subscribe(&["devices/dev-b/#"]).await, vec![ReasonCode::Success]);

    // A suspended device's certificate is refused (banned) until it is active again.
    set_state(&server, "dev-a", "suspended").await;
    let (_, code) = mtls_probe(&certs, mqtts, &cert_a, V5, "dev-a").await;
    assert_eq!(code, ReasonCode::Banned);
    set_state(&server, "dev-a", "active").await;
    let (_, code) = mtls_probe(&certs, mqtts, &cert_a, V5, "dev-a").await;
    assert_eq!(code, ReasonCode::Success);

    // Revoked: refused, though its chain to the CA is as valid as before.
    let (status, body) =
        server.delete(&format!("/api/v1/devices/dev-a/certificates/{}", cert_a.serial)).await;
    assert_eq!(status, 200, "{body}");
    let (_, code) = mtls_probe(&certs, mqtts, &cert_a, V5, "dev-a").await;
    assert_eq!(code, CERTIFICATE_REFUSED);
}

#[tokio::test]
async fn a_certificate_of_another_ca_fails_the_handshake() {
    let (certs, server, mqtts) = mtls_server().await;
    server.active_device("dev-a").await;
    // Self-signed, with the device's name: not from the device CA.
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(rcgen::DnType::CommonName, "dev-a");
    let forged = params.self_signed(&key).expect("certificate");
    let dir = tempfile::tempdir().expect("temporary directory");
    let cert = DeviceCert::in_memory(forged.pem(), key.serialize_pem(), dir);
    // With TLS 1.3 the client's handshake may finish before the server has judged its
    // certificate; then the CONNECT gets no CONNACK, only the connection's end.
    let refused = match mtls_connect(&certs, mqtts, &cert).await {
        Err(_) => true,
        Ok(mut tls) => {
            let mut connect = Connect::new(V5, ClientId::new("dev-a").expect("client id"), 0);
            connect.username = Some(MqttString::new("dev-a").expect("user name"));
            let mut out = BytesMut::new();
            mqtt_codec::encode(&Packet::Connect(Box::new(connect)), V5, &mut out).expect("encode");
            let _ = tls.write_all(&out).await;
            let _ = tls.flush().await;
            let mut answer = Vec::new();
            let _ = tokio::time::timeout(WAIT, tls.read_to_end(&mut answer))
                .await
                .expect("the server ends the connection");
            answer.first() != Some(&0x20)
        }
    };
    assert!(refused, "a certificate outside the device CA must end the connection");
}

#[tokio::test]
async fn revoking_a_credential_or_certificate_cuts_the_live_session_within_a_second() {
    let (certs, server, mqtts) = mtls_server().await;
    let token = server.active_device("dev-a").await;
    let cert = issue_certificate(&server, "dev-a", "dev-a").await;

    let (mut probe, code) = mtls_probe(&certs, mqtts, &cert, V5, "dev-a").await;
    assert_eq!(code, ReasonCode::Success);
    let revoked = tokio::time::timeout(Duration::from_secs(1), async {
        let (status, body) =
            server.delete(&format!("/api/v1/devices/dev-a/certificates/{}", cert.serial)).await;
        assert_eq!(status, 200, "{body}");
        probe.closed().await
    })
    .await
    .expect("the certificate's session ends within a second of its revocation");
    assert_eq!(revoked, Some(ReasonCode::AdministrativeAction));

    let mut probe = Probe::connected(server.mqtt_addr, V5, "dev-a", &token).await;
    let (_, body) = server.get("/api/v1/devices/dev-a/credentials").await;
    let credential = body["items"][0]["id"].as_str().expect("credential id").to_owned();
    let revoked = tokio::time::timeout(Duration::from_secs(1), async {
        let (status, body) =
            server.delete(&format!("/api/v1/devices/dev-a/credentials/{credential}")).await;
        assert_eq!(status, 200, "{body}");
        probe.closed().await
    })
    .await
    .expect("the credential's session ends within a second of its revocation");
    assert_eq!(revoked, Some(ReasonCode::AdministrativeAction));
    let (_, code) = Probe::connect(server.mqtt_addr, V5, "dev-a", &token).await;
    assert_eq!(code, ReasonCode::BadUserNameOrPassword);
}

/// Arguments of a Mosquitto client logging in over mutual TLS with `cert` as client `id`.
fn mtls_client_args(
    certs: &TestCerts,
    mqtts: SocketAddr,
    cert: &DeviceCert,
    id: &str,
) -> Vec<String> {
    [
        "-h",
        "localhost",
        "-p",
        &mqtts.port().to_string(),
        "--cafile",
        &certs.path("ca.pem").display().to_string(),
        "--cert",
        &cert.cert_file.display().to_string(),
        "--key",
        &cert.key_file.display().to_string(),
        "-V",
        "mqttv311",
        "-i",
        id,
    ]
    .map(str::to_owned)
    .to_vec()
}

#[tokio::test]
async fn mosquitto_clients_log_in_with_a_herd_issued_certificate() {
    if !mosquitto_clients() {
        return;
    }
    let (certs, server, mqtts) = mtls_server().await;
    server.active_device("dev-a").await;
    server.active_device("dev-b").await;
    let cert_a = issue_certificate(&server, "dev-a", "dev-a").await;

    // mosquitto_rr subscribes to its own topic and publishes there: the message comes back.
    let mut args = mtls_client_args(&certs, mqtts, &cert_a, "dev-a");
    args.extend(
        [
            "-t",
            "devices/dev-a/telemetry",
            "-e",
            "devices/dev-a/telemetry",
            "-m",
            "22.5",
            "-W",
            "10",
        ]
        .map(str::to_owned),
    );
    let out = run("mosquitto_rr", &args).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "22.5");
    // QoS 1: mosquitto_pub succeeds only once the PUBACK came back.
    let mut args = mtls_client_args(&certs, mqtts, &cert_a, "dev-a");
    args.extend(["-q", "1", "-t", "devices/dev-a/telemetry", "-m", "1"].map(str::to_owned));
    let out = run("mosquitto_pub", &args).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // dev-a's certificate cannot act as dev-b.
    let mut args = mtls_client_args(&certs, mqtts, &cert_a, "dev-b");
    args.extend(["-q", "1", "-t", "devices/dev-b/telemetry", "-m", "1"].map(str::to_owned));
    let out = run("mosquitto_pub", &args).await;
    assert!(!out.status.success(), "dev-a's certificate must not log in as dev-b");

    // Revoked: refused.
    let (status, body) =
        server.delete(&format!("/api/v1/devices/dev-a/certificates/{}", cert_a.serial)).await;
    assert_eq!(status, 200, "{body}");
    let mut args = mtls_client_args(&certs, mqtts, &cert_a, "dev-a");
    args.extend(["-q", "1", "-t", "devices/dev-a/telemetry", "-m", "1"].map(str::to_owned));
    let out = run("mosquitto_pub", &args).await;
    assert!(!out.status.success(), "a revoked certificate must be refused");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not authorised") || stderr.contains("not authorized"), "{stderr}");
}

/// A CSR for a fresh key naming `subject`; (CSR PEM, key PEM).
fn csr(subject: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("device key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CSR params");
    params.distinguished_name.push(rcgen::DnType::CommonName, subject);
    let csr = params.serialize_request(&key).expect("CSR").pem().expect("CSR PEM");
    (csr, key.serialize_pem())
}

/// The common name of a PEM certificate's subject.
fn subject_cn(pem: &str) -> String {
    let (_, der) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("PEM");
    let cert = der.parse_x509().expect("certificate");
    let cn = cert.subject().iter_common_name().next().expect("a common name");
    cn.as_str().expect("text").to_owned()
}

/// Publishes an identity request and returns Herd's answer.
async fn identity_request(
    probe: &mut Probe,
    kind: &str,
    request: &serde_json::Value,
) -> serde_json::Value {
    // Herd's responder is subscribed: the request is routed and acknowledged.
    let code = probe.publish(&format!("devices/dev-a/identity/{kind}"), &request.to_string()).await;
    assert_eq!(code, ReasonCode::Success);
    let (topic, payload) = probe.next_message().await;
    assert_eq!(topic, "devices/dev-a/identity/response");
    serde_json::from_str(&payload).expect("a JSON answer")
}

#[tokio::test]
async fn devices_renew_their_certificate_and_credential_over_mqtt() {
    let (certs, server, mqtts) = mtls_server().await;
    server.active_device("dev-a").await;
    let old = issue_certificate(&server, "dev-a", "dev-a").await;
    let (mut probe, code) = mtls_probe(&certs, mqtts, &old, V5, "dev-a").await;
    assert_eq!(code, ReasonCode::Success);
    assert_eq!(
        probe.subscribe(&["devices/dev-a/identity/response"]).await,
        vec![ReasonCode::Success]
    );

    // Bad requests are answered, with the request id when there is one.
    let answer = identity_request(&mut probe, "csr", &json!({"request_id": "r3"})).await;
    assert_eq!(
        (answer["request_id"].clone(), answer["code"].clone()),
        (json!("r3"), json!("invalid_request"))
    );
    let answer =
        identity_request(&mut probe, "csr", &json!({"request_id": "r4", "csr": "junk"})).await;
    assert_eq!(answer["code"], "invalid_csr", "{answer}");

    // A new certificate from a CSR that names another device: it names dev-a.
    let (csr_pem, key_pem) = csr("dev-b");
    let answer =
        identity_request(&mut probe, "csr", &json!({"request_id": "r1", "csr": csr_pem})).await;
    assert_eq!(answer["request_id"], "r1", "{answer}");
    assert_eq!(answer["status"], "issued", "{answer}");
    let cert_pem = answer["certificate"].as_str().expect("certificate").to_owned();
    assert_eq!(subject_cn(&cert_pem), "dev-a");
    assert!(answer["ca_certificate"].as_str().is_some_and(|ca| ca.contains("BEGIN CERTIFICATE")));
    // Two usable certificates: a third is refused until an operator revokes one.
    let (csr_pem, _) = csr("dev-a");
    let answer =
        identity_request(&mut probe, "csr", &json!({"request_id": "r2", "csr": csr_pem})).await;
    assert_eq!(answer["code"], "too_many_credentials", "{answer}");

    // A credential whose secret the device made: only its hash travels.
    let secret = format!("hdc_{}", "5e".repeat(32));
    let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(secret.as_bytes()));
    let answer = identity_request(
        &mut probe,
        "credential",
        &json!({"request_id": "c1", "secret_sha256": hash}),
    )
    .await;
    assert_eq!(answer["status"], "created", "{answer}");
    assert!(answer["credential_id"].as_str().is_some_and(|id| id.starts_with("cred_")));
    let mut by_token = Probe::connected(server.mqtt_addr, V311, "dev-a", &secret).await;
    // The first credential (from active_device) and this one: a third is refused.
    let answer = identity_request(
        &mut mtls_probe_subscribed(&certs, mqtts, &old).await,
        "credential",
        &json!({"request_id": "c2", "secret_sha256": "ab".repeat(32)}),
    )
    .await;
    assert_eq!(answer["code"], "too_many_credentials", "{answer}");
    assert_eq!(by_token.closed().await, None, "taken over by the newer connection");

    // The new certificate logs in; once the operator retires the old one, only the new one does.
    let dir = tempfile::tempdir().expect("temporary directory");
    let new = DeviceCert::in_memory(cert_pem, key_pem, dir);
    let (_, code) = mtls_probe(&certs, mqtts, &new, V5, "dev-a").await;
    assert_eq!(code, ReasonCode::Success);
    let (status, body) =
        server.delete(&format!("/api/v1/devices/dev-a/certificates/{}", old.serial)).await;
    assert_eq!(status, 200, "{body}");
    let (_, code) = mtls_probe(&certs, mqtts, &old, V5, "dev-a").await;
    assert_eq!(code, CERTIFICATE_REFUSED);
    let (_, code) = mtls_probe(&certs, mqtts, &new, V5, "dev-a").await;
    assert_eq!(code, ReasonCode::Success);

    // Issued certificates are audited with the device as the actor.
    let (_, audit) = server.get("/api/v1/audit?limit=1000").await;
    let by_device = audit["items"]
        .as_array()
        .expect("records")
        .iter()
        .filter(|r| r["actor"] == "device:dev-a")
        .count();
    assert_eq!(by_device, 2, "{audit}");
}

/// An mTLS connection as dev-a subscribed to its identity answers.
async fn mtls_probe_subscribed(certs: &TestCerts, mqtts: SocketAddr, cert: &DeviceCert) -> Probe {
    let (mut probe, code) = mtls_probe(certs, mqtts, cert, V5, "dev-a").await;
    assert_eq!(code, ReasonCode::Success);
    assert_eq!(
        probe.subscribe(&["devices/dev-a/identity/response"]).await,
        vec![ReasonCode::Success]
    );
    probe
}

/// A server with a TLS listener that re-reads the trusted enrollment CAs every 50 ms.
async fn x509_server() -> (TestCerts, TestServer, SocketAddr) {
    let certs = TestCerts::new();
    let tls = certs.config();
    let server = TestServer::start_with(|c| {
        c.mqtt.tls = Some(tls);
        c.identity.trust_refresh = Duration::from_millis(50);
    })
    .await;
    let mqtts = server.mqtts_addr.expect("TLS listener");
    (certs, server, mqtts)
}

impl DeviceCert {
    /// A certificate and key known by their PEM only (files named in `dir`, not written).
    fn in_memory(cert_pem: String, key_pem: String, dir: tempfile::TempDir) -> Self {
        Self {
            serial: String::new(),
            cert_file: dir.path().join("c.pem"),
            key_file: dir.path().join("k.pem"),
            cert_pem,
            key_pem,
            _dir: dir,
        }
    }
}

/// A factory CA and a device certificate it signed, as PEM: (CA, device certificate, device key).
fn factory_certificate(cn: &str) -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "Factory CA");
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().expect("device key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(rcgen::DnType::CommonName, cn);
    let cert = params.signed_by(&key, &issuer).expect("device certificate");
    (ca.pem(), cert.pem(), key.serialize_pem())
}

/// Whether a TLS client presenting `cert` gets through the handshake and a CONNECT answer.
async fn handshake_passes(certs: &TestCerts, mqtts: SocketAddr, cert: &DeviceCert) -> bool {
    let Ok(mut tls) = mtls_connect(certs, mqtts, cert).await else { return false };
    let mut connect = Connect::new(V5, ClientId::new("sn-1").expect("client id"), 0);
    connect.username = Some(MqttString::new("sn-1").expect("user name"));
    let mut out = BytesMut::new();
    mqtt_codec::encode(&Packet::Connect(Box::new(connect)), V5, &mut out).expect("encode");
    let _ = tls.write_all(&out).await;
    let _ = tls.flush().await;
    let mut answer = vec![0u8; 1];
    matches!(tokio::time::timeout(WAIT, tls.read(&mut answer)).await, Ok(Ok(1)))
        && answer[0] == 0x20
}

#[tokio::test]
async fn the_tls_listener_trusts_the_cas_of_x509_enrollment_groups() {
    let (certs, server, mqtts) = x509_server().await;
    let (ca_pem, cert_pem, key_pem) = factory_certificate("sn-1");
    let dir = tempfile::tempdir().expect("temporary directory");
    let cert = DeviceCert::in_memory(cert_pem, key_pem, dir);
    assert!(!handshake_passes(&certs, mqtts, &cert).await, "an unknown CA is not trusted");

    let (status, body) = server
        .post(
            "/api/v1/enrollment-groups",
            &json!({"name": "factory-x", "attestation": "x509", "ca_certificate": ca_pem}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let deadline = tokio::time::Instant::now() + WAIT;
    while !handshake_passes(&certs, mqtts, &cert).await {
        assert!(tokio::time::Instant::now() < deadline, "the group's CA was never trusted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Trusted for the handshake, yet no login: Herd did not issue this certificate.
    let (_, code) = mtls_probe(&certs, mqtts, &cert, V5, "sn-1").await;
    assert_eq!(code, CERTIFICATE_REFUSED);

    // A disabled group's CA is trusted no more.
    let (status, body) =
        server.patch("/api/v1/enrollment-groups/factory-x", &json!({"enabled": false})).await;
    assert_eq!(status, 200, "{body}");
    let deadline = tokio::time::Instant::now() + WAIT;
    while handshake_passes(&certs, mqtts, &cert).await {
        assert!(tokio::time::Instant::now() < deadline, "the disabled group's CA stayed trusted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Logs in as the bootstrap client `id` (`$provision`) over `io`, subscribed to its answers.
async fn bootstrap_over(io: Transport, local_addr: SocketAddr, id: &str) -> Probe {
    let mut probe = Probe {
        io,
        local_addr,
        buf: BytesMut::new(),
        version: V5,
        next_id: 0,
        pending: Default::default(),
    };
    let mut connect = Connect::new(V5, ClientId::new(id).expect("client id"), 0);
    connect.username = Some(MqttString::new("$provision").expect("user name"));
    probe.send(Packet::Connect(Box::new(connect))).await;
    match probe.recv().await {
        Some(Packet::ConnAck(ack)) => assert_eq!(ack.reason_code, ReasonCode::Success),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    let response = format!("$herd/provision/{id}/response");
    assert_eq!(probe.subscribe(&[&response]).await, vec![ReasonCode::Success]);
    probe
}

/// The bootstrap client `id` over mutual TLS with `cert`.
async fn mtls_bootstrap(
    certs: &TestCerts,
    mqtts: SocketAddr,
    cert: &DeviceCert,
    id: &str,
) -> Probe {
    let tls = mtls_connect(certs, mqtts, cert).await.expect("TLS handshake");
    let local_addr = tls.get_ref().0.local_addr().expect("local address");
    bootstrap_over(Transport::Stream(Box::new(tls)), local_addr, id).await
}

/// Publishes an X.509 registration of bootstrap client `id` through `group`; the JSON answer.
async fn x509_register(
    probe: &mut Probe,
    id: &str,
    group: &str,
    csr: Option<&str>,
) -> serde_json::Value {
    let mut request =
        json!({"request_id": "x1", "enrollment_group": group, "proof": {"type": "x509"}});
    if let Some(csr) = csr {
        request["csr"] = csr.into();
    }
    let code = probe.publish(&format!("$herd/provision/{id}/register"), &request.to_string()).await;
    assert_eq!(code, ReasonCode::Success);
    let (topic, payload) = probe.next_message().await;
    assert_eq!(topic, format!("$herd/provision/{id}/response"));
    serde_json::from_str(&payload).expect("a JSON answer")
}

#[tokio::test]
async fn devices_onboard_with_their_makers_certificate_over_mqtt() {
    let (certs, server, mqtts) = x509_server().await;
    let (ca_pem, cert_pem, key_pem) = factory_certificate("sn-1");
    let dir = tempfile::tempdir().expect("temporary directory");
    let factory = DeviceCert::in_memory(cert_pem, key_pem, dir);
    let (status, body) = server
        .post(
            "/api/v1/enrollment-groups",
            &json!({"name": "factory-x", "attestation": "x509", "ca_certificate": ca_pem,
                    "tags": {"line": "3"}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let deadline = tokio::time::Instant::now() + WAIT;
    while !handshake_passes(&certs, mqtts, &factory).await {
        assert!(tokio::time::Instant::now() < deadline, "the group's CA was never trusted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The maker's certificate names sn-1; registering as sn-2 with it is refused.
    let mut probe = mtls_bootstrap(&certs, mqtts, &factory, "sn-2").await;
    let answer = x509_register(&mut probe, "sn-2", "factory-x", None).await;
    assert_eq!(answer["code"], "invalid_proof", "{answer}");

    // As sn-1, with a CSR naming someone else: registered, and the certificate names sn-1.
    let (csr_pem, key_pem) = csr("somebody-else");
    let mut probe = mtls_bootstrap(&certs, mqtts, &factory, "sn-1").await;
    let answer = x509_register(&mut probe, "sn-1", "factory-x", Some(&csr_pem)).await;
    assert_eq!(answer["status"], "registered", "{answer}");
    assert_eq!(answer["device_id"], "sn-1");
    let certificate = answer["certificate_pem"].as_str().expect("a certificate").to_owned();
    assert_eq!(subject_cn(&certificate), "sn-1");
    let (_, device) = server.get("/api/v1/devices/sn-1").await;
    assert_eq!((&device["state"], &device["tags"]["line"]), (&json!("active"), &json!("3")));

    // The device logs in with the certificate Herd issued, and with the credential.
    let dir = tempfile::tempdir().expect("temporary directory");
    let issued = DeviceCert::in_memory(certificate, key_pem, dir);
    let (_, code) = mtls_probe(&certs, mqtts, &issued, V5, "sn-1").await;
    assert_eq!(code, ReasonCode::Success);
    let secret = answer["credential"]["secret"].as_str().expect("a credential");
    let _ = Probe::connected(server.mqtt_addr, V311, "sn-1", secret).await;

    // Without a certificate at login there is no X.509 proof.
    let tcp = TcpStream::connect(server.mqtt_addr).await.expect("connect");
    let local_addr = tcp.local_addr().expect("local address");
    let mut plain = bootstrap_over(Transport::Stream(Box::new(tcp)), local_addr, "sn-9").await;
    let answer = x509_register(&mut plain, "sn-9", "factory-x", None).await;
    assert_eq!(answer["code"], "invalid_proof", "{answer}");
}
