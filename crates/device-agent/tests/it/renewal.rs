//! A device renewing its certificate and its credential over MQTT while connected
//! (`device_agent::identity`), then logging in with the new one once the operator retires the old
//! one: the connection is closed once, the device reconnects and its session is still there.

use std::num::NonZeroUsize;
use std::path::Path;

use device_agent::identity::{self, Answer, CertificateRequest, CredentialRequest};
use device_agent::{AgentError, Device, DeviceConfig, Protocol, ReasonCode, TlsOptions, Transport};
use serde_json::json;
use test_support::{TestCerts, TestServer};

use crate::{WAIT, config, reading, stop, until};

fn inbox_capacity() -> NonZeroUsize {
    NonZeroUsize::new(16).expect("not zero")
}

/// A device configuration over mutual TLS with the certificate and key in `dir`.
fn mtls_config(server: &TestServer, certs: &TestCerts, dir: &Path) -> DeviceConfig {
    let port = server.mqtts_addr.expect("TLS listener").port();
    let mut config = config(port, "dev-1", "", Protocol::V5);
    config.transport = Transport::Tls(TlsOptions {
        ca_file: Some(certs.path("ca.pem")),
        server_name: Some("localhost".to_owned()),
        client_cert: Some((dir.join("device.pem"), dir.join("device.key"))),
    });
    config.subscriptions = vec![identity::RESPONSE_SUBTOPIC.to_owned()];
    config
}

#[tokio::test]
async fn a_device_renews_its_certificate_without_losing_its_session() {
    let certs = TestCerts::new();
    let tls = certs.config();
    let server = TestServer::start_with(|c| c.mqtt.tls = Some(tls)).await;
    server.active_device("dev-1").await;
    // The first certificate, issued through the REST API.
    let first = CertificateRequest::generate("dev-1").expect("key and CSR");
    let (status, issued) =
        server.post("/api/v1/devices/dev-1/certificates", &json!({ "csr": first.csr_pem })).await;
    assert_eq!(status, 201, "{issued}");
    let dir = tempfile::tempdir().expect("temporary directory");
    std::fs::write(dir.path().join("device.pem"), issued["certificate"].as_str().expect("PEM"))
        .expect("write");
    std::fs::write(dir.path().join("device.key"), &first.key_pem).expect("write");

    let (device, mut inbox, task) =
        Device::spawn_with_inbox(mtls_config(&server, &certs, dir.path()), inbox_capacity())
            .expect("valid config");
    until(&device, |s| s.connected && s.subscribed).await;

    // Renewed while connected: the connection goes on.
    let renewal = CertificateRequest::generate("dev-1").expect("key and CSR");
    let answer = identity::exchange(
        &device,
        &mut inbox,
        CertificateRequest::channel(),
        renewal.payload(),
        &renewal.request_id,
        WAIT,
        |_| {},
    )
    .await
    .expect("an answer");
    let Answer::CertificateIssued { certificate_pem, serial, .. } = answer else {
        panic!("expected a certificate, got {answer:?}");
    };
    assert_ne!(serial, issued["serial"].as_str().expect("serial"));
    device.set_client_certificate(&certificate_pem, &renewal.key_pem).await.expect("usable");
    device.telemetry(&reading(1)).await.expect("running");
    let stats = until(&device, |s| s.acked >= 2).await;
    assert!(stats.connected);
    assert_eq!(stats.reconnects, 0, "renewing does not cut the connection");

    // The operator retires the old certificate: its connection is closed, the device reconnects
    // with the new one, and the server still holds its session.
    let old = issued["serial"].as_str().expect("serial");
    let (status, body) = server.delete(&format!("/api/v1/devices/dev-1/certificates/{old}")).await;
    assert_eq!(status, 200, "{body}");
    let stats = until(&device, |s| s.connected && s.reconnects == 1).await;
    assert_eq!(stats.sessions_resumed, 1, "the session survived the renewal");
    device.telemetry(&reading(2)).await.expect("running");
    until(&device, |s| s.acked >= 3).await;
    stop(&device, task).await;

    // The old certificate no longer logs in.
    let old_dir = tempfile::tempdir().expect("temporary directory");
    std::fs::write(old_dir.path().join("device.pem"), issued["certificate"].as_str().expect("PEM"))
        .expect("write");
    std::fs::write(old_dir.path().join("device.key"), &first.key_pem).expect("write");
    let (_, task) =
        Device::spawn(mtls_config(&server, &certs, old_dir.path())).expect("valid config");
    let ended = tokio::time::timeout(WAIT, task).await.expect("refused in time");
    assert!(matches!(ended, Ok(Err(AgentError::Refused(ReasonCode::NotAuthorized)))), "{ended:?}");
}

#[tokio::test]
async fn a_device_renews_its_credential_without_sending_the_secret() {
    let server = TestServer::start().await;
    let token = server.active_device("dev-1").await;
    let mut config = config(server.mqtt_addr.port(), "dev-1", &token, Protocol::V311);
    config.subscriptions = vec![identity::RESPONSE_SUBTOPIC.to_owned()];
    let (device, mut inbox, task) =
        Device::spawn_with_inbox(config, inbox_capacity()).expect("valid config");
    until(&device, |s| s.connected && s.subscribed).await;

    let renewal = CredentialRequest::generate(None);
    let answer = identity::exchange(
        &device,
        &mut inbox,
        CredentialRequest::channel(),
        renewal.payload(),
        &renewal.request_id,
        WAIT,
        |_| {},
    )
    .await
    .expect("an answer");
    assert!(matches!(answer, Answer::CredentialCreated { .. }), "{answer:?}");
    device.set_password(&renewal.secret).await.expect("running");

    // The operator retires the old credential; the device comes back with the new one.
    let (_, list) = server.get("/api/v1/devices/dev-1/credentials").await;
    let items = list["items"].as_array().expect("credentials");
    assert_eq!(items.len(), 2, "{list}");
    // Newest first: the old one is the last.
    let old = items[1]["id"].as_str().expect("id");
    let (status, body) = server.delete(&format!("/api/v1/devices/dev-1/credentials/{old}")).await;
    assert_eq!(status, 200, "{body}");
    let stats = until(&device, |s| s.connected && s.reconnects == 1).await;
    assert_eq!(stats.sessions_resumed, 1);
    stop(&device, task).await;

    let (_, task) =
        Device::spawn(crate::config(server.mqtt_addr.port(), "dev-1", &token, Protocol::V311))
            .expect("valid config");
    let ended = tokio::time::timeout(WAIT, task).await.expect("refused in time");
    assert!(
        matches!(ended, Ok(Err(AgentError::Refused(ReasonCode::BadUserNameOrPassword)))),
        "{ended:?}"
    );
}
