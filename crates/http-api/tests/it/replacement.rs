//! Device replacement (RMA): `POST /api/v1/devices/{id}/replace`, its result, the links shown on
//! both devices, the access-change event for the replaced device, roles and error codes.

use domain::{AccessChangeReason, DeviceAccessChange, DeviceId, Role};
use http_api::ApiConfig;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::api::{Req, TestApi, ids};

async fn api_with_events() -> (TestApi, mpsc::Receiver<DeviceAccessChange>) {
    let (tx, rx) = mpsc::channel(16);
    let api = TestApi::build(ApiConfig::default(), |s| s.with_access_events(tx)).await;
    (api, rx)
}

/// The access-change events sent so far.
fn events(rx: &mut mpsc::Receiver<DeviceAccessChange>) -> Vec<DeviceAccessChange> {
    let mut got = Vec::new();
    while let Ok(e) = rx.try_recv() {
        got.push(e);
    }
    got
}

fn replace<'a>(api: &'a TestApi, old: &str, body: &Value) -> Req<'a> {
    api.post(&format!("/api/v1/devices/{old}/replace")).json(body)
}

#[tokio::test]
async fn replace_moves_identity_links_both_and_cuts_the_old_device_off() {
    let (api, mut rx) = api_with_events().await;
    api.create_device(json!({
        "id": "old", "state": "active", "name": "Boiler 7",
        "tags": {"site": "berlin", "rack": "4"}, "attributes": {"model": "x1", "slot": 2},
    }))
    .await;
    api.create_device(json!({
        "id": "new", "tags": {"site": "paris", "hw": "rev2"}, "attributes": {"serial": "S9"},
    }))
    .await;
    api.post("/api/v1/groups").json(&json!({"name": "boilers"})).send().await.assert_status(201);
    api.post("/api/v1/groups/boilers/members")
        .json(&json!({"device_ids": ["old"]}))
        .send()
        .await
        .assert_status(204);
    let cred = api.post("/api/v1/devices/old/credentials").json(&json!({})).send().await.json();
    assert!(events(&mut rx).is_empty());

    // Viewers may not replace; nothing happens then.
    replace(&api, "old", &json!({"with": "new"}))
        .role(Role::Viewer)
        .send()
        .await
        .assert_problem(403, "forbidden");
    assert!(events(&mut rx).is_empty());

    api.advance_millis(1000);
    let r = replace(&api, "old", &json!({"with": "new"}))
        .role(Role::Operator)
        .send()
        .await
        .assert_status(200)
        .json();
    assert_eq!(
        (&r["created"], &r["moved"], &r["revoked"]),
        (
            &json!(false),
            &json!({"tags": 2, "attributes": 2, "groups": 1}),
            &json!({"credentials": 1, "certificates": 0})
        )
    );
    assert_eq!(
        (&r["replaced"]["state"], &r["replaced"]["replaced_by"], &r["replaced"]["version"]),
        (&json!("retired"), &json!("new"), &json!(3))
    );
    assert_eq!(r["successor"]["replaces"], "old");
    assert_eq!(
        events(&mut rx),
        [DeviceAccessChange {
            device_id: DeviceId::new("old").unwrap(),
            reason: AccessChangeReason::NotActive,
        }]
    );

    let old = api.get("/api/v1/devices/old").send().await.assert_status(200);
    assert_eq!(old.header("etag"), Some("\"3\""));
    let old = old.json();
    assert_eq!((&old["state"], &old["replaced_by"]), (&json!("retired"), &json!("new")));
    assert!(old.get("replaces").is_none(), "{old}");
    assert!(old["connectivity"].is_object(), "history stays readable: {old}");
    let new = api.get("/api/v1/devices/new").send().await.assert_status(200).json();
    assert_eq!(new["replaces"], "old");
    assert!(new.get("replaced_by").is_none(), "{new}");
    assert_eq!(new["tags"], json!({"hw": "rev2", "rack": "4", "site": "berlin"}));
    assert_eq!(new["attributes"], json!({"model": "x1", "serial": "S9", "slot": 2}));
    assert_eq!(new["state"], "registered", "an existing successor keeps its state");
    let members = api.get("/api/v1/groups/boilers/devices").send().await.assert_status(200).json();
    assert_eq!(ids(&members), ["new"]);
    let creds = api.get("/api/v1/devices/old/credentials").send().await.json();
    assert_eq!(creds["items"][0]["id"], cred["id"]);
    assert_eq!(creds["items"][0]["revoked_at"], "2026-11-26T12:00:01Z");
    // Lists show the links too.
    let listed = api.get("/api/v1/devices").send().await.json();
    assert_eq!(ids(&listed), ["new", "old"]);
    assert_eq!(
        (&listed["items"][0]["replaces"], &listed["items"][1]["replaced_by"]),
        (&json!("old"), &json!("new"))
    );

    let audit = api.get("/api/v1/audit?limit=1000").send().await.assert_status(200).json();
    let last = audit["items"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (&last["action"], &last["resource"]),
        (&json!("device.replace"), &json!("device/old"))
    );
    assert_eq!(last["after"]["successor"], "new");
}

#[tokio::test]
async fn replace_creates_a_missing_successor_registered() {
    let api = TestApi::new().await;
    api.create_device(json!({"id": "old", "state": "active", "tags": {"site": "oslo"}})).await;
    let r = replace(&api, "old", &json!({"with": "fresh"})).send().await.assert_status(200).json();
    assert_eq!(r["created"], true);
    let fresh = api.get("/api/v1/devices/fresh").send().await.assert_status(200).json();
    assert_eq!(
        (&fresh["state"], &fresh["version"], &fresh["tags"], &fresh["replaces"]),
        (&json!("registered"), &json!(1), &json!({"site": "oslo"}), &json!("old"))
    );
}

#[tokio::test]
async fn replace_errors_have_stable_codes_and_change_nothing() {
    let (api, mut rx) = api_with_events().await;
    for (id, state) in [("old", "active"), ("a", "active"), ("decom", "active")] {
        api.create_device(json!({"id": id, "state": state})).await;
    }
    api.patch("/api/v1/devices/decom")
        .json(&json!({"state": "decommissioned"}))
        .send()
        .await
        .assert_status(200);
    replace(&api, "a", &json!({"with": "b"})).send().await.assert_status(200);
    let tags = |p: &str| -> Value {
        (0..40).map(|i| (format!("{p}{i}"), json!("v"))).collect::<serde_json::Map<_, _>>().into()
    };
    api.create_device(json!({"id": "crowded", "tags": tags("c")})).await;
    api.create_device(json!({"id": "full", "tags": tags("f")})).await;
    events(&mut rx);
    let audit_len = || async {
        let audit = api.get("/api/v1/audit?limit=1000").send().await.json();
        audit["items"].as_array().unwrap().len()
    };
    let before = audit_len().await;

    let cases: &[(&str, Value, u16, &str)] = &[
        ("ghost", json!({"with": "new"}), 404, "device_not_found"),
        ("old", json!({"with": "old"}), 422, "replace_same_device"),
        ("old", json!({"with": "bad id"}), 400, "invalid_device_id"),
        ("bad%20id", json!({"with": "new"}), 400, "invalid_device_id"),
        ("old", json!({"with": "new", "force": true}), 400, "unknown_field"),
        ("old", json!({}), 400, "invalid_body"),
        ("a", json!({"with": "new"}), 409, "device_retired"),
        ("old", json!({"with": "decom"}), 409, "successor_out_of_service"),
        ("old", json!({"with": "a"}), 409, "successor_out_of_service"),
        ("old", json!({"with": "b"}), 409, "successor_already_replaces"),
        ("crowded", json!({"with": "full"}), 422, "validation_failed"),
    ];
    for (old, body, status, code) in cases {
        let problem = replace(&api, old, body).send().await.assert_problem(*status, code);
        assert!(!problem["detail"].as_str().unwrap().is_empty(), "{problem}");
    }
    assert!(events(&mut rx).is_empty(), "a refused replacement cuts nobody off");
    assert_eq!(audit_len().await, before, "a refused replacement writes nothing");
    let problem = replace(&api, "a", &json!({"with": "new"})).send().await.json();
    assert_eq!(
        problem["detail"],
        "device a is retired (replaced by b); a retired device cannot be replaced"
    );
    assert!(api.get("/api/v1/devices/new").send().await.status.is_client_error());
}
