//! Bad input: one test per stable error code, each checking status, code and problem+json.

use domain::Role;
use http_api::ApiConfig;
use serde_json::json;

use crate::api::TestApi;

async fn api_with_device() -> TestApi {
    let api = TestApi::new().await;
    api.create_device(json!({"id": "dev-1"})).await;
    api
}

#[tokio::test]
async fn malformed_json() {
    let api = TestApi::new().await;
    let resp = api.post("/api/v1/devices").raw("application/json", "{\"id\": ").send().await;
    resp.assert_problem(400, "malformed_json");
    let resp = api.post("/api/v1/devices").raw("application/json", "{\"id\" 1}").send().await;
    resp.assert_problem(400, "malformed_json");
}

#[tokio::test]
async fn wrong_type_is_invalid_body() {
    let api = TestApi::new().await;
    for body in [json!({"id": 5}), json!({"id": "a", "tags": ["x"]}), json!([]), json!({})] {
        let resp = api.post("/api/v1/devices").json(&body).send().await;
        resp.assert_problem(400, "invalid_body");
    }
}

#[tokio::test]
async fn unknown_field() {
    let api = api_with_device().await;
    let resp = api.post("/api/v1/devices").json(&json!({"id": "a", "colour": "red"})).send().await;
    let problem = resp.assert_problem(400, "unknown_field");
    assert!(problem["detail"].as_str().unwrap().contains("colour"), "{problem}");
    let resp = api.patch("/api/v1/devices/dev-1").json(&json!({"version": 3})).send().await;
    resp.assert_problem(400, "unknown_field");
    let resp =
        api.post("/api/v1/groups").json(&json!({"name": "g", "kind": "static"})).send().await;
    resp.assert_problem(400, "unknown_field");
    let resp = api
        .post("/api/v1/tokens")
        .json(&json!({"name": "t", "role": "viewer", "x": 1}))
        .send()
        .await;
    resp.assert_problem(400, "unknown_field");
}

#[tokio::test]
async fn invalid_device_id_in_body() {
    let api = TestApi::new().await;
    for id in ["", "a b", "a/b", &"x".repeat(129)] {
        let resp = api.post("/api/v1/devices").json(&json!({"id": id})).send().await;
        resp.assert_problem(400, "invalid_device_id");
    }
    api.post("/api/v1/groups").json(&json!({"name": "g"})).send().await.assert_status(201);
    let resp = api
        .post("/api/v1/groups/g/members")
        .json(&json!({"device_ids": ["ok", "not ok"]}))
        .send()
        .await;
    resp.assert_problem(400, "invalid_device_id");
}

#[tokio::test]
async fn invalid_device_id_in_path() {
    let api = TestApi::new().await;
    api.get("/api/v1/devices/bad%20id").send().await.assert_problem(400, "invalid_device_id");
    api.patch("/api/v1/devices/bad%2Fid")
        .json(&json!({}))
        .send()
        .await
        .assert_problem(400, "invalid_device_id");
    api.delete("/api/v1/devices/%C3%BC").send().await.assert_problem(400, "invalid_device_id");
    api.delete("/api/v1/groups/g/members/a%20b")
        .send()
        .await
        .assert_problem(400, "invalid_device_id");
}

#[tokio::test]
async fn invalid_filter_names_the_position() {
    let api = TestApi::new().await;
    let resp = api.get("/api/v1/devices?filter=tags.site%20%3D%20").send().await;
    let problem = resp.assert_problem(400, "invalid_filter");
    assert!(problem["detail"].as_str().unwrap().contains("position"), "{problem}");
    let resp = api
        .post("/api/v1/groups")
        .json(&json!({"name": "g", "filter": "state = 'nope'"}))
        .send()
        .await;
    resp.assert_problem(400, "invalid_filter");
}

#[tokio::test]
async fn validation_failed() {
    let api = api_with_device().await;
    let config = ApiConfig::default();
    let big = "x".repeat(config.max_attributes_bytes);
    let cases = [
        ("POST", "/api/v1/devices", json!({"id": "a", "tags": {"bad key": "x"}})),
        ("POST", "/api/v1/devices", json!({"id": "a", "attributes": {"blob": big}})),
        ("POST", "/api/v1/devices", json!({"id": "a", "attributes": [1, 2]})),
        ("POST", "/api/v1/devices", json!({"id": "a", "state": "sleeping"})),
        ("POST", "/api/v1/devices", json!({"id": "a", "state": "retired"})),
        ("POST", "/api/v1/devices", json!({"id": "a", "name": "tab\there"})),
        ("PATCH", "/api/v1/devices/dev-1", json!({"state": "gone"})),
        ("POST", "/api/v1/groups", json!({"name": "has space"})),
        ("POST", "/api/v1/groups", json!({"name": "g", "description": "d".repeat(1025)})),
        ("POST", "/api/v1/groups/nope/members", json!({"device_ids": []})),
        ("POST", "/api/v1/tokens", json!({"name": "t", "role": "root"})),
        ("POST", "/api/v1/tokens", json!({"name": "", "role": "viewer"})),
        ("POST", "/api/v1/tokens", json!({"name": "t", "role": "viewer", "expires_at": "soon"})),
        (
            "POST",
            "/api/v1/tokens",
            json!({"name": "t", "role": "viewer", "expires_at": "2020-01-01T00:00:00Z"}),
        ),
        ("POST", "/api/v1/tokens", json!({"name": "t", "role": "viewer", "expires_in_days": 0})),
        (
            "POST",
            "/api/v1/tokens",
            json!({"name": "t", "role": "viewer", "expires_in_days": 1, "expires_at": "2030-01-01T00:00:00Z"}),
        ),
    ];
    for (method, path, body) in cases {
        let resp = api.req(method.parse().unwrap(), path).json(&body).send().await;
        assert_eq!(resp.status, 422, "{method} {path} {body}: {}", resp.text());
        resp.assert_problem(422, "validation_failed");
    }
    for query in ["state=sleeping", "tag=novalue", "tag=bad%20key=x", "limit=0", "limit=1001"] {
        let resp = api.get(&format!("/api/v1/devices?{query}")).send().await;
        assert_eq!(resp.status, 422, "{query}: {}", resp.text());
        resp.assert_problem(422, "validation_failed");
    }
}

#[tokio::test]
async fn payload_too_large() {
    let api =
        TestApi::with_config(ApiConfig { max_body_bytes: 1024, ..ApiConfig::default() }).await;
    let body = json!({"id": "a", "name": "n".repeat(2000)});
    api.post("/api/v1/devices").json(&body).send().await.assert_problem(413, "payload_too_large");
}

#[tokio::test]
async fn unsupported_media_type() {
    let api = TestApi::new().await;
    let body = json!({"id": "a"}).to_string();
    api.post("/api/v1/devices")
        .body(body.clone())
        .send()
        .await
        .assert_problem(415, "unsupported_media_type");
    api.post("/api/v1/devices")
        .raw("text/plain", body)
        .send()
        .await
        .assert_problem(415, "unsupported_media_type");
    // A JSON content type with parameters is fine.
    api.post("/api/v1/devices")
        .raw("application/json; charset=utf-8", json!({"id": "a"}).to_string())
        .send()
        .await
        .assert_status(201);
}

#[tokio::test]
async fn illegal_transition() {
    let api = api_with_device().await;
    let resp = api.patch("/api/v1/devices/dev-1").json(&json!({"state": "retired"})).send().await;
    let problem = resp.assert_problem(409, "illegal_transition");
    assert!(problem["detail"].as_str().unwrap().contains("retired"), "{problem}");
}

#[tokio::test]
async fn precondition_failed() {
    let api = api_with_device().await;
    for if_match in ["\"2\"", "W/\"1\"", "1", "\"1\", \"2\""] {
        let resp = api
            .patch("/api/v1/devices/dev-1")
            .header("if-match", if_match)
            .json(&json!({"name": "x"}))
            .send()
            .await;
        resp.assert_problem(412, "precondition_failed");
    }
    let resp = api.delete("/api/v1/devices/dev-1").header("if-match", "\"7\"").send().await;
    resp.assert_problem(412, "precondition_failed");
}

#[tokio::test]
async fn not_found() {
    let api = TestApi::new().await;
    api.get("/api/v1/devices/nope").send().await.assert_problem(404, "device_not_found");
    api.patch("/api/v1/devices/nope")
        .json(&json!({}))
        .send()
        .await
        .assert_problem(404, "device_not_found");
    api.delete("/api/v1/devices/nope").send().await.assert_problem(404, "device_not_found");
    api.get("/api/v1/groups/nope").send().await.assert_problem(404, "group_not_found");
    api.get("/api/v1/groups/nope/devices").send().await.assert_problem(404, "group_not_found");
    api.get("/api/v1/groups/bad%20name").send().await.assert_problem(404, "group_not_found");
    api.delete("/api/v1/groups/nope").send().await.assert_problem(404, "group_not_found");
    api.delete("/api/v1/tokens/tok_0123456789abcdef")
        .send()
        .await
        .assert_problem(404, "token_not_found");
    api.delete("/api/v1/tokens/nope").send().await.assert_problem(404, "token_not_found");
    api.post("/api/v1/groups").json(&json!({"name": "g"})).send().await.assert_status(201);
    let resp =
        api.post("/api/v1/groups/g/members").json(&json!({"device_ids": ["ghost"]})).send().await;
    resp.assert_problem(404, "device_not_found");
}

#[tokio::test]
async fn duplicates() {
    let api = api_with_device().await;
    api.post("/api/v1/devices")
        .json(&json!({"id": "dev-1"}))
        .send()
        .await
        .assert_problem(409, "device_exists");
    api.post("/api/v1/groups").json(&json!({"name": "g"})).send().await.assert_status(201);
    api.post("/api/v1/groups")
        .json(&json!({"name": "g"}))
        .send()
        .await
        .assert_problem(409, "group_exists");
}

#[tokio::test]
async fn group_conflicts() {
    let api = api_with_device().await;
    api.post("/api/v1/groups")
        .json(&json!({"name": "dyn", "filter": "has tags.x"}))
        .send()
        .await
        .assert_status(201);
    api.post("/api/v1/groups").json(&json!({"name": "static"})).send().await.assert_status(201);
    let resp =
        api.post("/api/v1/groups/dyn/members").json(&json!({"device_ids": ["dev-1"]})).send().await;
    resp.assert_problem(409, "conflict");
    let resp =
        api.patch("/api/v1/groups/static").json(&json!({"filter": "has tags.x"})).send().await;
    resp.assert_problem(409, "conflict");
}

#[tokio::test]
async fn invalid_cursor() {
    let api = TestApi::new().await;
    for cursor in ["garbage", "c1zz", "c16120"] {
        let resp = api.get(&format!("/api/v1/devices?cursor={cursor}")).send().await;
        resp.assert_problem(400, "invalid_cursor");
        let resp = api.get(&format!("/api/v1/groups?cursor={cursor}")).send().await;
        resp.assert_problem(400, "invalid_cursor");
    }
}

#[tokio::test]
async fn invalid_query() {
    let api = TestApi::new().await;
    for path in [
        "/api/v1/devices?colour=red",
        "/api/v1/devices?limit=ten",
        "/api/v1/devices?state=active&state=suspended",
        "/api/v1/groups?filter=x",
        "/api/v1/audit?after=-1",
        "/api/v1/audit?after=1&after=2",
    ] {
        api.get(path).send().await.assert_problem(400, "invalid_query");
    }
}

#[tokio::test]
async fn unknown_route_and_wrong_method() {
    let api = TestApi::new().await;
    api.get("/api/v1/nothing-here").send().await.assert_problem(404, "not_found");
    api.get("/").no_auth().send().await.assert_problem(404, "not_found");
    api.req("PUT".parse().unwrap(), "/api/v1/devices")
        .send()
        .await
        .assert_problem(405, "method_not_allowed");
    api.req("DELETE".parse().unwrap(), "/healthz")
        .no_auth()
        .send()
        .await
        .assert_problem(405, "method_not_allowed");
}

#[tokio::test]
async fn metrics_without_a_handle_is_not_found() {
    let api = TestApi::new().await;
    api.get("/metrics").no_auth().send().await.assert_problem(404, "not_found");
}

#[tokio::test]
async fn request_ids_are_propagated_or_generated() {
    let api = TestApi::new().await;
    let resp = api.get("/api/v1/devices/nope").header("x-request-id", "req-42").send().await;
    assert_eq!(resp.header("x-request-id"), Some("req-42"));
    let problem = resp.assert_problem(404, "device_not_found");
    assert_eq!(problem["request_id"], "req-42");
    let resp = api.get("/healthz").send().await;
    let generated = resp.header("x-request-id").unwrap();
    assert_eq!(generated.len(), 36, "a UUID: {generated}");
}

#[tokio::test]
async fn forbidden_names_the_role() {
    let api = TestApi::new().await;
    let resp =
        api.post("/api/v1/devices").role(Role::Viewer).json(&json!({"id": "a"})).send().await;
    let problem = resp.assert_problem(403, "forbidden");
    assert!(problem["detail"].as_str().unwrap().contains("operator"), "{problem}");
}
