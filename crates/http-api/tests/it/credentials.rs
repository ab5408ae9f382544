//! Device credentials: issue (secret shown once, only its hash stored), list without secrets,
//! revoke; and the access-change events every write that ends a device's access sends.

use domain::{AccessChangeReason, DeviceAccessChange, DeviceId, TokenHash};
use http_api::ApiConfig;
use serde_json::{Value, json};
use store::Store;
use tokio::sync::mpsc;

use crate::api::TestApi;

const CREDS: &str = "/api/v1/devices/boiler-7/credentials";

#[tokio::test]
async fn issue_list_and_revoke() {
    let api = TestApi::new().await;
    api.create_device(json!({"id": "boiler-7", "state": "active"})).await;

    let created = api
        .post(CREDS)
        .role(domain::Role::Operator)
        .json(&json!({"expires_in_days": 30}))
        .send()
        .await
        .assert_status(201)
        .json();
    let secret = created["token"].as_str().unwrap().to_owned();
    let hex = secret.strip_prefix("hdc_").unwrap();
    assert!(
        hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("cred_"), "{id}");
    assert_eq!(
        created,
        json!({
            "id": id, "device_id": "boiler-7", "created_at": "2026-11-26T12:00:00Z",
            "expires_at": "2026-12-26T12:00:00Z", "revoked_at": null, "token": secret,
        })
    );
    // The store keeps the hash of the secret, never the secret.
    let stored = api.store.device_credential_by_hash(&TokenHash::of_secret(&secret)).await.unwrap();
    assert_eq!(stored.unwrap().id.as_str(), id);

    api.advance_millis(1000);
    let forever = api.post(CREDS).json(&json!({})).send().await.assert_status(201).json();
    assert_eq!(forever["expires_at"], json!(null));

    // Listing is for viewers, newest first, and never shows a secret.
    let list = api.get(CREDS).role(domain::Role::Viewer).send().await.assert_status(200);
    assert!(!list.text().contains(&secret));
    let list = list.json();
    let items = list["items"].as_array().unwrap();
    assert_eq!(
        items.iter().map(|c| c["id"].clone()).collect::<Vec<_>>(),
        [forever["id"].clone(), json!(id)]
    );
    assert!(items.iter().all(|c| c.get("token").is_none()), "{list}");

    api.advance_millis(1000);
    let revoked = api.delete(&format!("{CREDS}/{id}")).send().await.assert_status(200).json();
    assert_eq!(revoked["id"], id.as_str());
    assert_eq!(revoked["revoked_at"], "2026-11-26T12:00:02Z");
    assert_eq!(revoked.get("token"), None);
    // Revoking twice keeps the first time.
    api.advance_millis(1000);
    let again = api.delete(&format!("{CREDS}/{id}")).send().await.assert_status(200).json();
    assert_eq!(again["revoked_at"], "2026-11-26T12:00:02Z");
    let list = api.get(CREDS).send().await.assert_status(200).json();
    assert_eq!(list["items"][1]["revoked_at"], "2026-11-26T12:00:02Z");
}

#[tokio::test]
async fn failures() {
    let api = TestApi::new().await;
    api.create_device(json!({"id": "boiler-7"})).await;
    api.create_device(json!({"id": "other"})).await;
    let other = api.post("/api/v1/devices/other/credentials").json(&json!({})).send().await.json();

    let cases: &[(&str, &str, Option<Value>, u16, &str)] = &[
        ("POST", "/api/v1/devices/nope/credentials", Some(json!({})), 404, "device_not_found"),
        ("GET", "/api/v1/devices/nope/credentials", None, 404, "device_not_found"),
        ("POST", "/api/v1/devices/bad%20id/credentials", Some(json!({})), 400, "invalid_device_id"),
        ("POST", CREDS, Some(json!({"expires_in_days": 0})), 422, "validation_failed"),
        (
            "POST",
            CREDS,
            Some(json!({"expires_at": "2026-11-26T11:00:00Z"})),
            422,
            "validation_failed",
        ),
        (
            "POST",
            CREDS,
            Some(json!({"expires_at": "2027-01-01T00:00:00Z", "expires_in_days": 1})),
            422,
            "validation_failed",
        ),
        ("POST", CREDS, Some(json!({"role": "admin"})), 400, "unknown_field"),
        (
            "DELETE",
            "/api/v1/devices/boiler-7/credentials/cred_0000000000000000",
            None,
            404,
            "credential_not_found",
        ),
        (
            "DELETE",
            "/api/v1/devices/boiler-7/credentials/not-a-credential",
            None,
            404,
            "credential_not_found",
        ),
    ];
    for (method, path, body, status, code) in cases {
        let req = api.req(method.parse().unwrap(), path);
        let req = match body {
            Some(b) => req.json(b),
            None => req,
        };
        req.send().await.assert_problem(*status, code);
    }
    // Another device's credential is not this device's.
    let path = format!("{CREDS}/{}", other["id"].as_str().unwrap());
    api.delete(&path).send().await.assert_problem(404, "credential_not_found");
    // A device without credentials lists none.
    let list = api.get(CREDS).send().await.assert_status(200).json();
    assert_eq!(list, json!({"items": []}));
}

/// An API whose access-change events arrive on the returned receiver.
async fn api_with_events() -> (TestApi, mpsc::Receiver<DeviceAccessChange>) {
    let (tx, rx) = mpsc::channel(16);
    let api = TestApi::build(ApiConfig::default(), |s| s.with_access_events(tx)).await;
    (api, rx)
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

#[tokio::test]
async fn writes_that_end_access_send_events_after_commit() {
    use AccessChangeReason::{CredentialRevoked, Deleted, NotActive};
    let (api, mut rx) = api_with_events().await;
    for id in ["a", "b", "c"] {
        api.create_device(json!({"id": id, "state": "active"})).await;
    }
    assert_events(&mut rx, &[]);

    // PATCH: only a move away from `active` counts; a failed PATCH sends nothing.
    let patch =
        |id: &str, body: Value| api.patch(&format!("/api/v1/devices/{id}")).json(&body).send();
    patch("a", json!({"name": "renamed"})).await.assert_status(200);
    assert_events(&mut rx, &[]);
    patch("a", json!({"state": "suspended"})).await.assert_status(200);
    assert_events(&mut rx, &[("a", NotActive)]);
    patch("a", json!({"state": "active"})).await.assert_status(200);
    assert_events(&mut rx, &[]);
    patch("a", json!({"state": "registered"})).await.assert_problem(409, "illegal_transition");
    api.patch("/api/v1/devices/a")
        .header("if-match", "\"1\"")
        .json(&json!({"state": "suspended"}))
        .send()
        .await
        .assert_problem(412, "precondition_failed");
    assert_events(&mut rx, &[]);

    // Revoking a credential.
    let cred = api.post("/api/v1/devices/b/credentials").json(&json!({})).send().await.json();
    assert_events(&mut rx, &[]);
    let path = format!("/api/v1/devices/b/credentials/{}", cred["id"].as_str().unwrap());
    api.delete(&path).send().await.assert_status(200);
    assert_events(&mut rx, &[("b", CredentialRevoked)]);
    api.delete("/api/v1/devices/b/credentials/cred_0000000000000000")
        .send()
        .await
        .assert_problem(404, "credential_not_found");
    assert_events(&mut rx, &[]);

    // Deleting a device.
    api.delete("/api/v1/devices/c").send().await.assert_status(204);
    assert_events(&mut rx, &[("c", Deleted)]);
    api.delete("/api/v1/devices/c").send().await.assert_problem(404, "device_not_found");
    assert_events(&mut rx, &[]);
}

#[tokio::test]
async fn imports_send_events_for_devices_they_move_away_from_active() {
    use AccessChangeReason::NotActive;
    let (api, mut rx) = api_with_events().await;
    for id in ["a", "b", "c", "d"] {
        api.create_device(json!({"id": id, "state": "active"})).await;
    }
    let jsonl = concat!(
        "{\"id\":\"a\",\"state\":\"suspended\"}\n", // updated away from active: event
        "{\"id\":\"b\",\"name\":\"only a name\"}\n", // updated, no state: none
        "{\"id\":\"c\",\"state\":\"suspended\"}\n", // suspended then back to active in the
        "{\"id\":\"c\",\"state\":\"active\"}\n",    // same transaction: none
        "{\"id\":\"d\",\"state\":\"registered\"}\n", // illegal transition, rejected: none
        "{\"id\":\"new\",\"state\":\"active\"}\n",  // created: none
    );
    let report = api
        .post("/api/v1/devices:import")
        .raw("application/x-ndjson", jsonl)
        .send()
        .await
        .assert_status(200)
        .json();
    assert_eq!(report["rejected"], 1, "{report}");
    assert_events(&mut rx, &[("a", NotActive)]);

    // A row that sets the state the device already has changes nothing and sends nothing.
    api.post("/api/v1/devices:import")
        .raw("application/x-ndjson", "{\"id\":\"a\",\"state\":\"suspended\"}\n")
        .send()
        .await
        .assert_status(200);
    assert_events(&mut rx, &[]);

    // An abandoned atomic import commits nothing and sends nothing.
    let jsonl = "{\"id\":\"b\",\"state\":\"suspended\"}\n{\"id\":\"bad id\"}\n";
    let report = api
        .post("/api/v1/devices:import?atomic=true")
        .raw("application/x-ndjson", jsonl)
        .send()
        .await
        .assert_status(200)
        .json();
    assert_eq!(report["committed"], false, "{report}");
    assert_events(&mut rx, &[]);
    let report = api
        .post("/api/v1/devices:import?atomic=true")
        .raw("application/x-ndjson", "{\"id\":\"b\",\"state\":\"decommissioned\"}\n")
        .send()
        .await
        .assert_status(200)
        .json();
    assert_eq!(report["committed"], true, "{report}");
    assert_events(&mut rx, &[("b", NotActive)]);
}

#[tokio::test]
async fn a_full_channel_holds_the_request_until_there_is_room() {
    let (tx, mut rx) = mpsc::channel(1);
    let api = TestApi::build(ApiConfig::default(), |s| s.with_access_events(tx)).await;
    for id in ["a", "b"] {
        api.create_device(json!({"id": id, "state": "active"})).await;
    }
    api.delete("/api/v1/devices/a").send().await.assert_status(204);
    // The channel is full: the next delete commits, then waits for room rather than dropping.
    let second = api.delete("/api/v1/devices/b").send();
    tokio::pin!(second);
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(200), &mut second).await.is_err(),
        "the request finished although its event could not be queued"
    );
    assert_eq!(rx.recv().await.unwrap().device_id.as_str(), "a");
    second.await.assert_status(204);
    assert_eq!(rx.recv().await.unwrap().device_id.as_str(), "b");
}
