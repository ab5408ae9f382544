//! The operator CLI against an in-process server: output formats, errors with the server's message,
//! import with counts, `herd audit verify` catching a tampered row, and enrollment groups with a
//! device provisioning itself from a key the CLI derived, then connecting over MQTT.

use std::io::Write as _;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::Value;
use test_support::TestServer;

use crate::{herd, stderr, stdout};

mod job;
mod profiles;
mod twin;

struct Cli<'a> {
    server: &'a TestServer,
}

impl Cli<'_> {
    #[track_caller]
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args, Some(&self.server.admin_token));
        assert!(out.status.success(), "herd {args:?} failed: {}", stderr(&out));
        stdout(&out)
    }

    #[track_caller]
    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["--output", "json"]);
        serde_json::from_str(&self.ok(&a)).expect("json output")
    }

    /// Runs a command expected to fail and returns its stderr.
    #[track_caller]
    fn fails(&self, args: &[&str], token: Option<&str>) -> String {
        let out = self.run(args, token);
        assert_eq!(out.status.code(), Some(1), "herd {args:?} should fail: {}", stdout(&out));
        stderr(&out)
    }

    fn run(&self, args: &[&str], token: Option<&str>) -> std::process::Output {
        let mut env = vec![("HERD_URL", self.server.base_url.as_str())];
        if let Some(t) = token {
            env.push(("HERD_TOKEN", t));
        }
        tokio::task::block_in_place(|| herd(args, &env))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn device_lifecycle_through_the_cli() {
    let server = TestServer::start().await;
    let cli = Cli { server: &server };
    let d = cli.json(&[
        "device",
        "create",
        "pump-1",
        "--name",
        "Pump",
        "--tag",
        "site=berlin",
        "--attributes",
        r#"{"fw":"1.0"}"#,
    ]);
    assert_eq!(d["state"], "registered");
    assert_eq!(d["tags"]["site"], "berlin");
    assert_eq!(d["attributes"]["fw"], "1.0");

    let table = cli.ok(&["device", "list", "--filter", "tags.site = 'berlin'"]);
    assert!(table.starts_with("ID") && table.contains("pump-1"), "{table}");

    let d = cli.json(&["device", "update", "pump-1", "--state", "active", "--if-version", "1"]);
    assert_eq!((d["state"].as_str(), d["version"].as_u64()), (Some("active"), Some(2)));
    let err = cli.fails(
        &["device", "update", "pump-1", "--name", "x", "--if-version", "1"],
        Some(&server.admin_token),
    );
    assert!(err.contains("precondition_failed") && err.contains("412"), "{err}");
    let err = cli
        .fails(&["device", "update", "pump-1", "--state", "registered"], Some(&server.admin_token));
    assert!(err.contains("illegal_transition"), "{err}");

    let got = cli.json(&["device", "get", "pump-1"]);
    assert_eq!(got["version"], 2);
    cli.ok(&["device", "delete", "pump-1"]);
    let err = cli.fails(&["device", "get", "pump-1"], Some(&server.admin_token));
    assert!(
        err.starts_with("error: ") && err.contains("device_not_found") && err.contains("404"),
        "{err}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_are_clear_without_a_token_or_server() {
    let server = TestServer::start().await;
    let cli = Cli { server: &server };
    let err = cli.fails(&["device", "list"], None);
    assert!(err.contains("HERD_TOKEN"), "{err}");
    let err = cli.fails(&["device", "list"], Some("herd_wrong"));
    assert!(err.contains("unauthorized") && err.contains("401"), "{err}");
    let err = cli.fails(&["device", "create", "bad id"], Some(&server.admin_token));
    assert!(err.contains("invalid_device_id"), "{err}");
    server.stop().await;
    let out = tokio::task::block_in_place(|| {
        herd(&["device", "list"], &[("HERD_URL", "http://127.0.0.1:9"), ("HERD_TOKEN", "x")])
    });
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cannot reach the Herd server"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn groups_and_tokens_through_the_cli() {
    let server = TestServer::start().await;
    let cli = Cli { server: &server };
    for id in ["a-1", "a-2", "b-1"] {
        cli.ok(&["device", "create", id, "--tag", &format!("line={}", &id[..1])]);
    }
    cli.ok(&["group", "create", "line-a", "--filter", "tags.line = 'a'"]);
    cli.ok(&["group", "create", "picked"]);
    cli.ok(&["group", "add", "picked", "b-1", "a-2"]);
    let members = cli.json(&["group", "devices", "line-a"]);
    let ids: Vec<&str> =
        members["items"].as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["a-1", "a-2"]);
    let members = cli.json(&["group", "devices", "picked"]);
    assert_eq!(members["items"].as_array().unwrap().len(), 2);
    cli.ok(&["group", "remove", "picked", "b-1"]);
    assert_eq!(cli.json(&["group", "devices", "picked"])["items"].as_array().unwrap().len(), 1);
    assert!(cli.ok(&["group", "list"]).contains("line-a"));

    let out = cli.ok(&["token", "create", "--name", "reader", "--role", "viewer"]);
    let secret = out.lines().last().unwrap().trim().to_owned();
    assert!(secret.starts_with("herd_"), "{out}");
    let viewer = Cli { server: &server };
    let list = viewer.run(&["device", "list"], Some(&secret));
    assert!(list.status.success());
    let err = viewer.fails(&["device", "create", "nope"], Some(&secret));
    assert!(err.contains("forbidden") && err.contains("403"), "{err}");
    let tokens = cli.json(&["token", "list"]);
    let id =
        tokens["items"].as_array().unwrap().iter().find(|t| t["name"] == "reader").unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
    cli.ok(&["token", "revoke", &id]);
    let err = viewer.fails(&["device", "list"], Some(&secret));
    assert!(err.contains("401"), "{err}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn device_credentials_through_the_cli() {
    let server = TestServer::start().await;
    let cli = Cli { server: &server };
    cli.ok(&["device", "create", "boiler-7", "--state", "active"]);

    let out = cli.ok(&["device", "credential", "create", "boiler-7"]);
    let secret = out.lines().last().unwrap().trim().to_owned();
    assert!(secret.starts_with("hdc_") && secret.len() == 68, "{out}");
    assert!(out.contains("never expires") && out.contains("shown only once"), "{out}");
    let created =
        cli.json(&["device", "credential", "create", "boiler-7", "--expires-in-days", "30"]);
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("cred_") && created["token"].as_str().unwrap().starts_with("hdc_"));
    assert!(created["expires_at"].is_string(), "{created}");

    let table = cli.ok(&["device", "credential", "list", "boiler-7"]);
    assert!(table.starts_with("ID") && table.contains(&id), "{table}");
    assert!(!table.contains(&secret), "{table}");
    let list = cli.json(&["device", "credential", "list", "boiler-7"]);
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert!(items.iter().all(|c| c.get("token").is_none()), "{list}");

    let revoked = cli.json(&["device", "credential", "revoke", "boiler-7", &id]);
    assert!(revoked["revoked_at"].is_string(), "{revoked}");
    let done = cli.ok(&["device", "credential", "revoke", "boiler-7", &id]);
    assert!(done.contains(&format!("revoked credential {id}")), "{done}");

    let token = Some(server.admin_token.as_str());
    let err = cli.fails(&["device", "credential", "create", "nope"], token);
    assert!(err.contains("device_not_found") && err.contains("404"), "{err}");
    let err =
        cli.fails(&["device", "credential", "revoke", "boiler-7", "cred_0000000000000000"], token);
    assert!(err.contains("credential_not_found"), "{err}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn device_certificates_through_the_cli() {
    let server = TestServer::start().await;
    let cli = Cli { server: &server };
    cli.ok(&["device", "create", "boiler-7", "--state", "active"]);
    let dir = tempfile::tempdir().unwrap();
    let csr_path = dir.path().join("boiler.csr");
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["impostor".to_owned()]).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, "impostor");
    std::fs::write(&csr_path, params.serialize_request(&key).unwrap().pem().unwrap()).unwrap();
    let csr = csr_path.to_str().unwrap();
    let ca_path = dir.path().join("ca.pem");

    // Text output is the certificate itself, naming the device of the command.
    let ca_out = ca_path.to_str().unwrap();
    let pem =
        cli.ok(&["device", "certificate", "issue", "boiler-7", "--csr", csr, "--ca-out", ca_out]);
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
    let cert = block.parse_x509().unwrap();
    let cn = cert.subject().iter_common_name().next().unwrap().as_str().unwrap().to_owned();
    assert_eq!(cn, "boiler-7");
    let ca = std::fs::read_to_string(&ca_path).unwrap();
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");

    let created = cli.json(&["device", "certificate", "issue", "boiler-7", "--csr", csr]);
    let serial = created["serial"].as_str().unwrap().to_owned();
    assert_eq!(created["ca_certificate"].as_str(), Some(ca.as_str()));
    let table = cli.ok(&["device", "certificate", "list", "boiler-7"]);
    assert!(table.starts_with("SERIAL") && table.contains(&serial), "{table}");
    let list = cli.json(&["device", "certificate", "list", "boiler-7"]);
    assert_eq!(list["items"].as_array().unwrap().len(), 2);

    let revoked = cli.json(&["device", "certificate", "revoke", "boiler-7", &serial]);
    assert!(revoked["revoked_at"].is_string(), "{revoked}");
    let done = cli.ok(&["device", "certificate", "revoke", "boiler-7", &serial]);
    assert!(done.contains(&format!("revoked certificate {serial}")), "{done}");

    let token = Some(server.admin_token.as_str());
    let bad = dir.path().join("bad.csr");
    std::fs::write(&bad, "not a request").unwrap();
    let args = ["device", "certificate", "issue", "boiler-7", "--csr", bad.to_str().unwrap()];
    let err = cli.fails(&args, token);
    assert!(err.contains("invalid_csr"), "{err}");
    let err = cli.fails(&["device", "certificate", "issue", "nope", "--csr", csr], token);
    assert!(err.contains("device_not_found"), "{err}");
    let err = cli.fails(&["device", "certificate", "revoke", "boiler-7", "ff"], token);
    assert!(err.contains("certificate_not_found"), "{err}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn import_of_100k_devices_reports_counts() {
    let server = TestServer::start().await;
    let cli = Cli { server: &server };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.csv");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    writeln!(f, "id,name,state,tag.site,attributes").unwrap();
    for i in 0..100_000 {
        writeln!(
            f,
            "dev-{i:06},\"Device {i}, rack {}\",active,site-{},\"{{\"\"slot\"\":{i}}}\"",
            i % 40,
            i % 10
        )
        .unwrap();
    }
    writeln!(f, "bad id,x,active,,").unwrap();
    drop(f);
    let out = cli.run(&["device", "import", path.to_str().unwrap()], Some(&server.admin_token));
    let text = stdout(&out);
    assert!(
        text.contains("created 100000, updated 0, unchanged 0, rejected 1"),
        "{text}\n{}",
        stderr(&out)
    );
    assert!(
        text.contains("100002") && text.contains("invalid device id"),
        "the rejected line is reported: {text}"
    );
    assert_eq!(out.status.code(), Some(1), "rejected lines make the command fail");
    let (_, summary) = server.get("/api/v1/inventory/summary").await;
    assert_eq!(summary["total"], 100_000);
    let page = cli.json(&[
        "device",
        "list",
        "--filter",
        "tags.site = 'site-3' and state = 'active'",
        "--limit",
        "5",
    ]);
    assert_eq!(page["items"][0]["id"], "dev-000003");
    assert_eq!(page["items"][0]["attributes"]["slot"], 3);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_verify_names_a_tampered_record() {
    let server = TestServer::start().await;
    let cli = Cli { server: &server };
    for id in ["t-1", "t-2", "t-3"] {
        cli.ok(&["device", "create", id]);
    }
    let ok = cli.ok(&["audit", "verify"]);
    // Record 1 is the bootstrap token, then three device creations.
    assert!(ok.contains("4 record(s) verified"), "{ok}");
    let list = cli.ok(&["audit", "list"]);
    assert!(list.contains("device.create") && list.contains("device/t-2"), "{list}");

    // Alter record 3 behind Herd's back, directly in the SQLite file.
    let url = format!("sqlite://{}", server.database_path().display());
    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url).await.unwrap();
    let changed = sqlx::query("UPDATE audit SET actor = 'mallory' WHERE seq = 3")
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(changed.rows_affected(), 1);
    drop(conn);
    let err = cli.fails(&["audit", "verify"], Some(&server.admin_token));
    assert!(err.contains("broken at record 3"), "{err}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn enrollment_groups_through_the_cli() {
    let server = TestServer::start().await;
    let cli = Cli { server: &server };
    cli.ok(&["group", "create", "line-1"]);
    let g = cli.json(&[
        "enrollment",
        "create",
        "factory-a",
        "--attestation",
        "symmetric-key",
        "--tag",
        "site=berlin",
        "--group",
        "line-1",
        "--attribute",
        "batch=7",
        "--id-template",
        "fa-{registration_id}",
        "--expires",
        "2099-01-01T00:00:00Z",
    ]);
    assert_eq!(g["attestation"], "symmetric_key");
    assert_eq!(g["attributes"]["batch"], 7);
    assert_eq!(g["groups"][0], "line-1");
    cli.ok(&["enrollment", "create", "codes", "--attestation", "claim-code", "--disabled"]);
    let table = cli.ok(&["enrollment", "list"]);
    assert!(table.starts_with("NAME") && table.contains("factory-a"), "{table}");
    assert!(table.contains("codes"), "{table}");
    let shown = cli.ok(&["enrollment", "show", "factory-a"]);
    assert!(shown.contains("fa-{registration_id}"), "{shown}");
    let codes = cli.json(&["enrollment", "claim-codes", "create", "codes", "--count", "3"]);
    assert_eq!(codes["items"].as_array().unwrap().len(), 3);
    let listed = cli.ok(&["enrollment", "claim-codes", "list", "codes"]);
    assert!(listed.starts_with("ID") && listed.lines().count() == 4, "{listed}");
    cli.ok(&["enrollment", "enable", "codes"]);
    assert_eq!(cli.json(&["enrollment", "show", "codes"])["enabled"], true);
    cli.ok(&["enrollment", "delete", "codes"]);
    let err = cli.fails(&["enrollment", "show", "codes"], Some(&server.admin_token));
    assert!(err.contains("enrollment_group_not_found"), "{err}");
    let err =
        cli.fails(&["enrollment", "derive-key", "factory-a", "a/b"], Some(&server.admin_token));
    assert!(err.contains("invalid_device_id"), "{err}");

    // A factory derives the key; the device registers over HTTP with it, then connects over MQTT.
    let key = cli.ok(&["enrollment", "derive-key", "factory-a", "fa-SN1"]);
    let key = BASE64.decode(key.trim()).expect("the key is printed as base64");
    assert_eq!(key.len(), 32);
    let ids = server.data_dir.path().join("ids.txt");
    std::fs::write(&ids, "# batch 7\nfa-SN1\n\nfa-SN2\n").unwrap();
    let manifest = server.data_dir.path().join("manifest.csv");
    let ids_arg = ids.display().to_string();
    let out_arg = manifest.display().to_string();
    cli.ok(&["enrollment", "derive-keys", "factory-a", "--ids", &ids_arg, "--out", &out_arg]);
    let csv = std::fs::read_to_string(&manifest).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "device_id,derived_key");
    assert_eq!(lines[1], format!("fa-SN1,{}", BASE64.encode(&key)));
    assert!(lines[2].starts_with("fa-SN2,") && lines.len() == 3, "{csv}");

    // A factory bundle: one directory per registration id, keys for the ids the template makes.
    let serials = server.data_dir.path().join("serials.txt");
    std::fs::write(&serials, "SN1\nSN3\n").unwrap();
    let bundle = server.data_dir.path().join("bundle");
    let (serials_arg, bundle_arg) = (serials.display().to_string(), bundle.display().to_string());
    let args = ["enrollment", "bundle", "factory-a", "--ids", &serials_arg, "--out", &bundle_arg];
    cli.ok(&[&args[..], &["--server-url", "https://herd.example.com"]].concat());
    let manifest = std::fs::read_to_string(bundle.join("manifest.csv")).unwrap();
    assert_eq!(manifest, "registration_id,device_id,directory\nSN1,fa-SN1,SN1\nSN3,fa-SN3,SN3\n");
    let derived = std::fs::read_to_string(bundle.join("SN1/derived.key")).unwrap();
    assert_eq!(derived.trim(), BASE64.encode(&key));
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(bundle.join("SN1/derived.key")).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let agent: toml::Table =
        std::fs::read_to_string(bundle.join("SN3/agent.toml")).unwrap().parse().unwrap();
    assert_eq!(agent["server"].as_str(), Some("mqtt://herd.example.com:1883"));
    assert_eq!(agent["provisioning"]["registration_id"].as_str(), Some("SN3"));
    assert_eq!(agent["provisioning"]["url"].as_str(), Some("https://herd.example.com"));
    assert_eq!(agent["provisioning"]["enrollment_group"].as_str(), Some("factory-a"));
    // A non-empty directory is never overwritten.
    let err = cli.fails(&args, Some(&server.admin_token));
    assert!(err.contains("not empty"), "{err}");

    let expires_at = domain::Timestamp::now().millis() / 1000 + 300;
    let signature = BASE64.encode(http_api::secrets::proof_signature(&key, "SN1", expires_at));
    // The CSR names another device: the certificate names the device the group makes of SN1.
    let device_key = rcgen::KeyPair::generate().unwrap();
    let mut csr_params = rcgen::CertificateParams::new(vec!["other-device".to_owned()]).unwrap();
    csr_params.distinguished_name.push(rcgen::DnType::CommonName, "other-device");
    let csr = csr_params.serialize_request(&device_key).unwrap().pem().unwrap();
    let body = serde_json::json!({
        "registration_id": "SN1",
        "enrollment_group": "factory-a",
        "proof": {"type": "symmetric_key", "expires_at": expires_at, "signature": signature},
        "csr": csr,
    });
    let r = reqwest::Client::new()
        .post(server.url("/provision/v1/register"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let registered: Value = r.json().await.unwrap();
    assert_eq!(registered["device_id"], "fa-SN1");
    let secret = registered["credential"]["secret"].as_str().unwrap().to_owned();
    let pem = registered["certificate_pem"].as_str().unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
    let cert = pem.parse_x509().unwrap();
    let cn = cert.subject().iter_common_name().next().unwrap().as_str().unwrap().to_owned();
    assert_eq!(cn, "fa-SN1");
    let sans = &cert.subject_alternative_name().unwrap().unwrap().value.general_names;
    assert_eq!(sans, &[x509_parser::extensions::GeneralName::URI("urn:herd:device:fa-SN1")]);
    assert!(registered["ca_pem"].as_str().unwrap().contains("BEGIN CERTIFICATE"));
    let (_, device) = server.get("/api/v1/devices/fa-SN1").await;
    assert_eq!(
        (&device["state"], &device["tags"]["site"]),
        (&Value::from("active"), &Value::from("berlin"))
    );

    let mut options = rumqttc::MqttOptions::new(
        "fa-SN1",
        server.mqtt_addr.ip().to_string(),
        server.mqtt_addr.port(),
    );
    options.set_credentials("fa-SN1", secret);
    let (client, mut events) = rumqttc::AsyncClient::new(options, 10);
    let connack = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        loop {
            match events.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ack))) => return Ok(ack),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .expect("a CONNACK in time");
    assert_eq!(connack.expect("connected").code, rumqttc::ConnectReturnCode::Success);
    client.disconnect().await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn device_replace_through_the_cli() {
    let server = TestServer::start().await;
    let cli = Cli { server: &server };
    cli.ok(&["device", "create", "pump-1", "--state", "active", "--tag", "site=berlin"]);
    cli.ok(&["group", "create", "pumps"]);
    cli.ok(&["group", "add", "pumps", "pump-1"]);
    let out = cli.ok(&["device", "replace", "pump-1", "--with", "pump-2"]);
    assert_eq!(
        out.trim_end(),
        "replaced device pump-1 with new device pump-2: moved 1 tags, 0 attributes, 1 groups; \
         revoked 0 credentials, 0 certificates; pump-1 is retired"
    );
    let shown = cli.ok(&["device", "show", "pump-2"]);
    assert!(shown.lines().any(|l| l.starts_with("replaces") && l.ends_with("pump-1")), "{shown}");
    let shown = cli.ok(&["device", "show", "pump-1"]);
    assert!(
        shown.lines().any(|l| l.starts_with("replaced by") && l.ends_with("pump-2")),
        "{shown}"
    );
    assert!(shown.lines().any(|l| l.starts_with("state") && l.ends_with("retired")), "{shown}");
    let new = cli.json(&["device", "get", "pump-2"]);
    assert_eq!((&new["tags"]["site"], &new["replaces"]), (&"berlin".into(), &"pump-1".into()));
    let audit = cli.ok(&["audit", "list", "--limit", "100"]);
    assert!(audit.contains("device.replace"), "{audit}");

    // Refusals exit 1 with the server's message and code.
    let err =
        cli.fails(&["device", "replace", "pump-1", "--with", "pump-3"], Some(&server.admin_token));
    assert!(
        err.contains("device_retired") && err.contains("409") && err.contains("replaced by pump-2"),
        "{err}"
    );
    let err =
        cli.fails(&["device", "replace", "pump-2", "--with", "pump-2"], Some(&server.admin_token));
    assert!(err.contains("replace_same_device") && err.contains("422"), "{err}");
    let err =
        cli.fails(&["device", "replace", "ghost", "--with", "pump-3"], Some(&server.admin_token));
    assert!(err.contains("device_not_found") && err.contains("404"), "{err}");
    server.stop().await;
}
