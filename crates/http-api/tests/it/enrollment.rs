//! Enrollment groups (CRUD, roles, derived keys, claim codes) and zero-touch provisioning through
//! `POST /provision/v1/register`: symmetric keys, claim codes, refusals, rate limiting, CSRs.

#![expect(clippy::unwrap_used, reason = "test code: an unexpected error fails the test")]

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use domain::{AccessChangeReason, DeviceAccessChange, DeviceId, Role, TokenHash};
use http_api::secrets::{SecretBox, proof_signature};
use http_api::{ApiConfig, AppState};
use serde_json::{Value, json};
use store::Store;
use tokio::sync::mpsc;
use tower::ServiceExt as _;

use crate::api::{START_MILLIS, TestApi};
use crate::certificates::{TestCa, csr, subject_cn};

const GROUPS: &str = "/api/v1/enrollment-groups";
const REGISTER: &str = "/provision/v1/register";

/// The API's clock in Unix seconds.
const NOW_SECS: i64 = START_MILLIS / 1000;

fn with_secrets(s: AppState) -> AppState {
    s.with_secret_box(Arc::new(SecretBox::new(&[7; 32]).unwrap()))
        .with_certificate_issuer(Arc::new(TestCa::new()))
}

async fn api() -> TestApi {
    TestApi::build(ApiConfig::default(), with_secrets).await
}

async fn create_group(api: &TestApi, body: Value) -> Value {
    api.post(GROUPS).json(&body).send().await.assert_status(201).json()
}

/// The derived key of `device` in `group`, through the API.
async fn derived_key(api: &TestApi, group: &str, device: &str) -> Vec<u8> {
    let k = api
        .post(&format!("{GROUPS}/{group}/derive-key"))
        .json(&json!({"device_id": device}))
        .send()
        .await
        .assert_status(200)
        .json();
    assert_eq!(k["device_id"], device);
    BASE64.decode(k["derived_key"].as_str().unwrap()).unwrap()
}

/// A symmetric-key registration body signed with `key`.
fn signed(group: &str, registration_id: &str, key: &[u8]) -> Value {
    let expires_at = NOW_SECS + 600;
    let signature = BASE64.encode(proof_signature(key, registration_id, expires_at));
    json!({
        "registration_id": registration_id,
        "enrollment_group": group,
        "proof": {"type": "symmetric_key", "expires_at": expires_at, "signature": signature},
    })
}

fn claim(group: &str, registration_id: &str, code: &str) -> Value {
    json!({
        "registration_id": registration_id,
        "enrollment_group": group,
        "proof": {"type": "claim_code", "code": code},
    })
}

async fn register(api: &TestApi, body: &Value) -> crate::api::Resp {
    api.post(REGISTER).no_auth().json(body).send().await
}

async fn device_count(api: &TestApi) -> usize {
    let page = api.get("/api/v1/devices").send().await.assert_status(200).json();
    page["items"].as_array().unwrap().len()
}

async fn audit_actions(api: &TestApi) -> Vec<(String, String, String)> {
    let records = api.store.audit_records(0, 1000.try_into().unwrap()).await.unwrap();
    records.into_iter().map(|r| (r.action, r.resource, r.actor)).collect()
}

#[tokio::test]
async fn crud_and_roles() {
    let api = api().await;
    api.post("/api/v1/groups").json(&json!({"name": "line-1"})).send().await.assert_status(201);
    let body = json!({
        "name": "factory-a",
        "attestation": "symmetric_key",
        "device_id_template": "fa-{registration_id}",
        "tags": {"site": "berlin"},
        "groups": ["line-1"],
        "attributes": {"batch": 7},
        "expires_at": "2027-01-01T00:00:00Z",
    });
    for role in [Role::Viewer, Role::Operator] {
        api.post(GROUPS).role(role).json(&body).send().await.assert_problem(403, "forbidden");
    }
    let g = create_group(&api, body.clone()).await;
    assert_eq!(
        g,
        json!({
            "name": "factory-a",
            "attestation": "symmetric_key",
            "ca_certificate": null,
            "enabled": true,
            "expires_at": "2027-01-01T00:00:00Z",
            "device_id_template": "fa-{registration_id}",
            "tags": {"site": "berlin"},
            "groups": ["line-1"],
            "attributes": {"batch": 7},
            "registrations": 0,
            "created_at": "2026-11-26T12:00:00Z",
            "updated_at": "2026-11-26T12:00:00Z",
        })
    );
    assert!(!g.to_string().contains("sealed"), "the group key is never shown: {g}");
    api.post(GROUPS).json(&body).send().await.assert_problem(409, "enrollment_group_exists");

    let got = api.get(&format!("{GROUPS}/factory-a")).role(Role::Viewer).send().await;
    assert_eq!(got.assert_status(200).json(), g);
    api.get(&format!("{GROUPS}/nope"))
        .send()
        .await
        .assert_problem(404, "enrollment_group_not_found");
    api.get(&format!("{GROUPS}/a%20b"))
        .send()
        .await
        .assert_problem(404, "enrollment_group_not_found");
    create_group(&api, json!({"name": "codes", "attestation": "claim_code"})).await;
    let page = api.get(&format!("{GROUPS}?limit=1")).role(Role::Viewer).send().await.json();
    assert_eq!(page["items"][0]["name"], "codes");
    let cursor = page["next_cursor"].as_str().unwrap();
    let page = api.get(&format!("{GROUPS}?limit=1&cursor={cursor}")).send().await.json();
    assert_eq!(
        (page["items"][0]["name"].clone(), page["next_cursor"].clone()),
        (json!("factory-a"), Value::Null)
    );

    let path = format!("{GROUPS}/factory-a");
    let patch =
        json!({"enabled": false, "expires_at": null, "device_id_template": null, "tags": {}});
    api.patch(&path)
        .role(Role::Operator)
        .json(&patch)
        .send()
        .await
        .assert_problem(403, "forbidden");
    let changed = api.patch(&path).json(&patch).send().await.assert_status(200).json();
    assert_eq!(
        (
            &changed["enabled"],
            &changed["expires_at"],
            &changed["device_id_template"],
            &changed["tags"]
        ),
        (&json!(false), &Value::Null, &Value::Null, &json!({}))
    );
    api.patch(&path)
        .json(&json!({"attestation": "x509"}))
        .send()
        .await
        .assert_problem(400, "unknown_field");

    // Bad input: a clear code each.
    let bad = [
        (json!({"name": "x y", "attestation": "claim_code"}), 422, "validation_failed"),
        (json!({"name": "x", "attestation": "magic"}), 400, "invalid_body"),
        (
            json!({"name": "x", "attestation": "claim_code", "device_id_template": "x"}),
            422,
            "validation_failed",
        ),
        (
            json!({"name": "x", "attestation": "claim_code", "groups": ["nope"]}),
            404,
            "group_not_found",
        ),
        (
            json!({"name": "x", "attestation": "claim_code", "expires_at": "2020-01-01T00:00:00Z"}),
            422,
            "validation_failed",
        ),
        (
            json!({"name": "x", "attestation": "x509", "ca_certificate": "not a pem"}),
            422,
            "validation_failed",
        ),
        (
            json!({"name": "x", "attestation": "claim_code", "ca_certificate": TestCa::new().pem}),
            422,
            "validation_failed",
        ),
        (json!({"name": "x", "attestation": "claim_code", "extra": 1}), 400, "unknown_field"),
    ];
    for (body, status, code) in bad {
        api.post(GROUPS).json(&body).send().await.assert_problem(status, code);
    }
    // An uploaded CA must be a CA certificate.
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["leaf.example".to_owned()]).unwrap();
    let leaf = leaf.self_signed(&key).unwrap().pem();
    let problem = api
        .post(GROUPS)
        .json(&json!({"name": "x", "attestation": "x509", "ca_certificate": leaf}))
        .send()
        .await
        .assert_problem(422, "validation_failed");
    assert!(problem["detail"].as_str().unwrap().contains("not a CA certificate"), "{problem}");
    let ca = TestCa::new().pem;
    let x =
        create_group(&api, json!({"name": "x509-a", "attestation": "x509", "ca_certificate": ca}))
            .await;
    assert_eq!(x["ca_certificate"], ca.as_str());

    api.delete(&path).role(Role::Operator).send().await.assert_problem(403, "forbidden");
    api.delete(&path).send().await.assert_status(204);
    api.delete(&path).send().await.assert_problem(404, "enrollment_group_not_found");

    let actions: Vec<(String, String)> =
        audit_actions(&api).await.into_iter().map(|(a, r, _)| (a, r)).collect();
    for expected in ["create", "update", "delete"] {
        let entry =
            (format!("enrollment_group.{expected}"), "enrollment_group/factory-a".to_owned());
        assert!(actions.contains(&entry), "{entry:?} in {actions:?}");
    }
}

#[tokio::test]
async fn without_a_master_key_symmetric_keys_are_unavailable() {
    let api = TestApi::new().await;
    let body = json!({"name": "sk", "attestation": "symmetric_key"});
    api.post(GROUPS).json(&body).send().await.assert_problem(503, "secrets_unavailable");
    create_group(&api, json!({"name": "cc", "attestation": "claim_code"})).await;
    let r = api.post(&format!("{GROUPS}/cc/derive-key")).json(&json!({"device_id": "d"})).send();
    r.await.assert_problem(409, "conflict");
}

#[tokio::test]
async fn register_with_a_symmetric_key_then_retry() {
    let api = api().await;
    api.post("/api/v1/groups").json(&json!({"name": "line-1"})).send().await.assert_status(201);
    create_group(
        &api,
        json!({
            "name": "factory-a",
            "attestation": "symmetric_key",
            "device_id_template": "fa-{registration_id}",
            "tags": {"site": "berlin"},
            "groups": ["line-1"],
            "attributes": {"batch": 7},
        }),
    )
    .await;
    let r = api.post(&format!("{GROUPS}/factory-a/derive-key")).role(Role::Operator);
    r.json(&json!({"device_id": "x"})).send().await.assert_problem(403, "forbidden");
    let key = derived_key(&api, "factory-a", "fa-SN1").await;
    assert_eq!(key.len(), 32);
    assert!(
        audit_actions(&api).await.iter().any(
            |(a, r, _)| a == "enrollment_group.derive_key" && r == "enrollment_group/factory-a"
        )
    );

    let first = register(&api, &signed("factory-a", "SN1", &key)).await.assert_status(201).json();
    assert_eq!(first["device_id"], "fa-SN1");
    assert_eq!(first["created"], true);
    assert_eq!(first["credential"]["type"], "token");
    let secret = first["credential"]["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("hdc_"), "{first}");
    assert_eq!(first["mqtt"], json!({"client_id": "fa-SN1", "username": "fa-SN1"}));
    assert!(first.get("certificate_pem").is_none(), "{first}");

    let device = api.get("/api/v1/devices/fa-SN1").send().await.assert_status(200).json();
    assert_eq!(
        (&device["state"], &device["tags"], &device["attributes"]),
        (&json!("active"), &json!({"site": "berlin"}), &json!({"batch": 7}))
    );
    let members = api.get("/api/v1/groups/line-1/devices").send().await.json();
    assert_eq!(crate::api::ids(&members), vec!["fa-SN1"]);
    let login = api.store.device_login(&TokenHash::of_secret(&secret)).await.unwrap();
    assert_eq!(login.unwrap().credential.device_id.as_str(), "fa-SN1");

    let again = register(&api, &signed("factory-a", "SN1", &key)).await.assert_status(200).json();
    assert_eq!((&again["device_id"], &again["created"]), (&json!("fa-SN1"), &json!(false)));
    assert_ne!(again["credential"]["secret"], first["credential"]["secret"]);
    assert_eq!(device_count(&api).await, 1);
    let g = api.get(&format!("{GROUPS}/factory-a")).send().await.json();
    assert_eq!(g["registrations"], 1);
    let registered: Vec<_> =
        audit_actions(&api).await.into_iter().filter(|(a, _, _)| a == "device.register").collect();
    assert_eq!(registered.len(), 2);
    assert_eq!(registered[0].1, "device/fa-SN1");
    assert_eq!(registered[0].2, "enrollment:factory-a");
}

#[tokio::test]
async fn wrong_proofs_are_refused_audited_and_rate_limited() {
    let api = api().await;
    create_group(&api, json!({"name": "sk", "attestation": "symmetric_key"})).await;
    create_group(&api, json!({"name": "cc", "attestation": "claim_code"})).await;
    let key = derived_key(&api, "sk", "dev-1").await;

    // Each a 401 invalid_proof: a wrong key, an unknown group, the wrong proof type, an expired
    // or too long-lived proof, a signature that is not base64.
    let wrong_key = signed("sk", "dev-1", &[0; 32]);
    let unknown_group = signed("nope", "dev-1", &key);
    let wrong_type = claim("sk", "dev-1", "ABCD-EFGH-JKLM");
    let mut expired = signed("sk", "dev-1", &key);
    expired["proof"]["expires_at"] = json!(NOW_SECS - 1);
    let mut too_long = signed("sk", "dev-1", &key);
    too_long["proof"]["expires_at"] = json!(NOW_SECS + 3601);
    let mut garbage = signed("sk", "dev-1", &key);
    garbage["proof"]["signature"] = json!("%%%");
    let cases = [wrong_key, unknown_group, wrong_type, expired, too_long, garbage];
    for body in &cases {
        register(&api, body).await.assert_problem(401, "invalid_proof");
    }
    let refused: Vec<_> = audit_actions(&api)
        .await
        .into_iter()
        .filter(|(a, _, _)| a == "enrollment.register.refused")
        .collect();
    assert_eq!(refused.len(), cases.len());
    assert_eq!(
        refused[0],
        (
            "enrollment.register.refused".to_owned(),
            "registration/dev-1".to_owned(),
            "enrollment:sk".to_owned()
        )
    );
    assert_eq!(device_count(&api).await, 0);

    // Four more failures make ten in this minute; the eleventh attempt is refused before its
    // proof is checked, even a correct one, with Retry-After.
    for _ in 0..4 {
        register(&api, &cases[0]).await.assert_problem(401, "invalid_proof");
    }
    let limited = register(&api, &signed("sk", "dev-1", &key)).await;
    let retry_after: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    limited.assert_problem(429, "too_many_attempts");
    // Another registration id is not held back; after the minute, dev-1 may try again.
    register(&api, &signed("sk", "dev-2", &derived_key(&api, "sk", "dev-2").await))
        .await
        .assert_status(201);
    api.advance_millis(60_000);
    register(&api, &signed("sk", "dev-1", &key)).await.assert_status(201);
}

/// Sends a registration as if it came from `ip` (the server serves with connection info).
async fn register_from(api: &TestApi, ip: [u8; 4], body: &Value) -> StatusCode {
    let request = Request::post(REGISTER)
        .header("content-type", "application/json")
        .extension(ConnectInfo(SocketAddr::from((ip, 40_000))))
        .body(Body::from(body.to_string()))
        .unwrap();
    api.router.clone().oneshot(request).await.unwrap().status()
}

#[tokio::test]
async fn failures_are_counted_per_client_address() {
    let config = ApiConfig { provisioning_max_failures_per_minute: 2, ..ApiConfig::default() };
    let api = TestApi::build(config, with_secrets).await;
    create_group(&api, json!({"name": "sk", "attestation": "symmetric_key"})).await;
    // Two failures from one address, each for another registration id...
    for id in ["a", "b"] {
        let status = register_from(&api, [192, 0, 2, 7], &signed("sk", id, &[1; 32])).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    // ... hold that address back for any registration id, but not another address.
    let c = signed("sk", "c", &derived_key(&api, "sk", "c").await);
    assert_eq!(register_from(&api, [192, 0, 2, 7], &c).await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(register_from(&api, [192, 0, 2, 8], &c).await, StatusCode::CREATED);
    let record = api.store.audit_records(0, 1000.try_into().unwrap()).await.unwrap();
    let sources: Vec<_> = record
        .iter()
        .filter(|r| r.action == "enrollment.register.refused")
        .map(|r| {
            serde_json::from_str::<Value>(r.after.as_deref().unwrap()).unwrap()["source"].clone()
        })
        .collect();
    assert_eq!(sources, vec![json!("https 192.0.2.7"), json!("https 192.0.2.7")]);
}

#[tokio::test]
async fn rotation_revokes_the_oldest_credential_and_closes_its_sessions() {
    let (tx, mut rx) = mpsc::channel(16);
    let api =
        TestApi::build(ApiConfig::default(), |s| with_secrets(s).with_access_events(tx)).await;
    create_group(&api, json!({"name": "sk", "attestation": "symmetric_key"})).await;
    let key = derived_key(&api, "sk", "d1").await;
    let mut secrets = Vec::new();
    for _ in 0..3 {
        let r = register(&api, &signed("sk", "d1", &key)).await.json();
        secrets.push(r["credential"]["secret"].as_str().unwrap().to_owned());
    }
    let change = rx.try_recv().expect("the revocation of the first credential is announced");
    assert_eq!(
        change,
        DeviceAccessChange {
            device_id: DeviceId::new("d1").unwrap(),
            reason: AccessChangeReason::CredentialRevoked
        }
    );
    assert!(rx.try_recv().is_err(), "one revocation, one event");
    let now = api.now();
    let usable: Vec<bool> = {
        let mut out = Vec::new();
        for s in &secrets {
            let login = api.store.device_login(&TokenHash::of_secret(s)).await.unwrap().unwrap();
            out.push(login.credential.is_usable_at(now));
        }
        out
    };
    assert_eq!(usable, vec![false, true, true]);
}

#[tokio::test]
async fn disabled_and_expired_groups_refuse() {
    let api = api().await;
    create_group(&api, json!({"name": "sk", "attestation": "symmetric_key", "enabled": false}))
        .await;
    let key = derived_key(&api, "sk", "d1").await;
    register(&api, &signed("sk", "d1", &key)).await.assert_problem(403, "enrollment_disabled");
    api.patch(&format!("{GROUPS}/sk"))
        .json(&json!({"enabled": true, "expires_at": "2026-11-26T12:00:01Z"}))
        .send()
        .await
        .assert_status(200);
    api.advance_millis(1_000);
    register(&api, &signed("sk", "d1", &key)).await.assert_problem(403, "enrollment_expired");
    api.patch(&format!("{GROUPS}/sk"))
        .json(&json!({"expires_at": null}))
        .send()
        .await
        .assert_status(200);
    let mut body = signed("sk", "d1", &key);
    body["proof"]["expires_at"] = json!(NOW_SECS + 601);
    body["proof"]["signature"] = json!(BASE64.encode(proof_signature(&key, "d1", NOW_SECS + 601)));
    register(&api, &body).await.assert_status(201);
    // A device that exists, active, without having enrolled is a conflict.
    api.create_device(json!({"id": "manual", "state": "active"})).await;
    let key = derived_key(&api, "sk", "manual").await;
    register(&api, &signed("sk", "manual", &key)).await.assert_problem(409, "device_conflict");
}

/// Devices imported beforehand in state `registered` onboard through the normal flow: the first
/// registration with a proof that binds the id adopts them (200, `created: false`), merging the
/// group's tags under their own; a claim code does not.
#[tokio::test]
async fn imported_registered_devices_are_adopted() {
    let api = api().await;
    create_group(
        &api,
        json!({"name": "sk", "attestation": "symmetric_key", "tags": {"site": "berlin", "owner": "ops"},
               "attributes": {"fw": "1.0"}}),
    )
    .await;
    let csv = "id,state,attributes,tag.site\nimp-1,registered,\"{\"\"fw\"\": \"\"0.9\"\"}\",paris\nimp-2,active,,\n";
    let report = api
        .post("/api/v1/devices:import")
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await
        .assert_status(200)
        .json();
    assert_eq!(report["created"], 2, "{report}");
    let key = derived_key(&api, "sk", "imp-1").await;
    let r = register(&api, &signed("sk", "imp-1", &key)).await.assert_status(200).json();
    assert_eq!((&r["device_id"], &r["created"]), (&json!("imp-1"), &json!(false)));
    let d = api.get("/api/v1/devices/imp-1").send().await.assert_status(200).json();
    assert_eq!(d["state"], "active");
    assert_eq!(d["tags"], json!({"owner": "ops", "site": "paris"}));
    assert_eq!(d["attributes"], json!({"fw": "0.9"}));
    let record = api
        .store
        .audit_records(0, 1000.try_into().unwrap())
        .await
        .unwrap()
        .into_iter()
        .rfind(|r| r.action == "device.register")
        .unwrap();
    let after: Value = serde_json::from_str(record.after.as_deref().unwrap()).unwrap();
    assert_eq!(after["adopted"], json!(true));
    // Once adopted it retries like any enrolled device; an active device never enrolled is a
    // conflict.
    register(&api, &signed("sk", "imp-1", &key)).await.assert_status(200);
    let key = derived_key(&api, "sk", "imp-2").await;
    register(&api, &signed("sk", "imp-2", &key)).await.assert_problem(409, "device_conflict");

    // A claim code names no device: it does not adopt a pre-provisioned one.
    create_group(&api, json!({"name": "cc", "attestation": "claim_code"})).await;
    api.post("/api/v1/devices").json(&json!({"id": "imp-3"})).send().await.assert_status(201);
    let created = api
        .post(&format!("{GROUPS}/cc/claim-codes"))
        .json(&json!({"count": 1}))
        .send()
        .await
        .assert_status(201)
        .json();
    let code = created["items"][0]["code"].as_str().unwrap().to_owned();
    register(&api, &claim("cc", "imp-3", &code)).await.assert_problem(409, "device_conflict");
    let d = api.get("/api/v1/devices/imp-3").send().await.assert_status(200).json();
    assert_eq!(d["state"], "registered");
}

#[tokio::test]
async fn claim_codes_are_single_use() {
    let api = api().await;
    create_group(&api, json!({"name": "cc", "attestation": "claim_code", "tags": {"k": "v"}}))
        .await;
    let path = format!("{GROUPS}/cc/claim-codes");
    api.post(&path)
        .role(Role::Operator)
        .json(&json!({"count": 1}))
        .send()
        .await
        .assert_problem(403, "forbidden");
    for bad in [json!({"count": 0}), json!({"count": 1001}), json!({"count": 1, "max_uses": 0})] {
        api.post(&path).json(&bad).send().await.assert_problem(422, "validation_failed");
    }
    let created = api.post(&path).json(&json!({"count": 2})).send().await.assert_status(201).json();
    let items = created["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    let code = items[0]["code"].as_str().unwrap().to_owned();
    assert_eq!(code.len(), 14, "{code}");
    assert!(
        code.chars().all(|c| c == '-' || "23456789ABCDEFGHJKLMNPQRSTUVWXYZ".contains(c)),
        "{code}"
    );
    let listed = api.get(&path).role(Role::Viewer).send().await.assert_status(200).json();
    assert!(!listed.to_string().contains(&code), "codes are never listed");
    assert_eq!(listed["items"][0]["uses"], 0);

    register(&api, &claim("cc", "c1", &code)).await.assert_status(201);
    // The same device retrying with its code is fine; another device with it is refused.
    let again = register(&api, &claim("cc", "c1", &code.to_lowercase())).await;
    assert_eq!(again.assert_status(200).json()["created"], false);
    register(&api, &claim("cc", "c2", &code)).await.assert_problem(403, "claim_code_exhausted");
    register(&api, &claim("cc", "c2", "2222-2222-2222")).await.assert_problem(401, "invalid_proof");
    // Both codes were made at the same time: the list orders them by id.
    let listed = api.get(&path).send().await.json();
    let uses = |id: &Value| {
        let items = listed["items"].as_array().unwrap();
        items.iter().find(|c| c["id"] == *id).map(|c| c["uses"].clone()).unwrap()
    };
    assert_eq!((uses(&items[0]["id"]), uses(&items[1]["id"])), (json!(1), json!(0)));
    assert_eq!(device_count(&api).await, 1);
    let d = api.get("/api/v1/devices/c1").send().await.json();
    assert_eq!(d["tags"], json!({"k": "v"}));
}

#[tokio::test]
async fn a_csr_gets_a_certificate_for_the_device_id() {
    let api = api().await;
    create_group(
        &api,
        json!({"name": "sk", "attestation": "symmetric_key", "device_id_template": "p-{registration_id}"}),
    )
    .await;
    let key = derived_key(&api, "sk", "p-7").await;
    let mut body = signed("sk", "7", &key);
    body["csr"] = json!(csr("other-device"));
    let r = register(&api, &body).await.assert_status(201).json();
    let pem = r["certificate_pem"].as_str().unwrap();
    assert_eq!(subject_cn(pem), "p-7");
    assert!(r["ca_pem"].as_str().unwrap().contains("BEGIN CERTIFICATE"));
    let stored = api.store.device_certificates(&DeviceId::new("p-7").unwrap()).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].pem, pem);

    // A bad CSR changes nothing.
    let key = derived_key(&api, "sk", "p-8").await;
    let mut body = signed("sk", "8", &key);
    body["csr"] = json!("not a csr");
    register(&api, &body).await.assert_problem(400, "invalid_csr");
    api.get("/api/v1/devices/p-8").send().await.assert_problem(404, "device_not_found");
}

#[tokio::test]
async fn bad_registration_input() {
    let api = api().await;
    let bad_id = json!({
        "registration_id": "a/b",
        "enrollment_group": "sk",
        "proof": {"type": "claim_code", "code": "x"},
    });
    register(&api, &bad_id).await.assert_problem(422, "validation_failed");
    let unknown_type = json!({
        "registration_id": "a",
        "enrollment_group": "sk",
        "proof": {"type": "password", "code": "x"},
    });
    register(&api, &unknown_type).await.assert_problem(400, "invalid_body");
    let mut extra = claim("cc", "a", "x");
    extra["foo"] = json!(1);
    register(&api, &extra).await.assert_problem(400, "unknown_field");
}

#[tokio::test]
async fn keys_are_derived_in_bulk_with_one_audit_record() {
    let api = TestApi::build(
        ApiConfig { max_derived_keys_per_request: 3, ..ApiConfig::default() },
        with_secrets,
    )
    .await;
    create_group(&api, json!({"name": "sk", "attestation": "symmetric_key"})).await;
    create_group(&api, json!({"name": "cc", "attestation": "claim_code"})).await;
    let path = format!("{GROUPS}/sk/derive-keys");
    let before = audit_actions(&api).await.len();
    let keys = api
        .post(&path)
        .json(&json!({"device_ids": ["d-1", "d-2", "d-3"]}))
        .send()
        .await
        .assert_status(200)
        .json();
    let items = keys["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    for (item, id) in items.iter().zip(["d-1", "d-2", "d-3"]) {
        assert_eq!(item["device_id"], id);
        let key = BASE64.decode(item["derived_key"].as_str().unwrap()).unwrap();
        assert_eq!(key, derived_key(&api, "sk", id).await, "the same key as one by one");
    }
    let records = api.store.audit_records(0, 1000.try_into().unwrap()).await.unwrap();
    let batch = &records[before];
    assert_eq!(
        (batch.action.as_str(), batch.resource.as_str()),
        ("enrollment_group.derive_key", "enrollment_group/sk")
    );
    let after: Value = serde_json::from_str(batch.after.as_deref().unwrap()).unwrap();
    assert_eq!(after, json!({"count": 3, "device_ids": ["d-1", "d-2", "d-3"]}));

    let post = |body: Value| api.post(&path).json(&body).send();
    post(json!({"device_ids": []})).await.assert_problem(422, "validation_failed");
    post(json!({"device_ids": ["a", "b", "c", "d"]}))
        .await
        .assert_problem(422, "validation_failed");
    post(json!({"device_ids": ["ok", "a/b"]})).await.assert_problem(400, "invalid_device_id");
    post(json!({"device_ids": ["a"], "x": 1})).await.assert_problem(400, "unknown_field");
    let other = api.post(&format!("{GROUPS}/cc/derive-keys")).json(&json!({"device_ids": ["a"]}));
    other.send().await.assert_problem(409, "conflict");
    let ghost =
        api.post(&format!("{GROUPS}/ghost/derive-keys")).json(&json!({"device_ids": ["a"]}));
    ghost.send().await.assert_problem(404, "enrollment_group_not_found");
    let viewer = api.post(&path).role(Role::Operator).json(&json!({"device_ids": ["a"]}));
    viewer.send().await.assert_problem(403, "forbidden");
}
