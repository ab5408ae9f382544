//! `herd-agent` the binary against the real server in-process: `--once` reports facts and a
//! heartbeat that `GET /api/v1/devices/{id}` shows with the device's presence; the daemon sends
//! heartbeats until SIGTERM and stops cleanly; bad configurations and refusals exit with their
//! documented codes. Zero-touch: registration with a derived key, a claim code, or a CSR then
//! mutual TLS, or the maker's certificate over MQTT (X.509), and the refusals (used claim code,
//! disabled or expired group, wrong proof, rate limit, a maker's certificate of another device).
#![expect(clippy::unwrap_used, reason = "test code: an unexpected error fails the test")]

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use test_support::TestServer;

const WAIT: Duration = Duration::from_secs(30);

/// Writes a credential file (mode `mode`) and a configuration file; returns the latter's path.
fn write_config(
    dir: &Path,
    server_url: &str,
    id: &str,
    token: &str,
    mode: u32,
    extra: &str,
) -> PathBuf {
    let credential = dir.join("credential");
    std::fs::write(&credential, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&credential, std::fs::Permissions::from_mode(mode)).unwrap();
    let config = dir.join("agent.toml");
    let text = format!(
        "server = {server_url:?}\ndevice_id = {id:?}\ncredential_file = {:?}\ndata_dir = {:?}\n{extra}",
        credential.display().to_string(),
        dir.join("data").display().to_string(),
    );
    std::fs::write(&config, text).unwrap();
    config
}

/// Runs `herd-agent` with `args` to completion, off the test's runtime threads.
async fn run(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_herd-agent"))
            .args(&args)
            .env("HERD_AGENT_LOG", "debug")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

async fn once_reports(server: &TestServer, url: &str, protocol: &str) {
    let token = server.active_device("gw-1").await;
    let dir = tempfile::tempdir().unwrap();
    let config =
        write_config(dir.path(), url, "gw-1", &token, 0o600, &format!("protocol = {protocol:?}\n"));
    let out = run(vec!["--config".into(), config.display().to_string(), "--once".into()]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let device = server
        .device_until("gw-1", |d| {
            d["agent"]["last_heartbeat_at"].is_string() && d["agent"]["facts"].is_object()
        })
        .await;
    let agent = &device["agent"];
    assert_eq!(agent["facts"]["agent_version"], env!("CARGO_PKG_VERSION"));
    assert!(agent["facts"]["kernel"].is_string(), "{agent:#}");
    assert!(agent["facts"]["boot_id"].is_string(), "{agent:#}");
    assert!(agent["health"]["memory_total_bytes"].as_u64().unwrap() > 0, "{agent:#}");
    assert!(agent["health"]["disk_total_bytes"].as_u64().unwrap() > 0, "{agent:#}");
    assert!(agent["health"]["ts"].is_string(), "{agent:#}");
    assert_eq!(agent["heartbeats"], 1);
    // Presence: the device was connected and left cleanly.
    let device = server.device_until("gw-1", |d| d["connectivity"]["connected"] == false).await;
    let connectivity = &device["connectivity"];
    assert!(connectivity["connected_at"].is_string(), "{connectivity:#}");
    assert_eq!(connectivity["last_disconnect_reason"], "clean");
    assert_eq!(connectivity["protocol"], if protocol == "5" { "5" } else { "3.1.1" });
}

#[tokio::test]
async fn once_over_tcp_v5() {
    let server = TestServer::start().await;
    let url = format!("mqtt://{}", server.mqtt_addr);
    once_reports(&server, &url, "5").await;
}

#[tokio::test]
async fn once_over_websocket_v311() {
    let server = TestServer::start().await;
    let url = format!("ws://{}/mqtt", server.addr);
    once_reports(&server, &url, "3.1.1").await;
}

#[tokio::test]
async fn the_daemon_sends_heartbeats_until_sigterm() {
    let server = TestServer::start().await;
    let token = server.active_device("gw-2").await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("mqtt://{}", server.mqtt_addr);
    let config =
        write_config(dir.path(), &url, "gw-2", &token, 0o600, "heartbeat_interval_secs = 1\n");
    let child = spawn_daemon(&config);

    let device = server
        .device_until("gw-2", |d| {
            d["agent"]["heartbeats"].as_u64().unwrap_or(0) >= 2
                && d["connectivity"]["connected"] == true
        })
        .await;
    assert!(device["agent"]["facts"]["hostname"].is_string(), "{device:#}");

    let stderr = stop_daemon(child).await;
    assert!(stderr.contains("shutting down"), "{stderr}");
    let device = server.device_until("gw-2", |d| d["connectivity"]["connected"] == false).await;
    assert_eq!(device["connectivity"]["last_disconnect_reason"], "clean");
}

#[tokio::test]
async fn refusals_and_bad_configurations_exit_with_their_codes() {
    let server = TestServer::start().await;
    let token = server.active_device("gw-3").await;
    let url = format!("mqtt://{}", server.mqtt_addr);

    // A credential file others may read: 2, and the message says what to do.
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &url, "gw-3", &token, 0o644, "");
    let out = run(vec!["--config".into(), config.display().to_string(), "--once".into()]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("chmod 600"), "{stderr}");

    // An unknown key, a bad URL, a missing file: 2.
    for extra in ["colour = \"blue\"\n"] {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), &url, "gw-3", &token, 0o600, extra);
        let out = run(vec!["--config".into(), config.display().to_string(), "--once".into()]).await;
        assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "http://nowhere", "gw-3", &token, 0o600, "");
    let out = run(vec!["--config".into(), config.display().to_string(), "--once".into()]).await;
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let out = run(vec!["--config".into(), "/nonexistent/agent.toml".into(), "--once".into()]).await;
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));

    // A wrong credential: 3.
    let dir = tempfile::tempdir().unwrap();
    let wrong = format!("hdc_{}", "0".repeat(64));
    let config = write_config(dir.path(), &url, "gw-3", &wrong, 0o600, "");
    let out = run(vec!["--config".into(), config.display().to_string(), "--once".into()]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("refused"), "{stderr}");

    // Nothing listening: --once gives up after its timeout with 1.
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "mqtt://127.0.0.1:1", "gw-3", &token, 0o600, "");
    let out = run(vec![
        "--config".into(),
        config.display().to_string(),
        "--once".into(),
        "--timeout-secs".into(),
        "1".into(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Starts the daemon on `config`; its stderr is kept for the end.
fn spawn_daemon(config: &Path) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_herd-agent"))
        .args(["--config", config.to_str().unwrap()])
        .env("HERD_AGENT_LOG", "debug")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Stops the daemon with SIGTERM; returns its stderr after checking it exited 0.
async fn stop_daemon(mut child: std::process::Child) -> String {
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let out = tokio::task::spawn_blocking(move || {
        let status = child.wait().unwrap();
        let mut stderr = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        (status, stderr)
    });
    let (status, stderr) = tokio::time::timeout(WAIT, out).await.unwrap().unwrap();
    assert!(status.success(), "{stderr}");
    stderr
}

/// Polls `GET path` until `condition` holds.
async fn until(
    server: &TestServer,
    path: &str,
    condition: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, body) = server.get(path).await;
        if condition(&body) {
            return body;
        }
        assert!(tokio::time::Instant::now() < deadline, "{path} never satisfied: {body:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the device has sent `more` heartbeats after `after` and is connected.
async fn heartbeats_after(server: &TestServer, id: &str, after: u64, more: u64) {
    server
        .device_until(id, |d| {
            d["agent"]["heartbeats"].as_u64().unwrap_or(0) >= after + more
                && d["connectivity"]["connected"] == true
        })
        .await;
}

#[tokio::test]
async fn the_daemon_renews_its_certificate_before_it_ends() {
    let certs = test_support::TestCerts::new();
    let tls = certs.config();
    let server = TestServer::start_with(|c| {
        c.mqtt.tls = Some(tls);
        // One day: within renew_before_days = 1 from the start.
        c.identity.certificate_lifetime = Duration::from_secs(86_400);
    })
    .await;
    server.active_device("gw-5").await;
    let first = device_agent::identity::CertificateRequest::generate("gw-5").unwrap();
    let (status, issued) = server
        .post("/api/v1/devices/gw-5/certificates", &serde_json::json!({ "csr": first.csr_pem }))
        .await;
    assert_eq!(status, 201, "{issued}");
    let first_pem = issued["certificate"].as_str().unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = (dir.path().join("device.pem"), dir.path().join("device.key"));
    std::fs::write(&cert_file, &first_pem).unwrap();
    std::fs::write(&key_file, &first.key_pem).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = dir.path().join("agent.toml");
    let port = server.mqtts_addr.unwrap().port();
    std::fs::write(
        &config,
        format!(
            "server = \"mqtts://localhost:{port}\"\ndevice_id = \"gw-5\"\ndata_dir = {:?}\n\
             ca_file = {:?}\nclient_cert_file = {:?}\nclient_key_file = {:?}\n\
             heartbeat_interval_secs = 1\nrenew_before_days = 1\n",
            dir.path().join("data").display().to_string(),
            certs.path("ca.pem").display().to_string(),
            cert_file.display().to_string(),
            key_file.display().to_string(),
        ),
    )
    .unwrap();
    let child = spawn_daemon(&config);

    // At its first check the certificate is due: a second one is issued and written.
    until(&server, "/api/v1/devices/gw-5/certificates", |b| {
        b["items"].as_array().is_some_and(|i| i.len() == 2)
    })
    .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while std::fs::read_to_string(&cert_file).unwrap() == first_pem {
        assert!(tokio::time::Instant::now() < deadline, "the certificate file was not replaced");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // The operator retires the first certificate: the agent comes back with the new one.
    let serial = issued["serial"].as_str().unwrap();
    let (status, body) =
        server.delete(&format!("/api/v1/devices/gw-5/certificates/{serial}")).await;
    assert_eq!(status, 200, "{body}");
    let (_, device) = server.get("/api/v1/devices/gw-5").await;
    let beats = device["agent"]["heartbeats"].as_u64().unwrap_or(0);
    heartbeats_after(&server, "gw-5", beats, 2).await;
    let stderr = stop_daemon(child).await;
    assert!(stderr.contains("renewing it"), "{stderr}");
}

#[tokio::test]
async fn the_daemon_renews_its_credential_when_herd_asks() {
    let server = TestServer::start().await;
    let token = server.active_device("gw-6").await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("mqtt://{}", server.mqtt_addr);
    let config =
        write_config(dir.path(), &url, "gw-6", &token, 0o600, "heartbeat_interval_secs = 1\n");
    let child = spawn_daemon(&config);
    heartbeats_after(&server, "gw-6", 0, 1).await;

    let (status, body) = server
        .post(
            "/api/v1/devices/gw-6/rotate-credentials",
            &serde_json::json!({ "credential": "credential" }),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let list = until(&server, "/api/v1/devices/gw-6/credentials", |b| {
        b["items"].as_array().is_some_and(|i| i.len() == 2)
    })
    .await;
    let credential_file = dir.path().join("credential");
    let deadline = tokio::time::Instant::now() + WAIT;
    while std::fs::read_to_string(&credential_file).unwrap().trim() == token {
        assert!(tokio::time::Instant::now() < deadline, "the credential file was not replaced");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mode = std::fs::metadata(&credential_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // Newest first: the old credential is the last; once revoked, the agent uses the new one.
    let old = list["items"][1]["id"].as_str().unwrap();
    let (status, body) = server.delete(&format!("/api/v1/devices/gw-6/credentials/{old}")).await;
    assert_eq!(status, 200, "{body}");
    let (_, device) = server.get("/api/v1/devices/gw-6").await;
    let beats = device["agent"]["heartbeats"].as_u64().unwrap_or(0);
    heartbeats_after(&server, "gw-6", beats, 2).await;
    let stderr = stop_daemon(child).await;
    assert!(stderr.contains("renewed on Herd's request"), "{stderr}");
}

/// A zero-touch configuration: no device id and no credential yet, only the `[provisioning]`
/// section with a derived key file (mode 0600) holding `key`.
fn write_zero_touch_config(
    dir: &Path,
    server: &TestServer,
    registration_id: &str,
    key: &str,
) -> PathBuf {
    let key_file = dir.join("derived.key");
    std::fs::write(&key_file, format!("{key}\n")).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = dir.join("agent.toml");
    let text = format!(
        "server = \"mqtt://{}\"\ncredential_file = {:?}\ndata_dir = {:?}\n\n[provisioning]\n\
         url = {:?}\nenrollment_group = \"factory-z\"\nregistration_id = {registration_id:?}\n\
         derived_key_file = {:?}\n",
        server.mqtt_addr,
        dir.join("credential").display().to_string(),
        dir.join("data").display().to_string(),
        server.base_url,
        key_file.display().to_string(),
    );
    std::fs::write(&config, text).unwrap();
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_touch_registers_once_then_reuses_the_credential() {
    let server = TestServer::start().await;
    let group = serde_json::json!({"name": "factory-z", "attestation": "symmetric_key",
                                   "device_id_template": "zt-{registration_id}"});
    let (status, body) = server.post("/api/v1/enrollment-groups", &group).await;
    assert_eq!(status, 201, "{body}");
    let (status, key) = server
        .post(
            "/api/v1/enrollment-groups/factory-z/derive-key",
            &serde_json::json!({"device_id": "zt-SN-7"}),
        )
        .await;
    assert_eq!(status, 200, "{key}");
    let key = key["derived_key"].as_str().unwrap().to_owned();

    let dir = tempfile::tempdir().unwrap();
    let config = write_zero_touch_config(dir.path(), &server, "SN-7", &key);
    let args = vec!["--config".to_owned(), config.display().to_string(), "--once".to_owned()];
    let out = run(args.clone()).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("hdc_"), "the secret is never logged: {stderr}");
    let device = server.device_until("zt-SN-7", |d| d["agent"]["facts"].is_object()).await;
    assert_eq!(device["state"], "active", "{device:#}");
    let credential = dir.path().join("credential");
    let mode = std::fs::metadata(&credential).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(std::fs::read_to_string(&credential).unwrap().starts_with("hdc_"));
    assert_eq!(std::fs::read_to_string(dir.path().join("data/device_id")).unwrap(), "zt-SN-7");

    // A restart logs in with the stored credential: no second registration.
    let out = run(args).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("registering"));
    // QoS 1 is at least once: a heartbeat the journal sends again counts again.
    server.device_until("zt-SN-7", |d| d["agent"]["heartbeats"].as_u64() >= Some(2)).await;
    let (_, group) = server.get("/api/v1/enrollment-groups/factory-z").await;
    assert_eq!(group["registrations"], 1, "{group}");
    let (_, audit) = server.get("/api/v1/audit?limit=1000").await;
    let registrations = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "device.register")
        .count();
    assert_eq!(registrations, 1, "{audit:#}");

    // A wrong key is a refusal: exit code 3, nothing written.
    let dir = tempfile::tempdir().unwrap();
    let wrong = "q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=";
    let config = write_zero_touch_config(dir.path(), &server, "SN-8", wrong);
    let out = run(vec!["--config".into(), config.display().to_string(), "--once".into()]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("invalid_proof"), "{stderr}");
    assert!(!dir.path().join("credential").exists());

    // A derived key file others may read: a bad configuration, 2.
    std::fs::set_permissions(
        dir.path().join("derived.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let out = run(vec!["--config".into(), config.display().to_string(), "--once".into()]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("chmod 600"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_touch_with_the_makers_certificate_over_mqtt() {
    let certs = test_support::TestCerts::new();
    let tls = certs.config();
    let server = TestServer::start_with(|c| {
        c.mqtt.tls = Some(tls);
        c.identity.trust_refresh = Duration::from_millis(50);
    })
    .await;
    // The maker's CA and the certificate it gave the device, whose common name is its serial.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "Maker CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, "SN-X1");
    let factory_cert = params.signed_by(&key, &issuer).unwrap();
    let (status, body) = server
        .post(
            "/api/v1/enrollment-groups",
            &serde_json::json!({"name": "maker-x", "attestation": "x509", "ca_certificate": ca.pem()}),
        )
        .await;
    assert_eq!(status, 201, "{body}");

    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    std::fs::write(path("factory.pem"), factory_cert.pem()).unwrap();
    std::fs::write(path("factory.key"), key.serialize_pem()).unwrap();
    std::fs::set_permissions(path("factory.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let port = server.mqtts_addr.unwrap().port();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "server = \"mqtts://localhost:{port}\"\ncredential_file = {:?}\ndata_dir = {:?}\n\
             ca_file = {:?}\nclient_cert_file = {:?}\nclient_key_file = {:?}\n\n[provisioning]\n\
             enrollment_group = \"maker-x\"\nregistration_id = \"SN-X1\"\nfactory_cert_file = {:?}\n\
             factory_key_file = {:?}\ncsr = true\n",
            path("credential"),
            path("data"),
            certs.path("ca.pem").display().to_string(),
            path("device.pem"),
            path("device.key"),
            path("factory.pem"),
            path("factory.key"),
        ),
    )
    .unwrap();
    // --once: registers over MQTT with the maker's certificate, then logs in with Herd's and
    // reports; a TLS listener that does not trust the maker's CA yet is retried.
    let out = run(vec!["--config".into(), config.display().to_string(), "--once".into()]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let device = server.device_until("SN-X1", |d| d["agent"]["facts"].is_object()).await;
    assert_eq!(device["state"], "active", "{device:#}");
    let (_, list) = server.get("/api/v1/devices/SN-X1/certificates").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "{list}");
    let issued = std::fs::read_to_string(path("device.pem")).unwrap();
    assert_eq!(issued, list["items"][0]["certificate"].as_str().unwrap());
    let mode = std::fs::metadata(path("device.key")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // Another device's maker certificate cannot register as SN-X1: the name is the proof's.
    let dir2 = tempfile::tempdir().unwrap();
    let path2 = |name: &str| dir2.path().join(name).display().to_string();
    let key2 = rcgen::KeyPair::generate().unwrap();
    let mut params2 = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params2.distinguished_name.push(rcgen::DnType::CommonName, "SN-X2");
    std::fs::write(path2("factory.pem"), params2.signed_by(&key2, &issuer).unwrap().pem()).unwrap();
    std::fs::write(path2("factory.key"), key2.serialize_pem()).unwrap();
    std::fs::set_permissions(path2("factory.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let config2 = dir2.path().join("agent.toml");
    std::fs::write(
        &config2,
        format!(
            "server = \"mqtts://localhost:{port}\"\ncredential_file = {:?}\ndata_dir = {:?}\n\
             ca_file = {:?}\n\n[provisioning]\nenrollment_group = \"maker-x\"\n\
             registration_id = \"SN-X9\"\nfactory_cert_file = {:?}\nfactory_key_file = {:?}\n",
            path2("credential"),
            path2("data"),
            certs.path("ca.pem").display().to_string(),
            path2("factory.pem"),
            path2("factory.key"),
        ),
    )
    .unwrap();
    let out = run(vec!["--config".into(), config2.display().to_string(), "--once".into()]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("invalid_proof"), "{stderr}");
}

/// Creates enrollment group `group` (a JSON body) through the REST API.
async fn create_group(server: &TestServer, group: &serde_json::Value) {
    let (status, body) = server.post("/api/v1/enrollment-groups", group).await;
    assert_eq!(status, 201, "{body}");
}

/// The derived key (base64) of `device_id` in symmetric-key group `group`.
async fn derived_key(server: &TestServer, group: &str, device_id: &str) -> String {
    let (status, key) = server
        .post(
            &format!("/api/v1/enrollment-groups/{group}/derive-key"),
            &serde_json::json!({ "device_id": device_id }),
        )
        .await;
    assert_eq!(status, 200, "{key}");
    key["derived_key"].as_str().unwrap().to_owned()
}

/// Who a zero-touch device is and how it proves it belongs to its enrollment group.
struct Enrollment<'a> {
    group: &'a str,
    registration_id: &'a str,
    /// The `[provisioning]` key naming the secret's file: `derived_key_file` or `claim_code_file`.
    proof_key: &'a str,
    secret: &'a str,
}

/// A zero-touch configuration for `server_url` registering as `e` says (its secret's file
/// written with mode 0600); `top` goes before the `[provisioning]` section, `provisioning` into
/// it.
fn write_enrollment_config(
    dir: &Path,
    server: &TestServer,
    server_url: &str,
    e: &Enrollment<'_>,
    top: &str,
    provisioning: &str,
) -> PathBuf {
    let secret_file = dir.join("proof.secret");
    std::fs::write(&secret_file, format!("{}\n", e.secret)).unwrap();
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = dir.join("agent.toml");
    let text = format!(
        "server = {server_url:?}\ncredential_file = {:?}\ndata_dir = {:?}\n{top}\n\
         [provisioning]\nurl = {:?}\nenrollment_group = {:?}\nregistration_id = {:?}\n\
         {} = {:?}\n{provisioning}",
        dir.join("credential").display().to_string(),
        dir.join("data").display().to_string(),
        server.base_url,
        e.group,
        e.registration_id,
        e.proof_key,
        secret_file.display().to_string(),
    );
    std::fs::write(&config, text).unwrap();
    config
}

/// Runs `herd-agent --once` on `config`; returns its exit code and stderr.
async fn run_once(config: &Path) -> (Option<i32>, String) {
    let out = run(vec!["--config".into(), config.display().to_string(), "--once".into()]).await;
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The `enrollment.register.refused` records of `registration_id`: their `after` summaries.
async fn refusals(server: &TestServer, registration_id: &str) -> Vec<serde_json::Value> {
    let (status, audit) = server.get("/api/v1/audit?limit=1000").await;
    assert_eq!(status, 200, "{audit}");
    let resource = format!("registration/{registration_id}");
    audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "enrollment.register.refused" && r["resource"] == resource)
        .map(|r| r["after"].clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_touch_with_a_claim_code_enrolls_one_device() {
    let server = TestServer::start().await;
    create_group(
        &server,
        &serde_json::json!({"name": "codes", "attestation": "claim_code",
                            "device_id_template": "cc-{registration_id}"}),
    )
    .await;
    let (status, created) = server
        .post(
            "/api/v1/enrollment-groups/codes/claim-codes",
            &serde_json::json!({"count": 1, "max_uses": 1}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let code = created["items"][0]["code"].as_str().unwrap().to_owned();
    let first = Enrollment {
        group: "codes",
        registration_id: "CC-1",
        proof_key: "claim_code_file",
        secret: &code,
    };
    let url = format!("mqtt://{}", server.mqtt_addr);

    let dir = tempfile::tempdir().unwrap();
    let config = write_enrollment_config(dir.path(), &server, &url, &first, "", "");
    let (code_1, stderr) = run_once(&config).await;
    assert_eq!(code_1, Some(0), "{stderr}");
    assert!(!stderr.contains("hdc_"), "the secret is never logged: {stderr}");
    assert!(!stderr.contains(&code), "nor the claim code: {stderr}");
    let device = server.device_until("cc-CC-1", |d| d["agent"]["facts"].is_object()).await;
    assert_eq!(device["state"], "active", "{device:#}");
    let mode = std::fs::metadata(dir.path().join("credential")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    // Another device with the same (used) code is refused: 3, and nothing is written.
    let other = tempfile::tempdir().unwrap();
    let config = write_enrollment_config(
        other.path(),
        &server,
        &url,
        &Enrollment { registration_id: "CC-2", ..first },
        "",
        "",
    );
    let (code_2, stderr) = run_once(&config).await;
    assert_eq!(code_2, Some(3), "{stderr}");
    assert!(stderr.contains("claim_code_exhausted"), "{stderr}");
    assert!(!other.path().join("credential").exists());
    let (status, _) = server.get("/api/v1/devices/cc-CC-2").await;
    assert_eq!(status, 404);
    let (_, group) = server.get("/api/v1/enrollment-groups/codes").await;
    assert_eq!(group["registrations"], 1, "{group}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_touch_is_refused_by_a_disabled_or_expired_group() {
    use time::format_description::well_known::Rfc3339;

    let server = TestServer::start().await;
    create_group(
        &server,
        &serde_json::json!({"name": "closed", "attestation": "symmetric_key", "enabled": false}),
    )
    .await;
    let key = derived_key(&server, "closed", "SN-D").await;
    let e = Enrollment {
        group: "closed",
        registration_id: "SN-D",
        proof_key: "derived_key_file",
        secret: &key,
    };
    let url = format!("mqtt://{}", server.mqtt_addr);
    let dir = tempfile::tempdir().unwrap();
    let config = write_enrollment_config(dir.path(), &server, &url, &e, "", "");

    let (code, stderr) = run_once(&config).await;
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains("enrollment_disabled"), "{stderr}");
    assert!(!dir.path().join("credential").exists());

    // Enabled, but only until two seconds from now (a past expiry is refused): once that has
    // passed, the group is expired.
    let expires_at = time::OffsetDateTime::now_utc() + Duration::from_secs(2);
    let patch = serde_json::json!({"enabled": true,
                                   "expires_at": expires_at.format(&Rfc3339).unwrap()});
    let (status, body) = server.patch("/api/v1/enrollment-groups/closed", &patch).await;
    assert_eq!(status, 200, "{body}");
    let deadline = tokio::time::Instant::now() + WAIT;
    while time::OffsetDateTime::now_utc() <= expires_at {
        assert!(tokio::time::Instant::now() < deadline, "the expiry never passed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, stderr) = run_once(&config).await;
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains("enrollment_expired"), "{stderr}");
    assert!(!dir.path().join("credential").exists());

    let reasons: Vec<_> =
        refusals(&server, "SN-D").await.iter().map(|a| a["reason"].clone()).collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    for reason in ["enrollment_disabled", "enrollment_expired"] {
        assert!(reasons.contains(&serde_json::json!(reason)), "{reasons:?}");
    }
    let (status, _) = server.get("/api/v1/devices/SN-D").await;
    assert_eq!(status, 404);
}

/// The binary is refused once (`invalid_proof`, audited); the next wrong proof and the attempt
/// after it go through the SDK, since the binary waits out the 429 (`Retry-After`) it gets then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_touch_wrong_proofs_are_audited_then_rate_limited() {
    use device_agent::provisioning::{Proof, RegisterRequest, register_https};

    let server = TestServer::start_with(|c| c.api.provisioning_max_failures_per_minute = 2).await;
    create_group(
        &server,
        &serde_json::json!({"name": "factory-w", "attestation": "symmetric_key"}),
    )
    .await;
    let right = derived_key(&server, "factory-w", "SN-W").await;
    let wrong = "q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=";
    assert_ne!(right, wrong);
    let e = Enrollment {
        group: "factory-w",
        registration_id: "SN-W",
        proof_key: "derived_key_file",
        secret: wrong,
    };
    let url = format!("mqtt://{}", server.mqtt_addr);
    let dir = tempfile::tempdir().unwrap();
    let config = write_enrollment_config(dir.path(), &server, &url, &e, "", "");

    let (code, stderr) = run_once(&config).await;
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains("invalid_proof"), "{stderr}");
    assert!(!dir.path().join("credential").exists());
    let refused = refusals(&server, "SN-W").await;
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["reason"], "invalid_proof", "{refused:?}");
    assert_eq!(refused[0]["enrollment_group"], "factory-w", "{refused:?}");

    // The second failure reaches the limit (2 a minute): then even the right key waits.
    let tls = device_agent::TlsOptions::default();
    let sign = |key: &str| {
        let key = device_agent::provisioning::decode_derived_key(key).unwrap();
        let proof = Proof::symmetric_key(&key, "SN-W", Duration::from_secs(60)).unwrap();
        RegisterRequest::new("SN-W", "factory-w", proof)
    };
    let second = register_https(&server.base_url, &sign(wrong), &tls).await.unwrap_err();
    assert_eq!(second.code(), Some("invalid_proof"), "{second}");
    assert!(!second.is_retryable(), "{second}");
    let limited = register_https(&server.base_url, &sign(&right), &tls).await.unwrap_err();
    assert_eq!(limited.code(), Some("too_many_attempts"), "{limited}");
    assert!(limited.is_retryable(), "{limited}");
    let after = limited.retry_after().unwrap();
    assert!((1..=60).contains(&after.as_secs()), "{after:?}");
    let (status, _) = server.get("/api/v1/devices/SN-W").await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_touch_with_a_csr_connects_over_mutual_tls() {
    let certs = test_support::TestCerts::new();
    let tls = certs.config();
    let server = TestServer::start_with(|c| c.mqtt.tls = Some(tls)).await;
    create_group(
        &server,
        &serde_json::json!({"name": "factory-c", "attestation": "symmetric_key",
                            "device_id_template": "zc-{registration_id}"}),
    )
    .await;
    let key = derived_key(&server, "factory-c", "zc-SN-C").await;
    let e = Enrollment {
        group: "factory-c",
        registration_id: "SN-C",
        proof_key: "derived_key_file",
        secret: &key,
    };
    let dir = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = (dir.path().join("device.pem"), dir.path().join("device.key"));
    let url = format!("mqtts://localhost:{}", server.mqtts_addr.unwrap().port());
    let top = format!(
        "ca_file = {:?}\nclient_cert_file = {:?}\nclient_key_file = {:?}\n",
        certs.path("ca.pem").display().to_string(),
        cert_file.display().to_string(),
        key_file.display().to_string(),
    );
    let config = write_enrollment_config(dir.path(), &server, &url, &e, &top, "csr = true\n");

    let (code, stderr) = run_once(&config).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("PRIVATE KEY") && !stderr.contains("hdc_"), "{stderr}");
    server.device_until("zc-SN-C", |d| d["agent"]["facts"].is_object()).await;
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(std::fs::read_to_string(&key_file).unwrap().contains("PRIVATE KEY"));
    let pem = std::fs::read_to_string(&cert_file).unwrap();
    let ca = std::fs::read_to_string(dir.path().join("data/device-ca.pem")).unwrap();
    assert!(ca.contains("BEGIN CERTIFICATE"), "{ca}");
    assert_eq!(std::fs::read_to_string(dir.path().join("data/device_id")).unwrap(), "zc-SN-C");

    // Herd lists the certificate it issued, for the device id, which is its subject's CN.
    let (status, list) = server.get("/api/v1/devices/zc-SN-C/certificates").await;
    assert_eq!(status, 200, "{list}");
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{list:#}");
    assert_eq!(items[0]["device_id"], "zc-SN-C");
    assert_eq!(items[0]["certificate"].as_str().unwrap().trim(), pem.trim());
    let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
    let cert = parsed.parse_x509().unwrap();
    let cn = cert.subject().iter_common_name().next().unwrap().as_str().unwrap().to_owned();
    assert_eq!(cn, "zc-SN-C");

    // The certificate is what logs in (over mutual TLS a password is ignored): with a wrong
    // credential in its file the device still connects, and does not register again.
    let wrong = format!("hdc_{}\n", "0".repeat(64));
    std::fs::write(dir.path().join("credential"), wrong).unwrap();
    let (code, stderr) = run_once(&config).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("registering"), "{stderr}");
    server.device_until("zc-SN-C", |d| d["agent"]["heartbeats"].as_u64() >= Some(2)).await;
    let (_, group) = server.get("/api/v1/enrollment-groups/factory-c").await;
    assert_eq!(group["registrations"], 1, "{group}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_answers_commands_with_its_executables() {
    let server = TestServer::start().await;
    let token = server.active_device("gw-cmd").await;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("echo.sh");
    std::fs::write(&script, "printf '{\"got\":%s}' \"$(cat)\"\n").unwrap();
    let url = format!("mqtt://{}", server.mqtt_addr);
    let extra = format!(
        "heartbeat_interval_secs = 1\n\n[commands.echo]\nprogram = \"/bin/sh\"\nargs = [{:?}]\ntimeout_secs = 10\n",
        script.display().to_string()
    );
    let config = write_config(dir.path(), &url, "gw-cmd", &token, 0o600, &extra);
    let child = spawn_daemon(&config);
    heartbeats_after(&server, "gw-cmd", 0, 1).await;

    let send = |body: serde_json::Value| {
        let server = &server;
        async move { server.post("/api/v1/devices/gw-cmd/commands", &body).await }
    };
    let (status, body) =
        send(serde_json::json!({"name": "echo", "payload": {"x": 1}, "wait": true})).await;
    assert_eq!((status, body["state"].as_str()), (200, Some("succeeded")), "{body}");
    assert_eq!(body["result"], serde_json::json!({"got": {"x": 1}}));
    let (_, body) = send(serde_json::json!({"name": "ping", "payload": [7], "wait": true})).await;
    assert_eq!(
        (body["state"].as_str(), &body["result"]),
        (Some("succeeded"), &serde_json::json!([7]))
    );
    let (_, body) = send(serde_json::json!({"name": "reboot", "wait": true})).await;
    assert_eq!(body["state"], "rejected", "{body}");
    assert_eq!(body["error"]["code"], "unknown_command");

    // Queued while the agent is away, carried out when it is back.
    let stderr = stop_daemon(child).await;
    assert!(stderr.contains("command answered"), "{stderr}");
    server.device_until("gw-cmd", |d| d["connectivity"]["connected"] == false).await;
    let (status, body) =
        send(serde_json::json!({"name": "echo", "payload": "later", "ttl_secs": 600})).await;
    assert_eq!((status, body["state"].as_str()), (202, Some("queued")), "{body}");
    let path = format!("/api/v1/devices/gw-cmd/commands/{}", body["id"].as_str().unwrap());
    let child = spawn_daemon(&config);
    let done = until(&server, &path, |c| c["state"] == "succeeded").await;
    assert_eq!(done["result"], serde_json::json!({"got": "later"}));
    stop_daemon(child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_applies_its_desired_state_and_the_twin_converges() {
    let server = TestServer::start().await;
    let token = server.active_device("gw-twin").await;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("hook-input.json");
    let script = dir.path().join("apply.sh");
    std::fs::write(&script, format!("cat > {:?}\n", input.display().to_string())).unwrap();
    // Desired before the agent ever connects: it gets the delta with its twin on connecting.
    let (status, body) = server
        .patch(
            "/api/v1/devices/gw-twin/twin",
            &serde_json::json!({"desired": {
                "agent": {"heartbeat_interval_secs": 1},
                "app": {"mode": "eco"},
            }}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let url = format!("mqtt://{}", server.mqtt_addr);
    let extra = format!(
        "heartbeat_interval_secs = 3600\n\n[desired_hook]\nprogram = \"/bin/sh\"\nargs = [{:?}]\n",
        script.display().to_string()
    );
    let config = write_config(dir.path(), &url, "gw-twin", &token, 0o600, &extra);
    let child = spawn_daemon(&config);
    let twin =
        until(&server, "/api/v1/devices/gw-twin/twin", |t| t["status"]["state"] == "in_sync").await;
    assert_eq!(twin["reported"]["document"]["agent"]["heartbeat_interval_secs"], 1, "{twin:#}");
    assert_eq!(twin["reported"]["document"]["app"], serde_json::json!({"mode": "eco"}));
    let got: serde_json::Value = serde_json::from_slice(&std::fs::read(&input).unwrap()).unwrap();
    assert_eq!(got["delta"], serde_json::json!({"app": {"mode": "eco"}}), "{got}");
    // The configured hour between heartbeats became a second.
    heartbeats_after(&server, "gw-twin", 0, 3).await;

    // A value it cannot apply is explained, and the twin stays pending.
    let (status, _) = server
        .patch(
            "/api/v1/devices/gw-twin/twin",
            &serde_json::json!({"desired": {"agent": {"heartbeat_interval_secs": "fast"}}}),
        )
        .await;
    assert_eq!(status, 200);
    let twin = until(&server, "/api/v1/devices/gw-twin/twin", |t| {
        t["reported"]["document"]["agent_errors"]["/agent/heartbeat_interval_secs"].is_string()
    })
    .await;
    assert_ne!(twin["status"]["state"], "in_sync", "{twin:#}");
    let stderr = stop_daemon(child).await;
    assert!(stderr.contains("applying desired agent settings"), "{stderr}");
    let kept: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("data").join("desired-agent.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(kept["heartbeat_interval_secs"], 1);
}
