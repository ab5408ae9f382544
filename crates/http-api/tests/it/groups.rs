//! Groups: static and dynamic, members, the devices in a group, paging.

use serde_json::json;

use crate::api::{TestApi, ids};

async fn fleet() -> TestApi {
    let api = TestApi::new().await;
    for (id, site) in [("a", "berlin"), ("b", "berlin"), ("c", "paris"), ("d", "paris")] {
        api.create_device(json!({"id": id, "tags": {"site": site}})).await;
    }
    api
}

#[tokio::test]
async fn static_group_members() {
    let api = fleet().await;
    let resp = api
        .post("/api/v1/groups")
        .json(&json!({"name": "pilot", "description": "first wave"}))
        .send()
        .await
        .assert_status(201);
    assert_eq!(resp.header("location"), Some("/api/v1/groups/pilot"));
    let group = resp.json();
    assert_eq!(
        group,
        json!({
            "name": "pilot",
            "description": "first wave",
            "kind": "static",
            "filter": null,
            "created_at": "2026-11-26T12:00:00Z",
            "updated_at": "2026-11-26T12:00:00Z",
            "version": 1,
        })
    );
    let members = |ids: &[&str]| json!({"device_ids": ids});
    api.post("/api/v1/groups/pilot/members")
        .json(&members(&["c", "a", "b"]))
        .send()
        .await
        .assert_status(204);
    // Adding a member twice is a no-op.
    api.post("/api/v1/groups/pilot/members").json(&members(&["a"])).send().await.assert_status(204);
    let page = api.get("/api/v1/groups/pilot/devices").send().await.assert_status(200).json();
    assert_eq!(ids(&page), ["a", "b", "c"]);

    api.delete("/api/v1/groups/pilot/members/b").send().await.assert_status(204);
    api.delete("/api/v1/groups/pilot/members/b").send().await.assert_status(204);
    let page = api.get("/api/v1/groups/pilot/devices").send().await.assert_status(200).json();
    assert_eq!(ids(&page), ["a", "c"]);

    // The list query narrows a group's devices and pages them.
    let page = api
        .get("/api/v1/groups/pilot/devices?tag=site=paris")
        .send()
        .await
        .assert_status(200)
        .json();
    assert_eq!(ids(&page), ["c"]);
    let page =
        api.get("/api/v1/groups/pilot/devices?limit=1").send().await.assert_status(200).json();
    assert_eq!(ids(&page), ["a"]);
    let cursor = page["next_cursor"].as_str().unwrap();
    let page = api
        .get(&format!("/api/v1/groups/pilot/devices?limit=1&cursor={cursor}"))
        .send()
        .await
        .assert_status(200)
        .json();
    assert_eq!(ids(&page), ["c"]);
    assert!(page["next_cursor"].is_null());

    // An empty group is an empty page, not a missing group.
    api.post("/api/v1/groups").json(&json!({"name": "empty"})).send().await.assert_status(201);
    let page = api.get("/api/v1/groups/empty/devices").send().await.assert_status(200).json();
    assert_eq!(page, json!({"items": [], "next_cursor": null}));

    // Deleting a device removes it from its groups.
    api.delete("/api/v1/devices/a").send().await.assert_status(204);
    let page = api.get("/api/v1/groups/pilot/devices").send().await.assert_status(200).json();
    assert_eq!(ids(&page), ["c"]);
}

#[tokio::test]
async fn dynamic_group_follows_its_filter() {
    let api = fleet().await;
    let group = api
        .post("/api/v1/groups")
        .json(&json!({"name": "berlin", "filter": "tags.site = 'berlin'"}))
        .send()
        .await
        .assert_status(201)
        .json();
    assert_eq!(group["kind"], "dynamic");
    assert_eq!(group["filter"], "tags.site = 'berlin'");
    assert_eq!(group["description"], "");
    let page = api.get("/api/v1/groups/berlin/devices").send().await.assert_status(200).json();
    assert_eq!(ids(&page), ["a", "b"]);

    // Membership is evaluated at read time.
    api.patch("/api/v1/devices/c")
        .json(&json!({"tags": {"site": "berlin"}}))
        .send()
        .await
        .assert_status(200);
    let page = api.get("/api/v1/groups/berlin/devices").send().await.assert_status(200).json();
    assert_eq!(ids(&page), ["a", "b", "c"]);

    let group = api
        .patch("/api/v1/groups/berlin")
        .json(&json!({"filter": "tags.site = 'paris'", "description": "now paris"}))
        .send()
        .await
        .assert_status(200)
        .json();
    assert_eq!(group["filter"], "tags.site = 'paris'");
    assert_eq!(group["description"], "now paris");
    assert_eq!(group["version"], 2);
    let page = api.get("/api/v1/groups/berlin/devices").send().await.assert_status(200).json();
    assert_eq!(ids(&page), ["d"]);

    let got = api.get("/api/v1/groups/berlin").send().await.assert_status(200).json();
    assert_eq!(got, group);
    api.delete("/api/v1/groups/berlin").send().await.assert_status(204);
    api.get("/api/v1/groups/berlin").send().await.assert_problem(404, "group_not_found");
    // The devices stay.
    api.get("/api/v1/devices/d").send().await.assert_status(200);
}

#[tokio::test]
async fn groups_page_by_name() {
    let api = TestApi::new().await;
    for name in ["g3", "g1", "g5", "g2", "g4"] {
        api.post("/api/v1/groups").json(&json!({"name": name})).send().await.assert_status(201);
    }
    let mut seen = Vec::new();
    let mut url = "/api/v1/groups?limit=2".to_owned();
    loop {
        let page = api.get(&url).send().await.assert_status(200).json();
        let names: Vec<String> = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["name"].as_str().unwrap().to_owned())
            .collect();
        seen.push(names);
        match page["next_cursor"].as_str() {
            Some(c) => url = format!("/api/v1/groups?limit=2&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen, [vec!["g1", "g2"], vec!["g3", "g4"], vec!["g5"]]);
}
