//! Configuration profiles over REST: `/api/v1/config-profiles` (CRUD, validation, `ETag` and
//! `If-Match`, dry runs that write nothing), `GET /api/v1/devices/{id}/twin/effective` with
//! `?explain=true`, the blast radius of `PATCH /api/v1/devices/{id}?dry_run=true`, and the wake
//! of the server's recompute task.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use domain::{Timestamp, TwinLimits, TwinPolicy};
use http_api::ApiConfig;
use serde_json::{Value, json};
use store::Store as _;
use tokio::sync::Notify;

use crate::api::TestApi;

const PROFILES: &str = "/api/v1/config-profiles";

async fn api_with(policy: TwinPolicy) -> (TestApi, Arc<Notify>) {
    let wake = Arc::new(Notify::new());
    let w = Arc::clone(&wake);
    let api = TestApi::build(ApiConfig::default(), move |s| {
        s.with_twin_policy(policy).with_recompute_wake(w)
    })
    .await;
    (api, wake)
}

/// Whether the recompute task was woken since the last call.
async fn woken(wake: &Notify) -> bool {
    tokio::time::timeout(Duration::from_millis(50), wake.notified()).await.is_ok()
}

/// Drains the recompute queue as the server's task would.
async fn recompute(api: &TestApi) -> u64 {
    let mut taken = 0;
    loop {
        let done = api
            .store
            .recompute_twins(NonZeroU32::MIN.saturating_add(99), &TwinPolicy::default(), api.now())
            .await
            .expect("recompute the queued twins");
        taken += done.taken;
        if done.taken < 100 {
            return taken;
        }
    }
}

async fn audit_actions(api: &TestApi) -> Vec<String> {
    let page = api.get("/api/v1/audit?limit=1000").send().await.assert_status(200).json();
    page["items"]
        .as_array()
        .expect("a page has items")
        .iter()
        .map(|r| r["action"].as_str().unwrap_or_default().to_owned())
        .filter(|a| a.starts_with("config_profile."))
        .collect()
}

#[tokio::test]
async fn profiles_are_created_read_listed_changed_and_deleted() {
    let (api, wake) = api_with(TwinPolicy::default()).await;
    let resp = api
        .post(PROFILES)
        .json(&json!({
            "name": "base",
            "description": "every device",
            "target": "fleet",
            "document": {"interval": 60, "led": {"color": "green"}},
        }))
        .send()
        .await
        .assert_status(201);
    assert_eq!(resp.header("location"), Some("/api/v1/config-profiles/base"));
    assert_eq!(resp.header("etag"), Some("\"1\""));
    let p = resp.json();
    assert_eq!(p["name"], "base");
    assert_eq!(p["target"], "fleet");
    assert_eq!(p["priority"], 0);
    assert_eq!(p["version"], 1);
    assert_eq!(p["document"], json!({"interval": 60, "led": {"color": "green"}}));
    assert_eq!(p["created_at"], Timestamp::from_millis(crate::api::START_MILLIS).to_rfc3339());
    assert!(woken(&wake).await, "a created profile wakes the recompute task");

    api.post("/api/v1/groups").json(&json!({"name": "a"})).send().await.assert_status(201);
    api.post(PROFILES)
        .json(&json!({"name": "a-prof", "target": "group:a", "priority": -5, "document": {}}))
        .send()
        .await
        .assert_status(201);
    api.post(PROFILES)
        .json(&json!({"name": "base", "target": "fleet", "document": {}}))
        .send()
        .await
        .assert_problem(409, "config_profile_exists");

    let resp = api.get(&format!("{PROFILES}/base")).send().await.assert_status(200);
    assert_eq!(resp.header("etag"), Some("\"1\""));
    assert_eq!(resp.json()["description"], "every device");

    let names = |page: &Value| -> Vec<String> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().into())
            .collect()
    };
    let page = api.get(PROFILES).send().await.assert_status(200).json();
    assert_eq!(names(&page), ["a-prof", "base"]);
    assert_eq!(page["next_after"], Value::Null);
    let page = api.get(&format!("{PROFILES}?limit=1")).send().await.assert_status(200).json();
    assert_eq!(names(&page), ["a-prof"]);
    assert_eq!(page["next_after"], "a-prof");
    let page = api.get(&format!("{PROFILES}?after=a-prof")).send().await.assert_status(200).json();
    assert_eq!(names(&page), ["base"]);
    let page =
        api.get(&format!("{PROFILES}?target=group:a")).send().await.assert_status(200).json();
    assert_eq!(names(&page), ["a-prof"]);
    assert_eq!(page["items"][0]["priority"], -5);

    // A merge patch of the document with the other fields, guarded by If-Match.
    api.advance_millis(1000);
    let resp = api
        .patch(&format!("{PROFILES}/base"))
        .header("if-match", "\"1\"")
        .raw(
            "application/merge-patch+json",
            json!({"priority": 3, "document": {"led": {"color": null, "on": true}}}).to_string(),
        )
        .send()
        .await
        .assert_status(200);
    assert_eq!(resp.header("etag"), Some("\"2\""));
    let p = resp.json();
    assert_eq!(p["document"], json!({"interval": 60, "led": {"on": true}}));
    assert_eq!(p["priority"], 3);
    assert_eq!(p["updated_at"], api.now().to_rfc3339());
    assert!(woken(&wake).await);
    let problem = api
        .patch(&format!("{PROFILES}/base"))
        .header("if-match", "\"1\"")
        .json(&json!({"description": "x"}))
        .send()
        .await
        .assert_problem(412, "precondition_failed");
    assert!(problem["detail"].as_str().unwrap().contains("current version is 2"), "{problem}");
    api.patch(&format!("{PROFILES}/base"))
        .header("if-match", "\"1\"")
        .json(&json!({"document": {"x": 1}}))
        .send()
        .await
        .assert_problem(412, "precondition_failed");
    api.delete(&format!("{PROFILES}/base"))
        .header("if-match", "\"1\"")
        .send()
        .await
        .assert_problem(412, "precondition_failed");
    api.delete(&format!("{PROFILES}/base"))
        .header("if-match", "\"2\"")
        .send()
        .await
        .assert_status(204);
    assert!(woken(&wake).await);
    api.get(&format!("{PROFILES}/base"))
        .send()
        .await
        .assert_problem(404, "config_profile_not_found");
    api.delete(&format!("{PROFILES}/base"))
        .send()
        .await
        .assert_problem(404, "config_profile_not_found");
    api.patch(&format!("{PROFILES}/base"))
        .json(&json!({"priority": 1}))
        .send()
        .await
        .assert_problem(404, "config_profile_not_found");
    // A group with a profile attached cannot go.
    api.delete("/api/v1/groups/a").send().await.assert_problem(409, "conflict");

    assert_eq!(
        audit_actions(&api).await,
        [
            "config_profile.create",
            "config_profile.create",
            "config_profile.update",
            "config_profile.delete"
        ]
    );
}

#[tokio::test]
async fn bad_profiles_are_refused_with_stable_codes() {
    let policy = TwinPolicy {
        limits: TwinLimits { max_section_bytes: 100, max_depth: 3 },
        ..TwinPolicy::default()
    };
    let (api, wake) = api_with(policy).await;
    let create = |body: Value| api.post(PROFILES).json(&body).send();
    create(json!({"name": "a b", "target": "fleet", "document": {}}))
        .await
        .assert_problem(422, "validation_failed");
    let problem = create(json!({"name": "p", "target": "everyone", "document": {}}))
        .await
        .assert_problem(422, "validation_failed");
    assert!(problem["detail"].as_str().unwrap().contains("group:<name>"), "{problem}");
    create(json!({"name": "p", "target": "group:a b", "document": {}}))
        .await
        .assert_problem(422, "validation_failed");
    let problem =
        create(json!({"name": "p", "target": "fleet", "priority": 1_000_001, "document": {}}))
            .await
            .assert_problem(422, "validation_failed");
    assert!(problem["detail"].as_str().unwrap().contains("priority"), "{problem}");
    create(
        json!({"name": "p", "target": "fleet", "description": "x".repeat(1025), "document": {}}),
    )
    .await
    .assert_problem(422, "validation_failed");
    create(json!({"name": "p", "target": "group:ghost", "document": {}}))
        .await
        .assert_problem(404, "group_not_found");
    create(json!({"name": "p", "target": "fleet", "document": [1]}))
        .await
        .assert_problem(400, "invalid_body");
    create(json!({"name": "p", "target": "fleet"})).await.assert_problem(400, "invalid_body");
    create(json!({"name": "p", "target": "fleet", "document": {}, "extra": 1}))
        .await
        .assert_problem(400, "unknown_field");
    let problem =
        create(json!({"name": "p", "target": "fleet", "document": {"blob": "x".repeat(100)}}))
            .await
            .assert_problem(413, "twin_too_large");
    assert!(problem["detail"].as_str().unwrap().contains("max_section_bytes (100)"), "{problem}");
    create(json!({"name": "p", "target": "fleet", "document": {"a": {"b": {"c": {"d": 1}}}}}))
        .await
        .assert_problem(413, "twin_too_large");
    api.post(&format!("{PROFILES}?dry=1"))
        .json(&json!({"name": "p", "target": "fleet", "document": {}}))
        .send()
        .await
        .assert_problem(400, "invalid_query");
    api.post(&format!("{PROFILES}?dry_run=yes"))
        .json(&json!({"name": "p", "target": "fleet", "document": {}}))
        .send()
        .await
        .assert_problem(400, "invalid_query");
    api.post(PROFILES)
        .raw("text/plain", "{}")
        .send()
        .await
        .assert_problem(415, "unsupported_media_type");
    assert!(!woken(&wake).await, "refused requests wake nothing");

    create(json!({"name": "p", "target": "fleet", "document": {"a": "x".repeat(60)}}))
        .await
        .assert_status(201);
    let patch = |body: Value| api.patch(&format!("{PROFILES}/p")).json(&body).send();
    patch(json!({"document": [1]})).await.assert_problem(400, "invalid_patch");
    patch(json!({"document": null})).await.assert_problem(400, "invalid_patch");
    patch(json!({"document": {"b": "y".repeat(40)}})).await.assert_problem(413, "twin_too_large");
    patch(json!({"target": "nowhere"})).await.assert_problem(422, "validation_failed");
    patch(json!({"target": "group:ghost"})).await.assert_problem(404, "group_not_found");
    patch(json!({"priority": -1_000_001})).await.assert_problem(422, "validation_failed");
    patch(json!({"name": "q"})).await.assert_problem(400, "unknown_field");
    api.patch(&format!("{PROFILES}/p"))
        .header("if-match", "W/\"1\"")
        .json(&json!({"priority": 1}))
        .send()
        .await
        .assert_problem(412, "precondition_failed");
    api.get(&format!("{PROFILES}/{}", "x".repeat(65)))
        .send()
        .await
        .assert_problem(404, "config_profile_not_found");
    api.get(&format!("{PROFILES}?target=nowhere"))
        .send()
        .await
        .assert_problem(422, "validation_failed");
    api.get(&format!("{PROFILES}?cursor=x")).send().await.assert_problem(400, "invalid_query");
    api.get(&format!("{PROFILES}?limit=0")).send().await.assert_problem(422, "validation_failed");
    let p = api.get(&format!("{PROFILES}/p")).send().await.assert_status(200).json();
    assert_eq!(p["version"], 1, "nothing refused was written");
}

#[tokio::test]
async fn dry_runs_preview_and_write_nothing() {
    let (api, wake) = api_with(TwinPolicy::default()).await;
    for id in ["d1", "d2", "d3"] {
        api.create_device(json!({"id": id, "state": "active"})).await;
    }
    api.post("/api/v1/groups").json(&json!({"name": "a"})).send().await.assert_status(201);
    api.post("/api/v1/groups/a/members")
        .json(&json!({"device_ids": ["d1"]}))
        .send()
        .await
        .assert_status(204);
    recompute(&api).await;
    let _ = woken(&wake).await;

    let dry = api
        .post(&format!("{PROFILES}?dry_run=true"))
        .json(&json!({"name": "base", "target": "fleet", "priority": 2, "document": {"a": 1}}))
        .send()
        .await
        .assert_status(200)
        .json();
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["profile"]["name"], "base");
    assert_eq!(dry["profile"]["version"], 1);
    assert_eq!(dry["profile"]["priority"], 2);
    assert_eq!(dry["affected"]["total"], 3);
    assert_eq!(dry["affected"]["by_state"], json!({"active": 3}));
    assert_eq!(dry["affected"]["sample"], json!(["d1", "d2", "d3"]));
    assert_eq!(dry["affected"]["offline"], 3);
    assert_eq!(dry["document_changes"], json!({"a": 1}));
    assert!(dry.get("previously_affected").is_none(), "{dry}");
    api.get(&format!("{PROFILES}/base"))
        .send()
        .await
        .assert_problem(404, "config_profile_not_found");
    api.post(&format!("{PROFILES}?dry_run=true"))
        .json(&json!({"name": "x", "target": "group:ghost", "document": {}}))
        .send()
        .await
        .assert_problem(404, "group_not_found");

    api.post(PROFILES)
        .json(&json!({"name": "base", "target": "fleet", "document": {"a": 1, "b": 2}}))
        .send()
        .await
        .assert_status(201);
    assert_eq!(recompute(&api).await, 3);
    let _ = woken(&wake).await;
    let audit_before = api.get("/api/v1/audit?limit=1000").send().await.json()["items"].clone();
    api.post(&format!("{PROFILES}?dry_run=true"))
        .json(&json!({"name": "base", "target": "fleet", "document": {}}))
        .send()
        .await
        .assert_problem(409, "config_profile_exists");

    // A change of target shows the devices of both targets.
    let dry = api
        .patch(&format!("{PROFILES}/base?dry_run=true"))
        .header("if-match", "\"1\"")
        .json(&json!({"target": "group:a", "document": {"a": null, "c": 3}}))
        .send()
        .await
        .assert_status(200)
        .json();
    assert_eq!(dry["profile"]["target"], "group:a");
    assert_eq!(dry["profile"]["version"], 2);
    assert_eq!(dry["profile"]["document"], json!({"b": 2, "c": 3}));
    assert_eq!(dry["affected"]["total"], 1);
    assert_eq!(dry["affected"]["sample"], json!(["d1"]));
    assert_eq!(dry["previously_affected"]["total"], 3);
    assert_eq!(dry["document_changes"], json!({"a": null, "c": 3}));
    api.patch(&format!("{PROFILES}/base?dry_run=true"))
        .header("if-match", "\"7\"")
        .json(&json!({"priority": 1}))
        .send()
        .await
        .assert_problem(412, "precondition_failed");
    let dry = api
        .patch(&format!("{PROFILES}/base?dry_run=true"))
        .json(&json!({"priority": 4}))
        .send()
        .await
        .assert_status(200)
        .json();
    assert_eq!(dry["document_changes"], json!({}));
    assert!(dry.get("previously_affected").is_none(), "{dry}");

    let dry =
        api.delete(&format!("{PROFILES}/base?dry_run=true")).send().await.assert_status(200).json();
    assert_eq!(dry["profile"]["version"], 1);
    assert_eq!(dry["affected"]["total"], 3);
    assert_eq!(dry["document_changes"], json!({"a": null, "b": null}));

    let p = api.get(&format!("{PROFILES}/base")).send().await.assert_status(200).json();
    assert_eq!((&p["version"], &p["target"]), (&json!(1), &json!("fleet")));
    let audit_after = api.get("/api/v1/audit?limit=1000").send().await.json()["items"].clone();
    assert_eq!(audit_after, audit_before, "dry runs audit nothing");
    assert_eq!(api.store.recompute_queue_len().await.unwrap(), 0, "dry runs queue nothing");
    assert!(!woken(&wake).await, "dry runs wake nothing");
}

#[tokio::test]
async fn effective_desired_state_names_the_source_of_each_property() {
    let (api, _wake) = api_with(TwinPolicy::default()).await;
    api.create_device(json!({"id": "dev-1", "state": "active", "tags": {"zone": "hot"}})).await;
    api.post("/api/v1/groups").json(&json!({"name": "a"})).send().await.assert_status(201);
    api.post("/api/v1/groups")
        .json(&json!({"name": "hot", "filter": "tags.zone = 'hot'"}))
        .send()
        .await
        .assert_status(201);
    api.post("/api/v1/groups/a/members")
        .json(&json!({"device_ids": ["dev-1"]}))
        .send()
        .await
        .assert_status(204);
    for body in [
        json!({"name": "base", "target": "fleet", "document": {"fan": "auto", "interval": 60, "led": "green"}}),
        json!({"name": "a-prof", "target": "group:a", "priority": 10, "document": {"fan": "low", "heater": true}}),
        json!({"name": "hot-prof", "target": "group:hot", "priority": 20, "document": {"fan": "max"}}),
    ] {
        api.post(PROFILES).json(&body).send().await.assert_status(201);
    }
    api.patch("/api/v1/devices/dev-1/twin")
        .json(&json!({"desired": {"led": "blue", "heater": null}}))
        .send()
        .await
        .assert_status(200);

    let path = "/api/v1/devices/dev-1/twin/effective";
    let eff = api.get(path).send().await.assert_status(200).json();
    // A null in the device's own patch only deletes from its own layer: the group's heater stays.
    let expected = json!({"fan": "max", "heater": true, "interval": 60, "led": "blue"});
    assert_eq!(eff["device_id"], "dev-1");
    assert_eq!(eff["desired"], expected);
    assert!(eff.get("layers").is_none() && eff.get("sources").is_none(), "{eff}");

    recompute(&api).await;
    let twin = api.get("/api/v1/devices/dev-1/twin").send().await.assert_status(200).json();
    assert_eq!(twin["desired"]["document"], expected);
    let eff = api.get(&format!("{path}?explain=true")).send().await.assert_status(200).json();
    assert_eq!(eff["desired"], expected);
    assert_eq!(eff["stored_version"], twin["desired"]["version"]);
    assert_eq!(eff["pending_recompute"], false);
    assert_eq!(
        eff["layers"],
        json!([
            {"source": "profile:base", "kind": "profile", "profile": "base", "target": "fleet",
             "priority": 0, "document": {"fan": "auto", "interval": 60, "led": "green"}},
            {"source": "profile:a-prof", "kind": "profile", "profile": "a-prof", "target": "group:a",
             "priority": 10, "document": {"fan": "low", "heater": true}},
            {"source": "profile:hot-prof", "kind": "profile", "profile": "hot-prof",
             "target": "group:hot", "priority": 20, "document": {"fan": "max"}},
            {"source": "device", "kind": "device", "document": {"led": "blue"}},
        ])
    );
    assert_eq!(
        eff["sources"],
        json!({
            "/fan": "profile:hot-prof",
            "/heater": "profile:a-prof",
            "/interval": "profile:base",
            "/led": "device",
        })
    );

    // A committed change shows at once; the stored document follows with the recompute.
    api.patch("/api/v1/devices/dev-1").json(&json!({"tags": {}})).send().await.assert_status(200);
    let eff = api.get(path).send().await.assert_status(200).json();
    assert_eq!(
        eff["desired"],
        json!({"fan": "low", "heater": true, "interval": 60, "led": "blue"})
    );
    assert_eq!(eff["pending_recompute"], true);
    recompute(&api).await;
    let eff = api.get(path).send().await.assert_status(200).json();
    assert_eq!(eff["pending_recompute"], false);

    api.get("/api/v1/devices/ghost/twin/effective")
        .send()
        .await
        .assert_problem(404, "device_not_found");
    api.get(&format!("{path}?explain=maybe")).send().await.assert_problem(400, "invalid_query");
    api.get(&format!("{path}?verbose=true")).send().await.assert_problem(400, "invalid_query");
}

#[tokio::test]
async fn a_device_dry_run_shows_its_blast_radius_and_changes_nothing() {
    let (api, wake) = api_with(TwinPolicy::default()).await;
    api.create_device(json!({"id": "dev-1", "state": "active", "tags": {"zone": "cold"}})).await;
    for (name, filter) in [("hot", "tags.zone = 'hot'"), ("cold", "tags.zone = 'cold'")] {
        api.post("/api/v1/groups")
            .json(&json!({"name": name, "filter": filter}))
            .send()
            .await
            .assert_status(201);
    }
    for body in [
        json!({"name": "base", "target": "fleet", "document": {"fan": "auto"}}),
        json!({"name": "hot-prof", "target": "group:hot", "priority": 20, "document": {"fan": "max"}}),
        json!({"name": "cold-prof", "target": "group:cold", "document": {"heater": true}}),
    ] {
        api.post(PROFILES).json(&body).send().await.assert_status(201);
    }
    recompute(&api).await;
    let _ = woken(&wake).await;
    let before = api.get("/api/v1/devices/dev-1").send().await.assert_status(200).json();

    let dry = api
        .patch("/api/v1/devices/dev-1?dry_run=true")
        .header("if-match", &format!("\"{}\"", before["version"]))
        .json(&json!({"tags": {"zone": "hot"}}))
        .send()
        .await
        .assert_status(200)
        .json();
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["device"]["tags"], json!({"zone": "hot"}));
    assert_eq!(dry["device"]["version"], before["version"].as_u64().unwrap() + 1);
    assert_eq!(dry["groups"], json!({"joined": ["hot"], "left": ["cold"]}));
    assert_eq!(dry["profiles"], json!({"gained": ["hot-prof"], "lost": ["cold-prof"]}));
    assert_eq!(dry["desired"]["before"], json!({"fan": "auto", "heater": true}));
    assert_eq!(dry["desired"]["after"], json!({"fan": "max"}));
    assert_eq!(dry["desired"]["changes"], json!({"fan": "max", "heater": null}));

    // Nothing changed, nothing queued, nobody woken.
    let after = api.get("/api/v1/devices/dev-1").send().await.assert_status(200).json();
    assert_eq!(after["version"], before["version"]);
    assert_eq!(after["tags"], json!({"zone": "cold"}));
    assert_eq!(api.store.recompute_queue_len().await.unwrap(), 0);
    assert!(!woken(&wake).await);

    // A name change moves nothing; refusals are the real PATCH's.
    let dry = api
        .patch("/api/v1/devices/dev-1?dry_run=true")
        .json(&json!({"name": "Kiln"}))
        .send()
        .await
        .assert_status(200)
        .json();
    assert_eq!(dry["groups"], json!({"joined": [], "left": []}));
    assert_eq!(dry["desired"]["changes"], json!({}));
    api.patch("/api/v1/devices/dev-1?dry_run=true")
        .header("if-match", "\"99\"")
        .json(&json!({"name": "Kiln"}))
        .send()
        .await
        .assert_problem(412, "precondition_failed");
    api.patch("/api/v1/devices/dev-1?dry_run=true")
        .json(&json!({"state": "registered"}))
        .send()
        .await
        .assert_problem(409, "illegal_transition");
    api.patch("/api/v1/devices/ghost?dry_run=true")
        .json(&json!({"name": "x"}))
        .send()
        .await
        .assert_problem(404, "device_not_found");
    api.patch("/api/v1/devices/dev-1?dry=1")
        .json(&json!({"name": "x"}))
        .send()
        .await
        .assert_problem(400, "invalid_query");

    // The real change queues the device and wakes the recompute task.
    api.patch("/api/v1/devices/dev-1")
        .json(&json!({"tags": {"zone": "hot"}}))
        .send()
        .await
        .assert_status(200);
    assert!(woken(&wake).await);
    assert_eq!(recompute(&api).await, 1);
    let twin = api.get("/api/v1/devices/dev-1/twin").send().await.assert_status(200).json();
    assert_eq!(twin["desired"]["document"], json!({"fan": "max"}));
}
