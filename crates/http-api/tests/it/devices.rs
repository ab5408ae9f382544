//! Devices: CRUD, ETag/If-Match, list paging and filters, the inventory summary.

use domain::{AgentPayload, AgentReportUpdate, DeviceId, Timestamp};
use serde_json::{Value, json};
use store::Store as _;

use crate::api::{TestApi, ids};

#[tokio::test]
async fn create_read_update_delete() {
    let api = TestApi::new().await;
    let resp = api
        .post("/api/v1/devices")
        .json(&json!({
            "id": "sensor-01",
            "name": "Hall 1",
            "tags": {"site": "berlin", "floor": "2"},
            "attributes": {"model": "x1", "rev": 3},
        }))
        .send()
        .await
        .assert_status(201);
    assert_eq!(resp.header("etag"), Some("\"1\""));
    assert_eq!(resp.header("location"), Some("/api/v1/devices/sensor-01"));
    let created = resp.json();
    assert_eq!(
        created,
        json!({
            "id": "sensor-01",
            "name": "Hall 1",
            "tags": {"floor": "2", "site": "berlin"},
            "attributes": {"model": "x1", "rev": 3},
            "state": "registered",
            "created_at": "2026-11-26T12:00:00Z",
            "updated_at": "2026-11-26T12:00:00Z",
            "version": 1,
        })
    );

    let resp = api.get("/api/v1/devices/sensor-01").send().await.assert_status(200);
    assert_eq!(resp.header("etag"), Some("\"1\""));
    // Reading one device adds its connectivity; a device that never connected has only `false`
    // and nulls.
    let mut read = resp.json();
    let connectivity = read.as_object_mut().unwrap().remove("connectivity");
    assert_eq!(read, created);
    assert_eq!(
        connectivity,
        Some(json!({
            "connected": false, "connected_at": null, "disconnected_at": null,
            "remote_addr": null, "protocol": null, "last_disconnect_reason": null,
        }))
    );
    let summary = api.get("/api/v1/inventory/connectivity").send().await.assert_status(200).json();
    assert_eq!(summary, json!({"connected": 0, "ever_connected": 0, "total": 1}));

    api.advance_millis(1500);
    let resp = api
        .patch("/api/v1/devices/sensor-01")
        .header("if-match", "\"1\"")
        .json(&json!({"state": "active", "tags": {"site": "paris"}}))
        .send()
        .await
        .assert_status(200);
    assert_eq!(resp.header("etag"), Some("\"2\""));
    let updated = resp.json();
    assert_eq!(updated["state"], "active");
    assert_eq!(updated["tags"], json!({"site": "paris"}));
    assert_eq!(updated["name"], "Hall 1", "fields not in the patch stay");
    assert_eq!(updated["updated_at"], "2026-11-26T12:00:01.5Z");
    assert_eq!(updated["version"], 2);

    // The old ETag is stale now; `*` matches any version.
    let resp = api
        .patch("/api/v1/devices/sensor-01")
        .header("if-match", "\"1\"")
        .json(&json!({"name": "x"}))
        .send()
        .await;
    resp.assert_problem(412, "precondition_failed");
    let resp = api
        .patch("/api/v1/devices/sensor-01")
        .header("if-match", "*")
        .json(&json!({"name": "Hall 2"}))
        .send()
        .await
        .assert_status(200);
    assert_eq!(resp.header("etag"), Some("\"3\""));

    // An empty patch changes nothing.
    let resp =
        api.patch("/api/v1/devices/sensor-01").json(&json!({})).send().await.assert_status(200);
    assert_eq!(resp.json()["version"], 3);

    api.delete("/api/v1/devices/sensor-01")
        .header("if-match", "\"2\"")
        .send()
        .await
        .assert_problem(412, "precondition_failed");
    let resp = api
        .delete("/api/v1/devices/sensor-01")
        .header("if-match", "\"3\"")
        .send()
        .await
        .assert_status(204);
    assert!(resp.body.is_empty());
    api.get("/api/v1/devices/sensor-01").send().await.assert_problem(404, "device_not_found");
}

#[tokio::test]
async fn created_active_devices_start_active() {
    let api = TestApi::new().await;
    let d = api.create_device(json!({"id": "a", "state": "active"})).await;
    assert_eq!(d["state"], "active");
    assert_eq!(d["name"], "");
    assert_eq!(d["tags"], json!({}));
    assert_eq!(d["attributes"], json!({}));
}

#[tokio::test]
async fn reading_a_device_shows_what_its_agent_reported() {
    let api = TestApi::new().await;
    api.create_device(json!({"id": "gw-17", "state": "active"})).await;
    // Nothing reported: no `agent`.
    let read = api.get("/api/v1/devices/gw-17").send().await.assert_status(200).json();
    assert_eq!(read.get("agent"), None, "{read}");

    let payload = |v: Value| AgentPayload::parse(v.to_string().as_bytes(), 1024).unwrap();
    let device_id = DeviceId::new("gw-17").unwrap();
    let at = api.now();
    let facts = json!({"agent_version": "0.1.0", "os": "Debian GNU/Linux 12 (bookworm)"});
    let update = AgentReportUpdate::Facts {
        device_id: device_id.clone(),
        facts: payload(facts.clone()),
        at,
    };
    api.store.record_agent_reports(&[update]).await.unwrap();
    let read = api.get("/api/v1/devices/gw-17").send().await.assert_status(200).json();
    assert_eq!(
        read["agent"],
        json!({
            "facts": facts, "facts_reported_at": "2026-11-26T12:00:00Z",
            "health": null, "last_heartbeat_at": null, "heartbeats": 0,
        })
    );

    let health = json!({"ts": "2026-11-26T12:00:01Z", "uptime_secs": 12345, "cpu_percent": 3.5});
    let beat = |ms: i64| AgentReportUpdate::Heartbeat {
        device_id: device_id.clone(),
        health: payload(health.clone()),
        at: Timestamp::from_millis(at.millis() + ms),
    };
    api.store.record_agent_reports(&[beat(1_000), beat(31_000)]).await.unwrap();
    let resp = api.get("/api/v1/devices/gw-17").send().await.assert_status(200);
    assert_eq!(resp.header("etag"), Some("\"1\""), "reports are not versioned");
    assert_eq!(
        resp.json()["agent"],
        json!({
            "facts": facts, "facts_reported_at": "2026-11-26T12:00:00Z",
            "health": health, "last_heartbeat_at": "2026-11-26T12:00:31Z", "heartbeats": 2,
        })
    );
    // Lists leave it out.
    let list = api.get("/api/v1/devices").send().await.assert_status(200).json();
    assert_eq!(list["items"][0].get("agent"), None, "{list}");
}

/// Lists `path` page by page with `limit`, returning the ids of each page.
async fn pages(api: &TestApi, path: &str, limit: u32) -> Vec<Vec<String>> {
    let sep = if path.contains('?') { '&' } else { '?' };
    let mut cursor: Option<String> = None;
    let mut pages = Vec::new();
    loop {
        let mut url = format!("{path}{sep}limit={limit}");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page = api.get(&url).send().await.assert_status(200).json();
        pages.push(ids(&page));
        match &page["next_cursor"] {
            Value::Null => return pages,
            Value::String(c) => cursor = Some(c.clone()),
            other => panic!("next_cursor is {other}"),
        }
        assert!(pages.len() < 100, "paging does not end");
    }
}

async fn fleet() -> TestApi {
    let api = TestApi::new().await;
    let devices = [
        ("b-1", "berlin", "active"),
        ("b-2", "berlin", "registered"),
        ("b-3", "berlin", "active"),
        ("p-1", "paris", "active"),
        ("p-2", "paris", "registered"),
        ("x-1", "", "registered"),
    ];
    for (id, site, state) in devices {
        let tags =
            if site.is_empty() { json!({}) } else { json!({"site": site, "kind": "sensor"}) };
        api.create_device(json!({"id": id, "tags": tags, "state": state})).await;
    }
    api
}

#[tokio::test]
async fn list_pages_with_cursor() {
    let api = fleet().await;
    assert_eq!(
        pages(&api, "/api/v1/devices", 2).await,
        [vec!["b-1", "b-2"], vec!["b-3", "p-1"], vec!["p-2", "x-1"]]
    );
    assert_eq!(
        pages(&api, "/api/v1/devices", 4).await,
        [vec!["b-1", "b-2", "b-3", "p-1"], vec!["p-2", "x-1"]]
    );
    assert_eq!(
        pages(&api, "/api/v1/devices", 1000).await,
        [vec!["b-1", "b-2", "b-3", "p-1", "p-2", "x-1"]]
    );
}

#[tokio::test]
async fn default_page_size_comes_from_config() {
    let config = http_api::ApiConfig { default_page_size: 4, ..http_api::ApiConfig::default() };
    let api = TestApi::with_config(config).await;
    for i in 0..5 {
        api.create_device(json!({"id": format!("d{i}")})).await;
    }
    let page = api.get("/api/v1/devices").send().await.assert_status(200).json();
    assert_eq!(ids(&page), ["d0", "d1", "d2", "d3"]);
    assert!(page["next_cursor"].is_string());
}

#[tokio::test]
async fn list_filters_combine_with_and() {
    let api = fleet().await;
    let cases: &[(&str, &[&str])] = &[
        ("", &["b-1", "b-2", "b-3", "p-1", "p-2", "x-1"]),
        ("state=active", &["b-1", "b-3", "p-1"]),
        ("tag=site=berlin", &["b-1", "b-2", "b-3"]),
        ("tag=site=berlin&tag=kind=sensor&state=active", &["b-1", "b-3"]),
        ("tag=site=nowhere", &[]),
        ("id_prefix=p-", &["p-1", "p-2"]),
        (
            "filter=tags.site%20%3D%20%27paris%27%20or%20not%20has%20tags.site",
            &["p-1", "p-2", "x-1"],
        ),
        ("filter=state%20in%20(%27active%27)&id_prefix=b", &["b-1", "b-3"]),
        ("filter=has%20tags.site&state=registered&tag=site=paris", &["p-2"]),
    ];
    for (query, expected) in cases {
        let page =
            api.get(&format!("/api/v1/devices?{query}")).send().await.assert_status(200).json();
        assert_eq!(ids(&page), *expected, "{query}");
        assert!(page["next_cursor"].is_null());
    }
    // Filters and paging together.
    assert_eq!(
        pages(&api, "/api/v1/devices?state=active", 2).await,
        [vec!["b-1", "b-3"], vec!["p-1"]]
    );
}

#[tokio::test]
async fn inventory_summary_counts_every_state() {
    let api = fleet().await;
    api.patch("/api/v1/devices/p-1")
        .json(&json!({"state": "suspended"}))
        .send()
        .await
        .assert_status(200);
    let summary = api.get("/api/v1/inventory/summary").send().await.assert_status(200).json();
    assert_eq!(
        summary,
        json!({
            "total": 6,
            "by_state": {"registered": 3, "active": 2, "suspended": 1, "decommissioned": 0, "retired": 0},
        })
    );
    let empty = TestApi::new().await;
    let summary = empty.get("/api/v1/inventory/summary").send().await.assert_status(200).json();
    assert_eq!(summary["total"], 0);
    assert_eq!(summary["by_state"].as_object().unwrap().len(), 5);
}

#[tokio::test]
async fn lifecycle_walks_to_retired() {
    let api = TestApi::new().await;
    api.create_device(json!({"id": "d"})).await;
    for state in ["active", "suspended", "active", "decommissioned", "retired"] {
        let d = api
            .patch("/api/v1/devices/d")
            .json(&json!({"state": state}))
            .send()
            .await
            .assert_status(200)
            .json();
        assert_eq!(d["state"], state);
    }
    let resp = api.patch("/api/v1/devices/d").json(&json!({"state": "active"})).send().await;
    resp.assert_problem(409, "illegal_transition");
}
